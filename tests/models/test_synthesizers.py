"""Tests of tfcredit.models.synthesizers (layer-wise and neuron-wise DNI modules)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.models.synthesizers import (LayerwiseSynthesizer,
                                          NeuronwiseSynthesizer)


def _built(synthesizer, batch, width):
  state = tf.zeros([batch, width])
  memory = tf.zeros([batch, width, synthesizer.memory_size])
  synthesizer(state, memory)
  return synthesizer


def _randomise(synthesizer, seed=0):
  """Non-zero weights everywhere (the output layers start at zero)."""
  rng = np.random.default_rng(seed)
  for variable in synthesizer.trainable_variables:
    variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(np.float32))


def _neuronwise_problem(cell, seed):
  """A randomised neuron-wise synthesizer (6 units) and a random ``(state,
  memory, noise)`` of 3 rows × 10 neurons; the generator too, for more draws."""
  synthesizer = _built(NeuronwiseSynthesizer(hidden_units=6, cell=cell), 3, 10)
  _randomise(synthesizer)
  rng = np.random.default_rng(seed)
  state = tf.constant(rng.normal(size=(3, 10)), tf.float32)
  memory = tf.constant(rng.normal(size=(3, 10, synthesizer.memory_size)),
                       tf.float32)
  noise = tf.constant(rng.normal(1.0, 0.5, size=(3, 10)), tf.float32)
  return synthesizer, (state, memory, noise), rng


@pytest.mark.parametrize('cell', ['gru', 'lstm'])
def test_neuronwise_permuting_neurons_permutes_synthetic_gradients(cell):
  synthesizer, (state, memory, noise), rng = _neuronwise_problem(cell, 1)
  permutation = rng.permutation(10)
  delta, new_memory = synthesizer(state, memory, noise)
  permuted_delta, permuted_memory = synthesizer(
      tf.gather(state, permutation, axis=1), tf.gather(memory, permutation, axis=1),
      tf.gather(noise, permutation, axis=1))
  np.testing.assert_allclose(permuted_delta, tf.gather(delta, permutation, axis=1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(permuted_memory,
                             tf.gather(new_memory, permutation, axis=1),
                             rtol=1e-5, atol=1e-6)
  # Independence: changing one neuron changes that neuron's output only.
  changed = tf.tensor_scatter_nd_update(state, [[1, 4]], [5.0])
  changed_delta, _ = synthesizer(changed, memory, noise)
  difference = np.abs(changed_delta.numpy() - delta.numpy()) > 1e-7
  assert difference[1, 4]
  difference[1, 4] = False
  assert not difference.any()


@pytest.mark.parametrize('cell', ['gru', 'lstm'])
def test_neuronwise_is_its_three_keras_layers_in_values_and_gradients(cell):
  """The folded step (input layer composed into the cell's input product) is
  ``output_layer(cell(input_layer(x)))`` with the Keras layers' own arithmetic,
  for the prediction, the new memory and every weight's gradient."""
  synthesizer, (state, memory, noise), rng = _neuronwise_problem(cell, 2)
  probe = tf.constant(rng.normal(size=(3, 10, synthesizer.memory_size)),
                      tf.float32)
  variables = synthesizer.trainable_variables

  def keras_layers():
    neurons = tf.reshape(state * noise, [-1, 1])
    flat = tf.reshape(memory, [-1, synthesizer.memory_size])
    states = tf.split(flat, 2, axis=-1) if cell == 'lstm' else [flat]
    output, new_state = synthesizer.cell(synthesizer.input_layer(neurons), states)
    return (tf.reshape(synthesizer.output_layer(output), [3, 10]),
            tf.reshape(tf.concat(tf.nest.flatten(new_state), -1), memory.shape))

  results = []
  for run in (lambda: synthesizer(state, memory, noise), keras_layers):
    with tf.GradientTape() as tape:
      delta, new_memory = run()
      value = tf.reduce_sum(delta ** 2) + tf.reduce_sum(new_memory * probe)
    results.append([delta, new_memory] + tape.gradient(value, variables))
  assert all(g is not None for g in results[1][2:])
  for ours, reference in zip(*results):
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


def test_neuronwise_parameter_count_is_independent_of_batch_and_width():
  m = 50
  # Linear(1→m): 2m; GRU (Keras reset_after): 3·(m·m + m·m) weights + 2·3m biases;
  # Linear(m→1): m + 1.
  expected = 2 * m + (6 * m * m + 6 * m) + (m + 1)
  for batch, width in ((2, 8), (16, 300), (1, 1)):
    synthesizer = _built(NeuronwiseSynthesizer(hidden_units=m), batch, width)
    assert synthesizer.count_params() == expected
  lstm = _built(NeuronwiseSynthesizer(hidden_units=m, cell='lstm'), 4, 20)
  assert lstm.count_params() == 2 * m + (8 * m * m + 4 * m) + (m + 1)
  assert lstm.memory_size == 2 * m


@pytest.mark.parametrize('make', [
    lambda: LayerwiseSynthesizer(),
    lambda: LayerwiseSynthesizer(hidden_layers=2, hidden_units=7),
    lambda: NeuronwiseSynthesizer(hidden_units=5),
])
def test_synthesizers_start_at_zero(make):
  synthesizer = _built(make(), 4, 9)
  rng = np.random.default_rng(2)
  state = tf.constant(rng.normal(size=(4, 9)), tf.float32)
  memory = tf.constant(rng.normal(size=(4, 9, synthesizer.memory_size)), tf.float32)
  delta, _ = synthesizer(state, memory, tf.ones([4, 9]))
  assert np.all(delta.numpy() == 0.0)


def test_layerwise_depth_and_linear_map():
  deep = _built(LayerwiseSynthesizer(hidden_layers=2, hidden_units=7), 2, 5)
  # Two hidden layers 5→7→7, then 7→5.
  assert deep.count_params() == (5 * 7 + 7) + (7 * 7 + 7) + (7 * 5 + 5)
  linear = _built(LayerwiseSynthesizer(), 2, 5)
  _randomise(linear)
  kernel, bias = [v.numpy() for v in linear.output_layer.weights]
  state = np.random.default_rng(3).normal(size=(2, 5)).astype(np.float32)
  delta, memory = linear(tf.constant(state), tf.zeros([2, 5, 0]))
  np.testing.assert_allclose(delta, state @ kernel + bias, rtol=1e-5, atol=1e-6)
  assert memory.shape == (2, 5, 0)


@pytest.mark.parametrize('make, match', [
    (lambda: LayerwiseSynthesizer(hidden_layers=-1), 'hidden_layers'),
    (lambda: LayerwiseSynthesizer(hidden_units=0), 'hidden_units'),
    (lambda: NeuronwiseSynthesizer(cell='qrnn'), 'cell'),
    (lambda: NeuronwiseSynthesizer(noise_stddev=-0.1), 'noise_stddev'),
    (lambda: NeuronwiseSynthesizer(hidden_units=0), 'hidden_units'),
])
def test_bad_configuration_names_the_parameter(make, match):
  with pytest.raises(ConfigurationError, match=match):
    make()

"""Tests of RecurrentModel's one-step entry points and its persistence:
``state_step`` and ``one_step`` (the forward-mode methods' steps) against
``unroll`` over one step, a checkpoint of the model alone, and the Keras
``get_config`` round trip. The unroll tests are in test_recurrent.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit.models.recurrent import RecurrentModel
from tfcredit.testing import assert_nests_close

import test_recurrent as base


def _one_step_problem(seed, **kwargs):
  """``(model, inputs, state, rng)``: a built two-layer token model, a window
  of one step for 3 rows, and a random state drawn from ``rng``."""
  model = RecurrentModel(output_dim=7, input_vocab_size=7, units=base.UNITS,
                         num_layers=2, **kwargs)
  inputs = tf.constant([[1], [4], [6]])
  model.build_for(inputs)
  rng = np.random.RandomState(seed)
  state = tf.nest.map_structure(
      lambda spec: tf.constant(rng.normal(size=(base.BATCH, spec.shape[-1])),
                               tf.float32), model.state_spec())
  return model, inputs, state, rng


@pytest.mark.parametrize('cell,unroll', [
    ('lstm', 'keras'), ('lstm', 'fused'), ('gru', 'keras'), ('gru', 'fused'),
    ('simple_rnn', 'auto'), ('cells', 'auto')])
def test_state_step_is_unrolls_final_state_and_gradient_over_one_step(cell, unroll):
  """``state_step`` (the forward-mode methods' per-row step) is ``unroll``'s
  step, values and gradients in the weights and the state, on two layers."""
  if cell == 'cells':
    cell = [keras.layers.GRUCell(base.UNITS), keras.layers.LSTMCell(base.UNITS)]
  model, inputs, state, rng = _one_step_problem(
      seed=0, cell=cell, unroll_implementation=unroll)
  probe = tf.nest.map_structure(
      lambda s: tf.constant(rng.normal(size=s.shape), tf.float32), state)
  core = [v for v in model.trainable_variables if not v.path.startswith('head')]
  results = []
  for step in (lambda s: model.unroll(inputs, s, readout=False)[1],
               lambda s: model.state_step(inputs, s)):
    with tf.GradientTape() as tape:
      tape.watch(state)
      new_state = step(state)
      value = sum(tf.reduce_sum(a * b) for a, b in zip(
          tf.nest.flatten(new_state), tf.nest.flatten(probe)))
    results.append((new_state, tape.gradient(value, (core, state))))
  assert_nests_close(results[1][0], results[0][0], atol=1e-6)
  assert_nests_close(results[1][1], results[0][1], atol=1e-6)
  with pytest.raises(ValueError, match='one step'):
    model.state_step(tf.constant([[1, 2]] * 3), state)


@pytest.mark.parametrize('readout', ['per_step', 'terminal'])
@pytest.mark.parametrize('cell', ['lstm', 'simple_rnn'])
def test_one_step_is_unrolls_outputs_state_and_gradient_over_one_step(cell,
                                                                     readout):
  """``one_step`` (the forward-mode methods' step) is ``unroll`` over a window
  of one step: outputs of the same shape and values, the same state, and the
  same gradients in every weight (the head's too) and in the state."""
  model, inputs, state, _ = _one_step_problem(seed=1, cell=cell,
                                               readout=readout)
  results = []
  for step in (model.unroll, model.one_step):
    with tf.GradientTape() as tape:
      tape.watch(state)
      outputs, new_state = step(inputs, state)
      value = tf.reduce_sum(tf.sin(outputs)) + sum(
          tf.reduce_sum(s ** 2) for s in tf.nest.flatten(new_state))
    results.append((outputs, new_state,
                    tape.gradient(value, (model.trainable_variables, state))))
  assert results[1][0].shape == results[0][0].shape
  for mine, unrolled in zip(results[1], results[0]):
    assert_nests_close(mine, unrolled, atol=1e-6)


def test_a_checkpoint_of_the_model_alone_holds_every_weight(tmp_path):
  task_model = dict(output_dim=7, input_vocab_size=7, units=5, num_layers=2)
  model = RecurrentModel(**task_model)
  model.build_for(tf.zeros([1, 1], tf.int32))
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / 'model'))
  other = RecurrentModel(**task_model)
  other.build_for(tf.zeros([1, 1], tf.int32))
  tf.train.Checkpoint(model=other).read(path).assert_consumed()
  for a, b in zip(model.weights, other.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize('kwargs', [
    dict(input_vocab_size=7, cell='gru', units=6, num_layers=2, dropout=0.1,
         embedding_dim=5, init_scale=0.2),
    dict(input_dim=2, cell='lstm', units=4, readout='terminal', forget_bias=0.5),
    dict(input_dim=2, cell=[keras.layers.GRUCell(4), keras.layers.LSTMCell(3)]),
    dict(input_dim=2, cell=keras.layers.SimpleRNNCell, units=5, num_layers=2),
], ids=['named-tokens', 'named-terminal', 'cell-list', 'cell-factory'])
def test_get_config_round_trips_to_the_same_model(kwargs):
  """Keras's layer contract: ``from_config(get_config())`` (and
  ``keras.saving``'s serialization) builds a model that computes the same thing
  with the same weights."""
  model = RecurrentModel(output_dim=3, **kwargs)
  config = model.get_config()
  rebuilt = RecurrentModel.from_config(config)
  assert rebuilt.get_config() == config
  restored = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(model))
  assert isinstance(restored, RecurrentModel)
  assert restored.get_config() == config
  token = 'input_vocab_size' in kwargs
  inputs = (tf.constant([[1, 2, 3], [4, 5, 6]]) if token else
            tf.random.stateless_normal([2, 3, 2], seed=[1, 2]))
  for other in (rebuilt, restored):
    for built in (model, other):
      built.build_for(inputs[:, :1])
    for source, target in zip(model.weights, other.weights):
      assert source.shape == target.shape
      target.assign(source)
    expected, _ = model.unroll(inputs, model.initial_state(2), training=False)
    actual, _ = other.unroll(inputs, other.initial_state(2), training=False)
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-6)

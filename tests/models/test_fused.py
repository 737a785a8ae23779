"""The fused unroll (tfcredit.models.fused) against the Keras layers it replaces.

The reference is ``unroll_implementation='keras'``: the Keras ``LSTM``/``GRU``
layers without a scale, and the Keras cells stepped through ``tf.scan`` under a
scale (that path's own tests, in ``test_recurrent.py``, build it from
``tf.stop_gradient`` cuts). Same weights, same inputs: outputs, final states and
the gradients of every weight and of the initial state must agree.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit import xla
from tfcredit.errors import ConfigurationError
from tfcredit.models import fused
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.testing import assert_nests_close, max_abs_diff

BATCH, STEPS, UNITS, VOCABULARY = 3, 7, 5, 11


def _models(cell, num_layers, readout):
  """The same weights under both implementations."""
  models = []
  for implementation in ('keras', 'fused'):
    keras.utils.set_random_seed(3)
    model = RecurrentModel(input_vocab_size=VOCABULARY, output_dim=VOCABULARY,
                           readout=readout, cell=cell, units=UNITS,
                           num_layers=num_layers,
                           unroll_implementation=implementation)
    model.build_for(tf.zeros([1, 1], tf.int32))
    models.append(model)
  reference, fast = models
  for a, b in zip(reference.weights, fast.weights):
    b.assign(a)
  return reference, fast


def _run(model, inputs, state, scale, probes):
  with tf.GradientTape() as tape:
    tape.watch(tf.nest.flatten(state))
    outputs, final = model.unroll(inputs, state, state_grad_scale=scale)
    loss = tf.reduce_sum(outputs * probes[0])
    for component, probe in zip(tf.nest.flatten(final), probes[1:]):
      loss += tf.reduce_sum(component * probe)
  sources = list(model.trainable_variables) + tf.nest.flatten(state)
  return outputs, final, [tf.convert_to_tensor(g)
                          for g in tape.gradient(loss, sources)]


def _scales(rng):
  per_step = rng.normal(size=[STEPS]).astype(np.float32) * 2
  per_step[2] = 0.0  # A truncation inside the window.
  per_row = rng.normal(size=[BATCH, STEPS]).astype(np.float32)
  per_row[1, 4] = 0.0
  return {'none': None, 'per step [T]': tf.constant(per_step),
          'per row [B, T]': tf.constant(per_row)}


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
@pytest.mark.parametrize('num_layers,readout,loop,compiled', [
    (1, 'per_step', 'unrolled', False), (2, 'per_step', 'unrolled', False),
    (2, 'terminal', 'unrolled', False), (2, 'per_step', 'while_loop', False),
    (2, 'per_step', 'unrolled', True), (2, 'per_step', 'while_loop', True)])
def test_fused_equals_the_keras_layers_with_and_without_a_scale(
    cell, num_layers, readout, loop, compiled, monkeypatch):
  """``compiled``: the loops compiled by XLA, as on a CPU outside the test
  suite (which sets TFCREDIT_AUTO_XLA=0, tests/conftest.py)."""
  if loop == 'while_loop':  # The path of long windows and unknown lengths.
    monkeypatch.setattr(fused, 'STATIC_UNROLL_STEPS', 0)
  monkeypatch.setattr(fused, '_COMPILED', {})
  if compiled:
    monkeypatch.delenv(xla.ENVIRONMENT, raising=False)
  reference, fast = _models(cell, num_layers, readout)
  rng = np.random.default_rng(0)
  inputs = tf.constant(rng.integers(0, VOCABULARY, size=[BATCH, STEPS]), tf.int32)
  state = tf.nest.map_structure(
      lambda s: tf.constant(rng.normal(size=s.shape).astype(np.float32)),
      reference.initial_state(BATCH))
  output_shape = [BATCH, STEPS, VOCABULARY] if readout == 'per_step' else [
      BATCH, VOCABULARY]
  probes = [tf.constant(rng.normal(size=output_shape).astype(np.float32))] + [
      tf.constant(rng.normal(size=s.shape).astype(np.float32))
      for s in tf.nest.flatten(state)]
  gradients_by_scale = {}
  for label, scale in _scales(rng).items():
    expected = _run(reference, inputs, state, scale, probes)
    got = _run(fast, inputs, state, scale, probes)
    assert_nests_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    assert_nests_close(got[1], expected[1], rtol=1e-5, atol=1e-6)
    assert_nests_close(got[2], expected[2], rtol=1e-4, atol=1e-5), label
    gradients_by_scale[label] = got[2]
  # The scales must change the gradients, or the comparison could not fail.
  assert max_abs_diff(gradients_by_scale['none'],
                      gradients_by_scale['per step [T]']) > 1e-3
  assert max_abs_diff(gradients_by_scale['none'],
                      gradients_by_scale['per row [B, T]']) > 1e-3
  # The compiled loops are the ones that ran (forward and backward); a
  # while_loop's tensor lists cannot leave a compiled function, so long
  # windows keep the uncompiled loops.
  loops = {f'_{cell}_forward', f'_{cell}_backward'}
  assert {f.__name__ for f in fused._COMPILED} == (  # pylint: disable=protected-access
      loops if compiled and loop == 'unrolled' else set())


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_fused_traces_once_for_any_window_length_and_matches_eager(cell):
  _, fast = _models(cell, 2, 'per_step')
  state = fast.initial_state(BATCH)

  @tf.function(input_signature=[tf.TensorSpec([BATCH, None], tf.int32),
                                tf.TensorSpec([None], tf.float32)])
  def gradients(inputs, scale):
    with tf.GradientTape() as tape:
      outputs, final = fast.unroll(inputs, state, state_grad_scale=scale)
      loss = tf.reduce_sum(outputs) + tf.reduce_sum(final[-1][0])
    return tape.gradient(loss, fast.trainable_variables)

  rng = np.random.default_rng(1)
  for steps in (1, 4, 9):
    inputs = tf.constant(rng.integers(0, VOCABULARY, size=[BATCH, steps]), tf.int32)
    scale = tf.constant(rng.normal(size=[steps]).astype(np.float32))
    with tf.GradientTape() as tape:
      outputs, final = fast.unroll(inputs, state, state_grad_scale=scale)
      loss = tf.reduce_sum(outputs) + tf.reduce_sum(final[-1][0])
    eager = tape.gradient(loss, fast.trainable_variables)
    assert_nests_close([tf.convert_to_tensor(g) for g in gradients(inputs, scale)],
                       [tf.convert_to_tensor(g) for g in eager],
                       rtol=1e-5, atol=1e-6)
  assert gradients.experimental_get_tracing_count() == 1


def test_which_layers_the_fused_unroll_takes():
  assert fused.supports(keras.layers.LSTM(4))
  assert fused.supports(keras.layers.GRU(4))
  # Arithmetic it does not implement stays on the Keras path.
  assert not fused.supports(keras.layers.GRU(4, reset_after=False))
  assert not fused.supports(keras.layers.LSTM(4, activation='relu'))
  assert not fused.supports(keras.layers.LSTM(4, recurrent_dropout=0.1))
  assert not fused.supports(keras.layers.SimpleRNN(4))


def test_fused_on_a_custom_cell_or_a_bad_name_is_refused():
  with pytest.raises(ConfigurationError, match='unroll_implementation'):
    RecurrentModel(input_dim=2, output_dim=4, cell=keras.layers.GRUCell(4),
                   unroll_implementation='fused')
  with pytest.raises(ConfigurationError, match="'cudnn'"):
    RecurrentModel(input_dim=2, output_dim=4, unroll_implementation='cudnn')

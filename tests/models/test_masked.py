"""RecurrentModel(masked=True): padded steps (``tfcredit.masking``) hold each
layer's state and output, whatever the padded inputs are."""

import numpy as np
import pytest
import tensorflow as tf

from tfcredit.models.recurrent import RecurrentModel
from tfcredit.testing import assert_nests_close

LENGTHS = (6, 2, 4)


def _model(cell, token_inputs, readout):
  tf.keras.utils.set_random_seed(0)
  kwargs = ({'input_vocab_size': 7} if token_inputs else {'input_dim': 3})
  model = RecurrentModel(output_dim=4, readout=readout, cell=cell, units=5,
                         num_layers=2, masked=True, **kwargs)
  model.build_for(tf.zeros([1, 1], tf.int32) if token_inputs
                  else tf.zeros([1, 1, 3]))
  return model


def _padded(token_inputs):
  rng = np.random.default_rng(0)
  steps = max(LENGTHS)
  if token_inputs:
    inputs = rng.integers(0, 7, (len(LENGTHS), steps)).astype(np.int32)
    fill = -1
  else:
    inputs = rng.normal(size=(len(LENGTHS), steps, 3)).astype(np.float32)
    fill = np.nan
  for row, length in enumerate(LENGTHS):
    inputs[row, length:] = fill
  return inputs


@pytest.mark.parametrize('token_inputs', [True, False])
@pytest.mark.parametrize('readout', ['per_step', 'terminal'])
@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_padded_rows_end_as_their_unpadded_sequences(cell, readout, token_inputs):
  """Final state and terminal output of each padded row equal the row's own
  unpadded unroll; per-step outputs on its real steps too."""
  model = _model(cell, token_inputs, readout)
  inputs = _padded(token_inputs)
  outputs, state = model.unroll(tf.constant(inputs), model.initial_state(3))
  for row, length in enumerate(LENGTHS):
    alone_outputs, alone_state = model.unroll(
        tf.constant(inputs[row:row + 1, :length]), model.initial_state(1))
    assert_nests_close(tf.nest.map_structure(lambda s: s[row:row + 1], state),
                       alone_state, rtol=1e-5, atol=1e-6)
    if readout == 'terminal':
      np.testing.assert_allclose(outputs[row], alone_outputs[0], rtol=1e-5,
                                 atol=1e-6)
    else:
      np.testing.assert_allclose(outputs[row, :length], alone_outputs[0],
                                 rtol=1e-5, atol=1e-6)


def test_a_window_of_padding_keeps_the_state_and_repeats_the_output():
  """A window that is all padding for a row, after a real window: the state is
  the one carried in, the terminal output the previous window's."""
  model = _model('lstm', True, 'terminal')
  inputs = _padded(True)
  first, state = model.unroll(tf.constant(inputs[:, :2]), model.initial_state(3))
  second, state_after = model.unroll(tf.constant(inputs[:, 2:]), state)
  # Row 1 has length 2: the second window is all padding for it.
  assert_nests_close(tf.nest.map_structure(lambda s: s[1], state_after),
                     tf.nest.map_structure(lambda s: s[1], state))
  np.testing.assert_allclose(second[1], first[1], rtol=1e-6)


def test_state_step_holds_a_padded_step_and_its_jacobian_is_the_identity():
  model = _model('gru', True, 'per_step')
  state = tf.nest.map_structure(lambda s: s + 0.3, model.initial_state(2))
  inputs = tf.constant([[3], [-1]], tf.int32)  # Row 1 padded.
  flat = tf.concat(tf.nest.flatten(state), -1)
  sizes = [int(s.shape[-1]) for s in tf.nest.flatten(state)]
  with tf.GradientTape() as tape:
    tape.watch(flat)
    nest = tf.nest.pack_sequence_as(state, tf.split(flat, sizes, -1))
    new = tf.concat(tf.nest.flatten(model.state_step(inputs, nest)), -1)
  jacobian = tape.batch_jacobian(new, flat)
  np.testing.assert_allclose(new[1], flat[1])
  np.testing.assert_allclose(jacobian[1], np.eye(flat.shape[-1]), atol=1e-7)
  assert np.abs(jacobian[0] - np.eye(flat.shape[-1])).max() > 1e-3  # Real step.
  with tf.GradientTape() as tape:
    new = model.state_step(inputs, state)
    held = tf.reduce_sum(tf.concat(tf.nest.flatten(new), -1)[1])
  gradients = tape.gradient(held, model.trainable_variables)
  assert all(g is None or np.abs(tf.convert_to_tensor(g)).max() == 0
             for g in gradients)

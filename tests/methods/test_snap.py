"""SnAp-1 (Menick et al. 2021) against its paper's claims.

SnAp-1 keeps the influence only where a weight writes a state unit directly. So it
is exact when the recurrence is diagonal (then RTRL's influence never leaves that
pattern) and biased when it is not.
"""

import keras
import numpy as np
import tensorflow as tf

from tfcredit import RecurrentModel
from tfcredit.methods import BPTT, SnAp1
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.testing import built_optimizer, tiny_model

ROWS, UNITS = 3, 4


class DiagonalCell(keras.layers.Layer):
  """``h' = tanh(x W + u ⊙ h + b)``: each unit feeds back only on itself."""

  def __init__(self, units=UNITS, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.state_size = units
    self.output_size = units

  def build(self, input_shape):
    normal = keras.initializers.RandomNormal(stddev=0.7)
    self.w = self.add_weight(shape=(input_shape[-1], self.units),
                             initializer=normal, name='w')
    self.u = self.add_weight(shape=(self.units,), initializer=normal, name='u')
    self.b = self.add_weight(shape=(self.units,), initializer=normal, name='b')
    super().build(input_shape)

  def call(self, inputs, states, training=False):
    del training
    h = tf.tanh(inputs @ self.w + self.u * states[0] + self.b)
    return h, [h]


def _flat(gradients):
  return np.concatenate([np.ravel(tf.convert_to_tensor(g).numpy())
                         for g in gradients])


def _estimates(model, task):
  optimizer = built_optimizer(model)
  inputs, targets = task.batch('train', 0, 0, ROWS)
  segment = (tf.constant(inputs), tf.constant(targets))
  state = model.initial_state(ROWS)
  snap = SnAp1(model=model, task=task, optimizer=optimizer, window=4)
  full = BPTT(model=model, task=task, optimizer=optimizer)
  return (snap, _flat(snap.estimate_gradients(segment, state)[0]),
          _flat(full.estimate_gradients(segment, state)[0]))


def test_exact_for_a_diagonal_recurrence():
  task = AddingTask(sequence_length=8, seed=2)
  keras.utils.set_random_seed(0)
  model = RecurrentModel(cell=DiagonalCell(), **task.model_spec())
  model.build_for(tf.zeros([1, 1, 2]))
  snap, estimate, exact = _estimates(model, task)
  np.testing.assert_allclose(estimate, exact, rtol=1e-5, atol=1e-6)
  assert np.abs(exact).max() > 1e-3
  # The pattern: every weight of the cell writes exactly one unit (W's columns,
  # u, b); the readout writes none.
  cell_weights = 2 * UNITS + UNITS + UNITS
  np.testing.assert_array_equal(snap.pattern.numpy().sum(0)[:cell_weights], 1.0)
  assert snap.pattern.numpy()[:, cell_weights:].sum() == 0


def test_biased_for_a_full_recurrence():
  task = AddingTask(sequence_length=8, seed=2)
  _, estimate, exact = _estimates(tiny_model(task, seed=0, units=UNITS, cell='gru'),
                                  task)
  error = np.linalg.norm(estimate - exact) / np.linalg.norm(exact)
  assert error > 1e-3
  assert estimate @ exact > 0  # Still a descent direction here.

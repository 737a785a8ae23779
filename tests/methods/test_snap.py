"""SnAp-1 (Menick et al. 2021) against its paper's claims.

SnAp-1 keeps the influence only where a weight writes a state unit directly. So it
is exact when the recurrence is diagonal (then RTRL's influence never leaves that
pattern) and biased when it is not. Its compact storage (the paper's saving)
holds only those entries, ``rows × weights × k`` floats, and computes what the
dense influence masked by the pattern computes.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit import RecurrentModel
from tfcredit.errors import ConfigurationError
from tfcredit.methods import BPTT, SnAp1
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask, CopyTask
from tfcredit.testing import built_optimizer, tiny_model

ROWS, UNITS = 3, 4
STREAM = MarkovLanguageTask(vocabulary_size=5, branching=2, train_length=80,
                            eval_length=10, seed=2)


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


def _estimates(model, task, storages=('compact',)):
  """``([(snap, its estimate) per storage], full BPTT's gradient)`` on the
  task's first batch from the zero state."""
  optimizer = built_optimizer(model)
  inputs, targets = task.batch('train', 0, 0, ROWS)
  segment = (tf.constant(inputs), tf.constant(targets))
  state = model.initial_state(ROWS)
  found = []
  for storage in storages:
    snap = SnAp1(model=model, task=task, optimizer=optimizer, window=4,
                 storage=storage)
    found.append((snap, _flat(snap.estimate_gradients(segment, state)[0])))
  full = BPTT(model=model, task=task, optimizer=optimizer)
  return found, _flat(full.estimate_gradients(segment, state)[0])


def test_exact_for_a_diagonal_recurrence():
  """Both storages (one model, one BPTT reference): the estimate is full
  BPTT's, and the pattern gives each of the cell's weights one unit."""
  task = AddingTask(sequence_length=8, seed=2)
  keras.utils.set_random_seed(0)
  model = RecurrentModel(cell=DiagonalCell(), **task.model_spec())
  model.build_for(tf.zeros([1, 1, 2]))
  found, exact = _estimates(model, task, ('compact', 'dense'))
  assert np.abs(exact).max() > 1e-3
  # The pattern: every weight of the cell writes exactly one unit (W's columns,
  # u, b); the readout writes none.
  cell_weights = 2 * UNITS + UNITS + UNITS
  for (snap, estimate), storage in zip(found, ('compact', 'dense')):
    np.testing.assert_allclose(estimate, exact, rtol=1e-5, atol=1e-6,
                               err_msg=storage)
    np.testing.assert_array_equal(snap.fan_out[:cell_weights], 1)
    assert snap.fan_out[cell_weights:].sum() == 0
    if storage == 'dense':
      np.testing.assert_array_equal(snap.pattern.numpy().sum(0), snap.fan_out)
    else:  # One group of k = 1, one colour: one backward pass per step.
      assert [(g.size, g.k, g.colours.shape[1]) for g in snap.groups] == [
          (cell_weights, 1, 1)]


def test_biased_for_a_full_recurrence():
  task = AddingTask(sequence_length=8, seed=2)
  [(_, estimate)], exact = _estimates(
      tiny_model(task, seed=0, units=UNITS, cell='gru'), task)
  error = np.linalg.norm(estimate - exact) / np.linalg.norm(exact)
  assert error > 1e-3
  assert estimate @ exact > 0  # Still a descent direction here.


def _calls(task, calls, length):
  """``calls`` segments: consecutive stream slices, or episodic batches."""
  if task.regime == 'stream':
    data = task.stream('train', ROWS)
    return [(tf.constant(data[:, i * length:(i + 1) * length]),
             tf.constant(data[:, i * length + 1:(i + 1) * length + 1]))
            for i in range(calls)]
  return [tuple(tf.constant(x) for x in task.batch('train', 0, i, ROWS))
          for i in range(calls)]


def _run(storage, task, cell, num_layers):
  """Estimates and trained weights, metrics and influence over three calls of
  two windows (on streams, the influence variable carried across them)."""
  model = tiny_model(task, seed=0, units=UNITS, cell=cell,
                     num_layers=num_layers)
  optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.05)
  snap = SnAp1(model=model, task=task, optimizer=optimizer, window=4,
               windows_per_call=2, batch_size=ROWS, storage=storage)
  snap.on_epoch_start(0)
  state, results = model.initial_state(ROWS), []
  for segment in _calls(task, 3, 8):
    if task.regime == 'episodic':
      state = model.initial_state(ROWS)
    gradients, _ = snap.estimate_gradients(segment, state)
    state, metrics = snap.train_segment(segment, state)
    results.append((_flat(gradients), _flat(model.trainable_variables),
                    {k: float(v) for k, v in metrics.items()}))
    assert metrics['updates'] == 2
  assert snap.trace_counts['train_segment'] == 1
  assert snap.trace_counts['estimate_gradients'] == 1
  return snap, results


COPY = CopyTask(sequence_length=4, seed=1, memory_length=2)


@pytest.mark.slow  # Checked against the dense RTRL influence.
# Every task, cell and depth, and every pair of them, once (a covering array).
@pytest.mark.parametrize('task, cell, num_layers', [
    (STREAM, 'lstm', 2), (STREAM, 'gru', 1), (COPY, 'lstm', 1),
    (COPY, 'gru', 2)], ids=['stream-lstm-2', 'stream-gru-1', 'copy-lstm-1',
                            'copy-gru-2'])
def test_compact_storage_computes_what_the_masked_dense_influence_does(
    task, cell, num_layers):
  """Estimates, trained weights and metrics over three calls agree, and on
  the stream the carried influence entry by entry."""
  dense, expected = _run('dense', task, cell, num_layers)
  compact, actual = _run('compact', task, cell, num_layers)
  for (estimate, weights, metrics), (estimate0, weights0, metrics0) in zip(
      actual, expected):
    np.testing.assert_allclose(estimate, estimate0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights, weights0, rtol=1e-5, atol=1e-6)
    for key in metrics0:
      np.testing.assert_allclose(metrics[key], metrics0[key], rtol=1e-5,
                                 err_msg=key)
  assert np.abs(expected[0][0]).max() > 1e-3
  assert not np.allclose(expected[-1][1], expected[0][1])  # Trained.
  if task.regime == 'episodic':
    return
  # The stream's influence: each stored entry is the dense one's at its unit
  # and weight, and the dense one has no other (their norms agree).
  influence = dense.influence.numpy()
  assert np.any(influence)
  for group, stored in zip(compact.groups, compact.influence):
    gathered = influence[:, group.rows, group.weights[:, None]]
    if group.mask is not None:
      gathered *= group.mask
    np.testing.assert_allclose(stored.numpy(), gathered, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      np.sqrt(sum(np.sum(v.numpy()**2) for v in compact.influence)),
      np.linalg.norm(influence), rtol=1e-5)


@pytest.mark.parametrize('cell, k', [('gru', 1), ('lstm', 2)])
def test_the_compact_influence_is_rows_by_weights_by_k(cell, k):
  """On real inputs (no embedding) a GRU's cell weights each write one unit,
  an LSTM's two (``c_u`` and ``h_u``; the output gate's only ``h_u``, padded);
  the readout writes none and is not stored. Colours: ``k``."""
  task = AddingTask(sequence_length=5, seed=1)
  model = tiny_model(task, seed=0, units=UNITS, cell=cell)
  head = sum(int(np.prod(v.shape)) for v in model.trainable_variables
             if v.path.startswith('head/'))
  cell_weights = sum(int(np.prod(v.shape))
                     for v in model.trainable_variables) - head
  rows = 7
  snap = SnAp1(model=model, task=task, optimizer=built_optimizer(model),
               batch_size=rows)
  floats, formula = snap.influence_size(rows)
  assert floats == rows * cell_weights * k
  assert formula == f'rows × weights × k = {rows} × {cell_weights} × {k}'
  assert [g.colours.shape[1] for g in snap.groups] == [k]
  assert snap.unstored == head > 0
  dense = SnAp1(model=model, task=task, optimizer=built_optimizer(model),
                batch_size=rows, storage='dense')
  width = {'gru': UNITS, 'lstm': 2 * UNITS}[cell]
  assert dense.influence_size(rows)[0] == rows * width * (cell_weights + head)
  # The limit counts the compact floats: the dense influence is refused.
  with pytest.raises(ConfigurationError, match='SnAp1.max_influence_floats'):
    SnAp1(model=model, task=task, optimizer=built_optimizer(model),
          batch_size=rows, storage='dense', max_influence_floats=floats)
  SnAp1(model=model, task=task, optimizer=built_optimizer(model),
        batch_size=rows, max_influence_floats=floats)


def test_an_unknown_storage_is_refused_with_the_parameter_named():
  model = tiny_model(STREAM, seed=0, units=UNITS)
  with pytest.raises(ConfigurationError, match=(
      r"SnAp1.storage must be one of .*'sparse'.*'compact'")):
    SnAp1(model=model, task=STREAM, optimizer=built_optimizer(model),
          batch_size=ROWS, storage='sparse')

"""SnAp-2 (Menick et al. 2021) against exact RTRL (itself tested against BPTT).

SnAp-2 keeps the influence where a weight reaches a unit within two steps,
``P₂ = pattern(J P₁) ∪ P₁``. So on a dense GRU its pattern is full and it is
RTRL; on a sparse GRU it keeps the paths through one other unit that SnAp-1
drops, and its gradient is closer to RTRL's than SnAp-1's, yet not equal to it
(biased); with every recurrent connection cut (a diagonal recurrence) both are
exact. Its pattern is the two-step reachability of the cell's mask, its compact
storage computes what the dense one does, and it resumes from a checkpoint.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit.methods import RTRL, SnAp1, SnAp2
from tfcredit.models import RecurrentModel, SparseGRUCell
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask, CopyTask
from tfcredit.testing import built_optimizer, example_inputs, tiny_model

ROWS, UNITS = 3, 8
# Five steps: SnAp-2's bias needs a path through two other units (three
# transitions before the loss), and each eager step costs a per-row Jacobian.
STEPS = 5
ADDING = AddingTask(sequence_length=STEPS, seed=2)
STREAM = MarkovLanguageTask(vocabulary_size=5, branching=2, train_length=80,
                            eval_length=10, seed=2)


def _flat(gradients):
  return np.concatenate([np.ravel(tf.convert_to_tensor(g).numpy())
                         for g in gradients])


def _sparse_model(task, seed, sparsity=0.75, units=UNITS, layers=1):
  """Sparse GRUs (the mask of layer ``i`` drawn with ``seed + i``); the other
  weights from Keras seed 0."""
  keras.utils.set_random_seed(0)
  cells = [SparseGRUCell(units, sparsity=sparsity, seed=seed + i)
           for i in range(layers)]
  model = RecurrentModel(cell=cells, **task.model_spec())
  model.build_for(example_inputs(task))
  return model


def _segment(task, length=STEPS):
  if task.regime == 'stream':
    data = task.stream('train', ROWS)
    return (tf.constant(data[:, :length]), tf.constant(data[:, 1:length + 1]))
  return tuple(tf.constant(x) for x in task.batch('train', 0, 0, ROWS))


def _estimates(model, task, classes=(RTRL, SnAp1, SnAp2)):
  """``{name: (method, flat gradient)}`` on the task's first segment from the
  zero state, windows of 4; eager (one call each: a trace would cost more than
  the call, and the compiled path is the shared tracing test's)."""
  segment, state = _segment(task), model.initial_state(ROWS)
  found = {}
  for cls in classes:
    method = cls(model=model, task=task, optimizer=built_optimizer(model),
                 window=4, batch_size=ROWS, use_tf_function=False)
    found[cls.__name__] = (method, _flat(method.estimate_gradients(
        segment, state)[0]))
  return found


def _stored_pattern(snap):
  """``[|s|, |θ|]`` bool read back from the compact groups."""
  pattern = np.zeros([snap.width, snap.num_parameters], bool)
  for group in snap.groups:
    kept = np.ones(group.rows.shape, bool) if group.mask is None else (
        group.mask > 0)
    weights = np.broadcast_to(group.weights[:, None], group.rows.shape)
    pattern[group.rows[kept], weights[kept]] = True
  return pattern


def _expected_patterns(model):
  """``(P₁, P₂)`` of a one-layer sparse GRU on real inputs, from its mask
  alone: the column ``c`` of every cell variable writes unit ``c mod u`` (the
  recurrent kernel's only where the mask keeps it), the head none; unit ``j``
  at step ``t`` reaches ``j`` and the units it feeds at ``t + 1``."""
  cell = model.core[0].cell
  units, mask = cell.units, cell.recurrent_mask.numpy() > 0
  columns = []
  for variable in model.trainable_variables:
    value = variable.numpy()
    if variable.path.startswith('head'):
      columns.append(np.zeros([units, value.size], bool))
      continue
    column = np.broadcast_to(np.arange(value.shape[-1]), value.shape) % units
    written = np.eye(units, dtype=bool)[:, column.ravel()]
    if variable is cell.recurrent_kernel:
      written &= mask.ravel()[None, :]
    columns.append(written)
  immediate = np.concatenate(columns, axis=1)
  transitions = np.eye(units, dtype=bool) | mask[:, :units].T  # [new, old]
  two_steps = immediate.copy()
  for weight in range(immediate.shape[1]):  # Loops, not a matrix product.
    for unit in np.nonzero(immediate[:, weight])[0]:
      two_steps[:, weight] |= transitions[:, unit]
  return immediate, two_steps, transitions


@pytest.mark.slow  # Checked against RTRL.
@pytest.mark.parametrize('task', [ADDING, STREAM], ids=['adding', 'stream'])
def test_on_a_dense_gru_the_pattern_is_full_and_snap2_is_rtrl(task):
  model = tiny_model(task, seed=0, units=4, cell='gru')
  found = _estimates(model, task)
  exact = found['RTRL'][1]
  np.testing.assert_allclose(found['SnAp2'][1], exact, rtol=1e-5, atol=1e-6)
  assert np.abs(exact).max() > 1e-3
  assert np.linalg.norm(found['SnAp1'][1] - exact) > 1e-3 * np.linalg.norm(
      exact)  # SnAp-1 is not.
  snap = found['SnAp2'][0]
  head = sum(int(np.prod(v.shape)) for v in model.trainable_variables
             if v.path.startswith('head/'))
  assert [g.k for g in snap.groups] == [4] and snap.groups[0].shared
  floats, formula = snap.influence_size(ROWS)
  assert floats == ROWS * (snap.num_parameters - head) * 4
  assert formula.endswith('the pattern is full, RTRL\'s influence less the '
                          'weights that reach no unit')
  assert snap.transitions.all()


@pytest.mark.slow  # Checked against RTRL.
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_on_a_sparse_gru_snap2_is_closer_to_rtrl_than_snap1_and_biased(seed):
  """SnAp-2's error is above zero and below SnAp-1's; the compact patterns
  are ``P₁`` and its two-step reachability computed from the mask alone (the
  dense storage's is the compact one's: the compact-vs-dense test), and the
  influence size the per-variable count they imply."""
  model = _sparse_model(ADDING, seed)
  found = _estimates(model, ADDING)
  exact = found['RTRL'][1]
  snap1, snap2 = (np.linalg.norm(found[name][1] - exact)
                  for name in ('SnAp1', 'SnAp2'))
  assert 1e-4 * np.linalg.norm(exact) < snap2 < snap1
  # The patterns: P₁ and its two-step reachability through the mask.
  immediate, two_steps, transitions = _expected_patterns(model)
  assert not np.array_equal(immediate, two_steps)
  for name, expected in (('SnAp1', immediate), ('SnAp2', two_steps)):
    snap = found[name][0]
    np.testing.assert_array_equal(snap.transitions, transitions)
    np.testing.assert_array_equal(_stored_pattern(snap), expected)
    np.testing.assert_array_equal(snap.fan_out, expected.sum(0))
  # Compact: per variable, its weights that reach a unit times the most units
  # one of them reaches.
  sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
  reach = np.split(two_steps.sum(0), np.cumsum(sizes)[:-1])
  assert found['SnAp2'][0].influence_size(ROWS)[0] == ROWS * sum(
      int(np.sum(r > 0)) * int(r.max()) for r in reach)


@pytest.mark.slow  # Checked against full BPTT through two methods.
def test_with_every_recurrent_connection_cut_snap1_and_snap2_are_exact():
  model = _sparse_model(ADDING, 0, sparsity=1.0)
  found = _estimates(model, ADDING)
  for name in ('SnAp1', 'SnAp2'):
    np.testing.assert_allclose(found[name][1], found['RTRL'][1], rtol=1e-5,
                               atol=1e-6)
    assert [g.k for g in found[name][0].groups] == [1]
  assert np.abs(found['RTRL'][1]).max() > 1e-3


def _run(storage, task, layers):
  """``(method, estimate, [(weights, metrics)] per call)``: the estimate on the
  first segment from the zero state (its first window on a stream), then the
  trained weights and metrics after each of three calls of two windows (on
  streams, the influence variable carried across them). The estimate runs
  eagerly (``_estimate_gradients``, the function ``estimate_gradients``
  compiles; one call would not repay its trace: the shared tests trace it)."""
  model = _sparse_model(task, 3, sparsity=0.75, units=6, layers=layers)
  optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.05)
  snap = SnAp2(model=model, task=task, optimizer=optimizer, window=4,
               windows_per_call=2, batch_size=ROWS, storage=storage)
  snap.on_epoch_start(0)
  state, results = model.initial_state(ROWS), []
  data = task.stream('train', ROWS) if task.regime == 'stream' else None
  for call in range(3):
    if data is None:
      state = model.initial_state(ROWS)
      segment = tuple(tf.constant(x) for x in task.batch('train', 0, call, ROWS))
    else:
      segment = (tf.constant(data[:, call * 8:call * 8 + 8]),
                 tf.constant(data[:, call * 8 + 1:call * 8 + 9]))
    if call == 0:
      first = segment if data is None else tuple(x[:, :4] for x in segment)
      estimate = _flat(snap._estimate_gradients(first, state)[0])  # pylint: disable=protected-access
    state, metrics = snap.train_segment(segment, state)
    results.append((_flat(model.trainable_variables),
                    {k: float(v) for k, v in metrics.items()}))
  return snap, estimate, results


@pytest.mark.slow  # Checked against the dense RTRL influence.
@pytest.mark.parametrize('task, layers', [
    (STREAM, 2), (CopyTask(sequence_length=4, seed=1, memory_length=2), 1)],
                         ids=['stream-2-layers', 'copy'])
def test_compact_storage_computes_what_the_masked_dense_influence_does(
    task, layers):
  """The estimate agrees, and the trained weights and metrics over three
  calls, and on the stream the carried influence entry by entry. The stack's
  top layer is a one-layer model's cell (its weights reach their unit and the
  units it feeds), its lower layer's weights reach the layer above too, the
  embedding every unit: one stack covers a single layer's groups and more. The
  dense storage's pattern is the one the compact groups store."""
  dense, estimate0, expected = _run('dense', task, layers)
  compact, estimate, actual = _run('compact', task, layers)
  kept = _stored_pattern(compact)
  assert kept.any() and not kept.all()
  np.testing.assert_array_equal(dense.pattern.numpy() > 0, kept)
  np.testing.assert_allclose(estimate, estimate0, rtol=1e-5, atol=1e-6)
  assert np.abs(estimate0).max() > 1e-3
  # The blocks of J, reordered by distinct row (k > 2), are what is tested.
  assert any(g.order is not None for g in compact.groups)
  for (weights, metrics), (weights0, metrics0) in zip(actual, expected):
    np.testing.assert_allclose(weights, weights0, rtol=1e-5, atol=1e-6)
    for key in metrics0:
      np.testing.assert_allclose(metrics[key], metrics0[key], rtol=1e-5,
                                 err_msg=key)
  assert not np.allclose(expected[-1][0], expected[0][0])  # Trained.
  if task.regime == 'episodic':
    return
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


def _scramble(variables):
  """Every variable set to -1: whatever a restore leaves unset is then wrong."""
  for variable in variables:
    variable.assign(tf.fill(variable.shape, tf.cast(-1, variable.dtype)))


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
  """Two calls, a checkpoint, two more; then every variable of the model, the
  optimizer and the method scrambled, the checkpoint restored and the same two
  calls run again from the carried state: the weights, state and influence
  are those of the uninterrupted run (one method, one trace; a variable the
  checkpoint missed would keep its scrambled value)."""
  model = _sparse_model(STREAM, 1, units=6)
  optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.05)
  method = SnAp2(model=model, task=STREAM, optimizer=optimizer, window=3,
                 windows_per_call=2, batch_size=ROWS)
  data = STREAM.stream('train', ROWS)

  def calls(state, starts):
    for start in starts:
      state, _ = method.train_segment(
          (tf.constant(data[:, start:start + 6]),
           tf.constant(data[:, start + 1:start + 7])), state)
    return [s.numpy() for s in tf.nest.flatten(state)]

  influence = lambda: [v.numpy() for v in tf.nest.flatten(method.influence)]
  method.on_epoch_start(0)
  carried = calls(model.initial_state(ROWS), (0, 6))
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                   method=method)
  path = checkpoint.save(str(tmp_path / 'ckpt'))
  final = calls(tf.nest.pack_sequence_as(model.initial_state(ROWS), carried),
                (12, 18))
  weights, final_influence = _flat(model.trainable_variables), influence()

  _scramble(model.variables + optimizer.variables + list(method.variables))
  checkpoint.restore(path).assert_existing_objects_matched()
  assert all(np.any(v) for v in influence())
  assert int(method.epoch.numpy()) == 0
  method.on_epoch_start(0)  # A resumed epoch keeps the influence.
  final2 = calls(tf.nest.pack_sequence_as(model.initial_state(ROWS),
                                          [tf.constant(c) for c in carried]),
                 (12, 18))
  assert method.trace_counts['train_segment'] == 1
  np.testing.assert_allclose(_flat(model.trainable_variables), weights,
                             rtol=2e-5, atol=1e-6)
  for a, b in zip(final2, final):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  for a, b in zip(influence(), final_influence):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)
  # Adam never moved the masked recurrent weights off zero.
  cell = model.core[0].cell
  assert np.all(cell.recurrent_kernel.numpy()[
      cell.recurrent_mask.numpy() == 0] == 0)

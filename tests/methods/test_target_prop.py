"""Tests of tfcredit.methods.target_prop (Wiseman et al. 2017).

Every reference is written here from the paper with plain ``GradientTape`` code
over ``model.unroll``: Eq. 7 as a Python loop over blocks, each block unrolled
separately from its own initial state; BPTT and truncated BPTT as sequential
unrolls. The method's batched unroll, windows and solvers are never reused to
build a reference.
"""

import glob

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.errors import ConfigurationError
from tfcredit.methods import TargetProp
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask, CopyTask
from tfcredit.testing import TINY_CONFIG, built_optimizer, tiny_model

ROWS = 2


@pytest.fixture(scope='module')
def task():
  # 2 columns of 37 steps (the last token only a target): 36 steps per column.
  return MarkovLanguageTask(vocabulary_size=6, branching=2, train_length=74,
                            eval_length=40, seed=1)


def _method(task, model, learning_rate=0.0, **kwargs):
  kwargs.setdefault('batch_size', ROWS)
  # Eager unless a test checks the compiled path: tracing dominates tiny tests.
  kwargs.setdefault('use_tf_function', False)
  optimizer = built_optimizer(model, keras.optimizers.SGD,
                              learning_rate=learning_rate)
  return TargetProp(model=model, task=task, optimizer=optimizer, **kwargs)


def _segment(task, start, end):
  data = task.stream('train', ROWS)
  return tf.constant(data[:, start:end]), tf.constant(data[:, start + 1:end + 1])


def _losses(model, task, inputs, targets, state):
  outputs, final = model.unroll(inputs, state, training=True)
  return tf.reduce_sum(task.losses(outputs, targets)), final


def _random_states(model, shape, seed):
  rng = np.random.default_rng(seed)
  return tf.nest.map_structure(
      lambda s: tf.constant(rng.normal(0, 0.5, shape + [s.shape[-1]]), tf.float32),
      model.state_spec())


def _eq7_reference(model, task, segment, block, hidden, duals, penalty):
  """Eq. 7 over a whole stream segment, one separate unroll per block.

  ``hidden[j]`` (``duals[j]``) is the free state (dual) of boundary ``(j + 1)·B``:
  the initial state of block ``j + 1``; block 0 starts at zero.
  """
  inputs, targets = segment
  length = int(inputs.shape[1])
  starts = list(range(0, length, block))
  loss = 0.0
  constraint = 0.0
  for index, start in enumerate(starts):
    if index == 0:
      state = model.initial_state(ROWS)
    else:
      state = tf.nest.map_structure(lambda h: h[index - 1], hidden)
    end = min(start + block, length)
    block_loss, final = _losses(model, task, inputs[:, start:end],
                                targets[:, start:end], state)
    loss += block_loss
    if index < len(starts) - 1:
      for h, f, u in zip(tf.nest.flatten(hidden), tf.nest.flatten(final),
                         tf.nest.flatten(duals)):
        constraint += tf.reduce_sum(tf.square(h[index] - f + u[index]))
  return loss, 0.5 * penalty * constraint


def _predicted_ends(model, task, segment, block, hidden):
  """``ĥ`` of every boundary: block ``j``'s final state from its own start."""
  inputs, targets = segment
  ends = []
  for index in range(tf.nest.flatten(hidden)[0].shape[0]):
    state = (model.initial_state(ROWS) if index == 0 else
             tf.nest.map_structure(lambda h: h[index - 1], hidden))
    start = index * block
    _, final = _losses(model, task, inputs[:, start:start + block],
                       targets[:, start:start + block], state)
    ends.append(final)
  return tf.nest.map_structure(lambda *e: tf.stack(e), *ends)


# --------------------------------------------------------- Appendix A.1


@pytest.mark.parametrize('cell,block', [('lstm', 1), ('gru', 3)])
def test_appendix_a1_penalty_gradient_is_eta_lambda_times_bptt(task, cell, block):
  """Penalty method, one plain gradient step of size η on h, h from the forward
  pass: the θ-gradient of the penalty equals ηλ times the BPTT gradient (the part
  that crosses the block boundary, which truncation at the boundary drops).

  Two blocks per update (one free variable each, as in A.1), two updates: the
  reference is BPTT over windows of 2B minus truncated BPTT with windows of B.
  """
  model = tiny_model(task, cell=cell, units=5, seed=7)
  eta, lam = 0.3, 2.5
  segment = _segment(task, 0, 4 * block)
  estimates = {}
  for penalty in (lam, 0.0):
    method = _method(task, model, block_size=block, blocks_per_update=2,
                     solver='penalty', h_init='forward', h_optimizer='sgd',
                     h_learning_rate=eta, h_steps=1, penalty=penalty)
    gradients, _ = method.estimate_gradients(segment, model.initial_state(ROWS))
    estimates[penalty] = [g.numpy().astype(np.float64) for g in gradients]

  def windows_gradient(window):
    inputs, targets = segment
    state = model.initial_state(ROWS)
    total = [np.zeros(v.shape) for v in model.trainable_variables]
    for start in range(0, 4 * block, window):
      state = tf.nest.map_structure(tf.stop_gradient, state)
      with tf.GradientTape() as tape:
        loss, state = _losses(model, task, inputs[:, start:start + window],
                              targets[:, start:start + window], state)
        loss = loss / ROWS
      for t, g in zip(total, tape.gradient(loss, model.trainable_variables)):
        t += tf.convert_to_tensor(g).numpy()
    return total

  bptt, truncated = windows_gradient(2 * block), windows_gradient(block)
  crossing = [b - t for b, t in zip(bptt, truncated)]
  assert max(np.abs(c).max() for c in crossing) > 1e-3  # Not a trivial identity.
  for with_penalty, without, cross in zip(estimates[lam], estimates[0.0], crossing):
    np.testing.assert_allclose(with_penalty - without, eta * lam * cross,
                               rtol=2e-3, atol=2e-6)


# ------------------------------------------------------- batched blocks


def _batch_method(task, model, block, blocks_per_update, **kwargs):
  method = _method(task, model, block_size=block,
                   blocks_per_update=blocks_per_update, mode='batch', **kwargs)
  method.on_epoch_start(1)  # Past the first visit: the stored rows are used.
  return method


@pytest.mark.parametrize('block,blocks_per_update', [(5, 3), (4, 2)])
def test_batched_blocks_equal_separate_unrolls(task, block, blocks_per_update):
  """36 steps: B = 5 ends with a short block of 1 step, B = 4 with none."""
  model = tiny_model(task, cell='lstm', units=6, seed=2)
  method = _batch_method(task, model, block, blocks_per_update, h_steps=0,
                         solver='penalty', penalty=1.7)
  boundaries = -(-36 // block) - 1
  hidden = _random_states(model, [boundaries, ROWS], seed=1)
  duals = _random_states(model, [boundaries, ROWS], seed=2)
  for variables, values in ((method.hidden_states, hidden),
                            (method.dual_variables, duals)):
    tf.nest.map_structure(lambda v, x: v.assign(x), variables, values)
  segment = _segment(task, 0, 36)
  with tf.GradientTape() as tape:
    loss, penalty = _eq7_reference(model, task, segment, block, hidden, duals, 1.7)
    objective = (loss + penalty) / ROWS
  expected = tape.gradient(objective, model.trainable_variables)
  gradients, _ = method.estimate_gradients(segment, model.initial_state(ROWS))
  for g, e in zip(gradients, expected):
    np.testing.assert_allclose(g, tf.convert_to_tensor(e), rtol=1e-4, atol=1e-6)
  # The losses: θ does not move (learning rate 0), so the metrics are Eq. 7's.
  _, metrics = method.train_segment(segment, model.initial_state(ROWS))
  np.testing.assert_allclose(metrics['loss_sum'], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['penalty_sum'], penalty, rtol=1e-5)
  assert metrics['constraints'] == boundaries * ROWS


def test_h_step_follows_the_gradient_of_eq7_in_h(task):
  model = tiny_model(task, cell='gru', units=6, seed=4)
  eta = 0.05
  # One update over the whole stream (9 blocks of 4), so every h moves at once.
  method = _batch_method(task, model, 4, 9, h_steps=1, h_optimizer='sgd',
                         h_learning_rate=eta, solver='penalty', penalty=0.8)
  hidden = _random_states(model, [8, ROWS], seed=3)
  duals = _random_states(model, [8, ROWS], seed=4)
  for variables, values in ((method.hidden_states, hidden),
                            (method.dual_variables, duals)):
    tf.nest.map_structure(lambda v, x: v.assign(x), variables, values)
  segment = _segment(task, 0, 36)
  with tf.GradientTape() as tape:
    tape.watch(hidden)
    loss, penalty = _eq7_reference(model, task, segment, 4, hidden, duals, 0.8)
    objective = loss + penalty
  expected = tf.nest.map_structure(lambda h, g: h - eta * g, hidden,
                                   tape.gradient(objective, hidden))
  method.train_segment(segment, model.initial_state(ROWS))
  for v, e in zip(tf.nest.flatten(method.hidden_states), tf.nest.flatten(expected)):
    np.testing.assert_allclose(v.numpy(), e.numpy(), rtol=1e-4, atol=1e-6)
  assert int(method.block_position.numpy()) == 9


def test_one_default_h_step_lowers_eq7_and_stays_on_the_states_scale(task):
  """Minibatch mode, forward initialisation, TargetProp's default H-optimizer,
  H learning rate and λ, one H-step on a fixed minibatch: Eq. 7 does not rise
  and the free states move by less than their own norm (a restarted Adagrad's
  first step is ``h_learning_rate·sign(g)`` on every coordinate, so a too large
  default moves them by several times their norm)."""
  model = tiny_model(task, cell='gru', units=32, seed=0)
  method = _method(task, model, block_size=4, blocks_per_update=9, h_steps=1,
                   mode='minibatch', h_init='forward')
  segment = _segment(task, 0, 36)
  inputs, targets = segment
  state, forward, loss_before = model.initial_state(ROWS), [], 0.0
  for start in range(0, 36, 4):
    loss, state = _losses(model, task, inputs[:, start:start + 4],
                          targets[:, start:start + 4], state)
    loss_before += float(loss)
    forward.append(state)
  forward = tf.nest.map_structure(lambda *s: tf.stack(s), *forward[:-1])
  method.train_segment(segment, model.initial_state(ROWS))  # θ stays (rate 0).
  moved = method.minibatch_states
  loss, penalty = _eq7_reference(
      model, task, segment, 4, moved,
      tf.nest.map_structure(tf.zeros_like, moved), method.penalty)
  assert float(loss + penalty) <= loss_before
  for h, f in zip(tf.nest.flatten(moved), tf.nest.flatten(forward)):
    step = np.linalg.norm(h.numpy() - f.numpy())
    assert 0 < step < np.linalg.norm(f.numpy())


# ---------------------------------------------- constraint and dual step


def test_forward_initialisation_satisfies_the_constraint_exactly(task):
  model = tiny_model(task, cell='lstm', units=5, seed=5)
  segment = _segment(task, 0, 12)
  # h and c of the LSTM at boundaries 3, 6, 9, from one sequential unroll.
  inputs, targets = segment
  state, expected = model.initial_state(ROWS), []
  for start in (0, 3, 6):
    _, state = _losses(model, task, inputs[:, start:start + 3],
                       targets[:, start:start + 3], state)
    expected.append(state)
  moved = {}
  for penalty in (0.0, 10.0):
    method = _method(task, model, block_size=3, blocks_per_update=4, h_steps=0,
                     solver='penalty', penalty=penalty)
    _, metrics = method.train_segment(segment, model.initial_state(ROWS))
    assert abs(float(metrics['penalty_sum'])) < 1e-9
    assert abs(float(metrics['violation_sq_sum'])) < 1e-9
    assert metrics['constraints'] == 3 * ROWS
    stored = tf.nest.flatten(method.minibatch_states)
    assert len(stored) == 2  # h and c.
    for index, leaf in enumerate(stored):
      np.testing.assert_allclose(
          leaf.numpy(), np.stack([tf.nest.flatten(e)[index] for e in expected]),
          atol=1e-6)
    # One H-step: the penalty's h-gradient is zero, so λ does not change it.
    method = _method(task, model, block_size=3, blocks_per_update=4, h_steps=1,
                     h_optimizer='sgd', h_learning_rate=0.5, solver='penalty',
                     penalty=penalty)
    method.train_segment(segment, model.initial_state(ROWS))
    moved[penalty] = [v.numpy() for v in tf.nest.flatten(method.minibatch_states)]
  for a, b in zip(moved[0.0], moved[10.0]):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert max(np.abs(a - tf.nest.flatten(expected[0])[0].numpy()).max()
             for a in moved[0.0][:1]) > 1e-4


@pytest.mark.parametrize('solver', ['admm', 'alm'])
def test_dual_step_is_dual_ascent_on_eq7(task, solver):
  """u ← u + α_u·∇_u L_aug = u + α_u·λ·(h − ĥ + u) (Section 3, step 3)."""
  model = tiny_model(task, cell='gru', units=4, seed=6)
  alpha, lam = 0.3, 1.5
  method = _batch_method(task, model, 4, 3, h_steps=0, solver=solver,
                         penalty=lam, dual_lr=alpha, h_learning_rate=0.0)
  hidden = _random_states(model, [8, ROWS], seed=7)
  duals = _random_states(model, [8, ROWS], seed=8)
  for variables, values in ((method.hidden_states, hidden),
                            (method.dual_variables, duals)):
    tf.nest.map_structure(lambda v, x: v.assign(x), variables, values)
  segment = _segment(task, 0, 36)
  predicted = _predicted_ends(model, task, segment, 4, hidden)
  method.train_segment(segment, model.initial_state(ROWS))
  expected = tf.nest.map_structure(lambda u, h, p: u + alpha * lam * (h - p + u),
                                   duals, hidden, predicted)
  for v, e in zip(tf.nest.flatten(method.dual_variables), tf.nest.flatten(expected)):
    np.testing.assert_allclose(v.numpy(), e.numpy(), rtol=1e-5, atol=1e-6)
  # The penalty method has no dual step.
  method = _batch_method(task, model, 4, 3, h_steps=0, solver='penalty',
                         penalty=lam, dual_lr=alpha)
  tf.nest.map_structure(lambda v, x: v.assign(x), method.dual_variables, duals)
  method.train_segment(segment, model.initial_state(ROWS))
  for v, d in zip(tf.nest.flatten(method.dual_variables), tf.nest.flatten(duals)):
    np.testing.assert_array_equal(v.numpy(), d.numpy())


# ------------------------------------------------------------ batch mode


def test_batch_mode_variables_cover_the_stream_and_survive_checkpoints(
    task, tmp_path):
  model = tiny_model(task, cell='lstm', units=5, seed=8)
  method = _method(task, model, learning_rate=0.1, block_size=5,
                   blocks_per_update=2, mode='batch', updates_per_call=2,
                   use_tf_function=True)
  # 36 steps per column in blocks of 5: 8 blocks (the last one short), 7 boundaries.
  for group in (method.hidden_states, method.dual_variables,
                method.h_accumulators):
    leaves = tf.nest.flatten(group)
    assert len(leaves) == 2  # h and c of the one LSTM layer.
    assert all(tuple(v.shape) == (7, ROWS, 5) for v in leaves)
  method.on_epoch_start(0)
  state = model.initial_state(ROWS)
  for start in range(0, 36, method.segment_length()):
    end = min(start + method.segment_length(), 36)
    state, _ = method.train_segment(_segment(task, start, end), state)
  assert dict(method.trace_counts) == {'train_segment': 1}
  assert int(method.block_position.numpy()) == 8
  saved = tf.train.Checkpoint(method=method).save(str(tmp_path / 'ckpt'))
  values = [v.numpy() for v in tf.nest.flatten(
      (method.hidden_states, method.dual_variables, method.h_accumulators))]
  assert max(np.abs(v).max() for v in values) > 0

  other_model = tiny_model(task, cell='lstm', units=5, seed=9)
  other = _method(task, other_model, block_size=5, blocks_per_update=2,
                  mode='batch')
  tf.train.Checkpoint(method=other).restore(saved).assert_existing_objects_matched()
  restored = [v.numpy() for v in tf.nest.flatten(
      (other.hidden_states, other.dual_variables, other.h_accumulators))]
  for a, b in zip(values, restored):
    np.testing.assert_array_equal(a, b)
  assert int(other.block_position.numpy()) == 8
  other.on_epoch_start(0)  # A resume in the same epoch keeps the position.
  assert int(other.block_position.numpy()) == 8
  other.on_epoch_start(1)
  assert int(other.block_position.numpy()) == 0


# ------------------------------------------------------------ validation


@pytest.mark.parametrize('kwargs,match', [
    ({'block_size': 0}, 'block_size.*0'),
    ({'block_size': -2}, 'block_size.*-2'),
    ({'block_size': 3, 'window': 10}, 'window=10.*whole number of blocks'),
    ({'solver': 'newton'}, "solver.*'newton'"),
    ({'mode': 'online'}, "mode.*'online'"),
    ({'h_init': 'random'}, "h_init.*'random'"),
    ({'penalty': -1.0}, 'penalty.*-1'),
    ({'theta_steps': 0}, 'theta_steps.*0'),
    ({'mode': 'batch', 'batch_size': None}, 'batch_size'),
])
def test_invalid_settings_are_rejected(task, kwargs, match):
  model = tiny_model(task, units=4, seed=0)
  with pytest.raises(ConfigurationError, match=match):
    _method(task, model, **kwargs)


def test_episodic_tasks_need_whole_blocks_and_per_step_losses():
  copy = CopyTask(sequence_length=6)  # 26 steps.
  model = tiny_model(copy, units=4, seed=0)
  with pytest.raises(ConfigurationError, match='block_size=4 does not divide'):
    _method(copy, model, block_size=4, batch_size=None)
  _method(copy, model, block_size=13, batch_size=None)  # 26 = 2 blocks of 13.
  adding = AddingTask(sequence_length=10)
  with pytest.raises(ConfigurationError, match='per-step losses'):
    _method(adding, tiny_model(adding, units=4, seed=0), block_size=5,
            batch_size=None)


def test_several_replicas_are_refused_with_a_clear_message(task, mirrored):
  with mirrored.scope():
    model = tiny_model(task, units=4, seed=0)
    with pytest.raises(ConfigurationError, match='several replicas'):
      _method(task, model, block_size=3)


# ------------------------------------------------------------- trainer


@pytest.mark.slow  # A whole tfcredit.train run.
def test_trainer_writes_target_prop_summaries(tmp_path):
  gin.clear_config()
  try:
    tfcredit.config.parse(
        [TINY_CONFIG],
        ['train.task = @MarkovLanguageTask',
         'MarkovLanguageTask.train_length = 400',
         'MarkovLanguageTask.eval_length = 100',
         'train.method = @TargetProp', 'TargetProp.block_size = 4',
         'TargetProp.blocks_per_update = 3', 'TargetProp.duals = "persistent"',
         'train.epochs = 1', 'train.batch_size = 4', 'train.eval_batch_size = 4',
         'train.evaluate_test = False'])
    result = tfcredit.train(str(tmp_path / 'run'), export_dir=None)
  finally:
    gin.clear_config()
  assert np.isfinite(result['valid_loss'])
  tags = set()
  for path in glob.glob(str(tmp_path / 'run' / 'train' / 'events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      tags.update(value.tag for value in event.summary.value)
  assert {'method/constraint_violation', 'method/dual_norm',
          'method/loss_before_h_steps', 'method/loss_after_h_steps',
          'method/penalty'} <= tags

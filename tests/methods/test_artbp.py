"""Tests of tfcredit.methods.artbp (Tallec & Ollivier 2017).

References are written here from the paper: Eq. 14's probabilities as a literal
formula, window-length probabilities as the sequential product of Eq. 10, and
Eq. 11's compensated backward pass as an explicit step loop whose carried state is
rescaled by hand. The method's sampler, scales and ``window_gradients`` are never
reused to build a reference. Statistical tests use fixed seeds and bounds many
standard errors wide, so they are deterministic and not flaky; each one also shows
that a wrong variant (no compensation, factors off by one step) fails the same bound.
The sampler and compensation-scale tests are in test_artbp_sampler.py, which
shares this module's helpers.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfcredit.methods import ARTBP, TruncatedBPTT
from tfcredit.methods import artbp as artbp_lib
from tfcredit.tasks import base as task_base
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask, CopyTask
from tfcredit.testing import assert_nests_close, built_optimizer, max_abs_diff, tiny_model

from tiers import slow_except


def _eq14(alpha, mean_length, elapsed):
  """Eq. 14, written out."""
  return (alpha - 1.0) / ((alpha - 2.0) * mean_length + elapsed)


def _method(task, model, learning_rate=0.5, **kwargs):
  kwargs.setdefault('mean_length', 5)
  return ARTBP(model=model, task=task,
               optimizer=built_optimizer(model, learning_rate=learning_rate), **kwargs)


def _stream_segment(task, start, length, batch_size=3):
  data = task.stream('train', batch_size)
  return (tf.constant(data[:, start:start + length]),
          tf.constant(data[:, start + 1:start + length + 1]))


def _snapshot(model):
  return [v.numpy().copy() for v in model.trainable_variables]


def _restore(model, weights):
  for variable, value in zip(model.trainable_variables, weights):
    variable.assign(value)


def _flat(gradients):
  return np.concatenate([np.ravel(tf.convert_to_tensor(g).numpy())
                         for g in gradients]).astype(np.float64)


class _OffByOne(artbp_lib.TruncationSampler):
  """Factors of the next step, 1 / (1 - c(δt + 1)): a plausible indexing bug."""

  def compensation(self, elapsed):
    return super().compensation(tf.cast(elapsed, tf.float64) + 1)


@pytest.fixture(scope='module')
def markov():
  """A token stream task and a tiny LSTM with long memory (forget bias 1)."""
  task = MarkovLanguageTask(vocabulary_size=6, branching=2, seed=1)
  return task, tiny_model(task, units=8, seed=3)


# ------------------------------------------------------------ unbiasedness


def _full_bptt(model, inputs, targets):
  with tf.GradientTape() as tape:
    outputs, _ = model.unroll(inputs, model.initial_state(1), training=True)
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=targets, logits=outputs))
  return _flat(tape.gradient(loss, model.trainable_variables))


def _batched_estimates(method, inputs, targets, rows, calls):
  """``calls`` means of ``rows`` per-row ARTBP estimates each (float64)."""
  tiled = (tf.tile(inputs, [rows, 1]), tf.tile(targets, [rows, 1]))
  state = method.model.initial_state(rows)
  return np.stack([_flat(method.estimate_gradients(tiled, state)[0])
                   for _ in range(calls)])


@pytest.mark.slow  # A statistical bound over many draws.
@pytest.mark.parametrize('schedule,variant', [
    ('power', 'eq11'), ('constant', 'eq11'), ('power', 'no compensation'),
    ('power', 'off by one')])
def test_mean_estimate_is_the_full_bptt_gradient(markov, schedule, variant):
  """Prop. 1 on a 40-step sequence: 8000 estimates (64 calls of 125 rows)."""
  task, model = markov
  data = task.stream('train', 1)
  inputs, targets = tf.constant(data[:, :40]), tf.constant(data[:, 1:41])
  exact = _full_bptt(model, inputs, targets)
  norm = np.linalg.norm(exact)
  method = _method(task, model, mean_length=8, alpha=4.0, schedule=schedule,
                   estimate_draws='per_row', seed=7)
  if variant == 'no compensation':  # Random truncations alone are biased.
    method.sampler.compensation = lambda e: tf.ones_like(tf.cast(e, tf.float64))
  elif variant == 'off by one':
    method.sampler = _OffByOne(8, 4.0, schedule)
  rows, calls = 125, 64
  chunks = _batched_estimates(method, inputs, targets, rows, calls)
  # Variance of one estimate (trace of its covariance), from the chunk scatter.
  variance = rows * np.sum(np.var(chunks, axis=0, ddof=1))

  def error(count):
    return np.linalg.norm(chunks[:count // rows].mean(axis=0) - exact) / norm

  def standard_error(count):
    return np.sqrt(variance / count) / norm

  def rmse(count):  # Over the disjoint groups of ``count`` estimates.
    groups = chunks.reshape(-1, count // rows, exact.size).mean(axis=1)
    return np.sqrt(np.mean(np.sum((groups - exact)**2, axis=1))) / norm

  unbiased = all(error(n) < 4 * standard_error(n) for n in (2000, 8000))
  if variant != 'eq11':
    assert not unbiased
    return
  assert unbiased
  assert error(2000) < 0.05 and error(8000) < 0.05
  # The error shrinks as 1/sqrt(N): 16 times the estimates, a quarter the error.
  assert 2.0 < rmse(125) / rmse(2000) < 8.0

  # Truncated BPTT with window L0 is deterministic: its error never shrinks.
  # (Eager and uncompiled: run twice, a trace or an XLA compile would cost more
  # than the runs; test_truncated_bptt checks the compiled pass.)
  truncated = TruncatedBPTT(model=model, task=task, optimizer=method.optimizer,
                            window=8, use_tf_function=False, jit_compile=False)
  tbptt_errors = []
  for count in (1, 125):
    tiled = (tf.tile(inputs, [count, 1]), tf.tile(targets, [count, 1]))
    gradients, _ = truncated.estimate_gradients(tiled, model.initial_state(count))
    tbptt_errors.append(np.linalg.norm(_flat(gradients) - exact) / norm)
  assert tbptt_errors[0] == pytest.approx(tbptt_errors[1], rel=1e-3)
  assert tbptt_errors[0] > 0.1
  assert tbptt_errors[0] > 20 * standard_error(8000)


def test_shared_draws_give_one_truncation_for_the_whole_batch(markov):
  task, model = markov
  method = _method(task, model, mean_length=4)
  inputs, targets = _stream_segment(task, 0, 30, batch_size=1)
  tiled = (tf.tile(inputs, [4, 1]), tf.tile(targets, [4, 1]))
  draw = int(method.estimate_blocks)
  batched, _ = method.estimate_gradients(tiled, model.initial_state(4))
  method.estimate_blocks.assign(draw)
  single, _ = method.estimate_gradients((inputs, targets), model.initial_state(1))
  assert_nests_close(batched, single, rtol=1e-4, atol=1e-6)
  following, _ = method.estimate_gradients((inputs, targets), model.initial_state(1))
  assert max_abs_diff(following, single) > 1e-5  # A new draw per call.


# ------------------------------------------------------------------ training


def _loss_sum(task, outputs, targets):
  """Sum of unreduced losses, written out independently of the task classes."""
  if task.readout == task_base.TERMINAL:
    return tf.reduce_sum(tf.reduce_mean(tf.square(outputs - targets), axis=-1))
  log_probabilities = tf.nn.log_softmax(outputs, axis=-1)
  return -tf.reduce_sum(tf.gather(log_probabilities, targets, batch_dims=2))


def _reference_artbp(model, task, segment, lengths, alpha, mean_length,
                     learning_rate, variant='eq11'):
  """Explicit ARTBP with SGD: per window, a step loop from the stopped state.

  Between steps ``j`` and ``j + 1`` of a window the carried state's gradient is
  multiplied by ``1 / (1 − c(j + 1))`` (Eq. 11) with the identity
  ``f·s + (1 − f)·stop_gradient(s)``.

  Args:
    variant: ``'eq11'``; ``'actual'`` (divide by the window's sampled length, not
      L0); ``'reweight'`` (no factors inside, the window loss multiplied by its
      largest product instead): both wrong.

  Returns:
    ``(weights, loss_sum, updates, final state)``.
  """
  inputs, targets = segment
  batch, length = int(inputs.shape[0]), int(inputs.shape[1])
  terminal = task.readout == task_base.TERMINAL
  factor = lambda elapsed: 1.0 / (1.0 - _eq14(alpha, mean_length, elapsed))
  state = model.initial_state(batch)
  start, loss_total, updates = 0, 0.0, 0
  for window_length in lengths:
    end = min(start + int(window_length), length)
    state = tf.nest.map_structure(tf.stop_gradient, state)
    with tf.GradientTape() as tape:
      outputs = []
      for step in range(start, end):
        if step > start and variant != 'reweight':
          f = factor(step - start)  # δt of the previous step.
          state = tf.nest.map_structure(
              lambda s, f=f: f * s + (1.0 - f) * tf.stop_gradient(s), state)
        output, state = model.step(inputs[:, step], state, training=True)
        outputs.append(output)
      if terminal:
        loss_sum = _loss_sum(task, outputs[-1], targets) if end == length else None
        objective = None if loss_sum is None else loss_sum / batch
      else:
        loss_sum = _loss_sum(task, tf.stack(outputs, axis=1), targets[:, start:end])
        steps = end - start if variant == 'actual' else mean_length
        objective = loss_sum / (batch * steps)
      if objective is not None and variant == 'reweight':
        objective *= np.prod([factor(d) for d in range(1, end - start)])
    if objective is not None:
      gradients = tape.gradient(objective, model.trainable_variables)
      for variable, gradient in zip(model.trainable_variables, gradients):
        variable.assign_sub(learning_rate * tf.convert_to_tensor(gradient))
      loss_total += float(loss_sum)
      updates += 1
    start = end
    if end == length:
      break
  return _snapshot(model), loss_total, updates, state


def _check_training_matches_reference(task, model, method, segment, alpha,
                                      mean_length):
  lengths = method.planned_window_lengths()
  length = int(segment[0].shape[1])
  assert lengths.sum() >= length
  initial = _snapshot(model)
  state, metrics = method.train_segment(segment, model.initial_state(
      int(segment[0].shape[0])))
  trained = _snapshot(model)
  _restore(model, initial)
  expected, loss_total, updates, expected_state = _reference_artbp(
      model, task, segment, lengths, alpha, mean_length, 0.5)
  assert_nests_close(trained, expected, rtol=2e-4, atol=1e-6)
  assert_nests_close(state, expected_state, rtol=1e-4, atol=1e-6)
  used = np.diff(np.minimum(np.concatenate([[0], np.cumsum(lengths)]), length))
  used = used[used > 0]
  assert float(metrics['windows']) == len(used)
  assert float(metrics['window_length_sum']) == length
  np.testing.assert_array_equal(metrics['window_lengths'], used)
  assert float(metrics['updates']) == updates
  assert float(metrics['loss_sum']) == pytest.approx(loss_total, rel=1e-4)
  backpropagated = used[-1:] if task.readout == task_base.TERMINAL else used
  product = np.prod([1 / (1 - _eq14(alpha, mean_length, d))
                     for d in range(1, backpropagated.max())])
  assert float(metrics['max_compensation']) == pytest.approx(product, rel=1e-4)
  # The comparison can fail: the wrong normalizer or window-loss reweighting.
  for wrong in ('actual', 'reweight'):
    if task.readout == task_base.TERMINAL and wrong == 'actual':
      continue
    _restore(model, initial)
    other, _, _, _ = _reference_artbp(model, task, segment, lengths, alpha,
                                      mean_length, 0.5, wrong)
    assert max_abs_diff(other, expected) > 1e-4, wrong
  _restore(model, trained)
  return lengths


def test_stream_training_is_one_compensated_sgd_step_per_window(markov):
  task, model = markov
  method = _method(task, model, mean_length=5, alpha=4.0, windows_per_call=4,
                   seed=2)
  length = method.segment_length()
  assert length == method.planned_window_lengths().sum()
  segment = _stream_segment(task, 0, length)
  lengths = _check_training_matches_reference(task, model, method, segment, 4.0, 5)
  assert len(lengths) == 4 and lengths.max() > 1


@pytest.mark.parametrize('task_name', slow_except(['copy', 'adding'], 'adding'))
def test_episodic_windows_are_drawn_inside_the_sequence_and_end_at_T(task_name):
  if task_name == 'copy':  # Per-step loss: an update per window.
    task = CopyTask(sequence_length=5, seed=3)   # 25 steps
  else:  # Terminal loss: only the window ending at T updates.
    task = AddingTask(sequence_length=12, seed=3)
  model = tiny_model(task, units=6, seed=11)
  method = _method(task, model, mean_length=4, alpha=6.0, windows_per_call=12,
                   seed=4)
  assert method.segment_length() is None
  inputs, targets = task.batch('train', 0, 0, 4)
  _check_training_matches_reference(task, model, method, (tf.constant(inputs),
                                                          tf.constant(targets)),
                                    6.0, 4)


def test_stream_truncation_process_continues_across_calls(markov):
  task, model = markov
  method = _method(task, model, mean_length=4, windows_per_call=5, seed=9,
                   learning_rate=1e-3)
  state, position = model.initial_state(3), 0
  first = method.planned_window_lengths()
  assert method.segment_length() == first.sum() == method.segment_length()
  np.testing.assert_array_equal(method.planned_window_lengths(), first)  # Not consumed.

  state, metrics = method.train_segment(_stream_segment(task, 0, first.sum()), state)
  assert float(metrics['windows']) == 5
  assert float(metrics['window_length_sum']) == first.sum()
  position += first.sum()
  second = method.planned_window_lengths()
  assert not np.array_equal(second, first)

  # The stream ends inside the planned windows: the last one is cut at T.
  short = int(second.sum()) - int(second[-1]) + 1
  _, metrics = method.train_segment(_stream_segment(task, position, short), state)
  assert float(metrics['windows']) == 5
  assert float(metrics['window_length_sum']) == short
  third = method.planned_window_lengths()
  assert not np.array_equal(third, second)

  # A longer segment than planned draws further blocks.
  blocks = int(method.training_blocks)
  _, metrics = method.train_segment(_stream_segment(task, 0, 3 * third.sum()),
                                    model.initial_state(3))
  assert int(method.training_blocks) >= blocks + 3
  assert float(metrics['windows']) > 10
  assert float(metrics['window_length_sum']) == 3 * third.sum()


def test_checkpoint_restores_the_truncation_process(markov, tmp_path):
  task, model = markov
  method = _method(task, model, mean_length=4, windows_per_call=3, seed=5,
                   learning_rate=1e-3)
  state = model.initial_state(3)
  for _ in range(2):
    state, _ = method.train_segment(
        _stream_segment(task, 0, method.segment_length()), state)
  path = tf.train.Checkpoint(method=method).write(str(tmp_path / 'ckpt'))
  upcoming = []
  for _ in range(3):
    upcoming.append(method.planned_window_lengths())
    state, _ = method.train_segment(
        _stream_segment(task, 0, upcoming[-1].sum()), state)

  # A method built with another seed takes the saved process over. (Eager:
  # three calls cost less than a trace; the first method ran compiled.)
  restored = _method(task, model, mean_length=4, windows_per_call=3, seed=123,
                     learning_rate=1e-3, use_tf_function=False)
  assert not np.array_equal(restored.planned_window_lengths(), upcoming[0])
  tf.train.Checkpoint(method=restored).read(path).assert_existing_objects_matched()
  for expected in upcoming:
    np.testing.assert_array_equal(restored.planned_window_lengths(), expected)
    state, _ = restored.train_segment(_stream_segment(task, 0, expected.sum()), state)


def test_estimates_do_not_consume_training_draws(markov):
  task, model = markov
  method = _method(task, model, mean_length=4, seed=6)
  planned = method.planned_window_lengths()
  segment = _stream_segment(task, 0, 20)
  for _ in range(3):
    method.estimate_gradients(segment, model.initial_state(3))
  np.testing.assert_array_equal(method.planned_window_lengths(), planned)


@pytest.mark.slow  # Many random window lengths are the point.
def test_each_function_traces_once_over_200_windows_of_random_length():
  task = MarkovLanguageTask(vocabulary_size=6, branching=2, seed=2)
  model = tiny_model(task, cell='gru', units=4, seed=42)
  method = _method(task, model, mean_length=3, alpha=4.0, windows_per_call=12,
                   learning_rate=1e-3)
  windows, lengths_seen = 0.0, set()
  for batch_size in (3, 5):
    state, position = model.initial_state(batch_size), 0
    while windows < 100 * (1 + (batch_size == 5)):
      length = method.segment_length()
      segment = _stream_segment(task, position, length, batch_size)
      state, metrics = method.train_segment(segment, state)
      windows += float(metrics['windows'])
      lengths_seen.add(length)
      position += length
      method.estimate_gradients(segment, state)
  assert windows >= 200 and len(lengths_seen) > 10
  assert method.trace_counts == {'train_segment': 1, 'estimate_gradients': 1,
                                 'plan': 1}

  episodic = CopyTask(sequence_length=4, seed=1)
  episodic_model = tiny_model(episodic, units=4, seed=1)
  episodic_method = _method(episodic, episodic_model, mean_length=3)
  for batch_size, length in ((4, 24), (2, 9), (4, 1)):
    inputs, targets = episodic.batch('train', 0, 0, batch_size)
    segment = (tf.constant(inputs[:, :length]), tf.constant(targets[:, :length]))
    episodic_method.train_segment(segment, episodic_model.initial_state(batch_size))
    episodic_method.estimate_gradients(segment,
                                       episodic_model.initial_state(batch_size))
  assert episodic_method.trace_counts['train_segment'] == 1
  assert episodic_method.trace_counts['estimate_gradients'] == 1


# ------------------------------------------------------------- distribution


def _train_artbp(strategy, task, estimate_draws, use_tf_function=True):
  with strategy.scope():
    model = tiny_model(task, seed=0)
    method = _method(task, model, learning_rate=0.05, mean_length=4,
                     windows_per_call=3, estimate_draws=estimate_draws, seed=3,
                     use_tf_function=use_tf_function)
  if task.regime == task_base.STREAM:
    segment = _stream_segment(task, 0, 30, batch_size=4)
  else:
    inputs, targets = task.batch('train', 0, 0, 4)
    segment = (tf.constant(inputs), tf.constant(targets))
  state, metrics = model.initial_state(4), []
  for _ in range(2):
    state, result = method.train_segment(segment, state)
    metrics.append({key: value.numpy() for key, value in result.items()})
  gradients, _ = method.estimate_gradients(segment, model.initial_state(4))
  return (_snapshot(model), tf.nest.flatten(state), metrics,
          [g.numpy() for g in gradients], int(method.training_blocks.numpy()))


@pytest.mark.slow  # Two replicas, as tests/training/test_distribution.py.
@pytest.mark.parametrize('kind,estimate_draws', [
    ('stream', 'per_row'), ('adding', 'shared')])
def test_two_replicas_draw_the_same_windows_and_train_the_same(kind,
                                                               estimate_draws,
                                                               mirrored):
  task = (MarkovLanguageTask(vocabulary_size=6, seed=4) if kind == 'stream'
          else AddingTask(sequence_length=12, seed=2))
  # One replica, the reference: eager (two calls and an estimate cost less
  # than their traces; the compiled single-replica path is every other test's).
  one = _train_artbp(tf.distribute.get_strategy(), task, estimate_draws,
                     use_tf_function=False)
  two = _train_artbp(mirrored, task, estimate_draws)
  assert_nests_close(two[0], one[0], rtol=1e-5, atol=1e-5)
  assert_nests_close(two[1], one[1], rtol=1e-5, atol=1e-5)
  for metrics_one, metrics_two in zip(one[2], two[2]):
    assert metrics_one.keys() == metrics_two.keys()
    for key in metrics_one:
      np.testing.assert_allclose(metrics_two[key], metrics_one[key], rtol=1e-5,
                                 err_msg=key)
  assert_nests_close(two[3], one[3], rtol=1e-4, atol=1e-5)
  assert two[4] == one[4] > 0

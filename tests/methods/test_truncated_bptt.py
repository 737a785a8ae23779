"""Tests of tfcredit.methods.truncated_bptt (TruncatedBPTT and BPTT).

Every reference is an explicit Python loop over windows written here, with its own
``tf.GradientTape``, its own losses (cross-entropy / squared error written out) and,
for updates, its own ``variable.assign_sub``: the method's ``objective``,
``window_gradients`` and optimizer calls are never reused. Configuration (bad
settings, XLA) is tested in test_truncated_bptt_settings.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.methods import BPTT, TruncatedBPTT
from tfcredit.tasks import base as task_base
from tfcredit.tasks.synthetic import AddingTask, CopyTask
from tfcredit.testing import assert_nests_close, built_optimizer, max_abs_diff, tiny_model

BATCH = 4


def _copy_segment(task: CopyTask, batch_size: int = BATCH, index: int = 0):
  inputs, targets = task.batch('train', 0, index, batch_size)
  return tf.constant(inputs), tf.constant(targets)


def _adding_segment(task: AddingTask, batch_size: int = BATCH):
  inputs, targets = task.batch('train', 0, 0, batch_size)
  return tf.constant(inputs), tf.constant(targets)


def _loss_sum(task, outputs, targets) -> tf.Tensor:
  """Sum of unreduced losses, written out independently of the task classes."""
  if task.readout == task_base.TERMINAL:
    return tf.reduce_sum(tf.reduce_mean(tf.square(outputs - targets), axis=-1))
  log_probabilities = tf.nn.log_softmax(outputs, axis=-1)
  picked = tf.gather(log_probabilities, targets, batch_dims=2)
  return -tf.reduce_sum(picked)


def _dense(gradients):
  return [tf.convert_to_tensor(g) for g in gradients]


def _reference_window_gradients(model, task, segment, window, normalizer):
  """Explicit truncated BPTT: per window, a fresh tape from a stopped state.

  Args:
    model: the model (weights are read, never changed).
    task: per-step or terminal task.
    segment: ``(inputs, targets)``.
    window: steps per window.
    normalizer: per-step objective is ``loss_sum / (B * normalizer)``, where
      ``normalizer`` is None for the actual window length; terminal is the batch mean.

  Returns:
    ``(per-window dense gradients, final state)``.
  """
  inputs, targets = segment
  batch, length = int(inputs.shape[0]), int(inputs.shape[1])
  state = model.initial_state(batch)
  per_window = []
  for start in range(0, length, window):
    end = min(start + window, length)
    state = tf.nest.map_structure(tf.stop_gradient, state)
    if task.readout == task_base.TERMINAL and end < length:
      # No loss in this window: it only runs forward.
      _, state = model.unroll(inputs[:, start:end], state, training=True)
      per_window.append([tf.zeros_like(v) for v in model.trainable_variables])
      continue
    with tf.GradientTape() as tape:
      outputs, state = model.unroll(inputs[:, start:end], state, training=True)
      if task.readout == task_base.TERMINAL:
        objective = _loss_sum(task, outputs, targets) / batch
      else:
        steps = end - start if normalizer is None else normalizer
        objective = _loss_sum(task, outputs, targets[:, start:end]) / (batch * steps)
    per_window.append(_dense(tape.gradient(objective, model.trainable_variables)))
  return per_window, state


def _full_bptt_gradients(model, task, segment):
  """``∇ (1/B) Σ_t ℓ_t`` (per step) or ``∇ mean_b ℓ_b`` (terminal), one tape."""
  inputs, targets = segment
  batch = int(inputs.shape[0])
  with tf.GradientTape() as tape:
    outputs, state = model.unroll(inputs, model.initial_state(batch), training=True)
    objective = _loss_sum(task, outputs, targets) / batch
  return _dense(tape.gradient(objective, model.trainable_variables)), state


def _summed(per_window):
  return [tf.add_n(list(parts)) for parts in zip(*per_window)]


def _method(cls, task, model, learning_rate=0.1, **kwargs):
  optimizer = built_optimizer(model, learning_rate=learning_rate)
  return cls(model=model, task=task, optimizer=optimizer, **kwargs)


def _snapshot(model):
  return [v.numpy().copy() for v in model.trainable_variables]


def _restore(model, weights):
  for variable, value in zip(model.trainable_variables, weights):
    variable.assign(value)


class _Setup:
  """A task, a tiny model, one segment, and the methods the tests share.

  Tracing dominates the cost of these tests, so each method instance (and each of
  its two compiled functions) serves several tests. Tests leave the weights where
  training took them; every reference is computed at the weights current when it
  runs, so the order of the tests does not matter.
  """

  # name -> (class, learning rate, keyword arguments)
  METHODS = {
      # window >= T: one window; the large rate and tiny clip_norm serve the
      # clipping test (estimate_gradients uses neither).
      'one_window': (TruncatedBPTT, 2.0, dict(window=100, clip_norm=5e-3)),
      'bptt': (BPTT, 0.5, {}),
      'windowed': (TruncatedBPTT, 0.5, {}),  # window set per task below
  }

  def __init__(self, task, model, segment, window):
    self.task, self.model, self.segment, self.window = task, model, segment, window
    self._methods = {}

  def method(self, name):
    if name not in self._methods:
      cls, learning_rate, kwargs = self.METHODS[name]
      if name == 'windowed':
        kwargs = dict(window=self.window)
      self._methods[name] = _method(cls, self.task, self.model,
                                    learning_rate=learning_rate, **kwargs)
    return self._methods[name]


@pytest.fixture(scope='module')
def copy_setup():
  task = CopyTask(sequence_length=5, seed=3)  # 25 steps = windows 10 + 10 + 5
  return _Setup(task, tiny_model(task, units=6, seed=11), _copy_segment(task),
                window=10)


@pytest.fixture(scope='module')
def adding_setup():
  task = AddingTask(sequence_length=12, seed=3)  # 12 steps = windows 5 + 5 + 2
  return _Setup(task, tiny_model(task, units=6, cell='gru', seed=12),
                _adding_segment(task), window=5)


@pytest.fixture(params=['copy', 'adding'])
def setup(request, copy_setup, adding_setup):
  return copy_setup if request.param == 'copy' else adding_setup


# ------------------------------------------------------------ estimates


def test_one_window_estimate_equals_full_bptt(setup):
  task, model, segment = setup.task, setup.model, setup.segment
  expected, expected_state = _full_bptt_gradients(model, task, segment)
  state = model.initial_state(BATCH)
  for name in ('one_window', 'bptt'):
    gradients, final_state = setup.method(name).estimate_gradients(segment, state)
    assert_nests_close(gradients, expected, rtol=1e-5, atol=1e-6)
    assert_nests_close(final_state, expected_state, rtol=1e-5, atol=1e-6)


def test_windowed_estimate_sums_gradients_with_stopped_state_between_windows(
    setup):
  task, model, segment = setup.task, setup.model, setup.segment
  per_window, expected_state = _reference_window_gradients(
      model, task, segment, setup.window, normalizer=1)
  assert len(per_window) == 3
  gradients, final_state = setup.method('windowed').estimate_gradients(
      segment, model.initial_state(BATCH))
  expected = _summed(per_window)
  assert_nests_close(gradients, expected, rtol=1e-5, atol=1e-6)
  assert_nests_close(final_state, expected_state, rtol=1e-5, atol=1e-6)
  # Truncation must change the estimate, or the comparison could not fail.
  full, _ = _full_bptt_gradients(model, task, segment)
  assert max_abs_diff(expected, full) > 1e-4
  if task.readout == task_base.TERMINAL:
    # Only the last window carries the loss; earlier windows give exactly zero.
    assert all(max_abs_diff(g, [tf.zeros_like(x) for x in g]) == 0.0
               for g in per_window[:-1])
    assert_nests_close(gradients, per_window[-1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ updates


def _reference_sgd(model, task, segment, window, learning_rate, divide_by,
                   recompute='never'):
  """Explicit truncated BPTT with plain SGD, one update per window.

  Args:
    divide_by: ``'nominal'`` (``B * window``, the convention) or ``'actual'``
      (``B * window length``), or ``'initial'`` to take every window's gradient at
      the starting weights (a wrong reference used to show the test can fail).
    recompute: ``'previous_window'``: start each window after the first from
      the previous window run forward again at the current weights, from the
      state it started from; ``'call_start'``: from the segment's start.

  Returns:
    ``(final weights, summed loss, summed gradient norms, updates, final state)``.
  """
  inputs, targets = segment
  batch, length = int(inputs.shape[0]), int(inputs.shape[1])
  state = model.initial_state(batch)
  loss_total, norm_total, updates, pending = 0.0, 0.0, 0, []
  origin, origin_state = 0, state
  for start in range(0, length, window):
    end = min(start + window, length)
    steps = end - start if divide_by == 'actual' else window
    if recompute != 'never' and start > 0:
      state = model.unroll(inputs[:, origin:start], origin_state,
                           training=True)[1]
    state = tf.nest.map_structure(tf.stop_gradient, state)
    if recompute == 'previous_window':
      origin, origin_state = start, state
    with tf.GradientTape() as tape:
      outputs, state = model.unroll(inputs[:, start:end], state, training=True)
      loss_sum = _loss_sum(task, outputs, targets[:, start:end])
      objective = loss_sum / (batch * steps)
    gradients = _dense(tape.gradient(objective, model.trainable_variables))
    loss_total += float(loss_sum)
    norm_total += float(np.sqrt(sum(np.sum(np.square(g.numpy().astype(np.float64)))
                                    for g in gradients)))
    updates += 1
    if divide_by == 'initial':
      pending.append(gradients)
    else:
      for variable, gradient in zip(model.trainable_variables, gradients):
        variable.assign_sub(learning_rate * gradient)
  for gradients in pending:
    for variable, gradient in zip(model.trainable_variables, gradients):
      variable.assign_sub(learning_rate * gradient)
  return _snapshot(model), loss_total, norm_total, updates, state


def test_train_segment_applies_one_sgd_step_per_window_at_current_weights(
    copy_setup):
  task, model, segment = copy_setup.task, copy_setup.model, copy_setup.segment
  method = copy_setup.method('windowed')  # window 10 over 25 steps, SGD rate 0.5
  initial = _snapshot(model)
  iterations = int(method.optimizer.iterations)

  state, metrics = method.train_segment(segment, model.initial_state(BATCH))
  trained = _snapshot(model)

  _restore(model, initial)
  expected, loss_total, norm_total, updates, expected_state = _reference_sgd(
      model, task, segment, 10, 0.5, 'nominal')
  assert updates == 3
  assert float(metrics['updates']) == 3.0
  assert int(method.optimizer.iterations) - iterations == 3
  assert_nests_close(trained, expected, rtol=1e-5, atol=1e-6)
  # The carried state is the one each window's forward pass produced.
  assert_nests_close(state, expected_state, rtol=1e-5, atol=1e-6)
  assert float(metrics['loss_sum']) == pytest.approx(loss_total, rel=1e-5)
  assert float(metrics['count']) == BATCH * 25

  # The comparisons can fail: dividing the last window by its actual length (5),
  # or taking every gradient at the initial weights, gives other weights.
  for wrong in ('actual', 'initial'):
    _restore(model, initial)
    other, _, _, _, _ = _reference_sgd(model, task, segment, 10, 0.5, wrong)
    assert max_abs_diff(other, expected) > 1e-4, wrong
  _restore(model, trained)

  # Token inputs make the embedding gradient IndexedSlices with repeated rows;
  # the reported norm must still be the norm of the (dense) gradient.
  assert float(metrics['grad_norm_sum']) == pytest.approx(norm_total, rel=1e-4)


@pytest.mark.parametrize('recompute', ['previous_window', 'call_start'])
def test_recompute_state_starts_each_window_from_the_state_at_current_weights(
    copy_setup, recompute):
  task, model, segment = copy_setup.task, copy_setup.model, copy_setup.segment
  # Windows of 5 over 25 steps: 'call_start' recomputes over up to 20 steps.
  method = _method(TruncatedBPTT, task, model, learning_rate=0.5, window=5,
                   recompute_state=recompute)
  initial = _snapshot(model)
  state, metrics = method.train_segment(segment, model.initial_state(BATCH))
  trained = _snapshot(model)

  _restore(model, initial)
  expected, loss_total, _, updates, expected_state = _reference_sgd(
      model, task, segment, 5, 0.5, 'nominal', recompute=recompute)
  assert updates == 5 and float(metrics['updates']) == 5.0
  assert_nests_close(trained, expected, rtol=1e-5, atol=1e-6)
  assert_nests_close(state, expected_state, rtol=1e-5, atol=1e-6)
  assert float(metrics['loss_sum']) == pytest.approx(loss_total, rel=1e-5)
  # The carried state, or the other recomputation, gives other weights: the
  # test can fail.
  other = 'call_start' if recompute == 'previous_window' else 'previous_window'
  for wrong in ('never', other):
    _restore(model, initial)
    weights, _, _, _, _ = _reference_sgd(model, task, segment, 5, 0.5, 'nominal',
                                         recompute=wrong)
    assert max_abs_diff(weights, expected) > 1e-4, wrong
  _restore(model, trained)


def test_recompute_state_must_be_one_of_its_values(copy_setup):
  with pytest.raises(ConfigurationError,
                     match="TruncatedBPTT.recompute_state.*'call_start'"):
    _method(TruncatedBPTT, copy_setup.task, copy_setup.model, window=10,
            recompute_state=True)


def test_bptt_train_segment_is_one_update_on_the_mean_over_steps(copy_setup):
  task, model, segment = copy_setup.task, copy_setup.model, copy_setup.segment
  method = copy_setup.method('bptt')
  initial = _snapshot(model)
  _, metrics = method.train_segment(segment, model.initial_state(BATCH))
  trained = _snapshot(model)
  _restore(model, initial)
  expected, _, _, _, _ = _reference_sgd(model, task, segment, 25, 0.5,
                                        'nominal')
  assert float(metrics['updates']) == 1.0
  assert_nests_close(trained, expected, rtol=1e-5, atol=1e-6)


def test_train_segment_on_terminal_task_updates_once_from_the_last_window(
    adding_setup):
  task, model, segment = (adding_setup.task, adding_setup.model,
                          adding_setup.segment)
  method = adding_setup.method('windowed')  # window 5 over 12 steps, SGD rate 0.5
  initial = _snapshot(model)
  iterations = int(method.optimizer.iterations)
  _, metrics = method.train_segment(segment, model.initial_state(BATCH))
  trained = _snapshot(model)
  _restore(model, initial)
  per_window, _ = _reference_window_gradients(model, task, segment, 5, None)
  expected = [w - 0.5 * g.numpy() for w, g in zip(initial, per_window[-1])]
  assert float(metrics['updates']) == 1.0
  assert int(method.optimizer.iterations) - iterations == 1
  assert_nests_close(trained, expected, rtol=1e-5, atol=1e-6)
  _restore(model, trained)


def test_clipping_scales_the_update_to_the_threshold(setup):
  # Copy has token inputs (IndexedSlices embedding gradient); adding has none.
  task, model, segment = setup.task, setup.model, setup.segment
  method = setup.method('one_window')
  learning_rate, clip_norm, window = 2.0, 5e-3, 100
  initial = _snapshot(model)
  _, metrics = method.train_segment(segment, model.initial_state(BATCH))
  # A large rate keeps the update well above float32 rounding of the weights.
  update = [after - before for after, before in zip(_snapshot(model), initial)]

  _restore(model, initial)
  normalizer = window if task.readout == task_base.PER_STEP else None
  (gradients,), _ = _reference_window_gradients(model, task, segment, window,
                                                normalizer)
  gradients = [g.numpy().astype(np.float64) for g in gradients]
  norm = np.sqrt(sum(np.sum(np.square(g)) for g in gradients))
  assert norm > 10 * clip_norm  # clipping is active
  update_norm = np.sqrt(sum(np.sum(np.square(u.astype(np.float64)))
                            for u in update))
  assert update_norm == pytest.approx(learning_rate * clip_norm, rel=1e-3)
  expected = [-learning_rate * clip_norm * g / norm for g in gradients]
  assert_nests_close(update, expected, rtol=1e-3, atol=1e-6)
  assert float(metrics['grad_norm_sum']) == pytest.approx(norm, rel=1e-4)

"""Tests of tfcredit.methods.truncated_bptt (TruncatedBPTT and BPTT).

Every reference is an explicit Python loop over windows written here, with its own
``tf.GradientTape``, its own losses (cross-entropy / squared error written out) and,
for updates, its own ``variable.assign_sub``: the method's ``objective``,
``window_gradients`` and optimizer calls are never reused.
"""

from typing import Any, Dict, Tuple

import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.methods import BPTT, TruncatedBPTT
from tfcredit.tasks import base as task_base
from tfcredit.tasks.synthetic import AddingTask, CopyTask
from tfcredit.testing import (assert_nests_close, built_optimizer, max_abs_diff,
                              tiny_model)

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


# ------------------------------------------------------------ estimates


@pytest.fixture(scope='module')
def copy_setup():
  task = CopyTask(sequence_length=5, seed=3)  # 25 steps
  return task, tiny_model(task, units=6, seed=11), _copy_segment(task)


@pytest.fixture(scope='module')
def adding_setup():
  task = AddingTask(sequence_length=12, seed=3)
  return task, tiny_model(task, units=6, cell='gru', seed=12), _adding_segment(task)


@pytest.fixture(params=['copy', 'adding'])
def setup(request, copy_setup, adding_setup):
  return copy_setup if request.param == 'copy' else adding_setup


def test_one_window_estimate_equals_full_bptt(setup):
  task, model, segment = setup
  expected, expected_state = _full_bptt_gradients(model, task, segment)
  state = model.initial_state(BATCH)
  for method in (_method(TruncatedBPTT, task, model, window=100),
                 _method(BPTT, task, model)):
    gradients, final_state = method.estimate_gradients(segment, state)
    assert_nests_close(gradients, expected, rtol=1e-5, atol=1e-6)
    assert_nests_close(final_state, expected_state, rtol=1e-5, atol=1e-6)


def test_windowed_estimate_sums_gradients_with_stopped_state_between_windows(
    setup):
  task, model, segment = setup
  window = 7 if task.readout == task_base.PER_STEP else 5  # 25 = 7+7+7+4; 12 = 5+5+2
  per_window, expected_state = _reference_window_gradients(
      model, task, segment, window, normalizer=1)
  method = _method(TruncatedBPTT, task, model, window=window)
  gradients, final_state = method.estimate_gradients(
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


def _snapshot(model):
  return [v.numpy().copy() for v in model.trainable_variables]


def _restore(model, weights):
  for variable, value in zip(model.trainable_variables, weights):
    variable.assign(value)


def _reference_sgd(model, task, segment, window, learning_rate, divide_by):
  """Explicit truncated BPTT with plain SGD, one update per window.

  Args:
    divide_by: ``'nominal'`` (``B * window``, the convention) or ``'actual'``
      (``B * window length``), or ``'initial'`` to take every window's gradient at
      the starting weights (a wrong reference used to show the test can fail).

  Returns:
    ``(final weights, summed loss, summed gradient norms, updates, final state)``.
  """
  inputs, targets = segment
  batch, length = int(inputs.shape[0]), int(inputs.shape[1])
  state = model.initial_state(batch)
  loss_total, norm_total, updates, pending = 0.0, 0.0, 0, []
  for start in range(0, length, window):
    end = min(start + window, length)
    steps = end - start if divide_by == 'actual' else window
    state = tf.nest.map_structure(tf.stop_gradient, state)
    with tf.GradientTape() as tape:
      outputs, state = model.unroll(inputs[:, start:end], state, training=True)
      loss_sum = _loss_sum(task, outputs, targets[:, start:end])
      objective = loss_sum / (batch * steps)
    gradients = _dense(tape.gradient(objective, model.trainable_variables))
    loss_total += float(loss_sum)
    norm_total += float(np.sqrt(sum(np.sum(np.square(g.numpy()))
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


def test_train_segment_applies_one_sgd_step_per_window_at_current_weights():
  task = CopyTask(sequence_length=5, seed=4)  # 25 steps = windows 10, 10, 5
  model = tiny_model(task, units=6, seed=21)
  segment = _copy_segment(task)
  learning_rate, window = 0.5, 10
  initial = _snapshot(model)

  method = _method(TruncatedBPTT, task, model, learning_rate=learning_rate,
                   window=window)
  state, metrics = method.train_segment(segment, model.initial_state(BATCH))
  trained = _snapshot(model)

  _restore(model, initial)
  expected, loss_total, norm_total, updates, expected_state = _reference_sgd(
      model, task, segment, window, learning_rate, 'nominal')
  assert updates == 3
  assert float(metrics['updates']) == 3.0
  assert int(method.optimizer.iterations) == 3
  assert_nests_close(trained, expected, rtol=1e-5, atol=1e-6)
  assert float(metrics['loss_sum']) == pytest.approx(loss_total, rel=1e-5)
  assert float(metrics['count']) == BATCH * 25
  assert float(metrics['grad_norm_sum']) == pytest.approx(norm_total, rel=1e-4)
  # The carried state is the one each window's forward pass produced.
  assert_nests_close(state, expected_state, rtol=1e-5, atol=1e-6)

  # The comparisons can fail: dividing the last window by its actual length (5),
  # or taking every gradient at the initial weights, gives other weights.
  for wrong in ('actual', 'initial'):
    _restore(model, initial)
    other, _, _, _, _ = _reference_sgd(model, task, segment, window, learning_rate,
                                    wrong)
    assert max_abs_diff(other, expected) > 1e-4, wrong


def test_bptt_train_segment_is_one_update_on_the_mean_over_steps():
  task = CopyTask(sequence_length=5, seed=4)
  model = tiny_model(task, units=6, seed=22)
  segment = _copy_segment(task)
  initial = _snapshot(model)
  method = _method(BPTT, task, model, learning_rate=0.5)
  _, metrics = method.train_segment(segment, model.initial_state(BATCH))
  trained = _snapshot(model)
  _restore(model, initial)
  expected, _, _, _, _ = _reference_sgd(model, task, segment, 25, 0.5,
                                        'nominal')
  assert float(metrics['updates']) == 1.0
  assert_nests_close(trained, expected, rtol=1e-5, atol=1e-6)


def test_train_segment_on_terminal_task_updates_once_from_the_last_window():
  task = AddingTask(sequence_length=12, seed=5)
  model = tiny_model(task, units=6, seed=23)
  segment = _adding_segment(task)
  initial = _snapshot(model)
  method = _method(TruncatedBPTT, task, model, learning_rate=0.5, window=5)
  _, metrics = method.train_segment(segment, model.initial_state(BATCH))
  trained = _snapshot(model)
  _restore(model, initial)
  per_window, _ = _reference_window_gradients(model, task, segment, 5, None)
  expected = [w - 0.5 * g.numpy() for w, g in zip(initial, per_window[-1])]
  assert float(metrics['updates']) == 1.0
  assert int(method.optimizer.iterations) == 1
  assert_nests_close(trained, expected, rtol=1e-5, atol=1e-6)


def _clip_setup(name):
  if name == 'copy':  # token inputs: the embedding gradient is IndexedSlices
    task = CopyTask(sequence_length=5, seed=6)
    return task, tiny_model(task, units=6, seed=31), _copy_segment(task)
  task = AddingTask(sequence_length=12, seed=6)
  return task, tiny_model(task, units=6, seed=32), _adding_segment(task)


@pytest.mark.parametrize('name', ['adding', 'copy'])
def test_clipping_scales_the_update_to_the_threshold(name):
  task, model, segment = _clip_setup(name)
  # A large rate keeps the update well above float32 rounding of the weights.
  learning_rate, clip_norm, window = 2.0, 5e-3, 100
  initial = _snapshot(model)
  method = _method(TruncatedBPTT, task, model, learning_rate=learning_rate,
                   window=window, clip_norm=clip_norm)
  _, metrics = method.train_segment(segment, model.initial_state(BATCH))
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


# ------------------------------------------------------------ tracing


class _TokenStream(task_base.Task):
  """A minimal stream-regime, per-step token task: random columns of 6 symbols."""

  name = 'token_stream'
  regime = task_base.STREAM
  readout = task_base.PER_STEP
  vocab = 6

  def model_spec(self) -> Dict[str, Any]:
    return {'input_vocab_size': self.vocab, 'output_dim': self.vocab,
            'readout': self.readout}

  def segment_spec(self) -> Tuple[tf.TensorSpec, tf.TensorSpec]:
    return (tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None], tf.int32))

  def losses(self, outputs, targets):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets,
                                                          logits=outputs)

  def stream(self, split, batch_size):
    rng = np.random.default_rng([batch_size, len(split)])
    return rng.integers(0, self.vocab, size=(batch_size, 200)).astype(np.int32)

  def get_config(self):
    return {}


def test_each_function_traces_once_for_any_segment_length_episodic():
  task = CopyTask(sequence_length=20, seed=7)  # 40 steps
  model = tiny_model(task, units=4, seed=41)
  method = _method(TruncatedBPTT, task, model, window=5)
  for batch_size, length in ((BATCH, 7), (BATCH, 13), (BATCH, 40), (BATCH, 1),
                             (2, 9)):
    inputs, targets = _copy_segment(task, batch_size)
    segment = (inputs[:, :length], targets[:, :length])
    method.train_segment(segment, model.initial_state(batch_size))
    method.estimate_gradients(segment, model.initial_state(batch_size))
  assert method.trace_counts['train_segment'] == 1
  assert method.trace_counts['estimate_gradients'] == 1


def test_each_function_traces_once_for_any_length_and_batch_stream():
  task = _TokenStream()
  model = tiny_model(task, units=4, seed=42)
  method = _method(TruncatedBPTT, task, model, window=4, windows_per_call=2)
  for batch_size, lengths in ((3, (8, 5, 1)), (5, (8, 13))):
    data = tf.constant(task.stream('train', batch_size))
    state, position = model.initial_state(batch_size), 0
    for length in lengths:
      segment = (data[:, position:position + length],
                 data[:, position + 1:position + length + 1])
      state, _ = method.train_segment(segment, state)
      method.estimate_gradients(segment, state)
      position += length
  assert method.trace_counts['train_segment'] == 1
  assert method.trace_counts['estimate_gradients'] == 1


# ------------------------------------------------------------ bad input


@pytest.fixture(scope='module')
def copy_task_and_model():
  task = CopyTask(sequence_length=2, seed=0)
  return task, tiny_model(task, units=4, seed=0)


@pytest.mark.parametrize('kwargs,parameter,value', [
    (dict(window=0), 'window', '0'),
    (dict(window=-3), 'window', '-3'),
    (dict(window=2.5), 'window', '2.5'),
    (dict(window=True), 'window', 'True'),
    (dict(windows_per_call=0), 'windows_per_call', '0'),
])
def test_bad_windows_are_configuration_errors_naming_them(
    copy_task_and_model, kwargs, parameter, value):
  task, model = copy_task_and_model
  with pytest.raises(ConfigurationError) as raised:
    _method(TruncatedBPTT, task, model, **kwargs)
  message = str(raised.value)
  assert f'TruncatedBPTT.{parameter}' in message
  assert f'got {value}' in message


def test_bptt_on_a_stream_needs_a_sequence_length():
  task = _TokenStream()
  model = tiny_model(task, units=4, seed=0)
  with pytest.raises(ConfigurationError, match='sequence_length'):
    _method(BPTT, task, model)
  method = _method(BPTT, task, model, sequence_length=6)
  assert method.segment_length() == 6


def test_bptt_on_episodic_task_rejects_a_sequence_length(copy_task_and_model):
  task, model = copy_task_and_model
  with pytest.raises(ConfigurationError, match='sequence_length=8'):
    _method(BPTT, task, model, sequence_length=8)

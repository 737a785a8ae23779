"""Tests of tfcredit.methods.truncated_bptt (TruncatedBPTT and BPTT).

Every reference is an explicit Python loop over windows written here, with its own
``tf.GradientTape``, its own losses (cross-entropy / squared error written out) and,
for updates, its own ``variable.assign_sub``: the method's ``objective``,
``window_gradients`` and optimizer calls are never reused.
"""

import re
from typing import Any, Dict, Tuple

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.methods import BPTT, TruncatedBPTT, jit
from tfcredit.tasks import base as task_base
from tfcredit.tasks.synthetic import AddingTask, CopyTask
from tfcredit.testing import (TwoStateCell, assert_nests_close, built_optimizer,
                              max_abs_diff, tiny_model)

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


# One trace for every length and batch: tests/methods/test_tracing.py.


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize('kwargs,parameter,value', [
    (dict(window=0), 'window', '0'),
    (dict(window=-3), 'window', '-3'),
    (dict(window=2.5), 'window', '2.5'),
    (dict(window=True), 'window', 'True'),
    (dict(windows_per_call=0), 'windows_per_call', '0'),
])
def test_bad_windows_are_configuration_errors_naming_them(
    copy_setup, kwargs, parameter, value):
  task, model = copy_setup.task, copy_setup.model
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


def test_bptt_on_episodic_task_rejects_a_sequence_length(copy_setup):
  task, model = copy_setup.task, copy_setup.model
  with pytest.raises(ConfigurationError, match='sequence_length=8'):
    _method(BPTT, task, model, sequence_length=8)


# ------------------------------------------------------------------ XLA


@pytest.mark.slow  # The updates once more, compiled by XLA.
def test_jit_compile_trains_the_same_updates_to_float_tolerance():
  """``jit_compile=True`` runs each window's pass through XLA; the updates (token
  inputs: a sparse embedding gradient; LSTM: the fused unroll) match the
  uncompiled method's."""
  task = _TokenStream()
  results = []
  for jit in (False, True):
    model = tiny_model(task, cell='lstm', units=5, seed=7)
    method = _method(TruncatedBPTT, task, model, learning_rate=0.5, window=4,
                     windows_per_call=3, jit_compile=jit, clip_norm=1.0)
    data = tf.constant(task.stream('train', 3))
    state, position, metrics = model.initial_state(3), 0, []
    for length in (12, 7):
      segment = (data[:, position:position + length],
                 data[:, position + 1:position + length + 1])
      state, step_metrics = method.train_segment(segment, state)
      metrics.append({k: float(v) for k, v in step_metrics.items()})
      position += length
    assert method.trace_counts['train_segment'] == 1
    if jit:  # The compiled window pass is the one that ran.
      assert method._compiled_window_gradients.experimental_get_tracing_count() >= 1  # pylint: disable=protected-access
    results.append((_snapshot(model), state, metrics))
  (plain_weights, plain_state, plain_metrics), (jit_weights, jit_state,
                                                jit_metrics) = results
  assert_nests_close(jit_weights, plain_weights, rtol=1e-4, atol=1e-5)
  assert_nests_close(jit_state, plain_state, rtol=1e-4, atol=1e-5)
  for plain, jit in zip(plain_metrics, jit_metrics):
    assert jit['loss_sum'] == pytest.approx(plain['loss_sum'], rel=1e-5)
    assert jit['grad_norm_sum'] == pytest.approx(plain['grad_norm_sum'], rel=1e-4)
  # Training moved the weights, so the comparison could fail.
  initial = _snapshot(tiny_model(task, cell='lstm', units=5, seed=7))
  assert max_abs_diff(plain_weights, initial) > 1e-3


def test_jit_compile_must_be_a_bool_or_auto():
  task = _TokenStream()
  model = tiny_model(task, cell='gru', units=4, seed=1)
  for value in ('yes', 1, None):
    with pytest.raises(ConfigurationError, match=(
        r"TruncatedBPTT.jit_compile must be True, False or 'auto', got "
        + re.escape(repr(value)))):
      _method(TruncatedBPTT, task, model, window=4, jit_compile=value)


def test_jit_compile_auto_compiles_a_named_float32_core_on_a_cpu_only(
    monkeypatch):
  """``'auto'`` (the default) turns XLA on for a named core in float32 on a CPU,
  and leaves it off for a custom cell, padded sequences, mixed precision and
  checkpointed windows, and everywhere under ``TFCREDIT_AUTO_XLA=0`` (the
  suite's setting, tests/conftest.py); an explicit True or False is kept."""
  assert not tf.config.list_logical_devices('GPU')  # These machines have none.
  task = _TokenStream()
  named = tiny_model(task, cell='gru', units=4, seed=1)
  monkeypatch.setenv(jit.ENVIRONMENT, '0')
  assert _method(TruncatedBPTT, task, named, window=4).jit_compile is False
  assert _method(TruncatedBPTT, task, named, window=4,
                 jit_compile=True).jit_compile is True
  monkeypatch.delenv(jit.ENVIRONMENT)
  assert _method(TruncatedBPTT, task, named, window=4).jit_compile is True
  assert _method(TruncatedBPTT, task, named, window=4,
                 jit_compile=False).jit_compile is False
  assert _method(TruncatedBPTT, task, named, window=4,
                 checkpoint_every=2).jit_compile is False
  assert _method(TruncatedBPTT, task, named, window=4, checkpoint_every=2,
                 jit_compile=True).jit_compile is True
  custom = tiny_model(task, cell=TwoStateCell(4), units=4, seed=1)
  assert _method(TruncatedBPTT, task, custom, window=4).jit_compile is False
  masked = tiny_model(task, cell='gru', units=4, seed=1, masked=True)
  assert _method(TruncatedBPTT, task, masked, window=4).jit_compile is False
  episodic = AddingTask(sequence_length=6)
  assert _method(BPTT, episodic, tiny_model(episodic, seed=1)).jit_compile is True
  keras.mixed_precision.set_global_policy('mixed_float16')
  try:
    half = tiny_model(task, cell='gru', units=4, seed=1)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert _method(TruncatedBPTT, task, half, window=4).jit_compile is False

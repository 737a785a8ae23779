"""Tests of how TruncatedBPTT and BPTT are configured: bad windows and sequence
lengths refused with the parameter named, and ``jit_compile`` (XLA), explicit and
``'auto'``, whose compiled updates match the uncompiled ones. The references and
helpers are test_truncated_bptt.py's, shared.
"""

import re
from typing import Any, Dict, Tuple

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit import xla
from tfcredit.methods import ARTBP, BPTT, TruncatedBPTT
from tfcredit.tasks import base as task_base
from tfcredit.models import fused
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.testing import (TwoStateCell, assert_nests_close, built_optimizer,
                              max_abs_diff, tiny_model)

import test_truncated_bptt as base

copy_setup = base.copy_setup  # The module-scoped copy-task setup.


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
    base._method(TruncatedBPTT, task, model, **kwargs)
  message = str(raised.value)
  assert f'TruncatedBPTT.{parameter}' in message
  assert f'got {value}' in message


def test_bptt_on_a_stream_needs_a_sequence_length():
  task = _TokenStream()
  model = tiny_model(task, units=4, seed=0)
  with pytest.raises(ConfigurationError, match='sequence_length'):
    base._method(BPTT, task, model)
  method = base._method(BPTT, task, model, sequence_length=6)
  assert method.segment_length() == 6


def test_bptt_on_episodic_task_rejects_a_sequence_length(copy_setup):
  task, model = copy_setup.task, copy_setup.model
  with pytest.raises(ConfigurationError, match='sequence_length=8'):
    base._method(BPTT, task, model, sequence_length=8)


# ------------------------------------------------------------------ XLA


@pytest.mark.slow  # The updates once more, compiled by XLA.
def test_jit_compile_trains_the_same_updates_to_float_tolerance():
  """``jit_compile=True`` runs each window's pass through XLA; the updates (token
  inputs: a sparse embedding gradient; LSTM: the fused unroll) match the
  uncompiled method's."""
  task = _TokenStream()
  results = []
  for compiled in (False, True):
    model = tiny_model(task, cell='lstm', units=5, seed=7)
    method = base._method(TruncatedBPTT, task, model, learning_rate=0.5, window=4,
                     windows_per_call=3, jit_compile=compiled, clip_norm=1.0)
    data = tf.constant(task.stream('train', 3))
    state, position, metrics = model.initial_state(3), 0, []
    for length in (12, 7):
      segment = (data[:, position:position + length],
                 data[:, position + 1:position + length + 1])
      state, step_metrics = method.train_segment(segment, state)
      metrics.append({k: float(v) for k, v in step_metrics.items()})
      position += length
    assert method.trace_counts['train_segment'] == 1
    if compiled:  # The compiled window pass is the one that ran.
      assert method._compiled_window_gradients.experimental_get_tracing_count() >= 1  # pylint: disable=protected-access
    results.append((base._snapshot(model), state, metrics))
  (plain_weights, plain_state, plain_metrics), (jit_weights, jit_state,
                                                jit_metrics) = results
  assert_nests_close(jit_weights, plain_weights, rtol=1e-4, atol=1e-5)
  assert_nests_close(jit_state, plain_state, rtol=1e-4, atol=1e-5)
  for plain, compiled in zip(plain_metrics, jit_metrics):
    assert compiled['loss_sum'] == pytest.approx(plain['loss_sum'], rel=1e-5)
    assert compiled['grad_norm_sum'] == pytest.approx(plain['grad_norm_sum'],
                                                      rel=1e-4)
  # Training moved the weights, so the comparison could fail.
  initial = base._snapshot(tiny_model(task, cell='lstm', units=5, seed=7))
  assert max_abs_diff(plain_weights, initial) > 1e-3


def test_the_parts_xla_compiles_by_itself_train_the_same_updates(monkeypatch):
  """Outside the suite's ``TFCREDIT_AUTO_XLA=0``, an LSTM language model's
  fused loops and cross-entropy run compiled (``tfcredit.xla``) inside the
  traced window pass; the updates match those of the uncompiled parts."""
  task = MarkovLanguageTask(vocabulary_size=6, branching=2, seed=1)
  data = tf.constant(task.stream('train', 3))
  segment = (data[:, :12], data[:, 1:13])
  monkeypatch.setattr(fused, '_COMPILED', {})
  results = []
  for compiled in (False, True):
    if compiled:
      monkeypatch.delenv(xla.ENVIRONMENT, raising=False)
    model = tiny_model(task, cell='lstm', units=5, seed=7, num_layers=2)
    method = base._method(TruncatedBPTT, task, model, learning_rate=0.5,
                          window=4, windows_per_call=3, clip_norm=1.0)
    assert method.jit_compile is False  # 'auto': the parts, not the window.
    state, metrics = method.train_segment(segment, model.initial_state(3))
    results.append((base._snapshot(model), state, float(metrics['loss_sum'])))
  assert {f.__name__ for f in fused._COMPILED} == {  # pylint: disable=protected-access
      '_lstm_forward', '_lstm_backward'}
  assert_nests_close(results[1][:2], results[0][:2], rtol=1e-4, atol=1e-5)
  assert results[1][2] == pytest.approx(results[0][2], rel=1e-5)
  initial = base._snapshot(tiny_model(task, cell='lstm', units=5, seed=7,
                                      num_layers=2))
  assert max_abs_diff(results[0][0], initial) > 1e-3


def test_artbps_random_window_lengths_keep_the_parts_uncompiled(monkeypatch):
  """Each new window length would be a new XLA compile: ARTBP's traces take
  the uncompiled loops, and the cross-entropy over rows padded to a few counts
  (``COMPILED_PARTS``), which trains the same updates as TensorFlow's."""
  task = MarkovLanguageTask(vocabulary_size=6, branching=2, seed=1)
  data = tf.constant(task.stream('train', 3))
  results = []
  for compiled in (False, True):
    if compiled:
      monkeypatch.delenv(xla.ENVIRONMENT, raising=False)
    model = tiny_model(task, cell='lstm', units=5, seed=7)
    method = ARTBP(model=model, task=task, optimizer=built_optimizer(model),
                   mean_length=4, windows_per_call=3, seed=3)
    length = method.segment_length()
    monkeypatch.setattr(fused, '_COMPILED', {})  # Building the model compiled.
    _, metrics = method.train_segment((data[:, :length], data[:, 1:length + 1]),
                                      model.initial_state(3))
    assert method.trace_counts['train_segment'] == 1
    assert not fused._COMPILED  # pylint: disable=protected-access
    results.append((base._snapshot(model), float(metrics['loss_sum'])))
  assert xla.parts_compile()  # Outside ARTBP's trace they would compile.
  # pylint: disable-next=protected-access
  assert method._traced('probe', xla.loss_compile)() == xla.BUCKETED
  assert_nests_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
  assert results[1][1] == pytest.approx(results[0][1], rel=1e-5)
  initial = base._snapshot(tiny_model(task, cell='lstm', units=5, seed=7))
  assert max_abs_diff(results[0][0], initial) > 1e-3


def test_jit_compile_must_be_a_bool_or_auto():
  task = _TokenStream()
  model = tiny_model(task, cell='gru', units=4, seed=1)
  for value in ('yes', 1, None):
    with pytest.raises(ConfigurationError, match=(
        r"TruncatedBPTT.jit_compile must be True, False or 'auto', got "
        + re.escape(repr(value)))):
      base._method(TruncatedBPTT, task, model, window=4, jit_compile=value)


def test_jit_compile_auto_compiles_a_named_float32_core_on_a_cpu_only(
    monkeypatch):
  """``'auto'`` (the default) turns XLA on for a named core in float32 on a CPU
  (a simple RNN; an LSTM or GRU only under ``unroll_implementation='keras'``,
  since otherwise its fused loops and cross-entropy compile by themselves), and
  leaves it off for a custom cell, padded sequences, mixed precision and
  checkpointed windows, and everywhere under ``TFCREDIT_AUTO_XLA=0`` (the
  suite's setting, tests/conftest.py); an explicit True or False is kept."""
  assert not tf.config.list_logical_devices('GPU')  # These machines have none.
  task = _TokenStream()
  named = tiny_model(task, cell='simple_rnn', units=4, seed=1)
  monkeypatch.setenv(xla.ENVIRONMENT, '0')
  assert base._method(TruncatedBPTT, task, named, window=4).jit_compile is False
  assert base._method(TruncatedBPTT, task, named, window=4,
                      jit_compile=True).jit_compile is True
  monkeypatch.delenv(xla.ENVIRONMENT)
  assert base._method(TruncatedBPTT, task, named, window=4).jit_compile is True
  assert base._method(TruncatedBPTT, task, named, window=4,
                      jit_compile=False).jit_compile is False
  assert base._method(TruncatedBPTT, task, named, window=4,
                      checkpoint_every=2).jit_compile is False
  assert base._method(TruncatedBPTT, task, named, window=4, checkpoint_every=2,
                      jit_compile=True).jit_compile is True
  for cell in ('lstm', 'gru'):
    fusable = tiny_model(task, cell=cell, units=4, seed=1)
    assert base._method(TruncatedBPTT, task, fusable, window=4).jit_compile is False
    layers = tiny_model(task, cell=cell, units=4, seed=1,
                        unroll_implementation='keras')
    assert base._method(TruncatedBPTT, task, layers, window=4).jit_compile is True
  custom = tiny_model(task, cell=TwoStateCell(4), units=4, seed=1)
  assert base._method(TruncatedBPTT, task, custom, window=4).jit_compile is False
  masked = tiny_model(task, cell='simple_rnn', units=4, seed=1, masked=True)
  assert base._method(TruncatedBPTT, task, masked, window=4).jit_compile is False
  episodic = AddingTask(sequence_length=6)
  assert base._method(BPTT, episodic, tiny_model(episodic, cell='simple_rnn',
                                                 seed=1)).jit_compile is True
  keras.mixed_precision.set_global_policy('mixed_float16')
  try:
    half = tiny_model(task, cell='simple_rnn', units=4, seed=1)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert base._method(TruncatedBPTT, task, half, window=4).jit_compile is False

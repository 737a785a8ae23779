"""RTRL (Williams & Zipser 1989) against the gradients it claims to compute.

Its claim: the influence carried forward gives the exact gradient over the whole
stream, with no truncation. So its estimate equals full BPTT's, and with the
weights held still its windowed updates follow full backpropagation from the
stream's start, across windows and calls, where truncated BPTT's do not.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.methods import BPTT, KFRTRL, RTRL, UORO, SnAp1, TruncatedBPTT
from tfcredit.tasks.influence_balancing import InfluenceBalancingTask
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask, CopyTask
from tfcredit.testing import built_optimizer, tiny_model

from tiers import slow_except

ROWS = 3
STREAM = MarkovLanguageTask(vocabulary_size=5, branching=2, train_length=80,
                            eval_length=10, seed=2)


def _stream(start, length, rows=ROWS):
  data = STREAM.stream('train', rows)
  return (tf.constant(data[:, start:start + length]),
          tf.constant(data[:, start + 1:start + length + 1]))


def _dense(gradients):
  return [tf.convert_to_tensor(g).numpy() for g in gradients]


def _close(a, b, atol=2e-6):
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=atol)


ADDING = AddingTask(sequence_length=9, seed=1)
# Full and truncated BPTT as references: run once each, eager and uncompiled (a
# trace or an XLA compile would cost more than the run; test_truncated_bptt
# checks the compiled passes against the uncompiled one).
EAGER = {'use_tf_function': False, 'jit_compile': False}


def _batch_segment(task):
  inputs, targets = task.batch('train', 0, 0, ROWS)
  return tf.constant(inputs), tf.constant(targets)


@functools.lru_cache(maxsize=None)
def _batch_estimate(cls, task, cell, units, per_row):
  """``cls``'s estimate on ``task``'s first batch from the zero state (a tiny
  model of seed 0, windows of 4; the per-row path if ``per_row``, else the
  whole batch's tape): ``(gradients, final state)`` as numpy. Cached: RTRL's
  per-row one on the adding task's GRU serves the test against full BPTT and
  the whole-batch test (one trace, not two)."""
  model = tiny_model(task, seed=0, units=units, cell=cell)
  method = cls(model=model, task=task, optimizer=built_optimizer(model),
               window=4, batch_size=ROWS)
  assert method.per_row
  method.per_row = per_row
  gradients, state = method.estimate_gradients(_batch_segment(task),
                                               model.initial_state(ROWS))
  return (tuple(_dense(gradients)),
          tuple(s.numpy() for s in tf.nest.flatten(state)))


@pytest.mark.parametrize('cell', ['lstm', 'gru', 'simple_rnn'])
@pytest.mark.parametrize('task', [ADDING, CopyTask(sequence_length=3, seed=1),
                                  STREAM], ids=['adding', 'copy', 'stream'])
def test_the_estimate_is_full_bptts_gradient(task, cell):
  model = tiny_model(task, seed=0, units=5, cell=cell)
  optimizer = built_optimizer(model)
  if task.regime == 'stream':
    segment, reference = _stream(0, 11), {'sequence_length': 11}
  else:
    segment, reference = _batch_segment(task), {}
  full = BPTT(model=model, task=task, optimizer=optimizer, **reference,
              **EAGER)
  state = model.initial_state(ROWS)
  expected, expected_state = full.estimate_gradients(segment, state)
  if task.regime == 'stream':
    rtrl = RTRL(model=model, task=task, optimizer=optimizer, window=4,
                batch_size=ROWS)
    actual, final_state = rtrl.estimate_gradients(segment, state)
  else:  # The same model (seed 0, 5 units), RTRL with windows of 4.
    actual, final_state = _batch_estimate(RTRL, task, cell, 5, True)
  _close(_dense(actual), _dense(expected))
  assert max(np.abs(g).max() for g in _dense(expected)) > 1e-3
  _close(tf.nest.flatten(final_state), tf.nest.flatten(expected_state))


@pytest.mark.parametrize('cls', slow_except([RTRL, SnAp1, UORO], RTRL))
def test_the_whole_batch_jacobian_gives_the_same_estimate(cls):
  """Without ``per_row`` (a model with dropout, whose masks a second pass
  would not repeat) the weights' Jacobian, and UORO's ``J s̃``, come from the
  step's own tape: the same estimate (SnAp-1: its compact storage's colours
  too; UORO: the same draws).

  RTRL's GRU of 5 units for the adding task's 2 inputs runs the Keras layer's
  loop (its tape's Jacobian goes through the loop); SnAp-1's and UORO's of 4
  the fused unroll (``RecurrentModel._fused_unroll``: inputs at least half
  the units), straight-line code whose tape traces in a fraction of the time.
  """
  task = ADDING
  units = 5 if cls is RTRL else 4
  model = tiny_model(task, seed=0, units=units, cell='gru')
  assert model._fused_unroll(tf.zeros([1, 1, 2]), None) == (cls is not RTRL)  # pylint: disable=protected-access
  estimates = [_batch_estimate(cls, task, 'gru', units, per_row)[0]
               for per_row in (True, False)]
  _close(estimates[1], estimates[0])
  assert max(np.abs(g).max() for g in estimates[0]) > 1e-3
  dropout = tiny_model(task, seed=0, units=5, dropout=0.1)
  assert not RTRL(model=dropout, task=task, optimizer=built_optimizer(dropout),
                  window=4, batch_size=ROWS).per_row


def test_the_estimate_is_exact_on_the_influence_balancing_system():
  task = InfluenceBalancingTask(train_length=200, eval_length=20)
  model = tiny_model(task, seed=0)
  optimizer = built_optimizer(model)
  rtrl = RTRL(model=model, task=task, optimizer=optimizer, window=7, batch_size=1)
  full = BPTT(model=model, task=task, optimizer=optimizer, sequence_length=60,
              **EAGER)
  data = task.stream('train', 1)
  segment = (tf.constant(data[:, :60]), tf.constant(data[:, 1:61]))
  state = model.initial_state(1)
  _close(_dense(rtrl.estimate_gradients(segment, state)[0]),
         _dense(full.estimate_gradients(segment, state)[0]), atol=1e-5)


@pytest.mark.slow  # A real width is the point.
@pytest.mark.parametrize('train', [True, False], ids=['train', 'estimate'])
def test_a_64_unit_lstm_runs_several_windows_per_call(train):
  """From 64 units Grappler rewrote the step loop's additions into temporary
  variables, and a second call failed with ALREADY_EXISTS. (It needs 64 units,
  not the rows or the window's length: with the addition tree put back, 2 rows
  and windows of 3 fail as 4 rows and windows of 10 did.)"""
  rows, window = 2, 3
  task = MarkovLanguageTask(vocabulary_size=32, branching=2, train_length=200,
                            eval_length=10, seed=2)
  model = tiny_model(task, seed=0, units=64, embedding_dim=64)
  optimizer = built_optimizer(model, keras.optimizers.Adam,
                              learning_rate=1e-3 if train else 0.0)
  rtrl = RTRL(model=model, task=task, optimizer=optimizer, window=window,
              windows_per_call=2, batch_size=rows, clip_norm=1.0)
  full = BPTT(model=model, task=task, optimizer=optimizer,
              sequence_length=2 * window, **EAGER)
  data = task.stream('train', rows)
  state = model.initial_state(rows)
  rtrl.on_epoch_start(0)
  for start in (0, 2 * window):  # Two calls of two windows each.
    segment = (tf.constant(data[:, start:start + 2 * window]),
               tf.constant(data[:, start + 1:start + 2 * window + 1]))
    if train:
      state, metrics = rtrl.train_segment(segment, state)
      assert float(metrics['updates']) == 2.0
      assert np.isfinite(float(metrics['grad_norm_sum']))
    else:
      _close(_dense(rtrl.estimate_gradients(segment, state)[0]),
             _dense(full.estimate_gradients(segment, state)[0]), atol=1e-5)


def _full_window_norms(model, segment_calls, window):
  """Reference: each window's loss (÷ rows × window) backpropagated through
  every earlier step of the stream, at fixed weights; its gradient's norm."""
  inputs = tf.concat([s[0] for s in segment_calls], axis=1)
  targets = tf.concat([s[1] for s in segment_calls], axis=1)
  norms = []
  for end in range(window, inputs.shape[1] + 1, window):
    with tf.GradientTape() as tape:
      outputs, _ = model.unroll(inputs[:, :end], model.initial_state(ROWS),
                                training=True)
      losses = STREAM.losses(outputs[:, end - window:end],
                             targets[:, end - window:end])
      objective = tf.reduce_sum(losses) / (ROWS * window)
    norms.append(tf.linalg.global_norm(
        _dense(tape.gradient(objective, model.trainable_variables))).numpy())
  return np.array(norms)


def test_updates_carry_credit_across_windows_and_calls_where_truncation_does_not():
  window, calls = 3, [_stream(0, 6), _stream(6, 6)]
  norms = {}
  for cls in (RTRL, TruncatedBPTT):
    model = tiny_model(STREAM, seed=0, units=5)
    optimizer = built_optimizer(model, learning_rate=0.0)  # Weights held still.
    kwargs = {'batch_size': ROWS} if cls is RTRL else EAGER
    method = cls(model=model, task=STREAM, optimizer=optimizer, window=window,
                 windows_per_call=2, **kwargs)
    if cls is RTRL:
      method.on_epoch_start(0)
    state, per_call = model.initial_state(ROWS), []
    for segment in calls:
      state, metrics = method.train_segment(segment, state)
      per_call.append(float(metrics['grad_norm_sum']))
    norms[cls.__name__] = per_call
  reference = _full_window_norms(model, calls, window)
  np.testing.assert_allclose(norms['RTRL'], reference.reshape(2, 2).sum(1),
                             rtol=1e-4)
  # Truncated BPTT's windows stop at their start: different gradients.
  assert abs(norms['TruncatedBPTT'][1] - norms['RTRL'][1]) > 1e-3


@pytest.mark.parametrize('cls', slow_except([RTRL, UORO, SnAp1, KFRTRL], RTRL))
def test_resume_from_a_checkpoint_continues_exactly(tmp_path, cls):
  def build():
    model = tiny_model(STREAM, seed=0, units=5)
    optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.05)
    method = cls(model=model, task=STREAM, optimizer=optimizer, window=3,
                 windows_per_call=2, batch_size=ROWS)
    return model, optimizer, method

  def calls(method, state, starts):
    for start in starts:
      state, _ = method.train_segment(_stream(start, 6), state)
    return state

  model, optimizer, method = build()
  method.on_epoch_start(0)
  state = calls(method, model.initial_state(ROWS), (0, 6))
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, method=method)
  path = checkpoint.save(str(tmp_path / 'ckpt'))
  carried = [s.numpy() for s in tf.nest.flatten(state)]
  final = calls(method, state, (12, 18))

  model2, optimizer2, method2 = build()
  tf.train.Checkpoint(model=model2, optimizer=optimizer2, method=method2).restore(
      path).assert_existing_objects_matched()
  influence = lambda m: [v.numpy() for v in tf.nest.flatten(m.influence)]
  saved_influence = influence(method2)
  assert all(np.any(v) for v in saved_influence)
  method2.on_epoch_start(0)  # A resumed epoch keeps the influence.
  _close(influence(method2), saved_influence, atol=0)
  state2 = tf.nest.pack_sequence_as(model2.initial_state(ROWS),
                                    [tf.constant(c) for c in carried])
  final2 = calls(method2, state2, (12, 18))
  _close([v.numpy() for v in model2.trainable_variables],
         [v.numpy() for v in model.trainable_variables], atol=1e-6)
  _close(tf.nest.flatten(final2), tf.nest.flatten(final))
  _close(influence(method2), influence(method), atol=1e-5)
  method2.on_epoch_start(1)  # A new epoch starts from zero influence.
  assert not any(np.any(v) for v in influence(method2))


@pytest.mark.parametrize('cls', [RTRL, UORO, SnAp1])
def test_a_stream_of_one_row_trains(cls):
  # One row: the influence variable's static batch of 1 must survive the loop
  # (it broadcast to an unknown batch and failed in the influence-balancing config).
  task = InfluenceBalancingTask(train_length=60, eval_length=20)
  model = tiny_model(task, seed=0)
  method = cls(model=model, task=task, optimizer=built_optimizer(model),
               window=4, windows_per_call=2, batch_size=1)
  method.on_epoch_start(0)
  data = task.stream('train', 1)
  state, metrics = method.train_segment(
      (tf.constant(data[:, :8]), tf.constant(data[:, 1:9])), model.initial_state(1))
  assert float(metrics['updates']) == 2 and np.isfinite(float(metrics['loss_sum']))


def test_bad_settings_are_refused_with_the_parameter_named():
  model = tiny_model(STREAM, seed=0, units=5)
  optimizer = built_optimizer(model)
  with pytest.raises(ConfigurationError, match='RTRL.batch_size'):
    RTRL(model=model, task=STREAM, optimizer=optimizer)
  with pytest.raises(ConfigurationError, match='RTRL.max_influence_floats'):
    RTRL(model=model, task=STREAM, optimizer=optimizer, batch_size=ROWS,
         max_influence_floats=1000)
  with pytest.raises(ConfigurationError, match='RTRL.window'):
    RTRL(model=model, task=STREAM, optimizer=optimizer, batch_size=ROWS, window=0)

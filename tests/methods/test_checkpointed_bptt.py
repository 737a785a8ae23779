"""Tests of ``checkpoint_every`` (tfcredit.methods.recompute) in TruncatedBPTT and BPTT.

Gradient references are written here: one ``tf.GradientTape`` over each whole
window, the task's per-step losses summed and divided by the batch (the gradient
estimate's convention), the state's gradient stopped between windows. Training
is compared with the same method without checkpointing (whose updates
tests/methods/test_truncated_bptt.py checks against explicit references).
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.methods import BPTT, TruncatedBPTT
from tfcredit.methods import recompute
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.sequences import SequenceTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.testing import (TwoStateCell, assert_nests_close, built_optimizer,
                              max_abs_diff, tiny_model)

ROWS = 3
WINDOW = 10  # Stream windows; the adding task's sequences are 12 steps.
EVERY = (1, 3, 7)  # 7 divides neither 10 nor 12.


class CountingCell(TwoStateCell):
  """``tfcredit.testing.TwoStateCell`` (two state tensors of different sizes)
  counting the steps it runs in ``steps`` (a non-trainable weight)."""

  def build(self, input_shape):
    self.steps = self.add_weight(shape=(), initializer='zeros', dtype='int64',
                                 trainable=False, name='steps')
    super().build(input_shape)

  def call(self, inputs, states, training=False):
    self.steps.assign_add(1)
    return super().call(inputs, states, training=training)


CELLS = {'lstm': lambda: {'cell': 'lstm'}, 'gru': lambda: {'cell': 'gru'},
         'custom': lambda: {'cell': CountingCell(), 'units': None}}


@functools.lru_cache(maxsize=None)
def _task(name):
  if name == 'markov':
    return MarkovLanguageTask(vocabulary_size=6, branching=2, train_length=70,
                              eval_length=20, seed=1)
  return AddingTask(sequence_length=12, seed=2)


def _segment(task):
  if isinstance(task, MarkovLanguageTask):
    data = task.stream('train', ROWS)
    return (tf.constant(data[:, :2 * WINDOW]),
            tf.constant(data[:, 1:2 * WINDOW + 1]))
  inputs, targets = task.batch('train', 0, 0, ROWS)
  return tf.constant(inputs), tf.constant(targets)


def _method(task_name, cell, checkpoint_every, truncated=True, **model_args):
  """The model and a method: stream: windows of 10, two per call; adding
  task: ``TruncatedBPTT`` with windows of 6 (the first window runs forward
  only) or ``BPTT`` over the whole sequences."""
  task = _task(task_name)
  model = tiny_model(task, **CELLS[cell](), **model_args)
  optimizer = built_optimizer(model, learning_rate=0.5)
  if task_name == 'markov':
    method = TruncatedBPTT(model=model, task=task, optimizer=optimizer,
                           window=WINDOW, windows_per_call=2,
                           checkpoint_every=checkpoint_every)
  elif truncated:
    method = TruncatedBPTT(model=model, task=task, optimizer=optimizer, window=6,
                           checkpoint_every=checkpoint_every)
  else:
    method = BPTT(model=model, task=task, optimizer=optimizer,
                  checkpoint_every=checkpoint_every)
  return model, task, method


def _reference_gradients(model, task, segment, window):
  """Plain BPTT, one tape per window: ``Σ_windows ∇ (1/B)·Σ ℓ`` (a terminal
  loss: the last window only, the earlier ones run forward)."""
  inputs, targets = segment
  length = int(inputs.shape[1])
  state = model.initial_state(ROWS)
  totals = [tf.zeros_like(v) for v in model.trainable_variables]
  for start in range(0, length, window):
    end = min(start + window, length)
    last = end == length
    with tf.GradientTape() as tape:
      outputs, state = model.unroll(inputs[:, start:end], state, training=True)
      if model.readout == 'terminal':
        losses = task.losses(outputs, targets) if last else tf.zeros([ROWS])
      else:
        losses = task.losses(outputs, targets[:, start:end])
      objective = tf.reduce_sum(losses) / ROWS
    gradients = tape.gradient(objective, model.trainable_variables)
    totals = [t if g is None else t + tf.convert_to_tensor(g)
              for t, g in zip(totals, gradients)]
    state = tf.nest.map_structure(tf.stop_gradient, state)
  return totals, state


CASES = [(cell, task, truncated, every) for cell in CELLS
         for task, truncated in (('markov', True), ('adding', True),
                                 ('adding', False)) for every in EVERY]


@pytest.mark.parametrize('cell,task_name,truncated,every', CASES)
def test_gradients_and_training_equal_plain_bptt(cell, task_name, truncated,
                                                 every):
  model, task, method = _method(task_name, cell, every, truncated)
  segment = _segment(task)
  window = method.window or int(segment[0].shape[1])
  expected, expected_state = _reference_gradients(model, task, segment, window)
  gradients, state = method.estimate_gradients(segment, model.initial_state(ROWS))
  assert len(gradients) == len(model.trainable_variables)
  # Every weight has a gradient: embedding (stream) or cell, and the head.
  assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in expected)
  assert_nests_close(gradients, expected, rtol=1e-5, atol=1e-7)
  assert_nests_close(state, expected_state, rtol=1e-6, atol=1e-7)

  # One update per window against the same method without checkpointing.
  plain_model, _, plain = _method(task_name, cell, None, truncated)
  assert max_abs_diff(plain_model.trainable_variables,
                      model.trainable_variables) == 0
  state, metrics = method.train_segment(segment, model.initial_state(ROWS))
  plain_state, plain_metrics = plain.train_segment(
      segment, plain_model.initial_state(ROWS))
  assert_nests_close(model.trainable_variables, plain_model.trainable_variables,
                     rtol=1e-5, atol=1e-7)
  assert_nests_close(state, plain_state, rtol=1e-5, atol=1e-7)
  assert_nests_close(metrics, plain_metrics, rtol=1e-5, atol=1e-7)
  assert float(metrics['updates']) == float(plain_metrics['updates'])


def test_a_chunk_longer_than_the_window_is_one_chunk():
  model, task, method = _method('markov', 'lstm', 50)
  segment = _segment(task)
  expected, expected_state = _reference_gradients(model, task, segment, WINDOW)
  gradients, state = method.estimate_gradients(segment, model.initial_state(ROWS))
  assert_nests_close(gradients, expected, rtol=1e-5, atol=1e-7)
  assert_nests_close(state, expected_state, rtol=1e-6, atol=1e-7)


def test_each_step_runs_forward_once_more():
  """The memory bound's price and nothing more: per window, the chunks run
  forward once without gradient and once more in the backward pass, so the
  cell runs twice the window's steps (not once per chunk from the window's
  start, which would also be exact but quadratic). The Keras RNN layer calls
  the cell once more per call (plain BPTT's count: one call per window)."""
  steps = {}
  for every in (None, 3, 7):
    model, task, method = _method('markov', 'custom', every)
    counter = model.core[0].cell.steps
    segment = _segment(task)
    method.estimate_gradients(segment, model.initial_state(ROWS))  # Traces.
    counter.assign(0)
    method.estimate_gradients(segment, model.initial_state(ROWS))
    steps[every] = int(counter.numpy())
  per_call = 1
  assert steps[None] == 2 * (WINDOW + per_call)
  for every in (3, 7):
    chunks = -(-WINDOW // every)
    assert steps[every] == 2 * 2 * (WINDOW + chunks * per_call), every


def _chunked_reference(model, task, segment, every, seed):
  """The gradient over chunks of ``every`` steps under one tape, the dropout
  generator started at ``seed``: the masks the checkpointed forward pass
  draws."""
  inputs, targets = segment
  (generator,) = model.rng_variables()
  generator.assign(seed)
  state = model.initial_state(ROWS)
  with tf.GradientTape() as tape:
    total = 0.0
    for start in range(0, int(inputs.shape[1]), every):
      outputs, state = model.unroll(inputs[:, start:start + every], state,
                                    training=True)
      total += tf.reduce_sum(task.losses(outputs,
                                         targets[:, start:start + every]))
    objective = total / ROWS
  return tape.gradient(objective, model.trainable_variables), state


def test_dropout_recomputation_draws_the_forward_masks():
  model, task, method = _bptt_with_dropout(3)
  segment = tuple(part[:, :WINDOW] for part in _segment(task))  # One window.
  (generator,) = model.rng_variables()
  seed = generator.numpy().copy()
  gradients, state = method.estimate_gradients(segment, model.initial_state(ROWS))
  after = generator.numpy().copy()
  expected, expected_state = _chunked_reference(model, task, segment, 3, seed)
  assert_nests_close(gradients, expected, rtol=1e-5, atol=1e-7)
  assert_nests_close(state, expected_state, rtol=1e-6, atol=1e-7)
  # The generator ends where the forward pass left it: after the reference's draws.
  np.testing.assert_array_equal(after, generator.numpy())
  # Dropout is on: other masks give another gradient.
  other, _ = _chunked_reference(model, task, segment, 3, seed + [0, 1000])
  assert max_abs_diff(other, expected) > 1e-3


def test_dropout_with_one_chunk_equals_plain_bptt():
  model, task, method = _bptt_with_dropout(WINDOW)
  plain_model, _, plain = _bptt_with_dropout(None)
  segment = _segment(task)
  for generator in model.rng_variables() + plain_model.rng_variables():
    generator.assign([5, 0])
  gradients, state = method.estimate_gradients(segment, model.initial_state(ROWS))
  expected, expected_state = plain.estimate_gradients(
      segment, plain_model.initial_state(ROWS))
  assert_nests_close(gradients, expected, rtol=1e-5, atol=1e-7)
  assert_nests_close(state, expected_state, rtol=1e-6, atol=1e-7)
  assert max_abs_diff(model.rng_variables(), plain_model.rng_variables()) == 0


def _bptt_with_dropout(every):
  task = _task('markov')
  model = tiny_model(task, dropout=0.3)
  # XLA draws its own random stream: plain BPTT uncompiled, as the checkpointed
  # pass runs, so both draw the same masks.
  method = BPTT(model=model, task=task, optimizer=built_optimizer(model),
                sequence_length=WINDOW, checkpoint_every=every,
                jit_compile=False)
  return model, task, method


def test_random_state_variables_are_every_seed_generator():
  model = tiny_model(_task('adding'), dropout=0.3, units=None,
                     cell=[keras.layers.LSTMCell(4, dropout=0.2)])
  found = recompute.random_state_variables(model)
  cell_generator = model.core[0].cell.seed_generator.state
  for generator in (model.rng_variables()[0], cell_generator):
    assert any(v is generator for v in found)
  weights = {id(v) for v in model.weights}
  assert not any(id(v) in weights for v in found)


@pytest.mark.parametrize('value', [0, -2, 2.5, True, '3'])
@pytest.mark.parametrize('cls', [TruncatedBPTT, BPTT])
def test_bad_checkpoint_every_is_refused(cls, value):
  task = _task('adding')
  model = tiny_model(task)
  with pytest.raises(ConfigurationError,
                     match=rf'^{cls.__name__}\.checkpoint_every must be a '
                     r'positive integer') as error:
    cls(model=model, task=task, optimizer=built_optimizer(model),
        checkpoint_every=value)
  assert '\n' not in str(error.value)


def test_two_replicas_train_as_one(mirrored):
  """Under ``MirroredStrategy`` (tests/conftest.py splits the CPU) each
  replica checkpoints its own rows; the update is plain BPTT's on one."""
  task = _task('markov')
  segment = tuple(part[:2] for part in _segment(task))  # One row per replica.
  results = []
  for strategy, every in ((tf.distribute.get_strategy(), None), (mirrored, 3)):
    with strategy.scope():
      model = tiny_model(task)
      method = TruncatedBPTT(model=model, task=task,
                             optimizer=built_optimizer(model), window=WINDOW,
                             windows_per_call=2, checkpoint_every=every)
    state, _ = method.train_segment(segment, model.initial_state(2))
    results.append(([v.numpy() for v in model.trainable_variables], state))
  assert_nests_close(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_compiled_window_pass_checkpoints_too():
  """``jit_compile=True`` compiles the checkpointed window pass."""
  task = _task('markov')
  segment = _segment(task)
  results = []
  for every in (None, 3):
    model = tiny_model(task)
    method = TruncatedBPTT(model=model, task=task, optimizer=built_optimizer(model),
                           window=WINDOW, windows_per_call=2,
                           checkpoint_every=every, jit_compile=True)
    results.append(method.estimate_gradients(segment, model.initial_state(ROWS)))
  assert_nests_close(results[1], results[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('readout', ['per_step', 'terminal'])
def test_padded_sequences(readout):
  """Sequences of different lengths (``tfcredit.masking``): the chunks hold
  the state through the padding as the whole window does."""
  rng = np.random.default_rng(0)
  lengths = np.array([9, 4, 7])
  inputs = rng.integers(0, 5, (3, 9)).astype(np.int32)
  targets = (rng.integers(0, 3, (3, 9)) if readout == 'per_step'
             else rng.integers(0, 3, 3)).astype(np.int32)
  task = SequenceTask(inputs=inputs, targets=targets, lengths=lengths,
                      valid=(inputs, targets, lengths),
                      test=(inputs, targets, lengths), num_classes=3,
                      input_vocab_size=5, readout=readout)
  segment = tuple(tf.constant(x) for x in task.batch('train', 0, 0, 3))
  assert np.any(segment[0].numpy() < 0)  # Padded steps.
  results = []
  for every in (None, 4):
    model = tiny_model(task, units=6)
    method = BPTT(model=model, task=task, optimizer=built_optimizer(model),
                  checkpoint_every=every)
    results.append(method.estimate_gradients(segment, model.initial_state(3)))
  assert_nests_close(results[1], results[0], rtol=1e-5, atol=1e-7)

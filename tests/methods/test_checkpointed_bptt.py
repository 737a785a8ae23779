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

from tiers import slow_except

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


@functools.lru_cache(maxsize=None)
def _problem(task_name, cell):
  """``(model, task, segment, initial weights)``, built once per module: the
  tests that train restore the weights (``_restore``) before and after."""
  task = _task(task_name)
  model = tiny_model(task, **CELLS[cell]())
  return model, task, _segment(task), [v.numpy() for v in model.variables]


def _restore(model, weights):
  for variable, value in zip(model.variables, weights):
    variable.assign(value)


@functools.lru_cache(maxsize=None)
def _method(task_name, cell, checkpoint_every, truncated=True):
  """A method on ``_problem``'s model: stream: windows of 10, two per call;
  adding task: ``TruncatedBPTT`` with windows of 6 (the first window runs
  forward only) or ``BPTT`` over the whole sequences. Uncompiled (a
  checkpointed pass always is; ``test_compiled_window_pass_checkpoints_too``
  and tests/methods/test_truncated_bptt_settings.py check XLA's)."""
  model, task, _, _ = _problem(task_name, cell)
  optimizer = built_optimizer(model, learning_rate=0.5)
  common = dict(model=model, task=task, optimizer=optimizer,
                checkpoint_every=checkpoint_every, jit_compile=False)
  if task_name == 'markov':
    return TruncatedBPTT(window=WINDOW, windows_per_call=2, **common)
  if truncated:
    return TruncatedBPTT(window=6, **common)
  return BPTT(**common)


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


MODES = (('markov', True), ('adding', True), ('adding', False))
CASES = [(cell, task, truncated) for cell in CELLS for task, truncated in MODES]
# The ``checkpoint_every`` each case also trains with: a Latin square, so each
# value trains with every cell and on every task and method (each training
# comparison is one more trace, as each estimate is).
TRAINED = {(cell, mode): EVERY[(i + j) % len(EVERY)]
           for i, cell in enumerate(CELLS) for j, mode in enumerate(MODES)}


def _trained(method, segment, weights):
  """``(trainable weights, state, metrics)`` after one ``train_segment`` from
  ``weights``, which the model holds again afterwards."""
  model = method.model
  _restore(model, weights)
  state, metrics = method.train_segment(segment, model.initial_state(ROWS))
  trained = [v.numpy() for v in model.trainable_variables]
  _restore(model, weights)
  return trained, state, metrics


@pytest.mark.parametrize('cell,task_name,truncated',
                         slow_except(CASES, ('gru', 'markov', True)))
def test_gradients_and_training_equal_plain_bptt(cell, task_name, truncated):
  """For each ``checkpoint_every`` in ``EVERY`` (one step per chunk; 3; 7,
  which divides neither the stream's window nor the sequences): the estimate
  is the reference's (one tape per window) and the final state too. With
  ``TRAINED``'s value, one ``train_segment`` (one update per window) gives the
  same weights, state and metrics as the same method without checkpointing."""
  model, task, segment, weights = _problem(task_name, cell)
  _restore(model, weights)
  initial = [v.numpy() for v in model.trainable_variables]
  plain = _method(task_name, cell, None, truncated)
  window = plain.window or int(segment[0].shape[1])
  expected, expected_state = _reference_gradients(model, task, segment, window)
  # Every weight has a gradient: embedding (stream) or cell, and the head.
  assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in expected)
  plain_weights, plain_state, plain_metrics = _trained(plain, segment, weights)
  assert max_abs_diff(plain_weights, initial) > 0  # The updates move them.
  for every in EVERY:
    method = _method(task_name, cell, every, truncated)
    assert method.window == plain.window
    gradients, state = method.estimate_gradients(segment,
                                                 model.initial_state(ROWS))
    assert len(gradients) == len(model.trainable_variables)
    assert_nests_close(gradients, expected, rtol=1e-5, atol=1e-7)
    assert_nests_close(state, expected_state, rtol=1e-6, atol=1e-7)
    if every != TRAINED[cell, (task_name, truncated)]:
      continue
    # One update per window against the same method without checkpointing.
    trained, state, metrics = _trained(method, segment, weights)
    assert_nests_close(trained, plain_weights, rtol=1e-5, atol=1e-7)
    assert_nests_close(state, plain_state, rtol=1e-5, atol=1e-7)
    assert_nests_close(metrics, plain_metrics, rtol=1e-5, atol=1e-7)
    assert float(metrics['updates']) == float(plain_metrics['updates'])
  if (task_name, cell) == ('markov', 'lstm'):
    # A chunk longer than the window is one chunk.
    gradients, state = _method(task_name, cell, 50).estimate_gradients(
        segment, model.initial_state(ROWS))
    assert_nests_close(gradients, expected, rtol=1e-5, atol=1e-7)
    assert_nests_close(state, expected_state, rtol=1e-6, atol=1e-7)


def test_each_step_runs_forward_once_more():
  """The memory bound's price and nothing more: per window, the chunks run
  forward once without gradient and once more in the backward pass, so the
  cell runs twice the window's steps (not once per chunk from the window's
  start, which would also be exact but quadratic). The Keras RNN layer calls
  the cell once more per call (plain BPTT's count: one call per window)."""
  steps = {}
  model, _, segment, _ = _problem('markov', 'custom')
  counter = model.core[0].cell.steps
  for every in (None, 3, 7):
    method = _method('markov', 'custom', every)
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
  _, _, plain = _bptt_with_dropout(None)
  segment = _segment(task)
  (generator,) = model.rng_variables()
  results = []
  for each in (method, plain):  # The same model, the generator from [5, 0].
    generator.assign([5, 0])
    results.append((each.estimate_gradients(segment, model.initial_state(ROWS)),
                    generator.numpy().copy()))
  (gradients, state), after = results[0]
  (expected, expected_state), plain_after = results[1]
  assert_nests_close(gradients, expected, rtol=1e-5, atol=1e-7)
  assert_nests_close(state, expected_state, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(after, plain_after)
  assert np.any(after != [5, 0])  # Both drew masks.


@functools.lru_cache(maxsize=None)
def _dropout_model():
  return tiny_model(_task('markov'), dropout=0.3)


def _bptt_with_dropout(every):
  """Full BPTT over windows of 10 on one model with dropout (estimates only:
  the weights never change)."""
  task = _task('markov')
  model = _dropout_model()
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
  model, task, _, _ = _problem('adding', 'lstm')
  with pytest.raises(ConfigurationError,
                     match=rf'^{cls.__name__}\.checkpoint_every must be a '
                     r'positive integer') as error:
    cls(model=model, task=task, optimizer=built_optimizer(model),
        checkpoint_every=value)
  assert '\n' not in str(error.value)


@pytest.mark.slow  # Two replicas, as tests/training/test_distribution.py.
def test_two_replicas_train_as_one(mirrored):
  """Under ``MirroredStrategy`` (tests/conftest.py splits the CPU) each
  replica checkpoints its own rows; the update is plain BPTT's on one."""
  task = _task('markov')
  segment = tuple(part[:2] for part in _segment(task))  # One row per replica.
  results = []
  for strategy, every in ((tf.distribute.get_strategy(), None), (mirrored, 3)):
    with strategy.scope():
      model = tiny_model(task)
      # Uncompiled: XLA's pass is test_compiled_window_pass_checkpoints_too's.
      method = TruncatedBPTT(model=model, task=task,
                             optimizer=built_optimizer(model), window=WINDOW,
                             windows_per_call=2, checkpoint_every=every,
                             jit_compile=False)
    state, _ = method.train_segment(segment, model.initial_state(2))
    results.append(([v.numpy() for v in model.trainable_variables], state))
  assert_nests_close(results[1], results[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # The equivalence above once more, compiled by XLA.
def test_compiled_window_pass_checkpoints_too():
  """``jit_compile=True`` compiles the checkpointed window pass: the gradients
  and state of plain BPTT's reference (one tape per window, eager)."""
  model, task, segment, weights = _problem('markov', 'lstm')
  _restore(model, weights)
  method = TruncatedBPTT(model=model, task=task, optimizer=built_optimizer(model),
                         window=WINDOW, windows_per_call=2, checkpoint_every=3,
                         jit_compile=True)
  assert method.jit_compile
  expected = _reference_gradients(model, task, segment, WINDOW)
  assert_nests_close(
      method.estimate_gradients(segment, model.initial_state(ROWS)), expected,
      rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('readout', slow_except(['per_step', 'terminal'],
                                                'per_step'))
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

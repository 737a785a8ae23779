"""Tests of tfcredit.tasks.synthetic: layouts, baselines and determinism.

Baselines are recomputed here from their definitions (numpy), never read from
the task.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.tasks.synthetic import AddingTask, CopyTask

# ------------------------------------------------------------------ adding


@pytest.mark.parametrize('length', [2, 7, 40])
def test_adding_has_one_marker_in_each_half_and_sums_the_marked_values(length):
  task = AddingTask(sequence_length=length, seed=1)
  inputs, targets = task.batch('train', 0, 0, 64)
  assert inputs.shape == (64, length, 2) and inputs.dtype == np.float32
  assert targets.shape == (64, 1) and targets.dtype == np.float32
  values, markers = inputs[..., 0], inputs[..., 1]
  assert np.all((values >= 0.0) & (values <= 1.0))
  assert set(np.unique(markers)) <= {0.0, 1.0}
  half = length // 2
  np.testing.assert_array_equal(markers[:, :half].sum(axis=1), 1.0)
  np.testing.assert_array_equal(markers[:, half:].sum(axis=1), 1.0)
  for row in range(64):
    marked = np.flatnonzero(markers[row])
    assert len(marked) == 2
    assert targets[row, 0] == pytest.approx(values[row, marked].sum(), abs=1e-6)


def test_adding_constant_one_predictor_has_mse_one_sixth():
  task = AddingTask(sequence_length=10, seed=2)
  targets = np.concatenate([task.batch('train', 0, index, 5000)[1]
                            for index in range(4)])
  mse = float(np.mean(np.square(1.0 - targets)))
  # Var(U + U) for independent U(0, 1) is 2 / 12; the standard error here is ~0.002.
  assert mse == pytest.approx(1.0 / 6.0, abs=0.01)
  # The task's loss agrees with the hand-computed one.
  outputs = tf.ones_like(targets)
  losses = task.losses(outputs, tf.constant(targets)).numpy()
  assert losses.shape == (targets.shape[0],)
  assert float(np.mean(losses)) == pytest.approx(mse, rel=1e-6)


@pytest.mark.parametrize('task_class', [AddingTask, CopyTask])
def test_batches_are_a_function_of_seed_split_epoch_and_index(task_class):
  task = task_class(sequence_length=10, seed=3)

  def batch(split='train', epoch=0, index=0, seed=3):
    source = task if seed == 3 else task_class(sequence_length=10, seed=seed)
    return np.concatenate([a.reshape(a.shape[0], -1).astype(np.float64)
                           for a in source.batch(split, epoch, index, 8)], axis=1)

  # The same coordinates give the same data, also from a fresh task object.
  np.testing.assert_array_equal(batch(), batch())
  np.testing.assert_array_equal(
      batch(epoch=2, index=1),
      np.concatenate([a.reshape(8, -1).astype(np.float64) for a in
                      task_class(sequence_length=10, seed=3).batch('train', 2, 1, 8)],
                     axis=1))
  # Any change of coordinate gives other data.
  base = batch()
  for other in (batch(epoch=1), batch(index=1), batch(seed=4), batch('valid'),
                batch('test')):
    assert not np.array_equal(base, other)
  # Validation and test sets do not change with the epoch.
  for split in ('valid', 'test'):
    np.testing.assert_array_equal(batch(split, epoch=0, index=1),
                                  batch(split, epoch=5, index=1))
  assert not np.array_equal(batch('valid'), batch('test'))


def test_unknown_split_is_a_configuration_error():
  with pytest.raises(ConfigurationError, match="'validation'"):
    AddingTask(sequence_length=4).batch('validation', 0, 0, 2)


# -------------------------------------------------------------------- copy


@pytest.mark.parametrize('length', [1, 5, 30])
def test_copy_layout_follows_kag_and_saligrama_appendix(length):
  task = CopyTask(sequence_length=length, seed=5)
  inputs, targets = task.batch('train', 0, 0, 32)
  total = length + 20
  assert inputs.shape == targets.shape == (32, total)
  memory = inputs[:, :10]
  assert np.all((memory >= 0) & (memory <= 7))
  # Every symbol 0..7 shows up somewhere in the memory (draws are uniform).
  assert set(np.unique(memory)) == set(range(8))
  expected_inputs = np.full((32, total), 8)
  expected_inputs[:, :10] = memory
  expected_inputs[:, length + 9] = 9  # the delimiter, T - 1 blanks after the memory
  np.testing.assert_array_equal(inputs, expected_inputs)
  expected_targets = np.full((32, total), 8)
  expected_targets[:, length + 10:] = memory
  np.testing.assert_array_equal(targets, expected_targets)


def _memoryless_probabilities(length):
  """Per-position target distribution that ignores the inputs: ``[T + 20, 10]``."""
  total = length + 20
  probabilities = np.zeros((total, 10))
  probabilities[:length + 10, 8] = 1.0  # blank, certainly
  probabilities[length + 10:, :8] = 1.0 / 8.0  # one of a0..a7, uniformly
  return probabilities


@pytest.mark.parametrize('length', [5, 30, 100])
def test_copy_memoryless_baseline_is_the_memoryless_cross_entropy(length):
  task = CopyTask(sequence_length=length, seed=6)
  _, targets = task.batch('train', 0, 0, 64)
  probabilities = _memoryless_probabilities(length)
  picked = probabilities[np.arange(length + 20)[None, :], targets]
  assert np.all(picked > 0)  # the predictor never rules a target out
  cross_entropy = float(np.mean(-np.log(picked)))
  formula = 10 * math.log(8) / (length + 20)
  assert cross_entropy == pytest.approx(formula, rel=1e-12)
  assert task.memoryless_baseline == pytest.approx(formula, rel=1e-12)

  # The task's own loss of that predictor (probability 1 as a logit gap of 60,
  # an error below e^-60 per step) gives the same number.
  with np.errstate(divide='ignore'):
    logits = np.maximum(np.log(probabilities), -60.0)
  outputs = tf.constant(np.broadcast_to(logits, targets.shape + (10,)), tf.float32)
  losses = task.losses(outputs, tf.constant(targets)).numpy()
  assert losses.shape == targets.shape
  assert float(np.mean(losses)) == pytest.approx(formula, rel=1e-5)


def test_copy_baseline_is_the_entropy_of_the_target_marginals():
  # The best memoryless predictor is each position's marginal: its mean entropy,
  # estimated from many sequences, approaches 10 log 8 / (T + 20).
  length = 10
  task = CopyTask(sequence_length=length, seed=7)
  targets = np.concatenate([task.batch('train', 0, index, 4000)[1]
                            for index in range(5)])
  entropy = 0.0
  for position in range(length + 20):
    counts = np.bincount(targets[:, position], minlength=10)
    p = counts[counts > 0] / counts.sum()
    entropy -= float(np.sum(p * np.log(p)))
  mean_entropy = entropy / (length + 20)
  assert mean_entropy == pytest.approx(task.memoryless_baseline, abs=2e-3)


# ------------------------------------------------------------ copy curriculum


def _call_metrics(task, error_bits, sequences=8):
  """Summed metrics of a training call whose error per recalled symbol is
  ``error_bits``."""
  steps = task.length + 2 * task.symbols
  return {'loss_sum': error_bits * math.log(2.0) * sequences * task.symbols,
          'count': float(sequences * steps)}


def test_curriculum_grows_the_length_when_and_only_when_the_error_is_below():
  task = CopyTask(sequence_length=3, curriculum_threshold=0.15, curriculum_calls=2)
  assert task.length == 3 and task.batch('train', 0, 0, 2)[0].shape == (2, 23)
  # Mean over 2 calls above the threshold (one call below is not enough).
  assert task.after_training_call(_call_metrics(task, 0.1)) is None
  assert task.after_training_call(_call_metrics(task, 0.3)) is None
  assert task.length == 3 and task.final_metrics()['largest_solved_length'] is None
  # Two calls with a mean below it: T = 3 is solved, T becomes 4.
  assert task.after_training_call(_call_metrics(task, 0.1)) is None
  message = task.after_training_call(_call_metrics(task, 0.14))
  assert message and 'T = 3 solved' in message
  assert task.length == 4
  assert task.final_metrics() == {'curriculum_length': 4,
                                  'largest_solved_length': 3}
  # The batches and the baseline follow the new length; so does an export.
  assert task.batch('train', 0, 1, 2)[0].shape == (2, 24)
  assert task.memoryless_baseline == pytest.approx(10 * math.log(8) / 24)
  assert task.get_config()['sequence_length'] == 4
  # At exactly the threshold it does not grow.
  task.after_training_call(_call_metrics(task, 0.15))
  task.after_training_call(_call_metrics(task, 0.15))
  assert task.length == 4


def test_a_curriculum_on_symbols_grows_the_number_of_symbols_to_copy():
  """``curriculum_on='symbols'``: the paper's Copy length (M symbols, one
  delimiter step, then M to reproduce)."""
  task = CopyTask(sequence_length=1, memory_length=2, curriculum_threshold=0.15,
                  curriculum_calls=1, curriculum_on='symbols')
  inputs, targets = task.batch('train', 0, 0, 3)
  assert inputs.shape == (3, 5)  # 2 symbols, the delimiter, 2 to reproduce.
  np.testing.assert_array_equal(inputs[:, 2], CopyTask.delimiter)
  np.testing.assert_array_equal(targets[:, 3:], inputs[:, :2])
  assert 'M = 2 solved' in task.after_training_call(_call_metrics(task, 0.1))
  assert (task.symbols, task.length) == (3, 1)
  assert task.batch('train', 0, 1, 3)[0].shape == (3, 7)
  assert task.memoryless_baseline == pytest.approx(3 * math.log(8) / 7)
  assert task.get_config()['memory_length'] == 3
  assert task.final_metrics() == {'curriculum_length': 3,
                                  'largest_solved_length': 2}
  # The error is per recalled symbol at the current M: 0.2 bits is not solved.
  assert task.after_training_call(_call_metrics(task, 0.2)) is None
  assert task.symbols == 3


def test_without_a_threshold_the_length_is_fixed():
  task = CopyTask(sequence_length=3)
  for _ in range(5):
    assert task.after_training_call(_call_metrics(task, 0.0)) is None
  assert task.length == 3 and task.checkpoint_state() is None
  assert task.final_metrics() == {}


@pytest.mark.parametrize('kwargs,parameter', [
    (dict(curriculum_threshold=0.0), 'curriculum_threshold'),
    (dict(curriculum_threshold='low'), 'curriculum_threshold'),
    (dict(curriculum_threshold=0.15, curriculum_calls=0), 'curriculum_calls'),
    (dict(curriculum_threshold=0.15, curriculum_on='delay'), 'curriculum_on'),
    (dict(memory_length=0), 'memory_length'),
    (dict(one_hot_inputs='yes'), 'one_hot_inputs'),
])
def test_bad_curriculum_settings_name_the_parameter(kwargs, parameter):
  with pytest.raises(ConfigurationError, match=f'CopyTask.{parameter}'):
    CopyTask(sequence_length=3, **kwargs)


def test_one_hot_inputs_are_the_symbols_one_hot_vectors_for_a_model_without_encoder():
  ids_task = CopyTask(sequence_length=5, memory_length=4, seed=3)
  task = CopyTask(sequence_length=5, memory_length=4, seed=3, one_hot_inputs=True)
  ids, targets = ids_task.batch('train', 1, 2, 6)
  inputs, one_hot_targets = task.batch('train', 1, 2, 6)
  assert inputs.shape == (6, 13, 10) and inputs.dtype == np.float32
  np.testing.assert_array_equal(inputs, np.eye(10, dtype=np.float32)[ids])
  np.testing.assert_array_equal(one_hot_targets, targets)
  spec = task.model_spec()
  assert spec['input_dim'] == 10 and 'input_vocab_size' not in spec
  assert spec['output_dim'] == 10 and spec['readout'] == ids_task.readout
  inputs_spec, targets_spec = task.segment_spec()
  assert inputs_spec.shape.as_list() == [None, None, 10]
  assert inputs_spec.dtype == tf.float32 and targets_spec.dtype == tf.int32
  assert task.get_config()['one_hot_inputs'] is True
  assert ids_task.get_config()['one_hot_inputs'] is False

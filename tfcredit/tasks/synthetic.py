"""Synthetic long-range episodic tasks, generated on the fly and deterministic in a seed.

* Adding task (Hochreiter & Schmidhuber 1997; the setting of Kag & Saligrama 2021,
  appendix): a sequence of ``T`` pairs ``(value, marker)`` with values uniform in
  [0, 1] and exactly two markers, one in each half; the target is the sum of the two
  marked values, read at the last step. Predicting the constant 1 gives the naive MSE
  ``Var(U + U) = 1/6 ≈ 0.167``.
* Copy task (Arjovsky et al. 2016, as defined in Kag & Saligrama 2021, appendix 6.6):
  ``T + 20`` symbols; the first 10 drawn uniformly from ``a0..a7``, then ``T - 1``
  blanks ``a8``, one delimiter ``a9`` and 10 more blanks. The target is blanks for the
  first ``T + 10`` steps and then the 10 remembered symbols. Per-step cross-entropy;
  the memoryless baseline is ``10·log 8 / (T + 20)``. The inputs are symbol ids
  (an embedding reads them), or with ``one_hot_inputs`` the symbols' one-hot
  vectors, real features a cell reads directly.

Batch ``i`` of epoch ``e`` of a split is drawn from ``numpy.random.default_rng([seed,
split, e, i])``, so every method sees the same data in the same order, and a resumed
run sees what an uninterrupted one would. Validation and test sets are fixed (the
epoch is ignored for them) and disjoint in seed from training.
"""

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfcredit import config
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.tasks import base

_SPLITS = {'train': 0, 'valid': 1, 'test': 2}


class _SyntheticTask(base.Task):
  """Shared plumbing: splits, seeding and batch counts."""

  regime = base.EPISODIC

  def __init__(self, *, sequence_length: int, seed: int, train_batches_per_epoch: int,
               eval_batches: int):
    self.sequence_length = validation.positive_int('sequence_length', sequence_length)
    self.seed = int(seed)
    self.train_batches_per_epoch = validation.positive_int(
        'train_batches_per_epoch', train_batches_per_epoch)
    self.eval_batches = validation.positive_int('eval_batches', eval_batches)

  def _rng(self, split: str, epoch: int, index: int) -> np.random.Generator:
    validation.one_of('split', split, sorted(_SPLITS))
    if split != 'train':
      epoch = 0
    return np.random.default_rng([self.seed, _SPLITS[split], epoch, index])

  def batches_per_epoch(self, split: str, batch_size: int) -> int:
    del batch_size
    return self.train_batches_per_epoch if split == 'train' else self.eval_batches

  def get_config(self) -> Dict[str, Any]:
    return {'sequence_length': self.sequence_length, 'seed': self.seed,
            'train_batches_per_epoch': self.train_batches_per_epoch,
            'eval_batches': self.eval_batches}


@config.configurable
class AddingTask(_SyntheticTask):
  """The adding problem: MSE of the sum of two marked values, read at the end."""

  name = 'adding'
  readout = base.TERMINAL
  metric_name = 'mse'
  naive_mse = 1.0 / 6.0  # Var(U(0,1) + U(0,1)): the constant prediction 1.

  def __init__(self, *, sequence_length: int = 200, seed: int = 0,
               train_batches_per_epoch: int = 100, eval_batches: int = 10):
    super().__init__(sequence_length=sequence_length, seed=seed,
                     train_batches_per_epoch=train_batches_per_epoch,
                     eval_batches=eval_batches)
    if self.sequence_length < 2:
      raise ConfigurationError(
          f'AddingTask.sequence_length must be at least 2 (one marker per half), got '
          f'{sequence_length}')

  def model_spec(self) -> Dict[str, Any]:
    return {'input_dim': 2, 'output_dim': 1, 'readout': self.readout}

  def segment_spec(self) -> Tuple[tf.TensorSpec, tf.TensorSpec]:
    return (tf.TensorSpec([None, None, 2], tf.float32, name='inputs'),
            tf.TensorSpec([None, 1], tf.float32, name='targets'))

  def batch(self, split: str, epoch: int, index: int, batch_size: int):
    rng = self._rng(split, epoch, index)
    length = self.sequence_length
    half = length // 2
    values = rng.uniform(0.0, 1.0, size=(batch_size, length)).astype(np.float32)
    first = rng.integers(0, half, size=batch_size)
    second = rng.integers(half, length, size=batch_size)
    markers = np.zeros((batch_size, length), np.float32)
    rows = np.arange(batch_size)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = (values[rows, first] + values[rows, second])[:, None]
    return np.stack([values, markers], axis=-1), targets.astype(np.float32)

  def losses(self, outputs, targets):
    return tf.reduce_mean(tf.square(outputs - targets), axis=-1)


_CURRICULA = ('blanks', 'symbols')


class _CurriculumState(tf.Module):
  """The copy curriculum's position, kept in the run's checkpoints."""

  def __init__(self, length: int):
    super().__init__(name='copy_curriculum')
    int64 = lambda value: tf.Variable(value, dtype=tf.int64, trainable=False)
    self.length = int64(length)
    self.largest_solved = int64(0)  # 0: none yet.
    self.calls_at_length = int64(0)
    self.error_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)


@config.configurable
class CopyTask(_SyntheticTask):
  """The copy-memory problem: reproduce ``M`` symbols after ``T`` steps.

  ``M = memory_length`` symbols (default 10), then ``T = sequence_length`` steps
  whose last holds the delimiter, then the ``M`` symbols are to be reproduced;
  the targets are blank elsewhere.

  With ``curriculum_threshold`` (bits) a length grows during training, as in the
  curriculum of Jaderberg et al. 2017 (Section 3.1): ``curriculum_on='blanks'``
  grows ``T``, ``'symbols'`` grows ``M`` (the paper's Copy task, whose length is
  the number of symbols to copy: use ``sequence_length = 1``). After every
  ``curriculum_calls`` training calls at one length, if the mean error per
  recalled symbol over them is below the threshold, that length counts as solved
  and grows by one. The error of a call is its summed cross-entropy over every
  step, in bits, divided by the recalled symbols: an upper bound of the recall
  error (the blank steps' loss is counted too). Validation and test use the
  current lengths. The position is in the run's checkpoints; the final metrics
  report ``curriculum_length`` and ``largest_solved_length`` (of the growing
  length).

  ``one_hot_inputs`` feeds each symbol as its one-hot vector (``input_dim =
  10``) instead of its id, for a model without an encoder (a cell that reads
  the inputs themselves, element-wise RTRL's exact case).
  """

  name = 'copy'
  readout = base.PER_STEP
  metric_name = 'cross_entropy'
  num_symbols = 10  # a0..a7 data, a8 blank, a9 delimiter
  blank = 8
  delimiter = 9

  def __init__(self, *, sequence_length: int = 30, seed: int = 0,
               train_batches_per_epoch: int = 100, eval_batches: int = 10,
               memory_length: int = 10,
               curriculum_threshold: Optional[float] = None,
               curriculum_calls: int = 10, curriculum_on: str = 'blanks',
               one_hot_inputs: bool = False):
    super().__init__(sequence_length=sequence_length, seed=seed,
                     train_batches_per_epoch=train_batches_per_epoch,
                     eval_batches=eval_batches)
    self.memory_length = validation.positive_int('CopyTask.memory_length',
                                                 memory_length)
    if curriculum_threshold is not None and not (
        isinstance(curriculum_threshold, (int, float)) and
        not isinstance(curriculum_threshold, bool) and curriculum_threshold > 0):
      raise ConfigurationError(
          f'CopyTask.curriculum_threshold must be a positive number of bits or '
          f'None, got {curriculum_threshold!r}: e.g. 0.15')
    validation.one_of('CopyTask.curriculum_on', curriculum_on, _CURRICULA)
    self.curriculum_threshold = curriculum_threshold
    self.curriculum_calls = validation.positive_int('CopyTask.curriculum_calls',
                                                    curriculum_calls)
    self.curriculum_on = curriculum_on
    self.one_hot_inputs = validation.boolean('CopyTask.one_hot_inputs',
                                             one_hot_inputs)
    start = self.sequence_length if curriculum_on == 'blanks' else self.memory_length
    self._curriculum = (None if curriculum_threshold is None
                        else _CurriculumState(start))

  def _grows(self, variable: str) -> bool:
    return self._curriculum is not None and self.curriculum_on == variable

  @property
  def length(self) -> int:
    """The current ``T``: ``sequence_length``, or the curriculum's position."""
    if self._grows('blanks'):
      return int(self._curriculum.length)
    return self.sequence_length

  @property
  def symbols(self) -> int:
    """The current ``M``: ``memory_length``, or the curriculum's position."""
    if self._grows('symbols'):
      return int(self._curriculum.length)
    return self.memory_length

  @property
  def memoryless_baseline(self) -> float:
    return self.symbols * math.log(8.0) / (self.length + 2 * self.symbols)

  def checkpoint_state(self) -> Optional[tf.Module]:
    return self._curriculum

  def after_training_call(self, metrics: Dict[str, float]) -> Optional[str]:
    state = self._curriculum
    if state is None:
      return None
    symbols = self.symbols
    sequences = float(metrics['count']) / (self.length + 2 * symbols)
    error = float(metrics['loss_sum']) / math.log(2.0) / max(
        sequences * symbols, 1e-12)
    state.error_sum.assign_add(error)
    state.calls_at_length.assign_add(1)
    if int(state.calls_at_length) < self.curriculum_calls:
      return None
    mean = float(state.error_sum) / int(state.calls_at_length)
    state.error_sum.assign(0.0)
    state.calls_at_length.assign(0)
    if mean >= self.curriculum_threshold:
      return None
    solved = int(state.length)
    state.largest_solved.assign(solved)
    state.length.assign(solved + 1)
    name = 'T' if self.curriculum_on == 'blanks' else 'M'
    return (f'curriculum: {name} = {solved} solved (mean error {mean:.3f} bits per '
            f'recalled symbol over {self.curriculum_calls} calls); now {name} = '
            f'{solved + 1}')

  def get_config(self) -> Dict[str, Any]:
    # An export is evaluated at the lengths it was trained to.
    return dict(super().get_config(), sequence_length=self.length,
                memory_length=self.symbols, one_hot_inputs=self.one_hot_inputs)

  def final_metrics(self) -> Dict[str, Any]:
    if self._curriculum is None:
      return {}
    solved = int(self._curriculum.largest_solved)
    return {'curriculum_length': int(self._curriculum.length),
            'largest_solved_length': solved or None}

  def model_spec(self) -> Dict[str, Any]:
    inputs = ({'input_dim': self.num_symbols} if self.one_hot_inputs else
              {'input_vocab_size': self.num_symbols})
    return dict(inputs, output_dim=self.num_symbols, readout=self.readout)

  def segment_spec(self) -> Tuple[tf.TensorSpec, tf.TensorSpec]:
    inputs = (tf.TensorSpec([None, None, self.num_symbols], tf.float32,
                            name='inputs') if self.one_hot_inputs else
              tf.TensorSpec([None, None], tf.int32, name='inputs'))
    return inputs, tf.TensorSpec([None, None], tf.int32, name='targets')

  def batch(self, split: str, epoch: int, index: int, batch_size: int):
    rng = self._rng(split, epoch, index)
    length, symbols = self.length, self.symbols
    total = length + 2 * symbols
    memory = rng.integers(0, 8, size=(batch_size, symbols))
    inputs = np.full((batch_size, total), self.blank, np.int32)
    inputs[:, :symbols] = memory
    inputs[:, symbols + length - 1] = self.delimiter
    targets = np.full((batch_size, total), self.blank, np.int32)
    targets[:, -symbols:] = memory
    if self.one_hot_inputs:
      return np.eye(self.num_symbols, dtype=np.float32)[inputs], targets
    return inputs, targets

  def losses(self, outputs, targets):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets,
                                                          logits=outputs)

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
  the memoryless baseline is ``10·log 8 / (T + 20)``.

Batch ``i`` of epoch ``e`` of a split is drawn from ``numpy.random.default_rng([seed,
split, e, i])``, so every method sees the same data in the same order, and a resumed
run sees what an uninterrupted one would. Validation and test sets are fixed (the
epoch is ignored for them) and disjoint in seed from training.
"""

import math
from typing import Any, Dict, Tuple

import numpy as np
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.tasks import base

_SPLITS = {'train': 0, 'valid': 1, 'test': 2}


class _SyntheticTask(base.Task):
  """Shared plumbing: splits, seeding and batch counts."""

  regime = base.EPISODIC

  def __init__(self, *, sequence_length: int, seed: int, train_batches_per_epoch: int,
               eval_batches: int):
    self.sequence_length = base.check_positive_int('sequence_length', sequence_length)
    self.seed = int(seed)
    self.train_batches_per_epoch = base.check_positive_int(
        'train_batches_per_epoch', train_batches_per_epoch)
    self.eval_batches = base.check_positive_int('eval_batches', eval_batches)

  def _rng(self, split: str, epoch: int, index: int) -> np.random.Generator:
    if split not in _SPLITS:
      raise ConfigurationError(
          f'split must be one of {sorted(_SPLITS)}, got {split!r}')
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


class CopyTask(_SyntheticTask):
  """The copy-memory problem: reproduce 10 symbols after ``T`` blank steps."""

  name = 'copy'
  readout = base.PER_STEP
  metric_name = 'cross_entropy'
  num_symbols = 10  # a0..a7 data, a8 blank, a9 delimiter
  memory_length = 10
  blank = 8
  delimiter = 9

  def __init__(self, *, sequence_length: int = 30, seed: int = 0,
               train_batches_per_epoch: int = 100, eval_batches: int = 10):
    super().__init__(sequence_length=sequence_length, seed=seed,
                     train_batches_per_epoch=train_batches_per_epoch,
                     eval_batches=eval_batches)

  @property
  def memoryless_baseline(self) -> float:
    return self.memory_length * math.log(8.0) / (self.sequence_length + 20)

  def model_spec(self) -> Dict[str, Any]:
    return {'input_vocab_size': self.num_symbols, 'output_dim': self.num_symbols,
            'readout': self.readout}

  def segment_spec(self) -> Tuple[tf.TensorSpec, tf.TensorSpec]:
    return (tf.TensorSpec([None, None], tf.int32, name='inputs'),
            tf.TensorSpec([None, None], tf.int32, name='targets'))

  def batch(self, split: str, epoch: int, index: int, batch_size: int):
    rng = self._rng(split, epoch, index)
    length = self.sequence_length
    total = length + 2 * self.memory_length
    memory = rng.integers(0, 8, size=(batch_size, self.memory_length))
    inputs = np.full((batch_size, total), self.blank, np.int32)
    inputs[:, :self.memory_length] = memory
    inputs[:, self.memory_length + length - 1] = self.delimiter
    targets = np.full((batch_size, total), self.blank, np.int32)
    targets[:, -self.memory_length:] = memory
    return inputs, targets

  def losses(self, outputs, targets):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets,
                                                          logits=outputs)

"""Labelled sequences from arrays, an ``.npz`` file or a ``tf.data.Dataset``, checked.

``SequenceTask`` (``tfcredit.tasks.sequences``) reads its splits through
``load_split``: every split becomes a ``Split`` of per-sequence arrays (inputs
``[T_i]`` token ids or ``[T_i, D]`` features, targets ``[]``/``[C]`` per sequence or
``[T_i]``/``[T_i, C]`` per step), whatever the source was, after the checks of
``check_split``: each failure is a ``DataError`` naming the array and the row.
"""

import dataclasses
import os
from typing import Any, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfcredit.errors import ConfigurationError, DataError

SPLITS = ('train', 'valid', 'test')


@dataclasses.dataclass
class Split:
  """One split's sequences: ``inputs[i]`` is ``[T_i(, D)]``; ``targets[i]`` is
  the sequence's target or its ``[T_i(, C)]`` per-step targets."""
  inputs: List[np.ndarray]
  targets: List[np.ndarray]

  @property
  def lengths(self) -> np.ndarray:
    return np.array([len(x) for x in self.inputs], np.int64)

  def take(self, rows: Sequence[int]) -> 'Split':
    return Split([self.inputs[i] for i in rows], [self.targets[i] for i in rows])


def read_npz(path: str) -> dict:
  """The arrays of an ``.npz`` file, as a dict."""
  if not os.path.isfile(path):
    raise DataError(f'SequenceTask.path={path!r}: no such file; give the path of '
                    'an .npz file with arrays inputs and targets')
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  except (OSError, ValueError) as error:
    raise DataError(f'SequenceTask.path={path!r} is not a readable .npz file '
                    f'({error}); write it with numpy.savez') from None
  for key in ('inputs', 'targets'):
    if key not in arrays:
      raise DataError(
          f'SequenceTask.path={path!r} has no array {key!r} (it has '
          f'{sorted(arrays)}); save the sequences as inputs=..., targets=...')
  return arrays


def from_dataset(dataset: tf.data.Dataset, where: str) -> Split:
  """Every ``(inputs, targets)`` element of ``dataset``: one sequence each."""
  inputs, targets = [], []
  for element in dataset.as_numpy_iterator():
    if not isinstance(element, tuple) or len(element) != 2:
      raise ConfigurationError(
          f'{where} must yield (inputs, targets) pairs, one sequence each; got '
          f'an element of type {type(element).__name__}')
    inputs.append(np.asarray(element[0]))
    targets.append(np.asarray(element[1]))
  return Split(inputs, targets)


def from_arrays(inputs: Any, targets: Any, lengths: Any, where: str) -> Split:
  """A split from padded arrays with optional lengths, or from lists of arrays."""
  if isinstance(inputs, (list, tuple)):
    if lengths is not None:
      raise ConfigurationError(
          f'{where}_lengths is given with a list of sequences, which have their '
          'own lengths: leave the lengths out')
    return Split([np.asarray(x) for x in inputs], [np.asarray(y) for y in targets])
  inputs, targets = np.asarray(inputs), np.asarray(targets)
  if inputs.ndim < 2:
    raise DataError(f'{where}_inputs must be [sequences, steps] or [sequences, '
                    f'steps, features]; got shape {inputs.shape}')
  count, steps = inputs.shape[:2]
  if len(targets) != count:
    raise DataError(f'{where}_targets has {len(targets)} rows but {where}_inputs '
                    f'has {count}: give one target row per sequence')
  if lengths is None:
    lengths = np.full(count, steps)
  lengths = np.asarray(lengths)
  if lengths.shape != (count,) or not np.issubdtype(lengths.dtype, np.integer):
    raise DataError(f'{where}_lengths must be {count} integers (one per '
                    f'sequence); got shape {lengths.shape}, dtype {lengths.dtype}')
  bad = np.flatnonzero((lengths < 1) | (lengths > steps))
  if bad.size:
    raise DataError(
        f'{where}_lengths[{bad[0]}] = {lengths[bad[0]]} is outside [1, {steps}] '
        f'(the padded length of {where}_inputs): every length counts real steps')
  per_step = targets.ndim >= 2 and targets.shape[1] == steps
  return Split([inputs[i, :n] for i, n in enumerate(lengths)],
               [targets[i, :n] if per_step else targets[i]
                for i, n in enumerate(lengths)])


def check_split(split: Split, where: str, token_inputs: bool,
                num_classes: Optional[int], input_vocab_size: Optional[int]) -> None:
  """Refuses empty splits, non-finite values and out-of-range ids or labels."""
  if not split.inputs:
    raise DataError(f'{where} has no sequences; give at least one')
  if len(split.targets) != len(split.inputs):
    raise DataError(f'{where} has {len(split.inputs)} input sequences but '
                    f'{len(split.targets)} targets: give one target per sequence')
  for row, (x, y) in enumerate(zip(split.inputs, split.targets)):
    if len(x) < 1:
      raise DataError(f'{where} sequence {row} is empty; every sequence needs '
                      'at least one step')
    _check_values(x, f'{where}_inputs[{row}]', token_inputs, input_vocab_size)
    _check_values(y, f'{where}_targets[{row}]', num_classes is not None,
                  num_classes)


def _check_values(values: np.ndarray, where: str, ids: bool,
                  bound: Optional[int]) -> None:
  if ids:
    if not np.issubdtype(values.dtype, np.integer):
      raise DataError(f'{where} must hold integer ids; got dtype {values.dtype}')
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or (bound is not None and high >= bound):
      limit = f'[0, {bound})' if bound is not None else '>= 0'
      raise DataError(f'{where} holds id {low if low < 0 else high}, outside '
                      f'{limit}: ids and labels must be in range')
    return
  if not np.all(np.isfinite(values.astype(np.float64))):
    index = np.argwhere(~np.isfinite(values.astype(np.float64)))[0]
    raise DataError(f'{where} is not finite at index {tuple(index)}: remove or '
                    'replace NaN and infinite values')


def split_rows(count: int, valid_fraction: float, test_fraction: float,
               seed: int, need_valid: bool, need_test: bool):
  """``(train, valid, test)`` row indices: the held-out fractions drawn by
  ``seed`` from the training rows (only for the splits not given)."""
  order = np.random.default_rng([seed, 7]).permutation(count)
  sizes = {'valid': int(round(valid_fraction * count)) if need_valid else 0,
           'test': int(round(test_fraction * count)) if need_test else 0}
  for name, needed in (('valid', need_valid), ('test', need_test)):
    if needed and sizes[name] < 1:
      raise DataError(
          f'SequenceTask.{name}_fraction of {count} training sequences holds '
          f'none out: give {name} arrays or a larger fraction')
  if sizes['valid'] + sizes['test'] >= count:
    raise DataError(f'SequenceTask holds out {sizes["valid"]} + {sizes["test"]} '
                    f'of {count} sequences, leaving none to train on: give '
                    'smaller fractions or more data')
  valid = order[:sizes['valid']]
  test = order[sizes['valid']:sizes['valid'] + sizes['test']]
  train = order[sizes['valid'] + sizes['test']:]
  return np.sort(train), np.sort(valid), np.sort(test)


def pad(sequences: List[np.ndarray], fill, dtype) -> np.ndarray:
  """``[B, max length, ...]`` with ``fill`` after each sequence's end."""
  longest = max(len(x) for x in sequences)
  shape = (len(sequences), longest) + sequences[0].shape[1:]
  padded = np.full(shape, fill, dtype)
  for row, x in enumerate(sequences):
    padded[row, :len(x)] = x
  return padded

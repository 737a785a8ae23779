"""Labelled sequences from arrays, an ``.npz`` file or a ``tf.data.Dataset``, checked.

``SequenceTask`` (``tfcredit.tasks.sequences``) reads its splits through
``read_npz``, ``from_arrays`` and ``from_dataset``: every split becomes a ``Split``
of per-sequence arrays (inputs ``[T_i]`` token ids or ``[T_i, D]`` features,
targets ``[]``/``[C]`` per sequence or ``[T_i]``/``[T_i, C]`` per step), whatever
the source was, then passes ``check_split`` and ``check_targets``: a failure names
the array as the ``.npz`` file does (``inputs``, ``valid_targets``) and the row as
given.
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
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):  # One array (.npy).
      raise ValueError('it holds one array, not named arrays')
    with data:
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


def name(where: str, key: str) -> str:
  """The array ``key`` of split ``where`` as the ``.npz`` file names it
  (``inputs``, ``valid_targets``)."""
  return key if where == 'train' else f'{where}_{key}'


def from_arrays(inputs: Any, targets: Any, lengths: Any, where: str,
                per_step: Optional[bool] = None) -> Split:
  """A split from padded arrays with optional lengths, or from lists of arrays;
  ``per_step`` None: padded targets as long as the inputs' steps are per step."""
  inputs_name, targets_name = name(where, 'inputs'), name(where, 'targets')
  if targets is None:
    raise DataError(f'{inputs_name} is given without {targets_name}: give one '
                    'target (or target row) per sequence')
  if isinstance(inputs, (list, tuple)):
    if lengths is not None:
      raise ConfigurationError(
          f'{name(where, "lengths")} is given with a list of sequences, which '
          'have their own lengths: leave the lengths out')
    return Split([np.asarray(x) for x in inputs], [np.asarray(y) for y in targets])
  inputs, targets = np.asarray(inputs), np.asarray(targets)
  if inputs.ndim < 2:
    raise DataError(f'{inputs_name} must be [sequences, steps] or [sequences, '
                    f'steps, features]; got shape {inputs.shape}')
  count, steps = inputs.shape[:2]
  if targets.ndim < 1 or len(targets) != count:
    raise DataError(f'{targets_name} has {len(targets) if targets.ndim else 0} '
                    f'rows but {inputs_name} has {count}: give one target row per '
                    'sequence')
  lengths = _lengths(lengths, count, steps, where)
  if per_step is None:
    per_step = targets.ndim >= 2 and targets.shape[1] == steps
  return Split([inputs[i, :n] for i, n in enumerate(lengths)],
               [targets[i, :n] if per_step else targets[i]
                for i, n in enumerate(lengths)])


def _lengths(lengths: Any, count: int, steps: int, where: str) -> np.ndarray:
  """``lengths`` (default all ``steps``), checked: ``count`` integers in
  ``[1, steps]``."""
  lengths_name = name(where, 'lengths')
  if lengths is None:
    return np.full(count, steps)
  lengths = np.asarray(lengths)
  if lengths.shape != (count,) or not np.issubdtype(lengths.dtype, np.integer):
    raise DataError(f'{lengths_name} must be {count} integers (one per '
                    f'sequence); got shape {lengths.shape}, dtype {lengths.dtype}')
  bad = np.flatnonzero((lengths < 1) | (lengths > steps))
  if bad.size:
    raise DataError(
        f'{lengths_name}[{bad[0]}] = {lengths[bad[0]]} is outside [1, {steps}] '
        f'(the padded length of {name(where, "inputs")}): every length counts '
        'real steps')
  return lengths


def check_split(split: Split, where: str, token_inputs: bool,
                num_classes: Optional[int], input_vocab_size: Optional[int]) -> None:
  """Refuses empty splits, non-finite values and out-of-range ids or labels."""
  inputs_name, targets_name = name(where, 'inputs'), name(where, 'targets')
  if not split.inputs:
    raise DataError(f'{inputs_name} has no sequences; give at least one')
  if len(split.targets) != len(split.inputs):
    raise DataError(f'{inputs_name} has {len(split.inputs)} sequences but '
                    f'{targets_name} has {len(split.targets)}: give one target '
                    'per sequence')
  for row, (x, y) in enumerate(zip(split.inputs, split.targets)):
    if len(x) < 1:
      raise DataError(f'{inputs_name}[{row}] is empty; every sequence needs '
                      'at least one step')
    _check_values(x, f'{inputs_name}[{row}]', token_inputs, input_vocab_size)
    _check_values(y, f'{targets_name}[{row}]', num_classes is not None,
                  num_classes)


def check_targets(split: Split, where: str, readout: str, given: bool) -> None:
  """Refuses targets that do not fit ``readout``: per step, one target per step;
  terminal, one shape for every sequence. A ``ConfigurationError`` when the
  readout was ``given`` (a setting), else a ``DataError``."""
  first = np.shape(split.targets[0])
  for row, (x, y) in enumerate(zip(split.inputs, split.targets)):
    if readout == 'per_step' and not (np.ndim(y) >= 1 and len(y) == len(x)):
      expected = f'a first axis of {len(x)} steps, one target per step'
    elif readout == 'terminal' and np.shape(y) != first:
      expected = f"the shape {first} of the first sequence's target"
    else:
      continue
    if given:
      raise ConfigurationError(
          f'SequenceTask.readout={readout!r} does not fit {name(where, "targets")}'
          f'[{row}] of shape {np.shape(y)}: it needs {expected}; give targets '
          'that fit or another readout')
    raise DataError(
        f'{name(where, "targets")}[{row}] has shape {np.shape(y)}, but the '
        f'{readout!r} readout inferred from the training targets needs '
        f'{expected}: give targets that fit or set SequenceTask.readout')


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
  fractions = {'valid': valid_fraction, 'test': test_fraction}
  for key, needed in (('valid', need_valid), ('test', need_test)):
    if needed and sizes[key] < 1:
      raise DataError(
          f'SequenceTask.{key}_fraction={fractions[key]!r} of {count} training '
          f'sequences holds none out: give {key} arrays or a larger fraction')
  if sizes['valid'] + sizes['test'] >= count:
    raise DataError(
        f'SequenceTask.valid_fraction={valid_fraction!r} and test_fraction='
        f'{test_fraction!r} hold out {sizes["valid"]} + {sizes["test"]} of '
        f'{count} sequences, leaving none to train on: give smaller fractions '
        'or more data')
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

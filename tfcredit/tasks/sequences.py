"""Your own labelled sequences: ``SequenceTask`` (episodic, variable lengths).

Sequences come from NumPy arrays (``inputs``, ``targets``, optional ``lengths``),
lists of per-sequence arrays, an ``.npz`` file (``path``: arrays ``inputs``,
``targets``, optional ``lengths``, and optionally ``valid_inputs``,
``valid_targets``, ``valid_lengths``, ``test_...``) or a ``tf.data.Dataset`` of
single ``(inputs, targets)`` sequences. Inputs are token ids (integers) or real
features; targets are one per sequence (read at the sequence's own last step) or
one per step; ``loss`` is ``'cross_entropy'`` (integer labels; metric
cross-entropy, with accuracy) or ``'mse'`` (metric MSE). Validation and test come
from their own arrays or, when absent, a held-out fraction of the training
sequences drawn by ``seed``.

Training batch ``i`` of epoch ``e`` is a fixed function of ``(seed, e, i)``: the
training sequences shuffled per epoch, so a resumed run continues where it
stopped. Sequences of different lengths are padded to their batch's longest in
the layout of ``tfcredit.masking``; when every sequence has one length nothing is
padded and the task is not ``masked`` (no model or method pays for masks).
"""

from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf

from tfcredit import config
from tfcredit import masking
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.tasks import base
from tfcredit.tasks import sequence_data as data_lib

LOSSES = ('cross_entropy', 'mse')
_READOUTS = (None, base.PER_STEP, base.TERMINAL)


@config.configurable
class SequenceTask(base.Task):
  """Labelled sequences of the user's own (see the module docstring)."""

  regime = base.EPISODIC
  seeded_by_run = True  # ``seed`` is ``train.seed`` unless bound.

  def __init__(self, *, path: Optional[str] = None, inputs: Any = None,
               targets: Any = None, lengths: Any = None,
               dataset: Optional[tf.data.Dataset] = None,
               valid: Any = None, test: Any = None,
               loss: str = 'cross_entropy', readout: Optional[str] = None,
               num_classes: Optional[int] = None,
               input_vocab_size: Optional[int] = None,
               valid_fraction: float = 0.1, test_fraction: float = 0.1,
               seed: int = 0, name: str = 'sequences', data_dir: Optional[str] = None):
    """Args:
      path: an ``.npz`` file (see the module docstring); or give
      inputs, targets, lengths: ``[N, T]`` ids or ``[N, T(, D)]`` features padded
        to ``T`` with ``lengths`` (default all ``T``), or lists of ``N`` arrays;
        targets ``[N(, C)]`` per sequence or ``[N, T(, C)]`` per step; or
      dataset: a ``tf.data.Dataset`` of single ``(inputs, targets)`` sequences.
      valid, test: the split's own ``(inputs, targets[, lengths])`` or dataset;
        None: held out of the training sequences.
      loss: ``'cross_entropy'`` or ``'mse'``.
      readout: ``'per_step'`` or ``'terminal'``; None infers it (targets with a
        step axis as long as the inputs' are per step).
      num_classes, input_vocab_size: inferred from the training data if None.
      valid_fraction, test_fraction: the held-out shares when a split is absent.
      seed: draws the held-out rows and each epoch's order; built by the
        trainer from a class, ``train.seed`` unless ``SequenceTask.seed`` (or a
        partial) binds one.
      name: the task's name in logs and exports.
      data_dir: unused (run plumbing).
    """
    del data_dir
    self.loss = validation.one_of('SequenceTask.loss', loss, LOSSES)
    validation.one_of('SequenceTask.readout', readout, _READOUTS)
    self.seed = validation.integer('SequenceTask.seed', seed, 0)
    self.name, self.path = str(name), path
    self._readout_given = readout
    train = self._source(path, inputs, targets, lengths, dataset)
    self.readout = readout or _infer_readout(train)
    self.token_inputs = np.issubdtype(train.inputs[0].dtype, np.integer)
    classes = self.loss == 'cross_entropy'
    self.num_classes = _size('num_classes', num_classes, train.targets
                             ) if classes else None
    self.input_vocab_size = _size('input_vocab_size', input_vocab_size,
                                  train.inputs) if self.token_inputs else None
    # Checked whole, before any row is held out: a message names the row given.
    self._check(train, 'train')
    splits = self._held_out(train, valid, test, valid_fraction, test_fraction)
    self._splits = splits
    self.metric_name = 'cross_entropy' if classes else 'mse'
    self.masked = any(len(set(s.lengths)) > 1 for s in splits.values())
    self.episode_steps = int(splits['train'].lengths.max())

  # ------------------------------------------------------------------ sources
  def _source(self, path, inputs, targets, lengths, dataset) -> data_lib.Split:
    given = [name for name, value in (('path', path), ('inputs', inputs),
                                      ('dataset', dataset)) if value is not None]
    if len(given) != 1:
      raise ConfigurationError(
          f'SequenceTask needs exactly one of path, inputs (with targets) and '
          f'dataset; got {given or "none"}')
    if dataset is not None:
      return data_lib.from_dataset(dataset, 'SequenceTask.dataset')
    if path is not None:
      self._npz = data_lib.read_npz(path)
      return data_lib.from_arrays(self._npz['inputs'], self._npz['targets'],
                                  self._npz.get('lengths'), 'train',
                                  self._per_step_given())
    if targets is None:
      raise ConfigurationError('SequenceTask.inputs needs SequenceTask.targets: '
                               'give one target (or target row) per sequence')
    return data_lib.from_arrays(inputs, targets, lengths, 'train',
                                self._per_step_given())

  def _per_step_given(self) -> Optional[bool]:
    if self._readout_given is None:
      return None
    return self._readout_given == base.PER_STEP

  def _check(self, split: data_lib.Split, split_name: str) -> data_lib.Split:
    """``split`` after the checks of its values and of its targets' readout."""
    data_lib.check_split(split, split_name, self.token_inputs, self.num_classes,
                         self.input_vocab_size)
    data_lib.check_targets(split, split_name, self.readout,
                           self._readout_given is not None)
    return split

  def _given(self, split_name: str, value) -> Optional[data_lib.Split]:
    if value is None and self.path is not None and (
        f'{split_name}_inputs' in self._npz):
      value = tuple(self._npz.get(f'{split_name}_{key}')
                    for key in ('inputs', 'targets', 'lengths'))
    if value is None:
      return None
    if isinstance(value, tf.data.Dataset):
      return self._check(
          data_lib.from_dataset(value, f'SequenceTask.{split_name}'), split_name)
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
      raise ConfigurationError(
          f'SequenceTask.{split_name} must be (inputs, targets[, lengths]) or a '
          f'tf.data.Dataset; got {type(value).__name__}')
    return self._check(data_lib.from_arrays(
        value[0], value[1], value[2] if len(value) == 3 else None, split_name,
        self.readout == base.PER_STEP), split_name)

  def _held_out(self, train, valid, test, valid_fraction, test_fraction):
    splits = {'valid': self._given('valid', valid),
              'test': self._given('test', test)}
    fractions = {'valid': valid_fraction, 'test': test_fraction}
    for key, fraction in fractions.items():
      if splits[key] is None and not 0.0 < validation.number(
          f'SequenceTask.{key}_fraction', fraction) < 1.0:
        raise ConfigurationError(
            f'SequenceTask.{key}_fraction must be in (0, 1) when no {key} split '
            f'is given, got {fraction!r}')
    held = sum(f for key, f in fractions.items() if splits[key] is None)
    if held >= 1.0:
      raise ConfigurationError(
          f'SequenceTask.valid_fraction={valid_fraction!r} and test_fraction='
          f'{test_fraction!r} hold out {held:g} of the sequences, leaving none to '
          'train on: make them sum to less than 1')
    rows = data_lib.split_rows(len(train.inputs), valid_fraction, test_fraction,
                               self.seed, splits['valid'] is None,
                               splits['test'] is None)
    for key, held in zip(('valid', 'test'), rows[1:]):
      if splits[key] is None:
        splits[key] = train.take(held)
    splits['train'] = train.take(rows[0])
    return splits

  # ---------------------------------------------------------------- contract
  def model_spec(self) -> Dict[str, Any]:
    spec = {'output_dim': self._output_dim(), 'readout': self.readout}
    if self.token_inputs:
      spec['input_vocab_size'] = self.input_vocab_size
    else:
      first = self._splits['train'].inputs[0]
      spec['input_dim'] = 1 if first.ndim == 1 else int(first.shape[-1])
    if self.masked:
      spec['masked'] = True
    return spec

  def _output_dim(self) -> int:
    if self.num_classes is not None:
      return self.num_classes
    target = self._splits['train'].targets[0]
    per_step = self.readout == base.PER_STEP
    return 1 if target.ndim == int(per_step) else int(target.shape[-1])

  def segment_spec(self):
    per_step = self.readout == base.PER_STEP
    if self.token_inputs:
      inputs = tf.TensorSpec([None, None], tf.int32, name='inputs')
    else:
      inputs = tf.TensorSpec([None, None, self.model_spec()['input_dim']],
                             tf.float32, name='inputs')
    if self.num_classes is not None:
      shape = [None, None] if per_step else [None]
      targets = tf.TensorSpec(shape, tf.int32, name='targets')
    else:
      shape = [None, None, self._output_dim()] if per_step else [
          None, self._output_dim()]
      targets = tf.TensorSpec(shape, tf.float32, name='targets')
    return inputs, targets

  def losses(self, outputs, targets):
    outputs = tf.cast(outputs, tf.float32)
    classes = self.num_classes is not None
    if self.readout == base.PER_STEP and self.masked:
      mask = masking.target_mask(targets, classes)
      targets = tf.where(mask if classes else mask[..., None], targets,
                         tf.zeros_like(targets))
      return tf.where(mask, self._losses(outputs, targets), 0.0)
    return self._losses(outputs, targets)

  def _losses(self, outputs, targets):
    if self.num_classes is not None:
      return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets,
                                                            logits=outputs)
    return tf.reduce_mean(tf.square(outputs - targets), axis=-1)

  def count(self, targets):
    if self.readout == base.PER_STEP and self.masked:
      mask = masking.target_mask(targets, self.num_classes is not None)
      return tf.reduce_sum(tf.cast(mask, tf.float32))
    return super().count(targets)

  def extra_metrics(self, outputs, targets):
    if self.num_classes is None:
      return {}
    predictions = tf.argmax(outputs, axis=-1, output_type=tf.int32)
    correct = tf.cast(tf.equal(predictions, targets), tf.float32)
    if self.readout == base.PER_STEP and self.masked:
      correct *= tf.cast(targets >= 0, tf.float32)
    return {'accuracy': tf.reduce_sum(correct)}

  # --------------------------------------------------------------------- data
  def batches_per_epoch(self, split: str, batch_size: int) -> int:
    count = len(self._split(split).inputs)
    if split == 'train':
      return count // batch_size
    return -(-count // batch_size)  # Every sequence, the last batch smaller.

  def batch(self, split: str, epoch: int, index: int, batch_size: int):
    data = self._split(split)
    if split == 'train':
      order = np.random.default_rng([self.seed, 1, epoch]).permutation(
          len(data.inputs))
    else:
      order = np.arange(len(data.inputs))
    rows = order[index * batch_size:(index + 1) * batch_size]
    return self._padded(data.take(rows))

  def _padded(self, split: data_lib.Split):
    inputs = data_lib.pad(split.inputs, masking.PAD_ID if self.token_inputs
                          else np.nan, np.int32 if self.token_inputs else np.float32)
    if not self.token_inputs and inputs.ndim == 2:
      inputs = inputs[..., None]
    classes = self.num_classes is not None
    dtype = np.int32 if classes else np.float32
    if self.readout == base.TERMINAL:
      targets = np.stack(split.targets).astype(dtype)
      return inputs, (targets if classes else targets.reshape(len(targets), -1))
    targets = data_lib.pad(split.targets, masking.PAD_ID if classes else np.nan,
                           dtype)
    if not classes and targets.ndim == 2:
      targets = targets[..., None]
    return inputs, targets

  def _split(self, split: str) -> data_lib.Split:
    validation.one_of('split', split, data_lib.SPLITS)
    return self._splits[split]

  def get_config(self) -> Dict[str, Any]:
    config = {'loss': self.loss, 'readout': self.readout, 'seed': self.seed,
              'name': self.name, 'num_classes': self.num_classes,
              'input_vocab_size': self.input_vocab_size}
    if self.path is not None:
      config['path'] = self.path
    return config


def _infer_readout(train: data_lib.Split) -> str:
  """Per step when every sequence's targets run along its steps (a sequence of
  one step among longer ones too); terminal when every sequence has one step."""
  per_step = all(np.ndim(y) >= 1 and len(y) == len(x)
                 for x, y in zip(train.inputs, train.targets))
  longer = any(len(x) > 1 for x in train.inputs)
  return base.PER_STEP if per_step and longer else base.TERMINAL


def _size(name: str, given: Optional[int], arrays) -> int:
  """``given``, else one more than the largest id in ``arrays`` (arrays that
  hold no integers are left to ``check_split`` to refuse)."""
  if given is not None:
    return validation.positive_int(f'SequenceTask.{name}', given)
  largest = max(int(np.max(a)) if np.size(a) and np.issubdtype(
      np.asarray(a).dtype, np.integer) else 0 for a in arrays)
  return largest + 1

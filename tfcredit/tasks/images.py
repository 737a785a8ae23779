"""Sequential-image classification: pixel MNIST, permuted MNIST, pixel CIFAR-10.

The setting of Kag & Saligrama 2021 (appendix 6.1, after Le et al. 2015): an image
is flattened row by row into a sequence, one pixel per step for MNIST (784 steps
of 1 value) and one pixel of 3 channels per step for CIFAR-10 (1024 steps of 3
values); permuted MNIST applies one fixed permutation of the 784 steps to every
image. The class is predicted from the last step (terminal readout), with a
cross-entropy loss; evaluation also reports the accuracy.

Data. ``source='auto'`` reads through tensorflow-datasets when its prepared copy of
the dataset exists (``tfds_data_dir``; nothing is downloaded by that path), and
otherwise from the files under the data directory: the four IDX files of
``mnist/`` (gzipped or not; their decompressed content is verified against the
official sha256, and they are downloaded from the canonical mirror when absent), or
the CIFAR-10 python batches in ``cifar10/`` (``data_batch_1..5`` and
``test_batch``, directly or in ``cifar-10-batches-py/``).

Splits. ``validation_fraction`` (10% in the paper) of the training images is held
out as the validation split: a fixed draw from ``split_seed``, the same in every
run. ``test`` is the official test set.

The permutation is drawn from ``permutation_seed`` and is part of the task's
configuration (``get_config`` returns the permutation itself), so the export's
``task.json`` rebuilds exactly the same task for evaluation.

Training batch ``i`` of epoch ``e`` comes from a shuffle of the training split
keyed by ``(split_seed, e)``: every method sees the same data in the same order,
and a resumed run sees what an uninterrupted one would.
"""

import gzip
import hashlib
import os
import pathlib
import pickle
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfcredit import config
from tfcredit import validation
from tfcredit.errors import ConfigurationError, DataError
from tfcredit.tasks import base
from tfcredit.tasks import storage

DATASETS = ('mnist', 'cifar10')
SOURCES = ('auto', 'files', 'tfds')
_SPLITS = ('train', 'valid', 'test')

# sha256 of the decompressed official IDX files.
MNIST_FILES = {
    'train_images': ('train-images-idx3-ubyte',
                     'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db'),
    'train_labels': ('train-labels-idx1-ubyte',
                     '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5'),
    'test_images': ('t10k-images-idx3-ubyte',
                    '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7'),
    'test_labels': ('t10k-labels-idx1-ubyte',
                    'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2'),
}
MNIST_URL = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
CIFAR10_TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
CIFAR10_TEST_BATCH = 'test_batch'

# Per-channel mean and standard deviation of the training pixels in [0, 1].
_NORMALIZATION = {'mnist': ((0.1307,), (0.3081,)),
                  'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}
_SHAPES = {'mnist': (784, 1), 'cifar10': (1024, 3)}

_CACHE: Dict[Tuple[str, str, str], Dict[str, np.ndarray]] = {}


# ------------------------------------------------------------------ readers
def _open_maybe_gzipped(folder: pathlib.Path, name: str):
  for candidate, opener in ((folder / name, open),
                            (folder / (name + '.gz'), gzip.open)):
    if candidate.is_file():
      return candidate, opener(candidate, 'rb')
  return None, None


def read_idx(data: bytes, path: str) -> np.ndarray:
  """Parses an IDX file (unsigned bytes) into an array of its dimensions."""
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise DataError(f'{path} is not an IDX file of unsigned bytes (magic '
                    f'{data[:4].hex() if data else "empty"}): replace it with the '
                    f'official file from {MNIST_URL}')
  rank = data[3]
  header = 4 + 4 * rank
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(rank))
  if len(data) != header + int(np.prod(dims)):
    raise DataError(f'{path} is truncated or malformed: its header announces '
                    f'{dims} bytes of data but the file holds {len(data) - header}; '
                    f'replace it with the official file from {MNIST_URL}')
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_mnist_files(folder: pathlib.Path, verify: bool = True
                     ) -> Dict[str, np.ndarray]:
  """The MNIST IDX files of ``folder`` (gzipped or not) as uint8 arrays.

  Absent files are downloaded (gzipped) from the canonical mirror first.

  Raises:
    DataError: a file is absent and cannot be downloaded, malformed, or its
      decompressed content differs from the official one.
  """
  missing = [name + '.gz' for name, _ in MNIST_FILES.values()
             if _open_maybe_gzipped(folder, name)[0] is None]
  if missing:
    storage.ensure_files(folder, [storage.FileSpec(name, None, MNIST_URL + name)
                                  for name in missing])
  arrays = {}
  for key, (name, digest) in MNIST_FILES.items():
    path, handle = _open_maybe_gzipped(folder, name)
    with handle:
      data = handle.read()
    if verify and hashlib.sha256(data).hexdigest() != digest:
      raise DataError(
          f'{path}: the decompressed content has sha256 '
          f'{hashlib.sha256(data).hexdigest()}, not the official {digest}; the file '
          f'is corrupt or another version: delete it (it is downloaded again from '
          f'{MNIST_URL}) or replace it')
    arrays[key] = read_idx(data, str(path))
  for split in ('train', 'test'):
    images, labels = arrays[f'{split}_images'], arrays[f'{split}_labels']
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(labels) != len(images):
      raise DataError(f'MNIST {split} files in {folder} hold images {images.shape} '
                      f'and labels {labels.shape}: expected [N, 28, 28] and [N]')
  return {'train_images': arrays['train_images'].reshape(-1, 784, 1),
          'train_labels': arrays['train_labels'].astype(np.int32),
          'test_images': arrays['test_images'].reshape(-1, 784, 1),
          'test_labels': arrays['test_labels'].astype(np.int32)}


def _read_cifar_batch(path: pathlib.Path) -> Tuple[np.ndarray, np.ndarray]:
  try:
    with open(path, 'rb') as f:
      batch = pickle.load(f, encoding='bytes')
    data = np.asarray(batch[b'data'], np.uint8)
    labels = np.asarray(batch[b'labels'], np.int32)
  except (OSError, pickle.UnpicklingError, KeyError, TypeError, ValueError,
          EOFError) as error:
    raise DataError(f'{path} is not a CIFAR-10 python batch ({error}): replace it '
                    f'with the file from {CIFAR10_URL}') from None
  if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
    raise DataError(f'{path} holds data {data.shape} and labels {labels.shape}: '
                    'expected [N, 3072] and [N]')
  # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major.
  return data.reshape(-1, 3, 1024).transpose(0, 2, 1), labels


def load_cifar10_files(folder: pathlib.Path) -> Dict[str, np.ndarray]:
  """The CIFAR-10 python batches of ``folder`` as ``[N, 1024, 3]`` uint8 arrays.

  Raises:
    DataError: a batch file is absent (the message says where to put which files)
      or malformed.
  """
  for candidate in (folder, folder / 'cifar-10-batches-py'):
    if (candidate / CIFAR10_TEST_BATCH).is_file():
      folder = candidate
      break
  names = CIFAR10_TRAIN_BATCHES + (CIFAR10_TEST_BATCH,)
  missing = [name for name in names if not (folder / name).is_file()]
  if missing:
    raise DataError(
        f'CIFAR-10 files missing from {folder}: {", ".join(missing)}. Download '
        f'{CIFAR10_URL} and extract its cifar-10-batches-py/ folder into '
        f'{folder.parent if folder.name == "cifar-10-batches-py" else folder}; '
        'pass --data_dir=<folder> or set TFCREDIT_DATA_DIR to use another data '
        'directory.')
  train = [_read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
  test_images, test_labels = _read_cifar_batch(folder / CIFAR10_TEST_BATCH)
  return {'train_images': np.concatenate([t[0] for t in train]),
          'train_labels': np.concatenate([t[1] for t in train]),
          'test_images': test_images, 'test_labels': test_labels}


def _tfds_arrays(dataset: str, tfds_data_dir: Optional[str]
                 ) -> Optional[Dict[str, np.ndarray]]:
  """The dataset from tensorflow-datasets if it is installed and prepared, else None."""
  try:
    import tensorflow_datasets as tfds  # Optional dependency.
  except ImportError:
    return None
  try:
    builder = tfds.builder(dataset, data_dir=tfds_data_dir)
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
      return None
    arrays = {}
    for split in ('train', 'test'):
      images, labels = tfds.as_numpy(builder.as_dataset(
          split=split, batch_size=-1, as_supervised=True, shuffle_files=False))
      height, width, channels = images.shape[1:]
      arrays[f'{split}_images'] = images.reshape(-1, height * width, channels)
      arrays[f'{split}_labels'] = labels.astype(np.int32)
    return arrays
  except Exception:  # pylint: disable=broad-except
    return None  # An unusable tfds copy: the files are the fallback.


def load_arrays(dataset: str, data_dir: Optional[str] = None, source: str = 'auto',
                tfds_data_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
  """Train and test images (``[N, steps, channels]`` uint8) and labels (int32).

  Cached per process, so tasks built again (tests, evaluation) read once.
  """
  folder = storage.resolve_data_dir(data_dir) / dataset
  key = (dataset, str(folder), source)
  if key not in _CACHE:
    arrays = None
    if source in ('auto', 'tfds'):
      arrays = _tfds_arrays(dataset, tfds_data_dir)
      if arrays is None and source == 'tfds':
        raise DataError(
            f'tensorflow-datasets has no prepared {dataset!r} in '
            f'{tfds_data_dir or "its default data directory"}: prepare it with '
            f'tfds.builder({dataset!r}).download_and_prepare(), or use source='
            "'files' (or 'auto')")
    if arrays is None:
      arrays = (load_mnist_files(folder) if dataset == 'mnist'
                else load_cifar10_files(folder))
    _CACHE[key] = arrays
  return _CACHE[key]


def draw_permutation(steps: int, seed: int) -> np.ndarray:
  """The fixed permutation of ``steps`` positions drawn from ``seed``."""
  return np.random.default_rng([seed, steps]).permutation(steps).astype(np.int64)


# -------------------------------------------------------------------- task
@config.configurable
class SequentialImageTask(base.Task):
  """Images as pixel sequences, classified at the last step (module docstring)."""

  regime = base.EPISODIC
  readout = base.TERMINAL
  metric_name = 'cross_entropy'
  num_classes = 10

  def __init__(self, *, dataset: str = 'mnist', permute: bool = False,
               permutation_seed: int = 0,
               permutation: Optional[Sequence[int]] = None,
               validation_fraction: float = 0.1, split_seed: int = 0,
               normalize: bool = True, data_dir: Optional[str] = None,
               source: str = 'auto', tfds_data_dir: Optional[str] = None):
    """Loads the data and fixes the splits and the permutation.

    Args:
      dataset: ``'mnist'`` (784 steps of 1 pixel) or ``'cifar10'`` (1024 steps of
        3 channels).
      permute: apply a fixed permutation to the steps (permuted MNIST).
      permutation_seed: seeds the permutation when ``permutation`` is None.
      permutation: the permutation itself (what ``get_config`` saves); overrides
        the seed.
      validation_fraction: share of the training images held out for validation,
        in (0, 1); the paper holds out 10%.
      split_seed: seeds the held-out draw and the per-epoch shuffles.
      normalize: scale pixels to [0, 1] and standardise each channel with the
        training set's mean and deviation.
      data_dir: the data directory (``mnist/``, ``cifar10/`` under it).
      source: ``'auto'`` (tensorflow-datasets if prepared, else files),
        ``'files'`` or ``'tfds'``.
      tfds_data_dir: where tensorflow-datasets keeps prepared data (its default
        if None).

    Raises:
      ConfigurationError: an argument is out of range.
      DataError: the data is missing or corrupt.
    """
    validation.one_of('SequentialImageTask.dataset', dataset, DATASETS)
    validation.one_of('SequentialImageTask.source', source, SOURCES)
    if not isinstance(validation_fraction, (int, float)) or not (
        0.0 < validation_fraction < 1.0):
      raise ConfigurationError(
          'SequentialImageTask.validation_fraction must be in (0, 1), got '
          f'{validation_fraction!r}: the paper holds out 0.1')
    self.dataset = dataset
    self.name = f'{"permuted" if permute else "pixel"}_{dataset}'
    self.sequence_steps, self.channels = _SHAPES[dataset]
    self.permute = bool(permute)
    self.permutation_seed = int(permutation_seed)
    self.validation_fraction = float(validation_fraction)
    self.split_seed = int(split_seed)
    self.normalize = bool(normalize)
    self.source = source
    self.permutation = None
    if self.permute:
      if permutation is None:
        permutation = draw_permutation(self.sequence_steps, self.permutation_seed)
      permutation = np.asarray(permutation, np.int64)
      if sorted(permutation.tolist()) != list(range(self.sequence_steps)):
        raise ConfigurationError(
            f'SequentialImageTask.permutation must be a permutation of '
            f'0..{self.sequence_steps - 1}; leave it None to draw one from '
            'permutation_seed')
      self.permutation = permutation
    arrays = load_arrays(dataset, data_dir, source, tfds_data_dir)
    train_count = len(arrays['train_images'])
    held_out = int(round(self.validation_fraction * train_count))
    order = np.random.default_rng([self.split_seed, 0]).permutation(train_count)
    self._indices = {'train': np.sort(order[held_out:]),
                     'valid': np.sort(order[:held_out]),
                     'test': np.arange(len(arrays['test_images']))}
    self._images = {'train': arrays['train_images'], 'valid': arrays['train_images'],
                    'test': arrays['test_images']}
    self._labels = {'train': arrays['train_labels'], 'valid': arrays['train_labels'],
                    'test': arrays['test_labels']}
    mean, std = _NORMALIZATION[dataset]
    self._mean = np.asarray(mean, np.float32)
    self._std = np.asarray(std, np.float32)

  # ----------------------------------------------------------------- model I/O
  def model_spec(self) -> Dict[str, Any]:
    return {'input_dim': self.channels, 'output_dim': self.num_classes,
            'readout': self.readout}

  def segment_spec(self):
    return (tf.TensorSpec([None, None, self.channels], tf.float32, name='inputs'),
            tf.TensorSpec([None], tf.int32, name='targets'))

  def losses(self, outputs, targets):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.int32), logits=outputs)

  def extra_metrics(self, outputs, targets):
    predictions = tf.argmax(outputs, axis=-1, output_type=tf.int32)
    correct = tf.cast(tf.equal(predictions, tf.cast(targets, tf.int32)), tf.float32)
    return {'accuracy': tf.reduce_sum(correct)}

  # ---------------------------------------------------------------------- data
  def split_size(self, split: str) -> int:
    """Images in ``split``."""
    return len(self._split_indices(split))

  def _split_indices(self, split: str) -> np.ndarray:
    validation.one_of('split', split, _SPLITS)
    return self._indices[split]

  def batches_per_epoch(self, split: str, batch_size: int) -> int:
    size = self.split_size(split)
    if split == 'train':  # Whole batches only: one trace, one batch size.
      return size // batch_size
    return -(-size // batch_size)  # Evaluation covers every image.

  def sequences(self, images: np.ndarray) -> np.ndarray:
    """``[N, steps, channels]`` uint8 images as the model's float inputs."""
    inputs = images.astype(np.float32)
    if self.normalize:
      inputs = (inputs / 255.0 - self._mean) / self._std
    if self.permutation is not None:
      inputs = inputs[:, self.permutation]
    return inputs

  def batch(self, split: str, epoch: int, index: int, batch_size: int):
    indices = self._split_indices(split)
    if split == 'train':
      order = np.random.default_rng([self.split_seed, 1, epoch]).permutation(
          len(indices))
      chosen = indices[order[index * batch_size:(index + 1) * batch_size]]
    else:
      chosen = indices[index * batch_size:(index + 1) * batch_size]
    return (self.sequences(self._images[split][chosen]),
            self._labels[split][chosen].astype(np.int32))

  def get_config(self) -> Dict[str, Any]:
    return {'dataset': self.dataset, 'permute': self.permute,
            'permutation_seed': self.permutation_seed,
            'permutation': (None if self.permutation is None
                            else self.permutation.tolist()),
            'validation_fraction': self.validation_fraction,
            'split_seed': self.split_seed, 'normalize': self.normalize,
            'source': self.source}

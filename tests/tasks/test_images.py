"""Tests of tfcredit.tasks.images: real MNIST (from $TFCREDIT_DATA_DIR), readers on made files."""

import gzip
import os
import pathlib
import pickle

import numpy as np
import pytest
import tensorflow as tf

from tfcredit import evaluation
from tfcredit.errors import ConfigurationError, DataError
from tfcredit.tasks import images
from tfcredit.tasks.images import SequentialImageTask

# Real data only through TFCREDIT_DATA_DIR; without it the MNIST tests skip.
SHARED = pathlib.Path(os.environ.get('TFCREDIT_DATA_DIR', ''))
needs_mnist = pytest.mark.skipif(
    not os.environ.get('TFCREDIT_DATA_DIR')
    or not (SHARED / 'mnist' / 't10k-labels-idx1-ubyte.gz').is_file(),
    reason='real MNIST: set TFCREDIT_DATA_DIR to a folder holding '
           f'mnist/t10k-labels-idx1-ubyte.gz ... (now {os.environ.get("TFCREDIT_DATA_DIR")!r})')


@pytest.fixture(scope='module')
def mnist():
  return SequentialImageTask(dataset='mnist', data_dir=str(SHARED), source='files')


@needs_mnist
def test_pixel_mnist_statistics(mnist):
  arrays = images.load_arrays('mnist', str(SHARED), 'files')
  assert arrays['train_images'].shape == (60_000, 784, 1)
  assert arrays['test_images'].shape == (10_000, 784, 1)
  assert arrays['train_images'].mean() / 255 == pytest.approx(0.1307, abs=1e-4)
  assert np.bincount(arrays['test_labels']).tolist()[:2] == [980, 1135]
  # 10% of the training images held out, disjoint, together all of them.
  assert (mnist.split_size('train'), mnist.split_size('valid'),
          mnist.split_size('test')) == (54_000, 6_000, 10_000)
  train, valid = mnist._split_indices('train'), mnist._split_indices('valid')
  assert not np.intersect1d(train, valid).size
  assert len(np.union1d(train, valid)) == 60_000
  inputs, labels = mnist.batch('train', 0, 0, 32)
  assert inputs.shape == (32, 784, 1) and inputs.dtype == np.float32
  assert labels.dtype == np.int32 and set(labels) <= set(range(10))
  assert mnist.model_spec() == {'input_dim': 1, 'output_dim': 10,
                                'readout': 'terminal'}
  assert mnist.batches_per_epoch('train', 100) == 540
  assert mnist.batches_per_epoch('valid', 1000) == 6


@needs_mnist
def test_permutation_is_fixed_by_the_seed_and_rebuilt_from_the_export_config(mnist):
  first = SequentialImageTask(dataset='mnist', permute=True, permutation_seed=7,
                              data_dir=str(SHARED), source='files')
  again = SequentialImageTask(dataset='mnist', permute=True, permutation_seed=7,
                              data_dir=str(SHARED), source='files')
  other = SequentialImageTask(dataset='mnist', permute=True, permutation_seed=8,
                              data_dir=str(SHARED), source='files')
  np.testing.assert_array_equal(first.permutation, again.permutation)
  assert sorted(first.permutation) == list(range(784))
  assert (first.permutation != other.permutation).mean() > 0.9
  assert (first.permutation != np.arange(784)).mean() > 0.9
  pixels, labels = mnist.batch('test', 0, 0, 16)
  permuted, permuted_labels = first.batch('test', 0, 0, 16)
  np.testing.assert_array_equal(permuted, pixels[:, first.permutation])
  np.testing.assert_array_equal(permuted_labels, labels)
  # The export's task.json holds the permutation itself: evaluation rebuilds it.
  info = {'task_class': 'tfcredit.tasks.images.SequentialImageTask',
          'task_config': first.get_config()}
  rebuilt = evaluation.task_from_info(info, data_dir=str(SHARED))
  np.testing.assert_array_equal(rebuilt.permutation, first.permutation)
  np.testing.assert_array_equal(rebuilt.batch('valid', 0, 3, 8)[0],
                                first.batch('valid', 0, 3, 8)[0])


@needs_mnist
def test_training_order_is_a_seeded_shuffle_per_epoch(mnist):
  a = mnist.batch('train', 0, 5, 64)[1]
  np.testing.assert_array_equal(a, mnist.batch('train', 0, 5, 64)[1])
  assert not np.array_equal(a, mnist.batch('train', 1, 5, 64)[1])
  np.testing.assert_array_equal(mnist.batch('valid', 0, 2, 64)[1],
                                mnist.batch('valid', 4, 2, 64)[1])


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def test_idx_reader_and_its_errors(tmp_path):
  images_array = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
  parsed = images.read_idx(_idx(images_array), 'x')
  np.testing.assert_array_equal(parsed, images_array)
  with pytest.raises(DataError, match='truncated'):
    images.read_idx(_idx(images_array)[:-5], 'x')
  with pytest.raises(DataError, match='not an IDX file'):
    images.read_idx(b'\x00\x00\x0d\x01\x00\x00\x00\x00', 'x')
  # Files in place but not the official content: a checksum error naming the file.
  folder = tmp_path / 'mnist'
  folder.mkdir()
  labels = np.arange(2) % 10
  for name, array in (('train-images-idx3-ubyte', images_array),
                      ('train-labels-idx1-ubyte', labels),
                      ('t10k-images-idx3-ubyte', images_array),
                      ('t10k-labels-idx1-ubyte', labels)):
    with gzip.open(folder / (name + '.gz'), 'wb') as f:
      f.write(_idx(array))
  with pytest.raises(DataError, match='train-images-idx3-ubyte.gz.*official'):
    images.load_mnist_files(folder)
  small = images.load_mnist_files(folder, verify=False)
  assert small['train_images'].shape == (2, 784, 1)
  np.testing.assert_array_equal(small['train_images'][1, :, 0],
                                images_array[1].reshape(-1))


def _write_cifar(folder: pathlib.Path, per_batch: int = 4):
  rng = np.random.default_rng(0)
  folder.mkdir(parents=True)
  written = {}
  for name in images.CIFAR10_TRAIN_BATCHES + (images.CIFAR10_TEST_BATCH,):
    data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=per_batch).tolist()
    with open(folder / name, 'wb') as f:
      pickle.dump({b'data': data, b'labels': labels, b'batch_label': name.encode()},
                  f)
    written[name] = (data, labels)
  return written


def test_cifar10_reader_on_python_batches(tmp_path):
  written = _write_cifar(tmp_path / 'cifar10' / 'cifar-10-batches-py')
  task = SequentialImageTask(dataset='cifar10', data_dir=str(tmp_path),
                             source='files', normalize=False)
  assert task.name == 'pixel_cifar10'
  assert task.model_spec()['input_dim'] == 3
  assert (task.split_size('train') + task.split_size('valid'),
          task.split_size('valid'), task.split_size('test')) == (20, 2, 4)
  inputs, labels = task.batch('test', 0, 0, 4)
  assert inputs.shape == (4, 1024, 3)
  data, expected_labels = written[images.CIFAR10_TEST_BATCH]
  # Step k of image i is pixel k's (red, green, blue): planes of 1024 in a row.
  for step in (0, 33, 1023):
    np.testing.assert_array_equal(
        inputs[1, step], [data[1, step], data[1, 1024 + step], data[1, 2048 + step]])
  np.testing.assert_array_equal(labels, expected_labels)


def test_missing_cifar10_is_a_data_error_saying_where(tmp_path):
  (tmp_path / 'cifar10').mkdir()
  with pytest.raises(DataError, match='data_batch_1.*cifar-10-python.tar.gz'):
    SequentialImageTask(dataset='cifar10', data_dir=str(tmp_path), source='files')


def test_tfds_source_without_prepared_data_is_a_data_error(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(DataError, match='no prepared'):
    images.load_arrays('cifar10', str(tmp_path), 'tfds',
                       tfds_data_dir=str(tmp_path / 'tfds'))


@pytest.mark.parametrize('kwargs,match', [
    (dict(dataset='svhn'), 'dataset'),
    (dict(source='web'), 'source'),
    (dict(validation_fraction=0.0), 'validation_fraction'),
])
def test_bad_settings(kwargs, match, tmp_path):
  with pytest.raises(ConfigurationError, match=match):
    SequentialImageTask(data_dir=str(tmp_path), **kwargs)


def test_losses_and_accuracy(tmp_path):
  _write_cifar(tmp_path / 'cifar10')
  task = SequentialImageTask(dataset='cifar10', data_dir=str(tmp_path),
                             source='files')
  logits = tf.constant([[2.0, 0.0] + [0.0] * 8, [0.0, 1.0] + [0.0] * 8])
  targets = tf.constant([0, 0])
  expected = [-np.log(np.exp(2) / (np.exp(2) + 9)), -np.log(1 / (np.e + 9))]
  np.testing.assert_allclose(task.losses(logits, targets), expected, rtol=1e-6)
  assert float(task.extra_metrics(logits, targets)['accuracy']) == 1.0

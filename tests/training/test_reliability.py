"""Runs that survive preemption, corruption and mistakes (docs/design.md, "Errors
and data safety"): the non-finite guard, SIGTERM, damaged checkpoints, a changed
configuration in a used model directory, and one-line errors with their exit
codes."""

import json
import os
import shutil
import signal
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.errors import TrainingError
from tfcredit.methods.base import NON_FINITE_METRIC
from tfcredit.testing import REPOSITORY, built_optimizer, run_tool, tiny_model

TINY = os.path.join(REPOSITORY, 'tfcredit', 'gin_configs', 'testing', 'tiny.gin')


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _configure(*bindings):
  gin.clear_config()
  tfcredit.config.parse([TINY], ['train.deterministic = True',
                                 'train.log_every_seconds = 1e9'] + list(bindings))


def _checkpoint_weights(path):
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name)
          for name, _ in tf.train.list_variables(path) if name.startswith('model/')}


def _latest_weights(model_dir):
  return _checkpoint_weights(
      tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints')))


def _assert_same_weights(a, b):
  assert a.keys() == b.keys() and a
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ------------------------------------------------------------ non-finite guard

def test_a_non_finite_window_is_never_applied():
  task = tfcredit.AddingTask(sequence_length=10, train_batches_per_epoch=2,
                             eval_batches=1)
  model = tiny_model(task)
  optimizer = built_optimizer(model, tf.keras.optimizers.Adam, 0.01)
  method = tfcredit.TruncatedBPTT(model=model, task=task, optimizer=optimizer,
                                  window=5, clip_norm=1.0)
  inputs, targets = task.batch('train', 0, 0, 4)
  state = model.initial_state(4)
  before = [v.numpy() for v in model.trainable_variables]
  slots = [v.numpy() for v in optimizer.variables]
  poisoned = (tf.constant(inputs), tf.constant(targets * np.nan))
  _, metrics = method.train_segment(poisoned, state)
  assert float(metrics[NON_FINITE_METRIC]) == 1.0
  for old, new in zip(before, model.trainable_variables):
    np.testing.assert_array_equal(old, new.numpy())
  for old, new in zip(slots, optimizer.variables):  # Adam's moments, iterations
    np.testing.assert_array_equal(old, new.numpy())
  _, metrics = method.train_segment((tf.constant(inputs), tf.constant(targets)),
                                    state)
  assert float(metrics[NON_FINITE_METRIC]) == 0.0
  assert any(np.any(old != new.numpy())
             for old, new in zip(before, model.trainable_variables))
  assert method.trace_counts['train_segment'] == 1


def test_non_finite_stop_keeps_a_checkpoint_that_resumes(tmp_path):
  model_dir = str(tmp_path / 'run')
  _configure('train.learning_rate = 1e30', 'train.checkpoint_every_calls = 1')
  with pytest.raises(TrainingError) as raised:
    tfcredit.train(model_dir, export_dir=None)
  assert 'training call 2' in str(raised.value)
  assert os.path.exists(os.path.join(model_dir, 'checkpoints', 'non_finite',
                                     'ckpt-1.index'))
  # A saner setting resumes from what was kept (here: from the beginning) and
  # ends where a run that never diverged ends.
  _configure('train.checkpoint_every_calls = 1')
  resumed = tfcredit.train(model_dir, export_dir=None)
  _configure('train.checkpoint_every_calls = 1')
  straight = tfcredit.train(str(tmp_path / 'straight'), export_dir=None)
  assert resumed['valid_loss'] == straight['valid_loss']
  _assert_same_weights(_latest_weights(model_dir),
                       _latest_weights(str(tmp_path / 'straight')))


class _NaNBatchTwoTask(tfcredit.AddingTask):
  """Training batch 2 of every epoch has NaN targets."""

  def batch(self, split, epoch, index, batch_size):
    inputs, targets = super().batch(split, epoch, index, batch_size)
    if split == 'train' and index == 2:
      targets = targets * np.nan
    return inputs, targets


def test_non_finite_skip_goes_on_and_counts(tmp_path, capsys):
  gin.external_configurable(_NaNBatchTwoTask, module='tests_reliability')
  _configure('train.task = @_NaNBatchTwoTask',
             '_NaNBatchTwoTask.sequence_length = 20',
             '_NaNBatchTwoTask.train_batches_per_epoch = 4',
             "train.on_non_finite = 'skip'")
  final = tfcredit.train(str(tmp_path / 'run'), export_dir=None)
  assert np.isfinite(final['valid_loss'])
  assert final['updates'] == 2 * 3  # 2 epochs of 4 calls, one window refused each
  assert capsys.readouterr().err.count('skipped 1 window') == 2
  for value in _latest_weights(str(tmp_path / 'run')).values():
    assert np.all(np.isfinite(value))

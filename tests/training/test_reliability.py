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

from checkout import REPOSITORY
import tfcredit
from tfcredit.errors import TrainingError
from tfcredit.metrics import NON_FINITE_METRIC
from tfcredit.testing import (TINY_CONFIG, built_optimizer, clean_gin,  # noqa: F401
                              configure_tiny, run_entry_point,
                              tiny_model)

TINY = TINY_CONFIG


pytestmark = pytest.mark.usefixtures('clean_gin')

_configure = configure_tiny


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


# ------------------------------------------------------------------- SIGTERM

_LONGER = ('--gin_bindings=AddingTask.train_batches_per_epoch = 12',
           '--gin_bindings=train.deterministic = True',
           '--gin_bindings=train.log_every_seconds = 0',
           '--gin_bindings=train.checkpoint_every_calls = 1000',
           '--export_dir=')


def _train_command(model_dir, *extra):
  return [sys.executable, os.path.join(REPOSITORY, 'tools', 'train.py'),
          f'--gin_file={TINY}', f'--model_dir={model_dir}', *_LONGER, *extra]


def _final(model_dir):
  with open(os.path.join(model_dir, 'final_metrics.json')) as f:
    final = json.load(f)
  final.pop('model_dir')
  return final


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """An uninterrupted run of the longer tiny config (the command, in this
  process: the interrupted runs it is compared with are separate processes)."""
  model_dir = str(tmp_path_factory.mktemp('straight') / 'run')
  code = run_entry_point('train', *_train_command(model_dir)[2:])
  assert code == 0
  return model_dir


def _interrupt(model_dir, signum):
  """Starts a run, sends ``signum`` at its first progress line; returns
  ``(exit code, stderr)``."""
  process = subprocess.Popen(_train_command(model_dir), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPOSITORY)
  for line in process.stdout:  # The first progress line: training has begun.
    if line.startswith('epoch 1/2'):
      process.send_signal(signum)
      break
  _, stderr = process.communicate(timeout=600)
  return process.returncode, stderr


@pytest.fixture(scope='module')
def sigterm_run(tmp_path_factory):
  """``(model_dir, exit code, stderr)`` of a run sent SIGTERM at its first
  progress line. Tests copy ``model_dir`` before they change anything in it."""
  model_dir = str(tmp_path_factory.mktemp('sigterm') / 'run')
  code, stderr = _interrupt(model_dir, signal.SIGTERM)
  return model_dir, code, stderr


@pytest.mark.slow  # A real process receives the signal.
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_call_with_a_checkpoint(request, tmp_path, signum):
  if signum == signal.SIGTERM:  # The run the rerun test resumes.
    model_dir, code, stderr = request.getfixturevalue('sigterm_run')
  else:
    model_dir = str(tmp_path / 'run')
    code, stderr = _interrupt(model_dir, signum)
  assert code == 128 + signum, stderr
  said = [line for line in stderr.splitlines() if line.startswith('interrupted')]
  assert len(said) == 1 and 'run the same command again' in said[0], stderr
  assert 'Traceback' not in stderr
  assert not os.path.exists(os.path.join(model_dir, 'final_metrics.json'))
  assert tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))


@pytest.mark.slow  # Resumes the process stopped by SIGTERM.
def test_the_rerun_after_sigterm_ends_identical(tmp_path, sigterm_run,
                                                straight_run, capfd):
  stopped, code, stderr = sigterm_run
  assert code == 143, stderr
  interrupted = str(tmp_path / 'interrupted')
  shutil.copytree(stopped, interrupted)
  # The checkpoint paths in the state file are relative, so the copy resumes.
  capfd.readouterr()
  code = run_entry_point('train', *_train_command(interrupted)[2:])
  out, err = capfd.readouterr()
  assert code == 0, err
  assert 'resumed from' in out
  assert _final(interrupted) == _final(straight_run)
  _assert_same_weights(_latest_weights(interrupted), _latest_weights(straight_run))


# ------------------------------------------------------- damaged checkpoints

@pytest.fixture(scope='module')
def three_checkpoints(tmp_path_factory):
  """A run stopped after 3 calls with ckpt-1, ckpt-2 and ckpt-3."""
  model_dir = str(tmp_path_factory.mktemp('three') / 'run')
  _configure('train.checkpoint_every_calls = 1')
  tfcredit.train(model_dir, export_dir=None, stop_after_calls=3)
  gin.clear_config()
  return model_dir


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _overwrite(path):
  size = os.path.getsize(path)
  with open(path, 'wb') as f:
    f.write(bytes(range(256)) * (size // 256) + b'\0' * (size % 256))


def _write(text):
  def damage(path):
    with open(path, 'w') as f:
      f.write(text)
  return damage


_DATA = 'ckpt-3.data-00000-of-00001'
# (file damaged, how, the checkpoint the rerun resumes from, words warned)
_DAMAGE = {
    'truncated data': (_DATA, _truncate, 'ckpt-2', 'ckpt-3 is damaged'),
    'overwritten data': (_DATA, _overwrite, 'ckpt-2', 'ckpt-3 is damaged'),
    'truncated index': ('ckpt-3.index', _truncate, 'ckpt-2', 'ckpt-3 is damaged'),
    'garbled state file': ('checkpoint', _write('model_checkpoint_path: {{'),
                           'ckpt-3', 'is unreadable'),
    'empty state file': ('checkpoint', _write(''), 'ckpt-3', 'is unreadable'),
    'deleted state file': ('checkpoint', os.remove, 'ckpt-3', 'is missing'),
}


@pytest.mark.parametrize('case', sorted(_DAMAGE))
def test_a_damaged_checkpoint_is_named_and_an_intact_one_used(
    tmp_path, three_checkpoints, capfd, case):
  name, damage, expected, warned = _DAMAGE[case]
  model_dir = str(tmp_path / 'run')
  shutil.copytree(three_checkpoints, model_dir)
  damage(os.path.join(model_dir, 'checkpoints', name))
  os.makedirs(os.path.join(model_dir, 'checkpoints', 'ckpt-4_temp'))  # A kill.
  capfd.readouterr()
  _configure('train.checkpoint_every_calls = 1')
  tfcredit.train(model_dir, export_dir=None, stop_after_calls=1)
  out, err = capfd.readouterr()
  assert f'resumed from {os.path.join(model_dir, "checkpoints", expected)} ' in out
  assert warned in err and 'warning:' in err
  assert not os.path.exists(os.path.join(model_dir, 'checkpoints', 'ckpt-4_temp'))
  # The intact checkpoints were kept, none rotated away unseen.
  intact = _checkpoint_weights(os.path.join(three_checkpoints, 'checkpoints',
                                            expected))
  _assert_same_weights(intact, _checkpoint_weights(
      os.path.join(model_dir, 'checkpoints', expected)))


def test_every_checkpoint_damaged_is_an_error_naming_the_directory(
    tmp_path, three_checkpoints):
  model_dir = str(tmp_path / 'run')
  shutil.copytree(three_checkpoints, model_dir)
  for number in (1, 2, 3):
    _truncate(os.path.join(model_dir, 'checkpoints',
                           f'ckpt-{number}.data-00000-of-00001'))
  _configure()
  with pytest.raises(TrainingError, match='every checkpoint in .*checkpoints is '
                     'damaged.*--overwrite'):
    tfcredit.train(model_dir, export_dir=None)


# --------------------------------------------- one configuration per directory

def _bindings_config(*bindings):
  _configure(*bindings)
  text = gin.config_str()
  gin.clear_config()
  return text


def test_changes_that_cannot_resume_are_refused_others_recorded(tmp_path):
  from tfcredit.training import run_directory
  model_dir = str(tmp_path / 'run')
  stored = _bindings_config()
  run_directory.prepare(model_dir, stored)
  os.makedirs(os.path.join(model_dir, 'checkpoints'))
  tf.train.Checkpoint(step=tf.Variable(1)).write(
      os.path.join(model_dir, 'checkpoints', 'ckpt-1'))
  for binding, words in [('RecurrentModel.units = 32', 'RecurrentModel.units: 16 -> 32'),
                         ("RecurrentModel.cell = 'gru'", "RecurrentModel.cell"),
                         ('train.optimizer = @keras.optimizers.SGD', 'train.optimizer'),
                         ('train.method = @ARTBP', 'train.method'),
                         ('AddingTask.sequence_length = 30', 'AddingTask.sequence_length'),
                         ('TruncatedBPTT.window = 4', 'TruncatedBPTT.window')]:
    with pytest.raises(tfcredit.ConfigurationError) as raised:
      run_directory.prepare(model_dir, _bindings_config(binding))
    assert words in str(raised.value) and '--overwrite' in str(raised.value)
    assert '--model_dir' in str(raised.value)
    with open(os.path.join(model_dir, 'config.gin')) as f:
      assert f.read() == stored  # Nothing written before the check.
  harmless = _bindings_config('train.epochs = 3', 'train.checkpoint_every_calls = 7',
                              'train.eval_batch_size = 4',
                              'train.learning_rate = 0.001',
                              'TruncatedBPTT.clip_norm = 1.0')
  allowed = run_directory.prepare(model_dir, harmless)
  assert len(allowed) == 5 and 'train.epochs: 2 -> 3' in allowed
  with open(os.path.join(model_dir, run_directory.CHANGES)) as f:
    assert 'train.epochs: 2 -> 3' in f.read()
  run_directory.prepare(model_dir, _bindings_config('RecurrentModel.units = 32'),
                        overwrite=True)
  assert not os.path.exists(os.path.join(model_dir, 'checkpoints'))


def test_the_command_refuses_another_model_in_a_used_directory(straight_run,
                                                               capfd):
  with open(os.path.join(straight_run, 'config.gin')) as f:
    stored = f.read()
  capfd.readouterr()
  code = run_entry_point('train', f'--gin_file={TINY}', f'--model_dir={straight_run}',
                         *_LONGER, '--gin_bindings=RecurrentModel.units = 32')
  err = capfd.readouterr().err
  assert code == 2, err
  assert 'RecurrentModel.units: 16 -> 32' in err
  with open(os.path.join(straight_run, 'config.gin')) as f:
    assert f.read() == stored


# ------------------------------------------------ bad inputs: one line, a code

def _bad_inputs(tmp_path):
  syntax = tmp_path / 'syntax.gin'
  syntax.write_text('train.learning_rate = (0.1\n')
  dynamic = tmp_path / 'dynamic.gin'
  dynamic.write_text('from __gin__ import dynamic_registration\n'
                     'tfcredit.methods.TruncatedBPTT.window = 3\n')
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  return [
      ('gin syntax error', 'train.py', [f'--gin_file={syntax}'], 2, 'TokenError'),
      ('quoted number', 'train.py',
       ["--gin_bindings=train.learning_rate = 'fast'"], 2,
       'train.learning_rate must be a number'),
      ('window too long', 'train.py',
       ['--gin_bindings=TruncatedBPTT.window = 1000000000'], 2,
       'use at most 20'),
      ('dynamic name not imported', 'train.py', [f'--gin_file={dynamic}'], 2,
       "'tfcredit' was not provided by an import"),
      ('unknown corpus', 'train.py',
       ['--gin_bindings=train.task = @LanguageModelTask',
        "--gin_bindings=LanguageModelTask.corpus = 'nope'"], 2,
       "LanguageModelTask.corpus = 'ptb'"),
      ('unknown flag', 'train.py', ['--no_such_flag'], 2, 'no_such_flag'),
      ('model_dir is a file', 'train.py', [f'--model_dir={a_file}'], 1,
       'is a file, not a folder'),
      ('model_dir cannot be made', 'train.py', ['--model_dir=/proc/tfcredit/run'],
       1, "'/proc/tfcredit"),
      ('bad split', 'evaluate.py', [f'--saved_model={tmp_path}', '--split=bogus'],
       2, 'bogus'),
  ]


def test_bad_inputs_exit_with_one_line_and_their_code(tmp_path, capfd):
  # The entry points run in this process (run_entry_point): what is checked is
  # their messages and exit codes, not a process's start-up.
  failures = []
  for name, tool, args, code, words in _bad_inputs(tmp_path):
    if tool == 'train.py':
      args = [f'--gin_file={TINY}', f'--model_dir={tmp_path}/run_{code}',
              '--export_dir=', *args]
    capfd.readouterr()
    returncode = run_entry_point(tool[:-len('.py')], *args)
    stderr = capfd.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith('error:')]
    if (returncode != code or len(lines) != 1 or words not in lines[0] or
        'Traceback' in stderr or 'In call to configurable' in stderr):
      failures.append(f'{name}: exit {returncode} (want {code}): '
                      f'{stderr[-600:]}')
  assert not failures, '\n'.join(failures)

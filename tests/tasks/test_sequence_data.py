"""Bad input to tfcredit.tasks.sequences.SequenceTask, checked by
tfcredit.tasks.sequence_data: one test each, the exception type and a one-line
message naming the argument or array, the row as given and the value."""

import re

import numpy as np
import pytest

from tfcredit.errors import ConfigurationError, DataError
from tfcredit.tasks.sequences import SequenceTask
from tfcredit.testing import TINY_CONFIG


def _message(raised) -> str:
  message = str(raised.value)
  assert '\n' not in message, message
  return message


def test_a_missing_npz_file(tmp_path):
  with pytest.raises(DataError) as raised:
    SequenceTask(path=str(tmp_path / 'absent.npz'))
  message = _message(raised)
  assert 'SequenceTask.path' in message and str(tmp_path / 'absent.npz') in message


def test_an_npz_file_without_inputs(tmp_path):
  np.savez(tmp_path / 'data.npz', input=np.zeros((2, 3), np.int32),
           targets=np.zeros(2, np.int32))
  with pytest.raises(DataError) as raised:
    SequenceTask(path=str(tmp_path / 'data.npz'))
  message = _message(raised)
  assert "no array 'inputs'" in message and str(tmp_path / 'data.npz') in message


def test_an_npy_file_is_not_an_npz_file(tmp_path):
  np.save(tmp_path / 'data.npy', np.zeros((2, 3), np.int32))
  with pytest.raises(DataError) as raised:
    SequenceTask(path=str(tmp_path / 'data.npy'))
  assert str(tmp_path / 'data.npy') in _message(raised)


def test_npz_valid_inputs_without_valid_targets(tmp_path):
  x, y = np.ones((10, 3), np.int32), np.zeros(10, np.int32)
  np.savez(tmp_path / 'data.npz', inputs=x, targets=y, valid_inputs=x)
  with pytest.raises(DataError) as raised:
    SequenceTask(path=str(tmp_path / 'data.npz'))
  assert 'valid_targets' in _message(raised)


def test_inputs_and_targets_with_different_numbers_of_rows():
  with pytest.raises(DataError) as raised:
    SequenceTask(inputs=np.ones((4, 3), np.int32), targets=np.zeros(3, np.int32))
  message = _message(raised)
  assert 'targets has 3 rows' in message and 'inputs has 4' in message


@pytest.mark.parametrize('lengths, row, value', [([3, 4, 2, 3], 1, 4),
                                                 ([3, 3, 0, 1], 2, 0)])
def test_lengths_outside_one_to_the_padded_steps(lengths, row, value):
  with pytest.raises(DataError) as raised:
    SequenceTask(inputs=np.ones((4, 3), np.int32), targets=np.zeros(4, np.int32),
                 lengths=np.array(lengths))
  assert f'lengths[{row}] = {value} is outside [1, 3]' in _message(raised)


def _twenty_features():
  """20 sequences of 4 padded steps, lengths 1..4, one feature; targets 0..19."""
  x = np.arange(80, dtype=np.float32).reshape(20, 4, 1)
  return x, np.arange(20, dtype=np.float32), np.arange(20) % 4 + 1


@pytest.mark.parametrize('array, index', [('inputs', (7, 2, 0)),
                                          ('inputs', (13, 0, 0)),
                                          ('targets', (7,)), ('targets', (16,))])
@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_real_values_name_the_row(array, index, bad):
  x, y, lengths = _twenty_features()  # Row 7 has 4 real steps, 13 has 2.
  (x if array == 'inputs' else y)[index] = bad
  with pytest.raises(DataError) as raised:
    SequenceTask(inputs=x, targets=y, lengths=lengths, loss='mse')
  message = _message(raised)
  # The row as given, whichever split it would be held out into.
  assert re.search(rf'(?<![\w.]){array}\[{index[0]}\] is not finite', message)


def test_padding_beyond_the_lengths_may_hold_anything():
  x, y, lengths = _twenty_features()
  x[np.arange(4)[None, :] >= lengths[:, None]] = np.nan  # All padded steps.
  x[3, 3:] = np.inf  # Row 3 is 4 steps long: inf at a real step ...
  with pytest.raises(DataError):
    SequenceTask(inputs=x, targets=y, lengths=lengths, loss='mse')
  x[3, 3:] = 1.0
  task = SequenceTask(inputs=x, targets=y, lengths=lengths, loss='mse')
  ids = np.full((20, 4), -5, np.int32)  # Ids: -5 beyond each length is ignored.
  for row, n in enumerate(lengths):
    ids[row, :n] = row % 3
  tokens = SequenceTask(inputs=ids, targets=np.arange(20) % 2, lengths=lengths)
  assert task.masked and tokens.masked and tokens.input_vocab_size == 3


def test_labels_out_of_range_for_the_declared_classes():
  labels = np.array([0, 1, 2, 1, 3, 0, 1, 2, 0, 1], np.int32)  # 3 in row 4.
  with pytest.raises(DataError) as raised:
    SequenceTask(inputs=np.ones((10, 2), np.int32), targets=labels, num_classes=3)
  message = _message(raised)
  assert re.search(r'(?<![\w.])targets\[4\] holds id 3, outside \[0, 3\)', message)


def test_negative_token_ids_name_the_row():
  ids = np.ones((10, 3), np.int32)
  ids[6, 1] = -2
  with pytest.raises(DataError) as raised:
    SequenceTask(inputs=ids, targets=np.zeros(10, np.int32))
  assert re.search(r'(?<![\w.])inputs\[6\] holds id -2', _message(raised))


def test_float_labels_for_cross_entropy():
  with pytest.raises(DataError) as raised:
    SequenceTask(inputs=np.ones((10, 2), np.int32), targets=np.full(10, np.nan))
  assert 'targets[0]' in _message(raised) and 'integer' in str(raised.value)


_X, _Y = np.ones((10, 2), np.int32), np.zeros(10, np.int32)


@pytest.mark.parametrize('options, words', [
    ({}, ['path', 'inputs', 'dataset', 'none']),
    ({'path': 'a.npz', 'inputs': _X, 'targets': _Y}, ["'path'", "'inputs'"]),
    ({'inputs': _X, 'targets': _Y, 'loss': 'hinge'}, ['SequenceTask.loss',
                                                      "'hinge'"]),
    ({'inputs': _X, 'targets': _Y, 'readout': 'last'}, ['SequenceTask.readout',
                                                        "'last'"]),
    ({'inputs': _X, 'targets': _Y, 'valid_fraction': 0.0},
     ['SequenceTask.valid_fraction', '0.0']),
    ({'inputs': _X, 'targets': _Y, 'test_fraction': 1.5},
     ['SequenceTask.test_fraction', '1.5']),
    ({'inputs': _X, 'targets': _Y, 'test_fraction': '0.1'},
     ['SequenceTask.test_fraction', "'0.1'"]),
    ({'inputs': _X, 'targets': _Y, 'valid_fraction': 0.5, 'test_fraction': 0.5},
     ['SequenceTask.valid_fraction=0.5', 'test_fraction=0.5', 'none to train']),
    ({'inputs': _X, 'targets': _Y, 'seed': -1}, ['SequenceTask.seed', '-1']),
], ids=['none', 'two', 'loss', 'readout', 'fraction-0', 'fraction-1.5',
        'fraction-string', 'fractions-sum-1', 'seed'])
def test_bad_settings_are_configuration_errors(options, words):
  with pytest.raises(ConfigurationError) as raised:
    SequenceTask(**options)
  message = _message(raised)
  for word in words:
    assert word in message, message


def test_fractions_that_round_to_no_rows_or_leave_no_training_rows():
  with pytest.raises(DataError) as raised:  # round(0.04 * 10) = 0 rows.
    SequenceTask(inputs=_X, targets=_Y, valid_fraction=0.04)
  assert 'SequenceTask.valid_fraction' in _message(raised)
  with pytest.raises(DataError) as raised:  # round(2.4) + round(1.5) = 4 of 4.
    SequenceTask(inputs=_X[:4], targets=_Y[:4], valid_fraction=0.6,
                 test_fraction=0.375)
  message = _message(raised)
  assert 'SequenceTask.valid_fraction=0.6 and test_fraction=0.375' in message
  assert 'hold out 2 + 2 of 4' in message and 'leaving none to train on' in message


def test_a_missing_npz_file_through_the_train_command(tmp_path, run_command):
  missing = tmp_path / 'no_such_data.npz'
  done = run_command(
      'train', f'--gin_file={TINY_CONFIG}', f'--model_dir={tmp_path}/run',
      '--gin_bindings=train.task = @SequenceTask',
      f"--gin_bindings=SequenceTask.path = '{missing}'")
  assert done.returncode == 1, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: SequenceTask.path=')
  assert str(missing) in lines[0]


def test_terminal_targets_of_different_shapes():
  targets = [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0])]
  inputs = [np.ones((3, 1), np.float32)] * 3
  with pytest.raises(DataError) as raised:  # Inferred terminal (3 steps, 2 values).
    SequenceTask(inputs=inputs, targets=targets, loss='mse', valid=(inputs, targets),
                 test=(inputs, targets))
  message = _message(raised)
  assert 'targets[2] has shape (1,)' in message and "'terminal'" in message

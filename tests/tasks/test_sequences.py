"""Tests of tfcredit.tasks.sequences: the user's own labelled sequences.

Every expected batch, loss, count and held-out share is written out by hand or
computed here with numpy from the raw sequences, never read from the task.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.errors import ConfigurationError
from tfcredit.tasks.sequences import SequenceTask
from tfcredit.training import components
from tfcredit.testing import TINY_CONFIG, clean_gin, configure_tiny  # noqa: F401

SPLITS = ('train', 'valid', 'test')

# Three token sequences (lengths 3, 1, 2) with one label per step.
IDS = [np.array([1, 2, 3]), np.array([4]), np.array([2, 2])]
LABELS = [np.array([0, 1, 0]), np.array([1]), np.array([1, 1])]
# Two sequences of two features (lengths 2, 1).
FEATURES = [np.array([[0.5, 1.0], [1.5, -2.0]], np.float32),
            np.array([[3.0, 4.0]], np.float32)]
NAN = np.nan


def _given(inputs, targets, **kwargs):
  """A task whose validation and test splits are its training sequences."""
  return SequenceTask(inputs=inputs, targets=targets, valid=(inputs, targets),
                      test=(inputs, targets), **kwargs)


def _message(raised) -> str:
  message = str(raised.value)
  assert '\n' not in message, message
  return message


# ------------------------------------------------------------------ sources


def _ragged(per_step, count=20):
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 7, count)
  inputs = [rng.integers(0, 5, n).astype(np.int32) for n in lengths]
  targets = [rng.integers(0, 3, n if per_step else None).astype(np.int32)
             for n in lengths]
  return inputs, targets, lengths


def _padded_arrays(inputs, targets, lengths, per_step):
  """``[N, T]`` arrays holding 9 and 7 beyond each length: anything goes there."""
  x = np.full((len(inputs), max(lengths)), 9, np.int32)
  y = np.full(x.shape, 7, np.int32) if per_step else np.array(targets)
  for row, n in enumerate(lengths):
    x[row, :n] = inputs[row]
    if per_step:
      y[row, :n] = targets[row]
  return x, y


def _real(row, pad=-1):
  return tuple(int(v) for v in row if v != pad)


@pytest.mark.parametrize('per_step', [True, False], ids=['per_step', 'terminal'])
def test_every_source_gives_the_same_batches(tmp_path, per_step):
  inputs, targets, lengths = _ragged(per_step)
  x, y = _padded_arrays(inputs, targets, lengths, per_step)
  np.savez(tmp_path / 'data.npz', inputs=x, targets=y, lengths=lengths)
  spec = (tf.TensorSpec([None], tf.int32),
          tf.TensorSpec([None] if per_step else [], tf.int32))
  dataset = tf.data.Dataset.from_generator(lambda: zip(inputs, targets),
                                           output_signature=spec)
  tasks = [SequenceTask(inputs=x, targets=y, lengths=lengths),
           SequenceTask(inputs=inputs, targets=targets),
           SequenceTask(path=str(tmp_path / 'data.npz')),
           SequenceTask(dataset=dataset)]
  reference, seen = tasks[0], []
  assert reference.masked and reference.readout == (
      'per_step' if per_step else 'terminal')
  for split in SPLITS:
    for epoch, batch_size in ((0, 1), (1, 4)):
      for index in range(reference.batches_per_epoch(split, batch_size)):
        expected = reference.batch(split, epoch, index, batch_size)
        for task in tasks[1:]:
          for got, want in zip(task.batch(split, epoch, index, batch_size),
                               expected):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        if batch_size == 1:
          seen.append((_real(expected[0][0]), _real(expected[1][0]) if per_step
                       else int(expected[1][0])))
  # The splits together are the sequences, each once, the 9s and 7s cut off.
  original = [(tuple(a.tolist()), tuple(b.tolist()) if per_step else int(b))
              for a, b in zip(inputs, targets)]
  assert sorted(seen) == sorted(original)


def test_equal_lengths_from_tensor_slices_are_not_masked():
  x = np.array([[1, 2], [3, 0], [2, 2]], np.int32)
  y = np.array([[0, 1], [1, 1], [0, 0]], np.int32)
  from_arrays = _given(x, y)
  dataset = tf.data.Dataset.from_tensor_slices((x, y))
  from_dataset = SequenceTask(dataset=dataset, valid=dataset, test=dataset)
  for task in (from_arrays, from_dataset):
    assert task.masked is False
    assert task.model_spec().get('masked', False) is False
    inputs, targets = task.batch('valid', 0, 0, 3)
    np.testing.assert_array_equal(inputs, x)  # No padding at all.
    np.testing.assert_array_equal(targets, y)


# ------------------------------------------------------------------ padding


def test_token_batches_are_padded_with_minus_one_after_each_length():
  task = _given(IDS, LABELS)
  assert task.readout == 'per_step'
  assert task.masked is True and task.model_spec()['masked'] is True
  inputs, targets = task.batch('valid', 0, 0, 3)
  assert inputs.dtype == targets.dtype == np.int32
  np.testing.assert_array_equal(inputs, [[1, 2, 3], [4, -1, -1], [2, 2, -1]])
  np.testing.assert_array_equal(targets, [[0, 1, 0], [1, -1, -1], [1, 1, -1]])


def test_feature_batches_are_padded_with_nan_and_terminal_targets_are_not():
  per_step = _given(FEATURES, [np.array([1.0, 2.0]), np.array([3.0])], loss='mse')
  inputs, targets = per_step.batch('valid', 0, 0, 2)
  assert inputs.dtype == targets.dtype == np.float32
  np.testing.assert_array_equal(
      inputs, [[[0.5, 1.0], [1.5, -2.0]], [[3.0, 4.0], [NAN, NAN]]])
  np.testing.assert_array_equal(targets, [[[1.0], [2.0]], [[3.0], [NAN]]])
  terminal = _given(FEATURES, np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
                    loss='mse')
  assert terminal.readout == 'terminal' and terminal.masked
  np.testing.assert_array_equal(terminal.batch('valid', 0, 0, 2)[1],
                                [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  classes = _given(IDS, np.array([2, 0, 1]))
  assert classes.readout == 'terminal'
  np.testing.assert_array_equal(classes.batch('valid', 0, 0, 3)[1], [2, 0, 1])


# ----------------------------------------------------------- readout, specs

_STEPS3 = np.zeros((2, 3, 2), np.float32)  # Padded to 3 steps; lengths 3 and 2.

READOUTS = {
    'tokens per step': (lambda: _given(IDS, LABELS), 'per_step',
                        {'input_vocab_size': 5, 'output_dim': 2}),
    'tokens terminal': (lambda: _given(IDS, np.array([0, 2, 1])), 'terminal',
                        {'input_vocab_size': 5, 'output_dim': 3}),
    'declared sizes': (lambda: _given(IDS, LABELS, num_classes=4,
                                      input_vocab_size=7), 'per_step',
                       {'input_vocab_size': 7, 'output_dim': 4}),
    'features per step': (
        lambda: _given(FEATURES, [np.ones((2, 3)), np.ones((1, 3))], loss='mse'),
        'per_step', {'input_dim': 2, 'output_dim': 3}),
    'one feature terminal': (
        lambda: _given([np.array([0.5, 1.5, 2.0]), np.array([1.0])],
                       np.array([1.0, 2.0]), loss='mse'),
        'terminal', {'input_dim': 1, 'output_dim': 1}),
    # Targets as wide as the padded steps: per step unless told otherwise.
    'explicit terminal': (
        lambda: SequenceTask(
            inputs=_STEPS3, targets=np.ones((2, 3)), lengths=[3, 2], loss='mse',
            readout='terminal', valid=(_STEPS3, np.ones((2, 3)), [3, 2]),
            test=(_STEPS3, np.ones((2, 3)), [3, 2])),
        'terminal', {'input_dim': 2, 'output_dim': 3}),
    'inferred per step': (
        lambda: SequenceTask(
            inputs=_STEPS3, targets=np.ones((2, 3)), lengths=[3, 2], loss='mse',
            valid=(_STEPS3, np.ones((2, 3)), [3, 2]),
            test=(_STEPS3, np.ones((2, 3)), [3, 2])),
        'per_step', {'input_dim': 2, 'output_dim': 1}),
}


@pytest.mark.parametrize('case', sorted(READOUTS))
def test_readout_model_spec_and_segment_spec_match_the_batches(case):
  build, readout, spec = READOUTS[case]
  task = build()
  assert task.readout == readout
  assert task.model_spec() == dict(spec, readout=readout, masked=True)
  batch = task.batch('valid', 0, 0, 2)
  for tensor_spec, array in zip(task.segment_spec(), batch):
    assert tensor_spec.dtype.as_numpy_dtype == array.dtype
    assert tensor_spec.shape.rank == array.ndim
    assert tensor_spec.shape.is_compatible_with(array.shape), (tensor_spec,
                                                                array.shape)


def test_explicit_per_step_readout_needs_a_target_per_step():
  with pytest.raises(ConfigurationError) as raised:
    _given(IDS, np.array([0, 1, 1]), readout='per_step')
  message = _message(raised)
  assert 'SequenceTask.readout' in message and 'targets[0]' in message


# ------------------------------------------------------- losses and counts


def test_masked_per_step_cross_entropy_and_accuracy_count_real_steps_only():
  task = _given(IDS, LABELS)
  _, targets = task.batch('valid', 0, 0, 3)
  logits = np.random.default_rng(3).normal(size=(3, 3, 2)).astype(np.float32)
  losses = task.losses(tf.constant(logits), tf.constant(targets)).numpy()
  expected = np.zeros((3, 3))
  for row, labels in enumerate(LABELS):
    for step, label in enumerate(labels):
      z = logits[row, step].astype(np.float64)
      expected[row, step] = np.log(np.exp(z).sum()) - z[label]
  np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)
  assert float(task.count(tf.constant(targets))) == 6.0  # 3 + 1 + 2 steps.
  # Predictions at the real steps: [0 0 0] [1] [0 1] against labels [0 1 0] [1]
  # [1 1]: 2 + 1 + 1 correct; the padded steps' predictions count for nothing.
  predicted = np.array([[0, 0, 0], [1, 0, 1], [0, 1, 0]])
  outputs = tf.one_hot(predicted, 2) * 3.0
  correct = task.extra_metrics(outputs, tf.constant(targets))['accuracy']
  assert float(correct) == 4.0


def test_terminal_cross_entropy_counts_sequences():
  task = _given(IDS, np.array([2, 0, 1]))
  _, targets = task.batch('valid', 0, 0, 3)
  logits = np.log(np.array([[0.2, 0.3, 0.5]] * 3, np.float32))
  losses = task.losses(tf.constant(logits), tf.constant(targets)).numpy()
  np.testing.assert_allclose(losses, -np.log([0.5, 0.2, 0.3]), rtol=1e-5)
  assert float(task.count(tf.constant(targets))) == 3.0
  accuracy = task.extra_metrics(tf.constant(logits), tf.constant(targets))
  assert float(accuracy['accuracy']) == 1.0  # Only row 0's label is 2.


def test_masked_per_step_mse_ignores_nan_padding_with_finite_gradients():
  values = [np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([[7.0, 8.0]])]
  task = _given([np.zeros((3, 1), np.float32), np.ones((1, 1), np.float32)],
                values, loss='mse')
  _, targets = task.batch('valid', 0, 0, 2)
  assert np.isnan(targets[1, 1:]).all()
  outputs = tf.Variable(np.full((2, 3, 2), 0.5, np.float32))
  with tf.GradientTape() as tape:
    losses = task.losses(outputs, tf.constant(targets))
    total = tf.reduce_sum(losses)
  gradient = tape.gradient(total, outputs).numpy()
  # Real steps: mean over the two values of (0.5 - y)^2; padded steps 0.
  expected = [[(0.25 + 2.25) / 2, (6.25 + 12.25) / 2, (20.25 + 30.25) / 2],
              [(42.25 + 56.25) / 2, 0.0, 0.0]]
  np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-6)
  assert np.isfinite(gradient).all()
  # d/do of mean((o - y)^2) over 2 values: o - y; zero at padded steps.
  np.testing.assert_allclose(gradient[0], [[-0.5, -1.5], [-2.5, -3.5],
                                           [-4.5, -5.5]], rtol=1e-6)
  np.testing.assert_allclose(gradient[1], [[-6.5, -7.5], [0, 0], [0, 0]],
                             rtol=1e-6)
  assert float(task.count(tf.constant(targets))) == 4.0
  assert task.extra_metrics(outputs, tf.constant(targets)) == {}


# ------------------------------------------------------- held-out splits


def _numbered(count, **kwargs):
  """Sequences whose features and terminal target are their row number."""
  inputs = [np.full((2 + row % 3, 1), row, np.float32) for row in range(count)]
  targets = [np.array([row], np.float32) for row in range(count)]
  return SequenceTask(inputs=inputs, targets=targets, loss='mse', **kwargs)


def _rows(task, split, epoch=0, batch_size=1):
  return [int(row) for index in range(task.batches_per_epoch(split, batch_size))
          for row in task.batch(split, epoch, index, batch_size)[1][:, 0]]


def test_held_out_rows_are_ten_percent_each_disjoint_and_drawn_by_seed():
  task = _numbered(50, seed=0)
  rows = {split: _rows(task, split) for split in SPLITS}
  assert [len(rows[s]) for s in SPLITS] == [40, 5, 5]  # round(0.1 * 50) = 5.
  assert sorted(sum(rows.values(), [])) == list(range(50))  # Disjoint, all.
  assert rows['valid'] == sorted(rows['valid'])  # Evaluated in order.
  again = _numbered(50, seed=0)
  assert all(_rows(again, s) == rows[s] for s in ('valid', 'test'))
  other = _numbered(50, seed=1)
  assert _rows(other, 'valid') != rows['valid']
  assert _rows(other, 'test') != rows['test']


def test_given_splits_are_used_as_given():
  valid = ([np.full((2, 1), v, np.float32) for v in (102, 100, 101)],
           [np.array([v], np.float32) for v in (102, 100, 101)])
  test = (np.full((1, 4, 1), 7.0, np.float32), np.array([[200.0]]))
  task = _numbered(10, valid=valid, test=test)
  assert _rows(task, 'valid') == [102, 100, 101]
  assert _rows(task, 'test') == [200]
  assert sorted(_rows(task, 'train')) == list(range(10))
  only_valid = _numbered(10, valid=valid)  # Test: round(0.1 * 10) = 1 row.
  assert len(_rows(only_valid, 'test')) == 1
  assert len(_rows(only_valid, 'train')) == 9


# ------------------------------------------------------------ epoch order


def test_epochs_shuffle_training_rows_and_are_resumable():
  task = _numbered(50)
  held = set(_rows(task, 'valid') + _rows(task, 'test'))
  epochs = [_rows(task, 'train', epoch, batch_size=6) for epoch in range(2)]
  for order in epochs:
    assert len(order) == 36 == len(set(order))  # 40 // 6 batches; remainder dropped.
    assert not held & set(order)
  assert epochs[0] != epochs[1]
  fresh = _numbered(50)
  for epoch, index in ((0, 0), (1, 5), (3, 2)):
    for got, want in zip(fresh.batch('train', epoch, index, 6),
                         task.batch('train', epoch, index, 6)):
      np.testing.assert_array_equal(got, want)
  assert task.batches_per_epoch('valid', 2) == 3  # ceil(5 / 2): all rows.
  sizes = [len(task.batch('valid', 0, index, 2)[1]) for index in range(3)]
  assert sizes == [2, 2, 1]
  assert _rows(task, 'valid', batch_size=2) == sorted(_rows(task, 'valid'))



# ------------------------------------------------------------- training


def _token_rows(rng, count):
  """Sequences of 3..10 tokens from {0, 2, 3}, with token 1 put at one random
  step of those labelled 1: the label is whether token 1 occurs."""
  lengths = rng.integers(3, 11, count)
  labels = rng.integers(0, 2, count).astype(np.int32)
  inputs = np.full((count, 10), -1, np.int32)
  for row, n in enumerate(lengths):
    inputs[row, :n] = rng.choice([0, 2, 3], n)
    if labels[row]:
      inputs[row, rng.integers(n)] = 1
  return {'inputs': inputs, 'targets': labels, 'lengths': lengths}


def _write_token_npz(path):
  rng = np.random.default_rng(0)
  arrays = {}
  for prefix, count in (('', 240), ('valid_', 40), ('test_', 40)):
    arrays.update({prefix + key: value
                   for key, value in _token_rows(rng, count).items()})
  np.savez(path, **arrays)
  return arrays


@pytest.mark.slow  # Trains until the model learns.
@pytest.mark.usefixtures('clean_gin')
def test_bptt_learns_whether_a_token_occurs_from_an_npz_file(tmp_path):
  arrays = _write_token_npz(tmp_path / 'tokens.npz')
  configure_tiny('train.task = @SequenceTask',
                 f"SequenceTask.path = '{tmp_path / 'tokens.npz'}'",
                 'train.method = @BPTT', 'train.epochs = 3',
                 'train.batch_size = 16', 'train.learning_rate = 0.03')
  result = tfcredit.train(str(tmp_path / 'run'), export_dir=None)
  assert result['epochs'] == 3 and result['updates'] == 3 * (240 // 16)
  for split in ('valid', 'test'):
    assert result[f'{split}_cross_entropy'] == result[f'{split}_loss']
    assert 0.0 <= result[f'{split}_cross_entropy'] < np.log(2.0)
  positive = arrays['valid_targets'].mean()
  majority = max(positive, 1.0 - positive)  # 0.575 for these 40 rows.
  assert majority < result['valid_accuracy'] <= 1.0


@pytest.mark.parametrize('bindings, words', [
    (['train.method = @TruncatedBPTT', 'TruncatedBPTT.window = 4'],
     ['TruncatedBPTT.window=4', 'longest sequence (10 steps)', "'sequences'"]),
    (['train.method = @RTRL', 'RTRL.window = 11'],
     ['RTRL.window=11', 'SequenceTask sequences (10 steps)']),
], ids=['truncated-bptt-shorter', 'rtrl-longer'])
def test_windows_that_do_not_fit_are_refused_at_startup(tmp_path, run_command,
                                                        bindings, words):
  _write_token_npz(tmp_path / 'tokens.npz')
  done = run_command(
      'train', f'--gin_file={TINY_CONFIG}', f'--model_dir={tmp_path}/run',
      '--gin_bindings=train.task = @SequenceTask',
      f"--gin_bindings=SequenceTask.path = '{tmp_path / 'tokens.npz'}'",
      *[f'--gin_bindings={binding}' for binding in bindings])
  assert done.returncode == 2, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), done.stderr
  for word in words:
    assert word in lines[0], lines[0]


def test_the_run_seed_draws_the_held_out_rows_unless_bound(tmp_path, clean_gin):
  """Built by the trainer from a class, the task's seed is ``train.seed``; a
  bound ``SequenceTask.seed`` wins."""
  del clean_gin
  path = tmp_path / 'data.npz'
  rng = np.random.default_rng(0)
  np.savez(path, inputs=rng.integers(0, 4, (50, 6)), targets=rng.integers(0, 2, 50))
  factory = functools.partial(SequenceTask, path=str(path))
  assert components._task(factory, None, 7).seed == 7
  assert components._task(functools.partial(factory, seed=3), None, 7).seed == 3

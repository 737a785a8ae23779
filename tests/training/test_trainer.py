"""The trainer: resume equals an uninterrupted run, non-finite loss, files written."""

import functools
import glob
import json
import math
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.errors import TrainingError
from tfcredit.testing import TINY_CONFIG, clean_gin, configure_tiny  # noqa: F401
from tfcredit.testing import checkpoint_weights as _weights

TINY = TINY_CONFIG


pytestmark = pytest.mark.usefixtures('clean_gin')

_configure = configure_tiny


_STREAM = ('train.task = @MarkovLanguageTask',
           'MarkovLanguageTask.train_length = 1200',
           'MarkovLanguageTask.eval_length = 400',
           'RecurrentModel.dropout = 0.3',
           'TruncatedBPTT.windows_per_call = 2')


@pytest.mark.parametrize('bindings', [
    pytest.param((), marks=pytest.mark.slow, id='episodic'),
    pytest.param(_STREAM, id='stream')])
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, bindings):
  _configure(*bindings)
  straight = tfcredit.train(str(tmp_path / 'straight'), export_dir=None)
  # Interrupted twice: mid-epoch (carried state, data position, dropout RNG) and
  # again in the second epoch; each restart is a fresh `train` call.
  interrupted = str(tmp_path / 'interrupted')
  _configure(*bindings)
  stopped = tfcredit.train(interrupted, export_dir=None, stop_after_calls=3)
  assert stopped['stopped_after_calls'] == 3
  _configure(*bindings)
  tfcredit.train(interrupted, export_dir=None, stop_after_calls=4)
  _configure(*bindings)
  resumed = tfcredit.train(interrupted, export_dir=None)
  assert resumed['valid_loss'] == straight['valid_loss']
  assert resumed['test_loss'] == straight['test_loss']
  a, b = _weights(str(tmp_path / 'straight')), _weights(interrupted)
  assert a.keys() == b.keys() and a
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


class _PoisonedAddingTask(tfcredit.AddingTask):
  """Training batch 5 and later have NaN targets."""

  def batch(self, split, epoch, index, batch_size):
    inputs, targets = super().batch(split, epoch, index, batch_size)
    if split == 'train' and index >= 5:
      targets = targets * np.nan
    return inputs, targets


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  gin.external_configurable(_PoisonedAddingTask, module='tests')
  _configure('train.task = @_PoisonedAddingTask',
             '_PoisonedAddingTask.sequence_length = 20',
             '_PoisonedAddingTask.train_batches_per_epoch = 8',
             'train.checkpoint_every_calls = 2')
  model_dir = str(tmp_path / 'run')
  with pytest.raises(TrainingError) as raised:
    tfcredit.train(model_dir, export_dir=None)
  message = str(raised.value)
  assert 'training call 6' in message
  assert 'ckpt-4' in message
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))
  assert latest.endswith('ckpt-4')
  reader = tf.train.load_checkpoint(latest)
  for name, _ in tf.train.list_variables(latest):
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
      assert np.all(np.isfinite(value)), name


def _scalars(directory):
  """{tag: [(step, value), ...]} from the event files in ``directory``."""
  series = {}
  for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        number = tf.make_ndarray(value.tensor) if value.HasField('tensor') else None
        series.setdefault(value.tag, []).append((event.step, number))
  return series


def _scalar_tags(directory):
  return set(_scalars(directory))


def test_writes_configs_summaries_export_and_final_metrics(tmp_path):
  _configure()
  model_dir = str(tmp_path / 'run')
  result = tfcredit.train(model_dir, export_dir=str(tmp_path / 'exports'))
  operative = open(os.path.join(model_dir, 'operative_config.gin')).read()
  assert 'TruncatedBPTT.window = 5' in operative
  train_tags = _scalar_tags(os.path.join(model_dir, 'train'))
  assert {'loss', 'mse', 'learning_rate', 'grad_norm', 'sequences_per_second',
          'average_loss_so_far',
          'operative_config'} <= train_tags
  assert {'loss', 'mse'} <= _scalar_tags(os.path.join(model_dir, 'valid'))
  # One call per point, equal counts: the running average is the mean of the points.
  series = _scalars(os.path.join(model_dir, 'train'))
  losses = [float(v) for _, v in sorted(series['loss'], key=lambda p: p[0])]
  running = sorted(series['average_loss_so_far'], key=lambda p: p[0])
  assert len(losses) == 8
  np.testing.assert_allclose(float(running[-1][1]), np.mean(losses), rtol=1e-5)
  np.testing.assert_allclose(float(running[2][1]), np.mean(losses[:3]), rtol=1e-5)
  assert result['saved_model'] == str(tmp_path / 'exports' / 'run' / '1')
  assert os.path.exists(os.path.join(result['saved_model'], 'saved_model.pb'))
  on_disk = json.load(open(os.path.join(model_dir, 'final_metrics.json')))
  assert on_disk['valid_mse'] == result['valid_mse']
  assert math.isfinite(result['test_mse'])


def test_method_metrics_are_combined_per_interval_and_written(tmp_path):
  # ARTBP on the tiny adding task: every call's windows cover T = 20 steps, so over
  # an interval of two calls the histogram holds the lengths of both calls' windows
  # and the mean window length is 2·T over their number.
  _configure('train.method = @ARTBP', 'ARTBP.mean_length = 4',
             'train.summary_every_calls = 2')
  model_dir = str(tmp_path / 'run')
  tfcredit.train(model_dir, export_dir=None, evaluate_test=False)
  path = glob.glob(os.path.join(model_dir, 'train', 'events.out.tfevents.*'))[0]
  histograms, means, largest = [], [], []
  for record in tf.data.TFRecordDataset(path):
    event = tf.compat.v1.Event.FromString(record.numpy())
    for value in event.summary.value:
      array = tf.make_ndarray(value.tensor)
      if value.tag == 'method/window_lengths':
        histograms.append(array)  # [buckets, 3]: left edge, right edge, count.
      elif value.tag == 'method/mean_window_length':
        means.append(float(array))
      elif value.tag == 'method/max_compensation':
        largest.append(float(array))
  assert len(histograms) == len(means) == len(largest) == 4  # 8 calls, 2 each.
  for histogram, mean in zip(histograms, means):
    windows = histogram[:, 2].sum()
    np.testing.assert_allclose(mean, 2 * 20 / windows, rtol=1e-6)
    assert histogram[:, 0].min() >= 1 - 1e-6 and histogram[:, 1].max() <= 20 + 1e-6
  assert all(value >= 1.0 for value in largest)


def test_combine_reductions():
  from tfcredit.training import reporting
  from tfcredit import metrics as base
  total = None
  for value in (2.0, 5.0, 3.0):
    total = reporting.combine(base.MAX, total, value)
  assert total == 5.0
  total = None
  for value in (2.0, 5.0, 3.0):
    total = reporting.combine(base.LAST, total, value)
  assert total == 3.0
  total = reporting.combine(base.CONCAT, None, np.array([1.0, 2.0]))
  total = reporting.combine(base.CONCAT, total, np.array([3.0]))
  np.testing.assert_array_equal(total, [1.0, 2.0, 3.0])
  assert reporting.combine(base.SUM, reporting.combine(base.SUM, None, 2.0), 3.5) == 5.5


def test_progress_rate_after_a_resume_counts_only_this_process(tmp_path):
  """A resumed run's first line must not count the units done before the resume."""
  import io
  import re
  import time
  from tfcredit.training import reporting
  stream = io.StringIO()
  reporter = reporting.Reporter(
      str(tmp_path), 'loss', 'tokens', lambda x: x, total_units=2_000_000,
      log_every_seconds=0.0, stream=stream, write_summaries=False)
  metrics = {key: 1.0 for key in base_metrics()}
  time.sleep(0.05)  # the call takes at least this long
  # Resumed at 1,000,000 units; this process has done one call of 100 units.
  reporter.record_training(metrics, units=100, learning_rate=0.1, units_seen=1_000_100,
                           epoch=1, epochs=2, units_done_overall=1_000_100,
                           average_loss=1.0)
  rate = float(re.search(r'([\d,.]+) tokens/s', stream.getvalue()).group(1)
               .replace(',', ''))
  assert rate <= 100 / 0.05


def base_metrics():
  from tfcredit import metrics as base
  return base.BASE_METRICS


@pytest.mark.slow  # Whole tfcredit.train runs, interrupted and resumed.
def test_a_resumed_run_continues_the_copy_curriculum(tmp_path):
  """The curriculum's position is in the checkpoints: interrupted and resumed,
  the run ends at the length (and weights) of an uninterrupted one."""
  bindings = ('train.task = @CopyTask', 'CopyTask.sequence_length = 1',
              'CopyTask.train_batches_per_epoch = 4', 'CopyTask.eval_batches = 1',
              # Every call "solves" its length: T grows by one per call.
              'CopyTask.curriculum_threshold = 1000.0',
              'CopyTask.curriculum_calls = 1')
  _configure(*bindings)
  straight = tfcredit.train(str(tmp_path / 'straight'), export_dir=None)
  assert straight['curriculum_length'] == 1 + 8  # 2 epochs of 4 calls.
  assert straight['largest_solved_length'] == 8
  interrupted = str(tmp_path / 'interrupted')
  _configure(*bindings)
  tfcredit.train(interrupted, export_dir=None, stop_after_calls=3)
  _configure(*bindings)
  resumed = tfcredit.train(interrupted, export_dir=None)
  assert resumed['curriculum_length'] == straight['curriculum_length']
  assert resumed['valid_loss'] == straight['valid_loss']
  a, b = _weights(str(tmp_path / 'straight')), _weights(interrupted)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize('method,variable', [
    ('ARTBP', 'truncation_seed'), ('UORO', 'noise_seed'), ('DNI', 'noise_seed'),
    ('KFRTRL', 'noise_seed')])
def test_train_seed_seeds_the_methods_draws_unless_gin_binds_one(method, variable):
  """Runs with different ``train.seed`` differ in a method's own draws
  (ARTBP's truncations, UORO's, DNI's and KF-RTRL's noise), not only in the
  weights; an explicit ``<Method>.seed`` binding wins."""
  from tfcredit.training import trainer  # pylint: disable=g-import-not-at-top
  seeds = []
  for bindings in (['train.seed = 3'], ['train.seed = 4'],
                   ['train.seed = 4', f'{method}.seed = 11']):
    _configure(f'train.method = @{method}', 'ARTBP.mean_length = 5', *bindings)
    arguments = trainer.configured_arguments()
    parts = trainer.build_components(
        task=arguments['task'], method=arguments['method'],
        model=arguments['model'], optimizer=arguments['optimizer'],
        learning_rate=arguments['learning_rate'], batch_size=4,
        seed=arguments['seed'])
    seeds.append(int(getattr(parts.method, variable).numpy()))
  assert seeds == [3, 4, 11]



_STREAM_BPTT = functools.partial(tfcredit.BPTT, sequence_length=2)


@pytest.mark.parametrize('task, method, message', [
    (lambda: tfcredit.MarkovLanguageTask(train_length=30, eval_length=400),
     _STREAM_BPTT, "the train split of task 'markov_lm' has fewer than 2 tokens "
     'per column at train.batch_size=20'),
    (lambda: tfcredit.MarkovLanguageTask(train_length=400, eval_length=15),
     _STREAM_BPTT, "the valid split of task 'markov_lm' has fewer than 2 tokens "
     'per column at train.eval_batch_size=10'),
    (lambda: tfcredit.SequenceTask(inputs=np.zeros((12, 4), np.int32),
                                   targets=np.zeros(12, np.int32), num_classes=2,
                                   valid_fraction=0.2, test_fraction=0.2),
     tfcredit.BPTT, "the train split of task 'sequences' has fewer sequences "
     'than one batch at train.batch_size=20'),
])
def test_a_split_without_one_batch_is_refused_before_training(
    tmp_path, task, method, message):
  """One line naming the split and the batch size, before any file is written."""
  with pytest.raises(tfcredit.DataError, match=message):
    tfcredit.train(str(tmp_path / 'run'), export_dir=None, task=task(),
                   method=method, batch_size=20, eval_batch_size=10)
  assert not os.path.exists(tmp_path / 'run')

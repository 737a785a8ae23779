"""What a run shows while it trains: a progress line and TensorBoard summaries.

TensorBoard steps count training units (tokens for stream tasks, sequences for
episodic ones), not parameter updates, so curves of methods that update at different
rates line up on the data they have consumed. Beside the throughput, both give the
process's peak memory (``tfcredit.training.memory``: the allocator's peak where the
device keeps one, else the peak RSS).
"""

import datetime
import glob
import os
import sys
import time
from typing import Callable, Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from tfcredit import metrics as metrics_lib
from tfcredit.training import memory

EVENTS = 'events.out.tfevents.*'  # The names of TensorBoard's event files.


class Reporter:
  """Accumulates training metrics, prints a line now and then, writes summaries."""

  def __init__(self, model_dir: str, metric_name: str, unit_name: str,
               metric_fn, total_units: int, log_every_seconds: float = 10.0,
               summary_every_calls: int = 10, stream=None, write_summaries=True,
               metric_reductions: Optional[Mapping[str, str]] = None,
               method_summaries: Optional[Callable] = None):
    """Creates the writers.

    Args:
      metric_reductions, method_summaries: the method's ``metric_reductions`` and
        ``summaries`` (``tfcredit.methods.base.Method``), for its extra metrics.
    """
    self.metric_reductions = dict(metric_reductions or {})
    self.method_summaries = method_summaries
    self.metric_name = metric_name
    self.unit_name = unit_name
    self.metric_fn = metric_fn
    self.total_units = total_units
    self.log_every_seconds = log_every_seconds
    self.summary_every_calls = summary_every_calls
    self.stream = stream or sys.stdout
    self._writers = {}
    if write_summaries:
      for split in ('train', 'valid'):
        self._writers[split] = tf.summary.create_file_writer(
            os.path.join(model_dir, split))
    self._reset_window()
    self._last_log = time.time()
    # The units done before the first call of this process (non-zero on resume)
    # are known only at that call; until then the rate's baseline is unset.
    self._log_window = {'units': None, 'time': time.time()}

  def _reset_window(self):
    self._window = {'loss_sum': 0.0, 'count': 0.0, 'grad_norm_sum': 0.0,
                    'updates': 0.0, 'units': 0, 'calls': 0, 'start': time.time()}
    self._extras = {}

  def text(self, name: str, text: str, step: int = 0) -> None:
    if 'train' in self._writers:
      with self._writers['train'].as_default():
        tf.summary.text(name, text, step=step)

  def record_training(self, metrics: Dict[str, float], units: int, learning_rate: float,
                      units_seen: int, epoch: int, epochs: int,
                      units_done_overall: int, average_loss: float) -> None:
    """Adds one training call's metrics; writes/prints when an interval is over."""
    if self._log_window['units'] is None:
      self._log_window['units'] = units_done_overall - units
    window = self._window
    for key in metrics_lib.BASE_METRICS:
      window[key] += float(metrics[key])
    for key, value in metrics.items():
      if key not in metrics_lib.BASE_METRICS:
        self._extras[key] = combine(self.metric_reductions.get(key, metrics_lib.SUM),
                                    self._extras.get(key), value)
    window['units'] += units
    window['calls'] += 1
    window['average_loss'] = average_loss
    if window['calls'] >= self.summary_every_calls:
      self._write_training(learning_rate, units_seen)
    now = time.time()
    if now - self._last_log >= self.log_every_seconds:
      self._print_line(epoch, epochs, units_done_overall, now)

  def _write_training(self, learning_rate: float, units_seen: int) -> None:
    window = self._window
    elapsed = max(time.time() - window['start'], 1e-9)
    if window['count'] > 0 and 'train' in self._writers:
      loss = window['loss_sum'] / window['count']
      with self._writers['train'].as_default(step=units_seen):
        tf.summary.scalar('loss', loss)
        if self.metric_name != 'loss':
          tf.summary.scalar(self.metric_name, self.metric_fn(loss))
        tf.summary.scalar('average_loss_so_far', window['average_loss'])
        tf.summary.scalar('learning_rate', learning_rate)
        if window['updates'] > 0:
          tf.summary.scalar('grad_norm', window['grad_norm_sum'] / window['updates'])
        tf.summary.scalar(f'{self.unit_name}_per_second', window['units'] / elapsed)
        tf.summary.scalar('memory/peak_bytes', float(memory.peak_memory()[0]))
        self._write_method_summaries()
    self._last_train_loss = (window['loss_sum'] / window['count']
                             if window['count'] else float('nan'))
    self._reset_window()

  def _write_method_summaries(self) -> None:
    if not self._extras or self.method_summaries is None:
      return
    totals = {key: self._window[key] for key in metrics_lib.BASE_METRICS}
    totals.update(self._extras)
    for name, value in self.method_summaries(totals).items():
      value = np.asarray(value)
      if value.ndim == 0:
        tf.summary.scalar(f'method/{name}', float(value))
      elif value.size:
        tf.summary.histogram(f'method/{name}', value)

  def _print_line(self, epoch: int, epochs: int, units_done_overall: int,
                  now: float) -> None:
    interval = now - self._log_window['time']
    rate = (units_done_overall - self._log_window['units']) / max(interval, 1e-9)
    remaining = max(self.total_units - units_done_overall, 0)
    eta = datetime.timedelta(seconds=int(remaining / rate)) if rate > 0 else '?'
    window = self._window
    loss = (window['loss_sum'] / window['count'] if window['count']
            else getattr(self, '_last_train_loss', float('nan')))
    fraction = units_done_overall / max(self.total_units, 1)
    metric = ('' if self.metric_name == 'loss'
              else f'{self.metric_name} {self.metric_fn(loss):.4g}  ')
    print(f'epoch {epoch + 1}/{epochs}  {100 * fraction:5.1f}%  loss {loss:.4f}  '
          f'{metric}{rate:,.0f} {self.unit_name}/s  '
          f'peak {memory.megabytes(memory.peak_memory()[0])}  ETA {eta}',
          file=self.stream,
          flush=True)
    self._last_log = now
    self._log_window = {'units': units_done_overall, 'time': now}

  def record_evaluation(self, split: str, result: Dict[str, float], units_seen: int,
                        epoch: int) -> None:
    if split in self._writers:
      with self._writers[split].as_default(step=units_seen):
        for key, value in result.items():
          if key != 'count':
            tf.summary.scalar(key, value)
    shown = '  '.join(f'{k} {v:.4f}' for k, v in result.items() if k != 'count')
    print(f'epoch {epoch + 1} {split}: {shown}', file=self.stream, flush=True)

  def flush(self) -> None:
    """Flushes the summary writers."""
    for writer in self._writers.values():
      writer.flush()


def combine(reduction: str, total, value):
  """Combines one call's ``value`` of a metric into the interval's ``total``."""
  value = np.asarray(value, dtype=np.float64)
  if reduction == metrics_lib.CONCAT:
    value = value.reshape(-1)
    return value if total is None else np.concatenate([total, value])
  value = float(value)
  if total is None or reduction == metrics_lib.LAST:
    return value
  if reduction == metrics_lib.MAX:
    return max(total, value)
  if reduction == metrics_lib.SUM:
    return total + value
  raise ValueError(f'unknown metric reduction {reduction!r}: use one of '
                   f'{metrics_lib.SUM!r}, {metrics_lib.MAX!r}, {metrics_lib.LAST!r}, '
                   f'{metrics_lib.CONCAT!r}')


def read_scalars(directory: str) -> Dict[str, list]:
  """``{tag: [(step, value), ...]}`` (sorted by step) from the TensorBoard event
  files directly in ``directory`` (for example ``<model_dir>/valid``); scalar
  summaries only."""
  series = {}
  for path in sorted(glob.glob(os.path.join(directory, EVENTS))):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if not value.HasField('tensor'):
          continue
        array = tf.make_ndarray(value.tensor)
        if array.ndim == 0 and array.dtype.kind == 'f':
          series.setdefault(value.tag, []).append((int(event.step), float(array)))
  return {tag: sorted(points) for tag, points in series.items()}

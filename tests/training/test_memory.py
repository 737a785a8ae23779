"""Peak memory beside throughput: the trainer's summary and progress line."""

import io
import re

from tfcredit.training import memory
from tfcredit.training import reporting


def _metrics():
  from tfcredit import metrics as base
  return {key: 1.0 for key in base.BASE_METRICS}


def _reporter(tmp_path, stream=None, write_summaries=True):
  return reporting.Reporter(
      str(tmp_path), 'loss', 'sequences', lambda x: x, total_units=1000,
      log_every_seconds=0.0, summary_every_calls=1, stream=stream or io.StringIO(),
      write_summaries=write_summaries)


def test_peak_memory_is_written_beside_throughput(tmp_path):
  reporter = _reporter(tmp_path)
  reporter.record_training(_metrics(), units=10, learning_rate=0.1, units_seen=10,
                           epoch=0, epochs=1, units_done_overall=10,
                           average_loss=1.0)
  reporter.flush()
  series = reporting.read_scalars(str(tmp_path / 'train'))
  assert 'sequences_per_second' in series
  (step, peak), = series['memory/peak_bytes']
  assert step == 10
  # A process running TensorFlow holds tens of MB at least, and the peak read
  # when the summary was written cannot exceed the peak read afterwards.
  assert 20e6 < peak <= memory.peak_memory()[0]


def test_the_progress_line_names_the_peak_in_megabytes(tmp_path):
  stream = io.StringIO()
  reporter = _reporter(tmp_path, stream, write_summaries=False)
  reporter.record_training(_metrics(), units=10, learning_rate=0.1, units_seen=10,
                           epoch=0, epochs=1, units_done_overall=10,
                           average_loss=1.0)
  shown = float(re.search(r'peak ([\d,]+) MB', stream.getvalue()).group(1)
                .replace(',', ''))
  assert 20 < shown <= memory.peak_memory()[0] / 1e6 + 1


def test_without_a_gpu_the_source_is_the_peak_rss():
  # Some TensorFlow builds keep allocator statistics for the CPU too (they did
  # on a machine with AMX); a CPU run still reads the RSS, the same on all.
  assert memory.allocator_device() is None
  peak, source = memory.peak_memory()
  assert source == memory.PEAK_RSS
  assert 0 < memory.current_rss() <= peak <= memory.peak_rss()
  assert memory.megabytes(812_345_678) == '812 MB'


def test_a_device_without_statistics_falls_back_to_the_peak_rss():
  # No such device here: get_memory_info raises ValueError.
  peak, source = memory.peak_memory(device='GPU:7')
  assert source == memory.PEAK_RSS
  assert 0 < peak <= memory.peak_rss()

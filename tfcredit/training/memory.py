"""The process's peak memory, from the best source the platform has.

TensorFlow's allocator statistics (``tf.config.experimental.get_memory_info``)
where a device supports them (GPUs); otherwise, as on a CPU, the process's peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), which also
counts Python, TensorFlow's own code and everything the process allocated
before. The trainer's progress line and summaries and the benchmark's scaling
sweep read it here, so both name the same source.
"""

import resource
import sys
from typing import Optional, Tuple

import tensorflow as tf

ALLOCATOR = 'allocator'  # tf.config.experimental.get_memory_info's 'peak'.
PEAK_RSS = 'peak RSS'  # VmHWM, else resource.getrusage's ru_maxrss.


def allocator_device() -> Optional[str]:
  """The first GPU's name (``'GPU:0'``) if TensorFlow sees one, else None. A
  CPU run reads the peak RSS even where its TensorFlow build keeps allocator
  statistics for the CPU (some do, on some machines), so CPU figures compare
  across machines."""
  gpus = tf.config.list_logical_devices('GPU')
  return gpus[0].name if gpus else None


def peak_memory(device: Optional[str] = None) -> Tuple[int, str]:
  """``(bytes, source)``: the device allocator's peak if ``device`` (default
  ``allocator_device()``) supports memory statistics, else the process's peak
  RSS; ``source`` is ``ALLOCATOR`` or ``PEAK_RSS``."""
  device = device or allocator_device()
  if device is not None:
    try:
      return int(tf.config.experimental.get_memory_info(device)['peak']), ALLOCATOR
    except (ValueError, RuntimeError):  # No statistics on this device.
      pass
  return peak_rss(), PEAK_RSS


def reset_peak(device: Optional[str] = None) -> None:
  """Resets the allocator's peak where it is kept (the RSS peak cannot be reset:
  subtract ``current_rss()`` read before instead)."""
  device = device or allocator_device()
  if device is not None:
    try:
      tf.config.experimental.reset_memory_stats(device)
    except (ValueError, RuntimeError):
      pass


def peak_rss() -> int:
  """The process's peak resident set size in bytes: ``VmHWM`` of
  ``/proc/self/status`` where it can be read (the kernel's high-water mark,
  counting the pages resident now), else ``getrusage``'s ``ru_maxrss`` (KiB on
  Linux, bytes on macOS), which can lag the current size by a few pages."""
  kib = _status_kib('VmHWM')
  if kib is not None:
    return kib * 1024
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == 'darwin' else peak * 1024)


def current_rss() -> int:
  """The process's resident set size now, in bytes (``VmRSS`` of
  ``/proc/self/status``; the peak where it cannot be read)."""
  kib = _status_kib('VmRSS')
  return peak_rss() if kib is None else kib * 1024


def _status_kib(field: str) -> Optional[int]:
  """A ``kB`` field of ``/proc/self/status``, or None (no such file or field)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1])
  except (OSError, ValueError, IndexError):
    pass
  return None


def megabytes(count: int) -> str:
  """``'812 MB'`` (10^6 bytes)."""
  return f'{count / 1e6:,.0f} MB'

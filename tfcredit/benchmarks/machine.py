"""The machine a benchmark ran on: CPU model, ISA flags, CPU count, load, versions.

``cpu_features`` parses ``/proc/cpuinfo`` (or a given text): whether the CPU has
bf16 matrix instructions decides whether a bfloat16 roofline row is timed, and the
summary names the flags, because without them TensorFlow emulates bfloat16
products.
"""

import os
import platform
from typing import Dict, Optional, Sequence

import keras
import tensorflow as tf

# /proc/cpuinfo flags recorded in the JSON's machine entry, when present.
ISA_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile',
             'amx_int8')
BF16_FLAGS = ('amx_bf16', 'amx_tile', 'avx512_bf16')  # Reported in the summary.
BF16_MATMUL_FLAGS = ('amx_bf16', 'avx512_bf16')  # Any of them: time a bf16 row.


def cpu_features(cpuinfo: Optional[str] = None) -> Dict:
  """The CPU's model name, relevant ISA flags and logical CPU count.

  Args:
    cpuinfo: the text of ``/proc/cpuinfo``; None reads it (Linux), or takes
      ``platform.processor()`` and no flags where it cannot be read.

  Returns:
    ``{'cpu_model': str, 'isa_flags': [...], 'bf16_flags': [...],
    'bf16_matmul': bool, 'cpu_count': int}``: ``isa_flags`` are those of
    ``ISA_FLAGS`` present, ``bf16_flags`` those of ``BF16_FLAGS``, and
    ``bf16_matmul`` whether the CPU has bf16 matrix instructions (``amx_bf16`` or
    ``avx512_bf16``; ``amx_tile`` alone is the tile unit, possibly int8 only);
    ``cpu_count`` is the logical CPU count (``os.cpu_count()``).
  """
  if cpuinfo is None:
    try:
      with open('/proc/cpuinfo') as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ''
  model, present = None, set()
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(':')
    key = key.strip()
    if key == 'model name' and model is None:
      model = value.strip()
    elif key == 'flags':  # The same on every core: the union costs nothing.
      present.update(value.split())
  return {'cpu_model': model or platform.processor() or None,
          'isa_flags': [flag for flag in ISA_FLAGS if flag in present],
          'bf16_flags': [flag for flag in BF16_FLAGS if flag in present],
          'bf16_matmul': any(flag in present for flag in BF16_MATMUL_FLAGS),
          'cpu_count': os.cpu_count()}


def describe(cpu: Dict, load_at_start: Sequence[float]) -> Dict:
  """The JSON's machine entry: platform, ``cpu`` (``cpu_features()``), the
  1/5/15-minute load averages at the start (given) and now, and the TensorFlow
  and Keras versions."""
  return {'platform': platform.platform(), **cpu,
          'load_average_at_start': load_at_start,
          'load_average_at_end': os.getloadavg(),
          'tensorflow': tf.__version__, 'keras': keras.__version__}

"""``jit_compile='auto'``: whether a method's window pass is compiled by XLA.

``TruncatedBPTT`` and ``BPTT`` take ``jit_compile`` as ``True``, ``False`` or
``'auto'`` (their default). ``'auto'`` turns XLA on where ``tools/benchmark.py``
shows it pays and where it is known to compile: on a CPU (no GPU visible: there
the named LSTM and GRU layers keep their cuDNN kernels), for a named core
(``'simple_rnn'``, or ``'lstm'`` and ``'gru'`` under
``unroll_implementation='keras'``: a custom cell may hold an operation XLA
cannot compile, and an LSTM or GRU that may take the fused unroll compiles its
loops and its cross-entropy by itself, ``compiles_its_parts``, which is
faster), in float32 (the benchmark measures no other precision), on unpadded
sequences and without ``checkpoint_every`` (neither path is measured under
XLA). Everywhere else it stays off. XLA compiles once per window shape,
about a second for a small LSTM; results match the uncompiled pass to float
tolerance, not bit for bit, and dropout draws other (equally random) masks
under XLA than without it from the same seeds. docs/benchmark.md#xla-by-default.
A method with another rule passes it to ``resolve`` (``ElementwiseRTRL``: its
compiled step pays for any cell).

``TFCREDIT_AUTO_XLA=0`` in the environment makes ``'auto'`` never compile, for
runs of many short-lived models, where each compile costs more than it saves
and the compiled code stays in memory until the process ends (the test suite
sets it in ``tests/conftest.py``; explicit ``True`` still compiles).
"""

from typing import Any, Callable, Optional, Union

import tensorflow as tf

from tfcredit import precision
from tfcredit import xla
from tfcredit.errors import ConfigurationError
from tfcredit.models import cells as cells_lib

AUTO = 'auto'


def pays(model) -> bool:
  """Whether ``'auto'`` compiles ``model``'s windows (module docstring)."""
  return (xla.allowed()
          and not xla.gpu_visible()
          and getattr(model, 'cell_type', None) in cells_lib.NAMED
          and not compiles_its_parts(model)
          and precision.compute_dtype(model) == tf.float32
          and not getattr(model, 'masked', False))


def compiles_its_parts(model) -> bool:
  """Whether ``model``'s LSTM or GRU core may take the fused unroll, whose loops
  (and the language models' cross-entropy) XLA compiles by themselves
  (``tfcredit.xla``): faster than compiling the whole window, whose large
  products run slower under XLA than as TensorFlow's kernels."""
  return (getattr(model, 'cell_type', None) in ('lstm', 'gru')
          and getattr(model, 'unroll_implementation', 'auto') != 'keras')


def resolve(parameter: str, value: Union[bool, str], model,
            checkpointed: bool = False,
            rule: Optional[Callable[[Any], bool]] = None) -> bool:
  """``value`` (``True``, ``False`` or ``'auto'``) as a bool for ``model``.

  ``'auto'`` follows ``rule(model)`` when a method gives its own (under
  ``TFCREDIT_AUTO_XLA=0`` still off), else ``pays(model)`` and no
  ``checkpointed`` pass (the rule of truncated BPTT and BPTT).

  Raises:
    ConfigurationError: ``value`` is none of the three.
  """
  if isinstance(value, bool):
    return value
  if isinstance(value, str) and value == AUTO:
    if rule is not None:
      return xla.allowed() and rule(model)
    return pays(model) and not checkpointed
  raise ConfigurationError(
      f"{parameter} must be True, False or '{AUTO}', got {value!r}: '{AUTO}' "
      'compiles with XLA where the benchmark shows it pays')

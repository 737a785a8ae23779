"""Where tfcredit compiles parts of a training step with XLA by itself.

On a CPU, two parts of a recurrent language model's step are several times
faster compiled by XLA than as TensorFlow's kernels, while its large matrix
products are faster as TensorFlow's (oneDNN) kernels than under XLA
(docs/benchmark.md, "XLA for the parts that pay"):

* the softmax cross-entropy over a large vocabulary and its gradient
  (``tfcredit.losses``): one compiled pass instead of TensorFlow's fused kernel;
* the step loops of the fused LSTM/GRU unroll (``tfcredit.models.fused``),
  where XLA fuses the gate arithmetic.

``parts_compile()`` says whether they are compiled: when no GPU is visible (on a
GPU the TensorFlow kernels are the fast ones), outside ``parts(False)`` and
``parts(BUCKETED)``, and unless ``TFCREDIT_AUTO_XLA=0`` is set, which also
keeps the methods' ``jit_compile='auto'`` off (``tfcredit.methods.jit``). XLA
compiles anew for each shape it meets, so a method whose windows have random
lengths (ARTBP) traces under ``parts(BUCKETED)``: its loops stay TensorFlow's,
and its cross-entropy is compiled over rows padded to a few counts
(``loss_compile()``). Both are read when a function is traced.
"""

import contextlib
import functools
import os
import threading
from typing import Optional, Union

import tensorflow as tf

ENVIRONMENT = 'TFCREDIT_AUTO_XLA'  # '0': tfcredit compiles nothing by itself.


def allowed() -> bool:
  """Whether tfcredit may compile anything by itself (not under
  ``TFCREDIT_AUTO_XLA=0``)."""
  return os.environ.get(ENVIRONMENT, '1') != '0'


_LOCAL = threading.local()
# A ``parts`` setting between True and False: only the cross-entropy, over rows
# padded to a few counts.
BUCKETED = 'bucketed'
_LEVELS = {False: 0, BUCKETED: 1, True: 2}


@functools.lru_cache(maxsize=None)
def gpu_visible() -> bool:
  """Whether TensorFlow sees a GPU (fixed once it has started; asked once)."""
  return bool(tf.config.list_logical_devices('GPU'))


def _setting():
  return getattr(_LOCAL, 'parts', True)


def parts_compile() -> bool:
  """Whether the fused unroll's loops (and the cross-entropy, at each shape it
  meets) run compiled."""
  return _setting() is True and allowed() and not gpu_visible()


def loss_compile() -> Optional[str]:
  """How the cross-entropy runs: ``'shapes'`` (compiled for each shape it
  meets), ``BUCKETED`` (compiled over rows padded to a few counts) or None
  (TensorFlow's kernel)."""
  if _setting() is False or not allowed() or gpu_visible():
    return None
  return 'shapes' if _setting() is True else BUCKETED


@contextlib.contextmanager
def parts(setting: Union[bool, str]):
  """Within it (while a function is traced), the parts compile as ``setting``
  says (True: all of them; ``BUCKETED``: only the cross-entropy, over padded
  rows, for a method whose windows have random lengths; False: none), or less
  where an enclosing ``parts`` says less."""
  if setting not in _LEVELS:
    raise ValueError(f'parts takes True, False or {BUCKETED!r}, got {setting!r}')
  before = _setting()
  _LOCAL.parts = min(before, setting, key=_LEVELS.__getitem__)
  try:
    yield
  finally:
    _LOCAL.parts = before

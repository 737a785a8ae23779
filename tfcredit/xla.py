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
GPU the TensorFlow kernels are the fast ones), outside ``parts(False)`` (a
method whose windows have random lengths), and unless
``TFCREDIT_AUTO_XLA=0`` is set, which also keeps the methods' ``jit_compile=
'auto'`` off (``tfcredit.methods.jit``). It is read when a function is traced.
"""

import contextlib
import functools
import os
import threading

import tensorflow as tf

ENVIRONMENT = 'TFCREDIT_AUTO_XLA'  # '0': tfcredit compiles nothing by itself.


def allowed() -> bool:
  """Whether tfcredit may compile anything by itself (not under
  ``TFCREDIT_AUTO_XLA=0``)."""
  return os.environ.get(ENVIRONMENT, '1') != '0'


_LOCAL = threading.local()


@functools.lru_cache(maxsize=None)
def gpu_visible() -> bool:
  """Whether TensorFlow sees a GPU (fixed once it has started; asked once)."""
  return bool(tf.config.list_logical_devices('GPU'))


def parts_compile() -> bool:
  """Whether the cross-entropy and the fused unroll's loops run compiled."""
  return getattr(_LOCAL, 'parts', True) and allowed() and not gpu_visible()


@contextlib.contextmanager
def parts(enabled: bool):
  """Within it (while a function is traced), ``parts_compile()`` is False
  unless ``enabled``: for a method whose windows have random lengths, each of
  which XLA would compile anew (ARTBP)."""
  before = getattr(_LOCAL, 'parts', True)
  _LOCAL.parts = before and enabled
  try:
    yield
  finally:
    _LOCAL.parts = before

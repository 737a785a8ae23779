"""Mixed precision: which parts compute in 16 bits, and the dynamic loss scale.

``train.precision`` is ``'float32'`` (the default), ``'mixed_bfloat16'`` or
``'mixed_float16'``, Keras's mixed-precision policies. The model is built under
the policy (``policy_scope``): its layers compute in the low precision, its
variables (and so the optimizer's slots and every checkpoint) stay float32.

The model's boundary stays float32 whatever the policy
(``RecurrentModel.unroll``): the state it takes and returns, and the outputs the
losses read, so every method's own arithmetic (losses and their sums, ARTBP's
compensation factors, TargetProp's free states and duals, FPTT's running
averages, DNI's synthesizer, its targets and its loss) is float32 without
knowing the precision. Inside the fused LSTM/GRU unroll only the matrix products
run in the low precision; the gates, the cell state and the carried state are
float32.

``mixed_float16`` needs a loss scale (float16 gradients underflow below 6e-8):
``DynamicLossScale`` multiplies each objective before differentiation, divides
the gradients after, halves on overflow (the window is skipped and counted, not
treated as a divergence) and doubles after ``growth_interval`` finite windows,
as Keras's ``LossScaleOptimizer`` does. It lives in the method, not in a
wrapped optimizer, so clipping sees unscaled gradients and the optimizer's
checkpoint layout is the same in every precision.
"""

import contextlib
from typing import Iterator

import keras
import tensorflow as tf

from tfcredit.errors import ConfigurationError

FLOAT32 = 'float32'
MIXED_BFLOAT16 = 'mixed_bfloat16'
MIXED_FLOAT16 = 'mixed_float16'
PRECISIONS = (FLOAT32, MIXED_BFLOAT16, MIXED_FLOAT16)


def check(precision, where: str = 'train.precision') -> str:
  """Returns ``precision`` if it is one of ``PRECISIONS``.

  Raises:
    ConfigurationError: naming ``where``, the value and the choices.
  """
  if precision not in PRECISIONS:
    raise ConfigurationError(
        f'{where} must be one of {", ".join(repr(p) for p in PRECISIONS)}, got '
        f'{precision!r}')
  return precision


@contextlib.contextmanager
def policy_scope(precision: str) -> Iterator[None]:
  """Layers created inside take ``precision``'s Keras dtype policy."""
  check(precision)
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(precision)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def compute_dtype(layer) -> tf.DType:
  """The dtype ``layer`` (a model or layer) computes in; float32 by default."""
  return tf.as_dtype(getattr(layer, 'compute_dtype', None) or tf.float32)


def cast_state(state, dtype=tf.float32):
  """Casts every tensor of a state nest (a no-op when it already has ``dtype``)."""
  return tf.nest.map_structure(lambda s: tf.cast(s, dtype), state)


class DynamicLossScale(tf.Module):
  """A loss scale that halves on overflow and doubles after steady progress.

  Args:
    initial_scale: the first scale (Keras's default, 2**15).
    growth_interval: finite windows in a row before the scale doubles.
  """

  def __init__(self, initial_scale: float = 2.0 ** 15, growth_interval: int = 2000,
               name: str = 'loss_scale'):
    super().__init__(name=name)
    self.growth_interval = growth_interval
    # Updated in the cross-replica context, once per window.
    options = dict(trainable=False,
                   synchronization=tf.VariableSynchronization.ON_WRITE,
                   aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.scale = tf.Variable(float(initial_scale), name='scale', **options)
    self.finite_windows = tf.Variable(0, dtype=tf.int64, name='finite_windows',
                                      **options)

  def gradient(self, tape: tf.GradientTape, target, sources, **kwargs):
    """``tape.gradient(target, sources)`` through the scale: the scalar
    ``target`` is scaled as differentiation starts, the gradients unscaled."""
    scale = tf.identity(self.scale)
    gradients = tape.gradient(target, sources, output_gradients=scale, **kwargs)
    return tf.nest.map_structure(lambda g: unscale(g, scale), gradients)

  def update(self, finite: tf.Tensor) -> None:
    """After a window: halve if its gradients overflowed, else count it."""
    grow = tf.logical_and(finite, self.finite_windows + 1 >= self.growth_interval)
    self.scale.assign(tf.where(
        finite, tf.where(grow, self.scale * 2.0, self.scale),
        tf.maximum(self.scale / 2.0, 1.0)))
    self.finite_windows.assign(tf.where(
        tf.logical_and(finite, tf.logical_not(grow)), self.finite_windows + 1,
        tf.constant(0, tf.int64)))


def unscale(gradient, scale):
  """``gradient / scale`` for a tensor or ``IndexedSlices``; None stays None."""
  if gradient is None:
    return None
  if isinstance(gradient, tf.IndexedSlices):
    return tf.IndexedSlices(gradient.values / scale, gradient.indices,
                            gradient.dense_shape)
  return gradient / scale

"""The non-finite guard of every update (docs/design.md, "Errors and data safety").

A window whose loss or gradients are not finite updates nothing and is counted in
``non_finite_windows``; under ``mixed_float16`` a window with a finite loss whose
scaled gradients overflowed is skipped, the loss scale halved, and it is counted
in ``loss_scale_overflows`` instead (not a divergence). All inside the graph.
"""

from typing import Optional

import tensorflow as tf

from tfcredit import precision
from tfcredit.metrics import NON_FINITE_METRIC

OVERFLOW_METRIC = 'loss_scale_overflows'
LOSS_SCALE_METRIC = 'loss_scale'


def _counter(name: str) -> tf.Variable:
  return tf.Variable(0.0, trainable=False, name=name,
                     synchronization=tf.VariableSynchronization.ON_WRITE,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class UpdateGuard:
  """Counts refused and overflowed windows over one training call.

  A plain object, not a trackable one, so its counters stay out of checkpoints
  (they restart at every call); the loss scale belongs to the method, which
  checkpoints it.
  """

  def __init__(self, loss_scale: Optional[precision.DynamicLossScale]):
    self.loss_scale = loss_scale
    self.refused = _counter(NON_FINITE_METRIC)
    self.overflows = _counter(OVERFLOW_METRIC) if loss_scale else None

  def check(self, norm, loss=None, also_finite=None):
    """Whether a window may update, and whether it overflowed the loss scale.

    Args:
      norm: the global norm of the window's gradients.
      loss: the window's loss, checked too when given.
      also_finite: a boolean tensor the update also needs.

    Returns:
      ``(finite, overflow)``: a boolean tensor and a float 0/1; the loss scale
      has been updated from the gradients' finiteness.
    """
    finite = tf.math.is_finite(norm)
    if also_finite is not None:
      finite = tf.logical_and(finite, also_finite)
    loss_finite = tf.constant(True)
    if loss is not None:
      loss_finite = tf.math.is_finite(tf.reduce_sum(tf.cast(loss, tf.float32)))
    overflow = tf.constant(0.0)
    if self.loss_scale is not None:
      overflow = tf.cast(tf.logical_and(
          tf.logical_and(loss_finite, tf.logical_not(finite)),
          self.loss_scale.scale > 1.0), tf.float32)
      self.loss_scale.update(finite)
      self.overflows.assign_add(overflow)
    return tf.logical_and(finite, loss_finite), overflow

  def record(self, refused, overflow) -> None:
    """Counts a refused window that did not overflow as non-finite."""
    self.refused.assign_add(refused - overflow)

  def counting(self, function, *args):
    """``function(*args) -> (state, metrics)`` with the guard's metrics added
    (automatic control dependencies order the reset, the call and the reads)."""
    self.refused.assign(0.0)
    if self.overflows is not None:
      self.overflows.assign(0.0)
    state, metrics = function(*args)
    metrics = dict(metrics)
    metrics[NON_FINITE_METRIC] = tf.identity(self.refused.read_value())
    if self.overflows is not None:
      overflows = tf.identity(self.overflows.read_value())
      metrics[OVERFLOW_METRIC] = overflows
      metrics['updates'] = metrics['updates'] - overflows  # Skipped windows.
      metrics[LOSS_SCALE_METRIC] = tf.identity(self.loss_scale.scale.read_value())
    return state, metrics

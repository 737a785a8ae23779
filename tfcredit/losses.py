"""The softmax cross-entropy of the language-model tasks, compiled where it pays.

``sparse_softmax_cross_entropy(labels, logits)`` equals
``tf.nn.sparse_softmax_cross_entropy_with_logits`` (per-element losses, the
same gradient ``softmax(logits) − onehot(labels)``) to float tolerance. Where
``tfcredit.xla.parts_compile()`` says so (a CPU), the losses and that gradient
are one XLA-compiled pass, kept for the backward pass as TensorFlow's fused
kernel keeps it (several times faster than that kernel over a large vocabulary:
docs/benchmark.md, "XLA for the parts that pay"); elsewhere it is TensorFlow's
kernel. XLA compiles the pass for each shape it meets; under
``tfcredit.xla.parts(BUCKETED)`` (windows of random lengths) the rows are padded
to the next of a few counts (``bucket``) so that it meets few shapes. Inside a
function XLA compiles whole (``jit_compile=True``) the compiled pass is inlined.
"""

import math

import tensorflow as tf

from tfcredit import xla


@tf.function(jit_compile=True)
def _losses_and_gradient(logits, labels):
  """Per-element losses and ``softmax(logits) − onehot(labels)``."""
  shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
  exponentials = tf.exp(shifted)
  total = tf.reduce_sum(exponentials, axis=-1, keepdims=True)
  picked = tf.gather(shifted, labels[..., tf.newaxis],
                     batch_dims=labels.shape.rank)[..., 0]
  losses = tf.math.log(total)[..., 0] - picked
  gradient = exponentials / total - tf.one_hot(labels, tf.shape(logits)[-1],
                                               dtype=logits.dtype)
  return losses, gradient


@tf.custom_gradient
def _compiled(logits, labels):
  losses, gradient = _losses_and_gradient(logits, labels)

  def backward(upstream):
    return upstream[..., tf.newaxis] * gradient, None

  return losses, backward


BUCKET_FLOOR = 256  # The fewest rows a padded pass computes.


def bucket(rows: tf.Tensor) -> tf.Tensor:
  """The least of ``2^k``, ``1.25·2^k``, ``1.5·2^k`` and ``1.75·2^k`` (at least
  ``BUCKET_FLOOR``) that is ``>= rows``: at most a quarter of the rows are
  padding, and four shapes per doubling of the row count are compiled."""
  rows = tf.maximum(tf.cast(rows, tf.int64), BUCKET_FLOOR)
  octave = tf.bitwise.left_shift(
      tf.constant(1, tf.int64),
      tf.cast(tf.math.floor(tf.math.log(tf.cast(rows, tf.float64))
                            / math.log(2.0) + 1e-9), tf.int64))
  octave = tf.where(octave > rows, octave // 2, octave)  # log rounding guard
  step = octave // 4
  return (rows + step - 1) // step * step


def _bucketed(labels, logits):
  """``_compiled`` over the rows padded to ``bucket(rows)``; the padding's
  losses are dropped, so it gets no gradient."""
  shape = tf.shape(labels)
  flat_labels = tf.reshape(labels, [-1])
  rows = tf.shape(flat_labels, out_type=tf.int64)[0]
  padding = bucket(rows) - rows
  flat_logits = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
  losses = _compiled(tf.pad(flat_logits, [[0, padding], [0, 0]]),
                     tf.pad(flat_labels, [[0, padding]]))
  result = tf.reshape(losses[:rows], shape)
  result.set_shape(labels.shape)
  return result


def sparse_softmax_cross_entropy(labels: tf.Tensor, logits: tf.Tensor
                                 ) -> tf.Tensor:
  """Per-element losses of integer ``labels`` ``[...]`` under float32 ``logits``
  ``[..., classes]`` (module docstring)."""
  how = xla.loss_compile()
  if how == xla.BUCKETED:
    return _bucketed(labels, logits)
  if how is not None:
    return _compiled(logits, labels)
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                         logits=logits)

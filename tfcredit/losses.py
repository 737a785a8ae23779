"""The softmax cross-entropy of the language-model tasks, compiled where it pays.

``sparse_softmax_cross_entropy(labels, logits)`` equals
``tf.nn.sparse_softmax_cross_entropy_with_logits`` (per-element losses, the
same gradient ``softmax(logits) − onehot(labels)``) to float tolerance. Where
``tfcredit.xla.parts_compile()`` says so (a CPU), the losses and that gradient
are one XLA-compiled pass, kept for the backward pass as TensorFlow's fused
kernel keeps it (several times faster than that kernel over a large vocabulary:
docs/benchmark.md, "XLA for the parts that pay"); elsewhere it is TensorFlow's
kernel. Inside a function XLA compiles
whole (``jit_compile=True``) the compiled pass is inlined.
"""

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


def sparse_softmax_cross_entropy(labels: tf.Tensor, logits: tf.Tensor
                                 ) -> tf.Tensor:
  """Per-element losses of integer ``labels`` ``[...]`` under float32 ``logits``
  ``[..., classes]`` (module docstring)."""
  if xla.parts_compile():
    return _compiled(logits, labels)
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                         logits=logits)

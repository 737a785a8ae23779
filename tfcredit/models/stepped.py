"""A recurrent layer's cell stepped through ``tf.scan``, one step at a time.

``RecurrentModel`` takes this path when a window needs per-step control the Keras
layers do not offer: a ``state_grad_scale`` (ARTBP's factors; for cells the fused
unroll does not cover) or a mask of padded steps (``tfcredit.masking``). Both
act on the carried state only, so forward values are the cell's own.
"""

import inspect
from typing import Optional, Tuple

import tensorflow as tf

from tfcredit import masking
from tfcredit import precision


def scale_gradient(value: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
  """Identity in the forward pass; multiplies the incoming gradient by ``scale``.

  ``x - stop_gradient(x)`` is exactly zero, so the forward value is ``value`` bit for
  bit, and the only differentiable path carries the factor ``scale``.
  """
  frozen = tf.stop_gradient(value)
  return frozen + scale * (value - frozen)


def cell_step(cell, features, state, training):
  """``cell`` on one step: ``(output in the cell's compute dtype, new state as
  a float32 tuple)``; the carried state stays float32 and the cell casts it to
  its own dtype."""
  dtype = precision.compute_dtype(cell)
  kwargs = {'training': training} if _takes_training(cell) else {}
  output, new_state = cell(features, list(precision.cast_state(state, dtype)),
                           **kwargs)
  return (tf.cast(output, dtype),
          tuple(precision.cast_state(tf.nest.flatten(new_state))))


def _takes_training(cell) -> bool:
  try:
    return 'training' in inspect.signature(cell.call).parameters
  except (TypeError, ValueError):
    return False


def initial_output(layer_state, output_size: int, dtype) -> tf.Tensor:
  """The output a padded first step of a window repeats: the layer's first state
  tensor when it has the output's size (the output of LSTM, GRU and SimpleRNN
  cells), else zeros."""
  first = layer_state[0]
  if first.shape[-1] == output_size:
    return tf.cast(first, dtype)
  return tf.zeros(tf.stack([tf.shape(first)[0], output_size]), dtype)


def scan_layer(cell, output_size: int, features: tf.Tensor, layer_state,
               training: bool, scale: Optional[tf.Tensor] = None,
               mask: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, tuple]:
  """Steps ``cell`` over ``features`` ``[B, T, D]`` from ``layer_state``.

  Args:
    scale: ``[T]`` or ``[B, T]``: multiplies the gradient of every carried state
      tensor of step ``t`` (``scale_gradient``), or None.
    mask: ``[B, T]`` bool, False at padded steps, whose state and output are
      the previous step's (``tfcredit.masking``), or None.

  Returns:
    ``(outputs [B, T, output_size], final state tuple)``.
  """
  time_major = tf.transpose(features, [1, 0, 2])
  steps = tf.shape(time_major)[0]
  if scale is None:
    scale = tf.ones(tf.reshape(steps, [1]))
  scale = tf.cast(scale, tf.float32)
  if scale.shape.rank == 2:  # [B, T]: per sequence, broadcast over the units.
    scale = tf.expand_dims(tf.transpose(scale), -1)
  masked = mask is not None
  mask = tf.transpose(mask) if masked else tf.zeros(tf.reshape(steps, [1]))
  dtype = precision.compute_dtype(cell)

  def step(carry, elements):
    previous_output, previous = carry
    features_t, scale_t, mask_t = elements
    output, new_state = cell_step(cell, features_t, previous, training)
    if masked:
      output, new_state = masking.hold(mask_t, (output, new_state),
                                       (previous_output, previous))
    carried = tuple(scale_gradient(s, scale_t) for s in new_state)
    return output, carried

  first_output = initial_output(layer_state, output_size, dtype)
  outputs, states = tf.scan(step, (time_major, scale, mask),
                            initializer=(first_output, tuple(layer_state)))
  for reset in ('reset_dropout_mask', 'reset_recurrent_dropout_mask'):
    if hasattr(cell, reset):  # Masks a Keras cell drew inside the scan.
      getattr(cell, reset)()
  final = tuple(s[-1] for s in states)
  return tf.transpose(outputs, [1, 0, 2]), final

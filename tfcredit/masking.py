"""Padded steps of variable-length sequences: the one convention every layer shares.

A batch of sequences of different lengths is padded to the batch's longest one.
The padding is marked in the data itself, so a segment stays an ``(inputs,
targets)`` pair of tensors and every method slices it as before:

* inputs: a padded step has token id ``-1`` (token inputs) or NaN features (real
  inputs);
* per-step targets: a padded step has class ``-1`` (classification) or NaN
  values (regression); one target per sequence is never padded.

``tfcredit.tasks.sequences.SequenceTask`` writes this layout from lengths or a
mask. A model built with ``masked=True`` (``RecurrentModel``) holds each layer's
state through a padded step, as Keras RNN layers do with a mask: the step's state
is the previous one, its output the previous output (the layer's first state
tensor at a window's start), so a terminal readout reads each sequence's own last
step, and the step's Jacobian in the state is the identity, in the weights zero.
A task with ``masked = True`` gives padded steps zero loss and does not count
them. Padding comes only after a sequence's end, where no loss follows, so what
a method carries through it (RTRL's influence, UORO's pair) changes nothing;
methods that would put something there read the row's end: DNI injects no
synthetic gradient after it, RTRL and its approximations read a terminal loss at
it.
"""

import tensorflow as tf

PAD_ID = -1


def step_mask(inputs: tf.Tensor) -> tf.Tensor:
  """``[B, T]`` bool, True at real steps, from ``[B, T]`` ids or ``[B, T(, D)]``
  features."""
  if inputs.dtype.is_integer:
    return inputs >= 0
  if inputs.shape.rank == 2:
    return tf.logical_not(tf.math.is_nan(inputs))
  return tf.logical_not(tf.reduce_any(tf.math.is_nan(inputs), axis=-1))


def clean_inputs(inputs: tf.Tensor) -> tf.Tensor:
  """``inputs`` with padded steps set to id 0 or zero features (a model computes
  on them, and then discards the result)."""
  if inputs.dtype.is_integer:
    return tf.maximum(inputs, 0)
  return tf.where(tf.math.is_nan(inputs), tf.zeros_like(inputs), inputs)


def target_mask(targets: tf.Tensor, class_targets: bool) -> tf.Tensor:
  """``[B, T]`` bool, True where a per-step target is real."""
  if class_targets:
    return targets >= 0
  if targets.shape.rank == 2:
    return tf.logical_not(tf.math.is_nan(targets))
  return tf.logical_not(tf.reduce_any(tf.math.is_nan(targets), axis=-1))


def hold(mask_t: tf.Tensor, new, old):
  """Per row, ``new`` where ``mask_t`` ([B] bool) is True, else ``old`` (nests of
  ``[B, ...]`` finite tensors)."""
  def select(n, o):
    keep = tf.cast(tf.reshape(mask_t, [-1] + [1] * (n.shape.rank - 1)), n.dtype)
    # A blend, exact for a 0/1 ``keep`` and finite values: the gradient of a
    # tf.where fails under tf.vectorized_map (UORO's per-row products, TF 2.21).
    return keep * n + (1 - keep) * tf.cast(o, n.dtype)
  return tf.nest.map_structure(select, new, old)


def real_at(inputs: tf.Tensor, step) -> tf.Tensor:
  """``[B]`` float: 1 where ``step`` is a real step of the row (0 past the
  segment's end)."""
  length = tf.shape(inputs)[1]
  real = tf.gather(step_mask(inputs), tf.minimum(step, length - 1), axis=1)
  return tf.cast(tf.logical_and(real, step < length), tf.float32)

"""A fast unroll of the named LSTM and GRU layers, with an optional gradient scale.

Keras's own recurrent layers, off cuDNN, step the cell: every step multiplies the
step's input by the input kernel, and autodiff through the step loop computes the
kernels' gradients one step at a time, summing ``T`` small products. Here

* the input projection of the whole window is one matrix product per layer
  (``[T·B, D] × [D, G·U]``), made outside the loop by ordinary autodiff, so its
  gradients (input kernel, bias, inputs) are one product each too;
* the loop carries only the recurrent product and the gate arithmetic, with all
  gates activated at once (``tanh(x) = 2·sigmoid(2x) − 1`` puts the LSTM's cell
  gate in the same sigmoid as the other three);
* a hand-written backward loop (``tf.custom_gradient``) carries only the state
  gradients; the recurrent kernel's gradient is one product over the whole window
  (``[U, T·B] × [T·B, G·U]``) after it.

``scale`` is ARTBP's compensation (``RecurrentModel.unroll``'s
``state_grad_scale``, time-major ``[T, 1 or B, 1]``): the gradient flowing from
step ``t + 1`` back into the state of step ``t`` (for the last step, the gradient
of the returned final state) is multiplied by ``scale[t]``; the per-step outputs'
own gradients are not scaled. Forward values do not depend on it.

Under a mixed-precision policy (``tfcredit.precision``) only the matrix
products run in the layer's compute dtype; the gates, the cell state, the
carried state and the outputs are float32, so the state never makes a round trip
through 16 bits.

The arithmetic is Keras's ``LSTMCell`` / ``GRUCell`` (``reset_after=True``) with
their default activations; ``tests/models/test_fused.py`` checks outputs, final
states and every gradient against the Keras layers, with and without a scale.
"""

from typing import Optional, Tuple

import keras
import tensorflow as tf

from tfcredit import precision
from tfcredit import xla

# Windows up to this many steps (known when tracing) are unrolled into the graph.
STATIC_UNROLL_STEPS = 32
_SIGMOID = keras.activations.get('sigmoid')
_TANH = keras.activations.get('tanh')


def supports(layer) -> bool:
  """Whether ``layer`` is a Keras ``LSTM`` or ``GRU`` this module computes exactly."""
  cell = getattr(layer, 'cell', None)
  if isinstance(layer, keras.layers.LSTM):
    kinds_ok = True
  elif isinstance(layer, keras.layers.GRU):
    kinds_ok = bool(cell.reset_after)
  else:
    return False
  return (kinds_ok and cell.activation is _TANH and
          cell.recurrent_activation is _SIGMOID and cell.use_bias and
          not cell.dropout and not cell.recurrent_dropout and
          not layer.go_backwards)


def unroll_layer(layer, features: tf.Tensor, state: Tuple[tf.Tensor, ...],
                 scale: Optional[tf.Tensor] = None
                 ) -> Tuple[tf.Tensor, Tuple[tf.Tensor, ...]]:
  """Runs a Keras ``LSTM``/``GRU`` layer (``supports(layer)``) over ``features``.

  Args:
    layer: the layer; its weights are used (built here if needed).
    features: ``[B, T, D]``.
    state: the layer's state, ``(h, c)`` or ``(h,)``, each ``[B, U]``.
    scale: optional ``[T]`` or ``[B, T]`` gradient scale (see the module
      docstring).

  Returns:
    ``(outputs, new_state)``: outputs ``[B, T, U]`` if the layer returns
    sequences, else ``[B, U]`` (the last step's).
  """
  if not layer.built:
    layer.build(features.shape)
  cell = layer.cell
  compute = precision.compute_dtype(layer)
  matrix = lambda v: tf.cast(tf.convert_to_tensor(v), compute)
  vector = lambda v: tf.cast(tf.convert_to_tensor(v), tf.float32)
  state = precision.cast_state(state)
  time_major = tf.transpose(features, [1, 0, 2])
  if isinstance(layer, keras.layers.LSTM):
    projected = _project(time_major, matrix(cell.kernel), vector(cell.bias))
    outputs, h, c = _lstm(projected, state[0], state[1],
                          matrix(cell.recurrent_kernel),
                          _time_major_scale(scale, tf.float32))
    new_state = (h, c)
  else:
    input_bias, recurrent_bias = tf.unstack(vector(cell.bias))
    projected = _project(time_major, matrix(cell.kernel), input_bias)
    outputs, h = _gru(projected, state[0], matrix(cell.recurrent_kernel),
                      recurrent_bias, _time_major_scale(scale, tf.float32))
    new_state = (h,)
  if layer.return_sequences:
    return tf.transpose(outputs, [1, 0, 2]), new_state
  # The last output, not the final state: only the state's gradient is scaled.
  return outputs[-1], new_state


def _project(time_major, kernel, bias):
  """``x @ kernel + bias`` for every step at once: ``[T, B, G·U]``, in ``bias``'s
  dtype (the product in ``kernel``'s)."""
  shape = tf.shape(time_major)
  flat = tf.cast(tf.reshape(time_major, [-1, time_major.shape[-1]]), kernel.dtype)
  projected = tf.nn.bias_add(tf.cast(tf.matmul(flat, kernel), bias.dtype), bias)
  return tf.reshape(projected, tf.concat([shape[:2], [kernel.shape[-1]]], 0))


def _mm(a, b):
  """``a @ b`` in ``b``'s dtype (a weight's compute dtype), returned in ``a``'s."""
  return tf.cast(tf.matmul(tf.cast(a, b.dtype), b), a.dtype)


def _time_major_scale(scale, dtype):
  """``[T]`` or ``[B, T]`` -> ``[T, 1 or B, 1]``; None stays None."""
  if scale is None:
    return None
  scale = tf.cast(scale, dtype)
  if scale.shape.rank == 2:
    return tf.expand_dims(tf.transpose(scale), -1)
  return tf.reshape(scale, [-1, 1, 1])


def _matmul_over_time(a, b, dtype):
  """``sum_t a[t]^T @ b[t]`` for ``[T, B, M]`` and ``[T, B, N]``: ``[M, N]``,
  computed in ``dtype``."""
  flat = lambda x: tf.cast(tf.reshape(x, [-1, x.shape[-1]]), dtype)
  return tf.matmul(flat(a), flat(b), transpose_a=True)


def _shifted(sequence, first):
  """``[first, sequence[0], ..., sequence[T-2]]``: the state before each step."""
  return tf.concat([first[tf.newaxis], sequence[:-1]], 0)


def _scan(step, sequences, carry, num_outputs, reverse=False):
  """``carry, outputs_t = step(sequences[:][t], carry)`` for every ``t``.

  Args:
    step: ``(tuple of [B, ...] tensors, carry) -> (carry, tuple of outputs)``.
    sequences: time-major ``[T, ...]`` tensors (the same ``T``).
    carry: the initial carry (a tuple of tensors).
    num_outputs: how many outputs ``step`` returns (each of the carry's dtype).
    reverse: from the last step to the first.

  Returns:
    ``(final carry, tuple of stacked [T, ...] outputs)`` (in time order).

  A window whose length is known when tracing and at most ``STATIC_UNROLL_STEPS``
  is unrolled into the graph (no loop control flow, no tensor lists); longer or
  unknown lengths run a ``tf.while_loop``.
  """
  static_steps = sequences[0].shape[0]
  if static_steps is not None and static_steps <= STATIC_UNROLL_STEPS:
    per_step = [tf.unstack(sequence) for sequence in sequences]
    collected = [None] * static_steps
    order = range(static_steps - 1, -1, -1) if reverse else range(static_steps)
    for t in order:
      carry, collected[t] = step(tuple(values[t] for values in per_step), carry)
    return carry, tuple(tf.stack(outputs) for outputs in zip(*collected))
  steps = tf.shape(sequences[0])[0]
  inputs = [tf.TensorArray(s.dtype, size=steps).unstack(s) for s in sequences]
  arrays = tuple(tf.TensorArray(carry[0].dtype, size=steps)
                 for _ in range(num_outputs))

  def body(t, carry, arrays):
    carry, outputs = step(tuple(array.read(t) for array in inputs), carry)
    t_next = t - 1 if reverse else t + 1
    return t_next, carry, tuple(a.write(t, o) for a, o in zip(arrays, outputs))

  _, carry, arrays = tf.while_loop(
      (lambda t, *_: t >= 0) if reverse else (lambda t, *_: t < steps), body,
      (steps - 1 if reverse else tf.constant(0), carry, arrays))
  return carry, tuple(array.stack() for array in arrays)


def _lstm(projected, h0, c0, recurrent_kernel, scale):
  """LSTM over time-major ``projected`` (``[T, B, 4U]``, gates i, f, g, o)."""
  if scale is None:
    return _lstm_unscaled(projected, h0, c0, recurrent_kernel)
  return _lstm_scaled(projected, h0, c0, recurrent_kernel, scale)


def _lstm_forward(projected, h0, c0, recurrent_kernel):
  """The forward loop: outputs, final state, and what the backward loop reads."""

  def step(inputs, carry):
    h, c = carry
    z = inputs[0] + _mm(h, recurrent_kernel)
    z_i, z_f, z_g, z_o = tf.split(z, 4, axis=1)
    i, f, g, o = tf.sigmoid(z_i), tf.sigmoid(z_f), tf.tanh(z_g), tf.sigmoid(z_o)
    c = f * c + i * g
    tanh_c = tf.tanh(c)
    h = o * tanh_c
    return (h, c), (i, f, g, o, tanh_c, c, h)

  (h, c), (i, f, g, o, tanh_c, cells, outputs) = _scan(step, [projected], (h0, c0), 7)
  return outputs, h, c, (i, f, g, o, tanh_c, cells)


def _lstm_backward(scale, d_outputs, d_h, d_c, outputs, h, c, h0, c0, saved,
                   recurrent_kernel):
  """The backward loop: gradients of (projected, h0, c0, recurrent kernel)."""
  i, f, g, o, tanh_c, cells = saved
  d_outputs = _zeros_if_none(d_outputs, outputs)
  d_h, d_c = _zeros_if_none(d_h, h), _zeros_if_none(d_c, c)
  kernel_t = tf.transpose(recurrent_kernel)
  sequences = [i, f, g, o, tanh_c, _shifted(cells, c0), d_outputs]
  if scale is not None:
    sequences.append(scale)

  def step(inputs, carry):
    i, f, g, o, tanh_c, previous_cell, d_output = inputs[:7]
    d_h_next, d_c_next = carry
    if scale is not None:
      d_h_next, d_c_next = inputs[7] * d_h_next, inputs[7] * d_c_next
    d_h = d_output + d_h_next
    d_c = d_c_next + d_h * o * (1 - tanh_c * tanh_c)
    # sigmoid' = s(1 − s), tanh' = 1 − t².
    dz = tf.concat([d_c * g * i * (1 - i), d_c * previous_cell * f * (1 - f),
                    d_c * i * (1 - g * g), d_h * tanh_c * o * (1 - o)], 1)
    return (_mm(dz, kernel_t), d_c * f), (dz,)

  (d_h0, d_c0), (dz,) = _scan(step, sequences, (d_h, d_c), 1, reverse=True)
  d_kernel = _matmul_over_time(_shifted(outputs, h0), dz, recurrent_kernel.dtype)
  return dz, d_h0, d_c0, d_kernel


@tf.custom_gradient
def _lstm_unscaled(projected, h0, c0, recurrent_kernel):
  outputs, h, c, saved = _loop(_lstm_forward, recurrent_kernel, projected)(
      projected, h0, c0, recurrent_kernel)

  def grad(d_outputs, d_h, d_c):
    with tf.name_scope('lstm_backward'):
      return _loop(_lstm_backward, recurrent_kernel, outputs)(
          None, d_outputs, d_h, d_c, outputs, h, c, h0, c0, saved,
          recurrent_kernel)

  return (outputs, h, c), grad


@tf.custom_gradient
def _lstm_scaled(projected, h0, c0, recurrent_kernel, scale):
  outputs, h, c, saved = _loop(_lstm_forward, recurrent_kernel, projected)(
      projected, h0, c0, recurrent_kernel)

  def grad(d_outputs, d_h, d_c):
    with tf.name_scope('lstm_backward'):
      return _loop(_lstm_backward, recurrent_kernel, outputs)(
          scale, d_outputs, d_h, d_c, outputs, h, c, h0, c0, saved,
          recurrent_kernel) + (None,)

  return (outputs, h, c), grad


def _gru(projected, h0, recurrent_kernel, recurrent_bias, scale):
  """GRU (``reset_after``) over time-major ``projected`` (``[T, B, 3U]``: z, r, h)."""
  if scale is None:
    return _gru_unscaled(projected, h0, recurrent_kernel, recurrent_bias)
  return _gru_scaled(projected, h0, recurrent_kernel, recurrent_bias, scale)


def _gru_forward(projected, h0, recurrent_kernel, recurrent_bias):
  units = recurrent_kernel.shape[0]

  def step(inputs, carry):
    (h,) = carry
    x_zr, x_h = tf.split(inputs[0], [2 * units, units], axis=1)
    a = tf.nn.bias_add(_mm(h, recurrent_kernel), recurrent_bias)
    a_zr, a_h = tf.split(a, [2 * units, units], axis=1)
    zr = tf.sigmoid(x_zr + a_zr)
    z, r = tf.split(zr, 2, axis=1)
    n = tf.tanh(x_h + r * a_h)
    h = n + z * (h - n)
    return (h,), (zr, n, a_h, h)

  (h,), (gates, candidates, recurrent_h, outputs) = _scan(step, [projected], (h0,), 4)
  return outputs, h, gates, candidates, recurrent_h


def _gru_backward(scale, d_outputs, d_h, outputs, h, h0, gates, candidates,
                  recurrent_h, recurrent_kernel):
  """Gradients of (projected, h0, recurrent kernel, recurrent bias)."""
  d_outputs = _zeros_if_none(d_outputs, outputs)
  d_h = _zeros_if_none(d_h, h)
  previous = _shifted(outputs, h0)
  kernel_t = tf.transpose(recurrent_kernel)
  sequences = [gates, candidates, recurrent_h, previous, d_outputs]
  if scale is not None:
    sequences.append(scale)

  def step(inputs, carry):
    zr, n, a_h, h_previous, d_output = inputs[:5]
    (d_h_next,) = carry
    if scale is not None:
      d_h_next = inputs[5] * d_h_next
    z, r = tf.split(zr, 2, axis=1)
    d_h = d_output + d_h_next
    d_n = d_h * (1 - z) * (1 - n * n)
    d_zr = tf.concat([d_h * (h_previous - n), d_n * a_h], 1) * zr * (1 - zr)
    d_a = tf.concat([d_zr, d_n * r], 1)
    d_previous = d_h * z + _mm(d_a, kernel_t)
    return (d_previous,), (tf.concat([d_zr, d_n], 1), d_a)

  (d_h0,), (dx, d_a) = _scan(step, sequences, (d_h,), 2, reverse=True)
  return (dx, d_h0, _matmul_over_time(previous, d_a, recurrent_kernel.dtype),
          tf.reduce_sum(d_a, axis=[0, 1]))


@tf.custom_gradient
def _gru_unscaled(projected, h0, recurrent_kernel, recurrent_bias):
  outputs, h, *saved = _loop(_gru_forward, recurrent_kernel, projected)(
      projected, h0, recurrent_kernel, recurrent_bias)

  def grad(d_outputs, d_h):
    with tf.name_scope('gru_backward'):
      return _loop(_gru_backward, recurrent_kernel, outputs)(
          None, d_outputs, d_h, outputs, h, h0, *saved, recurrent_kernel)

  return (outputs, h), grad


@tf.custom_gradient
def _gru_scaled(projected, h0, recurrent_kernel, recurrent_bias, scale):
  outputs, h, *saved = _loop(_gru_forward, recurrent_kernel, projected)(
      projected, h0, recurrent_kernel, recurrent_bias)

  def grad(d_outputs, d_h):
    with tf.name_scope('gru_backward'):
      return _loop(_gru_backward, recurrent_kernel, outputs)(
          scale, d_outputs, d_h, outputs, h, h0, *saved,
          recurrent_kernel) + (None,)

  return (outputs, h), grad


_COMPILED = {}


def _loop(function, recurrent_kernel, sequence):
  """``function`` (a forward or backward loop over the time-major ``sequence``),
  compiled by XLA where ``xla.parts_compile()`` says so, for float32 weights;
  read when the caller is traced, one compiled function per loop (XLA compiles
  it for each window shape it meets). XLA fuses the gate arithmetic, which is
  slow as separate kernels on a CPU. Run eagerly, only a window that ``_scan``
  unrolls is compiled: under a tape, an eager call of a compiled
  ``tf.while_loop`` would hand its tensor lists out of XLA, which TensorFlow
  does not support."""
  steps = sequence.shape[0]
  unrolled = steps is not None and steps <= STATIC_UNROLL_STEPS
  if (recurrent_kernel.dtype != tf.float32
      or not (unrolled or not tf.executing_eagerly())
      or not xla.parts_compile()):
    return function
  if function not in _COMPILED:
    _COMPILED[function] = tf.function(function, jit_compile=True)
  return _COMPILED[function]


def _zeros_if_none(gradient, like):
  return tf.zeros_like(like) if gradient is None else gradient

"""Exact BPTT over a window in memory about ``sqrt(T)``: gradient checkpointing.

Chen et al. 2016 ("Training deep nets with sublinear memory cost") and Gruslys
et al. 2016 ("Memory-efficient backpropagation through time"), as
``TruncatedBPTT.checkpoint_every`` (and ``BPTT``'s) uses it. A window of ``T``
steps is cut into chunks of ``c = checkpoint_every`` steps (the last may be
shorter). The forward pass runs the chunks without a tape and keeps only the
state at each chunk's start (``ceil(T / c)`` states). The backward pass takes
the chunks last to first: it runs the chunk again from its stored state under a
tape, with the chunk's per-step losses (so its activations and logits live
only while that chunk is differentiated), and differentiates the chunk's
objective plus ``<final state, gradient arriving at it>`` with respect to the
weights and the chunk's initial state; that state gradient goes to the chunk
before. Peak memory holds ``T / c`` states and one chunk's activations, so
``c ≈ sqrt(T)`` gives about ``2·sqrt(T)`` steps' worth instead of ``T``; the
cost is one more forward pass of the core.

The gradient is plain BPTT's: the objective is the sum of the chunks' (the loss
convention divides each step's loss by the batch and the nominal window,
``Method.objective``), and a terminal loss is read in the last chunk only.

Randomness: every seed generator of the model (``keras.layers.Dropout``'s, a
cell's own dropout) is read at each chunk's start in the forward pass and set
back to that value before the chunk runs again, so the recomputation draws the
forward pass's masks; after the backward pass the generators hold the value the
forward pass left. With ``RecurrentModel.dropout`` the forward pass also runs the
head (the head's dropout draw must not take a seed the next chunk uses). The masks are drawn per
chunk, so they differ from plain BPTT's (drawn per window) unless the window is
one chunk; the gradient is exact for the masks used.

Gradients come back dense (an embedding's too): they are summed over chunks
inside a loop.
"""

from typing import List

import tensorflow as tf

from tfcredit.methods.replicas import densify


def random_state_variables(model) -> List[tf.Variable]:
  """The model's seed-generator states: its variables that are not weights."""
  weights = {id(v) for v in model.weights}
  return [v for v in model.variables if id(v) not in weights]


def chunk_ends(length, every: int) -> tf.Tensor:
  """Ends of consecutive chunks of ``every`` steps covering ``[0, length)``."""
  return tf.minimum(tf.range(every, length + every, every), length)


def _arrays(values, size):
  return [tf.TensorArray(v.dtype, size=size, element_shape=v.shape)
          for v in values]


def forward_checkpoints(model, inputs, state, ends, rng, readout: bool):
  """Runs the window forward chunk by chunk, without gradient.

  Returns:
    ``(states, seeds, final_state)``: ``states`` and ``seeds`` are lists of
    ``TensorArray``s (one per flat state tensor, one per seed generator) whose
    element ``k`` is the value at chunk ``k``'s start.
  """
  count = tf.shape(ends)[0]
  flat = tf.nest.flatten(state)

  def body(index, flat, states, seeds):
    states = [a.write(index, s) for a, s in zip(states, flat)]
    seeds = [a.write(index, tf.identity(v.value)) for a, v in zip(seeds, rng)]
    start = tf.where(index > 0, ends[tf.maximum(index - 1, 0)], 0)
    _, new_state = model.unroll(inputs[:, start:ends[index]],
                                tf.nest.pack_sequence_as(state, flat),
                                training=True, readout=readout)
    new_flat = [tf.stop_gradient(s) for s in tf.nest.flatten(new_state)]
    return index + 1, new_flat, states, seeds

  _, flat, states, seeds = tf.while_loop(
      lambda index, *_: index < count, body,
      (tf.constant(0), flat, _arrays(flat, count),
       _arrays([tf.identity(v.value) for v in rng], count)))
  return states, seeds, tf.nest.pack_sequence_as(state, flat)


def window_gradients(method, inputs, targets, state, normalizer, every: int):
  """``(gradients, final_state, loss_sum)`` of one window, as
  ``Method._window_gradients_parts`` returns them, by checkpointed BPTT with
  chunks of ``every`` steps (the module docstring); the gradients are dense."""
  model = method.model
  variables = method.model_variables
  rng = random_state_variables(model)
  ends = chunk_ends(tf.shape(inputs)[1], every)
  count = tf.shape(ends)[0]
  # The head's dropout draws a seed too: the forward pass draws it (as its
  # recomputation does) rather than leave it to the next chunk's first draw.
  states, seeds, final_state = forward_checkpoints(
      model, inputs, state, ends, rng, readout=bool(model.rng_variables()))
  after_forward = [tf.identity(v.value) for v in rng]
  terminal = model.readout == 'terminal'

  def chunk(index, state_gradients, with_loss: bool):
    """The chunk's ``(weight gradients, gradients of its initial state,
    loss_sum)``, given the gradients arriving at its final state."""
    for variable, array in zip(rng, seeds):
      variable.assign(array.read(index))
    start = tf.where(index > 0, ends[tf.maximum(index - 1, 0)], 0)
    end = ends[index]
    initial = [array.read(index) for array in states]
    with tf.GradientTape() as tape:
      tape.watch(initial)
      outputs, new_state = model.unroll(
          inputs[:, start:end], tf.nest.pack_sequence_as(state, initial),
          training=True, readout=with_loss)
      target = tf.add_n([tf.reduce_sum(s * g) for s, g in zip(
          tf.nest.flatten(new_state), state_gradients)])
      loss_sum = tf.constant(0.0)
      if with_loss:
        objective, loss_sum = method.objective(
            outputs, method.window_targets(targets, start, end), normalizer)
        target += objective
    gradients, initial_gradients = method.gradient(tape, target,
                                                   (variables, initial))
    # No loss in the chunk: no gradient for the head.
    initial_gradients = [tf.zeros_like(s) if g is None else g
                         for g, s in zip(initial_gradients, initial)]
    return densify(gradients, variables), initial_gradients, loss_sum

  def body(index, state_gradients, totals, loss_total):
    gradients, state_gradients, loss_sum = chunk(index, state_gradients,
                                                 with_loss=not terminal)
    totals = [t + g for t, g in zip(totals, gradients)]
    return index - 1, state_gradients, totals, loss_total + loss_sum

  zero_state = [tf.zeros_like(s) for s in tf.nest.flatten(final_state)]
  if terminal:  # The loss is read at the last step: in the last chunk only.
    totals, state_gradients, loss_sum = chunk(count - 1, zero_state, True)
  else:
    totals = [tf.zeros_like(v) for v in variables]
    state_gradients, loss_sum = zero_state, tf.constant(0.0)
  first = count - 2 if terminal else count - 1
  # One chunk at a time: a chunk's recomputation does not wait for the later
  # chunk's state gradient, so parallel iterations would hold several chunks'
  # activations at once (measured: the peak then grew with the chunk length).
  _, _, totals, loss_sum = tf.while_loop(
      lambda index, *_: index >= 0, body,
      (first, state_gradients, totals, loss_sum), parallel_iterations=1)
  for variable, value in zip(rng, after_forward):
    variable.assign(value)
  return totals, final_state, loss_sum

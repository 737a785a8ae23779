"""The blocked layout of target propagation: blocks, boundary slots, their storage.

Used by ``tfcredit.methods.target_prop``. An update covers ``m`` consecutive
blocks of ``R`` stream columns, run as ONE batched unroll: inputs ``[R, m·B]``
become ``[m·R, B]`` (``to_blocks``, block-major). The free variables of an update
are ``m + 1`` slots per state tensor, ``[m + 1, R, units]``: slot ``s`` is the
state at the update's boundary ``s`` (before block ``s``; slot ``m`` after the
last block). ``Layout`` says which slots are free, optimised and measured; a
``BoundaryStore`` holds per-boundary rows of a whole training stream.
"""

from typing import NamedTuple, Optional

import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.tasks import base as task_base

# Torch's optim.adagrad (the authors' code): accumulators start at 0.
ADAGRAD_EPSILON = 1e-10


def to_blocks(values, blocks, block_length):
  """``[R, m·B, ...]`` → ``[m·R, B, ...]``: block ``b`` of row ``r`` is row ``b·R + r``."""
  shape = tf.shape(values)
  rest = shape[2:]
  values = tf.reshape(values, tf.concat([[shape[0], blocks, block_length], rest], 0))
  rank = values.shape.rank
  values = tf.transpose(values, [1, 0] + list(range(2, rank)))
  return tf.reshape(values, tf.concat([[blocks * shape[0], block_length], rest], 0))


def check_task(task, block_size: int, mode: str, duals: str, stored_duals: bool,
               batch_size: Optional[int]) -> None:
  """Refuses a task the blocked layout cannot serve, naming the setting."""
  if task.masked:
    raise ConfigurationError(
        f'TargetProp cannot train task {task.name!r}: its sequences have '
        'different lengths, and the blocked layout\'s state targets are not '
        'held through padded steps; use truncated BPTT, ARTBP or RTRL, or '
        'sequences of one length')
  if task.readout != task_base.PER_STEP:
    raise ConfigurationError(
        f'TargetProp needs per-step losses; task {task.name!r} has a '
        f'{task.readout!r} readout: use truncated BPTT or ARTBP for it')
  if task.regime == task_base.EPISODIC:
    sequence_length = task.batch('train', 0, 0, 1)[0].shape[1]
    if sequence_length % block_size:
      raise ConfigurationError(
          f'TargetProp.block_size={block_size} does not divide the '
          f'sequence length {sequence_length} of task {task.name!r}: every '
          'window must be a whole number of blocks; choose a divisor')
  if stored_duals and task.regime != task_base.STREAM:
    raise ConfigurationError(
        f"TargetProp mode={mode!r}, duals={duals!r} keeps variables "
        f'for a training stream; task {task.name!r} is episodic: use '
        "mode='minibatch', duals='per_minibatch'")
  if stored_duals and batch_size is None:
    raise ConfigurationError(
        f"TargetProp mode={mode!r}, duals={duals!r} needs batch_size "
        '(the trainer passes train.batch_size): pass batch_size=')


def update_ends(length, span: int, block_size: int):
  """Ends of a segment's updates: of ``span`` steps; then the remaining whole
  blocks; then (a stream's end) a last block shorter than ``block_size``."""
  full = tf.range(1, length // span + 1) * span
  last_full = (length // span) * span
  whole = last_full + ((length - last_full) // block_size) * block_size
  extra = tf.boolean_mask(tf.stack([whole, length]),
                          tf.stack([whole > last_full, length > whole]))
  return tf.concat([full, extra], axis=0)


def forward_states(model, inputs, carried, blocks, block_length):
  """The sequential states at the ``blocks + 1`` boundaries, ``[m + 1, R, u]``
  (final states only: a language model's readout would dominate the cost)."""
  arrays = tf.nest.map_structure(
      lambda s: tf.TensorArray(tf.float32, size=blocks + 1).write(0, s), carried)

  def step(index, state, arrays):
    start = index * block_length
    _, state = model.unroll(inputs[:, start:start + block_length], state,
                            training=True, readout=False)
    state = tf.nest.map_structure(tf.stop_gradient, state)
    arrays = tf.nest.map_structure(lambda a, s: a.write(index + 1, s),
                                   arrays, state)
    return index + 1, state, arrays

  with tf.name_scope('target_prop_forward'):  # (tfcredit-profile's category)
    _, _, arrays = tf.while_loop(lambda index, *_: index < blocks, step,
                                 (tf.constant(0), carried, arrays))
    return tf.nest.map_structure(lambda a: a.stack(), arrays)


class Layout(NamedTuple):
  """One update's blocks and the roles of its ``blocks + 1`` boundary slots.

  ``active``: slots whose constraint is in Eq. 7 (weights 0/1); ``optimized``:
  slots the H-steps move; ``measured``: constraints whose ``ĥ`` is computed in
  this update (dual steps and metrics count each boundary once); ``rows`` (stream
  boundary indices of the slots) and ``valid`` (those inside the stored stream).
  """
  blocks: tf.Tensor
  block_length: tf.Tensor
  rows: tf.Tensor
  x: tf.Tensor
  y: tf.Tensor
  boundary_rows: tf.Tensor
  valid: tf.Tensor
  active: tf.Tensor
  optimized: tf.Tensor
  measured: tf.Tensor


def layout(inputs, targets, first_block, block_size, num_boundaries,
           stored_states: bool) -> Layout:
  """The ``Layout`` of an update over ``inputs`` ``[R, m·B]`` whose first block
  is block ``first_block`` of the stream (or one short block at its end)."""
  width = tf.shape(inputs)[1]
  block_length = tf.minimum(block_size, width)
  blocks = width // block_length
  boundary_rows = first_block - 1 + tf.range(tf.cast(blocks, tf.int64) + 1)
  valid = tf.logical_and(boundary_rows >= 0, boundary_rows < num_boundaries)
  interior = tf.concat([[0.0], tf.ones([blocks - 1]), [0.0]], axis=0)
  if stored_states:
    first_free = tf.cast(first_block > 0, tf.float32)
    next_active = tf.cast(valid[-1], tf.float32)
    active = interior + tf.concat([[first_free], tf.zeros([blocks])], 0)
    active += tf.concat([tf.zeros([blocks]), [next_active]], 0)
    optimized = active - tf.concat([tf.zeros([blocks]), [next_active]], 0)
  else:
    active = optimized = interior
  measured = active * tf.concat([[0.0], tf.ones([blocks])], 0)
  return Layout(blocks, block_length, tf.shape(inputs)[0],
                to_blocks(inputs, blocks, block_length),
                to_blocks(targets, blocks, block_length), boundary_rows, valid,
                active, optimized, measured)


class BoundaryStore:
  """Rows of per-boundary variables of a training stream (``[N, R, units]`` per
  state tensor), read and written by the update that contains them."""

  def __init__(self, num_boundaries: int):
    self.num_boundaries = num_boundaries

  def variables(self, spec, batch_size, name, trainable):
    return tf.nest.map_structure(
        lambda s: tf.Variable(
            tf.zeros([self.num_boundaries, batch_size, s.shape[-1]]),
            trainable=trainable, name=name), spec)

  def gather(self, variables, rows, valid):
    """Rows of stream variables (zero where ``valid`` is false)."""
    if self.num_boundaries == 0:
      return tf.nest.map_structure(
          lambda v: tf.zeros(tf.concat([tf.shape(rows), tf.shape(v)[1:]], 0)),
          variables)
    safe = tf.clip_by_value(rows, 0, self.num_boundaries - 1)
    mask = tf.reshape(tf.cast(valid, tf.float32), [-1, 1, 1])
    return tf.nest.map_structure(lambda v: tf.gather(v, safe) * mask, variables)

  def scatter(self, variables, rows, valid, values):
    if self.num_boundaries == 0:
      return
    indices = tf.expand_dims(tf.boolean_mask(rows, valid), 1)
    tf.nest.map_structure(
        lambda v, x: v.scatter_nd_update(indices, tf.boolean_mask(x, valid)),
        variables, values)


def constraints(free, predicted, duals, weights, penalty):
  """``((λ/2)·Σ w‖h − ĥ + u‖², Σ w‖h − ĥ‖²)`` over the weighted slots."""
  weights = tf.reshape(weights, [-1, 1, 1])
  flat = list(zip(tf.nest.flatten(free), tf.nest.flatten(predicted),
                  tf.nest.flatten(duals)))
  total = tf.add_n([tf.reduce_sum(weights * tf.square(h - p + u))
                    for h, p, u in flat])
  violation = tf.add_n([tf.reduce_sum(weights * tf.square(h - p))
                        for h, p, _ in flat])
  return 0.5 * penalty * total, violation


def h_step(free, gradients, accumulators, optimized, optimizer: str,
           learning_rate: float, skip_non_finite: bool):
  """One step of the H-optimizer (``'sgd'`` or ``'adagrad'``) on the optimised
  slots; ``skip_non_finite`` (``mixed_float16``): an overflowed step moves
  nothing. Returns ``(free, accumulators)``."""
  mask = tf.reshape(optimized, [-1, 1, 1])
  if skip_non_finite:
    finite = tf.math.is_finite(tf.linalg.global_norm(tf.nest.flatten(gradients)))
    gradients = tf.nest.map_structure(
        lambda g: tf.where(finite, g, tf.zeros_like(g)), gradients)
  gradients = tf.nest.map_structure(lambda g: g * mask, gradients)
  if optimizer == 'sgd':
    free = tf.nest.map_structure(lambda h, g: h - learning_rate * g,
                                 free, gradients)
    return free, accumulators
  accumulators = tf.nest.map_structure(lambda a, g: a + tf.square(g),
                                       accumulators, gradients)
  free = tf.nest.map_structure(
      lambda h, g, a: h - learning_rate * g / (tf.sqrt(a) + ADAGRAD_EPSILON),
      free, gradients, accumulators)
  return free, accumulators

"""The window loop every method shares: consecutive windows of a segment in one
``tf.while_loop``, a forward-only prefix, and where a terminal loss starts.

A base class of ``tfcredit.methods.base.Method``: it reads the method's ``model``,
``task`` and ``replicas``.
"""

import tensorflow as tf

from tfcredit.tasks import base as task_base


class WindowLoop:
  """``for_each_window`` and its helpers (see the module docstring)."""

  def forward(self, inputs, state):
    """Runs a window forward only (no gradient): for windows with no loss."""
    return tf.nest.map_structure(
        tf.stop_gradient, self.model.unroll(inputs, state, training=True)[1])

  @staticmethod
  def fixed_window_ends(length, window) -> tf.Tensor:
    """Ends of consecutive windows of ``window`` steps covering ``[0, length)``."""
    return tf.minimum(tf.range(window, length + window, window), length)

  def for_each_window(self, segment, carried, window_ends, body, accumulators,
                      first_window=0, gather: bool = True):
    """Runs ``body`` over consecutive windows in one ``tf.while_loop``.

    Args:
      segment: global ``(inputs, targets)``.
      carried: the global state at the segment's start (or a nest whose tensors
        all have the batch as first axis: DNI carries its synthesizer memory).
      window_ends: ``[num_windows]`` int32, increasing, last == segment length.
      body: ``(index, segment, carried, start, end, accumulators) -> (carried,
        accumulators)``, called in the cross-replica context: ``segment`` and
        ``carried`` are per-replica values (plain tensors with one replica), to
        be used through ``run_window``; accumulators are plain tensors.
      accumulators: a nest of tensors carried through the loop.
      first_window: windows before this one only run forward (no loss there:
        the terminal-loss case); ``carried`` is then the model state.
      gather: return ``carried`` as global tensors (else per replica).

    Returns:
      ``(carried, accumulators)``.
    """
    segment, carried = self.replicas.shard(segment), self.replicas.shard(carried)
    first_window = tf.convert_to_tensor(first_window)
    if tf.get_static_value(first_window) != 0:  # Else there is no prefix.
      prefix_end = tf.where(first_window > 0,
                            window_ends[tf.maximum(first_window - 1, 0)], 0)
      carried = self.forward_prefix(segment, carried, prefix_end)
    num_windows = tf.shape(window_ends)[0]

    def loop_body(index, carried, accumulators):
      start = tf.where(index > 0, window_ends[tf.maximum(index - 1, 0)], 0)
      carried, accumulators = body(index, segment, carried, start,
                                   window_ends[index], accumulators)
      return index + 1, carried, accumulators

    _, carried, accumulators = tf.while_loop(
        lambda index, *_: index < num_windows, loop_body,
        (first_window, carried, accumulators))
    if gather:
      carried = self.replicas.unshard(carried)
    return carried, accumulators

  def forward_prefix(self, segment, state, end):
    """Runs steps ``[0, end)`` forward only, per replica (nothing when ``end`` is 0)."""
    def prefix(segment, state):
      return tf.cond(end > 0, lambda: self.forward(segment[0][:, :end], state),
                     lambda: state)
    return self.replicas.run(prefix, segment, state)

  def first_loss_window(self, window_ends):
    """Index of the first window with loss: the last one for terminal losses."""
    if self.task.readout == task_base.TERMINAL:
      return tf.shape(window_ends)[0] - 1
    return 0

"""Running a method's windows on every replica (docs/design.md, "Distribution").

The windows of a segment loop in the cross-replica context; each window's forward
and backward pass runs per replica (``Replicas.run``), the results are summed over
the replicas (``Replicas.sum``) and the update is applied once. Every objective is
divided by the GLOBAL batch, so the sum is the global-batch gradient and one
replica or several give the same update. (An optimizer step inside a
``tf.while_loop`` that runs in the replica context would need a ``merge_call``,
which TensorFlow forbids there.) With one replica these are plain calls.

Also the gradient-list helpers every method uses: ``coalesce``, ``densify`` and
``zeros_like_variables``.
"""

import tensorflow as tf


class Replicas:
  """The current distribution strategy's replicas, seen from one method."""

  def __init__(self):
    self.strategy = tf.distribute.get_strategy()
    self.count = self.strategy.num_replicas_in_sync

  def run(self, function, *args):
    """Runs ``function(*args)`` on every replica (``args`` may be per-replica)."""
    if self.count == 1:
      return function(*args)
    return self.strategy.run(function, args=args)

  def sum(self, values):
    """Sums per-replica values (a nest) over the replicas."""
    if self.count == 1:
      return values
    return tf.nest.map_structure(
        lambda value: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value,
                                           axis=None), values)

  def shard(self, values):
    """Splits the rows (batch axis) of a global nest evenly over the replicas."""
    if self.count == 1:
      return values

    def local(values):
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      def rows(value):
        size = tf.shape(value)[0] // self.count
        return value[replica * size:(replica + 1) * size]
      return tf.nest.map_structure(rows, values)
    return self.strategy.run(local, args=(values,))

  def unshard(self, values):
    """Concatenates per-replica rows back into global tensors."""
    if self.count == 1:
      return values
    return tf.nest.map_structure(lambda v: self.strategy.gather(v, axis=0), values)


def coalesce(gradient):
  """Sums the rows of ``IndexedSlices`` that share an index; dense unchanged."""
  if not isinstance(gradient, tf.IndexedSlices):
    return gradient
  indices, positions = tf.unique(gradient.indices)
  values = tf.math.unsorted_segment_sum(gradient.values, positions,
                                        tf.shape(indices)[0])
  return tf.IndexedSlices(values, indices, gradient.dense_shape)


def zeros_like_variables(variables) -> list:
  """Dense zero accumulators for gradient sums over windows."""
  return [tf.zeros_like(v) for v in variables]


def densify(gradients, variables) -> list:
  """Converts ``IndexedSlices`` (embedding gradients) to dense tensors; None -> 0."""
  return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
          for g, v in zip(gradients, variables)]

"""Running a method's windows on every replica (docs/design.md, "Distribution").

The windows of a segment loop in the cross-replica context; each window's forward
and backward pass runs per replica (``Replicas.run``), the results are summed over
the replicas and the update is applied once. Gradients are summed onto the
variables' devices (``Replicas.sum_onto``: one copy on every replica's device, as
``MirroredStrategy`` reduces for its own updates; dense, embedding gradients
included) and each device applies its copy (``Replicas.apply``); other
results (losses, counts) go to the host (``Replicas.sum``). Every objective is
divided by the GLOBAL batch, so the sum is the global-batch gradient and one
replica or several give the same update. (An optimizer step inside a
``tf.while_loop`` that runs in the replica context would need a ``merge_call``,
which TensorFlow forbids there.) With one replica these are plain calls.

Also the gradient-list helpers every method uses: ``coalesce``, ``densify`` and
``zeros_like_variables``.
"""

from typing import Optional

import keras
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

  def sum_onto(self, gradients, variables) -> list:
    """Sums per-replica gradients over the replicas onto ``variables``' devices.

    Returns one mirrored value per variable, with a copy of the sum on every
    replica's device (never on the host). How: the strategy's own collective
    all-reduce across workers; NCCL across local GPUs (``MirroredStrategy``'s
    choice there); on local CPU devices one replica's device sums and copies
    the sum to the others, because the collective all-reduce that
    ``MirroredStrategy`` picks there fails inside the window loop (a shape
    mismatch between the replicas' collective instances, TF 2.21).
    """
    if self.count == 1:
      return list(gradients)
    pairs = [(gradient, _tf_variable(variable))
             for gradient, variable in zip(gradients, variables)]
    sum_op = tf.distribute.ReduceOp.SUM
    if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      return self.strategy.extended.batch_reduce_to(sum_op, pairs)
    devices = self.strategy.extended.worker_devices
    if all(tf.DeviceSpec.from_string(d).device_type == 'GPU' for d in devices):
      return tf.distribute.NcclAllReduce().batch_reduce(sum_op, pairs)
    return tf.distribute.ReductionToOneDevice(reduce_to_device=None).batch_reduce(
        sum_op, pairs)

  def first(self, value):
    """One replica's copy of a value from ``sum_onto`` (all copies are equal)."""
    if self.count == 1:
      return value
    return self.strategy.experimental_local_results(value)[0]

  def apply(self, optimizer: keras.optimizers.Optimizer, gradients, variables,
            scale: Optional[tf.Tensor] = None) -> None:
    """``optimizer.apply(scale · gradients, variables)`` from ``sum_onto``'s
    values: each device updates its copy of every variable (and of its slots)
    from its own copy of the gradient, as ``optimizer.apply`` does under
    ``MirroredStrategy`` (``update_step`` per variable, then the step count).

    Only for optimizers ``applies_per_variable`` accepts, and dense gradients;
    ``scale`` (the clipping factor, a scalar) multiplies every gradient.
    """
    learning_rate = optimizer.learning_rate

    def update(variable, gradient):
      if scale is not None:
        gradient = gradient * scale
      return optimizer.update_step(gradient, variable, learning_rate)

    for gradient, variable in zip(gradients, variables):
      self.strategy.extended.update(_tf_variable(variable), update,
                                    args=(gradient,), group=False)
    optimizer.iterations.assign_add(1)

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


def _tf_variable(variable):
  """The ``tf.Variable`` (mirrored under a strategy) behind a Keras variable."""
  return variable.value if isinstance(variable, keras.Variable) else variable


def applies_per_variable(optimizer: keras.optimizers.Optimizer, variables) -> bool:
  """Whether ``optimizer.apply`` amounts to ``update_step`` per variable and one
  step count, so ``Replicas.apply`` may run it on each device: no clipping,
  weight decay, moving average, gradient accumulation or loss scaling configured
  on the optimizer, no variable constraints, and ``apply`` not overridden."""
  return (type(optimizer).apply is keras.optimizers.Optimizer.apply
          and optimizer.clipnorm is None and optimizer.clipvalue is None
          and optimizer.global_clipnorm is None and not optimizer.weight_decay
          and not optimizer.use_ema and not optimizer.gradient_accumulation_steps
          and optimizer.loss_scale_factor is None
          and all(getattr(v, 'constraint', None) is None for v in variables))


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

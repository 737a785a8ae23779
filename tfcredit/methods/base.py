"""The method contract: how credit reaches the weights (docs/design.md, "Method").

A method is bound to a model, a task (its loss) and an optimizer. It offers

* ``train_segment(segment, state) -> (state, metrics)``: consume one segment (an
  episodic batch, or a stream slice of ``segment_length()`` steps), cut it into
  windows, apply its parameter updates, return the carried state and summed metrics;
* ``estimate_gradients(segment, state) -> (gradients, state)``: the method's estimate
  of the gradient of the segment's total loss, ``∇θ (1/B)·Σ_t ℓ_t`` for per-step
  losses or ``∇θ mean_b ℓ_b`` for terminal ones, at the current weights and without
  applying it. Estimates of different methods are directly comparable (the scale
  does not depend on any window length).

Both are compiled once each with ``tf.function`` and an input signature whose batch
and time dimensions are ``None``: a run traces each function once, whatever the
window lengths (``trace_counts`` counts the traces). The windows of a segment run in
one ``tf.while_loop``, so one host call does several windows.

Loss convention: a window's training objective is the sum of its per-step losses
divided by ``batch size × nominal window length`` (never the actual length, which
would reweight random windows), or the batch mean of a terminal loss.

A new method is one subclass: implement ``_train_segment`` and
``_estimate_gradients`` (usually with ``_for_each_window``), and keep any state of
its own (synthesizers, hidden-state variables, running averages) as attributes, so
``tf.train.Checkpoint(method=...)`` saves it.
"""

import collections
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from tfcredit import precision
from tfcredit import validation
from tfcredit.errors import ConfigurationError
# How the trainer combines a metric over the training calls of one summary
# interval (``Method.metric_reductions``), and the metrics every method returns.
from tfcredit.metrics import (BASE_METRICS, CONCAT, LAST, MAX,  # pylint: disable=unused-import
                              NON_FINITE_METRIC, SUM)
from tfcredit.tasks import base as task_base

Metrics = Dict[str, tf.Tensor]

# Added under ``mixed_float16``: windows skipped because the scaled backward
# pass overflowed (the loss scale was halved; not a divergence), and the scale.
OVERFLOW_METRIC = 'loss_scale_overflows'
LOSS_SCALE_METRIC = 'loss_scale'


class _NonFiniteCounter:
  """Holds the non-finite guard's counter. A plain object, not a trackable one,
  so the counter stays out of checkpoints (it is reset at every call, and
  checkpoints written before it existed still restore)."""

  def __init__(self):
    self.variable = tf.Variable(
        0.0, trainable=False, name='non_finite_windows',
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class Method(tf.Module):
  """Base class of the credit-assignment methods.

  Responsibilities: compile ``train_segment`` and ``estimate_gradients`` once;
  compute window objectives by the shared loss convention; clip and apply
  gradients; loop over the windows of a segment inside the graph.
  """

  def __init__(self, *, model: keras.Model, task: task_base.Task,
               optimizer: keras.optimizers.Optimizer,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               jit_compile: bool = False, name: Optional[str] = None):
    """Binds the method.

    Args:
      model: a built ``RecurrentModel``.
      task: the task whose ``losses`` define the objective.
      optimizer: a Keras optimizer, built on the model's trainable variables.
      clip_norm: global-norm gradient clipping threshold, or None for none.
      use_tf_function: compile the segment functions (turn off to debug eagerly).
      jit_compile: compile each window's forward and backward pass
        (``window_gradients``) with XLA, once per window shape: element-wise
        gate arithmetic fused into few kernels. Results match the uncompiled
        pass to float tolerance, not bit for bit.
      name: module name.
    """
    super().__init__(name=name)
    if clip_norm is not None and not clip_norm > 0:
      raise ConfigurationError(
          f'clip_norm must be positive or None, got {clip_norm!r}: use None to '
          'disable clipping')
    self.model = model
    self.task = task
    self.optimizer = optimizer
    self.clip_norm = clip_norm
    self.strategy = tf.distribute.get_strategy()
    self.num_replicas = self.strategy.num_replicas_in_sync
    self.trace_counts = collections.Counter()
    self._guard = _NonFiniteCounter()
    # float16 gradients need a loss scale (tfcredit.precision); checkpointed
    # with the method.
    if precision.compute_dtype(model) == tf.float16:
      self.loss_scale = precision.DynamicLossScale()
      self._overflows = _NonFiniteCounter()
      self.metric_reductions = {**type(self).metric_reductions,
                                LOSS_SCALE_METRIC: LAST}
    else:
      self.loss_scale = None
    self.jit_compile = validation.boolean('jit_compile', jit_compile)
    self._compiled_window_gradients = (
        tf.function(self._window_gradients_parts, jit_compile=True)
        if jit_compile else None)
    signature = [task.segment_spec(), model.state_spec()]
    if use_tf_function:
      self._train_fn = tf.function(self._traced('train_segment', self._train_segment),
                                   input_signature=signature)
      self._estimate_fn = tf.function(
          self._traced('estimate_gradients', self._estimate_gradients),
          input_signature=signature)
    else:
      self._train_fn = self._train_segment
      self._estimate_fn = self._estimate_gradients

  # ------------------------------------------------------------- public API
  def segment_length(self) -> Optional[int]:
    """Stream tasks: how many steps the next ``train_segment`` call should get."""
    return None

  def train_segment(self, segment, state) -> Tuple[Any, Metrics]:
    """Trains on one segment; returns the carried state and summed metrics.

    Metrics: ``loss_sum`` (sum of the unreduced task losses), ``count`` (tokens or
    sequences they cover), ``grad_norm_sum`` (sum of pre-clipping global gradient
    norms) and ``updates`` (parameter updates applied).
    """
    return self._train_fn(segment, state)

  def estimate_gradients(self, segment, state) -> Tuple[list, Any]:
    """The method's gradient estimate for the segment (see the module docstring)."""
    return self._estimate_fn(segment, state)

  def bind_schedule(self, schedule) -> None:
    """Called by the trainer, before training, with the run's learning-rate
    schedule (a ``tfcredit.training.schedules`` object): a method whose
    behaviour must follow it checks it here (DNI's alternation).

    Raises:
      ConfigurationError: the schedule does not fit the method.
    """

  def on_epoch_start(self, epoch: int) -> None:
    """Called by the trainer before the first call of every epoch (0-based), also
    when a run resumes mid-epoch; epoch-dependent behaviour (a phase, a position
    in the training stream) is set here, never in the trainer's loop."""

  def on_epoch_end(self) -> None:
    """Called by the trainer after every epoch, before validation (FPTT swaps in
    its averages here)."""

  # Extra metrics. ``train_segment`` may return metrics besides ``BASE_METRICS``:
  # scalars (or rank-1 tensors for ``CONCAT``). The trainer combines each over a
  # summary interval by its reduction here (``SUM`` when not listed) and writes
  # what ``summaries`` makes of the combined values under ``method/`` in
  # TensorBoard.
  metric_reductions: Mapping[str, str] = {}

  def summaries(self, totals: Mapping[str, Union[float, np.ndarray]]
                ) -> Dict[str, Union[float, np.ndarray]]:
    """TensorBoard values from one interval's combined extra metrics.

    The default writes a ``SUM`` metric named ``<x>_sum`` as ``<x>`` = its mean per
    parameter update (``<x>_sum / updates``), other ``SUM`` metrics as totals,
    ``MAX`` and ``LAST`` metrics as they are and ``CONCAT`` metrics as histograms
    (array values). Override to derive other ratios.

    Args:
      totals: every metric of the interval, base ones included, combined.
    """
    values = {}
    updates = float(totals.get('updates', 0.0))
    for key, value in totals.items():
      if key in BASE_METRICS:
        continue
      reduction = self.metric_reductions.get(key, SUM)
      if reduction == SUM and key.endswith('_sum'):
        if updates > 0:
          values[key[:-len('_sum')]] = float(value) / updates
      else:
        values[key] = value
    return values

  # ------------------------------------------------------------ subclasses
  def _train_segment(self, segment, state):
    raise NotImplementedError

  def _estimate_gradients(self, segment, state):
    raise NotImplementedError

  # --------------------------------------------------------------- helpers
  def _traced(self, key: str, function: Callable) -> Callable:
    def counted(*args):
      self.trace_counts[key] += 1  # Runs once per trace, never per call.
      if key != 'train_segment':
        return function(*args)
      return self._counting_non_finite(function, *args)
    return counted

  def _counting_non_finite(self, function: Callable, *args):
    """``function(*args)`` with the metric ``non_finite_windows``: the windows
    whose update ``apply_gradients`` refused (automatic control dependencies
    order the reset, the loop and the read)."""
    counter = self._guard.variable
    counter.assign(0.0)
    if self.loss_scale is not None:
      self._overflows.variable.assign(0.0)
    state, metrics = function(*args)
    metrics = dict(metrics)
    metrics[NON_FINITE_METRIC] = tf.identity(counter.read_value())
    if self.loss_scale is not None:
      overflows = tf.identity(self._overflows.variable.read_value())
      metrics[OVERFLOW_METRIC] = overflows
      metrics['updates'] = metrics['updates'] - overflows  # Skipped windows.
      metrics[LOSS_SCALE_METRIC] = tf.identity(self.loss_scale.scale.read_value())
    return state, metrics

  @property
  def trainable_variables(self):  # The model's weights, not the method's state.
    return self.model.trainable_variables

  def window_targets(self, targets, start, end):
    """The targets of steps ``[start, end)``, or all of them for a terminal loss."""
    if self.task.readout == task_base.TERMINAL:
      return targets
    return targets[:, start:end]

  def objective(self, outputs, targets, normalizer) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(objective, loss_sum)`` of one window under the shared loss convention.

    Args:
      outputs: the model's window outputs.
      targets: the window's targets.
      normalizer: per-step losses are divided by ``batch × normalizer``
        (the nominal window length when training, 1 for gradient estimates);
        terminal losses are averaged over the batch.
    """
    losses = self.task.losses(outputs, targets)
    loss_sum = tf.reduce_sum(losses)
    # The global batch: summing replicas' gradients gives the global mean.
    batch = tf.cast(tf.shape(losses)[0] * self.num_replicas, tf.float32)
    if self.task.readout == task_base.TERMINAL:
      return loss_sum / batch, loss_sum
    return loss_sum / (batch * tf.cast(normalizer, tf.float32)), loss_sum

  def window_gradients(self, inputs, targets, state, normalizer,
                       state_grad_scale=None):
    """Backpropagates one window from ``state`` (whose gradient is stopped).

    Returns:
      ``(gradients, new_state, loss_sum)``.
    """
    state = tf.nest.map_structure(tf.stop_gradient, state)
    if self._compiled_window_gradients is None:
      gradients, new_state, loss_sum = self._window_gradients_parts(
          inputs, targets, state, normalizer, state_grad_scale)
    else:
      gradients, new_state, loss_sum = self._compiled_window_gradients(
          inputs, targets, state, normalizer, state_grad_scale)
    # IndexedSlices leave the (compiled) function as their parts.
    gradients = [tf.IndexedSlices(*g) if isinstance(g, tuple) else g
                 for g in gradients]
    if self.num_replicas > 1:  # Cross-replica sums of IndexedSlices: keep dense.
      gradients = densify(gradients, self.trainable_variables)
    return gradients, new_state, loss_sum

  def _window_gradients_parts(self, inputs, targets, state, normalizer,
                              state_grad_scale):
    """``window_gradients``' computation, an ``IndexedSlices`` gradient as its
    ``(values, indices, dense_shape)``."""
    with tf.GradientTape() as tape:
      outputs, new_state = self.model.unroll(inputs, state, training=True,
                                             state_grad_scale=state_grad_scale)
      objective, loss_sum = self.objective(outputs, targets, normalizer)
    gradients = self.gradient(tape, objective, self.trainable_variables)
    gradients = [(g.values, g.indices, g.dense_shape)
                 if isinstance(g, tf.IndexedSlices) else g for g in gradients]
    return gradients, new_state, loss_sum

  def gradient(self, tape: tf.GradientTape, target, sources, **kwargs):
    """``tape.gradient(target, sources, **kwargs)`` of a scalar objective, through
    the loss scale under ``mixed_float16`` (the gradients come back unscaled)."""
    if self.loss_scale is None:
      return tape.gradient(target, sources, **kwargs)
    return self.loss_scale.gradient(tape, target, sources, **kwargs)

  def apply_gradients(self, gradients, loss=None, also_finite=None,
                      also_apply: Optional[Callable[[], None]] = None
                      ) -> tf.Tensor:
    """Clips (if configured) and applies; returns the pre-clipping global norm.

    The non-finite guard: when the gradients' global norm (or ``loss``, the
    window's loss when given) is not finite, nothing is applied (the optimizer's
    slots and iteration count do not move either) and the window is counted in
    the ``non_finite_windows`` metric, all inside the graph, with no host sync.
    Under ``mixed_float16`` a window with a finite loss whose gradients are not
    finite overflowed the loss scale: it is skipped, the scale halved, and it
    is counted in ``loss_scale_overflows`` instead (once the scale is 1, it
    counts as non-finite).

    Args:
      gradients: the model's gradients.
      loss: the window's loss, checked too when given.
      also_finite: a boolean tensor the window's update also needs (a method's
        own updates: DNI's synthesizer).
      also_apply: called in the same branch as the optimizer's update: the
        method's own update of the window, applied or refused with it.
    """
    # An embedding gradient arrives as IndexedSlices with one row per token
    # occurrence; rows of a repeated token must be summed before taking the norm.
    gradients = [coalesce(g) for g in gradients]
    norm = tf.linalg.global_norm(gradients)
    finite = tf.math.is_finite(norm)
    if also_finite is not None:
      finite = tf.logical_and(finite, also_finite)
    loss_finite = tf.constant(True)
    if loss is not None:
      loss_finite = tf.math.is_finite(tf.reduce_sum(tf.cast(loss, tf.float32)))
    overflow = tf.constant(0.0)
    if self.loss_scale is not None:
      overflow = tf.cast(tf.logical_and(
          tf.logical_and(loss_finite, tf.logical_not(finite)),
          self.loss_scale.scale > 1.0), tf.float32)
      self.loss_scale.update(finite)
      self._overflows.variable.assign_add(overflow)
    finite = tf.logical_and(finite, loss_finite)
    if self.clip_norm is not None:
      # With a finite norm, clip_by_global_norm scales by clip / max(norm, clip);
      # otherwise the values are not used.
      gradients, _ = tf.clip_by_global_norm(
          gradients, self.clip_norm, use_norm=tf.where(finite, norm, 1.0))

    def apply():
      self.optimizer.apply(gradients, self.trainable_variables)
      if also_apply is not None:
        also_apply()
      return tf.constant(0.0)

    def refuse():
      return tf.constant(1.0)

    refused = tf.cond(finite, apply, refuse)
    self._guard.variable.assign_add(refused - overflow)
    # An overflowed window's norm is the scale's, not the model's: left out.
    return tf.where(overflow > 0, 0.0, norm)

  def forward(self, inputs, state):
    """Runs a window forward only (no gradient): for windows with no loss."""
    _, new_state = self.model.unroll(inputs, state, training=True)
    return tf.nest.map_structure(tf.stop_gradient, new_state)

  @staticmethod
  def fixed_window_ends(length, window) -> tf.Tensor:
    """Ends of consecutive windows of ``window`` steps covering ``[0, length)``."""
    ends = tf.range(window, length + window, window)
    return tf.minimum(ends, length)

  # ------------------------------------------------------- distribution
  # The windows of a segment loop in the cross-replica context; each window's
  # forward and backward pass runs per replica (``replicate``), the gradients are
  # summed over replicas (``replica_sum``) and applied once. Every objective is
  # divided by the GLOBAL batch, so the sum is the global-batch gradient and one
  # replica or several give the same update. (An optimizer step inside a
  # ``tf.while_loop`` that runs in the replica context would need a ``merge_call``,
  # which TensorFlow forbids there.) With one replica these are plain calls.

  def replicate(self, function, *args):
    """Runs ``function(*args)`` on every replica (``args`` may be per-replica)."""
    if self.num_replicas == 1:
      return function(*args)
    return self.strategy.run(function, args=args)

  def replica_sum(self, values):
    """Sums per-replica values (a nest) over the replicas."""
    if self.num_replicas == 1:
      return values
    return tf.nest.map_structure(
        lambda value: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value,
                                           axis=None), values)

  def shard(self, values):
    """Splits the rows (batch axis) of a global nest evenly over the replicas."""
    if self.num_replicas == 1:
      return values

    def local(values):
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      def rows(value):
        size = tf.shape(value)[0] // self.num_replicas
        return value[replica * size:(replica + 1) * size]
      return tf.nest.map_structure(rows, values)
    return self.strategy.run(local, args=(values,))

  def unshard(self, values):
    """Concatenates per-replica rows back into global tensors."""
    if self.num_replicas == 1:
      return values
    return tf.nest.map_structure(lambda v: self.strategy.gather(v, axis=0), values)

  def forward_prefix(self, segment, state, end):
    """Runs steps ``[0, end)`` forward only, per replica (nothing when ``end`` is 0)."""
    def prefix(segment, state):
      return tf.cond(end > 0, lambda: self.forward(segment[0][:, :end], state),
                     lambda: state)
    return self.replicate(prefix, segment, state)

  def for_each_window(self, segment, state, window_ends, body, accumulators,
                      first_window=0):
    """Runs ``body`` over consecutive windows in one ``tf.while_loop``.

    Args:
      segment: global ``(inputs, targets)``.
      state: the global state at the segment's start.
      window_ends: ``[num_windows]`` int32, increasing, last == segment length.
      body: ``(index, segment, state, start, end, accumulators) -> (state,
        accumulators)``, called in the cross-replica context: ``segment`` and
        ``state`` are per-replica values (plain tensors with one replica), to be
        used through ``replicate``; accumulators are plain tensors.
      accumulators: a nest of tensors carried through the loop.
      first_window: windows before this one only run forward (no loss there: the
        terminal-loss case).

    Returns:
      ``(final global state, accumulators)``.
    """
    segment, state = self.shard(segment), self.shard(state)
    first_window = tf.convert_to_tensor(first_window)
    prefix_end = tf.where(first_window > 0,
                          window_ends[tf.maximum(first_window - 1, 0)], 0)
    state = self.forward_prefix(segment, state, prefix_end)
    num_windows = tf.shape(window_ends)[0]

    def loop_body(index, state, accumulators):
      start = tf.where(index > 0, window_ends[tf.maximum(index - 1, 0)], 0)
      state, accumulators = body(index, segment, state, start, window_ends[index],
                                 accumulators)
      return index + 1, state, accumulators

    _, state, accumulators = tf.while_loop(
        lambda index, *_: index < num_windows, loop_body,
        (first_window, state, accumulators))
    return self.unshard(state), accumulators

  def first_loss_window(self, window_ends):
    """Index of the first window with loss: the last one for terminal losses."""
    if self.task.readout == task_base.TERMINAL:
      return tf.shape(window_ends)[0] - 1
    return 0

  def window_update(self, segment, state, start, end, normalizer,
                    state_grad_scale=None):
    """One window's forward/backward per replica, then one applied update.

    Returns:
      ``(new per-replica state, summed loss, pre-clipping gradient norm)``.
    """
    def per_replica(segment, state):
      inputs, targets = segment
      return self.window_gradients(
          inputs[:, start:end], self.window_targets(targets, start, end), state,
          normalizer, state_grad_scale=state_grad_scale)

    gradients, state, loss_sum = self.replicate(per_replica, segment, state)
    gradients, loss_sum = self.replica_sum((gradients, loss_sum))
    return state, loss_sum, self.apply_gradients(gradients, loss=loss_sum)

  def window_estimate(self, segment, state, start, end, state_grad_scale=None):
    """One window's gradient of ``(1/B)·Σ ℓ`` (dense), summed over replicas.

    Returns:
      ``(new per-replica state, gradients)``.
    """
    variables = self.trainable_variables

    def per_replica(segment, state):
      inputs, targets = segment
      gradients, new_state, _ = self.window_gradients(
          inputs[:, start:end], self.window_targets(targets, start, end), state, 1,
          state_grad_scale=state_grad_scale)
      return densify(gradients, variables), new_state

    gradients, state = self.replicate(per_replica, segment, state)
    return state, self.replica_sum(gradients)


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

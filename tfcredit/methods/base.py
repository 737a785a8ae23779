"""The method contract and the one path every method trains through.

docs/design.md, "Method" and "Loss convention". A method offers ``train_segment``
and ``estimate_gradients``, each compiled once. This module owns what all methods
share: the window loop (``for_each_window``), one window's per-replica pass,
replica sum, clip and apply (``run_window``, ``window_update``,
``apply_gradients``), the loss convention (``objective``, ``normalize``) and the
base metrics. A subclass implements ``_train_segment`` and ``_estimate_gradients``
and keeps its own state as attributes, so checkpoints of the method save it.
"""

import collections
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import keras
import tensorflow as tf

from tfcredit import metrics as metrics_lib
from tfcredit import precision
from tfcredit import validation
from tfcredit import xla
from tfcredit.errors import ConfigurationError
from tfcredit.methods import guard as guard_lib
from tfcredit.methods import replicas as replicas_lib
from tfcredit.methods import windows
from tfcredit.methods.replicas import coalesce, densify, zeros_like_variables
from tfcredit.tasks import base as task_base

Metrics = Dict[str, tf.Tensor]


class Method(windows.WindowLoop, tf.Module):
  """Base class of the credit-assignment methods (see the module docstring)."""

  # Constructor arguments of a small stream run (tfcredit.methods.registry).
  EXAMPLE_ARGUMENTS: Mapping[str, Any] = {}
  # RecurrentModel arguments that run's model needs (a method that trains only
  # some cells names one of them), and those cells' classes (None: any cell).
  EXAMPLE_MODEL: Mapping[str, Any] = {}
  CELLS: Optional[Tuple[type, ...]] = None
  supports_replicas = True  # Trains under MirroredStrategy.

  def __init__(self, *, model: keras.Model, task: task_base.Task,
               optimizer: keras.optimizers.Optimizer,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Args:
      model: a built ``RecurrentModel``.
      task: the task whose ``losses`` define the objective.
      optimizer: a Keras optimizer, built on the model's trainable variables.
      clip_norm: global-norm gradient clipping threshold, or None for none.
      use_tf_function: compile the segment functions (turn off to debug eagerly).
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
    self.replicas = replicas_lib.Replicas()
    self.num_replicas = self.replicas.count
    self.use_tf_function = validation.boolean('use_tf_function', use_tf_function)
    self.trace_counts = collections.Counter()
    # float16 gradients need a loss scale (tfcredit.precision); checkpointed
    # with the method.
    self.loss_scale = None
    if precision.compute_dtype(model) == tf.float16:
      self.loss_scale = precision.DynamicLossScale()
      self.metric_reductions = {**type(self).metric_reductions,
                                guard_lib.LOSS_SCALE_METRIC: metrics_lib.LAST}
    self._guard = guard_lib.UpdateGuard(self.loss_scale)
    # Several replicas: each device applies its own copy of the summed gradients.
    self._places_gradients = replicas_lib.applies_per_variable(
        optimizer, model.trainable_variables)
    # XLA for ``window_gradients`` (``compile_windows``); off unless a method
    # turns it on.
    self.jit_compile = False
    self._compiled_window_gradients = None
    signature = [task.segment_spec(), model.state_spec()]
    self._train_fn = self.compile('train_segment', self._train_segment, signature)
    self._estimate_fn = self.compile('estimate_gradients',
                                     self._estimate_gradients, signature)

  # ------------------------------------------------------------- public API
  def segment_length(self) -> Optional[int]:
    """Stream tasks: how many steps the next ``train_segment`` call should get."""
    return None

  def train_segment(self, segment, state) -> Tuple[Any, Metrics]:
    """Trains on one segment; returns the carried state and summed metrics
    (``tfcredit.metrics.BASE_METRICS`` and the method's own)."""
    return self._train_fn(segment, state)

  def estimate_gradients(self, segment, state) -> Tuple[list, Any]:
    """The method's estimate of ``∇θ (1/B)·Σ_t ℓ_t`` (per-step losses) or ``∇θ
    mean_b ℓ_b`` (terminal) at the current weights, applying nothing."""
    return self._estimate_fn(segment, state)

  def check_task(self, task: task_base.Task) -> None:
    """Before training, refuses a setting that does not fit ``task``, raising
    ``ConfigurationError`` (a window longer than its sequences)."""

  def bind_schedule(self, schedule) -> None:
    """Before training, the run's learning-rate schedule: a method whose
    behaviour must follow it checks it here (DNI's alternation), raising
    ``ConfigurationError`` if it does not fit."""

  def on_epoch_start(self, epoch: int) -> None:
    """Before the first call of every epoch (0-based; also on a mid-epoch resume):
    epoch-dependent behaviour is set here, never in the trainer's loop."""

  def on_epoch_end(self) -> None:
    """After every epoch, before validation (FPTT swaps in its averages)."""

  def evaluations_before_epoch_end(
      self, evaluate: Callable[[str], Dict[str, float]]) -> Dict[str, float]:
    """After an epoch's last call and before ``on_epoch_end``: validation
    metrics of the weights the epoch trained, for a method whose
    ``on_epoch_end`` replaces them (FPTT's ``evaluate_trained_weights``),
    written beside the epoch's validation summaries. ``evaluate`` maps a split
    to its metrics. By default none."""
    del evaluate
    return {}

  # How the trainer combines each extra metric (a scalar, or rank 1 for CONCAT)
  # over a summary interval (SUM when not listed); ``summaries`` then writes it.
  metric_reductions: Mapping[str, str] = {}
  # Which parts tfcredit compiles by itself this method's traces take
  # (tfcredit.xla.parts): xla.BUCKETED where windows have random lengths (ARTBP).
  COMPILED_PARTS = True

  def summaries(self, totals: Mapping[str, Any]) -> Dict[str, Any]:
    """TensorBoard values from one interval's combined extra metrics (``totals``,
    base ones included): by default ``tfcredit.metrics.per_update_summaries``;
    override to derive other ratios."""
    return metrics_lib.per_update_summaries(totals, self.metric_reductions)

  def _train_segment(self, segment, state):  # Subclasses implement both.
    raise NotImplementedError

  def _estimate_gradients(self, segment, state):
    raise NotImplementedError

  # --------------------------------------------------------------- helpers
  def compile(self, key: str, function: Callable, input_signature) -> Callable:
    """``function`` as a ``tf.function`` with ``input_signature`` (eager when
    ``use_tf_function`` is off), its traces counted in ``trace_counts[key]``."""
    traced = self._traced(key, function)
    if not self.use_tf_function:
      return traced
    return tf.function(traced, input_signature=input_signature)

  def _traced(self, key: str, function: Callable) -> Callable:
    def counted(*args):
      self.trace_counts[key] += 1  # Runs once per trace, never per call.
      with xla.parts(self.COMPILED_PARTS):
        if key != 'train_segment':
          return function(*args)
        return self._guard.counting(function, *args)
    return counted

  @property
  def model_variables(self):
    """The model's weights: what the optimizer updates (a method's own trainable
    variables, such as DNI's synthesizer, are not among them)."""
    return self.model.trainable_variables

  def base_metrics(self, segment, loss_sum, grad_norm_sum, updates,
                   **extra) -> Metrics:
    """``train_segment``'s metrics: ``BASE_METRICS`` (``count`` from the
    segment's targets) and the method's ``extra`` ones."""
    return {'loss_sum': loss_sum, 'count': self.task.count(segment[1]),
            'grad_norm_sum': grad_norm_sum, 'updates': updates, **extra}

  def window_targets(self, targets, start, end):
    """The targets of steps ``[start, end)``, or all of them for a terminal loss."""
    if self.task.readout == task_base.TERMINAL:
      return targets
    return targets[:, start:end]

  def objective(self, outputs, targets, normalizer, weights=None
                ) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(objective, loss_sum)`` of one window under the loss convention
    (``normalize``; ``normalizer``: the nominal window length when training, 1
    for gradient estimates); ``weights`` (scalar or ``[B]``) multiply the
    losses."""
    losses = self.task.losses(outputs, targets)
    if weights is not None:
      losses *= weights
    loss_sum = tf.reduce_sum(losses)
    return self.normalize(loss_sum, tf.shape(losses)[0], normalizer), loss_sum

  def global_batch(self, rows) -> tf.Tensor:
    """The global batch of ``rows`` per replica: summing the replicas'
    gradients of objectives divided by it gives the global mean."""
    return tf.cast(rows * self.num_replicas, tf.float32)

  def normalize(self, total, rows, normalizer=1):
    """The loss convention: ``total / (global batch × normalizer)`` for per-step
    losses, ``total / global batch`` for terminal ones."""
    batch = self.global_batch(rows)
    if self.task.readout == task_base.TERMINAL:
      return total / batch
    return total / (batch * tf.cast(normalizer, tf.float32))

  def compile_windows(self) -> None:
    """From now on ``window_gradients`` runs its forward and backward pass as
    one XLA function, compiled once per window shape: element-wise gate
    arithmetic fused into few kernels; results match the uncompiled pass to
    float tolerance, not bit for bit (``TruncatedBPTT.jit_compile``)."""
    self.jit_compile = True
    self._compiled_window_gradients = tf.function(
        self._window_gradients_parts, jit_compile=True)

  def window_gradients(self, inputs, targets, state, normalizer,
                       state_grad_scale=None):
    """``(gradients, new_state, loss_sum)`` of one window from ``state`` (its
    gradient stopped)."""
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
    if self.num_replicas > 1:
      # Summed across replicas dense: TensorFlow's collective gather of
      # IndexedSlices inside the window loop fails (shape mismatch between the
      # replicas' collective instances, TF 2.21).
      gradients = densify(gradients, self.model_variables)
    return gradients, new_state, loss_sum

  def _window_gradients_parts(self, inputs, targets, state, normalizer,
                              state_grad_scale):
    """``window_gradients``' computation; ``IndexedSlices`` as their parts."""
    with tf.GradientTape() as tape:
      outputs, new_state = self.model.unroll(inputs, state, training=True,
                                             state_grad_scale=state_grad_scale)
      objective, loss_sum = self.objective(outputs, targets, normalizer)
    gradients = self.gradient(tape, objective, self.model_variables)
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

    The non-finite guard (``tfcredit.methods.guard``): when the gradients' global
    norm (or ``loss``) is not finite, nothing is applied (the optimizer's slots
    and iteration count do not move either) and the window is counted.

    Args:
      gradients: the model's gradients.
      loss: the window's loss, checked too when given.
      also_finite, also_apply: a method's own update of the window (DNI's
        synthesizer), applied or refused with the model's: the boolean it also
        needs, and a function called in the same branch.
    """
    placed = self.num_replicas > 1 and isinstance(gradients[0],
                                                  tf.distribute.DistributedValues)
    if not placed:
      # An embedding gradient arrives as IndexedSlices with one row per token
      # occurrence; rows of a repeated token must be summed before the norm.
      gradients = [coalesce(g) for g in gradients]
    # Gradients from ``sum_onto`` (dense) have a copy per device: the norm is
    # one copy's.
    norm = tf.linalg.global_norm(
        [self.replicas.first(g) for g in gradients] if placed else gradients)
    finite, overflow = self._guard.check(norm, loss, also_finite)
    scale = None
    if self.clip_norm is not None:
      # With a finite norm, clip_by_global_norm scales by clip / max(norm, clip);
      # otherwise the values are not used.
      use_norm = tf.where(finite, norm, 1.0)
      if placed:  # The factor clip_by_global_norm applies, on each device.
        scale = self.clip_norm * tf.minimum(1.0 / use_norm, 1.0 / self.clip_norm)
      else:
        gradients, _ = tf.clip_by_global_norm(gradients, self.clip_norm,
                                              use_norm=use_norm)

    def apply():
      if placed:
        self.replicas.apply(self.optimizer, gradients, self.model_variables, scale)
      else:
        self.optimizer.apply(gradients, self.model_variables)
      if also_apply is not None:
        also_apply()
      return tf.constant(0.0)  # Refused: 1.

    self._guard.record(tf.cond(finite, apply, lambda: tf.constant(1.0)), overflow)
    # An overflowed window's norm is the scale's, not the model's: left out.
    return tf.where(overflow > 0, 0.0, norm)

  # ------------------------------------------------------------ windows
  def run_window(self, per_replica, segment, carried, gradients_first=False):
    """``per_replica(segment, carried) -> (carried, results)`` on every replica;
    returns the per-replica ``carried`` and the ``results`` summed over replicas.

    With ``gradients_first``, ``results[0]`` are the model's (dense) gradients
    for ``apply_gradients``: summed onto the variables' devices when the
    optimizer allows it (``Replicas.sum_onto``), the rest to the host; else
    summed on the host like the rest.
    """
    carried, results = self.replicas.run(per_replica, segment, carried)
    if self.num_replicas == 1 or not gradients_first:
      return carried, self.replicas.sum(results)
    gradients, rest = results[0], tuple(results[1:])
    if self._places_gradients:
      gradients = self.replicas.sum_onto(gradients, self.model_variables)
    else:
      gradients = self.replicas.sum(gradients)
    return carried, (gradients, *self.replicas.sum(rest))

  def window_update(self, segment, state, start, end, normalizer,
                    state_grad_scale=None, transform=None):
    """One window's forward/backward per replica, then one applied update.

    Args:
      transform: optional, maps the replica-summed gradients to the ones applied
        (FPTT adds its regularizer's gradient).

    Returns ``(new per-replica state, summed loss, pre-clipping norm)``.
    """
    def per_replica(segment, state):
      inputs, targets = segment
      gradients, new_state, loss_sum = self.window_gradients(
          inputs[:, start:end], self.window_targets(targets, start, end), state,
          normalizer, state_grad_scale=state_grad_scale)
      return new_state, (gradients, loss_sum)

    state, (gradients, loss_sum) = self.run_window(
        per_replica, segment, state, gradients_first=transform is None)
    if transform is not None:
      gradients = transform(gradients)
    return state, loss_sum, self.apply_gradients(gradients, loss=loss_sum)

  def window_estimate(self, segment, state, start, end, state_grad_scale=None):
    """``(new per-replica state, gradients)``: one window's gradient of
    ``(1/B)·Σ ℓ`` (dense), summed over replicas."""
    variables = self.model_variables

    def per_replica(segment, state):
      inputs, targets = segment
      gradients, new_state, _ = self.window_gradients(
          inputs[:, start:end], self.window_targets(targets, start, end), state, 1,
          state_grad_scale=state_grad_scale)
      return new_state, densify(gradients, variables)

    return self.run_window(per_replica, segment, state)

  def train_windows(self, segment, state, window_ends, normalizer,
                    state_grad_scale=None, first_window=0):
    """``(state, loss_sum, grad_norm_sum, updates)`` of one ``window_update``
    per window (ARTBP: with ``state_grad_scale``, one factor per step)."""
    def body(index, segment, state, start, end, totals):
      del index
      scale = None if state_grad_scale is None else state_grad_scale[start:end]
      state, loss_sum, norm = self.window_update(segment, state, start, end,
                                                 normalizer, state_grad_scale=scale)
      loss_total, norm_total, update_total = totals
      return state, (loss_total + loss_sum, norm_total + norm, update_total + 1.0)

    zero = tf.constant(0.0)
    state, totals = self.for_each_window(segment, state, window_ends, body,
                                         (zero, zero, zero),
                                         first_window=first_window)
    return (state, *totals)

  def estimate_windows(self, segment, state, window_ends, first_window=0,
                       weight=None, state_grad_scale=None):
    """``(gradients, state)``: the sum over windows of ``window_estimate`` (each
    times ``weight(index)`` when given; ``state_grad_scale`` as in training)."""
    def body(index, segment, state, start, end, totals):
      scale = None if state_grad_scale is None else state_grad_scale[start:end]
      state, gradients = self.window_estimate(segment, state, start, end,
                                              state_grad_scale=scale)
      if weight is not None:
        gradients = [weight(index) * g for g in gradients]
      return state, [t + g for t, g in zip(totals, gradients)]

    state, totals = self.for_each_window(
        segment, state, window_ends, body,
        zeros_like_variables(self.model_variables), first_window=first_window)
    return totals, state

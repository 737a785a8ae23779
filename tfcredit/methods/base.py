"""The method contract: how credit reaches the weights (DESIGN.md, "Method").

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
from typing import Any, Callable, Dict, Optional, Tuple

import keras
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.tasks import base as task_base

Metrics = Dict[str, tf.Tensor]


class Method(tf.Module):
  """Base class of the credit-assignment methods.

  Responsibilities: compile ``train_segment`` and ``estimate_gradients`` once;
  compute window objectives by the shared loss convention; clip and apply
  gradients; loop over the windows of a segment inside the graph.
  """

  def __init__(self, *, model: keras.Model, task: task_base.Task,
               optimizer: keras.optimizers.Optimizer,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Binds the method.

    Args:
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
    self.trace_counts = collections.Counter()
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

  def on_epoch_end(self) -> None:
    """Called by the trainer after every epoch (FPTT swaps in its averages here)."""

  # ------------------------------------------------------------ subclasses
  def _train_segment(self, segment, state):
    raise NotImplementedError

  def _estimate_gradients(self, segment, state):
    raise NotImplementedError

  # --------------------------------------------------------------- helpers
  def _traced(self, key: str, function: Callable) -> Callable:
    def counted(*args):
      self.trace_counts[key] += 1  # Runs once per trace, never per call.
      return function(*args)
    return counted

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
    batch = tf.cast(tf.shape(losses)[0], tf.float32)
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
    with tf.GradientTape() as tape:
      outputs, new_state = self.model.unroll(inputs, state, training=True,
                                             state_grad_scale=state_grad_scale)
      objective, loss_sum = self.objective(outputs, targets, normalizer)
    gradients = tape.gradient(objective, self.trainable_variables)
    return gradients, new_state, loss_sum

  def apply_gradients(self, gradients) -> tf.Tensor:
    """Clips (if configured) and applies; returns the pre-clipping global norm."""
    # An embedding gradient arrives as IndexedSlices with one row per token
    # occurrence; rows of a repeated token must be summed before taking the norm.
    gradients = [coalesce(g) for g in gradients]
    norm = tf.linalg.global_norm(gradients)
    if self.clip_norm is not None:
      gradients, _ = tf.clip_by_global_norm(gradients, self.clip_norm,
                                            use_norm=norm)
    self.optimizer.apply(gradients, self.trainable_variables)
    return norm

  def forward(self, inputs, state):
    """Runs a window forward only (no gradient): for windows with no loss."""
    _, new_state = self.model.unroll(inputs, state, training=True)
    return tf.nest.map_structure(tf.stop_gradient, new_state)

  def window_has_loss(self, end, length):
    """Whether a window ending at ``end`` carries loss (terminal: only the last)."""
    if self.task.readout == task_base.TERMINAL:
      return tf.equal(end, length)
    return tf.constant(True)

  @staticmethod
  def fixed_window_ends(length, window) -> tf.Tensor:
    """Ends of consecutive windows of ``window`` steps covering ``[0, length)``."""
    ends = tf.range(window, length + window, window)
    return tf.minimum(ends, length)

  def for_each_window(self, segment, state, window_ends, body, accumulators):
    """Runs ``body`` over consecutive windows in one ``tf.while_loop``.

    Args:
      segment: ``(inputs, targets)``.
      state: the state at the segment's start.
      window_ends: ``[num_windows]`` int32, increasing, last == segment length.
      body: ``(index, inputs, targets, state, start, end, accumulators) ->
        (state, accumulators)``.
      accumulators: a nest of tensors carried through the loop.

    Returns:
      ``(final_state, accumulators)``.
    """
    inputs, targets = segment
    num_windows = tf.shape(window_ends)[0]

    def loop_body(index, state, accumulators):
      start = tf.where(index > 0, window_ends[tf.maximum(index - 1, 0)], 0)
      end = window_ends[index]
      window_inputs = inputs[:, start:end]
      window_targets = self.window_targets(targets, start, end)
      state, accumulators = body(index, window_inputs, window_targets, state,
                                 start, end, accumulators)
      return index + 1, state, accumulators

    _, state, accumulators = tf.while_loop(
        lambda index, *_: index < num_windows, loop_body,
        (tf.constant(0), state, accumulators))
    return state, accumulators


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

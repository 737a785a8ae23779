"""FPTT: Forward Propagation Through Time (Kag & Saligrama 2021).

Each sequence or segment is cut into ``K = windows`` windows, each making its own
update on ``ℓ_t(W) − ⟨λ_t, W⟩ + quadratic_scale·(α/2)‖W − W̄_t‖²``, followed by
``λ_{t+1} = λ_t − α(W_{t+1} − W̄_t)`` and ``W̄_{t+1} = (1 − β)W̄_t + βW_{t+1} −
(β/α)λ_{t+1}`` (the appendix's Eq. 7 at the optimum); at every epoch end the
weights become ``W̄``. This module owns ``W̄``, ``λ`` and the window weights of
terminal losses (``(p + 1)/K``; the authors' ``p + 0.1`` slip is not copied);
docs/methods/fptt.md has the rest.
"""

from typing import Optional

import tensorflow as tf

from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.methods import base
from tfcredit.methods import registry
from tfcredit.metrics import LAST
from tfcredit.tasks import base as task_base


def _sum(values) -> tf.Tensor:
  """The sum of ``values``, reduced along the first axis first (XLA on a CPU
  sums a tensor's rows as vectors; a reduction over all elements at once is
  serial and several times slower)."""
  if values.shape.rank == 0:
    return values
  return tf.reduce_sum(tf.reduce_sum(
      tf.reshape(values, [values.shape[0], -1]), axis=0))


@registry.register
class FPTT(base.Method):
  """FPTT with ``windows`` windows per sequence or segment (module docstring).

  State (checkpointed, created in the current distribution strategy's scope):
  ``running_average`` (``W̄``) and ``gradient_state`` (``λ``), one non-trainable
  variable per trainable variable of the model, in the same order.

  ``train_segment`` metrics: the base ones (``loss_sum`` is the task loss: the last
  window's for terminal tasks, all windows' for per-step tasks; ``updates`` counts
  optimizer steps) plus ``windows``, ``regularizer_sum`` (the regularizer
  ``−⟨λ, W⟩ + quadratic_scale·(α/2)‖W − W̄‖²`` at each window's start, summed),
  ``distance_to_average`` (``‖W − W̄‖`` over all weights, after the segment) and
  ``window_loss_sum_<p>`` / ``window_count_<p>`` (each window's unweighted loss and
  its units). TensorBoard: ``method/distance_to_average``, ``method/regularizer``
  (mean per window) and ``method/window_loss/<p>`` (mean loss per unit of window
  ``p``; for terminal tasks the readout of window ``p``'s last state).
  """

  EXAMPLE_ARGUMENTS = {'windows': 2, 'window_length': 5, 'alpha': 0.1}
  metric_reductions = {'distance_to_average': LAST}

  def __init__(self, *, model, task, optimizer, windows: int, alpha: float,
               beta: float = 0.5, quadratic_scale: float = 1.0,
               inner_steps: int = 1, reset_gradient_state_each_epoch: bool = True,
               window_length: Optional[int] = None,
               evaluate_trained_weights: bool = False,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Binds the method and creates ``W̄`` and ``λ``.

    Args:
      windows: ``K``, windows per sequence (episodic) or per segment (stream); the
        authors use 10 (adding task, PTB) and 20 (sequential images).
      alpha: ``α`` of the dynamic regularizer (> 0); the authors' code defaults to
        0.5, the appendix's adding-task runs use 0.01, Table 8 shows PTB-300 is
        insensitive for ``α ≤ 0.5``.
      beta: ``β`` of the running average, in (0, 1]; 0.5 in the authors' code.
      quadratic_scale: multiplies the quadratic term ``(α/2)‖W − W̄‖²`` in the
        window objective (not in the ``λ`` and ``W̄`` updates); the authors' PTB
        code uses 2.
      inner_steps: optimizer steps per window on the window objective.
      reset_gradient_state_each_epoch: zero ``λ`` at every epoch end (True), or
        keep it (the authors' language-model runs).
      window_length: stream tasks only (required there): steps per window; a
        segment is ``windows × window_length`` steps. Must be None for episodic
        tasks, whose sequences are cut into ``windows`` near-equal windows.
      evaluate_trained_weights: also evaluate the validation split with the
        trained weights at every epoch end, before ``W̄`` replaces them
        (TensorBoard ``valid/trained_weights/<metric>`` beside ``valid/<metric>``
        of ``W̄``); one more validation pass per epoch.
      clip_norm: as in ``Method``, of each step's full gradient (window loss
        and regularizer).
      model, task, optimizer, use_tf_function, name: as in ``Method``.

    Raises:
      ConfigurationError: an argument is out of range or does not fit the task.
    """
    self.windows = validation.positive_int('FPTT.windows', windows)
    self.alpha = validation.finite_number(
        'FPTT.alpha', alpha, 0.0, hint=': the authors use 0.01 to 0.5')
    self.beta = validation.finite_number(
        'FPTT.beta', beta, 0.0, 1.0, hint=': the authors use 0.5')
    self.quadratic_scale = validation.finite_number(
        'FPTT.quadratic_scale', quadratic_scale, 0.0, low_inclusive=True,
        hint=': 1 is the paper\'s objective, 2 the authors\' PTB code')
    self.inner_steps = validation.positive_int('FPTT.inner_steps', inner_steps)
    self.reset_gradient_state_each_epoch = validation.boolean(
        'FPTT.reset_gradient_state_each_epoch', reset_gradient_state_each_epoch)
    self.evaluate_trained_weights = validation.boolean(
        'FPTT.evaluate_trained_weights', evaluate_trained_weights)
    if task.regime == task_base.STREAM:
      if window_length is None:
        raise ConfigurationError(
            'FPTT.window_length is required for stream tasks (a segment is windows '
            '× window_length steps): set e.g. FPTT.window_length = 50')
      self.window_length = validation.positive_int('FPTT.window_length',
                                                        window_length)
    else:
      if window_length is not None:
        raise ConfigurationError(
            f'FPTT.window_length={window_length!r} applies to stream tasks only; '
            f'episodic sequences are cut into FPTT.windows={self.windows} windows: '
            'remove the binding')
      self.window_length = None
      length = getattr(task, 'sequence_steps', None) or getattr(
          task, 'sequence_length', None)
      if isinstance(length, int) and length < self.windows:
        raise ConfigurationError(
            f'FPTT.windows={self.windows} is more than the {length} steps of a '
            f'{task.name} sequence: use at most {length} windows')
    super().__init__(model=model, task=task, optimizer=optimizer,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name or 'FPTT')
    variables = self.model_variables
    # Created in the strategy's scope the trainer builds the method in, so they
    # are mirrored like the weights; updated in the cross-replica context only.
    self.running_average = [
        tf.Variable(tf.identity(v), trainable=False, name=f'running_average_{i}')
        for i, v in enumerate(variables)]
    self.gradient_state = [
        tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                    name=f'gradient_state_{i}')
        for i, v in enumerate(variables)]
    self._swap_fn = self.compile('epoch_end', self._swap_in_average, [])
    # Each traced once: the weights' shapes are fixed.
    self._regularized = tf.function(self._regularized_parts, jit_compile=True)
    self._averages = tf.function(self._averages_parts, jit_compile=True)

  # ------------------------------------------------------------- public API
  def check_task(self, task: task_base.Task) -> None:
    """Refuses padded sequences: FPTT cuts each episode into ``windows`` equal
    windows, and a padded batch's windows are not its shorter sequences' own."""
    if task.masked:
      raise ConfigurationError(
          f'FPTT cannot train task {task.name!r}: its sequences have different '
          f'lengths, and FPTT cuts each into FPTT.windows={self.windows} equal '
          "windows, which in a padded batch are not the shorter sequences' own; "
          'use truncated BPTT, ARTBP or RTRL, or sequences of one length')

  def segment_length(self) -> Optional[int]:
    if self.task.regime != task_base.STREAM:
      return None
    return self.windows * self.window_length

  def on_epoch_end(self) -> None:
    """The weights become ``W̄``; ``λ`` is zeroed if so configured."""
    with self.replicas.strategy.scope():
      self._swap_fn()

  def evaluations_before_epoch_end(self, evaluate):
    """With ``evaluate_trained_weights``: the validation metrics of the weights
    the epoch trained, as ``trained_weights/<metric>``."""
    if not self.evaluate_trained_weights:
      return {}
    return {f'trained_weights/{key}': value
            for key, value in evaluate('valid').items() if key != 'count'}

  def summaries(self, totals):
    values = {'distance_to_average': totals['distance_to_average']}
    if totals.get('windows', 0) > 0:
      values['regularizer'] = totals['regularizer_sum'] / totals['windows']
    for p in range(self.windows):
      count = totals.get(f'window_count_{p}', 0.0)
      if count > 0:
        values[f'window_loss/{p:02d}'] = totals[f'window_loss_sum_{p}'] / count
    return values

  # ------------------------------------------------------------ the method
  def _swap_in_average(self):
    for variable, average in zip(self.model_variables, self.running_average):
      variable.assign(average)
    if self.reset_gradient_state_each_epoch:
      for state in self.gradient_state:
        state.assign(tf.zeros_like(state))
    return tf.constant(0)

  def _window_ends(self, length):
    if self.task.regime == task_base.STREAM:
      return self.fixed_window_ends(length, self.window_length)
    # Sequences shorter than K steps are refused at construction (the task's
    # sequence_length); an in-graph assertion would cost the loops' optimization.
    return (tf.range(1, self.windows + 1) * length) // self.windows

  def _nominal_window(self, length):
    if self.task.regime == task_base.STREAM:
      return float(self.window_length)
    return tf.cast(length, tf.float32) / float(self.windows)

  def window_weight(self, index, num_windows) -> tf.Tensor:
    """``(p + 1)/K`` for terminal losses, 1 for per-step ones."""
    if self.task.readout != task_base.TERMINAL:
      return tf.constant(1.0)
    return tf.cast(index + 1, tf.float32) / tf.cast(num_windows, tf.float32)

  def _reads(self):
    """The current ``W``, ``W̄`` and ``λ`` as tensors (the fused passes'
    inputs)."""
    read = lambda variables: [tf.convert_to_tensor(v) for v in variables]
    return (read(self.model_variables), read(self.running_average),
            read(self.gradient_state))

  def _distance_to_average(self):
    return tf.sqrt(tf.add_n([
        tf.reduce_sum(tf.square(tf.convert_to_tensor(v) - average))
        for v, average in zip(self.model_variables, self.running_average)]))

  def _regularized_parts(self, weight, gradients, weights, averages, states):
    """XLA-fused: ``(regularizer value, [weight·g − λ + quadratic_scale·α·(W −
    W̄)])``, ``g`` dense or None (0). One pass over each weight: as separate
    kernels the same arithmetic took twice the CPU time (docs/benchmark.md,
    "Method overheads")."""
    scale = self.quadratic_scale * self.alpha
    value, regularized = tf.constant(0.0), []
    for g, w, average, state in zip(gradients, weights, averages, states):
      difference = w - average
      value += _sum(0.5 * scale * tf.square(difference) - state * w)
      term = scale * difference - state
      regularized.append(term if g is None else weight * g + term)
    return value, regularized

  def _averages_parts(self, weights, averages, states):
    """XLA-fused ``λ ← λ − α(W − W̄)``, ``W̄ ← (1−β)W̄ + βW − (β/α)λ`` (new
    ``λ``): ``(new averages, new states)``."""
    new_averages, new_states = [], []
    for w, average, state in zip(weights, averages, states):
      new_state = state - self.alpha * (w - average)
      new_averages.append((1.0 - self.beta) * average + self.beta * w -
                          (self.beta / self.alpha) * new_state)
      new_states.append(new_state)
    return new_averages, new_states

  def _inner_step(self, segment, state, start, end, normalizer, weight,
                  regularizer=None):
    """One optimizer step on the window objective; returns (state, loss, norm).
    ``regularizer``: a list that receives the regularizer's value at the
    step's weights."""

    def with_regularizer(gradients):
      with tf.name_scope('fptt_regularizer'):
        # IndexedSlices (the embedding's) are added after the fused pass.
        dense = [None if g is None or isinstance(g, tf.IndexedSlices) else g
                 for g in gradients]
        value, regularized = self._regularized(weight, dense, *self._reads())
        if regularizer is not None:
          regularizer.append(value)
        return [tf.tensor_scatter_nd_add(r, g.indices[:, None],
                                         weight * g.values)
                if isinstance(g, tf.IndexedSlices) else r
                for g, r in zip(gradients, regularized)]
    return self.window_update(segment, state, start, end, normalizer,
                              transform=with_regularizer)

  def _update_averages(self):
    """``λ ← λ − α(W − W̄)``, then ``W̄ ← (1−β)W̄ + βW − (β/α)λ`` (new ``λ``)."""
    with tf.name_scope('fptt_averages'):  # (tfcredit-profile's category)
      new_averages, new_states = self._averages(*self._reads())
      for average, value in zip(self.running_average, new_averages):
        average.assign(value)
      for state, value in zip(self.gradient_state, new_states):
        state.assign(value)

  def _train_segment(self, segment, state):
    length = tf.shape(segment[0])[1]
    window_ends = self._window_ends(length)
    num_windows = tf.shape(window_ends)[0]
    normalizer = self._nominal_window(length)
    batch = tf.cast(tf.shape(segment[0])[0], tf.float32)
    terminal = self.task.readout == task_base.TERMINAL

    def body(index, segment, state, start, end, totals):
      weight = self.window_weight(index, num_windows)
      regularizer = []  # At the window's start: the first step's weights.
      new_state, loss_sum, norm = self._inner_step(segment, state, start, end,
                                                   normalizer, weight,
                                                   regularizer)
      regularizer = regularizer[0]
      if self.inner_steps > 1:
        def repeat(step, norm_total):
          _, _, step_norm = self._inner_step(segment, state, start, end, normalizer,
                                             weight)
          return step + 1, norm_total + step_norm
        _, norm = tf.while_loop(lambda step, _: step < self.inner_steps, repeat,
                                (tf.constant(1), norm))
      self._update_averages()
      units = batch if terminal else batch * tf.cast(end - start, tf.float32)
      slot = [[tf.minimum(index, self.windows - 1)]]
      (last_loss, loss_total, norm_total, regularizer_total, window_losses,
       window_counts) = totals
      return new_state, (
          loss_sum, loss_total + loss_sum, norm_total + norm,
          regularizer_total + regularizer,
          tf.tensor_scatter_nd_add(window_losses, slot, [loss_sum]),
          tf.tensor_scatter_nd_add(window_counts, slot, [units]))

    zero = tf.constant(0.0)
    zeros = tf.zeros([self.windows])
    state, (last_loss, loss_total, norm_sum, regularizer_sum, window_losses,
            window_counts) = self.for_each_window(
                segment, state, window_ends, body,
                (zero, zero, zero, zero, zeros, zeros))
    windows_run = tf.cast(num_windows, tf.float32)
    metrics = self.base_metrics(
        segment, last_loss if terminal else loss_total, norm_sum,
        windows_run * float(self.inner_steps), windows=windows_run,
        regularizer_sum=regularizer_sum,
        distance_to_average=self._distance_to_average())
    for p in range(self.windows):
      metrics[f'window_loss_sum_{p}'] = window_losses[p]
      metrics[f'window_count_{p}'] = window_counts[p]
    return state, metrics

  def _estimate_gradients(self, segment, state):
    window_ends = self._window_ends(tf.shape(segment[0])[1])
    num_windows = tf.shape(window_ends)[0]
    return self.estimate_windows(
        segment, state, window_ends,
        weight=lambda index: self.window_weight(index, num_windows))

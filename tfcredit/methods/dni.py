"""DNI: truncated BPTT with synthetic gradients at the window boundaries.

Jaderberg et al. 2017, "Decoupled Neural Interfaces using Synthetic Gradients"
(Eq. 1 for recurrent networks), and Shang & Zhang 2019, "Alternating Synthetic and
Real Gradients for Neural Language Modeling" (neuron-wise synthesizer,
alternation). A window from ``s_0`` to ``s_K`` trains the model on ``objective +
sg_scale·⟨stop_grad(δ̂_K), s_K⟩ / B`` and the synthesizer towards ``B·∂J/∂s_0``
(the bootstrap). This module owns the synthesizer, its optimizer, noise, memory
and phase; the scales and the alternation are in docs/methods/dni.md.
"""

import math
from typing import Optional, Union

import keras
import tensorflow as tf

from tfcredit import masking
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.methods import base
from tfcredit.methods import registry
from tfcredit.methods import truncated_bptt
from tfcredit.methods.replicas import densify, zeros_like_variables
from tfcredit.metrics import LAST
from tfcredit.models import synthesizers as synthesizers_lib
from tfcredit.models.state import flatten_state
from tfcredit.tasks import base as task_base
from tfcredit.training import schedules

@registry.register
class DNI(base.Method):
  """Truncated BPTT plus synthetic gradients (see the module docstring).

  Metrics beyond the base ones, summed over windows: ``synthesizer_loss_sum``,
  ``prediction_target_dot``, ``prediction_squares``, ``target_squares`` (from
  which ``summaries`` pools the cosine and norm ratio of the predictions to their
  targets) and ``synthetic_phase``; docs/methods/dni.md, "TensorBoard".
  """

  EXAMPLE_ARGUMENTS = {'window': 5, 'windows_per_call': 2}
  metric_reductions = {'synthetic_phase': LAST}

  def summaries(self, totals):
    values = {'synthetic_phase': totals['synthetic_phase']}
    updates = float(totals['updates'])
    if updates > 0:
      values['synthesizer_loss'] = float(totals['synthesizer_loss_sum']) / updates
    dot = float(totals['prediction_target_dot'])
    predictions = float(totals['prediction_squares'])
    targets = float(totals['target_squares'])
    if predictions > 0 and targets > 0:
      values['cosine'] = dot / math.sqrt(predictions * targets)
    if targets > 0:
      values['norm_ratio'] = math.sqrt(predictions / targets)
    return values

  def __init__(self, *, model, task, optimizer, window: int = 35,
               synthesizer=synthesizers_lib.LayerwiseSynthesizer, sg_scale: float = 0.1,
               synthesizer_optimizer=keras.optimizers.Adam,
               synthesizer_learning_rate: float = 1e-3,
               use_synthetic: Union[bool, schedules.AlternatingRestarts, type] = True,
               windows_per_call: int = 10, batch_size: Optional[int] = None,
               seed: int = 0, clip_norm: Optional[float] = None,
               use_tf_function: bool = True, name: Optional[str] = None):
    """Binds the method and builds the synthesizer and its optimizer.

    Args:
      window: steps per window (``K``).
      synthesizer: a synthesizer class (gin: ``@LayerwiseSynthesizer``,
        ``@NeuronwiseSynthesizer``) or instance.
      sg_scale: the factor on ``δ̂`` where it is injected and in the bootstrap
        (0.1 in the DNI paper and the public code).
      synthesizer_optimizer: a Keras optimizer class or instance for the
        synthesizer (Adam in the public code).
      synthesizer_learning_rate: its learning rate when a class is given (1e-3 in
        the public code); the run's lr schedule does not touch it.
      use_synthetic: ``True``, ``False``, or an ``AlternatingRestarts`` schedule
        (class or instance) that says per epoch.
      windows_per_call: stream tasks: windows per ``train_segment`` call.
      batch_size: the training batch (passed by the trainer); required for the
        neuron-wise synthesizer on stream tasks (its memory variable).
      seed: seeds the synthesizer's input noise (the draws are keyed by a counter
        kept in checkpoints).
      model, task, optimizer, clip_norm, use_tf_function, name: as in
        ``Method`` (the optimizer and clipping are the model's).

    Raises:
      ConfigurationError: an argument is invalid.
    """
    self.window = validation.positive_int('DNI.window', window)
    self.windows_per_call = validation.positive_int('DNI.windows_per_call',
                                                    windows_per_call)
    self.sg_scale = validation.non_negative('DNI.sg_scale', sg_scale,
                                            hint=': the DNI paper uses 0.1')
    self.phase_schedule = schedules.AlternatingRestarts.from_setting(
        'DNI.use_synthetic', use_synthetic)
    synthesizer = synthesizers_lib.resolve('DNI.synthesizer', synthesizer)
    if batch_size is not None:
      batch_size = validation.positive_int('DNI.batch_size', batch_size)
    carries_memory = (synthesizer.memory_size > 0 and
                      task.regime == task_base.STREAM)
    if carries_memory and batch_size is None:
      raise ConfigurationError(
          'DNI.batch_size is required with NeuronwiseSynthesizer on a stream task '
          '(its per-neuron memory is carried across calls): the trainer passes '
          'train.batch_size; elsewhere pass DNI(batch_size=...)')
    super().__init__(model=model, task=task, optimizer=optimizer,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name or 'DNI')
    self.synthesizer = synthesizer
    self.width = sum(int(spec.shape[-1])
                     for spec in tf.nest.flatten(model.state_spec()))
    self.synthesizer(tf.zeros([1, self.width]),
                     tf.zeros([1, self.width, synthesizer.memory_size]))
    self.synthesizer_optimizer = synthesizers_lib.built_optimizer(
        'DNI.synthesizer_optimizer', synthesizer_optimizer,
        synthesizer_learning_rate, self.synthesizer.trainable_variables)
    variable = lambda value, dtype, name: tf.Variable(
        value, dtype=dtype, trainable=False, name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    # A constant phase is fixed at trace time; a schedule's is read in the graph.
    self._constant_phase = (None if self.phase_schedule is not None
                            else bool(use_synthetic))
    initially = (self.phase_schedule.synthetic(0) if self.phase_schedule
                 else bool(use_synthetic))
    self.synthetic_phase = variable(float(initially), tf.float32, 'synthetic_phase')
    self.noise_seed = variable(int(seed), tf.int64, 'noise_seed')
    self.noise_draws = variable(0, tf.int64, 'noise_draws')
    self.memory = None
    if carries_memory:
      self.memory = variable(
          tf.zeros([batch_size, self.width, synthesizer.memory_size]), tf.float32,
          'synthesizer_memory')

  # ------------------------------------------------------------- public API
  def segment_length(self) -> Optional[int]:
    return self.window * self.windows_per_call

  def check_task(self, task: task_base.Task) -> None:
    truncated_bptt.check_window_fits(type(self).__name__, self.window, task)
    truncated_bptt.check_terminal_padding(type(self).__name__, self.window, task)

  def bind_schedule(self, schedule) -> None:
    """With an alternation, the run's learning-rate schedule must be the same
    alternation (its restarts are the phase switches); it then sets the phases.

    Raises:
      ConfigurationError: ``use_synthetic`` alternates and ``schedule`` is not an
        ``AlternatingRestarts`` switching at the same epochs.
    """
    if self.phase_schedule is None:
      return
    alternation = schedules.AlternatingRestarts
    if not self.phase_schedule.same_phases(schedule):
      raise ConfigurationError(
          f'DNI.use_synthetic = @{alternation.__name__} alternates phases at its '
          f'restarts, but train.lr_schedule = {schedule!r} restarts elsewhere: '
          f'bind train.lr_schedule = @{alternation.__name__} too (both read the '
          f'same {alternation.__name__}.* bindings)')
    self.phase_schedule = schedule

  def on_epoch_start(self, epoch: int) -> None:
    """Sets the phase of ``epoch`` from the alternation schedule, if any."""
    if self.phase_schedule is not None:
      self.synthetic_phase.assign(float(self.phase_schedule.synthetic(epoch)))

  def on_epoch_end(self) -> None:
    """Resets the neuron-wise synthesizer's memory (Shang & Zhang's code)."""
    if self.memory is not None:
      self.memory.assign(tf.zeros_like(self.memory))

  @property
  def synthesizer_variables(self):
    return self.synthesizer.trainable_variables

  # ------------------------------------------------------------ the method
  def _initial_memory(self, batch):
    if self.memory is not None:
      return tf.identity(self.memory)
    return tf.zeros(tf.stack([batch, self.width, self.synthesizer.memory_size]))

  def _noise(self, batch, boundaries):
    """``[B, boundaries, N]`` multiplicative noise, drawn in the cross-replica context."""
    stddev = self.synthesizer.noise_stddev
    shape = tf.stack([batch, boundaries, self.width])
    if stddev == 0:
      return tf.ones(shape)
    seed = tf.stack([self.noise_seed, self.noise_draws])
    self.noise_draws.assign_add(1)
    return tf.random.stateless_normal(shape, seed=seed, mean=1.0, stddev=stddev)

  def _injected(self, delta, final_state, batch, has_future, ratio):
    """``ratio·sg_scale·⟨stop_grad(δ̂), s_K⟩ / B``, zero where there is no future."""
    delta = tf.stop_gradient(delta) * has_future
    return (ratio * self.sg_scale * tf.reduce_sum(delta * flatten_state(final_state))
            / batch)

  def _window_objective(self, outputs, targets, normalizer, end, length):
    """The window's objective and loss sum; a terminal loss only at the end."""
    objective, loss_sum = self.objective(outputs, targets, normalizer)
    if self.task.readout == task_base.TERMINAL:
      has_loss = tf.cast(tf.equal(end, length), tf.float32)
      objective, loss_sum = objective * has_loss, loss_sum * has_loss
    return objective, loss_sum

  def _has_future(self, end, length, inputs):
    """1 where a loss may follow step ``end``: always on streams; in an episode
    while it lasts (per row ``[B, 1]`` with padded steps: the row's own end)."""
    if self.task.regime == task_base.STREAM:
      return tf.constant(1.0)
    if self.task.masked:
      return masking.real_at(inputs, end)[:, None]
    return tf.cast(end < length, tf.float32)

  def _window_terms(self, tape, inputs, targets, state, memory_start, noise,
                    has_future, end, length, normalizer, ratio):
    """A window's forward pass on ``tape``: ``(objective, loss sum, injected
    term, final state)``; the synthesizer's prediction at the end boundary
    (from ``memory_start``, with ``noise`` when given) is not recorded."""
    outputs, final_state = self.model.unroll(inputs, state, training=True)
    objective, loss_sum = self._window_objective(outputs, targets, normalizer,
                                                 end, length)
    with tape.stop_recording():
      if noise is None:
        delta, _ = self.synthesizer(flatten_state(final_state), memory_start)
      else:
        delta, _ = self.synthesizer(flatten_state(final_state), memory_start,
                                    noise, training=True)
    batch = self.global_batch(tf.shape(tf.nest.flatten(state)[0])[0])
    injected = self._injected(delta, final_state, batch, has_future, ratio)
    return objective, loss_sum, injected, final_state

  def _window_pass(self, inputs, targets, state, memory_start, noise_end,
                   has_future, end, length, inject: bool):
    """One window's model gradients, final state and synthesizer target (per replica).

    Args:
      memory_start: the synthesizer memory after the window's start boundary
        (the input of its prediction at the end boundary).
      inject: whether the model gradient includes the synthetic term (the target
        always does).

    Returns:
      ``(model gradients, final state, loss sum, target [B, N])``.
    """
    state = tf.nest.map_structure(tf.stop_gradient, state)
    start_tensors = tf.nest.flatten(state)
    batch = self.global_batch(tf.shape(start_tensors[0])[0])
    variables = self.model_variables
    with tf.GradientTape(persistent=not inject) as tape:
      tape.watch(start_tensors)
      objective, loss_sum, injected, final_state = self._window_terms(
          tape, inputs, targets, state, memory_start, noise_end, has_future, end,
          length, normalizer=self.window, ratio=1.0)
      total = objective + injected
    zero = tf.UnconnectedGradients.ZERO
    if inject:
      gradients = self.gradient(tape, total, variables + start_tensors,
                                unconnected_gradients=zero)
      start_gradients = gradients[len(variables):]
    else:  # Truncated BPTT for the model; the target still bootstraps.
      gradients = self.gradient(tape, objective, variables + start_tensors,
                                unconnected_gradients=zero)
      propagated = self.gradient(tape, injected, start_tensors,
                                 unconnected_gradients=zero)
      start_gradients = [g + p for g, p in
                         zip(gradients[len(variables):], propagated)]
    del tape
    target = batch * tf.concat(start_gradients, axis=-1)
    gradients = gradients[:len(variables)]
    if self.num_replicas > 1:
      gradients = densify(gradients, variables)
    return gradients, final_state, loss_sum, target

  def _window_step(self, inputs, targets, state, memory, noise_start, noise_end,
                   has_future, end, length, synthetic, live=None):
    """A window's model and synthesizer gradients (per replica).

    The synthesizer's prediction at ``s_0`` is taken once, on a tape that records
    only the synthesizer; its loss gradient is the prediction's gradient with
    ``∂loss/∂prediction = 2 (prediction − target) / B``.

    Returns:
      ``(final state, memory after the start boundary), (model gradients,
      synthesizer gradients, loss sum, synthesizer loss, [Σ p·t, Σ p², Σ t²])``.
    """
    flat = flatten_state(tf.nest.map_structure(tf.stop_gradient, state))
    batch = self.global_batch(tf.shape(flat)[0])
    synthesizer_variables = self.synthesizer_variables
    with tf.GradientTape() as synthesizer_tape:  # Records the synthesizer only.
      prediction, memory_start = self.synthesizer(flat, memory, noise_start,
                                                  training=True)

    def window_pass(inject):
      return lambda: self._window_pass(inputs, targets, state, memory_start,
                                       noise_end, has_future, end, length, inject)
    if self._constant_phase is None:
      gradients, final_state, loss_sum, target = tf.cond(
          synthetic > 0.5, window_pass(True), window_pass(False))
    else:
      gradients, final_state, loss_sum, target = window_pass(self._constant_phase)()
    target = tf.stop_gradient(target)
    error = prediction - target
    if live is not None:  # Rows already ended (padding) do not train it.
      error *= live
    synthesizer_gradients = densify(
        synthesizer_tape.gradient(prediction, synthesizer_variables,
                                  output_gradients=2.0 * error / batch),
        synthesizer_variables)
    synthesizer_loss = tf.reduce_sum(tf.square(error)) / batch
    statistics = tf.stack([tf.reduce_sum(prediction * target),
                           tf.reduce_sum(tf.square(prediction)),
                           tf.reduce_sum(tf.square(target))])
    return ((final_state, tf.stop_gradient(memory_start)),
            (gradients, synthesizer_gradients, loss_sum, synthesizer_loss, statistics))

  def _train_segment(self, segment, state):
    length = tf.shape(segment[0])[1]
    window_ends = self.fixed_window_ends(length, tf.constant(self.window))
    num_windows = tf.shape(window_ends)[0]
    batch = tf.shape(segment[0])[0]
    carried = (state, self._initial_memory(batch), self._noise(batch, num_windows + 1))
    synthetic = self.synthetic_phase.read_value()

    def body(index, segment, carried, start, end, totals):
      def per_replica(segment, carried):
        inputs, targets = segment
        state, memory, noise = carried
        (final_state, memory_start), per_window = self._window_step(
            inputs[:, start:end], self.window_targets(targets, start, end), state,
            memory, noise[:, index], noise[:, index + 1],
            self._has_future(end, length, inputs), end, length, synthetic,
            live=(masking.real_at(inputs, start)[:, None] if self.task.masked
                  else None))
        return (final_state, memory_start, noise), per_window

      carried, (gradients, synthesizer_gradients, loss_sum, synthesizer_loss,
                statistics) = self.run_window(per_replica, segment, carried,
                                              gradients_first=True)
      # The synthesizer's update is the window's too: both or neither.
      synthesizer_finite = tf.logical_and(
          tf.math.is_finite(tf.linalg.global_norm(synthesizer_gradients)),
          tf.math.is_finite(synthesizer_loss))
      norm = self.apply_gradients(
          gradients, loss=loss_sum, also_finite=synthesizer_finite,
          also_apply=lambda: self.synthesizer_optimizer.apply(
              synthesizer_gradients, self.synthesizer_variables))
      additions = (loss_sum, norm, 1.0, synthesizer_loss, *tf.unstack(statistics))
      return carried, tuple(t + a for t, a in zip(totals, additions))

    zero = tf.constant(0.0)
    (state, memory, _), totals = self.for_each_window(
        segment, carried, window_ends, body, (zero,) * 7, gather=False)
    state = self.replicas.unshard(state)
    if self.memory is not None:  # (A layer-wise memory is empty: never gathered.)
      self.memory.assign(self.replicas.unshard(memory))
    (loss_sum, norm_sum, updates, synthesizer_loss, dot, prediction_squares,
     target_squares) = totals
    return state, self.base_metrics(
        segment, loss_sum, norm_sum, updates, synthesizer_loss_sum=synthesizer_loss,
        prediction_target_dot=dot, prediction_squares=prediction_squares,
        target_squares=target_squares, synthetic_phase=synthetic)

  def _estimate_gradients(self, segment, state):
    """Sum over windows of ``∇[Σ ℓ / B + ratio·sg_scale·⟨δ̂, s_K⟩ / B]`` (no noise).

    ``ratio`` is ``K`` for per-step losses (see the module docstring); the phase
    variable gates the synthetic term. The memory variable is read, not moved.
    """
    length = tf.shape(segment[0])[1]
    window_ends = self.fixed_window_ends(length, tf.constant(self.window))
    batch = tf.shape(segment[0])[0]
    ratio = 1.0 if self.task.readout == task_base.TERMINAL else float(self.window)
    synthetic = self.synthetic_phase.read_value()
    variables = self.model_variables

    def body(index, segment, carried, start, end, totals):
      del index
      def per_replica(segment, carried):
        inputs, targets = segment
        state, memory = carried
        state = tf.nest.map_structure(tf.stop_gradient, state)
        _, memory_start = self.synthesizer(flatten_state(state), memory)
        with tf.GradientTape() as tape:
          objective, _, injected, final_state = self._window_terms(
              tape, inputs[:, start:end], self.window_targets(targets, start, end),
              state, memory_start, None, self._has_future(end, length, inputs), end,
              length, normalizer=1, ratio=ratio)
          total = objective + synthetic * injected
        gradients = densify(self.gradient(tape, total, variables), variables)
        return (final_state, memory_start), gradients

      carried, gradients = self.run_window(per_replica, segment, carried)
      return carried, [t + g for t, g in zip(totals, gradients)]

    (state, _), totals = self.for_each_window(
        segment, (state, self._initial_memory(batch)), window_ends, body,
        zeros_like_variables(variables), gather=False)
    return totals, self.replicas.unshard(state)

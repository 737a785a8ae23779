"""Truncated and full backpropagation through time (Williams & Peng 1990).

Truncated BPTT (Williams & Peng 1990; the baseline of every paper here): windows of
``K`` consecutive steps, the state carried from window to window with its gradient
stopped, one parameter update per window. Stream tasks take ``windows_per_call``
windows per host call; episodic tasks take a whole batch of sequences per call, with
the state starting at zero. With a loss only at the last step, only the last window
of a sequence receives gradient; earlier windows just run forward (an update with a
zero gradient would still move momentum-based optimizers).

Full BPTT is the case ``K = T``: one window over the whole segment.

``recompute_state`` (an analysis option, ``'never'`` by default): a window's initial
state is the one the previous window's forward pass computed, under the weights
before that window's update. ``'previous_window'``: each window after a call's
first starts instead from the previous window run forward again, without
gradient, under the updated weights (from the state that window started from).
``'call_start'``: from the call's first window run forward again up to the
window, from the state carried into the call (so window ``j`` of a call gets a
state recomputed over its ``j·K`` preceding steps, as block ``j`` of
``TargetProp``'s forward initialisation does). The states an update sees are
then fresh for its weights; the cost is one more forward window per update
(``'previous_window'``) or ``j`` more (``'call_start'``). Gradient estimates
(weights fixed) and terminal-loss tasks (one update per batch) are unchanged by
it.

``checkpoint_every`` (None by default: off): exact BPTT within each window in
memory about ``sqrt(K)``: the state is kept only every ``checkpoint_every``
steps and the steps between are run again in the backward pass
(``tfcredit.methods.recompute``; Chen et al. 2016, Gruslys et al. 2016). Same
gradient, about one more forward pass.
"""

from typing import Optional, Union

import tensorflow as tf

from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.methods import base
from tfcredit.methods import jit
from tfcredit.methods import recompute
from tfcredit.methods import registry
from tfcredit.tasks import base as task_base


RECOMPUTE_STATE = ('never', 'previous_window', 'call_start')


def check_window_fits(name: str, window: Optional[int],
                      task: task_base.Task) -> None:
  """Refuses a window longer than an episodic task's sequences: it would be full
  BPTT under another name (with per-step losses divided by the nominal window, a
  smaller objective). Shared by the methods whose ``window`` is truncated BPTT's
  (DNI; RTRL and its approximations, which update once per window).

  Args:
    name: the method's class name, as the message names the binding.
    window: steps per window; None (BPTT's whole sequences) always fits.
    task: the task to train on.

  Raises:
    ConfigurationError: ``window`` is longer than the task's sequences.
  """
  if window is None:
    return
  steps = task_base.episode_length(task)
  if steps is not None and window > steps:
    raise ConfigurationError(
        f'{name}.window={window} is longer than the {type(task).__name__} '
        f'sequences ({steps} steps): use at most {steps} ({name}.window = {steps} '
        'is full BPTT)')


def check_terminal_padding(name: str, window: Optional[int],
                           task: task_base.Task) -> None:
  """Refuses windows shorter than the longest sequence of a task with padded
  sequences and one target each (``tfcredit.masking``): the batch's windows
  start at step 0, so a shorter sequence's end falls in an earlier window than
  the batch's last, where the loss is read, and truncation would cut its loss
  from its own steps. ``window`` None (whole sequences) fits."""
  if not task.masked or task.readout != task_base.TERMINAL or window is None:
    return
  steps = task_base.episode_length(task)
  if steps is not None and window < steps:
    raise ConfigurationError(
        f'{name}.window={window} is shorter than the longest sequence ({steps} '
        f'steps) of task {task.name!r}, whose sequences have different lengths '
        f'and one target each: use {name}.window = {steps} (whole sequences), '
        'or RTRL, UORO or SnAp1, which carry the gradient forward to each '
        "sequence's own end")


@registry.register
class TruncatedBPTT(base.Method):
  """Truncated BPTT with windows of ``window`` steps."""

  EXAMPLE_ARGUMENTS = {'window': 5, 'windows_per_call': 2}

  def __init__(self, *, model, task, optimizer, window: int = 35,
               windows_per_call: int = 10, clip_norm: Optional[float] = None,
               recompute_state: str = 'never',
               checkpoint_every: Optional[int] = None, use_tf_function: bool = True,
               jit_compile: Union[bool, str] = jit.AUTO,
               name: Optional[str] = None):
    """Binds the method.

    Args:
      window: steps per truncation window (``K``); 35 is the PyTorch word-LM
        default, Zaremba et al. 2014 use 20 (set in their gin file).
      windows_per_call: stream tasks: windows per ``train_segment`` call.
      recompute_state: ``'never'``, ``'previous_window'`` or ``'call_start'``:
        where each window after a call's first recomputes its initial state
        from under the current weights (module docstring).
      checkpoint_every: None (off), or keep the state only every this many
        steps of a window and recompute the steps between in the backward pass
        (``tfcredit.methods.recompute``): the same gradient in memory about
        ``sqrt(window)`` with ``checkpoint_every ≈ sqrt(window)``, for about
        one more forward pass. Larger than the window: one chunk.
      jit_compile: True, False or ``'auto'`` (XLA where it pays and compiles:
        ``tfcredit.methods.jit``); ``self.jit_compile`` holds the outcome.
      model, task, optimizer, clip_norm, use_tf_function, name: as in
        ``Method``.
    """
    self.window = self._check_window(window)
    self.windows_per_call = validation.positive_int(
        'TruncatedBPTT.windows_per_call', windows_per_call)
    self.recompute_state = validation.one_of(
        'TruncatedBPTT.recompute_state', recompute_state, RECOMPUTE_STATE)
    self.checkpoint_every = None if checkpoint_every is None else (
        validation.positive_int(f'{type(self).__name__}.checkpoint_every',
                                checkpoint_every))
    jit_compile = jit.resolve(f'{type(self).__name__}.jit_compile', jit_compile,
                              model, checkpointed=self.checkpoint_every is not None)
    super().__init__(model=model, task=task, optimizer=optimizer,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name or type(self).__name__)
    if jit_compile:
      self.compile_windows()

  def _check_window(self, window):
    return validation.positive_int('TruncatedBPTT.window', window)

  def check_task(self, task: task_base.Task) -> None:
    check_window_fits(type(self).__name__, self.window, task)
    check_terminal_padding(type(self).__name__, self.window, task)

  def segment_length(self) -> Optional[int]:
    return self.window * self.windows_per_call

  def _window_ends(self, length):
    window = length if self.window is None else tf.constant(self.window)
    return self.fixed_window_ends(length, window)

  def _nominal_window(self, length):
    return length if self.window is None else self.window

  def _train_segment(self, segment, state):
    length = tf.shape(segment[0])[1]
    window_ends = self._window_ends(length)
    if (self.recompute_state != 'never'
        and self.task.readout != task_base.TERMINAL):
      state, loss_sum, norm_sum, updates = self._train_recomputed(
          segment, state, window_ends, self._nominal_window(length))
    else:
      state, loss_sum, norm_sum, updates = self.train_windows(
          segment, state, window_ends, self._nominal_window(length),
          first_window=self.first_loss_window(window_ends))
    return state, self.base_metrics(segment, loss_sum, norm_sum, updates)

  def _train_recomputed(self, segment, state, window_ends, normalizer):
    """``train_windows`` with each window's initial state recomputed: carries
    ``(state the recomputation starts from, state at the previous window's
    end)``; the first is the previous window's initial state
    (``'previous_window'``) or the call's (``'call_start'``)."""
    from_call_start = self.recompute_state == 'call_start'

    def body(index, segment, carried, start, end, totals):
      origin = 0 if from_call_start else tf.where(
          index > 1, window_ends[tf.maximum(index - 2, 0)], 0)

      def fresh(segment, carried):
        origin_state, stale = carried
        return tf.cond(
            index > 0,
            lambda: self.forward(segment[0][:, origin:start], origin_state),
            lambda: stale)

      initial = self.replicas.run(fresh, segment, carried)
      state, loss_sum, norm = self.window_update(segment, initial, start, end,
                                                 normalizer)
      loss_total, norm_total, update_total = totals
      origin_state = carried[0] if from_call_start else initial
      return (origin_state, state), (loss_total + loss_sum, norm_total + norm,
                                     update_total + 1.0)

    zero = tf.constant(0.0)
    (_, state), totals = self.for_each_window(segment, (state, state), window_ends,
                                              body, (zero, zero, zero))
    return (state, *totals)

  def _window_gradients_parts(self, inputs, targets, state, normalizer,
                              state_grad_scale):
    if self.checkpoint_every is None:
      return super()._window_gradients_parts(inputs, targets, state, normalizer,
                                             state_grad_scale)
    assert state_grad_scale is None  # Truncated BPTT scales no state gradient.
    return recompute.window_gradients(self, inputs, targets, state, normalizer,
                                      self.checkpoint_every)

  def _estimate_gradients(self, segment, state):
    window_ends = self._window_ends(tf.shape(segment[0])[1])
    return self.estimate_windows(segment, state, window_ends,
                                 first_window=self.first_loss_window(window_ends))


@registry.register
class BPTT(TruncatedBPTT):
  """Full BPTT: one window over the whole segment.

  Episodic tasks: one window per batch of whole sequences. Stream tasks: windows of
  ``sequence_length`` steps (so full BPTT of a stream is truncated BPTT with that
  window; the name says the gradient is exact within each training sequence).
  """

  EXAMPLE_ARGUMENTS = {'sequence_length': 5}

  def __init__(self, *, model, task, optimizer, sequence_length: Optional[int] = None,
               clip_norm: Optional[float] = None,
               checkpoint_every: Optional[int] = None, use_tf_function: bool = True,
               jit_compile: Union[bool, str] = jit.AUTO,
               name: Optional[str] = None):
    """Binds the method.

    Args:
      sequence_length: stream tasks only: steps per training sequence (required
        there); must be None for episodic tasks, whose sequences are whole.
      checkpoint_every: as in ``TruncatedBPTT``: exact BPTT over the sequence
        in memory about ``sqrt(T)`` (None: off).
      jit_compile: as in ``TruncatedBPTT`` (``'auto'`` by default).
      model, task, optimizer, clip_norm, use_tf_function, name: as in
        ``Method``.
    """
    if task.regime == task_base.STREAM and sequence_length is None:
      raise ConfigurationError(
          'BPTT.sequence_length is required for stream tasks (the stream is one '
          'long sequence): set BPTT.sequence_length, e.g. to 35')
    if task.regime == task_base.EPISODIC and sequence_length is not None:
      raise ConfigurationError(
          f'BPTT.sequence_length={sequence_length!r} applies to stream tasks only; '
          'episodic sequences are whole: remove the binding')
    self.sequence_length = sequence_length
    super().__init__(model=model, task=task, optimizer=optimizer,
                     window=sequence_length, windows_per_call=1,
                     clip_norm=clip_norm, checkpoint_every=checkpoint_every,
                     use_tf_function=use_tf_function,
                     jit_compile=jit_compile, name=name or 'BPTT')

  def _check_window(self, window):
    if window is None:
      return None
    return super()._check_window(window)

  def segment_length(self) -> Optional[int]:
    return self.sequence_length

"""The outer training loop and its actions (docs/design.md, "Trainer").

Split as Orbit's ``Controller`` (tensorflow/models, ``orbit/controller.py``)
splits the loop from the inner training:

* ``Calls`` is the inner training: the training calls of an epoch, from where
  ``Progress`` says the run is, each one ``Method.train_segment`` on the next
  segment under the scheduled learning rate, with the carried state of stream
  tasks. It knows nothing of checkpoints, summaries or signals.
* ``Controller`` is the outer loop: epochs of calls and, between them, its
  actions: record a call (non-finite policy, counters, progress line,
  summaries), write checkpoints at their cadence, evaluate the validation split
  after each epoch, and stop on a signal (every worker after the same call) or
  after ``stop_after_calls``.

Neither knows anything about a particular method. ``tfcredit.training.trainer``
builds both and hands the one to the other.
"""

import dataclasses
from typing import Any, Callable, Dict, Iterator, Optional

import keras
import numpy as np
import tensorflow as tf

from tfcredit.tasks import base as task_base
from tfcredit.training import distribution
from tfcredit.training import non_finite
from tfcredit.training import reporting
from tfcredit.training import signals
from tfcredit.training.checkpoints import Checkpointer
from tfcredit.training.progress import Progress

Evaluate = Callable[[str], Dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Call:
  """One training call, as ``Calls`` ran it.

  Attributes:
    metrics: the call's summed metrics, as numpy values.
    state: the carried state after the call.
    units: tokens (stream) or sequences (episodic) trained on.
    positions: how far the call moves ``Progress.position`` (columns or batches).
    learning_rate: the rate the call trained with.
    units_done: the run's units through this call, for the progress line.
  """
  metrics: Dict[str, np.ndarray]
  state: Any
  units: int
  positions: int
  learning_rate: float
  units_done: int


class Calls:
  """The inner training: one ``train_segment`` call after another.

  Args:
    task, model, method, optimizer: the run's parts (``trainer.Components``).
    schedule: the learning-rate schedule, read once per call at the fractional
      epoch.
    progress: where the run is; read here, advanced by the ``Controller``.
    batch_size: training columns (stream) or sequences per batch (episodic).
  """

  def __init__(self, *, task: task_base.Task, model: keras.Model, method,
               optimizer: keras.optimizers.Optimizer, schedule: Callable,
               progress: Progress, batch_size: int):
    self.task, self.model, self.method = task, model, method
    self.optimizer, self.schedule = optimizer, schedule
    self.progress, self.batch_size = progress, batch_size
    self.stream = task.regime == task_base.STREAM
    self.unit_name = 'tokens' if self.stream else 'sequences'
    self.units_per_epoch = task.units_per_epoch(batch_size)
    self._state = None  # The carried state; None before this process's first call.

  def epoch(self, epoch: int) -> Iterator[Call]:
    """Yields the calls of ``epoch`` from ``progress.position`` on.

    The method's ``on_epoch_start`` runs before the first call; the caller
    ends the epoch with ``finish_epoch``. Each call starts where ``progress``
    is when it is drawn, so the caller advances ``progress`` between calls.
    """
    self.method.on_epoch_start(epoch)
    for segment, units, fraction in self._segments(epoch):
      state = self._starting_state()
      rate = self.schedule(epoch + fraction)
      self.optimizer.learning_rate.assign(rate)
      self._state, metrics = self.method.train_segment(segment, state)
      per_epoch = self.units_per_epoch
      done = epoch * per_epoch + fraction * per_epoch + units
      yield Call(metrics={key: value.numpy() for key, value in metrics.items()},
                 state=self._state, units=units,
                 positions=units // self.batch_size if self.stream else 1,
                 learning_rate=rate, units_done=int(done))

  def finish_epoch(self, evaluate: Evaluate) -> Dict[str, float]:
    """After an epoch's last call, before its validation: the method's
    evaluations of the weights it trained (``evaluations_before_epoch_end``),
    returned, then its ``on_epoch_end`` (FPTT swaps in ``W̄`` here)."""
    before = self.method.evaluations_before_epoch_end(evaluate)
    self.method.on_epoch_end()
    return before

  def accept(self, metrics: Dict[str, np.ndarray]) -> None:
    """After a call's metrics are accepted: the task's ``after_training_call``
    (a curriculum moves on here), its line printed if it has one."""
    message = self.task.after_training_call(metrics)
    if message:
      print(message, flush=True)

  def _starting_state(self):
    """Zeros at an epoch's start and for every episodic batch; on a stream,
    the checkpointed carried state at this process's first call (a resume),
    else the previous call's."""
    if int(self.progress.position) == 0 or not self.stream:
      return self.model.initial_state(self.batch_size)
    if self._state is None:
      return self.progress.load_state()
    return self._state

  def _segments(self, epoch: int):
    """Yields ``(segment, units, fraction of the epoch done before it)``."""
    task, progress, batch_size = self.task, self.progress, self.batch_size
    if self.stream:
      data = task.stream('train', batch_size)
      length = data.shape[1] - 1
      while int(progress.position) < length:
        start = int(progress.position)
        end = min(start + self.method.segment_length(), length)
        inputs, targets = task.stream_window(data, start, end)
        segment = (tf.constant(inputs), tf.constant(targets))
        yield segment, batch_size * (end - start), start / length
    else:
      count = task.batches_per_epoch('train', batch_size)
      while int(progress.position) < count:
        index = int(progress.position)
        inputs, targets = task.batch('train', epoch, index, batch_size)
        yield (tf.constant(inputs), tf.constant(targets)), batch_size, index / count


@dataclasses.dataclass(frozen=True)
class Cadence:
  """When the controller acts and when it stops.

  Attributes:
    epochs: the run's length in epochs (``train.epochs``).
    checkpoint_every_calls: a checkpoint after every this many calls of the run
      (and at every epoch's end).
    on_non_finite: ``non_finite.STOP`` or ``non_finite.SKIP``.
    stop_after_calls: stop, with a checkpoint, after this many calls of this
      process; None: run to the end.
  """
  epochs: int
  checkpoint_every_calls: int
  on_non_finite: str = non_finite.STOP
  stop_after_calls: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Outcome:
  """How ``Controller.run`` ended without an exception.

  Attributes:
    valid: the last validation result of this process ({} if no epoch ended).
    stopped_after_calls: the calls of this process when ``stop_after_calls``
      ended it, else None (the run is complete).
  """
  valid: Dict[str, float]
  stopped_after_calls: Optional[int] = None


class Controller:
  """The outer loop: epochs of ``Calls`` and the actions between them.

  Args:
    calls: the inner training.
    progress: the run's counters (the same ``Progress`` as ``calls``').
    checkpointer: saves everything a run resumes from.
    reporter: the progress line and TensorBoard summaries.
    evaluate: ``split -> metrics`` (``'loss'`` among them).
    cadence: when to checkpoint and stop.
    strategy: the run's strategy (several workers agree on a stop); default: the
      current one.
    on_validation: ``(epoch, validation loss)`` after each epoch's evaluation
      (the schedule's ``observe_validation``).
    after_first_call: called once, after this process's first call is recorded
      (writes the operative gin config).
  """

  def __init__(self, calls: Calls, *, progress: Progress,
               checkpointer: Checkpointer, reporter: reporting.Reporter,
               evaluate: Evaluate, cadence: Cadence,
               strategy: Optional[tf.distribute.Strategy] = None,
               on_validation: Optional[Callable[[int, float], None]] = None,
               after_first_call: Optional[Callable[[], None]] = None):
    self.calls, self.progress = calls, progress
    self.checkpointer, self.reporter = checkpointer, reporter
    self.evaluate, self.cadence = evaluate, cadence
    self.on_validation = on_validation or (lambda epoch, loss: None)
    self.after_first_call = after_first_call or (lambda: None)
    self.calls_here = 0  # Training calls of this process.
    self._agreement = distribution.StopAgreement(
        strategy or tf.distribute.get_strategy())
    self._stop = signals.StopRequest()

  def run(self) -> Outcome:
    """Trains until ``cadence.epochs`` epochs are done.

    Side effects: trains the model; advances ``progress``; writes checkpoints,
    summaries and log lines. SIGTERM and SIGINT are deferred meanwhile
    (``signals.deferred``): the current call finishes first.

    Returns:
      The last validation result, or how many calls ``stop_after_calls`` allowed.

    Raises:
      signals.Interrupted: SIGTERM or SIGINT (on any worker); a checkpoint was
        written first.
      TrainingError: a non-finite call under ``on_non_finite='stop'``.
    """
    valid = {}
    with signals.deferred() as self._stop:
      while int(self.progress.epoch) < self.cadence.epochs:
        if not self.train_epoch():
          return Outcome(valid, stopped_after_calls=self.calls_here)
        valid = self.end_epoch()
        self.stop_if_requested()
      self.stop_if_requested()  # A signal received after the loop's last check.
    self.reporter.flush()
    return Outcome(valid)

  def train_epoch(self) -> bool:
    """Runs the rest of the current epoch's calls, acting after each.

    Returns:
      False when ``stop_after_calls`` ended it (with a checkpoint), else True.
    """
    epoch = int(self.progress.epoch)
    for call in self.calls.epoch(epoch):
      self.record(call, epoch)
      if int(self.progress.calls) % self.cadence.checkpoint_every_calls == 0:
        self.checkpointer.save(int(self.progress.calls))
      self.stop_if_requested()
      limit = self.cadence.stop_after_calls
      if limit is not None and self.calls_here >= limit:
        self.checkpointer.save(int(self.progress.calls))
        self.reporter.flush()
        return False
    return True

  def record(self, call: Call, epoch: int) -> None:
    """Records one call: the non-finite policy (which may raise), the task's
    hook, the counters and carried state in ``progress``, the operative config
    after this process's first call, the progress line and summaries."""
    metrics = non_finite.handle(call.metrics, self.cadence.on_non_finite,
                                self.checkpointer, self.progress, epoch,
                                self.calls.unit_name)
    self.calls.accept(metrics)
    self.progress.record_call(call.positions, call.units, metrics, call.state)
    self.calls_here += 1
    if self.calls_here == 1:
      self.after_first_call()
    self.reporter.record_training(
        metrics, call.units, call.learning_rate, int(self.progress.units_seen),
        epoch, self.cadence.epochs, call.units_done,
        average_loss=self.progress.average_loss)

  def end_epoch(self) -> Dict[str, float]:
    """After an epoch's last call: ends the method's epoch (``Calls.finish_epoch``,
    recording what it evaluated), evaluates the validation split, records it,
    tells ``on_validation``, moves ``progress`` to the next epoch and writes a
    checkpoint. Returns the validation result."""
    epoch, units_seen = int(self.progress.epoch), int(self.progress.units_seen)
    before = self.calls.finish_epoch(self.evaluate)
    if before:
      self.reporter.record_evaluation('valid', before, units_seen, epoch)
    valid = self.evaluate('valid')
    self.reporter.record_evaluation('valid', valid, units_seen, epoch)
    self.on_validation(epoch, valid['loss'])
    self.progress.end_epoch(valid['loss'])
    self.checkpointer.save(int(self.progress.calls))
    return valid

  def stop_requested(self) -> bool:
    """Whether to stop now: a signal this process received, or under several
    workers another's (a collective: every worker asks equally often)."""
    signum = self._agreement(self._stop.signum)
    if signum is not None and self._stop.signum is None:
      self._stop.signum = signum  # Another worker's signal.
    return signum is not None

  def stop_if_requested(self) -> None:
    """Writes a checkpoint and raises ``Interrupted`` if ``stop_requested``.

    Raises:
      signals.Interrupted: a stop was requested.
    """
    if not self.stop_requested():
      return
    path = self.checkpointer.save(int(self.progress.calls))
    self.reporter.flush()
    raise signals.Interrupted(
        f'{signals.name(self._stop.signum)} received: stopped after training call '
        f'{int(self.progress.calls)} with a checkpoint ({path}); run the same '
        'command again to resume', self._stop.signum)

"""The task contract: data, loss and metric of one problem (docs/design.md, "Task").

A task is one of two regimes:

* ``stream`` (language modelling): one long token stream per split, laid out as ``B``
  parallel columns. The recurrent state is carried from one training call to the next
  and reset at the start of each epoch; the method decides how many steps each call
  consumes.
* ``episodic`` (adding, copy, ...): batches of whole sequences. The state is zero at
  the start of every batch; the loss may exist only at the last step (``terminal``
  readout).

Loss convention (shared by every method, see ``tfcredit.methods.base``): a task
returns *unreduced* losses, ``[B, T]`` per step or ``[B]`` per sequence; the method
sums a window's per-step losses and divides by ``batch size x nominal window length``
(never by the actual window length, which would reweight ARTBP's random windows), and
averages terminal losses over the batch.
"""

import abc
import math
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfcredit.errors import ConfigurationError, DataError

STREAM = 'stream'
EPISODIC = 'episodic'
PER_STEP = 'per_step'
TERMINAL = 'terminal'

Segment = Tuple[Any, Any]  # (inputs, targets)


class Task(abc.ABC):
  """Data, loss and metric of one problem.

  Subclasses set ``name``, ``regime``, ``readout`` and ``metric_name`` and implement
  the abstract methods. Episodic tasks implement ``batch``; stream tasks implement
  ``stream``.
  """

  name: str = 'task'
  regime: str = EPISODIC
  readout: str = PER_STEP
  metric_name: str = 'loss'
  # Whether a lower metric is better (perplexity, MSE) or a higher one (accuracy).
  metric_lower_is_better: bool = True
  # Whether batches may hold padded steps (tfcredit.masking): the model then holds
  # its state through them, and ``losses`` and ``count`` leave them out.
  masked: bool = False
  # Whether the trainer passes train.seed as the task's ``seed`` (unless bound):
  # tasks whose held-out rows and data order are the run's, not the data's.
  seeded_by_run: bool = False

  # ----------------------------------------------------------------- model I/O
  @abc.abstractmethod
  def model_spec(self) -> Dict[str, Any]:
    """Keyword arguments the model needs from the task.

    Returns:
      A dict with ``input_vocab_size`` (token inputs) or ``input_dim`` (real-valued
      inputs), ``output_dim`` and ``readout``.
    """

  @abc.abstractmethod
  def segment_spec(self) -> Tuple[tf.TensorSpec, tf.TensorSpec]:
    """``(inputs, targets)`` specs with batch and time dimensions ``None``."""

  # --------------------------------------------------------------- loss/metric
  @abc.abstractmethod
  def losses(self, outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Unreduced losses: ``[B, T]`` for a per-step readout, ``[B]`` for terminal."""

  def count(self, targets: tf.Tensor) -> tf.Tensor:
    """Number of loss units in ``targets``: tokens per step, or sequences
    (a masked task counts only real steps)."""
    shape = tf.shape(targets)
    if self.readout == TERMINAL:
      return tf.cast(shape[0], tf.float32)
    return tf.cast(shape[0] * shape[1], tf.float32)

  def metric_from_loss(self, mean_loss: float) -> float:
    """The task's metric from the mean loss per counted unit (token or sequence)."""
    return float(mean_loss)

  def extra_metrics(self, outputs: tf.Tensor, targets: tf.Tensor
                    ) -> Dict[str, tf.Tensor]:
    """Additional summed metrics (e.g. number of correct predictions); default none."""
    del outputs, targets
    return {}

  # ---------------------------------------------------------------------- data
  def batch(self, split: str, epoch: int, index: int, batch_size: int) -> Segment:
    """Episodic tasks: batch ``index`` of ``epoch`` of ``split`` as numpy arrays."""
    raise NotImplementedError(f'{type(self).__name__} is not an episodic task')

  def batches_per_epoch(self, split: str, batch_size: int) -> int:
    """Episodic tasks: how many batches one pass over ``split`` has."""
    raise NotImplementedError(f'{type(self).__name__} is not an episodic task')

  def stream(self, split: str, batch_size: int) -> np.ndarray:
    """Stream tasks: the split as ``[batch_size, N]`` int32 columns."""
    raise NotImplementedError(f'{type(self).__name__} is not a stream task')

  def stream_window(self, data: np.ndarray, start: int, end: int) -> Segment:
    """Stream tasks: steps ``start .. end - 1`` of the stream ``data`` (as returned
    by ``stream``) as ``(inputs, targets)`` numpy arrays.

    The default is next-token prediction: the inputs are ``data[:, start:end]``,
    the targets the tokens that follow, ``data[:, start + 1:end + 1]``. A task
    whose targets are not its next inputs stores both in the stream and decodes
    them here (``tfcredit.tasks.lag_add``); the stream keeps one more position
    than it has steps either way.
    """
    return data[:, start:end], data[:, start + 1:end + 1]

  def units_per_epoch(self, batch_size: int) -> int:
    """Tokens (stream) or sequences (episodic) in one training epoch."""
    if self.regime == STREAM:
      return int(self.stream('train', batch_size)[:, 1:].size)
    return self.batches_per_epoch('train', batch_size) * batch_size

  # -------------------------------------------------------------- curriculum
  def checkpoint_state(self) -> Optional[tf.Module]:
    """State the task changes while training (a curriculum's position), saved in
    the run's checkpoints so a resumed run continues from it; default none."""
    return None

  def after_training_call(self, metrics: Dict[str, float]) -> Optional[str]:
    """Called by the trainer after every training call with the call's summed
    metrics (``loss_sum``, ``count``, ...); a curriculum changes the task here.
    Returns a line for the log when something changed, else None."""
    del metrics
    return None

  def final_metrics(self) -> Dict[str, Any]:
    """Entries the task adds to the run's final metrics; default none."""
    return {}

  # ------------------------------------------------------------------ export
  def vocabulary_tokens(self) -> Optional[list]:
    """The token list saved beside an export (token tasks), or None."""
    return None

  @abc.abstractmethod
  def get_config(self) -> Dict[str, Any]:
    """JSON-serialisable constructor arguments, saved with exports."""


PredictFn = Callable[[tf.Tensor, Any], Tuple[tf.Tensor, Any]]


def evaluate(task: Task, predict: PredictFn, initial_state: Callable[[int], Any],
             split: str, batch_size: int, chunk_length: int = 256
             ) -> Dict[str, float]:
  """Evaluates a predictor on a whole split; the one evaluation trainer and evaluator share.

  The loss is summed over every token (or sequence) of the split and divided by their
  total number, never a mean of per-batch means.

  Args:
    task: the task.
    predict: ``(inputs, state) -> (outputs, state)`` over a window of any length.
    initial_state: ``batch_size -> state``.
    split: ``'train'``, ``'valid'`` or ``'test'``.
    batch_size: columns (stream) or sequences per batch (episodic).
    chunk_length: stream tasks: steps per predictor call.

  Returns:
    ``{'loss': mean loss, task.metric_name: metric, 'count': units}`` plus any
    extra metrics of the task (averaged per unit).
  """
  loss_sum = 0.0
  count = 0.0
  extras: Dict[str, float] = {}

  def accumulate(outputs, targets):
    nonlocal loss_sum, count
    loss_sum += float(tf.reduce_sum(tf.cast(task.losses(outputs, targets), tf.float64)))
    count += float(task.count(targets))
    for key, value in task.extra_metrics(outputs, targets).items():
      extras[key] = extras.get(key, 0.0) + float(value)

  if task.regime == STREAM:
    data = task.stream(split, batch_size)
    state = initial_state(batch_size)
    length = data.shape[1] - 1
    for start in range(0, length, chunk_length):
      end = min(start + chunk_length, length)
      inputs, targets = task.stream_window(data, start, end)
      outputs, state = predict(tf.constant(inputs), state)
      accumulate(outputs, tf.constant(targets))
  else:
    for index in range(task.batches_per_epoch(split, batch_size)):
      inputs, targets = task.batch(split, 0, index, batch_size)
      outputs, _ = predict(tf.constant(inputs), initial_state(inputs.shape[0]))
      accumulate(outputs, tf.constant(targets))
  if count == 0:
    raise ConfigurationError(
        f'split {split!r} of task {task.name!r} has no data for batch_size='
        f'{batch_size}: use a smaller batch size')
  mean = loss_sum / count
  result = {'loss': mean, task.metric_name: task.metric_from_loss(mean),
            'count': count}
  result.update({key: value / count for key, value in extras.items()})
  return result


def check_splits(task: Task, batch_size: int, eval_batch_size: int,
                 splits=('train', 'valid', 'test')) -> None:
  """Refuses, before training, a split with no loss unit at its batch size: a
  stream shorter than two tokens per column, or an episodic split with no whole
  training batch (or no sequence to evaluate).

  Raises:
    DataError: naming the task, the split, its size and the fix.
  """
  for split in splits:
    rows = batch_size if split == 'train' else eval_batch_size
    flag = 'train.batch_size' if split == 'train' else 'train.eval_batch_size'
    if task.regime == STREAM:
      steps = task.stream(split, rows).shape[1] - 1
      if steps < 1:
        raise DataError(
            f'the {split} split of task {task.name!r} has fewer than 2 tokens '
            f'per column at {flag}={rows}: use a smaller {flag} or more text')
    elif task.batches_per_epoch(split, rows) < 1:
      raise DataError(
          f'the {split} split of task {task.name!r} has fewer sequences than one '
          f'batch at {flag}={rows}: use a smaller {flag} or more sequences')


def nats_to_bits(value: float) -> float:
  return value / math.log(2.0)


def episode_length(task: Task) -> Optional[int]:
  """The number of steps of an episodic task's sequences (None for streams)."""
  if task.regime != EPISODIC:
    return None
  length = getattr(task, 'episode_steps', None)
  if length is None:
    try:
      inputs, _ = task.batch('train', 0, 0, 1)
    except Exception:  # pylint: disable=broad-except
      return None  # Unknown here; the task reports its own data errors later.
    length = np.shape(inputs)[1]
  return int(length)

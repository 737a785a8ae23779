"""Choosing the ``tf.distribute`` strategy a run trains under (run plumbing, a flag).

* ``default``: the default strategy (one device).
* ``mirrored``: ``MirroredStrategy`` over every local GPU, or, on a machine without
  GPUs, over the logical CPU devices configured with ``split_cpu`` (tests do this).
* ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``.

Only the chief writes files (summaries, configs, checkpoints, exports); other
workers write theirs to a scratch folder so the collective save still runs.

Preemption of one worker: a checkpoint save is collective, so every worker must
stop after the same training call. ``StopAgreement`` all-reduces each worker's
pending signal after every call (one scalar, the largest signal number), so a
SIGTERM to any worker stops all of them, with one checkpoint, at that call.
"""

import json
import os
import signal
from typing import Callable, Optional

import tensorflow as tf

from tfcredit.errors import ConfigurationError

STRATEGIES = ('default', 'mirrored', 'multi_worker')
# What StopAgreement agrees on, first wins: SIGTERM (preemption), then SIGINT.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def split_cpu(count: int) -> None:
  """Splits the first physical CPU into ``count`` logical devices.

  Must run before TensorFlow initialises its devices (before the first op).
  """
  cpu = tf.config.list_physical_devices('CPU')[0]
  existing = tf.config.get_logical_device_configuration(cpu)
  if existing is not None and len(existing) == count:
    return
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The strategy called ``name`` (see the module docstring)."""
  if name not in STRATEGIES:
    raise ConfigurationError(
        f'--strategy={name!r} is unknown: use one of {", ".join(STRATEGIES)}')
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    gpus = tf.config.list_logical_devices('GPU')
    devices = [d.name for d in gpus] or [
        d.name for d in tf.config.list_logical_devices('CPU')]
    return tf.distribute.MirroredStrategy(devices)
  if 'TF_CONFIG' not in os.environ:
    raise ConfigurationError(
        '--strategy=multi_worker needs the TF_CONFIG environment variable '
        '(cluster and task); see README, "Distributed training"')
  return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
  """Whether this process writes the run's files."""
  strategy = strategy or tf.distribute.get_strategy()
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task = json.loads(os.environ.get('TF_CONFIG', '{}')).get('task', {})
  kind, index = task.get('type', 'worker'), task.get('index', 0)
  return kind == 'chief' or (kind == 'worker' and index == 0 and 'chief' not in
                             json.loads(os.environ['TF_CONFIG']).get('cluster', {}))


def writable_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
  """``model_dir`` on the chief; ``model_dir/.worker_<index>`` on other workers.

  Non-chief workers must still write (checkpoint and SavedModel saves are
  collective), but nothing they write is the run's.
  """
  if is_chief(strategy):
    return model_dir
  task = json.loads(os.environ.get('TF_CONFIG', '{}')).get('task', {})
  return os.path.join(model_dir, f'.{task.get("type", "worker")}_'
                                 f'{task.get("index", 0)}')


class StopAgreement:
  """Whether to stop after this training call: this worker's pending signal, or
  under ``MultiWorkerMirroredStrategy`` any worker's.

  Call it after every training call, on every worker (the same number of times:
  it is a collective under ``MultiWorkerMirroredStrategy``).
  ``tf.distribute.experimental.PreemptionCheckpointHandler`` does the same for
  its own checkpoint manager; this keeps the trainer's checkpoints (numbered by
  training call, written atomically) and its exit codes.

  Args:
    strategy: the run's strategy.
  """

  def __init__(self, strategy: tf.distribute.Strategy):
    self._agree: Optional[Callable] = None
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):

      @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
      def counts(pending):  # How many workers have each signal pending.
        per_replica = strategy.run(lambda: tf.identity(pending))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
      self._agree = counts

  def __call__(self, pending: Optional[int]) -> Optional[int]:
    """The signal number to stop on (``pending`` or another worker's), or None."""
    if self._agree is None:
      return pending
    # One replica per worker on CPUs, several on GPUs: a count > 0 is enough.
    counts = self._agree(tf.constant(
        [float(pending == signum) for signum in _STOP_SIGNALS])).numpy()
    return next((signum for signum, count in zip(_STOP_SIGNALS, counts)
                 if count > 0), None)

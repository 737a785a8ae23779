"""Choosing the ``tf.distribute`` strategy a run trains under (run plumbing, a flag).

* ``default``: the default strategy (one device).
* ``mirrored``: ``MirroredStrategy`` over every local GPU, or, on a machine without
  GPUs, over the logical CPU devices configured with ``split_cpu`` (tests do this).
* ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``.

Only the chief writes files (summaries, configs, checkpoints, exports); other
workers write theirs to a scratch folder so the collective save still runs.
"""

import json
import os
from typing import Optional

import tensorflow as tf

from tfcredit.errors import ConfigurationError

STRATEGIES = ('default', 'mirrored', 'multi_worker')


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

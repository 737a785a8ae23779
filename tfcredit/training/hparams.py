"""A run's hyperparameters and final metrics for TensorBoard's HParams dashboard
(docs/design.md, "Trainer").

A run is one HParams session. ``Session.start`` writes its hyperparameters
(``values``: the task, model, method and its arguments, optimizer and the
training settings) as the HParams plugin's session-start summary into the
event files of ``model_dir`` itself, so the run's ``train/`` and ``valid/``
event directories are the session's sub-runs and their scalars its metrics.
``Session.finish`` adds the final metrics, the numbers of
``final_metrics.json``, as ``final/<name>`` scalars there. ``tensorboard
--logdir`` over several model directories (tools/compare.py's
``--output_dir``) then shows one row per run, its trial id the basename of its
model directory.

Only the chief writes. A resumed run keeps the entry its first invocation wrote
(settings changed on resume are in ``config_changes.txt``), so a run is one
session however often it was resumed.
"""

import functools
import glob
import os
from typing import Any, Dict, Mapping, Union

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.hparams import metadata

from tfcredit.training.reporting import EVENTS

Value = Union[bool, int, float, str]
FINAL_PREFIX = 'final/'  # The tags of the final metrics: final/valid_loss, ...


def values(parts, method_arguments: Mapping[str, Any],
           **settings: Any) -> Dict[str, Value]:
  """The run's hyperparameters, by name.

  Args:
    parts: the run's ``components.Components``: ``task``, ``model``, ``method``,
      ``optimizer`` (by class name), the model's ``units``, ``cell`` and
      ``num_layers`` when it has them (``RecurrentModel``), and the base
      ``learning_rate``.
    method_arguments: the method's constructor arguments
      (``components.method_arguments``), as ``method.<name>``; scalars only.
    **settings: more of ``train``'s settings (``batch_size``, ``seed``, the
      ``lr_schedule`` class...), by name.

  Returns:
    bool, int, float or str values (classes by name, other objects by ``str``);
    None values are left out.
  """
  model = parts.model
  found = {'task': type(parts.task).__name__, 'model': type(model).__name__,
           'model.units': getattr(model, 'units', None),
           'model.cell': getattr(model, 'cell_type', None),
           'model.num_layers': getattr(model, 'num_layers', None),
           'method': type(parts.method).__name__,
           'optimizer': type(parts.optimizer).__name__,
           'learning_rate': parts.learning_rate}
  found.update({f'method.{name}': value for name, value in method_arguments.items()
                if isinstance(value, (bool, int, float, str, np.generic))})
  found.update(settings)
  return {name: _value(value) for name, value in found.items() if value is not None}


def _value(value: Any) -> Value:
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, functools.partial):
    return _value(value.func)
  return getattr(value, '__name__', None) or str(value)


class Session:
  """The run's HParams session in ``model_dir``; writes nothing unless ``write``
  (the chief)."""

  def __init__(self, model_dir: str, write: bool = True):
    self.model_dir, self.write = model_dir, write

  def start(self, hparams: Mapping[str, Value]) -> bool:
    """Writes ``hparams`` unless ``model_dir`` holds them already (a resumed
    run). Returns whether it wrote."""
    if not self.write or recorded(self.model_dir):
      return False
    trial = os.path.basename(os.path.normpath(os.path.abspath(self.model_dir)))
    writer = tf.summary.create_file_writer(self.model_dir)
    with writer.as_default():
      hparams_api.hparams(dict(hparams), trial_id=trial)
    writer.close()
    return True

  def finish(self, final: Mapping[str, Any], step: int) -> None:
    """Writes the numbers of ``final`` (the final metrics) as ``final/<name>``
    scalars at ``step`` (units trained on, the step of every summary)."""
    if not self.write:
      return
    writer = tf.summary.create_file_writer(self.model_dir)
    with writer.as_default(step=step):
      for name, value in final.items():
        if isinstance(value, (bool, int, float, np.number)):
          tf.summary.scalar(f'{FINAL_PREFIX}{name}', float(value))
    writer.close()


def recorded(model_dir: str) -> bool:
  """Whether the event files directly in ``model_dir`` hold a session start."""
  for path in sorted(glob.glob(os.path.join(model_dir, EVENTS))):
    try:
      for record in tf.data.TFRecordDataset(path):
        event = tf.compat.v1.Event.FromString(record.numpy())
        if any(value.tag == metadata.SESSION_START_INFO_TAG and
               value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME
               for value in event.summary.value):
          return True
    except tf.errors.DataLossError:  # A file cut short; the others may hold it.
      continue
  return False

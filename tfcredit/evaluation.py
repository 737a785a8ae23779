"""Evaluation of a SavedModel export, with the same code path the trainer uses.

``evaluate_export`` loads the export's endpoints, rebuilds the task (data and loss
only) from its ``task.json`` asset, checks the vocabulary, and runs
``tfcredit.tasks.base.evaluate`` through the export's ``step`` endpoint.
"""

import importlib
import inspect
import os
from typing import Any, Dict, Optional

import tensorflow as tf

from tfcredit import export as export_lib
from tfcredit.errors import ConfigurationError, DataError
from tfcredit.tasks import base as task_base


def task_from_info(info: Dict[str, Any], data_dir: Optional[str] = None
                   ) -> task_base.Task:
  """Rebuilds the task an export was trained on."""
  module_name, _, class_name = info['task_class'].rpartition('.')
  try:
    task_class = getattr(importlib.import_module(module_name), class_name)
  except (ImportError, AttributeError):
    raise DataError(
        f'the export names task class {info["task_class"]!r}, which this tfcredit '
        'does not have: evaluate it with the tfcredit version that trained it'
    ) from None
  kwargs = dict(info['task_config'])
  if 'data_dir' in inspect.signature(task_class.__init__).parameters:
    kwargs['data_dir'] = data_dir
  return task_class(**kwargs)


def evaluate_export(path: str, split: str = 'test', data_dir: Optional[str] = None,
                    batch_size: Optional[int] = None) -> Dict[str, Any]:
  """Evaluates the export at ``path`` on ``split``; returns the metrics."""
  if not os.path.isdir(path) or not os.path.exists(
      os.path.join(path, 'saved_model.pb')):
    raise ConfigurationError(
        f'--saved_model={path!r} is not a SavedModel directory (no saved_model.pb): '
        'give an export path such as saved_models/<run>/<n>')
  module, info, tokens = export_lib.load(path)
  task = task_from_info(info, data_dir)
  if tokens is not None and tokens != task.vocabulary_tokens():
    raise DataError(
        f'the vocabulary saved in {path} differs from the one rebuilt from the data '
        'in the data directory: evaluate on the same corpus files the model was '
        'trained on (--data_dir)')
  batch_size = batch_size or info['eval_batch_size']

  def predict(inputs, state):
    result = module.step(inputs, state)
    return result['outputs'], result['state']

  initial_state = lambda batch: module.initial_state(tf.constant(batch, tf.int32))
  result = task_base.evaluate(task, predict, initial_state, split, batch_size)
  result.update({'split': split, 'saved_model': path, 'task': info['task_name']})
  return result

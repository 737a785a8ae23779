"""SavedModel export and loading (docs/design.md, "SavedModel").

An export is a ``tf.Module`` with three ``tf.function`` endpoints, each with an input
signature, so the evaluator needs no tfcredit model code:

* ``serve(inputs) -> {'outputs'}``: whole sequences from the zero state (also the
  ``serving_default`` signature);
* ``step(inputs, state) -> {'outputs', 'state'}``: one window of any length from a
  given state (a flat list of ``[B, units]`` tensors), for stream evaluation;
* ``initial_state(batch_size) -> state``: the zero state in that flat layout.

Assets: ``task.json`` (the task's class and constructor arguments, its metric and
regime, and the evaluation batch size used in training) and, for token tasks,
``vocabulary.txt`` (one token per line, in id order). Exports go to numbered
subdirectories ``<root>/<n>``.
"""

import json
import os
import tempfile
from typing import Any, Dict, Optional

import keras
import tensorflow as tf

from tfcredit.tasks import base as task_base

TASK_INFO = 'task.json'
VOCABULARY = 'vocabulary.txt'


class ExportModule(tf.Module):
  """The exported endpoints of a trained model."""

  def __init__(self, model: keras.Model, task: task_base.Task, assets_dir: str,
               eval_batch_size: int):
    super().__init__(name='tfcredit_export')
    self.model = model
    self._structure = model.state_spec()
    flat_spec = tf.nest.flatten(self._structure)
    inputs_spec = task.segment_spec()[0]
    self.serve = tf.function(self._serve, input_signature=[inputs_spec])
    self.step = tf.function(self._step, input_signature=[inputs_spec, flat_spec])
    self.initial_state = tf.function(
        self._initial_state, input_signature=[tf.TensorSpec([], tf.int32)])
    info = {'task_class': f'{type(task).__module__}.{type(task).__qualname__}',
            'task_config': task.get_config(), 'task_name': task.name,
            'metric': task.metric_name, 'regime': task.regime,
            'readout': task.readout, 'eval_batch_size': eval_batch_size}
    info_path = os.path.join(assets_dir, TASK_INFO)
    with open(info_path, 'w') as f:
      json.dump(info, f, indent=1)
    self.task_info = tf.saved_model.Asset(info_path)
    tokens = task.vocabulary_tokens()
    if tokens is not None:
      vocab_path = os.path.join(assets_dir, VOCABULARY)
      with open(vocab_path, 'w', encoding='utf-8') as f:
        f.write(''.join(token + '\n' for token in tokens))
      self.vocabulary = tf.saved_model.Asset(vocab_path)

  def _serve(self, inputs):
    state = self.model.initial_state(tf.shape(inputs)[0])
    outputs, _ = self.model.unroll(inputs, state, training=False)
    return {'outputs': outputs}

  def _step(self, inputs, flat_state):
    state = tf.nest.pack_sequence_as(self._structure, flat_state)
    outputs, state = self.model.unroll(inputs, state, training=False)
    return {'outputs': outputs, 'state': tf.nest.flatten(state)}

  def _initial_state(self, batch_size):
    return tf.nest.flatten(self.model.initial_state(batch_size))


def next_export_path(root: str) -> str:
  """``<root>/<n>`` with ``n`` one more than the largest existing number."""
  existing = [int(name) for name in (os.listdir(root) if os.path.isdir(root) else [])
              if name.isdigit()]
  return os.path.join(root, str(max(existing, default=0) + 1))


def export(model: keras.Model, task: task_base.Task, root: str,
           eval_batch_size: int = 10) -> str:
  """Saves ``model`` for ``task`` under ``root/<n>`` and returns that path."""
  path = next_export_path(root)
  with tempfile.TemporaryDirectory() as assets_dir:
    module = ExportModule(model, task, assets_dir, eval_batch_size)
    tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
  return path


def load(path: str):
  """Loads an export; returns ``(module, task_info, vocabulary tokens or None)``."""
  module = tf.saved_model.load(path)
  with open(module.task_info.asset_path.numpy().decode(), encoding='utf-8') as f:
    info: Dict[str, Any] = json.load(f)
  tokens: Optional[list] = None
  if hasattr(module, 'vocabulary'):
    with open(module.vocabulary.asset_path.numpy().decode(), encoding='utf-8') as f:
      tokens = f.read().split('\n')[:-1]
  return module, info, tokens

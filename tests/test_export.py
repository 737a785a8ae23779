"""SavedModel round trip: the export reproduces the in-memory model."""

import numpy as np
import tensorflow as tf

import tfcredit
from tfcredit import export as export_lib
from tfcredit import evaluation
from tfcredit.tasks import base as task_base


def _model(task, **kwargs):
  model = tfcredit.RecurrentModel(**task.model_spec(), units=8, **kwargs)
  inputs, _ = task.batch('train', 0, 0, 4) if task.regime == 'episodic' else (
      task.stream('train', 4)[:, :3], None)
  model.build_for(tf.constant(inputs))
  return model


def test_export_reproduces_model_outputs_and_state(tmp_path):
  task = tfcredit.MarkovLanguageTask(train_length=500, eval_length=200)
  model = _model(task, cell='gru', num_layers=2)
  path = export_lib.export(model, task, str(tmp_path / 'exports'), eval_batch_size=4)
  assert path.endswith('/1')
  loaded, info, tokens = export_lib.load(path)
  assert info['metric'] == 'perplexity' and tokens is None
  inputs = tf.constant(task.stream('valid', 4)[:, :13])
  expected, _ = model.unroll(inputs, model.initial_state(4))
  np.testing.assert_allclose(loaded.serve(inputs)['outputs'], expected, atol=1e-6)
  # `step` carries state: two windows equal one long window.
  state = loaded.initial_state(tf.constant(4))
  first = loaded.step(inputs[:, :6], state)
  second = loaded.step(inputs[:, 6:], first['state'])
  np.testing.assert_allclose(
      tf.concat([first['outputs'], second['outputs']], axis=1), expected, atol=1e-5)
  _, final = model.unroll(inputs, model.initial_state(4))
  np.testing.assert_allclose(second['state'], tf.nest.flatten(final), atol=1e-5)
  # A second export of the same run gets the next number.
  assert export_lib.export(model, task, str(tmp_path / 'exports')).endswith('/2')


def test_evaluator_on_export_equals_in_memory_evaluation(tmp_path):
  task = tfcredit.AddingTask(sequence_length=12, eval_batches=3)
  model = _model(task, cell='lstm')
  path = export_lib.export(model, task, str(tmp_path / 'exports'), eval_batch_size=5)
  from_export = evaluation.evaluate_export(path, 'valid')
  predict = lambda x, s: model.unroll(x, s)
  in_memory = task_base.evaluate(task, predict, model.initial_state, 'valid', 5)
  assert from_export['count'] == in_memory['count'] == 15
  np.testing.assert_allclose(from_export['mse'], in_memory['mse'], rtol=1e-6)

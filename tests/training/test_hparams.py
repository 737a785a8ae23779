"""Every run is one session of TensorBoard's HParams dashboard: its settings at
the start, its final metrics at the end, once however often it resumes."""

import functools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.testing import clean_gin, configure_tiny  # noqa: F401
from tfcredit.testing import hparams_sessions
from tfcredit.training import components
from tfcredit.training import hparams
from tfcredit.training import run_directory
from tfcredit.training import schedules

pytestmark = pytest.mark.usefixtures('clean_gin')

# gin_configs/testing/tiny.gin, written out.
TINY_HPARAMS = {
    'task': 'AddingTask', 'model': 'RecurrentModel', 'model.units': 16.0,
    'model.cell': 'lstm', 'model.num_layers': 1.0, 'method': 'TruncatedBPTT',
    'method.window': 5.0, 'optimizer': 'Adam', 'learning_rate': 0.01,
    'lr_schedule': 'Constant', 'batch_size': 8.0, 'precision': 'float32',
    'seed': 1.0, 'epochs': 2.0}


def _final_scalars(model_dir):
  """``{tag: [(step, value)]}`` of the final metrics' scalars in ``model_dir``."""
  found = {}
  for name in os.listdir(model_dir):
    if name.startswith('events.out.tfevents.'):
      for event in tf.compat.v1.train.summary_iterator(
          os.path.join(model_dir, name)):
        for value in event.summary.value:
          if value.tag.startswith('final/'):
            found.setdefault(value.tag, []).append(
                (event.step, float(tf.make_ndarray(value.tensor))))
  return found


def test_a_run_records_its_settings_and_final_metrics(tmp_path):
  configure_tiny()
  model_dir = str(tmp_path / 'tiny_run')
  tfcredit.train(model_dir, export_dir=None)
  [(trial, recorded)] = hparams_sessions(model_dir)
  assert trial == 'tiny_run'
  for name, value in TINY_HPARAMS.items():
    assert recorded[name] == value, name
  assert all(isinstance(value, (bool, float, str)) for value in recorded.values())
  final = json.load(open(os.path.join(model_dir, 'final_metrics.json')))
  numbers = {key: value for key, value in final.items()
             if isinstance(value, (int, float))}
  scalars = _final_scalars(model_dir)
  assert set(scalars) == {f'final/{key}' for key in numbers}
  for key, value in numbers.items():
    [(step, written)] = scalars[f'final/{key}']
    assert step == final['units_seen']
    assert written == np.float32(value), key
  # train/ and valid/ hold the curves, as sub-runs of the session.
  assert not hparams_sessions(os.path.join(model_dir, 'train'))


def test_a_resumed_run_stays_one_session(tmp_path):
  model_dir = str(tmp_path / 'run')
  configure_tiny()
  tfcredit.train(model_dir, export_dir=None, stop_after_calls=3)
  assert len(hparams_sessions(model_dir)) == 1
  assert not _final_scalars(model_dir)
  configure_tiny('train.epochs = 3')  # A change a resume allows.
  final = tfcredit.train(model_dir, export_dir=None)
  [(_, recorded)] = hparams_sessions(model_dir)
  assert recorded['epochs'] == 2.0  # The first invocation's settings.
  assert _final_scalars(model_dir)['final/epochs'] == [(final['units_seen'], 3.0)]


def test_the_values_are_scalars_and_a_partials_arguments_count():
  method = functools.partial(tfcredit.ARTBP, mean_length=4, seed=5)
  parts = components.build_components(
      task=functools.partial(tfcredit.AddingTask, sequence_length=20),
      method=method, model=functools.partial(tfcredit.RecurrentModel, units=8),
      optimizer=keras.optimizers.SGD,
      learning_rate=0.5, batch_size=4, seed=1)
  values = hparams.values(
      parts, components.method_arguments(method, seed=1), seed=1,
      lr_schedule=functools.partial(schedules.StepDecay, factor=0.5),
      data_dir=None)
  assert values['method'] == 'ARTBP'
  assert values['method.mean_length'] == 4 and values['method.seed'] == 5
  assert values['method.alpha'] == 4.0  # A default.
  assert values['lr_schedule'] == 'StepDecay'
  assert values['optimizer'] == 'SGD' and values['learning_rate'] == 0.5
  assert 'data_dir' not in values and 'method.name' not in values  # None.
  assert all(type(value) in (bool, int, float, str) for value in values.values())


def test_only_the_chief_writes(tmp_path):
  session = hparams.Session(str(tmp_path), write=False)
  assert not session.start({'seed': 1})
  session.finish({'valid_loss': 1.0}, step=1)
  assert not os.listdir(tmp_path)


def test_overwrite_deletes_the_session_and_nothing_else(tmp_path):
  model_dir = str(tmp_path)
  assert hparams.Session(model_dir).start({'seed': 1})
  assert not hparams.Session(model_dir).start({'seed': 2})  # Already there.
  open(tmp_path / 'notes.txt', 'w').close()
  run_directory.prepare(model_dir, 'train.seed = 1\n', overwrite=True)
  assert sorted(os.listdir(model_dir)) == ['config.gin', 'notes.txt']

"""``train(...)`` from Python: instances as well as classes, a method's arguments
in a ``functools.partial``, and the instances it refuses."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit import precision as precision_lib
from tfcredit.errors import ConfigurationError
from tfcredit.testing import checkpoint_weights
from tfcredit.testing import clean_gin  # noqa: F401
from tfcredit.testing import cleared_gin_config
from tfcredit.testing import hparams_sessions
from tfcredit.testing import tiny_model
from tfcredit.training import components

pytestmark = pytest.mark.usefixtures('clean_gin')

TASK = dict(sequence_length=20, train_batches_per_epoch=4, eval_batches=2)
SETTINGS = dict(export_dir=None, epochs=2, batch_size=8, eval_batch_size=8,
                seed=1, deterministic=True, log_every_seconds=1e9)
METHOD = functools.partial(tfcredit.TruncatedBPTT, window=5)
CLASSES = dict(task=functools.partial(tfcredit.AddingTask, **TASK),
               model=functools.partial(tfcredit.RecurrentModel, units=16),
               optimizer=keras.optimizers.Adam, learning_rate=0.01, method=METHOD)


def _instances(seed=1):
  """The run of ``CLASSES`` as instances, made after seeding as ``train`` seeds
  before it builds them; the learning rate is the optimizer's."""
  keras.utils.set_random_seed(seed)
  task = tfcredit.AddingTask(**TASK)
  return dict(task=task, model=tfcredit.RecurrentModel(units=16,
                                                       **task.model_spec()),
              optimizer=keras.optimizers.Adam(learning_rate=0.01), method=METHOD)


@pytest.fixture(scope='module')
def from_classes(tmp_path_factory):
  """The final metrics, weights and HParams of the run built from classes."""
  model_dir = str(tmp_path_factory.mktemp('classes') / 'run')
  with cleared_gin_config():
    final = tfcredit.train(model_dir, **CLASSES, **SETTINGS)
  return final, checkpoint_weights(model_dir), hparams_sessions(model_dir)


def _assert_same_run(model_dir, final, from_classes):
  expected, weights, sessions = from_classes
  assert hparams_sessions(model_dir) == sessions  # learning_rate 0.01 in both.
  for key in ('valid_loss', 'test_loss', 'updates', 'units_seen'):
    assert final[key] == expected[key], key
  found = checkpoint_weights(model_dir)
  assert found.keys() == weights.keys() and found
  for name, value in weights.items():
    np.testing.assert_array_equal(found[name], value, err_msg=name)


def test_instances_train_as_their_classes(tmp_path, from_classes):
  model_dir = str(tmp_path / 'run')
  final = tfcredit.train(model_dir, **_instances(), **SETTINGS)
  _assert_same_run(model_dir, final, from_classes)


def test_a_run_from_instances_resumes_with_fresh_instances(tmp_path, capsys,
                                                           from_classes):
  model_dir = str(tmp_path / 'run')
  stopped = tfcredit.train(model_dir, **_instances(), **SETTINGS,
                           stop_after_calls=2)
  assert stopped['stopped_after_calls'] == 2
  # Other initial weights: what the run continues from is the checkpoint's.
  final = tfcredit.train(model_dir, **_instances(seed=7), **SETTINGS)
  assert 'resumed from' in capsys.readouterr().out
  _assert_same_run(model_dir, final, from_classes)


def _build(method, seed=1, **overrides):
  arguments = dict(task=functools.partial(tfcredit.AddingTask, **TASK),
                   model=functools.partial(tfcredit.RecurrentModel, units=8),
                   optimizer=keras.optimizers.SGD, learning_rate=0.1)
  arguments.update(overrides)
  return components.build_components(method=method, batch_size=8, seed=seed,
                                     **arguments)


@pytest.mark.parametrize('keywords, seed', [({}, 1), ({'seed': 5}, 5)],
                         ids=['train-seed', 'bound-seed'])
def test_a_partial_gives_a_methods_arguments_and_its_seed_wins(keywords, seed):
  method = _build(functools.partial(tfcredit.ARTBP, mean_length=4, **keywords),
                  seed=1).method
  assert method.mean_length == 4
  assert int(method.truncation_seed.numpy()) == seed


def test_an_optimizer_instance_gives_the_base_learning_rate():
  parts = _build(METHOD, optimizer=keras.optimizers.SGD(learning_rate=0.01),
                 learning_rate=components.DEFAULT_LEARNING_RATE)
  assert parts.learning_rate == 0.01  # As given, not its float32 neighbour.
  same = _build(METHOD, optimizer=keras.optimizers.SGD(learning_rate=0.25),
                learning_rate=0.25)
  assert same.learning_rate == 0.25


def test_instances_made_in_the_strategys_scope_are_accepted(mirrored):
  strategy = mirrored
  task = tfcredit.AddingTask(**TASK)
  with strategy.scope():
    model = tfcredit.RecurrentModel(units=8, **task.model_spec())
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
  parts = components.build_components(
      task=task, method=METHOD, model=model, optimizer=optimizer,
      learning_rate=0.1, batch_size=8, strategy=strategy)
  assert parts.model is model and parts.optimizer is optimizer


def _refusal(case, mirrored):
  """``(train's arguments, words the message must hold)`` of a refused case."""
  task = tfcredit.AddingTask(**TASK)
  model = lambda: tfcredit.RecurrentModel(units=8, **task.model_spec())
  if case == 'method instance':
    built = tiny_model(task)
    optimizer = keras.optimizers.SGD()
    optimizer.build(built.trainable_variables)
    return (dict(method=tfcredit.TruncatedBPTT(model=built, task=task,
                                               optimizer=optimizer, window=5)),
            ['train.method', 'TruncatedBPTT', 'functools.partial'])
  if case == 'model in float32 under mixed_bfloat16':
    return (dict(task=task, model=model(), precision='mixed_bfloat16'),
            ['train.model', 'float32', "'mixed_bfloat16'", 'policy_scope'])
  if case == 'model in mixed_bfloat16 under float32':
    with precision_lib.policy_scope('mixed_bfloat16'):
      return (dict(task=task, model=model()),
              ['train.model', 'bfloat16', "'float32'", 'policy_scope'])
  if case == 'model outside the strategy':
    return (dict(task=task, model=model(), strategy=mirrored),
            ['train.model', 'MirroredStrategy', '2 replicas', 'strategy.scope()'])
  if case == 'optimizer outside the strategy':
    return (dict(optimizer=keras.optimizers.SGD(learning_rate=0.1),
                 learning_rate=0.1, strategy=mirrored),
            ['train.optimizer', 'MirroredStrategy', 'strategy.scope()'])
  if case == 'model for another task':
    other = tfcredit.RecurrentModel(units=8, input_dim=2, output_dim=3)
    return (dict(task=task, model=other),
            ['train.model', 'output_dim=3', 'output_dim=1', 'model_spec()'])
  if case == 'two learning rates':
    return (dict(optimizer=keras.optimizers.SGD(learning_rate=0.1),
                 learning_rate=0.5),
            ['train.learning_rate=0.5', 'learning_rate 0.1', 'once'])
  if case == 'keras schedule':
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    return (dict(optimizer=keras.optimizers.SGD(learning_rate=schedule)),
            ['train.optimizer', 'schedule', 'train.lr_schedule'])
  if case == 'built optimizer':
    optimizer = keras.optimizers.SGD()
    optimizer.build(tiny_model(task).trainable_variables)
    return dict(optimizer=optimizer), ['train.optimizer', 'already built']
  assert case == 'task instance with data_dir'
  return (dict(task=task, data_dir='/tmp/data'),
          ["train.data_dir='/tmp/data'", 'AddingTask instance', 'constructor'])


@pytest.mark.parametrize('case', [
    'method instance', 'model in float32 under mixed_bfloat16',
    'model in mixed_bfloat16 under float32', 'model outside the strategy',
    'optimizer outside the strategy', 'model for another task',
    'two learning rates', 'keras schedule', 'built optimizer',
    'task instance with data_dir'])
def test_refused_instances(tmp_path, case, mirrored):
  overrides, words = _refusal(case, mirrored)
  arguments = {**CLASSES, **SETTINGS, **overrides}
  with pytest.raises(ConfigurationError) as raised:
    tfcredit.train(str(tmp_path / 'run'), **arguments)
  # One line; gin adds its call site on a line of its own.
  message, *rest = str(raised.value).splitlines()
  assert all('In call to configurable' in line for line in rest if line.strip())
  for word in words:
    assert word in message, (word, message)
  assert not (tmp_path / 'run').exists()  # Refused before anything was written.

"""What ``train`` trains, built from classes or taken as instances
(docs/design.md, "Trainer").

``build_components`` turns ``train``'s ``task``, ``model``, ``optimizer`` and
``method`` into the run's parts. Each may be a class or factory (a gin
configurable, a ``functools.partial``), which is built here with what it needs
from the others; or, from Python, an instance:

* a task: a ``tfcredit.tasks.base.Task``, used as it is (``data_dir`` is for a
  task class only);
* a model: an object with the contract of ``tfcredit.models.contract``, built
  here (``build_for``) if it is not yet; it must compute in ``precision`` and
  have its variables in the strategy's scope, and its ``get_config`` must agree
  with ``task.model_spec()``;
* an optimizer: a Keras optimizer not yet built, with a float learning rate
  (the schedule drives it); that rate is the base rate unless ``learning_rate``
  is given too (then they must agree);
* a method cannot be an instance (it is built on the model, task and
  optimizer): its arguments are given with a class, gin bindings, or
  ``functools.partial(tfcredit.ARTBP, mean_length=20)``.
"""

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Dict, Optional, Tuple

import gin
import keras
import tensorflow as tf

from tfcredit import precision as precision_lib
from tfcredit.errors import ConfigurationError
from tfcredit.models.contract import check_model
from tfcredit.tasks import base as task_base

# train.learning_rate's default: with an optimizer instance, the instance's own
# rate is then the base rate.
DEFAULT_LEARNING_RATE = 1.0


@dataclasses.dataclass
class Components:
  """What ``train`` trains: the task, the built model and optimizer, the method,
  and the base learning rate the schedule starts from."""
  task: task_base.Task
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  method: Any
  learning_rate: Optional[float] = None


def build_components(*, task, method: Callable, model, optimizer,
                     learning_rate: float, batch_size: int,
                     data_dir: Optional[str] = None,
                     strategy: Optional[tf.distribute.Strategy] = None,
                     precision: str = precision_lib.FLOAT32,
                     seed: Optional[int] = None) -> Components:
  """Builds the task, then in ``strategy``'s scope the model, optimizer and method,
  exactly as ``train`` does (tools that inspect a configuration use it too).

  Args:
    task, method, model, optimizer, learning_rate, batch_size, data_dir: as for
      ``train``: classes or factories, or instances (the module docstring).
    strategy: default: the current strategy.
    precision: the Keras dtype policy the model is built under (the
      optimizer and the method's own variables are float32 whatever it is).
    seed: ``train.seed``, the seed of a method's own draws unless gin binds
      one (``build_method``), and of a task's with ``seeded_by_run``.

  Raises:
    ConfigurationError: a factory is not callable or builds the wrong thing (a
      model without the contract of ``tfcredit.models.contract``), or an
      instance cannot be trained as it is (the module docstring).
  """
  if isinstance(method, tf.Module):
    raise ConfigurationError(
        f'train.method: a {type(method).__name__} instance cannot be trained (a '
        'method is built on the model, task and optimizer): pass its class, with '
        f'its arguments as functools.partial({type(method).__name__}, ...) or gin '
        'bindings')
  strategy = strategy or tf.distribute.get_strategy()
  task_obj = _task(task, data_dir, seed)
  with strategy.scope():
    with precision_lib.policy_scope(precision):
      model_obj = _model(model, task_obj, precision)
      model_obj.build_for(_example_inputs(task_obj, batch_size))
    if model_obj is model:
      _check_scope(strategy, 'train.model', model_obj)
    optimizer_obj, rate = _optimizer(optimizer, learning_rate)
    optimizer_obj.build(model_obj.trainable_variables)
    if optimizer_obj is optimizer:
      _check_scope(strategy, 'train.optimizer', optimizer_obj)
    method_obj = build_method(method, model_obj, task_obj, optimizer_obj,
                              batch_size, seed)
  return Components(task_obj, model_obj, optimizer_obj, method_obj, rate)


def _task(task, data_dir: Optional[str], seed: Optional[int]) -> task_base.Task:
  """The task instance, or the one ``task`` builds with ``data_dir`` (and
  ``seed``, ``train.seed``, for a task that draws its data order from the run's
  seed, unless gin or a partial binds its own)."""
  if isinstance(task, task_base.Task):
    if data_dir is not None:
      raise ConfigurationError(
          f'train.data_dir={data_dir!r} is passed to a task class only, but '
          f'train.task is a {type(task).__name__} instance: give the data '
          'directory to its constructor, or leave train.data_dir out')
    return task
  cls = _unwrap(task)[0]
  seeded = _unbound_seed(task, seed) if getattr(cls, 'seeded_by_run', False) else {}
  task_obj = call_factory(task, 'task', data_dir=data_dir, **seeded)
  if not isinstance(task_obj, task_base.Task):
    raise ConfigurationError(
        f'train.task must build a tfcredit Task, got {type(task_obj).__name__}')
  return task_obj


def _is_instance(value) -> bool:
  return (not isinstance(value, type) and
          isinstance(value, tf.__internal__.tracking.Trackable))


def _model(model, task: task_base.Task, precision: str):
  """The model instance, checked against ``task`` and ``precision``, or the one
  the ``model`` class builds from ``task.model_spec()``; not yet built."""
  if not _is_instance(model):
    model_obj = call_factory(model, 'model', **task.model_spec())
    check_model(model_obj, 'train.model')
    return model_obj
  check_model(model, 'train.model')
  name = type(model).__name__
  wanted = tf.as_dtype(keras.DTypePolicy(precision).compute_dtype)
  if precision_lib.compute_dtype(model) != wanted:
    raise ConfigurationError(
        f'train.model: the {name} instance computes in '
        f'{precision_lib.compute_dtype(model).name}, but train.precision='
        f'{precision!r}: construct it inside tfcredit.precision.policy_scope('
        f'{precision!r}), or pass its class')
  try:
    config = model.get_config()
  except (NotImplementedError, AttributeError, TypeError):
    config = {}
  for key, value in task.model_spec().items():
    if key in config and config[key] != value:
      raise ConfigurationError(
          f'train.model: the {name} instance has {key}={config[key]!r}, but '
          f'{type(task).__name__} needs {key}={value!r}: construct it with '
          f'{name}(**task.model_spec(), ...), or pass its class')
  return model


def _optimizer(optimizer, learning_rate: float
               ) -> Tuple[keras.optimizers.Optimizer, float]:
  """``(optimizer, base learning rate)``: the instance and its rate (or
  ``learning_rate``, which must then agree), or the one the class builds with
  ``learning_rate``."""
  if not isinstance(optimizer, keras.optimizers.Optimizer):
    built = call_factory(optimizer, 'optimizer', learning_rate=learning_rate)
    return built, learning_rate
  name = type(optimizer).__name__
  if optimizer.built:
    raise ConfigurationError(
        f'train.optimizer: the {name} instance is already built (it has slots for '
        'other variables): pass a new one; train builds it on the model\'s weights')
  if isinstance(getattr(optimizer, '_learning_rate', None),
                keras.optimizers.schedules.LearningRateSchedule):
    raise ConfigurationError(
        f'train.optimizer: the {name} instance has a Keras learning-rate schedule, '
        'but train.lr_schedule drives the rate: give the optimizer a float rate '
        'and the schedule as train.lr_schedule')
  # The rate is a float32 variable: its shortest decimal is the rate given.
  rate = float(str(optimizer.learning_rate.numpy()))
  if learning_rate == DEFAULT_LEARNING_RATE:
    return optimizer, rate
  if not math.isclose(learning_rate, rate, rel_tol=1e-6):
    raise ConfigurationError(
        f'train.learning_rate={learning_rate!r} differs from the {name} instance\'s '
        f'learning_rate {rate:g}: give the base rate once, leave '
        'train.learning_rate out (the instance\'s rate is used) or make them equal')
  return optimizer, learning_rate


def _check_scope(strategy: tf.distribute.Strategy, where: str, built) -> None:
  """Refuses an instance with variables not made in ``strategy``'s scope (they
  would not be mirrored, or would be another strategy's)."""
  outside = [v for v in built.variables if not
             strategy.extended.variable_created_in_scope(
                 v.value if isinstance(v, keras.Variable) else v)]
  if outside:
    replicas = strategy.num_replicas_in_sync
    raise ConfigurationError(
        f'{where}: the {type(built).__name__} instance has variables not made in '
        f'the scope of the {type(strategy).__name__} train runs under ({replicas} '
        f'replica{"s" if replicas > 1 else ""}; {outside[0].name!r} among them): '
        'create it inside `with strategy.scope():`, or pass its class')


def build_method(method: Callable, model: keras.Model, task: task_base.Task,
                 optimizer: keras.optimizers.Optimizer, batch_size: int,
                 seed: Optional[int] = None):
  """Builds a method class or factory (in the current strategy scope) as
  ``train`` does.

  A method with random draws of its own (ARTBP's truncations, UORO's and DNI's
  noise) takes ``seed`` (``train.seed``) as its ``seed`` unless gin or a
  ``functools.partial`` binds one (``ARTBP.seed = 3`` wins): runs with
  different seeds then differ in the method's draws too, not only in the
  initial weights.
  """
  return call_factory(method, 'method', model=model, task=task, optimizer=optimizer,
                batch_size=batch_size, **_unbound_seed(method, seed))


def method_arguments(method: Callable, seed: Optional[int] = None
                     ) -> Dict[str, Any]:
  """The constructor arguments ``build_method`` gives a method, as far as they
  have values before it is built: the defaults, overridden by gin's bindings of
  the class, a ``functools.partial``'s keywords and ``_unbound_seed``."""
  cls, keywords = _unwrap(method)
  try:
    parameters = _parameters(cls)
  except (TypeError, ValueError):
    parameters = {}
  arguments = {name: p.default for name, p in parameters.items()
               if p.default is not inspect.Parameter.empty}
  try:  # By name: a gin reference (@ARTBP) evaluates to a subclass of it.
    arguments.update(gin.get_bindings(getattr(cls, '__name__', '')))
  except (ValueError, TypeError):  # Not a gin configurable.
    pass
  arguments.update(keywords)
  arguments.update(_unbound_seed(method, seed))
  return arguments


def _unwrap(factory: Callable) -> Tuple[Callable, Dict[str, Any]]:
  """``(the class or function under any functools.partial, their keywords)``;
  an outer partial's keywords win, as when it is called."""
  keywords = {}
  while isinstance(factory, functools.partial):
    keywords = {**factory.keywords, **keywords}
    factory = factory.func
  return factory, keywords


def _parameters(factory: Callable):
  # Gin wraps a configurable class in a subclass whose own signature is
  # (*args, **kwargs); the constructor keeps the real one.
  target = factory.__init__ if isinstance(factory, type) else factory
  return inspect.signature(target).parameters


def call_factory(factory: Callable, what: str, **kwargs):
  """Calls a factory with the keyword arguments it accepts and does not bind
  itself (a ``functools.partial``'s keywords win)."""
  if not callable(factory):
    raise ConfigurationError(
        f'train.{what} must be a class such as @{what.title()} (or from Python an '
        f'instance or a functools.partial), got {factory!r}')
  try:
    parameters = _parameters(factory)
  except (TypeError, ValueError):
    parameters = {}
  if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
    kwargs = {k: v for k, v in kwargs.items() if k in parameters}
  bound = _unwrap(factory)[1]
  return factory(**{k: v for k, v in kwargs.items() if k not in bound})


def _unbound_seed(factory: Callable, seed: Optional[int]) -> Dict[str, int]:
  """``{'seed': seed}`` if ``factory`` takes a ``seed`` that neither gin nor a
  ``functools.partial`` binds."""
  cls, keywords = _unwrap(factory)
  try:
    takes_seed = 'seed' in _parameters(cls)
  except (TypeError, ValueError):
    takes_seed = False
  if seed is None or not takes_seed or 'seed' in keywords:
    return {}
  try:
    gin.query_parameter(f'{getattr(cls, "__name__", "")}.seed')
  except ValueError:
    return {'seed': seed}
  return {}


def _example_inputs(task: task_base.Task, batch_size: int) -> tf.Tensor:
  spec = task.segment_spec()[0]
  shape = [batch_size, 1] + spec.shape[2:].as_list()
  return tf.zeros(shape, spec.dtype)

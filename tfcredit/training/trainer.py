"""The training loop: the gin root ``train(...)`` (docs/design.md, "Trainer").

``train`` builds the task, the model, the optimizer and the method; loops over epochs
and segments; evaluates on the validation split after every epoch; writes
TensorBoard summaries; saves and restores checkpoints (weights, optimizer, method
state, data position, carried state, RNG state, counters); stops on a non-finite loss
without overwriting the last good checkpoint; evaluates the test split; exports a
SavedModel. It knows nothing about any particular method: everything method-specific
happens behind ``Method.train_segment``.

Loss convention: every method divides a window's summed per-step losses by
``batch × nominal window length`` and averages terminal losses over the batch
(``tfcredit.methods.base``); evaluation sums the loss over every token or sequence
of a split and divides by their number.
"""

import dataclasses
import inspect
import json
import os
from typing import Any, Callable, Dict, Optional

import gin
import keras
import tensorflow as tf

from tfcredit import export as export_lib
from tfcredit import precision as precision_lib
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.models.contract import check_model
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.tasks import base as task_base
from tfcredit.training import distribution
from tfcredit.training import progress as progress_lib
from tfcredit.training import non_finite
from tfcredit.training import reporting
from tfcredit.training import schedules
from tfcredit.training import signals


def _build(factory: Callable, what: str, **kwargs):
  """Calls a gin-bound factory with the keyword arguments it accepts."""
  if not callable(factory):
    raise ConfigurationError(
        f'train.{what} must be a configurable class such as @{what.title()}, got '
        f'{factory!r}')
  # Gin wraps a configurable class in a subclass whose own signature is
  # (*args, **kwargs); the constructor keeps the real one.
  target = factory.__init__ if isinstance(factory, type) else factory
  try:
    parameters = inspect.signature(target).parameters
  except (TypeError, ValueError):
    parameters = {}
  if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
    kwargs = {k: v for k, v in kwargs.items() if k in parameters}
  return factory(**kwargs)


@gin.configurable(denylist=['model_dir', 'data_dir', 'export_dir', 'strategy',
                            'stop_after_calls'])
def train(model_dir: str, data_dir: Optional[str] = None,
          export_dir: Optional[str] = 'saved_models',
          strategy: Optional[tf.distribute.Strategy] = None, *,
          # What is learned and how.
          task: Callable[..., task_base.Task] = gin.REQUIRED,
          method: Callable = gin.REQUIRED,
          model: Callable[..., keras.Model] = RecurrentModel,
          # Optimisation.
          optimizer: Callable = keras.optimizers.SGD,
          learning_rate: float = 1.0,
          lr_schedule: Callable = schedules.Constant,
          epochs: int = 1,
          batch_size: int = 20,
          eval_batch_size: int = 10,
          precision: str = precision_lib.FLOAT32,
          # Reproducibility.
          seed: int = 0,
          deterministic: bool = False,
          # Bookkeeping.
          checkpoint_every_calls: int = 500,
          log_every_seconds: float = 10.0,
          summary_every_calls: int = 10,
          evaluate_test: bool = True,
          on_non_finite: str = non_finite.STOP,
          stop_after_calls: Optional[int] = None) -> Dict[str, Any]:
  """Trains a model on a task with a credit-assignment method.

  Args:
    model_dir: where checkpoints, summaries and configs go; running again with the
      same directory resumes from its last checkpoint.
    data_dir: the data directory (``--data_dir``), passed to tasks that read data.
    export_dir: the root the SavedModel is exported under, as
      ``<export_dir>/<basename of model_dir>/<n>``; None skips the export.
    strategy: the ``tf.distribute`` strategy (``--strategy``); default: the
      current one. Model, optimizer and method state are created in its scope;
      ``batch_size`` is the global batch, split evenly over the replicas, and every
      loss is averaged over the global batch, so one replica and several give the
      same update. Only the chief writes files.
    task: the task class (gin: ``@AddingTask``, ``@LanguageModelTask``).
    method: the method class (gin: ``@TruncatedBPTT``); it receives the model,
      task and optimizer, and ``batch_size`` when it takes one.
    model: the model class; it receives ``task.model_spec()`` and must build a
      model with the contract of ``tfcredit.models.contract`` (``RecurrentModel``
      with any Keras RNN cell as ``RecurrentModel.cell`` does).
    optimizer: a Keras optimizer class; it receives ``learning_rate``.
    learning_rate: the base learning rate the schedule starts from.
    lr_schedule: a schedule class from ``tfcredit.training.schedules``; it receives
      ``base=learning_rate``.
    epochs: passes over the training data.
    batch_size: training columns (stream) or sequences per batch (episodic).
    eval_batch_size: the same for validation and test.
    precision: ``'float32'``, ``'mixed_bfloat16'`` or ``'mixed_float16'``
      (``tfcredit.precision``): the model's layers compute in the low
      precision, its variables, state, outputs and every method's own
      arithmetic stay float32; ``'mixed_float16'`` adds a dynamic loss scale.
      Checkpoints hold float32 variables, so a run may resume under
      ``'float32'`` or ``'mixed_bfloat16'`` whichever it started with.
    seed: seeds weights, dropout and data order.
    deterministic: enable TensorFlow's deterministic ops (bit-exact resumes).
    checkpoint_every_calls: training calls between checkpoints (and at each epoch
      end).
    log_every_seconds: seconds between progress lines.
    summary_every_calls: training calls averaged into one TensorBoard point.
    evaluate_test: evaluate the test split at the end.
    on_non_finite: what to do with a training window whose loss or gradients are
      not finite (its update is never applied): ``'stop'`` the run, with the
      checkpoint that call started from moved aside, or ``'skip'`` the window and
      go on, counting it in ``train/non_finite_windows``.
    stop_after_calls: stop (with a checkpoint) after this many training calls in
      this invocation; for tests of interruption and resumption.

  Returns:
    The final metrics, ``model_dir`` and ``saved_model`` path.

  Raises:
    ConfigurationError: a setting is invalid.
    TrainingError: the loss became non-finite.
    signals.Interrupted: SIGTERM or SIGINT; a checkpoint was written first.
  """
  non_finite.check_policy(on_non_finite)
  precision_lib.check(precision)
  validation.number('train.learning_rate', learning_rate)
  validation.number('train.log_every_seconds', log_every_seconds)
  for name, value in (('epochs', epochs), ('batch_size', batch_size),
                      ('eval_batch_size', eval_batch_size),
                      ('checkpoint_every_calls', checkpoint_every_calls),
                      ('summary_every_calls', summary_every_calls)):
    validation.positive_int(f'train.{name}', value)
  if not learning_rate > 0:
    raise ConfigurationError(
        f'train.learning_rate must be positive, got {learning_rate!r}')
  keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()

  strategy = strategy or tf.distribute.get_strategy()
  for name, value in (('batch_size', batch_size), ('eval_batch_size', eval_batch_size)):
    if value % strategy.num_replicas_in_sync:
      raise ConfigurationError(
          f'train.{name}={value} does not split evenly over '
          f'{strategy.num_replicas_in_sync} replicas: use a multiple of '
          f'{strategy.num_replicas_in_sync}')
  parts = build_components(task=task, method=method, model=model,
                           optimizer=optimizer, learning_rate=learning_rate,
                           batch_size=batch_size, data_dir=data_dir,
                           strategy=strategy, precision=precision, seed=seed)
  task_obj, model_obj = parts.task, parts.model
  optimizer_obj, method_obj = parts.optimizer, parts.method
  method_obj.check_task(task_obj)
  # Host-side bookkeeping: plain variables, outside the strategy's scope.
  schedule = _build(lr_schedule, 'lr_schedule', base=learning_rate)
  method_obj.bind_schedule(schedule)
  stream = task_obj.regime == task_base.STREAM
  chief = distribution.is_chief(strategy)
  write_dir = distribution.writable_dir(model_dir, strategy)
  os.makedirs(write_dir, exist_ok=True)
  progress = progress_lib.Progress(
      model_obj.state_spec() if stream else None, batch_size)
  task_state = task_obj.checkpoint_state()  # A curriculum's position, or None.
  checkpointer = progress_lib.Checkpointer(
      write_dir, model=model_obj, optimizer=optimizer_obj, method=method_obj,
      schedule=schedule, progress=progress, rng=model_obj.rng_variables(),
      **({'task': task_state} if task_state is not None else {}))
  restored = checkpointer.restore_latest()
  if restored:
    print(f'resumed from {restored} (epoch {int(progress.epoch) + 1}, '
          f'position {int(progress.position)})', flush=True)

  units_per_epoch = task_obj.units_per_epoch(batch_size)
  unit_name = 'tokens' if stream else 'sequences'
  reporter = reporting.Reporter(
      model_dir, task_obj.metric_name, unit_name, task_obj.metric_from_loss,
      total_units=units_per_epoch * epochs, log_every_seconds=log_every_seconds,
      summary_every_calls=summary_every_calls, write_summaries=chief,
      metric_reductions=method_obj.metric_reductions,
      method_summaries=method_obj.summaries)
  predict = _predictor(model_obj, task_obj)
  evaluate = lambda split: task_base.evaluate(
      task_obj, predict, model_obj.initial_state, split, eval_batch_size)

  calls_here = 0
  operative_written = False
  valid_result: Dict[str, float] = {}
  # SIGTERM/SIGINT in the loop: finish the call, checkpoint, stop (signals.py);
  # with several workers, all of them stop after the same call.
  agreement = distribution.StopAgreement(strategy)

  def stop_now(stop: signals.StopRequest) -> bool:
    signum = agreement(stop.signum)
    if signum is not None and stop.signum is None:
      stop.signum = signum  # Another worker's signal.
    return signum is not None

  with signals.deferred() as stop:
    while int(progress.epoch) < epochs:
      epoch = int(progress.epoch)
      method_obj.on_epoch_start(epoch)
      for segment, units, fraction in _segments(task_obj, method_obj, progress,
                                                batch_size):
        if int(progress.position) == 0 or not stream:
          state = model_obj.initial_state(batch_size)
        elif calls_here == 0:
          state = progress.load_state()
        rate = schedule(epoch + fraction)
        optimizer_obj.learning_rate.assign(rate)
        state, metrics = method_obj.train_segment(segment, state)
        metrics = {key: value.numpy() for key, value in metrics.items()}
        metrics = non_finite.handle(metrics, on_non_finite, checkpointer, progress,
                                    epoch, unit_name)
        task_message = task_obj.after_training_call(metrics)
        if task_message:
          print(task_message, flush=True)
        progress.position.assign_add(1 if not stream else units // batch_size)
        progress.calls.assign_add(1)
        progress.units_seen.assign_add(units)
        progress.updates.assign_add(int(metrics['updates']))
        progress.loss_total.assign_add(float(metrics['loss_sum']))
        progress.count_total.assign_add(float(metrics['count']))
        calls_here += 1
        if stream:
          progress.save_state(state)
        if not operative_written:
          _write_operative_config(write_dir, reporter)
          operative_written = True
        done = (epoch * units_per_epoch + fraction * units_per_epoch + units)
        reporter.record_training(
            metrics, units, rate, int(progress.units_seen), epoch, epochs, int(done),
            average_loss=float(progress.loss_total) / max(float(progress.count_total),
                                                          1e-12))
        if int(progress.calls) % checkpoint_every_calls == 0:
          checkpointer.save(int(progress.calls))
        if stop_now(stop):
          _stop_on_signal(stop, checkpointer, progress, reporter)
        if stop_after_calls is not None and calls_here >= stop_after_calls:
          checkpointer.save(int(progress.calls))
          reporter.flush()
          return {'stopped_after_calls': calls_here, 'model_dir': model_dir}
      method_obj.on_epoch_end()
      valid_result = evaluate('valid')
      reporter.record_evaluation('valid', valid_result, int(progress.units_seen), epoch)
      schedule.observe_validation(epoch, valid_result['loss'])
      progress.best_valid.assign(min(float(progress.best_valid), valid_result['loss']))
      progress.epoch.assign_add(1)
      progress.position.assign(0)
      checkpointer.save(int(progress.calls))
      if stop_now(stop):
        _stop_on_signal(stop, checkpointer, progress, reporter)
    if stop_now(stop):  # Received after the last check of the loop.
      _stop_on_signal(stop, checkpointer, progress, reporter)
  reporter.flush()

  if not valid_result:  # Resumed after the last epoch had finished.
    valid_result = evaluate('valid')
  final = {f'valid_{k}': v for k, v in valid_result.items() if k != 'count'}
  if evaluate_test:
    test_result = evaluate('test')
    final.update({f'test_{k}': v for k, v in test_result.items() if k != 'count'})
  saved_model = None
  if export_dir is not None:
    # Every worker saves (the save is collective); only the chief's is kept.
    root = os.path.join(export_dir if chief else write_dir,
                        os.path.basename(os.path.normpath(model_dir)))
    saved_model = export_lib.export(model_obj, task_obj, root,
                                    eval_batch_size=eval_batch_size)
  final.update(task_obj.final_metrics())
  final.update({'epochs': int(progress.epoch), 'updates': int(progress.updates),
                'units_seen': int(progress.units_seen), 'unit': unit_name,
                'model_dir': model_dir,
                'saved_model': saved_model})
  with open(os.path.join(write_dir, 'final_metrics.json'), 'w') as f:
    json.dump(final, f, indent=1)
  return final


@dataclasses.dataclass
class Components:
  """What ``train`` trains: the task, the built model and optimizer, the method."""
  task: task_base.Task
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  method: Any


def build_components(*, task: Callable, method: Callable, model: Callable,
                     optimizer: Callable, learning_rate: float, batch_size: int,
                     data_dir: Optional[str] = None,
                     strategy: Optional[tf.distribute.Strategy] = None,
                     precision: str = precision_lib.FLOAT32,
                     seed: Optional[int] = None) -> Components:
  """Builds the task, then in ``strategy``'s scope the model, optimizer and method,
  exactly as ``train`` does (tools that inspect a configuration use it too).

  Args:
    task, method, model, optimizer, learning_rate, batch_size, data_dir: as for
      ``train``.
    strategy: default: the current strategy.
    precision: the Keras dtype policy the model is built under (the
      optimizer and the method's own variables are float32 whatever it is).
    seed: ``train.seed``, the seed of a method's own draws unless gin binds
      one (``build_method``).

  Raises:
    ConfigurationError: a factory is not callable or builds the wrong thing (a
      model without the contract of ``tfcredit.models.contract``).
  """
  task_obj = _build(task, 'task', data_dir=data_dir)
  if not isinstance(task_obj, task_base.Task):
    raise ConfigurationError(
        f'train.task must build a tfcredit Task, got {type(task_obj).__name__}')
  with (strategy or tf.distribute.get_strategy()).scope():
    with precision_lib.policy_scope(precision):
      model_obj = _build(model, 'model', **task_obj.model_spec())
      check_model(model_obj, 'train.model')
      model_obj.build_for(_example_inputs(task_obj, batch_size))
    optimizer_obj = _build(optimizer, 'optimizer', learning_rate=learning_rate)
    optimizer_obj.build(model_obj.trainable_variables)
    method_obj = build_method(method, model_obj, task_obj, optimizer_obj,
                              batch_size, seed)
  return Components(task_obj, model_obj, optimizer_obj, method_obj)


def build_method(method: Callable, model: keras.Model, task: task_base.Task,
                 optimizer: keras.optimizers.Optimizer, batch_size: int,
                 seed: Optional[int] = None):
  """Builds a method class (in the current strategy scope) as ``train`` does.

  A method with random draws of its own (ARTBP's truncations, UORO's and DNI's
  noise) takes ``seed`` (``train.seed``) as its ``seed`` unless gin binds one
  (``ARTBP.seed = 3`` wins): runs with different seeds then differ in the
  method's draws too, not only in the initial weights.
  """
  return _build(method, 'method', model=model, task=task, optimizer=optimizer,
                batch_size=batch_size, **_unbound_seed(method, seed))


def _unbound_seed(factory: Callable, seed: Optional[int]) -> Dict[str, int]:
  """``{'seed': seed}`` if ``factory`` takes a ``seed`` that gin leaves unbound."""
  target = factory.__init__ if isinstance(factory, type) else factory
  try:
    takes_seed = 'seed' in inspect.signature(target).parameters
  except (TypeError, ValueError):
    takes_seed = False
  if seed is None or not takes_seed:
    return {}
  try:
    gin.query_parameter(f'{getattr(factory, "__name__", "")}.seed')
  except ValueError:
    return {'seed': seed}
  return {}


def configured_arguments() -> Dict[str, Any]:
  """``train``'s keyword arguments as the parsed gin configuration binds them.

  References (``@AddingTask``) become the configurable they name (called for
  ``@X()``); unbound arguments take ``train``'s defaults; ``gin.REQUIRED``
  arguments that are unbound are left out.
  """
  arguments = {}
  for name, parameter in inspect.signature(train.__wrapped__).parameters.items():
    if parameter.kind != parameter.KEYWORD_ONLY:
      continue
    try:
      value = gin.query_parameter(f'train.{name}')
    except ValueError:
      value = parameter.default
      if value is gin.REQUIRED or value is inspect.Parameter.empty:
        continue
    if isinstance(value, gin.config.ConfigurableReference):
      value = (value.scoped_configurable_fn() if value.evaluate
               else value.scoped_configurable_fn)
    arguments[name] = value
  return arguments


def _example_inputs(task: task_base.Task, batch_size: int) -> tf.Tensor:
  spec = task.segment_spec()[0]
  shape = [batch_size, 1] + spec.shape[2:].as_list()
  return tf.zeros(shape, spec.dtype)


def _predictor(model: keras.Model, task: task_base.Task):
  """The compiled ``(inputs, state) -> (outputs, state)`` used for evaluation."""
  return tf.function(lambda inputs, state: model.unroll(inputs, state, training=False),
                     input_signature=[task.segment_spec()[0], model.state_spec()])


def _segments(task: task_base.Task, method, progress, batch_size: int):
  """Yields ``(segment, units, fraction of the epoch done before it)``."""
  if task.regime == task_base.STREAM:
    data = task.stream('train', batch_size)
    length = data.shape[1] - 1
    while int(progress.position) < length:
      start = int(progress.position)
      end = min(start + method.segment_length(), length)
      segment = (tf.constant(data[:, start:end]), tf.constant(data[:, start + 1:end + 1]))
      yield segment, batch_size * (end - start), start / length
  else:
    count = task.batches_per_epoch('train', batch_size)
    epoch = int(progress.epoch)
    while int(progress.position) < count:
      index = int(progress.position)
      inputs, targets = task.batch('train', epoch, index, batch_size)
      yield (tf.constant(inputs), tf.constant(targets)), batch_size, index / count


def _stop_on_signal(stop: signals.StopRequest, checkpointer, progress,
                    reporter: reporting.Reporter) -> None:
  """Writes a checkpoint after the current call, then raises ``Interrupted``."""
  path = checkpointer.save(int(progress.calls))
  reporter.flush()
  raise signals.Interrupted(
      f'{signals.name(stop.signum)} received: stopped after training call '
      f'{int(progress.calls)} with a checkpoint ({path}); run the same command '
      'again to resume', stop.signum)


def _write_operative_config(model_dir: str, reporter: reporting.Reporter) -> None:
  text = gin.operative_config_str()
  with open(os.path.join(model_dir, 'operative_config.gin'), 'w') as f:
    f.write(text)
  reporter.text('operative_config', gin.markdown(text) if hasattr(gin, 'markdown')
                else text)

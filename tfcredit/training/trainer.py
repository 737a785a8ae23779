"""The gin root ``train(...)``: builds a run and hands it to its controller
(docs/design.md, "Trainer").

``train`` checks its settings; builds the task, the model, the optimizer and the
method (``components.build_components``, which also takes instances) and asks
the method whether it fits the task (``Method.check_task``); restores the
newest checkpoint; records the run's hyperparameters for TensorBoard's HParams
dashboard (``hparams``); then hands the inner training (``controller.Calls``)
to the outer loop (``controller.Controller``: epochs, checkpoints, validation,
summaries, signals, the non-finite policy). At the end it evaluates the test
split, exports a SavedModel and writes ``final_metrics.json`` (and its numbers
to the HParams session). It knows nothing about any particular method:
everything method-specific happens behind the ``Method`` contract.

Loss convention: every method divides a window's summed per-step losses by
``batch × nominal window length`` and averages terminal losses over the batch
(``tfcredit.methods.base``); evaluation sums the loss over every token or sequence
of a split and divides by their number.
"""

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
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.tasks import base as task_base
from tfcredit.training import components
from tfcredit.training import controller as controller_lib
from tfcredit.training import distribution
from tfcredit.training import hparams as hparams_lib
from tfcredit.training import non_finite
from tfcredit.training import progress as progress_lib
from tfcredit.training import reporting
from tfcredit.training import run_directory
from tfcredit.training import schedules
# Built here for train; kept importable from this module for the tools and tests.
from tfcredit.training.components import Components  # pylint: disable=unused-import
from tfcredit.training.components import build_components
from tfcredit.training.components import build_method  # pylint: disable=unused-import


@gin.configurable(denylist=['model_dir', 'data_dir', 'export_dir', 'strategy',
                            'stop_after_calls'])
def train(model_dir: str, data_dir: Optional[str] = None,
          export_dir: Optional[str] = 'saved_models',
          strategy: Optional[tf.distribute.Strategy] = None, *,
          # What is learned and how.
          task: Any = gin.REQUIRED,
          method: Callable = gin.REQUIRED,
          model: Any = RecurrentModel,
          # Optimisation.
          optimizer: Any = keras.optimizers.SGD,
          learning_rate: float = components.DEFAULT_LEARNING_RATE,
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
    task: the task class (gin: ``@AddingTask``, ``@LanguageModelTask``), or from
      Python a ``Task`` instance.
    method: the method class (gin: ``@TruncatedBPTT``); it receives the model,
      task and optimizer, and ``batch_size`` when it takes one. From Python,
      its arguments go in a ``functools.partial(tfcredit.ARTBP,
      mean_length=20)`` (a method instance cannot be given: it is built on
      the model).
    model: the model class; it receives ``task.model_spec()`` and must build a
      model with the contract of ``tfcredit.models.contract`` (``RecurrentModel``
      with any Keras RNN cell as ``RecurrentModel.cell`` does); or from Python
      such a model instance, computing in ``precision`` and made in
      ``strategy``'s scope (``tfcredit.training.components``).
    optimizer: a Keras optimizer class, which receives ``learning_rate``; or
      from Python an optimizer instance not yet built, whose learning rate is
      the base rate unless ``learning_rate`` is given too (they must agree).
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
    seed: seeds weights, dropout and data order. An instance's initial weights
      come from the random state when it was constructed: call
      ``keras.utils.set_random_seed(seed)`` first to match a run from classes.
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
  _check_settings(precision=precision, on_non_finite=on_non_finite,
                  learning_rate=learning_rate, log_every_seconds=log_every_seconds,
                  epochs=epochs, batch_size=batch_size,
                  eval_batch_size=eval_batch_size,
                  checkpoint_every_calls=checkpoint_every_calls,
                  summary_every_calls=summary_every_calls)
  keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()
  strategy = strategy or tf.distribute.get_strategy()
  _check_replicas(strategy, batch_size=batch_size, eval_batch_size=eval_batch_size)
  parts = build_components(task=task, method=method, model=model,
                           optimizer=optimizer, learning_rate=learning_rate,
                           batch_size=batch_size, data_dir=data_dir,
                           strategy=strategy, precision=precision, seed=seed)
  _check_data(parts, batch_size, eval_batch_size, evaluate_test)
  # Host-side bookkeeping: plain variables, outside the strategy's scope.
  schedule = components.call_factory(lr_schedule, 'lr_schedule',
                                     base=parts.learning_rate)
  parts.method.bind_schedule(schedule)
  write_dir = distribution.writable_dir(model_dir, strategy)
  os.makedirs(write_dir, exist_ok=True)
  run_directory.keep_vocabulary(model_dir, parts.task.vocabulary_tokens(),
                                write=distribution.is_chief(strategy))
  progress, checkpointer = _restore(write_dir, parts, schedule, batch_size)
  session = hparams_lib.Session(model_dir, write=distribution.is_chief(strategy))
  session.start(hparams_lib.values(
      parts, components.method_arguments(method, seed), lr_schedule=lr_schedule,
      batch_size=batch_size, precision=precision, seed=seed, epochs=epochs))

  calls = controller_lib.Calls(
      task=parts.task, model=parts.model, method=parts.method,
      optimizer=parts.optimizer, schedule=schedule, progress=progress,
      batch_size=batch_size)
  reporter = _reporter(model_dir, parts, calls, epochs, strategy,
                       log_every_seconds, summary_every_calls)
  evaluate = _evaluator(parts.task, parts.model, eval_batch_size)
  outcome = controller_lib.Controller(
      calls, progress=progress, checkpointer=checkpointer, reporter=reporter,
      evaluate=evaluate, strategy=strategy,
      cadence=controller_lib.Cadence(epochs, checkpoint_every_calls,
                                     on_non_finite, stop_after_calls),
      on_validation=schedule.observe_validation,
      after_first_call=lambda: _write_operative_config(write_dir, reporter)).run()
  if outcome.stopped_after_calls is not None:
    return {'stopped_after_calls': outcome.stopped_after_calls,
            'model_dir': model_dir}

  final = _final_evaluations(evaluate, outcome.valid, evaluate_test)
  saved_model = _export(parts, eval_batch_size, model_dir, export_dir, write_dir,
                        strategy)
  return _write_final(final, parts.task, progress, calls.unit_name, model_dir,
                      write_dir, saved_model, session)


def _check_data(parts, batch_size: int, eval_batch_size: int,
                evaluate_test: bool) -> None:
  """Before anything is written: the method fits the task, and every split
  it reads holds a batch."""
  parts.method.check_task(parts.task)
  task_base.check_splits(parts.task, batch_size, eval_batch_size,
                         ('train', 'valid', 'test') if evaluate_test
                         else ('train', 'valid'))


def _reporter(model_dir: str, parts, calls, epochs: int, strategy,
              log_every_seconds: float, summary_every_calls: int
              ) -> reporting.Reporter:
  """The run's progress lines and summaries (the chief writes them)."""
  return reporting.Reporter(
      model_dir, parts.task.metric_name, calls.unit_name,
      parts.task.metric_from_loss, total_units=calls.units_per_epoch * epochs,
      log_every_seconds=log_every_seconds, summary_every_calls=summary_every_calls,
      write_summaries=distribution.is_chief(strategy),
      metric_reductions=parts.method.metric_reductions,
      method_summaries=parts.method.summaries)


def _write_final(final: Dict[str, Any], task: task_base.Task, progress,
                 unit_name: str, model_dir: str, write_dir: str,
                 saved_model: Optional[str],
                 session: hparams_lib.Session) -> Dict[str, Any]:
  """Completes the final metrics (the task's own, the run's counters, where
  things are) and writes them to ``final_metrics.json`` and the run's HParams
  ``session``; returns them."""
  final.update(task.final_metrics())
  final.update({'epochs': int(progress.epoch), 'updates': int(progress.updates),
                'units_seen': int(progress.units_seen), 'unit': unit_name,
                'model_dir': model_dir,
                'saved_model': saved_model})
  with open(os.path.join(write_dir, 'final_metrics.json'), 'w') as f:
    json.dump(final, f, indent=1)
  session.finish(final, int(progress.units_seen))
  return final


def _check_settings(*, precision: str, on_non_finite: str, learning_rate: float,
                    log_every_seconds: float, **counts: int) -> None:
  """Refuses an invalid setting of ``train`` before anything is built.

  Args:
    precision, on_non_finite, learning_rate, log_every_seconds: as for ``train``.
    **counts: ``train``'s settings that must be positive integers, by name.

  Raises:
    ConfigurationError: the first invalid setting, named.
  """
  non_finite.check_policy(on_non_finite)
  precision_lib.check(precision)
  validation.number('train.learning_rate', learning_rate)
  validation.number('train.log_every_seconds', log_every_seconds)
  for name, value in counts.items():
    validation.positive_int(f'train.{name}', value)
  if not learning_rate > 0:
    raise ConfigurationError(
        f'train.learning_rate must be positive, got {learning_rate!r}')


def _check_replicas(strategy: tf.distribute.Strategy, **batch_sizes: int) -> None:
  """Refuses a global batch that does not split evenly over the replicas."""
  replicas = strategy.num_replicas_in_sync
  for name, value in batch_sizes.items():
    if value % replicas:
      raise ConfigurationError(
          f'train.{name}={value} does not split evenly over {replicas} replicas: '
          f'use a multiple of {replicas}')


def _restore(write_dir: str, parts: 'Components', schedule, batch_size: int):
  """``(progress, checkpointer)`` over everything a run resumes from, restored
  from the newest intact checkpoint of ``write_dir`` if there is one (a line
  says so)."""
  stream = parts.task.regime == task_base.STREAM
  progress = progress_lib.Progress(
      parts.model.state_spec() if stream else None, batch_size)
  task_state = parts.task.checkpoint_state()  # A curriculum's position, or None.
  checkpointer = progress_lib.Checkpointer(
      write_dir, model=parts.model, optimizer=parts.optimizer, method=parts.method,
      schedule=schedule, progress=progress, rng=parts.model.rng_variables(),
      **({'task': task_state} if task_state is not None else {}))
  restored = checkpointer.restore_latest()
  if restored:
    print(f'resumed from {restored} (epoch {int(progress.epoch) + 1}, '
          f'position {int(progress.position)})', flush=True)
  return progress, checkpointer


def _final_evaluations(evaluate: controller_lib.Evaluate, valid: Dict[str, float],
                       evaluate_test: bool) -> Dict[str, Any]:
  """``valid_*`` (and with ``evaluate_test``, ``test_*``) metrics of the trained
  model; ``valid`` is evaluated again only when this process ended no epoch (a
  resume after the last one)."""
  if not valid:
    valid = evaluate('valid')
  final = {f'valid_{k}': v for k, v in valid.items() if k != 'count'}
  if evaluate_test:
    test = evaluate('test')
    final.update({f'test_{k}': v for k, v in test.items() if k != 'count'})
  return final


def _export(parts: 'Components', eval_batch_size: int, model_dir: str,
            export_dir: Optional[str], write_dir: str,
            strategy: tf.distribute.Strategy) -> Optional[str]:
  """Exports the SavedModel under ``export_dir``; returns its path (None: no
  ``export_dir``). Every worker saves (the save is collective); only the chief's
  is kept."""
  if export_dir is None:
    return None
  root = os.path.join(export_dir if distribution.is_chief(strategy) else write_dir,
                      os.path.basename(os.path.normpath(model_dir)))
  return export_lib.export(parts.model, parts.task, root,
                           eval_batch_size=eval_batch_size)


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


def _evaluator(task: task_base.Task, model: keras.Model,
               eval_batch_size: int) -> controller_lib.Evaluate:
  """``split -> metrics`` of ``model`` (``task_base.evaluate``) through a compiled
  ``(inputs, state) -> (outputs, state)``."""
  predict = tf.function(
      lambda inputs, state: model.unroll(inputs, state, training=False),
      input_signature=[task.segment_spec()[0], model.state_spec()])
  return lambda split: task_base.evaluate(task, predict, model.initial_state, split,
                                          eval_batch_size)


def _write_operative_config(model_dir: str, reporter: reporting.Reporter) -> None:
  text = gin.operative_config_str()
  with open(os.path.join(model_dir, 'operative_config.gin'), 'w') as f:
    f.write(text)
  reporter.text('operative_config', gin.markdown(text) if hasattr(gin, 'markdown')
                else text)

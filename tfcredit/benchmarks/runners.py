"""The benchmark's rows: a warmed-up ``measure.Runner`` per configuration.

tfcredit rows train a workload with a method wired as the trainer wires it
(``method_runner``; ``tfcredit_runner`` for ``TruncatedBPTT``, ``artbp_runner``,
``forward_mode_runner`` for RTRL, UORO and SnAp-1, ``configured_runner`` for a
method given as gin bindings). The references are a plain Keras ``fit`` of the same
network and data (``keras_fit_runner``) and chained float32 matrix products
(``matmul_runner``, the roofline).
"""

import functools
from typing import Callable, Optional, Sequence, Union

import gin
import keras
import tensorflow as tf

from tfcredit import config
from tfcredit import fidelity
from tfcredit import precision as precision_lib
from tfcredit.benchmarks import workloads as workloads_lib
from tfcredit.benchmarks.measure import Runner
from tfcredit.benchmarks.measure import Stopwatch
from tfcredit.benchmarks.measure import timed
from tfcredit.benchmarks.workloads import Workload
from tfcredit.errors import ConfigurationError
from tfcredit.methods.artbp import ARTBP
from tfcredit.methods import jit
from tfcredit.methods.base import Method
from tfcredit.methods.truncated_bptt import TruncatedBPTT
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.tasks import base as task_base
from tfcredit.training import trainer


def strategy_label(strategy: tf.distribute.Strategy) -> str:
  """``'1 replica (default strategy)'`` or ``'2 replicas (MirroredStrategy)'``."""
  replicas = strategy.num_replicas_in_sync
  name = ('default strategy' if strategy is tf.distribute.get_strategy() else
          type(strategy).__name__)  # Called outside any strategy scope.
  return f'{replicas} replica{"s" if replicas > 1 else ""} ({name})'


MethodFactory = Callable[[keras.Model, task_base.Task, keras.optimizers.Optimizer],
                         Method]


def method_runner(workload: Workload, config: str, make_method: MethodFactory,
                  segment_length: Optional[int] = None,
                  flops_window: Optional[int] = None,
                  strategy: Optional[tf.distribute.Strategy] = None,
                  precision: str = precision_lib.FLOAT32) -> Runner:
  """Any method, wired as the trainer wires it, warmed up by one call.

  A round is one epoch: ``on_epoch_start``, the epoch's ``train_segment`` calls
  (reading the metrics after every call, as the trainer does), ``on_epoch_end``.

  Args:
    workload: the workload.
    config: row label (the strategy's label is appended when one is given).
    make_method: ``(model, task, optimizer) -> Method``, called in the strategy's
      scope with a built model and optimizer; the method gets the workload's
      ``clip_norm`` and ``batch_size`` from the caller's closure.
    segment_length: stream workloads: steps per call; None asks
      ``method.segment_length()`` before every call (methods whose calls have
      random lengths, such as ARTBP), cutting the last call at the stream's end.
      Episodic workloads: ignored (one call per batch of whole sequences).
    flops_window: the backpropagated window of the FLOP estimate
      (``workload.flops_per_unit``).
    strategy: given, the model, optimizer and method are built in its scope (as
      the trainer builds them) and the row label names it; ``train_segment`` still
      takes and returns global tensors.
    precision: the model is built under this ``train.precision`` (named in the
      row label unless float32).

  Returns:
    The runner.
  """
  stream = workload.task.regime == task_base.STREAM
  fixed = (workload.segments(segment_length)
           if segment_length is not None or not stream else None)
  with (strategy or tf.distribute.get_strategy()).scope():
    with precision_lib.policy_scope(precision):
      model = RecurrentModel(**workload.task.model_spec(), **workload.model_kwargs)
      model.build_for(fixed[0][0] if fixed else
                      tf.constant(workload.stream[:, :1]))
    optimizer = workload.make_optimizer()
    optimizer.build(model.trainable_variables)
    method = make_method(model, workload.task, optimizer)

  def calls():
    """The epoch's segments, each made just before its call."""
    if fixed is not None:
      yield from fixed
      return
    steps, position = workload.stream.shape[1] - 1, 0
    while position < steps:
      end = min(position + method.segment_length(), steps)
      yield (tf.constant(workload.stream[:, position:end]),
             tf.constant(workload.stream[:, position + 1:end + 1]))
      position = end

  def train_round():
    units = 0.0
    method.on_epoch_start(0)
    state = model.initial_state(workload.batch_size)
    for segment in calls():
      if not stream:
        state = model.initial_state(workload.batch_size)
      state, metrics = method.train_segment(segment, state)
      float(metrics['loss_sum'])  # The trainer reads the metrics after every call.
      units += float(metrics['count'])
    method.on_epoch_end()
    return units

  method.on_epoch_start(0)
  method.train_segment(next(calls()), model.initial_state(workload.batch_size))
  if strategy is not None:
    config += f', {strategy_label(strategy)}'
  if precision != precision_lib.FLOAT32:
    config += f', precision={precision}'
  return Runner(workload.name, config, workload.unit, timed(train_round),
                workload.flops_per_unit(flops_window),
                traces=lambda: method.trace_counts['train_segment'])



def tfcredit_runner(workload: Workload, window: int, windows_per_call: int = 1,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    unroll_implementation: Optional[str] = None,
                    jit_compile: Union[bool, str] = jit.AUTO,
                    precision: str = precision_lib.FLOAT32) -> Runner:
  """``TruncatedBPTT(window, windows_per_call, jit_compile)`` through
  ``method_runner``; ``unroll_implementation`` (``RecurrentModel``'s) is named
  in the row label when given, ``jit_compile`` when forced (True or False)."""
  stream = workload.task.regime == task_base.STREAM
  config = f'tfcredit TruncatedBPTT window={window}'
  if stream:
    config += f', windows_per_call={windows_per_call}'
  if unroll_implementation is not None:
    workload = workloads_lib.with_unroll(workload, unroll_implementation)
    config += f', unroll_implementation={unroll_implementation}'
  if jit_compile != jit.AUTO:
    config += f', jit_compile={jit_compile}'
  return method_runner(
      workload, config,
      lambda model, task, optimizer: TruncatedBPTT(
          model=model, task=task, optimizer=optimizer, window=window,
          windows_per_call=windows_per_call, clip_norm=workload.clip_norm,
          jit_compile=jit_compile),
      segment_length=window * windows_per_call, flops_window=window,
      strategy=strategy, precision=precision)


def artbp_runner(workload: Workload, mean_length: int, alpha: float,
                 windows_per_call: int) -> Runner:
  """``ARTBP`` on a stream workload: each call takes the steps
  ``method.segment_length()`` asks for (its next sampled windows), and the
  truncation process continues from round to round."""
  return method_runner(
      workload, f'tfcredit ARTBP mean_length={mean_length}, alpha={alpha}, '
      f'windows_per_call={windows_per_call}',
      lambda model, task, optimizer: ARTBP(
          model=model, task=task, optimizer=optimizer, mean_length=mean_length,
          alpha=alpha, windows_per_call=windows_per_call,
          clip_norm=workload.clip_norm),
      flops_window=mean_length)


def forward_mode_runner(workload: Workload, method_class: type, window: int,
                        windows_per_call: int, **arguments) -> Runner:
  """``RTRL`` or a subclass (``UORO``, ``SnAp1``, ``SnAp2``, ``KFRTRL``,
  ``ElementwiseRTRL``) on a stream workload, with no influence limit and the
  method's other ``arguments``; the row label gives the floats its influence
  carries, the memory it needs beyond truncated BPTT's."""
  built = []

  def make_method(model, task, optimizer):
    built.append(method_class(
        model=model, task=task, optimizer=optimizer, window=window,
        windows_per_call=windows_per_call, batch_size=workload.batch_size,
        max_influence_floats=2**62, clip_norm=workload.clip_norm, **arguments))
    return built[-1]

  named = ''.join(f', {key}={value}' for key, value in arguments.items())
  runner = method_runner(
      workload, f'tfcredit {method_class.__name__} window={window}, '
      f'windows_per_call={windows_per_call}{named}', make_method,
      segment_length=window * windows_per_call, flops_window=window)
  floats, formula = built[-1].influence_size(workload.batch_size)
  runner.config += f', influence {formula} = {floats:,} floats'
  return runner


def configured_runner(workload: Workload, text: str) -> Runner:
  """A ``--method='NAME: bindings'`` row: the method ``train.method`` binds,
  configured by the other bindings (the workload's optimizer and data).

  Raises:
    ConfigurationError: the text or its bindings are malformed, or bind no
      ``train.method``.
  """
  variant = fidelity.Variant.parse(text)
  gin.clear_config()
  try:
    config.parse([], variant.bindings)
    try:
      method = gin.query_parameter('train.method').scoped_configurable_fn
    except (ValueError, AttributeError):
      raise ConfigurationError(
          f"--method={text!r} binds no method: add e.g. 'train.method = "
          "@TruncatedBPTT'") from None
    return method_runner(
        workload, f'tfcredit {variant.name}',
        lambda model, task, optimizer: trainer.build_method(
            method, model, task, optimizer, workload.batch_size))
  finally:
    gin.clear_config()


class _EpochTimer(keras.callbacks.Callback):
  """Times the last epoch, excluding ``fit``'s data-adapter set-up."""

  def on_epoch_begin(self, epoch, logs=None):
    self._stopwatch = Stopwatch()

  def on_epoch_end(self, epoch, logs=None):
    self.elapsed = self._stopwatch.elapsed()


def keras_fit_runner(workload: Workload, window: int, steps_per_execution: int = 1
                     ) -> Runner:
  """A plain ``model.fit`` of the same network and data, warmed up by a short epoch.

  Args:
    workload: the workload.
    window: stream workloads: steps per batch (the truncation window); episodic
      ones train on whole sequences.
    steps_per_execution: Keras' batches per compiled call (1 is the default).

  Returns:
    The runner; a round is one epoch over the workload's data.
  """
  model = keras.Sequential(workload.keras_layers(window))
  optimizer = workload.make_optimizer()
  if workload.clip_norm is not None:
    optimizer.global_clipnorm = workload.clip_norm
  model.compile(optimizer=optimizer, loss=workload.keras_loss,
                steps_per_execution=steps_per_execution)
  x, y = workload.keras_data(window)
  fit = functools.partial(model.fit, batch_size=workload.batch_size, epochs=1,
                          shuffle=False, verbose=0)
  fit(x[:workload.batch_size * max(2, steps_per_execution)],
      y[:workload.batch_size * max(2, steps_per_execution)])
  stream = workload.unit == 'tokens'
  timer = _EpochTimer()

  def run():
    fit(x, y, callbacks=[timer])
    return float(x.size if stream else len(x)), timer.elapsed

  return Runner(workload.name,
                f'Keras fit (steps_per_execution={steps_per_execution}, '
                f'jit_compile={model.jit_compile})', workload.unit, run,
                workload.flops_per_unit(window if stream else None))


def matmul_runner(shape: Sequence[int], target_flops: float,
                  dtype: tf.dtypes.DType = tf.float32) -> Runner:
  """Chained ``[m, k] x [k, n]`` products in one ``tf.function`` (needs ``n >= k``).

  Each product feeds (negligibly) into the next one's input, so none can be hoisted
  out of the loop or overlap another: one stream of matmuls using every intra-op
  thread, as an LSTM's sequential steps are. A timing is one call: as many products
  as fit in ``target_flops`` (at least 1), so the call overhead is amortised.

  Args:
    shape: ``(m, k, n)``.
    target_flops: FLOPs per timing.
    dtype: of both operands; anything but float32 is named in the row label.

  Returns:
    The runner; its unit is the GFLOP.
  """
  m, k, n = shape
  flops = 2.0 * m * k * n
  repeats = max(1, int(target_flops / flops))
  a = tf.cast(tf.random.normal([m, k]), dtype)
  b = tf.cast(tf.random.normal([k, n]), dtype)

  @tf.function
  def chained(a, b):
    def body(index, a):
      return index + 1, a + 1e-30 * tf.matmul(a, b)[:, :k]
    _, a = tf.while_loop(lambda index, _: index < repeats, body, (0, a))
    return tf.reduce_sum(a)

  def multiply():
    float(chained(a, b))
    return flops * repeats / 1e9

  multiply()
  label = f'matmul [{m},{k}]x[{k},{n}]'
  if dtype != tf.float32:
    label += f' {dtype.name}'
  return Runner('matmul reference', label, 'GFLOP', timed(multiply), 1e9)


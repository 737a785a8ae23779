"""Truncated-BPTT training throughput, as ratios to references timed in the same run.

``tfcredit-benchmark [--quick] [--output_dir=runs/benchmark]``

Workloads: the PTB "small" language model of Zaremba et al. (2014) (vocabulary
10,000, 2-layer LSTM 200, window 20, batch 20, SGD lr 1, clip 5) on random token ids,
and the adding task (T = 200, LSTM 128, batch 128, Adam 1e-3). tfcredit's
``TruncatedBPTT`` is timed on each, and so are two references: a plain Keras
``model.fit`` of the same network and data layout, and the machine's float32
matrix-multiply rate (the "roofline"). Every figure is reported as a ratio to those
references because absolute rates depend on the CPU and on whatever else the machine
is running; ratios much less. For the same reason the measurements are interleaved:
each round times every configuration once, and a ratio is the median over rounds of
the ratio within a round, so a load change hits numerator and denominator alike. Both
ratios are also given in process CPU time, which waiting for a core does not inflate
(docs/benchmark.md says how to read the two).

The roofline is the machine's peak, not a typical rate: ``ROOFLINE_PRODUCTS``
chained 1024³ float32 products per timing (``QUICK_ROOFLINE_PRODUCTS`` with
``--quick``), and the best rate over rounds (``roofline_gflops_float32`` in the
JSON). Fractions of the roofline are against that peak. On a CPU with bf16 matrix
instructions (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``) a bfloat16
1024³ row is timed the same way and its best rate recorded
(``roofline_gflops_bfloat16``); fractions stay against the float32 peak.

FLOP accounting (multiply-adds count 2): an LSTM layer costs ``8·units·(inputs +
units)`` per step and sequence, a dense head ``2·inputs·outputs``; a backpropagated
step costs twice its forward step (gradients for activations and for weights). So a
language-model token costs 3x its forward pass, and an adding sequence trained with
window ``K`` costs ``T`` forward steps plus ``2·min(K, T)`` backward ones (only the
window holding the terminal loss is backpropagated). Embedding lookups, gate
nonlinearities and the softmax are ignored, so the achieved rates are lower bounds.

Replicas (``--replicas_row``, on by default): the PTB shape with
``windows_per_call=10`` is also timed under ``MirroredStrategy`` with 2 replicas on
2 logical CPU devices (``split_cpu(2)`` at startup), against the same configuration
with 1 replica (the default strategy), same global batch 20. Both share the same
cores, so their ratio measures the overhead of the distributed code path (per-replica
calls, cross-replica gradient sums, dense embedding gradients), not a speed-up.

ARTBP (``--artbp_row``, on by default): the PTB shape trained by ``ARTBP`` (Tallec &
Ollivier 2017; mean window L0 = 20, alpha = 4, 10 windows per call, each call as long
as the method asks through ``segment_length``, as the trainer does), against
truncated BPTT with window L0 and the same windows per call, timed in the same
rounds (the target: a ratio of at least 0.85).

Precision (``--precision_rows``, on by default): truncated BPTT on the PTB shape
(the largest ``windows_per_call``) and on the adding task, under
``train.precision = 'mixed_bfloat16'`` and ``'mixed_float16'``, against the same
configuration in float32 timed in the same rounds; the bfloat16 1024³ matmul is
timed too, and the summary says whether the CPU has bf16 matrix instructions
(without them TensorFlow emulates bfloat16 products, and the rows measure that).

Forward mode (``--forward_mode_units``, off by default): ``RTRL``, ``UORO`` and
``SnAp1`` against truncated BPTT with the same window, on a 1-layer LSTM of each
given width (4 columns of 32 random symbols); each row names the floats its
influence carries.

Writes ``benchmark.json`` and ``benchmark.md`` into ``--output_dir`` and prints the
markdown table.
"""

import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import flags
import gin
import keras
import numpy as np
import tensorflow as tf

from tfcredit import config
from tfcredit import fidelity
from tfcredit import precision as precision_lib
from tfcredit import tables
from tfcredit import validation
from tfcredit.cli import common
from tfcredit.errors import ConfigurationError
from tfcredit.methods.artbp import ARTBP
from tfcredit.methods.base import Method
from tfcredit.methods.truncated_bptt import TruncatedBPTT
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.tasks import base as task_base
from tfcredit.tasks import language_modeling
from tfcredit.tasks.sequences import SequenceTask
from tfcredit.tasks import synthetic
from tfcredit.training import distribution
from tfcredit.training import trainer

SQUARE_MATMUL = (1024, 1024, 1024)  # The roofline: large enough to saturate the BLAS.
ROOFLINE_PRODUCTS = 40  # Chained SQUARE_MATMUL products per timing (~86 GFLOP).
QUICK_ROOFLINE_PRODUCTS = 10  # The same with --quick.
# /proc/cpuinfo flags recorded in the JSON's machine entry, when present.
ISA_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile',
             'amx_int8')
BF16_FLAGS = ('amx_bf16', 'amx_tile', 'avx512_bf16')  # Reported in the summary.
BF16_MATMUL_FLAGS = ('amx_bf16', 'avx512_bf16')  # Any of them: time a bf16 row.
QUICK_WINDOWS_PER_CALL = [1, 2]  # --quick without --windows_per_call.
# The forward-mode rows (--forward_mode_units): RTRL, UORO and SnAp-1 against
# truncated BPTT with the same window on a small symbol stream; a round is
# FORWARD_MODE_WINDOWS windows of FORWARD_MODE_WINDOW steps (one call).
FORWARD_MODE_VOCABULARY, FORWARD_MODE_BATCH = 32, 4
FORWARD_MODE_WINDOW, FORWARD_MODE_WINDOWS = 10, 2
REPLICAS = 2  # Logical CPU devices, and replicas of the replicas row.
REPLICAS_WINDOWS_PER_CALL = 10  # The replicas row's TruncatedBPTT configuration.
ARTBP_MEAN_LENGTH, ARTBP_ALPHA = 20, 4.0  # The ARTBP row: L0 = the PTB window.
ARTBP_WINDOWS_PER_CALL = 10

FLAGS = flags.FLAGS


def define_flags() -> None:
  define = common.define_flag
  define(flags.DEFINE_bool, 'quick', False, 'Short measurements (well under a '
         'minute in all) for smoke tests: one round, windows_per_call 1 and 2 '
         'unless given, no steps_per_execution row; the figures are noisier.')
  define(flags.DEFINE_string, 'output_dir', 'runs/benchmark', 'Where '
         'benchmark.json and benchmark.md are written.')
  define(flags.DEFINE_multi_integer, 'windows_per_call', [10, 50], 'Values of '
         'TruncatedBPTT.windows_per_call timed on the language model (one row '
         'each).')
  define(flags.DEFINE_bool, 'replicas_row', True, 'Also time the PTB shape with '
         f'windows_per_call={REPLICAS_WINDOWS_PER_CALL} on 1 replica and on '
         f'{REPLICAS} (MirroredStrategy over {REPLICAS} logical CPU devices, split '
         'at startup) and report their throughput ratio: the overhead of the '
         'distributed code path. false also leaves the CPU unsplit.')
  define(flags.DEFINE_bool, 'artbp_row', True, 'Also time ARTBP (L0 = '
         f'{ARTBP_MEAN_LENGTH}, alpha = {ARTBP_ALPHA}) on the PTB shape against '
         'truncated BPTT with window L0 in the same rounds.')
  define(flags.DEFINE_bool, 'fptt_row', True, 'Also time FPTT (K = 10 windows of '
         '20 steps, alpha = 0.01) on the adding task, T = 200, and on the PTB '
         'shape, against truncated BPTT with the same windows in the same rounds.')
  define(flags.DEFINE_bool, 'dni_row', True, 'Also time DNI (layer-wise and '
         'neuron-wise synthesizers, window 20, 10 windows per call) on the PTB '
         'shape against truncated BPTT with the same window in the same rounds.')
  define(flags.DEFINE_bool, 'target_prop_row', True, 'Also time TargetProp '
         '(Wiseman et al. 2017; blocks of 10, 4 blocks per update, 1 H-step, 1 '
         'theta-step) on the PTB shape against truncated BPTT with K = 10 and '
         'with K = 4 x 10 (the same tokens per update) in the same rounds.')
  define(flags.DEFINE_bool, 'keras_unroll_rows', True, 'Also time the PTB shape '
         '(largest --windows_per_call) and the adding task with full BPTT with '
         "RecurrentModel.unroll_implementation='keras' (the Keras layers) beside "
         "the default ('auto': the fused unroll on a CPU), in the same rounds.")
  define(flags.DEFINE_bool, 'jit_compile_rows', True, 'Also time the PTB shape '
         '(largest --windows_per_call) and the adding task with full BPTT with '
         'TruncatedBPTT.jit_compile=True (each window\'s pass compiled by XLA; '
         'the warm-up includes the compilation).')
  define(flags.DEFINE_bool, 'precision_rows', True, 'Also time the PTB shape '
         'and the adding task under train.precision mixed_bfloat16 and '
         'mixed_float16 beside float32 (their ratios are against float32 in the '
         'same run), and the bfloat16 1024^3 matmul.')
  define(flags.DEFINE_bool, 'sequence_task_rows', True, 'Also time the adding '
         "task's batches as a SequenceTask (the user's own arrays): of one "
         'length (no masks) and padded from lengths 150-200, against the '
         'built-in adding task in the same rounds (full BPTT).')
  define(flags.DEFINE_multi_string, 'method', [], "Extra rows on the PTB "
         "shape, one per 'NAME: gin bindings' as tools/compare.py takes them "
         "(the bindings name the class), built as the trainer builds it, e.g. "
         "--method='ARTBP L0=20: train.method = @ARTBP; ARTBP.mean_length = 20; "
         "ARTBP.clip_norm = 5.0'.")
  define(flags.DEFINE_multi_integer, 'forward_mode_units', [], 'Also time RTRL, '
         'UORO and SnAp-1 against truncated BPTT (window '
         f'{FORWARD_MODE_WINDOW}) on a 1-layer LSTM of each of these widths, '
         f'{FORWARD_MODE_BATCH} columns of {FORWARD_MODE_VOCABULARY} random '
         'symbols; each row names the floats its influence carries. RTRL costs '
         'O(state^2 x weights) per step: at 128 units a round takes minutes.')
  define(flags.DEFINE_integer, 'rounds', None, 'Interleaved measurement rounds; '
         'default 3 (1 with --quick).')
  define(flags.DEFINE_integer, 'seed', 0, 'Seeds the weights and the synthetic '
         'data.')


# ---------------------------------------------------------------------- FLOPs
def lstm_step_flops(input_dim: int, units: int) -> float:
  """Forward FLOPs of one LSTM step for one sequence: four gates' two matmuls."""
  return 2.0 * 4 * units * (input_dim + units)


def dense_flops(input_dim: int, output_dim: int) -> float:
  """Forward FLOPs of a dense layer applied to one vector."""
  return 2.0 * input_dim * output_dim


def training_flops(core_step: float, head: float, forward_steps: float,
                   backward_steps: float, head_evaluations: float) -> float:
  """FLOPs of a forward pass plus a backward pass costing twice the forward.

  Args:
    core_step: forward FLOPs of one step of the recurrent core.
    head: forward FLOPs of one evaluation of the head.
    forward_steps: core steps run forward.
    backward_steps: core steps backpropagated.
    head_evaluations: head evaluations (each also backpropagated).

  Returns:
    The total FLOPs.
  """
  return (core_step * (forward_steps + 2 * backward_steps)
          + 3 * head * head_evaluations)


# --------------------------------------------------------------------- CPU
def cpu_features(cpuinfo: Optional[str] = None) -> Dict:
  """The CPU's model name, relevant ISA flags and logical CPU count.

  Args:
    cpuinfo: the text of ``/proc/cpuinfo``; None reads it (Linux), or takes
      ``platform.processor()`` and no flags where it cannot be read.

  Returns:
    ``{'cpu_model': str, 'isa_flags': [...], 'bf16_flags': [...],
    'bf16_matmul': bool, 'cpu_count': int}``: ``isa_flags`` are those of
    ``ISA_FLAGS`` present, ``bf16_flags`` those of ``BF16_FLAGS``, and
    ``bf16_matmul`` whether the CPU has bf16 matrix instructions (``amx_bf16`` or
    ``avx512_bf16``; ``amx_tile`` alone is the tile unit, possibly int8 only);
    ``cpu_count`` is the logical CPU count (``os.cpu_count()``).
  """
  if cpuinfo is None:
    try:
      with open('/proc/cpuinfo') as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ''
  model, present = None, set()
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(':')
    key = key.strip()
    if key == 'model name' and model is None:
      model = value.strip()
    elif key == 'flags':  # The same on every core: the union costs nothing.
      present.update(value.split())
  return {'cpu_model': model or platform.processor() or None,
          'isa_flags': [flag for flag in ISA_FLAGS if flag in present],
          'bf16_flags': [flag for flag in BF16_FLAGS if flag in present],
          'bf16_matmul': any(flag in present for flag in BF16_MATMUL_FLAGS),
          'cpu_count': os.cpu_count()}


# ---------------------------------------------------------------- workloads
class RandomTokenStream(language_modeling.TokenStreamTask):
  """The language-modelling loss, specs and layout on uniformly random token ids.

  The benchmark must run without a download, and throughput does not depend on
  which tokens are drawn.
  """

  name = 'lm_random_tokens'

  def __init__(self, *, vocabulary_size: int, length: int, seed: int):
    super().__init__()
    self._size = vocabulary_size
    self._ids_array = np.random.default_rng(seed).integers(
        0, vocabulary_size, size=length, dtype=np.int32)

  @property
  def vocabulary_size(self) -> int:
    return self._size

  def _ids(self, split: str) -> np.ndarray:
    del split  # Every split is the same stream.
    return self._ids_array

  def get_config(self):
    return {'vocabulary_size': self._size}


@dataclasses.dataclass
class Workload:
  """One network and data layout, trained by tfcredit and by ``keras.Model.fit``.

  Attributes:
    name: row label.
    unit: what throughput counts: ``'tokens'`` or ``'sequences'``.
    task: the tfcredit task (its loss defines the objective).
    model_kwargs: ``RecurrentModel`` arguments beyond ``task.model_spec()``.
    make_optimizer: a fresh optimizer (the Keras twin gets its own).
    clip_norm: ``TruncatedBPTT.clip_norm``; the Keras twin uses ``global_clipnorm``.
    batch_size: sequences (or stream columns) per batch.
    segments: ``segment_length -> [(inputs, targets)]``: one round's tfcredit calls.
    keras_layers: ``window -> [keras.layers.Layer]``: the same network, input
      included.
    keras_loss: the Keras loss matching ``task.losses``.
    keras_data: ``window -> (x, y)`` arrays, batches in training order.
    flops_per_unit: ``backpropagated window or None (whole sequence) -> FLOPs`` of
      training one unit.
    stream: stream workloads: the ``[batch, steps + 1]`` token columns, for
      methods whose calls have random lengths (ARTBP).
  """
  name: str
  unit: str
  task: task_base.Task
  model_kwargs: Dict
  make_optimizer: Callable[[], keras.optimizers.Optimizer]
  clip_norm: Optional[float]
  batch_size: int
  segments: Callable[[int], List[Tuple[tf.Tensor, tf.Tensor]]]
  keras_layers: Callable[[int], list]
  keras_loss: keras.losses.Loss
  keras_data: Callable[[int], Tuple[np.ndarray, np.ndarray]]
  flops_per_unit: Callable[[Optional[int]], float]
  stream: Optional[np.ndarray] = None


def token_stream(name: str, *, vocabulary: int, units: int, layers: int,
                 batch: int, steps: int, seed: int,
                 make_optimizer: Callable[[], keras.optimizers.Optimizer],
                 clip_norm: Optional[float]) -> Workload:
  """A language model (embedding of ``units``, ``layers`` LSTMs of ``units``, a
  dense head) on ``batch`` columns of ``steps`` random token ids."""
  task = RandomTokenStream(vocabulary_size=vocabulary, length=batch * (steps + 1),
                           seed=seed)
  stream = task.stream('train', batch)

  def segments(length):
    return [(tf.constant(stream[:, start:start + length]),
             tf.constant(stream[:, start + 1:start + length + 1]))
            for start in range(0, steps, length)]

  def keras_data(window):
    # Batch i holds window i of every column, so a stateful LSTM carries each
    # column's state from one batch to the next, as truncated BPTT does.
    def windows(array):
      return (array.reshape(batch, -1, window).transpose(1, 0, 2)
              .reshape(-1, window))
    return windows(stream[:, :-1]), windows(stream[:, 1:])

  def keras_layers(window):
    return ([keras.Input(batch_shape=(batch, window), dtype='int32'),
             keras.layers.Embedding(vocabulary, units)]
            + [keras.layers.LSTM(units, stateful=True, return_sequences=True)
               for _ in range(layers)]
            + [keras.layers.Dense(vocabulary)])

  core = layers * lstm_step_flops(units, units)
  head = dense_flops(units, vocabulary)
  return Workload(
      name=name, unit='tokens', task=task,
      model_kwargs=dict(units=units, num_layers=layers, embedding_dim=units),
      make_optimizer=make_optimizer, clip_norm=clip_norm,
      batch_size=batch, segments=segments, keras_layers=keras_layers,
      keras_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      keras_data=keras_data, stream=stream,
      flops_per_unit=lambda _: training_flops(core, head, 1, 1, 1))


def ptb_small(steps: int, seed: int) -> Workload:
  """Zaremba et al. (2014) small: 2x LSTM 200, window 20, batch 20, SGD 1, clip 5."""
  return token_stream('PTB small (random ids)', vocabulary=10000, units=200,
                      layers=2, batch=20, steps=steps, seed=seed,
                      make_optimizer=lambda: keras.optimizers.SGD(1.0),
                      clip_norm=5.0)


def forward_mode_stream(units: int, steps: int, seed: int) -> Workload:
  """The forward-mode rows' model: LSTM ``units`` on ``FORWARD_MODE_VOCABULARY``
  random symbols, ``FORWARD_MODE_BATCH`` columns, Adam 1e-3, clip 1."""
  return token_stream(
      f'symbols (random ids), LSTM {units}', vocabulary=FORWARD_MODE_VOCABULARY,
      units=units, layers=1, batch=FORWARD_MODE_BATCH, steps=steps, seed=seed,
      make_optimizer=lambda: keras.optimizers.Adam(1e-3), clip_norm=1.0)


def adding(length: int, batches: int, seed: int) -> Workload:
  """Adding task, T = ``length``: LSTM 128, batch 128, Adam 1e-3, MSE at the end."""
  units, batch = 128, 128
  task = synthetic.AddingTask(sequence_length=length, seed=seed)
  data = [task.batch('train', 0, index, batch) for index in range(batches)]

  def segments(length_unused):
    del length_unused  # Episodic: one call per batch of whole sequences.
    return [(tf.constant(inputs), tf.constant(targets)) for inputs, targets in data]

  def keras_data(window_unused):
    del window_unused
    return (np.concatenate([inputs for inputs, _ in data]),
            np.concatenate([targets for _, targets in data]))

  def keras_layers(window_unused):
    del window_unused  # The reference trains on whole sequences.
    return [keras.Input(batch_shape=(batch, length, 2)), keras.layers.LSTM(units),
            keras.layers.Dense(1)]

  core = lstm_step_flops(2, units)
  head = dense_flops(units, 1)

  def flops_per_unit(window):
    backward = length if window is None else min(window, length)
    return training_flops(core, head, length, backward, 1)

  return Workload(
      name=f'adding T={length}', unit='sequences', task=task,
      model_kwargs=dict(units=units), clip_norm=None,
      make_optimizer=lambda: keras.optimizers.Adam(1e-3), batch_size=batch,
      segments=segments, keras_layers=keras_layers,
      keras_loss=keras.losses.MeanSquaredError(), keras_data=keras_data,
      flops_per_unit=flops_per_unit)


# ------------------------------------------------------------------ runners
@dataclasses.dataclass(frozen=True)
class Elapsed:
  """Wall-clock and process CPU seconds (all threads) of one round.

  CPU time is the less load-sensitive of the two on a shared machine: waiting for a
  core does not count, although cache sharing and spinning worker threads still do.
  """
  wall: float
  cpu: float


class Stopwatch:
  """Reads both clocks at construction and at ``elapsed()``."""

  def __init__(self):
    self._wall, self._cpu = time.perf_counter(), time.process_time()

  def elapsed(self) -> Elapsed:
    return Elapsed(time.perf_counter() - self._wall, time.process_time() - self._cpu)


@dataclasses.dataclass
class Runner:
  """One timed configuration.

  Attributes:
    workload: the workload's name, or ``'matmul reference'``.
    config: row label.
    unit: what ``run`` counts.
    run: does one round of work; returns ``(units, Elapsed)``.
    flops_per_unit: FLOPs per unit, for the achieved rate.
    rates: units per wall-clock second, one per round (see ``measure_rounds``).
    cpu_rates: units per CPU second of this process (all threads), one per round.
    traces: tfcredit runners: ``() -> number of traces of train_segment`` (1 if
      nothing retraced during the measurement).
  """
  workload: str
  config: str
  unit: str
  run: Callable[[], Tuple[float, Elapsed]]
  flops_per_unit: float
  rates: List[float] = dataclasses.field(default_factory=list)
  cpu_rates: List[float] = dataclasses.field(default_factory=list)
  traces: Optional[Callable[[], int]] = None

  def gflops(self, rates: Sequence[float]) -> List[float]:
    """Converts unit rates to GFLOP/s."""
    return [rate * self.flops_per_unit / 1e9 for rate in rates]


def timed(work: Callable[[], float]) -> Callable[[], Tuple[float, Elapsed]]:
  """Wraps ``work() -> units`` into ``() -> (units, Elapsed)``."""
  def run():
    stopwatch = Stopwatch()
    units = work()
    return units, stopwatch.elapsed()
  return run


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


def with_unroll(workload: Workload, unroll_implementation: str) -> Workload:
  """``workload`` with ``RecurrentModel.unroll_implementation`` set."""
  return dataclasses.replace(workload, model_kwargs=dict(
      workload.model_kwargs, unroll_implementation=unroll_implementation))


def tfcredit_runner(workload: Workload, window: int, windows_per_call: int = 1,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    unroll_implementation: Optional[str] = None,
                    jit_compile: bool = False,
                    precision: str = precision_lib.FLOAT32) -> Runner:
  """``TruncatedBPTT(window, windows_per_call, jit_compile)`` through
  ``method_runner``; ``unroll_implementation`` (``RecurrentModel``'s) and
  ``jit_compile`` are named in the row label when given."""
  stream = workload.task.regime == task_base.STREAM
  config = f'tfcredit TruncatedBPTT window={window}'
  if stream:
    config += f', windows_per_call={windows_per_call}'
  if unroll_implementation is not None:
    workload = with_unroll(workload, unroll_implementation)
    config += f', unroll_implementation={unroll_implementation}'
  if jit_compile:
    config += ', jit_compile=True'
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
                        windows_per_call: int) -> Runner:
  """``RTRL`` or a subclass (``UORO``, ``SnAp1``) on a stream workload, with no
  influence limit; the row label gives the floats its influence carries, the
  memory it needs beyond truncated BPTT's."""
  built = []

  def make_method(model, task, optimizer):
    built.append(method_class(
        model=model, task=task, optimizer=optimizer, window=window,
        windows_per_call=windows_per_call, batch_size=workload.batch_size,
        max_influence_floats=2**62, clip_norm=workload.clip_norm))
    return built[-1]

  runner = method_runner(
      workload, f'tfcredit {method_class.__name__} window={window}, '
      f'windows_per_call={windows_per_call}', make_method,
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


# ---------------------------------------------------------------- measuring
def measure_rounds(runners: Sequence[Runner], rounds: int) -> None:
  """Interleaves the runners: each round runs every one once, appending its rates.

  Odd rounds go in reverse order, so a load drift within a round does not always
  favour the configurations measured first.
  """
  for index in range(rounds):
    for runner in (runners if index % 2 == 0 else reversed(runners)):
      units, elapsed = runner.run()
      runner.rates.append(units / elapsed.wall)
      runner.cpu_rates.append(units / elapsed.cpu)
    print(f'  round {index + 1}/{rounds} done', flush=True)


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
  """The median over rounds of the within-round ratio."""
  return statistics.median(n / d for n, d in zip(numerators, denominators))


def roofline_peak(roofline: Runner) -> Tuple[float, float]:
  """The roofline: the best GFLOP/s over rounds, per wall-clock and per CPU second.

  The best, not the median: the roofline is what the machine can do, and a round
  can only be slowed down (by other jobs, by a core taken away), never sped up.
  """
  return (max(roofline.gflops(roofline.rates)),
          max(roofline.gflops(roofline.cpu_rates)))


def summarize(runners: Sequence[Runner], roofline: Runner,
              references: Dict[str, Runner]) -> List[Dict]:
  """One row per runner: median rates and median per-round ratios to the references.

  A workload's reference is its Keras ``fit`` (or, for the replicas rows, the
  1-replica row); the ratios of a matmul row are None.

  The fractions of the roofline are the median achieved GFLOP/s over the
  roofline's peak (``roofline_peak``: its best round), in wall-clock time and in
  CPU time. The CPU-time one (FLOPs per CPU-second over the peak matmul's) does not
  depend on how many cores the process got, only on how well it used them.
  """
  peak, peak_cpu = roofline_peak(roofline)
  rows = []
  for runner in runners:
    reference = references.get(runner.workload)
    rows.append({
        'workload': runner.workload, 'config': runner.config,
        'unit': f'{runner.unit}/s', 'throughput': statistics.median(runner.rates),
        'throughput_per_round': runner.rates,
        'cpu_throughput_per_round': runner.cpu_rates,
        'reference': None if reference is None else reference.config,
        'ratio_vs_reference': (None if reference is None else
                               median_ratio(runner.rates, reference.rates)),
        'cpu_time_ratio_vs_reference': (
            None if reference is None else
            median_ratio(runner.cpu_rates, reference.cpu_rates)),
        'flops_per_unit': runner.flops_per_unit,
        'gflops': statistics.median(runner.gflops(runner.rates)),
        'fraction_of_roofline': (
            statistics.median(runner.gflops(runner.rates)) / peak),
        'fraction_of_roofline_cpu_time': (
            statistics.median(runner.gflops(runner.cpu_rates)) / peak_cpu),
        'train_segment_traces': None if runner.traces is None else runner.traces()})
  return rows


def markdown_table(rows: Sequence[Dict]) -> str:
  """The rows as a GitHub markdown table."""
  def ratio(value):
    if value is None:
      return '—'
    return f'{value:.2f}' if value >= 0.01 else f'{value:.2g}'  # RTRL: 1e-4.

  header = ['workload', 'method / config', 'throughput', 'ratio vs reference',
            '(CPU time)', 'achieved GFLOP/s', 'fraction of roofline', '(CPU time)']
  return tables.markdown_table(header, [tables.LEFT] * 2 + [tables.RIGHT] * 6, [
      [row['workload'], row['config'], f"{row['throughput']:,.1f} {row['unit']}",
       ratio(row['ratio_vs_reference']),
       ratio(row['cpu_time_ratio_vs_reference']), f"{row['gflops']:.1f}",
       f"{row['fraction_of_roofline']:.2f}",
       f"{row['fraction_of_roofline_cpu_time']:.2f}"] for row in rows])


def sequence_task_rows(adding_task: Workload, add) -> Dict[str, Runner]:
  """The adding batches as ``SequenceTask`` arrays, unpadded and padded (each
  row cut at a length drawn from 150-200, NaN after it), beside the built-in
  task under the same workload name (the rows' reference): what the user's
  own data and its masks cost."""
  name = f'{adding_task.name}, own arrays'
  reference = add(tfcredit_runner, dataclasses.replace(adding_task, name=name),
                  200)
  segments = adding_task.segments(None)
  inputs = np.concatenate([x.numpy() for x, _ in segments])
  targets = np.concatenate([y.numpy() for _, y in segments])
  rng = np.random.default_rng(0)
  lengths = rng.integers(150, 201, size=len(inputs))
  for label, task_lengths in (('SequenceTask', None),
                              ('SequenceTask, padded 150-200', lengths)):
    task = SequenceTask(inputs=inputs, targets=targets, lengths=task_lengths,
                        loss='mse', readout=task_base.TERMINAL,
                        valid=(inputs[:2], targets[:2]),
                        test=(inputs[:2], targets[:2]))
    padded = inputs.copy()
    if task_lengths is not None:
      padded[np.arange(inputs.shape[1]) >= task_lengths[:, None]] = np.nan
    batch = adding_task.batch_size
    workload = dataclasses.replace(
        adding_task, name=name, task=task,
        segments=lambda _, padded=padded: [
            (tf.constant(padded[i:i + batch]), tf.constant(targets[i:i + batch]))
            for i in range(0, len(padded), batch)])
    add(method_runner, workload, f'tfcredit TruncatedBPTT window=200, {label}',
        lambda model, task, optimizer: TruncatedBPTT(
            model=model, task=task, optimizer=optimizer, window=200),
        flops_window=200)
  return {name: reference}


def build_runners(quick: bool, windows_per_call: Sequence[int], seed: int,
                  replicas_row: bool, artbp_row: bool = True,
                  bf16_row: bool = False
                  ) -> Tuple[List[Runner], Dict[str, Runner], Dict[str, Runner]]:
  """Builds and warms up every configuration.

  Args:
    quick: short rounds (and fewer chained products per roofline timing).
    windows_per_call: the language-model rows' ``windows_per_call``.
    seed: seeds the synthetic data.
    replicas_row: also the 1- and 2-replica rows.
    artbp_row: also the ARTBP row and its reference.
    bf16_row: also the bfloat16 1024³ matmul row (the CPU has bf16 matrix
      instructions).

  Returns:
    ``(runners, rooflines, {workload name: its reference})``: ``rooflines`` maps
    ``'float32'`` (and with ``bf16_row`` ``'bfloat16'``) to its 1024³ matmul
    runner; a workload's reference is its Keras ``fit``, or for the replicas rows
    the 1-replica row.
  """
  largest = max(windows_per_call)
  # Every configuration makes whole calls over the same stream.
  language_model = ptb_small(steps=20 * math.lcm(*windows_per_call), seed=seed)
  adding_task = adding(length=200, batches=1 if quick else 4, seed=seed)
  target_flops = 2e9 if quick else 1e10
  runners = []

  def add(build, *args, **kwargs):
    start = time.perf_counter()
    runners.append(build(*args, **kwargs))
    print(f'  warmed up {runners[-1].workload}: {runners[-1].config} '
          f'({time.perf_counter() - start:.1f} s)', flush=True)
    return runners[-1]

  square_flops = 2.0 * math.prod(SQUARE_MATMUL)
  products = QUICK_ROOFLINE_PRODUCTS if quick else ROOFLINE_PRODUCTS
  rooflines = {'float32': add(matmul_runner, SQUARE_MATMUL, products * square_flops)}
  if bf16_row:
    rooflines['bfloat16'] = add(matmul_runner, SQUARE_MATMUL,
                                products * square_flops, dtype=tf.bfloat16)
  add(matmul_runner, (20, 400, 800), target_flops / 4)
  add(matmul_runner, (128, 130, 512), target_flops / 4)
  references = {language_model.name: add(keras_fit_runner, language_model, 20)}
  if not quick:
    add(keras_fit_runner, language_model, 20, steps_per_execution=largest)
  for count in windows_per_call:
    add(tfcredit_runner, language_model, 20, count)
  for text in FLAGS.method:
    add(configured_runner, language_model, text)
  if FLAGS.keras_unroll_rows:
    add(tfcredit_runner, language_model, 20, largest,
        unroll_implementation='keras')
  if FLAGS.jit_compile_rows:
    add(tfcredit_runner, language_model, 20, largest, jit_compile=True)
  references[adding_task.name] = add(keras_fit_runner, adding_task, 200)
  add(tfcredit_runner, adding_task, 200)
  if FLAGS.keras_unroll_rows:
    add(tfcredit_runner, adding_task, 200, unroll_implementation='keras')
  if FLAGS.jit_compile_rows:
    add(tfcredit_runner, adding_task, 200, jit_compile=True)
  add(tfcredit_runner, adding_task, 20)
  if FLAGS.sequence_task_rows:
    references.update(sequence_task_rows(adding_task, add))
  if FLAGS.precision_rows:
    for workload, window, count in ((language_model, 20, largest),
                                    (adding_task, 200, 1)):
      reference = dataclasses.replace(workload,
                                      name=f'{workload.name}, precision')
      references[reference.name] = add(tfcredit_runner, reference, window, count)
      for policy in (precision_lib.MIXED_BFLOAT16, precision_lib.MIXED_FLOAT16):
        add(tfcredit_runner, reference, window, count, precision=policy)
  if replicas_row:
    # Whole calls of REPLICAS_WINDOWS_PER_CALL windows: 20,000 tokens a round, as
    # the language-model rows with the default --windows_per_call (4,000 quick).
    replicas_model = dataclasses.replace(
        ptb_small(steps=20 * REPLICAS_WINDOWS_PER_CALL * (1 if quick else 5),
                  seed=seed),
        name='PTB small (random ids), replicas')
    devices = [device.name for device in tf.config.list_logical_devices('CPU')]
    references[replicas_model.name] = add(
        tfcredit_runner, replicas_model, 20, REPLICAS_WINDOWS_PER_CALL,
        strategy=tf.distribute.get_strategy())
    add(tfcredit_runner, replicas_model, 20, REPLICAS_WINDOWS_PER_CALL,
        strategy=tf.distribute.MirroredStrategy(devices[:REPLICAS]))
  if artbp_row:
    # Reference: truncated BPTT with window L0 and the same windows per call.
    artbp_model = dataclasses.replace(
        ptb_small(steps=ARTBP_MEAN_LENGTH * ARTBP_WINDOWS_PER_CALL *
                  (2 if quick else 10), seed=seed),
        name='PTB small (random ids), ARTBP')
    references[artbp_model.name] = add(tfcredit_runner, artbp_model,
                                       ARTBP_MEAN_LENGTH, ARTBP_WINDOWS_PER_CALL)
    add(artbp_runner, artbp_model, ARTBP_MEAN_LENGTH, ARTBP_ALPHA,
        ARTBP_WINDOWS_PER_CALL)
  if FLAGS.fptt_row:
    # FPTT (Kag & Saligrama 2021) on the adding task, T = 200, K = 10 windows of
    # 20 steps, against truncated BPTT with the same windows (the target: a
    # ratio of at least 0.8). FPTT backpropagates every window (each one's last
    # state predicts the target); truncated BPTT only the last window, the only
    # one with a loss, and runs the others forward.
    from tfcredit.methods.fptt import FPTT  # pylint: disable=g-import-not-at-top
    fptt_task = dataclasses.replace(adding_task, name='adding T=200, FPTT')
    references[fptt_task.name] = add(tfcredit_runner, fptt_task, 20)
    add(method_runner, fptt_task, 'tfcredit FPTT windows=10, alpha=0.01',
        lambda model, task, optimizer: FPTT(
            model=model, task=task, optimizer=optimizer, windows=10, alpha=0.01,
            clip_norm=fptt_task.clip_norm),
        flops_window=None)
    # The same comparison where both do the same arithmetic: a stream, where
    # every truncated-BPTT window has a loss and is backpropagated too, so the
    # ratio is the cost of FPTT's own work (regularizer, W̄ and λ updates).
    fptt_stream = dataclasses.replace(
        ptb_small(steps=20 * 10 * (2 if quick else 10), seed=seed),
        name='PTB small (random ids), FPTT')
    references[fptt_stream.name] = add(tfcredit_runner, fptt_stream, 20, 10)
    add(method_runner, fptt_stream,
        'tfcredit FPTT windows=10, window_length=20, alpha=0.01',
        lambda model, task, optimizer: FPTT(
            model=model, task=task, optimizer=optimizer, windows=10,
            window_length=20, alpha=0.01, clip_norm=fptt_stream.clip_norm),
        segment_length=200, flops_window=20)
  if FLAGS.dni_row:
    # DNI (Jaderberg et al. 2017; Shang & Zhang 2019) against truncated BPTT with
    # the same window and windows per call (the target: >= 0.75 layer-wise).
    from tfcredit import DNI, LayerwiseSynthesizer, NeuronwiseSynthesizer  # pylint: disable=g-import-not-at-top
    dni_model = dataclasses.replace(
        ptb_small(steps=20 * 10 * (2 if quick else 10), seed=seed),
        name='PTB small (random ids), DNI')
    references[dni_model.name] = add(tfcredit_runner, dni_model, 20, 10)
    for label, synthesizer in (('layer-wise (linear)', LayerwiseSynthesizer),
                               ('neuron-wise (GRU 50)', NeuronwiseSynthesizer)):
      add(method_runner, dni_model,
          f'tfcredit DNI {label} window=20, windows_per_call=10',
          lambda model, task, optimizer, synthesizer=synthesizer: DNI(
              model=model, task=task, optimizer=optimizer, window=20,
              windows_per_call=10, synthesizer=synthesizer(),
              clip_norm=dni_model.clip_norm, batch_size=dni_model.batch_size),
          segment_length=200, flops_window=20)
  if FLAGS.target_prop_row:
    # TargetProp: B = 10, 4 blocks per update stacked on the batch axis (one
    # unroll of 4 x 20 rows), 1 H-step, 1 theta-step. Two workloads on the same
    # stream, so each row gets its own reference: truncated BPTT with K = B (the
    # same window length) and with K = 4·B (the same tokens per update; the goal
    # is a ratio of at least 1 / 2.5 = 0.4 against it).
    from tfcredit.methods.target_prop import TargetProp  # pylint: disable=g-import-not-at-top
    tp_block, tp_blocks, tp_updates = 10, 4, 5
    tp_steps = tp_block * tp_blocks * tp_updates * (2 if quick else 10)
    tp_base = ptb_small(steps=tp_steps, seed=seed)
    for tp_window in (tp_block, tp_block * tp_blocks):
      tp_workload = dataclasses.replace(
          tp_base, name=f'PTB small (random ids), TargetProp vs K={tp_window}')
      references[tp_workload.name] = add(
          tfcredit_runner, tp_workload, tp_window,
          tp_block * tp_blocks * tp_updates // tp_window)
      add(method_runner, tp_workload,
          f'tfcredit TargetProp block_size={tp_block}, blocks_per_update='
          f'{tp_blocks}, h_steps=1, theta_steps=1, updates_per_call={tp_updates}',
          lambda model, task, optimizer, workload=tp_workload: TargetProp(
              model=model, task=task, optimizer=optimizer, block_size=tp_block,
              blocks_per_update=tp_blocks, h_steps=1, theta_steps=1,
              updates_per_call=tp_updates, clip_norm=workload.clip_norm),
          segment_length=tp_block * tp_blocks * tp_updates, flops_window=tp_block)
  for units in FLAGS.forward_mode_units:
    # RTRL (exact), UORO (rank one) and SnAp-1 (sparse) carry an influence
    # forward; truncated BPTT with the same window is the reference.
    from tfcredit.methods.rtrl import RTRL  # pylint: disable=g-import-not-at-top
    from tfcredit.methods.snap import SnAp1  # pylint: disable=g-import-not-at-top
    from tfcredit.methods.uoro import UORO  # pylint: disable=g-import-not-at-top
    forward = forward_mode_stream(
        units, steps=FORWARD_MODE_WINDOW * FORWARD_MODE_WINDOWS, seed=seed)
    references[forward.name] = add(tfcredit_runner, forward, FORWARD_MODE_WINDOW,
                                   FORWARD_MODE_WINDOWS)
    for method_class in (RTRL, UORO, SnAp1):
      add(forward_mode_runner, forward, method_class, FORWARD_MODE_WINDOW,
          FORWARD_MODE_WINDOWS)
  return runners, rooflines, references


def run(argv: List[str]) -> int:
  """Measures with the parsed flags; returns the exit code."""
  code = common.unexpected_arguments(argv)
  if code is not None:
    return code
  windows_per_call = FLAGS.windows_per_call
  if FLAGS.quick and not FLAGS['windows_per_call'].present:
    windows_per_call = QUICK_WINDOWS_PER_CALL
  try:
    windows_per_call = [validation.positive_int('--windows_per_call', count)
                        for count in windows_per_call]
    for units in FLAGS.forward_mode_units:
      validation.positive_int('--forward_mode_units', units)
    rounds = validation.positive_int(
        '--rounds', FLAGS.rounds if FLAGS.rounds is not None else
        (1 if FLAGS.quick else 3))
  except ConfigurationError as error:
    print(f'error: {error}', file=sys.stderr)
    return error.exit_code
  if FLAGS.replicas_row:
    distribution.split_cpu(REPLICAS)  # Before TensorFlow's first op.
  # TensorFlow counts traces per Python function, and every method's train_segment
  # wraps the same one, so five methods traced once each read as "retracing". The
  # real check is per method: train_segment_traces (the warning below the table).
  tf.get_logger().addFilter(
      lambda record: 'triggered tf.function retracing' not in record.getMessage())
  keras.utils.set_random_seed(FLAGS.seed)
  started = time.perf_counter()
  load_at_start = os.getloadavg()
  cpu = cpu_features()
  runners, rooflines, references = build_runners(
      FLAGS.quick, windows_per_call, FLAGS.seed, FLAGS.replicas_row,
      FLAGS.artbp_row, bf16_row=cpu['bf16_matmul'] or FLAGS.precision_rows)
  measure_rounds(runners, rounds)
  roofline = rooflines['float32']
  rows = summarize(runners, roofline, references)
  peak, peak_cpu = roofline_peak(roofline)
  peak_bf16 = (roofline_peak(rooflines['bfloat16'])[0] if 'bfloat16' in rooflines
               else None)
  machine = {'platform': platform.platform(), **cpu,
             'load_average_at_start': load_at_start,
             'load_average_at_end': os.getloadavg(),
             'tensorflow': tf.__version__, 'keras': keras.__version__}
  seconds = time.perf_counter() - started
  isa = ', '.join(cpu['isa_flags']) or 'none of ' + ', '.join(ISA_FLAGS)
  summary = (f'{rounds} round(s) in {seconds:.0f} s on {machine["cpu_count"]} CPUs '
             f'({cpu["cpu_model"]}; ISA flags: {isa}), '
             f'1-minute load average {load_at_start[0]:.1f} at the start and '
             f'{machine["load_average_at_end"][0]:.1f} at the end; TensorFlow '
             f'{tf.__version__}, Keras {keras.__version__}.')
  products = QUICK_ROOFLINE_PRODUCTS if FLAGS.quick else ROOFLINE_PRODUCTS
  summary += (f' Roofline: {roofline.config} float32, {products} chained products '
              f'per timing, best of {rounds} round(s): {peak:.1f} GFLOP/s '
              f'({peak_cpu:.1f} per CPU-second); every fraction of roofline is '
              'against it.')
  summary += f' bf16 flags: {", ".join(cpu["bf16_flags"]) or "none"}'
  if not cpu['bf16_matmul']:
    summary += (' (no bf16 matrix instructions: bfloat16 products are emulated'
                + (', no bfloat16 row).' if peak_bf16 is None else ')'))
  if peak_bf16 is not None:
    summary += (f'; bfloat16 roofline, same method, best of {rounds} round(s): '
                f'{peak_bf16:.1f} GFLOP/s (not used for the fractions).')
  retraced = [row['config'] for row in rows if (row['train_segment_traces'] or 1) > 1]
  if retraced:
    summary += (f' Warning: train_segment retraced while measuring {retraced}; '
                'their throughput includes tracing time.')
  summary += (' Ratios are to the workload\'s reference row (1.00): Keras fit with '
              'steps_per_execution=1')
  summary += (', or for the replicas rows the 1-replica one (both replicas share '
              'the same cores: the 2-replica ratio is the overhead of the '
              'distributed code path, not a speed-up)' if FLAGS.replicas_row
              else '')
  summary += (', or for the ARTBP rows truncated BPTT with window L0'
              if FLAGS.artbp_row else '')
  summary += (', or for the precision rows the same configuration in float32'
              if FLAGS.precision_rows else '')
  summary += (', or for the forward-mode rows (RTRL, UORO, SnAp-1) truncated BPTT '
              'with the same window; their FLOP counts are truncated BPTT\'s (the '
              'influence arithmetic is not counted).' if FLAGS.forward_mode_units
              else '.')
  report = f'{markdown_table(rows)}\n\n{summary}\n'
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, 'benchmark.json'), 'w') as f:
    json.dump({'rows': rows, 'rounds': rounds, 'quick': FLAGS.quick,
               'windows_per_call': windows_per_call,
               'replicas_row': FLAGS.replicas_row, 'roofline': roofline.config,
               'roofline_products_per_timing': products,
               'roofline_gflops_float32': peak,
               'roofline_gflops_float32_cpu_time': peak_cpu,
               'roofline_gflops_bfloat16': peak_bf16,
               'seconds': seconds, 'machine': machine}, f, indent=1)
  with open(os.path.join(FLAGS.output_dir, 'benchmark.md'), 'w') as f:
    f.write(report)
  print(report)
  print(f'wrote {os.path.join(FLAGS.output_dir, "benchmark.json")} and benchmark.md')
  return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The ``tfcredit-benchmark`` console script."""
  define_flags()
  common.run(run, argv)


if __name__ == '__main__':
  main()

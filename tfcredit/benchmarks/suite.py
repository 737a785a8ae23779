"""The benchmark's rows, built and warmed up: ``Options`` say which.

Every run has the roofline (chained 1024³ float32 products; bfloat16 too with
``Options.bf16_row``), two smaller matmuls, the PTB "small" shape (a Keras ``fit``
reference, truncated BPTT for each ``windows_per_call``) and the adding task (a
Keras ``fit`` reference, full and truncated BPTT). The row switches add groups of
rows, each with its own reference timed in the same rounds:

* ``keras_unroll_rows``: full BPTT through the Keras layers beside the default
  fused unroll. ``jit_compile_rows``: the PTB and adding rows with XLA forced on
  and forced off beside the default (``jit_compile='auto'``).
* ``sequence_task_rows``: the adding batches as a ``SequenceTask`` (the user's own
  arrays), of one length and padded from lengths 150-200.
* ``precision_rows``: mixed_bfloat16 and mixed_float16 against float32.
* ``replicas_row``: 2 replicas (``MirroredStrategy`` on ``REPLICAS`` logical CPU
  devices: ``harness.prepare`` splits the CPU) against 1, on the same cores: the
  overhead of the distributed code path.
* ``artbp_row``, ``fptt_row``, ``dni_row``, ``target_prop_row``: each method
  against truncated BPTT with the same windows.
* ``methods``: ``'NAME: gin bindings'`` rows on the PTB shape.
* ``forward_mode_units``: RTRL, UORO, SnAp-1 and KF-RTRL against truncated
  BPTT, per width.
* ``sparse_gru_units``: RTRL, SnAp-1 and SnAp-2 on a sparse GRU
  (``SPARSE_GRU_SPARSITY`` of its recurrent connections cut) against truncated
  BPTT, per width.
* ``elementwise_rtrl_units``: element-wise RTRL on a 1-layer LRU against truncated
  BPTT on the same model, per width, with inputs of ``ELEMENTWISE_INPUTS`` and
  of the width.

``build_runners`` returns the runners in table order with each workload's
reference; ``harness.measure`` times them.
"""

import dataclasses
import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfcredit import precision as precision_lib
from tfcredit.benchmarks import flops
from tfcredit.benchmarks import measure as measure_lib
from tfcredit.benchmarks import runners as runners_lib
from tfcredit.benchmarks.measure import Runner
from tfcredit.benchmarks.workloads import Workload
from tfcredit.benchmarks.workloads import adding
from tfcredit.benchmarks.workloads import forward_mode_stream
from tfcredit.benchmarks.workloads import lru_stream
from tfcredit.benchmarks.workloads import ptb_small
from tfcredit.methods.dni import DNI
from tfcredit.methods.elementwise_rtrl import ElementwiseRTRL
from tfcredit.methods.fptt import FPTT
from tfcredit.methods.kf_rtrl import KFRTRL
from tfcredit.methods.rtrl import RTRL
from tfcredit.methods.snap import SnAp1
from tfcredit.methods.snap import SnAp2
from tfcredit.methods.target_prop import TargetProp
from tfcredit.methods.truncated_bptt import TruncatedBPTT
from tfcredit.methods.uoro import UORO
from tfcredit.models import LayerwiseSynthesizer
from tfcredit.models import NeuronwiseSynthesizer
from tfcredit.tasks import base as task_base
from tfcredit.tasks.sequences import SequenceTask

QUICK_WINDOWS_PER_CALL = (1, 2)  # A quick run's default windows_per_call.
# The forward-mode rows: RTRL, UORO, SnAp-1 and KF-RTRL against truncated BPTT
# with the same window on a small symbol stream; a round is FORWARD_MODE_WINDOWS
# windows of FORWARD_MODE_WINDOW steps (one call).
FORWARD_MODE_WINDOW, FORWARD_MODE_WINDOWS = 10, 2
SPARSE_GRU_SPARSITY = 0.75  # The sparse-GRU rows' share of connections cut.
# The element-wise RTRL rows: the same stream and windows through an LRU, its
# symbols embedded in ELEMENTWISE_INPUTS and in the LRU's width.
ELEMENTWISE_INPUTS = 32
REPLICAS = 2  # Logical CPU devices, and replicas of the replicas row.
REPLICAS_WINDOWS_PER_CALL = 10  # The replicas row's TruncatedBPTT configuration.
ARTBP_MEAN_LENGTH, ARTBP_ALPHA = 20, 4.0  # The ARTBP row: L0 = the PTB window.
ARTBP_WINDOWS_PER_CALL = 10


@dataclasses.dataclass(frozen=True)
class Options:
  """Which rows a benchmark run has (``tfcredit-benchmark``'s flags of the same
  names, whose help says more).

  Attributes:
    quick: short rounds, fewer chained products per roofline timing, no
      ``steps_per_execution`` row.
    windows_per_call: the language-model rows' ``windows_per_call``, one row each.
    seed: seeds the synthetic data (``harness.prepare``: and Keras).
    replicas_row: also the 1- and 2-replica rows.
    artbp_row: also the ARTBP row and its reference.
    fptt_row: also the FPTT rows (adding task and PTB shape) and references.
    dni_row: also the DNI rows (layer- and neuron-wise) and their reference.
    target_prop_row: also the TargetProp rows and their references.
    keras_unroll_rows: also full BPTT through the Keras layers.
    jit_compile_rows: also the PTB and adding rows with XLA forced on and off.
    precision_rows: also mixed_bfloat16 and mixed_float16 against float32.
    sequence_task_rows: also the adding batches as a ``SequenceTask``.
    methods: ``'NAME: gin bindings'`` rows on the PTB shape.
    forward_mode_units: RTRL, UORO, SnAp-1 and KF-RTRL rows on an LSTM of each
      width.
    sparse_gru_units: RTRL, SnAp-1 and SnAp-2 rows on a sparse GRU of each
      width.
    elementwise_rtrl_units: element-wise RTRL rows on an LRU of each width.
    bf16_row: also the bfloat16 1024³ matmul row; None: ``harness.measure``
      times it if the CPU has bf16 matrix instructions or ``precision_rows`` is
      on.
  """
  quick: bool = False
  windows_per_call: Sequence[int] = (10, 50)
  seed: int = 0
  replicas_row: bool = True
  artbp_row: bool = True
  fptt_row: bool = True
  dni_row: bool = True
  target_prop_row: bool = True
  keras_unroll_rows: bool = True
  jit_compile_rows: bool = True
  precision_rows: bool = True
  sequence_task_rows: bool = True
  methods: Sequence[str] = ()
  forward_mode_units: Sequence[int] = ()
  sparse_gru_units: Sequence[int] = ()
  elementwise_rtrl_units: Sequence[int] = ()
  bf16_row: Optional[bool] = None


class _Rows:
  """The runners built so far (in table order) and each workload's reference."""

  def __init__(self, log: Callable[[str], None]):
    self.runners: List[Runner] = []
    self.references: Dict[str, Runner] = {}
    self._log = log

  def add(self, build: Callable[..., Runner], *args, **kwargs) -> Runner:
    """Builds and warms up a runner (``build(*args, **kwargs)``), saying how long
    it took."""
    start = time.perf_counter()
    runner = build(*args, **kwargs)
    self.runners.append(runner)
    self._log(f'  warmed up {runner.workload}: {runner.config} '
              f'({time.perf_counter() - start:.1f} s)')
    return runner

  def reference(self, build: Callable[..., Runner], *args, **kwargs) -> Runner:
    """``add``, and the runner becomes its workload's reference."""
    runner = self.add(build, *args, **kwargs)
    self.references[runner.workload] = runner
    return runner


def _matmul_rows(rows: _Rows, options: Options) -> Dict[str, Runner]:
  """The roofline (float32, and bfloat16 with ``bf16_row``) and two matmuls of
  the workloads' sizes; returns the rooflines by dtype name."""
  target_flops = 2e9 if options.quick else 1e10
  rooflines = {'float32': rows.add(runners_lib.matmul_runner, flops.SQUARE_MATMUL,
                                   flops.roofline_flops(options.quick))}
  if options.bf16_row:
    rooflines['bfloat16'] = rows.add(
        runners_lib.matmul_runner, flops.SQUARE_MATMUL,
        flops.roofline_flops(options.quick), dtype=tf.bfloat16)
  rows.add(runners_lib.matmul_runner, (20, 400, 800), target_flops / 4)
  rows.add(runners_lib.matmul_runner, (128, 130, 512), target_flops / 4)
  return rooflines


def _language_model_rows(rows: _Rows, options: Options,
                         language_model: Workload) -> None:
  """Keras ``fit`` (the reference), truncated BPTT for each ``windows_per_call``,
  the ``methods`` rows, and the Keras-unroll and XLA rows."""
  largest = max(options.windows_per_call)
  rows.reference(runners_lib.keras_fit_runner, language_model, 20)
  if not options.quick:
    rows.add(runners_lib.keras_fit_runner, language_model, 20,
             steps_per_execution=largest)
  for count in options.windows_per_call:
    rows.add(runners_lib.tfcredit_runner, language_model, 20, count)
  for text in options.methods:
    rows.add(runners_lib.configured_runner, language_model, text)
  if options.keras_unroll_rows:
    rows.add(runners_lib.tfcredit_runner, language_model, 20, largest,
             unroll_implementation='keras')
  if options.jit_compile_rows:
    for forced in (True, False):
      rows.add(runners_lib.tfcredit_runner, language_model, 20, largest,
               jit_compile=forced)


def _adding_rows(rows: _Rows, options: Options, adding_task: Workload) -> None:
  """Keras ``fit`` (the reference), full BPTT (also through the Keras layers and
  under XLA when asked), truncated BPTT with window 20."""
  rows.reference(runners_lib.keras_fit_runner, adding_task, 200)
  rows.add(runners_lib.tfcredit_runner, adding_task, 200)
  if options.keras_unroll_rows:
    rows.add(runners_lib.tfcredit_runner, adding_task, 200,
             unroll_implementation='keras')
  if options.jit_compile_rows:
    for forced in (True, False):
      rows.add(runners_lib.tfcredit_runner, adding_task, 200, jit_compile=forced)
  rows.add(runners_lib.tfcredit_runner, adding_task, 20)


def _sequence_task_rows(rows: _Rows, adding_task: Workload) -> None:
  """The adding batches as ``SequenceTask`` arrays, unpadded and padded (each
  row cut at a length drawn from 150-200, NaN after it), beside the built-in
  task under the same workload name (the rows' reference): what the user's
  own data and its masks cost."""
  name = f'{adding_task.name}, own arrays'
  rows.reference(runners_lib.tfcredit_runner,
                 dataclasses.replace(adding_task, name=name), 200)
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
    rows.add(runners_lib.method_runner, workload,
             f'tfcredit TruncatedBPTT window=200, {label}',
             lambda model, task, optimizer: TruncatedBPTT(
                 model=model, task=task, optimizer=optimizer, window=200),
             flops_window=200)


def _precision_rows(rows: _Rows, language_model: Workload, adding_task: Workload,
                    largest: int) -> None:
  """Truncated BPTT on the PTB shape (``largest`` windows per call) and on the
  adding task under mixed_bfloat16 and mixed_float16, against float32."""
  for workload, window, count in ((language_model, 20, largest),
                                  (adding_task, 200, 1)):
    reference = dataclasses.replace(workload, name=f'{workload.name}, precision')
    rows.reference(runners_lib.tfcredit_runner, reference, window, count)
    for policy in (precision_lib.MIXED_BFLOAT16, precision_lib.MIXED_FLOAT16):
      rows.add(runners_lib.tfcredit_runner, reference, window, count,
               precision=policy)


def _replicas_rows(rows: _Rows, options: Options) -> None:
  """The PTB shape on 2 replicas against 1 (same global batch, same cores)."""
  # Whole calls of REPLICAS_WINDOWS_PER_CALL windows: 20,000 tokens a round, as
  # the language-model rows with the default windows_per_call (4,000 quick).
  replicas_model = dataclasses.replace(
      ptb_small(steps=20 * REPLICAS_WINDOWS_PER_CALL * (1 if options.quick else 5),
                seed=options.seed),
      name='PTB small (random ids), replicas')
  devices = [device.name for device in tf.config.list_logical_devices('CPU')]
  rows.reference(runners_lib.tfcredit_runner, replicas_model, 20,
                 REPLICAS_WINDOWS_PER_CALL, strategy=tf.distribute.get_strategy())
  rows.add(runners_lib.tfcredit_runner, replicas_model, 20,
           REPLICAS_WINDOWS_PER_CALL,
           strategy=tf.distribute.MirroredStrategy(devices[:REPLICAS]))


def _artbp_rows(rows: _Rows, options: Options) -> None:
  """ARTBP against truncated BPTT with window L0 and the same windows per call."""
  artbp_model = dataclasses.replace(
      ptb_small(steps=ARTBP_MEAN_LENGTH * ARTBP_WINDOWS_PER_CALL *
                (2 if options.quick else 10), seed=options.seed),
      name='PTB small (random ids), ARTBP')
  rows.reference(runners_lib.tfcredit_runner, artbp_model, ARTBP_MEAN_LENGTH,
                 ARTBP_WINDOWS_PER_CALL)
  rows.add(runners_lib.artbp_runner, artbp_model, ARTBP_MEAN_LENGTH, ARTBP_ALPHA,
           ARTBP_WINDOWS_PER_CALL)


def _fptt_rows(rows: _Rows, options: Options, adding_task: Workload) -> None:
  """FPTT (Kag & Saligrama 2021) against truncated BPTT with the same windows,
  on the adding task and on the PTB shape."""
  # The adding task, T = 200, K = 10 windows of 20 steps (the target: a ratio of
  # at least 0.8). FPTT backpropagates every window (each one's last state
  # predicts the target); truncated BPTT only the last window, the only one with
  # a loss, and runs the others forward.
  fptt_task = dataclasses.replace(adding_task, name='adding T=200, FPTT')
  rows.reference(runners_lib.tfcredit_runner, fptt_task, 20)
  rows.add(runners_lib.method_runner, fptt_task,
           'tfcredit FPTT windows=10, alpha=0.01',
           lambda model, task, optimizer: FPTT(
               model=model, task=task, optimizer=optimizer, windows=10,
               alpha=0.01, clip_norm=fptt_task.clip_norm),
           flops_window=None)
  # The same comparison where both do the same arithmetic: a stream, where every
  # truncated-BPTT window has a loss and is backpropagated too, so the ratio is
  # the cost of FPTT's own work (regularizer, W̄ and λ updates).
  fptt_stream = dataclasses.replace(
      ptb_small(steps=20 * 10 * (2 if options.quick else 10), seed=options.seed),
      name='PTB small (random ids), FPTT')
  rows.reference(runners_lib.tfcredit_runner, fptt_stream, 20, 10)
  rows.add(runners_lib.method_runner, fptt_stream,
           'tfcredit FPTT windows=10, window_length=20, alpha=0.01',
           lambda model, task, optimizer: FPTT(
               model=model, task=task, optimizer=optimizer, windows=10,
               window_length=20, alpha=0.01, clip_norm=fptt_stream.clip_norm),
           segment_length=200, flops_window=20)


def _dni_rows(rows: _Rows, options: Options) -> None:
  """DNI (Jaderberg et al. 2017; Shang & Zhang 2019), layer- and neuron-wise,
  against truncated BPTT with the same window and windows per call (the target:
  a ratio of at least 0.75 layer-wise)."""
  dni_model = dataclasses.replace(
      ptb_small(steps=20 * 10 * (2 if options.quick else 10), seed=options.seed),
      name='PTB small (random ids), DNI')
  rows.reference(runners_lib.tfcredit_runner, dni_model, 20, 10)
  for label, synthesizer in (('layer-wise (linear)', LayerwiseSynthesizer),
                             ('neuron-wise (GRU 50)', NeuronwiseSynthesizer)):
    rows.add(runners_lib.method_runner, dni_model,
             f'tfcredit DNI {label} window=20, windows_per_call=10',
             lambda model, task, optimizer, synthesizer=synthesizer: DNI(
                 model=model, task=task, optimizer=optimizer, window=20,
                 windows_per_call=10, synthesizer=synthesizer(),
                 clip_norm=dni_model.clip_norm, batch_size=dni_model.batch_size),
             segment_length=200, flops_window=20)


def _target_prop_rows(rows: _Rows, options: Options) -> None:
  """TargetProp against truncated BPTT with K = B and with K = 4·B."""
  # B = 10, 4 blocks per update stacked on the batch axis (one unroll of 4 x 20
  # rows), 1 H-step, 1 theta-step. Two workloads on the same stream, so each row
  # gets its own reference: truncated BPTT with K = B (the same window length)
  # and with K = 4·B (the same tokens per update; the goal is a ratio of at least
  # 1 / 2.5 = 0.4 against it).
  tp_block, tp_blocks, tp_updates = 10, 4, 5
  tp_steps = tp_block * tp_blocks * tp_updates * (2 if options.quick else 10)
  tp_base = ptb_small(steps=tp_steps, seed=options.seed)
  for tp_window in (tp_block, tp_block * tp_blocks):
    tp_workload = dataclasses.replace(
        tp_base, name=f'PTB small (random ids), TargetProp vs K={tp_window}')
    rows.reference(runners_lib.tfcredit_runner, tp_workload, tp_window,
                   tp_block * tp_blocks * tp_updates // tp_window)
    rows.add(runners_lib.method_runner, tp_workload,
             f'tfcredit TargetProp block_size={tp_block}, blocks_per_update='
             f'{tp_blocks}, h_steps=1, theta_steps=1, updates_per_call='
             f'{tp_updates}',
             lambda model, task, optimizer, workload=tp_workload: TargetProp(
                 model=model, task=task, optimizer=optimizer,
                 block_size=tp_block, blocks_per_update=tp_blocks, h_steps=1,
                 theta_steps=1, updates_per_call=tp_updates,
                 clip_norm=workload.clip_norm),
             segment_length=tp_block * tp_blocks * tp_updates,
             flops_window=tp_block)


def _forward_mode_rows(rows: _Rows, options: Options) -> None:
  """RTRL (exact), UORO (rank one), SnAp-1 (sparse) and KF-RTRL (Kronecker
  factors), which carry an influence forward, against truncated BPTT with the
  same window, per LSTM width; RTRL, SnAp-1 and SnAp-2 per sparse GRU width."""
  groups = ([(units, None, (RTRL, UORO, SnAp1, KFRTRL))
             for units in options.forward_mode_units]
            + [(units, SPARSE_GRU_SPARSITY, (RTRL, SnAp1, SnAp2))
               for units in options.sparse_gru_units])
  for units, sparsity, classes in groups:
    forward = forward_mode_stream(
        units, steps=FORWARD_MODE_WINDOW * FORWARD_MODE_WINDOWS,
        seed=options.seed, sparsity=sparsity)
    rows.reference(runners_lib.tfcredit_runner, forward, FORWARD_MODE_WINDOW,
                   FORWARD_MODE_WINDOWS)
    for method_class in classes:
      rows.add(runners_lib.forward_mode_runner, forward, method_class,
               FORWARD_MODE_WINDOW, FORWARD_MODE_WINDOWS)


def _elementwise_rtrl_rows(rows: _Rows, options: Options) -> None:
  """Element-wise RTRL against truncated BPTT with the same window on the same
  1-layer LRU, per width, its symbols embedded in ``ELEMENTWISE_INPUTS`` and in
  the width (the influence: ``rows × 2 × (2·inputs + 3) × units`` floats). The
  embedding is not per unit: ``approximate=True`` gives it one step's gradient
  (the LRU's own weights are exact); the cost is a model fed real inputs of
  that width."""
  for units in options.elementwise_rtrl_units:
    for inputs in sorted({ELEMENTWISE_INPUTS, units}):
      workload = lru_stream(
          units, inputs, steps=FORWARD_MODE_WINDOW * FORWARD_MODE_WINDOWS,
          seed=options.seed)
      rows.reference(runners_lib.tfcredit_runner, workload, FORWARD_MODE_WINDOW,
                     FORWARD_MODE_WINDOWS)
      rows.add(runners_lib.forward_mode_runner, workload, ElementwiseRTRL,
               FORWARD_MODE_WINDOW, FORWARD_MODE_WINDOWS, approximate=True)


def build_runners(options: Options,
                  log: Callable[[str], None] = measure_lib.print_flushed
                  ) -> Tuple[List[Runner], Dict[str, Runner], Dict[str, Runner]]:
  """Builds and warms up every configuration ``options`` asks for.

  With ``replicas_row``, ``harness.prepare`` must have split the CPU (or the
  2-replica row runs on fewer devices). ``log`` gets a line per runner warmed up.

  Returns:
    ``(runners, rooflines, {workload name: its reference})``: ``runners`` in table
    order; ``rooflines`` maps ``'float32'`` (and with ``bf16_row``
    ``'bfloat16'``) to its 1024³ matmul runner; a workload's reference is its
    Keras ``fit``, or for the other groups the row they are measured against (the
    1-replica row, truncated BPTT, float32).
  """
  largest = max(options.windows_per_call)
  # Every configuration makes whole calls over the same stream.
  language_model = ptb_small(
      steps=20 * math.lcm(*options.windows_per_call), seed=options.seed)
  adding_task = adding(length=200, batches=1 if options.quick else 4,
                       seed=options.seed)
  rows = _Rows(log)
  rooflines = _matmul_rows(rows, options)
  _language_model_rows(rows, options, language_model)
  _adding_rows(rows, options, adding_task)
  if options.sequence_task_rows:
    _sequence_task_rows(rows, adding_task)
  if options.precision_rows:
    _precision_rows(rows, language_model, adding_task, largest)
  if options.replicas_row:
    _replicas_rows(rows, options)
  if options.artbp_row:
    _artbp_rows(rows, options)
  if options.fptt_row:
    _fptt_rows(rows, options, adding_task)
  if options.dni_row:
    _dni_rows(rows, options)
  if options.target_prop_row:
    _target_prop_rows(rows, options)
  _forward_mode_rows(rows, options)
  _elementwise_rtrl_rows(rows, options)
  return rows.runners, rooflines, rows.references

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

Forward mode (``--forward_mode_units``, off by default): ``RTRL``, ``UORO``,
``SnAp1`` and ``KFRTRL`` against truncated BPTT with the same window, on a
1-layer LSTM of each given width (4 columns of 32 random symbols); each row
names the floats its influence carries. ``--sparse_gru_units``: ``RTRL``,
``SnAp1`` and ``SnAp2`` the same way on a 1-layer ``SparseGRUCell`` of each
width with 75% of its recurrent connections cut.

Element-wise RTRL (``--elementwise_rtrl_units``, off by default):
``ElementwiseRTRL`` against truncated BPTT with the same window on the same
1-layer LRU of each given width, its symbols embedded in 32 and in the width;
each row names the floats its influence carries.

Scaling (``--scaling``): instead of the rows above, every method's time per step,
peak memory and own state as the sequence length T grows (and, for RTRL, UORO and
SnAp-1, as the width grows), each point in a fresh process
(``tfcredit.benchmarks.scaling``); writes ``scaling.json``, ``scaling.md`` (the
log-log slopes beside theory) and ``scaling.png`` (with matplotlib).

Writes ``benchmark.json`` and ``benchmark.md`` into ``--output_dir`` and prints the
markdown table. The measuring code is the library package ``tfcredit.benchmarks``
(``suite`` lists the rows, ``harness`` measures them); this command turns its flags
into ``suite.Options`` and writes the files.
"""

import json
import os
import sys
from typing import List, Optional, Sequence

from absl import flags

from tfcredit import validation
from tfcredit.benchmarks import harness
from tfcredit.benchmarks import scaling
from tfcredit.benchmarks import scaling_report
from tfcredit.benchmarks import suite
from tfcredit.benchmarks.suite import ARTBP_ALPHA
from tfcredit.benchmarks.suite import ARTBP_MEAN_LENGTH
from tfcredit.benchmarks.suite import FORWARD_MODE_WINDOW
from tfcredit.benchmarks.suite import REPLICAS
from tfcredit.benchmarks.suite import REPLICAS_WINDOWS_PER_CALL
from tfcredit.benchmarks.workloads import FORWARD_MODE_BATCH
from tfcredit.benchmarks.workloads import FORWARD_MODE_VOCABULARY
from tfcredit.cli import common
from tfcredit.errors import ConfigurationError

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
         'TruncatedBPTT.jit_compile forced to True and to False, beside the '
         "default 'auto' (XLA where it pays: tfcredit.methods.jit; the warm-up "
         'includes the compilation).')
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
         'UORO, SnAp-1 and KF-RTRL against truncated BPTT (window '
         f'{FORWARD_MODE_WINDOW}) on a 1-layer LSTM of each of these widths, '
         f'{FORWARD_MODE_BATCH} columns of {FORWARD_MODE_VOCABULARY} random '
         'symbols; each row names the floats its influence carries. RTRL costs '
         'O(state^2 x weights) per step: at 128 units a round takes minutes.')
  define(flags.DEFINE_multi_integer, 'sparse_gru_units', [], 'Also time RTRL, '
         'SnAp-1 and SnAp-2 against truncated BPTT the same way on a 1-layer '
         'sparse GRU (SparseGRUCell, '
         f'{suite.SPARSE_GRU_SPARSITY:.0%} of its recurrent connections cut) of '
         'each of these widths.')
  define(flags.DEFINE_multi_integer, 'elementwise_rtrl_units', [], 'Also time '
         'ElementwiseRTRL against truncated BPTT (window '
         f'{FORWARD_MODE_WINDOW}) on the same 1-layer LRU of each of these '
         f'widths, {FORWARD_MODE_BATCH} columns of {FORWARD_MODE_VOCABULARY} '
         f'random symbols embedded in {suite.ELEMENTWISE_INPUTS} and in the '
         'width (approximate=True: the embedding gets one step\'s gradient); '
         'each row names the floats its influence carries.')
  define(flags.DEFINE_integer, 'rounds', None, 'Interleaved measurement rounds; '
         'default 3 (1 with --quick).')
  define(flags.DEFINE_integer, 'seed', 0, 'Seeds the weights and the synthetic '
         'data.')
  define_scaling_flags()


def define_scaling_flags() -> None:
  """The flags of the scaling sweep (``--scaling``)."""
  define = common.define_flag
  define(flags.DEFINE_bool, 'scaling', False, 'Instead of the throughput rows, '
         'sweep the sequence length T (and the forward-mode methods\' width): '
         'time per step, peak memory and own state of every method, each point '
         'in a fresh process; writes scaling.json, scaling.md and scaling.png. '
         'With --quick: T 50-400, width 16, batch 8, 1 timed call per point '
         '(about 15 minutes on 2 busy cores).')
  define(flags.DEFINE_float, 'scaling_time_cap', scaling.TIME_CAP, 'Seconds per '
         'training call: a method\'s sweep stops at the first point over it.')
  define(flags.DEFINE_float, 'scaling_memory_cap', scaling.MEMORY_CAP, 'MB of '
         'peak memory: a method\'s sweep stops at the first point over it.')
  define(flags.DEFINE_multi_string, 'scaling_method', [], 'Methods of the '
         'scaling sweep (keys of tfcredit.methods.METHODS); default all.')
  define(flags.DEFINE_multi_integer, 'scaling_length', [], 'Sequence lengths T '
         f'of the scaling sweep; default {list(scaling.LENGTHS)} (quick '
         f'{list(scaling.QUICK_LENGTHS)}).')
  define(flags.DEFINE_multi_integer, 'scaling_width', [], 'LSTM widths of the '
         f'T sweep; default {list(scaling.WIDTHS)} (quick '
         f'{list(scaling.QUICK_WIDTHS)}).')
  define(flags.DEFINE_multi_integer, 'scaling_forward_width', [], 'Widths of '
         f'the RTRL/UORO/SnAp-1 sweep; default {list(scaling.FORWARD_WIDTHS)} '
         f'(quick {list(scaling.QUICK_FORWARD_WIDTHS)}).')
  define(flags.DEFINE_integer, 'scaling_batch', None, 'Sequences per call in the '
         f'scaling sweep; default {scaling.BATCH} (quick {scaling.QUICK_BATCH}).')


def options_from_flags(windows_per_call: Sequence[int]) -> suite.Options:
  """The rows the flags ask for (``windows_per_call``: checked, quick default
  applied)."""
  return suite.Options(
      quick=FLAGS.quick, windows_per_call=list(windows_per_call), seed=FLAGS.seed,
      replicas_row=FLAGS.replicas_row, artbp_row=FLAGS.artbp_row,
      fptt_row=FLAGS.fptt_row, dni_row=FLAGS.dni_row,
      target_prop_row=FLAGS.target_prop_row,
      keras_unroll_rows=FLAGS.keras_unroll_rows,
      jit_compile_rows=FLAGS.jit_compile_rows,
      precision_rows=FLAGS.precision_rows,
      sequence_task_rows=FLAGS.sequence_task_rows, methods=list(FLAGS.method),
      forward_mode_units=list(FLAGS.forward_mode_units),
      sparse_gru_units=list(FLAGS.sparse_gru_units),
      elementwise_rtrl_units=list(FLAGS.elementwise_rtrl_units))


def scaling_options() -> scaling.ScalingOptions:
  """The sweep the flags ask for.

  Raises:
    ConfigurationError: a cap is not a positive number, or a method unknown.
  """
  hint = ': give a positive number, e.g. '
  time_cap = validation.finite_number('--scaling_time_cap', FLAGS.scaling_time_cap,
                                      0.0, hint=f'{hint}{scaling.TIME_CAP:g}')
  memory_cap = validation.finite_number(
      '--scaling_memory_cap', FLAGS.scaling_memory_cap, 0.0,
      hint=f'{hint}{scaling.MEMORY_CAP:g}')
  known = scaling.all_methods()
  for name in FLAGS.scaling_method:
    validation.one_of('--scaling_method', name, known,
                      hint=': name one of them, e.g. --scaling_method=rtrl')
  counts = {}
  for name in ('scaling_length', 'scaling_width', 'scaling_forward_width'):
    counts[name] = tuple(validation.positive_int(f'--{name}', value)
                         for value in FLAGS[name].value) or None
  for length in counts['scaling_length'] or ():
    if length < scaling.MIN_LENGTH:
      raise ConfigurationError(
          f'--scaling_length={length} is too short for the copy task: give at '
          f'least {scaling.MIN_LENGTH}, e.g. --scaling_length=100')
  batch = FLAGS.scaling_batch
  if batch is not None:
    batch = validation.positive_int('--scaling_batch', batch)
  return scaling.ScalingOptions(
      quick=FLAGS.quick, methods=tuple(FLAGS.scaling_method), time_cap=time_cap,
      memory_cap=memory_cap, seed=FLAGS.seed, lengths=counts['scaling_length'],
      widths=counts['scaling_width'], batch=batch,
      forward_widths=counts['scaling_forward_width'])


def write_scaling(options: scaling.ScalingOptions, output_dir: str) -> None:
  """Runs the sweep, writes its files (``scaling_report.write``) and prints the
  slope table."""
  record = scaling.sweep(options, log=lambda line: print(line, flush=True))
  text, figure = scaling_report.write(record, output_dir)
  print(text)
  print(f'wrote scaling.json, scaling.md and {figure} in {output_dir}')


def run(argv: List[str]) -> int:
  """Measures with the parsed flags; returns the exit code."""
  code = common.unexpected_arguments(argv)
  if code is not None:
    return code
  if FLAGS.scaling:
    try:
      options = scaling_options()
    except ConfigurationError as error:
      print(f'error: {error}', file=sys.stderr)
      return error.exit_code
    write_scaling(options, FLAGS.output_dir)
    return 0
  windows_per_call = FLAGS.windows_per_call
  if FLAGS.quick and not FLAGS['windows_per_call'].present:
    windows_per_call = list(suite.QUICK_WINDOWS_PER_CALL)
  try:
    windows_per_call = [validation.positive_int('--windows_per_call', count)
                        for count in windows_per_call]
    for name in ('forward_mode_units', 'sparse_gru_units',
                 'elementwise_rtrl_units'):
      for units in FLAGS[name].value:
        validation.positive_int(f'--{name}', units)
    rounds = validation.positive_int(
        '--rounds', FLAGS.rounds if FLAGS.rounds is not None else
        (1 if FLAGS.quick else 3))
  except ConfigurationError as error:
    print(f'error: {error}', file=sys.stderr)
    return error.exit_code
  options = options_from_flags(windows_per_call)
  harness.prepare(options)
  measurement = harness.measure(options, rounds)
  report = harness.markdown(measurement, options)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, 'benchmark.json'), 'w') as f:
    json.dump(harness.record(measurement, options), f, indent=1)
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

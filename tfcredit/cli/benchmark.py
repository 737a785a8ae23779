"""``tfcredit-benchmark``: training throughput as ratios to references timed in
the same run, or (``--scaling``) each method's cost as the sequence grows.

``tfcredit-benchmark [--quick] [--output_dir=runs/benchmark]``

The workloads, the references (Keras ``fit``, the matmul roofline), the FLOP
model, the rows and how to read them: docs/benchmark.md. The measuring code is
the library package ``tfcredit.benchmarks`` (``suite`` lists the rows,
``harness`` measures them, ``scaling`` sweeps); this command turns its flags
into options, prints and writes ``benchmark.json`` and ``benchmark.md`` (or the
scaling files, ``cli/_scaling.py``) into ``--output_dir``.
"""

import json
import os
import sys
from typing import List, Optional, Sequence

from absl import flags

from tfcredit import validation
from tfcredit.benchmarks import harness
from tfcredit.benchmarks import suite
from tfcredit.benchmarks.suite import ARTBP_ALPHA
from tfcredit.benchmarks.suite import ARTBP_MEAN_LENGTH
from tfcredit.benchmarks.suite import FORWARD_MODE_WINDOW
from tfcredit.benchmarks.suite import REPLICAS
from tfcredit.benchmarks.suite import REPLICAS_WINDOWS_PER_CALL
from tfcredit.benchmarks.workloads import FORWARD_MODE_BATCH
from tfcredit.benchmarks.workloads import FORWARD_MODE_VOCABULARY
from tfcredit.cli import _scaling
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
  _scaling.define_flags()


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


def run(argv: List[str]) -> int:
  """Measures with the parsed flags; returns the exit code."""
  code = common.unexpected_arguments(argv)
  if code is not None:
    return code
  if FLAGS.scaling:
    try:
      options = _scaling.options()
    except ConfigurationError as error:
      print(f'error: {error}', file=sys.stderr)
      return error.exit_code
    _scaling.write(options, FLAGS.output_dir)
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

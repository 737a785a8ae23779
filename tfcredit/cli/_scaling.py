"""``tfcredit-benchmark --scaling``: the sweep's flags, their checks and its
files (``tfcredit.benchmarks.scaling`` measures; docs/benchmark.md#cost-as-the-horizon-grows).
Not a command of its own: ``_startup`` skips modules named with ``_``."""

from absl import flags

from tfcredit import validation
from tfcredit.benchmarks import scaling
from tfcredit.benchmarks import scaling_report
from tfcredit.cli import common
from tfcredit.errors import ConfigurationError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of the scaling sweep (``--scaling``)."""
  define = common.define_flag
  define(flags.DEFINE_bool, 'scaling', False, 'Instead of the throughput rows, '
         'sweep the sequence length T (and the forward-mode methods\' width): '
         'time per step, peak memory and own state of every method, each point '
         'in a fresh process; writes scaling.json, scaling.md and scaling.png. '
         'With --quick: T 50-400, width 16, batch 8, 1 timed call per point '
         '(docs/benchmark.md#cost-as-the-horizon-grows gives its duration).')
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


def options() -> scaling.ScalingOptions:
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


def write(options: scaling.ScalingOptions, output_dir: str) -> None:
  """Runs the sweep, writes its files (``scaling_report.write``) and prints the
  slope table."""
  record = scaling.sweep(options, log=lambda line: print(line, flush=True))
  text, figure = scaling_report.write(record, output_dir)
  print(text)
  print(f'wrote scaling.json, scaling.md and {figure} in {output_dir}')

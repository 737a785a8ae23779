"""What does a network's state hold of the past, and do its dynamics forget?

``tfcredit-dynamics --gin_file=testing/tiny.gin --run=fresh --run=RUN_DIR``

For the task and model of ``--gin_file``, at fresh weights or each ``--run``
(a run directory, optionally ``'LABEL: path'``; ``fresh``: the config's fresh
weights), on the validation split:
the memory curve (held-out ``R²`` of a linear decoder of the input ``k`` steps back
from the whole state, ``k = 1 … --max_lag``), the memory capacity (their sum),
and the growth of a small perturbation of the state (a finite-time Lyapunov
exponent ``λ``: negative when the dynamics forget where they started, positive
when chaotic). ``tfcredit.dynamics`` defines them. Writes ``dynamics.json`` and
``dynamics.md`` and (with matplotlib) ``dynamics.png`` into ``--output_dir``
and prints the table. Exit codes: 0
success, 2 bad configuration, 1 data failure.
"""

from typing import List, Optional, Sequence

from absl import flags

from tfcredit.cli import common
from tfcredit import tables

FLAGS = flags.FLAGS


def define_flags() -> None:
  define = common.define_flag
  common.define_gin_flags()
  define(flags.DEFINE_multi_string, 'run', None, 'Run directories (or '
         "checkpoint paths) to probe (repeatable), each optionally 'LABEL: "
         "path'; 'fresh': the config's fresh weights; default: fresh weights "
         'only.')
  define(flags.DEFINE_integer, 'sequences', 32, 'Rows (stream columns or '
         'sequences); half fit the decoders, half score them.')
  define(flags.DEFINE_integer, 'length', 2000, 'Steps per stream column '
         "(episodic tasks: the task's own length).")
  define(flags.DEFINE_integer, 'max_lag', 20, 'Decode the inputs 1 … max_lag '
         'steps back.')
  define(flags.DEFINE_integer, 'burn_in', 100, 'Steps before the first decoded '
         'step and before the perturbation (≥ --max_lag).')
  define(flags.DEFINE_float, 'epsilon', 1e-3, "The perturbation's norm (in the "
         'linear range, above float32 rounding).')
  define(flags.DEFINE_string, 'data_dir', None, 'Data directory, for tasks that '
         'read data.')
  define(flags.DEFINE_integer, 'seed', 0, "Seeds fresh weights and the "
         "perturbation's direction.")
  define(flags.DEFINE_string, 'output_dir', 'runs/dynamics', 'Where to write.')


def run(argv: List[str]) -> int:
  """Probes with the parsed flags; returns the exit code."""
  code = common.unexpected_arguments(argv)
  if code is not None:
    return code
  from tfcredit import dynamics  # pylint: disable=g-import-not-at-top
  from tfcredit import errors  # pylint: disable=g-import-not-at-top

  # A TfcreditError reaches common.run, which prints its one line and exit code.
  if not FLAGS.gin_file:
    raise errors.ConfigurationError(
        '--gin_file is required: e.g. --gin_file=testing/tiny.gin')
  results = dynamics.measure(
      FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.run or [],
      sequences=FLAGS.sequences, length=FLAGS.length, data_dir=FLAGS.data_dir,
      seed=FLAGS.seed, max_lag=FLAGS.max_lag, burn_in=FLAGS.burn_in,
      epsilon=FLAGS.epsilon)
  print(tables.write_results(
      FLAGS.output_dir, 'dynamics',
      [dict(result, label=label) for label, result in results],
      dynamics.markdown_table(results),
      lambda path: dynamics.plot(results, path)))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The ``tfcredit-dynamics`` console script."""
  define_flags()
  common.run(run, argv)


if __name__ == '__main__':
  main()

"""How wrong is each method's gradient? Measured against full BPTT.

``tfcredit-fidelity --gin_file=testing/tiny.gin``

For the task and model of ``--gin_file`` (fresh weights, or ``--checkpoint`` of a
run), every ``--method`` estimates the gradient of the same sequences ``--draws``
times (``Method.estimate_gradients``); each is compared with the full-BPTT gradient:
relative bias of the mean estimate (with its Monte-Carlo noise), cosine, and the
spread of single draws, for every ``--lengths`` x ``--windows`` pair
(``tfcredit.fidelity`` defines them). A method is ``NAME: gin bindings`` separated by
``;``, where ``{window}`` takes each ``--windows`` value:

  --method='truncated BPTT K={window}: train.method = @TruncatedBPTT; TruncatedBPTT.window = {window}'

Default methods: full BPTT (a check: bias 0), truncated BPTT and ARTBP (per-row
draws). Writes ``fidelity.json``, ``fidelity.md`` and (with matplotlib,
``pip install tfcredit[plots]``) ``fidelity.png`` into ``--output_dir``, and prints
the table. Exit codes: 0 success, 2 bad configuration, 1 data failure.
"""

import sys
from typing import List, Optional, Sequence

from absl import flags

from tfcredit.cli import common
from tfcredit import tables

FLAGS = flags.FLAGS


def define_flags() -> None:
  define = common.define_flag
  common.define_gin_flags()
  define(flags.DEFINE_multi_string, 'method', None, "Methods, 'NAME: bindings; "
         "...' (repeatable); default: full BPTT, truncated BPTT, ARTBP.")
  define(flags.DEFINE_list, 'windows', ['5', '10'], 'Values of {window} in '
         '--method.')
  define(flags.DEFINE_list, 'lengths', [], "Sequence lengths; default: the task's "
         'own.')
  define(flags.DEFINE_integer, 'draws', 64, 'Estimates per method, window and '
         'length.')
  define(flags.DEFINE_integer, 'sequences', 32, 'Sequences (or stream columns) per '
         'estimate.')
  define(flags.DEFINE_string, 'checkpoint', None, 'A run directory (or '
         'checkpoint) whose model weights to use; default: fresh weights.')
  define(flags.DEFINE_bool, 'restore_method_state', False, 'With --checkpoint, '
         'also restore the trained method state (a DNI synthesizer, FPTT averages) '
         "into the variants of the run's own method class.")
  define(flags.DEFINE_string, 'data_dir', None, 'Data directory, for tasks that '
         'read data.')
  define(flags.DEFINE_integer, 'seed', 0, "Seeds fresh weights and the methods' "
         'draws.')
  define(flags.DEFINE_enum, 'reference', 'bptt', ['bptt', 'rtrl'], 'The exact '
         'gradient every estimate is measured against: full BPTT, or RTRL (the '
         'same gradient, memory independent of the length: for sequences longer '
         'than full BPTT can hold, on small models).')
  define(flags.DEFINE_string, 'output_dir', 'runs/gradient_fidelity',
         'Where to write.')


def _integers(name, values):
  from tfcredit.errors import ConfigurationError  # pylint: disable=g-import-not-at-top
  try:
    numbers = [int(v) for v in values]
  except ValueError:
    raise ConfigurationError(
        f'--{name}={",".join(values)} must be comma-separated integers, e.g. '
        f'--{name}=10,20') from None
  if any(n <= 0 for n in numbers):
    raise ConfigurationError(f'--{name}={",".join(values)} must be positive')
  return numbers


def run(argv: List[str]) -> int:
  """Measures with the parsed flags; returns the exit code."""
  code = common.unexpected_arguments(argv)
  if code is not None:
    return code
  from tfcredit import errors  # pylint: disable=g-import-not-at-top
  from tfcredit import fidelity  # pylint: disable=g-import-not-at-top

  try:
    if not FLAGS.gin_file:
      raise errors.ConfigurationError(
          '--gin_file is required: e.g. --gin_file=testing/tiny.gin')
    variants = [fidelity.Variant.parse(text)
                for text in (FLAGS.method or fidelity.DEFAULT_VARIANTS)]
    rows = fidelity.measure(
        FLAGS.gin_file, FLAGS.gin_bindings, variants,
        windows=_integers('windows', FLAGS.windows),
        lengths=_integers('lengths', FLAGS.lengths) or [None],
        draws=FLAGS.draws, sequences=FLAGS.sequences, data_dir=FLAGS.data_dir,
        checkpoint=FLAGS.checkpoint, seed=FLAGS.seed,
        restore_method_state=FLAGS.restore_method_state,
        reference=FLAGS.reference, progress=lambda line: print(line, flush=True))
  except errors.TfcreditError as error:
    print(f'error: {error}', file=sys.stderr)
    return error.exit_code
  print(tables.write_results(FLAGS.output_dir, 'fidelity', rows,
                             fidelity.markdown_table(rows),
                             lambda path: fidelity.plot(rows, path)))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The ``tfcredit-fidelity`` console script."""
  define_flags()
  common.run(run, argv)


if __name__ == '__main__':
  main()

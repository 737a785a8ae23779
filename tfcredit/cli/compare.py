"""Runs one task with several methods and compares them: curves and a table.

Several configs, one run each (same seed, so the same initial weights and data
order)::

  tfcredit-compare --gin_file=gin_configs/tallec17_artbp/influence_balancing_tbptt10.gin \
      --gin_file=gin_configs/tallec17_artbp/influence_balancing_artbp.gin

or one base config and a run per method (``NAME: gin bindings`` separated by ``;``)::

  tfcredit-compare --gin_file=gin_configs/quickstart.gin \
      --method='truncated BPTT K=10: train.method = @TruncatedBPTT; TruncatedBPTT.window = 10' \
      --method='ARTBP L0=10: train.method = @ARTBP; ARTBP.mean_length = 10'

Several seeds (``--seeds=0,1,2``): the whole comparison once per seed, in
``<output_dir>/seed_<s>`` (each with its own ``comparison.*``), and in
``--output_dir`` a summary over the seeds (``tfcredit.comparison_seeds``): mean
± sample standard deviation of each run's results, each seed's value, and its
difference from the first run on the same seed (paired, in the test and in the
best validation metric), the validation metric at each evaluation, and the
curves, as means with the band from the lowest to the highest seed.

Each run is ``tfcredit-train`` (``python -m tfcredit.cli.train``) in its own process with ``--model_dir=<output_dir>/
<run name>`` (running the comparison again resumes unfinished runs and reuses
finished ones), ``--gin_bindings`` applied to every run and ``train.seed = --seed``.
The curves are read back from the runs' TensorBoard events (``--curve``: the
validation metric by default, or any training scalar such as
``train/average_loss_so_far``; ``--log_scale`` for curves over decades). Writes
``comparison.md`` (final and best validation metric, throughput, wall time,
parameter updates, units trained on; wall time summed over every invocation that
ran the run; then each run's validation metric at every evaluation),
``comparison.json`` and, with matplotlib (``pip install 'tfcredit[plots]'``),
``comparison.png`` into ``--output_dir``. ``--tabulate_only`` writes them for
runs already trained, without training. Exit codes: 0 success, 2 bad
configuration, 1 a run failed (or, with ``--tabulate_only``, has no results). The logic is the
library module ``tfcredit.comparison``; this command turns its flags into a
``comparison.Settings``, prints and writes the files.
"""

import os
import sys
from typing import List, Optional, Sequence

from absl import flags

from tfcredit.cli import common
from tfcredit import comparison  # pylint: disable=g-bad-import-order
from tfcredit import comparison_seeds  # pylint: disable=g-bad-import-order
from tfcredit.errors import ConfigurationError
from tfcredit import tables  # pylint: disable=g-bad-import-order

FLAGS = flags.FLAGS


def define_flags() -> None:
  define = common.define_flag
  common.define_gin_flags()
  define(flags.DEFINE_multi_string, 'method', None, "Runs as 'NAME: bindings; "
         "...' on top of the --gin_file base (repeatable).")
  define(flags.DEFINE_integer, 'seed', 0, 'train.seed of every run.')
  define(flags.DEFINE_list, 'seeds', None, 'Train the comparison once per seed '
         '(e.g. 0,1,2), each in <output_dir>/seed_<s>, and summarise the runs '
         'over the seeds; instead of --seed.')
  define(flags.DEFINE_string, 'data_dir', None, 'Data directory passed to every '
         'run.')
  define(flags.DEFINE_string, 'output_dir', 'runs/compare', 'Runs and results go '
         'here.')
  define(flags.DEFINE_string, 'curve', None, "The plotted curve, as "
         "'<train|valid>/<tag>' of the runs' TensorBoard scalars, e.g. "
         'train/average_loss_so_far; default: valid/<the task metric>.')
  define(flags.DEFINE_bool, 'log_scale', False, 'Plot both axes on a log scale.')
  define(flags.DEFINE_bool, 'tabulate_only', False, 'Train nothing: write the '
         'tables and curves of the runs already in --output_dir, from their '
         'recorded results (exit 1 naming a run that has none).')


def settings_from_flags() -> comparison.Settings:
  """What every run shares, from the flags."""
  return comparison.Settings(
      bindings=list(FLAGS.gin_bindings), seed=FLAGS.seed, data_dir=FLAGS.data_dir,
      verbose=FLAGS.verbose, curve=FLAGS.curve,
      environment=common.quieted_environment(),
      tabulate_only=FLAGS.tabulate_only)


def run(argv: List[str]) -> int:
  """Runs and compares with the parsed flags; returns the exit code."""
  code = common.unexpected_arguments(argv)
  if code is not None:
    return code
  settings = settings_from_flags()
  try:
    runs = comparison.plan_runs(FLAGS.gin_file, FLAGS.method)
    seeds = _seeds_from_flags()
    comparison.check_configs(runs, settings)
  except ConfigurationError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  rows = []
  trained = (comparison.train_all(runs, FLAGS.output_dir, settings) if seeds is None
             else comparison_seeds.train_seeds(runs, FLAGS.output_dir, settings,
                                               seeds))
  try:
    for row in trained:
      rows.append(row)
      if not row['curve']:
        print(f"warning: run {row['run']!r} has no {row['curve_name']!r} scalars "
              f"in {row['model_dir']}; --curve takes train/<tag> or valid/<tag> "
              'of its TensorBoard scalars', file=sys.stderr)
  except comparison.RunFailed as failure:
    print(f'error: {failure}', file=sys.stderr)
    return failure.exit_code if failure.exit_code in (1, 2) else 1
  if seeds is None:
    print(_write(FLAGS.output_dir, rows))
  else:
    _write_seeds(rows, seeds)
  return 0


def _seeds_from_flags() -> Optional[List[int]]:
  """``--seeds`` as integers, or None (one comparison at ``--seed``).

  Raises:
    ConfigurationError: bad ``--seeds``, or both ``--seed`` and ``--seeds``.
  """
  if not FLAGS.seeds:
    return None
  if FLAGS['seed'].present:
    raise ConfigurationError('give --seed or --seeds, not both: --seeds=0,1,2 '
                             'trains every run once per seed')
  return comparison_seeds.parse_seeds(FLAGS.seeds)


def _write(directory: str, rows: List[dict]) -> str:
  """One seed's ``comparison.*`` into ``directory``; the line saying so."""
  table = comparison.markdown_table(rows)
  evaluations = comparison.evaluations_table(rows)
  return tables.write_results(
      directory, 'comparison', rows,
      table + '\n' + evaluations if evaluations else table,
      lambda path: comparison.plot(rows, path, log_scale=FLAGS.log_scale))


def _write_seeds(rows: List[dict], seeds: List[int]) -> None:
  """Each seed's files in its directory, then the summary over the seeds."""
  for seed in seeds:
    print(f'seed {seed}:')
    print(_write(comparison_seeds.seed_directory(FLAGS.output_dir, seed),
                 [row for row in rows if row['seed'] == seed]))
  summary = comparison_seeds.summarize(rows)
  print(f'over seeds {", ".join(map(str, seeds))}:')
  print(tables.write_results(
      FLAGS.output_dir, 'comparison',
      {'seeds': seeds, 'summary': summary, 'runs': rows},
      comparison_seeds.markdown_table(summary),
      lambda path: comparison_seeds.plot(summary, path,
                                         log_scale=FLAGS.log_scale)))


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The ``tfcredit-compare`` console script."""
  define_flags()
  common.run(run, argv)


if __name__ == '__main__':
  main()

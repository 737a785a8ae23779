"""Runs one task with several methods and compares them: curves and a table.

Several configs, one run each (same seed, so the same initial weights and data
order)::

  tfcredit-compare --gin_file=gin_configs/tallec17_artbp/influence_balancing_tbptt10.gin \
      --gin_file=gin_configs/tallec17_artbp/influence_balancing_artbp.gin

or one base config and a run per method (``NAME: gin bindings`` separated by ``;``)::

  tfcredit-compare --gin_file=gin_configs/quickstart.gin \
      --method='truncated BPTT K=10: train.method = @TruncatedBPTT; TruncatedBPTT.window = 10' \
      --method='ARTBP L0=10: train.method = @ARTBP; ARTBP.mean_length = 10'

Each run is ``tfcredit-train`` (``python -m tfcredit.cli.train``) in its own process with ``--model_dir=<output_dir>/
<run name>`` (running the comparison again resumes unfinished runs and reuses
finished ones), ``--gin_bindings`` applied to every run and ``train.seed = --seed``.
The curves are read back from the runs' TensorBoard events (``--curve``: the
validation metric by default, or any training scalar such as
``train/average_loss_so_far``; ``--log_scale`` for curves over decades). Writes
``comparison.md`` (final and best validation metric, throughput, wall time,
parameter updates, units trained on; wall time summed over every invocation that
ran the run), ``comparison.json`` and, with matplotlib
(``pip install 'tfcredit[plots]'``), ``comparison.png`` into ``--output_dir``.
Exit codes: 0 success, 2 bad configuration, 1 a run failed.
"""

import json
import os
import re
import subprocess
import sys
import time
from typing import List, Optional, Sequence

from absl import flags

from tfcredit.cli import common
from tfcredit import fidelity  # pylint: disable=g-bad-import-order
from tfcredit import tables
from tfcredit.errors import ConfigurationError

FLAGS = flags.FLAGS


def define_flags() -> None:
  define = common.define_flag
  common.define_gin_flags()
  define(flags.DEFINE_multi_string, 'method', None, "Runs as 'NAME: bindings; "
         "...' on top of the --gin_file base (repeatable).")
  define(flags.DEFINE_integer, 'seed', 0, 'train.seed of every run.')
  define(flags.DEFINE_string, 'data_dir', None, 'Data directory passed to every '
         'run.')
  define(flags.DEFINE_string, 'output_dir', 'runs/compare', 'Runs and results go '
         'here.')
  define(flags.DEFINE_string, 'curve', None, "The plotted curve, as "
         "'<train|valid>/<tag>' of the runs' TensorBoard scalars, e.g. "
         'train/average_loss_so_far; default: valid/<the task metric>.')
  define(flags.DEFINE_bool, 'log_scale', False, 'Plot both axes on a log scale.')


def slug(name: str) -> str:
  """A directory name for a run name."""
  return re.sub(r'[^A-Za-z0-9_.=-]+', '_', name).strip('_') or 'run'


def plan_runs(gin_files, methods):
  """``[(name, gin files, bindings)]`` from the flags."""
  if not gin_files:
    raise ConfigurationError('--gin_file is required: one per run, or a base '
                             'config with --method')
  if not methods:
    if len(gin_files) < 2:
      raise ConfigurationError('give at least two --gin_file (one run each), or '
                               '--method variants of one config')
    names = [os.path.splitext(os.path.basename(path))[0] for path in gin_files]
    if len(set(names)) < len(names):
      names = [os.path.relpath(path).replace(os.sep, '_') for path in gin_files]
    return [(name, [path], []) for name, path in zip(names, gin_files)]
  runs = [(variant.name, list(gin_files), list(variant.bindings))
          for variant in map(fidelity.Variant.parse, methods)]
  if len({slug(name) for name, _, _ in runs}) < len(runs):
    raise ConfigurationError('--method names must differ: they name the run '
                             'directories')
  return runs


def run_bindings(bindings):
  """Every binding a run gets: the shared ones, its own, the seed."""
  return list(FLAGS.gin_bindings) + list(bindings) + [f'train.seed = {FLAGS.seed}']


def check_configs(runs):
  """Parses every run's configuration before the first one trains, so a typo in
  the last run's bindings is an error now, not after the others have trained.

  Raises:
    ConfigurationError: naming the run and what gin could not parse.
  """
  import gin  # pylint: disable=g-import-not-at-top
  import tfcredit  # pylint: disable=g-import-not-at-top,unused-import  # Registers the configurables.
  from tfcredit import config  # pylint: disable=g-import-not-at-top
  try:
    for name, gin_files, bindings in runs:
      gin.clear_config()
      try:
        config.parse(gin_files, run_bindings(bindings))
      except ConfigurationError as error:
        raise ConfigurationError(f'run {name!r} (nothing was trained): {error}'
                                 ) from None
  finally:
    gin.clear_config()


def train(name, gin_files, bindings, model_dir):
  """Runs tfcredit-train in a child process; returns (final metrics, wall
  seconds), or (None, exit code) if it failed."""
  command = [sys.executable, '-m', 'tfcredit.cli.train',
             f'--model_dir={model_dir}', '--export_dir=']
  command += [f'--gin_file={path}' for path in gin_files]
  command += [f'--gin_bindings={b}' for b in run_bindings(bindings)]
  if FLAGS.data_dir:
    command.append(f'--data_dir={FLAGS.data_dir}')
  if FLAGS.verbose:
    command.append('--verbose')
  print(f'== {name}: tfcredit-train {" ".join(command[3:])}', flush=True)
  start = time.time()
  process = subprocess.Popen(command, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env=common.quieted_environment())
  last = ''
  for line in process.stdout:
    print(f'   {line}', end='', flush=True)
    if line.strip():
      last = line.strip()
  code = process.wait()
  if code != 0:
    return None, code
  return json.loads(last), _add_wall_time(model_dir, time.time() - start)


def _add_wall_time(model_dir, seconds):
  """Adds this invocation's seconds to the run's total (kept in the run
  directory, so a resumed or reused run reports all the time it took)."""
  path = os.path.join(model_dir, 'compare_wall_seconds.json')
  total = seconds
  if os.path.exists(path):
    with open(path) as f:
      total += json.load(f)['seconds']
  with open(path, 'w') as f:
    json.dump({'seconds': total}, f)
  return total


def summarize(name, final, wall, model_dir):
  """One table row: metrics from final_metrics.json, curves from the events."""
  from tfcredit.training import reporting  # pylint: disable=g-import-not-at-top
  metric = next((key[len('valid_'):] for key in final
                 if key.startswith('valid_') and key != 'valid_loss'), 'loss')
  valid = reporting.read_scalars(os.path.join(model_dir, 'valid'))
  train_curves = reporting.read_scalars(os.path.join(model_dir, 'train'))
  curve_name = FLAGS.curve or f'valid/{metric}'
  split, _, tag = curve_name.partition('/')
  curve = {'valid': valid, 'train': train_curves}.get(split, {}).get(tag, [])
  best_curve = valid.get(metric, [])
  rates = [v for _, v in train_curves.get(f'{final.get("unit", "")}_per_second', [])]
  lower_is_better = metric not in ('accuracy',)
  values = [v for _, v in best_curve] or [final[f'valid_{metric}']]
  return {
      'run': name, 'metric': metric, 'final': final[f'valid_{metric}'],
      'best': min(values) if lower_is_better else max(values),
      'test': final.get(f'test_{metric}'), 'unit': final.get('unit'),
      'units_per_second': sum(rates) / len(rates) if rates else None,
      'wall_seconds': wall, 'updates': final.get('updates'),
      'units_seen': final.get('units_seen'), 'curve': curve,
      'curve_name': curve_name,
      'model_dir': model_dir,
  }


def markdown_table(rows) -> str:
  metric = rows[0]['metric']
  unit = rows[0]['unit'] or 'units'
  header = ['run', f'final valid {metric}', f'best valid {metric}', f'test {metric}',
            f'{unit}/s', 'wall time', 'updates', unit]
  cells = []
  for row in rows:
    rate = (f"{row['units_per_second']:,.0f}" if row['units_per_second'] is not None
            else '—')
    test = f"{row['test']:.4g}" if row['test'] is not None else '—'
    cells.append([row['run'], f"{row['final']:.4g}", f"{row['best']:.4g}", test,
                  rate, f"{row['wall_seconds']:.0f} s", f"{row['updates']:,}",
                  f"{row['units_seen']:,}"])
  return tables.markdown_table(header, [tables.LEFT] + [tables.RIGHT] * 7,
                               cells) + '\n'


def plot(rows, path) -> bool:
  """The runs' curves against units trained on; False without matplotlib."""
  pyplot = tables.pyplot()
  if pyplot is None:
    return False
  figure, axis = pyplot.subplots(figsize=(7, 4.5))
  for row in rows:
    if row['curve']:
      steps, values = zip(*row['curve'])
      axis.plot(steps, values, marker='o', markersize=3, label=row['run'])
  axis.set(xlabel=f"{rows[0]['unit'] or 'units'} trained on",
           ylabel=rows[0]['curve_name'])
  if FLAGS.log_scale:
    axis.set_xscale('log')
    axis.set_yscale('log')
  axis.legend(fontsize='small')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  pyplot.close(figure)
  return True


def run(argv: List[str]) -> int:
  """Runs and compares with the parsed flags; returns the exit code."""
  code = common.unexpected_arguments(argv)
  if code is not None:
    return code
  try:
    runs = plan_runs(FLAGS.gin_file, FLAGS.method)
    check_configs(runs)
  except ConfigurationError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  rows = []
  for name, gin_files, bindings in runs:
    model_dir = os.path.join(FLAGS.output_dir, slug(name))
    final, wall = train(name, gin_files, bindings, model_dir)
    if final is None:
      print(f'error: run {name!r} failed (exit {wall}); its output is above and '
            f'its directory is {model_dir}', file=sys.stderr)
      return wall if wall in (1, 2) else 1
    rows.append(summarize(name, final, wall, model_dir))
    if not rows[-1]['curve']:
      print(f"warning: run {name!r} has no {rows[-1]['curve_name']!r} scalars in "
            f'{model_dir}; --curve takes train/<tag> or valid/<tag> of its '
            'TensorBoard scalars', file=sys.stderr)
  table = markdown_table(rows)
  with open(os.path.join(FLAGS.output_dir, 'comparison.md'), 'w') as f:
    f.write(table)
  with open(os.path.join(FLAGS.output_dir, 'comparison.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  plotted = plot(rows, os.path.join(FLAGS.output_dir, 'comparison.png'))
  print(table)
  print(f'wrote {FLAGS.output_dir}/comparison.md, comparison.json'
        + (', comparison.png' if plotted
           else " (no plot: pip install 'tfcredit[plots]')"))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The ``tfcredit-compare`` console script."""
  define_flags()
  common.run(run, argv)


if __name__ == '__main__':
  main()

"""Comparing methods on one task: a training run each, their results side by side.

A comparison is a list of runs ``(name, gin files, bindings)`` (``plan_runs``: one
gin file per run, or one base config and a ``'NAME: bindings'`` variant per run,
the syntax of ``fidelity.Variant``). Each run is ``tfcredit-train`` in its own
process in ``<output_dir>/<slug(name)>`` (``train``), with the bindings every run
shares and ``train.seed`` (``Settings``): the same seed gives every run the same
initial weights and data order, and running the comparison again resumes
unfinished runs and reuses finished ones (``recorded`` reads a finished run's
results without training). ``summarize`` reads a run's results back
(``final_metrics.json``, its TensorBoard scalars); ``markdown_table``,
``evaluations_table`` and ``plot`` are the tables and the curves. Used by ``tfcredit-compare``
(``tfcredit/cli/compare.py``).
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from tfcredit import fidelity
from tfcredit import tables
from tfcredit.errors import ConfigurationError

# A run: (name, gin files, its own bindings).
Run = Tuple[str, List[str], List[str]]


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every run of a comparison shares.

  Attributes:
    bindings: gin bindings applied to every run, before its own.
    seed: ``train.seed`` of every run.
    data_dir: the runs' ``--data_dir``; None leaves it out.
    verbose: the runs get ``--verbose``.
    curve: the plotted curve, ``'<train|valid>/<tag>'`` of the runs' TensorBoard
      scalars; None: ``valid/<the task metric>``.
    environment: the training processes' environment; None: this process's.
    tabulate_only: train nothing; read each run's recorded results (``recorded``).
  """
  bindings: Sequence[str] = ()
  seed: int = 0
  data_dir: Optional[str] = None
  verbose: bool = False
  curve: Optional[str] = None
  environment: Optional[Dict[str, str]] = None
  tabulate_only: bool = False


class RunFailed(Exception):
  """A run's training process exited with an error (its output was echoed)."""

  def __init__(self, name: str, exit_code: int, model_dir: str,
               message: Optional[str] = None):
    super().__init__(message or f'run {name!r} failed (exit {exit_code}); its '
                     f'output is above and its directory is {model_dir}')
    self.name, self.exit_code, self.model_dir = name, exit_code, model_dir


def slug(name: str) -> str:
  """A directory name for a run name."""
  return re.sub(r'[^A-Za-z0-9_.=-]+', '_', name).strip('_') or 'run'


def plan_runs(gin_files: Sequence[str], methods: Optional[Sequence[str]]
              ) -> List[Run]:
  """``[(name, gin files, bindings)]``: a run per gin file, or without
  ``methods`` a run per ``'NAME: bindings'`` on top of the gin files.

  Raises:
    ConfigurationError: no gin file, a single one without methods, or two method
      names with the same directory.
  """
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


def run_bindings(bindings: Sequence[str], settings: Settings) -> List[str]:
  """Every binding a run gets: the shared ones, its own, the seed."""
  return (list(settings.bindings) + list(bindings)
          + [f'train.seed = {settings.seed}'])


def check_configs(runs: Sequence[Run], settings: Settings) -> None:
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
        config.parse(gin_files, run_bindings(bindings, settings))
      except ConfigurationError as error:
        raise ConfigurationError(f'run {name!r} (nothing was trained): {error}'
                                 ) from None
  finally:
    gin.clear_config()


def train(name: str, gin_files: Sequence[str], bindings: Sequence[str],
          model_dir: str, settings: Settings
          ) -> Tuple[Optional[Dict], float]:
  """Runs tfcredit-train in a child process, echoing its output (indented) as it
  comes; returns (final metrics, wall seconds of every invocation of this run),
  or (None, exit code) if it failed."""
  command = [sys.executable, '-m', 'tfcredit.cli.train',
             f'--model_dir={model_dir}', '--export_dir=']
  command += [f'--gin_file={path}' for path in gin_files]
  command += [f'--gin_bindings={b}' for b in run_bindings(bindings, settings)]
  if settings.data_dir:
    command.append(f'--data_dir={settings.data_dir}')
  if settings.verbose:
    command.append('--verbose')
  print(f'== {name}: tfcredit-train {" ".join(command[3:])}', flush=True)
  start = time.time()
  process = subprocess.Popen(command, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env=settings.environment)
  last = ''
  for line in process.stdout:
    print(f'   {line}', end='', flush=True)
    if line.strip():
      last = line.strip()
  code = process.wait()
  if code != 0:
    return None, code
  return json.loads(last), _add_wall_time(model_dir, time.time() - start)


WALL_TIME = 'compare_wall_seconds.json'


def recorded(name: str, model_dir: str) -> Tuple[Dict, float]:
  """A finished run's final metrics and the wall seconds its comparisons took,
  read from ``model_dir`` without training.

  Raises:
    RunFailed: the run has no ``final_metrics.json`` (exit code 1).
  """
  path = os.path.join(model_dir, 'final_metrics.json')
  if not os.path.exists(path):
    raise RunFailed(name, 1, model_dir, f'run {name!r} has no results in '
                    f'{model_dir} (no final_metrics.json): train it first, by '
                    'the same command without --tabulate_only')
  with open(path) as f:
    final = json.load(f)
  wall = os.path.join(model_dir, WALL_TIME)
  if not os.path.exists(wall):
    return final, 0.0
  with open(wall) as f:
    return final, json.load(f)['seconds']


def _add_wall_time(model_dir: str, seconds: float) -> float:
  """Adds this invocation's seconds to the run's total (kept in the run
  directory, so a resumed or reused run reports all the time it took)."""
  path = os.path.join(model_dir, WALL_TIME)
  total = seconds
  if os.path.exists(path):
    with open(path) as f:
      total += json.load(f)['seconds']
  with open(path, 'w') as f:
    json.dump({'seconds': total}, f)
  return total


def summarize(name: str, final: Dict, wall: float, model_dir: str,
              curve: Optional[str] = None) -> Dict:
  """One table row: metrics from final_metrics.json, curves from the events
  (``curve``: as ``Settings.curve``)."""
  from tfcredit.training import reporting  # pylint: disable=g-import-not-at-top
  metric = next((key[len('valid_'):] for key in final
                 if key.startswith('valid_') and key != 'valid_loss'), 'loss')
  valid = reporting.read_scalars(os.path.join(model_dir, 'valid'))
  train_curves = reporting.read_scalars(os.path.join(model_dir, 'train'))
  curve_name = curve or f'valid/{metric}'
  split, _, tag = curve_name.partition('/')
  points = {'valid': valid, 'train': train_curves}.get(split, {}).get(tag, [])
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
      'units_seen': final.get('units_seen'), 'curve': points,
      'curve_name': curve_name, 'evaluations': best_curve,
      'model_dir': model_dir,
  }


def train_all(runs: Sequence[Run], output_dir: str, settings: Settings
              ) -> Iterator[Dict]:
  """Trains (or resumes, or reuses) each run in turn in
  ``<output_dir>/<slug(name)>`` (or, with ``settings.tabulate_only``, reads its
  recorded results) and yields its ``summarize`` row.

  Raises:
    RunFailed: a run's training process failed; the later runs were not started.
  """
  for name, gin_files, bindings in runs:
    model_dir = os.path.join(output_dir, slug(name))
    if settings.tabulate_only:
      final, wall = recorded(name, model_dir)
    else:
      final, wall = train(name, gin_files, bindings, model_dir, settings)
    if final is None:
      raise RunFailed(name, wall, model_dir)
    yield summarize(name, final, wall, model_dir, settings.curve)


def markdown_table(rows: Sequence[Dict]) -> str:
  """The rows as a GitHub markdown table (``comparison.md``)."""
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


EVALUATION_ROWS = 30  # At most this many evaluations in evaluations_table.


def evaluations_table(rows: Sequence[Dict],
                      formatted: Callable[[Any], str] = '{:.4g}'.format,
                      about: str = '') -> str:
  """The validation metric of every run at each evaluation (the steps any run
  evaluated at, in units trained on; '—' where a run has none), as markdown under
  a line naming it (with ``about`` after the metric); at most
  ``EVALUATION_ROWS`` evenly spaced evaluations and the last (all of them are in
  ``comparison.json``); '' when no run has any. ``formatted`` writes a value."""
  steps = sorted({step for row in rows for step, _ in row.get('evaluations', [])})
  if not steps:
    return ''
  stride = -(-len(steps) // EVALUATION_ROWS)
  shown = steps[::stride]
  if shown[-1] != steps[-1]:
    shown.append(steps[-1])
  values = [dict(row.get('evaluations', [])) for row in rows]
  cells = [[f'{step:,}'] + [formatted(value[step]) if step in value else '—'
                            for value in values] for step in shown]
  unit = rows[0]['unit'] or 'units'
  thinned = (f' (one in {stride} of the {len(steps)} evaluations, and the '
             'last; all in comparison.json)' if stride > 1 else '')
  return (f"Validation {rows[0]['metric']}{about} at each evaluation, by {unit} "
          f'trained on{thinned}:\n\n'
          + tables.markdown_table([unit] + [row['run'] for row in rows],
                                  [tables.RIGHT] * (len(rows) + 1), cells) + '\n')


def plot(rows: Sequence[Dict], path: str, log_scale: bool = False) -> bool:
  """Writes the runs' curves against units trained on to ``path`` (both axes on
  a log scale with ``log_scale``); False without matplotlib."""

  def draw(axis, row):
    steps, values = zip(*row['curve'])
    axis.plot(steps, values, marker='o', markersize=3, label=row['run'])

  return curve_figure(rows, path, draw, rows[0]['curve_name'], log_scale)


def curve_figure(rows: Sequence[Dict], path: str,
                 draw: Callable[[Any, Dict], None], ylabel: str,
                 log_scale: bool = False) -> bool:
  """``draw(axis, row)`` for every row with a ``curve``, against units trained
  on, written to ``path``; False without matplotlib."""
  pyplot = tables.pyplot()
  if pyplot is None:
    return False
  figure, axis = pyplot.subplots(figsize=(7, 4.5))
  for row in rows:
    if row['curve']:
      draw(axis, row)
  axis.set(xlabel=f"{rows[0]['unit'] or 'units'} trained on", ylabel=ylabel)
  if log_scale:
    axis.set_xscale('log')
    axis.set_yscale('log')
  axis.legend(fontsize='small')
  return tables.save_figure(figure, path)

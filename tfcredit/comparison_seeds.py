"""A comparison over several seeds: every run once per seed, summarised across them.

``tfcredit-compare --seeds=0,1,2`` trains the whole comparison once per seed,
seed ``s`` in ``<output_dir>/seed_<s>`` (each a single-seed comparison of its
own, resumed and reused as one), and summarises each run over the seeds: the
mean and sample standard deviation of its final and best validation metric and
of its test metric, each seed's value, and its difference from the first run on
the same seed. The difference is paired: one seed gives every run the same
initial weights and data order, so the per-seed differences measure the methods
against each other, and their spread is the seed spread of the comparison
itself. The curves: each run's mean over the seeds, with a band from the lowest
to the highest seed at each point. Used by ``tfcredit-compare``
(``tfcredit/cli/compare.py``); the single-seed logic is ``tfcredit.comparison``.
"""

import dataclasses
import os
import statistics
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from tfcredit import comparison
from tfcredit import tables
from tfcredit.errors import ConfigurationError


def parse_seeds(values: Sequence[str]) -> List[int]:
  """``--seeds`` as distinct integers, in the order given.

  Raises:
    ConfigurationError: a value is not an integer, or one repeats.
  """
  seeds = []
  for value in values:
    try:
      seeds.append(int(str(value).strip()))
    except ValueError:
      raise ConfigurationError(
          f'--seeds takes integers, got {value!r}: e.g. --seeds=0,1,2') from None
  if len(set(seeds)) < len(seeds):
    raise ConfigurationError(f'--seeds={",".join(map(str, seeds))} repeats a '
                             'seed: give each seed once')
  return seeds


def seed_directory(output_dir: str, seed: int) -> str:
  """Where the runs of ``seed`` go."""
  return os.path.join(output_dir, f'seed_{seed}')


def train_seeds(runs: Sequence[comparison.Run], output_dir: str,
                settings: comparison.Settings, seeds: Sequence[int]
                ) -> Iterator[Dict]:
  """Every run for the first seed, then for the next, ...: each
  ``comparison.train_all`` row with its ``seed``.

  Raises:
    comparison.RunFailed: a run failed; later runs and seeds were not started.
  """
  for seed in seeds:
    for row in comparison.train_all(runs, seed_directory(output_dir, seed),
                                    dataclasses.replace(settings, seed=seed)):
      yield dict(row, seed=seed)


def spread(values: Sequence[float]) -> Dict:
  """``{'mean', 'sd', 'values'}``; ``sd`` is the sample standard deviation
  (None for one value)."""
  values = [float(v) for v in values]
  return {'mean': statistics.fmean(values),
          'sd': statistics.stdev(values) if len(values) > 1 else None,
          'values': values}


def _aligned(curves: Sequence[Sequence]) -> List[Tuple[int, List[float]]]:
  """``[(step, each curve's value)]`` at the steps every curve has."""
  if not curves or not all(curves):
    return []
  points = [dict((step, value) for step, value in curve) for curve in curves]
  common = set(points[0]).intersection(*points[1:])
  return [(step, [p[step] for p in points]) for step in sorted(common)]


def band(curves: Sequence[Sequence]) -> List[List[float]]:
  """``[[step, mean, lowest, highest]]`` at the steps every curve has."""
  return [[step, statistics.fmean(values), min(values), max(values)]
          for step, values in _aligned(curves)]


def evaluations(curves: Sequence[Sequence]) -> List[List]:
  """``[[step, spread of the values]]`` at the steps every curve has."""
  return [[step, spread(values)] for step, values in _aligned(curves)]


def summarize(rows: Sequence[Dict]) -> List[Dict]:
  """One entry per run over its seeds (module docstring), in the runs' order.

  ``compared`` names the value the differences use: the test metric when every
  row has one, else the final validation metric. ``difference`` is the run's
  minus the first run's, seed by seed (zero for the first run itself);
  ``best_difference`` the same for the best validation metric (what a paper
  reports of runs that overfit).
  """
  names = list(dict.fromkeys(row['run'] for row in rows))
  groups = {name: {row['seed']: row for row in rows if row['run'] == name}
            for name in names}
  compared = 'test' if all(row['test'] is not None for row in rows) else 'final'
  first = groups[names[0]]
  summary = []
  for name in names:
    by_seed = groups[name]
    seeds = list(by_seed)
    entry = {'run': name, 'seeds': seeds, 'compared': compared,
             'metric': rows[0]['metric'], 'unit': rows[0]['unit'],
             'curve_name': rows[0]['curve_name'],
             'curve': band([by_seed[s]['curve'] for s in seeds]),
             'evaluations': evaluations([by_seed[s]['evaluations']
                                         for s in seeds])}
    for field in ('final', 'best', 'test'):
      values = [by_seed[s][field] for s in seeds]
      entry[field] = None if None in values else spread(values)
    for key, field in (('difference', compared), ('best_difference', 'best')):
      entry[key] = spread([by_seed[s][field] - first[s][field]
                           for s in seeds if s in first])
    summary.append(entry)
  return summary


def _mean_sd(value: Optional[Dict]) -> str:
  if value is None:
    return '—'
  if value['sd'] is None:
    return f"{value['mean']:.4g}"
  return f"{value['mean']:.4g} ± {value['sd']:.2g}"


def _per_seed(value: Dict, signed: bool = False) -> str:
  form = '{:+.4g}' if signed else '{:.4g}'
  return ' / '.join(form.format(v) for v in value['values'])


def markdown_table(summary: Sequence[Dict]) -> str:
  """The summary as a markdown table: mean ± sd over the seeds, each seed's
  compared value, and the paired differences from the first run."""
  first, metric = summary[0], summary[0]['metric']
  compared = (f'test {metric}' if first['compared'] == 'test'
              else f'final valid {metric}')
  seeds = ' / '.join(str(s) for s in first['seeds'])
  header = ['run', f'final valid {metric}', f'best valid {metric}',
            f'test {metric}', f'{compared}, seeds {seeds}',
            f"− {first['run']}, per seed", f"− {first['run']}, mean ± sd",
            f"best valid − {first['run']}, per seed (mean ± sd)"]
  cells = []
  for entry in summary:
    value = entry[entry['compared']]
    own = entry is first
    cells.append([entry['run'], _mean_sd(entry['final']),
                  _mean_sd(entry['best']), _mean_sd(entry['test']),
                  _per_seed(value), '—' if own else _per_seed(
                      entry['difference'], signed=True),
                  '—' if own else _mean_sd(entry['difference']),
                  '—' if own else (
                      f"{_per_seed(entry['best_difference'], signed=True)} "
                      f"({_mean_sd(entry['best_difference'])})")])
  table = tables.markdown_table(header, [tables.LEFT] + [tables.RIGHT] * 7,
                                cells) + '\n'
  over_seeds = comparison.evaluations_table(
      summary, _mean_sd, f', mean ± sd over seeds {seeds}')
  return table + '\n' + over_seeds if over_seeds else table


def plot(summary: Sequence[Dict], path: str, log_scale: bool = False) -> bool:
  """Each run's mean curve over the seeds with its lowest-to-highest band, to
  ``path``; False without matplotlib."""

  def draw(axis, entry):
    steps, mean, low, high = zip(*entry['curve'])
    line, = axis.plot(steps, mean, marker='o', markersize=3,
                      label=f"{entry['run']} ({len(entry['seeds'])} seeds)")
    axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)

  return comparison.curve_figure(
      summary, path, draw,
      f"{summary[0]['curve_name']}: mean, band lowest to highest seed", log_scale)

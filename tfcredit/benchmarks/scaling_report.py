"""The scaling sweep's slopes, their table beside theory, and its figure.

``fit_slope`` is the least-squares slope of ``log y`` against ``log x``. Over the T
sweep (one fit per method and width) the memory slope is of the training calls'
peak memory and the time slope of the time per sequence (one call; per step:
subtract 1). Over the forward-mode width sweep both are per step at fixed T.

Expected slopes (``EXPECTED``): full BPTT stores every step's activations
(memory ∝ T), or with the state kept every ``√T`` steps (``bptt_checkpointed``)
the checkpoints and one chunk's activations (memory ∝ √T); ARTBP with the
power schedule (Eq. 14, ``α = 4``) holds its longest window's activations, and
its window lengths have the tail ``P(L > l) ∝ l^−(α−1)``, so the longest of the
``T / L0`` windows of a sequence grows as ``T^(1/(α−1)) = T^(1/3)`` (with the
constant schedule, geometric lengths, as ``log T``); the other methods hold a
window's, a block's or an influence of fixed size (memory constant in T); every
method visits every step (time ∝ T).
In the width ``n`` of an LSTM (state ``|s| ∝ n``, weights ``|θ| ∝ n²``): RTRL's
influence update costs ``|s|²|θ| ∝ n⁴`` per step and holds ``|s||θ| ∝ n³``
floats; UORO's and SnAp-1's cost and state are ``∝ |θ| ∝ n²``.
"""

import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfcredit import tables

# {sweep: {method: (memory slope, time slope)}}; None: any method not listed.
EXPECTED = {
    'length': {'bptt': (1.0, 1.0), 'bptt_checkpointed': (0.5, 1.0),
               'artbp': (1 / 3, 1.0), None: (0.0, 1.0)},
    'width': {'rtrl': (3.0, 4.0), 'uoro': (2.0, 2.0), 'snap1': (2.0, 2.0)},
}


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
  """The least-squares slope of ``log y`` on ``log x`` over the points with
  positive ``x`` and ``y``; None with fewer than two distinct ``x``."""
  pairs = [(x, y) for x, y in zip(xs, ys) if x > 0 and y is not None and y > 0]
  if len({x for x, _ in pairs}) < 2:
    return None
  logs = np.log(np.array(pairs, dtype=np.float64))
  design = np.stack([logs[:, 0], np.ones(len(logs))], axis=1)
  (slope, _), *_ = np.linalg.lstsq(design, logs[:, 1], rcond=None)
  return float(slope)


def expected(sweep: str, method: str) -> tuple:
  """``(memory slope, time slope)`` theory gives, or ``(None, None)``."""
  table = EXPECTED[sweep]
  return table.get(method, table.get(None, (None, None)))


def _groups(points: List[Dict], key: str) -> Dict[tuple, List[Dict]]:
  groups = {}
  for point in points:
    if 'error' not in point:
      groups.setdefault((point['method'], point[key]), []).append(point)
  return groups


def slopes(record: Dict) -> List[Dict]:
  """One row per method and width (T sweep) and per forward-mode method (width
  sweep) with two or more points: the measured and expected slopes and the
  points fitted."""
  rows = []
  for sweep, points, fixed, x_key, time_key in (
      ('length', record['points'], 'width', 'length', 'seconds_per_call'),
      ('width', record['width_points'], 'length', 'width', 'seconds_per_step')):
    for (method, value), group in _groups(points, fixed).items():
      xs = [p[x_key] for p in group]
      if len(set(xs)) < 2:
        continue  # No slope from one point.
      memory_expected, time_expected = expected(sweep, method)
      rows.append({
          'method': method, 'sweep': sweep, fixed: value,
          'points': len(group), 'range': [min(xs), max(xs)],
          'memory_slope': fit_slope(xs, [p['peak_memory_bytes'] for p in group]),
          'state_slope': fit_slope(xs, [p['own_state_floats'] for p in group]),
          'memory_expected': memory_expected,
          'time_slope': fit_slope(xs, [p[time_key] for p in group]),
          'cpu_time_slope': fit_slope(
              xs, [p['cpu_' + time_key] for p in group]),
          'time_expected': time_expected})
  return rows


def _number(value: Optional[float]) -> str:
  return '–' if value is None or math.isnan(value) else f'{value:.2f}'


def slope_table(rows: List[Dict]) -> str:
  """The markdown table: method, sweep, measured and expected slopes."""
  lines = ['| method | in | points | memory slope | expected | own-state slope '
           '| time slope (wall / CPU) | expected |',
           '|---|---|---|---|---|---|---|---|']
  for row in rows:
    if row['sweep'] == 'length':
      sweep = f"T {row['range'][0]}–{row['range'][1]}, width {row['width']}"
    else:
      sweep = f"width {row['range'][0]}–{row['range'][1]}, T {row['length']}"
    lines.append(
        f"| {row['method']} | {sweep} | {row['points']} | "
        f"{_number(row['memory_slope'])} | {_number(row['memory_expected'])} | "
        f"{_number(row['state_slope'])} | {_number(row['time_slope'])} / "
        f"{_number(row['cpu_time_slope'])} | {_number(row['time_expected'])} |")
  return '\n'.join(lines)


def figure(record: Dict, path: str) -> Optional[str]:
  """Writes the two-panel figure (time per step and peak memory against T,
  log-log, a line per method and width) to ``path``; returns None, or a note
  saying why no figure was written."""
  plt = tables.pyplot()
  if plt is None:
    return 'matplotlib is not installed: no figure written'
  groups = _groups(record['points'], 'width')
  if not groups:
    return 'no point was measured: no figure written'
  widths = sorted({width for _, width in groups})
  styles = ['-', '--', ':', '-.']
  colors = {}
  fig, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
  for (method, width), group in sorted(groups.items()):
    group = sorted(group, key=lambda p: p['length'])
    color = colors.setdefault(method, f'C{len(colors) % 10}')
    style = styles[widths.index(width) % len(styles)]
    lengths = [p['length'] for p in group]
    label = method if len(widths) == 1 else f'{method}, width {width}'
    time_axis.plot(lengths, [1e3 * p['seconds_per_step'] for p in group],
                   style, color=color, marker='o', label=label)
    memory_axis.plot(lengths, [max(p['peak_memory_bytes'], 1) / 1e6
                               for p in group], style, color=color, marker='o')
  source = record.get('memory_source') or 'memory'
  for axis, title in ((time_axis, 'wall time per trained step (ms)'),
                      (memory_axis, f'peak memory of the training calls (MB, '
                                    f'{source})')):
    axis.set_xscale('log')
    axis.set_yscale('log')
    axis.set_xlabel('sequence length T')
    axis.set_title(title, fontsize=10)
    axis.grid(True, which='both', alpha=0.3)
  time_axis.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return None


def write(record: Dict, output_dir: str) -> Tuple[str, str]:
  """Adds the slopes (``slopes``) and the figure's name or note to ``record``
  (``scaling.sweep``'s) and writes ``scaling.json``, ``scaling.md`` (the slope
  table) and, with matplotlib, ``scaling.png`` into ``output_dir``.

  Returns:
    ``(scaling.md's text, 'scaling.png' or the note saying why no figure)``.
  """
  os.makedirs(output_dir, exist_ok=True)
  record['slopes'] = slopes(record)
  note = figure(record, os.path.join(output_dir, 'scaling.png'))
  record['figure'] = note or 'scaling.png'
  with open(os.path.join(output_dir, 'scaling.json'), 'w') as f:
    json.dump(record, f, indent=1)
  text = (f'{slope_table(record["slopes"])}\n\nMemory: '
          f'{record["memory_source"] or "none measured"}. Sweep time '
          f'{record["seconds"]:.0f} s.\n')
  with open(os.path.join(output_dir, 'scaling.md'), 'w') as f:
    f.write(text)
  return text, record['figure']

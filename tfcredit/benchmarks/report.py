"""The benchmark's results: median rates, ratios to references, table and summary.

A ratio is the median over rounds of the ratio within a round (``median_ratio``),
so a load change during the run hits numerator and denominator alike; it is given
in wall-clock and in process CPU time. Fractions of the roofline are against its
best round (``roofline_peak``).
"""

import dataclasses
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from tfcredit import tables
from tfcredit.benchmarks import machine as machine_lib
from tfcredit.benchmarks.measure import Runner


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
  """The median over rounds of the within-round ratio."""
  return statistics.median(n / d for n, d in zip(numerators, denominators))


def roofline_peak(roofline: Runner) -> Tuple[float, float]:
  """The roofline: the best GFLOP/s over rounds, per wall-clock and per CPU second.

  The best, not the median: the roofline is what the machine can do, and a round
  can only be slowed down (by other jobs, by a core taken away), never sped up.
  """
  return (max(roofline.gflops(roofline.rates)),
          max(roofline.gflops(roofline.cpu_rates)))


def summarize(runners: Sequence[Runner], roofline: Runner,
              references: Dict[str, Runner]) -> List[Dict]:
  """One row per runner: median rates and median per-round ratios to the references.

  A workload's reference is its Keras ``fit`` (or, for the replicas rows, the
  1-replica row); the ratios of a matmul row are None.

  The fractions of the roofline are the median achieved GFLOP/s over the
  roofline's peak (``roofline_peak``: its best round), in wall-clock time and in
  CPU time. The CPU-time one (FLOPs per CPU-second over the peak matmul's) does not
  depend on how many cores the process got, only on how well it used them.
  """
  peak, peak_cpu = roofline_peak(roofline)
  rows = []
  for runner in runners:
    reference = references.get(runner.workload)
    rows.append({
        'workload': runner.workload, 'config': runner.config,
        'unit': f'{runner.unit}/s', 'throughput': statistics.median(runner.rates),
        'throughput_per_round': runner.rates,
        'cpu_throughput_per_round': runner.cpu_rates,
        'reference': None if reference is None else reference.config,
        'ratio_vs_reference': (None if reference is None else
                               median_ratio(runner.rates, reference.rates)),
        'cpu_time_ratio_vs_reference': (
            None if reference is None else
            median_ratio(runner.cpu_rates, reference.cpu_rates)),
        'flops_per_unit': runner.flops_per_unit,
        'gflops': statistics.median(runner.gflops(runner.rates)),
        'fraction_of_roofline': (
            statistics.median(runner.gflops(runner.rates)) / peak),
        'fraction_of_roofline_cpu_time': (
            statistics.median(runner.gflops(runner.cpu_rates)) / peak_cpu),
        'train_segment_traces': None if runner.traces is None else runner.traces()})
  return rows


def markdown_table(rows: Sequence[Dict]) -> str:
  """The rows as a GitHub markdown table."""
  def ratio(value):
    if value is None:
      return '—'
    return f'{value:.2f}' if value >= 0.01 else f'{value:.2g}'  # RTRL: 1e-4.

  header = ['workload', 'method / config', 'throughput', 'ratio vs reference',
            '(CPU time)', 'achieved GFLOP/s', 'fraction of roofline', '(CPU time)']
  return tables.markdown_table(header, [tables.LEFT] * 2 + [tables.RIGHT] * 6, [
      [row['workload'], row['config'], f"{row['throughput']:,.1f} {row['unit']}",
       ratio(row['ratio_vs_reference']),
       ratio(row['cpu_time_ratio_vs_reference']), f"{row['gflops']:.1f}",
       f"{row['fraction_of_roofline']:.2f}",
       f"{row['fraction_of_roofline_cpu_time']:.2f}"] for row in rows])


@dataclasses.dataclass
class Measurement:
  """A measured suite (``suite.measure``).

  Attributes:
    rows: ``summarize``'s rows.
    rounds: interleaved rounds measured.
    seconds: wall-clock seconds of the whole measurement, warm-up included.
    machine: ``machine.describe``: platform, CPU, load averages, versions.
    roofline: the float32 roofline row's label.
    products: chained products per roofline timing.
    peak: the roofline's best GFLOP/s over rounds in wall-clock time.
    peak_cpu: the same per CPU-second.
    peak_bf16: the bfloat16 roofline's best GFLOP/s, or None without that row.
  """
  rows: List[Dict]
  rounds: int
  seconds: float
  machine: Dict
  roofline: str
  products: int
  peak: float
  peak_cpu: float
  peak_bf16: Optional[float]


def summary_text(measurement: Measurement, *, replicas_row: bool,
                 artbp_row: bool, precision_rows: bool,
                 forward_mode_rows: bool) -> str:
  """The paragraph under the table: the machine and its load, the roofline, the
  bf16 support, retraced rows, and what each row's ratio is against (which
  depends on the rows measured)."""
  m, machine, rounds = measurement, measurement.machine, measurement.rounds
  load_at_start, load_at_end = (machine['load_average_at_start'],
                                machine['load_average_at_end'])
  isa = (', '.join(machine['isa_flags'])
         or 'none of ' + ', '.join(machine_lib.ISA_FLAGS))
  summary = (f'{rounds} round(s) in {m.seconds:.0f} s on {machine["cpu_count"]} '
             f'CPUs ({machine["cpu_model"]}; ISA flags: {isa}), '
             f'1-minute load average {load_at_start[0]:.1f} at the start and '
             f'{load_at_end[0]:.1f} at the end; TensorFlow '
             f'{machine["tensorflow"]}, Keras {machine["keras"]}.')
  summary += (f' Roofline: {m.roofline} float32, {m.products} chained products '
              f'per timing, best of {rounds} round(s): {m.peak:.1f} GFLOP/s '
              f'({m.peak_cpu:.1f} per CPU-second); every fraction of roofline is '
              'against it.')
  summary += f' bf16 flags: {", ".join(machine["bf16_flags"]) or "none"}'
  if not machine['bf16_matmul']:
    summary += (' (no bf16 matrix instructions: bfloat16 products are emulated'
                + (', no bfloat16 row).' if m.peak_bf16 is None else ')'))
  if m.peak_bf16 is not None:
    summary += (f'; bfloat16 roofline, same method, best of {rounds} round(s): '
                f'{m.peak_bf16:.1f} GFLOP/s (not used for the fractions).')
  retraced = [row['config'] for row in m.rows
              if (row['train_segment_traces'] or 1) > 1]
  if retraced:
    summary += (f' Warning: train_segment retraced while measuring {retraced}; '
                'their throughput includes tracing time.')
  summary += (' Ratios are to the workload\'s reference row (1.00): Keras fit with '
              'steps_per_execution=1')
  summary += (', or for the replicas rows the 1-replica one (both replicas share '
              'the same cores: the 2-replica ratio is the overhead of the '
              'distributed code path, not a speed-up)' if replicas_row else '')
  summary += (', or for the ARTBP rows truncated BPTT with window L0'
              if artbp_row else '')
  summary += (', or for the precision rows the same configuration in float32'
              if precision_rows else '')
  summary += (', or for the forward-mode rows (RTRL, UORO, SnAp-1, KF-RTRL, '
              'SnAp-2, element-wise RTRL) truncated BPTT with the same window; '
              'their FLOP counts are truncated BPTT\'s (the influence arithmetic '
              'is not counted).' if forward_mode_rows else '.')
  return summary


def record(measurement: Measurement, *, quick: bool,
           windows_per_call: Sequence[int], replicas_row: bool) -> Dict:
  """The JSON record (``benchmark.json``): rows, settings, roofline, machine."""
  m = measurement
  return {'rows': m.rows, 'rounds': m.rounds, 'quick': quick,
          'windows_per_call': windows_per_call,
          'replicas_row': replicas_row, 'roofline': m.roofline,
          'roofline_products_per_timing': m.products,
          'roofline_gflops_float32': m.peak,
          'roofline_gflops_float32_cpu_time': m.peak_cpu,
          'roofline_gflops_bfloat16': m.peak_bf16,
          'seconds': m.seconds, 'machine': m.machine}

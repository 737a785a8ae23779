"""Timing: both clocks, one timed configuration (``Runner``), interleaved rounds.

Absolute rates depend on the CPU and on whatever else the machine is running, so
the benchmark reports ratios to references timed in the same run, and interleaves
the measurements: each round times every configuration once (``measure_rounds``),
so a load change hits numerator and denominator alike. Wall-clock and process CPU
time are both recorded; waiting for a core does not inflate the second.
"""

import dataclasses
import time
from typing import Callable, List, Optional, Sequence, Tuple


def print_flushed(line: str) -> None:
  """The default ``log`` of the measuring functions: a progress line, now."""
  print(line, flush=True)


@dataclasses.dataclass(frozen=True)
class Elapsed:
  """Wall-clock and process CPU seconds (all threads) of one round.

  CPU time is the less load-sensitive of the two on a shared machine: waiting for a
  core does not count, although cache sharing and spinning worker threads still do.
  """
  wall: float
  cpu: float


class Stopwatch:
  """Reads both clocks at construction and at ``elapsed()``."""

  def __init__(self):
    self._wall, self._cpu = time.perf_counter(), time.process_time()

  def elapsed(self) -> Elapsed:
    return Elapsed(time.perf_counter() - self._wall, time.process_time() - self._cpu)


@dataclasses.dataclass
class Runner:
  """One timed configuration.

  Attributes:
    workload: the workload's name, or ``'matmul reference'``.
    config: row label.
    unit: what ``run`` counts.
    run: does one round of work; returns ``(units, Elapsed)``.
    flops_per_unit: FLOPs per unit, for the achieved rate.
    rates: units per wall-clock second, one per round (see ``measure_rounds``).
    cpu_rates: units per CPU second of this process (all threads), one per round.
    traces: tfcredit runners: ``() -> number of traces of train_segment`` (1 if
      nothing retraced during the measurement).
  """
  workload: str
  config: str
  unit: str
  run: Callable[[], Tuple[float, Elapsed]]
  flops_per_unit: float
  rates: List[float] = dataclasses.field(default_factory=list)
  cpu_rates: List[float] = dataclasses.field(default_factory=list)
  traces: Optional[Callable[[], int]] = None

  def gflops(self, rates: Sequence[float]) -> List[float]:
    """Converts unit rates to GFLOP/s."""
    return [rate * self.flops_per_unit / 1e9 for rate in rates]


def timed(work: Callable[[], float]) -> Callable[[], Tuple[float, Elapsed]]:
  """Wraps ``work() -> units`` into ``() -> (units, Elapsed)``."""
  def run():
    stopwatch = Stopwatch()
    units = work()
    return units, stopwatch.elapsed()
  return run


def measure_rounds(runners: Sequence[Runner], rounds: int,
                   log: Callable[[str], None] = print_flushed) -> None:
  """Interleaves the runners: each round runs every one once, appending its rates.

  Odd rounds go in reverse order, so a load drift within a round does not always
  favour the configurations measured first. ``log`` gets a line after each round.
  """
  for index in range(rounds):
    for runner in (runners if index % 2 == 0 else reversed(runners)):
      units, elapsed = runner.run()
      runner.rates.append(units / elapsed.wall)
      runner.cpu_rates.append(units / elapsed.cpu)
    log(f'  round {index + 1}/{rounds} done')

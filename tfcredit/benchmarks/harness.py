"""Running a benchmark suite: process set-up, interleaved measurement, results.

``prepare`` once before TensorFlow's first op, then ``measure`` builds, warms up
and measures the rows ``suite.Options`` ask for; ``markdown`` and ``record`` are
the contents of ``benchmark.md`` and ``benchmark.json``.
"""

import dataclasses
import os
import time
from typing import Callable, Dict

import keras
import tensorflow as tf

from tfcredit.benchmarks import flops
from tfcredit.benchmarks import machine
from tfcredit.benchmarks import measure as measure_lib
from tfcredit.benchmarks import report
from tfcredit.benchmarks import suite
from tfcredit.benchmarks.suite import Options
from tfcredit.training import distribution


def prepare(options: Options) -> None:
  """Sets up the process; call it before TensorFlow's first op.

  Splits the CPU into ``REPLICAS`` logical devices for the replicas rows, hides
  TensorFlow's retracing warning (it counts traces per Python function, and every
  method's ``train_segment`` wraps the same one, so five methods traced once each
  read as retracing; the real check is per method, ``train_segment_traces``) and
  seeds Keras with ``options.seed``.
  """
  if options.replicas_row:
    distribution.split_cpu(suite.REPLICAS)  # Before TensorFlow's first op.
  tf.get_logger().addFilter(
      lambda log_record: 'triggered tf.function retracing' not in
      log_record.getMessage())
  keras.utils.set_random_seed(options.seed)


def measure(options: Options, rounds: int,
            log: Callable[[str], None] = measure_lib.print_flushed
            ) -> report.Measurement:
  """Builds the rows (``suite.build_runners``), measures ``rounds`` interleaved
  rounds and summarizes them; call ``prepare`` first. ``log`` gets the progress
  lines."""
  started = time.perf_counter()
  load_at_start = os.getloadavg()
  cpu = machine.cpu_features()
  if options.bf16_row is None:
    options = dataclasses.replace(
        options, bf16_row=cpu['bf16_matmul'] or options.precision_rows)
  runners, rooflines, references = suite.build_runners(options, log)
  measure_lib.measure_rounds(runners, rounds, log)
  roofline = rooflines['float32']
  rows = report.summarize(runners, roofline, references)
  peak, peak_cpu = report.roofline_peak(roofline)
  peak_bf16 = (report.roofline_peak(rooflines['bfloat16'])[0]
               if 'bfloat16' in rooflines else None)
  described = machine.describe(cpu, load_at_start)
  return report.Measurement(
      rows=rows, rounds=rounds, seconds=time.perf_counter() - started,
      machine=described, roofline=roofline.config,
      products=flops.roofline_products(options.quick), peak=peak,
      peak_cpu=peak_cpu, peak_bf16=peak_bf16)


def markdown(measurement: report.Measurement, options: Options) -> str:
  """``benchmark.md``: the table, then the summary paragraph."""
  summary = report.summary_text(
      measurement, replicas_row=options.replicas_row,
      artbp_row=options.artbp_row, precision_rows=options.precision_rows,
      forward_mode_rows=bool(options.forward_mode_units
                             or options.sparse_gru_units
                             or options.elementwise_rtrl_units))
  return f'{report.markdown_table(measurement.rows)}\n\n{summary}\n'


def record(measurement: report.Measurement, options: Options) -> Dict:
  """``benchmark.json``: ``report.record`` with the options it names."""
  return report.record(measurement, quick=options.quick,
                       windows_per_call=list(options.windows_per_call),
                       replicas_row=options.replicas_row)

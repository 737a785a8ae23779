"""The scaling sweep (``tfcredit-benchmark --scaling``): its record and files, the
slope fit, the caps, a bad flag."""

import json
import math

import numpy as np
import pytest

from tfcredit import tables
from tfcredit.benchmarks import scaling
from tfcredit.benchmarks import scaling_report
from tfcredit.training import memory

SMALLEST = scaling.ScalingOptions(
    methods=('bptt', 'uoro'), lengths=(8, 16), widths=(4,), batch=2,
    forward_widths=(4, 6), forward_length=8, calls=1, fresh_process=False)


@pytest.fixture(scope='module')
def smallest_record():
  return scaling.sweep(SMALLEST, log=lambda line: None)


@pytest.mark.slow  # The whole smallest sweep: every point trains.
def test_the_smallest_sweep_writes_its_points_slopes_and_figure(
    smallest_record, tmp_path):
  text, figure = scaling_report.write(smallest_record, str(tmp_path))
  record = json.load(open(tmp_path / 'scaling.json'))
  assert {'options', 'points', 'width_points', 'memory_source', 'seconds',
          'slopes', 'figure'} <= set(record)
  assert [(p['method'], p['length'], p['width']) for p in record['points']] == [
      ('bptt', 8, 4), ('bptt', 16, 4), ('uoro', 8, 4), ('uoro', 16, 4)]
  # Per-step figures divide by T: a point's sequences are T steps long.
  assert scaling.copy_task(16, 0).batch('train', 0, 0, 2)[0].shape == (2, 16)
  assert [(p['method'], p['width']) for p in record['width_points']] == [
      ('uoro', 4), ('uoro', 6)]
  for point in record['points'] + record['width_points']:
    assert point['seconds_per_step'] > 0 and point['cpu_seconds_per_step'] > 0
    assert point['peak_memory_bytes'] >= 0
    assert point['memory_source'] == memory.peak_memory()[1]
    assert point['traces'] == 1
  own = {(p['method'], p['width']): p['own_state_floats']
         for p in record['points'] + record['width_points']}
  assert own[('bptt', 4)] == 0  # Full BPTT keeps nothing of its own.
  # UORO's rank-one influence grows with the weights.
  assert own[('uoro', 6)] > own[('uoro', 4)] > 0
  assert {(row['method'], row['sweep']) for row in record['slopes']} == {
      ('bptt', 'length'), ('uoro', 'length'), ('uoro', 'width')}
  assert '| bptt | T 8–16, width 4 | 2 |' in text
  assert (tmp_path / 'scaling.md').read_text() == text
  if tables.pyplot() is None:
    assert figure.startswith('matplotlib is not installed')
  else:
    assert figure == 'scaling.png'
    assert (tmp_path / 'scaling.png').read_bytes()[:4] == b'\x89PNG'


def test_a_method_stops_at_its_first_point_over_the_cap():
  record = scaling.sweep(
      scaling.ScalingOptions(methods=('bptt',), lengths=(8, 16, 32), widths=(4,),
                             batch=2, calls=1, time_cap=1e-9,
                             fresh_process=False), log=lambda line: None)
  assert [p['length'] for p in record['points']] == [8]
  assert record['width_points'] == []


@pytest.mark.slow  # A child process is the point.
def test_a_point_in_a_fresh_process_reports_the_childs_error():
  point = scaling.point_in_fresh_process(
      dict(name='bptt', length=8, width=0, batch=2, calls=1, seed=0), timeout=300)
  assert 'RecurrentModel.units' in point['error']
  assert point['error'].startswith('exit code 1: ')
  assert scaling.over_cap(point, SMALLEST.resolved())


def test_a_failed_points_error_names_the_exception_line_not_log_noise():
  stderr = ('Traceback (most recent call last):\n  File "x.py", line 1\n'
            'tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM '
            'when allocating tensor\nE0000 cuda_platform.cc:52] failed call to '
            'cuInit: CUDA error: Failed call to cuInit\n')
  assert scaling.child_error(1, stderr) == (
      'exit code 1: tensorflow.python.framework.errors_impl.'
      'ResourceExhaustedError: OOM when allocating tensor')
  assert scaling.child_error(-9, 'E0000 failed call to cuInit\n') == (
      'exit code -9: E0000 failed call to cuInit')
  assert scaling.child_error(-9, '') == 'exit code -9'


def test_the_slope_fit_recovers_known_exponents():
  xs = [100, 300, 1000, 3000]
  assert scaling_report.fit_slope(xs, [7.0 * x**1.5 for x in xs]) == (
      pytest.approx(1.5))
  rng = np.random.default_rng(0)
  noisy = [2.0 * x**-0.5 * math.exp(rng.normal(0, 0.01)) for x in xs]
  assert scaling_report.fit_slope(xs, noisy) == pytest.approx(-0.5, abs=0.05)
  assert scaling_report.fit_slope([100, 100], [1.0, 2.0]) is None
  assert scaling_report.fit_slope(xs, [0.0, 0.0, 0.0, 5.0]) is None  # One x left.


def _point(method, length, width, memory_bytes, seconds_per_step, floats):
  return {'method': method, 'length': length, 'width': width,
          'peak_memory_bytes': memory_bytes, 'own_state_floats': floats,
          'seconds_per_call': seconds_per_step * length,
          'cpu_seconds_per_call': seconds_per_step * length,
          'seconds_per_step': seconds_per_step,
          'cpu_seconds_per_step': seconds_per_step}


def test_slopes_of_synthetic_points_match_their_exponents():
  lengths, widths = (100, 1000, 10000), (16, 32, 64)
  record = {
      'points': [_point('bptt', t, 32, 5e3 * t, 1e-4, 0) for t in lengths]
                + [_point('truncated_bptt', t, 32, 2e6, 1e-4, 0)
                   for t in lengths]
                + [_point('oops', 100, 32, 1, 1, 0) | {'error': 'failed'}]
                + [_point('dni', 100, 32, 1, 1, 0)],  # One point: no slope.
      'width_points': [_point('rtrl', 100, n, 40.0 * n**3, 1e-9 * n**4, n**3)
                       for n in widths]}
  rows = {(row['method'], row['sweep']): row
          for row in scaling_report.slopes(record)}
  assert set(rows) == {('bptt', 'length'), ('truncated_bptt', 'length'),
                       ('rtrl', 'width')}
  bptt, truncated, rtrl = (rows['bptt', 'length'], rows['truncated_bptt', 'length'],
                           rows['rtrl', 'width'])
  assert bptt['memory_slope'] == pytest.approx(1.0) == bptt['memory_expected']
  assert bptt['time_slope'] == pytest.approx(1.0)  # Per sequence.
  assert truncated['memory_slope'] == pytest.approx(0.0, abs=1e-9)
  assert truncated['memory_expected'] == 0.0
  assert rtrl['memory_slope'] == pytest.approx(3.0) == rtrl['memory_expected']
  assert rtrl['time_slope'] == pytest.approx(4.0) == rtrl['time_expected']
  assert rtrl['state_slope'] == pytest.approx(3.0)


@pytest.mark.parametrize('flag, value', [('--scaling_time_cap', '0'),
                                         ('--scaling_memory_cap', '-5'),
                                         ('--scaling_method', 'bogus'),
                                         ('--scaling_length', '0'),
                                         ('--scaling_length', '2'),
                                         ('--scaling_batch', '-2')])
def test_a_bad_scaling_flag_exits_2_with_one_line(run_command, tmp_path, flag,
                                                  value):
  done = run_command('benchmark', '--scaling', f'{flag}={value}',
                     f'--output_dir={tmp_path}')
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1
  assert flag in lines[0] and value in lines[0]
  assert 'e.g.' in lines[0] or 'set it to' in lines[0]  # The fix.
  assert not list(tmp_path.iterdir())  # Nothing measured or written.


def test_artbp_points_record_their_longest_window_and_the_constant_variant():
  """ARTBP's point names the longest window it backpropagated through (what
  its peak memory holds), no longer than the sequence; ``artbp_constant`` is
  ARTBP with the constant truncation probability; a method with fixed windows
  records none."""
  assert scaling.method_arguments('artbp_constant', 60) == {
      **scaling.method_arguments('artbp', 60), 'schedule': 'constant'}
  points = {name: scaling.measure_point(name, length=60, width=4, batch=2,
                                        calls=1, seed=0)
            for name in ('artbp', 'artbp_constant', 'truncated_bptt')}
  for name in ('artbp', 'artbp_constant'):
    longest = points[name]['longest_window']
    assert isinstance(longest, int) and 1 <= longest <= 60, (name, longest)
  assert points['truncated_bptt']['longest_window'] is None
  # The tests keep 'auto' off (tests/conftest.py): no point compiled with XLA.
  assert [p['xla'] for p in points.values()] == [False] * 3
  with_xla = dict(points['truncated_bptt'], xla=True)
  assert scaling.describe_point(with_xla).endswith(', XLA')
  assert 'longest window' in scaling.describe_point(points['artbp'])

"""tfcredit-compare --seeds: each run once per seed, and the summary over seeds.

The summary's numbers are checked against values computed here by hand (means,
sample standard deviations, differences seed by seed), and end to end against
each run's own final_metrics.json.
"""

import importlib.util
import json
import math
import os

import pytest

from tfcredit import comparison_seeds
from tfcredit.errors import ConfigurationError
from tfcredit.testing import TINY_CONFIG

HAS_MATPLOTLIB = importlib.util.find_spec('matplotlib') is not None


def _row(run, seed, final, test, curve):
  return {'run': run, 'seed': seed, 'final': final, 'best': final - 1.0,
          'test': test, 'metric': 'perplexity', 'unit': 'tokens',
          'curve': curve, 'curve_name': 'valid/perplexity', 'evaluations': curve}


ROWS = [
    _row('tbptt', 0, 10.0, 12.0, [(100, 20.0), (200, 10.0)]),
    _row('artbp', 0, 9.0, 11.0, [(100, 18.0), (200, 9.0)]),
    _row('tbptt', 1, 14.0, 16.0, [(100, 22.0), (200, 14.0)]),
    _row('artbp', 1, 12.0, 15.5, [(100, 21.0), (200, 12.0)]),
]


def test_the_summary_is_each_runs_mean_spread_and_paired_difference():
  tbptt, artbp = comparison_seeds.summarize(ROWS)
  assert (tbptt['run'], artbp['run']) == ('tbptt', 'artbp')
  assert tbptt['seeds'] == artbp['seeds'] == [0, 1]
  assert tbptt['compared'] == 'test'  # Every row has a test value.
  assert tbptt['final']['mean'] == 12.0
  assert tbptt['final']['sd'] == pytest.approx(math.sqrt(8.0))  # (−2, +2), n − 1 = 1
  assert artbp['test']['values'] == [11.0, 15.5]
  assert artbp['best']['mean'] == pytest.approx(9.5)
  # Seed by seed: 11 − 12 and 15.5 − 16, not the difference of the means alone.
  assert artbp['difference']['values'] == [-1.0, -0.5]
  assert artbp['difference']['mean'] == -0.75
  assert artbp['difference']['sd'] == pytest.approx(math.sqrt(0.125))
  assert tbptt['difference']['values'] == [0.0, 0.0]
  assert artbp['best_difference']['values'] == [-1.0, -2.0]  # 8 − 9, 11 − 13
  # Mean curve with the lowest-to-highest band at each step.
  assert artbp['curve'] == [[100, 19.5, 18.0, 21.0], [200, 10.5, 9.0, 12.0]]


def test_without_a_test_metric_the_final_validation_is_compared():
  rows = [dict(row, test=None) for row in ROWS]
  tbptt, artbp = comparison_seeds.summarize(rows)
  assert tbptt['compared'] == 'final' and tbptt['test'] is None
  assert artbp['difference']['values'] == [-1.0, -2.0]


def test_the_band_keeps_only_the_steps_every_seed_has():
  assert comparison_seeds.band([[(1, 2.0), (2, 4.0)], [(2, 6.0), (3, 1.0)]]) == [
      [2, 5.0, 4.0, 6.0]]
  assert comparison_seeds.band([[(1, 2.0)], []]) == []


def test_the_summary_table():
  lines = comparison_seeds.markdown_table(
      comparison_seeds.summarize(ROWS)).splitlines()
  assert lines[0] == ('| run | final valid perplexity | best valid perplexity | '
                      'test perplexity | test perplexity, seeds 0 / 1 | '
                      '− tbptt, per seed | − tbptt, mean ± sd | '
                      'best valid − tbptt, per seed (mean ± sd) |')
  assert lines[2] == ('| tbptt | 12 ± 2.8 | 11 ± 2.8 | 14 ± 2.8 | 12 / 16 | — | — '
                      '| — |')
  # Best validation: tbptt 9 and 13, artbp 8 and 11, so −1 and −2 seed by seed.
  assert lines[3] == ('| artbp | 10.5 ± 2.1 | 9.5 ± 2.1 | 13.25 ± 3.2 | 11 / 15.5 | '
                      '-1 / -0.5 | -0.75 ± 0.35 | -1 / -2 (-1.5 ± 0.71) |')
  # Then each run's validation perplexity at each evaluation over the seeds:
  # tbptt (20, 22) and (10, 14), artbp (18, 21) and (9, 12).
  assert lines[4:] == [
      '', 'Validation perplexity, mean ± sd over seeds 0 / 1 at each evaluation, '
      'by tokens trained on:', '', '| tokens | tbptt | artbp |', '|---:|---:|---:|',
      '| 100 | 21 ± 1.4 | 19.5 ± 2.1 |', '| 200 | 12 ± 2.8 | 10.5 ± 2.1 |']


@pytest.mark.parametrize('values, message', [
    (['0', 'one'], "--seeds takes integers, got 'one'"),
    (['1', '2', '1'], '--seeds=1,2,1 repeats a seed'),
])
def test_bad_seeds_are_named(values, message):
  with pytest.raises(ConfigurationError, match=message):
    comparison_seeds.parse_seeds(values)
  assert comparison_seeds.parse_seeds([' 3', '0']) == [3, 0]


@pytest.mark.parametrize('extra, message', [
    (['--seeds=0,x'], "--seeds takes integers, got 'x'"),
    (['--seeds=0,1', '--seed=2'], 'give --seed or --seeds, not both'),
], ids=['not-an-integer', 'both'])
def test_compare_refuses_bad_seeds_before_training(tmp_path, run_command, extra,
                                                   message):
  done = run_command('compare', f'--gin_file={TINY_CONFIG}',
                     f'--output_dir={tmp_path}',
                     '--method=a: train.method = @TruncatedBPTT',
                     '--method=b: train.method = @TruncatedBPTT', *extra)
  assert done.returncode == 2
  assert message in done.stderr and 'Traceback' not in done.stderr
  assert os.listdir(tmp_path) == []


@pytest.mark.slow  # compare starts one training process per run and seed.
def test_compare_over_seeds_trains_each_seed_and_summarises_its_own_results(
    tmp_path, run_command):
  out = tmp_path / 'compare'
  done = run_command('compare', f'--gin_file={TINY_CONFIG}', f'--output_dir={out}',
                     '--method=K5: train.method = @TruncatedBPTT; '
                     'TruncatedBPTT.window = 5',
                     '--method=K20: train.method = @TruncatedBPTT; '
                     'TruncatedBPTT.window = 20',
                     '--gin_bindings=train.log_every_seconds = 1e9',
                     '--seeds=3,4')
  assert done.returncode == 0, done.stdout + done.stderr
  final = {}
  for seed in (3, 4):
    for run in ('K5', 'K20'):
      directory = out / f'seed_{seed}' / run
      final[run, seed] = json.load(open(directory / 'final_metrics.json'))
      assert f'train.seed = {seed}' in open(directory / 'operative_config.gin').read()
    # Each seed's own comparison, as a single-seed compare writes it.
    assert [row['run'] for row in json.load(open(out / f'seed_{seed}' /
                                                 'comparison.json'))] == ['K5', 'K20']
  # The seed reaches the runs: other initial weights, other results.
  assert final['K5', 3]['valid_mse'] != final['K5', 4]['valid_mse']
  summary = json.load(open(out / 'comparison.json'))['summary']
  k5, k20 = summary
  assert k20['final']['values'] == pytest.approx(
      [final['K20', 3]['valid_mse'], final['K20', 4]['valid_mse']])
  assert k20['difference']['values'] == pytest.approx(
      [final['K20', s]['test_mse'] - final['K5', s]['test_mse'] for s in (3, 4)])
  assert k5['test']['mean'] == pytest.approx(
      (final['K5', 3]['test_mse'] + final['K5', 4]['test_mse']) / 2)
  assert '| K20 |' in open(out / 'comparison.md').read()
  # Per evaluation, the mean over the seeds of each run's own validation MSE.
  for entry in (k5, k20):
    rows = {seed: json.load(open(out / f'seed_{seed}' / 'comparison.json'))
            for seed in (3, 4)}
    curves = [next(row['evaluations'] for row in rows[seed]
                   if row['run'] == entry['run']) for seed in (3, 4)]
    assert [step for step, _ in entry['evaluations']] == [32, 64]
    assert [spread['mean'] for _, spread in entry['evaluations']] == pytest.approx(
        [(a[1] + b[1]) / 2 for a, b in zip(*curves)])
  if HAS_MATPLOTLIB:
    assert os.path.getsize(out / 'comparison.png') > 1000

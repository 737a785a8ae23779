"""compare.py and gradient_fidelity.py end to end, and the fidelity statistics."""

import importlib.util
import json
import os

import numpy as np
import pytest

from checkout import run_tool
from tfcredit import comparison
from tfcredit import fidelity
from tfcredit.errors import ConfigurationError
from tfcredit.testing import hparams_sessions
from tfcredit.testing import TINY_CONFIG
from tfcredit.testing import tensorflow_startup_lines

HAS_MATPLOTLIB = importlib.util.find_spec('matplotlib') is not None


def _tables(path):
  """Each markdown table of the file, as its rows of cells (header included)."""
  tables_found, current = [], None
  for line in open(path).read().splitlines():
    if line.startswith('|'):
      if current is None:
        current = []
        tables_found.append(current)
      if not line.startswith('|--') and not line.startswith('|---'):
        current.append([cell.strip() for cell in line.strip('|').split('|')])
    else:
      current = None
  return tables_found


def _table_rows(path):
  return _tables(path)[0][1:]


@pytest.mark.slow  # compare starts one training process per run.
def test_compare_runs_each_method_and_tabulates_its_own_results(tmp_path):
  out = tmp_path / 'compare'
  done = run_tool('compare.py', f'--gin_file={TINY_CONFIG}', f'--output_dir={out}',
                 '--method=tbptt K=5: train.method = @TruncatedBPTT; '
                 'TruncatedBPTT.window = 5',
                 '--method=tbptt K=20: train.method = @TruncatedBPTT; '
                 'TruncatedBPTT.window = 20',
                 '--gin_bindings=train.log_every_seconds = 1e9')
  assert done.returncode == 0, done.stdout + done.stderr
  # The runs' output (merged into compare's) starts quietly too.
  assert not tensorflow_startup_lines(done.stdout + done.stderr), done.stdout
  rows = _table_rows(out / 'comparison.md')
  assert [row[0] for row in rows] == ['tbptt K=5', 'tbptt K=20']
  results = json.load(open(out / 'comparison.json'))
  for row, result, directory in zip(rows, results, ('tbptt_K=5', 'tbptt_K=20')):
    final = json.load(open(out / directory / 'final_metrics.json'))
    # The table reports each run's own numbers, not another run's.
    assert float(row[1]) == pytest.approx(final['valid_mse'], rel=1e-3)
    assert float(row[3]) == pytest.approx(final['test_mse'], rel=1e-3)
    assert int(row[6].replace(',', '')) == final['updates'] == 8
    assert int(row[7].replace(',', '')) == final['units_seen'] == 64
    # One validation point per epoch, read back from the events.
    assert [step for step, _ in result['curve']] == [32, 64]
    assert result['best'] == min(value for _, value in result['curve'])
    assert result['curve'][-1][1] == pytest.approx(final['valid_mse'], rel=1e-5)
    assert 'window = %s' % directory.split('=')[1] in open(
        out / directory / 'operative_config.gin').read()
    # Each run is its own HParams session, so `tensorboard --logdir out` shows
    # the runs side by side.
    [(trial, hparams)] = hparams_sessions(str(out / directory))
    assert trial == directory
    assert hparams['method.window'] == float(directory.split('=')[1])
  # Same seed: the same initial weights, so different windows differ only in
  # training; the two runs must not be identical copies.
  assert results[0]['final'] != results[1]['final']
  # The second table: each run's validation MSE at each evaluation, its own.
  header, *evaluations = _tables(out / 'comparison.md')[1]
  assert header == ['sequences', 'tbptt K=5', 'tbptt K=20']
  assert [int(row[0]) for row in evaluations] == [32, 64]
  for column, result in enumerate(results, start=1):
    assert [float(row[column]) for row in evaluations] == pytest.approx(
        [value for _, value in result['curve']], rel=1e-3)
  # --tabulate_only trains nothing and writes the same results from the runs'
  # directories.
  written = {path: os.path.getmtime(path) for path in out.glob('*/*')}
  os.remove(out / 'comparison.json')
  again = run_tool('compare.py', f'--gin_file={TINY_CONFIG}', f'--output_dir={out}',
                   '--method=tbptt K=5: train.method = @TruncatedBPTT; '
                   'TruncatedBPTT.window = 5',
                   '--method=tbptt K=20: train.method = @TruncatedBPTT; '
                   'TruncatedBPTT.window = 20', '--tabulate_only')
  assert again.returncode == 0, again.stdout + again.stderr
  assert json.load(open(out / 'comparison.json')) == results
  assert {path: os.path.getmtime(path) for path in out.glob('*/*')} == written
  if HAS_MATPLOTLIB:
    assert os.path.getsize(out / 'comparison.png') > 1000


@pytest.mark.parametrize('extra, message', [
    ([], 'at least two --gin_file'),
    (['--method=TruncatedBPTT.window = 4'], 'NAME: BINDINGS'),
], ids=['single-config', 'malformed-method'])
def test_compare_rejects_bad_flags(tmp_path, run_command, extra, message):
  done = run_command('compare', f'--gin_file={TINY_CONFIG}', f'--output_dir={tmp_path}',
                  *extra)
  assert done.returncode == 2
  assert message in done.stderr and 'Traceback' not in done.stderr


def test_compare_checks_every_config_before_training_any(tmp_path, run_command):
  done = run_command('compare', f'--gin_file={TINY_CONFIG}', f'--output_dir={tmp_path}',
                  '--method=good: train.method = @TruncatedBPTT',
                  '--method=typo: train.method = @TruncatedBPTT; '
                  'TruncatedBPTT.windoww = 5')
  assert done.returncode == 2, done.stdout + done.stderr
  assert "run 'typo' (nothing was trained)" in done.stderr
  assert 'windoww' in done.stderr and 'Traceback' not in done.stderr
  # The first run did not train: its directory was never made.
  assert not (tmp_path / 'good').exists()


def test_compare_plans_a_run_per_config_or_per_method():
  assert comparison.plan_runs(['a/x.gin', 'b/y.gin'], None) == [
      ('x', ['a/x.gin'], []), ('y', ['b/y.gin'], [])]
  # The same file name twice: the relative paths name the runs.
  assert [name for name, _, _ in comparison.plan_runs(['a/x.gin', 'b/x.gin'], [])
          ] == ['a_x.gin', 'b_x.gin']
  assert comparison.plan_runs(['base.gin'], [
      'tbptt K=5: train.method = @TruncatedBPTT; TruncatedBPTT.window = 5']) == [
          ('tbptt K=5', ['base.gin'],
           ['train.method = @TruncatedBPTT', 'TruncatedBPTT.window = 5'])]
  with pytest.raises(ConfigurationError, match='--gin_file is required'):
    comparison.plan_runs([], ['a: x = 1'])
  with pytest.raises(ConfigurationError, match='names must differ'):
    comparison.plan_runs(['base.gin'], ['K 5: x = 1', 'K/5: x = 2'])
  assert comparison.slug('tbptt K=5, α') == 'tbptt_K=5' and comparison.slug('/') == 'run'


def test_every_run_gets_the_shared_bindings_then_its_own_then_the_seed():
  settings = comparison.Settings(bindings=['a = 1'], seed=3)
  assert comparison.run_bindings(['b = 2'], settings) == [
      'a = 1', 'b = 2', 'train.seed = 3']


def test_the_comparison_table_formats_each_run():
  row = {'run': 'x', 'metric': 'perplexity', 'final': 12.3456, 'best': 11.0,
         'test': None, 'unit': 'tokens', 'units_per_second': 1234.4,
         'wall_seconds': 5.4, 'updates': 1000, 'units_seen': 20000}
  lines = comparison.markdown_table([row]).splitlines()
  assert lines[0] == ('| run | final valid perplexity | best valid perplexity | '
                      'test perplexity | tokens/s | wall time | updates | tokens |')
  assert lines[2] == '| x | 12.35 | 11 | — | 1,234 | 5 s | 1,000 | 20,000 |'


def test_the_evaluations_table_aligns_the_runs_by_units_trained_on():
  rows = [{'run': 'a', 'metric': 'perplexity', 'unit': 'tokens',
           'evaluations': [(1000, 512.345), (2000, 300.0)]},
          {'run': 'b', 'metric': 'perplexity', 'unit': 'tokens',
           'evaluations': [(1000, 600.0), (2000, 250.5), (3000, 240.0)]}]
  assert comparison.evaluations_table(rows).splitlines() == [
      'Validation perplexity at each evaluation, by tokens trained on:', '',
      '| tokens | a | b |', '|---:|---:|---:|',
      '| 1,000 | 512.3 | 600 |', '| 2,000 | 300 | 250.5 |', '| 3,000 | — | 240 |']
  assert comparison.evaluations_table([{**rows[0], 'evaluations': []}]) == ''


def test_a_long_evaluations_table_keeps_evenly_spaced_ones_and_the_last():
  row = {'run': 'a', 'metric': 'mse', 'unit': 'samples',
         'evaluations': [(step, 1.0) for step in range(1, 66)]}
  lines = comparison.evaluations_table([row]).splitlines()
  assert lines[0] == ('Validation mse at each evaluation, by samples trained on '
                      '(one in 3 of the 65 evaluations, and the last; all in '
                      'comparison.json):')
  assert [int(line.split('|')[1]) for line in lines[4:]] == [
      1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37, 40, 43, 46, 49, 52, 55,
      58, 61, 64, 65]


def test_recorded_results_are_read_without_training(tmp_path):
  with pytest.raises(comparison.RunFailed) as failure:
    comparison.recorded('tbptt K=5', str(tmp_path))
  assert failure.value.exit_code == 1
  assert str(failure.value) == (
      f"run 'tbptt K=5' has no results in {tmp_path} (no final_metrics.json): "
      'train it first, by the same command without --tabulate_only')
  (tmp_path / 'final_metrics.json').write_text('{"valid_mse": 0.25}')
  assert comparison.recorded('x', str(tmp_path)) == ({'valid_mse': 0.25}, 0.0)
  (tmp_path / comparison.WALL_TIME).write_text('{"seconds": 12.5}')
  assert comparison.recorded('x', str(tmp_path)) == ({'valid_mse': 0.25}, 12.5)


def test_a_failed_run_ends_the_comparison_naming_it(tmp_path, run_command,
                                                    monkeypatch):
  started = []

  def failing(name, gin_files, bindings, model_dir, settings):
    del gin_files, bindings, model_dir, settings
    started.append(name)
    return None, 7

  monkeypatch.setattr(comparison, 'train', failing)
  done = run_command('compare', f'--gin_file={TINY_CONFIG}', f'--output_dir={tmp_path}',
                     '--method=a: train.method = @TruncatedBPTT',
                     '--method=b: train.method = @TruncatedBPTT')
  assert done.returncode == 1  # Exit codes other than 1 and 2 read as 1.
  assert started == ['a']
  assert (f"error: run 'a' failed (exit 7); its output is above and its "
          f"directory is {tmp_path / 'a'}") in done.stderr
  assert not (tmp_path / 'comparison.md').exists()


@pytest.mark.slow  # The fidelity tool end to end.
def test_gradient_fidelity_end_to_end(tmp_path, run_command):
  out = tmp_path / 'fidelity'
  done = run_command('gradient_fidelity', f'--gin_file={TINY_CONFIG}', f'--output_dir={out}',
                 '--method=full BPTT: train.method = @BPTT',
                 '--method=truncated BPTT K={window}: train.method = @TruncatedBPTT; '
                 'TruncatedBPTT.window = {window}',
                 '--windows=4', '--lengths=24', '--draws=2', '--sequences=16')
  assert done.returncode == 0, done.stdout + done.stderr
  rows = json.load(open(out / 'fidelity.json'))
  assert [row['method'] for row in rows] == ['full BPTT', 'truncated BPTT K=4']
  assert all(row['length'] == 24 for row in rows)
  full, truncated = rows
  assert full['relative_bias'] < 1e-5 and full['cosine'] > 1 - 1e-6
  # The adding task's answer depends on two marked steps anywhere in the
  # sequence: windows of 4 cut most of those dependencies.
  assert truncated['relative_bias'] > 0.05
  assert truncated['relative_spread'] == 0.0  # Deterministic estimator.
  assert len(_table_rows(out / 'fidelity.md')) == 2
  if HAS_MATPLOTLIB:
    assert os.path.getsize(out / 'fidelity.png') > 1000


@pytest.mark.slow  # The fidelity tool end to end with two references.
def test_rtrl_is_the_same_reference_as_full_bptt():
  """``reference='rtrl'``: the exact gradient computed forward (memory
  independent of the length) measures every estimator as full BPTT does."""
  variants = [fidelity.Variant.parse('full BPTT: train.method = @BPTT'),
              fidelity.Variant.parse('truncated BPTT K={window}: train.method = '
                                     '@TruncatedBPTT; TruncatedBPTT.window = {window}')]
  rows = {reference: fidelity.measure([TINY_CONFIG], [], variants, windows=[4],
                                      lengths=[12], draws=1, sequences=6,
                                      reference=reference)
          for reference in ('bptt', 'rtrl')}
  for by_bptt, by_rtrl in zip(rows['bptt'], rows['rtrl']):
    assert by_rtrl['reference'] == 'rtrl' and by_bptt['reference'] == 'bptt'
    assert by_rtrl['reference_norm'] == pytest.approx(by_bptt['reference_norm'],
                                                      rel=1e-5)
    for key in ('relative_bias', 'cosine', 'norm_ratio'):
      assert by_rtrl[key] == pytest.approx(by_bptt[key], rel=1e-4, abs=1e-5)
  assert rows['rtrl'][0]['relative_bias'] < 1e-5  # Full BPTT against RTRL.
  assert rows['rtrl'][1]['relative_bias'] > 0.05  # Truncation's bias.
  assert 'RTRL' in fidelity.markdown_table(rows['rtrl']).splitlines()[2]
  with pytest.raises(ConfigurationError, match='--reference'):
    fidelity.measure([TINY_CONFIG], [], variants[:1], windows=[4], lengths=[12],
                     draws=1, sequences=6, reference='uoro')


def test_gradient_fidelity_rejects_a_malformed_method(tmp_path, run_command):
  done = run_command('gradient_fidelity', f'--gin_file={TINY_CONFIG}',
                 f'--output_dir={tmp_path}', '--method=TruncatedBPTT.window = 4')
  assert done.returncode == 2
  assert 'NAME: BINDINGS' in done.stderr and 'Traceback' not in done.stderr


def test_gradient_statistics_by_hand():
  reference = np.array([3.0, 4.0])  # Norm 5.
  deviation = np.array([1.0, -2.0])
  stats = fidelity.gradient_statistics(
      np.stack([reference + deviation, reference - deviation]), reference)
  assert stats['relative_bias'] == pytest.approx(0.0, abs=1e-12)
  assert stats['cosine'] == pytest.approx(1.0)
  # Unbiased covariance of two draws: trace = (|d|^2 + |d|^2) / (2 - 1) = 10.
  assert stats['relative_spread'] == pytest.approx(np.sqrt(10.0) / 5.0)
  assert stats['bias_noise'] == pytest.approx(np.sqrt(10.0 / 2) / 5.0)
  expected_cosines = [(reference @ (reference + s * deviation))
                      / (5.0 * np.linalg.norm(reference + s * deviation))
                      for s in (1, -1)]
  assert stats['mean_draw_cosine'] == pytest.approx(np.mean(expected_cosines))
  scaled = fidelity.gradient_statistics(np.stack([2 * reference]), reference)
  assert scaled['relative_bias'] == pytest.approx(1.0)
  assert scaled['cosine'] == pytest.approx(1.0)
  assert scaled['norm_ratio'] == pytest.approx(2.0)
  orthogonal = fidelity.gradient_statistics(np.array([[-4.0, 3.0]]), reference)
  assert orthogonal['cosine'] == pytest.approx(0.0, abs=1e-12)
  assert orthogonal['relative_bias'] == pytest.approx(np.sqrt(2.0))
  assert orthogonal['norm_ratio'] == pytest.approx(1.0)
  # The two draws above average to the reference itself.
  assert stats['norm_ratio'] == pytest.approx(1.0)


def test_variant_parsing():
  variant = fidelity.Variant.parse(
      'ARTBP L0={window}: train.method = @ARTBP; ARTBP.mean_length = {window}')
  assert variant.sweeps_window
  assert variant.label(8) == 'ARTBP L0=8'
  assert variant.bound(8) == ['train.method = @ARTBP', 'ARTBP.mean_length = 8']
  with pytest.raises(ConfigurationError, match='NAME: BINDINGS'):
    fidelity.Variant.parse('no bindings:')


@pytest.mark.slow  # Trains, then runs the fidelity tool end to end.
def test_fidelity_restores_a_trained_synthesizer_only_when_asked(tmp_path):
  import gin
  import tfcredit
  copy = ['train.task = @CopyTask', 'CopyTask.sequence_length = 10',
          'CopyTask.train_batches_per_epoch = 4']
  gin.clear_config()
  tfcredit.config.parse([TINY_CONFIG], copy + [
      'train.method = @DNI', 'DNI.window = 5',
      'DNI.synthesizer_learning_rate = 0.05', 'train.log_every_seconds = 1e9'])
  run = str(tmp_path / 'dni_run')
  tfcredit.train(run, export_dir=None, evaluate_test=False)
  variants = [fidelity.Variant.parse(
                  'DNI: train.method = @DNI; DNI.window = 5'),
              # The same arithmetic as DNI's (no XLA), for exact equality.
              fidelity.Variant.parse(
                  'TBPTT: train.method = @TruncatedBPTT; TruncatedBPTT.window = 5; '
                  'TruncatedBPTT.jit_compile = False')]
  try:
    measured = {
        restore: fidelity.measure([TINY_CONFIG], copy, variants, windows=[5],
                                  lengths=[None], draws=1, sequences=8,
                                  checkpoint=run, restore_method_state=restore)
        for restore in (False, True)}
  finally:
    gin.clear_config()
  fresh_dni, truncated = measured[False]
  trained_dni, truncated_again = measured[True]
  # A fresh synthesizer (zero last layer) adds nothing: exactly truncated BPTT.
  assert fresh_dni['relative_bias'] == truncated['relative_bias']
  # The trained one injects its predictions; truncated BPTT is not restored into.
  assert trained_dni['relative_bias'] != truncated['relative_bias']
  assert truncated_again['relative_bias'] == truncated['relative_bias']


def test_fidelity_refuses_a_checkpoint_without_the_models_weights(tmp_path):
  import tensorflow as tf
  # A checkpoint that holds something else: measuring would silently use fresh
  # weights for whatever it lacks.
  path = tf.train.Checkpoint(step=tf.Variable(3)).write(str(tmp_path / 'ckpt'))
  variant = fidelity.Variant.parse('TBPTT: train.method = @TruncatedBPTT')
  with pytest.raises(ConfigurationError, match='does not hold every weight'):
    fidelity.measure([TINY_CONFIG], [], [variant], windows=[5], lengths=[None], draws=1,
                     sequences=4, checkpoint=path)


def test_the_shared_table_writer_keeps_columns_aligned():
  from tfcredit import tables  # pylint: disable=g-import-not-at-top
  text = tables.markdown_table(['a', 'b'], [tables.LEFT, tables.RIGHT],
                               [['x', '1'], ['y', '22']])
  assert text.splitlines() == ['| a | b |', '|---|---:|', '| x | 1 |', '| y | 22 |']
  with pytest.raises(ValueError, match='3 cells for 2 columns'):
    tables.markdown_table(['a', 'b'], [tables.LEFT, tables.RIGHT], [['x', '1', '2']])
  with pytest.raises(ValueError, match='1 alignments for 2 columns'):
    tables.markdown_table(['a', 'b'], [tables.LEFT], [])

"""The entry scripts end to end: exit codes, messages, the final JSON line."""

import json
import os

import pytest

from tfcredit.testing import run_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'tfcredit', 'gin_configs', 'testing', 'tiny.gin')


def test_train_then_evaluate_the_export(tmp_path):
  done = run_tool('train.py', f'--gin_file={TINY}', f'--model_dir={tmp_path}/run',
                 f'--export_dir={tmp_path}/exports')
  assert done.returncode == 0, done.stderr
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result['model_dir'] == f'{tmp_path}/run'
  for name in ('config.gin', 'operative_config.gin'):
    assert os.path.getsize(tmp_path / 'run' / name) > 0
  assert 'TruncatedBPTT.window = 5' in (tmp_path / 'run' / 'config.gin').read_text()
  evaluated = run_tool('evaluate.py', f'--saved_model={result["saved_model"]}',
                      '--split=valid')
  assert evaluated.returncode == 0, evaluated.stderr
  metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert metrics['mse'] == pytest.approx(result['valid_mse'], rel=1e-6)


def _ptb_bindings(data_dir, download=False):
  return [f'--data_dir={data_dir}', '--gin_bindings=train.task = @LanguageModelTask',
          f'--gin_bindings=LanguageModelTask.download = {download}']


@pytest.mark.parametrize('extra, code, words', [
    (['--gin_bindings=TruncatedBPTT.windw = 3'], 2, ['windw']),
    (["--gin_bindings=RecurrentModel.cell = 'lstn'"], 2, ['RecurrentModel.cell',
                                                          'lstn']),
    (['--gin_bindings=TruncatedBPTT.window = 0'], 2, ['TruncatedBPTT.window', '0']),
    (["--gin_bindings=LanguageModelTask.corpus = 'ptbb'", '--gin_bindings='
      'train.task = @LanguageModelTask'], 2, ['ptbb', 'ptb_char']),
    (['--gin_file=/nonexistent.gin'], 2, ['/nonexistent.gin']),
], ids=['misspelt-binding', 'unknown-cell', 'window-0', 'unknown-corpus',
        'missing-gin-file'])
def test_configuration_errors_exit_2_with_a_message(tmp_path, extra, code, words):
  done = run_tool('train.py', f'--gin_file={TINY}', f'--model_dir={tmp_path}/run',
                 *extra)
  assert done.returncode == code, done.stderr
  assert any(line.startswith('error: ') for line in done.stderr.splitlines())
  assert 'Traceback' not in done.stderr
  for word in words:
    assert word in done.stderr


def test_missing_data_exits_1_naming_files_and_folder(tmp_path):
  done = run_tool('train.py', f'--gin_file={TINY}', f'--model_dir={tmp_path}/run',
                 *_ptb_bindings(tmp_path / 'data'))
  assert done.returncode == 1, done.stderr
  assert 'Traceback' not in done.stderr
  assert 'ptb.train.txt' in done.stderr and str(tmp_path / 'data' / 'ptb') in done.stderr


def test_checksum_mismatch_exits_1_naming_the_path(tmp_path):
  folder = tmp_path / 'data' / 'ptb'
  folder.mkdir(parents=True)
  for split in ('train', 'valid', 'test'):
    (folder / f'ptb.{split}.txt').write_text(' the cat sat\n')
  done = run_tool('train.py', f'--gin_file={TINY}', f'--model_dir={tmp_path}/run',
                 *_ptb_bindings(tmp_path / 'data'))
  assert done.returncode == 1, done.stderr
  assert 'Traceback' not in done.stderr
  assert str(folder / 'ptb.') in done.stderr and 'sha256' in done.stderr.lower()


def test_evaluate_rejects_a_path_that_is_not_an_export(tmp_path):
  done = run_tool('evaluate.py', f'--saved_model={tmp_path}')
  assert done.returncode == 2 and 'saved_model.pb' in done.stderr

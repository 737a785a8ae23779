"""The entry scripts end to end: exit codes, messages, the final JSON line.

Most run in this process (``run_entry_point``): what they check is a command's
messages, exit code and output. The ones that start a process (``run_tool``,
marked ``slow``) check what only a process shows: TensorFlow's start-up lines
kept off stderr.
"""

import collections
import configparser
import json
import os
import re

import pytest

from checkout import REPOSITORY
from checkout import run_tool
from checkout import run_tools
from tfcredit import _startup
from tfcredit.testing import TINY_CONFIG
from tfcredit.testing import tensorflow_startup_lines



def _startup_lines(stderr, first=20):
  return tensorflow_startup_lines(stderr, first)


def test_train_then_evaluate_the_export(tmp_path, run_command):
  done = run_command('train', f'--gin_file={TINY_CONFIG}', f'--model_dir={tmp_path}/run',
              f'--export_dir={tmp_path}/exports')
  assert done.returncode == 0, done.stderr
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result['model_dir'] == f'{tmp_path}/run'
  for name in ('config.gin', 'operative_config.gin'):
    assert os.path.getsize(tmp_path / 'run' / name) > 0
  assert 'TruncatedBPTT.window = 5' in (tmp_path / 'run' / 'config.gin').read_text()
  evaluated = run_command('evaluate', f'--saved_model={result["saved_model"]}',
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
def test_configuration_errors_exit_2_with_a_message(tmp_path, run_command, extra,
                                                    code, words):
  done = run_command('train', f'--gin_file={TINY_CONFIG}', f'--model_dir={tmp_path}/run',
              *extra)
  assert done.returncode == code, done.stderr
  assert any(line.startswith('error: ') for line in done.stderr.splitlines())
  assert 'Traceback' not in done.stderr
  for word in words:
    assert word in done.stderr


def test_missing_data_exits_1_naming_files_and_folder(tmp_path, run_command):
  done = run_command('train', f'--gin_file={TINY_CONFIG}', f'--model_dir={tmp_path}/run',
              *_ptb_bindings(tmp_path / 'data'))
  assert done.returncode == 1, done.stderr
  assert 'Traceback' not in done.stderr
  assert 'ptb.train.txt' in done.stderr and str(tmp_path / 'data' / 'ptb') in done.stderr


def test_checksum_mismatch_exits_1_naming_the_path(tmp_path, run_command):
  folder = tmp_path / 'data' / 'ptb'
  folder.mkdir(parents=True)
  for split in ('train', 'valid', 'test'):
    (folder / f'ptb.{split}.txt').write_text(' the cat sat\n')
  done = run_command('train', f'--gin_file={TINY_CONFIG}', f'--model_dir={tmp_path}/run',
              *_ptb_bindings(tmp_path / 'data'))
  assert done.returncode == 1, done.stderr
  assert 'Traceback' not in done.stderr
  assert str(folder / 'ptb.') in done.stderr and 'sha256' in done.stderr.lower()


def test_evaluate_rejects_a_path_that_is_not_an_export(tmp_path, run_command):
  done = run_command('evaluate', f'--saved_model={tmp_path}')
  assert done.returncode == 2 and 'saved_model.pb' in done.stderr


@pytest.mark.slow
def test_quiet_by_default_and_verbose_on_request(tmp_path):
  quiet, verbose, listed = run_tools(
      ('evaluate.py', f'--saved_model={tmp_path}'),
      ('evaluate.py', f'--saved_model={tmp_path}', '--verbose'),
      ('train.py', '--help'))
  assert quiet.returncode == 2
  assert quiet.stderr.startswith('error: '), quiet.stderr  # Nothing before it.
  assert not _startup_lines(quiet.stderr), quiet.stderr
  assert verbose.returncode == 2 and 'saved_model.pb' in verbose.stderr
  assert 'Unknown command line flag' not in verbose.stderr
  assert '--[no]verbose' in listed.stdout and '--gin_file' in listed.stdout  # absl exits 1


@pytest.mark.slow
def test_mirrored_without_gpus_is_said_once_in_our_words(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.config.list_physical_devices('GPU'):
    pytest.skip('this machine has a GPU')
  done = run_tool('train.py', f'--gin_file={TINY_CONFIG}', f'--model_dir={tmp_path}/run',
                  '--strategy=mirrored', '--gin_bindings=TruncatedBPTT.windw = 3')
  assert done.returncode == 2 and 'windw' in done.stderr
  warnings = [line for line in done.stderr.splitlines() if 'GPU' in line]
  assert len(warnings) == 1 and warnings[0].startswith(
      'warning: --strategy=mirrored found no GPU'), done.stderr
  assert not _startup_lines(done.stderr), done.stderr


def test_a_bad_flag_exits_2_naming_it(run_command):
  done = run_command('train', f'--gin_file={TINY_CONFIG}', '--gin_fil=x')
  assert done.returncode == 2
  assert done.stderr.startswith('error: ') and 'gin_fil' in done.stderr
  assert 'Traceback' not in done.stderr


@pytest.mark.parametrize('argv, orig_argv, expected', [
    (['/venv/bin/tfcredit-train', '--gin_file=x'], None, True),
    (['/venv/Scripts/tfcredit-evaluate.exe'], None, True),
    (['/repo/tools/train.py'], None, True),
    (['/repo/tools/other.py'], None, False),
    (['/elsewhere/train.py'], None, False),
    (['-m'], ['python', '-m', 'tfcredit.cli.compare', '--x'], True),
    (['-m'], ['python', '-m', 'pytest', 'tests'], False),
    (['-c'], ['python', '-c', 'import tfcredit'], False),
])
def test_which_processes_are_entry_points(argv, orig_argv, expected):
  assert _startup.is_command(argv, orig_argv) is expected


def _console_scripts():
  """``{script: module}`` from setup.cfg, the one list of the commands."""
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPOSITORY, 'setup.cfg'))
  scripts = {}
  for line in parser['options.entry_points']['console_scripts'].strip().splitlines():
    script, target = (part.strip() for part in line.split('='))
    scripts[script] = target
  return scripts


def test_a_flag_name_has_one_type_in_every_command():
  """Commands share one flag registry when several run in one process (the
  tests' ``run_command``), and the first definition of a name wins: a name
  defined as a string in one command and repeatable in another would hand the
  second a string, iterated character by character."""
  pattern = re.compile(r"define(?:_flag)?\(\s*flags\.(DEFINE_\w+),\s*'(\w+)'")
  kinds = collections.defaultdict(set)
  cli = os.path.join(REPOSITORY, 'tfcredit', 'cli')
  for name in sorted(os.listdir(cli)):
    if name.endswith('.py'):
      for kind, flag in pattern.findall(open(os.path.join(cli, name)).read()):
        kinds[flag].add((kind, name))
  assert len(kinds) > 30, sorted(kinds)  # The pattern finds the definitions.
  mixed = {flag: sorted(where) for flag, where in kinds.items()
           if len({kind for kind, _ in where}) > 1}
  assert not mixed, mixed


def test_every_console_script_is_a_cli_main_that_starts_quietly():
  scripts = _console_scripts()
  assert 'tfcredit-train' in scripts and 'tfcredit-profile' in scripts
  modules = set()
  for script, target in scripts.items():
    module, function = target.split(':')
    assert module.startswith('tfcredit.cli.') and function == 'main', target
    modules.add(module[len('tfcredit.cli.'):])
    assert _startup.is_command([f'/venv/bin/{script}']), script
    assert _startup.is_command([os.path.join(REPOSITORY, 'tools', module.split('.')[-1]
                                             + '.py')]), script
    assert os.path.isfile(os.path.join(REPOSITORY, 'tools',
                                       module.split('.')[-1] + '.py')), script
  # Every entry-point module is installed as a script, and no other is.
  assert modules == set(_startup.command_modules())


@pytest.mark.parametrize('args, expected', [
    ([], False), (['--verbose'], True), (['--verbose', '--noverbose'], False),
    (['--verbose=false'], False), (['--verbose=true'], True),
    (['--', '--verbose'], False),
])
def test_verbose_on_the_command_line(args, expected):
  assert _startup.verbose_requested(['tfcredit-train', *args]) is expected


@pytest.mark.parametrize('flag', ['--forward_mode_units=0', '--sparse_gru_units=0',
                                  '--rounds=0'])
def test_benchmark_refuses_a_non_positive_count_naming_the_flag(flag, tmp_path,
                                                                run_command):
  done = run_command('benchmark', flag, '--replicas_row=false',
              f'--output_dir={tmp_path}')
  assert done.returncode == 2, done.stderr
  name = flag.split('=')[0]
  assert f'error: {name}' in done.stderr and '0' in done.stderr, done.stderr
  assert 'Traceback' not in done.stderr
  assert not os.listdir(tmp_path)  # Refused before measuring anything.

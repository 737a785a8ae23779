"""The built wheel is a working install: packages, packaged configs, console scripts.

Builds the wheel from a copy of the source (so the checkout gets no ``build/``),
installs it with ``--no-deps`` into a fresh virtual environment that sees this
interpreter's packages (TensorFlow, gin...), and from a temporary directory
outside the checkout trains the packaged tiny config with ``tfcredit-train`` and
evaluates its export with ``tfcredit-evaluate``.

The checkout's own editable install must not leak in: setuptools implements it
as a ``.pth`` file in this interpreter's site-packages that installs an import
hook, and that hook serves any ``tfcredit.*`` module missing from the wheel (a
``tfcredit.tasks`` left out of the wheel would still import). So the environment
is not made with ``--system-site-packages`` (which runs that ``.pth``); a ``.pth``
of plain directory lines puts this interpreter's site-packages on its path
instead (directories added that way have their own ``.pth`` files ignored), and
the test asserts that every ``tfcredit`` module comes from the environment.
"""

import configparser
import json
import os
import shutil
import site
import subprocess
import sys
import venv

import pytest

from checkout import REPOSITORY
from checkout import run_together
from tfcredit.testing import tensorflow_startup_lines

# A wheel built and installed in a clean environment, its commands run as processes.
pytestmark = pytest.mark.slow

SOURCE_FILES = ('setup.py', 'setup.cfg', 'pyproject.toml', 'README.md', 'LICENSE')
# The package, and the top-level configs the wheel maps into it.
SOURCE_FOLDERS = ('tfcredit', 'gin_configs')


def _console_scripts():
  """The console scripts declared in setup.cfg, the one list of them."""
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPOSITORY, 'setup.cfg'))
  lines = parser['options.entry_points']['console_scripts'].strip().splitlines()
  return [line.split('=')[0].strip() for line in lines]


def _run(command, cwd, env, timeout=600):
  return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _clean_environment(venv_dir):
  """No PYTHONPATH, no user site, no TensorFlow log level: what a user has."""
  env = {key: value for key, value in os.environ.items()
         if key not in ('PYTHONPATH', 'PYTHONHOME', 'TF_CPP_MIN_LOG_LEVEL',
                        'TFCREDIT_DATA_DIR')}
  env['PYTHONNOUSERSITE'] = '1'
  env['PATH'] = os.path.join(venv_dir, 'bin') + os.pathsep + env.get('PATH', '')
  env['VIRTUAL_ENV'] = str(venv_dir)
  return env


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(virtual environment directory, its python, environment) with the wheel."""
  root = tmp_path_factory.mktemp('packaging')
  source = root / 'source'
  for name in SOURCE_FOLDERS:
    shutil.copytree(os.path.join(REPOSITORY, name), source / name,
                    ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
  for name in SOURCE_FILES:
    shutil.copy(os.path.join(REPOSITORY, name), source / name)
  wheels = root / 'wheels'
  built = _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                '--no-build-isolation', '-q', '-w', str(wheels), str(source)],
               cwd=root, env=dict(os.environ))
  assert built.returncode == 0, built.stdout + built.stderr
  wheel, = wheels.glob('tfcredit-*.whl')

  venv_dir = root / 'venv'
  venv.EnvBuilder(system_site_packages=False, with_pip=False).create(venv_dir)
  python = str(venv_dir / 'bin' / 'python')
  env = _clean_environment(venv_dir)
  venv_site, = json.loads(_run(
      [python, '-I', '-c', 'import json, site; print(json.dumps(site.getsitepackages()))'],
      cwd=root, env=env).stdout)
  with open(os.path.join(venv_site, '_host_site_packages.pth'), 'w') as f:
    f.write(''.join(f'{path}\n' for path in site.getsitepackages()))
  # The host's pip (on the path through that file) installs into the virtual
  # environment; --ignore-installed: the editable tfcredit's metadata is on the
  # path too and must not count as installed.
  installed_wheel = _run(
      [python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index',
       '--ignore-installed', str(wheel)], cwd=root, env=env)
  assert installed_wheel.returncode == 0, (installed_wheel.stdout +
                                           installed_wheel.stderr)
  return venv_dir, python, env


def test_the_wheel_is_what_gets_imported_with_its_configs(installed, tmp_path):
  venv_dir, python, env = installed
  done = _run([python, '-c', 'import json, sys, tfcredit, tfcredit.cli.train; '
               'import tfcredit.cli.evaluate, tfcredit.tasks.base; '
               'from tfcredit import config; print(json.dumps(['
               "{name: getattr(module, '__file__', None) for name, module in "
               "sys.modules.items() if name.split('.')[0] == 'tfcredit'}, "
               'config.GIN_CONFIGS_DIR, '
               "config.resolve_gin_file('gin_configs/quickstart.gin')]))"],
              cwd=tmp_path, env=env)
  assert done.returncode == 0, done.stderr
  modules, configs, quickstart = json.loads(done.stdout.strip().splitlines()[-1])
  inside = os.path.realpath(venv_dir) + os.sep
  assert 'tfcredit.tasks.base' in modules and 'tfcredit.cli.train' in modules
  outside = {name: path for name, path in modules.items()
             if not (path and os.path.realpath(path).startswith(inside))}
  assert not outside, f'imported from outside the wheel in {venv_dir}: {outside}'
  assert os.path.realpath(configs).startswith(inside)
  assert os.path.isfile(quickstart) and os.path.realpath(quickstart).startswith(
      inside)
  scripts = _console_scripts()
  assert len(scripts) >= 7
  for command in scripts:
    assert os.access(venv_dir / 'bin' / command, os.X_OK), command


def test_every_installed_script_answers_help_quietly(installed, tmp_path):
  venv_dir, _, env = installed
  commands = _console_scripts()
  # Started together: each spends seconds importing TensorFlow.
  answers = run_together([[str(venv_dir / 'bin' / command), '--help']
                          for command in commands], cwd=tmp_path, env=env,
                         timeout=600)
  for command, done in zip(commands, answers):
    # absl's --help prints the module's usage and flags, then exits 1.
    assert done.returncode in (0, 1), (command, done.stderr)
    assert command in done.stdout and '--[no]verbose' in done.stdout, (
        command, done.stdout[:300])
    assert 'Traceback' not in done.stderr, (command, done.stderr)
    startup = tensorflow_startup_lines(done.stderr, 20)
    assert not startup, f'{command}: TensorFlow start-up lines: {startup}'


def test_train_then_evaluate_with_the_console_scripts(installed, tmp_path):
  venv_dir, _, env = installed
  trained = _run([str(venv_dir / 'bin' / 'tfcredit-train'),
                  '--gin_file=testing/tiny.gin', '--model_dir=run',
                  '--export_dir=exports'], cwd=tmp_path, env=env)
  assert trained.returncode == 0, trained.stderr
  result = json.loads(trained.stdout.strip().splitlines()[-1])
  assert result['model_dir'] == 'run' and 'valid_mse' in result
  assert (tmp_path / 'run' / 'operative_config.gin').is_file()
  assert os.path.isfile(os.path.join(tmp_path, result['saved_model'],
                                     'saved_model.pb'))
  startup = tensorflow_startup_lines(trained.stderr, 20)
  assert not startup, f'TensorFlow start-up lines on stderr: {startup}'

  evaluated = _run([str(venv_dir / 'bin' / 'tfcredit-evaluate'),
                    f'--saved_model={result["saved_model"]}', '--split=valid'],
                   cwd=tmp_path, env=env)
  assert evaluated.returncode == 0, evaluated.stderr
  metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert metrics['mse'] == pytest.approx(result['valid_mse'], rel=1e-6)
  assert not tensorflow_startup_lines(evaluated.stderr), evaluated.stderr


def test_a_missing_packaged_config_is_named(installed, tmp_path):
  venv_dir, _, env = installed
  done = _run([str(venv_dir / 'bin' / 'tfcredit-train'),
               '--gin_file=gin_configs/no_such.gin', '--model_dir=run'],
              cwd=tmp_path, env=env)
  assert done.returncode == 2, done.stderr
  assert done.stderr.startswith('error: '), done.stderr
  assert "'gin_configs/no_such.gin'" in done.stderr and 'Traceback' not in done.stderr

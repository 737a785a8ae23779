"""Every shipped gin file parses, with skip_unknown off, against the registered API,
and builds and trains one call when shrunk (tiny width and batch)."""

import glob
import os

import gin
import pytest

import tfcredit

from tiers import slow_except

ROOT = tfcredit.config.GIN_CONFIGS_DIR
FILES = sorted(glob.glob(os.path.join(ROOT, '**', '*.gin'), recursive=True))


def test_there_are_configs():
  names = {os.path.relpath(f, ROOT) for f in FILES}
  assert {'quickstart.gin', os.path.join('testing', 'tiny.gin'),
          os.path.join('zaremba14_tbptt', 'ptb_small.gin')} <= names


@pytest.mark.parametrize('path', FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_parses_and_names_a_task_and_method(path):
  gin.clear_config()
  try:
    tfcredit.config.parse([path], [])
    assert gin.query_parameter('train.task') is not None
    assert gin.query_parameter('train.method') is not None
    header = open(path).read().lstrip()
    assert header.startswith('#'), 'each config starts with a comment saying what it is'
  finally:
    gin.clear_config()


def test_misspelt_binding_is_an_error_naming_it():
  gin.clear_config()
  with pytest.raises(tfcredit.ConfigurationError, match='windw'):
    tfcredit.config.parse([os.path.join(ROOT, 'testing', 'tiny.gin')],
                          ['TruncatedBPTT.windw = 3'])
  gin.clear_config()


def test_include_resolves_quietly_and_a_missing_include_is_named(tmp_path, caplog):
  including = os.path.join(ROOT, 'jaderberg17_dni', 'copy_dni.gin')  # Has an include.
  assert 'include' in open(including).read()
  gin.clear_config()
  try:
    with caplog.at_level('INFO'):
      tfcredit.config.parse([including], [])
    assert not [r for r in caplog.records if r.levelname == 'ERROR'], caplog.text
    broken = tmp_path / 'broken.gin'
    broken.write_text("include 'no_such_folder/absent.gin'\n")
    gin.clear_config()
    with pytest.raises(tfcredit.ConfigurationError, match='absent.gin'):
      tfcredit.config.parse([str(broken)], [])
  finally:
    gin.clear_config()


@pytest.mark.parametrize(
    'path', [f for f in FILES if os.sep + 'wiseman17_tprop' + os.sep in f],
    ids=lambda p: os.path.basename(p))
def test_target_prop_configs_start_adagrad_like_the_authors(path):
  # Torch's optim.adagrad starts its accumulators at 0; Keras's default 0.1 slows
  # the first epochs of a word model by an order of magnitude in perplexity.
  gin.clear_config()
  try:
    tfcredit.config.parse([path], [])
    optimizer = tfcredit.training.trainer.configured_arguments()['optimizer'](
        learning_rate=0.1)
    assert optimizer.initial_accumulator_value == 0.0
  finally:
    gin.clear_config()


def _parsed_task(gin_file):
  gin.clear_config()
  try:
    tfcredit.config.parse([gin_file], [])
    return gin.query_parameter('train.task')
  finally:
    gin.clear_config()


@pytest.mark.parametrize('name', ['gin_configs/quickstart.gin', 'quickstart.gin',
                                  'zaremba14_tbptt/ptb_small.gin',
                                  'gin_configs/testing/tiny.gin'])
def test_packaged_configs_resolve_from_any_directory(name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no gin_configs/ folder here
  packaged = name[len('gin_configs/'):] if name.startswith('gin_configs/') else name
  assert tfcredit.config.resolve_gin_file(name) == os.path.join(
      tfcredit.config.GIN_CONFIGS_DIR, *packaged.split('/'))
  assert _parsed_task(name) is not None


def test_a_file_on_disk_wins_over_the_packaged_one(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  local = tmp_path / 'gin_configs' / 'quickstart.gin'
  local.parent.mkdir()
  local.write_text(open(os.path.join(ROOT, 'testing', 'tiny.gin')).read())
  assert tfcredit.config.resolve_gin_file('gin_configs/quickstart.gin') == \
      'gin_configs/quickstart.gin'


def test_a_missing_gin_file_names_the_path_and_the_packaged_folder(tmp_path,
                                                                    monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(tfcredit.ConfigurationError) as raised:
    tfcredit.config.parse(['gin_configs/no_such_config.gin'], [])
  assert "'gin_configs/no_such_config.gin'" in str(raised.value)
  assert tfcredit.config.GIN_CONFIGS_DIR in str(raised.value)


_DATA_TASKS = ('LanguageModelTask', 'SequentialImageTask')


# Shrinks a shipped config to a few seconds of work without changing what it
# builds: narrow named cells, small batches, one training call.
def _shrinking_bindings():
  bindings = ['train.batch_size = 4', 'train.eval_batch_size = 4',
              'train.deterministic = False', 'train.log_every_seconds = 1e9']
  cell = _query('RecurrentModel.cell', 'lstm')
  if isinstance(cell, str):
    bindings.append('RecurrentModel.units = 8')
    if _query('RecurrentModel.embedding_dim', None) is not None or _query(
        'RecurrentModel.tie_embeddings', False):
      bindings.append('RecurrentModel.embedding_dim = 8')
  for hidden in ('NeuronwiseSynthesizer.hidden_units',):
    if _query(hidden, None) is not None:
      bindings.append(f'{hidden} = 4')
  method = _query('train.method', None).selector
  for per_call in ('windows_per_call', 'updates_per_call'):
    if per_call in _METHOD_ARGUMENTS.get(method, ()):
      bindings.append(f'{method}.{per_call} = 1')
  return bindings


_METHOD_ARGUMENTS = {
    'TruncatedBPTT': ('windows_per_call',), 'ARTBP': ('windows_per_call',),
    'DNI': ('windows_per_call',), 'TargetProp': ('updates_per_call',)}


def _query(binding, default):
  try:
    return gin.query_parameter(binding)
  except ValueError:
    return default


def _bindings_count():
  return len([line for line in gin.config_str().splitlines()
              if ' = ' in line and not line.startswith('#')])


def _representatives():
  """One config per (method, task) pair trains a call: the one that binds the
  most (so the most of its family's options are exercised); the others are built
  without a trace, since a trace of the same method on the same task proves no
  more."""
  chosen = {}
  for path in FILES:
    gin.clear_config()
    try:
      tfcredit.config.parse([path], [])
      key = (_query('train.method', None).selector,
             _query('train.task', None).selector)
      count = _bindings_count()
    finally:
      gin.clear_config()
    if key not in chosen or count > chosen[key][0]:
      chosen[key] = (count, path)
  return sorted(path for _, path in chosen.values())


# The inner loop trains one synthetic config (tests/tasks/test_text_corpus.py
# trains the user's own text through train).
TRAINED = slow_except(_representatives(),
                      os.path.join(ROOT, 'williams89_rtrl', 'adding_tbptt.gin'))


def _user_file_bindings(task, folder):
  """A task that reads the user's own files leaves their paths to the user:
  bind them to a small text written in ``folder``."""
  if task != 'TextCorpusTask':
    return []
  text = folder / 'text.txt'
  text.write_text(''.join(f'line {i % 7} of a text {i % 3}\n' for i in range(200)),
                  encoding='utf-8')
  return [f"TextCorpusTask.train = '{text}'", 'TextCorpusTask.valid_fraction = 0.2',
          'TextCorpusTask.test_fraction = 0.2']


def _parse_shrunk(path, folder):
  """Parses ``path`` shrunk; skips a config whose corpus is not available."""
  tfcredit.config.parse([path], [])
  task = _query('train.task', None).selector
  data_task = task in _DATA_TASKS
  if data_task and not os.environ.get('TFCREDIT_DATA_DIR'):
    pytest.skip('reads a real corpus: set TFCREDIT_DATA_DIR')
  shrinking = _shrinking_bindings() + _user_file_bindings(task, folder)
  gin.clear_config()
  tfcredit.config.parse([path], shrinking)
  return data_task


def _skip_if_corpus_missing(data_task, error):
  if data_task and 'missing from' in str(error):
    pytest.skip(f'corpus not in TFCREDIT_DATA_DIR: {error}')


@pytest.mark.parametrize('path', FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_builds_when_shrunk(path, tmp_path):
  """Parsing is not enough: a value that cannot build (a window longer than the
  task's sequences, a cell that does not fit the head, a method argument out of
  range) fails here, as it would before ``train`` trains anything."""
  gin.clear_config()
  try:
    data_task = _parse_shrunk(path, tmp_path)
    arguments = tfcredit.training.trainer.configured_arguments()
    try:
      parts = tfcredit.training.trainer.build_components(
          **{name: arguments[name] for name in (
              'task', 'method', 'model', 'optimizer', 'learning_rate',
              'batch_size', 'precision', 'seed')},
          data_dir=os.environ.get('TFCREDIT_DATA_DIR'))
    except tfcredit.DataError as error:
      _skip_if_corpus_missing(data_task, error)
      raise
    parts.method.check_task(parts.task)
    assert parts.model.trainable_variables
  finally:
    gin.clear_config()


@pytest.mark.parametrize('path', TRAINED, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_trains_a_call_when_shrunk(path, tmp_path):
  """The representative of each method and task pair trains one call through
  ``train``, as the command would."""
  gin.clear_config()
  try:
    data_task = _parse_shrunk(path, tmp_path)
    try:
      result = tfcredit.train(str(tmp_path / 'run'), export_dir=None,
                              stop_after_calls=1)
    except tfcredit.DataError as error:
      _skip_if_corpus_missing(data_task, error)
      raise
    assert result['stopped_after_calls'] == 1
  finally:
    gin.clear_config()

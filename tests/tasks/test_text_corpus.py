"""Tests of TextCorpusTask: tokens, vocabulary, splits, bad input, gin, training.

Most run on small files written to ``tmp_path``, with expected ids worked out by
hand in the comments. The PTB equivalence tests read the real corpus from the
folder named by TFCREDIT_DATA_DIR and are skipped, saying why, without it.
"""

import functools
import json
import math
import os
import pathlib

import gin
import numpy as np
import pytest

import tfcredit
from tfcredit import evaluation
from tfcredit.errors import ConfigurationError, DataError
from tfcredit.tasks.language_modeling import LanguageModelTask
from tfcredit.tasks.text_corpus import TextCorpusTask
from tfcredit.testing import clean_gin, configure_tiny  # noqa: F401

SPLITS = ('train', 'valid', 'test')


def _write(folder: pathlib.Path, name: str, content) -> str:
  path = folder / name
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content, encoding='utf-8')
  return str(path)


def _files(folder, train, valid, test):
  return {'train': _write(folder, 'train.txt', train),
          'valid': _write(folder, 'valid.txt', valid),
          'test': _write(folder, 'test.txt', test)}


def _ids(task, split):
  """The whole split as one column."""
  return task.stream(split, 1)[0].tolist()


# ------------------------------------------------------------ tokens, vocabulary


def test_word_level_vocabulary_comes_from_train_only(tmp_path):
  task = TextCorpusTask(**_files(tmp_path, 'a b a\nc a\n', 'a d\n', 'b c\n'))
  # Train: a b a <eos> c a <eos>; counts a 3, <eos> 2, b 1, c 1; <unk> 0 comes last.
  assert task.vocabulary_tokens() == ['a', '<eos>', 'b', 'c', '<unk>']
  assert _ids(task, 'train') == [0, 2, 0, 1, 3, 0, 1]
  assert _ids(task, 'valid') == [0, 4, 1]  # 'd' occurs only in valid: <unk>.
  assert _ids(task, 'test') == [2, 3, 1]
  assert task.name == 'text_word' and task.metric_name == 'perplexity'
  assert task.model_spec()['input_vocab_size'] == 5
  assert task.metric_from_loss(math.log(5.0)) == pytest.approx(5.0)


def test_min_count_maps_rare_tokens_to_unk(tmp_path):
  files = _files(tmp_path, 'a a a b b c\na b\n', 'c a\n', 'b\n')
  task = TextCorpusTask(**files, min_count=2)
  # Counts a 4, b 3, <eos> 2, c 1: c becomes <unk> (count 1).
  assert task.vocabulary_tokens() == ['a', 'b', '<eos>', '<unk>']
  assert _ids(task, 'train') == [0, 0, 0, 1, 1, 3, 2, 0, 1, 2]
  assert _ids(task, 'valid') == [3, 0, 2]  # c is <unk> in valid too.


def test_max_size_keeps_the_most_frequent_and_counts_unk(tmp_path):
  files = _files(tmp_path, 'a a a b b c\na b\n', 'c a\n', 'b\n')
  task = TextCorpusTask(**files, max_size=3)
  # a 4 and b 3 kept; <eos> 2 and c 1 map to <unk>, whose count is then 3: it
  # ties with b and '<' sorts before 'b'.
  assert task.vocabulary_tokens() == ['a', '<unk>', 'b']
  assert _ids(task, 'train') == [0, 0, 0, 2, 2, 1, 1, 0, 2, 1]
  assert _ids(task, 'test') == [2, 1]


def test_char_level(tmp_path):
  task = TextCorpusTask(**_files(tmp_path, 'ab  a\n b\n', 'ba\n', 'x\n'),
                        level='char')
  # Lines become 'ab_a' and 'b': a b _ a <eos> b <eos>; counts <eos> 2, a 2, b 2,
  # _ 1 (ties by token: '<' < 'a' < 'b'), then <unk> 0.
  assert task.vocabulary_tokens() == ['<eos>', 'a', 'b', '_', '<unk>']
  assert _ids(task, 'train') == [1, 2, 3, 1, 0, 2, 0]
  assert _ids(task, 'valid') == [2, 1, 0]
  assert _ids(task, 'test') == [4, 0]  # 'x' is unseen in training.
  assert task.name == 'text_char' and task.metric_name == 'bpc'
  assert task.metric_from_loss(math.log(2.0)) == pytest.approx(1.0)


def test_closed_vocabulary(tmp_path):
  files = _files(tmp_path, 'a b\n', 'b a\n', 'a\n')
  task = TextCorpusTask(**files, unknown_token=None)
  assert '<unk>' not in task.vocabulary_tokens()
  assert _ids(task, 'valid') == [task.vocabulary.token_to_id[t]
                                 for t in ('b', 'a', '<eos>')]
  _write(tmp_path, 'test.txt', 'a zz\n')
  with pytest.raises(DataError) as raised:
    TextCorpusTask(**files, unknown_token=None)
  assert "'zz'" in str(raised.value) and 'TextCorpusTask.test' in str(raised.value)


def test_a_file_without_final_newline_and_with_crlf(tmp_path):
  task = TextCorpusTask(**_files(tmp_path, 'a b\r\nb', 'a\n', 'b\n'))
  # '\r' is whitespace to str.split: a b <eos> b <eos>.
  assert task.vocabulary.decode(_ids(task, 'train')) == [
      'a', 'b', '<eos>', 'b', '<eos>']


# ------------------------------------------------------------------------ splits


def test_fractions_hold_out_the_tail_test_last(tmp_path):
  # 20 lines 'w0' .. 'w4' repeated: 40 tokens.
  path = _write(tmp_path, 'all.txt', ''.join(f'w{i % 5}\n' for i in range(20)))
  task = TextCorpusTask(train=path, valid_fraction=0.1, test_fraction=0.25)
  decode = lambda split: task.vocabulary.decode(_ids(task, split))
  # round(40 * 0.25) = 10 test tokens (lines 15..19), round(40 * 0.1) = 4 valid
  # tokens (lines 13 and 14), the first 26 tokens train.
  assert decode('test') == ['w0', '<eos>', 'w1', '<eos>', 'w2', '<eos>', 'w3',
                            '<eos>', 'w4', '<eos>']
  assert decode('valid') == ['w3', '<eos>', 'w4', '<eos>']
  assert len(_ids(task, 'train')) == 26
  assert decode('train')[:4] == ['w0', '<eos>', 'w1', '<eos>']
  assert decode('train')[-2:] == ['w2', '<eos>']  # Line 12.


def test_a_valid_file_with_a_test_fraction(tmp_path):
  train = _write(tmp_path, 'train.txt', 'a b c d e\nf g h i j\n')  # 12 tokens.
  valid = _write(tmp_path, 'valid.txt', 'a b\n')
  task = TextCorpusTask(train=train, valid=valid, test_fraction=0.25)
  decode = lambda split: task.vocabulary.decode(_ids(task, split))
  assert decode('valid') == ['a', 'b', '<eos>']
  assert decode('test') == ['<unk>', '<unk>', '<eos>']  # i j <eos>: not in train.
  assert decode('train') == ['a', 'b', 'c', 'd', 'e', '<eos>', 'f', 'g', 'h']


def test_train_tokens_shortens_training_only(tmp_path):
  files = _files(tmp_path, 'a b c d e\n', 'e d\n', 'c\n')
  whole = TextCorpusTask(**files)
  task = TextCorpusTask(**files, train_tokens=3)
  assert _ids(task, 'train') == _ids(whole, 'train')[:3]
  assert _ids(task, 'valid') == _ids(whole, 'valid')
  assert task.vocabulary_tokens() == whole.vocabulary_tokens()


# ------------------------------------------------------------- config and gin


def test_get_config_round_trip(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  _files(tmp_path, 'x y z\ny z\nz\n', 'z y\n', 'q x\n')
  task = TextCorpusTask(train='train.txt', valid='valid.txt', test='test.txt',
                        level='char', min_count=2, max_size=4, train_tokens=7)
  config = json.loads(json.dumps(task.get_config()))
  assert config['train'] == str(tmp_path / 'train.txt')  # Absolute.
  assert (config['level'], config['min_count'], config['max_size'],
          config['unknown_token'], config['train_tokens']) == ('char', 2, 4,
                                                               '<unk>', 7)
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  rebuilt = TextCorpusTask(**config)
  assert rebuilt.vocabulary_tokens() == task.vocabulary_tokens()
  for split in SPLITS:
    np.testing.assert_array_equal(rebuilt.stream(split, 2), task.stream(split, 2))


@pytest.mark.usefixtures('clean_gin')
def test_built_by_gin(tmp_path):
  path = _write(tmp_path, 'text.txt', 'the cat sat\non the mat\n' * 5)
  gin.parse_config(['train.task = @TextCorpusTask',
                    f"TextCorpusTask.train = '{path}'",
                    'TextCorpusTask.valid_fraction = 0.2',
                    'TextCorpusTask.test_fraction = 0.1',
                    "TextCorpusTask.level = 'char'"])
  task = tfcredit.training.trainer.configured_arguments()['task']()
  direct = TextCorpusTask(train=path, valid_fraction=0.2, test_fraction=0.1,
                          level='char')
  assert task.get_config()['level'] == 'char' and task.metric_name == 'bpc'
  assert task.vocabulary_tokens() == direct.vocabulary_tokens()
  for split in SPLITS:
    np.testing.assert_array_equal(task.stream(split, 1), direct.stream(split, 1))
  assert 'TextCorpusTask' in tfcredit.__all__


# -------------------------------------------------------------------- bad input


def _three(tmp_path):
  return _files(tmp_path, 'a b c\n', 'a b\n', 'c a\n')


@pytest.mark.parametrize('split', SPLITS)
def test_missing_file(tmp_path, split):
  files = dict(_three(tmp_path), **{split: str(tmp_path / 'absent.txt')})
  with pytest.raises(DataError) as raised:
    TextCorpusTask(**files)
  message = str(raised.value)
  assert f'TextCorpusTask.{split}:' in message and str(tmp_path / 'absent.txt') in message
  assert 'does not exist' in message and '\n' not in message


def test_a_missing_relative_path_is_named_where_it_was_looked_for(tmp_path,
                                                                   monkeypatch):
  files = _three(tmp_path)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(DataError) as raised:
    TextCorpusTask(**dict(files, train='nothere.txt'))
  assert f'TextCorpusTask.train: file {tmp_path / "nothere.txt"} does not' in str(
      raised.value)


def test_a_directory_is_not_a_file(tmp_path):
  with pytest.raises(DataError, match='TextCorpusTask.train: .* is a directory'):
    TextCorpusTask(**dict(_three(tmp_path), train=str(tmp_path)))


def test_empty_file(tmp_path):
  files = dict(_three(tmp_path), valid=_write(tmp_path, 'empty.txt', ''))
  with pytest.raises(DataError) as raised:
    TextCorpusTask(**files)
  message = str(raised.value)
  assert 'TextCorpusTask.valid' in message and 'empty.txt' in message
  assert 'is empty' in message


@pytest.mark.parametrize('content, offset, byte', [
    (b'hello \xff world\n', 6, '0xff'),
    ('caf\xe9 au lait\n'.encode('latin-1'), 3, '0xe9'),
], ids=['invalid-start-byte', 'latin-1'])
def test_not_utf8_gives_the_offset_of_the_first_bad_byte(tmp_path, content, offset,
                                                         byte):
  files = dict(_three(tmp_path), test=_write(tmp_path, 'latin.txt', content))
  with pytest.raises(DataError) as raised:
    TextCorpusTask(**files)
  message = str(raised.value)
  assert 'TextCorpusTask.test' in message and 'latin.txt' in message
  assert f'byte offset {offset}' in message and byte in message
  assert 'download' not in message  # A user's file: the advice is to convert it.


@pytest.mark.parametrize('content, count', [('\n', 1), ('  \t \n', 1), ('   ', 0)])
def test_a_file_split_with_fewer_than_two_tokens(tmp_path, content, count):
  files = dict(_three(tmp_path), valid=_write(tmp_path, 'short.txt', content))
  with pytest.raises(DataError) as raised:
    TextCorpusTask(**files)
  message = str(raised.value)
  assert 'TextCorpusTask.valid' in message and 'short.txt' in message
  assert f'{count} token(s)' in message and 'at least 2' in message


def test_a_fraction_that_leaves_a_split_fewer_than_two_tokens(tmp_path):
  path = _write(tmp_path, 'all.txt', 'a b c d e f g h i\n')  # 10 tokens.
  with pytest.raises(DataError) as raised:  # round(10 * 0.04) = 0 valid tokens.
    TextCorpusTask(train=path, valid_fraction=0.04, test_fraction=0.5)
  message = str(raised.value)
  assert 'TextCorpusTask.valid_fraction = 0.04' in message
  assert '0 token(s)' in message and 'all.txt' in message
  with pytest.raises(DataError, match='leaves the train split 1 token'):
    TextCorpusTask(train=path, valid_fraction=0.4, test_fraction=0.5)


def test_a_path_and_a_fraction_for_one_split(tmp_path):
  with pytest.raises(ConfigurationError) as raised:
    TextCorpusTask(**_three(tmp_path), valid_fraction=0.1)
  message = str(raised.value)
  assert 'TextCorpusTask.valid =' in message
  assert 'TextCorpusTask.valid_fraction = 0.1' in message


@pytest.mark.parametrize('value', [0, 1, 1.0, -0.1, 1.5, float('nan'), '0.1', True])
def test_fraction_outside_zero_one(tmp_path, value):
  with pytest.raises(ConfigurationError) as raised:
    TextCorpusTask(train=str(tmp_path / 'absent.txt'), valid_fraction=0.1,
                   test_fraction=value)
  assert 'TextCorpusTask.test_fraction' in str(raised.value)
  assert repr(value) in str(raised.value)


def test_fractions_summing_to_one_or_more(tmp_path):
  for valid, test in ((0.5, 0.5), (0.7, 0.4)):
    with pytest.raises(ConfigurationError) as raised:
      TextCorpusTask(train=str(tmp_path / 'absent.txt'), valid_fraction=valid,
                     test_fraction=test)
    message = str(raised.value)
    assert 'TextCorpusTask.valid_fraction' in message
    assert 'TextCorpusTask.test_fraction' in message and 'below 1' in message


@pytest.mark.parametrize('options, names', [
    ({'level': 'byte'}, ['TextCorpusTask.level', "'byte'"]),
    ({'min_count': 0}, ['TextCorpusTask.min_count', '0']),
    ({'min_count': 1.5}, ['TextCorpusTask.min_count', '1.5']),
    ({'max_size': 1}, ['TextCorpusTask.max_size', '1']),
    ({'unknown_token': ''}, ['TextCorpusTask.unknown_token']),
    ({'unknown_token': 'a b'}, ['TextCorpusTask.unknown_token', "'a b'"]),
    ({'unknown_token': None, 'min_count': 2}, ['TextCorpusTask.unknown_token',
                                               'TextCorpusTask.min_count']),
    ({'train_tokens': 0}, ['TextCorpusTask.train_tokens']),
    ({'train': None}, ['TextCorpusTask.train']),
    ({'train': 3}, ['TextCorpusTask.train', '3']),
    ({'test': None}, ['TextCorpusTask.test', 'TextCorpusTask.test_fraction']),
], ids=['level', 'min_count-0', 'min_count-float', 'max_size-1', 'unk-empty',
        'unk-space', 'closed-with-min_count', 'train_tokens', 'no-train',
        'train-not-a-path', 'no-test'])
def test_bad_settings_are_configuration_errors_before_any_file_is_read(
    tmp_path, options, names):
  absent = {split: str(tmp_path / f'absent_{split}.txt') for split in SPLITS}
  with pytest.raises(ConfigurationError) as raised:
    TextCorpusTask(**dict(absent, **options))
  for name in names:
    assert name in str(raised.value)


def test_a_missing_file_through_the_train_command(tmp_path, run_command):
  missing = tmp_path / 'no_such_text.txt'
  done = run_command(
      'train', f'--gin_file={tfcredit.testing.TINY_CONFIG}',
      f'--model_dir={tmp_path}/run', '--gin_bindings=train.task = @TextCorpusTask',
      f"--gin_bindings=TextCorpusTask.train = '{missing}'",
      '--gin_bindings=TextCorpusTask.valid_fraction = 0.1',
      '--gin_bindings=TextCorpusTask.test_fraction = 0.1')
  assert done.returncode == 1, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: TextCorpusTask.train: ')
  assert str(missing) in lines[0]


def test_a_bad_setting_through_the_train_command(tmp_path, run_command):
  done = run_command(
      'train', f'--gin_file={tfcredit.testing.TINY_CONFIG}',
      f'--model_dir={tmp_path}/run', '--gin_bindings=train.task = @TextCorpusTask',
      f"--gin_bindings=TextCorpusTask.train = '{tmp_path / 'a.txt'}'",
      '--gin_bindings=TextCorpusTask.valid_fraction = 0.1',
      '--gin_bindings=TextCorpusTask.test_fraction = 0.1',
      "--gin_bindings=TextCorpusTask.level = 'bytes'")
  assert done.returncode == 2, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: TextCorpusTask.level')
  assert "'bytes'" in lines[0]


# -------------------------------------------------------------------- training


@pytest.mark.usefixtures('clean_gin')
def test_trains_exports_the_vocabulary_and_evaluates(tmp_path):
  words = ['the', 'cat', 'sat', 'on', 'mat', 'a', 'dog', 'ran']
  lines = [' '.join(words[(i * 3 + j) % 8] for j in range(5)) for i in range(80)]
  path = _write(tmp_path, 'text.txt', '\n'.join(lines) + '\n')  # 480 tokens.
  configure_tiny('train.task = @TextCorpusTask', f"TextCorpusTask.train = '{path}'",
                 'TextCorpusTask.valid_fraction = 0.2',
                 'TextCorpusTask.test_fraction = 0.2', 'train.epochs = 1')
  result = tfcredit.train(str(tmp_path / 'run'), export_dir=str(tmp_path / 'out'))
  assert math.isfinite(result['valid_perplexity'])
  assert 1.0 < result['test_perplexity'] < 1e4
  exported = (pathlib.Path(result['saved_model']) / 'assets' /
              'vocabulary.txt').read_text(encoding='utf-8').splitlines()
  task = TextCorpusTask(train=path, valid_fraction=0.2, test_fraction=0.2)
  assert exported == task.vocabulary_tokens()
  assert sorted(exported) == sorted(words + ['<eos>', '<unk>'])
  evaluated = evaluation.evaluate_export(result['saved_model'], 'valid')
  assert evaluated['perplexity'] == pytest.approx(result['valid_perplexity'],
                                                  rel=1e-5)


# ---------------------------------------------------------- PTB equivalence


def _ptb_files(folder_name, pattern):
  env = os.environ.get('TFCREDIT_DATA_DIR')
  if not env:
    pytest.skip('PTB equivalence: set TFCREDIT_DATA_DIR to a folder holding ptb/ '
                'and ptb_char/')
  folder = pathlib.Path(env) / folder_name
  files = {split: folder / pattern.format(split) for split in SPLITS}
  absent = [str(p) for p in files.values() if not p.is_file()]
  if absent:
    pytest.skip(f'PTB files {absent} absent (set TFCREDIT_DATA_DIR)')
  return env, {split: str(path) for split, path in files.items()}


def _assert_same_streams(task, reference, batch_size=20):
  for split in SPLITS:
    np.testing.assert_array_equal(task.stream(split, batch_size),
                                  reference.stream(split, batch_size))


def test_on_the_ptb_files_it_is_the_ptb_task():
  data_dir, files = _ptb_files('ptb', 'ptb.{}.txt')
  reference = LanguageModelTask(corpus='ptb', data_dir=data_dir, download=False)
  task = TextCorpusTask(**files)
  assert task.vocabulary_tokens() == reference.vocabulary_tokens()
  assert len(task.vocabulary_tokens()) == 10_000
  _assert_same_streams(task, reference)
  assert task.metric_name == reference.metric_name == 'perplexity'


def test_chars_of_the_ptb_word_files_are_the_ptb_char_task():
  data_dir, files = _ptb_files('ptb', 'ptb.{}.txt')
  _ptb_files('ptb_char', 'ptb.char.{}.txt')
  reference = LanguageModelTask(corpus='ptb_char', data_dir=data_dir,
                                download=False)
  closed = TextCorpusTask(**files, level='char', unknown_token=None)
  assert closed.vocabulary_tokens() == reference.vocabulary_tokens()
  assert len(closed.vocabulary_tokens()) == 50
  _assert_same_streams(closed, reference)
  assert closed.metric_name == reference.metric_name == 'bpc'
  # With an unknown token (the default) it is added last, unused.
  opened = TextCorpusTask(**files, level='char')
  assert opened.vocabulary_tokens() == reference.vocabulary_tokens() + ['<unk>']
  _assert_same_streams(opened, reference)


def test_the_run_keeps_its_vocabulary_and_refuses_a_changed_corpus(tmp_path):
  """vocabulary.txt in the run directory, one token per line in id order; a
  resumed run whose training text now gives another vocabulary is refused."""
  path = tmp_path / 'corpus.txt'
  path.write_text('a b a c\nb a d\n' * 30, encoding='utf-8')
  run = str(tmp_path / 'run')

  def train():
    task = TextCorpusTask(train=str(path), valid_fraction=0.1, test_fraction=0.1)
    tfcredit.train(run, export_dir=None, task=task,
                   method=functools.partial(tfcredit.TruncatedBPTT, window=3,
                                            windows_per_call=1),
                   model=functools.partial(tfcredit.RecurrentModel, units=4),
                   batch_size=2, eval_batch_size=2, stop_after_calls=1)
    return task

  task = train()
  stored = (tmp_path / 'run' / 'vocabulary.txt').read_text(encoding='utf-8')
  # Counts a 90, b 60, <eos> 60, c 30, d 30 (by count, then token); <unk> last.
  assert stored.splitlines() == ['a', '<eos>', 'b', 'c', 'd', '<unk>']
  assert stored.splitlines() == task.vocabulary_tokens()
  path.write_text('a b a c\nb a e e\n' * 30, encoding='utf-8')
  with pytest.raises(tfcredit.DataError, match='vocabulary.txt holds the '
                     'vocabulary this run started with'):
    train()

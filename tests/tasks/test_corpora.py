"""Tests of tfcredit.tasks.corpora: published statistics, vocabulary, errors.

The statistics tests read the real corpora from the folder named by the
TFCREDIT_DATA_DIR environment variable and are skipped, saying why, without it or
when its files are absent. Everything else
runs on small files the tests write, registered through a patched `CORPORA`.
"""

import functools
import http.server
import os
import pathlib
import threading
import zipfile

import numpy as np
import pytest

from tfcredit.errors import ConfigurationError, DataError
from tfcredit.tasks import corpora, storage
from tfcredit.tasks.corpora import CorpusSpec, Vocabulary
from tfcredit.tasks.storage import FileSpec


def _data_dir_from_env() -> pathlib.Path:
  env = os.environ.get('TFCREDIT_DATA_DIR')
  if not env:
    pytest.skip('real corpora: set TFCREDIT_DATA_DIR to a folder holding ptb/, '
                'ptb_char/, wikitext-2/ ...')
  return pathlib.Path(env)


def _real_corpus(name: str) -> corpora.Corpus:
  data_dir = _data_dir_from_env()
  spec = corpora.CORPORA[name]
  folder = data_dir / spec.folder
  absent = [s.name for s in spec.files if not (folder / s.name).is_file()]
  if absent:
    pytest.skip(f'{name} files {absent} not in {folder} (set TFCREDIT_DATA_DIR)')
  # download=False: tests never reach the network. Cached per session.
  return corpora.load_corpus(name, data_dir, download=False)


# (tokens train, valid, test; vocabulary size) from the papers / data README.
PUBLISHED = {
    'ptb': ((929_589, 73_760, 82_430), 10_000),
    'ptb_char': ((5_017_482, 393_042, 442_423), 50),
    'wikitext2': ((2_088_628, 217_646, 245_569), 33_278),
}


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_published_statistics(name):
  corpus = _real_corpus(name)
  sizes, vocab_size = PUBLISHED[name]
  assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == sizes
  assert len(corpus.vocab) == vocab_size
  assert corpus.name == name
  for split in (corpus.train, corpus.valid, corpus.test):
    assert split.dtype == np.int32
    assert 0 <= split.min() and split.max() < vocab_size
  assert corpora.EOS in corpus.vocab


def test_real_ptb_details():
  corpus = _real_corpus('ptb')
  assert '<unk>' in corpus.vocab
  # The training text starts with this line, then <eos>.
  first = ('aer banknote berlitz calloway centrust cluett fromstein gitano '
           'guterman hydro-quebec ipo kia memotec mlx nahb punts rake regatta '
           'rubens sim snack-food ssangyong swapo wachter').split()
  assert corpus.vocab.decode(corpus.train[:len(first) + 1]) == first + ['<eos>']
  assert corpora.load_corpus('ptb', _data_dir_from_env(), download=False) is corpus
  with pytest.raises(ValueError):
    corpus.train[0] = 1  # The cached streams are read-only.


def test_real_ptb_char_alphabet():
  vocab = _real_corpus('ptb_char').vocab
  assert '_' in vocab and corpora.EOS in vocab and ' ' not in vocab
  assert len([t for t in vocab.tokens if len(t) == 1]) == 49


# ----------------------------------------------------------------- Vocabulary


def test_vocabulary_order_is_by_count_then_token():
  tokens = ['ba', 'ab', 'cz', 'ab', 'ba', 'da', 'e', 'e', 'e']
  vocab = Vocabulary.from_tokens(tokens)
  assert vocab.tokens == ('e', 'ab', 'ba', 'cz', 'da')
  assert vocab.token_to_id['ab'] == 1 and len(vocab) == 5
  # Independent of the order of first occurrence.
  assert Vocabulary.from_tokens(reversed(tokens)) == vocab


def test_vocabulary_encode_decode():
  vocab = Vocabulary(['x', 'y', 'z'])
  ids = vocab.encode(['z', 'x', 'z'])
  assert ids.dtype == np.int32 and ids.tolist() == [2, 0, 2]
  assert vocab.decode(ids) == ['z', 'x', 'z']
  with pytest.raises(DataError, match="'w'"):
    vocab.encode(['x', 'w'])
  with pytest.raises(DataError, match='3'):
    vocab.decode([3])


def test_vocabulary_save_load_round_trip(tmp_path):
  # ' ' (a text8 token) and non-ASCII tokens must survive the file.
  vocab = Vocabulary(['the', ' ', '<eos>', 'Grüße', '—', 'a'])
  path = tmp_path / 'vocab.txt'
  vocab.save(path)
  assert path.read_bytes().decode('utf-8') == 'the\n \n<eos>\nGrüße\n—\na\n'
  loaded = Vocabulary.load(path)
  assert loaded == vocab and loaded.tokens == vocab.tokens


def test_vocabulary_load_rejects_malformed(tmp_path):
  path = tmp_path / 'vocab.txt'
  path.write_text('a\nb\na\n', encoding='utf-8')
  with pytest.raises(DataError, match='ids 0 and 2'):
    Vocabulary.load(path)
  with pytest.raises(DataError, match='does not exist'):
    Vocabulary.load(tmp_path / 'absent.txt')


# ------------------------------------------------------ Small fake corpora


@pytest.fixture
def tiny(monkeypatch, tmp_path):
  """Registers corpus 'tiny' (no digests) in tmp_path/'tiny'; yields the folder."""
  corpora.clear_cache()
  files = tuple(FileSpec(f'tiny.{s}.txt', None) for s in ('train', 'valid', 'test'))
  monkeypatch.setattr(corpora, 'CORPORA', {
      **corpora.CORPORA, 'tiny': CorpusSpec('tiny', 'tiny', files)})
  folder = tmp_path / 'tiny'
  folder.mkdir()
  yield folder
  corpora.clear_cache()


def _write_tiny(folder, train, valid, test):
  for split, data in (('train', train), ('valid', valid), ('test', test)):
    if isinstance(data, str):
      data = data.encode('utf-8')
    (folder / f'tiny.{split}.txt').write_bytes(data)


def test_tiny_corpus_tokenisation(tiny):
  # Empty lines count (one <eos> each); a whitespace-only tail after the last
  # newline (as in the PTB char files) is not a line.
  _write_tiny(tiny, 'a b a\n\nc a\n ', 'a c\n', 'b\nb\n')
  corpus = corpora.load_corpus('tiny', tiny.parent, download=False)
  vocab = corpus.vocab
  # <eos> and 'a' both occur 3 times: the tie goes to the smaller string.
  assert vocab.tokens == ('<eos>', 'a', 'b', 'c')
  assert vocab.decode(corpus.train) == 'a b a <eos> <eos> c a <eos>'.split()
  assert vocab.decode(corpus.valid) == ['a', 'c', '<eos>']
  assert vocab.decode(corpus.test) == ['b', '<eos>', 'b', '<eos>']


def test_out_of_vocabulary_test_token(tiny):
  _write_tiny(tiny, 'a b\n', 'a\n', 'a b\nb zzz a\n')
  with pytest.raises(DataError) as info:
    corpora.load_corpus('tiny', tiny.parent, download=False)
  message = str(info.value)
  assert str(tiny / 'tiny.test.txt') in message
  assert 'line 2' in message and "'zzz'" in message


def test_undecodable_file(tiny):
  _write_tiny(tiny, b'ab c\n\xff d\n', 'a\n', 'a\n')
  with pytest.raises(DataError) as info:
    corpora.load_corpus('tiny', tiny.parent, download=False)
  message = str(info.value)
  assert str(tiny / 'tiny.train.txt') in message and 'byte offset 5' in message


def test_unknown_corpus_name():
  with pytest.raises(ConfigurationError) as info:
    corpora.load_corpus('penn', download=False)
  assert "'penn'" in str(info.value) and 'ptb' in str(info.value)


def test_registered_checksum_mismatch(tmp_path):
  folder = tmp_path / 'ptb'
  folder.mkdir()
  (folder / 'ptb.train.txt').write_text('not the real ptb\n', encoding='utf-8')
  with pytest.raises(DataError) as info:
    corpora.load_corpus('ptb', tmp_path, download=False)
  message = str(info.value)
  assert str(folder / 'ptb.train.txt') in message
  assert corpora.CORPORA['ptb'].files[0].sha256 in message


def test_missing_files_without_download(tmp_path):
  with pytest.raises(DataError) as info:
    corpora.load_corpus('wikitext2', tmp_path, download=False)
  message = str(info.value)
  for split in ('train', 'valid', 'test'):
    assert str(tmp_path / 'wikitext-2' / f'wiki.{split}.tokens') in message


# ------------------------------------------------------------------- text8


def _write_text8(folder: pathlib.Path, text: bytes) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / 'text8.zip'
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
    zf.writestr('text8', text)
  return path


def _fake_text8(seed: int = 0) -> bytes:
  rng = np.random.default_rng(seed)
  alphabet = np.frombuffer(b'abcdefghijklmnopqrstuvwxyz ', dtype=np.uint8)
  return alphabet[rng.integers(0, len(alphabet), size=200)].tobytes()


def test_text8_default_split_is_standard():
  assert corpora.TEXT8_SPLIT == (90_000_000, 5_000_000, 5_000_000)


def test_text8_split(tmp_path, monkeypatch):
  monkeypatch.setattr(corpora, 'TEXT8_SPLIT', (180, 10, 10))
  text = b' ' + _fake_text8()[1:190] + b'zzzzzzzzzz'  # Test holds only 'z'.
  text = text[:180] + b'abcabcabca' + text[190:]
  _write_text8(tmp_path / 'text8', text)
  corpus = corpora.load_corpus('text8', tmp_path, download=False)
  assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (180, 10, 10)
  decoded = [''.join(corpus.vocab.decode(s))
             for s in (corpus.train, corpus.valid, corpus.test)]
  assert decoded == [text[:180].decode(), 'abcabcabca', 'zzzzzzzzzz']
  assert ' ' in corpus.vocab


def test_text8_wrong_length(tmp_path, monkeypatch):
  monkeypatch.setattr(corpora, 'TEXT8_SPLIT', (180, 10, 10))
  path = _write_text8(tmp_path / 'text8', _fake_text8()[:199])
  with pytest.raises(DataError) as info:
    corpora.load_corpus('text8', tmp_path, download=False)
  assert str(path) in str(info.value) and '200' in str(info.value)


def test_text8_bad_character(tmp_path, monkeypatch):
  monkeypatch.setattr(corpora, 'TEXT8_SPLIT', (180, 10, 10))
  text = bytearray(_fake_text8())
  text[42] = ord('A')
  _write_text8(tmp_path / 'text8', bytes(text))
  with pytest.raises(DataError, match='offset 42'):
    corpora.load_corpus('text8', tmp_path, download=False)


def test_text8_character_not_in_training(tmp_path, monkeypatch):
  monkeypatch.setattr(corpora, 'TEXT8_SPLIT', (180, 10, 10))
  text = b'a b ' * 45 + b'a' * 9 + b'q' + b'b' * 10
  path = _write_text8(tmp_path / 'text8', text)
  with pytest.raises(DataError) as info:
    corpora.load_corpus('text8', tmp_path, download=False)
  message = str(info.value)
  assert str(path) in message and "'q'" in message and 'line 1' in message


def test_text8_download_from_local_server(tmp_path, monkeypatch):
  for name in ('http_proxy', 'HTTP_PROXY'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
  monkeypatch.setattr(corpora, 'TEXT8_SPLIT', (180, 10, 10))
  served = tmp_path / 'served'
  _write_text8(served, _fake_text8())
  handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                              directory=str(served))
  handler.log_message = lambda *args: None
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
  thread.start()
  try:
    # The way a site mirror (or a test) replaces a canonical host.
    monkeypatch.setitem(storage.BASE_URL_OVERRIDES, 'http://mattmahoney.net/dc/',
                        f'http://127.0.0.1:{httpd.server_address[1]}/')
    corpus = corpora.load_corpus('text8', tmp_path / 'data', download=True)
  finally:
    httpd.shutdown()
    httpd.server_close()
    thread.join()
  assert (tmp_path / 'data' / 'text8' / 'text8.zip').is_file()
  assert len(corpus.train) == 180


# ----------------------------------------------------------------- batchify


def test_batchify_rows_are_contiguous_chunks():
  ids = np.arange(23, dtype=np.int32)
  batched = corpora.batchify(ids, 4)
  assert batched.shape == (4, 5) and batched.dtype == np.int32
  for b in range(4):
    np.testing.assert_array_equal(batched[b], ids[5 * b:5 * (b + 1)])
  np.testing.assert_array_equal(corpora.batchify(ids, 23), ids[:, None])


@pytest.mark.parametrize('batch_size', [0, -3, 24, 2.0, True])
def test_batchify_errors(batch_size):
  with pytest.raises(ConfigurationError, match='batch_size'):
    corpora.batchify(np.arange(23), batch_size)


def test_train_tokens_keeps_a_prefix_of_the_training_split_only(tiny):
  from tfcredit.tasks.language_modeling import LanguageModelTask
  from tfcredit.errors import ConfigurationError
  _write_tiny(tiny, 'a b a\nc a b\nb c\n', 'a c\n', 'b\nb\n')
  whole = LanguageModelTask(corpus='tiny', data_dir=str(tiny.parent), download=False)
  cut = LanguageModelTask(corpus='tiny', data_dir=str(tiny.parent), download=False,
                          train_tokens=5)
  vocab = whole.vocabulary
  assert vocab.decode(cut.stream('train', 1)[0]) == 'a b a <eos> c'.split()
  assert len(whole.stream('train', 1)[0]) == 11
  # The vocabulary and the evaluation splits are those of the whole corpus.
  assert cut.vocabulary.tokens == vocab.tokens
  np.testing.assert_array_equal(cut.stream('valid', 1), whole.stream('valid', 1))
  assert cut.get_config()['train_tokens'] == 5
  with pytest.raises(ConfigurationError, match='LanguageModelTask.train_tokens'):
    LanguageModelTask(corpus='tiny', data_dir=str(tiny.parent), download=False,
                      train_tokens=0)

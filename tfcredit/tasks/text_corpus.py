"""Language modelling on a user's own UTF-8 text files (``TextCorpusTask``).

The stream regime of ``LanguageModelTask`` (docs/design.md, "Task") on any text.

* **Splits.** ``train``, ``valid`` and ``test`` files; or one ``train`` file whose
  tail is held out: of its ``n`` tokens, the last ``round(n * test_fraction)`` are
  the test split, the ``round(n * valid_fraction)`` before them the validation
  split, and the rest, the head, the training split. A ``valid`` file with a
  ``test_fraction`` (or a ``test`` file with a ``valid_fraction``) is allowed.
* **Tokens.** ``level='word'``: ``line.split() + ['<eos>']`` for every line, the
  rule by which ``tfcredit.tasks.corpora`` reads PTB and WikiText-2.
  ``level='char'``: every line's words joined by ``_`` and cut into characters,
  then ``<eos>``: the convention of the PTB character files, which are exactly
  that of the PTB word files. Runs of whitespace thus become one ``_``, and a
  ``_`` of the text cannot be told from a word boundary.
* **Vocabulary**, from the training split only. Tokens seen fewer than
  ``min_count`` times, and those beyond the ``max_size - 1`` most frequent, map to
  ``unknown_token``, which is always in the vocabulary (``max_size`` counts it);
  valid and test tokens not in the vocabulary map to it too. The order is that of
  ``corpora.Vocabulary.from_counts`` on the training split after this mapping (by
  count, ties by token), so an unknown token that nothing maps to comes last.
  ``unknown_token=None`` keeps every training token and makes a valid or test
  token unseen in training a ``DataError``.

Pointed at the PTB files, the word level gives the vocabulary and id streams of
``LanguageModelTask(corpus='ptb')`` (PTB's own ``<unk>`` is the unknown token),
and the character level with ``unknown_token=None`` those of
``corpus='ptb_char'`` (tests/tasks/test_text_corpus.py checks both).

Bad input is one line naming the argument and the file: ``ConfigurationError``
(exit code 2) for the settings, ``DataError`` (exit code 1) for a file that is
missing, unreadable, empty, not UTF-8 (with the offset of its first bad byte), or
leaves a split fewer than 2 tokens.
"""

import collections
import itertools
import math
import numbers
import os
import pathlib
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from tfcredit import config
from tfcredit import validation
from tfcredit.errors import ConfigurationError, DataError
from tfcredit.tasks import corpora
# The stream base shared by the language-modelling tasks.
from tfcredit.tasks.language_modeling import TokenStreamTask

LEVELS = ('word', 'char')
WORD_BOUNDARY = '_'  # The PTB character files' word boundary.
MIN_SPLIT_TOKENS = 2  # One input and the next token to predict.
_SPLITS = ('train', 'valid', 'test')
_NOT_UTF8_FIX = ('convert it to UTF-8 (e.g. iconv -f <its encoding> -t UTF-8) '
                 'or point TextCorpusTask at a UTF-8 copy.')


def tokenize_characters(lines: Sequence[str]) -> List[str]:
  """The character-level tokens of ``lines``: per line, the characters of its
  words joined by ``WORD_BOUNDARY``, then ``corpora.EOS``."""
  tokens: List[str] = []
  for line in lines:
    tokens.extend(WORD_BOUNDARY.join(line.split()))
    tokens.append(corpora.EOS)
  return tokens


_TOKENIZERS = {'word': corpora.tokenize_lines, 'char': tokenize_characters}


def build_vocabulary(tokens: Sequence[str], *, min_count: int = 1,
                     max_size: Optional[int] = None,
                     unknown_token: Optional[str] = '<unk>'
                     ) -> corpora.Vocabulary:
  """The vocabulary of a training stream (see the module docstring).

  Args:
    tokens: the training split's tokens.
    min_count: tokens seen fewer times map to ``unknown_token``.
    max_size: at most this many entries, ``unknown_token`` included; None: no
      limit.
    unknown_token: the token rare and unseen tokens map to; None: every token is
      kept (``min_count`` must be 1 and ``max_size`` None).
  """
  counts = collections.Counter(tokens)
  if unknown_token is None:
    return corpora.Vocabulary.from_counts(counts)
  ranked = sorted((token for token, count in counts.items()
                   if count >= min_count and token != unknown_token),
                  key=lambda token: (-counts[token], token))
  if max_size is not None:
    ranked = ranked[:max_size - 1]
  kept = {token: counts[token] for token in ranked}
  # The unknown token counts its own occurrences and every token mapped to it.
  kept[unknown_token] = len(tokens) - sum(kept.values())
  return corpora.Vocabulary.from_counts(kept)


def _argument(name: str) -> str:
  return f'TextCorpusTask.{name}'


def _check_path(name: str, value: Any) -> Optional[str]:
  """None, or the path as a string (``~`` expanded)."""
  if value is None:
    return None
  if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
    raise ConfigurationError(
        f'{_argument(name)} must be the path of a UTF-8 text file, got '
        f"{value!r}: bind it as a string, e.g. {_argument(name)} = '{name}.txt'")
  return os.path.expanduser(os.fspath(value))


def _check_fraction(name: str, value: Any) -> Optional[float]:
  if value is None:
    return None
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not math.isfinite(value) or not 0 < value < 1):
    raise ConfigurationError(
        f'{_argument(name)} must be a number in (0, 1), the share of the '
        f"training file's tokens held out at its end, got {value!r}")
  return float(value)


def _check_sources(train, valid, test, valid_fraction, test_fraction
                   ) -> Dict[str, Any]:
  """The checked paths and fractions, as ``get_config`` records them."""
  if train is None:
    raise ConfigurationError(
        f"{_argument('train')} is not set: bind the path of the training text, "
        f"e.g. {_argument('train')} = 'train.txt'")
  sources = {'train': _check_path('train', train)}
  fractions = {}
  for split, path, fraction in (('valid', valid, valid_fraction),
                                ('test', test, test_fraction)):
    sources[split] = _check_path(split, path)
    fractions[split] = _check_fraction(f'{split}_fraction', fraction)
    if sources[split] is not None and fractions[split] is not None:
      raise ConfigurationError(
          f'{_argument(split)} = {path!r} and {_argument(split + "_fraction")} = '
          f'{fraction!r} both give the {split} split: bind one of them')
    if sources[split] is None and fractions[split] is None:
      raise ConfigurationError(
          f'the {split} split is not set: bind {_argument(split)} (a file) or '
          f'{_argument(split + "_fraction")} (a share of the training file held '
          f'out at its end, e.g. 0.1)')
  held_out = sum(f for f in fractions.values() if f is not None)
  if held_out >= 1:
    raise ConfigurationError(
        f"{_argument('valid_fraction')} = {valid_fraction!r} and "
        f"{_argument('test_fraction')} = {test_fraction!r} sum to {held_out:g}, "
        'leaving no training tokens: their sum must be below 1')
  for split in ('train', 'valid', 'test'):
    if sources[split] is not None:
      sources[split] = os.path.abspath(sources[split])
  sources.update(valid_fraction=fractions['valid'],
                 test_fraction=fractions['test'])
  return sources


def _check_vocabulary_options(level, min_count, max_size, unknown_token
                              ) -> Dict[str, Any]:
  validation.one_of(_argument('level'), level, LEVELS)
  min_count = validation.integer(_argument('min_count'), min_count, 1)
  if max_size is not None:
    max_size = validation.integer(_argument('max_size'), max_size, 2)
  if unknown_token is None:
    if min_count > 1 or max_size is not None:
      raise ConfigurationError(
          f"{_argument('unknown_token')} = None keeps every training token, so "
          f"{_argument('min_count')} = {min_count} and {_argument('max_size')} = "
          f'{max_size} cannot apply: bind an unknown token, e.g. '
          f"{_argument('unknown_token')} = '<unk>'")
  elif (not isinstance(unknown_token, str) or unknown_token.split() !=
        [unknown_token] or unknown_token == corpora.EOS):
    raise ConfigurationError(
        f"{_argument('unknown_token')} must be a non-empty string without "
        f'whitespace, other than {corpora.EOS!r}, or None, got {unknown_token!r}')
  return {'level': level, 'min_count': min_count, 'max_size': max_size,
          'unknown_token': unknown_token}


def _read_text(name: str, path: str) -> str:
  """The UTF-8 text of the file bound to ``TextCorpusTask.<name>`` (``path``
  absolute, so that a message says where it was looked for)."""
  try:
    data = pathlib.Path(path).read_bytes()
  except FileNotFoundError:
    raise DataError(f'{_argument(name)}: file {path} does not exist; expected a '
                    'UTF-8 text file') from None
  except IsADirectoryError:
    raise DataError(f'{_argument(name)}: {path} is a directory; expected a UTF-8 '
                    'text file') from None
  except OSError as error:
    raise DataError(f'{_argument(name)}: cannot read {path}: '
                    f'{error.strerror or error}') from None
  if not data:
    raise DataError(f'{_argument(name)}: {path} is empty; expected UTF-8 text')
  try:
    return corpora.decode_text(path, data, fix=_NOT_UTF8_FIX)
  except DataError as error:
    raise DataError(f'{_argument(name)}: {error}') from None


def _too_short(split: str, count: int, origin: str) -> DataError:
  return DataError(
      f'{origin} leaves the {split} split {count} token(s); expected at least '
      f'{MIN_SPLIT_TOKENS} (an input and the next token): give more text')


def read_splits(sources: Dict[str, Any], level: str) -> Dict[str, List[str]]:
  """The tokens of each split (files, and the training file's held-out tail).

  Args:
    sources: the output of ``_check_sources``.
    level: ``'word'`` or ``'char'``.

  Raises:
    DataError: a file cannot be read, is empty or not UTF-8, or a split has fewer
      than ``MIN_SPLIT_TOKENS`` tokens.
  """
  tokenize = _TOKENIZERS[level]
  tokens, origins = {}, {}
  for split in _SPLITS:
    if sources[split] is not None:
      text = _read_text(split, sources[split])
      tokens[split] = tokenize(corpora.text_lines(text))
      origins[split] = f'{_argument(split)}: {sources[split]}'
  whole = tokens['train']
  end = len(whole)
  for split in ('test', 'valid'):  # The test split is the very end.
    fraction = sources[f'{split}_fraction']
    if fraction is not None:
      start = end - int(round(len(whole) * fraction))
      tokens[split] = whole[start:end]
      origins[split] = (f'{_argument(split + "_fraction")} = {fraction:g} of the '
                        f"{len(whole)} tokens of {sources['train']}")
      end = start
  if end < len(whole):
    tokens['train'] = whole[:end]
    origins['train'] = (f"holding out {len(whole) - end} of the {len(whole)} "
                        f"tokens of {_argument('train')}: {sources['train']}")
  for split in _SPLITS:
    if len(tokens[split]) < MIN_SPLIT_TOKENS:
      raise _too_short(split, len(tokens[split]), origins[split])
  return tokens


def encode(tokens: Sequence[str], vocabulary: corpora.Vocabulary,
           unknown_token: Optional[str], origin: str = 'the split') -> np.ndarray:
  """The ids of ``tokens`` (int32, read-only); tokens not in ``vocabulary`` map to
  ``unknown_token``, or are a ``DataError`` naming ``origin`` when it is None."""
  lookup = vocabulary.token_to_id
  if unknown_token is not None:
    ids = map(lookup.get, tokens, itertools.repeat(lookup[unknown_token]))
  else:
    missing = next((i for i, token in enumerate(tokens) if token not in lookup),
                   None)
    if missing is not None:
      raise DataError(
          f'{origin}: token {tokens[missing]!r} (token {missing} of the split) is '
          f'not in the vocabulary of the training split, and '
          f"{_argument('unknown_token')} = None: bind an unknown token, e.g. "
          f"{_argument('unknown_token')} = '<unk>', to map unseen tokens to it")
    ids = map(lookup.__getitem__, tokens)
  array = np.fromiter(ids, dtype=np.int32, count=len(tokens))
  array.flags.writeable = False  # Shared by every batch size's stream.
  return array


@config.configurable
class TextCorpusTask(TokenStreamTask):
  """Next-token prediction on the user's own text files (module docstring)."""

  def __init__(self, *, train: Optional[str] = None, valid: Optional[str] = None,
               test: Optional[str] = None, valid_fraction: Optional[float] = None,
               test_fraction: Optional[float] = None, level: str = 'word',
               min_count: int = 1, max_size: Optional[int] = None,
               unknown_token: Optional[str] = '<unk>',
               data_dir: Optional[str] = None,
               train_tokens: Optional[int] = None):
    """Reads and tokenises the files and builds the vocabulary.

    Args:
      train: path of the training text (UTF-8). Required. A relative path is
        read from the current directory; ``get_config`` records absolute paths.
      valid, test: paths of the validation and test texts; or, instead of
        either, ``valid_fraction`` / ``test_fraction``: the share of the training
        file's tokens held out at its end (test last), each in (0, 1), their sum
        below 1.
      level: ``'word'`` (metric perplexity) or ``'char'`` (bits per character).
      min_count: training tokens seen fewer times map to ``unknown_token``.
      max_size: the largest vocabulary, ``unknown_token`` included (>= 2); None:
        no limit.
      unknown_token: what rare and unseen tokens map to (always in the
        vocabulary); None: a closed vocabulary (see the module docstring).
      data_dir: accepted because the trainer and the evaluator pass
        ``--data_dir`` to a task that takes it; unused: the paths say where the
        text is.
      train_tokens: train on the first ``train_tokens`` tokens of the training
        split only, as ``LanguageModelTask.train_tokens`` (the vocabulary still
        comes from the whole training split); None: the whole split.

    Raises:
      ConfigurationError: a setting is invalid (exit code 2).
      DataError: a file is missing, unreadable, empty or not UTF-8, a split has
        fewer than 2 tokens, or (``unknown_token=None``) a valid or test token
        is not in the training split (exit code 1).
    """
    super().__init__()
    del data_dir  # See the docstring.
    sources = _check_sources(train, valid, test, valid_fraction, test_fraction)
    options = _check_vocabulary_options(level, min_count, max_size, unknown_token)
    if train_tokens is not None:
      train_tokens = validation.positive_int(_argument('train_tokens'),
                                             train_tokens)
    self._config = dict(sources, **options, train_tokens=train_tokens)
    self.level = level
    self.train_tokens = train_tokens
    self.name = f'text_{level}'
    self.metric_name = 'bpc' if level == 'char' else 'perplexity'
    tokens = read_splits(sources, level)
    self._vocabulary = build_vocabulary(
        tokens['train'], min_count=options['min_count'],
        max_size=options['max_size'], unknown_token=unknown_token)
    self._split_ids = {
        split: encode(tokens[split], self._vocabulary, unknown_token,
                      origin=_argument(split) if sources[split] else
                      _argument(f'{split}_fraction'))
        for split in _SPLITS}

  @property
  def vocabulary(self) -> corpora.Vocabulary:
    return self._vocabulary

  @property
  def vocabulary_size(self) -> int:
    return len(self._vocabulary)

  def _ids(self, split: str) -> np.ndarray:
    ids = self._split_ids[split]
    if split == 'train' and self.train_tokens is not None:
      return ids[:self.train_tokens]
    return ids

  def vocabulary_tokens(self) -> List[str]:
    return list(self._vocabulary.tokens)

  def get_config(self) -> Dict[str, Any]:
    """The constructor arguments (absolute paths): ``TextCorpusTask(**config)``
    reads the same files the same way."""
    return dict(self._config)

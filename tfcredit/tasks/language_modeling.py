"""Language modelling on a token stream (the stream regime of docs/design.md).

Next-token prediction with per-step cross-entropy. Each split is laid out as ``B``
parallel columns (``batchify``); the trainer carries the state from one call to the
next and resets it at each epoch's start. Word-level data report perplexity
``exp(mean NLL)``; character-level data bits per character ``mean NLL / ln 2``.

* ``LanguageModelTask``: a real corpus (PTB word or char, WikiText-2, text8).
* ``MarkovLanguageTask``: a stream drawn from a random sparse Markov chain, made on
  the fly: a stream task with no download, whose best achievable perplexity is
  known (the chain's entropy rate), for smoke runs and tests.
"""

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfcredit import config
from tfcredit import losses
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.tasks import base
from tfcredit.tasks import corpora

_CHARACTER_CORPORA = ('ptb_char', 'text8')
_SPLITS = ('train', 'valid', 'test')


class TokenStreamTask(base.Task):
  """Shared by stream language tasks: loss, metric, batchified splits.

  A subclass gives ``vocabulary_size`` and ``_ids(split)``, the split's token ids
  as one 1-D integer array; ``stream`` lays them out in columns.
  """

  regime = base.STREAM
  readout = base.PER_STEP
  metric_name = 'perplexity'

  def __init__(self):
    self._streams: Dict[Tuple[str, int], np.ndarray] = {}

  def _ids(self, split: str) -> np.ndarray:
    raise NotImplementedError

  @property
  def vocabulary_size(self) -> int:
    raise NotImplementedError

  def model_spec(self) -> Dict[str, Any]:
    size = self.vocabulary_size
    return {'input_vocab_size': size, 'output_dim': size, 'readout': self.readout}

  def segment_spec(self):
    return (tf.TensorSpec([None, None], tf.int32, name='inputs'),
            tf.TensorSpec([None, None], tf.int32, name='targets'))

  def losses(self, outputs, targets):
    return losses.sparse_softmax_cross_entropy(targets, tf.cast(outputs, tf.float32))

  def metric_from_loss(self, mean_loss: float) -> float:
    if self.metric_name == 'bpc':
      return base.nats_to_bits(mean_loss)
    return math.exp(min(mean_loss, 700.0))

  def stream(self, split: str, batch_size: int) -> np.ndarray:
    validation.one_of('split', split, _SPLITS)
    key = (split, batch_size)
    if key not in self._streams:
      self._streams[key] = corpora.batchify(self._ids(split), batch_size)
    return self._streams[key]


@config.configurable
class LanguageModelTask(TokenStreamTask):
  """Next-token prediction on a corpus of ``tfcredit.tasks.corpora``."""

  def __init__(self, *, corpus: str = 'ptb', data_dir: Optional[str] = None,
               download: bool = True, train_tokens: Optional[int] = None):
    """Loads (and if needed downloads) the corpus.

    Args:
      corpus: ``'ptb'``, ``'ptb_char'``, ``'wikitext2'`` or ``'text8'``.
      data_dir: the data directory (``--data_dir``; run plumbing, not gin).
      download: fetch absent files from their canonical source.
      train_tokens: train on the first ``train_tokens`` tokens of the training
        split only (a reduced budget that stays reproducible); validation and test
        are whole. None: the whole split.
    """
    super().__init__()
    if train_tokens is not None:
      validation.positive_int('LanguageModelTask.train_tokens', train_tokens)
    self.train_tokens = train_tokens
    self.corpus_name = corpus
    self._corpus = corpora.load_corpus(corpus, data_dir=data_dir, download=download)
    self.name = f'lm_{corpus}'
    self.metric_name = 'bpc' if corpus in _CHARACTER_CORPORA else 'perplexity'

  @property
  def vocabulary(self) -> corpora.Vocabulary:
    return self._corpus.vocab

  @property
  def vocabulary_size(self) -> int:
    return len(self.vocabulary)

  def _ids(self, split: str) -> np.ndarray:
    ids = getattr(self._corpus, split)
    if split == 'train' and self.train_tokens is not None:
      return ids[:self.train_tokens]
    return ids

  def vocabulary_tokens(self):
    return list(self.vocabulary.tokens)

  def get_config(self) -> Dict[str, Any]:
    config = {'corpus': self.corpus_name}
    if self.train_tokens is not None:
      config['train_tokens'] = self.train_tokens
    return config


@config.configurable
class MarkovLanguageTask(TokenStreamTask):
  """A token stream from a random sparse first-order Markov chain.

  Each token has ``branching`` possible successors with Dirichlet(1) probabilities.
  The best achievable mean loss is the chain's entropy rate
  ``Σ_i π_i H(P_i)`` (``π`` the stationary distribution), exposed as
  ``optimal_perplexity``.
  """

  name = 'markov_lm'

  def __init__(self, *, vocabulary_size: int = 16, branching: int = 3,
               train_length: int = 20000, eval_length: int = 4000, seed: int = 0):
    super().__init__()
    self._size = validation.positive_int('MarkovLanguageTask.vocabulary_size',
                                         vocabulary_size)
    self.branching = validation.positive_int('MarkovLanguageTask.branching',
                                             branching)
    if self.branching > self._size:
      raise ConfigurationError(
          f'MarkovLanguageTask.branching={branching} exceeds vocabulary_size='
          f'{vocabulary_size}: use branching <= vocabulary_size')
    self.lengths = {
        'train': validation.positive_int('MarkovLanguageTask.train_length',
                                         train_length),
        'valid': validation.positive_int('MarkovLanguageTask.eval_length',
                                         eval_length),
        'test': eval_length}
    self.seed = int(seed)
    rng = np.random.default_rng([self.seed, 0])
    self.transitions = np.zeros((self._size, self._size))
    for row in range(self._size):
      successors = rng.choice(self._size, self.branching, replace=False)
      self.transitions[row, successors] = rng.dirichlet(np.ones(self.branching))
    self._cache: Dict[str, np.ndarray] = {}

  @property
  def vocabulary_size(self) -> int:
    return self._size

  @property
  def optimal_perplexity(self) -> float:
    values, vectors = np.linalg.eig(self.transitions.T)
    stationary = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    stationary = stationary / stationary.sum()
    with np.errstate(divide='ignore', invalid='ignore'):
      logs = np.where(self.transitions > 0, np.log(self.transitions), 0.0)
    entropy = -np.sum(stationary[:, None] * self.transitions * logs)
    return math.exp(entropy)

  def _ids(self, split: str) -> np.ndarray:
    if split not in self._cache:
      rng = np.random.default_rng([self.seed, 1 + _SPLITS.index(split)])
      cumulative = np.cumsum(self.transitions, axis=1)
      draws = rng.random(self.lengths[split])
      ids = np.empty(self.lengths[split], np.int32)
      token = int(rng.integers(self._size))
      for index, draw in enumerate(draws):
        ids[index] = token
        token = min(int(np.searchsorted(cumulative[token], draw)), self._size - 1)
      self._cache[split] = ids
    return self._cache[split]

  def get_config(self) -> Dict[str, Any]:
    return {'vocabulary_size': self._size, 'branching': self.branching,
            'train_length': self.lengths['train'],
            'eval_length': self.lengths['valid'], 'seed': self.seed}

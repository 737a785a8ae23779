"""Language modelling on a token stream (the stream regime of DESIGN.md).

Next-token prediction with per-step cross-entropy. The split is laid out as ``B``
parallel columns (``batchify``); the trainer carries the state from one call to the
next and resets it at each epoch's start. Word corpora report perplexity
``exp(mean NLL)``; character corpora bits per character ``mean NLL / ln 2``.
"""

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.tasks import base
from tfcredit.tasks import corpora

_CHARACTER_CORPORA = ('ptb_char', 'text8')


class LanguageModelTask(base.Task):
  """Next-token prediction on one of the corpora of ``tfcredit.tasks.corpora``."""

  regime = base.STREAM
  readout = base.PER_STEP

  def __init__(self, *, corpus: str = 'ptb', data_dir: Optional[str] = None,
               download: bool = True):
    """Loads (and if needed downloads) the corpus.

    Args:
      corpus: ``'ptb'``, ``'ptb_char'``, ``'wikitext2'`` or ``'text8'``.
      data_dir: the data directory (``--data_dir``; run plumbing, not gin).
      download: fetch absent files from their canonical source.
    """
    self.corpus_name = corpus
    self.data_dir = data_dir
    self._corpus = corpora.load_corpus(corpus, data_dir=data_dir, download=download)
    self.name = f'lm_{corpus}'
    self.metric_name = 'bpc' if corpus in _CHARACTER_CORPORA else 'perplexity'
    self._streams: Dict[Tuple[str, int], np.ndarray] = {}

  @property
  def vocabulary(self) -> 'corpora.Vocabulary':
    return self._corpus.vocab

  def model_spec(self) -> Dict[str, Any]:
    size = len(self.vocabulary)
    return {'input_vocab_size': size, 'output_dim': size, 'readout': self.readout}

  def segment_spec(self):
    return (tf.TensorSpec([None, None], tf.int32, name='inputs'),
            tf.TensorSpec([None, None], tf.int32, name='targets'))

  def losses(self, outputs, targets):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=targets, logits=tf.cast(outputs, tf.float32))

  def metric_from_loss(self, mean_loss: float) -> float:
    if self.metric_name == 'bpc':
      return base.nats_to_bits(mean_loss)
    return math.exp(min(mean_loss, 700.0))

  def stream(self, split: str, batch_size: int) -> np.ndarray:
    key = (split, batch_size)
    if key not in self._streams:
      if split not in ('train', 'valid', 'test'):
        raise ConfigurationError(
            f'split must be train, valid or test, got {split!r}')
      self._streams[key] = corpora.batchify(getattr(self._corpus, split),
                                            batch_size)
    return self._streams[key]

  def vocabulary_tokens(self):
    return list(self.vocabulary.tokens)

  def get_config(self) -> Dict[str, Any]:
    return {'corpus': self.corpus_name}

"""The Add task (Pitis 2016; Marschall, Cho & Savin 2020, JMLR 21): a stream of coin
flips whose label depends on two past flips.

At every step the input is a fair coin ``x_t ∈ {0, 1}`` and the label is
``y_t ~ Bernoulli(p_t)`` with

    p_t = 0.5 + 0.5 x_{t−t1} − 0.25 x_{t−t2},      0 < t1 < t2,

scored by the cross-entropy over two classes at every step (nats). With
``deterministic=True`` the target is ``p_t`` itself (a soft label), as the
``deterministic`` option of the authors' code. The mean loss of a predictor that
knows neither lag, only the first, or both is the mean entropy of the label given
what it knows, whatever ``t1`` and ``t2`` (``plateaus``):

* nothing learned, ``p = 0.625``: ``H(0.625) ≈ 0.6616`` (the paper's 0.662);
* only ``x_{t−t1}`` (``p = 0.375`` or ``0.875``): ``≈ 0.5192`` (0.519);
* both lags (``p ∈ {0.25, 0.5, 0.75, 1}``): ``≈ 0.4545`` (0.454), the optimum.

The task is a *stream* (``base.STREAM``): every column is one long run of the
process, and a method consumes it in segments and carries its state across calls.
Columns are independent runs, each started ``t2`` steps before its first scored step
so that every label has both of its lags in the column. The inputs reach the model
as the one-hot ``[1 − x, x]`` (two real features, ``input_dim = 2``: the authors'
network multiplies a one-hot input by ``W_in``, which is what a core fed two
features does; a token id would add an embedding layer in front of it). The
output is two logits, class 1 meaning ``y = 1``.

The stream stores, at position ``i``, ``x_i + 2 c_{i−1}``, where ``c_{i−1}`` codes
the label of the step before (``y`` itself, or with ``deterministic=True`` the index
``2 x_{i−1−t1} + x_{i−1−t2}`` of ``p``); ``stream_window`` decodes it into the
one-hot inputs and the probability of class 1 as targets, so the model never sees
a label. Split ``s`` column ``j`` is drawn from ``numpy.random.default_rng([seed,
s, j])``: reproducible, and the validation and test streams are independent of
training and of each other.
"""

from typing import Any, Dict, Tuple

import numpy as np
import tensorflow as tf

from tfcredit import config
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.tasks import base

_SPLITS = {'train': 0, 'valid': 1, 'test': 2}


def label_probability(first, second):
  """``p_t`` from ``x_{t−t1}`` and ``x_{t−t2}`` (arrays or numbers)."""
  return 0.5 + 0.5 * first - 0.25 * second


@config.configurable
class LagAddTask(base.Task):
  """The Add task as a stream: per-step two-class cross-entropy in nats."""

  name = 'lag_add'
  regime = base.STREAM
  readout = base.PER_STEP
  metric_name = 'cross_entropy'

  # The three plateaus (nats): the paper's 0.662, 0.519 and 0.454.
  PLATEAU_NOTHING = 0.661563  # H(0.625)
  PLATEAU_FIRST_LAG = 0.519167  # (H(0.375) + H(0.875)) / 2
  PLATEAU_BOTH_LAGS = 0.454454  # (H(0.5) + H(1) + 2 H(0.75)) / 4

  def __init__(self, *, t1: int = 6, t2: int = 10, deterministic: bool = False,
               train_steps: int = 100_000, eval_steps: int = 10_000,
               seed: int = 0):
    """Defines the process and the streams' lengths.

    Args:
      t1: the first lag (the paper's ``t_1``; 6 and 10 are the lags the
        authors' own tests of their code use).
      t2: the second lag, ``t2 > t1``.
      deterministic: targets ``p_t`` (soft labels) instead of Bernoulli draws.
      train_steps: scored steps of one training epoch, over all columns: each of
        ``B`` columns holds ``train_steps // B`` steps (batch size 1: the paper's
        online stream).
      eval_steps: the same for the validation and the test stream.
      seed: the seed of every stream.
    """
    self.t1 = validation.positive_int('LagAddTask.t1', t1)
    self.t2 = validation.positive_int('LagAddTask.t2', t2)
    if self.t2 <= self.t1:
      raise ConfigurationError(
          f'LagAddTask needs 0 < t1 < t2, got t1={t1}, t2={t2}: use a second lag '
          'larger than the first, e.g. t1 = 6, t2 = 10')
    self.deterministic = validation.boolean('LagAddTask.deterministic',
                                            deterministic)
    self.steps = {
        'train': validation.positive_int('LagAddTask.train_steps', train_steps),
        'valid': validation.positive_int('LagAddTask.eval_steps', eval_steps)}
    self.steps['test'] = self.steps['valid']
    self.seed = int(seed)
    self._streams: Dict[Tuple[str, int], np.ndarray] = {}

  # ------------------------------------------------------------ plateaus
  @property
  def plateaus(self) -> Dict[str, float]:
    """The mean loss of the ideal predictor knowing nothing, the first lag, both."""
    return {'nothing': self.PLATEAU_NOTHING, 'first_lag': self.PLATEAU_FIRST_LAG,
            'both_lags': self.PLATEAU_BOTH_LAGS}

  # ------------------------------------------------------------ model I/O
  def model_spec(self) -> Dict[str, Any]:
    return {'input_dim': 2, 'output_dim': 2, 'readout': self.readout}

  def segment_spec(self):
    return (tf.TensorSpec([None, None, 2], tf.float32, name='inputs'),
            tf.TensorSpec([None, None], tf.float32, name='targets'))

  def losses(self, outputs, targets):
    """``−(q log p̂₁ + (1 − q) log p̂₀)`` per step, ``q`` the target's class-1 mass."""
    log_probabilities = tf.nn.log_softmax(tf.cast(outputs, tf.float32))
    targets = tf.cast(targets, tf.float32)
    return -(targets * log_probabilities[..., 1] +
             (1.0 - targets) * log_probabilities[..., 0])

  # ---------------------------------------------------------------- data
  def _column(self, split: int, column: int, steps: int) -> np.ndarray:
    """One run: ``steps + 1`` stored positions (``x_i + 2 c_{i−1}``)."""
    rng = np.random.default_rng([self.seed, split, column])
    x = rng.integers(0, 2, size=steps + 1 + self.t2)
    scored = np.arange(self.t2, self.t2 + steps)  # Steps with both lags in the run.
    first, second = x[scored - self.t1], x[scored - self.t2]
    if self.deterministic:
      codes = 2 * first + second
    else:
      codes = (rng.random(steps) < label_probability(first, second)).astype(np.int64)
    stored = x[self.t2:].copy()
    stored[1:] += 2 * codes
    return stored.astype(np.int32)

  def stream(self, split: str, batch_size: int) -> np.ndarray:
    validation.one_of('split', split, sorted(_SPLITS))
    key = (split, batch_size)
    if key not in self._streams:
      steps = self.steps[split] // batch_size
      self._streams[key] = np.stack(
          [self._column(_SPLITS[split], column, steps)
           for column in range(batch_size)]) if steps else np.zeros(
               [batch_size, 1], np.int32)
    return self._streams[key]

  def stream_window(self, data: np.ndarray, start: int, end: int):
    """One-hot inputs ``[B, T, 2]`` and the class-1 probability targets ``[B, T]``."""
    inputs = np.eye(2, dtype=np.float32)[data[:, start:end] % 2]
    codes = data[:, start + 1:end + 1] // 2
    if self.deterministic:
      targets = label_probability(codes // 2, codes % 2)
    else:
      targets = codes
    return inputs, targets.astype(np.float32)

  def get_config(self) -> Dict[str, Any]:
    return {'t1': self.t1, 't2': self.t2, 'deterministic': self.deterministic,
            'train_steps': self.steps['train'], 'eval_steps': self.steps['valid'],
            'seed': self.seed}

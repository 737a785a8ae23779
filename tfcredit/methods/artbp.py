"""ARTBP: Anticipated Reweighted Truncated BackPropagation (Tallec & Ollivier 2017).

Truncated BPTT with random truncation points (Eq. 14: after a step ``δt`` steps
into a window, truncate with probability ``c(δt) = (α − 1) / ((α − 2)·L0 + δt)``)
and the compensation factor ``1 / (1 − c)`` of Eq. 11 on every state gradient that
was not truncated, applied through the model's ``state_grad_scale`` hook; on
average the gradient equals full BPTT's (Prop. 1). This module owns the sampler,
the factors and the truncation process (stateless draws keyed by a checkpointed
block counter, so a resume draws the same windows); the indexing and the stream
and episodic cases are in docs/methods/artbp.md.
"""

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from tfcredit import validation
from tfcredit import xla
from tfcredit.errors import ConfigurationError
from tfcredit.methods import base
from tfcredit.methods import registry
from tfcredit.methods.replicas import densify
from tfcredit.metrics import CONCAT, MAX
from tfcredit.tasks import base as task_base

SCHEDULES = ('power', 'constant')
ESTIMATE_DRAWS = ('shared', 'per_row')
# Longest window a draw can give (longer draws are cut there): P(L > 2^30) is about
# ((α − 2) L0 / 2^30)^(α − 1), 1e-16 for α = 4 and L0 = 1000.
MAX_WINDOW_LENGTH = 2**30
_TABLE_SIZE = 2**14
_TRAIN_KEY, _ESTIMATE_KEY = 0, 1


class TruncationSampler:
  """The truncation probabilities of Eq. 14 (or constant), their window lengths and
  compensation factors. All functions are vectorised float64 TensorFlow ops."""

  def __init__(self, mean_length: float, alpha: float = 4.0,
               schedule: str = 'power'):
    """Validates the schedule.

    Raises:
      ConfigurationError: unknown schedule, ``mean_length <= 0``, ``alpha <= 2``
        (power schedule), or a truncation probability ``c >= 1``.
    """
    validation.one_of(
        'ARTBP.schedule', schedule, SCHEDULES,
        ": use 'power' (Eq. 14) or 'constant' (c = 1/L0, geometric lengths)")
    self.mean_length = validation.finite_number('ARTBP.mean_length', mean_length)
    if self.mean_length <= 0:
      raise ConfigurationError(
          f'ARTBP.mean_length must be positive (the mean window length L0), got '
          f'{mean_length!r}: the paper uses 16 (influence balancing) and 50 (PTB)')
    self.schedule = schedule
    self.alpha = validation.finite_number('ARTBP.alpha', alpha)
    if schedule == 'power' and self.alpha <= 2:
      raise ConfigurationError(
          f'ARTBP.alpha must be > 2 for the power schedule (Eq. 14 has mean window '
          f'length L0 only then; the length variance is finite for alpha > 3), got '
          f'{alpha!r}: the paper uses alpha = 4 or 6')
    c_1 = self._probability_float(1)
    if c_1 >= 1:
      raise ConfigurationError(
          f'ARTBP.mean_length={mean_length!r} gives truncation probability c_1 = '
          f'{c_1:.4g} >= 1 (schedule {schedule!r}), so the compensation 1/(1 - c) is '
          'undefined: use mean_length > 1')
    # Eq. 14 written as c(δ) = (α − 1) / (K + δ).
    self._offset = (self.alpha - 2.0) * self.mean_length
    with tf.init_scope():  # −log P(L > l) for l < _TABLE_SIZE, increasing.
      self._table = (-self.log_survival(tf.range(_TABLE_SIZE))).numpy()

  def _probability_float(self, elapsed: int) -> float:
    if self.schedule == 'constant':
      return 1.0 / self.mean_length
    return (self.alpha - 1) / ((self.alpha - 2) * self.mean_length + elapsed)

  def truncation_probability(self, elapsed) -> tf.Tensor:
    """``c(δt)``, the probability of truncating after a step ``δt`` steps into a window."""
    elapsed = tf.cast(elapsed, tf.float64)
    if self.schedule == 'constant':
      return tf.fill(tf.shape(elapsed), tf.constant(1.0 / self.mean_length, tf.float64))
    return (self.alpha - 1.0) / (self._offset + elapsed)

  def compensation(self, elapsed) -> tf.Tensor:
    """``1 / (1 − c(δt))``, the factor of Eq. 11 when no truncation happened."""
    return 1.0 / (1.0 - self.truncation_probability(elapsed))

  def log_survival(self, length) -> tf.Tensor:
    """``log P(window length > l) = Σ_{δ=1..l} log(1 − c(δ))``, closed form."""
    length = tf.cast(length, tf.float64)
    if self.schedule == 'constant':
      return length * math.log1p(-1.0 / self.mean_length)
    k, a = self._offset, self.alpha
    return (tf.math.lgamma(k + length - a + 2.0) - math.lgamma(k - a + 2.0)
            - tf.math.lgamma(k + length + 1.0) + math.lgamma(k + 1.0))

  def sample_lengths(self, uniforms: tf.Tensor) -> tf.Tensor:
    """Window lengths by inversion: the least ``l`` with ``P(L > l) < 1 − u``.

    A table of ``log P(L > l)`` for ``l < 2^14`` answers almost every draw with one
    search; the rare longer draws are found by bisection up to ``MAX_WINDOW_LENGTH``.

    Args:
      uniforms: float64 draws in ``[0, 1)``, any shape.

    Returns:
      int32 lengths in ``[1, MAX_WINDOW_LENGTH]``, same shape.
    """
    log_target = tf.math.log1p(-uniforms)
    lengths = tf.searchsorted(self._table, tf.reshape(-log_target, [-1]),
                              side='right', out_type=tf.int32)
    lengths = tf.reshape(lengths, tf.shape(uniforms))
    return tf.cond(tf.reduce_any(lengths >= _TABLE_SIZE),
                   lambda: self._bisect(log_target, tf.maximum(lengths, 1)),
                   lambda: lengths)

  def _bisect(self, log_target, lengths):
    # log_survival(low) >= log_target holds throughout.
    low = tf.cast(tf.where(lengths >= _TABLE_SIZE, _TABLE_SIZE - 1, lengths - 1),
                  tf.float64)
    high = tf.where(lengths >= _TABLE_SIZE,
                    tf.constant(MAX_WINDOW_LENGTH, tf.float64),
                    tf.cast(lengths, tf.float64))
    for _ in range(int(math.log2(MAX_WINDOW_LENGTH))):
      middle = tf.floor((low + high) / 2.0)
      below = self.log_survival(middle) < log_target
      high = tf.where(below, middle, high)
      low = tf.where(below, low, middle)
    return tf.cast(high, tf.int32)


def compensation_scales(sampler: TruncationSampler, lengths: tf.Tensor,
                        length, compensate: bool = True) -> tf.Tensor:
  """The ``state_grad_scale`` of consecutive windows (Eq. 11), ``[rows, length]``.

  Args:
    sampler: gives the factors ``1 / (1 − c(δt))``.
    lengths: ``[rows, n]`` int32 window lengths per row, summing to ``length`` or
      more (the window that crosses ``length`` is cut there).
    length: steps in the segment.
    compensate: False: every factor inside a window is 1 (random truncation
      without compensation, a biased ablation).

  Returns:
    float32 factors: step ``p`` of a window starting at ``start`` has ``δt = p −
    start + 1`` and factor ``1 / (1 − c(δt))`` (1 without compensation); the last
    step of every window (a truncation, or the segment's end) has factor 0.
  """
  ends = tf.cumsum(lengths, axis=1)
  positions = tf.broadcast_to(tf.range(length), tf.stack([tf.shape(ends)[0], length]))
  window = tf.searchsorted(ends, positions, side='right')
  window_end = tf.gather(ends, window, batch_dims=1)
  window_start = window_end - tf.gather(lengths, window, batch_dims=1)
  last = tf.logical_or(tf.equal(positions + 1, window_end),
                       tf.equal(positions + 1, length))
  factors = sampler.compensation(positions - window_start + 1)
  if not compensate:
    factors = tf.ones_like(factors)
  return tf.cast(tf.where(last, tf.zeros_like(factors), factors), tf.float32)


@registry.register
class ARTBP(base.Method):
  """ARTBP with window lengths of mean ``mean_length`` (see the module docstring).

  ``train_segment`` metrics: the base ones (``loss_sum``, ``count``,
  ``grad_norm_sum``, ``updates``) plus ``windows`` (windows in the segment),
  ``window_length_sum`` (their total length: the segment length) and
  ``max_compensation`` (the largest product of factors along a backpropagated
  window, ``1 / P(L > longest − 1)``) and ``window_lengths`` (the lengths of the
  windows run, rank 1). TensorBoard shows ``method/mean_window_length``,
  ``method/max_compensation`` (the largest over the interval) and the histogram
  ``method/window_lengths``.
  """

  EXAMPLE_ARGUMENTS = {'mean_length': 4, 'windows_per_call': 3, 'seed': 3}
  # Random window lengths, each an XLA compile at its own shape: only the
  # cross-entropy, over rows padded to a few counts.
  COMPILED_PARTS = xla.BUCKETED
  metric_reductions = {'max_compensation': MAX, 'window_lengths': CONCAT}

  def summaries(self, totals):
    values = {'max_compensation': totals['max_compensation'],
              'window_lengths': totals['window_lengths']}
    if totals['windows'] > 0:
      values['mean_window_length'] = totals['window_length_sum'] / totals['windows']
    return values

  def __init__(self, *, model, task, optimizer, mean_length: float,
               alpha: float = 4.0, schedule: str = 'power', seed: int = 0,
               windows_per_call: int = 10, estimate_draws: str = 'shared',
               compensate: bool = True,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Binds the method.

    Args:
      mean_length: ``L0``, the mean window length (> 1); also the nominal window
        length that divides every window's loss.
      alpha: ``α`` of Eq. 14 (> 2); the paper uses 4 (PTB) and 6 (influence
        balancing). Larger ``α``: fewer long windows, larger compensation.
      schedule: ``'power'`` (Eq. 14) or ``'constant'`` (``c = 1/L0``, the ablation
        whose compensation grows exponentially with the window length).
      seed: seeds the truncation process (kept in checkpoints).
      windows_per_call: stream tasks: windows per ``train_segment`` call (also the
        block size of the draws, for episodic tasks too).
      estimate_draws: ``'shared'``: ``estimate_gradients`` draws one truncation
        sequence for the whole batch, as training does; ``'per_row'``: one per batch
        row, the mean of ``B`` independent estimates (lower variance, same mean).
      compensate: multiply the state gradients by Eq. 11's factors (the
        unbiased ARTBP); False keeps the random truncations with every factor
        1, an ablation that separates the random window lengths from the
        compensation (biased, like truncated BPTT).
      clip_norm: as in ``Method`` (the paper: none; clipping breaks
        unbiasedness).
      model, task, optimizer, use_tf_function, name: as in ``Method``.

    Raises:
      ConfigurationError: an argument is out of range.
    """
    self.sampler = TruncationSampler(mean_length, alpha, schedule)
    self.mean_length = self.sampler.mean_length
    self.windows_per_call = validation.positive_int(
        'ARTBP.windows_per_call', windows_per_call)
    self.estimate_draws = validation.one_of('ARTBP.estimate_draws',
                                            estimate_draws, ESTIMATE_DRAWS)
    self.compensate = validation.boolean('ARTBP.compensate', compensate)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise ConfigurationError(f'ARTBP.seed must be an integer, got {seed!r}')
    super().__init__(model=model, task=task, optimizer=optimizer,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name or 'ARTBP')
    variable = lambda value, name: tf.Variable(
        value, dtype=tf.int64, trainable=False, name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.truncation_seed = variable(int(seed), 'truncation_seed')
    self.training_blocks = variable(0, 'training_blocks')  # Blocks drawn so far.
    self.estimate_blocks = variable(0, 'estimate_blocks')
    self._plan_fn = self.compile('plan', self._planned_window_lengths, [])

  # ------------------------------------------------------------- public API
  def check_task(self, task: task_base.Task) -> None:
    """Refuses padded sequences with one target each: a truncation drawn in a
    shorter sequence's padding would cut its loss from its own steps."""
    if task.masked and task.readout == task_base.TERMINAL:
      raise ConfigurationError(
          f'ARTBP cannot train task {task.name!r}: its sequences have different '
          'lengths and one target each, and a truncation drawn in the padding '
          "after a shorter sequence's end would cut that sequence's loss from "
          'its steps; use BPTT (whole sequences), RTRL, UORO or SnAp1')

  def segment_length(self) -> Optional[int]:
    """Streams: the total length of the windows the next call will train on."""
    if self.task.regime != task_base.STREAM:
      return None
    return int(np.sum(self.planned_window_lengths(), dtype=np.int64))

  def planned_window_lengths(self) -> np.ndarray:
    """The next training call's first ``windows_per_call`` window lengths.

    Not consumed: the next ``train_segment`` uses them (cut at the segment's end),
    then further blocks if the segment is longer than their total.
    """
    return self._plan_fn().numpy()

  # ------------------------------------------------------------- the draws
  def _uniforms(self, key: int, block, shape) -> tf.Tensor:
    seed = tf.random.experimental.stateless_fold_in(
        tf.stack([self.truncation_seed, tf.constant(key, tf.int64)]),
        tf.cast(block, tf.int64))
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float64)

  def _planned_window_lengths(self):
    uniforms = self._uniforms(_TRAIN_KEY, self.training_blocks,
                              [1, self.windows_per_call])
    return self.sampler.sample_lengths(uniforms)[0]

  def _draw_window_lengths(self, key: int, counter: tf.Variable, length, rows):
    """``[rows, n]`` window lengths whose per-row sums reach ``length``.

    Consumes blocks of ``windows_per_call`` draws from ``counter`` on; lengths are
    clipped to ``length`` (only the cut window at the end is affected).
    """
    first = counter.read_value()

    def draw(block, lengths):
      new = self.sampler.sample_lengths(
          self._uniforms(key, first + tf.cast(block, tf.int64),
                         tf.stack([rows, self.windows_per_call])))
      return block + 1, tf.concat([lengths, tf.minimum(new, length)], axis=1)

    def short(block, lengths):
      del block
      return tf.reduce_min(tf.reduce_sum(lengths, axis=1)) < length

    blocks, lengths = tf.while_loop(
        short, draw, (tf.constant(0), tf.zeros(tf.stack([rows, 0]), tf.int32)),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None])))
    counter.assign_add(tf.cast(blocks, tf.int64))
    return lengths

  @staticmethod
  def _window_ends(lengths, length) -> tf.Tensor:
    ends = tf.cumsum(lengths)
    ends = tf.concat([tf.boolean_mask(ends, ends < length), [length]], axis=0)
    return tf.boolean_mask(ends, ends > 0)

  def _max_compensation(self, window_lengths) -> tf.Tensor:
    """The largest product of factors in a window: ``1 / P(L > longest − 1)``."""
    if not self.compensate:
      return tf.constant(1.0)
    longest = tf.reduce_max(tf.concat([window_lengths, [1]], axis=0))
    return tf.cast(tf.exp(-self.sampler.log_survival(longest - 1)), tf.float32)

  # ------------------------------------------------------------ the method
  def _train_segment(self, segment, state):
    # Cross-replica context: one draw per call, whatever the number of replicas.
    length = tf.shape(segment[0])[1]
    lengths = self._draw_window_lengths(_TRAIN_KEY, self.training_blocks, length, 1)
    scales = compensation_scales(self.sampler, lengths, length,
                                 self.compensate)[0]
    window_ends = self._window_ends(lengths[0], length)
    first_window = self.first_loss_window(window_ends)
    state, loss_sum, norm_sum, updates = self.train_windows(
        segment, state, window_ends, self.mean_length, state_grad_scale=scales,
        first_window=first_window)
    window_lengths = window_ends - tf.concat([[0], window_ends], axis=0)[:-1]
    return state, self.base_metrics(
        segment, loss_sum, norm_sum, updates,
        windows=tf.cast(tf.size(window_lengths), tf.float32),
        window_length_sum=tf.cast(tf.reduce_sum(window_lengths), tf.float32),
        max_compensation=self._max_compensation(window_lengths[first_window:]),
        window_lengths=tf.cast(window_lengths, tf.float32))

  def _estimate_gradients(self, segment, state):
    """One backward pass over the segment: a truncation is a factor of 0.

    This equals the sum over the drawn windows of their compensated gradients with
    the state stopped between windows (the forward values are the same).
    """
    length = tf.shape(segment[0])[1]
    per_row = self.estimate_draws == 'per_row'
    rows = tf.shape(segment[0])[0] if per_row else 1
    lengths = self._draw_window_lengths(_ESTIMATE_KEY, self.estimate_blocks,
                                        length, rows)
    scales = compensation_scales(self.sampler, lengths, length, self.compensate)
    # Per-row factors go with their rows to the replicas; shared ones to all.
    scales = self.replicas.shard(scales) if per_row else scales[0]
    variables = self.model_variables

    def per_replica(segment, state, scales):
      inputs, targets = segment
      gradients, new_state, _ = self.window_gradients(inputs, targets, state, 1,
                                                      state_grad_scale=scales)
      return densify(gradients, variables), new_state

    gradients, state = self.replicas.run(
        per_replica, self.replicas.shard(segment), self.replicas.shard(state),
        scales)
    return self.replicas.sum(gradients), self.replicas.unshard(state)

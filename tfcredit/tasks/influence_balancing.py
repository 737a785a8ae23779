"""Influence balancing (Tallec & Ollivier 2017, Section 6.1, Eq. 15-16).

The parametric system of Eq. 15 (``tfcredit.models.linear_cell``) is run online and
its leftmost agent must track the target 1: ``ℓ_t = ½ (s¹_t − 1)²`` (Eq. 16). The
scalar ``θ`` has a positive short-term and a larger negative long-term influence on
``s¹``, so a gradient estimate that truncates long dependencies gets the sign of the
gradient wrong: truncated BPTT with ``L = 10`` or ``100`` diverges, ``L = 200`` and
ARTBP converge to ``θ* = 1 / (2 (p − n))`` (``−1/6`` for ``p = 10``, ``n = 13``).

The task is a *stream* (one long sequence, the state carried from call to call):
each column of the stream holds the target 1 at every step. The model is dictated by
the problem, so ``model_spec`` returns the whole of it: the linear cell with its one
weight ``θ`` and no trainable readout. The paper trains with plain SGD and
``η_t = η0 / √(1 + t)`` (``tfcredit.training.schedules.InverseSqrtDecay``) and plots
the average loss over steps ``1..t`` (the trainer's ``average_loss_so_far``).
"""

from typing import Any, Dict, Tuple

import numpy as np
import tensorflow as tf

from tfcredit import config
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.models.linear_cell import InfluenceBalancingCell
from tfcredit.tasks import base

_SPLITS = ('train', 'valid', 'test')


@config.configurable
class InfluenceBalancingTask(base.Task):
  """Eq. 15-16 as a stream task: ``p`` positive and ``n`` negative agents."""

  name = 'influence_balancing'
  regime = base.STREAM
  readout = base.PER_STEP
  metric_name = 'loss'

  def __init__(self, *, positive: int = 10, negative: int = 13,
               initial_theta: float = 0.0, target: float = 1.0,
               train_length: int = 100_000, eval_length: int = 10_000):
    """Defines the problem.

    Args:
      positive: ``p`` (the paper: 10).
      negative: ``n`` (the paper: 13).
      initial_theta: the starting ``θ``; the paper fixes one without giving it.
      target: the target of ``s¹`` (Eq. 16: 1).
      train_length: time steps in one training epoch (the online horizon).
      eval_length: time steps of the validation and test streams, run from the zero
        state at the current ``θ``. The transient from zero costs a summed loss of
        about 150 even at ``θ*`` (s¹ first follows the positive agents), so the
        evaluation loss at ``θ*`` is about ``150 / eval_length`` (0.015 for 10^4
        steps); at ``θ = 0`` it is 0.5.
    """
    self.positive = positive
    self.negative = negative
    self.initial_theta = float(initial_theta)
    self.target = float(target)
    self.lengths = {
        'train': validation.positive_int('InfluenceBalancingTask.train_length',
                                         train_length),
        'valid': validation.positive_int('InfluenceBalancingTask.eval_length',
                                         eval_length),
        'test': eval_length}
    self._cell_args = dict(positive=positive, negative=negative,
                           initial_theta=self.initial_theta)
    InfluenceBalancingCell(**self._cell_args)  # Validates p and n now.

  @property
  def optimal_theta(self) -> float:
    """``θ*`` with ``s¹* = 2 θ (p − n) = target`` at the fixed point of Eq. 15."""
    if self.positive == self.negative:
      raise ConfigurationError(
          'InfluenceBalancingTask: with positive == negative the fixed point of s1 '
          'is 0 whatever theta; use positive != negative')
    return self.target / (2.0 * (self.positive - self.negative))

  def model_spec(self) -> Dict[str, Any]:
    agents = self.positive + self.negative
    return {'input_dim': 1, 'output_dim': agents, 'readout': self.readout,
            'cell': InfluenceBalancingCell(**self._cell_args), 'units': agents,
            'num_layers': 1, 'identity_head': True}

  def segment_spec(self) -> Tuple[tf.TensorSpec, tf.TensorSpec]:
    return (tf.TensorSpec([None, None], tf.float32, name='inputs'),
            tf.TensorSpec([None, None], tf.float32, name='targets'))

  def losses(self, outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Eq. 16 at every step: ``½ (s¹ − target)²``, ``[B, T]``."""
    return 0.5 * tf.square(outputs[..., 0] - tf.cast(targets, outputs.dtype))

  def stream(self, split: str, batch_size: int) -> np.ndarray:
    validation.one_of('split', split, _SPLITS)
    return np.full([batch_size, self.lengths[split] + 1], self.target, np.float32)

  def get_config(self) -> Dict[str, Any]:
    return {'positive': self.positive, 'negative': self.negative,
            'initial_theta': self.initial_theta, 'target': self.target,
            'train_length': self.lengths['train'],
            'eval_length': self.lengths['valid']}

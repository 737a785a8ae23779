"""The influence-balancing linear system (Tallec & Ollivier 2017, Section 6.1, Eq. 15).

A row of ``p + n`` agents. At every step each agent keeps half of its state, receives
half of the state of its right neighbour, and gets a signal ``+θ`` (the ``p``
leftmost agents) or ``-θ`` (the ``n`` others):

    s_{t+1} = A s_t + (θ, ..., θ, -θ, ..., -θ)ᵀ,   A = ½ I + ½ · superdiagonal.

Agent ``k``'s signal reaches agent 1 after ``k`` steps, so ``θ`` has a positive
short-term and a negative long-term effect on ``s¹`` (for ``n > p``): the fixed point
is ``s¹* = 2 θ (p - n)``. The scalar ``θ`` is the only parameter. The system is
autonomous: its inputs are ignored.
"""

from typing import Any, Dict

import keras
import tensorflow as tf

from tfcredit import config
from tfcredit.errors import ConfigurationError


@config.configurable
class InfluenceBalancingCell(keras.layers.Layer):
  """Keras RNN cell of Eq. 15: state and output are the ``p + n`` agents' states."""

  def __init__(self, positive: int = 10, negative: int = 13,
               initial_theta: float = 0.0, **kwargs):
    """Builds the cell.

    Args:
      positive: ``p``, agents receiving ``+θ`` (the leftmost ones); the paper uses 10.
      negative: ``n``, agents receiving ``-θ``; the paper uses 13.
      initial_theta: the starting ``θ`` (the paper fixes one but does not give it).
      **kwargs: Keras layer arguments.
    """
    super().__init__(**kwargs)
    for name, value in (('positive', positive), ('negative', negative)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f'InfluenceBalancingCell.{name} must be a non-negative integer number '
            f'of agents, got {value!r}: the paper uses positive=10, negative=13')
    if positive + negative == 0:
      raise ConfigurationError(
          'InfluenceBalancingCell needs at least one agent, got positive=0 and '
          'negative=0: the paper uses positive=10, negative=13')
    self.positive = positive
    self.negative = negative
    self.initial_theta = float(initial_theta)
    self.state_size = positive + negative
    self.output_size = positive + negative
    self.signs = tf.constant([1.0] * positive + [-1.0] * negative, tf.float32)

  def build(self, input_shape):
    del input_shape
    self.theta = self.add_weight(
        shape=(), initializer=keras.initializers.Constant(self.initial_theta),
        name='theta')
    super().build(None)

  def call(self, inputs, states, training=False):
    """One step of Eq. 15; ``inputs`` are ignored (the system is autonomous)."""
    del inputs, training
    state = states[0] if isinstance(states, (list, tuple)) else states
    # (A s)_k = ½ s_k + ½ s_{k+1}; the rightmost agent has no right neighbour.
    right_neighbour = tf.pad(state[:, 1:], [[0, 0], [0, 1]])
    new_state = 0.5 * (state + right_neighbour) + self.theta * self.signs
    return new_state, [new_state]

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update({'positive': self.positive, 'negative': self.negative,
                   'initial_theta': self.initial_theta})
    return config

"""UORO: unbiased online recurrent optimization (Tallec & Ollivier 2018).

RTRL (``rtrl.py``) with the influence ``M_t = ∂s_t/∂θ`` replaced by a rank-one
estimate ``s̃_t θ̃_tᵀ`` per row, unbiased (``E[s̃ θ̃ᵀ] = M``) and of memory
``|s| + |θ|``. Per step, with a Rademacher vector ``ν`` (Algorithm 1):
``s̃ ← ρ₀·J s̃ + ρ₁·ν`` and ``θ̃ ← θ̃/ρ₀ + (νᵀ ∂s/∂θ|direct)/ρ₁``, with the
variance-minimising ``ρ₀ = √(‖θ̃‖/‖J s̃‖)`` and ``ρ₁ = √(‖νᵀ ∂s/∂θ‖/‖ν‖)``. A
loss at ``s_t`` gets ``⟨∂ℓ/∂s_{t−1}, s̃_{t−1}⟩ θ̃_{t−1}``: the pair of the state
the step started from. This module owns the pair and the draws (stateless, keyed
by checkpointed counters, as ARTBP's). docs/methods/uoro.md.
"""

from typing import Optional

import tensorflow as tf

from tfcredit import validation
from tfcredit.methods import registry
from tfcredit.methods import rtrl
from tfcredit.methods import vectorize

# Keeps ρ₀ and ρ₁ finite at the zero state (the paper's ε).
EPSILON = 1e-7


@registry.register
class UORO(rtrl.RTRL):
  """UORO, one update every ``window`` steps (``RTRL``'s loop and contract).

  The influence is the pair ``(s̃ [rows, |s|], θ̃ [rows, |θ|])``; on streams two
  variables, carried across calls and checkpointed.
  """

  EXAMPLE_ARGUMENTS = {'window': 5, 'windows_per_call': 2, 'seed': 1}

  def __init__(self, *, model, task, optimizer, window: int = 10,
               windows_per_call: int = 10, batch_size: Optional[int] = None,
               seed: int = 0, max_influence_floats: int = 2**26,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Args:
      seed: seeds the Rademacher draws (their counters are checkpointed).
      window, windows_per_call, batch_size, max_influence_floats: as in ``RTRL``
        (the influence here is ``rows × (|s| + |θ|)`` floats).
      model, task, optimizer, clip_norm, use_tf_function, name: as in ``Method``.
    """
    seed = validation.integer('UORO.seed', seed, 0)
    super().__init__(model=model, task=task, optimizer=optimizer, window=window,
                     windows_per_call=windows_per_call, batch_size=batch_size,
                     max_influence_floats=max_influence_floats,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name)
    add_draw_counters(self, seed)

  def _influence_size(self, rows):
    return (rows * (self.width + self.num_parameters),
            f'rows × (state + weights) = {rows} × ({self.width} + '
            f'{self.num_parameters})')

  def _zero_influence(self, rows):
    return (tf.zeros(tf.stack([rows, self.width])),
            tf.zeros(tf.stack([rows, self.num_parameters])))

  def _draw_key(self, train):
    """``(seed, counter)``, the counter then advanced; estimates draw from
    their own counter."""
    return draw_key(self, train)

  def _noise(self, key, rows, start, end):
    """Rademacher ``ν`` for every row and step of the window."""
    return rademacher(key, rows, start, end, self.width)

  def _through_state(self, state_gradient, influence):
    state_tilde, theta_tilde = influence
    return tf.einsum('b,bp->p', tf.reduce_sum(state_gradient * state_tilde, -1),
                     theta_tilde)

  def _probes(self, new_flat, noise):
    """``⟨ν, s_t⟩`` per row, ``[rows, 1]``: its Jacobian in the weights is
    ``νᵀ ∂s_t/∂θ|direct`` (one backward pass per row)."""
    return [tf.reduce_sum(noise * new_flat, axis=-1, keepdims=True)]

  def _state_jacobian(self, tape, inputs, flat, new_flat, influence):
    """``J_t s̃`` only, ``[rows, |s|]``: with ``per_row`` one forward-mode
    product through the step (``model.state_step`` under a
    ``ForwardAccumulator``); otherwise from the tape's whole ``J_t``."""
    state_tilde, _ = influence
    if not self.per_row:
      jacobian = vectorize.batch_jacobian(tape, new_flat, flat)
      return tf.einsum('bij,bj->bi', jacobian, state_tilde)
    with tf.autodiff.ForwardAccumulator(flat, state_tilde) as accumulator:
      state = self.model.state_step(inputs, self._nest(flat), training=True)
      stepped = self._flat(state)
    return accumulator.jvp(stepped)

  def _advance(self, jacobian, immediate, influence, noise):
    """``jacobian`` is ``J_t s̃`` (``_state_jacobian``)."""
    state_tilde, theta_tilde = influence
    forward = jacobian
    projected = immediate[0][:, 0]
    norm = lambda x: tf.norm(x, axis=-1, keepdims=True)
    rho0 = tf.sqrt((norm(theta_tilde) + EPSILON) / (norm(forward) + EPSILON))
    rho1 = tf.sqrt((norm(projected) + EPSILON) / (norm(noise) + EPSILON))
    return (rho0 * forward + rho1 * noise,
            theta_tilde / rho0 + projected / rho1)


def add_draw_counters(method, seed: int) -> None:
  """Gives ``method`` the checkpointed state of its random draws: ``noise_seed``
  and the draws taken so far by training and by ``estimate_gradients``."""
  variable = lambda value, name: tf.Variable(
      value, dtype=tf.int64, trainable=False, name=name,
      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
  method.noise_seed = variable(seed, 'noise_seed')
  method.training_draws = variable(0, 'training_draws')
  method.estimate_draws = variable(0, 'estimate_draws')


def draw_key(method, train: bool) -> tf.Tensor:
  """The key of one call's draws, ``(seed, counter)``; the counter (training's
  or the estimates') then advances: a checkpointed counter makes a resumed run
  draw what the uninterrupted one would (UORO's ``ν``, KF-RTRL's signs)."""
  counter = method.training_draws if train else method.estimate_draws
  key = tf.stack([method.noise_seed, counter.read_value()])
  counter.assign_add(1)
  return key


def rademacher(key: tf.Tensor, rows, start, end, width) -> tf.Tensor:
  """Entries ±1, ``[rows, end − start, width]``: the steps ``[start, end)``
  of a call whose draws have ``key``, drawn statelessly per window (the
  window's start folded into the key), so a call holds one window's draws."""
  key = tf.random.experimental.stateless_fold_in(key, tf.cast(start, tf.int64))
  # Drawn time-major: step t's draws do not depend on how many steps follow,
  # so padding a segment leaves the draws of its real steps unchanged.
  uniform = tf.random.stateless_uniform(tf.stack([end - start, rows, width]),
                                        seed=key)
  return tf.transpose(tf.where(uniform < 0.5, -1.0, 1.0), [1, 0, 2])

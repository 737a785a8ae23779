"""SnAp-1: the sparse n-step approximation of RTRL at n = 1 (Menick et al. 2021).

RTRL (``rtrl.py``) with the influence ``M_t = ∂s_t/∂θ`` kept only where a weight
writes a state unit directly: ``M_t = P ⊙ (J_t M_{t−1}) + ∂s_t/∂θ|direct``, where
the pattern ``P`` is the structural sparsity of ``∂s_t/∂θ|direct``. Exact when the
recurrence is diagonal (``J_t`` keeps ``P``), biased otherwise. The pattern is
found once, at construction, from one step of random states and every input token
(or random real inputs): values that happen to be zero at a step (a one-hot input)
do not hide an entry. The influence is stored dense (the paper's memory saving is
not implemented): this method serves to study SnAp-1's bias. docs/methods/snap.md.
"""

from typing import Optional

import tensorflow as tf

from tfcredit.methods import registry
from tfcredit.methods import rtrl

# Rows of random states and real inputs used to find the pattern.
PROBE_ROWS = 64


@registry.register
class SnAp1(rtrl.RTRL):
  """SnAp-1 (``RTRL``'s loop, contract and arguments; the module docstring)."""

  KEY = 'snap1'  # (Not 'sn_ap1'.)
  EXAMPLE_ARGUMENTS = {'window': 5, 'windows_per_call': 2}

  def __init__(self, *, model, task, optimizer, window: int = 10,
               windows_per_call: int = 10, batch_size: Optional[int] = None,
               max_influence_floats: int = 2**26,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Args: as in ``RTRL``."""
    super().__init__(model=model, task=task, optimizer=optimizer, window=window,
                     windows_per_call=windows_per_call, batch_size=batch_size,
                     max_influence_floats=max_influence_floats,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name)
    strategy = self.replicas.strategy
    pattern = strategy.experimental_local_results(
        strategy.run(tf.function(self._find_pattern)))[0]  # One replica's.
    self.pattern = tf.Variable(pattern, trainable=False, name='pattern')

  def _find_pattern(self) -> tf.Tensor:
    """``[|s|, |θ|]`` 0/1: which weights write which state units directly."""
    spec = self.task.model_spec()
    if spec.get('input_vocab_size'):
      vocabulary = spec['input_vocab_size']
      inputs = tf.tile(tf.range(vocabulary)[:, None],
                       [max(1, PROBE_ROWS // vocabulary), 1])
    else:
      inputs = tf.random.stateless_normal(
          [PROBE_ROWS, 1, spec['input_dim']], seed=[1, 2])
    rows = tf.shape(inputs)[0]
    flat = tf.random.stateless_normal(tf.stack([rows, self.width]), seed=[3, 4])
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(flat)
      _, state = self.model.unroll(inputs, self._nest(flat), training=False,
                                   readout=False)
      new_flat = self._flat(state)
    immediate = self._immediate(tape, new_flat, flat)
    return tf.cast(tf.reduce_any(tf.not_equal(immediate, 0.0), axis=0),
                   tf.float32)

  def _advance(self, tape, flat, new_flat, probe, influence, noise):
    del noise
    carried = tf.einsum('bij,bjp->bip', tape.batch_jacobian(new_flat, flat),
                        influence)
    return self.pattern * carried + self._immediate(tape, probe, flat)

"""A GRU cell whose recurrent weights have a fixed random sparsity mask (the
sparse GRUs of Menick et al. 2021, for which SnAp-2 is tractable).

Keras's ``GRUCell`` arithmetic (``reset_after=True``, gates ``z, r, h``, the
weights ``kernel [D, 3u]``, ``recurrent_kernel [u, 3u]``, ``bias [2, 3u]``) with
the recurrent kernel multiplied by a 0/1 mask in the call. The mask connects
unit ``i`` to unit ``j`` in all three gates or in none (``connections()``,
``[u, u]``), so ``sparsity`` is also the share of zeros of the state Jacobian
off its diagonal (``z ⊙ h`` keeps the diagonal): a unit feeds ``(1 −
sparsity)·u`` others on average, and SnAp-2's pattern keeps that many plus one
per weight. Exactly ``round(sparsity · u²)`` connections are cut, chosen by
``numpy.random.default_rng(seed)``.

The masked weights start at zero and their gradient is zero (the product with
the mask), so they stay exactly zero under any optimizer whose update of a
zero weight with zero gradient is zero (SGD, Adam, decoupled weight decay).
The mask is a non-trainable weight (``recurrent_mask``, ``[u, 3u]``): it is
checkpointed and exported with the model, and a checkpoint restores its own
mask whatever the seed of the model it is restored into.
"""

from typing import Any, Dict

import keras
import numpy as np
import tensorflow as tf

from tfcredit import config
from tfcredit import validation


@config.configurable
@keras.saving.register_keras_serializable(package='tfcredit')
class SparseGRUCell(keras.layers.Layer):
  """A Keras RNN cell: a GRU with a fixed random mask on its recurrent weights
  (``RecurrentModel(cell=SparseGRUCell(64, sparsity=0.9))``; the module
  docstring)."""

  def __init__(self, units: int, sparsity: float = 0.75, seed: int = 0,
               kernel_initializer='glorot_uniform',
               recurrent_initializer='orthogonal', bias_initializer='zeros',
               **kwargs):
    """Args:
      units: the state's size ``u``.
      sparsity: the share of the ``u × u`` unit-to-unit connections cut, in
        ``[0, 1]`` (0: Keras's GRU; 1: each unit feeds back only on itself).
      seed: draws the mask (a stack built from the class repeats it per layer).
      kernel_initializer, recurrent_initializer, bias_initializer: as in
        ``keras.layers.GRUCell`` (the recurrent kernel's draw is then masked).
      **kwargs: Keras layer arguments.
    """
    super().__init__(**kwargs)
    self.units = validation.positive_int('SparseGRUCell.units', units)
    self.sparsity = validation.finite_number(
        'SparseGRUCell.sparsity', sparsity, 0.0, 1.0, low_inclusive=True,
        hint=': the share of recurrent connections cut, e.g. 0.75')
    self.seed = validation.integer('SparseGRUCell.seed', seed, 0)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.state_size = self.units
    self.output_size = self.units

  def connections(self) -> np.ndarray:
    """``[u, u]`` bool, ``[i, j]`` where unit ``i`` feeds unit ``j`` (in all
    three gates): the mask the seed draws (the weight ``recurrent_mask`` holds
    it, tiled over the gates, once built)."""
    total = self.units * self.units
    kept = total - int(round(self.sparsity * total))
    flat = np.zeros(total, bool)
    flat[np.random.default_rng(self.seed).permutation(total)[:kept]] = True
    return flat.reshape(self.units, self.units)

  def build(self, input_shape):
    units = self.units
    mask = np.tile(self.connections(), [1, 3]).astype(np.float32)
    draw = self.recurrent_initializer
    self.kernel = self.add_weight(shape=(input_shape[-1], 3 * units),
                                  initializer=self.kernel_initializer,
                                  name='kernel')
    self.recurrent_kernel = self.add_weight(
        shape=(units, 3 * units), name='recurrent_kernel',
        initializer=lambda shape, dtype=None: draw(shape, dtype) * mask)
    self.bias = self.add_weight(shape=(2, 3 * units),
                                initializer=self.bias_initializer, name='bias')
    self.recurrent_mask = self.add_weight(
        shape=(units, 3 * units), trainable=False, name='recurrent_mask',
        initializer=lambda shape, dtype=None: tf.constant(mask))
    super().build(input_shape)

  def call(self, inputs, states, training=False):
    del training
    h = states[0] if isinstance(states, (list, tuple)) else states
    x_z, x_r, x_h = tf.split(inputs @ self.kernel + self.bias[0], 3, axis=-1)
    recurrent = self.recurrent_kernel * self.recurrent_mask
    h_z, h_r, h_h = tf.split(h @ recurrent + self.bias[1], 3, axis=-1)
    z = tf.sigmoid(x_z + h_z)
    r = tf.sigmoid(x_r + h_r)
    new = z * h + (1.0 - z) * tf.tanh(x_h + r * h_h)
    return new, [new]

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update({
        'units': self.units, 'sparsity': self.sparsity, 'seed': self.seed,
        'kernel_initializer': keras.initializers.serialize(
            self.kernel_initializer),
        'recurrent_initializer': keras.initializers.serialize(
            self.recurrent_initializer),
        'bias_initializer': keras.initializers.serialize(self.bias_initializer)})
    return config

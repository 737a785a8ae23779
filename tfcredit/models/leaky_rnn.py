"""The leaky RNN cell of Murray 2019 (eLife) and Marschall, Cho & Savin 2020 (JMLR).

    h_t = (1 − α) h_{t−1} + α φ(W_in x_t + W_rec h_{t−1} + b),

a rate network whose state leaks at rate ``α ∈ (0, 1]`` (``α = dt/τ``; ``α = 1``
is the vanilla RNN ``h_t = φ(W_rec h_{t−1} + W_in x_t + b)``) and ``φ = tanh`` by
default. The weights are kept as Keras keeps a ``SimpleRNNCell``'s, transposed
and in three variables (in this order): ``kernel`` (``W_inᵀ``, ``[inputs,
units]``), ``recurrent_kernel`` (``W_recᵀ``, ``[units, units]``) and ``bias``
(``b``). The default initializers are those of Marschall et al.'s code: ``W_in``
normal of variance ``1/inputs``, ``W_rec`` orthogonal, ``b`` zero.

A Keras RNN cell (``state_size``, ``call``, ``get_config``): ``RecurrentModel(cell=
LeakyRNNCell(units=32, alpha=0.5))``, or with gin ``RecurrentModel.cell =
@LeakyRNNCell`` (a class: built with ``units``) and ``LeakyRNNCell.alpha = 0.5``.
Every method trains it; RFLO (``tfcredit.methods.rflo``) trains only it, and
e-prop (``tfcredit.methods.eprop``) it and the LSTM.
"""

from typing import Any, Dict

import keras
import tensorflow as tf

from tfcredit import config
from tfcredit import validation


def _input_variance():
  """``W_in``'s default: normal of variance ``1 / inputs`` (Marschall et al.)."""
  return keras.initializers.VarianceScaling(1.0, mode='fan_in',
                                            distribution='untruncated_normal')


@config.configurable
@keras.saving.register_keras_serializable(package='tfcredit')
class LeakyRNNCell(keras.layers.Layer):
  """``h_t = (1 − α) h_{t−1} + α φ(x_t W_in + h_{t−1} W_rec + b)`` (module
  docstring); its state and output are ``h``."""

  def __init__(self, units: int, alpha: float = 1.0, activation='tanh',
               kernel_initializer=None, recurrent_initializer='orthogonal',
               bias_initializer='zeros', **kwargs):
    """Builds the cell.

    Args:
      units: the state's size.
      alpha: the leak ``α ∈ (0, 1]``: the new state keeps ``1 − α`` of the old
        one (1: no leak, the vanilla RNN).
      activation: ``φ``, an elementwise Keras activation (name or function).
      kernel_initializer: ``W_in``'s (``[inputs, units]``); default normal of
        variance ``1/inputs``.
      recurrent_initializer: ``W_rec``'s (``[units, units]``).
      bias_initializer: ``b``'s.
      **kwargs: Keras layer arguments.

    Raises:
      ConfigurationError: ``units`` or ``alpha`` out of range.
    """
    super().__init__(**kwargs)
    self.units = validation.positive_int('LeakyRNNCell.units', units)
    self.alpha = validation.finite_number(
        'LeakyRNNCell.alpha', alpha, 0.0, 1.0,
        hint=': the new state keeps 1 - alpha of the old one (alpha = 1 is the '
        'vanilla RNN)')
    self.activation = keras.activations.get(activation)
    self.kernel_initializer = keras.initializers.get(
        kernel_initializer or _input_variance())
    self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.state_size = self.units
    self.output_size = self.units

  def build(self, input_shape):
    self.kernel = self.add_weight(shape=(input_shape[-1], self.units),
                                  initializer=self.kernel_initializer,
                                  name='kernel')
    self.recurrent_kernel = self.add_weight(
        shape=(self.units, self.units), initializer=self.recurrent_initializer,
        name='recurrent_kernel')
    self.bias = self.add_weight(shape=(self.units,),
                                initializer=self.bias_initializer, name='bias')
    super().build(input_shape)

  def call(self, inputs, states, training=False):
    """One step: ``(h_t, [h_t])``."""
    del training
    h = states[0] if isinstance(states, (list, tuple)) else states
    z = (tf.matmul(inputs, self.kernel) + tf.matmul(h, self.recurrent_kernel)
         + self.bias)
    new_h = (1.0 - self.alpha) * h + self.alpha * self.activation(z)
    return new_h, [new_h]

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update({
        'units': self.units, 'alpha': self.alpha,
        'activation': keras.activations.serialize(self.activation),
        'kernel_initializer': keras.initializers.serialize(
            self.kernel_initializer),
        'recurrent_initializer': keras.initializers.serialize(
            self.recurrent_initializer),
        'bias_initializer': keras.initializers.serialize(self.bias_initializer),
    })
    return config

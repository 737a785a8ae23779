"""Synthetic-gradient models for DNI (Jaderberg et al. 2017; Shang & Zhang 2019).

A synthesizer maps the recurrent state at a window boundary, flattened to
``[B, N]`` (every state tensor of every layer concatenated: ``h`` and, for LSTM,
``c``; whatever a custom cell carries), to a predicted
gradient ``δ̂ ≈ ∂(future loss)/∂s`` of the same shape (Jaderberg et al. 2017,
synthetic gradients for recurrent networks; Shang & Zhang 2019, Eq. 1).

* ``LayerwiseSynthesizer``: one MLP over the whole state (Jaderberg et al. 2017);
  depth 0 is a linear map. Its last layer starts at zero, so DNI starts
  as truncated BPTT.
* ``NeuronwiseSynthesizer``: ONE network shared by every neuron, applied to each
  scalar neuron value independently (Shang & Zhang, Section 2.2):
  ``Linear(1→m) → one GRU/LSTM step (m units) → Linear(m→1)``, with its own memory
  per neuron and multiplicative input noise ``N(1, σ)``. The neurons of all batch
  rows are stacked on one axis of size ``B·N``, never scanned as a sequence (the
  public QRNN code scans across neurons, which couples them). Its parameter count
  does not depend on ``B`` or ``N``.

Both share one interface, so the method treats them alike:
``call(state [B, N], memory [B, N, memory_size], noise [B, N]) -> (δ̂, memory)``;
``memory_size`` is 0 for the layer-wise synthesizer and ``noise_stddev`` 0.
"""

from typing import Optional, Tuple

import keras
import tensorflow as tf

from tfcredit import config
from tfcredit import validation
from tfcredit.errors import ConfigurationError

_NEURON_CELLS = {'gru': keras.layers.GRUCell, 'lstm': keras.layers.LSTMCell}


def resolve(name: str, synthesizer):
  """A synthesizer instance from a class or instance (gin:
  ``@LayerwiseSynthesizer``, ``@NeuronwiseSynthesizer``).

  Raises:
    ConfigurationError: ``synthesizer`` is neither, naming ``name``.
  """
  if isinstance(synthesizer, type):
    synthesizer = synthesizer()
  if not isinstance(synthesizer, (LayerwiseSynthesizer, NeuronwiseSynthesizer)):
    raise ConfigurationError(
        f'{name} must be @LayerwiseSynthesizer or @NeuronwiseSynthesizer '
        f'(class or instance), got {synthesizer!r}')
  return synthesizer


@config.configurable
class LayerwiseSynthesizer(keras.layers.Layer):
  """An MLP of the whole flattened state; the last layer is zero-initialised."""

  memory_size = 0
  noise_stddev = 0.0

  def __init__(self, hidden_layers: int = 0, hidden_units: Optional[int] = None,
               activation: str = 'relu', name: str = 'layerwise_synthesizer',
               **kwargs):
    """Configures the MLP (built on the first call, for the state's width ``N``).

    Args:
      hidden_layers: hidden layers before the output layer; 0 = a linear map
        (the DNI paper's recurrent experiments use small synthesizers; linear is
        the cheapest and already propagates credit across windows).
      hidden_units: width of each hidden layer; None = the state width ``N``.
      activation: Keras activation of the hidden layers.
      name: Keras name.
      **kwargs: Keras layer arguments.
    """
    super().__init__(name=name, **kwargs)
    self.hidden_layers = validation.integer('LayerwiseSynthesizer.hidden_layers',
                                            hidden_layers, 0)
    if hidden_units is not None:
      validation.positive_int('LayerwiseSynthesizer.hidden_units', hidden_units)
    self.hidden_units = hidden_units
    self.activation = activation
    self.hidden = []
    self.output_layer = None

  def build(self, input_shape):
    width = int(input_shape[-1])
    units = self.hidden_units or width
    self.hidden = [keras.layers.Dense(units, activation=self.activation,
                                      name=f'hidden_{i}')
                   for i in range(self.hidden_layers)]
    self.output_layer = keras.layers.Dense(width, kernel_initializer='zeros',
                                           bias_initializer='zeros', name='output')
    shape = tuple(input_shape)
    for layer in self.hidden:
      layer.build(shape)
      shape = shape[:-1] + (units,)
    self.output_layer.build(shape)
    super().build(input_shape)

  def call(self, state, memory, noise=None, training=False
           ) -> Tuple[tf.Tensor, tf.Tensor]:
    """``δ̂`` for ``state`` ``[B, N]``; ``memory`` (``[B, N, 0]``) passes through."""
    del noise, training
    features = state
    for layer in self.hidden:
      features = layer(features)
    return self.output_layer(features), memory


@config.configurable
class NeuronwiseSynthesizer(keras.layers.Layer):
  """One shared per-neuron network with its own memory per neuron (Shang & Zhang)."""

  noise_stddev: float

  def __init__(self, hidden_units: int = 50, cell: str = 'gru',
               noise_stddev: float = 0.5, name: str = 'neuronwise_synthesizer',
               **kwargs):
    """Configures the shared network.

    Args:
      hidden_units: ``m``, the synthesizer RNN's width (the paper: a 50-unit QRNN;
        Keras has no QRNN, so a GRU or LSTM cell).
      cell: ``'gru'`` or ``'lstm'``.
      noise_stddev: ``σ`` of the multiplicative input noise ``N(1, σ)`` applied
        in training (the public code: 0.5); 0 disables it.
      name: Keras name.
      **kwargs: Keras layer arguments.
    """
    super().__init__(name=name, **kwargs)
    self.hidden_units = validation.positive_int(
        'NeuronwiseSynthesizer.hidden_units', hidden_units)
    validation.one_of('NeuronwiseSynthesizer.cell', cell, sorted(_NEURON_CELLS))
    if (isinstance(noise_stddev, bool) or not isinstance(noise_stddev, (int, float))
        or not noise_stddev >= 0):
      raise ConfigurationError(
          f'NeuronwiseSynthesizer.noise_stddev must be a number >= 0, got '
          f'{noise_stddev!r}: the paper uses 0.5, 0 disables the noise')
    self.cell_type = cell
    self.noise_stddev = float(noise_stddev)
    self.memory_size = hidden_units * (2 if cell == 'lstm' else 1)
    self.input_layer = keras.layers.Dense(hidden_units, name='input')
    self.cell = _NEURON_CELLS[cell](hidden_units, name=cell)
    self.output_layer = keras.layers.Dense(1, kernel_initializer='zeros',
                                           bias_initializer='zeros', name='output')

  def build(self, input_shape):
    del input_shape  # Every neuron is one scalar: the weights do not depend on N.
    self.input_layer.build((None, 1))
    self.cell.build((None, self.hidden_units))
    self.output_layer.build((None, self.hidden_units))
    super().build((None, None))

  def call(self, state, memory, noise=None, training=False
           ) -> Tuple[tf.Tensor, tf.Tensor]:
    """``δ̂`` and the new memory, each neuron on its own.

    Args:
      state: ``[B, N]`` neuron values.
      memory: ``[B, N, memory_size]``, each neuron's synthesizer memory.
      noise: optional ``[B, N]`` multiplicative input noise.
      training: passed to the cell.

    Returns:
      ``(δ̂ [B, N], new memory [B, N, memory_size])``.
    """
    del training  # The cell has no dropout.
    shape = tf.shape(state)
    values = state if noise is None else state * noise
    neurons = tf.reshape(values, [-1, 1])  # [B·N, 1]: the neurons as a batch.
    flat_memory = tf.reshape(memory, [-1, self.memory_size])
    output, new_memory = self._step(neurons, flat_memory)
    # Reshapes by the inputs' shapes keep their static shapes (loop invariants).
    delta = tf.reshape(self.output_layer(output), shape)
    return delta, tf.reshape(new_memory, tf.shape(memory))

  def _step(self, neurons, memory):
    """``Linear(1→m)`` then one step of the Keras cell (``GRUCell`` with
    ``reset_after``, or ``LSTMCell``; their weights and arithmetic), with the
    input layer folded into the cell's input product: every neuron is one
    scalar ``x``, so ``(x·w + b) K + b_K = x·(w K) + (b K + b_K)``, a rank-one
    broadcast instead of a ``[B·N, m] × [m, G·m]`` product (measured in
    docs/benchmark.md). ``(output, new memory)``, both ``[B·N, ·]``."""
    cell, layer = self.cell, self.input_layer
    kernel = tf.convert_to_tensor(cell.kernel)
    if self.cell_type == 'gru':
      input_bias, recurrent_bias = tf.unstack(tf.convert_to_tensor(cell.bias))
    else:
      input_bias, recurrent_bias = tf.convert_to_tensor(cell.bias), 0.0
    slope = tf.matmul(tf.convert_to_tensor(layer.kernel), kernel)  # [1, G·m]
    offset = tf.linalg.matvec(kernel, tf.convert_to_tensor(layer.bias),
                              transpose_a=True) + input_bias
    projected = neurons * slope + offset
    if self.cell_type == 'gru':
      h = memory
      recurrent = (tf.matmul(h, tf.convert_to_tensor(cell.recurrent_kernel))
                   + recurrent_bias)
      x_z, x_r, x_h = tf.split(projected, 3, axis=-1)
      r_z, r_r, r_h = tf.split(recurrent, 3, axis=-1)
      update = tf.sigmoid(x_z + r_z)
      candidate = tf.tanh(x_h + tf.sigmoid(x_r + r_r) * r_h)
      h = update * h + (1.0 - update) * candidate
      return h, h
    h, c = tf.split(memory, 2, axis=-1)
    gates = projected + tf.matmul(h, tf.convert_to_tensor(cell.recurrent_kernel))
    i, f, g, o = tf.split(gates, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    h = tf.sigmoid(o) * tf.tanh(c)
    return h, tf.concat([h, c], axis=-1)


def built_optimizer(name: str, optimizer, learning_rate: float, variables):
  """A synthesizer's optimizer: ``optimizer`` (a Keras optimizer class, made
  with ``learning_rate``, or instance) built on ``variables``.

  Raises:
    ConfigurationError: ``optimizer`` is neither (``name`` is its binding).
  """
  if isinstance(optimizer, type):
    optimizer = optimizer(learning_rate=learning_rate)
  if not isinstance(optimizer, keras.optimizers.Optimizer):
    raise ConfigurationError(
        f'{name} must be a Keras optimizer class or instance, got {optimizer!r}')
  optimizer.build(variables)
  return optimizer

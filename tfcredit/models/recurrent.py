"""The recurrent model every method trains: encoder -> stacked recurrent core -> head.

DESIGN.md, "Model". ``unroll`` runs one window of any length from a given state. With
``state_grad_scale=None`` it calls the standard Keras recurrent layers (cuDNN-eligible
on GPU); with a scale it steps the same cells (same weights) through ``tf.scan`` and
multiplies the gradient flowing from step ``t+1`` back into the state of step ``t`` by
``state_grad_scale[t]`` — ARTBP's compensation factor (Tallec & Ollivier 2017, Eq. 11),
with 0 meaning truncation. The scale is ``[T]`` (shared by the batch) or ``[B, T]``
(one factor per sequence and step, for independent truncations per row).

The core is a stack of Keras LSTM/GRU/SimpleRNN layers, or one custom Keras RNN cell
(for instance the influence-balancing linear system,
``tfcredit.models.linear_cell``); ``identity_head=True`` drops the trainable readout,
so a custom cell's outputs are the model's outputs.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import keras
import tensorflow as tf

from tfcredit.errors import ConfigurationError

_CELLS = {
    'lstm': keras.layers.LSTM,
    'gru': keras.layers.GRU,
    'simple_rnn': keras.layers.SimpleRNN,
}
_STATES_PER_LAYER = {'lstm': 2, 'gru': 1, 'simple_rnn': 1}
_READOUTS = ('per_step', 'terminal')

State = Tuple[Tuple[tf.Tensor, ...], ...]  # per layer: (h, c) for LSTM, (h,) otherwise


def scale_gradient(value: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
  """Identity in the forward pass; multiplies the incoming gradient by ``scale``.

  ``x - stop_gradient(x)`` is exactly zero, so the forward value is ``value`` bit for
  bit, and the only differentiable path carries the factor ``scale``.
  """
  frozen = tf.stop_gradient(value)
  return frozen + scale * (value - frozen)


class ForgetGateBias(keras.initializers.Initializer):
  """LSTM bias initializer: zeros, except the forget gate, set to ``value``.

  Keras orders the LSTM gates ``[input, forget, cell, output]``.
  """

  def __init__(self, value: float):
    self.value = float(value)

  def __call__(self, shape, dtype=None):
    units = shape[-1] // 4
    return tf.concat([tf.zeros([units]), tf.fill([units], self.value),
                      tf.zeros([2 * units])], axis=0)

  def get_config(self):
    return {'value': self.value}


class RecurrentModel(keras.Model):
  """Encoder (embedding or none) -> stacked LSTM/GRU/SimpleRNN -> per-step or terminal head.

  The task supplies ``input_vocab_size`` (token inputs) or ``input_dim`` (real
  inputs), ``output_dim`` and ``readout``; gin supplies the rest.
  """

  def __init__(self, *, output_dim: int, input_vocab_size: Optional[int] = None,
               input_dim: Optional[int] = None, readout: str = 'per_step',
               cell: Union[str, keras.layers.Layer] = 'lstm', units: int = 200,
               num_layers: int = 1,
               embedding_dim: Optional[int] = None, dropout: float = 0.0,
               forget_bias: float = 1.0, tie_embeddings: bool = False,
               init_scale: Optional[float] = None, identity_head: bool = False,
               name: str = 'recurrent_model'):
    """Builds the layers.

    Args:
      output_dim: size of the head's output (vocabulary, classes, regression size).
      input_vocab_size: token inputs: the embedding's vocabulary size.
      input_dim: real-valued inputs: features per step (fed to the core directly,
        or through a linear projection when ``embedding_dim`` is set).
      readout: ``'per_step'`` (an output at every step) or ``'terminal'`` (only at
        the window's last step).
      cell: ``'lstm'``, ``'gru'`` or ``'simple_rnn'``; or a Keras RNN cell
        instance (``state_size`` an int, outputs of size ``state_size``), used as
        a single layer (``num_layers`` must be 1, ``units`` its state size).
      units: state size of every recurrent layer.
      num_layers: number of stacked recurrent layers.
      embedding_dim: embedding (or input projection) size; defaults to ``units``
        for token inputs.
      dropout: dropout rate on non-recurrent connections (embedding output, between
        layers, before the head), as in Zaremba et al. 2014.
      forget_bias: initial LSTM forget-gate bias (1.0 is the Keras default; the
        ARTBP paper uses 2).
      tie_embeddings: share the embedding matrix with the output layer (Press &
        Wolf 2017); needs token inputs and ``embedding_dim == units``.
      init_scale: if set, embeddings and all weight matrices start uniform in
        ``[-init_scale, init_scale]`` (Zaremba et al. 2014 use 0.1); else Keras
        defaults (Glorot uniform, orthogonal recurrent kernels).
      identity_head: no trainable readout: the outputs are the core's outputs
        (``output_dim`` must equal ``units``). For custom cells whose state is
        the prediction, such as the influence-balancing system.
      name: Keras name.
    """
    super().__init__(name=name)
    custom_cell = None if isinstance(cell, str) else cell
    if custom_cell is not None:
      _check_custom_cell(custom_cell, units, num_layers)
      cell = type(custom_cell).__name__
    elif cell not in _CELLS:
      raise ConfigurationError(
          f'RecurrentModel.cell must be one of {sorted(_CELLS)}, got {cell!r}')
    if readout not in _READOUTS:
      raise ConfigurationError(
          f'RecurrentModel.readout must be one of {_READOUTS}, got {readout!r}')
    for arg, value in (('units', units), ('num_layers', num_layers),
                       ('output_dim', output_dim)):
      if not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            f'RecurrentModel.{arg} must be a positive integer, got {value!r}')
    if (input_vocab_size is None) == (input_dim is None):
      raise ConfigurationError(
          'RecurrentModel needs exactly one of input_vocab_size (token inputs) and '
          f'input_dim (real inputs); got input_vocab_size={input_vocab_size!r}, '
          f'input_dim={input_dim!r}')
    if not 0.0 <= dropout < 1.0:
      raise ConfigurationError(
          f'RecurrentModel.dropout must be in [0, 1), got {dropout!r}')
    if init_scale is not None and init_scale <= 0:
      raise ConfigurationError(
          f'RecurrentModel.init_scale must be positive or None, got {init_scale!r}')
    if identity_head and (output_dim != units or tie_embeddings):
      raise ConfigurationError(
          f'RecurrentModel.identity_head=True reads the core outputs directly, so '
          f'output_dim must equal units and tie_embeddings be False; got '
          f'output_dim={output_dim}, units={units}, tie_embeddings={tie_embeddings}')

    self.cell_type = cell
    self._states_per_layer = (
        len(tf.nest.flatten(custom_cell.state_size)) if custom_cell is not None
        else _STATES_PER_LAYER[cell])
    self.identity_head = identity_head
    self.units = units
    self.num_layers = num_layers
    self.readout = readout
    self.output_dim = output_dim
    self.token_inputs = input_vocab_size is not None
    self.tie_embeddings = tie_embeddings
    self.dropout_rate = dropout
    if self.token_inputs and embedding_dim is None:
      embedding_dim = units
    if tie_embeddings and (not self.token_inputs or embedding_dim != units):
      raise ConfigurationError(
          'RecurrentModel.tie_embeddings=True needs token inputs and embedding_dim '
          f'== units; got embedding_dim={embedding_dim!r}, units={units}')

    def weights_init(default):
      if init_scale is None:
        return default
      return keras.initializers.RandomUniform(-init_scale, init_scale)

    if self.token_inputs:
      self.encoder = keras.layers.Embedding(
          input_vocab_size, embedding_dim,
          embeddings_initializer=weights_init('uniform'), name='embedding')
    elif embedding_dim is not None:
      self.encoder = keras.layers.Dense(
          embedding_dim, kernel_initializer=weights_init('glorot_uniform'),
          name='input_projection')
    else:
      self.encoder = None

    self.core = []
    if custom_cell is not None:
      self.core.append(keras.layers.RNN(custom_cell, return_sequences=True,
                                        return_state=True, name=f'{cell}_0'))
    for index in range(num_layers if custom_cell is None else 0):
      # A terminal readout only needs the last layer's last output: without the
      # output sequence the layer neither stacks it nor backpropagates its zeros.
      sequences = readout == 'per_step' or index < num_layers - 1
      kwargs = dict(units=units, return_sequences=sequences, return_state=True,
                    kernel_initializer=weights_init('glorot_uniform'),
                    recurrent_initializer=weights_init('orthogonal'),
                    name=f'{cell}_{index}')
      if cell == 'lstm':
        kwargs['unit_forget_bias'] = False
        kwargs['bias_initializer'] = ForgetGateBias(forget_bias)
      self.core.append(_CELLS[cell](**kwargs))
    # A list attribute is tracked by Keras (weights) but not by tf.train.Checkpoint:
    # each layer is also an attribute, so a checkpoint of the model alone holds
    # the recurrent weights too.
    for index, layer in enumerate(self.core):
      setattr(self, f'core_{index}', layer)
    self.dropout = keras.layers.Dropout(dropout) if dropout > 0 else None

    if tie_embeddings or identity_head:
      self.head = None
      if tie_embeddings:
        self.output_bias = self.add_weight(shape=(output_dim,), initializer='zeros',
                                           name='output_bias')
    else:
      self.head = keras.layers.Dense(
          output_dim, kernel_initializer=weights_init('glorot_uniform'), name='head')

  # ------------------------------------------------------------------ state
  @property
  def states_per_layer(self) -> int:
    return self._states_per_layer

  def initial_state(self, batch_size) -> State:
    """The zero state for ``batch_size`` sequences (a Python int or a scalar tensor)."""
    zeros = tf.zeros(tf.stack([batch_size, self.units]), tf.float32)
    return tuple(tuple(zeros for _ in range(self.states_per_layer))
                 for _ in range(self.num_layers))

  def state_spec(self, batch_size: Optional[int] = None) -> State:
    """``tf.TensorSpec`` nest matching ``initial_state``."""
    spec = tf.TensorSpec([batch_size, self.units], tf.float32)
    return tuple(tuple(spec for _ in range(self.states_per_layer))
                 for _ in range(self.num_layers))

  def rng_variables(self) -> List[tf.Variable]:
    """Dropout seed-generator states, so checkpoints resume the same masks."""
    if self.dropout is None:
      return []
    return [self.dropout.seed_generator.state]

  # ------------------------------------------------------------------ compute
  def build_for(self, example_inputs: tf.Tensor) -> None:
    """Creates every weight by running one step on ``example_inputs[:, :1]``."""
    batch = tf.shape(example_inputs)[0]
    self.unroll(example_inputs[:, :1], self.initial_state(batch), training=False)

  def unroll(self, inputs: tf.Tensor, state: State, training: bool = False,
             state_grad_scale: Optional[tf.Tensor] = None, readout: bool = True
             ) -> Tuple[Optional[tf.Tensor], State]:
    """Runs one window from ``state``.

    Args:
      inputs: ``[B, T]`` token ids or ``[B, T, D]`` features (``[B, T]`` real
        inputs are one feature per step); ``T`` may be ``None``.
      state: the state nest (see ``initial_state``).
      training: enables dropout.
      state_grad_scale: optional ``[T]`` or ``[B, T]`` float tensor.
        ``state_grad_scale[t]`` (or ``[b, t]`` for sequence ``b``) multiplies the
        gradient flowing from step ``t + 1`` back into the recurrent state of step
        ``t`` (the last entry scales the gradient entering the returned final
        state). The per-step outputs' own gradient paths are not scaled. ``None``
        runs the plain Keras layers.
      readout: False skips the head and returns None for the outputs: for passes
        that only need the final state, where a large softmax layer would
        dominate the cost.

    Returns:
      ``(outputs, final_state)``: outputs ``[B, T, output_dim]`` (per-step readout)
      or ``[B, output_dim]`` from the window's last step (terminal readout).
    """
    if not self.token_inputs and inputs.shape.rank == 2:
      inputs = tf.expand_dims(inputs, -1)  # One real feature per step.
    features = inputs if self.encoder is None else self.encoder(inputs)
    if not self.token_inputs and self.encoder is None:
      features = tf.cast(features, tf.float32)
    final_state = []
    for layer, layer_state in zip(self.core, state):
      if self.dropout is not None:
        features = self.dropout(features, training=training)
      if state_grad_scale is None:
        result = layer(features, initial_state=list(layer_state), training=training)
        features, new_state = result[0], tuple(result[1:])
      else:
        features, new_state = self._scaled_layer_unroll(
            layer.cell, features, layer_state, state_grad_scale, training)
      final_state.append(new_state)
    if not readout:
      return None, tuple(final_state)
    if self.readout == 'terminal' and features.shape.rank == 3:
      features = features[:, -1]
    if self.dropout is not None:
      features = self.dropout(features, training=training)
    return self._readout(features), tuple(final_state)

  def step(self, inputs_t: tf.Tensor, state: State, training: bool = False
           ) -> Tuple[tf.Tensor, State]:
    """One step: ``inputs_t`` is ``[B]`` tokens or ``[B, D]`` features."""
    outputs, state = self.unroll(tf.expand_dims(inputs_t, 1), state, training)
    if self.readout == 'per_step':
      outputs = outputs[:, 0]
    return outputs, state

  def call(self, inputs, training=False):
    """Keras entry point: unroll from the zero state, return the outputs."""
    outputs, _ = self.unroll(inputs, self.initial_state(tf.shape(inputs)[0]),
                             training=training)
    return outputs

  def _readout(self, features: tf.Tensor) -> tf.Tensor:
    if self.identity_head:
      return features
    if self.head is not None:
      return self.head(features)
    logits = tf.tensordot(features, self.encoder.embeddings, axes=[[-1], [1]])
    return logits + self.output_bias

  @staticmethod
  def _scaled_layer_unroll(cell, features, layer_state, scale, training):
    """Steps ``cell`` over time, scaling the gradient of the carried state."""
    time_major = tf.transpose(features, [1, 0, 2])
    scale = tf.cast(scale, tf.float32)
    if scale.shape.rank == 2:  # [B, T]: per sequence, broadcast over the units.
      scale = tf.expand_dims(tf.transpose(scale), -1)

    def step(carry, elements):
      _, previous = carry
      features_t, scale_t = elements
      output, new_state = cell(features_t, list(previous), training=training)
      new_state = tf.nest.flatten(new_state)
      carried = tuple(scale_gradient(s, scale_t) for s in new_state)
      return output, carried

    initial_output = tf.zeros_like(layer_state[0])
    outputs, states = tf.scan(step, (time_major, scale),
                              initializer=(initial_output, tuple(layer_state)))
    final = tuple(s[-1] for s in states)
    return tf.transpose(outputs, [1, 0, 2]), final

  def get_config(self) -> Dict[str, Any]:
    return {'cell': self.cell_type, 'units': self.units,
            'num_layers': self.num_layers, 'readout': self.readout,
            'output_dim': self.output_dim}


def _check_custom_cell(cell, units, num_layers) -> None:
  """Validates a custom Keras RNN cell passed as ``RecurrentModel.cell``."""
  state_size = getattr(cell, 'state_size', None)
  if not isinstance(state_size, int):
    raise ConfigurationError(
        f'RecurrentModel.cell must be a cell name or a Keras RNN cell with an '
        f'integer state_size, got {cell!r}')
  if num_layers != 1:
    raise ConfigurationError(
        f'RecurrentModel.num_layers must be 1 with a custom cell, got {num_layers!r}')
  if units != state_size:
    raise ConfigurationError(
        f'RecurrentModel.units must equal the custom cell\'s state_size '
        f'({state_size}), got {units!r}: set units = {state_size}')

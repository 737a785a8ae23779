"""The recurrent model every method trains: encoder -> stacked recurrent core -> head.

``unroll`` runs one window of any length from a given state. The named
``'lstm'`` and ``'gru'`` cores run either the Keras layers (cuDNN-eligible on a
GPU) or ``tfcredit.models.fused`` (the same arithmetic and weights, with the input
product hoisted out of the step loop and a hand-written backward loop), chosen by
``unroll_implementation``. A ``state_grad_scale`` multiplies the gradient flowing
from step ``t+1`` back into every state tensor of step ``t`` by
``state_grad_scale[t]`` (the fused unroll, or for other cells the Keras cells
stepped through ``tf.scan``) —
ARTBP's compensation factor (Tallec & Ollivier 2017, Eq. 11), with 0 meaning
truncation. The scale is ``[T]`` (shared by the batch) or ``[B, T]`` (one factor
per sequence and step, for independent truncations per row).

The core (``RecurrentModel.cell``) is

* a name, ``'lstm'``, ``'gru'`` or ``'simple_rnn'``: ``num_layers`` Keras layers of
  ``units`` units;
* a Keras RNN cell instance (any ``keras.layers.Layer`` with a ``state_size`` and
  ``call(inputs, states) -> (output, new_states)``, e.g. ``keras.layers.LSTMCell(32)``,
  the influence-balancing system of ``tfcredit.models.linear_cell``, or a cell of
  your own registered with gin and bound as ``RecurrentModel.cell = @MyCell()``);
* a list of such cells, or a ``keras.layers.StackedRNNCells``: one layer per cell,
  bottom first;
* a cell class or factory (gin: ``RecurrentModel.cell = @MyCell``): called once per
  layer, ``num_layers`` times, with ``units=units`` if it takes ``units``.

The state nest is derived from the cells' ``state_size``: a tuple over layers of a
tuple over that layer's state tensors, each ``[B, size]`` and zero initially —
``((h, c),)`` for one LSTM layer, ``((h,), (h,))`` for two GRU layers, ``((h, m),)``
for a cell with ``state_size = (4, 3)``. Every method sees that nest: ARTBP scales
every tensor of it, DNI's synthesizer reads all of them concatenated, TargetProp
keeps a free variable for each. ``identity_head=True`` drops the trainable readout,
so the top cell's outputs are the model's outputs.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import keras
import tensorflow as tf

from tfcredit import config
from tfcredit import masking
from tfcredit import precision
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.models import cells as cells_lib
from tfcredit.models import fused
from tfcredit.models import stepped
from tfcredit.models.stepped import scale_gradient  # pylint: disable=unused-import


# Per layer, one [B, size] tensor per entry of the cell's state_size: (h, c) for
# LSTM, (h,) for GRU and SimpleRNN, whatever a custom cell declares.
State = Tuple[Tuple[tf.Tensor, ...], ...]
CellSpec = Union[str, keras.layers.Layer, Sequence[keras.layers.Layer], Callable]


@config.configurable
@keras.saving.register_keras_serializable(package='tfcredit')
class RecurrentModel(keras.Model):
  """Encoder (embedding or none) -> stacked recurrent cells -> per-step or terminal head.

  The task supplies ``input_vocab_size`` (token inputs) or ``input_dim`` (real
  inputs), ``output_dim`` and ``readout``; gin supplies the rest.
  """

  def __init__(self, *, output_dim: int, input_vocab_size: Optional[int] = None,
               input_dim: Optional[int] = None, readout: str = 'per_step',
               cell: CellSpec = 'lstm', units: Optional[int] = None,
               num_layers: int = 1,
               embedding_dim: Optional[int] = None, dropout: float = 0.0,
               forget_bias: float = 1.0, tie_embeddings: bool = False,
               init_scale: Optional[float] = None, identity_head: bool = False,
               unroll_implementation: str = 'auto',
               float32_head: bool = False, masked: bool = False,
               name: str = 'recurrent_model'):
    """Builds the layers.

    Args:
      output_dim: size of the head's output (vocabulary, classes, regression size).
      input_vocab_size: token inputs: the embedding's vocabulary size.
      input_dim: real-valued inputs: features per step (fed to the core directly,
        or through a linear projection when ``embedding_dim`` is set).
      readout: ``'per_step'`` (an output at every step) or ``'terminal'`` (only at
        the window's last step).
      cell: the recurrent core (see the module docstring): ``'lstm'``,
        ``'gru'`` or ``'simple_rnn'``; a Keras RNN cell instance; a list of cells
        or a ``keras.layers.StackedRNNCells`` (one layer per cell); or a cell
        class or factory, called once per layer (with ``units=units`` when it
        takes ``units``). Every entry of a cell's ``state_size`` must be a
        positive integer (a flat state vector per tensor).
      units: named cells and factories: state size of every recurrent layer
        (default 200). Cell instances and lists define their own sizes: leave
        it None, or give the top cell's output size.
      num_layers: number of stacked recurrent layers for a named cell or a
        factory; a cell instance or list sets its own depth (leave 1, or give
        that depth).
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
        defaults (Glorot uniform, orthogonal recurrent kernels). A custom cell
        keeps its own initializers.
      identity_head: no trainable readout: the outputs are the top cell's
        outputs (``output_dim`` must equal its output size). For custom cells
        whose state is the prediction, such as the influence-balancing system.
      unroll_implementation: how the named ``'lstm'`` and ``'gru'`` cores are
        stepped: ``'fused'`` (``tfcredit.models.fused``: one input projection
        per window, a hand-written backward loop, the recurrent kernel's
        gradient in one product; also under a ``state_grad_scale``),
        ``'keras'`` (the Keras layers, cuDNN on a GPU; a scale steps the cells
        through ``tf.scan``), or ``'auto'``: fused under a scale, and without
        one when no GPU is visible and either a mixed-precision policy is on
        or the layer's input is at least half as wide as its state (see
        ``_fused_unroll`` for the measurements). Custom
        cells always use the Keras layers (or ``tf.scan`` under a scale).
      float32_head: under a mixed-precision policy, compute the head (the
        readout product, the logits) in float32 while the recurrent core runs
        in 16 bits; no effect in float32.
      masked: the inputs may hold padded steps (``tfcredit.masking``: id -1 or
        NaN features), through which every layer holds its state and output;
        the core then steps its cells through ``tf.scan``. Set by tasks of
        variable-length sequences (their ``model_spec``).
      name: Keras name.
    """
    # The constructor's arguments, for get_config (the cell is read back from the
    # built layers there: an instance or factory becomes the cells it built).
    self._arguments = {key: value for key, value in locals().items()
                       if key not in ('self', '__class__', 'cell')}
    super().__init__(name=name)
    cells_lib.check_arguments(
        unroll_implementation=unroll_implementation, num_layers=num_layers,
        output_dim=output_dim, units=units, readout=readout,
        input_vocab_size=input_vocab_size, input_dim=input_dim, dropout=dropout,
        init_scale=init_scale)
    custom_cells, cell, units, num_layers = cells_lib.resolve_core(
        cell, units, num_layers, unroll_implementation)
    if identity_head and (output_dim != units or tie_embeddings):
      raise ConfigurationError(
          f'RecurrentModel.identity_head=True reads the core outputs directly, so '
          f'output_dim must equal the top layer\'s output size and tie_embeddings '
          f'be False; got output_dim={output_dim}, output size {units}, '
          f'tie_embeddings={tie_embeddings}')
    self.cell_type = cell
    if custom_cells is None:
      sizes = tuple(units for _ in range(cells_lib.STATES_PER_LAYER[cell]))
      self._state_sizes = tuple(sizes for _ in range(num_layers))
      self._output_sizes = tuple(units for _ in range(num_layers))
    else:
      self._state_sizes = tuple(cells_lib.state_sizes(c) for c in custom_cells)
      self._output_sizes = tuple(cells_lib.output_size(c) for c in custom_cells)
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
    initializer = cells_lib.initializer(init_scale)
    self.encoder = self._encoder(input_vocab_size, embedding_dim, initializer)
    self.core = self._core(cell, custom_cells, units, num_layers, forget_bias,
                           initializer)
    # A list attribute is tracked by Keras (weights) but not by tf.train.Checkpoint:
    # each layer is also an attribute, so a checkpoint of the model alone holds
    # the recurrent weights too.
    for index, layer in enumerate(self.core):
      setattr(self, f'core_{index}', layer)
    self.dropout = keras.layers.Dropout(dropout) if dropout > 0 else None
    self.unroll_implementation = unroll_implementation
    self._fusable = tuple(fused.supports(layer) for layer in self.core)
    self._on_gpu = bool(tf.config.list_logical_devices('GPU'))
    self.float32_head = validation.boolean('RecurrentModel.float32_head',
                                           float32_head)
    self.masked = validation.boolean('RecurrentModel.masked', masked)
    self.head = None
    if tie_embeddings:
      self.output_bias = self.add_weight(shape=(output_dim,), initializer='zeros',
                                         name='output_bias')
    elif not identity_head:
      self.head = keras.layers.Dense(
          output_dim, kernel_initializer=initializer('glorot_uniform'),
          name='head', **({'dtype': 'float32'} if float32_head else {}))

  @staticmethod
  def _encoder(input_vocab_size, embedding_dim, initializer):
    """The embedding (token inputs), an input projection, or None."""
    if input_vocab_size is not None:
      return keras.layers.Embedding(
          input_vocab_size, embedding_dim,
          embeddings_initializer=initializer('uniform'), name='embedding')
    if embedding_dim is not None:
      return keras.layers.Dense(
          embedding_dim, kernel_initializer=initializer('glorot_uniform'),
          name='input_projection')
    return None

  def _core(self, cell, custom_cells, units, num_layers, forget_bias,
            initializer) -> List[keras.layers.Layer]:
    """The recurrent layers, bottom first."""
    core = []
    for index in range(num_layers):
      # A terminal readout only needs the last layer's last output: without the
      # output sequence the layer neither stacks it nor backpropagates its zeros.
      sequences = self.readout == 'per_step' or index < num_layers - 1
      if custom_cells is not None:
        core.append(keras.layers.RNN(
            custom_cells[index], return_sequences=sequences, return_state=True,
            name=f'{type(custom_cells[index]).__name__}_{index}'))
        continue
      kwargs = dict(units=units, return_sequences=sequences, return_state=True,
                    kernel_initializer=initializer('glorot_uniform'),
                    recurrent_initializer=initializer('orthogonal'),
                    name=f'{cell}_{index}')
      if cell == 'lstm':
        kwargs['unit_forget_bias'] = False
        kwargs['bias_initializer'] = cells_lib.ForgetGateBias(forget_bias)
      core.append(cells_lib.KERAS_LAYERS[cell](**kwargs))
    return core

  # ------------------------------------------------------------------ state
  @property
  def state_sizes(self) -> Tuple[Tuple[int, ...], ...]:
    """Per layer, the size of each state tensor (the cell's flattened ``state_size``)."""
    return self._state_sizes

  @property
  def states_per_layer(self) -> int:
    """State tensors of the first layer (2 for LSTM, 1 for GRU/SimpleRNN)."""
    return len(self._state_sizes[0])

  def initial_state(self, batch_size) -> State:
    """The zero state for ``batch_size`` sequences (a Python int or a scalar tensor)."""
    return tuple(tuple(tf.zeros(tf.stack([batch_size, size]), tf.float32)
                       for size in sizes) for sizes in self._state_sizes)

  def state_spec(self, batch_size: Optional[int] = None) -> State:
    """``tf.TensorSpec`` nest matching ``initial_state``."""
    return tuple(tuple(tf.TensorSpec([batch_size, size], tf.float32)
                       for size in sizes) for sizes in self._state_sizes)

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
    mask = masking.step_mask(inputs) if self.masked else None
    features = self._features(inputs)
    # The state enters and leaves float32 under every precision policy.
    state = precision.cast_state(state)
    final_state = []
    for layer, layer_state, output_size, fusable in zip(
        self.core, state, self._output_sizes, self._fusable):
      if self.dropout is not None:
        features = self.dropout(features, training=training)
      if fusable and self._fused_unroll(features, state_grad_scale):
        with tf.name_scope(layer.name):
          features, new_state = fused.unroll_layer(
              layer, features, tuple(layer_state), state_grad_scale)
      elif state_grad_scale is None and mask is None:
        result = layer(features, initial_state=list(layer_state), training=training)
        features, new_state = result[0], precision.cast_state(tuple(result[1:]))
      else:
        features, new_state = stepped.scan_layer(
            layer.cell, output_size, features, layer_state, training,
            scale=state_grad_scale, mask=mask)
      final_state.append(new_state)
    if not readout:
      return None, tuple(final_state)
    if self.readout == 'terminal' and features.shape.rank == 3:
      # The scan returns every step's output; the Keras layer only the last.
      features = features[:, -1]
    if self.dropout is not None:
      features = self.dropout(features, training=training)
    return self._readout(features), tuple(final_state)

  def state_step(self, inputs: tf.Tensor, state: State, training: bool = False
                 ) -> State:
    """The state after a window of one step, through the cells directly.

    ``unroll``'s final state for the same ``[B, 1]`` / ``[B, 1, D]`` inputs (the
    same cells' arithmetic; the fused unroll's to float tolerance), without the
    head and without any loop: the Keras layers loop even over one step, and a
    loop does not vectorize. The forward-mode methods map it over the rows with
    ``tf.vectorized_map`` to get each row's Jacobian in the weights from that
    row alone (``tfcredit.methods.rtrl``).
    """
    return self._cells_step(inputs, state, training)[1]

  def one_step(self, inputs: tf.Tensor, state: State, training: bool = False
               ) -> Tuple[tf.Tensor, State]:
    """``unroll(inputs, state)`` for a window of one step, without any loop:
    ``state_step``'s state and the head on the last layer's output. The
    forward-mode methods differentiate every step's state many times (``J_t``,
    ``∂s_t/∂θ``); through a loop each Jacobian converts a while loop, seconds
    of graph building per trace, which this step never pays."""
    features, new_state = self._cells_step(inputs, state, training)
    if self.readout != 'terminal':
      features = tf.expand_dims(features, 1)
    if self.dropout is not None:
      features = self.dropout(features, training=training)
    return self._readout(features), new_state

  def _cells_step(self, inputs, state, training):
    """``(last layer's output [B, units], new state)`` of one step through the
    cells (``state_step``)."""
    if inputs.shape.rank is not None and inputs.shape[1] != 1:
      raise ValueError(f'a step takes a window of one step, got {inputs.shape}')
    features = self._features(inputs)[:, 0]
    state = precision.cast_state(state)
    new_state = []
    for layer, layer_state in zip(self.core, state):
      if self.dropout is not None:
        features = self.dropout(features, training=training)
      features, cell_state = stepped.cell_step(layer.cell, features, layer_state,
                                               training)
      if self.masked:  # A padded step keeps the state.
        cell_state = masking.hold(masking.step_mask(inputs)[:, 0], cell_state,
                                  tuple(layer_state))
      new_state.append(cell_state)
    return features, tuple(new_state)

  def _features(self, inputs: tf.Tensor) -> tf.Tensor:
    """The core's input, ``[B, T, D]``: the embedded tokens, or the real
    features in the compute dtype (``[B, T]`` is one feature per step)."""
    if self.masked:
      inputs = masking.clean_inputs(inputs)
    if not self.token_inputs and inputs.shape.rank == 2:
      inputs = tf.expand_dims(inputs, -1)  # One real feature per step.
    features = inputs if self.encoder is None else self.encoder(inputs)
    if not self.token_inputs and self.encoder is None:
      features = tf.cast(features, self.compute_dtype)
    return features

  def _fused_unroll(self, features, state_grad_scale) -> bool:
    """Whether a fusable layer fed ``features`` takes ``tfcredit.models.fused``.

    ``'auto'``: always under a scale (faster than the Keras cells stepped by
    ``tf.scan``); without one, when no GPU is visible (cuDNN is faster there)
    and the layer's input is at least half as wide as its state, where
    hoisting the input product out of the loop pays (it does not with 2 inputs
    for 128 units, the adding task), and under a mixed-precision policy, where
    the fused unroll keeps the gates and the state float32. The measurements:
    docs/benchmark.md, "The fused unroll: before and after".
    """
    if self.masked:
      return False  # Padded steps: the scan holds the state (stepped.scan_layer).
    if self.unroll_implementation != 'auto':
      return self.unroll_implementation == 'fused'
    if state_grad_scale is not None:
      return True
    if self._on_gpu:
      return False
    if self.compute_dtype != 'float32':
      return True  # Keeps the carried state float32 (the Keras cells would not).
    width = features.shape[-1]
    return width is not None and 2 * width >= self.units

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
    """The head's outputs, float32 under every precision (losses read them)."""
    if self.identity_head:
      return tf.cast(features, tf.float32)
    if self.head is not None:
      return tf.cast(self.head(features), tf.float32)
    dtype = tf.float32 if self.float32_head else self.compute_dtype
    logits = tf.tensordot(tf.cast(features, dtype),
                          tf.cast(self.encoder.embeddings, dtype), axes=[[-1], [1]])
    return tf.cast(logits, tf.float32) + tf.cast(self.output_bias, tf.float32)

  def get_config(self) -> Dict[str, Any]:
    """The constructor's arguments: ``from_config`` builds the same model.

    A named cell stays its name; a cell instance, list or factory becomes the
    serialized cells it built (a custom cell class must be registered with
    ``keras.saving.register_keras_serializable`` to be deserialized).
    """
    config = dict(self._arguments)
    if self.cell_type in cells_lib.NAMED:
      config['cell'] = self.cell_type
    else:
      config['cell'] = [keras.saving.serialize_keras_object(layer.cell)
                        for layer in self.core]
      config['units'], config['num_layers'] = None, len(self.core)
    return config

  @classmethod
  def from_config(cls, config: Dict[str, Any]) -> 'RecurrentModel':
    config = dict(config)
    if isinstance(config.get('cell'), (list, tuple)):
      config['cell'] = [keras.saving.deserialize_keras_object(cell)
                        for cell in config['cell']]
    return cls(**config)

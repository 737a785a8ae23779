"""``RecurrentModel``'s construction: its arguments checked, and the recurrent
core's cells from ``RecurrentModel.cell`` (a name, a cell, a list of cells or a
factory) resolved and checked, sizes read from ``state_size``.
"""

import inspect
from typing import List, Optional, Tuple

import keras
import tensorflow as tf

from tfcredit import validation
from tfcredit.errors import ConfigurationError

# The named cores: their Keras layers and state tensors per layer ((h, c), (h,)).
KERAS_LAYERS = {
    'lstm': keras.layers.LSTM,
    'gru': keras.layers.GRU,
    'simple_rnn': keras.layers.SimpleRNN,
}
STATES_PER_LAYER = {'lstm': 2, 'gru': 1, 'simple_rnn': 1}
NAMED = tuple(KERAS_LAYERS)
READOUTS = ('per_step', 'terminal')
UNROLLS = ('auto', 'fused', 'keras')
DEFAULT_UNITS = 200


def _is_cell(value) -> bool:
  return (isinstance(value, keras.layers.Layer)
          and getattr(value, 'state_size', None) is not None)


def is_factory(value) -> bool:
  return (isinstance(value, type) or callable(value)) and not isinstance(
      value, (keras.layers.Layer, str))


def _takes(function, name: str) -> bool:
  """Whether ``function`` (a class: its constructor) accepts keyword ``name``."""
  target = function.__init__ if isinstance(function, type) else function
  try:
    parameters = inspect.signature(target).parameters
  except (TypeError, ValueError):
    return False
  return name in parameters or any(p.kind == p.VAR_KEYWORD
                                   for p in parameters.values())


def custom_cells(cell, units, num_layers) -> Optional[List[keras.layers.Layer]]:
  """The cells of a non-named core, bottom first; None for a cell name.

  Raises:
    ConfigurationError: ``cell`` is not a name, a cell, a list of cells or a cell
      factory, or a cell has an unusable ``state_size``.
  """
  if isinstance(cell, str):
    return None
  if isinstance(cell, keras.layers.StackedRNNCells):
    cells = list(cell.cells)
  elif isinstance(cell, (list, tuple)):
    cells = list(cell)
  elif _is_cell(cell):
    cells = [cell]
  elif is_factory(cell):
    kwargs = {'units': units or DEFAULT_UNITS} if _takes(cell, 'units') else {}
    cells = []
    for _ in range(num_layers):
      try:
        cells.append(cell(**kwargs))
      except TypeError as error:
        raise ConfigurationError(
            f'RecurrentModel.cell={cell!r} is a class or factory, called with '
            f'{kwargs or "no arguments"} once per layer, and it failed: {error}. '
            'Bind an instance instead (gin: RecurrentModel.cell = @MyCell()) or '
            'bind its arguments') from None
    if not all(_is_cell(c) for c in cells):
      raise ConfigurationError(
          f'RecurrentModel.cell={cell!r} built {cells[0]!r}, not a Keras RNN cell '
          '(a keras.layers.Layer with a state_size): give a cell class such as '
          'keras.layers.GRUCell')
    return cells
  else:
    raise ConfigurationError(
        f'RecurrentModel.cell must be one of {sorted(NAMED)}, a Keras RNN cell '
        '(a keras.layers.Layer with a state_size, e.g. keras.layers.LSTMCell(32)), '
        'a list of cells, or a cell class; got {!r}'.format(cell))
  flat = []
  for item in cells:  # A list may hold StackedRNNCells too.
    flat.extend(item.cells if isinstance(item, keras.layers.StackedRNNCells)
                else [item])
  for index, item in enumerate(flat):
    if not _is_cell(item):
      raise ConfigurationError(
          f'RecurrentModel.cell: entry {index} of the stack, {item!r}, is not a '
          'Keras RNN cell (a keras.layers.Layer with a state_size)')
  if not flat:
    raise ConfigurationError('RecurrentModel.cell is an empty list of cells: give '
                             'at least one Keras RNN cell')
  if num_layers not in (1, len(flat)):
    raise ConfigurationError(
        f'RecurrentModel.num_layers={num_layers} does not match the {len(flat)} '
        f'cell(s) given as RecurrentModel.cell: a cell instance or list sets the '
        f'depth, so remove the num_layers binding (or pass a cell class to build '
        f'num_layers copies)')
  for item in flat:
    state_sizes(item)
    output_size(item)
  return flat


def state_sizes(cell) -> Tuple[int, ...]:
  """The cell's ``state_size`` as a flat tuple of positive integers."""
  sizes = tf.nest.flatten(cell.state_size)
  for size in sizes:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
      raise ConfigurationError(
          f'RecurrentModel.cell: {type(cell).__name__}.state_size = '
          f'{cell.state_size!r}; every entry must be a positive integer (each state '
          'tensor is a [batch, size] vector): flatten the state in the cell')
  return tuple(int(size) for size in sizes)


def output_size(cell) -> int:
  """The cell's ``output_size``, or (the Keras convention) its first state size."""
  size = getattr(cell, 'output_size', None)
  if size is None:
    size = state_sizes(cell)[0]
  if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
    raise ConfigurationError(
        f'RecurrentModel.cell: {type(cell).__name__}.output_size = {size!r}; it '
        'must be a positive integer')
  return int(size)


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


def resolve_core(cell, units, num_layers, unroll_implementation):
  """``(custom cells or None, the cell's label, units, num_layers)``: a cell
  instance, list or factory sets its own sizes and depth."""
  cells = custom_cells(cell, units, num_layers)
  if cells is None and cell not in NAMED:
    raise ConfigurationError(
        f'RecurrentModel.cell must be one of {sorted(NAMED)}, a Keras RNN cell '
        f'(instance, list or class), got {cell!r}')
  if cells is None:
    return None, cell, units or DEFAULT_UNITS, num_layers
  top_size = output_size(cells[-1])
  if units is not None and units != top_size and not is_factory(cell):
    raise ConfigurationError(
        f'RecurrentModel.units={units} does not match the cell {cell!r}, whose '
        f'(top) output size is {top_size}: a cell instance sets its own sizes, '
        f'so remove the units binding or set units = {top_size}')
  label = (cell.__name__ if isinstance(cell, type) else
           '+'.join(type(c).__name__ for c in cells))
  if unroll_implementation == 'fused':
    raise ConfigurationError(
        f"RecurrentModel.unroll_implementation='fused' needs cell = 'lstm' or "
        f"'gru', got a custom cell ({label}): use 'auto' or 'keras'")
  return cells, label, top_size, len(cells)


def initializer(init_scale):
  """``default -> initializer``: uniform in ``[-init_scale, init_scale]`` when
  set, else the Keras default named."""
  def make(default):
    if init_scale is None:
      return default
    return keras.initializers.RandomUniform(-init_scale, init_scale)
  return make


def check_arguments(*, unroll_implementation, num_layers, output_dim, units,
                     readout, input_vocab_size, input_dim, dropout, init_scale):
  """Refuses out-of-range constructor arguments, naming the binding."""
  validation.one_of('RecurrentModel.unroll_implementation',
                    unroll_implementation, UNROLLS)
  for arg, value in (('num_layers', num_layers), ('output_dim', output_dim)):
    validation.positive_int(f'RecurrentModel.{arg}', value)
  if units is not None:
    validation.positive_int('RecurrentModel.units', units)
  validation.one_of('RecurrentModel.readout', readout, READOUTS)
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

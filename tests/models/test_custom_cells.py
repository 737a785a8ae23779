"""Your own recurrent cell or model: any Keras RNN cell as ``RecurrentModel.cell``,
with every method, and the model contract the trainer checks. The LRU cell
(``tfcredit.models.lru``) trains with every method too.

The custom cell here is written for the tests: two state tensors of different
sizes, ``h`` (4) and a slow memory ``m`` (3), so nothing that assumes one state
size, or LSTM's ``(h, c)``, can pass by accident. References are the plain Keras
layer path cut with ``tf.stop_gradient`` and the named Keras layers.
"""

import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.errors import ConfigurationError
from tfcredit.methods import TruncatedBPTT
from tfcredit.models import contract
from tfcredit.models.leaky_rnn import LeakyRNNCell
from tfcredit.models.lru import LRUCell
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.testing import (TwoStateCell, assert_nests_close, built_optimizer,
                              clean_gin, configured_components, max_abs_diff,
                              run_entry_point, small_methods)
from tfcredit.training import trainer

from tiers import slow_except

ROWS = 2
H, M = 4, 3


gin.register(TwoStateCell, module='test_custom_cells')


@pytest.fixture(scope='module')
def task():
  # 2 columns of 31 steps: a few windows of every method.
  return MarkovLanguageTask(vocabulary_size=6, branching=2, train_length=62,
                            eval_length=20, seed=1)


def _model(task, cell, seed=0, **kwargs):
  keras.utils.set_random_seed(seed)
  model = RecurrentModel(cell=cell, **task.model_spec(), **kwargs)
  model.build_for(tf.zeros([1, 1], tf.int32))
  return model


def _segment(task, length):
  data = task.stream('train', ROWS)
  return tf.constant(data[:, :length]), tf.constant(data[:, 1:length + 1])


METHODS = small_methods(ROWS)

CELLS = {
    'two_state': lambda: TwoStateCell(),
    'leaky': lambda: LeakyRNNCell(units=5, alpha=0.5),
    'lru': lambda: LRUCell(units=H),
    'lstm_cell': lambda: keras.layers.LSTMCell(5),
    'stacked_list': lambda: [keras.layers.GRUCell(3), TwoStateCell()],
    'stacked_keras': lambda: keras.layers.StackedRNNCells(
        [keras.layers.LSTMCell(3), keras.layers.SimpleRNNCell(4)]),
    # The three library-independent cores in one stack: one trace per method
    # trains each of them (every layer must learn).
    'mixed': lambda: [TwoStateCell(), LeakyRNNCell(units=5, alpha=0.5),
                      LRUCell(units=H)],
}
STATE_SIZES = {'two_state': ((H, M),), 'leaky': ((5,),), 'lru': ((H, H),),
               'lstm_cell': ((5, 5),), 'stacked_list': ((3,), (H, M)),
               'stacked_keras': ((3, 3), (4,)),
               'mixed': ((H, M), (5,), (H, H))}

# The two-state cell, the leaky RNN and the LRU stacked ('mixed') with every
# method that trains any cell, and each alone with the methods for some cells
# that train it; the other cells with the methods that touch the state nest
# (ARTBP scales it, DNI reads it, TargetProp frees it) and with KF-RTRL, which
# reads the cells' weights. Methods for some cells only (``CELLS``: RFLO,
# e-prop, KF-RTRL, element-wise RTRL) refuse the two-state cell; e-prop trains
# a Keras LSTM cell.
ANY_CELL = [method for method in METHODS
            if tfcredit.METHODS[method].CELLS is None]


def _trains(method, cell_class):
  cells = tfcredit.METHODS[method].CELLS
  return cells is None or issubclass(cell_class, cells)


CASES = ([('mixed', method) for method in ANY_CELL] +
         [(name, method) for name, cell_class in (('leaky', LeakyRNNCell),
                                                  ('lru', LRUCell))
          for method in METHODS
          if method not in ANY_CELL and _trains(method, cell_class)] +
         [(cell, method) for cell in ('lstm_cell', 'stacked_list', 'stacked_keras')
          for method in ('artbp', 'dni', 'target_prop', 'kf_rtrl')] +
         [('lstm_cell', 'eprop')])
# KF-RTRL needs cells whose weights act on [x; h; 1] alone (Keras's LSTM and
# simple RNN cells): it refuses the others, naming the cell.
REFUSED = {('stacked_list', 'kf_rtrl'): 'GRUCell'}


@pytest.mark.parametrize('cell,method', slow_except(
    CASES, ('mixed', 'truncated_bptt'), ('stacked_list', 'kf_rtrl')))
def test_every_method_trains_a_custom_core(task, cell, method):
  model = _model(task, CELLS[cell]())
  if (cell, method) in REFUSED:
    with pytest.raises(ConfigurationError, match=REFUSED[cell, method]):
      METHODS[method](model, task, built_optimizer(model))
    return
  assert model.state_sizes == STATE_SIZES[cell]
  state = model.initial_state(ROWS)
  assert [tuple(int(d) for d in s.shape) for s in tf.nest.flatten(state)] == [
      (ROWS, size) for sizes in STATE_SIZES[cell] for size in sizes]
  trainer_ = METHODS[method](model, task, built_optimizer(model, learning_rate=0.5))
  core_weights = [v for layer in model.core for v in layer.trainable_variables]
  assert core_weights
  before = [v.numpy().copy() for v in core_weights]

  length = trainer_.segment_length()
  for _ in range(2):
    state, metrics = trainer_.train_segment(_segment(task, length), state)
    assert np.isfinite(float(metrics['loss_sum']))
    assert float(metrics['updates']) >= 1
  tf.nest.assert_same_structure(state, model.initial_state(ROWS))
  for leaf, spec in zip(tf.nest.flatten(state), tf.nest.flatten(model.state_spec())):
    assert leaf.shape[-1] == spec.shape[-1]
    assert np.all(np.isfinite(leaf.numpy()))
  # Every layer's cell learned, not only the head.
  for layer in model.core:
    changed = [np.any(v.numpy() != b) for v, b in zip(core_weights, before)
               if any(v is w for w in layer.trainable_variables)]
    assert any(changed), f'{layer.name} did not change'

  if method == 'dni':  # The synthesizer sees every state tensor of every layer.
    assert trainer_.width == sum(sum(s) for s in STATE_SIZES[cell])
  if method == 'target_prop':  # A free state variable per state tensor.
    free = [v.numpy().shape for v in tf.nest.flatten(trainer_.minibatch_states)]
    assert [shape[1:] for shape in free] == [
        (ROWS, size) for sizes in STATE_SIZES[cell] for size in sizes]


@pytest.mark.parametrize('method', sorted(set(METHODS) - set(ANY_CELL)))
def test_methods_for_some_cells_refuse_another_in_one_line(task, method):
  model = _model(task, TwoStateCell())
  with pytest.raises(ConfigurationError) as raised:
    METHODS[method](model, task, built_optimizer(model))
  message = str(raised.value)
  assert '\n' not in message
  if method == 'elementwise_rtrl':  # Refuses by structure: any diagonal cell.
    assert 'diagonal per unit' in message
  else:
    assert 'TwoStateCell' in message
    assert all(cls.__name__ in message for cls in tfcredit.METHODS[method].CELLS)


# ------------------------------------------------------------- ARTBP's scaled path


STEPS = 6


def _gradients(model, inputs, state, probes, scale=None, cut_after=None):
  """Outputs, final state and gradients (weights, then initial state) of a loss on
  every output and every final state tensor; ``cut_after`` stops the whole state
  nest after that step (two plain Keras-layer unrolls)."""
  with tf.GradientTape() as tape:
    tape.watch(tf.nest.flatten(state))
    if scale is not None:
      outputs, final = model.unroll(inputs, state, state_grad_scale=scale)
    elif cut_after is None:
      outputs, final = model.unroll(inputs, state)
    else:
      first, middle = model.unroll(inputs[:, :cut_after + 1], state)
      middle = tf.nest.map_structure(tf.stop_gradient, middle)
      second, final = model.unroll(inputs[:, cut_after + 1:], middle)
      outputs = tf.concat([first, second], axis=1)
    loss = tf.reduce_sum(outputs * probes[0])
    for leaf, probe in zip(tf.nest.flatten(final), probes[1:]):
      loss += tf.reduce_sum(leaf * probe)
  sources = list(model.trainable_variables) + tf.nest.flatten(state)
  return outputs, final, tape.gradient(loss, sources)


@pytest.mark.parametrize('cell', ['two_state', 'stacked_list'])
def test_scaled_path_matches_the_keras_layers_and_cuts_every_state_tensor(task, cell):
  model = _model(task, CELLS[cell]())
  rng = np.random.default_rng(0)
  inputs = tf.constant(rng.integers(0, 6, size=(ROWS, STEPS)), tf.int32)
  state = tf.nest.map_structure(
      lambda s: tf.constant(rng.normal(size=(ROWS, s.shape[-1])), tf.float32),
      model.state_spec())
  probes = [tf.constant(rng.normal(size=(ROWS, STEPS, 6)), tf.float32)] + [
      tf.constant(rng.normal(size=(ROWS, s.shape[-1])), tf.float32)
      for s in tf.nest.flatten(model.state_spec())]

  plain = _gradients(model, inputs, state, probes)
  ones = _gradients(model, inputs, state, probes, scale=tf.ones([STEPS]))
  assert_nests_close(ones, plain, rtol=1e-5, atol=1e-5)

  cut = np.ones([STEPS], np.float32)
  cut[2] = 0.0
  scaled = _gradients(model, inputs, state, probes, scale=tf.constant(cut))
  stopped = _gradients(model, inputs, state, probes, cut_after=2)
  assert_nests_close(scaled, stopped, rtol=1e-5, atol=1e-5)
  # The cut matters (else the comparison could not fail), and it cuts m too:
  # stopping only the first state tensor of each layer is a different gradient.
  assert max_abs_diff(stopped[2], plain[2]) > 1e-3
  with tf.GradientTape() as tape:
    tape.watch(tf.nest.flatten(state))
    first, middle = model.unroll(inputs[:, :3], state)
    middle = tuple((tf.stop_gradient(layer[0]),) + tuple(layer[1:])
                   for layer in middle)
    second, final = model.unroll(inputs[:, 3:], middle)
    loss = tf.reduce_sum(tf.concat([first, second], 1) * probes[0])
    for leaf, probe in zip(tf.nest.flatten(final), probes[1:]):
      loss += tf.reduce_sum(leaf * probe)
  h_only = tape.gradient(loss, list(model.trainable_variables) +
                         tf.nest.flatten(state))
  assert max_abs_diff(h_only, stopped[2]) > 1e-4


# ------------------------------------------------ Keras cells equal named layers


def test_keras_cell_objects_compute_what_the_named_layers_compute(task):
  named = _model(task, 'lstm', units=5, num_layers=2, forget_bias=1.0)
  cells = _model(task, [keras.layers.LSTMCell(5), keras.layers.LSTMCell(5)],
                 seed=7)
  assert cells.state_sizes == named.state_sizes == ((5, 5), (5, 5))
  cells.encoder.set_weights(named.encoder.get_weights())
  cells.head.set_weights(named.head.get_weights())
  for mine, reference in zip(cells.core, named.core):
    mine.cell.kernel.assign(reference.cell.kernel)
    mine.cell.recurrent_kernel.assign(reference.cell.recurrent_kernel)
    mine.cell.bias.assign(reference.cell.bias)
  inputs, _ = _segment(task, 7)
  state = named.initial_state(ROWS)
  expected = named.unroll(inputs, state)
  assert_nests_close(cells.unroll(inputs, state), expected, rtol=1e-5, atol=1e-6)
  assert_nests_close(cells.unroll(inputs, state, state_grad_scale=tf.ones([7])),
                     expected, rtol=1e-5, atol=1e-6)
  # The named cells stay on keras.layers.LSTM (cuDNN-eligible on GPU).
  assert all(isinstance(layer, keras.layers.LSTM) for layer in named.core)


def test_a_cell_class_builds_num_layers_cells_of_units(task):
  model = _model(task, keras.layers.GRUCell, units=3, num_layers=2)
  assert model.state_sizes == ((3,), (3,))
  assert [type(layer.cell) for layer in model.core] == [keras.layers.GRUCell] * 2
  assert model.core[0].cell is not model.core[1].cell


@pytest.mark.parametrize('kwargs,parameter,value', [
    (dict(cell=keras.layers.LSTMCell(5), units=8), 'RecurrentModel.units', '8'),
    (dict(cell=[keras.layers.GRUCell(3)] * 2, num_layers=3),
     'RecurrentModel.num_layers', '3'),
    (dict(cell=[keras.layers.GRUCell(3), keras.layers.Dense(3)]),
     'RecurrentModel.cell', 'Dense'),
    (dict(cell=keras.layers.Dense(3)), 'RecurrentModel.cell', 'Dense'),
    (dict(cell=[]), 'RecurrentModel.cell', 'empty'),
])
def test_unusable_cells_are_refused_by_name(task, kwargs, parameter, value):
  with pytest.raises(ConfigurationError) as raised:
    RecurrentModel(**task.model_spec(), **kwargs)
  assert parameter in str(raised.value) and value in str(raised.value)


# ------------------------------------------------------------------ with gin


@pytest.mark.slow  # A whole tfcredit.train run.
def test_a_gin_registered_cell_trains_through_tfcredit_train(clean_gin, tmp_path):
  # The class form (@TwoStateCell, called with units from the config) and ARTBP's
  # scaled path, through the trainer with the tiny config.
  tfcredit.config.parse(['testing/tiny.gin'], [
      'RecurrentModel.cell = @TwoStateCell', 'RecurrentModel.units = 5',
      'train.method = @ARTBP', 'ARTBP.mean_length = 4'])
  result = tfcredit.train(str(tmp_path / 'run'), export_dir=None,
                          stop_after_calls=2)
  assert result['stopped_after_calls'] == 2
  gin.clear_config()
  tfcredit.config.parse(['testing/tiny.gin'], [
      'RecurrentModel.cell = @TwoStateCell()', 'RecurrentModel.units = None',
      'TwoStateCell.memory = 2'])
  parts = configured_components()
  assert parts.model.state_sizes == ((H, 2),)
  assert isinstance(parts.model.core[0].cell, TwoStateCell)


# ------------------------------------------------------------ the model contract


def test_a_plain_keras_model_is_refused_before_training(tmp_path):
  with pytest.raises(ConfigurationError) as raised:
    trainer.build_components(
        task=lambda: AddingTask(sequence_length=6), method=TruncatedBPTT,
        model=keras.Sequential, optimizer=keras.optimizers.SGD,
        learning_rate=0.1, batch_size=2)
  message = str(raised.value)
  assert 'train.model built a Sequential' in message
  for member in ('build_for', 'initial_state', 'state_spec', 'unroll',
                 'rng_variables'):
    assert member in message
  assert 'RecurrentModel.cell' in message


def test_the_contract_names_exactly_what_is_missing():
  class Partial(RecurrentModel):
    def unroll(self, inputs, state):  # No training, state_grad_scale, readout.
      return super().unroll(inputs, state)

  model = Partial(input_dim=1, output_dim=1, cell=TwoStateCell())
  assert contract.missing_members(model) == [
      'unroll(..., training=)', 'unroll(..., state_grad_scale=)',
      'unroll(..., readout=)']
  assert contract.missing_members(RecurrentModel(input_dim=1, output_dim=1)) == []
  assert contract.missing_members(object()) == [
      name for name, _ in contract.REQUIRED_MEMBERS] + [
          'trackable weights (a keras.Model or tf.Module)']


def test_train_tool_exits_2_for_a_sequential_model(tmp_path, capfd):
  # Gin's dynamic registration makes keras.Sequential bindable without any
  # registration in the library.
  config = tmp_path / 'sequential.gin'
  config.write_text('from __gin__ import dynamic_registration\n'
                    'import keras\n'
                    'import tfcredit.training.trainer\n'
                    "include 'testing/tiny.gin'\n"
                    'tfcredit.training.trainer.train.model = @keras.Sequential\n')
  capfd.readouterr()
  code = run_entry_point('train', f'--gin_file={config}',
                         f'--model_dir={tmp_path / "run"}', '--export_dir=')
  stderr = capfd.readouterr().err
  assert code == 2, stderr[-2000:]
  assert 'train.model built a Sequential' in stderr
  assert 'RecurrentModel' in stderr
  assert 'Traceback' not in stderr

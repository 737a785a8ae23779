"""``SparseGRUCell``: Keras's GRU with a fixed random mask on the recurrent
weights, the mask applied in the call.

Its claims: at sparsity 0 it is Keras's ``GRUCell``; exactly the chosen share
of unit-to-unit connections is cut, in all three gates alike; the masked weights
stay exactly zero through training; the mask travels with the model (a
checkpoint, the config, a SavedModel export) and through gin.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit import export as export_lib
from tfcredit.errors import ConfigurationError
from tfcredit.methods import TruncatedBPTT
from tfcredit.models import RecurrentModel, SparseGRUCell
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.testing import built_optimizer, clean_gin, configured_components  # pylint: disable=unused-import

UNITS, ROWS = 8, 3
TASK = MarkovLanguageTask(vocabulary_size=6, branching=2, train_length=120,
                          eval_length=20, seed=1)


def _model(cell, task=TASK, seed=0):
  keras.utils.set_random_seed(seed)
  model = RecurrentModel(cell=cell, **task.model_spec())
  model.build_for(tf.zeros([1, 1], tf.int32) if task is TASK
                  else tf.zeros([1, 1, 2]))
  return model


def _inputs(length=9):
  return tf.constant(TASK.stream('train', ROWS)[:, :length])


def _unmasked_weights(model):
  """The weights a Keras GRU of the same shape takes: all but the mask."""
  return [w for w, v in zip(model.get_weights(), model.weights)
          if 'recurrent_mask' not in v.path]


def test_at_sparsity_zero_it_is_kerass_gru_cell():
  sparse = _model(SparseGRUCell(UNITS, sparsity=0.0), seed=3)
  dense = _model(keras.layers.GRUCell(UNITS))
  assert sparse.core[0].cell.recurrent_mask.numpy().all()
  dense.set_weights(_unmasked_weights(sparse))
  inputs = _inputs()
  np.testing.assert_allclose(sparse(inputs), dense(inputs), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('sparsity', [0.5, 0.75, 0.9, 1.0])
def test_the_mask_cuts_that_share_of_connections_in_every_gate(sparsity):
  cell = _model(SparseGRUCell(UNITS, sparsity=sparsity, seed=4)).core[0].cell
  feeds = cell.connections()
  assert feeds.shape == (UNITS, UNITS)
  assert (~feeds).sum() == round(sparsity * UNITS**2)
  mask = cell.recurrent_mask.numpy()
  np.testing.assert_array_equal(mask, np.tile(feeds, [1, 3]).astype(np.float32))
  kernel = cell.recurrent_kernel.numpy()
  assert np.all(kernel[mask == 0] == 0) and np.all(kernel[mask == 1] != 0)
  assert not cell.recurrent_mask.trainable
  assert [v.name for v in cell.trainable_variables] == [
      'kernel', 'recurrent_kernel', 'bias']
  # The seed draws the mask.
  np.testing.assert_array_equal(SparseGRUCell(UNITS, sparsity, seed=4)
                                .connections(), feeds)
  if 0 < sparsity < 1:
    assert np.any(SparseGRUCell(UNITS, sparsity, seed=5).connections() != feeds)


def test_masked_weights_stay_exactly_zero_through_training():
  model = _model(SparseGRUCell(UNITS, sparsity=0.75, seed=1))
  cell = model.core[0].cell
  mask = cell.recurrent_mask.numpy()
  before = cell.recurrent_kernel.numpy().copy()
  optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.05)
  method = TruncatedBPTT(model=model, task=TASK, optimizer=optimizer, window=4,
                         windows_per_call=2)
  data = TASK.stream('train', ROWS)
  state = model.initial_state(ROWS)
  for start in range(0, 32, 8):
    state, _ = method.train_segment((tf.constant(data[:, start:start + 8]),
                                     tf.constant(data[:, start + 1:start + 9])),
                                    state)
  after = cell.recurrent_kernel.numpy()
  assert np.all(after[mask == 0] == 0.0)
  assert np.all(after[mask == 1] != before[mask == 1])  # The others learned.
  np.testing.assert_array_equal(cell.recurrent_mask.numpy(), mask)


def _scrambled(model, seed=0):
  """Every recurrent weight set non-zero, the masked ones too: outputs then
  depend on which mask is applied."""
  kernel = model.core[0].cell.recurrent_kernel
  kernel.assign(np.random.default_rng(seed).normal(size=kernel.shape)
                .astype(np.float32))
  return model


def test_the_mask_survives_a_checkpoint_the_config_and_an_export(tmp_path):
  model = _scrambled(_model(SparseGRUCell(UNITS, sparsity=0.75, seed=1)))
  mask = model.core[0].cell.recurrent_mask.numpy()
  inputs = _inputs()
  expected = model(inputs).numpy()
  # Checkpoint, restored into a model whose seed draws another mask.
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / 'ckpt'))
  other = _model(SparseGRUCell(UNITS, sparsity=0.75, seed=2), seed=9)
  assert np.any(other.core[0].cell.recurrent_mask.numpy() != mask)
  tf.train.Checkpoint(model=other).restore(path).assert_existing_objects_matched()
  np.testing.assert_array_equal(other.core[0].cell.recurrent_mask.numpy(), mask)
  np.testing.assert_allclose(other(inputs), expected, rtol=1e-6, atol=1e-6)
  # The config rebuilds the same cell (its seed), weights aside.
  rebuilt = RecurrentModel.from_config(model.get_config())
  rebuilt.build_for(inputs[:, :1])
  rebuilt.set_weights(model.get_weights())
  np.testing.assert_array_equal(rebuilt.core[0].cell.connections(),
                                model.core[0].cell.connections())
  np.testing.assert_allclose(rebuilt(inputs), expected, rtol=1e-6, atol=1e-6)
  # The SavedModel applies it with no tfcredit code.
  loaded, _, _ = export_lib.load(export_lib.export(
      model, TASK, str(tmp_path / 'exports'), eval_batch_size=ROWS))
  np.testing.assert_allclose(loaded.serve(inputs)['outputs'], expected,
                             rtol=1e-5, atol=1e-6)
  unmasked = _model(keras.layers.GRUCell(UNITS))
  unmasked.set_weights(_unmasked_weights(model))
  assert np.abs(unmasked(inputs).numpy() - expected).max() > 1e-3


def test_a_gin_bound_sparse_gru_trains_with_snap2(clean_gin, tmp_path):
  tfcredit.config.parse(['testing/tiny.gin'], [
      'RecurrentModel.cell = @SparseGRUCell', 'RecurrentModel.units = 6',
      'SparseGRUCell.sparsity = 0.5', 'SparseGRUCell.seed = 3',
      'train.method = @SnAp2', 'SnAp2.window = 5'])
  parts = configured_components()
  cell = parts.model.core[0].cell
  assert isinstance(cell, SparseGRUCell)
  assert (cell.units, cell.sparsity, cell.seed) == (6, 0.5, 3)
  assert type(parts.method).__name__ == 'SnAp2'
  result = tfcredit.train(str(tmp_path / 'run'), export_dir=None,
                          stop_after_calls=2)
  assert result['stopped_after_calls'] == 2


@pytest.mark.parametrize('kwargs, parameter', [
    (dict(units=0), 'SparseGRUCell.units'),
    (dict(units=4, sparsity=1.5), 'SparseGRUCell.sparsity'),
    (dict(units=4, sparsity='high'), 'SparseGRUCell.sparsity'),
    (dict(units=4, seed=-1), 'SparseGRUCell.seed'),
])
def test_bad_arguments_are_refused_with_the_parameter_named(kwargs, parameter):
  with pytest.raises(ConfigurationError, match=parameter):
    SparseGRUCell(**kwargs)


def _numpy_gru(x, h, kernel, recurrent, bias, connections):
  """One step of the masked GRU written from the equations (numpy)."""
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  masked = recurrent * np.tile(connections, [1, 3])
  x_z, x_r, x_h = np.split(x @ kernel + bias[0], 3, axis=-1)
  h_z, h_r, h_h = np.split(h @ masked + bias[1], 3, axis=-1)
  z, r = sigmoid(x_z + h_z), sigmoid(x_r + h_r)
  return z * h + (1 - z) * np.tanh(x_h + r * h_h)


def test_a_stack_on_real_inputs_is_the_masked_gru_of_the_equations():
  """Two layers with their own masks (seeds 0 and 1), every recurrent weight
  set non-zero so only the mask cuts connections: the final states are those
  of the GRU equations with ``U ⊙ C`` in numpy, and not those without it."""
  model = _model([SparseGRUCell(5, seed=0), SparseGRUCell(4, seed=1)],
                 task=AddingTask(sequence_length=6))
  cells = [layer.cell for layer in model.core]
  assert model.state_sizes == ((5,), (4,))
  assert np.any(cells[0].connections()[:4, :4] != cells[1].connections())
  for index, cell in enumerate(cells):
    cell.recurrent_kernel.assign(np.random.default_rng(index).normal(
        size=cell.recurrent_kernel.shape).astype(np.float32))
  inputs = np.random.default_rng(0).normal(size=[2, 6, 2]).astype(np.float32)
  _, state = model.unroll(tf.constant(inputs), model.initial_state(2))
  for masked in (True, False):
    layer_inputs = inputs
    for cell, final in zip(cells, tf.nest.flatten(state)):
      connections = (cell.connections() if masked
                     else np.ones([cell.units] * 2, bool))
      h, states = np.zeros([2, cell.units], np.float32), []
      for t in range(inputs.shape[1]):
        h = _numpy_gru(layer_inputs[:, t], h, cell.kernel.numpy(),
                       cell.recurrent_kernel.numpy(), cell.bias.numpy(),
                       connections)
        states.append(h)
      layer_inputs = np.stack(states, axis=1)
      if masked:
        np.testing.assert_allclose(final.numpy(), h, rtol=1e-5, atol=1e-5)
    if not masked:
      assert np.abs(tf.nest.flatten(state)[-1].numpy() - h).max() > 1e-3

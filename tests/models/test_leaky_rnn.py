"""The leaky RNN cell (Murray 2019; Marschall, Cho & Savin 2020) against its
equation written out by hand: ``h_t = (1 − α) h_{t−1} + α φ(W_in x_t + W_rec
h_{t−1} + b)``, in numpy, through every path of ``RecurrentModel`` that steps a
custom cell (the Keras layer, the ``tf.scan`` of a gradient scale, the
loop-free ``state_step``)."""

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.errors import ConfigurationError
from tfcredit.models.leaky_rnn import LeakyRNNCell
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.testing import clean_gin, configured_components  # noqa: F401

BATCH, STEPS, INPUTS, UNITS, OUTPUTS = 3, 7, 2, 4, 3
ACTIVATIONS = {'tanh': np.tanh, 'sigmoid': lambda z: 1 / (1 + np.exp(-z)),
               'relu': lambda z: np.maximum(z, 0)}


def _model(alpha, activation='tanh', seed=0, **kwargs):
  keras.utils.set_random_seed(seed)
  model = RecurrentModel(input_dim=INPUTS, output_dim=OUTPUTS, cell=LeakyRNNCell(
      units=UNITS, alpha=alpha, activation=activation), **kwargs)
  model.build_for(tf.zeros([1, 1, INPUTS]))
  rng = np.random.default_rng(seed)
  model.core[0].cell.bias.assign(rng.normal(size=UNITS))  # Zero initially.
  return model


def _by_hand(model, inputs, h):
  """The recurrence and the head in numpy: ``(outputs [B, T, out], h_T)``."""
  cell = model.core[0].cell
  w_in, w_rec, b = (v.numpy() for v in (cell.kernel, cell.recurrent_kernel,
                                        cell.bias))
  phi = ACTIVATIONS[keras.activations.serialize(cell.activation)]
  outputs = []
  for t in range(inputs.shape[1]):
    h = (1 - cell.alpha) * h + cell.alpha * phi(inputs[:, t] @ w_in + h @ w_rec
                                                + b)
    outputs.append(h @ model.head.kernel.numpy() + model.head.bias.numpy())
  return np.stack(outputs, axis=1), h


@pytest.mark.parametrize('alpha,activation', [(1.0, 'tanh'), (0.3, 'tanh'),
                                              (0.6, 'sigmoid'), (0.5, 'relu')])
def test_every_path_computes_the_equation(alpha, activation):
  model = _model(alpha, activation)
  rng = np.random.default_rng(1)
  inputs = rng.normal(size=(BATCH, STEPS, INPUTS)).astype(np.float32)
  h0 = rng.normal(size=(BATCH, UNITS)).astype(np.float32)
  expected_outputs, expected_h = _by_hand(model, inputs, h0)
  state = ((tf.constant(h0),),)
  for scale in (None, tf.ones([STEPS])):  # Keras layer; tf.scan.
    outputs, final = model.unroll(tf.constant(inputs), state,
                                  state_grad_scale=scale)
    np.testing.assert_allclose(outputs.numpy(), expected_outputs, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(final[0][0].numpy(), expected_h, rtol=1e-5,
                               atol=1e-6)
  stepped = model.state_step(tf.constant(inputs[:, :1]), state)
  np.testing.assert_allclose(stepped[0][0].numpy(),
                             _by_hand(model, inputs[:, :1], h0)[1], rtol=1e-5,
                             atol=1e-6)
  assert model.state_sizes == ((UNITS,),)  # One state tensor, h.


def test_alpha_one_is_keras_simple_rnn():
  model = _model(1.0)
  keras.utils.set_random_seed(0)
  simple = RecurrentModel(input_dim=INPUTS, output_dim=OUTPUTS,
                          cell=keras.layers.SimpleRNNCell(UNITS))
  simple.build_for(tf.zeros([1, 1, INPUTS]))
  simple.set_weights(model.get_weights())  # Same order: W_in, W_rec, b, head.
  inputs = tf.random.stateless_normal([BATCH, STEPS, INPUTS], seed=[1, 2])
  state = model.initial_state(BATCH)
  np.testing.assert_allclose(model.unroll(inputs, state)[0].numpy(),
                             simple.unroll(inputs, state)[0].numpy(), rtol=1e-5,
                             atol=1e-6)


def test_default_initializers_are_marschall_et_al():
  """``W_in`` normal of variance ``1/inputs``, ``W_rec`` orthogonal, ``b`` 0."""
  keras.utils.set_random_seed(0)
  cell = LeakyRNNCell(units=64)
  cell.build((None, 400))
  w_in, w_rec = cell.kernel.numpy(), cell.recurrent_kernel.numpy()
  assert abs(w_in.var() * 400 - 1) < 0.05 and abs(w_in.mean()) < 0.01
  np.testing.assert_allclose(w_rec.T @ w_rec, np.eye(64), atol=1e-5)
  assert not cell.bias.numpy().any()


def test_config_round_trip_rebuilds_the_same_model():
  model = _model(0.25, 'sigmoid')
  cell = model.core[0].cell
  rebuilt = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(cell))
  assert isinstance(rebuilt, LeakyRNNCell)
  assert rebuilt.get_config() == cell.get_config()
  assert (rebuilt.units, rebuilt.alpha) == (UNITS, 0.25)
  copy = RecurrentModel.from_config(model.get_config())
  copy.build_for(tf.zeros([1, 1, INPUTS]))
  copy.set_weights(model.get_weights())
  inputs = tf.random.stateless_normal([BATCH, STEPS, INPUTS], seed=[3, 4])
  state = model.initial_state(BATCH)
  np.testing.assert_array_equal(copy.unroll(inputs, state)[0].numpy(),
                                model.unroll(inputs, state)[0].numpy())


@pytest.mark.parametrize('kwargs,name', [
    ({'units': 0}, 'LeakyRNNCell.units'),
    ({'units': 4, 'alpha': 0.0}, 'LeakyRNNCell.alpha'),
    ({'units': 4, 'alpha': 1.5}, 'LeakyRNNCell.alpha'),
    ({'units': 4, 'alpha': '0.5'}, 'LeakyRNNCell.alpha'),
])
def test_bad_arguments_are_refused_by_name(kwargs, name):
  with pytest.raises(ConfigurationError, match=name):
    LeakyRNNCell(**kwargs)


def test_registered_with_gin(clean_gin):
  tfcredit.config.parse(['testing/tiny.gin'], [
      'RecurrentModel.cell = @LeakyRNNCell', 'RecurrentModel.units = 5',
      'LeakyRNNCell.alpha = 0.3'])
  parts = configured_components()
  cell = parts.model.core[0].cell
  assert isinstance(cell, LeakyRNNCell) and (cell.units, cell.alpha) == (5, 0.3)
  assert gin.query_parameter('LeakyRNNCell.alpha') == 0.3

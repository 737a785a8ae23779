"""The LRU cell (Orvieto et al. 2023) against a hand-written complex recurrence.

``h_t = λ ⊙ h_(t−1) + γ ⊙ (x_t B)``, ``y_t = Re(h_t C) + D ⊙ x_t`` in numpy's
complex arithmetic, from the cell's own weights; the stable parameterisation
(``|λ| < 1`` whatever ``ν``), the normaliser ``γ = sqrt(1 − |λ|²)`` at
initialisation and the ring's ranges; and the cell as every method sees it: a
state of real tensors, a factory, gin, a serialized model.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.errors import ConfigurationError
from tfcredit.models.lru import LRUBlockCell, LRUCell
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.testing import clean_gin, configured_components  # noqa: F401

ROWS, STEPS, INPUTS = 3, 7, 4


def _model(units, inputs=INPUTS, seed=0, **cell_arguments):
  """The cell as the whole model: no readout, so the outputs are its ``y``."""
  keras.utils.set_random_seed(seed)
  cell = LRUCell(units=units, **cell_arguments)
  model = RecurrentModel(cell=cell, input_dim=inputs,
                         output_dim=cell.output_units, identity_head=True)
  model.build_for(tf.zeros([1, 1, inputs]))
  return model, cell


def _numpy_lru(cell, inputs, h0):
  """The recurrence in complex numpy (float64), from the cell's weights."""
  w = {name: getattr(cell, name).numpy().astype(np.float64)
       for name in ('nu_log', 'theta_log', 'gamma_log', 'B_re', 'B_im', 'C_re',
                    'C_im', 'D')}
  lam = np.exp(-np.exp(w['nu_log']) + 1j * np.exp(w['theta_log']))
  gamma = np.exp(w['gamma_log'])
  b = w['B_re'] + 1j * w['B_im']
  c = w['C_re'] + 1j * w['C_im']
  h, outputs = h0, []
  for t in range(inputs.shape[1]):
    x = inputs[:, t]
    h = lam * h + gamma * (x @ b)
    direct = w['D'] * x if w['D'].ndim == 1 else x @ w['D']
    outputs.append((h @ c).real + direct)
  return np.stack(outputs, 1), h


def _check_unroll(model, inputs, h0, expected, atol=1e-5):
  """Unrolls ``model`` from the complex state ``h0`` and compares its outputs
  and final state with ``expected`` (outputs, final complex state); returns
  the initial state nest."""
  state = ((tf.constant(h0.real, tf.float32), tf.constant(h0.imag, tf.float32)),)
  outputs, final = model.unroll(tf.constant(inputs, tf.float32), state)
  outputs_expected, h = expected
  np.testing.assert_allclose(outputs.numpy(), outputs_expected, rtol=1e-4,
                             atol=atol)
  (re, im), = final
  np.testing.assert_allclose(re.numpy(), h.real, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(im.numpy(), h.imag, rtol=1e-4, atol=1e-5)
  return state


def _numpy_block(cell, inputs, h0):
  """The residual block in numpy: LayerNorm (ε 1e-6), the LRU, GELU (tanh
  form), the GLU and the residual."""
  w = {name: getattr(cell, name).numpy().astype(np.float64) for name in (
      'norm_scale', 'norm_bias', 'glu_kernel', 'glu_bias', 'gate_kernel',
      'gate_bias')}
  mean = inputs.mean(-1, keepdims=True)
  variance = inputs.var(-1, keepdims=True)
  normed = ((inputs - mean) / np.sqrt(variance + 1e-6) * w['norm_scale']
            + w['norm_bias'])
  y, h = _numpy_lru(cell, normed, h0)
  z = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))
  gate = 1 / (1 + np.exp(-(z @ w['gate_kernel'] + w['gate_bias'])))
  return inputs + (z @ w['glu_kernel'] + w['glu_bias']) * gate, h


@pytest.mark.parametrize('output_units', [None, 6],
                         ids=['elementwise_d', 'matrix_d'])
def test_the_cell_computes_the_complex_recurrence(output_units):
  units = 5
  if output_units is None:  # The paper's H → H layer: D ⊙ x.
    model, cell = _model(units, inputs=units)
    inputs_width = units
  else:
    model, cell = _model(units, output_units=output_units)
    inputs_width = INPUTS
  assert cell.D.shape == ((units,) if output_units is None
                          else (INPUTS, output_units))
  rng = np.random.default_rng(1)
  inputs = rng.standard_normal([ROWS, STEPS, inputs_width])
  h0 = rng.standard_normal([ROWS, units]) + 1j * rng.standard_normal(
      [ROWS, units])
  state = _check_unroll(model, inputs, h0, _numpy_lru(cell, inputs, h0))
  # One step without a loop (the forward-mode methods' per-row path).
  stepped = model.state_step(tf.constant(inputs[:, :1], tf.float32), state)
  h1 = _numpy_lru(cell, inputs[:, :1], h0)[1]
  np.testing.assert_allclose(stepped[0][0].numpy(), h1.real, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(stepped[0][1].numpy(), h1.imag, rtol=1e-4,
                             atol=1e-5)


def test_the_modulus_is_below_one_for_every_nu():
  """``|λ| = exp(−exp(ν))``: below 1 for any finite ``ν`` (to float32's
  resolution: from ``ν ≈ −16`` it rounds to 1, never above), and the phase is
  ``exp(θ)``."""
  _, cell = _model(6)
  nu = np.array([-15.0, -5.0, -1.0, 0.0, 2.0, 30.0], np.float32)
  theta = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0], np.float32)
  cell.nu_log.assign(nu)
  cell.theta_log.assign(theta)
  lambda_re, lambda_im, _ = cell.recurrence()
  modulus = np.hypot(lambda_re.numpy(), lambda_im.numpy())
  assert np.all(modulus < 1.0)
  np.testing.assert_allclose(modulus, np.exp(-np.exp(nu.astype(np.float64))),
                             rtol=1e-5, atol=1e-30)
  angle = np.angle(np.exp(1j * np.exp(theta.astype(np.float64))))
  np.testing.assert_allclose(  # Where λ ≠ 0 (not at ν = 30).
      np.arctan2(lambda_im.numpy(), lambda_re.numpy())[:-1], angle[:-1],
      rtol=1e-5, atol=1e-6)
  cell.nu_log.assign(np.full([6], -40.0, np.float32))
  lambda_re, lambda_im, _ = cell.recurrence()
  assert np.all(np.hypot(lambda_re.numpy(), lambda_im.numpy()) <= 1.0)


@pytest.mark.parametrize('r_min,r_max,max_phase', [
    (0.0, 1.0, 2 * math.pi), (0.4, 0.9, math.pi / 4), (0.9, 0.999, math.pi / 10)])
def test_the_ring_initialisation_and_the_normaliser(r_min, r_max, max_phase):
  units = 4000
  _, cell = _model(units, r_min=r_min, r_max=r_max, max_phase=max_phase)
  nu = np.exp(cell.nu_log.numpy().astype(np.float64))
  modulus = np.exp(-nu)
  phase = np.exp(cell.theta_log.numpy().astype(np.float64))
  assert modulus.min() >= r_min - 1e-6 and modulus.max() <= r_max + 1e-6
  assert phase.min() >= 0.0 and phase.max() <= max_phase * (1 + 1e-6)
  # |λ|² uniform between the squares (the paper's ring), the phase uniform.
  squared = modulus**2
  assert abs(squared.mean() - (r_min**2 + r_max**2) / 2) < 0.02 * (
      r_max**2 - r_min**2) + 1e-3
  assert abs(phase.mean() - max_phase / 2) < 0.03 * max_phase
  # γ = sqrt(1 − |λ|²): a white input keeps the state's variance.
  gamma = np.exp(cell.gamma_log.numpy().astype(np.float64))
  np.testing.assert_allclose(gamma**2, -np.expm1(-2 * nu), rtol=1e-5)
  assert np.all(np.isfinite(cell.gamma_log.numpy()))
  # B's parts N(0, 1/(2 inputs)), C's N(0, 1/units).
  np.testing.assert_allclose(cell.B_re.numpy().std(), 1 / math.sqrt(2 * INPUTS),
                             rtol=0.05)
  np.testing.assert_allclose(cell.C_im.numpy().std(), 1 / math.sqrt(units),
                             rtol=0.05)


def test_the_initialisation_follows_keras_seed():
  first = [v.numpy() for v in _model(8, seed=3)[1].weights]
  again = [v.numpy() for v in _model(8, seed=3)[1].weights]
  other = [v.numpy() for v in _model(8, seed=4)[1].weights]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize('arguments,parameter', [
    (dict(r_min=0.9, r_max=0.5), 'LRUCell.r_min'),
    (dict(r_max=1.5), 'LRUCell.r_max'),
    (dict(r_min=-0.1), 'LRUCell.r_min'),
    (dict(max_phase=0.0), 'LRUCell.max_phase'),
    (dict(units=0), 'LRUCell.units'),
    (dict(output_units=2.5), 'LRUCell.output_units'),
])
def test_bad_arguments_are_refused_by_name(arguments, parameter):
  with pytest.raises(ConfigurationError, match=parameter):
    LRUCell(**arguments)


def _rebuilt_from_config(model):
  """A model of 3 input features rebuilt from ``model``'s config with its
  weights; checked to compute the same outputs."""
  rebuilt = RecurrentModel.from_config(model.get_config())
  rebuilt.build_for(tf.zeros([1, 1, 3]))
  rebuilt.set_weights(model.get_weights())
  inputs = tf.random.normal([2, 5, 3])
  state = model.initial_state(2)
  np.testing.assert_allclose(rebuilt.unroll(inputs, state)[0].numpy(),
                             model.unroll(inputs, state)[0].numpy(), rtol=1e-6)
  return rebuilt


def _gin_built_cell(*bindings):
  """The first cell of the model the trainer builds from the tiny config and
  ``bindings``."""
  tfcredit.config.parse(['testing/tiny.gin'], list(bindings))
  return configured_components().model.core[0].cell


def test_a_factory_stack_a_config_round_trip_and_gin(clean_gin):
  keras.utils.set_random_seed(0)
  model = RecurrentModel(cell=LRUCell, units=6, num_layers=2, input_dim=3,
                         output_dim=2)
  model.build_for(tf.zeros([1, 1, 3]))
  assert model.state_sizes == ((6, 6), (6, 6))
  assert [type(layer.cell) for layer in model.core] == [LRUCell] * 2
  # The second layer reads the first's 6 outputs: D element-wise there.
  assert model.core[0].cell.D.shape == (3, 6)
  assert model.core[1].cell.D.shape == (6,)
  rebuilt = _rebuilt_from_config(model)
  assert rebuilt.core[0].cell.get_config()['max_phase'] == pytest.approx(
      2 * math.pi)
  # gin: the class as a factory (RecurrentModel.units reaches it), its own
  # bindings applied.
  built = _gin_built_cell('RecurrentModel.cell = @LRUCell',
                          'RecurrentModel.units = 4', 'LRUCell.r_min = 0.5',
                          'LRUCell.max_phase = 0.3')
  assert isinstance(built, LRUCell) and built.units == 4
  assert built.r_min == 0.5 and built.max_phase == 0.3


def test_the_block_is_norm_lru_gelu_glu_and_the_residual():
  units, width = 4, 6
  keras.utils.set_random_seed(0)
  cell = LRUBlockCell(units=units, width=width)
  model = RecurrentModel(cell=cell, input_dim=width, output_dim=width,
                         identity_head=True)
  model.build_for(tf.zeros([1, 1, width]))
  rng = np.random.default_rng(2)
  for name in ('norm_scale', 'norm_bias', 'glu_bias', 'gate_bias'):
    getattr(cell, name).assign(rng.standard_normal([width]))
  assert cell.D.shape == (width,) and cell.output_size == width
  inputs = 3 * rng.standard_normal([ROWS, STEPS, width]) + 1
  h0 = rng.standard_normal([ROWS, units]) + 1j * rng.standard_normal(
      [ROWS, units])
  _check_unroll(model, inputs, h0, _numpy_block(cell, inputs, h0), atol=1e-4)


def test_a_block_stack_round_trips_and_a_wrong_width_is_named(clean_gin):
  keras.utils.set_random_seed(0)
  model = RecurrentModel(cell=LRUBlockCell, units=6, num_layers=2, input_dim=3,
                         embedding_dim=6, output_dim=2)
  model.build_for(tf.zeros([1, 1, 3]))
  assert model.state_sizes == ((6, 6), (6, 6))
  rebuilt = _rebuilt_from_config(model)
  assert rebuilt.core[1].cell.get_config()['width'] == 6
  # The residual needs the input as wide as the block: the fix is named.
  with pytest.raises(ConfigurationError,
                     match=r'LRUBlockCell.width = 6 .* input width, 3 .*'
                     r'embedding_dim = 6'):
    RecurrentModel(cell=LRUBlockCell, units=6, input_dim=3,
                   output_dim=2).build_for(tf.zeros([1, 1, 3]))
  with pytest.raises(ConfigurationError, match='LRUBlockCell.width'):
    LRUBlockCell(units=4, width=0)
  # gin: the width reaches the factory the model calls.
  built = _gin_built_cell('RecurrentModel.cell = @LRUBlockCell',
                          'RecurrentModel.units = 4', 'LRUBlockCell.width = 8',
                          'RecurrentModel.embedding_dim = 8')
  assert isinstance(built, LRUBlockCell) and built.width == 8

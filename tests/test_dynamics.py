"""tfcredit.dynamics against dynamics whose memory and stability are known exactly:
a shift register remembers exactly its last ``n`` inputs, and a linear recurrence
``s_t = a s_{t−1} + W x_t`` moves a perturbation by exactly ``a`` per step."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit import dynamics
from tfcredit.models import RecurrentModel
from tfcredit.testing import TINY_CONFIG


def _linear_model(units, recurrent, kernel):
  """A linear simple RNN with the given recurrent and input kernels."""
  cell = keras.layers.SimpleRNNCell(units, activation=None, use_bias=False)
  model = RecurrentModel(cell=cell, input_dim=kernel.shape[0], output_dim=1)
  model.build_for(tf.zeros([1, 1, kernel.shape[0]]))
  cell.kernel.assign(kernel)
  cell.recurrent_kernel.assign(recurrent)
  return model


def _inputs(rows, steps, features=1, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal([rows, steps, features]).astype(np.float32)


def test_a_shift_register_remembers_exactly_its_length():
  units = 5
  # h_t[0] = x_t, h_t[i + 1] = h_{t−1}[i]: the state is x_t … x_{t−4}.
  shift = np.eye(units, k=1, dtype=np.float32)
  kernel = np.eye(1, units, dtype=np.float32)
  model = _linear_model(units, shift, kernel)
  result = dynamics.probe(model, _inputs(8, 400), max_lag=8, burn_in=10)
  r2 = np.array(result['r2'])
  np.testing.assert_allclose(r2[:units - 1], 1.0, atol=1e-4)  # Lags 1 … 4.
  assert np.all(np.abs(r2[units - 1:]) < 0.05), r2  # Beyond: independent inputs.
  assert result['memory_capacity'] == pytest.approx(units - 1, abs=0.2)
  assert result['state_size'] == units


@pytest.mark.parametrize('scale', [0.5, 1.2])
def test_a_linear_recurrence_scales_a_perturbation_by_its_eigenvalue(scale):
  units = 4
  model = _linear_model(units, scale * np.eye(units, dtype=np.float32),
                        np.ones([2, units], np.float32))
  # A linear map moves any ε alike; ε = 1 stays far above the float32
  # rounding of a state that grows as 1.2ᵗ.
  result = dynamics.probe(model, _inputs(6, 60, features=2), max_lag=4,
                          burn_in=10, epsilon=1.0)
  assert result['lyapunov'] == pytest.approx(np.log(scale), rel=1e-3)
  assert result['growth_steps'] == [1, 10, 50]
  np.testing.assert_allclose(result['log10_growth'],
                             np.log10(scale) * np.array([1, 10, 50]), rtol=1e-3)


def test_a_contracting_and_an_expanding_tanh_network_are_told_apart():
  rng = np.random.default_rng(1)
  units = 32
  orthogonal = np.linalg.qr(rng.standard_normal([units, units]))[0]
  exponents = {}
  for gain in (0.5, 3.0):
    cell = keras.layers.SimpleRNNCell(units)
    model = RecurrentModel(cell=cell, input_dim=1, output_dim=1)
    model.build_for(tf.zeros([1, 1, 1]))
    cell.recurrent_kernel.assign((gain * orthogonal).astype(np.float32))
    cell.kernel.assign(0.5 * np.ones([1, units], np.float32))
    result = dynamics.probe(model, _inputs(8, 300), max_lag=5, burn_in=50)
    exponents[gain] = (result['lyapunov'], result['r2'][0])
  # Gain 0.5 contracts (each step at most halves a perturbation) and holds its
  # last input; gain 3 drives tanh into chaos, which forgets it.
  assert exponents[0.5][0] <= np.log(0.5) + 1e-3 and exponents[0.5][1] > 0.9
  assert exponents[3.0][0] > 0.05 and exponents[3.0][1] < 0.5, exponents


def test_token_inputs_are_decoded_one_hot():
  ids = np.array([[0, 2, 2, 5, 2, 0]])
  targets = dynamics._targets(tf.constant(ids), max_classes=2)
  # The two most frequent ids, 2 (three times) and 0 (twice), in id order.
  np.testing.assert_array_equal(targets[0], [[1, 0], [0, 1], [0, 1], [0, 0],
                                             [0, 1], [1, 0]])


def test_the_tool_writes_its_table_and_refuses_a_short_burn_in(tmp_path,
                                                               run_command):
  done = run_command('dynamics', f'--gin_file={TINY_CONFIG}',
                     f'--output_dir={tmp_path}', '--max_lag=3', '--burn_in=4',
                     '--sequences=8', '--run=fresh',
                     '--run=again: fresh')
  assert done.returncode == 0, done.stderr
  rows = json.load(open(tmp_path / 'dynamics.json'))
  assert [row['label'] for row in rows] == ['fresh weights (seed 0)', 'again']
  # Fresh weights are seeded: the same model twice.
  assert rows[0]['r2'] == rows[1]['r2']
  # The adding task's own 20 steps (an episodic task ignores --length); an
  # LSTM of 16 units holds 32 numbers.
  assert len(rows[0]['r2']) == 3 and len(rows[0]['log10_growth_curve']) == 16
  assert rows[0]['state_size'] == 32
  assert 'fresh weights (seed 0)' in open(tmp_path / 'dynamics.md').read()
  for flags, named in ((['--max_lag=20', '--burn_in=5'], '--max_lag=20'),
                       (['--max_lag=3', '--burn_in=4', '--sequences=4'], '--sequences')):
    done = run_command('dynamics', f'--gin_file={TINY_CONFIG}',
                       f'--output_dir={tmp_path}', *flags)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and 'Traceback' not in done.stderr

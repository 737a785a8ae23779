"""Tests of ARTBP's truncation process and compensation (Tallec & Ollivier 2017):
the sampler against Eq. 14 and the sequential product of Eq. 10, the
compensation scales against Eq. 11, and the expected weight of every backward
path (Prop. 1). References are written here from the paper, as in test_artbp.py,
whose helpers this module shares; the training and unbiasedness tests are there.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.methods import artbp as artbp_lib

import test_artbp as base

markov = base.markov  # The module-scoped token-stream fixture.


def _probability(schedule, alpha, mean_length, elapsed):
  if schedule == 'constant':
    return 1.0 / mean_length
  return base._eq14(alpha, mean_length, elapsed)


def _length_pmf(schedule, alpha, mean_length, max_length):
  """P(L = l), l = 1..max_length: truncate at δ with c(δ) after surviving δ < l."""
  pmf, survive = [], 1.0
  for elapsed in range(1, max_length + 1):
    c = _probability(schedule, alpha, mean_length, elapsed)
    pmf.append(survive * c)
    survive *= 1.0 - c
  return np.array(pmf)


# --------------------------------------------------------------- sampler


@pytest.mark.parametrize('alpha,mean_length', [(4.0, 16), (6.0, 16), (4.0, 50),
                                               (2.5, 1.5)])
def test_truncation_probability_is_eq14_from_c1(alpha, mean_length):
  sampler = artbp_lib.TruncationSampler(mean_length, alpha, 'power')
  elapsed = np.arange(1, 30)
  expected = base._eq14(alpha, mean_length, elapsed)
  np.testing.assert_allclose(sampler.truncation_probability(elapsed), expected,
                             rtol=1e-12)
  assert float(sampler.truncation_probability(1)) == pytest.approx(
      (alpha - 1) / ((alpha - 2) * mean_length + 1), rel=1e-12)
  np.testing.assert_allclose(sampler.compensation(elapsed), 1 / (1 - expected),
                             rtol=1e-12)


def test_constant_schedule_is_one_over_mean_length():
  sampler = artbp_lib.TruncationSampler(8, schedule='constant')
  np.testing.assert_allclose(sampler.truncation_probability([1, 5, 100]), 1 / 8)
  np.testing.assert_allclose(sampler.compensation([1, 5, 100]), 8 / 7)


@pytest.mark.parametrize('schedule,alpha,mean_length', [
    ('power', 4.0, 16), ('power', 6.0, 16), ('power', 4.0, 5.5),
    ('constant', 4.0, 16)])
def test_sampled_lengths_follow_the_truncation_process(schedule, alpha,
                                                       mean_length):
  sampler = artbp_lib.TruncationSampler(mean_length, alpha, schedule)
  draws = 200_000
  uniforms = np.random.default_rng(5).random(draws)
  lengths = sampler.sample_lengths(tf.constant(uniforms)).numpy()
  expected = _length_pmf(schedule, alpha, mean_length, 60)
  observed = np.bincount(lengths, minlength=61)[1:61] / draws
  tolerance = 5 * np.sqrt(expected * (1 - expected) / draws) + 1e-5
  assert np.all(np.abs(observed - expected) < tolerance)
  # Eq. 14 (and c = 1/L0) give mean length exactly L0.
  assert lengths.mean() == pytest.approx(mean_length, rel=0.03)
  # The check can fail: lengths one step longer have another distribution.
  shifted = np.bincount(lengths + 1, minlength=61)[1:61] / draws
  assert not np.all(np.abs(shifted - expected) < tolerance)


@pytest.mark.parametrize('alpha', [4.0, 6.0])
def test_method_draws_have_mean_length_L0(markov, alpha):
  task, model = markov
  method = base._method(task, model, mean_length=16, alpha=alpha,
                   windows_per_call=100_000, seed=11)
  lengths = method.planned_window_lengths()
  assert lengths.shape == (100_000,)
  assert lengths.min() >= 1
  assert lengths.mean() == pytest.approx(16, rel=0.03)


def test_very_long_draws_invert_the_survival_function_exactly():
  sampler = artbp_lib.TruncationSampler(16, 4.0, 'power')
  # 1 - u down to 1e-15: lengths far beyond the lookup table (2^14).
  uniforms = 1.0 - np.array([1e-3, 1e-6, 1e-9, 1e-12, 1e-15])
  lengths = sampler.sample_lengths(tf.constant(uniforms)).numpy()
  assert lengths[-1] > 2**14
  log_target = np.log1p(-uniforms)
  # The least l with P(L > l) < 1 - u, from the closed form of Eq. 14's product.
  k = 2.0 * 16
  log_survival = lambda l: (math.lgamma(k + l - 2) - math.lgamma(k - 2)
                            - math.lgamma(k + l + 1) + math.lgamma(k + 1))
  for length, target in zip(lengths, log_target):
    assert log_survival(int(length)) < target <= log_survival(int(length) - 1)


@pytest.mark.parametrize('kwargs,parameter,value', [
    (dict(alpha=2.0), 'alpha', '2.0'),
    (dict(alpha=1.5), 'alpha', '1.5'),
    (dict(mean_length=0), 'mean_length', '0'),
    (dict(mean_length=-3), 'mean_length', '-3'),
    (dict(mean_length=1), 'mean_length', '1'),      # c_1 = 1
    (dict(mean_length=0.5), 'mean_length', '0.5'),  # c_1 > 1
    (dict(mean_length=1, schedule='constant'), 'mean_length', '1'),
    (dict(mean_length=float('nan')), 'mean_length', 'nan'),
    (dict(schedule='linear'), 'schedule', "'linear'"),
    (dict(windows_per_call=0), 'windows_per_call', '0'),
    (dict(estimate_draws='rows'), 'estimate_draws', "'rows'"),
    (dict(seed=1.5), 'seed', '1.5'),
    (dict(compensate='no'), 'compensate', "'no'"),
])
def test_invalid_settings_are_configuration_errors_naming_them(
    markov, kwargs, parameter, value):
  task, model = markov
  kwargs = dict(dict(mean_length=16), **kwargs)
  with pytest.raises(ConfigurationError) as raised:
    base._method(task, model, **kwargs)
  message = str(raised.value)
  assert f'ARTBP.{parameter}' in message
  assert value in message
  if parameter in ('alpha', 'mean_length') and kwargs.get('mean_length', 2) != 0:
    assert 'use' in message or 'must' in message


def test_c1_at_least_one_is_named_in_the_message(markov):
  task, model = markov
  with pytest.raises(ConfigurationError, match=r'c_1 = 1 >= 1.*mean_length > 1'):
    base._method(task, model, mean_length=1, alpha=6.0)


# ------------------------------------------------------ compensation scales


def test_compensation_scales_follow_eq11():
  alpha, mean_length = 4.0, 5
  sampler = artbp_lib.TruncationSampler(mean_length, alpha, 'power')
  factor = lambda elapsed: 1 / (1 - base._eq14(alpha, mean_length, elapsed))
  # Windows of 3, 1 and 4 steps over 7 steps: the last one is cut at T = 7.
  scales = artbp_lib.compensation_scales(
      sampler, tf.constant([[3, 1, 4], [7, 2, 2]]), 7).numpy()
  expected = [[factor(1), factor(2), 0, 0, factor(1), factor(2), 0],
              [factor(1), factor(2), factor(3), factor(4), factor(5), factor(6), 0]]
  np.testing.assert_allclose(scales, expected, rtol=1e-6)


def test_without_compensation_the_scales_only_truncate():
  """``compensate=False``: the same truncation points, every other factor 1."""
  sampler = artbp_lib.TruncationSampler(5, 4.0, 'power')
  lengths = tf.constant([[3, 1, 4], [7, 2, 2]])
  plain = artbp_lib.compensation_scales(sampler, lengths, 7, compensate=False)
  np.testing.assert_array_equal(plain.numpy(), [[1, 1, 0, 0, 1, 1, 0],
                                                [1, 1, 1, 1, 1, 1, 0]])
  compensated = artbp_lib.compensation_scales(sampler, lengths, 7).numpy()
  np.testing.assert_array_equal(compensated == 0, plain.numpy() == 0)
  assert compensated.max() > 1.01  # The factors the ablation removes.


def test_per_row_scales_act_on_their_own_rows(markov):
  """The model's ``[B, T]`` ``state_grad_scale``: row b as if alone with its row."""
  task, model = markov
  inputs, targets = base._stream_segment(task, 0, 9, batch_size=3)
  scales = tf.constant(np.random.default_rng(2).choice(
      [0.0, 0.5, 1.0, 3.0], size=(3, 9)), tf.float32)

  def gradient(rows, scale):
    with tf.GradientTape() as tape:
      outputs, _ = model.unroll(tf.gather(inputs, rows), model.initial_state(
          len(rows)), training=True, state_grad_scale=scale)
      loss = base._loss_sum(task, outputs, tf.gather(targets, rows))
    return base._flat(tape.gradient(loss, model.trainable_variables))

  together = gradient([0, 1, 2], scales)
  apart = sum(gradient([row], scales[row]) for row in range(3))
  np.testing.assert_allclose(together, apart, rtol=1e-4, atol=1e-6)
  assert np.abs(gradient([0, 1, 2], scales[0]) - together).max() > 1e-4


def _path_weight_errors(sampler, rows=100_000, steps=40, seed=3):
  """Max over backward paths t' -> t of |E[product of factors] - 1| / its s.e."""
  uniforms = np.random.default_rng(seed).random((rows, steps))
  lengths = np.minimum(sampler.sample_lengths(tf.constant(uniforms)).numpy(), steps)
  scales = artbp_lib.compensation_scales(sampler, tf.constant(lengths),
                                         steps).numpy().astype(np.float64)
  worst = 0.0
  for start in range(steps - 1):
    products = np.cumprod(scales[:, start:steps - 1], axis=1)
    mean = products.mean(axis=0)
    error = products.std(axis=0) / np.sqrt(rows) + 1e-12
    worst = max(worst, float(np.max(np.abs(mean - 1) / error)))
  return worst


@pytest.mark.parametrize('schedule', ['power', 'constant'])
def test_every_backward_path_has_expected_weight_one(schedule):
  """Prop. 1's core: E[Π 1[X_u = 0] / (1 − c_u)] = 1 along any path."""
  assert _path_weight_errors(artbp_lib.TruncationSampler(4, 4.0, schedule)) < 5
  if schedule == 'power':  # The constant schedule has no δt to shift.
    assert _path_weight_errors(base._OffByOne(4, 4.0, schedule)) > 10

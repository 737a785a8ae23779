"""Tests of the influence-balancing task and cell (Tallec & Ollivier 2017, Sec. 6.1).

References are numpy transcriptions of the paper: Eq. 15 with the matrix ``A``
written out, Eq. 16, and Eq. 11-12's compensated backward recursion for ARTBP.
The reproduction test runs the paper's online setting at a reduced horizon (5000
steps for truncated BPTT, 20000 for ARTBP, whose estimate is noisy; the full runs
are the configs in ``gin_configs/tallec17_artbp/``).
"""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.config import GIN_CONFIGS_DIR
from tfcredit.errors import ConfigurationError
from tfcredit.methods import ARTBP, TruncatedBPTT
from tfcredit.models.linear_cell import InfluenceBalancingCell
from tfcredit.tasks.influence_balancing import InfluenceBalancingTask
from tfcredit.testing import built_optimizer, cleared_gin_config, tiny_model

P, N = 10, 13
ETA0 = 3e-4  # The paper's initial learning rate, on the summed window loss.
CONFIGS = os.path.join(GIN_CONFIGS_DIR, 'tallec17_artbp')


def _matrix(p=P, n=N):
  agents = p + n
  return 0.5 * np.eye(agents) + 0.5 * np.eye(agents, k=1)


def _signal(p=P, n=N):
  return np.array([1.0] * p + [-1.0] * n)


def _theta(model):
  (theta,) = model.trainable_variables
  return theta


@pytest.fixture(scope='module')
def system():
  task = InfluenceBalancingTask(train_length=5000)
  return task, tiny_model(task)


def test_cell_is_eq15_and_theta_is_the_only_weight(system):
  task, model = system
  theta = _theta(model)
  assert theta.shape == () and float(theta) == 0.0
  theta.assign(0.3)
  rng = np.random.default_rng(0)
  start = rng.normal(size=(2, P + N))
  inputs = rng.normal(size=(2, 7)).astype(np.float32)  # Ignored: autonomous.
  outputs, (final,) = model.unroll(tf.constant(inputs),
                                   ((tf.constant(start, tf.float32),),))
  state, expected = start, []
  for _ in range(7):
    state = state @ _matrix().T + 0.3 * _signal()
    expected.append(state)
  np.testing.assert_allclose(outputs, np.stack(expected, axis=1), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(final[0], expected[-1], rtol=1e-5, atol=1e-5)
  theta.assign(0.0)


def test_loss_is_eq16_on_the_leftmost_agent(system):
  task, _ = system
  outputs = np.random.default_rng(1).normal(size=(2, 3, P + N)).astype(np.float32)
  losses = task.losses(tf.constant(outputs), tf.ones([2, 3]))
  np.testing.assert_allclose(losses, 0.5 * (outputs[..., 0] - 1) ** 2, rtol=1e-6)


def test_optimal_theta_puts_the_fixed_point_of_s1_on_the_target(system):
  task, model = system
  assert task.optimal_theta == pytest.approx(-1 / 6)
  fixed_point = np.linalg.solve(np.eye(P + N) - _matrix(),
                                task.optimal_theta * _signal())
  assert fixed_point[0] == pytest.approx(1.0)
  _theta(model).assign(task.optimal_theta)
  outputs, _ = model.unroll(tf.ones([1, 300]), model.initial_state(1))
  assert float(outputs[0, -1, 0]) == pytest.approx(1.0, abs=1e-4)
  _theta(model).assign(0.0)


def test_full_bptt_gradient_matches_the_forward_sensitivity(system):
  task, model = system
  _theta(model).assign(0.05)
  steps = 60
  with tf.GradientTape() as tape:
    outputs, _ = model.unroll(tf.ones([1, steps]), model.initial_state(1))
    loss = tf.reduce_sum(task.losses(outputs, tf.ones([1, steps])))
  (gradient,) = tape.gradient(loss, model.trainable_variables)
  state, sensitivity, expected = np.zeros(P + N), np.zeros(P + N), 0.0
  for _ in range(steps):  # ds_t/dθ = A ds_{t-1}/dθ + b.
    state = _matrix() @ state + 0.05 * _signal()
    sensitivity = _matrix() @ sensitivity + _signal()
    expected += (state[0] - 1) * sensitivity[0]
  assert float(gradient) == pytest.approx(expected, rel=1e-4)
  _theta(model).assign(0.0)


def _eq14_compensation(alpha, mean_length):
  return lambda elapsed: 1 / (1 - (alpha - 1) / ((alpha - 2) * mean_length + elapsed))


def _window_gradient(state, theta, length, compensation):
  """θ-gradient of one window's summed loss by Eq. 11-12, run backwards.

  ``compensation(δt)`` is Eq. 11's factor (1 everywhere: truncated BPTT).
  Returns the gradient and the state at the window's end.
  """
  matrix, signal = _matrix(), _signal()
  states = []
  for _ in range(length):
    state = matrix @ state + theta * signal
    states.append(state)
  delta, gradient = np.zeros(P + N), 0.0
  for step in reversed(range(length)):  # δt = step + 1; the last step truncates.
    local = np.zeros(P + N)
    local[0] = states[step][0] - 1.0
    carried = 0.0 if step == length - 1 else compensation(step + 1)
    delta = local + carried * (matrix.T @ delta)
    gradient += delta @ signal  # ∂F/∂θ = (1, .., 1, −1, .., −1).
  return gradient, state


def _numpy_online(lengths, steps, compensation, nominal_length=1):
  """The paper's online run in numpy; returns θ after ``steps`` and the final loss."""
  state, theta, position = np.zeros(P + N), 0.0, 0
  for length in lengths:
    length = min(int(length), steps - position)
    gradient, state = _window_gradient(state, theta, length, compensation)
    theta -= ETA0 / math.sqrt(1 + position) * gradient
    position += length
    if position == steps:
      return theta
  raise AssertionError('the windows do not cover the horizon')


def test_artbp_updates_are_eq11_written_in_numpy(system):
  task, model = system
  alpha, mean_length, eta = 6.0, 16, 1e-3
  method = ARTBP(model=model, task=task, optimizer=built_optimizer(
      model, learning_rate=eta * mean_length), mean_length=mean_length,
                 alpha=alpha, windows_per_call=3, seed=1)
  _theta(model).assign(0.0)
  state, theta, reference_state = model.initial_state(1), 0.0, np.zeros(P + N)
  for _ in range(4):
    lengths = method.planned_window_lengths()
    segment = (tf.ones([1, lengths.sum()]), tf.ones([1, lengths.sum()]))
    state, _ = method.train_segment(segment, state)
    for length in lengths:
      gradient, reference_state = _window_gradient(
          reference_state, theta, int(length), _eq14_compensation(alpha, mean_length))
      theta -= eta * gradient  # The paper's step on the summed window loss.
    assert float(_theta(model)) == pytest.approx(theta, rel=1e-4, abs=1e-7)
    np.testing.assert_allclose(state[0][0][0], reference_state, rtol=1e-4, atol=1e-5)
  _theta(model).assign(0.0)


class _WindowRates(keras.optimizers.schedules.LearningRateSchedule):
  """The rate of the optimizer's ``i``-th update: ``rates[i]``, set before each
  call for the windows it holds (so one call trains many windows, each at its
  own rate)."""

  def __init__(self, size):
    self.rates = tf.Variable(tf.zeros([size]), trainable=False)

  def __call__(self, step):
    return tf.gather(self.rates, step)


def _planned(method):
  """The next call's window lengths: ARTBP's draws, or truncated BPTT's fixed
  windows."""
  if isinstance(method, ARTBP):
    return method.planned_window_lengths()
  return np.full(method.windows_per_call, method.window)


def _online(method, model, steps, nominal_length, checkpoints=()):
  """The paper's online run: one SGD step per window, η_t = η0 / √(1 + t) at
  the window's first step ``t`` (η0 times the nominal length: the window's loss
  is a mean). Calls hold many windows (``_WindowRates`` gives each its rate,
  ``method.optimizer`` counting from 0) and end at the first window end from
  each checkpoint and from 0.8 × ``steps`` on, and at ``steps`` (the last
  window cut there).

  Returns θ at each of ``checkpoints`` (time steps) and at the end, and the mean
  loss over the windows from 0.8 × ``steps`` on.
  """
  schedule = method.optimizer._learning_rate  # pylint: disable=protected-access
  method.optimizer.iterations.assign(0)
  state, position, thetas, final, counted = model.initial_state(1), 0, [], 0.0, 0
  updates, pending = 0, list(checkpoints)
  while position < steps:
    ends = position + np.cumsum(_planned(method))
    bounds = [b for b in pending + [0.8 * steps] if b > position] + [steps]
    reached = ends[ends >= min(bounds)]
    end = min(int(reached[0]) if reached.size else int(ends[-1]), steps)
    starts = np.concatenate([[position], ends[ends < end]])
    schedule.rates[updates:updates + len(starts)].assign(
        ETA0 * nominal_length / np.sqrt(1 + starts))
    segment = (tf.ones([1, end - position]), tf.ones([1, end - position]))
    state, metrics = method.train_segment(segment, state)
    assert float(metrics['updates']) == len(starts)
    updates += len(starts)
    if position >= 0.8 * steps:
      final += float(metrics['loss_sum'])
      counted += end - position
    position = end
    while pending and position >= pending[0]:
      thetas.append(float(_theta(model)))
      pending.pop(0)
  return thetas + [float(_theta(model))], final / counted


@pytest.mark.slow  # Trains five seeds until they converge or diverge.
def test_truncated_bptt_10_diverges_and_artbp_converges_on_five_seeds(system):
  """Fig. 3 at a reduced horizon: the TF methods, end to end."""
  task, model = system
  theta_star = task.optimal_theta
  error = lambda theta: abs(theta - theta_star) / abs(theta_star)
  optimizer = built_optimizer(model, learning_rate=_WindowRates(10_000))

  _theta(model).assign(0.0)
  truncated = TruncatedBPTT(model=model, task=task, optimizer=optimizer, window=10,
                            windows_per_call=500)
  (at_2500, theta), final = _online(truncated, model, 5000, 10, [2500])
  # θ runs away from θ* = −1/6 in the wrong direction; the loss grows from ½.
  assert theta_star < 0 < at_2500 < theta and error(theta) > 3.0 and final > 2.0

  artbp = ARTBP(model=model, task=task, optimizer=optimizer, mean_length=16,
                alpha=6.0, windows_per_call=1000)
  for seed in range(5):
    _theta(model).assign(0.0)
    artbp.truncation_seed.assign(seed)
    artbp.training_blocks.assign(0)
    (at_5000, theta), final = _online(artbp, model, 10_000, 16, [5000])
    # Closer to θ* at every checkpoint (from error 1 at θ = 0); the slowest seeds
    # need ~10^5 steps to settle (next test).
    assert error(theta) < min(error(at_5000), 1.0), seed
  assert artbp.trace_counts['train_segment'] == 1
  _theta(model).assign(0.0)


@pytest.mark.slow  # Trains five seeds until they converge.
def test_artbp_draws_converge_on_five_seeds_at_the_paper_horizon(system):
  """Fig. 3 over 10^5 steps, in numpy (Eq. 11 transcribed) with ARTBP's own draws.

  The previous tests show the TF methods take exactly these steps for the same
  windows; numpy makes the long horizon cheap.
  """
  task, model = system
  steps, theta_star = 100_000, task.optimal_theta
  diverged = _numpy_online(np.full(steps // 10, 10), 20_000, lambda _: 1.0)
  assert diverged > 1.0  # Truncated BPTT, L = 10: far on the wrong side.
  method = ARTBP(model=model, task=task, optimizer=built_optimizer(model),
                 mean_length=16, alpha=6.0, windows_per_call=steps // 8)
  for seed in range(5):
    method.truncation_seed.assign(seed)
    lengths = method.planned_window_lengths()
    theta = _numpy_online(lengths, steps, _eq14_compensation(6.0, 16))
    assert abs(theta - theta_star) < 0.05 * abs(theta_star), seed


def test_stream_holds_the_target_and_bad_settings_are_rejected():
  task = InfluenceBalancingTask(train_length=50, eval_length=20, target=1.0)
  stream = task.stream('train', 2)
  assert stream.shape == (2, 51) and stream.dtype == np.float32
  assert np.all(stream == 1.0)
  assert task.stream('valid', 3).shape == (3, 21)
  assert task.units_per_epoch(2) == 100
  with pytest.raises(ConfigurationError, match='positive'):
    InfluenceBalancingTask(positive=-1)
  with pytest.raises(ConfigurationError, match='train_length'):
    InfluenceBalancingTask(train_length=0)
  with pytest.raises(ConfigurationError, match='units'):
    tfcredit.RecurrentModel(input_dim=1, output_dim=23, units=20,
                            cell=InfluenceBalancingCell(), identity_head=True)


@pytest.mark.slow  # A whole tfcredit.train run.
def test_artbp_config_trains_end_to_end(tmp_path):
  with cleared_gin_config():
    tfcredit.config.parse([os.path.join(CONFIGS, 'influence_balancing_artbp.gin')],
                          ['InfluenceBalancingTask.train_length = 3000',
                           'InverseSqrtDecay.steps_per_epoch = 3000'])
    result = tfcredit.train(str(tmp_path / 'run'), export_dir=str(tmp_path / 'exports'))
  # From θ = 0 (loss ½ at every step) towards θ* = −1/6 (0.015, the transient).
  assert result['valid_loss'] < 0.1
  module, info, _ = tfcredit.export.load(result['saved_model'])
  assert info['task_name'] == 'influence_balancing'
  outputs = module.serve(tf.ones([1, 5]))['outputs']
  assert outputs.shape == (1, 5, P + N)

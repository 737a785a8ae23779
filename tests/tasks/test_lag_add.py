"""The Add task (tfcredit.tasks.lag_add): its plateaus, its lag structure, its streams."""

import functools
import itertools
import math

import keras
import numpy as np
import pytest

import tfcredit
from tfcredit.errors import ConfigurationError
from tfcredit.tasks import base
from tfcredit.tasks.lag_add import LagAddTask

PAPER = {'nothing': 0.662, 'first_lag': 0.519, 'both_lags': 0.454}


def _entropy(p):
  return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0.0)


def _plateaus_by_enumeration():
  """Mean entropy of the label given what a predictor knows, over the four
  equally likely (x_{t−t1}, x_{t−t2}), from the task's definition alone."""
  pairs = list(itertools.product((0, 1), repeat=2))
  p = {pair: 0.5 + 0.5 * pair[0] - 0.25 * pair[1] for pair in pairs}
  marginal = np.mean(list(p.values()))
  given_first = {a: np.mean([p[(a, b)] for b in (0, 1)]) for a in (0, 1)}
  return {'nothing': _entropy(marginal),
          'first_lag': np.mean([_entropy(given_first[a]) for a in (0, 1)]),
          'both_lags': np.mean([_entropy(p[pair]) for pair in pairs])}


def test_plateaus_match_enumeration_and_the_paper():
  task = LagAddTask()
  enumerated = _plateaus_by_enumeration()
  assert enumerated['nothing'] == pytest.approx(_entropy(0.625))
  for key, value in enumerated.items():
    assert task.plateaus[key] == pytest.approx(value, abs=1e-3)
    assert task.plateaus[key] == pytest.approx(PAPER[key], abs=5e-4)
  assert task.PLATEAU_NOTHING > task.PLATEAU_FIRST_LAG > task.PLATEAU_BOTH_LAGS


def _decoded(task, split, columns):
  """Bits ``x [B, N]`` and targets ``[B, N]`` of a whole split."""
  data = task.stream(split, columns)
  inputs, targets = task.stream_window(data, 0, data.shape[1] - 1)
  assert inputs.shape == targets.shape + (2,)
  assert np.all(inputs.sum(-1) == 1.0)  # One-hot.
  return inputs[..., 1].astype(int), targets


def _lagged(values, lag, t2):
  """``values[:, t − lag]`` for the steps ``t ≥ t2`` of every column."""
  return values[:, t2 - lag:values.shape[1] - lag]


T1, T2 = 3, 7
LONG = dict(t1=T1, t2=T2, train_steps=4 * 60_000, eval_steps=4 * 60_000, seed=3)


@pytest.fixture(scope='module')
def long_stream():
  task = LagAddTask(**LONG)
  x, y = _decoded(task, 'train', 4)
  return (_lagged(x, T1, T2), _lagged(x, T2, T2), _lagged(y, 0, T2),
          x, y)


def test_ideal_predictors_reach_the_plateaus(long_stream):
  first, second, y, _, _ = long_stream
  predictions = {
      'nothing': np.full(y.shape, 0.625),
      'first_lag': 0.375 + 0.5 * first,  # E[p | x_{t−t1}]
      'both_lags': 0.5 + 0.5 * first - 0.25 * second}
  count = y.size
  for key, p in predictions.items():
    with np.errstate(divide='ignore', invalid='ignore'):
      losses = -np.where(y == 1, np.log(p), np.log1p(-p))
    assert np.all(np.isfinite(losses)), key  # p = 1 only where y = 1.
    # A step's loss shares an input with the steps t2 − t1 apart only: the losses
    # are T2-dependent, so Var(mean) <= (2 T2 + 1) σ² / n; four standard errors.
    bound = 4.0 * losses.std() * math.sqrt((2 * T2 + 1) / count)
    assert abs(losses.mean() - LagAddTask().plateaus[key]) < bound, (key, bound)
    assert bound < 0.02


def test_labels_depend_on_the_two_lags_only(long_stream):
  first, second, y, x, labels = long_stream
  for a, b in itertools.product((0, 1), repeat=2):
    chosen = y[(first == a) & (second == b)]
    expected = 0.5 + 0.5 * a - 0.25 * b
    assert abs(chosen.mean() - expected) < 4 * 0.5 / math.sqrt(chosen.size), (a, b)
  y_all = _lagged(labels, 0, T2 + 3)
  for lag in range(0, T2 + 4):
    if lag in (T1, T2):
      continue
    past = _lagged(x, lag, T2 + 3)
    gap = y_all[past == 1].mean() - y_all[past == 0].mean()
    assert abs(gap) < 4 * 0.5 * math.sqrt(4.0 / y_all.size), lag
  gap_t1 = y[first == 1].mean() - y[first == 0].mean()
  gap_t2 = y[second == 1].mean() - y[second == 0].mean()
  assert gap_t1 == pytest.approx(0.5, abs=0.02)
  assert gap_t2 == pytest.approx(-0.25, abs=0.02)


def test_deterministic_targets_are_p_and_inputs_hold_no_label():
  settings = dict(t1=2, t2=5, train_steps=2 * 500, seed=1)
  soft, hard = LagAddTask(deterministic=True, **settings), LagAddTask(**settings)
  x_soft, p = _decoded(soft, 'train', 2)
  x_hard, y = _decoded(hard, 'train', 2)
  # The same bits whatever the labels are: the inputs carry no label.
  np.testing.assert_array_equal(x_soft, x_hard)
  expected = 0.5 + 0.5 * _lagged(x_soft, 2, 5) - 0.25 * _lagged(x_soft, 5, 5)
  np.testing.assert_array_equal(_lagged(p, 0, 5), expected)
  assert set(np.unique(y)) <= {0.0, 1.0}


def test_streams_are_reproducible_and_splits_independent():
  make = lambda seed: LagAddTask(train_steps=3 * 2000, eval_steps=3 * 2000,
                                 seed=seed)
  np.testing.assert_array_equal(make(0).stream('train', 3), make(0).stream('train', 3))
  assert not np.array_equal(make(0).stream('train', 3), make(1).stream('train', 3))
  task = make(0)
  bits = {split: _decoded(task, split, 3)[0] for split in ('train', 'valid', 'test')}
  for one, other in itertools.combinations(bits, 2):
    agreement = np.mean(bits[one] == bits[other])
    assert abs(agreement - 0.5) < 4 * 0.5 / math.sqrt(bits[one].size), (one, other)
  assert task.stream('train', 3).shape == (3, 2001)
  assert task.units_per_epoch(3) == 6000
  with pytest.raises(ConfigurationError, match='split'):
    task.stream('dev', 3)


@pytest.mark.parametrize('arguments, named', [
    (dict(t1=4, t2=4), 't1 < t2'), (dict(t1=5, t2=2), 't1 < t2'),
    (dict(t1=0, t2=3), 't1'), (dict(train_steps=0), 'train_steps'),
    (dict(deterministic='yes'), 'deterministic')])
def test_bad_arguments_are_named(arguments, named):
  with pytest.raises(ConfigurationError, match=named):
    LagAddTask(**arguments)


def test_evaluate_scores_a_known_predictor_at_its_plateau():
  # The shared evaluation loop reads the stream through stream_window: a model
  # that always says 0.625 scores H(0.625) up to sampling noise.
  task = LagAddTask(eval_steps=2 * 20_000)
  logit = math.log(0.625 / 0.375)

  def predict(inputs, state):
    zeros = np.zeros(inputs.shape[:2], np.float32)
    return np.stack([zeros, zeros + logit], -1), state

  result = base.evaluate(task, predict, lambda rows: None, 'valid', 2,
                         chunk_length=333)
  assert result['count'] == 40_000
  assert result['cross_entropy'] == pytest.approx(task.PLATEAU_NOTHING, abs=0.01)


def test_truncated_bptt_learns_below_the_first_plateau(tmp_path):
  task = LagAddTask(t1=2, t2=4, train_steps=8 * 600, eval_steps=8 * 150)
  model = tfcredit.RecurrentModel(cell='lstm', units=16, **task.model_spec())
  result = tfcredit.train(
      str(tmp_path / 'run'), export_dir=None, task=task, model=model,
      method=functools.partial(tfcredit.TruncatedBPTT, window=8,
                               windows_per_call=25),
      optimizer=keras.optimizers.Adam, learning_rate=1e-2, epochs=1,
      batch_size=8, eval_batch_size=8, log_every_seconds=1e9,
      evaluate_test=False)
  # Measured: 0.584 after this one epoch of 75 updates (about 0.48 after a second).
  assert result['valid_cross_entropy'] < task.PLATEAU_NOTHING - 0.03

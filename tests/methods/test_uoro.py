"""UORO (Tallec & Ollivier 2018) against its paper's claim: unbiasedness.

``s̃ θ̃ᵀ`` is an unbiased estimate of RTRL's influence, so the mean of UORO's
gradient estimates is full BPTT's gradient, with an error that shrinks as 1/√N.
Rows are independent draws: a batch of N copies of one sequence averages N
estimates of that sequence's gradient in one call.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.methods import BPTT, UORO
from tfcredit.methods.uoro import rademacher
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.testing import built_optimizer, tiny_model

STREAM = MarkovLanguageTask(vocabulary_size=5, branching=2, train_length=60,
                            eval_length=10, seed=2)


def _flat(gradients):
  return np.concatenate([np.ravel(tf.convert_to_tensor(g).numpy())
                         for g in gradients])


def _relative_errors(task, segment_of, copies, cell):
  model = tiny_model(task, seed=0, units=4, cell=cell)
  optimizer = built_optimizer(model)
  errors = []
  for rows in copies:
    inputs, targets = segment_of(rows)
    segment = (tf.constant(inputs), tf.constant(targets))
    uoro = UORO(model=model, task=task, optimizer=optimizer, window=3,
                batch_size=rows, seed=5)
    full = BPTT(model=model, task=task, optimizer=optimizer,
                **({'sequence_length': inputs.shape[1]}
                   if task.regime == 'stream' else {}))
    state = model.initial_state(rows)
    estimate = _flat(uoro.estimate_gradients(segment, state)[0])
    exact = _flat(full.estimate_gradients(segment, state)[0])
    errors.append(np.linalg.norm(estimate - exact) / np.linalg.norm(exact))
  return errors


@pytest.mark.slow  # A statistical bound over many draws.
@pytest.mark.parametrize('cell', ['gru', 'lstm'])
def test_the_mean_estimate_is_full_bptt_with_error_shrinking_as_one_over_root_n(
    cell):
  data = STREAM.stream('train', 1)
  small, large = _relative_errors(
      STREAM, lambda rows: (np.repeat(data[:, :8], rows, 0),
                            np.repeat(data[:, 1:9], rows, 0)), (128, 2048), cell)
  assert large < 0.1
  # 16 times the draws: the error falls by about 4 (2 to 8 allows for noise).
  assert 2 < small / large < 8


def test_a_terminal_loss_is_estimated_without_bias_too():
  task = AddingTask(sequence_length=6, seed=3)
  inputs, targets = task.batch('train', 0, 0, 1)
  (error,) = _relative_errors(
      task, lambda rows: (np.repeat(inputs, rows, 0), np.repeat(targets, rows, 0)),
      (2048,), 'gru')
  assert error < 0.1


def test_bad_settings_are_refused_with_the_parameter_named():
  model = tiny_model(STREAM, seed=0, units=4)
  optimizer = built_optimizer(model)
  with pytest.raises(ConfigurationError, match='UORO.seed'):
    UORO(model=model, task=STREAM, optimizer=optimizer, batch_size=2, seed=-1)
  with pytest.raises(ConfigurationError, match='UORO.batch_size'):
    UORO(model=model, task=STREAM, optimizer=optimizer)
  with pytest.raises(ConfigurationError, match=r'UORO.max_influence_floats'):
    UORO(model=model, task=STREAM, optimizer=optimizer, batch_size=2,
         max_influence_floats=10)


def test_a_windows_draws_are_its_own_steps_whatever_follows():
  """``rademacher`` draws one window's steps ``[start, end)`` (what a call
  holds, not the whole call's): ±1, shaped ``[rows, end − start, width]``;
  step t's draws depend on the key, its window's start and t only, so a
  shorter last window (a stream's end, padding) reads a prefix of the longer
  one; other windows and other keys draw otherwise."""
  key = tf.constant([3, 0], tf.int64)
  long = rademacher(key, 4, 5, 12, 6).numpy()
  assert long.shape == (4, 7, 6) and set(np.unique(long)) == {-1.0, 1.0}
  np.testing.assert_array_equal(rademacher(key, 4, 5, 8, 6).numpy(),
                                long[:, :3])
  assert not np.array_equal(rademacher(key, 4, 0, 7, 6).numpy(), long)
  assert not np.array_equal(
      rademacher(tf.constant([3, 1], tf.int64), 4, 5, 12, 6).numpy(), long)

"""KF-RTRL (Mujika, Meier & Steger 2018) against its paper's claims.

Its claims: the Kronecker factorisation ``u' ⊗ A`` of each weight matrix's
influence is an unbiased estimate of RTRL's (each step's, over its two signs;
so the mean of the gradient estimates is RTRL's, with an error that shrinks as
1/√N), with a smaller variance than UORO's rank-one estimate. References are
computed independently: full BPTT's gradient by an eager tape (RTRL's exactly,
as ``tests/methods/test_rtrl.py`` tests), the state's Jacobians by
``tf.GradientTape``, and the four sign combinations of one step enumerated. Rows are independent draws: a batch
of N copies of one sequence averages N estimates in one call, and every call
draws anew (the estimate counter), so K calls give K independent means. Seeds
are fixed: every number below is deterministic; the bounds leave a margin for
float rounding, measured on other seeds too.
"""

import functools
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit import RecurrentModel
from tfcredit.errors import ConfigurationError
from tfcredit.methods import RTRL, UORO, KFRTRL
from tfcredit.methods.kf_rtrl import kronecker_sum
from tfcredit.models.state import flatten_state, unflatten_state
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.testing import TwoStateCell, built_optimizer, tiny_model

STREAM = MarkovLanguageTask(vocabulary_size=5, branching=2, train_length=60,
                            eval_length=10, seed=2)
ADDING = AddingTask(sequence_length=6, seed=3)
# name -> (task, RecurrentModel arguments): the encoder is an embedding on the
# stream, an input projection on the adding task (terminal loss).
PROBLEMS = {
    'simple_rnn': (STREAM, {'cell': 'simple_rnn', 'units': 4}),
    'lstm': (STREAM, {'cell': 'lstm', 'units': 4}),
    'lstm_2_layers': (STREAM, {'cell': 'lstm', 'units': 4, 'num_layers': 2}),
    'lstm_projection_terminal': (ADDING, {'cell': 'lstm', 'units': 4,
                                          'embedding_dim': 3}),
    'lstm_8': (STREAM, {'cell': 'lstm', 'units': 8}),
}


def _flat(gradients):
  return np.concatenate([np.ravel(tf.convert_to_tensor(g).numpy())
                         for g in gradients])


def _copies(task, rows):
  """``rows`` copies of one sequence: a stream's first 8 steps, or the adding
  task's first sequence."""
  if task.regime == 'stream':
    data = task.stream('train', 1)
    inputs, targets = data[:, :8], data[:, 1:9]
  else:
    inputs, targets = task.batch('train', 0, 0, 1)
  return (tf.constant(np.repeat(inputs, rows, 0)),
          tf.constant(np.repeat(targets, rows, 0)))


def _full_bptt(model, task, segment):
  """The gradient every estimate here is of, by one eager ``GradientTape``
  over the whole segment from the zero state: ``∇ (1/B)·Σ_t ℓ_t`` (per-step
  losses) or ``∇ mean_b ℓ_b`` (terminal); RTRL's exactly
  (tests/methods/test_rtrl.py)."""
  inputs, targets = segment
  rows = int(inputs.shape[0])
  with tf.GradientTape() as tape:
    outputs, _ = model.unroll(inputs, model.initial_state(rows), training=True)
    losses = task.losses(outputs, targets)
    objective = tf.reduce_sum(losses) / rows
  return tape.gradient(objective, model.trainable_variables)


@functools.lru_cache(maxsize=None)
def _problem(name):
  """``(task, model, the exact gradient of one copy)``: the mean over copies
  is the gradient of one."""
  task, arguments = PROBLEMS[name]
  model = tiny_model(task, seed=0, **arguments)
  exact = _flat(_full_bptt(model, task, _copies(task, 1)))
  assert np.abs(exact).max() > 1e-3
  return task, model, exact


@functools.lru_cache(maxsize=None)
def _estimator(cls, name, seed=5):
  """One ``cls`` instance per problem (one trace: its function takes any
  number of rows)."""
  task, model, _ = _problem(name)
  return cls(model=model, task=task, optimizer=built_optimizer(model),
             window=3, batch_size=128, seed=seed)


def _squared_errors(cls, name, rows, calls):
  """``‖ĝ − g‖² / ‖g‖²`` of ``calls`` estimates, each the mean of ``rows``
  draws, the draws of call k its counter's, counted from 0 (as a new
  instance's)."""
  task, model, exact = _problem(name)
  method = _estimator(cls, name)
  method.estimate_draws.assign(0)
  errors = []
  for _ in range(calls):
    estimate = _flat(method.estimate_gradients(_copies(task, rows),
                                               model.initial_state(rows))[0])
    errors.append(np.sum((estimate - exact)**2) / np.sum(exact**2))
  return np.array(errors)


@pytest.mark.slow  # A statistical bound over many draws.
@pytest.mark.parametrize('name', ['simple_rnn', 'lstm', 'lstm_2_layers',
                                  'lstm_projection_terminal'])
def test_the_mean_estimate_is_rtrls_with_error_shrinking_as_one_over_root_n(
    name):
  """4 estimates of N = 128 draws and 4 of 16N = 2048: the root-mean-square
  error falls by about 4 (measured 2.4 to 6.8 over seeds 5-7 and these four
  models), where a bias would stop it; at 16N it is under 5% (simple RNN) or
  2% (LSTM). The embedding, the input projection and a second layer are
  factors of their own: their estimates are unbiased too."""
  small = np.sqrt(np.mean(_squared_errors(KFRTRL, name, 128, 4)))
  large = np.sqrt(np.mean(_squared_errors(KFRTRL, name, 2048, 4)))
  assert large < 0.08
  assert 2 < small / large < 8


@pytest.mark.slow  # A statistical bound over many draws.
@pytest.mark.parametrize('name, bound', [('lstm', 2.0), ('lstm_8', 3.0),
                                         ('simple_rnn', 2.0)])
def test_the_variance_is_below_uoros(name, bound):
  """The same problem, the same draws (8 estimates of 256 rows each): one
  draw's variance ``tr Cov(ĝ) / ‖g‖²`` (``N·E‖ĝ_N − g‖²``, both unbiased) is
  at least ``bound`` times smaller than UORO's. Measured ratios over seeds 5-8:
  2.4-3.8 (LSTM 4 units), 5.4-8.9 (LSTM 8), 2.8-5.0 (simple RNN 4): the gap
  grows with the width, as the paper's analysis says."""
  rows = 256
  kf = rows * np.mean(_squared_errors(KFRTRL, name, rows, 8))
  uoro = rows * np.mean(_squared_errors(UORO, name, rows, 8))
  assert kf * bound < uoro


def _jacobians(model, inputs, flat):
  """Independent reference for one row: ``(J [|s|, |s|], ∂s_t/∂θ|direct
  [|s|, |θ|])`` of the step from ``flat`` (``[1, |s|]``) by the tape."""
  variables = model.trainable_variables
  spec, sizes = model.state_spec(), [int(s.shape[-1]) for s in
                                     tf.nest.flatten(model.state_spec())]
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(flat)
    _, state = model.unroll(inputs, unflatten_state(flat, spec, sizes),
                            training=True)
    new = flatten_state(state)[0]
  jacobian = tape.jacobian(new, flat)[:, 0]
  immediate = tf.concat([
      tf.zeros([new.shape[0], int(v.shape.num_elements())]) if j is None
      else tf.reshape(j, [new.shape[0], -1])
      for j, v in zip(tape.jacobian(new, variables), variables)], axis=-1)
  return jacobian.numpy(), immediate.numpy()


@pytest.mark.parametrize('name', ['lstm_2_layers', 'lstm_projection_terminal',
                                  'simple_rnn'])
def test_one_step_gives_rtrls_update_in_expectation_over_the_four_signs(name):
  """From a known factorisation ``G = u' ⊗ A`` (random, every factor), one
  step with each of the 4 sign combinations ``(c1, c2)`` (row r: the same
  combination for every factor, whose signs are independent): the mean of the
  4 new factorisations, expanded to RTRL's layout, is ``J G + ∂s/∂θ|direct``
  exactly, though no single one is. The gradient through the state is
  ``(∂ℓ/∂s) G``, and from zero influence the step is the immediate term
  exactly, whatever the signs."""
  task, model, _ = _problem(name)
  method = KFRTRL(model=model, task=task, optimizer=built_optimizer(model),
                  window=3, batch_size=4, use_tf_function=False)
  rng = np.random.default_rng(0)
  inputs, targets = (x[:1, :1] for x in _copies(task, 1))
  if task.readout == 'terminal':
    targets = _copies(task, 1)[1][:1]
  width = method.width
  flat = tf.constant(rng.normal(size=[1, width]).astype(np.float32) * 0.5)
  known = tuple((np.repeat(rng.normal(size=[1, f.u_size]), 4, 0),
                 np.repeat(rng.normal(size=[1, width, f.z_size]), 4, 0))
                for f in method.factors)
  known = tf.nest.map_structure(lambda x: tf.constant(x, tf.float32), known)
  signs = np.array(list(itertools.product([1.0, -1.0], repeat=2)), np.float32)
  noise = tf.constant(np.tile(signs, [1, len(method.factors)]))  # [4, 2F]
  repeat = lambda x: tf.repeat(x, 4, axis=0)

  def step(influence):
    _, new, _, through_state, _ = method._step(  # pylint: disable=protected-access
        repeat(inputs), repeat(targets), repeat(flat), influence, noise, 1,
        tf.constant(1.0))
    return new, through_state

  jacobian, immediate = _jacobians(model, inputs, flat)
  old_rows = method.dense_influence(known).numpy()
  expected = jacobian @ old_rows[0] + immediate
  new, _ = step(known)
  dense = method.dense_influence(new).numpy()
  np.testing.assert_allclose(dense.mean(0), expected, rtol=1e-4, atol=1e-5)
  assert min(np.abs(d - expected).max() for d in dense) > 1e-2

  # Through the state: (∂ℓ/∂s) G, summed over rows.
  gradient = tf.constant(rng.normal(size=[4, width]).astype(np.float32))
  through_state = method._through_state(gradient, known)  # pylint: disable=protected-access
  np.testing.assert_allclose(
      through_state.numpy(),
      np.einsum('bs,bsp->p', gradient.numpy(), old_rows), rtol=1e-4, atol=1e-5)

  zero = tf.nest.map_structure(tf.zeros_like, known)
  new, through_state = step(zero)
  for row in method.dense_influence(new).numpy():
    np.testing.assert_allclose(row, immediate, rtol=1e-5, atol=1e-6)
  assert not np.any(through_state.numpy())


def test_the_kronecker_sum_is_unbiased_and_exact_when_a_term_vanishes():
  """The reduction on its own: over the 4 sign combinations the mean of ``u ⊗ a`` is
  ``u1 ⊗ a1 + u2 ⊗ a2``; a zero term leaves the other exactly, whatever the
  signs (a padded step, the zero state)."""
  rng = np.random.default_rng(1)
  u1, u2 = (tf.constant(rng.normal(size=[1, 3]), tf.float32) for _ in range(2))
  a1, a2 = (tf.constant(rng.normal(size=[1, 2, 5]), tf.float32)
            for _ in range(2))
  kron = lambda u, a: np.einsum('bu,bsz->bsuz', u.numpy(), a.numpy())
  expected = kron(u1, a1) + kron(u2, a2)
  products = []
  for c1, c2 in itertools.product([1.0, -1.0], repeat=2):
    u, a = kronecker_sum(u1, a1, u2, a2, tf.constant([c1]), tf.constant([c2]))
    products.append(kron(u, a))
  np.testing.assert_allclose(np.mean(products, 0), expected, rtol=1e-5,
                             atol=1e-6)
  # p1, p2 balance the factors: ‖u‖ = ‖a‖ for each term inside the sum.
  u, a = kronecker_sum(u1, a1, u2, 0 * a2, tf.constant([-1.0]),
                       tf.constant([-1.0]))
  np.testing.assert_allclose(kron(u, a), kron(u1, a1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(u), np.linalg.norm(a), rtol=1e-5)
  u, a = kronecker_sum(0 * u1, a1, u2, a2, tf.constant([-1.0]),
                       tf.constant([1.0]))
  np.testing.assert_allclose(kron(u, a), kron(u2, a2), rtol=1e-5, atol=1e-6)
  u, a = kronecker_sum(0 * u1, a1, u2, 0 * a2, tf.constant([1.0]),
                       tf.constant([1.0]))
  assert not np.any(kron(u, a))


@pytest.mark.slow  # The whole-batch Jacobian reference.
def test_the_whole_batch_jacobian_gives_the_same_estimate():
  """Without ``per_row`` the state's Jacobian in the biases comes from the
  step's tape: the same estimate, with the same draws."""
  name = 'lstm_projection_terminal'
  task, model, _ = _problem(name)
  whole_batch = KFRTRL(model=model, task=task, optimizer=built_optimizer(model),
                       window=3, seed=5)
  assert whole_batch.per_row
  whole_batch.per_row = False
  estimates = []
  for method in (_estimator(KFRTRL, name), whole_batch):
    assert method.noise_seed.numpy() == 5
    method.estimate_draws.assign(0)
    estimates.append(_flat(method.estimate_gradients(
        _copies(task, 3), model.initial_state(3))[0]))
  np.testing.assert_allclose(estimates[1], estimates[0], rtol=1e-5, atol=1e-6)


def test_the_influence_is_rows_by_the_sum_of_u_plus_state_by_z():
  """Embedding (|u| = vocabulary, |z| = its width), then each layer (|u| =
  inputs + units + 1, |z| = 4 units for an LSTM); the readout carries none.
  Against RTRL's rows × |s| × |θ| and UORO's rows × (|s| + |θ|)."""
  model = tiny_model(STREAM, seed=0, units=4, num_layers=2)
  rows, vocabulary, units, state = 3, 5, 4, 16
  expected = rows * ((vocabulary + state * units)
                     + 2 * ((units + units + 1) + state * 4 * units))
  build = lambda cls: cls(model=model, task=STREAM,
                          optimizer=built_optimizer(model), batch_size=rows)
  floats, formula = build(KFRTRL).influence_size(rows)
  assert floats == expected
  assert formula == ('rows × Σ (|u| + state × |z|) = 3 × ((5 + 16 × 4) + '
                     '(9 + 16 × 16) + (9 + 16 × 16))')
  weights = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  assert build(RTRL).influence_size(rows)[0] == rows * state * weights
  assert build(UORO).influence_size(rows)[0] == rows * (state + weights)


def test_a_stream_of_one_row_trains():
  model = tiny_model(STREAM, seed=0, units=4)
  method = KFRTRL(model=model, task=STREAM, optimizer=built_optimizer(model),
                  window=4, windows_per_call=2, batch_size=1)
  method.on_epoch_start(0)
  data = STREAM.stream('train', 1)
  before = [v.numpy().copy() for v in model.trainable_variables]
  state, metrics = method.train_segment(
      (tf.constant(data[:, :8]), tf.constant(data[:, 1:9])),
      model.initial_state(1))
  assert float(metrics['updates']) == 2 and np.isfinite(float(metrics['loss_sum']))
  assert float(metrics['influence_norm']) > 0
  assert all(np.all(np.isfinite(s.numpy())) for s in tf.nest.flatten(state))
  assert all(np.any(v.numpy() != b)
             for v, b in zip(model.trainable_variables, before))


def test_a_gru_is_refused_in_one_line_naming_the_cell_and_what_works():
  model = tiny_model(STREAM, seed=0, units=4, cell='gru')
  with pytest.raises(ConfigurationError) as refusal:
    KFRTRL(model=model, task=STREAM, optimizer=built_optimizer(model),
           batch_size=2)
  message = str(refusal.value)
  assert '\n' not in message
  for part in ('GRUCell', 'gru_0', 'reset gate', "'lstm'", "'simple_rnn'",
               'RTRL, UORO or SnAp1'):
    assert part in message, part


@pytest.mark.parametrize('make, match', [
    (lambda: tiny_model(STREAM, seed=0, units=4, dropout=0.1),
     r'RecurrentModel.dropout = 0.1'),
    (lambda: _built(keras.layers.LSTMCell(4, dropout=0.2)), r'dropout=0.2'),
    (lambda: _built(keras.layers.LSTMCell(4, use_bias=False)), r'use_bias'),
    (lambda: _built(TwoStateCell()), r'TwoStateCell'),
], ids=['model_dropout', 'cell_dropout', 'no_bias', 'custom_cell'])
def test_what_breaks_the_structure_is_refused(make, match):
  model = make()
  with pytest.raises(ConfigurationError, match=match):
    KFRTRL(model=model, task=STREAM, optimizer=built_optimizer(model),
           batch_size=2)


def _built(cell):
  keras.utils.set_random_seed(0)
  model = RecurrentModel(cell=cell, **STREAM.model_spec())
  model.build_for(tf.zeros([1, 1], tf.int32))
  return model


def test_bad_settings_are_refused_with_the_parameter_named():
  model = tiny_model(STREAM, seed=0, units=4)
  optimizer = built_optimizer(model)
  with pytest.raises(ConfigurationError, match='KFRTRL.seed'):
    KFRTRL(model=model, task=STREAM, optimizer=optimizer, batch_size=2, seed=-1)
  with pytest.raises(ConfigurationError, match='KFRTRL.batch_size'):
    KFRTRL(model=model, task=STREAM, optimizer=optimizer)
  with pytest.raises(ConfigurationError, match='KFRTRL.max_influence_floats'):
    KFRTRL(model=model, task=STREAM, optimizer=optimizer, batch_size=2,
           max_influence_floats=10)

"""RFLO (Murray 2019) against the paper's statements.

RFLO is RTRL with the state Jacobian ``J_t = (1 − α) I + α diag(φ'(z_t)) W_rec``
replaced by ``(1 − α) I`` and ``∂ℓ_t/∂h_t`` by the feedback ``B e_t``. So with
``W_rec = 0`` (where ``J_t`` is ``(1 − α) I``) and symmetric feedback (``B =
W_outᵀ``) it is exact: its estimate equals full BPTT's and RTRL's; with
``W_rec ≠ 0`` it is not. With random feedback its update is the paper's formula,
``ΔW_ij ∝ (B e_t)_i p_ij,t``, written out here in numpy, embedding included.
"""

import functools
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.errors import ConfigurationError
from tfcredit.methods import BPTT, RFLO, RTRL
from tfcredit.models.leaky_rnn import LeakyRNNCell
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.testing import built_optimizer, clean_gin, tiny_model  # noqa: F401

ROWS, UNITS, ALPHA = 3, 5, 0.4
STREAM = MarkovLanguageTask(vocabulary_size=5, branching=2, train_length=80,
                            eval_length=10, seed=2)
ADDING = AddingTask(sequence_length=9, seed=1)


def _model(task, seed=0, alpha=ALPHA):
  """A leaky RNN of ``UNITS``: with an embedding on the stream, real inputs on
  the adding task."""
  return tiny_model(task, seed=seed, units=UNITS,
                    cell=functools.partial(LeakyRNNCell, alpha=alpha))


def _segment(task, start=0, length=11):
  if task.regime == 'stream':
    data = task.stream('train', ROWS)
    return (tf.constant(data[:, start:start + length]),
            tf.constant(data[:, start + 1:start + length + 1]))
  inputs, targets = task.batch('train', 0, 0, ROWS)
  return tf.constant(inputs), tf.constant(targets)


def _dense(gradients):
  return [tf.convert_to_tensor(g).numpy() for g in gradients]


def _close(a, b, atol=1e-6):
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol)


def _estimators(task, model, **kwargs):
  """RFLO (windows of 4) and its exact references on ``task``: full BPTT, and
  on the stream RTRL (windows of 4) too. Built once per model: the traced
  estimates read the weights, so setting ``W_rec`` to zero needs no new trace."""
  optimizer = built_optimizer(model)
  rflo = RFLO(model=model, task=task, optimizer=optimizer, window=4,
              batch_size=ROWS, **kwargs)
  stream = {'sequence_length': 11} if task.regime == 'stream' else {}
  # Full BPTT eager and uncompiled: run once, a trace would cost more than
  # the run (test_truncated_bptt checks the compiled pass against this one).
  references = [BPTT(model=model, task=task, optimizer=optimizer,
                     use_tf_function=False, jit_compile=False, **stream)]
  if task.regime == 'stream':
    references.append(RTRL(model=model, task=task, optimizer=optimizer,
                           window=4, batch_size=ROWS))
  return rflo, references


def _estimates(task, model, rflo, reference):
  """``(RFLO's, reference's)`` estimates from the zero state; the final states
  agree."""
  segment, state = _segment(task), model.initial_state(ROWS)
  estimate, final = rflo.estimate_gradients(segment, state)
  expected, expected_final = reference.estimate_gradients(segment, state)
  _close(tf.nest.flatten(final), tf.nest.flatten(expected_final))
  return _dense(estimate), _dense(expected)


@pytest.mark.parametrize('task', [ADDING, STREAM], ids=['adding', 'stream'])
def test_biased_with_recurrent_weights_exact_without_and_symmetric_feedback(
    task):
  """With ``W_rec``: the recurrent layer's gradient is biased, the readout's
  exact. With ``W_rec = 0``: every gradient is full BPTT's (and on the stream
  RTRL's), the embedding's too."""
  model = _model(task)
  rflo, references = _estimators(task, model, feedback='symmetric')
  estimate, exact = _estimates(task, model, rflo, references[0])
  cell = {id(v) for v in model.core[0].trainable_variables}
  readout = {id(v) for v in model.head.trainable_variables}
  assert cell and readout
  for variable, a, b in zip(model.trainable_variables, estimate, exact):
    if id(variable) in cell:  # The recurrent layer's weights: biased.
      assert np.linalg.norm(a - b) > 1e-2 * np.linalg.norm(b), variable.name
    elif id(variable) in readout:  # The readout's gradient is its own: exact.
      _close([a], [b])
  kernel = model.core[0].cell.recurrent_kernel
  kernel.assign(tf.zeros_like(kernel))
  for reference in references:
    estimate, exact = _estimates(task, model, rflo, reference)
    _close(estimate, exact)
    assert min(np.abs(g).max() for g in exact) > 1e-3  # Every weight.


def _rflo_by_hand(model, feedback, inputs, targets, normalizer):
  """Murray's RFLO in numpy on a token stream: ``p_ij ← (1 − α) p_ij + α
  φ'(z_i) u_j`` for ``W = [W_in; W_rec; b]`` (``u = [x; h; 1]``), and for the
  embedding ``E`` (``x = E[token]``) the same rule through ``W_in``;
  gradients ``Σ_t (B e_t)_i p_ij,t``; the readout's its own. ``e_t`` is the
  softmax cross-entropy's error, divided by ``rows × normalizer``."""
  cell = model.core[0].cell
  embedding = model.encoder.embeddings.numpy()
  w_in, w_rec, b = (v.numpy() for v in (cell.kernel, cell.recurrent_kernel,
                                        cell.bias))
  w_out, b_out = model.head.kernel.numpy(), model.head.bias.numpy()
  alpha, (rows, steps) = cell.alpha, inputs.shape
  w = np.concatenate([w_in, w_rec, b[None]])
  h = np.zeros([rows, UNITS])
  p = np.zeros([rows, len(w), UNITS])
  m = np.zeros([rows, UNITS] + list(embedding.shape))
  grads = [np.zeros_like(g) for g in (embedding, w, w_out, b_out)]
  for t in range(steps):
    x = embedding[inputs[:, t]]
    u = np.concatenate([x, h, np.ones([rows, 1])], axis=1)
    z = u @ w
    h = (1 - alpha) * h + alpha * np.tanh(z)
    slope = alpha * (1 - np.tanh(z) ** 2)
    p = (1 - alpha) * p + slope[:, None, :] * u[:, :, None]
    m = (1 - alpha) * m
    for row in range(rows):
      m[row, :, inputs[row, t], :] += slope[row][:, None] * w_in.T
    y = h @ w_out + b_out
    probabilities = np.exp(y - y.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    error = (probabilities - np.eye(y.shape[1])[targets[:, t]]) / (
        rows * normalizer)
    signal = error @ feedback.T
    grads[0] += np.einsum('bj,bjvk->vk', signal, m)
    grads[1] += np.einsum('bkj,bj->kj', p, signal)
    grads[2] += h.T @ error
    grads[3] += error.sum(0)
  embedding_grad, w_grad, w_out_grad, b_out_grad = grads
  return [embedding_grad, w_grad[:len(w_in)], w_grad[len(w_in):-1],
          w_grad[-1], w_out_grad, b_out_grad]


def test_random_feedback_is_the_formula_with_b():
  model = _model(STREAM)
  optimizer = built_optimizer(model, learning_rate=0.1)
  rflo = RFLO(model=model, task=STREAM, optimizer=optimizer, window=6,
              windows_per_call=1, batch_size=ROWS, feedback_seed=3)
  feedback = rflo.feedback_matrix.numpy()
  assert feedback.shape == (UNITS, STREAM.model_spec()['output_dim'])
  inputs, targets = (t.numpy() for t in _segment(STREAM, length=6))
  state = model.initial_state(ROWS)
  estimate = _dense(rflo.estimate_gradients(
      (tf.constant(inputs), tf.constant(targets)), state)[0])
  expected = _rflo_by_hand(model, feedback, inputs, targets, 1)
  _close(estimate, expected)
  assert min(np.abs(g).max() for g in expected) > 1e-3
  # A training call of one window applies SGD's step on the same formula,
  # the window's loss divided by its length.
  before = [v.numpy() for v in model.trainable_variables]
  rflo.on_epoch_start(0)
  rflo.train_segment((tf.constant(inputs), tf.constant(targets)), state)
  moved = [v.numpy() - b for v, b in zip(model.trainable_variables, before)]
  _close(moved, [-0.1 * g / 6 for g in expected])
  # Not the readout's transpose: symmetric feedback gives another estimate.
  symmetric = RFLO(model=model, task=STREAM, optimizer=optimizer, window=6,
                   batch_size=ROWS, feedback='symmetric')
  assert symmetric.feedback_matrix is None


def test_the_feedback_matrix_is_seeded():
  model = _model(STREAM)
  build = lambda **kw: RFLO(model=model, task=STREAM,
                            optimizer=built_optimizer(model), batch_size=ROWS,
                            **kw).feedback_matrix.numpy()
  default = build()
  np.testing.assert_array_equal(build(), default)
  assert not np.allclose(build(feedback_seed=1), default)
  outputs = STREAM.model_spec()['output_dim']
  np.testing.assert_allclose(build(feedback_stddev=2.0),
                             2.0 * np.sqrt(outputs) * default, rtol=1e-6)


def test_the_eligibility_holds_one_float_per_weight():
  """``|W|`` floats per row for the cell (no weights below it on real inputs),
  plus ``units × |E|`` for an embedding."""
  model = _model(ADDING)
  rflo = RFLO(model=model, task=ADDING, optimizer=built_optimizer(model))
  weights = sum(int(v.shape.num_elements())
                for v in model.core[0].trainable_variables)
  assert weights == UNITS * (2 + UNITS + 1)
  assert rflo.influence_size(4)[0] == 4 * weights
  model = _model(STREAM)
  rflo = RFLO(model=model, task=STREAM, optimizer=built_optimizer(model),
              batch_size=ROWS)
  weights = sum(int(v.shape.num_elements())
                for v in model.core[0].trainable_variables)
  embedding = int(model.encoder.embeddings.shape.num_elements())
  assert [tuple(v.shape) for v in rflo.influence] == [
      (ROWS, UNITS + UNITS + 1, UNITS), (ROWS, UNITS, embedding)]
  assert rflo.influence_size(ROWS)[0] == ROWS * (weights + UNITS * embedding)


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
  def build(feedback_seed):
    model = _model(STREAM)
    optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.05)
    method = RFLO(model=model, task=STREAM, optimizer=optimizer, window=3,
                  windows_per_call=2, batch_size=ROWS,
                  feedback_seed=feedback_seed)
    return model, optimizer, method

  def calls(method, state, starts):
    for start in starts:
      state, _ = method.train_segment(_segment(STREAM, start, 6), state)
    return state

  model, optimizer, method = build(0)
  method.on_epoch_start(0)
  state = calls(method, model.initial_state(ROWS), (0, 6))
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                   method=method)
  path = checkpoint.save(str(tmp_path / 'ckpt'))
  carried = [s.numpy() for s in tf.nest.flatten(state)]
  final = calls(method, state, (12, 18))

  # Another seed: the checkpoint's B must replace it.
  model2, optimizer2, method2 = build(5)
  tf.train.Checkpoint(model=model2, optimizer=optimizer2, method=method2).restore(
      path).assert_existing_objects_matched()
  np.testing.assert_array_equal(method2.feedback_matrix.numpy(),
                                method.feedback_matrix.numpy())
  eligibility = lambda m: [v.numpy() for v in tf.nest.flatten(m.influence)]
  saved = eligibility(method2)
  assert all(np.any(v) for v in saved)
  method2.on_epoch_start(0)  # A resumed epoch keeps the eligibility.
  _close(eligibility(method2), saved, atol=0)
  state2 = tf.nest.pack_sequence_as(model2.initial_state(ROWS),
                                    [tf.constant(c) for c in carried])
  final2 = calls(method2, state2, (12, 18))
  _close([v.numpy() for v in model2.trainable_variables],
         [v.numpy() for v in model.trainable_variables])
  _close(tf.nest.flatten(final2), tf.nest.flatten(final))
  _close(eligibility(method2), eligibility(method))
  method2.on_epoch_start(1)  # A new epoch starts from zero eligibility.
  assert not any(np.any(v) for v in eligibility(method2))


def _refusal(build):
  with pytest.raises(ConfigurationError) as raised:
    build()
  message = str(raised.value)
  assert '\n' not in message
  return message


def test_other_models_and_bad_settings_are_refused_in_one_line():
  optimizer = lambda model: built_optimizer(model)
  refuse = lambda model, **kw: _refusal(lambda: RFLO(
      model=model, task=STREAM, optimizer=optimizer(model), batch_size=ROWS,
      **kw))
  lstm = tiny_model(STREAM, seed=0, units=UNITS)
  assert 'LeakyRNNCell' in refuse(lstm) and 'lstm' in refuse(lstm)
  two = tiny_model(STREAM, seed=0, units=UNITS, num_layers=2, cell=LeakyRNNCell)
  assert '2 layer(s)' in refuse(two)
  dropout = tiny_model(STREAM, seed=0, units=UNITS, dropout=0.1,
                       cell=LeakyRNNCell)
  assert 'dropout' in refuse(dropout)
  tied = tiny_model(STREAM, seed=0, units=UNITS, tie_embeddings=True,
                    cell=LeakyRNNCell)
  assert 'tie_embeddings' in refuse(tied)
  model = _model(STREAM)
  assert 'RFLO.feedback' in refuse(model, feedback='transpose')
  assert 'RFLO.feedback_seed' in refuse(model, feedback_seed=-1)
  assert 'RFLO.feedback_stddev' in refuse(model, feedback_stddev=0.0)
  assert 'RFLO.max_influence_floats' in refuse(model, max_influence_floats=10)
  assert 'RFLO.batch_size' in _refusal(lambda: RFLO(
      model=model, task=STREAM, optimizer=optimizer(model)))


def test_trains_through_gin(clean_gin, tmp_path):
  tfcredit.config.parse(['testing/tiny.gin'], [
      'RecurrentModel.cell = @LeakyRNNCell', 'LeakyRNNCell.alpha = 0.5',
      'train.method = @RFLO', 'RFLO.window = 10'])
  result = tfcredit.train(str(tmp_path / 'run'), export_dir=None,
                          stop_after_calls=2)
  assert result['stopped_after_calls'] == 2


PAGE = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'methods' / 'rflo.md'


def test_the_pages_example_runs_and_learns():
  """docs/methods/rflo.md's Python block as written: on the adding task the
  mean squared error of the last ten calls is under half the first call's."""
  block, = re.findall(r'```python\n(.*?)```', PAGE.read_text(encoding='utf-8'),
                      flags=re.S)
  namespace = {}
  exec(compile(block, str(PAGE), 'exec'), namespace)  # pylint: disable=exec-used
  losses = namespace['losses']
  assert np.mean(losses[-10:]) < 0.5 * losses[0], losses

"""e-prop (Bellec et al. 2020) against the paper's statements.

e-prop keeps each unit's own memory exactly (an LSTM's cell state, through its
forget gate; the leaky RNN's state, through its leak) and drops every path from
one unit's output to the next step's units. So with no recurrent weights and
symmetric feedback it is full BPTT's gradient (in every weight); with recurrent
weights it is not. Its traces are the paper's, ``ε_t = f_t ⊙ ε_{t−1} +
∂c_t/∂W`` read through ``∂h_t/∂c_t``, written out here in numpy for an LSTM
with recurrent weights and random feedback. On the leaky RNN e-prop is RFLO
(Marschall, Cho & Savin 2020): the same numbers.
"""

import functools
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.methods import BPTT, RFLO, EProp
from tfcredit.models.leaky_rnn import LeakyRNNCell
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.testing import TwoStateCell, built_optimizer, tiny_model

# RFLO's segment and comparison helpers: e-prop runs on RFLO's machinery.
from test_rflo import _close, _dense, _segment  # pylint: disable=g-bad-import-order

ROWS, UNITS = 3, 5
STREAM = MarkovLanguageTask(vocabulary_size=5, branching=2, train_length=80,
                            eval_length=10, seed=2)
ADDING = AddingTask(sequence_length=9, seed=1)


def _model(task, cell='lstm', seed=0):
  """An LSTM (the named core) or a leaky RNN (``α = 0.4``) of ``UNITS``."""
  leaky = {'cell': functools.partial(LeakyRNNCell, alpha=0.4)}
  return tiny_model(task, seed=seed, units=UNITS,
                    **(leaky if cell == 'leaky' else {}))


def _against_bptt(task, model, eprop, full):
  """``(e-prop's, full BPTT's)`` estimates from the zero state; the final
  states agree."""
  segment, state = _segment(task), model.initial_state(ROWS)
  estimate, final = eprop.estimate_gradients(segment, state)
  exact, exact_final = full.estimate_gradients(segment, state)
  _close(tf.nest.flatten(final), tf.nest.flatten(exact_final))
  return _dense(estimate), _dense(exact)


CASES = [('lstm', STREAM), ('lstm', ADDING), ('leaky', STREAM)]
IDS = ['lstm-stream', 'lstm-adding', 'leaky-stream']


@pytest.mark.parametrize('cell,task', CASES, ids=IDS)
def test_biased_with_recurrent_weights_full_bptt_without(cell, task):
  """With recurrent weights the layer's gradient is biased, the readout's
  exact; with them zero every gradient is full BPTT's. One e-prop (windows of
  4) and one full BPTT serve both: their traces read the weights."""
  model = _model(task, cell)
  optimizer = built_optimizer(model)
  eprop = EProp(model=model, task=task, optimizer=optimizer, window=4,
                batch_size=ROWS)
  stream = {'sequence_length': 11} if task.regime == 'stream' else {}
  # Full BPTT eager and uncompiled: run twice, a trace would cost more than
  # the runs (test_truncated_bptt checks the compiled pass against this one).
  full = BPTT(model=model, task=task, optimizer=optimizer,
              use_tf_function=False, jit_compile=False, **stream)
  estimate, exact = _against_bptt(task, model, eprop, full)
  layer = {id(v) for v in model.core[0].trainable_variables}
  readout = {id(v) for v in model.head.trainable_variables}
  assert layer and readout
  for variable, a, b in zip(model.trainable_variables, estimate, exact):
    if id(variable) in layer:
      assert np.linalg.norm(a - b) > 1e-2 * np.linalg.norm(b), variable.name
    elif id(variable) in readout:  # Its own gradient: exact.
      _close([a], [b])
  kernel = model.core[0].cell.recurrent_kernel
  kernel.assign(tf.zeros_like(kernel))
  estimate, exact = _against_bptt(task, model, eprop, full)
  _close(estimate, exact)
  assert min(np.abs(g).max() for g in exact) > 1e-4  # Every weight moves.


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def _eprop_lstm_by_hand(model, feedback, inputs, targets):
  """e-prop for Keras' LSTM in numpy on a token stream (``x = E[token]``,
  gates ``i, f, g, o`` of ``u = [x; h; 1]``): for the weights of ``i, f, g``
  the eligibility vector ``ε ← f ⊙ ε + ∂c/∂W`` and trace ``o tanh'(c) ε``; for
  ``o`` the trace ``∂h/∂W_o``; the embedding's the same through ``∂c/∂x`` and
  ``∂h/∂x``. Gradients ``Σ_t L_t · trace`` with ``L_t = e_t Bᵀ`` (the
  softmax cross-entropy's error over the rows)."""
  cell = model.core[0].cell
  embedding = model.encoder.embeddings.numpy()
  kernel, recurrent, bias = (v.numpy() for v in (
      cell.kernel, cell.recurrent_kernel, cell.bias))
  w_out, b_out = model.head.kernel.numpy(), model.head.bias.numpy()
  w = np.concatenate([kernel, recurrent, bias[None]])
  rows, steps = inputs.shape
  n = UNITS
  k_i, k_f, k_g, k_o = np.split(kernel, 4, axis=1)
  h, c = np.zeros([rows, n]), np.zeros([rows, n])
  eps = np.zeros([rows, len(w), 3 * n])
  m_c = np.zeros([rows, n] + list(embedding.shape))
  grads = [np.zeros_like(g) for g in (embedding, w, w_out, b_out)]
  for t in range(steps):
    tokens = inputs[:, t]
    u = np.concatenate([embedding[tokens], h, np.ones([rows, 1])], axis=1)
    a_i, a_f, a_g, a_o = np.split(u @ w, 4, axis=1)
    i, f, g, o = _sigmoid(a_i), _sigmoid(a_f), np.tanh(a_g), _sigmoid(a_o)
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    d_i, d_f, d_g = g * i * (1 - i), c * f * (1 - f), i * (1 - g ** 2)
    eps = (np.tile(f, 3)[:, None, :] * eps
           + u[:, :, None] * np.concatenate([d_i, d_f, d_g], 1)[:, None, :])
    read = o * (1 - np.tanh(c_new) ** 2)  # ∂h/∂c.
    d_o = np.tanh(c_new) * o * (1 - o)  # ∂h/∂a_o.
    dc_dx = (d_i[:, :, None] * k_i.T + d_f[:, :, None] * k_f.T
             + d_g[:, :, None] * k_g.T)
    m_c *= f[:, :, None, None]
    for row in range(rows):
      m_c[row, :, tokens[row], :] += dc_dx[row]
    y = h_new @ w_out + b_out
    probabilities = np.exp(y - y.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    error = (probabilities - np.eye(y.shape[1])[targets[:, t]]) / rows
    signal = error @ feedback.T
    grads[0] += np.einsum('bj,bjvk->vk', signal * read, m_c)
    direct = np.einsum('bj,kj->bk', signal * d_o, k_o)
    for row in range(rows):
      grads[0][tokens[row]] += direct[row]
    grads[1][:, :3 * n] += np.einsum('bkc,bc->kc', eps,
                                     np.tile(signal * read, 3))
    grads[1][:, 3 * n:] += u.T @ (signal * d_o)
    grads[2] += h_new.T @ error
    grads[3] += error.sum(0)
    h, c = h_new, c_new
  w_grad = grads[1]
  return [grads[0], w_grad[:len(kernel)], w_grad[len(kernel):-1], w_grad[-1],
          grads[2], grads[3]]


def test_lstm_traces_with_random_feedback_are_the_papers():
  model = _model(STREAM)
  eprop = EProp(model=model, task=STREAM, optimizer=built_optimizer(model),
                window=4, batch_size=ROWS, feedback='random', feedback_seed=2)
  feedback = eprop.feedback_matrix.numpy()
  inputs, targets = (t.numpy() for t in _segment(STREAM))
  estimate = _dense(eprop.estimate_gradients(
      (tf.constant(inputs), tf.constant(targets)),
      model.initial_state(ROWS))[0])
  expected = _eprop_lstm_by_hand(model, feedback, inputs, targets)
  _close(estimate, expected)
  assert min(np.abs(g).max() for g in expected) > 1e-4
  # The output gate's weights carry no eligibility: 3/4 of the cell's.
  weights = sum(int(v.shape.num_elements())
                for v in model.core[0].trainable_variables)
  embedding = int(model.encoder.embeddings.shape.num_elements())
  assert eprop.influence_size(ROWS)[0] == ROWS * (
      3 * weights // 4 + UNITS * embedding)


@pytest.mark.parametrize('feedback', ['symmetric', 'random'])
def test_on_the_leaky_rnn_eprop_is_rflo(feedback):
  """Estimates, then three training calls: the same weights, state and
  eligibility."""
  runs = []
  for cls in (EProp, RFLO):
    model = _model(STREAM, 'leaky')
    method = cls(model=model, task=STREAM,
                 optimizer=built_optimizer(model, keras.optimizers.Adam,
                                           learning_rate=0.05),
                 window=3, windows_per_call=2, batch_size=ROWS,
                 feedback=feedback, feedback_seed=4)
    method.on_epoch_start(0)
    state = model.initial_state(ROWS)
    estimate, _ = method.estimate_gradients(_segment(STREAM), state)
    for start in (0, 6, 12):
      state, _ = method.train_segment(_segment(STREAM, start, 6), state)
    runs.append((_dense(estimate),
                 [v.numpy() for v in model.trainable_variables],
                 tf.nest.flatten(state),
                 [v.numpy() for v in tf.nest.flatten(method.influence)]))
  for eprop, rflo in zip(*runs):
    _close(eprop, rflo, atol=0)
  assert np.abs(runs[0][0][2]).max() > 1e-3  # W_rec's gradient, not zero.


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
  def build(feedback_seed):
    model = _model(STREAM)
    optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.05)
    method = EProp(model=model, task=STREAM, optimizer=optimizer, window=3,
                   windows_per_call=2, batch_size=ROWS, feedback='random',
                   feedback_seed=feedback_seed)
    return model, optimizer, method

  def calls(method, state, starts):
    for start in starts:
      state, _ = method.train_segment(_segment(STREAM, start, 6), state)
    return state

  model, optimizer, method = build(0)
  method.on_epoch_start(0)
  state = calls(method, model.initial_state(ROWS), (0, 6))
  path = tf.train.Checkpoint(model=model, optimizer=optimizer,
                             method=method).save(str(tmp_path / 'ckpt'))
  carried = [s.numpy() for s in tf.nest.flatten(state)]
  final = calls(method, state, (12, 18))

  model2, optimizer2, method2 = build(7)  # B comes from the checkpoint.
  tf.train.Checkpoint(model=model2, optimizer=optimizer2, method=method2).restore(
      path).assert_existing_objects_matched()
  method2.on_epoch_start(0)
  eligibility = lambda m: [v.numpy() for v in tf.nest.flatten(m.influence)]
  assert all(np.any(v) for v in eligibility(method2))
  state2 = tf.nest.pack_sequence_as(model2.initial_state(ROWS),
                                    [tf.constant(c) for c in carried])
  final2 = calls(method2, state2, (12, 18))
  _close([v.numpy() for v in model2.trainable_variables],
         [v.numpy() for v in model.trainable_variables])
  _close(tf.nest.flatten(final2), tf.nest.flatten(final))
  _close(eligibility(method2), eligibility(method))


@pytest.mark.parametrize('overrides,named', [
    ({'cell': 'gru'}, 'gru'),
    ({'cell': 'simple_rnn'}, 'simple_rnn'),
    ({'num_layers': 2}, '2 layer(s)'),
    ({'cell': TwoStateCell, 'units': 4}, 'TwoStateCell'),
    ({'cell': keras.layers.LSTMCell(UNITS, dropout=0.2), 'units': None},
     'dropout'),
])
def test_other_cores_are_refused_in_one_line(overrides, named):
  model = tiny_model(STREAM, seed=0, **{'units': UNITS, **overrides})
  with pytest.raises(ConfigurationError) as raised:
    EProp(model=model, task=STREAM, optimizer=built_optimizer(model),
          batch_size=ROWS)
  message = str(raised.value)
  assert '\n' not in message and named in message
  if named != 'dropout':
    assert 'LeakyRNNCell or LSTMCell' in message


PAGE = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'methods' / 'eprop.md'


def test_the_pages_example_runs_and_learns():
  """docs/methods/eprop.md's Python block as written: on the adding task the
  mean squared error of the last ten calls is under half the first call's."""
  block, = re.findall(r'```python\n(.*?)```', PAGE.read_text(encoding='utf-8'),
                      flags=re.S)
  namespace = {}
  exec(compile(block, str(PAGE), 'exec'), namespace)  # pylint: disable=exec-used
  losses = namespace['losses']
  assert np.mean(losses[-10:]) < 0.5 * losses[0], losses

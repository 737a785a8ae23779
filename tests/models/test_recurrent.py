"""Tests of tfcredit.models.recurrent.RecurrentModel.

The ``state_grad_scale`` tests build their references from the plain Keras-layer
path (``state_grad_scale=None``) cut into pieces with ``tf.stop_gradient``: a scale
of 0 at step ``t`` must equal stopping the state after step ``t``, a scale of 1
plain backprop, and any other scale must act multilinearly between the two.
"""

import functools
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.testing import assert_nests_close, max_abs_diff

BATCH = 3
STEPS = 6
INPUT_DIM = 3
UNITS = 4
OUTPUT_DIM = 2


def _real_input_model(cell, num_layers, readout='per_step', seed=1, **kwargs):
  keras.utils.set_random_seed(seed)
  model = RecurrentModel(input_dim=INPUT_DIM, output_dim=OUTPUT_DIM,
                         readout=readout, cell=cell, units=UNITS,
                         num_layers=num_layers, **kwargs)
  model.build_for(tf.zeros([1, 1, INPUT_DIM]))
  return model


def _random_state(model, rng):
  return tuple(
      tuple(tf.constant(rng.normal(size=(BATCH, UNITS)).astype(np.float32))
            for _ in range(model.states_per_layer))
      for _ in range(model.num_layers))


@functools.lru_cache(maxsize=None)
def _problem(cell, num_layers):
  """The shared (read-only) model and problem of one cell type and depth."""
  return _Problem(_real_input_model(cell, num_layers))


class _Problem:
  """Fixed inputs, initial state and random probes defining a scalar loss."""

  def __init__(self, model, seed=2):
    rng = np.random.default_rng(seed)
    self.model = model
    self.inputs = tf.constant(
        rng.normal(size=(BATCH, STEPS, INPUT_DIM)).astype(np.float32))
    self.state = _random_state(model, rng)
    self.output_probe = tf.constant(
        rng.normal(size=(BATCH, STEPS, OUTPUT_DIM)).astype(np.float32))
    self.state_probes = [
        tf.constant(rng.normal(size=(BATCH, UNITS)).astype(np.float32))
        for _ in tf.nest.flatten(self.state)]
    # Several tests compare the same unrolls; each is computed once per module.
    self._scaled_cache = {}
    self._piecewise_cache = {}

  def loss(self, outputs, final_state):
    """A loss touching every output and every component of the final state."""
    value = tf.reduce_sum(outputs * self.output_probe)
    for component, probe in zip(tf.nest.flatten(final_state), self.state_probes):
      value += tf.reduce_sum(component * probe)
    return value

  def sources(self):
    return list(self.model.trainable_variables) + tf.nest.flatten(self.state)

  def scaled(self, scale):
    """Outputs, final state and gradients (weights, then initial state)."""
    key = tuple(np.asarray(scale, np.float32).tolist())
    if key not in self._scaled_cache:
      self._scaled_cache[key] = self._scaled(scale)
    return self._scaled_cache[key]

  def _scaled(self, scale):
    with tf.GradientTape() as tape:
      tape.watch(tf.nest.flatten(self.state))
      outputs, final = self.model.unroll(
          self.inputs, self.state, state_grad_scale=tf.constant(scale, tf.float32))
      loss = self.loss(outputs, final)
    return outputs, final, tape.gradient(loss, self.sources())

  def plain(self):
    """The unscaled Keras-layer path."""
    return self.piecewise({})

  def piecewise(self, cuts):
    """Keras-layer path cut after the steps in ``cuts``.

    Args:
      cuts: ``{step: 0 or 1}``; 0 stops the gradient of the state after that step,
        1 passes it (the unroll is still split there).

    Returns:
      ``(outputs, final_state, gradients)``.
    """
    key = tuple(sorted(cuts.items()))
    if key not in self._piecewise_cache:
      self._piecewise_cache[key] = self._piecewise(cuts)
    return self._piecewise_cache[key]

  def _piecewise(self, cuts):
    with tf.GradientTape() as tape:
      tape.watch(tf.nest.flatten(self.state))
      state, pieces, start = self.state, [], 0
      for step in sorted(cuts) + [STEPS - 1]:
        if step >= start:
          outputs, state = self.model.unroll(self.inputs[:, start:step + 1], state)
          pieces.append(outputs)
          start = step + 1
        if cuts.get(step, 1) == 0:
          state = tf.nest.map_structure(tf.stop_gradient, state)
      outputs = tf.concat(pieces, axis=1)
      loss = self.loss(outputs, state)
    return outputs, state, tape.gradient(loss, self.sources())

  def expected_scaled_gradients(self, scales_at):
    """Multilinear interpolation of cut references: the exact scaled gradient.

    Every gradient path crosses each step boundary at most once, so the gradient is
    multilinear in the scales: ``Σ_a g_a Π_t (k_t if a_t else 1 - k_t)``, where
    ``g_a`` cuts (``a_t = 0``) or keeps (``a_t = 1``) the state after step ``t``.
    """
    steps = sorted(scales_at)
    total = None
    for choice in itertools.product((0, 1), repeat=len(steps)):
      _, _, gradients = self.piecewise(dict(zip(steps, choice)))
      weight = 1.0
      for step, keep in zip(steps, choice):
        weight *= scales_at[step] if keep else 1.0 - scales_at[step]
      term = [weight * tf.convert_to_tensor(g).numpy().astype(np.float64)
              for g in gradients]
      total = term if total is None else [a + b for a, b in zip(total, term)]
    return total


def _scale_vector(scales_at):
  scale = np.ones([STEPS], np.float32)
  for step, value in scales_at.items():
    scale[step] = value
  return scale


CELLS_AND_LAYERS = [(cell, layers) for cell in ('lstm', 'gru', 'simple_rnn')
                    for layers in (1, 2)]


@pytest.mark.parametrize('cell,num_layers', CELLS_AND_LAYERS)
def test_scale_one_equals_the_keras_layer_path(cell, num_layers):
  problem = _problem(cell, num_layers)
  outputs, final, gradients = problem.scaled(np.ones([STEPS]))
  plain_outputs, plain_final, plain_gradients = problem.plain()
  assert outputs.shape == (BATCH, STEPS, OUTPUT_DIM)
  assert_nests_close(outputs, plain_outputs, rtol=1e-5, atol=1e-6)
  assert_nests_close(final, plain_final, rtol=1e-5, atol=1e-6)
  assert_nests_close(gradients, plain_gradients, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cell,num_layers', CELLS_AND_LAYERS)
@pytest.mark.parametrize('step', [2, STEPS - 1])
def test_scale_zero_equals_stop_gradient_after_that_step(cell, num_layers, step):
  problem = _problem(cell, num_layers)
  _, _, gradients = problem.scaled(_scale_vector({step: 0.0}))
  _, _, stopped = problem.piecewise({step: 0})
  _, _, full = problem.plain()
  assert_nests_close(gradients, stopped, rtol=1e-5, atol=1e-5)
  # The cut must matter, or the comparison above could not fail.
  assert max_abs_diff(stopped, full) > 1e-3


@pytest.mark.parametrize('cell,num_layers', CELLS_AND_LAYERS)
@pytest.mark.parametrize('factor', [3.0, -0.5])
def test_scale_k_multiplies_the_paths_through_that_step(cell, num_layers, factor):
  problem = _problem(cell, num_layers)
  step = 2
  _, _, gradients = problem.scaled(_scale_vector({step: factor}))
  _, _, stopped = problem.piecewise({step: 0})
  _, _, full = problem.plain()
  expected = [tf.convert_to_tensor(s) + factor * (tf.convert_to_tensor(f) -
                                                   tf.convert_to_tensor(s))
              for s, f in zip(stopped, full)]
  assert_nests_close(gradients, expected, rtol=1e-4, atol=1e-5)


def test_scales_at_two_steps_compose_multiplicatively():
  problem = _problem('lstm', 2)
  scales_at = {1: 2.5, 4: -0.7}
  _, _, gradients = problem.scaled(_scale_vector(scales_at))
  expected = problem.expected_scaled_gradients(scales_at)
  assert_nests_close(gradients, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('cell,num_layers', [('lstm', 2), ('gru', 1),
                                             ('simple_rnn', 2)])
def test_scale_never_changes_the_forward_value(cell, num_layers):
  problem = _problem(cell, num_layers)
  reference_outputs, reference_final, _ = problem.scaled(np.ones([STEPS]))
  rng = np.random.default_rng(5)
  for scale in (_scale_vector({2: 0.0}), _scale_vector({2: 3.0}),
                _scale_vector({2: -0.5}), rng.normal(size=[STEPS]) * 10):
    outputs, final, _ = problem.scaled(scale)
    np.testing.assert_array_equal(outputs.numpy(), reference_outputs.numpy())
    for a, b in zip(tf.nest.flatten(final), tf.nest.flatten(reference_final)):
      np.testing.assert_array_equal(a.numpy(), b.numpy())


# ------------------------------------------------------------------ readouts


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_per_step_and_terminal_readout_shapes_and_values(cell):
  per_step = _real_input_model(cell, 2, readout='per_step')
  terminal = _real_input_model(cell, 2, readout='terminal', seed=9)
  terminal.set_weights(per_step.get_weights())
  rng = np.random.default_rng(0)
  inputs = tf.constant(rng.normal(size=(BATCH, 5, INPUT_DIM)).astype(np.float32))
  state = per_step.initial_state(BATCH)

  step_outputs, step_final = per_step.unroll(inputs, state)
  last_outputs, last_final = terminal.unroll(inputs, state)
  assert step_outputs.shape == (BATCH, 5, OUTPUT_DIM)
  assert last_outputs.shape == (BATCH, OUTPUT_DIM)
  states = 2 if cell == 'lstm' else 1
  for final in (step_final, last_final):
    assert len(final) == 2 and all(len(layer) == states for layer in final)
    assert all(s.shape == (BATCH, UNITS) for s in tf.nest.flatten(final))

  # Both heads read the top layer's last hidden state: h_T @ W + b.
  top_h = step_final[-1][0].numpy()
  expected = top_h @ per_step.head.kernel.numpy() + per_step.head.bias.numpy()
  np.testing.assert_allclose(step_outputs[:, -1].numpy(), expected, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(last_outputs.numpy(), expected, rtol=1e-5, atol=1e-6)


def _tied_model(units=6, vocab=10, seed=3):
  keras.utils.set_random_seed(seed)
  model = RecurrentModel(input_vocab_size=vocab, output_dim=vocab, units=units,
                         cell='lstm', tie_embeddings=True)
  model.build_for(tf.zeros([1, 1], tf.int32))
  return model


def test_tied_embeddings_read_out_through_the_embedding_matrix():
  model = _tied_model()
  assert model.head is None
  rng = np.random.default_rng(4)
  embeddings = rng.normal(size=(10, 6)).astype(np.float32)
  bias = rng.normal(size=(10,)).astype(np.float32)
  model.encoder.embeddings.assign(embeddings)
  model.output_bias.assign(bias)
  inputs = tf.constant(rng.integers(0, 5, size=(BATCH, 4)), tf.int32)  # tokens 0..4
  state = model.initial_state(BATCH)

  outputs, final = model.unroll(inputs, state)
  h = final[-1][0].numpy()
  np.testing.assert_allclose(outputs[:, -1].numpy(), h @ embeddings.T + bias,
                             rtol=1e-5, atol=1e-5)

  # Row 7 is never an input: changing it leaves h alone and moves logit 7 only.
  new_row = rng.normal(size=(6,)).astype(np.float32)
  changed = embeddings.copy()
  changed[7] = new_row
  model.encoder.embeddings.assign(changed)
  new_outputs, new_final = model.unroll(inputs, state)
  np.testing.assert_array_equal(new_final[-1][0].numpy(), h)
  np.testing.assert_allclose(new_outputs[:, -1, 7].numpy(), h @ new_row + bias[7],
                             rtol=1e-5, atol=1e-5)
  others = [j for j in range(10) if j != 7]
  np.testing.assert_allclose(new_outputs.numpy()[..., others],
                             outputs.numpy()[..., others], rtol=1e-6, atol=1e-6)

  # The output path trains the shared matrix: d logit_7(T) / d E[7] = sum_b h_b.
  with tf.GradientTape() as tape:
    logits, _ = model.unroll(inputs, state)
    loss = tf.reduce_sum(logits[:, -1, 7])
  gradient = tf.convert_to_tensor(tape.gradient(loss, model.encoder.embeddings))
  np.testing.assert_allclose(gradient.numpy()[7], h.sum(axis=0), rtol=1e-5,
                             atol=1e-5)


def test_tied_embeddings_reject_mismatched_sizes_and_real_inputs():
  with pytest.raises(ConfigurationError, match='embedding_dim'):
    RecurrentModel(input_vocab_size=10, output_dim=10, units=6, embedding_dim=4,
                   tie_embeddings=True)
  with pytest.raises(ConfigurationError, match='tie_embeddings'):
    RecurrentModel(input_dim=3, output_dim=10, units=6, tie_embeddings=True)


@pytest.mark.parametrize('num_layers', [1, 2])
def test_forget_gate_bias_sets_exactly_the_forget_slice(num_layers):
  units, value = 4, 2.5
  keras.utils.set_random_seed(0)
  model = RecurrentModel(input_dim=INPUT_DIM, output_dim=1, cell='lstm', units=units,
                         num_layers=num_layers, forget_bias=value)
  model.build_for(tf.zeros([1, 1, INPUT_DIM]))
  expected = np.concatenate([np.zeros(units), np.full(units, value),
                             np.zeros(2 * units)]).astype(np.float32)
  for layer in model.core:
    np.testing.assert_array_equal(layer.cell.bias.numpy(), expected)

  # Semantics, independent of where Keras keeps the slice: with zero weight
  # matrices, i = o = sigmoid(0) = 1/2 and g = tanh(0) = 0, so one step gives
  # c' = sigmoid(value) * c and h' = tanh(c') / 2 only if the slice is the forget gate.
  for layer in model.core:
    layer.cell.kernel.assign(tf.zeros_like(layer.cell.kernel))
    layer.cell.recurrent_kernel.assign(tf.zeros_like(layer.cell.recurrent_kernel))
  rng = np.random.default_rng(1)
  state = _random_state(model, rng)
  inputs = tf.constant(rng.normal(size=(BATCH, 1, INPUT_DIM)).astype(np.float32))
  _, final = model.unroll(inputs, state)
  forget = 1.0 / (1.0 + np.exp(-value))
  for (h_new, c_new), (_, c_old) in zip(final, state):
    np.testing.assert_allclose(c_new.numpy(), forget * c_old.numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(h_new.numpy(), 0.5 * np.tanh(forget * c_old.numpy()),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('cell', ['lstm', 'gru', 'simple_rnn'])
def test_init_scale_bounds_every_weight_matrix(cell):
  scale = 0.01
  keras.utils.set_random_seed(0)
  token_model = RecurrentModel(input_vocab_size=12, output_dim=12, cell=cell,
                               units=8, num_layers=2, init_scale=scale)
  token_model.build_for(tf.zeros([1, 1], tf.int32))
  real_model = RecurrentModel(input_dim=INPUT_DIM, embedding_dim=8, output_dim=3,
                              cell=cell, units=8, init_scale=scale)
  real_model.build_for(tf.zeros([1, 1, INPUT_DIM]))
  for model, matrices in ((token_model, 2 + 2 * 2), (real_model, 2 + 2)):
    # (A GRU bias is 2-D with reset_after=True; biases are not weight matrices.)
    weights = [v.numpy() for v in model.trainable_variables
               if 'bias' not in v.path]
    assert len(weights) == matrices  # encoder + head + 2 per recurrent layer
    for w in weights:
      assert np.max(np.abs(w)) <= scale
      # Drawn at that scale, not smaller: Glorot/orthogonal/uniform(0.05) all exceed.
      assert np.max(np.abs(w)) > 0.8 * scale


@pytest.mark.parametrize('kwargs,parameter,value', [
    (dict(cell='transformer'), 'cell', "'transformer'"),
    (dict(readout='middle'), 'readout', "'middle'"),
    (dict(units=0), 'units', '0'),
    (dict(units=-3), 'units', '-3'),
    (dict(units=2.5), 'units', '2.5'),
    (dict(num_layers=0), 'num_layers', '0'),
])
def test_invalid_settings_name_the_parameter(kwargs, parameter, value):
  arguments = dict(input_dim=INPUT_DIM, output_dim=2)
  arguments.update(kwargs)
  with pytest.raises(ConfigurationError) as raised:
    RecurrentModel(**arguments)
  message = str(raised.value)
  assert f'RecurrentModel.{parameter}' in message
  assert value in message


def test_unroll_traces_once_for_any_window_length():
  model = _real_input_model('lstm', 2)
  traces = []
  signature = [tf.TensorSpec([BATCH, None, INPUT_DIM], tf.float32),
               model.state_spec(BATCH), tf.TensorSpec([None], tf.float32)]

  @tf.function(input_signature=signature)
  def unroll(inputs, state, scale):
    traces.append(1)  # Python side effect: runs once per trace.
    # Both paths in one function: the Keras layers and the scaled tf.scan.
    return (model.unroll(inputs, state),
            model.unroll(inputs, state, state_grad_scale=scale))

  rng = np.random.default_rng(0)
  for length in (1, 3, 17):
    inputs = tf.constant(
        rng.normal(size=(BATCH, length, INPUT_DIM)).astype(np.float32))
    state = _random_state(model, rng)
    plain, scaled = unroll(inputs, state, tf.fill([length], 0.5))
    eager = model.unroll(inputs, state)
    assert plain[0].shape == scaled[0].shape == (BATCH, length, OUTPUT_DIM)
    assert_nests_close(plain, eager, rtol=1e-5, atol=1e-6)
    assert_nests_close(scaled, eager, rtol=1e-5, atol=1e-6)
  assert len(traces) == 1


def test_unroll_without_readout_returns_the_same_state_and_no_outputs():
  model = RecurrentModel(output_dim=50, input_vocab_size=50, units=6, num_layers=2,
                         cell='lstm')
  inputs = tf.constant(np.random.RandomState(0).randint(0, 50, size=(3, 7)))
  model.build_for(inputs)
  state = model.initial_state(3)
  outputs, with_head = model.unroll(inputs, state)
  none, without_head = model.unroll(inputs, state, readout=False)
  assert none is None and outputs.shape == (3, 7, 50)
  for a, b in zip(tf.nest.flatten(with_head), tf.nest.flatten(without_head)):
    np.testing.assert_array_equal(a.numpy(), b.numpy())

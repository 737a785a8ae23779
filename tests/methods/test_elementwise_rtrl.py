"""Element-wise RTRL (Zucchet et al. 2023) against the gradients it claims.

Its claim: for a recurrence diagonal per unit (the LRU's 2 × 2 real blocks, a
diagonal real cell's 1 × 1) the influence of each weight on its own unit alone
is RTRL's whole influence, so the estimate is full BPTT's (a plain
``GradientTape`` over the whole sequence), for per-step and terminal
losses (and RTRL's, on the per-step stream), and the windowed updates of a stream follow full
backpropagation from the stream's start across calls. What it refuses (other
cells; a stack and an encoder unless ``approximate``, then Zucchet et al.'s
rule) is tested in test_elementwise_rtrl_refusals.py.
"""

import functools
import math
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit import xla
from tfcredit.methods import RTRL, ElementwiseRTRL
from tfcredit.models.lru import LRUCell
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.tasks import base as task_base
from tfcredit.tasks.synthetic import AddingTask, CopyTask
from tfcredit.testing import built_optimizer, clean_gin, tiny_model  # noqa: F401

from tiers import slow_except

ROWS, UNITS, INPUTS, OUTPUTS = 3, 4, 3, 2


class RealStream(task_base.Task):
  """A stream of real features with a per-step squared error: the LRU reads
  its inputs directly (no encoder), the case where the rule is exact."""

  name = 'real_stream'
  regime = task_base.STREAM
  readout = task_base.PER_STEP

  def model_spec(self):
    return {'input_dim': INPUTS, 'output_dim': OUTPUTS, 'readout': 'per_step'}

  def segment_spec(self):
    return (tf.TensorSpec([None, None, INPUTS], tf.float32),
            tf.TensorSpec([None, None, OUTPUTS], tf.float32))

  def losses(self, outputs, targets):
    return 0.5 * tf.reduce_sum(tf.square(outputs - targets), axis=-1)

  def get_config(self):
    return {}


STREAM = RealStream()
_DATA = np.random.default_rng(0)
_INPUTS = _DATA.standard_normal([ROWS, 40, INPUTS]).astype(np.float32)
_TARGETS = _DATA.standard_normal([ROWS, 40, OUTPUTS]).astype(np.float32)


def _stream(start, length):
  return (tf.constant(_INPUTS[:, start:start + length]),
          tf.constant(_TARGETS[:, start:start + length]))


def _model(task=STREAM, seed=0, units=UNITS, **kwargs):
  kwargs.setdefault('cell', LRUCell)
  return tiny_model(task, seed=seed, units=units, **kwargs)


def _method(model, task=STREAM, cls=ElementwiseRTRL, optimizer=None, **kwargs):
  kwargs.setdefault('window', 4)
  if cls is ElementwiseRTRL:  # XLA's compile takes seconds: one test has it.
    kwargs.setdefault('jit_compile', False)
  return cls(model=model, task=task,
             optimizer=optimizer or built_optimizer(model),
             batch_size=ROWS, **kwargs)


def _dense(gradients):
  return [tf.convert_to_tensor(g).numpy() for g in gradients]


def _close(actual, expected, atol=2e-6):
  for a, b in zip(_dense(actual), _dense(expected)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=atol)


def _tape_gradient(model, task, segment, stopped=()):
  """A plain ``GradientTape`` over the whole segment from the zero state, one
  step at a time; the states of the layers in ``stopped`` are cut from the
  gradient between steps (their recurrence carries no credit). The loss:
  ``(1/B) Σ_t ℓ_t``, or the terminal loss's batch mean."""
  inputs, targets = segment
  rows = int(inputs.shape[0])
  state = model.initial_state(rows)
  with tf.GradientTape() as tape:
    outputs = []
    for t in range(inputs.shape[1]):
      output, state = model.unroll(inputs[:, t:t + 1], state, training=True)
      outputs.append(output)
      state = tuple(tuple(tf.stop_gradient(s) for s in layer)
                    if index in stopped else layer
                    for index, layer in enumerate(state))
    if task.readout == task_base.TERMINAL:
      loss = tf.reduce_mean(task.losses(outputs[-1], targets))
    else:
      loss = tf.reduce_sum(task.losses(tf.concat(outputs, 1), targets)) / rows
  return _dense(tape.gradient(loss, model.trainable_variables))


# ------------------------------------------------------------------ exactness


@functools.lru_cache(maxsize=None)
def _lru_problem(task_name):
  """``(model, task, segment)``: one LRU on the per-step stream (11 steps),
  the adding task (terminal loss) or the copy task's one-hot symbols (episodic,
  per step, 9 steps); estimates leave the weights as they are."""
  task, segment = {
      'stream': (STREAM, _stream(0, 11)),
      'adding': (AddingTask(sequence_length=9, seed=1), None),
      'copy': (CopyTask(sequence_length=3, memory_length=3, seed=1,
                        one_hot_inputs=True), None)}[task_name]
  if segment is None:
    inputs, targets = task.batch('train', 0, 0, ROWS)
    segment = (tf.constant(inputs), tf.constant(targets))
  return _model(task), task, segment


@functools.lru_cache(maxsize=None)
def _lru_estimates(task_name):
  """``(estimate, full BPTT's tape gradient, RTRL's estimate or None)`` on
  ``_lru_problem``'s model (RTRL, exact and slow, on the per-step stream
  only)."""
  model, task, segment = _lru_problem(task_name)
  state = model.initial_state(ROWS)
  method = _method(model, task)
  assert method.exact and method.approximated == ()
  estimate = _dense(method.estimate_gradients(segment, state)[0])
  rtrl = None
  if task is STREAM:  # A one-off reference: eager, faster than its trace.
    rtrl = _dense(_method(model, task, cls=RTRL, use_tf_function=False)
                  .estimate_gradients(segment, state)[0])
  return estimate, _tape_gradient(model, task, segment), rtrl


@pytest.mark.parametrize('task_name',
                         slow_except(['stream', 'adding', 'copy'], 'adding'),
                         ids=['per_step', 'terminal', 'episodic_per_step'])
def test_the_estimate_is_full_bptts_and_rtrls_gradient(task_name):
  estimate, tape, rtrl = _lru_estimates(task_name)
  _close(estimate, tape)
  if rtrl is not None:
    _close(estimate, rtrl)
  assert max(np.abs(g).max() for g in tape) > 1e-3  # Not vacuous.
  # The recurrent weights carry a gradient through time: a one-step
  # truncation would differ.
  assert all(np.abs(g).max() > 1e-4 for g in estimate[:5])


def test_updates_follow_full_backpropagation_across_windows_and_calls():
  """Weights held still (``learning_rate=0``), two calls of two windows: each
  window's applied gradient is its loss backpropagated through every earlier
  step of the stream, the first call's included (the influence is carried
  across calls)."""
  window, length = 3, 6
  model = _model()
  optimizer = built_optimizer(model, learning_rate=0.0)
  method = _method(model, optimizer=optimizer, window=window,
                   windows_per_call=2)
  variables = model.trainable_variables
  recorded = [tf.Variable(tf.zeros([4] + v.shape)) for v in variables]
  count = tf.Variable(0)
  apply = method.apply_gradients

  def recording(gradients, **kwargs):
    for record, gradient in zip(recorded, gradients):
      record[count].assign(tf.convert_to_tensor(gradient))
    count.assign_add(1)
    return apply(gradients, **kwargs)

  method.apply_gradients = recording
  method.on_epoch_start(0)
  state = model.initial_state(ROWS)
  for start in (0, length):
    state, metrics = method.train_segment(_stream(start, length), state)
    assert float(metrics['updates']) == 2
  assert int(count.numpy()) == 4
  inputs, targets = _stream(0, 2 * length)
  for index, end in enumerate(range(window, 2 * length + 1, window)):
    with tf.GradientTape() as tape:
      outputs, _ = model.unroll(inputs[:, :end], model.initial_state(ROWS),
                                training=True)
      objective = tf.reduce_sum(STREAM.losses(
          outputs[:, end - window:end], targets[:, end - window:end])) / (
              ROWS * window)
    expected = _dense(tape.gradient(objective, variables))
    _close([r[index] for r in recorded], expected)
  # The last window's credit reaches the first call's steps: without them
  # (the state cut at the call's start) the gradient differs.
  cut = model.unroll(inputs[:, :length], model.initial_state(ROWS))[1]
  with tf.GradientTape() as tape:
    outputs, _ = model.unroll(inputs[:, length:], cut, training=True)
    objective = tf.reduce_sum(STREAM.losses(outputs[:, -window:],
                                            targets[:, -window:])) / (
                                                ROWS * window)
  truncated = _dense(tape.gradient(objective, variables))
  assert max(np.abs(a - b.numpy()[3]).max()
             for a, b in zip(truncated, recorded)) > 1e-4


def test_a_diagonal_real_cell_is_exact_too():
  """Nothing is LRU-specific: ``h' = tanh(x W + u ⊙ h + b)`` (units of one
  entry) is found diagonal and its estimate is full BPTT's."""

  class DiagonalCell(keras.layers.Layer):

    def __init__(self, units=UNITS, **kwargs):
      super().__init__(**kwargs)
      self.units = units
      self.state_size = units
      self.output_size = units

    def build(self, input_shape):
      normal = keras.initializers.RandomNormal(stddev=0.7)
      self.w = self.add_weight(shape=(input_shape[-1], self.units),
                               initializer=normal, name='w')
      self.u = self.add_weight(shape=(self.units,), initializer=normal,
                               name='u')
      self.b = self.add_weight(shape=(self.units,), initializer=normal,
                               name='b')
      super().build(input_shape)

    def call(self, inputs, states, training=False):
      del training
      h = tf.tanh(inputs @ self.w + self.u * states[0] + self.b)
      return h, [h]

  keras.utils.set_random_seed(0)
  model = RecurrentModel(cell=DiagonalCell(), **STREAM.model_spec())
  model.build_for(tf.zeros([1, 1, INPUTS]))
  method = _method(model)
  assert [(p.layer.k, p.depth) for p in method.pieces] == [
      (1, INPUTS), (1, 1), (1, 1)]
  segment = _stream(0, 9)
  _close(method.estimate_gradients(segment, model.initial_state(ROWS))[0],
         _tape_gradient(model, STREAM, segment))


# ------------------------------------------------ what is stored, what it costs


def test_each_lru_weight_is_stored_with_its_unit_and_the_readout_is_not():
  model = _model(units=5)
  method = _method(model)
  names = [v.name for v in model.trainable_variables]
  stored = {names[p.variable]: (p.layer.k, p.depth, p.layer.n, p.identity)
            for p in method.pieces}
  # ν, θ, γ: one weight per unit; B_re, B_im: a column of INPUTS per unit;
  # each unit is (h_re[i], h_im[i]): k = 2, laid out as the variables already
  # are (unit last), so no gather.
  assert stored == {'nu_log': (2, 1, 5, True), 'theta_log': (2, 1, 5, True),
                    'gamma_log': (2, 1, 5, True),
                    'B_re': (2, INPUTS, 5, True),
                    'B_im': (2, INPUTS, 5, True)}
  np.testing.assert_array_equal(method.layers[0].entries,
                                np.stack([np.arange(5), 5 + np.arange(5)], 1))
  # rows × k × (2·inputs + 3) × units: linear in the width at fixed inputs.
  floats, formula = method.influence_size(ROWS)
  assert floats == ROWS * 2 * (2 * INPUTS + 3) * 5
  assert formula.endswith(f'= {ROWS} × 2 × {2 * INPUTS + 3} × 5')
  wider = _method(_model(units=10))
  assert wider.influence_size(ROWS)[0] == 2 * floats


@pytest.mark.slow  # The whole-batch Jacobian reference.
def test_the_whole_batch_step_agrees():
  """Without the per-row pass (the whole batch's tape, as for a model with
  dropout): the same estimate. (XLA's compiled step, the default, is checked
  against the tape in test_the_pages_python_example_runs_and_is_exact.)"""
  model, task, segment = _lru_problem('stream')
  estimate, tape, _ = _lru_estimates('stream')
  whole_batch = _method(model, task)
  assert whole_batch.per_row and not whole_batch.jit_compile
  whole_batch.per_row = False
  _close(whole_batch.estimate_gradients(segment, model.initial_state(ROWS))[0],
         estimate)
  _close(estimate, tape)


# ------------------------------------------------------- checkpoints, training


@pytest.mark.slow  # Whole tfcredit.train runs, interrupted and resumed.
def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
  def build():
    model = _model()
    optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.05)
    return model, optimizer, _method(model, optimizer=optimizer, window=3,
                                     windows_per_call=2)

  def calls(method, state, starts):
    for start in starts:
      state, _ = method.train_segment(_stream(start, 6), state)
    return state

  model, optimizer, method = build()
  method.on_epoch_start(0)
  state = calls(method, model.initial_state(ROWS), (0, 6))
  path = tf.train.Checkpoint(model=model, optimizer=optimizer,
                             method=method).save(str(tmp_path / 'ckpt'))
  carried = [s.numpy() for s in tf.nest.flatten(state)]
  final = calls(method, state, (12, 18))

  model2, optimizer2, method2 = build()
  tf.train.Checkpoint(model=model2, optimizer=optimizer2,
                      method=method2).restore(path).assert_existing_objects_matched()
  influence = lambda m: [v.numpy() for v in tf.nest.flatten(m.influence)]
  assert all(np.any(v) for v in influence(method2))
  method2.on_epoch_start(0)  # A resumed epoch keeps the influence.
  state2 = tf.nest.pack_sequence_as(model2.initial_state(ROWS),
                                    [tf.constant(c) for c in carried])
  final2 = calls(method2, state2, (12, 18))
  _close(model2.trainable_variables, model.trainable_variables, atol=1e-6)
  _close(tf.nest.flatten(final2), tf.nest.flatten(final))
  _close(influence(method2), influence(method), atol=1e-5)
  method2.on_epoch_start(1)  # A new epoch starts from zero influence.
  assert not any(np.any(v) for v in influence(method2))


@pytest.mark.slow  # A whole tfcredit.train run with its export.
def test_trains_and_exports_through_tfcredit_train_with_gin(clean_gin, tmp_path):
  tfcredit.config.parse(['testing/tiny.gin'], [
      'RecurrentModel.cell = @LRUCell', 'RecurrentModel.units = 6',
      'train.method = @ElementwiseRTRL', 'ElementwiseRTRL.window = 5',
      # XLA's step: test_the_pages_python_example_runs_and_is_exact.
      'ElementwiseRTRL.jit_compile = False'])
  result = tfcredit.train(str(tmp_path / 'run'),
                          export_dir=str(tmp_path / 'export'))
  assert math.isfinite(result['valid_loss'])
  assert 'serving_default' in tf.saved_model.load(
      result['saved_model']).signatures


@pytest.mark.slow  # The docs page's example, run as written.
def test_the_pages_python_example_runs_and_is_exact(monkeypatch):
  """docs/methods/elementwise_rtrl.md's python block, as written: it asserts
  the estimate is full BPTT's, and its ``train_segment`` moves the weights.
  Outside the suite's ``TFCREDIT_AUTO_XLA=0`` (tests/conftest.py), so the
  default compiles, as a user's run does."""
  monkeypatch.delenv(xla.ENVIRONMENT, raising=False)
  page = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'methods' / (
      'elementwise_rtrl.md')
  blocks = re.findall(r'```python\n(.*?)```', page.read_text(encoding='utf-8'),
                      flags=re.S)
  assert len(blocks) == 1
  namespace = {}
  exec(compile(blocks[0], str(page), 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['floats'] == 4 * 2 * (2 * 2 + 3) * 8
  assert float(namespace['metrics']['updates']) == 1
  assert max(np.abs(np.asarray(g)).max() for g in namespace['full']) > 1e-4
  # The page's method compiles each step with XLA (the default): at the
  # trained weights (the same shapes: no new trace) its estimate is a plain
  # tape's over the whole sequence, to the tolerance of the uncompiled tests.
  method, model, task, segment = (namespace[k] for k in
                                  ('method', 'model', 'task', 'segment'))
  assert method.jit_compile and method.per_row
  rows = int(segment[0].shape[0])
  _close(method.estimate_gradients(segment, model.initial_state(rows))[0],
         _tape_gradient(model, task, segment))

"""Tests of tfcredit.methods.dni (DNI with layer-wise / neuron-wise synthesizers).

References are written here: losses spelt out, Jacobians taken explicitly with
``tape.jacobian``, the true future gradient of a linear system summed in numpy.
The method's own ``objective`` or window functions are never reused.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.errors import ConfigurationError
from tfcredit.methods import DNI, TruncatedBPTT
from tfcredit.models import LayerwiseSynthesizer, NeuronwiseSynthesizer
from tfcredit.tasks import base as task_base
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.training import schedules
from tfcredit.testing import (TINY_CONFIG, built_optimizer, clean_gin,  # noqa: F401
                              configure_tiny, configured_components, tiny_model)

BATCH = 4


def _stream_segment(task, length, batch=BATCH, start=0):
  data = task.stream('train', batch)
  return (tf.constant(data[:, start:start + length]),
          tf.constant(data[:, start + 1:start + length + 1]))


def _flat(state):
  return tf.concat(tf.nest.flatten(state), axis=-1)


def _dni(task, model, optimizer, **kwargs):
  kwargs.setdefault('batch_size', BATCH)
  return DNI(model=model, task=task, optimizer=optimizer, **kwargs)


# ------------------------------------------------------------ equals truncated BPTT
def test_zero_synthesizer_first_update_equals_truncated_bptt_exactly():
  # Both synthesizers (the neuron-wise one with its input noise) start at zero.
  task = MarkovLanguageTask(train_length=200, eval_length=50)
  window = 5
  segment = _stream_segment(task, window)  # One window, with a future after it.
  results = []
  for make in (
      # Uncompiled, as DNI runs: exact equality needs the same arithmetic.
      lambda m, o: TruncatedBPTT(model=m, task=task, optimizer=o, window=window,
                                 clip_norm=0.5, jit_compile=False,
                                 use_tf_function=False),
      lambda m, o: _dni(task, m, o, window=window, sg_scale=1.0, clip_norm=0.5,
                        synthesizer=LayerwiseSynthesizer(hidden_layers=1)),
      lambda m, o: _dni(task, m, o, window=window, sg_scale=1.0, clip_norm=0.5,
                        synthesizer=NeuronwiseSynthesizer(hidden_units=5))):
    model = tiny_model(task, seed=3, cell='gru', num_layers=2)
    optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.05)
    method = make(model, optimizer)
    state, metrics = method.train_segment(segment, model.initial_state(BATCH))
    results.append(([v.numpy() for v in model.trainable_variables],
                    [s.numpy() for s in tf.nest.flatten(state)], metrics))
  tbptt_weights, tbptt_state, tbptt_metrics = results[0]
  for dni_weights, dni_state, dni_metrics in results[1:]:
    for a, b in zip(tbptt_weights, dni_weights):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(tbptt_state, dni_state):
      np.testing.assert_array_equal(a, b)
    assert float(dni_metrics['loss_sum']) == float(tbptt_metrics['loss_sum'])
    assert (float(dni_metrics['grad_norm_sum']) ==
            float(tbptt_metrics['grad_norm_sum']))
    # The synthesizer did learn (its target is the real gradient at s_0).
    assert float(dni_metrics['synthesizer_loss_sum']) > 0
    assert float(dni_metrics['prediction_squares']) == 0


# --------------------------------------------------------------- injected term
def test_model_gradient_is_truncated_gradient_plus_injected_term():
  task = MarkovLanguageTask(train_length=200, eval_length=50, vocabulary_size=6)
  window, batch, sg_scale = 3, 2, 0.3
  segment = _stream_segment(task, window, batch=batch, start=7)
  model = tiny_model(task, seed=5, units=3)
  optimizer = built_optimizer(model, keras.optimizers.SGD, learning_rate=1.0)
  method = _dni(task, model, optimizer, window=window, sg_scale=sg_scale,
                batch_size=batch)
  rng = np.random.default_rng(0)
  for variable in method.synthesizer.trainable_variables:
    variable.assign(rng.normal(0, 1, variable.shape).astype(np.float32))
  kernel, bias = [v.numpy() for v in method.synthesizer.output_layer.weights]
  state = tuple(tuple(tf.constant(rng.normal(size=(batch, 3)), tf.float32)
                      for _ in layer) for layer in model.initial_state(batch))
  variables = model.trainable_variables
  before = [v.numpy() for v in variables]

  inputs, targets = segment
  with tf.GradientTape(persistent=True) as tape:
    outputs, final = model.unroll(inputs, state, training=True)
    log_probabilities = tf.nn.log_softmax(outputs, axis=-1)
    loss_sum = -tf.reduce_sum(tf.gather(log_probabilities, targets, batch_dims=2))
    objective = loss_sum / (batch * window)
    final_flat = tf.reshape(_flat(final), [-1])
  truncated = [tf.convert_to_tensor(g) for g in tape.gradient(objective, variables)]
  delta = _flat(final).numpy() @ kernel + bias  # The linear synthesizer at s_K.
  expected = []
  for variable, gradient in zip(variables, truncated):
    jacobian = tape.jacobian(final_flat, variable,
                             experimental_use_pfor=False)  # [B·N, *shape]
    if jacobian is None:  # The head does not shape the state.
      injected = np.zeros(variable.shape)
    else:
      jacobian = tf.convert_to_tensor(jacobian).numpy().reshape(
          final_flat.shape[0], -1)
      injected = (jacobian.T @ delta.reshape(-1)).reshape(variable.shape)
    expected.append(gradient.numpy() + sg_scale * injected / batch)
  del tape
  # The synthesizer's target at s_0: B·∂/∂s_0 [objective + sg_scale·⟨δ̂, s_K⟩ / B].
  start = tf.nest.flatten(state)
  with tf.GradientTape() as tape:
    tape.watch(start)
    outputs, final = model.unroll(inputs, state, training=True)
    log_probabilities = tf.nn.log_softmax(outputs, axis=-1)
    objective = -tf.reduce_sum(tf.gather(log_probabilities, targets,
                                         batch_dims=2)) / (batch * window)
    bootstrapped = objective + sg_scale * tf.reduce_sum(delta * _flat(final)) / batch
  target = batch * tf.concat(tape.gradient(bootstrapped, start), axis=-1).numpy()
  prediction = _flat(state).numpy() @ kernel + bias

  _, metrics = method.train_segment(segment, state)
  applied = [b - v.numpy() for b, v in zip(before, variables)]  # SGD, rate 1.
  for got, want in zip(applied, expected):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
  assert max(np.abs(w - t.numpy()).max() for w, t in zip(expected, truncated)) > 1e-3
  for key, value in (
      ('synthesizer_loss_sum', np.sum((prediction - target)**2) / batch),
      ('prediction_target_dot', np.sum(prediction * target)),
      ('prediction_squares', np.sum(prediction**2)),
      ('target_squares', np.sum(target**2))):
    np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-4, err_msg=key)
  summaries = method.summaries({k: v.numpy() for k, v in metrics.items()})
  np.testing.assert_allclose(summaries['cosine'], np.sum(prediction * target) / (
      np.linalg.norm(prediction) * np.linalg.norm(target)), rtol=1e-4)


# ------------------------------------------------------------------- the target
class _LinearCell(keras.layers.Layer):
  """``s_t = s_{t-1} A + x_t C`` (row vectors); state and output are ``s``."""

  def __init__(self, transition, input_map, **kwargs):
    super().__init__(**kwargs)
    self.transition_init = transition
    self.input_init = input_map
    self.state_size = transition.shape[0]
    self.output_size = transition.shape[0]

  def build(self, input_shape):
    del input_shape
    self.transition = self.add_weight(
        shape=self.transition_init.shape,
        initializer=keras.initializers.Constant(self.transition_init), name='a')
    self.input_map = self.add_weight(
        shape=self.input_init.shape,
        initializer=keras.initializers.Constant(self.input_init), name='c')
    super().build(None)

  def call(self, inputs, states, training=False):
    del training
    state = states[0] if isinstance(states, (list, tuple)) else states
    new_state = tf.matmul(state, self.transition) + tf.matmul(inputs, self.input_map)
    return new_state, [new_state]


class _QuadraticStateTask(task_base.Task):
  """Stream of Gaussian inputs; per-step loss ``½‖s_t‖²`` (targets unused)."""

  name = 'quadratic_state'
  regime = task_base.STREAM

  def __init__(self, size):
    self.size = size

  def model_spec(self):
    return {'input_dim': self.size, 'output_dim': self.size,
            'readout': task_base.PER_STEP}

  def segment_spec(self):
    return (tf.TensorSpec([None, None, self.size], tf.float32),
            tf.TensorSpec([None, None], tf.float32))

  def losses(self, outputs, targets):
    del targets
    return 0.5 * tf.reduce_sum(tf.square(outputs), axis=-1)

  def get_config(self):
    return {'size': self.size}


@pytest.mark.slow  # Trains until the synthesizer converges.
@pytest.mark.parametrize('use_synthetic', [True, False],
                         ids=['synthetic_phase', 'real_phase'])
def test_linear_synthesizer_converges_to_the_true_future_gradient(use_synthetic):
  # In a real phase the synthesizer keeps learning toward the same target (the
  # model does not move here: its learning rate is 0). With sg_scale = 1 the bootstrap's fixed point is the undiscounted future
  # gradient in the objective's units: for loss ½‖s‖²/K per step and zero-mean
  # inputs, E[∂ future / ∂s_K | s_K] = s_K P / K with P = Σ_{j≥1} A^j (A^j)ᵀ.
  size, window, batch = 4, 2, 64
  rng = np.random.default_rng(0)
  transition = rng.normal(size=(size, size))
  transition *= 0.8 / np.max(np.abs(np.linalg.eigvals(transition)))
  transition = transition.astype(np.float32)
  task = _QuadraticStateTask(size)
  model = tfcredit.RecurrentModel(
      cell=_LinearCell(transition, np.eye(size, dtype=np.float32)), units=size,
      identity_head=True, **task.model_spec())
  model.build_for(tf.zeros([batch, 1, size]))
  optimizer = built_optimizer(model, keras.optimizers.SGD, learning_rate=0.0)
  method = DNI(model=model, task=task, optimizer=optimizer, window=window,
               sg_scale=1.0, windows_per_call=50, use_synthetic=use_synthetic,
               synthesizer_optimizer=keras.optimizers.Adam(learning_rate=0.01))
  state = model.initial_state(batch)
  targets = tf.zeros([batch, window * 50])
  for call in range(60):
    inputs = tf.constant(rng.normal(size=(batch, window * 50, size)), tf.float32)
    state, metrics = method.train_segment((inputs, targets), state)
  power, future = np.eye(size), np.zeros((size, size))
  for _ in range(200):
    power = power @ transition
    future += power @ power.T
  states = rng.normal(size=(256, size)).astype(np.float32)
  predicted, _ = method.synthesizer(tf.constant(states), tf.zeros([256, size, 0]))
  true = states @ future / window
  predicted = predicted.numpy()
  cosine = np.sum(predicted * true) / np.sqrt(np.sum(predicted**2) * np.sum(true**2))
  ratio = np.linalg.norm(predicted) / np.linalg.norm(true)
  # Without the bootstrap (the window's gradient only) the ratio would be 0.66 here,
  # with sg_scale = 0.1's fixed point 0.68: the norm pins the target down.
  assert cosine > 0.9, cosine
  assert 0.85 < ratio < 1.15, ratio
  assert float(metrics['synthetic_phase']) == float(use_synthetic)


# ------------------------------------------------- phases, memory, one trace
def test_phase_flips_without_retracing_and_real_phase_is_truncated_bptt():
  task = MarkovLanguageTask(train_length=400, eval_length=100)
  window = 4
  alternation = schedules.AlternatingRestarts(period_epochs=1, start_phase='real')
  models, methods = [], []
  for make in (
      # Uncompiled, as DNI runs: exact equality needs the same arithmetic.
      lambda m, o: TruncatedBPTT(model=m, task=task, optimizer=o, window=window,
                                 windows_per_call=3, jit_compile=False,
                                 use_tf_function=False),
      lambda m, o: _dni(task, m, o, window=window, windows_per_call=3,
                        synthesizer=NeuronwiseSynthesizer(hidden_units=4),
                        use_synthetic=alternation, sg_scale=1.0)):
    model = tiny_model(task, seed=1)
    models.append(model)
    methods.append(make(model, built_optimizer(model, keras.optimizers.Adam,
                                               learning_rate=0.01)))
  tbptt, dni = methods
  # Epoch 0 is real: DNI trains exactly as truncated BPTT, over lengths 12 and 7.
  states = [m.initial_state(BATCH) for m in models]
  dni.on_epoch_start(0)
  for start, length in ((0, 12), (12, 7)):
    segment = _stream_segment(task, length, start=start)
    states = [method.train_segment(segment, s)[0] for method, s in zip(methods, states)]
  for a, b in zip(models[0].trainable_variables, models[1].trainable_variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  memory = dni.memory.numpy()
  assert memory.shape == (BATCH, 16, 4) and np.abs(memory).max() > 0
  dni.on_epoch_end()
  assert np.all(dni.memory.numpy() == 0)
  # Epoch 1 is synthetic: the updates now differ (the synthesizer has learned).
  dni.on_epoch_start(1)
  _, metrics = dni.train_segment(_stream_segment(task, 12), models[1].initial_state(BATCH))
  tbptt.train_segment(_stream_segment(task, 12), models[0].initial_state(BATCH))
  assert float(metrics['synthetic_phase']) == 1.0
  assert max(np.abs(a.numpy() - b.numpy()).max() for a, b in
             zip(models[0].trainable_variables, models[1].trainable_variables)) > 0
  assert dni.trace_counts['train_segment'] == 1


def test_estimate_is_window_length_times_the_training_gradient():
  task = MarkovLanguageTask(train_length=200, eval_length=50)
  window = 4
  model = tiny_model(task, seed=2)
  optimizer = built_optimizer(model, keras.optimizers.SGD, learning_rate=1.0)
  method = _dni(task, model, optimizer, window=window, sg_scale=0.5,
                synthesizer_learning_rate=0.0)
  rng = np.random.default_rng(4)
  for variable in method.synthesizer.trainable_variables:
    variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
  segment = _stream_segment(task, window)
  method.estimate_gradients(_stream_segment(task, 2 * window + 1, start=5),
                            model.initial_state(BATCH))
  estimate, _ = method.estimate_gradients(segment, model.initial_state(BATCH))
  assert method.trace_counts['estimate_gradients'] == 1
  before = [v.numpy() for v in model.trainable_variables]
  method.train_segment(segment, model.initial_state(BATCH))
  for b, v, g in zip(before, model.trainable_variables, estimate):
    np.testing.assert_allclose(window * (b - v.numpy()), g.numpy(), rtol=1e-4,
                               atol=1e-6)


# ------------------------------------------------------------- configuration
def test_bad_configuration_is_refused_with_the_parameter_named():
  task = MarkovLanguageTask(train_length=200, eval_length=50)
  model = tiny_model(task, seed=0)
  optimizer = built_optimizer(model)
  make = lambda **kw: DNI(model=model, task=task, optimizer=optimizer, **kw)
  with pytest.raises(ConfigurationError, match='DNI.window'):
    make(window=0)
  with pytest.raises(ConfigurationError, match='DNI.sg_scale'):
    make(sg_scale=-1.0)
  with pytest.raises(ConfigurationError, match='DNI.batch_size'):
    make(synthesizer=NeuronwiseSynthesizer())
  with pytest.raises(ConfigurationError, match='DNI.use_synthetic'):
    make(use_synthetic='sometimes')
  with pytest.raises(ConfigurationError, match='DNI.synthesizer'):
    make(synthesizer='linear')


def test_alternation_must_also_be_the_lr_schedule():
  task = MarkovLanguageTask(train_length=200, eval_length=50)
  model = tiny_model(task, seed=0)
  method = DNI(model=model, task=task, optimizer=built_optimizer(model),
               use_synthetic=schedules.AlternatingRestarts)
  with pytest.raises(ConfigurationError, match='train.lr_schedule'):
    method.bind_schedule(schedules.CosineRestarts(base=1.0))
  with pytest.raises(ConfigurationError, match='train.lr_schedule'):
    method.bind_schedule(schedules.AlternatingRestarts(period_epochs=2.0))
  with pytest.raises(ConfigurationError, match='train.lr_schedule'):
    method.bind_schedule(schedules.AlternatingRestarts(start_phase='synthetic'))
  run_schedule = schedules.AlternatingRestarts(base=0.5)
  method.bind_schedule(run_schedule)  # The same phases: the run's drives them.
  assert method.phase_schedule is run_schedule
  method.on_epoch_start(5)
  assert float(method.synthetic_phase.numpy()) == 1.0


def test_the_trainer_refuses_an_alternation_with_another_lr_schedule(clean_gin,
                                                                     tmp_path):
  configure_tiny('train.task = @MarkovLanguageTask', 'train.method = @DNI',
                 'DNI.window = 5', 'DNI.use_synthetic = @AlternatingRestarts',
                 'train.lr_schedule = @CosineRestarts')
  with pytest.raises(ConfigurationError, match='train.lr_schedule'):
    tfcredit.train(str(tmp_path / 'run'), export_dir=None)
  assert not (tmp_path / 'run').exists()  # Refused before anything was written.


# --------------------------------------------------------------- with the trainer
_ALTERNATING_STREAM = (
    'train.deterministic = True', 'train.log_every_seconds = 1e9',
    'train.task = @MarkovLanguageTask', 'MarkovLanguageTask.train_length = 300',
    'MarkovLanguageTask.eval_length = 80', 'train.epochs = 3',
    'train.method = @DNI', 'DNI.window = 5', 'DNI.windows_per_call = 2',
    'DNI.synthesizer = @NeuronwiseSynthesizer',
    'NeuronwiseSynthesizer.hidden_units = 4',
    'DNI.use_synthetic = @AlternatingRestarts',
    'train.lr_schedule = @AlternatingRestarts',
    'AlternatingRestarts.period_epochs = 1',
    'AlternatingRestarts.start_phase = "synthetic"')


def _events(directory):
  series = {}
  for path in tf.io.gfile.glob(os.path.join(directory, 'events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        if array.dtype.kind == 'f':
          series.setdefault(value.tag, []).append((event.step, float(array)))
  return {tag: [v for _, v in sorted(points)] for tag, points in series.items()}


def test_alternating_run_logs_the_synthesizer_and_checkpoints_its_state(
    tmp_path, clean_gin):
  # 4 calls per epoch; epoch 1 is synthetic, epochs 2-3 real (cycles of 1, 2).
  tfcredit.config.parse([TINY_CONFIG], list(_ALTERNATING_STREAM))
  model_dir = str(tmp_path / 'run')
  tfcredit.train(model_dir, export_dir=None, evaluate_test=False,
                 stop_after_calls=6)  # Stops mid-epoch 2, memory carried.
  series = _events(os.path.join(model_dir, 'train'))
  assert series['method/synthetic_phase'] == [1.0] * 4 + [0.0] * 2
  for tag in ('method/synthesizer_loss', 'method/cosine', 'method/norm_ratio'):
    assert len(series[tag]) == 6 and all(np.isfinite(series[tag])), tag
  # The learning rate is back at its base at the restart (epoch 2's first call).
  rates = series['learning_rate']
  assert rates[4] == pytest.approx(0.01) and rates[3] < 0.5 * rates[4]

  # A freshly built method restores every piece of its state from the checkpoint.
  components = configured_components()
  method = components.method
  saved = tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))
  reader = tf.train.load_checkpoint(saved)
  names = [name for name, _ in tf.train.list_variables(saved)
           if name.startswith('method/')]
  for part in ('method/synthesizer/cell/kernel', 'method/synthesizer_optimizer/',
               'method/memory/', 'method/noise_draws/', 'method/synthetic_phase/'):
    assert any(n.startswith(part) for n in names), part
  assert np.abs(reader.get_tensor('method/memory/.ATTRIBUTES/VARIABLE_VALUE')).max() > 0
  assert float(method.noise_draws.numpy()) == 0
  tf.train.Checkpoint(method=method).restore(saved).expect_partial()
  assert int(method.noise_draws.numpy()) == 6
  # Written again, key by key, the restored method is the saved one: a piece of
  # state left out of the restore would keep its fresh value under its own key.
  rewritten = tf.train.load_checkpoint(
      tf.train.Checkpoint(method=method).write(str(tmp_path / 'rewritten')))
  for name in names:
    np.testing.assert_array_equal(rewritten.get_tensor(name),
                                  reader.get_tensor(name), err_msg=name)



# ------------------------------------------------------------ non-finite guard


def test_a_non_finite_window_moves_neither_the_model_nor_the_synthesizer():
  """The synthesizer's update belongs to its window: when the window's loss is
  not finite, the non-finite guard refuses both updates (and both optimizers'
  slots stay), and counts the window once."""
  from tfcredit.metrics import NON_FINITE_METRIC  # pylint: disable=g-import-not-at-top
  task = MarkovLanguageTask(train_length=200, eval_length=50)
  model = tiny_model(task, seed=3, cell='gru')
  optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.05)
  method = _dni(task, model, optimizer, window=5, windows_per_call=1,
                synthesizer=LayerwiseSynthesizer(hidden_layers=1))
  inputs, targets = _stream_segment(task, 5)
  state = model.initial_state(BATCH)
  method.train_segment((inputs, targets), state)  # The synthesizer has learnt once.
  watched = (list(model.trainable_variables) + list(method.synthesizer_variables)
             + list(optimizer.variables)
             + list(method.synthesizer_optimizer.variables))
  before = [v.numpy().copy() for v in watched]
  # Token targets cannot be NaN: a NaN in the first state poisons the window.
  poisoned_state = tf.nest.map_structure(lambda s: s * np.nan, state)
  _, metrics = method.train_segment((inputs, targets), poisoned_state)
  assert float(metrics[NON_FINITE_METRIC]) == 1.0
  for old, variable in zip(before, watched):
    np.testing.assert_array_equal(old, variable.numpy(), err_msg=variable.name)

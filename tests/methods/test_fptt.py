"""Tests of tfcredit.methods.fptt (Kag & Saligrama 2021).

References are written here from the update rules, never with the method's code:
a linear readout cell makes every window loss a quadratic whose gradient is written
out in numpy, so the recursion of ``W``, ``λ`` and ``W̄`` is computed by hand;
the appendix's Eq. 7 is checked with the window-loss gradient taken by the test's
own tape; the window weights are checked against the same recursion with the
authors' slips (``p + 0.1``, last window skipped), which must not match.
"""

import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit.errors import ConfigurationError
from tfcredit.methods import TruncatedBPTT
from tfcredit.methods.fptt import FPTT
from tfcredit.tasks import base as task_base
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask, CopyTask
from tfcredit.testing import TINY_CONFIG, built_optimizer, tiny_model
from tfcredit.training import reporting



class LinearReadoutCell(keras.layers.Layer):
  """``y_t = x_t·w + b``: the window's terminal output is linear in ``(w, b)``."""

  state_size = 1
  output_size = 1

  def build(self, input_shape):
    self.kernel = self.add_weight(shape=(input_shape[-1], 1),
                                  initializer=keras.initializers.Constant(0.3),
                                  name='kernel')
    self.bias = self.add_weight(shape=(1,), initializer='zeros', name='bias')
    super().build(input_shape)

  def call(self, inputs, states, training=False):
    del states, training
    output = tf.matmul(inputs, self.kernel) + self.bias
    return output, [output]


def _linear_model(task):
  model = tfcredit.RecurrentModel(cell=LinearReadoutCell(), units=1,
                                  identity_head=True, **task.model_spec())
  model.build_for(tf.zeros([1, 1, 2]))
  return model


def _segment(task, index, batch=6):
  return tuple(tf.constant(a) for a in task.batch('train', 0, index, batch))


def _numpy(variables):
  return [np.array(v.numpy(), np.float64) for v in variables]


def _hand_recursion(weights, averages, states, inputs, targets, windows, alpha, beta,
                    learning_rate, quadratic_scale=1.0, inner_steps=1,
                    weight_of=lambda p, k: (p + 1) / k, skip_last=False):
  """FPTT on the linear readout, written out: ``ℓ_p = w_p·mean_b (x·w + b − y)²``."""
  w, b = weights
  w_bar, b_bar = averages
  lam_w, lam_b = states
  length = inputs.shape[1]
  for p in range(windows):
    if skip_last and p == windows - 1:
      break
    end = ((p + 1) * length) // windows
    x = inputs[:, end - 1, :].astype(np.float64)
    y = targets.astype(np.float64)
    weight = weight_of(p, windows)
    for _ in range(inner_steps):
      residual = x @ w + b - y
      grad_w = weight * 2.0 * x.T @ residual / len(x)
      grad_b = weight * 2.0 * residual.sum(axis=0) / len(x)
      grad_w = grad_w - lam_w + quadratic_scale * alpha * (w - w_bar)
      grad_b = grad_b - lam_b + quadratic_scale * alpha * (b - b_bar)
      w, b = w - learning_rate * grad_w, b - learning_rate * grad_b
    lam_w = lam_w - alpha * (w - w_bar)
    lam_b = lam_b - alpha * (b - b_bar)
    w_bar = (1 - beta) * w_bar + beta * w - (beta / alpha) * lam_w
    b_bar = (1 - beta) * b_bar + beta * b - (beta / alpha) * lam_b
  return [w, b], [w_bar, b_bar], [lam_w, lam_b]


@pytest.mark.parametrize('quadratic_scale,inner_steps', [(1.0, 1), (2.0, 3)])
def test_quadratic_windows_follow_the_hand_computed_recursion(quadratic_scale,
                                                              inner_steps):
  task = AddingTask(sequence_length=12, seed=2)
  model = _linear_model(task)
  alpha, beta, learning_rate, windows = 0.3, 0.5, 0.2, 4
  method = FPTT(model=model, task=task,
                optimizer=built_optimizer(model, learning_rate=learning_rate),
                windows=windows, alpha=alpha, beta=beta,
                quadratic_scale=quadratic_scale, inner_steps=inner_steps)
  weights = _numpy(model.trainable_variables)
  averages = [w.copy() for w in weights]
  states = [np.zeros_like(w) for w in weights]
  for call in range(3):  # λ and W̄ carry over from one sequence batch to the next.
    segment = _segment(task, call)
    _, metrics = method.train_segment(segment, model.initial_state(6))
    weights, averages, states = _hand_recursion(
        weights, averages, states, segment[0].numpy(), segment[1].numpy(), windows,
        alpha, beta, learning_rate, quadratic_scale, inner_steps)
    for actual, expected in ((model.trainable_variables, weights),
                             (method.running_average, averages),
                             (method.gradient_state, states)):
      for a, e in zip(actual, expected):
        np.testing.assert_allclose(a.numpy(), e, rtol=1e-4, atol=1e-6)
    assert float(metrics['updates']) == windows * inner_steps
    distance = np.sqrt(sum(np.sum((w - a) ** 2) for w, a in zip(weights, averages)))
    np.testing.assert_allclose(float(metrics['distance_to_average']), distance,
                               rtol=1e-4, atol=1e-7)
  # After three calls λ is far from 0 and W̄ from W: the check was not vacuous.
  assert max(np.abs(s).max() for s in states) > 1e-2
  assert distance > 1e-3


def test_window_weights_are_p_plus_one_over_k_and_the_last_window_trains():
  task = AddingTask(sequence_length=12, seed=4)
  model = _linear_model(task)
  alpha, beta, learning_rate, windows = 0.5, 0.5, 0.3, 3
  method = FPTT(model=model, task=task,
                optimizer=built_optimizer(model, learning_rate=learning_rate),
                windows=windows, alpha=alpha, beta=beta)
  start = _numpy(model.trainable_variables)
  segment = _segment(task, 0)
  _, metrics = method.train_segment(segment, model.initial_state(6))
  actual = _numpy(model.trainable_variables)
  args = (start, [w.copy() for w in start], [np.zeros_like(w) for w in start],
          segment[0].numpy(), segment[1].numpy(), windows, alpha, beta,
          learning_rate)
  expected, _, _ = _hand_recursion(*args)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)
  # The authors' add-task slips give other weights: the check can fail.
  for variant in (dict(weight_of=lambda p, k: p + 0.1), dict(skip_last=True),
                  dict(weight_of=lambda p, k: 1.0)):
    wrong, _, _ = _hand_recursion(*args, **variant)
    assert max(np.abs(a - w).max() for a, w in zip(actual, wrong)) > 1e-3
  # Every window ran and reported its loss; the task loss is the last window's.
  for p in range(windows):
    assert float(metrics[f'window_count_{p}']) == 6.0
  assert float(metrics['loss_sum']) == float(metrics[f'window_loss_sum_{windows - 1}'])


def test_inner_problem_solved_exactly_satisfies_eq7():
  # A tiny LSTM; one window per sequence, so W_{t+1} is solved on the loss of
  # batch t; λ and W̄ carry over between batches. Plain SGD, many inner steps.
  task = AddingTask(sequence_length=6, seed=1)
  model = tiny_model(task, units=4, seed=0)
  alpha = 2.0
  method = FPTT(model=model, task=task,
                optimizer=built_optimizer(model, learning_rate=0.15), windows=1,
                alpha=alpha, inner_steps=80)
  variables = model.trainable_variables
  for call in range(3):
    segment = _segment(task, call, batch=8)
    average = [a.numpy().copy() for a in method.running_average]
    state_before = [s.numpy().copy() for s in method.gradient_state]
    method.train_segment(segment, model.initial_state(8))
    with tf.GradientTape() as tape:  # ∇ℓ_t(W_{t+1}) by the test's own tape.
      outputs, _ = model.unroll(segment[0], model.initial_state(8))
      loss = tf.reduce_mean(tf.square(outputs - segment[1]))
    gradients = tape.gradient(loss, variables)
    for v, a, lam, g in zip(variables, average, state_before, gradients):
      np.testing.assert_allclose(v.numpy(), a + (lam - g.numpy()) / alpha,
                                 atol=2e-5)
  assert max(np.abs(s.numpy()).max() for s in method.gradient_state) > 1e-3


@pytest.mark.parametrize('reset', [True, False])
def test_epoch_end_swaps_in_the_average_and_resets_lambda_by_option(reset):
  task = CopyTask(sequence_length=6)
  model = tiny_model(task, seed=0)
  # Eager (no tracing); the trainer test below runs the compiled path.
  method = FPTT(model=model, task=task, optimizer=built_optimizer(model),
                windows=4, alpha=0.5, reset_gradient_state_each_epoch=reset,
                use_tf_function=False)
  for call in range(2):
    method.train_segment(_segment(task, call, batch=4), model.initial_state(4))
  averages = _numpy(method.running_average)
  states = _numpy(method.gradient_state)
  assert max(np.abs(w - a).max() for w, a in
             zip(_numpy(model.trainable_variables), averages)) > 1e-4
  method.on_epoch_end()
  for v, a in zip(model.trainable_variables, averages):
    np.testing.assert_array_equal(v.numpy(), a.astype(np.float32))
  for s, before in zip(method.gradient_state, states):
    np.testing.assert_array_equal(s.numpy(), 0.0 if reset else before)
  assert max(np.abs(s).max() for s in states) > 1e-4


def test_state_is_checkpointed_and_restored(tmp_path):
  task = CopyTask(sequence_length=6)
  model = tiny_model(task, seed=0)
  method = FPTT(model=model, task=task, optimizer=built_optimizer(model),
                windows=2, alpha=0.5, use_tf_function=False)
  method.train_segment(_segment(task, 0, batch=4), model.initial_state(4))
  saved = _numpy(method.running_average) + _numpy(method.gradient_state)
  path = tf.train.Checkpoint(method=method).save(str(tmp_path / 'ckpt'))
  for v in method.running_average + method.gradient_state:
    v.assign(tf.zeros_like(v))
  tf.train.Checkpoint(method=method).restore(path).assert_existing_objects_matched()
  for v, s in zip(method.running_average + method.gradient_state, saved):
    np.testing.assert_array_equal(v.numpy(), s.astype(np.float32))


def test_a_short_segment_at_the_stream_end_has_fewer_windows():
  task = MarkovLanguageTask(train_length=300, eval_length=50)
  model = tiny_model(task, seed=0)
  method = FPTT(model=model, task=task, optimizer=built_optimizer(model),
                windows=3, window_length=4, alpha=0.5)
  assert method.segment_length() == 12
  data = task.stream('train', 2)
  state = model.initial_state(2)
  for start, length in ((0, 12), (12, 12), (24, 7)):
    segment = (tf.constant(data[:, start:start + length]),
               tf.constant(data[:, start + 1:start + length + 1]))
    state, metrics = method.train_segment(segment, state)
  # The short segment at the stream's end has ceil(7/4) = 2 windows of 4 and 3.
  assert float(metrics['windows']) == 2.0
  assert [float(metrics[f'window_count_{p}']) for p in range(3)] == [8.0, 6.0, 0.0]
  assert float(metrics['count']) == 14.0


def test_estimate_is_the_weighted_sum_of_window_gradients():
  task = AddingTask(sequence_length=12, seed=3)
  model = _linear_model(task)
  method = FPTT(model=model, task=task, optimizer=built_optimizer(model),
                windows=3, alpha=0.5)
  segment = _segment(task, 0)
  gradients, _ = method.estimate_gradients(segment, model.initial_state(6))
  w, b = _numpy(model.trainable_variables)
  x_all, y = segment[0].numpy().astype(np.float64), segment[1].numpy()
  expected_w, expected_b = np.zeros_like(w), np.zeros_like(b)
  for p in range(3):
    x = x_all[:, (p + 1) * 4 - 1, :]
    residual = x @ w + b - y
    expected_w += (p + 1) / 3 * 2 * x.T @ residual / 6
    expected_b += (p + 1) / 3 * 2 * residual.sum(axis=0) / 6
  np.testing.assert_allclose(gradients[0].numpy(), expected_w, rtol=1e-5)
  np.testing.assert_allclose(gradients[1].numpy(), expected_b, rtol=1e-5)


def _dense_reference_window(model, task, inputs, targets, state, averages,
                            states, alpha, beta, quadratic_scale,
                            learning_rate, clip_norm, window_length):
  """One FPTT window written out densely (the equations, not the method's
  code): every gradient made dense, ``W``, ``W̄`` and ``λ`` updated as whole
  arrays. Returns ``(state, regularizer at the window's start, sparse)``."""
  weights = model.trainable_variables
  regularizer = sum(
      float(-np.sum(lam * w.numpy()) + quadratic_scale * alpha / 2 *
            np.sum((w.numpy() - bar) ** 2))
      for w, bar, lam in zip(weights, averages, states))
  with tf.GradientTape() as tape:
    outputs, state = model.unroll(inputs, state, training=True)
    objective = tf.reduce_sum(task.losses(outputs, targets)) / (
        inputs.shape[0] * window_length)
  raw = tape.gradient(objective, weights)
  sparse = any(isinstance(g, tf.IndexedSlices) for g in raw)
  gradients = [tf.convert_to_tensor(g).numpy().astype(np.float64) - lam +
               quadratic_scale * alpha * (w.numpy() - bar)
               for g, w, bar, lam in zip(raw, weights, averages, states)]
  norm = np.sqrt(sum(np.sum(g ** 2) for g in gradients))
  if clip_norm is not None:
    gradients = [g * clip_norm / max(norm, clip_norm) for g in gradients]
  for w, g in zip(weights, gradients):
    w.assign(w.numpy() - learning_rate * g)
  for i, w in enumerate(weights):
    states[i] = states[i] - alpha * (w.numpy() - averages[i])
    averages[i] = ((1 - beta) * averages[i] + beta * w.numpy() -
                   (beta / alpha) * states[i])
  return state, regularizer, sparse


@pytest.mark.parametrize('clip_norm', [None, 0.3])
def test_embedding_rows_follow_the_dense_equations(clip_norm):
  # A token model: the embedding's loss gradient is IndexedSlices (repeated
  # tokens included), but W̄, λ and the regularizer's gradient move every row,
  # touched or not. The method's fused path must equal the dense equations
  # over several windows and calls (with clipping of the full gradient).
  task = MarkovLanguageTask(vocabulary_size=12, branching=2, train_length=200,
                            eval_length=50)
  settings = dict(alpha=0.4, beta=0.3, quadratic_scale=2.0)
  windows, window_length, learning_rate, rows = 3, 4, 0.5, 3
  model = tiny_model(task, seed=1)
  reference = tiny_model(task, seed=1)
  method = FPTT(model=model, task=task,
                optimizer=built_optimizer(model, learning_rate=learning_rate),
                windows=windows, window_length=window_length,
                clip_norm=clip_norm, **settings)
  averages = _numpy(reference.trainable_variables)
  states = [np.zeros_like(a) for a in averages]
  data = task.stream('train', rows)
  state = reference_state = model.initial_state(rows)
  length = windows * window_length
  for call in range(3):
    before = states[0].copy()  # The embedding's λ.
    inputs = tf.constant(data[:, call * length:(call + 1) * length])
    targets = tf.constant(data[:, call * length + 1:(call + 1) * length + 1])
    state, metrics = method.train_segment((inputs, targets), state)
    regularizer_sum = 0.0
    for start in range(0, length, window_length):
      window = slice(start, start + window_length)
      reference_state, regularizer, sparse = _dense_reference_window(
          reference, task, inputs[:, window], targets[:, window],
          reference_state, averages, states, learning_rate=learning_rate,
          clip_norm=clip_norm, window_length=window_length, **settings)
      regularizer_sum += regularizer
      assert sparse
    for actual, expected in ((model.trainable_variables,
                              _numpy(reference.trainable_variables)),
                             (method.running_average, averages),
                             (method.gradient_state, states)):
      for a, e in zip(actual, expected):
        np.testing.assert_allclose(a.numpy(), e, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics['regularizer_sum']),
                               regularizer_sum, rtol=1e-4, atol=1e-6)
  # Embedding rows the last call never read, touched before, moved in it too
  # (the case the dense equations decide), and λ is far from 0: not vacuous.
  untouched = np.setdiff1d(np.arange(12), inputs.numpy())
  untouched = untouched[np.abs(before[untouched]).max(axis=1) > 1e-4]
  assert states[0].shape[0] == 12 and untouched.size
  moved = np.abs(states[0][untouched] - before[untouched]).max(axis=1)
  assert moved.min() > 1e-6
  assert max(np.abs(s).max() for s in states) > 1e-2


@pytest.mark.parametrize('kwargs,match', [
    (dict(windows=0, alpha=0.5), 'FPTT.windows'),
    (dict(windows=2, alpha=0.0), 'FPTT.alpha'),
    (dict(windows=2, alpha=0.5, beta=1.5), 'FPTT.beta'),
    (dict(windows=2, alpha=0.5, quadratic_scale=-1.0), 'FPTT.quadratic_scale'),
    (dict(windows=2, alpha=0.5, inner_steps=0), 'FPTT.inner_steps'),
    (dict(windows=2, alpha=0.5, window_length=5), 'stream tasks only'),
    (dict(windows=30, alpha=0.5), 'at most 20 windows'),
    (dict(windows=2, alpha=0.5, reset_gradient_state_each_epoch='no'),
     'reset_gradient_state_each_epoch'),
    (dict(windows=2, alpha=0.5, evaluate_trained_weights=1),
     'FPTT.evaluate_trained_weights'),
])
def test_bad_settings_are_configuration_errors(kwargs, match):
  task = AddingTask(sequence_length=20)
  model = tiny_model(task, seed=0)
  with pytest.raises(ConfigurationError, match=match):
    FPTT(model=model, task=task, optimizer=built_optimizer(model), **kwargs)


def test_stream_needs_a_window_length():
  task = MarkovLanguageTask(train_length=100, eval_length=50)
  model = tiny_model(task, seed=0)
  with pytest.raises(ConfigurationError, match='FPTT.window_length is required'):
    FPTT(model=model, task=task, optimizer=built_optimizer(model), windows=2,
         alpha=0.5)


def _validation_mse(model, task):
  return task_base.evaluate(task, lambda x, s: model.unroll(x, s),
                            model.initial_state, 'valid', 200)['mse']


@pytest.mark.slow  # Trains until a method learns.
def test_fptt_learns_the_adding_task_where_truncated_bptt_stays_at_baseline():
  # T = 40 in K = 8 windows of 5 steps: truncated BPTT's gradient never spans the
  # distance between the markers; FPTT's per-window predictions of the target do.
  task = AddingTask(sequence_length=40, seed=0, eval_batches=1)
  results = {}
  for name in ('fptt', 'truncated_bptt'):
    model = tiny_model(task, units=16, seed=0)
    optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.01)
    if name == 'fptt':
      method = FPTT(model=model, task=task, optimizer=optimizer, windows=8,
                    alpha=0.01, clip_norm=1.0)
    else:
      # Uncompiled: this test is about truncation, not XLA (an XLA compile
      # costs seconds; test_truncated_bptt checks the compiled pass).
      method = TruncatedBPTT(model=model, task=task, optimizer=optimizer, window=5,
                             clip_norm=1.0, jit_compile=False)
    for index in range(200):
      method.train_segment(_segment(task, index, batch=64), model.initial_state(64))
    method.on_epoch_end()
    results[name] = _validation_mse(model, task)
  # Measured: truncated BPTT 0.153, FPTT 0.013 (baseline 0.167).
  assert results['truncated_bptt'] > 0.14, results
  assert results['fptt'] < 0.05, results


# ------------------------------------------------------------- the trainer


def _events(directory):
  """``{method/ tag: [values in step order]}``."""
  return {tag: [value for _, value in points]
          for tag, points in reporting.read_scalars(directory).items()
          if tag.startswith('method/')}


def _configure(*bindings):
  gin.clear_config()
  tfcredit.config.parse([TINY_CONFIG], ['train.method = @FPTT', 'FPTT.windows = 4',
                                 'FPTT.alpha = 0.5', 'train.deterministic = True',
                                 'train.log_every_seconds = 1e9'] + list(bindings))


@pytest.mark.slow  # Whole tfcredit.train runs, interrupted and resumed.
def test_trainer_writes_method_summaries_and_resumes_exactly(tmp_path):
  try:
    _configure()
    straight = str(tmp_path / 'straight')
    result = tfcredit.train(straight, export_dir=None, evaluate_test=False)
    tags = _events(os.path.join(straight, 'train'))
    assert len(tags['method/distance_to_average']) == 8  # 2 epochs of 4 calls.
    assert {'method/regularizer', 'method/window_loss/00',
            'method/window_loss/03'} <= set(tags)
    assert all(d > 0 for d in tags['method/distance_to_average'])
    # The method's state is in the checkpoint.
    latest = tf.train.latest_checkpoint(os.path.join(straight, 'checkpoints'))
    names = [name for name, _ in tf.train.list_variables(latest)]
    averages = sorted(n for n in names if n.startswith('method/running_average/'))
    assert len(averages) == 5  # LSTM kernel, recurrent kernel, bias; head 2.
    interrupted = str(tmp_path / 'interrupted')
    _configure()
    tfcredit.train(interrupted, export_dir=None, stop_after_calls=3)
    _configure()
    resumed = tfcredit.train(interrupted, export_dir=None, evaluate_test=False)
    assert resumed['valid_loss'] == result['valid_loss']
  finally:
    gin.clear_config()

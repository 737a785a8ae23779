"""Mixed precision (``train.precision``): every method under ``mixed_bfloat16``,
``mixed_float16``'s dynamic loss scale, and what must stay float32.

References are the same models and methods in float32, from the same weights.
"""


import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit import precision
from tfcredit.errors import ConfigurationError
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.testing import (built_optimizer, clean_gin, configure_tiny,  # noqa: F401
                              example_model_arguments, small_methods,
                              tiny_model)
from tfcredit.training import run_directory

from tiers import slow_except

ROWS = 2

METHODS = small_methods(ROWS)


@pytest.fixture(scope='module')
def task():
  return MarkovLanguageTask(vocabulary_size=6, branching=2, train_length=62,
                            eval_length=20, seed=1)


def _model(task, policy, **kwargs):
  with precision.policy_scope(policy):
    return tiny_model(task, seed=0, units=16, embedding_dim=16, **kwargs)


def _segment(task, length):
  data = task.stream('train', ROWS)
  return tf.constant(data[:, :length]), tf.constant(data[:, 1:length + 1])


def _train_calls(trainer, model, task, calls):
  """``calls`` training calls, each finite and updating; the final state."""
  state = model.initial_state(ROWS)
  for _ in range(calls):
    state, metrics = trainer.train_segment(
        _segment(task, trainer.segment_length()), state)
    assert np.isfinite(float(metrics['loss_sum']))
    assert float(metrics['non_finite_windows']) == 0
    assert float(metrics['updates']) > 0
  return state


def _flat(gradients):
  return np.concatenate([np.ravel(tf.convert_to_tensor(g).numpy())
                         for g in gradients])


def test_a_bad_precision_names_the_setting():
  with pytest.raises(ConfigurationError, match=r"train\.precision.*'float64'"):
    precision.check('float64')


@pytest.mark.parametrize('method',
                         slow_except(sorted(METHODS), 'truncated_bptt'))
def test_every_method_trains_under_bfloat16_with_float32_state(task, method):
  model = _model(task, precision.MIXED_BFLOAT16,
                 **example_model_arguments(method))
  assert model.core[0].compute_dtype == 'bfloat16'
  assert all(tf.as_dtype(v.dtype) == tf.float32 for v in model.trainable_variables)
  trainer = METHODS[method](model, task, built_optimizer(model, learning_rate=0.5))
  before = [v.numpy().copy() for v in model.trainable_variables]
  state = _train_calls(trainer, model, task, 3)
  assert trainer.trace_counts['train_segment'] == 1
  assert all(s.dtype == tf.float32 for s in tf.nest.flatten(state))
  assert all(np.all(np.isfinite(s.numpy())) for s in tf.nest.flatten(state))
  assert any(np.any(v.numpy() != b)
             for v, b in zip(model.trainable_variables, before))
  for variable in trainer.variables:  # The method's own state: float32 (or int).
    assert tf.as_dtype(variable.dtype) in (tf.float32, tf.int64, tf.int32), (
        variable.name)


@pytest.mark.parametrize('method',
                         slow_except(sorted(METHODS), 'truncated_bptt'))
def test_bfloat16_estimates_agree_with_float32(task, method):
  """Same weights, same segment: the estimates' cosine is above 0.99 and their
  norms agree within 5% (bfloat16 keeps 8 bits of mantissa)."""
  estimates = {}
  for policy in (precision.FLOAT32, precision.MIXED_BFLOAT16):
    model = _model(task, policy, **example_model_arguments(method))
    trainer = METHODS[method](model, task, built_optimizer(model))
    length = trainer.segment_length() or 20
    estimates[policy] = _flat(trainer.estimate_gradients(
        _segment(task, length), model.initial_state(ROWS))[0])
  a, b = estimates[precision.FLOAT32], estimates[precision.MIXED_BFLOAT16]
  cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  assert cosine > 0.99
  assert abs(np.linalg.norm(b) / np.linalg.norm(a) - 1) < 0.05
  assert not np.array_equal(a, b)  # The low precision was used at all.


def test_the_carried_state_keeps_float32_precision(task):
  """The fused unroll keeps the gates and the state float32: the final state is
  not a bfloat16 value cast up (a state computed in 16 bits would be)."""
  model = _model(task, precision.MIXED_BFLOAT16)
  inputs = _segment(task, 20)[0]
  _, state = model.unroll(inputs, model.initial_state(ROWS))
  for leaf in tf.nest.flatten(state):
    assert leaf.dtype == tf.float32
    rounded = tf.cast(tf.cast(leaf, tf.bfloat16), tf.float32)
    assert np.mean(rounded.numpy() != leaf.numpy()) > 0.5


def test_float16_loss_scale_skips_an_overflow_and_halves(task):
  model = _model(task, precision.MIXED_FLOAT16)
  trainer = METHODS['truncated_bptt'](model, task, built_optimizer(model))
  assert trainer.loss_scale is not None
  trainer.loss_scale.scale.assign(2.0 ** 60)  # float16 overflows at 65504.
  before = [v.numpy().copy() for v in model.trainable_variables]
  state = model.initial_state(ROWS)
  state, metrics = trainer.train_segment(_segment(task, 10), state)
  # Two windows overflowed: skipped, not non-finite, nothing moved.
  assert float(metrics['loss_scale_overflows']) == 2
  assert float(metrics['non_finite_windows']) == 0
  assert float(metrics['updates']) == 0
  assert float(trainer.loss_scale.scale.numpy()) == 2.0 ** 58
  for v, b in zip(model.trainable_variables, before):
    np.testing.assert_array_equal(v.numpy(), b)
  # At a scale float16 can hold, it trains, and the update matches float32's.
  trainer.loss_scale.scale.assign(2.0 ** 10)
  reference = _model(task, precision.FLOAT32)
  reference_trainer = METHODS['truncated_bptt'](reference, task,
                                                built_optimizer(reference))
  segment = _segment(task, 10)
  state, metrics = trainer.train_segment(segment, model.initial_state(ROWS))
  reference_trainer.train_segment(segment, reference.initial_state(ROWS))
  assert float(metrics['loss_scale_overflows']) == 0
  assert float(metrics['updates']) == 2
  assert float(metrics['loss_scale']) == 2.0 ** 10
  changed = _flat(model.trainable_variables) - _flat(before)
  expected = _flat(reference.trainable_variables) - _flat(before)
  cosine = changed @ expected / (np.linalg.norm(changed) * np.linalg.norm(expected))
  assert cosine > 0.999


def test_the_loss_scale_grows_after_a_run_of_finite_windows():
  scale = precision.DynamicLossScale(initial_scale=8.0, growth_interval=3)
  for finite, expected in ((True, 8), (True, 8), (True, 16), (False, 8),
                           (True, 8), (True, 8), (True, 16)):
    scale.update(tf.constant(finite))
    assert float(scale.scale.numpy()) == expected


@pytest.mark.parametrize('method', ['dni', 'target_prop'])
def test_float16_methods_with_their_own_tapes_train(task, method):
  model = _model(task, precision.MIXED_FLOAT16)
  trainer = METHODS[method](model, task, built_optimizer(model, learning_rate=0.5))
  _train_calls(trainer, model, task, 2)


@pytest.mark.slow  # Whole tfcredit.train runs, resumed and exported.
def test_a_bfloat16_checkpoint_resumes_in_float32_and_exports_float32(
    tmp_path, clean_gin, capsys):
  model_dir = str(tmp_path / 'run')
  configure_tiny("train.precision = 'mixed_bfloat16'")
  tfcredit.train(model_dir, export_dir=None, stop_after_calls=3)
  configure_tiny("train.precision = 'float32'")
  capsys.readouterr()
  result = tfcredit.train(model_dir, export_dir=str(tmp_path / 'export'))
  assert 'resumed from' in capsys.readouterr().out
  assert np.isfinite(result['valid_loss'])
  configure_tiny("train.precision = 'mixed_bfloat16'")
  result = tfcredit.train(str(tmp_path / 'bf16'), export_dir=str(tmp_path / 'export'))
  serve = tf.saved_model.load(result['saved_model']).signatures['serving_default']
  outputs = serve.structured_outputs
  assert outputs and all(s.dtype == tf.float32 for s in outputs.values())


def test_a_change_to_or_from_float16_is_refused_naming_both():
  stored = "train.precision = 'mixed_float16'\ntrain.epochs = 2\n"
  refused, _ = run_directory.differences(stored, "train.epochs = 2\n")
  assert len(refused) == 1 and 'mixed_float16' in refused[0]
  assert '(unbound)' in refused[0]
  refused, allowed = run_directory.differences(
      "train.precision = 'mixed_bfloat16'\n", "train.precision = 'float32'\n")
  assert not refused and len(allowed) == 1


def test_a_float32_head_computes_the_logits_in_float32(task):
  inputs = _segment(task, 12)[0]
  outputs = {}
  for name, policy, kwargs in (
      ('float32', precision.FLOAT32, {}),
      ('bfloat16', precision.MIXED_BFLOAT16, {}),
      ('float32 head', precision.MIXED_BFLOAT16, {'float32_head': True})):
    model = _model(task, policy, **kwargs)
    outputs[name] = model.unroll(inputs, model.initial_state(ROWS))[0].numpy()
    if kwargs:
      assert model.head.compute_dtype == 'float32'
      assert model.core[0].compute_dtype == 'bfloat16'
  error = lambda name: np.abs(outputs[name] - outputs['float32']).max()
  assert 0 < error('float32 head') < error('bfloat16')

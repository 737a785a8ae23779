"""tfcredit.losses against TensorFlow's own sparse softmax cross-entropy.

The reference is ``tf.nn.sparse_softmax_cross_entropy_with_logits`` and its
registered gradient; the compiled pass (taken on a CPU outside the test suite,
which sets TFCREDIT_AUTO_XLA=0 in tests/conftest.py) must give the same losses
and the same gradient, eagerly and inside a function.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfcredit import losses
from tfcredit import xla


def _problem(shape, classes, seed=0):
  rng = np.random.default_rng(seed)
  logits = tf.constant(rng.normal(scale=3.0, size=shape + [classes]), tf.float32)
  labels = tf.constant(rng.integers(0, classes, size=shape), tf.int32)
  weights = tf.constant(rng.normal(size=shape), tf.float32)
  return logits, labels, weights


def _losses_and_gradient(function, logits, labels, weights):
  with tf.GradientTape() as tape:
    tape.watch(logits)
    values = function(labels, logits)
    total = tf.reduce_sum(values * weights)  # Unequal upstream gradients.
  return values, tape.gradient(total, logits)


def _reference(labels, logits):
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                         logits=logits)


@pytest.mark.parametrize('shape', [[4, 7], [6]], ids=['[B, T, V]', '[B, V]'])
@pytest.mark.parametrize('traced', [False, True], ids=['eager', 'tf.function'])
def test_the_compiled_pass_equals_tensorflows_losses_and_gradient(
    monkeypatch, shape, traced):
  monkeypatch.delenv(xla.ENVIRONMENT, raising=False)
  assert xla.parts_compile()  # A CPU, XLA allowed: the compiled pass.
  logits, labels, weights = _problem(shape, classes=50)
  run = _losses_and_gradient
  if traced:
    run = tf.function(_losses_and_gradient, autograph=False)
  values, gradient = run(losses.sparse_softmax_cross_entropy, logits, labels,
                         weights)
  expected_values, expected_gradient = _losses_and_gradient(
      _reference, logits, labels, weights)
  np.testing.assert_allclose(values.numpy(), expected_values.numpy(),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gradient.numpy(), expected_gradient.numpy(),
                             rtol=1e-5, atol=1e-7)
  assert np.abs(expected_gradient.numpy()).max() > 0.1  # Not a vacuous match.


def test_a_large_vocabulary_keeps_its_precision(monkeypatch):
  """Large, shifted logits: the softmax is taken from the maximum, as
  TensorFlow's kernel takes it, so nothing overflows."""
  monkeypatch.delenv(xla.ENVIRONMENT, raising=False)
  logits, labels, weights = _problem([2, 5], classes=10000, seed=1)
  logits = logits * 10.0 + 500.0
  values, gradient = _losses_and_gradient(losses.sparse_softmax_cross_entropy,
                                          logits, labels, weights)
  expected_values, expected_gradient = _losses_and_gradient(
      _reference, logits, labels, weights)
  assert np.isfinite(values.numpy()).all()
  np.testing.assert_allclose(values.numpy(), expected_values.numpy(), rtol=1e-5)
  np.testing.assert_allclose(gradient.numpy(), expected_gradient.numpy(),
                             atol=1e-6)


def test_without_xla_it_is_tensorflows_kernel(monkeypatch):
  monkeypatch.setenv(xla.ENVIRONMENT, '0')
  assert not xla.parts_compile()
  logits, labels, weights = _problem([3, 4], classes=9)
  values, gradient = _losses_and_gradient(losses.sparse_softmax_cross_entropy,
                                          logits, labels, weights)
  expected_values, expected_gradient = _losses_and_gradient(
      _reference, logits, labels, weights)
  np.testing.assert_array_equal(values.numpy(), expected_values.numpy())
  np.testing.assert_array_equal(gradient.numpy(), expected_gradient.numpy())

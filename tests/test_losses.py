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


def test_buckets_pad_at_most_a_quarter_with_four_shapes_per_doubling():
  # 2^k, 1.25·2^k, 1.5·2^k, 1.75·2^k, never below 256 rows.
  expected = {1: 256, 256: 256, 257: 320, 320: 320, 321: 384, 449: 512,
              512: 512, 513: 640, 1000: 1024, 1025: 1280, 4095: 4096,
              4097: 5120}
  assert {rows: int(losses.bucket(rows)) for rows in expected} == expected
  counts = {int(losses.bucket(rows)) for rows in range(256, 4097)}
  assert sorted(counts) == [256, 320, 384, 448, 512, 640, 768, 896, 1024,
                            1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096]


def _traced_bucketed(logits, labels, weights):
  """Inside ``parts(BUCKETED)``, traced once for every shape (as a method with
  random window lengths traces)."""
  with xla.parts(xla.BUCKETED):
    function = tf.function(_losses_and_gradient, autograph=False).get_concrete_function(
        losses.sparse_softmax_cross_entropy,
        tf.TensorSpec([None, None, logits.shape[-1]], tf.float32),
        tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32))
  return function(logits, labels, weights)


@pytest.mark.parametrize('shape', [[3, 100], [2, 3]], ids=['300 rows', '6 rows'])
def test_the_padded_pass_equals_tensorflows_losses_and_gradient(monkeypatch,
                                                                shape):
  """300 rows run as 320, 6 as 256: the padding changes no loss and no gradient."""
  monkeypatch.delenv(xla.ENVIRONMENT, raising=False)
  logits, labels, weights = _problem(shape, classes=40)
  values, gradient = _traced_bucketed(logits, labels, weights)
  expected_values, expected_gradient = _losses_and_gradient(
      _reference, logits, labels, weights)
  assert values.shape == shape and gradient.shape == logits.shape
  np.testing.assert_allclose(values.numpy(), expected_values.numpy(),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gradient.numpy(), expected_gradient.numpy(),
                             rtol=1e-5, atol=1e-7)
  assert np.abs(expected_gradient.numpy()).max() > 0.1


def test_parts_take_the_least_of_the_enclosing_settings(monkeypatch):
  monkeypatch.delenv(xla.ENVIRONMENT, raising=False)
  assert xla.loss_compile() == 'shapes' and xla.parts_compile()
  with xla.parts(xla.BUCKETED):
    assert xla.loss_compile() == xla.BUCKETED and not xla.parts_compile()
    with xla.parts(True):  # Cannot undo an enclosing BUCKETED.
      assert xla.loss_compile() == xla.BUCKETED
    with xla.parts(False):
      assert xla.loss_compile() is None
  assert xla.loss_compile() == 'shapes'
  monkeypatch.setenv(xla.ENVIRONMENT, '0')
  with xla.parts(xla.BUCKETED):
    assert xla.loss_compile() is None
  with pytest.raises(ValueError, match="parts takes True, False or 'bucketed', "
                     "got 'yes'"):
    with xla.parts('yes'):
      pass

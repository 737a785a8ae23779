"""``tfcredit.methods.vectorize``: eagerly, Jacobians loop over the tape's
gradients and a per-row map traces once; the values are those of the
vectorised (pfor) versions a ``tf.function`` uses."""

import numpy as np
import tensorflow as tf

from tfcredit.methods import vectorize


def _step(x, w):
  return tf.tanh(x @ w) * x[:, :1]


def test_eager_jacobians_loop_and_equal_the_vectorised_ones():
  x = tf.random.stateless_normal([3, 4], seed=[1, 2])
  w = tf.Variable(tf.random.stateless_normal([4, 4], seed=[3, 4]))

  def both(jacobian):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(x)
      y = _step(x, w)
    return jacobian(tape, y)

  batch = lambda tape, y: vectorize.batch_jacobian(tape, y, x)
  full = lambda tape, y: vectorize.jacobian(tape, y, [w])[0]
  for jacobian in (batch, full):
    eager = both(jacobian)
    compiled = tf.function(lambda j=jacobian: both(j))()
    np.testing.assert_allclose(eager.numpy(), compiled.numpy(), rtol=1e-6,
                               atol=1e-7)
  # By hand: row b's ∂y/∂x is diag(1 − tanh²)·wᵀ scaled by x[b, 0], plus
  # tanh(x w) in column 0.
  expected = []
  for b in range(3):
    z = x[b:b + 1] @ w
    d = (1 - tf.tanh(z) ** 2)[0]
    row = x[b, 0] * d[:, None] * tf.transpose(w)
    row = row + tf.concat([tf.tanh(z)[0][:, None], tf.zeros([4, 3])], 1)
    expected.append(row)
  np.testing.assert_allclose(both(batch).numpy(), tf.stack(expected).numpy(),
                             rtol=1e-5, atol=1e-6)
  assert vectorize.vectorized(vectorize.EAGER_LOOP_MAX + 1)
  assert not vectorize.vectorized(vectorize.EAGER_LOOP_MAX)


def test_eager_map_rows_traces_once_and_maps_like_vectorized_map():
  traces = []

  def row(element):
    traces.append(1)  # Runs once per trace (and per call if it ran eagerly).
    a, b = element
    return tf.reduce_sum(a * b), a + 1

  elements = (tf.reshape(tf.range(6.0), [3, 2]), tf.ones([3, 2]))
  cache = vectorize.EagerMaps()
  tf.config.run_functions_eagerly(True)
  try:
    results = [vectorize.map_rows(cache, 'key', row, elements)
               for _ in range(3)]
  finally:
    tf.config.run_functions_eagerly(False)
  assert len(traces) == 1 and tf.config.functions_run_eagerly() is False
  expected = tf.vectorized_map(row, elements)
  for result in results:
    for got, want in zip(result, expected):
      np.testing.assert_array_equal(got.numpy(), want.numpy())
  np.testing.assert_array_equal(results[0][0].numpy(), [1.0, 5.0, 9.0])

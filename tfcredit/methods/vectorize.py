"""Jacobians and per-row maps that do not re-trace when run eagerly.

Inside a ``tf.function``, ``tf.vectorized_map`` and a tape's ``jacobian`` and
``batch_jacobian`` (pfor) are traced once with the function. Run eagerly (a
method with ``use_tf_function=False``, or under
``tf.config.run_functions_eagerly``), pfor traces a new graph at every call:
about half a second per call for one cell step even at a few units, most of an
eager step of the forward-mode methods. There a Jacobian is a Python loop of
the tape's gradients (milliseconds per output at small sizes; the same values,
sums in another order; pfor above ``EAGER_LOOP_MAX`` outputs, where the loop
would cost more than the trace), and a per-row map, whose loop would run the
cell once per row eagerly, keeps its compiled ``tf.vectorized_map`` but traces
it once (``map_rows``).
"""

import tensorflow as tf

# Outputs (a Jacobian's rows, a map's elements) up to which an eager call loops.
EAGER_LOOP_MAX = 256


def vectorized(count) -> bool:
  """Whether to vectorise over ``count`` outputs: always in a graph; eagerly
  only above ``EAGER_LOOP_MAX``."""
  return not tf.executing_eagerly() or int(count) > EAGER_LOOP_MAX


def jacobian(tape: tf.GradientTape, target: tf.Tensor, sources):
  """``tape.jacobian(target, sources)``; looped eagerly (the tape must then
  be persistent)."""
  return tape.jacobian(target, sources, experimental_use_pfor=vectorized(
      target.shape.num_elements()))


def batch_jacobian(tape: tf.GradientTape, target: tf.Tensor,
                   source: tf.Tensor) -> tf.Tensor:
  """``tape.batch_jacobian(target, source)``; looped eagerly (the tape must
  then be persistent)."""
  return tape.batch_jacobian(target, source, experimental_use_pfor=vectorized(
      target.shape[1:].num_elements()))


class EagerMaps:
  """``map_rows``'s compiled maps of one owner, by key (a plain object, which
  checkpoints of the owner skip)."""

  def __init__(self):
    self.functions = {}


def map_rows(cache: EagerMaps, key, function, elements):
  """``tf.vectorized_map(function, elements)``. Called eagerly, through a
  ``tf.function`` kept in ``cache`` under ``key`` (traced once per shape), as
  ``tf.vectorized_map`` itself runs compiled even under
  ``tf.config.run_functions_eagerly``: ``function`` must stay the same
  computation for one ``key``."""
  if not tf.executing_eagerly():
    return tf.vectorized_map(function, elements)
  functions = cache.functions
  if key not in functions:
    functions[key] = tf.function(
        lambda elements: tf.vectorized_map(function, elements))
  eagerly = tf.config.functions_run_eagerly()
  tf.config.run_functions_eagerly(False)
  try:
    return functions[key](elements)
  finally:
    tf.config.run_functions_eagerly(eagerly)

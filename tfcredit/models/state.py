"""The model's state nest as one ``[B, N]`` tensor and back (methods that treat
the state as a vector: DNI's synthesizer input, RTRL's influence rows)."""

from typing import Sequence

import tensorflow as tf


def flatten_state(state) -> tf.Tensor:
  """The state nest as ``[B, N]``: every layer's tensors concatenated."""
  return tf.concat(tf.nest.flatten(state), axis=-1)


def unflatten_state(flat: tf.Tensor, spec, sizes: Sequence[int]):
  """``flat`` ``[B, N]`` split into the nest of ``spec`` (sizes in its order)."""
  return tf.nest.pack_sequence_as(spec, tf.split(flat, sizes, axis=-1))

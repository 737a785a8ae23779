"""The benchmark's workloads: one network and data layout each, tfcredit and Keras.

* ``ptb_small``: the PTB "small" language model of Zaremba et al. (2014)
  (vocabulary 10,000, 2-layer LSTM 200, window 20, batch 20, SGD lr 1, clip 5) on
  random token ids (``RandomTokenStream``: no download, and throughput does not
  depend on which tokens are drawn).
* ``adding``: the adding task (LSTM 128, batch 128, Adam 1e-3).
* ``forward_mode_stream``: a 1-layer LSTM (or sparse GRU) on
  ``FORWARD_MODE_BATCH`` columns of ``FORWARD_MODE_VOCABULARY`` random symbols,
  for RTRL, UORO, SnAp-1, KF-RTRL and SnAp-2.
* ``lru_stream``: the same stream through a 1-layer LRU (``tfcredit.models.lru``),
  for element-wise RTRL.

A ``Workload`` also carries the same network as Keras layers with its data
arrays (the Keras ``fit`` reference) and its FLOPs per unit trained
(``tfcredit.benchmarks.flops``).
"""

import dataclasses
import functools
from typing import Callable, Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfcredit.benchmarks import flops
from tfcredit.models.lru import LRUCell
from tfcredit.models.sparse_gru import SparseGRUCell
from tfcredit.tasks import base as task_base
from tfcredit.tasks import language_modeling
from tfcredit.tasks import synthetic

# The forward-mode workload: columns of random symbols.
FORWARD_MODE_VOCABULARY, FORWARD_MODE_BATCH = 32, 4


class RandomTokenStream(language_modeling.TokenStreamTask):
  """The language-modelling loss, specs and layout on uniformly random token ids.

  The benchmark must run without a download, and throughput does not depend on
  which tokens are drawn.
  """

  name = 'lm_random_tokens'

  def __init__(self, *, vocabulary_size: int, length: int, seed: int):
    super().__init__()
    self._size = vocabulary_size
    self._ids_array = np.random.default_rng(seed).integers(
        0, vocabulary_size, size=length, dtype=np.int32)

  @property
  def vocabulary_size(self) -> int:
    return self._size

  def _ids(self, split: str) -> np.ndarray:
    del split  # Every split is the same stream.
    return self._ids_array

  def get_config(self):
    return {'vocabulary_size': self._size}


@dataclasses.dataclass
class Workload:
  """One network and data layout, trained by tfcredit and by ``keras.Model.fit``.

  Attributes:
    name: row label.
    unit: what throughput counts: ``'tokens'`` or ``'sequences'``.
    task: the tfcredit task (its loss defines the objective).
    model_kwargs: ``RecurrentModel`` arguments beyond ``task.model_spec()``.
    make_optimizer: a fresh optimizer (the Keras twin gets its own).
    clip_norm: ``TruncatedBPTT.clip_norm``; the Keras twin uses ``global_clipnorm``.
    batch_size: sequences (or stream columns) per batch.
    segments: ``segment_length -> [(inputs, targets)]``: one round's tfcredit calls.
    keras_layers: ``window -> [keras.layers.Layer]``: the same network, input
      included.
    keras_loss: the Keras loss matching ``task.losses``.
    keras_data: ``window -> (x, y)`` arrays, batches in training order.
    flops_per_unit: ``backpropagated window or None (whole sequence) -> FLOPs`` of
      training one unit.
    stream: stream workloads: the ``[batch, steps + 1]`` token columns, for
      methods whose calls have random lengths (ARTBP).
  """
  name: str
  unit: str
  task: task_base.Task
  model_kwargs: Dict
  make_optimizer: Callable[[], keras.optimizers.Optimizer]
  clip_norm: Optional[float]
  batch_size: int
  segments: Callable[[int], List[Tuple[tf.Tensor, tf.Tensor]]]
  keras_layers: Callable[[int], list]
  keras_loss: keras.losses.Loss
  keras_data: Callable[[int], Tuple[np.ndarray, np.ndarray]]
  flops_per_unit: Callable[[Optional[int]], float]
  stream: Optional[np.ndarray] = None


def token_stream(name: str, *, vocabulary: int, units: int, layers: int,
                 batch: int, steps: int, seed: int,
                 make_optimizer: Callable[[], keras.optimizers.Optimizer],
                 clip_norm: Optional[float],
                 sparsity: Optional[float] = None) -> Workload:
  """A language model (embedding of ``units``, ``layers`` LSTMs of ``units``, a
  dense head) on ``batch`` columns of ``steps`` random token ids; with
  ``sparsity``, ``SparseGRUCell``s instead of the LSTMs (the Keras twin and the
  FLOP count then a dense GRU's)."""
  task = RandomTokenStream(vocabulary_size=vocabulary, length=batch * (steps + 1),
                           seed=seed)
  stream = task.stream('train', batch)

  def segments(length):
    return [(tf.constant(stream[:, start:start + length]),
             tf.constant(stream[:, start + 1:start + length + 1]))
            for start in range(0, steps, length)]

  def keras_data(window):
    # Batch i holds window i of every column, so a stateful LSTM carries each
    # column's state from one batch to the next, as truncated BPTT does.
    def windows(array):
      return (array.reshape(batch, -1, window).transpose(1, 0, 2)
              .reshape(-1, window))
    return windows(stream[:, :-1]), windows(stream[:, 1:])

  def keras_layers(window):
    return ([keras.Input(batch_shape=(batch, window), dtype='int32'),
             keras.layers.Embedding(vocabulary, units)]
            + [recurrent(units, stateful=True, return_sequences=True)
               for _ in range(layers)]
            + [keras.layers.Dense(vocabulary)])

  recurrent, step_flops = keras.layers.LSTM, flops.lstm_step_flops
  model_kwargs = dict(units=units, num_layers=layers, embedding_dim=units)
  if sparsity is not None:
    recurrent, step_flops = keras.layers.GRU, flops.gru_step_flops
    model_kwargs['cell'] = functools.partial(SparseGRUCell, sparsity=sparsity)
  core = layers * step_flops(units, units)
  head = flops.dense_flops(units, vocabulary)
  return Workload(
      name=name, unit='tokens', task=task, model_kwargs=model_kwargs,
      make_optimizer=make_optimizer, clip_norm=clip_norm,
      batch_size=batch, segments=segments, keras_layers=keras_layers,
      keras_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      keras_data=keras_data, stream=stream,
      flops_per_unit=lambda _: flops.training_flops(core, head, 1, 1, 1))


def ptb_small(steps: int, seed: int) -> Workload:
  """Zaremba et al. (2014) small: 2x LSTM 200, window 20, batch 20, SGD 1, clip 5."""
  return token_stream('PTB small (random ids)', vocabulary=10000, units=200,
                      layers=2, batch=20, steps=steps, seed=seed,
                      make_optimizer=lambda: keras.optimizers.SGD(1.0),
                      clip_norm=5.0)


def forward_mode_stream(units: int, steps: int, seed: int,
                        sparsity: Optional[float] = None) -> Workload:
  """The forward-mode rows' model: LSTM ``units`` (with ``sparsity``, a
  ``SparseGRUCell`` of ``units`` with that share of its recurrent connections
  cut) on ``FORWARD_MODE_VOCABULARY`` random symbols, ``FORWARD_MODE_BATCH``
  columns, Adam 1e-3, clip 1."""
  core = (f'LSTM {units}' if sparsity is None
          else f'sparse GRU {units} ({sparsity:.0%} cut)')
  return token_stream(
      f'symbols (random ids), {core}', vocabulary=FORWARD_MODE_VOCABULARY,
      units=units, layers=1, batch=FORWARD_MODE_BATCH, steps=steps, seed=seed,
      make_optimizer=lambda: keras.optimizers.Adam(1e-3), clip_norm=1.0,
      sparsity=sparsity)


def lru_stream(units: int, inputs: int, steps: int, seed: int) -> Workload:
  """The element-wise RTRL rows' model: ``forward_mode_stream``'s symbols
  through an embedding of ``inputs`` and a 1-layer LRU of ``units``
  (``tfcredit.models.lru``) with its default ring, Adam 1e-3, clip 1. Its
  Keras ``fit`` twin is the LSTM's (the LRU rows are against truncated BPTT
  on the same model, not against Keras)."""
  workload = token_stream(
      f'symbols (random ids), LRU {units}, inputs {inputs}',
      vocabulary=FORWARD_MODE_VOCABULARY, units=units, layers=1,
      batch=FORWARD_MODE_BATCH, steps=steps, seed=seed,
      make_optimizer=lambda: keras.optimizers.Adam(1e-3), clip_norm=1.0)
  core = flops.lru_step_flops(inputs, units, units)
  head = flops.dense_flops(units, FORWARD_MODE_VOCABULARY)
  return dataclasses.replace(
      workload, model_kwargs=dict(cell=LRUCell, units=units, num_layers=1,
                                  embedding_dim=inputs),
      flops_per_unit=lambda _: flops.training_flops(core, head, 1, 1, 1))


def adding(length: int, batches: int, seed: int) -> Workload:
  """Adding task, T = ``length``: LSTM 128, batch 128, Adam 1e-3, MSE at the end."""
  units, batch = 128, 128
  task = synthetic.AddingTask(sequence_length=length, seed=seed)
  data = [task.batch('train', 0, index, batch) for index in range(batches)]

  def segments(length_unused):
    del length_unused  # Episodic: one call per batch of whole sequences.
    return [(tf.constant(inputs), tf.constant(targets)) for inputs, targets in data]

  def keras_data(window_unused):
    del window_unused
    return (np.concatenate([inputs for inputs, _ in data]),
            np.concatenate([targets for _, targets in data]))

  def keras_layers(window_unused):
    del window_unused  # The reference trains on whole sequences.
    return [keras.Input(batch_shape=(batch, length, 2)), keras.layers.LSTM(units),
            keras.layers.Dense(1)]

  core = flops.lstm_step_flops(2, units)
  head = flops.dense_flops(units, 1)

  def flops_per_unit(window):
    backward = length if window is None else min(window, length)
    return flops.training_flops(core, head, length, backward, 1)

  return Workload(
      name=f'adding T={length}', unit='sequences', task=task,
      model_kwargs=dict(units=units), clip_norm=None,
      make_optimizer=lambda: keras.optimizers.Adam(1e-3), batch_size=batch,
      segments=segments, keras_layers=keras_layers,
      keras_loss=keras.losses.MeanSquaredError(), keras_data=keras_data,
      flops_per_unit=flops_per_unit)


def with_unroll(workload: Workload, unroll_implementation: str) -> Workload:
  """``workload`` with ``RecurrentModel.unroll_implementation`` set."""
  return dataclasses.replace(workload, model_kwargs=dict(
      workload.model_kwargs, unroll_implementation=unroll_implementation))

"""One trace per function serves every segment: compiled equals eager.

Each method's ``train_segment`` and ``estimate_gradients`` are traced once, with
an input signature whose batch and time dimensions are ``None``. A trace that
baked in a Python value (a length, a batch, a stream position, a phase) would
still count one trace but give other numbers than running the same calls
eagerly; these tests compare the two over segments of several lengths.
"""

import functools

import keras
import pytest
import tensorflow as tf

from tfcredit import methods
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.testing import (assert_compiled_matches_eager, built_optimizer,
                              example_model_arguments, small_methods,
                              tiny_model, to_numpy)
from tfcredit.training import trainer

from tiers import slow_except

ROWS = 3
STREAM = MarkovLanguageTask(vocabulary_size=6, branching=2, train_length=300,
                            eval_length=20, seed=4)


def _arrays(nest):
  return tf.nest.map_structure(to_numpy, nest)


def _build(factory, task, name=None):
  def build():
    model = tiny_model(task, seed=0, units=6,
                       **example_model_arguments(name))
    optimizer = built_optimizer(model, keras.optimizers.Adam, learning_rate=0.02)
    return factory(model, task, optimizer), model
  return build


def _forward_mode(name):
  return issubclass(methods.METHODS[name], methods.RTRL)


def _factories():
  """``small_methods``, but the forward-mode methods (RTRL, UORO, SnAp-1) with
  windows of 2 steps: every step of their eager twin traces
  ``tf.vectorized_map`` and ``batch_jacobian`` anew (half a second), and what
  the test checks does not depend on the window's size."""
  factories = small_methods(ROWS)
  for name, cls in methods.METHODS.items():
    if _forward_mode(name):
      arguments = dict(cls.EXAMPLE_ARGUMENTS, window=2)
      factories[name] = (
          lambda model, task, optimizer, cls=cls, arguments=arguments:
          trainer.build_method(functools.partial(cls, **arguments), model, task,
                               optimizer, ROWS))
  return factories


def _stream_lengths(method):
  """Calls of the method's own length, then shorter ones (a stream's end).

  The forward-mode methods: one call of their own length (two windows), one
  a step shorter (a whole window and a partial one), one of a single step;
  what they carry between calls (the state, the influence, UORO's draw
  counters) is read by every call after the first. The others: three calls of
  their own length (positions and phases a later call reaches), then two
  shorter ones.
  """
  length = method.segment_length()
  if isinstance(method, methods.RTRL):
    return [length, length - 1, 1]
  return [length] * 3 + [max(1, length // 2 - 1), max(1, length // 3 - 1)]


def _stream_calls(method, model):
  """The calls of ``_stream_lengths``, each from the state the last one left."""
  data = STREAM.stream('train', ROWS)
  state, position, results = model.initial_state(ROWS), 0, []
  for length in _stream_lengths(method):
    segment = (tf.constant(data[:, position:position + length]),
               tf.constant(data[:, position + 1:position + length + 1]))
    position += length
    gradients, _ = method.estimate_gradients(segment, state)
    state, metrics = method.train_segment(segment, state)
    results.append((_arrays(gradients), _arrays(metrics),
                    _arrays(state)))
  return results


@pytest.mark.parametrize(
    'name', slow_except(sorted(small_methods(ROWS)), 'truncated_bptt'))
def test_one_trace_serves_stream_segments_of_any_length(name):
  factory = _factories()[name]
  method = assert_compiled_matches_eager(_build(factory, STREAM, name),
                                         _stream_calls)
  if _forward_mode(name):
    assert method.window == 2 and _stream_lengths(method) == [4, 3, 1]
  assert method.trace_counts['train_segment'] == 1
  assert method.trace_counts['estimate_gradients'] == 1


EPISODIC = {
    'truncated_bptt': lambda m, t, o: methods.TruncatedBPTT(
        model=m, task=t, optimizer=o, window=4),
    'artbp': lambda m, t, o: methods.ARTBP(model=m, task=t, optimizer=o,
                                           mean_length=3, seed=1),
    'dni': lambda m, t, o: methods.DNI(model=m, task=t, optimizer=o, window=4),
    'fptt': lambda m, t, o: methods.FPTT(model=m, task=t, optimizer=o, windows=3,
                                         alpha=0.5),
}


@pytest.mark.parametrize('name',
                         slow_except(sorted(EPISODIC), 'truncated_bptt'))
def test_one_trace_serves_episodic_batches_of_any_length_and_size(name):
  def run(method, model):
    results = []
    for length, batch in ((10, 4), (17, 2), (6, 3)):
      inputs, targets = AddingTask(sequence_length=length, seed=length).batch(
          'train', 0, 0, batch)
      segment = (tf.constant(inputs), tf.constant(targets))
      gradients, _ = method.estimate_gradients(segment, model.initial_state(batch))
      _, metrics = method.train_segment(segment, model.initial_state(batch))
      results.append((_arrays(gradients),
                      _arrays(metrics)))
    return results
  method = assert_compiled_matches_eager(
      _build(EPISODIC[name], AddingTask(sequence_length=10)), run)
  assert method.trace_counts['train_segment'] == 1
  assert method.trace_counts['estimate_gradients'] == 1

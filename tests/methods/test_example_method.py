"""The worked example method of docs/design.md ("Adding a method") trains.

The test reads the example's code from the design document, so the page stays
true: registered, it is built like every method, and with ``decay = 1`` it makes
exactly truncated BPTT's updates and estimates; with ``decay < 1`` it does not.
"""

import pathlib
import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcredit.methods import TruncatedBPTT, registry
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.testing import built_optimizer, tiny_model

DESIGN = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'design.md'
ROWS = 3


@pytest.fixture(scope='module')
def example():
  text = DESIGN.read_text()
  code = re.search(r'<!-- example-method: begin -->\n```python\n(.*?)```\n'
                   r'<!-- example-method: end -->', text, re.S).group(1)
  assert 40 <= len(code.splitlines()) <= 70  # "a 60-line example"
  module = types.ModuleType('example_method')
  exec(compile(code, str(DESIGN), 'exec'), module.__dict__)  # pylint: disable=exec-used
  yield module.DecayedBPTT
  registry.REGISTRY.pop('decayed_bptt', None)  # Keep METHODS as shipped.


def _train(cls, task, **arguments):
  model = tiny_model(task, seed=0, units=6)
  method = cls(model=model, task=task, optimizer=built_optimizer(
      model, keras.optimizers.Adam, learning_rate=0.05), **arguments)
  data = task.stream('train', ROWS)
  state, position = model.initial_state(ROWS), 0
  segment = lambda start, length: (tf.constant(data[:, start:start + length]),
                                   tf.constant(data[:, start + 1:start + length + 1]))
  estimate, _ = method.estimate_gradients(segment(0, 13), state)
  for length in (10, 10, 7):
    state, _ = method.train_segment(segment(position, length), state)
    position += length
  return ([v.numpy() for v in model.trainable_variables],
          [tf.convert_to_tensor(g).numpy() for g in estimate])


def test_the_example_is_registered_and_validates(example):
  assert registry.REGISTRY['decayed_bptt'] is example
  task = MarkovLanguageTask(vocabulary_size=5, train_length=100, eval_length=20)
  model = tiny_model(task, seed=0, units=4)
  with pytest.raises(Exception, match=r'DecayedBPTT\.decay'):
    example(model=model, task=task, optimizer=built_optimizer(model), decay=1.5)


def test_decay_one_is_truncated_bptt_and_decay_below_one_is_not(example):
  task = MarkovLanguageTask(vocabulary_size=5, train_length=100, eval_length=20,
                            seed=3)
  # The reference eager and uncompiled (a trace or an XLA compile would cost
  # more than its four calls; test_truncated_bptt checks the compiled pass).
  reference = _train(TruncatedBPTT, task, window=5, windows_per_call=2,
                     use_tf_function=False, jit_compile=False)
  same = _train(example, task, window=5, windows_per_call=2, decay=1.0)
  decayed = _train(example, task, window=5, windows_per_call=2, decay=0.5)
  for a, b in zip(same[0] + same[1], reference[0] + reference[1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert max(np.abs(a - b).max() for a, b in zip(decayed[1], reference[1])) > 1e-4
  assert max(np.abs(a - b).max() for a, b in zip(decayed[0], reference[0])) > 1e-4

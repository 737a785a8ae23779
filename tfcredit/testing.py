"""Shared test helpers: tiny models, built optimizers, gin reset, gradient comparison.

Used by the test suite (docs/design.md, "Tests") and handy in notebooks. Nothing here is
imported by the library itself, so the helpers may depend on pytest lazily.
"""

import contextlib
import functools
import os
import re
import sys
from typing import Any, Callable, Iterator, Optional

import gin
import keras
import numpy as np
import tensorflow as tf

from tfcredit import config
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.tasks import base as task_base

# Small enough that a whole test module runs in seconds on two CPU cores.
TINY_MODEL_DEFAULTS = {'cell': 'lstm', 'units': 8, 'num_layers': 1}


def example_inputs(task: task_base.Task, batch_size: int = 1,
                   length: int = 1) -> tf.Tensor:
  """Zero inputs of ``task``'s input spec with the given batch size and length."""
  spec = task.segment_spec()[0]
  shape = [batch_size, length] + [int(d) for d in spec.shape[2:]]
  return tf.zeros(shape, spec.dtype)


def tiny_model(task: task_base.Task, seed: Optional[int] = 0,
               **overrides: Any) -> RecurrentModel:
  """A small built ``RecurrentModel`` for ``task``.

  Args:
    task: supplies ``model_spec()`` (input kind, output size, readout).
    seed: if not None, seeds Keras (Python, numpy and TF) first, so the initial
      weights are reproducible.
    **overrides: ``RecurrentModel`` arguments that replace the task's spec or the
      tiny defaults (``cell='lstm', units=8, num_layers=1``).

  Returns:
    The model, with every weight created (``build_for``).
  """
  if seed is not None:
    keras.utils.set_random_seed(seed)
  kwargs = dict(TINY_MODEL_DEFAULTS)
  kwargs.update(task.model_spec())
  kwargs.update(overrides)
  model = RecurrentModel(**kwargs)
  model.build_for(example_inputs(task))
  return model


def checkpoint_weights(model_dir: str) -> dict:
  """``{name: array}`` of the model's weights in ``model_dir``'s newest checkpoint."""
  path = tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name)
          for name, _ in tf.train.list_variables(path) if name.startswith('model/')}


def hparams_sessions(directory: str) -> list:
  """The HParams sessions started in the event files directly in ``directory``,
  read back as TensorBoard reads them: ``[(group name, {hparam: value})]``, a
  number as a float."""
  import glob  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top
  sessions = []
  for path in sorted(glob.glob(os.path.join(directory, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name != 'hparams':
          continue
        data = plugin_data_pb2.HParamsPluginData.FromString(
            value.metadata.plugin_data.content)
        if data.HasField('session_start_info'):
          info = data.session_start_info
          sessions.append((info.group_name, {
              key: getattr(item, item.WhichOneof('kind'))
              for key, item in info.hparams.items()}))
  return sessions


def small_methods(rows: int) -> dict:
  """``{name: (model, task, optimizer) -> method}``: every registered method
  (``tfcredit.methods.METHODS``) with its ``EXAMPLE_ARGUMENTS`` (small windows),
  for tests that train each one on a stream of ``rows`` columns."""
  from tfcredit import methods  # pylint: disable=g-import-not-at-top
  from tfcredit.training import trainer  # pylint: disable=g-import-not-at-top

  def factory(cls):
    return lambda model, task, optimizer: trainer.build_method(
        functools.partial(cls, **cls.EXAMPLE_ARGUMENTS), model, task, optimizer,
        rows)
  return {name: factory(cls) for name, cls in methods.METHODS.items()}


def example_model_arguments(name: str) -> dict:
  """The ``RecurrentModel`` arguments the shared tests add to their small
  model for the registered method ``name`` (its ``EXAMPLE_MODEL``: the cell it
  needs); ``{}`` for any other name."""
  from tfcredit import methods  # pylint: disable=g-import-not-at-top
  cls = methods.METHODS.get(name)
  return dict(cls.EXAMPLE_MODEL) if cls is not None else {}


def built_optimizer(model: keras.Model, cls=keras.optimizers.SGD,
                    learning_rate: float = 0.1, **kwargs: Any
                    ) -> keras.optimizers.Optimizer:
  """An optimizer of class ``cls`` built on ``model``'s trainable variables."""
  optimizer = cls(learning_rate=learning_rate, **kwargs)
  optimizer.build(model.trainable_variables)
  return optimizer


@contextlib.contextmanager
def cleared_gin_config() -> Iterator[None]:
  """Clears the gin configuration on entry and on exit (even on failure)."""
  gin.clear_config()
  try:
    yield
  finally:
    gin.clear_config()


def _fixture(function):
  import pytest  # Only tests need pytest; the library does not.
  return pytest.fixture(function)


@_fixture
def clean_gin():
  """Pytest fixture: a test that requests it starts and ends with empty gin config.

  Import it into a test module (``from tfcredit.testing import clean_gin``) and
  name it as an argument, or use it with ``pytest.mark.usefixtures``.
  """
  with cleared_gin_config():
    yield


def to_numpy(value: Any) -> np.ndarray:
  """A dense numpy array from a tensor, variable or ``tf.IndexedSlices``."""
  return np.asarray(tf.convert_to_tensor(value))


def max_abs_diff(nest_a: Any, nest_b: Any) -> float:
  """Largest absolute elementwise difference between two nests of tensors.

  ``tf.IndexedSlices`` (embedding gradients) are densified first. ``None``
  entries must match ``None`` entries.

  Raises:
    ValueError: the nests differ in structure, or an entry in shape.
  """
  tf.nest.assert_same_structure(nest_a, nest_b, expand_composites=False)
  worst = 0.0
  for a, b in zip(tf.nest.flatten(nest_a), tf.nest.flatten(nest_b)):
    if a is None or b is None:
      if (a is None) != (b is None):
        raise ValueError('one nest has None where the other has a tensor')
      continue
    a, b = to_numpy(a), to_numpy(b)
    if a.shape != b.shape:
      raise ValueError(f'shapes differ: {a.shape} vs {b.shape}')
    if a.size:
      worst = max(worst, float(np.max(np.abs(a.astype(np.float64) -
                                             b.astype(np.float64)))))
  return worst


def assert_nests_close(actual: Any, expected: Any, rtol: float = 1e-5,
                       atol: float = 1e-6) -> None:
  """``np.testing.assert_allclose`` over every pair of leaves of two nests."""
  tf.nest.assert_same_structure(actual, expected)
  for index, (a, b) in enumerate(zip(tf.nest.flatten(actual),
                                     tf.nest.flatten(expected))):
    np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=rtol, atol=atol,
                               err_msg=f'leaf {index}')


def assert_compiled_matches_eager(build: Callable[[], Any],
                                  run: Callable[[Any, Any], Any],
                                  rtol: float = 1e-5, atol: float = 1e-6) -> Any:
  """Runs ``run(method, model)`` on a method from ``build() -> (method, model)``
  and on a twin whose ``tf.function``s run eagerly (same initial weights), and
  asserts the results and final weights agree. A trace that baked in a Python
  value (a segment's length or batch, a stream position) would disagree.
  Returns the compiled method (for its ``trace_counts``)."""
  results = []
  for eagerly in (False, True):
    tf.config.run_functions_eagerly(eagerly)
    try:
      method, model = build()
      outcome = run(method, model)
      results.append((outcome, [v.numpy() for v in model.trainable_variables]))
    finally:
      tf.config.run_functions_eagerly(False)
    if not eagerly:
      compiled = method
  assert_nests_close(results[0], results[1], rtol=rtol, atol=atol)
  return compiled


# TensorFlow's C++ log lines ("E0000 00:00:... failed call to cuInit", "I0000 ...
# cudart_stub.cc ..."), the absl notice that precedes them, and oneDNN's note: what
# the entry points keep off stderr unless asked (``--verbose``).
TENSORFLOW_STARTUP_LINE = re.compile(
    r'^[EWIF]\d{4}|cuInit|oneDNN|absl::InitializeLog|cudart_stub|cpu_feature_guard')


def tensorflow_startup_lines(text: str, first: Optional[int] = None) -> list:
  """The lines of ``text`` (of its ``first`` lines) that are TensorFlow's."""
  return [line for line in text.splitlines()[:first]
          if TENSORFLOW_STARTUP_LINE.search(line)]


TINY_CONFIG = os.path.join(config.GIN_CONFIGS_DIR, 'testing', 'tiny.gin')


def configure_tiny(*bindings: str) -> None:
  """Clears gin, then parses the tiny config, deterministic and with no progress
  lines, plus ``bindings``: the set-up of the trainer's end-to-end tests."""
  from tfcredit import config  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  config.parse([TINY_CONFIG], ['train.deterministic = True',
                               'train.log_every_seconds = 1e9', *bindings])


def configured_components():
  """The trainer's components (``task``, ``method``, ``model``, ...) built from
  the gin config parsed so far, as ``tfcredit.train`` builds them."""
  from tfcredit.training import trainer  # pylint: disable=g-import-not-at-top
  arguments = trainer.configured_arguments()
  return trainer.build_components(**{
      key: arguments[key] for key in ('task', 'method', 'model', 'optimizer',
                                      'learning_rate', 'batch_size')})


def run_entry_point(command: str, *args: str) -> int:
  """Runs the ``tfcredit.cli.<command>`` entry point in this process, as
  ``tools/<command>.py args...`` would run it in a new one, and returns its exit
  code: for tests about messages and exit codes, without the seconds a new
  interpreter spends importing TensorFlow. (Run a process for what only a
  process shows: signals, TensorFlow's start-up lines, the installed scripts.)

  Its output goes to this process's stdout and stderr (read them with pytest's
  ``capfd``). Flags and the gin configuration are reset before and after, so
  nothing carries over between calls or from an earlier test; the signal
  handlers and log levels the entry point changes are restored afterwards. An exception that escapes the entry
  point is printed with its traceback and gives exit code 1, as in a process.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import traceback  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  module = importlib.import_module(f'tfcredit.cli.{command}')
  handlers = {signum: signal.getsignal(signum)
              for signum in (signal.SIGTERM, signal.SIGINT)}
  verbosity = absl_logging.get_verbosity()
  tf_level = tf.get_logger().level
  flags.FLAGS.unparse_flags()
  gin.clear_config()
  try:
    module.main([os.path.join('tools', f'{command}.py'), *args])
  except SystemExit as exit_:
    if exit_.code is None:
      return 0
    if isinstance(exit_.code, int):
      return exit_.code
    print(exit_.code, file=sys.stderr)
    return 1
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    return 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    flags.FLAGS.unparse_flags()
    for signum, handler in handlers.items():
      signal.signal(signum, handler)
    absl_logging.set_verbosity(verbosity)
    tf.get_logger().setLevel(tf_level)
    gin.clear_config()
  return 0


class TwoStateCell(keras.layers.Layer):
  """A custom cell with two state tensors of different sizes (``h`` ``units``,
  ``m`` ``memory``): ``h' = tanh(x W + h U + m V + b)``, ``m' = ½ m + tanh(h' P)``;
  output ``h'``."""

  def __init__(self, units: int = 4, memory: int = 3, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.memory = memory
    self.state_size = (units, memory)
    self.output_size = units

  def build(self, input_shape):
    normal = keras.initializers.RandomNormal(stddev=0.5)
    self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer=normal,
                             name='w')
    self.u = self.add_weight(shape=(self.units, self.units), initializer=normal,
                             name='u')
    self.v = self.add_weight(shape=(self.memory, self.units), initializer=normal,
                             name='v')
    self.p = self.add_weight(shape=(self.units, self.memory), initializer=normal,
                             name='p')
    self.b = self.add_weight(shape=(self.units,), initializer='zeros', name='b')
    super().build(input_shape)

  def call(self, inputs, states, training=False):
    del training
    h, m = states
    h_new = tf.tanh(inputs @ self.w + h @ self.u + m @ self.v + self.b)
    m_new = 0.5 * m + tf.tanh(h_new @ self.p)
    return h_new, [h_new, m_new]

  def get_config(self):
    config = super().get_config()
    config.update({'units': self.units, 'memory': self.memory})
    return config

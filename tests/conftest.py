"""Test-session set-up: split the CPU into two logical devices.

This must happen before TensorFlow initialises its devices, so it runs in
``pytest_configure``, before any test module is imported. Tests of
``tf.distribute`` then run ``MirroredStrategy`` over ``/cpu:0`` and ``/cpu:1``,
the same code path as two GPUs; everything else keeps using the default device.
Under ``-n 2`` only the worker processes run tests: the controller imports
neither TensorFlow nor the package (seconds saved before the workers start).
"""

import collections
import os

import pytest

# jit_compile='auto' stays off, and so do the parts tfcredit compiles by itself
# (tfcredit.xla: the fused unroll's loops, the language models' cross-entropy):
# the suite builds hundreds of short-lived models, and XLA compiles each one's
# functions (seconds each on a CPU, kept in memory by the process). Tests that
# pass jit_compile=True, and the ones on 'auto' and on the compiled parts
# themselves, still compile. Subprocesses of the tests inherit it.
os.environ.setdefault('TFCREDIT_AUTO_XLA', '0')

Done = collections.namedtuple('Done', 'returncode stdout stderr')


def pytest_configure(config):
  if getattr(config.option, 'numprocesses', None) and not hasattr(
      config, 'workerinput'):
    return  # The xdist controller: its workers run the tests.
  # The in-process entry points (run_command) run as a command does by default:
  # TensorFlow's C++ log lines off (tfcredit/_startup.py sets the same before a
  # command imports TensorFlow). Without it, a one-time line of some builds
  # (oneDNN's "supports DT_BOOL only on platforms with AVX-512", on a machine
  # with AMX) lands in whichever test runs the first boolean op, even under
  # .ci/run's level 2. Children started by tests/checkout.py's run_tool drop it.
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
  from tfcredit.training import distribution  # pylint: disable=g-import-not-at-top
  distribution.split_cpu(2)


@pytest.fixture
def run_command(capfd):
  """``run_command('train', *args)``: runs ``tools/train.py args`` in this
  process (``run_entry_point``) and returns its exit code and output as
  ``run_tool`` reports a process's, for tests of messages, exit codes and output
  that need no process of their own."""
  from tfcredit.testing import run_entry_point  # pylint: disable=g-import-not-at-top

  def run(command, *args):
    capfd.readouterr()
    returncode = run_entry_point(command, *args)
    captured = capfd.readouterr()
    return Done(returncode, captured.out, captured.err)
  return run


@pytest.fixture(scope='session')
def mirrored():
  """The one ``MirroredStrategy`` over ``/cpu:0`` and ``/cpu:1`` of the test
  process. One per process: two strategies over the same devices number their
  collectives alike, and TensorFlow then refuses the second one's gathers
  ("Shape mismatch in the collective instance")."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  devices = tf.config.list_logical_devices('CPU')
  assert len(devices) >= 2, 'tests/conftest.py should have split the CPU'
  return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])

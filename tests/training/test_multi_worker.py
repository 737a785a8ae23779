"""Two worker processes on 127.0.0.1 train like one process.

Each worker runs ``tools/train.py --strategy=multi_worker`` with its own
``TF_CONFIG``; the global batch is split over the workers and the gradients are
summed across them, so both end with the weights of a single-process run.
"""

import json
import re
import signal
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from checkout import REPOSITORY
from tfcredit.testing import TINY_CONFIG
from tfcredit.testing import hparams_sessions

# Two worker processes and a single-process reference: the processes are the test.
pytestmark = pytest.mark.slow

BINDINGS = ['--gin_bindings=train.epochs = 1', '--gin_bindings=train.deterministic = True']


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _command(model_dir, *extra):
  return [sys.executable, os.path.join(REPOSITORY, 'tools', 'train.py'), f'--gin_file={TINY_CONFIG}',
          f'--model_dir={model_dir}', '--export_dir=', *BINDINGS, *extra]


def _weights(directory):
  path = tf.train.latest_checkpoint(os.path.join(directory, 'checkpoints'))
  reader = tf.train.load_checkpoint(path)
  return {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(path)
          if n.startswith('model/')}


def test_two_workers_match_a_single_process(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  single = subprocess.run(_command(tmp_path / 'single'), capture_output=True,
                          text=True, env=env, timeout=600)
  assert single.returncode == 0, single.stderr
  cluster = {'worker': [f'127.0.0.1:{p}' for p in _free_ports(2)]}
  workers = []
  for index in range(2):
    worker_env = dict(env, TF_CONFIG=json.dumps(
        {'cluster': cluster, 'task': {'type': 'worker', 'index': index}}))
    workers.append(subprocess.Popen(
        _command(tmp_path / 'multi', '--strategy=multi_worker'),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env))
  outputs = [w.communicate(timeout=600) for w in workers]
  for worker, (_, err) in zip(workers, outputs):
    assert worker.returncode == 0, err
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  expected = json.loads(single.stdout.strip().splitlines()[-1])
  for result in results:
    np.testing.assert_allclose(result['valid_loss'], expected['valid_loss'], rtol=1e-5)
  reference = _weights(tmp_path / 'single')
  for directory in (tmp_path / 'multi', tmp_path / 'multi' / '.worker_1'):
    weights = _weights(directory)
    assert weights.keys() == reference.keys()
    for name in reference:
      np.testing.assert_allclose(weights[name], reference[name], atol=1e-5,
                                 err_msg=f'{directory}: {name}')
  # Only the chief writes the run's HParams session.
  assert len(hparams_sessions(str(tmp_path / 'multi'))) == 1
  assert not hparams_sessions(str(tmp_path / 'multi' / '.worker_1'))


def test_a_preempted_worker_stops_every_worker_at_one_checkpoint(tmp_path):
  """SIGTERM to the non-chief worker only: both finish the same call, the chief
  writes one checkpoint, both exit 143; rerun, they end as an uninterrupted run."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  longer = ['--gin_bindings=AddingTask.train_batches_per_epoch = 300',
            '--gin_bindings=train.evaluate_test = False']
  single = subprocess.run(_command(tmp_path / 'single', *longer),
                          capture_output=True, text=True, env=env, timeout=600)
  assert single.returncode == 0, single.stderr
  cluster = {'worker': [f'127.0.0.1:{p}' for p in _free_ports(2)]}

  def start_workers():
    workers = []
    for index in range(2):
      worker_env = dict(env, TF_CONFIG=json.dumps(
          {'cluster': cluster, 'task': {'type': 'worker', 'index': index}}))
      workers.append(subprocess.Popen(
          _command(tmp_path / 'multi', '--strategy=multi_worker', *longer),
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
          env=worker_env))
    return workers

  workers = start_workers()
  for line in workers[0].stdout:  # The chief's progress: training has started.
    if line.startswith('epoch 1/1'):
      break
  workers[1].send_signal(signal.SIGTERM)
  outputs = [w.communicate(timeout=600) for w in workers]
  assert [w.returncode for w in workers] == [143, 143], outputs
  stopped = [re.search(r'stopped after training call (\d+)', err)
             for _, err in outputs]
  assert all(stopped), outputs
  call = int(stopped[0].group(1))
  assert int(stopped[1].group(1)) == call and 0 < call < 300
  assert tf.train.latest_checkpoint(
      os.path.join(tmp_path / 'multi', 'checkpoints')).endswith(f'ckpt-{call}')

  workers = start_workers()
  outputs = [w.communicate(timeout=600) for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs
  assert 'resumed from' in outputs[0][0]
  reference = _weights(tmp_path / 'single')
  weights = _weights(tmp_path / 'multi')
  assert weights.keys() == reference.keys()
  for name in reference:
    np.testing.assert_allclose(weights[name], reference[name], atol=1e-5,
                               err_msg=name)

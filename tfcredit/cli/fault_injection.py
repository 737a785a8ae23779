"""Kills training runs at random and checks the reruns: ``tfcredit-fault-injection
--gin_file=testing/tiny.gin --trials=5``.

One uninterrupted reference run, then ``--trials`` runs of the same configuration,
each sent SIGKILL or SIGTERM (``--signals``) after a random number of training
calls (counted by progress lines: ``train.log_every_seconds = 0`` and
``train.deterministic = True`` are added to the bindings), then rerun with the
same command until it finishes. Reports how many trials ended identical to the
reference (``final_metrics.json``) and how many training calls each lost (calls
done before the signal minus the checkpoint the rerun resumed from). The last line
printed is one JSON object. Exit codes: 0 every trial identical, 1 otherwise, 2
bad usage.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

from absl import flags

from tfcredit import validation
from tfcredit.cli import common

FLAGS = flags.FLAGS
_SIGNALS = {'kill': signal.SIGKILL, 'term': signal.SIGTERM}


def define_flags() -> None:
  define = common.define_flag
  common.define_gin_flags()
  define(flags.DEFINE_integer, 'trials', 5, 'Interrupted runs.')
  define(flags.DEFINE_list, 'signals', ['kill', 'term'], 'Signals drawn from: '
         'kill (SIGKILL), term (SIGTERM).')
  define(flags.DEFINE_integer, 'seed', 0, 'Seed of the draws.')
  define(flags.DEFINE_string, 'output_dir', None, 'Where the runs go; default a '
         'temporary folder, deleted at the end.')
  define(flags.DEFINE_string, 'data_dir', None, 'Data directory.')


def _command(model_dir: str) -> List[str]:
  command = [sys.executable, '-m', 'tfcredit.cli.train', f'--model_dir={model_dir}',
             '--export_dir=']
  command += [f'--gin_file={path}' for path in FLAGS.gin_file]
  bindings = list(FLAGS.gin_bindings) + ['train.deterministic = True',
                                         'train.log_every_seconds = 0']
  command += [f'--gin_bindings={binding}' for binding in bindings]
  if FLAGS.data_dir:
    command.append(f'--data_dir={FLAGS.data_dir}')
  return command


def _final(model_dir: str) -> Dict:
  with open(os.path.join(model_dir, 'final_metrics.json')) as f:
    final = json.load(f)
  for key in ('model_dir', 'saved_model'):
    final.pop(key, None)
  return final


def _run(model_dir: str) -> subprocess.CompletedProcess:
  return subprocess.run(_command(model_dir), capture_output=True, text=True,
                        env=common.quieted_environment())


def _progress_lines(text: str) -> int:
  return sum(1 for line in text.splitlines() if re.match(r'^epoch \d+/\d+ ', line))


def _interrupt(model_dir: str, signum: int, after_calls: int) -> int:
  """Runs until ``after_calls`` progress lines, sends ``signum``; returns the
  calls seen done before the signal."""
  process = subprocess.Popen(_command(model_dir), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             env=common.quieted_environment())
  seen = 0
  for line in process.stdout:
    if re.match(r'^epoch \d+/\d+ ', line):
      seen += 1
      if seen >= after_calls:
        process.send_signal(signum)
        break
  process.communicate()
  return seen


def run(argv: List[str]) -> int:
  code = common.unexpected_arguments(argv)
  if code is not None:
    return code
  import tfcredit  # pylint: disable=g-import-not-at-top
  if not FLAGS.gin_file:
    raise tfcredit.ConfigurationError('--gin_file is required, e.g. '
                                      '--gin_file=testing/tiny.gin')
  unknown = [name for name in FLAGS.signals if name not in _SIGNALS]
  if unknown or not FLAGS.signals:
    raise tfcredit.ConfigurationError(
        f'--signals={",".join(FLAGS.signals)}: use kill and/or term')
  validation.positive_int('--trials', FLAGS.trials)
  root = FLAGS.output_dir or tempfile.mkdtemp(prefix='fault_injection_')
  rng = random.Random(FLAGS.seed)
  try:
    reference_dir = os.path.join(root, 'reference')
    done = _run(reference_dir)
    if done.returncode != 0:
      raise tfcredit.TrainingError(
          f'the reference run failed (exit {done.returncode}): '
          f'{common.error_line(RuntimeError(done.stderr.strip()[-500:]))}')
    reference = _final(reference_dir)
    total_calls = _progress_lines(done.stdout)
    trials = []
    for trial in range(FLAGS.trials):
      name = rng.choice(FLAGS.signals)
      after = rng.randint(1, max(total_calls - 1, 1))
      model_dir = os.path.join(root, f'trial_{trial}')
      seen = _interrupt(model_dir, _SIGNALS[name], after)
      rerun = _run(model_dir)
      resumed = re.search(r'resumed from .*ckpt-(\d+) ', rerun.stdout)
      from_call = int(resumed.group(1)) if resumed else 0
      identical = rerun.returncode == 0 and _final(model_dir) == reference
      trials.append({'signal': name, 'after_calls': seen,
                     'resumed_from_call': from_call,
                     'calls_lost': max(seen - from_call, 0),
                     'rerun_exit': rerun.returncode, 'identical': identical})
      print(f'trial {trial}: SIG{name.upper()} after {seen} calls, resumed from '
            f'call {from_call}, {"identical" if identical else "DIFFERENT"}',
            flush=True)
  finally:
    if not FLAGS.output_dir:
      shutil.rmtree(root, ignore_errors=True)
  summary = {'trials': len(trials),
             'identical': sum(t['identical'] for t in trials),
             'calls_lost': {name: [t['calls_lost'] for t in trials
                                   if t['signal'] == name]
                            for name in sorted(set(t['signal'] for t in trials))},
             'total_calls': total_calls, 'runs': trials}
  print(json.dumps(summary))
  return 0 if summary['identical'] == summary['trials'] else 1


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The ``tfcredit-fault-injection`` console script."""
  define_flags()
  common.run(run, argv)


if __name__ == '__main__':
  main()

"""Where a training call's time goes: ``tfcredit-profile [--workload=ptb_small]``.

Runs the benchmark's workloads (``tfcredit-benchmark``: the PTB-small language
model on random token ids, or the adding task with T = 200) under
``TruncatedBPTT`` (or, with ``--method='NAME: gin bindings'``, any method on
the PTB shape, built as ``tfcredit-benchmark --method`` builds it), warms up,
then records ``--calls`` training calls with the TensorFlow profiler and sums
the time of every TensorFlow op by what it belongs to (the head, the softmax
cross-entropy, each recurrent layer forward and backward, the embedding,
gradient clipping, the optimizer, and the methods' own work: FPTT's running
average and regularizer, DNI's synthesizer, TargetProp's forward
initialisation). Op times are summed over
threads, so they are CPU time; the call's wall time is printed beside them. The
difference between the executor's time and the ops' is the executor's own
overhead (scheduling, the step loop's control flow).

Writes ``profile.json`` and ``profile.md`` into ``--output_dir`` and the raw trace
(readable by TensorBoard's profile plugin, when installed) under ``trace/``.
"""

import collections
import glob
import json
import os
import re
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import flags

from tfcredit import validation
from tfcredit.cli import common
from tfcredit.errors import ConfigurationError

FLAGS = flags.FLAGS

WORKLOADS = ('ptb_small', 'adding')
# (category, pattern on the op's full name, searched in this order). The
# backward ops of a layer are under ``gradient_tape/`` (autodiff) or inside a
# custom gradient's backward loop (``IdentityN`` grads of the fused unroll).
# The methods' own work is under name scopes of theirs (``fptt_averages``,
# ``fptt_regularizer``, ``target_prop_forward``) or a layer's name (the
# synthesizer), matched first.
CATEGORIES: Tuple[Tuple[str, str], ...] = (
    ('DNI synthesizer (forward and backward)', r'synthesizer'),
    ('FPTT running average and gradient state (W̄, λ)', r'fptt_averages'),
    ('FPTT regularizer (value and gradient)', r'fptt_regularizer'),
    ('TargetProp forward initialisation', r'target_prop_forward'),
    ('softmax cross-entropy (forward and backward)', r'SparseSoftmaxCrossEntropy'),
    ('head, backward', r'gradient_tape/.*head'),
    ('head, forward', r'head'),
    ('gradient clipping (global norm)', r'clip_by_global_norm|global_norm'),
    ('optimizer update', r'/(sgd|adam|adagrad)/|AssignSubVariableOp|'
                         r'AssignAddVariableOp|ResourceApply'),
    ('embedding (lookup and gradient)', r'embedding'),
    ('recurrent layers, backward', r'(gradient_tape|_grad|IdentityN).*'
                                   r'(lstm|gru|simple_rnn)|(lstm|gru|simple_rnn).*'
                                   r'(_grad|backward)'),
    ('recurrent layers, forward', r'lstm|gru|simple_rnn'),
)
EXECUTOR = 'ExecutorState::Process'
# TensorFlow ops are named 'scope/op:Type'; host events such as
# 'KernelAndDeviceFunc::Run' or 'EagerLocalExecute: ...' enclose them.
_OP_NAME = re.compile(r'^[^\s:]+:[A-Za-z0-9_]+$')
# XLA-compiled code (a ``jit_compile`` function: FPTT's fused passes) runs as
# kernels named after their fusion ('multiply_subtract_fusion.2'), on the
# executor's and the Eigen pool's threads, without the op's scope.
_XLA_KERNEL = re.compile(r'^([a-z0-9_-]*fusion|wrapped_[a-z0-9_-]+)(\.\d+)?$')
XLA_CATEGORY = 'XLA-compiled kernels (FPTT\'s fused W̄, λ and regularizer passes)'


def define_flags() -> None:
  define = common.define_flag
  define(flags.DEFINE_enum, 'workload', 'ptb_small', WORKLOADS, 'What to train: '
         'the PTB-small shape (window 20, 10 windows per call) or the adding '
         'task (T = 200, full BPTT).')
  define(flags.DEFINE_enum, 'unroll_implementation', 'auto',
         ['auto', 'fused', 'keras'], 'RecurrentModel.unroll_implementation.')
  # A multi-string as in the other commands that take --method (one process
  # may define the flags of several); one method is profiled.
  define(flags.DEFINE_multi_string, 'method', None, "Profile this method on "
         "the PTB shape instead of TruncatedBPTT: 'NAME: gin bindings' as "
         "tfcredit-benchmark --method takes them, e.g. --method='FPTT: "
         "train.method = @FPTT; FPTT.windows = 10; FPTT.window_length = 20; "
         "FPTT.alpha = 0.01; FPTT.clip_norm = 5.0'.")
  define(flags.DEFINE_integer, 'calls', 5, 'Training calls recorded.')
  define(flags.DEFINE_string, 'output_dir', 'runs/profile', 'Where profile.json, '
         'profile.md and the trace are written.')


def categorize(name: str) -> str:
  """The category of a TensorFlow op's full name (``scope/.../op:Type``)."""
  for category, pattern in CATEGORIES:
    if re.search(pattern, name, flags=re.IGNORECASE):
      return category
  return 'other ops'


def op_times(xplane_path: str) -> Tuple[Dict[str, float], float, Dict[str, float]]:
  """Sums the host plane's op events.

  Returns:
    ``({category: seconds}, executor seconds, {op name: seconds})``: op time by
    category, the executor's total time, and the per-op totals.
  """
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  with open(xplane_path, 'rb') as f:
    space.ParseFromString(f.read())
  by_category: Dict[str, float] = collections.Counter()
  by_op: Dict[str, float] = collections.Counter()
  executor = 0.0
  for plane in space.planes:
    if not plane.name.startswith('/host:CPU'):
      continue
    names = {key: value.name for key, value in plane.event_metadata.items()}
    for line in plane.lines:
      if line.name == 'python':
        continue
      for event in line.events:
        name, seconds = names[event.metadata_id], event.duration_ps / 1e12
        if name == EXECUTOR:
          executor += seconds
        elif _OP_NAME.match(name):
          by_category[categorize(name)] += seconds
          by_op[name] += seconds
        elif _XLA_KERNEL.match(name):
          by_category[XLA_CATEGORY] += seconds
          by_op[name] += seconds
  return dict(by_category), executor, dict(by_op)


def build(workload: str, unroll_implementation: str, method: str = ''):
  """The benchmark's runner for ``workload`` (warmed up: traced and run once);
  ``method`` (``'NAME: bindings'``, PTB shape only) replaces TruncatedBPTT."""
  from tfcredit.benchmarks import runners  # pylint: disable=g-import-not-at-top
  from tfcredit.benchmarks import workloads  # pylint: disable=g-import-not-at-top
  if method:
    if workload != 'ptb_small':
      raise ConfigurationError('--method profiles the PTB shape only: drop '
                               f'--workload={workload}')
    data = workloads.with_unroll(workloads.ptb_small(steps=20 * 10 * 5, seed=0),
                                 unroll_implementation)
    return runners.configured_runner(data, method)
  if workload == 'ptb_small':
    data = workloads.ptb_small(steps=20 * 10 * 5, seed=0)
    window, windows_per_call = 20, 10
  else:
    data = workloads.adding(length=200, batches=2, seed=0)
    window, windows_per_call = 200, 1
  return runners.tfcredit_runner(data, window, windows_per_call,
                                 unroll_implementation=unroll_implementation)


def markdown(by_category: Dict[str, float], executor: float, wall: float,
             units: float, unit: str, top: Sequence[Tuple[str, float]]) -> str:
  total = sum(by_category.values())
  lines = ['| where | CPU s per 1,000 ' + unit + ' | share of op time |',
           '|---|---:|---:|']
  for category, seconds in sorted(by_category.items(), key=lambda kv: -kv[1]):
    lines.append(f'| {category} | {1000 * seconds / units:.3f} | '
                 f'{100 * seconds / total:.1f}% |')
  lines.append(f'| **all ops** | {1000 * total / units:.3f} | 100% |')
  lines.append('')
  lines.append(f'Wall time {1000 * wall / units:.3f} s per 1,000 {unit}; the '
               f'executor ran {1000 * executor / units:.3f} CPU s per 1,000 {unit}, '
               f'of which ops {100 * total / max(executor, 1e-12):.0f}%.')
  lines.append('')
  lines.append('Largest single ops (CPU s per 1,000 ' + unit + '):')
  lines.append('')
  for name, seconds in top:
    lines.append(f'- `{name}`: {1000 * seconds / units:.3f}')
  return '\n'.join(lines) + '\n'


def _one_method(methods: Optional[List[str]]) -> str:
  if methods and len(methods) > 1:
    from tfcredit.errors import ConfigurationError  # pylint: disable=g-import-not-at-top
    raise ConfigurationError(
        f'--method is given {len(methods)} times: tfcredit-profile profiles one '
        'method; run it once per method')
  return methods[0] if methods else ''


def run(argv: List[str]) -> int:
  """Profiles with the parsed flags; returns the exit code."""
  code = common.unexpected_arguments(argv)
  if code is not None:
    return code
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  calls = validation.positive_int('--calls', FLAGS.calls)
  method = _one_method(FLAGS.method)
  runner = build(FLAGS.workload, FLAGS.unroll_implementation, method)
  trace_dir = os.path.join(FLAGS.output_dir, 'trace')
  shutil.rmtree(trace_dir, ignore_errors=True)
  runner.run()  # One more round outside the trace: caches and allocator warm.
  units = 0.0
  tf.profiler.experimental.start(trace_dir)
  start = time.perf_counter()
  for _ in range(calls):
    done, _ = runner.run()
    units += done
  wall = time.perf_counter() - start
  tf.profiler.experimental.stop()
  paths = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)
  if not paths:
    print(f'error: the profiler wrote no trace under {trace_dir!r}', flush=True)
    return 1
  by_category, executor, by_op = op_times(sorted(paths)[-1])
  top = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
  report = markdown(by_category, executor, wall, units, runner.unit, top)
  header = (f'{FLAGS.workload}, {method or "TruncatedBPTT"}, '
            f'unroll_implementation={FLAGS.unroll_implementation}: {calls} '
            f'round(s) of {units / calls:,.0f} {runner.unit} ({runner.config})'
            '\n\n')
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, 'profile.md'), 'w') as f:
    f.write(header + report)
  with open(os.path.join(FLAGS.output_dir, 'profile.json'), 'w') as f:
    json.dump({'workload': FLAGS.workload, 'method': method,
               'config': runner.config,
               'unroll_implementation': FLAGS.unroll_implementation,
               'units': units, 'unit': runner.unit, 'wall_seconds': wall,
               'executor_seconds': executor, 'op_seconds': by_category,
               'top_ops': top}, f, indent=1)
  print(header + report)
  print(f'wrote {FLAGS.output_dir}/profile.md, profile.json and trace/')
  return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The ``tfcredit-profile`` console script."""
  define_flags()
  common.run(run, argv)


if __name__ == '__main__':
  main()

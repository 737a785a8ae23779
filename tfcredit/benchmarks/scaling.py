"""Cost as the horizon grows: each method's time, memory and own state against T.

Every registered method (``tfcredit.methods.METHODS``) trains a few calls on the
copy task (``CopyTask``: per-step targets, episodic, so one call is one batch of
whole sequences) at each sequence length ``T`` of ``ScalingOptions.lengths`` and
each LSTM width of ``widths``, stopping a method's sweep at the first ``T`` whose
call exceeds the time or memory cap. RTRL, UORO and SnAp-1 are also swept over
``forward_widths`` at the fixed length ``forward_length``. Each point runs in a
fresh process (``fresh_process``), so its peak memory is its own.

A point records, from calls after a warm-up call (which traces): the wall-clock
and CPU time per trained step (the fastest call over ``calls``), the training
calls' peak memory (``tfcredit.training.memory``: the allocator's peak where the
device keeps one; on a CPU the peak RSS minus the RSS after set-up, before the
first call, which also counts the warm-up's tracing) and the floats the method's
own state holds (its variables beyond the model's and the optimizer's, plus the
influence RTRL, UORO and SnAp-1 carry through an episode). ``scaling_report``
fits the slopes and draws the figure.

Method arguments (``method_arguments``): windows of ``WINDOW`` steps (truncated
BPTT, DNI, RTRL, UORO, SnAp-1, SnAp-2: on the sweep's dense LSTM its pattern is
full, so it costs what RTRL costs), ARTBP's mean window ``WINDOW``, FPTT with
``T / WINDOW`` windows, TargetProp blocks of ``TARGET_PROP_BLOCK``, full BPTT
over the whole sequence. ``EXTRA_ARGUMENTS`` holds the variants timed beside
them: ``bptt_checkpointed``, full BPTT keeping the state every ``round(sqrt(T))``
steps, and ``artbp_constant``, ARTBP with the constant truncation probability
(geometric window lengths). A method that reports its windows' lengths (ARTBP)
has the longest window it backpropagated through in its point
(``longest_window``): a call's peak memory holds that window's activations.
A point compiled with XLA (``jit_compile``'s outcome, ``'auto'`` by default)
says so (``xla``): its peak includes the compilation's memory.
"""

import dataclasses
import functools
import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from tfcredit.models.recurrent import RecurrentModel
from tfcredit.tasks.synthetic import CopyTask

LENGTHS, QUICK_LENGTHS = (100, 300, 1000, 3000, 10000), (50, 100, 200, 400)
WIDTHS, QUICK_WIDTHS = (32, 128), (16,)
BATCH, QUICK_BATCH = 32, 8
FORWARD_MODE = ('rtrl', 'snap1', 'uoro')  # Also swept over widths.
FORWARD_WIDTHS, QUICK_FORWARD_WIDTHS = (16, 32, 64, 128), (8, 16)
FORWARD_LENGTH, QUICK_FORWARD_LENGTH = 100, 50
CALLS, QUICK_CALLS = 2, 1  # Timed calls after the warm-up call.
TIME_CAP, MEMORY_CAP = 60.0, 4000.0  # Seconds per call, MB: a sweep stops there.
WINDOW, TARGET_PROP_BLOCK, COPY_SYMBOLS = 20, 10, 10
MIN_LENGTH = 3  # The shortest copy task: a symbol, a blank, the delimiter.
# Variants timed beside the registered methods: {row name: (method key, a
# function of T giving extra constructor arguments)}. Full BPTT with the state
# kept every about sqrt(T) steps (``checkpoint_every``): memory about sqrt(T).
EXTRA_ARGUMENTS: Dict[str, tuple] = {
    'bptt_checkpointed': ('bptt', lambda length: {
        'checkpoint_every': max(1, round(math.sqrt(length)))}),
    'artbp_constant': ('artbp', lambda length: {'schedule': 'constant'}),
}
RESULT_PREFIX = 'scaling point: '  # The child process's result line.


@dataclasses.dataclass(frozen=True)
class ScalingOptions:
  """The sweep (``tfcredit-benchmark --scaling``'s flags; None: the full or
  quick default).

  Attributes:
    quick: the quick defaults (``QUICK_*``).
    methods: method keys (``METHODS`` or ``EXTRA_ARGUMENTS``); empty: all.
    lengths, widths, batch: the T sweep.
    forward_widths, forward_length: the forward-mode methods' width sweep.
    calls: timed calls per point, after a warm-up call.
    time_cap: seconds per call; memory_cap: MB. A point over either ends its
      method's sweep (larger T, or larger widths).
    seed: weights and data.
    fresh_process: each point in its own Python process (False: in this one,
      for tests: the memory then counts what earlier points left).
  """
  quick: bool = False
  methods: Sequence[str] = ()
  lengths: Optional[Sequence[int]] = None
  widths: Optional[Sequence[int]] = None
  batch: Optional[int] = None
  forward_widths: Optional[Sequence[int]] = None
  forward_length: Optional[int] = None
  calls: Optional[int] = None
  time_cap: float = TIME_CAP
  memory_cap: float = MEMORY_CAP
  seed: int = 0
  fresh_process: bool = True

  def resolved(self) -> 'ScalingOptions':
    """The options with every None replaced by its (quick) default."""
    quick = self.quick
    pick = lambda value, full, short: value if value is not None else (
        short if quick else full)
    return dataclasses.replace(
        self, methods=tuple(self.methods) or all_methods(),
        lengths=tuple(pick(self.lengths, LENGTHS, QUICK_LENGTHS)),
        widths=tuple(pick(self.widths, WIDTHS, QUICK_WIDTHS)),
        batch=pick(self.batch, BATCH, QUICK_BATCH),
        forward_widths=tuple(pick(self.forward_widths, FORWARD_WIDTHS,
                                  QUICK_FORWARD_WIDTHS)),
        forward_length=pick(self.forward_length, FORWARD_LENGTH,
                            QUICK_FORWARD_LENGTH),
        calls=pick(self.calls, CALLS, QUICK_CALLS))


def all_methods() -> tuple:
  """Every registered method's key, then the ``EXTRA_ARGUMENTS`` rows."""
  from tfcredit import methods  # pylint: disable=g-import-not-at-top
  return tuple(methods.METHODS) + tuple(EXTRA_ARGUMENTS)


def method_arguments(name: str, length: int) -> Dict:
  """The constructor arguments of method ``name`` on sequences of ``length``
  steps (windows no longer than the sequence)."""
  window = min(WINDOW, length)
  base_name, extra = EXTRA_ARGUMENTS.get(name, (name, lambda _: {}))
  arguments = {
      'artbp': {'mean_length': window, 'seed': 0},
      'bptt': {},
      'dni': {'window': window},
      'eprop': {'window': window, 'max_influence_floats': 2**62},
      'fptt': {'windows': max(1, length // WINDOW), 'alpha': 0.01},
      'rflo': {'window': window, 'max_influence_floats': 2**62},
      'rtrl': {'window': window, 'max_influence_floats': 2**62},
      'snap1': {'window': window, 'max_influence_floats': 2**62},
      'snap2': {'window': window, 'max_influence_floats': 2**62},
      'target_prop': {'block_size': min(TARGET_PROP_BLOCK, length),
                      'blocks_per_update': max(1, window // TARGET_PROP_BLOCK)},
      'truncated_bptt': {'window': window},
      'uoro': {'window': window, 'max_influence_floats': 2**62, 'seed': 0},
  }.get(base_name, {})
  return {**arguments, **extra(length)}


def copy_task(length: int, seed: int):
  """The copy task with ``length`` steps per sequence (``COPY_SYMBOLS`` symbols
  to recall, fewer when ``length`` is short)."""
  symbols = max(1, min(COPY_SYMBOLS, length // 4))
  return CopyTask(sequence_length=length - 2 * symbols, seed=seed,
                                 memory_length=symbols)


def own_state_floats(method, model, optimizer, batch: int) -> int:
  """Floats in the method's variables beyond the model's and the optimizer's,
  plus the influence RTRL, UORO and SnAp-1 carry through an episode (a tensor
  within the call, not a variable, on episodic tasks)."""
  shared = {id(v) for v in list(model.variables) + list(optimizer.variables)}
  own = {id(v): v for v in list(method.variables)
         + list(getattr(method, 'synthesizer_variables', []))  # DNI's.
         if id(v) not in shared}
  floats = sum(int(v.shape.num_elements() or 0) for v in own.values())
  if hasattr(method, 'influence_size') and getattr(method, 'influence') is None:
    floats += int(method.influence_size(batch)[0])
  return floats


def measure_point(name: str, length: int, width: int, batch: int, calls: int,
                  seed: int) -> Dict:
  """Trains ``1 + calls`` calls of method ``name`` (an LSTM of ``width``, or
  the cell the method needs, its ``EXAMPLE_MODEL``, on the copy task of
  ``length`` steps, batch ``batch``) in this process; the record of one point
  (module docstring)."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfcredit import methods  # pylint: disable=g-import-not-at-top
  from tfcredit.benchmarks.measure import Stopwatch  # pylint: disable=g-import-not-at-top
  from tfcredit.training import components  # pylint: disable=g-import-not-at-top
  from tfcredit.training import memory  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  task = copy_task(length, seed)
  cls = methods.METHODS[EXTRA_ARGUMENTS.get(name, (name,))[0]]
  cell = {'cell': 'lstm', **cls.EXAMPLE_MODEL}
  model = RecurrentModel(**task.model_spec(), units=width, **cell)
  data = [tuple(tf.constant(part) for part in task.batch('train', 0, index, batch))
          for index in range(1 + calls)]
  model.build_for(data[0][0][:, :1])
  optimizer = keras.optimizers.Adam(1e-3)
  optimizer.build(model.trainable_variables)
  method = components.build_method(
      functools.partial(cls, clip_norm=1.0, **method_arguments(name, length)),
      model, task, optimizer, batch, seed=seed)
  method.check_task(task)
  method.on_epoch_start(0)
  device = memory.allocator_device()
  memory.reset_peak(device)
  before = memory.current_rss()

  longest = []

  def call(segment):
    _, metrics = method.train_segment(segment, model.initial_state(batch))
    if 'window_lengths' in metrics:
      longest.append(int(tf.reduce_max(metrics['window_lengths'])))
    return float(metrics['loss_sum'])

  call(data[0])  # Warm-up: traces.
  elapsed = []
  for segment in data[1:]:
    stopwatch = Stopwatch()
    call(segment)
    elapsed.append(stopwatch.elapsed())
  peak, source = memory.peak_memory(device)
  used = peak if source == memory.ALLOCATOR else max(peak - before, 0)
  wall = min(e.wall for e in elapsed)
  return {'method': name, 'length': length, 'width': width, 'batch': batch,
          'seconds_per_call': wall, 'cpu_seconds_per_call': min(
              e.cpu for e in elapsed),
          'seconds_per_step': wall / length,
          'cpu_seconds_per_step': min(e.cpu for e in elapsed) / length,
          'peak_memory_bytes': int(used), 'memory_source': source,
          'own_state_floats': own_state_floats(method, model, optimizer, batch),
          'traces': int(method.trace_counts['train_segment']),
          'longest_window': max(longest) if longest else None,
          'xla': bool(getattr(method, 'jit_compile', False))}


_CHILD = ('import json, sys\n'
          'from tfcredit.benchmarks import scaling\n'
          'point = scaling.measure_point(**json.loads(sys.argv[1]))\n'
          'print(scaling.RESULT_PREFIX + json.dumps(point), flush=True)\n')


def point_in_fresh_process(spec: Dict, timeout: float) -> Dict:
  """``measure_point(**spec)`` in a new Python process importing this copy of
  tfcredit; on failure or after ``timeout`` seconds, ``spec`` with an
  ``'error'``."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=os.pathsep.join(
      [root] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  try:
    done = subprocess.run([sys.executable, '-c', _CHILD, json.dumps(spec)],
                          capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {**spec, 'error': f'timed out after {timeout:.0f} s'}
  for line in done.stdout.splitlines():
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  return {**spec, 'error': child_error(done.returncode, done.stderr)}


_EXCEPTION_LINE = re.compile(r'^[\w.]*(Error|Exception|Exhausted)\b')


def child_error(returncode: int, stderr: str) -> str:
  """What ended a failed point: the exit code (a negative one is the signal
  that killed it, e.g. -9 from the system's out-of-memory killer) and the last
  Python exception line of its stderr, or else its last line."""
  lines = stderr.strip().splitlines()
  errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
  last = (errors or lines or [''])[-1][:300]
  return f'exit code {returncode}' + (f': {last}' if last else '')


def over_cap(point: Dict, options: ScalingOptions) -> bool:
  """Whether ``point`` failed or exceeds the time or memory cap."""
  return ('error' in point or point['seconds_per_call'] > options.time_cap
          or point['peak_memory_bytes'] / 1e6 > options.memory_cap)


def _sweep_one(name: str, configurations: Sequence[tuple], options: ScalingOptions,
               log: Callable[[str], None]) -> List[Dict]:
  """Method ``name`` at each ``(length, width)`` in order, until one is over a
  cap (that point is kept)."""
  points = []
  for length, width in configurations:
    spec = dict(name=name, length=length, width=width, batch=options.batch,
                calls=options.calls, seed=options.seed)
    if options.fresh_process:
      point = point_in_fresh_process(
          spec, timeout=options.time_cap * (options.calls + 2) + 300)
    else:
      point = measure_point(**spec)
    points.append(point)
    log(describe_point(point))
    if over_cap(point, options):
      break
  return points


def describe_point(point: Dict) -> str:
  """One progress line."""
  where = (f'  {point.get("method", point.get("name"))} T={point["length"]} '
           f'width={point["width"]}')
  if 'error' in point:
    return f'{where}: {point["error"]}'
  return (f'{where}: {point["seconds_per_call"]:.3g} s/call, '
          f'{1e6 * point["seconds_per_step"]:.4g} us/step, '
          f'{point["peak_memory_bytes"] / 1e6:,.0f} MB ({point["memory_source"]}), '
          f'own state {point["own_state_floats"]:,} floats'
          + (', XLA' if point.get('xla') else '')
          + (f', longest window {point["longest_window"]}'
             if point.get('longest_window') else ''))


def sweep(options: ScalingOptions, log: Callable[[str], None] = print) -> Dict:
  """Runs the sweep; the record written as ``scaling.json``: the resolved
  options, ``points`` (the T sweep), ``width_points`` (the forward-mode width
  sweep), the memory source and the wall time."""
  options = options.resolved()
  started = time.perf_counter()
  points, width_points = [], []
  for width in options.widths:
    for name in options.methods:
      points += _sweep_one(name, [(length, width) for length in options.lengths],
                           options, log)
  for name in options.methods:
    if EXTRA_ARGUMENTS.get(name, (name,))[0] in FORWARD_MODE:
      width_points += _sweep_one(
          name, [(options.forward_length, width)
                 for width in options.forward_widths], options, log)
  sources = sorted({p['memory_source'] for p in points + width_points
                    if 'memory_source' in p})
  return {'options': dataclasses.asdict(options), 'points': points,
          'width_points': width_points, 'memory_source': ', '.join(sources),
          'seconds': time.perf_counter() - started}

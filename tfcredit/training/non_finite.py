"""What the trainer does after a training call with a non-finite window
(docs/design.md, "Errors and data safety").

The guard itself is in the compiled step (``Method.apply_gradients``): a window
whose loss or gradients are not finite is never applied, and the call's metrics
count it in ``non_finite_windows``. Here, on the host, once per call:

* ``'stop'`` (the default): raise ``TrainingError`` naming the call. The
  checkpoint written just before that call holds the weights it started from,
  which produced the non-finite values, so it is moved to
  ``checkpoints/non_finite/``; the newest checkpoint left (or none: then the rerun
  starts from the beginning) is the one a rerun with a saner setting resumes from.
* ``'skip'``: go on. The call's update count leaves out the refused windows; a call
  whose loss is not finite adds nothing to the logged losses.
"""

import math
import sys
from typing import Dict

import numpy as np

from tfcredit.errors import ConfigurationError, TrainingError
from tfcredit.metrics import NON_FINITE_METRIC

STOP, SKIP = 'stop', 'skip'
POLICIES = (STOP, SKIP)


def check_policy(value) -> str:
  if value not in POLICIES:
    raise ConfigurationError(
        f'train.on_non_finite must be one of {", ".join(map(repr, POLICIES))}, got '
        f'{value!r}')
  return value


def handle(metrics: Dict[str, np.ndarray], policy: str, checkpointer, progress,
           epoch: int, unit_name: str) -> Dict[str, np.ndarray]:
  """Returns the call's metrics as the trainer should record them, or raises.

  Raises:
    TrainingError: ``policy`` is ``'stop'`` and a window was not finite.
  """
  refused = float(metrics.get(NON_FINITE_METRIC, 0.0))
  loss_finite = math.isfinite(float(metrics['loss_sum']))
  if refused == 0 and loss_finite:
    return metrics
  call = int(progress.calls) + 1
  where = (f'training call {call} (epoch {epoch + 1}, after '
           f'{int(progress.units_seen)} {unit_name})')
  if policy == SKIP:
    metrics = dict(metrics)
    metrics['updates'] = max(float(metrics['updates']) - refused, 0.0)
    if not loss_finite:
      metrics['loss_sum'] = np.float32(0.0)
      metrics['count'] = np.float32(0.0)
    print(f'warning: {where}: skipped {int(refused)} window(s) with a non-finite '
          'loss or gradients (train.on_non_finite = \'skip\')', file=sys.stderr,
          flush=True)
    return metrics
  moved = checkpointer.retire_latest_if(int(progress.calls))
  kept = checkpointer.latest
  said = (f'the checkpoint that call started from was moved to {moved}; '
          if moved else '')
  said += (f'the last good checkpoint is kept: {kept}' if kept else
           'no earlier checkpoint is kept, so a rerun starts from the beginning')
  raise TrainingError(
      f'non-finite loss or gradients at {where}; its update was not applied; '
      f'{said}. Lower train.learning_rate or set clip_norm on the method, then run '
      "the same command again (or set train.on_non_finite = 'skip')")

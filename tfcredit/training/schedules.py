"""Learning-rate schedules the trainer evaluates on the host once per call.

Implements:
  * `StepDecay`: Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural
    Network Regularization", arXiv:1409.2329, Sec. 4.1 (the small PTB model
    trains at 1 for 4 epochs, then halves the rate every epoch).
  * `MultiStepDecay`: decay at fixed milestones, as in the sequential-image
    runs of Kag & Saligrama (2021), "Training Recurrent Neural Networks via
    Forward Propagation Through Time", ICML (halving at epochs 60/90/120).
  * `PlateauDecay`: the PyTorch word-language-model example
    (github.com/pytorch/examples, word_language_model/main.py), which divides
    the rate by 4 after an epoch whose validation loss did not improve.
  * `CosineRestarts`: SGDR, Loshchilov & Hutter (2017), "SGDR: Stochastic
    Gradient Descent with Warm Restarts", ICLR, arXiv:1608.03983, Eq. (5).
  * `InverseSqrtDecay`: `eta_t = eta_0 / sqrt(1 + t)` with `t` the time step,
    Tallec & Ollivier (2017), "Unbiasing Truncated Backpropagation Through
    Time", Sec. 6.1 (influence balancing).
  * `RootTimeDecay`: `eta_t = gamma / (1 + alpha * sqrt(t))` with `t` the time
    step, Tallec & Ollivier (2018), "Unbiased Online Recurrent Optimization",
    ICLR, Sec. 6 (with Adam; the authors' code, ctallec/uoro `train.lua`:
    gamma = 1e-3, alpha = 0.03 by default, 0.015 in its logged runs).

`epoch` is a float: completed epochs plus the fraction of the current one
(2.5 is halfway through the third epoch). Schedules are `tf.Module`s so that
`tf.train.Checkpoint(schedule=...)` saves whatever state they keep.
"""

from collections.abc import Sequence
import math
import numbers
from typing import Optional

import tensorflow as tf

from tfcredit import config
from tfcredit import validation

# Relative tolerance for cycle boundaries: the trainer's fractional epochs and
# non-integer periods carry rounding error, and an epoch that is a boundary up
# to rounding must count as the start of the new cycle, not the end of the old.
_BOUNDARY_RTOL = 1e-12


class LearningRateSchedule(tf.Module):
  """Base class: maps a (fractional) epoch to a learning rate.

  Subclasses override `_rate`; `__call__` validates the epoch first. State
  that must survive a checkpoint lives in `tf.Variable`s made in `__init__`.
  """

  def __init__(self, *, base: float):
    """Validates and stores the base learning rate.

    Args:
      base: The initial (and, for most schedules, maximal) learning rate, > 0.

    Raises:
      ConfigurationError: If `base` is not a finite number > 0.
    """
    super().__init__()
    owner = type(self).__name__
    fix = 'pass a positive learning rate such as base=1.0'
    self._base = validation.real(f'{owner}.base', base, fix)
    validation.require(self._base > 0, f'{owner}.base', base, '> 0', fix)

  @property
  def base(self) -> float:
    """The base learning rate."""
    return self._base

  def __call__(self, epoch: float) -> float:
    """Returns the learning rate at `epoch` (completed epochs + fraction).

    Raises:
      ConfigurationError: If `epoch` is not a finite number >= 0.
    """
    return float(self._rate(self._epoch(epoch)))

  def observe_validation(self, epoch: int, loss: float) -> None:
    """Hears the validation loss after 0-based `epoch`; ignored by default."""
    del epoch, loss

  def _epoch(self, epoch: float) -> float:
    """Returns `epoch` as a float, or raises unless it is finite and >= 0."""
    owner = type(self).__name__
    fix = 'pass completed epochs plus the fraction of the current epoch'
    value = validation.real(f'{owner}.epoch', epoch, fix)
    validation.require(value >= 0, f'{owner}.epoch', epoch, '>= 0', fix)
    return value

  def _rate(self, epoch: float) -> float:
    raise NotImplementedError


def _decay_factor(owner: str, factor: float, example: float) -> float:
  """Validates a multiplicative decay factor in (0, 1]."""
  fix = f'pass a decay factor in (0, 1] such as factor={example}'
  value = validation.real(f'{owner}.factor', factor, fix)
  validation.require(0 < value <= 1, f'{owner}.factor', factor, 'in (0, 1]',
                     fix)
  return value


@config.configurable
class Constant(LearningRateSchedule):
  """The base learning rate at every epoch."""

  def _rate(self, epoch: float) -> float:
    return self._base


@config.configurable
class StepDecay(LearningRateSchedule):
  """Zaremba et al. (2014): constant, then multiplied by `factor` each epoch.

  During 0-based epoch i the rate is `base * factor ** max(i + 1 -
  start_epoch, 0)`, so the first `start_epoch` epochs run at `base`. The
  paper's small model uses factor 0.5 after 4 epochs, the medium 1/1.2 after
  6 and the large 1/1.15 after 14.
  """

  def __init__(self, *, base: float, factor: float = 0.5,
               start_epoch: int = 4):
    """Args: see the class docstring; `start_epoch` is an integer >= 1.

    Raises:
      ConfigurationError: If an argument is out of range.
    """
    super().__init__(base=base)
    owner = type(self).__name__
    self._factor = _decay_factor(owner, factor, example=0.5)
    validation.require(
        isinstance(start_epoch, numbers.Integral) and
        not isinstance(start_epoch, bool) and start_epoch >= 1,
        f'{owner}.start_epoch', start_epoch, 'an integer >= 1',
        'pass the number of epochs to run at base, e.g. start_epoch=4')
    self._start_epoch = int(start_epoch)

  def _rate(self, epoch: float) -> float:
    decays = max(math.floor(epoch) + 1 - self._start_epoch, 0)
    return self._base * self._factor**decays


@config.configurable
class MultiStepDecay(LearningRateSchedule):
  """Multiplies the rate by `factor` once per milestone epoch reached.

  With milestones (60, 90, 120), 0-based epochs 0..59 run at `base`, epochs
  60..89 at `base * factor`, and so on (as PyTorch's `MultiStepLR`).
  """

  def __init__(self, *, base: float,
               milestones: Sequence[float] = (60, 90, 120),
               factor: float = 0.5):
    """Args: see the class docstring; milestones are > 0, strictly increasing.

    Raises:
      ConfigurationError: If an argument is out of range.
    """
    super().__init__(base=base)
    owner = type(self).__name__
    self._factor = _decay_factor(owner, factor, example=0.5)
    fix = 'pass increasing positive epochs such as milestones=(60, 90, 120)'
    name = f'{owner}.milestones'
    validation.require(
        isinstance(milestones, Sequence) and not isinstance(milestones, str),
        name, milestones, 'a sequence of epochs', fix)
    values = tuple(validation.real(name, m, fix) for m in milestones)
    validation.require(all(m > 0 for m in values), name, milestones,
                       'positive', fix)
    validation.require(all(a < b for a, b in zip(values, values[1:])), name,
                       milestones, 'strictly increasing', fix)
    self._milestones = values

  def _rate(self, epoch: float) -> float:
    passed = sum(1 for m in self._milestones if epoch >= m)
    return self._base * self._factor**passed


@config.configurable
class PlateauDecay(LearningRateSchedule):
  """Multiplies the rate by `factor` after each non-improving validation.

  An epoch improves if its loss is below `best - min_delta` (the first
  finite loss always does); otherwise the scale is multiplied by `factor`
  (the PyTorch example's `lr /= 4`). A non-finite loss never improves. The
  scale, best loss and last observed epoch are `tf.Variable`s, so a
  checkpoint restores them, and an epoch observed twice (e.g. re-validated
  after a resume) is counted once.
  """

  def __init__(self, *, base: float, factor: float = 0.25,
               min_delta: float = 0.0):
    """Args: see the class docstring; `min_delta` is >= 0.

    Raises:
      ConfigurationError: If an argument is out of range.
    """
    super().__init__(base=base)
    owner = type(self).__name__
    self._factor = _decay_factor(owner, factor, example=0.25)
    fix = 'pass the least loss decrease that counts, e.g. min_delta=0.0'
    self._min_delta = validation.real(f'{owner}.min_delta', min_delta, fix)
    validation.require(self._min_delta >= 0, f'{owner}.min_delta', min_delta,
                       '>= 0', fix)
    # float64 so the best loss round-trips exactly through a checkpoint.
    self.scale = tf.Variable(1.0, dtype=tf.float64, trainable=False,
                             name='scale')
    self.best_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False,
                                 name='best_loss')
    self.last_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                  name='last_epoch')

  def observe_validation(self, epoch: int, loss: float) -> None:
    """Decays the scale unless `loss` beats the best loss by `min_delta`."""
    epoch = int(epoch)
    if epoch <= int(self.last_epoch.numpy()):
      return
    self.last_epoch.assign(epoch)
    loss = float(loss)
    threshold = float(self.best_loss.numpy()) - self._min_delta
    if math.isfinite(loss) and loss < threshold:
      self.best_loss.assign(loss)
    else:
      self.scale.assign(self.scale * self._factor)

  def _rate(self, epoch: float) -> float:
    return self._base * float(self.scale.numpy())


@config.configurable
class CosineRestarts(LearningRateSchedule):
  """SGDR: cosine annealing from `base` to `minimum` with warm restarts.

  Cycle i lasts `T_i = period_epochs * t_mult**i` epochs; with `t_cur` epochs
  into it the rate is `minimum + (base - minimum) * (1 + cos(pi * t_cur /
  T_i)) / 2` (Loshchilov & Hutter 2017, Eq. 5).
  """

  def __init__(self, *, base: float, period_epochs: float = 1.0,
               t_mult: float = 2.0, minimum: float = 0.0):
    """Args: see the class docstring; `t_mult` >= 1, 0 <= `minimum` <= base.

    Raises:
      ConfigurationError: If an argument is out of range.
    """
    super().__init__(base=base)
    owner = type(self).__name__
    fix = 'pass the first cycle length in epochs, e.g. period_epochs=1.0'
    self._period = validation.real(f'{owner}.period_epochs', period_epochs, fix)
    validation.require(self._period > 0, f'{owner}.period_epochs',
                       period_epochs, '> 0', fix)
    fix = 'pass the cycle growth factor, e.g. t_mult=2.0 (1.0 for equal cycles)'
    self._t_mult = validation.real(f'{owner}.t_mult', t_mult, fix)
    validation.require(self._t_mult >= 1, f'{owner}.t_mult', t_mult, '>= 1',
                       fix)
    fix = f'pass a floor between 0 and base={self._base}, e.g. minimum=0.0'
    self._minimum = validation.real(f'{owner}.minimum', minimum, fix)
    validation.require(0 <= self._minimum <= self._base, f'{owner}.minimum',
                       minimum, f'in [0, base={self._base}]', fix)

  def _cycle_start(self, index: int) -> float:
    """The epoch at which cycle `index` starts."""
    if self._t_mult == 1:
      return self._period * index
    return self._period * (self._t_mult**index - 1) / (self._t_mult - 1)

  def _reached(self, epoch: float, index: int) -> bool:
    """Whether `epoch` is at or past the start of cycle `index`."""
    start = self._cycle_start(index)
    return epoch >= start - _BOUNDARY_RTOL * max(1.0, abs(start))

  def cycle_index(self, epoch: float) -> int:
    """Returns the 0-based cycle that `epoch` falls in; boundaries start one.

    Raises:
      ConfigurationError: If `epoch` is not a finite number >= 0.
    """
    epoch = self._epoch(epoch)
    # Closed-form guess, then step to the exact answer: the logarithm may be
    # off by one at boundaries, and `_reached` is the single source of truth.
    if self._t_mult == 1:
      guess = epoch / self._period
    else:
      guess = math.log1p(epoch * (self._t_mult - 1) / self._period) / math.log(
          self._t_mult)
    index = max(int(math.floor(guess)), 0)
    while index > 0 and not self._reached(epoch, index):
      index -= 1
    while self._reached(epoch, index + 1):
      index += 1
    return index

  def _rate(self, epoch: float) -> float:
    index = self.cycle_index(epoch)
    length = self._period * self._t_mult**index
    t_cur = min(max(epoch - self._cycle_start(index), 0.0), length)
    cosine = (1 + math.cos(math.pi * t_cur / length)) / 2
    return self._minimum + (self._base - self._minimum) * cosine


@config.configurable
class InverseSqrtDecay(LearningRateSchedule):
  """`base / sqrt(1 + t)`, with `t = epoch * steps_per_epoch` the time step.

  Tallec & Ollivier (2017), Sec. 6.1. The trainer evaluates a schedule once
  per training call, at the fraction of the epoch done before the call, so
  `t` is the first time step of the call: the rate is constant over the
  windows of one call.
  """

  def __init__(self, *, base: float, steps_per_epoch: int):
    """Args: see the class docstring; `steps_per_epoch` is an integer >= 1.

    Raises:
      ConfigurationError: If an argument is out of range.
    """
    super().__init__(base=base)
    owner = type(self).__name__
    validation.require(
        isinstance(steps_per_epoch, numbers.Integral) and
        not isinstance(steps_per_epoch, bool) and steps_per_epoch >= 1,
        f'{owner}.steps_per_epoch', steps_per_epoch, 'an integer >= 1',
        'pass the time steps of one epoch (the stream task\'s train_length)')
    self._steps_per_epoch = int(steps_per_epoch)

  def _rate(self, epoch: float) -> float:
    return self._base / math.sqrt(1.0 + epoch * self._steps_per_epoch)


@config.configurable
class RootTimeDecay(InverseSqrtDecay):
  """`base / (1 + alpha * sqrt(t))`, `t = epoch * steps_per_epoch` the time
  step (characters processed, in the paper's single stream; a row's steps in
  a batch). Tallec & Ollivier (2018), UORO, Sec. 6; evaluated once per call,
  as `InverseSqrtDecay`.
  """

  def __init__(self, *, base: float, steps_per_epoch: int, alpha: float):
    """Args: see the class docstring; `alpha` is a finite number >= 0 (0: the
    constant `base`).

    Raises:
      ConfigurationError: If an argument is out of range.
    """
    super().__init__(base=base, steps_per_epoch=steps_per_epoch)
    fix = 'pass a decay constant >= 0 such as alpha=0.015'
    self._alpha = validation.real('RootTimeDecay.alpha', alpha, fix)
    validation.require(self._alpha >= 0, 'RootTimeDecay.alpha', alpha, '>= 0',
                       fix)

  def _rate(self, epoch: float) -> float:
    return self._base / (
        1.0 + self._alpha * math.sqrt(epoch * self._steps_per_epoch))


REAL, SYNTHETIC = 'real', 'synthetic'
_PHASES = (REAL, SYNTHETIC)


@config.configurable
class AlternatingRestarts(CosineRestarts):
  """SGDR restarts whose every restart flips real and synthetic gradients.

  Shang & Zhang (2019), "Alternating Synthetic and Real Gradients for Neural
  Language Modeling", Sections 2.1 and 3.2: run i lasts `E_i = 2**i *
  period_epochs` epochs (so runs start at epochs `period_epochs * (2**i - 1)`:
  0, 5, 15, 35, 75 for `E_base = 5`); within a run the rate follows SGDR's
  cosine (`CosineRestarts` with `t_mult = 2`; `t_mult = 1`, equal cycles,
  fits more restarts into a short budget); the boundary gradient of run i
  is `start_phase` for even i and the other phase for odd i. (The authors'
  public code uses cycles of 5, 5, 10, 20 epochs; this follows the paper.)

  The same object drives both halves: the trainer uses it as
  `train.lr_schedule`, and `DNI.use_synthetic` asks `synthetic(epoch)` at each
  epoch start. In gin, bind both to `@AlternatingRestarts`: the two instances
  read the same `AlternatingRestarts.*` bindings, so they cannot disagree, and
  `DNI` refuses a different `train.lr_schedule`.
  """

  def __init__(self, *, base: float = 1.0, period_epochs: float = 5.0,
               start_phase: str = REAL, minimum: float = 0.0,
               t_mult: float = 2.0):
    """Args: see the class docstring; `period_epochs` is `E_base` > 0.

    `base` does not affect the phases (DNI builds its copy with the default).

    Raises:
      ConfigurationError: If an argument is out of range.
    """
    super().__init__(base=base, period_epochs=period_epochs, t_mult=t_mult,
                     minimum=minimum)
    validation.require(
        start_phase in _PHASES, f'{type(self).__name__}.start_phase',
        start_phase, f'one of {_PHASES}',
        "pass start_phase='real' (the paper: real gradients first)")
    self._start_phase = start_phase

  @classmethod
  def from_setting(cls, name: str, setting) -> Optional['AlternatingRestarts']:
    """The alternation behind a `True` / `False` / alternation setting (a class
    is built with its defaults, which fix the phases), or None for a constant.

    Raises:
      ConfigurationError: `setting` is none of these.
    """
    if isinstance(setting, bool):
      return None
    if isinstance(setting, type) and issubclass(setting, cls):
      setting = setting()
    if not isinstance(setting, cls):
      validation.require(False, name, setting, f'True, False or @{cls.__name__}',
                         f'pass {name} = True or @{cls.__name__}()')
    return setting

  def same_phases(self, other, epochs: int = 100) -> bool:
    """Whether `other` is an alternation with the same phases over the first
    `epochs` epochs (compared every quarter epoch)."""
    return isinstance(other, AlternatingRestarts) and all(
        self.phase(e / 4) == other.phase(e / 4) for e in range(4 * epochs))

  def phase(self, epoch: float) -> str:
    """`'real'` or `'synthetic'`: the boundary gradient during `epoch`."""
    flipped = self.cycle_index(epoch) % 2 == 1
    if not flipped:
      return self._start_phase
    return SYNTHETIC if self._start_phase == REAL else REAL

  def synthetic(self, epoch: float) -> bool:
    """Whether synthetic gradients are injected during `epoch`."""
    return self.phase(epoch) == SYNTHETIC

"""Tests for tfcredit.training.schedules, with expectations derived by hand."""

import math

import pytest
import tensorflow as tf

from tfcredit.errors import ConfigurationError
from tfcredit.training import schedules


def test_constant_is_base_everywhere():
  schedule = schedules.Constant(base=0.3)
  assert [schedule(e) for e in (0.0, 0.5, 7.0, 1e6)] == [0.3] * 4


def test_step_decay_matches_zaremba_small_model():
  # Zaremba et al. 2014, small model: lr 1 for the first 4 epochs, then halved
  # after every further epoch, 13 epochs in all. Built by iteration, not by
  # the closed form the module uses.
  expected, lr = [], 1.0
  for epoch in range(13):
    if epoch >= 4:
      lr /= 2
    expected.append(lr)
  schedule = schedules.StepDecay(base=1.0, factor=0.5, start_epoch=4)
  assert [schedule(float(e)) for e in range(13)] == expected
  assert expected[:5] == [1.0, 1.0, 1.0, 1.0, 0.5]
  # The rate is constant within an epoch.
  assert schedule(4.0) == schedule(4.99) == 0.5
  assert schedule(3.999) == 1.0


def test_multistep_decay_around_milestones():
  schedule = schedules.MultiStepDecay(base=0.1, milestones=(60, 90, 120),
                                      factor=0.5)
  cases = {0: 0.1, 59: 0.1, 59.99: 0.1, 60: 0.05, 89.5: 0.05, 90: 0.025,
           119: 0.025, 120: 0.0125, 500: 0.0125}
  for epoch, rate in cases.items():
    assert schedule(epoch) == pytest.approx(rate, rel=1e-12), epoch


def test_plateau_decays_only_after_a_non_improving_epoch():
  schedule = schedules.PlateauDecay(base=20.0, factor=0.25)
  rates = []
  for epoch, loss in enumerate([5.0, 4.0, 4.5, 3.9, 3.9, 3.0]):
    schedule.observe_validation(epoch, loss)
    rates.append(schedule(epoch + 1.0))
  # Improving, improving, worse (/4), improving, equal (/4), improving.
  assert rates == [20.0, 20.0, 5.0, 5.0, 1.25, 1.25]


def test_plateau_min_delta_requires_a_large_enough_improvement():
  schedule = schedules.PlateauDecay(base=1.0, factor=0.5, min_delta=0.1)
  schedule.observe_validation(0, 2.0)
  schedule.observe_validation(1, 1.95)  # Better, but by less than min_delta.
  assert schedule(2.0) == 0.5
  schedule.observe_validation(2, 1.8)
  assert schedule(3.0) == 0.5


def test_plateau_non_finite_loss_decays():
  schedule = schedules.PlateauDecay(base=1.0)
  schedule.observe_validation(0, 2.0)
  schedule.observe_validation(1, math.nan)
  assert schedule(2.0) == 0.25


def test_plateau_counts_a_repeated_epoch_once():
  schedule = schedules.PlateauDecay(base=1.0, factor=0.5)
  schedule.observe_validation(0, 2.0)
  schedule.observe_validation(1, 3.0)
  schedule.observe_validation(1, 3.0)
  assert schedule(2.0) == 0.5


def test_plateau_state_survives_checkpoint(tmp_path):
  schedule = schedules.PlateauDecay(base=1.0, factor=0.25)
  schedule.observe_validation(0, 3.0)
  schedule.observe_validation(1, 3.5)  # Decays to 0.25.
  path = tf.train.Checkpoint(schedule=schedule).write(str(tmp_path / 'ckpt'))

  restored = schedules.PlateauDecay(base=1.0, factor=0.25)
  assert restored(2.0) == 1.0
  tf.train.Checkpoint(schedule=restored).read(path).assert_consumed()
  assert restored(2.0) == 0.25
  # The best loss came back too: 3.2 is worse than 3.0, so it decays again.
  restored.observe_validation(2, 3.2)
  assert restored(3.0) == 0.0625
  # And the last observed epoch: re-observing epoch 1 changes nothing.
  restored.observe_validation(1, 9.0)
  assert restored(3.0) == 0.0625


def test_cosine_restarts_values():
  schedule = schedules.CosineRestarts(base=1.0, period_epochs=1.0, t_mult=2.0,
                                      minimum=0.2)
  # Cycles start at 0, 1, 3, 7, 15 and last 1, 2, 4, 8, 16 epochs.
  for start, length in [(0, 1), (1, 2), (3, 4), (7, 8), (15, 16)]:
    assert schedule(float(start)) == pytest.approx(1.0, abs=1e-12)
    assert schedule(start + length / 2) == pytest.approx(0.6, abs=1e-12)
    # Just before the next restart the rate is near the minimum.
    assert schedule(start + length - 1e-6) == pytest.approx(0.2, abs=1e-6)
  # A quarter into cycle 2: minimum + 0.8 * (1 + cos(pi / 4)) / 2.
  assert schedule(4.0) == pytest.approx(
      0.2 + 0.8 * (1 + math.sqrt(0.5)) / 2, abs=1e-12)


def test_cosine_restarts_cycle_index_t_mult_2():
  schedule = schedules.CosineRestarts(base=1.0, period_epochs=1.0, t_mult=2.0)
  starts = [0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023]
  for index, start in enumerate(starts):
    assert schedule.cycle_index(float(start)) == index, start
    if start:
      assert schedule.cycle_index(start - 1e-7) == index - 1, start
    assert schedule.cycle_index(start + 0.5) == index, start
  assert schedule.cycle_index(3.0) == 2
  assert schedule.cycle_index(2.999) == 1


def test_cosine_restarts_cycle_index_non_integer_period():
  # Starts at 0, 0.3, 0.9, 2.1; 0.9 is not exactly 0.3 * 3 in floating point.
  schedule = schedules.CosineRestarts(base=1.0, period_epochs=0.3, t_mult=2.0)
  assert [schedule.cycle_index(e) for e in (0.0, 0.3, 0.9, 2.1)] == [0, 1, 2, 3]
  assert schedule(0.9) == pytest.approx(1.0)


def test_cosine_restarts_cycle_index_t_mult_1():
  schedule = schedules.CosineRestarts(base=2.0, period_epochs=0.1, t_mult=1.0)
  # 0.1 * 3 != 0.3 in floating point; the boundary must still start cycle 3.
  for index in range(50):
    epoch = index / 10
    assert schedule.cycle_index(epoch) == index, epoch
    assert schedule(epoch) == pytest.approx(2.0, abs=1e-9), epoch
    assert schedule(epoch + 0.05) == pytest.approx(1.0, abs=1e-9), epoch
    if index:
      assert schedule.cycle_index(epoch - 1e-6) == index - 1, epoch


@pytest.mark.parametrize('make, name', [
    (lambda: schedules.Constant(base=0.0), 'base'),
    (lambda: schedules.Constant(base=-1.0), 'base'),
    (lambda: schedules.Constant(base=math.inf), 'base'),
    (lambda: schedules.Constant(base='1'), 'base'),
    (lambda: schedules.StepDecay(base=1.0, factor=0.0), 'factor'),
    (lambda: schedules.StepDecay(base=1.0, factor=1.5), 'factor'),
    (lambda: schedules.StepDecay(base=1.0, start_epoch=0), 'start_epoch'),
    (lambda: schedules.StepDecay(base=1.0, start_epoch=2.5), 'start_epoch'),
    (lambda: schedules.StepDecay(base=0.0), 'base'),
    (lambda: schedules.MultiStepDecay(base=1.0, factor=0.0), 'factor'),
    (lambda: schedules.MultiStepDecay(base=1.0, milestones=(90, 60)),
     'milestones'),
    (lambda: schedules.MultiStepDecay(base=1.0, milestones=(60, 60)),
     'milestones'),
    (lambda: schedules.MultiStepDecay(base=1.0, milestones=(0, 60)),
     'milestones'),
    (lambda: schedules.MultiStepDecay(base=1.0, milestones=60), 'milestones'),
    (lambda: schedules.PlateauDecay(base=1.0, factor=2.0), 'factor'),
    (lambda: schedules.PlateauDecay(base=1.0, min_delta=-0.1), 'min_delta'),
    (lambda: schedules.PlateauDecay(base=-2.0), 'base'),
    (lambda: schedules.CosineRestarts(base=1.0, period_epochs=0.0),
     'period_epochs'),
    (lambda: schedules.CosineRestarts(base=1.0, t_mult=0.5), 't_mult'),
    (lambda: schedules.CosineRestarts(base=1.0, minimum=-0.1), 'minimum'),
    (lambda: schedules.CosineRestarts(base=1.0, minimum=2.0), 'minimum'),
    (lambda: schedules.CosineRestarts(base=0.0), 'base'),
    (lambda: schedules.Constant(base=1.0)(-1.0), 'epoch'),
    (lambda: schedules.CosineRestarts(base=1.0).cycle_index(math.nan),
     'epoch'),
])
def test_invalid_arguments_raise_configuration_error(make, name):
  with pytest.raises(ConfigurationError, match=name):
    make()


def test_constructor_arguments_are_keyword_only():
  with pytest.raises(TypeError):
    schedules.StepDecay(1.0)  # pylint: disable=too-many-function-args


def test_inverse_sqrt_decay_is_eta0_over_sqrt_one_plus_time_step():
  schedule = schedules.InverseSqrtDecay(base=3e-4, steps_per_epoch=1000)
  for epoch, step in ((0.0, 0), (0.25, 250), (1.0, 1000), (2.5, 2500)):
    assert schedule(epoch) == pytest.approx(3e-4 / math.sqrt(1 + step), rel=1e-12)


def test_root_time_decay_is_gamma_over_one_plus_alpha_root_time_step():
  schedule = schedules.RootTimeDecay(base=1e-3, steps_per_epoch=12500,
                                     alpha=0.015)
  for epoch, step in ((0.0, 0), (0.5, 6250), (1.0, 12500), (8.0, 100000)):
    assert schedule(epoch) == pytest.approx(
        1e-3 / (1 + 0.015 * math.sqrt(step)), rel=1e-12)
  # At 10^6 steps: 1e-3 / (1 + 0.015 * 1000) = 1e-3 / 16.
  assert schedules.RootTimeDecay(base=1e-3, steps_per_epoch=10**6,
                                 alpha=0.015)(1.0) == pytest.approx(1e-3 / 16)
  assert schedules.RootTimeDecay(base=0.1, steps_per_epoch=7,
                                 alpha=0)(3.0) == 0.1


@pytest.mark.parametrize('alpha', [-0.1, float('nan'), 'fast'])
def test_root_time_decay_rejects_a_bad_alpha(alpha):
  with pytest.raises(ConfigurationError, match='RootTimeDecay.alpha'):
    schedules.RootTimeDecay(base=1.0, steps_per_epoch=10, alpha=alpha)


@pytest.mark.parametrize('steps', [0, -5, 2.5, True])
def test_inverse_sqrt_decay_rejects_bad_steps_per_epoch(steps):
  with pytest.raises(ConfigurationError, match=f'steps_per_epoch={steps!r}'):
    schedules.InverseSqrtDecay(base=1.0, steps_per_epoch=steps)


def test_alternating_restarts_follow_the_paper_cycles():
  # Shang & Zhang, Section 3.2: E_i = 2^i · E_base; E_base = 5 starting real runs
  # 5 real epochs, 10 synthetic, 20 real, 40 synthetic: 1-based epochs 6, 16, 36
  # and 76 start a new run (0-based 5, 15, 35, 75).
  schedule = schedules.AlternatingRestarts(base=0.5, period_epochs=5,
                                           start_phase='real')
  phases = [schedule.phase(epoch) for epoch in range(100)]
  flips = [epoch + 1 for epoch in range(1, 100) if phases[epoch] != phases[epoch - 1]]
  assert flips == [6, 16, 36, 76]
  assert phases[0] == 'real' and phases[5] == 'synthetic' and phases[15] == 'real'
  assert [schedule.synthetic(e) for e in (0, 4, 5, 14, 15, 35)] == [
      False, False, True, True, False, True]
  for start in (0, 5, 15, 35, 75):  # The rate is back at its base at each flip.
    assert schedule(start) == pytest.approx(0.5)
  # Just before a restart the cosine is near its floor; halfway it is half the base.
  assert schedule(15 - 1e-3) < 1e-6
  assert schedule(5 + 5) == pytest.approx(0.25)
  assert schedule(35 + 20) == pytest.approx(0.25)


def test_alternating_restarts_with_equal_cycles_flip_every_period():
  # t_mult = 1: every cycle lasts period_epochs, so the phase flips at each one.
  schedule = schedules.AlternatingRestarts(base=0.5, period_epochs=1, t_mult=1.0)
  assert [schedule.phase(e) for e in range(4)] == [
      'real', 'synthetic', 'real', 'synthetic']
  for start in range(4):
    assert schedule(start) == pytest.approx(0.5)
    assert schedule(start + 0.5) == pytest.approx(0.25)
  with pytest.raises(ConfigurationError, match='t_mult'):
    schedules.AlternatingRestarts(t_mult=0.5)


def test_alternating_restarts_start_phase_and_errors():
  schedule = schedules.AlternatingRestarts(period_epochs=2,
                                           start_phase='synthetic')
  assert [schedule.phase(e) for e in (0, 1, 2, 5, 6)] == [
      'synthetic', 'synthetic', 'real', 'real', 'synthetic']
  with pytest.raises(ConfigurationError, match='start_phase'):
    schedules.AlternatingRestarts(start_phase='both')
  with pytest.raises(ConfigurationError, match='period_epochs'):
    schedules.AlternatingRestarts(period_epochs=0)

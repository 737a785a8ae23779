"""Variable-length sequences in every method: padding adds nothing.

A batch of sequences of different lengths, padded to the longest in the layout of
``tfcredit.masking``, must give each method the gradient estimate of the
sequences taken one by one without padding: the mean of their single-sequence
estimates (the loss convention divides by the batch). Each method's variables
(draw counters, a synthesizer) are restored before every call, so every call
starts from the same place.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from tfcredit import methods
from tfcredit.errors import ConfigurationError
from tfcredit.tasks.sequences import SequenceTask
from tfcredit.testing import (assert_nests_close, built_optimizer,
                              example_model_arguments, tiny_model, to_numpy)
from tfcredit.training import trainer

from tiers import slow_except

LENGTHS = (9, 4, 7)
STEPS = max(LENGTHS)
VOCABULARY, CLASSES = 5, 3


def _task(readout):
  rng = np.random.default_rng(0)
  inputs = rng.integers(0, VOCABULARY, (len(LENGTHS), STEPS)).astype(np.int32)
  if readout == 'per_step':
    targets = rng.integers(0, CLASSES, (len(LENGTHS), STEPS)).astype(np.int32)
  else:
    targets = rng.integers(0, CLASSES, len(LENGTHS)).astype(np.int32)
  return SequenceTask(inputs=inputs, targets=targets, lengths=np.array(LENGTHS),
                      valid=(inputs, targets, np.array(LENGTHS)),
                      test=(inputs, targets, np.array(LENGTHS)),
                      num_classes=CLASSES, input_vocab_size=VOCABULARY,
                      readout=readout)


# FPTT's episodic windows are fractions of the episode.
EPISODIC_ARGUMENTS = {'fptt': {'windows': 2, 'window_length': None}}
# Methods whose draws are made for the whole batch (_check_batch_draws).
BATCH_DRAWS = ('kf_rtrl', 'uoro')
# Methods that refuse padded sequences (with the readout), naming themselves.
REFUSE = {'per_step': {'fptt', 'target_prop'},
          'terminal': {'artbp', 'dni', 'fptt', 'target_prop', 'truncated_bptt'}}


def _randomize_own_weights(method, model):
  """A method's own weights (DNI's synthesizer, zero at its output initially)
  drawn at random, so what they contribute is not zero by construction."""
  model_weights = {id(v) for v in model.trainable_variables}
  rng = np.random.default_rng(1)
  own = (list(method.trainable_variables)
         + list(getattr(method, 'synthesizer_variables', [])))
  for variable in own:
    if id(variable) not in model_weights and variable.shape.is_fully_defined():
      variable.assign(0.3 * rng.standard_normal(variable.shape))


def _estimate(method, model, inputs, targets):
  gradients, _ = method.estimate_gradients(
      (tf.constant(inputs), tf.constant(targets)),
      model.initial_state(inputs.shape[0]))
  return [to_numpy(g) for g in gradients]


def _built(name, readout):
  """``(task, model, method, restored_estimate)``."""
  task = _task(readout)
  model = tiny_model(task, seed=0, units=6, **example_model_arguments(name))
  cls = methods.METHODS[name]
  arguments = dict(cls.EXAMPLE_ARGUMENTS)
  arguments.pop('sequence_length', None)  # Streams only.
  arguments.update(EPISODIC_ARGUMENTS.get(name, {}))
  method = trainer.build_method(functools.partial(cls, **arguments), model, task,
                                built_optimizer(model), len(LENGTHS))
  _randomize_own_weights(method, model)
  method.check_task(task)
  saved = [v.numpy() for v in method.variables]

  def restored_estimate(x, y):
    for variable, value in zip(method.variables, saved):
      variable.assign(value)
    return _estimate(method, model, x, y)

  return task, model, method, restored_estimate


def _padded_and_one_by_one(name, readout):
  task, _, _, restored_estimate = _built(name, readout)
  inputs, targets = task.batch('valid', 0, 0, len(LENGTHS))
  padded = restored_estimate(inputs, targets)
  singles = [restored_estimate(inputs[row:row + 1, :n],
                               targets[row:row + 1, :n] if readout == 'per_step'
                               else targets[row:row + 1])
             for row, n in enumerate(LENGTHS)]
  return padded, [np.mean(parts, axis=0) for parts in zip(*singles)]


@pytest.mark.parametrize('readout', ['per_step', 'terminal'])
@pytest.mark.parametrize('name', slow_except(sorted(methods.METHODS),
                                             'truncated_bptt'))
def test_padded_batch_gives_the_one_by_one_estimate(name, readout):
  if name in REFUSE[readout]:
    with pytest.raises(ConfigurationError) as refusal:
      _padded_and_one_by_one(name, readout)
    message = str(refusal.value)
    assert 'sequences' in message  # The task's name.
    assert type_name(name) in message
    return
  if name in BATCH_DRAWS:
    _check_batch_draws(name, readout)
    return
  padded, one_by_one = _padded_and_one_by_one(name, readout)
  assert max(np.abs(g).max() for g in one_by_one) > 1e-4  # Not vacuous.
  assert_nests_close(padded, one_by_one, rtol=1e-4, atol=1e-6)


def type_name(name):
  return methods.METHODS[name].__name__


def _more_padding(inputs, targets, steps, readout):
  """The batch with ``steps`` more padded steps."""
  inputs = np.pad(inputs, ((0, 0), (0, steps)), constant_values=-1)
  if readout == 'per_step':
    targets = np.pad(targets, ((0, 0), (0, steps)), constant_values=-1)
  return inputs, targets


def _check_batch_draws(name, readout):
  """UORO and KF-RTRL draw their noise for the whole batch, so a row alone gets
  other draws than in a batch; with the same rows, padding changes nothing:
  rows of one length give their unpadded estimate, and more padding the same
  estimate."""
  task, _, _, restored_estimate = _built(name, readout)
  inputs, targets = task.batch('valid', 0, 0, len(LENGTHS))
  assert (inputs < 0).sum() == sum(STEPS - n for n in LENGTHS)  # Padded.
  shortest = min(LENGTHS)
  cut = (inputs[:, :shortest],
         targets[:, :shortest] if readout == 'per_step' else targets)
  unpadded = restored_estimate(*cut)
  assert max(np.abs(g).max() for g in unpadded) > 1e-4  # Not vacuous.
  assert_nests_close(restored_estimate(*_more_padding(*cut, 4, readout)),
                     unpadded, rtol=1e-4, atol=1e-6)
  assert_nests_close(
      restored_estimate(*_more_padding(inputs, targets, 3, readout)),
      restored_estimate(inputs, targets), rtol=1e-4, atol=1e-6)

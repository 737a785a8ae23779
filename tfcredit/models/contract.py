"""What a ``train.model`` must provide: the model contract, checked in one place.

The trainer, every method, evaluation and the SavedModel export talk to the model
only through these members (``tfcredit.models.RecurrentModel`` implements them all;
the simplest way to train your own recurrent cell is to pass it as
``RecurrentModel(cell=...)``):

* ``build_for(example_inputs)``: create every weight from a ``[B, 1, ...]`` batch
  of zeros of the task's input spec (the trainer calls it before the optimizer is
  built).
* ``initial_state(batch_size)``: the state nest at the start of a sequence;
  ``batch_size`` is a Python int or a scalar tensor.
* ``state_spec(batch_size=None)``: the ``tf.TensorSpec`` nest of that state; every
  leaf is ``[batch, size]`` float32 (input signatures, carried-state checkpoints,
  DNI's synthesizer width, TargetProp's free state variables).
* ``unroll(inputs, state, training=False, state_grad_scale=None, readout=True)
  -> (outputs, final_state)``: one window of any length from ``state``; outputs
  ``[B, T, output_dim]`` (per-step readout) or ``[B, output_dim]`` (terminal).
  ``state_grad_scale`` (``[T]`` or ``[B, T]``, ARTBP) multiplies the gradient
  flowing from step ``t + 1`` into the state of step ``t`` and must not change the
  forward values; ``readout=False`` (TargetProp) may skip the head and return
  ``None`` outputs.
* ``rng_variables()``: the variables of the model's random generators (dropout
  seeds), saved in checkpoints so a resumed run draws the same masks; ``[]`` if
  none.
* ``trainable_variables``: the weights the optimizer updates.
* the model is trackable (a ``keras.Model`` or ``tf.Module``), so
  ``tf.train.Checkpoint(model=...)`` and the SavedModel export hold its weights.

A task of variable-length sequences adds ``masked=True`` to the model's
arguments: its inputs then hold padded steps (``tfcredit.masking``), through which
the model must keep each layer's state (and output) unchanged.

Optional: ``state_step(inputs, state, training=False) -> state``, the state
after a ``[B, 1, ...]`` window without a loop; the forward-mode methods (RTRL,
UORO, SnAp-1, SnAp-2, KF-RTRL, element-wise RTRL) map it over the rows for each
row's Jacobian in the weights, and without it take the slower whole-batch
Jacobian.

``check_model`` refuses anything else with a ``ConfigurationError`` (exit code 2 in
the tools) that names the missing members and the fix.
"""

import inspect
from typing import Any, List

import tensorflow as tf

from tfcredit.errors import ConfigurationError

# (member, whether it is called); the order of the docstring.
REQUIRED_MEMBERS = (('build_for', True), ('initial_state', True),
                    ('state_spec', True), ('unroll', True),
                    ('rng_variables', True), ('trainable_variables', False))
UNROLL_KEYWORDS = ('training', 'state_grad_scale', 'readout')

_FIX = ('wrap your cell in RecurrentModel (gin: train.model = @RecurrentModel and '
        'RecurrentModel.cell = @MyCell(); any Keras RNN cell, a list of cells or a '
        'cell class), or subclass RecurrentModel; the contract is in '
        'tfcredit.models.contract')


def missing_members(model: Any) -> List[str]:
  """The contract members ``model`` lacks or cannot be used as (empty if none)."""
  missing = []
  for name, called in REQUIRED_MEMBERS:
    value = getattr(model, name, None)
    if value is None or (called and not callable(value)):
      missing.append(name)
  if 'unroll' not in missing:
    try:
      parameters = inspect.signature(model.unroll).parameters
    except (TypeError, ValueError):
      parameters = None
    if parameters is not None and not any(
        p.kind == p.VAR_KEYWORD for p in parameters.values()):
      for keyword in UNROLL_KEYWORDS:
        if keyword not in parameters:
          missing.append(f'unroll(..., {keyword}=)')
  if not isinstance(model, tf.__internal__.tracking.Trackable):
    missing.append('trackable weights (a keras.Model or tf.Module)')
  return missing


def check_model(model: Any, where: str = 'train.model') -> None:
  """Refuses a model that does not provide the contract of this module.

  Args:
    model: the built model object (not yet ``build_for``-ed).
    where: the setting that built it, for the message.

  Raises:
    ConfigurationError: a member is missing; the message lists them and the fix.
  """
  missing = missing_members(model)
  if missing:
    raise ConfigurationError(
        f'{where} built a {type(model).__name__}, which tfcredit cannot train: it '
        f'lacks {", ".join(missing)}. A model must provide build_for, '
        'initial_state, state_spec, unroll(inputs, state, training, '
        f'state_grad_scale, readout) and rng_variables: {_FIX}')

"""Element-wise RTRL's refusals: a recurrence that is not diagonal per unit, a
stack and an encoder (refused, or under ``approximate`` given Zucchet et al.'s
rule, checked against ``GradientTape`` with the recurrences above each weight's
layer stopped), and bad settings named. Helpers and references are
test_elementwise_rtrl.py's, shared.
"""

import numpy as np
import pytest

from tfcredit.errors import ConfigurationError
from tfcredit.methods import ElementwiseRTRL
from tfcredit.testing import built_optimizer, tiny_model

import test_elementwise_rtrl as base


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_a_recurrence_that_is_not_diagonal_is_refused_in_one_line(cell):
  model = tiny_model(base.STREAM, seed=0, units=base.UNITS, cell=cell)
  with pytest.raises(ConfigurationError) as raised:
    base._method(model)
  message = str(raised.value)
  assert '\n' not in message
  assert 'diagonal per unit' in message
  assert f'{cell.upper()}Cell' in message and 'RTRL' in message


def test_a_stack_is_refused_unless_approximate_and_then_follows_the_paper():
  """Two LRU layers: the lower layer's weights write the upper layer's units
  within a step, so exact element-wise RTRL is impossible; refused by default.
  With ``approximate`` each layer's influence is kept alone (Zucchet et al.):
  the lower layer's weights get full backpropagation with the upper layer's
  recurrence stopped, its ``C``/``D`` (which write the upper layer's units)
  too, the upper layer and the readout full BPTT's. That differs from full
  BPTT, so the rule is an approximation in a stack."""
  model = base._model(num_layers=2)
  with pytest.raises(ConfigurationError, match='approximate = True') as raised:
    base._method(model)
  assert 'one recurrent layer' in str(raised.value)
  method = base._method(model, approximate=True)
  assert not method.exact
  # Every weight of the lower layer reaches the upper layer's units.
  assert set(method.approximated) == {
      v.path for v in model.core[0].trainable_variables}
  segment = base._stream(0, 9)
  estimate = base._dense(method.estimate_gradients(segment,
                                              model.initial_state(base.ROWS))[0])
  full = base._tape_gradient(model, base.STREAM, segment)
  upper_stopped = base._tape_gradient(model, base.STREAM, segment, stopped=(1,))
  first = {id(v) for v in model.core[0].trainable_variables}
  expected = [s if id(v) in first else f for v, s, f in
              zip(model.trainable_variables, upper_stopped, full)]
  base._close(estimate, expected)
  assert max(np.abs(e - f).max() for e, f in zip(estimate, full)) > 1e-4


def test_an_encoder_is_refused_unless_approximate_and_then_gets_one_step():
  """An input projection writes every unit: refused by default; with
  ``approximate`` it gets the gradient through the current step only (every
  recurrence stopped), every other weight full BPTT's."""
  model = base._model(embedding_dim=5)
  with pytest.raises(ConfigurationError) as raised:
    base._method(model)
  assert 'input_projection' in str(raised.value)
  assert 'approximate = True' in str(raised.value)
  method = base._method(model, approximate=True)
  assert set(method.approximated) == {'input_projection/kernel',
                                      'input_projection/bias'}
  segment = base._stream(0, 8)
  estimate = base._dense(method.estimate_gradients(segment,
                                              model.initial_state(base.ROWS))[0])
  full = base._tape_gradient(model, base.STREAM, segment)
  one_step = base._tape_gradient(model, base.STREAM, segment, stopped=(0,))
  encoder = {id(v) for v in model.encoder.trainable_variables}
  base._close(estimate, [o if id(v) in encoder else f for v, o, f in
                    zip(model.trainable_variables, one_step, full)])


def test_bad_settings_are_refused_with_the_parameter_named():
  model = base._model()
  with pytest.raises(ConfigurationError, match='ElementwiseRTRL.approximate'):
    base._method(model, approximate=1)
  with pytest.raises(ConfigurationError, match='ElementwiseRTRL.batch_size'):
    ElementwiseRTRL(model=model, task=base.STREAM, optimizer=built_optimizer(model))
  with pytest.raises(ConfigurationError,
                     match='ElementwiseRTRL.max_influence_floats'):
    base._method(model, max_influence_floats=10)
  with pytest.raises(ConfigurationError,
                     match="ElementwiseRTRL.jit_compile must be True, False or "
                           "'auto', got 'yes'"):
    base._method(model, jit_compile='yes')

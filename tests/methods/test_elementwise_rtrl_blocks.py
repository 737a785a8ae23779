"""Element-wise RTRL through a stack of residual LRU blocks (``LRUBlockCell``),
the deep network Zucchet et al. 2023 train: Zucchet et al.'s rule checked
against a plain ``GradientTape`` with recurrences stopped.

The rule (docs/methods/elementwise_rtrl.md): each weight's influence is kept on
its own unit only. A block's recurrent weights (``ν``, ``θ``, ``γ``, ``B``)
write one unit each, so they get backpropagation through their own layer's
recurrence with the layers above stopped; its normalisation writes every unit
of its layer and gets the current step only (every recurrence stopped), as the
encoder does; its readout ``C``, ``D`` and GLU write only the layers above,
so the same; the top block's readout and GLU, which write no state, and the
head get full BPTT's gradient.
"""

import functools

import numpy as np

from tfcredit.models.lru import LRUBlockCell
from tfcredit.testing import tiny_model

import test_elementwise_rtrl as base

WIDTH = 5
_RECURRENT = ('nu_log', 'theta_log', 'gamma_log', 'B_re', 'B_im')


def _block_stack():
  return tiny_model(base.STREAM, seed=0, units=base.UNITS, num_layers=2,
                    embedding_dim=WIDTH,
                    cell=functools.partial(LRUBlockCell, width=WIDTH))


def _name(variable):
  return variable.path.rsplit('/', 1)[-1]


def test_a_block_stack_follows_the_papers_rule():
  model = _block_stack()
  method = base._method(model, approximate=True)
  assert not method.exact
  segment = base._stream(0, 9)
  estimate = base._dense(method.estimate_gradients(
      segment, model.initial_state(base.ROWS))[0])
  full = base._tape_gradient(model, base.STREAM, segment)
  upper_stopped = base._tape_gradient(model, base.STREAM, segment, stopped=(1,))
  all_stopped = base._tape_gradient(model, base.STREAM, segment, stopped=(0, 1))
  lower = {id(v) for v in model.core[0].trainable_variables}
  upper = {id(v) for v in model.core[1].trainable_variables}
  expected = []
  for variable, f, u, a in zip(model.trainable_variables, full, upper_stopped,
                               all_stopped):
    name = _name(variable)
    if id(variable) in lower:
      expected.append(u if name in _RECURRENT else a)
    elif id(variable) in upper:
      expected.append(a if name.startswith('norm_') else f)
    else:  # The encoder: the current step; the head: full.
      expected.append(a if 'input_projection' in variable.path else f)
  base._close(estimate, expected)
  # The rule is not full BPTT's gradient in a stack of blocks.
  assert max(np.abs(e - f).max() for e, f in zip(estimate, full)) > 1e-4

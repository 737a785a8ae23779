"""e-prop: eligibility propagation (Bellec et al. 2020, Nature Communications).

The gradient of a recurrent network is ``Σ_t Σ_j L_j,t e_ji,t``: a learning
signal per unit times an eligibility trace per synapse. e-prop computes the
trace exactly from each unit's own hidden state ``m_j`` (its memory, holding
the other units' outputs fixed) and takes the learning signal online,

    ε_ji,t = (∂m_j,t/∂m_j,t−1) ε_ji,t−1 + ∂m_j,t/∂W_ji,
    e_ji,t = (∂h_j,t/∂m_j,t) ε_ji,t + ∂h_j,t/∂W_ji|direct,
    L_j,t  = Σ_k B_jk ∂ℓ_t/∂y_k,t,

with ``B`` the readout's transpose (``feedback='symmetric'``, the default: the
learning signal is then ``∂ℓ_t/∂h_t``, the loss's own step only) or a fixed
random matrix (``'random'``). What it drops is every path from one unit's output
to the next step's units: with no recurrent weights e-prop is full BPTT's
gradient; otherwise it is biased.

* LSTM (Keras' ``LSTMCell``, the named ``'lstm'`` core): ``m = c``, so
  ``ε_t = f_t ⊙ ε_{t−1} + ∂c_t/∂W`` for the weights of the input, forget and
  candidate gates (the paper's LSTM derivation), read through ``∂h_t/∂c_t =
  o_t ⊙ tanh'(c_t)``; the output gate's weights have no memory, ``e =
  ∂h_t/∂W_o``. The eligibility holds ``3/4`` of the cell's weights' count per
  row.
* Leaky RNN (``LeakyRNNCell``): ``m = h`` with ``∂h_t/∂h_{t−1}`` through the
  leak, ``1 − α``, the recurrent input being another unit's output: e-prop is
  RFLO (Marschall, Cho & Savin 2020), and this class is ``RFLO`` with one more
  rule and symmetric feedback by default (``rflo.py`` owns the machinery).

docs/methods/eprop.md.
"""

from typing import Optional

import keras
import tensorflow as tf

from tfcredit.methods import registry
from tfcredit.methods import rflo
from tfcredit.models.leaky_rnn import LeakyRNNCell


class LSTMRule(rflo.Rule):
  """Keras' ``LSTMCell`` (gates ``i, f, c, o``): memory ``c``, carry ``f``,
  readout ``o ⊙ φ'(c_t)``; gates ``i, f, c`` with memory, ``o`` without."""

  memory_gates = 3
  direct_gates = 1

  def refusal(self):
    cell = self.cell
    if cell.dropout or cell.recurrent_dropout:
      return (f'LSTMCell dropout = {cell.dropout}, recurrent_dropout = '
              f'{cell.recurrent_dropout}')
    return None

  def step(self, x, state):
    h, c = state
    cell = self.cell
    a_i, a_f, a_c, a_o = tf.split(self.preactivation(x, h), 4, axis=1)
    i, di = rflo.elementwise(cell.recurrent_activation, a_i)
    f, df = rflo.elementwise(cell.recurrent_activation, a_f)
    g, dg = rflo.elementwise(cell.activation, a_c)
    o, do = rflo.elementwise(cell.recurrent_activation, a_o)
    new_c = f * c + i * g
    squashed, slope = rflo.elementwise(cell.activation, new_c)
    new_h = o * squashed
    return rflo.CellStep(
        state=(new_h, new_c), h=new_h, carry=f, readout=o * slope,
        memory=tf.stack([g * di, c * df, i * dg], axis=1),
        direct=(squashed * do)[:, None, :])


@registry.register
class EProp(rflo.RFLO):
  """e-prop, one update every ``window`` steps (``RFLO``'s machinery, ``RTRL``'s
  loop): a one-layer LSTM or leaky RNN."""

  KEY = 'eprop'
  EXAMPLE_ARGUMENTS = {'window': 5, 'windows_per_call': 2}
  EXAMPLE_MODEL = {}  # The tiny models' LSTM.
  RULES = {LeakyRNNCell: rflo.LeakyRule, keras.layers.LSTMCell: LSTMRule}
  CELLS = tuple(RULES)

  def __init__(self, *, model, task, optimizer, window: int = 10,
               windows_per_call: int = 10, batch_size: Optional[int] = None,
               feedback: str = 'symmetric', feedback_seed: int = 0,
               feedback_stddev: Optional[float] = None,
               max_influence_floats: int = 2**26,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Args: as ``RFLO``'s, with ``feedback='symmetric'`` by default (the
    paper's symmetric e-prop; ``'random'`` is its random e-prop)."""
    super().__init__(model=model, task=task, optimizer=optimizer, window=window,
                     windows_per_call=windows_per_call, batch_size=batch_size,
                     feedback=feedback, feedback_seed=feedback_seed,
                     feedback_stddev=feedback_stddev,
                     max_influence_floats=max_influence_floats,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name)

"""KF-RTRL: Kronecker-factored RTRL (Mujika, Meier & Steger 2018, section 4).

RTRL (``rtrl.py``) with the influence ``G_t = ∂s_t/∂θ`` of each weight matrix
replaced by one Kronecker product per row. It applies to cells whose weights
act on the concatenation ``u_t = [x_t; h_{t−1}; 1]`` alone: the pre-activations
are ``z_t = u_t W`` (Keras's ``kernel``, ``recurrent_kernel`` and ``bias``
stacked: ``z = x K + h R + b``) and the new state a function of ``z_t`` and the
old state. Then the immediate term is ``∂s_t/∂W|direct = u_t ⊗ D_t`` with
``D_t = ∂s_t/∂z_t`` (the paper's section 4), and KF-RTRL keeps ``G_t ≈ u'_t ⊗
A_t`` (``u'`` of ``|u|`` entries, ``A`` of ``|s| × |z|``). Per step, RTRL's
update ``J_t G_{t−1} + u_t ⊗ D_t = u'_{t−1} ⊗ (J_t A_{t−1}) + u_t ⊗ D_t`` is a
sum of two Kronecker products, replaced by one with two independent random
signs ``c1, c2`` (unbiased over the signs):

    u'_t = c1 p1 u'_{t−1} + c2 p2 u_t,   A_t = c1/p1 J_t A_{t−1} + c2/p2 D_t
    p1 = √(‖J_t A_{t−1}‖ / ‖u'_{t−1}‖),   p2 = √(‖D_t‖ / ‖u_t‖)

(Frobenius norms per row; these ``p`` minimise the variance). When one
of the two terms is zero (the zero state, a padded step) the other is kept
exactly, without signs. A loss at ``s_t`` gets ``(∂ℓ/∂s_{t−1}) G_{t−1}``:
``W``'s gradient ``u'_{t−1} ⊗ ((∂ℓ/∂s_{t−1}) A_{t−1})``, split into the
variables' rows.

The factors (``Factor``): one per recurrent layer (``D`` is the whole state's
Jacobian in that layer's ``z``, so a layer's factor carries what it does to the
layers above), and one for the encoder, which is a linear map too: an
embedding's ``x_t = onehot(token_t) E`` (``u`` the one-hot, ``|vocabulary|``
entries), an input projection's ``x_t = [input_t; 1] P``, with ``D = ∂s_t/∂x_t
= D^{(1)}_t K_1ᵀ``. The readout never touches the state: its gradient is the
direct one. Cells without this structure are refused: a GRU's reset gate
multiplies its recurrent product (``r ⊙ (h R)``), a custom cell's structure is
unknown, and dropout's masks change ``u`` between the step and a second pass.
``D_t`` is the state's per-row Jacobian in the layers' biases (RTRL's per-row
path, ``|s|`` backward passes per row), ``J_t`` RTRL's. The signs are drawn
statelessly from checkpointed counters (``uoro.rademacher``), so a resumed run
draws what the uninterrupted one would. docs/methods/kf_rtrl.md.
"""

from typing import List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from tfcredit import masking
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.methods import registry
from tfcredit.methods import rtrl
from tfcredit.methods import uoro
from tfcredit.models.recurrent import RecurrentModel

_WHY_NOT = {
    keras.layers.GRUCell: ', whose reset gate multiplies its recurrent product '
                          '(r ⊙ (h R)), so its weights do not act on [x; h; 1]',
}


class Factor:
  """A weight matrix ``W`` (``[|u|, |z|]``, ``z = u W``) whose influence is
  carried as ``u' ⊗ A``.

  Attributes:
    name: the layer it belongs to.
    u_size, z_size: ``|u|`` and ``|z|``.
    pieces: ``[(index among the model's variables or None when not trainable,
      rows of W)]`` in ``W``'s row order: the variables stacked into ``W``
      (a bias is one row).
  """

  def __init__(self, name: str, pieces: Sequence[Tuple[Optional[int], int]],
               z_size: int):
    self.name = name
    self.pieces = list(pieces)
    self.u_size = sum(rows for _, rows in self.pieces)
    self.z_size = z_size


def kronecker_sum(u1, a1, u2, a2, c1, c2):
  """One Kronecker product per row whose mean over the signs is ``u1 ⊗ a1 + u2
  ⊗ a2``: ``(c1 p1 u1 + c2 p2 u2, c1/p1 a1 + c2/p2 a2)`` with the
  variance-minimising ``p1 = √(‖a1‖/‖u1‖)``, ``p2 = √(‖a2‖/‖u2‖)``.

  Args:
    u1, u2: ``[rows, |u|]``; a1, a2: ``[rows, |s|, |z|]``.
    c1, c2: ``[rows]`` signs (±1).

  Returns:
    ``(u, a)``. A row whose term 2 (or 1) is zero gets term 1 (or 2) alone,
    exactly and without signs (``(p u, a/p)``); both zero, zeros.
  """
  def norms(x):
    return tf.sqrt(tf.reduce_sum(tf.reshape(tf.square(x), [tf.shape(x)[0], -1]),
                                 axis=-1))
  nu1, na1, nu2, na2 = norms(u1), norms(a1), norms(u2), norms(a2)
  first = tf.logical_and(nu1 > 0, na1 > 0)
  second = tf.logical_and(nu2 > 0, na2 > 0)
  both = tf.logical_and(first, second)
  p1 = tf.where(first, tf.sqrt(na1 / tf.where(first, nu1, 1.0)), 1.0)
  p2 = tf.where(second, tf.sqrt(na2 / tf.where(second, nu2, 1.0)), 1.0)
  p1 = tf.where(p1 > 0, p1, 1.0)  # Underflow: the term is negligible anyway.
  p2 = tf.where(p2 > 0, p2, 1.0)
  w1 = tf.where(first, tf.where(both, c1, 1.0), 0.0)
  w2 = tf.where(second, tf.where(both, c2, 1.0), 0.0)
  u = (w1 * p1)[:, None] * u1 + (w2 * p2)[:, None] * u2
  a = (w1 / p1)[:, None, None] * a1 + (w2 / p2)[:, None, None] * a2
  return u, a


@registry.register
class KFRTRL(rtrl.RTRL):
  """KF-RTRL, one update every ``window`` steps (``RTRL``'s loop and contract).

  The influence is a pair ``(u' [rows, |u|], A [rows, |s|, |z|])`` per factor
  (the encoder's, then one per layer); on streams variables, carried across
  calls and checkpointed. Metric ``influence_norm``: ``‖(u', A)‖`` over the
  factors and rows.
  """

  KEY = 'kf_rtrl'
  EXAMPLE_ARGUMENTS = {'window': 5, 'windows_per_call': 2, 'seed': 1}
  # Cells whose weights act on [x_t; h_{t−1}; 1] alone: z = x K + h R + b.
  CELLS = (keras.layers.LSTMCell, keras.layers.SimpleRNNCell)

  def __init__(self, *, model, task, optimizer, window: int = 10,
               windows_per_call: int = 10, batch_size: Optional[int] = None,
               seed: int = 0, max_influence_floats: int = 2**26,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Args:
      seed: seeds the signs (their counters are checkpointed).
      window, windows_per_call, batch_size, max_influence_floats: as in ``RTRL``
        (the influence here is ``rows × Σ (|u| + |s|·|z|)`` floats).
      model, task, optimizer, clip_norm, use_tf_function, name: as in ``Method``.

    Raises:
      ConfigurationError: an argument is invalid, or the model's cells are not
        LSTM or simple RNN cells (a GRU's, a custom cell), or it has dropout.
    """
    seed = validation.integer('KFRTRL.seed', seed, 0)
    super().__init__(model=model, task=task, optimizer=optimizer, window=window,
                     windows_per_call=windows_per_call, batch_size=batch_size,
                     max_influence_floats=max_influence_floats,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name)
    uoro.add_draw_counters(self, seed)

  # ------------------------------------------------------------ structure
  def _prepare_influence(self):
    """Checks the model and finds the factors (``self.factors``, the encoder's
    first if any), the layers' biases and where each layer's ``h`` is in the
    flat state."""
    model = self.model
    owner = type(self).__name__
    if not isinstance(model, RecurrentModel):
      raise ConfigurationError(
          f'{owner} reads the cells of a RecurrentModel, got a '
          f'{type(model).__name__}: use RTRL, UORO or SnAp1 for other models')
    for layer in model.core:
      cell = layer.cell
      if type(cell) not in self.CELLS:  # pylint: disable=unidiomatic-typecheck
        raise ConfigurationError(
            f'{owner} needs cells whose weights act on [x_t; h_t-1; 1] alone '
            "(LSTMCell, SimpleRNNCell: RecurrentModel.cell = 'lstm' or "
            f"'simple_rnn'); layer {layer.name} is a {type(cell).__name__}"
            f'{_WHY_NOT.get(type(cell), "")}: use RTRL, UORO or SnAp1 for it')
      if not cell.use_bias:
        raise ConfigurationError(
            f'{owner} reads ∂s/∂z as the Jacobian in the bias: layer '
            f'{layer.name} has use_bias=False; give it a bias or use RTRL')
      if cell.dropout or cell.recurrent_dropout:
        raise ConfigurationError(
            f'{owner} does not support dropout inside the cell (layer '
            f'{layer.name}: dropout={cell.dropout}, recurrent_dropout='
            f'{cell.recurrent_dropout}): its factors read the step\'s inputs, '
            'which the masks change; use RTRL or UORO')
    if model.dropout_rate > 0:
      raise ConfigurationError(
          f'{owner} does not support RecurrentModel.dropout = '
          f'{model.dropout_rate} (its factors read the step\'s inputs, which '
          'the masks change between passes): set it to 0, or use RTRL or UORO')
    position = {id(v): i for i, v in enumerate(self.model_variables)}
    index = lambda v: position.get(id(v))
    factors = []
    encoder = model.encoder
    if isinstance(encoder, keras.layers.Embedding):
      vocabulary, width = (int(d) for d in encoder.embeddings.shape)
      factors.append(Factor(encoder.name, [(index(encoder.embeddings),
                                            vocabulary)], width))
    elif isinstance(encoder, keras.layers.Dense):
      inputs, width = (int(d) for d in encoder.kernel.shape)
      pieces = [(index(encoder.kernel), inputs)]
      if encoder.use_bias:
        pieces.append((index(encoder.bias), 1))
      factors.append(Factor(encoder.name, pieces, width))
    elif encoder is not None:
      raise ConfigurationError(
          f'{owner}: the encoder {encoder.name} is a {type(encoder).__name__}, '
          'not an Embedding or Dense layer')
    self.encoder_factor = bool(factors)
    self.biases, self.h_offsets, self.h_sizes = [], [], []
    offset = 0
    for layer, sizes in zip(model.core, model.state_sizes):
      cell = layer.cell
      inputs, z_size = (int(d) for d in cell.kernel.shape)
      units = int(cell.recurrent_kernel.shape[0])
      factors.append(Factor(layer.name, [
          (index(cell.kernel), inputs), (index(cell.recurrent_kernel), units),
          (index(cell.bias), 1)], z_size))
      self.biases.append(cell.bias)
      self.h_offsets.append(offset)
      self.h_sizes.append(units)
      offset += sum(sizes)
    self.factors = factors
    self.first_kernel = model.core[0].cell.kernel

  def _influence_size(self, rows):
    terms = [f'({f.u_size} + {self.width} × {f.z_size})' for f in self.factors]
    return (rows * sum(f.u_size + self.width * f.z_size for f in self.factors),
            f'rows × Σ (|u| + state × |z|) = {rows} × ' + (
                terms[0] if len(terms) == 1 else f'({" + ".join(terms)})'))

  def _zero_influence(self, rows):
    return tuple((tf.zeros(tf.stack([rows, f.u_size])),
                  tf.zeros(tf.stack([rows, self.width, f.z_size])))
                 for f in self.factors)

  def _draw_key(self, train):
    return uoro.draw_key(self, train)

  def _noise(self, key, rows, start, end):
    """Signs ``(c1, c2)`` of every factor in the window,
    ``[rows, end − start, 2 × factors]``."""
    return uoro.rademacher(key, rows, start, end, 2 * len(self.factors))

  # --------------------------------------------------------- the influence
  def _weight_gradients(self, factor, u, signal):
    """``Σ_rows u ⊗ signal`` (``[rows, |u|]``, ``[rows, |z|]``) as ``W``'s
    ``[|u|, |z|]`` rows, split per variable: ``[(index, flat gradient)]``."""
    matrix = tf.einsum('bu,bz->uz', u, signal)
    pieces = tf.split(matrix, [rows for _, rows in factor.pieces])
    return [(i, tf.reshape(p, [-1])) for (i, _), p in zip(factor.pieces, pieces)
            if i is not None]

  def _assemble(self, parts, leading):
    """Flat ``leading + [|θ|]`` from ``{variable index: leading + [size]}``,
    zeros for the variables no factor holds (the readout)."""
    pieces = []
    for i, v in enumerate(self.model_variables):
      size = int(v.shape.num_elements())
      pieces.append(parts[i] if i in parts else tf.zeros(
          tf.concat([leading, [size]], 0)))
    return tf.concat(pieces, axis=-1)

  def _through_state(self, state_gradient, influence):
    """``Σ_rows (∂ℓ/∂s) (u' ⊗ A)`` per factor: ``u' ⊗ ((∂ℓ/∂s) A)``."""
    parts = {}
    for factor, (u, a) in zip(self.factors, influence):
      signal = tf.einsum('bs,bsz->bz', state_gradient, a)
      parts.update(self._weight_gradients(factor, u, signal))
    return self._assemble(parts, tf.zeros([0], tf.int32))

  def dense_influence(self, influence) -> tf.Tensor:
    """The RTRL influence ``[rows, |s|, |θ|]`` the factors stand for (``u' ⊗
    A`` placed at each factor's weights, zeros elsewhere): for tests, at RTRL's
    memory."""
    parts = {}
    for factor, (u, a) in zip(self.factors, influence):
      rows = tf.shape(u)[0]
      product = tf.einsum('bu,bsz->bsuz', u, a)
      pieces = tf.split(product, [r for _, r in factor.pieces], axis=2)
      for (i, _), piece in zip(factor.pieces, pieces):
        if i is not None:
          parts[i] = tf.reshape(piece, tf.stack([rows, self.width, -1]))
    leading = tf.shape(influence[0][0])[:1]
    return self._assemble(parts, tf.concat([leading, [self.width]], 0))

  def _probe_variables(self):
    """``D_t = ∂s_t/∂z_t`` is the new state's Jacobian in the biases."""
    return [self.biases]

  def factor_inputs(self, inputs, flat, new_flat) -> List[tf.Tensor]:
    """Each factor's ``u_t`` (``[rows, |u|]``) for the step from ``flat`` to
    ``new_flat`` on ``inputs`` (``[rows, 1(, D)]``): the one-hot token or
    ``[input; 1]`` of the encoder; ``[x_t; h_{t−1}; 1]`` of each layer, ``x_t``
    the features (layer 1) or the layer below's new ``h``."""
    model = self.model
    rows = tf.shape(flat)[0]
    ones = tf.ones(tf.stack([rows, 1]))
    raw = masking.clean_inputs(inputs) if model.masked else inputs
    us = []
    if isinstance(model.encoder, keras.layers.Embedding):
      us.append(tf.one_hot(raw[:, 0], self.factors[0].u_size))
    elif self.encoder_factor:
      raw = tf.cast(raw, tf.float32)
      if raw.shape.rank == 2:  # One real feature per step.
        raw = raw[..., None]
      parts = [raw[:, 0]] + ([ones] if len(self.factors[0].pieces) > 1 else [])
      us.append(tf.concat(parts, axis=-1))
    features = model._features(inputs)  # pylint: disable=protected-access
    features = tf.cast(features[:, 0], tf.float32)
    for offset, size in zip(self.h_offsets, self.h_sizes):
      us.append(tf.concat([features, flat[:, offset:offset + size], ones], -1))
      features = new_flat[:, offset:offset + size]  # The layer's output h_t.
    return us

  def _state_jacobian(self, tape, inputs, flat, new_flat, influence):
    """``(J_t [rows, |s|, |s|], the factors' u_t)``: RTRL's whole ``J_t`` and
    ``factor_inputs``."""
    jacobian = super()._state_jacobian(tape, inputs, flat, new_flat, influence)
    return jacobian, self.factor_inputs(inputs, flat, new_flat)

  def immediate_factors(self, immediate) -> List[tf.Tensor]:
    """Each factor's ``D_t`` (``[rows, |s|, |z|]``) from the state's Jacobian
    in the biases: each layer's block, and for the encoder ``∂s_t/∂x_t =
    D^{(1)}_t K_1ᵀ``."""
    blocks = tf.split(immediate[0], [int(b.shape[0]) for b in self.biases],
                      axis=-1)
    if not self.encoder_factor:
      return blocks
    kernel = tf.convert_to_tensor(self.first_kernel)
    return [tf.einsum('bsz,xz->bsx', blocks[0], kernel)] + list(blocks)

  def _advance(self, jacobian, immediate, influence, noise):
    """``(u', A)`` of every factor after the step (``kronecker_sum`` of ``u'
    ⊗ J A`` and ``u ⊗ D``, signs ``noise[:, 2k]``, ``noise[:, 2k + 1]``)."""
    jacobian, us = jacobian
    advanced = []
    for k, ((u_old, a_old), u, d) in enumerate(zip(
        influence, us, self.immediate_factors(immediate))):
      carried = tf.einsum('bij,bjz->biz', jacobian, a_old)
      advanced.append(kronecker_sum(u_old, carried, u, d, noise[:, 2 * k],
                                    noise[:, 2 * k + 1]))
    return tuple(advanced)

"""RFLO: random-feedback local online learning (Murray 2019, eLife).

For the leaky RNN ``h_t = (1 − α) h_{t−1} + α φ(z_t)``, ``z_t = W u_t``, ``u_t =
[x_t; h_{t−1}; 1]`` (``tfcredit.models.leaky_rnn``), each weight ``W_ij`` keeps
an eligibility trace

    p_ij,t = (1 − α) p_ij,t−1 + α φ'(z_i,t) u_j,t,

and the loss at step ``t`` moves it by ``(B e_t)_i p_ij,t``, where ``e_t =
∂ℓ_t/∂y_t`` is the output error and ``B`` a fixed random feedback matrix
(``feedback='random'``) or the readout's transpose (``'symmetric'``); the readout
gets its own gradient. This is RTRL (``rtrl.py``) with the state Jacobian
``J_t = (1 − α) I + α diag(φ'(z_t)) W_rec`` replaced by ``(1 − α) I`` (the
recurrent term dropped) and ``∂ℓ_t/∂h_t`` by the feedback ``B e_t``: RTRL's
influence ``∂h_t/∂W`` then keeps only ``∂h_i/∂W_ij = p_ij``, one float per weight.
So it is exact when ``W_rec = 0`` with symmetric feedback, and biased otherwise.

The machinery is written for any cell whose units each carry their own memory
(a per-unit ``rule``, the ``Rule`` below): ``EProp`` (``eprop.py``) is this
class with the LSTM's rule added and symmetric feedback by default; on the leaky
cell the two are the same algorithm (Marschall, Cho & Savin 2020). Weights
below the cell (an embedding or input projection) carry the same approximate
influence, dense: ``rows × units × their weights`` floats. The eligibility is a
variable on streams (carried across calls, checkpointed, zeroed when an epoch
starts), as RTRL's influence, whose window loop this class reuses.
docs/methods/rflo.md.
"""

import collections
import functools
from typing import Optional

import tensorflow as tf

from tfcredit import masking
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.methods import registry
from tfcredit.methods import rtrl
from tfcredit.methods import vectorize
from tfcredit.methods.replicas import densify
from tfcredit.models.leaky_rnn import LeakyRNNCell
from tfcredit.tasks import base as task_base

_ZERO = tf.UnconnectedGradients.ZERO
FEEDBACKS = ('random', 'symmetric')

# One step of a cell, per row (``[rows, units]`` unless said):
#   state: the cell's new state tuple; h: its output (what the readout reads);
#   carry: ``∂m_t/∂m_{t−1}`` per unit, ``m`` the unit's own memory (the
#     diagonal of the state Jacobian that the rule keeps);
#   readout: ``∂h_t/∂m_t`` per unit;
#   memory: ``[rows, G, units]``, ``∂m_t/∂a_g`` for each gate ``g`` of the
#     weights with memory (their pre-activation ``a_g = u W_g``);
#   direct: ``[rows, G', units]``, ``∂h_t/∂a_g`` for the gates without memory
#     (none: None).
CellStep = collections.namedtuple('CellStep',
                                  'state h carry readout memory direct')


def elementwise(function, x):
  """``(function(x), function'(x))`` of an elementwise function."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = function(x)
  return y, tape.gradient(y, x)


class Rule:
  """How one kind of cell steps and what its units remember.

  The cell's weights are ``kernel`` ``[inputs, C]``, ``recurrent_kernel``
  ``[units, C]`` and ``bias`` ``[C]`` (or None), ``C`` columns of ``units``
  each (one per gate), gates with memory first: ``u = [x; h_{t−1}; 1]`` times
  them is every gate's pre-activation.
  """

  memory_gates = 1
  direct_gates = 0

  def __init__(self, cell):
    self.cell = cell
    self.units = int(cell.units)

  def weights(self):
    return [self.cell.kernel, self.cell.recurrent_kernel,
            getattr(self.cell, 'bias', None)]

  def refusal(self) -> Optional[str]:
    """Why this cell cannot be trained (a phrase), or None."""
    return None

  def step(self, x, state) -> CellStep:
    raise NotImplementedError

  def preactivation(self, x, h):
    kernel, recurrent, bias = [None if w is None else tf.cast(w, tf.float32)
                               for w in self.weights()]
    a = tf.matmul(x, kernel) + tf.matmul(h, recurrent)
    return a if bias is None else a + bias


class LeakyRule(Rule):
  """``LeakyRNNCell``: ``m = h``, carry ``1 − α``, readout 1, one gate with
  ``∂h/∂z = α φ'(z)``. RFLO's eligibility is exactly ``p`` of the module
  docstring."""

  def step(self, x, state):
    h = state[0]
    alpha = self.cell.alpha
    phi, slope = elementwise(self.cell.activation, self.preactivation(x, h))
    new_h = (1.0 - alpha) * h + alpha * phi
    ones = tf.ones_like(h)
    return CellStep(state=(new_h,), h=new_h, carry=(1.0 - alpha) * ones,
                    readout=ones, memory=(alpha * slope)[:, None, :],
                    direct=None)


@registry.register
class RFLO(rtrl.RTRL):
  """RFLO, one update every ``window`` steps (``RTRL``'s loop and contract).

  Metrics beyond the base ones: ``influence_norm`` (the eligibility's norm over
  the rows after the call).
  """

  KEY = 'rflo'
  EXAMPLE_ARGUMENTS = {'window': 5, 'windows_per_call': 2}
  EXAMPLE_MODEL = {'cell': functools.partial(LeakyRNNCell, alpha=0.5)}
  # The cells trained, each with its rule (by exact class: a subclass may step
  # otherwise).
  RULES = {LeakyRNNCell: LeakyRule}
  CELLS = tuple(RULES)

  def __init__(self, *, model, task, optimizer, window: int = 10,
               windows_per_call: int = 10, batch_size: Optional[int] = None,
               feedback: str = 'random', feedback_seed: int = 0,
               feedback_stddev: Optional[float] = None,
               max_influence_floats: int = 2**26,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Args:
      feedback: how the output error reaches the units: ``'random'``, through a
        fixed random matrix ``B`` (``[units, outputs]``, a variable saved in
        checkpoints; Murray 2019), or ``'symmetric'``, through the readout's
        transpose (the exact ``∂ℓ_t/∂h_t``).
      feedback_seed: seeds ``B``.
      feedback_stddev: ``B``'s entries are normal with this deviation; None:
        ``1/√outputs``.
      window, windows_per_call, batch_size: as in ``RTRL`` (the eligibility is
        carried across windows and, on streams, calls).
      max_influence_floats: refuse a model whose eligibility (floats over the
        rows) is larger.
      model, task, optimizer, clip_norm, use_tf_function, name: as in ``Method``.

    Raises:
      ConfigurationError: an argument is invalid, or the model not one layer
        of a cell in ``RULES`` (with no dropout and no tied embeddings).
    """
    owner = type(self).__name__
    self.feedback = validation.one_of(
        f'{owner}.feedback', feedback, FEEDBACKS,
        hint=": 'random' (a fixed random matrix) or 'symmetric' (the readout's "
        'transpose)')
    self.feedback_seed = validation.integer(f'{owner}.feedback_seed',
                                            feedback_seed, 0)
    self.feedback_stddev = None if feedback_stddev is None else (
        validation.finite_number(f'{owner}.feedback_stddev', feedback_stddev,
                                 0.0))
    super().__init__(model=model, task=task, optimizer=optimizer, window=window,
                     windows_per_call=windows_per_call, batch_size=batch_size,
                     max_influence_floats=max_influence_floats,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name)

  # ------------------------------------------------------ model and feedback
  def _prepare_influence(self):
    """Finds the cell's rule (or refuses the model), the weights below and
    above it, and makes ``B``."""
    self.rule = self._rule(self.model)
    variables = self.model_variables
    index = {id(v): i for i, v in enumerate(variables)}
    self.cell_slots = [None if w is None else index[id(w)]
                       for w in self.rule.weights()]
    encoder = getattr(self.model, 'encoder', None)
    self.encoder_slots = ([index[id(v)] for v in encoder.trainable_variables]
                          if encoder is not None else [])
    below = set(self.cell_slots + self.encoder_slots) - {None}
    self.readout_slots = [i for i in range(len(variables)) if i not in below]
    self.encoder_size = sum(int(variables[i].shape.num_elements())
                            for i in self.encoder_slots)
    self.inputs = int(self.rule.cell.kernel.shape[0])
    self.has_bias = self.rule.weights()[2] is not None
    # u = [x; h; 1]'s size: the rows of W = [W_in; W_rec; b].
    self.extended = self.inputs + self.rule.units + self.has_bias
    self.feedback_matrix = None
    if self.feedback == 'random':
      outputs = int(self.model.output_dim)
      stddev = self.feedback_stddev or outputs ** -0.5
      self.feedback_matrix = tf.Variable(
          stddev * tf.random.stateless_normal(
              [self.rule.units, outputs], seed=[self.feedback_seed, 0]),
          trainable=False, name='feedback',
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  def _rule(self, model):
    owner = type(self).__name__
    names = ' or '.join(cls.__name__ for cls in self.RULES)
    core = getattr(model, 'core', None)
    layers = len(core) if core else 0
    cell = core[0].cell if layers == 1 else None
    rule = self.RULES.get(type(cell))
    if rule is None:
      label = getattr(model, 'cell_type', type(model).__name__)
      raise ConfigurationError(
          f'{owner} trains a RecurrentModel of one {names} layer, got '
          f'{layers} layer(s) of {label}: set RecurrentModel.cell (e.g. '
          f'@LeakyRNNCell) and num_layers = 1, or train this model with RTRL '
          'or BPTT')
    rule = rule(cell)
    problem = rule.refusal()
    if getattr(model, 'dropout_rate', 0.0):
      problem = f'RecurrentModel.dropout = {model.dropout_rate}'
    if getattr(model, 'tie_embeddings', False):
      problem = 'RecurrentModel.tie_embeddings = True'
    if problem:
      raise ConfigurationError(
          f'{owner} cannot train this model ({problem}): its eligibility '
          'follows one deterministic cell between an untied input and readout')
    return rule

  # ------------------------------------------------------------ eligibility
  @property
  def memory_columns(self) -> int:
    return self.rule.memory_gates * self.rule.units

  def _influence_size(self, rows):
    cell = self.extended * self.memory_columns
    floats = rows * (cell + self.rule.units * self.encoder_size)
    formula = (f'rows × (inputs + units + 1) × memory columns = {rows} × '
               f'{self.extended} × {self.memory_columns}')
    if self.encoder_size:
      formula = (f'rows × ((inputs + units + 1) × memory columns + units × '
                 f'encoder weights) = {rows} × ({self.extended} × '
                 f'{self.memory_columns} + {self.rule.units} × '
                 f'{self.encoder_size})')
    return floats, formula

  def _zero_influence(self, rows):
    """``(p [rows, inputs + units + 1, memory columns],)``, and with an
    encoder its ``[rows, units, encoder weights]``."""
    cell = tf.zeros(tf.stack([rows, self.extended, self.memory_columns]))
    if not self.encoder_size:
      return (cell,)
    return cell, tf.zeros(tf.stack([rows, self.rule.units, self.encoder_size]))

  def _signal(self, tape, objective, h, outputs):
    """``(readout gradients, L_t [rows, units])``: the learning signal is
    ``∂ℓ_t/∂h_t`` (symmetric) or ``e_t Bᵀ`` (random)."""
    variables = self.model_variables
    readout = [variables[i] for i in self.readout_slots]
    *gradients, to_h, to_outputs = self.gradient(
        tape, objective, readout + [h, outputs], unconnected_gradients=_ZERO)
    if self.feedback_matrix is None:
      return densify(gradients, readout), to_h
    error = tf.reshape(to_outputs, [tf.shape(h)[0], -1])
    return densify(gradients, readout), tf.matmul(
        error, tf.cast(self.feedback_matrix, tf.float32), transpose_b=True)

  def _step(self, inputs, targets, flat, influence, noise, normalizer, has_loss):
    """One step of the rule: ``(s_t, eligibility, gradients per variable,
    zeros, loss sum)`` (RTRL's ``_step`` contract; the gradients are all in
    the first part)."""
    del noise
    model, rule = self.model, self.rule
    variables = self.model_variables
    with tf.GradientTape(persistent=True) as encoder_tape:  # Looped eagerly.
      x = tf.cast(model._features(inputs)[:, 0], tf.float32)  # pylint: disable=protected-access
    state = self._nest(flat)[0]
    step = rule.step(x, state)
    rows = tf.shape(x)[0]
    with tf.GradientTape() as tape:
      tape.watch(step.h)
      per_step = self.task.readout == task_base.PER_STEP
      outputs = model._readout(step.h[:, None] if per_step else step.h)  # pylint: disable=protected-access
      objective, loss_sum = self.objective(outputs, targets, normalizer,
                                           weights=has_loss)
    readout_gradients, signal = self._signal(tape, objective, step.h, outputs)

    # The weights' eligibility: p_t = carry ⊙ p_{t−1} + memory ⊗ u.
    u = tf.concat([x, state[0]] + [tf.ones([rows, 1])] * self.has_bias, axis=1)
    memory = tf.reshape(step.memory, [rows, -1])  # Column g·units + j.
    gates = rule.memory_gates
    eligibility = (tf.tile(step.carry, [1, gates])[:, None, :] * influence[0]
                   + u[:, :, None] * memory[:, None, :])
    new_state = step.state
    encoder = jacobian = None
    if self.encoder_size:
      jacobian = self._encoder_jacobian(encoder_tape, x)
      encoder = self._encoder_eligibility(jacobian, step, influence[1])
    if model.masked:  # A padded step holds the state and the eligibility.
      real = masking.step_mask(inputs)[:, 0]
      new_state = masking.hold(real, new_state, state)
      eligibility = masking.hold(real, eligibility, influence[0])
      if encoder is not None:
        encoder = masking.hold(real, encoder, influence[1])

    # Gradients: Σ_rows L_j (readout_j p_{·,g·units+j} + direct ⊗ u).
    to_memory = tf.tile(signal * step.readout, [1, gates])
    columns = [tf.einsum('bkc,bc->kc', eligibility, to_memory)]
    if step.direct is not None:
      direct = tf.reshape(step.direct, [rows, -1]) * tf.tile(
          signal, [1, rule.direct_gates])
      columns.append(tf.einsum('bk,bc->kc', u, direct))
    weights = tf.concat(columns, axis=1)
    pieces = tf.split(weights, [self.inputs, rule.units, int(self.has_bias)],
                      axis=0)
    gradients = [None] * len(variables)
    for slot, piece in zip(self.cell_slots, pieces):
      if slot is not None:
        gradients[slot] = tf.reshape(piece, variables[slot].shape)
    for slot, gradient in zip(self.readout_slots, readout_gradients):
      gradients[slot] = gradient
    if self.encoder_size:
      self._encoder_gradients(gradients, step, signal, encoder, jacobian)
    influence = ((eligibility,) if encoder is None
                 else (eligibility, encoder))
    return (self._flat((new_state,)), influence, gradients,
            tf.zeros([self.num_parameters]), loss_sum)

  # --------------------------------------------------- weights below the cell
  def _encoder_jacobian(self, tape, x):
    """``[rows, inputs, encoder weights]``: each row's ``∂x_t/∂θ_encoder``."""
    variables = [self.model_variables[i] for i in self.encoder_slots]
    return rtrl.flat_jacobian(vectorize.jacobian(tape, x, variables),
                              variables,
                              tf.shape(x))

  def _through_gates(self, factors, gates):
    """``[rows, units, inputs]``: ``Σ_g factors[b, g, j] kernel[k, g·units + j]``
    over ``gates`` (a slice of the kernel's gate blocks)."""
    kernel = tf.cast(self.rule.cell.kernel, tf.float32)
    units = self.rule.units
    blocks = tf.reshape(kernel[:, gates.start * units:gates.stop * units],
                        [self.inputs, gates.stop - gates.start, units])
    return tf.einsum('bgj,kgj->bjk', factors, blocks)

  def _encoder_eligibility(self, jacobian, step, eligibility):
    """``M_t = carry ⊙ M_{t−1} + (∂m_t/∂x_t)(∂x_t/∂θ)``, ``[rows, units,
    encoder weights]``, from ``jacobian``, ``∂x_t/∂θ``."""
    to_x = self._through_gates(step.memory, slice(0, self.rule.memory_gates))
    return (step.carry[:, :, None] * eligibility
            + tf.einsum('bjk,bkp->bjp', to_x, jacobian))

  def _encoder_gradients(self, gradients, step, signal, eligibility, jacobian):
    """Fills the encoder's gradients: ``Σ L_j (readout_j M_j + (∂h_j/∂x)
    (∂x/∂θ))`` over the rows, split into its variables."""
    flat = tf.einsum('bj,bjp->p', signal * step.readout, eligibility)
    if step.direct is not None:
      gates = slice(self.rule.memory_gates,
                    self.rule.memory_gates + self.rule.direct_gates)
      to_x = tf.einsum('bj,bjk->bk', signal,
                       self._through_gates(step.direct, gates))
      flat += tf.einsum('bk,bkp->p', to_x, jacobian)
    variables = [self.model_variables[i] for i in self.encoder_slots]
    pieces = tf.split(flat, [int(v.shape.num_elements()) for v in variables])
    for slot, piece, variable in zip(self.encoder_slots, pieces, variables):
      gradients[slot] = tf.reshape(piece, variable.shape)

"""SnAp-n: the sparse n-step approximation of RTRL (Menick et al. 2021), n = 1, 2.

RTRL (``rtrl.py``) with the influence ``M_t = ∂s_t/∂θ`` kept only where a weight
reaches a state unit within ``n`` steps: ``M_t = P_n ⊙ (J_t M_{t−1} +
∂s_t/∂θ|direct)``. ``P₁`` is the structural sparsity of ``∂s_t/∂θ|direct``;
``P₂ = pattern(J P₁) ∪ P₁``, ``J`` the structural sparsity of ``J_t``
(``snap_layout.reachable``). SnAp-1 is exact when the recurrence is diagonal
(``J_t`` keeps ``P₁``), biased otherwise; SnAp-2 keeps the paths through one
other unit, and on a dense recurrence its pattern is full: RTRL. Both patterns
are found once, at construction, from one step of random states and every input
token (or random real inputs) at randomly perturbed weights: values that happen
to be zero at a step (a one-hot input, a zero bias) do not hide an entry.

Storage (``storage``). ``'compact'``, the paper's: only the pattern's entries
(``snap_layout.groups_of``). Variables are grouped by the most units one of
their weights reaches, ``k``: at n = 1 an LSTM's cell weights 2 (``c_u`` and
``h_u``), a GRU's 1, an embedding's ``|s|`` (its input reaches every unit in one
step); at n = 2 a sparse GRU's 1 plus the most units one unit feeds. A readout
reaches none and is not stored. A group's influence is ``[rows, weights, k]``,
with the table ``R [weights, k]`` of the units each weight reaches (padded with
its first unit under a 0 mask): ``rows × weights × k`` floats in all. The update
gathers ``J_t`` at ``R``: ``carried[b,p,a] = Σ_c J[b, R[p,a], R[p,c]]
M[b,p,c]``, per distinct row of ``R`` a ``[k, k]`` block when ``k > 2``. The
immediate term takes one vector–Jacobian product per colour of a greedy
colouring of the units (no two units of one colour written directly by one
weight: 2 colours for an LSTM's cell, 1 for a GRU's), not one per unit.
``'dense'`` keeps RTRL's ``[rows, |s|, |θ|]`` influence masked by ``P_n`` (the
variable ``pattern``): the same numbers at RTRL's cost, as a reference.
docs/methods/snap.md.
"""

from typing import Optional

import numpy as np
import tensorflow as tf

from tfcredit import validation
from tfcredit.methods import registry
from tfcredit.methods import rtrl
from tfcredit.methods import snap_layout

# Rows of random states and real inputs used to find the pattern, and the
# standard deviation of the noise added to every weight meanwhile.
PROBE_ROWS = 64
PROBE_NOISE = 0.1
STORAGES = ('compact', 'dense')


@registry.register
class SnAp1(rtrl.RTRL):
  """SnAp-1 (``RTRL``'s loop, contract and arguments; the module docstring).

  Attributes (after construction): ``fan_out`` (``[|θ|]``, the units each
  weight reaches within ``ORDER`` steps), ``transitions`` (``[|s|, |s|]`` bool,
  the pattern of ``J_t``: ``[i, j]`` where new unit ``i`` depends on old unit
  ``j``), ``groups`` (compact) or ``pattern`` (dense, ``P_n``).
  """

  KEY = 'snap1'  # (Not 'sn_ap1'.)
  ORDER = 1  # n: the steps within which a weight's reach is kept.
  EXAMPLE_ARGUMENTS = {'window': 5, 'windows_per_call': 2}

  def __init__(self, *, model, task, optimizer, window: int = 10,
               windows_per_call: int = 10, batch_size: Optional[int] = None,
               storage: str = 'compact', max_influence_floats: int = 2**26,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Args:
      storage: ``'compact'`` stores the pattern's entries only (``rows ×
        weights × k`` floats); ``'dense'`` RTRL's whole influence masked by the
        pattern (``rows × state × weights``), the same numbers at RTRL's cost.
      window, windows_per_call, batch_size, max_influence_floats: as in
        ``RTRL``.
      model, task, optimizer, clip_norm, use_tf_function, name: as in ``Method``.
    """
    self.storage = validation.one_of(
        f'{type(self).__name__}.storage', storage, STORAGES,
        hint=": 'compact' (the default) stores the pattern's entries only, "
        "'dense' the whole influence masked by the pattern")
    super().__init__(model=model, task=task, optimizer=optimizer, window=window,
                     windows_per_call=windows_per_call, batch_size=batch_size,
                     max_influence_floats=max_influence_floats,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name)

  def _prepare_influence(self):
    """Finds the pattern; sets ``fan_out``, ``transitions`` and the groups
    (compact) or the variable ``pattern`` (dense)."""
    strategy = self.replicas.strategy
    variables = self.model_variables
    saved = [v.numpy() for v in variables]
    try:  # At perturbed weights: a zero-initialized bias hides no entry.
      for index, (variable, value) in enumerate(zip(variables, saved)):
        variable.assign(value + PROBE_NOISE * np.random.default_rng(
            index).standard_normal(value.shape).astype(value.dtype))
      found = strategy.run(tf.function(self._find_pattern))
      immediate, transitions = (  # One replica's.
          strategy.experimental_local_results(part)[0].numpy()
          for part in found)
    finally:
      for variable, value in zip(variables, saved):
        variable.assign(value)
    self.transitions = transitions
    pattern = snap_layout.reachable(immediate, transitions, self.ORDER)
    self.fan_out = pattern.sum(0)
    self.groups = None
    if self.storage == 'dense':
      self.pattern = tf.Variable(pattern.astype(np.float32), trainable=False,
                                 name='pattern')
      return
    sizes = [int(v.shape.num_elements()) for v in self.model_variables]
    self.groups = snap_layout.groups_of(pattern, sizes, immediate)
    stored = np.concatenate([g.weights for g in self.groups] + [
        np.nonzero(self.fan_out == 0)[0]])
    self.unstored = int(np.sum(self.fan_out == 0))
    self.positions = np.argsort(stored).astype(np.int32)  # Stored → flat θ.

  def _find_pattern(self):
    """``([|s|, |θ|], [|s|, |s|])`` bool: which weights write which state units
    directly, and which old units each new one depends on.

    The Jacobian of the new state summed over the probe's rows, ``[|s|]``, in
    the weights (the state before the step held fixed) and in that state:
    ``|s|`` backward passes, never a per-row ``[rows, |s|, |θ|]``. (Rows are
    independent, so the sum's Jacobian in row ``b``'s state is row ``b``'s
    ``J``.) Random states and every token make an entry zero only where it is
    zero for every input and state, and the weights perturbed at random (by
    the caller) where it is zero for every weight: the structural zeros, not
    a step's incidental ones (a one-hot input, a saturated unit, a GRU's reset
    gate multiplying a zero bias where the mask cuts every input of a unit).
    """
    spec = self.task.model_spec()
    if spec.get('input_vocab_size'):
      vocabulary = spec['input_vocab_size']
      inputs = tf.tile(tf.range(vocabulary)[:, None],
                       [max(1, PROBE_ROWS // vocabulary), 1])
    else:
      inputs = tf.random.stateless_normal(
          [PROBE_ROWS, 1, spec['input_dim']], seed=[1, 2])
    rows = tf.shape(inputs)[0]
    flat = tf.random.stateless_normal(tf.stack([rows, self.width]), seed=[3, 4])
    variables = self.model_variables
    with tf.GradientTape() as tape:
      tape.watch(flat)
      summed = tf.reduce_sum(self._probe_step(inputs, flat), axis=0)
    *jacobians, transitions = tape.jacobian(summed, variables + [flat])
    immediate = rtrl.flat_jacobian(jacobians, variables, [self.width])
    if transitions is None:  # No unit depends on the state before the step.
      transitions = tf.zeros([self.width, rows, self.width])
    return (tf.not_equal(immediate, 0.0),
            tf.reduce_any(tf.not_equal(transitions, 0.0), axis=1))

  # The compact influence: a tuple of [rows, n, k], one per group.
  def _influence_size(self, rows):
    if self.groups is None:
      return super()._influence_size(rows)
    terms = [f'{g.size} × {g.k}' for g in self.groups]
    full = all(g.k == self.width for g in self.groups)
    return (rows * sum(g.size * g.k for g in self.groups),
            f'rows × weights × k = {rows} × ' + (
                terms[0] if len(terms) == 1 else f'({" + ".join(terms)})') + (
                    ', k = state: the pattern is full, RTRL\'s influence less '
                    'the weights that reach no unit' if full else ''))

  def _zero_influence(self, rows):
    if self.groups is None:
      return super()._zero_influence(rows)
    return tuple(tf.zeros(tf.stack([rows, g.size, g.k])) for g in self.groups)

  def _through_state(self, state_gradient, influence):
    """``Σ_b Σ_a g[b, R[p,a]] M[b,p,a]`` per stored weight, 0 for the others."""
    if self.groups is None:
      return super()._through_state(state_gradient, influence)
    parts = []
    for group, m in zip(self.groups, influence):
      if group.shared:
        parts.append(tf.einsum('bk,bpk->p', tf.gather(
            state_gradient, group.rows[0], axis=1), m))
      else:
        parts.append(tf.einsum('bpk,bpk->p', tf.gather(
            state_gradient, group.rows, axis=1), m))
    parts.append(tf.zeros([self.unstored]))
    return tf.gather(tf.concat(parts, axis=0), self.positions)

  def _probes(self, new_flat, noise):
    """Compact: per group, the sums of the new state over each colour,
    ``[rows, C]``, in the group's variables; dense: the new state."""
    if self.groups is None:
      return super()._probes(new_flat, noise)
    return [tf.matmul(new_flat, g.colours) for g in self.groups]

  def _probe_variables(self):
    if self.groups is None:
      return super()._probe_variables()
    variables = self.model_variables
    return [[variables[i] for i in g.variables] for g in self.groups]

  def _advance(self, jacobian, immediate, influence, noise):
    del noise
    if self.groups is None:
      return (self.pattern * tf.einsum('bij,bjp->bip', jacobian, influence)
              + immediate[0])
    advanced = []
    for group, colours, m in zip(self.groups, immediate, influence):
      # One vector–Jacobian product per colour: for each weight, its entry for
      # the one unit of that colour it writes, placed in that unit's slot (0
      # where it reaches the unit only through another: ``direct``).
      colours = tf.gather(
          tf.reshape(colours, [-1, np.prod(colours.shape[1:])]),
          group.slots, axis=1)
      if group.direct is not None:
        colours *= group.direct
      m = self._carried(jacobian, group, m) + colours
      advanced.append(m if group.mask is None else m * group.mask)
    return tuple(advanced)

  def _carried(self, jacobian, group, m):
    """``P ⊙ (J M)`` in the group's storage: ``Σ_c J[b, R[p,a], R[p,c]]
    M[b,p,c]``, gathered from ``J`` (``[rows, |s|, |s|]``): per distinct row
    of ``R``, ``J``'s ``[k, k]`` block times its weights' ``[m, k]``; else
    (``k ≤ 2``) entry by entry."""
    width = self.width
    pairs = tf.reshape(jacobian, [-1, width * width])
    if group.blocks is not None:
      blocks = tf.gather(pairs, group.blocks, axis=1)  # [rows, D, k, k]
      if group.order is None:  # One distinct row.
        return tf.einsum('bac,bpc->bpa', blocks[:, 0], m)
      carried = tf.einsum('bdac,bdpc->bdpa', blocks,
                          tf.gather(m, group.order, axis=1))
      return tf.gather(tf.reshape(carried, [-1, group.order.size, group.k]),
                       group.back, axis=1)
    return tf.add_n([
        tf.gather(pairs, group.rows * width + group.rows[:, c:c + 1], axis=1)
        * m[:, :, c:c + 1] for c in range(group.k)])


@registry.register
class SnAp2(SnAp1):
  """SnAp-2: the influence kept where a weight reaches a unit within two steps,
  ``P₂ = pattern(J P₁) ∪ P₁`` (SnAp-1's loop, storage and arguments; the module
  docstring). For sparse recurrences (``tfcredit.models.SparseGRUCell``): on a
  dense one ``P₂`` is full and SnAp-2 is RTRL at RTRL's cost."""

  KEY = 'snap2'
  ORDER = 2

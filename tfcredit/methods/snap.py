"""SnAp-1: the sparse n-step approximation of RTRL at n = 1 (Menick et al. 2021).

RTRL (``rtrl.py``) with the influence ``M_t = ∂s_t/∂θ`` kept only where a weight
writes a state unit directly: ``M_t = P ⊙ (J_t M_{t−1}) + ∂s_t/∂θ|direct``, where
the pattern ``P`` is the structural sparsity of ``∂s_t/∂θ|direct``. Exact when the
recurrence is diagonal (``J_t`` keeps ``P``), biased otherwise. The pattern is
found once, at construction, from one step of random states and every input token
(or random real inputs): values that happen to be zero at a step (a one-hot input)
do not hide an entry.

Storage (``storage``). ``'compact'``, the paper's: only the pattern's entries.
Variables are grouped by the most units one of their weights writes, ``k``: an
LSTM's cell weights 2 (``c_u`` and ``h_u``), a GRU's 1, an embedding's ``|s|``
(its input reaches every unit in one step); a readout writes none and is not
stored. A group's influence is ``[rows, weights, k]``, with the table ``R
[weights, k]`` of the units each weight writes (padded with its first unit under
a 0 mask): ``rows × weights × k`` floats in all. The update gathers ``J_t``
at ``R``: ``carried[b,p,a] = Σ_c J[b, R[p,a], R[p,c]] M[b,p,c]``. The immediate
term takes one vector–Jacobian product per colour of a greedy colouring of the
units (no two units of one colour written by one weight: 2 colours for an
LSTM's cell, 1 for a GRU's), not one per unit. ``'dense'`` keeps RTRL's
``[rows, |s|, |θ|]`` influence masked by ``P`` (the variable ``pattern``): the
same numbers at RTRL's cost, as a reference. docs/methods/snap.md.
"""

from typing import List, Optional

import numpy as np
import tensorflow as tf

from tfcredit import validation
from tfcredit.methods import registry
from tfcredit.methods import rtrl

# Rows of random states and real inputs used to find the pattern.
PROBE_ROWS = 64
STORAGES = ('compact', 'dense')


class Group:
  """Weights stored together: their influence is ``[rows, n, k]``.

  Attributes:
    weights: ``[n]`` their indices in the flat ``θ``.
    rows: ``[n, k]`` the units each writes (padded with its first one).
    mask: ``[n, k]`` float, 0 on padding; None when there is none.
    shared: every weight writes the same units (``rows[0]``).
    variables: indices of the model variables holding them.
    colours: ``[|s|, C]`` 0/1, the units of each colour (units written by none
      of the group's weights in none).
    slots: ``[n, k]`` where entry ``(p, a)`` of the immediate term is in the
      flattened ``[C, |θ of variables|]`` Jacobian of the colour sums.
  """

  def __init__(self, pattern, weights, k, owner, offsets, variables):
    self.weights, self.k, self.variables = weights, k, variables
    counts = pattern[:, weights].sum(0)
    weight, unit = np.nonzero(pattern[:, weights].T)  # Row-major: sorted units.
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    self.rows = np.repeat(unit[starts][:, None], k, axis=1).astype(np.int32)
    self.rows[weight, np.arange(len(weight)) - starts[weight]] = unit
    padded = np.arange(k)[None, :] >= counts[:, None]
    self.mask = (~padded).astype(np.float32) if padded.any() else None
    self.shared = self.mask is None and bool(np.all(self.rows == self.rows[0]))
    # Greedy colouring of the units: two units written by one weight conflict.
    width = pattern.shape[0]
    distinct = np.unique(self.rows, axis=0)
    conflict = np.zeros([width, width], bool)
    for a in range(k):
      conflict[distinct[:, a][:, None], distinct] = True
    colour = np.full(width, -1)
    for u in np.unique(distinct):
      taken = set(colour[conflict[u] & (colour >= 0)].tolist())
      colour[u] = min(set(range(len(taken) + 1)) - taken)
    self.colours = (colour[:, None] == np.arange(colour.max() + 1)).astype(
        np.float32)
    # Each weight's index among the group's variables, flattened together.
    sizes = np.diff(offsets)[variables]
    start = np.zeros(len(offsets) - 1, np.int64)
    start[variables] = np.cumsum(sizes) - sizes
    local = weights - offsets[owner[weights]] + start[owner[weights]]
    self.slots = (colour[self.rows] * sizes.sum() + local[:, None]).astype(
        np.int32)

  @property
  def size(self):
    return len(self.weights)


def groups_of(pattern: np.ndarray, variable_sizes: List[int]) -> List[Group]:
  """The compact layout of ``pattern`` (``[|s|, |θ|]`` bool, ``θ`` the variables
  of ``variable_sizes`` flattened and concatenated): one group per distinct
  largest number of units a variable's weights write, in increasing order (none
  for weights that write no unit)."""
  offsets = np.concatenate([[0], np.cumsum(variable_sizes)]).astype(np.int64)
  owner = np.repeat(np.arange(len(variable_sizes)), variable_sizes)
  fan_out = pattern.sum(0)
  widest = [int(fan_out[offsets[i]:offsets[i + 1]].max(initial=0))
            for i in range(len(variable_sizes))]
  groups = []
  for k in sorted(set(widest) - {0}):
    variables = [i for i, w in enumerate(widest) if w == k]
    weights = np.nonzero(np.isin(owner, variables) & (fan_out > 0))[0]
    groups.append(Group(pattern, weights, k, owner, offsets, variables))
  return groups


@registry.register
class SnAp1(rtrl.RTRL):
  """SnAp-1 (``RTRL``'s loop, contract and arguments; the module docstring)."""

  KEY = 'snap1'  # (Not 'sn_ap1'.)
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
        'SnAp1.storage', storage, STORAGES,
        hint=": 'compact' (the default) stores the pattern's entries only, "
        "'dense' the whole influence masked by the pattern")
    super().__init__(model=model, task=task, optimizer=optimizer, window=window,
                     windows_per_call=windows_per_call, batch_size=batch_size,
                     max_influence_floats=max_influence_floats,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name)

  def _prepare_influence(self):
    """Finds the pattern; sets ``fan_out`` (``[|θ|]``, the units each weight
    writes) and the groups (compact) or the variable ``pattern`` (dense)."""
    strategy = self.replicas.strategy
    pattern = strategy.experimental_local_results(  # One replica's.
        strategy.run(tf.function(self._find_pattern)))[0].numpy()
    self.fan_out = pattern.sum(0)
    self.groups = None
    if self.storage == 'dense':
      self.pattern = tf.Variable(pattern.astype(np.float32), trainable=False,
                                 name='pattern')
      return
    sizes = [int(v.shape.num_elements()) for v in self.model_variables]
    self.groups = groups_of(pattern, sizes)
    stored = np.concatenate([g.weights for g in self.groups] + [
        np.nonzero(self.fan_out == 0)[0]])
    self.unstored = int(np.sum(self.fan_out == 0))
    self.positions = np.argsort(stored).astype(np.int32)  # Stored → flat θ.

  def _find_pattern(self) -> tf.Tensor:
    """``[|s|, |θ|]`` bool: which weights write which state units directly.

    The Jacobian of the new state summed over the probe's rows, ``[|s|]``, in
    the weights (the state before the step held fixed): ``|s|`` backward passes,
    never a per-row ``[rows, |s|, |θ|]``. Random states and every token make an
    entry zero only where it is zero for every input and state: the structural
    zeros, not a step's incidental ones (a one-hot input, a saturated unit).
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
      _, state = self.model.unroll(inputs, self._nest(flat), training=False,
                                   readout=False)
      summed = tf.reduce_sum(self._flat(state), axis=0)
    return tf.not_equal(rtrl.flat_jacobian(tape.jacobian(summed, variables),
                                           variables, [self.width]), 0.0)

  # The compact influence: a tuple of [rows, n, k], one per group.
  def _influence_size(self, rows):
    if self.groups is None:
      return super()._influence_size(rows)
    terms = [f'{g.size} × {g.k}' for g in self.groups]
    return (rows * sum(g.size * g.k for g in self.groups),
            f'rows × weights × k = {rows} × ' + (
                terms[0] if len(terms) == 1 else f'({" + ".join(terms)})'))

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
      # the one unit of that colour it writes, placed in that unit's slot.
      colours = tf.gather(
          tf.reshape(colours, [-1, np.prod(colours.shape[1:])]),
          group.slots, axis=1)
      m = self._carried(jacobian, group, m) + colours
      advanced.append(m if group.mask is None else m * group.mask)
    return tuple(advanced)

  def _carried(self, jacobian, group, m):
    """``P ⊙ (J M)`` in the group's storage: ``Σ_c J[b, R[p,a], R[p,c]]
    M[b,p,c]``, gathered from ``J`` (``[rows, |s|, |s|]``)."""
    if group.shared:
      units = group.rows[0]
      block = tf.gather(tf.gather(jacobian, units, axis=1), units, axis=2)
      return tf.einsum('bij,bpj->bpi', block, m)
    width = self.width
    pairs = tf.reshape(jacobian, [-1, width * width])
    return tf.add_n([
        tf.gather(pairs, group.rows * width + group.rows[:, c:c + 1], axis=1)
        * m[:, :, c:c + 1] for c in range(group.k)])

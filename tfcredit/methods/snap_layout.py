"""SnAp's pattern and its compact layout (numpy, computed once at construction).

``reachable`` extends the immediate pattern ``P₁`` (which weights write which
state units directly) to ``n`` steps: ``P_n = pattern(J P_{n−1}) ∪ P₁``, ``J``
the structural sparsity of the state Jacobian. ``groups_of`` lays a pattern out
compactly: the weights grouped by ``k``, the most units one of a variable's
weights reaches, each group's influence ``[rows, weights, k]`` with the table of
those units. ``tfcredit.methods.snap`` carries it; docs/methods/snap.md.
"""

from typing import List, Optional

import numpy as np


def reachable(immediate: np.ndarray, transitions: np.ndarray,
              order: int) -> np.ndarray:
  """``[|s|, |θ|]`` bool: the units each weight reaches within ``order`` steps.

  Args:
    immediate: ``P₁``, ``[|s|, |θ|]`` bool, the units each weight writes.
    transitions: ``[|s|, |s|]`` bool, ``[i, j]`` where new unit ``i`` depends
      on old unit ``j`` (the pattern of ``J = ∂s_t/∂s_{t−1}``).
    order: ``n ≥ 1``.
  """
  pattern = immediate
  step = transitions.astype(np.float32)
  for _ in range(order - 1):
    pattern = immediate | (step @ pattern.astype(np.float32) > 0)
  return pattern


class Group:
  """Weights stored together: their influence is ``[rows, n, k]``.

  Attributes:
    weights: ``[n]`` their indices in the flat ``θ``.
    rows: ``[n, k]`` the units each reaches (padded with its first one).
    mask: ``[n, k]`` float, 0 on padding; None when there is none.
    direct: ``[n, k]`` float, 1 where the weight writes the unit directly (the
      immediate term's entries); None when every stored entry is one (SnAp-1).
    shared: every weight reaches the same units (``rows[0]``).
    variables: indices of the model variables holding them.
    colours: ``[|s|, C]`` 0/1, the units of each colour (units written directly
      by none of the group's weights in none).
    slots: ``[n, k]`` where entry ``(p, a)`` of the immediate term is in the
      flattened ``[C, |θ of variables|]`` Jacobian of the colour sums.
    blocks: ``[D, k, k]`` flat ``[|s|·|s|]`` indices of ``J`` at each distinct
      row of ``rows`` (``J[R_d, R_d]``), or None: the carried product is then
      gathered entry by entry (``k ≤ 2``, or blocks padded to twice the size).
    order: ``[D, m]`` the weights of each distinct row (padded with weight 0),
      None when ``D = 1``; ``back``: ``[n]`` each weight's place in ``[D·m]``.
  """

  def __init__(self, pattern, immediate, weights, k, owner, offsets, variables):
    self.weights, self.k, self.variables = weights, k, variables
    counts = pattern[:, weights].sum(0)
    weight, unit = np.nonzero(pattern[:, weights].T)  # Row-major: sorted units.
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    self.rows = np.repeat(unit[starts][:, None], k, axis=1).astype(np.int32)
    self.rows[weight, np.arange(len(weight)) - starts[weight]] = unit
    padded = np.arange(k)[None, :] >= counts[:, None]
    self.mask = (~padded).astype(np.float32) if padded.any() else None
    direct = immediate[self.rows, weights[:, None]] & ~padded
    self.direct = (None if np.array_equal(direct, ~padded)
                   else direct.astype(np.float32))
    # Greedy colouring of the units written directly: two units written by one
    # weight conflict (the weights' distinct columns of ``P₁`` suffice).
    written = np.unique(immediate[:, weights], axis=1).astype(np.float32)
    conflict = written @ written.T > 0
    colour = np.full(pattern.shape[0], -1)
    for u in np.nonzero(written.any(1))[0]:
      taken = set(colour[conflict[u] & (colour >= 0)].tolist())
      colour[u] = min(set(range(len(taken) + 1)) - taken)
    self.colours = (colour[:, None] == np.arange(colour.max() + 1)).astype(
        np.float32)
    # Each weight's index among the group's variables, flattened together.
    sizes = np.diff(offsets)[variables]
    start = np.zeros(len(offsets) - 1, np.int64)
    start[variables] = np.cumsum(sizes) - sizes
    local = weights - offsets[owner[weights]] + start[owner[weights]]
    self.slots = (np.maximum(colour[self.rows], 0) * sizes.sum()
                  + local[:, None]).astype(np.int32)
    self._block(pattern.shape[0])

  def _block(self, width):
    """The weights by distinct row: ``J``'s ``[k, k]`` block at each."""
    distinct, which = np.unique(self.rows, axis=0, return_inverse=True)
    which = which.reshape(-1)
    self.shared = len(distinct) == 1
    self.blocks = self.order = self.back = None
    per_row = np.bincount(which)
    if not self.shared and (self.k <= 2 or
                            len(distinct) * per_row.max() > 2 * self.size):
      return
    self.blocks = (distinct[:, :, None] * width + distinct[:, None, :]).astype(
        np.int32)
    if self.shared:
      return
    sort = np.argsort(which, kind='stable')
    place = np.arange(self.size) - (np.cumsum(per_row) - per_row)[which[sort]]
    self.order = np.zeros([len(distinct), per_row.max()], np.int32)
    self.order[which[sort], place] = sort
    self.back = np.empty(self.size, np.int32)
    self.back[sort] = which[sort] * per_row.max() + place

  @property
  def size(self):
    return len(self.weights)


def groups_of(pattern: np.ndarray, variable_sizes: List[int],
              immediate: Optional[np.ndarray] = None) -> List[Group]:
  """The compact layout of ``pattern`` (``[|s|, |θ|]`` bool, ``θ`` the variables
  of ``variable_sizes`` flattened and concatenated; ``immediate``, its direct
  entries, defaults to ``pattern``): one group per distinct largest number of
  units a variable's weights reach, in increasing order (none for weights that
  reach no unit)."""
  immediate = pattern if immediate is None else immediate
  offsets = np.concatenate([[0], np.cumsum(variable_sizes)]).astype(np.int64)
  owner = np.repeat(np.arange(len(variable_sizes)), variable_sizes)
  fan_out = pattern.sum(0)
  widest = [int(fan_out[offsets[i]:offsets[i + 1]].max(initial=0))
            for i in range(len(variable_sizes))]
  groups = []
  for k in sorted(set(widest) - {0}):
    variables = [i for i, w in enumerate(widest) if w == k]
    weights = np.nonzero(np.isin(owner, variables) & (fan_out > 0))[0]
    groups.append(Group(pattern, immediate, weights, k, owner, offsets,
                        variables))
  return groups

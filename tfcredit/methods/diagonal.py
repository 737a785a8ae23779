"""Finding the units of a recurrence diagonal per unit, and the weights that
write them: the probe of element-wise RTRL (``elementwise_rtrl.py``).

Nothing is declared by the cell: ``UnitProbe._prepare_influence`` probes the
model once. The state Jacobian of random states (and random inputs, or every
token) gives the units: the connected components of ``J`` within each
top-level entry of the state nest (a layer of ``RecurrentModel``), each allowed
at most one entry of each state tensor, else the recurrence is not diagonal (an
LSTM, a GRU) and the method refuses. Which unit each weight writes is read from
``2 × (1 + ⌈log₂ units⌉)`` vector–Jacobian products per layer, whose
cotangents are random on the units whose index has bit ``j`` set: a weight that
writes one unit gets either nothing or all of the full product in each, and
the bits spell its unit; a weight that writes several gets a part. Both probes
take one step through the cells (``RTRL._probe_step``).
"""

import numpy as np
import tensorflow as tf

from tfcredit.errors import ConfigurationError

# Rows of random states probed for J's pattern, and its floats per chunk.
JACOBIAN_ROWS = 2
JACOBIAN_CHUNK_FLOATS = 2**22
# Rows of random states and inputs (or every token) probed for the weights.
WRITE_ROWS = 16
# A bit's product is "none" or "all" of the full one within this fraction.
TOLERANCE = 1e-4
DRAWS = 2


def components(pattern: np.ndarray) -> np.ndarray:
  """Weakly connected components of the directed graph ``pattern`` (``[n, n]``
  bool): a label per node, the smallest node of its component."""
  n = pattern.shape[0]
  source, target = np.nonzero(pattern | pattern.T)
  labels = np.arange(n)
  while True:
    previous = labels.copy()
    np.minimum.at(labels, source, labels[target])
    labels = labels[labels]  # Pointer jumping: long chains in log steps.
    if np.array_equal(labels, previous):
      return labels


class Layer:
  """One top-level entry of the state nest: its units.

  Attributes:
    index: its position in the nest.
    entries: ``[n, k]`` the flat state indices of each unit's entries (in
      their order in the state; a unit with fewer than ``k`` is padded with its
      first entry, whose product with a colour missing from the unit is 0).
    colours: ``[k, |s|]`` 0/1, entry ``a`` of every unit.
  """

  def __init__(self, index, entries, width):
    self.index = index
    self.entries = entries
    self.n, self.k = entries.shape
    self.colours = np.zeros([self.k, width], np.float32)
    for unit in range(self.n):
      for a in range(self.k):  # A padded entry is in its first colour only.
        if a == 0 or entries[unit, a] != entries[unit, 0]:
          self.colours[a, entries[unit, a]] = 1.0


class Piece:
  """The weights of one variable whose unit is in one layer: their influence
  is ``[rows, k, S, n]``, slot ``s`` of unit ``u`` holding the weight
  ``slots[s, u]`` of the variable (flattened; ``size``: none, kept at 0).

  Attributes:
    layer: the ``Layer``.
    variable: the index of the model variable.
    slots: ``[S, n]``.
    identity: the variable flattened is already ``[S, n]`` (the unit its
      trailing axis, as the LRU's ``B [inputs, units]`` and ``ν [units]``): a
      reshape, no gather.
    weights_at: ``[S, n]`` each slot's index in the flat ``θ`` (−1: none).
    written: the entry positions its weights write directly (the others'
      immediate term is 0 by structure, and neither computed nor read).
  """

  def __init__(self, layer, variable, size, offset, local, units, written):
    self.layer, self.variable, self.size = layer, variable, size
    self.written = written
    counts = np.bincount(units, minlength=layer.n)
    order = np.lexsort((local, units))  # By unit, then weight.
    sorted_units = units[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_units, sorted_units)
    self.slots = np.full([int(counts.max()), layer.n], size, np.int64)
    self.slots[rank, sorted_units] = local[order]
    self.identity = bool(np.array_equal(self.slots.ravel(), np.arange(size)))
    self.weights_at = np.where(self.slots < size, self.slots + offset, -1)

  @property
  def depth(self):
    return self.slots.shape[0]

  def arrange(self, direct):
    """``[rows, size]`` immediate Jacobians of one entry position as ``[rows,
    S, n]``."""
    if not self.identity:
      direct = tf.concat([direct, tf.zeros_like(direct[:, :1])], axis=1)
      direct = tf.gather(direct, self.slots.ravel(), axis=1)
    return tf.reshape(direct, tf.stack([tf.shape(direct)[0], self.depth,
                                        self.layer.n]))


class UnitProbe:
  """The probe, mixed into ``ElementwiseRTRL`` (whose ``RTRL`` base supplies
  ``model``, ``task``, ``sizes``, ``width``, ``num_parameters``, ``replicas``,
  ``approximate`` and the state's ``_flat``/``_nest``). Sets ``layers``,
  ``pieces``, ``stored``, ``positions``, ``exact`` and ``approximated``."""

  def _prepare_influence(self):
    """Finds the units and the weights that write them (module docstring);
    sets ``layers``, ``exact``, ``approximated`` and ``positions``."""
    spec = self.model.state_spec()
    groups = list(spec) if isinstance(spec, (tuple, list)) else [spec]
    leaves = [len(tf.nest.flatten(g)) for g in groups]
    leaf_of = np.repeat(np.arange(len(self.sizes)), self.sizes)
    group_of_leaf = np.repeat(np.arange(len(groups)), leaves)
    group_of = group_of_leaf[leaf_of]
    pattern = self._run(self._state_pattern)
    entries = [self._units(g, pattern, group_of, leaf_of)
               for g in range(len(groups))]
    across = pattern & (group_of[:, None] != group_of[None, :])
    if across.any() and not self.approximate:
      upper, lower = (group_of[i] for i in np.argwhere(across)[0])
      raise ConfigurationError(
          f'ElementwiseRTRL is exact for one recurrent layer: here '
          f'{self._label(upper)} depends on {self._label(lower)} within a step, '
          f'so the lower layer\'s weights write units of the upper one that '
          'their influence does not hold. Set ElementwiseRTRL.approximate = '
          'True for Zucchet et al.\'s rule (each layer\'s influence alone, '
          'errors from the layers above at the same step), or use RTRL')
    self.layers = [Layer(g, e, self.width) for g, e in enumerate(entries)]
    self._place_weights(group_of)

  def _place_weights(self, group_of):
    """Which unit each weight writes (``_units_written``): refuses weights
    that write several without ``approximate``; sets ``pieces``, ``stored``,
    ``positions``, ``exact`` and ``approximated``."""
    unit_of, writes, positions = self._units_written(group_of)
    sizes = [int(v.shape.num_elements()) for v in self.model_variables]
    owner = np.repeat(np.arange(len(sizes)), sizes)
    # A weight's own layer: the lowest it writes; its unit there, if one.
    written = writes.any(0)
    lowest = np.where(written, writes.argmax(0), -1)
    own = np.where(written, unit_of[np.maximum(lowest, 0), np.arange(len(owner))],
                   -1)
    per_unit = written & (own >= 0) & (writes.sum(0) == 1)
    spans = written & ~per_unit
    names = [getattr(v, 'path', v.name) for v in self.model_variables]
    self.approximated = [names[i] for i in np.unique(owner[spans])]
    self.exact = not self.approximated
    if spans.any() and not self.approximate:
      raise ConfigurationError(
          'ElementwiseRTRL is exact only when every weight writes the entries '
          f'of one unit within a step, and {", ".join(self.approximated)} '
          'write several (an encoder before the recurrence, or a lower layer '
          'of a stack): set ElementwiseRTRL.approximate = True (their '
          'gradient then flows through the current step only, as in Zucchet '
          'et al.), feed real inputs to the cell directly (no embedding_dim), '
          'or use RTRL')
    self.approximated = tuple(self.approximated)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    self.pieces = []
    for layer in self.layers:
      for variable in range(len(sizes)):
        weights = np.nonzero((lowest == layer.index) & (own >= 0)
                             & (owner == variable))[0]
        if len(weights):
          entries = positions[layer.index, :layer.k][:, weights].any(1)
          self.pieces.append(Piece(layer, variable, sizes[variable],
                                   offsets[variable],
                                   weights - offsets[variable], own[weights],
                                   np.nonzero(entries)[0].tolist()))
    if not self.pieces:
      raise ConfigurationError(
          'ElementwiseRTRL found no weight that writes a unit of the state '
          '(nothing to carry an influence for): train this model with '
          'TruncatedBPTT')
    # Per stored layer, its pieces (in order) and their variables.
    self.stored = [l for l in self.layers
                   if any(p.layer is l for p in self.pieces)]
    stored = np.concatenate([p.weights_at.ravel() for p in self.pieces])
    self.positions = np.full(len(owner), len(stored), np.int64)
    self.positions[stored[stored >= 0]] = np.nonzero(stored >= 0)[0]

  def _units(self, g, pattern, group_of, leaf_of):
    """``[n, k]`` the flat state indices of the units of state entry ``g`` (the
    components of ``J``'s pattern within it); refuses a unit that holds two
    entries of one state tensor."""
    members = np.nonzero(group_of == g)[0]
    labels = components(pattern[np.ix_(members, members)])
    units = [members[labels == label] for label in np.unique(labels)]
    for unit in units:
      tensors = leaf_of[unit]
      if len(set(tensors.tolist())) < len(unit):
        leaf = np.bincount(tensors).argmax()
        raise ConfigurationError(
            f'ElementwiseRTRL needs a recurrence that is diagonal per unit '
            f'(∂s_t/∂s_(t−1) coupling only the entries of one unit, at most '
            f'one of each state tensor), but {self._label(g)} couples '
            f'{np.bincount(tensors).max()} entries of its state tensor '
            f'{leaf - leaf_of[members[0]]} (of size {self.sizes[leaf]}): use '
            'RTRL, SnAp1 or UORO for this cell')
    k = max(len(u) for u in units)
    return np.array([np.concatenate([u, np.repeat(u[:1], k - len(u))])
                     for u in units], np.int64)

  def _label(self, group: int) -> str:
    core = getattr(self.model, 'core', None)
    if core is not None and len(core) == len(self.model.state_spec()):
      layer = core[group]
      return f'layer {group} ({type(getattr(layer, "cell", layer)).__name__})'
    return f'state entry {group}'

  def _run(self, function, *args):
    """``function(*args)`` compiled, on one replica; its result in numpy."""
    strategy = self.replicas.strategy
    result = strategy.run(tf.function(function), args=args)
    return tf.nest.map_structure(
        lambda x: strategy.experimental_local_results(x)[0].numpy(), result)

  def _probe_inputs(self, rows: int, seed) -> tf.Tensor:
    """``[rows', 1, …]`` inputs: every token (tiled to at least ``rows``), or
    random real features."""
    spec = self.task.model_spec()
    if spec.get('input_vocab_size'):
      vocabulary = spec['input_vocab_size']
      return tf.tile(tf.range(vocabulary)[:, None],
                     [max(1, -(-rows // vocabulary)), 1])
    return tf.random.stateless_normal([rows, 1, spec['input_dim']], seed=seed)

  def _state_pattern(self):
    """``[|s|, |s|]`` bool: where ``J`` is non-zero for some probe row (random
    states and inputs; the Jacobian in chunks of output entries)."""
    inputs = self._probe_inputs(JACOBIAN_ROWS, [5, 6])[:JACOBIAN_ROWS]
    rows = tf.shape(inputs)[0]
    flat = tf.random.stateless_normal(tf.stack([rows, self.width]), seed=[7, 8])
    chunk = max(1, JACOBIAN_CHUNK_FLOATS // (JACOBIAN_ROWS * self.width))
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(flat)
      new_flat = self._probe_step(inputs, flat)
      # Sliced on the tape, which differentiates each chunk.
      chunks = [new_flat[:, start:start + chunk]
                for start in range(0, self.width, chunk)]
    parts = [tf.reduce_any(tf.not_equal(tape.batch_jacobian(c, flat), 0.0), 0)
             for c in chunks]
    del tape
    return tf.concat(parts, axis=0)

  def _units_written(self, group_of):
    """``(unit [layers, |θ|], writes [layers, |θ|], positions [layers, k,
    |θ|])``: for each layer whether each weight writes one of its entries
    directly, which unit (−1: several), and which entry positions of its units
    (the LRU's ``B_re`` only the real part). Per layer and draw, one product
    with the cotangent random on the layer's entries, one per bit ``j`` with
    it kept on the units whose index has bit ``j`` (a weight that writes one
    unit gets 0 or the whole of the first in each, and the bits spell its
    unit), and one per entry position."""
    masks, draws = [], []
    for layer in self.layers:
      unit_of_entry = np.full(self.width, -1)
      for a in range(layer.k):
        unit_of_entry[layer.entries[:, a]] = np.arange(layer.n)
      inside = (group_of == layer.index).astype(np.float32)
      for draw in range(DRAWS):
        for bit in range(-1, int(layer.n - 1).bit_length()):
          keep = inside if bit < 0 else inside * ((unit_of_entry >> bit) & 1)
          masks.append(keep)
          draws.append(draw)
        for a in range(layer.k):  # Which entry positions a weight writes.
          masks.append(layer.colours[a])
          draws.append(draw)
    products = self._run(self._vector_jacobian_products,
                         tf.constant(np.array(masks, np.float32)),
                         tf.constant(draws, tf.int32))
    units = np.full([len(self.layers), self.num_parameters], -1, np.int32)
    writes = np.zeros([len(self.layers), self.num_parameters], bool)
    k = max(layer.k for layer in self.layers)
    positions = np.zeros([len(self.layers), k, self.num_parameters], bool)
    start = 0
    for variable, product in zip(self.model_variables, products):
      size = int(variable.shape.num_elements())
      if product.size:  # Else the variable writes no state.
        part = slice(start, start + size)
        units[:, part], writes[:, part], positions[:, :, part] = self._decode(
            product.astype(np.float64), k)
      start += size
    return units, writes, positions

  def _decode(self, products, k):
    """``_units_written`` for one variable's products ``[Q, size]``."""
    units = np.full([len(self.layers), products.shape[1]], -1, np.int32)
    writes = np.zeros([len(self.layers), products.shape[1]], bool)
    positions = np.zeros([len(self.layers), k, products.shape[1]], bool)
    position = 0
    for number, layer in enumerate(self.layers):
      bits = int(layer.n - 1).bit_length()
      found = []
      for _ in range(DRAWS):
        full = products[position]
        parts = products[position + 1:position + 1 + bits]
        entries = products[position + 1 + bits:position + 1 + bits + layer.k]
        positions[number, :layer.k] |= entries != 0
        position += 1 + bits + layer.k
        scale = np.maximum(np.abs(full), np.abs(parts).max(0, initial=0.0))
        none = np.abs(parts) <= TOLERANCE * scale
        whole = np.abs(parts - full) <= TOLERANCE * scale
        unit = (whole * (1 << np.arange(bits))[:, None]).sum(0)
        single = np.all(none | whole, axis=0) & (unit < layer.n)
        found.append((scale > 0, np.where(single, unit, -1)))
      (seen_a, unit_a), (seen_b, unit_b) = found
      writes[number] = seen_a | seen_b
      agree = np.where(seen_a & seen_b, np.where(unit_a == unit_b, unit_a, -1),
                       np.where(seen_a, unit_a, unit_b))
      units[number] = np.where(writes[number], agree, -1)
    return units, writes, positions

  def _vector_jacobian_products(self, masks, draws):
    """Per model variable ``[Q, size]`` (``[Q, 0]`` if it writes no state):
    ``Σ_rows Σ_n r_q[b, n] · masks[q, n] · s_t[b, n]`` differentiated in the
    weights, ``r_q`` random (draw ``draws[q]``), from random states (the
    state before the step held fixed) and every token or random inputs."""
    inputs = self._probe_inputs(WRITE_ROWS, [9, 10])
    rows = tf.shape(inputs)[0]
    flat = tf.random.stateless_normal(tf.stack([rows, self.width]),
                                      seed=[11, 12])
    random = tf.random.stateless_normal(tf.stack([DRAWS, rows, self.width]),
                                        seed=[13, 14])
    variables = self.model_variables
    with tf.GradientTape() as tape:
      summed = tf.einsum('dbn,bn->dn', random, self._probe_step(inputs, flat))
      probes = tf.reduce_sum(masks * tf.gather(summed, draws), axis=1)
    return [tf.zeros([masks.shape[0], 0]) if j is None else
            tf.reshape(j, [masks.shape[0], -1])
            for j in tape.jacobian(probes, variables)]

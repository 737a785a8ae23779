"""Element-wise RTRL: exact RTRL for recurrences that are diagonal per unit
(Zucchet, Meier, Schug, Mujika & Sacramento 2023, "Online learning of long-range
dependencies", NeurIPS).

When ``J_t = ∂s_t/∂s_{t−1}`` only couples the entries of one unit (the LRU's
``(h_re[i], h_im[i])``, a 2 × 2 real block; a diagonal real cell's ``h[i]``),
and every recurrent weight writes the entries of one unit, the influence of a
weight on every other unit stays zero for ever: RTRL's ``M_t = J_t M_{t−1} +
∂s_t/∂θ|direct`` (``rtrl.py``) only has to carry, per weight, its own unit's
``k`` entries, ``M_t[p] = J_t[u(p)] M_{t−1}[p] + ∂s_t[u(p)]/∂θ_p``: for the
LRU's ``ν_i``, ``e_t = λ_i e_{t−1} + (∂λ_i/∂ν_i) h_{t−1,i}``, for ``B``'s entry
``(j, i)``, ``e_t = λ_i e_{t−1} + γ_i x_{t,j}``. Weights that write no unit (``C``,
``D``, the readout) take their direct gradient. Memory ``rows × k × (weights
that write a unit)``, linear in the weights; per step ``k`` backward passes for
``J_t``'s blocks and ``k`` per row for the weights' immediate Jacobian.

Nothing is declared by the cell: the constructor probes the model once for
its units and the unit each weight writes (``diagonal.py``).

Exactness. The rule is exact for one recurrent layer fed by its inputs
directly. In a stack, a lower layer's weights also write every unit of the
layers above within the step, and an encoder (an embedding, an input
projection) writes every unit of the first layer: neither is per unit, and the
method refuses them unless ``approximate=True``, which applies Zucchet et al.'s
rule: each weight's influence is kept on its own unit only (an encoder's on
none), so a layer's weights get ``Σ_t δ_t · e_t`` with ``δ_t`` the error that
reaches their unit through the layers above at the same step, and the encoder
the gradient through the current step only (their "spatial" backpropagation).
docs/methods/elementwise_rtrl.md.
"""

from typing import Optional, Union

import tensorflow as tf

from tfcredit import validation
from tfcredit.methods import diagonal
from tfcredit.methods import jit
from tfcredit.methods import registry
from tfcredit.methods import rtrl
from tfcredit.methods import vectorize
from tfcredit.methods.replicas import densify
from tfcredit.models.lru import LRUCell


@registry.register
class ElementwiseRTRL(diagonal.UnitProbe, rtrl.RTRL):
  """Element-wise RTRL (``RTRL``'s loop, contract and arguments; the module
  docstring). Attributes after construction: ``layers`` (the units and the
  weights stored per layer), ``exact`` (False when ``approximate`` had to
  drop something) and ``approximated`` (the names of the variables whose
  gradient is Zucchet et al.'s approximation)."""

  KEY = 'elementwise_rtrl'
  # The shared tests' stream is of tokens: its embedding needs approximate.
  EXAMPLE_ARGUMENTS = {'window': 5, 'windows_per_call': 2, 'approximate': True}
  EXAMPLE_MODEL = {'cell': LRUCell}
  # The library's cells it trains; a custom cell diagonal per unit trains too
  # (the constructor's probe decides, and refuses any other).
  CELLS = (LRUCell,)

  def __init__(self, *, model, task, optimizer, window: int = 10,
               windows_per_call: int = 10, batch_size: Optional[int] = None,
               approximate: bool = False, max_influence_floats: int = 2**26,
               jit_compile: Union[bool, str] = jit.AUTO,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Args:
      approximate: accept weights that are not per unit (a stack's lower
        layers, an encoder) under Zucchet et al.'s rule (module docstring);
        False refuses them, so the gradient is exact.
      jit_compile: compile each step (forward, backward, per-row Jacobians,
        the influence's update) with XLA, once per shape: about five times
        faster on a CPU than the same ops run one by one (docs/methods/
        elementwise_rtrl.md); results agree to float tolerance, not bit for
        bit. ``'auto'`` (the default) compiles unless ``TFCREDIT_AUTO_XLA=0``
        (``tfcredit.methods.jit``).
      window, windows_per_call, batch_size, max_influence_floats: as in
        ``RTRL`` (the influence is ``rows × k × stored weights`` floats).
      model, task, optimizer, clip_norm, use_tf_function, name: as in ``Method``.

    Raises:
      ConfigurationError: the recurrence is not diagonal per unit; or, without
        ``approximate``, a weight writes several units within a step.
    """
    self.approximate = validation.boolean('ElementwiseRTRL.approximate',
                                          approximate)
    super().__init__(model=model, task=task, optimizer=optimizer, window=window,
                     windows_per_call=windows_per_call, batch_size=batch_size,
                     max_influence_floats=max_influence_floats,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name)
    # 'auto': the compiled step pays for any cell (docs/methods/elementwise_rtrl.md).
    self.jit_compile = jit.resolve('ElementwiseRTRL.jit_compile', jit_compile,
                                   model, rule=lambda model: True)
    self._compiled_step = (tf.function(self._step_parts, jit_compile=True)
                           if self.jit_compile else None)

  # ------------------------- the influence: [rows, k, S, n] for each piece
  def _influence_size(self, rows):
    terms = []
    for layer in self.stored:
      weights = sum(p.depth for p in self.pieces if p.layer is layer)
      terms.append(f'{layer.k} × {weights} × {layer.n}')
    return (rows * sum(p.layer.k * p.depth * p.layer.n for p in self.pieces),
            'rows × entries per unit × weights per unit × units = '
            f'{rows} × ' + (terms[0] if len(terms) == 1
                            else f'({" + ".join(terms)})'))

  def _zero_influence(self, rows):
    return tuple(tf.zeros(tf.stack([rows, p.layer.k, p.depth, p.layer.n]))
                 for p in self.pieces)

  def _blocked(self, flat, layer):
    """``[rows, k, n]``: the flat ``[rows, |s|]`` at each unit's entries."""
    return tf.gather(flat, layer.entries.T, axis=1)

  def _scatter(self, parts):
    """The pieces' ``[S, n]`` gradients as the flat ``[|θ|]`` (0 elsewhere)."""
    return tf.gather(tf.concat([tf.reshape(p, [-1]) for p in parts]
                               + [tf.zeros([1])], 0), self.positions)

  def _probes(self, new_flat, noise):
    """Per stored layer the sums of the new state over each entry position of
    its units, ``[rows, k]``: a weight writes one unit, so one entry of each."""
    del noise
    return [tf.matmul(new_flat, l.colours, transpose_b=True)
            for l in self.stored]

  def _probe_variables(self):
    variables = self.model_variables
    return [[variables[p.variable] for p in self.pieces if p.layer is l]
            for l in self.stored]

  def _step(self, *arguments):
    """``RTRL._step``: ``_step_parts``, compiled by XLA with ``jit_compile``."""
    if self._compiled_step is None:
      return self._step_parts(*arguments)
    return self._compiled_step(*arguments)

  def _step_parts(self, inputs, targets, flat, influence, noise, normalizer,
                  has_loss):
    """``RTRL._step`` with the loss's gradients in the weights and in the
    state in one backward pass, and the gradient through the state read from
    ``M_(t−1)`` where the influence advances (``_advance_piece``), which
    replaces ``_through_state`` and ``_advance``."""
    variables = self.model_variables
    with tf.GradientTape(persistent=not self.per_row) as tape:
      tape.watch(flat)
      outputs, new_flat = self._one_step(inputs, flat)
      probes = None if self.per_row else self._probes(new_flat, noise)
      objective, loss_sum = self.objective(outputs, targets, normalizer,
                                           weights=has_loss)
    gradients = self.gradient(tape, objective, list(variables) + [flat])
    direct = densify(gradients[:-1], variables)
    state_gradient = (tf.zeros_like(flat) if gradients[-1] is None
                      else gradients[-1])
    jacobian = self._state_jacobian(tape, inputs, flat, new_flat, influence)
    immediate = self._immediate(tape, probes, inputs, flat, noise)
    del tape
    if jacobian is None:  # Per row: (per-piece immediate, blocks) pairs.
      immediate, jacobian = zip(*immediate)
      immediate = [part for parts in immediate for part in parts]
    else:
      immediate = self._per_piece(immediate)
    jacobian = {id(l): j for l, j in zip(self.stored, jacobian)}
    advanced, through = [], []
    for piece, direct_piece, m in zip(self.pieces, immediate, influence):
      new_m, part = _advance_piece(
          jacobian[id(piece.layer)], m,
          {a: piece.arrange(d) for a, d in direct_piece.items()},
          self._blocked(state_gradient, piece.layer))
      advanced.append(new_m)
      through.append(part)
    return (new_flat, tuple(advanced), direct, self._scatter(through),
            loss_sum)

  def _per_piece(self, immediate):
    """Per stored layer ``[rows, k, width]`` (its pieces' variables flattened
    and concatenated) as, per piece, ``{a: [rows, size]}`` for the entry
    positions it writes."""
    parts = []
    for layer, products in zip(self.stored, immediate):
      pieces = [p for p in self.pieces if p.layer is layer]
      for piece, part in zip(pieces, tf.split(products, [p.size for p in pieces],
                                              axis=2)):
        parts.append({a: part[:, a] for a in piece.written})
    return parts

  def _state_jacobian(self, tape, inputs, flat, new_flat, influence):
    """Per stored layer ``J``'s blocks ``[rows, k (row a), k (column c), n]``:
    one vector–Jacobian product per entry position ``a``, whose cotangent is 1
    on entry ``a`` of every unit of the layer (the units do not interact).
    With ``per_row`` they come with the immediate term (``_immediate``):
    None."""
    del inputs, influence
    if self.per_row:
      return None
    blocks = []
    for layer in self.stored:
      rows = []
      for a in range(layer.k):
        cotangent = tf.broadcast_to(layer.colours[a], tf.shape(new_flat))
        row = tape.gradient(new_flat, flat, output_gradients=cotangent,
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        rows.append(self._blocked(row, layer))
      blocks.append(tf.stack(rows, axis=1))
    return blocks

  def _immediate(self, tape, probes, inputs, flat, noise):
    """Per stored layer ``[rows, k, width]``: entry position ``a`` of each
    unit differentiated in the layer's variables, per row. With ``per_row``,
    per piece ``{a: [rows, size]}`` for the positions it writes, paired with
    ``J``'s blocks ``[rows, k, k, n]`` from the same vector–Jacobian products
    (each row's step, ``model.state_step``, differentiated in its state too),
    so the blocks cost no pass of their own: per entry position one backward
    pass per row, in the variables that write that position."""
    if not self.per_row:
      return super()._immediate(tape, probes, inputs, flat, noise)
    variables = self.model_variables
    products = []
    for layer in self.stored:
      pieces = [p for p in self.pieces if p.layer is layer]
      directs = [{} for _ in pieces]
      blocks = []
      for a in range(layer.k):
        writing = [i for i, p in enumerate(pieces) if a in p.written]
        sources = [variables[pieces[i].variable] for i in writing]

        def entry(arguments, layer=layer, a=a, sources=sources):
          row_inputs, row_flat = arguments
          with tf.GradientTape() as row_tape:
            row_tape.watch(row_flat)
            new_flat = self._flat(self.model.state_step(
                row_inputs[None], self._nest(row_flat[None]), training=True))
          gradients = row_tape.gradient(
              new_flat, sources + [row_flat],
              output_gradients=tf.constant(layer.colours[a])[None])
          return ([tf.zeros([v.shape.num_elements()]) if g is None
                   else tf.reshape(g, [-1])
                   for g, v in zip(gradients[:-1], sources)],
                  tf.gather(gradients[-1], layer.entries.T))

        direct, row = vectorize.map_rows(self._eager_maps, (id(layer), a),
                                         entry, (inputs, flat))
        for i, d in zip(writing, direct):
          directs[i][a] = d
        blocks.append(row)
      products.append((directs, tf.stack(blocks, axis=1)))
    return products


def _advance_piece(blocks, m, direct, state_gradient):
  """One piece's step: ``(M_t, Σ_rows Σ_a g[b, a, u] M_(t−1)[b, a, s, u])``
  with ``M_t[b, a, s, u] = Σ_c J[b, a, c, u] M_(t−1)[b, c, s, u] + direct[a][b,
  s, u]`` (``direct``: the written positions only; memory-bound: under
  ``jit_compile`` XLA fuses it into one pass over ``M``)."""
  k = m.shape[1]
  advanced = []
  for a in range(k):
    carried = tf.add_n([blocks[:, a, c, None, :] * m[:, c] for c in range(k)])
    advanced.append(carried + direct[a] if a in direct else carried)
  advanced = tf.stack(advanced, axis=1)
  through = tf.reduce_sum(state_gradient[:, :, None, :] * m, [0, 1])
  return advanced, through

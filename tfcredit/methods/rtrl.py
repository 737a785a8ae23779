"""RTRL: real-time recurrent learning (Williams & Zipser 1989).

The influence ``M_t = ∂s_t/∂θ`` of the flattened state (every tensor of the state
nest: an LSTM's h and c) on every weight is carried forward in time,
``M_t = J_t M_{t−1} + ∂s_t/∂θ|direct`` with ``J_t = ∂s_t/∂s_{t−1}``, and the
gradient of the loss at step ``t`` is ``∂ℓ_t/∂θ|direct + (∂ℓ_t/∂s_{t−1}) M_{t−1}``:
the exact gradient over the whole stream, online, with no truncation. The
influence costs ``rows × |s| × |θ|`` floats, so RTRL suits small models. This
module owns the influence (a variable on streams, carried across calls and
checkpointed); the method updates every ``window`` steps. docs/methods/rtrl.md.
"""

from typing import Optional, Tuple

import tensorflow as tf

from tfcredit import masking
from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.methods import base
from tfcredit.methods import registry
from tfcredit.methods import truncated_bptt
from tfcredit.methods import vectorize
from tfcredit.methods.replicas import densify, zeros_like_variables
from tfcredit.metrics import LAST
from tfcredit.models.state import flatten_state, unflatten_state
from tfcredit.tasks import base as task_base

_ZERO = tf.UnconnectedGradients.ZERO


@registry.register
class RTRL(base.Method):
  """Real-time recurrent learning, one update every ``window`` steps (once per
  sequence for a terminal loss).

  Metrics beyond the base ones: ``influence_norm`` (``‖M‖`` over the rows after
  the call, Frobenius; the last of an interval).
  """

  EXAMPLE_ARGUMENTS = {'window': 5, 'windows_per_call': 2}
  metric_reductions = {'influence_norm': LAST}

  def __init__(self, *, model, task, optimizer, window: int = 10,
               windows_per_call: int = 10, batch_size: Optional[int] = None,
               max_influence_floats: int = 2**26,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Args:
      window: steps per parameter update (the influence is never truncated).
      windows_per_call: stream tasks: windows per ``train_segment`` call.
      batch_size: the training rows (passed by the trainer); required on stream
        tasks, whose influence is a variable carried across calls.
      max_influence_floats: refuse a model whose influence (rows × state ×
        weights floats) is larger: RTRL is for small models.
      model, task, optimizer, clip_norm, use_tf_function, name: as in ``Method``.

    Raises:
      ConfigurationError: an argument is invalid, or the influence too large.
    """
    owner = type(self).__name__
    self.window = validation.positive_int(f'{owner}.window', window)
    self.windows_per_call = validation.positive_int(f'{owner}.windows_per_call',
                                                    windows_per_call)
    limit = validation.positive_int(f'{owner}.max_influence_floats',
                                    max_influence_floats)
    stream = task.regime == task_base.STREAM
    if batch_size is not None:
      batch_size = validation.positive_int(f'{owner}.batch_size', batch_size)
    elif stream:
      raise ConfigurationError(
          f'{owner}.batch_size is required on a stream task (the influence of '
          'every row is carried across calls): the trainer passes '
          f'train.batch_size; elsewhere pass {owner}(batch_size=...)')
    self.sizes = [int(s.shape[-1]) for s in tf.nest.flatten(model.state_spec())]
    self.width = sum(self.sizes)
    self.num_parameters = sum(int(v.shape.num_elements())
                              for v in model.trainable_variables)
    super().__init__(model=model, task=task, optimizer=optimizer,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name or owner)
    # Each row's Jacobian in the weights from that row alone (``_immediate``):
    # the model must step without a loop, and without random draws, which a
    # second pass would not repeat.
    self.per_row = (callable(getattr(model, 'state_step', None))
                    and not model.rng_variables())
    self._eager_maps = vectorize.EagerMaps()
    self._prepare_influence()
    floats, formula = self.influence_size(batch_size or 1)
    if floats > limit:
      raise ConfigurationError(
          f'{owner} carries an influence of {formula} = {floats:,} floats, more '
          f'than {owner}.max_influence_floats = {limit:,}: use a smaller model '
          'or batch, or raise the limit')
    variable = lambda value, name, dtype=tf.float32: tf.Variable(
        value, dtype=dtype, trainable=False, name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.epoch = variable(-1, 'epoch', tf.int64)
    self.influence = None
    if stream:
      self.influence = tf.nest.map_structure(
          lambda zeros: variable(zeros, 'influence'),
          self._zero_influence(batch_size))

  # ------------------------------------------------------------- public API
  def influence_size(self, rows: int) -> Tuple[int, str]:
    """``(floats, formula)``: the floats the influence of ``rows`` rows carries
    (the memory the method needs beyond truncated BPTT's) and how they are
    counted, e.g. ``'rows × state × weights = 4 × 128 × 37152'``."""
    return self._influence_size(rows)

  def segment_length(self) -> Optional[int]:
    return self.window * self.windows_per_call

  def check_task(self, task: task_base.Task) -> None:
    truncated_bptt.check_window_fits(type(self).__name__, self.window, task)

  def on_epoch_start(self, epoch: int) -> None:
    """A new epoch starts from the zero state, so from zero influence; a resumed
    epoch keeps the checkpointed influence."""
    if self.influence is not None and int(self.epoch.numpy()) != epoch:
      self.epoch.assign(epoch)
      for variable in tf.nest.flatten(self.influence):
        variable.assign(tf.zeros_like(variable))

  # ------------------------------------------------------------ the method
  def _flat(self, state) -> tf.Tensor:
    return flatten_state(state)

  def _nest(self, flat):
    return unflatten_state(flat, self.model.state_spec(), self.sizes)

  def _one_step(self, inputs, flat, training=True):
    """``(outputs, new flat state)`` of a one-step window from ``flat``: through
    the cells without a loop (``model.one_step``) where the model has it, else
    ``unroll``. Every Jacobian of a step through a loop converts that loop
    (``pfor``), seconds of graph building per trace."""
    if callable(getattr(self.model, 'one_step', None)):
      outputs, state = self.model.one_step(inputs, self._nest(flat),
                                           training=training)
    else:
      outputs, state = self.model.unroll(inputs, self._nest(flat),
                                         training=training)
    return outputs, self._flat(state)

  def _probe_step(self, inputs, flat):
    """The flat state after one step of ``inputs`` from ``flat``, without the
    head and without dropout (``model.state_step``, else ``unroll``): what the
    probes of the influence's pattern differentiate."""
    if callable(getattr(self.model, 'state_step', None)):
      return self._flat(self.model.state_step(inputs, self._nest(flat)))
    _, state = self.model.unroll(inputs, self._nest(flat), training=False,
                                 readout=False)
    return self._flat(state)

  # The influence and how it is used and carried: RTRL's is exact; UORO
  # (uoro.py) overrides these with a rank-one estimate, SnAp-1 (snap.py) with a
  # sparse one.
  def _prepare_influence(self):
    """Called once by the constructor before the influence is sized and
    created (SnAp-1 finds its pattern here); RTRL needs nothing."""

  def _influence_size(self, rows):
    """``(floats, formula)`` of the influence of ``rows`` rows."""
    return (rows * self.width * self.num_parameters,
            f'rows × state × weights = {rows} × {self.width} × '
            f'{self.num_parameters}')

  def _zero_influence(self, rows):
    """``M`` for ``rows`` rows at the zero state: ``[rows, |s|, |θ|]`` zeros."""
    return tf.zeros(tf.stack([rows, self.width, self.num_parameters]))

  def _draw_key(self, train):
    """The key of one call's random draws (drawn in the cross-replica
    context), or None: RTRL draws nothing."""
    del train
    return None

  def _noise(self, key, rows, start, end):
    """Per-step random draws the influence update needs in the window
    ``[start, end)``, ``[rows, end − start, k]``, from the call's ``key``: one
    window's worth, so memory does not grow with the call's length. RTRL needs
    none: a placeholder of ones (zero-size tensors crash TensorFlow's
    cross-replica gather)."""
    del key
    return tf.ones(tf.stack([rows, end - start, 1]))

  def _through_state(self, state_gradient, influence):
    """``Σ_rows (∂ℓ/∂s_{t−1}) M_{t−1}``, ``[|θ|]``."""
    return tf.einsum('bn,bnp->p', state_gradient, influence)

  def _probes(self, new_flat, noise):
    """What the influence update differentiates in the weights: a list of
    ``[rows, k]`` functions of the new state, each with its variables in
    ``_probe_variables()``. RTRL: the whole new state, in every weight."""
    del noise
    return [new_flat]

  def _probe_variables(self):
    """The variables each of ``_probes``'s entries is differentiated in."""
    return [self.model_variables]

  def _state_jacobian(self, tape, inputs, flat, new_flat, influence):
    """What ``_advance`` needs of ``J_t = ∂s_t/∂s_{t−1}``: RTRL (and SnAp-1)
    the whole of it, ``[rows, |s|, |s|]``, from the step's tape (``|s|``
    backward passes)."""
    del inputs, influence
    return vectorize.batch_jacobian(tape, new_flat, flat)

  def _advance(self, jacobian, immediate, influence, noise):
    """``M_t = J_t M_{t−1} + ∂s_t/∂θ|direct``; ``jacobian`` is
    ``_state_jacobian``'s, ``immediate`` ``_immediate``'s list."""
    del noise
    return tf.einsum('bij,bjp->bip', jacobian, influence) + immediate[0]

  def _immediate(self, tape, probes, inputs, flat, noise):
    """Per row, the Jacobian of each of ``_probes`` in its variables with the
    state before the step held fixed: a list of ``[rows, k, |θ_i|]`` (the
    variables' weights flattened and concatenated).

    With ``per_row``, ``rows × k`` backward passes through one row each: one
    vector–Jacobian product per row and probe entry, each from that row's own
    step (``model.state_step``), mapped by ``tf.vectorized_map``
    (``vectorize.map_rows``).
    (``tape.jacobian`` inside ``tf.vectorized_map`` returns None in TF 2.21;
    ``tape.gradient`` works.) Otherwise ``tape``'s Jacobian of ``probes``
    (recorded with the step): ``rows × k`` passes through the whole batch,
    ``rows`` times the work.
    """
    parts = self._probe_variables()
    rows = tf.shape(flat)[0]
    if not self.per_row:
      return [flat_jacobian(vectorize.jacobian(tape, probe, variables),
                            variables,
                            tf.stack([rows, probe.shape[-1]]))
              for probe, variables in zip(probes, parts)]
    sizes = [p.shape[-1] for p in self._probes(flat[:1], noise[:1])]
    immediate = []
    for part, (size, variables) in enumerate(zip(sizes, parts)):

      def entry(arguments, part=part, variables=variables):
        row_inputs, row_flat, row_noise, cotangent = arguments
        with tf.GradientTape() as row_tape:
          state = self.model.state_step(
              row_inputs[None], self._nest(row_flat[None]), training=True)
          probe = self._probes(self._flat(state), row_noise[None])[part]
        return flat_jacobian(row_tape.gradient(probe, variables,
                                               output_gradients=cotangent[None]),
                             variables, [])

      repeat = lambda x, size=size: tf.repeat(x, size, axis=0)
      elements = (repeat(inputs), repeat(flat), repeat(noise),
                  tf.tile(tf.eye(size), tf.stack([rows, 1])))
      if size == 1:
        # One iteration (UORO on one row) fails in tf.vectorized_map (an AddN
        # of mismatched shapes in an embedding's gradient, TF 2.21): map one
        # repeated row more, and drop its product.
        elements = tuple(tf.concat([e, e[:1]], 0) for e in elements)
      products = vectorize.map_rows(self._eager_maps, part, entry,
                                    elements)[:rows * size]
      width = sum(int(v.shape.num_elements()) for v in variables)
      immediate.append(tf.reshape(products, tf.stack([rows, size, width])))
    return immediate

  def _step(self, inputs, targets, flat, influence, noise, normalizer, has_loss):
    """One step (``has_loss``: 1 or 0, or per row ``[B]``) from the flat state ``s_{t−1}`` with its influence ``M_{t−1}``:
    ``(s_t, M_t, direct gradients, flat gradient through the state, loss
    sum)``; the step's gradient is the direct one plus the other, reshaped
    (``_combine``)."""
    variables = self.model_variables
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(flat)
      outputs, new_flat = self._one_step(inputs, flat)
      probes = None if self.per_row else self._probes(new_flat, noise)
      objective, loss_sum = self.objective(outputs, targets, normalizer,
                                           weights=has_loss)
    direct = densify(self.gradient(tape, objective, variables), variables)
    through_state = self._through_state(
        tape.gradient(objective, flat, unconnected_gradients=_ZERO), influence)
    jacobian = self._state_jacobian(tape, inputs, flat, new_flat, influence)
    immediate = self._immediate(tape, probes, inputs, flat, noise)
    del tape
    influence = self._advance(jacobian, immediate, influence, noise)
    return new_flat, influence, direct, through_state, loss_sum

  def _combine(self, direct, through_state):
    """The gradients per variable: ``direct`` plus the flat ``[|θ|]``
    ``through_state`` split into the variables' shapes."""
    variables = self.model_variables
    pieces = tf.split(through_state, [int(v.shape.num_elements())
                                      for v in variables])
    return [d + tf.reshape(p, v.shape)
            for d, p, v in zip(direct, pieces, variables)]

  def _window(self, segment, carried, start, end, normalizer):
    """Steps ``[start, end)`` per replica: ``((state, influence), (summed
    gradients, loss sum))``."""
    inputs, targets = segment
    length = tf.shape(inputs)[1]
    terminal = self.task.readout == task_base.TERMINAL
    state, influence, noise = carried
    last = length - 1
    if terminal and self.task.masked:  # Each row's loss at its own last step.
      last = tf.reduce_sum(tf.cast(masking.step_mask(inputs), tf.int32), 1) - 1

    def step(t, flat, influence, direct_total, through_total, loss_total):
      has_loss = tf.cast(tf.equal(t, last), tf.float32) if terminal else 1.0
      # A static length of 1: the step (_one_step) is straight-line code.
      step_inputs = tf.expand_dims(tf.gather(inputs, t, axis=1), 1)
      new_flat, new_influence, direct, through_state, loss_sum = self._step(
          step_inputs, self.window_targets(targets, t, t + 1), flat,
          influence, noise[:, t - start], normalizer, has_loss)
      # Keep the loop's static shapes (a batch of 1 would broadcast to None).
      flat = tf.ensure_shape(new_flat, flat.shape)
      influence = tf.nest.map_structure(
          lambda new, old: tf.ensure_shape(new, old.shape), new_influence,
          influence)
      # The two parts are summed separately, one addition each per step. Their
      # tree of additions was rewritten by Grappler into an accumulation through
      # temporary variables (AddOpsRewrite_add_*/tmp_var), which failed with
      # ALREADY_EXISTS on the second call (LSTM 64, embedding 64, 4 rows).
      return (t + 1, flat, influence,
              [total + d for total, d in zip(direct_total, direct)],
              through_total + through_state, loss_total + loss_sum)

    _, flat, influence, direct, through_state, loss_sum = tf.while_loop(
        lambda t, *_: t < end, step,
        (start, self._flat(state), influence,
         zeros_like_variables(self.model_variables),
         tf.zeros([self.num_parameters]), tf.constant(0.0)))
    gradients = self._combine(direct, through_state)
    return (self._nest(flat), influence, noise), (gradients, loss_sum)

  def _initial_influence(self, rows, train):
    if train and self.influence is not None:
      return tf.nest.map_structure(tf.identity, self.influence)
    return self._zero_influence(rows)

  def _windows(self, segment, state, train):
    """Every window of the segment; ``(state, totals)``: train applies each
    window's update (``loss_sum, grad_norm_sum, updates``), estimates sum the
    gradients."""
    length = tf.shape(segment[0])[1]
    window_ends = self.fixed_window_ends(length, tf.constant(self.window))
    if self.task.readout == task_base.TERMINAL:  # One update, at the loss.
      window_ends = length[None]
    normalizer = self.window if train else 1

    def body(index, segment, carried, start, end, totals):
      del index
      # The window's draws for every row, split over the replicas as
      # ``carried`` is (so one replica and several draw the same).
      noise = self.replicas.shard(self._noise(key, rows, start, end))
      (state, influence, _), (gradients, loss_sum) = self.run_window(
          lambda segment, carried: self._window(segment, carried, start, end,
                                                normalizer), segment,
          (*carried, noise), gradients_first=train)
      carried = (state, influence)
      if not train:
        return carried, [t + g for t, g in zip(totals, gradients)]
      norm = self.apply_gradients(gradients, loss=loss_sum)
      loss_total, norm_total, updates = totals
      return carried, (loss_total + loss_sum, norm_total + norm, updates + 1.0)

    zero = tf.constant(0.0)
    totals = ((zero, zero, zero) if train
              else zeros_like_variables(self.model_variables))
    rows = tf.shape(segment[0])[0]
    key = self._draw_key(train)
    carried = (state, self._initial_influence(rows, train))
    (state, influence), totals = self.for_each_window(
        segment, carried, window_ends, body, totals)
    if train and self.influence is not None:
      tf.nest.map_structure(lambda v, x: v.assign(x), self.influence, influence)
    return state, influence, totals

  def _train_segment(self, segment, state):
    state, influence, (loss_sum, norm_sum, updates) = self._windows(
        segment, state, train=True)
    return state, self.base_metrics(
        segment, loss_sum, norm_sum, updates,
        influence_norm=tf.linalg.global_norm(tf.nest.flatten(influence)))

  def _estimate_gradients(self, segment, state):
    """The exact gradient of the segment's loss from ``state`` (zero influence
    at the segment's start, as full BPTT over the segment)."""
    state, _, gradients = self._windows(segment, state, train=False)
    return gradients, state


def flat_jacobian(jacobians, variables, leading):
  """``tape.jacobian``'s list (one ``leading + variable shape`` per variable,
  ``None`` where unconnected) as one ``leading + [Σ|θ_i|]`` tensor, zeros for
  the unconnected. (``unconnected_gradients=ZERO`` in ``tape.jacobian`` fails
  in TF 2.21.)"""
  leading = tf.convert_to_tensor(leading, tf.int32)
  shape = lambda v: tf.concat([leading, [v.shape.num_elements()]], 0)
  return tf.concat([tf.zeros(shape(v)) if j is None else tf.reshape(j, shape(v))
                    for j, v in zip(jacobians, variables)], axis=-1)

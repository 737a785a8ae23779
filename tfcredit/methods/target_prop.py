"""Blocked target propagation (Wiseman et al. 2017).

The hidden state at the start of every block of ``B`` steps is a free variable
``h_b``; inside a block the state follows the recurrence from it (BPTT within the
block), and the block's predicted final state ``ĥ_{b+1}`` is tied to the next free
variable by the augmented loss of Eq. 7::

    L_aug(H, θ, U) = Σ_t ℓ_t + (λ/2)·Σ_b ‖h_{b+1} − ĥ_{b+1} + u_b‖²

Solvers (Section 3): ADMM = ``h_steps`` gradient steps on ``H``, then
``theta_steps`` on ``θ``, then dual ascent ``u ← u + α_u·∇_u L_aug = u +
α_u·λ·(h − ĥ + u)``; the penalty method (PM) skips the dual step; the augmented
Lagrangian method (ALM) takes joint steps on ``(H, θ)`` (``theta_steps`` of
them), then the dual step.

Layout. An update covers ``m = blocks_per_update`` consecutive blocks of one
minibatch of ``R`` stream columns. All of them run as ONE batched unroll: the
inputs ``[R, m·B]`` become ``[m·R, B]`` (blocks stacked on the batch axis,
block-major) and the initial states are ``[h_0; h_1; …; h_{m−1}]``. The free
variables of an update are held as ``m + 1`` slots per state tensor (``[m + 1,
R, units]``, the same nest as ``model.initial_state``, so an LSTM has h AND c of
every layer): slot ``s`` is the state at the update's boundary ``s`` (before block
``s``; slot ``m`` after the last block). Slot 0 is the carried state in minibatch
mode and the free variable of the update's first block in batch mode; slot ``m``
exists in batch mode only (the next update's first variable, fixed here, so the
last block's ``ĥ`` is constrained too).

Modes. ``'minibatch'`` (Section 4.1, the paper's Table 1 middle): the interior
variables of the current minibatch live in ``minibatch_states`` and are initialised
before the ``H``-steps by a forward pass under the current ``θ``
(``h_init='forward'``) or at zero; the ``H``-optimizer's slots restart at every
minibatch, as in the authors' code. ``'batch'``: the variables (and duals, and
Adagrad accumulators) of the whole training stream, ``[N_blocks − 1, R, units]``
per state tensor, persist across epochs and are saved in checkpoints; a
boundary's row is read and written by the update that contains it, whose
position in the stream is the method variable ``block_position`` (reset when a
new epoch starts, advanced by each call). In epoch 0 ``h_init='forward'`` sets
the rows from the forward pass on their first visit.

Carried state. Minibatch mode with ``h_init='forward'`` carries the forward
pass's final state to the next update (the model's own state, as truncated BPTT
carries it); otherwise the carried state is the last block's ``ĥ`` from the
update's last unroll (in batch mode it is the ``ĥ`` that the next update's first
free variable is tied to).

Duals. ``'per_minibatch'`` (the authors' code): ``u = 0`` at every minibatch, so
the dual step has no effect and ADMM behaves as the penalty method.
``'persistent'``: one dual per stream boundary, kept across minibatches and
epochs (always the case in batch mode).

Scales. The ``H``-steps follow the gradient of Eq. 7 itself (summed losses, not
averaged over the batch: each row's variables are separate, so a step size does
not depend on the batch size); the ``θ``-steps follow Eq. 7 divided by
``rows × nominal window`` (``blocks_per_update·block_size``), the shared loss
convention of ``tfcredit.methods.base``, penalty included.
``estimate_gradients`` returns ``∇θ`` of Eq. 7 divided by the rows, after the
``H``-steps, without moving ``θ`` or any stored variable. With these scales the
Appendix A.1 identity holds as stated: penalty method, forward initialisation,
one plain gradient step of size ``η`` on ``H``: the penalty's ``θ``-gradient is
``ηλ`` times the BPTT gradient that crosses the block boundaries.

The authors' code divides the loss by the block size (``λ_theirs·B = λ_here``)
and splits the LSTM state off by one (not copied). Several replicas are not
supported (the per-row variables would need sharded writes): the constructor
refuses them.
"""

import math
from typing import Optional

import tensorflow as tf

from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.methods import base
from tfcredit.tasks import base as task_base

SOLVERS = ('admm', 'penalty', 'alm')
H_INITS = ('forward', 'zeros')
DUALS = ('per_minibatch', 'persistent')
MODES = ('minibatch', 'batch')
H_OPTIMIZERS = ('sgd', 'adagrad')
# Torch's optim.adagrad (the authors' code): accumulators start at 0.
_ADAGRAD_EPSILON = 1e-10


def _non_negative(name, value) -> float:
  return validation.finite_number(f'TargetProp.{name}', value, low=0.0,
                                  low_inclusive=True)


def to_blocks(values, blocks, block_length):
  """``[R, m·B, ...]`` → ``[m·R, B, ...]``: block ``b`` of row ``r`` is row ``b·R + r``."""
  shape = tf.shape(values)
  rest = shape[2:]
  values = tf.reshape(values, tf.concat([[shape[0], blocks, block_length], rest], 0))
  rank = values.shape.rank
  values = tf.transpose(values, [1, 0] + list(range(2, rank)))
  return tf.reshape(values, tf.concat([[blocks * shape[0], block_length], rest], 0))


class TargetProp(base.Method):
  """Blocked target propagation with ADMM, the penalty method or ALM.

  ``train_segment`` metrics: the base ones (``loss_sum`` is the prediction loss at
  the ``H`` initialisation: with ``h_init='forward'`` the model's own loss, as
  truncated BPTT reports it) plus ``loss_before_h_steps_sum`` and
  ``loss_after_h_steps_sum`` (summed prediction losses), ``penalty_sum`` (the
  summed penalty of Eq. 7), ``violation_sq_sum`` (``Σ‖h − ĥ‖²``), ``dual_sq_sum``
  (``Σ‖u‖²``) and ``constraints`` (constrained boundaries × rows), measured at
  the last evaluation of each update (after the dual step when there is one).
  TensorBoard: ``method/loss_before_h_steps``, ``method/loss_after_h_steps`` and
  ``method/penalty`` per token, ``method/constraint_violation`` and
  ``method/dual_norm`` (root mean square over boundaries of ``‖h − ĥ‖`` and
  ``‖u‖``).
  """

  def __init__(self, *, model, task, optimizer, block_size: int = 10,
               blocks_per_update: int = 32, h_steps: int = 1,
               theta_steps: int = 1, penalty: float = 1.0,
               solver: str = 'admm', dual_lr: float = 1.0,
               h_optimizer: str = 'adagrad', h_learning_rate: float = 0.01,
               h_init: str = 'forward', duals: str = 'per_minibatch',
               mode: str = 'minibatch', window: Optional[int] = None,
               updates_per_call: int = 1, batch_size: Optional[int] = None,
               clip_norm: Optional[float] = None, use_tf_function: bool = True,
               name: Optional[str] = None):
    """Binds the method.

    Args:
      model: the model (per-step readout).
      task: the task (stream, or episodic with per-step losses).
      optimizer: the Keras optimizer of ``θ`` (the paper: Adagrad).
      block_size: ``B``, steps per block (the authors' code: 10; Table 1: 5, 10,
        20). ``B = 1`` is plain TPROP.
      blocks_per_update: blocks per parameter update and batched unroll (the
        authors' code: 32 consecutive blocks).
      h_steps: gradient steps on ``H`` per update (Table 1: 1, 2, 5; 0 is the
        Table 2 ablation). Unused by ALM.
      theta_steps: gradient steps on ``θ`` per update (Table 3: 1); ALM's joint
        steps.
      penalty: ``λ`` of Eq. 7 (Table 3 grid: 1, 0.1, 0.01); 0 is the Table 2
        ablation.
      solver: ``'admm'`` (the paper's reported solver), ``'penalty'`` or ``'alm'``.
      dual_lr: ``α_u`` of the dual step (Table 3 grid: 1, 0.1, 0.01).
      h_optimizer: ``'adagrad'`` (the authors' code; fresh accumulators every
        minibatch in minibatch mode) or ``'sgd'`` (plain gradient descent, the
        setting of Appendix A.1).
      h_learning_rate: step size of the ``H``-steps (Table 3's grid: 0.1,
        0.01, 0.001; the authors' code uses 1). Default 0.01: with Adagrad
        restarted every minibatch the first H-step moves every coordinate of
        every free state by exactly this much, whatever the gradient's size;
        0.1 moves a GRU-200 state (in (-1, 1)) by ‖Δh‖ ≈ 1.4 and blew up PTB
        training within 5 updates, 0.01 and 0.001 trained.
      h_init: ``'forward'`` (the paper, Section 4.1) or ``'zeros'``.
      duals: ``'per_minibatch'`` (the authors' code: reset to 0 every minibatch)
        or ``'persistent'``; batch mode always keeps them.
      mode: ``'minibatch'`` (Table 1, middle) or ``'batch'`` (Table 1, left:
        variables for the whole training stream).
      window: optional steps per update instead of ``blocks_per_update``; must be a
        whole number of blocks.
      updates_per_call: stream tasks: updates per ``train_segment`` call.
      batch_size: the training columns (passed by the trainer); required by batch
        mode and persistent duals, whose variables cover the training stream.
      clip_norm: global-norm clipping of the ``θ`` gradient (the authors: 0.5),
        or None.
      use_tf_function: compile (turn off to debug eagerly).
      name: module name.

    Raises:
      ConfigurationError: an argument is out of range or unsupported.
    """
    self.block_size = validation.integer('TargetProp.block_size', block_size, 1)
    if window is not None:
      window = validation.integer('TargetProp.window', window, 1)
      if window % self.block_size:
        raise ConfigurationError(
            f'TargetProp.window={window} is not a whole number of blocks of '
            f'block_size={self.block_size}: use a multiple of {self.block_size}')
      blocks_per_update = window // self.block_size
    self.blocks_per_update = validation.integer('TargetProp.blocks_per_update',
                                                blocks_per_update, 1)
    self.h_steps = validation.integer('TargetProp.h_steps', h_steps, 0)
    self.theta_steps = validation.integer('TargetProp.theta_steps', theta_steps, 1)
    self.penalty = _non_negative('penalty', penalty)
    self.dual_lr = _non_negative('dual_lr', dual_lr)
    self.h_learning_rate = _non_negative('h_learning_rate', h_learning_rate)
    self.solver = validation.one_of('TargetProp.solver', solver, SOLVERS)
    self.h_optimizer = validation.one_of('TargetProp.h_optimizer', h_optimizer,
                                         H_OPTIMIZERS)
    self.h_init = validation.one_of('TargetProp.h_init', h_init, H_INITS)
    self.duals = validation.one_of('TargetProp.duals', duals, DUALS)
    self.mode = validation.one_of('TargetProp.mode', mode, MODES)
    self.updates_per_call = validation.integer('TargetProp.updates_per_call',
                                               updates_per_call, 1)
    if task.readout != task_base.PER_STEP:
      raise ConfigurationError(
          f'TargetProp needs per-step losses; task {task.name!r} has a '
          f'{task.readout!r} readout: use truncated BPTT or ARTBP for it')
    if task.regime == task_base.EPISODIC:
      sequence_length = task.batch('train', 0, 0, 1)[0].shape[1]
      if sequence_length % self.block_size:
        raise ConfigurationError(
            f'TargetProp.block_size={self.block_size} does not divide the '
            f'sequence length {sequence_length} of task {task.name!r}: every '
            'window must be a whole number of blocks; choose a divisor')
    stored_duals = self.mode == 'batch' or self.duals == 'persistent'
    if stored_duals and task.regime != task_base.STREAM:
      raise ConfigurationError(
          f"TargetProp mode={self.mode!r}, duals={self.duals!r} keeps variables "
          f'for a training stream; task {task.name!r} is episodic: use '
          "mode='minibatch', duals='per_minibatch'")
    if stored_duals and batch_size is None:
      raise ConfigurationError(
          f"TargetProp mode={self.mode!r}, duals={self.duals!r} needs batch_size "
          '(the trainer passes train.batch_size): pass batch_size=')
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
      raise ConfigurationError(
          'TargetProp does not support several replicas yet (its per-row hidden '
          'state variables would need sharded writes): train with one device '
          '(--strategy=default)')
    super().__init__(model=model, task=task, optimizer=optimizer,
                     clip_norm=clip_norm, use_tf_function=use_tf_function,
                     name=name or 'TargetProp')
    self.stored_states = self.mode == 'batch'
    self.stored_duals = stored_duals
    self.batch_size = batch_size
    variable = lambda value, name: tf.Variable(value, dtype=tf.int64,
                                               trainable=False, name=name)
    self.block_position = variable(0, 'block_position')  # Stream block index.
    self.epoch = variable(-1, 'epoch')
    self.num_boundaries = 0
    spec = model.state_spec()
    if stored_duals:
      length = task.stream('train', batch_size).shape[1] - 1
      self.num_boundaries = max(-(-length // self.block_size) - 1, 0)

      def stream_variables(name, trainable):
        return tf.nest.map_structure(
            lambda s: tf.Variable(
                tf.zeros([self.num_boundaries, batch_size, s.shape[-1]]),
                trainable=trainable, name=name), spec)
      self.dual_variables = stream_variables('duals', False)
      if self.stored_states:
        self.hidden_states = stream_variables('hidden_states', True)
        if self.h_optimizer == 'adagrad':
          self.h_accumulators = stream_variables('h_accumulators', False)
    if not self.stored_states:
      # The current minibatch's interior variables, [m - 1, rows, units].
      self.minibatch_states = tf.nest.map_structure(
          lambda s: tf.Variable(tf.zeros([0, 0, s.shape[-1]]),
                                shape=tf.TensorShape(None), trainable=True,
                                name='minibatch_states'), spec)

  # ------------------------------------------------------------- public API
  metric_reductions = {}

  def segment_length(self) -> Optional[int]:
    if self.task.regime != task_base.STREAM:
      return None
    return self.updates_per_call * self.blocks_per_update * self.block_size

  def on_epoch_start(self, epoch: int) -> None:
    """A new epoch starts at the stream's first block; a resume keeps its place."""
    if int(self.epoch.numpy()) != epoch:
      self.epoch.assign(epoch)
      self.block_position.assign(0)

  def summaries(self, totals):
    values = {}
    count = float(totals.get('count', 0.0))
    if count > 0:
      for key in ('loss_before_h_steps', 'loss_after_h_steps', 'penalty'):
        values[key] = float(totals[key + '_sum']) / count
    constraints = float(totals.get('constraints', 0.0))
    if constraints > 0:
      values['constraint_violation'] = math.sqrt(
          float(totals['violation_sq_sum']) / constraints)
      values['dual_norm'] = math.sqrt(float(totals['dual_sq_sum']) / constraints)
    return values

  # ------------------------------------------------------------ the windows
  def _window_ends(self, length):
    """Updates of ``blocks_per_update`` blocks; then the remaining whole blocks;
    then (a stream's end) a last block shorter than ``block_size``."""
    span = self.blocks_per_update * self.block_size
    full = tf.range(1, length // span + 1) * span
    last_full = (length // span) * span
    whole = last_full + ((length - last_full) // self.block_size) * self.block_size
    extra = tf.boolean_mask(tf.stack([whole, length]),
                            tf.stack([whole > last_full, length > whole]))
    return tf.concat([full, extra], axis=0)

  def _train_segment(self, segment, state):
    return self._segment(segment, state, train=True)

  def _estimate_gradients(self, segment, state):
    return self._segment(segment, state, train=False)

  def _segment(self, segment, state, train):
    length = tf.shape(segment[0])[1]
    window_ends = self._window_ends(length)
    nominal = self.blocks_per_update * self.block_size
    zero = tf.constant(0.0)
    if train:
      accumulators = {key: zero for key in self._metric_keys()}
    else:
      accumulators = base.zeros_like_variables(self.trainable_variables)

    def body(index, segment, state, start, end, accumulators):
      del index
      inputs, targets = segment
      first_block = self.block_position + tf.cast(start // self.block_size,
                                                  tf.int64)
      state, result = self._update(inputs[:, start:end], targets[:, start:end],
                                   state, first_block, nominal, train)
      if train:
        return state, {k: accumulators[k] + result[k] for k in accumulators}
      return state, [a + g for a, g in zip(accumulators, result)]

    state, accumulators = self.for_each_window(segment, state, window_ends, body,
                                               accumulators)
    if not train:
      return accumulators, state
    blocks = (length + self.block_size - 1) // self.block_size
    self.block_position.assign_add(tf.cast(blocks, tf.int64))
    metrics = dict(accumulators)
    metrics['count'] = task_base.count_of(self.task, segment[1])
    return state, metrics

  @staticmethod
  def _metric_keys():
    return ('loss_sum', 'grad_norm_sum', 'updates', 'loss_before_h_steps_sum',
            'loss_after_h_steps_sum', 'penalty_sum', 'violation_sq_sum',
            'dual_sq_sum', 'constraints')

  # -------------------------------------------------------------- one update
  def _forward_states(self, inputs, carried, blocks, block_length):
    """The sequential states at the ``blocks + 1`` boundaries, ``[m + 1, R, u]``."""
    arrays = tf.nest.map_structure(
        lambda s: tf.TensorArray(tf.float32, size=blocks + 1).write(0, s), carried)

    def step(index, state, arrays):
      start = index * block_length
      state = self._core_forward(inputs[:, start:start + block_length], state)
      arrays = tf.nest.map_structure(lambda a, s: a.write(index + 1, s),
                                     arrays, state)
      return index + 1, state, arrays

    _, _, arrays = tf.while_loop(lambda index, *_: index < blocks, step,
                                 (tf.constant(0), carried, arrays))
    return tf.nest.map_structure(lambda a: a.stack(), arrays)

  def _core_forward(self, inputs, state):
    """The final state of a window, without the readout (the forward pass only
    needs states; a language model's softmax layer would dominate its cost)."""
    _, state = self.model.unroll(inputs, state, training=True, readout=False)
    return tf.nest.map_structure(tf.stop_gradient, state)

  def _gather(self, variables, rows, valid):
    """Rows of stream variables (zero where ``valid`` is false)."""
    safe = tf.clip_by_value(rows, 0, max(self.num_boundaries - 1, 0))
    mask = tf.reshape(tf.cast(valid, tf.float32), [-1, 1, 1])
    if self.num_boundaries == 0:
      return tf.nest.map_structure(
          lambda v: tf.zeros(tf.concat([tf.shape(rows), tf.shape(v)[1:]], 0)),
          variables)
    return tf.nest.map_structure(lambda v: tf.gather(v, safe) * mask, variables)

  def _scatter(self, variables, rows, valid, values):
    if self.num_boundaries == 0:
      return
    indices = tf.expand_dims(tf.boolean_mask(rows, valid), 1)
    tf.nest.map_structure(
        lambda v, x: v.scatter_nd_update(indices, tf.boolean_mask(x, valid)),
        variables, values)

  def _evaluate(self, x, y, carried, free, blocks, first_free):
    """One batched unroll of every block of an update.

    Returns:
      ``(loss, predicted, last)``: the summed prediction loss, ``ĥ`` at every
      slot (``[m + 1, R, units]`` per state tensor; slot 0 is the carried state,
      gradient stopped) and the last block's ``ĥ``.
    """
    rows = tf.shape(tf.nest.flatten(carried)[0])[0]

    def initial(free_leaf, carried_leaf):
      first = tf.where(first_free, free_leaf[0], carried_leaf)
      stacked = tf.concat([first[None], free_leaf[1:blocks]], axis=0)
      return tf.reshape(stacked, [-1, tf.shape(free_leaf)[-1]])

    initial_state = tf.nest.map_structure(initial, free, carried)
    outputs, final = self.model.unroll(x, initial_state, training=True)
    loss = tf.reduce_sum(self.task.losses(outputs, y))
    predicted = tf.nest.map_structure(
        lambda f, c: tf.concat([tf.stop_gradient(c)[None],
                                tf.reshape(f, [blocks, rows, -1])], axis=0),
        final, carried)
    last = tf.nest.map_structure(lambda p: p[blocks], predicted)
    return loss, predicted, last

  def _constraints(self, free, predicted, duals, weights):
    """``((λ/2)·Σ w‖h − ĥ + u‖², Σ w‖h − ĥ‖²)`` over the weighted slots."""
    weights = tf.reshape(weights, [-1, 1, 1])
    flat = list(zip(tf.nest.flatten(free), tf.nest.flatten(predicted),
                    tf.nest.flatten(duals)))
    penalty = tf.add_n([tf.reduce_sum(weights * tf.square(h - p + u))
                        for h, p, u in flat])
    violation = tf.add_n([tf.reduce_sum(weights * tf.square(h - p))
                          for h, p, _ in flat])
    return 0.5 * self.penalty * penalty, violation

  def _h_step(self, free, gradients, accumulators, optimized):
    mask = tf.reshape(optimized, [-1, 1, 1])
    if self.loss_scale is not None:
      # mixed_float16: an H-step whose scaled gradients overflowed moves nothing
      # (the θ-step's window lowers the scale).
      finite = tf.math.is_finite(tf.linalg.global_norm(tf.nest.flatten(gradients)))
      gradients = tf.nest.map_structure(
          lambda g: tf.where(finite, g, tf.zeros_like(g)), gradients)
    gradients = tf.nest.map_structure(lambda g: g * mask, gradients)
    if self.h_optimizer == 'sgd':
      free = tf.nest.map_structure(lambda h, g: h - self.h_learning_rate * g,
                                   free, gradients)
      return free, accumulators
    accumulators = tf.nest.map_structure(lambda a, g: a + tf.square(g),
                                         accumulators, gradients)
    free = tf.nest.map_structure(
        lambda h, g, a: h - self.h_learning_rate * g /
        (tf.sqrt(a) + _ADAGRAD_EPSILON), free, gradients, accumulators)
    return free, accumulators

  def _update(self, inputs, targets, carried, first_block, nominal, train):
    """One update over ``m`` whole blocks (or one short block at a stream's end).

    Returns:
      ``(carried state, metrics)`` when training, ``(carried state, gradients)``
      when estimating.
    """
    width = tf.shape(inputs)[1]
    block_length = tf.minimum(self.block_size, width)
    blocks = width // block_length
    rows = tf.shape(inputs)[0]
    x = to_blocks(inputs, blocks, block_length)
    y = to_blocks(targets, blocks, block_length)
    boundary_rows = first_block - 1 + tf.range(tf.cast(blocks, tf.int64) + 1)
    valid = tf.logical_and(boundary_rows >= 0, boundary_rows < self.num_boundaries)
    interior = tf.concat([[0.0], tf.ones([blocks - 1]), [0.0]], axis=0)
    if self.stored_states:
      first_free = tf.cast(first_block > 0, tf.float32)
      next_active = tf.cast(valid[-1], tf.float32)
      active = interior + tf.concat([[first_free], tf.zeros([blocks])], 0)
      active += tf.concat([tf.zeros([blocks]), [next_active]], 0)
      optimized = active - tf.concat([tf.zeros([blocks]), [next_active]], 0)
    else:
      active = optimized = interior
    # Constraints whose ĥ is computed here: dual steps and metrics (each
    # boundary once per pass).
    measured = active * tf.concat([[0.0], tf.ones([blocks])], 0)

    units = lambda leaf: tf.shape(leaf)[-1]
    zeros = tf.nest.map_structure(
        lambda c: tf.zeros(tf.stack([blocks + 1, rows, units(c)])), carried)
    forward = lambda: self._forward_states(inputs, carried, blocks, block_length)
    if self.stored_states:
      stored = self._gather(self.hidden_states, boundary_rows, valid)
      if self.h_init == 'forward':
        free = tf.cond(self.epoch <= 0, forward, lambda: stored)
      else:
        free = stored
    else:
      free = forward() if self.h_init == 'forward' else zeros
    # Minibatch mode with forward initialisation carries the model's own state
    # (as truncated BPTT does); otherwise the last block's ĥ.
    carry_forward = not self.stored_states and self.h_init == 'forward'
    forward_last = tf.nest.map_structure(lambda f: f[blocks], free)
    duals = (self._gather(self.dual_variables, boundary_rows, valid)
             if self.stored_duals else zeros)
    if self.stored_states and self.h_optimizer == 'adagrad':
      accumulators = self._gather(self.h_accumulators, boundary_rows, valid)
    else:
      accumulators = zeros  # Fresh H-optimizer slots every minibatch.

    first_free = active[0] > 0
    evaluate = lambda free: self._evaluate(x, y, carried, free, blocks, first_free)
    thetas = self.trainable_variables
    theta_scale = 1.0 / (tf.cast(rows, tf.float32) *
                         tf.cast(nominal if train else 1, tf.float32))

    def h_step(index, free, accumulators, loss_before):
      with tf.GradientTape() as tape:
        tape.watch(free)
        loss, predicted, _ = evaluate(free)
        penalty, _ = self._constraints(free, predicted, duals, active)
        objective = loss + penalty  # Eq. 7 itself.
      gradients = self.gradient(tape, objective, free,
                                unconnected_gradients=tf.UnconnectedGradients.ZERO)
      free, accumulators = self._h_step(free, gradients, accumulators, optimized)
      loss_before = tf.where(index == 0, loss, loss_before)
      return index + 1, free, accumulators, loss_before

    zero = tf.constant(0.0)
    loss_before = zero
    if self.solver != 'alm' and self.h_steps > 0:
      _, free, accumulators, loss_before = tf.while_loop(
          lambda index, *_: index < self.h_steps, h_step,
          (tf.constant(0), free, accumulators, loss_before))

    if not train:
      with tf.GradientTape() as tape:
        loss, predicted, last = evaluate(free)
        penalty, _ = self._constraints(free, predicted, duals, active)
        objective = (loss + penalty) * theta_scale
      if carry_forward:
        last = forward_last
      return last, base.densify(self.gradient(tape, objective, thetas), thetas)

    joint = self.solver == 'alm'

    def theta_step(index, free, accumulators, totals):
      with tf.GradientTape() as tape:
        if joint:
          tape.watch(free)
        loss, predicted, last = evaluate(free)
        penalty, _ = self._constraints(free, predicted, duals, active)
        objective = (loss + penalty) * theta_scale
      if joint:
        gradients, free_gradients = self.gradient(
            tape, objective, (thetas, free),
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        free_gradients = tf.nest.map_structure(lambda g: g / theta_scale,
                                               free_gradients)
        free, accumulators = self._h_step(free, free_gradients, accumulators,
                                          optimized)
      else:
        gradients = self.gradient(tape, objective, thetas)
      norm = self.apply_gradients(gradients)
      # Metrics where ĥ is computed in this update (each boundary once).
      measured_penalty, violation = self._constraints(
          free, tf.nest.map_structure(tf.stop_gradient, predicted), duals,
          measured)
      first_loss, _, norm_sum, _, _, _ = totals
      first_loss = tf.where(index == 0, loss, first_loss)
      totals = (first_loss, loss, norm_sum + norm, measured_penalty, violation,
                tf.nest.map_structure(tf.stop_gradient, last))
      return index + 1, free, accumulators, totals

    totals = (zero, zero, zero, zero, zero, carried)
    _, free, accumulators, totals = tf.while_loop(
        lambda index, *_: index < self.theta_steps, theta_step,
        (tf.constant(0), free, accumulators, totals))
    loss_after, _, norm_sum, penalty, violation, last = totals
    if joint or self.h_steps == 0:
      loss_before = loss_after

    dual_step = self.solver != 'penalty' and self.stored_duals
    if dual_step:  # ĥ under the new θ: one more batched forward pass.
      _, predicted, last = evaluate(free)
      weights = tf.reshape(measured, [-1, 1, 1])
      duals = tf.nest.map_structure(
          lambda u, h, p: u + weights * self.dual_lr * self.penalty * (h - p + u),
          duals, free, predicted)
      penalty, violation = self._constraints(free, predicted, duals, measured)
    dual_sq = tf.add_n([tf.reduce_sum(tf.reshape(measured, [-1, 1, 1]) *
                                      tf.square(u))
                        for u in tf.nest.flatten(duals)])

    if self.stored_states:
      self._scatter(self.hidden_states, boundary_rows, valid, free)
      if self.h_optimizer == 'adagrad':
        self._scatter(self.h_accumulators, boundary_rows, valid, accumulators)
    else:
      tf.nest.map_structure(lambda v, f: v.assign(f[1:blocks]),
                            self.minibatch_states, free)
    if dual_step:
      self._scatter(self.dual_variables, boundary_rows, valid, duals)

    metrics = {
        'loss_sum': loss_before, 'grad_norm_sum': norm_sum,
        'updates': tf.constant(float(self.theta_steps)),
        'loss_before_h_steps_sum': loss_before,
        'loss_after_h_steps_sum': loss_after, 'penalty_sum': penalty,
        'violation_sq_sum': violation, 'dual_sq_sum': dual_sq,
        'constraints': tf.reduce_sum(measured) * tf.cast(rows, tf.float32)}
    if carry_forward:
      last = forward_last
    return tf.nest.map_structure(tf.stop_gradient, last), metrics

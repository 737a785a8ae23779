"""Blocked target propagation (Wiseman et al. 2017, Eq. 7).

The state at the start of every block of ``B`` steps is a free variable ``h_b``;
each block's predicted final state ``ĥ_{b+1}`` is tied to the next one by
``L_aug(H, θ, U) = Σ_t ℓ_t + (λ/2)·Σ_b ‖h_{b+1} − ĥ_{b+1} + u_b‖²``, solved by ADMM
(``h_steps`` H-steps, ``theta_steps`` θ-steps, a dual step), the penalty method
(no dual step) or ALM (joint steps). This module owns the update's named steps;
the blocked layout and boundary storage are ``tfcredit.methods.blocks``; modes,
scales, duals and the carried state are in docs/methods/target_prop.md. The
H-steps follow Eq. 7 itself, the θ-steps Eq. 7 under the shared loss convention,
so the Appendix A.1 identity holds as stated.
"""

import math
from typing import Optional

import tensorflow as tf

from tfcredit import validation
from tfcredit.errors import ConfigurationError
from tfcredit.methods import base
from tfcredit.methods import registry
from tfcredit.methods import blocks as blocks_lib
from tfcredit.methods.replicas import densify, zeros_like_variables
from tfcredit.tasks import base as task_base

SOLVERS = ('admm', 'penalty', 'alm')
H_INITS = ('forward', 'zeros')
DUALS = ('per_minibatch', 'persistent')
MODES = ('minibatch', 'batch')
H_OPTIMIZERS = ('sgd', 'adagrad')
_METRICS = ('loss_sum', 'grad_norm_sum', 'updates', 'loss_before_h_steps_sum',
            'loss_after_h_steps_sum', 'penalty_sum', 'violation_sq_sum',
            'dual_sq_sum', 'constraints')


@registry.register
class TargetProp(base.Method):
  """Blocked target propagation with ADMM, the penalty method or ALM.

  ``loss_sum`` is the prediction loss at the ``H`` initialisation (with
  ``h_init='forward'`` the model's own loss, as truncated BPTT reports it); the
  method's metrics (``_METRICS``) are measured at each update's last evaluation;
  docs/methods/target_prop.md, "TensorBoard".
  """

  EXAMPLE_ARGUMENTS = {'block_size': 2, 'blocks_per_update': 3}
  supports_replicas = False  # The constructor says why.

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
        0.01, 0.001; the authors' code uses 1). With Adagrad restarted every
        minibatch the first H-step moves every free coordinate by exactly this
        much (docs/methods/target_prop.md on the default).
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
      clip_norm: as in ``Method``, of the ``θ`` gradient (the authors: 0.5).
      model, task, optimizer, use_tf_function, name: as in ``Method`` (the
        optimizer is ``θ``'s; the paper: Adagrad).

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
    self.penalty = validation.non_negative('TargetProp.penalty', penalty)
    self.dual_lr = validation.non_negative('TargetProp.dual_lr', dual_lr)
    self.h_learning_rate = validation.non_negative('TargetProp.h_learning_rate', h_learning_rate)
    self.solver = validation.one_of('TargetProp.solver', solver, SOLVERS)
    self.h_optimizer = validation.one_of('TargetProp.h_optimizer', h_optimizer,
                                         H_OPTIMIZERS)
    self.h_init = validation.one_of('TargetProp.h_init', h_init, H_INITS)
    self.duals = validation.one_of('TargetProp.duals', duals, DUALS)
    self.mode = validation.one_of('TargetProp.mode', mode, MODES)
    self.updates_per_call = validation.integer('TargetProp.updates_per_call',
                                               updates_per_call, 1)
    stored_duals = self.mode == 'batch' or self.duals == 'persistent'
    blocks_lib.check_task(task, self.block_size, self.mode, self.duals,
                          stored_duals, batch_size)
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
    variable = lambda value, name: tf.Variable(value, dtype=tf.int64,
                                               trainable=False, name=name)
    self.block_position = variable(0, 'block_position')  # Stream block index.
    self.epoch = variable(-1, 'epoch')
    self.num_boundaries = 0
    spec = model.state_spec()
    if stored_duals:
      length = task.stream('train', batch_size).shape[1] - 1
      self.num_boundaries = max(-(-length // self.block_size) - 1, 0)
    self._store = blocks_lib.BoundaryStore(self.num_boundaries)
    if stored_duals:
      stream_variables = lambda name, trainable: self._store.variables(
          spec, batch_size, name, trainable)
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
  def _train_segment(self, segment, state):
    zero = tf.constant(0.0)
    state, totals = self._for_each_update(
        segment, state, self._train_update, {key: zero for key in _METRICS})
    blocks = (tf.shape(segment[0])[1] + self.block_size - 1) // self.block_size
    self.block_position.assign_add(tf.cast(blocks, tf.int64))
    return state, self.base_metrics(segment, **totals)

  def _estimate_gradients(self, segment, state):
    state, gradients = self._for_each_update(
        segment, state, self._estimate_update,
        zeros_like_variables(self.model_variables))
    return gradients, state

  def _for_each_update(self, segment, state, update, totals):
    """``update(inputs, targets, carried, first_block) -> (carried, values)``
    over the segment's updates, ``values`` summed into ``totals``."""
    def body(index, segment, state, start, end, totals):
      del index
      inputs, targets = segment
      first_block = self.block_position + tf.cast(start // self.block_size,
                                                  tf.int64)
      state, values = update(inputs[:, start:end], targets[:, start:end], state,
                             first_block)
      return state, tf.nest.map_structure(tf.add, totals, values)

    window_ends = blocks_lib.update_ends(
        tf.shape(segment[0])[1], self.blocks_per_update * self.block_size,
        self.block_size)
    return self.for_each_window(segment, state, window_ends, body, totals)

  # ------------------------------------------------------- one update's steps
  def _prepare(self, inputs, targets, carried, first_block):
    """An update's layout and initial free variables, duals and H-accumulators
    (zero where nothing is stored), and the forward pass's last state."""
    lay = blocks_lib.layout(inputs, targets, first_block, self.block_size,
                            self.num_boundaries, self.stored_states)
    zeros = tf.nest.map_structure(
        lambda c: tf.zeros(tf.stack([lay.blocks + 1, lay.rows, tf.shape(c)[-1]])),
        carried)
    forward = lambda: blocks_lib.forward_states(self.model, inputs, carried,
                                                lay.blocks, lay.block_length)
    gather = lambda variables: self._store.gather(variables, lay.boundary_rows,
                                                  lay.valid)
    if self.stored_states:
      stored = gather(self.hidden_states)
      free = (tf.cond(self.epoch <= 0, forward, lambda: stored)
              if self.h_init == 'forward' else stored)
    else:
      free = forward() if self.h_init == 'forward' else zeros
    forward_last = tf.nest.map_structure(lambda f: f[lay.blocks], free)
    duals = gather(self.dual_variables) if self.stored_duals else zeros
    if self.stored_states and self.h_optimizer == 'adagrad':
      accumulators = gather(self.h_accumulators)
    else:
      accumulators = zeros  # Fresh H-optimizer slots every minibatch.
    return lay, free, duals, accumulators, forward_last

  def _augmented(self, lay, carried, free, duals):
    """One batched unroll of every block of the update: ``(summed prediction
    loss, ĥ at every slot (slot 0: the carried state, gradient stopped), the
    last block's ĥ, the penalty of Eq. 7 over the active slots)``."""
    def initial(free_leaf, carried_leaf):
      first = tf.where(lay.active[0] > 0, free_leaf[0], carried_leaf)
      stacked = tf.concat([first[None], free_leaf[1:lay.blocks]], axis=0)
      return tf.reshape(stacked, [-1, tf.shape(free_leaf)[-1]])

    initial_state = tf.nest.map_structure(initial, free, carried)
    outputs, final = self.model.unroll(lay.x, initial_state, training=True)
    loss = tf.reduce_sum(self.task.losses(outputs, lay.y))
    predicted = tf.nest.map_structure(
        lambda f, c: tf.concat([tf.stop_gradient(c)[None],
                                tf.reshape(f, [lay.blocks, lay.rows, -1])], axis=0),
        final, carried)
    last = tf.nest.map_structure(lambda p: p[lay.blocks], predicted)
    penalty, _ = self._constraints(free, predicted, duals, lay.active)
    return loss, predicted, last, penalty

  def _constraints(self, free, predicted, duals, weights):
    return blocks_lib.constraints(free, predicted, duals, weights, self.penalty)

  def _h_step(self, free, gradients, accumulators, optimized):
    return blocks_lib.h_step(free, gradients, accumulators, optimized,
                             self.h_optimizer, self.h_learning_rate,
                             skip_non_finite=self.loss_scale is not None)

  def _h_steps(self, lay, carried, free, duals, accumulators):
    """``h_steps`` steps on ``H`` along Eq. 7 itself (none for ALM); returns
    ``(free, accumulators, prediction loss before the first)``."""
    if self.solver == 'alm' or self.h_steps == 0:
      return free, accumulators, tf.constant(0.0)

    def step(index, free, accumulators, loss_before):
      with tf.GradientTape() as tape:
        tape.watch(free)
        loss, _, _, penalty = self._augmented(lay, carried, free, duals)
        objective = loss + penalty  # Eq. 7 itself.
      gradients = self.gradient(tape, objective, free,
                                unconnected_gradients=tf.UnconnectedGradients.ZERO)
      free, accumulators = self._h_step(free, gradients, accumulators,
                                        lay.optimized)
      return index + 1, free, accumulators, tf.where(index == 0, loss, loss_before)

    _, free, accumulators, loss_before = tf.while_loop(
        lambda index, *_: index < self.h_steps, step,
        (tf.constant(0), free, accumulators, tf.constant(0.0)))
    return free, accumulators, loss_before

  def _theta_steps(self, lay, carried, free, duals, accumulators, theta_scale):
    """``theta_steps`` applied updates of ``θ`` (ALM: joint with ``H``) along Eq. 7
    under the loss convention; returns ``(free, accumulators, (first loss, grad
    norm sum, measured penalty, violation, last ĥ))``."""
    joint = self.solver == 'alm'
    thetas = self.model_variables

    def step(index, free, accumulators, totals):
      with tf.GradientTape() as tape:
        if joint:
          tape.watch(free)
        loss, predicted, last, penalty = self._augmented(lay, carried, free, duals)
        objective = (loss + penalty) * theta_scale
      if joint:
        gradients, free_gradients = self.gradient(
            tape, objective, (thetas, free),
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        free_gradients = tf.nest.map_structure(lambda g: g / theta_scale,
                                               free_gradients)
        free, accumulators = self._h_step(free, free_gradients, accumulators,
                                          lay.optimized)
      else:
        gradients = self.gradient(tape, objective, thetas)
      norm = self.apply_gradients(gradients)
      measured_penalty, violation = self._constraints(
          free, tf.nest.map_structure(tf.stop_gradient, predicted), duals,
          lay.measured)
      first_loss, norm_sum, _, _, _ = totals
      return index + 1, free, accumulators, (
          tf.where(index == 0, loss, first_loss), norm_sum + norm,
          measured_penalty, violation,
          tf.nest.map_structure(tf.stop_gradient, last))

    zero = tf.constant(0.0)
    _, free, accumulators, totals = tf.while_loop(
        lambda index, *_: index < self.theta_steps, step,
        (tf.constant(0), free, accumulators, (zero, zero, zero, zero, carried)))
    return free, accumulators, totals

  def _dual_step(self, lay, carried, free, duals):
    """``u ← u + α_u·λ·(h − ĥ + u)`` with ``ĥ`` under the new ``θ`` (one more
    batched forward pass); returns ``(duals, penalty, violation, last ĥ)``."""
    _, predicted, last, _ = self._augmented(lay, carried, free, duals)
    weights = tf.reshape(lay.measured, [-1, 1, 1])
    duals = tf.nest.map_structure(
        lambda u, h, p: u + weights * self.dual_lr * self.penalty * (h - p + u),
        duals, free, predicted)
    penalty, violation = self._constraints(free, predicted, duals, lay.measured)
    return duals, penalty, violation, last

  def _carried(self, last, forward_last):
    """Minibatch mode with forward initialisation carries the model's own state
    (as truncated BPTT does); otherwise the last block's ``ĥ``."""
    if not self.stored_states and self.h_init == 'forward':
      last = forward_last
    return tf.nest.map_structure(tf.stop_gradient, last)

  def _estimate_update(self, inputs, targets, carried, first_block):
    """``∇θ`` of Eq. 7 over the rows after the H-steps; nothing moves."""
    lay, free, duals, accumulators, forward_last = self._prepare(
        inputs, targets, carried, first_block)
    free, _, _ = self._h_steps(lay, carried, free, duals, accumulators)
    thetas = self.model_variables
    with tf.GradientTape() as tape:
      loss, _, last, penalty = self._augmented(lay, carried, free, duals)
      objective = (loss + penalty) * self.normalize(tf.constant(1.0), lay.rows)
    gradients = densify(self.gradient(tape, objective, thetas), thetas)
    return self._carried(last, forward_last), gradients

  def _train_update(self, inputs, targets, carried, first_block):
    """One update over ``m`` whole blocks (or one short block at a stream's end):
    H-steps, θ-steps, the dual step, then the stored variables are written."""
    lay, free, duals, accumulators, forward_last = self._prepare(
        inputs, targets, carried, first_block)
    free, accumulators, loss_before = self._h_steps(lay, carried, free, duals,
                                                    accumulators)
    theta_scale = self.normalize(tf.constant(1.0), lay.rows,
                                 self.blocks_per_update * self.block_size)
    free, accumulators, (loss_after, norm_sum, penalty, violation, last) = (
        self._theta_steps(lay, carried, free, duals, accumulators, theta_scale))
    if self.solver == 'alm' or self.h_steps == 0:
      loss_before = loss_after
    dual_step = self.solver != 'penalty' and self.stored_duals
    if dual_step:
      duals, penalty, violation, last = self._dual_step(lay, carried, free, duals)
    dual_sq = tf.add_n([tf.reduce_sum(tf.reshape(lay.measured, [-1, 1, 1]) *
                                      tf.square(u))
                        for u in tf.nest.flatten(duals)])
    scatter = lambda variables, values: self._store.scatter(
        variables, lay.boundary_rows, lay.valid, values)
    if self.stored_states:
      scatter(self.hidden_states, free)
      if self.h_optimizer == 'adagrad':
        scatter(self.h_accumulators, accumulators)
    else:
      tf.nest.map_structure(lambda v, f: v.assign(f[1:lay.blocks]),
                            self.minibatch_states, free)
    if dual_step:
      scatter(self.dual_variables, duals)
    return self._carried(last, forward_last), {
        'loss_sum': loss_before, 'grad_norm_sum': norm_sum,
        'updates': tf.constant(float(self.theta_steps)),
        'loss_before_h_steps_sum': loss_before,
        'loss_after_h_steps_sum': loss_after, 'penalty_sum': penalty,
        'violation_sq_sum': violation, 'dual_sq_sum': dual_sq,
        'constraints': tf.reduce_sum(lay.measured) * tf.cast(lay.rows, tf.float32)}

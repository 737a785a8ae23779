"""One replica and two replicas give the same update, for every method.

Two logical CPU devices (tests/conftest.py) stand in for two GPUs. Every
registered method is covered (``tfcredit.METHODS``).
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcredit
from tfcredit import testing
from tfcredit.training import trainer

from tiers import slow_except

BATCH = 4


def _stream_task():
  return tfcredit.MarkovLanguageTask(train_length=400, eval_length=100)


def _registered(cls):
  """The method with its example arguments, built as the trainer builds it."""
  example = functools.partial(cls, **cls.EXAMPLE_ARGUMENTS)
  return lambda model, task, optimizer: trainer.build_method(
      example, model, task, optimizer, BATCH)


# name -> (task factory, method factory): every registered method that supports
# replicas on a stream with its example arguments (TargetProp refuses several
# replicas: tests/methods/test_target_prop.py), and the episodic cases.
METHODS = {
    f'{name}/stream': (_stream_task, _registered(cls))
    for name, cls in tfcredit.METHODS.items() if cls.supports_replicas}
METHODS.update({
    'truncated_bptt/copy': (
        lambda: tfcredit.CopyTask(sequence_length=6),
        lambda **kw: tfcredit.TruncatedBPTT(window=5, clip_norm=0.5, **kw)),
    'truncated_bptt/adding': (
        lambda: tfcredit.AddingTask(sequence_length=12),
        lambda **kw: tfcredit.TruncatedBPTT(window=5, **kw)),
    'truncated_bptt/stream_recompute_state': (
        _stream_task,
        lambda **kw: tfcredit.TruncatedBPTT(window=4, windows_per_call=3,
                                            recompute_state='call_start', **kw)),
    'bptt/adding': (
        lambda: tfcredit.AddingTask(sequence_length=12),
        lambda **kw: tfcredit.BPTT(**kw)),
    'artbp/copy': (
        lambda: tfcredit.CopyTask(sequence_length=6),
        lambda **kw: tfcredit.ARTBP(mean_length=4, seed=3, **kw)),
    'fptt/stream_inner_steps': (
        _stream_task,
        lambda **kw: tfcredit.FPTT(windows=3, window_length=4, alpha=0.5,
                                   inner_steps=2, **kw)),
    'dni_neuronwise/stream': (
        _stream_task,
        lambda **kw: tfcredit.DNI(
            window=4, windows_per_call=3, sg_scale=1.0, batch_size=BATCH,
            synthesizer=tfcredit.NeuronwiseSynthesizer(hidden_units=4),
            use_synthetic=tfcredit.schedules.AlternatingRestarts(
                start_phase='synthetic'), **kw)),
})



def _segment(task):
  if task.regime == 'stream':
    data = task.stream('train', BATCH)
    return (tf.constant(data[:, :12]), tf.constant(data[:, 1:13]))
  inputs, targets = task.batch('train', 0, 0, BATCH)
  return tf.constant(inputs), tf.constant(targets)


def _model(task, name):
  return testing.tiny_model(
      task, seed=0, **testing.example_model_arguments(name.split('/')[0]))


def _train(strategy, name, calls=2):
  make_task, make_method = METHODS[name]
  task = make_task()
  with strategy.scope():
    model = _model(task, name)
    optimizer = testing.built_optimizer(model, keras.optimizers.Adam,
                                        learning_rate=0.01)
    method = make_method(model=model, task=task, optimizer=optimizer)
  state = model.initial_state(BATCH)
  segment = _segment(task)
  for _ in range(calls):
    state, metrics = method.train_segment(segment, state)
    if task.regime != 'stream':
      state = model.initial_state(BATCH)
  gradients, _ = method.estimate_gradients(segment, model.initial_state(BATCH))
  return ([v.numpy() for v in model.trainable_variables], tf.nest.flatten(state),
          metrics, [g.numpy() for g in gradients])


@pytest.mark.parametrize(
    'name', slow_except(sorted(METHODS), 'truncated_bptt/stream'))
def test_two_replicas_give_the_same_training_as_one(mirrored, name):
  assert mirrored.num_replicas_in_sync == 2
  one = _train(tf.distribute.get_strategy(), name)
  two = _train(mirrored, name)
  for a, b in zip(one[0], two[0]):
    np.testing.assert_allclose(a, b, atol=1e-5)
  for a, b in zip(one[1], two[1]):  # The carried state, re-assembled in order.
    np.testing.assert_allclose(a, b, atol=1e-5)
  for key in ('loss_sum', 'count', 'grad_norm_sum', 'updates'):
    np.testing.assert_allclose(float(one[2][key]), float(two[2][key]), rtol=1e-5)
  for a, b in zip(one[3], two[3]):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # The weights really moved, so the comparison is not between two no-ops.
  task = METHODS[name][0]()
  initial = _model(task, name).trainable_variables
  assert max(np.abs(a - v.numpy()).max() for a, v in zip(one[0], initial)) > 1e-3


def test_summed_gradients_live_on_every_replicas_device(mirrored):
  """Each window's gradients are summed onto the variables' devices, one copy
  per replica (no reduction to one device and copy back), and each copy is the
  global-batch gradient."""
  task = _stream_task()
  with mirrored.scope():
    model = testing.tiny_model(task, seed=0)
    optimizer = testing.built_optimizer(model, keras.optimizers.Adam,
                                        learning_rate=0.01)
    method = tfcredit.TruncatedBPTT(window=12, model=model, task=task,
                                    optimizer=optimizer)
  segment, state = _segment(task), model.initial_state(BATCH)

  def per_replica(segment, state):
    inputs, targets = segment
    gradients, new_state, loss_sum = method.window_gradients(inputs, targets,
                                                             state, 1)
    return new_state, (gradients, loss_sum)

  _, (gradients, _) = method.run_window(
      per_replica, method.replicas.shard(segment), method.replicas.shard(state),
      gradients_first=True)
  expected, _ = method.estimate_gradients(segment, state)
  for gradient, variable, value in zip(gradients, model.trainable_variables,
                                       expected):
    copies = mirrored.experimental_local_results(gradient)
    homes = mirrored.experimental_local_results(variable.value)
    assert len(copies) == 2
    assert [c.device for c in copies] == [h.device for h in homes]
    assert homes[0].device != homes[1].device
    for copy in copies:
      np.testing.assert_allclose(copy.numpy(), value.numpy(), atol=1e-6)


def test_optimizer_clipping_falls_back_to_one_apply(mirrored):
  """An optimizer whose ``apply`` does more than ``update_step`` per variable
  (here its own clipping) is applied once, on host-summed gradients, and two
  replicas still train as one."""
  def train(strategy):
    task = _stream_task()
    with strategy.scope():
      model = testing.tiny_model(task, seed=0)
      optimizer = keras.optimizers.SGD(learning_rate=0.5, global_clipnorm=0.01)
      optimizer.build(model.trainable_variables)
      method = tfcredit.TruncatedBPTT(window=4, windows_per_call=3, model=model,
                                      task=task, optimizer=optimizer)
    assert method._places_gradients is False
    method.train_segment(_segment(task), model.initial_state(BATCH))
    return [v.numpy() for v in model.trainable_variables]
  one, two = train(tf.distribute.get_strategy()), train(mirrored)
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, atol=1e-5)

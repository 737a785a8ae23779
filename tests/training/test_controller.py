"""The controller's pieces on a real tiny run: the calls of an epoch, the cadence
of checkpoints and evaluations, and the two ways of stopping."""

import os
import signal

import numpy as np
import pytest

from tfcredit.tasks import base as task_base
from tfcredit.testing import clean_gin, configure_tiny  # noqa: F401
from tfcredit.training import checkpoints
from tfcredit.training import controller as controller_lib
from tfcredit.training import progress as progress_lib
from tfcredit.training import reporting
from tfcredit.training import signals
from tfcredit.training import trainer

pytestmark = pytest.mark.usefixtures('clean_gin')

BATCH = 8  # tiny.gin: 4 batches of 8 sequences per epoch.


def _run(model_dir, *bindings, epochs=2, checkpoint_every_calls=500,
         stop_after_calls=None, after_first_call=None):
  """The tiny run's parts, built as ``train`` builds them, and its controller
  (10 checkpoints kept, so the test sees every one written)."""
  configure_tiny(*bindings)
  arguments = trainer.configured_arguments()
  parts = trainer.build_components(
      task=arguments['task'], method=arguments['method'], model=arguments['model'],
      optimizer=arguments['optimizer'], learning_rate=arguments['learning_rate'],
      batch_size=BATCH, seed=arguments['seed'])
  schedule = arguments['lr_schedule'](base=arguments['learning_rate'])
  stream = parts.task.regime == task_base.STREAM
  progress = progress_lib.Progress(
      parts.model.state_spec() if stream else None, BATCH)
  checkpointer = checkpoints.Checkpointer(
      model_dir, max_to_keep=10, model=parts.model, optimizer=parts.optimizer,
      method=parts.method, progress=progress)
  calls = controller_lib.Calls(
      task=parts.task, model=parts.model, method=parts.method,
      optimizer=parts.optimizer, schedule=schedule, progress=progress,
      batch_size=BATCH)
  reporter = reporting.Reporter(
      model_dir, parts.task.metric_name, calls.unit_name,
      parts.task.metric_from_loss, total_units=calls.units_per_epoch * epochs,
      log_every_seconds=1e9)
  evaluate = lambda split: task_base.evaluate(
      parts.task, parts.model.unroll, parts.model.initial_state, split, BATCH)
  return controller_lib.Controller(
      calls, progress=progress, checkpointer=checkpointer, reporter=reporter,
      evaluate=evaluate,
      cadence=controller_lib.Cadence(epochs, checkpoint_every_calls,
                                     stop_after_calls=stop_after_calls),
      after_first_call=after_first_call)


def _checkpoint_numbers(model_dir):
  return [int(prefix.rsplit('-', 1)[1])
          for prefix in checkpoints.listed(os.path.join(model_dir, 'checkpoints'))]


def test_checkpoints_every_n_calls_and_at_each_epoch_end(tmp_path):
  controller = _run(str(tmp_path), checkpoint_every_calls=3)
  outcome = controller.run()
  assert outcome.stopped_after_calls is None
  # Calls 3 and 6 by the cadence, 4 and 8 at the two epochs' ends.
  assert _checkpoint_numbers(str(tmp_path)) == [3, 4, 6, 8]
  assert int(controller.progress.calls) == 8


def test_validation_after_each_epoch_at_the_units_seen(tmp_path):
  controller = _run(str(tmp_path))
  outcome = controller.run()
  losses = reporting.read_scalars(str(tmp_path / 'valid'))['loss']
  assert [step for step, _ in losses] == [4 * BATCH, 8 * BATCH]
  np.testing.assert_allclose(outcome.valid['loss'], losses[-1][1], rtol=1e-6)
  progress = controller.progress
  assert (int(progress.epoch), int(progress.position)) == (2, 0)
  np.testing.assert_allclose(float(progress.best_valid),
                             min(loss for _, loss in losses), rtol=1e-6)


def test_stop_after_calls_checkpoints_there_and_a_new_controller_goes_on(tmp_path):
  controller = _run(str(tmp_path), stop_after_calls=3)
  outcome = controller.run()
  assert outcome == controller_lib.Outcome({}, stopped_after_calls=3)
  assert _checkpoint_numbers(str(tmp_path)) == [3]
  progress = controller.progress
  assert (int(progress.calls), int(progress.position)) == (3, 3)
  # The same objects, as a resumed process would restore them: the epoch goes on
  # from batch 3, not from the start.
  rest = controller_lib.Controller(
      controller.calls, progress=progress, checkpointer=controller.checkpointer,
      reporter=controller.reporter, evaluate=controller.evaluate,
      cadence=controller_lib.Cadence(2, 500))
  rest.run()
  assert rest.calls_here == 5 and int(progress.calls) == 8
  assert _checkpoint_numbers(str(tmp_path)) == [3, 4, 8]


def test_a_signal_stops_after_the_current_call_with_a_checkpoint(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  # Sent while the first call is being recorded: that call completes, the next
  # one never starts.
  controller = _run(str(tmp_path), checkpoint_every_calls=500,
                    after_first_call=lambda: os.kill(os.getpid(), signal.SIGTERM))
  with pytest.raises(signals.Interrupted) as raised:
    controller.run()
  assert raised.value.signum == signal.SIGTERM
  assert raised.value.exit_code == 143
  assert 'stopped after training call 1' in str(raised.value)
  assert int(controller.progress.calls) == 1
  assert _checkpoint_numbers(str(tmp_path)) == [1]
  assert signal.getsignal(signal.SIGTERM) == before  # The handler is put back.


def test_calls_cover_a_stream_epoch_once_with_the_carried_state(tmp_path):
  controller = _run(str(tmp_path), 'train.task = @MarkovLanguageTask',
                    'MarkovLanguageTask.train_length = 400',
                    'MarkovLanguageTask.eval_length = 100',
                    'TruncatedBPTT.windows_per_call = 2')
  calls, progress = controller.calls, controller.progress
  units, done = [], []
  for call in calls.epoch(0):
    units.append(call.units)
    done.append(call.units_done)
    assert call.positions == call.units // BATCH
    progress.record_call(call.positions, call.units, call.metrics, call.state)
    # The carried state is kept for a resume.
    np.testing.assert_array_equal(progress.load_state()[0][0],
                                  np.asarray(call.state[0][0]))
  assert sum(units) == calls.units_per_epoch
  np.testing.assert_allclose(done, np.cumsum(units), atol=1)  # int(float sums)
  assert int(progress.position) == calls.units_per_epoch // BATCH
  assert units[0] == 10 * BATCH and len(units) > 1  # Two windows of five steps.


@pytest.mark.parametrize('trained_weights', [True, False])
def test_fptts_trained_weights_are_evaluated_before_the_average_replaces_them(
    tmp_path, trained_weights):
  controller = _run(str(tmp_path), 'train.method = @FPTT', 'FPTT.windows = 2',
                    'FPTT.alpha = 0.5',
                    f'FPTT.evaluate_trained_weights = {trained_weights}', epochs=1)
  model, method = controller.calls.model, controller.calls.method
  evaluate, weights, results = controller.evaluate, [], []

  def recording(split):  # The real evaluation, and the weights it saw.
    weights.append([v.numpy().copy() for v in model.trainable_variables])
    results.append(evaluate(split))
    return results[-1]

  controller.evaluate = recording
  controller.run()
  averages = [a.numpy() for a in method.running_average]
  scalars = reporting.read_scalars(str(tmp_path / 'valid'))
  # The epoch's own evaluation sees W̄ (the weights after the swap) ...
  for seen, average in zip(weights[-1], averages):
    np.testing.assert_array_equal(seen, average)
  np.testing.assert_allclose(scalars['loss'][0][1], results[-1]['loss'], rtol=1e-6)
  if not trained_weights:
    assert len(weights) == 1 and 'trained_weights/loss' not in scalars
    return
  # ... and, asked for, one before it the trained weights, which differ from W̄.
  assert len(weights) == 2
  assert max(np.abs(w - a).max() for w, a in zip(weights[0], averages)) > 1e-4
  assert scalars['trained_weights/loss'][0][0] == scalars['loss'][0][0]
  np.testing.assert_allclose(scalars['trained_weights/loss'][0][1],
                             results[0]['loss'], rtol=1e-6)
  assert abs(results[0]['loss'] - results[1]['loss']) > 1e-6

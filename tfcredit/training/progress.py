"""Where a run is, as variables a checkpoint saves: epoch, data position, counters.

Resuming from a checkpoint must continue exactly where an uninterrupted run would
be, so the position in the data, the carried recurrent state of stream tasks and the
dropout RNG state are saved along with the weights and the optimizer.
"""

from typing import Any, Mapping, Optional

import tensorflow as tf

# The checkpoint manager lives in its own module; kept importable from here.
from tfcredit.training.checkpoints import Checkpointer  # pylint: disable=unused-import


class Progress(tf.Module):
  """Counters and the carried state of a run, saved in every checkpoint."""

  def __init__(self, state_spec=None, batch_size: Optional[int] = None):
    super().__init__(name='progress')
    int64 = lambda: tf.Variable(0, dtype=tf.int64, trainable=False)
    self.epoch = int64()           # completed epochs
    self.position = int64()        # stream: next column; episodic: next batch index
    self.calls = int64()           # training calls so far
    self.units_seen = int64()      # tokens (stream) or sequences (episodic) trained on
    self.updates = int64()         # parameter updates applied
    self.best_valid = tf.Variable(float('inf'), dtype=tf.float64, trainable=False)
    # Summed training loss and its count since the start of the run: the
    # "average loss so far" curve of online-learning papers (ARTBP, Fig. 3).
    self.loss_total = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    self.count_total = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    self.carried_state = None
    if state_spec is not None:
      self.carried_state = tf.nest.map_structure(
          lambda spec: tf.Variable(tf.zeros([batch_size] + spec.shape[1:].as_list()),
                                   trainable=False), state_spec)

  def save_state(self, state) -> None:
    if self.carried_state is not None:
      tf.nest.map_structure(lambda var, value: var.assign(value),
                            self.carried_state, state)

  def load_state(self):
    return tf.nest.map_structure(tf.convert_to_tensor, self.carried_state)

  def record_call(self, positions: int, units: int, metrics: Mapping[str, Any],
                  state) -> None:
    """Counts one training call: ``positions`` further in the data, ``units``
    trained on, its ``updates``, ``loss_sum`` and ``count`` (as the non-finite
    policy left them), and keeps its carried ``state`` (stream tasks)."""
    self.position.assign_add(positions)
    self.calls.assign_add(1)
    self.units_seen.assign_add(units)
    self.updates.assign_add(int(metrics['updates']))
    self.loss_total.assign_add(float(metrics['loss_sum']))
    self.count_total.assign_add(float(metrics['count']))
    self.save_state(state)

  @property
  def average_loss(self) -> float:
    """The summed training loss since the start of the run over its count."""
    return float(self.loss_total) / max(float(self.count_total), 1e-12)

  def end_epoch(self, valid_loss: float) -> None:
    """Moves to the next epoch's first position, keeping the best validation
    loss."""
    self.best_valid.assign(min(float(self.best_valid), valid_loss))
    self.epoch.assign_add(1)
    self.position.assign(0)

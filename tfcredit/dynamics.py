"""What a network's state holds of the past, and whether its dynamics forget.

Two standard measures of a recurrent network's forward dynamics, for any model of
the contract (``tfcredit.models.contract``), at fresh or trained weights:

* **Memory curve and capacity** (Jaeger 2001, "Short term memory in echo state
  networks"): for each lag ``k``, a linear decoder (least squares, with a bias)
  reads the input of step ``t − k`` from the whole state ``s_t`` (every layer's
  every state tensor, concatenated); ``R²_k`` is its coefficient of determination
  on held-out rows (decoders fit on the first half of the rows, scored on the
  second; pooled over the input's features: ``1 − Σ SSE / Σ SST``). Real inputs are
  decoded as given; token ids as the one-hot of the ``max_classes`` most frequent
  ids. The memory capacity is ``Σ_k max(R²_k, 0)`` over ``k = 1 … max_lag``.
* **Growth of a perturbation** (the largest finite-time Lyapunov exponent, by
  Benettin's renormalisation): after ``burn_in`` steps, each row's state is moved
  by ``ε`` in a random direction and both copies run on the same inputs; after
  every step the distance ``d_t`` is measured and the copy is pulled back to
  ``ε`` along the same direction, so the growth stays in the linear range (no
  saturation, no float32 floor). The growth after ``t`` steps is
  ``Π d_i / ε`` (geometric mean over rows) and ``λ`` the mean of ``log(d_t / ε)``
  per step. ``λ < 0``: nearby states converge, the state is a function of the
  recent inputs (the echo-state property); ``λ > 0``: they separate (chaotic
  dynamics), and the state forgets what the inputs were. ``ε`` must stay above
  the float32 rounding of the state (the default 1e-3 suits the bounded states
  of tanh and gated cells; a state that grows without bound needs a larger one).

Used by ``tfcredit-dynamics`` (``tfcredit/cli/dynamics.py``).
"""

from typing import Dict, List, Sequence, Tuple

import gin
import keras
import numpy as np
import tensorflow as tf

from tfcredit import config as config_lib
from tfcredit import fidelity
from tfcredit import tables
from tfcredit.errors import ConfigurationError
from tfcredit.training import trainer

GROWTH_STEPS = (1, 10, 100)
FRESH = 'fresh'  # A checkpoint value: fresh weights.
PLOTTED_GROWTH_STEPS = 100  # The figure's growth panel (the slope is λ).


def probe(model, inputs, max_lag: int = 20, burn_in: int = 100,
          epsilon: float = 1e-3, max_classes: int = 64, seed: int = 0) -> Dict:
  """Memory curve and perturbation growth of ``model`` on ``inputs``.

  Args:
    model: a built model of the contract.
    inputs: ``[B, T]`` token ids or real inputs, or ``[B, T, D]`` real inputs;
      ``B ≥ 4`` rows (half fit the decoders, half score them).
    max_lag: decode lags ``1 … max_lag``.
    burn_in: steps from the initial state before the first decoded step and
      before the perturbation (at least ``max_lag``).
    epsilon: the perturbation's norm.
    max_classes: token inputs: the most frequent ids decoded (one-hot).
    seed: the perturbation's direction.

  Returns:
    ``{'lags', 'r2', 'memory_capacity', 'growth_steps', 'log10_growth',
    'log10_growth_curve', 'lyapunov', 'state_size', 'rows', 'steps'}`` (plain
    Python numbers; the curve at every step after the perturbation).
  """
  inputs = tf.convert_to_tensor(inputs)
  rows, steps = int(inputs.shape[0]), int(inputs.shape[1])
  _check(rows, steps, max_lag, burn_in, epsilon)
  states = _trajectory(model, inputs, model.initial_state(rows))
  flat_states = _flat(states).numpy()  # [rows, T, S]
  size = flat_states.shape[-1]
  if (rows // 2) * (steps - burn_in) <= size + 1:
    raise ConfigurationError(
        f'{rows // 2} rows × {steps - burn_in} steps after the burn-in fit the '
        f'decoders, not more than the state has numbers ({size} + 1): use more '
        '--sequences, a longer --length or a shorter --burn_in')
  start = tf.nest.map_structure(lambda s: s[:, burn_in - 1], states)
  log_ratio = _log_growth(model, inputs[:, burn_in:], start, epsilon,
                          seed).numpy()  # [rows, T − burn_in]
  horizon = steps - burn_in
  growth_steps = [t for t in GROWTH_STEPS if t < horizon] + [horizon]
  # log10 of the geometric mean over rows of the growth after each step.
  curve = np.cumsum(log_ratio.mean(0)) / np.log(10.0)
  r2 = memory_curve(flat_states, _targets(inputs, max_classes),
                    max_lag, burn_in)
  return {'lags': list(range(1, max_lag + 1)), 'r2': r2,
          'memory_capacity': float(sum(max(v, 0.0) for v in r2)),
          'growth_steps': growth_steps,
          'log10_growth': [float(curve[t - 1]) for t in growth_steps],
          'log10_growth_curve': [float(g) for g in curve],
          'lyapunov': float(log_ratio.mean()),
          'state_size': size, 'rows': rows, 'steps': steps}


def memory_curve(states: np.ndarray, targets: np.ndarray, max_lag: int,
                 burn_in: int) -> List[float]:
  """Held-out ``R²`` of linear decoders of ``targets[:, t − k]`` from ``states[:, t]``.

  ``states`` ``[B, T, S]``, ``targets`` ``[B, T, D]``; steps ``t ≥ burn_in``; the
  first ``B // 2`` rows fit, the others score.
  """
  half = states.shape[0] // 2
  features = states[:, burn_in:].astype(np.float64)
  features = np.concatenate([features, np.ones_like(features[..., :1])], -1)
  steps, width = features.shape[1], features.shape[-1]
  solve = np.linalg.pinv(features[:half].reshape(-1, width))  # Fit once.
  test_x = features[half:].reshape(-1, width)
  r2 = []
  for k in range(1, max_lag + 1):  # One lag at a time: one-hot targets are wide.
    lagged = targets[:, burn_in - k:burn_in - k + steps].astype(np.float64)
    weights = solve @ lagged[:half].reshape(-1, lagged.shape[-1])
    test_y = lagged[half:].reshape(-1, lagged.shape[-1])
    error = ((test_x @ weights - test_y) ** 2).sum()
    spread = ((test_y - test_y.mean(0)) ** 2).sum()
    r2.append(float(1.0 - error / spread) if spread > 0 else 0.0)
  return r2


def _check(rows, steps, max_lag, burn_in, epsilon):
  if rows < 4:
    raise ConfigurationError(
        f'the probe needs at least 4 rows (half fit the decoders, half score '
        f'them), got {rows}: use --sequences=32')
  if max_lag < 1 or burn_in < max_lag:
    raise ConfigurationError(
        f'--max_lag={max_lag} and --burn_in={burn_in}: need 1 ≤ max_lag ≤ '
        'burn_in (every decoded step needs its lagged input in the data)')
  if steps - burn_in < 2:
    raise ConfigurationError(
        f'--burn_in={burn_in} leaves {steps - burn_in} of {steps} steps: use a '
        f'burn-in below {steps - 1} or longer sequences (--length; an episodic '
        "task's own sequence length)")
  if not epsilon > 0:
    raise ConfigurationError(f'--epsilon={epsilon} must be positive, e.g. 1e-3')


def _targets(inputs: tf.Tensor, max_classes: int) -> np.ndarray:
  """``[B, T, D]``: real inputs as given, token ids one-hot (most frequent ids)."""
  values = inputs.numpy()
  if not inputs.dtype.is_integer:
    return values if values.ndim == 3 else values[..., None]
  ids, counts = np.unique(values, return_counts=True)
  kept = ids[np.argsort(-counts, kind='stable')[:max_classes]]
  return (values[..., None] == np.sort(kept)).astype(np.float32)


def _trajectory(model, inputs: tf.Tensor, state) -> object:
  """Every step's state: the nest of ``[B, T, size]`` tensors."""

  @tf.function
  def run(inputs, state):
    def step(carry, inputs_t):
      return model.unroll(tf.expand_dims(inputs_t, 1), carry, readout=False)[1]
    time_major = tf.nest.map_structure(
        lambda x: tf.transpose(x, [1, 0] + list(range(2, x.shape.rank))), inputs)
    states = tf.scan(step, time_major, initializer=state)
    return tf.nest.map_structure(lambda s: tf.transpose(s, [1, 0, 2]), states)

  return run(inputs, state)


def _log_growth(model, inputs: tf.Tensor, start, epsilon: float, seed: int):
  """``[B, T]``: ``log(d_t / ε)`` at each step, the copy renormalised to ``ε``."""
  direction = tf.random.stateless_normal(tf.shape(_flat(start)), [seed, 0])
  direction /= tf.norm(direction, axis=-1, keepdims=True)
  moved = _unflat(_flat(start) + epsilon * direction, start)

  @tf.function
  def run(inputs, start, moved):
    def step(carry, inputs_t):
      state, copy, _ = carry
      inputs_t = tf.expand_dims(inputs_t, 1)
      state = model.unroll(inputs_t, state, readout=False)[1]
      copy = model.unroll(inputs_t, copy, readout=False)[1]
      difference = _flat(copy) - _flat(state)
      distance = tf.norm(difference, axis=-1, keepdims=True)
      # A copy that landed on the state (distance 0) restarts along the old
      # difference's direction, which is then 0: log(0) is kept as a floor.
      copy = _unflat(_flat(state) + epsilon * tf.math.divide_no_nan(
          difference, distance), state)
      return state, copy, tf.math.log(tf.maximum(distance[:, 0] / epsilon, 1e-30))
    time_major = tf.transpose(inputs, [1, 0] + list(range(2, inputs.shape.rank)))
    rows = tf.shape(inputs)[0]
    logs = tf.scan(step, time_major, initializer=(start, moved, tf.zeros([rows])))
    return tf.transpose(logs[2])

  return run(inputs, start, moved)


def _flat(state) -> tf.Tensor:
  """The state nest as one ``[B, S]`` (or ``[B, T, S]``) float tensor."""
  return tf.concat([tf.cast(s, tf.float32) for s in tf.nest.flatten(state)], -1)


def _unflat(flat: tf.Tensor, like) -> object:
  sizes = [int(s.shape[-1]) for s in tf.nest.flatten(like)]
  parts = tf.split(flat, sizes, axis=-1)
  return tf.nest.pack_sequence_as(like, [tf.cast(p, s.dtype) for p, s in
                                         zip(parts, tf.nest.flatten(like))])


def markdown_table(labelled: Sequence[Tuple[str, Dict]]) -> str:
  """A table of ``(label, result)`` pairs (results of ``probe``): capacity,
  ``R²`` at a few lags, the perturbation's growth, ``λ``."""
  first = labelled[0][1]
  lags = [k for k in (1, 2, 5, 10, 20, 50, 100) if k <= len(first['r2'])]
  header = (['model', 'memory capacity'] + [f'R² lag {k}' for k in lags] +
            [f'growth after {t}' for t in first['growth_steps']] + ['λ per step'])
  rows = [[label, f"{result['memory_capacity']:.2f}"] +
          [f"{result['r2'][k - 1]:.2f}" for k in lags] +
          [f'10^{g:.1f}' for g in result['log10_growth']] + [f"{result['lyapunov']:+.4f}"]
          for label, result in labelled]
  return tables.markdown_table(header, ['---'] + ['---:'] * (len(header) - 1),
                               rows) + '\n'


def plot(labelled: Sequence[Tuple[str, Dict]], path: str) -> bool:
  """Memory curve and perturbation growth, one line per model; False without
  matplotlib (``pip install 'tfcredit[plots]'``)."""
  pyplot = tables.pyplot()
  if pyplot is None:
    return False
  figure, (memory_axis, growth_axis) = pyplot.subplots(1, 2, figsize=(11, 4))
  for label, result in labelled:
    memory_axis.plot(result['lags'], result['r2'], marker='.', label=label)
    curve = result['log10_growth_curve'][:PLOTTED_GROWTH_STEPS]
    growth_axis.plot(np.arange(1, len(curve) + 1), curve, label=label)
  memory_axis.set(xlabel='lag k (steps)', ylabel='held-out R²',
                  title='input k steps back, decoded from the state')
  growth_axis.axhline(0.0, color='grey', linewidth=0.5)
  growth_axis.set(xlabel='steps after the perturbation',
                  ylabel='log10 growth (slope: λ / ln 10 per step)',
                  title='growth of a perturbation, renormalised')
  memory_axis.legend(fontsize='small')
  return tables.save_figure(figure, path)


def measure(gin_files: Sequence[str], gin_bindings: Sequence[str],
            checkpoints: Sequence[str], sequences: int = 32, length: int = 2000,
            data_dir=None, seed: int = 0, **options) -> List[Tuple[str, Dict]]:
  """``probe`` of the configured model at each checkpoint, on the validation
  split: a stream's first ``length`` steps in ``sequences`` columns, or an
  episodic task's first batch of ``sequences``.

  A checkpoint is a run directory or checkpoint path, or ``FRESH`` (fresh
  weights seeded by ``seed``; also when there are none), optionally labelled
  ``'LABEL: path'``; the label (else the path) names its row.
  """
  results = []
  for checkpoint in checkpoints or [FRESH]:
    label, _, path = checkpoint.rpartition(': ')
    gin.clear_config()
    config_lib.parse(gin_files, gin_bindings)
    try:
      keras.utils.set_random_seed(seed)
      parts = trainer.build_components(**fidelity.component_arguments(data_dir),
                                       batch_size=sequences, seed=seed)
      inputs = fidelity.data_segment(parts.task, length, sequences, 'valid')[0]
      if path != FRESH:
        fidelity.load_weights(parts.model, path)
    finally:
      gin.clear_config()
    label = label or (f'fresh weights (seed {seed})' if path == FRESH else path)
    results.append((label, probe(parts.model, inputs, seed=seed, **options)))
  return results

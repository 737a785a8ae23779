"""Gradient fidelity: how far each method's gradient estimate is from full BPTT's.

Every method offers ``estimate_gradients(segment, state)``: its estimate of the
gradient of the segment's total loss at the current weights, on the scale of full
BPTT's (``tfcredit.methods.base``). So the same sequences, the same weights and one
reference, the exact gradient ``g`` (by full BPTT, or by RTRL, whose memory does
not grow with the length: ``reference``), measure every estimator ``ĝ``:

* relative bias ``‖E[ĝ] − g‖ / ‖g‖``, with ``E[ĝ]`` the mean of ``draws`` estimates
  (stochastic methods: ARTBP's random truncations, noisy synthesizers) and its
  Monte-Carlo noise ``sqrt(tr Cov(ĝ) / draws) / ‖g‖``, below which a bias is not
  resolved;
* cosine between ``E[ĝ]`` and ``g``, and the mean cosine of single draws;
* norm ratio ``‖E[ĝ]‖ / ‖g‖`` (with the cosine, it tells an estimate that is too
  large or too small from one that points elsewhere);
* relative spread ``sqrt(tr Cov(ĝ)) / ‖g‖`` of one draw around its mean.

A method and its settings are a *variant*: gin bindings applied on top of the base
configuration, in which ``{window}`` stands for each value of the window sweep; the
sequence-length sweep rebinds the task's ``sequence_length`` (episodic tasks) or
cuts stream segments of that length. Used by ``tfcredit-fidelity``
(``tfcredit/cli/gradient_fidelity.py``).
"""

import dataclasses
import math
import os
import re
from typing import Dict, List, Optional, Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

from tfcredit import config as config_lib
from tfcredit import tables
from tfcredit.errors import ConfigurationError
from tfcredit.methods.rtrl import RTRL
from tfcredit.methods.truncated_bptt import BPTT
from tfcredit.tasks import base as task_base
from tfcredit.training import trainer

WINDOW = '{window}'
# The reference gradient: full BPTT (memory growing with the length) or RTRL
# (the same gradient, forward in time: memory rows × state × weights whatever the
# length, for streams longer than full BPTT can hold).
REFERENCES = ('bptt', 'rtrl')
_REFERENCE_NAMES = {'bptt': 'full BPTT', 'rtrl': 'RTRL'}


@dataclasses.dataclass(frozen=True)
class Variant:
  """A named method setting: ``bindings`` (gin) may contain ``{window}``."""
  name: str
  bindings: Sequence[str]

  @classmethod
  def parse(cls, text: str) -> 'Variant':
    """``'NAME: binding; binding'`` -> Variant (the flag syntax)."""
    name, colon, rest = text.partition(':')
    bindings = [b.strip() for b in rest.split(';') if b.strip()]
    if not colon or not name.strip() or not bindings:
      raise ConfigurationError(
          f'--method={text!r} is not NAME: BINDINGS; write e.g. '
          "--method='tbptt K=10: train.method = @TruncatedBPTT; "
          "TruncatedBPTT.window = 10'")
    return cls(name.strip(), bindings)

  @property
  def sweeps_window(self) -> bool:
    return any(WINDOW in b for b in self.bindings)

  def label(self, window: Optional[int]) -> str:
    return self.name.replace(WINDOW, str(window)) if window is not None else self.name

  def bound(self, window: Optional[int]) -> List[str]:
    return [b.replace(WINDOW, str(window)) for b in self.bindings]


DEFAULT_VARIANTS = (
    'full BPTT: train.method = @BPTT',
    'truncated BPTT K={window}: train.method = @TruncatedBPTT; '
    'TruncatedBPTT.window = {window}',
    "ARTBP L0={window}: train.method = @ARTBP; ARTBP.mean_length = {window}; "
    "ARTBP.estimate_draws = 'per_row'",
)


def gradient_statistics(estimates: np.ndarray, reference: np.ndarray
                        ) -> Dict[str, float]:
  """Fidelity of ``estimates`` ``[draws, P]`` to ``reference`` ``[P]``.

  Returns:
    ``relative_bias``, ``bias_noise`` (the bias one would measure for an unbiased
    estimator with this spread, ``sqrt(tr Cov / draws) / ‖g‖``), ``cosine`` (of the
    mean), ``mean_draw_cosine``, ``norm_ratio`` (``‖E[ĝ]‖ / ‖g‖``) and
    ``relative_spread`` (``sqrt(tr Cov) / ‖g‖``,
    the unbiased covariance over draws; 0 for one draw).
  """
  estimates = np.asarray(estimates, np.float64)
  reference = np.asarray(reference, np.float64)
  draws = estimates.shape[0]
  norm = np.linalg.norm(reference)
  if norm == 0:
    raise ValueError('the reference gradient is zero: fidelity is undefined')
  mean = estimates.mean(axis=0)
  spread = (np.sum((estimates - mean) ** 2) / (draws - 1)) if draws > 1 else 0.0

  def cosine(a, b):
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator > 0 else 0.0

  return {
      'relative_bias': float(np.linalg.norm(mean - reference) / norm),
      'bias_noise': float(math.sqrt(spread / draws) / norm),
      'cosine': cosine(mean, reference),
      'mean_draw_cosine': float(np.mean([cosine(e, reference) for e in estimates])),
      'norm_ratio': float(np.linalg.norm(mean) / norm),
      'relative_spread': float(math.sqrt(spread) / norm),
  }


def _flat(gradients) -> np.ndarray:
  return np.concatenate([np.reshape(tf.convert_to_tensor(g).numpy(), [-1])
                         for g in gradients])


def data_segment(task: task_base.Task, length: int, sequences: int,
                 split: str = 'train'):
  """``(inputs, targets)`` of ``sequences`` rows: a stream's first ``length``
  steps, or an episodic task's first batch."""
  if task.regime == task_base.STREAM:
    data = task.stream(split, sequences)
    if data.shape[1] - 1 < length:
      raise ConfigurationError(
          f'a length of {length} steps is longer than the {split} stream '
          f'({data.shape[1] - 1} steps per column at {sequences} columns): use '
          'a shorter length or fewer --sequences')
    inputs, targets = task.stream_window(data, 0, length)
    return tf.constant(inputs), tf.constant(targets)
  inputs, targets = task.batch(split, 0, 0, sequences)
  return tf.constant(inputs), tf.constant(targets)


def _task_for_length(base_task: task_base.Task, length: int) -> List[str]:
  """Bindings that give an episodic task sequences of ``length`` steps."""
  if base_task.regime == task_base.STREAM:
    return []
  if 'sequence_length' not in base_task.get_config():
    raise ConfigurationError(
        f'{type(base_task).__name__} has no sequence_length to sweep: leave '
        '--lengths empty to use its own length')
  return [f'{type(base_task).__name__}.sequence_length = {length}']


def measure(gin_files: Sequence[str], gin_bindings: Sequence[str],
            variants: Sequence[Variant], windows: Sequence[int],
            lengths: Sequence[Optional[int]], draws: int, sequences: int,
            data_dir: Optional[str] = None, checkpoint: Optional[str] = None,
            seed: int = 0, progress=None, restore_method_state: bool = False,
            reference: str = 'bptt') -> List[Dict]:
  """Measures every variant at every window and length against full BPTT.

  Args:
    gin_files, gin_bindings: the base configuration (task and model; its method is
      replaced by each variant's).
    variants: the methods to measure.
    windows: values of ``{window}`` (variants without it run once per length).
    lengths: sequence lengths; None uses the task's own.
    draws: estimates per variant, window and length.
    sequences: sequences (episodic) or stream columns per estimate.
    data_dir: the data directory for tasks that read data.
    checkpoint: a run directory or checkpoint path whose model weights are loaded;
      None: fresh weights seeded by ``seed``.
    seed: seeds the weights (without a checkpoint) and the methods' draws.
    restore_method_state: with ``checkpoint``, also restore the method's own state
      (a trained DNI synthesizer, FPTT's averages, ARTBP's draws) into the
      variants of the checkpointed run's method class; other variants start fresh.
    progress: optional ``print``-like callable for progress lines.
    reference: ``'bptt'`` computes the exact gradient by full BPTT, ``'rtrl'``
      by RTRL (the same gradient to float tolerance; its memory does not grow
      with the length, its time grows with the model: small models only).

  Returns:
    One dict per (variant, window, length): the labels and
    ``gradient_statistics``, plus ``draws`` and ``reference_norm``.
  """
  if draws < 1 or sequences < 1:
    raise ConfigurationError(
        f'--draws={draws} and --sequences={sequences} must be positive')
  if reference not in REFERENCES:
    raise ConfigurationError(
        f'--reference={reference!r} must be one of {REFERENCES}: full BPTT, or '
        'RTRL for sequences longer than full BPTT can hold')
  rows = []
  for length in lengths:
    def configure(extra):
      gin.clear_config()
      config_lib.parse(gin_files, list(gin_bindings) + extra)
    length_bindings = []
    if length is not None:
      configure([])
      probe = trainer.build_components(
          **component_arguments(data_dir), batch_size=sequences).task
      length_bindings = _task_for_length(probe, length)
    configure(length_bindings)
    keras.utils.set_random_seed(seed)
    parts = trainer.build_components(**component_arguments(data_dir),
                                     batch_size=sequences, seed=seed)
    if checkpoint:
      load_weights(parts.model, checkpoint)
    segment = data_segment(parts.task, length or _own_length(parts.task), sequences)
    state = parts.model.initial_state(sequences)
    steps = int(segment[0].shape[1])
    if reference == 'rtrl':
      reference_method = RTRL(model=parts.model, task=parts.task,
                              optimizer=parts.optimizer, window=steps,
                              batch_size=sequences)
    else:
      reference_method = BPTT(
          model=parts.model, task=parts.task, optimizer=parts.optimizer,
          sequence_length=(steps if parts.task.regime == task_base.STREAM
                           else None))
    exact = _flat(reference_method.estimate_gradients(segment, state)[0])
    for variant in variants:
      for window in (windows if variant.sweeps_window else [None]):
        configure(length_bindings + variant.bound(window))
        method_class = trainer.configured_arguments()['method']
        method = trainer.build_method(method_class, parts.model, parts.task,
                                      parts.optimizer, sequences, seed)
        if checkpoint and restore_method_state:
          _load_method_state(method, checkpoint)
        estimates = np.stack([_flat(method.estimate_gradients(segment, state)[0])
                              for _ in range(draws)])
        row = {'method': variant.label(window), 'variant': variant.name,
               'window': window, 'length': steps, 'draws': draws,
               'reference': reference,
               'reference_norm': float(np.linalg.norm(exact))}
        row.update(gradient_statistics(estimates, exact))
        rows.append(row)
        if progress:
          progress(f"length {steps:5d}  {row['method']:28s} bias "
                   f"{row['relative_bias']:.4f} (noise {row['bias_noise']:.4f})  "
                   f"cosine {row['cosine']:.4f}  norm ratio {row['norm_ratio']:.3f}")
  gin.clear_config()
  return rows


def component_arguments(data_dir):
  """``trainer.build_components``'s arguments from the parsed config."""
  arguments = trainer.configured_arguments()
  return {'task': arguments['task'], 'method': arguments['method'],
          'model': arguments['model'], 'optimizer': arguments['optimizer'],
          'learning_rate': arguments['learning_rate'],
          'precision': arguments['precision'], 'data_dir': data_dir}


def _own_length(task: task_base.Task) -> int:
  length = task.get_config().get('sequence_length')
  if length is None:
    raise ConfigurationError(
        f'{type(task).__name__} is a stream: give --lengths (steps per segment)')
  return int(length)


def load_weights(model: keras.Model, checkpoint: str) -> None:
  """Every weight of ``model`` from a run directory or checkpoint path."""
  path = _checkpoint_path(checkpoint)
  try:
    # Every weight of the model must come from the checkpoint: a partial restore
    # would measure a half-trained model without saying so.
    tf.train.Checkpoint(model=model).read(path).expect_partial(
        ).assert_existing_objects_matched()
  except (tf.errors.NotFoundError, ValueError, AssertionError) as error:
    missing = re.findall(r'path=([^,\s]+)', str(error))
    detail = (f'missing {", ".join(missing)}' if missing
              else str(error).strip().split('\n')[0])
    raise ConfigurationError(
        f'--checkpoint={checkpoint!r}: it does not hold every weight of this '
        f'model ({detail}); give a run directory written by tfcredit-train '
        'with the same task and model config (checkpoints written before the '
        'recurrent layers were tracked as core_<i> do not hold them)') from None


def _checkpoint_path(checkpoint: str) -> str:
  return (tf.train.latest_checkpoint(os.path.join(checkpoint, 'checkpoints'))
          or tf.train.latest_checkpoint(checkpoint) or checkpoint)


def _load_method_state(method, checkpoint: str) -> bool:
  """Restores ``method``'s state when the run at ``checkpoint`` trained a method of
  the same class (read from its ``operative_config.gin``); True if it did."""
  config = os.path.join(checkpoint, 'operative_config.gin')
  if not os.path.exists(config):
    raise ConfigurationError(
        f'--restore_method_state needs a run directory with operative_config.gin; '
        f'--checkpoint={checkpoint!r} has none: give the directory tfcredit-train '
        'wrote')
  with open(config) as f:
    trained = re.search(r'^train\.method\s*=\s*@([\w.]+)', f.read(), re.MULTILINE)
  if not trained or trained.group(1).split('.')[-1] != type(method).__name__:
    return False
  # The model (same weights) and the optimizer come along; the method's own
  # variables are what matters here.
  tf.train.Checkpoint(method=method).read(_checkpoint_path(checkpoint)).expect_partial()
  return True


def markdown_table(rows: Sequence[Dict]) -> str:
  """The rows as a markdown table."""
  header = ['method', 'sequence length', 'relative bias', '(noise)',
            'cosine of mean', 'mean cosine of one draw', 'norm ratio',
            'relative spread', 'draws', 'exact gradient by']
  return tables.markdown_table(
      header, [tables.LEFT] + [tables.RIGHT] * 8 + [tables.LEFT],
      [[row['method'], str(row['length'])] +
       [f'{row[key]:.4f}' for key in ('relative_bias', 'bias_noise', 'cosine',
                                      'mean_draw_cosine', 'norm_ratio',
                                      'relative_spread')] +
       [str(row['draws']), _REFERENCE_NAMES[row.get('reference', 'bptt')]]
       for row in rows]) + '\n'


def plot(rows: Sequence[Dict], path: str) -> bool:
  """Bias and cosine against sequence length, one line per method; False when
  matplotlib is not installed (``pip install 'tfcredit[plots]'``)."""
  pyplot = tables.pyplot()
  if pyplot is None:
    return False
  figure, (bias_axis, cosine_axis) = pyplot.subplots(1, 2, figsize=(11, 4))
  for method in dict.fromkeys(row['method'] for row in rows):
    points = sorted((r['length'], r['relative_bias'], r['cosine'])
                    for r in rows if r['method'] == method)
    lengths = [p[0] for p in points]
    bias_axis.plot(lengths, [p[1] for p in points], marker='o', label=method)
    cosine_axis.plot(lengths, [p[2] for p in points], marker='o', label=method)
  bias_axis.set(xlabel='sequence length', ylabel='‖E[ĝ] − g‖ / ‖g‖',
                title='relative bias vs full BPTT')
  cosine_axis.set(xlabel='sequence length', ylabel='cos(E[ĝ], g)',
                  title='cosine to full BPTT')
  bias_axis.legend(fontsize='small')
  return tables.save_figure(figure, path)

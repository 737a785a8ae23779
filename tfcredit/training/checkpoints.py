"""Checkpoints that survive damage (docs/design.md, "Errors and data safety").

``Checkpointer`` wraps a ``tf.train.CheckpointManager`` over everything a run needs
to resume, with these guarantees on top of TensorFlow's (which writes a checkpoint
to a temporary prefix and records it in the ``checkpoint`` state file only when
complete):

* the checkpoints are found by listing ``ckpt-<n>.index`` as well as through the
  state file: a missing, empty or garbled state file is rebuilt from the listing
  (with a warning), never taken for "no checkpoint", so no checkpoint is
  overwritten or rotated away by mistake;
* on restore, each candidate (newest first) is read in full before anything is
  assigned; a damaged one (truncated or overwritten data or index) is named in
  one line, moved to ``checkpoints/damaged/`` and the next older one is tried;
  if every checkpoint is damaged the run stops (``TrainingError``), it never
  silently starts from scratch;
* a checkpoint that restores but does not fit the model is a
  ``ConfigurationError`` naming it;
* temporary folders left by a save that was killed (``ckpt-<n>_temp``) are
  removed;
* ``retire_latest`` moves aside a checkpoint that must not be resumed from (the
  one a non-finite training call started from) and rewrites the state file.
"""

import os
import re
import shutil
import sys
from typing import Any, List, Optional

import tensorflow as tf

from tfcredit.errors import ConfigurationError, TrainingError

PREFIX = 'ckpt'
_INDEX = re.compile(r'^' + PREFIX + r'-(\d+)\.index$')
_TEMP = re.compile(r'^' + PREFIX + r'-\d+_temp$')
DAMAGED_FOLDER = 'damaged'
NON_FINITE_FOLDER = 'non_finite'

# Reading a damaged checkpoint raises TensorFlow's status errors (DataLossError,
# OutOfRangeError...), but also IndexError ("Read less bytes than requested"),
# ValueError or OSError: anything reading the files raises means damage.
_READ_ERRORS = (Exception,)


def _warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)


def _number(prefix: str) -> int:
  match = re.search(r'-(\d+)$', prefix)
  return int(match.group(1)) if match else -1


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return (text[0] if text else type(error).__name__)[:300]


def listed(directory: str) -> List[str]:
  """The checkpoint prefixes whose ``.index`` file is in ``directory``, oldest
  first."""
  if not os.path.isdir(directory):
    return []
  found = [(int(m.group(1)), os.path.join(directory, m.group(0)[:-len('.index')]))
           for m in map(_INDEX.match, os.listdir(directory)) if m]
  return [prefix for _, prefix in sorted(found)]


def _state_paths(directory: str) -> Optional[List[str]]:
  """The prefixes the state file records (oldest first); None when the file is
  missing, empty or unreadable."""
  if not os.path.exists(os.path.join(directory, 'checkpoint')):
    return None
  try:
    state = tf.train.get_checkpoint_state(directory)
  except Exception:  # pylint: disable=broad-except
    return None  # A garbled text proto: google.protobuf's ParseError and others.
  if state is None or not state.model_checkpoint_path:
    return None
  paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
  return [p if os.path.isabs(p) else os.path.join(directory, p) for p in paths]


def _write_state(directory: str, prefixes: List[str]) -> None:
  """Rewrites the state file to record ``prefixes`` (oldest first)."""
  path = os.path.join(directory, 'checkpoint')
  if not prefixes:
    if os.path.exists(path):
      os.remove(path)
    return
  # The state file is a CheckpointState text proto; paths relative to the folder,
  # as tf.train.CheckpointManager writes them. Written whole, then renamed.
  names = [os.path.basename(prefix) for prefix in prefixes]
  lines = [f'model_checkpoint_path: "{names[-1]}"']
  lines += [f'all_model_checkpoint_paths: "{name}"' for name in names]
  temporary = path + '.tmp'
  with open(temporary, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(temporary, path)


def prepare_directory(directory: str) -> None:
  """Removes stale temporary folders and rebuilds an unusable state file from the
  checkpoints listed in ``directory`` (before ``tf.train.CheckpointManager``
  reads it)."""
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if _TEMP.match(name) and os.path.isdir(os.path.join(directory, name)):
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
      _warn(f'removed {os.path.join(directory, name)}, the unfinished save of an '
            'interrupted run')
  files = listed(directory)
  recorded = _state_paths(directory)
  if files and recorded is None:
    state_file = os.path.join(directory, 'checkpoint')
    what = 'is missing' if not os.path.exists(state_file) else 'is unreadable'
    _warn(f'the checkpoint state file {state_file} {what}; rebuilt it from the '
          f'checkpoints found there ({", ".join(os.path.basename(p) for p in files)})')
    _write_state(directory, files)
  elif recorded is not None:
    # Checkpoints the state file lost track of (never newer ones than it knows:
    # TensorFlow records a save after writing it) are still candidates.
    known = {os.path.normpath(p) for p in recorded}
    extra = [p for p in files if os.path.normpath(p) not in known]
    if extra:
      _write_state(directory, sorted(set(files) | set(recorded), key=_number))


def verify(prefix: str) -> None:
  """Reads every tensor of a checkpoint (checksums are checked on read).

  Raises:
    the TensorFlow or OS error reading raised.
  """
  reader = tf.train.load_checkpoint(prefix)
  for name in reader.get_variable_to_shape_map():
    reader.get_tensor(name)


class Checkpointer:
  """``tf.train.CheckpointManager`` over everything a run needs to resume (see
  the module docstring for what it adds)."""

  def __init__(self, directory: str, max_to_keep: int = 3, **objects: Any):
    self.directory = os.path.join(directory, 'checkpoints')
    prepare_directory(self.directory)
    self.checkpoint = tf.train.Checkpoint(**objects)
    self.max_to_keep = max_to_keep
    self.manager = self._manager()

  def _manager(self) -> tf.train.CheckpointManager:
    return tf.train.CheckpointManager(self.checkpoint, self.directory,
                                      max_to_keep=self.max_to_keep,
                                      checkpoint_name=PREFIX)

  def candidates(self) -> List[str]:
    """Every known checkpoint, newest first."""
    known = set(listed(self.directory)) | set(_state_paths(self.directory) or [])
    return sorted((p for p in known if os.path.exists(p + '.index')),
                  key=_number, reverse=True)

  def restore_latest(self) -> Optional[str]:
    """Restores the newest intact checkpoint; returns its path (None: none).

    Raises:
      TrainingError: checkpoints exist but every one is damaged.
      ConfigurationError: an intact checkpoint does not fit the model.
    """
    candidates = self.candidates()
    damaged = []
    for prefix in candidates:
      try:
        verify(prefix)
      except _READ_ERRORS as error:
        damaged.append(prefix)
        _warn(f'checkpoint {prefix} is damaged ({_first_line(error)}); moved to '
              f'{os.path.join(self.directory, DAMAGED_FOLDER)}, trying the '
              'previous one')
        self._move_aside(prefix, DAMAGED_FOLDER)
        continue
      try:
        self.checkpoint.restore(prefix).assert_existing_objects_matched()
      except (ValueError, AssertionError, tf.errors.OpError) as error:
        raise ConfigurationError(
            f'checkpoint {prefix} does not fit this configuration '
            f'({_first_line(error)}): the model directory holds a run of another '
            'configuration; use a new --model_dir, or --overwrite to start over '
            'there') from None
      if damaged:
        self._rewrite_state()
        _warn(f'resuming from {prefix}, the newest intact checkpoint')
      return prefix
    if damaged:
      raise TrainingError(
          f'every checkpoint in {self.directory} is damaged (moved to '
          f'{os.path.join(self.directory, DAMAGED_FOLDER)}); nothing to resume '
          'from: run again with --overwrite to start over in this --model_dir, or '
          'use a new --model_dir')
    return None

  def save(self, step: int) -> str:
    return self.manager.save(checkpoint_number=step)

  @property
  def latest(self) -> Optional[str]:
    return self.manager.latest_checkpoint

  def retire_latest_if(self, step: int, folder: str = NON_FINITE_FOLDER
                       ) -> Optional[str]:
    """Moves the newest checkpoint to ``checkpoints/<folder>/`` if it is the one
    of ``step``; returns where it went (None: nothing moved)."""
    latest = self.latest
    if latest is None or _number(latest) != step:
      return None
    where = self._move_aside(latest, folder)
    self._rewrite_state()
    return where

  def _move_aside(self, prefix: str, folder: str) -> str:
    target = os.path.join(self.directory, folder)
    os.makedirs(target, exist_ok=True)
    base = os.path.basename(prefix)
    for name in os.listdir(self.directory):
      if name == base + '.index' or name.startswith(base + '.data-'):
        os.replace(os.path.join(self.directory, name), os.path.join(target, name))
    return os.path.join(target, base)

  def _rewrite_state(self) -> None:
    _write_state(self.directory, listed(self.directory))
    self.manager = self._manager()

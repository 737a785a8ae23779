"""A model directory belongs to one configuration (docs/design.md, "Errors and
data safety").

``prepare(model_dir, config_text, overwrite)`` runs before anything is written
into ``model_dir``. When the directory holds a run that could be resumed
(checkpoints or final metrics) and the ``config.gin`` it was started with, the new
configuration is compared with it binding by binding:

* changes a resume cannot honour are refused (``ConfigurationError``, exit 2),
  listing the bindings and the two ways out (a new ``--model_dir``, or
  ``--overwrite``): what is trained and how (``train.task``, ``train.model``,
  ``train.method``, ``train.optimizer``, ``train.batch_size``, ``train.seed``,
  and every binding of the task, model, cell, method and optimizer classes those
  name, except the method's ``clip_norm``);
* ``train.precision`` changes to or from ``'mixed_float16'`` are refused too (its
  checkpoints hold a loss scale); between ``'float32'`` and ``'mixed_bfloat16'``
  they are allowed;
* other changes (epochs, learning rate and schedule, logging, summary and
  checkpoint cadence, evaluation batch size, ``on_non_finite``, a method's
  ``clip_norm``) are allowed, printed, and appended to ``config_changes.txt``.

Then ``config.gin`` is (re)written. ``overwrite=True`` first deletes the run's own
files (configs, checkpoints, summaries and HParams events, final metrics),
nothing else.
"""

import datetime
import glob
import os
import shutil
import sys
from typing import Dict, List, Optional, Set, Tuple

import gin
from gin import config_parser

from tfcredit import export
from tfcredit.errors import ConfigurationError, DataError, TfcreditError
from tfcredit.training import reporting

CONFIG = 'config.gin'
CHANGES = 'config_changes.txt'
# What a run writes into its model directory (``--overwrite`` deletes these only;
# glob patterns): the event files directly in it hold its HParams session.
RUN_FILES = (CONFIG, 'operative_config.gin', 'final_metrics.json', CHANGES,
             'checkpoints', 'train', 'valid', reporting.EVENTS,
             export.VOCABULARY)
_DEFINING = ('task', 'model', 'method', 'optimizer', 'batch_size', 'seed')
_COMPONENTS = ('task', 'model', 'method', 'optimizer')
_TUNABLE_ARGUMENTS = ('clip_norm', 'use_tf_function')
# train.precision may change between these on resume (float32 variables
# either way), but not to or from mixed_float16.
_FLOAT32, _FLOAT16 = 'float32', 'mixed_float16'


class RunDirectoryError(TfcreditError):
  """The model directory cannot be used (a file, not a folder): exit code 1."""

  exit_code = 1


def _short(name: str) -> str:
  return name.rsplit('.', 1)[-1]


def bindings(text: str) -> Dict[str, Tuple[str, str, object]]:
  """``{'selector.argument' (with 'scope/' first when scoped): (selector,
  argument, value)}`` of a config text (``gin.config_str()`` output)."""
  result = {}
  # Only the text is read, not applied: a run's config may name configurables
  # this process has not imported (a user's cell, a later version's option).
  parser = config_parser.ConfigParser(text, gin.config.ParserDelegate(
      skip_unknown=True))
  for statement in parser:
    if isinstance(statement, config_parser.BindingStatement):
      key = f'{statement.selector}.{statement.arg_name}'
      if statement.scope:
        key = f'{statement.scope}/{key}'
      result[key] = (_short(statement.selector), statement.arg_name,
                     statement.value)
  return result


def _references(value) -> Set[str]:
  """Short names of the configurables a binding value refers to."""
  found = set()
  if hasattr(value, 'selector') and not isinstance(value, str):
    found.add(_short(str(getattr(value, 'selector'))))
  elif isinstance(value, (list, tuple)):
    for item in value:
      found |= _references(item)
  elif isinstance(value, dict):
    for item in value.values():
      found |= _references(item)
  return found


def _components(*configs: Dict[str, Tuple[str, str, object]]) -> Set[str]:
  """The configurables that define what is trained: those ``train.task``,
  ``model``, ``method`` and ``optimizer`` name, and those their bindings name
  (a cell, a synthesizer)."""
  names = set()
  for config in configs:
    for key, (selector, argument, value) in config.items():
      if selector == 'train' and argument in _COMPONENTS and '/' not in key:
        names |= _references(value)
  for _ in range(3):  # References of references (cells of a model, ...).
    for config in configs:
      for selector, _, value in config.values():
        if selector in names:
          names |= _references(value)
  return names


def _fmt(entry) -> str:
  return '(unbound)' if entry is None else repr(entry[2])


def differences(stored_text: str, new_text: str
                ) -> Tuple[List[str], List[str]]:
  """``(refused, allowed)``: one ``'key: old -> new'`` line per changed binding."""
  old, new = bindings(stored_text), bindings(new_text)
  components = _components(old, new)
  refused, allowed = [], []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if a is not None and b is not None and repr(a[2]) == repr(b[2]):
      continue
    selector, argument, _ = a or b
    line = f'{key}: {_fmt(a)} -> {_fmt(b)}'
    defining = ((selector == 'train' and argument in _DEFINING) or
                (selector in components and argument not in _TUNABLE_ARGUMENTS))
    if selector == 'train' and argument == 'precision' and '/' not in key:
      precisions = {entry[2] if entry else _FLOAT32 for entry in (a, b)}
      if _FLOAT16 in precisions and len(precisions) > 1:
        defining = True
        line += (f' ({_FLOAT16} keeps a loss scale in its checkpoints, the '
                 'other precisions do not)')
    (refused if defining else allowed).append(line)
  return refused, allowed


def _resumable(model_dir: str) -> bool:
  checkpoints = os.path.join(model_dir, 'checkpoints')
  return (os.path.exists(os.path.join(model_dir, 'final_metrics.json')) or
          (os.path.isdir(checkpoints) and any(
              name.endswith('.index') or name == 'checkpoint'
              for name in os.listdir(checkpoints))))


def _remove_run(model_dir: str) -> None:
  for pattern in RUN_FILES:
    for path in glob.glob(os.path.join(glob.escape(model_dir), pattern)):
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
      elif os.path.lexists(path):
        os.remove(path)


def prepare(model_dir: str, config_text: str, overwrite: bool = False,
            write: bool = True) -> List[str]:
  """Checks ``model_dir`` against ``config_text``, then writes ``config.gin``.

  Args:
    model_dir: the run directory (``--model_dir``).
    config_text: the parsed configuration (``gin.config_str()``).
    overwrite: delete the run's files first and start over (``--overwrite``).
    write: write ``config.gin`` and the change log (the chief only).

  Returns:
    The allowed changes (``'key: old -> new'``), also printed and logged.

  Raises:
    ConfigurationError: the directory holds a resumable run of a configuration
      this one cannot resume.
    RunDirectoryError: ``model_dir`` exists and is not a folder.
  """
  if os.path.lexists(model_dir) and not os.path.isdir(model_dir):
    raise RunDirectoryError(
        f'--model_dir={model_dir!r} is a file, not a folder: give the path of a '
        'folder (new or holding a run)')
  if overwrite and write:
    _remove_run(model_dir)
  stored_path = os.path.join(model_dir, CONFIG)
  allowed: List[str] = []
  if not overwrite and os.path.isfile(stored_path) and _resumable(model_dir):
    with open(stored_path) as f:
      stored = f.read()
    try:
      refused, allowed = differences(stored, config_text)
    except Exception as error:  # pylint: disable=broad-except
      print(f'warning: could not read {stored_path} ({error}); the configuration '
            'was not compared with it', file=sys.stderr)
      refused, allowed = [], []
    if refused:
      raise ConfigurationError(
          f'--model_dir={model_dir!r} holds a run of another configuration, which '
          f'this one cannot resume; differing bindings (stored -> now): '
          f'{"; ".join(refused)}. Use a new --model_dir, or add --overwrite to '
          f'delete that run and start over in {model_dir!r}')
    if allowed:
      print(f'note: resuming with changed settings: {"; ".join(allowed)}',
            file=sys.stderr, flush=True)
  if write:
    os.makedirs(model_dir, exist_ok=True)
    if allowed:
      stamp = datetime.datetime.now().isoformat(timespec='seconds')
      with open(os.path.join(model_dir, CHANGES), 'a') as f:
        f.writelines(f'{stamp} {line}\n' for line in allowed)
    with open(stored_path, 'w') as f:
      f.write(config_text)
  return allowed


def keep_vocabulary(model_dir: str, tokens: Optional[List[str]],
                    write: bool = True) -> None:
  """Saves a token task's vocabulary in the run directory (``vocabulary.txt``,
  one token per line in id order); a resumed run must have the same one.

  Raises:
    DataError: the stored vocabulary differs (the corpus changed under the
      run), naming the file and the first differing id.
  """
  if tokens is None:
    return
  path = os.path.join(model_dir, export.VOCABULARY)
  if os.path.isfile(path) and _resumable(model_dir):
    with open(path, encoding='utf-8') as f:
      stored = f.read().split('\n')[:-1]
    if stored != list(tokens):
      first = next((i for i, (a, b) in enumerate(zip(stored, tokens)) if a != b),
                   min(len(stored), len(tokens)))
      raise DataError(
          f'{path} holds the vocabulary this run started with ({len(stored)} '
          f'tokens), and the task now has another ({len(tokens)} tokens, first '
          f'difference at id {first}): the training text changed; restore it, '
          'or start a new run (a new --model_dir, or --overwrite)')
    return
  if write:
    os.makedirs(model_dir, exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
      f.writelines(f'{token}\n' for token in tokens)

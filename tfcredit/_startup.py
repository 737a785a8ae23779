"""A quiet start for the command-line entry points (standard library only).

TensorFlow writes C++ log lines to the process's stderr while it is imported (the
absl ``InitializeLog`` notice, "Could not find cuda drivers", ``oneDNN``...) and
when it first looks for devices (``E0000 ... failed call to cuInit`` on machines
without a GPU). ``TF_CPP_MIN_LOG_LEVEL`` filters only some of them and must be set
before TensorFlow is imported, which ``import tfcredit`` does. So
``tfcredit/__init__.py`` calls ``prepare()`` first: when the process is one of the
entry points (``tfcredit-train``..., ``python -m tfcredit.cli.<name>``,
``python tools/<name>.py``), it sets ``TF_CPP_MIN_LOG_LEVEL=3`` and imports
TensorFlow with the stderr file descriptor pointed at ``/dev/null``.

Nothing is hidden when the user set ``TF_CPP_MIN_LOG_LEVEL`` (their choice wins),
when ``--verbose`` is on the command line, or when tfcredit is imported as a
library.
"""

import os
import signal
import sys
import threading
from typing import Optional, Sequence

# The console scripts are declared once, in setup.cfg: each is ``tfcredit-<name>``
# running ``tfcredit.cli.<module>:main``. Recognising them here needs only that
# pattern and the modules of ``tfcredit/cli/``, so no second list can drift.
SCRIPT_PREFIX = 'tfcredit-'
_CLI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cli')
_NOT_COMMANDS = ('common.py',)  # Shared helpers; and any module named '_*'.
LOG_LEVEL_VARIABLE = 'TF_CPP_MIN_LOG_LEVEL'
_MODULE_PREFIX = 'tfcredit.cli.'
QUIETED = False  # prepare() set TF_CPP_MIN_LOG_LEVEL itself (not the user).


def command_modules() -> frozenset:
  """The modules of ``tfcredit/cli/`` that are entry points (each has ``main``)."""
  return frozenset(name[:-len('.py')] for name in os.listdir(_CLI_DIR)
                   if name.endswith('.py') and name not in _NOT_COMMANDS
                   and not name.startswith('_'))


def is_command(argv: Sequence[str], orig_argv: Optional[Sequence[str]] = None
               ) -> bool:
  """Whether ``argv`` (``sys.argv``) is one of tfcredit's entry points.

  ``orig_argv`` (``sys.orig_argv``) identifies ``python -m tfcredit.cli.<name>``,
  whose ``sys.argv[0]`` is only ``-m`` while the package is imported.
  """
  if argv:
    path = argv[0]
    name = os.path.basename(path)
    for suffix in ('.exe', '-script.py'):
      if name.endswith(suffix):
        name = name[:-len(suffix)]
    if name.startswith(SCRIPT_PREFIX):
      return True
    if (name.endswith('.py') and name[:-3] in command_modules()
        and os.path.basename(os.path.dirname(os.path.abspath(path))) in ('tools',
                                                                         'cli')):
      return True
  orig_argv = list(orig_argv or [])
  for index, arg in enumerate(orig_argv[:-1]):
    if arg == '-m':
      return orig_argv[index + 1].startswith(_MODULE_PREFIX)
  return False


def verbose_requested(argv: Sequence[str]) -> bool:
  """The value of ``--verbose`` on the command line (the last one wins)."""
  verbose = False
  for arg in argv[1:]:
    if arg == '--':
      break
    if arg in ('--verbose', '-verbose'):
      verbose = True
    elif arg in ('--noverbose', '-noverbose'):
      verbose = False
    elif arg.startswith(('--verbose=', '-verbose=')):
      verbose = arg.split('=', 1)[1].lower() in ('1', 'true', 't', 'yes')
  return verbose


def import_tensorflow_silently() -> None:
  """Imports TensorFlow with file descriptor 2 (stderr) sent to ``/dev/null``."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # No usable stderr descriptor: import as is.
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    return
  try:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
      os.dup2(null, 2)
    finally:
      os.close(null)
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,redefined-outer-name
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def _exit_quietly(signum, frame) -> None:
  """SIGINT or SIGTERM while an entry point starts: one line, exit 128 + signum."""
  del frame
  name = signal.Signals(signum).name
  print(f'interrupted by {name} while starting; nothing was saved',
        file=sys.stderr, flush=True)
  raise SystemExit(128 + signum)


def quiet_interrupts() -> None:
  """Until the entry point installs its own handlers (tfcredit.training.signals),
  Ctrl-C or SIGTERM during the imports ends the process with one line."""
  if threading.current_thread() is threading.main_thread():
    for signum in (signal.SIGINT, signal.SIGTERM):
      signal.signal(signum, _exit_quietly)


def prepare(argv: Optional[Sequence[str]] = None) -> bool:
  """Quiets TensorFlow's start-up if this process is an entry point; True if so."""
  argv = sys.argv if argv is None else argv
  if is_command(argv, getattr(sys, 'orig_argv', None)):
    quiet_interrupts()
  if 'tensorflow' in sys.modules or LOG_LEVEL_VARIABLE in os.environ:
    return False
  if not is_command(argv, getattr(sys, 'orig_argv', None)):
    return False
  if verbose_requested(argv):
    return False
  global QUIETED
  os.environ[LOG_LEVEL_VARIABLE] = '3'
  QUIETED = True
  import_tensorflow_silently()
  return True

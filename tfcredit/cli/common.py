"""Plumbing shared by the entry points: flag parsing, logging, exit codes."""

import errno
import re
import sys
import traceback
from typing import Callable, List, Optional, Sequence

from absl import app
from absl import flags

from tfcredit import _startup
from tfcredit.training import signals

FLAGS = flags.FLAGS


def define_flag(define: Callable[..., object], name: str, *args, **kwargs) -> None:
  """``define(name, *args, **kwargs)`` unless a flag ``name`` exists already
  (several entry-point modules may be imported into one process)."""
  if name not in FLAGS:
    define(name, *args, **kwargs)


def define_gin_flags() -> None:
  """``--gin_file`` and ``--gin_bindings``, defined once for every command (each
  command's docstring says what its configs are for)."""
  define_flag(flags.DEFINE_multi_string, 'gin_file', [],
              'Gin config files (repeatable): a path, or a packaged config such '
              'as gin_configs/quickstart.gin or testing/tiny.gin.')
  define_flag(flags.DEFINE_multi_string, 'gin_bindings', [],
              'Gin bindings (repeatable), applied after the files, e.g. '
              '"TruncatedBPTT.window = 20".')


def define_verbose_flag() -> None:
  define_flag(flags.DEFINE_bool, 'verbose', False,
              "Show TensorFlow's start-up lines and INFO logs (hidden by default; a "
              'TF_CPP_MIN_LOG_LEVEL set in the environment is respected).')


def _parse_flags(argv: Sequence[str]) -> List[str]:
  """absl's flag parsing, but a bad flag is ``error: ...`` and exit code 2."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    print(f'error: {error}\n(--help lists the flags)', file=sys.stderr)
    sys.exit(2)


def _configure_logging() -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if FLAGS.verbose:
    logging.set_verbosity(logging.INFO)
    tf.get_logger().setLevel('INFO')
  else:
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel('ERROR')


def _show_in_help(module) -> None:
  """``--help`` prints ``__main__``'s docstring and the flags of the module named
  ``sys.argv[0]``: for a console script (or a tools/ wrapper) make those the
  command module's docstring and the flags defined through ``define_flag``."""
  main_module = sys.modules.get('__main__')
  if main_module is not None and main_module is not module and module.__doc__:
    main_module.__doc__ = module.__doc__
  for flag in FLAGS.get_key_flags_for_module(__name__):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run(command: Callable[[List[str]], int],
        argv: Optional[Sequence[str]] = None) -> None:
  """Parses the flags, then exits with ``command(remaining argv)``'s exit code.

  What ``command`` raises is reported by ``failure`` (one line, the exit code of
  the error); SIGTERM and SIGINT before the command's own handling end the
  process with one line and exit code 143 or 130.
  """
  signals.install_immediate()
  define_verbose_flag()
  _show_in_help(sys.modules[command.__module__])

  def main(remaining: List[str]) -> None:
    _configure_logging()
    try:
      code = command(remaining)
    except Exception as error:  # pylint: disable=broad-except
      code = failure(error)
    sys.exit(code)

  try:
    app.run(main, argv=list(argv) if argv is not None else None,
            flags_parser=_parse_flags)
  except KeyboardInterrupt as interrupt:  # Also SIGTERM (signals.Terminated).
    sys.exit(failure(interrupt))


# gin appends one line per configurable call an exception passed through.
_GIN_CALL_SITE = re.compile(r"^\s*In call to configurable '.*$")


def error_line(error: BaseException) -> str:
  """The error's message as one line, without gin's call-site lines."""
  lines = [line.strip() for line in str(error).splitlines()
           if line.strip() and not _GIN_CALL_SITE.match(line)]
  return ' '.join(lines) or type(error).__name__


def _verbose() -> bool:
  try:
    return bool(FLAGS.verbose)
  except (AttributeError, flags.Error):
    return False


def failure(error: BaseException) -> int:
  """Reports an error raised by an entry point in one line on stderr (with the
  traceback under ``--verbose``) and returns its exit code; re-raises what is
  not a user-facing error (a bug keeps its traceback)."""
  from tfcredit import errors  # pylint: disable=g-import-not-at-top
  if _verbose():
    traceback.print_exc()
  if isinstance(error, signals.Interrupted):
    print(f'interrupted: {error_line(error)}', file=sys.stderr)
    return error.exit_code
  if isinstance(error, KeyboardInterrupt):
    signum = signals.signal_of(error)
    print(f'interrupted by {signals.name(signum)}: nothing was saved now; run the '
          'same command again to resume from the last checkpoint, if any',
          file=sys.stderr)
    return signals.exit_code_of(signum)
  if isinstance(error, errors.TfcreditError):
    print(f'error: {error_line(error)}', file=sys.stderr)
    return error.exit_code
  if isinstance(error, OSError):
    print(f'error: {os_error_line(error)}', file=sys.stderr)
    return 1
  if (isinstance(error, (TypeError, ValueError, NameError)) and
      _GIN_CALL_SITE.search(str(error).splitlines()[-1] if str(error) else '')):
    # Raised inside a configured call with a bound value it could not use.
    print(f'error: a bound value could not be used: {error_line(error)}. Check '
          'the types of the gin bindings (--verbose shows where)', file=sys.stderr)
    return 2
  raise error


def os_error_line(error: OSError) -> str:
  """``what: path``, and what to do, for an operating-system error."""
  path = error.filename
  reason = error.strerror or error_line(error)
  hint = {errno.EACCES: 'check its permissions, or choose another path',
          errno.EPERM: 'check its permissions, or choose another path',
          errno.EROFS: 'the file system is read-only: choose another path',
          errno.EEXIST: 'a file is where a folder should be: move it or choose '
                        'another path',
          errno.ENOTDIR: 'a file is where a folder should be: move it or choose '
                         'another path',
          errno.ENOSPC: 'the disk is full: free space or choose another path',
          }.get(error.errno, 'check the path')
  if path is None:
    return f'{reason}: {hint}'
  return f'{reason}: {path!r}: {hint}'


def unexpected_arguments(argv: Sequence[str], hint: str = '') -> Optional[int]:
  """Exit code 2 (after saying so) if there are positional arguments."""
  if len(argv) > 1:
    print(f'error: unexpected arguments {list(argv[1:])}{hint}', file=sys.stderr)
    return 2
  return None


def quieted_environment() -> dict:
  """The environment for a child entry point: without the ``TF_CPP_MIN_LOG_LEVEL``
  this process set for itself, so the child starts quietly (or verbosely) too."""
  import os  # pylint: disable=g-import-not-at-top
  env = dict(os.environ)
  if _startup.QUIETED:
    env.pop(_startup.LOG_LEVEL_VARIABLE, None)
  return env

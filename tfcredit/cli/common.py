"""Plumbing shared by the entry points: flag parsing, logging, exit codes."""

import sys
from typing import Callable, List, Optional, Sequence

from absl import app
from absl import flags

from tfcredit import _startup

FLAGS = flags.FLAGS


def define_flag(define: Callable[..., object], name: str, *args, **kwargs) -> None:
  """``define(name, *args, **kwargs)`` unless a flag ``name`` exists already
  (several entry-point modules may be imported into one process)."""
  if name not in FLAGS:
    define(name, *args, **kwargs)


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
  """Parses the flags, then exits with ``command(remaining argv)``'s exit code."""
  define_verbose_flag()
  _show_in_help(sys.modules[command.__module__])

  def main(remaining: List[str]) -> None:
    _configure_logging()
    sys.exit(command(remaining))

  app.run(main, argv=list(argv) if argv is not None else None,
          flags_parser=_parse_flags)


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

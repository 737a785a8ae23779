"""Gin plumbing shared by the entry scripts: parse files and bindings with clear errors."""

import logging
import os
from typing import Sequence

import gin

from tfcredit.errors import ConfigurationError


def configurable(cls):
  """Registers ``cls`` with gin as ``tfcredit.<name>`` (``@Name`` in a config)
  and returns it unchanged: how every tfcredit class becomes configurable (a
  decorator at its definition; the method registry applies it to methods)."""
  return gin.register(cls, module='tfcredit')


def _gin_configs_dir() -> str:
  """The shipped configs: the repository's top-level ``gin_configs/``, which
  the wheel installs inside the package as ``tfcredit/gin_configs`` (setup.py)."""
  package = os.path.dirname(os.path.abspath(__file__))
  installed = os.path.join(package, 'gin_configs')
  if os.path.isdir(installed):
    return installed
  return os.path.join(os.path.dirname(package), 'gin_configs')


GIN_CONFIGS_DIR = _gin_configs_dir()
_PACKAGED_PREFIX = 'gin_configs'


def resolve_gin_file(path: str) -> str:
  """Returns the .gin file that ``--gin_file=path`` names.

  A path that exists on disk wins. Otherwise a relative path is looked up in the
  packaged config folder (``GIN_CONFIGS_DIR``); a leading ``gin_configs/`` also
  names that folder, so ``gin_configs/quickstart.gin`` and
  ``zaremba14_tbptt/ptb_small.gin`` work from any directory.

  Raises:
    ConfigurationError: no such file on disk nor in the packaged folder.
  """
  if os.path.isfile(path):
    return path
  candidates = []
  if path and not os.path.isabs(path):
    relative = os.path.normpath(path)
    parts = relative.split(os.sep)
    if parts[0] == _PACKAGED_PREFIX and len(parts) > 1:
      candidates.append(os.path.join(GIN_CONFIGS_DIR, *parts[1:]))
    candidates.append(os.path.join(GIN_CONFIGS_DIR, relative))
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise ConfigurationError(
      f'--gin_file={path!r} does not exist: not on disk (relative to '
      f'{os.getcwd()!r}) nor in the packaged config folder {GIN_CONFIGS_DIR!r}. '
      'Give the path of a .gin file, or a packaged config such as '
      'gin_configs/quickstart.gin or testing/tiny.gin')


def _not_a_resource_probe(record: logging.LogRecord) -> bool:
  """False for gin's error line about an ``include`` that is not a Python-package
  resource: gin logs it before it finds the file on the search path."""
  return not (record.msg == 'Path not found: %s'
              and record.pathname.endswith('resource_reader.py'))


def parse(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> str:
  """Parses gin files and bindings (``skip_unknown`` stays off); returns config text.

  Each file is resolved by ``resolve_gin_file``; ``include`` lines resolve against
  the packaged config folder and each file's own folder.

  Raises:
    ConfigurationError: a file is missing or a binding is unknown or malformed; the
      message names it.
  """
  gin.add_config_file_search_path(GIN_CONFIGS_DIR)
  gin_files = [resolve_gin_file(path) for path in gin_files]
  for path in gin_files:
    gin.add_config_file_search_path(os.path.dirname(os.path.abspath(path)))
  root_logger = logging.getLogger()  # gin's resource reader logs to the root
  root_logger.addFilter(_not_a_resource_probe)
  try:
    gin.parse_config_files_and_bindings(gin_files, list(gin_bindings),
                                        skip_unknown=False)
  except Exception as error:  # pylint: disable=broad-except
    # gin raises ValueError, SyntaxError, KeyError, IOError, tokenize.TokenError
    # (an unclosed bracket or string), NameError (a name it cannot resolve)...
    what = ' '.join(str(error).split()) or type(error).__name__
    raise ConfigurationError(
        f'invalid gin configuration in {", ".join(gin_files) or "the bindings"}'
        f'{" or --gin_bindings" if gin_bindings and gin_files else ""}: '
        f'{type(error).__name__}: {what}. Check the syntax and the spelling of the '
        'binding against the class or function signature (see docs/design.md, '
        '"Configuration")') from None
  finally:
    root_logger.removeFilter(_not_a_resource_probe)
  return gin.config_str()

"""Gin plumbing shared by the entry scripts: parse files and bindings with clear errors."""

import logging
import os
from typing import Sequence

import gin

from tfcredit.errors import ConfigurationError

GIN_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'gin_configs')


def _not_a_resource_probe(record: logging.LogRecord) -> bool:
  """False for gin's error line about an ``include`` that is not a Python-package
  resource: gin logs it before it finds the file on the search path."""
  return not (record.msg == 'Path not found: %s'
              and record.pathname.endswith('resource_reader.py'))


def parse(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> str:
  """Parses gin files and bindings (``skip_unknown`` stays off); returns config text.

  ``include`` lines resolve against ``gin_configs/`` and each file's own folder.

  Raises:
    ConfigurationError: a file is missing or a binding is unknown or malformed; the
      message names it.
  """
  gin.add_config_file_search_path(GIN_CONFIGS_DIR)
  for path in gin_files:
    if not os.path.isfile(path):
      raise ConfigurationError(
          f'--gin_file={path!r} does not exist: give the path of a .gin file, e.g. '
          'gin_configs/quickstart.gin')
    gin.add_config_file_search_path(os.path.dirname(os.path.abspath(path)))
  root_logger = logging.getLogger()  # gin's resource reader logs to the root
  root_logger.addFilter(_not_a_resource_probe)
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings),
                                        skip_unknown=False)
  except (ValueError, SyntaxError, KeyError, IOError) as error:
    raise ConfigurationError(
        f'invalid gin configuration: {error}. Check the spelling of the binding '
        'against the class or function signature (see README, "Configuration").'
    ) from None
  finally:
    root_logger.removeFilter(_not_a_resource_probe)
  return gin.config_str()

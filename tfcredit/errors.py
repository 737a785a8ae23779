"""Errors tfcredit raises for bad input, with the exit code the entry scripts use.

Every error message names the parameter (or path), the value it got, and the fix.
The command-line entry points (``tfcredit.cli``) map `ConfigurationError` to exit
code 2 and `DataError` and `TrainingError` to exit code 1 (see docs/design.md,
"Entry points").
"""


class TfcreditError(Exception):
  """Base class of the errors tfcredit reports to a user."""

  exit_code = 1


class ConfigurationError(TfcreditError, ValueError):
  """A setting is invalid (unknown name, out-of-range value): exit code 2."""

  exit_code = 2


class DataError(TfcreditError):
  """Data is missing, corrupt or malformed: exit code 1."""

  exit_code = 1


class TrainingError(TfcreditError):
  """Training could not go on (for example a non-finite loss): exit code 1."""

  exit_code = 1

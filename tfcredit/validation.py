"""Argument checks shared by the methods, tasks, models and tools.

Each returns the value in its plain Python type, or raises a
``ConfigurationError`` that names the setting (``'ARTBP.alpha'``,
``'--windows_per_call'``), the value and what would be accepted.
"""

import math
import numbers
from typing import Any, Sequence

from tfcredit.errors import ConfigurationError


def positive_int(name: str, value: Any) -> int:
  """A whole number >= 1 (a Python or numpy integer, not a bool)."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value <= 0):
    raise ConfigurationError(
        f'{name} must be a positive integer, got {value!r}: set it to a whole '
        f'number >= 1')
  return int(value)


def integer(name: str, value: Any, minimum: int) -> int:
  """A whole number >= ``minimum`` (a Python or numpy integer, not a bool)."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < minimum):
    raise ConfigurationError(
        f'{name} must be an integer >= {minimum}, got {value!r}')
  return int(value)


def number(name: str, value: Any) -> float:
  """An int or float (not a string or a bool)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ConfigurationError(
        f'{name} must be a number, got {value!r} ({type(value).__name__}): write '
        f'it without quotes, e.g. {name} = 0.01')
  return float(value)


def finite_number(name: str, value: Any, low: float = -math.inf,
                  high: float = math.inf, low_inclusive: bool = False,
                  hint: str = '') -> float:
  """A finite real number, in ``(low, high]`` (``[low, high]`` if
  ``low_inclusive``) when bounds are given; ``hint`` ends the message."""
  bounded = math.isfinite(low) or math.isfinite(high)
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not math.isfinite(value) or value > high or value < low or
      (value == low and not low_inclusive)):
    interval = ''
    if bounded:
      interval = (f' in {"[" if low_inclusive else "("}{low:g}, '
                  f'{high:g}{"]" if math.isfinite(high) else ")"}')
    raise ConfigurationError(
        f'{name} must be a finite number{interval}, got {value!r}{hint}')
  return float(value)


def non_negative(name: str, value: Any, hint: str = '') -> float:
  """A finite real number >= 0."""
  return finite_number(name, value, 0.0, low_inclusive=True, hint=hint)


def boolean(name: str, value: Any) -> bool:
  """``True`` or ``False`` (not 0, 1 or a string)."""
  if not isinstance(value, bool):
    raise ConfigurationError(f'{name} must be True or False, got {value!r}')
  return value


def real(name: str, value: Any, fix: str) -> float:
  """A finite real number; ``fix`` says what to pass instead."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not math.isfinite(value)):
    raise ConfigurationError(f'{name}={value!r} is not a finite number; {fix}.')
  return float(value)


def require(ok: bool, name: str, value: Any, requirement: str,
            fix: str) -> None:
  """Raises unless ``ok``: ``value`` of ``name`` must be ``requirement``;
  ``fix`` says what to pass instead."""
  if not ok:
    raise ConfigurationError(
        f'{name}={value!r} is invalid: it must be {requirement}; {fix}.')


def one_of(name: str, value: Any, choices: Sequence[Any], hint: str = '') -> Any:
  """One of ``choices``."""
  if value not in choices:
    raise ConfigurationError(
        f'{name} must be one of {tuple(choices)}, got {value!r}{hint}')
  return value

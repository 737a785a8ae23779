"""The test tiers (setup.cfg's ``slow`` marker, docs/design.md#tests).

A matrix that re-checks one property over every registered method or shipped
config keeps its representative rows in the inner loop (``-m "not slow"``); its
other rows run in the whole suite only.
"""

import pytest


def slow_except(cases, *keep):
  """``cases`` as pytest parameters, each marked ``slow`` unless it is one of
  ``keep``; the ids stay those pytest gives the bare values."""
  unknown = [case for case in keep if case not in cases]
  if unknown:
    raise ValueError(f'keep={unknown!r} is not among the cases {cases!r}')
  return [case if case in keep else pytest.param(
      *(case if isinstance(case, tuple) else (case,)), marks=pytest.mark.slow)
          for case in cases]

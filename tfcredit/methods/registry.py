"""The methods' registry: adding a method is adding a module.

A method module decorates its class with ``@registry.register``: the class is
registered with gin under its name (``train.method = @Name``) and listed in
``tfcredit.methods.METHODS``, from which the public API, the shared test
configurations and the distribution test's table are assembled. Its
``EXAMPLE_ARGUMENTS`` are constructor arguments of a small stream run.
"""

import re
from typing import Dict

from tfcredit import config

REGISTRY: Dict[str, type] = {}


def key(cls: type) -> str:
  """A method's short name: its ``KEY``, else the class name in snake case
  (``TruncatedBPTT`` → ``truncated_bptt``)."""
  return vars(cls).get('KEY') or re.sub(r'(?<=[a-z0-9])(?=[A-Z])', '_',
                                        cls.__name__).lower()


def register(cls: type) -> type:
  """Registers a ``Method`` subclass with gin and in ``REGISTRY``; returns it."""
  config.configurable(cls)
  REGISTRY[key(cls)] = cls
  return cls

"""How credit is assigned: one module per method, one shared base.

Every module of this package is imported here; the classes they register
(``tfcredit.methods.registry``) are ``METHODS``, by short name, and this package's
public names. Shared modules (the base and its helpers) register nothing.
"""

import importlib
import pkgutil

from tfcredit.methods import registry
from tfcredit.methods.base import Method

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')

METHODS = dict(sorted(registry.REGISTRY.items()))
globals().update({cls.__name__: cls for cls in METHODS.values()})
__all__ = ['METHODS', 'Method'] + sorted(cls.__name__ for cls in METHODS.values())

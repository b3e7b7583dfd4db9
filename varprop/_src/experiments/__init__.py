"""Experiments reproducing classic initialization claims (see :mod:`.base` for the contract).

Every module of this package other than :mod:`.base` and :mod:`.measure` registers its
experiments with ``@experiment`` when imported; :func:`_load_all` imports them all.
"""

import importlib
import pkgutil

#: Modules that hold infrastructure, not experiments.
_INFRASTRUCTURE = ("base", "measure")


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _INFRASTRUCTURE and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")

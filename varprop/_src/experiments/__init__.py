"""Experiments reproducing classic initialization claims (see :mod:`.base` for the contract)."""

import importlib

#: Modules that register experiments (each adds its own with ``@experiment``).
_MODULES = ("init_scale", "gains_hist", "training")


def _load_all() -> None:
    for m in _MODULES:
        importlib.import_module(f"varprop._src.experiments.{m}")

"""Lazy attributes for the public modules (PEP 562): a name is imported on first use.

Example:
    >>> import types
    >>> mod = types.ModuleType("demo")
    >>> mod.__getattr__, mod.__dir__ = lazy_attributes(mod, {"sqrt": ("math", "sqrt")}, ["sqrt"])
    >>> mod.sqrt(4.0), "sqrt" in vars(mod)
    (2.0, True)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any


def lazy_attributes(
    module: ModuleType | str,
    table: Mapping[str, tuple[str, str | None]],
    names: Sequence[str],
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``module``: ``table`` maps a public name to ``(module
    to import, attribute or None for the module itself)``; a value once loaded is stored in
    the module, so later lookups do not come back here."""
    import sys

    def target() -> ModuleType:
        return sys.modules[module] if isinstance(module, str) else module

    def __getattr__(name: str) -> Any:
        try:
            source, attr = table[name]
        except KeyError:
            raise AttributeError(
                f"module {target().__name__!r} has no attribute {name!r}"
            ) from None
        value = importlib.import_module(source)
        if attr is not None:
            value = getattr(value, attr)
        setattr(target(), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(target())) | set(names))

    return __getattr__, __dir__

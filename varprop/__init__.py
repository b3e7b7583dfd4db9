"""varprop: neural-network initialization you can prove.

Every initializer carries its variance law (:mod:`varprop.initializers`), the SymPy side
derives what each layer's forward and backward variance must be (:mod:`varprop.laws`),
and the checker measures a real network against it.

The names below are imported on first use (PEP 562), so ``import varprop`` is fast and
loads neither JAX's heavy users (Flax) nor SciPy or Matplotlib until they are needed; it
never changes JAX's configuration (see :func:`enable_compilation_cache`).

Example:
    >>> import varprop
    >>> varprop.check.__name__, "laws" in dir(varprop)
    ('check', True)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it (a submodule when the name is its own).
_LAZY = {
    "CheckResult": "varprop._src.check",
    "LayerRow": "varprop._src.check",
    "assert_agrees": "varprop._src.check",
    "assert_healthy": "varprop._src.check",
    "check": "varprop._src.check",
    "enable_compilation_cache": "varprop._src.cli",
    "Initializer": "varprop._src.initializers",
    "scheme_of": "varprop._src.initializers",
    "Scheme": "varprop._src.laws.schemes",
    "initializers": "varprop.initializers",
    "laws": "varprop.laws",
    "nn": "varprop.nn",
}

__all__ = [
    "CheckResult",
    "Initializer",
    "LayerRow",
    "Scheme",
    "assert_agrees",
    "assert_healthy",
    "check",
    "enable_compilation_cache",
    "initializers",
    "laws",
    "nn",
    "scheme_of",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'varprop' has no attribute {name!r}")
    if module == f"varprop.{name}":
        value = importlib.import_module(module)
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what pyright and IDEs see; nothing is imported at run time
    from varprop import initializers, laws, nn
    from varprop._src.check import CheckResult, LayerRow, assert_agrees, assert_healthy, check
    from varprop._src.cli import enable_compilation_cache
    from varprop._src.initializers import Initializer, scheme_of
    from varprop._src.laws.schemes import Scheme

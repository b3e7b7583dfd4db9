"""Every docstring example in the package runs, as written (doctest).

The modules are discovered, not listed: a new module with an example is tested without
anyone adding it here. A module whose examples need the MNIST files skips when they are
absent.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import varprop

ROOT = Path(varprop.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages([str(ROOT)], prefix="varprop."):
        path = ROOT.joinpath(*info.name.split(".")[1:])
        file = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
        if file.exists() and ">>> " in file.read_text(encoding="utf-8"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_examples_are_found():
    # The discovery itself must work: these modules have examples today.
    for name in ("varprop._src.core.network", "varprop._src.stats", "varprop._src.probe"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
    assert result.attempted > 0, f"{name} has '>>> ' in its source but no example ran"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"

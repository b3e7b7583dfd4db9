"""Strict JAX settings for the whole suite (as far as Flax and optax run under them); the
CLI's compilation cache goes to a temporary directory, not the user's."""

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import jax

os.environ.setdefault("VARPROP_CACHE_DIR", tempfile.mkdtemp(prefix="varprop-test-cache-"))

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


import pytest  # noqa: E402

_QUICK: dict[str, object] = {}


@pytest.fixture(scope="session")
def quick_result():
    """``quick_result(name)``: the experiment's quick run (seed 0), computed once per session
    and shared by its tests and the end-to-end report test."""
    from varprop._src.experiments.base import Experiment, RunConfig, get

    original_run = Experiment.run  # test_report monkeypatches Experiment.run to this fixture

    def run(name: str):
        if name not in _QUICK:
            _QUICK[name] = original_run(get(name), RunConfig(quick=True, seed=0))
        return _QUICK[name]

    return run


def load_script(name: str):
    """The module of ``scripts/<name>.py``, loaded by path (scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    if str(path.parent) not in sys.path:  # the scripts share bench_common.py
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the group marks
def pytest_collection_modifyitems(config, items):
    """Tests that run an experiment (they take the ``quick_result`` fixture) are ``slow``:
    the default ``pytest`` deselects them (``-m 'not slow'`` in the configuration) and CI
    runs them in a second step, ``pytest -m slow``. They share one xdist worker."""
    for item in items:
        if "quick_result" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
            # One worker runs them all (``--dist loadgroup``), so that each experiment's
            # quick run is computed once per session, not once per worker.
            item.add_marker(pytest.mark.xdist_group("experiments"))

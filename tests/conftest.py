"""Strict JAX settings for the whole suite (as far as Flax and optax run under them); the
CLI's compilation cache goes to a temporary directory, not the user's."""

import importlib.util
import os
import pickle
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
def quick_result(tmp_path_factory):
    """``quick_result(name)``: the experiment's quick run (seed 0), computed once per test
    run and shared by its tests and the end-to-end report test, across xdist workers too:
    the first worker to need it computes it under a file lock and pickles it into the
    run's shared temporary directory; the others wait for it and read it. (xdist's
    ``--dist loadgroup`` would keep them on one worker, but with pytest 9 it no longer
    groups: it renames ``item._nodeid``, which pytest 9's node ids do not read.)"""
    from varprop._src.experiments.base import Experiment, RunConfig, get

    original_run = Experiment.run  # test_report monkeypatches Experiment.run to this fixture
    shared = tmp_path_factory.getbasetemp()  # this run's own
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's directory, above every worker's

    def compute(name: str):
        return original_run(get(name), RunConfig(quick=True, seed=0))

    def run(name: str):
        if name in _QUICK:
            return _QUICK[name]
        try:
            import fcntl
        except ImportError:  # no POSIX file locks: each worker computes its own
            _QUICK[name] = compute(name)
            return _QUICK[name]
        path = shared / f"varprop-quick-{name}.pickle"
        with open(shared / f"varprop-quick-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if path.exists():
                    _QUICK[name] = pickle.loads(path.read_bytes())
                else:
                    _QUICK[name] = compute(name)
                    path.write_bytes(pickle.dumps(_QUICK[name]))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
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


def pytest_itemcollected(item):
    """Tests that run an experiment (they take the ``quick_result`` fixture) are ``slow``:
    the default ``pytest`` deselects them (``-m 'not slow'`` in the configuration) and CI
    runs them in a second step, ``pytest -m slow``."""
    if "quick_result" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.slow)

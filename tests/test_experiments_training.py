"""Experiments 8, 11, 12 (training, Fixup, data standardization) and the classification loader.

Each claim is checked against a prediction computed here, independently of the experiment's
own bookkeeping, not only through ``Claim.held``.
"""

import math
from pathlib import Path

import numpy as np
import pytest

from varprop._src.data import DataNotFoundError, load_classification, standardize_split
from varprop._src.experiments.base import RunConfig, get

MNIST_DIR = Path("/work/shared/data/mnist")
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_common(res):
    assert res.claims and all(c.held for c in res.claims), [c for c in res.claims if not c.held]
    assert res.figures and all(f.png.startswith(b"\x89PNG") for f in res.figures)
    assert all(f.caption for f in res.figures)
    assert res.laws and all(law.latex for law in res.laws)
    assert res.rows and res.notes and res.summary


# -- the loader ------------------------------------------------------------------------------


def test_digits_fallback_says_how_to_get_mnist(monkeypatch):
    monkeypatch.delenv("VARPROP_MNIST_DIR", raising=False)
    ds = load_classification()
    assert ds.source == "digits" and ds.x.shape == (1797, 64) and ds.x.dtype == np.float32
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0 and set(np.unique(ds.y)) == set(range(10))
    assert "VARPROP_MNIST_DIR" in ds.note and "--data-dir" in ds.note and "digits" in ds.note


def test_no_fallback_raises_naming_the_directory(tmp_path):
    missing = tmp_path / "no_mnist_here"
    with pytest.raises(DataNotFoundError, match="no_mnist_here") as err:
        load_classification(missing, allow_fallback=False)
    assert "VARPROP_MNIST_DIR" in str(err.value) and "idx" in str(err.value).lower()


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST test set not at {MNIST_DIR}")
def test_mnist_from_env(monkeypatch):
    monkeypatch.setenv("VARPROP_MNIST_DIR", str(MNIST_DIR))
    ds = load_classification(allow_fallback=False)
    assert ds.source == "mnist" and ds.x.shape == (10_000, 784) and ds.image_shape == (28, 28)


# -- 8. deep_training ------------------------------------------------------------------------


def test_deep_training(quick_result):
    res = quick_result("deep_training")
    _check_common(res)
    d = res.data
    depth = d["init_q"].shape[1]
    assert depth == 30
    # Same normals, Xavier = He / sqrt(2) per layer: E[z_l^2] ratio is 2^-l exactly.
    ratio = np.log2(d["init_q"][1] / d["init_q"][0])
    np.testing.assert_allclose(ratio, -np.arange(1, depth + 1), atol=0.01)
    # Same output gradient: every layer's weight gradient is 2^-(depth-1) smaller.
    np.testing.assert_allclose(
        np.log2(d["init_grad_moments"][1] / d["init_grad_moments"][0]), -(depth - 1), atol=0.01
    )
    # Training: He's last-10% loss is below Xavier's by more than 1 nat; Xavier at chance.
    loss = d["train_loss"]
    tail = loss[-max(1, len(loss) // 10) :].mean(axis=0)
    assert tail[1] - tail[0] > 1.0
    assert abs(tail[1] - math.log(10)) < 0.05
    assert d["valid_accuracy"][-1, 0] - d["valid_accuracy"][-1, 1] > 0.5


# -- 11. fixup -------------------------------------------------------------------------------


def _first_overflow_estimate(log_q0, n, rng):
    """Independent, simpler estimate: drift E[ln r] and E[ln kappa] by Monte Carlo, then the
    first block where the mean walk passes the barrier (plus half a block for the step)."""
    count = 200_000
    a = np.square(np.maximum(rng.standard_normal((count, n)), 0)).sum(axis=1)
    h = 2 * a / n
    g = rng.standard_normal((count, n))
    g[:, 0] += np.sqrt(n / (2 * h))  # |x/|x|*sqrt(n/2H) + g|^2 * (2H/n) = r
    r = np.square(g).sum(axis=1) * (2 * h / n)
    g2 = np.square(rng.standard_normal((count // 10, n)))
    log_kappa = np.log(g2.max(axis=1) / g2.mean(axis=1)).mean()
    barrier = 2 * math.log(FLOAT32_MAX)
    return float(np.mean((barrier - log_q0 - log_kappa) / np.log(r).mean()) + 0.5)


def test_fixup(quick_result):
    res = quick_result("fixup")
    _check_common(res)
    d = res.data
    assert int(d["blocks"]) == 10_000 and d["q_init"].shape == (10_001,)
    # Fixup at init: every block is the identity, so E[x_l^2] is the same at every block.
    np.testing.assert_allclose(d["q_init"], d["q_init"][0], rtol=1e-6)
    assert np.all(np.isfinite(d["q_trained"])) and np.all(np.isfinite(d["train_losses"]))
    assert d["heldout_loss"][1] < d["heldout_loss"][0] - 0.05
    # He in both branch layers: first non-finite block within 1 of an independent estimate.
    first = d["he_first_nonfinite"]
    assert np.all(first <= 10_000)
    est = _first_overflow_estimate(
        d["he_log_q0"].ravel(), int(d["width"]), np.random.default_rng(7)
    )
    assert abs(first.mean() - est) <= 1.0, (first.mean(), est)
    # The mean-field overflow block (factor 3) comes earlier than a typical sample's.
    mean_field = math.ceil(
        (2 * math.log(FLOAT32_MAX) - math.log(np.exp(d["he_log_q0"]).mean())) / math.log(3)
    )
    assert int(d["he_mean_field_block"]) == mean_field < first.mean()


# -- 12. data_standardization ----------------------------------------------------------------


def _check_standardization(res, ds):
    split = standardize_split(ds.x, ds.y, 0.2, seed=0)
    n_t, n_v = len(split.x_train), len(split.x_valid)
    tm, ts = res.data["train_mean_std"]
    vm, vs = res.data["valid_mean_std"]
    assert abs(tm) < 1e-5 and abs(ts - 1) < 1e-5
    np.testing.assert_allclose([vm, vs], [split.x_valid.mean(), split.x_valid.std()], atol=1e-5)
    # Standard error of the validation mean, images as the unit, computed here.
    se = ds.x.mean(axis=1).std(ddof=1) / split.std * math.sqrt(1 / n_t + 1 / n_v)
    assert abs(vm) <= 4 * se and (abs(vm) > 1e-6 or abs(vs - 1) > 1e-6)
    assert 0.8 < res.data["split_valid_means"].std(ddof=1) / se < 1.25
    acc = dict(zip(res.data["variants"], res.data["accuracy"], strict=True))
    assert acc["training split's mean/std"] > acc["not standardized"] + 0.01


def test_data_standardization_digits(quick_result):
    res = quick_result("data_standardization")
    _check_common(res)
    if "digits" in res.notes[0]:
        _check_standardization(res, load_classification(allow_fallback=True))
        assert "VARPROP_MNIST_DIR" in res.notes[0]


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST test set not at {MNIST_DIR}")
def test_data_standardization_mnist():
    res = get("data_standardization").run(RunConfig(quick=True, seed=0, data_dir=str(MNIST_DIR)))
    _check_common(res)
    assert "MNIST" in res.notes[0]
    _check_standardization(res, load_classification(MNIST_DIR, allow_fallback=False))

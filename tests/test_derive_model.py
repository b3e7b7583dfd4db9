"""The derivation report of a user's model (varprop.derive_model, varprop derive --model)."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import varprop

HE = jax.nn.initializers.he_normal()


def _mlp(rngs):
    return nnx.Sequential(
        nnx.Linear(64, 64, kernel_init=HE, rngs=rngs),
        jax.nn.relu,
        nnx.Linear(64, 64, kernel_init=HE, rngs=rngs),
        jax.nn.relu,
        nnx.Linear(64, 64, kernel_init=HE, rngs=rngs),
    )


X = jax.ShapeDtypeStruct((16, 64), jnp.float32)


def test_he_mlp_derivation_has_the_laws_numbers():
    d = varprop.derive_model(_mlp, X)
    assert [r.path for r in d.layers] == ["layers/0", "layers/2", "layers/4"]
    for r in d.layers:
        assert r.variance == pytest.approx(2 / 64)
        assert r.y2 == pytest.approx(2.0, rel=3e-3)  # He on standard normal data
        assert r.border == pytest.approx(1.0, rel=3e-3)  # dense: every tap is inside
    assert d.layers[0].x2 == pytest.approx(1.0)
    assert d.layers[1].x2 == pytest.approx(1.0, rel=3e-3)  # relu halves E[y^2] = 2
    assert d.health["forward"].startswith("preserved")
    md = d.markdown()
    assert "| 1 | layers/2 | dense 64x64 | 64 | 64 |" in md
    assert r"\frac{2}{n_{in}}" in md  # He's law, rendered by SymPy
    assert d.latex().startswith(r"\section*{")
    page = d.html()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page


def test_save_writes_every_format(tmp_path):
    written = varprop.derive_model(_mlp, X).save(tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == [
        "model_derivation.html",
        "model_derivation.md",
        "model_derivation.png",
        "model_derivation.tex",
    ]
    assert (
        "![predicted moments over depth](model_derivation.png)"
        in (tmp_path / "out" / "model_derivation.md").read_text()
    )


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "varprop", "derive", *args], capture_output=True, text=True
    )


def test_cli_derives_a_model_and_fails_cleanly():
    ok = _cli("--model", "varprop.example_models:cnn", "--input-shape", "4,28,28,1")
    assert ok.returncode == 0, ok.stderr
    assert "| 0 | conv1 | conv 3x3 | 9 |" in ok.stdout
    bad = _cli("--model", "varprop.example_models:nope", "--input-shape", "4,28,28,1")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "nope" in bad.stderr
    html_without_model = _cli("--format", "html")
    assert html_without_model.returncode == 2 and "needs --model" in html_without_model.stderr


@pytest.mark.slow
def test_measured_points_come_from_check_model():
    d = varprop.derive_model(_mlp, jax.random.normal(jax.random.key(0), (256, 64)), measure=True)
    for r in d.layers:
        assert r.measured_y2 == pytest.approx(r.y2, rel=0.1)
    assert "measured E[y²]" in d.markdown()

"""The width sweep (``varprop._src.sweep``) and experiment 15, ``coord_check``.

Default tests: the sweep's jitted, vmapped, sharded program against a plain training loop
written here; the Transformer family's roles and causality; the symbolic laws against the
papers' exponents; a small MLP coordinate check (SP against μP with Adam). Under ``slow``:
the quick run of the experiment, its verdicts and its slopes recomputed from its data.

Expected exponents are written from Yang et al. 2022 ("Tensor Programs V", Table 3 and
Sec. 7.2) and by hand (the derivations in the comments), not computed by the code under test.
Tolerances: the seeds' Student-t interval of a mean slope (alpha = 1e-3, Bonferroni over the
test's comparisons) plus the finite-width bias a relative correction c n^{-1/2}, |c| <= 2,
can put on a least-squares slope over the widths (computed here with ``np.polyfit``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sympy as sp
from scipy import stats

from varprop._src.experiments import coord_check as C
from varprop._src.parametrization_jax import WidthScaling
from varprop._src.sweep import (
    mlp_family,
    seed_keys,
    seed_mesh,
    transformer_family,
    width_program,
    width_sweep,
)

HALF = sp.Rational(1, 2)


def _bias(widths, c=2.0) -> float:
    """The largest |slope| of ln(1 + c' n^-1/2) on ln n over ``widths``, |c'| <= c."""
    x = np.log(np.asarray(widths, float))
    return max(abs(np.polyfit(x, np.log1p(s / np.sqrt(widths)), 1)[0]) for s in (c, -c))


def _polyfit_slopes(sizes: np.ndarray, widths) -> np.ndarray:
    """``sizes`` (widths, seeds, layers) -> per seed and layer the slope of ln size on ln n."""
    x = np.log(np.asarray(widths, float))
    w, s, layers = sizes.shape
    flat = np.log(sizes).reshape(w, s * layers)
    return np.polyfit(x, flat, 1)[0].reshape(s, layers)


# --------------------------------------------------------------------------------------
# The sweep against a plain loop.
# --------------------------------------------------------------------------------------


def test_sweep_program_matches_a_plain_training_loop():
    # The documented contract: seed key k; batch from fold_in(k, 0) (x then v, split in
    # two), weights from fold_in(k, 1) through WidthScaling.init_params; t optax steps on
    # the linear loss; RMS of each layer and of its change since init after every step.
    d_in, batch, n, steps, lr = 4, 8, 32, 3, 1e-2
    fam = mlp_family(hidden_layers=2, d_in=d_in, d_out=1, batch=batch)
    assert fam.labels(n) == {"w1": "input", "w2": "hidden", "out": "output"}
    keys = seed_keys(5, 2)
    prog = width_program(
        fam, n, "muP", "adam", learning_rate=lr, steps=steps,
        mesh=seed_mesh(2, jax.devices()[:1]), base_width=16,
    )  # fmt: skip
    with jax.transfer_guard("disallow"):  # no host transfer inside the program
        act, upd = jax.block_until_ready(prog(jax.device_put(keys)))
    act, upd = np.asarray(act, np.float64), np.asarray(upd, np.float64)

    labels = {"w1": "input", "w2": "hidden", "out": "output"}
    ws = WidthScaling("muP", n, 16, gain="relu")
    tx = optax.chain(optax.adam(lr), ws.learning_rates(labels, "adam"))

    @jax.jit
    def layers(p, x):
        q = ws.apply_multipliers(p, labels)
        h1 = x @ q["w1"]
        h2 = jax.nn.relu(h1) @ q["w2"]
        return [h1, h2, jax.nn.relu(h2) @ q["out"]]

    @jax.jit
    def step(p, state, x, v):
        g = jax.grad(lambda p: jnp.sum(layers(p, x)[-1] * v) / batch)(p)
        with jax.numpy_dtype_promotion("standard"):
            u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state

    for s in range(2):
        kx, kv = jax.random.split(jax.random.fold_in(keys[s], 0))
        x = jax.random.normal(kx, (batch, d_in))
        v = jax.random.normal(kv, (batch, 1))
        k_init = jax.random.fold_in(keys[s], 1)
        shapes = {"w1": jnp.zeros((d_in, n)), "w2": jnp.zeros((n, n)), "out": jnp.zeros((n, 1))}
        p = ws.init_params(k_init, shapes, labels)
        h0 = [np.asarray(a, np.float64) for a in layers(p, x)]
        state = tx.init(p)
        for t in range(steps + 1):
            h = [np.asarray(a, np.float64) for a in layers(p, x)]
            want_act = np.array([np.sqrt(np.mean(a**2)) for a in h])
            want_upd = np.array(
                [np.sqrt(np.mean((a - b) ** 2)) for a, b in zip(h, h0, strict=True)]
            )
            # float32: sums reordered by vmap/scan; 1e-5 of the layer's size (see the
            # multi-device test for the derivation)
            np.testing.assert_allclose(act[s, t], want_act, rtol=1e-5)
            assert np.all(np.abs(upd[s, t] - want_upd) <= 1e-5 * want_act), t
            if t < steps:
                p, state = step(p, state, x, v)
    assert np.all(upd[:, 0] == 0) and np.all(upd[:, 1:] > 0)


def test_sweep_arguments_are_checked():
    fam = mlp_family(hidden_layers=1, d_in=2, batch=2)
    with pytest.raises(ValueError, match="increasing"):
        width_sweep(fam, (32, 16), "SP", learning_rate=0.1, steps=1, seeds=1)
    with pytest.raises(ValueError, match="optimizer"):
        width_program(fam, 8, "SP", "lion", learning_rate=0.1, steps=1,
                      mesh=seed_mesh(1), base_width=8)  # fmt: skip


def test_transformer_family_roles_and_causality():
    fam = transformer_family(blocks=1, d_in=4, d_out=2, tokens=5, batch=2, head_dim=8)
    labels = fam.labels(16)
    assert labels["embed"] == "input" and labels["out"] == "output"
    assert {labels["blocks"][0][m] for m in ("q", "k", "v", "o", "w1", "w2")} == {"hidden"}
    assert fam.layers == ("embed", "attn1", "mlp1", "output")
    assert fam.roles == ("input", "hidden", "hidden", "output")
    ws = WidthScaling("SP", 16, 16)
    params = ws.init_params(jax.random.key(0), fam.init(jax.random.key(0), 16), labels)
    u, _ = fam.data(jax.random.key(1))
    apply = jax.jit(fam.apply)
    f, taps = apply(params, u)
    f2, _ = apply(params, u.at[:, -1].add(1.0))  # change the last token only
    # causal: every earlier token's output is unchanged (bitwise up to float32 rounding)
    np.testing.assert_allclose(f2[:, :-1], f[:, :-1], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(f2[:, -1] - f[:, -1]).max()) > 1e-3
    assert taps["attn1"].shape == (2, 5, 16) and f.shape == (2, 5, 2)
    with pytest.raises(ValueError, match="head_dim"):
        fam.init(jax.random.key(0), 12)


# --------------------------------------------------------------------------------------
# The laws.
# --------------------------------------------------------------------------------------


def test_symbolic_adam_laws_give_the_papers_exponents():
    sym = C.symbolic_adam_laws()
    # Hand derivation with Adam (update entries n^{-a-c}, coherent sums over the fan-in):
    # hidden dh = W0 dx (1/2 - a - b) or dW x (1 - a - c); SP (0, 1/2, 0) -> 1, muP
    # (0, 1/2, 1) -> 0. Output: W dx2 (coherent: 1 - a - b + dx2) or dW x2 (1 - a - c, the
    # hidden activations Θ(n^{1/2 - a - b})): SP 3/2, muP 0 (TP5: muP updates are Θ(1)).
    assert (sym["hidden_SP"], sym["output_SP"]) == (1, sp.Rational(3, 2))
    assert (sym["hidden_muP"], sym["output_muP"]) == (0, 0)
    a_h, c_h = sp.symbols("a_h c_h", real=True)
    b_h = sp.Symbol("b_h", real=True)
    assert sp.simplify(sym["hidden"] - sp.Max(HALF - a_h - b_h, 1 - a_h - c_h)) == 0


def test_predictions_for_the_families():
    # MLP with 3 hidden layers: SP/Adam first order (0, 1, 1, 3/2), SP/SGD (-1/2, 1/2, 1/2,
    # 1) (the 2-layer values of tests/test_parametrization.py, extended by one hidden layer
    # of the same exponent); muP everything 0, its output at init n^{-1/2}.
    sp_adam = C.prediction("SP", "adam", 4).layers
    assert [r.update_first_order for r in sp_adam] == [0, 1, 1, sp.Rational(3, 2)]
    sp_sgd = C.prediction("SP", "sgd", 4).layers
    assert [r.update_first_order for r in sp_sgd] == [-HALF, HALF, HALF, 1]
    mup = C.prediction("muP", "adam", 6).layers
    assert [r.update_first_order for r in mup] == [0] * 6
    assert [r.activation for r in mup] == [0] * 5 + [-HALF]


def test_allowance():
    for widths in [(64, 128, 256, 512), (64, 128, 256, 512, 1024, 2048)]:
        assert C.allowance(widths) == pytest.approx(_bias(widths), rel=1e-9)
    assert C.allowance((64, 128, 256, 512)) == pytest.approx(0.0933, abs=1e-4)  # module docs
    assert C.allowance((64, 128, 256, 512, 1024, 2048)) == pytest.approx(0.0677, abs=1e-4)


# --------------------------------------------------------------------------------------
# A small coordinate check.
# --------------------------------------------------------------------------------------


def test_small_mlp_coordinate_check():
    # MLP with 2 hidden layers, Adam at lr 1e-4 (first-order regime), widths 64 and 256,
    # 16 seeds. Expected (hand, TP5 Table 3): muP (0, 0, 0), SP (0, 1, 3/2); at init the
    # hidden layers are Θ(1) in both and muP's output is n^{-1/2}.
    widths, seeds = (64, 256), 16
    fam = mlp_family(hidden_layers=2, d_in=8, d_out=1, batch=16)
    expected = {"muP": [0.0, 0.0, 0.0], "SP": [0.0, 1.0, 1.5]}
    init = {"muP": [0.0, 0.0, -0.5], "SP": [0.0, 0.0, 0.0]}
    crit = stats.t.ppf(1 - 1e-3 / (2 * 12), seeds - 1)
    bias = _bias(widths)
    for p in ("muP", "SP"):
        res = width_sweep(fam, widths, p, "adam", learning_rate=1e-4, steps=2, seeds=seeds)
        for sizes, want in (
            (res.update[:, :, -1], expected[p]),
            (res.activation[:, :, 0], init[p]),
        ):
            sl = _polyfit_slopes(sizes, widths)
            m, se = sl.mean(0), sl.std(0, ddof=1) / math.sqrt(seeds)
            assert np.all(np.abs(m - want) <= crit * se + bias), (p, m, se, want)
        np.testing.assert_allclose(
            res.slopes("update", -1), _polyfit_slopes(res.update[:, :, -1], widths), atol=1e-9
        )
        assert len(res.records()) == len(widths) * seeds * 3 * 3


# --------------------------------------------------------------------------------------
# The experiment (slow: it takes the quick_result fixture).
# --------------------------------------------------------------------------------------


def test_quick_run_claims_and_figures(quick_result):
    r = quick_result("coord_check")
    assert r.ran, r.error
    assert len(r.claims) == 4
    for c in r.claims:
        assert c.held, f"{c.statement}: {c.evidence}"
    assert [f.name for f in r.figures] == ["updates", "steps"]
    assert all(f.png[:4] == b"\x89PNG" for f in r.figures)
    assert r.laws and r.rows


def test_quick_run_slopes_recomputed(quick_result):
    r = quick_result("coord_check")
    widths = tuple(int(n) for n in r.data["widths"])
    assert widths == (64, 128, 256, 512)
    bias = _bias(widths)
    n_tests = r.data["n_tests"]
    for key, d in r.data["sweeps"].items():
        model, opt, p = key.split("/")
        upd = d["update"][:, :, -1]
        sl = _polyfit_slopes(upd, widths)
        np.testing.assert_allclose(d["slopes"], sl, atol=1e-9)
        seeds = sl.shape[0]
        m, se = sl.mean(0), sl.std(0, ddof=1) / math.sqrt(seeds)
        crit = stats.t.ppf(1 - 1e-3 / (2 * n_tests), seeds - 1)
        if p == "muP":  # TP5: every layer's update Θ(1)
            assert np.all(np.abs(m) <= crit * se + bias), (key, m, se)
        else:  # SP: the output's update grows (first order: n^1 SGD, n^{3/2} Adam)
            assert m[-1] - crit * se[-1] > bias, (key, m, se)
            if model == "mlp":  # the derivation's own network: the value too
                want = 1.0 if opt == "sgd" else 1.5
                assert abs(m[-1] - want) <= crit * se[-1] + bias, (key, m, se)
        assert np.all(d["update"][:, :, 0] == 0)

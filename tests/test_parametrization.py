"""Parametrizations as laws (SP, NTK, μP): the declared exponents against the papers' tables,
the derived width exponents against the papers' statements and TP4's closed form, and the
JAX side (initializers, multipliers, the optax learning-rate mapping) against the laws.

Expected values are written from the papers (Yang & Hu 2021, "Tensor Programs IV", Sec. 3
and Thm 3.3; Yang et al. 2022, "Tensor Programs V", Table 3), not computed by the code.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sympy as sp
from scipy import stats

from varprop import laws
from varprop._src.parametrization_jax import WidthScaling, roles_from_shapes

R = sp.Rational
HALF = R(1, 2)

# --------------------------------------------------------------------------------------
# The declared exponents against the tables.
# --------------------------------------------------------------------------------------

# Table 3 of Yang et al. 2022 (multiplier 1): Init Var 1/fan_in | 1/fan_in^2 | 1/fan_in;
# SGD LR fan_out | 1/fan_in | 1; Adam LR 1 | 1/fan_in | 1/fan_in (input | output | hidden),
# with fan_in = d fixed for the input layer and fan_out = n: b is half the variance's
# exponent, c minus the LR's.
TP5_MUP = {"input": (0, 0, -1, 0), "hidden": (0, HALF, 0, 1), "output": (0, 1, 1, 1)}
# The same table's SP (gray): Var 1/fan_in everywhere, LR 1 everywhere.
TP5_SP = {"input": (0, 0, 0, 0), "hidden": (0, HALF, 0, 0), "output": (0, HALF, 0, 0)}
# Yang & Hu 2021, Sec. 3: NTP a = (0, 1/2, 1/2), b = 0, c = 0 (SGD).
TP4_NTK_SGD = {"input": (0, 0, 0), "hidden": (HALF, 0, 0), "output": (HALF, 0, 0)}


@pytest.mark.parametrize(("p", "table"), [(laws.MUP, TP5_MUP), (laws.SP, TP5_SP)])
def test_declared_exponents_match_table_3(p, table):
    for role, (a, b, c_sgd, c_adam) in table.items():
        e = p.layer(role)
        assert (e.a, e.b, e.c_sgd, e.c_adam) == (a, b, c_sgd, c_adam), role


def test_ntk_matches_tp4():
    for role, (a, b, c) in TP4_NTK_SGD.items():
        e = laws.NTK.layer(role)
        assert (e.a, e.b, e.c_sgd) == (a, b, c), role


def test_adam_column_of_mup_follows_from_its_sgd_column():
    # Table 3's Adam column (1, 1/fan_in, 1/fan_in -> c = 0, 1, 1) from the SGD column.
    assert laws.adam_exponents_from_sgd(laws.MUP) == {"input": 0, "hidden": 1, "output": 1}
    ntk = laws.adam_exponents_from_sgd(laws.NTK)
    assert ntk == {r: laws.NTK.layer(r).c_adam for r in ("input", "hidden", "output")}


def test_names_and_errors():
    assert laws.parametrization_named("MUP") is laws.MUP
    with pytest.raises(ValueError, match="allowed: SP, NTK, muP"):
        laws.parametrization_named("mf")
    with pytest.raises(ValueError, match="allowed: sgd, adam"):
        laws.predict_widths("SP", "lion")
    with pytest.raises(ValueError, match="hidden_layers"):
        laws.predict_widths("SP", hidden_layers=0)
    with pytest.raises(ValueError, match="steps"):
        laws.predict_widths("SP", steps=0)


# --------------------------------------------------------------------------------------
# The derived exponents against the papers' statements.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("steps", [1, 3])
def test_mup_everything_order_one(opt, steps):
    # TP4/TP5: under μP every hidden pre-activation and its change are Θ(1), so is the
    # output's change, and the output at init is Θ(n^{-1/2}) (it vanishes in the limit).
    pred = laws.predict_widths("muP", opt, steps=steps)
    rows = pred.layers
    assert [r.activation for r in rows] == [0, 0, -HALF]
    assert [r.update for r in rows] == [0, 0, 0]
    assert [r.update_first_order for r in rows] == [0, 0, 0]
    # Spectral condition (Yang, Simon & Bernstein 2023): ||ΔW||_2/||W||_2 = Θ(1) per layer.
    assert [r.relative_update_spectral for r in rows] == [0, 0, 0]
    assert pred.regime == "feature learning"


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_ntk_hidden_updates_vanish(opt):
    # TP4: NTP is in the kernel regime with r = 1/2: features move Θ(n^{-1/2}), f Θ(1).
    pred = laws.predict_widths("NTK", opt, steps=2)
    assert [r.update for r in pred.layers] == [-HALF, -HALF, 0]
    assert pred.regime == "kernel"


@pytest.mark.parametrize("loss", ["squared", "cross_entropy", "linear"])
def test_sp_output_update_blows_up(loss):
    # SP with a width-independent LR is unstable (TP4, Sec. 3; TP5, Sec. 5). Hand derivation
    # of the first-order terms for SGD: dh1 = eta x.x g1 ~ n^{-1/2} (g1 ~ W2^T W3^T),
    # dh2 = eta |x1|^2 g2 ~ n * n^{-1/2}, df = eta |x2|^2 + W3 dx2 ~ n.
    sgd = laws.predict_widths("SP", "sgd", loss=loss)
    assert [r.update_first_order for r in sgd.layers] == [-HALF, HALF, 1]
    assert sgd.layers[-1].update >= 1 and sgd.regime == "unstable"
    # Adam: sign-like steps of size eta: dh2 ~ n (sum of n coherent terms), and the readout
    # sees W3 . dx2 = sum_i |W3_i| n ~ n^{3/2}.
    adam = laws.predict_widths("SP", "adam", loss=loss)
    assert [r.update_first_order for r in adam.layers] == [0, 1, R(3, 2)]


def test_symmetry_leaves_predictions_unchanged():
    # TP4's μP form (a = -1/2, 0, 1/2; b = 1/2; c = 0) is Table 3's up to the abc symmetry.
    tp4 = laws.Parametrization(
        "muP (TP4)",
        input=laws.LayerExponents(-HALF, HALF, 0, HALF),
        hidden=laws.LayerExponents(0, HALF, 0, 1),
        output=laws.LayerExponents(HALF, HALF, 0, HALF),
    )
    for opt, steps in itertools.product(["sgd", "adam"], [1, 2]):
        a = laws.predict_widths(tp4, opt, steps=steps).layers
        b = laws.predict_widths(laws.MUP, opt, steps=steps).layers
        assert [(r.activation, r.update, r.relative_update) for r in a] == [
            (r.activation, r.update, r.relative_update) for r in b
        ]
    shifted = laws.SP.shifted({"hidden": R(1, 3), "output": -1})
    for opt in ("sgd", "adam"):
        assert (
            laws.predict_widths(shifted, opt, steps=2).layers
            == laws.predict_widths(laws.SP, opt, steps=2).layers
        )


def _tp4_r(a, b, c):
    """TP4 Definition 3.2 for L = 2 hidden layers (layers 1, 2 and the readout 3)."""
    return min(a[3] + b[3], 2 * a[3] + c) + c - 1 + min(2 * a[1] + 1, 2 * a[2])


def test_feature_update_matches_tp4_closed_form():
    # Over a grid of abc-parametrizations with one c (as in TP4), stable by Thm 3.3
    # (a1 + b1 = 0, a2 + b2 = 1/2, a3 + b3 >= 1/2, r >= 0, a3 + b3 + r >= 1, 2 a3 + c >= 1):
    # the last hidden layer's change after t >= 2 steps is n^{-r}, the regime is feature
    # learning iff r = 0, and the output moves (nontrivial) iff a3 + b3 + r = 1 or 2 a3 + c = 1.
    grid = [R(k, 2) for k in range(-1, 3)]
    checked = 0
    for a1, a2, a3, b3, c in itertools.product(grid, grid, grid, grid, grid):
        a = {1: a1, 2: a2, 3: a3}
        b = {1: -a1, 2: HALF - a2, 3: b3}
        r = _tp4_r(a, b, c)
        if a3 + b3 < HALF or r < 0 or a3 + b3 + r < 1 or 2 * a3 + c < 1:
            continue
        p = laws.Parametrization(
            "grid",
            input=laws.LayerExponents(a1, b[1], c, c),
            hidden=laws.LayerExponents(a2, b[2], c, c),
            output=laws.LayerExponents(a3, b3, c, c),
        )
        pred = laws.predict_widths(p, "sgd", steps=2, loss="cross_entropy")
        assert pred.layers[1].update == -r, (a, b, c)
        nontrivial = a3 + b3 + r == 1 or 2 * a3 + c == 1
        expected = "trivial" if not nontrivial else ("feature learning" if r == 0 else "kernel")
        assert pred.regime == expected, (a, b, c)
        checked += 1
    assert checked > 50


def test_symbolic_exponents_give_formulas():
    a, b, c = sp.symbols("a b c")
    p = laws.Parametrization(
        "sym",
        input=laws.LayerExponents(0, 0, 0, 0),
        hidden=laws.LayerExponents(0, HALF, 0, 0),
        output=laws.LayerExponents(a, b, c, c),
    )
    out = laws.predict_widths(p, "adam", loss="linear").layers[-1]
    # Adam, first order: W3 dx2 (coherent, dx2 ~ n^1) and dW3 x2 (entries n^{-a-c}, n terms).
    assert sp.simplify(out.update_first_order - sp.Max(2 - a - b, 1 - a - c)) == 0
    assert out.update_first_order.subs({a: 0, b: 1, c: 1}) == 1  # b = 1 alone is not μP
    assert "\\max" in laws.predict_widths(p, "adam").latex()


def test_rendering_and_scales():
    pred = laws.predict_widths("SP", "sgd")
    md = pred.markdown()
    assert "| 3 | output | 0 | 3/2 | 3/2 | 1 | 1/2 | 1/2 |" in md and "unstable" in md
    assert r"\begin{tabular}" in pred.latex() and "$\\frac{3}{2}$" in pred.latex()
    assert "| output | 0 | 1 | 1 | 1 |" in laws.MUP.markdown()
    scales = pred.scales([64, 256], "update_first_order")
    assert scales == [[1.0, 0.5], [1.0, 2.0], [1.0, 4.0]]
    assert pred.exponents("activation") == {"input": (0,), "hidden": (0,), "output": (0,)}
    with pytest.raises(ValueError, match="unknown quantity"):
        pred.exponents("size")


def test_role_laws_at_base_width_are_sp():
    from varprop._src.laws import parametrization as LP
    from varprop._src.laws import symbols as S

    for p in laws.PARAMETRIZATIONS:
        for role in ("input", "hidden", "output"):
            rl = laws.role_laws(p, role, "adam")
            fan = S.fan_in if role != "input" else S.fan_out
            at_base = {LP.WIDTH: LP.BASE_WIDTH, fan: LP.BASE_WIDTH}
            assert sp.simplify(rl.multiplier.subs(at_base)) == 1
            assert sp.simplify(rl.learning_rate.subs(at_base)) == 1
            assert sp.simplify((rl.variance - S.gain**2 / S.fan_in).subs(at_base)) == 0


# --------------------------------------------------------------------------------------
# The JAX side.
# --------------------------------------------------------------------------------------

D, K, BATCH = 16, 1, 32


def _shapes(n: int) -> dict:
    return {"w1": jnp.zeros((D, n)), "w2": jnp.zeros((n, n)), "w3": jnp.zeros((n, K))}


def _forward(p: dict, x):
    h1 = x @ p["w1"]
    h2 = jax.nn.relu(h1) @ p["w2"]
    return h1, h2, jax.nn.relu(h2) @ p["w3"]


def _labels(n: int) -> dict:
    return roles_from_shapes(_shapes(n), _shapes(2 * n))


def test_roles_from_shapes_of_the_mlp():
    assert _labels(64) == {"w1": "input", "w2": "hidden", "w3": "output"}
    with pytest.raises(ValueError, match="shape"):
        roles_from_shapes({"w": jnp.zeros((3, 4))}, {"w": jnp.zeros((4,))})


@pytest.mark.parametrize(
    ("name", "role", "shape_of", "variance_of"),
    [
        # Table 3: Var 1/fan_in^2 for μP's readout, anchored so that n = 64 is SP: 64/n^2.
        ("muP", "output", lambda n: (n, 64), lambda n: 64 / n**2),
        ("muP", "hidden", lambda n: (n, n), lambda n: 1 / n),
        ("muP", "input", lambda n: (16, n), lambda n: 1 / 16),
        # NTK: w ~ N(0, 1) in the width (here 1/n0 = 1/64, width-independent).
        ("NTK", "hidden", lambda n: (n, n), lambda n: 1 / 64),
        ("SP", "output", lambda n: (n, 64), lambda n: 1 / n),
    ],
)
def test_initializer_variances_at_two_widths(name, role, shape_of, variance_of):
    # The sample variance of N normal draws has relative standard error sqrt(2/N) (kurtosis
    # 3); 5 standard errors, Bonferroni-safe over the 10 checks (two-sided p < 6e-7 each).
    for k, n in enumerate((64, 256)):
        init = WidthScaling(name, n, 64).initializer(role)
        shape = shape_of(n)
        w = np.asarray(init(jax.random.key(10 + k), shape), np.float64)
        assert init.scheme.variance(shape) == pytest.approx(variance_of(n), rel=1e-12)
        se = math.sqrt(2 / w.size)
        assert abs(w.var() / variance_of(n) - 1) < 5 * se, (name, role, n)


def test_multipliers_and_lr_scales():
    ws = WidthScaling("NTK", 256, 64)
    assert ws.multiplier("hidden") == pytest.approx(0.5) and ws.multiplier("input") == 1.0
    assert ws.learning_rate_scale("hidden", "adam") == pytest.approx(0.25)
    mup = WidthScaling("muP", 256, 64)
    assert mup.learning_rate_scale("input", "sgd") == pytest.approx(4.0)
    assert mup.learning_rate_scale("output", "sgd") == pytest.approx(0.25)
    assert mup.learning_rate_scale("fixed", "sgd") == 1.0
    with pytest.raises(ValueError, match="unknown role label"):
        mup.multiplier("readout")


def _first_update(name: str, opt: str, n: int, mapped: bool = True) -> dict:
    ws = WidthScaling(name, n, 64, gain="relu")
    labels = _labels(n)
    params = ws.init_params(jax.random.key(1), _shapes(n), labels)
    x = jax.random.normal(jax.random.key(2), (BATCH, D))
    v = jax.random.normal(jax.random.key(3), (BATCH, K))
    base = optax.sgd(0.1) if opt == "sgd" else optax.adam(1e-3)
    tx = optax.chain(base, ws.learning_rates(labels, opt)) if mapped else base

    def loss(p):
        return jnp.mean(_forward(ws.apply_multipliers(p, labels), x)[2] * v)

    g = jax.grad(loss)(params)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int and float
        upd, _ = tx.update(g, tx.init(params), params)
    return {"update": upd, "grad": g}


def test_sgd_mapping_scales_each_group_by_n_to_minus_c():
    # SGD is linear in the LR: the mapped update over the unmapped one is r^{-c} exactly
    # (float32 rounding of one product: relative 1e-6).
    for n in (64, 256):
        mapped = _first_update("muP", "sgd", n)["update"]
        plain = _first_update("muP", "sgd", n, mapped=False)["update"]
        for key, c in (("w1", TP5_MUP["input"][2]), ("w2", 0), ("w3", 1)):
            scaled = (n / 64) ** (-float(c)) * np.asarray(plain[key])
            np.testing.assert_allclose(np.asarray(mapped[key]), scaled, rtol=1e-5, atol=0)


def test_adam_mapping_scales_updates_across_widths():
    # Adam's first step is -eta g / (|g| + eps) per entry: |u| = eta (1 - O(eps/|g|)) where
    # g != 0 (a unit dead on the whole batch has g = 0 and u = 0). So the mean |u| over those
    # entries at n = 256 over n = 64 is 4^{-c_adam}, up to eps/min|g| (computed) and float32.
    got = {n: _first_update("muP", "adam", n) for n in (64, 256)}
    eps = 1e-8
    for key, role in (("w1", "input"), ("w2", "hidden"), ("w3", "output")):
        size, min_g = {}, math.inf
        for n, res in got.items():
            g, u = np.asarray(res["grad"][key]), np.asarray(res["update"][key])
            live = g != 0
            assert live.mean() > 0.9, (key, n)
            size[n] = np.abs(u[live]).mean()
            min_g = min(min_g, np.abs(g[live]).min())
        tol = 2 * eps / min_g + 1e-5
        expected = 4.0 ** (-float(TP5_MUP[role][3]))
        assert abs(size[256] / size[64] / expected - 1) < tol, (key, size)


def _slopes(name: str, opt: str, lr: float, widths, seeds: int, steps: int) -> np.ndarray:
    """Per seed, the log-log slope of the RMS change of (h1, h2, f) after ``steps`` steps."""
    x = jax.random.normal(jax.random.key(100), (BATCH, D))
    v = jax.random.normal(jax.random.key(101), (BATCH, K))
    sizes = np.zeros((seeds, len(widths), 3))
    for j, n in enumerate(widths):
        ws = WidthScaling(name, n, 64, gain="relu")
        labels = _labels(n)
        tx = optax.chain(
            optax.sgd(lr) if opt == "sgd" else optax.adam(lr), ws.learning_rates(labels, opt)
        )

        def loss(p, ws=ws, labels=labels):
            return jnp.mean(_forward(ws.apply_multipliers(p, labels), x)[2] * v)

        def run(key, ws=ws, labels=labels, tx=tx, loss=loss, n=n):
            p = ws.init_params(key, _shapes(n), labels)
            h0 = _forward(ws.apply_multipliers(p, labels), x)
            st = tx.init(p)
            for _ in range(steps):
                with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int and float
                    u, st = tx.update(jax.grad(loss)(p), st, p)
                p = optax.apply_updates(p, u)
            h = _forward(ws.apply_multipliers(p, labels), x)
            return jnp.stack([jnp.sqrt(jnp.mean((a - b) ** 2)) for a, b in zip(h, h0, strict=True)])

        for s in range(seeds):
            sizes[s, j] = np.asarray(run(jax.random.key(s)))
    logw = np.log(np.asarray(widths, float))
    return np.array(
        [[np.polyfit(logw, np.log(sizes[s, :, k]), 1)[0] for k in range(3)] for s in range(seeds)]
    )


@pytest.mark.parametrize(
    ("name", "opt", "lr"),
    [
        ("muP", "sgd", 0.05),
        ("SP", "sgd", 0.05),
        pytest.param("NTK", "sgd", 0.05, marks=pytest.mark.slow),
        pytest.param("muP", "adam", 0.003, marks=pytest.mark.slow),
        pytest.param("SP", "adam", 0.003, marks=pytest.mark.slow),
        pytest.param("NTK", "adam", 0.003, marks=pytest.mark.slow),
    ],
)
def test_coordinate_check_slopes(name, opt, lr):
    # A 3-layer ReLU MLP at widths 64/256/1024, 3 steps on a fixed batch with the linear loss
    # (L' = v: the loss adds no width dependence). The measured slopes are compared with the
    # first-order exponents (at these learning rates the widths are in the regime eta n^e << 1). Tolerance:
    # the seeds' t interval (99.9%, Bonferroni over the 3 layers) plus the finite-width bias:
    # corrections are O(n^{-1/2}) relative; with a coefficient up to 2 they move a slope over
    # ln(1024/64) by at most ln(1 + 2/sqrt(64)) / ln 16 = 0.08.
    widths, seeds = (64, 256, 1024), 4
    slopes = _slopes(name, opt, lr, widths, seeds, steps=3)
    pred = [
        r.update_first_order for r in laws.predict_widths(name, opt, steps=3, loss="linear").layers
    ]
    t = stats.t.ppf(1 - 0.001 / 6, seeds - 1)
    bias = math.log(1 + 2 / math.sqrt(64)) / math.log(16)
    for k in range(3):
        m, se = slopes[:, k].mean(), slopes[:, k].std(ddof=1) / math.sqrt(seeds)
        assert abs(m - float(pred[k])) <= t * se + bias, (name, k, m, se, pred[k])

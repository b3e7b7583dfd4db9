"""Experiments 1-6 (degenerate_init: zeros, constant; weight_scale: the other four): each
quick run against an independent prediction.

The predictions here are recomputed from closed forms or NumPy (Gauss-Hermite quadrature),
not read from the experiment's own rows.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varprop import initializers as inits

NAMES = ("zeros", "constant", "small_random", "standard_normal", "xavier", "he")
TINY = float(np.finfo(np.float32).tiny)
MAX = float(np.finfo(np.float32).max)


def _tanh_m2(q: float) -> float:
    """E[tanh(sqrt(q) z)^2], z ~ N(0, 1), by 80-point Gauss-Hermite (probabilists')."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    return float(np.sum(w * np.tanh(math.sqrt(q) * x) ** 2) / math.sqrt(2 * math.pi))


@pytest.mark.parametrize("name", NAMES)
def test_result_shape(quick_result, name):
    res = quick_result(name)
    assert res.name == name and res.summary and res.laws and res.rows and res.data
    assert res.claims and all(c.held for c in res.claims), [c for c in res.claims if not c.held]
    assert res.figures and all(f.png.startswith(b"\x89PNG") for f in res.figures)
    assert all(f.caption for f in res.figures)


def test_zeros_gradient_sets(quick_result):
    res = quick_result("zeros")
    acts = list(res.data["activations"])
    gmax = res.data["grad_max"]  # (acts, steps, L, 2)
    depth = gmax.shape[2]
    nonzero = gmax > 0
    # Step 1: only the output bias, plus the output kernel iff phi(0) != 0 (sigmoid).
    for a, phi0 in (("tanh", 0.0), ("relu", 0.0), ("sigmoid", 0.5)):
        first = nonzero[acts.index(a), 0]
        assert not first[:-1].any()  # every hidden gradient exactly 0
        assert first[-1, 1] and first[-1, 0] == (phi0 != 0)
    # phi(0) = 0: nothing but the output bias ever gets a gradient or moves.
    for a in ("tanh", "relu"):
        i = acts.index(a)
        assert nonzero[i, :, -1, 1].all() and nonzero[i].sum() == nonzero.shape[1]
        moved = res.data["param_max"][i, -1] > 0
        assert moved[-1, 1] and moved.sum() == 1
    # sigmoid: layer l first gets a gradient at step L - l + 1 (one layer per step).
    i = acts.index("sigmoid")
    for layer in range(depth):
        steps_nz = np.nonzero(nonzero[i, :, layer].all(-1))[0]
        assert steps_nz.size and steps_nz[0] == depth - 1 - layer
        assert not nonzero[i, : depth - 1 - layer, layer].any()


def test_constant_symmetry(quick_result):
    res = quick_result("constant")
    steps = res.data["spread_constant"].shape[0] - 1
    # Rounding budget: one float32 ulp of the weights' scale (< 1) per step.
    assert res.data["spread_constant"].max() <= np.finfo(np.float32).eps * steps
    assert res.data["spread_glorot"][-1].min() > 0.1


def test_small_random_decay_and_underflow(quick_result):
    res = quick_result("small_random")
    n = int(res.data["width"])
    factor = n * 0.01**2  # tanh is linear near 0
    z = res.data["z_log_m2"]
    s, depth = z.shape
    lo, hi = res.data["factor_layers"][0]
    meas = math.exp(np.mean((z[:, hi - 1] - z[:, lo - 1]) / (hi - lo)))
    # Per layer, the weights move log q by at most sqrt(2/n) (1 sd); 5 sd on the mean.
    assert abs(math.log(meas / factor)) <= 5 * math.sqrt(2 / (n * (hi - lo) * s))
    # Mean-field check of the first layers: q1 = n Var(w), q2 = n Var(w) E[tanh^2](q1).
    q1 = factor
    q2 = factor * _tanh_m2(q1)
    assert abs(z[:, 0].mean() - math.log(q1)) < 0.1
    assert abs(z[:, 1].mean() - math.log(q2)) < 0.15
    under = math.ceil(2 * math.log(TINY) / math.log(factor))
    assert np.all(np.abs(res.data["underflow_fwd"] - under) <= 1)
    # g_L = E[tanh'(z_L)^2] = 1 (z_L has underflowed), then the same factor downward.
    k = math.ceil(2 * math.log(TINY) / math.log(factor))
    assert np.all(np.abs(res.data["underflow_bwd"] - (depth - k)) <= 1)


def test_standard_normal_overflow(quick_result):
    res = quick_result("standard_normal")
    # x <- W x, n = 512: log q_t = t log 512; inf once sqrt(q_t) > float32 max.
    mp_pred = math.ceil(2 * math.log(MAX) / math.log(512))
    assert mp_pred == 29
    assert np.all(np.abs(res.data["mp_first_nonfinite"] - mp_pred) <= 1)
    # ReLU MLP: q_l = 512 * 256^(l-1); first layer whose typical value overflows.
    relu_pred = math.ceil((2 * math.log(MAX) - math.log(2.0)) / math.log(256))
    first = res.data["mlp_first_nonfinite"]
    assert np.all(first > 0) and np.all(np.abs(first - relu_pred) <= 1)
    # The measured per-layer growth before overflow is 256 (5 % is ~20 sd at width 512).
    q = res.data["mlp_q_measured"]
    growth = np.exp(np.nanmean(np.diff(q[:, :20], axis=1)))
    assert abs(growth / 256 - 1) < 0.05


def test_xavier_tanh_and_relu(quick_result):
    res = quick_result("xavier")
    tz = res.data["tanh_z_log_m2"]
    s, depth = tz.shape
    q = [1.0]
    for _ in range(depth - 1):
        q.append(_tanh_m2(q[-1]))  # n Var(w) = 1 for Glorot in square layers
    dev = np.abs(tz.mean(0) - np.log(q))
    assert dev.max() < 0.1
    # Near the fixed point the per-layer factor tends to 1 (no geometric collapse).
    mid = depth // 2
    pred = (q[-1] / q[mid - 1]) ** (1 / (depth - mid))
    meas = math.exp(np.mean(tz[:, -1] - tz[:, mid - 1]) / (depth - mid))
    assert pred > 0.85 and abs(math.log(meas / pred)) < 0.02
    rz = res.data["relu_z_log_m2"]
    n = int(res.data["width"])
    f = math.exp(np.mean((rz[:, -1] - rz[:, 0]) / (depth - 1)))
    # Weights (<= 2/n) and the ReLU's half (<= 3/n) per layer; 4 sd on the mean.
    assert abs(math.log(f / 0.5)) <= 4 * math.sqrt(5 / (n * (depth - 1) * s))
    rg = res.data["relu_gz_log_m2"]
    fb = math.exp(np.mean((rg[:, 0] - rg[:, -1]) / (depth - 1)))
    assert abs(math.log(fb / 0.5)) <= 4 * math.sqrt(5 / (n * (depth - 1) * s))


def test_he_directions(quick_result):
    res = quick_result("he")
    n = int(res.data["width"])
    sz = res.data["square_z_log_m2"]
    s, depth = sz.shape
    bound = 4 * math.sqrt(5 / (n * (depth - 1) * s))
    assert abs(np.mean(sz[:, -1] - sz[:, 0]) / (depth - 1)) <= bound
    sg = res.data["square_gz_log_m2"]
    assert abs(np.mean(sg[:, 0] - sg[:, -1]) / (depth - 1)) <= bound
    w = res.data["pyramid_widths"]
    # The seed's Layer(M, N): std sqrt(2/M), M = outputs -> identical to He fan_out.
    seed_std = res.data["pyramid_seed_Layer_std"]
    np.testing.assert_allclose(seed_std, np.sqrt(2.0 / w[1:]))
    np.testing.assert_allclose(seed_std, res.data["pyramid_fan_out_std"])
    for kind in ("fan_in", "fan_out", "seed_Layer"):
        z = res.data[f"pyramid_{kind}_z_log_m2"].mean(0)
        g = res.data[f"pyramid_{kind}_gz_log_m2"].mean(0)
        fwd, bwd = math.exp(z[3] - z[0]), math.exp(g[0] - g[3])
        if kind == "fan_in":  # q_{l+1}/q_l = 1; g_l/g_{l+1} = n_{l+1}/n_l = 1/2
            exp_f, exp_b = 1.0, w[4] / w[1]
        else:  # q_{l+1}/q_l = n_l/n_{l+1} = 2; gradients preserved
            exp_f, exp_b = w[1] / w[4], 1.0
        assert abs(math.log(fwd / exp_f)) < math.log(1.5), (kind, fwd, exp_f)
        assert abs(math.log(bwd / exp_b)) < math.log(1.5), (kind, bwd, exp_b)


def test_in_jit_draw_matches_initializer():
    """The experiments draw N(0, 1) kernels scaled by the scheme's std (the probe's
    ``weight_scales``): that is what the initializers draw."""
    key = jax.random.key(3)
    for init in (inits.normal(0.01), inits.glorot_normal(), inits.he_normal(mode="fan_out")):
        shape = (64, 32)
        expected = init.scheme.std(shape) * jax.random.normal(key, shape, jnp.float32)
        np.testing.assert_array_equal(np.asarray(init(key, shape)), np.asarray(expected))

r"""float32 limits in both directions, with the extreme-value factor, against hand arithmetic
and against float32 simulations of linear nets (NumPy: gradual underflow; XLA: flush to zero).

Hand arithmetic (ln of the float32 limits: 2 ln(3.4028e38) = 177.4457,
2 ln(1.1755e-38) = -174.6731; extreme-value factor c^2 = 2 ln(count)):
- overflow, f = 512, q0 = 1, count = 128 * 512: ln c^2 = ln(22.18) = 3.0992, so
  L > (177.4457 - 3.0992) / ln 512 = 27.95 -> 28; without c^2: 177.4457 / 6.2383 = 28.44 -> 29.
- underflow, f = 1/4, q0 = 1e-50, count = 8192: ln c^2 = ln(18.02) = 2.8916, so
  L > (-174.6731 + 115.1293 - 2.8916) / ln(1/4) = 45.04 -> 46; without: 42.95 -> 43.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varprop._src.laws import layers as Ly


def test_extreme_value_factor_moves_overflow_earlier():
    assert Ly.float32_limit_layer(512.0, 1.0, count=128 * 512) == ("overflow", 28)
    assert Ly.float32_limit_layer(512.0, 1.0) == ("overflow", 29)


def test_extreme_value_factor_moves_underflow_later():
    assert Ly.float32_limit_layer(0.25, 1e-50, count=8192) == ("underflow", 46)
    assert Ly.float32_limit_layer(0.25, 1e-50) == ("underflow", 43)


def test_floor_choice():
    # Gradual underflow keeps values down to 2^-150: ln(2^-300) = -207.94.
    # L > (-207.944 + 115.129 - 2.892) / -1.386 = 69.0 -> 70.
    assert Ly.float32_limit_layer(0.25, 1e-50, count=8192, floor=Ly.FLOAT32_SUBNORMAL_FLOOR) == (
        "underflow",
        70,
    )


def _linear_net(width, var_w, batch, q0, max_layers, seed, matmul):
    """First layer whose output has an inf (or is all zero), in float32."""
    rng = np.random.default_rng(seed)
    x = (math.sqrt(q0) * rng.standard_normal((batch, width))).astype(np.float32)
    for layer in range(1, max_layers + 1):
        w = (math.sqrt(var_w) * rng.standard_normal((width, width))).astype(np.float32)
        with np.errstate(over="ignore"):
            x = np.asarray(matmul(x, w))
        if not np.all(np.isfinite(x)):
            return "overflow", layer
        if not np.any(x):
            return "underflow", layer
    return "none", None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overflow_layer_matches_float32_simulation(seed):
    """Factor 2 per layer (Var(w) = 2/512) from q0 = 1e60: the largest of 128 x 512 values
    overflows at 53 (measured 52-53 over six seeds), the typical one would at 57."""
    n, b, f, q0 = 512, 128, 2.0, 1e60
    _, with_c = Ly.float32_limit_layer(f, q0, count=b * n)
    _, without = Ly.float32_limit_layer(f, q0)
    assert (with_c, without) == (53, 57)
    kind, measured = _linear_net(n, f / n, b, q0, 80, seed, np.matmul)
    assert kind == "overflow" and measured is not None
    assert abs(measured - with_c) <= 1
    assert abs(measured - without) >= 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matmul_underflow_layer_matches_numpy(seed):
    """Gradual underflow (NumPy float32): the product-level rule gives 68 (measured 67-68);
    the value-level rule with the extreme-value factor says 72, too late."""
    n, b, f, q0 = 256, 128, 0.5, 1e-70
    pred = Ly.float32_underflow_layer(f, q0, batch=b, fan_in=n, fan_out=n, weight_variance=f / n)
    assert pred == 68
    kind, measured = _linear_net(n, f / n, b, q0, 120, seed, np.matmul)
    assert kind == "underflow" and measured is not None
    assert abs(measured - pred) <= 1


def test_small_random_underflow_under_xla():
    """N(0, 1e-12) weights, width 64, batch 128 (factor 6.4e-11): all zero at layer 8 under
    XLA's flush-to-zero, as both rules predict with the flush floor."""
    _, pred = Ly.float32_limit_layer(64 * 1e-12, 1.0, count=128 * 64)
    pred_mm = Ly.float32_underflow_layer(
        64e-12,
        1.0,
        batch=128,
        fan_in=64,
        fan_out=64,
        weight_variance=1e-12,
        floor=Ly.FLOAT32_TINY,
    )
    assert pred == pred_mm == 8
    mm = jax.jit(jnp.matmul)
    assert _linear_net(64, 1e-12, 128, 1.0, 20, 0, mm) == ("underflow", 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="count must be an int >= 1"):
        Ly.float32_limit_layer(2.0, count=0)
    with pytest.raises(ValueError, match="factor must be < 1"):
        Ly.float32_underflow_layer(2.0, 1.0, batch=1, fan_in=1, fan_out=1, weight_variance=1.0)

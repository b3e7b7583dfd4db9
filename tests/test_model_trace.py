"""The layers found in a traced model, and the exact tap sums of their laws.

The tap sums op(x, 1) and op^T(g, 1) are checked against a brute-force count over the
taps of each output (NumPy loops, independent of XLA), and the law they serve,
E_W[y^2] = Var(w) op(x^2, 1), against a Monte Carlo over weight draws of the real XLA op.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varprop._src.model.trace import find_layers

GEOMETRIES = [
    # (input HW, kernel, strides, padding, rhs_dilation, lhs_dilation, groups, c_in, c_out)
    ((7, 7), (3, 3), (1, 1), "SAME", (1, 1), (1, 1), 1, 4, 6),
    ((8, 8), (3, 3), (2, 2), "SAME", (1, 1), (1, 1), 1, 4, 6),
    ((9, 6), (3, 2), (2, 1), "VALID", (1, 1), (1, 1), 2, 4, 6),
    ((8, 8), (3, 3), (1, 1), ((2, 0), (1, 3)), (2, 2), (1, 1), 4, 4, 8),
    ((5, 5), (4, 4), (1, 1), ((3, 3), (3, 3)), (1, 1), (2, 2), 1, 3, 5),  # transposed
    ((8, 8), (7, 7), (1, 1), "SAME", (1, 1), (1, 1), 1, 2, 3),
]


def _conv_fn(kernel, strides, padding, rdil, ldil, groups):
    def f(params, x):
        return jax.lax.conv_general_dilated(
            x,
            params["w"],
            strides,
            padding,
            lhs_dilation=ldil,
            rhs_dilation=rdil,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        )

    return f


def _site(geom, batch=2):
    hw, kernel, strides, padding, rdil, ldil, groups, c_in, c_out = geom
    f = _conv_fn(kernel, strides, padding, rdil, ldil, groups)
    w = jnp.zeros((*kernel, c_in // groups, c_out))
    x = jnp.zeros((batch, *hw, c_in))
    found = find_layers(f, {"w": w}, x)
    assert len(found.layers) == 1
    return f, found.layers[0], w, x


def _padding_pairs(padding, hw, kernel, strides, rdil, ldil):
    if not isinstance(padding, str):
        return [tuple(p) for p in padding]
    pairs = jax.lax.padtype_to_pads(
        [(n - 1) * d + 1 for n, d in zip(hw, ldil, strict=True)],
        [(k - 1) * d + 1 for k, d in zip(kernel, rdil, strict=True)],
        strides,
        padding,
    )
    return [tuple(p) for p in pairs]


def _brute_force(geom, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output position and output channel: the sum of x2 over the (input position,
    input channel) pairs the conv reads; and per input position and channel the number of
    (output position, output channel) pairs that read it. Loops over every tap."""
    hw, kernel, strides, padding, rdil, ldil, groups, c_in, c_out = geom
    pads = _padding_pairs(padding, hw, kernel, strides, rdil, ldil)
    dil_size = [(n - 1) * d + 1 for n, d in zip(hw, ldil, strict=True)]
    out_size = [
        (dil_size[i] + pads[i][0] + pads[i][1] - ((kernel[i] - 1) * rdil[i] + 1)) // strides[i] + 1
        for i in range(2)
    ]
    cin_g, cout_g = c_in // groups, c_out // groups
    fwd = np.zeros((*out_size, c_out))
    reads = np.zeros((*hw, c_in))
    for oy, ox in itertools.product(range(out_size[0]), range(out_size[1])):
        for ky, kx in itertools.product(range(kernel[0]), range(kernel[1])):
            py = oy * strides[0] + ky * rdil[0] - pads[0][0]
            px = ox * strides[1] + kx * rdil[1] - pads[1][0]
            if not (0 <= py < dil_size[0] and 0 <= px < dil_size[1]):
                continue
            if py % ldil[0] or px % ldil[1]:
                continue  # a hole of the dilated input
            iy, ix = py // ldil[0], px // ldil[1]
            for o in range(c_out):
                g = o // cout_g
                chans = range(g * cin_g, (g + 1) * cin_g)
                fwd[oy, ox, o] += sum(x2[iy, ix, c] for c in chans)
                for c in chans:
                    reads[iy, ix, c] += 1
    return fwd, reads


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_tap_sums_equal_a_brute_force_count(geom):
    _, site, _, _ = _site(geom)
    rng = np.random.default_rng(0)
    x2 = rng.uniform(0.5, 2.0, size=(*geom[0], geom[7]))
    fwd, reads = _brute_force(geom, x2)
    taps = np.asarray(site.tap_sums(jnp.asarray(x2[None], jnp.float32)))[0]  # (H', W', G)
    groups = geom[6]
    per_channel = np.repeat(taps, geom[8] // groups, axis=-1)
    np.testing.assert_allclose(per_channel, fwd, rtol=1e-5)
    # The transposed sums: with g = 1 everywhere, each input counts its readers.
    ones = jnp.ones((1, *fwd.shape), jnp.float32)
    back = np.asarray(site.tap_sums_transposed(ones))[0]
    np.testing.assert_allclose(np.repeat(back, geom[7] // groups, axis=-1), reads, rtol=1e-5)
    # And the nominal fans are the interior of the same counts.
    _, kernel, strides, _, _, ldil, _, c_in, c_out = geom
    assert site.fan_in == pytest.approx(c_in / groups * math.prod(kernel) / math.prod(ldil))
    assert site.fan_out == pytest.approx(c_out / groups * math.prod(kernel) / math.prod(strides))


@pytest.mark.parametrize("geom", [GEOMETRIES[1], GEOMETRIES[3]])
def test_conditional_law_matches_monte_carlo_over_weights(geom):
    """E_W[mean y^2] = sigma^2 mean op(x^2, 1) for a non-uniform input map (the output of a
    SAME conv squared is largest in the middle), against 4000 draws of W through XLA."""
    f, site, w, _ = _site(geom, batch=1)
    hw, c_in = geom[0], geom[7]
    yy, xx = np.meshgrid(np.arange(hw[0]), np.arange(hw[1]), indexing="ij")
    bump = 1.0 + 3.0 * np.exp(-((yy - hw[0] / 2) ** 2 + (xx - hw[1] / 2) ** 2) / 6.0)
    x = np.random.default_rng(1).standard_normal((1, *hw, c_in)) * np.sqrt(bump)[None, :, :, None]
    x = jnp.asarray(x, jnp.float32)
    sigma2 = 0.5
    draws = 4000
    keys = jax.random.split(jax.random.key(0), draws)
    ws = jax.vmap(lambda k: jax.random.normal(k, w.shape) * math.sqrt(sigma2))(keys)
    m2 = np.asarray(jax.lax.map(lambda w: jnp.mean(f({"w": w}, x) ** 2), ws, batch_size=500))
    law = sigma2 * float(jnp.mean(site.tap_sums(x * x)))
    se = m2.std(ddof=1) / math.sqrt(draws)
    assert abs(m2.mean() - law) < 4 * se, (m2.mean(), law, se)
    # The dense law n Var E[x^2] is off by the border factor here: the test can tell.
    dense = sigma2 * site.fan_in * float(jnp.mean(x * x))
    assert abs(m2.mean() - dense) > 4 * se


def test_layers_merges_and_normalizations_are_found_where_the_computation_is():
    def f(p, x, train):
        h = jnp.einsum("btd,dhk->bthk", x, p["qkv"])  # DenseGeneral through einsum
        h = h.reshape(*h.shape[:2], -1)
        z = h @ p["dense"]["kernel"].T.T + p["dense"]["bias"][None, None]
        if train:  # a train-mode BatchNorm over the batch and time axes
            mu = z.mean(axis=(0, 1), keepdims=True)
            z = (z - mu) * jax.lax.rsqrt(((z - mu) ** 2).mean(axis=(0, 1), keepdims=True) + 1e-5)
        z = x + jax.nn.relu(z)  # residual add
        return jnp.take(p["emb"], jnp.argmax(z, -1), axis=0)

    p = {
        "qkv": jnp.ones((8, 2, 4)),
        "dense": {"kernel": jnp.ones((8, 8)), "bias": jnp.zeros(8)},
        "emb": jnp.ones((8, 5)),
    }
    x = jnp.ones((3, 6, 8))
    found = find_layers(lambda p, x: f(p, x, True), p, x)
    got = [(s.path, s.kind, s.fan_in, s.fan_out, s.normalized) for s in found.layers]
    assert got == [
        ("['qkv']", "dense", 8.0, 8.0, None),
        ("['dense']['kernel']", "dense", 8.0, 8.0, "batchnorm"),
        ("['emb']", "embed", 8.0, 5.0, None),
    ]
    assert found.layers[0].y_unit_axes == (2, 3)
    assert len(found.merges) == 1
    merge = found.merges[0]
    assert merge.right - merge.left == {0, 1}  # the branch: qkv, dense; the skip: the input
    eval_found = find_layers(lambda p, x: f(p, x, False), p, x)
    assert [s.normalized for s in eval_found.layers] == [None, None, None]

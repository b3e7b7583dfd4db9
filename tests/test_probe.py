"""The probe as an instrument: traced weight scales, histograms, zero fractions, the lean
program. Expected values come from the core network's plain forward pass and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np

from varprop._src.core.network import forward, init_params, make_network, scale_kernels
from varprop._src.initializers import normal
from varprop._src.probe import HistogramEdges, make_probe, probe_params

NET = make_network((32, 48, 48, 8), "relu", normal(1.0))
KEYS = jax.random.split(jax.random.key(3), 4)


def test_weight_scales_are_data_and_draws_are_shared():
    probe = make_probe(NET, 16, redraws=0)
    a = probe(KEYS, None, jnp.asarray([0.1, 0.2, 0.3]))
    b = probe(KEYS, None, jnp.asarray([0.2, 0.2, 0.3]))
    # Same draws: doubling layer 1's kernel multiplies every z_1 by 2 (E[z^2] by 4), and the
    # ReLU net is positively homogeneous, so every later layer too.
    np.testing.assert_allclose(b.forward.z_lm2 - a.forward.z_lm2, np.log(4.0), atol=1e-5)


def test_statistics_match_the_plain_forward_pass():
    key = jax.random.key(11)
    params = scale_kernels(NET, init_params(NET, key), jnp.asarray([0.2, 0.15, 0.1]))
    x = jax.random.normal(jax.random.key(12), (16, 32))
    v = jax.random.normal(jax.random.key(13), (16, 8))
    st = probe_params(NET, params, x, v)
    y = forward(NET, params, x)
    np.testing.assert_allclose(st.forward.h_lm2[-1], np.log(np.mean(np.square(y))), rtol=1e-5)
    # The hidden layers' exact zeros are ReLU's zeros of h.
    h1 = jax.nn.relu(x @ params[0]["W"][0] + params[0]["b"][0][None, :])
    np.testing.assert_allclose(st.forward.h_zero[0], np.mean(np.asarray(h1) == 0), rtol=1e-6)
    assert st.forward.h_zero[-1] == 0.0  # the linear output layer


def test_histograms_count_every_value_in_range():
    edges = HistogramEdges(jnp.linspace(-1e3, 1e3, 9), jnp.linspace(-1e3, 1e3, 5))
    st = make_probe(NET, 16, redraws=0)(KEYS, None, jnp.asarray([0.2, 0.15, 0.1]), edges)
    assert st.forward.h_hist is not None and st.backward.gz_hist is not None
    assert st.forward.h_hist.shape == (4, 3, 8) and st.backward.gz_hist.shape == (4, 3, 4)
    widths = np.asarray(NET.widths[1:])
    np.testing.assert_array_equal(st.forward.h_hist.sum(-1), np.broadcast_to(16 * widths, (4, 3)))
    np.testing.assert_array_equal(st.backward.gz_hist.sum(-1), np.broadcast_to(16 * widths, (4, 3)))
    # ReLU's h >= 0: nothing in the four negative bins of the hidden layers.
    assert float(st.forward.h_hist[:, :2, :4].sum()) == 0.0


def test_lean_probe_keeps_the_moments_and_drops_the_test_statistics():
    scales = jnp.asarray([0.2, 0.15, 0.1])
    full = make_probe(NET, 16, redraws=0)(KEYS, None, scales)
    lean = make_probe(NET, 16, redraws=0, lean=True)(KEYS, None, scales)
    for name in ("z_lm2", "z_rv", "h_lm2", "h_zero", "dphi2", "x_lm2"):
        np.testing.assert_allclose(getattr(lean.forward, name), getattr(full.forward, name), 1e-6)
    for name in ("gz_lm2", "gz_rv", "gz_zero"):
        np.testing.assert_allclose(getattr(lean.backward, name), getattr(full.backward, name), 1e-6)
    assert np.all(np.isnan(lean.backward.gx_lm2)) and np.all(np.isnan(lean.forward.zc_lm2))


def test_u_is_what_the_activation_sees():
    # Training-mode BatchNorm at init: every hidden feature's batch variance is s^2/(s^2+eps)
    # and its batch mean 0, so E[u^2] = 1 - eps/(s^2+eps), about 1 whatever the kernel scale.
    net = make_network((64, 64, 64, 8), "relu", normal(1.0), norm="batchnorm")
    st = make_probe(net, 32, redraws=0, lean=True)(KEYS, None, jnp.full((3,), 3.0))
    np.testing.assert_allclose(np.exp(st.forward.u_lm2[:, :2]), 1.0, atol=1e-5)
    np.testing.assert_array_equal(st.forward.u_lm2[:, 2], st.forward.z_lm2[:, 2])  # output

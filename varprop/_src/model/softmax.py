r"""A softmax's moments at init, forward and backward, by Monte Carlo over its logits.

p_i = e(t_i) / Σ_j e(t_j) over the softmax's axes (e = exp, masked or shifted), with the
logits t Gaussian at their own moments: per element mean μ and sd σ, and correlation ρ
between two logits of a row (attention: the keys share the query). Neither E[p_i²] nor the
backward factor has a closed form for small rows (a causal mask's first rows have 1, 2, 3
keys, where p is far from 1/n), and treating the numerator and the sum as independent (the
propagation's generic rule for a division) misses the softmax's centring: its Jacobian is
∂p_i/∂t_k = p_i(δ_ik − p_k), so

    ∂L/∂t_i = p_i (g_i − Σ_j p_j g_j)

and, with the g_j zero-mean, independent of each other and of p (gradient independence)
with E[g_j²] = G_j,

    E[(∂L/∂t_i)²] = E[p_i² (1 − 2 p_i)] G_i + Σ_j E[p_i² p_j²] G_j.

Both expectations over t are estimated from ``S`` draws of every row (a fixed seed: the same
model gives the same numbers), S chosen so that S × (the elements) stays under
:data:`BUDGET`; the relative error of a row's E[p_i²] is about (Var(p_i²)/S)^½ / E[p_i²],
a few percent at S = 1024 (per row; fewer draws on large rows), and the rows' mean averages it down further.

Example: 8 equally likely keys with small logits: p ≈ 1/8, and the backward factor is
E[p²](1 − 2p + Σp²) ≈ (1/64)(1 − 1/8):

    >>> import numpy as np
    >>> from varprop._src.model.softmax import softmax_moments, softmax_backward
    >>> gauss = (np.zeros((1, 8)), np.full((1, 8), 1e-3), np.zeros((1, 8)))
    >>> m2, mu, c = softmax_moments(np.exp, gauss, (4, 8), (1,))
    >>> round(float(m2.mean()) * 64, 4), round(float(mu.mean()) * 8, 4)
    (1.0, 1.0)
    >>> g = softmax_backward(np.exp, gauss, (4, 8), (1,), np.ones((1, 1)))
    >>> round(float(g.mean()) * 64 / (1 - 1 / 8), 4)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: Draws × elements per estimate (memory: a few float64 arrays of this size).
BUDGET = 1_000_000
_MIN_DRAWS, _MAX_DRAWS = 64, 1024


def _draws(fn: Callable, gauss, shape, axes) -> tuple[np.ndarray, tuple[int, ...]]:
    """p for S draws of the logits: an array (S, *row shape) where the row shape is the
    smallest broadcast of the logits' moments with the softmax's axes at full length."""
    mu, sd, rho = (np.asarray(a, np.float64) for a in gauss)
    nd = len(shape)
    mu, sd, rho = (a.reshape((1,) * (nd - a.ndim) + a.shape) for a in (mu, sd, rho))
    base = list(np.broadcast_shapes(mu.shape, sd.shape, rho.shape))
    for a in axes:
        base[a] = shape[a]
    size = max(1, math.prod(base))
    s = int(np.clip(BUDGET // size, _MIN_DRAWS, _MAX_DRAWS))
    rng = np.random.default_rng(0)
    common = list(base)
    for a in axes:
        common[a] = 1  # one shared part per row: the correlation ρ between its logits
    r = np.clip(rho, 0.0, 1.0)
    z = np.sqrt(r) * rng.standard_normal((s, *common)) + np.sqrt(1.0 - r) * rng.standard_normal(
        (s, *base)
    )
    with np.errstate(all="ignore"):
        e = np.asarray(fn(mu + sd * z), np.float64)
        p = e / np.sum(e, axis=tuple(a + 1 for a in axes), keepdims=True)
    return np.nan_to_num(p), tuple(base)


def softmax_moments(fn, gauss, shape, axes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E[p_i²], E[p_i] and E[p_i p_j] (j ≠ i in the same row, averaged), broadcastable to
    ``shape``, for p the softmax over ``axes`` of e = ``fn(t)``, t Gaussian at ``gauss``
    = (μ, σ, ρ)."""
    p, _ = _draws(fn, gauss, shape, axes)
    m2 = np.mean(p * p, axis=0)
    mu = np.mean(p, axis=0)
    n = math.prod(shape[a] for a in axes)
    # Σ_j p_j = 1: Σ_{j≠i} p_i p_j = p_i (1 − p_i).
    c = np.mean(p * (1.0 - p), axis=0) / max(n - 1, 1)
    return m2, mu, c


def softmax_backward(fn, gauss, shape, axes, g) -> np.ndarray:
    """E[(∂L/∂t_i)²] (module docstring) for E[(∂L/∂p_j)²] = ``g`` (broadcastable to
    ``shape``)."""
    p, base = _draws(fn, gauss, shape, axes)
    gg = np.asarray(g, np.float64)
    gg = gg.reshape((1,) * (len(shape) - gg.ndim) + gg.shape)
    # Where p does not vary (the batch), the rule is linear in G: its mean there.
    flat = tuple(d for d in range(len(shape)) if base[d] == 1 and gg.shape[d] > 1)
    if flat:
        gg = np.mean(gg, axis=flat, keepdims=True)
    sum_axes = tuple(a + 1 for a in axes)
    cross = np.sum(p * p * gg, axis=sum_axes, keepdims=True)
    return np.mean(p * p * ((1.0 - 2.0 * p) * gg + cross), axis=0)

r"""The end-to-end prediction of an MLP's second moments at init, from the laws.

Forward E[z_l^2] and backward E[(dL/dz_l)^2] layer by layer (mean-field: the product of
per-layer factors for homogeneous activations, the activation moments at each layer's
second moment otherwise), with normalizations, the weights' mean, and the layers where
float32 overflows or flushes to zero. The checker uses it for its end-to-end columns and
its health verdict; the per-layer test itself does not depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from varprop._src.initializers import Initializer
from varprop._src.laws import activations as A
from varprop._src.laws.layers import (
    FLOAT32_MAX,
    FLOAT32_TINY,
    log_largest_product,
    log_largest_value,
)
from varprop._src.laws.schemes import Scheme
from varprop._src.probe import NORM_EPSILON


@dataclass
class Prediction:
    """End-to-end predictions of the law for an architecture (host side, float64)."""

    q: np.ndarray  # E[z_l^2], l = 1..L
    g: np.ndarray  # E[(dL/dz_l)^2], l = 1..L
    weight_var: np.ndarray  # Var(w_l)
    nonfinite_layer: int | None  # first layer whose largest value passes FLOAT32_MAX
    forward_factor: float
    backward_factor: float
    underflow_layer: int | None = None  # first layer whose values all flush to zero


def bias_second_moment(init: Initializer | None, n: int) -> float:
    if init is None:
        return 0.0
    s = init.scheme
    shape = (n,)
    if s.uses_fans and s.distribution != "constant":
        raise ValueError(f"bias initializer {init!r} needs fans; use zeros, constant or normal")
    return s.variance(shape) + s.mean(shape) ** 2


def predict(
    widths: Sequence[int],
    activation: str,
    schemes: Sequence[Scheme],
    bias_m2: Sequence[float],
    input_m2: float,
    batch: int,
    norm: str | None = None,
    input_var: float | None = None,
    input_cross: float | None = None,
) -> Prediction:
    """E[z_l^2] forward and E[(dL/dz_l)^2] backward from the laws, layer by layer.

    Forward: q_l = n_{l-1} Var(w_l) m_{l-1} + E[b^2], m_0 = E[x^2] of the input and
    m_l = E[phi(z)^2] at z ~ N(0, q_l) (second moments, so non-zero means after ReLU and
    non-zero-mean inputs are handled). Backward: g_L = E[v^2] = 1 and
    g_l = E[phi'(z_l)^2] n_{l+1} Var(w_{l+1}) g_{l+1}. Moments come from
    :func:`varprop.laws.activation_moments` (closed form or quadrature; exact scaling for
    homogeneous phi). The first non-finite layer is the first where the largest of the
    B n_l values (:func:`~varprop._src.laws.layers.log_largest_value`) passes the float32
    maximum; the underflow layer the first where every product x_i w_ij is flushed to zero,
    i.e. the largest of the B n_{l-1} n_l products
    (:func:`~varprop._src.laws.layers.log_largest_product`) is below the smallest normal
    float32 (XLA flushes subnormals on CPUs and GPUs).

    A scheme with a non-zero mean E[w] = mu adds mu^2 E[(sum_i x_i)^2] to q_l, with
    E[(sum_i x_i)^2] = n m_{l-1} + n (n - 1) E[x_i x_k]: the units of an example share the
    component c = mu sum_i x_i of z, so z_j = c + e_j is propagated as a shared Gaussian plus
    an independent one (two-level quadrature); ``input_cross`` is E[x_i x_k] of the input
    (default E[x]^2). Backward, dL/dh_k shares mu sum_j dL/dz_j likewise. A mean-field
    approximation; the per-layer test uses the measured sums exactly.

    With a normalization before each hidden activation (``norm``), the activation sees
    u = (z - mu) / sqrt(s^2 + eps) with E[u^2] = s^2 / (s^2 + eps), whatever the scale of W:
    s^2 is the per-feature batch variance of z, n Var(w) Var_batch(x) (``batchnorm``), or
    the per-example variance over features, about q (``layernorm``). The gradient is divided
    by s^2 + eps on the way back and loses the two directions the normalization removes,
    a factor 1 - 2/N (N the batch or the width).
    """
    act = A.get_activation(activation)
    L = len(widths) - 1
    var = np.array([s.variance((widths[i], widths[i + 1])) for i, s in enumerate(schemes)])
    mu = np.array([s.mean((widths[i], widths[i + 1])) for i, s in enumerate(schemes)])
    q = np.zeros(L)
    m2_prev = input_m2
    m1_prev = math.sqrt(max(input_m2 - (input_m2 if input_var is None else input_var), 0.0))
    v_prev = input_m2 if input_var is None else input_var  # batch variance of the input
    dphi2 = np.ones(L)
    dphi_cross = np.zeros(L)  # E[phi'(z_i) phi'(z_k)], i != k: only with a weights' mean
    has_mean = bool(np.any(mu != 0))
    back = np.ones(L)  # extra backward factor of the normalization
    # E[x_i x_k] (i != k) of the layer's input: units share a component when E[w] != 0.
    cross_prev = m1_prev**2 if input_cross is None else input_cross
    for i in range(L):
        n = widths[i]
        s2_sum = n * m2_prev + n * (n - 1) * cross_prev  # E[(sum_i x_i)^2]
        q[i] = n * var[i] * m2_prev + mu[i] ** 2 * s2_sum + bias_m2[i]
        if i == L - 1:
            break
        qa = q[i]
        if norm is not None:
            eps = NORM_EPSILON[norm]
            s2 = widths[i] * var[i] * v_prev if norm == "batchnorm" else q[i]
            qa = s2 / (s2 + eps) if s2 > 0 else 0.0
            n_removed = batch if norm == "batchnorm" else widths[i + 1]
            back[i] = (1 - 2 / n_removed) / (s2 + eps)
        if has_mean and norm is None and math.isfinite(q[i]):
            # z_j = c + e_j: c = E[w] sum_i x_i is shared by the units of an example,
            # e_j = sum_i (w_ij - E[w]) x_i (+ b_j) is not.
            m_c = mu[i] * n * m1_prev
            v_c = max(mu[i] ** 2 * s2_sum - m_c**2, 0.0)
            v_e = n * var[i] * m2_prev + bias_m2[i]
            m1_prev, m2_prev, cross_prev, dphi2[i], dphi_cross[i] = shared_moments(
                act, m_c, v_c, v_e
            )
            v_prev = m2_prev - m1_prev**2
        elif act.homogeneous:
            m1 = A.activation_moments(act, 1.0)
            m2_prev, dphi2[i] = m1.second_moment * qa, m1.grad_second_moment
            v_prev = (m1.second_moment - m1.mean**2) * qa
            m1_prev = m1.mean * math.sqrt(qa) if math.isfinite(qa) else math.inf
            cross_prev = m1_prev**2
        elif qa > 0 and math.isfinite(qa):
            mm = A.activation_moments(act, float(qa))
            m2_prev, dphi2[i] = mm.second_moment, mm.grad_second_moment
            v_prev, m1_prev = mm.variance, mm.mean
            cross_prev = m1_prev**2
        else:
            m2_prev = dphi2[i] = v_prev = m1_prev = cross_prev = 0.0
    g = np.zeros(L)
    g[L - 1] = 1.0
    t2 = float(widths[L])  # E[(sum_j dL/dz_j)^2] of the output layer: v has i.i.d. entries
    for i in range(L - 2, -1, -1):
        # Layer i+1 maps widths[i+1] -> widths[i+2]; its fan_out carries the gradient back.
        # dL/dh_k = sum_j w_kj g_j: E = Var(w) n_out E[g^2] + mu^2 E[(sum_j g_j)^2], and with
        # a mean every unit shares the term mu sum_j g_j (independence otherwise assumed).
        n_next, n_here = widths[i + 2], widths[i + 1]
        shared = mu[i + 1] ** 2 * t2
        delta2 = var[i + 1] * n_next * g[i + 1] + shared
        g[i] = back[i] * dphi2[i] * delta2
        t2 = n_here * g[i] + n_here * (n_here - 1) * (back[i] * dphi_cross[i] * shared)
    nonfinite = underflow = None
    for i in range(L):
        if q[i] <= 0:
            continue
        if not math.isfinite(q[i]) or (
            log_largest_value(math.log(q[i]), batch * widths[i + 1]) > math.log(FLOAT32_MAX)
        ):
            nonfinite = i + 1
            break
        # Var(w) E[x^2] = q / n_in for a zero-mean scheme without bias.
        n_terms = batch * widths[i] * widths[i + 1]
        if (
            bias_m2[i] == 0
            and mu[i] == 0
            and (
                log_largest_product(math.log(q[i] / widths[i]), 0.0, n_terms)
                < math.log(FLOAT32_TINY)
            )
        ):
            underflow = i + 1
            break
    ff = geometric_factor(q[hidden_stack(L)])
    fb = geometric_factor(g[hidden_stack(L)][::-1])
    return Prediction(q, g, var, nonfinite, ff, fb, underflow)


def shared_moments(act, m_c: float, v_c: float, v_e: float, points: int = 48):
    """Moments of phi(c + e_j) over the units j of an example, with c ~ N(m_c, v_c) shared
    and e_j ~ N(0, v_e) independent: ``(E[phi], E[phi^2], E[phi_i phi_k], E[phi'^2],
    E[phi'_i phi'_k])`` (i != k), by two-level Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(points)
    weights = weights / weights.sum()
    c = m_c + math.sqrt(v_c) * nodes[:, None]
    z = c + math.sqrt(v_e) * nodes[None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        phi = np.broadcast_to(np.asarray(act.numpy_fn()(z), np.float64), z.shape)
        dphi = np.broadcast_to(np.asarray(act.numpy_grad()(z), np.float64), z.shape)
    inner, inner_d = phi @ weights, dphi @ weights  # E over e, per node of c
    return (
        float(weights @ inner),
        float(weights @ ((phi**2) @ weights)),
        float(weights @ inner**2),
        float(weights @ ((dphi**2) @ weights)),
        float(weights @ inner_d**2),
    )


def hidden_stack(L: int) -> slice:
    """The layers whose E[z^2] the health factor is read from: the hidden-to-hidden layers
    (2 .. L-1) when there are at least two of them, else every layer but the output."""
    return slice(1, L - 1) if L >= 4 else slice(0, max(L - 1, 1))


def geometric_factor(seq: np.ndarray) -> float:
    """Per-step geometric mean factor of a positive sequence (1.0 for fewer than 2 points)."""
    seq = np.asarray(seq, dtype=np.float64)
    if len(seq) < 2:
        return 1.0
    if not np.all(np.isfinite(seq)) or np.any(seq < 0):
        return math.nan
    if np.any(seq == 0):
        return 0.0 if seq[-1] == 0 and seq[0] >= 0 else math.nan
    return float(np.exp((np.log(seq[-1]) - np.log(seq[0])) / (len(seq) - 1)))

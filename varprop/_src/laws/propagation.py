r"""The end-to-end law of a sequence of layers: second moments forward and backward.

One function, :func:`propagate`, computes for a whole network at initialization (mean field,
float64 on the host, no JAX) what every other part of varprop reads from the laws: E[z_l^2]
and E[(dL/dz_l)^2] layer by layer, E[h_l^2] and E[phi'(z_l)^2], the layers where float32
gives out, the per-layer geometric factors over the hidden stack, the mean-field fixed point
and the health of each direction. ``varprop check`` compares its measurements with it,
``varprop derive`` prints it for a real width sequence.

Layer l (1..L) maps x_{l-1} (n_{l-1} units) to z_l = W_l x_{l-1} + b_l, h_l = phi(z_l); the
output layer is linear unless ``output_activation``. For a dense layer the fans are the
widths; with a conv ``kernel`` of k = prod(kernel) taps the widths are channel counts and
fan_in = n_{l-1} k, fan_out = n_l k.

.. math::

    q_l = E[z_l^2] = n^{in}_l \mathrm{Var}(w_l)\, m_{l-1} + \mu_l^2 E[(\textstyle\sum_i x_i)^2]
          + E[b_l^2], \qquad m_0 = E[x^2],\ m_l = E[\phi(z_l)^2],\ z_l \sim N(0, q_l)

    g_L = 1 \ (\text{linear output}) \text{ or } E[\phi'(z_L)^2], \qquad
    g_l = E[\phi'(z_l)^2]\,\big(n^{out}_{l+1} \mathrm{Var}(w_{l+1})\, g_{l+1}
          + \mu_{l+1}^2 E[(\textstyle\sum_j g_j)^2]\big)

(gradient independence assumed). The moments come from
:func:`varprop.laws.activation_moments` (closed form or quadrature; exact scaling for a
homogeneous phi); weights with a mean E[w] = mu are propagated as a shared Gaussian plus an
independent one (:func:`shared_moments`), and a normalization before each hidden activation
replaces q by s^2 / (s^2 + eps) (s^2 the batch or feature variance) and divides the
gradient by s^2 + eps, times 1 - 2/N for the two directions it removes.

**float32.** The first non-finite layer is the first whose largest of B n_l values
(:func:`~varprop._src.laws.layers.log_largest_value`) passes the float32 maximum; the first
underflow layer the first where every product x_i w_ij is flushed to zero, i.e. the largest
of the B n^{in}_l n_l products (:func:`~varprop._src.laws.layers.log_largest_product`) is
below the smallest normal float32 (XLA flushes subnormals on CPUs and GPUs).

**Health.** The per-layer factor of a direction is the geometric mean step of E[z^2] (or
of E[(dL/dz)^2], read from the output back) over the hidden stack (:func:`hidden_stack`),
classified by :func:`~varprop._src.laws.layers.classify_factor` with
:data:`HEALTH_TOLERANCE` and the number of steps: ``preserved`` when the factor is within
2 % of 1 or its compound effect over the stack stays within a factor 2.

Nothing here imports JAX.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from varprop._src.laws import activation_moments as AM
from varprop._src.laws import activations as A
from varprop._src.laws.layers import (
    FLOAT32_MAX,
    FLOAT32_TINY,
    FixedPoint,
    classify_factor,
    log_largest_product,
    log_largest_value,
    mean_field_fixed_point,
)
from varprop._src.laws.normalization import norm_kind
from varprop._src.laws.schemes import Scheme

#: ``classify_factor``'s tolerance for the health of a network: a per-layer factor within
#: 2 % of 1 is preserved (as is any factor whose compound effect stays within a factor 2).
HEALTH_TOLERANCE = 0.02


@dataclass(frozen=True)
class Propagation:
    r"""Second moments of a network at initialization, layer by layer (float64, host side).

    Arrays have one entry per layer l = 1..L (index l - 1).

    Attributes:
        widths: the widths (channel counts with a ``kernel``), input first.
        fan_in, fan_out: each layer's fans (the widths times the kernel's taps).
        forward: :math:`q_l = E[z_l^2]`, the pre-activations' second moment.
        backward: :math:`g_l = E[(\partial L/\partial z_l)^2]`, with E[(dL/dh_L)^2] = 1 at the
            output (a linear output layer: g_L = 1).
        post_activation: :math:`E[h_l^2] = E[\phi(z_l)^2]` (after the normalization when there
            is one); for a linear output layer h_L = z_L.
        grad_activation: :math:`E[\phi'(z_l)^2]` (1 for a linear output layer).
        input_gradient: :math:`E[(\partial L/\partial x_0)^2]`, the gradient at the input.
        weight_variance, weight_mean: Var(w_l) and E[w_l] of each layer's scheme.
        first_nonfinite: the first layer whose largest value passes float32's maximum (None:
            none does).
        first_underflow: the first layer whose products x_i w_ij all flush to zero (None).
        forward_factor, backward_factor: geometric mean per-layer factor of E[z^2] (forward)
            and of E[(dL/dz)^2] read from the output back (backward) over the hidden stack
            (1.0 with fewer than two hidden layers to compare).
        steps: the number of steps those factors are taken over.
        forward_health, backward_health: ``preserved``, ``vanishing``, ``exploding`` or
            ``undetermined`` (:func:`~varprop._src.laws.layers.classify_factor`).
        fixed_point: the mean-field fixed point of the hidden-to-hidden map, when it applies
            (a non-homogeneous activation, zero-mean weights, no normalization, and the same
            n_in Var(w) and E[b^2] in every hidden-to-hidden layer), else None.
    """

    widths: tuple[int, ...]
    fan_in: tuple[int, ...]
    fan_out: tuple[int, ...]
    forward: np.ndarray
    backward: np.ndarray
    post_activation: np.ndarray
    grad_activation: np.ndarray
    input_gradient: float
    weight_variance: np.ndarray
    weight_mean: np.ndarray
    first_nonfinite: int | None
    first_underflow: int | None
    forward_factor: float
    backward_factor: float
    steps: int
    forward_health: str
    backward_health: str
    #: What :attr:`fixed_point` is computed from, when it is first asked for.
    _fixed_point_inputs: tuple = field(repr=False, compare=False, default=())

    @functools.cached_property
    def fixed_point(self) -> FixedPoint | None:
        """The mean-field fixed point (see the class docstring), computed on first use:
        at criticality its iteration is long."""
        return _fixed_point(*self._fixed_point_inputs) if self._fixed_point_inputs else None

    @property
    def depth(self) -> int:
        """The number of layers L."""
        return len(self.widths) - 1


def _per_layer(value, L: int, what: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value] * L
    if len(value) != L:
        raise ValueError(f"{what}: expected one value or {L} (one per layer), got {len(value)}")
    return list(value)


def _validate(widths, kernel, batch, norm) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ws = tuple(widths)
    for w in (*ws, *kernel):
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise ValueError(f"widths and kernel need whole numbers >= 1, got {w!r}")
    if len(ws) < 2:
        raise ValueError(f"need at least an input and an output width, got {list(ws)}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a whole number >= 1, got {batch!r}")
    norm_kind(norm)  # raises for an unknown norm
    return tuple(int(w) for w in ws), tuple(int(k) for k in kernel)


def propagate(
    widths: Sequence[int],
    activation: str | A.Activation,
    schemes: Scheme | Sequence[Scheme],
    *,
    bias_second_moments: float | Sequence[float] = 0.0,
    input_second_moment: float = 1.0,
    input_variance: float | None = None,
    input_cross: float | None = None,
    batch: int = 64,
    norm: str | None = None,
    output_activation: bool = False,
    kernel: Sequence[int] = (),
    norm_epsilon: float | None = None,
) -> Propagation:
    r"""E[z_l^2] forward and E[(dL/dz_l)^2] backward through ``widths``, from the laws.

    See the module docstring for the recurrence. ``schemes`` is one scheme for every layer or
    one per layer, ``bias_second_moments`` E[b_l^2] likewise. The input has second moment
    ``input_second_moment`` = E[x^2], batch variance ``input_variance`` (default E[x^2]: a
    centred input) and cross moment ``input_cross`` = E[x_i x_k] between units (default
    E[x]^2); only weights with a mean or BatchNorm read the last two. ``batch`` is the
    number of examples the float32 limits count values over; ``norm`` one of
    ``"batchnorm"``, ``"layernorm"`` (before each hidden activation) or None, with
    ``norm_epsilon`` (default the norm's own). ``output_activation=True`` applies phi to the last layer too, the loss gradient arriving
    at h_L (g_L = E[phi'(z_L)^2]). ``kernel`` (e.g. ``(3, 3)``) makes every layer a conv:
    the widths are channel counts and the fans are multiplied by its taps (borders and
    strides are not modelled).

    Example:
        >>> from varprop.laws import propagate, scheme_from_spec
        >>> p = propagate([784, 512, 512, 512, 10], "relu", scheme_from_spec("he_normal"))
        >>> p.forward.round(12).tolist()    # E[x^2] = 1 in, then 2 at every layer
        [2.0, 2.0, 2.0, 2.0]
        >>> p.forward_health, p.backward_health, p.first_nonfinite
        ('preserved', 'preserved', None)
        >>> q = propagate([256] * 41, "tanh", scheme_from_spec("normal:stddev=0.125"))
        >>> round(q.fixed_point.q_star, 4), q.forward_health   # sigma_w^2 = 4
        (2.1215, 'preserved')
        >>> z = propagate([512] * 41, "linear", scheme_from_spec("normal:stddev=1"), batch=128)
        >>> z.first_nonfinite, z.forward_health
        (28, 'exploding')
    """
    ws, kernel = _validate(widths, tuple(kernel), batch, norm)
    kind = norm_kind(norm)
    act = A.get_activation(activation) if isinstance(activation, str) else activation
    L = len(ws) - 1
    sch = _per_layer(schemes, L, "schemes")
    bias_m2 = [float(b) for b in _per_layer(bias_second_moments, L, "bias_second_moments")]
    taps = math.prod(kernel)
    fi = tuple(ws[i] * taps for i in range(L))
    fo = tuple(ws[i + 1] * taps for i in range(L))
    shapes = [(*kernel, ws[i], ws[i + 1]) for i in range(L)]
    var = np.array([s.variance(shapes[i]) for i, s in enumerate(sch)], dtype=np.float64)
    mu = np.array([s.mean(shapes[i]) for i, s in enumerate(sch)], dtype=np.float64)

    q = np.zeros(L)
    post = np.zeros(L)
    dphi2 = np.ones(L)
    dphi_cross = np.zeros(L)  # E[phi'(z_i) phi'(z_k)], i != k: only with a weights' mean
    back = np.ones(L)  # extra backward factor of the normalization
    m2_prev = input_second_moment
    v_prev = input_second_moment if input_variance is None else input_variance
    m1_prev = math.sqrt(max(input_second_moment - v_prev, 0.0))
    # E[x_i x_k] (i != k) of the layer's input: units share a component when E[w] != 0.
    cross_prev = m1_prev**2 if input_cross is None else input_cross
    has_mean = bool(np.any(mu != 0))
    for i in range(L):
        n = fi[i]
        s2_sum = n * m2_prev + n * (n - 1) * cross_prev  # E[(sum_i x_i)^2]
        q[i] = n * var[i] * m2_prev + mu[i] ** 2 * s2_sum + bias_m2[i]
        if i == L - 1 and not output_activation:
            post[i] = q[i]
            break
        qa = q[i]
        if kind is not None and i < L - 1:
            eps = kind.epsilon if norm_epsilon is None else norm_epsilon
            s2 = n * var[i] * v_prev if kind.over_batch else q[i]
            qa = s2 / (s2 + eps) if s2 > 0 else 0.0
            back[i] = (1 - 2 / kind.removed_directions(batch, ws[i + 1])) / (s2 + eps)
        if has_mean and (norm is None or i == L - 1) and math.isfinite(q[i]):
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
            m1 = AM.activation_moments(act, 1.0)
            m2_prev, dphi2[i] = m1.second_moment * qa, m1.grad_second_moment
            v_prev = (m1.second_moment - m1.mean**2) * qa
            m1_prev = m1.mean * math.sqrt(qa) if math.isfinite(qa) else math.inf
            cross_prev = m1_prev**2
        elif qa > 0 and math.isfinite(qa):
            mm = AM.activation_moments(act, float(qa))
            m2_prev, dphi2[i] = mm.second_moment, mm.grad_second_moment
            v_prev, m1_prev = mm.variance, mm.mean
            cross_prev = m1_prev**2
        else:
            m2_prev = dphi2[i] = v_prev = m1_prev = cross_prev = 0.0
        post[i] = m2_prev

    g = np.zeros(L)
    g[L - 1] = dphi2[L - 1] if output_activation else 1.0
    # E[(sum_j dL/dz_j)^2] over the units one input unit feeds: i.i.d. at the output.
    t2 = fo[L - 1] * g[L - 1]
    for i in range(L - 2, -1, -1):
        # dL/dh_k = sum_j w_kj g_j over layer i+1's fan_out: E = Var(w) n_out E[g^2]
        # + mu^2 E[(sum_j g_j)^2], and with a mean every unit shares mu sum_j g_j.
        shared = mu[i + 1] ** 2 * t2
        delta2 = var[i + 1] * fo[i + 1] * g[i + 1] + shared
        g[i] = back[i] * dphi2[i] * delta2
        t2 = fo[i] * g[i] + fo[i] * (fo[i] - 1) * (back[i] * dphi_cross[i] * shared)
    input_gradient = float(var[0] * fo[0] * g[0] + mu[0] ** 2 * t2)

    nonfinite, underflow = _float32_limits(q, var, mu, bias_m2, fi, ws, batch)
    sl = hidden_stack(L)
    steps = max(len(range(L)[sl]) - 1, 0)
    ff = geometric_factor(q[sl])
    fb = geometric_factor(g[sl][::-1])
    return Propagation(
        widths=ws,
        fan_in=fi,
        fan_out=fo,
        forward=q,
        backward=g,
        post_activation=post,
        grad_activation=dphi2,
        input_gradient=input_gradient,
        weight_variance=var,
        weight_mean=mu,
        first_nonfinite=nonfinite,
        first_underflow=underflow,
        forward_factor=ff,
        backward_factor=fb,
        steps=steps,
        forward_health=classify_factor(ff, HEALTH_TOLERANCE, steps=steps),
        backward_health=classify_factor(fb, HEALTH_TOLERANCE, steps=steps),
        _fixed_point_inputs=(act, q, var, mu, bias_m2, fi, norm, output_activation),
    )


def _float32_limits(q, var, mu, bias_m2, fi, ws, batch) -> tuple[int | None, int | None]:
    """The first non-finite and the first underflow layer (1-based; None: no such layer)."""
    for i in range(len(q)):
        if q[i] <= 0:
            continue
        if not math.isfinite(q[i]) or (
            log_largest_value(math.log(q[i]), batch * ws[i + 1]) > math.log(FLOAT32_MAX)
        ):
            return i + 1, None
        # Var(w) E[x^2] = q / n_in for a zero-mean scheme without bias.
        n_terms = batch * fi[i] * ws[i + 1]
        if (
            bias_m2[i] == 0
            and mu[i] == 0
            and log_largest_product(math.log(q[i] / fi[i]), 0.0, n_terms) < math.log(FLOAT32_TINY)
        ):
            return None, i + 1
    return None, None


def _fixed_point(act, q, var, mu, bias_m2, fi, norm, output_activation) -> FixedPoint | None:
    """The fixed point of q -> n_in Var(w) E[phi(sqrt(q) z)^2] + E[b^2] over the hidden-to-hidden
    layers, when the map is the same in each of them (see :class:`Propagation`)."""
    L = len(q)
    hidden = list(range(1, L if output_activation else L - 1))
    if act.homogeneous or norm is not None or np.any(mu != 0) or not hidden:
        return None
    sw2 = {float(fi[i] * var[i]) for i in hidden}
    sb2 = {bias_m2[i] for i in hidden}
    q0 = float(q[hidden[0] - 1])
    if len(sw2) != 1 or len(sb2) != 1 or not (q0 > 0 and math.isfinite(q0)):
        return None
    (s,), (b,) = sw2, sb2
    if not (0 < s < math.inf):
        return None
    return mean_field_fixed_point(act, s, b, q0)


def shared_moments(act: A.Activation, m_c: float, v_c: float, v_e: float, points: int = 48):
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
    (2 .. L-1) when there are at least two of them, else every layer but the output.

    >>> hidden_stack(10), hidden_stack(3)
    (slice(1, 9, None), slice(0, 2, None))
    """
    return slice(1, L - 1) if L >= 4 else slice(0, max(L - 1, 1))


def geometric_factor(seq) -> float:
    """Per-step geometric mean factor of a positive sequence (1.0 for fewer than 2 points).

    >>> geometric_factor([1.0, 2.0, 4.0]), geometric_factor([3.0])
    (2.0, 1.0)
    """
    seq = np.asarray(seq, dtype=np.float64)
    if len(seq) < 2:
        return 1.0
    if not np.all(np.isfinite(seq)) or np.any(seq < 0):
        return math.nan
    if np.any(seq == 0):
        return 0.0 if seq[-1] == 0 and seq[0] >= 0 else math.nan
    return float(np.exp((np.log(seq[-1]) - np.log(seq[0])) / (len(seq) - 1)))

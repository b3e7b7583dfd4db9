r"""The checker: per-layer measurements from the probe against the laws, with calibrated
verdicts.

Two questions, answered separately.

**Law.** For every dense layer l and both directions, the law of the *expected* scheme is
tested conditionally on the layer's actual input (DESIGN §3):

.. math::

    \text{forward:}\quad E_W[\overline{z_l^2}] = n_{l-1}\,\mathrm{Var}(w_l)\,\overline{x_l^2}
    + \overline{b_l^2},\qquad
    \text{backward:}\quad E_W[\overline{(\partial L/\partial x_l)^2}]
    = n_l\,\mathrm{Var}(w_l)\,\overline{(\partial L/\partial z_l)^2}

Given the input, the per-unit second moments are i.i.d. across units (the columns, resp.
rows, of W are independent), so the standard error of their mean is the sample standard
deviation across units over sqrt(units): no Gram matrix, and calibrated even for one set
of weights. Seeds are pooled; a Student-t interval with Bonferroni correction over the
layers of each direction is compared with the practical band [1/(1+delta), 1+delta]:
inside -> agrees, disjoint -> disagrees, otherwise inconclusive (then more seeds are drawn,
up to a budget).

**Health.** The end-to-end prediction (the product of per-layer factors, or the mean-field
iteration for non-homogeneous phi) says whether E[z^2] and E[(dL/dz)^2] are preserved,
vanish or explode over depth, and where float32 gives out; the measurement says what
happened.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import numpy as np

from varprop._src.errors import InputError
from varprop._src.initializers import Initializer
from varprop._src.laws import activations as A
from varprop._src.laws.layers import FLOAT32_MAX, FLOAT32_TINY
from varprop._src.laws.schemes import Scheme
from varprop._src.probe import (
    NARROW_UNITS,
    NORM_EPSILON,
    available_memory_bytes,
    estimate_probe_bytes,
    make_network,
    make_probe,
    output_redraws,
)
from varprop._src.stats import (
    DISAGREE_ALPHA_FRACTION,
    VERDICTS,
    chi2_dof_needed,
    chi2_interval,
    law_relvar,
    spread_interval,
    two_level_verdict,
)

#: Row verdicts: the three of the test, and "float32_limit" for a row whose values the law
#: itself puts beyond float32 (not tested).
ROW_VERDICTS = (*VERDICTS, "float32_limit")


@dataclass
class LayerRow:
    """One layer and direction.

    ``predicted``/``measured``/``ci_low``/``ci_high`` are end to end: E[z_l^2] (forward) or
    E[(dL/dz_l)^2] (backward) predicted from the input by the law, and measured as the mean
    over seeds with its confidence interval. ``ratio``/``ratio_low``/``ratio_high`` are the
    conditional test of the layer's own law (measured / predicted given its actual input),
    which decides ``verdict``.
    """

    layer: int
    direction: str
    n_in: int
    n_out: int
    predicted: float | None
    measured: float | None
    ci_low: float | None
    ci_high: float | None
    ratio: float | None
    ratio_low: float | None
    ratio_high: float | None
    verdict: str
    #: Which interval decided: "spread" (across units) or "small-sample law" (narrow).
    test: str = ""
    #: Student-t degrees of freedom or chi-square nu of that interval.
    dof: float | None = None
    #: Why a row is inconclusive or not tested, in a few words.
    note: str = ""
    #: For an inconclusive narrow row: about how many seeds would decide it.
    seeds_needed: int | None = None
    #: An assumption the row's law rests on beyond i.i.d. weights ("gradient independence"
    #: for the backward rows of narrow non-linear layers), else "".
    assumption: str = ""


@dataclass
class CheckResult:
    """What :func:`check` found. ``to_json()`` gives the ``varprop check --json`` object."""

    verdict: str
    seeds: int
    layers: list[LayerRow]
    health: dict[str, Any]
    diagnosis: list[str]
    first_nonfinite_layer: int | None
    predicted_nonfinite_layer: int | None
    config: dict[str, Any] = field(default_factory=dict)
    first_underflow_layer: int | None = None
    predicted_underflow_layer: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = _clean(asdict(self))
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @property
    def degenerate(self) -> list[str]:
        """Why the network is degenerate (zero or constant weights, identical units, all-zero
        activations or gradients, values leaving float32); empty when it is not."""
        return list(self.health.get("degenerate", []))

    def exit_code(self, require_healthy: bool = False) -> int:
        """The CLI's exit code: 1 disagrees, 3 inconclusive, 4 the law holds but the network
        is degenerate (with ``require_healthy`` also when a direction vanishes or explodes),
        0 the law holds and the network is healthy."""
        if self.verdict == "disagrees":
            return 1
        if self.verdict == "inconclusive":
            return 3
        if self.degenerate:
            return 4
        if require_healthy and any(
            self.health[d]["state"] in ("vanishing", "exploding") for d in ("forward", "backward")
        ):
            return 4
        return 0

    def rows(self, direction: str) -> list[LayerRow]:
        return [r for r in self.layers if r.direction == direction]

    def table(self) -> str:
        """A readable table: predicted, measured mean with its interval, ratio, verdict."""
        head = (
            f"{'layer':>5} {'dir':>8} {'shape':>11} {'predicted':>11} {'measured':>11} "
            f"{'95% interval':>23} {'ratio':>7} {'ratio interval':>17}  verdict"
        )
        lines = [head, "-" * len(head)]
        for r in self.layers:
            shape = f"{r.n_in}->{r.n_out}"
            iv = (
                f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
                if r.ci_low is not None and r.ci_high is not None
                else "-"
            )
            riv = (
                f"[{_fmt(r.ratio_low, 4)}, {_fmt(r.ratio_high, 4)}]"
                if r.ratio_low is not None and r.ratio_high is not None
                else "-"
            )
            lines.append(
                f"{r.layer:>5} {r.direction:>8} {shape:>11} {_fmt(r.predicted):>11} "
                f"{_fmt(r.measured):>11} {iv:>23} {_fmt(r.ratio, 4):>7} {riv:>17}  {r.verdict}"
                + (f" ({r.note})" if r.note and r.verdict != "agrees" else "")
            )
        return "\n".join(lines)

    def summary(self) -> str:
        h = self.health
        out = [self.table(), ""]
        out.append(
            f"Law: {self.verdict} ({self.seeds} seeds, band ±{self.config.get('tolerance', 0.1):.0%})."
        )
        for d in ("forward", "backward"):
            hd = h[d]
            out.append(
                f"Health {d}: {hd['state']} (per-layer factor predicted "
                f"{_fmt(hd['predicted_factor'], 4)}, measured {_fmt(hd['measured_factor'], 4)})."
            )
        out.append(
            f"First non-finite layer: measured {self.first_nonfinite_layer}, "
            f"predicted {self.predicted_nonfinite_layer}; first layer flushed to zero: "
            f"measured {self.first_underflow_layer}, predicted {self.predicted_underflow_layer}."
        )
        out.append(
            "Network: degenerate (see the diagnosis)." if self.degenerate else "Network: healthy."
        )
        if self.diagnosis:
            out.append("Diagnosis:")
            out.extend(f"  - {d}" for d in self.diagnosis)
        return "\n".join(out)


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


# -- the prediction ------------------------------------------------------------------------


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


def _bias_m2(init: Initializer | None, n: int) -> float:
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
    B n_l values, about sqrt(2 ln(B n_l) q_l), passes the float32 maximum; the underflow
    layer the first where every product x_i w_ij is flushed to zero, i.e. the largest of the
    B n_{l-1} n_l products, about sqrt(2 ln(B n_{l-1} n_l) q_l / n_{l-1}), is below the
    smallest normal float32 (CPUs and GPUs flush subnormals in XLA programs).

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
            m1_prev, m2_prev, cross_prev, dphi2[i], dphi_cross[i] = _shared_moments(
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
        if q[i] == 0:
            continue
        big = math.sqrt(2 * math.log(max(batch * widths[i + 1], 2)) * q[i])
        if not math.isfinite(big) or big > FLOAT32_MAX:
            nonfinite = i + 1
            break
        n_terms = batch * widths[i] * widths[i + 1]
        term = math.sqrt(2 * math.log(max(n_terms, 2)) * q[i] / widths[i])
        if bias_m2[i] == 0 and term < FLOAT32_TINY:
            underflow = i + 1
            break
    ff = _geo_factor(q[_hidden_stack(L)])
    fb = _geo_factor(g[_hidden_stack(L)][::-1])
    return Prediction(q, g, var, nonfinite, ff, fb, underflow)


def _shared_moments(act, m_c: float, v_c: float, v_e: float, points: int = 48):
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


def _hidden_stack(L: int) -> slice:
    """The layers whose E[z^2] the health factor is read from: the hidden-to-hidden layers
    (2 .. L-1) when there are at least two of them, else every layer but the output."""
    return slice(1, L - 1) if L >= 4 else slice(0, max(L - 1, 1))


def _geo_factor(seq: np.ndarray) -> float:
    """Per-step geometric mean factor of a positive sequence (1.0 for fewer than 2 points)."""
    seq = np.asarray(seq, dtype=np.float64)
    if len(seq) < 2:
        return 1.0
    if not np.all(np.isfinite(seq)) or np.any(seq < 0):
        return math.nan
    if np.any(seq == 0):
        return 0.0 if seq[-1] == 0 and seq[0] >= 0 else math.nan
    return float(np.exp((np.log(seq[-1]) - np.log(seq[0])) / (len(seq) - 1)))


# -- measurement -> verdicts ---------------------------------------------------------------

InitArg = str | Initializer | Sequence[str | Initializer]


def _as_inits(x: InitArg | None, depth: int, what: str) -> tuple[Initializer | None, ...]:
    from varprop._src.initializers import from_spec

    if x is None:
        return (None,) * depth
    if isinstance(x, str):
        x = from_spec(x)
    if isinstance(x, Initializer):
        x = [x] * depth
    items = list(x)
    if len(items) != depth:
        raise ValueError(f"{what}: expected {depth} initializers (one per layer), got {len(items)}")
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(from_spec(it))
        elif isinstance(it, Initializer):
            out.append(it)
        else:
            raise TypeError(f"{what}: expected a SPEC string or a varprop initializer, got {it!r}")
    return tuple(out)


def _to_np(tree) -> Any:
    return jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float64), tree)


def _concat(a, b):
    if a is None:
        return b
    return jax.tree_util.tree_map(lambda x, y: np.concatenate([x, y], axis=0), a, b)


def _mean_ci(values: np.ndarray, alpha: float = 0.05):
    from scipy import stats as sstats

    v = values[np.isfinite(values)]
    if len(v) == 0:
        return None, None, None
    m = float(np.mean(v))
    if len(v) < 2:
        return m, None, None
    t = float(sstats.t.ppf(1 - alpha / 2, len(v) - 1))
    h = t * float(np.std(v, ddof=1)) / math.sqrt(len(v))
    return m, max(m - h, 0.0), m + h


#: Margins of the float32 range within which a measurement is not used (the values would be
#: cut off by overflow or flushed to zero by underflow, biasing what survives): the largest
#: predicted value above FLOAT32_MAX / 256, or the predicted RMS below FLOAT32_TINY * 4096.
_OVERFLOW_MARGIN = math.log(FLOAT32_MAX) - math.log(256.0)
_UNDERFLOW_MARGIN = math.log(FLOAT32_TINY) + math.log(4096.0)
#: The smallest share of E[z^2] a tested part may have: below it, float32's relative
#: precision (6e-8 on each value) costs more than 0.1% of the part's second moment.
_RESOLVED_LOG = math.log(1e-7)


@dataclass
class _Law:
    """The expected scheme of one layer, as the conditional test needs it."""

    var: float  # Var(w)
    mean: float  # E[w]
    kurtosis: float  # of the entries (3 where the scheme has none: orthogonal, constant)


def _expected_law(scheme: Scheme, shape: tuple[int, int]) -> _Law:
    k = scheme.kurtosis
    kurt = 3.0 if k is None else float(k)
    return _Law(float(scheme.variance(shape)), float(scheme.mean(shape)), kurt)


def _combine(law: _Law, fan: int, v_lm2, v_lrs2, b_lm2=None, cross=None):
    """Per-seed log prediction of a product's mean second moment given its input, and the
    shares of it from Var(w), E[w] and the bias: for z = v W + b,
    E_W[mean z^2] = fan Var(w) mean v^2 + E[w]^2 mean_b (sum_i v_bi)^2 + mean b^2 + cross
    (``docs/checker_statistics.md``); ``fan`` is the contracted dimension."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_mu2 = 2 * np.log(abs(law.mean)) if law.mean != 0 else -np.inf
        pw = (np.log(fan * law.var) if law.var > 0 else -np.inf) + v_lm2
        pmu = log_mu2 + v_lrs2
        pb = np.full_like(pw, -np.inf) if b_lm2 is None else b_lm2
        cross = np.zeros_like(pw) if cross is None else cross
        top = np.maximum(np.maximum(pw, pmu), pb)
        top = np.where(np.isfinite(top), top, 0.0)
        lin = np.exp(pw - top) + np.exp(pmu - top) + np.exp(pb - top) + cross * np.exp(-top)
        pred = np.where(lin > 0, np.log(np.maximum(lin, 1e-300)) + top, -np.inf)
        pred = np.where(np.isnan(pw), np.nan, pred)
        shares = tuple(np.where(np.isfinite(pred), np.exp(t - pred), 0.0) for t in (pw, pmu, pb))
    return pred, shares


def look_schedule(seeds: int, max_seeds: int) -> list[int]:
    """The totals of seeds at which verdicts are computed: ``seeds`` doubling up to the
    budget, and the last full round. Every look is a test, so the Bonferroni correction
    counts them (optional stopping would otherwise inflate the false-"disagrees" rate).

    >>> look_schedule(4, 64), look_schedule(4, 4), look_schedule(4, 30)
    ([4, 8, 16, 32, 64], [4], [4, 8, 16, 28])
    """
    looks = [seeds]
    while looks[-1] * 2 <= max_seeds:
        looks.append(looks[-1] * 2)
    last = (max_seeds // seeds) * seeds
    if last > looks[-1]:
        looks.append(last)
    return looks


def look_alpha_shares(looks: int) -> list[float]:
    """How the family-wise level is spent over the looks (weighted Bonferroni: the shares
    sum to 1): half at the first look, where most checks end, the rest equally over the
    later ones.

    >>> look_alpha_shares(1), look_alpha_shares(3)
    ([1.0], [0.5, 0.25, 0.25])
    """
    if looks == 1:
        return [1.0]
    return [0.5] + [0.5 / (looks - 1)] * (looks - 1)


def _rows(net, laws: list[_Law], pred, st, tol, alpha, batch, alpha_last):
    """The rows of one look: ``alpha`` is this look's share of the family-wise level (its
    intervals are Bonferroni-corrected over the layers of a direction), ``alpha_last`` the
    last look's, which decides how many seeds a narrow row would need."""
    tests = net.depth
    f, b = st.forward, st.backward
    W = net.widths
    L = net.depth
    linear = A.get_activation(net.activation).name == "linear" and net.norm is None
    rows: list[LayerRow] = []
    # A seed whose forward pass went non-finite anywhere has no valid backward statistics:
    # the gradient of every layer passes through the output.
    fwd_ok = np.all(f.z_finite > 0, axis=1)
    for direction in ("forward", "backward"):
        for i in range(L):
            n_in, n_out = W[i], W[i + 1]
            law = laws[i]
            redraw = direction == "forward" and i == L - 1 and st.output_redraw is not None
            if direction == "forward":
                with np.errstate(invalid="ignore", over="ignore"):
                    cross = 2 * law.mean * n_in * f.x_mean[:, i] * f.b_mean[:, i]
                cross = np.where(np.isfinite(cross), cross, 0.0)
                pred_log, (fw, _, _) = _combine(
                    law, n_in, f.x_lm2[:, i], f.x_lrs2[:, i], f.b_lm2[:, i], cross
                )
                # The test itself uses the batch-centered z = (x - mean_b x) W: the bias
                # drops out and the batch's common direction, which dominates the variance
                # of deep layers' inputs, is removed. Seeds whose centered part is below
                # float32's resolution next to z (identical rows, a huge common value) use z
                # itself; where the weights' part of z is below it too (a bias that swamps
                # x W), float32 has kept nothing to test.
                test_log_c, (fw_c, fmu_c, _) = _combine(law, n_in, f.xc_lm2[:, i], f.xc_lrs2[:, i])
                _, (fw_u, fmu_u, fb_u) = _combine(
                    law, n_in, f.x_lm2[:, i], f.x_lrs2[:, i], f.b_lm2[:, i], cross
                )
                with np.errstate(invalid="ignore"):
                    centered = np.isfinite(f.xc_lm2[:, i]) & (
                        test_log_c - pred_log >= _RESOLVED_LOG
                    )
                    resolved = centered | (np.log(np.maximum(fw_u, 1e-300)) >= _RESOLVED_LOG)
                test_log = np.where(centered, test_log_c, pred_log)
                tfw = np.where(centered, fw_c, fw_u)
                tfmu = np.where(centered, fmu_c, fmu_u)
                tfb = np.where(centered, 0.0, fb_u)
                inputs_ok = np.isfinite(f.x_lm2[:, i]) | np.isneginf(f.x_lm2[:, i])
                out_finite = f.z_finite[:, i] > 0
                meas_log = np.where(centered, f.zc_lm2[:, i], f.z_lm2[:, i])
                relvar = np.where(centered, f.zc_rv[:, i], f.z_rv[:, i])
                units = n_out
                gram = np.where(centered, f.xc_gram[:, i], f.x_gram[:, i])
                diag = np.where(centered, f.xc_diag[:, i], f.x_diag[:, i])
                sumfrac = np.where(centered, f.xc_sumfrac[:, i], f.x_sumfrac[:, i])
                meanfrac = np.where(centered, 0.0, f.x_meanfrac[:, i])
                crossfrac = np.where(centered, 0.0, f.x_crossfrac[:, i])
                sign_mu_b = np.sign(law.mean * f.b_mean[:, i])
                if redraw:
                    # The output layer's kernel redrawn on its saved input (see make_probe).
                    red = st.output_redraw
                    assert red is not None
                    meas_log = np.where(centered, red[:, 1, 0], red[:, 0, 0])
                    relvar = np.where(centered, red[:, 1, 1], red[:, 0, 1])
                    units = n_out * (1 + output_redraws(net))
                e2e_pred, e2e_meas = pred.q[i], np.exp(f.z_lm2[:, i])
                n_values = n_out
            else:
                pred_log, (fw, fmu, _) = _combine(law, n_out, b.gz_lm2[:, i], b.gz_lrs2[:, i])
                resolved = np.ones_like(fw, dtype=bool)
                test_log, tfw, tfmu, tfb = pred_log, fw, fmu, np.zeros_like(fw)
                inputs_ok = fwd_ok & (b.gz_finite[:, i] > 0)
                out_finite = b.gx_finite[:, i] > 0
                meas_log, relvar, units = b.gx_lm2[:, i], b.gx_rv[:, i], n_in
                gram, diag = b.gz_gram[:, i], b.gz_diag[:, i]
                sumfrac, meanfrac = b.gz_sumfrac[:, i], np.zeros_like(gram)
                crossfrac = sign_mu_b = np.zeros_like(gram)
                e2e_pred, e2e_meas = pred.g[i], np.exp(b.gz_lm2[:, i])
                n_values = n_in
            # Where float32 gives out, as the conditional law predicts (module docstring).
            contracted = n_in if direction == "forward" else n_out
            with np.errstate(invalid="ignore", divide="ignore"):
                log_max = pred_log / 2 + 0.5 * np.log(2 * np.log(max(batch * n_values, 2)))
                # 2 log of the RMS of one product x_i w_ij (or w_ij dL/dz_j): flushed to zero
                # below FLOAT32_TINY whatever the sum would have been.
                term_log = pred_log + np.log(fw) - np.log(contracted)
                near_limit = (log_max > _OVERFLOW_MARGIN) | (
                    (term_log / 2 < _UNDERFLOW_MARGIN) & (fw > 1e-6) & np.isfinite(term_log)
                )
            limit = ~inputs_ok | near_limit | ~resolved
            usable = ~limit & np.isfinite(pred_log) | (~limit & np.isneginf(pred_log))
            m, lo, hi = _mean_ci(np.where(inputs_ok & out_finite, e2e_meas, np.nan))
            row = LayerRow(
                i + 1, direction, n_in, n_out, float(e2e_pred), m, lo, hi, None, None, None, ""
            )
            rows.append(row)
            if not np.any(usable):
                row.verdict = "float32_limit"
                if not np.any(inputs_ok):
                    row.note = "values beyond float32 before this layer"
                elif not np.any(resolved & inputs_ok):
                    row.note = "x W is below float32's resolution next to the bias"
                else:
                    row.note = "the law puts this layer's values at float32's limit"
                continue
            ml, pl = meas_log[usable], test_log[usable]
            if np.any(~out_finite[usable]):
                row.verdict = "disagrees"
                row.note = "non-finite values where the law predicts finite ones"
                continue
            both_zero = np.isneginf(ml) & np.isneginf(pl)
            if np.all(both_zero):
                row.ratio = row.ratio_low = row.ratio_high = 1.0
                row.verdict = "agrees"  # exactly zero, as the law says
                continue
            if np.any(np.isneginf(pl) & ~np.isneginf(ml)):
                row.verdict = "disagrees"
                row.note = "the law says exactly 0, the layer is not"
                continue
            keep = ~both_zero
            with np.errstate(invalid="ignore", over="ignore"):
                r = np.exp(ml[keep] - pl[keep])
            if min(n_in, n_out) < NARROW_UNITS and not redraw:
                rv0 = law_relvar(
                    gram[usable][keep],
                    diag[usable][keep],
                    law.kurtosis,
                    tfw[usable][keep],
                    tfmu[usable][keep],
                    sumfrac[usable][keep],
                    tfb[usable][keep],
                    meanfrac[usable][keep],
                    crossfrac[usable][keep],
                    sign_mu_b[usable][keep],
                )
                iv = chi2_interval(r, rv0 / units, alpha, tests)
                iv_d = chi2_interval(r, rv0 / units, alpha * DISAGREE_ALPHA_FRACTION, tests)
                row.test = "small-sample law"
            else:
                iv = spread_interval(r, relvar[usable][keep], units, alpha, tests)
                iv_d = spread_interval(
                    r, relvar[usable][keep], units, alpha * DISAGREE_ALPHA_FRACTION, tests
                )
                row.test = "spread"
            row.ratio, row.ratio_low, row.ratio_high = iv.mean, max(iv.low, 0.0), iv.high
            row.dof = iv.dof
            row.verdict = two_level_verdict(iv, iv_d, tol)
            narrow = min(n_in, n_out) < NARROW_UNITS
            if direction == "backward" and narrow and i < L - 1 and not linear:
                # dL/dz_l depends on W_l through phi'(z_l) and everything above it; with few
                # units that dependence biases the backward law (measured: ratio 0.89 for a
                # 4-wide tanh net, 0.96 at 16). The forward test of the same weights is exact.
                row.assumption = "gradient independence"
                fwd_row = rows[i]
                if row.verdict == "disagrees" and fwd_row.verdict != "disagrees":
                    row.verdict = "inconclusive"
                    row.note = (
                        f"gradient independence does not hold at width {min(n_in, n_out)}: "
                        "dL/dz depends on this layer's own weights; the forward test of the "
                        f"same weights {fwd_row.verdict}"
                    )
                    continue
            if row.verdict == "inconclusive" and row.test == "small-sample law":
                need = chi2_dof_needed(tol, alpha_last, tests)
                n_seeds = max(int(np.sum(keep)), 1)
                per_seed = iv.dof / n_seeds
                seeds_needed = math.ceil(need / per_seed) if per_seed > 0 else math.inf
                what = f"{units} unit{'s' if units != 1 else ''}"
                if seeds_needed <= n_seeds:
                    row.note = f"ratio {iv.mean:.3g} at the edge of the ±{tol:.0%} band"
                    if row.assumption:
                        row.note += (
                            f" (gradient independence is approximate at width {min(n_in, n_out)})"
                        )
                elif math.isfinite(seeds_needed) and seeds_needed <= 10**6:
                    row.seeds_needed = int(seeds_needed)
                    row.note = f"{what}: about {seeds_needed} seeds needed for the ±{tol:.0%} band"
                else:
                    row.note = f"{what}: too narrow to test"
            elif row.verdict == "inconclusive":
                row.note = (
                    f"interval [{row.ratio_low:.3g}, {row.ratio_high:.3g}] overlaps the edge "
                    f"of the ±{tol:.0%} band; more seeds would narrow it"
                )
    return rows


def _first_nonfinite(f) -> int | None:
    bad = f.z_finite < 1  # (S, L)
    firsts = [int(np.argmax(row)) + 1 for row in bad if row.any()]
    return min(firsts) if firsts else None


def _first_underflow(f, net) -> int | None:
    """The first layer whose output is exactly zero in some seed while its input and its
    weights are not (zero weights are degenerate, not an underflow)."""
    W = net.widths
    nonzero = np.array(
        [
            k.scheme.variance((W[i], W[i + 1])) > 0 or k.scheme.mean((W[i], W[i + 1])) != 0
            for i, k in enumerate(net.kernel_inits)
        ]
    )
    bad = np.isneginf(f.z_lm2) & np.isfinite(f.x_lm2) & np.isneginf(f.b_lm2) & nonzero[None, :]
    firsts = [int(np.argmax(row)) + 1 for row in bad if row.any()]
    return min(firsts) if firsts else None


def _classify(factor: float, steps: int) -> str:
    if math.isnan(factor):
        return "undetermined"
    if math.isinf(factor):
        return "exploding"
    if factor == 0:
        return "vanishing"
    if abs(factor - 1) <= 0.02 or abs(math.log(factor)) * max(steps, 1) <= math.log(2):
        return "preserved"
    return "vanishing" if factor < 1 else "exploding"


def _health(rows, pred, L, net, st, first_nf, first_uf) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d, pf in (("forward", pred.forward_factor), ("backward", pred.backward_factor)):
        meas = [r.measured for r in rows if r.direction == d][_hidden_stack(L)]
        seq = np.array([m if m is not None else np.nan for m in meas], dtype=np.float64)
        if d == "backward":
            seq = seq[::-1]
        mf = _geo_factor(seq)
        sl = _hidden_stack(L)
        steps = max(len(range(L)[sl]) - 1, 0)
        state = _classify(mf if math.isfinite(mf) else pf, steps)
        out[d] = {
            "state": state,
            "predicted_state": _classify(pf, steps),
            "predicted_factor": pf,
            "measured_factor": mf,
        }
    out["degenerate"] = _degenerate(net, st, first_nf, first_uf)
    return out


def _degenerate(net, st, first_nf, first_uf) -> list[str]:
    """Why the network cannot learn well whatever its law says (empty: healthy).

    Zero or constant weights (from the drawing scheme), identical units, activations or
    gradients that are exactly zero in every seed, values that leave float32.
    """
    f, b = st.forward, st.backward
    W, L = net.widths, net.depth
    out: list[str] = []
    for i, k in enumerate(net.kernel_inits):
        shape = (W[i], W[i + 1])
        var, mean = float(k.scheme.variance(shape)), float(k.scheme.mean(shape))
        if var == 0:
            what = "zero weights" if mean == 0 else f"constant weights ({mean:g})"
            out.append(
                f"layer {i + 1}: {what}: every unit of the layer is identical and stays so "
                "under gradient descent"
            )
            break
    finite = np.all(f.z_finite > 0, axis=1)
    if finite.any():
        fz = f.z_rv[finite]
        same = [
            i + 1
            for i in range(L)
            if W[i + 1] > 1
            and np.all(fz[:, i] <= 1e-10)
            and np.all(np.isfinite(f.z_lm2[finite, i]))
        ]
        if same and not out:
            out.append(f"identical units: every unit of layer(s) {_ranges(same)} is the same")
        dead = [i + 1 for i in range(L - 1) if np.all(np.isneginf(f.h_lm2[finite, i]))]
        if dead:
            out.append(
                f"dead activations: every activation of layer(s) {_ranges(dead)} is exactly "
                "zero in every seed"
            )
        nograd = [i + 1 for i in range(L - 1) if np.all(np.isneginf(b.gz_lm2[finite, i]))]
        if nograd:
            out.append(
                f"dead gradients: dL/dz is exactly zero at layer(s) {_ranges(nograd)} in every "
                "seed; the weights below them cannot learn"
            )
    if first_nf is not None:
        out.append(f"values overflow float32 (become non-finite) from layer {first_nf}")
    if first_uf is not None:
        out.append(f"values underflow float32 (flush to exactly zero) at layer {first_uf}")
    return out


def _diagnose(rows, net, expected, pred, first_nf, first_uf, st, tol) -> list[str]:
    out = []
    pred_nf, pred_uf = pred.nonfinite_layer, pred.underflow_layer
    fwd = [r for r in rows if r.direction == "forward"]
    swapped: set[int] = set()
    for r in rows:
        if r.verdict != "disagrees" or r.ratio is None or r.n_in == r.n_out or r.layer in swapped:
            continue
        for target, msg in (
            (r.n_in / r.n_out, "drawn with fan_out where fan_in was expected"),
            (r.n_out / r.n_in, "drawn with fan_in where fan_out was expected"),
        ):
            if r.ratio_low is not None and r.ratio_low <= target <= r.ratio_high:
                text = (
                    f"layer {r.layer} ({r.n_in}->{r.n_out}): Var(w) is {r.ratio:.3g}x the expected "
                    f"law ~ {target:.3g} = the fan ratio: fan_in/fan_out swap ({msg})"
                )
                out.append(text)
                swapped.add(r.layer)
                break
    bad = [r for r in fwd if r.verdict == "disagrees" and r.ratio]
    if len(bad) >= 2 and len(bad) >= len(fwd) - 1:
        rs = np.array([r.ratio for r in bad])
        c = float(np.exp(np.mean(np.log(rs))))
        if np.all(np.abs(np.log(rs / c)) <= math.log(1 + tol)):
            out.append(
                f"every layer's Var(w) is {c:.3g}x its law: a constant wrong gain "
                f"(std off by a factor {math.sqrt(c):.3g})"
            )
    for what, meas, law in (
        ("become non-finite (overflow)", first_nf, pred_nf),
        ("flush to zero (underflow)", first_uf, pred_uf),
    ):
        if meas is None and law is None:
            continue
        if meas == law:
            out.append(f"values first {what} at layer {meas}, as the law predicts")
        else:
            said = f"layer {law}" if law is not None else "no such layer"
            seen = f"at layer {meas}" if meas is not None else "nowhere"
            out.append(f"values first {what} {seen}; the law predicts {said}")
    limited = sorted({r.layer for r in rows if r.verdict == "float32_limit"})
    if limited:
        out.append(
            f"layer(s) {_ranges(limited)} not tested: their values are at or beyond float32's "
            "limits, where the law puts them"
        )
    narrow = [r for r in rows if r.verdict == "inconclusive" and r.note]
    for r in narrow[:4]:
        out.append(f"layer {r.layer} {r.direction} inconclusive: {r.note}")
    if len(narrow) > 4:
        out.append(f"... and {len(narrow) - 4} more narrow rows inconclusive")
    for r in rows:
        if r.verdict == "disagrees" and r.note:
            out.append(f"layer {r.layer} {r.direction}: {r.note}")
    if net.norm == "batchnorm" and net.depth >= 2:
        from varprop._src.laws.normalization import eval_mode_gain

        q1 = float(np.exp(np.nanmean(st.forward.z_lm2[:, 0])))
        gain = float(eval_mode_gain(0, 1, NORM_EPSILON["batchnorm"]))
        out.append(
            "BatchNorm was checked in training mode. In eval mode with its initial running "
            f"statistics (mean 0, var 1) it multiplies by {gain:.6f}: it does not normalize, "
            f"so layer 1's E[z^2] = {q1:.3g} would pass through unchanged until the running "
            "statistics have converged"
        )
    return out


def _ranges(xs: list[int]) -> str:
    return f"{xs[0]}-{xs[-1]}" if len(xs) > 1 and xs[-1] - xs[0] == len(xs) - 1 else str(xs)


def _overall(rows) -> str:
    """``disagrees`` if any tested row does; ``agrees`` if every tested row does (rows the
    law puts beyond float32 are not tested); otherwise ``inconclusive``."""
    vs = [r.verdict for r in rows if r.verdict in VERDICTS]
    if "disagrees" in vs:
        return "disagrees"
    if vs and all(v == "agrees" for v in vs):
        return "agrees"
    return "inconclusive"


def check(
    widths: Sequence[int],
    activation: str = "relu",
    init: InitArg = "he_normal",
    *,
    expect: InitArg | None = None,
    bias_init: InitArg | None = None,
    batch: int = 64,
    seeds: int = 4,
    max_seeds: int = 64,
    seed: int = 0,
    tolerance: float = 0.1,
    alpha: float = 0.05,
    input_mean: float = 0.0,
    input_std: float = 1.0,
    data: np.ndarray | None = None,
    norm: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> CheckResult:
    """Check a freshly drawn MLP against the law of its (or the expected) scheme.

    Args:
        widths: ``(n_0, n_1, ..., n_L)``.
        activation: a registered activation name or spec.
        init: the initializer(s) that draw the kernels: SPEC string, initializer, or one per
            layer.
        expect: the scheme(s) whose law is checked (default: ``init``).
        bias_init: bias initializer(s) (default: no bias).
        batch: examples per seed (>= 2).
        seeds: seeds per round (>= 2); more rounds are drawn while inconclusive, up to
            ``max_seeds``.
        seed: the base PRNG seed.
        tolerance: the practical band delta: ratios in [1/(1+delta), 1+delta] agree.
        alpha: family-wise error rate per direction (Bonferroni over layers).
        input_mean, input_std: Gaussian inputs (ignored when ``data`` is given).
        data: an ``(N, n_0)`` array to draw input rows from.
        norm: ``None``, ``"batchnorm"`` or ``"layernorm"`` before every hidden activation
            (training mode, at init: scale 1, bias 0).
        progress: called with a one-line message after every round of seeds.

    Returns:
        A :class:`CheckResult`.

    Example:
        >>> import varprop
        >>> r = varprop.check([64, 128, 128, 10], "relu", "he_normal", seeds=4)
        >>> r.verdict
        'agrees'
    """
    widths = tuple(widths)
    _validate(widths, batch, seeds, max_seeds, tolerance, alpha, input_mean, input_std, data, seed)
    depth = len(widths) - 1
    kinits = _as_inits(init, depth, "init")
    expected_inits = _as_inits(expect, depth, "expect") if expect is not None else kinits
    binits = _as_inits(bias_init, depth, "bias_init")
    net = make_network(widths, activation, kinits, binits, norm)  # type: ignore[arg-type]
    expected = [e.scheme for e in expected_inits]  # type: ignore[union-attr]
    if data is not None:
        data = np.asarray(data, dtype=np.float32)
        input_m2 = float(np.mean(np.asarray(data, np.float64) ** 2))
        input_var = float(np.mean(np.var(np.asarray(data, np.float64), axis=0)))
        d64 = np.asarray(data, np.float64)
        n0 = d64.shape[1]
        rowsum2 = float(np.mean(np.sum(d64, axis=1) ** 2))
        input_cross = (rowsum2 - n0 * input_m2) / (n0 * (n0 - 1)) if n0 > 1 else input_m2
    else:
        input_m2 = input_mean**2 + input_std**2
        input_var = input_std**2
        input_cross = input_mean**2
    bm2 = [_bias_m2(b, widths[i + 1]) for i, b in enumerate(binits)]
    pred = predict(widths, activation, expected, bm2, input_m2, batch, norm, input_var, input_cross)

    laws = [_expected_law(sc, (widths[i], widths[i + 1])) for i, sc in enumerate(expected)]
    _check_memory(net, batch, seeds, data)
    probe = _cached_probe(net, batch, input_mean, input_std)
    data_arg = None if data is None else jax.numpy.asarray(data)
    base = jax.random.key(seed)
    looks = look_schedule(seeds, max_seeds)
    shares = look_alpha_shares(len(looks))
    stats = None
    rnd = 0
    total = 0
    rows: list[LayerRow] = []
    verdict = "inconclusive"
    while total < looks[-1]:
        keys = jax.random.split(jax.random.fold_in(base, rnd), seeds)
        stats = _concat(stats, _to_np(probe(keys, data_arg)))
        total += seeds
        rnd += 1
        if total not in looks:
            if progress is not None:
                progress(f"round {rnd}: {total} seeds")
            continue
        share = shares[looks.index(total)]
        rows = _rows(net, laws, pred, stats, tolerance, alpha * share, batch, alpha * shares[-1])
        verdict = _overall(rows)
        open_rows = [r for r in rows if r.verdict == "inconclusive"]
        if progress is not None:
            progress(
                f"round {rnd}: {total} seeds, {len(open_rows)} of {len(rows)} rows inconclusive"
            )
        if verdict != "inconclusive":
            break
        # Stop early when the narrow rows left need more seeds than the budget allows.
        need = [r.seeds_needed for r in open_rows]
        if all(n is not None and n > max_seeds for n in need):
            break
    assert stats is not None
    first_nf = _first_nonfinite(stats.forward)
    first_uf = _first_underflow(stats.forward, net)
    health = _health(rows, pred, depth, net, stats, first_nf, first_uf)
    diagnosis = _diagnose(rows, net, expected, pred, first_nf, first_uf, stats, tolerance)
    diagnosis += [f"degenerate: {d}" for d in health["degenerate"]]
    config = {
        "widths": list(widths),
        "activation": activation,
        "init": [repr(k) for k in kinits],
        "expect": [repr(e) for e in expected_inits],
        "batch": batch,
        "tolerance": tolerance,
        "alpha": alpha,
        "seed": seed,
        "norm": norm,
    }
    return CheckResult(
        verdict,
        total,
        rows,
        health,
        diagnosis,
        first_nf,
        pred.nonfinite_layer,
        config,
        first_uf,
        pred.underflow_layer,
    )


_PROBES: dict[tuple, Any] = {}


def _cached_probe(net, batch: int, mean: float, std: float):
    """One compiled probe per architecture: a second check of the same net is warm."""
    key = (
        net.widths,
        net.activation,
        tuple(map(repr, net.kernel_inits)),
        tuple(map(repr, net.bias_inits)),
        net.norm,
        batch,
        float(mean),
        float(std),
    )
    if key not in _PROBES:
        if len(_PROBES) >= 32:
            _PROBES.pop(next(iter(_PROBES)))
        _PROBES[key] = make_probe(net, batch, mean, std)
    return _PROBES[key]


#: The seeds that give distinct runs: ``jax.random.key`` takes a C long but, with JAX's
#: default 32-bit mode, ``key(2**32) == key(0)`` and ``key(-1) == key(2**32 - 1)``.
SEED_RANGE = (0, 2**32 - 1)


def _validate(widths, batch, seeds, max_seeds, tolerance, alpha, mean, std, data, seed=0):
    def whole(name, v, lo, hi=2**31 - 1):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise InputError(f"{name} must be a whole number in [{lo}, {hi}], got {v!r}")

    if len(widths) < 2:
        raise InputError(f"widths needs an input and an output width, got {list(widths)}")
    for w in widths:
        whole("every width", w, 1)
    whole("batch", batch, 2)
    whole("seeds", seeds, 2)
    whole("max_seeds", max_seeds, seeds)
    whole("seed", seed, *SEED_RANGE)
    for name, v in (("tolerance", tolerance), ("alpha", alpha)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise InputError(f"{name} must be a finite number > 0, got {v!r}")
    if tolerance > 1:
        raise InputError(
            f"tolerance must be in (0, 1], got {tolerance}: a band wider than "
            "[1/2, 2] accepts a wrong fan or gain and makes the verdict meaningless"
        )
    if alpha >= 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    for name, v in (("input_mean", mean), ("input_std", std)):
        if not math.isfinite(v):
            raise InputError(f"{name} must be finite, got {v!r}")
    if std <= 0:
        raise InputError(f"input_std must be > 0, got {std}")
    if data is not None:
        arr = np.asarray(data)
        if arr.ndim != 2 or arr.shape[1] != widths[0]:
            raise InputError(
                f"data must have shape (N, {widths[0]}) to feed input width {widths[0]}, "
                f"got {arr.shape}",
                kind="data",
            )
        if arr.shape[0] < 1:
            raise InputError("data has no rows", kind="data")
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise InputError(f"data contains {bad} non-finite value(s) (NaN or inf)", kind="data")


def _check_memory(net, batch: int, seeds: int, data) -> None:
    """Refuse, before compiling, a round that cannot fit in the device's memory."""
    need = estimate_probe_bytes(net, batch, seeds) + (
        0 if data is None else np.asarray(data).nbytes
    )
    have = available_memory_bytes()
    if have is not None and need > 0.8 * have:
        raise InputError(
            f"a round of {seeds} seeds of widths {_short(net.widths)} at batch {batch} needs about "
            f"{need / 2**30:.3g} GiB, more than 80% of the {have / 2**30:.3g} GiB available; "
            "use smaller widths, --batch or --seeds",
            kind="resources",
        )


def _short(widths) -> str:
    w = list(widths)
    return str(w) if len(w) <= 8 else f"[{w[0]}, {w[1]}, ... ({len(w)} widths), {w[-1]}]"


def assert_agrees(*args, **kwargs) -> CheckResult:
    """Run :func:`check` and raise ``AssertionError`` with the table unless the law agrees.

    For users' own tests: ``varprop.assert_agrees([784, 256, 256, 10], "relu", "he_normal")``.
    """
    r = check(*args, **kwargs)
    if r.verdict != "agrees":
        raise AssertionError(f"variance law {r.verdict}:\n{r.summary()}")
    return r


def assert_healthy(*args, require_healthy: bool = True, **kwargs) -> CheckResult:
    """Run :func:`check` and raise ``AssertionError`` with the table unless the law agrees
    *and* the network is healthy: not degenerate (zero or constant weights, identical units,
    all-zero activations or gradients, values leaving float32) and, with
    ``require_healthy`` (the default here), neither vanishing nor exploding.

    For users' own tests: ``varprop.assert_healthy([784, 256, 256, 10], "relu", "he_normal")``.
    """
    r = check(*args, **kwargs)
    code = r.exit_code(require_healthy)
    if code != 0:
        what = {1: "the variance law disagrees", 3: "the check is inconclusive"}.get(
            code, "the network is degenerate or its signal vanishes or explodes"
        )
        raise AssertionError(f"{what}:\n{r.summary()}")
    return r

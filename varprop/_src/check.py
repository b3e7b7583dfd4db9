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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import numpy as np
from scipy import stats as sstats

from varprop._src.initializers import Initializer
from varprop._src.laws import activations as A
from varprop._src.laws.layers import FLOAT32_MAX
from varprop._src.laws.schemes import Scheme
from varprop._src.probe import NORM_EPSILON, make_network, make_probe, output_redraws

VERDICTS = ("agrees", "disagrees", "inconclusive")


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
            f"predicted {self.predicted_nonfinite_layer}."
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
    nonfinite_layer: int | None
    forward_factor: float
    backward_factor: float


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
) -> Prediction:
    """E[z_l^2] forward and E[(dL/dz_l)^2] backward from the laws, layer by layer.

    Forward: q_l = n_{l-1} Var(w_l) m_{l-1} + E[b^2], m_0 = E[x^2] of the input and
    m_l = E[phi(z)^2] at z ~ N(0, q_l) (second moments, so non-zero means after ReLU and
    non-zero-mean inputs are handled). Backward: g_L = E[v^2] = 1 and
    g_l = E[phi'(z_l)^2] n_{l+1} Var(w_{l+1}) g_{l+1}. Moments come from
    :func:`varprop.laws.activation_moments` (closed form or quadrature; exact scaling for
    homogeneous phi). The first non-finite layer is the first where the largest of the
    B n_l values, about sqrt(2 ln(B n_l) q_l), passes the float32 maximum.

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
    q = np.zeros(L)
    m2_prev = input_m2
    v_prev = input_m2 if input_var is None else input_var  # batch variance of the input
    dphi2 = np.ones(L)
    back = np.ones(L)  # extra backward factor of the normalization
    for i in range(L):
        q[i] = widths[i] * var[i] * m2_prev + bias_m2[i]
        if i == L - 1:
            break
        qa = q[i]
        if norm is not None:
            eps = NORM_EPSILON[norm]
            s2 = widths[i] * var[i] * v_prev if norm == "batchnorm" else q[i]
            qa = s2 / (s2 + eps) if s2 > 0 else 0.0
            n_removed = batch if norm == "batchnorm" else widths[i + 1]
            back[i] = (1 - 2 / n_removed) / (s2 + eps)
        if act.homogeneous:
            m1 = A.activation_moments(act, 1.0)
            m2_prev, dphi2[i] = m1.second_moment * qa, m1.grad_second_moment
            v_prev = (m1.second_moment - m1.mean**2) * qa
        elif qa > 0 and math.isfinite(qa):
            mm = A.activation_moments(act, float(qa))
            m2_prev, dphi2[i] = mm.second_moment, mm.grad_second_moment
            v_prev = mm.variance
        else:
            m2_prev = dphi2[i] = v_prev = 0.0
    g = np.zeros(L)
    g[L - 1] = 1.0
    for i in range(L - 2, -1, -1):
        # Layer i+1 maps widths[i+1] -> widths[i+2]; its fan_out carries the gradient back.
        g[i] = back[i] * dphi2[i] * widths[i + 2] * var[i + 1] * g[i + 1]
    nonfinite = None
    for i in range(L):
        big = math.sqrt(2 * math.log(max(batch * widths[i + 1], 2)) * q[i]) if q[i] > 0 else 0.0
        if not math.isfinite(big) or big > FLOAT32_MAX:
            nonfinite = i + 1
            break
    ff = _geo_factor(q[_hidden_stack(L)])
    fb = _geo_factor(g[_hidden_stack(L)][::-1])
    return Prediction(q, g, var, nonfinite, ff, fb)


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
    if isinstance(x, (str, Initializer)):
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


def _interval(r: np.ndarray, relvar: np.ndarray, units: int, m: int, alpha: float):
    """Pooled mean of per-seed ratios and its Bonferroni-corrected Student-t interval."""
    S = len(r)
    mean = float(np.mean(r))
    se = float(np.sqrt(np.sum(r**2 * relvar / units))) / S
    dof = max(S * (units - 1), 1)
    t = float(sstats.t.ppf(1 - alpha / (2 * m), dof))
    return mean, mean - t * se, mean + t * se


def _verdict(lo: float, hi: float, tol: float) -> str:
    band_lo, band_hi = 1 / (1 + tol), 1 + tol
    if band_lo <= lo and hi <= band_hi:
        return "agrees"
    if hi < band_lo or lo > band_hi:
        return "disagrees"
    return "inconclusive"


def _mean_ci(values: np.ndarray, alpha: float = 0.05):
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return None, None, None
    m = float(np.mean(v))
    if len(v) < 2:
        return m, None, None
    t = float(sstats.t.ppf(1 - alpha / 2, len(v) - 1))
    h = t * float(np.std(v, ddof=1)) / math.sqrt(len(v))
    return m, max(m - h, 0.0), m + h


def _rows(net, expected, pred, st, tol, alpha):
    f, b = st.forward, st.backward
    W = net.widths
    L = net.depth
    rows: list[LayerRow] = []
    var = pred.weight_var
    degenerate = [s.distribution == "constant" and float(s.mean_law) != 0 for s in expected]
    # A seed whose forward pass went non-finite anywhere has no valid backward statistics:
    # the gradient of every layer passes through the output.
    fwd_ok = np.all(f.z_finite > 0, axis=1)
    for direction in ("forward", "backward"):
        for i in range(L):
            n_in, n_out = W[i], W[i + 1]
            if direction == "forward":
                finite = (f.z_finite[:, i] > 0) & ~np.isnan(f.x_lm2[:, i])
                meas_log = f.z_lm2[:, i]
                with np.errstate(divide="ignore", invalid="ignore"):
                    pred_log = np.logaddexp(
                        np.log(n_in * var[i]) + f.x_lm2[:, i], np.log(f.b_m2[:, i])
                    )
                relvar, units = f.z_rv[:, i], n_out
                if i == L - 1 and st.output_redraw is not None:
                    # The output layer's kernel redrawn on its saved input (see make_probe).
                    meas_log, relvar = st.output_redraw[:, 0], st.output_redraw[:, 1]
                    units = n_out * (1 + output_redraws(net))
                e2e_pred, e2e_meas = pred.q[i], np.exp(f.z_lm2[:, i])
            else:
                finite = fwd_ok & (b.gx_finite[:, i] > 0) & (b.gz_finite[:, i] > 0)
                meas_log = b.gx_lm2[:, i]
                with np.errstate(divide="ignore"):
                    pred_log = np.log(n_out * var[i]) + b.gz_lm2[:, i]
                relvar, units = b.gx_rv[:, i], n_in
                e2e_pred, e2e_meas = pred.g[i], np.exp(b.gz_lm2[:, i])
            m, lo, hi = _mean_ci(np.where(finite, e2e_meas, np.nan))
            row = LayerRow(
                i + 1, direction, n_in, n_out, float(e2e_pred), m, lo, hi, None, None, None, ""
            )
            rows.append(row)
            if degenerate[i]:
                row.verdict = "degenerate"
                continue
            if not np.any(finite):
                row.verdict = "nonfinite"
                continue
            ml, pl, rv = meas_log[finite], pred_log[finite], relvar[finite]
            both_zero = np.isneginf(ml) & np.isneginf(pl)
            if np.all(both_zero):
                row.ratio = row.ratio_low = row.ratio_high = 1.0
                row.verdict = "agrees"  # exactly zero, as the law says
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                r = np.exp(ml - pl)
            if np.any(np.isneginf(pl) & ~np.isneginf(ml)):
                row.verdict = "disagrees"  # the law says exactly 0, the layer is not
                continue
            mean, lo_r, hi_r = _interval(r, rv, units, L, alpha)
            row.ratio, row.ratio_low, row.ratio_high = mean, max(lo_r, 0.0), hi_r
            row.verdict = _verdict(lo_r, hi_r, tol)
    return rows


def _first_nonfinite(f) -> int | None:
    bad = f.z_finite < 1  # (S, L)
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


def _health(rows, pred, L) -> dict[str, Any]:
    out = {}
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
    return out


def _diagnose(rows, net, expected, first_nf, pred_nf, st, tol) -> list[str]:
    out = []
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
    if first_nf is not None or pred_nf is not None:
        if first_nf == pred_nf:
            out.append(f"values first become non-finite at layer {first_nf}, as the law predicts")
        else:
            out.append(
                f"values first become non-finite at layer {first_nf}; the law predicts "
                f"{pred_nf if pred_nf is not None else 'no overflow'}"
            )
    ok = np.all(st.forward.z_finite > 0, axis=1)  # seeds whose backward pass is valid
    dead = [
        i + 1
        for i in range(net.depth - 1)
        if ok.any() and np.all(np.isneginf(st.backward.gz_lm2[ok, i]))
    ]
    if dead:
        out.append(
            f"dead gradients: dL/dz is exactly zero at layer(s) {_ranges(dead)} in every seed; "
            "the weights below the output layer cannot learn"
        )
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
    for i, s in enumerate(expected):
        if s.distribution == "constant" and float(s.mean_law) != 0:
            out.append(
                f"layer {i + 1}: constant init {float(s.mean_law):g}: every unit of the layer is "
                "identical and stays so under gradient descent; the i.i.d. law does not apply"
            )
            break
    return out


def _ranges(xs: list[int]) -> str:
    return f"{xs[0]}-{xs[-1]}" if len(xs) > 1 and xs[-1] - xs[0] == len(xs) - 1 else str(xs)


def _overall(rows, first_nf, pred_nf) -> str:
    vs = [r.verdict for r in rows if r.verdict in VERDICTS]
    nonfinite = any(r.verdict == "nonfinite" for r in rows)
    if "disagrees" in vs:
        return "disagrees"
    if nonfinite and (pred_nf is None or first_nf is None or abs(first_nf - pred_nf) > 1):
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
    batch: int = 128,
    seeds: int = 4,
    max_seeds: int = 64,
    seed: int = 0,
    tolerance: float = 0.1,
    alpha: float = 0.05,
    input_mean: float = 0.0,
    input_std: float = 1.0,
    data: np.ndarray | None = None,
    norm: str | None = None,
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

    Returns:
        A :class:`CheckResult`.

    Example:
        >>> import varprop
        >>> r = varprop.check([64, 128, 128, 10], "relu", "he_normal", seeds=4)
        >>> r.verdict
        'agrees'
    """
    widths = tuple(widths)
    _validate(widths, batch, seeds, max_seeds, tolerance, alpha, input_mean, input_std, data)
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
    else:
        input_m2 = input_mean**2 + input_std**2
        input_var = input_std**2
    bm2 = [_bias_m2(b, widths[i + 1]) for i, b in enumerate(binits)]
    pred = predict(widths, activation, expected, bm2, input_m2, batch, norm, input_var)

    probe = _cached_probe(net, batch, input_mean, input_std)
    data_arg = None if data is None else jax.numpy.asarray(data)
    base = jax.random.key(seed)
    stats = None
    rnd = 0
    total = 0
    while True:
        keys = jax.random.split(jax.random.fold_in(base, rnd), seeds)
        stats = _concat(stats, _to_np(probe(keys, data_arg)))
        total += seeds
        rnd += 1
        rows = _rows(net, expected, pred, stats, tolerance, alpha)
        first_nf = _first_nonfinite(stats.forward)
        verdict = _overall(rows, first_nf, pred.nonfinite_layer)
        if verdict != "inconclusive" or total + seeds > max_seeds:
            break
    health = _health(rows, pred, depth)
    diagnosis = _diagnose(rows, net, expected, first_nf, pred.nonfinite_layer, stats, tolerance)
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
        verdict, total, rows, health, diagnosis, first_nf, pred.nonfinite_layer, config
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


def _validate(widths, batch, seeds, max_seeds, tolerance, alpha, mean, std, data):
    def whole(name, v, lo):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")

    if len(widths) < 2:
        raise ValueError(f"widths needs an input and an output width, got {widths}")
    for w in widths:
        whole("every width", w, 1)
    whole("batch", batch, 2)
    whole("seeds", seeds, 2)
    whole("max_seeds", max_seeds, seeds)
    for name, v in (("tolerance", tolerance), ("alpha", alpha)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if alpha >= 1:
        raise ValueError(f"alpha must be < 1, got {alpha}")
    for name, v in (("input_mean", mean), ("input_std", std)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if std <= 0:
        raise ValueError(f"input_std must be > 0, got {std}")
    if data is not None:
        arr = np.asarray(data)
        if arr.ndim != 2 or arr.shape[1] != widths[0]:
            raise ValueError(
                f"data must have shape (N, {widths[0]}) to feed input width {widths[0]}, "
                f"got {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise ValueError(f"data contains {bad} non-finite value(s) (NaN or inf)")


def assert_agrees(*args, **kwargs) -> CheckResult:
    """Run :func:`check` and raise ``AssertionError`` with the table unless the law agrees.

    For users' own tests: ``varprop.assert_agrees([784, 256, 256, 10], "relu", "he_normal")``.
    """
    r = check(*args, **kwargs)
    if r.verdict != "agrees":
        raise AssertionError(f"variance law {r.verdict}:\n{r.summary()}")
    return r

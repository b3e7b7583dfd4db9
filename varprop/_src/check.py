r"""The checker: per-layer measurements from the probe against the laws, with calibrated
verdicts. The statistics are derived in ``docs/checker_statistics.md``.

Two questions, answered separately.

**Law.** For every dense layer l and both directions, the law of the *expected* scheme is
tested conditionally on the layer's actual input:

.. math::

    \text{forward:}\quad E_W[\overline{(z_l - \bar z_l)^2}]
    = n_{l-1}\,\mathrm{Var}(w_l)\,\overline{(x_l - \bar x_l)^2}
    + E[w_l]^2\,\overline{(S_l - \bar S_l)^2},\qquad
    \text{backward:}\quad E_W[\overline{(\partial L/\partial x_l)^2}]
    = n_l\,\mathrm{Var}(w_l)\,\overline{(\partial L/\partial z_l)^2} + \dots

(bars: means over the batch; S the row sums of x; the forward test is batch-centered, so
the bias drops out). Given the input, the per-unit second moments are i.i.d. across units.
Layers at least :data:`~varprop._src.probe.NARROW_UNITS` wide take the standard error from
their spread across units (Student t); narrower ones from the small-sample law of the
per-unit second moments (chi-square, :mod:`varprop._src.stats`). Seeds are pooled, each
direction's layers and the looks are Bonferroni-corrected, and the interval is compared
with the band [1/(1+delta), 1+delta]: inside at level alpha -> agrees, disjoint at level
alpha/5 -> disagrees, otherwise inconclusive (then more seeds are drawn, up to a budget).
Rows whose values the law puts beyond float32 are not tested (``float32_limit``).

**Health.** The end-to-end law (:func:`varprop.laws.propagate`) says whether E[z^2]
and E[(dL/dz)^2] are preserved, vanish or explode over depth, and where float32 gives out;
:mod:`varprop._src.health` says whether the network is degenerate whatever its law says.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import numpy as np

from varprop._src.check_inputs import (
    InitArg,
    as_inits,
    bias_second_moment,
    build_network,
    cached_probe,
    check_memory,
    validate_options,
)
from varprop._src.formatting import clean as _clean
from varprop._src.formatting import fmt as _fmt
from varprop._src.health import (
    diagnose,
    first_nonfinite,
    first_underflow,
    health_report,
)
from varprop._src.laws import activations as A
from varprop._src.laws.propagation import propagate
from varprop._src.probe import (
    output_redraws,
)
from varprop._src.stats import NARROW_UNITS
from varprop._src.verdicts import (
    ExpectedLaw,
    LayerMeasurement,
    ProductStatistics,
    layer_verdict,
    overall_verdict,
)


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


# -- measurement -> verdicts ---------------------------------------------------------------


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


def _product(f, i: int, law: ExpectedLaw, centered: bool) -> ProductStatistics:
    """The forward product z = x W + b of layer ``i`` as the conditional test reads it."""
    if centered:  # the batch-centered x and z: the bias and the mean's cross term drop out
        return ProductStatistics(
            v_lm2=f.xc_lm2[:, i],
            v_lrs2=f.xc_lrs2[:, i],
            y_lm2=f.zc_lm2[:, i],
            y_rv=f.zc_rv[:, i],
            v_gram=f.xc_gram[:, i],
            v_diag=f.xc_diag[:, i],
            v_sumfrac=f.xc_sumfrac[:, i],
        )
    return ProductStatistics(
        v_lm2=f.x_lm2[:, i],
        v_lrs2=f.x_lrs2[:, i],
        y_lm2=f.z_lm2[:, i],
        y_rv=f.z_rv[:, i],
        v_gram=f.x_gram[:, i],
        v_diag=f.x_diag[:, i],
        v_sumfrac=f.x_sumfrac[:, i],
        v_meanfrac=f.x_meanfrac[:, i],
        v_crossfrac=f.x_crossfrac[:, i],
        b_lm2=f.b_lm2[:, i],
        sign_mu_b=np.sign(law.mean * f.b_mean[:, i]),
    )


def _measurements(net, st, i: int, law: ExpectedLaw, batch: int) -> dict[str, LayerMeasurement]:
    """Layer ``i``'s forward and backward measurements from the probe's statistics."""
    f, b = st.forward, st.backward
    n_in, n_out = net.widths[i], net.widths[i + 1]
    plain, centered = _product(f, i, law, False), _product(f, i, law, True)
    with np.errstate(invalid="ignore", over="ignore"):
        cross = 2 * law.mean * n_in * f.x_mean[:, i] * f.b_mean[:, i]
    plain = dataclasses.replace(plain, cross=np.where(np.isfinite(cross), cross, 0.0))
    units = n_out
    if i == net.depth - 1 and st.output_redraw is not None:
        # The output layer's kernel redrawn on its saved input (see make_probe).
        red = st.output_redraw
        plain = dataclasses.replace(plain, y_lm2=red[:, 0, 0], y_rv=red[:, 0, 1])
        centered = dataclasses.replace(centered, y_lm2=red[:, 1, 0], y_rv=red[:, 1, 1])
        units = n_out * (1 + output_redraws(net))
    # A seed whose forward pass went non-finite anywhere has no valid backward statistics:
    # the gradient of every layer passes through the output.
    fwd_ok = np.all(f.z_finite > 0, axis=1)
    return {
        "forward": LayerMeasurement(
            "forward",
            n_in,
            units,
            batch * n_out,
            plain,
            centered,
            output_finite=f.z_finite[:, i] > 0,
        ),
        "backward": LayerMeasurement(
            "backward",
            n_out,
            n_in,
            batch * n_in,
            ProductStatistics(
                v_lm2=b.gz_lm2[:, i],
                v_lrs2=b.gz_lrs2[:, i],
                y_lm2=b.gx_lm2[:, i],
                y_rv=b.gx_rv[:, i],
                v_gram=b.gz_gram[:, i],
                v_diag=b.gz_diag[:, i],
                v_sumfrac=b.gz_sumfrac[:, i],
            ),
            input_finite=fwd_ok & (b.gz_finite[:, i] > 0),
            output_finite=b.gx_finite[:, i] > 0,
        ),
    }


def _rows(net, laws: list[ExpectedLaw], pred, st, tol, alpha, batch, alpha_last):
    """The rows of one look: ``alpha`` is this look's share of the family-wise level (its
    intervals are Bonferroni-corrected over the layers of a direction), ``alpha_last`` the
    last look's, which decides how many seeds a narrow row would need. Each row's test is
    :func:`varprop.layer_verdict` on the probe's statistics of that layer."""
    f, b = st.forward, st.backward
    L = net.depth
    linear = A.get_activation(net.activation).name == "linear" and net.norm is None
    per_layer = [_measurements(net, st, i, laws[i], batch) for i in range(L)]
    rows: list[LayerRow] = []
    for direction in ("forward", "backward"):
        for i in range(L):
            n_in, n_out = net.widths[i], net.widths[i + 1]
            m = per_layer[i][direction]
            if direction == "forward":
                e2e_pred, e2e_meas = pred.forward[i], np.exp(f.z_lm2[:, i])
                inputs_ok = np.isfinite(f.x_lm2[:, i]) | np.isneginf(f.x_lm2[:, i])
            else:
                e2e_pred, e2e_meas = pred.backward[i], np.exp(b.gz_lm2[:, i])
                inputs_ok = np.asarray(m.input_finite, bool)
            assert m.output_finite is not None
            mean, lo, hi = _mean_ci(np.where(inputs_ok & m.output_finite, e2e_meas, np.nan))
            redraw = direction == "forward" and m.units != n_out
            narrow = min(n_in, n_out) < NARROW_UNITS and not redraw
            t = layer_verdict(
                m,
                laws[i],
                tolerance=tol,
                alpha=alpha,
                tests=L,
                alpha_last=alpha_last,
                narrow=narrow,
            )
            row = LayerRow(
                i + 1,
                direction,
                n_in,
                n_out,
                float(e2e_pred),
                mean,
                lo,
                hi,
                t.ratio,
                t.ratio_low,
                t.ratio_high,
                t.verdict,
                t.test,
                t.dof,
                t.note,
                t.seeds_needed,
            )
            rows.append(row)
            if direction == "backward" and narrow and i < L - 1 and not linear and t.test:
                # dL/dz_l depends on W_l through phi'(z_l) and everything above it; with few
                # units that dependence biases the backward law (measured: ratio 0.89 for a
                # 4-wide tanh net, 0.96 at 16). The forward test of the same weights is exact.
                row.assumption = "gradient independence"
                fwd_row = rows[i]
                if row.verdict == "disagrees" and fwd_row.verdict != "disagrees":
                    row.verdict = "inconclusive"
                    row.seeds_needed = None
                    row.note = (
                        f"gradient independence does not hold at width {min(n_in, n_out)}: "
                        "dL/dz depends on this layer's own weights; the forward test of the "
                        f"same weights {fwd_row.verdict}"
                    )
                elif row.verdict == "inconclusive" and row.note.startswith("ratio "):
                    row.note += (
                        f" (gradient independence is approximate at width {min(n_in, n_out)})"
                    )
    return rows


def _overall(rows) -> str:
    return overall_verdict([r.verdict for r in rows])


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
    net = build_network(widths, activation, init, bias_init, norm)
    widths = net.widths
    validate_options(
        widths, batch, seeds, max_seeds, tolerance, alpha, input_mean, input_std, data, seed
    )
    depth = net.depth
    kinits = net.kernel_inits
    expected_inits = as_inits(expect, depth, "expect") if expect is not None else kinits
    binits = net.bias_inits
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
    bm2 = [bias_second_moment(b, widths[i + 1]) for i, b in enumerate(binits)]
    pred = propagate(
        widths,
        activation,
        expected,
        bias_second_moments=bm2,
        input_second_moment=input_m2,
        input_variance=input_var,
        input_cross=input_cross,
        batch=batch,
        norm=norm,
    )

    laws = [ExpectedLaw.of(sc, (widths[i], widths[i + 1])) for i, sc in enumerate(expected)]
    check_memory(net, batch, seeds, data)
    probe = cached_probe(net, batch, input_mean, input_std)
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
    first_nf = first_nonfinite(stats.forward)
    first_uf = first_underflow(stats.forward, net)
    health = health_report(rows, pred, depth, net, stats, first_nf, first_uf)
    diagnosis = diagnose(rows, net, expected, pred, first_nf, first_uf, stats, tolerance)
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
        pred.first_nonfinite,
        config,
        first_uf,
        pred.first_underflow,
    )


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

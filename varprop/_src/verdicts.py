r"""The conditional test of one layer: measured statistics in, a calibrated verdict out.

For a product y = v W (+ b) with i.i.d. weights of variance Var(w) and mean E[w], given the
input v (a batch of B rows, n = ``fan`` entries contracted), the law of the mean square of
y over the batch and the units is

.. math::

    E_W\big[\overline{y^2}\big] = n\,\mathrm{Var}(w)\,\overline{v^2}
    + E[w]^2\,\overline{(\textstyle\sum_i v_i)^2} + \overline{b^2} + \text{cross},

(bars: means over the batch and units; the cross term 2 E[w] n mean(v) mean(b) comes from a
bias with a mean). Forward, v is the layer's input x and y its pre-activation z; backward, v
is dL/dz and y is dL/dx (n is then the fan-out). Given v, the per-unit mean squares of y are
i.i.d. across units, so their spread gives a standard error (wide layers, Student t), or
their exact small-sample law does (narrow layers, a chi-square interval from four scale-free
statistics of v). Seeds are pooled; the interval of measured / predicted is compared with
the band [1/(1 + delta), 1 + delta]: inside at level alpha -> ``agrees``, outside at level
alpha/5 -> ``disagrees``, else ``inconclusive``. Rows the law puts beyond float32 are not
tested (``float32_limit``). Derivations: ``docs/checker_statistics.md``.

This module knows nothing of networks: :func:`varprop.check` feeds it the probe's
statistics of an MLP, and anyone can feed it statistics collected from their own layers.

Example:
    A user's own dense layer, measured with NumPy over 8 draws of its weights:

    >>> import numpy as np, varprop
    >>> rng = np.random.default_rng(0)
    >>> n_in, n_out, B, S = 256, 256, 32, 8
    >>> x = rng.standard_normal((S, B, n_in))
    >>> W = rng.standard_normal((S, n_in, n_out)) * np.sqrt(2 / n_in)   # He
    >>> z = np.einsum("sbi,sio->sbo", x, W)
    >>> unit_m2 = (z**2).mean(axis=1)                                    # (S, n_out)
    >>> m = varprop.LayerMeasurement(
    ...     direction="forward", fan=n_in, units=n_out, values=B * n_out,
    ...     plain=varprop.ProductStatistics(
    ...         v_lm2=np.log((x**2).mean(axis=(1, 2))),
    ...         v_lrs2=np.log((x.sum(axis=2) ** 2).mean(axis=1)),
    ...         y_lm2=np.log(unit_m2.mean(axis=1)),
    ...         y_rv=unit_m2.var(axis=1, ddof=1) / unit_m2.mean(axis=1) ** 2))
    >>> law = varprop.ExpectedLaw.of("he_normal", (n_in, n_out))
    >>> t = varprop.layer_verdict(m, law)
    >>> t.verdict, round(t.ratio, 2)
    ('agrees', 1.0)
    >>> varprop.layer_verdict(m, varprop.ExpectedLaw.of("glorot_normal", (n_in, n_out))).verdict
    'disagrees'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from varprop._src.laws.layers import FLOAT32_MAX, FLOAT32_TINY
from varprop._src.stats import (
    DISAGREE_ALPHA_FRACTION,
    NARROW_UNITS,
    chi2_dof_needed,
    chi2_interval,
    law_relvar,
    spread_interval,
    two_level_verdict,
)

if TYPE_CHECKING:
    from varprop._src.initializers import Initializer
    from varprop._src.laws.schemes import Scheme

#: Margins of the float32 range within which a measurement is not used (the values would be
#: cut off by overflow or flushed to zero by underflow, biasing what survives): the largest
#: predicted value above FLOAT32_MAX / 256, or the predicted RMS below FLOAT32_TINY * 4096.
OVERFLOW_MARGIN = math.log(FLOAT32_MAX) - math.log(256.0)
UNDERFLOW_MARGIN = math.log(FLOAT32_TINY) + math.log(4096.0)
#: The smallest share of E[y^2] a tested part may have: below it, float32's relative
#: precision (6e-8 on each value) costs more than 0.1% of the part's second moment.
RESOLVED_LOG = math.log(1e-7)


@dataclass(frozen=True)
class ExpectedLaw:
    """The law a layer's weights are expected to follow: their variance, mean and kurtosis
    (3 where the scheme has none: orthogonal, constant)."""

    variance: float
    mean: float = 0.0
    kurtosis: float = 3.0

    @classmethod
    def of(cls, scheme: str | Scheme | Initializer, shape: tuple[int, ...]) -> ExpectedLaw:
        """The law of a scheme (a SPEC string, a :class:`~varprop.Scheme` or an
        initializer) for a kernel of ``shape``."""
        from varprop._src.initializers import Initializer, from_spec

        if isinstance(scheme, str):
            scheme = from_spec(scheme)
        if isinstance(scheme, Initializer):
            scheme = scheme.scheme
        k = scheme.kurtosis
        return cls(
            float(scheme.variance(shape)),
            float(scheme.mean(shape)),
            3.0 if k is None else float(k),
        )


@dataclass(frozen=True)
class ProductStatistics:
    """Per-seed statistics (arrays of shape ``(S,)``) of one product y = v W (+ b).

    ``v_lm2`` log mean v^2; ``v_lrs2`` log of the batch mean of (sum_i v_bi)^2; ``y_lm2``
    log mean y^2; ``y_rv`` the relative variance (ddof 1) across units of the per-unit mean
    squares of y. The small-sample law (narrow layers) also needs ``v_gram``, ``v_diag``,
    ``v_sumfrac`` (and with a weights' mean ``v_meanfrac``, ``v_crossfrac``; see
    :func:`varprop._src.probe.law_summary`). ``b_lm2`` log mean b^2 and ``cross`` the term
    2 E[w] n mean(v) mean(b), when y has a bias; ``sign_mu_b`` the sign of E[w] mean(b).
    """

    v_lm2: np.ndarray
    v_lrs2: np.ndarray
    y_lm2: np.ndarray
    y_rv: np.ndarray
    v_gram: np.ndarray | None = None
    v_diag: np.ndarray | None = None
    v_sumfrac: np.ndarray | None = None
    v_meanfrac: np.ndarray | None = None
    v_crossfrac: np.ndarray | None = None
    b_lm2: np.ndarray | None = None
    cross: np.ndarray | None = None
    sign_mu_b: np.ndarray | None = None


@dataclass(frozen=True)
class LayerMeasurement:
    """What the conditional test of one layer and direction needs.

    Attributes:
        direction: ``"forward"`` or ``"backward"``.
        fan: the contracted dimension n.
        units: how many units the spread ``y_rv`` is over.
        values: how many values of y one seed holds (batch x width): the float32 limits
            look at the largest of them.
        plain: the statistics of v and y.
        centered: the same of the batch-centered v and y (forward: the bias drops out and
            so does the batch's common direction); used per seed where it is resolved.
        input_finite, output_finite: per seed, whether v and y were finite (default all).
    """

    direction: str
    fan: int
    units: int
    values: int
    plain: ProductStatistics
    centered: ProductStatistics | None = None
    input_finite: np.ndarray | None = None
    output_finite: np.ndarray | None = None


@dataclass
class LayerTest:
    """The outcome of :func:`layer_verdict`: the ratio measured / predicted given the
    input, its interval, and the verdict (``agrees``, ``disagrees``, ``inconclusive`` or
    ``float32_limit``), with the test used, its degrees of freedom, and a note when a row
    is not decided."""

    verdict: str
    ratio: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None
    test: str = ""
    dof: float | None = None
    note: str = ""
    seeds_needed: int | None = None


def _opt(a: np.ndarray | None, like: np.ndarray, fill: float = 0.0) -> np.ndarray:
    return np.full_like(like, fill) if a is None else np.asarray(a, np.float64)


def predicted_log(law: ExpectedLaw, fan: int, p: ProductStatistics):
    """Per-seed log of the law's E_W[mean y^2] given v, and the shares of it from Var(w),
    E[w] and the bias (the module's law)."""
    v_lm2 = np.asarray(p.v_lm2, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_mu2 = 2 * np.log(abs(law.mean)) if law.mean != 0 else -np.inf
        pw = (np.log(fan * law.variance) if law.variance > 0 else -np.inf) + v_lm2
        pmu = log_mu2 + np.asarray(p.v_lrs2, np.float64)
        pb = _opt(p.b_lm2, pw, -np.inf)
        cross = _opt(p.cross, pw)
        top = np.maximum(np.maximum(pw, pmu), pb)
        top = np.where(np.isfinite(top), top, 0.0)
        lin = np.exp(pw - top) + np.exp(pmu - top) + np.exp(pb - top) + cross * np.exp(-top)
        pred = np.where(lin > 0, np.log(np.maximum(lin, 1e-300)) + top, -np.inf)
        pred = np.where(np.isnan(pw), np.nan, pred)
        shares = tuple(np.where(np.isfinite(pred), np.exp(t - pred), 0.0) for t in (pw, pmu, pb))
    return pred, shares


def layer_verdict(
    m: LayerMeasurement,
    law: ExpectedLaw,
    *,
    tolerance: float = 0.1,
    alpha: float = 0.05,
    tests: int = 1,
    alpha_last: float | None = None,
    narrow: bool | None = None,
) -> LayerTest:
    """Test one layer's law given its actual input (the module's docstring).

    Args:
        m: the measurement.
        law: the expected law of the weights.
        tolerance: the band delta: ratios in [1/(1+delta), 1+delta] agree.
        alpha: the level of this test; the interval is Bonferroni-corrected over ``tests``
            (the layers of a direction tested together).
        alpha_last: the level of the last look (default ``alpha``): how many seeds a narrow
            row would need is computed at it.
        narrow: use the small-sample law (default: ``min(fan, units) < NARROW_UNITS``).
    """
    p = m.plain
    pred_plain, (fw_u, fmu_u, fb_u) = predicted_log(law, m.fan, p)
    S = pred_plain.shape[0]
    inputs_ok = (
        np.ones(S, bool) if m.input_finite is None else np.asarray(m.input_finite, bool)
    ) & (np.isfinite(p.v_lm2) | np.isneginf(p.v_lm2))
    out_finite = np.ones(S, bool) if m.output_finite is None else np.asarray(m.output_finite, bool)
    zeros = np.zeros(S)
    use_c = np.zeros(S, bool)
    c = m.centered
    if c is not None:
        test_c, (fw_c, fmu_c, _) = predicted_log(law, m.fan, c)
        with np.errstate(invalid="ignore"):
            use_c = np.isfinite(c.v_lm2) & (test_c - pred_plain >= RESOLVED_LOG)
        resolved = use_c | (np.log(np.maximum(fw_u, 1e-300)) >= RESOLVED_LOG)
    else:
        test_c, fw_c, fmu_c = pred_plain, fw_u, fmu_u
        resolved = np.ones(S, bool)
        c = p

    def pick(field: str, fill: float = 0.0, centered_zero: bool = False) -> np.ndarray:
        plain = _opt(getattr(p, field), zeros, fill)
        cen = zeros if centered_zero else _opt(getattr(c, field), zeros, fill)
        return np.where(use_c, cen, plain)

    test_log = np.where(use_c, test_c, pred_plain)
    tfw = np.where(use_c, fw_c, fw_u)
    tfmu = np.where(use_c, fmu_c, fmu_u)
    tfb = np.where(use_c, 0.0, fb_u)
    meas_log, relvar = pick("y_lm2"), pick("y_rv")

    # Where float32 gives out, as the conditional law predicts.
    with np.errstate(invalid="ignore", divide="ignore"):
        log_max = pred_plain / 2 + 0.5 * np.log(2 * np.log(max(m.values, 2)))
        # 2 log of the RMS of one product v_i w_ij: flushed to zero below FLOAT32_TINY.
        term_log = pred_plain + np.log(fw_u) - np.log(m.fan)
        near_limit = (log_max > OVERFLOW_MARGIN) | (
            (term_log / 2 < UNDERFLOW_MARGIN) & (fw_u > 1e-6) & np.isfinite(term_log)
        )
    limit = ~inputs_ok | near_limit | ~resolved
    usable = ~limit & (np.isfinite(pred_plain) | np.isneginf(pred_plain))
    if not np.any(usable):
        if not np.any(inputs_ok):
            note = "values beyond float32 before this layer"
        elif not np.any(resolved & inputs_ok):
            product = "x W" if m.direction == "forward" else "v W"
            note = f"{product} is below float32's resolution next to the bias"
        else:
            note = "the law puts this layer's values at float32's limit"
        return LayerTest("float32_limit", note=note)
    ml, pl = meas_log[usable], test_log[usable]
    if np.any(~out_finite[usable]):
        return LayerTest("disagrees", note="non-finite values where the law predicts finite ones")
    both_zero = np.isneginf(ml) & np.isneginf(pl)
    if np.all(both_zero):
        return LayerTest("agrees", 1.0, 1.0, 1.0)  # exactly zero, as the law says
    if np.any(np.isneginf(pl) & ~np.isneginf(ml)):
        return LayerTest("disagrees", note="the law says exactly 0, the layer is not")
    keep = ~both_zero
    with np.errstate(invalid="ignore", over="ignore"):
        r = np.exp(ml[keep] - pl[keep])
    is_narrow = min(m.fan, m.units) < NARROW_UNITS if narrow is None else narrow
    alpha_d = alpha * DISAGREE_ALPHA_FRACTION
    if is_narrow:

        def sel(a: np.ndarray) -> np.ndarray:
            return a[usable][keep]

        rv0 = law_relvar(
            sel(pick("v_gram", np.nan)),
            sel(pick("v_diag", np.nan)),
            law.kurtosis,
            sel(tfw),
            sel(tfmu),
            sel(pick("v_sumfrac")),
            sel(tfb),
            sel(pick("v_meanfrac", centered_zero=True)),
            sel(pick("v_crossfrac", centered_zero=True)),
            sel(pick("sign_mu_b", centered_zero=True)),
        )
        iv = chi2_interval(r, rv0 / m.units, alpha, tests)
        iv_d = chi2_interval(r, rv0 / m.units, alpha_d, tests)
        test = "small-sample law"
    else:
        rv = relvar[usable][keep]
        iv = spread_interval(r, rv, m.units, alpha, tests)
        iv_d = spread_interval(r, rv, m.units, alpha_d, tests)
        test = "spread"
    out = LayerTest(
        two_level_verdict(iv, iv_d, tolerance),
        iv.mean,
        max(iv.low, 0.0),
        iv.high,
        test,
        iv.dof,
    )
    if out.verdict != "inconclusive":
        return out
    if test == "small-sample law":
        need = chi2_dof_needed(tolerance, alpha if alpha_last is None else alpha_last, tests)
        n_seeds = max(int(np.sum(keep)), 1)
        per_seed = iv.dof / n_seeds
        seeds_needed = math.ceil(need / per_seed) if per_seed > 0 else math.inf
        what = f"{m.units} unit{'s' if m.units != 1 else ''}"
        if seeds_needed <= n_seeds:
            out.note = f"ratio {iv.mean:.3g} at the edge of the ±{tolerance:.0%} band"
        elif math.isfinite(seeds_needed) and seeds_needed <= 10**6:
            out.seeds_needed = int(seeds_needed)
            out.note = f"{what}: about {seeds_needed} seeds needed for the ±{tolerance:.0%} band"
        else:
            out.note = f"{what}: too narrow to test"
    else:
        out.note = (
            f"interval [{out.ratio_low:.3g}, {out.ratio_high:.3g}] overlaps the edge "
            f"of the ±{tolerance:.0%} band; more seeds would narrow it"
        )
    return out


def overall_verdict(verdicts: Sequence[str]) -> str:
    """``disagrees`` if any tested row does; ``agrees`` if every tested row does (rows the
    law puts beyond float32 are not tested); otherwise ``inconclusive``.

    >>> overall_verdict(["agrees", "float32_limit", "agrees"])
    'agrees'
    >>> overall_verdict(["agrees", "inconclusive"]), overall_verdict(["disagrees", "agrees"])
    ('inconclusive', 'disagrees')
    """
    vs = [v for v in verdicts if v in ("agrees", "disagrees", "inconclusive")]
    if "disagrees" in vs:
        return "disagrees"
    if vs and all(v == "agrees" for v in vs):
        return "agrees"
    return "inconclusive"

"""The rows of :func:`varprop.check_model`: each layer's conditional test from the probe's
statistics (:func:`varprop.layer_verdict`), the measured rows (between layers, residual adds,
attention's products) and the health (``docs/model_checker.md``).

A site inside a ``lax.scan`` has one row per iteration (``blocks/conv1[3]``: the iteration
that reads slice 3 of the stacked parameters), in the order the iterations run, each
tested on its own; the multiple-testing correction counts every iteration's test.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from varprop._src.formatting import fmt as _fmt
from varprop._src.model.loops import base_path, earlier, group_key, ranges, suffix
from varprop._src.model.probe import is_narrow
from varprop._src.model.result import ModelRow
from varprop._src.model.tails import DropoutSite, NormSite
from varprop._src.model.trace import LayerSite, MergeSite
from varprop._src.stats import NARROW_UNITS, band_verdict
from varprop._src.verdicts import (
    ExpectedLaw,
    LayerMeasurement,
    ProductStatistics,
    layer_verdict,
    predicted_log,
)


def _norm_factor(site: LayerSite) -> tuple[float, str]:
    from varprop._src.laws.model_ops import normalized_backward_factor

    if site.normalized is None or site.fan_in <= 2:
        return 1.0, ""
    kind = site.normalized
    f = float(normalized_backward_factor(site.fan_in, kind))
    return (
        f,
        f"{kind} after this layer (train mode): backward law x (1 - {2 if kind == 'batchnorm' else 1}/n) = {f:.4g}",
    )


# ----------------------------------------------------------------------------------------
# Rows.
# ----------------------------------------------------------------------------------------


def layer_path(param_path: str) -> str:
    """``"blocks/0/conv1"`` from ``"blocks/0/conv1/kernel"``."""
    return param_path.rsplit("/", 1)[0] if "/" in param_path else param_path


def _seed_mean(a) -> float | None:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(np.mean(a)) if a.size else None


def _layer_rows(
    site, path, law, law_name, st, tol, alpha, tests, alpha_last, note_law, zero_scales
):
    rows = []
    f = st["forward"][site.index]
    directions = ["forward"] if site.kind == "embed" else ["forward", "backward"]
    for d in directions:
        s = f if d == "forward" else st["backward"][site.index]
        if d == "forward":
            fan = float(site.fan_in)
            units = site.units_out
            values = math.prod(site.y_shape)
            if site.kind == "embed":
                v_lm2 = np.full_like(s["y_lm2"], -math.log(fan))
                v_lrs2 = np.zeros_like(s["y_lm2"])
                x_m2 = None
            else:
                v_lm2 = s["s_lm2"] - math.log(fan)
                v_lrs2 = s["s_lrs2"]
                x_m2 = s["x_lm2"]
            factor, assumption = 1.0, ""
        else:
            fan = float(site.fan_out)
            units = site.units_in
            values = math.prod(site.x_shape)
            v_lm2 = s["s_lm2"] - math.log(fan)
            v_lrs2 = np.full_like(s["y_lm2"], -np.inf)
            x_m2 = s["v_lm2_raw"]
            factor, assumption = _norm_factor(site)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            border = _seed_mean(np.exp(s["s_lm2"] - x_m2) / fan) if x_m2 is not None else None
        measured = _seed_mean(np.exp(s["y_lm2"]))
        identity = d == "backward" and zero_scales and measured == 0
        row = ModelRow(
            path,
            site.kind,
            d,
            site.fan_in,
            site.fan_out,
            border,
            None,
            measured,
            None,
            None,
            None,
            "no_law",
            law_name,
            assumption=assumption,
        )
        if law is None:
            row.note = note_law
            rows.append(row)
            continue
        lw = ExpectedLaw(law.variance * factor, law.mean, law.kurtosis)
        m = LayerMeasurement(
            direction=d,
            fan=max(1, round(fan)),
            units=units,
            values=values,
            plain=ProductStatistics(
                v_lm2=np.asarray(v_lm2, np.float64) + math.log(fan) - math.log(max(1, round(fan))),
                v_lrs2=np.asarray(v_lrs2, np.float64),
                y_lm2=np.asarray(s["y_lm2"], np.float64),
                y_rv=np.asarray(s["y_rv"], np.float64),
                **_gram(s, ""),
            ),
            centered=_centered(s, fan) if d == "forward" and site.kind != "embed" else None,
            input_finite=np.asarray(s["x_finite"]),
            output_finite=np.asarray(s["y_finite"]),
        )
        narrow = d == "backward" and site.fan_in < NARROW_UNITS
        t = layer_verdict(
            m,
            lw,
            tolerance=tol,
            alpha=alpha,
            tests=tests,
            alpha_last=alpha_last,
            narrow=is_narrow(site, d),
        )

        pred, _ = predicted_log(lw, m.fan, m.plain)
        with np.errstate(over="ignore"):
            row.predicted = _seed_mean(np.exp(pred))
        row.verdict, row.ratio, row.ratio_low, row.ratio_high = (
            t.verdict,
            t.ratio,
            t.ratio_low,
            t.ratio_high,
        )
        row.test, row.dof, row.note, row.seeds_needed = t.test, t.dof, t.note, t.seeds_needed
        if narrow:
            # dL/dy depends on this layer's own weights through the activation's slope (and a
            # normalization's statistics); with a fan-in this small the dependence biases
            # the backward law (a depthwise 3x3 conv before relu: ratio 1.27). The forward
            # row tests the same weights exactly; this one is reported, not tested.
            row.verdict = "measured"
            row.assumption = ", ".join(x for x in (row.assumption, "gradient independence") if x)
            row.note = (
                f"fan-in {site.fan_in:g} < {NARROW_UNITS}: approximate (gradient "
                "independence); the forward row tests these weights"
            )
        if identity:  # 0 = 0 is no test of the law: reported, not counted as agreement
            row.verdict, row.ratio, row.ratio_low, row.ratio_high = "measured", None, None, None
            row.note = "no gradient at init: its branch starts as the identity (zero scale)"
        rows.append(row)
    return rows


def _centered(s: dict[str, Any], fan: float) -> ProductStatistics | None:
    """The centered statistics where the batch has more than one row to center."""
    if "c_s_lm2" not in s:
        return None
    with np.errstate(invalid="ignore"):
        return ProductStatistics(
            v_lm2=np.asarray(s["c_s_lm2"], np.float64) - math.log(max(1, round(fan))),
            v_lrs2=np.asarray(s["c_s_lrs2"], np.float64),
            y_lm2=np.asarray(s["c_y_lm2"], np.float64),
            y_rv=np.asarray(s["c_y_rv"], np.float64),
            **_gram(s, "c_"),
        )


def _gram(s: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """The small-sample statistics of a narrow dense row (none for the others)."""
    if prefix + "gram" not in s:
        return {}
    return {f"v_{k}": np.asarray(s[prefix + k], np.float64) for k in ("gram", "diag", "sumfrac")}


def _between_row(
    prev: LayerSite, prev_ix: Ix, site: LayerSite, ix: Ix, paths: list[str], st
) -> ModelRow:
    """What lies between two layers (activations, normalizations, pooling, dropout, adds):
    measured, never a verdict: E[x^2] of this layer's input against E[y^2] of the previous
    layer's output (of the iteration that ran last before this one)."""
    y_prev = np.exp(np.asarray(_at(st["forward"][prev.index], prev_ix)["y_lm2"], np.float64))
    x_here = np.exp(np.asarray(_at(st["forward"][site.index], ix)["x_lm2"], np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = _seed_mean(x_here / y_prev)
    what = ", ".join(site.between) or "reshape"
    return ModelRow(
        f"{paths[prev.index]}{suffix(prev_ix)} -> {paths[site.index]}{suffix(ix)}",
        "between",
        "forward",
        None,
        None,
        None,
        _seed_mean(y_prev),
        _seed_mean(x_here),
        ratio,
        None,
        None,
        "measured",
        what,
        note=f"{what}: E[x^2] / E[y^2] of the layer before",
    )


def _merge_row(m: MergeSite, st, paths: list[str], found=None, ix: Ix = ()) -> ModelRow:
    s = _at(st["merge"][m.index], ix)
    a, b, ab, tot = (np.asarray(s[k], np.float64) for k in ("a_m2", "b_m2", "ab", "sum_m2"))

    def name(deps: frozenset[int]) -> str:
        layers = [d for d in deps if d >= 0]
        if layers:
            d = max(layers)
            return paths[d] + (suffix(_ix_of(found, d, m.eqn, ix)) if found else "")
        before = [earlier(d) for d in deps if d <= -2]
        if before and found is not None:
            d = max(before)
            back = _step_back(found, m.eqn, ix)
            return paths[d] + (suffix(_ix_of(found, d, m.eqn, back)) if back else "")
        return "input"

    if m.kind == "product":
        # Measured, never a verdict: attention's logits (q k^T: d E[q^2] E[k^2] for
        # independent q, k) and its softmax mixing (sum_j p_j^2 E[v^2]) are products of two
        # activations whose law needs their independence, which nothing guarantees.
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = _seed_mean(tot / ab)
        left, right = name(m.left), name(m.right)
        return ModelRow(
            f"{left} x {right}",
            "product",
            "forward",
            None,
            None,
            None,
            _seed_mean(ab),
            _seed_mean(tot),
            ratio,
            None,
            None,
            "measured",
            "E[y^2] = sum_c E[a_c^2] E[b_c^2] (uncorrelated terms)",
            note=f"E[a^2] {_fmt(_seed_mean(a))}, E[b^2] {_fmt(_seed_mean(b))}",
        )
    left, right = m.left - m.right, m.right - m.left
    label = f"{name(left) if left else 'skip'} + {name(right) if right else 'skip'}"
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = _seed_mean(ab / np.sqrt(a * b))
        ratio = _seed_mean(tot / (a + b))
    note = ""
    if np.all(b == 0) or np.all(a == 0):
        note = "one branch is exactly 0: it starts as the identity (zero scale)"
    return ModelRow(
        label,
        "residual",
        "forward",
        None,
        None,
        None,
        _seed_mean(a + b),
        _seed_mean(tot),
        ratio,
        None,
        None,
        "measured",
        "E[(a+b)^2] = E[a^2] + E[b^2] + 2E[ab]",
        note=note,
        correlation=rho,
    )


def _tail_name(deps: frozenset[int], paths: list[str], what: str) -> str:
    layers = [d for d in deps if d >= 0]
    return f"{what} after {paths[max(layers)]}" if layers else f"{what} of the input"


def _norm_row(n: NormSite, st, paths: list[str], param_paths, tol: float, ix: Ix = ()) -> ModelRow:
    """A normalization's own forward law given its input: an identity over each group
    (train) or of the running statistics (eval), so the interval is the seeds' range."""
    s = _at(st["norm"][n.index], ix)
    z, law = (np.asarray(s[k], np.float64) for k in ("z_m2", "law_m2"))
    finite = bool(np.all(s["finite"]))
    name = (
        layer_path(param_paths[n.param])
        if n.param is not None
        else _tail_name(n.deps, paths, "normalization")
    ) + suffix(ix)
    if n.mode == "train":
        text = "E[z^2] = gamma^2 v/(v+eps) + beta^2 over each group (train)"
    else:
        text = "E[z^2] = gamma^2 E[(u-m)^2]/(v_run+eps) + 2 gamma beta E[u-m]/sqrt(v_run+eps) + beta^2 (eval)"
    row = ModelRow(
        name,
        n.kind,
        "forward",
        None,
        None,
        None,
        _seed_mean(law),
        _seed_mean(z),
        None,
        None,
        None,
        "measured",
        text,
        test="identity",
        note=f"eps {n.eps:.3g}",
    )
    if finite and np.all(z == 0) and np.all(law == 0):
        row.note = "zero scale and shift: the output is 0 (a branch that starts as the identity)"
        return row
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = z / law
    if not finite or not np.all(np.isfinite(ratios)):
        row.note = "non-finite values"
        return row
    row.ratio, row.ratio_low, row.ratio_high = (
        float(np.mean(ratios)),
        float(np.min(ratios)),
        float(np.max(ratios)),
    )
    row.verdict = band_verdict(row.ratio_low, row.ratio_high, tol)
    if n.mode == "eval":
        x = _seed_mean(law)
        if x is not None and not 0.5 < x < 2:
            row.note += (
                f"; eval mode with these running statistics does not normalize: E[z^2] = {_fmt(x)}"
            )
    return row


def _dropout_row(
    d: DropoutSite, st, paths: list[str], tol: float, alpha: float, ix: Ix = ()
) -> ModelRow:
    """Inverted dropout, ``E[z^2] = E[u^2]/keep`` given u: the sum of independent masked
    terms has variance ``sum u^4 (1-keep)/keep^3`` (times the values per draw, an upper
    bound, when the mask is broadcast); a normal interval at ``alpha``."""
    from scipy.stats import norm

    from varprop._src.laws.model_ops import dropout_factor

    s = _at(st["dropout"][d.index], ix)
    z, u2, u4 = (np.asarray(s[k], np.float64) for k in ("z_m2", "u_m2", "u_m4"))
    factor = float(dropout_factor(1 - d.keep))
    n = math.prod(d.shape)
    per_draw = max(1, n // max(1, d.draws))
    pred = u2 * factor
    row = ModelRow(
        _tail_name(d.deps, paths, "dropout") + suffix(ix),
        "dropout",
        "forward",
        None,
        None,
        None,
        _seed_mean(pred),
        _seed_mean(z),
        None,
        None,
        None,
        "measured",
        f"E[z^2] = E[u^2]/(1-p), p = {1 - d.keep:.3g}",
        test="normal",
    )
    total = float(np.sum(pred))
    if not (np.all(np.isfinite(z)) and np.all(np.isfinite(u4)) and total > 0):
        row.note = "non-finite or zero input"
        return row
    sd = math.sqrt(float(np.sum(u4)) * per_draw * (1 - d.keep) / d.keep**3 / n) / total
    ratio = float(np.sum(z)) / total
    half = float(norm.ppf(1 - alpha / 2)) * sd
    row.ratio, row.ratio_low, row.ratio_high = ratio, ratio - half, ratio + half
    row.verdict = band_verdict(row.ratio_low, row.ratio_high, tol)
    if per_draw > 1:
        row.note = f"mask shared by {per_draw} values: interval from an upper bound"
    return row


def health(
    rows: list[ModelRow], sizes: dict[str, dict[str, tuple[int, ...]]], zero_scales: list[str]
):
    """Forward E[y^2] and backward E[(dL/dx)^2], compounded over consecutive layers of the
    same size per example: ``preserved`` while the change stays within a factor 10."""
    out: dict[str, Any] = {"degenerate": []}
    for d in ("forward", "backward"):
        rs = [
            r
            for r in rows
            if r.direction == d
            and r.kind in ("dense", "conv")
            and r.measured is not None
            and not (zero_scales and r.measured == 0)  # an identity branch, not a death
        ]
        # Compounded only between consecutive layers of the same size per example: a
        # resolution change (pooling, strides) rescales a per-value moment legitimately.
        log_change, steps = 0.0, 0
        for a, b in itertools.pairwise(rs):
            if sizes[base_path(a.path)][d] != sizes[base_path(b.path)][d]:
                continue
            lo, hi = (a, b) if d == "forward" else (b, a)
            if not (lo.measured and hi.measured):
                log_change = (
                    math.nan
                    if lo.measured == hi.measured
                    else (-math.inf if not hi.measured else math.inf)
                )
                break
            log_change += math.log(hi.measured / lo.measured)
            steps += 1
        if math.isnan(log_change):
            state = "undetermined"
        elif log_change < -math.log(10):
            state = "vanishing"
        elif log_change > math.log(10):
            state = "exploding"
        else:
            state = "preserved"
        out[d] = {
            "state": state,
            "change": math.exp(log_change) if math.isfinite(log_change) else log_change,
            "steps": steps,
        }
    zero = [
        r
        for r in rows
        if r.kind in ("dense", "conv", "embed")
        and r.direction == "forward"
        and r.measured == 0
        and base_path(r.path) not in zero_scales  # a branch that starts as the identity
    ]
    out["degenerate"] += [f"{p}: every output is 0" for p in grouped_paths(zero)]
    for d in ("forward", "backward"):
        bad = [
            r
            for r in rows
            if r.direction == d and r.verdict == "disagrees" and "non-finite" in r.note
        ]
        out["degenerate"] += [f"{p} ({d}): non-finite values" for p in grouped_paths(bad)]
    zero_bwd = [r.path for r in rows if r.direction == "backward" and r.measured == 0]
    if zero_bwd and not zero_scales:
        more = " ..." if len(zero_bwd) > 5 else ""
        out["degenerate"].append(f"no gradient reaches {', '.join(zero_bwd[:5])}{more}")
    out["identity_branches"] = zero_scales
    return out


# ----------------------------------------------------------------------------------------


def grouped_paths(rows: list[ModelRow]) -> list[str]:
    """The rows' paths, the iterations of one site compacted: ``blocks/a[0-7, 9]``."""
    out: dict[str, list[Any]] = {}
    for r in rows:
        key = group_key(r.path) if r.iteration else r.path
        out.setdefault(key, []).append(r)
    return [
        key if not rs[0].iteration else f"{base_path(rs[0].path)}{describe_iterations(rs)}"
        for key, rs in out.items()
    ]


def describe_iterations(rows: list[ModelRow]) -> str:
    """``[0-7, 9]`` (one loop), or the first few suffixes (a scan in a scan)."""
    ixs = [tuple(r.iteration or ()) for r in rows]
    if all(len(ix) == 1 for ix in ixs):
        return f"[{ranges([ix[0] for ix in ixs])}]"
    more = ", ..." if len(ixs) > 4 else ""
    return "{" + ", ".join(suffix(ix) for ix in ixs[:4]) + more + "}"


Ix = tuple[int, ...]


def _at(stats: dict[str, Any], ix: Ix) -> dict[str, Any]:
    """One iteration's statistics (every array indexed after the seed axis)."""
    if not ix:
        return stats
    return {k: np.asarray(v)[(slice(None), *ix)] for k, v in stats.items()}


def _ix_of(found, layer: int, eqn: tuple[int, ...], ix: Ix) -> Ix:
    """The iteration of ``layer`` that ran last before iteration ``ix`` of ``eqn``: the
    same in the loops they share, the last in the others."""
    mine, theirs = found.loops_of(eqn), found.loops_of(found.layers[layer].eqn)
    k = 0
    while k < min(len(mine), len(theirs)) and mine[k] == theirs[k]:
        k += 1
    return (*ix[:k], *(lp.last for lp in theirs[k:]))


def _step_back(found, eqn: tuple[int, ...], ix: Ix) -> Ix | None:
    """The iteration that ran just before ``ix`` in the innermost loop (None: the first)."""
    loops = found.loops_of(eqn)
    if not loops or loops[-1].step(ix[-1]) == 0:
        return None
    return (*ix[:-1], loops[-1].slice_at(loops[-1].step(ix[-1]) - 1))


def _previous(found, site: LayerSite, ix: Ix) -> tuple[int, Ix] | None:
    """The layer whose output this layer's input comes from (the last to run before it),
    and its iteration: in this iteration, else (through the carry) the previous one, else
    before the loop."""
    loops = found.loops_of(site.eqn)
    n = len(loops)
    now = [d for d in site.x_deps if d >= 0]
    inner = [d for d in now if found.loops_of(found.layers[d].eqn)[:n] == loops]
    if inner:
        return max(inner), _ix_of(found, max(inner), site.eqn, ix)
    back = _step_back(found, site.eqn, ix)
    before = [earlier(d) for d in site.x_deps if d <= -2]
    before = [d for d in before if found.loops_of(found.layers[d].eqn)[:n] == loops]
    if back is not None and before:
        return max(before), _ix_of(found, max(before), site.eqn, back)
    return (max(now), _ix_of(found, max(now), site.eqn, ix)) if now else None


def _order(found, eqn: tuple[int, ...], ix: Ix) -> tuple[int, ...]:
    """Where a row goes: the eqn's path with, after each loop's eqn, when the iteration
    runs (rows in the order of the computation)."""
    out: list[int] = []
    j = 0
    for lp, i in zip(found.loops_of(eqn), ix, strict=True):
        out += [*eqn[j : len(lp.eqn)], lp.step(i)]
        j = len(lp.eqn)
    return (*out, *eqn[j:])


def _iterations(found, eqn: tuple[int, ...]):
    """Every iteration of an eqn (one empty tuple outside loops)."""
    return np.ndindex(*found.iterations(eqn))


def _count(found, eqn: tuple[int, ...]) -> int:
    """How many times an eqn runs: its rows, and its tests."""
    return math.prod(found.iterations(eqn))


def _tied(rs: list[ModelRow], loop, i: int) -> None:
    """A weight shared by the iterations of a loop that feeds itself: at every iteration but
    the first, the input depends on it; at every iteration but the last, so does the
    gradient reaching its output. Those rows are measured, not tested."""
    step = loop.step(i)
    for r in rs:
        if r.verdict in ("no_law", "measured"):
            continue
        if r.direction == "forward" and step > 0:
            why = "this input depends on them (the first iteration tests them)"
        elif r.direction == "backward" and step < loop.length - 1:
            why = "the gradient reaching this output passes through them again (the last iteration tests them)"
        else:
            continue
        r.note = f"weights shared by the iterations: {why}"
        r.verdict, r.ratio_low, r.ratio_high = "measured", None, None


def model_rows(
    found, paths, laws, st, tol, alpha, alpha_last, zero_scales, param_paths
) -> list[ModelRow]:
    """Every row of a check, in the order of the computation."""
    n_fwd = sum(
        _count(found, s.eqn)
        for s, (lw, _) in zip(found.layers, laws, strict=True)
        if lw is not None
    )
    n_bwd = sum(
        _count(found, s.eqn)
        for s, (lw, _) in zip(found.layers, laws, strict=True)
        if lw is not None and s.kind != "embed"
    )
    rows: list[ModelRow] = []
    order: list[tuple[tuple[int, ...], int, Any]] = []
    note = "no law: the initializer is unknown; name one with expect={glob: SPEC}"
    for site, path, (lw, name) in zip(found.layers, paths, laws, strict=True):
        for ix in _iterations(found, site.eqn):
            view = {
                d: {site.index: _at(st[d][site.index], ix)}
                for d in ("forward", "backward")
                if site.index in st[d]
            }
            rs = _layer_rows(
                site,
                path + suffix(ix),
                lw,
                name,
                view,
                tol,
                alpha,
                max(n_fwd, n_bwd, 1),
                alpha_last,
                note,
                zero_scales,
            )
            if site.tied and earlier(site.index) in site.x_deps:
                _tied(rs, found.loops_of(site.eqn)[-1], ix[-1])
            for r in rs:
                r.iteration = list(ix) or None
            prev = _previous(found, site, ix)
            if site.kind != "embed" and prev is not None:
                b = _between_row(found.layers[prev[0]], prev[1], site, ix, paths, st)
                b.iteration = list(ix) or None
                rs = [b, *rs]
            order.append((_order(found, site.eqn, ix), 0, rs))
    extra: list[tuple[Any, tuple[int, ...], Any]] = []
    for m in found.merges:
        extra += [
            (m.eqn, ix, lambda ix, m=m: _merge_row(m, st, paths, found, ix))
            for ix in _iterations(found, m.eqn)
        ]
    for n in found.norms:
        extra += [
            (n.out, ix, lambda ix, n=n: _norm_row(n, st, paths, param_paths, tol, ix))
            for ix in _iterations(found, n.out)
        ]
    n_drop = sum(_count(found, d.out) for d in found.dropouts)
    n_tests = max(n_fwd, n_bwd, 1) + n_drop
    for d in found.dropouts:
        extra += [
            (d.out, ix, lambda ix, d=d: _dropout_row(d, st, paths, tol, alpha / n_tests, ix))
            for ix in _iterations(found, d.out)
        ]
    for eqn, ix, make in extra:
        row = make(ix)
        row.iteration = list(ix) or None
        order.append((_order(found, eqn, ix), 1, [row]))
    for _, _, rs in sorted(order, key=lambda t: (t[0], t[1])):
        rows.extend(rs)
    return rows

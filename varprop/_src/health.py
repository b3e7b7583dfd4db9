"""Health and diagnosis of a checked MLP: degenerate networks, float32's limits, and what
the rows say about a wrong fan or gain (``docs/checker_statistics.md`` section 4)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from varprop._src.laws.layers import classify_factor
from varprop._src.laws.propagation import HEALTH_TOLERANCE, geometric_factor, hidden_stack


def first_nonfinite(f) -> int | None:
    bad = f.z_finite < 1  # (S, L)
    firsts = [int(np.argmax(row)) + 1 for row in bad if row.any()]
    return min(firsts) if firsts else None


def first_underflow(f, net) -> int | None:
    """The first layer whose output is exactly zero in some seed while its input and its
    weights are not (zero weights are degenerate, not an underflow)."""
    W = net.widths
    nonzero = np.array(
        [
            k.scheme.degenerate_reason((W[i], W[i + 1])) is None
            or k.scheme.degenerate_reason() == "constant weights (every unit identical)"
            for i, k in enumerate(net.kernel_inits)
        ]
    )
    bad = np.isneginf(f.z_lm2) & np.isfinite(f.x_lm2) & np.isneginf(f.b_lm2) & nonzero[None, :]
    firsts = [int(np.argmax(row)) + 1 for row in bad if row.any()]
    return min(firsts) if firsts else None


def health_report(rows, pred, L, net, st, first_nf, first_uf) -> dict[str, Any]:
    """Each direction's state from the measured per-layer factor (the law's where the
    measurement has none), next to the law's (``pred``, a :class:`~varprop.laws.Propagation`),
    both by :func:`~varprop.laws.classify_factor`; and why the network is degenerate."""
    out: dict[str, Any] = {}
    for d, pf in (("forward", pred.forward_factor), ("backward", pred.backward_factor)):
        meas = [r.measured for r in rows if r.direction == d][hidden_stack(L)]
        seq = np.array([m if m is not None else np.nan for m in meas], dtype=np.float64)
        if d == "backward":
            seq = seq[::-1]
        mf = geometric_factor(seq)
        sl = hidden_stack(L)
        steps = max(len(range(L)[sl]) - 1, 0)
        state = classify_factor(mf if math.isfinite(mf) else pf, HEALTH_TOLERANCE, steps=steps)
        out[d] = {
            "state": state,
            "predicted_state": classify_factor(pf, HEALTH_TOLERANCE, steps=steps),
            "predicted_factor": pf,
            "measured_factor": mf,
        }
    out["degenerate"] = degenerate_reasons(net, st, first_nf, first_uf)
    return out


def degenerate_reasons(net, st, first_nf, first_uf) -> list[str]:
    """Why the network cannot learn well whatever its law says (empty: healthy).

    Zero or constant weights (from the drawing scheme), identical units, activations or
    gradients that are exactly zero in every seed, values that leave float32.
    """
    f, b = st.forward, st.backward
    W, L = net.widths, net.depth
    out: list[str] = []
    for i, k in enumerate(net.kernel_inits):
        reason = k.scheme.degenerate_reason((W[i], W[i + 1]))
        if reason is not None:
            out.append(
                f"layer {i + 1}: {reason}: the units of the layer cannot become different "
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
            out.append(f"identical units: every unit of layer(s) {layer_ranges(same)} is the same")
        dead = [i + 1 for i in range(L - 1) if np.all(np.isneginf(f.h_lm2[finite, i]))]
        if dead:
            out.append(
                f"dead activations: every activation of layer(s) {layer_ranges(dead)} is exactly "
                "zero in every seed"
            )
        nograd = [i + 1 for i in range(L - 1) if np.all(np.isneginf(b.gz_lm2[finite, i]))]
        if nograd:
            out.append(
                f"dead gradients: dL/dz is exactly zero at layer(s) {layer_ranges(nograd)} in every "
                "seed; the weights below them cannot learn"
            )
    if first_nf is not None:
        out.append(f"values overflow float32 (become non-finite) from layer {first_nf}")
    if first_uf is not None:
        out.append(f"values underflow float32 (flush to exactly zero) at layer {first_uf}")
    return out


def diagnose(rows, net, expected, pred, first_nf, first_uf, st, tol) -> list[str]:
    out = []
    pred_nf, pred_uf = pred.first_nonfinite, pred.first_underflow
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
            f"layer(s) {layer_ranges(limited)} not tested: their values are at or beyond float32's "
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
    if net.norm_kind is not None and net.norm_kind.running_statistics and net.depth >= 2:
        from varprop._src.laws.normalization import eval_mode_gain

        q1 = float(np.exp(np.nanmean(st.forward.z_lm2[:, 0])))
        gain = float(eval_mode_gain(0, 1, net.epsilon))
        out.append(
            "BatchNorm was checked in training mode. In eval mode with its initial running "
            f"statistics (mean 0, var 1) it multiplies by {gain:.6f}: it does not normalize, "
            f"so layer 1's E[z^2] = {q1:.3g} would pass through unchanged until the running "
            "statistics have converged"
        )
    return out


def layer_ranges(xs: list[int]) -> str:
    return f"{xs[0]}-{xs[-1]}" if len(xs) > 1 and xs[-1] - xs[0] == len(xs) - 1 else str(xs)

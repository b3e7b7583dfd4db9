r"""Experiments 3-4: weights too small or too large, until float32 gives out.

Layer l maps x (width n_{l-1}) to z_l = x W_l and h_l = phi(z_l). At initialization the
second moments q_l = E[z_l^2] and g_l = E[(dL/dz_l)^2] follow the mean-field recurrence
(:func:`varprop.laws.propagate`, which gives every prediction here):

.. math::

    q_{l+1} = n_l\,\mathrm{Var}(w)\,E[\phi(z_l)^2], \qquad
    g_l = E[\phi'(z_l)^2]\; n_{l+1}\,\mathrm{Var}(w)\; g_{l+1}

so a square stack whose factor n Var(w) c_phi (c_phi = E[phi(z)^2]/q: 1 for tanh near 0,
1/2 for ReLU) is not 1 multiplies both by it at every layer, until the typical value
sqrt(q_l) leaves float32: below its smallest normal 1.2e-38 (flushed to 0) or above its
largest 3.4e38 (inf).

- ``small_random``: W ~ N(0, 0.01^2) in a deep tanh stack. Near 0 tanh is the identity
  (E[tanh(z)^2] / q -> 1, E[tanh'(z)^2] -> 1), so both passes shrink by the same factor
  :math:`q_{l+1}/q_l \to n\,\mathrm{Var}(w) = n\cdot 10^{-4}` and
  :math:`g_l/g_{l+1} \to n\,\mathrm{Var}(w)` per layer, until sqrt(q_l) drops below tiny and
  is flushed to 0: at layer ceil(2 ln(tiny) / ln(n Var(w))) forward, and as many layers below
  the output backward (LeCun, Bottou, Orr & Müller, "Efficient BackProp", 1998).
- ``standard_normal``: W ~ N(0, 1) multiplies E[x^2] by n (linear) or n/2 (ReLU) per layer,
  :math:`q_l = q_0 (n\,\mathrm{Var}(w)\,c_\phi)^l`, and the first layer whose typical value
  passes the largest float32 is
  :math:`L_{over} = \lceil (2\ln(3.4\cdot 10^{38}) - \ln q_0) / \ln(n\,\mathrm{Var}(w)\,c_\phi)\rceil`.
  Measured twice: repeated products x <- W x with fresh 512x512 standard-normal W (the
  fast.ai lesson 8 demonstration: a linear stack of width 512 on one example), and a
  width-512 ReLU MLP, whose first inf comes from the largest of its batch x width values,
  about sqrt(2 ln(B n) q_l) (the law's ``first_nonfinite``; full mode cross-checks with
  :func:`varprop.check`).

Measurements are the probe's (:mod:`varprop._src.experiments.measure`): N(0, 1) kernels
scaled per layer by the scheme's std (``weight_scales``), which draws exactly what the
initializer draws, ``std * N(0, 1)``; underflow is read from the probe's fractions of exact
zeros (``*_zero``), overflow from ``*_finite``. :func:`measure_square`,
:func:`factor_test` and :func:`per_layer_plot` serve :mod:`.fan_scaling` too.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import sympy as sp

from varprop import initializers as inits
from varprop import laws
from varprop._src.check import check
from varprop._src.experiments.base import (
    Claim,
    ExperimentResult,
    Figure,
    Row,
    RunConfig,
    experiment,
    figure_png,
    new_figure,
)
from varprop._src.experiments.measure import law, run_probe, stack, t_crit
from varprop._src.initializers import Initializer
from varprop._src.laws import symbols as S
from varprop._src.probe import ProbeStats

TINY2, MAX2 = laws.FLOAT32_TINY**2, laws.FLOAT32_MAX**2
Q_RATIO, G_RATIO = sp.Symbol("q_{l+1}/q_l"), sp.Symbol("g_l/g_{l+1}")


@functools.cache
def _square_net(n: int, depth: int, act: str):
    return stack(
        width=n, depth=depth, activation=act, kernel_init=inits.normal(1.0), output_activation=True
    )


def measure_square(
    cfg: RunConfig, tag: int, init: Initializer, act: str, size: tuple[int, int, int, int]
) -> tuple[ProbeStats, laws.Propagation]:
    """A square stack (``size`` = width, depth, batch, seeds) whose loss sees phi(z_L), no
    bias, x ~ N(0, 1): the probe's statistics of ``init``'s draws (N(0, 1) kernels scaled by
    its std: one compiled probe per width, depth and activation), and its law."""
    n, depth, batch, seeds = size
    scales = np.full(depth, init.scheme.std((n, n)))
    net = _square_net(n, depth, act)
    st = run_probe(net, seeds=seeds, seed=cfg.seed, batch=batch, tag=tag, weight_scales=scales)
    return st, laws.propagate(net.widths, act, init.scheme, output_activation=True, batch=batch)


def factor_test(lm2, first: int, last: int, predicted: float, crit: float):
    """Per-layer factor between layers ``first`` and ``last`` (0-based, inclusive) of ``(S, L)``
    log second moments, from each seed's ``log(q_last / q_first) / (last - first)``: the
    geometric mean, the standard error of its log across seeds, and whether its log lies
    within ``crit`` standard errors of ``log(predicted)``."""
    per_seed = (lm2[:, last] - lm2[:, first]) / (last - first)
    m, se = per_seed.mean(), float(per_seed.std(ddof=1) / math.sqrt(per_seed.size))
    return float(np.exp(m)), se, bool(abs(m - math.log(predicted)) <= crit * se)


def _first(mask) -> np.ndarray:
    """Per row, the first (1-based) index where ``mask`` holds; 0 when none."""
    return np.where(mask.any(-1), mask.argmax(-1) + 1, 0)


def per_layer_plot(ax, layers, pred, meas_seeds, label, color, marker="o"):
    """Predicted line and measured markers (mean of log over seeds) of a per-layer second
    moment, on a log axis; non-finite or zero measurements are left out."""
    ax.plot(layers, pred, color=color, lw=1.5, label=f"{label}: law")
    with np.errstate(invalid="ignore"):
        m = np.exp(np.mean(np.asarray(meas_seeds, np.float64), axis=0))
    ok = np.isfinite(m) & (m > 0)
    ax.plot(layers[ok], m[ok], marker, color=color, ms=4, mfc="none", label=f"{label}: measured")
    ax.set_yscale("log")


def label_axes(ax, xlabel: str, ylabel: str, title: str, **legend) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(**{"fontsize": 7, **legend})


@experiment("small_random", "Small random weights N(0, 0.01²): signals vanish layer by layer", 3)
def run_small_random(cfg: RunConfig) -> ExperimentResult:
    """N(0, 0.01^2) weights in a deep tanh stack: the per-layer factors of both passes and
    the layers where float32 underflows, against the law (see the module docstring)."""
    init = inits.normal(0.01)
    n, depth, _, seeds = size = (128, 46, 32, 4) if cfg.quick else (512, 66, 64, 4)
    st, prop = measure_square(cfg, 3, init, "tanh", size)
    z, gz, q_pred, g_pred = st.forward.z_lm2, st.backward.gz_lm2, prop.forward, prop.backward
    factor_expr = laws.layer_factors(init.scheme, "linear").forward
    factor = float(factor_expr.subs(S.fan_in, n))
    # The law's typical value below tiny: the first such layer forward, the highest backward.
    pred_fwd = int(_first(q_pred < TINY2))
    pred_bwd = depth + 1 - int(_first(g_pred[::-1] < TINY2))
    meas_fwd = _first(st.forward.z_zero > 0.5)  # the median |z| has underflowed
    meas_bwd = depth + 1 - _first(st.backward.gz_zero[:, ::-1] > 0.5)
    # The factor is read where tanh is linear to 0.1 % and nothing has underflowed yet.
    lo_f, hi_f = 3, min(pred_fwd, depth) - 4
    lo_b, hi_b = max(pred_bwd, 1) + 3, depth - 3
    crit = t_crit(seeds, 2)
    pf_fwd = float(np.exp(np.log(q_pred[hi_f - 1] / q_pred[lo_f - 1]) / (hi_f - lo_f)))
    pf_bwd = float(np.exp(np.log(g_pred[lo_b - 1] / g_pred[hi_b - 1]) / (hi_b - lo_b)))
    f_fwd, se_fwd, ok_f = factor_test(z, lo_f - 1, hi_f - 1, pf_fwd, crit)
    f_bwd, se_bwd, ok_b = factor_test(gz[:, ::-1], depth - hi_b, depth - lo_b, pf_bwd, crit)
    under_ok = bool(np.all(np.abs(np.r_[meas_fwd - pred_fwd, meas_bwd - pred_bwd]) <= 1))
    under = sp.ceiling(2 * sp.log(sp.Symbol("tiny")) / sp.log(factor_expr))
    laws_ = [
        law("forward law of the scheme", laws.forward_law(init.scheme)),
        law("backward law of the scheme", laws.backward_law(init.scheme)),
        law("per-layer factor where tanh is linear", sp.Eq(Q_RATIO, factor_expr)),
        law("float32 underflow layer (sqrt(q_L) < tiny)", sp.Eq(sp.Symbol("L_{under}"), under)),
    ]
    meas_txt = ", ".join(map(str, meas_fwd)), ", ".join(map(str, meas_bwd))
    ci_f, ci_b = (f"± {crit * se:.2g} in log" for se in (se_fwd, se_bwd))
    ci_f += f" (t-interval over {seeds} seeds)"
    below = f"{depth - pred_bwd} layers below the output"
    rows = [
        Row("per-layer factor n Var(w) (law)", factor, "-", f"n = {n}"),
        Row(f"forward factor q_(l+1)/q_l, layers {lo_f}-{hi_f}", pf_fwd, f_fwd, ci_f),
        Row(f"backward factor g_l/g_(l+1), layers {lo_b}-{hi_b}", pf_bwd, f_bwd, ci_b),
        Row("first layer whose z underflows (median |z| = 0)", pred_fwd, meas_txt[0], "per seed"),
        Row("highest layer whose dL/dz underflows", pred_bwd, meas_txt[1], below),
    ]
    claims = [
        Claim(
            f"{what} shrink geometrically by n Var(w) per layer{where}.",
            ok,
            f"measured {f:.4f} vs predicted {pf:.4f} (|log ratio| "
            f"{abs(math.log(f / pf)):.3f} <= {crit * se:.3f}{how}).",
        )
        for what, where, ok, f, pf, se, how in (
            ("Activations", "", ok_f, f_fwd, pf_fwd, se_fwd, ", t-interval"),
            ("Gradients", " on the way back", ok_b, f_bwd, pf_bwd, se_bwd, ""),
        )
    ]
    claims.append(
        Claim(
            "The layer where float32 underflows is predicted by the law (± 1).",
            under_ok,
            f"forward: predicted {pred_fwd}, measured {sorted(set(meas_fwd.tolist()))}; "
            f"backward: predicted {pred_bwd}, measured {sorted(set(meas_bwd.tolist()))}.",
        )
    )
    layers = np.arange(1, depth + 1)
    fig, axes = new_figure(width=5.6, height=3.8)
    ax = axes[0, 0]
    per_layer_plot(ax, layers, q_pred, z, "E[z²] forward", "C0")
    per_layer_plot(ax, layers, g_pred, gz, "E[(dL/dz)²] backward", "C1", "s")
    ax.axhline(TINY2, color="k", ls="--", lw=1, label="tiny² (float32 underflow)")
    for d, col, pred in (("forward", "C0", pred_fwd), ("backward", "C1", pred_bwd)):
        ax.axvline(pred, color=col, ls=":", lw=1, label=f"predicted {d} underflow: {pred}")
    title = f"N(0, 0.01²) weights, tanh, width {n}"
    label_axes(ax, "layer l", "second moment", title, loc="upper left", bbox_to_anchor=(1.01, 1))
    caption = (
        f"E[z²] (forward, blue) and E[(dL/dz)²] (backward, orange) per layer of a tanh "
        f"stack of width {n} with N(0, 0.01²) weights: lines are the law (factor "
        f"{factor:.4f} per layer), markers the measurement (geometric mean over {seeds} "
        "seeds). Both fall geometrically until float32 flushes them to 0 at the dotted "
        "layers; markers stop where the measured values are 0."
    )
    return ExperimentResult(
        "small_random",
        "Small random weights N(0, 0.01²): signals vanish layer by layer",
        f"With N(0, 0.01²) weights in a width-{n} tanh stack, activations and gradients "
        f"shrink by {f_fwd:.4f} and {f_bwd:.4f} per layer (law: {factor:.4f}) and float32 "
        f"underflows at layer {int(np.max(meas_fwd))} forward (law: {pred_fwd}).",
        laws_,
        rows,
        claims,
        [Figure("small_random_layers", caption, figure_png(fig))],
        notes=[
            "Measured underflow comes up to one layer before the law's sqrt(q_L) < tiny: "
            "the CPU flushes each product x_i w_ij (about sqrt(q_L / n)) to zero before the "
            "dot product sums them, and the median |z| is 0.67 sqrt(q_L)."
        ],
        data={
            "width": np.int64(n),
            "z_log_m2": z,
            "z_zero_frac": st.forward.z_zero,
            "gz_log_m2": gz,
            "gz_zero_frac": st.backward.gz_zero,
            "factor_layers": np.array([[lo_f, hi_f], [lo_b, hi_b]]),
            "underflow_fwd": meas_fwd,
            "underflow_bwd": meas_bwd,
        },
    )


@experiment("standard_normal", "Standard normal weights N(0, 1): activations explode", 4)
def run_standard_normal(cfg: RunConfig) -> ExperimentResult:
    """N(0, 1) weights: the step of 512x512 matrix products and the layer of a ReLU MLP where
    float32 overflows, against the law (see the module docstring)."""
    init = inits.normal(1.0)
    n = 512
    steps, trials = 32, (2 if cfg.quick else 16)
    mp_net = stack(width=n, depth=steps, activation="linear", kernel_init=init)
    mp = run_probe(mp_net, seeds=trials, seed=cfg.seed, batch=1, tag=4).forward
    mp_first, mp_med = _first(mp.z_finite < 1), int(np.median(_first(mp.z_finite < 1)))
    mp_law = laws.propagate(mp_net.widths, "linear", init.scheme, batch=1)
    lf = {a: laws.layer_factors(init.scheme, a).forward for a in ("linear", "relu")}
    mp_factor, relu_factor = (float(lf[a].subs(S.fan_in, n)) for a in ("linear", "relu"))
    depth, batch, seeds = 36, (32 if cfg.quick else 64), (2 if cfg.quick else 4)
    st, prop = measure_square(cfg, 41, init, "relu", (n, depth, batch, seeds))
    mlp_q_pred = prop.forward  # q_1 = n E[x^2] (the input is not rectified), then x n/2
    mp_pred, mlp_pred = mp_law.first_nonfinite, prop.first_nonfinite
    assert mp_pred is not None and mlp_pred is not None  # factors 512 and 256 overflow
    mlp_first = _first(st.forward.z_finite < 1)
    mlp_meas = int(mlp_first.min()) if (mlp_first > 0).all() else None
    mlp_q_meas = np.where(st.forward.z_finite > 0, st.forward.z_lm2, np.nan)
    cross = None
    if not cfg.quick:
        cross = check(prop.widths, "relu", init, batch=128, seeds=4, max_seeds=4, seed=cfg.seed)
    mp_ok = bool(np.all((mp_first > 0) & (np.abs(mp_first - mp_pred) <= 1)))
    mlp_ok = bool(np.all((mlp_first > 0) & (np.abs(mlp_first - mlp_pred) <= 1)))
    if cross is not None:
        cf, cp = cross.first_nonfinite_layer, cross.predicted_nonfinite_layer
        mlp_ok = mlp_ok and cf is not None and cp is not None and abs(cf - cp) <= 1
    over = (2 * sp.log(sp.Symbol("max_{f32}")) - sp.log(sp.Symbol("q_0"))) / sp.log(
        sp.Symbol("n") * S.weight_variance * sp.Symbol("c_phi")
    )
    over_eq = sp.Eq(sp.Symbol("L_{over}"), sp.ceiling(over))
    laws_ = [
        law("forward law of N(0, 1)", laws.forward_law(init.scheme)),
        law("per-layer factor, linear (matrix products)", sp.Eq(Q_RATIO, lf["linear"])),
        law("per-layer factor, ReLU", sp.Eq(Q_RATIO, lf["relu"])),
        law("first overflowing layer (sqrt(q_L) > float32 max)", over_eq),
    ]
    mp_set, mlp_set = sorted(set(mp_first.tolist())), sorted(set(mlp_first.tolist()))
    mp_txt = ", ".join(map(str, mp_set))
    rows = [
        Row("matrix products: factor per step n Var(w)", mp_factor, "-", f"n = {n}"),
        Row("matrix products: first step with inf/NaN", mp_pred, mp_txt, f"{trials} trials"),
        Row("ReLU MLP: factor per layer n Var(w)/2", relu_factor, "-", f"width {n}"),
        Row(
            "ReLU MLP: first layer with inf/NaN",
            mlp_pred,
            ", ".join(map(str, mlp_set)),
            f"{seeds} seeds; typical-value law: {int(_first(mlp_q_pred > MAX2))}, the "
            "prediction adds the batch maximum",
        ),
    ]
    cross_note = "."
    if cross is not None:
        cp, cf = cross.predicted_nonfinite_layer, cross.first_nonfinite_layer
        label = "ReLU MLP: first layer with inf/NaN (varprop.check, 4 seeds)"
        rows.append(Row(label, cp, cf, f"check verdict: {cross.verdict}"))
        cross_note = f"; varprop.check: {cf} vs predicted {cp}."
    claims = [
        Claim(
            "Repeated products with standard-normal 512x512 matrices overflow float32 at the "
            "step the law predicts (± 1).",
            mp_ok,
            f"predicted step {mp_pred}; measured in {trials} trials: {mp_set}.",
        ),
        Claim(
            "A width-512 ReLU MLP with N(0, 1) weights produces inf/NaN at the layer the law "
            "predicts (± 1).",
            mlp_ok,
            f"first non-finite layer per seed {mlp_set}, predicted {mlp_pred}{cross_note}",
        ),
    ]
    fig, axes = new_figure(ncols=2, width=4.6, height=3.6)
    mp_meas = np.where(mp.z_finite > 0, mp.z_lm2, np.nan)
    per_layer_plot(axes[0, 0], np.arange(1, steps + 1), mp_law.forward, mp_meas, "E[x²]", "C0")
    per_layer_plot(axes[0, 1], np.arange(1, depth + 1), mlp_q_pred, mlp_q_meas, "E[z²]", "C1")
    for ax, pred, p_label, meas, m_label in (
        (axes[0, 0], mp_pred, f"overflow: step {mp_pred}", mp_med, f"inf/NaN: step {mp_med}"),
        (axes[0, 1], mlp_pred, f"inf/NaN: {mlp_pred}", mlp_meas, f"inf/NaN: {mlp_meas}"),
    ):
        ax.axhline(MAX2, color="k", ls="--", lw=1, label="float32 max²")
        ax.axvline(pred, color="C3", ls=":", lw=1.5, label=f"predicted {p_label}")
        if meas is not None:
            ax.axvline(meas, color="C2", ls="--", lw=1, label=f"measured {m_label}")
    label_axes(
        axes[0, 0], "step t (x ← W x)", "E[x²]", "512×512 N(0, 1) matrix products", loc="upper left"
    )
    label_axes(
        axes[0, 1], "layer l", "E[z²]", f"ReLU MLP, width {n}, N(0, 1) weights", loc="upper left"
    )
    caption = (
        "Left: E[x²] after t products with fresh 512×512 standard-normal matrices (markers: "
        f"geometric mean over {trials} trials; line: the law, ×{mp_factor:.0f} per step); "
        "right: E[z²] per layer of a width-512 ReLU MLP with N(0, 1) weights (line: the law, "
        f"×{relu_factor:.0f} per layer; markers: geometric mean over {seeds} seeds). Markers "
        "stop where the values overflow float32; the dotted line is the predicted first "
        "inf/NaN."
    )
    return ExperimentResult(
        "standard_normal",
        "Standard normal weights N(0, 1): activations explode",
        f"With N(0, 1) weights values grow ×{mp_factor:.0f} per 512×512 product and "
        f"×{relu_factor:.0f} per ReLU layer; float32 overflows at step "
        f"{mp_med} (law {mp_pred}) and layer {mlp_meas} (law {mlp_pred}).",
        laws_,
        rows,
        claims,
        [Figure("standard_normal_overflow", caption, figure_png(fig))],
        data={
            "mp_log_m2": mp.z_lm2,
            "mp_finite": mp.z_finite,
            "mp_first_nonfinite": mp_first,
            "mlp_q_measured": mlp_q_meas,
            "mlp_first_nonfinite": mlp_first,
        },
    )

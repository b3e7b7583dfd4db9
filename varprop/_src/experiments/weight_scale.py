r"""Experiments 3-6: the weight variance, too small, too large, or scaled by the fans.

Layer l maps x (width n_{l-1}) to z_l = x W_l and h_l = phi(z_l). At initialization the
second moments q_l = E[z_l^2] and g_l = E[(dL/dz_l)^2] follow the mean-field recurrence
(:func:`varprop.laws.propagate`, which gives every prediction here):

.. math::

    q_{l+1} = n_l\,\mathrm{Var}(w_{l+1})\,E[\phi(z_l)^2], \qquad
    g_l = E[\phi'(z_l)^2]\; n_{l+1}\,\mathrm{Var}(w_{l+1})\; g_{l+1}

(n_l = n_in of layer l+1, n_{l+1} its n_out). A square stack whose factor n Var(w) c_phi
(c_phi = E[phi(z)^2]/q: 1 for tanh near 0, 1/2 for ReLU, whose E[phi'(z)^2] is 1/2 too) is
not 1 multiplies both by it at every layer, until the typical value sqrt(q_l) leaves
float32: below its smallest normal 1.2e-38 (flushed to 0) or above its largest 3.4e38 (inf).

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
- ``xavier``: Var(w) = 2/(n_in + n_out) (Glorot & Bengio, "Understanding the difficulty of
  training deep feedforward neural networks", AISTATS 2010), i.e. n Var(w) = 1 in a square
  stack. For tanh the mean-field map :math:`q_{l+1} = n\,\mathrm{Var}(w)\,E[\tanh(\sqrt{q_l}\,z)^2]`
  (Poole et al., "Exponential expressivity in deep neural networks through transient chaos",
  NeurIPS 2016) has slope 1 at its fixed point q* = 0: q_l decays only like 1/l (no geometric
  collapse or explosion), and the per-layer factors of both passes tend to 1. For ReLU the
  same scheme halves E[z^2] and E[(dL/dz)^2] at every layer.
- ``he``: Var(w) = 2/n (He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", ICCV 2015):
  with ReLU :math:`q_{l+1}/q_l = \tfrac12 n_{in}\mathrm{Var}(w)` and
  :math:`g_l/g_{l+1} = \tfrac12 n_{out}\mathrm{Var}(w)`, so 2/n_in (fan_in) preserves the
  forward pass and 2/n_out (fan_out) the backward pass; square layers both. In a pyramid
  each mode changes the other direction by n_in/n_out per layer. The "seed Layer" rule, a
  textbook numpy ``Layer(M, N)`` (weight of shape (M, N), output ``W x`` of size M) with
  ``std = sqrt(2 / M)``, sets the std by the number of *outputs*: it is fan_out, so it
  preserves gradients, not activations.

Measurements are the probe's statistics (:func:`~varprop._src.experiments.measure.probe_fields`:
a program of only the fields read, without the backward pass when none is a gradient's) of
N(0, 1) kernels scaled per layer by the scheme's std (``weight_scales``), which draws exactly
what the initializer draws, ``std * N(0, 1)``; so one compiled program serves every scheme of
a network (the square ReLU stack of ``xavier`` and ``he`` is one, and so are the three He
rules of the pyramid, on the same draws). Underflow is read from the fractions of exact zeros
(``*_zero``), overflow from ``*_finite``.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import sympy as sp

from varprop import initializers as inits
from varprop import laws
from varprop._src.check import check
from varprop._src.experiments import base
from varprop._src.experiments.base import Claim, Row
from varprop._src.experiments.degenerate_init import result
from varprop._src.experiments.measure import law, probe_fields, seed_mean, stack, t_crit
from varprop._src.initializers import Initializer
from varprop._src.laws import symbols as S

TINY2, MAX2 = laws.FLOAT32_TINY**2, laws.FLOAT32_MAX**2
Q_RATIO, G_RATIO, Q_NEXT = map(sp.Symbol, ("q_{l+1}/q_l", "g_l/g_{l+1}", "q_{l+1}"))
L_OVER = sp.Symbol("L_{over}")
#: Square stacks of xavier and he: width, depth, batch, seeds.
_FAN_SIZE = {True: (128, 16, 32, 8), False: (256, 24, 64, 16)}
#: The probe's statistics the experiments read (a program computes only those it is asked).
LM2, FINITE = ("z_lm2", "gz_lm2"), ("z_lm2", "z_finite")


@functools.cache
def _net(widths: tuple[int, ...], act: str, output_activation: bool = True):
    """The network of N(0, 1) kernels every scheme's std scales (one compiled probe each)."""
    one = inits.normal(1.0)
    return stack(width=widths, activation=act, kernel_init=one, output_activation=output_activation)


def measure_square(cfg, tag: int, init: Initializer, act: str, size: tuple, fields=LM2):
    """A square stack (``size`` = width, depth, batch, seeds) whose loss sees phi(z_L), no
    bias, x ~ N(0, 1): the probe's ``fields`` of ``init``'s draws, and its law."""
    n, depth, batch, seeds = size
    net, scales = _net((n,) * (depth + 1), act), np.full(depth, init.scheme.std((n, n)))
    kw = {"seeds": seeds, "seed": cfg.seed, "batch": batch, "tag": tag, "weight_scales": scales}
    return probe_fields(net, fields, **kw), laws.propagate(
        net.widths, act, init.scheme, output_activation=True, batch=batch
    )


def factor_test(lm2, first: int, last: int, predicted: float, crit: float):
    """Per-layer factor from layer ``first`` to ``last`` (0-based) of ``(S, L)`` log moments:
    its geometric mean over seeds, the s.e. of its log, and whether within ``crit`` s.e."""
    per_seed = (lm2[:, last] - lm2[:, first]) / (last - first)
    m, se = per_seed.mean(), float(per_seed.std(ddof=1) / math.sqrt(per_seed.size))
    return float(np.exp(m)), se, bool(abs(m - math.log(predicted)) <= crit * se)


def _profile_ok(meas, pred) -> tuple[bool, float, float]:
    """Every layer's seed mean of log within a Bonferroni t-interval of log(pred); the worst."""
    mean, se = seed_mean(meas)
    tol, dev = t_crit(*meas.shape) * se, np.abs(mean - np.log(pred))
    worst = int(np.argmax(dev / tol))
    return bool(np.all(dev <= tol)), float(dev[worst]), float(tol[worst])


def _first(mask) -> np.ndarray:
    """Per row, the first (1-based) index where ``mask`` holds; 0 when none."""
    return np.where(mask.any(-1), mask.argmax(-1) + 1, 0)


def per_layer_plot(ax, pred, meas_seeds, label, color, marker="o"):
    """Law (line) and measurement (markers, geometric mean over seeds, zeros left out)."""
    x = np.arange(1, len(pred) + 1)
    ax.plot(x, pred, color=color, lw=1.5, label=f"{label}: law")
    with np.errstate(invalid="ignore"):
        m = np.exp(np.mean(np.asarray(meas_seeds, np.float64), axis=0))
    ok = np.isfinite(m) & (m > 0)
    ax.plot(x[ok], m[ok], marker, color=color, ms=4, mfc="none", label=f"{label}: measured")
    ax.set_yscale("log")


def _txt(values) -> str:
    return ", ".join(map(str, values))


def _ci(crit: float, se: float) -> str:
    return f"± {crit * se:.2g} in log"


def label_axes(ax, xlabel: str, ylabel: str, title: str, **legend) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(**{"fontsize": 7, **legend})


@base.experiment(
    "small_random", "Small random weights N(0, 0.01²): signals vanish layer by layer", 3
)
def run_small_random(cfg: base.RunConfig) -> base.ExperimentResult:
    """N(0, 0.01^2) weights in a deep tanh stack (module docstring)."""
    init = inits.normal(0.01)
    n, depth, _, seeds = size = (128, 46, 32, 4) if cfg.quick else (512, 66, 64, 4)
    st, prop = measure_square(cfg, 3, init, "tanh", size, (*LM2, "z_zero", "gz_zero"))
    z, gz, q_pred, g_pred = st["z_lm2"], st["gz_lm2"], prop.forward, prop.backward
    factor_expr = laws.layer_factors(init.scheme, "linear").forward
    factor, crit = float(factor_expr.subs(S.fan_in, n)), t_crit(seeds, 2)
    # The law's typical value below tiny: the first such layer forward, the highest backward;
    # measured: the median |z| has underflowed.
    pred_fwd, pred_bwd = int(_first(q_pred < TINY2)), depth + 1 - int(_first(g_pred[::-1] < TINY2))
    meas_fwd = _first(st["z_zero"] > 0.5)
    meas_bwd = depth + 1 - _first(st["gz_zero"][:, ::-1] > 0.5)
    # The factor is read where tanh is linear to 0.1 % and nothing has underflowed yet.
    (lo_f, hi_f), (lo_b, hi_b) = (3, min(pred_fwd, depth) - 4), (max(pred_bwd, 1) + 3, depth - 3)
    pf_fwd = float(np.exp(np.log(q_pred[hi_f - 1] / q_pred[lo_f - 1]) / (hi_f - lo_f)))
    pf_bwd = float(np.exp(np.log(g_pred[lo_b - 1] / g_pred[hi_b - 1]) / (hi_b - lo_b)))
    f_fwd, se_fwd, ok_f = factor_test(z, lo_f - 1, hi_f - 1, pf_fwd, crit)
    f_bwd, se_bwd, ok_b = factor_test(gz[:, ::-1], depth - hi_b, depth - lo_b, pf_bwd, crit)
    under = sp.ceiling(2 * sp.log(sp.Symbol("tiny")) / sp.log(factor_expr))
    laws_ = [
        law("forward law of the scheme", laws.forward_law(init.scheme)),
        law("backward law of the scheme", laws.backward_law(init.scheme)),
        law("per-layer factor where tanh is linear", sp.Eq(Q_RATIO, factor_expr)),
        law("float32 underflow layer (sqrt(q_L) < tiny)", sp.Eq(sp.Symbol("L_{under}"), under)),
    ]
    ci_f = f"{_ci(crit, se_fwd)} (t-interval over {seeds} seeds)"
    below = f"{depth - pred_bwd} layers below the output"
    m_f, m_b = (sorted(set(m.tolist())) for m in (meas_fwd, meas_bwd))
    under_ok = bool(np.all(np.abs(np.r_[meas_fwd - pred_fwd, meas_bwd - pred_bwd]) <= 1))
    # fmt: off
    rows = [Row(*r) for r in [
        ("per-layer factor n Var(w) (law)", factor, "-", f"n = {n}"),
        (f"forward factor q_(l+1)/q_l, layers {lo_f}-{hi_f}", pf_fwd, f_fwd, ci_f),
        (f"backward factor g_l/g_(l+1), layers {lo_b}-{hi_b}", pf_bwd, f_bwd, _ci(crit, se_bwd)),
        ("first layer whose z underflows (median |z| = 0)", pred_fwd, _txt(meas_fwd), "per seed"),
        ("highest layer whose dL/dz underflows", pred_bwd, _txt(meas_bwd), below),
    ]]
    claims = [
        Claim(f"{what} shrink geometrically by n Var(w) per layer{where}.", ok,
              f"measured {f:.4f} vs predicted {pf:.4f} (|log ratio| "
              f"{abs(math.log(f / pf)):.3f} <= {crit * se:.3f}{how}).")
        for what, where, ok, f, pf, se, how in (
            ("Activations", "", ok_f, f_fwd, pf_fwd, se_fwd, ", t-interval"),
            ("Gradients", " on the way back", ok_b, f_bwd, pf_bwd, se_bwd, ""))
    ] + [Claim("The layer where float32 underflows is predicted by the law (± 1).", under_ok,
               f"forward: predicted {pred_fwd}, measured {m_f}; "
               f"backward: predicted {pred_bwd}, measured {m_b}.")]
    # fmt: on
    fig, axes = base.new_figure(width=5.6, height=3.8)
    ax = axes[0, 0]
    per_layer_plot(ax, q_pred, z, "E[z²] forward", "C0")
    per_layer_plot(ax, g_pred, gz, "E[(dL/dz)²] backward", "C1", "s")
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
    summary = (
        f"With N(0, 0.01²) weights in a width-{n} tanh stack, activations and gradients "
        f"shrink by {f_fwd:.4f} and {f_bwd:.4f} per layer (law: {factor:.4f}) and float32 "
        f"underflows at layer {int(np.max(meas_fwd))} forward (law: {pred_fwd})."
    )
    note = (
        "Measured underflow comes up to one layer before the law's sqrt(q_L) < tiny: "
        "the CPU flushes each product x_i w_ij (about sqrt(q_L / n)) to zero before the "
        "dot product sums them, and the median |z| is 0.67 sqrt(q_L)."
    )
    data = {"width": np.int64(n), "z_log_m2": z, "gz_log_m2": gz, "underflow_fwd": meas_fwd}
    data |= {"factor_layers": np.array([[lo_f, hi_f], [lo_b, hi_b]]), "underflow_bwd": meas_bwd}
    figure = ("layers", caption, fig)
    return result("small_random", summary, laws_, rows, claims, figure, notes=[note], data=data)


@base.experiment("standard_normal", "Standard normal weights N(0, 1): activations explode", 4)
def run_standard_normal(cfg: base.RunConfig) -> base.ExperimentResult:
    """N(0, 1) weights: 512x512 matrix products and a ReLU MLP (module docstring)."""
    init, n, steps, depth = inits.normal(1.0), 512, 32, 36
    trials, batch, seeds = (2, 32, 2) if cfg.quick else (16, 64, 4)
    mp_net = _net((n,) * (steps + 1), "linear", False)
    mp = probe_fields(
        mp_net, FINITE, seeds=trials, seed=cfg.seed, batch=1, tag=4, weight_scales=[1.0] * steps
    )
    st, prop = measure_square(cfg, 41, init, "relu", (n, depth, batch, seeds), FINITE)
    mp_law = laws.propagate(mp_net.widths, "linear", init.scheme, batch=1)
    lf = {a: laws.layer_factors(init.scheme, a).forward for a in ("linear", "relu")}
    mp_factor, relu_factor = (float(lf[a].subs(S.fan_in, n)) for a in ("linear", "relu"))
    mp_pred, mlp_pred = mp_law.first_nonfinite, prop.first_nonfinite
    assert mp_pred is not None and mlp_pred is not None  # factors 512 and 256 overflow
    mp_first, mlp_first = _first(mp["z_finite"] < 1), _first(st["z_finite"] < 1)
    mp_med = int(np.median(mp_first))
    mlp_meas = int(mlp_first.min()) if (mlp_first > 0).all() else None
    mp_meas, mlp_q_meas = (np.where(f["z_finite"] > 0, f["z_lm2"], np.nan) for f in (mp, st))
    mp_ok = bool(np.all((mp_first > 0) & (np.abs(mp_first - mp_pred) <= 1)))
    mlp_ok = bool(np.all((mlp_first > 0) & (np.abs(mlp_first - mlp_pred) <= 1)))
    mp_set, mlp_set = sorted(set(mp_first.tolist())), sorted(set(mlp_first.tolist()))
    c_phi = sp.Symbol("n") * S.weight_variance * sp.Symbol("c_phi")
    over = (2 * sp.log(sp.Symbol("max_{f32}")) - sp.log(sp.Symbol("q_0"))) / sp.log(c_phi)
    laws_ = [
        law("forward law of N(0, 1)", laws.forward_law(init.scheme)),
        law("per-layer factor, linear (matrix products)", sp.Eq(Q_RATIO, lf["linear"])),
        law("per-layer factor, ReLU", sp.Eq(Q_RATIO, lf["relu"])),
        law("first overflowing layer (sqrt(q_L) > float32 max)", sp.Eq(L_OVER, sp.ceiling(over))),
    ]
    typical = int(_first(prop.forward > MAX2))
    typical = f"{seeds} seeds; typical-value law: {typical}, the prediction adds the batch maximum"
    rows = [
        Row("matrix products: factor per step n Var(w)", mp_factor, "-", f"n = {n}"),
        Row("matrix products: first step with inf/NaN", mp_pred, _txt(mp_set), f"{trials} trials"),
        Row("ReLU MLP: factor per layer n Var(w)/2", relu_factor, "-", f"width {n}"),
        Row("ReLU MLP: first layer with inf/NaN", mlp_pred, _txt(mlp_set), typical),
    ]
    cross_note = "."
    if not cfg.quick:
        cross = check(prop.widths, "relu", init, batch=128, seeds=4, max_seeds=4, seed=cfg.seed)
        cp, cf = cross.predicted_nonfinite_layer, cross.first_nonfinite_layer
        mlp_ok = mlp_ok and cf is not None and cp is not None and abs(cf - cp) <= 1
        label = "ReLU MLP: first layer with inf/NaN (varprop.check, 4 seeds)"
        rows.append(Row(label, cp, cf, f"check verdict: {cross.verdict}"))
        cross_note = f"; varprop.check: {cf} vs predicted {cp}."
    # fmt: off
    claims = [Claim(*c) for c in [
        ("Repeated products with standard-normal 512x512 matrices overflow float32 at the "
         "step the law predicts (± 1).", mp_ok,
         f"predicted step {mp_pred}; measured in {trials} trials: {mp_set}."),
        ("A width-512 ReLU MLP with N(0, 1) weights produces inf/NaN at the layer the law "
         "predicts (± 1).", mlp_ok,
         f"first non-finite layer per seed {mlp_set}, predicted {mlp_pred}{cross_note}"),
    ]]
    # fmt: on
    fig, axes = base.new_figure(ncols=2, width=4.6, height=3.6)
    panels = (
        (mp_law.forward, mp_meas, "E[x²]", "step t (x ← W x)", mp_pred, mp_med, "step "),
        (prop.forward, mlp_q_meas, "E[z²]", "layer l", mlp_pred, mlp_meas, ""),
    )
    titles = ("512×512 N(0, 1) matrix products", f"ReLU MLP, width {n}, N(0, 1) weights")
    for i, (ax, (pred, meas, y, x, p, m, unit)) in enumerate(zip(axes[0], panels, strict=True)):
        per_layer_plot(ax, pred, meas, y, f"C{i}")
        ax.axhline(MAX2, color="k", ls="--", lw=1, label="float32 max²")
        p_label = f"overflow: step {p}" if unit else f"inf/NaN: {p}"
        ax.axvline(p, color="C3", ls=":", lw=1.5, label=f"predicted {p_label}")
        if m is not None:
            ax.axvline(m, color="C2", ls="--", lw=1, label=f"measured inf/NaN: {unit}{m}")
        label_axes(ax, x, y, titles[i], loc="upper left")
    caption = (
        "Left: E[x²] after t products with fresh 512×512 standard-normal matrices (markers: "
        f"geometric mean over {trials} trials; line: the law, ×{mp_factor:.0f} per step); "
        "right: E[z²] per layer of a width-512 ReLU MLP with N(0, 1) weights (line: the law, "
        f"×{relu_factor:.0f} per layer; markers: geometric mean over {seeds} seeds). Markers "
        "stop where the values overflow float32; the dotted line is the predicted first "
        "inf/NaN."
    )
    summary = (
        f"With N(0, 1) weights values grow ×{mp_factor:.0f} per 512×512 product and "
        f"×{relu_factor:.0f} per ReLU layer; float32 overflows at step "
        f"{mp_med} (law {mp_pred}) and layer {mlp_meas} (law {mlp_pred})."
    )
    data = {"mp_log_m2": mp["z_lm2"], "mp_first_nonfinite": mp_first}
    data |= {"mlp_q_measured": mlp_q_meas, "mlp_first_nonfinite": mlp_first}
    figure = ("overflow", caption, fig)
    return result("standard_normal", summary, laws_, rows, claims, figure, data=data)


@base.experiment(
    "xavier", "Xavier/Glorot: tanh stays near its fixed point, ReLU halves per layer", 5
)
def run_xavier(cfg: base.RunConfig) -> base.ExperimentResult:
    """Glorot-normal tanh and ReLU square stacks, per layer (module docstring)."""
    init = inits.glorot_normal()
    n, depth, _, seeds = size = _FAN_SIZE[cfg.quick]
    runs = {a: measure_square(cfg, tag, init, a, size) for a, tag in (("tanh", 5), ("relu", 50))}
    (tanh, tlaw), (relu, _) = runs["tanh"], runs["relu"]
    (tz, tg), (rz, rg) = ([st[k] for k in LM2] for st in (tanh, relu))
    tq_pred, fp = tlaw.forward, tlaw.fixed_point
    assert fp is not None  # tanh, zero-mean weights, the same n Var(w) in every layer
    t_ok_q, t_dev_q, t_tol_q = _profile_ok(tz, tq_pred)
    t_ok_g, t_dev_g, t_tol_g = _profile_ok(tg, tlaw.backward)
    lf_relu = laws.layer_factors(init.scheme, "relu")
    half, half_b = float(lf_relu.forward_square), float(lf_relu.backward_square)
    crit, mid = t_crit(seeds, 2), depth // 2  # tanh at depth: the last half of the stack
    r_fwd, r_fwd_se, r_ok_f = factor_test(rz, 0, depth - 1, half, crit)
    r_bwd, r_bwd_se, r_ok_b = factor_test(rg[:, ::-1], 0, depth - 1, half_b, crit)
    t_fac_pred = float(np.exp(np.log(tq_pred[-1] / tq_pred[mid - 1]) / (depth - mid)))
    t_fac, t_fac_se, t_ok_fac = factor_test(tz, mid - 1, depth - 1, t_fac_pred, crit)
    gauss = sp.exp(-(S.x**2) / 2) / sp.sqrt(2 * sp.pi)
    tanh_m2 = sp.Integral(sp.tanh(sp.sqrt(S.q) * S.x) ** 2 * gauss, (S.x, -sp.oo, sp.oo))
    tq_meas = np.exp(tz.mean(0))
    slope = f"{_ci(crit, t_fac_se)}; slope at q* = 0: {fp.chi:.3f}"
    # fmt: off
    laws_ = [
        law("forward law of Glorot normal", laws.forward_law(init.scheme)),
        law("Glorot's weight variance", sp.Eq(S.weight_variance, init.scheme.law)),
        law("ReLU per-layer factor, square layers", sp.Eq(Q_RATIO, lf_relu.forward_square)),
        law("ReLU backward factor, square layers", sp.Eq(G_RATIO, lf_relu.backward_square)),
        law("tanh second moment at q (SymPy form; evaluated by quadrature)", sp.Eq(Q_NEXT, tanh_m2)),
    ]
    rows = [Row(f"tanh: E[z²] at layer {l}", float(tq_pred[l - 1]), float(tq_meas[l - 1]),
                "mean-field law") for l in sorted({1, 2, mid, depth})]
    rows += [Row(*r) for r in [
        (f"tanh: per-layer factor, layers {mid}-{depth}", t_fac_pred, t_fac, slope),
        ("ReLU: per-layer forward factor", half, r_fwd, _ci(crit, r_fwd_se)),
        ("ReLU: per-layer backward factor", half_b, r_bwd, _ci(crit, r_bwd_se)),
    ]]
    claims = [Claim(*c) for c in [
        ("With Glorot init, a tanh network's per-layer E[z²] follows the mean-field law "
         "(toward the fixed point, no geometric collapse or explosion).", t_ok_q and t_ok_fac,
         f"worst layer |log(measured/law)| {t_dev_q:.3f} <= {t_tol_q:.3f} (t-interval, "
         f"{seeds} seeds, Bonferroni over {depth} layers); per-layer factor at depth "
         f"{t_fac:.3f} vs law {t_fac_pred:.3f}."),
        ("Its gradients follow the law too (factor -> 1 per layer).", t_ok_g,
         f"worst layer |log(measured/law)| {t_dev_g:.3f} <= {t_tol_g:.3f}."),
        ("With ReLU, Glorot halves the second moment at every layer, forward and backward.",
         r_ok_f and r_ok_b, f"forward factor {r_fwd:.4f}, backward {r_bwd:.4f}, law {half} (± "
         f"{crit * r_fwd_se:.3f} / {crit * r_bwd_se:.3f} in log)."),
    ]]
    # fmt: on
    fig, axes = base.new_figure(ncols=2, width=4.6, height=3.6)
    for ax, (st, p), act in zip(axes[0], runs.values(), ("tanh", "ReLU"), strict=True):
        per_layer_plot(ax, p.forward, st["z_lm2"], f"{act} E[z²]", "C0")
        per_layer_plot(ax, p.backward, st["gz_lm2"], f"{act} E[(dL/dz)²]", "C1", "s")
        ylabel = "second moment" if act == "tanh" else ""
        label_axes(ax, "layer l", ylabel, f"Glorot normal, {act}, width {n}")
    caption = (
        f"Per-layer E[z²] (blue) and E[(dL/dz)²] (orange) of square stacks of width {n} "
        f"with Glorot-normal weights; lines: the law, markers: measured (geometric mean "
        f"over {seeds} seeds). Left, tanh: E[z²] follows the mean-field map toward its "
        "fixed point q* = 0, slowing down like 1/l (the per-layer factor tends to 1, no "
        "geometric collapse), and the gradients mirror it. Right, ReLU: both halve at "
        "every layer (straight lines on the log axis)."
    )
    summary = (
        f"Glorot init keeps a width-{n} tanh stack on the mean-field curve (per-layer "
        f"factor {t_fac:.3f} at depth, law {t_fac_pred:.3f}), while with ReLU it halves "
        f"E[z²] per layer (measured {r_fwd:.3f}, law {half})."
    )
    data = {"width": np.int64(n), "tanh_z_log_m2": tz, "tanh_gz_log_m2": tg}
    data |= {"relu_z_log_m2": rz, "relu_gz_log_m2": rg}
    return result("xavier", summary, laws_, rows, claims, ("layers", caption, fig), data=data)


@base.experiment("he", "He/Kaiming: fan_in preserves the forward pass, fan_out the backward", 6)
def run_he(cfg: base.RunConfig) -> base.ExperimentResult:
    """He normal, fan_in and fan_out, in a square ReLU stack and a pyramid (module docstring)."""
    modes = {"fan_in": inits.he_normal(), "fan_out": inits.he_normal(mode="fan_out")}
    n, depth, _, seeds = size = _FAN_SIZE[cfg.quick]
    widths, h = (784, 512, 256, 128, 64, 10), 3  # h: the last hidden layer
    shapes = list(itertools.pairwise(widths))
    kinds = {m: [i.scheme.std(s) for s in shapes] for m, i in modes.items()}
    kinds["seed Layer"] = sl = [math.sqrt(2.0 / m) for _, m in shapes]
    seed_is = {m: bool(np.allclose(sl, kinds[m], rtol=1e-12)) for m in modes}
    pyramid = _net(widths, "relu", False)  # one compiled probe, the same draws for every kind
    pyr_run = functools.partial(
        probe_fields, pyramid, LM2, seeds=seeds, seed=cfg.seed, batch=64, tag=60
    )
    sq, _ = measure_square(cfg, 6, modes["fan_in"], "relu", size)
    sz, sg = (sq[k] for k in LM2)
    one = float(laws.layer_factors(modes["fan_in"].scheme, "relu").forward_square)
    crit = t_crit(seeds, 2)
    s_fwd, s_fwd_se, ok_f = factor_test(sz, 0, depth - 1, one, crit)
    s_bwd, s_bwd_se, ok_b = factor_test(sg[:, ::-1], 0, depth - 1, one, crit)
    pyr, ok_profile, e2e = {}, {}, {}
    data = {"width": np.int64(n), "pyramid_widths": np.array(widths)}
    for kind, stds in kinds.items():
        st = pyr_run(weight_scales=stds)
        prop = laws.propagate(widths, "relu", [inits.normal(s).scheme for s in stds], batch=64)
        (zz, gg), (qp, gp) = (st[k] for k in LM2), (prop.forward, prop.backward)
        pyr[kind] = zz, gg, qp, gp
        ok_profile[kind] = _profile_ok(zz, qp)[0] and _profile_ok(gg, gp)[0]
        # Hidden-stack change, measured (geometric mean) and predicted: q_h / q_1, g_1 / g_h.
        mq, mg = np.exp(zz.mean(0)), np.exp(gg.mean(0))
        e2e[kind] = tuple(map(float, (mq[h] / mq[0], qp[h] / qp[0], mg[0] / mg[h], gp[0] / gp[h])))
        k = f"pyramid_{kind.replace(' ', '_')}"
        data |= {f"{k}_z_log_m2": zz, f"{k}_gz_log_m2": gg, f"{k}_std": np.array(stds)}
    # fmt: off
    laws_ = [law(f"forward law, He {m}", laws.forward_law(i.scheme)) for m, i in modes.items()]
    laws_ += [law(f"backward law, He {m}", laws.backward_law(i.scheme, "relu"))
              for m, i in modes.items()]
    laws_ += [law(f"ReLU {d} factor, {m}",
                  sp.Eq(r, getattr(laws.layer_factors(modes[m].scheme, "relu"), d)))
              for d, m, r in (("forward", "fan_in", Q_RATIO), ("backward", "fan_in", G_RATIO),
                              ("forward", "fan_out", Q_RATIO))]
    # fmt: on
    equals = ", ".join(k for k, v in seed_is.items() if v) or "neither"
    # preserved: the law exactly 1 and the measurement within a factor 2
    kept = lambda m, p: abs(math.log(m)) < math.log(2.0) and abs(p - 1) < 1e-9  # noqa: E731
    directions_ok = all(
        kept(*e[:2]) == (k == "fan_in") and kept(*e[2:]) == (k != "fan_in") for k, e in e2e.items()
    )
    agree = ", ".join(f"{k}: {'agrees' if v else 'differs'}" for k, v in ok_profile.items())
    # fmt: off
    change = "; ".join(f"{k}: forward {mf:.2f}/{pf:.2f}, backward {mb:.3f}/{pb:.3f}"
                       for k, (mf, pf, mb, pb) in e2e.items())
    rows = [Row(f"square ReLU width {n}: {d} factor (fan_in)", one, m, _ci(crit, se))
            for d, m, se in (("forward", s_fwd, s_fwd_se), ("backward", s_bwd, s_bwd_se))]
    rows.append(Row("seed Layer(M, N) std sqrt(2/M) equals", "fan_out", equals))
    rows += [Row(f"pyramid {kind}: {r}", p, m) for kind, (mf, pf, mb, pb) in e2e.items()
             for r, p, m in (("q_4 / q_1 (forward)", pf, mf), ("g_1 / g_4 (backward)", pb, mb))]
    claims = [Claim(*c) for c in [
        ("He init (fan_in) preserves E[z²] and E[(dL/dz)²] through a square ReLU stack.",
         ok_f and ok_b, f"per-layer factors {s_fwd:.4f} forward, {s_bwd:.4f} backward vs {one} "
         f"(± {crit * s_fwd_se:.3f} / {crit * s_bwd_se:.3f} in log, {seeds} seeds)."),
        ("In the 784-512-256-128-64-10 pyramid every layer's E[z²] and E[(dL/dz)²] follow "
         "the law, for fan_in, fan_out and the seed's Layer rule.", all(ok_profile.values()),
         f"{agree} (per-layer t-interval over {seeds} seeds, Bonferroni)."),
        ("fan_in preserves the forward pass, fan_out the backward pass; the seed's Layer "
         "(std sqrt(2/M), M = outputs) is fan_out and preserves the backward pass.",
         directions_ok and seed_is["fan_out"] and not seed_is["fan_in"],
         f"hidden-stack change (measured / law): {change} (preserved = law exactly 1 and "
         "measured within a factor 2)."),
    ]]
    # fmt: on
    fig, axes = base.new_figure(ncols=2, width=4.6, height=3.6)
    layers = np.arange(1, len(widths))
    for i, title in enumerate(("forward: E[z_l²]", "backward: E[(dL/dz_l)²]")):
        ax = axes[0, i]
        for (kind, vals), col, mk in zip(pyr.items(), ("C0", "C1", "C2"), "os^", strict=True):
            per_layer_plot(ax, vals[i + 2], vals[i], kind, col, mk)
        ax.set_xticks(layers, [f"{l}\n{widths[l - 1]}→{widths[l]}" for l in layers], fontsize=7)
        label_axes(ax, "layer (fan_in→fan_out)", "", title, fontsize=6)
    caption = (
        "He-normal ReLU MLP 784-512-256-128-64-10 (last layer linear): per-layer E[z²] "
        "(left) and E[(dL/dz)²] (right); lines: the law, markers: measured (geometric "
        f"mean over {seeds} seeds, the same draws for every rule). fan_in keeps the "
        "forward pass flat and lets gradients shrink toward the input; fan_out, and the "
        "textbook Layer rule (identical to fan_out), keep gradients flat and let "
        "activations grow."
    )
    summary = (
        f"He init keeps a square ReLU stack at factor {s_fwd:.3f} forward and {s_bwd:.3f} "
        "backward per layer; in a pyramid fan_in preserves activations and fan_out (which "
        "is what the seed's numpy Layer draws) preserves gradients, as the law says."
    )
    data |= {"square_z_log_m2": sz, "square_gz_log_m2": sg}
    return result("he", summary, laws_, rows, claims, ("pyramid", caption, fig), data=data)

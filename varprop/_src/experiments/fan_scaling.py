r"""Experiments 5-6: weight variances scaled by the fans, Xavier/Glorot and He/Kaiming.

Layer l maps x (width n_{l-1}) to z_l = x W_l and h_l = phi(z_l); with q_l = E[z_l^2] and
g_l = E[(dL/dz_l)^2] the mean-field law (:func:`varprop.laws.propagate`) is

.. math::

    q_{l+1} = n_l\,\mathrm{Var}(w_{l+1})\,E[\phi(z_l)^2], \qquad
    g_l = E[\phi'(z_l)^2]\; n_{l+1}\,\mathrm{Var}(w_{l+1})\; g_{l+1}

(n_l = n_in of layer l+1, n_{l+1} its n_out). For ReLU E[phi(z)^2] = q/2 and
E[phi'(z)^2] = 1/2, so the forward factor is n_in Var(w) / 2 and the backward one
n_out Var(w) / 2.

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

Measured with the probe on stacks of N(0, 1) kernels scaled per layer by the scheme's std
(``weight_scales``): the three He variants of the pyramid run on one compiled probe and the
same draws.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import sympy as sp

from varprop import initializers as inits
from varprop import laws
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
from varprop._src.experiments.measure import law, run_probe, seed_mean, stack, t_crit
from varprop._src.experiments.weight_scale import (
    G_RATIO,
    Q_RATIO,
    factor_test,
    label_axes,
    measure_square,
    per_layer_plot,
)
from varprop._src.laws import symbols as S


def _profile_ok(meas, pred) -> tuple[bool, float, float]:
    """Per-layer test of ``(S, L)`` log measurements against a predicted profile: the mean
    over seeds within a Bonferroni t-interval (alpha 1e-3) of log(pred) at every layer.
    Returns (held, worst |log ratio|, its allowed bound at that layer)."""
    mean, se = seed_mean(meas)
    tol = t_crit(*meas.shape) * se
    dev = np.abs(mean - np.log(pred))
    worst = int(np.argmax(dev / tol))
    return bool(np.all(dev <= tol)), float(dev[worst]), float(tol[worst])


@experiment("xavier", "Xavier/Glorot: tanh stays near its fixed point, ReLU halves per layer", 5)
def run_xavier(cfg: RunConfig) -> ExperimentResult:
    """Glorot-normal tanh and ReLU square stacks, per layer, against the law (see the module
    docstring)."""
    init = inits.glorot_normal()
    n, depth, _, seeds = size = (128, 16, 32, 8) if cfg.quick else (256, 24, 64, 16)
    runs = {a: measure_square(cfg, tag, init, a, size) for a, tag in (("tanh", 5), ("relu", 50))}
    (tanh, tlaw), (relu, _) = runs["tanh"], runs["relu"]
    tz, tg, rz, rg = (
        tanh.forward.z_lm2,
        tanh.backward.gz_lm2,
        relu.forward.z_lm2,
        relu.backward.gz_lm2,
    )
    tq_pred, tq_meas = tlaw.forward, np.exp(tz.mean(0))
    fp = tlaw.fixed_point
    assert fp is not None  # tanh, zero-mean weights, the same n Var(w) in every layer
    t_ok_q, t_dev_q, t_tol_q = _profile_ok(tz, tq_pred)
    t_ok_g, t_dev_g, t_tol_g = _profile_ok(tg, tlaw.backward)
    lf_relu = laws.layer_factors(init.scheme, "relu")
    half, half_b = float(lf_relu.forward_square), float(lf_relu.backward_square)
    crit = t_crit(seeds, 2)
    r_fwd, r_fwd_se, r_ok_f = factor_test(rz, 0, depth - 1, half, crit)
    r_bwd, r_bwd_se, r_ok_b = factor_test(rg[:, ::-1], 0, depth - 1, half_b, crit)
    mid = depth // 2  # tanh at depth: the last half of the stack
    t_fac_pred = float(np.exp(np.log(tq_pred[-1] / tq_pred[mid - 1]) / (depth - mid)))
    t_fac, t_fac_se, t_ok_fac = factor_test(tz, mid - 1, depth - 1, t_fac_pred, crit)
    gauss = sp.exp(-(S.x**2) / 2) / sp.sqrt(2 * sp.pi)
    tanh_m2 = sp.Integral(sp.tanh(sp.sqrt(S.q) * S.x) ** 2 * gauss, (S.x, -sp.oo, sp.oo))
    laws_ = [
        law("forward law of Glorot normal", laws.forward_law(init.scheme)),
        law("Glorot's weight variance", sp.Eq(S.weight_variance, init.scheme.law)),
        law("ReLU per-layer factor, square layers", sp.Eq(Q_RATIO, lf_relu.forward_square)),
        law("ReLU backward factor, square layers", sp.Eq(G_RATIO, lf_relu.backward_square)),
        law(
            "tanh second moment at q (SymPy form; evaluated by quadrature)",
            sp.Eq(sp.Symbol("q_{l+1}"), tanh_m2),
        ),
    ]
    rows = [
        Row(
            f"tanh: E[z²] at layer {l}",
            float(tq_pred[l - 1]),
            float(tq_meas[l - 1]),
            "mean-field law",
        )
        for l in sorted({1, 2, mid, depth})
    ]
    rows += [
        Row(
            f"tanh: per-layer factor, layers {mid}-{depth}",
            t_fac_pred,
            t_fac,
            f"± {crit * t_fac_se:.2g} in log; slope at q* = 0: {fp.chi:.3f}",
        ),
        Row("ReLU: per-layer forward factor", half, r_fwd, f"± {crit * r_fwd_se:.2g} in log"),
        Row("ReLU: per-layer backward factor", half_b, r_bwd, f"± {crit * r_bwd_se:.2g} in log"),
    ]
    claims = [
        Claim(
            "With Glorot init, a tanh network's per-layer E[z²] follows the mean-field law "
            "(toward the fixed point, no geometric collapse or explosion).",
            t_ok_q and t_ok_fac,
            f"worst layer |log(measured/law)| {t_dev_q:.3f} <= {t_tol_q:.3f} (t-interval, "
            f"{seeds} seeds, Bonferroni over {depth} layers); per-layer factor at depth "
            f"{t_fac:.3f} vs law {t_fac_pred:.3f}.",
        ),
        Claim(
            "Its gradients follow the law too (factor -> 1 per layer).",
            t_ok_g,
            f"worst layer |log(measured/law)| {t_dev_g:.3f} <= {t_tol_g:.3f}.",
        ),
        Claim(
            "With ReLU, Glorot halves the second moment at every layer, forward and backward.",
            r_ok_f and r_ok_b,
            f"forward factor {r_fwd:.4f}, backward {r_bwd:.4f}, law {half} (± "
            f"{crit * r_fwd_se:.3f} / {crit * r_bwd_se:.3f} in log).",
        ),
    ]
    layers = np.arange(1, depth + 1)
    fig, axes = new_figure(ncols=2, width=4.6, height=3.6)
    panels = zip(axes[0], runs.values(), ("tanh", "ReLU"), ("second moment", ""), strict=True)
    for ax, (st, p), act, ylabel in panels:
        per_layer_plot(ax, layers, p.forward, st.forward.z_lm2, f"{act} E[z²]", "C0")
        per_layer_plot(ax, layers, p.backward, st.backward.gz_lm2, f"{act} E[(dL/dz)²]", "C1", "s")
        label_axes(ax, "layer l", ylabel, f"Glorot normal, {act}, width {n}")
    caption = (
        f"Per-layer E[z²] (blue) and E[(dL/dz)²] (orange) of square stacks of width {n} "
        f"with Glorot-normal weights; lines: the law, markers: measured (geometric mean "
        f"over {seeds} seeds). Left, tanh: E[z²] follows the mean-field map toward its "
        "fixed point q* = 0, slowing down like 1/l (the per-layer factor tends to 1, no "
        "geometric collapse), and the gradients mirror it. Right, ReLU: both halve at "
        "every layer (straight lines on the log axis)."
    )
    return ExperimentResult(
        "xavier",
        "Xavier/Glorot: tanh stays near its fixed point, ReLU halves per layer",
        f"Glorot init keeps a width-{n} tanh stack on the mean-field curve (per-layer "
        f"factor {t_fac:.3f} at depth, law {t_fac_pred:.3f}), while with ReLU it halves "
        f"E[z²] per layer (measured {r_fwd:.3f}, law {half}).",
        laws_,
        rows,
        claims,
        [Figure("xavier_layers", caption, figure_png(fig))],
        data={
            "width": np.int64(n),
            "tanh_z_log_m2": tz,
            "tanh_gz_log_m2": tg,
            "relu_z_log_m2": rz,
            "relu_gz_log_m2": rg,
        },
    )


@experiment("he", "He/Kaiming: fan_in preserves the forward pass, fan_out the backward", 6)
def run_he(cfg: RunConfig) -> ExperimentResult:
    """He normal, fan_in and fan_out, in a square ReLU stack and a pyramid, against the law
    (see the module docstring)."""
    fan_in, fan_out = inits.he_normal(), inits.he_normal(mode="fan_out")
    n, depth, _, seeds = size = (128, 16, 32, 8) if cfg.quick else (256, 24, 64, 16)
    sq, _ = measure_square(cfg, 6, fan_in, "relu", size)
    sz, sg = sq.forward.z_lm2, sq.backward.gz_lm2
    one = float(laws.layer_factors(fan_in.scheme, "relu").forward_square)
    crit = t_crit(seeds, 2)
    s_fwd, s_fwd_se, ok_f = factor_test(sz, 0, depth - 1, one, crit)
    s_bwd, s_bwd_se, ok_b = factor_test(sg[:, ::-1], 0, depth - 1, one, crit)

    widths = (784, 512, 256, 128, 64, 10)
    shapes = list(itertools.pairwise(widths))
    p_seeds = 8 if cfg.quick else 16
    kinds = {
        "fan_in": [fan_in.scheme.std(s) for s in shapes],
        "fan_out": [fan_out.scheme.std(s) for s in shapes],
        "seed Layer": [math.sqrt(2.0 / m) for _, m in shapes],
    }
    sl = kinds["seed Layer"]
    seed_is = {m: bool(np.allclose(sl, kinds[m], rtol=1e-12)) for m in ("fan_in", "fan_out")}
    pyramid = stack(width=widths, activation="relu", kernel_init=inits.normal(1.0))
    pyr, ok_profile, e2e, h = {}, {}, {}, len(widths) - 3  # h: the last hidden layer
    for kind, stds in kinds.items():  # one compiled probe, the same draws for every kind
        st = run_probe(pyramid, seeds=p_seeds, seed=cfg.seed, batch=64, tag=60, weight_scales=stds)
        prop = laws.propagate(widths, "relu", [inits.normal(s).scheme for s in stds], batch=64)
        zz, gg, qp, gp = st.forward.z_lm2, st.backward.gz_lm2, prop.forward, prop.backward
        pyr[kind] = zz, gg, qp, gp
        ok_profile[kind] = _profile_ok(zz, qp)[0] and _profile_ok(gg, gp)[0]
        # Hidden-stack change, measured (geometric mean) and predicted: q_h / q_1, g_1 / g_h.
        mq, mg = np.exp(zz.mean(0)), np.exp(gg.mean(0))
        e2e[kind] = tuple(map(float, (mq[h] / mq[0], qp[h] / qp[0], mg[0] / mg[h], gp[0] / gp[h])))
    factor = {
        f"ReLU {d} factor, {m}": sp.Eq(r, getattr(laws.layer_factors(i.scheme, "relu"), d))
        for d, m, i, r in (
            ("forward", "fan_in", fan_in, Q_RATIO),
            ("backward", "fan_in", fan_in, G_RATIO),
            ("forward", "fan_out", fan_out, Q_RATIO),
        )
    }
    laws_ = [
        law("forward law, He fan_in", laws.forward_law(fan_in.scheme)),
        law("forward law, He fan_out", laws.forward_law(fan_out.scheme)),
        law("backward law, He fan_in", laws.backward_law(fan_in.scheme, "relu")),
        law("backward law, He fan_out", laws.backward_law(fan_out.scheme, "relu")),
        *(law(label, eq) for label, eq in factor.items()),
    ]
    rows = [
        Row(f"square ReLU width {n}: {d} factor (fan_in)", one, m, f"± {crit * se:.2g} in log")
        for d, m, se in (("forward", s_fwd, s_fwd_se), ("backward", s_bwd, s_bwd_se))
    ]
    equals = ", ".join(k for k, v in seed_is.items() if v) or "neither"
    rows.append(Row("seed Layer(M, N) std sqrt(2/M) equals", "fan_out", equals))
    for kind, (mf, pf, mb, pb) in e2e.items():
        rows.append(Row(f"pyramid {kind}: q_4 / q_1 (forward)", pf, mf))
        rows.append(Row(f"pyramid {kind}: g_1 / g_4 (backward)", pb, mb))

    def preserved(m, p):  # the law exactly 1 and the measurement within a factor 2
        return abs(math.log(m)) < math.log(2.0) and abs(p - 1) < 1e-9

    directions_ok = all(
        preserved(*e[:2]) == (k == "fan_in") and preserved(*e[2:]) == (k != "fan_in")
        for k, e in e2e.items()
    )
    claims = [
        Claim(
            "He init (fan_in) preserves E[z²] and E[(dL/dz)²] through a square ReLU stack.",
            ok_f and ok_b,
            f"per-layer factors {s_fwd:.4f} forward, {s_bwd:.4f} backward vs {one} "
            f"(± {crit * s_fwd_se:.3f} / {crit * s_bwd_se:.3f} in log, {seeds} seeds).",
        ),
        Claim(
            "In the 784-512-256-128-64-10 pyramid every layer's E[z²] and E[(dL/dz)²] follow "
            "the law, for fan_in, fan_out and the seed's Layer rule.",
            all(ok_profile.values()),
            ", ".join(f"{k}: {'agrees' if v else 'differs'}" for k, v in ok_profile.items())
            + f" (per-layer t-interval over {p_seeds} seeds, Bonferroni).",
        ),
        Claim(
            "fan_in preserves the forward pass, fan_out the backward pass; the seed's Layer "
            "(std sqrt(2/M), M = outputs) is fan_out and preserves the backward pass.",
            directions_ok and seed_is["fan_out"] and not seed_is["fan_in"],
            "hidden-stack change (measured / law): "
            + "; ".join(
                f"{k}: forward {mf:.2f}/{pf:.2f}, backward {mb:.3f}/{pb:.3f}"
                for k, (mf, pf, mb, pb) in e2e.items()
            )
            + " (preserved = law exactly 1 and measured within a factor 2).",
        ),
    ]
    fig, axes = new_figure(ncols=2, width=4.6, height=3.6)
    layers = np.arange(1, len(widths))
    panels = (("forward: E[z_l²]", 0), ("backward: E[(dL/dz_l)²]", 1))
    for ax, (title, idx) in zip(axes[0], panels, strict=True):
        for (kind, vals), col, mk in zip(pyr.items(), ("C0", "C1", "C2"), "os^", strict=True):
            per_layer_plot(ax, layers, vals[idx + 2], vals[idx], kind, col, mk)
        ax.set_xticks(layers, [f"{l}\n{widths[l - 1]}→{widths[l]}" for l in layers], fontsize=7)
        ax.set_xlabel("layer (fan_in→fan_out)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=6)
    caption = (
        "He-normal ReLU MLP 784-512-256-128-64-10 (last layer linear): per-layer E[z²] "
        "(left) and E[(dL/dz)²] (right); lines: the law, markers: measured (geometric "
        f"mean over {p_seeds} seeds, the same draws for every rule). fan_in keeps the "
        "forward pass flat and lets gradients shrink toward the input; fan_out, and the "
        "textbook Layer rule (identical to fan_out), keep gradients flat and let "
        "activations grow."
    )
    return ExperimentResult(
        "he",
        "He/Kaiming: fan_in preserves the forward pass, fan_out the backward",
        f"He init keeps a square ReLU stack at factor {s_fwd:.3f} forward and {s_bwd:.3f} "
        "backward per layer; in a pyramid fan_in preserves activations and fan_out (which "
        "is what the seed's numpy Layer draws) preserves gradients, as the law says.",
        laws_,
        rows,
        claims,
        [Figure("he_pyramid", caption, figure_png(fig))],
        data={
            "width": np.int64(n),
            "square_z_log_m2": sz,
            "square_gz_log_m2": sg,
            "pyramid_widths": np.array(widths),
            **{f"pyramid_{k.replace(' ', '_')}_z_log_m2": v[0] for k, v in pyr.items()},
            **{f"pyramid_{k.replace(' ', '_')}_gz_log_m2": v[1] for k, v in pyr.items()},
            **{f"pyramid_{k.replace(' ', '_')}_std": np.array(kinds[k]) for k in kinds},
        },
    )

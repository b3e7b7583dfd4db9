r"""Experiment 9, ``histograms``: per-layer histograms of the activations and the
back-propagated gradients of a tanh network, after Glorot & Bengio 2010, Figs. 6-7.

The "standard" init :math:`U[-1/\sqrt n, 1/\sqrt n]` (:math:`\mathrm{Var}(w) = 1/(3n)`)
against the normalized (Xavier/Glorot) init. The law, forward and backward,

.. math::

    q_{l+1} = n\,\mathrm{Var}(w)\,E[\tanh(z_l)^2], \qquad
    E[(\partial L/\partial z_l)^2] = E[\tanh'(z_l)^2]\; n\,\mathrm{Var}(w)\;
    E[(\partial L/\partial z_{l+1})^2]

(Glorot & Bengio 2010, Eqs. 5-6, with the activation's factors): with
:math:`n\mathrm{Var}(w) = 1/3` both shrink by about 3 per layer (the std by
:math:`\sqrt 3`), with the normalized init :math:`n\mathrm{Var}(w) = 1` only by the
activation's factors. Measured with the probe's per-layer histograms (traced bin edges),
predicted by :func:`varprop.laws.propagate`.
"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.ticker
import numpy as np

from varprop import initializers as I
from varprop import laws as L
from varprop._src.experiments import base
from varprop._src.experiments.measure import law, probe_fields, seed_mean, stack


@base.experiment("histograms", "Histograms of activations and gradients per layer (tanh)", 9)
def run_histograms(cfg: base.RunConfig) -> base.ExperimentResult:
    r"""Per-layer histograms of tanh activations and back-propagated gradients, standard
    init :math:`U[-1/\sqrt n, 1/\sqrt n]` vs normalized init, after Glorot & Bengio 2010,
    Figs. 6-7 (the law in the module docstring).
    """
    width, depth, batch, seeds = (256, 6, 128, 4) if cfg.quick else (512, 8, 256, 8)
    n_out, nbins = 10, 60
    inits = {
        "standard U[-1/sqrt(n), 1/sqrt(n)]": I.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        "normalized (Glorot uniform)": I.glorot_uniform(),
    }
    names = list(inits)
    widths = [width] * (depth + 1) + [n_out]
    var_h = [init.scheme.variance((width, width)) for init in inits.values()]
    var_o = [init.scheme.variance((width, n_out)) for init in inits.values()]
    props = [L.propagate(widths, "tanh", init.scheme) for init in inits.values()]
    q_law, h2_law, g2_law = (
        np.stack([getattr(p, k)[:depth] for p in props])
        for k in ("forward", "post_activation", "backward")
    )
    # Gradient bins: +-4 of the largest predicted gradient std of each init (law-derived).
    gmax = 4.0 * np.sqrt(g2_law.max(axis=1))
    grad_edges = np.stack([np.linspace(-g, g, nbins + 1) for g in gmax])
    a_edges = np.linspace(-1.0, 1.0, nbins + 1)

    # The probe on one tanh net with U[-1, 1) weights: each init is a per-layer weight
    # scale sqrt(3 Var(w)) of the same draws (common random numbers).
    net = stack(width=widths, activation="tanh", kernel_init=I.uniform(1.0))
    pairs = zip(var_h, var_o, strict=True)
    scales = np.stack([np.sqrt(3.0 * np.r_[[vh] * depth, vo]) for vh, vo in pairs])
    st = probe_fields(net, ("h_hist", "gz_hist", "h_lm2", "gz_lm2"), seeds=seeds, seed=cfg.seed,
                      batch=batch, weight_scales=scales, edges=(a_edges, grad_edges))  # fmt: skip
    # (inits, depth, nbins) histograms pooled over seeds; (seeds, inits, depth) moments
    ha, hg = (st[k][:, :, :depth].sum(0) for k in ("h_hist", "gz_hist"))
    h2, g2 = (np.exp(st[k][..., :depth]) for k in ("h_lm2", "gz_lm2"))

    # Stds per layer and the spread (max/min over layers), measured vs law. Standard errors
    # of log std over seeds give the tolerance: 4 s.e. of each log, plus the finite-width
    # bias of the law (relative O(1/n) per layer on the second moment, so l/(2n) on the std).
    (la_m, la_se), (lg_m, lg_se) = seed_mean(0.5 * np.log(h2)), seed_mean(0.5 * np.log(g2))
    la_law, lg_law = 0.5 * np.log(h2_law), 0.5 * np.log(g2_law)
    bias = np.arange(1, depth + 1) / (2.0 * width)
    ok_a = np.abs(la_m - la_law) <= 4.0 * la_se + bias[None, :]
    # Gradients relative to the top hidden layer: the claim is about their change across
    # layers, and this cancels the random scale of the 10-unit read-out (shared by layers).
    lg_rel_m, lg_rel_se = seed_mean(0.5 * np.log(g2 / g2[..., -1:]))
    lg_rel_law = lg_law - lg_law[:, -1:]
    ok_g = np.abs(lg_rel_m - lg_rel_law) <= 4.0 * lg_rel_se + bias[::-1][None, :]

    # log(max std / min std) over layers; its tolerance (a difference of two layer logs): 4
    # s.e. of each, added, + bias.
    sp_a_m, sp_a_law, sp_g_m, sp_g_law = (
        v.max(-1) - v.min(-1) for v in (la_m, la_law, lg_m, lg_law)
    )
    sp_tol_a, sp_tol_g = (4.0 * 2 * se.max(-1) + depth / width for se in (la_se, lg_se))
    shrink_a_m, shrink_a_law = (np.exp(v[:, -1] - v[:, 0]) for v in (la_m, la_law))
    shrink_g_m, shrink_g_law = (np.exp(v[:, 0] - v[:, -1]) for v in (lg_m, lg_law))

    laws = [
        *(law(f"Forward law, {nm}", L.forward_law(inits[nm].scheme)) for nm in names),
        *(law(f"Backward law, {nm}", L.backward_law(inits[nm].scheme)) for nm in names),
        law("Small-q series of E[tanh(sqrt(q) z)^2]", L.second_moment_series("tanh", 2)),
    ]
    rows = [
        base.Row(f"{nm}: {q}", f"{p[0]:.4g}, {p[1]:.4g}", f"{m[0]:.4g}, {m[1]:.4g}")
        for i, nm in enumerate(names)
        for q, p, m in [
            *((f"std(h_{l + 1}), std(dL/dz_{l + 1})", np.exp([la_law[i, l], lg_law[i, l]]),
               np.exp([la_m[i, l], lg_m[i, l]])) for l in range(depth)),
            (f"std(h_{depth})/std(h_1), std(dL/dz_1)/std(dL/dz_{depth})",
             (shrink_a_law[i], shrink_g_law[i]), (shrink_a_m[i], shrink_g_m[i])),
        ]
    ]  # fmt: skip
    claims = [base.Claim(
        "With the standard init the activation std shrinks layer by layer as the law says (n "
        f"Var(w) = {width * var_h[0]:.4g}: a factor about 1/sqrt(3) per layer once tanh is "
        "linear).",
        bool(ok_a[0].all() and shrink_a_law[0] < 0.2),
        f"std(h_{depth})/std(h_1): law {shrink_a_law[0]:.4g}, measured {shrink_a_m[0]:.4g}; "
        "every layer's log std within 4 s.e. + l/(2n) of the law (max |dev| "
        f"{np.abs(la_m[0] - la_law[0]).max():.3g}).",
    ), base.Claim(
        "With the standard init the back-propagated gradient std changes across layers "
        "(shrinks towards the input) as the backward law says.",
        bool(ok_g[0].all() and shrink_g_law[0] < 0.2),
        f"std(dL/dz_1)/std(dL/dz_{depth}): law {shrink_g_law[0]:.4g}, measured "
        f"{shrink_g_m[0]:.4g}; every layer within tolerance (log std relative to layer "
        f"{depth}, 4 s.e. + (L-l+1)/(2n); max |dev| "
        f"{np.abs(lg_rel_m[0] - lg_rel_law[0]).max():.3g}).",
    ), base.Claim(
        "With the normalized init activations and gradients stay within a much narrower band "
        "across layers, by the law and measured.",
        bool(ok_a[1].all() and ok_g[1].all() and abs(sp_a_m[1] - sp_a_law[1]) <= sp_tol_a[1]
             and abs(sp_g_m[1] - sp_g_law[1]) <= sp_tol_g[1] and sp_a_m[1] + sp_tol_a[1] < sp_a_m[0]
             and sp_g_m[1] + sp_tol_g[1] < sp_g_m[0]),
        f"max/min std over layers, activations: normalized law {math.exp(sp_a_law[1]):.3g}, "
        f"measured {math.exp(sp_a_m[1]):.3g} vs standard law {math.exp(sp_a_law[0]):.3g}, "
        f"measured {math.exp(sp_a_m[0]):.3g}; gradients: normalized law "
        f"{math.exp(sp_g_law[1]):.3g}, measured {math.exp(sp_g_m[1]):.3g} vs standard law "
        f"{math.exp(sp_g_law[0]):.3g}, measured {math.exp(sp_g_m[0]):.3g}.",
    )]  # fmt: skip

    cmap = matplotlib.colormaps["viridis"]
    fig, axes = base.new_figure(3, 2, width=4.6, height=3.2)
    for i, nm in enumerate(names):
        for j, (counts, edges, what) in enumerate(
            ((ha[i], a_edges, "activation value h = tanh(z)"), (hg[i], grad_edges[i], "dL/dz"))
        ):
            ax = axes[i, j]
            centers = 0.5 * (edges[1:] + edges[:-1])
            for l in range(depth):
                dens = counts[l] / (counts[l].sum() * (edges[1] - edges[0]))
                dens, c = np.where(dens > 0, dens, np.nan), cmap(l / max(depth - 1, 1))
                ax.plot(centers, dens, color=c, lw=1.2, label=f"layer {l + 1}")
            kind = "activations" if j == 0 else "back-propagated gradients"
            ax.set(yscale="log", xlabel=what, ylabel="density")
            ax.set_title(f"{nm.split(' (')[0].split(' U')[0]} init: {kind}", fontsize=9)
            ax.legend(fontsize=6, ncol=2)
    lay = np.arange(1, depth + 1)
    for j, (lm, lse, llaw, what) in enumerate(
        ((la_m, la_se, la_law, "std(h_l)"), (lg_m, lg_se, lg_law, "std(dL/dz_l)"))
    ):
        ax = axes[j, 2]
        for i, (nm, c) in enumerate(zip(names, ("tab:red", "tab:blue"), strict=True)):
            e = np.exp(lm[i])
            ax.errorbar(lay, e, e * lse[i], fmt="o", color=c, ms=4, label=f"measured, {nm}")
            ax.plot(lay, np.exp(llaw[i]), "-", color=c, lw=1.2, label=f"law, {nm}")
        ax.set(yscale="log", xlabel="layer l", ylabel=what)
        ax.set_title(f"{what}: measured vs law", fontsize=9)
        ax.legend(fontsize=6)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    caption = (
        f"Per-layer histograms (one curve per layer, {seeds} seeds pooled) of the activations "
        f"tanh(z_l) (left) and the back-propagated gradients dL/dz_l (right) of a {depth}-layer "
        f"tanh MLP of width {width}: top the standard init U[-1/sqrt(n), 1/sqrt(n)], bottom the "
        "normalized (Glorot) init, as in Glorot & Bengio 2010, Figs. 6-7. With the standard init "
        "the curves narrow layer by layer (activations towards the output, gradients towards the "
        "input); with the normalized init they stay close together. Gradient axes span +-4 "
        "predicted stds. Right column: per-layer std, markers measured (mean over seeds, 1 s.e.), "
        "lines the forward/backward law with E[tanh^2], E[tanh'^2]; red standard, blue normalized."
    )
    data = dict(
        init_names=np.asarray(names), act_hist=ha, grad_hist=hg, act_edges=a_edges,
        grad_edges=grad_edges, h2=h2, g2=g2, h2_law=h2_law, g2_law=g2_law, q_law=q_law,
        var_hidden=np.asarray(var_h), var_out=np.asarray(var_o),
    )  # fmt: skip
    summary = (
        f"With the standard init the activation std falls by {1 / shrink_a_m[0]:.3g}x over "
        f"{depth} layers (law {1 / shrink_a_law[0]:.3g}x) and the gradient std by "
        f"{1 / shrink_g_m[0]:.3g}x towards the input (law {1 / shrink_g_law[0]:.3g}x); the "
        f"normalized init keeps both within {math.exp(max(sp_a_m[1], sp_g_m[1])):.3g}x."
    )
    notes = [
        "The loss is sum(y * v) with v ~ N(0, 1) (unit second moment of dL/dy), not the paper's "
        "softmax cross-entropy; inputs are N(0, 1), not Shapeset images.",
    ]
    return base.ExperimentResult(
        "histograms", "Histograms of activations and gradients per layer (tanh)", summary, laws,
        rows, claims, [base.Figure("histograms", caption, base.figure_png(fig))], notes, data
    )  # fmt: skip

r"""Experiment 7, ``gains``: the mean field of tanh, and derived vs conventional gains.

The second moment :math:`q_l = E[z_l^2]` of a tanh MLP with :math:`\mathrm{Var}(w) = g^2/n`
follows the mean-field map (Saxe, McClelland & Ganguli 2014; Poole et al. 2016)

.. math:: q_{l+1} = g^2\, E[\tanh(\sqrt{q_l}\, z)^2],\qquad z \sim \mathcal N(0, 1),

with the fixed point :math:`q^* = 0` for g = 1, approached like :math:`1/(2l)` since
:math:`E[\tanh(\sqrt q z)^2] = q - 2q^2 + O(q^3)`, and :math:`q^* \approx 1.18` for g = 5/3.
At width n the map has an O(1/n) correction (:func:`varprop.laws.finite_width_mean_field`). Next to it, the
derived gain :math:`g_\phi = 1/\sqrt{E[\phi(z)^2]}` of every registered activation (He et
al. 2015; Glorot & Bengio 2010) against its conventional value.

Measured with the probe (:mod:`varprop._src.experiments.measure`): the gains are traced
weight scales of one compiled tanh stack, on the same draws; the law is
:func:`varprop.laws.propagate`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from varprop import initializers as I
from varprop import laws as L
from varprop._src.core.network import jax_activation
from varprop._src.experiments import base
from varprop._src.experiments.measure import law, probe_fields, seed_mean, stack, t_crit
from varprop._src.laws import symbols as S


def _finite_width_laws() -> list[base.Law]:
    """The O(1/n) recursion of :func:`varprop.laws.finite_width_mean_field` as two laws."""
    mean, var = L.finite_width_recursion()
    where = (
        "Q_l = |tanh(z_l)|^2/n, a = g^2 M_(l-1) = E[z_l^2], f(a) = E[tanh(sqrt(a) z)^2], f_4(a) = "
        "E[tanh(sqrt(a) z)^4]"
    )
    return [
        law(f"Finite-width mean field to O(1/n), mean M_l of {where}", mean),
        law("... and its variance V_l (delta method; M_0 = 1, V_0 = 0)", var),
    ]


def _unit_rows(batch: int, width: int):
    """Inputs for the probe: standard-normal rows scaled to ||x||^2 = n exactly."""

    def inputs(key):
        x = jax.random.normal(key, (batch, width), jnp.float32)
        return x * jnp.sqrt(width / jnp.sum(x * x, axis=1, keepdims=True))

    return inputs


@base.experiment("gains", "Gains: the tanh mean field and derived vs conventional gains", 7)
def run_gains(cfg: base.RunConfig) -> base.ExperimentResult:
    """The mean-field map of tanh for g = 1 and g = 5/3, and the gain of every activation
    (the laws and papers in the module docstring)."""
    # 32 seeds in quick mode: the per-layer test below is a t test over seeds, and with 8 its
    # tolerance would be 10 s.e. (t with 7 d.o.f. has heavy tails); the stack costs little.
    width, depth, seeds, batch = (128, 30, 32, 64) if cfg.quick else (512, 100, 8, 128)
    mc_n, mc_out, mc_b, mc_seeds = (128, 1024, 64, 8) if cfg.quick else (256, 2048, 256, 16)
    gains, labels = (1.0, 5.0 / 3.0), ("g = 1", "g = 5/3")
    names = L.activation_names()

    # quick: quadrature (agrees with the closed forms to ~1e-11) skips SymPy
    gain = (lambda a: 1.0 / math.sqrt(L.quadrature_moments(a, 1.0)[1])) if cfg.quick else L.gain
    derived = {a: gain(a) for a in names}
    conv = {a: L.conventional_gain(a) for a in names}
    exact_same = {}
    for a in ("linear", "relu", "leaky_relu"):
        c = L.CONVENTIONAL_GAINS[a]
        if isinstance(c, sp.Lambda):
            c = c(sp.nsimplify(dict(L.get_activation(a).params)["negative_slope"]))
        exact_same[a] = sp.simplify(L.gain_expr(a) - c) == 0  # type: ignore[operator]
    selu_ok = abs(derived["selu"] - 1.0) <= 1e-9 and conv["selu"] == 0.75

    # -- measurement: the deep tanh stack (gains as weight scales, the same draws), and one
    # layer per activation: input rows phi(z) drawn from a pool of 8x as many as the seeds
    # use (data, so one compile serves every phi), Var(w) = g_phi^2 / n.
    net = stack(width=width, depth=depth, activation="tanh", kernel_init=I.normal(width**-0.5))
    one = stack(width=(mc_n, mc_out), activation="linear", kernel_init=I.normal(mc_n**-0.5))

    def z2(nt, n, b, tag, scales, **inputs):  # E[z^2] per seed and layer
        kw = dict(seeds=n, batch=b, tag=tag, weight_scales=scales, **inputs)
        st = probe_fields(nt, ["z_lm2"], seed=cfg.seed, **kw)  # type: ignore[arg-type]
        return np.exp(st["z_lm2"])

    rows_in = _unit_rows(batch, width)
    q_meas = z2(net, seeds, batch, 7, [[g] * depth for g in gains], inputs=rows_in)
    z = (
        np.random.default_rng(cfg.seed)
        .standard_normal((8 * mc_seeds * mc_b, mc_n))
        .astype(np.float32)
    )
    phi = {a: jax.jit(jax_activation(a))(z) for a in names}
    mc = np.stack([z2(one, mc_seeds, mc_b, 11, [derived[a]], data=phi[a])[:, 0] for a in names], 1)
    (q_mean, q_se), (mc_mean, mc_se) = seed_mean(q_meas), seed_mean(mc)
    mc_ok = np.abs(mc_mean - 1.0) <= 4.0 * mc_se

    schemes = [I.normal(g / math.sqrt(width)).scheme for g in gains]
    props = [L.propagate([width] * (depth + 1), "tanh", sc) for sc in schemes]
    q_law = np.stack([p.forward for p in props])
    fp = props[1].fixed_point
    assert fp is not None  # tanh, zero-mean weights, the same map in every hidden layer
    layers = np.arange(1, depth + 1)
    asym = 1.0 / (1.0 / gains[0] ** 2 + 2.0 * (layers - 1))  # from q -> q - 2 q^2
    # Per layer, the measurement is compared with the finite-width law (the mean field with
    # its O(1/n) correction; the infinite-width law is biased by up to 6% here), within a
    # t-test tolerance over the seeds (Bonferroni over the layers, family-wise 1e-3).
    q_fw = np.stack([L.finite_width_mean_field("tanh", g * g, depth, width) for g in gains])
    rel_dev = np.abs(q_mean / q_law - 1.0)
    k_layers = t_crit(seeds, q_fw.size)
    z_layers = np.abs(q_mean - q_fw) / q_se
    ok_layers = z_layers <= k_layers
    tail = slice(2 * depth // 3, depth)
    q_tail_mean, q_tail_se = (float(x) for x in seed_mean(q_meas[:, 1, tail].mean(1)))
    tail_tol = 4.0 * q_tail_se + depth / width * fp.q_star
    # Sub-exponential decay for g = 1: q_L / q_(L/2) as the law says (about 1/2 for a
    # 1/(2l) decay), far above the exponential extrapolation of the first step.
    h = depth // 2 - 1
    r_meas, r_law = q_mean[0, -1] / q_mean[0, h], q_law[0, -1] / q_law[0, h]
    r_se = r_meas * math.hypot(q_se[0, -1] / q_mean[0, -1], q_se[0, h] / q_mean[0, h])
    r_tol = 4.0 * r_se + depth / width * r_law
    r_exp = (q_law[0, 1] / q_law[0, 0]) ** (depth - 1 - h)

    mf = sp.Symbol(r"E[\tanh(\sqrt{q_l} z)^2]")
    var_w = I.variance_scaling(1.0, "fan_in", "normal").law
    laws = [
        law("Mean-field map (Poole et al. 2016), Var(w) = g^2/n_in",
            sp.Eq(sp.Symbol("q_{l+1}"), S.fan_in * var_w * S.gain**2 * mf)),
        law("Small-q series of E[tanh(sqrt(q) z)^2] (SymPy)", L.second_moment_series("tanh")),
        *_finite_width_laws(),
        law("Derived gain of ReLU, 1/sqrt(E[phi(z)^2]) at q = 1", L.gain_expr("relu")),
        law("Derived gain of leaky ReLU (slope 0.01)", L.gain_expr("leaky_relu")),
        law("Forward law of one layer", L.forward_law()),
    ]  # fmt: skip
    table: list[tuple[Any, ...]] = [
        (f"E[z^2] at layer {depth}, g = 1 (iterated law; q* = 0)", float(q_law[0, -1]),
         float(q_mean[0, -1]),
         f"s.e. {q_se[0, -1]:.2g}; asymptote 1/(1 + 2(l-1)) = {asym[-1]:.4g}"),
        (f"E[z^2] at layer {depth}, g = 1, finite-width law (n = {width}, O(1/n))",
         float(q_fw[0, -1]), float(q_mean[0, -1]),
         f"{q_fw[0, -1] / q_law[0, -1] - 1:+.2%} from the infinite-width law"),
        (f"q_{depth} / q_{h + 1}, g = 1 (sub-exponential)", float(r_law), float(r_meas),
         f"exponential extrapolation of step 1: {r_exp:.3g}"),
        ("q* (g = 5/3), mean-field fixed point", fp.q_star, q_tail_mean,
         f"mean of layers {tail.start + 1}..{depth}, s.e. {q_tail_se:.2g}"),
        ("sqrt(q*) (g = 5/3), per-layer std", math.sqrt(fp.q_star), math.sqrt(q_tail_mean)),
        ("chi_1 = g^2 E[tanh'(sqrt(q*) z)^2] (g = 5/3)", fp.chi, "", "law only"),
        *((f"gain({a}): derived (predicted) vs conventional (measured column)", derived[a],
           conv[a] if conv[a] is not None else "none",
           f"MC g^2 E[phi^2] through one layer = {mc_mean[i]:.4f} +- {mc_se[i]:.4f}")
          for i, a in enumerate(names)),
    ]  # fmt: skip
    rows = [base.Row(*r) for r in table]
    same = "; ".join(f"{a}: derived {L.gain_expr(a)}, equal: {v}" for a, v in exact_same.items())
    mcs = ", ".join(f"{a} {m:.4f}+-{s:.4f}" for a, m, s in zip(names, mc_mean, mc_se, strict=True))
    claims = [base.Claim(statement, bool(held), evidence) for statement, held, evidence in (
        ("With g = 5/3 the per-layer E[z^2] of a deep tanh MLP converges to the non-zero "
         "mean-field fixed point q* (std sqrt(q*)).", abs(q_tail_mean - fp.q_star) <= tail_tol,
         f"q* = {fp.q_star:.4f} (std {math.sqrt(fp.q_star):.4f}); measured {q_tail_mean:.4f} "
         f"(std {math.sqrt(q_tail_mean):.4f}) over layers {tail.start + 1}..{depth}; tolerance "
         f"{tail_tol:.3g} = 4 s.e. + (L/n) q*."),
        ("With g = 1, E[z^2] decays towards q* = 0 sub-exponentially (like 1/(2l)), as the "
         "iterated mean-field law says.", abs(r_meas - r_law) <= r_tol and r_exp < 0.5 * r_law,
         f"q_{depth}/q_{h + 1}: law {r_law:.4f}, measured {r_meas:.4f} (tolerance {r_tol:.3g} "
         "= 4 s.e. + (L/n) ratio); an exponential decay at the first step's rate would give "
         f"{r_exp:.3g}. Layer {depth}: law {q_law[0, -1]:.4g}, measured {q_mean[0, -1]:.4g}."),
        ("Measured per-layer E[z^2] follows the iterated law for both gains (with its "
         "finite-width correction).", ok_layers.all(),
         f"{int(ok_layers.sum())}/{ok_layers.size} layers within {k_layers:.2f} s.e. of the "
         f"finite-width law (t test over {seeds} seeds, Bonferroni over the layers, "
         f"family-wise 1e-3); largest deviation {z_layers.max():.2f} s.e. Relative deviation "
         f"from the infinite-width law at most {rel_dev[0].max():.3g} (g = 1) and "
         f"{rel_dev[1].max():.3g} (g = 5/3); the finite-width correction accounts for "
         f"{abs(q_fw[0, -1] / q_law[0, -1] - 1):.3g} of it at layer {depth}, g = 1."),
        ("The derived gains of linear (1), ReLU (sqrt 2) and leaky ReLU (sqrt(2/(1+a^2))) "
         "equal the conventional ones exactly.", all(exact_same.values()),
         same + " (SymPy simplifies the difference to 0)."),
        ("SELU's derived gain is 1 (its constants make q = 1 a fixed point), not the "
         "conventional empirical 3/4.", selu_ok,
         f"derived {derived['selu']:.12f}, conventional {conv['selu']}."),
        ("Each derived gain preserves E[z^2] = 1 through one layer (Monte Carlo).", mc_ok.all(),
         mcs + f" ({mc_seeds} seeds, {mc_n} -> {mc_out} units, batch {mc_b}; tolerance 4 s.e.)."),
    )]  # fmt: skip

    fig, ((ax, bx),) = base.new_figure(2, 1, width=5.2, height=3.6)
    for i, (lab, c) in enumerate(zip(labels, ("tab:blue", "tab:red"), strict=True)):
        ax.errorbar(layers, q_mean[i], q_se[i], fmt="o", ms=3, color=c, label=f"measured, {lab}")
        ax.plot(layers, q_law[i], "-", color=c, lw=1.2, label=f"iterated law, {lab}")
        ax.plot(layers, q_fw[i], "--", color=c, lw=0.8, label=f"finite-width law, {lab}")
    ax.axhline(fp.q_star, color="tab:red", ls="--", lw=0.8, label="q* (g = 5/3)")
    ax.plot(layers, asym, ":", color="k", lw=1, label="1/(1 + 2(l-1)) (g = 1)")
    ax.set(yscale="log", xlabel="layer l", ylabel="E[z_l^2]")
    ax.set_title(f"tanh MLP, width {width}, Var(w) = g^2/n")
    ax.legend(fontsize=7)
    xs = np.arange(len(names))
    conv_arr = np.asarray([conv[a] if conv[a] is not None else np.nan for a in names])
    bx.bar(xs - 0.2, [derived[a] for a in names], 0.4, label="derived 1/sqrt(E[phi(z)^2])")
    bx.bar(xs + 0.2, conv_arr, 0.4, label="conventional (calculate_gain)")
    bx.errorbar(xs - 0.2, mc_mean, 4 * mc_se, fmt="k_", ms=8, label="MC g^2 E[phi^2] (+-4 s.e.)")
    bx.set_xticks(xs, names, rotation=60, fontsize=8)
    bx.set(ylabel="gain", title="Gains per activation", ylim=(0.0, 2.5))
    bx.legend(fontsize=7, loc="upper center", ncol=2)
    caption = (
        "Left: per-layer E[z^2] of a deep tanh MLP (markers, mean +- s.e. over seeds) and the "
        "iterated mean-field law (lines): g = 1 decays like 1/(2l) towards q* = 0, g = 5/3 "
        "settles at q* (dashed). Right: derived and conventional gain of every registered "
        "activation; black ticks: measured g^2 E[phi(z)^2] through one layer (should be 1)."
    )
    data = dict(
        layers=layers, gains=np.asarray(gains), q_measured=q_meas, q_law=q_law, q_law_finite=q_fw,
        layer_tolerance_se=k_layers, q_star=np.asarray([0.0, fp.q_star]),
        activation_names=np.asarray(names), derived_gain=np.asarray([derived[a] for a in names]),
        conventional_gain=conv_arr, mc_second_moment=mc,
    )  # fmt: skip
    summary = (
        "A deep tanh MLP follows the mean-field map: with g = 5/3 E[z^2] settles at q* = "
        f"{fp.q_star:.3f} (measured {q_tail_mean:.3f}), with g = 1 it decays like 1/(2l) (layer "
        f"{depth}: {q_mean[0, -1]:.4f} vs law {q_law[0, -1]:.4f}); derived gains equal the "
        "conventional ones for linear/ReLU/leaky ReLU, not for tanh, sigmoid, SELU."
    )
    notes = [
        L.gain_comparison(a) for a in (("tanh",) if cfg.quick else ("tanh", "selu", "sigmoid"))
    ]
    return base.ExperimentResult(
        "gains", "Gains: the tanh mean field and derived vs conventional gains", summary, laws,
        rows, claims, [base.Figure("gains", caption, base.figure_png(fig))], notes, data
    )  # fmt: skip

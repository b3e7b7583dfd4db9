r"""Experiment 15, ``coord_check``: the coordinate check of Yang et al. 2022 (Tensor Programs V,
Sec. 7.2 and Fig. 5) against the width exponents derived from the abc-parametrizations.

**The check.** A model is trained t = 3 steps at widths 64 ... 2048 (64 ... 512 with
``--quick``) from the same seeds, and the size of every layer's coordinates (root mean square
over the batch and the features) and of their change since init are plotted against the
width. Under μP (maximal update parametrization, Table 3 of Yang, Hu, Babuschkin, Sidor, Liu,
Farhi, Ryder, Pachocki, Chen & Gao, "Tensor Programs V: Tuning Large Neural Networks via
Zero-Shot Hyperparameter Transfer", 2022) every layer's change is Θ(1): the curves are flat;
under the standard parametrization (SP) with a width-independent learning rate they grow as
a power of the width. Here the powers are *predicted* and the measured log-log slopes are
tested against them, with intervals from the seeds.

**The models** (:mod:`varprop._src.sweep`): a 3-hidden-layer ReLU MLP without biases (d = 16
inputs, one output, batch 32: exactly the network :func:`varprop.laws.predict_widths`
derives), and a 2-block pre-LN decoder-only Transformer (model width n, heads of fixed
dimension 16, MLP 4n, LayerNorm without affine parameters, 4 sequences of 8 tokens of
16-dimensional random token vectors, 8 outputs per token). Both are anchored at the base
width 64, where SP and μP are the same network
(:class:`~varprop._src.parametrization_jax.WidthScaling`). The loss is linear,
:math:`L = \mathrm{mean}\, f \cdot v` with a fixed random v: its derivative does not depend
on the output, so nothing but the parametrization makes the gradients depend on the width
(with the squared loss, μP's output at init enters :math:`L' = f - y` as a finite-width term).

**The optimizers.** The MLP is trained with SGD and with Adam, the Transformer with Adam.
Adam is what Transformers are trained with and what TP5's coordinate checks of Transformers
use; with Adam the entries of an update are :math:`\Theta(\eta)` whatever the size of the
gradient (rule 3 of :mod:`varprop._src.laws.parametrization`: :math:`\delta = -a - c`), so its
exponents do not depend on how LayerNorm's Jacobian and the softmax scale the gradients, which
the MLP derivation does not model. With SGD they do (:math:`\delta = -2a - c + G + A`), so SGD
is checked on the MLP, where the derivation is exact. The learning rates (SGD 0.005, Adam
1e-4 at the base width) keep SP in the regime where its change is first order in
:math:`\eta_0` up to n = 2048 (the largest relative change of a hidden layer is reported):
there the prediction is ``update_first_order``; at larger :math:`\eta_0 n^e` SP's blow-up
compounds over layers and steps and its slopes steepen toward the ``update`` exponents.

**The prediction.** :func:`varprop.laws.predict_widths` on a chain with the family's roles
(input, hidden ..., output): for the MLP exactly its layers; for the Transformer the embedding
is the input layer, each attention and MLP sublayer output (after :math:`W_O`, :math:`W_2`) a
hidden layer's pre-activation, the readout the output layer. At first order the residual sums
(of :math:`\Theta(n^e)` terms) and the LayerNorms (dividing by the residual stream's RMS,
Θ(1) at init) change no exponent, so each sublayer gets a hidden layer's exponent; the heads
have a fixed dimension, so the attention logits' scale does not change with n.

**The fit and the tests.** Per seed, the least-squares slope of ln(size) on ln(width); the
seeds are independent, so their mean has a Student-t interval (critical value at
:math:`\alpha = 10^{-3}`, Bonferroni over every test of the experiment). Exponents are
limits: at finite n a layer's size carries relative corrections of order :math:`n^{-1/2}`
(fluctuations of width-n averages), which bias a slope by at most the slope of
:math:`\ln(1 + c\,n^{-1/2})` over the widths; the tests allow that with :math:`|c| \le 2`
(0.068 over 64 ... 2048, 0.093 over 64 ... 512) on top of the seeds' interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import sympy as sp

from varprop._src.experiments import base
from varprop._src.experiments.measure import figure, law, t_crit
from varprop._src.laws import parametrization as LP
from varprop._src.sweep import ModelFamily, SweepResult, mlp_family, transformer_family, width_sweep

NAME = "coord_check"
TITLE = (
    "Coordinate check: under muP every layer's update is Theta(1) in the width, under SP it grows"
)
STEPS = 3
BASE_WIDTH = 64
LEARNING_RATES = {"sgd": 0.005, "adam": 1e-4}
#: (model, optimizer) pairs; each is run under every parametrization of PARAMETRIZATIONS.
SWEEPS = (("mlp", "sgd"), ("mlp", "adam"), ("transformer", "adam"))
PARAMETRIZATIONS = ("SP", "muP")
LABELS = {"mlp": "MLP", "transformer": "Transformer", "sgd": "SGD", "adam": "Adam"}
#: Relative finite-width corrections allowed: |c| n^{-1/2} with |c| <= this.
CORRECTION = 2.0


def families() -> dict[str, ModelFamily]:
    return {"mlp": mlp_family(hidden_layers=3), "transformer": transformer_family(blocks=2)}


def settings(quick: bool) -> dict[str, Any]:
    """Widths, seeds per model and the seed chunk (memory) per model."""
    widths = (64, 128, 256, 512) if quick else (64, 128, 256, 512, 1024, 2048)
    # The MLP's seeds cost little (vmapped, small matrices); the Transformer's dominate.
    seeds = {"mlp": 16, "transformer": 8} if quick else {"mlp": 32, "transformer": 8}
    return {"widths": widths, "seeds": seeds}


def _seed_chunk(model: str) -> Callable[[int], int | None] | None:
    if model != "transformer":
        return None
    # About 5 copies of 24 n^2 parameters per seed under Adam: 2.4 GB at n = 2048.
    return lambda n: 1 if n >= 2048 else (2 if n >= 1024 else None)


def prediction(parametrization: str, optimizer: str, layers: int) -> LP.WidthPrediction:
    """The derivation for a chain of ``layers`` layers (input, hidden ..., output)."""
    return LP.predict_widths(
        parametrization, optimizer, hidden_layers=layers - 1, steps=STEPS, loss="linear"
    )


def allowance(widths: tuple[int, ...], c: float = CORRECTION) -> float:
    """The largest |least-squares slope| of ln(1 + c' n^{-1/2}) on ln n over ``widths`` for
    |c'| <= c (the slope is monotone in c', so its ends): a finite-width bias bound."""
    u = np.log(np.asarray(widths, np.float64))
    u = u - u.mean()
    n = np.asarray(widths, np.float64)
    return max(abs(float(u @ np.log1p(s / np.sqrt(n)) / (u @ u))) for s in (c, -c))


def slope_stats(slopes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the mean over seeds (axis 0) of the slopes and its standard error."""
    return slopes.mean(0), slopes.std(0, ddof=1) / math.sqrt(slopes.shape[0])


def symbolic_adam_laws() -> dict[str, sp.Expr]:
    """Adam's first-order exponents of a hidden layer and of the output with the hidden and
    output layers' abc-exponents left symbolic (the input layer's are SP's and μP's: 0)."""
    a_h, b_h, c_h, a_o, b_o, c_o = sp.symbols("a_h b_h c_h a_o b_o c_o", real=True)
    p = LP.Parametrization(
        "abc",
        input=LP.LayerExponents(*(sp.Integer(0),) * 4),
        hidden=LP.LayerExponents(a_h, b_h, c_h, c_h),
        output=LP.LayerExponents(a_o, b_o, c_o, c_o),
    )
    rows = LP.predict_widths(p, "adam", hidden_layers=2, steps=1, loss="linear").layers
    hidden, out = (sp.simplify(r.update_first_order) for r in rows[1:])
    out_ = {"hidden": hidden, "output": out}
    for name, q in (("SP", LP.SP), ("muP", LP.MUP)):
        values = (q.hidden.a, q.hidden.b, q.hidden.c_adam, q.output.a, q.output.b, q.output.c_adam)
        subs = dict(zip((a_h, b_h, c_h, a_o, b_o, c_o), values, strict=True))
        out_[f"hidden_{name}"] = sp.simplify(hidden.subs(subs))
        out_[f"output_{name}"] = sp.simplify(out.subs(subs))
    return out_


def run_sweeps(cfg: base.RunConfig) -> dict[tuple[str, str, str], SweepResult]:
    """Every (model, optimizer, parametrization) sweep of the experiment."""
    st, fams = settings(cfg.quick), families()
    out = {}
    for model, opt in SWEEPS:
        for p in PARAMETRIZATIONS:
            out[model, opt, p] = width_sweep(
                fams[model],
                st["widths"],
                p,
                opt,
                learning_rate=LEARNING_RATES[opt],
                steps=STEPS,
                seeds=st["seeds"][model],
                seed=cfg.seed,
                base_width=BASE_WIDTH,
                seed_chunk=_seed_chunk(model),
                progress=cfg.progress,
            )
    return out


@base.experiment(NAME, TITLE, order=15)
def run_coord_check(cfg: base.RunConfig) -> base.ExperimentResult:
    """The coordinate check (module docstring)."""
    st = settings(cfg.quick)
    widths = st["widths"]
    sweeps = run_sweeps(cfg)
    bias = allowance(widths)

    # predictions and measured slopes per sweep
    stats: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key, res in sweeps.items():
        _, opt, p = key
        pred = prediction(p, opt, len(res.layers))
        m, se = slope_stats(res.slopes("update", STEPS))
        m0, se0 = slope_stats(res.slopes("activation", 0))
        stats[key] = {
            "first": [r.update_first_order for r in pred.layers],
            "limit": [r.update for r in pred.layers],
            "init": [r.activation for r in pred.layers],
            "regime": pred.regime,
            "m": m,
            "se": se,
            "m0": m0,
            "se0": se0,
        }

    # the tests: (claim index, key, layer index, kind)
    init_keys = [k for k in sweeps if k[1] == "adam"]  # the init is the same under SGD
    tests: list[tuple[int, tuple[str, str, str], int]] = []
    for k in init_keys:
        tests += [(0, k, j) for j in range(len(sweeps[k].layers))]
    for k in sweeps:
        n_l = len(sweeps[k].layers)
        if k[2] == "muP":
            tests += [(1, k, j) for j in range(n_l)]
        else:
            tests += [(2, k, j) for j in range(n_l) if stats[k]["first"][j] > 0]
            if k[0] == "mlp":
                tests += [(3, k, j) for j in range(n_l)]
    n_tests = len(tests)
    crit = {k: t_crit(sweeps[k].seeds, n_tests) for k in sweeps}

    results: dict[int, list[tuple[bool, str]]] = {0: [], 1: [], 2: [], 3: []}
    for claim, k, j in tests:
        s, layer = stats[k], sweeps[k].layers[j]
        tag = f"{LABELS[k[0]]} {LABELS[k[1]]} {k[2]} {layer}"
        if claim == 0:
            target, m, se = float(s["init"][j]), s["m0"][j], s["se0"][j]
            ok = abs(m - target) <= crit[k] * se + bias
        elif claim == 1 or claim == 3:
            target, m, se = float(s["first"][j]), s["m"][j], s["se"][j]
            ok = abs(m - target) <= crit[k] * se + bias
        else:
            target, m, se = 0.0, s["m"][j], s["se"][j]
            ok = m - crit[k] * se > bias
        results[claim].append((bool(ok), f"{tag} {m:+.3f} +- {se:.3f}"))

    def verdict(i: int) -> tuple[bool, str]:
        r = results[i]
        bad = [e for ok, e in r if not ok]
        return not bad, ("not held: " + "; ".join(bad) + ". ") if bad else ""

    # relative change of the hidden layers at the largest width (the first-order regime)
    regime = {}
    for k, res in sweeps.items():
        hid = [j for j, r in enumerate(res.roles) if r == "hidden"]
        rel = res.update[-1, :, STEPS][:, hid] / res.activation[-1, :, 0][:, hid]
        regime[k] = float(rel.mean(axis=0).max())  # (seeds, hidden layers)

    # rows
    rows = [
        base.Row(
            "widths / seeds (MLP, Transformer) / steps / base width",
            "",
            f"{', '.join(map(str, widths))} / {st['seeds']['mlp']}, {st['seeds']['transformer']}"
            f" / {STEPS} / {BASE_WIDTH}",
            f"learning rates: SGD {LEARNING_RATES['sgd']}, Adam {LEARNING_RATES['adam']}",
        )
    ]
    for k in init_keys:
        s = stats[k]
        rows.append(
            base.Row(
                f"{LABELS[k[0]]} {k[2]}: activation exponent at init ({', '.join(sweeps[k].layers)})",
                ", ".join(map(str, s["init"])),
                ", ".join(f"{a:+.3f}" for a in s["m0"]),
                f"s.e. <= {s['se0'].max():.3f}",
            )
        )
    for k, res in sweeps.items():
        s = stats[k]
        for j, layer in enumerate(res.layers):
            rows.append(
                base.Row(
                    f"{LABELS[k[0]]} {LABELS[k[1]]} {k[2]}: {layer} ({res.roles[j]}) update exponent",
                    f"{s['first'][j]} (limit {s['limit'][j]})",
                    f"{s['m'][j]:+.3f} +- {s['se'][j]:.3f}",
                    f"interval +-{crit[k] * s['se'][j] + bias:.3f}",
                )
            )
    for k in sweeps:
        rows.append(
            base.Row(
                f"{LABELS[k[0]]} {LABELS[k[1]]} {k[2]}: largest |dh|/|h_0| of a hidden layer, "
                f"n = {widths[-1]}",
                "<< 1 for first order",
                f"{regime[k]:.3f}",
                f"regime (limit): {stats[k]['regime']}",
            )
        )

    held0, bad0 = verdict(0)
    held1, bad1 = verdict(1)
    held2, bad2 = verdict(2)
    held3, bad3 = verdict(3)

    def listing(i: int, limit: int = 6) -> str:
        r = results[i]
        shown = "; ".join(e for _, e in r[:limit])
        return shown + (f"; ... ({len(r)} tests)" if len(r) > limit else "")

    tol = f"(seeds' t interval at alpha 1e-3, Bonferroni over {n_tests} tests, + {bias:.3f})"
    mlp_first = {
        opt: ", ".join(str(e) for e in stats["mlp", opt, "SP"]["first"]) for opt in ("sgd", "adam")
    }
    claims = [
        base.Claim(
            "At init every layer's coordinates have the predicted width exponent: Theta(1), "
            "except muP's readout, Theta(n^-1/2) (its Var(w) = 1/fan_in^2)",
            held0,
            bad0 + listing(0) + f" {tol}",
        ),
        base.Claim(
            "Under muP every layer's update after 3 steps is Theta(1) (slope 0) in the MLP with "
            "SGD and Adam and in the Transformer with Adam (Yang et al. 2022)",
            held1,
            bad1 + listing(1, 14) + f" {tol}",
        ),
        base.Claim(
            "Under SP the updates of the hidden layers and of the output grow with the width, "
            "as predicted (slope > 0), in both models",
            held2,
            bad2 + listing(2, 11) + f" (each slope above {bias:.3f} by its t interval)",
        ),
        base.Claim(
            "Under SP the MLP's measured exponents are the derivation's first-order ones, layer "
            f"by layer (SGD: {mlp_first['sgd']}; Adam: {mlp_first['adam']})",
            held3,
            bad3 + listing(3, 8) + f" {tol}",
        ),
    ]

    sym = symbolic_adam_laws()
    n = LP.WIDTH
    a, b, c, eta0 = sp.symbols("a b c eta_0", real=True)
    laws_ = [
        law("abc-parametrization (TP4 Sec. 3): multiplier, Var(w), learning rate",
            sp.Tuple(n ** (-a), n ** (-2 * b), eta0 * n ** (-c))),
        law("muP readout init variance at base width n_0 (Table 3 of TP5)",
            LP.role_laws("muP", "output", "adam").variance),
        law("muP Adam learning rate of hidden and output weights",
            LP.role_laws("muP", "hidden", "adam").learning_rate),
        law("Adam, first order: exponent of a hidden layer's update", sym["hidden"]),
        law("Adam, first order: exponent of the output's update", sym["output"]),
        law("... under SP (hidden, output)", sp.Tuple(sym["hidden_SP"], sym["output_SP"])),
        law("... under muP (hidden, output)", sp.Tuple(sym["hidden_muP"], sym["output_muP"])),
        *[law(f"{p}, {LABELS[o]}: MLP update exponents (h1, h2, h3, f), first order",
              sp.Tuple(*stats["mlp", o, p]["first"]))
          for o in ("sgd", "adam") for p in PARAMETRIZATIONS],
        law("muP: readout output at init", sp.Pow(n, stats["mlp", "adam", "muP"]["init"][-1])),
    ]  # fmt: skip

    figures = [_updates_figure(sweeps, stats, widths), _steps_figure(sweeps, widths)]
    mu = [stats[k]["m"] for k in sweeps if k[2] == "muP"]
    max_mu = max(float(np.abs(x).max()) for x in mu)
    sp_out = {k: stats[k]["m"][-1] for k in sweeps if k[2] == "SP"}
    summary = (
        f"Trained 3 steps at widths {widths[0]} to {widths[-1]}, the MLP (SGD, Adam) and the "
        f"Transformer (Adam) under muP have every layer's update flat in the width (largest "
        f"|slope| {max_mu:.3f}), while under SP the output's update grows as n^"
        + ", n^".join(f"{v:.2f}" for v in sp_out.values())
        + " (MLP SGD, MLP Adam, Transformer Adam; first-order predictions 1, 3/2, 3/2), and "
        "the MLP's slopes match the derivation layer by layer."
    )
    notes = [
        "Every sweep uses the same seeds: at each width a seed draws the same batch (common "
        "random numbers across widths), and SP and muP differ only in the readout's init and "
        "the learning rates. One jitted program per width trains all seeds (vmapped; sharded "
        "over the devices with a NamedSharding on the seed axis: "
        f"{sweeps[SWEEPS[0][0], SWEEPS[0][1], 'SP'].devices} device(s) here).",
        "Coordinate size: root mean square over the batch (and tokens) and the features; "
        "update: the same of h_t - h_0 on the seed's fixed batch. The fitted slope is the "
        "least-squares slope of ln(size) on ln(width), per seed.",
        "The predicted exponents are update_first_order of varprop.laws.predict_widths (linear "
        "loss, t = 3); 'limit' is its update exponent as n -> oo at fixed eta_0, which SP "
        "approaches only once eta_0 n^e >> 1. The Transformer's SP slopes are below the "
        "first-order ones: at the largest widths its sublayers' change is no longer small "
        "against their size (the row 'largest |dh|/|h_0|'), so the change is no longer "
        "linear in eta_0; only their sign is claimed.",
        f"Finite-width allowance {bias:.3f}: the largest least-squares slope of "
        f"ln(1 + c n^-1/2), |c| <= {CORRECTION:g}, over these widths.",
        "Wall time per sweep (compilation included): "
        + "; ".join(
            f"{LABELS[k[0]]} {LABELS[k[1]]} {k[2]} {sum(r.seconds.values()):.0f} s"
            for k, r in sweeps.items()
        ),
    ]
    data = {
        "widths": np.asarray(widths),
        "sweeps": {
            "/".join(k): {
                "layers": r.layers,
                "roles": r.roles,
                "activation": r.activation,
                "update": r.update,
                "slopes": r.slopes("update", STEPS),
                "init_slopes": r.slopes("activation", 0),
            }
            for k, r in sweeps.items()
        },
        "allowance": bias,
        "n_tests": n_tests,
    }
    return base.ExperimentResult(
        name=NAME,
        title=TITLE,
        summary=summary,
        laws=laws_,
        rows=rows,
        claims=claims,
        figures=figures,
        notes=notes,
        data=data,
    )


def _geo_mean(x: np.ndarray) -> np.ndarray:
    return np.exp(np.log(x).mean(axis=0))


def _updates_figure(sweeps, stats, widths) -> base.Figure:
    fig, axes = base.new_figure(
        ncols=len(PARAMETRIZATIONS), nrows=len(SWEEPS), width=4.4, height=3.0
    )
    w = np.asarray(widths, np.float64)
    for row, (model, opt) in enumerate(SWEEPS):
        for col, p in enumerate(PARAMETRIZATIONS):
            ax, res, s = axes[row][col], sweeps[model, opt, p], stats[model, opt, p]
            for j, layer in enumerate(res.layers):
                g = _geo_mean(res.update[:, :, STEPS, j].T)  # (widths,)
                (line,) = ax.plot(w, g, "o-", ms=3, lw=1.2, label=f"{layer} ({s['m'][j]:+.2f})")
                ax.plot(w, g[0] * (w / w[0]) ** float(s["first"][j]), ":", color=line.get_color())
            ax.set(xscale="log", yscale="log", xlabel="width n")
            ax.set_xticks(w, [str(n) for n in widths])
            ax.set_xticks([], minor=True)
            ax.set_title(f"{LABELS[model]}, {LABELS[opt]}, {p}: |h_3 - h_0|", fontsize=9)
            if col == 0:
                ax.set_ylabel("update coordinate size")
        _share_y(axes[row])
    fig.tight_layout()
    caption = (
        "The update of every layer after 3 steps (RMS of h_3 - h_0, geometric mean over "
        "seeds) against the width, log-log; in the legend each layer's fitted slope (mean "
        "over seeds). Dotted: the predicted first-order exponent, drawn from the first "
        "width. Left SP, right muP (same y range per row); rows: MLP with SGD, MLP with Adam, "
        "Transformer with Adam."
    )
    return figure("updates", caption, fig)


def _steps_figure(sweeps, widths) -> base.Figure:
    cases = [("mlp", "adam"), ("transformer", "adam")]
    fig, axes = base.new_figure(
        ncols=len(PARAMETRIZATIONS), nrows=len(cases), width=4.4, height=3.0
    )
    w = np.asarray(widths, np.float64)
    for row, (model, opt) in enumerate(cases):
        for col, p in enumerate(PARAMETRIZATIONS):
            ax, res = axes[row][col], sweeps[model, opt, p]
            j = len(res.layers) - 1  # the output
            g0 = _geo_mean(res.activation[:, :, 0, j].T)
            ax.plot(w, g0, "k--", lw=1, label="|f_0| (init)")
            for t in range(1, STEPS + 1):
                g = _geo_mean(res.update[:, :, t, j].T)
                ax.plot(w, g, "o-", ms=3, lw=1.2, label=f"|f_{t} - f_0|")
            ax.set(xscale="log", yscale="log", xlabel="width n")
            ax.set_xticks(w, [str(n) for n in widths])
            ax.set_xticks([], minor=True)
            ax.set_title(f"{LABELS[model]}, {LABELS[opt]}, {p}: output f", fontsize=9)
            if col == 0:
                ax.set_ylabel("coordinate size")
        _share_y(axes[row])
    fig.tight_layout()
    caption = (
        "The output's change after each of the 3 steps (RMS of f_t - f_0, geometric mean over "
        "seeds) and its size at init (dashed) against the width, as in Fig. 5 of Yang et al. "
        "2022, with Adam. Under muP the change after every step is the same at every width "
        "and the output at init falls as n^-1/2 (its readout has Var(w) = 1/fan_in^2); under "
        "SP the change grows like n^3/2 from the same value at the base width 64."
    )
    return figure("steps", caption, fig)


def _share_y(axes) -> None:
    """The same y range on every axis of a row (log scale), so SP and muP compare."""
    lows, highs = zip(*(ax.get_ylim() for ax in axes), strict=True)
    for ax in axes:
        ax.set_ylim(min(lows), max(highs))

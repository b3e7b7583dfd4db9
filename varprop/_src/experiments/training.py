r"""Training experiments: deep ReLU training with Xavier vs He, Fixup at depth 10,000, and
standardizing data with the training split's statistics.

Three classic claims about initialization and data, each measured in jitted JAX (``lax.scan`` over layers and
over training steps) and set beside the variance law that predicts it:

* ``deep_training`` -- a 30-layer ReLU MLP trained with SGD + momentum: He (Var(w) = 2/n)
  trains, Xavier (Var(w) = 1/n) stalls, because every layer multiplies E[z^2] by
  :math:`n\,\mathrm{Var}(w)\,E[\mathrm{relu}(z)^2]/q` = 1 (He) or 1/2 (Xavier).
* ``fixup`` -- a residual MLP of 10,000 blocks without normalization stays finite and trains
  with Fixup (Zhang, Dauphin & Ma, ICLR 2019); with He init in each branch E[x^2] triples per
  block and float32 overflows at the block the law predicts.
* ``data_standardization`` -- validation data standardized with the training split's mean and
  std: train exactly 0/1, validation off by sampling error only; its own statistics or none at
  all cost accuracy.
"""

from __future__ import annotations

import math
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sympy as sp

from varprop import initializers as I
from varprop import laws
from varprop._src.data import (
    Dataset,
    Split,
    load_classification,
    near,
    standardize_split,
)
from varprop._src.experiments.base import (
    Claim,
    ExperimentResult,
    Figure,
    Law,
    Row,
    RunConfig,
    experiment,
    figure_png,
    new_figure,
)

Array = jax.Array

#: Fraction of the data held out for validation in every experiment here.
VALID_FRACTION = 0.2


def _law(label: str, expr: Any) -> Law:
    """A :class:`Law` from a SymPy expression or equation (LaTeX rendered by SymPy)."""
    return Law(label, laws.latex(expr), sp.sstr(expr))


def _data(cfg: RunConfig, seed: int) -> tuple[Dataset, Split]:
    ds = load_classification(cfg.data_dir)
    return ds, standardize_split(ds.x, ds.y, VALID_FRACTION, seed=seed)


def _data_note(ds: Dataset) -> str:
    return f"Data: {ds.note}."


# =========================================================================================
# 8. deep_training: a 30-layer ReLU MLP, Xavier vs He, trained with SGD + momentum
# =========================================================================================

DEPTH = 30


def _init_mlp(key: Array, init: I.Initializer, d_in: int, width: int, n_out: int) -> dict:
    """Parameters of a ``d_in -> width x (DEPTH-1) -> n_out`` MLP; hidden layers stacked.

    Biases are ``(1, n)`` rows so that adding them needs no rank promotion.

    Layer l's weights come from ``fold_in(key, l)`` whatever the initializer, so two
    initializers of the same distribution draw the *same* normals, only scaled differently.
    """
    hidden = [
        init(jax.random.fold_in(key, l), (width, width), jnp.float32) for l in range(1, DEPTH - 1)
    ]
    return {
        "W_in": init(jax.random.fold_in(key, 0), (d_in, width), jnp.float32),
        "b_in": jnp.zeros((1, width), jnp.float32),
        "W_h": jnp.stack(hidden),
        "b_h": jnp.zeros((DEPTH - 2, 1, width), jnp.float32),
        "W_out": init(jax.random.fold_in(key, DEPTH - 1), (width, n_out), jnp.float32),
        "b_out": jnp.zeros((1, n_out), jnp.float32),
    }


def _mlp_forward(p: dict, x: Array) -> tuple[Array, Array]:
    """Logits and the per-layer E[z^2] (mean over batch and units) of the 30 layers."""
    z = x @ p["W_in"] + p["b_in"]

    def body(z, wb):
        w, b = wb
        z2 = jax.nn.relu(z) @ w + b
        return z2, jnp.mean(jnp.square(z2))

    q_first = jnp.mean(jnp.square(z))
    z, q_hidden = jax.lax.scan(body, z, (p["W_h"], p["b_h"]))
    logits = jax.nn.relu(z) @ p["W_out"] + p["b_out"]
    q = jnp.concatenate([q_first[None], q_hidden, jnp.mean(jnp.square(logits))[None]])
    return logits, q


def _ce(p: dict, x: Array, y: Array) -> Array:
    logits, _ = _mlp_forward(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _layer_grad_moments(g: dict) -> Array:
    """E[(dL/dW_l)^2] of the 30 weight matrices, in order."""
    return jnp.concatenate(
        [
            jnp.mean(jnp.square(g["W_in"]))[None],
            jnp.mean(jnp.square(g["W_h"]), axis=(1, 2)),
            jnp.mean(jnp.square(g["W_out"]))[None],
        ]
    )


def _running_mean(v: np.ndarray, k: int) -> np.ndarray:
    c = np.cumsum(np.insert(np.asarray(v, np.float64), 0, 0.0))
    out = np.empty(len(v))
    for i in range(len(v)):
        lo = max(0, i + 1 - k)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def _far_slower(fast: int | None, slow_step: int | None, factor: int) -> bool:
    """``fast`` reached the threshold, and ``slow_step`` did not or ``factor`` times later."""
    if fast is None:
        return False
    return slow_step is None or slow_step >= factor * fast


def _first_below(v: np.ndarray, threshold: float) -> int | None:
    idx = np.flatnonzero(v < threshold)
    return int(idx[0]) + 1 if idx.size else None


@experiment("deep_training", "Training a 30-layer ReLU MLP: Xavier stalls, He trains", order=8)
def run_deep_training(cfg: RunConfig) -> ExperimentResult:
    r"""Train the same 30-layer ReLU MLP from Xavier and from He init, everything else equal.

    The law (He et al., "Delving Deep into Rectifiers", ICCV 2015; Glorot & Bengio, AISTATS
    2010): a layer maps :math:`q_{l-1} = E[z_{l-1}^2]` to

    .. math:: q_l = n\,\mathrm{Var}(w)\,E[\mathrm{relu}(z_{l-1})^2]
              = n\,\mathrm{Var}(w)\,q_{l-1}/2,

    a factor 1 for He (Var(w) = 2/n) and 1/2 for Xavier in its 1/fan_in form (Caffe's 'xavier')
    (Var(w) = 1/n = :func:`~varprop.initializers.xavier_fan_in_normal`; Glorot's averaged-fan
    form is the same on the 28 square hidden layers). After 30 layers Xavier's logits carry
    :math:`2^{-30}` of He's second moment, and since the backward factor is the same 1/2,
    every layer's weight gradient :math:`h_{l-1}\otimes\delta_l` carries
    :math:`2^{-(l-1)}\cdot 2^{-(30-l)} = 2^{-29}` of He's, whatever l.

    Controlled comparison: both networks draw the *same* normals (Xavier = He / sqrt(2),
    layer by layer), see the same mini-batches in the same order, and use the same optimizer:
    SGD with momentum 0.9 and one learning rate. SGD is chosen on purpose: its step is
    proportional to the gradient, so a gradient :math:`2^{-14.5}` times smaller in scale is a
    step that much smaller. Adam divides each coordinate by its running RMS, which undoes
    the gradient's scale, and would hide the contrast the law predicts.

    Quick mode: width 128, 200 steps of batch 128; full mode: 1,200 steps.
    """
    width, batch = 128, 128
    steps, chunk = (200, 40) if cfg.quick else (1200, 100)
    lr, momentum = 5e-3, 0.9
    ds, split = _data(cfg, cfg.seed)
    d_in = split.x_train.shape[1]
    inits = {"He": I.he_normal(), "Xavier": I.xavier_fan_in_normal()}
    names = list(inits)

    # -- the law ---------------------------------------------------------------------------
    relu_factor = {k: laws.layer_factors(v.scheme, "relu").forward_square for k, v in inits.items()}
    first_factor = {
        k: sp.simplify(
            cast(sp.Expr, laws.forward_law(v.scheme).rhs.subs(laws.symbols.bias_variance, 0))
        )
        for k, v in inits.items()
    }
    l_sym, big_l = sp.symbols("l L", positive=True, integer=True)
    fwd_ratio = sp.simplify(
        first_factor["Xavier"]
        / first_factor["He"]
        * (relu_factor["Xavier"] / relu_factor["He"]) ** (l_sym - 1)
    )
    grad_ratio = sp.simplify(
        (fwd_ratio.subs(l_sym, l_sym - 1))
        * (relu_factor["Xavier"] / relu_factor["He"]) ** (big_l - l_sym)
    )
    grad_ratio_30 = sp.nsimplify(grad_ratio.subs(big_l, DEPTH))
    pred_log2_out = float(sp.log(fwd_ratio.subs(l_sym, DEPTH), 2))
    pred_log2_grad = float(sp.log(grad_ratio_30, 2))
    q_in = float(np.mean(np.square(split.x_train), dtype=np.float64))
    pred_q = {
        k: np.array(
            [
                float(cast(sp.Expr, first_factor[k].subs(laws.symbols.input_second_moment, q_in)))
                * float(relu_factor[k]) ** (l - 1)
                for l in range(1, DEPTH + 1)
            ]
        )
        for k in names
    }

    # -- the networks and the training loop (both inits vmapped in one program) ------------
    key = jax.random.key(cfg.seed)
    k_init = jax.random.fold_in(key, 1)
    params = jax.tree.map(
        lambda *a: jnp.stack(a),
        *[_init_mlp(k_init, inits[k], d_in, width, ds.n_classes) for k in names],
    )
    opt = optax.sgd(lr, momentum=momentum)
    opt_state = jax.vmap(opt.init)(params)
    xt, yt = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    xv, yv = jnp.asarray(split.x_valid), jnp.asarray(split.y_valid)

    # The law's backward pass starts from the same output gradient for both nets: the probe
    # loss sum(logits * v) with a fixed Gaussian v (DESIGN 4). Cross-entropy's own gradient is
    # measured too: at Xavier's near-zero logits the softmax is uniform, so dL/dlogits averages
    # to almost nothing over a batch whose deep representations are nearly parallel.
    v_probe = jax.random.normal(jax.random.fold_in(key, 2), (512, ds.n_classes), jnp.float32)

    def probe_loss(pp, xb):
        logits, _ = _mlp_forward(pp, xb)
        return jnp.sum(logits * v_probe)

    @jax.jit
    def init_stats(p):
        xb, yb = xt[:512], yt[:512]

        def one(pp):
            _, q = _mlp_forward(pp, xb)
            g = jax.grad(probe_loss)(pp, xb)
            g_ce = jax.grad(_ce)(pp, xb, yb)
            return q, _layer_grad_moments(g), _layer_grad_moments(g_ce)

        return jax.vmap(one)(p)

    q_meas, g_meas, g_ce = (np.asarray(a, np.float64) for a in init_stats(params))

    def step(carry, idx):
        p, s = carry
        xb, yb = xt[idx], yt[idx]

        def one(pp, ss):
            loss, g = jax.value_and_grad(_ce)(pp, xb, yb)
            upd, ss = opt.update(g, ss, pp)
            return optax.apply_updates(pp, upd), ss, loss

        p, s, loss = jax.vmap(one)(p, s)
        return (p, s), loss

    @jax.jit
    def run_chunk(p, s, idx):
        (p, s), losses = jax.lax.scan(step, (p, s), idx)
        return p, s, losses

    @jax.jit
    def evaluate(p):
        def one(pp):
            logits, _ = _mlp_forward(pp, xv)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yv).mean()
            return loss, jnp.mean((jnp.argmax(logits, axis=-1) == yv).astype(jnp.float32))

        return jax.vmap(one)(p)

    rng = np.random.default_rng(cfg.seed)
    n_train = len(split.x_train)
    order = np.concatenate([rng.permutation(n_train) for _ in range(steps * batch // n_train + 1)])
    order = order[: steps * batch].reshape(steps, batch).astype(np.int32)
    losses, eval_steps, v_loss, v_acc = [], [0], [], []
    l0, a0 = evaluate(params)
    v_loss.append(np.asarray(l0))
    v_acc.append(np.asarray(a0))
    for start in cfg.progress(range(0, steps, chunk), total=steps // chunk, desc="deep_training"):
        params, opt_state, ls = run_chunk(
            params, opt_state, jnp.asarray(order[start : start + chunk])
        )
        losses.append(np.asarray(ls))
        lv, av = evaluate(params)
        eval_steps.append(start + chunk)
        v_loss.append(np.asarray(lv))
        v_acc.append(np.asarray(av))
    train_loss = np.concatenate(losses).astype(np.float64)  # (steps, 2)
    v_loss_a, v_acc_a = np.array(v_loss, np.float64), np.array(v_acc, np.float64)

    # -- numbers and claims ----------------------------------------------------------------
    he, xa = 0, 1
    tail = max(1, steps // 10)
    final = train_loss[-tail:].mean(axis=0)
    smooth = np.stack([_running_mean(train_loss[:, j], 20) for j in range(2)], axis=1)
    threshold = 1.0
    reach = [_first_below(smooth[:, j], threshold) for j in range(2)]
    chance = math.log(ds.n_classes)
    meas_log2_out = float(np.log2(q_meas[xa, -1] / q_meas[he, -1]))
    log2_grad = np.log2(g_meas[xa] / g_meas[he])
    log2_grad_ce = np.log2(g_ce[xa] / g_ce[he])
    he_drift = float(np.log(q_meas[he, -2] / q_meas[he, 0]))
    # End-to-end spread of log q_L in a ReLU net of widths n_l: Var ~ 5 sum 1/n_l (DESIGN 3).
    he_tol = 3.0 * math.sqrt(5.0 * (DEPTH - 2) / width)
    # Judgement margins, not derived from a law: "far slower" means at least 4x as many
    # steps to reach loss 1, and He's final validation accuracy must beat Xavier's by 0.15.
    # They were fixed after the first full run (145 vs 1005 steps; accuracy 0.939 vs 0.734),
    # so that run is not evidence for them; later seeds and quick runs are.
    margin_acc, slow = 0.15, 4

    rows = [
        Row("per-layer forward factor, He", "1", f"{float(relu_factor['He'])}", "law (exact)"),
        Row("per-layer forward factor, Xavier", "1/2", f"{float(relu_factor['Xavier'])}", ""),
        Row(
            "log2 E[logits^2] Xavier / He at init",
            f"{pred_log2_out:.2f}",
            f"{meas_log2_out:.3f}",
            "same normals, so exact up to rounding",
        ),
        Row(
            "log2 E[(dL/dW_l)^2] Xavier / He, probe loss sum(y v), every layer",
            f"{pred_log2_grad:.1f}",
            f"{log2_grad.min():.3f} .. {log2_grad.max():.3f}",
            "same output gradient for both nets",
        ),
        Row(
            "log2 E[(dL/dW_l)^2] Xavier / He, cross-entropy, median over layers",
            f"<= {pred_log2_grad:.0f}",
            f"{float(np.median(log2_grad_ce)):.2f} ({log2_grad_ce.min():.2f} .. "
            f"{log2_grad_ce.max():.2f})",
            "a uniform softmax makes dL/dlogits average out over the batch: smaller still",
        ),
        Row(
            "ln(q_29 / q_1), He at init",
            "0",
            f"{he_drift:+.2f}",
            f"finite-width spread: +-{he_tol:.2f} (3 sigma)",
        ),
        Row(
            f"train loss, mean of last {tail} steps: He / Xavier",
            "He < Xavier",
            f"{final[he]:.3f} / {final[xa]:.3f}",
            f"chance = ln 10 = {chance:.3f}",
        ),
        Row(
            f"steps until the 20-step mean loss < {threshold}: He / Xavier",
            f"Xavier >= {slow}x He's, or never",
            f"{reach[he]} / {reach[xa] if reach[xa] else f'not in {steps}'}",
        ),
        Row(
            "validation accuracy at the end: He / Xavier",
            f"He > Xavier + {margin_acc}",
            f"{v_acc_a[-1, he]:.3f} / {v_acc_a[-1, xa]:.3f}",
            f"{len(split.x_valid)} validation images",
        ),
    ]
    claims = [
        Claim(
            "With Xavier (Var(w) = 1/n) every ReLU layer halves E[z^2]: after 30 layers the "
            "logits carry 2^-30 of He's second moment",
            abs(meas_log2_out - pred_log2_out) <= 0.01,
            f"measured log2 ratio {meas_log2_out:.4f} vs predicted {pred_log2_out:.0f} "
            "(tolerance 0.01 octave)",
        ),
        Claim(
            "Every layer's weight gradient is 2^-29 times smaller (in second moment) with "
            "Xavier than with He, for the same output gradient; with cross-entropy smaller still",
            bool(
                np.all(np.abs(log2_grad - pred_log2_grad) <= 0.01)
                and np.median(log2_grad_ce) <= pred_log2_grad + 1.0
            ),
            f"probe loss: every layer's log2 ratio in [{log2_grad.min():.3f}, "
            f"{log2_grad.max():.3f}] vs {pred_log2_grad:.0f} (tolerance 0.01 octave); "
            f"cross-entropy: median {float(np.median(log2_grad_ce)):.2f} <= {pred_log2_grad:.0f} + 1",
        ),
        Claim(
            "He keeps E[z^2] at its first-layer value through the ReLU layers",
            abs(he_drift) <= he_tol,
            f"ln(q_29/q_1) = {he_drift:+.2f}, inside the 3-sigma finite-width band +-{he_tol:.2f}",
        ),
        Claim(
            f"Xavier trains far slower: He's 20-step mean loss falls below {threshold} at "
            f"least {slow}x sooner than Xavier's (or Xavier's never does within the budget)",
            _far_slower(reach[he], reach[xa], slow),
            f"He at step {reach[he]}, Xavier "
            f"{'never' if reach[xa] is None else f'at step {reach[xa]}'} in {steps} steps",
        ),
        Claim(
            "When He has trained (its 20-step mean loss first below "
            f"{threshold}), Xavier's loss has not left chance (within 0.05 nat of ln 10)",
            bool(reach[he] is not None and abs(smooth[reach[he], xa] - chance) <= 0.05),
            "Xavier's 20-step mean loss at that step: "
            + (f"{smooth[reach[he], xa]:.3f}" if reach[he] is not None else "n/a")
            + f" (chance {chance:.3f}); final losses He {final[he]:.3f}, Xavier {final[xa]:.3f}",
        ),
        Claim(
            f"He ends the budget with a validation accuracy higher than Xavier's by more than "
            f"{margin_acc}",
            bool(v_acc_a[-1, he] - v_acc_a[-1, xa] > margin_acc),
            f"He {v_acc_a[-1, he]:.3f}, Xavier {v_acc_a[-1, xa]:.3f}",
        ),
    ]

    # -- figures ---------------------------------------------------------------------------
    colors = {"He": "tab:blue", "Xavier": "tab:red"}
    fig, ax = new_figure(ncols=2, width=5.2)
    st = np.arange(1, steps + 1)
    for j, k in enumerate(names):
        ax[0, 0].plot(st, train_loss[:, j], color=colors[k], alpha=0.25, lw=0.8)
        ax[0, 0].plot(st, smooth[:, j], color=colors[k], lw=1.8, label=f"{k}: train (20-step mean)")
        ax[0, 0].plot(eval_steps, v_loss_a[:, j], "o--", color=colors[k], ms=4, label=f"{k}: valid")
        ax[0, 1].plot(eval_steps, v_acc_a[:, j], "o-", color=colors[k], ms=4, label=k)
    ax[0, 0].axhline(chance, color="gray", ls=":", lw=1, label="chance, ln 10")
    ax[0, 0].set(xlabel="SGD step", ylabel="cross-entropy loss", title="loss")
    ax[0, 0].legend(fontsize=7)
    ax[0, 1].axhline(0.1, color="gray", ls=":", lw=1, label="chance")
    ax[0, 1].set(xlabel="SGD step", ylabel="validation accuracy", title="validation accuracy")
    ax[0, 1].set_ylim(0, 1)
    ax[0, 1].legend(fontsize=7)
    fig_curves = Figure(
        "deep_training_curves",
        f"Training a 30-layer ReLU MLP (width {width}) on {ds.source} with SGD + momentum from "
        "He (blue) and Xavier (red) init, same normals and same batches. Left: training loss "
        "per step (faint) and its 20-step mean, validation loss (dashed). Right: validation "
        "accuracy. Xavier stays at chance; He trains.",
        figure_png(fig),
    )
    fig, ax = new_figure(ncols=2, width=5.2)
    layers = np.arange(1, DEPTH + 1)
    for j, k in enumerate(names):
        ax[0, 0].plot(layers, np.log2(q_meas[j]), "o", color=colors[k], ms=4, label=f"{k} measured")
        ax[0, 0].plot(layers, np.log2(pred_q[k]), "-", color=colors[k], lw=1, label=f"{k} law")
        ax[0, 1].plot(
            layers, np.log2(g_meas[j]), "o-", color=colors[k], ms=4, label=f"{k}, sum(y v)"
        )
        ax[0, 1].plot(
            layers, np.log2(g_ce[j]), "x:", color=colors[k], ms=4, label=f"{k}, cross-ent."
        )
    ax[0, 0].set(xlabel="layer l", ylabel="log2 E[z_l^2]", title="forward, at init")
    ax[0, 0].legend(fontsize=7)
    ax[0, 1].set(xlabel="layer l", ylabel="log2 E[(dL/dW_l)^2]", title="weight gradients, at init")
    ax[0, 1].legend(fontsize=7)
    fig_init = Figure(
        "deep_training_init",
        "At init, on 512 training images. Left: log2 of each layer's E[z^2], measured (dots) "
        "and the law (lines): flat for He, one octave down per layer for Xavier. Right: log2 "
        "of each layer's weight-gradient second moment for the probe loss sum(y v) (dots: Xavier "
        "exactly 29 octaves below He in every layer) and for cross-entropy (crosses: further "
        "below, the uniform softmax's gradient averages out over the batch).",
        figure_png(fig),
    )

    notes = [
        _data_note(ds),
        f"{DEPTH} weight layers: {d_in} -> {width} x {DEPTH - 1} -> {ds.n_classes}, ReLU after "
        "each hidden layer, zero biases. Xavier here is the 1/fan_in form Var(w) = 1/n_in "
        "(xavier_fan_in_normal).",
        f"SGD, lr {lr}, momentum {momentum}, batch {batch}, {steps} steps; the train/valid split "
        "and standardization use the training split's mean and std.",
    ]
    return ExperimentResult(
        name="deep_training",
        title="Training a 30-layer ReLU MLP: Xavier stalls, He trains",
        summary=(
            f"The same 30-layer ReLU MLP, trained for {steps} SGD steps: from He init its training "
            f"loss falls to {final[he]:.2f} and it reaches {v_acc_a[-1, he]:.0%} validation "
            f"accuracy; from Xavier init the loss stays at {final[xa]:.3f} (chance "
            f"{chance:.3f}). The law says why: a ReLU layer passes on half of E[z^2], Xavier "
            "does not make up for it, so the signal shrinks by 2^-30 forward and every weight "
            "gradient by 2^-29."
        ),
        laws=[
            _law("forward law of one layer", laws.forward_law()),
            _law("He: per-layer factor n Var(w) E[relu(z)^2]/q", relu_factor["He"]),
            _law("Xavier (1/n): per-layer factor", relu_factor["Xavier"]),
            _law("E[z_l^2] ratio Xavier/He after l layers", fwd_ratio),
            _law("weight-gradient ratio Xavier/He in every layer of an L-layer net", grad_ratio),
        ],
        rows=rows,
        claims=claims,
        figures=[fig_curves, fig_init],
        notes=notes,
        data={
            "train_loss": train_loss,
            "eval_steps": np.array(eval_steps),
            "valid_loss": v_loss_a,
            "valid_accuracy": v_acc_a,
            "init_q": q_meas,
            "init_q_predicted": np.stack([pred_q[k] for k in names]),
            "init_grad_moments": g_meas,
            "init_grad_moments_ce": g_ce,
            "inits": np.array(names),
            "source": np.array(ds.source),
        },
    )


# =========================================================================================
# 11. fixup: a residual MLP of 10,000 blocks without normalization
# =========================================================================================

FIXUP_BLOCKS = 10_000


def _branch_factor(init1: I.Initializer | None, init2: I.Initializer | None) -> sp.Expr:
    """E[branch(x)^2] / E[x^2] for the branch W2 relu(W1 x), both layers square (n x n).

    First layer: the forward law n Var(w1) E[x^2]; ReLU keeps half (E[relu(z)^2] = q/2, from
    :func:`varprop.laws.layer_factors`); second layer: n Var(w2). ``None`` is a zero layer.
    """
    n = laws.symbols.fan_in
    sq: dict[sp.Basic | complex, sp.Basic | complex] = {laws.symbols.fan_out: n}
    if init1 is None or init2 is None:
        return sp.Integer(0)
    first = sp.simplify(laws.forward_law(init1.scheme).rhs.subs(laws.symbols.bias_variance, 0))
    first = first.subs(laws.symbols.input_second_moment, 1)
    relu_then_second = laws.layer_factors(init2.scheme, "relu").forward
    return sp.simplify(cast(sp.Expr, (first * relu_then_second).subs(sq)))


def _fixup_forward(p: dict, x: Array) -> tuple[Array, Array, Array]:
    """Logits, and per block: E[x_l^2] over the batch and whether x_l is all finite."""
    h0 = x @ p["W_in"]

    def body(h, ww):
        w1, w2 = ww
        h = h + jax.nn.relu(h @ w1) @ w2
        return h, (jnp.mean(jnp.square(h)), jnp.all(jnp.isfinite(h)))

    h, (q, finite) = jax.lax.scan(body, h0, (p["W1"], p["W2"]))
    q = jnp.concatenate([jnp.mean(jnp.square(h0))[None], q])
    return h @ p["W_out"] + p["b_out"], q, finite


def _fixup_loss(p: dict, x: Array, y: Array) -> Array:
    logits, _, _ = _fixup_forward(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _stacked(init: I.Initializer, key: Array, count: int, n: int) -> Array:
    """``count`` independent ``(n, n)`` draws of ``init`` (fans from the matrix, not the stack)."""
    return jax.vmap(lambda k: init(k, (n, n), jnp.float32))(jax.random.split(key, count))


def _first_nonfinite_he(
    keys: Array, x: Array, w_in: Array, n: int, blocks: int
) -> tuple[Array, Array]:
    """He init in every branch layer: per sample, the first block whose output is not finite.

    The blocks' weights are drawn on the fly from ``fold_in(key, block)``, and a
    ``while_loop`` stops once every sample has overflowed, so the cost is that of the first
    couple of hundred blocks, not of all ``blocks``. Returns ``(first block (1-based; blocks+1
    if never), log E[x_0^2] per sample)``; vmapped over ``keys``.
    """
    he = I.he_normal()

    def one(key):
        h0 = x @ w_in
        first0 = jnp.full((x.shape[0],), blocks + 1, jnp.int32)

        def cond(c):
            l, _, first = c
            return (l < blocks) & jnp.any(first > blocks)

        def body(c):
            l, h, first = c
            k = jax.random.fold_in(key, l)
            w1 = he(jax.random.fold_in(k, 0), (n, n), jnp.float32)
            w2 = he(jax.random.fold_in(k, 1), (n, n), jnp.float32)
            h = h + jax.nn.relu(h @ w1) @ w2
            bad = ~jnp.all(jnp.isfinite(h), axis=1)
            first = jnp.where(bad & (first > blocks), l + 1, first)
            return l + 1, h, first

        _, _, first = jax.lax.while_loop(cond, body, (jnp.int32(0), h0, first0))
        return first, jnp.log(jnp.mean(jnp.square(h0), axis=1))

    return jax.vmap(one)(keys)


def _he_block_law_samples(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    r"""Draws of ln r, r = |x + W2 relu(W1 x)|^2 / |x|^2 for He-normal n x n W1, W2.

    Exact for Gaussian weights at width n, whatever x (rotation invariance): with
    :math:`H = |h|^2/|x|^2 = (2/n)\sum_{i\le n}\mathrm{relu}(g_i)^2`,
    :math:`r = (1 + \sqrt{2H/n}\,g_0)^2 + (2H/n)\,\chi^2_{n-1}`; E[r] = 3 (the mean-field law),
    but E[ln r] < ln 3 by an amount of order 1/n.
    """
    a = np.square(np.maximum(rng.standard_normal((count, n)), 0.0)).sum(axis=1)
    h = 2.0 * a / n
    r = np.square(1.0 + np.sqrt(2.0 * h / n) * rng.standard_normal(count))
    r += (2.0 * h / n) * rng.chisquare(n - 1, count)
    return np.log(r)


def _max_entry_samples(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of ln(max_j g_j^2 / mean_j g_j^2) for n i.i.d. normals (a row's largest entry)."""
    g2 = np.square(rng.standard_normal((count, n)))
    return np.log(g2.max(axis=1) / g2.mean(axis=1))


def _predict_first_overflow(
    log_q0: np.ndarray, n: int, rng: np.random.Generator, paths: int = 8, horizon: int = 1000
) -> np.ndarray:
    """The block at which each sample's row first leaves float32, by the finite-width law.

    Per sample: ln(|x_l|^2/n) is a random walk with i.i.d. steps ln r (above); the row
    overflows when its largest entry squared, (|x_l|^2/n) * kappa, passes FLOAT32_MAX^2.
    ``paths`` walks per sample; returns the mean first block per sample.
    """
    bank_r = _he_block_law_samples(n, 200_000, rng)
    bank_k = _max_entry_samples(n, 200_000, rng)
    barrier = 2.0 * math.log(laws.FLOAT32_MAX)
    start = np.repeat(np.asarray(log_q0, np.float64).ravel(), paths)
    steps = rng.choice(bank_r, size=(start.size, horizon))
    walk = start[:, None] + np.cumsum(steps, axis=1)
    over = walk + rng.choice(bank_k, size=walk.shape) >= barrier
    first = np.where(over.any(axis=1), over.argmax(axis=1) + 1, horizon + 1)
    return first.reshape(-1, paths).mean(axis=1).reshape(np.shape(log_q0))


@experiment("fixup", "Fixup: a 10,000-block residual MLP without normalization", order=11)
def run_fixup(cfg: RunConfig) -> ExperimentResult:
    r"""A residual MLP of 10,000 blocks, :math:`x_{l+1} = x_l + W_2\,\mathrm{relu}(W_1 x_l)`,
    with no normalization: Fixup keeps it finite and trainable; He init explodes it.

    The net: an input layer (LeCun normal, Var = 1/n_in), **10,000 residual blocks** of two
    ``n x n`` layers each (m = 2, so 20,000 layers inside the branches), a linear classifier;
    no biases in the blocks and no scalar multipliers (Fixup's optional extras). Blocks run
    under ``lax.scan``, so compile time does not depend on the depth.

    The law: since W2 is independent of x with zero mean, the cross term vanishes and

    .. math:: E[x_{l+1}^2] = E[x_l^2]\,\bigl(1 + n\mathrm{Var}(w_1)\cdot\tfrac12\cdot
              n\mathrm{Var}(w_2)\bigr).

    *He in both branch layers*: the factor is 1 + 2 = 3 per block, so float32 overflows after
    about :math:`2\ln(3.4\cdot10^{38})/\ln 3 \approx 162` blocks. That is the growth of the
    *mean* E[x^2]; at finite width n one sample's |x_l|^2 is a random walk in log scale with
    i.i.d. steps ln r, E[r] = 3 but E[ln r] < ln 3 (Jensen), so the typical sample overflows a
    few blocks later. The experiment predicts the first non-finite block of each sample from
    that law (walk plus the largest of n Gaussian entries) and measures it over many seeds.

    *Fixup* (Zhang, Dauphin & Ma, "Fixup Initialization: Residual Learning Without
    Normalization", ICLR 2019): the branch's last layer and the classifier start at zero, the
    other m - 1 branch layers are He scaled by :math:`L^{-1/(2m-2)}` in std
    (:func:`varprop.initializers.fixup`). At init every block is the identity (factor exactly
    1); had the last layer been He too, the factor would be :math:`1 + 2/L`, and
    :math:`(1 + 2/L)^L \to e^2`: bounded at any depth. Training with SGD makes the blocks
    active; a few steps decrease the loss and keep every value finite.
    """
    blocks = FIXUP_BLOCKS
    width, batch = 32, 32
    train_steps = 6  # "a few steps": 20 at lr 0.1 diverged in a full run (loss 2.30 -> 10.3)
    seeds, per_seed = (256, 4) if cfg.quick else (1024, 4)
    lr, momentum = 0.1, 0.9
    ds, split = _data(cfg, cfg.seed)
    d_in = split.x_train.shape[1]
    key = jax.random.key(cfg.seed)
    k_in, k_w1, k_he, k_batch = (jax.random.fold_in(key, i) for i in range(4))

    # -- the law -----------------------------------------------------------------------------
    he, fx = I.he_normal(), I.fixup(blocks, 2)
    n_sym = laws.symbols.fan_in
    big_l = laws.symbols.depth
    he_branch = _branch_factor(he, he)
    he_block = 1 + he_branch
    fixup_block = 1 + _branch_factor(fx, None)
    # Fixup's first branch layer with the depth left symbolic, followed by an He last layer:
    var_w1 = fx.scheme.variance_expr.subs(
        {laws.symbols.gain: sp.sqrt(2), laws.symbols.branch_layers: 2}
    )
    scaled_block = sp.simplify(1 + n_sym * var_w1 * sp.Rational(1, 2) * 2)
    bounded = sp.limit(scaled_block**big_l, big_l, sp.oo)

    # -- Fixup: init, a few SGD steps --------------------------------------------------------
    params = {
        "W_in": I.lecun_normal()(k_in, (d_in, width), jnp.float32),
        "W1": _stacked(fx, k_w1, blocks, width),
        "W2": jnp.zeros((blocks, width, width), jnp.float32),
        "W_out": jnp.zeros((width, ds.n_classes), jnp.float32),
        "b_out": jnp.zeros((1, ds.n_classes), jnp.float32),
    }
    x_eval = jnp.asarray(split.x_valid[:256])
    y_eval = jnp.asarray(split.y_valid[:256])

    @jax.jit
    def evaluate(p):
        logits, q, finite = _fixup_forward(p, x_eval)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_eval).mean()
        return loss, q, finite

    opt = optax.sgd(lr, momentum=momentum)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(p, s, idx):
        xb, yb = jnp.asarray(split.x_train)[idx], jnp.asarray(split.y_train)[idx]
        loss, g = jax.value_and_grad(_fixup_loss)(p, xb, yb)
        upd, s = opt.update(g, s, p)
        p = optax.apply_updates(p, upd)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(p)]))
        return p, s, loss, finite

    loss0, q_init, fin_init = (np.asarray(a) for a in evaluate(params))
    batches = np.asarray(
        jax.random.randint(k_batch, (train_steps, batch), 0, len(split.x_train), jnp.int32)
    )
    train_losses, params_finite = [], []
    for t in cfg.progress(range(train_steps), total=train_steps, desc="fixup: SGD steps"):
        params, opt_state, loss, fin = train_step(params, opt_state, jnp.asarray(batches[t]))
        train_losses.append(float(loss))
        params_finite.append(bool(fin))
    loss1, q_trained, fin_trained = (np.asarray(a) for a in evaluate(params))
    w2_rms = float(jnp.sqrt(jnp.mean(jnp.square(params["W2"]))))
    del params, opt_state

    # -- He in every branch layer: where float32 gives out -----------------------------------
    x_he = jnp.asarray(split.x_train[:per_seed])
    w_in = I.lecun_normal()(k_in, (d_in, width), jnp.float32)
    first = []
    log_q0 = []
    chunk = 64
    for c in cfg.progress(range(0, seeds, chunk), total=seeds // chunk, desc="fixup: He blow-up"):
        keys = jax.random.split(jax.random.fold_in(k_he, c), chunk)
        f, lq = jax.jit(_first_nonfinite_he, static_argnums=(3, 4))(keys, x_he, w_in, width, blocks)
        first.append(np.asarray(f))
        log_q0.append(np.asarray(lq, np.float64))
    first_a = np.concatenate(first).astype(np.float64)  # (seeds, per_seed)
    log_q0_a = np.concatenate(log_q0)
    pred_first = _predict_first_overflow(log_q0_a, width, np.random.default_rng(cfg.seed))
    meas_mean, pred_mean = float(first_a.mean()), float(pred_first.mean())
    seed_means = first_a.mean(axis=1)
    meas_se = float(seed_means.std(ddof=1) / math.sqrt(seeds))
    mf_kind, mf_block = laws.float32_limit_layer(float(he_block), float(np.exp(log_q0_a).mean()))
    log_r = _he_block_law_samples(width, 200_000, np.random.default_rng(cfg.seed + 1))

    # -- numbers and claims ------------------------------------------------------------------
    ratio_init = float(q_init[-1] / q_init[0])
    ratio_trained = float(q_trained[-1] / q_trained[0])
    all_finite_init = bool(fin_init.all() and np.isfinite(q_init).all())
    all_finite_trained = bool(
        fin_trained.all() and np.isfinite(q_trained).all() and all(params_finite)
    )
    decrease = float(loss0 - loss1)
    min_decrease = 0.05
    rows = [
        Row(
            "blocks / layers in the branches",
            f"{blocks} / {2 * blocks}",
            f"{blocks} / {2 * blocks}",
        ),
        Row(
            "E[x_L^2] / E[x_0^2], Fixup at init",
            f"{float(fixup_block) ** blocks:g}",
            f"{ratio_init:.6f}",
        ),
        Row("all block outputs finite, Fixup at init", "yes", "yes" if all_finite_init else "no"),
        Row(
            f"held-out loss before / after {train_steps} SGD steps (Fixup)",
            f"decreases by > {min_decrease}",
            f"{float(loss0):.4f} / {float(loss1):.4f}",
            f"training-batch losses: {', '.join(f'{v:.3f}' for v in train_losses)}",
        ),
        Row(
            "everything finite after training (params and all block outputs)",
            "yes",
            "yes" if all_finite_trained else "no",
            f"E[x_L^2]/E[x_0^2] = {ratio_trained:.4f}, rms(W2) = {w2_rms:.2e}",
        ),
        Row(
            "He branches: factor on E[x^2] per block",
            f"{he_block}",
            f"E[r] = {np.exp(log_r).mean():.3f}",
            "law sample mean",
        ),
        Row(
            "He branches: E[ln r] per block (finite width)",
            f"ln 3 = {math.log(3):.4f} (mean-field)",
            f"{log_r.mean():.4f} (width {width})",
            "Jensen: the typical sample grows slower than the mean",
        ),
        Row(
            "He branches: first overflow block, mean-field law (typical size sqrt(E[x^2]))",
            f"{mf_block}",
            f"{meas_mean:.2f}",
            f"{mf_kind}; the mean of q, not a typical sample",
        ),
        Row(
            "He branches: first non-finite block, mean over samples (finite-width law)",
            f"{pred_mean:.2f}",
            f"{meas_mean:.2f} +- {meas_se:.2f} (s.e., {seeds} seeds x {per_seed} samples)",
            f"per-sample range {int(first_a.min())} .. {int(first_a.max())}",
        ),
    ]
    claims = [
        Claim(
            f"Fixup keeps a {blocks:,}-block residual MLP finite at init without normalization "
            "(each block starts as the identity)",
            all_finite_init and abs(ratio_init - float(fixup_block) ** blocks) <= 1e-5,
            f"all {blocks} block outputs finite; E[x_L^2]/E[x_0^2] = {ratio_init:.6f} vs "
            f"{float(fixup_block) ** blocks:g} (tolerance 1e-5)",
        ),
        Claim(
            f"The Fixup net trains: {train_steps} SGD steps lower the held-out loss and every "
            "parameter and block output stays finite",
            all_finite_trained and decrease > min_decrease and w2_rms > 0,
            f"held-out loss {float(loss0):.4f} -> {float(loss1):.4f} (decrease {decrease:.4f} > "
            f"{min_decrease}); W2 no longer zero (rms {w2_rms:.2e}); E[x_L^2]/E[x_0^2] = "
            f"{ratio_trained:.4f}",
        ),
        Claim(
            "With He init in each branch, E[x^2] triples per block and float32 overflows at the "
            "block the law predicts (within 1 block)",
            abs(meas_mean - pred_mean) <= 1.0 and bool(np.all(first_a <= blocks)),
            f"mean first non-finite block {meas_mean:.2f} (s.e. {meas_se:.2f}) vs predicted "
            f"{pred_mean:.2f}; every sample overflowed (mean-field law alone: {mf_block})",
        ),
    ]

    # -- figures -----------------------------------------------------------------------------
    fig, ax = new_figure(ncols=2, width=5.2)
    ll = np.arange(blocks + 1)
    ax[0, 0].plot(ll, q_init / q_init[0], color="tab:green", lw=1.5, label="Fixup at init")
    ax[0, 0].plot(
        ll,
        q_trained / q_trained[0],
        color="tab:blue",
        lw=1.5,
        label=f"Fixup after {train_steps} steps",
    )
    bins = np.arange(first_a.min() - 0.5, first_a.max() + 1.5)
    ax[0, 0].set(
        xlabel="residual block l", ylabel="E[x_l^2] / E[x_0^2]", title=f"Fixup, {blocks:,} blocks"
    )
    ax[0, 0].set_xscale("symlog", linthresh=10)
    ax[0, 0].legend(fontsize=7)
    ax[0, 1].hist(first_a.ravel(), bins=bins, color="tab:red", alpha=0.6, label="measured (He)")
    ax[0, 1].hist(
        pred_first.ravel(), bins=bins, histtype="step", color="k", label="finite-width law"
    )
    ax[0, 1].axvline(
        meas_mean, color="tab:red", ls="--", lw=1, label=f"measured mean {meas_mean:.1f}"
    )
    ax[0, 1].axvline(pred_mean, color="k", ls=":", lw=1, label=f"law mean {pred_mean:.1f}")
    ax[0, 1].axvline(mf_block, color="gray", ls="-.", lw=1, label=f"mean-field law {mf_block}")
    ax[0, 1].set(xlabel="first non-finite block", ylabel="samples", title="He in every branch")
    ax[0, 1].legend(fontsize=7)
    fig_main = Figure(
        "fixup",
        f"Left: E[x_l^2]/E[x_0^2] over the {blocks:,} blocks of the Fixup net at init (exactly 1) "
        f"and after {train_steps} SGD steps (finite, near 1). Right: with He init in both "
        "branch layers, the block at which each sample first becomes non-finite "
        f"({seeds} seeds x {per_seed} samples), against the finite-width law's prediction and "
        "the mean-field law's overflow block.",
        figure_png(fig),
    )
    notes = [
        _data_note(ds),
        f"{blocks:,} residual blocks (2 layers each: {2 * blocks:,} layers in the branches) of "
        f"width {width}, input layer {d_in} -> {width}, classifier {width} -> {ds.n_classes}; "
        "no normalization, no block biases, no scalar multipliers.",
        f"Fixup SGD: lr {lr}, momentum {momentum}, batch {batch}, {train_steps} steps; loss "
        "measured on 256 held-out images before and after.",
        "He blow-up: weights drawn per block on the fly (fold_in(key, block)); the loop stops "
        "once every sample is non-finite.",
    ]
    return ExperimentResult(
        name="fixup",
        title="Fixup: a 10,000-block residual MLP without normalization",
        summary=(
            f"A residual MLP of {blocks:,} blocks without normalization: with Fixup every block "
            f"starts as the identity, so the forward pass is finite, and {train_steps} SGD steps "
            f"lower the held-out loss from {float(loss0):.3f} to {float(loss1):.3f} with every "
            f"value finite. With He init in each branch E[x^2] triples per block and float32 "
            f"overflows at block {meas_mean:.1f} on average (law: {pred_mean:.1f}; the "
            f"mean-field law's {mf_block} is the overflow of the mean, reached earlier)."
        ),
        laws=[
            _law("block factor E[x_{l+1}^2]/E[x_l^2], He in both branch layers", he_block),
            _law("block factor, Fixup (last branch layer zero)", fixup_block),
            _law("Fixup's first-layer variance (m = 2, g^2 = 2)", var_w1),
            _law("block factor if the last layer were He too", scaled_block),
            _law("its product over L blocks as L -> oo", bounded),
            _law(
                "He branches: first overflow block (mean-field)",
                sp.ceiling(2 * sp.log(sp.Symbol("FLOAT32_MAX")) / sp.log(he_block)),
            ),
        ],
        rows=rows,
        claims=claims,
        figures=[fig_main],
        notes=notes,
        data={
            "q_init": q_init.astype(np.float64),
            "q_trained": q_trained.astype(np.float64),
            "train_losses": np.array(train_losses),
            "heldout_loss": np.array([float(loss0), float(loss1)]),
            "he_first_nonfinite": first_a,
            "he_first_predicted": pred_first,
            "he_log_q0": log_q0_a,
            "he_mean_field_block": np.array(mf_block),
            "width": np.array(width),
            "blocks": np.array(blocks),
        },
    )


# =========================================================================================
# 12. data_standardization: the validation split uses the training split's mean and std
# =========================================================================================


def _softmax_regression(x: np.ndarray, y: np.ndarray, n_classes: int, steps: int, seed: int):
    """A linear classifier fitted by full-batch SGD + momentum (one jitted ``lax.scan``)."""
    xt, yt = jnp.asarray(x), jnp.asarray(y)
    p = {
        "W": 0.01 * jax.random.normal(jax.random.key(seed), (x.shape[1], n_classes), jnp.float32),
        "b": jnp.zeros((1, n_classes), jnp.float32),
    }
    opt = optax.sgd(0.05, momentum=0.9)  # (optax.adam breaks strict dtype promotion)

    def loss(pp):
        logits = xt @ pp["W"] + pp["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yt).mean()
        return ce + 1e-4 * jnp.sum(jnp.square(pp["W"]))

    @jax.jit
    def fit(pp):
        def step(c, _):
            pp, s = c
            g = jax.grad(loss)(pp)
            u, s = opt.update(g, s, pp)
            return (optax.apply_updates(pp, u), s), None

        (pp, _), _ = jax.lax.scan(step, (pp, opt.init(pp)), None, length=steps)
        return pp

    return fit(p)


def _scores(p: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    logits = jnp.asarray(x) @ p["W"] + p["b"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == jnp.asarray(y)).astype(jnp.float32))
    return float(loss), float(acc)


@experiment("data_standardization", "Standardizing data with the training split's statistics", 12)
def run_data_standardization(cfg: RunConfig) -> ExperimentResult:
    r"""Standardize the validation split with the *training* split's mean and std.

    fast.ai, "Deep learning from the foundations" (lesson 8): subtract the training mean
    :math:`\mu_t` and divide by the training std :math:`\sigma_t` in *both* splits, so they
    live on one scale. Then the training split has mean 0 and std 1 exactly (up to float
    rounding) and the validation split only approximately. With images as the sampling unit
    (pixels of one image are correlated), per-image means :math:`m_i` with spread
    :math:`s_m` and a random split into :math:`n_t + n_v` images give

    .. math:: \mathrm{SE}(\bar x_v) = \frac{s_m}{\sigma_t}\sqrt{\frac1{n_t} + \frac1{n_v}},
              \qquad
              \mathrm{SE}(\mathrm{sd}_v) \approx \frac{s_{2}}{2}\sqrt{\frac1{n_t} + \frac1{n_v}}

    (:math:`s_2` the spread of the per-image mean of the standardized :math:`x^2`; delta
    method), checked here over many random splits. "Close to 0 / 1" is then tested with
    :func:`varprop._src.data.near` and a tolerance of 4 standard errors.

    What goes wrong otherwise, measured with a linear classifier fitted on the standardized
    training split: the validation split standardized with its *own* statistics (the same
    pixel then means something else in each split; drastic for small or shifted batches, e.g.
    a batch of one digit class), or not standardized at all (the inputs the model sees are
    shifted and rescaled). Statistics of train + validation together leak the validation set
    into the preprocessing, by an amount of the order of the standard error above.
    """
    ds, split = _data(cfg, cfg.seed)
    n_t, n_v = len(split.x_train), len(split.x_valid)
    mu_t, sd_t = split.mean, split.std
    xt64 = split.x_train.astype(np.float64)
    xv64 = split.x_valid.astype(np.float64)
    train_mean, train_std = float(xt64.mean()), float(xt64.std())
    valid_mean, valid_std = float(xv64.mean()), float(xv64.std())

    # -- the law: standard errors with images as the sampling unit -------------------------
    s_m, s_2, sig, nt, nv = sp.symbols("s_m s_2 sigma_t n_t n_v", positive=True)
    se_mean_expr = s_m / sig * sp.sqrt(1 / nt + 1 / nv)
    se_std_expr = s_2 / 2 * sp.sqrt(1 / nt + 1 / nv)
    x_all = ds.x.astype(np.float64)
    m_img = x_all.mean(axis=1)  # per-image means (raw)
    s_img = np.square((x_all - mu_t) / sd_t).mean(axis=1)  # per-image mean of standardized x^2
    subs = {s_m: m_img.std(ddof=1), s_2: s_img.std(ddof=1), sig: sd_t, nt: n_t, nv: n_v}
    se_mean = float(se_mean_expr.subs(subs))
    se_std = float(se_std_expr.subs(subs))
    naive_se = float(xt64.std() / math.sqrt(n_t * xt64.shape[1]))

    # -- many random splits: the spread of the validation mean and std ----------------------
    reps = 200 if cfg.quick else 1000
    rng = np.random.default_rng(cfg.seed + 1)
    raw_m = m_img
    raw_s2 = np.square(x_all).mean(axis=1)
    v_means, v_stds = np.empty(reps), np.empty(reps)
    for r in cfg.progress(range(reps), total=reps, desc="random splits"):
        perm = rng.permutation(len(x_all))
        vi, ti = perm[:n_v], perm[n_v:]
        mt, st = raw_m[ti].mean(), math.sqrt(raw_s2[ti].mean() - raw_m[ti].mean() ** 2)
        mv, s2v = raw_m[vi].mean(), raw_s2[vi].mean()
        v_means[r] = (mv - mt) / st
        v_stds[r] = math.sqrt(s2v - mv**2) / st
    sd_vm, sd_vs = float(v_means.std(ddof=1)), float(v_stds.std(ddof=1))

    # -- what goes wrong: one classifier, four ways to prepare the validation inputs -------
    steps = 300 if cfg.quick else 1000
    clf = _softmax_regression(split.x_train, split.y_train, ds.n_classes, steps, cfg.seed)
    raw_v = (xv64 * sd_t + mu_t).astype(np.float32)
    own = ((raw_v - raw_v.mean()) / raw_v.std()).astype(np.float32)
    by_class = np.empty_like(raw_v)
    for c in range(ds.n_classes):  # a batch that holds one class only, standardized by itself
        sel = split.y_valid == c
        blk = raw_v[sel]
        by_class[sel] = (blk - blk.mean()) / blk.std()
    per_image = (raw_v - raw_v.mean(axis=1, keepdims=True)) / raw_v.std(axis=1, keepdims=True)
    # How far each one-class batch's own standardization moves its inputs, in training stds:
    # the offset of the class mean that the model was trained to see, erased.
    class_shift = np.array(
        [abs(float(xv64[split.y_valid == c].mean())) for c in range(ds.n_classes)]
    )
    variants = {
        "training split's mean/std": split.x_valid,
        "validation's own mean/std": own,
        "own mean/std per one-class batch": by_class,
        "own mean/std per image": per_image.astype(np.float32),
        "not standardized": raw_v,
    }
    scores = {k: _scores(clf, v, split.y_valid) for k, v in variants.items()}
    right = scores["training split's mean/std"]
    mu_all = float(x_all.mean())
    leak = (mu_all - mu_t) / sd_t

    tol_mean, tol_std = 4.0 * se_mean, 4.0 * se_std
    rows = [
        Row(
            "training split: mean, std (standardized)", "0, 1", f"{train_mean:.2e}, {train_std:.7f}"
        ),
        Row(
            "validation split: mean",
            f"0 +- {se_mean:.4f} (1 s.e.)",
            f"{valid_mean:+.2e}",
            f"{valid_mean / se_mean:+.2f} s.e.",
        ),
        Row(
            "validation split: std",
            f"1 +- {se_std:.4f} (1 s.e.)",
            f"{valid_std:.4f}",
            f"{(valid_std - 1) / se_std:+.2f} s.e.",
        ),
        Row(
            f"spread of the validation mean over {reps} random splits",
            f"{se_mean:.4f}",
            f"{sd_vm:.4f}",
            f"pixels as if independent would say {naive_se:.5f}",
        ),
        Row(
            f"spread of the validation std over {reps} random splits",
            f"{se_std:.4f}",
            f"{sd_vs:.4f}",
        ),
        Row(
            "train+validation mean vs training mean (leakage), in validation s.e.",
            "O(1)",
            f"{leak / se_mean:+.2f}",
            f"{leak:+.5f} in standardized units",
        ),
        Row(
            "largest shift of a one-class batch's mean, in training stds",
            "erased by its own standardization",
            f"{class_shift.max():.3f}",
            f"class means range {class_shift.min():.3f} .. {class_shift.max():.3f} in |.|",
        ),
    ] + [
        Row(f"validation loss / accuracy, {k}", "", f"{s[0]:.3f} / {s[1]:.3f}")
        for k, s in scores.items()
    ]
    drop_raw = right[1] - scores["not standardized"][1]

    def predict(v):
        return np.asarray(jnp.argmax(jnp.asarray(v) @ clf["W"] + clf["b"], axis=-1))

    class_flips = int(np.sum(predict(by_class) != predict(split.x_valid)))
    image_flips = int(np.sum(predict(per_image) != predict(split.x_valid)))
    own_acc = scores["validation's own mean/std"][1]
    claims = [
        Claim(
            "Standardized with its own mean and std, the training split has mean 0 and std 1 "
            "(to float32 rounding)",
            near(train_mean, 0.0, 1e-5) and near(train_std, 1.0, 1e-5),
            f"mean {train_mean:.2e}, std {train_std:.7f} (tolerance 1e-5)",
        ),
        Claim(
            "The validation split, standardized with the training statistics, has mean close "
            "to 0 and std close to 1 -- within sampling error, but not exactly",
            near(valid_mean, 0.0, tol_mean)
            and near(valid_std, 1.0, tol_std)
            and (abs(valid_mean) > 1e-5 or abs(valid_std - 1.0) > 1e-5),
            f"mean {valid_mean:+.2e} (|.| <= 4 s.e. = {tol_mean:.4f}), std {valid_std:.5f} "
            f"(|.-1| <= {tol_std:.4f}); neither is exact",
        ),
        Claim(
            "The deviation is sampling error with images (not pixels) as the unit: the "
            "standard errors predict the spread over random splits",
            0.8 <= sd_vm / se_mean <= 1.25 and 0.8 <= sd_vs / se_std <= 1.25,
            f"over {reps} splits: sd of the mean {sd_vm:.4f} vs {se_mean:.4f}, sd of the std "
            f"{sd_vs:.4f} vs {se_std:.4f} (ratio band [0.8, 1.25]); per-pixel independence "
            f"would predict {naive_se:.5f}",
        ),
        Claim(
            "Preparing the validation split any other way changes what the model sees: "
            "unstandardized inputs cost loss and accuracy, and batches standardized by their "
            "own statistics get inputs (and predictions) that depend on the batch",
            scores["not standardized"][0] >= 1.5 * right[0]
            and drop_raw >= 0.01
            and class_flips + image_flips > 0,
            f"validation loss / accuracy {right[0]:.3f} / {right[1]:.3f} with the training "
            f"statistics vs {scores['not standardized'][0]:.3f} / "
            f"{scores['not standardized'][1]:.3f} unstandardized (loss >= 1.5x, accuracy "
            f"-{drop_raw:.3f} >= 0.01); one-class batches standardized by themselves move by up "
            f"to {class_shift.max():.3f} training stds and {class_flips} of {n_v} predictions "
            f"change ({image_flips} when each image is standardized by itself); the whole validation split's own statistics give {own_acc:.3f} (same "
            "distribution as training: nearly harmless here)",
        ),
    ]

    # -- figure ------------------------------------------------------------------------------
    fig, ax = new_figure(ncols=3, width=4.4)
    pm_t, pm_v = xt64.mean(axis=0), xv64.mean(axis=0)
    ps_t, ps_v = xt64.std(axis=0), xv64.std(axis=0)
    bins_m = np.linspace(min(pm_t.min(), pm_v.min()), max(pm_t.max(), pm_v.max()), 40)
    ax[0, 0].hist(pm_t, bins=bins_m, alpha=0.6, label=f"train ({n_t})")
    ax[0, 0].hist(pm_v, bins=bins_m, histtype="step", lw=1.5, color="k", label=f"valid ({n_v})")
    ax[0, 0].set(xlabel="per-pixel mean (standardized)", ylabel="pixels", title="per-pixel means")
    ax[0, 0].legend(fontsize=7)
    bins_s = np.linspace(0, max(ps_t.max(), ps_v.max()), 40)
    ax[0, 1].hist(ps_t, bins=bins_s, alpha=0.6, label="train")
    ax[0, 1].hist(ps_v, bins=bins_s, histtype="step", lw=1.5, color="k", label="valid")
    ax[0, 1].set(xlabel="per-pixel std (standardized)", ylabel="pixels", title="per-pixel stds")
    ax[0, 1].legend(fontsize=7)
    ax[0, 2].hist(v_means, bins=30, density=True, alpha=0.6, label=f"{reps} random splits")
    grid = np.linspace(v_means.min(), v_means.max(), 200)
    ax[0, 2].plot(
        grid,
        np.exp(-0.5 * (grid / se_mean) ** 2) / (se_mean * math.sqrt(2 * math.pi)),
        "k-",
        label=f"N(0, s.e.^2), s.e. = {se_mean:.4f}",
    )
    ax[0, 2].axvline(valid_mean, color="tab:red", ls="--", label=f"this split {valid_mean:+.1e}")
    ax[0, 2].set(
        xlabel="validation mean (train-standardized)", ylabel="density", title="sampling error"
    )
    ax[0, 2].legend(fontsize=7)
    fig_main = Figure(
        "data_standardization",
        f"{ds.source} standardized with the training split's mean and std. Left and middle: "
        "histograms of the per-pixel means and stds of the training (filled) and validation "
        "(outline) splits: the same shape, the validation split slightly off. Right: the "
        f"validation split's overall mean over {reps} random splits against the normal law "
        "with the predicted standard error (images as the sampling unit); the dashed line is "
        "the split used here.",
        figure_png(fig),
    )
    return ExperimentResult(
        name="data_standardization",
        title="Standardizing data with the training split's statistics",
        summary=(
            f"Standardized with the training split's mean ({mu_t:.4f}) and std ({sd_t:.4f}), "
            f"the training split has mean {train_mean:.1e} and std {train_std:.6f}; the "
            f"validation split has mean {valid_mean:+.1e} and std {valid_std:.4f}, within "
            f"{max(abs(valid_mean) / se_mean, abs(valid_std - 1) / se_std):.1f} standard errors "
            f"(s.e. {se_mean:.4f} and {se_std:.4f}, confirmed over {reps} random splits). A "
            f"linear classifier scores {right[1]:.1%} on validation data prepared this way, "
            f"{scores['not standardized'][1]:.1%} unstandardized and "
            f"{scores['own mean/std per one-class batch'][1]:.1%} when each one-class batch is "
            "standardized by itself."
        ),
        laws=[
            _law("standard error of the validation mean", se_mean_expr),
            _law("standard error of the validation std (delta method)", se_std_expr),
        ],
        rows=rows,
        claims=claims,
        figures=[fig_main],
        notes=[
            _data_note(ds),
            f"Split {n_t} / {n_v} (validation fraction {VALID_FRACTION}), key {cfg.seed}; scalar "
            "mean and std over all pixels, as in the fast.ai lesson.",
            f"Classifier: softmax regression, {steps} full-batch SGD + momentum steps on the standardized "
            "training split.",
        ],
        data={
            "train_mean_std": np.array([train_mean, train_std]),
            "valid_mean_std": np.array([valid_mean, valid_std]),
            "standard_errors": np.array([se_mean, se_std]),
            "split_valid_means": v_means,
            "split_valid_stds": v_stds,
            "pixel_means": np.stack([pm_t, pm_v]),
            "pixel_stds": np.stack([ps_t, ps_v]),
            "accuracy": np.array([s[1] for s in scores.values()]),
            "loss": np.array([s[0] for s in scores.values()]),
            "variants": np.array(list(scores)),
            "class_mean_shift": class_shift,
            "prediction_changes": np.array([class_flips, image_flips]),
        },
    )

r"""Experiment 11: Fixup keeps a residual MLP of 10,000 blocks without normalization finite
and trainable; He init in its branches overflows float32 where the law says.

The net: an input layer (LeCun normal), **10,000 residual blocks**
:math:`x_{l+1} = x_l + W_2\,\mathrm{relu}(W_1 x_l)` of two ``n x n`` layers (m = 2; each branch
a :mod:`varprop._src.core.network` MLP, the blocks under ``lax.scan``), a linear classifier;
no block biases or scalar multipliers. With W2 independent of x and of zero mean,

.. math:: E[x_{l+1}^2] = E[x_l^2]\,(1 + c), \qquad
          c = \frac{E[\mathrm{branch}(x)^2]}{E[x^2]}
            = n\mathrm{Var}(w_1)\cdot\tfrac12\cdot n\mathrm{Var}(w_2),

c from :func:`varprop.laws.propagate` over the branch's widths (n, n, n). *He in both branch
layers*: a factor 3 per block, so the mean E[x^2] leaves float32 after
:math:`2\ln(3.4\cdot10^{38})/\ln 3 \approx 162` blocks (:func:`varprop.laws.float32_limit_layer`).
One sample's :math:`\ln|x_l|^2` is a random walk with i.i.d. steps :math:`\ln r` (exactly, for
Gaussian weights, by rotation invariance): with :math:`H = (2/n)\sum_{i\le n}\mathrm{relu}(g_i)^2`,
:math:`r = (1 + \sqrt{2H/n}\,g_0)^2 + (2H/n)\,\chi^2_{n-1}`. E[r] = 3 but :math:`E[\ln r] < \ln 3`
by O(1/n) (Jensen), so a sample overflows a few blocks later: when its largest entry squared,
:math:`(|x_l|^2/n)\,\kappa` with :math:`\kappa = \max_j g_j^2 / \mathrm{mean}_j g_j^2` over n
normals, passes :math:`\mathrm{FLOAT32\_MAX}^2`; the experiment predicts that block per sample.

*Fixup* (Zhang, Dauphin & Ma, "Fixup Initialization: Residual Learning Without
Normalization", ICLR 2019): the branch's last layer and the classifier start at zero, the
other m - 1 branch layers are He scaled by :math:`L^{-1/(2m-2)}` in std
(:func:`varprop.initializers.fixup`), so every block starts as the identity; had the last
layer been He too, the factor would be :math:`1 + 2/L`, and :math:`(1 + 2/L)^L \to e^2`,
bounded at any depth. A few SGD steps make the blocks active and keep every value finite.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from varprop import initializers as I
from varprop import laws
from varprop._src.core.network import Network, dense, forward, init_params, make_network
from varprop._src.experiments import base
from varprop._src.experiments.measure import cross_entropy, figure, law, sgd, standardized

FIXUP_BLOCKS = 10_000
TITLE = "Fixup: a 10,000-block residual MLP without normalization"


def _run_blocks(branch: Network, p: dict, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Logits, and per block: E[x_l^2] over the batch and whether x_l is all finite.
    ``p["blocks"]`` holds the branches' kernels ``(W1, W2)``, each ``(blocks, 1, n, n)``."""
    b = jnp.zeros((1, p["in"].shape[1]), jnp.float32)

    def block(h, ws):
        h = h + forward(branch, [{"W": w, "b": b} for w in ws], h)
        return h, (jnp.mean(jnp.square(h)), jnp.all(jnp.isfinite(h)))

    h0 = x @ p["in"]
    h, (q, finite) = jax.lax.scan(block, h0, p["blocks"])
    return dense(h, *p["out"]), jnp.concatenate([jnp.mean(jnp.square(h0))[None], q]), finite


def _he_log_r(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of ln r, r = |x + W2 relu(W1 x)|^2 / |x|^2 for He-normal n x n W1, W2."""
    h = 2.0 * np.square(np.maximum(rng.standard_normal((count, n)), 0.0)).sum(axis=1) / n
    r = np.square(1.0 + np.sqrt(2.0 * h / n) * rng.standard_normal(count))
    return np.log(r + (2.0 * h / n) * rng.chisquare(n - 1, count))


def _predict_first_overflow(log_q0: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Each sample's first block out of float32 by the finite-width law: the mean over 8 walks
    of ln(|x_l|^2/n), each stopped when (|x_l|^2/n) * kappa passes FLOAT32_MAX^2."""
    paths, horizon, bank_r = 8, 1000, _he_log_r(n, 200_000, rng)
    g2 = np.square(rng.standard_normal((200_000, n)))
    bank_k = np.log(g2.max(axis=1) / g2.mean(axis=1))
    start = np.repeat(log_q0.ravel(), paths)
    walk = start[:, None] + np.cumsum(rng.choice(bank_r, size=(start.size, horizon)), axis=1)
    over = walk + rng.choice(bank_k, size=walk.shape) >= 2.0 * math.log(laws.FLOAT32_MAX)
    first = np.where(over.any(axis=1), over.argmax(axis=1) + 1, horizon + 1)
    return first.reshape(-1, paths).mean(axis=1).reshape(log_q0.shape)


@base.experiment("fixup", TITLE, order=11)
def run_fixup(cfg: base.RunConfig) -> base.ExperimentResult:
    """Fixup keeps a 10,000-block residual MLP finite and trainable; He init explodes it
    (module docstring)."""
    blocks, width, batch, lr, momentum = FIXUP_BLOCKS, 32, 32, 0.1, 0.9
    train_steps = 6  # "a few steps": 20 at lr 0.1 diverged in a full run (loss 2.30 -> 10.3)
    seeds, per_seed = (256, 4) if cfg.quick else (1024, 4)
    ds, split = standardized(cfg)
    d_in = split.x_train.shape[1]
    k_in, k_w1, k_he, k_batch = (jax.random.fold_in(jax.random.key(cfg.seed), i) for i in range(4))

    # -- the law: c of each branch from laws.propagate, the block's factor 1 + c
    he, fx, n3 = I.he_normal(), I.fixup(blocks, 2), (width,) * 3
    fixup_branch, he_branch = (make_network(n3, "relu", k) for k in ((fx, I.zeros), (he, he)))
    he_block, fixup_block = (
        1 + float(laws.propagate(b.widths, "relu", [k.scheme for k in b.kernel_inits]).forward[-1])
        for b in (he_branch, fixup_branch)
    )
    he_sym, fixup_sym = (sp.nsimplify(round(f, 12)) for f in (he_block, fixup_block))
    # Fixup's first branch layer with the depth left symbolic, followed by an He last layer
    # (n Var(w2) = 2 times E[relu(z)^2]/q = 1/2):
    sym = laws.symbols
    var_w1 = fx.scheme.variance_expr.subs({sym.gain: sp.sqrt(2), sym.branch_layers: 2})
    scaled_block = sp.simplify(1 + sym.fan_in * var_w1 * sp.Rational(1, 2) * 2)
    bounded = sp.limit(scaled_block**sym.depth, sym.depth, sp.oo)
    mf_law = sp.ceiling(2 * sp.log(sp.Symbol("FLOAT32_MAX")) / sp.log(he_sym))

    # -- Fixup: init, a few SGD steps
    w_in = I.lecun_normal()(k_in, (d_in, width), jnp.float32)
    drawn = jax.vmap(lambda k: init_params(fixup_branch, k))(jax.random.split(k_w1, blocks))
    zeros_out = (jnp.zeros((width, ds.n_classes)), jnp.zeros((ds.n_classes,)))
    params = {"in": w_in, "blocks": tuple(s["W"] for s in drawn), "out": zeros_out}
    xt, yt = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    x_eval, y_eval = jnp.asarray(split.x_valid[:256]), jnp.asarray(split.y_valid[:256])

    # The loss, E[x_l^2] and whether x_l is finite per block; SGD records the loss only (the
    # per-block statistics stay out of the training program).
    def loss(p, x, y):
        logits, q, finite = _run_blocks(fixup_branch, p, x)
        return cross_entropy(logits, y), q, finite

    evaluate = jax.jit(lambda p: loss(p, x_eval, y_eval))
    loss0, q_init, fin_init = (np.asarray(a) for a in evaluate(params))
    batches = jax.random.randint(k_batch, (train_steps, batch), 0, len(split.x_train), jnp.int32)
    init, run = sgd(lambda p, idx: (loss(p, xt[idx], yt[idx])[0],) * 2, lr, momentum)
    (params, _), train_losses = run((params, init(params)), batches)
    train_losses = np.asarray(train_losses, np.float64)
    params_finite = all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(params))
    loss1, q_trained, fin_trained = (np.asarray(a) for a in evaluate(params))
    w2_rms = float(jnp.sqrt(jnp.mean(jnp.square(params["blocks"][1]))))
    del params

    # -- He in every branch layer: where float32 gives out. Each block's weights are drawn on
    # the fly from fold_in(key, block); a while_loop stops once every sample has overflowed.
    @jax.jit
    @jax.vmap
    def first_nonfinite(k):
        def body(c):
            l, h, first = c
            h = h + forward(he_branch, init_params(he_branch, jax.random.fold_in(k, l)), h)
            first = jnp.where(~jnp.all(jnp.isfinite(h), axis=1) & (first > blocks), l + 1, first)
            return l + 1, h, first

        h0 = jnp.asarray(split.x_train[:per_seed]) @ w_in
        start = (jnp.int32(0), h0, jnp.full((per_seed,), blocks + 1, jnp.int32))
        _, _, first = jax.lax.while_loop(
            lambda c: (c[0] < blocks) & jnp.any(c[2] > blocks), body, start
        )
        return first, jnp.log(jnp.mean(jnp.square(h0), axis=1))

    chunks = cfg.progress(range(0, seeds, 64), total=seeds // 64, desc="fixup: He blow-up")
    runs = [first_nonfinite(jax.random.split(jax.random.fold_in(k_he, c), 64)) for c in chunks]
    # (seeds, per_seed) each: the first non-finite block, log E[x_0^2] of each sample
    first_a, log_q0_a = (np.asarray(np.concatenate(a), np.float64) for a in zip(*runs, strict=True))
    pred_first = _predict_first_overflow(log_q0_a, width, np.random.default_rng(cfg.seed))
    meas_mean, pred_mean = float(first_a.mean()), float(pred_first.mean())
    meas_se = float(first_a.mean(axis=1).std(ddof=1) / math.sqrt(seeds))
    mf_kind, mf_block = laws.float32_limit_layer(he_block, float(np.exp(log_q0_a).mean()))
    log_r = _he_log_r(width, 200_000, np.random.default_rng(cfg.seed + 1))

    # -- numbers and claims
    ratio_init, ratio_trained = (float(q[-1] / q[0]) for q in (q_init, q_trained))
    fixup_pred = fixup_block**blocks
    all_finite_init = bool(fin_init.all() and np.isfinite(q_init).all())
    all_finite_trained = bool(fin_trained.all() and np.isfinite(q_trained).all() and params_finite)
    decrease, min_decrease = float(loss0 - loss1), 0.05
    yes = {True: "yes", False: "no"}
    # fmt: off
    rows = [base.Row(*r) for r in [
        ("blocks / layers in the branches", *[f"{blocks} / {2 * blocks}"] * 2),
        ("E[x_L^2] / E[x_0^2], Fixup at init", f"{fixup_pred:g}", f"{ratio_init:.6f}"),
        ("all block outputs finite, Fixup at init", "yes", yes[all_finite_init]),
        (f"held-out loss before / after {train_steps} SGD steps (Fixup)",
         f"decreases by > {min_decrease}", f"{float(loss0):.4f} / {float(loss1):.4f}",
         f"training-batch losses: {', '.join(f'{v:.3f}' for v in train_losses)}"),
        ("everything finite after training (params and all block outputs)", "yes",
         yes[all_finite_trained],
         f"E[x_L^2]/E[x_0^2] = {ratio_trained:.4f}, rms(W2) = {w2_rms:.2e}"),
        ("He branches: factor on E[x^2] per block", f"{he_sym}",
         f"E[r] = {np.exp(log_r).mean():.3f}", "law sample mean"),
        ("He branches: E[ln r] per block (finite width)", f"ln 3 = {math.log(3):.4f} (mean-field)",
         f"{log_r.mean():.4f} (width {width})",
         "Jensen: the typical sample grows slower than the mean"),
        ("He branches: first overflow block, mean-field law (typical size sqrt(E[x^2]))",
         f"{mf_block}", f"{meas_mean:.2f}", f"{mf_kind}; the mean of q, not a typical sample"),
        ("He branches: first non-finite block, mean over samples (finite-width law)",
         f"{pred_mean:.2f}",
         f"{meas_mean:.2f} +- {meas_se:.2f} (s.e., {seeds} seeds x {per_seed} samples)",
         f"per-sample range {int(first_a.min())} .. {int(first_a.max())}"),
    ]]
    claims = [base.Claim(*c) for c in [
        (f"Fixup keeps a {blocks:,}-block residual MLP finite at init without normalization "
         "(each block starts as the identity)",
         all_finite_init and abs(ratio_init - fixup_pred) <= 1e-5,
         f"all {blocks} block outputs finite; ratio {ratio_init:.6f} (tolerance 1e-5)"),
        (f"The Fixup net trains: {train_steps} SGD steps lower the held-out loss and every "
         "parameter and block output stays finite",
         all_finite_trained and decrease > min_decrease and w2_rms > 0,
         f"held-out loss {float(loss0):.4f} -> {float(loss1):.4f} (decrease {decrease:.4f} > "
         f"{min_decrease}); W2 no longer zero (rms {w2_rms:.2e}); all finite"),
        ("With He init in each branch, E[x^2] triples per block and float32 overflows at the "
         "block the law predicts (within 1 block)",
         abs(meas_mean - pred_mean) <= 1.0 and bool(np.all(first_a <= blocks)),
         f"mean first non-finite block {meas_mean:.2f} (s.e. {meas_se:.2f}) vs predicted "
         f"{pred_mean:.2f}; every sample overflowed (mean-field law alone: {mf_block})"),
    ]]
    # fmt: on

    fig, ax = base.new_figure(ncols=2, width=5.2)
    ax[0, 0].plot(q_init / q_init[0], color="tab:green", lw=1.5, label="Fixup at init")
    ax[0, 0].plot(q_trained / q_trained[0], lw=1.5, label=f"Fixup after {train_steps} steps")
    ax[0, 0].set(
        xlabel="residual block l", ylabel="E[x_l^2] / E[x_0^2]", title=f"Fixup, {blocks:,} blocks"
    )
    ax[0, 0].set_xscale("symlog", linthresh=10)
    bins = np.arange(first_a.min() - 0.5, first_a.max() + 1.5)
    ax[0, 1].hist(first_a.ravel(), bins=bins, color="tab:red", alpha=0.6, label="measured (He)")
    ax[0, 1].hist(pred_first.ravel(), bins, histtype="step", color="k", label="finite-width law")
    for x, color, ls, label in (
        (meas_mean, "tab:red", "--", f"measured mean {meas_mean:.1f}"),
        (pred_mean, "k", ":", f"law mean {pred_mean:.1f}"),
        (mf_block, "gray", "-.", f"mean-field law {mf_block}"),
    ):
        ax[0, 1].axvline(x, color=color, ls=ls, lw=1, label=label)
    ax[0, 1].set(xlabel="first non-finite block", ylabel="samples", title="He in every branch")
    caption = (
        f"Left: E[x_l^2]/E[x_0^2] over the {blocks:,} blocks of the Fixup net at init (exactly 1) "
        f"and after {train_steps} SGD steps (finite, near 1). Right: with He init in both "
        "branch layers, the block at which each sample first becomes non-finite "
        f"({seeds} seeds x {per_seed} samples), against the finite-width law's prediction and "
        "the mean-field law's overflow block."
    )
    return base.ExperimentResult(
        name="fixup",
        title=TITLE,
        summary=(
            f"A residual MLP of {blocks:,} blocks without normalization: with Fixup every block "
            f"starts as the identity, so the forward pass is finite, and {train_steps} SGD steps "
            f"lower the held-out loss from {float(loss0):.3f} to {float(loss1):.3f} with every "
            f"value finite. With He init in each branch E[x^2] triples per block and float32 "
            f"overflows at block {meas_mean:.1f} on average (law: {pred_mean:.1f}; the "
            f"mean-field law's {mf_block} is the overflow of the mean, reached earlier)."
        ),
        laws=[
            law("block factor E[x_{l+1}^2]/E[x_l^2], He in both branch layers", he_sym),
            law("block factor, Fixup (last branch layer zero)", fixup_sym),
            law("Fixup's first-layer variance (m = 2, g^2 = 2)", var_w1),
            law("block factor if the last layer were He too", scaled_block),
            law("its product over L blocks as L -> oo", bounded),
            law("He branches: first overflow block (mean-field)", mf_law),
        ],
        rows=rows,
        claims=claims,
        figures=[figure("fixup", caption, fig)],
        notes=[
            f"Data: {ds.note}.",
            f"{blocks:,} residual blocks of width {width} ({2 * blocks:,} layers in the "
            f"branches), input layer {d_in} -> {width}, classifier {width} -> {ds.n_classes}; "
            "no normalization, no block biases, no scalar multipliers.",
            f"Fixup SGD: lr {lr}, momentum {momentum}, batch {batch}, {train_steps} steps; loss "
            "on 256 held-out images. He: weights drawn per block (fold_in(key, block)).",
        ],
        data={
            "q_init": q_init.astype(np.float64),
            "q_trained": q_trained.astype(np.float64),
            "train_losses": train_losses,
            "heldout_loss": np.array([loss0, loss1], np.float64),
            "he_first_nonfinite": first_a,
            "he_log_q0": log_q0_a,
            "he_mean_field_block": np.array(mf_block),
            "width": np.array(width),
            "blocks": np.array(blocks),
        },
    )

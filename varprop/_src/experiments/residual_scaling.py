r"""Experiment 11: Fixup, a residual MLP of 10,000 blocks without normalization, stays
finite and trains; He init in its branches overflows float32 where the law says.

The net: an input layer (LeCun normal, Var = 1/n_in), **10,000 residual blocks**
:math:`x_{l+1} = x_l + W_2\,\mathrm{relu}(W_1 x_l)` of two ``n x n`` layers each (m = 2, so
20,000 layers inside the branches), a linear classifier; no biases in the blocks and no
scalar multipliers (Fixup's optional extras). Each branch is a two-layer
:mod:`varprop._src.core.network` MLP (linear output) run by its ``forward``; the blocks run
under ``lax.scan``, so compile time does not depend on the depth.

The law: since W2 is independent of x with zero mean, the cross term vanishes and

.. math:: E[x_{l+1}^2] = E[x_l^2]\,(1 + c), \qquad
          c = \frac{E[\mathrm{branch}(x)^2]}{E[x^2]}
            = n\mathrm{Var}(w_1)\cdot\tfrac12\cdot n\mathrm{Var}(w_2),

c from :func:`varprop.laws.propagate` over the branch's widths (n, n, n); the residual sum
1 + c is the one step it does not express.

*He in both branch layers*: c = 2, the factor is 3 per block, so float32 overflows after about
:math:`2\ln(3.4\cdot10^{38})/\ln 3 \approx 162` blocks (:func:`varprop.laws.float32_limit_layer`).
That is the growth of the *mean* E[x^2]. At finite width n one sample's
:math:`\ln|x_l|^2` is a random walk with i.i.d. steps :math:`\ln r`: exactly, for Gaussian
weights and whatever x (rotation invariance), with
:math:`H = |h|^2/|x|^2 = (2/n)\sum_{i\le n}\mathrm{relu}(g_i)^2`,
:math:`r = (1 + \sqrt{2H/n}\,g_0)^2 + (2H/n)\,\chi^2_{n-1}`. E[r] = 3 but
:math:`E[\ln r] < \ln 3` by an amount of order 1/n (Jensen), so the typical sample overflows a
few blocks later: when its largest entry squared, :math:`(|x_l|^2/n)\,\kappa` with
:math:`\kappa = \max_j g_j^2 / \mathrm{mean}_j g_j^2` over n normals, passes
:math:`\mathrm{FLOAT32\_MAX}^2`. The experiment predicts each sample's first non-finite block
from that walk and measures it over many seeds.

*Fixup* (Zhang, Dauphin & Ma, "Fixup Initialization: Residual Learning Without
Normalization", ICLR 2019): the branch's last layer and the classifier start at zero, the
other m - 1 branch layers are He scaled by :math:`L^{-1/(2m-2)}` in std
(:func:`varprop.initializers.fixup`). At init every block is the identity (factor exactly 1);
had the last layer been He too, the factor would be :math:`1 + 2/L`, and
:math:`(1 + 2/L)^L \to e^2`: bounded at any depth. Training with SGD makes the blocks active;
a few steps decrease the loss and keep every value finite.
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
from varprop._src.experiments.data_standardization import cross_entropy, sgd, standardized
from varprop._src.experiments.measure import law

Array = jax.Array
FIXUP_BLOCKS = 10_000


def _branch(n: int, first: I.Initializer, last: I.Initializer) -> Network:
    """The branch W2 relu(W1 x): a two-layer network of width n, its output layer linear."""
    return make_network((n, n, n), "relu", (first, last))


def _branch_factor(branch: Network) -> float:
    """c = E[branch(x)^2] / E[x^2], from laws.propagate (the block's factor is 1 + c)."""
    schemes = [k.scheme for k in branch.kernel_inits]
    return float(laws.propagate(branch.widths, branch.activation, schemes).forward[-1])


def _run_blocks(branch: Network, p: dict, x: Array) -> tuple[Array, Array, Array]:
    """Logits, and per block: E[x_l^2] over the batch and whether x_l is all finite.

    ``p["blocks"]`` holds the branches' kernels ``(W1, W2)``, each ``(blocks, 1, n, n)``;
    their biases are zero and not trained."""

    def block(h, ws):
        segments = [{"W": w, "b": jnp.zeros((1, w.shape[-1]), w.dtype)} for w in ws]
        h = h + forward(branch, segments, h)
        return h, (jnp.mean(jnp.square(h)), jnp.all(jnp.isfinite(h)))

    h0 = x @ p["in"]
    h, (q, finite) = jax.lax.scan(block, h0, p["blocks"])
    q = jnp.concatenate([jnp.mean(jnp.square(h0))[None], q])
    return dense(h, *p["out"]), q, finite


def _he_block_law_samples(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of ln r, r = |x + W2 relu(W1 x)|^2 / |x|^2 for He-normal n x n W1, W2
    (module docstring)."""
    a = np.square(np.maximum(rng.standard_normal((count, n)), 0.0)).sum(axis=1)
    h = 2.0 * a / n
    r = np.square(1.0 + np.sqrt(2.0 * h / n) * rng.standard_normal(count))
    r += (2.0 * h / n) * rng.chisquare(n - 1, count)
    return np.log(r)


def _predict_first_overflow(
    log_q0: np.ndarray, n: int, rng: np.random.Generator, paths: int = 8, horizon: int = 1000
) -> np.ndarray:
    """The block at which each sample's row first leaves float32, by the finite-width law:
    ``paths`` walks ln(|x_l|^2/n) per sample, each stopped when the row's largest entry
    squared, (|x_l|^2/n) * kappa, passes FLOAT32_MAX^2; the mean first block per sample."""
    bank_r = _he_block_law_samples(n, 200_000, rng)
    g2 = np.square(rng.standard_normal((200_000, n)))
    bank_k = np.log(g2.max(axis=1) / g2.mean(axis=1))
    barrier = 2.0 * math.log(laws.FLOAT32_MAX)
    start = np.repeat(np.asarray(log_q0, np.float64).ravel(), paths)
    walk = start[:, None] + np.cumsum(rng.choice(bank_r, size=(start.size, horizon)), axis=1)
    over = walk + rng.choice(bank_k, size=walk.shape) >= barrier
    first = np.where(over.any(axis=1), over.argmax(axis=1) + 1, horizon + 1)
    return first.reshape(-1, paths).mean(axis=1).reshape(np.shape(log_q0))


@base.experiment("fixup", "Fixup: a 10,000-block residual MLP without normalization", order=11)
def run_fixup(cfg: base.RunConfig) -> base.ExperimentResult:
    """Fixup keeps a 10,000-block residual MLP finite and trainable; He init explodes it
    (module docstring)."""
    blocks = FIXUP_BLOCKS
    width, batch = 32, 32
    train_steps = 6  # "a few steps": 20 at lr 0.1 diverged in a full run (loss 2.30 -> 10.3)
    seeds, per_seed = (256, 4) if cfg.quick else (1024, 4)
    lr, momentum = 0.1, 0.9
    ds, split = standardized(cfg)
    d_in = split.x_train.shape[1]
    key = jax.random.key(cfg.seed)
    k_in, k_w1, k_he, k_batch = (jax.random.fold_in(key, i) for i in range(4))

    # -- the law -----------------------------------------------------------------------------
    he, fx = I.he_normal(), I.fixup(blocks, 2)
    fixup_branch, he_branch = _branch(width, fx, I.zeros), _branch(width, he, he)
    he_block, fixup_block = (1 + _branch_factor(b) for b in (he_branch, fixup_branch))
    he_sym, fixup_sym = (sp.nsimplify(round(f, 12)) for f in (he_block, fixup_block))
    # Fixup's first branch layer with the depth left symbolic, followed by an He last layer
    # (n Var(w2) = 2 times E[relu(z)^2]/q = 1/2):
    var_w1 = fx.scheme.variance_expr.subs(
        {laws.symbols.gain: sp.sqrt(2), laws.symbols.branch_layers: 2}
    )
    big_l = laws.symbols.depth
    scaled_block = sp.simplify(1 + laws.symbols.fan_in * var_w1 * sp.Rational(1, 2) * 2)
    bounded = sp.limit(scaled_block**big_l, big_l, sp.oo)

    # -- Fixup: init, a few SGD steps --------------------------------------------------------
    w_in = I.lecun_normal()(k_in, (d_in, width), jnp.float32)
    drawn = jax.vmap(lambda k: init_params(fixup_branch, k))(jax.random.split(k_w1, blocks))
    zeros_out = (jnp.zeros((width, ds.n_classes)), jnp.zeros((ds.n_classes,)))
    params = {"in": w_in, "blocks": tuple(s["W"] for s in drawn), "out": zeros_out}
    xt, yt = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    x_eval, y_eval = jnp.asarray(split.x_valid[:256]), jnp.asarray(split.y_valid[:256])

    @jax.jit
    def evaluate(p):
        logits, q, finite = _run_blocks(fixup_branch, p, x_eval)
        return cross_entropy(logits, y_eval), q, finite

    def loss(p, idx):
        value = cross_entropy(_run_blocks(fixup_branch, p, xt[idx])[0], yt[idx])
        return value, value

    loss0, q_init, fin_init = (np.asarray(a) for a in evaluate(params))
    batches = jax.random.randint(k_batch, (train_steps, batch), 0, len(split.x_train), jnp.int32)
    init, run = sgd(loss, lr, momentum)
    (params, _), losses = run((params, init(params)), batches)
    train_losses = [float(v) for v in losses]
    params_finite = all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(params))
    loss1, q_trained, fin_trained = (np.asarray(a) for a in evaluate(params))
    w2_rms = float(jnp.sqrt(jnp.mean(jnp.square(params["blocks"][1]))))
    del params

    # -- He in every branch layer: where float32 gives out -----------------------------------
    # Each block's weights are drawn on the fly from fold_in(key, block); a while_loop stops
    # once every sample has overflowed (the first couple of hundred blocks, not all of them).
    x_he = jnp.asarray(split.x_train[:per_seed])

    @jax.jit
    @jax.vmap
    def first_nonfinite(k):
        def body(c):
            l, h, first = c
            h = h + forward(he_branch, init_params(he_branch, jax.random.fold_in(k, l)), h)
            first = jnp.where(~jnp.all(jnp.isfinite(h), axis=1) & (first > blocks), l + 1, first)
            return l + 1, h, first

        h0 = x_he @ w_in
        start = (jnp.int32(0), h0, jnp.full((per_seed,), blocks + 1, jnp.int32))
        _, _, first = jax.lax.while_loop(
            lambda c: (c[0] < blocks) & jnp.any(c[2] > blocks), body, start
        )
        return first, jnp.log(jnp.mean(jnp.square(h0), axis=1))

    chunks = cfg.progress(range(0, seeds, 64), total=seeds // 64, desc="fixup: He blow-up")
    runs = [first_nonfinite(jax.random.split(jax.random.fold_in(k_he, c), 64)) for c in chunks]
    # (seeds, per_seed) each: the first non-finite block, log E[x_0^2] of each sample
    first_a, log_q0_a = (
        np.concatenate([np.asarray(r[i], np.float64) for r in runs]) for i in (0, 1)
    )
    pred_first = _predict_first_overflow(log_q0_a, width, np.random.default_rng(cfg.seed))
    meas_mean, pred_mean = float(first_a.mean()), float(pred_first.mean())
    meas_se = float(first_a.mean(axis=1).std(ddof=1) / math.sqrt(seeds))
    mf_kind, mf_block = laws.float32_limit_layer(he_block, float(np.exp(log_q0_a).mean()))
    log_r = _he_block_law_samples(width, 200_000, np.random.default_rng(cfg.seed + 1))

    # -- numbers and claims ------------------------------------------------------------------
    ratio_init, fixup_pred = float(q_init[-1] / q_init[0]), fixup_block**blocks
    ratio_trained = float(q_trained[-1] / q_trained[0])
    all_finite_init = bool(fin_init.all() and np.isfinite(q_init).all())
    all_finite_trained = bool(fin_trained.all() and np.isfinite(q_trained).all() and params_finite)
    decrease = float(loss0 - loss1)
    min_decrease = 0.05
    rows = [
        base.Row("blocks / layers in the branches", *[f"{blocks} / {2 * blocks}"] * 2),
        base.Row("E[x_L^2] / E[x_0^2], Fixup at init", f"{fixup_pred:g}", f"{ratio_init:.6f}"),
        base.Row(
            "all block outputs finite, Fixup at init", "yes", "yes" if all_finite_init else "no"
        ),
        base.Row(
            f"held-out loss before / after {train_steps} SGD steps (Fixup)",
            f"decreases by > {min_decrease}",
            f"{float(loss0):.4f} / {float(loss1):.4f}",
            f"training-batch losses: {', '.join(f'{v:.3f}' for v in train_losses)}",
        ),
        base.Row(
            "everything finite after training (params and all block outputs)",
            "yes",
            "yes" if all_finite_trained else "no",
            f"E[x_L^2]/E[x_0^2] = {ratio_trained:.4f}, rms(W2) = {w2_rms:.2e}",
        ),
        base.Row(
            "He branches: factor on E[x^2] per block",
            f"{he_sym}",
            f"E[r] = {np.exp(log_r).mean():.3f}",
            "law sample mean",
        ),
        base.Row(
            "He branches: E[ln r] per block (finite width)",
            f"ln 3 = {math.log(3):.4f} (mean-field)",
            f"{log_r.mean():.4f} (width {width})",
            "Jensen: the typical sample grows slower than the mean",
        ),
        base.Row(
            "He branches: first overflow block, mean-field law (typical size sqrt(E[x^2]))",
            f"{mf_block}",
            f"{meas_mean:.2f}",
            f"{mf_kind}; the mean of q, not a typical sample",
        ),
        base.Row(
            "He branches: first non-finite block, mean over samples (finite-width law)",
            f"{pred_mean:.2f}",
            f"{meas_mean:.2f} +- {meas_se:.2f} (s.e., {seeds} seeds x {per_seed} samples)",
            f"per-sample range {int(first_a.min())} .. {int(first_a.max())}",
        ),
    ]
    claims = [
        base.Claim(
            f"Fixup keeps a {blocks:,}-block residual MLP finite at init without normalization "
            "(each block starts as the identity)",
            all_finite_init and abs(ratio_init - fixup_pred) <= 1e-5,
            f"all {blocks} block outputs finite; E[x_L^2]/E[x_0^2] = {ratio_init:.6f} vs "
            f"{fixup_pred:g} (tolerance 1e-5)",
        ),
        base.Claim(
            f"The Fixup net trains: {train_steps} SGD steps lower the held-out loss and every "
            "parameter and block output stays finite",
            all_finite_trained and decrease > min_decrease and w2_rms > 0,
            f"held-out loss {float(loss0):.4f} -> {float(loss1):.4f} (decrease {decrease:.4f} > "
            f"{min_decrease}); W2 no longer zero (rms {w2_rms:.2e}); E[x_L^2]/E[x_0^2] = "
            f"{ratio_trained:.4f}",
        ),
        base.Claim(
            "With He init in each branch, E[x^2] triples per block and float32 overflows at the "
            "block the law predicts (within 1 block)",
            abs(meas_mean - pred_mean) <= 1.0 and bool(np.all(first_a <= blocks)),
            f"mean first non-finite block {meas_mean:.2f} (s.e. {meas_se:.2f}) vs predicted "
            f"{pred_mean:.2f}; every sample overflowed (mean-field law alone: {mf_block})",
        ),
    ]

    # -- figures -----------------------------------------------------------------------------
    fig, ax = base.new_figure(ncols=2, width=5.2)
    for q, color, when in (
        (q_init, "tab:green", "at init"),
        (q_trained, "tab:blue", f"after {train_steps} steps"),
    ):
        ax[0, 0].plot(q / q[0], color=color, lw=1.5, label=f"Fixup {when}")
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
    for x, color, ls, label in (
        (meas_mean, "tab:red", "--", f"measured mean {meas_mean:.1f}"),
        (pred_mean, "k", ":", f"law mean {pred_mean:.1f}"),
        (mf_block, "gray", "-.", f"mean-field law {mf_block}"),
    ):
        ax[0, 1].axvline(x, color=color, ls=ls, lw=1, label=label)
    ax[0, 1].set(xlabel="first non-finite block", ylabel="samples", title="He in every branch")
    ax[0, 1].legend(fontsize=7)
    fig_main = base.Figure(
        "fixup",
        f"Left: E[x_l^2]/E[x_0^2] over the {blocks:,} blocks of the Fixup net at init (exactly 1) "
        f"and after {train_steps} SGD steps (finite, near 1). Right: with He init in both "
        "branch layers, the block at which each sample first becomes non-finite "
        f"({seeds} seeds x {per_seed} samples), against the finite-width law's prediction and "
        "the mean-field law's overflow block.",
        base.figure_png(fig),
    )
    notes = [
        f"Data: {ds.note}.",
        f"{blocks:,} residual blocks (2 layers each: {2 * blocks:,} layers in the branches) of "
        f"width {width}, input layer {d_in} -> {width}, classifier {width} -> {ds.n_classes}; "
        "no normalization, no block biases, no scalar multipliers.",
        f"Fixup SGD: lr {lr}, momentum {momentum}, batch {batch}, {train_steps} steps; loss "
        "measured on 256 held-out images before and after.",
        "He blow-up: weights drawn per block on the fly (fold_in(key, block)); the loop stops "
        "once every sample is non-finite.",
    ]
    return base.ExperimentResult(
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
            law("block factor E[x_{l+1}^2]/E[x_l^2], He in both branch layers", he_sym),
            law("block factor, Fixup (last branch layer zero)", fixup_sym),
            law("Fixup's first-layer variance (m = 2, g^2 = 2)", var_w1),
            law("block factor if the last layer were He too", scaled_block),
            law("its product over L blocks as L -> oo", bounded),
            law(
                "He branches: first overflow block (mean-field)",
                sp.ceiling(2 * sp.log(sp.Symbol("FLOAT32_MAX")) / sp.log(he_sym)),
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

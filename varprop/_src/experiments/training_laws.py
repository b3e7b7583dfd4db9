r"""Training-time claims, recorded with :func:`varprop.monitor` inside the jitted train step.

**deep_relu_training** (He et al. 2015; Glorot & Bengio 2010). The 30-layer ReLU MLP of
:mod:`.deep_training` (widths, SGD with momentum, batches), from He and from Xavier
(1/fan_in) init, trained for 1,000 steps (quick: 200) on the data of :func:`.measure.standardized`,
every k-th step recorded by the monitor: per layer E[y²] (forward) and E[(∂L/∂x)²] (the
cross-entropy's gradient at the layer's input). The law (:func:`varprop.laws.propagate`):
a ReLU layer passes on :math:`n\,\mathrm{Var}(w)/2` of E[z²] forward and of E[(∂L/∂x)²]
backward, 1 for He and 1/2 for Xavier, so over the 29 ReLUs

.. math:: \frac{E[y_{30}^2]}{E[y_1^2]} = \Big(\frac{n\,\mathrm{Var}(w)}{2}\Big)^{29},\qquad
          \frac{E[(\partial L/\partial x_0)^2]}{E[(\partial L/\partial x_{29})^2]}
          = \frac{n_1}{n_0}\Big(\frac{n\,\mathrm{Var}(w)}{2}\Big)^{29},

1 and :math:`n_1/n_0` for He, :math:`2^{-29}` times that for Xavier (:math:`n_1/n_0` is the
first layer's fan ratio: its input is the data). At finite width the ratios spread
log-normally (Hanin & Rolnick 2018): a (ReLU mask, square layer) pair multiplies the second
moment by :math:`(2/n)\sum_{j\le n} B_j g_j^2` (B Bernoulli(1/2), g standard normal), whose
log has variance :math:`(4/n)(3/2 - 1/4) = 5/n`; a mask alone :math:`3/n`, a layer of m
outputs alone (a chi-square) :math:`2/m`. The claims test the mean over seeds of
:math:`\ln` ratio with :math:`3\sigma/\sqrt{S}` plus :math:`\sigma^2/2` (the log-normal's
mean is :math:`\sigma^2/2` below the log of its mean; a batch mean can only spread less,
so this bounds it). During training the law is the init's: the monitor measures how far
the network moves from it.

**batchnorm_train_eval** (Ioffe & Szegedy 2015). A BatchNorm MLP (varprop's
:class:`~varprop.nn.MLP`, ``norm="batchnorm"``, momentum m, Xavier 1/fan_in kernels) trained
with SGD; the monitor records its train-mode layers, and at the same steps the normalized
output :math:`\hat z = (z - \mu)/\sqrt{v + \epsilon}` of every BN layer is measured on a fixed
batch in train mode (batch statistics) and in eval mode (running statistics). The running
statistics follow :math:`r_t = m^t r_0 + (1 - m)\sum_{k\le t} m^{t-k} s_k` (:math:`s_k` the
batch statistics at step k), which for slowly moving :math:`s` is

.. math:: r_t = s_t + m^t (r_0 - s_t) - \dot s\,(1-m)\sum_{j<t} j\,m^j,

the :math:`m^t` decay of the initial (0, 1) plus the lag of an exponential average behind a
drifting target (:math:`\dot s` estimated from consecutive records). Eval mode gives
:math:`E[\hat z^2] = (\sigma^2 + (\mu - r_\mu)^2)/(r_v + \epsilon)` against train mode's
:math:`\sigma_B^2/(\sigma_B^2 + \epsilon)`: at t = 0 the layers do not normalize and
:math:`E[\hat z_l^2]` is the plain net's :math:`2^{-(l-1)} E[z_1^2]`; the gap closes as
:math:`m^t`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sympy as sp
from scipy import stats as sstats

from varprop import initializers as I
from varprop import laws
from varprop._src.core.network import dense, forward, jax_activation, norm_forward
from varprop._src.core.normalizers import batch_norm
from varprop._src.experiments import base
from varprop._src.experiments.deep_training import DEPTH
from varprop._src.experiments.measure import cross_entropy, figure, law, standardized
from varprop._src.laws import normalization as N
from varprop._src.model.monitor import Monitor, MonitorSeries, monitor

# deep_training's net and optimizer (its run function holds them as locals).
WIDTH, BATCH, LR, SGD_MOMENTUM = 128, 128, 5e-3, 0.9
#: "Early training": the first tenth of the full budget of 1,000 steps.
EARLY = 100

DEEP_TITLE = "He vs Xavier over training: the gradient's decay over 30 ReLU layers, monitored"
BN_TITLE = "BatchNorm over training: the train/eval gap closes as m^t"


# ------------------------------------------------------------------------------------------
# The laws (pure functions, tested on their own).
# ------------------------------------------------------------------------------------------


def depth_ratio_law(widths: tuple[int, ...], scheme: Any) -> tuple[float, float]:
    """log2 of the law's E[y_L²]/E[y_1²] (forward) and E[(∂L/∂x_0)²]/E[(∂L/∂x_{L-1})²]
    (backward: layer 1's input gradient over the last layer's) of a ReLU MLP, all layers
    drawn with ``scheme``, zero biases (:func:`varprop.laws.propagate`)."""
    p = laws.propagate(widths, "relu", scheme)
    # E[(dL/dx)^2] at layer l's input: n_out Var(w) E[(dL/dz_l)^2] (zero-mean weights).
    gx = p.fan_out * p.weight_variance * p.backward
    return float(np.log2(p.forward[-1] / p.forward[0])), float(np.log2(gx[0] / gx[-1]))


def depth_ratio_log_variance(widths: tuple[int, ...]) -> tuple[float, float]:
    """Variance (natural log) of one network's forward and backward depth ratio at
    finite width (module docstring): forward, y_1's mask (3/n_1), the pairs (layer l,
    its mask) for l = 2 .. L-1 (5/n_l) and the output layer (2/n_L); backward, the mask of
    the last hidden layer (3/n_{L-1}), the pairs (layer l, the mask below it) for
    l = L-1 .. 2 (5/n_{l-1}) and the first layer (2/n_0)."""
    n = widths
    fwd = 3 / n[1] + sum(5 / n[i] for i in range(2, len(n) - 1)) + 2 / n[-1]
    bwd = 3 / n[-2] + sum(5 / n[i] for i in range(1, len(n) - 2)) + 2 / n[0]
    return fwd, bwd


def log_band(variance: float, seeds: int, z: float = 3.0) -> float:
    """Tolerance (natural log) of a mean over ``seeds`` of log-normal ratios of log
    variance ``variance`` around the log of the law's ratio: ``z`` standard errors plus
    the log-normal's offset ``variance / 2``."""
    return z * math.sqrt(variance / seeds) + variance / 2


def running_stat_law(t, r0, s, drift, m: float):
    """The running statistic after ``t`` training steps of momentum ``m`` from ``r0``,
    batch statistics ``s`` (now) drifting by ``drift`` per step (first order):
    ``s + m^t (r0 - s) - drift (1 - m) sum_{j<t} j m^j``."""
    t = np.asarray(t, np.float64)
    return s + m**t * (r0 - s) - drift * ema_lag(t, m)


def ema_lag(t, m: float):
    """``(1 - m) sum_{j<t} j m^j = m (1 - m^t - t (1 - m) m^(t-1)) / (1 - m)``: how many steps
    an exponential average of momentum ``m`` started ``t`` steps ago lags behind a linearly
    drifting target (``m / (1 - m)`` for large t)."""
    t = np.asarray(t, np.float64)
    return m * (1 - m**t - t * (1 - m) * m ** np.maximum(t - 1, 0)) / (1 - m)


def eval_second_moment(mean, var, r_mean, r_var, eps: float):
    """Eval-mode E[ẑ²] of a feature with batch mean and (biased) variance ``mean``, ``var``
    normalized with the running statistics: ``(var + (mean - r_mean)^2) / (r_var + eps)``."""
    return (var + (mean - r_mean) ** 2) / (r_var + eps)


def _bonferroni(tests: int, alpha: float = 1e-3) -> float:
    return float(sstats.norm.ppf(1 - alpha / (2 * tests)))


# ------------------------------------------------------------------------------------------
# Training with the monitor in the step.
# ------------------------------------------------------------------------------------------


def _mlp(widths, init, **kw):
    from varprop._src.nn.mlp import MLP

    return lambda rngs: MLP(widths, "relu", kernel_init=init, rngs=rngs, **kw)


def _batches(n_train: int, steps: int, batch: int, seed: int) -> np.ndarray:
    """The batch indices of every step, as deep_training draws them (epochs of
    permutations)."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n_train) for _ in range(steps * batch // n_train + 1)])
    return order[: steps * batch].reshape(steps, batch).astype(np.int32)


def _train_program(mon: Monitor, graphdef, tx, xt, yt):
    """A jitted ``lax.scan`` of monitored SGD steps over batch indices: the record first
    (this step's weights), then the update; running statistics (if any) carried."""
    from flax import nnx

    def step(carry, idx):
        p, rest, o, ms = carry
        x, y = xt[idx], yt[idx]
        ms = mon.record(ms, nnx.merge(graphdef, p, rest), x, y)

        def loss(q):  # the model's own forward, as a pure function (no in-place update)
            m = nnx.merge(graphdef, q, rest)
            if m.norm is None:
                return cross_entropy(forward(m.network, m.params_list(), x), y), []
            out, stats = norm_forward(m.network, m.params_list(), m.norms_list(), x,
                                      train=True, momentum=m.momentum, epsilon=m.epsilon)  # fmt: skip
            return cross_entropy(out, y), stats

        (value, stats), g = jax.value_and_grad(loss, has_aux=True)(p)
        model = nnx.merge(graphdef, p, rest)
        for i, st in enumerate(stats):  # the running statistics, as the model's call sets them
            model.norm_means[i][...] = st["mean"]
            model.norm_vars[i][...] = st["var"]
        rest = nnx.split(model, nnx.Param, ...)[2]
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), rest, o, ms), value

    return jax.jit(lambda carry, idx: jax.lax.scan(step, carry, idx))


def _layer_array(s: MonitorSeries, field: str) -> np.ndarray:
    return np.stack([getattr(r, field) for r in s.layers], -1)  # (records, layers)


# ------------------------------------------------------------------------------------------
# Experiment 1: He vs Xavier on the 30-layer ReLU MLP, over training.
# ------------------------------------------------------------------------------------------


@base.experiment("deep_relu_training", DEEP_TITLE, order=16)
def run_deep_relu_training(cfg: base.RunConfig) -> base.ExperimentResult:
    """Train deep_training's 30-layer ReLU MLP from He and Xavier init with the monitor in
    the step (module docstring)."""
    from flax import nnx

    steps, every, seeds = (200, 10, 4) if cfg.quick else (1000, 10, 4)
    ds, split = standardized(cfg)
    d_in = split.x_train.shape[1]
    widths = (d_in,) + (WIDTH,) * (DEPTH - 1) + (ds.n_classes,)
    names, inits = ("He", "Xavier"), (I.he_normal(), I.xavier_fan_in_normal())
    law_f, law_b = np.array([depth_ratio_law(widths, v.scheme) for v in inits]).T
    var_f, var_b = depth_ratio_log_variance(widths)
    ln2 = math.log(2)
    tol_f, tol_b = (log_band(v, seeds) / ln2 for v in (var_f, var_b))  # octaves
    xt, yt = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    order = jnp.asarray(_batches(len(split.x_train), steps, BATCH, cfg.seed))

    series, losses, mons = [], [], []
    for name, init in zip(names, inits, strict=True):
        factory = _mlp(widths, init)
        mon = monitor(factory, xt[:BATCH], loss=cross_entropy, every=every,
                      capacity=steps // every + 1, seed=cfg.seed)  # fmt: skip
        tx = mon.track_updates(optax.sgd(LR, momentum=SGD_MOMENTUM))
        graphdef = nnx.split(factory(nnx.Rngs(0)), nnx.Param, ...)[0]
        run = _train_program(mon, graphdef, tx, xt, yt)
        per_seed, loss_seed = [], []
        for s in cfg.progress(range(seeds), total=seeds, desc=f"deep_relu_training {name}"):
            # the same normals for both inits: seed s draws both nets from Rngs(seed, s)
            _, p, rest = nnx.split(factory(nnx.Rngs(cfg.seed * 1000 + s)), nnx.Param, ...)
            carry, ls = run((p, rest, tx.init(p), mon.init()), order)
            per_seed.append(mon.series(carry[3], carry[2]))
            loss_seed.append(np.asarray(ls, np.float64))
        series.append(per_seed)
        losses.append(np.stack(loss_seed))
        mons.append(mon)
    rec_steps = series[0][0].layers[0].steps
    # (inits, seeds, records, layers)
    gx = np.array([[_layer_array(s, "gx_m2") for s in ps] for ps in series])
    ym = np.array([[_layer_array(s, "y_m2") for s in ps] for ps in series])
    br = np.array([[_layer_array(s, "backward_ratio") for s in ps] for ps in series])
    fr = np.array([[_layer_array(s, "forward_ratio") for s in ps] for ps in series])
    upd = np.array([[np.stack([u.ratio for u in s.updates], -1) for s in ps] for ps in series])
    log2_b = np.log2(gx[..., 0] / gx[..., -1])  # (inits, seeds, records)
    log2_f = np.log2(ym[..., -1] / ym[..., 0])
    mean_b, mean_f = log2_b.mean(1), log2_f.mean(1)  # (inits, records)
    he, xa = 0, 1

    # -- per-layer laws at step 0 (the monitor's law ratios), Bonferroni over every test
    z_layer = _bonferroni(2 * 2 * DEPTH)
    n_in, n_out = np.array(widths[:-1], float), np.array(widths[1:], float)
    tol_layer = np.stack([z_layer * np.sqrt(2 / n_out / seeds) + 1 / n_out,
                          z_layer * np.sqrt(2 / n_in / seeds) + 1 / n_in])  # fmt: skip
    dev_layer = np.abs(np.stack([np.log(fr[:, :, 0]).mean(1), np.log(br[:, :, 0]).mean(1)], 1))
    ok_layer = bool(np.all(dev_layer <= tol_layer[None]))  # (inits, 2, layers)

    # -- end to end at init, and over training
    dev0_b, dev0_f = mean_b[:, 0] - law_b, mean_f[:, 0] - law_f
    early = rec_steps <= EARLY
    he_dev = np.abs(mean_b[he] - law_b[he])
    he_out = rec_steps[he_dev > tol_b]
    he_first_out = int(he_out[0]) if he_out.size else None
    xa_below = mean_b[xa] < law_b[he] - tol_b
    xa_in = rec_steps[~xa_below]
    xa_first_in = int(xa_in[0]) if xa_in.size else None
    tail = max(1, steps // 10)
    final_loss = np.array([ls[:, -tail:].mean() for ls in losses])
    upd0 = np.log2(upd[:, :, 0, :].mean(1))  # (inits, kernels): log2 ||dW||/||W|| at step 0

    def octs(v):
        return f"{v:+.2f}"

    rows = [base.Row(*r) for r in [
        ("log2 E[y_30^2]/E[y_1^2] at init, He / Xavier (mean of seeds)",
         f"{octs(law_f[he])} / {octs(law_f[xa])}", f"{octs(mean_f[he, 0])} / {octs(mean_f[xa, 0])}",
         f"band +-{tol_f:.2f} octaves ({seeds} seeds)"),
        ("log2 E[(dL/dx_0)^2]/E[(dL/dx_29)^2] at init, He / Xavier",
         f"{octs(law_b[he])} / {octs(law_b[xa])}", f"{octs(mean_b[he, 0])} / {octs(mean_b[xa, 0])}",
         f"band +-{tol_b:.2f} octaves; {octs(law_b[he])} = log2(n_1/n_0), the first layer's fans"),
        ("max |ln law ratio| of a layer at init (forward, backward), He",
         f"<= {tol_layer.max():.2f}", f"{dev_layer[he, 0].max():.3f}, {dev_layer[he, 1].max():.3f}",
         "the monitor's measured / law given the layer's input"),
        ("max |ln law ratio| of a layer at init (forward, backward), Xavier",
         f"<= {tol_layer.max():.2f}", f"{dev_layer[xa, 0].max():.3f}, {dev_layer[xa, 1].max():.3f}"),
        (f"He: max |log2 ratio - law| over the first {EARLY} steps", f"<= {tol_b:.2f}",
         f"{he_dev[early].max():.2f}"),
        (f"He: max |log2 ratio - law| over all {steps} steps", "(no law)",
         f"{he_dev.max():.2f}", "first step outside the band: "
         f"{he_first_out if he_first_out is not None else 'none'}"),
        ("Xavier: log2 backward ratio at the last record", f"{octs(law_b[xa])} (init law)",
         f"{octs(mean_b[xa, -1])}", "first step inside He's band: "
         f"{xa_first_in if xa_first_in is not None else 'none'}"),
        ("Xavier: log2 forward ratio at the last record", f"{octs(law_f[xa])} (init law)",
         f"{octs(mean_f[xa, -1])}"),
        ("log2 ||dW||/||W|| of the first update, kernels (first, stack, last): He / Xavier",
         "Xavier far below He", " ".join(f"{v:.1f}" for v in upd0[he]) + " / "
         + " ".join(f"{v:.1f}" for v in upd0[xa])),
        (f"train loss, mean of the last {tail} steps: He / Xavier", "",
         f"{final_loss[he]:.3f} / {final_loss[xa]:.3f}", f"chance {math.log(ds.n_classes):.3f}"),
    ]]  # fmt: skip
    claims = [base.Claim(*c) for c in [
        ("At init every layer of both nets follows its initializer's law, forward and backward "
         "(the monitor's law ratios are 1 up to the chi-square spread of the layer's width): "
         "Xavier's decay is the law's, not a broken layer.", ok_layer,
         f"max |ln ratio| He {dev_layer[he].max():.3f}, Xavier {dev_layer[xa].max():.3f}; "
         f"per-layer tolerance z sqrt(2/(n S)) + 1/n <= {tol_layer.max():.3f} (z = {z_layer:.2f}, "
         f"Bonferroni over {4 * DEPTH} tests)."),
        ("He preserves the signal over 30 ReLU layers at init: E[y_30^2]/E[y_1^2] = 1 and "
         f"E[(dL/dx_0)^2]/E[(dL/dx_29)^2] = n_1/n_0 = 2^{law_b[he]:.2f} (the first layer's fans; "
         "the 28 square layers pass it on unchanged).",
         bool(abs(dev0_f[he]) <= tol_f and abs(dev0_b[he]) <= tol_b),
         f"log2 measured - law: forward {dev0_f[he]:+.2f} (band +-{tol_f:.2f}), backward "
         f"{dev0_b[he]:+.2f} (band +-{tol_b:.2f}), mean of {seeds} seeds."),
        ("Xavier (1/fan_in) with ReLU halves both at every layer: at init the forward ratio is "
         f"2^{law_f[xa]:.0f} and the backward one 2^{law_b[xa]:.0f} (2^-29 times He's).",
         bool(abs(dev0_f[xa]) <= tol_f and abs(dev0_b[xa]) <= tol_b),
         f"log2 measured: forward {mean_f[xa, 0]:+.2f}, backward {mean_b[xa, 0]:+.2f}; measured - "
         f"law {dev0_f[xa]:+.2f}, {dev0_b[xa]:+.2f} (bands +-{tol_f:.2f}, +-{tol_b:.2f})."),
        (f"He keeps the backward ratio inside its init band during early training (every record "
         f"of the first {EARLY} steps).", bool(np.all(he_dev[early] <= tol_b)),
         f"max |log2 ratio - law| {he_dev[early].max():.2f} <= {tol_b:.2f}; over all {steps} "
         f"steps {he_dev.max():.2f} (first record outside: "
         f"{he_first_out if he_first_out is not None else 'none'})."),
        (f"Xavier's gradient stays far below He's during early training: its kernels' gradients "
         f"are 2^-29 of He's, so the decay persists (every record of the first {EARLY} steps is "
         "below the lower edge of He's band).", bool(np.all(xa_below[early])),
         f"Xavier's log2 ratio over the first {EARLY} steps: {mean_b[xa, early].min():+.1f} .. "
         f"{mean_b[xa, early].max():+.1f}, He's band from {law_b[he] - tol_b:+.2f}; first record "
         f"inside He's band: {xa_first_in if xa_first_in is not None else 'none'}."),
    ]]  # fmt: skip

    # -- figures
    import matplotlib

    fig, axes = base.new_figure(2, 2, width=5.2, height=3.6)
    cmap = matplotlib.colormaps["viridis"]
    for j, name in enumerate(names):
        ax = axes[0, j]
        rel = np.log2(gx[j] / gx[j][..., -1:]).mean(0)  # (records, layers)
        for layer in range(DEPTH - 1):
            ax.plot(rec_steps, rel[:, layer], color=cmap(layer / (DEPTH - 1)), lw=0.9)
        ax.axhline(law_b[j], color="k", ls="--", lw=1, label=f"law, layer 1: {law_b[j]:+.0f}")
        ax.set(xlabel="SGD step", ylabel="log2 E[(dL/dx_l)^2] / E[(dL/dx_29)^2]",
               title=f"{name}: per-layer gradient ratio (dark: layer 1)")  # fmt: skip
    a2, a3 = axes[1]
    for j, (name, c) in enumerate(zip(names, ("tab:blue", "tab:red"), strict=True)):
        for s in range(seeds):
            a2.plot(rec_steps, log2_b[j, s], color=c, alpha=0.25, lw=0.7)
        a2.plot(rec_steps, mean_b[j], color=c, lw=1.8, label=f"{name}: backward, mean")
        a2.plot(rec_steps, mean_f[j], color=c, ls=":", lw=1.5, label=f"{name}: forward, mean")
        a2.fill_between(rec_steps, law_b[j] - tol_b, law_b[j] + tol_b, color=c, alpha=0.12)
        sm = np.convolve(losses[j].mean(0), np.ones(10) / 10, mode="valid")
        a3.plot(np.arange(10, steps + 1), sm, color=c, label=f"{name} (10-step mean)")
    a2.axvline(EARLY, color="gray", ls=":", lw=1)
    a2.set(xlabel="SGD step", ylabel="log2 ratio", title="first/last layer gradient; y_30/y_1")
    a3.axhline(math.log(ds.n_classes), color="gray", ls=":", lw=1, label="chance")
    a3.set(xlabel="SGD step", ylabel="cross-entropy", title="training loss (mean of seeds)")
    fig.tight_layout()
    fig_main = figure(
        "deep_relu_training",
        f"The 30-layer ReLU MLP (width {WIDTH}) on {ds.source}, SGD + momentum, {seeds} seeds, "
        f"recorded by varprop.monitor every {every} steps. Top: each layer's E[(dL/dx_l)^2] over "
        "the last layer's (mean of log2 over seeds; dark = layer 1), He left, Xavier right; "
        "dashed: the law for layer 1 at init. Bottom left: the first/last ratio per seed (faint) "
        "and its mean, the forward E[y_30^2]/E[y_1^2] (dotted), the law's band at init (shaded); "
        f"the grey line ends 'early training' ({EARLY} steps). Bottom right: the training loss.",
        fig,
    )
    fig2, ax2 = base.new_figure(2, 1, width=5.2, height=3.4)
    for j, name in enumerate(names):
        ax = ax2[0, j]
        rel = np.log2(ym[j] / ym[j][..., :1]).mean(0)
        for layer in range(DEPTH):
            ax.plot(rec_steps, rel[:, layer], color=cmap(layer / DEPTH), lw=0.9)
        ax.set(xlabel="SGD step", ylabel="log2 E[y_l^2] / E[y_1^2]",
               title=f"{name}: forward, per layer (dark: layer 1)")  # fmt: skip
    fig_fwd = figure(
        "deep_relu_training_forward",
        "Forward E[y_l^2] of every layer over the first layer's, mean of log2 over seeds "
        "(He left, Xavier right): flat for He at init, one octave per layer down for Xavier; "
        "during training Xavier's deep layers are lifted by their biases (zero at init, their "
        "gradient is not small near the output) while its kernels barely move.",
        fig2,
    )
    return base.ExperimentResult(
        name="deep_relu_training",
        title=DEEP_TITLE,
        summary=(
            f"varprop.monitor inside the jitted SGD step of the 30-layer ReLU MLP: at init He's "
            f"first/last gradient ratio is 2^{mean_b[he, 0]:.2f} (law 2^{law_b[he]:.2f}) and "
            f"Xavier's 2^{mean_b[xa, 0]:.1f} (law 2^{law_b[xa]:.0f}); over the first {EARLY} "
            f"steps He's stays within {he_dev[early].max():.2f} octaves of its law and Xavier's "
            f"below {mean_b[xa, early].max():.1f}; after {steps} steps He's is "
            f"2^{mean_b[he, -1]:.1f}, Xavier's 2^{mean_b[xa, -1]:.1f}."
        ),
        laws=[
            law("forward law of one layer", laws.forward_law()),
            law(
                "He: per-layer factor", laws.layer_factors(inits[he].scheme, "relu").forward_square
            ),
            law(
                "Xavier (1/n): per-layer factor",
                laws.layer_factors(inits[xa].scheme, "relu").forward_square,
            ),
            law(
                "variance of ln of one (ReLU mask, layer) factor at width n",
                sp.Rational(5) / sp.Symbol("n", positive=True),
            ),
        ],
        rows=rows,
        claims=claims,
        figures=[fig_main, fig_fwd],
        notes=[
            f"Data: {ds.note}.",
            f"{DEPTH} layers {d_in} -> {WIDTH} x {DEPTH - 1} -> {ds.n_classes} (varprop.nn.MLP, "
            f"zero biases), SGD lr {LR}, momentum {SGD_MOMENTUM}, batch {BATCH}, {steps} steps, "
            f"deep_training's batches; the monitor records before the update (step 0: the "
            f"initial weights), the loss being the training cross-entropy.",
            "Seed s draws He's and Xavier's nets from the same normals (Xavier = He / sqrt 2).",
        ],
        data=dict(
            steps=rec_steps,
            log2_backward=log2_b,
            log2_forward=log2_f,
            losses=losses,
            grad_m2=gx,
            y_m2=ym,
            law_backward=law_b,
            law_forward=law_f,
        ),
    )


# ------------------------------------------------------------------------------------------
# Experiment 2: BatchNorm's train/eval gap over training.
# ------------------------------------------------------------------------------------------


def _bn_modes(model, x, eps: float):
    """Per BN layer, on batch ``x``, in train mode (batch statistics) and in eval mode
    (running statistics), each mode's chain run through the layers: E[ẑ²] of the
    normalized output ``(2, layers)``, the per-feature mean and biased variance of z
    ``(2, layers, n)``, and the running mean and variance ``(layers, n)``."""
    act = jax_activation(model.network.activation)
    params, norms = model.params_list(), model.norms_list()
    layers = []  # (W, b, scale, bias, running mean, running var) per hidden layer
    for p, nrm in zip(params[:-1], norms, strict=True):
        for i in range(p["W"].shape[0]):
            layers.append(tuple(a[i] for a in (p["W"], p["b"], nrm["scale"], nrm["bias"],
                                               nrm["mean"], nrm["var"])))  # fmt: skip
    out = []
    for train in (True, False):
        h, m2, mus, vs = x, [], [], []
        for w, b, g, beta, rm, rv in layers:
            z = dense(h, w, b)
            zhat = batch_norm(z, None, None, rm, rv, train=train, epsilon=eps).y
            m2.append(jnp.mean(zhat**2))
            mus.append(jnp.mean(z, 0))
            vs.append(jnp.var(z, 0))
            h = act(zhat * g[None] + beta[None])
        out.append((jnp.stack(m2), jnp.stack(mus), jnp.stack(vs)))
    rms = jnp.stack([a[4] for a in layers])
    rvs = jnp.stack([a[5] for a in layers])
    return *(jnp.stack(f) for f in zip(*out, strict=True)), rms, rvs


@base.experiment("batchnorm_train_eval", BN_TITLE, order=17)
def run_batchnorm_train_eval(cfg: base.RunConfig) -> base.ExperimentResult:
    """Train a BatchNorm MLP with the monitor in the step and measure its eval mode at the
    recorded steps (module docstring)."""
    import matplotlib
    from flax import nnx

    width, depth, batch, lr, m = 128, 6, 128, 0.02, 0.9
    steps, every, n_eval = (100, 5, 512) if cfg.quick else (300, 5, 1024)
    ds, split = standardized(cfg)
    d_in = split.x_train.shape[1]
    widths = (d_in,) + (width,) * depth + (ds.n_classes,)
    eps = float(N.NORM_EPSILON["batchnorm"])
    factory = _mlp(widths, I.xavier_fan_in_normal(), norm="batchnorm", momentum=m, epsilon=eps)
    xt, yt = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    order = jnp.asarray(_batches(len(split.x_train), steps, batch, cfg.seed + 1))
    mon = monitor(factory, xt[:batch], loss=cross_entropy, every=every,
                  capacity=steps // every + 1, seed=cfg.seed)  # fmt: skip
    tx = optax.sgd(lr, momentum=SGD_MOMENTUM)
    graphdef, p, rest = nnx.split(factory(nnx.Rngs(cfg.seed)), nnx.Param, ...)
    run = _train_program(mon, graphdef, tx, xt, yt)
    x_eval = jnp.asarray(split.x_valid[:n_eval])
    n_eval = int(x_eval.shape[0])
    measure = jax.jit(lambda p, rest: _bn_modes(nnx.merge(graphdef, p, rest), x_eval, eps))

    carry = (p, rest, tx.init(p), mon.init())
    meas, chunks = [jax.device_get(measure(p, rest))], []
    for start in cfg.progress(range(0, steps, every), total=steps // every, desc="batchnorm"):
        carry, ls = run(carry, order[start : start + every])
        chunks.append(np.asarray(ls, np.float64))
        meas.append(jax.device_get(measure(carry[0], carry[1])))
    loss = np.concatenate(chunks)
    m2, mus, vs, rms, rvs = (
        np.array([np.asarray(r[i], np.float64) for r in meas]) for i in range(5)
    )
    # m2: (T, 2, L); mus, vs: (T, 2, L, n); rms, rvs: (T, L, n)
    ts = np.arange(0, steps + 1, every)
    s_eval = mon.series(carry[3])
    assert np.array_equal(s_eval.layers[0].steps, ts[:-1]), (s_eval.layers[0].steps, ts)
    y_train_mon = _layer_array(s_eval, "y_m2")  # (records, layers + 1): train-mode E[z^2]

    # -- the law: running statistics from m^t, the batch statistics s_t (train mode, scaled
    # to a batch of `batch`), their drift per step from consecutive records.
    bfac = (batch - 1) / batch * n_eval / (n_eval - 1)  # E[biased var of a batch of B]
    s_mu, s_v = mus[:, 0], vs[:, 0] * bfac
    drift_mu = np.concatenate([np.zeros_like(s_mu[:1]), np.diff(s_mu, axis=0) / every])
    drift_v = np.concatenate([np.zeros_like(s_v[:1]), np.diff(s_v, axis=0) / every])
    tt = ts[:, None, None]
    pr_mu = running_stat_law(tt, 0.0, s_mu, drift_mu, m)
    pr_v = running_stat_law(tt, 1.0, s_v, drift_v, m)
    e_mu, e_v = mus[:, 1], vs[:, 1]
    pred_eval = eval_second_moment(e_mu, e_v, pr_mu, pr_v, eps).mean(-1)  # (T, L)
    meas_eval, meas_train = m2[:, 1], m2[:, 0]
    gap = np.log(meas_eval / meas_train)
    pred_gap = np.log(pred_eval / meas_train)
    # Tolerance (ln units), per record: the running statistics' noise, (1-m)(1-m^2t)/(1+m)
    # of a batch statistic's variance (2/B relative for a variance, 1/B of sigma^2 for a mean),
    # averaged over n features (its effect on E[z_hat^2] relative ~ sqrt(2/B + 4/B)/sqrt(n)),
    # and s_t estimated from n_eval examples (same relative effect with 1/n_eval); z of a
    # Bonferroni over every (record, layer); plus the drift's second order, the change of
    # the drift estimate between records times the lag.
    n = width
    k_t = (1 - m) * (1 - m ** (2 * ts)) / (1 + m)
    sd = np.sqrt((k_t[:, None] * 6 / batch + 6 / n_eval) / n)
    lag = ema_lag(ts, m)
    d2 = np.abs(np.diff(np.stack([drift_mu, drift_v]), axis=1, prepend=0.0))  # (2, T, L, n)
    second = lag[:, None] * np.sqrt(
        (d2[0] ** 2 * 4 * np.maximum(e_v, 1e-12) + d2[1] ** 2) / np.maximum(s_v, 1e-12) ** 2
    ).mean(-1)
    z_bn = _bonferroni(gap.size)
    tol = z_bn * sd + second
    ok_law = np.abs(gap - pred_gap) <= tol

    # init: eval mode = the plain net: E[z_hat_l^2] = E[z_1^2] 2^-(l-1)/(1+eps)^l
    q1 = float(np.mean(split.x_valid[:n_eval] ** 2))
    lay = np.arange(1, depth + 1)
    plain = laws.propagate(widths, "relu", I.xavier_fan_in_normal().scheme,
                           input_second_moment=q1).forward[:depth]  # fmt: skip
    law0 = plain / (1 + eps) ** lay
    var0 = np.array([2 / n + 5 * (l - 1) / n for l in lay])
    tol0 = 3 * np.sqrt(var0) + var0 / 2
    dev0 = np.log(meas_eval[0] / law0)
    ok0 = np.abs(dev0) <= tol0
    shrink = np.abs(gap[-1]) / np.abs(gap[0])

    laws_ = [
        law(
            "running statistic after t steps",
            laws.running_average_after(N.steps, N.running_mean, N.batch_stat, N.momentum),
        ),
        law("eval-mode gain", laws.eval_mode_gain()),
        law(
            "eval-mode output mean (gamma = 1, beta = 0)",
            laws.eval_mode_output_moments(gamma=1, beta=0).mean,
        ),
        law("train-mode E[z_hat^2]", laws.train_output_second_moment(1, 0, N.batch_var, N.epsilon)),
    ]
    rows = [base.Row(*r) for r in (
        [(f"layer {l}: eval-mode E[z_hat^2] at t = 0 (plain net)", float(law0[l - 1]),
          float(meas_eval[0, l - 1]), f"train mode {meas_train[0, l - 1]:.4f}")
         for l in lay]
        + [(f"step {int(ts[i])}: ln(eval/train E[z_hat^2]), layer {l}",
            float(pred_gap[i, l - 1]), float(gap[i, l - 1]), f"tolerance {tol[i, l - 1]:.3g}")
           for i in sorted({1, 2, 4, len(ts) // 2, len(ts) - 1}) for l in (1, depth)]
    )]  # fmt: skip
    claims = [base.Claim(*c) for c in [
        ("At init the running statistics are (0, 1), so eval mode does not normalize: every "
         "layer's eval-mode E[z_hat^2] is the plain Xavier ReLU net's, 2^-(l-1) E[z_1^2], while "
         "train mode gives sigma_B^2/(sigma_B^2 + eps) = 1.", bool(ok0.all()),
         f"layer {depth}: law {law0[-1]:.4f}, measured {meas_eval[0, -1]:.4f} (train "
         f"{meas_train[0, -1]:.5f}); max |ln measured/law| {np.abs(dev0).max():.3f}, tolerance "
         f"3 sqrt((2 + 5(l-1))/n) + var/2 = {tol0.min():.2f} .. {tol0.max():.2f}."),
        ("Over training, each layer's train/eval gap ln(E_eval/E_train) follows the law: running "
         f"statistics r_t = s_t + m^t (r_0 - s_t) (m = {m}) less the lag behind the drifting "
         "batch statistics.", bool(ok_law.all()),
         f"max |measured - law| {np.abs(gap - pred_gap).max():.3g} over {gap.size} (record, layer) "
         f"pairs; {int((~ok_law).sum())} outside the tolerance z sd + drift's second order "
         f"(z = {z_bn:.2f}; sd from the running statistics' noise (1-m)/(1+m)/B over {n} "
         "features)."),
        (f"The gap shrinks as the running averages converge: after {steps} steps every layer's "
         "|ln(E_eval/E_train)| is below its initial value and at most the law's (the lag behind "
         "the drifting batch statistics) plus the tolerance.", bool(np.all(shrink < 1) and np.all(
             np.abs(gap[-1]) <= np.abs(pred_gap[-1]) + tol[-1])),
         "final/initial |gap| per layer: " + ", ".join(f"{v:.2g}" for v in shrink)
         + "; final |gap| " + ", ".join(f"{v:.2g}" for v in np.abs(gap[-1])) + ", law "
         + ", ".join(f"{v:.2g}" for v in np.abs(pred_gap[-1])) + f" (+ tolerance <= "
         f"{tol[-1].max():.2g})."),
    ]]  # fmt: skip

    fig, axes = base.new_figure(3, 1, width=4.6, height=3.6)
    a0, a1, a2 = axes[0]
    cmap = matplotlib.colormaps["viridis"]
    for l in range(depth):
        c = cmap(l / depth)
        a0.plot(ts, meas_eval[:, l], "o", ms=2.5, color=c, label=f"eval, layer {l + 1}")
        a0.plot(ts, pred_eval[:, l], "-", lw=0.9, color=c)
        a0.plot(ts, meas_train[:, l], "x", ms=2.5, color=c)
        a1.plot(ts, np.abs(gap[:, l]), "o", ms=2.5, color=c, label=f"layer {l + 1}")
        a1.plot(ts, np.abs(pred_gap[:, l]), "-", lw=0.9, color=c)
    a1.plot(ts, np.abs(gap[0]).max() * m**ts, "k:", lw=1, label="m^t")
    a2.plot(ts[:-1], y_train_mon[:, :depth], lw=0.9)
    a2.set_prop_cycle(None)
    a0.set(xlabel="step t", ylabel="E[z_hat^2]", yscale="log",
           title="eval (dots; law: lines), train (x)")  # fmt: skip
    a1.set(xlabel="step t", ylabel="|ln(E_eval / E_train)|", yscale="log",
           title="train/eval gap (law: lines)")  # fmt: skip
    a2.set(xlabel="step t", ylabel="E[z^2] (train mode, monitor)", yscale="log",
           title="the monitor: pre-BN E[z_l^2] per layer")  # fmt: skip
    fig.tight_layout()
    fig_bn = figure(
        "batchnorm_train_eval",
        f"A {depth}-layer BatchNorm ReLU MLP (width {width}, Xavier 1/fan_in kernels, momentum "
        f"{m}) trained with SGD on {ds.source}. Left: each BN layer's E[z_hat^2] on a fixed batch "
        "of held-out images in eval mode (dots) and the law (lines: running statistics from "
        "m^t and the drift of the batch statistics), train mode (crosses, 1). Middle: the gap "
        "|ln(E_eval/E_train)| and its law; dotted m^t. Right: train-mode E[z^2] before each BN, "
        f"as varprop.monitor recorded it every {every} steps inside the jitted step.",
        fig,
    )
    return base.ExperimentResult(
        name="batchnorm_train_eval",
        title=BN_TITLE,
        summary=(
            f"At init eval mode does not normalize: layer {depth}'s eval-mode E[z_hat^2] is "
            f"{meas_eval[0, -1]:.3f} (law {law0[-1]:.3f}) against 1 in train mode; over "
            f"{steps} SGD steps the gap closes as the running statistics converge (m = {m}), "
            f"to |ln ratio| <= {np.abs(gap[-1]).max():.3g} at the end, as the m^t law with "
            "the batch statistics' drift predicts."
        ),
        laws=laws_,
        rows=rows,
        claims=claims,
        figures=[fig_bn],
        notes=[
            f"Data: {ds.note}.",
            f"Widths {widths}, BatchNorm before every hidden ReLU (epsilon {eps:g}), SGD lr "
            f"{lr}, momentum {SGD_MOMENTUM}, batch {batch}; eval measured on {n_eval} held-out "
            f"images after every {every} steps (the monitor's records are at the same weights).",
        ],
        data=dict(
            steps=ts,
            eval_m2=meas_eval,
            train_m2=meas_train,
            gap=gap,
            gap_law=pred_gap,
            tolerance=tol,
            loss=loss,
            running_mean=rms,
            running_var=rvs,
        ),
    )

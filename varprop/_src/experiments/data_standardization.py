r"""Experiment 12: standardizing data with the training split's statistics; and what every
training experiment shares: that split (:func:`standardized`) and SGD (:func:`sgd`).

fast.ai, "Deep learning from the foundations" (lesson 8): subtract the training mean
:math:`\mu_t` and divide by the training std :math:`\sigma_t` in *both* splits, so they live
on one scale. The training split then has mean 0 and std 1 exactly (up to float rounding),
the validation split only approximately. With images as the sampling unit (pixels of one
image are correlated), per-image means :math:`m_i` with spread :math:`s_m` and a random split
into :math:`n_t + n_v` images give

.. math:: \mathrm{SE}(\bar x_v) = \frac{s_m}{\sigma_t}\sqrt{\frac1{n_t} + \frac1{n_v}},
          \qquad
          \mathrm{SE}(\mathrm{sd}_v) \approx \frac{s_{2}}{2}\sqrt{\frac1{n_t} + \frac1{n_v}}

(:math:`s_2` the spread of the per-image mean of the standardized :math:`x^2`; delta method),
checked over many random splits. "Close to 0 / 1" is tested with
:func:`varprop._src.data.near` and a tolerance of 4 standard errors.

What goes wrong otherwise, measured with a linear classifier (a one-layer
:mod:`varprop._src.core.network`) fitted on the standardized training split: the validation
split standardized with its *own* statistics (the same pixel then means something else in
each split; drastic for small or shifted batches, e.g. a batch of one digit class), or not
standardized at all (the inputs the model sees are shifted and rescaled). Statistics of
train + validation together leak the validation set into the preprocessing, by an amount of
the order of the standard error above.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sympy as sp
from scipy import stats as sstats

from varprop import initializers as I
from varprop._src.core.network import forward, init_params, make_network
from varprop._src.data import Dataset, Split, load_classification, near, standardize_split
from varprop._src.experiments import base
from varprop._src.experiments.measure import law

#: Fraction of the data held out for validation in every training experiment.
VALID_FRACTION = 0.2


def standardized(cfg: base.RunConfig) -> tuple[Dataset, Split]:
    """The classification data of ``cfg`` and its split, both parts standardized with the
    training part's mean and std (key ``cfg.seed``)."""
    ds = load_classification(cfg.data_dir)
    return ds, standardize_split(ds.x, ds.y, VALID_FRACTION, seed=cfg.seed)


def sgd(loss: Callable, lr: float, momentum: float = 0.9):
    """``(init, run)`` for SGD with momentum (optax): ``run((params, init(params)), batches)``
    takes one step per batch in a jitted ``lax.scan`` and returns the new ``(params, state)``
    and each step's record; ``loss(params, batch) -> (value, record)``.

    Example:
        >>> import jax.numpy as jnp
        >>> init, run = sgd(lambda p, b: (jnp.sum((p - b) ** 2), p), lr=0.25, momentum=0.0)
        >>> p0 = jnp.zeros(2)
        >>> (p, _), seen = run((p0, init(p0)), jnp.ones((3, 2)))   # halfway to 1 per step
        >>> p.tolist(), seen[:, 0].tolist()
        ([0.875, 0.875], [0.0, 0.5, 0.75])
    """
    opt = optax.sgd(lr, momentum=momentum)

    def step(carry, batch):
        p, s = carry
        (_, record), g = jax.value_and_grad(loss, has_aux=True)(p, batch)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), record

    return opt.init, jax.jit(lambda carry, batches: jax.lax.scan(step, carry, batches))


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@base.experiment(
    "data_standardization", "Standardizing data with the training split's statistics", 12
)
def run_data_standardization(cfg: base.RunConfig) -> base.ExperimentResult:
    """Standardize the validation split with the *training* split's mean and std (see the
    module docstring for the law)."""
    ds, split = standardized(cfg)
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
    raw_s2 = np.square(x_all).mean(axis=1)
    v_means, v_stds = np.empty(reps), np.empty(reps)
    for r in cfg.progress(range(reps), total=reps, desc="random splits"):
        vi, ti = np.split(rng.permutation(len(x_all)), [n_v])
        mt, mv = m_img[ti].mean(), m_img[vi].mean()
        st = math.sqrt(raw_s2[ti].mean() - mt**2)
        v_means[r], v_stds[r] = (mv - mt) / st, math.sqrt(raw_s2[vi].mean() - mv**2) / st
    sd_vm, sd_vs = float(v_means.std(ddof=1)), float(v_stds.std(ddof=1))

    # -- what goes wrong: one classifier, five ways to prepare the validation inputs -------
    # Softmax regression: a one-layer network, full-batch SGD + momentum with a small L2
    # penalty (optax.adam breaks strict dtype promotion).
    steps = 300 if cfg.quick else 1000
    net = make_network((split.x_train.shape[1], ds.n_classes), "linear", I.normal(0.01))
    xt, yt = jnp.asarray(split.x_train), jnp.asarray(split.y_train)

    def penalized(p, _):
        value = cross_entropy(forward(net, p, xt), yt) + 1e-4 * jnp.sum(jnp.square(p[0]["W"]))
        return value, value

    init, fit = sgd(penalized, 0.05)
    p0 = init_params(net, jax.random.key(cfg.seed))
    (clf, _), _ = fit((p0, init(p0)), jnp.arange(steps))

    raw_v = (xv64 * sd_t + mu_t).astype(np.float32)
    own = ((raw_v - raw_v.mean()) / raw_v.std()).astype(np.float32)
    by_class = np.empty_like(raw_v)
    for c in range(ds.n_classes):  # a batch that holds one class only, standardized by itself
        blk = raw_v[split.y_valid == c]
        by_class[split.y_valid == c] = (blk - blk.mean()) / blk.std()
    per_image = (raw_v - raw_v.mean(axis=1, keepdims=True)) / raw_v.std(axis=1, keepdims=True)
    # How far each one-class batch's own standardization moves its inputs, in training stds:
    # the offset of the class mean that the model was trained to see, erased.
    class_shift = np.array([abs(xv64[split.y_valid == c].mean()) for c in range(ds.n_classes)])
    variants = {
        "training split's mean/std": split.x_valid,
        "validation's own mean/std": own,
        "own mean/std per one-class batch": by_class,
        "own mean/std per image": per_image.astype(np.float32),
        "not standardized": raw_v,
    }
    y_valid = jnp.asarray(split.y_valid)
    logits = {k: forward(net, clf, jnp.asarray(v)) for k, v in variants.items()}
    pred = {k: np.asarray(jnp.argmax(z, axis=-1)) for k, z in logits.items()}
    score = {
        k: (float(cross_entropy(z, y_valid)), float(np.mean(pred[k] == split.y_valid)))
        for k, z in logits.items()
    }
    right = score["training split's mean/std"]
    leak = (float(x_all.mean()) - mu_t) / sd_t

    tol_mean, tol_std = 4.0 * se_mean, 4.0 * se_std
    rows = [
        base.Row(
            "training split: mean, std (standardized)", "0, 1", f"{train_mean:.2e}, {train_std:.7f}"
        ),
        base.Row(
            "validation split: mean",
            f"0 +- {se_mean:.4f} (1 s.e.)",
            f"{valid_mean:+.2e}",
            f"{valid_mean / se_mean:+.2f} s.e.",
        ),
        base.Row(
            "validation split: std",
            f"1 +- {se_std:.4f} (1 s.e.)",
            f"{valid_std:.4f}",
            f"{(valid_std - 1) / se_std:+.2f} s.e.",
        ),
        base.Row(
            f"spread of the validation mean over {reps} random splits",
            f"{se_mean:.4f}",
            f"{sd_vm:.4f}",
            f"pixels as if independent would say {naive_se:.5f}",
        ),
        base.Row(
            f"spread of the validation std over {reps} random splits",
            f"{se_std:.4f}",
            f"{sd_vs:.4f}",
        ),
        base.Row(
            "train+validation mean vs training mean (leakage), in validation s.e.",
            "O(1)",
            f"{leak / se_mean:+.2f}",
            f"{leak:+.5f} in standardized units",
        ),
        base.Row(
            "largest shift of a one-class batch's mean, in training stds",
            "erased by its own standardization",
            f"{class_shift.max():.3f}",
            f"class means range {class_shift.min():.3f} .. {class_shift.max():.3f} in |.|",
        ),
    ] + [
        base.Row(f"validation loss / accuracy, {k}", "", f"{s[0]:.3f} / {s[1]:.3f}")
        for k, s in score.items()
    ]
    unstd = score["not standardized"]
    drop_raw = right[1] - unstd[1]
    own_acc = score["validation's own mean/std"][1]
    class_flips, image_flips = (
        int(np.sum(pred[k] != pred["training split's mean/std"]))
        for k in ("own mean/std per one-class batch", "own mean/std per image")
    )
    claims = [
        base.Claim(
            "Standardized with its own mean and std, the training split has mean 0 and std 1 "
            "(to float32 rounding)",
            near(train_mean, 0.0, 1e-5) and near(train_std, 1.0, 1e-5),
            f"mean {train_mean:.2e}, std {train_std:.7f} (tolerance 1e-5)",
        ),
        base.Claim(
            "The validation split, standardized with the training statistics, has mean close "
            "to 0 and std close to 1 -- within sampling error, but not exactly",
            near(valid_mean, 0.0, tol_mean)
            and near(valid_std, 1.0, tol_std)
            and (abs(valid_mean) > 1e-5 or abs(valid_std - 1.0) > 1e-5),
            f"mean {valid_mean:+.2e} (|.| <= 4 s.e. = {tol_mean:.4f}), std {valid_std:.5f} "
            f"(|.-1| <= {tol_std:.4f}); neither is exact",
        ),
        base.Claim(
            "The deviation is sampling error with images (not pixels) as the unit: the "
            "standard errors predict the spread over random splits",
            0.8 <= sd_vm / se_mean <= 1.25 and 0.8 <= sd_vs / se_std <= 1.25,
            f"over {reps} splits: sd of the mean {sd_vm:.4f} vs {se_mean:.4f}, sd of the std "
            f"{sd_vs:.4f} vs {se_std:.4f} (ratio band [0.8, 1.25]); per-pixel independence "
            f"would predict {naive_se:.5f}",
        ),
        base.Claim(
            "Preparing the validation split any other way changes what the model sees: "
            "unstandardized inputs cost loss and accuracy, and batches standardized by their "
            "own statistics get inputs (and predictions) that depend on the batch",
            unstd[0] >= 1.5 * right[0] and drop_raw >= 0.01 and class_flips + image_flips > 0,
            f"validation loss / accuracy {right[0]:.3f} / {right[1]:.3f} with the training "
            f"statistics vs {unstd[0]:.3f} / {unstd[1]:.3f} unstandardized (loss >= 1.5x, "
            f"accuracy -{drop_raw:.3f} >= 0.01); one-class batches standardized by themselves "
            f"move by up to {class_shift.max():.3f} training stds and {class_flips} of {n_v} "
            f"predictions change ({image_flips} when each image is standardized by itself); "
            f"the whole validation split's own statistics give {own_acc:.3f} (same "
            "distribution as training: nearly harmless here)",
        ),
    ]

    # -- figure ------------------------------------------------------------------------------
    fig, ax = base.new_figure(ncols=3, width=4.4)
    pm_t, pm_v = xt64.mean(axis=0), xv64.mean(axis=0)
    ps_t, ps_v = xt64.std(axis=0), xv64.std(axis=0)
    bins_m = np.linspace(min(pm_t.min(), pm_v.min()), max(pm_t.max(), pm_v.max()), 40)
    bins_s = np.linspace(0, max(ps_t.max(), ps_v.max()), 40)
    for a, (t, v), bins, what, labels in (
        (ax[0, 0], (pm_t, pm_v), bins_m, "mean", (f"train ({n_t})", f"valid ({n_v})")),
        (ax[0, 1], (ps_t, ps_v), bins_s, "std", ("train", "valid")),
    ):
        a.hist(t, bins=bins, alpha=0.6, label=labels[0])
        a.hist(v, bins=bins, histtype="step", lw=1.5, color="k", label=labels[1])
        a.set(
            xlabel=f"per-pixel {what} (standardized)", ylabel="pixels", title=f"per-pixel {what}s"
        )
    ax[0, 2].hist(v_means, bins=30, density=True, alpha=0.6, label=f"{reps} random splits")
    grid = np.linspace(v_means.min(), v_means.max(), 200)
    normal = sstats.norm.pdf(grid, scale=se_mean)
    ax[0, 2].plot(grid, normal, "k-", label=f"N(0, s.e.^2), s.e. = {se_mean:.4f}")
    ax[0, 2].axvline(valid_mean, color="tab:red", ls="--", label=f"this split {valid_mean:+.1e}")
    ax[0, 2].set(
        xlabel="validation mean (train-standardized)", ylabel="density", title="sampling error"
    )
    for a in ax[0]:
        a.legend(fontsize=7)
    fig_main = base.Figure(
        "data_standardization",
        f"{ds.source} standardized with the training split's mean and std. Left and middle: "
        "histograms of the per-pixel means and stds of the training (filled) and validation "
        "(outline) splits: the same shape, the validation split slightly off. Right: the "
        f"validation split's overall mean over {reps} random splits against the normal law "
        "with the predicted standard error (images as the sampling unit); the dashed line is "
        "the split used here.",
        base.figure_png(fig),
    )
    return base.ExperimentResult(
        name="data_standardization",
        title="Standardizing data with the training split's statistics",
        summary=(
            f"Standardized with the training split's mean ({mu_t:.4f}) and std ({sd_t:.4f}), "
            f"the training split has mean {train_mean:.1e} and std {train_std:.6f}; the "
            f"validation split has mean {valid_mean:+.1e} and std {valid_std:.4f}, within "
            f"{max(abs(valid_mean) / se_mean, abs(valid_std - 1) / se_std):.1f} standard errors "
            f"(s.e. {se_mean:.4f} and {se_std:.4f}, confirmed over {reps} random splits). A "
            f"linear classifier scores {right[1]:.1%} on validation data prepared this way, "
            f"{unstd[1]:.1%} unstandardized and "
            f"{score['own mean/std per one-class batch'][1]:.1%} when each one-class batch is "
            "standardized by itself."
        ),
        laws=[
            law("standard error of the validation mean", se_mean_expr),
            law("standard error of the validation std (delta method)", se_std_expr),
        ],
        rows=rows,
        claims=claims,
        figures=[fig_main],
        notes=[
            f"Data: {ds.note}.",
            f"Split {n_t} / {n_v} (validation fraction {VALID_FRACTION}), key {cfg.seed}; scalar "
            "mean and std over all pixels, as in the fast.ai lesson.",
            f"Classifier: softmax regression, {steps} full-batch SGD + momentum steps on the "
            "standardized training split.",
        ],
        data={
            "train_mean_std": np.array([train_mean, train_std]),
            "valid_mean_std": np.array([valid_mean, valid_std]),
            "standard_errors": np.array([se_mean, se_std]),
            "split_valid_means": v_means,
            "split_valid_stds": v_stds,
            "pixel_means": np.stack([pm_t, pm_v]),
            "pixel_stds": np.stack([ps_t, ps_v]),
            "accuracy": np.array([s[1] for s in score.values()]),
            "loss": np.array([s[0] for s in score.values()]),
            "variants": np.array(list(score)),
            "class_mean_shift": class_shift,
            "prediction_changes": np.array([class_flips, image_flips]),
        },
    )

r"""Experiment 12: standardizing data with the training split's statistics.

fast.ai, "Deep learning from the foundations" (lesson 8): subtract the training mean
:math:`\mu_t` and divide by the training std :math:`\sigma_t` in *both* splits. The training
split then has mean 0 and std 1 exactly (up to rounding), the validation split only
approximately: with images as the sampling unit (pixels of one image are correlated),
per-image means with spread :math:`s_m` and a random split into :math:`n_t + n_v` images give

.. math:: \mathrm{SE}(\bar x_v) = \frac{s_m}{\sigma_t}\sqrt{\frac1{n_t} + \frac1{n_v}},
          \qquad
          \mathrm{SE}(\mathrm{sd}_v) \approx \frac{s_{2}}{2}\sqrt{\frac1{n_t} + \frac1{n_v}}

(:math:`s_2` the spread of the per-image mean of the standardized :math:`x^2`; delta method),
checked over many random splits; "close to 0 / 1" is :func:`varprop._src.data.near` within 4
standard errors. What goes wrong otherwise, measured with a linear classifier (a one-layer
:mod:`varprop._src.core.network`): the validation split standardized with its *own*
statistics (drastic for small or shifted batches, e.g. one digit class), or not at all;
train + validation statistics leak the validation set, by about one standard error.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp
from scipy import stats as sstats

from varprop import initializers as I
from varprop._src.core.network import forward, init_params, make_network
from varprop._src.data import near
from varprop._src.experiments import base, measure
from varprop._src.experiments.measure import cross_entropy, figure, law, sgd, standardized

TITLE = "Standardizing data with the training split's statistics"


@base.experiment("data_standardization", TITLE, 12)
def run_data_standardization(cfg: base.RunConfig) -> base.ExperimentResult:
    """Standardize the validation split with the *training* split's mean and std (see the
    module docstring for the law)."""
    ds, split = standardized(cfg)
    n_t, n_v = len(split.x_train), len(split.x_valid)
    mu_t, sd_t = split.mean, split.std
    xt64, xv64 = split.x_train.astype(np.float64), split.x_valid.astype(np.float64)
    (train_mean, train_std), (valid_mean, valid_std) = ((x.mean(), x.std()) for x in (xt64, xv64))

    # -- the law: standard errors with images as the sampling unit
    s_m, s_2, sig, nt, nv = sp.symbols("s_m s_2 sigma_t n_t n_v", positive=True)
    se_exprs = (s_m / sig * sp.sqrt(1 / nt + 1 / nv), s_2 / 2 * sp.sqrt(1 / nt + 1 / nv))
    x_all = ds.x.astype(np.float64)
    m_img = x_all.mean(axis=1)  # per-image means (raw)
    s_img = np.square((x_all - mu_t) / sd_t).mean(axis=1)  # per-image mean of standardized x^2
    subs = {s_m: m_img.std(ddof=1), s_2: s_img.std(ddof=1), sig: sd_t, nt: n_t, nv: n_v}
    se_mean, se_std = (float(e.subs(subs)) for e in se_exprs)
    naive_se = float(xt64.std() / math.sqrt(n_t * xt64.shape[1]))

    # -- many random splits: the spread of the validation mean and std
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

    # -- what goes wrong: one classifier (softmax regression, full-batch SGD + momentum with a
    # small L2 penalty), five ways to prepare the validation inputs
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
    by_class = np.empty_like(raw_v)
    for c in range(ds.n_classes):  # a batch that holds one class only, standardized by itself
        blk = raw_v[split.y_valid == c]
        by_class[split.y_valid == c] = (blk - blk.mean()) / blk.std()
    # the offset of each class mean (training stds) that its own standardization erases
    class_shift = np.array([abs(xv64[split.y_valid == c].mean()) for c in range(ds.n_classes)])
    variants = {
        "training split's mean/std": split.x_valid,
        "validation's own mean/std": (raw_v - raw_v.mean()) / raw_v.std(),
        "own mean/std per one-class batch": by_class,
        "own mean/std per image": (raw_v - raw_v.mean(1, keepdims=True))
        / raw_v.std(1, keepdims=True),
        "not standardized": raw_v,
    }
    logits = [forward(net, clf, jnp.asarray(v, jnp.float32)) for v in variants.values()]
    pred = [np.asarray(jnp.argmax(z, axis=-1)) for z in logits]
    score = {  # validation loss and accuracy of each variant
        k: (float(cross_entropy(z, jnp.asarray(split.y_valid))), float(np.mean(p == split.y_valid)))
        for k, z, p in zip(variants, logits, pred, strict=True)
    }
    right, own, by_class_score, _, unstd = score.values()
    class_flips, image_flips = (int(np.sum(p != pred[0])) for p in pred[2:4])
    leak = (float(x_all.mean()) - mu_t) / sd_t
    drop_raw = right[1] - unstd[1]
    tol_mean, tol_std = 4.0 * se_mean, 4.0 * se_std
    # fmt: off
    rows = [base.Row(*r) for r in [
        ("training split: mean, std (standardized)", "0, 1",
         f"{train_mean:.2e}, {train_std:.7f}"),
        ("validation split: mean", f"0 +- {se_mean:.4f} (1 s.e.)", f"{valid_mean:+.2e}",
         f"{valid_mean / se_mean:+.2f} s.e."),
        ("validation split: std", f"1 +- {se_std:.4f} (1 s.e.)", f"{valid_std:.4f}",
         f"{(valid_std - 1) / se_std:+.2f} s.e."),
        (f"spread of the validation mean over {reps} random splits", f"{se_mean:.4f}",
         f"{sd_vm:.4f}", f"pixels as if independent would say {naive_se:.5f}"),
        (f"spread of the validation std over {reps} random splits", f"{se_std:.4f}",
         f"{sd_vs:.4f}"),
        ("train+validation mean vs training mean (leakage), in validation s.e.", "O(1)",
         f"{leak / se_mean:+.2f}", f"{leak:+.5f} in standardized units"),
        ("largest shift of a one-class batch's mean, in training stds",
         "erased by its own standardization", f"{class_shift.max():.3f}",
         f"class means range {class_shift.min():.3f} .. {class_shift.max():.3f} in |.|"),
        *((f"validation loss / accuracy, {k}", "", f"{s[0]:.3f} / {s[1]:.3f}")
          for k, s in score.items()),
    ]]
    claims = [base.Claim(*c) for c in [
        ("Standardized with its own mean and std, the training split has mean 0 and std 1 "
         "(to float32 rounding)", near(train_mean, 0.0, 1e-5) and near(train_std, 1.0, 1e-5),
         f"mean {train_mean:.2e}, std {train_std:.7f} (tolerance 1e-5)"),
        ("The validation split, standardized with the training statistics, has mean close to 0 "
         "and std close to 1 -- within sampling error, but not exactly",
         near(valid_mean, 0.0, tol_mean) and near(valid_std, 1.0, tol_std)
         and (abs(valid_mean) > 1e-5 or abs(valid_std - 1.0) > 1e-5),
         f"mean {valid_mean:+.2e} (|.| <= 4 s.e. = {tol_mean:.4f}), std {valid_std:.5f} "
         f"(|.-1| <= {tol_std:.4f}); neither is exact"),
        ("The deviation is sampling error with images (not pixels) as the unit: the standard "
         "errors predict the spread over random splits",
         0.8 <= sd_vm / se_mean <= 1.25 and 0.8 <= sd_vs / se_std <= 1.25,
         f"over {reps} splits: sd of the mean {sd_vm:.4f} vs {se_mean:.4f}, sd of the std "
         f"{sd_vs:.4f} vs {se_std:.4f} (ratio band [0.8, 1.25]); per-pixel independence "
         f"would predict {naive_se:.5f}"),
        ("Preparing the validation split any other way changes what the model sees: "
         "unstandardized inputs cost loss and accuracy, and batches standardized by their "
         "own statistics get inputs (and predictions) that depend on the batch",
         unstd[0] >= 1.5 * right[0] and drop_raw >= 0.01 and class_flips + image_flips > 0,
         f"loss / accuracy {right[0]:.3f} / {right[1]:.3f} with the training statistics vs "
         f"{unstd[0]:.3f} / {unstd[1]:.3f} unstandardized (loss >= 1.5x, accuracy -"
         f"{drop_raw:.3f} >= 0.01); {class_flips} of {n_v} predictions change with one-class "
         f"batches standardized by themselves, {image_flips} per image; the split's own "
         f"statistics give {own[1]:.3f} (same distribution: nearly harmless here)"),
    ]]
    # fmt: on

    fig, ax = base.new_figure(ncols=3, width=4.4)
    pixel_means, pixel_stds = (
        np.stack([f(xt64, axis=0), f(xv64, axis=0)]) for f in (np.mean, np.std)
    )
    for a, (t, v), what, lo, labels in (
        (ax[0, 0], pixel_means, "mean", pixel_means.min(), (f"train ({n_t})", f"valid ({n_v})")),
        (ax[0, 1], pixel_stds, "std", 0, ("train", "valid")),
    ):
        bins = np.linspace(lo, max(t.max(), v.max()), 40)
        a.hist(t, bins=bins, alpha=0.6, label=labels[0])
        a.hist(v, bins=bins, histtype="step", lw=1.5, color="k", label=labels[1])
        a.set(
            xlabel=f"per-pixel {what} (standardized)", ylabel="pixels", title=f"per-pixel {what}s"
        )
    ax[0, 2].hist(v_means, bins=30, density=True, alpha=0.6, label=f"{reps} random splits")
    grid = np.linspace(v_means.min(), v_means.max(), 200)
    pdf = sstats.norm.pdf(grid, scale=se_mean)
    ax[0, 2].plot(grid, pdf, "k-", label=f"N(0, s.e.^2), s.e. = {se_mean:.4f}")
    ax[0, 2].axvline(valid_mean, color="tab:red", ls="--", label=f"this split {valid_mean:+.1e}")
    ax[0, 2].set(
        xlabel="validation mean (train-standardized)", ylabel="density", title="sampling error"
    )
    fig_main = figure(
        "data_standardization",
        f"{ds.source} standardized with the training split's mean and std. Left and middle: "
        "histograms of the per-pixel means and stds of the training (filled) and validation "
        "(outline) splits: the same shape, the validation split slightly off. Right: the "
        f"validation split's overall mean over {reps} random splits against the normal law "
        "with the predicted standard error (images as the sampling unit); the dashed line is "
        "the split used here.",
        fig,
    )
    return base.ExperimentResult(
        name="data_standardization",
        title=TITLE,
        summary=(
            f"Standardized with the training split's mean ({mu_t:.4f}) and std ({sd_t:.4f}), "
            f"the training split has mean {train_mean:.1e} and std {train_std:.6f}; the "
            f"validation split has mean {valid_mean:+.1e} and std {valid_std:.4f}, within "
            f"{max(abs(valid_mean) / se_mean, abs(valid_std - 1) / se_std):.1f} standard errors "
            f"(s.e. {se_mean:.4f} and {se_std:.4f}, confirmed over {reps} random splits). A "
            f"linear classifier scores {right[1]:.1%} on validation data prepared this way, "
            f"{unstd[1]:.1%} unstandardized and "
            f"{by_class_score[1]:.1%} when each one-class batch is "
            "standardized by itself."
        ),
        laws=[
            law("standard error of the validation mean", se_exprs[0]),
            law("standard error of the validation std (delta method)", se_exprs[1]),
        ],
        rows=rows,
        claims=claims,
        figures=[fig_main],
        notes=[
            f"Data: {ds.note}.",
            f"Split {n_t} / {n_v} (validation fraction {measure.VALID_FRACTION}), key "
            f"{cfg.seed}; scalar mean and std over all pixels, as in the fast.ai lesson.",
            f"Classifier: softmax regression, {steps} full-batch SGD + momentum steps on the "
            "standardized training split.",
        ],
        data={
            "train_mean_std": np.array([train_mean, train_std]),
            "valid_mean_std": np.array([valid_mean, valid_std]),
            "split_valid_means": v_means,
            "variants": np.array(list(score)),
            "accuracy": np.array([s[1] for s in score.values()]),
        },
    )

r"""Experiment 13, ``conv_resnet_depth``: a conv ResNet of 1,000 blocks without normalization.
He branches add E[f^2] = 2 E[x^2] per block; Fixup and SkipInit keep E[x^2] bounded.

The net: :math:`x_{l+1} = x_l + \alpha\, f_l(x_l)`, :math:`f_l(x) = W_2^{(l)} *
\mathrm{relu}(W_1^{(l)} * x)`, two 3x3 convolutions of c = 16 channels on an 8x8 map (batch 8),
no biases, no normalization, identity skips (the basic block of He et al., "Deep Residual
Learning for Image Recognition", CVPR 2016, without its BatchNorm); the blocks run under one
``jax.lax.scan`` over their stacked kernels, so compiling takes the same time at any depth.

**The law of one block** (exact given the block's input, for i.i.d. zero-mean symmetric
weights, here normal). W2 has zero mean and is independent of x, so the cross term vanishes:

.. math:: E[x_{l+1}^2] = E[x_l^2] + \alpha^2 E[f_l(x_l)^2].

Write :math:`p(o)` for :math:`E[x^2]` at position o (mean over channels and batch) and
:math:`(Ap)(o) = \sum_{t \in T(o)} p(o + t)` for the sum over the kernel taps T(o) that fall
inside the map. A convolution gives :math:`E[z_o^2] = c\,\mathrm{Var}(w)\,(Ap)(o)` (the law of
:mod:`varprop._src.laws.conv`), ReLU halves it (z is symmetric given x), so per position

.. math:: E[f(x)^2](o) = \frac{(c\,\mathrm{Var}(w_1))(c\,\mathrm{Var}(w_2))}{2}\,(A^2 p)(o),

and with He init, :math:`\mathrm{Var}(w) = 2/(9c)`: :math:`E[f^2] = \tfrac{2}{81} A^2 p`. Inside
the map every tap is valid, :math:`A^2 p = 81 p`, so :math:`E[f^2] = 2 E[x^2]`: **the block
adds twice its input's second moment** and E[x^2] is multiplied by 3 per block. The recursion
is additive (the "linear" growth of the residual literature), but because E[f^2] is
proportional to E[x^2] the growth over blocks is geometric, :math:`3^l`; it would be linear
in l only if the branch's input were normalized.

**Borders.** The law is exact with *circular* padding (every tap valid: factor 3 exactly).
Real ResNets pad with zeros (``SAME``), and then :math:`A = T_n \otimes T_n` with T the
tridiagonal n x n matrix of ones: the profile follows :math:`p_{l+1} = M p_l`,
:math:`M = I + \tfrac{2}{81}A^2`, whose eigenvalues are
:math:`\mu_{jk} = 1 + \tfrac{2}{81}(a_j a_k)^2`, :math:`a_j = 1 + 2\cos\frac{j\pi}{n+1}`. So

.. math:: \frac{E[x_L^2]}{E[x_0^2]} = \frac{1}{n^2}\sum_{j,k=1}^{n} s_j s_k\,\mu_{jk}^L,\qquad
          s_j = \frac{2}{n+1}\Big(\sum_{i=1}^n \sin\frac{ij\pi}{n+1}\Big)^2,

per block asymptotically :math:`\lambda_n = \mu_{11} = 1 + \tfrac{2}{81}(1 + 2\cos\frac{\pi}
{n+1})^4` = 2.697 for n = 8 instead of 3: a factor :math:`(\lambda_8/3)^{1000} \approx
e^{-106}` over 1,000 blocks. No map is "large enough" for the interior law at this depth
(:math:`\lambda_n \approx 3 - 8\pi^2/(3(n+1)^2)`); the experiment measures both paddings
against the exact law of each.

**Mean and typical sample.** The depth law is for the mean over weight draws. One block's
ratio :math:`r_l = E[x_{l+1}^2]/E[x_l^2]` varies widely from draw to draw (its branch term
E[f^2]/law has a standard deviation near 0.5 in the measurements), so by Jensen the
typical :math:`\ln E[x_L^2]` falls below :math:`\ln` of the law by
:math:`\sum_l (\ln E[r_l] - E[\ln r_l])`. The experiment therefore tests the law where it
is exact and estimable: each block's ratio against the law given that block's input (every
block of the 1,000, all seeds: a martingale, so the errors are uncorrelated and the
standard error of their mean is valid), and :math:`E[x_l^2] / \mathrm{law}` over the first
blocks with many seeds; the 1,000-block trajectories are drawn beside the law for the mean.
He's E[x^2] leaves float32 after about 80 blocks, so the He nets are measured with a scalar
renormalization after each block: the net is positively homogeneous of degree 1 (ReLU, no
biases), :math:`x_l(s x_0) = s\, x_l(x_0)` for s > 0, so every measured ratio is the net's.

**Fixup** (Zhang, Dauphin & Ma, "Fixup Initialization: Residual Learning Without
Normalization", ICLR 2019): the first conv He-scaled by :math:`L^{-1/(2m-2)}` (m = 2 convs per
branch: :math:`L^{-1/2}` in std, :func:`varprop.initializers.fixup`), the last conv zero: at
init every block is exactly the identity. The scaling is what keeps E[x^2] bounded once the
last conv has moved away from zero: with He there the block factor is
:math:`1 + 2/L` (interior), :math:`(1 + 2/L)^L \to e^2`; with SAME padding
:math:`\frac{1}{n^2}\sum s_j s_k (1 + \frac{2}{81L}(a_ja_k)^2)^L \to \frac{1}{n^2}\sum s_j s_k
\exp(\frac{2}{81}(a_j a_k)^2)`, bounded at any depth. By ReLU's homogeneity this variant is the
same net as SkipInit with :math:`\alpha = L^{-1/2}`.

**SkipInit** (De & Smith, "Batch Normalization Biases Residual Blocks Towards the Identity
Function in Deep Networks", NeurIPS 2020): a scalar :math:`\alpha` on each branch, initialized
to 0, so :math:`x_{l+1} = x_l` exactly at init; the factor is :math:`1 + 2\alpha^2` per block.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp
from scipy.special import logsumexp

from varprop import initializers as I
from varprop import laws
from varprop._src.experiments import base
from varprop._src.experiments.measure import figure, keys_for, law, seed_mean, t_crit
from varprop._src.laws import symbols as S
from varprop._src.probe import COMPILER_OPTIONS

NAME = "conv_resnet_depth"
TITLE = "Conv ResNet, 1,000 blocks: He grows E[x^2] per block, Fixup and SkipInit keep it bounded"
CHANNELS, SIZE, BATCH, KERNEL = 16, 8, 8, 3
BRANCH_LAYERS = 2  # m, convs per branch
#: Per-block statistics the scan emits: ln(E[x_{l+1}^2]/E[x_l^2]); E[f^2], its law given x_l
#: and 2E[x_l f], each over E[x_l^2]; max |x_{l+1} - x_l|.
STATS = ("log_ratio", "branch", "branch_law", "cross", "max_change")

_n = sp.Symbol("n", positive=True, integer=True)  # the map is n x n
_c = sp.Symbol("c", positive=True, integer=True)  # channels
_j, _k, _i = (sp.Symbol(s, positive=True, integer=True) for s in ("j", "k", "i"))
_alpha = S.alpha


@dataclass(frozen=True)
class Variant:
    """One initialization of the same net: std multipliers of the two convs (on He draws:
    common random numbers), the SkipInit scalar, the padding, and whether the measurement
    renormalizes after each block (exact by homogeneity; only where float32 needs it)."""

    name: str
    label: str
    first: float
    last: float
    alpha: float
    circular: bool
    renormalize: bool

    def params(self) -> jax.Array:
        vals = (self.first, self.last, self.alpha, float(self.circular), float(self.renormalize))
        return jnp.asarray(vals, jnp.float32)

    @property
    def branch_factor(self) -> float:
        """(first * last * alpha)^2: the branch's E[f^2] relative to He's."""
        return (self.first * self.last * self.alpha) ** 2


def fixup_multiplier(blocks: int) -> float:
    """Fixup's std over He's for the first conv, from the two schemes' laws: L^(-1/2)."""
    shape = (KERNEL, KERNEL, CHANNELS, CHANNELS)
    fixup = I.fixup(blocks, BRANCH_LAYERS).scheme.variance(shape)
    return math.sqrt(fixup / I.he_normal().scheme.variance(shape))


def variants(blocks: int) -> tuple[Variant, ...]:
    fx = fixup_multiplier(blocks)
    return (
        Variant("he_same", "He, SAME (zero) padding", 1.0, 1.0, 1.0, False, True),
        Variant("he_circular", "He, circular padding", 1.0, 1.0, 1.0, True, True),
        Variant("fixup", "Fixup (last conv zero)", fx, 0.0, 1.0, False, False),
        Variant("fixup_he_last", "Fixup first conv, He last conv", fx, 1.0, 1.0, False, False),
        Variant("skipinit", "SkipInit (alpha = 0)", 1.0, 1.0, 0.0, False, False),
    )


# -- the net ----------------------------------------------------------------------------------


def _pad(x: jax.Array, circular: jax.Array) -> jax.Array:
    """Pad (B, n, n, C) by one on each side: wrapped values (circular = 1) or zeros (0)."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    inside = jnp.pad(jnp.ones(x.shape[1:3], x.dtype), 1)
    keep = inside + (1.0 - inside) * circular
    return xp * keep[None, :, :, None]


def _conv(x: jax.Array, w: jax.Array, circular: jax.Array) -> jax.Array:
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(
        _pad(x, circular), w, (1, 1), "VALID", dimension_numbers=dims
    )


def _taps(p: jax.Array, circular: jax.Array) -> jax.Array:
    """(A p)(o): the sum of p over the 3x3 taps of o that read the map (not the zero pad)."""
    n = p.shape[0]
    pp = _pad(p[None, :, :, None], circular)[0, :, :, 0]
    return sum(pp[a : a + n, b : b + n] for a in range(KERNEL) for b in range(KERNEL))  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _program(blocks: int, batch: int):
    """``(keys, variant_params) -> (p0, stats)``: per seed, the input's profile E[x_0^2](o)
    ``(n, n)`` and the per-block :data:`STATS` ``(blocks, 5)``; seeds one after the other
    (``lax.map``), blocks under ``lax.scan`` over the stacked He kernels."""
    he = I.he_normal()
    shape = (KERNEL, KERNEL, CHANNELS, CHANNELS)
    c_var = CHANNELS * he.scheme.variance(shape)  # c Var(w) = 2/9

    def one(key, v):
        first, last, alpha, circ, renorm = (v[i] for i in range(5))
        kx, kw = jax.random.split(key)
        x0 = jax.random.normal(kx, (batch, SIZE, SIZE, CHANNELS), jnp.float32)

        def draw(k):
            k1, k2 = jax.random.split(k)
            return jnp.stack([he(k1, shape), he(k2, shape)])

        kernels = jax.vmap(draw)(jax.random.split(kw, blocks))  # (blocks, 2, 3, 3, C, C)

        def block(x, w):
            f = alpha * _conv(jax.nn.relu(_conv(x, first * w[0], circ)), last * w[1], circ)
            p = jnp.mean(jnp.square(x), axis=(0, 3))
            q = jnp.mean(p)
            law_f = (first * last * alpha * c_var) ** 2 / 2 * jnp.mean(_taps(_taps(p, circ), circ))
            y = x + f
            qy = jnp.mean(jnp.mean(jnp.square(y), axis=(0, 3)))
            stats = jnp.stack(
                [
                    jnp.log(qy / q),
                    jnp.mean(jnp.square(f)) / q,
                    law_f / q,
                    2.0 * jnp.mean(x * f) / q,
                    jnp.max(jnp.abs(y - x)),
                ]
            )
            return jnp.where(renorm > 0, y * jax.lax.rsqrt(qy), y), stats

        _, stats = jax.lax.scan(block, x0, kernels)
        return jnp.mean(jnp.square(x0), axis=(0, 3)), stats

    return jax.jit(
        lambda keys, v: jax.lax.map(lambda k: one(k, v), keys), compiler_options=COMPILER_OPTIONS
    )


def measure(
    variant: Variant, blocks: int, seeds: int, seed: int, tag: int, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(p0, stats)`` as float64 NumPy: ``(seeds, n, n)`` and ``(seeds, blocks, 5)``; the
    seeds run ``chunk`` at a time (one compiled program for any multiple of ``chunk``)."""
    chunk = chunk or seeds
    if seeds % chunk:
        raise ValueError(f"seeds={seeds} is not a multiple of chunk={chunk}")
    prog, keys = _program(blocks, BATCH), keys_for(seed, tag, seeds)
    out = [prog(keys[i : i + chunk], variant.params()) for i in range(0, seeds, chunk)]
    return tuple(np.concatenate([np.asarray(o[j], np.float64) for o in out]) for j in (0, 1))  # type: ignore[return-value]


# -- the law ----------------------------------------------------------------------------------


def tap_operator(n: int, circular: bool) -> np.ndarray:
    """A as an (n^2, n^2) matrix: T kron T, T the n x n matrix with ones on |i - j| <= 1
    (wrapping around when ``circular``)."""
    idx = np.arange(n)
    dist = np.abs(idx[:, None] - idx[None, :])
    if circular:
        dist = np.minimum(dist, n - dist)
    t = (dist <= 1).astype(np.float64)
    return np.kron(t, t)


def log_mean_law(p0: np.ndarray, factor: float, blocks: int, circular: bool) -> np.ndarray:
    """``ln E[x_l^2 | x_0]`` for l = 0..blocks: ln mean(M^l p0), M = I + factor A^2, iterated
    in float64 with a running log scale (the values pass float64's range); ``p0`` ``(..., n, n)``
    gives ``(..., blocks + 1)``."""
    n = p0.shape[-1]
    a = tap_operator(n, circular)
    m = np.eye(n * n) + factor * (a @ a)
    v = p0.reshape(-1, n * n).T.copy()
    out = np.empty((blocks + 1, v.shape[1]))
    log_scale = np.zeros(v.shape[1])
    out[0] = np.log(v.mean(0))
    for l in range(1, blocks + 1):
        v = m @ v
        s = v.mean(0)
        log_scale += np.log(s)
        v /= s
        out[l] = log_scale
    return out.T.reshape(*p0.shape[:-2], blocks + 1)


def sympy_laws() -> dict[str, sp.Expr]:
    """The laws of the module docstring, derived in SymPy from the schemes and ReLU's moments."""
    he_var = I.he_normal().scheme.law.subs(S.fan_in, KERNEL**2 * _c)  # 2/(9c)
    fixup_var = I.fixup(1, BRANCH_LAYERS).scheme.variance_expr.subs(
        {S.fan_in: KERNEL**2 * _c, S.gain: sp.sqrt(2), S.branch_layers: BRANCH_LAYERS}
    )  # 2/(9 c L)
    relu_m2: sp.Expr = sp.sympify(laws.moment_expressions("relu")[1] / S.q)  # 1/2
    taps = KERNEL**2
    branch = sp.simplify((taps * _c * he_var) * relu_m2 * (taps * _c * he_var))  # interior
    block = 1 + _alpha**2 * branch
    cv2: sp.Expr = sp.sympify(sp.simplify((_c * he_var) ** 2 * relu_m2))  # 2/81
    a = lambda j: 1 + 2 * sp.cos(j * sp.pi / (_n + 1))  # noqa: E731
    mu = 1 + cv2 * (a(_j) * a(_k)) ** 2

    def s(j: sp.Symbol) -> sp.Expr:
        total = cast(sp.Expr, sp.Sum(sp.sin(_i * j * sp.pi / (_n + 1)), (_i, 1, _n)))
        return 2 / (_n + 1) * total**2

    mean_law = sp.Sum(s(_j) * s(_k) * mu**S.depth, (_j, 1, _n), (_k, 1, _n)) / _n**2
    lam = mu.subs({_j: 1, _k: 1})
    fx_branch = sp.simplify((taps * _c * fixup_var) * relu_m2 * (taps * _c * he_var))
    fx_mu = 1 + sp.simplify((_c * fixup_var) * (_c * he_var) * relu_m2) * (a(_j) * a(_k)) ** 2
    fx_limit = (
        sp.Sum(s(_j) * s(_k) * sp.exp(cv2 * (a(_j) * a(_k)) ** 2), (_j, 1, _n), (_k, 1, _n)) / _n**2
    )
    return {
        "he_var": he_var,
        "fixup_var": fixup_var,
        "relu_m2": relu_m2,
        "branch": branch,
        "block": block,
        "cv2": cv2,
        "mu": mu,
        "s": s(_j),
        "mean_law": mean_law,
        "lambda": lam,
        "lambda_limit": sp.limit(lam, _n, sp.oo),
        "fixup_branch": fx_branch,
        "fixup_block_limit": sp.limit((1 + fx_branch) ** S.depth, S.depth, sp.oo),
        "fixup_mu": fx_mu,
        "fixup_limit": fx_limit,
    }


def _spectrum(n: int) -> tuple[np.ndarray, np.ndarray]:
    """ln of the weights s_j s_k / n^2 and the products (a_j a_k)^2 of the SAME-padding law
    (the odd j, k: the even ones have s_j = 0)."""
    j = np.arange(1, n + 1)
    a = 1 + 2 * np.cos(j * np.pi / (n + 1))
    s = 2 / (n + 1) * np.sin(np.outer(j, j) * np.pi / (n + 1)).sum(0) ** 2
    keep = s > 1e-12 * n
    a, s = a[keep], s[keep]
    log_w = (np.log(s)[:, None] + np.log(s)[None, :]).ravel() - 2 * math.log(n)
    return log_w, np.outer(a * a, a * a).ravel()


def spectral_log_law(n: int, depth: int | np.ndarray, factor: float) -> np.ndarray:
    """ln of the SAME-padding mean law (1/n^2) sum_jk s_j s_k (1 + factor (a_j a_k)^2)^L
    (uniform input profile), by logsumexp; ``factor`` = 2/81 for He."""
    log_w, a2 = _spectrum(n)
    d = np.atleast_1d(np.asarray(depth, np.float64))
    terms = log_w[None, :] + d[:, None] * np.log1p(factor * a2)[None, :]
    return np.asarray(logsumexp(terms, axis=1))


def spectral_log_limit(n: int, factor: float) -> float:
    """ln of (1/n^2) sum_jk s_j s_k exp(factor (a_j a_k)^2): the law of (I + factor A^2 / L)^L
    as L -> oo (Fixup's first conv with an He last conv, SAME padding)."""
    log_w, a2 = _spectrum(n)
    return float(np.asarray(logsumexp(log_w + factor * a2)))


# -- the experiment ---------------------------------------------------------------------------


def _mean_test(values: np.ndarray, target: float, crit: float) -> tuple[bool, float, float]:
    """Whether the mean of ``values`` (all entries: uncorrelated by the martingale property)
    is ``target`` within ``crit`` standard errors; (held, mean, standard error)."""
    v = values.ravel()
    mean, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    return bool(abs(mean - target) <= crit * se), mean, se


@base.experiment(NAME, TITLE, order=13)
def run_conv_resnet_depth(cfg: base.RunConfig) -> base.ExperimentResult:
    """He, Fixup and SkipInit on a conv ResNet of 1,000 basic blocks without normalization
    (the laws in the module docstring)."""
    blocks, seeds, fixup_seeds = (100, 4, 64) if cfg.quick else (1000, 8, 128)
    shallow, shallow_seeds = (10, 128) if cfg.quick else (10, 512)
    var = variants(blocks)
    by_name = {v.name: v for v in var}
    sym = sympy_laws()
    cv2 = float(sym["cv2"])  # 2/81
    lam8 = float(sym["lambda"].subs(_n, SIZE))
    he_block = float(sym["block"].subs(_alpha, 1))

    # -- measure: the five variants of the deep net, and the He nets' first blocks with many seeds
    deep = {  # Fixup + He last: more seeds (its law is tested on E[x_L^2] over seeds)
        v.name: measure(v, blocks, fixup_seeds if v.name == "fixup_he_last" else seeds,
                        cfg.seed, 13, chunk=seeds)
        for v in cfg.progress(var, total=len(var), desc=f"{NAME}: {blocks} blocks")
    }  # fmt: skip
    first = {
        k: measure(by_name[k], shallow, shallow_seeds, cfg.seed, 14)
        for k in ("he_same", "he_circular")
    }

    # -- the tests: per block (deep runs), per depth (shallow runs, the Fixup run)
    active = ("he_same", "he_circular", "fixup_he_last")
    n_tests = 2 * len(active) + 2 * shallow + 1
    crit_blocks = t_crit(blocks * seeds, n_tests)  # the He runs' (block, seed) pairs
    crit_shallow = t_crit(shallow_seeds, n_tests)
    crit_seeds = t_crit(fixup_seeds, n_tests)
    block_tests = {}
    for name in active:
        st = deep[name][1]
        ratio = st[..., STATS.index("branch")] / st[..., STATS.index("branch_law")]
        block_tests[name] = (
            _mean_test(ratio, 1.0, crit_blocks),
            _mean_test(st[..., STATS.index("cross")], 0.0, crit_blocks),
        )

    # E[x_l^2 | x_0] law for each seed's input profile, and R_l = q_l / law (E[R_l] = 1)
    def log_q(p0, st):  # ln E[x_l^2] for l = 0..blocks, per seed
        lq0 = np.log(p0.mean((1, 2)))
        return np.concatenate([lq0[:, None], lq0[:, None] + np.cumsum(st[..., 0], 1)], 1)

    shallow_r, shallow_interior = {}, {}
    for name, (p0, st) in first.items():
        v = by_name[name]
        law_l = log_mean_law(p0, cv2 * v.branch_factor, shallow, v.circular)
        shallow_r[name] = np.exp(log_q(p0, st) - law_l)[:, 1:]  # (seeds, shallow)
        interior = np.log(p0.mean((1, 2)))[:, None] + np.arange(shallow + 1) * math.log(he_block)
        shallow_interior[name] = np.exp(log_q(p0, st) - interior)[:, 1:]
    r_mean = {k: seed_mean(r) for k, r in shallow_r.items()}
    ok_shallow = {
        k: bool(np.all(np.abs(m - 1.0) <= crit_shallow * se)) for k, (m, se) in r_mean.items()
    }
    # SAME under the interior law 3^l: the mean ratio at the last shallow block, and its s.e.
    int_m, int_se = seed_mean(shallow_interior["he_same"][:, -1:])
    interior_rejected = bool(abs(float(int_m[0]) - 1.0) > crit_shallow * float(int_se[0]))

    # Deep trajectories: measured ln E[x_l^2]/E[x_0^2] per seed; the laws for the mean
    traj = {k: log_q(*deep[k]) - np.log(deep[k][0].mean((1, 2)))[:, None] for k in deep}
    uniform = np.ones((1, SIZE, SIZE))
    mean_law = {
        k: log_mean_law(uniform, cv2 * by_name[k].branch_factor, blocks, by_name[k].circular)[0]
        for k in active
    }
    spectral = spectral_log_law(SIZE, np.arange(blocks + 1), cv2)
    fx_p0, _ = deep["fixup_he_last"]
    fx_law = log_mean_law(fx_p0, cv2 * by_name["fixup_he_last"].branch_factor, blocks, False)
    fx_r = np.exp(traj["fixup_he_last"][:, -1] + np.log(fx_p0.mean((1, 2))) - fx_law[:, -1])
    fx_m, fx_se = (float(a[0]) for a in seed_mean(fx_r[:, None]))
    ok_fixup_active = abs(fx_m - 1.0) <= crit_seeds * fx_se
    fx_limit = math.exp(spectral_log_limit(SIZE, cv2))  # the bound at any depth (SAME, 8x8)
    fx_law_uniform = float(np.exp(mean_law["fixup_he_last"][-1]))
    identity = {
        k: bool(np.all(deep[k][1][..., STATS.index("max_change")] == 0.0))
        and bool(np.all(deep[k][1][..., 0] == 0.0))
        for k in ("fixup", "skipinit")
    }

    # Jensen: per block, ln r_l - ln rho_l, rho_l = 1 + E[f^2|x_l]/E[x_l^2] (the law's factor)
    jensen = {
        k: float((deep[k][1][..., 0] - np.log1p(deep[k][1][..., STATS.index("branch_law")])).mean())
        for k in ("he_same", "he_circular")
    }
    log10 = math.log(10)
    typical = {k: float(np.median(traj[k][:, -1]) / log10) for k in ("he_same", "he_circular")}
    f32 = math.log(laws.FLOAT32_MAX)
    overflow = {  # first block whose (mean over seeds) ln E[x_l^2] passes ln FLOAT32_MAX
        k: int(np.argmax(traj[k].mean(0) > f32)) for k in ("he_same", "he_circular")
    }

    # -- report
    yes = {True: "yes", False: "no"}
    bt = block_tests
    fmt = lambda t: f"{t[1]:.4g} +- {t[2]:.2g}"  # noqa: E731
    # fmt: off
    rows = [base.Row(*r) for r in [
        ("blocks / convs in the branches / seeds", f"{blocks} / {2 * blocks} / {seeds}",
         f"{blocks} / {2 * blocks} / {seeds}",
         f"{CHANNELS} channels, {SIZE}x{SIZE} map, batch {BATCH}, 3x3 convs, no normalization"),
        ("E[f^2]/E[x^2] per block, He, circular padding (no border)", f"{float(sym['branch'])}",
         fmt(_mean_test(deep["he_circular"][1][..., 1], 2.0, crit_blocks)),
         "mean over all blocks and seeds"),
        ("E[f(x_l)^2] / law given x_l, He SAME", 1.0, fmt(bt["he_same"][0]),
         "law (2/81) mean(A^2 p_l): the border taps read zeros"),
        ("E[f(x_l)^2] / law given x_l, Fixup first conv + He last", 1.0,
         fmt(bt["fixup_he_last"][0]), ""),
        ("cross term 2E[x_l f_l]/E[x_l^2] (He SAME / circular / Fixup+He)", 0.0,
         " / ".join(fmt(bt[k][1]) for k in active), "E[x_{l+1}^2] = E[x_l^2] + E[f^2]"),
        ("per-block factor, He SAME, asymptotic (lambda_8)", f"{lam8:.4f}",
         f"{math.exp(float(np.mean(deep['he_same'][1][..., 0]))):.4f} (typical)",
         f"interior: {he_block:g}; typical = exp(mean ln r), below E[r] by Jensen"),
        ("per-block Jensen gap E[ln r_l] - ln E[r_l | x_l] (SAME / circular)", "< 0",
         f"{jensen['he_same']:.4f} / {jensen['he_circular']:.4f}",
         "the mean law is for E[x^2]; a typical sample grows slower"),
        (f"log10 E[x_L^2]/E[x_0^2] after {blocks} blocks, He SAME",
         f"{mean_law['he_same'][-1] / log10:.1f} (mean)", f"{typical['he_same']:.1f} (median)",
         f"interior law 3^L: {blocks * math.log10(3):.1f}"),
        (f"log10 E[x_L^2]/E[x_0^2] after {blocks} blocks, He circular",
         f"{mean_law['he_circular'][-1] / log10:.1f} (mean)",
         f"{typical['he_circular']:.1f} (median)", "3^L exactly for the mean"),
        ("He: first block with E[x_l^2] > FLOAT32_MAX (without renormalization)",
         f"{math.ceil(f32 / math.log(he_block))} (3^l)",
         f"SAME {overflow['he_same']} / circular {overflow['he_circular']}",
         "measured with renormalization (exact by homogeneity)"),
        (f"E[x_l^2]/law, l = 1..{shallow}, He SAME ({shallow_seeds} seeds)", 1.0,
         ", ".join(f"{m:.3f}" for m in r_mean["he_same"][0]),
         f"max s.e. {r_mean['he_same'][1].max():.3f}"),
        (f"E[x_l^2]/law, l = 1..{shallow}, He circular ({shallow_seeds} seeds)", 1.0,
         ", ".join(f"{m:.3f}" for m in r_mean["he_circular"][0]),
         f"max s.e. {r_mean['he_circular'][1].max():.3f}"),
        (f"He SAME: E[x_{shallow}^2]/(3^{shallow} E[x_0^2]) (interior law)",
         f"{math.exp(mean_law['he_same'][shallow] - shallow * math.log(3)):.4f} (border law)",
         f"{float(int_m[0]):.4f} +- {float(int_se[0]):.4f}", "the interior law overestimates"),
        ("Fixup at init: E[x_L^2]/E[x_0^2]; all blocks exactly the identity", "1; yes",
         f"{math.exp(traj['fixup'][:, -1].max()):.6f}; {yes[identity['fixup']]}", ""),
        (f"Fixup first conv + He last: E[x_L^2]/E[x_0^2] (L = {blocks})",
         f"{fx_law_uniform:.4f}", f"{np.exp(traj['fixup_he_last'][:, -1]).mean():.4f}",
         f"bound at any depth (L -> oo): {fx_limit:.4f}; interior e^2 = {math.e**2:.4f}"),
        ("Fixup + He last: E[x_L^2] / law given x_0", 1.0, f"{fx_m:.4f} +- {fx_se:.4f}", ""),
        ("SkipInit (alpha = 0): E[x_L^2]/E[x_0^2]; all blocks exactly the identity", "1; yes",
         f"{math.exp(traj['skipinit'][:, -1].max()):.6f}; {yes[identity['skipinit']]}", ""),
    ]]
    claims = [base.Claim(*c) for c in [
        ("Per block of a He conv ResNet, E[x_{l+1}^2] = E[x_l^2] + E[f(x_l)^2]: the cross term "
         "2E[x_l f(x_l)] vanishes (He SAME, He circular, Fixup + He last)",
         all(bt[k][1][0] for k in active),
         "mean 2E[x f]/E[x^2] over all blocks and seeds: "
         + ", ".join(f"{k} {fmt(bt[k][1])}" for k in active)
         + f"; each within {crit_blocks:.2f} s.e. of 0"),
        ("Per block, E[f(x_l)^2] equals the branch law (c Var w1)(c Var w2)/2 * mean(A^2 p_l): "
         "2 E[x_l^2] inside the map, less at a zero-padded border",
         all(bt[k][0][0] for k in active),
         "mean of E[f^2]/law over all blocks and seeds: "
         + ", ".join(f"{k} {fmt(bt[k][0])}" for k in active)
         + f"; each within {crit_blocks:.2f} s.e. of 1"),
        (f"Over depth, E[x_l^2] follows the law M^l p_0: 3^l with circular padding, the border "
         f"law (per block -> lambda_8 = {lam8:.3f}) with SAME padding",
         ok_shallow["he_same"] and ok_shallow["he_circular"] and interior_rejected,
         f"E[x_l^2]/law for l = 1..{shallow} over {shallow_seeds} seeds within {crit_shallow:.2f} "
         f"s.e. of 1 (SAME max |dev| {np.abs(r_mean['he_same'][0] - 1).max():.3f}, circular "
         f"{np.abs(r_mean['he_circular'][0] - 1).max():.3f}); the interior law 3^l is rejected "
         f"for SAME at l = {shallow}: ratio {float(int_m[0]):.3f} +- {float(int_se[0]):.3f}"),
        (f"Fixup at init: every one of the {blocks:,} blocks is exactly the identity",
         identity["fixup"], "max |x_{l+1} - x_l| = 0 and E[x_L^2] = E[x_0^2] bit for bit, all seeds"),
        (f"Fixup's L^(-1/2) keeps E[x^2] bounded once the last conv is He: the law "
         f"{fx_law_uniform:.3f} at L = {blocks}, below its limit {fx_limit:.3f} at any depth",
         bool(ok_fixup_active) and fx_law_uniform <= fx_limit,
         f"E[x_L^2]/law given x_0: {fx_m:.4f} +- {fx_se:.4f} over {fixup_seeds} seeds (within "
         f"{crit_seeds:.2f} s.e. of 1)"),
        ("SkipInit (alpha = 0): the net is exactly the identity at init", identity["skipinit"],
         f"max |x_{{l+1}} - x_l| = 0 over {blocks:,} blocks and {seeds} seeds"),
    ]]
    # fmt: on

    fig, ax = base.new_figure(ncols=3, width=4.6)
    a0, a1, a2 = ax[0]
    ls = np.arange(blocks + 1)
    for k, color in (("he_same", "tab:red"), ("he_circular", "tab:blue")):
        for s in range(seeds):
            a0.plot(ls, traj[k][s] / log10, color=color, lw=0.5, alpha=0.4)
        a0.plot(ls, mean_law[k] / log10, color=color, lw=1.5, label=f"{by_name[k].label}: law")
    a0.plot(ls, ls * math.log10(3), "k--", lw=1, label="interior law 3^l")
    a0.set(xlabel="block l", ylabel="log10 E[x_l^2]/E[x_0^2]", title="He branches (thin: seeds)")
    for k, color, style in (("fixup", "tab:green", "-"), ("skipinit", "tab:purple", "--")):
        a1.plot(ls, np.exp(traj[k].mean(0)), style, color=color, lw=2, label=by_name[k].label)
    fx_mean, fx_band = seed_mean(np.exp(traj["fixup_he_last"]))
    a1.plot(ls, fx_mean, color="tab:orange", lw=1.5, label=f"Fixup + He last ({fixup_seeds} seeds)")
    a1.fill_between(ls, fx_mean - crit_seeds * fx_band, fx_mean + crit_seeds * fx_band,
                    color="tab:orange", alpha=0.25, lw=0)  # fmt: skip
    a1.plot(ls, np.exp(mean_law["fixup_he_last"]), "k-", lw=1, label="... law")
    a1.axhline(fx_limit, color="k", ls=":", lw=1, label=f"bound L -> oo ({fx_limit:.2f})")
    a1.set(xlabel="block l", ylabel="E[x_l^2]/E[x_0^2]", yscale="log", title="Fixup and SkipInit")
    a1.set_ylim(0.8, fx_limit * 1.5)
    lv = np.arange(1, shallow + 1)
    for k, color, dx in (("he_same", "tab:red", -0.12), ("he_circular", "tab:blue", 0.12)):
        m, se = r_mean[k]
        a2.errorbar(
            lv + dx, m, crit_shallow * se, fmt="o", ms=3, color=color, label=by_name[k].label
        )
    m, se = seed_mean(shallow_interior["he_same"])
    a2.errorbar(lv, m, crit_shallow * se, fmt="x", ms=4, color="gray", label="He SAME vs 3^l")
    a2.axhline(1.0, color="k", lw=1)
    a2.set(xlabel="block l", ylabel="E[x_l^2] / law", title=f"First blocks, {shallow_seeds} seeds")
    fig.tight_layout()
    caption = (
        f"Left: log10 E[x_l^2]/E[x_0^2] over the {blocks:,} blocks of the He conv ResNet with "
        "SAME and circular padding (thin: each seed; thick: the law for the mean; dashed: the "
        "interior law 3^l); the seeds lie below the mean law by the Jensen gap. Middle: Fixup "
        "and SkipInit are exactly 1; Fixup's first-conv scaling with an He last conv (mean over "
        "seeds, band: the critical value times the s.e.) follows its law, below the "
        "depth-independent bound. Right: E[x_l^2]/law over the first blocks "
        f"({shallow_seeds} seeds, bars: the test's critical value times the s.e.), and SAME "
        "against the interior law."
    )
    data = {
        "log_q": {k: traj[k] for k in traj},
        "log_mean_law": mean_law,
        "spectral_log_law": spectral,
        "stats": {k: deep[k][1] for k in deep},
        "p0": {k: deep[k][0] for k in deep},
        "shallow_ratio": shallow_r,
        "shallow_interior_ratio": shallow_interior,
        "fixup_he_last_ratio": fx_r,
        "fixup_limit": np.array(fx_limit),
        "lambda": np.array(lam8),
        "blocks": np.array(blocks),
    }
    return base.ExperimentResult(
        name=NAME,
        title=TITLE,
        summary=(
            f"A conv ResNet of {blocks:,} basic blocks without normalization. With He branches "
            "each block adds E[f^2] = 2E[x^2] inside the map (less at zero-padded borders), "
            f"which the measurement confirms block by block (E[f^2]/law "
            f"{bt['he_circular'][0][1]:.3f}, cross term {bt['he_circular'][1][1]:.3f}); E[x^2] "
            f"grows to 10^{typical['he_same']:.0f} (SAME, median) against the mean law's "
            f"10^{mean_law['he_same'][-1] / log10:.0f}. Fixup and SkipInit start every block "
            f"as the identity (exactly); Fixup's scaling keeps E[x_L^2]/E[x_0^2] at {fx_m:.2f} "
            f"x the law {fx_law_uniform:.2f} once the last conv is He, below {fx_limit:.2f}."
        ),
        laws=[
            law("He variance of a 3x3 conv with c input channels", sym["he_var"]),
            law("E[relu(z)^2] / E[z^2]", sym["relu_m2"]),
            law("E[f^2]/E[x^2], He branch inside the map", sym["branch"]),
            law("block factor E[x_{l+1}^2]/E[x_l^2] with SkipInit's alpha", sym["block"]),
            law("eigenvalues of M = I + (c Var w)^2/2 A^2, SAME padding, n x n map", sym["mu"]),
            law("weight of eigenvector j in the uniform profile", sym["s"]),
            law("E[x_L^2]/E[x_0^2], SAME padding", sym["mean_law"]),
            law("per-block factor at depth, SAME (lambda_n)", sym["lambda"]),
            law("lambda_n as n -> oo", sym["lambda_limit"]),
            law("Fixup's first-conv variance (m = 2)", sym["fixup_var"]),
            law("E[f^2]/E[x^2], Fixup first conv and He last conv", sym["fixup_branch"]),
            law("its product over L blocks as L -> oo (interior)", sym["fixup_block_limit"]),
            law("the SAME-padding bound at any depth", sym["fixup_limit"]),
        ],
        rows=rows,
        claims=claims,
        figures=[figure("depth", caption, fig)],
        notes=[
            f"Each seed draws one input (batch {BATCH}, N(0, 1) entries) and He-normal kernels "
            "for every block (vmapped draws, stacked and scanned); the five variants use the "
            "same draws, scaled (common random numbers).",
            "The He nets are renormalized to E[x^2] = 1 after every block (a scalar; exact by "
            "positive homogeneity) and their growth accumulated in log space: E[x^2] itself "
            "would leave float32 near block 80.",
            "Critical values: Student t at alpha = 1e-3, Bonferroni over the experiment's "
            f"{n_tests} tests; the per-block tests pool all {blocks * seeds} (block, seed) pairs, "
            "whose deviations are martingale differences (uncorrelated).",
        ],
        data=data,
    )

r"""Experiments 1-6: what the scale of the initial weights does to a deep network.

Each experiment measures one classic initialization claim in jitted JAX and puts it beside the
variance law that predicts it (:mod:`varprop.laws`). Layer l maps x (width n_{l-1}) to
z = x W + b and h = phi(z); q_l = E[z_l^2] and g_l = E[(dL/dz_l)^2]:

.. math::

    q_{l+1} = n_l\,\mathrm{Var}(w)\,E[\phi(z_l)^2], \qquad
    g_l = E[\phi'(z_l)^2]\; n_{l+1}\,\mathrm{Var}(w)\; g_{l+1}

- ``zeros``: W = 0 makes every hidden gradient exactly 0; which parameters move at all is
  decided by phi(0) and phi'(0).
- ``constant``: W = c keeps the units of a layer identical under gradient descent.
- ``small_random``: N(0, 0.01^2) shrinks q and g by n Var(w) c_phi per layer until float32
  underflows (LeCun et al. 1998 for the scaling argument).
- ``standard_normal``: N(0, 1) grows them by n c_phi per layer until float32 overflows.
- ``xavier``: Var(w) = 2/(n_in + n_out) (Glorot & Bengio, AISTATS 2010) keeps tanh nets at
  the mean-field fixed point and halves E[z^2] per ReLU layer.
- ``he``: Var(w) = 2/n (He et al., ICCV 2015) preserves ReLU nets; fan_in mode the forward
  pass, fan_out mode the backward pass.

Weights are drawn inside the jitted programs as ``std * N(0, 1)`` with ``std`` from the
initializer's scheme (``scheme.std(shape)``), exactly what :class:`varprop.Initializer`
does for a normal scheme; the std is an argument, so one compiled program serves every
scheme of the same shape. That, and statistics the checker has no use for (fractions of
exact zeros, per-layer values past the first non-finite one), is why these programs are
their own small stacks rather than :mod:`varprop._src.probe`; the numerics of every second
moment are shared with the probe (:mod:`varprop._src.moments`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sympy as sp
from scipy import stats as sstats

from varprop import initializers as inits
from varprop import laws
from varprop._src.check import check
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
from varprop._src.laws import symbols as S
from varprop._src.moments import unit_log_moments
from varprop._src.core.network import jax_activation
from varprop._src.probe import COMPILER_OPTIONS

if TYPE_CHECKING:
    from matplotlib.image import AxesImage

Array = jax.Array

#: Statistics :func:`_moments` returns for a ``(batch, units)`` array, in this order.
_LM2, _RV, _ZERO, _FINITE = range(4)
_EPS32 = float(np.finfo(np.float32).eps)
#: XLA's backend level 1 compiles these small programs several times faster than the
#: default, and runs them as fast (the matmuls are library calls either way).
_FAST_COMPILE = COMPILER_OPTIONS  # the probe's setting: same run time, a quarter of the compile


# -- shared measurement helpers (jitted) ----------------------------------------------------


def _moments(v: Array) -> Array:
    """``[log E[v^2], rel. variance across units of per-unit E[v^2], fraction of exact
    zeros, all finite]`` of a ``(batch, units)`` array, over its finite entries.

    The moments are :func:`varprop._src.moments.unit_log_moments`: the log stays finite
    wherever the values do. The squared relative standard error of E[v^2] is ``rv / units``.
    """
    lm2, rv, _ = unit_log_moments(v, ignore_nonfinite=True)
    zero = jnp.mean((v == 0).astype(jnp.float32))
    return jnp.stack([lm2, rv, zero, jnp.all(jnp.isfinite(v)).astype(jnp.float32)])


@functools.partial(
    jax.jit, static_argnames=("width", "batch", "activation"), compiler_options=_FAST_COMPILE
)
def _square_stack(keys: Array, stds: Array, *, width: int, batch: int, activation: str):
    """S seeds of a square stack: ``depth = len(stds)`` layers ``h <- phi(h W_l)``, width
    ``width``, W_l ~ std_l N(0, 1), no bias, x ~ N(0, 1), loss ``sum(phi(z_L) v)``.

    Returns ``(z, h, gz)``, each ``(S, depth, 4)`` of :func:`_moments`: the pre-activation,
    the activation, and dL/dz. One ``lax.scan`` over layers: compile time is depth-free.
    """
    act = jax_activation(activation)
    depth = stds.shape[0]

    def one(key):
        kx, kv, kw = jax.random.split(key, 3)
        x = jax.random.normal(kx, (batch, width), jnp.float32)
        v = jax.random.normal(kv, (batch, width), jnp.float32)
        wkeys = jax.random.split(kw, depth)

        def loss(eps):
            def body(h, xs):
                k, s, e = xs
                z = h @ (s * jax.random.normal(k, (width, width), jnp.float32)) + e
                out = act(z)
                return out, (_moments(z), _moments(out))

            h_last, (zs, hs) = jax.lax.scan(body, x, (wkeys, stds, eps))
            return jnp.sum(h_last * v), (zs, hs)

        eps = jnp.zeros((depth, batch, width), jnp.float32)
        (_, (zs, hs)), g = jax.value_and_grad(loss, has_aux=True)(eps)
        return zs, hs, jax.vmap(_moments)(g)

    return jax.vmap(one)(keys)


@functools.partial(
    jax.jit, static_argnames=("widths", "batch", "activation"), compiler_options=_FAST_COMPILE
)
def _pyramid(keys: Array, stds: Array, *, widths: tuple[int, ...], batch: int, activation: str):
    """S seeds of an MLP with arbitrary ``widths`` (unrolled), W_l ~ std_l N(0, 1), no bias,
    x ~ N(0, 1), linear output layer, loss ``sum(y v)``. Returns ``(z, gz)``, each
    ``(S, L, 4)`` of :func:`_moments`."""
    act = jax_activation(activation)
    depth = len(widths) - 1

    def one(key):
        kx, kv, kw = jax.random.split(key, 3)
        x = jax.random.normal(kx, (batch, widths[0]), jnp.float32)
        v = jax.random.normal(kv, (batch, widths[-1]), jnp.float32)
        wkeys = jax.random.split(kw, depth)

        def loss(eps):
            h, zs = x, []
            for i in range(depth):
                w = stds[i] * jax.random.normal(wkeys[i], (widths[i], widths[i + 1]), jnp.float32)
                z = h @ w + eps[i]
                zs.append(_moments(z))
                h = z if i == depth - 1 else act(z)
            return jnp.sum(h * v), jnp.stack(zs)

        eps = [jnp.zeros((batch, n), jnp.float32) for n in widths[1:]]
        (_, zs), g = jax.value_and_grad(loss, has_aux=True)(eps)
        return zs, jnp.stack([_moments(gi) for gi in g])

    return jax.vmap(one)(keys)


def _keys(cfg: RunConfig, tag: int, n: int) -> Array:
    return jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), tag), n)


# -- shared law helpers (host, float64) -----------------------------------------------------


def _square_law(activation: str, sw2: float, depth: int, q0: float = 1.0):
    """Predicted q_l and g_l (l = 1..depth) of :func:`_square_stack` with n Var(w) = ``sw2``:
    q_1 = sw2 q0, q_{l+1} = sw2 E[phi(z_l)^2]; g_L = E[phi'(z_L)^2],
    g_l = E[phi'(z_l)^2] sw2 g_{l+1} (moments from :func:`varprop.laws.activation_moments`)."""
    q = np.zeros(depth)
    d2 = np.zeros(depth)
    q_in = q0
    for i in range(depth):
        q[i] = sw2 * q_in
        m = laws.activation_moments(activation, max(q[i], 1e-300))
        d2[i] = m.grad_second_moment
        q_in = m.second_moment
    g = np.zeros(depth)
    g[-1] = d2[-1]
    for i in range(depth - 2, -1, -1):
        g[i] = d2[i] * sw2 * g[i + 1]
    return q, g


def _mlp_law(widths: Sequence[int], variances: Sequence[float], c_phi: float = 0.5):
    """q_l, g_l for a homogeneous phi (E[phi^2] = c_phi q, E[phi'^2] = c_phi) with a linear
    output layer: q_l = n_{l-1} Var(w_l) m_{l-1}, g_L = 1, g_l = c_phi n_{l+1} Var(w_{l+1}) g_{l+1}."""
    L = len(widths) - 1
    q, g = np.zeros(L), np.ones(L)
    m = 1.0
    for i in range(L):
        q[i] = widths[i] * variances[i] * m
        m = c_phi * q[i]
    for i in range(L - 2, -1, -1):
        g[i] = c_phi * widths[i + 2] * variances[i + 1] * g[i + 1]
    return q, g


def _seed_mean(lm2: np.ndarray):
    """Mean over seeds of a ``(S, L)`` log second moment and its standard error."""
    s = lm2.shape[0]
    return lm2.mean(0), lm2.std(0, ddof=1) / math.sqrt(s)


def _t_crit(n_seeds: int, n_tests: int, alpha: float = 1e-3) -> float:
    """Two-sided Student-t critical value, Bonferroni over ``n_tests``."""
    return float(sstats.t.ppf(1 - alpha / (2 * n_tests), n_seeds - 1))


def _factor_estimate(lm2: np.ndarray, first: int, last: int):
    """Per-layer factor between layers ``first`` and ``last`` (0-based, inclusive), from each
    seed's ``log(q_last / q_first) / (last - first)``: the geometric mean, and the standard
    error of its log across seeds."""
    per_seed = (lm2[:, last] - lm2[:, first]) / (last - first)
    se = per_seed.std(ddof=1) / math.sqrt(per_seed.size)
    return float(np.exp(per_seed.mean())), float(se)


def _first_majority_zero(zero_frac: np.ndarray) -> np.ndarray:
    """Per seed, the first layer (1-based) where more than half of the values are exactly 0
    (the median |v| underflowed); 0 when none."""
    bad = zero_frac > 0.5
    return np.where(bad.any(1), bad.argmax(1) + 1, 0)


def _law(label: str, expr) -> Law:
    return Law(label, laws.latex(expr), str(expr))


def _sym(name: str) -> sp.Symbol:
    return sp.Symbol(name)


# -- 1. zeros ---------------------------------------------------------------------------------


_ZERO_ACTS = ("tanh", "relu", "sigmoid")


def _degenerate_flags(activation: str) -> tuple[sp.Expr, sp.Expr]:
    """phi(0) and phi'(0) from the activation's SymPy expression. ReLU's derivative at 0 is
    the JAX convention, 0 (both conventions give the same prediction since relu(0) = 0)."""
    act = laws.get_activation(activation)
    return sp.nsimplify(act.expr.subs(S.x, 0)), sp.nsimplify(act.grad_expr.subs(S.x, 0))


def _zero_pattern(depth: int, steps: int, phi0_nonzero: bool, dphi0_nonzero: bool) -> np.ndarray:
    """Which gradients are non-zero at each SGD step, from the backprop equations, when every
    weight and bias starts at 0 (a ``(steps, depth, 2)`` bool array, ``[..., 0]`` kernel,
    ``[..., 1]`` bias).

    dL/dW_l = h_{l-1}^T delta_l, dL/db_l = 1^T delta_l, delta_L = dL/dy (non-zero),
    delta_l = (delta_{l+1} W_{l+1}^T) * phi'(z_l); a factor is non-zero when it is a
    generic (moved) value, or a constant (phi(0), phi'(0) at z = 0) that is non-zero.
    """
    w_moved = np.zeros(depth, bool)
    b_moved = np.zeros(depth, bool)
    out = np.zeros((steps, depth, 2), bool)
    for t in range(steps):
        # forward: is z_l / h_l non-zero?
        h_nz = [True]  # the input
        z_nz = []
        for i in range(depth):
            z = (w_moved[i] and h_nz[i]) or b_moved[i]
            z_nz.append(z)
            h_nz.append(z or phi0_nonzero)
        delta = [False] * depth
        delta[-1] = True
        for i in range(depth - 2, -1, -1):
            dh = delta[i + 1] and w_moved[i + 1]
            delta[i] = dh and (z_nz[i] or dphi0_nonzero)
        for i in range(depth):
            out[t, i, 0] = delta[i] and h_nz[i]
            out[t, i, 1] = delta[i]
        w_moved |= out[t, :, 0]
        b_moved |= out[t, :, 1]
    return out


def _regression_data(key: Array, n: int, d_in: int, d_out: int):
    kx, kt = jax.random.split(key)
    x = jax.random.normal(kx, (n, d_in), jnp.float32)
    y = x @ jax.random.normal(kt, (d_in, d_out), jnp.float32) / math.sqrt(d_in) + 1.0
    return x, y


def _mlp_apply(params, x, act):
    h = x
    for i, (w, b) in enumerate(params):
        z = h @ w + b[None, :]
        h = z if i == len(params) - 1 else act(z)
    return h


def _train_zeros(key: Array, *, widths: tuple[int, ...], activation: str, steps: int):
    """``steps`` SGD steps (optax, lr 0.1) of MSE regression on Gaussian data, from all-zero
    weights (:data:`varprop.initializers.zeros`) and biases; per step and parameter, the
    max |grad| and the max |param| after the step (each ``(steps, L, 2)``)."""
    act = jax_activation(activation)
    opt = optax.sgd(0.1)
    x, y = _regression_data(key, 128, widths[0], widths[-1])
    params = [
        (inits.zeros(key, (a, b)), jnp.zeros((b,), jnp.float32))
        for a, b in itertools.pairwise(widths)
    ]

    def loss(p):
        return jnp.mean(jnp.square(_mlp_apply(p, x, act) - y))

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        upd, s = opt.update(g, s, p)
        p = cast(list[tuple[Array, Array]], optax.apply_updates(p, upd))
        gmax = jnp.stack([jnp.stack([jnp.max(jnp.abs(a)) for a in gi]) for gi in g])
        pmax = jnp.stack([jnp.stack([jnp.max(jnp.abs(a)) for a in pi]) for pi in p])
        return (p, s), (gmax, pmax)

    _, (gmax, pmax) = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return gmax, pmax


_train_zeros_jit = jax.jit(
    _train_zeros,
    static_argnames=("widths", "activation", "steps"),
    compiler_options=_FAST_COMPILE,
)


def _zero_heatmap(ax, measured: np.ndarray, predicted: np.ndarray, title: str) -> AxesImage:
    """log10 max|grad| per (parameter, step); exact zeros blank; predicted non-zero cells
    outlined."""
    from matplotlib.patches import Rectangle

    steps, depth, _ = measured.shape
    grid = measured.reshape(steps, 2 * depth).T  # rows: W1, b1, W2, b2, ...
    pred = predicted.reshape(steps, 2 * depth).T
    with np.errstate(divide="ignore"):
        img = np.where(grid > 0, np.log10(np.where(grid > 0, grid, 1.0)), np.nan)
    im = ax.imshow(img, aspect="auto", cmap="viridis", vmin=-8, vmax=1, origin="upper")
    for r, c in zip(*np.nonzero(pred), strict=True):
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    ax.set_yticks(range(2 * depth))
    ax.set_yticklabels([f"{k}{i + 1}" for i in range(depth) for k in ("W", "b")])
    ax.set_xticks(range(steps))
    ax.set_xticklabels([str(t + 1) for t in range(steps)])
    ax.set_xlabel("SGD step")
    ax.set_title(title, fontsize=9)
    return im


@experiment("zeros", "All-zero weights: hidden gradients are exactly zero", 1)
def run_zeros(cfg: RunConfig) -> ExperimentResult:
    r"""All weights and biases 0. Backprop gives

    .. math:: \delta_l = (\delta_{l+1} W_{l+1}^\top)\odot\phi'(z_l) = 0 \ (l < L),\qquad
              \partial L/\partial W_L = \phi(0)\,\mathbf 1^\top \delta_L

    so at step 1 only the output bias (and the output kernel when phi(0) != 0) has a
    non-zero gradient. With phi(0) = 0 nothing else ever moves; with phi(0) != 0 and
    phi'(0) != 0 one more layer wakes per step (and its units stay identical, see
    ``constant``).
    """
    widths = (8, 16, 16, 16, 2) if cfg.quick else (16, 64, 64, 64, 64, 4)
    depth = len(widths) - 1
    steps = depth + 2
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    measured, predicted, pmaxes, flags = {}, {}, {}, {}
    for a in cfg.progress(_ZERO_ACTS, total=len(_ZERO_ACTS), desc="zeros"):
        gmax, pmax = _train_zeros_jit(key, widths=widths, activation=a, steps=steps)
        measured[a] = np.asarray(gmax)
        pmaxes[a] = np.asarray(pmax)
        phi0, dphi0 = _degenerate_flags(a)
        flags[a] = (phi0, dphi0)
        predicted[a] = _zero_pattern(depth, steps, phi0 != 0, dphi0 != 0)

    def names(mask):
        return [f"{'Wb'[k]}{i + 1}" for i in range(depth) for k in (0, 1) if mask[i, k]]

    rows, match = [], {}
    for a in _ZERO_ACTS:
        nz = measured[a] > 0
        match[a] = bool(np.array_equal(nz, predicted[a]))
        phi0, dphi0 = flags[a]
        rows.append(
            Row(
                f"{a}: non-zero gradients at step 1 (phi(0)={phi0}, phi'(0)={dphi0})",
                ", ".join(names(predicted[a][0])),
                ", ".join(names(nz[0])),
            )
        )
        rows.append(
            Row(
                f"{a}: parameters that moved in {steps} SGD steps",
                ", ".join(names(predicted[a].any(0))),
                ", ".join(names(pmaxes[a][-1] > 0)),
            )
        )
    hidden_zero = {a: float(measured[a][0, :-1].max()) for a in _ZERO_ACTS}
    moved_match = all(np.array_equal(pmaxes[a][-1] > 0, predicted[a].any(0)) for a in _ZERO_ACTS)

    delta_l, delta_n, w_n = _sym(r"\delta_l"), _sym(r"\delta_{l+1}"), _sym("W_{l+1}")
    phi0_s, dphi0_s = _sym(r"\phi(0)"), _sym(r"\phi'(0)")
    laws_ = [
        _law("backprop through zero weights", sp.Eq(delta_l, dphi0_s * delta_n * w_n)),
        _law("… with W_{l+1} = 0", sp.Eq(delta_l, (dphi0_s * delta_n * w_n).subs(w_n, 0))),
        _law(
            "output kernel gradient at init (h = phi(0) everywhere)",
            sp.Eq(_sym(r"\partial L/\partial W_L"), phi0_s * _sym(r"\mathbf{1}^T\delta_L")),
        ),
    ]
    for a in _ZERO_ACTS:
        act = laws.get_activation(a)
        laws_.append(_law(f"{a}: phi(0)", sp.Eq(phi0_s, act.expr.subs(S.x, 0))))

    claims = [
        Claim(
            "With zero weights, every hidden layer's kernel and bias gradient is exactly 0.",
            all(v == 0.0 for v in hidden_zero.values()),
            "max |dL/dW_l|, |dL/db_l| over hidden layers at step 1: "
            + ", ".join(f"{a} {v:.1e}" for a, v in hidden_zero.items())
            + " (exact criterion: == 0).",
        ),
        Claim(
            "At every SGD step the set of parameters with a non-zero gradient is exactly the "
            "one the backprop equations predict from phi(0) and phi'(0).",
            all(match.values()),
            f"{steps} steps x {2 * depth} parameters x {len(_ZERO_ACTS)} activations; "
            + ", ".join(f"{a}: {'equal' if m else 'differs'}" for a, m in match.items())
            + ". Only the output bias ever moves for tanh and ReLU (phi(0) = 0).",
        ),
        Claim(
            "Training moves only the parameters the law allows (all others stay exactly 0).",
            moved_match,
            "Parameters with max|p| > 0 after training equal the predicted set for every "
            "activation.",
        ),
    ]

    fig, axes = new_figure(ncols=3, width=3.6, height=3.6)
    im = None
    for ax, a in zip(axes[0], _ZERO_ACTS, strict=True):
        phi0, dphi0 = flags[a]
        im = _zero_heatmap(ax, measured[a], predicted[a], f"{a}: φ(0)={phi0}, φ'(0)={dphi0}")
    assert im is not None  # _ZERO_ACTS is non-empty
    fig.colorbar(im, ax=axes[0].tolist(), label="log10 max|gradient| (blank: exactly 0)")
    fig.suptitle("Zero init: measured non-zero gradients (colour) vs predicted (red boxes)")
    figs = [
        Figure(
            "zeros_gradients",
            "Per parameter (rows) and SGD step (columns), log10 of the largest |gradient| "
            "when every weight and bias starts at 0; blank cells are exactly zero. Red boxes "
            "are the cells the backprop equations predict non-zero: for tanh and ReLU "
            "(phi(0) = 0) only the output bias, for sigmoid (phi(0) = 1/2) one more layer "
            "per step.",
            figure_png(fig),
        )
    ]
    return ExperimentResult(
        name="zeros",
        title="All-zero weights: hidden gradients are exactly zero",
        summary=(
            "With all-zero weights every hidden gradient is exactly 0; under SGD only the "
            "output bias moves when phi(0) = 0, and for sigmoid exactly one more layer wakes "
            "per step, as the backprop equations predict."
        ),
        laws=laws_,
        rows=rows,
        claims=claims,
        figures=figs,
        data={
            "widths": np.array(widths),
            "activations": np.array(_ZERO_ACTS),
            "grad_max": np.stack([measured[a] for a in _ZERO_ACTS]),
            "param_max": np.stack([pmaxes[a] for a in _ZERO_ACTS]),
            "predicted_nonzero": np.stack([predicted[a] for a in _ZERO_ACTS]),
        },
    )


# -- 2. constant ------------------------------------------------------------------------------


def _unit_spread(params) -> Array:
    """Per hidden layer l, the largest difference between any unit and unit 0 of layer l:
    over its incoming kernel column, its bias, and its outgoing kernel row (``(L-1,)``)."""
    out = []
    for i in range(len(params) - 1):
        w, b = params[i]
        w_next = params[i + 1][0]
        d_in = jnp.max(jnp.abs(w - w[:, :1]))
        d_b = jnp.max(jnp.abs(b - b[:1]))
        d_out = jnp.max(jnp.abs(w_next - w_next[:1, :]))
        out.append(jnp.maximum(jnp.maximum(d_in, d_b), d_out))
    return jnp.stack(out)


def _classification_data(key: Array, n: int, d_in: int, classes: int):
    kx, kt = jax.random.split(key)
    x = jax.random.normal(kx, (n, d_in), jnp.float32)
    labels = jnp.argmax(x @ jax.random.normal(kt, (d_in, classes), jnp.float32), axis=1)
    return x, labels


def _train_chunk(params, opt_state, x, labels, *, steps: int, lr: float):
    """``steps`` optax SGD steps of softmax cross-entropy on a tanh MLP; per step the loss
    and the per-layer unit spread (:func:`_unit_spread`) after the step."""
    opt = optax.sgd(lr)

    def loss(p):
        logits = _mlp_apply(p, x, jnp.tanh)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    def step(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        upd, s = opt.update(g, s, p)
        p = optax.apply_updates(p, upd)
        return (p, s), (value, _unit_spread(p))

    (params, opt_state), (losses, spread) = jax.lax.scan(
        step, (params, opt_state), None, length=steps
    )
    return params, opt_state, losses, spread


#: Both initial weight sets are trained side by side (vmap): one compiled program.
_train_chunk_jit = jax.jit(
    lambda p, s, x, y, steps, lr: jax.vmap(
        functools.partial(_train_chunk, steps=steps, lr=lr), in_axes=(0, 0, None, None)
    )(p, s, x, y),
    static_argnames=("steps", "lr"),
    compiler_options=_FAST_COMPILE,
)


@functools.partial(jax.jit, static_argnames=("widths", "c"), compiler_options=_FAST_COMPILE)
def _constant_setup(key: Array, *, widths: tuple[int, ...], c: float):
    """Data, and the constant and Glorot-normal weights stacked on a leading axis."""
    kd, kr = jax.random.split(key)
    x, labels = _classification_data(kd, 256, widths[0], widths[-1])
    runs = [_init_mlp(kr, widths, inits.constant(c)), _init_mlp(kr, widths, inits.glorot_normal())]
    params = jax.tree.map(lambda a, b: jnp.stack([a, b]), *runs)
    return x, labels, params, jax.vmap(_unit_spread)(params)


def _init_mlp(key: Array, widths: Sequence[int], kernel_init) -> list[tuple[Array, Array]]:
    keys = jax.random.split(key, len(widths) - 1)
    return [
        (kernel_init(k, (a, b), jnp.float32), jnp.zeros((b,), jnp.float32))
        for k, a, b in zip(keys, widths[:-1], widths[1:], strict=True)
    ]


@experiment("constant", "Constant weights: the units of a layer never become different", 2)
def run_constant(cfg: RunConfig) -> ExperimentResult:
    r"""All weights equal to c (biases 0). Every unit j of a hidden layer computes the same
    function, :math:`z_j = c\sum_i x_i`, and receives the same gradient,

    .. math:: \partial L/\partial W_{ij} = x_i\,\delta_j,\qquad
              \delta_j = \phi'(z_j)\sum_k W^{(l+1)}_{jk}\,\delta^{(l+1)}_k

    which is the same for every j as long as the columns of W and rows of W^{(l+1)} are
    identical; so they stay identical under any number of gradient steps: the layer has the
    capacity of a single unit. The symmetry is exact; float32 rounding is the only thing
    that could break it. (Goodfellow, Bengio & Courville 2016, §8.4.)
    """
    widths = (16, 32, 32, 32, 4)
    c = 0.1
    n_chunks, chunk = (6, 50) if cfg.quick else (20, 100)
    lr = 0.1
    key = jax.random.fold_in(jax.random.key(cfg.seed), 2)
    x, labels, params, spread0 = _constant_setup(key, widths=widths, c=c)
    state = jax.vmap(optax.sgd(lr).init)(params)
    spreads, losses = [np.asarray(spread0)[:, None]], []
    for _ in cfg.progress(range(n_chunks), total=n_chunks, desc="constant: SGD"):
        params, state, lo, sp_ = _train_chunk_jit(params, state, x, labels, steps=chunk, lr=lr)
        losses.append(np.asarray(lo))
        spreads.append(np.asarray(sp_))
    both = np.concatenate(spreads, axis=1)  # (2, steps + 1, L - 1)
    both_loss = np.concatenate(losses, axis=1)
    spread = {"constant": both[0], "glorot_normal": both[1]}
    loss = {"constant": both_loss[0], "glorot_normal": both_loss[1]}
    steps = n_chunks * chunk
    w_scale = max(float(np.max(np.abs(np.asarray(w[0])))) for w, _ in params)
    # Rounding budget: identical inputs through identical float32 operations give identical
    # outputs; allow one ulp of the largest weight per step in case the matmul kernel
    # summed two columns in different orders.
    tol = _EPS32 * w_scale * steps
    max_spread = float(spread["constant"].max())
    random_spread = float(spread["glorot_normal"][-1].min())
    hidden = len(widths) - 2

    c_s, x_i = S.value, cast(sp.IndexedBase, sp.IndexedBase("x"))
    i, n = sp.symbols("i n_in", integer=True, positive=True)
    z_j = sp.Sum(c_s * x_i[i], (i, 1, n))
    laws_ = [
        _law("pre-activation of every unit j (W = c)", sp.Eq(_sym("z_j"), z_j)),
        _law(
            "spread across units, any step t",
            sp.Eq(_sym(r"\max_j |W_{:,j}(t) - W_{:,1}(t)|"), sp.Integer(0)),
        ),
        _law(
            "weight variance of the scheme (the i.i.d. laws need > 0)",
            sp.Eq(_sym("Var(w)"), inits.constant(c).scheme.law),
        ),
    ]
    rows = [
        Row(
            f"hidden layer {layer + 1}: max unit spread over {steps} steps (constant {c})",
            0.0,
            float(spread["constant"][:, layer].max()),
            f"tolerance {tol:.1e}",
        )
        for layer in range(hidden)
    ]
    rows += [
        Row(
            f"hidden layer {layer + 1}: unit spread after {steps} steps (Glorot normal)",
            "> 0",
            float(spread["glorot_normal"][-1, layer]),
            "control: random init",
        )
        for layer in range(hidden)
    ]
    rows.append(
        Row(
            "final training loss (constant / Glorot)",
            "-",
            f"{loss['constant'][-1]:.3f} / {loss['glorot_normal'][-1]:.3f}",
        )
    )
    claims = [
        Claim(
            "With constant weights, all units of every hidden layer stay identical during "
            "training: the symmetry is never broken.",
            max_spread <= tol,
            f"max spread across units over {steps} optax SGD steps and {hidden} hidden "
            f"layers: {max_spread:.2e} (tolerance {tol:.1e} = eps32 x max|W| x steps; "
            f"predicted 0).",
        ),
        Claim(
            "A random init of the same network does break the symmetry (the spread is not "
            "a measurement artefact).",
            random_spread > 1e3 * tol,
            f"smallest final spread with Glorot normal: {random_spread:.3f} "
            f"(> 1000 x tolerance {tol:.1e}).",
        ),
    ]
    fig, axes = new_figure(width=5.6, height=3.6)
    ax = axes[0, 0]
    t = np.arange(steps + 1)
    floor = 1e-12
    for layer, col in zip(range(hidden), ("C0", "C1", "C2"), strict=False):
        ax.plot(
            t,
            np.maximum(spread["constant"][:, layer], floor),
            color=col,
            ls="-",
            label=f"constant {c}, layer {layer + 1}",
        )
        ax.plot(
            t,
            np.maximum(spread["glorot_normal"][:, layer], floor),
            color=col,
            ls=":",
            label=f"Glorot normal, layer {layer + 1}",
        )
    ax.axhline(tol, color="k", ls="--", lw=1, label="float32 rounding budget")
    ax.axhline(floor, color="red", lw=2.5, alpha=0.4, label="predicted: 0 (plotted at 1e-12)")
    ax.set_yscale("log")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("max spread across units")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Constant init: units stay identical", fontsize=10)
    figs = [
        Figure(
            "constant_spread",
            "Largest difference between the units of each hidden layer (incoming weights, "
            "bias, outgoing weights) during optax SGD on a tanh MLP. Solid: all weights "
            f"{c}: the spread is predicted 0 and stays at float32 rounding level, far below "
            "the rounding budget (dashed; exact zeros are drawn at the 1e-12 floor); dotted: "
            "Glorot normal, whose units differ from the start.",
            figure_png(fig),
        )
    ]
    return ExperimentResult(
        name="constant",
        title="Constant weights: the units of a layer never become different",
        summary=(
            f"With every weight equal to {c}, the units of each hidden layer stay identical "
            f"(max spread {max_spread:.1e}) through {steps} SGD steps, as the symmetry "
            "argument predicts; a random init breaks the symmetry from step 0."
        ),
        laws=laws_,
        rows=rows,
        claims=claims,
        figures=figs,
        data={
            "widths": np.array(widths),
            "spread_constant": spread["constant"],
            "spread_glorot": spread["glorot_normal"],
            "loss_constant": loss["constant"],
            "loss_glorot": loss["glorot_normal"],
            "tolerance": np.float64(tol),
        },
    )


# -- 3. small random --------------------------------------------------------------------------


def _per_layer_plot(ax, layers, pred, meas_seeds, label, color, marker="o"):
    """Predicted line and measured markers (mean of log over seeds) of a per-layer second
    moment, on a log axis; non-finite or zero measurements are left out."""
    ax.plot(layers, pred, color=color, lw=1.5, label=f"{label}: law")
    with np.errstate(invalid="ignore"):
        m = np.exp(np.mean(np.asarray(meas_seeds, np.float64), axis=0))
    ok = np.isfinite(m) & (m > 0)
    ax.plot(layers[ok], m[ok], marker, color=color, ms=4, mfc="none", label=f"{label}: measured")
    ax.set_yscale("log")


@experiment("small_random", "Small random weights N(0, 0.01²): signals vanish layer by layer", 3)
def run_small_random(cfg: RunConfig) -> ExperimentResult:
    r"""W ~ N(0, 0.01^2) in a deep tanh stack of width n. Near 0 tanh is the identity
    (E[tanh(z)^2] / q -> 1, E[tanh'(z)^2] -> 1), so both passes shrink by the same factor

    .. math:: \frac{q_{l+1}}{q_l} \to n\,\mathrm{Var}(w) = n\cdot 10^{-4}, \qquad
              \frac{g_l}{g_{l+1}} \to n\,\mathrm{Var}(w)

    per layer, until the typical value sqrt(q_l) drops below the smallest normal float32
    (1.2e-38) and is flushed to 0: at layer ceil(2 ln(1.2e-38) / ln(n Var(w))) forward, and
    as many layers below the output backward. (LeCun et al., "Efficient
    BackProp", 1998.)
    """
    init = inits.normal(0.01)
    n, depth, batch, seeds = (128, 46, 32, 4) if cfg.quick else (512, 66, 64, 4)
    std = init.scheme.std((n, n))
    sw2 = n * init.scheme.variance((n, n))
    stds = jnp.full((depth,), std, jnp.float32)
    z, _, gz = (
        np.asarray(a, np.float64)
        for a in _square_stack(_keys(cfg, 3, seeds), stds, width=n, batch=batch, activation="tanh")
    )
    q_pred, g_pred = _square_law("tanh", sw2, depth)
    lf = laws.layer_factors(init.scheme, "linear")
    factor_expr = lf.forward
    factor = float(factor_expr.subs(S.fan_in, n))
    _, k_fwd = laws.float32_limit_layer(factor, 1.0)
    _, k_bwd = laws.float32_limit_layer(factor, float(g_pred[-1]))
    # factor = n Var(w) != 1, so both limits exist (None only when factor == 1).
    assert k_fwd is not None and k_bwd is not None
    pred_fwd, pred_bwd = k_fwd, depth - k_bwd
    meas_fwd = _first_majority_zero(z[:, :, _ZERO])
    meas_bwd = depth + 1 - _first_majority_zero(gz[:, ::-1, _ZERO])
    # The factor is read where tanh is linear to 0.1 % and nothing has underflowed yet.
    lo_f, hi_f = 3, min(pred_fwd, depth) - 4
    lo_b, hi_b = max(pred_bwd, 1) + 3, depth - 3
    f_fwd, se_fwd = _factor_estimate(z[:, :, _LM2], lo_f - 1, hi_f - 1)
    f_bwd, se_bwd = _factor_estimate(gz[:, ::-1, _LM2], depth - hi_b, depth - lo_b)
    crit = _t_crit(seeds, 2)
    pf_fwd = float(np.exp(np.log(q_pred[hi_f - 1] / q_pred[lo_f - 1]) / (hi_f - lo_f)))
    pf_bwd = float(np.exp(np.log(g_pred[lo_b - 1] / g_pred[hi_b - 1]) / (hi_b - lo_b)))
    ok_f = abs(math.log(f_fwd / pf_fwd)) <= crit * se_fwd
    ok_b = abs(math.log(f_bwd / pf_bwd)) <= crit * se_bwd
    under_ok = bool(np.all(np.abs(meas_fwd - pred_fwd) <= 1)) and bool(
        np.all(np.abs(meas_bwd - pred_bwd) <= 1)
    )

    laws_ = [
        _law("forward law of the scheme", laws.forward_law(init.scheme)),
        _law("backward law of the scheme", laws.backward_law(init.scheme)),
        _law("per-layer factor where tanh is linear", sp.Eq(_sym("q_{l+1}/q_l"), factor_expr)),
        _law(
            "float32 underflow layer (sqrt(q_L) < tiny)",
            sp.Eq(
                _sym("L_{under}"),
                sp.ceiling(2 * sp.log(_sym("tiny")) / sp.log(factor_expr)),
            ),
        ),
    ]
    rows = [
        Row("per-layer factor n Var(w) (law)", factor, "-", f"n = {n}"),
        Row(
            f"forward factor q_(l+1)/q_l, layers {lo_f}-{hi_f}",
            pf_fwd,
            f_fwd,
            f"± {crit * se_fwd:.2g} in log (t-interval over {seeds} seeds)",
        ),
        Row(
            f"backward factor g_l/g_(l+1), layers {lo_b}-{hi_b}",
            pf_bwd,
            f_bwd,
            f"± {crit * se_bwd:.2g} in log",
        ),
        Row(
            "first layer whose z underflows (median |z| = 0)",
            pred_fwd,
            ", ".join(map(str, meas_fwd)),
            "per seed",
        ),
        Row(
            "highest layer whose dL/dz underflows",
            pred_bwd,
            ", ".join(map(str, meas_bwd)),
            f"{k_bwd} layers below the output",
        ),
    ]
    claims = [
        Claim(
            "Activations shrink geometrically by n Var(w) per layer.",
            ok_f,
            f"measured {f_fwd:.4f} vs predicted {pf_fwd:.4f} (|log ratio| "
            f"{abs(math.log(f_fwd / pf_fwd)):.3f} <= {crit * se_fwd:.3f}, t-interval).",
        ),
        Claim(
            "Gradients shrink geometrically by n Var(w) per layer on the way back.",
            ok_b,
            f"measured {f_bwd:.4f} vs predicted {pf_bwd:.4f} (|log ratio| "
            f"{abs(math.log(f_bwd / pf_bwd)):.3f} <= {crit * se_bwd:.3f}).",
        ),
        Claim(
            "The layer where float32 underflows is predicted by the law (± 1).",
            under_ok,
            f"forward: predicted {pred_fwd}, measured {sorted(set(meas_fwd.tolist()))}; "
            f"backward: predicted {pred_bwd}, measured {sorted(set(meas_bwd.tolist()))}.",
        ),
    ]
    layers = np.arange(1, depth + 1)
    fig, axes = new_figure(width=5.6, height=3.8)
    ax = axes[0, 0]
    _per_layer_plot(ax, layers, q_pred, z[:, :, _LM2], "E[z²] forward", "C0")
    _per_layer_plot(ax, layers, g_pred, gz[:, :, _LM2], "E[(dL/dz)²] backward", "C1", "s")
    ax.axhline(laws.FLOAT32_TINY**2, color="k", ls="--", lw=1, label="tiny² (float32 underflow)")
    ax.axvline(pred_fwd, color="C0", ls=":", lw=1, label=f"predicted forward underflow: {pred_fwd}")
    ax.axvline(
        pred_bwd, color="C1", ls=":", lw=1, label=f"predicted backward underflow: {pred_bwd}"
    )
    ax.set_xlabel("layer l")
    ax.set_ylabel("second moment")
    ax.set_title(f"N(0, 0.01²) weights, tanh, width {n}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figs = [
        Figure(
            "small_random_layers",
            f"E[z²] (forward, blue) and E[(dL/dz)²] (backward, orange) per layer of a tanh "
            f"stack of width {n} with N(0, 0.01²) weights: lines are the law (factor "
            f"{factor:.4f} per layer), markers the measurement (geometric mean over {seeds} "
            "seeds). Both fall geometrically until float32 flushes them to 0 at the dotted "
            "layers; markers stop where the measured values are 0.",
            figure_png(fig),
        )
    ]
    return ExperimentResult(
        name="small_random",
        title="Small random weights N(0, 0.01²): signals vanish layer by layer",
        summary=(
            f"With N(0, 0.01²) weights in a width-{n} tanh stack, activations and gradients "
            f"shrink by {f_fwd:.4f} and {f_bwd:.4f} per layer (law: {factor:.4f}) and float32 "
            f"underflows at layer {int(np.max(meas_fwd))} forward (law: {pred_fwd})."
        ),
        notes=[
            "Measured underflow comes up to one layer before the law's sqrt(q_L) < tiny: "
            "the CPU flushes each product x_i w_ij (about sqrt(q_L / n)) to zero before the "
            "dot product sums them, and the median |z| is 0.67 sqrt(q_L)."
        ],
        laws=laws_,
        rows=rows,
        claims=claims,
        figures=figs,
        data={
            "width": np.int64(n),
            "weight_std": np.float64(std),
            "z_log_m2": z[:, :, _LM2],
            "z_zero_frac": z[:, :, _ZERO],
            "gz_log_m2": gz[:, :, _LM2],
            "gz_zero_frac": gz[:, :, _ZERO],
            "q_pred": q_pred,
            "g_pred": g_pred,
            "factor_measured": np.array([f_fwd, f_bwd]),
            "factor_se_log": np.array([se_fwd, se_bwd]),
            "factor_layers": np.array([[lo_f, hi_f], [lo_b, hi_b]]),
            "underflow_pred": np.array([pred_fwd, pred_bwd]),
            "underflow_fwd": meas_fwd,
            "underflow_bwd": meas_bwd,
        },
    )


# -- 4. standard normal -----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("n", "steps"), compiler_options=_FAST_COMPILE)
def _matrix_products(keys: Array, *, n: int, steps: int) -> Array:
    """Per trial (keys) and step: :func:`_moments` of x after ``x <- W x`` with a fresh
    W ~ N(0, 1) of shape (n, n) each step, x_0 ~ N(0, I_n) (fast.ai, lesson 8)."""

    def one(key):
        kx, kw = jax.random.split(key)
        x = jax.random.normal(kx, (n,), jnp.float32)

        def body(x, k):
            x = jax.random.normal(k, (n, n), jnp.float32) @ x
            return x, _moments(x[None, :])

        return jax.lax.scan(body, x, jax.random.split(kw, steps))[1]

    return jax.vmap(one)(keys)


def _first_nonfinite(finite: np.ndarray) -> np.ndarray:
    """Per row, the first (1-based) index whose values are not all finite; 0 when none."""
    bad = finite < 1
    return np.where(bad.any(1), bad.argmax(1) + 1, 0)


@experiment("standard_normal", "Standard normal weights N(0, 1): activations explode", 4)
def run_standard_normal(cfg: RunConfig) -> ExperimentResult:
    r"""W ~ N(0, 1): every layer multiplies E[x^2] by n (linear) or n/2 (ReLU),

    .. math:: q_l = q_0\,(n\,\mathrm{Var}(w)\,c_\phi)^l, \qquad
              L_{\mathrm{overflow}} = \Big\lceil \frac{2 \ln(3.4\cdot 10^{38}) - \ln q_0}
              {\ln(n\,\mathrm{Var}(w)\,c_\phi)} \Big\rceil

    the first layer whose typical value sqrt(q_l) passes the largest float32. Measured twice:
    repeated products x <- W x with fresh 512x512 standard-normal W (the fast.ai lesson), and
    a width-512 ReLU MLP, whose first inf comes from the largest of its batch x width values,
    about sqrt(2 ln(B n) q_l) (full mode cross-checks with :func:`varprop.check`).
    """
    init = inits.normal(1.0)
    n = 512
    steps, trials = 32, (2 if cfg.quick else 16)
    mp = np.asarray(_matrix_products(_keys(cfg, 4, trials), n=n, steps=steps), np.float64)
    mp_first = _first_nonfinite(mp[:, :, _FINITE])
    mp_factor = float(laws.layer_factors(init.scheme, "linear").forward.subs(S.fan_in, n))
    _, mp_pred = laws.float32_limit_layer(mp_factor, 1.0)
    assert mp_pred is not None  # mp_factor = n Var(w) = 512 != 1

    depth, batch, seeds = 36, (32 if cfg.quick else 64), (2 if cfg.quick else 4)
    z = np.asarray(
        _square_stack(
            _keys(cfg, 41, seeds),
            jnp.full((depth,), init.scheme.std((n, n)), jnp.float32),
            width=n,
            batch=batch,
            activation="relu",
        )[0],
        np.float64,
    )
    relu_factor = float(laws.layer_factors(init.scheme, "relu").forward.subs(S.fan_in, n))
    # q_1 = n Var(w) E[x^2] = n (the input is not rectified), then the ReLU factor.
    q0 = mp_factor / relu_factor
    _, mlp_pred_typical = laws.float32_limit_layer(relu_factor, q0)
    layers = np.arange(1, depth + 1)
    mlp_q_pred = q0 * relu_factor ** layers.astype(np.float64)
    # The first inf is the largest of the batch x width values, about sqrt(2 ln(B n) q_l).
    big = np.sqrt(2 * math.log(batch * n) * mlp_q_pred)
    mlp_pred = int(np.argmax(big > laws.FLOAT32_MAX)) + 1
    mlp_first = _first_nonfinite(z[:, :, _FINITE])
    mlp_meas = int(mlp_first.min()) if (mlp_first > 0).all() else None
    mlp_q_meas = np.where(z[:, :, _FINITE] > 0, z[:, :, _LM2], np.nan)
    cross = None
    if not cfg.quick:
        cross = check(
            (n,) * (depth + 1), "relu", init, batch=128, seeds=4, max_seeds=4, seed=cfg.seed
        )

    mp_ok = bool(np.all((mp_first > 0) & (np.abs(mp_first - mp_pred) <= 1)))
    mlp_ok = (mlp_first > 0).all() and bool(np.all(np.abs(mlp_first - mlp_pred) <= 1))
    if cross is not None:
        cf, cp = cross.first_nonfinite_layer, cross.predicted_nonfinite_layer
        mlp_ok = mlp_ok and cf is not None and cp is not None and abs(cf - cp) <= 1
    laws_ = [
        _law("forward law of N(0, 1)", laws.forward_law(init.scheme)),
        _law(
            "per-layer factor, linear (matrix products)",
            sp.Eq(_sym("q_{l+1}/q_l"), laws.layer_factors(init.scheme, "linear").forward),
        ),
        _law(
            "per-layer factor, ReLU",
            sp.Eq(_sym("q_{l+1}/q_l"), laws.layer_factors(init.scheme, "relu").forward),
        ),
        _law(
            "first overflowing layer (sqrt(q_L) > float32 max)",
            sp.Eq(
                _sym("L_{over}"),
                sp.ceiling(
                    (2 * sp.log(_sym("max_{f32}")) - sp.log(_sym("q_0")))
                    / sp.log(_sym("n") * S.weight_variance * _sym("c_phi"))
                ),
            ),
        ),
    ]
    rows = [
        Row("matrix products: factor per step n Var(w)", mp_factor, "-", f"n = {n}"),
        Row(
            "matrix products: first step with inf/NaN",
            mp_pred,
            ", ".join(map(str, sorted(set(mp_first.tolist())))),
            f"{trials} trials",
        ),
        Row("ReLU MLP: factor per layer n Var(w)/2", relu_factor, "-", f"width {n}"),
        Row(
            "ReLU MLP: first layer with inf/NaN",
            mlp_pred,
            ", ".join(map(str, sorted(set(mlp_first.tolist())))),
            f"{seeds} seeds; typical-value law: {mlp_pred_typical}, the prediction adds the "
            "batch maximum",
        ),
    ]
    if cross is not None:
        rows.append(
            Row(
                "ReLU MLP: first layer with inf/NaN (varprop.check, 4 seeds)",
                cross.predicted_nonfinite_layer,
                cross.first_nonfinite_layer,
                f"check verdict: {cross.verdict}",
            )
        )
    claims = [
        Claim(
            "Repeated products with standard-normal 512x512 matrices overflow float32 at the "
            "step the law predicts (± 1).",
            mp_ok,
            f"predicted step {mp_pred}; measured in {trials} trials: "
            f"{sorted(set(mp_first.tolist()))}.",
        ),
        Claim(
            "A width-512 ReLU MLP with N(0, 1) weights produces inf/NaN at the layer the law "
            "predicts (± 1).",
            bool(mlp_ok),
            f"first non-finite layer per seed {sorted(set(mlp_first.tolist()))}, predicted "
            f"{mlp_pred}"
            + (
                f"; varprop.check: {cross.first_nonfinite_layer} vs predicted "
                f"{cross.predicted_nonfinite_layer}."
                if cross is not None
                else "."
            ),
        ),
    ]
    fig, axes = new_figure(ncols=2, width=4.6, height=3.6)
    ax = axes[0, 0]
    t = np.arange(1, steps + 1)
    pred_q = np.exp(t * math.log(mp_factor))
    meas_mp = np.where(mp[:, :, _FINITE] > 0, mp[:, :, _LM2], np.nan)
    _per_layer_plot(ax, t, pred_q, meas_mp[:, :], "E[x²]", "C0")
    ax.axhline(laws.FLOAT32_MAX**2, color="k", ls="--", lw=1, label="float32 max²")
    ax.axvline(mp_pred, color="C3", ls=":", lw=1.5, label=f"predicted overflow: step {mp_pred}")
    ax.axvline(
        int(np.median(mp_first)),
        color="C2",
        ls="--",
        lw=1,
        label=f"measured inf/NaN: step {int(np.median(mp_first))}",
    )
    ax.set_xlabel("step t (x ← W x)")
    ax.set_ylabel("E[x²]")
    ax.set_title("512×512 N(0, 1) matrix products", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[0, 1]
    _per_layer_plot(ax, layers, mlp_q_pred, mlp_q_meas, "E[z²]", "C1")
    ax.axhline(laws.FLOAT32_MAX**2, color="k", ls="--", lw=1, label="float32 max²")
    if mlp_pred is not None:
        ax.axvline(mlp_pred, color="C3", ls=":", lw=1.5, label=f"predicted inf/NaN: {mlp_pred}")
    if mlp_meas is not None:
        ax.axvline(mlp_meas, color="C2", ls="--", lw=1, label=f"measured inf/NaN: {mlp_meas}")
    ax.set_xlabel("layer l")
    ax.set_ylabel("E[z²]")
    ax.set_title(f"ReLU MLP, width {n}, N(0, 1) weights", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    figs = [
        Figure(
            "standard_normal_overflow",
            "Left: E[x²] after t products with fresh 512×512 standard-normal matrices (markers: "
            f"geometric mean over {trials} trials; line: the law, ×{mp_factor:.0f} per step); "
            "right: E[z²] per layer of a width-512 ReLU MLP with N(0, 1) weights, measured by "
            f"(×{relu_factor:.0f} per layer; geometric mean over {seeds} seeds). Markers stop "
            "where the values "
            "overflow float32; the dotted line is the predicted first inf/NaN.",
            figure_png(fig),
        )
    ]
    return ExperimentResult(
        name="standard_normal",
        title="Standard normal weights N(0, 1): activations explode",
        summary=(
            f"With N(0, 1) weights values grow ×{mp_factor:.0f} per 512×512 product and "
            f"×{relu_factor:.0f} per ReLU layer; float32 overflows at step "
            f"{int(np.median(mp_first))} (law {mp_pred}) and layer {mlp_meas} (law {mlp_pred})."
        ),
        laws=laws_,
        rows=rows,
        claims=claims,
        figures=figs,
        data={
            "mp_log_m2": mp[:, :, _LM2],
            "mp_finite": mp[:, :, _FINITE],
            "mp_first_nonfinite": mp_first,
            "mp_predicted": np.int64(mp_pred),
            "mlp_q_measured": mlp_q_meas,
            "mlp_q_predicted": mlp_q_pred,
            "mlp_first_nonfinite": mlp_first,
            "mlp_predicted": np.int64(mlp_pred),
            "mlp_batch": np.int64(batch),
            "mlp_width": np.int64(n),
        },
    )


# -- 5. Xavier / Glorot -----------------------------------------------------------------------


def _stack_run(
    cfg: RunConfig, tag: int, init, activation: str, n: int, depth: int, batch: int, seeds: int
):
    """Measured (z, gz) log second moments ``(S, depth)`` of a square stack with ``init``."""
    std = init.scheme.std((n, n))
    z, _, gz = _square_stack(
        _keys(cfg, tag, seeds),
        jnp.full((depth,), std, jnp.float32),
        width=n,
        batch=batch,
        activation=activation,
    )
    return np.asarray(z, np.float64)[:, :, _LM2], np.asarray(gz, np.float64)[:, :, _LM2]


def _profile_ok(meas: np.ndarray, pred: np.ndarray) -> tuple[bool, float, float]:
    """Per-layer test of ``(S, L)`` log measurements against a predicted profile: the mean
    over seeds within a Bonferroni t-interval (alpha 1e-3) of log(pred) at every layer.
    Returns (held, worst |log ratio|, its allowed bound at that layer)."""
    mean, se = _seed_mean(meas)
    crit = _t_crit(meas.shape[0], meas.shape[1])
    dev = np.abs(mean - np.log(pred))
    worst = int(np.argmax(dev / (crit * se)))
    return bool(np.all(dev <= crit * se)), float(dev[worst]), float(crit * se[worst])


@experiment("xavier", "Xavier/Glorot: tanh stays near its fixed point, ReLU halves per layer", 5)
def run_xavier(cfg: RunConfig) -> ExperimentResult:
    r"""Glorot & Bengio (AISTATS 2010): Var(w) = 2 / (n_in + n_out), i.e. n Var(w) = 1 in a
    square stack. For tanh the mean-field map (Poole et al. 2016)

    .. math:: q_{l+1} = n\,\mathrm{Var}(w)\,E[\tanh(\sqrt{q_l}\,z)^2]

    has slope 1 at its fixed point q* = 0: q_l decays only like 1/l (no geometric collapse
    or explosion), and the per-layer factors of both passes tend to 1. For ReLU,
    E[relu(z)^2] = q/2, so the same scheme halves E[z^2] and E[(dL/dz)^2] at every layer.
    """
    init = inits.glorot_normal()
    n, depth, batch, seeds = (128, 16, 32, 8) if cfg.quick else (256, 24, 64, 16)
    sw2 = n * init.scheme.variance((n, n))
    tz, tg = _stack_run(cfg, 5, init, "tanh", n, depth, batch, seeds)
    rz, rg = _stack_run(cfg, 50, init, "relu", n, depth, batch, seeds)
    tq_pred, tg_pred = _square_law("tanh", sw2, depth)
    rq_pred, rg_pred = _square_law("relu", sw2, depth)
    fp = laws.mean_field_fixed_point("tanh", sw2, max_iter=depth)
    t_ok_q, t_dev_q, t_tol_q = _profile_ok(tz, tq_pred)
    t_ok_g, t_dev_g, t_tol_g = _profile_ok(tg, tg_pred)
    lf_relu = laws.layer_factors(init.scheme, "relu")
    half = float(lf_relu.forward_square)
    crit = _t_crit(seeds, 2)
    r_fwd, r_fwd_se = _factor_estimate(rz, 0, depth - 1)
    r_bwd, r_bwd_se = _factor_estimate(rg[:, ::-1], 0, depth - 1)
    r_ok_f = abs(math.log(r_fwd / half)) <= crit * r_fwd_se
    r_ok_b = abs(math.log(r_bwd / float(lf_relu.backward_square))) <= crit * r_bwd_se
    # tanh at depth: the last half of the stack.
    mid = depth // 2
    t_fac, t_fac_se = _factor_estimate(tz, mid - 1, depth - 1)
    t_fac_pred = float(np.exp(np.log(tq_pred[-1] / tq_pred[mid - 1]) / (depth - mid)))
    t_ok_fac = abs(math.log(t_fac / t_fac_pred)) <= crit * t_fac_se

    laws_ = [
        _law("forward law of Glorot normal", laws.forward_law(init.scheme)),
        _law("Glorot's weight variance", sp.Eq(S.weight_variance, init.scheme.law)),
        _law(
            "ReLU per-layer factor, square layers",
            sp.Eq(_sym("q_{l+1}/q_l"), lf_relu.forward_square),
        ),
        _law(
            "ReLU backward factor, square layers",
            sp.Eq(_sym("g_l/g_{l+1}"), lf_relu.backward_square),
        ),
        _law(
            "tanh second moment at q (SymPy form; evaluated by quadrature)",
            sp.Eq(
                _sym("q_{l+1}"),
                sp.Integral(
                    sp.tanh(sp.sqrt(S.q) * S.x) ** 2 * sp.exp(-(S.x**2) / 2) / sp.sqrt(2 * sp.pi),
                    (S.x, -sp.oo, sp.oo),
                ),
            ),
        ),
    ]
    rows = [
        Row(
            f"tanh: E[z²] at layer {l}",
            float(tq_pred[l - 1]),
            float(np.exp(tz[:, l - 1].mean())),
            "mean-field law",
        )
        for l in sorted({1, 2, mid, depth})
    ]
    rows += [
        Row(
            f"tanh: per-layer factor, layers {mid}-{depth}",
            t_fac_pred,
            t_fac,
            f"± {crit * t_fac_se:.2g} in log; slope at q* = 0: {fp.chi:.3f}",
        ),
        Row("ReLU: per-layer forward factor", half, r_fwd, f"± {crit * r_fwd_se:.2g} in log"),
        Row(
            "ReLU: per-layer backward factor",
            float(lf_relu.backward_square),
            r_bwd,
            f"± {crit * r_bwd_se:.2g} in log",
        ),
    ]
    claims = [
        Claim(
            "With Glorot init, a tanh network's per-layer E[z²] follows the mean-field law "
            "(toward the fixed point, no geometric collapse or explosion).",
            t_ok_q and t_ok_fac,
            f"worst layer |log(measured/law)| {t_dev_q:.3f} <= {t_tol_q:.3f} (t-interval, "
            f"{seeds} seeds, Bonferroni over {depth} layers); per-layer factor at depth "
            f"{t_fac:.3f} vs law {t_fac_pred:.3f}.",
        ),
        Claim(
            "Its gradients follow the law too (factor -> 1 per layer).",
            t_ok_g,
            f"worst layer |log(measured/law)| {t_dev_g:.3f} <= {t_tol_g:.3f}.",
        ),
        Claim(
            "With ReLU, Glorot halves the second moment at every layer, forward and backward.",
            r_ok_f and r_ok_b,
            f"forward factor {r_fwd:.4f}, backward {r_bwd:.4f}, law {half} (± "
            f"{crit * r_fwd_se:.3f} / {crit * r_bwd_se:.3f} in log).",
        ),
    ]
    layers = np.arange(1, depth + 1)
    fig, axes = new_figure(ncols=2, width=4.6, height=3.6)
    ax = axes[0, 0]
    _per_layer_plot(ax, layers, tq_pred, tz, "tanh E[z²]", "C0")
    _per_layer_plot(ax, layers, tg_pred, tg, "tanh E[(dL/dz)²]", "C1", "s")
    ax.set_xlabel("layer l")
    ax.set_ylabel("second moment")
    ax.set_title(f"Glorot normal, tanh, width {n}", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    _per_layer_plot(ax, layers, rq_pred, rz, "ReLU E[z²]", "C0")
    _per_layer_plot(ax, layers, rg_pred, rg, "ReLU E[(dL/dz)²]", "C1", "s")
    ax.set_xlabel("layer l")
    ax.set_title(f"Glorot normal, ReLU, width {n}", fontsize=10)
    ax.legend(fontsize=7)
    figs = [
        Figure(
            "xavier_layers",
            f"Per-layer E[z²] (blue) and E[(dL/dz)²] (orange) of square stacks of width {n} "
            f"with Glorot-normal weights; lines: the law, markers: measured (geometric mean "
            f"over {seeds} seeds). Left, tanh: E[z²] follows the mean-field map toward its "
            "fixed point q* = 0, slowing down like 1/l (the per-layer factor tends to 1, no "
            "geometric collapse), and the gradients mirror it. Right, ReLU: both halve at "
            "every layer (straight lines on the log axis).",
            figure_png(fig),
        )
    ]
    return ExperimentResult(
        name="xavier",
        title="Xavier/Glorot: tanh stays near its fixed point, ReLU halves per layer",
        summary=(
            f"Glorot init keeps a width-{n} tanh stack on the mean-field curve (per-layer "
            f"factor {t_fac:.3f} at depth, law {t_fac_pred:.3f}), while with ReLU it halves "
            f"E[z²] per layer (measured {r_fwd:.3f}, law {half})."
        ),
        laws=laws_,
        rows=rows,
        claims=claims,
        figures=figs,
        data={
            "width": np.int64(n),
            "tanh_z_log_m2": tz,
            "tanh_gz_log_m2": tg,
            "relu_z_log_m2": rz,
            "relu_gz_log_m2": rg,
            "tanh_q_pred": tq_pred,
            "tanh_g_pred": tg_pred,
            "relu_factor_measured": np.array([r_fwd, r_bwd]),
            "relu_factor_se_log": np.array([r_fwd_se, r_bwd_se]),
        },
    )


# -- 6. He / Kaiming --------------------------------------------------------------------------


def _seed_layer_std(m: int, n: int) -> float:
    """A textbook numpy ``Layer(M, N)``: weight of shape (M, N), output ``W x`` of size
    M, ``std_dev = np.sqrt(2.0 / M)``: the std is set by the number of *outputs*."""
    return math.sqrt(2.0 / m)


@experiment("he", "He/Kaiming: fan_in preserves the forward pass, fan_out the backward", 6)
def run_he(cfg: RunConfig) -> ExperimentResult:
    r"""He et al., "Delving Deep into Rectifiers" (ICCV 2015): with ReLU,

    .. math:: \frac{q_{l+1}}{q_l} = \tfrac12 n_{in}\mathrm{Var}(w), \qquad
              \frac{g_l}{g_{l+1}} = \tfrac12 n_{out}\mathrm{Var}(w)

    so Var(w) = 2/n_in (fan_in) preserves the forward pass and Var(w) = 2/n_out (fan_out) the
    backward pass; in square layers both. In a pyramid each mode changes the other direction
    by n_in/n_out per layer. The seed's numpy ``Layer`` draws std sqrt(2/M) with M the number
    of outputs: that is fan_out, so it preserves gradients, not activations.
    """
    fan_in, fan_out = inits.he_normal(), inits.he_normal(mode="fan_out")
    n, depth, batch, seeds = (128, 16, 32, 8) if cfg.quick else (256, 24, 64, 16)
    sz, sg = _stack_run(cfg, 6, fan_in, "relu", n, depth, batch, seeds)
    one = float(laws.layer_factors(fan_in.scheme, "relu").forward_square)
    crit = _t_crit(seeds, 2)
    s_fwd, s_fwd_se = _factor_estimate(sz, 0, depth - 1)
    s_bwd, s_bwd_se = _factor_estimate(sg[:, ::-1], 0, depth - 1)
    sq_ok = abs(math.log(s_fwd / one)) <= crit * s_fwd_se and (
        abs(math.log(s_bwd / one)) <= crit * s_bwd_se
    )

    widths = (784, 512, 256, 128, 64, 10)
    shapes = list(itertools.pairwise(widths))
    p_seeds = 8 if cfg.quick else 16
    kinds = {
        "fan_in": [fan_in.scheme.std(s) for s in shapes],
        "fan_out": [fan_out.scheme.std(s) for s in shapes],
        "seed Layer": [_seed_layer_std(b, a) for a, b in shapes],
    }
    seed_is = {
        m: bool(np.allclose(kinds["seed Layer"], kinds[m], rtol=1e-12))
        for m in ("fan_in", "fan_out")
    }
    pyr, ok_profile = {}, {}
    for i, (kind, stds) in enumerate(kinds.items()):
        zz, gg = _pyramid(
            _keys(cfg, 60 + i, p_seeds),
            jnp.asarray(stds, jnp.float32),
            widths=widths,
            batch=64,
            activation="relu",
        )
        zz = np.asarray(zz, np.float64)[:, :, _LM2]
        gg = np.asarray(gg, np.float64)[:, :, _LM2]
        qp, gp = _mlp_law(widths, [s * s for s in stds])
        pyr[kind] = (zz, gg, qp, gp)
        ok_profile[kind] = _profile_ok(zz, qp)[0] and _profile_ok(gg, gp)[0]

    def end_to_end(kind):
        """Hidden-stack change: q at the last hidden layer / q at the first; g at the first
        hidden / g at the last hidden layer (measured geometric mean, predicted)."""
        zz, gg, qp, gp = pyr[kind]
        L = len(widths) - 1
        mf = float(np.exp(np.mean(zz[:, L - 2] - zz[:, 0])))
        mb = float(np.exp(np.mean(gg[:, 0] - gg[:, L - 2])))
        return mf, float(qp[L - 2] / qp[0]), mb, float(gp[0] / gp[L - 2])

    e2e = {k: end_to_end(k) for k in kinds}

    laws_ = [
        _law("forward law, He fan_in", laws.forward_law(fan_in.scheme)),
        _law("forward law, He fan_out", laws.forward_law(fan_out.scheme)),
        _law("backward law, He fan_in", laws.backward_law(fan_in.scheme, "relu")),
        _law("backward law, He fan_out", laws.backward_law(fan_out.scheme, "relu")),
        _law(
            "ReLU forward factor, fan_in",
            sp.Eq(_sym("q_{l+1}/q_l"), laws.layer_factors(fan_in.scheme, "relu").forward),
        ),
        _law(
            "ReLU backward factor, fan_in",
            sp.Eq(_sym("g_l/g_{l+1}"), laws.layer_factors(fan_in.scheme, "relu").backward),
        ),
        _law(
            "ReLU forward factor, fan_out",
            sp.Eq(_sym("q_{l+1}/q_l"), laws.layer_factors(fan_out.scheme, "relu").forward),
        ),
    ]
    rows = [
        Row(
            f"square ReLU width {n}: forward factor (fan_in)",
            one,
            s_fwd,
            f"± {crit * s_fwd_se:.2g} in log",
        ),
        Row(
            f"square ReLU width {n}: backward factor (fan_in)",
            one,
            s_bwd,
            f"± {crit * s_bwd_se:.2g} in log",
        ),
        Row(
            "seed Layer(M, N) std sqrt(2/M) equals",
            "fan_out",
            ", ".join(k for k, v in seed_is.items() if v) or "neither",
        ),
    ]
    for kind, (mf, pf, mb, pb) in e2e.items():
        rows.append(Row(f"pyramid {kind}: q_4 / q_1 (forward)", pf, mf))
        rows.append(Row(f"pyramid {kind}: g_1 / g_4 (backward)", pb, mb))

    def preserved(kind, direction):
        mf, pf, mb, pb = e2e[kind]
        m, p = (mf, pf) if direction == "forward" else (mb, pb)
        return abs(math.log(m)) < math.log(2.0) and abs(p - 1) < 1e-9

    directions_ok = (
        preserved("fan_in", "forward")
        and not preserved("fan_in", "backward")
        and preserved("fan_out", "backward")
        and not preserved("fan_out", "forward")
        and preserved("seed Layer", "backward")
        and not preserved("seed Layer", "forward")
    )
    claims = [
        Claim(
            "He init (fan_in) preserves E[z²] and E[(dL/dz)²] through a square ReLU stack.",
            sq_ok,
            f"per-layer factors {s_fwd:.4f} forward, {s_bwd:.4f} backward vs {one} "
            f"(± {crit * s_fwd_se:.3f} / {crit * s_bwd_se:.3f} in log, {seeds} seeds).",
        ),
        Claim(
            "In the 784-512-256-128-64-10 pyramid every layer's E[z²] and E[(dL/dz)²] follow "
            "the law, for fan_in, fan_out and the seed's Layer rule.",
            all(ok_profile.values()),
            ", ".join(f"{k}: {'agrees' if v else 'differs'}" for k, v in ok_profile.items())
            + f" (per-layer t-interval over {p_seeds} seeds, Bonferroni).",
        ),
        Claim(
            "fan_in preserves the forward pass, fan_out the backward pass; the seed's Layer "
            "(std sqrt(2/M), M = outputs) is fan_out and preserves the backward pass.",
            directions_ok and seed_is["fan_out"] and not seed_is["fan_in"],
            "hidden-stack change (measured / law): "
            + "; ".join(
                f"{k}: forward {mf:.2f}/{pf:.2f}, backward {mb:.3f}/{pb:.3f}"
                for k, (mf, pf, mb, pb) in e2e.items()
            )
            + " (preserved = law exactly 1 and measured within a factor 2).",
        ),
    ]
    fig, axes = new_figure(ncols=2, width=4.6, height=3.6)
    L = len(widths) - 1
    layers = np.arange(1, L + 1)
    for ax, (title, idx, pidx) in zip(
        axes[0], (("forward: E[z_l²]", 0, 2), ("backward: E[(dL/dz_l)²]", 1, 3)), strict=True
    ):
        for (kind, vals), col, mk in zip(
            pyr.items(), ("C0", "C1", "C2"), ("o", "s", "^"), strict=True
        ):
            _per_layer_plot(ax, layers, vals[pidx], vals[idx], kind, col, mk)
        ax.set_xticks(layers)
        ax.set_xticklabels([f"{l}\n{widths[l - 1]}→{widths[l]}" for l in layers], fontsize=7)
        ax.set_xlabel("layer (fan_in→fan_out)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=6)
    figs = [
        Figure(
            "he_pyramid",
            "He-normal ReLU MLP 784-512-256-128-64-10 (last layer linear): per-layer E[z²] "
            "(left) and E[(dL/dz)²] (right); lines: the law, markers: measured (geometric "
            f"mean over {p_seeds} seeds). fan_in keeps the forward pass flat and lets "
            "gradients shrink toward the input; fan_out, and the textbook Layer rule "
            "(identical to fan_out), keep gradients flat and let activations grow.",
            figure_png(fig),
        )
    ]
    return ExperimentResult(
        name="he",
        title="He/Kaiming: fan_in preserves the forward pass, fan_out the backward",
        summary=(
            f"He init keeps a square ReLU stack at factor {s_fwd:.3f} forward and {s_bwd:.3f} "
            "backward per layer; in a pyramid fan_in preserves activations and fan_out (which "
            "is what the seed's numpy Layer draws) preserves gradients, as the law says."
        ),
        laws=laws_,
        rows=rows,
        claims=claims,
        figures=figs,
        data={
            "width": np.int64(n),
            "square_z_log_m2": sz,
            "square_gz_log_m2": sg,
            "square_factor_measured": np.array([s_fwd, s_bwd]),
            "square_factor_se_log": np.array([s_fwd_se, s_bwd_se]),
            "pyramid_widths": np.array(widths),
            **{f"pyramid_{k.replace(' ', '_')}_z_log_m2": v[0] for k, v in pyr.items()},
            **{f"pyramid_{k.replace(' ', '_')}_gz_log_m2": v[1] for k, v in pyr.items()},
            **{f"pyramid_{k.replace(' ', '_')}_std": np.array(kinds[k]) for k in kinds},
        },
    )

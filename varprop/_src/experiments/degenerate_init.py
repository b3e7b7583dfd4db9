r"""Experiments 1-2: degenerate initial weights, all zero or all equal, under gradient descent.

Layer l maps h_{l-1} to z_l = h_{l-1} W_l + b_l and h_l = phi(z_l) (the output layer is
linear); backpropagation gives

.. math::

    \delta_L = \partial L/\partial y, \qquad
    \delta_l = (\delta_{l+1} W_{l+1}^\top) \odot \phi'(z_l), \qquad
    \frac{\partial L}{\partial W_l} = h_{l-1}^\top \delta_l, \qquad
    \frac{\partial L}{\partial b_l} = \mathbf 1^\top \delta_l .

- ``zeros``: all weights and biases 0. Then :math:`\delta_l = 0` for every l < L and
  :math:`\partial L/\partial W_L = \phi(0)\,\mathbf 1^\top \delta_L`: at step 1 only the
  output bias (and the output kernel when phi(0) != 0) has a non-zero gradient. With
  phi(0) = 0 nothing else ever moves; with phi(0) != 0 and phi'(0) != 0 one more layer wakes
  per step (and its units stay identical, see ``constant``).
- ``constant``: all weights c (biases 0). Every unit j of a hidden layer computes the same
  function, :math:`z_j = c\sum_i x_i`, and receives the same gradient
  :math:`\partial L/\partial W_{ij} = x_i\,\delta_j` with
  :math:`\delta_j = \phi'(z_j)\sum_k W^{(l+1)}_{jk}\,\delta^{(l+1)}_k`, the same for every j
  as long as the columns of W and the rows of W^{(l+1)} are identical; so they stay
  identical under any number of steps, and the layer has the capacity of a single unit
  (Goodfellow, Bengio & Courville, "Deep Learning", 2016, §8.4). The symmetry is exact;
  only float32 rounding could break it. Var(w) = 0, so the variance laws say nothing here.

Both train small MLPs of :mod:`varprop._src.core.network` with optax SGD in one jitted
``lax.scan``.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sympy as sp
from optax import softmax_cross_entropy_with_integer_labels as cross_entropy

from varprop import initializers as inits
from varprop import laws
from varprop._src.core.network import Network, forward, init_params, make_network
from varprop._src.experiments import base
from varprop._src.experiments.base import Claim, Row
from varprop._src.experiments.measure import law
from varprop._src.laws import symbols as S
from varprop._src.probe import COMPILER_OPTIONS

Array = jax.Array
_ZERO_ACTS = ("tanh", "relu", "sigmoid")
_jit = functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)


def result(name: str, summary: str, laws_, rows, claims, figure: tuple, **kw):
    """The experiment's :class:`~.base.ExperimentResult`, its title from the registry;
    ``figure`` is ``(name suffix, caption, matplotlib figure)``."""
    fig = base.Figure(f"{name}_{figure[0]}", figure[1], base.figure_png(figure[2]))
    title = base.registry()[name].title
    return base.ExperimentResult(name, title, summary, laws_, rows, claims, [fig], **kw)


def _layers(params) -> list[tuple[Array, Array]]:
    """``(W_l, b_l)`` of every layer of a network's weights (stored stacked per segment)."""
    return [
        (p["W"][..., i, :, :], p["b"][..., i, :]) for p in params for i in range(p["b"].shape[-2])
    ]


def _sgd(params, loss, steps: int, lr: float, record, opt_state=None):
    """``steps`` SGD steps in one ``lax.scan``; per step ``record(loss, grads, new_params)``."""
    opt = optax.sgd(lr)

    def step(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        upd, s = opt.update(g, s, p)
        p = optax.apply_updates(p, upd)
        return (p, s), record(value, g, p)

    state = opt.init(params) if opt_state is None else opt_state
    return jax.lax.scan(step, (params, state), None, length=steps)


def _zero_pattern(depth: int, steps: int, phi0_nonzero: bool, dphi0_nonzero: bool) -> np.ndarray:
    """Which gradients are non-zero at each SGD step, from the backprop equations, when every
    weight and bias starts at 0 (``(steps, depth, 2)`` bools, ``[..., 0]`` kernel, ``[..., 1]``
    bias): a factor is non-zero when it has moved, or is a non-zero phi(0), phi'(0)."""
    moved = np.zeros((depth, 2), bool)
    out = np.zeros((steps, depth, 2), bool)
    for t in range(steps):
        h_nz, z_nz = [True], []  # is h_l / z_l non-zero? (h_0 is the input)
        for i in range(depth):
            z_nz.append(bool((moved[i, 0] and h_nz[i]) or moved[i, 1]))
            h_nz.append(z_nz[i] or phi0_nonzero)
        delta = [False] * (depth - 1) + [True]
        for i in range(depth - 2, -1, -1):
            delta[i] = bool(delta[i + 1] and moved[i + 1, 0] and (z_nz[i] or dphi0_nonzero))
        out[t] = np.stack([np.logical_and(delta, h_nz[:-1]), delta], axis=1)
        moved |= out[t]
    return out


@functools.partial(_jit, static_argnums=(1, 2))
def _train_zeros(key: Array, net: Network, steps: int):
    """``steps`` SGD steps (lr 0.1) of MSE regression on Gaussian data from all-zero weights
    and biases; per step and parameter the max |grad| and the max |param| after the step
    (each ``(steps, L, 2)``)."""
    kx, kt = jax.random.split(key)
    d_in, d_out = net.widths[0], net.widths[-1]
    x = jax.random.normal(kx, (128, d_in), jnp.float32)
    y = x @ jax.random.normal(kt, (d_in, d_out), jnp.float32) / math.sqrt(d_in) + 1.0
    amax = lambda ps: jnp.array([[jnp.abs(w).max(), jnp.abs(b).max()] for w, b in _layers(ps)])  # noqa: E731
    loss = lambda p: jnp.mean(jnp.square(forward(net, p, x) - y))  # noqa: E731
    return _sgd(init_params(net, key), loss, steps, 0.1, lambda v, g, p: (amax(g), amax(p)))[1]


def _zero_heatmap(ax, measured: np.ndarray, predicted: np.ndarray, title: str):
    """log10 max|grad| per (parameter, step), zeros blank, predicted non-zero boxed."""
    from matplotlib.patches import Rectangle

    steps, depth, _ = measured.shape
    grid = measured.reshape(steps, 2 * depth).T  # rows: W1, b1, W2, b2, ...
    img = np.log10(np.where(grid > 0, grid, np.nan))
    im = ax.imshow(img, aspect="auto", cmap="viridis", vmin=-8, vmax=1, origin="upper")
    for r, c in zip(*np.nonzero(predicted.reshape(steps, 2 * depth).T), strict=True):
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    ax.set_yticks(range(2 * depth), [f"{k}{i + 1}" for i in range(depth) for k in "Wb"])
    ax.set_xticks(range(steps), [str(t + 1) for t in range(steps)])
    ax.set(xlabel="SGD step")
    ax.set_title(title, fontsize=9)
    return im


@base.experiment("zeros", "All-zero weights: hidden gradients are exactly zero", 1)
def run_zeros(cfg: base.RunConfig) -> base.ExperimentResult:
    """All weights and biases 0: the parameters with a non-zero gradient at each SGD step,
    measured and from the backprop equations (see the module docstring)."""
    widths = (8, 16, 16, 16, 2) if cfg.quick else (16, 64, 64, 64, 64, 4)
    depth = len(widths) - 1
    steps, key = depth + 2, jax.random.fold_in(jax.random.key(cfg.seed), 1)
    measured, predicted, pmaxes, flags, rows = {}, {}, {}, {}, []
    names = lambda m: ", ".join(f"{'Wb'[k]}{i + 1}" for i, k in zip(*np.nonzero(m), strict=True))  # noqa: E731
    for a in cfg.progress(_ZERO_ACTS, total=len(_ZERO_ACTS), desc="zeros"):
        net = make_network(widths, a, inits.zeros)
        measured[a], pmaxes[a] = (np.asarray(v) for v in _train_zeros(key, net, steps))
        # phi(0), phi'(0) (ReLU's derivative at 0 is JAX's 0; relu(0) = 0 makes it moot).
        act = laws.get_activation(a)
        flags[a] = phi0, dphi0 = [sp.nsimplify(e.subs(S.x, 0)) for e in (act.expr, act.grad_expr)]
        predicted[a] = _zero_pattern(depth, steps, phi0 != 0, dphi0 != 0)
        step1 = f"{a}: non-zero gradients at step 1 (phi(0)={phi0}, phi'(0)={dphi0})"
        rows.append(Row(step1, names(predicted[a][0]), names(measured[a][0] > 0)))
        moved = f"{a}: parameters that moved in {steps} SGD steps"
        rows.append(Row(moved, names(predicted[a].any(0)), names(pmaxes[a][-1] > 0)))
    match = {a: bool(np.array_equal(measured[a] > 0, predicted[a])) for a in _ZERO_ACTS}
    hidden_zero = {a: float(measured[a][0, :-1].max()) for a in _ZERO_ACTS}
    moved_match = all(np.array_equal(pmaxes[a][-1] > 0, predicted[a].any(0)) for a in _ZERO_ACTS)
    delta_l, delta_n, w_n = map(sp.Symbol, (r"\delta_l", r"\delta_{l+1}", "W_{l+1}"))
    phi0_s, dphi0_s, dw_l = map(sp.Symbol, (r"\phi(0)", r"\phi'(0)", r"\partial L/\partial W_L"))
    hz = ", ".join(f"{a} {v:.1e}" for a, v in hidden_zero.items())
    eq = ", ".join(f"{a}: {'equal' if m else 'differs'}" for a, m in match.items())
    out_grad = sp.Eq(dw_l, phi0_s * sp.Symbol(r"\mathbf{1}^T\delta_L"))
    # fmt: off
    laws_ = [
        law("backprop through zero weights", sp.Eq(delta_l, dphi0_s * delta_n * w_n)),
        law("… with W_{l+1} = 0", sp.Eq(delta_l, (dphi0_s * delta_n * w_n).subs(w_n, 0))),
        law("output kernel gradient at init (h = phi(0) everywhere)", out_grad),
    ] + [law(f"{a}: phi(0)", sp.Eq(phi0_s, laws.get_activation(a).expr.subs(S.x, 0)))
         for a in _ZERO_ACTS]
    claims = [Claim(*c) for c in [
        ("With zero weights, every hidden layer's kernel and bias gradient is exactly 0.",
         all(v == 0.0 for v in hidden_zero.values()),
         f"max |dL/dW_l|, |dL/db_l| over hidden layers at step 1: {hz} (exact criterion: == 0)."),
        ("At every SGD step the set of parameters with a non-zero gradient is exactly the "
         "one the backprop equations predict from phi(0) and phi'(0).", all(match.values()),
         f"{steps} steps x {2 * depth} parameters x {len(_ZERO_ACTS)} activations; {eq}. "
         "Only the output bias ever moves for tanh and ReLU (phi(0) = 0)."),
        ("Training moves only the parameters the law allows (all others stay exactly 0).",
         moved_match, "Parameters with max|p| > 0 after training equal the predicted set for "
         "every activation."),
    ]]
    # fmt: on
    fig, axes = base.new_figure(ncols=3, width=3.6, height=3.6)
    for ax, (a, f) in zip(axes[0], flags.items(), strict=True):
        im = _zero_heatmap(ax, measured[a], predicted[a], f"{a}: φ(0)={f[0]}, φ'(0)={f[1]}")
    fig.colorbar(im, ax=axes[0].tolist(), label="log10 max|gradient| (blank: exactly 0)")
    fig.suptitle("Zero init: measured non-zero gradients (colour) vs predicted (red boxes)")
    caption = (
        "Per parameter (rows) and SGD step (columns), log10 of the largest |gradient| "
        "when every weight and bias starts at 0; blank cells are exactly zero. Red boxes "
        "are the cells the backprop equations predict non-zero: for tanh and ReLU "
        "(phi(0) = 0) only the output bias, for sigmoid (phi(0) = 1/2) one more layer "
        "per step."
    )
    summary = (
        "With all-zero weights every hidden gradient is exactly 0; under SGD only the "
        "output bias moves when phi(0) = 0, and for sigmoid exactly one more layer wakes "
        "per step, as the backprop equations predict."
    )
    data = {"widths": np.array(widths), "activations": np.array(_ZERO_ACTS)}
    for k, d in (("grad_max", measured), ("param_max", pmaxes), ("predicted_nonzero", predicted)):
        data[k] = np.stack([d[a] for a in _ZERO_ACTS])
    return result("zeros", summary, laws_, rows, claims, ("gradients", caption, fig), data=data)


def _unit_spread(params) -> Array:
    """Per hidden layer, max |unit - unit 0| over in-weights, bias and out-weights."""
    pairs = itertools.pairwise(_layers(params))
    units = [jnp.concatenate([w.T, b[:, None], v], 1) for (w, b), (v, _) in pairs]
    return jnp.stack([jnp.abs(u - u[:1]).max() for u in units])


@base.experiment("constant", "Constant weights: the units of a layer never become different", 2)
def run_constant(cfg: base.RunConfig) -> base.ExperimentResult:
    """All weights c: the spread across the units of each hidden layer during SGD, predicted
    0 by the symmetry argument (see the module docstring), beside a random init's."""
    widths, c, lr = (16, 32, 32, 32, 4), 0.1, 0.1
    n_chunks, chunk = (6, 50) if cfg.quick else (20, 100)
    kd, kt, kr = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 2), 3)
    x = jax.random.normal(kd, (256, widths[0]), jnp.float32)
    labels = jnp.argmax(x @ jax.random.normal(kt, (widths[0], widths[-1]), jnp.float32), axis=1)
    # Both initial weight sets, stacked on a leading axis, train side by side (vmap).
    nets = [make_network(widths, "tanh", k) for k in (inits.constant(c), inits.glorot_normal())]
    stack = lambda k: jax.tree.map(lambda *a: jnp.stack(a), *(init_params(n, k) for n in nets))  # noqa: E731
    params = _jit(stack)(kr)
    state = _jit(jax.vmap(optax.sgd(lr).init))(params)

    def chunk_fn(p, s):  # chunk SGD steps; per step the loss and the unit spread after it
        loss = lambda q: cross_entropy(forward(nets[0], q, x), labels).mean()  # noqa: E731
        return _sgd(p, loss, chunk, lr, lambda v, g, q: (v, _unit_spread(q)), s)

    train = _jit(jax.vmap(chunk_fn))
    spreads, losses = [np.asarray(_jit(jax.vmap(_unit_spread))(params))[:, None]], []
    for _ in cfg.progress(range(n_chunks), total=n_chunks, desc="constant: SGD"):
        (params, state), (lo, sp_) = train(params, state)
        losses.append(np.asarray(lo))
        spreads.append(np.asarray(sp_))
    # (2, steps + 1, L - 1) and (2, steps): constant, Glorot normal
    (s_const, s_glorot), (l_const, l_glorot) = np.concatenate(spreads, 1), np.concatenate(losses, 1)
    steps, hidden = n_chunks * chunk, len(widths) - 2
    # Rounding budget: identical inputs through identical float32 operations give identical
    # outputs; allow one ulp of the largest weight per step in case the matmul kernel
    # summed two columns in different orders.
    w_scale = max(float(np.abs(np.asarray(p["W"][0])).max()) for p in params)
    tol = float(np.finfo(np.float32).eps) * w_scale * steps
    max_spread, random_spread = float(s_const.max()), float(s_glorot[-1].min())
    x_i = cast(sp.IndexedBase, sp.IndexedBase("x"))
    i, n = sp.symbols("i n_in", integer=True, positive=True)
    z_j = sp.Eq(sp.Symbol("z_j"), sp.Sum(S.value * x_i[i], (i, 1, n)))
    spread_t = sp.Eq(sp.Symbol(r"\max_j |W_{:,j}(t) - W_{:,1}(t)|"), sp.Integer(0))
    var_w = sp.Eq(sp.Symbol("Var(w)"), inits.constant(c).scheme.law)
    lab_c = f"max unit spread over {steps} steps (constant {c})"
    lab_g = f"unit spread after {steps} steps (Glorot normal)"
    # fmt: off
    laws_ = [law("pre-activation of every unit j (W = c)", z_j),
             law("spread across units, any step t", spread_t),
             law("weight variance of the scheme (the i.i.d. laws need > 0)", var_w)]
    rows = [Row(f"hidden layer {l}: {lab_c}", 0.0, float(v), f"tolerance {tol:.1e}")
            for l, v in enumerate(s_const.max(0), 1)]
    rows += [Row(f"hidden layer {l}: {lab_g}", "> 0", float(v), "control: random init")
             for l, v in enumerate(s_glorot[-1], 1)]
    rows.append(Row("final training loss (constant / Glorot)", "-",
                    f"{l_const[-1]:.3f} / {l_glorot[-1]:.3f}"))
    claims = [Claim(*c) for c in [
        ("With constant weights, all units of every hidden layer stay identical during "
         "training: the symmetry is never broken.", max_spread <= tol,
         f"max spread across units over {steps} optax SGD steps and {hidden} hidden "
         f"layers: {max_spread:.2e} (tolerance {tol:.1e} = eps32 x max|W| x steps; predicted 0)."),
        ("A random init of the same network does break the symmetry (the spread is not "
         "a measurement artefact).", random_spread > 1e3 * tol,
         f"smallest final spread with Glorot normal: {random_spread:.3f} "
         f"(> 1000 x tolerance {tol:.1e})."),
    ]]
    # fmt: on
    fig, axes = base.new_figure(width=5.6, height=3.6)
    ax, t, floor = axes[0, 0], np.arange(steps + 1), 1e-12
    for l, col in zip(range(hidden), ("C0", "C1", "C2"), strict=False):
        for s, ls, label in ((s_const, "-", f"constant {c}"), (s_glorot, ":", "Glorot normal")):
            y = np.maximum(s[:, l], floor)
            ax.plot(t, y, color=col, ls=ls, label=f"{label}, layer {l + 1}")
    ax.axhline(tol, color="k", ls="--", lw=1, label="float32 rounding budget")
    ax.axhline(floor, color="red", lw=2.5, alpha=0.4, label="predicted: 0 (plotted at 1e-12)")
    ax.set(yscale="log", xlabel="SGD step", ylabel="max spread across units")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Constant init: units stay identical", fontsize=10)
    caption = (
        "Largest difference between the units of each hidden layer (incoming weights, "
        "bias, outgoing weights) during optax SGD on a tanh MLP. Solid: all weights "
        f"{c}: the spread is predicted 0 and stays at float32 rounding level, far below "
        "the rounding budget (dashed; exact zeros are drawn at the 1e-12 floor); dotted: "
        "Glorot normal, whose units differ from the start."
    )
    summary = (
        f"With every weight equal to {c}, the units of each hidden layer stay identical "
        f"(max spread {max_spread:.1e}) through {steps} SGD steps, as the symmetry "
        "argument predicts; a random init breaks the symmetry from step 0."
    )
    data = {"spread_constant": s_const, "spread_glorot": s_glorot, "tolerance": np.float64(tol)}
    return result("constant", summary, laws_, rows, claims, ("spread", caption, fig), data=data)

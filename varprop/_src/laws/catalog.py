"""The named schemes: one builder per initializer, each returning a :class:`Scheme`.

Every named fan-based scheme is a specialisation of :func:`variance_scaling`:
``Var(w) = g^2 / n(mode)`` with ``g^2`` the scale. The JAX initializers in
:mod:`varprop.initializers` wrap these one to one.
"""

# SymPy's inline annotations are narrower than its API (subs() with a dict, Eq() returning
# Eq, Expr vs Basic results): these checks give false positives on SymPy code.
# pyright: reportArgumentType=false, reportCallIssue=false, reportReturnType=false
# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable

import sympy as sp

from varprop._src.laws import symbols as S
from varprop._src.laws.schemes import (
    AxisSpec,
    Scheme,
    check_distribution,
    check_positive,
    exact_number,
    fan_denominator,
    truncated_normal_moments,
)

GainSpec = float | int | str | sp.Expr

_HE_REF = (
    "He, Zhang, Ren & Sun, 'Delving Deep into Rectifiers: Surpassing Human-Level Performance "
    "on ImageNet Classification', ICCV 2015."
)
_GLOROT_REF = (
    "Glorot & Bengio, 'Understanding the difficulty of training deep feedforward neural "
    "networks', AISTATS 2010."
)
_LECUN_REF = (
    "LeCun, Bottou, Orr & Mueller, 'Efficient BackProp', in Neural Networks: Tricks of the "
    "Trade, 1998."
)
_ORTHO_REF = (
    "Saxe, McClelland & Ganguli, 'Exact solutions to the nonlinear dynamics of learning in deep "
    "linear neural networks', ICLR 2014."
)
_DELTA_REF = (
    "Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington, 'Dynamical Isometry and a Mean Field "
    "Theory of CNNs: How to Train 10,000-Layer Vanilla Convolutional Neural Networks', ICML 2018."
)
_FIXUP_REF = (
    "Zhang, Dauphin & Ma, 'Fixup Initialization: Residual Learning Without Normalization', "
    "ICLR 2019."
)


def resolve_gain(gain: GainSpec) -> tuple[sp.Expr, str]:
    """A gain given as a number or an activation name, as an exact SymPy number and a label.

    An activation name gives the *derived* gain ``1/sqrt(E[phi(z)^2])`` at ``z ~ N(0, 1)``
    (see :func:`varprop.laws.gain`); a number is taken as it is.
    """
    if isinstance(gain, str):
        from varprop._src.laws import activation_gains, activations

        act = activations.get_activation(gain)
        exact = activation_gains.gain_expr(act)
        value = exact if exact is not None else sp.Float(activation_gains.gain(act), 17)
        return sp.sympify(value), f"derived gain of {gain}"
    return check_positive("gain", gain), "given"


def _scaling(
    name: str,
    gain: sp.Expr,
    mode: str,
    distribution: str,
    description: str,
    options: dict,
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
) -> Scheme:
    check_distribution(distribution)
    return Scheme(
        name=name,
        variance_expr=S.gain**2 / fan_denominator(mode),
        parameters={S.gain: gain},
        distribution=distribution,
        description=description,
        in_axis=in_axis,
        out_axis=out_axis,
        batch_axis=batch_axis,
        options=options,
    )


# -- raw --------------------------------------------------------------------------------


def zeros() -> Scheme:
    return Scheme(
        name="zeros",
        variance_expr=sp.Integer(0),
        parameters={},
        distribution="constant",
        uses_fans=False,
        description=(
            "All weights 0. Degenerate: every hidden unit computes the same value and the "
            "gradient reaching a hidden layer's weights is exactly zero, so nothing below the "
            "output layer learns."
        ),
    )


def constant(value: float = 1.0) -> Scheme:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"constant value must be a finite number, got {value!r}")
    return Scheme(
        name="constant",
        variance_expr=sp.Integer(0),
        parameters={S.value: exact_number(value)},
        mean_expr=S.value,
        distribution="constant",
        uses_fans=False,
        options={"value": value},
        description=(
            "All weights equal to one constant c: Var(w) = 0, E[w] = c. Every unit of a layer "
            "receives the same input and the same gradient, so the units stay identical under "
            "gradient descent (the symmetry is never broken)."
        ),
    )


def ones() -> Scheme:
    return dataclasses.replace(constant(1.0), name="ones", options={})


def normal(stddev: float = 1e-2) -> Scheme:
    sd = check_positive("stddev", stddev)
    return Scheme(
        name="normal",
        variance_expr=S.stddev**2,
        parameters={S.stddev: sd},
        distribution="normal",
        uses_fans=False,
        options={"stddev": stddev},
        description=(
            "w ~ N(0, sigma^2) with a fixed sigma that ignores the layer's width. sigma = 0.01 "
            "is the 'small random' init (signals shrink by n*sigma^2 per layer) and sigma = 1 "
            "the 'standard normal' one (they grow by n per layer)."
        ),
    )


def uniform(scale: float = 1e-2) -> Scheme:
    sc = check_positive("scale", scale)
    return Scheme(
        name="uniform",
        variance_expr=S.stddev**2 / 3,
        parameters={S.stddev: sc},
        distribution="uniform",
        uses_fans=False,
        options={"scale": scale},
        description=(
            "w ~ U[-scale, scale): zero mean, Var(w) = scale^2/3. Unlike "
            "jax.nn.initializers.uniform, which draws from U[0, scale) (mean scale/2)."
        ),
    )


def truncated_normal(stddev: float = 1e-2, lower: float = -2.0, upper: float = 2.0) -> Scheme:
    sd = check_positive("stddev", stddev)
    # Validates the bounds (finite, ordered, not entirely in a far tail).
    mom = truncated_normal_moments(lower, upper)
    return Scheme(
        name="truncated_normal",
        variance_expr=S.stddev**2 * mom["variance"],
        mean_expr=S.stddev * mom["mean"],
        parameters={S.stddev: sd},
        distribution="truncated_normal",
        uses_fans=False,
        truncation=(float(lower), float(upper)),
        options={"stddev": stddev, "lower": lower, "upper": upper},
        description=(
            "sigma * z with z ~ N(0, 1) truncated to [lower, upper] (in units of sigma), as "
            "jax.nn.initializers.truncated_normal: sigma is the std *before* truncation, so "
            "Var(w) = sigma^2 * Var(z) < sigma^2 (0.7737 sigma^2 for +-2; no correction)."
        ),
    )


def uniform_interval(lower: float = 0.0, upper: float = 1e-2) -> Scheme:
    r"""w ~ U[lower, upper): the uniform law with a mean, e.g. ``jax.nn.initializers.uniform``.

    .. math:: E[w] = \frac{a + b}{2}, \qquad \mathrm{Var}(w) = \frac{(b - a)^2}{12}

    with :math:`a, b` = ``lower, upper``. ``jax.nn.initializers.uniform(s)`` draws from
    U[0, s): mean s/2, variance s^2/12 (the symmetric :func:`uniform` is U[-s, s)).

    Example:
        >>> sch = uniform_interval(0.0, 0.6)
        >>> sch.law, sch.mean_law
        (3/100, 3/10)
    """
    for nm, v in (("lower", lower), ("upper", upper)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"uniform_interval {nm} must be a finite number, got {v!r}")
    if not lower < upper:
        raise ValueError(f"uniform_interval needs lower < upper, got lower={lower}, upper={upper}")
    a, b = exact_number(lower), exact_number(upper)
    return Scheme(
        name="uniform_interval",
        variance_expr=(b - a) ** 2 / 12,
        mean_expr=(a + b) / 2,
        parameters={},
        distribution="uniform",
        uses_fans=False,
        options={"lower": lower, "upper": upper},
        description=(
            "w ~ U[lower, upper): E[w] = (lower + upper)/2, Var(w) = (upper - lower)^2/12, "
            "whatever the layer's width. jax.nn.initializers.uniform(s) is U[0, s)."
        ),
    )


# -- variance scaling family -------------------------------------------------------------


def variance_scaling(
    scale: float,
    mode: str,
    distribution: str,
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
) -> Scheme:
    sc = check_positive("scale", scale)
    fan_denominator(mode)
    return _scaling(
        "variance_scaling",
        sp.sqrt(sc),
        mode,
        distribution,
        "Var(w) = scale / n with n the fan of the mode (fan_in, fan_out, their arithmetic or "
        "geometric mean). truncated_normal is corrected so that Var(w) is exactly scale/n.",
        {
            "scale": scale,
            "mode": mode,
            "distribution": distribution,
            **{
                k: v
                for k, v, default in (
                    ("in_axis", in_axis, -2),
                    ("out_axis", out_axis, -1),
                    ("batch_axis", batch_axis, ()),
                )
                if v != default
            },
        },
        in_axis,
        out_axis,
        batch_axis,
    )


def embed_normal() -> Scheme:
    r"""Flax's default embedding init: w ~ N(0, 1/features) for a ``(vocab, features)`` table.

    Flax declares it as ``variance_scaling(1.0, "fan_in", "normal", out_axis=0)``. On a
    table of shape :math:`(V, d)` JAX's fan formula then names axis 0 both ``in`` (the
    default ``-2``) and ``out``, and its fractional receptive field :math:`d/V` gives
    :math:`n_{in} = V \cdot d/V = d`. In general :math:`n_{in} = \prod(\text{shape}) /
    \text{shape}_0`, which is the fan-in of the layout ``in_axis=-1, out_axis=0`` (the
    middle axes, if any, are the receptive field), so

    .. math:: \mathrm{Var}(w) = \frac{1}{n_{in}} = \frac{1}{d}, \qquad E[w] = 0

    and each embedding vector has :math:`E\|w_v\|^2 = 1`.

    Example:
        >>> sch = embed_normal()
        >>> sch.law, sch.variance((1000, 64)) == 1 / 64
        (1/n_in, True)
    """
    return _scaling(
        "embed_normal",
        sp.Integer(1),
        "fan_in",
        "normal",
        "Flax's default embedding init, variance_scaling(1, 'fan_in', 'normal', out_axis=0): "
        "Var(w) = 1/features for a (vocab, features) table, so every embedding vector has "
        "unit expected squared norm.",
        {},
        -1,
        0,
        (),
    )


def glorot(
    distribution: str,
    gain: GainSpec = 1.0,
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
) -> Scheme:
    g, _ = resolve_gain(gain)
    return _scaling(
        f"glorot_{distribution}",
        g,
        "fan_avg",
        distribution,
        "Var(w) = 2 g^2 / (n_in + n_out): the compromise between keeping the forward variance "
        "(n_in Var(w) = 1) and the backward one (n_out Var(w) = 1) for linear or tanh-like "
        f"units near 0. {_GLOROT_REF}",
        {"gain": gain} if gain != 1.0 else {},
        in_axis,
        out_axis,
        batch_axis,
    )


def xavier_fan_in(
    distribution: str,
    gain: GainSpec = 1.0,
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
) -> Scheme:
    g, _ = resolve_gain(gain)
    return _scaling(
        f"xavier_fan_in_{distribution}",
        g,
        "fan_in",
        distribution,
        "Var(w) = g^2 / n_in: what fast.ai and Caffe's 'xavier' filler call "
        "Xavier init. It keeps the forward variance only; its law is LeCun's. "
        f"After {_GLOROT_REF}",
        {"gain": gain} if gain != 1.0 else {},
        in_axis,
        out_axis,
        batch_axis,
    )


def lecun(
    distribution: str,
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
) -> Scheme:
    return _scaling(
        f"lecun_{distribution}",
        sp.Integer(1),
        "fan_in",
        distribution,
        "Var(w) = 1 / n_in: keeps E[z^2] for linear units; with SELU it makes (0, 1) the "
        f"fixed point of the layer map. {_LECUN_REF}",
        {},
        in_axis,
        out_axis,
        batch_axis,
    )


def he(
    distribution: str,
    mode: str = "fan_in",
    gain: GainSpec = "relu",
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
) -> Scheme:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"He init mode must be 'fan_in' or 'fan_out', got {mode!r}")
    g, label = resolve_gain(gain)
    opts: dict = {}
    if mode != "fan_in":
        opts["mode"] = mode
    if gain != "relu":
        opts["gain"] = gain
    return _scaling(
        f"he_{distribution}",
        g,
        mode,
        distribution,
        f"Var(w) = g^2 / n_{mode[4:]} with g the {label} (sqrt(2) for ReLU, because ReLU keeps "
        "half of E[z^2]). fan_in preserves the forward pass, fan_out the backward pass. "
        f"{_HE_REF}",
        opts,
        in_axis,
        out_axis,
        batch_axis,
    )


def orthogonal(gain: float = 1.0, column_axis: int = -1) -> Scheme:
    g, _ = resolve_gain(gain)
    return Scheme(
        name="orthogonal",
        variance_expr=S.gain**2 * sp.Min(S.n_rows, S.n_cols) / (S.n_rows * S.n_cols),
        parameters={S.gain: g},
        distribution="orthogonal",
        column_axis=column_axis,
        options={"gain": gain} if gain != 1.0 else {},
        description=(
            "g times a uniformly random matrix with orthonormal rows or columns (QR of a "
            "Gaussian matrix, signs fixed): ||W||_F^2 = g^2 min(rows, cols) exactly, so "
            f"E[w^2] = g^2 / max(rows, cols). {_ORTHO_REF}"
        ),
    )


def delta_orthogonal(gain: float = 1.0) -> Scheme:
    g, _ = resolve_gain(gain)
    return Scheme(
        name="delta_orthogonal",
        variance_expr=S.gain**2 * S.n_rows / (S.n_cols * S.fan_in),
        parameters={S.gain: g},
        distribution="delta_orthogonal",
        options={"gain": gain} if gain != 1.0 else {},
        description=(
            "A conv kernel that is zero except at the spatial centre ((k-1)//2), where it is g "
            "times an orthogonal in x out matrix (out >= in): the conv is an isometry at init. "
            f"E[w^2] = g^2 in / (out n_in) = g^2 / n_out. {_DELTA_REF}"
        ),
    )


def fixup(depth: int, layers_per_branch: int = 2, gain: GainSpec = "relu") -> Scheme:
    for nm, v, lo in (("depth", depth, 1), ("layers_per_branch", layers_per_branch, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"fixup {nm} must be an int >= {lo}, got {v!r}")
    g, label = resolve_gain(gain)
    return Scheme(
        name="fixup",
        variance_expr=S.gain**2 * S.depth ** (-1 / (S.branch_layers - 1)) / S.fan_in,
        parameters={S.gain: g, S.depth: depth, S.branch_layers: layers_per_branch},
        distribution="normal",
        options={"depth": depth, "layers_per_branch": layers_per_branch},
        description=(
            "For the first m-1 layers of each of L residual branches: He init (g the "
            f"{label}) scaled by L^(-1/(2m-2)) in std, Var(w) = g^2 L^(-1/(m-1)) / n_in. The "
            "branch's last layer (and the classifier) start at zero, so each residual branch "
            "adds O(1/L) to the variance and a 10,000-layer net stays finite. "
            f"{_FIXUP_REF}"
        ),
    )


#: Builders by the name a SPEC string uses (``he_normal:mode=fan_out``).
SCHEME_BUILDERS: dict[str, Callable[..., Scheme]] = {
    "zeros": zeros,
    "ones": ones,
    "constant": constant,
    "normal": normal,
    "uniform": uniform,
    "truncated_normal": truncated_normal,
    "uniform_interval": uniform_interval,
    "embed_normal": embed_normal,
    "variance_scaling": variance_scaling,
    "glorot_normal": functools.partial(glorot, "normal"),
    "glorot_uniform": functools.partial(glorot, "uniform"),
    "xavier_normal": functools.partial(glorot, "normal"),
    "xavier_uniform": functools.partial(glorot, "uniform"),
    "xavier_fan_in_normal": functools.partial(xavier_fan_in, "normal"),
    "xavier_fan_in_uniform": functools.partial(xavier_fan_in, "uniform"),
    "lecun_normal": functools.partial(lecun, "normal"),
    "lecun_uniform": functools.partial(lecun, "uniform"),
    "he_normal": functools.partial(he, "normal"),
    "he_uniform": functools.partial(he, "uniform"),
    "kaiming_normal": functools.partial(he, "normal"),
    "kaiming_uniform": functools.partial(he, "uniform"),
    "orthogonal": orthogonal,
    "delta_orthogonal": delta_orthogonal,
    "fixup": fixup,
}


def scheme_names() -> tuple[str, ...]:
    return tuple(SCHEME_BUILDERS)


def scheme_from_spec(spec: str) -> Scheme:
    """Build a scheme from ``NAME[:key=value,...]`` (parsed, never evaluated).

    Raises:
        ValueError: unknown name (the message lists the valid ones), unknown or bad arguments.
    """
    from varprop._src.spec import parse_spec

    name, kwargs = parse_spec(spec)
    if name not in SCHEME_BUILDERS:
        raise ValueError(f"unknown initializer {name!r}; valid names: {', '.join(scheme_names())}")
    builder = SCHEME_BUILDERS[name]
    allowed = list(inspect.signature(builder).parameters)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {unknown} for initializer {name!r}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    try:
        return builder(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for initializer {name!r} in {spec!r}: {e}") from None

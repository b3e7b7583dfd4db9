r"""Per-op laws for checking a whole model: fans, borders, embeddings, normalization,
dropout, residual adds, attention, and the factor a normalization puts on the backward law
of the layer before it.

A model checker evaluates the conditional laws of an op ``y = op(x, W)`` with i.i.d.
zero-mean weights of variance σ² exactly with the op itself,
``E_W[y²] = σ²·op(x², 1)`` and ``E_W[g_x²] = σ²·opᵀ(g_y², 1)``; this module gives the
same laws as SymPy expressions (for the derivation text), the fans a report names, and the
factors that the plain conditional law misses. The derivations, with Monte Carlo checks,
are in ``docs/model_laws.md``.

**The factor that matters most** (:func:`normalized_backward_factor`). For ``z = x W``
(fan-in n, W i.i.d. N(0, σ²)) followed by a training-mode normalization of z, the
gradient g_z depends on W, and the plain backward law
``E[|g_x|²] = σ² n |g_z|²`` (g_z taken as independent of W) is off by an exact factor:

.. math::

    \frac{E[|g_x|^2]}{E[\sigma^2 n\,|g_z|^2]} =
    \begin{cases} 1 - 2/n & \text{BatchNorm (per unit over the rows)} \\
                  1 - 1/n & \text{LayerNorm (per row over the units)} \end{cases}

for ε = 0, independent of the number of rows, of units, and of the input distribution.
BatchNorm: column j of W is ``r_j θ_j`` (length, direction; independent for a Gaussian),
the normalized output does not depend on ``r_j`` and ``g_{z_j} ∝ 1/r_j``, so the true
``|g_{z_j}|² |w_j|²`` does not depend on r_j while the plain law's ``σ² n |g_{z_j}|²`` has
``E[σ²/r_j²] = 1/(n − 2)`` (``r_j²/σ² ~ χ²_n``): the ratio is ``(n − 2)/n``. LayerNorm:
``g_{z_b} ⊥ z_b = Wᵀx_b`` so ``g_{x_b} = W g_{z_b} ⊥ x_b``; splitting W into its part
along x_b (which alone sets z_b, hence g_{z_b}) and the independent rest, g_{x_b} lives
in the n − 1 other directions: the ratio is ``(n − 1)/n``. (Both assume the gradient into
the normalization has no component shared between units that is correlated with the
weights' directions, e.g. a loss whose output gradient is independent of W.)

Nothing here imports JAX.

Example:
    >>> conv_fans((3, 3), 16, 32, strides=(2, 2)).fan_out    # 9 * 32 / 4
    72.0
    >>> normalized_backward_factor(9, "batchnorm")
    7/9
"""

# SymPy's inline annotations are narrower than its API: these checks give false positives.
# pyright: reportArgumentType=false, reportCallIssue=false, reportReturnType=false
# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false, reportOperatorIssue=false

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import sympy as sp

from varprop._src.laws.conv import ConvGeometry, Padding
from varprop._src.laws.normalization import (
    NormKind,
    eval_mode_output_moments,
    norm_kind,
    train_output_second_moment,
)

#: Anything SymPy accepts as a number or expression.
ExprLike = sp.Expr | int | float

# --- symbols of this module's laws -----------------------------------------------------
#: Channels, groups.
C_in = sp.Symbol("C_in", positive=True, integer=True)
C_out = sp.Symbol("C_out", positive=True, integer=True)
G = sp.Symbol("G", positive=True, integer=True)
#: Second moments and the cross moment of a residual add's branches.
E_w2 = sp.Symbol("E[w^2]", positive=True)
E_x2 = sp.Symbol("E[x^2]", positive=True)
E_x = sp.Symbol("E[x]", real=True)
E_gy2 = sp.Symbol("E[g_y^2]", positive=True)
E_a2 = sp.Symbol("E[a^2]", positive=True)
E_b2 = sp.Symbol("E[b^2]", positive=True)
E_ab = sp.Symbol("E[ab]", real=True)
#: Normalization: γ, β, ε, the variance v of a normalized group and its size m.
gamma = sp.Symbol("gamma", real=True)
beta = sp.Symbol("beta", real=True)
epsilon = sp.Symbol("epsilon", nonnegative=True)
group_var = sp.Symbol("v", positive=True)
group_size = sp.Symbol("m", positive=True, integer=True)
#: Fan-in of the linear layer before a normalization.
n = sp.Symbol("n", positive=True, integer=True)
#: Dropout rate.
p = sp.Symbol("p", nonnegative=True)
#: Attention: head dimension, logit scale, query/key/value second moments, sequence length.
head_dim = sp.Symbol("d", positive=True, integer=True)
logit_scale = sp.Symbol("tau", positive=True)
E_q2 = sp.Symbol("E[q^2]", positive=True)
E_k2 = sp.Symbol("E[k^2]", positive=True)
E_v2 = sp.Symbol("E[v^2]", positive=True)
seq_len = sp.Symbol("T", positive=True, integer=True)


# --- fans ------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpFans:
    """The fans of an op with a weight, as numbers and as SymPy expressions.

    Attributes:
        fan_in: inputs that feed one output value (times nothing else: the taps and
            channels a conv output reads).
        fan_out: mean number of output values that read one input value (away from
            borders).
        fan_in_expr, fan_out_expr: the same in named symbols (``values`` gives theirs).
        values: each symbol with its value, ``fan_in == float(fan_in_expr.subs(values))``.
    """

    fan_in: float
    fan_out: float
    fan_in_expr: sp.Expr
    fan_out_expr: sp.Expr
    values: tuple[tuple[sp.Symbol, int], ...] = ()


def _whole(values: Sequence[int], what: str) -> tuple[int, ...]:
    out = tuple(values)
    if any(isinstance(v, bool) or int(v) != v or v < 1 for v in out):
        raise ValueError(f"{what} must be whole numbers >= 1, got {values!r}")
    return tuple(int(v) for v in out)


def _fans(fi: sp.Expr, fo: sp.Expr, values: dict[sp.Symbol, int]) -> OpFans:
    return OpFans(float(fi.subs(values)), float(fo.subs(values)), fi, fo, tuple(values.items()))


def dense_fans(contracted: Sequence[int], free: Sequence[int]) -> OpFans:
    r"""Fans of ``dot_general`` / ``DenseGeneral`` / ``einsum`` with a weight.

    ``fan_in = Π contracted`` (the weight dims summed against the input),
    ``fan_out = Π free`` (the weight's own output dims; batch dims of the input are not
    part of either): ``E_W[y²] = σ² Σ_contracted x²`` has ``fan_in`` terms, and
    ``E_W[g_x²] = σ² Σ_free g_y²`` has ``fan_out`` (Glorot & Bengio 2010; He et al. 2015).

    Example:
        >>> f = dense_fans([8, 64], [512])          # heads x head_dim -> features
        >>> f.fan_in, f.fan_out, f.fan_in_expr
        (512.0, 512.0, n_c1*n_c2)
    """
    c = _whole(contracted, "contracted dims")
    f = _whole(free, "free dims")
    cs = sp.symbols(f"n_c1:{len(c) + 1}", positive=True, integer=True) if c else ()
    fs = sp.symbols(f"n_o1:{len(f) + 1}", positive=True, integer=True) if f else ()
    values = dict(zip(cs, c, strict=True)) | dict(zip(fs, f, strict=True))
    return _fans(sp.Mul(*cs), sp.Mul(*fs), values)


def conv_fans(
    kernel_spatial: Sequence[int],
    c_in: int,
    c_out: int,
    groups: int = 1,
    strides: Sequence[int] | None = None,
    lhs_dilation: Sequence[int] | None = None,
) -> OpFans:
    r"""Interior fans of a convolution (``conv_general_dilated``, ``nn.Conv``,
    ``nn.ConvTranspose``).

    .. math::

        n_{in} = \frac{C_{in}}{G}\,\frac{\prod_i k_i}{\prod_i D_i}, \qquad
        n_{out} = \frac{C_{out}}{G}\,\frac{\prod_i k_i}{\prod_i s_i}

    with D the input (lhs) dilation of a transposed conv, which reads only the real input
    positions (a fraction 1/D of its taps, on average), and s the strides: one input
    value is read by Πk/Πs (output position, tap) pairs on average, each into C_out/G
    channels. Away from borders; :func:`border_factor` gives the correction there
    (Dumoulin & Visin 2016 for the geometry; the fans of He et al. 2015 are the stride-1,
    undilated case, ``fan_out = C_out Πk / G`` overcounting strided convs by Πs).

    Example:
        >>> f = conv_fans((3, 3), 16, 32, strides=(2, 2))
        >>> f.fan_in, f.fan_out, f.fan_out_expr
        (144.0, 72.0, C_out*k_1*k_2/(G*s_1*s_2))
        >>> conv_fans((4, 4), 64, 32, lhs_dilation=(2, 2)).fan_in     # transposed conv
        256.0
    """
    k = _whole(kernel_spatial, "kernel_spatial")
    (c_in, c_out, groups) = _whole((c_in, c_out, groups), "c_in, c_out, groups")
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    ks = sp.symbols(f"k_1:{len(k) + 1}", positive=True, integer=True)
    values: dict[sp.Symbol, int] = dict(zip(ks, k, strict=True))
    values |= {C_in: c_in, C_out: c_out, G: groups}
    fan_in = C_in / G * sp.Mul(*ks)
    fan_out = C_out / G * sp.Mul(*ks)
    if strides is not None:
        s = _whole(strides, "strides")
        ss = sp.symbols(f"s_1:{len(s) + 1}", positive=True, integer=True)
        fan_out = fan_out / sp.Mul(*ss)
        values |= dict(zip(ss, s, strict=True))
    if lhs_dilation is not None:
        d = _whole(lhs_dilation, "lhs_dilation")
        ds = sp.symbols(f"D_1:{len(d) + 1}", positive=True, integer=True)
        fan_in = fan_in / sp.Mul(*ds)
        values |= dict(zip(ds, d, strict=True))
    return _fans(fan_in, fan_out, values)


class BorderFactors(NamedTuple):
    """Border corrections of a convolution's laws (1 for no border effect).

    Attributes:
        forward: mean over output positions of valid taps / Πk (multiplies the forward law).
        backward: mean over input positions of the (output, tap) pairs reading it, divided
            by the interior value Πk/Πs (multiplies the interior backward fan).
    """

    forward: float
    backward: float


def border_factor(
    input_shape: Sequence[int],
    kernel: Sequence[int],
    *,
    padding: Padding = "SAME",
    strides: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> BorderFactors:
    r"""The forward and backward border factors of a convolution (from
    :class:`~varprop._src.laws.conv.ConvGeometry`, XLA's padding rule).

    ``forward = mean_o |T(o)| / Πk`` with T(o) the valid taps of output o, so the forward
    law is ``E[z²] ≈ forward · n_in σ² E[x²]`` for a uniform input; ``backward =
    mean_i R(i) / (Πk/Πs)`` with R(i) the (output, tap) pairs that read input i, so
    ``E[g_x²] ≈ backward · n_out σ² E[g_z²]`` with the interior ``n_out`` of
    :func:`conv_fans`. Channels and groups do not enter.

    Example:
        >>> f = border_factor((7, 7), (3, 3))             # (19/21)^2 both ways
        >>> round(f.forward, 6), round(f.backward, 6)
        (0.818594, 0.818594)
        >>> border_factor((8, 8), (3, 3), strides=2)      # (11/12)^2 forward, (11/12)^2 back
        BorderFactors(forward=0.8402777777777778, backward=0.8402777777777778)
    """
    g = ConvGeometry.make(
        input_shape, kernel, 1, 1, strides=strides, padding=padding, dilation=dilation
    )
    interior = math.prod(g.kernel) / math.prod(g.strides)
    return BorderFactors(g.border_factor, float(np.mean(g.reads())) / interior)


# --- embedding -------------------------------------------------------------------------
def embedding_law(weight_second_moment: ExprLike = E_w2) -> sp.Expr:
    r"""``E[y²] = E[w²]``: a lookup ``y = W[token]`` copies one row of the table.

    No fan enters: the output is one weight, not a sum of them (the table of
    Mikolov et al. 2013 / Vaswani et al. 2017 §3.4 as ``nn.Embed``). The backward law of the
    table is a scatter-add of g_y into the looked-up rows (no input gradient).

    Example:
        >>> embedding_law()
        E[w^2]
        >>> embedding_law(0.02**2)
        0.000400000000000000
    """
    return sp.sympify(weight_second_moment)


def embedding_fan_warning(scheme_fan_in: float, vocab: int, features: int) -> str | None:
    """A message when a fan-in scheme took ``fan_in = vocab`` for an embedding table.

    A table of shape (vocab, features) read by variance scaling with the dense convention
    (in_axis = -2) gets ``fan_in = vocab``, so ``E[y²] = scale/vocab`` instead of the
    ``scale/features`` of Flax's own ``nn.Embed`` default (``variance_scaling(1, "fan_in",
    "normal", out_axis=0)``). None when the fan is not the vocabulary size (or both agree).

    Example:
        >>> print(embedding_fan_warning(32000, 32000, 512))
        embedding table (32000, 512): the initializer's fan_in is the vocabulary size 32000, so E[y^2] = scale/32000, 62.5x smaller than scale/features = scale/512 (a lookup copies one row: no sum over the vocabulary)
        >>> embedding_fan_warning(512, 32000, 512) is None
        True
    """
    if vocab == features or not math.isclose(scheme_fan_in, vocab, rel_tol=1e-9):
        return None
    return (
        f"embedding table ({vocab}, {features}): the initializer's fan_in is the vocabulary "
        f"size {vocab}, so E[y^2] = scale/{vocab}, {vocab / features:.3g}x "
        f"{'smaller' if vocab > features else 'larger'} than scale/features = "
        f"scale/{features} (a lookup copies one row: no sum over the vocabulary)"
    )


# --- normalization ---------------------------------------------------------------------
def norm_train_forward(
    gamma: ExprLike = gamma,
    beta: ExprLike = beta,
    group_var: ExprLike = group_var,
    epsilon: ExprLike = epsilon,
) -> sp.Expr:
    r"""Train mode: ``E[y²] = γ² E[x̂²] + β²`` with ``E[x̂²] = v/(v + ε)``, v the (biased)
    variance over the normalized values (Ioffe & Szegedy 2015; Ba et al. 2016).

    An identity over each normalized group (mean over the group), not an expectation.

    Example:
        >>> norm_train_forward()
        beta**2 + gamma**2*v/(epsilon + v)
        >>> float(norm_train_forward(1, 0, 1e-4, 1e-5))    # a near-constant group
        0.9090909090909091
    """
    # BatchNorm's law, written once in laws.normalization; a LayerNorm's group is a row.
    return train_output_second_moment(gamma, beta, group_var, epsilon)


def norm_eval_forward(
    gamma: ExprLike = gamma,
    beta: ExprLike = beta,
    input_second_moment: ExprLike = E_x2,
    input_mean: ExprLike = E_x,
    epsilon: ExprLike = epsilon,
) -> sp.Expr:
    r"""Eval mode at init (running mean 0, running variance 1): ``y = γx/√(1+ε) + β``, so

    .. math:: E[y^2] = \gamma^2 \frac{E[x^2]}{1+\epsilon}
              + \frac{2\gamma\beta E[x]}{\sqrt{1+\epsilon}} + \beta^2

    exactly (the middle term vanishes for β = 0, Flax's init). The layer does not
    normalize: E[y²] follows E[x²].

    Example:
        >>> norm_eval_forward(1, 0, 25, 3, 0)
        25
    """
    # The eval-mode law of laws.normalization at the initial running statistics (0, 1).
    mx, x2 = sp.sympify(input_mean), sp.sympify(input_second_moment)
    out = eval_mode_output_moments(mx, x2 - mx**2, 0, 1, epsilon, gamma, beta)
    return sp.expand(out.second_moment)


def norm_train_backward(
    gamma: ExprLike = gamma,
    group_var: ExprLike = group_var,
    epsilon: ExprLike = epsilon,
    group_size: ExprLike = group_size,
) -> sp.Expr:
    r"""Train mode: the factor on ``E[g_y²]`` giving ``E[g_x²]``.

    The Jacobian of ``y = γ x̂ + β``, ``x̂ = (x − μ)/√(v+ε)`` over a group of m values is
    ``J = γ/√(v+ε) · (I − 11ᵀ/m − x̂x̂ᵀ/m)``. ``1`` and ``x̂`` are orthogonal and
    ``|x̂|²/m = κ = v/(v+ε)``, so JᵀJ has eigenvalue ``γ²/(v+ε)`` on m − 2 directions,
    0 on ``1`` and ``γ²(1−κ)²/(v+ε)`` on x̂. For g_y independent of x̂ with
    ``E[g_y g_yᵀ] = E[g_y²] I`` (the assumption), ``E|Jg_y|² = E[g_y²]·tr(JᵀJ)``:

    .. math:: E[g_x^2] = \frac{\gamma^2}{v+\epsilon}
              \left(1 - \frac{2}{m} + \frac{1}{m}\Big(\frac{\epsilon}{v+\epsilon}\Big)^2\right)
              E[g_y^2]

    (``1 − 2/m`` at ε = 0: the projection removes 2 of the m directions).

    Example:
        >>> norm_train_backward(epsilon=0)
        gamma**2*(1 - 2/m)/v
        >>> norm_train_backward(1, 1, 0, 256)
        127/128
    """
    g, v, e, m = map(sp.sympify, (gamma, group_var, epsilon, group_size))
    return g**2 / (v + e) * (1 - 2 / m + (e / (v + e)) ** 2 / m)


def norm_eval_backward(gamma: ExprLike = gamma, epsilon: ExprLike = epsilon) -> sp.Expr:
    r"""Eval mode at init: ``E[g_x²] = γ²/(1+ε) · E[g_y²]`` (an affine map, exactly).

    Example:
        >>> norm_eval_backward(2, 0)
        4
    """
    g, e = map(sp.sympify, (gamma, epsilon))
    return g**2 / (1 + e)


def normalized_backward_factor(n: ExprLike = n, kind: str | NormKind = "batchnorm") -> sp.Expr:
    r"""The exact factor on the plain backward law of a linear layer followed by a
    training-mode normalization of its output.

    For ``z = x W`` with fan-in n (contracted inputs; ``c_in k_h k_w / G`` for a conv) and
    W i.i.d. N(0, σ²), the true ``E[|g_x|²]`` is this factor times the plain law's
    ``E[σ² n |g_z|²]`` (``σ² opᵀ(g_z², 1)`` summed):

    * BatchNorm (per unit over the rows, or rows × positions of a conv): ``1 − 2/n``
      (n > 2; the plain law's expectation is infinite for n ≤ 2);
    * LayerNorm (per row over the units): ``1 − 1/n``.

    Exact for ε = 0 whatever the rows, units and inputs (see the module docstring for the
    derivation and ``docs/model_laws.md`` for the Monte Carlo check); ε > 0 moves it
    towards 1 when the pre-normalization variance is comparable to ε.

    Example:
        >>> normalized_backward_factor()
        1 - 2/n
        >>> normalized_backward_factor(9, "batchnorm"), normalized_backward_factor(9, "layernorm")
        (7/9, 8/9)
    """
    k = norm_kind(kind)
    if k is None:
        raise ValueError("kind must name a normalization, got None")
    removed = 2 if k.over_batch else 1
    return 1 - sp.Integer(removed) / sp.sympify(n)


# --- dropout, residual -----------------------------------------------------------------
def dropout_factor(p: ExprLike = p) -> sp.Expr:
    r"""Inverted dropout in train mode, ``y = x·b/(1−p)`` with b ~ Bernoulli(1−p):
    ``E[y²] = E[x²]/(1−p)`` and, with the same mask on the way back (independent of g_y),
    ``E[g_x²] = E[g_y²]/(1−p)``: this factor both ways (Srivastava et al. 2014).
    Eval mode is the identity.

    Example:
        >>> dropout_factor()
        1/(1 - p)
        >>> dropout_factor(sp.Rational(1, 10))
        10/9
    """
    return 1 / (1 - sp.sympify(p))


def residual_add(
    a_second_moment: ExprLike = E_a2,
    b_second_moment: ExprLike = E_b2,
    cross_moment: ExprLike = E_ab,
) -> sp.Expr:
    r"""``E[(a+b)²] = E[a²] + E[b²] + 2E[ab]`` (He et al. 2016), exact.

    The branches add in second moment only when uncorrelated (``E[ab] = 0``); a skip and
    a branch that shares its input at init are often correlated (report
    :func:`residual_correlation`). Backward, the add copies g to both branches:
    ``g_a = g_b = g_y``.

    Example:
        >>> residual_add()
        E[a^2] + 2*E[ab] + E[b^2]
        >>> residual_add(1, 1, 0)
        2
    """
    a2, b2, ab = map(sp.sympify, (a_second_moment, b_second_moment, cross_moment))
    return a2 + b2 + 2 * ab


def residual_correlation(
    a_second_moment: ExprLike = E_a2,
    b_second_moment: ExprLike = E_b2,
    cross_moment: ExprLike = E_ab,
) -> sp.Expr:
    r"""``ρ = E[ab]/√(E[a²]E[b²])``: the (uncentred) correlation of the two branches, in
    [−1, 1]; ``E[(a+b)²] = E[a²] + E[b²] + 2ρ√(E[a²]E[b²])``.

    Example:
        >>> residual_correlation(4, 1, 1)
        1/2
    """
    a2, b2, ab = map(sp.sympify, (a_second_moment, b_second_moment, cross_moment))
    return ab / sp.sqrt(a2 * b2)


# --- attention -------------------------------------------------------------------------
def attention_logit_second_moment(
    head_dim: ExprLike = head_dim,
    query_second_moment: ExprLike = E_q2,
    key_second_moment: ExprLike = E_k2,
    scale: ExprLike = logit_scale,
) -> sp.Expr:
    r"""``s = q·k/τ``: ``E[s²] = d·E[q²]E[k²]/τ²`` (Vaswani et al. 2017 §3.2.1, τ = √d).

    Exact for q and k independent with zero mean and one of them with uncorrelated
    components (``E[s²] = tr(E[qqᵀ]E[kkᵀ])/τ²`` in general). For ``q = x_i W_q``,
    ``k = x_j W_k`` with independent i.i.d. weights it holds exactly over the weights given
    x, with ``E[q²] = σ_q²|x_i|²``, ``E[k²] = σ_k²|x_j|²``.

    Example:
        >>> attention_logit_second_moment(64, 1, 1, 8)
        1
    """
    d, q2, k2, t = map(sp.sympify, (head_dim, query_second_moment, key_second_moment, scale))
    return d * q2 * k2 / t**2


def attention_mean_square_weight(seq_len: ExprLike = seq_len, causal: bool = False) -> sp.Expr:
    r"""``mean_i Σ_j p_ij²`` for uniform attention (logits → 0): ``1/T`` without a mask,
    ``H_T/T`` with a causal one (row i averages i + 1 values; H_T the harmonic number).

    The value law: given the attention weights p (independent of W_v),
    ``E_{W_v}[o_i²] = σ_v² |Σ_j p_ij x_j|²`` exactly, per component. The approximation
    ``E[o²] ≈ E[v²]·mean_i Σ_j p_ij²`` further assumes uncorrelated, zero-mean token
    vectors x_j and small logits (p ≈ uniform); tokens sharing a mean direction push
    E[o²] up towards E[v²] (identical tokens: o = v).

    Example:
        >>> attention_mean_square_weight(), attention_mean_square_weight(causal=True)
        (1/T, harmonic(T)/T)
        >>> float(attention_mean_square_weight(4, causal=True))   # (1 + 1/2 + 1/3 + 1/4)/4
        0.5208333333333334
    """
    t = sp.sympify(seq_len)
    return sp.harmonic(t) / t if causal else 1 / t


def attention_output_second_moment(
    value_second_moment: ExprLike = E_v2, seq_len: ExprLike = seq_len, causal: bool = False
) -> sp.Expr:
    r"""``E[o²] ≈ E[v²]·mean_i Σ_j p_ij²`` at init (see :func:`attention_mean_square_weight`
    for what is exact and what is approximated).

    Example:
        >>> attention_output_second_moment(causal=True)
        E[v^2]*harmonic(T)/T
    """
    return sp.sympify(value_second_moment) * attention_mean_square_weight(seq_len, causal)

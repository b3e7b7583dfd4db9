r"""Laws of batch normalization, in SymPy (nothing here imports JAX).

Notation, per feature: a batch z_1 … z_N with batch mean μ_B and biased variance σ²_B;
γ, β the layer's scale and bias; ε its epsilon; μ_r, σ²_r the running statistics.

Training mode (Ioffe & Szegedy 2015), ``y_i = γ(z_i − μ_B)/√(σ²_B + ε) + β``:

.. math::

    \frac1N\sum_i y_i = \beta, \qquad
    \frac1N\sum_i (y_i - \beta)^2 = \gamma^2\,\frac{\sigma_B^2}{\sigma_B^2 + \epsilon},
    \qquad \frac1N\sum_i y_i^2 = \gamma^2\,\frac{\sigma_B^2}{\sigma_B^2 + \epsilon} + \beta^2,

exactly, for every batch (these are identities, not expectations): the output variance is
below γ² by the factor σ²_B/(σ²_B + ε), whatever the weights' scale.

Scale invariance: for z = Wx and α > 0, ``BN(αWx) − β = r(α)·(BN(Wx) − β)`` with
``r(α) = α√(σ²_B + ε)/√(α²σ²_B + ε)``, so ``BN(αWx) = BN(Wx)`` exactly when ε = 0, and
``|r − 1| ≈ ε|1/σ²_B − 1/(α²σ²_B)|/2`` otherwise (the invariance fails once α²σ²_B is
comparable to ε). Because ``L(αW) = L(W)``, differentiating gives
``α·∇L(αW) = ∇L(W)``: the gradient with respect to W scales as 1/α — large weights learn
slowly, small ones quickly (Ioffe & Szegedy 2015, §3.3).

Evaluation mode: ``y = γ(x − μ_r)/√(σ²_r + ε) + β``, an affine map fixed by the running
statistics. With their initial values (μ_r, σ²_r) = (0, 1) it is ``γx/√(1 + ε) + β``: the
layer does not normalize at all. A model evaluated before its running statistics have
converged (or whose statistics were never updated, e.g. a Linen ``apply`` without
``mutable=["batch_stats"]``) sees its activations at their raw scale.

Functions return SymPy expressions; numbers may be passed for any argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import sympy as sp

from varprop._src.errors import InputError

# The symbols of the normalization laws live with all the others in ``symbols``;
# they are bound here under their short names (used as the functions' defaults).
from varprop._src.laws.symbols import (
    alpha,
    batch_stat,
    batch_var,
    beta,
    count,
    epsilon,
    gamma,
    input_mean,
    input_var,
    momentum,
    running_mean,
    running_var,
    steps,
)

#: Anything SymPy accepts as a number or expression.
ExprLike = sp.Expr | int | float


@dataclass(frozen=True)
class NormKind:
    """A normalization that can stand before each hidden activation, declared once.

    Attributes:
        name: how users name it (``norm="batchnorm"``).
        over_batch: its statistics are per feature over the batch (BatchNorm) rather than
            per example over the features (LayerNorm).
        epsilon: the default epsilon added to the variance (Flax's).
        running_statistics: it keeps running statistics for evaluation mode.
    """

    name: str
    over_batch: bool
    epsilon: float
    running_statistics: bool

    def removed_directions(self, batch: int, width: int) -> int:
        """N in the backward factor 1 - 2/N: the size of what the statistics are over."""
        return batch if self.over_batch else width

    def __str__(self) -> str:
        return self.name


BATCHNORM = NormKind("batchnorm", over_batch=True, epsilon=1e-5, running_statistics=True)
LAYERNORM = NormKind("layernorm", over_batch=False, epsilon=1e-6, running_statistics=False)
#: Every normalization by name.
NORM_KINDS = {k.name: k for k in (BATCHNORM, LAYERNORM)}
#: The values a ``norm`` argument takes: a name of :data:`NORM_KINDS`, or None for none.
NORMS = (None, *NORM_KINDS)
#: The epsilon added to the variance by each normalization (Flax's defaults, used by the
#: probe, the modules and the laws alike).
NORM_EPSILON = {k.name: k.epsilon for k in NORM_KINDS.values()}


def norm_kind(norm: str | NormKind | None) -> NormKind | None:
    """The record of a ``norm`` argument (None for none).

    >>> norm_kind("batchnorm").over_batch, norm_kind(None)
    (True, None)
    """
    if norm is None or isinstance(norm, NormKind):
        return norm
    if norm not in NORM_KINDS:
        allowed = ", ".join(repr(n) for n in NORMS)
        raise InputError(f"norm must be one of {allowed}, got {norm!r}", param="norm")
    return NORM_KINDS[norm]


#: Running statistics of a freshly built BatchNorm (Flax, PyTorch and varprop alike).
INITIAL_RUNNING_MEAN = 0
INITIAL_RUNNING_VAR = 1


class OutputMoments(NamedTuple):
    """Mean, variance and second moment of a layer's output (per feature)."""

    mean: sp.Expr
    var: sp.Expr
    second_moment: sp.Expr


def train_output_moments(
    gamma: ExprLike = gamma,
    beta: ExprLike = beta,
    batch_var: ExprLike = batch_var,
    epsilon: ExprLike = epsilon,
) -> OutputMoments:
    r"""Exact batch moments of a training-mode BatchNorm output, per feature.

    ``mean = β``, ``var = γ²σ²_B/(σ²_B + ε)``, ``second_moment = var + β²``, all over the
    batch (1/N), with σ²_B the batch's own biased variance. Identities for every batch.

    Example:
        >>> train_output_moments()
        OutputMoments(mean=beta, var=gamma**2*sigma_B^2/(epsilon + sigma_B^2), second_moment=beta**2 + gamma**2*sigma_B^2/(epsilon + sigma_B^2))
        >>> train_output_moments(2, 0, 1, 0).var
        4
    """
    g, b, v, e = map(sp.sympify, (gamma, beta, batch_var, epsilon))
    var = g**2 * v / (v + e)
    return OutputMoments(b, var, var + b**2)


def train_output_second_moment(
    gamma: ExprLike = gamma,
    beta: ExprLike = beta,
    batch_var: ExprLike = batch_var,
    epsilon: ExprLike = epsilon,
) -> sp.Expr:
    r"""``E[y²] = γ²σ²_B/(σ²_B + ε) + β²``: the input second moment of the layer after BN.

    This is the prediction for ``E[x²]`` of the next layer's forward law when a
    training-mode BatchNorm precedes it (per feature; average over features with the
    actual γ, β and σ²_B of each).

    Example:
        >>> train_output_second_moment(1, 0, 1, sp.Rational(1, 100000))
        100000/100001
    """
    return train_output_moments(gamma, beta, batch_var, epsilon).second_moment


def scale_deviation_ratio(
    alpha: ExprLike = alpha, batch_var: ExprLike = batch_var, epsilon: ExprLike = epsilon
) -> sp.Expr:
    r"""``r(α) = α√(σ²_B + ε)/√(α²σ²_B + ε)``, with ``BN(αz) − β = r(α)·(BN(z) − β)``.

    σ²_B is the batch variance of z (before scaling by α). r = 1 exactly when ε = 0.

    Example:
        >>> scale_deviation_ratio(epsilon=0)
        1
        >>> float(scale_deviation_ratio(sp.Rational(1, 1000), 16, sp.Rational(1, 100000)))  # doctest: +ELLIPSIS
        0.78446...
    """
    a, v, e = map(sp.sympify, (alpha, batch_var, epsilon))
    return a * sp.sqrt(v + e) / sp.sqrt(a**2 * v + e)


def gradient_scale_factor(alpha: ExprLike = alpha) -> sp.Expr:
    r"""``∇_W L(αW) = ∇_W L(W)/α`` for BatchNorm with ε = 0 and α > 0: the factor ``1/α``.

    Example:
        >>> gradient_scale_factor()
        1/alpha
    """
    return 1 / sp.sympify(alpha)


def _bn_batch(zs: list[sp.Expr], g: ExprLike, b: ExprLike, e: ExprLike) -> list[sp.Expr]:
    """Training-mode BatchNorm of a symbolic batch (one feature)."""
    n = len(zs)
    g, b, e = map(sp.sympify, (g, b, e))
    mu = sp.Add(*zs) / n
    # Factoring the biased variance exposes α² as a factor of it (for a batch α·z).
    var = sp.factor(sp.Add(*[(z - mu) ** 2 for z in zs]) / n)
    return [g * (z - mu) / sp.sqrt(var + e) + b for z in zs]


@dataclass(frozen=True)
class ScaleInvarianceProof:
    """The symbolic check that BatchNorm ignores the scale of its weights.

    Attributes:
        n: batch size of the symbolic batch.
        invariant_when_eps_zero: ``BN(αz)_i − BN(z)_i`` simplifies to 0 for ε = 0, every i.
        deviation_law_holds: ``BN(αz)_i − β − r(α)(BN(z)_i − β)`` simplifies to 0 for any ε.
        gradient_scales_inverse: for z = Wx (two inputs, one feature, ε = 0) and the loss
            ``L = Σ_i c_i BN(z)_i``, ``∂L/∂W`` at ``αW`` equals ``(1/α)·∂L/∂W`` at ``W``,
            symbolically in W and α, at a fixed rational batch x and weights c.
    """

    n: int
    invariant_when_eps_zero: bool
    deviation_law_holds: bool
    gradient_scales_inverse: bool
    #: The evidence, so that a check need not trust the booleans: the symbolic batch z_i,
    #: BN(z)_i and BN(αz)_i with symbolic γ, β, ε (before any simplification), the
    #: simplified residuals (exactly 0 when the statements hold), and the gradients
    #: ∂L/∂(w1, w2) at W and at αW on the rational batch ``point`` (x_i1, x_i2, c_i).
    batch: tuple[sp.Symbol, ...] = ()
    bn_plain: tuple[sp.Expr, ...] = ()
    bn_scaled: tuple[sp.Expr, ...] = ()
    invariance_residuals: tuple[sp.Expr, ...] = ()
    deviation_residuals: tuple[sp.Expr, ...] = ()
    gradient_plain: tuple[sp.Expr, ...] = ()
    gradient_scaled: tuple[sp.Expr, ...] = ()
    gradient_residuals: tuple[sp.Expr, ...] = ()
    point: tuple[tuple[sp.Symbol, sp.Expr], ...] = ()

    @property
    def holds(self) -> bool:
        return (
            self.invariant_when_eps_zero
            and self.deviation_law_holds
            and self.gradient_scales_inverse
        )


def prove_scale_invariance(n: int = 3) -> ScaleInvarianceProof:
    r"""Prove ``BN(αWx) = BN(Wx)`` (ε = 0), its ε-deviation, and the 1/α gradient law.

    Works on a symbolic batch of ``n`` real values (n ≥ 2) and simplifies the differences
    to exactly zero with SymPy; see :class:`ScaleInvarianceProof` for what is checked.

    Example (takes about a second; tests/test_norm_laws.py runs it):
        >>> prove_scale_invariance().holds  # doctest: +SKIP
        True
    """
    if n < 2:
        raise ValueError(f"a batch needs at least 2 values to have a variance; got n={n}")
    zs = list(sp.symbols(f"z1:{n + 1}", real=True))
    # A non-constant batch: the variance is positive (the ε = 0 layer is defined).
    az = [alpha * z for z in zs]

    ys = _bn_batch(zs, gamma, beta, epsilon)
    ya = _bn_batch(az, gamma, beta, epsilon)
    ys0 = [y.subs(epsilon, 0) for y in ys]
    ya0 = [y.subs(epsilon, 0) for y in ya]
    inv_res = tuple(sp.simplify(a - b) for a, b in zip(ya0, ys0, strict=True))
    inv = all(r_ == 0 for r_ in inv_res)

    # For ε > 0: BN(αz) − β = r·(BN(z) − β), with r from the *variance* of z.
    mu = sp.Add(*zs) / n
    v = sp.Add(*[(z - mu) ** 2 for z in zs]) / n
    r = scale_deviation_ratio(alpha, v, epsilon)
    dev_res = tuple(
        sp.simplify(sp.factor(ya_i - beta - r * (ys_i - beta)))
        for ya_i, ys_i in zip(ya, ys, strict=True)
    )
    dev = all(r_ == 0 for r_ in dev_res)

    # Gradient: z_i = w1 x_i1 + w2 x_i2, L = Σ c_i BN(z)_i, ε = 0.
    w1, w2 = sp.symbols("w1 w2", real=True)
    xs = [sp.symbols(f"x{i}_1 x{i}_2", real=True) for i in range(1, n + 1)]
    cs = sp.symbols(f"c1:{n + 1}", real=True)

    def loss(a1: ExprLike, a2: ExprLike) -> sp.Expr:
        z = [a1 * x1 + a2 * x2 for x1, x2 in xs]
        return sp.Add(*[c * y for c, y in zip(cs, _bn_batch(z, 1, 0, 0), strict=True)])

    u1, u2 = sp.symbols("u1 u2", real=True)
    grad = [sp.diff(loss(u1, u2), u) for u in (u1, u2)]
    at_w = [g.subs({u1: w1, u2: w2}) for g in grad]
    at_aw = [g.subs({u1: alpha * w1, u2: alpha * w2}) for g in grad]
    # Compare on a rational point of x and c (the law is an identity in them); w and α stay
    # symbolic so the statement is for every weight and every α > 0.
    point = {}
    for i, (x1, x2) in enumerate(xs):
        point[x1] = sp.Rational(i + 1)
        point[x2] = sp.Rational((i * i) % 5 - 2)
    for i, c in enumerate(cs):
        point[c] = sp.Rational(2 * i - 1, 3)
    g_w = tuple(g.subs(point) for g in at_w)
    g_aw = tuple(g.subs(point) for g in at_aw)
    grad_res = tuple(
        sp.simplify(a - gradient_scale_factor() * b) for a, b in zip(g_aw, g_w, strict=True)
    )
    grad_ok = all(r_ == 0 for r_ in grad_res)
    return ScaleInvarianceProof(
        n,
        inv,
        dev,
        grad_ok,
        batch=tuple(zs),
        bn_plain=tuple(ys),
        bn_scaled=tuple(ya),
        invariance_residuals=inv_res,
        deviation_residuals=dev_res,
        gradient_plain=g_w,
        gradient_scaled=g_aw,
        gradient_residuals=grad_res,
        point=tuple(point.items()),
    )


def eval_mode_affine(
    running_mean: ExprLike = running_mean,
    running_var: ExprLike = running_var,
    epsilon: ExprLike = epsilon,
    gamma: ExprLike = gamma,
    beta: ExprLike = beta,
) -> tuple[sp.Expr, sp.Expr]:
    r"""Eval-mode BatchNorm as ``y = gain·x + shift``: ``gain = γ/√(σ²_r + ε)``,
    ``shift = β − γμ_r/√(σ²_r + ε)``.

    Example:
        >>> eval_mode_affine(0, 1, 0)
        (gamma, beta)
    """
    m, v, e, g, b = map(sp.sympify, (running_mean, running_var, epsilon, gamma, beta))
    gain = g / sp.sqrt(v + e)
    return gain, b - gain * m


def eval_mode_gain(
    running_mean: ExprLike = running_mean,
    running_var: ExprLike = running_var,
    epsilon: ExprLike = epsilon,
) -> sp.Expr:
    r"""The factor eval-mode BatchNorm multiplies ``x − μ_r`` by (before γ): ``1/√(σ²_r + ε)``.

    With the initial running statistics (0, 1) it is ``1/√(1 + ε)`` ≈ 1: the layer passes
    its input through unnormalized (``y = γx/√(1+ε) + β``). A checker can warn when a
    layer in eval mode has a gain near 1 while its input's variance is far from 1, or
    when its running statistics still equal :data:`INITIAL_RUNNING_MEAN`,
    :data:`INITIAL_RUNNING_VAR`. ``running_mean`` does not enter the gain (it shifts);
    it is an argument so that call sites can pass the whole running state.

    Example:
        >>> eval_mode_gain(0, 1, 0)
        1
        >>> float(eval_mode_gain(0, 1, 1e-5))  # doctest: +ELLIPSIS
        0.99999500...
    """
    del running_mean  # documented: the gain does not depend on it
    return 1 / sp.sqrt(sp.sympify(running_var) + sp.sympify(epsilon))


def eval_mode_output_moments(
    input_mean: ExprLike = input_mean,
    input_var: ExprLike = input_var,
    running_mean: ExprLike = running_mean,
    running_var: ExprLike = running_var,
    epsilon: ExprLike = epsilon,
    gamma: ExprLike = gamma,
    beta: ExprLike = beta,
) -> OutputMoments:
    r"""Moments of eval-mode BatchNorm's output for an input of mean μ_x, variance σ²_x.

    ``E[y] = γ(μ_x − μ_r)/√(σ²_r + ε) + β``, ``Var[y] = γ²σ²_x/(σ²_r + ε)``,
    ``E[y²] = Var[y] + E[y]²``. It normalizes (mean β, variance ≈ γ²) only when the
    running statistics match the input's.

    Example:
        >>> eval_mode_output_moments(3, 25, 0, 1, 0, 1, 0)  # initial running statistics
        OutputMoments(mean=3, var=25, second_moment=34)
    """
    mx, vx = sp.sympify(input_mean), sp.sympify(input_var)
    gain, shift = eval_mode_affine(running_mean, running_var, epsilon, gamma, beta)
    mean = gain * mx + shift
    var = gain**2 * vx
    return OutputMoments(mean, var, var + mean**2)


def unbiased_factor(count: ExprLike = count) -> sp.Expr:
    r"""Bessel's factor ``N/(N − 1)`` PyTorch applies to the batch variance it stores.

    ``E[σ²_B] = (N − 1)/N · σ²`` for N i.i.d. values of variance σ², so the factor makes
    the stored running variance unbiased.

    Example:
        >>> unbiased_factor(4)
        4/3
    """
    n = sp.sympify(count)
    return n / (n - 1)


def running_average_after(
    steps: ExprLike = steps,
    initial: ExprLike = INITIAL_RUNNING_MEAN,
    batch_stat: ExprLike = batch_stat,
    momentum: ExprLike = momentum,
) -> sp.Expr:
    r"""Running statistic after ``t`` steps of ``r ← m·r + (1 − m)·s`` with a constant
    batch statistic s: ``r_t = s + m^t (r_0 − s)`` (Flax convention; PyTorch's momentum
    m_t corresponds to m = 1 − m_t).

    Example:
        >>> running_average_after(2, 0, 1, sp.Rational(9, 10))
        19/100
    """
    t, r0, s, m = map(sp.sympify, (steps, initial, batch_stat, momentum))
    return s + m**t * (r0 - s)

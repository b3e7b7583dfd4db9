"""Initialization schemes as data: the variance law of every initializer.

A :class:`Scheme` holds the SymPy expression of ``Var(w)`` (in the fans, the gain and, for
Fixup, the depth), the values of its parameters, and the distribution the weights are
drawn from. The JAX sampler in :mod:`varprop.initializers` reads the variance it uses from
:meth:`Scheme.variance`, which evaluates that same expression (lambdified once, when the
scheme is built) on the Python ints of a static shape. So the sampler and the law cannot
drift apart, and a sampling test checks them against each other.

Nothing here imports JAX.
"""

# SymPy's inline annotations are narrower than its API (subs() with a dict, Eq() returning
# Eq, Expr vs Basic results): these checks give false positives on SymPy code.
# pyright: reportArgumentType=false, reportCallIssue=false, reportReturnType=false
# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import mpmath
import sympy as sp

from varprop._src.laws import symbols as S

MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")

AxisSpec = int | Sequence[int]


# --------------------------------------------------------------------------------------
# Distributions, declared once.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Distribution:
    """What a scheme's weights are drawn from, with the properties the laws and samplers ask.

    Declared once, below (:data:`NORMAL`, :data:`TRUNCATED_NORMAL`, :data:`UNIFORM`,
    :data:`ORTHOGONAL`, :data:`DELTA_ORTHOGONAL`, :data:`CONSTANT`); a :class:`Scheme`
    given a name gets the record of that name. ``str()`` and ``repr()`` are the name's, and
    a record equals its name (``NORMAL == "normal"``), so printed laws, specs, JSON and
    user code that compares names read as before.

    Attributes:
        name: ``"normal"``, ``"truncated_normal"``, ``"uniform"``, ``"orthogonal"``,
            ``"delta_orthogonal"`` or ``"constant"``.
        iid: the entries are independent draws of one zero-mean law (normal, truncated
            normal, uniform): the i.i.d. layer law holds, and ``variance_scaling`` accepts it.
        is_constant: every entry is the scheme's mean (Var(w) = 0, no spread).
        is_orthogonal: the entries come from an orthogonal matrix (QR of a Gaussian
            matrix), so the law is written in its rows and columns, the sum of squares is
            exact rather than random, and the sampler needs a QR of its own.
        is_delta: a conv kernel that is zero except at its spatial centre, where it holds
            an orthogonal matrix of (in, out) channels (delta orthogonal).

    Example:
        >>> from varprop import initializers
        >>> d = initializers.orthogonal().scheme.distribution
        >>> str(d), d.is_orthogonal, d.iid, d == "orthogonal"
        ('orthogonal', True, False, True)
    """

    name: str
    iid: bool = False
    is_constant: bool = False
    is_orthogonal: bool = False
    is_delta: bool = False

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return repr(self.name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Distribution):
            return self.name == other.name
        if isinstance(other, str):
            return self.name == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __reduce__(self):
        return distribution_named, (self.name,)


NORMAL = Distribution("normal", iid=True)
TRUNCATED_NORMAL = Distribution("truncated_normal", iid=True)
UNIFORM = Distribution("uniform", iid=True)
ORTHOGONAL = Distribution("orthogonal", is_orthogonal=True)
DELTA_ORTHOGONAL = Distribution("delta_orthogonal", is_orthogonal=True, is_delta=True)
CONSTANT = Distribution("constant", is_constant=True)

_DISTRIBUTIONS = {
    d.name: d for d in (NORMAL, TRUNCATED_NORMAL, UNIFORM, ORTHOGONAL, DELTA_ORTHOGONAL, CONSTANT)
}
#: Names of the i.i.d. distributions (those ``variance_scaling`` draws from).
DISTRIBUTIONS = tuple(n for n, d in _DISTRIBUTIONS.items() if d.iid)
#: Every distribution a scheme may declare (the last three are not i.i.d. draws).
ALL_DISTRIBUTIONS = tuple(_DISTRIBUTIONS)


def distribution_named(name: str | Distribution) -> Distribution:
    """The declared :class:`Distribution` of ``name`` (a record is returned as declared).

    Raises:
        ValueError: an unknown name (the message lists the allowed ones).
    """
    d = _DISTRIBUTIONS.get(name.name if isinstance(name, Distribution) else name)
    if d is None:
        raise ValueError(f"unknown distribution {name!r}; allowed: {ALL_DISTRIBUTIONS}")
    return d


# --------------------------------------------------------------------------------------
# Distribution constants, derived symbolically.
# --------------------------------------------------------------------------------------


#: Digits kept for the moments of an asymmetric truncation (evaluated with mpmath).
TRUNCATION_DIGITS = 30
#: Largest |bound| accepted for a truncation (in units of the pre-truncation std): beyond
#: it the mass of the interval is below float64's normal range, and no float sampler can
#: draw from it.
TRUNCATION_MAX_BOUND = 37.0
#: Narrowest truncation accepted: Var = m_2 - m_1^2 cancels about log10(1/width^2) digits.
TRUNCATION_MIN_WIDTH = 1e-6


def _check_bounds(lower: object, upper: object) -> tuple[float, float]:
    from varprop._src.errors import InputError

    out = []
    for nm, v in (("lower", lower), ("upper", upper)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"truncation {nm} must be a finite number, got {v!r}")
        if abs(v) > TRUNCATION_MAX_BOUND and not (
            (nm == "lower" and v < 0) or (nm == "upper" and v > 0)
        ):
            raise InputError(
                f"truncation {nm}={v!r} puts the interval in a tail of mass below 1e-300; "
                f"allowed: an interval that meets [-{TRUNCATION_MAX_BOUND:g}, "
                f"{TRUNCATION_MAX_BOUND:g}]",
                kind="numerics",
            )
        out.append(float(v))
    if not out[0] < out[1]:
        raise InputError(f"truncated_normal needs lower < upper, got lower={lower}, upper={upper}")
    if out[1] - out[0] < TRUNCATION_MIN_WIDTH:
        raise InputError(
            f"truncation [{lower!r}, {upper!r}] is narrower than {TRUNCATION_MIN_WIDTH:g}: its "
            "variance (width^2/12) would be lost to cancellation; allowed: upper - lower >= "
            f"{TRUNCATION_MIN_WIDTH:g}",
            kind="numerics",
        )
    return out[0], out[1]


def _truncated_symmetric(b: sp.Expr) -> dict[str, sp.Expr]:
    r"""Exact moments of N(0, 1) truncated to [-b, b] (no integration, no simplify)."""
    phi_b = sp.exp(-(b**2) / 2) / sp.sqrt(2 * sp.pi)
    mass = sp.erf(b / sp.sqrt(2))
    var = 1 - 2 * b * phi_b / mass
    m4 = 3 * var - 2 * b**3 * phi_b / mass
    return {"mean": sp.Integer(0), "variance": var, "kurtosis": m4 / var**2, "mass": mass}


def _truncated_numeric(lower: float, upper: float) -> dict[str, sp.Expr]:
    r"""Moments of N(0, 1) truncated to [lower, upper] with mpmath, as SymPy Floats.

    The raw moments follow from the same recurrence as the symmetric case, evaluated in
    the tail with ``erfc`` (so a far one-sided interval keeps its digits). Central moments
    are formed at 60 digits before rounding to :data:`TRUNCATION_DIGITS`.
    """
    with mpmath.workdps(60):
        a, b = mpmath.mpf(lower), mpmath.mpf(upper)

        def pdf(t):
            return mpmath.npdf(t) if mpmath.isfinite(t) else mpmath.mpf(0)

        # Mass Phi(b) - Phi(a), computed in whichever tail keeps the digits.
        if a >= 0:
            mass = (mpmath.erfc(a / mpmath.sqrt(2)) - mpmath.erfc(b / mpmath.sqrt(2))) / 2
        elif b <= 0:
            mass = (mpmath.erfc(-b / mpmath.sqrt(2)) - mpmath.erfc(-a / mpmath.sqrt(2))) / 2
        else:
            mass = (mpmath.erf(b / mpmath.sqrt(2)) - mpmath.erf(a / mpmath.sqrt(2))) / 2
        raw = [mpmath.mpf(1), (pdf(a) - pdf(b)) / mass]
        for k in range(2, 5):
            raw.append(
                (k - 1) * raw[k - 2] + (a ** (k - 1) * pdf(a) - b ** (k - 1) * pdf(b)) / mass
            )
        m = raw[1]
        var = raw[2] - m**2
        m4 = raw[4] - 4 * m * raw[3] + 6 * m**2 * raw[2] - 3 * m**4
        vals = {"mean": m, "variance": var, "kurtosis": m4 / var**2, "mass": mass}
        return {
            k: sp.Float(mpmath.nstr(v, TRUNCATION_DIGITS + 5), TRUNCATION_DIGITS)
            for k, v in vals.items()
        }


@functools.cache
def truncated_normal_moments(lower: float = -2.0, upper: float = 2.0) -> dict[str, sp.Expr]:
    r"""Mean, variance and kurtosis of a standard normal truncated to ``[lower, upper]``.

    With :math:`\varphi, \Phi` the standard normal density and distribution function,
    :math:`Z = \Phi(b) - \Phi(a)` and raw moments :math:`m_k = E[t^k]`, integration by
    parts gives the recurrence

    .. math::

        m_0 = 1, \quad m_1 = \frac{\varphi(a) - \varphi(b)}{Z}, \quad
        m_k = (k-1)\,m_{k-2} + \frac{a^{k-1}\varphi(a) - b^{k-1}\varphi(b)}{Z},

    and from it the mean :math:`m_1`, the variance :math:`m_2 - m_1^2` and the kurtosis
    :math:`E[(t - m_1)^4] / \mathrm{Var}^2`. A symmetric interval ``[-b, b]`` is kept exact
    in SymPy (mean 0, :math:`\mathrm{Var} = 1 - 2b\varphi(b)/Z`, :math:`m_4 = 3\,\mathrm{Var}
    - 2b^3\varphi(b)/Z`); any other interval is evaluated with mpmath and returned as
    30-digit SymPy Floats (an exact form there is a large expression in ``erf`` and ``exp``
    whose float evaluation cancels in the tails). Nothing is integrated or simplified, so
    every interval takes milliseconds. For ``[-2, 2]`` the standard deviation is the constant
    0.87962566103423978 that JAX and Keras divide by (``truncated_normal_std()``).

    Returns:
        A dict with SymPy expressions ``mean``, ``variance``, ``kurtosis`` (E[(z-mu)^4]/Var^2)
        and ``mass`` (the probability of the interval under N(0, 1)).

    Raises:
        InputError: bounds not finite, not ordered, or an interval entirely beyond
            :data:`TRUNCATION_MAX_BOUND` (kind ``numerics``).

    Example:
        >>> truncated_normal_moments()["variance"]
        -2*sqrt(2)*exp(-2)/(sqrt(pi)*erf(sqrt(2))) + 1
        >>> round(float(truncated_normal_moments(0.5, 1.7)["mean"]), 10)
        0.9774376644
    """
    lo, hi = _check_bounds(lower, upper)
    if lo == -hi and hi >= 0.1:  # narrower: 1 - 2 b phi(b) / Z cancels in float64
        return _truncated_symmetric(exact_number(hi))
    return _truncated_numeric(lo, hi)


@functools.cache
def truncated_normal_std(lower: float = -2.0, upper: float = 2.0) -> float:
    """Standard deviation of N(0, 1) truncated to ``[lower, upper]`` (0.8796... for +-2)."""
    return float(sp.sqrt(truncated_normal_moments(lower, upper)["variance"]).evalf(30))


def distribution_kurtosis(distribution: str | Distribution) -> sp.Expr:
    """Kurtosis E[w^4]/E[w^2]^2 of a zero-mean scheme's distribution (3 for normal, 9/5 uniform)."""
    d = _DISTRIBUTIONS.get(str(distribution))
    if d is NORMAL:
        return sp.Integer(3)
    if d is UNIFORM:
        u = sp.Symbol("u", real=True)
        m2 = sp.integrate(u**2, (u, -1, 1)) / 2
        m4 = sp.integrate(u**4, (u, -1, 1)) / 2
        return sp.nsimplify(m4 / m2**2)
    if d is TRUNCATED_NORMAL:
        return truncated_normal_moments()["kurtosis"]
    raise ValueError(
        f"kurtosis is defined for distributions {DISTRIBUTIONS}, got {str(distribution)!r}"
    )


# --------------------------------------------------------------------------------------
# Fans.
# --------------------------------------------------------------------------------------


def _axes(axis: AxisSpec, ndim: int, what: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    items = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in items:
        if not isinstance(a, int) or isinstance(a, bool):
            raise TypeError(f"{what} must be an int or a sequence of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{what}={a} is out of range for shape {shape} (ndim {ndim}); "
                f"allowed: {-ndim}..{ndim - 1}"
            )
        out.append(a % ndim)
    return tuple(out)


def check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of non-negative Python ints, or raise naming the bad entry."""
    if isinstance(shape, int):
        shape = (shape,)
    try:
        out = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    for d in out:
        if not isinstance(d, int) or isinstance(d, bool):
            try:
                d = int(d.__index__())  # numpy ints
            except (AttributeError, TypeError):
                raise TypeError(f"shape entries must be ints, got {d!r} in {shape!r}") from None
        if d < 0:
            raise ValueError(f"shape entries must be >= 0, got {d} in {shape!r}")
    return tuple(int(d) for d in out)


def compute_fans(
    shape: Sequence[int],
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
) -> tuple[int, int]:
    """Fan-in and fan-out of a weight of ``shape`` in Flax layout ``(..., in, out)``.

    Every axis that is neither ``in``, ``out`` nor ``batch`` is a receptive-field axis
    (a conv kernel's spatial dims) and multiplies both fans:

    .. math:: n_{in} = |in| \\cdot rf, \\quad n_{out} = |out| \\cdot rf,
              \\quad rf = \\prod_{a \\notin in \\cup out \\cup batch} shape_a

    Unlike JAX, the receptive field is a product of the remaining axes (an int), so an
    axis named twice raises instead of giving a fractional fan.

    Raises:
        ValueError: for shapes with fewer than 2 dims when the axes need them, axes out of
            range or overlapping, or a zero-size shape (a zero fan has no variance law).

    Example:
        >>> compute_fans((3, 3, 16, 32))
        (144, 288)
    """
    shape = check_shape(shape)
    ndim = len(shape)
    if ndim < 2 and (in_axis, out_axis) == (-2, -1):
        raise ValueError(
            f"fan-based initializers need a shape with at least 2 dims (..., in, out); "
            f"got shape {shape}. For a bias or a 1-D parameter use zeros, constant or normal, "
            "or pass in_axis/out_axis explicitly."
        )
    if ndim == 0:
        raise ValueError(f"fan-based initializers need at least 1 dim, got shape {shape}")
    ins = _axes(in_axis, ndim, "in_axis", shape)
    outs = _axes(out_axis, ndim, "out_axis", shape)
    batch = _axes(batch_axis, ndim, "batch_axis", shape)
    named = [*ins, *outs, *batch]
    if len(set(named)) != len(named) and not (ndim == 1 and set(ins) == set(outs)):
        raise ValueError(
            f"in_axis={in_axis}, out_axis={out_axis}, batch_axis={batch_axis} overlap for "
            f"shape {shape}; each axis may be named once"
        )
    if math.prod(shape) == 0:
        raise ValueError(
            f"zero-size shape {shape}: a fan of 0 has no variance law; allowed: all dims >= 1"
        )
    rf = math.prod(shape[a] for a in range(ndim) if a not in set(named))
    fan_in = math.prod(shape[a] for a in ins) * rf
    fan_out = math.prod(shape[a] for a in outs) * rf
    return fan_in, fan_out


# --------------------------------------------------------------------------------------
# Schemes.
# --------------------------------------------------------------------------------------

#: Half the smallest positive float32 (2^-150): anything smaller rounds to 0.
_FLOAT32_HALF_SUBNORMAL = 2.0**-150

_SHAPE_SYMBOLS = (S.fan_in, S.fan_out, S.n_rows, S.n_cols)


@dataclass(frozen=True, eq=False)
class Scheme:
    """The variance law of an initializer, as data.

    Attributes:
        name: the builder's name, e.g. ``"he_normal"``.
        variance_expr: SymPy ``Var(w)`` in the shape symbols (``n_in``, ``n_out`` or
            ``n_rows``, ``n_cols``) and the parameter symbols (``g``, ``L``, ``m``, ``sigma``).
        parameters: values of the parameter symbols, e.g. ``{g: sqrt(2)}``.
        distribution: the :class:`Distribution` drawn from: ``normal``,
            ``truncated_normal``, ``uniform`` (i.i.d. draws), ``orthogonal``,
            ``delta_orthogonal`` or ``constant`` (its name is accepted and converted).
        mean_expr: ``E[w]`` (non-zero only for ``constant``).
        uses_fans: whether the law depends on the shape through the fans.
        in_axis, out_axis, batch_axis: the layout the fans are read with.
        column_axis: for orthogonal schemes, the axis whose entries are the columns.
        truncation: for ``truncated_normal``, the bounds in units of the pre-truncation std.
        description: one paragraph, with the paper the scheme comes from.
        options: the builder's keyword arguments, for ``repr`` and reports.
    """

    name: str
    variance_expr: sp.Expr
    parameters: Mapping[sp.Symbol, sp.Expr]
    distribution: Distribution
    description: str
    mean_expr: sp.Expr = sp.S.Zero
    uses_fans: bool = True
    in_axis: AxisSpec = -2
    out_axis: AxisSpec = -1
    batch_axis: AxisSpec = ()
    column_axis: int = -1
    truncation: tuple[float, float] = (-2.0, 2.0)
    options: Mapping[str, object] = field(default_factory=dict)
    _variance_fn: Callable[..., float] = field(init=False, repr=False)
    _mean_fn: Callable[..., float] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "distribution", distribution_named(self.distribution))
        free = (self.law.free_symbols | self.mean_law.free_symbols) - set(_SHAPE_SYMBOLS)
        if free:
            raise ValueError(
                f"scheme {self.name!r} leaves parameters unset: {sorted(map(str, free))}"
            )
        # Lambdified once, here; the sampler calls these on Python ints at trace time.
        object.__setattr__(
            self, "_variance_fn", sp.lambdify(_SHAPE_SYMBOLS, self.law, modules="math")
        )
        object.__setattr__(
            self, "_mean_fn", sp.lambdify(_SHAPE_SYMBOLS, self.mean_law, modules="math")
        )

    # -- symbolic ---------------------------------------------------------------------
    @property
    def law(self) -> sp.Expr:
        """``Var(w)`` with the parameters substituted, e.g. ``2/n_in`` for He."""
        return sp.simplify(self.variance_expr.subs(dict(self.parameters)))

    @property
    def mean_law(self) -> sp.Expr:
        """``E[w]`` with the parameters substituted."""
        return sp.simplify(sp.sympify(self.mean_expr).subs(dict(self.parameters)))

    @property
    def second_moment_law(self) -> sp.Expr:
        """``E[w^2] = Var(w) + E[w]^2``: what the layer law multiplies by the fan."""
        return sp.simplify(self.law + self.mean_law**2)

    @property
    def kurtosis(self) -> sp.Expr | None:
        """Kurtosis of the entries' distribution, for sampling-test tolerances.

        ``None`` for ``constant`` (no spread) and for the orthogonal schemes, whose sum of
        squares is exact rather than random.
        """
        d = self.distribution
        if d.iid:
            if d is TRUNCATED_NORMAL and self.truncation != (-2.0, 2.0):
                return truncated_normal_moments(*self.truncation)["kurtosis"]
            return distribution_kurtosis(d)
        return None

    def degenerate_reason(self, shape: Sequence[int] | None = None) -> str | None:
        """Why this scheme's weights cannot break the symmetry between units, or ``None``.

        * ``"zero weights"``: every weight is 0 (``zeros``, ``constant(0)``), so every
          hidden unit outputs the same value and no gradient reaches the weights below.
        * ``"constant weights (every unit identical)"``: Var(w) = 0 with E[w] != 0 (``ones``,
          ``constant(c)``): the units of a layer receive the same input and the same
          gradient and stay identical under gradient descent.
        * ``"weights underflow to zero in float32 (std ...)"`` (only with a ``shape``): the
          standard deviation for that shape is below half the smallest float32 subnormal
          (7.0e-46), so a float32 draw is all zeros unless the mean is non-zero.

        Example:
            >>> from varprop import initializers
            >>> initializers.ones.scheme.degenerate_reason()
            'constant weights (every unit identical)'
            >>> initializers.he_normal().scheme.degenerate_reason((784, 256)) is None
            True
        """
        if self.distribution.is_constant:
            mean = self.mean_law
            return "zero weights" if mean == 0 else "constant weights (every unit identical)"
        if shape is None:
            return None
        std = self.std(shape)
        if std < _FLOAT32_HALF_SUBNORMAL and self.mean(shape) == 0:
            return f"weights underflow to zero in float32 (std {std:.3g} < 7.0e-46)"
        return None

    # -- numeric, for a shape ---------------------------------------------------------
    def fans(self, shape: Sequence[int]) -> tuple[int, int]:
        """``(fan_in, fan_out)`` of ``shape`` in this scheme's layout."""
        return compute_fans(shape, self.in_axis, self.out_axis, self.batch_axis)

    def shape_values(self, shape: Sequence[int]) -> tuple[int, int, int, int]:
        """Values of ``(n_in, n_out, n_rows, n_cols)`` for ``shape`` (1 where unused)."""
        shape = check_shape(shape)
        fan_in = fan_out = rows = cols = 1
        if self.distribution.is_orthogonal:
            rows, cols = orthogonal_matrix_shape(shape, self.column_axis, self.distribution)
            if self.distribution.is_delta:
                fan_in, fan_out = compute_fans(shape)
        elif self.uses_fans:
            fan_in, fan_out = self.fans(shape)
        return fan_in, fan_out, rows, cols

    def variance(self, shape: Sequence[int]) -> float:
        """Numeric ``Var(w)`` for ``shape`` (the value the sampler draws with).

        Raises:
            InputError: (kind ``numerics``) Var(w) beyond the largest float64 (1.8e308).
        """
        try:
            v = float(self._variance_fn(*self.shape_values(shape)))
        except OverflowError:
            v = math.inf
        if v == math.inf:
            from varprop._src.errors import InputError

            values = dict(zip(_SHAPE_SYMBOLS, self.shape_values(shape), strict=True))
            exact = sp.Float(self.law.subs(values), 4)
            raise InputError(
                f"scheme {self.name!r} gives Var(w) = {exact} for shape {tuple(shape)}, beyond "
                "float64; allowed: Var(w) <= 1.8e308 (a std up to 1.3e154)",
                kind="numerics",
            )
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"scheme {self.name!r} gives variance {v} for shape {tuple(shape)}")
        return v

    def std(self, shape: Sequence[int]) -> float:
        return math.sqrt(self.variance(shape))

    def _fan_values(self, fan_in: float, fan_out: float, what: str) -> tuple[float, ...]:
        if self.distribution.is_orthogonal:
            raise ValueError(
                f"{self.name} draws an orthogonal matrix: its {what} depends on the matrix's "
                "rows and columns (the kernel shape), not on fans; allowed: an i.i.d. or "
                "constant scheme, or call .variance(shape) / .mean(shape) with the kernel shape"
            )
        for nm, v in (("fan_in", fan_in), ("fan_out", fan_out)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{nm} must be a number, got {v!r}")
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"{nm} must be a finite number > 0, got {v!r}")
        if not self.uses_fans:
            return (1, 1, 1, 1)
        return (fan_in, fan_out, 1, 1)

    def variance_for_fans(self, fan_in: float, fan_out: float) -> float:
        r"""``Var(w)`` when the layer's true fans are given, not read from a kernel shape.

        The law :math:`\mathrm{Var}(w) = f(n_{in}, n_{out})` evaluated at the given fans,
        which may be fractional: a stride-2 3x3 conv with 64 output channels has true
        backward fan :math:`9 \cdot 64 / 4 = 144`, whatever its kernel layout says. A scheme
        that does not use fans (``normal``, ``constant``, ...) returns its constant.

        Raises:
            ValueError: an orthogonal or delta-orthogonal scheme (its variance is
                :math:`g^2 \min(r, c)/(r c)` in the matrix's rows and columns, a property
                of the shape, not of the fans), or a fan that is not a finite number > 0.

        Example:
            >>> from varprop import initializers
            >>> initializers.he_normal().scheme.variance_for_fans(288, 144.0) == 2 / 288
            True
            >>> initializers.normal(0.1).scheme.variance_for_fans(288, 144.0)
            0.01
        """
        v = float(self._variance_fn(*self._fan_values(fan_in, fan_out, "variance")))
        if not math.isfinite(v) or v < 0:
            raise ValueError(
                f"scheme {self.name!r} gives Var(w) = {v} for fans ({fan_in}, {fan_out})"
            )
        return v

    def mean_for_fans(self, fan_in: float, fan_out: float) -> float:
        r"""``E[w]`` when the layer's true fans are given (see :meth:`variance_for_fans`).

        Every scheme's mean is a constant today (0, a constant's value, a uniform
        interval's midpoint, an asymmetric truncation's :math:`\sigma E[z]`), but the law
        is evaluated at the fans as the variance is.

        Raises:
            ValueError: as :meth:`variance_for_fans`.

        Example:
            >>> from varprop import initializers
            >>> initializers.constant(0.5).scheme.mean_for_fans(288, 144.0)
            0.5
        """
        return float(self._mean_fn(*self._fan_values(fan_in, fan_out, "mean")))

    def mean(self, shape: Sequence[int] = ()) -> float:
        return float(self._mean_fn(*self.shape_values(shape) if shape else (1, 1, 1, 1)))

    def bound(self, shape: Sequence[int]) -> float | None:
        """Largest possible ``|w|`` for ``shape``, or ``None`` for an unbounded distribution.

        Uniform: ``|E[w]| + sqrt(3 Var)``. Truncated normal: the truncation point times the
        pre-truncation std ``sqrt(Var)/c``. Orthogonal: the gain. Constant: ``|c|``.
        """
        d = self.distribution
        if d is UNIFORM:
            return abs(self.mean(shape)) + math.sqrt(3.0 * self.variance(shape))
        if d is TRUNCATED_NORMAL:
            lo, hi = self.truncation
            return max(abs(lo), abs(hi)) * self.std(shape) / truncated_normal_std(lo, hi)
        if d.is_orthogonal:
            return float(self.parameters.get(S.gain, 1))
        if d.is_constant:
            return abs(self.mean(shape))
        return None

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"Scheme({self.name}({opts}): Var(w) = {self.law}, {self.distribution})"

    def summary(self) -> str:
        """A short text: the law, the distribution and the description."""
        return f"{self.name}: Var(w) = {self.law} ({self.distribution}). {self.description}"


def orthogonal_matrix_shape(
    shape: Sequence[int],
    column_axis: int = -1,
    distribution: str | Distribution = ORTHOGONAL,
) -> tuple[int, int]:
    """Rows and columns of the matrix an orthogonal scheme draws for ``shape``."""
    shape = check_shape(shape)
    if distribution_named(distribution).is_delta:
        if len(shape) not in (3, 4, 5):
            raise ValueError(
                f"delta_orthogonal needs a 3-D, 4-D or 5-D conv kernel (..., in, out); got {shape}"
            )
        if shape[-1] < shape[-2]:
            raise ValueError(
                f"delta_orthogonal needs out channels >= in channels; got shape {shape}"
            )
        if math.prod(shape) == 0:
            raise ValueError(f"zero-size shape {shape}: allowed: all dims >= 1")
        return shape[-2], shape[-1]
    if len(shape) < 2:
        raise ValueError(f"orthogonal needs a shape with at least 2 dims; got {shape}")
    if math.prod(shape) == 0:
        raise ValueError(f"zero-size shape {shape}: allowed: all dims >= 1")
    col = _axes(column_axis, len(shape), "column_axis", shape)[0]
    cols = shape[col]
    return math.prod(shape) // cols, cols


def fan_denominator(mode: str) -> sp.Expr:
    """The ``n`` of ``Var(w) = scale / n`` for each mode."""
    if mode == "fan_in":
        return S.fan_in
    if mode == "fan_out":
        return S.fan_out
    if mode == "fan_avg":
        return (S.fan_in + S.fan_out) / 2
    if mode == "fan_geo_avg":
        return sp.sqrt(S.fan_in * S.fan_out)
    raise ValueError(f"unknown mode {mode!r}; allowed: {MODES}")


def check_distribution(distribution: str) -> str:
    """``distribution`` if it names an i.i.d. distribution (see :data:`DISTRIBUTIONS`)."""
    d = _DISTRIBUTIONS.get(distribution) if isinstance(distribution, str) else None
    if d is None or not d.iid:
        raise ValueError(f"unknown distribution {distribution!r}; allowed: {DISTRIBUTIONS}")
    return distribution


def exact_number(v: float | int) -> sp.Expr:
    """A float as an exact SymPy number: a recognisable one (0.01 -> 1/100, 1.4142... ->
    sqrt(2)) when ``nsimplify`` finds it, otherwise the decimal typed (``nsimplify`` alone
    turns 1e-300 into 0)."""
    if isinstance(v, int):
        return sp.Integer(v)
    nice = sp.nsimplify(v, rational=False)
    exact = nice.is_number and nice.is_finite and not nice.has(sp.Float)
    if exact and float(nice) == v and (nice != 0 or v == 0):
        return nice
    return sp.Rational(repr(float(v)))


def check_positive(name: str, v: object) -> sp.Expr:
    """A positive finite number (int, float or SymPy), returned as an exact SymPy number."""
    if isinstance(v, bool) or not isinstance(v, (int, float, sp.Expr)):
        raise TypeError(f"{name} must be a positive number, got {v!r}")
    e = sp.sympify(v)
    if not e.is_number or not e.is_real or not math.isfinite(float(e)) or float(e) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return exact_number(v) if isinstance(v, float) else e

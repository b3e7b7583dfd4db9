"""JAX initializers whose variance law is data.

Every initializer is an :class:`Initializer`: a callable with the ``jax.nn.initializers``
signature ``init(key, shape, dtype=jnp.float32) -> Array`` that carries the
:class:`~varprop.laws.Scheme` it samples from. The sampler reads the variance from
``scheme.variance(shape)`` -- a SymPy expression lambdified when the scheme was built and
evaluated here on the static shape's Python ints -- so no SymPy runs at call time and the
law and the sampler share one expression.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from varprop._src.errors import InputError
from varprop._src.laws import catalog
from varprop._src.laws.catalog import GainSpec
from varprop._src.laws.schemes import (
    NORMAL,
    TRUNCATED_NORMAL,
    UNIFORM,
    AxisSpec,
    Scheme,
    check_shape,
    truncated_normal_std,
)

Array = jax.Array


def _check_key(key: Any) -> None:
    if isinstance(key, (jax.Array, np.ndarray)):
        dt = key.dtype
        if jnp.issubdtype(dt, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(
                    f"expected a single PRNG key, got a key array of shape {key.shape}"
                )
            return
        if dt == np.uint32 and key.ndim == 1 and key.shape[0] in (2, 4):
            return
        raise TypeError(
            f"key must be a PRNG key from jax.random.key(...) or jax.random.PRNGKey(...); "
            f"got an array of dtype {dt} and shape {key.shape}"
        )
    raise TypeError(
        "key must be a PRNG key from jax.random.key(...) or jax.random.PRNGKey(...); "
        f"got {type(key).__name__} {key!r}"
    )


#: Largest relative change of E[w^2] that rounding to a narrow dtype may cause (see
#: :func:`rounding_effect`); above it the initializer refuses the dtype.
ROUNDING_TOLERANCE = 1e-4


def rounding_effect(dtype: Any, second_moment: float) -> float:
    r"""Bound on the relative change of E[w^2] when float32 draws are rounded to ``dtype``.

    Round-to-nearest moves w by at most half an ulp. With m = ``finfo(dtype).nmant``
    explicit mantissa bits, the ulp of a normal number is at most :math:`2^{-m}|w|`, and
    below the smallest normal t (the subnormals) it is :math:`2^{-m} t`. For a continuous
    draw the error is close to uniform on :math:`\pm` ulp/2 and uncorrelated with w, so it
    adds ulp^2/12 to E[w^2] on average:

    .. math:: \frac{|\Delta E[w^2]|}{E[w^2]} \le \frac{2^{-2m}}{12}
              \left(1 + \frac{t^2}{E[w^2]}\right)

    bfloat16 (m = 7): 5.1e-6; float16 (m = 10): 7.9e-8 while E[w^2] >> t^2 = 3.7e-9;
    float8_e4m3fn (m = 3): 1.3e-3; float8_e5m2 (m = 2): 5.2e-3.

    Example:
        >>> import jax.numpy as jnp
        >>> f"{rounding_effect(jnp.bfloat16, 1.0):.2g}"
        '5.1e-06'
    """
    fi = jnp.finfo(dtype)
    base = 2.0 ** (-2 * int(fi.nmant)) / 12.0
    if second_moment <= 0:
        return math.inf
    return base * (1.0 + float(fi.tiny) ** 2 / second_moment)


def _check_rounding(scheme: Scheme, shape: tuple[int, ...], dt: np.dtype) -> None:
    """Refuse a dtype narrower than float32 whose rounding would move the law (see above)."""
    if jnp.finfo(dt).bits >= 32:
        return
    fi = jnp.finfo(dt)
    mean = scheme.mean(shape)
    if scheme.distribution.is_constant:
        if abs(mean) > float(fi.max):
            raise InputError(
                f"dtype {dt.name} cannot hold the constant {mean!r} (largest finite "
                f"{float(fi.max):.4g}); allowed: float32, float64 or a constant within range",
                kind="numerics",
            )
        return
    var = scheme.variance(shape)
    effect = rounding_effect(dt, var + mean**2)
    reach = abs(mean) + 10.0 * math.sqrt(var)
    if effect > ROUNDING_TOLERANCE or reach > float(fi.max):
        why = (
            f"values up to {reach:.3g} overflow its largest finite {float(fi.max):.4g}"
            if reach > float(fi.max)
            else f"rounding to {int(fi.nmant)} mantissa bits changes Var(w) = {var:.3g} by up "
            f"to {effect:.2g} (relative)"
        )
        raise InputError(
            f"dtype {dt.name} does not follow the law of {scheme.name} for shape {shape}: {why}; "
            f"allowed: float32, float64, and bfloat16/float16 when the rounding bound "
            f"2^(-2 nmant)/12 (1 + tiny^2/E[w^2]) is <= {ROUNDING_TOLERANCE:g} (draw in float32 "
            "and cast yourself to accept more)",
            kind="numerics",
        )


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(
            f"dtype must be a floating-point dtype (float16, bfloat16, float32, float64), got {dt}"
        )
    return dt


def _orthogonal_matrix(key: Array, rows: int, cols: int, dtype: np.dtype) -> Array:
    """A ``rows x cols`` matrix with orthonormal columns (rows >= cols) or rows (rows < cols).

    QR of a Gaussian matrix, with the signs of R's diagonal moved into Q so that the result
    is Haar-distributed (Mezzadri 2007). Computed in float32 or wider, then cast.
    """
    big, small = max(rows, cols), min(rows, cols)
    work = jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)
    a = jax.random.normal(key, (big, small), work)
    q, r = jnp.linalg.qr(a)
    d = jnp.diagonal(r)
    q = q * jnp.where(d < 0, -1.0, 1.0).astype(work)[None, :]
    if rows < cols:
        q = q.T
    return q


@dataclass(frozen=True, eq=False)
class Initializer:
    """An initializer ``init(key, shape, dtype=jnp.float32) -> Array`` with its law attached.

    Use it wherever JAX, Flax NNX or Linen take an initializer
    (``flax.nnx.Linear(..., kernel_init=varprop.initializers.he_normal())``). The law is
    ``init.scheme`` (also :func:`varprop.scheme_of`).

    Dtypes: float32 and float64 are drawn in that dtype. Narrower floats (bfloat16,
    float16) are drawn in float32 and rounded once to the target; the relative effect on
    E[w^2] is at most :func:`rounding_effect` (5.1e-6 for bfloat16, 7.9e-8 for float16 at
    weights well above its smallest normal 6.1e-5), and a dtype whose bound exceeds
    :data:`ROUNDING_TOLERANCE` = 1e-4 is refused with an ``InputError``: every float8 and
    smaller format (float8_e4m3fn's 3 mantissa bits give 1.3e-3), and float16 for weights so
    small that its subnormals dominate (std below about 1.7e-6). Constant schemes are
    rounded to the nearest value of the dtype (refused only if out of range).

    Raises (when called):
        TypeError: the key is not a PRNG key, or the dtype is not floating point.
        ValueError: the shape does not fit the scheme (fewer than 2 dims for a fan-based
            scheme, zero-size, axes out of range).
        InputError: a narrow dtype that would not follow the law (kind ``numerics``).
    """

    scheme: Scheme

    def __call__(
        self,
        key: Array,
        shape: Sequence[int],
        dtype: Any = jnp.float32,
        out_sharding: Any = None,
    ) -> Array:
        _check_key(key)
        dt = _check_dtype(dtype)
        shape = check_shape(shape)
        s = self.scheme
        _check_rounding(s, shape, dt)
        if jnp.finfo(dt).bits >= 32:
            return self._draw(key, shape, dt)
        # Narrow dtypes: draw in float32 and round once to the target (round to nearest
        # even; the effect on E[w^2] is bounded by rounding_effect). Drawing directly in
        # bfloat16 would coarsen the uniform bits the sampler transforms.
        return self._draw(key, shape, np.dtype(np.float32)).astype(dt)

    def _draw(self, key: Array, shape: tuple[int, ...], dt: np.dtype) -> Array:
        s = self.scheme
        d = s.distribution
        if d.is_constant:
            return jnp.full(shape, s.mean(shape), dt)
        if d.is_delta:  # an orthogonal (in, out) matrix at the kernel's spatial centre
            rows, cols = s.shape_values(shape)[2:]
            fan_in = s.shape_values(shape)[0]
            gain = math.sqrt(s.variance(shape) * cols * fan_in / rows)
            q = (gain * _orthogonal_matrix(key, rows, cols, dt)).astype(dt)
            centre = tuple((k - 1) // 2 for k in shape[:-2])
            return jnp.zeros(shape, dt).at[centre].set(q)
        if d.is_orthogonal:
            rows, cols = s.shape_values(shape)[2:]
            gain = math.sqrt(s.variance(shape) * rows * cols / min(rows, cols))
            q = _orthogonal_matrix(key, rows, cols, dt)
            col = s.column_axis % len(shape)
            moved = (*shape[:col], *shape[col + 1 :], shape[col])
            return jnp.moveaxis((gain * q).reshape(moved), -1, col).astype(dt)
        std = s.std(shape)
        if d is NORMAL:
            mean = s.mean(shape)
            return (mean + std * jax.random.normal(key, shape, dt)).astype(dt)
        if d is UNIFORM:  # on [mean - sqrt(3) std, mean + sqrt(3) std)
            bound = math.sqrt(3.0) * std
            mean = s.mean(shape)
            return jax.random.uniform(key, shape, dt, mean - bound, mean + bound)
        if d is TRUNCATED_NORMAL:
            lo, hi = s.truncation
            scale = std / truncated_normal_std(lo, hi)
            # `scale` is the std before truncation: the law's Var(w) divided by Var(z).
            return (scale * jax.random.truncated_normal(key, lo, hi, shape, dt)).astype(dt)
        raise AssertionError(f"unhandled distribution {d!r}")

    @property
    def law(self):
        """The SymPy ``Var(w)`` of the scheme (shortcut for ``init.scheme.law``)."""
        return self.scheme.law

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.scheme.options.items())
        return f"{self.scheme.name}({opts})"


@functools.lru_cache(maxsize=256)
def from_spec(spec: str) -> Initializer:
    """An initializer from a ``NAME[:key=value,...]`` string, e.g. ``"he_normal:mode=fan_out"``.

    Initializers are immutable, so one object serves every use of a spec (parsing builds
    SymPy laws: 6 ms a spec, which a 50-layer check would otherwise pay per layer).
    """
    return Initializer(catalog.scheme_from_spec(spec))


# -- the public builders -----------------------------------------------------------------
# One line each: the law lives in varprop._src.laws.catalog.

#: All weights 0 (an initializer itself, as ``jax.nn.initializers.zeros``).
zeros = Initializer(catalog.zeros())
#: All weights 1 (an initializer itself, as ``jax.nn.initializers.ones``).
ones = Initializer(catalog.ones())


def constant(value: float) -> Initializer:
    """All weights equal to ``value``: Var(w) = 0, E[w] = value (units stay identical)."""
    return Initializer(catalog.constant(value))


def normal(stddev: float = 1e-2) -> Initializer:
    r"""w ~ N(0, stddev^2), whatever the layer's width.

    .. math:: \mathrm{Var}(w) = \sigma^2

    ``normal(0.01)`` is the classic "small random" init (the signal shrinks by
    :math:`n\sigma^2` per layer); ``normal(1.0)`` the "standard normal" one (it grows by
    :math:`n` per layer and overflows float32 after a few dozen layers of width 512).

    Example:
        >>> import jax, varprop
        >>> w = varprop.initializers.normal(1.0)(jax.random.key(0), (512, 512))
    """
    return Initializer(catalog.normal(stddev))


def uniform(scale: float = 1e-2) -> Initializer:
    r"""w ~ U[-scale, scale): zero mean, Var(w) = scale^2 / 3.

    Unlike ``jax.nn.initializers.uniform(scale)``, which draws from U[0, scale) (mean
    scale/2, Var scale^2/12), this one is symmetric about zero, as the variance laws assume.
    """
    return Initializer(catalog.uniform(scale))


def truncated_normal(stddev: float = 1e-2, lower: float = -2.0, upper: float = 2.0) -> Initializer:
    r"""``stddev * z`` with z ~ N(0, 1) truncated to ``[lower, upper]``, as JAX does it.

    ``stddev`` is the std *before* truncation, so Var(w) = stddev^2 Var(z); for +-2 that is
    0.7737 stddev^2 (the factor is derived by SymPy, see ``scheme.law``). For a truncated
    draw with an exact target variance use ``variance_scaling(..., "truncated_normal")``.
    """
    return Initializer(catalog.truncated_normal(stddev, lower, upper))


def uniform_interval(lower: float = 0.0, upper: float = 1e-2) -> Initializer:
    r"""w ~ U[lower, upper): the uniform law with a mean.

    .. math:: E[w] = \frac{a + b}{2}, \qquad \mathrm{Var}(w) = \frac{(b - a)^2}{12}

    ``uniform_interval(0, s)`` is ``jax.nn.initializers.uniform(s)`` (U[0, s): mean s/2,
    Var s^2/12); :func:`uniform` is the symmetric U[-s, s).

    Example:
        >>> import jax, varprop
        >>> init = varprop.initializers.uniform_interval(0.0, 0.5)
        >>> w = init(jax.random.key(0), (512, 512))
        >>> round(float(w.mean()), 2), bool(w.min() >= 0.0), init.scheme.mean_law
        (0.25, True, 1/4)
    """
    return Initializer(catalog.uniform_interval(lower, upper))


def embed_normal() -> Initializer:
    r"""Flax's default embedding init: w ~ N(0, 1/d) for a ``(vocab, d)`` table.

    .. math:: \mathrm{Var}(w) = \frac{1}{n_{in}}, \qquad
              n_{in} = \frac{\prod \text{shape}}{\text{shape}_0} = d

    The same law as Flax's ``variance_scaling(1.0, "fan_in", "normal", out_axis=0)``
    (``nn.Embed``, ``nnx.Embed``), written in the layout ``in_axis=-1, out_axis=0``; each
    embedding vector has :math:`E\|w_v\|^2 = 1`.

    Example:
        >>> import jax, varprop
        >>> init = varprop.initializers.embed_normal()
        >>> w = init(jax.random.key(0), (1000, 64))
        >>> init.scheme.variance((1000, 64)) == 1 / 64, round(float(w.var() * 64), 1)
        (True, 1.0)
    """
    return Initializer(catalog.embed_normal())


def variance_scaling(
    scale: float,
    mode: str,
    distribution: str,
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
) -> Initializer:
    r"""The general builder: Var(w) = scale / n.

    .. math:: n = n_{in},\ n_{out},\ \tfrac{n_{in}+n_{out}}{2}\ \text{or}\
              \sqrt{n_{in} n_{out}}\quad(\text{mode} = \text{fan\_in, fan\_out, fan\_avg,
              fan\_geo\_avg})

    ``distribution`` is ``normal`` (untruncated), ``truncated_normal`` (cut at +-2 std and
    rescaled so that the variance is exactly scale/n; the rescaling constant is derived by
    SymPy) or ``uniform`` (on ``[-sqrt(3 scale/n), sqrt(3 scale/n))``). Fans are read in
    Flax layout ``(..., in, out)``; other axes are a conv's receptive field.

    Example:
        >>> import jax, varprop
        >>> init = varprop.initializers.variance_scaling(2.0, "fan_in", "uniform")
        >>> w = init(jax.random.key(0), (256, 128))
        >>> init.scheme.law
        2/n_in
    """
    return Initializer(
        catalog.variance_scaling(scale, mode, distribution, in_axis, out_axis, batch_axis)
    )


def glorot_normal(gain: GainSpec = 1.0, in_axis=-2, out_axis=-1, batch_axis=()) -> Initializer:
    r"""Xavier/Glorot normal: w ~ N(0, 2 g^2 / (n_in + n_out)). Glorot & Bengio, AISTATS 2010."""
    return Initializer(catalog.glorot("normal", gain, in_axis, out_axis, batch_axis))


def glorot_uniform(gain: GainSpec = 1.0, in_axis=-2, out_axis=-1, batch_axis=()) -> Initializer:
    r"""Xavier/Glorot uniform: w ~ U[-a, a), a = g sqrt(6 / (n_in + n_out)). Glorot, Bengio 2010."""
    return Initializer(catalog.glorot("uniform", gain, in_axis, out_axis, batch_axis))


def xavier_fan_in_normal(
    gain: GainSpec = 1.0, in_axis=-2, out_axis=-1, batch_axis=()
) -> Initializer:
    r"""The ``1/fan_in`` variant Caffe's ``xavier`` filler and many tutorials call Xavier: w ~ N(0, g^2 / n_in).

    It keeps the forward pass only (its law is LeCun's); Glorot's own scheme averages the fans.
    """
    return Initializer(catalog.xavier_fan_in("normal", gain, in_axis, out_axis, batch_axis))


def xavier_fan_in_uniform(
    gain: GainSpec = 1.0, in_axis=-2, out_axis=-1, batch_axis=()
) -> Initializer:
    r"""The ``1/fan_in`` Xavier variant, uniform: w ~ U[-a, a), a = g sqrt(3 / n_in)."""
    return Initializer(catalog.xavier_fan_in("uniform", gain, in_axis, out_axis, batch_axis))


def lecun_normal(in_axis=-2, out_axis=-1, batch_axis=()) -> Initializer:
    r"""LeCun normal: w ~ N(0, 1 / n_in) (untruncated; JAX's ``lecun_normal`` truncates)."""
    return Initializer(catalog.lecun("normal", in_axis, out_axis, batch_axis))


def lecun_uniform(in_axis=-2, out_axis=-1, batch_axis=()) -> Initializer:
    r"""LeCun uniform: w ~ U[-a, a), a = sqrt(3 / n_in)."""
    return Initializer(catalog.lecun("uniform", in_axis, out_axis, batch_axis))


def he_normal(
    mode: str = "fan_in", gain: GainSpec = "relu", in_axis=-2, out_axis=-1, batch_axis=()
) -> Initializer:
    r"""He/Kaiming normal: w ~ N(0, g^2 / n), n the fan of ``mode``.

    .. math:: \mathrm{Var}(w) = \frac{g^2}{n_{in}}, \qquad g = \frac{1}{\sqrt{E[\phi(z)^2]}},
              \ z \sim N(0, 1)

    ``gain`` is a number or a registered activation's name, whose gain is derived from its
    moments (``relu`` gives exactly sqrt(2)). ``mode="fan_in"`` preserves E[z^2] forward,
    ``mode="fan_out"`` preserves the gradient's second moment backward. The normal is
    untruncated, as in the paper and torch (JAX's ``he_normal`` truncates; same variance).

    Reference: He et al., "Delving Deep into Rectifiers", ICCV 2015.

    Example:
        >>> import jax, varprop
        >>> init = varprop.initializers.he_normal()
        >>> init.scheme.law
        2/n_in
        >>> w = init(jax.random.key(0), (784, 256))
    """
    return Initializer(catalog.he("normal", mode, gain, in_axis, out_axis, batch_axis))


def he_uniform(
    mode: str = "fan_in", gain: GainSpec = "relu", in_axis=-2, out_axis=-1, batch_axis=()
) -> Initializer:
    r"""He/Kaiming uniform: w ~ U[-a, a), a = g sqrt(3 / n). See :func:`he_normal`."""
    return Initializer(catalog.he("uniform", mode, gain, in_axis, out_axis, batch_axis))


def orthogonal(gain: float = 1.0, column_axis: int = -1) -> Initializer:
    r"""g times a Haar-random matrix with orthonormal rows or columns.

    The shape is flattened to ``(prod(other axes), shape[column_axis])``;
    ``||W||_F^2 = g^2 min(rows, cols)`` exactly. Saxe et al., ICLR 2014.
    """
    return Initializer(catalog.orthogonal(gain, column_axis))


def delta_orthogonal(gain: float = 1.0) -> Initializer:
    r"""Conv kernel: zero except the centre tap ``(k-1)//2``, an orthogonal ``in x out`` matrix.

    Needs a 3-D to 5-D kernel with out channels >= in channels. Xiao et al., ICML 2018.
    """
    return Initializer(catalog.delta_orthogonal(gain))


def fixup(depth: int, layers_per_branch: int = 2, gain: GainSpec = "relu") -> Initializer:
    r"""Fixup for the first m-1 layers of each of L residual branches.

    .. math:: \mathrm{Var}(w) = \frac{g^2 L^{-1/(m-1)}}{n_{in}}

    i.e. He init with its std scaled by :math:`L^{-1/(2m-2)}`. Initialize each branch's last
    layer (and the classifier) with :data:`zeros`. Zhang, Dauphin & Ma, ICLR 2019.
    """
    return Initializer(catalog.fixup(depth, layers_per_branch, gain))


xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform

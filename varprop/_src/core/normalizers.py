r"""Normalization as pure functions: batch, layer, group, instance and RMS normalization.

Every layer here computes, per group of elements that share statistics,

.. math::

    y = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,
    \qquad \mu = \frac{1}{N}\sum_i x_i,\quad \sigma^2 = \frac{1}{N}\sum_i (x_i - \mu)^2,

and the layers differ only in the axes μ and σ² are taken over (the *reduction axes*) and
the axes γ and β are indexed by (the *feature axes*): BatchNorm reduces over everything but
the feature axis (Ioffe & Szegedy 2015), LayerNorm over the features of one example (Ba et
al. 2016), GroupNorm over groups of channels and the spatial axes of one example (Wu & He
2018), InstanceNorm over the spatial axes of one example and channel (Ulyanov et al. 2016),
RMSNorm divides by the root mean square without centring (Zhang & Sennrich 2019).

The functions are plain JAX (no Flax): they take parameters and running statistics as
arrays and return new ones, so they can be jitted, vmapped, differentiated and used under
``shard_map``. :mod:`varprop._src.nn.norm_nnx` and :mod:`varprop._src.nn.norm_linen` wrap
them as Flax modules.

Numerical choices (each one deliberate):

1. **Statistics in float32 or wider.** The input is cast to
   ``promote(x.dtype, dtype, float32)`` before any reduction, so bfloat16/float16 inputs
   are reduced in float32 and float64 inputs stay float64 (as in Flax). Normalization
   itself is computed in the promotion of the input, statistics and parameter dtypes
   (at least float32) and cast once at the end.
2. **Output dtype** (as in Flax): ``dtype`` if given, otherwise the promotion of the dtypes
   of ``x``, ``scale`` and ``bias``. A bfloat16 input with the default float32 parameters
   therefore gives a float32 output; with bfloat16 parameters a bfloat16 output.
3. **Variance, ``algorithm="stable"`` (the default everywhere).** Two passes: the mean
   first, then the mean of the squared deviations from it (masked elements excluded from
   both). Its rounding error is relative to σ², whatever the size of the mean.
4. **Variance, ``algorithm="fast"``** (Flax's ``use_fast_variance=True``, its default):
   one pass, ``max(0, E[x²] - E[x]²)``. The subtraction cancels catastrophically when
   |μ| ≫ σ: E[x²] ≈ μ² is rounded to a float32 spacing of about μ²·2⁻²³, so the result is
   a multiple of that spacing; the clip at 0 (as in Flax) only hides the negative values
   rounding produces. Measured (CPU, float32, 1024 examples × 8 features, mean 1e4,
   std 1, float64 reference variances 0.946 … 1.150)::

       python -c "import jax; from varprop._src.core.normalizers import batch_stats; \
       x = 1e4 + jax.random.normal(jax.random.key(0), (1024, 8)); \
       print(batch_stats(x, 0, algorithm='fast').var); print(batch_stats(x, 0).var)"

   fast gives ``[16. 0. 8. 0. 16. 0. 0. 0.]`` (every value a multiple of 8, the float32
   spacing at 1e8: 8 or 16 where the truth is ≈ 1, else exactly 0; relative error up to
   15.3), stable gives the float64 variances to a relative error of 4e-7. Fast mode is never the silent
   default here; ask for it explicitly.
5. **Masks.** ``mask`` (boolean, broadcastable to ``x``) selects the elements that enter
   the statistics; the output is still computed for every element. Counts are per
   feature, so each feature may have its own number of valid elements. A feature with no
   valid element gets mean 0 and variance 0 (the count is clipped at 1 in the
   divisions) instead of 0/0 = NaN, its elements are normalized to 0 (output β, not
   x/√ε), and BatchNorm leaves its running statistics unchanged. A concrete mask that is
   all False raises ``InputError`` (under ``jit`` it cannot be inspected and the defined
   result applies).
8. **ε = 0.** Allowed. Where σ² + ε = 0 (a constant group, or an all-zero one for
   RMSNorm) the normalized value is defined as 0, so the output is β, instead of
   0·∞ = NaN; the gradient there is finite too (the square root is taken of a safe
   value). Negative, NaN or infinite ε raises ``InputError``.
6. **Across devices** (``axis_name``, inside ``shard_map`` or ``pmap``): exact global
   statistics, count-weighted. The per-device counts and sums are combined with one
   ``psum``; the stable path then sums the squared deviations *from the global mean* with
   a second ``psum``. This equals the statistics of the concatenated batch even when
   shards hold different numbers of valid elements — unlike averaging per-device means
   (``pmean`` of means, what Flax does, flax#2417), which is right only for equal counts.
   Counts are carried in the statistics dtype (exact up to 2²⁴ valid elements per feature
   in float32).
7. **Running statistics** (BatchNorm) are buffers: they are updated under
   ``lax.stop_gradient`` and kept in their own dtype (float32 in the modules).

References:
    Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
    Internal Covariate Shift", ICML 2015. Ba, Kiros & Hinton, "Layer Normalization", 2016.
    Wu & He, "Group Normalization", ECCV 2018. Ulyanov, Vedaldi & Lempitsky, "Instance
    Normalization: The Missing Ingredient for Fast Stylization", 2016. Zhang & Sennrich,
    "Root Mean Square Layer Normalization", NeurIPS 2019.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from varprop._src.core.norm_checks import (
    ALGORITHMS,
    RUNNING_VAR_MODES,
    Algorithm,
    Axes,
    RunningVarMode,
    canonical_axes,
    check_choice,
    check_epsilon,
    check_mask_not_empty,
    check_momentum,
)


class Moments(NamedTuple):
    """Statistics of ``x`` over its reduction axes (all three share one shape).

    Attributes:
        mean: the mean (zeros when ``use_mean=False``); shape ``x.shape`` without the
            reduction axes, statistics dtype (float32 or wider).
        var: the biased (1/N) variance, or the mean square E[x²] when ``use_mean=False``.
        count: the number of valid elements N behind each statistic (summed over
            ``axis_name``), in the statistics dtype.
    """

    mean: jax.Array
    var: jax.Array
    count: jax.Array


class BatchNormResult(NamedTuple):
    """What :func:`batch_norm` returns.

    Attributes:
        y: the normalized output, shape of ``x``.
        running_mean: the new running mean (unchanged in eval mode), shape and dtype of
            the ``running_mean`` passed in.
        running_var: the new running variance, likewise.
        count: int32 scalar, the number of training steps taken so far (the step counter
            ``t`` of the cumulative average; incremented in every training call).
    """

    y: jax.Array
    running_mean: jax.Array
    running_var: jax.Array
    count: jax.Array


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _float_dtype(*dtypes: Any) -> np.dtype:
    """The floating dtype the given dtypes promote to on JAX's standard lattice.

    Only a dtype is computed here, no arithmetic, so this is safe under
    ``jax_numpy_dtype_promotion="strict"``: all arrays are cast explicitly afterwards.
    """
    ds = [jnp.dtype(d) for d in dtypes if d is not None]
    with jax.numpy_dtype_promotion("standard"):
        out = jnp.result_type(*ds) if ds else jnp.dtype(jnp.float32)
        if jnp.issubdtype(out, jnp.complexfloating):
            raise ValueError(f"only real inputs are supported; got dtype {out}")
        if not jnp.issubdtype(out, jnp.floating):
            out = jnp.promote_types(out, jnp.float32)
    return np.dtype(out)


def _psum(arrays: tuple[jax.Array, ...], axis_name) -> tuple[jax.Array, ...]:
    """Sum each array over ``axis_name`` with a single collective (stacked)."""
    if axis_name is None:
        return arrays
    summed = lax.psum(jnp.stack(arrays), axis_name)
    return tuple(summed[i] for i in range(len(arrays)))


def _broadcast_mask(mask, shape: tuple[int, ...]) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(mask, dtype=bool), shape)


def _feature_param(
    name: str, p, x_shape: tuple[int, ...], feature_axes: tuple[int, ...]
) -> jax.Array | None:
    """Check a scale/bias against the feature axes of ``x``; reshape it to broadcast."""
    if p is None:
        return None
    p = jnp.asarray(p)
    feature_shape = tuple(x_shape[a] for a in feature_axes)
    size = math.prod(feature_shape)
    if p.shape != feature_shape and not (p.ndim == 1 and p.shape[0] == size):
        raise ValueError(
            f"{name} has shape {p.shape}, but the feature axes {feature_axes} of x "
            f"(shape {x_shape}) have shape {feature_shape}: {name} must have that shape "
            f"(or be flat with {size} entries)"
        )
    bshape = tuple(s if i in feature_axes else 1 for i, s in enumerate(x_shape))
    return p.reshape(bshape)


def _check_batch_size(
    x_shape: tuple[int, ...], reduction_axes: tuple[int, ...], axis_name, allow: bool
) -> None:
    if allow:
        return
    n = math.prod(x_shape[a] for a in reduction_axes)
    if n > 1:
        return
    if axis_name is not None:
        n *= lax.axis_size(axis_name)
    if n <= 1:
        raise ValueError(
            f"BatchNorm in training mode needs more than 1 value per feature to compute a "
            f"batch variance; got {n} (x.shape={x_shape}, reduction axes {reduction_axes}). "
            f"With one value the variance is 0 and the output is just the bias (beta). Use a "
            f"batch of at least 2, switch to eval mode (train=False / "
            f"use_running_average=True), or pass allow_single_example=True to accept it"
        )


# ---------------------------------------------------------------------------------------
# Statistics and normalization
# ---------------------------------------------------------------------------------------


def batch_stats(
    x: jax.Array,
    reduction_axes: Axes,
    *,
    mask: jax.Array | None = None,
    axis_name: str | None = None,
    algorithm: Algorithm = "stable",
    use_mean: bool = True,
    dtype=jnp.float32,
) -> Moments:
    r"""Mean, biased variance and count of ``x`` over ``reduction_axes``.

    .. math::

        N = \sum_i m_i,\quad \mu = \frac{1}{N}\sum_i m_i x_i,\quad
        \sigma^2 = \frac{1}{N}\sum_i m_i (x_i - \mu)^2 \ \ (\text{stable}),\quad
        \sigma^2 = \max\Big(0, \frac{1}{N}\sum_i m_i x_i^2 - \mu^2\Big) \ \ (\text{fast})

    with the sums also running over the devices of ``axis_name`` (count-weighted: exact
    for shards holding different numbers of valid elements). See the module docstring for
    what each numerical choice does.

    Args:
        x: input array (real).
        reduction_axes: the axes to reduce.
        mask: optional boolean array broadcastable to ``x``: the elements to include.
        axis_name: optional named axis (``shard_map``/``pmap``) to reduce over as well.
        algorithm: ``"stable"`` (two passes, the default) or ``"fast"`` (one pass,
            ``E[x²] − E[x]²`` clipped at 0; loses all precision when ``|μ| ≫ σ``).
        use_mean: if False, ``mean`` is 0 and ``var`` is the mean square E[x²] (RMSNorm).
        dtype: minimal precision of the statistics (promoted with ``x.dtype`` and float32).

    Returns:
        :class:`Moments` ``(mean, var, count)``, each of shape ``x.shape`` without the
        reduction axes.

    Example:
        >>> import jax.numpy as jnp
        >>> m = batch_stats(jnp.array([[1.0, 2.0], [3.0, 6.0]]), 0)
        >>> m.mean.tolist(), m.var.tolist(), m.count.tolist()
        ([2.0, 4.0], [1.0, 4.0], [2.0, 2.0])
    """
    check_choice("algorithm", algorithm, ALGORITHMS)
    x = jnp.asarray(x)
    axes = canonical_axes(x.ndim, reduction_axes)
    sdt = _float_dtype(x.dtype, dtype, jnp.float32)
    xs = x.astype(sdt)
    reduced_shape = tuple(s for i, s in enumerate(x.shape) if i not in axes)
    if mask is None:
        m = None
        count = jnp.full(reduced_shape, math.prod(x.shape[a] for a in axes), sdt)
    else:
        m = _broadcast_mask(mask, x.shape)
        count = jnp.sum(m, axis=axes, dtype=sdt)

    def local_sum(v: jax.Array) -> jax.Array:
        return jnp.sum(v, axis=axes, where=m)

    if not use_mean:
        count, s2 = _psum((count, local_sum(xs * xs)), axis_name)
        var = s2 / jnp.maximum(count, 1)
        return Moments(jnp.zeros_like(var), var, count)
    if algorithm == "fast":
        count, s1, s2 = _psum((count, local_sum(xs), local_sum(xs * xs)), axis_name)
        n = jnp.maximum(count, 1)
        mean = s1 / n
        # E[x²] − E[x]² can come out negative through rounding: clip (as Flax does).
        var = jnp.maximum(0.0, s2 / n - mean * mean)
        return Moments(mean, var, count)
    count, s1 = _psum((count, local_sum(xs)), axis_name)
    n = jnp.maximum(count, 1)
    mean = s1 / n
    dev = xs - jnp.expand_dims(mean, axes)
    (s2,) = _psum((local_sum(dev * dev),), axis_name)
    return Moments(mean, s2 / n, count)


def normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    epsilon: float,
    reduction_axes: Axes,
    feature_axes: Axes,
    dtype=None,
    count: jax.Array | None = None,
) -> jax.Array:
    r"""``y = (x − mean) · rsqrt(var + ε) · scale + bias``.

    Where ``var + ε == 0`` or ``count == 0`` (a group with no valid element) the factor
    rsqrt is replaced by 0, so those elements come out as ``bias`` (β) instead of NaN or
    x/√ε.

    Args:
        x: input array.
        mean, var: statistics of shape ``x.shape`` without ``reduction_axes`` (as
            :func:`batch_stats` returns them).
        scale, bias: optional parameters, of the shape of ``x`` on ``feature_axes`` (or
            flat with that many entries); ``ValueError`` otherwise.
        epsilon: added to the variance, ≥ 0.
        reduction_axes: the axes the statistics were reduced over.
        feature_axes: the axes ``scale`` and ``bias`` are indexed by.
        dtype: output dtype; default the promotion of ``x``, ``scale`` and ``bias``.
        count: optional number of valid elements behind each statistic (shape of
            ``mean``); groups with count 0 are output as ``bias``.

    Returns:
        The normalized array, shape of ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[1.0, 2.0], [3.0, 6.0]])
        >>> m = batch_stats(x, 0)
        >>> normalize(x, m.mean, m.var, epsilon=0.0, reduction_axes=0, feature_axes=1).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
    """
    check_epsilon(epsilon)
    x = jnp.asarray(x)
    mean, var = jnp.asarray(mean), jnp.asarray(var)
    raxes = canonical_axes(x.ndim, reduction_axes)
    faxes = canonical_axes(x.ndim, feature_axes)
    reduced_shape = tuple(s for i, s in enumerate(x.shape) if i not in raxes)
    for name, v in (("mean", mean), ("var", var)):
        if v.shape != reduced_shape:
            raise ValueError(
                f"{name} has shape {v.shape}, expected {reduced_shape} (x.shape={x.shape} "
                f"without the reduction axes {raxes})"
            )
    stats_shape = tuple(1 if i in raxes else s for i, s in enumerate(x.shape))
    scale = _feature_param("scale", scale, x.shape, faxes)
    bias = _feature_param("bias", bias, x.shape, faxes)
    pdts = [p.dtype for p in (scale, bias) if p is not None]
    out_dtype = dtype if dtype is not None else _float_dtype(x.dtype, *pdts)
    cdt = _float_dtype(x.dtype, mean.dtype, var.dtype, *pdts, jnp.float32)
    y = x.astype(cdt) - mean.astype(cdt).reshape(stats_shape)
    denom = var.astype(cdt).reshape(stats_shape) + epsilon
    ok = denom > 0
    if count is not None:
        ok = ok & (jnp.asarray(count).reshape(stats_shape) > 0)
    # rsqrt of a safe value, then 0 where undefined: finite values and finite gradients.
    mul = jnp.where(ok, lax.rsqrt(jnp.where(ok, denom, 1)), 0)
    if scale is not None:
        mul = mul * scale.astype(cdt)
    y = y * mul
    if bias is not None:
        y = y + bias.astype(cdt)
    return y.astype(out_dtype)


# ---------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------


def momentum_from_torch(momentum_torch: float | None) -> float:
    r"""Flax/varprop momentum (keep ratio) from a PyTorch BatchNorm momentum.

    PyTorch weights the *new batch*: ``running ← (1 − m_t)·running + m_t·batch``; Flax and
    varprop weight the *old value*: ``running ← m·running + (1 − m)·batch``. Hence
    ``m = 1 − m_t`` (PyTorch's default 0.1 is Flax's 0.9, not 0.99).

    Args:
        momentum_torch: PyTorch's momentum, in [0, 1]. ``None`` (PyTorch's cumulative
            average) has no EMA equivalent: use ``cumulative=True`` instead.

    Returns:
        ``1 − momentum_torch``.

    Example:
        >>> momentum_from_torch(0.1)
        0.9
    """
    if momentum_torch is None:
        raise ValueError(
            "PyTorch's momentum=None is a cumulative average (running <- running + "
            "(batch - running)/t), not an exponential one; use cumulative=True instead of "
            "converting a momentum"
        )
    check_momentum(momentum_torch)
    return 1.0 - float(momentum_torch)


def momentum_to_torch(momentum: float) -> float:
    """PyTorch BatchNorm momentum from a Flax/varprop one: ``1 − momentum``.

    Example:
        >>> momentum_to_torch(0.9)
        0.09999999999999998
    """
    check_momentum(momentum)
    return 1.0 - float(momentum)


def batch_norm(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    running_mean: jax.Array,
    running_var: jax.Array,
    *,
    train: bool,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis: Axes = -1,
    mask: jax.Array | None = None,
    axis_name: str | None = None,
    algorithm: Algorithm = "stable",
    running_var_mode: RunningVarMode = "biased",
    cumulative: bool = False,
    count: jax.Array | None = None,
    allow_single_example: bool = False,
    dtype=None,
) -> BatchNormResult:
    r"""Batch normalization (Ioffe & Szegedy 2015), training or evaluation mode.

    Training (``train=True``): per feature, μ_B and the biased σ²_B over all axes but
    ``axis`` (and over the devices of ``axis_name``), ``y = γ(x − μ_B)/√(σ²_B + ε) + β``, and
    the running statistics move towards the batch's:

    .. math::

        r_\mu \leftarrow m\,r_\mu + (1-m)\,\mu_B, \qquad
        r_{\sigma^2} \leftarrow m\,r_{\sigma^2} + (1-m)\,s^2_B,

    with ``m = momentum`` (Flax's keep ratio; :func:`momentum_from_torch` converts
    PyTorch's) and ``s²_B = σ²_B`` (``running_var_mode="biased"``, Flax) or
    ``σ²_B·N/(N−1)`` (``"unbiased"``, PyTorch; N = valid examples per feature, the
    factor is 1 when N ≤ 1). With ``cumulative=True`` (PyTorch's ``momentum=None``) the
    running statistics are the plain average of all batches so far,
    ``r ← r + (s_B − r)/t`` at step ``t = count + 1`` (``momentum`` is then unused).

    Evaluation (``train=False``): ``y = γ(x − r_μ)/√(r_σ² + ε) + β``, statistics unchanged.
    With the initial running statistics (0, 1) this is ``γx/√(1+ε) + β``: the layer does
    not normalize at all (see :mod:`varprop._src.laws.normalization`).

    A batch with one value per feature (N = 1) in training raises ``ValueError`` unless
    ``allow_single_example=True`` (then σ²_B = 0 and ``y = β``, Flax's silent behaviour).
    The check uses static shapes (and the size of ``axis_name``). With a ``mask`` the
    check still applies to the unmasked shape, but the number of *valid* values is only
    known at run time and is not checked: a feature with one valid value gets σ²_B = 0
    (its valid output is β; the unbiased factor is 1), and a feature with none keeps its
    running statistics unchanged.

    Args:
        x: input, any rank.
        scale, bias: γ and β of the feature shape (or ``None`` for 1 and 0).
        running_mean, running_var: running statistics, with as many entries as features
            (any shape of that size; returned in the same shape and dtype).
        train: use (and update) batch statistics if True, running ones if False.
        momentum: keep ratio of the exponential moving average, in [0, 1].
        epsilon: added to the variance, ≥ 0.
        axis: the feature axis (or axes).
        mask: optional boolean array broadcastable to ``x``: elements entering the
            statistics.
        axis_name: optional named axis over which to share statistics exactly.
        algorithm: ``"stable"`` (default) or ``"fast"``; see :func:`batch_stats`.
        running_var_mode: ``"biased"`` (Flax) or ``"unbiased"`` (PyTorch).
        cumulative: cumulative average instead of the exponential one.
        count: int32 scalar, training steps taken so far (``None`` means 0).
        allow_single_example: accept N = 1 in training.
        dtype: output dtype (default: promotion of ``x``, ``scale``, ``bias``).

    Returns:
        :class:`BatchNormResult` ``(y, running_mean, running_var, count)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (16, 8))
        >>> ones, zeros = jnp.ones(8), jnp.zeros(8)
        >>> out = batch_norm(x, ones, zeros, zeros, ones, train=True, momentum=0.9)
        >>> bool(jnp.allclose(out.y.mean(0), 0.0, atol=1e-5))
        True
        >>> bool(jnp.allclose(out.running_mean, 0.1 * x.mean(0)))
        True
    """
    check_momentum(momentum)
    check_epsilon(epsilon)
    check_choice("algorithm", algorithm, ALGORITHMS)
    check_choice("running_var_mode", running_var_mode, RUNNING_VAR_MODES)
    x = jnp.asarray(x)
    running_mean, running_var = jnp.asarray(running_mean), jnp.asarray(running_var)
    faxes = canonical_axes(x.ndim, axis)
    raxes = tuple(i for i in range(x.ndim) if i not in faxes)
    feature_shape = tuple(x.shape[a] for a in faxes)
    nfeat = math.prod(feature_shape)
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        if r.size != nfeat:
            raise ValueError(
                f"{name} has shape {r.shape} ({r.size} entries), but x (shape {x.shape}) "
                f"has {nfeat} features on axis {axis}"
            )
    step = jnp.zeros((), jnp.int32) if count is None else jnp.asarray(count, jnp.int32)
    if not train:
        y = normalize(
            x,
            running_mean.reshape(feature_shape),
            running_var.reshape(feature_shape),
            scale,
            bias,
            epsilon=epsilon,
            reduction_axes=raxes,
            feature_axes=faxes,
            dtype=dtype,
        )
        return BatchNormResult(y, running_mean, running_var, step)

    _check_batch_size(x.shape, raxes, axis_name, allow_single_example)
    if axis_name is None:
        check_mask_not_empty(mask)
    stats = batch_stats(x, raxes, mask=mask, axis_name=axis_name, algorithm=algorithm)
    sdt = stats.mean.dtype
    batch_var = stats.var
    if running_var_mode == "unbiased":
        n = stats.count
        batch_var = batch_var * jnp.where(n > 1, n / jnp.maximum(n - 1, 1), 1.0)
    r_mean = running_mean.reshape(feature_shape).astype(sdt)
    r_var = running_var.reshape(feature_shape).astype(sdt)
    new_step = step + 1
    if cumulative:
        w = 1.0 / new_step.astype(sdt)
        new_mean = r_mean + (stats.mean - r_mean) * w
        new_var = r_var + (batch_var - r_var) * w
    else:
        new_mean = momentum * r_mean + (1.0 - momentum) * stats.mean
        new_var = momentum * r_var + (1.0 - momentum) * batch_var
    if mask is not None:
        seen = stats.count > 0
        new_mean = jnp.where(seen, new_mean, r_mean)
        new_var = jnp.where(seen, new_var, r_var)
    new_mean = lax.stop_gradient(new_mean).astype(running_mean.dtype).reshape(running_mean.shape)
    new_var = lax.stop_gradient(new_var).astype(running_var.dtype).reshape(running_var.shape)
    y = normalize(
        x,
        stats.mean,
        stats.var,
        scale,
        bias,
        epsilon=epsilon,
        reduction_axes=raxes,
        feature_axes=faxes,
        dtype=dtype,
        count=None if mask is None else stats.count,
    )
    return BatchNormResult(y, new_mean, new_var, new_step)

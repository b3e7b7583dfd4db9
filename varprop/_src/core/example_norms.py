"""Normalizations whose statistics are per example: layer, RMS, group and instance
normalization (Ba et al. 2016; Zhang & Sennrich 2019; Wu & He 2018; Ulyanov et al. 2016).

They share :func:`~varprop._src.core.normalizers.batch_stats` and
:func:`~varprop._src.core.normalizers.normalize` with batch normalization, and the numerical
choices documented in :mod:`varprop._src.core.normalizers` (statistics in float32 or wider,
the stable two-pass variance, masks, epsilon = 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from varprop._src.core.norm_checks import (
    Algorithm,
    Axes,
    canonical_axes,
    check_epsilon,
    check_mask_not_empty,
    check_num_groups,
)
from varprop._src.core.normalizers import (
    _broadcast_mask,
    batch_stats,
    normalize,
)

# ---------------------------------------------------------------------------------------
# Per-example normalizations
# ---------------------------------------------------------------------------------------


def _stats_dtype(dtype) -> object:
    return jnp.float32 if dtype is None else dtype


def layer_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    epsilon: float = 1e-6,
    reduction_axes: Axes = -1,
    feature_axes: Axes = -1,
    mask: jax.Array | None = None,
    axis_name: str | None = None,
    algorithm: Algorithm = "stable",
    dtype=None,
) -> jax.Array:
    r"""Layer normalization (Ba, Kiros & Hinton 2016).

    Each example is normalized over ``reduction_axes`` (default: the last axis) with its
    own mean and biased variance, then scaled and shifted per feature:
    ``y = γ(x − μ)/√(σ² + ε) + β``. No running statistics; train and eval agree.

    Example:
        >>> import jax.numpy as jnp
        >>> y = layer_norm(jnp.array([[1.0, 2.0, 3.0, 4.0]]), epsilon=0.0)
        >>> [round(v, 4) for v in y[0].tolist()]
        [-1.3416, -0.4472, 0.4472, 1.3416]
    """
    check_epsilon(epsilon)
    if axis_name is None:
        check_mask_not_empty(mask)
    x = jnp.asarray(x)
    m = batch_stats(
        x,
        reduction_axes,
        mask=mask,
        axis_name=axis_name,
        algorithm=algorithm,
        dtype=_stats_dtype(dtype),
    )
    return normalize(
        x,
        m.mean,
        m.var,
        scale,
        bias,
        epsilon=epsilon,
        reduction_axes=reduction_axes,
        feature_axes=feature_axes,
        dtype=dtype,
        count=None if mask is None else m.count,
    )


def rms_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    *,
    epsilon: float = 1e-6,
    reduction_axes: Axes = -1,
    feature_axes: Axes = -1,
    mask: jax.Array | None = None,
    axis_name: str | None = None,
    dtype=None,
) -> jax.Array:
    r"""Root-mean-square normalization (Zhang & Sennrich 2019).

    ``y = γ·x/√(E[x²] + ε)``, E over ``reduction_axes`` of each example: no centring, no
    bias. The mean square is a single pass with no cancellation, so there is no
    fast/stable choice.

    Example:
        >>> import jax.numpy as jnp
        >>> y = rms_norm(jnp.array([[3.0, 4.0]]), epsilon=0.0)  # rms = sqrt(12.5)
        >>> [round(v, 5) for v in y[0].tolist()]
        [0.84853, 1.13137]
    """
    check_epsilon(epsilon)
    if axis_name is None:
        check_mask_not_empty(mask)
    x = jnp.asarray(x)
    m = batch_stats(
        x, reduction_axes, mask=mask, axis_name=axis_name, use_mean=False, dtype=_stats_dtype(dtype)
    )
    return normalize(
        x,
        m.mean,
        m.var,
        scale,
        None,
        epsilon=epsilon,
        reduction_axes=reduction_axes,
        feature_axes=feature_axes,
        dtype=dtype,
        count=None if mask is None else m.count,
    )


def group_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    num_groups: int,
    epsilon: float = 1e-6,
    reduction_axes: Axes | None = None,
    mask: jax.Array | None = None,
    axis_name: str | None = None,
    algorithm: Algorithm = "stable",
    dtype=None,
) -> jax.Array:
    r"""Group normalization (Wu & He 2018).

    The C channels (last axis) are split into ``num_groups`` groups of ``C/num_groups``
    consecutive channels; each example is normalized with the mean and biased variance of
    each group over the group's channels and the other ``reduction_axes`` (default: all
    axes but the first, the batch axis), then scaled and shifted per channel.
    ``num_groups=1`` is LayerNorm over all non-batch axes; ``num_groups=C`` is InstanceNorm.

    Args:
        num_groups: a positive divisor of ``x.shape[-1]`` (``ValueError`` otherwise).
        reduction_axes: must include the last axis.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[0.0, 2.0, 10.0, 30.0]])
        >>> group_norm(x, num_groups=2, epsilon=0.0).tolist()
        [[-1.0, 1.0, -1.0, 1.0]]
    """
    check_epsilon(epsilon)
    x = jnp.asarray(x)
    channels = x.shape[-1]
    check_num_groups(num_groups, channels)
    if reduction_axes is None:
        raxes = (*range(1, x.ndim - 1), x.ndim - 1)
    else:
        raxes = canonical_axes(x.ndim, reduction_axes)
    if raxes[-1] != x.ndim - 1:
        raise ValueError(
            f"GroupNorm reduction_axes must include the last axis (the channels); got "
            f"{reduction_axes}"
        )
    group_size = channels // num_groups
    gshape = (*x.shape[:-1], num_groups, group_size)
    if axis_name is None:
        check_mask_not_empty(mask)
    gmask = None if mask is None else _broadcast_mask(mask, x.shape).reshape(gshape)
    m = batch_stats(
        x.reshape(gshape),
        (*raxes[:-1], x.ndim),
        mask=gmask,
        axis_name=axis_name,
        algorithm=algorithm,
        dtype=_stats_dtype(dtype),
    )
    mean = jnp.repeat(m.mean, group_size, axis=-1)
    var = jnp.repeat(m.var, group_size, axis=-1)
    return normalize(
        x,
        mean,
        var,
        scale,
        bias,
        epsilon=epsilon,
        reduction_axes=raxes[:-1],
        feature_axes=-1,
        dtype=dtype,
        count=None if mask is None else jnp.repeat(m.count, group_size, axis=-1),
    )


def instance_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    epsilon: float = 1e-6,
    feature_axes: Axes = -1,
    mask: jax.Array | None = None,
    axis_name: str | None = None,
    algorithm: Algorithm = "stable",
    dtype=None,
) -> jax.Array:
    r"""Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016).

    Each example (axis 0) and each channel (``feature_axes``) is normalized over all
    remaining axes (the spatial ones): ``y = γ(x − μ)/√(σ² + ε) + β``.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[[1.0, 10.0], [3.0, 30.0]]])  # (batch, space, channel)
        >>> instance_norm(x, epsilon=0.0).tolist()
        [[[-1.0, -1.0], [1.0, 1.0]]]
    """
    check_epsilon(epsilon)
    x = jnp.asarray(x)
    faxes = canonical_axes(x.ndim, feature_axes)
    if 0 in faxes:
        raise ValueError(
            f"InstanceNorm feature_axes cannot include axis 0 (the batch axis); got {feature_axes}"
        )
    raxes = tuple(i for i in range(1, x.ndim) if i not in faxes)
    # Layer normalization over the spatial axes of each (example, channel).
    return layer_norm(
        x,
        scale,
        bias,
        epsilon=epsilon,
        reduction_axes=raxes,
        feature_axes=faxes,
        mask=mask,
        axis_name=axis_name,
        algorithm=algorithm,
        dtype=dtype,
    )

r"""Normalization layers as Flax Linen modules: thin wrappers over the pure functions.

``BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm`` and ``RMSNorm`` are
``nn.Module`` dataclasses with the fields and call signatures of ``flax.linen``'s layers:
parameters ``scale``/``bias`` in ``params``, BatchNorm's running statistics ``mean``/``var``
in the ``batch_stats`` collection (not updated while ``self.is_initializing()``, so
``init`` may be called with any batch, even of size one), ``use_running_average`` as a
field or a call argument. The mathematics is in :mod:`varprop._src.core.normalizers`,
whose docstring records every numerical choice. Differences from ``flax.linen`` (on
purpose): two-pass variance unless ``algorithm="fast"``; exact count-weighted statistics
across devices with ``axis_name`` (no ``axis_index_groups``); BatchNorm's PyTorch options
(``running_var_mode``, ``cumulative`` with a ``count`` entry in ``batch_stats``, only then;
batch-of-one error); ``ValueError`` for bad configuration, raised when the module is
constructed (epsilon, momentum, group options) or first called (feature sizes, groups);
no ``force_float32_reductions`` (statistics are always at least float32).

Example:
    >>> import jax, jax.numpy as jnp
    >>> bn = BatchNorm(momentum=0.9)
    >>> x = 5.0 + 3.0 * jax.random.normal(jax.random.key(0), (16, 8))
    >>> variables = bn.init(jax.random.key(1), x, use_running_average=False)
    >>> y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> bool(jnp.allclose(updates["batch_stats"]["mean"], 0.1 * x.mean(0)))
    True
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn.initializers import Initializer, ones, zeros

from varprop._src.core import example_norms as E
from varprop._src.core import norm_checks as C
from varprop._src.core import normalizers as N

__all__ = ["BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm"]


def _param(mdl: nn.Module, name: str, init: Initializer, shape: tuple[int, ...], dtype: Any):
    """``mdl.param`` with a ``ValueError`` naming both shapes when the input's feature
    shape differs from the stored parameter's."""
    if mdl.has_variable("params", name):
        stored = getattr(mdl.get_variable("params", name), "shape", None)
        if stored is not None and tuple(stored) != tuple(shape):
            raise ValueError(
                f"{type(mdl).__name__}: parameter {name!r} has shape {tuple(stored)}, but the "
                f"input's feature axes have shape {tuple(shape)}: the layer was initialized "
                f"for a different number of features"
            )
    return mdl.param(name, init, shape, dtype)


def _feature_shape(x: jax.Array, axes: C.Axes) -> tuple[int, ...]:
    return tuple(x.shape[a] for a in C.canonical_axes(x.ndim, axes))


def _affine(mdl: Any, shape: tuple[int, ...]) -> tuple[jax.Array | None, jax.Array | None]:
    """The layer's ``scale`` and ``bias`` parameters of ``shape`` (None when switched off;
    a layer without a ``use_bias`` field, RMSNorm, has no bias)."""
    scale = _param(mdl, "scale", mdl.scale_init, shape, mdl.param_dtype) if mdl.use_scale else None
    bias = (
        _param(mdl, "bias", mdl.bias_init, shape, mdl.param_dtype)
        if getattr(mdl, "use_bias", False)
        else None
    )
    return scale, bias


class BatchNorm(nn.Module):
    r"""Batch normalization (Ioffe & Szegedy 2015) as a Linen module.

    Training (``use_running_average=False``): normalize with the batch mean and biased
    variance of each feature and, unless initializing, update ``batch_stats`` (apply with
    ``mutable=["batch_stats"]``): ``r ← m·r + (1 − m)·s_B``. Evaluation: normalize with the
    running statistics. See :func:`varprop._src.core.normalizers.batch_norm`.

    Attributes:
        use_running_average: eval mode if True (may be given at call time instead).
        axis: the feature axis (-1 for NHWC, 1 for NCHW).
        momentum: keep ratio in [0, 1] (Flax convention; ``momentum_from_torch(0.1)`` =
            0.9 for PyTorch's default).
        epsilon: added to the variance, ≥ 0.
        dtype: output dtype (default: promotion of input, scale and bias).
        param_dtype: dtype of scale and bias.
        use_bias, use_scale, bias_init, scale_init: β and γ.
        axis_name: named axis (``shard_map``/``pmap``) for exact cross-device statistics.
        algorithm: ``"stable"`` (default) or ``"fast"`` variance.
        running_var_mode: ``"biased"`` (Flax) or ``"unbiased"`` (PyTorch).
        cumulative: cumulative average (PyTorch ``momentum=None``); adds
            ``batch_stats/count``.
        allow_single_example: accept one value per feature in training.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[0.0, 1.0], [2.0, 5.0]])
        >>> bn = BatchNorm(use_running_average=False, cumulative=True, epsilon=0.0)
        >>> v = bn.init(jax.random.key(0), x)
        >>> y, upd = bn.apply(v, x, mutable=["batch_stats"])
        >>> y.tolist(), upd["batch_stats"]["mean"].tolist(), int(upd["batch_stats"]["count"])
        ([[-1.0, -1.0], [1.0, 1.0]], [1.0, 3.0], 1)
    """

    use_running_average: bool | None = None
    axis: int | tuple[int, ...] = -1
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = zeros
    scale_init: Initializer = ones
    axis_name: str | None = None
    algorithm: C.Algorithm = "stable"
    running_var_mode: C.RunningVarMode = "biased"
    cumulative: bool = False
    allow_single_example: bool = False

    def __post_init__(self) -> None:
        C.check_config(
            epsilon=self.epsilon,
            algorithm=self.algorithm,
            momentum=self.momentum,
            running_var_mode=self.running_var_mode,
        )
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        use_running_average: bool | None = None,
        *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Normalize ``x`` (and, in training and not initializing, update ``batch_stats``).

        Args:
            x: input.
            use_running_average: overrides (or replaces) the field for this call.
            mask: optional boolean array broadcastable to ``x``: elements that enter the
                batch statistics.
        """
        ura = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        x = jnp.asarray(x)
        feature_shape = _feature_shape(x, self.axis)
        ra_mean = self.variable(
            "batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), feature_shape
        )
        ra_var = self.variable(
            "batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), feature_shape
        )
        if tuple(ra_mean.value.shape) != feature_shape:
            raise ValueError(
                f"BatchNorm: batch_stats have shape {tuple(ra_mean.value.shape)}, but x (shape "
                f"{x.shape}) has feature shape {feature_shape} on axis {self.axis}: the layer "
                f"was initialized for a different number of features"
            )
        count = (
            self.variable("batch_stats", "count", lambda: jnp.zeros((), jnp.int32))
            if self.cumulative
            else None
        )
        scale, bias = _affine(self, feature_shape)
        initializing = self.is_initializing()
        out = N.batch_norm(
            x,
            scale,
            bias,
            ra_mean.value,
            ra_var.value,
            train=not ura,
            momentum=self.momentum,
            epsilon=self.epsilon,
            axis=self.axis,
            mask=mask,
            # While initializing, the named axis need not exist and any batch is accepted.
            axis_name=None if initializing else self.axis_name,
            algorithm=self.algorithm,
            running_var_mode=self.running_var_mode,
            cumulative=self.cumulative,
            count=None if count is None else count.value,
            allow_single_example=self.allow_single_example or initializing,
            dtype=self.dtype,
        )
        if not ura and not initializing:
            ra_mean.value = out.running_mean
            ra_var.value = out.running_var
            if count is not None:
                count.value = out.count
        return out.y


class LayerNorm(nn.Module):
    r"""Layer normalization (Ba, Kiros & Hinton 2016) as a Linen module.

    ``y = γ(x − μ)/√(σ² + ε) + β``, μ and σ² over ``reduction_axes`` of each example.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.array([[1.0, 2.0, 3.0, 4.0]])
        >>> ln = LayerNorm()
        >>> y = ln.apply(ln.init(jax.random.key(0), x), x)
        >>> round(float(y.mean()), 6), round(float(y.var()), 4)
        (0.0, 1.0)
    """

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = zeros
    scale_init: Initializer = ones
    reduction_axes: C.Axes = -1
    feature_axes: C.Axes = -1
    axis_name: str | None = None
    algorithm: C.Algorithm = "stable"

    def __post_init__(self) -> None:
        C.check_config(epsilon=self.epsilon, algorithm=self.algorithm)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x)
        fshape = _feature_shape(x, self.feature_axes)
        scale, bias = _affine(self, fshape)
        return E.layer_norm(
            x,
            scale,
            bias,
            epsilon=self.epsilon,
            reduction_axes=self.reduction_axes,
            feature_axes=self.feature_axes,
            mask=mask,
            axis_name=self.axis_name,
            algorithm=self.algorithm,
            dtype=self.dtype,
        )


class RMSNorm(nn.Module):
    r"""Root-mean-square normalization (Zhang & Sennrich 2019) as a Linen module.

    ``y = γ·x/√(E[x²] + ε)``, E over ``reduction_axes`` of each example; no bias.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.array([[3.0, 4.0]])
        >>> rms = RMSNorm()
        >>> y = rms.apply(rms.init(jax.random.key(0), x), x)
        >>> round(float(jnp.mean(y**2)), 5)
        1.0
    """

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_scale: bool = True
    scale_init: Initializer = ones
    reduction_axes: C.Axes = -1
    feature_axes: C.Axes = -1
    axis_name: str | None = None

    def __post_init__(self) -> None:
        C.check_config(epsilon=self.epsilon)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x)
        fshape = _feature_shape(x, self.feature_axes)
        scale, _ = _affine(self, fshape)
        return E.rms_norm(
            x,
            scale,
            epsilon=self.epsilon,
            reduction_axes=self.reduction_axes,
            feature_axes=self.feature_axes,
            mask=mask,
            axis_name=self.axis_name,
            dtype=self.dtype,
        )


class GroupNorm(nn.Module):
    r"""Group normalization (Wu & He 2018) as a Linen module.

    The channels (last axis) are split into ``num_groups`` groups (or groups of
    ``group_size`` channels: give exactly one, ``num_groups=None`` to use ``group_size``);
    each example is normalized per group over the group's channels and the other
    ``reduction_axes`` (default: all but the batch axis 0).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.array([[0.0, 2.0, 10.0, 30.0]])
        >>> gn = GroupNorm(num_groups=2, epsilon=0.0)
        >>> gn.apply(gn.init(jax.random.key(0), x), x).tolist()
        [[-1.0, 1.0, -1.0, 1.0]]
    """

    num_groups: int | None = 32
    group_size: int | None = None
    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = zeros
    scale_init: Initializer = ones
    reduction_axes: C.Axes | None = None
    axis_name: str | None = None
    algorithm: C.Algorithm = "stable"

    def __post_init__(self) -> None:
        C.check_config(epsilon=self.epsilon, algorithm=self.algorithm)
        C.check_group_options(self.num_groups, self.group_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x)
        channels = x.shape[-1]
        num_groups = C.resolve_num_groups(channels, self.num_groups, self.group_size)
        scale, bias = _affine(self, (channels,))
        return E.group_norm(
            x,
            scale,
            bias,
            num_groups=num_groups,
            epsilon=self.epsilon,
            reduction_axes=self.reduction_axes,
            mask=mask,
            axis_name=self.axis_name,
            algorithm=self.algorithm,
            dtype=self.dtype,
        )


class InstanceNorm(nn.Module):
    r"""Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016) as a Linen module.

    Each example (axis 0) and channel (``feature_axes``) is normalized over the remaining
    (spatial) axes.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.array([[[1.0, 10.0], [3.0, 30.0]]])
        >>> inorm = InstanceNorm(epsilon=0.0)
        >>> inorm.apply(inorm.init(jax.random.key(0), x), x).tolist()
        [[[-1.0, -1.0], [1.0, 1.0]]]
    """

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = zeros
    scale_init: Initializer = ones
    feature_axes: C.Axes = -1
    axis_name: str | None = None
    algorithm: C.Algorithm = "stable"

    def __post_init__(self) -> None:
        C.check_config(epsilon=self.epsilon, algorithm=self.algorithm)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x)
        fshape = _feature_shape(x, self.feature_axes)
        scale, bias = _affine(self, fshape)
        return E.instance_norm(
            x,
            scale,
            bias,
            epsilon=self.epsilon,
            feature_axes=self.feature_axes,
            mask=mask,
            axis_name=self.axis_name,
            algorithm=self.algorithm,
            dtype=self.dtype,
        )

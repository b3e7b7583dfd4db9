r"""Normalization layers as Flax NNX modules: thin wrappers over the pure functions.

``BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm`` and ``RMSNorm`` keep the NNX
conventions of ``flax.nnx`` (constructor ``Layer(num_features, *, ..., rngs)``, ``nnx.Param``
scale and bias, ``nnx.BatchStat`` running statistics ``mean`` and ``var``, BatchNorm's
``use_running_average`` toggled by ``model.train()`` / ``model.eval()`` or ``nnx.view``)
and compute with :mod:`varprop._src.core.normalizers`, whose docstring records every
numerical choice. Differences from ``flax.nnx`` (on purpose):

- the variance is two-pass (``algorithm="stable"``) unless ``algorithm="fast"`` is asked
  for (Flax's default ``use_fast_variance=True`` is the one-pass formula);
- ``axis_name`` gives exact count-weighted statistics across devices (Flax averages
  per-device means, flax#2417); ``axis_index_groups`` is not supported;
- BatchNorm adds PyTorch's options: ``running_var_mode="unbiased"``, ``cumulative=True``
  (with a ``count`` BatchStat, only then), and a batch-of-one error;
- bad configuration raises ``ValueError`` at construction (epsilon < 0, momentum outside
  [0, 1], groups not dividing the features) and at call (feature-size mismatch);
- with an explicit ``dtype``, the statistics are computed from the input as given (at
  least float32) and only the output is cast; ``flax.nnx`` first casts the input and
  parameters to ``dtype``. With ``dtype=None`` (default) both agree.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> bn = BatchNorm(8, momentum=0.9, rngs=nnx.Rngs(0))
    >>> x = 5.0 + 3.0 * jax.random.normal(jax.random.key(0), (16, 8))
    >>> y = bn(x)                        # training mode: batch statistics
    >>> bool(jnp.allclose(y.std(0), 1.0, atol=1e-3))
    True
    >>> bn.eval()                        # running statistics from now on
    >>> bn.use_running_average
    True
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.nn.initializers import Initializer, ones, zeros

from varprop._src.core import example_norms as E
from varprop._src.core import norm_checks as C
from varprop._src.core import normalizers as N

__all__ = ["BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm"]


def _check_num_features(num_features: object) -> int:
    if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
        raise ValueError(f"num_features must be a positive int; got {num_features!r}")
    return num_features


def _check_features(layer: str, num_features: int, x: jax.Array, axes: C.Axes) -> tuple[int, ...]:
    faxes = C.canonical_axes(x.ndim, axes)
    got = math.prod(x.shape[a] for a in faxes)
    if got != num_features:
        raise ValueError(
            f"{layer} was built with num_features={num_features}, but x (shape {x.shape}) has "
            f"{got} features on its feature axes {faxes}"
        )
    return faxes


def _make_param(init: Initializer, rngs: nnx.Rngs, n: int, dtype: Any, use: bool):
    if not use:
        return nnx.data(None)
    return nnx.Param(init(rngs.params(), (n,), dtype))


def _value(p) -> jax.Array | None:
    return None if p is None else p[...]


class _Norm(nnx.Module):
    """What every layer here shares: validated options, the learnable scale and bias."""

    def _setup(
        self,
        num_features: int,
        *,
        epsilon: float,
        dtype: Any,
        param_dtype: Any,
        axis_name: str | None,
        rngs: nnx.Rngs,
        scale: tuple[Initializer, bool],
        bias: tuple[Initializer, bool] | None,
        algorithm: C.Algorithm | None = None,
        momentum: float | None = None,
        running_var_mode: C.RunningVarMode | None = None,
    ) -> None:
        """Validate and store the common options; create ``scale`` (and ``bias``, unless
        the layer has none) as ``nnx.Param`` of shape ``(num_features,)``."""
        _check_num_features(num_features)
        C.check_config(
            epsilon=epsilon,
            algorithm=algorithm,
            momentum=momentum,
            running_var_mode=running_var_mode,
        )
        self.scale = _make_param(scale[0], rngs, num_features, param_dtype, scale[1])
        if bias is not None:
            self.bias = _make_param(bias[0], rngs, num_features, param_dtype, bias[1])
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.axis_name = axis_name
        if algorithm is not None:
            self.algorithm: C.Algorithm = algorithm


class BatchNorm(_Norm):
    r"""Batch normalization (Ioffe & Szegedy 2015) as an NNX module.

    Training (``use_running_average=False``): per feature, normalize with the batch mean
    μ_B and biased variance σ²_B, ``y = γ(x − μ_B)/√(σ²_B + ε) + β``, and update the running
    statistics ``r ← m·r + (1 − m)·s_B`` (``s_B = σ²_B``, or ``σ²_B·N/(N−1)`` with
    ``running_var_mode="unbiased"``; or the cumulative average with ``cumulative=True``).
    Evaluation: normalize with the running statistics. See
    :func:`varprop._src.core.normalizers.batch_norm` for the details.

    Args:
        num_features: number of features (the size of ``axis``).
        use_running_average: eval mode if True; ``model.train()`` sets it to False and
            ``model.eval()`` to True; may be overridden per call.
        axis: the feature axis (e.g. -1 for NHWC, 1 for NCHW).
        momentum: keep ratio of the running average, in [0, 1] (Flax convention; PyTorch's
            0.1 is 0.9 here, see ``momentum_from_torch``).
        epsilon: added to the variance, ≥ 0.
        dtype: output dtype (default: promotion of input, running statistics and params).
        param_dtype: dtype of scale and bias.
        use_bias, use_scale: learn β, γ.
        bias_init, scale_init: their initializers (zeros, ones).
        axis_name: named axis (``shard_map``/``pmap``) over which to share statistics exactly.
        algorithm: ``"stable"`` (two-pass variance, default) or ``"fast"``.
        running_var_mode: ``"biased"`` (Flax) or ``"unbiased"`` (PyTorch).
        cumulative: cumulative average of all batches (PyTorch ``momentum=None``); adds a
            ``count`` BatchStat (the step counter).
        allow_single_example: accept one value per feature in training (output = β).
        rngs: random streams for the initializers.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from varprop._src.core.normalizers import momentum_from_torch
        >>> bn = BatchNorm(3, momentum=momentum_from_torch(0.1), running_var_mode="unbiased",
        ...                rngs=nnx.Rngs(0))
        >>> _ = bn(jnp.array([[0.0, 1.0, 2.0], [2.0, 3.0, 6.0]]))
        >>> bn.var[...].tolist()  # 0.9 * 1 + 0.1 * unbiased batch variance
        [1.100000023841858, 1.100000023841858, 1.7000000476837158]
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int | tuple[int, ...] = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = zeros,
        scale_init: Initializer = ones,
        axis_name: str | None = None,
        algorithm: C.Algorithm = "stable",
        running_var_mode: C.RunningVarMode = "biased",
        cumulative: bool = False,
        allow_single_example: bool = False,
        rngs: nnx.Rngs,
    ):
        self._setup(
            num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            axis_name=axis_name,
            rngs=rngs,
            scale=(scale_init, use_scale),
            bias=(bias_init, use_bias),
            algorithm=algorithm,
            momentum=momentum,
            running_var_mode=running_var_mode,
        )
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.count = nnx.BatchStat(jnp.zeros((), jnp.int32)) if cumulative else nnx.data(None)
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.running_var_mode: C.RunningVarMode = running_var_mode
        self.cumulative = cumulative
        self.allow_single_example = allow_single_example

    def __call__(
        self,
        x: jax.Array,
        use_running_average: bool | None = None,
        *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Normalize ``x``; in training mode also update the running statistics in place.

        Args:
            x: input; ``x.shape[axis]`` must equal ``num_features``.
            use_running_average: overrides the attribute for this call.
            mask: optional boolean array broadcastable to ``x``: elements that enter the
                batch statistics.
        """
        ura = use_running_average if use_running_average is not None else self.use_running_average
        if ura is None:
            raise ValueError(
                "BatchNorm needs use_running_average (True: eval, running statistics; "
                "False: train, batch statistics). Set it in one of these ways:\n"
                "  1. BatchNorm(..., use_running_average=True/False)\n"
                "  2. bn(x, use_running_average=True/False)\n"
                "  3. model.train() / model.eval()\n"
                "  4. nnx.view(model, use_running_average=True/False)"
            )
        x = jnp.asarray(x)
        _check_features("BatchNorm", self.num_features, x, self.axis)
        scale, bias = _value(self.scale), _value(self.bias)
        mean, var = self.mean[...], self.var[...]
        dtype = self.dtype
        if dtype is None:
            # As flax.nnx: the running statistics (float32) take part in the promotion.
            dtype = N._float_dtype(
                x.dtype, mean.dtype, var.dtype, *(p.dtype for p in (scale, bias) if p is not None)
            )
        out = N.batch_norm(
            x,
            scale,
            bias,
            mean,
            var,
            train=not ura,
            momentum=self.momentum,
            epsilon=self.epsilon,
            axis=self.axis,
            mask=mask,
            axis_name=self.axis_name,
            algorithm=self.algorithm,
            running_var_mode=self.running_var_mode,
            cumulative=self.cumulative,
            count=None if self.count is None else self.count[...],
            allow_single_example=self.allow_single_example,
            dtype=dtype,
        )
        if not ura:
            self.mean[...] = out.running_mean
            self.var[...] = out.running_var
            if self.count is not None:
                self.count[...] = out.count
        return out.y

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Hook for ``nnx.view(model, use_running_average=...)``."""
        if use_running_average is not None:
            self.use_running_average = use_running_average


class LayerNorm(_Norm):
    r"""Layer normalization (Ba, Kiros & Hinton 2016) as an NNX module.

    ``y = γ(x − μ)/√(σ² + ε) + β`` with μ, σ² over ``reduction_axes`` of each example.

    Args:
        num_features: number of features (product of the sizes of ``feature_axes``).
        epsilon: added to the variance, ≥ 0 (default 1e-6, as Flax).
        reduction_axes, feature_axes: statistics axes and parameter axes (default -1).
        axis_name, algorithm, dtype, param_dtype, use_bias, use_scale, bias_init,
        scale_init, rngs: as for :class:`BatchNorm`.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> y = LayerNorm(4, rngs=nnx.Rngs(0))(jnp.array([[1.0, 2.0, 3.0, 4.0]]))
        >>> round(float(y.mean()), 6), round(float(y.var()), 4)
        (0.0, 1.0)
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = zeros,
        scale_init: Initializer = ones,
        reduction_axes: C.Axes = -1,
        feature_axes: C.Axes = -1,
        axis_name: str | None = None,
        algorithm: C.Algorithm = "stable",
        rngs: nnx.Rngs,
    ):
        self._setup(
            num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            axis_name=axis_name,
            rngs=rngs,
            scale=(scale_init, use_scale),
            bias=(bias_init, use_bias),
            algorithm=algorithm,
        )
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x)
        _check_features("LayerNorm", self.num_features, x, self.feature_axes)
        return E.layer_norm(
            x,
            _value(self.scale),
            _value(self.bias),
            epsilon=self.epsilon,
            reduction_axes=self.reduction_axes,
            feature_axes=self.feature_axes,
            mask=mask,
            axis_name=self.axis_name,
            algorithm=self.algorithm,
            dtype=self.dtype,
        )


class RMSNorm(_Norm):
    r"""Root-mean-square normalization (Zhang & Sennrich 2019) as an NNX module.

    ``y = γ·x/√(E[x²] + ε)``, E over ``reduction_axes`` of each example; no bias.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> y = RMSNorm(2, rngs=nnx.Rngs(0))(jnp.array([[3.0, 4.0]]))
        >>> round(float(jnp.mean(y**2)), 5)
        1.0
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_scale: bool = True,
        scale_init: Initializer = ones,
        reduction_axes: C.Axes = -1,
        feature_axes: C.Axes = -1,
        axis_name: str | None = None,
        rngs: nnx.Rngs,
    ):
        self._setup(
            num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            axis_name=axis_name,
            rngs=rngs,
            scale=(scale_init, use_scale),
            bias=None,
        )
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x)
        _check_features("RMSNorm", self.num_features, x, self.feature_axes)
        return E.rms_norm(
            x,
            _value(self.scale),
            epsilon=self.epsilon,
            reduction_axes=self.reduction_axes,
            feature_axes=self.feature_axes,
            mask=mask,
            axis_name=self.axis_name,
            dtype=self.dtype,
        )


class GroupNorm(_Norm):
    r"""Group normalization (Wu & He 2018) as an NNX module.

    The channels (last axis) are split into ``num_groups`` groups (or groups of
    ``group_size`` channels; give exactly one of the two); each example is normalized per
    group over the group's channels and the other ``reduction_axes`` (default: all but
    the batch axis 0).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> gn = GroupNorm(4, num_groups=2, epsilon=0.0, rngs=nnx.Rngs(0))
        >>> gn(jnp.array([[0.0, 2.0, 10.0, 30.0]])).tolist()
        [[-1.0, 1.0, -1.0, 1.0]]
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = zeros,
        scale_init: Initializer = ones,
        reduction_axes: C.Axes | None = None,
        axis_name: str | None = None,
        algorithm: C.Algorithm = "stable",
        rngs: nnx.Rngs,
    ):
        self._setup(
            num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            axis_name=axis_name,
            rngs=rngs,
            scale=(scale_init, use_scale),
            bias=(bias_init, use_bias),
            algorithm=algorithm,
        )
        self.num_groups = C.resolve_num_groups(num_features, num_groups, group_size)
        self.group_size = num_features // self.num_groups
        self.reduction_axes = reduction_axes

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x)
        _check_features("GroupNorm", self.num_features, x, -1)
        return E.group_norm(
            x,
            _value(self.scale),
            _value(self.bias),
            num_groups=self.num_groups,
            epsilon=self.epsilon,
            reduction_axes=self.reduction_axes,
            mask=mask,
            axis_name=self.axis_name,
            algorithm=self.algorithm,
            dtype=self.dtype,
        )


class InstanceNorm(_Norm):
    r"""Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016) as an NNX module.

    Each example (axis 0) and channel (``feature_axes``) is normalized over the remaining
    (spatial) axes.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> inorm = InstanceNorm(2, epsilon=0.0, rngs=nnx.Rngs(0))
        >>> inorm(jnp.array([[[1.0, 10.0], [3.0, 30.0]]])).tolist()
        [[[-1.0, -1.0], [1.0, 1.0]]]
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = zeros,
        scale_init: Initializer = ones,
        feature_axes: C.Axes = -1,
        axis_name: str | None = None,
        algorithm: C.Algorithm = "stable",
        rngs: nnx.Rngs,
    ):
        self._setup(
            num_features,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            axis_name=axis_name,
            rngs=rngs,
            scale=(scale_init, use_scale),
            bias=(bias_init, use_bias),
            algorithm=algorithm,
        )
        self.feature_axes = feature_axes

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x)
        _check_features("InstanceNorm", self.num_features, x, self.feature_axes)
        return E.instance_norm(
            x,
            _value(self.scale),
            _value(self.bias),
            epsilon=self.epsilon,
            feature_axes=self.feature_axes,
            mask=mask,
            axis_name=self.axis_name,
            algorithm=self.algorithm,
            dtype=self.dtype,
        )

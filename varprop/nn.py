"""Flax modules and their pure-function cores.

- MLPs built from varprop initializers (:class:`MLP` for NNX, :class:`LinenMLP`), and
  :class:`Probe` points (NNX; :class:`LinenProbe`) with :func:`probe_statistics`
  (:func:`linen_probe_statistics`). The MLPs have an optional normalization slot
  (``norm="batchnorm"`` or ``"layernorm"``) before every hidden activation.
- Normalization: pure functions (:func:`batch_norm`, :func:`layer_norm`, ...) and thin
  NNX modules (:class:`BatchNorm`, ...) and Linen modules (``varprop.nn.linen.BatchNorm``,
  ...) over them.

Names are imported on first use (PEP 562): ``import varprop.nn`` does not load Flax;
``varprop.nn.MLP`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from varprop._src.lazy import lazy_attributes

#: Public name -> (module, attribute); attribute None: the name is that module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "batch_norm": ("varprop._src.core.normalizers", "batch_norm"),
    "batch_stats": ("varprop._src.core.normalizers", "batch_stats"),
    "BatchNorm": ("varprop._src.nn.norm_nnx", "BatchNorm"),
    "BatchNormResult": ("varprop._src.core.normalizers", "BatchNormResult"),
    "group_norm": ("varprop._src.core.example_norms", "group_norm"),
    "GroupNorm": ("varprop._src.nn.norm_nnx", "GroupNorm"),
    "instance_norm": ("varprop._src.core.example_norms", "instance_norm"),
    "InstanceNorm": ("varprop._src.nn.norm_nnx", "InstanceNorm"),
    "jax_activation": ("varprop._src.core.network", "jax_activation"),
    "layer_norm": ("varprop._src.core.example_norms", "layer_norm"),
    "LayerNorm": ("varprop._src.nn.norm_nnx", "LayerNorm"),
    "linen": ("varprop._src.nn.norm_linen", None),
    "linen_probe_statistics": ("varprop._src.nn.mlp", "linen_probe_statistics"),
    "LinenMLP": ("varprop._src.nn.mlp", "LinenMLP"),
    "LinenProbe": ("varprop._src.nn.mlp", "LinenProbe"),
    "MLP": ("varprop._src.nn.mlp", "MLP"),
    "Moments": ("varprop._src.core.normalizers", "Moments"),
    "momentum_from_torch": ("varprop._src.core.normalizers", "momentum_from_torch"),
    "momentum_to_torch": ("varprop._src.core.normalizers", "momentum_to_torch"),
    "normalize": ("varprop._src.core.normalizers", "normalize"),
    "Probe": ("varprop._src.nn.mlp", "Probe"),
    "probe_statistics": ("varprop._src.nn.mlp", "probe_statistics"),
    "rms_norm": ("varprop._src.core.example_norms", "rms_norm"),
    "RMSNorm": ("varprop._src.nn.norm_nnx", "RMSNorm"),
}

__all__ = [
    "MLP",
    "BatchNorm",
    "BatchNormResult",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "LinenMLP",
    "LinenProbe",
    "Moments",
    "Probe",
    "RMSNorm",
    "batch_norm",
    "batch_stats",
    "group_norm",
    "instance_norm",
    "jax_activation",
    "layer_norm",
    "linen",
    "linen_probe_statistics",
    "momentum_from_torch",
    "momentum_to_torch",
    "normalize",
    "probe_statistics",
    "rms_norm",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)


if TYPE_CHECKING:  # what pyright and IDEs see; nothing is imported at run time
    from varprop._src.core.example_norms import group_norm, instance_norm, layer_norm, rms_norm
    from varprop._src.core.network import jax_activation
    from varprop._src.core.normalizers import (
        BatchNormResult,
        Moments,
        batch_norm,
        batch_stats,
        momentum_from_torch,
        momentum_to_torch,
        normalize,
    )
    from varprop._src.nn import norm_linen as linen
    from varprop._src.nn.mlp import (
        MLP,
        LinenMLP,
        LinenProbe,
        Probe,
        linen_probe_statistics,
        probe_statistics,
    )
    from varprop._src.nn.norm_nnx import (
        BatchNorm,
        GroupNorm,
        InstanceNorm,
        LayerNorm,
        RMSNorm,
    )

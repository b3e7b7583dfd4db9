"""Flax modules and their pure-function cores.

- MLPs built from varprop initializers (:class:`MLP` for NNX, :class:`LinenMLP`), and
  :class:`Probe` points (NNX; :class:`LinenProbe`) with :func:`probe_statistics`
  (:func:`linen_probe_statistics`). The MLPs have an optional normalization slot
  (``norm="batchnorm"`` or ``"layernorm"``) before every hidden activation.
- Normalization: pure functions (:func:`batch_norm`, :func:`layer_norm`, ...) and thin
  NNX modules (:class:`BatchNorm`, ...) and Linen modules (``varprop.nn.linen.BatchNorm``,
  ...) over them.
"""

from varprop._src.nn import norm_linen as linen
from varprop._src.nn.activations import jax_activation
from varprop._src.nn.mlp import (
    MLP,
    LinenMLP,
    LinenProbe,
    Probe,
    linen_probe_statistics,
    probe_statistics,
)
from varprop._src.nn.norm_nnx import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from varprop._src.nn.normalization import (
    BatchNormResult,
    Moments,
    batch_norm,
    batch_stats,
    group_norm,
    instance_norm,
    layer_norm,
    momentum_from_torch,
    momentum_to_torch,
    normalize,
    rms_norm,
)

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

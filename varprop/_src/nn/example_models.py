"""Example Flax models, NNX and Linen, in the shape of the Flax examples: the factories of
:mod:`varprop._src.nn.example_models_nnx` and :mod:`varprop._src.nn.example_models_linen`
in one place (the public module is :mod:`varprop.example_models`)."""

from __future__ import annotations

from varprop._src.nn.example_models_linen import (
    cnn_linen,
    mobilenet_linen,
    resnet_linen,
    transformer_linen,
)
from varprop._src.nn.example_models_nnx import cnn, mobilenet, resnet, transformer

__all__ = [
    "cnn",
    "cnn_linen",
    "mobilenet",
    "mobilenet_linen",
    "resnet",
    "resnet_linen",
    "transformer",
    "transformer_linen",
]

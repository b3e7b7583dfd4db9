"""Example Flax models for :func:`varprop.check_model` and ``varprop check --model``.

Small versions of the models of the Flax examples, each in Flax NNX and in Linen (the
``*_linen`` factories, which return an unbound ``flax.linen.Module``), with the same
architecture and parameter shapes in both:

- :func:`cnn`, :func:`cnn_linen`: the MNIST CNN (two 3x3 convs with average pooling, two
  Dense layers); input ``(B, 28, 28, 1)``.
- :func:`resnet`, :func:`resnet_linen`: a ResNet with basic blocks and BatchNorm (He et
  al. 2016), zero-initialized last BatchNorm scale per block (Goyal et al. 2017); input
  ``(B, 32, 32, 3)``.
- :func:`mobilenet`, :func:`mobilenet_linen`: MobileNet-v2-style inverted residuals with a
  grouped expand conv and a depthwise conv (Sandler et al. 2018); input ``(B, 32, 32, 3)``.
- :func:`transformer`, :func:`transformer_linen`: an lm1b-style decoder-only Transformer
  with causal multi-head attention (Vaswani et al. 2017); input int32 tokens ``(B, T)``.

Every factory runs with no argument (``varprop check --model
varprop.example_models:resnet --input-shape 8,32,32,3``); all arguments are keywords.
``inits={"layer name": initializer}`` replaces the default kernel initializer of every
layer with that name (each factory's docstring lists the names), ``kernel_init`` that of
every other Dense/Conv kernel; NNX factories take ``rngs`` (default ``nnx.Rngs(0)``).

Names are imported on first use (PEP 562): ``import varprop.example_models`` does not load
Flax.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from varprop import example_models
    >>> model = example_models.resnet(inits={"head": jax.nn.initializers.zeros})
    >>> model(jnp.ones((2, 32, 32, 3))).shape
    (2, 10)
    >>> float(jnp.abs(model.head.kernel[...]).max())
    0.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from varprop._src.lazy import lazy_attributes

_NNX = "varprop._src.nn.example_models_nnx"
_LINEN = "varprop._src.nn.example_models_linen"

#: Public name -> (module, attribute).
_LAZY: dict[str, tuple[str, str | None]] = {
    "cnn": (_NNX, "cnn"),
    "cnn_linen": (_LINEN, "cnn_linen"),
    "mobilenet": (_NNX, "mobilenet"),
    "mobilenet_linen": (_LINEN, "mobilenet_linen"),
    "resnet": (_NNX, "resnet"),
    "resnet_linen": (_LINEN, "resnet_linen"),
    "transformer": (_NNX, "transformer"),
    "transformer_linen": (_LINEN, "transformer_linen"),
}

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

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)


if TYPE_CHECKING:  # what pyright and IDEs see; nothing is imported at run time
    from varprop._src.nn.example_models_linen import (
        cnn_linen,
        mobilenet_linen,
        resnet_linen,
        transformer_linen,
    )
    from varprop._src.nn.example_models_nnx import cnn, mobilenet, resnet, transformer

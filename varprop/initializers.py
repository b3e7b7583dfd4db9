"""Initializers with the ``jax.nn.initializers`` signature that carry their variance law.

Each builder returns an :class:`Initializer`; ``init.scheme`` (or
:func:`varprop.scheme_of`) is its :class:`varprop.laws.Scheme`. :func:`recognize` gives the
varprop equivalent of a ``jax.nn`` / Flax initializer.
"""

from varprop._src.initializers import (
    Initializer,
    constant,
    delta_orthogonal,
    embed_normal,
    fixup,
    from_spec,
    glorot_normal,
    glorot_uniform,
    he_normal,
    he_uniform,
    kaiming_normal,
    kaiming_uniform,
    lecun_normal,
    lecun_uniform,
    normal,
    ones,
    orthogonal,
    truncated_normal,
    uniform,
    uniform_interval,
    variance_scaling,
    xavier_fan_in_normal,
    xavier_fan_in_uniform,
    xavier_normal,
    xavier_uniform,
    zeros,
)
from varprop._src.recognize import recognize

__all__ = [
    "Initializer",
    "constant",
    "delta_orthogonal",
    "embed_normal",
    "fixup",
    "from_spec",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "recognize",
    "truncated_normal",
    "uniform",
    "uniform_interval",
    "variance_scaling",
    "xavier_fan_in_normal",
    "xavier_fan_in_uniform",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]

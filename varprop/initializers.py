"""Initializers with the ``jax.nn.initializers`` signature that carry their variance law.

Each builder returns an :class:`Initializer`; ``init.scheme`` (or
:func:`varprop.scheme_of`) is its :class:`varprop.laws.Scheme`.
"""

from varprop._src.initializers import (
    Initializer,
    constant,
    delta_orthogonal,
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
    variance_scaling,
    xavier_fan_in_normal,
    xavier_fan_in_uniform,
    xavier_normal,
    xavier_uniform,
    zeros,
)

__all__ = [
    "Initializer",
    "constant",
    "delta_orthogonal",
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
    "truncated_normal",
    "uniform",
    "variance_scaling",
    "xavier_fan_in_normal",
    "xavier_fan_in_uniform",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]

"""JAX functions for the activations registered in :mod:`varprop.laws`.

Built-ins map to ``jax.nn``; an activation a user registered with a SymPy expression is
lambdified to JAX once, when first asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import sympy as sp

from varprop._src.laws import activations as A
from varprop._src.laws import symbols as S

ActFn = Callable[[jax.Array], jax.Array]


def _linear(z: jax.Array) -> jax.Array:
    return z


_BUILTIN: dict[str, Callable[[dict], ActFn]] = {
    "linear": lambda p: _linear,
    "relu": lambda p: jax.nn.relu,
    "leaky_relu": lambda p: functools.partial(
        jax.nn.leaky_relu, negative_slope=float(p["negative_slope"])
    ),
    "abs": lambda p: jnp.abs,
    "tanh": lambda p: jnp.tanh,
    "sigmoid": lambda p: jax.nn.sigmoid,
    "erf": lambda p: jsp.erf,
    "gelu": lambda p: functools.partial(jax.nn.gelu, approximate=False),
    "silu": lambda p: jax.nn.silu,
    "selu": lambda p: jax.nn.selu,
    "elu": lambda p: functools.partial(jax.nn.elu, alpha=float(p["alpha"])),
    "softplus": lambda p: jax.nn.softplus,
}


@functools.cache
def _lambdified(act: A.Activation) -> ActFn:
    f = sp.lambdify(S.x, act.expr, modules="jax")

    def fn(z: jax.Array) -> jax.Array:
        return jnp.asarray(f(z), z.dtype)

    return fn


def jax_activation(act: str | A.Activation) -> ActFn:
    """The JAX function of a registered activation (name, spec string or object)."""
    a = A.get_activation(act) if isinstance(act, str) else act
    if a.name in _BUILTIN and a.name in A.BUILTIN_NAMES:
        return _BUILTIN[a.name](dict(a.params))
    return _lambdified(a)

"""Each activation is declared once: its JAX function (named in the record) computes its law.

For every built-in, the function :func:`varprop._src.core.network.jax_activation` resolves
from ``Activation.jax_function`` equals the SymPy expression (lambdified to NumPy in
float64) on a grid, and so does its derivative (``jax.grad`` against ``sympy.diff``) away
from the kinks. User activations have no JAX function and are lambdified from SymPy.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp

from varprop._src.core.network import jax_activation
from varprop._src.laws import activations as A
from varprop._src.laws import symbols as S

#: Every built-in, plus the parametrised ones at a non-default value.
SPECS = (
    *A.BUILTIN_NAMES,
    "leaky_relu:negative_slope=0.2",
    "elu:alpha=0.5",
    "leaky_relu:negative_slope=-1.5",
)

GRID = np.concatenate([np.linspace(-8.0, 8.0, 321), [-30.0, -1e-3, 1e-3, 30.0]])


def _close(got, want, what):
    # float32 against float64: a few ulps of the value, or of 1 near 0.
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6, err_msg=what)


@pytest.mark.parametrize("spec", SPECS)
def test_jax_function_equals_sympy_law(spec):
    act = A.get_activation(spec)
    assert act.jax_function is not None, f"built-in {act} declares no JAX function"
    fn = jax_activation(act)
    got = np.asarray(fn(jnp.asarray(GRID, jnp.float32)), np.float64)
    want = act.numpy_fn()(GRID.astype(np.float32).astype(np.float64))
    _close(got, want, str(act))


@pytest.mark.parametrize("spec", SPECS)
def test_jax_gradient_equals_sympy_derivative(spec):
    act = A.get_activation(spec)
    grid = GRID[~np.isin(GRID, act.kinks)]  # phi' jumps at a kink
    g = jax.vmap(jax.grad(jax_activation(act)))
    got = np.asarray(g(jnp.asarray(grid, jnp.float32)), np.float64)
    want = act.numpy_grad()(grid.astype(np.float32).astype(np.float64))
    _close(got, want, f"d/dx {act}")


def test_every_builtin_path_resolves_to_a_function():
    for name in A.BUILTIN_NAMES:
        spec = A.get_activation(name).jax_function
        assert spec is not None
        module, _, attr = spec.path.rpartition(".")
        assert module.split(".")[0] == "jax", spec.path
        assert callable(getattr(importlib.import_module(module), attr)), spec.path


def test_parameters_are_passed_as_keywords():
    act = A.get_activation("elu", alpha=0.5)
    assert act.jax_function is not None
    assert act.jax_function.keywords(act) == {"alpha": 0.5}
    gelu = A.get_activation("gelu")
    assert gelu.jax_function is not None
    assert gelu.jax_function.keywords(gelu) == {"approximate": False}  # the exact GELU


def test_same_function_object_for_the_same_activation():
    # Cached: jit caches keyed on the function see one object per activation.
    assert jax_activation("leaky_relu:negative_slope=0.2") is jax_activation(
        A.get_activation("leaky_relu", negative_slope=0.2)
    )
    assert jax_activation("relu") is jax.nn.relu


@pytest.fixture
def cleanup():
    yield
    for n in ("test_jax_mish",):
        A._registry.pop(n, None)
    A._registry["softplus"] = A._BUILTINS["softplus"]
    A._make.cache_clear()


def test_user_activation_is_lambdified(cleanup):
    act = A.register_activation("test_jax_mish", lambda x: x * sp.tanh(sp.log(1 + sp.exp(x))))
    assert act.jax_function is None
    z = np.linspace(-5.0, 5.0, 41)
    got = np.asarray(jax_activation("test_jax_mish")(jnp.asarray(z, jnp.float32)), np.float64)
    _close(got, act.numpy_fn()(z.astype(np.float32).astype(np.float64)), "mish")


def test_overwritten_builtin_uses_the_new_law(cleanup):
    # A user expression registered under a built-in's name is what runs, not the old
    # built-in's JAX function.
    A.register_activation("softplus", 2 * S.x, overwrite=True)
    out = jax_activation("softplus")(jnp.asarray([1.0, -2.0], jnp.float32))
    np.testing.assert_allclose(np.asarray(out), [2.0, -4.0])
    A._registry["softplus"] = A._BUILTINS["softplus"]
    A._make.cache_clear()
    assert jax_activation("softplus") is jax.nn.softplus

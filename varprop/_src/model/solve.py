r"""Scales solved for a whole model from its propagation alone (:func:`solve_init`), and drawn
into a copy of it (:func:`apply_init`).

Each dense, conv and embedding layer gets a zero-mean normal initializer whose variance
gives, by the laws of :mod:`varprop._src.model.propagate`,

* ``target="forward"``: E[y²] = q* (default 1) at the layer's output, so every layer's
  pre-activation keeps the same second moment (He et al. 2015's rule, for any graph);
* ``target="backward"``: E[(∂L/∂x)²] = 1 at its input, for E[(∂L/∂out)²] = 1 at the
  outputs (solved from the last layer back; the activations' slopes depend on the forward
  scales, so forward and backward are iterated a few times, never on data);
* ``target="both"``: the geometric mean of the two variances, layer by layer (Glorot &
  Bengio 2010's compromise, with each layer's real fans and borders).

``residual="fixup"`` (Zhang, Dauphin & Ma 2019): the last layer of every residual branch
is zero and the branch's other layers are scaled by L^(−1/(m−1)) in variance (L residual
merges, m layers in the branch), so the residual stream starts as its skip path.
"""

from __future__ import annotations

import math
from typing import Any

import jax

TARGETS = ("forward", "backward", "both")
RESIDUALS = ("none", "fixup")


def solve_init(
    model: Any,
    inputs: Any,
    target: str = "forward",
    *,
    variables: Any = None,
    call_kwargs: dict[str, Any] | None = None,
    mode: str | None = "train",
    rngs: Any = None,
    residual: str = "none",
    second_moment: float = 1.0,
    iterations: int = 3,
) -> dict[str, Any]:
    """Per-layer initializers ``{path: Initializer}`` that preserve the chosen second
    moment through the whole model, from its propagation alone (module docstring).

    The paths are :func:`varprop.check_model`'s, so the result is itself checkable:
    ``check_model(model, inputs, expect=inits)``; :func:`apply_init` draws it.

    Example:
        >>> import jax, jax.numpy as jnp, varprop
        >>> from flax import nnx
        >>> def mlp(rngs):
        ...     return nnx.Sequential(
        ...         nnx.Linear(64, 128, rngs=rngs), jax.nn.relu, nnx.Linear(128, 32, rngs=rngs)
        ...     )
        >>> inits = varprop.solve_init(mlp, jax.ShapeDtypeStruct((16, 64), jnp.float32))
        >>> {p: round(i.scheme.variance_for_fans(1, 1) * 64, 4) for p, i in inits.items()}
        {'layers/0': 1.0, 'layers/2': 1.0}
    """
    from varprop._src.errors import InputError
    from varprop._src.initializers import constant, normal
    from varprop._src.model.expected import layer_laws, row_paths
    from varprop._src.model.predict import run_both_ways, trace_for_propagation
    from varprop._src.model.trace import residual_branches

    if target not in TARGETS:
        raise InputError(
            f"target={target!r}; allowed: {', '.join(TARGETS)}", kind="usage", param="target"
        )
    if residual not in RESIDUALS:
        raise InputError(
            f"residual={residual!r}; allowed: {', '.join(RESIDUALS)}",
            kind="usage",
            param="residual",
        )
    if not (isinstance(second_moment, (int, float)) and second_moment > 0):
        raise InputError(
            f"second_moment={second_moment!r} must be a number > 0",
            kind="usage",
            param="second_moment",
        )
    traced = trace_for_propagation(model, inputs, variables, call_kwargs, mode, rngs)
    mf, found, _ = traced
    paths = row_paths(found)
    base = layer_laws(found, mf, paths, None)
    last, inner = residual_branches(found) if residual == "fixup" else (set(), {})
    n_merges = sum(m.kind == "residual" for m in found.merges)
    q = float(second_moment)
    every = {s.index: q for s in found.layers}
    for i in last:  # Fixup: the branch starts as 0
        every[i] = 0.0
    for i, m in inner.items():  # ... and its other layers are scaled down
        if m > 1:
            every[i] = q * n_merges ** (-1 / (m - 1))

    # Forward: one pass solves every layer in order (a layer's input depends only on the
    # layers before it).
    fwd = list(base)
    run_both_ways(traced, fwd, forward_target=every)
    laws = list(fwd)
    if target in ("backward", "both"):
        # Backward: from the last layer back, given the forward moments of the pass (the
        # activations' slopes), iterated; a layer no gradient reaches keeps its forward
        # scale, and Fixup's zero layers stay zero.
        bwd = list(fwd)
        goal = {i: 1.0 for i in every if i not in last}
        for _ in range(max(1, iterations)):
            run_both_ways(traced, bwd, backward_target=goal)
        if target == "backward":
            laws = bwd
        else:
            laws = [
                None if f is None or b is None else type(f)(math.sqrt(f.variance * b.variance))
                for f, b in zip(fwd, bwd, strict=True)
            ]
    out: dict[str, Any] = {}
    for path, law in zip(paths, laws, strict=True):
        if law is None:
            continue
        out[path] = constant(0.0) if law.variance == 0 else normal(math.sqrt(law.variance))
    return out


def apply_init(model_or_variables: Any, inits: dict[str, Any], key: jax.Array) -> Any:
    """A copy of an NNX model, or of Linen variables, with each layer ``path`` of ``inits``
    (as :func:`solve_init` and :func:`varprop.check_model` name them) redrawn by its
    initializer; the original is not changed. A path that matches no layer is an error
    naming it and the layers there are."""
    from flax import nnx

    from varprop._src.errors import InputError
    from varprop._src.model.adapter import path_name

    if isinstance(model_or_variables, nnx.Module):
        graphdef, state = nnx.split(model_or_variables)
        tree: Any = nnx.to_pure_dict(state)
    else:
        graphdef, tree = None, model_or_variables
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = [path_name(p) for p, _ in flat]
    layers = {n.rsplit("/", 1)[0]: i for i, n in enumerate(names) if n.endswith("/kernel")}
    layers |= {n.rsplit("/", 1)[0]: i for i, n in enumerate(names) if n.endswith("/embedding")}
    stripped = {k.removeprefix("params/"): v for k, v in layers.items()}
    leaves = [v for _, v in flat]
    for j, (path, init) in enumerate(sorted(inits.items())):
        i = stripped.get(path.split("#")[0])
        if i is None:
            raise InputError(
                f"apply_init: no layer {path!r}; layers: {sorted(stripped)}",
                kind="usage",
                param="inits",
            )
        leaf = leaves[i]
        leaves[i] = init(jax.random.fold_in(key, j), tuple(leaf.shape), leaf.dtype)
    new = jax.tree_util.tree_unflatten(treedef, leaves)
    if graphdef is None:
        return new
    nnx.replace_by_pure_dict(state, new)
    return nnx.merge(graphdef, state)

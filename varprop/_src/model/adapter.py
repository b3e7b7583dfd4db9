"""A Flax model (NNX or Linen) as a pure function of its parameters, with its initializers.

:func:`as_model_function` turns what the user passes to :func:`varprop.check_model` into a
:class:`ModelFunction`: ``apply(params, state, inputs, key) -> outputs`` over flat lists of
arrays, the parameters' readable paths (``"blocks/0/conv1/kernel"``), and, for every
parameter whose initializer could be seen being called, that initializer and the shape and
dtype it was called with, so that each seed can redraw it with a fresh key inside the
jitted probe. The user's model and variables are never mutated: NNX models are copied
(``nnx.split``/``nnx.merge``) and Linen variables are only read.

Initializers are seen with :func:`record_init_calls`, which watches the model being built
(an NNX factory, or Linen's ``init``) for calls ``init(key, shape, dtype)`` and keeps the
outermost one that returned each parameter. NNX modules do not keep their initializers, so
an NNX *instance* is checked with its weights as given unless a factory is passed.

Stacked parameters (blocks built under ``nnx.vmap`` or ``linen.scan``/``linen.vmap``, to be
run by a scan) are drawn by calls with the *slice's* shape inside the transformation; each
such call is matched to its stacked leaf (by the Linen scope's path, by the batched value
``nnx.vmap`` computed, or, when every candidate is the same initializer, by shape) and the
leaf is redrawn as that many independent slices (:attr:`InitCall.stack`).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from varprop._src.errors import InputError


@dataclass(frozen=True)
class InitCall:
    """One initializer call seen while a model was built: ``fn(key, shape, dtype)``."""

    fn: Callable[..., Any] | None
    shape: tuple[int, ...]
    dtype: Any
    value: Any
    #: The parameter's path when the call says whose it is (a Linen scope's ``param``).
    owner: str | None = None
    #: ``(axis, n)``: the call drew one slice of a parameter stacked ``n`` times on
    #: ``axis`` (set when matched to a leaf).
    stack: tuple[int, int] | None = None


def _is_key(x: Any) -> bool:
    if not isinstance(x, jax.Array):
        return False
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return True
    return x.dtype == jnp.uint32 and x.shape == (2,)


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple | list) and all(isinstance(d, int | np.integer) for d in x)


def _function_of(frame) -> Callable[..., Any] | None:
    """The function object running in ``frame``, looked up in its caller's variables."""
    code = frame.f_code
    loc = frame.f_locals
    if code.co_varnames and code.co_varnames[0] == "self" and "self" in loc:
        return loc["self"]
    caller = frame.f_back
    for scope in (caller.f_locals, caller.f_globals) if caller is not None else ():
        for v in list(scope.values()):
            if getattr(v, "__code__", None) is code:
                return v
            inner = getattr(v, "func", None)  # functools.partial
            if getattr(inner, "__code__", None) is code:
                return v
    return None


def _owner(frame) -> str | None:
    """The path of the parameter a Linen ``param(name, init_fn, ...)`` call a few frames up
    is creating (its scope's path and name), else None."""
    f = frame.f_back
    for _ in range(8):
        if f is None:
            return None
        if f.f_code.co_name == "param":
            loc = f.f_locals
            path, name = getattr(loc.get("self"), "path", None), loc.get("name")
            if isinstance(path, tuple) and isinstance(name, str):
                return "/".join([*map(str, path), name])
        f = f.f_back
    return None


def record_init_calls(build: Callable[[], Any]) -> tuple[Any, list[InitCall]]:
    """Run ``build()`` and return its result with the outermost initializer calls made.

    An initializer call is a Python call whose first two arguments (after ``self``) are a
    PRNG key and a shape tuple, the ``jax.nn.initializers`` signature.
    """
    calls: list[InitCall] = []
    active: list[Any] = []  # frames of the open outermost call

    def prof(frame, event, arg):
        if event == "call" and not active:
            code = frame.f_code
            names = code.co_varnames[: code.co_argcount]
            if names and names[0] == "self":
                names = names[1:]
            # The jax.nn.initializers signature names its second argument "shape"; reading
            # a frame's locals is costly, so only such frames are looked at.
            if len(names) >= 2 and names[1] == "shape":
                loc = frame.f_locals
                key, shape = loc.get(names[0]), loc.get(names[1])
                if _is_key(key) and _is_shape(shape):
                    dtype = loc.get(names[2]) if len(names) > 2 else None
                    fn = _function_of(frame)
                    active.append((frame, fn, tuple(shape), dtype, _owner(frame)))
        elif event == "return" and active and active[0][0] is frame:
            _, fn, shape, dtype, owner = active.pop()
            calls.append(InitCall(fn, shape, dtype, arg, owner))

    old = sys.getprofile()
    sys.setprofile(prof)
    try:
        out = build()
    finally:
        sys.setprofile(old)
    return out, calls


def record_linen_param_calls(build: Callable[[], Any]) -> tuple[Any, list[InitCall]]:
    """:func:`record_init_calls` for a Linen ``init``, by wrapping ``Module.param`` for the
    duration of ``build()`` instead of a profile hook on every Python call (a ResNet-50's
    traced init: 0.7 s with the hook, 0.26 s without). Each ``param(name, init_fn,
    *init_args)`` records ``init_fn`` with its shape, dtype, (unboxed) value and the
    parameter's path."""
    import flax.linen as nn

    calls: list[InitCall] = []
    param = nn.Module.param

    def recording_param(self, name, init_fn, *init_args, **kwargs):
        def recorded(key, *args, **kw):
            value = init_fn(key, *args, **kw)
            shape = args[0] if args else kw.get("shape")
            if _is_key(key) and _is_shape(shape):
                dtype = args[1] if len(args) > 1 else kw.get("dtype")
                owner = "/".join([*map(str, self.path), name])
                assert shape is not None
                calls.append(InitCall(init_fn, tuple(shape), dtype, nn.meta.unbox(value), owner))
            return value

        return param(self, name, recorded, *init_args, **kwargs)

    nn.Module.param = recording_param
    try:
        out = build()
    finally:
        nn.Module.param = param
    return out, calls


def _match_inits(
    leaves: Sequence[Any], calls: Sequence[InitCall], paths: Sequence[str] | None = None
) -> list[InitCall | None]:
    """For each parameter leaf, the initializer call that returned it (by identity, else by
    equal shape and values), or the call that drew one slice of it (:func:`_stacked`), or
    None."""
    by_id = {id(c.value): c for c in calls}
    out: list[InitCall | None] = []
    used: set[int] = set()
    for leaf in leaves:
        c = by_id.get(id(leaf))
        if c is None:
            for j, cand in enumerate(calls):
                v = cand.value
                if (
                    j not in used
                    and not isinstance(v, Tracer)
                    and getattr(v, "shape", None) == getattr(leaf, "shape", None)
                    and np.array_equal(np.asarray(v), np.asarray(leaf))
                ):
                    c = cand
                    used.add(j)
                    break
        out.append(c)
    for i, leaf in enumerate(leaves):
        if out[i] is None:
            out[i] = _stacked(leaf, calls, None if paths is None else paths[i])
    return out


def _stack_axes(leaf_shape: tuple[int, ...], shape: tuple[int, ...]) -> list[int]:
    """The axes whose removal from ``leaf_shape`` leaves ``shape``."""
    if len(leaf_shape) != len(shape) + 1:
        return []
    return [a for a in range(len(leaf_shape)) if leaf_shape[:a] + leaf_shape[a + 1 :] == shape]


def _batched(v: Any) -> Any:
    """The concrete stacked value of an ``nnx.vmap``/``jax.vmap`` output (batch axis 0)."""
    val, bdim = getattr(v, "val", None), getattr(v, "batch_dim", None)
    if isinstance(val, jax.Array) and not isinstance(val, Tracer) and isinstance(bdim, int):
        return jnp.moveaxis(val, bdim, 0)
    return None


def _stacked(leaf: Any, calls: Sequence[InitCall], path: str | None) -> InitCall | None:
    """The call that drew one slice of a stacked ``leaf``: the call of a Linen scope that
    names this path; else one whose batched value (``nnx.vmap``) is the leaf; else, when
    every call of the slice's shape made inside a transformation is the same initializer,
    that one."""
    from varprop._src.recognize import recognize

    shape = tuple(getattr(leaf, "shape", ()))
    cands = [(c, _stack_axes(shape, c.shape)) for c in calls if c.fn is not None]
    cands = [(c, axes) for c, axes in cands if axes]
    if not cands:
        return None
    owned = [(c, axes) for c, axes in cands if path is not None and c.owner == path]
    if owned:
        c, axes = owned[-1]
        return replace(c, stack=(axes[0], shape[axes[0]]))
    for c, axes in cands:
        b = _batched(c.value)
        for a in axes:
            if b is not None and b.shape[0] == shape[a]:
                if np.array_equal(np.asarray(jnp.moveaxis(b, 0, a)), np.asarray(leaf)):
                    return replace(c, stack=(a, shape[a]))
    if any(c.owner is not None for c, _ in cands):
        return None  # Linen said whose each call was: not this leaf's
    # Calls made inside a transformation (their value a tracer) are what stacks are drawn
    # by; a concrete value of the slice's shape is some other parameter's.
    cands = [(c, axes) for c, axes in cands if isinstance(c.value, Tracer)]
    if not cands:
        return None
    laws = {repr(recognize(c.fn)) for c, _ in cands}  # a varprop initializer's repr is its law
    if len(laws) == 1 and laws != {"None"}:
        c, axes = cands[0]
        return replace(c, stack=(axes[0], shape[axes[0]]))
    return None


def path_name(path: Sequence[Any]) -> str:
    """``"blocks/0/conv1/kernel"`` from a pytree key path (``.value`` attributes dropped)."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            if k.name not in ("value", "raw_value"):
                parts.append(k.name)
        else:
            parts.append(str(getattr(k, "key", k)))
    return "/".join(parts)


@dataclass
class ModelFunction:
    """A model as a pure function over flat lists of arrays (module docstring)."""

    apply: Callable[[list[Any], list[Any], Any, jax.Array], Any]
    params: list[Any]
    paths: list[str]
    state: list[Any]
    inits: list[InitCall | None]
    framework: str
    notes: list[str]
    #: Abstract parameters (``ShapeDtypeStruct``\ s, :func:`as_model_function` with
    #: ``abstract=True``): ``materialize(skip)`` computes every parameter but those whose
    #: index is in ``skip`` (left as zeros) from the init's jaxpr, then is ``None``.
    materialize: Callable[[set[int]], None] | None = None

    def redraw(self, key: jax.Array) -> list[Any]:
        """The parameters redrawn by their own initializers with ``key`` (those whose
        initializer is unknown keep their values)."""
        out = []
        for i, (p, c) in enumerate(zip(self.params, self.inits, strict=True)):
            if c is None or c.fn is None:
                out.append(p)
            else:
                k = jax.random.fold_in(key, i)
                out.append(_draw(c, k).astype(jnp.asarray(p).dtype).reshape(p.shape))
        return out

    @property
    def redrawable(self) -> bool:
        return any(c is not None and c.fn is not None for c in self.inits)


def _draw(c: InitCall, key: jax.Array) -> jax.Array:
    """A fresh draw of ``c``'s parameter: one call, or one per slice of a stacked one."""
    fn = c.fn
    assert fn is not None

    def one(k):
        args = (k, c.shape) if c.dtype is None else (k, c.shape, c.dtype)
        return jnp.asarray(fn(*args))

    if c.stack is None:
        return one(key)
    axis, n = c.stack
    return jnp.moveaxis(jax.vmap(one)(jax.random.split(key, n)), 0, axis)


def _is_nnx(obj: Any) -> bool:
    mod = sys.modules.get("flax.nnx")
    return mod is not None and isinstance(obj, mod.Module)


def _is_linen(obj: Any) -> bool:
    mod = sys.modules.get("flax.linen")
    return mod is not None and isinstance(obj, mod.Module)


def _takes_rngs(factory: Callable[..., Any]) -> bool:
    try:
        return "rngs" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _nnx_function(
    model, mode: str | None, calls: list[InitCall], call_kwargs, matched=None
) -> ModelFunction:
    """``matched``: the parameters' initializer calls, already matched (a traced build)."""
    from flax import nnx

    copy = nnx.merge(*nnx.split(model))  # never touch the user's model
    if mode == "train":
        copy.train()
    elif mode == "eval":
        copy.eval()
    graphdef, params, rest = nnx.split(copy, nnx.Param, ...)
    with_paths, ptree = jax.tree_util.tree_flatten_with_path(params)
    leaves = [leaf for _, leaf in with_paths]
    paths = [path_name(p) for p, _ in with_paths]
    state, stree = jax.tree_util.tree_flatten(rest)
    kw = dict(call_kwargs or {})

    def apply(p, s, inputs, key):
        del key
        m = nnx.merge(
            graphdef,
            jax.tree_util.tree_unflatten(ptree, p),
            jax.tree_util.tree_unflatten(stree, s),
        )
        return m(*inputs, **kw)

    # Identity of the drawn arrays is kept by nnx.split of the original model.
    orig = [
        leaf for _, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    ]
    inits: list[InitCall | None] = (
        matched
        if matched is not None
        else _match_inits(orig, calls, paths)
        if calls
        else [None] * len(leaves)
    )
    notes = []
    if not calls and matched is None:
        notes.append(
            "NNX modules do not keep their initializers: each layer's weights are used as "
            "given; pass a factory (e.g. lambda rngs: Model(..., rngs=rngs)) to redraw them "
            "per seed and to test each layer against its own initializer's law"
        )
    return ModelFunction(apply, leaves, paths, state, inits, "nnx", notes)


def _nnx_abstract(build_fn, mode, call_kwargs) -> ModelFunction:
    """An NNX factory traced, not run (as :func:`_linen_abstract`): the module is built
    inside ``jax.make_jaxpr``, its non-parameter state computed from that jaxpr, and its
    parameters left abstract until :attr:`ModelFunction.materialize`."""
    from flax import nnx

    from varprop._src.model.numpy_ops import evaluate

    box: dict[str, Any] = {}

    def build():
        m, calls = record_init_calls(build_fn)
        if not _is_nnx(m):
            raise TypeError("not an NNX module")
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)
        with_paths = jax.tree_util.tree_flatten_with_path(params)[0]
        leaves, paths = [v for _, v in with_paths], [path_name(p) for p, _ in with_paths]
        box["graphdef"] = graphdef
        box["matched"] = _match_inits(leaves, calls, paths) if calls else None
        return params, rest

    closed, (p_abs, r_abs) = jax.make_jaxpr(build, return_shape=True)()
    n_p, n_r = len(jax.tree_util.tree_leaves(p_abs)), len(jax.tree_util.tree_leaves(r_abs))
    rest = evaluate(closed, [], [False] * n_p + [True] * n_r)[n_p:]
    r_val = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(r_abs), rest)
    model = nnx.merge(box["graphdef"], p_abs, r_val)
    mf = _nnx_function(model, mode, [], call_kwargs, matched=box["matched"])
    shapes = [(tuple(v.shape), v.dtype) for v in jax.tree_util.tree_leaves(p_abs)]
    if [(tuple(v.shape), v.dtype) for v in mf.params] != shapes:
        raise TypeError("the parameters' order changed")

    def materialize(skip: set[int]) -> None:
        out = evaluate(closed, [], [j not in skip for j in range(n_p)] + [False] * n_r)
        mf.params = [
            np.zeros(s, d) if v is None else v for v, (s, d) in zip(out[:n_p], shapes, strict=True)
        ]
        mf.materialize = None

    mf.materialize = materialize
    return mf


def _linen_abstract(model, inputs0, kw, rng_names):
    """Linen's ``init`` traced, not run: the variables' shapes, the initializer calls
    (seen during the trace), the concrete non-parameter collections, and a function that
    computes the chosen parameters from the init's jaxpr (``numpy_ops.evaluate``)."""
    import flax.linen as nn

    from varprop._src.model.numpy_ops import evaluate

    box: dict[str, Any] = {}

    def init(key):
        v, calls = record_linen_param_calls(
            lambda: model.init({"params": key, **dict.fromkeys(rng_names, key)}, *inputs0, **kw)
        )
        v = nn.meta.unbox(v)
        box["calls"], box["leaves"] = calls, jax.tree_util.tree_leaves(v.get("params", {}))
        return v

    key = jax.random.key(0)
    closed, shapes = jax.make_jaxpr(init, return_shape=True)(key)
    where = [p[0].key == "params" for p, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]]
    rest = evaluate(closed, [key], [not w for w in where])
    values = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(shapes),
        [
            r if r is not None else s
            for r, s in zip(rest, jax.tree_util.tree_leaves(shapes), strict=True)
        ],
    )

    def params_of(skip: set[int]) -> list[Any]:
        pos = [i for i, w in enumerate(where) if w]
        used = [False] * len(where)
        for j, i in enumerate(pos):
            used[i] = j not in skip
        out = evaluate(closed, [key], used)
        shape_leaves = jax.tree_util.tree_leaves(shapes)
        return [
            out[i] if used[i] else np.zeros(shape_leaves[i].shape, shape_leaves[i].dtype)
            for i in pos
        ]

    return values, box["calls"], box["leaves"], params_of


def _linen_function(
    model, variables, inputs0, mode, call_kwargs, rng_names=("dropout",), abstract=False
) -> ModelFunction:
    import flax.linen as nn

    kw = dict(call_kwargs or {})
    if mode is not None and "train" not in kw:
        try:
            if "train" in inspect.signature(model.__call__).parameters:
                kw["train"] = mode == "train"
        except (TypeError, ValueError):
            pass
    calls: list[InitCall] = []
    params_of, traced = None, None
    if variables is None and abstract:
        variables, calls, traced, params_of = _linen_abstract(model, inputs0, kw, rng_names)
    elif variables is None:
        key = jax.random.key(0)
        variables, calls = record_init_calls(
            lambda: model.init({"params": key, **dict.fromkeys(rng_names, key)}, *inputs0, **kw)
        )
    variables = nn.meta.unbox(variables)
    if "params" not in variables:
        raise InputError(
            f"the Linen variables have no 'params' collection (found {sorted(variables)}); "
            "allowed: the dict returned by model.init",
            kind="model",
            param="variables",
        )
    with_paths, ptree = jax.tree_util.tree_flatten_with_path(variables["params"])
    leaves = [leaf for _, leaf in with_paths]
    paths = [path_name(p) for p, _ in with_paths]
    rest = {k: v for k, v in variables.items() if k != "params"}
    state, stree = jax.tree_util.tree_flatten(rest)
    inits: list[InitCall | None] = (
        _match_inits(traced if traced is not None else leaves, calls, paths)
        if calls
        else [None] * len(leaves)
    )

    def apply(p, s, inputs, key):
        v = {
            "params": jax.tree_util.tree_unflatten(ptree, p),
            **jax.tree_util.tree_unflatten(stree, s),
        }
        rngs = {name: jax.random.fold_in(key, i) for i, name in enumerate(rng_names)}
        out, _ = model.apply(v, *inputs, rngs=rngs, mutable=True, **kw)
        return out

    notes = (
        []
        if calls
        else [
            "the variables were given: each layer's weights are used as given (initializers "
            "unknown unless expect= names them)"
        ]
    )
    mf = ModelFunction(apply, leaves, paths, state, inits, "linen", notes)
    if params_of is not None:

        def materialize(skip: set[int]) -> None:
            assert params_of is not None
            mf.params, mf.materialize = params_of(skip), None

        mf.materialize = materialize
    return mf


def as_model_function(
    model: Any,
    inputs0: tuple[Any, ...],
    *,
    variables: Any = None,
    mode: str | None = "train",
    call_kwargs: dict[str, Any] | None = None,
    rngs: Sequence[str] | None = None,
    abstract: bool = False,
) -> ModelFunction:
    r"""The :class:`ModelFunction` of an NNX module, a factory of one (a callable returning
    it, optionally taking ``rngs``), or a Linen module with (or without) ``variables``.

    ``abstract``: a Linen module without variables is initialized by tracing its ``init``,
    not running it (no XLA program is compiled); its parameters are then
    ``ShapeDtypeStruct``\ s until :attr:`ModelFunction.materialize` computes them."""
    names = tuple(rngs) if rngs is not None else ("dropout",)
    if _is_linen(model):
        return _linen_function(
            model, variables, inputs0, mode, call_kwargs, names, abstract=abstract
        )
    if _is_nnx(model):
        if variables is not None:
            raise InputError(
                "variables= is for Linen modules; an NNX module carries its own state",
                kind="model",
                param="variables",
            )
        return _nnx_function(model, mode, [], call_kwargs)
    if callable(model):
        from flax import nnx

        def build():
            return model(rngs=nnx.Rngs(0)) if _takes_rngs(model) else model()

        if abstract:
            try:
                return _nnx_abstract(build, mode, call_kwargs)
            except Exception:  # not NNX, or not traceable: built for real below
                pass
        built, calls = record_init_calls(build)
        if _is_nnx(built):
            return _nnx_function(built, mode, calls, call_kwargs)
        if _is_linen(built):
            return _linen_function(
                built, variables, inputs0, mode, call_kwargs, names, abstract=abstract
            )
        raise InputError(
            f"the factory returned {type(built).__name__}, not a Flax module; allowed: an "
            "nnx.Module or a flax.linen.Module",
            kind="model",
            param="model",
        )
    raise InputError(
        f"model must be an nnx.Module, a flax.linen.Module or a factory returning one; got "
        f"{type(model).__name__}",
        kind="model",
        param="model",
    )

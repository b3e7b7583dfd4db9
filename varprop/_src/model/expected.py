"""A model traced (:func:`trace_model`), and the law each of its layers is held to: the initializer that drew it (seen
while the model was built, recognized as the scheme it is) or the user's ``expect``, at the
op's true fans (``docs/model_checker.md``). Shared by :func:`varprop.check_model` and
:func:`varprop.laws.propagate_model`."""

from __future__ import annotations

import fnmatch
from typing import Any

import jax

from varprop._src.errors import InputError
from varprop._src.model.adapter import ModelFunction, as_model_function
from varprop._src.model.rows import layer_path
from varprop._src.model.trace import Found, LayerSite, find_layers
from varprop._src.verdicts import ExpectedLaw


def row_paths(found: Found) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for s in found.layers:
        p = layer_path(s.path)
        seen[p] = seen.get(p, 0) + 1
        out.append(p if seen[p] == 1 else f"{p}#{seen[p]}")
    return out


def law_for(site: LayerSite, path: str, mf: ModelFunction, expect) -> tuple[Any, str]:
    """The initializer whose law this layer is tested against, and where it came from."""
    from varprop._src.initializers import Initializer, from_spec
    from varprop._src.recognize import recognize

    for pattern, spec in (expect or {}).items():
        if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(site.path, pattern):
            init = from_spec(spec) if isinstance(spec, str) else spec
            if not isinstance(init, Initializer):
                init = recognize(init)
            if init is None:
                raise InputError(
                    f"expect[{pattern!r}] = {spec!r} is not an initializer varprop knows; "
                    "allowed: a SPEC string (e.g. 'he_normal'), a varprop initializer or a "
                    "jax.nn.initializers one",
                    kind="model",
                    param="expect",
                )
            return init, "expect"
    call = mf.inits[site.param]
    if call is not None and call.fn is not None:
        init = recognize(call.fn)
        if init is not None:
            return init, "initializer"
        # A layer's own wrapper around the user's initializer (DenseGeneral draws a
        # flattened kernel and reshapes it): the law at the op's true fans is the inner
        # initializer's, whatever shape it was drawn in.
        inner = [
            recognize(c.cell_contents)
            for c in getattr(call.fn, "__closure__", None) or ()
            if callable(getattr(c, "cell_contents", None))
        ]
        inner = [i for i in inner if i is not None]
        if len(inner) == 1:
            return inner[0], "initializer (inside the layer's wrapper)"
    return None, ""


def expected_law(init, site: LayerSite) -> ExpectedLaw:
    scheme = init.scheme
    if scheme.distribution.is_orthogonal:
        return ExpectedLaw.of(scheme, site.w_shape)
    if site.kind == "embed":
        fan_in = fan_out = site.fan_out  # a lookup copies one row: its length is the fan
    else:
        fan_in, fan_out = site.fan_in, site.fan_out
    k = scheme.kurtosis
    return ExpectedLaw(
        float(scheme.variance_for_fans(fan_in, fan_out)),
        float(scheme.mean_for_fans(fan_in, fan_out)),
        3.0 if k is None else float(k),
    )


def trace_model(
    model: Any, args0: tuple[Any, ...], *, variables, mode, call_kwargs, rngs, abstract=False
) -> tuple[ModelFunction, Found]:
    """The model as a pure function and its traced layers, on the positional arguments
    ``args0``; a model that cannot be built or called is an ``InputError`` (kind
    ``"model"``) naming the input shapes."""
    try:
        mf = as_model_function(
            model,
            args0,
            variables=variables,
            mode=mode,
            call_kwargs=dict(call_kwargs or {}),
            rngs=rngs,
            abstract=abstract,
        )
        found = find_layers(
            lambda p, s, a, k: mf.apply(p, s, a, k),
            mf.params,
            mf.state,
            args0,
            jax.random.key(0),
            paths=mf.paths,
            data=(False, True, False),
        )
        if mf.materialize is not None:  # the layers' own weights are not needed: laws
            mf.materialize({s.param for s in found.layers})
    except InputError:
        raise
    except Exception as e:  # the user's model cannot be built or called on these inputs
        shapes = [getattr(a, "shape", type(a).__name__) for a in args0]
        raise InputError(
            f"the model cannot be built or called on inputs of shape {shapes}: "
            f"{type(e).__name__}: {e}",
            kind="model",
            param="inputs",
        ) from e
    return mf, found


def require_layers(found: Found) -> None:
    """An ``InputError`` when the model has no layer to test or record."""
    if not found.layers:
        raise InputError(
            "no layer found: the model multiplies no input by a parameter (dense, conv or "
            "embedding)",
            kind="model",
            param="model",
        )


def layer_laws(found: Found, mf: ModelFunction, paths, expect=None) -> list[ExpectedLaw | None]:
    """Each layer's law (``None`` where its initializer is unknown)."""
    out: list[ExpectedLaw | None] = []
    for site, path in zip(found.layers, paths, strict=True):
        init, _ = law_for(site, path, mf, expect)
        out.append(None if init is None else expected_law(init, site))
    return out

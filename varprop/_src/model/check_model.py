r"""Check any Flax model as it is written: every layer's law, given its actual input.

:func:`check_model` traces the model (:mod:`varprop._src.model.trace`), finds each
parameterized ``dot_general``, ``conv_general_dilated`` and embedding ``gather`` and each
residual add, measures all of them in one jitted, vmapped call per round of seeds
(:mod:`varprop._src.model.probe`), and tests each layer's forward and backward law with
the conditional test of :func:`varprop.layer_verdict`:

.. math::

    E_W[y^2] = \mathrm{Var}(w)\,\mathrm{op}(x^2, \mathbf 1), \qquad
    E_W[(\partial L/\partial x)^2] = c\,\mathrm{Var}(w)\,
        \mathrm{op}^\top\big((\partial L/\partial y)^2, \mathbf 1\big),

where Var(w) is the expected law's variance at the op's *true* fans (a conv's
``c_in k_h k_w / G`` and ``c_out k_h k_w / (G s_h s_w)``; an embedding's row length), the
sums run over exactly the taps of the real op (borders, strides, dilation, groups), and
c is 1, or ``1 - 2/n`` (``1 - 1/n``) when the layer's output is normalized by a
training-mode BatchNorm (LayerNorm) (``docs/model_laws.md``). Residual adds are reported
with the correlation of their branches; they are measured, not tested. Layers inside a
``lax.scan`` (``nnx.scan``, ``linen.scan`` over stacked block weights) are tested at every
iteration: one row each, ``blocks/conv1[3]`` (:mod:`varprop._src.model.loops`).

Example:
    >>> import jax, varprop
    >>> from flax import nnx
    >>> class Net(nnx.Module):
    ...     def __init__(self, rngs):
    ...         he = nnx.initializers.he_normal()
    ...         self.conv = nnx.Conv(8, 64, (3, 3), kernel_init=he, rngs=rngs)
    ...         self.head = nnx.Linear(64, 10, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.head(jax.nn.relu(self.conv(x)).mean(axis=(1, 2)))
    >>> x = jax.random.normal(jax.random.key(0), (16, 12, 12, 8))
    >>> r = varprop.check_model(lambda rngs: Net(rngs), x)
    >>> r.verdict, [(row.path, row.direction, row.verdict) for row in r.layers][:2]
    ('agrees', [('conv', 'forward', 'agrees'), ('conv', 'backward', 'agrees')])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from varprop._src.errors import InputError
from varprop._src.formatting import fmt as _fmt
from varprop._src.model.expected import (
    expected_law,
    law_for,
    require_layers,
    row_paths,
    trace_model,
)
from varprop._src.model.loops import base_path, group_key
from varprop._src.model.probe import make_model_probe, model_args
from varprop._src.model.result import ModelCheckResult, ModelRow
from varprop._src.model.rows import describe_iterations, health, layer_path, model_rows
from varprop._src.model.trace import residual_branches
from varprop._src.verdicts import overall_verdict

__all__ = ["ModelCheckResult", "ModelRow", "check_model"]

MODES = ("train", "eval", None)


# ----------------------------------------------------------------------------------------
# Inputs, laws.
# ----------------------------------------------------------------------------------------


# The check.
# ----------------------------------------------------------------------------------------


def check_model(
    model: Any,
    inputs: Any,
    *,
    variables: Any = None,
    expect: Mapping[str, Any] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    loss: Callable[[Any], jax.Array] | None = None,
    rngs: Sequence[str] | None = None,
    mode: str | None = "train",
    reinit: bool = True,
    seeds: int = 4,
    max_seeds: int = 64,
    seed: int = 0,
    tolerance: float = 0.1,
    alpha: float = 0.05,
    progress: Callable[[str], None] | None = None,
) -> ModelCheckResult:
    """Check every layer of a Flax model against its law, given its actual input.

    Args:
        model: an ``nnx.Module``; a factory returning one (``lambda rngs: Model(...,
            rngs=rngs)`` or a zero-argument callable: then each seed redraws the weights
            with the model's own initializers, seen while it is built); or a
            ``flax.linen.Module`` (with ``variables``, or ``None``: ``model.init`` is run
            and its initializers are seen).
        inputs: an array, a tuple of arrays (positional arguments), or a callable
            ``key -> batch`` (a fresh batch per seed). Integer token ids are fine.
        variables: Linen variables to check as given.
        expect: ``{glob: SPEC or initializer}`` per layer path (``"*/conv*"``), overriding
            the layer's own initializer as the law to test.
        call_kwargs: keyword arguments for the model call (``{"train": True}``).
        loss: ``outputs -> scalar`` whose gradient is the backward signal (default: a
            Gaussian cotangent on every output, E[(dL/d out)^2] = 1).
        rngs: the RNG streams a Linen model's call needs besides ``params`` (default
            ``("dropout",)``); each seed gets its own keys. NNX models carry their own
            ``nnx.Rngs``.
        mode: ``"train"`` (default: batch statistics, dropout on), ``"eval"``, or ``None``
            (as the model is). NNX: ``.train()``/``.eval()`` on a copy; Linen: the
            ``train`` argument when ``__call__`` has one.
        reinit: redraw the weights per seed with their own initializers (when they are
            known); ``False``: one draw, the weights as given, verdicts from the spread
            across units alone.
        seeds, max_seeds, seed, tolerance, alpha: as :func:`varprop.check`.
        progress: called with a one-line message after every round.

    The model and its variables are never mutated.
    """
    from varprop._src.check import look_alpha_shares, look_schedule

    if mode not in MODES:
        raise InputError(
            f"mode={mode!r}; allowed: 'train', 'eval' or None", kind="usage", param="mode"
        )
    for name, v, lo in (("seeds", seeds, 1), ("max_seeds", max_seeds, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(
                f"{name}={v!r} must be a whole number >= {lo}", kind="usage", param=name
            )
    if not 0 < tolerance < 10 or not 0 < alpha < 1:
        raise InputError(
            f"tolerance={tolerance!r}, alpha={alpha!r}; allowed: 0 < tolerance < 10, 0 < alpha < 1",
            kind="usage",
            param="tolerance" if not 0 < tolerance < 10 else "alpha",
        )
    base = jax.random.key(seed)
    args0 = model_args(inputs, jax.random.fold_in(base, 10**6))
    mf, found = trace_model(
        model, args0, variables=variables, mode=mode, call_kwargs=call_kwargs, rngs=rngs
    )
    require_layers(found)
    paths = row_paths(found)
    laws = []
    notes = list(mf.notes)
    for site, path in zip(found.layers, paths, strict=True):
        init, _source = law_for(site, path, mf, expect)
        laws.append((None, "") if init is None else (expected_law(init, site), repr(init)))
        if site.kind == "embed" and init is not None:
            from varprop._src.laws.model_ops import embedding_fan_warning

            fi, _ = init.scheme.fans(site.w_shape) if init.scheme.uses_fans else (0, 0)
            w = embedding_fan_warning(fi, site.w_shape[0], int(site.fan_out))
            if w:
                notes.append(f"{path}: {w}")
    redraw = reinit and mf.redrawable
    if reinit and not mf.redrawable:
        notes.append(
            "reinit=True but no initializer of this model is known: one draw, the weights as given"
        )
    if not redraw:
        seeds, max_seeds = 1, 1
    with_mean = frozenset(
        s.index
        for s, (lw, _) in zip(found.layers, laws, strict=True)
        if lw is not None and lw.mean != 0
    )
    probe = make_model_probe(
        mf,
        found,
        inputs if callable(inputs) else args0,
        redraw=redraw,
        with_mean=with_mean,
        loss=loss,
    )
    # Branches that start as the identity: a zero normalization scale, or a branch's last
    # layer with zero weights (Fixup, SkipInit): their zero rows are not a dying network.
    zero_scales = [
        layer_path(p)
        for p, v in zip(mf.paths, mf.params, strict=True)
        if p.rsplit("/", 1)[-1] == "scale" and np.all(np.asarray(v) == 0)
    ]
    branch_ends, _ = residual_branches(found)
    zero_scales += [
        paths[i]
        for i in sorted(branch_ends)
        if np.all(np.asarray(mf.params[found.layers[i].param]) == 0)
    ]
    looks = look_schedule(seeds, max_seeds) if redraw else [1]
    shares = look_alpha_shares(len(looks))
    stats = None
    total = rnd = 0
    rows: list[ModelRow] = []
    verdict = "inconclusive"
    while total < looks[-1]:
        keys = jax.random.split(jax.random.fold_in(base, rnd), seeds)
        new = jax.tree.map(np.asarray, probe(keys))
        stats = (
            new if stats is None else jax.tree.map(lambda a, b: np.concatenate([a, b]), stats, new)
        )
        total += seeds
        rnd += 1
        if total not in looks:
            continue
        share = shares[looks.index(total)]
        rows = model_rows(
            found,
            paths,
            laws,
            stats,
            tolerance,
            alpha * share,
            alpha * shares[-1],
            zero_scales,
            mf.paths,
        )
        verdict = overall_verdict([r.verdict for r in rows])
        if progress is not None:
            open_rows = sum(r.verdict == "inconclusive" for r in rows)
            progress(f"round {rnd}: {total} seeds, {open_rows} of {len(rows)} rows inconclusive")
        if verdict != "inconclusive":
            break
        # Stop early when the rows left open need more seeds than the budget allows.
        need = [r.seeds_needed for r in rows if r.verdict == "inconclusive"]
        if need and all(n is not None and n > max_seeds for n in need):
            break
    sizes = {
        p: {"forward": site.y_shape, "backward": site.x_shape}
        for site, p in zip(found.layers, paths, strict=True)
    }
    state = health(rows, sizes, zero_scales)
    diagnosis = notes + _disagreements(rows)
    if zero_scales:
        diagnosis.append(
            "branches that start as the identity (zero scale): " + ", ".join(zero_scales)
        )
    if found.skipped:
        diagnosis.append(
            f"layers inside {', '.join(sorted(set(found.skipped)))} are not tapped "
            "(loops are not unrolled)"
        )
    diagnosis += [f"degenerate: {d}" for d in state["degenerate"]]
    config = {
        "framework": mf.framework,
        "mode": mode,
        "reinit": redraw,
        "tolerance": tolerance,
        "alpha": alpha,
        "seed": seed,
        "layers": len(found.layers),
        "merges": len(found.merges),
        "scans": [lp.length for lp in found.loops],
    }
    return ModelCheckResult(verdict, total, rows, state, diagnosis, config)


def _disagreements(rows: list[ModelRow]) -> list[str]:
    """One line per disagreeing row; the iterations of one site in a scan in one line when
    more than three disagree (their ratios' range, and which iterations)."""
    bad = [r for r in rows if r.verdict == "disagrees" and r.ratio is not None]
    groups: dict[tuple[str, str], list[ModelRow]] = {}
    for r in bad:
        key = (group_key(r.path) if r.iteration else r.path, r.direction)
        groups.setdefault(key, []).append(r)
    out = []
    for (_, direction), rs in groups.items():
        r = rs[0]
        if len(rs) <= 3:
            out += [
                f"{x.path} ({x.direction}): measured/predicted {x.ratio:.3g} "
                f"[{_fmt(x.ratio_low, 3)}, {_fmt(x.ratio_high, 3)}] against {x.law}"
                for x in rs
            ]
            continue
        ratios = [x.ratio for x in rs if x.ratio is not None]
        of = sum(
            1
            for x in rows
            if x.iteration and group_key(x.path) == group_key(r.path) and x.direction == direction
        )
        out.append(
            f"{base_path(r.path)}{describe_iterations(rs)} ({direction}): {len(rs)} of {of} iterations "
            f"disagree, measured/predicted {min(ratios):.3g} to {max(ratios):.3g} against "
            f"{r.law}"
        )
    return out

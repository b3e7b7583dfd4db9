"""Benchmark varprop.solve_init against anyinit 0.4's solved scales on the same Linen models.

For each Linen example model (small default sizes, one fixed batch), in one process:

timing
    varprop: ``solve_init(model, x, target="forward", variables=v)`` then
    ``apply_init(v, inits, key)`` (waited for with ``jax.block_until_ready``); the two parts
    are timed separately and reported as their sum. anyinit: ``anyinit.initialize(model,
    "analytic", x, params=v, seed=s)``, its data-free mode (with a batch it also runs one
    instrumented validation forward pass, which is part of the call); ``report.params`` is
    waited for. The first call of each (varprop first) is reported on its own ("cold":
    it includes compiling the ops' shapes); then ``--repeats`` calls of each, interleaved
    (varprop, anyinit, varprop, ...), and their medians ("warm") and varprop/anyinit.
moments
    For three inits -- Flax's default (``model.init``), varprop's solved scales drawn by
    ``apply_init`` and anyinit's output (``report.params``) -- ``--draws`` draws each
    (``model.init(key(1 + d))``; ``apply_init(v, inits, key(100 + d))``;
    ``initialize(..., seed=100 + d)``), each measured by ``varprop.check_model(model, x,
    variables=draw, reinit=False)`` (train mode: batch statistics; a Gaussian cotangent
    on the outputs). Its rows' ``.measured`` give each layer's forward E[y^2] and backward
    E[(dL/dx)^2]; they are averaged over the draws. Reported per direction, over the dense
    and conv rows whose mean is not exactly 0 (as check_model's health):

    * spread: the largest max/min ratio within a group of layers of the same shape
      (output shape forward, input shape backward, as the layers are traced), over the
      groups of two or more ("—": no such group);
    * change: the moment compounded between consecutive layers of equal shape (the
      health's rule: forward later/earlier, backward earlier/later), and its steps;
    * first->last (JSON only): the raw ratio last/first (forward) or first/last
      (backward), across shapes, so pooling's rescaling is in it;
    * check_model's ``health[direction]["state"]`` of every draw.

anyinit's per-layer fans, scales, warnings and whatever it rewrites besides kernels (norm
scales, biases) are kept in the JSON; an exception from it is recorded, not raised. It is
also handed the NNX twin of each model (``varprop.example_models.<name>``) once, and what
it says is recorded.

anyinit is not a varprop dependency: ``pip install -e .[bench]`` (or ``pip install
anyinit==0.4.0``). Without it the anyinit columns say why and the rest still runs.

Run alone if you can (the machine has 2 cores), from the repository root, venv active::

    python scripts/bench_solve_init.py                        # all five models
    python scripts/bench_solve_init.py --models resnet,mobilenet --repeats 15 --draws 3
    python scripts/bench_solve_init.py --quick --json out.json  # one model, 3 repeats, 1 draw

``--quick``: ``resnet_nonorm`` only (unless ``--models``), 3 repeats, 1 draw. ``--json
FILE`` writes the raw figures (``-``: stdout, instead of the tables).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_common import fmt, median, ratio

MODELS = ("cnn", "resnet", "resnet_nonorm", "mobilenet", "transformer")
QUICK_MODEL = "resnet_nonorm"
INITS = ("flax", "varprop", "anyinit")
DIRECTIONS = ("forward", "backward")
MNIST_BATCH = (16, 28, 28, 1)
IMAGE_BATCH = (16, 32, 32, 3)
TOKEN_BATCH = (8, 64)
VOCAB = 256
ANYINIT_VERSION = "0.4.0"
FORMAT = 1

# --------------------------------------------------------------------- pure helpers


def fmt_g(x: float | None) -> str:
    """A factor in 3 significant digits (``1.23``, ``45.6``, ``2.1e-05``), or an em dash."""
    if x is None:
        return "—"
    if x == 0 or not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None
) -> str:
    """A Markdown table; ``align`` has one ``l`` or ``r`` per column (default: the first
    column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} does not have {len(header)} columns")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells, header {len(header)}")
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parse_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


Layer = tuple[str, tuple[int, ...], float]  # (path, shape, measured E[.^2])


def spread(layers: Sequence[Layer]) -> dict[str, Any]:
    """The largest max/min ratio of the moments within a group of layers of equal shape.

    Layers whose moment is 0 (an identity branch's, at init) are left out and counted.
    ``max_over_min`` is None when no shape has two layers or more.
    """
    groups: dict[tuple[int, ...], list[tuple[str, float]]] = {}
    zero = 0
    for path, shape, m in layers:
        if m == 0:
            zero += 1
            continue
        groups.setdefault(tuple(shape), []).append((path, m))
    worst: dict[str, Any] = {"max_over_min": None, "shape": None, "max": None, "min": None}
    for shape, members in groups.items():
        if len(members) < 2:
            continue
        hi = max(members, key=lambda pm: pm[1])
        lo = min(members, key=lambda pm: pm[1])
        r = hi[1] / lo[1]
        if worst["max_over_min"] is None or r > worst["max_over_min"]:
            worst = {"max_over_min": r, "shape": list(shape), "max": hi[0], "min": lo[0]}
    worst["groups"] = sum(len(m) >= 2 for m in groups.values())
    worst["zero_rows"] = zero
    return worst


def compounded(layers: Sequence[Layer], direction: str) -> dict[str, Any]:
    """The moment compounded between consecutive layers (in model order) of equal shape,
    as ``check_model``'s health compounds it: forward later/earlier, backward
    earlier/later (the gradient's way); layers whose moment is 0 are left out."""
    rs = [(shape, m) for _, shape, m in layers if m != 0]
    log_change, steps = 0.0, 0
    for (sa, a), (sb, b) in itertools.pairwise(rs):
        if tuple(sa) != tuple(sb):
            continue
        log_change += math.log(b / a) if direction == "forward" else math.log(a / b)
        steps += 1
    return {"change": math.exp(log_change), "steps": steps}


def first_to_last(layers: Sequence[Layer], direction: str) -> float | None:
    """Last/first (forward) or first/last (backward) moment, whatever the shapes; layers
    whose moment is 0 left out; None with fewer than two."""
    ms = [m for _, _, m in layers if m != 0]
    if len(ms) < 2:
        return None
    return ms[-1] / ms[0] if direction == "forward" else ms[0] / ms[-1]


def states_label(states: Sequence[str]) -> str:
    """``["preserved", "preserved"]`` -> ``"preserved"``; mixed -> ``"preserved ×1,
    vanishing ×1"``; none -> an em dash."""
    if not states:
        return "—"
    counts = {s: states.count(s) for s in dict.fromkeys(states)}
    if len(counts) == 1:
        return states[0]
    return ", ".join(f"{s} ×{n}" for s, n in counts.items())


def summarize(layers: Sequence[Layer], direction: str, states: Sequence[str]) -> dict[str, Any]:
    """Spread, compounded change, first->last ratio, range (min, max over every shape; 0
    left out) and the health states of one direction."""
    ms = [m for _, _, m in layers if m != 0]
    return {
        "spread": spread(layers),
        "compounded": compounded(layers, direction),
        "first_to_last": first_to_last(layers, direction),
        "range": [min(ms), max(ms)] if ms else None,
        "health": list(states),
    }


def timing_table(rows: Sequence[dict]) -> str:
    """One line per model: cold and warm times of each solver and their warm ratio."""
    out = []
    for r in rows:
        v, a = r["timing"]["varprop"], r["timing"]["anyinit"]
        ok = "error" not in a and "skipped" not in a
        out.append(
            [
                r["model"],
                str(r["layers"]),
                fmt(v["cold_s"], 2),
                fmt(v["median_s"], 3),
                fmt(v["solve_median_s"], 3),
                fmt(a.get("cold_s"), 2) if ok else "—",
                fmt(a.get("median_s"), 3) if ok else _short(a),
                fmt(r["timing"]["ratio"], 2),
            ]
        )
    return markdown_table(
        [
            "model",
            "layers",
            "varprop cold (s)",
            "varprop warm (s)",
            "of which solve (s)",
            "anyinit cold (s)",
            "anyinit warm (s)",
            "varprop/anyinit",
        ],
        out,
    )


def _short(a: dict) -> str:
    if "skipped" in a:
        return "skipped"
    return "error: " + a["error"].split(":")[0]


def moments_table(rows: Sequence[dict]) -> str:
    """One line per model and init: the forward moments' range, then spread and compounded
    change of each direction, and the health."""
    out = []
    for r in rows:
        for init in INITS:
            m = r["moments"][init]
            if "skipped" in m or "error" in m:
                why = "skipped" if "skipped" in m else m["error"].split(":")[0] + " (notes)"
                out.append([r["model"], init, *(["—"] * 5), f"not measured: {why}"])
                continue
            lo_hi = m["forward"]["range"]
            cells = ["—" if lo_hi is None else f"{fmt_g(lo_hi[0])}–{fmt_g(lo_hi[1])}"]
            for d in DIRECTIONS:
                s = m[d]
                c = s["compounded"]
                change = f"{fmt_g(c['change'])} ({c['steps']})" if c["steps"] else "— (0)"
                cells += [fmt_g(s["spread"]["max_over_min"]), change]
            health = "; ".join(states_label(m[d]["health"]) for d in DIRECTIONS)
            out.append([r["model"], init, *cells, health])
    return markdown_table(
        [
            "model",
            "init",
            "fwd range",
            "fwd spread",
            "fwd change (steps)",
            "bwd spread",
            "bwd change (steps)",
            "health fwd; bwd",
        ],
        out,
        "llrrrrrl",
    )


def anyinit_notes(rows: Sequence[dict]) -> list[str]:
    """One line per finding about anyinit on a model (errors, rewrites, wrong fans)."""
    notes = []
    for r in rows:
        a = r.get("anyinit_output") or {}
        name = r["model"]
        if "error" in r["timing"]["anyinit"]:
            notes.append(f"{name}: anyinit raised {r['timing']['anyinit']['error']}")
        if a.get("graph_fidelity"):
            notes.append(f"{name}: graph fidelity {a['graph_fidelity']!r}")
        if a.get("zero_scales_made_nonzero"):
            notes.append(
                f"{name}: zero-initialized norm scales set nonzero: "
                + ", ".join(a["zero_scales_made_nonzero"])
            )
        if a.get("norm_scales_rewritten"):
            vals = sorted({round(v, 4) for v in a["norm_scales_rewritten"].values()})
            notes.append(
                f"{name}: {len(a['norm_scales_rewritten'])} norm scales rewritten (to {vals})"
            )
        for f in a.get("fan_mismatch", []):
            notes.append(
                f"{name}: {f['path']} scaled for fan_in {f['anyinit_fan']:g}, "
                f"the layer's is {f['fan_in']:g}"
            )
        for w in a.get("warnings", []):
            if "recovers call order" not in w and "supplied batch" not in w:
                notes.append(f"{name}: warning: {w}")
    # The NNX twins: one line per exception type, with the first model's message.
    nnx: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    for r in rows:
        said = (r.get("anyinit_nnx") or {}).get("error")
        if said:
            kind = said.split(":")[0]
            nnx.setdefault(kind, []).append(r["model"])
            first.setdefault(kind, said)
    notes += [f"NNX twins of {', '.join(ms)}: {first[k]}" for k, ms in nnx.items()]
    return notes


# --------------------------------------------------------------------- setup


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on this platform
        return None


def _git(where: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def varprop_source() -> dict[str, Any]:
    """The commit of the varprop imported, and whether its package files differ from it
    (``None`` when it is not in a git checkout)."""
    import varprop

    pkg = Path(varprop.__file__).resolve().parent
    commit = _git(pkg, "rev-parse", "HEAD")
    status = _git(pkg, "status", "--porcelain", "--", ".")
    return {"commit": commit, "package_modified": None if status is None else bool(status)}


def build(name: str) -> dict[str, Any]:
    """The Linen model, its fixed batch, Flax's default variables and its NNX twin's
    factory."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from varprop import example_models as em

    key = jax.random.key(0)
    if name == "cnn":
        model, nnx_f = em.cnn_linen(), lambda: em.cnn(rngs=nnx.Rngs(0))
        x = jax.random.normal(key, MNIST_BATCH, jnp.float32)
    elif name in ("resnet", "resnet_nonorm"):
        norm = name == "resnet"
        model = em.resnet_linen(norm=norm)
        nnx_f = lambda: em.resnet(norm=norm, rngs=nnx.Rngs(0))  # noqa: E731
        x = jax.random.normal(key, IMAGE_BATCH, jnp.float32)
    elif name == "mobilenet":
        model, nnx_f = em.mobilenet_linen(), lambda: em.mobilenet(rngs=nnx.Rngs(0))
        x = jax.random.normal(key, IMAGE_BATCH, jnp.float32)
    elif name == "transformer":
        model, nnx_f = em.transformer_linen(), lambda: em.transformer(rngs=nnx.Rngs(0))
        x = jax.random.randint(key, TOKEN_BATCH, 0, VOCAB, dtype=jnp.int32)
    else:
        raise ValueError(f"unknown model {name!r}")
    return {"model": model, "x": x, "variables": model.init(jax.random.key(1), x), "nnx": nnx_f}


def trace_layers(model: Any, x: Any, variables: Any) -> dict[str, dict[str, Any]]:
    """``{path: {"forward": output shape, "backward": input shape, "fan_in": n}}`` of every
    layer, as ``check_model`` traces and names them (its health compares these shapes)."""
    from varprop._src.model.expected import row_paths, trace_model

    _, found = trace_model(
        model, (x,), variables=variables, mode="train", call_kwargs=None, rngs=None
    )
    return {
        p: {
            "forward": list(s.y_shape),
            "backward": list(s.x_shape),
            "fan_in": None if s.fan_in is None else float(s.fan_in),
        }
        for s, p in zip(found.layers, row_paths(found), strict=True)
    }


def _leaf(variables: Any, path: str) -> Any:
    node = variables["params"]
    for part in path.split("#")[0].split("/"):
        node = node[part]
    return node["kernel"] if "kernel" in node else node["embedding"]


def weight_stds(variables: Any, paths: Sequence[str]) -> dict[str, float]:
    """The empirical std of each layer's kernel (or embedding table)."""
    import numpy as np

    return {p: float(np.std(np.asarray(_leaf(variables, p)))) for p in paths}


# --------------------------------------------------------------------- the solvers


def run_varprop(model: Any, x: Any, variables: Any, key: Any) -> tuple[Any, Any, float, float]:
    """``(inits, new variables, solve seconds, apply seconds)``."""
    import jax

    import varprop

    t0 = time.perf_counter()
    inits = varprop.solve_init(model, x, target="forward", variables=variables)
    t1 = time.perf_counter()
    new = jax.block_until_ready(varprop.apply_init(variables, inits, key))
    return inits, new, t1 - t0, time.perf_counter() - t1


def run_anyinit(anyinit: Any, model: Any, x: Any, variables: Any, seed: int) -> tuple[Any, float]:
    """``(report, seconds)`` of anyinit's data-free solve on the Linen model."""
    import jax

    t0 = time.perf_counter()
    report = anyinit.initialize(model, "analytic", x, params=variables, seed=seed)
    jax.block_until_ready(report.params)
    return report, time.perf_counter() - t0


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def anyinit_output(report: Any, before: Any, fan_in: dict[str, float | None]) -> dict[str, Any]:
    """What anyinit said and did: fidelity, warnings, per-layer fans and scales, the norm
    scales and biases it rewrote, and the layers whose fan it took differently from the
    traced layer's."""
    import numpy as np
    from flax.traverse_util import flatten_dict

    old = {"/".join(map(str, k)): np.asarray(v) for k, v in flatten_dict(dict(before)).items()}
    new = {
        "/".join(map(str, k)): np.asarray(v) for k, v in flatten_dict(dict(report.params)).items()
    }
    scales: dict[str, float] = {}
    zero_made_nonzero = []
    biases_zeroed = []
    for k, v in new.items():
        o = old.get(k)
        if o is None or o.shape != v.shape or np.array_equal(o, v):
            continue
        if k.startswith("params/") and k.endswith("/scale"):
            scales[k.removeprefix("params/").removesuffix("/scale")] = float(np.mean(v))
            if np.all(o == 0) and np.any(v != 0):
                zero_made_nonzero.append(k.removeprefix("params/").removesuffix("/scale"))
        elif k.endswith("/bias") and np.all(v == 0):
            biases_zeroed.append(k.removeprefix("params/"))
    layers = [
        {
            "name": rec.name,
            "kind": rec.kind,
            "activation": rec.activation,
            "fan": rec.fan,
            "scale": rec.scale,
            "is_gain": rec.is_gain,
            "predicted": rec.predicted,
            "measured": rec.measured,
        }
        for rec in report.layers
    ]
    mismatch = [
        {"path": rec.name, "anyinit_fan": rec.fan, "fan_in": fan_in[rec.name]}
        for rec in report.layers
        if rec.fan is not None
        and fan_in.get(rec.name) is not None
        and not math.isclose(rec.fan, fan_in[rec.name])
    ]
    return {
        "graph_fidelity": report.graph_fidelity,
        "converged": report.converged,
        "iterations": report.iterations,
        "objective_error": report.objective_error,
        "warnings": list(report.warnings),
        "validation_error": report.validation_error,
        "unscaled": [list(u) for u in report.unscaled],
        "layers": layers,
        "norm_scales_rewritten": scales,
        "zero_scales_made_nonzero": zero_made_nonzero,
        "biases_zeroed": biases_zeroed,
        "fan_mismatch": mismatch,
    }


# --------------------------------------------------------------------- one model


def measure(
    model: Any, x: Any, draws: Sequence[Any], layers: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """check_model on every draw: per-layer moments (each draw, and their mean), the
    summaries of each direction, and the health of each draw."""
    import varprop

    per: dict[tuple[str, str], dict[str, Any]] = {}
    health: dict[str, list[str]] = {d: [] for d in DIRECTIONS}
    changes: dict[str, list[float]] = {d: [] for d in DIRECTIONS}
    degenerate: list[list[str]] = []
    seconds = []
    for v in draws:
        t0 = time.perf_counter()
        res = varprop.check_model(model, x, variables=v, reinit=False)
        seconds.append(time.perf_counter() - t0)
        for r in res.layers:
            if r.kind not in ("dense", "conv", "embed") or r.measured is None:
                continue
            rec = per.setdefault(
                (r.path, r.direction),
                {"path": r.path, "kind": r.kind, "direction": r.direction, "measured": []},
            )
            rec["measured"].append(float(r.measured))
        for d in DIRECTIONS:
            health[d].append(res.health[d]["state"])
            changes[d].append(res.health[d]["change"])
        degenerate.append(list(res.health.get("degenerate", [])))
    rows = []
    for rec in per.values():
        rec["shape"] = layers[rec["path"]][rec["direction"]]
        rec["mean"] = float(sum(rec["measured"]) / len(rec["measured"]))
        rows.append(rec)
    out: dict[str, Any] = {"rows": rows, "check_model_s": seconds, "degenerate": degenerate}
    for d in DIRECTIONS:
        seq = [
            (r["path"], tuple(r["shape"]), r["mean"])
            for r in rows
            if r["direction"] == d and r["kind"] in ("dense", "conv")
        ]
        out[d] = summarize(seq, d, health[d])
        out[d]["health_change"] = changes[d]
    return out


def bench_model(name: str, repeats: int, draws: int, anyinit: Any, why_not: str | None) -> dict:
    import jax

    import varprop

    load = _load()
    b = build(name)
    model, x, v0 = b["model"], b["x"], b["variables"]
    base = jax.random.key(7)

    # Timing: varprop's and anyinit's first calls, then interleaved repeats.
    inits, _, s, a = run_varprop(model, x, v0, jax.random.fold_in(base, 0))
    vp: dict[str, Any] = {"cold_s": s + a, "cold_solve_s": s, "solve_s": [], "apply_s": []}
    an: dict[str, Any] = {"skipped": why_not} if anyinit is None else {"times_s": []}
    report = None
    if anyinit is not None:
        try:
            report, t = run_anyinit(anyinit, model, x, v0, 0)
            an["cold_s"] = t
        except Exception as e:
            an = {"error": _error(e)}
    for i in range(1, repeats + 1):
        _, _, s, a = run_varprop(model, x, v0, jax.random.fold_in(base, i))
        vp["solve_s"].append(s)
        vp["apply_s"].append(a)
        if report is not None:
            _, t = run_anyinit(anyinit, model, x, v0, i)
            an["times_s"].append(t)
    vp["times_s"] = [s + a for s, a in zip(vp["solve_s"], vp["apply_s"], strict=True)]
    vp["median_s"] = median(vp["times_s"])
    vp["solve_median_s"] = median(vp["solve_s"])
    if report is not None:
        an["median_s"] = median(an["times_s"])
    timing = {
        "varprop": vp,
        "anyinit": an,
        "ratio": ratio(vp["median_s"], an.get("median_s")),
        "ratio_cold": ratio(vp["cold_s"], an.get("cold_s")),
    }
    print(
        f"  {name}: varprop {vp['median_s']:.3f} s (cold {vp['cold_s']:.2f}), anyinit "
        + (f"{an['median_s']:.3f} s (cold {an['cold_s']:.2f})" if report else _short(an)),
        file=sys.stderr,
    )

    # The moments of each init.
    layers = trace_layers(model, x, v0)
    paths = list(layers)
    solved_std = {p: math.sqrt(float(i.scheme.variance_for_fans(1, 1))) for p, i in inits.items()}
    sets: dict[str, Any] = {
        "flax": [v0] + [model.init(jax.random.key(1 + d), x) for d in range(1, draws)],
        "varprop": [
            jax.block_until_ready(varprop.apply_init(v0, inits, jax.random.key(100 + d)))
            for d in range(draws)
        ],
    }
    if report is None:
        sets["anyinit"] = {"skipped": why_not} if anyinit is None else {"error": an["error"]}
    else:
        sets["anyinit"] = [
            anyinit.initialize(model, "analytic", x, params=v0, seed=100 + d).params
            for d in range(draws)
        ]
    moments: dict[str, Any] = {}
    for init in INITS:
        got = sets[init]
        if isinstance(got, dict):
            moments[init] = got
            continue
        try:
            moments[init] = measure(model, x, got, layers)
        except Exception as e:  # record, do not crash: the other inits still count
            moments[init] = {"error": _error(e)}
            continue
        moments[init]["weight_std"] = weight_stds(got[0], paths)
        print(
            f"  {name} {init}: health "
            + "; ".join(states_label(moments[init][d]["health"]) for d in DIRECTIONS),
            file=sys.stderr,
        )
    nnx_probe: dict[str, Any] = {"skipped": why_not} if anyinit is None else {}
    if anyinit is not None:
        try:
            anyinit.initialize(b["nnx"](), "analytic", x)
            nnx_probe["result"] = "accepted"
        except Exception as e:
            nnx_probe["error"] = _error(e)
    fan_in = {p: rec["fan_in"] for p, rec in layers.items()}
    return {
        "model": name,
        "inputs": [list(x.shape), str(x.dtype)],
        "layers": len(layers),
        "repeats": repeats,
        "draws": draws,
        "loadavg_at_start": load,
        "loadavg_at_end": _load(),
        "timing": timing,
        "varprop_solved_std": solved_std,
        "moments": moments,
        "anyinit_output": None if report is None else anyinit_output(report, v0, fan_in),
        "anyinit_nnx": nnx_probe,
    }


# --------------------------------------------------------------------- main


def run_record(argv: Sequence[str]) -> dict:
    import jax

    import varprop

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": list(argv),
        "backend": jax.default_backend(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": _load(),
        },
        "versions": {
            "jax": _version("jax"),
            "jaxlib": _version("jaxlib"),
            "flax": _version("flax"),
            "varprop": getattr(varprop, "__version__", _version("varprop")),
            "anyinit": _version("anyinit"),
        },
        "varprop_source": varprop_source(),
    }


def import_anyinit() -> tuple[Any, str | None]:
    """``(module, None)``, or ``(None, why)`` when it cannot be imported."""
    try:
        import anyinit
    except Exception as e:
        return None, f"import anyinit failed ({_error(e)}); pip install anyinit=={ANYINIT_VERSION}"
    if getattr(anyinit, "__version__", None) != ANYINIT_VERSION:
        print(f"note: anyinit {anyinit.__version__}, not {ANYINIT_VERSION}", file=sys.stderr)
    return anyinit, None


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_MODEL} only, 3 repeats")
    ap.add_argument("--repeats", type=int, help="timed calls per solver (default 9; quick 3)")
    ap.add_argument("--draws", type=int, help="draws measured per init (default 3; quick 1)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON ('-': stdout)")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)

    models = parse_list(args.models) if args.models else ([QUICK_MODEL] if args.quick else MODELS)
    bad = sorted(set(models) - set(MODELS))
    if bad or not models:
        ap.error(f"--models: unknown {bad}; choose from {','.join(MODELS)}")
    repeats = args.repeats or (3 if args.quick else 9)
    draws = args.draws or (1 if args.quick else 3)
    if repeats < 1 or draws < 1:
        ap.error("--repeats and --draws must be >= 1")

    anyinit, why_not = import_anyinit()
    if why_not:
        print(f"anyinit columns skipped: {why_not}", file=sys.stderr)
    out: dict = {"format": FORMAT, "run": run_record(argv), "rows": []}
    for name in models:
        out["rows"].append(bench_model(name, repeats, draws, anyinit, why_not))
    out["run"]["loadavg_at_end"] = _load()

    text = json.dumps(out, indent=2, allow_nan=False, default=_jsonable)
    if args.json == "-":
        print(text)
        return out
    report(out, print)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
        print(f"wrote {args.json}")
    return out


def _jsonable(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def report(out: dict, emit: Callable[[str], None]) -> None:
    """The tables and notes of a run."""
    rows, rec = out["rows"], out["run"]
    emit(f"\n### Time to solved weights (median of {rows[0]['repeats']} warm calls)\n")
    emit(timing_table(rows))
    emit(f"\n### Per-layer second moments ({rows[0]['draws']} draw(s) per init, averaged)\n")
    emit(moments_table(rows))
    notes = anyinit_notes(rows)
    if notes:
        emit("\nanyinit:\n" + "\n".join(f"- {n}" for n in notes))
    emit(
        f"\n{rec['date']}, backend {rec['backend']}, {rec['machine']['cpu_count']} CPUs, "
        f"load {rec['machine']['loadavg_at_start']} -> {rec['loadavg_at_end']}, "
        f"versions {rec['versions']}, varprop source {rec['varprop_source']}"
    )


if __name__ == "__main__":
    main()

"""Benchmark check_model's probe against a plain forward+backward of the same Flax model.

For each example model (NNX, small default sizes) this measures, in one process, one round
of seeds (``--seeds``, default 4, as ``varprop.check_model``'s default) of:

probe
    ``make_model_probe(mf, found, inputs, redraw=True, with_mean=...)``, built exactly as
    ``varprop.check_model`` builds it (``as_model_function(model, inputs, mode="train")``,
    ``find_layers(..., data=(False, True, False))``, ``with_mean`` from each layer's law):
    per seed the parameters redrawn, the model run through the tapping jaxpr interpreter,
    its VJP with a Gaussian cotangent, every layer's forward and backward statistics.
baseline
    A plain jitted forward+backward of the same ``mf`` with the same structure: per seed
    ``mf.redraw(key)``, ``jax.vjp`` of ``mf.apply`` with respect to the parameters, a
    Gaussian cotangent on the outputs, the parameter gradients reduced to one scalar (sum
    of squares, so nothing is dead-code-eliminated); mapped over the seeds as the probe is
    (``jax.lax.map`` on the CPU, ``jax.vmap`` elsewhere).
baseline acts (extra columns)
    The same, but the VJP w.r.t. the float inputs (images), or for integer inputs (tokens)
    w.r.t. the embedding tables only: a backward pass through the activations with no
    weight gradient of any dense or conv layer. The probe differentiates w.r.t. zero
    perturbations of each layer's input and output, so it never computes the weight
    gradients the baseline does; on XLA:CPU a conv's weight gradient (above all a grouped
    or depthwise one) can cost more than the rest of the step, so this is the closer
    like-for-like reference for conv nets.

Both are lowered and compiled before timing (``lower`` = trace to StableHLO, ``compile`` =
XLA; the table's compile column is their sum); the runs are interleaved (probe, baseline,
probe, ...) after one untimed call each, each waited for with ``jax.block_until_ready``.
Reported: medians, probe/baseline ratios (the target of the issue: run ratio <= 1.3), and
the compiled programs' size (characters of ``compiled.as_text()``) and XLA's cost analysis
(flops, bytes accessed) where the backend gives them.

Inputs: images ``(16, 32, 32, 3)`` standard normal (resnet, mobilenet); int32 tokens
``(8, 64)`` uniform over the vocabulary (transformer). The same batch every seed.

Run alone if you can (the machine has 2 cores), from the repository root, venv active::

    python scripts/bench_check_model.py                          # resnet, mobilenet, transformer
    python scripts/bench_check_model.py --models transformer --repeats 15
    python scripts/bench_check_model.py --quick --json -          # smoke run, JSON on stdout

``--quick``: the transformer only (unless ``--models``), 3 repeats. ``--json FILE`` writes
the raw figures (``-``: stdout, instead of the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from bench_common import fmt, median, ratio

MODELS = ("resnet", "mobilenet", "transformer")
IMAGE_BATCH = (16, 32, 32, 3)
TOKEN_BATCH = (8, 64)
TARGET_RUN_RATIO = 1.3


# --------------------------------------------------------------------- pure helpers


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, every column but the first right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(rows: Sequence[dict]) -> str:
    """The table of the JSON rows: compile and run medians of each side, and the ratios."""
    return markdown_table(
        [
            "model",
            "layers",
            "compile probe (s)",
            "compile base (s)",
            "compile ratio",
            "run probe (ms)",
            "run base (ms)",
            "run ratio",
            f"<= {TARGET_RUN_RATIO}",
            "run base acts (ms)",
            "run ratio acts",
        ],
        [
            [
                r["model"],
                str(r["layers"]),
                fmt(r["probe"]["compile_s"], 2),
                fmt(r["baseline"]["compile_s"], 2),
                fmt(r["compile_ratio"], 2),
                fmt(r["probe"]["run_median_s"] * 1e3, 1),
                fmt(r["baseline"]["run_median_s"] * 1e3, 1),
                fmt(r["run_ratio"], 2),
                "yes" if r["run_ratio"] <= TARGET_RUN_RATIO else "no",
                fmt(r["baseline_acts"]["run_median_s"] * 1e3, 1),
                fmt(r["run_ratio_acts"], 2),
            ]
            for r in rows
        ],
    )


def parse_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


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


def build(name: str) -> tuple[Any, Any, tuple[Any, ...], frozenset[int]]:
    """``(mf, found, inputs, with_mean)`` for an example model, as ``check_model`` builds them."""
    import jax
    import jax.numpy as jnp

    from varprop import example_models
    from varprop._src.model import expected as cm

    factory = getattr(example_models, name)
    key = jax.random.key(10**6)
    if name == "transformer":
        inputs = (jax.random.randint(key, TOKEN_BATCH, 0, 256, dtype=jnp.int32),)
    else:
        inputs = (jax.random.normal(key, IMAGE_BATCH, jnp.float32),)
    mf, found = cm.trace_model(
        factory, inputs, variables=None, mode="train", call_kwargs=None, rngs=None
    )
    means = set()
    for site, path in zip(found.layers, cm.row_paths(found), strict=True):
        init, _ = cm.law_for(site, path, mf, None)
        if init is not None and cm.expected_law(init, site).mean != 0:
            means.add(site.index)
    return mf, found, inputs, frozenset(means)


def make_baseline(
    mf: Any, inputs: tuple[Any, ...], wrt: str = "params", found: Any = None
) -> Callable[[Any], Any]:
    """``baseline(keys) -> (seeds,)``: per seed redraw, forward, VJP with a Gaussian
    cotangent, sum of squares of the gradients; mapped over the seeds as the probe is.

    ``wrt="params"``: the VJP w.r.t. all parameters (the baseline of the table).
    ``wrt="acts"``: w.r.t. the float inputs, or (integer inputs) the parameters of the
    embedding layers of ``found``: a backward pass through the activations only, with no
    weight gradient of a dense or conv layer -- what the probe's VJP (w.r.t. zero
    perturbations of each layer's input and output) has to compute at the least."""
    import jax
    import jax.numpy as jnp

    float_in = [i for i, a in enumerate(inputs) if jnp.issubdtype(a.dtype, jnp.floating)]
    embeds = sorted({s.param for s in found.layers if s.kind == "embed"}) if found else []

    def one_seed(key):
        k_init, _k_data, k_cot, k_rng = jax.random.split(key, 4)
        params = mf.redraw(k_init)
        if wrt == "params":
            primal = params

            def f(p):
                return mf.apply(p, mf.state, inputs, k_rng)
        elif float_in:
            primal = [inputs[i] for i in float_in]

            def f(xs):
                a = list(inputs)
                for i, x in zip(float_in, xs, strict=True):
                    a[i] = x
                return mf.apply(params, mf.state, tuple(a), k_rng)
        else:
            primal = [params[i] for i in embeds]

            def f(ps):
                p = list(params)
                for i, x in zip(embeds, ps, strict=True):
                    p[i] = x
                return mf.apply(p, mf.state, inputs, k_rng)

        outs, pull = jax.vjp(f, primal)
        leaves, tree = jax.tree_util.tree_flatten(outs)
        ks = jax.random.split(k_cot, len(leaves))
        cots = [jax.random.normal(k, o.shape, o.dtype) for k, o in zip(ks, leaves, strict=True)]
        (grads,) = pull(jax.tree_util.tree_unflatten(tree, cots))
        return sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in grads)

    if jax.default_backend() == "cpu":
        return jax.jit(lambda keys: jax.lax.map(one_seed, keys))
    return jax.jit(jax.vmap(one_seed))


def _cost(compiled: Any) -> dict[str, float | None]:
    try:
        c = compiled.cost_analysis()
        c = c[0] if isinstance(c, list | tuple) else c
    except Exception:  # not every backend has one
        c = None
    c = c or {}
    return {"flops": c.get("flops"), "bytes_accessed": c.get("bytes accessed")}


def compile_fn(fn: Any, keys: Any) -> tuple[Any, dict]:
    """The compiled ``fn`` at ``keys``, and its lower/compile times, size and cost."""
    t = time.perf_counter()
    lowered = fn.lower(keys)
    t_lower = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    t_compile = time.perf_counter() - t
    rec = {
        "lower_s": t_lower,
        "xla_compile_s": t_compile,
        "compile_s": t_lower + t_compile,
        "hlo_chars": len(compiled.as_text()),
        **_cost(compiled),
    }
    return compiled, rec


def bench_model(name: str, seeds: int, repeats: int) -> dict:
    import jax

    from varprop._src.model.probe import make_model_probe

    load = _load()
    mf, found, inputs, with_mean = build(name)
    keys = jax.random.split(jax.random.key(0), seeds)
    probe = make_model_probe(mf, found, inputs, redraw=True, with_mean=with_mean)
    base = make_baseline(mf, inputs)
    cprobe, rp = compile_fn(probe, keys)
    cbase, rb = compile_fn(base, keys)
    cacts, ra = compile_fn(make_baseline(mf, inputs, "acts", found), keys)
    fns = (cprobe, cbase, cacts)
    for fn in fns:
        jax.block_until_ready(fn(keys))
    times: tuple[list[float], ...] = ([], [], [])
    for _ in range(repeats):  # interleaved: all see the same machine state
        for fn, ts in zip(fns, times, strict=True):
            t = time.perf_counter()
            jax.block_until_ready(fn(keys))
            ts.append(time.perf_counter() - t)
    tp, tb, ta = times
    rp.update(run_times_s=tp, run_median_s=median(tp))
    rb.update(run_times_s=tb, run_median_s=median(tb))
    ra.update(run_times_s=ta, run_median_s=median(ta))
    row = {
        "model": name,
        "inputs": [list(a.shape) for a in inputs],
        "seeds": seeds,
        "repeats": repeats,
        "layers": len(found.layers),
        "merges": len(getattr(found, "merges", ())),
        "params": len(mf.params),
        "with_mean": len(with_mean),
        "loadavg_at_start": load,
        "probe": rp,
        "baseline": rb,
        "baseline_acts": ra,
        "compile_ratio": ratio(rp["compile_s"], rb["compile_s"]),
        "run_ratio": ratio(rp["run_median_s"], rb["run_median_s"]),
        "run_ratio_pairwise_median": median([p / b for p, b in zip(tp, tb, strict=True)]),
        "run_ratio_acts": ratio(rp["run_median_s"], ra["run_median_s"]),
    }
    print(
        f"  {name}: compile {rp['compile_s']:.2f} s vs {rb['compile_s']:.2f} s; "
        f"run {rp['run_median_s'] * 1e3:.1f} ms vs {rb['run_median_s'] * 1e3:.1f} ms "
        f"(ratio {row['run_ratio']:.2f}); activations-only baseline "
        f"{ra['run_median_s'] * 1e3:.1f} ms (ratio {row['run_ratio_acts']:.2f})",
        file=sys.stderr,
    )
    return row


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
        },
    }


# --------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--quick", action="store_true", help="transformer only, 3 repeats")
    ap.add_argument("--repeats", type=int, help="timed runs per side (default 9; quick 3)")
    ap.add_argument("--seeds", type=int, default=4, help="seeds per round (default 4)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON ('-': stdout)")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)

    models = parse_list(args.models) if args.models else (["transformer"] if args.quick else MODELS)
    bad = sorted(set(models) - set(MODELS))
    if bad or not models:
        ap.error(f"--models: unknown {bad}; choose from {','.join(MODELS)}")
    repeats = args.repeats or (3 if args.quick else 9)
    if repeats < 1 or args.seeds < 1:
        ap.error("--repeats and --seeds must be >= 1")

    out: dict = {"run": run_record(argv), "target_run_ratio": TARGET_RUN_RATIO, "rows": []}
    for name in models:
        out["rows"].append(bench_model(name, args.seeds, repeats))
    out["run"]["loadavg_at_end"] = _load()

    if args.json == "-":
        print(json.dumps(out, indent=2))
        return out
    rec = out["run"]
    print(f"\n### check_model probe vs plain forward+backward, {args.seeds} seeds per round\n")
    print(results_table(out["rows"]))
    print(
        f"\n{rec['date']}, backend {rec['backend']}, {rec['machine']['cpu_count']} CPUs, "
        f"load {rec['machine']['loadavg_at_start']} -> {rec['loadavg_at_end']}, "
        f"versions {rec['versions']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()

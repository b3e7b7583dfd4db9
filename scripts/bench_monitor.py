"""Benchmark varprop's training monitor: a user's plain jitted train step against the same
step with the monitor, on the steps that do not record and on those that do.

For each model this compiles, in one process, four train steps (forward, backward, an
optax Adam update, on one fixed batch already on the device):

baseline
    The user's step: ``jax.jit`` of loss, ``value_and_grad``, ``tx.update``,
    ``optax.apply_updates`` (NNX: ``nnx.merge`` / ``nnx.Optimizer.update`` /
    ``nnx.state`` on the split state, the functional form of ``nnx.jit``).
monitored, four variants
    The same step with ``mstate = mon.record(mstate, model, x, y)``
    (``varprop._src.model.monitor``) called ``before`` the optimizer update (the statistics
    of the weights the gradient is taken at) or ``after`` it (of the weights the step
    returns), and ``after+updates``: ``after`` with the optimizer also wrapped by
    ``mon.track_updates`` (‖ΔW‖ and ‖W‖ per kernel). ``every`` (default 10) steps between
    records: a ``lax.cond`` on the carried step counter selects the statistics (a second
    forward and backward through the tapped model, every layer's moments; the kernels'
    norms) or nothing. ``after+updates, static``: the same with the record decided by a
    static flag (``now=``, ``record_now=``) from a host-side step counter, two compiled
    steps and no conditional.

All are compiled before timing (the compile column: lower + XLA compile), the model state
(and the monitor's) is donated in all, and after ``2 * every`` untimed steps each, they
are run interleaved step by step, one step of each program per round, the order reversed
every other round, each step timed alone with ``jax.block_until_ready``. The monitored steps are split by whether they recorded (``step % every ==
0``). Reported: the median step time of each, and the ratios monitored / baseline, both
measured in the same run (the issue's target: <= 1.02 on the steps that do not record).

Models: ``mlp`` (NNX, 784-512x4-10, He normal, ReLU, batch 128), ``cnn`` and
``cnn_linen`` (``varprop.example_models``' MNIST CNN, NNX and Linen, batch 32),
``resnet`` (NNX, BatchNorm, CIFAR-sized, batch 16).

Run alone if you can (the machine has 2 cores), from the repository root, venv active::

    python scripts/bench_monitor.py                       # every model, 300 rounds each
    python scripts/bench_monitor.py --models mlp --steps 600 --every 20
    python scripts/bench_monitor.py --quick --json -      # mlp, 60 rounds; JSON on stdout
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench_common import fmt, median, ratio

MODELS = ("mlp", "cnn", "cnn_linen", "resnet")


def _xent(out, y):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()


def _data(model: str):
    import jax
    import jax.numpy as jnp

    shape = {"mlp": (128, 784), "cnn": (32, 28, 28, 1), "cnn_linen": (32, 28, 28, 1)}.get(
        model, (16, 32, 32, 3)
    )
    x = jax.random.normal(jax.random.key(0), shape)
    return x, jnp.arange(shape[0], dtype=jnp.int32) % 10


def _nnx_factory(model: str) -> Callable[..., Any]:
    from flax import nnx

    from varprop import example_models

    if model == "cnn":
        return lambda rngs: example_models.cnn(rngs=rngs)
    if model == "resnet":
        return lambda rngs: example_models.resnet(rngs=rngs)
    he = nnx.initializers.he_normal()

    class MLP(nnx.Module):
        def __init__(self, rngs):
            widths = [784, 512, 512, 512, 512, 10]
            self.layers = nnx.List(
                [nnx.Linear(a, b, kernel_init=he, rngs=rngs) for a, b in itertools.pairwise(widths)]
            )

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = nnx.relu(layer(x))
            return self.layers[-1](x)

    return lambda rngs: MLP(rngs)


#: The monitored variants: where ``record`` is called, whether the optimizer is wrapped by
#: ``track_updates``, and whether the record is decided by a static Python bool (two
#: compiled steps, chosen from a host-side step counter) instead of ``lax.cond``.
VARIANTS = {
    "before": ("before", False, False),
    "after": ("after", False, False),
    "after+updates": ("after", True, False),
    "after+updates, static": ("after", True, True),
}


class StaticSwitch:
    """A step jitted with a static ``rec`` flag, called like the others: the flag is
    ``calls % every == 0`` from its own host-side counter (no device read)."""

    def __init__(self, step, every: int):
        import jax

        self.jitted = jax.jit(step, donate_argnums=(0, 1), static_argnames="rec")
        self.every, self.calls = every, 0

    def __call__(self, *args):
        rec = self.calls % self.every == 0
        self.calls += 1
        return self.jitted(*args, rec=rec)

    def lowered(self, *args) -> list[Any]:
        """Both programs, lowered (the compile column is their sum)."""
        return [self.jitted.lower(*args, rec=rec) for rec in (True, False)]


def nnx_steps(model: str, every: int) -> tuple[dict[str, tuple[Any, tuple]], int]:
    """``({variant: (jitted step, args)}, n_rows)`` for the NNX ``model``: every step
    jitted over the split state (donated), ``(state, mstate, x, y) -> (state, mstate,
    loss)``; the baseline ignores ``mstate``."""
    import jax
    import optax
    from flax import nnx

    from varprop._src.model.monitor import monitor

    factory = _nnx_factory(model)
    x, y = _data(model)
    mon = monitor(factory, x, loss=_xent, every=every, capacity=1000)
    out = {}
    for name, (where, track, static) in {"baseline": (None, False, False), **VARIANTS}.items():
        m0 = factory(nnx.Rngs(1))
        tx = mon.track_updates(optax.adam(1e-3)) if track else optax.adam(1e-3)
        graphdef, state = nnx.split((m0, nnx.Optimizer(m0, tx, wrt=nnx.Param)))

        def step(state, mstate, x_, y_, graphdef=graphdef, where=where, track=track, rec=None):
            m, opt = nnx.merge(graphdef, state)
            if where == "before":
                mstate = mon.record(mstate, m, x_, y_, now=rec)
            loss, grads = nnx.value_and_grad(lambda m: _xent(m(x_), y_))(m)
            opt.update(m, grads, **({"record_now": rec} if track else {}))
            if where == "after":
                mstate = mon.record(mstate, m, x_, y_, now=rec)
            return nnx.state((m, opt)), mstate, loss

        fn = StaticSwitch(step, every) if static else jax.jit(step, donate_argnums=(0, 1))
        out[name] = (fn, (state, mon.init(), x, y))
    return out, len(mon.rows)


def linen_steps(every: int) -> tuple[dict[str, tuple[Any, tuple]], int]:
    """The same for the Linen CNN: the parameters and the optax state as pytrees."""
    import jax
    import optax

    from varprop import example_models
    from varprop._src.model.monitor import monitor

    model = example_models.cnn_linen()
    x, y = _data("cnn_linen")
    mon = monitor(model, x, loss=_xent, every=every, capacity=1000)
    params0 = model.init(jax.random.key(1), x)["params"]
    out = {}
    for name, (where, track, static) in {"baseline": (None, False, False), **VARIANTS}.items():
        tx = mon.track_updates(optax.adam(1e-3)) if track else optax.adam(1e-3)
        params = jax.tree.map(lambda a: a.copy(), params0)

        def step(state, mstate, x_, y_, tx=tx, where=where, track=track, rec=None):
            params, opt_state = state
            if where == "before":
                mstate = mon.record(mstate, {"params": params}, x_, y_, now=rec)
            loss, grads = jax.value_and_grad(lambda p: _xent(model.apply({"params": p}, x_), y_))(
                params
            )
            kw = {"record_now": rec} if track else {}
            updates, opt_state = tx.update(grads, opt_state, params, **kw)
            params = optax.apply_updates(params, updates)
            if where == "after":
                mstate = mon.record(mstate, {"params": params}, x_, y_, now=rec)
            return (params, opt_state), mstate, loss

        args = ((params, tx.init(params)), mon.init(), x, y)
        fn = StaticSwitch(step, every) if static else jax.jit(step, donate_argnums=(0, 1))
        out[name] = (fn, args)
    return out, len(mon.rows)


def _compile(fn, args) -> float:
    t = time.perf_counter()
    for lowered in fn.lowered(*args) if isinstance(fn, StaticSwitch) else [fn.lower(*args)]:
        lowered.compile()
    return time.perf_counter() - t


def bench_model(model: str, steps: int, every: int) -> dict[str, Any]:
    """Median step times (ms) of the baseline and of each monitored variant's
    non-recording and recording steps, interleaved step by step."""
    import jax

    progs, n_rows = linen_steps(every) if model == "cnn_linen" else nnx_steps(model, every)
    compile_s = {name: _compile(fn, args) for name, (fn, args) in progs.items()}
    live = {name: list(jax.device_put(args)) for name, (_, args) in progs.items()}

    def run(name: str) -> tuple[float, bool]:
        """One step of ``name``: its time and whether it recorded."""
        fn = progs[name][0]
        state, mstate, x, y = live[name]
        recording = name != "baseline" and int(mstate.step) % every == 0
        t = time.perf_counter()
        state, mstate, loss = fn(state, mstate, x, y)
        jax.block_until_ready((state, mstate, loss))
        dt = time.perf_counter() - t
        live[name][:2] = [state, mstate]
        return dt, recording

    names = list(progs)
    for _ in range(2 * every):  # untimed: every program loaded and warm
        for name in names:
            run(name)
    times: dict[tuple[str, bool], list[float]] = {}
    for i in range(steps):
        for name in names if i % 2 == 0 else names[::-1]:
            dt, recording = run(name)
            times.setdefault((name, recording), []).append(dt)
    base = median(times["baseline", False]) * 1e3
    row: dict[str, Any] = {"model": model, "rows": n_rows, "every": every, "steps": steps}
    row["baseline_ms"] = base
    for name in VARIANTS:
        off, on = times.get((name, False)), times.get((name, True))
        row[name] = {
            "off_ms": median(off) * 1e3 if off else None,
            "off_ratio": ratio(median(off) * 1e3, base) if off else None,
            "on_ms": median(on) * 1e3 if on else None,
            "on_ratio": ratio(median(on) * 1e3, base) if on else None,
            "n_off": len(off or []),
            "n_on": len(on or []),
        }
    row["compile_s"] = compile_s
    return row


def results_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`bench_model`'s figures: per model and variant, the
    median step (ms) and its ratio to the baseline, on steps that do not record and on
    those that do."""
    head = (
        "| model | layer rows | variant | baseline step (ms) | non-recording step (ms) | "
        "ratio | recording step (ms) | ratio | compile (s) |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        for name in VARIANTS:
            v = r[name]
            lines.append(
                f"| {r['model']} | {r['rows']} | {name} | {fmt(r['baseline_ms'], 2)} | "
                f"{fmt(v['off_ms'], 2)} | {fmt(v['off_ratio'])} | {fmt(v['on_ms'], 2)} | "
                f"{fmt(v['on_ratio'])} | {fmt(r['compile_s'][name], 1)} "
                f"(baseline {fmt(r['compile_s']['baseline'], 1)}) |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--quick", action="store_true", help="mlp only, 60 steps")
    ap.add_argument(
        "--steps", type=int, help="timed rounds (one step of each program; default 300, quick 60)"
    )
    ap.add_argument("--every", type=int, default=10, help="steps between records (default 10)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON ('-': stdout)")
    args = ap.parse_args(argv)
    models = args.models.split(",") if args.models else (["mlp"] if args.quick else MODELS)
    bad = [m for m in models if m not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {bad}; allowed: {', '.join(MODELS)}")
    steps = args.steps or (60 if args.quick else 300)
    import jax

    rows = []
    for m in models:
        rows.append(bench_model(m, steps, args.every))
        if args.json != "-":
            print(f"{m}: done", file=sys.stderr)
    out = {
        "rows": rows,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "command": "python scripts/bench_monitor.py " + " ".join(argv or sys.argv[1:]),
    }
    if args.json == "-":
        print(json.dumps(out, indent=2))
        return out
    print(f"\n### train step with the monitor vs without, a record every {args.every} steps\n")
    print(results_table(rows))
    print(
        f"\nmedians of {steps} interleaved steps per side; jax {out['jax']}, "
        f"{out['backend']}, {out['cpus']} CPUs"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()

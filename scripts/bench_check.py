"""Benchmark the checker: its probe against a plain forward+backward, its compile time, and
its warm time to a verdict side by side with anyinit 0.4.

Run alone (no tests, calibration runs or other jobs on the machine; it has 2 cores), from
the repository root with the venv active:

    python scripts/bench_check.py                       # all sections, writes docs/bench_check.json
    python scripts/bench_check.py --sections verdict    # just the varprop-vs-anyinit comparison
    python scripts/bench_check.py --sections verdict --width 64 --depth 4 --repeats 1 \\
        --out bench_smoke.json                          # a smoke run

anyinit is not a varprop dependency; for the comparison install it into the venv by hand
(``pip install anyinit==0.4.0``). Without it the anyinit columns are skipped with a message.

Sections (``--sections``, comma-separated, default all three):

plain
    The probe (one seed, forward+backward statistics, ``redraws=0``) against a plain jitted
    forward+backward of the same MLP (gradient w.r.t. the input, no statistics), batch 128,
    He-normal ReLU, for every width x depth of the grid. Both are compiled before timing;
    their repeats are interleaved. Reports the medians and probe/plain.
compile
    Compile time (lower + compile) of the probe at width 64, batch 32, for several depths,
    and its ratio to the first depth.
verdict
    Warm time to a verdict on the ``[width]*(depth+1) + [10]`` ReLU MLP (default 512 wide,
    50 hidden layers), varprop and anyinit in the same process, their repeats interleaved
    (repeat i runs varprop, then each anyinit mode, all with ``seed=i+1``).

    varprop: one untimed call (``seed=0``) compiles the probe, which ``check`` caches per
    architecture. Each timed call is ``varprop.check(widths, "relu", "he_normal",
    seed=s)`` with every other argument at its default (batch 64, 4 seeds per round, up
    to 64): it builds the network description and the symbolic prediction, runs the cached
    jitted vmapped forward+backward probe once per round of seeds, and tests every layer's
    forward and backward variance law with calibrated error rates until a verdict (or the
    budget) is reached. No re-tracing or compilation happens in a timed call. Recorded:
    wall time, ``r.seeds`` and ``r.verdict``.

    anyinit: a Flax Linen MLP of the same shape (``nn.Dense(use_bias=False)`` with
    He-normal kernels, ``nn.relu`` between them) and one fixed batch of ``--anyinit-batch``
    (1024) standard-normal inputs. One untimed call per mode (``seed=0``) fills JAX's
    per-primitive compilation cache for these shapes and anyinit's activation-profile cache
    (the quadrature for ReLU); that is all "warm" can mean for anyinit, which jits nothing.
    Each timed call is ``anyinit.initialize(model, mode, batch, seed=s)`` followed by
    ``report.assert_healthy()`` (an AssertionError is recorded as unhealthy, not raised).
    Every such call starts from scratch: it runs ``model.init`` on the whole batch
    (eagerly) to discover the parameters, re-traces the model by instrumenting
    ``flax.linen`` and ``jax.nn`` on a 16-row probe, re-draws every kernel in NumPy
    (float64) -- the module's own He-normal kernels are overwritten, so neither mode
    checks them -- and then, all eagerly with Python callbacks reading the layers' outputs:

    * ``empirical`` (the call named in the issue): solves one scale per layer from
      measured forward statistics, layer by layer -- one full forward pass of the batch
      per measurement, two per ReLU layer plus a final one (``report.iterations``), so
      its cost grows as depth squared;
    * ``analytic``: solves the scales by a moment recursion, then runs one validation
      forward pass of the batch; ``assert_healthy`` compares predicted and measured
      second moments per layer (15% beyond a noise floor, no error-rate calibration).

    Neither mode runs a backward pass. Reported: each library's median, and
    varprop median / anyinit median per mode (below 1: varprop is faster).

Output: Markdown tables on stdout and a JSON file (``--out``, default
docs/bench_check.json) with the raw repeat times, medians, ratios, and for each section
the date, the machine (``os.cpu_count()``, platform, load average at its start) and the
versions of jax, jaxlib, flax, varprop and anyinit. Sections not run are kept from an
existing file of the same format, each with its own run record.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_common import fmt, median, ratio

FORMAT = 2
SECTIONS = ("plain", "compile", "verdict")
ANYINIT_VERSION = "0.4.0"
ANYINIT_MODES = ("empirical", "analytic")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "bench_check.json"


# --------------------------------------------------------------------- pure helpers


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right=None) -> str:
    """A Markdown table; ``right`` flags right-aligned columns (default: all but the first)."""
    n = len(header)
    if right is None:
        right = [i > 0 for i in range(n)]
    for row in rows:
        if len(row) != n:
            raise ValueError(f"row {row!r} has {len(row)} cells, the header {n}")
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plain_table(rows: Sequence[dict]) -> str:
    """The probe-vs-plain table from the section's JSON rows."""
    return markdown_table(
        ["width", "depth", "plain fwd+bwd (ms)", "check (ms)", "ratio"],
        [
            [
                str(r["width"]),
                str(r["depth"]),
                fmt(r["plain_s"] * 1e3, 2),
                fmt(r["check_s"] * 1e3, 2),
                fmt(r["ratio"]),
            ]
            for r in rows
        ],
    )


def compile_table(rows: Sequence[dict]) -> str:
    """The compile-time table from the section's JSON rows."""
    return markdown_table(
        ["depth", "compile (s)", "vs first depth"],
        [[str(r["depth"]), fmt(r["compile_s"], 2), fmt(r["ratio_to_first"], 2)] for r in rows],
    )


def _counts(values: Sequence[Any]) -> str:
    """``"agrees ×3, inconclusive ×1"`` (in order of first appearance)."""
    seen: dict[str, int] = {}
    for v in values:
        seen[str(v)] = seen.get(str(v), 0) + 1
    return ", ".join(f"{k} ×{n}" for k, n in seen.items()) or "—"


def verdict_table(section: dict) -> str:
    """The side-by-side table of the verdict section, one row per library (and mode)."""
    v = section["varprop"]
    rows = [
        [
            f"varprop {v['version']}",
            f"check(defaults): batch {v['batch']} × seeds, fwd+bwd",
            str(len(v["times_s"])),
            fmt(v["median_s"]),
            "seeds " + (", ".join(map(str, v["seeds"])) or "—") + "; " + _counts(v["verdicts"]),
            "1.000",
        ]
    ]
    a = section["anyinit"]
    if "skipped" in a:
        rows.append(["anyinit", f"skipped: {a['skipped']}", "0", "—", "—", "—"])
    else:
        for mode, m in a["modes"].items():
            healthy = _counts("healthy" if h else "unhealthy" for h in m["healthy"])
            passes = _counts(m["forward_passes"])
            rows.append(
                [
                    f"anyinit {a['version']} {mode}",
                    f"initialize(model, {mode!r}, batch {a['batch']}) + assert_healthy, fwd only",
                    str(len(m["times_s"])),
                    fmt(m["median_s"]),
                    f"{healthy}; forward passes {passes}",
                    fmt(section["ratios"].get(f"varprop/anyinit_{mode}")),
                ]
            )
    return markdown_table(
        ["library", "one timed call", "repeats", "median (s)", "outcome", "varprop / this"],
        rows,
        right=[False, False, True, True, False, True],
    )


def merge(old: Any, new: dict) -> dict:
    """``new`` plus the sections of ``old`` that this run did not redo (same format only)."""
    out: dict = {"format": FORMAT}
    if isinstance(old, dict) and old.get("format") == FORMAT:
        out.update({k: old[k] for k in SECTIONS if k in old})
    out.update({k: new[k] for k in SECTIONS if k in new})
    return out


def parse_list(text: str, kind: Callable[[str], Any] = int) -> list:
    """``"1,2,3"`` -> ``[1, 2, 3]``; blanks are dropped."""
    return [kind(t.strip()) for t in text.split(",") if t.strip()]


# --------------------------------------------------------------------- run records


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def run_record() -> dict:
    """When, where and with what a section was measured."""
    import varprop

    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover - not on this platform
        load = None
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "loadavg_at_start": load,
        },
        "versions": {
            "jax": _version("jax"),
            "jaxlib": _version("jaxlib"),
            "flax": _version("flax"),
            "varprop": getattr(varprop, "__version__", _version("varprop")),
            "anyinit": _version("anyinit"),
        },
    }


def _timed(fn: Callable[[], Any], block: bool = False) -> tuple[float, Any]:
    """Wall time of ``fn()`` (waiting for its device arrays when ``block``), and its value."""
    t = time.perf_counter()
    out = fn()
    if block:
        import jax

        out = jax.block_until_ready(out)
    return time.perf_counter() - t, out


# --------------------------------------------------------------------- sections


def section_plain(widths: Sequence[int], depths: Sequence[int], repeats: int) -> dict:
    import jax

    from varprop import initializers as I
    from varprop._src.core.network import make_network
    from varprop._src.probe import make_plain_step, make_probe

    batch = 128
    out: dict = {"run": run_record(), "batch": batch, "repeats": repeats, "rows": []}
    for w in widths:
        for d in depths:
            net = make_network((w,) * (d + 1), "relu", I.he_normal())
            keys = jax.random.split(jax.random.key(0), 1)
            probe = make_probe(net, batch, redraws=0)
            plain = make_plain_step(net, batch)
            jax.block_until_ready(probe(keys, None))
            jax.block_until_ready(plain(keys))
            # Interleave so that both see the same machine state.
            tp, tc = [], []
            for _ in range(repeats):
                tp.append(_timed(lambda p=plain, k=keys: p(k), block=True)[0])
                tc.append(_timed(lambda p=probe, k=keys: p(k, None), block=True)[0])
            mp, mc = median(tp), median(tc)
            row = {
                "width": w,
                "depth": d,
                "plain_times_s": tp,
                "check_times_s": tc,
                "plain_s": mp,
                "check_s": mc,
                "ratio": mc / mp,
            }
            out["rows"].append(row)
            print(f"  plain: width {w}, depth {d}: ratio {mc / mp:.3f}", file=sys.stderr)
    return out


def section_compile(depths: Sequence[int]) -> dict:
    import jax

    from varprop import initializers as I
    from varprop._src.core.network import make_network
    from varprop._src.probe import make_probe

    width, batch = 64, 32
    out: dict = {"run": run_record(), "width": width, "batch": batch, "rows": []}
    base = None
    for d in depths:
        net = make_network((width,) * (d + 1), "relu", I.he_normal())
        probe = make_probe(net, batch, redraws=0)
        keys = jax.random.split(jax.random.key(0), 2)
        t = time.perf_counter()
        probe.lower(keys, None).compile()
        c = time.perf_counter() - t
        base = base or c
        out["rows"].append({"depth": d, "compile_s": c, "ratio_to_first": c / base})
        print(f"  compile: depth {d}: {c:.2f} s", file=sys.stderr)
    return out


def flax_mlp(widths: Sequence[int]):
    """A Flax Linen MLP: bias-free Dense layers with He-normal kernels, ReLU between them."""
    import flax.linen as nn

    class MLP(nn.Module):
        widths: tuple

        @nn.compact
        def __call__(self, x):
            init = nn.initializers.he_normal()
            for w in self.widths[1:-1]:
                x = nn.relu(nn.Dense(w, use_bias=False, kernel_init=init)(x))
            return nn.Dense(self.widths[-1], use_bias=False, kernel_init=init)(x)

    return MLP(tuple(widths))


def _anyinit_call(anyinit, model, mode: str, batch, seed: int) -> tuple[bool, int]:
    report = anyinit.initialize(model, mode, batch, seed=seed)
    try:
        report.assert_healthy()
        healthy = True
    except AssertionError:
        healthy = False
    return healthy, int(report.iterations)


def section_verdict(
    width: int, depth: int, repeats: int, modes: Sequence[str], anyinit_batch: int
) -> dict:
    import numpy as np

    import varprop

    widths = [width] * (depth + 1) + [10]
    out: dict = {
        "run": run_record(),
        "net": {"widths": f"[{width}]*{depth + 1} + [10]", "activation": "relu", "init": "he"},
        "repeats": repeats,
    }
    v = {
        "version": getattr(varprop, "__version__", None),
        "call": 'varprop.check(widths, "relu", "he_normal", seed=s)',
        "batch": 64,
        "seed_args": [],
        "times_s": [],
        "seeds": [],
        "verdicts": [],
    }
    a: dict
    try:
        import anyinit
    except ImportError as e:
        anyinit = None
        reason = f"import anyinit failed ({e}); pip install anyinit=={ANYINIT_VERSION}"
        print(f"  verdict: anyinit column skipped: {reason}", file=sys.stderr)
        a = {"skipped": reason}
    else:
        if not modes:
            anyinit = None
            a = {"skipped": "no --anyinit-modes"}
        else:
            a = {"version": getattr(anyinit, "__version__", None), "batch": anyinit_batch}
            if a["version"] != ANYINIT_VERSION:
                print(f"  note: anyinit {a['version']}, not {ANYINIT_VERSION}", file=sys.stderr)
            a["modes"] = {
                m: {
                    "call": f"anyinit.initialize(model, {m!r}, batch, seed=s).assert_healthy()",
                    "times_s": [],
                    "healthy": [],
                    "forward_passes": [],
                }
                for m in modes
            }

    # Warm-up: compile varprop's probe; fill JAX's op caches and anyinit's profile cache.
    t, r = _timed(lambda: varprop.check(widths, "relu", "he_normal", seed=0))
    v["warmup_s"] = t
    print(f"  verdict: varprop warm-up {t:.2f} s ({r.verdict}, {r.seeds} seeds)", file=sys.stderr)
    if anyinit is not None:
        import jax.numpy as jnp

        model = flax_mlp(widths)
        rows = np.random.default_rng(0).standard_normal((anyinit_batch, width))
        batch = jnp.asarray(rows, dtype=jnp.float32)
        for m in modes:
            t, _ = _timed(lambda m=m: _anyinit_call(anyinit, model, m, batch, 0))
            a["modes"][m]["warmup_s"] = t
            print(f"  verdict: anyinit {m} warm-up {t:.2f} s", file=sys.stderr)

    for i in range(repeats):
        s = i + 1
        t, r = _timed(lambda s=s: varprop.check(widths, "relu", "he_normal", seed=s))
        v["seed_args"].append(s)
        v["times_s"].append(t)
        v["seeds"].append(int(r.seeds))
        v["verdicts"].append(r.verdict)
        msg = f"  verdict: repeat {s}: varprop {t:.2f} s ({r.verdict}, {r.seeds} seeds)"
        if anyinit is not None:
            for m in modes:
                t, (healthy, passes) = _timed(
                    lambda m=m, s=s: _anyinit_call(anyinit, model, m, batch, s)
                )
                rec = a["modes"][m]
                rec["times_s"].append(t)
                rec["healthy"].append(healthy)
                rec["forward_passes"].append(passes)
                msg += f"; anyinit {m} {t:.2f} s"
        print(msg, file=sys.stderr)

    v["median_s"] = median(v["times_s"])
    out["varprop"] = v
    out["ratios"] = {}
    if "modes" in a:
        for m, rec in a["modes"].items():
            rec["median_s"] = median(rec["times_s"])
            out["ratios"][f"varprop/anyinit_{m}"] = ratio(v["median_s"], rec["median_s"])
    out["anyinit"] = a
    return out


# --------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    ap.add_argument("--quick", action="store_true", help="smaller grids and fewer repeats")
    ap.add_argument("--repeats", type=int, help="timed repeats of every section")
    ap.add_argument("--width", type=int, default=512, help="verdict net: hidden width")
    ap.add_argument("--depth", type=int, default=50, help="verdict net: hidden layers")
    ap.add_argument("--grid-widths", help="plain section widths (default 256,512,1024)")
    ap.add_argument("--grid-depths", help="plain section depths (default 10,50,100)")
    ap.add_argument("--compile-depths", help="compile section depths (default 10,...,10000)")
    ap.add_argument(
        "--anyinit-modes",
        default=",".join(ANYINIT_MODES),
        help="anyinit modes to time ('' for none)",
    )
    ap.add_argument("--anyinit-batch", type=int, default=1024)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)

    sections = parse_list(args.sections, str)
    bad = sorted(set(sections) - set(SECTIONS))
    if bad or not sections:
        ap.error(f"--sections: unknown {bad}; choose from {','.join(SECTIONS)}")
    modes = parse_list(args.anyinit_modes, str)
    if set(modes) - set(ANYINIT_MODES):
        ap.error(f"--anyinit-modes: choose from {','.join(ANYINIT_MODES)}")
    q = args.quick
    widths = parse_list(args.grid_widths or ("256,512" if q else "256,512,1024"))
    depths = parse_list(args.grid_depths or ("10,50" if q else "10,50,100"))
    cdepths = parse_list(args.compile_depths or ("10,100,1000" if q else "10,100,1000,10000"))

    new: dict = {}
    if "plain" in sections:
        new["plain"] = section_plain(widths, depths, args.repeats or (5 if q else 15))
    if "compile" in sections:
        new["compile"] = section_compile(cdepths)
    if "verdict" in sections:
        new["verdict"] = section_verdict(
            args.width, args.depth, args.repeats or (3 if q else 7), modes, args.anyinit_batch
        )

    if "plain" in new:
        print(f"\n### Probe vs plain forward+backward (batch {new['plain']['batch']})\n")
        print(plain_table(new["plain"]["rows"]))
    if "compile" in new:
        print(f"\n### Probe compile time (width {new['compile']['width']})\n")
        print(compile_table(new["compile"]["rows"]))
    if "verdict" in new:
        sec = new["verdict"]
        print(f"\n### Warm time to a verdict, {sec['net']['widths']} ReLU, He init\n")
        print(verdict_table(sec))
    rec = next(iter(new.values()))["run"]
    print(
        f"\n{rec['date']}, {rec['machine']['cpu_count']} CPUs, {rec['machine']['platform']}, "
        f"load {rec['machine']['loadavg_at_start']}, versions {rec['versions']}"
    )

    path = Path(args.out)
    old = None
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merge(old, new), indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Cold-start cost of varprop: ``import varprop``, and ``varprop check`` in a fresh process with
the persistent compilation cache (its second run) against ``--no-cache``.

Each figure is the wall time of a whole new Python process, repeated and interleaved (A B A B
...) so that a machine whose speed drifts affects both sides alike; the script prints the
minimum, median and maximum of each and the median of the pairwise ratios. The cache lives in
a fresh temporary ``$XDG_CACHE_HOME``, filled by one untimed warm-up run, so "cached" means
"the second run on this machine" and "no cache" means every run compiles.

Usage::

    python scripts/bench_cold.py                   # 5 pairs each, default check
    python scripts/bench_cold.py --runs 3 --check-args "--widths 784,256x10,10"
    python scripts/bench_cold.py --json docs/bench_cold.json

The same figures with standard tools (one command per line; GNU time's "Elapsed (wall
clock)" line)::

    /usr/bin/time -v python -c "import varprop"
    XDG_CACHE_HOME=$(mktemp -d) sh -c 'varprop check --quiet; /usr/bin/time -v varprop check --quiet'
    /usr/bin/time -v varprop check --quiet --no-cache

Timing lives here, never in the unit tests (tests/test_import.py checks *what* is imported).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds of wall time for one run of ``cmd`` in a new process (its output discarded)."""
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    s = time.perf_counter() - t
    if r.returncode not in (0, 1, 3, 4):
        raise SystemExit(f"{shlex.join(cmd)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return s


def describe(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def pairs(a: list[str], b: list[str], env: dict[str, str], runs: int) -> dict:
    """``runs`` interleaved pairs of ``a`` and ``b`` (after one untimed run of each)."""
    wall(a, env), wall(b, env)
    ta, tb = [], []
    for _ in range(runs):
        ta.append(wall(a, env))
        tb.append(wall(b, env))
    return {
        "a": shlex.join(a),
        "b": shlex.join(b),
        "a_seconds": describe(ta),
        "b_seconds": describe(tb),
        "ratio_a_over_b_median": statistics.median(x / y for x, y in zip(ta, tb, strict=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed pairs per comparison (default 5)")
    ap.add_argument("--check-args", default="", help="extra arguments for varprop check")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures here")
    args = ap.parse_args()

    py = sys.executable
    env = {k: v for k, v in os.environ.items() if k not in ("VARPROP_CACHE_DIR",)}
    out: dict[str, object] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    # import varprop against import jax (the floor: varprop cannot be faster than what it
    # needs once used; the bare import should not even load that).
    out["import"] = pairs([py, "-c", "import varprop"], [py, "-c", "import jax"], env, args.runs)
    with tempfile.TemporaryDirectory() as cache_home:
        env_cache = {**env, "XDG_CACHE_HOME": cache_home}
        check = [py, "-m", "varprop", "check", "--quiet", *shlex.split(args.check_args)]
        out["check"] = pairs(check, [*check, "--no-cache"], env_cache, args.runs)
        files = [p for p in Path(cache_home).rglob("*") if p.is_file()]
        out["cache_entries"] = len(files)
        out["cache_bytes"] = sum(p.stat().st_size for p in files)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

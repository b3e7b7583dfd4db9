"""Benchmark the checker against a plain jitted forward+backward of the same MLP.

Run alone (no tests or other jobs on the machine):

    python scripts/bench_check.py [--quick] [--out bench_check.json]

Prints, in one run:
1. probe (one seed, forward+backward statistics) / plain forward+backward, medians over
   repeats, for widths 256-1024 and depths 10-100;
2. compile time of the probe at depths 10, 100, 1000, 10000 (width 64);
3. the warm time to a calibrated verdict on a 512-wide, 50-layer ReLU net (defaults).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

from varprop import initializers as I
from varprop._src.check import check
from varprop._src.probe import make_network, make_plain_step, make_probe


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    ap.add_argument("--out", default="bench_check.json")
    args = ap.parse_args()
    repeats = 5 if args.quick else 15
    widths = (256, 512) if args.quick else (256, 512, 1024)
    depths = (10, 50) if args.quick else (10, 50, 100)
    batch = 128
    results: dict = {"ratio": [], "compile": [], "verdict": None, "batch": batch}

    print(f"{'width':>6} {'depth':>6} {'plain ms':>9} {'check ms':>9} {'ratio':>6}")
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
                tp.append(_median_time(lambda p=plain, k=keys: p(k), 1))
                tc.append(_median_time(lambda p=probe, k=keys: p(k, None), 1))
            mp, mc = statistics.median(tp), statistics.median(tc)
            results["ratio"].append(
                {"width": w, "depth": d, "plain_s": mp, "check_s": mc, "ratio": mc / mp}
            )
            print(f"{w:>6} {d:>6} {mp * 1e3:>9.2f} {mc * 1e3:>9.2f} {mc / mp:>6.3f}")

    print(f"\n{'depth':>6} {'compile s':>10} {'vs depth 10':>12}")
    base = None
    for d in (10, 100, 1000) if args.quick else (10, 100, 1000, 10000):
        net = make_network((64,) * (d + 1), "relu", I.he_normal())
        probe = make_probe(net, 32, redraws=0)
        keys = jax.random.split(jax.random.key(0), 2)
        t = time.perf_counter()
        probe.lower(keys, None).compile()
        c = time.perf_counter() - t
        base = base or c
        results["compile"].append({"depth": d, "compile_s": c, "ratio_to_depth_10": c / base})
        print(f"{d:>6} {c:>10.2f} {c / base:>12.2f}")

    widths_v = [512] * 51 + [10]
    check(widths_v, "relu", "he_normal")  # warm-up: compile
    t = time.perf_counter()
    r = check(widths_v, "relu", "he_normal")
    warm = time.perf_counter() - t
    results["verdict"] = {
        "widths": "512x50",
        "verdict": r.verdict,
        "seeds": r.seeds,
        "warm_s": warm,
    }
    print(
        f"\nwarm time to a verdict (512 wide, 50 layers, ReLU): {warm:.2f} s, {r.verdict}, {r.seeds} seeds"
    )
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

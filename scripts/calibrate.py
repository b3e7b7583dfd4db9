"""Calibrate the checker: false-positive rate on correct nets, power against a 1.2x error.

Run alone (no tests or other jobs on the machine):

    python scripts/calibrate.py [--grid wide|narrow] [--configs 200] [--power-trials 100]
                                [--out calibrate.json]

A longer FPR run can be split: ``--start 200 --configs 167 --power-trials 0 --out b.json``
continues the sequence of configurations (each with its own seed) where a first run of 200
stopped, and ``--combine a.json b.json`` prints the pooled FPR of such runs (they must not
overlap).

- FPR: correct configurations, each with its own base seed; a false positive is a
  "disagrees" verdict. Its confidence interval is Clopper-Pearson (exact binomial).
  ``--grid wide`` (default): scheme x activation x depth up to 50 x width 64-1024.
  ``--grid narrow``: linear/relu/tanh schemes x narrow shapes (widths 1-32, depths 2-5,
  bottlenecks of 1-8 units inside 32- and 64-wide nets) x batches 2-32, checked with the
  default seed budget.
- Power: Var(w) 1.2x the He law in every layer (``variance_scaling:scale=2.4``) of a
  10-layer, 256-wide ReLU net checked against ``he_normal``; power is the fraction of
  "disagrees" verdicts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

from varprop._src.check import check
from varprop._src.stats import clopper_pearson

CORRECT = [
    ("he_normal", "relu"),
    ("he_uniform", "relu"),
    ("glorot_normal", "tanh"),
    ("glorot_uniform", "linear"),
    ("lecun_normal", "selu"),
    ("orthogonal", "linear"),
    ("he_normal:gain=gelu", "gelu"),
    ("variance_scaling:scale=2.0,mode=fan_in,distribution=truncated_normal", "relu"),
]
DEPTHS = (2, 5, 10, 20, 50)
WIDTHS = (64, 128, 256, 512, 1024)

NARROW_SCHEMES = [
    ("he_normal", "relu"),
    ("he_uniform", "relu"),
    ("glorot_normal", "tanh"),
    ("glorot_uniform", "tanh"),
    ("glorot_normal", "linear"),
    ("lecun_uniform", "linear"),
]
NARROW_SHAPES = [
    *([w] * (d + 1) for w in (1, 2, 3, 4, 8, 16, 32) for d in (2, 3, 5)),
    *([64, 64, b, 64, 10] for b in (1, 2, 4, 8)),
    *([32, b, 32] for b in (1, 2, 4, 8)),
    [8, 32, 8, 4],
    [1, 16, 1],
    [16, 1, 16, 1],
    [64, 2, 64, 10],
]
NARROW_BATCHES = (2, 4, 8, 16, 32)


def grid_configs(grid: str, start: int, count: int) -> list[tuple[str, str, list[int], int, int]]:
    """``(init, act, widths, batch, seed)`` of configurations ``start .. start + count - 1``.

    A stride coprime to the grid's size spreads any prefix over schemes, shapes and batches.
    """
    if grid == "wide":
        cells = [
            (init, act, [width] * depth + [10], 128)
            for (init, act), depth, width in itertools.product(CORRECT, DEPTHS, WIDTHS)
        ]
        stride = 37
    else:
        cells = [
            (init, act, list(shape), batch)
            for (init, act), shape, batch in itertools.product(
                NARROW_SCHEMES, NARROW_SHAPES, NARROW_BATCHES
            )
        ]
        stride = 101
    if math.gcd(stride, len(cells)) != 1:
        raise SystemExit(f"stride {stride} is not coprime to the grid size {len(cells)}")
    return [cells[(i * stride) % len(cells)] + (i,) for i in range(start, start + count)]


def _write(path: str, out: dict) -> None:
    with open(path, "w") as fh:
        json.dump(out, fh, indent=2)


def combine(paths: list[str]) -> None:
    """Print the pooled false-positive rate of several runs (disjoint ``--start`` ranges)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    spans = sorted(
        (r.get("grid", "wide"), r.get("start", 0), r.get("start", 0) + r["fpr"]["n"]) for r in runs
    )
    for (g1, _, end), (g2, start, _) in itertools.pairwise(spans):
        if g1 == g2 and start < end:
            raise SystemExit(f"runs overlap: configurations {spans}")
    k = sum(r["fpr"]["false"] for r in runs)
    n = sum(r["fpr"]["n"] for r in runs)
    verdicts = {v: sum(r["fpr"]["verdicts"][v] for r in runs) for v in runs[0]["fpr"]["verdicts"]}
    lo, hi = clopper_pearson(k, n)
    print(f"FPR: {k}/{n} = {k / n:.3%} (95% CI {lo:.3%} - {hi:.3%}); {verdicts}; runs {spans}")


def recheck(path: str) -> None:
    """Re-run the "disagrees" cases of a run with the current checker and update its counts.

    The checker's "disagrees" can only become rarer when its rule gets stricter for the same
    seeds, and the other configurations' verdicts do not change; so a run made before such a
    change stays valid once its "disagrees" cases are re-run. The JSON keeps the earlier
    cases under ``rechecked``.
    """
    run = json.loads(Path(path).read_text())
    fpr = run["fpr"]
    still = []
    for case in fpr["cases"]:
        kwargs = {"seed": case["seed"]}
        if run.get("grid", "wide") == "wide":
            kwargs["max_seeds"] = 32
        else:
            kwargs["batch"] = case["batch"]
        r = check(case["widths"], case["act"], case["init"], **kwargs)
        print(f"  {case}: now {r.verdict}", flush=True)
        fpr["verdicts"]["disagrees"] -= 1
        fpr["verdicts"][r.verdict] += 1
        if r.verdict == "disagrees":
            still.append(case)
        fpr.setdefault("rechecked", []).append({**case, "now": r.verdict})
    fpr["cases"] = still
    fpr["false"] = len(still)
    fpr["ci95"] = clopper_pearson(len(still), fpr["n"])
    _write(path, run)
    print(f"{path}: {len(still)}/{fpr['n']} still disagree; {fpr['verdicts']}")


def run_power(trials: int, out: dict, t0: float) -> None:
    """Power first: one architecture, so one compile serves every trial."""
    hits = 0
    for t in range(trials):
        r = check(
            [256] * 11 + [10],
            "relu",
            "variance_scaling:scale=2.4,mode=fan_in,distribution=normal",
            expect="he_normal",
            seed=10_000 + t,
        )
        hits += r.verdict == "disagrees"
    p_ci = clopper_pearson(hits, trials)
    print(
        f"Power (Var(w) x1.2 in every layer, 10 x 256 ReLU): {hits}/{trials} = "
        f"{hits / trials:.1%} (95% CI {p_ci[0]:.1%} - {p_ci[1]:.1%}); "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    out["power"] = {"hits": hits, "n": trials, "ci95": p_ci}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", choices=("wide", "narrow"), default="wide")
    ap.add_argument("--configs", type=int, default=200)
    ap.add_argument("--power-trials", type=int, default=100)
    ap.add_argument("--out", default="calibrate.json")
    ap.add_argument("--start", type=int, default=0, help="index of the first configuration")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="pool the FPR of these runs")
    ap.add_argument(
        "--recheck", metavar="JSON", help="re-run a run's 'disagrees' cases with this checker"
    )
    args = ap.parse_args()
    if args.combine:
        combine(args.combine)
        return
    if args.recheck:
        recheck(args.recheck)
        return
    if args.start < 0 or args.configs < 1 or args.power_trials < 0:
        ap.error("--start and --power-trials must be >= 0 and --configs >= 1")
    t0 = time.perf_counter()
    out: dict = {
        "grid": args.grid,
        "power": None,
        "fpr": None,
        "complete": False,
        "start": args.start,
    }

    if args.power_trials:
        run_power(args.power_trials, out, t0)
        _write(args.out, out)

    configs = grid_configs(args.grid, args.start, args.configs)
    verdicts: dict[str, int] = {"agrees": 0, "disagrees": 0, "inconclusive": 0}
    false = []
    for n, (init, act, widths, batch, seed) in enumerate(configs, 1):
        if args.grid == "wide":
            r = check(widths, act, init, seed=seed, max_seeds=32)
        else:
            r = check(widths, act, init, seed=seed, batch=batch)
        verdicts[r.verdict] += 1
        if r.verdict == "disagrees":
            false.append({"init": init, "act": act, "widths": widths, "batch": batch, "seed": seed})
        k = verdicts["disagrees"]
        out["fpr"] = {
            "false": k,
            "n": n,
            "ci95": clopper_pearson(k, n),
            "verdicts": dict(verdicts),
            "cases": false,
        }
        out["seconds"] = time.perf_counter() - t0
        _write(args.out, out)  # partial results survive an interrupted run
        if n % 10 == 0:
            print(
                f"  {n}/{len(configs)} configurations, {verdicts}, "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    k, n = verdicts["disagrees"], len(configs)
    fpr_ci = clopper_pearson(k, n)
    print(f"FPR: {k}/{n} = {k / n:.3%} (95% CI {fpr_ci[0]:.3%} - {fpr_ci[1]:.3%}); {verdicts}")
    elapsed = time.perf_counter() - t0
    print(f"total time {elapsed:.0f} s")
    out["complete"] = True
    out["seconds"] = elapsed
    _write(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

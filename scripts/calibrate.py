"""Calibrate the checker: false-positive rate on correct nets, power against a 1.2x error.

Run alone (no tests or other jobs on the machine):

    python scripts/calibrate.py [--configs 200] [--power-trials 100] [--out calibrate.json]

A longer FPR run can be split: ``--start 200 --configs 167 --power-trials 0 --out b.json``
continues the sequence of configurations (each with its own seed) where a first run of 200
stopped, and ``--combine a.json b.json`` prints the pooled FPR of such runs (they must not
overlap).

- FPR: correct configurations (scheme x activation x depth up to 50 x width 64-1024, each with
  its own base seed); a false positive is a "disagrees" verdict. Its confidence interval is
  Clopper-Pearson (exact binomial).
- Power: Var(w) 1.2x the He law in every layer (``variance_scaling:scale=2.4``) of a
  10-layer, 256-wide ReLU net checked against ``he_normal``; power is the fraction of
  "disagrees" verdicts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from scipy import stats

from varprop._src.check import check

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


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def _write(path: str, out: dict) -> None:
    with open(path, "w") as fh:
        json.dump(out, fh, indent=2)


def combine(paths: list[str]) -> None:
    """Print the pooled false-positive rate of several runs (disjoint ``--start`` ranges)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    spans = sorted((r.get("start", 0), r.get("start", 0) + r["fpr"]["n"]) for r in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        if start < end:
            raise SystemExit(f"runs overlap: configurations {spans}")
    k = sum(r["fpr"]["false"] for r in runs)
    n = sum(r["fpr"]["n"] for r in runs)
    verdicts = {v: sum(r["fpr"]["verdicts"][v] for r in runs) for v in runs[0]["fpr"]["verdicts"]}
    lo, hi = clopper_pearson(k, n)
    print(f"FPR: {k}/{n} = {k / n:.3%} (95% CI {lo:.3%} - {hi:.3%}); {verdicts}; runs {spans}")


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
    ap.add_argument("--configs", type=int, default=200)
    ap.add_argument("--power-trials", type=int, default=100)
    ap.add_argument("--out", default="calibrate.json")
    ap.add_argument("--start", type=int, default=0, help="index of the first configuration")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="pool the FPR of these runs")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine)
        return
    if args.start < 0 or args.configs < 1 or args.power_trials < 0:
        ap.error("--start and --power-trials must be >= 0 and --configs >= 1")
    t0 = time.perf_counter()
    out: dict = {"power": None, "fpr": None, "complete": False, "start": args.start}

    if args.power_trials:
        run_power(args.power_trials, out, t0)
        _write(args.out, out)

    grid = list(itertools.product(CORRECT, DEPTHS, WIDTHS))
    # A stride coprime to the grid size spreads any prefix over schemes, depths and widths.
    configs = [
        grid[(i * 37) % len(grid)] + (i,) for i in range(args.start, args.start + args.configs)
    ]
    verdicts: dict[str, int] = {"agrees": 0, "disagrees": 0, "inconclusive": 0}
    false = []
    for n, ((init, act), depth, width, seed) in enumerate(configs, 1):
        widths = [width] * depth + [10]
        r = check(widths, act, init, seed=seed, max_seeds=32)
        verdicts[r.verdict] += 1
        if r.verdict == "disagrees":
            false.append({"init": init, "act": act, "depth": depth, "width": width, "seed": seed})
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

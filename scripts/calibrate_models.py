"""Calibrate check_model: false-positive rate on correct models, power against a 1.2x error.

Run alone (no tests or other jobs on the machine):

    python scripts/calibrate_models.py [--configs 112] [--power-trials 44]
                                       [--out calibration_models.json] [--quick]

- FPR: ``--configs`` correct configurations of the example models
  (:mod:`varprop.example_models`: CNN, ResNet with and without BatchNorm, MobileNet,
  Transformer; NNX and Linen), several widths, depths, image sizes / sequence lengths,
  batch sizes and kernel initializers (Flax's defaults, He normal/uniform, Glorot
  normal/uniform, LeCun uniform, truncated normal, variance scaling), each checked with its
  own seed. Every layer's weights are drawn by the initializer whose law is tested (the
  model's own), so a "disagrees" verdict is a false positive. Its 95% interval is
  Clopper-Pearson (exact binomial). The configurations cycle through a list of structural
  cells; the second pass over the list checks the same programs with new seeds (the
  persistent compilation cache then skips their compilation).
- Power: a small ResNet (NNX or Linen) whose ``stem`` or a block's ``conv1``/``conv2`` is
  drawn with ``variance_scaling(1.2, "fan_in", "truncated_normal")`` while the checker is
  told that layer's law is Flax's default (``variance_scaling:scale=1.0,mode=fan_in,
  distribution=truncated_normal``, i.e. LeCun normal); every other layer keeps Flax's
  default. A detection is a "disagrees" verdict whose disagreeing rows are all the mutated
  layer's.

Every check uses ``max_seeds=32`` (``--max-seeds``). ``--quick`` runs a handful of
configurations (a few minutes at most with a cold compilation cache). ``--out`` writes every
configuration's result (its rows that are not "agrees" in full) as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

#: The spec of Flax's default kernel initializer (lecun_normal: truncated normal, corrected
#: so that Var(w) = 1 / fan_in), the law the power configurations are checked against.
FLAX_DEFAULT = "variance_scaling:scale=1.0,mode=fan_in,distribution=truncated_normal"
#: The variance error of the power configurations.
ERROR_SCALE = 1.2

#: Kernel initializers of the correct configurations, by name (None: Flax's defaults).
INITS = (
    "default",
    "he_normal",
    "he_uniform",
    "glorot_normal",
    "glorot_uniform",
    "lecun_uniform",
    "truncated_normal",
    "variance_scaling_tn2",
)


def make_init(name: str):
    """The ``jax.nn.initializers`` callable named ``name`` (None for Flax's defaults)."""
    import jax

    ini = jax.nn.initializers
    return {
        "default": None,
        "he_normal": ini.he_normal(),
        "he_uniform": ini.he_uniform(),
        "glorot_normal": ini.glorot_normal(),
        "glorot_uniform": ini.glorot_uniform(),
        "lecun_uniform": ini.lecun_uniform(),
        "truncated_normal": ini.truncated_normal(0.1),
        "variance_scaling_tn2": ini.variance_scaling(2.0, "fan_in", "truncated_normal"),
    }[name]


def _cells() -> list[dict[str, Any]]:
    """Structural cells of the correct configurations: family, framework, model keywords,
    input. Initializers and batch sizes are assigned round-robin over the list."""
    cells: list[dict[str, Any]] = []

    def image(family, fw, kw, size, channels=3):
        if len(cells) % 2:  # a wider head (10 logits of pooled features are a noisy row)
            kw = kw | {"classes": 32}
        cells.append(
            {
                "family": family,
                "framework": fw,
                "kwargs": kw,
                "input": {"kind": "image", "size": size, "channels": channels},
            }
        )

    for fw in ("nnx", "linen"):
        # CNN (the Linen CNN infers its Dense fan-in; the NNX one is told the input size).
        for feats, hidden, size, ch in (
            ((8,), 16, 8, 1),
            ((8, 16), 32, 8, 1),
            ((16, 32), 32, 16, 3),
            ((16,), 32, 12, 3),
        ):
            kw: dict[str, Any] = {"features": list(feats), "hidden": hidden}
            if fw == "nnx":
                kw |= {"image_size": size, "in_channels": ch}
            image("cnn", fw, kw, size, ch)
        # ResNet with BatchNorm (zero-gamma or not) and without normalization.
        for width, stages, size, zg in (
            (8, [1], 8, True),
            (8, [1, 1], 8, True),
            (16, [1], 12, False),
            (16, [1, 1], 16, True),
            (8, [2], 8, False),
        ):
            image("resnet", fw, {"width": width, "stage_sizes": stages, "zero_gamma": zg}, size)
        for width, stages, size in ((8, [1], 8), (16, [1, 1], 8), (8, [2], 12), (32, [1], 8)):
            image("resnet", fw, {"width": width, "stage_sizes": stages, "norm": False}, size)
        # MobileNet.
        for width, blocks, exp, size in (
            (8, [[8, 1]], 2, 8),
            (8, [[8, 1], [16, 2]], 4, 16),
            (16, [[16, 1]], 2, 12),
            (16, [[16, 1], [24, 2]], 2, 16),
        ):
            image("mobilenet", fw, {"width": width, "blocks": blocks, "expansion": exp}, size)
        # Transformer (pre-LN and post-LN).
        for d, heads, layers, length, vocab, pre in (
            (16, 2, 1, 8, 32, True),
            (32, 4, 1, 16, 64, True),
            (16, 2, 2, 12, 64, False),
            (32, 2, 2, 8, 32, True),
            (32, 4, 1, 8, 64, False),
        ):
            cells.append(
                {
                    "family": "transformer",
                    "framework": fw,
                    "kwargs": {
                        "vocab": vocab,
                        "d_model": d,
                        "heads": heads,
                        "layers": layers,
                        "max_len": 16,
                        "pre_ln": pre,
                    },
                    "input": {"kind": "tokens", "length": length, "vocab": vocab},
                }
            )
    return cells


BATCHES = (8, 12, 16)


def fpr_configs(n: int, base_seed: int = 1000) -> list[dict[str, Any]]:
    """``n`` correct configurations: configuration ``i`` is cell ``i mod C`` with its
    initializer and batch, and its own seed ``base_seed + i``."""
    cells = _cells()
    out = []
    for i in range(n):
        j = i % len(cells)
        c = json.loads(json.dumps(cells[j]))
        c["input"]["batch"] = BATCHES[j % len(BATCHES)]
        c |= {"kind": "fpr", "index": i, "cell": j, "init": INITS[j % len(INITS)]}
        if fan_mismatch(c):
            # Glorot on a strided or grouped conv is not a correct initialization: its
            # variance uses the kernel's fan_out c_out k, not the op's c_out k / (G s), so
            # check_model reports it (a detection, tested in the test suite). Use the next
            # initializer whose law holds at the true fans.
            c["init"] = next(x for x in INITS[j % len(INITS) :] if not x.startswith("glorot"))
        c["seed"] = base_seed + i
        out.append(c)
    return out


#: Power cells: framework, mutated layer, model keywords, image size, batch.
POWER_CELLS = (
    ("nnx", "stem", {"width": 8, "stage_sizes": [1]}, 8, 8),
    ("linen", "stem", {"width": 16, "stage_sizes": [1, 1]}, 8, 8),
    ("nnx", "conv1", {"width": 8, "stage_sizes": [1]}, 8, 8),
    ("linen", "conv1", {"width": 16, "stage_sizes": [1]}, 8, 12),
    ("nnx", "conv2", {"width": 16, "stage_sizes": [1]}, 12, 8),
    ("linen", "conv2", {"width": 8, "stage_sizes": [1], "norm": False}, 8, 16),
)


def power_configs(n: int, base_seed: int = 5000) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        j = i % len(POWER_CELLS)
        fw, layer, kw, size, batch = POWER_CELLS[j]
        out.append(
            {
                "kind": "power",
                "index": i,
                "cell": j,
                "family": "resnet",
                "framework": fw,
                "kwargs": dict(kw),
                "input": {"kind": "image", "size": size, "channels": 3, "batch": batch},
                "init": "default",
                "mutated": layer,
                "seed": base_seed + i,
            }
        )
    return out


def quick_configs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Three small correct configurations (an NNX CNN and Transformer, a Linen ResNet) and
    one power trial. No Glorot on a strided or grouped conv (see :func:`fan_mismatch`)."""
    cells = _cells()
    picks = [
        next(
            j
            for j, c in enumerate(cells)
            if c["family"] == fam and c["framework"] == fw and c["kwargs"].get("norm", True) == norm
        )
        for fam, fw, norm in (
            ("cnn", "nnx", True),
            ("transformer", "nnx", True),
            ("resnet", "linen", True),
        )
    ]
    inits = ("he_normal", "glorot_uniform", "default")
    fpr = []
    for i, j in enumerate(picks):
        c = json.loads(json.dumps(cells[j]))
        c["input"]["batch"] = 8
        c |= {"kind": "fpr", "index": i, "cell": j, "init": inits[i]}
        c["seed"] = 1000 + i
        fpr.append(c)
    power = power_configs(1)  # the first cell, one seed
    for i, p in enumerate(power):
        p["index"] = i
    return fpr, power


def _model_and_inputs(cfg: dict[str, Any]):
    import jax
    import jax.numpy as jnp

    from varprop import example_models as em

    fw = cfg["framework"]
    kw = dict(cfg["kwargs"])
    for k in ("stage_sizes", "features"):
        if k in kw:
            kw[k] = tuple(kw[k])
    if "blocks" in kw:
        kw["blocks"] = tuple(tuple(b) for b in kw["blocks"])
    init = make_init(cfg["init"])
    if init is not None:
        kw["kernel_init"] = init
    if "mutated" in cfg:
        bad = jax.nn.initializers.variance_scaling(ERROR_SCALE, "fan_in", "truncated_normal")
        kw["inits"] = {cfg["mutated"]: bad}
    fn = getattr(em, cfg["family"] + ("_linen" if fw == "linen" else ""))
    model = fn(**kw) if fw == "linen" else (lambda rngs: fn(**kw, rngs=rngs))
    inp = cfg["input"]
    if inp["kind"] == "image":
        shape = (inp["batch"], inp["size"], inp["size"], inp["channels"])

        def inputs(key):
            return jax.random.normal(key, shape)
    else:
        b, t, v = inp["batch"], inp["length"], inp["vocab"]

        def inputs(key):
            return jax.random.randint(key, (b, t), 0, v, dtype=jnp.int32)

    return model, inputs


def _num(x) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _row(r) -> dict[str, Any]:
    return {
        "path": r.path,
        "direction": r.direction,
        "verdict": r.verdict,
        "ratio": _num(r.ratio),
        "ratio_low": _num(r.ratio_low),
        "ratio_high": _num(r.ratio_high),
        "law": r.law,
        "note": r.note,
    }


def fan_mismatch(cfg: dict[str, Any]) -> bool:
    """Whether the configuration puts a fan_avg initializer (Glorot) on a strided or grouped
    conv: there the kernel shape's fan_out (what the initializer uses) differs from the op's
    true fan_out ``c_out k / (G s)`` at which check_model evaluates the law."""
    if not cfg["init"].startswith("glorot"):
        return False
    fam, kw = cfg["family"], cfg["kwargs"]
    return fam == "mobilenet" or (fam == "resnet" and len(kw.get("stage_sizes", [1, 1])) > 1)


def run_one(cfg: dict[str, Any], max_seeds: int) -> dict[str, Any]:
    """Check one configuration; the result is ``cfg`` with its verdict and rows."""
    import varprop

    out = dict(cfg)
    if cfg["kind"] == "fpr":
        out["fan_mismatch"] = fan_mismatch(cfg)
    t0 = time.perf_counter()
    try:
        model, inputs = _model_and_inputs(cfg)
        expect = {f"*{cfg['mutated']}": FLAX_DEFAULT} if "mutated" in cfg else None
        res = varprop.check_model(
            model, inputs, expect=expect, max_seeds=max_seeds, seed=cfg["seed"]
        )
    except Exception as e:  # recorded, not fatal: one broken configuration is a finding
        out |= {"verdict": "error", "error": f"{type(e).__name__}: {e}"}
        out["seconds"] = time.perf_counter() - t0
        return out
    out["seconds"] = time.perf_counter() - t0
    tested = [r for r in res.layers if r.verdict in ("agrees", "disagrees", "inconclusive")]
    out |= {
        "verdict": res.verdict,
        "seeds_used": res.seeds,
        "rows_tested": len(tested),
        "row_verdicts": dict(Counter(r.verdict for r in res.layers)),
        "rows": [_row(r) for r in res.layers if r.verdict != "agrees"],
    }
    if "mutated" in cfg:
        bad = {r.path for r in res.layers if r.verdict == "disagrees"}
        out["disagreeing_paths"] = sorted(bad)
        out["detected"] = (
            res.verdict == "disagrees"
            and len(bad) == 1
            and next(iter(bad)).replace("_", "/").split("/")[-1] == cfg["mutated"]
        )
    return out


def describe(cfg: dict[str, Any]) -> str:
    fam = cfg["family"] + ("_linen" if cfg["framework"] == "linen" else "")
    kw = ",".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in cfg["kwargs"].items())
    inp = cfg["input"]
    shape = (
        f"{inp['batch']}x{inp['size']}x{inp['size']}x{inp['channels']}"
        if inp["kind"] == "image"
        else f"{inp['batch']}x{inp['length']} tok"
    )
    extra = f" mutated={cfg['mutated']}" if "mutated" in cfg else f" init={cfg['init']}"
    return f"{fam}({kw}) {shape}{extra} seed={cfg['seed']}"


def summarize(fpr: list[dict[str, Any]], power: list[dict[str, Any]]) -> dict[str, Any]:
    from varprop._src.stats import clopper_pearson

    out: dict[str, Any] = {}
    if fpr:
        n = len(fpr)
        k = sum(c["verdict"] == "disagrees" for c in fpr)
        out["fpr"] = {
            "n": n,
            "false": k,
            "rate": k / n,
            "ci95": list(clopper_pearson(k, n)),
            "verdicts": dict(Counter(c["verdict"] for c in fpr)),
            "inconclusive": sum(c["verdict"] == "inconclusive" for c in fpr),
            "errors": sum(c["verdict"] == "error" for c in fpr),
            "false_positives": [
                {
                    "index": c["index"],
                    "config": describe(c),
                    "rows": [r for r in c["rows"] if r["verdict"] == "disagrees"],
                }
                for c in fpr
                if c["verdict"] == "disagrees"
            ],
            "by_init": {
                name: dict(Counter(c["verdict"] for c in fpr if c["init"] == name))
                for name in INITS
                if any(c["init"] == name for c in fpr)
            },
            "by_family": {
                fam: dict(Counter(c["verdict"] for c in fpr if _fam(c) == fam))
                for fam in sorted({_fam(c) for c in fpr})
            },
        }
        rest = [c for c in fpr if not c.get("fan_mismatch")]
        k2 = sum(c["verdict"] == "disagrees" for c in rest)
        out["fpr"]["excluding_fan_mismatch"] = {
            "n": len(rest),
            "false": k2,
            "rate": k2 / len(rest) if rest else None,
            "ci95": list(clopper_pearson(k2, len(rest))) if rest else None,
            "excluded": len(fpr) - len(rest),
            "excluded_disagrees": k - k2,
        }
    if power:
        n = len(power)
        k = sum(bool(c.get("detected")) for c in power)
        out["power"] = {
            "n": n,
            "detected": k,
            "rate": k / n,
            "ci95": list(clopper_pearson(k, n)),
            "error_scale": ERROR_SCALE,
            "law_told": FLAX_DEFAULT,
            "verdicts": dict(Counter(c["verdict"] for c in power)),
            "misses": [
                {
                    "index": c["index"],
                    "config": describe(c),
                    "verdict": c["verdict"],
                    "disagreeing_paths": c.get("disagreeing_paths"),
                    "rows": c.get("rows"),
                }
                for c in power
                if not c.get("detected")
            ],
        }
    return out


def _fam(c: dict[str, Any]) -> str:
    f = c["family"]
    if f == "resnet" and c["kwargs"].get("norm") is False:
        f = "resnet(norm=False)"
    return f"{f}/{c['framework']}"


def print_summary(s: dict[str, Any], wall: float) -> None:
    if "fpr" in s:
        f = s["fpr"]
        lo, hi = f["ci95"]
        print("\nFalse positives on correct models (verdicts by family):")
        print(f"{'family':<26} {'n':>4} {'agrees':>7} {'inconcl.':>9} {'disagrees':>10}")
        for fam, v in f["by_family"].items():
            print(
                f"{fam:<26} {sum(v.values()):>4} {v.get('agrees', 0):>7} "
                f"{v.get('inconclusive', 0):>9} {v.get('disagrees', 0):>10}"
                + (f"  errors {v['error']}" if v.get("error") else "")
            )
        print(
            f"FPR: {f['false']}/{f['n']} = {f['rate']:.2%}, 95% CI [{lo:.2%}, {hi:.2%}] "
            f"(Clopper-Pearson); inconclusive {f['inconclusive']}, errors {f['errors']}"
        )
        print("Verdicts by initializer:")
        for name, v in f["by_init"].items():
            print(f"  {name:<22} {v}")
        e = f["excluding_fan_mismatch"]
        if e["excluded"] and e["n"]:
            print(
                f"FPR without the {e['excluded']} configurations with Glorot on a strided or "
                f"grouped conv: {e['false']}/{e['n']} = {e['rate']:.2%}, 95% CI "
                f"[{e['ci95'][0]:.2%}, {e['ci95'][1]:.2%}]"
            )
        for fp in f["false_positives"]:
            print(f"  false positive #{fp['index']}: {fp['config']}")
            for r in fp["rows"]:
                print(
                    f"    {r['path']} {r['direction']}: ratio {r['ratio']:.4g} "
                    f"[{r['ratio_low']:.4g}, {r['ratio_high']:.4g}] against {r['law']}"
                )
    if "power" in s:
        p = s["power"]
        lo, hi = p["ci95"]
        print(
            f"\nPower (Var(w) x{p['error_scale']} in one conv, checked against "
            f"Flax's default): {p['detected']}/{p['n']} = {p['rate']:.2%}, "
            f"95% CI [{lo:.2%}, {hi:.2%}]; verdicts {p['verdicts']}"
        )
        for m in p["misses"]:
            print(f"  missed #{m['index']}: {m['config']}: {m['verdict']} {m['disagreeing_paths']}")
    print(f"\nWall time: {wall:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=112, help="correct configurations (FPR)")
    ap.add_argument("--power-trials", type=int, default=44, help="mutated configurations")
    ap.add_argument("--max-seeds", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="a handful of configurations")
    ap.add_argument("--out", default=None, help="write every configuration's result (JSON)")
    ap.add_argument("--no-cache", action="store_true", help="no persistent compilation cache")
    args = ap.parse_args(argv)

    import jax

    import varprop

    if not args.no_cache:
        varprop.enable_compilation_cache()
    if args.quick:
        fpr_cfgs, power_cfgs = quick_configs()
    else:
        fpr_cfgs, power_cfgs = fpr_configs(args.configs), power_configs(args.power_trials)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {"fpr": [], "power": []}
    total = len(fpr_cfgs) + len(power_cfgs)
    done = 0
    for kind, cfgs in (("fpr", fpr_cfgs), ("power", power_cfgs)):
        for cfg in cfgs:
            r = run_one(cfg, args.max_seeds)
            results[kind].append(r)
            done += 1
            flag = ""
            if kind == "fpr" and r["verdict"] == "disagrees":
                flag = "  <-- FALSE POSITIVE"
            if kind == "power" and not r.get("detected"):
                flag = f"  <-- MISSED {r.get('disagreeing_paths')}"
            if r["verdict"] == "error":
                flag = f"  <-- {r['error'][:200]}"
            print(
                f"[{done}/{total} {time.perf_counter() - t0:6.0f}s] {kind:5} "
                f"{r['verdict']:12} {r.get('seeds_used', 0):>3} seeds {r['seconds']:5.1f}s  "
                f"{describe(cfg)}{flag}",
                flush=True,
            )
    wall = time.perf_counter() - t0
    s = summarize(results["fpr"], results["power"])
    print_summary(s, wall)
    if args.out:
        doc = {
            "command": "python scripts/calibrate_models.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "started_utc": started.isoformat(timespec="seconds"),
            "wall_time_s": wall,
            "max_seeds": args.max_seeds,
            "quick": args.quick,
            "machine": {
                "python": platform.python_version(),
                "jax": jax.__version__,
                "backend": jax.default_backend(),
                "cpus": jax.device_count(),
            },
            **s,
            "configs": results,
        }
        Path(args.out).write_text(json.dumps(doc, indent=1, allow_nan=False, default=_num))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

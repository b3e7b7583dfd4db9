"""A smoke run on whatever accelerator JAX finds: prints the devices, and the time and
verdict of three jobs that should run the same on a GPU as on this CPU.

1. ``varprop.check`` of a 50-layer, 1024-wide He-normal ReLU MLP;
2. ``varprop.check_model`` of the example ResNet (BatchNorm, zero-initialized last scales);
3. a short coordinate check: the MLP family under SP and μP at three widths, Adam, 3 steps,
   the seeds sharded over the available devices (``varprop.width_sweep``): the fitted width
   exponent of the output's update, 0 under μP and positive under SP
   (``varprop.laws.predict_widths``; ``docs/coord_check.md``).

Each job's time includes its compilation (the first call in the process). Run from the
repository root, venv active::

    python scripts/gpu_smoke.py            # on a GPU machine: pip install -e . "jax[cuda12]"
    python scripts/gpu_smoke.py --quick    # smaller widths, for a CPU

Exit code: 0 when every job gave the expected verdict, 1 otherwise (which job, and why).
"""

from __future__ import annotations

import argparse
import sys
import time


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _flag(good: bool) -> str:
    return "" if good else "  FAILED"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller widths and depth (a CPU)")
    args = ap.parse_args(argv)

    import jax
    import numpy as np

    import varprop
    from varprop import example_models as em

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices: {jax.devices()}")
    ok = True

    depth, width = (20, 256) if args.quick else (50, 1024)
    widths = [width] * (depth + 1)
    r, t = _timed(lambda: varprop.check(widths, "relu", "he_normal", batch=256))
    good = r.verdict == "agrees"
    ok &= good
    states = f"{r.health['forward']['state']}/{r.health['backward']['state']}"
    print(f"check {depth}x{width} MLP (He, ReLU): {r.verdict}, {states}, {t:.1f} s" + _flag(good))

    images = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
    r, t = _timed(lambda: varprop.check_model(lambda rngs: em.resnet(rngs=rngs), images))
    good = r.verdict in ("agrees", "inconclusive") and not r.health["degenerate"]
    ok &= good
    fwd = r.health["forward"]["state"]
    print(f"check_model ResNet: {r.verdict}, forward {fwd}, {t:.1f} s" + _flag(good))

    sweep_widths = [64, 128, 256] if args.quick else [128, 512, 2048]
    n_dev = len(jax.devices())
    seeds = max(2, n_dev)
    family = varprop.mlp_family()
    for name in ("SP", "muP"):
        res, t = _timed(
            lambda name=name: varprop.width_sweep(
                family,
                sweep_widths,
                name,
                "adam",
                learning_rate=1e-4,
                steps=3,
                seeds=seeds,
            )
        )
        # The output's width exponent after 3 steps (SweepResult.slopes: per seed, the
        # log-log least-squares slope), the seeds' mean, against the law's first order.
        slope = float(np.mean(res.slopes("update")[:, -1]))
        law = varprop.laws.predict_widths(name, "adam", hidden_layers=len(res.layers) - 1)
        want = float(law.layers[-1].update_first_order)
        # A smoke bound, not a test of the law (docs/coord_check.md has that): the sign the
        # law gives, with room for 3 widths and few seeds.
        good = abs(slope) < 0.25 if want == 0 else slope > 0.5
        ok &= good
        print(
            f"coord check {name} (Adam, widths {sweep_widths}, {seeds} seeds over {n_dev} "
            f"devices): output-update slope {slope:+.3f} (law {want:+.2f}), {t:.1f} s" + _flag(good)
        )
    print("smoke:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

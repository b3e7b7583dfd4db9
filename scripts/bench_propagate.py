"""How long ``varprop.laws.propagate_model`` and ``varprop.derive_model`` take on a
ResNet-50-sized graph, against compiling and running the same model's forward pass.

The model is the 50-layer bottleneck ResNet (He et al. 2016) as the Flax ImageNet example
writes it in Linen (53 convs and a Dense, BatchNorm in training mode, zero-initialized last
scale per block), on a ``(B, 224, 224, 3)`` input. Every figure is a fresh process, so it
includes every first-call cost (tracing, any compilation) but not the imports:

* ``propagate``: ``propagate_model(model, ShapeDtypeStruct)``, then a second call (warm);
* ``imported``: the same first call with varprop's model code and its SymPy laws imported
  before the clock starts (what the first call costs beyond importing them);
* ``derive``: ``derive_model(...)`` and its Markdown and HTML (with the figure);
* ``jit``: the baseline, ``jax.jit`` of the model's ``init`` and of its forward pass on the
  same input, compiled and run once each: what running the model costs before any number.

Run from the repository root, venv active, with nothing else running::

    python scripts/bench_propagate.py                 # 5 runs of each, interleaved
    python scripts/bench_propagate.py --runs 3 --batch 8 --json out.json

Prints medians (and min-max) of each figure and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from bench_common import fmt, median, ratio

MODES = ("propagate", "imported", "derive", "jit")


def resnet50():
    """ResNet-50 in Linen: the bottleneck blocks of the Flax ImageNet example."""
    import flax.linen as nn
    import jax.numpy as jnp

    class Bottleneck(nn.Module):
        filters: int
        strides: int = 1

        @nn.compact
        def __call__(self, x, train: bool = True):
            conv = partial(nn.Conv, use_bias=False)
            norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
            y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
            y = conv(self.filters, (3, 3), (self.strides, self.strides))(y)
            y = nn.relu(norm()(y))
            y = norm(scale_init=nn.initializers.zeros)(conv(self.filters * 4, (1, 1))(y))
            if x.shape != y.shape:
                x = norm()(conv(self.filters * 4, (1, 1), (self.strides, self.strides))(x))
            return nn.relu(x + y)

    class ResNet50(nn.Module):
        classes: int = 1000

        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
            x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
            for i, blocks in enumerate((3, 4, 6, 3)):
                for j in range(blocks):
                    x = Bottleneck(64 * 2**i, 2 if i > 0 and j == 0 else 1)(x, train)
            return nn.Dense(self.classes)(jnp.mean(x, axis=(1, 2)))

    return ResNet50()


def _child(mode: str, batch: int) -> dict[str, float]:
    """One measurement in this (fresh) process."""
    import jax
    import jax.numpy as jnp

    import varprop

    model = resnet50()
    shape = (batch, 224, 224, 3)
    out: dict[str, float] = {}
    if mode == "imported":
        import varprop._src.model.predict
        import varprop._src.model.propagate_backward
        import varprop._src.recognize

        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        t = time.perf_counter()
        varprop.laws.propagate_model(model, x)
        out["cold"] = time.perf_counter() - t
    elif mode == "propagate":
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        t = time.perf_counter()
        p = varprop.laws.propagate_model(model, x)
        out["cold"] = time.perf_counter() - t
        t = time.perf_counter()
        varprop.laws.propagate_model(model, x)
        out["warm"] = time.perf_counter() - t
        out["rows"] = len(p.rows)
        out["convs"] = sum(r.kind == "conv" and r.direction == "forward" for r in p.rows)
    elif mode == "derive":
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        t = time.perf_counter()
        d = varprop.derive_model(model, x, title="ResNet-50")
        d.markdown()
        d.html()
        out["cold"] = time.perf_counter() - t
    else:
        x = jnp.ones(shape, jnp.float32)
        t = time.perf_counter()
        variables = jax.jit(model.init)(jax.random.key(0), x)
        fwd = jax.jit(lambda v, x: model.apply(v, x, mutable=["batch_stats"])[0])
        jax.block_until_ready(fwd(variables, x))
        out["cold"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per figure")
    ap.add_argument("--batch", type=int, default=8, help="the input's batch size")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.runs < 1 or args.batch < 1:
        ap.error(f"--runs and --batch must be >= 1; got {args.runs} and {args.batch}")
    if args.child:
        print(json.dumps(_child(args.child, args.batch)))
        return
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for i in range(args.runs):
        for mode in MODES:  # interleaved: a slow moment of the machine hits every mode
            cmd = [sys.executable, __file__, "--child", mode, "--batch", str(args.batch)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"run {i + 1}/{args.runs} {mode}: {runs[mode][-1]}", file=sys.stderr)

    def stat(mode, key):
        xs = [r[key] for r in runs[mode]]
        return median(xs), min(xs), max(xs)

    base = stat("jit", "cold")[0]
    rows = [
        ("propagate_model, first call", stat("propagate", "cold")),
        ("propagate_model, second call", stat("propagate", "warm")),
        ("propagate_model, first call, modules imported", stat("imported", "cold")),
        ("derive_model + markdown + html", stat("derive", "cold")),
        ("baseline: jit init + forward", stat("jit", "cold")),
    ]
    p0 = runs["propagate"][0]
    print(
        f"\nResNet-50 (Linen, batch {args.batch}, 224x224): {int(p0['convs'])} convs, "
        f"{int(p0['rows'])} rows; {args.runs} fresh processes each\n"
    )
    print("| figure | median s | min-max s | / baseline |")
    print("|---|---|---|---|")
    for name, (med, lo, hi) in rows:
        print(
            f"| {name} | {fmt(med, 2)} | {fmt(lo, 2)}-{fmt(hi, 2)} | {fmt(ratio(med, base), 3)} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()

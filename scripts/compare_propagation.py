"""Predicted (``propagate_model``, from the jaxpr alone) against measured (``check_model``'s
seed means) second moments, forward and backward, on the example models.

Run from the repository root, venv active::

    python scripts/compare_propagation.py                 # every example model
    python scripts/compare_propagation.py --models resnet --seeds 16

Prints one table per model (path, direction, predicted, measured, ratio, how) and, with
``--json FILE``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

MODELS = ("cnn", "resnet", "resnet_nobn", "mobilenet", "transformer", "transformer_postln")


def _model(name: str):
    import jax

    from varprop import example_models as em

    images = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
    tokens = jax.random.randint(jax.random.key(0), (8, 64), 0, 256)
    return {
        "cnn": (
            lambda rngs: em.cnn(rngs=rngs),
            jax.random.normal(jax.random.key(0), (16, 28, 28, 1)),
        ),
        "resnet": (lambda rngs: em.resnet(rngs=rngs), images),
        "resnet_nobn": (lambda rngs: em.resnet(rngs=rngs, norm=False), images),
        "mobilenet": (lambda rngs: em.mobilenet(rngs=rngs), images),
        "transformer": (lambda rngs: em.transformer(rngs=rngs), tokens),
        "transformer_postln": (lambda rngs: em.transformer(rngs=rngs, pre_ln=False), tokens),
    }[name]


def compare(name: str, seeds: int) -> dict:
    import varprop
    from varprop.laws import propagate_model

    model, x = _model(name)
    t0 = time.perf_counter()
    pred = propagate_model(model, x)
    t_pred = time.perf_counter() - t0
    r = varprop.check_model(model, x, seeds=seeds, max_seeds=seeds)
    measured = {(row.path, row.direction): row.measured for row in r.layers}
    rows = []
    for p in pred.rows:
        m = measured.get((p.path, p.direction))
        ratio = p.predicted / m if p.predicted is not None and m else None
        rows.append({**p.__dict__, "measured": m, "ratio": ratio})
    return {"model": name, "seeds": seeds, "propagate_s": t_pred, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    out = []
    for name in args.models:
        res = compare(name, args.seeds)
        out.append(res)
        print(
            f"\n{name} (propagation {res['propagate_s']:.2f} s, measured over {args.seeds} seeds)"
        )
        print(f"{'path':<26} {'dir':>8} {'predicted':>11} {'measured':>11} {'ratio':>7}  how")
        for r in res["rows"]:
            f = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
            print(
                f"{r['path']:<26} {r['direction']:>8} {f(r['predicted']):>11} "
                f"{f(r['measured']):>11} {f(r['ratio']):>7}  {r['how']}"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Solved scales on the example families: Flax's default (or He) init against
``varprop.solve_init``'s forward, backward, both and Fixup scales, each checked by
``varprop.check_model`` (verdict, row counts, health) and printed as Markdown tables.

The families are deeper members of the example models, where the init matters:

* ``plain_cnn``: 12 SAME-padded 3x3 convs of width 16 with ReLU, no normalization, a
  global average pool and a Dense head (:class:`PlainCNN`);
* ``resnet``: ``example_models.resnet(norm=False, stage_sizes=(6, 6), width=8)``, 12 basic
  blocks without BatchNorm, with Flax's default kernels and with He-normal ones;
* ``mobilenet``: ``example_models.mobilenet`` with 12 inverted residuals
  ((16, 1) x 6, (24, 2), (24, 1) x 5), BatchNorm after every conv;
* ``transformer``: ``example_models.transformer(layers=6, d_model=32, heads=2)``, post-LN
  and pre-LN.

Every solved init is checked through a factory that draws it afresh per seed
(``apply_init(base(rngs), inits, rngs.params())``), so ``check_model`` redraws the solved
scales with every seed, tested against ``expect=inits``.

Run from the repository root: ``python scripts/solve_init_examples.py`` (``--family
plain_cnn`` for one family; ``--seeds``/``--max-seeds`` for the seed budget).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

import varprop
from varprop import example_models as em
from varprop import initializers as I


class PlainCNN(nnx.Module):
    """``depth`` SAME 3x3 convs (``convs[i]``, width ``width``, with bias) each followed by
    ReLU, no normalization; global average pool; ``head`` (Dense, ``classes``)."""

    def __init__(
        self,
        *,
        depth: int = 12,
        width: int = 16,
        in_channels: int = 4,
        classes: int = 10,
        kernel_init: Any = None,
        rngs: nnx.Rngs,
    ):
        kw = {} if kernel_init is None else {"kernel_init": kernel_init}
        chans = [in_channels] + [width] * depth
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, (3, 3), padding="SAME", rngs=rngs, **kw)
                for a, b in itertools.pairwise(chans)
            ]
        )
        self.head = nnx.Linear(width, classes, rngs=rngs, **kw)

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(x.mean(axis=(1, 2)))


def _images(shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(jax.random.key(0), shape)


def _tokens(shape: tuple[int, ...], vocab: int = 256) -> jax.Array:
    return jax.random.randint(jax.random.key(0), shape, 0, vocab)


Factory = Callable[[nnx.Rngs], nnx.Module]

#: family -> (inputs, [(baseline name, factory)], the factory the solve starts from,
#: [(target, residual)] to solve)
FOUR = [("forward", "none"), ("backward", "none"), ("both", "none")]


def families() -> dict[str, tuple[Any, list[tuple[str, Factory]], Factory, list]]:
    he = I.he_normal()
    return {
        "plain_cnn": (
            _images((8, 16, 16, 4)),
            [
                ("Flax default (LeCun)", lambda rngs: PlainCNN(rngs=rngs)),
                ("He normal", lambda rngs: PlainCNN(kernel_init=he, rngs=rngs)),
            ],
            lambda rngs: PlainCNN(rngs=rngs),
            FOUR,
        ),
        "resnet": (
            _images((8, 16, 16, 3)),
            [
                (
                    "Flax default (LeCun)",
                    lambda rngs: em.resnet(norm=False, stage_sizes=(6, 6), width=8, rngs=rngs),
                ),
                (
                    "He normal",
                    lambda rngs: em.resnet(
                        norm=False, stage_sizes=(6, 6), width=8, kernel_init=he, rngs=rngs
                    ),
                ),
            ],
            lambda rngs: em.resnet(norm=False, stage_sizes=(6, 6), width=8, rngs=rngs),
            [*FOUR, ("forward", "fixup")],
        ),
        "mobilenet": (
            _images((8, 16, 16, 3)),
            [
                (
                    "Flax default (LeCun)",
                    lambda rngs: em.mobilenet(
                        blocks=((16, 1),) * 6 + ((24, 2),) + ((24, 1),) * 5, rngs=rngs
                    ),
                )
            ],
            lambda rngs: em.mobilenet(
                blocks=((16, 1),) * 6 + ((24, 2),) + ((24, 1),) * 5, rngs=rngs
            ),
            FOUR,
        ),
        "transformer_post_ln": (
            _tokens((4, 16)),
            [
                (
                    "Flax default (LeCun)",
                    lambda rngs: em.transformer(
                        layers=6, d_model=32, heads=2, pre_ln=False, rngs=rngs
                    ),
                )
            ],
            lambda rngs: em.transformer(layers=6, d_model=32, heads=2, pre_ln=False, rngs=rngs),
            FOUR,
        ),
    }


def solved_factory(base: Factory, inits: dict[str, Any]) -> Factory:
    """A factory that builds ``base`` and redraws the solved layers with ``inits``: the
    initializer calls check_model sees while it builds are the solved ones."""
    return lambda rngs: varprop.apply_init(base(rngs), inits, rngs.params())


def measure(model: Any, x: Any, *, expect=None, seeds: int, max_seeds: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = varprop.check_model(model, x, expect=expect, seeds=seeds, max_seeds=max_seeds)
    counts = Counter(row.verdict for row in r.layers if row.kind in ("dense", "conv", "embed"))
    return {
        "verdict": r.verdict,
        "seeds": r.seeds,
        "rows": counts,
        "health": {d: r.health[d] for d in ("forward", "backward")},
        "degenerate": len(r.health["degenerate"]),
        "seconds": time.perf_counter() - t0,
    }


def _health(h: dict[str, Any]) -> str:
    c = h["change"]
    change = f"{c:.3g}" if isinstance(c, float) else str(c)
    return f"{h['state']} ({change}, {h['steps']})"


def _rows(c: Counter) -> str:
    order = ("agrees", "disagrees", "inconclusive")
    parts = [f"{c[k]} {k}" for k in order if c[k]]
    parts += [f"{n} {k}" for k, n in sorted(c.items()) if k not in order]
    return ", ".join(parts)


HEADER = (
    "| init | verdict | layer rows | seeds | health forward (change, steps) "
    "| health backward (change, steps) | s |\n|---|---|---|---:|---|---|---:|"
)


def row(name: str, m: dict[str, Any]) -> str:
    return (
        f"| {name} | {m['verdict']} | {_rows(m['rows'])} | {m['seeds']} "
        f"| {_health(m['health']['forward'])} | {_health(m['health']['backward'])} "
        f"| {m['seconds']:.0f} |"
    )


def run_family(name: str, *, seeds: int, max_seeds: int) -> str:
    x, baselines, base, solves = families()[name]
    lines = [f"**{name}**", "", HEADER]
    for label, factory in baselines:
        lines.append(row(label, measure(factory, x, seeds=seeds, max_seeds=max_seeds)))
        print(lines[-1], flush=True)
    for target, residual in solves:
        inits = varprop.solve_init(base, x, target=target, residual=residual)
        m = measure(solved_factory(base, inits), x, expect=inits, seeds=seeds, max_seeds=max_seeds)
        label = f"solved {target}" + ("" if residual == "none" else f", {residual}")
        lines.append(row(label, m))
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=sorted(families()), action="append")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--max-seeds", type=int, default=8)
    a = p.parse_args(argv)
    tables = []
    for name in a.family or list(families()):
        tables.append(run_family(name, seeds=a.seeds, max_seeds=a.max_seeds))
        print(flush=True)
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()

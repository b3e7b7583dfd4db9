"""``varprop check --model pkg.module:factory``: the model check on the command line.

The factory is a callable returning a Flax module (NNX, or Linen: then ``model.init`` is
run on the inputs); called with no argument, or with ``rngs=`` when it takes one. Inputs are
Gaussian N(0, 1) of ``--input-shape`` (a fresh batch per seed), or integer token ids
uniform in ``[0, VOCAB)`` with ``--input-int VOCAB``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from varprop._src.errors import InputError

#: Options of the MLP check that mean nothing for a model.
MLP_ONLY = (
    "--widths",
    "--act",
    "--init",
    "--bias-init",
    "--norm",
    "--data",
    "--data-dir",
    "--batch",
)


def add_model_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FACTORY",
        help="check a Flax model: a callable returning an nnx.Module or a linen.Module "
        "(e.g. varprop.example_models:resnet)",
    )
    c.add_argument(
        "--input-shape",
        default=None,
        metavar="B,...",
        help="with --model: the input's shape, batch first (e.g. 8,32,32,3)",
    )
    c.add_argument(
        "--input-int",
        type=int,
        default=None,
        metavar="VOCAB",
        help="with --model: integer token ids in [0, VOCAB) instead of Gaussian inputs",
    )
    c.add_argument(
        "--call",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="with --model: a keyword argument of the model call (true/false, numbers, "
        "strings; repeatable), e.g. --call train=true",
    )
    c.add_argument(
        "--mode",
        choices=("train", "eval", "as-is"),
        default="train",
        help="with --model: normalization/dropout mode (default train)",
    )


def _fail(message: str, kind: str = "usage") -> InputError:
    return InputError(message, kind=kind)


def load_factory(spec: str) -> Any:
    """The object named by ``pkg.module:attr`` (the current directory is importable)."""
    if ":" not in spec:
        raise _fail(f"--model {spec!r} must be MODULE:FACTORY, e.g. varprop.example_models:cnn")
    mod_name, attr = spec.split(":", 1)
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise _fail(f"--model {spec}: cannot import module {mod_name!r}: {e}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _fail(f"--model {spec}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _fail(f"--model {spec}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def parse_shape(text: str | None) -> tuple[int, ...]:
    if text is None:
        raise _fail("--model needs --input-shape B,... (e.g. --input-shape 8,32,32,3)")
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise _fail(
            f"--input-shape {text!r}: allowed: whole numbers >= 1 separated by "
            "commas, e.g. 8,32,32,3"
        ) from None
    if not shape or any(n < 1 for n in shape):
        raise _fail(f"--input-shape {text!r}: allowed: whole numbers >= 1, e.g. 8,32,32,3")
    if shape[0] < 2:
        raise _fail(f"--input-shape {text!r}: the batch (first number) must be >= 2")
    return shape


def parse_call(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise _fail(f"--call {item!r} must be KEY=VALUE, e.g. --call train=true")
        k, v = item.split("=", 1)
        low = v.lower()
        val: Any
        if low in ("true", "false"):
            val = low == "true"
        else:
            try:
                val = int(v)
            except ValueError:
                try:
                    val = float(v)
                except ValueError:
                    val = v
        out[k.strip()] = val
    return out


def parse_expect(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        if "=" not in item:
            raise _fail(f"--expect {item!r}: with --model use GLOB=SPEC, e.g. '*/conv*=he_normal'")
        g, spec = item.split("=", 1)
        out[g] = spec
    return out


def run_model_check(args: argparse.Namespace, progress) -> Any:
    """The model check for ``varprop check --model``; returns its result."""
    import jax

    from varprop._src.model.check_model import check_model

    used = [o for o in MLP_ONLY if any(a == o or a.startswith(o + "=") for a in args.argv)]
    if used:
        raise _fail(
            f"{used[0]} is an option of the MLP check; with --model the model defines "
            "its layers (use --input-shape for the batch)"
        )
    factory = load_factory(args.model)
    shape = parse_shape(args.input_shape)
    vocab = args.input_int
    if vocab is not None and vocab < 1:
        raise _fail(f"--input-int {vocab}: the vocabulary size must be >= 1")

    def inputs(key):
        if vocab is not None:
            return jax.random.randint(key, shape, 0, vocab)
        return jax.random.normal(key, shape)

    try:
        return check_model(
            factory,
            inputs,
            expect=parse_expect(args.expect),
            call_kwargs=parse_call(args.call),
            mode=None if args.mode == "as-is" else args.mode,
            seeds=args.seeds,
            max_seeds=args.max_seeds,
            seed=args.seed,
            tolerance=args.tolerance,
            progress=progress,
        )
    except MemoryError as e:
        raise _fail(f"out of memory: {e}; use a smaller --input-shape", "resources") from None
    except Exception as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise _fail(
            f"out of memory: {str(e)[:300]}; use a smaller --input-shape", "resources"
        ) from None


def run_model_derivation(args: argparse.Namespace) -> int:
    """``varprop derive --model``: the model's derivation, printed or written to ``--out``."""
    import jax

    from varprop._src.model_report import derive_model

    if args.format == "text":
        raise _fail("--format text is for a scheme; with --model: markdown, latex or html")
    shape = parse_shape(args.input_shape)
    vocab = args.input_int
    if vocab is not None and vocab < 1:
        raise _fail(f"--input-int {vocab}: the vocabulary size must be >= 1")
    key = jax.random.key(0)
    x = (
        jax.random.randint(key, shape, 0, vocab)
        if vocab is not None
        else jax.random.normal(key, shape)
    )
    d = derive_model(
        load_factory(args.model),
        x,
        expect=parse_expect(args.expect),
        call_kwargs=parse_call(args.call),
        mode=None if args.mode == "as-is" else args.mode,
        measure=args.measure,
        title=f"Derivation of {args.model}",
    )
    if args.out is not None:
        for path in d.save(args.out):
            print(path)
        return 0
    print(d.render(args.format or "markdown"))
    return 0

"""The ``varprop`` console script.

Subcommands:
    check    the main job: measure an MLP's per-layer statistics and test its variance law.
    derive   print the derivation of a scheme's layer law (SymPy; no JAX needed).
    experiment  run one experiment reproducing a seed-note claim.
    report   run every experiment and write a self-contained HTML page and Markdown.

Exit codes: ``check``: 0 the law agrees, 1 disagrees, 3 inconclusive; ``experiment`` and
``report``: 0 every claim held, 1 one did not; every command: 2 usage
error (unknown name, malformed value, missing data), with a message and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="varprop",
        description="Initialization you can prove: variance laws, derivations and checks.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser(
        "check",
        help="measure a network and test its variance law (the main job)",
        description=(
            "Draw an MLP with the given initializer, run one jitted forward+backward probe over "
            "several seeds, and test every layer's forward and backward variance law against "
            "the expected scheme. With no arguments: a He-normal ReLU MLP on Gaussian inputs."
        ),
    )
    c.add_argument(
        "--init",
        default="he_normal",
        metavar="SPEC",
        help="kernel initializer that draws the weights (default he_normal)",
    )
    c.add_argument(
        "--expect",
        default=None,
        metavar="SPEC",
        help="scheme whose law is checked (default: --init)",
    )
    c.add_argument("--act", default="relu", metavar="SPEC", help="activation (default relu)")
    c.add_argument(
        "--widths",
        default="784,256x10,10",
        metavar="W",
        help="input,hidden...,output; 256x10 means 10 layers of 256 (default 784,256x10,10)",
    )
    c.add_argument(
        "--bias-init", default=None, metavar="SPEC", help="bias initializer (default: no bias)"
    )
    c.add_argument("--batch", type=_positive_int, default=128, help="examples per seed (>= 2)")
    c.add_argument("--seeds", type=_positive_int, default=4, help="seeds per round (>= 2)")
    c.add_argument(
        "--max-seeds", type=_positive_int, default=64, help="seed budget while inconclusive"
    )
    c.add_argument("--seed", type=int, default=0, help="base PRNG seed")
    c.add_argument(
        "--tolerance",
        type=float,
        default=0.1,
        help="practical band: ratios within [1/(1+t), 1+t] agree",
    )
    c.add_argument("--data", choices=("gaussian", "mnist"), default="gaussian")
    c.add_argument("--data-dir", default=None, help="MNIST IDX directory (or $VARPROP_MNIST_DIR)")
    c.add_argument(
        "--norm",
        choices=("none", "batchnorm", "layernorm"),
        default="none",
        help="normalization before each hidden activation (training mode; default none)",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object instead of the table")

    d = sub.add_parser(
        "derive",
        help="print the derivation of a scheme's forward and backward layer law",
        description=(
            "Derive, step by step, Var(w) of an initializer, the activation's moments, the "
            "forward and backward per-layer factors, the derived gain, and what they mean "
            "over depth."
        ),
    )
    d.add_argument(
        "--init",
        default="he_normal",
        metavar="SPEC",
        help="initializer as NAME[:key=value,...], e.g. he_normal:mode=fan_out (default he_normal)",
    )
    d.add_argument(
        "--act",
        default="relu",
        metavar="SPEC",
        help="activation as NAME[:key=value,...], e.g. leaky_relu:negative_slope=0.2 (default relu)",
    )
    d.add_argument("--fan-in", type=_positive_int, default=None, metavar="N")
    d.add_argument("--fan-out", type=_positive_int, default=None, metavar="M")
    d.add_argument("--format", choices=("text", "markdown", "latex"), default="text")

    for name in ("experiment", "report"):
        one = name == "experiment"
        e = sub.add_parser(
            name,
            help=(
                "run one experiment reproducing a seed-note claim"
                if one
                else "run every experiment; write report.html (self-contained) and report.md"
            ),
            description=(
                "Run one experiment: measure a claim of the seed notes, predict it from the "
                "law, and say whether it held."
                if one
                else "Run all experiments and write OUT/report.html, OUT/report.md and "
                "OUT/figures/."
            ),
        )
        if one:
            e.add_argument("name", nargs="?", metavar="NAME", help="experiment name (see --list)")
            e.add_argument("--list", action="store_true", help="list the experiments and exit")
        e.add_argument(
            "--out",
            required=not one,
            default=None,
            metavar="DIR",
            help="directory for the HTML and Markdown report" + ("" if not one else " (optional)"),
        )
        e.add_argument(
            "--quick", action="store_true", help="smaller runs (the whole report in minutes)"
        )
        e.add_argument("--seed", type=int, default=0, help="base PRNG seed")
        e.add_argument(
            "--data-dir",
            default=None,
            help="MNIST IDX directory (or $VARPROP_MNIST_DIR; else scikit-learn's digits)",
        )
        if not one:
            e.add_argument(
                "--only", default=None, metavar="NAMES", help="comma-separated experiment names"
            )
        e.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


def _cmd_derive(args: argparse.Namespace) -> int:
    from varprop._src.laws import activations as A
    from varprop._src.laws.catalog import scheme_from_spec
    from varprop._src.laws.derivation import derive

    try:
        scheme = scheme_from_spec(args.init)
    except (ValueError, TypeError) as e:
        raise _UsageError(f"--init: {e}") from None
    try:
        act = A.get_activation(args.act)
    except (ValueError, TypeError) as e:
        raise _UsageError(f"--act: {e}") from None
    if args.fan_out is not None and args.fan_in is None:
        raise _UsageError("--fan-out needs --fan-in too")
    try:
        d = derive(scheme, act, args.fan_in, args.fan_out)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    print(d.render(args.format))
    return 0


def parse_widths(text: str) -> list[int]:
    """``"784,256x20,10"`` -> ``[784, 256, ..., 256, 10]`` (20 hidden layers of 256)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        width, times = part, "1"
        if "x" in part:
            width, _, times = part.partition("x")
        if not width.isdigit() or not times.isdigit() or int(width) < 1 or int(times) < 1:
            raise _UsageError(
                f"--widths: bad entry {part!r} in {text!r}; expected WIDTH or WIDTHxCOUNT "
                "with whole numbers >= 1, e.g. 784,256x20,10"
            )
        out += [int(width)] * int(times)
    if len(out) < 2:
        raise _UsageError(f"--widths: need at least an input and an output width, got {text!r}")
    return out


def _cmd_check(args: argparse.Namespace) -> int:
    import math

    from varprop._src.laws import activations as A
    from varprop._src.laws.catalog import scheme_from_spec

    widths = parse_widths(args.widths)
    for opt, spec in (
        ("--init", args.init),
        ("--expect", args.expect),
        ("--bias-init", args.bias_init),
    ):
        if spec is not None:
            try:
                scheme_from_spec(spec)
            except (ValueError, TypeError) as e:
                raise _UsageError(f"{opt}: {e}") from None
    try:
        A.get_activation(args.act)
    except (ValueError, TypeError) as e:
        raise _UsageError(f"--act: {e}") from None
    if args.batch < 2:
        raise _UsageError(f"--batch must be >= 2, got {args.batch}")
    if args.seeds < 2:
        raise _UsageError(f"--seeds must be >= 2, got {args.seeds}")
    if args.max_seeds < args.seeds:
        raise _UsageError(f"--max-seeds must be >= --seeds ({args.seeds}), got {args.max_seeds}")
    if not math.isfinite(args.tolerance) or args.tolerance <= 0:
        raise _UsageError(f"--tolerance must be a finite number > 0, got {args.tolerance}")
    data = None
    if args.data == "mnist":
        from varprop._src.data import DataNotFoundError, standardized_mnist

        try:
            data = standardized_mnist(args.data_dir)
        except (DataNotFoundError, ValueError) as e:
            raise _UsageError(f"--data mnist: {e}") from None
        if widths[0] != data.shape[1]:
            raise _UsageError(
                f"--widths: MNIST has {data.shape[1]} inputs, the first width is {widths[0]}"
            )
    from varprop._src.check import check

    try:
        r = check(
            widths,
            args.act,
            args.init,
            expect=args.expect,
            bias_init=args.bias_init,
            batch=args.batch,
            seeds=args.seeds,
            max_seeds=args.max_seeds,
            seed=args.seed,
            tolerance=args.tolerance,
            data=data,
            norm=None if args.norm == "none" else args.norm,
        )
    except ValueError as e:
        raise _UsageError(str(e)) from None
    print(r.to_json() if args.json else r.summary())
    return {"agrees": 0, "disagrees": 1, "inconclusive": 3}[r.verdict]


def _cmd_experiments(args: argparse.Namespace) -> int:
    from varprop._src.cli_experiments import run_experiments_command

    return run_experiments_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return {
            "check": _cmd_check,
            "derive": _cmd_derive,
            "experiment": _cmd_experiments,
            "report": _cmd_experiments,
        }[args.command](args)
    except _UsageError as e:
        print(f"varprop {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``varprop`` console script.

Subcommands:
    check    the main job: measure an MLP's per-layer statistics and test its variance law.
    derive   print the derivation of a scheme's layer law (SymPy; no JAX needed).
    experiment  run one experiment reproducing a classic initialization claim.
    report   run every experiment and write a self-contained HTML page and Markdown.

Exit codes: ``check``: 0 the law holds and the network is healthy, 1 the law disagrees, 3
inconclusive, 4 the law holds but the network is degenerate (with ``--require-healthy`` also
when a direction vanishes or explodes); ``experiment`` and ``report``: 0 every claim held, 1
one did not, 3 none failed but an experiment could not run; every command: 141 when the
reader closes the output pipe early (as for a process killed by SIGPIPE), 2 the input cannot be used (unknown name, malformed or
out-of-range value, unreadable data, a run that cannot fit in memory) or an internal error,
with one line on stderr and no traceback (``--debug`` shows the traceback of an internal
error). Under ``--json`` (anywhere on the command line) an error is also printed on stdout
as ``{"error": message, "kind": kind}``; ``kind`` is one of
:data:`varprop._src.errors.KINDS` or ``"internal"``.

The XLA compilation cache (:func:`enable_compilation_cache`) is on for ``varprop check``
unless ``--no-cache`` is given.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from varprop._src.cli_model import add_model_arguments, run_model_check
from varprop._src.errors import InputError

#: The kind reported (exit 2) for an unexpected exception: a bug, not the user's input.
INTERNAL = "internal"

#: ``--widths`` may expand to at most this many layers (the scanned probe has been run at
#: depth 10,000; a larger count is a typo, and expanding it would exhaust memory first).
MAX_LAYERS = 100_000

#: Seeds ``varprop check`` accepts: JAX's default (32-bit) ``jax.random.key`` maps a larger or
#: negative seed onto one of these (``key(2**32) == key(0)``, ``key(-1) == key(2**32 - 1)``),
#: and refuses anything outside int64 with an OverflowError.
MAX_SEED = 2**32 - 1

_COMMANDS = ("check", "derive", "experiment", "report")
_T = TypeVar("_T")


class _UsageError(InputError):
    """A usage error (exit 2); ``varprop._src.cli_experiments`` raises it too."""

    def __init__(self, message: str, kind: str = "usage") -> None:
        super().__init__(message, kind)


class _ParseError(Exception):
    """argparse's own error (unknown option, bad choice, ...), raised instead of exiting."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are raised (one line, exit 2, JSON under --json)
    instead of printing the usage block and calling ``sys.exit``. Subparsers inherit it."""

    def error(self, message: str) -> NoReturn:
        raise _ParseError(self.prog, message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="varprop",
        description="Initialization you can prove: variance laws, derivations and checks.",
        epilog=(
            "Every command also takes --json (errors as one JSON object on stdout; check: the "
            "result too) and --debug (the traceback of an internal error)."
        ),
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
        action="append",
        default=None,
        metavar="SPEC",
        help="scheme whose law is checked (default: --init); with --model: GLOB=SPEC per "
        "layer path, repeatable",
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
    c.add_argument(
        "--batch", type=_positive_int, default=64, help="examples per seed (>= 2; default 64)"
    )
    c.add_argument("--seeds", type=_positive_int, default=4, help="seeds per round (>= 2)")
    c.add_argument(
        "--max-seeds",
        type=_positive_int,
        default=64,
        help="seed budget while inconclusive (>= --seeds)",
    )
    c.add_argument("--seed", type=_seed, default=0, help=f"base PRNG seed (0 to {MAX_SEED})")
    c.add_argument(
        "--tolerance",
        type=_number,
        default=0.1,
        help="practical band: ratios within [1/(1+t), 1+t] agree; 0 < t <= 1 (default 0.1)",
    )
    c.add_argument("--data", choices=("gaussian", "mnist"), default="gaussian")
    c.add_argument(
        "--data-dir",
        default=None,
        help="MNIST IDX directory, with --data mnist (or $VARPROP_MNIST_DIR)",
    )
    c.add_argument(
        "--norm",
        choices=("none", "batchnorm", "layernorm"),
        default="none",
        help="normalization before each hidden activation (training mode; default none)",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    c.add_argument(
        "--require-healthy",
        action="store_true",
        help="exit 4 also when the law holds but a direction vanishes or explodes",
    )
    c.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use the persistent XLA compilation cache ($VARPROP_CACHE_DIR, else "
        "$XDG_CACHE_HOME/varprop/jax, else ~/.cache/varprop/jax)",
    )
    c.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    c.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    add_model_arguments(c)

    d = sub.add_parser(
        "derive",
        help="print the derivation of a scheme's forward and backward layer law",
        description=(
            "Derive, step by step, Var(w) of an initializer, the activation's moments, the "
            "forward and backward per-layer factors, the derived gain, and what they mean: "
            "over depth for a constant-width stack (no widths), or end to end over a real "
            "sequence (--widths, or one layer given by --fan-in/--fan-out)."
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
    d.add_argument(
        "--widths", metavar="W", help="derive over these widths (as check: 784,512x3,10)"
    )
    d.add_argument(
        "--kernel",
        metavar="KxK",
        help="conv kernel, e.g. 3x3: --widths are channels, fan_in = c_in*kh*kw, fan_out = "
        "c_out*kh*kw (borders and strides are not modelled yet)",
    )
    d.add_argument("--fan-in", type=_positive_int, metavar="N", help="one layer's fan_in")
    d.add_argument("--fan-out", type=_positive_int, metavar="M", help="its fan_out (default N)")
    d.add_argument("--batch", type=_positive_int, default=64, help="for float32's limits (64)")
    d.add_argument(
        "--format",
        choices=("text", "markdown", "latex", "html"),
        default=None,
        help="text (default), markdown or latex; with --model: markdown (default), latex or html",
    )
    add_model_arguments(d)
    d.add_argument(
        "--expect",
        action="append",
        default=None,
        metavar="GLOB=SPEC",
        help="with --model: the law of the layers matching GLOB (repeatable)",
    )
    d.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="with --model: write model_derivation.md/.tex/.html and its figure to DIR",
    )
    d.add_argument(
        "--measure",
        action="store_true",
        help="with --model: also measure with check_model (4 seeds) for the figure",
    )

    for name in ("experiment", "report"):
        one = name == "experiment"
        e = sub.add_parser(
            name,
            help=(
                "run one experiment reproducing a classic initialization claim"
                if one
                else "run every experiment; write report.html (self-contained) and report.md"
            ),
            description=(
                "Run one experiment: measure a classic initialization claim, predict it from the "
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
        e.add_argument("--seed", type=_seed, default=0, help=f"base PRNG seed (0 to {MAX_SEED})")
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


def _show(text: str, limit: int = 40) -> str:
    """``repr`` of a command-line value, shortened for a one-line message."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


_ASCII_INT = re.compile(r"[+-]?[0-9]+")
_DIGITS = re.compile(r"[0-9]+")


def _ascii_int(text: str) -> int | None:
    """The integer in ``text`` when it is written in ASCII digits 0-9, else None.

    ``int()`` and ``str.isdigit()`` also accept other scripts' digits (``'٣'``, ``'８'``) or
    superscripts (``'²'.isdigit()`` is True); a command line takes only ASCII.

    >>> _ascii_int("128"), _ascii_int(" -3 "), _ascii_int("٣"), _ascii_int("²"), _ascii_int("1e3")
    (128, -3, None, None, None)
    """
    t = text.strip()
    if not _ASCII_INT.fullmatch(t) or len(t) > 4000:  # int() refuses > 4300 digits
        return None
    return int(t)


def _positive_int(text: str) -> int:
    v = _ascii_int(text)
    if v is None:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {_show(text)}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


def _seed(text: str) -> int:
    v = _ascii_int(text)
    if v is None:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 to {MAX_SEED}, got {_show(text)}"
        )
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"expected 0 to {MAX_SEED}, got {v}; JAX's 32-bit PRNG keys repeat outside this "
            "range (seed 2**32 draws what seed 0 draws)"
        )
    return v


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_show(text)}") from None


def _spec(option: str, parse: Callable[[str], _T], spec: str) -> _T:
    """Parse an ``--init``/``--act``-style SPEC, turning its errors into exit-2 errors."""
    try:
        return parse(spec)
    except InputError:
        raise
    except (ValueError, TypeError, ArithmeticError) as e:
        kind = "numerics" if isinstance(e, ArithmeticError) else "usage"
        raise _UsageError(f"{option} {_show(spec)}: {e}", kind=kind) from None


def _cmd_derive(args: argparse.Namespace) -> int:
    if args.model is not None:
        from varprop._src.cli_model import run_model_derivation

        return run_model_derivation(args)
    if args.format == "html":
        raise _UsageError("--format html needs --model (a scheme's derivation is text)")
    args.format = args.format or "text"
    from varprop._src.laws import activations as A
    from varprop._src.laws import derivation
    from varprop._src.laws.catalog import scheme_from_spec

    scheme = _spec("--init", scheme_from_spec, args.init)
    act = _spec("--act", A.get_activation, args.act)
    if args.fan_out is not None and args.fan_in is None:
        raise _UsageError("--fan-out needs --fan-in too")
    if args.widths is not None and args.fan_in is not None:
        raise _UsageError("--widths and --fan-in/--fan-out: give one of them")
    if args.kernel is not None and args.widths is None:
        raise _UsageError("--kernel needs --widths (the channel counts)")
    widths = parse_widths(args.widths) if args.widths is not None else None
    kernel = _parse_kernel(args.kernel) if args.kernel is not None else ()
    try:
        text = derivation.derive(
            scheme, act, args.fan_in, args.fan_out, widths=widths, kernel=kernel, batch=args.batch
        ).render(args.format)
    except InputError:
        raise
    except ArithmeticError as e:
        raise _UsageError(
            f"cannot derive --init {args.init} with --act {args.act}: {type(e).__name__}: {e} "
            "(a value outside what float64 can represent)",
            kind="numerics",
        ) from None
    except ValueError as e:
        raise _UsageError(f"--init {args.init} with --act {args.act}: {e}") from None
    print(text)
    return 0


def _parse_kernel(text: str) -> tuple[int, ...]:
    """``"3x3"`` -> ``(3, 3)``: a conv kernel's spatial shape (1 to 3 dims).

    >>> _parse_kernel("3x3"), _parse_kernel("5")
    ((3, 3), (5,))
    """
    parts = text.split("x")
    dims = [_ascii_int(p) if _DIGITS.fullmatch(p.strip()) else None for p in parts]
    if not 1 <= len(dims) <= 3 or any(k is None or k < 1 for k in dims):
        raise _UsageError(
            f"--kernel: bad shape {_show(text)}; expected KxK with whole numbers >= 1, e.g. 3x3"
        )
    return tuple(k for k in dims if k is not None)


def parse_widths(text: str) -> list[int]:
    """``"784,256x20,10"`` -> ``[784, 256, ..., 256, 10]`` (20 hidden layers of 256).

    Only ASCII digits are accepted, and at most :data:`MAX_LAYERS` layers.

    >>> parse_widths("4,3x2,1")
    [4, 3, 3, 1]
    """
    parts: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        width, times = part, "1"
        if "x" in part:
            width, _, times = part.partition("x")
        w = _ascii_int(width) if _DIGITS.fullmatch(width.strip()) else None
        n = _ascii_int(times) if _DIGITS.fullmatch(times.strip()) else None
        if w is None or n is None or w < 1 or n < 1:
            raise _UsageError(
                f"--widths: bad entry {_show(part)} in {_show(text, 80)}; expected WIDTH or "
                "WIDTHxCOUNT with whole numbers >= 1 in ASCII digits, e.g. 784,256x20,10"
            )
        parts.append((w, n))
    layers = sum(n for _, n in parts) - 1
    if layers > MAX_LAYERS:
        raise _UsageError(f"--widths {_show(text, 80)}: at most {MAX_LAYERS} layers, got {layers}")
    out = [w for w, n in parts for _ in range(n)]
    if len(out) < 2:
        raise _UsageError(f"--widths: need at least an input and an output width, got {text!r}")
    return out


# -- the persistent XLA compilation cache ---------------------------------------------------


def default_cache_dir() -> Path:
    """Where :func:`enable_compilation_cache` keeps compiled programs by default.

    ``$VARPROP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/varprop/jax`` (when that is an
    absolute path), else ``~/.cache/varprop/jax``.

    >>> import os
    >>> default_cache_dir().parts[-2:] if "VARPROP_CACHE_DIR" not in os.environ else ("varprop", "jax")
    ('varprop', 'jax')
    """
    env = os.environ.get("VARPROP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "varprop" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Keep XLA-compiled programs on disk, so that a second process skips their compilation.

    ``varprop check`` does this itself (``--no-cache`` turns it off); importing varprop never
    changes JAX's configuration, so library users call this once, before their first
    ``jit``, to get the same. Every program is cached, however fast it compiled or small it is
    (the probe compiles as several programs of a few seconds each).

    Args:
        path: the cache directory (created if missing); default :func:`default_cache_dir`.

    Returns:
        The directory in use.

    Raises:
        InputError: (``kind="io"``) the directory cannot be created or written; JAX's
            configuration is then left unchanged.

    Example:
        >>> import jax, tempfile, varprop
        >>> d = varprop.enable_compilation_cache(tempfile.mkdtemp())
        >>> jax.config.jax_compilation_cache_dir == str(d)
        True
        >>> jax.config.update("jax_compilation_cache_dir", None)  # off again
    """
    import tempfile

    p = Path(path).expanduser() if path is not None else default_cache_dir()
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise InputError(
            f"cannot use {str(p)!r} as the compilation cache: {e.strerror or e}", kind="io"
        ) from None
    import jax

    try:  # a cache already opened at another directory is reopened at this one
        from jax._src import compilation_cache as cc

        if cc.is_initialized() and _jax_cache_dir() != str(p):
            cc.reset_cache()
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        pass
    jax.config.update("jax_compilation_cache_dir", str(p))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return p


def _jax_cache_dir() -> str | None:
    """JAX's ``jax_compilation_cache_dir`` setting (None when no cache is configured)."""
    import jax

    return getattr(jax.config, "jax_compilation_cache_dir", None)


_CACHE_OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


def _use_cache(args: argparse.Namespace) -> Callable[[], None] | None:
    """Turn the cache on for one ``varprop check`` unless ``--no-cache`` or the caller (or
    ``$JAX_COMPILATION_CACHE_DIR``) already chose a directory; warn and go on if unusable.

    Returns a function that puts JAX's settings back as they were (so that ``main()`` called
    in a program or a test leaves no cache switched on behind it), or None.
    """
    if args.no_cache or _jax_cache_dir():
        return None
    import jax

    before = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
    try:
        enable_compilation_cache()
    except InputError as e:
        _warn(args.command, f"{e}; continuing without it")
        return None

    def restore() -> None:
        for name, value in before.items():
            jax.config.update(name, value)
        try:
            from jax._src import compilation_cache as cc

            cc.reset_cache()
        except (ImportError, AttributeError):  # pragma: no cover - private API moved
            pass

    return restore


# -- check ---------------------------------------------------------------------------------------


def _warn(command: str, message: str) -> None:
    print(f"varprop {command}: warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _progress_printer(args: argparse.Namespace) -> Callable[[str], None] | None:
    if args.quiet:
        return None

    def show(message: str) -> None:
        print(f"varprop check: {_one_line(message)}", file=sys.stderr, flush=True)

    return show


#: check()'s parameters whose option is not ``--`` + the name with dashes.
_OPTION_OF = {"activation": "--act", "data": "--data mnist"}


def _option_error(e: InputError) -> InputError:
    """check()'s ``InputError`` with the parameter it names shown as the CLI's option."""
    msg = str(e)
    if e.param is not None and msg.startswith(e.param):
        option = _OPTION_OF.get(e.param, "--" + e.param.replace("_", "-"))
        msg = option + msg[len(e.param) :]
    return _UsageError(msg, kind=e.kind)


def _cmd_check(args: argparse.Namespace) -> int:
    if args.model is not None:
        restore_cache = _use_cache(args)
        try:
            r = run_model_check(args, _progress_printer(args))
        except InputError as e:
            raise _option_error(e) from None
        finally:
            if restore_cache is not None:
                restore_cache()
        print(r.to_json() if args.json else r.summary())
        return r.exit_code(args.require_healthy)
    for option in ("--input-shape", "--input-int", "--call", "--mode"):
        if any(a == option or a.startswith(option + "=") for a in args.argv):
            raise _UsageError(f"{option} is an option of the model check: add --model")
    if args.expect is not None and len(args.expect) > 1:
        raise _UsageError("--expect is given more than once; the MLP check takes one SPEC")
    args.expect = args.expect[0] if args.expect else None
    widths = parse_widths(args.widths)
    # Everything else check() validates itself (its InputError names the parameter, shown
    # here as its option); only what is the CLI's own is checked here.
    if args.data_dir is not None and args.data != "mnist":
        raise _UsageError(
            f"--data-dir is only read with --data mnist (got --data {args.data}); add "
            "--data mnist or drop --data-dir"
        )
    data = None
    if args.data == "mnist":
        from varprop._src.data import DataNotFoundError, standardized_mnist

        try:
            data = standardized_mnist(args.data_dir)
        except DataNotFoundError as e:
            raise _UsageError(f"--data mnist: {e}", kind="data") from None
        except InputError as e:
            raise _UsageError(f"--data mnist: {e}", kind=e.kind) from None
    restore_cache = _use_cache(args)
    try:
        r = _run_check(args, widths, data)
    finally:
        if restore_cache is not None:
            restore_cache()
    print(r.to_json() if args.json else r.summary())
    return r.exit_code(args.require_healthy)


def _run_check(args: argparse.Namespace, widths: list[int], data: Any) -> Any:
    """Call ``check()`` with the CLI's arguments, turning its input errors into exit 2."""
    from varprop._src import check as C

    kwargs: dict[str, object] = {}
    progress = _progress_printer(args)
    if progress is not None and "progress" in inspect.signature(C.check).parameters:
        kwargs["progress"] = progress
    try:
        r = C.check(
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
            **kwargs,  # type: ignore[arg-type]
        )
    except InputError as e:
        raise _option_error(e) from None
    except ValueError as e:  # a library check below check() that is not an InputError yet
        raise _UsageError(str(e)) from None
    except MemoryError as e:
        raise _UsageError(
            f"out of memory: {e}; use smaller --widths, --batch or --seeds", kind="resources"
        ) from None
    except Exception as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise _UsageError(
            f"out of memory: {_one_line(str(e))[:300]}; use smaller --widths, --batch or --seeds",
            kind="resources",
        ) from None
    return r


def _cmd_experiments(args: argparse.Namespace) -> int:
    from varprop._src.cli_experiments import run_experiments_command

    return run_experiments_command(args)


# -- main: dispatch and the error contract ---------------------------------------------------------


def _one_line(message: str) -> str:
    return re.sub(r"\s*\n\s*", " ", message.strip())


def _global_flags(argv: list[str]) -> tuple[list[str], bool, bool]:
    """Take ``--json`` and ``--debug`` from anywhere before ``--``: they decide how errors are
    reported, so they must work even when the rest of the command line does not parse."""
    end = argv.index("--") if "--" in argv else len(argv)
    head, tail = argv[:end], argv[end:]
    rest = [a for a in head if a not in ("--json", "--debug")]
    return rest + tail, "--json" in head, "--debug" in head


def _fail(prog: str, message: str, kind: str, json_mode: bool, label: str = "error: ") -> int:
    message = _one_line(message)
    print(f"{prog}: {label}{message}", file=sys.stderr, flush=True)
    if json_mode:
        print(json.dumps({"error": message, "kind": kind}), flush=True)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``varprop`` command line; returns the exit code (see the module docstring)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    argv_, json_mode, debug = _global_flags(raw)
    command = next((a for a in argv_ if a in _COMMANDS), None)
    prog = f"varprop {command}" if command else "varprop"
    parser = _parser()
    try:
        args = parser.parse_args(argv_)
        args.argv = raw
        args.json = json_mode
        args.debug = debug
        if args.command is None:
            parser.print_help()
            return 0
        return {
            "check": _cmd_check,
            "derive": _cmd_derive,
            "experiment": _cmd_experiments,
            "report": _cmd_experiments,
        }[args.command](args)
    except _ParseError as e:
        return _fail(e.prog, str(e), "usage", json_mode)
    except InputError as e:
        return _fail(prog, str(e), e.kind, json_mode)
    except FileNotFoundError as e:
        from varprop._src.data import DataNotFoundError

        if not isinstance(e, DataNotFoundError) or debug:
            return _internal(prog, e, json_mode, debug)
        return _fail(prog, str(e), "data", json_mode)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:
        # The reader closed the pipe (``varprop experiment --list | head``): end quietly with
        # the status a shell reports for a process killed by SIGPIPE, and keep Python from
        # complaining when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as e:
        return _internal(prog, e, json_mode, debug)


def _internal(prog: str, e: Exception, json_mode: bool, debug: bool) -> int:
    if debug:
        raise e
    message = (
        f"internal error: {type(e).__name__}: {_one_line(str(e))} "
        "(rerun with --debug for the traceback)"
    )
    return _fail(prog, message, INTERNAL, json_mode, label="")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``varprop experiment`` and ``varprop report``: argument checks, the run, the output.

Everything that can be checked before the first experiment runs is checked first, so bad
input costs a second, not minutes: the experiment names (``NAME``, ``--only``), ``--out``
(a directory, or creatable, and writable; see :func:`varprop._src.report.check_out_dir`)
and the data (MNIST from ``--data-dir`` or ``$VARPROP_MNIST_DIR`` is read; without either,
the documented fallback, scikit-learn's digits; see :func:`varprop._src.report.check_data`).

Exit codes:
    0  every claim of every experiment held.
    1  a claim did not hold: a finding (reported, with the evidence).
    2  the input cannot be used (unknown name, empty ``--only``, unusable ``--out`` or data
       directory, a report that could not be written): one line on stderr, no traceback.
    3  inconclusive: no claim failed, but an experiment could not run (it raised; its
       section in the report says so, with the error type and message) or made no claim.
       The other experiments still run and are reported.
"""

from __future__ import annotations

import argparse
import sys

from varprop._src.errors import InputError


def run_experiments_command(args: argparse.Namespace) -> int:
    """Run the ``experiment`` or ``report`` command; returns its exit code.

    Input that cannot be used raises :class:`~varprop._src.errors.InputError` (``kind``
    ``"usage"``, ``"io"`` for ``--out``, ``"data"`` for the data), which the CLI prints as one
    line (a JSON object under ``--json``) with exit code 2.
    """
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from varprop._src import report as R

    if args.command == "experiment" and args.list:
        for e in _registry().values():
            print(f"{e.name:22s} {e.title}")
        return 0
    # --out and the data first: they need no experiment module loaded (a second, not four).
    if args.out is not None:
        R.check_out_dir(args.out)
    R.check_data(args.data_dir)
    reg = _registry()
    allowed = ", ".join(reg)
    if args.command == "experiment":
        if args.name is None:
            raise InputError(f"give an experiment NAME or --list; allowed: {allowed}")
        names = [args.name]
    elif args.only is not None:
        names = list(dict.fromkeys(n.strip() for n in args.only.split(",") if n.strip()))
        if not names:
            raise InputError(
                f"--only {args.only!r} names no experiment; give comma-separated names from: "
                f"{allowed}"
            )
    else:
        names = None
    for n in names or []:
        if n not in reg:
            raise InputError(f"unknown experiment {n!r}; allowed: {allowed}")
    rep = R.run_report(
        names,
        quick=args.quick,
        seed=args.seed,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        command=" ".join(["varprop", *args.argv]),
    )
    for r in rep.results:
        print(R.summary_text(r))
        if not r.ran:
            print(f"varprop {args.command}: {r.name} raised:", file=sys.stderr)
            print(r.data.get("traceback", r.error), file=sys.stderr, end="")
    if args.out is not None:
        page, md = R.write_report(rep, args.out)
        print(f"wrote {page} and {md} ({rep.seconds:.1f} s)")
    print(rep.verdict_line())
    return rep.exit_code


def _registry() -> dict:
    from varprop._src.experiments.base import registry

    return registry()

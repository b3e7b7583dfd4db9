"""``varprop experiment`` and ``varprop report``: argument checks, the run, the output."""

from __future__ import annotations

import argparse
from pathlib import Path

from varprop._src.cli import _UsageError


def run_experiments_command(args: argparse.Namespace) -> int:
    from varprop._src import report as R
    from varprop._src.experiments.base import registry

    reg = registry()
    if args.command == "experiment":
        if args.list:
            for e in reg.values():
                print(f"{e.name:22s} {e.title}")
            return 0
        if args.name is None:
            raise _UsageError(f"give an experiment NAME or --list; allowed: {', '.join(reg)}")
        names = [args.name]
    else:
        names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    for n in names or []:
        if n not in reg:
            raise _UsageError(f"unknown experiment {n!r}; allowed: {', '.join(reg)}")
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise _UsageError(f"--out {args.out!r} exists and is not a directory")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise _UsageError(f"--data-dir {args.data_dir!r} is not a directory")
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
    if args.out is not None:
        page, md = R.write_report(rep, args.out)
        print(f"wrote {page} and {md} ({rep.seconds:.1f} s)")
    return 0 if rep.held else 1

"""Reports: run experiments and write them as one self-contained HTML page and Markdown.

Each section puts the law (SymPy's LaTeX, rendered), the predicted-vs-measured table, the
claims with their verdicts, and the figures side by side. The HTML needs nothing beside it:
figures are embedded as PNG data URIs and every equation is typeset to inline SVG by
matplotlib's mathtext (an equation mathtext cannot parse is shown as its LaTeX source). The
Markdown version writes the figures next to it under ``figures/`` and keeps the equations as
``$$ ... $$``.

Robustness:

- An experiment that raises does not stop the others: its section says it could not run,
  with the exception's type and message, and it makes no claims (:func:`run_report`).
- :attr:`Report.exit_code` (the exit code of ``varprop report`` and ``varprop experiment``):
  0 every claim of every experiment held; 1 a claim did not hold (a finding); 3 no claim
  failed but an experiment could not run or made no claim (inconclusive). Exit code 2 (the
  CLI's) is for input that cannot be used, found before the first experiment runs:
  :func:`check_out_dir` and :func:`check_data`.
- :func:`write_report` renders everything first, writes it into a temporary directory inside
  the output directory and then moves ``report.html``, ``report.md`` and ``figures/`` into
  place (restoring the previous ones if a move fails), so an interrupted run never leaves a
  mix of two runs and ``figures/`` holds exactly this run's figures. Nothing else in the
  output directory is touched.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import os
import platform
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varprop._src.errors import InputError
from varprop._src.experiments.base import (
    ExperimentResult,
    RunConfig,
    failed_result,
    get,
    no_progress,
    registry,
    tqdm_progress,
)

#: Exit codes of ``varprop report`` / ``varprop experiment`` (2, bad input, is the CLI's).
EXIT_HELD, EXIT_FINDING, EXIT_INCONCLUSIVE = 0, 1, 3

#: What :func:`write_report` writes (and replaces) in the output directory; nothing else.
REPORT_FILES = ("figures", "report.md", "report.html")

#: Marks a ``figures/`` directory as written by :func:`write_report` (replaced wholesale).
FIGURES_MARKER = ".varprop-figures"

_STAGE_PREFIX = ".varprop-report-"


@dataclass
class Report:
    """Results of a set of experiments and how they were run."""

    results: list[ExperimentResult]
    quick: bool
    seed: int
    seconds: float
    command: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def held(self) -> bool:
        """True when every experiment ran, made claims, and every claim held."""
        return self.exit_code == EXIT_HELD

    @property
    def n_claims(self) -> int:
        return sum(len(r.claims) for r in self.results)

    @property
    def n_failed_claims(self) -> int:
        """Claims that did not hold: findings."""
        return sum(r.n_failed_claims for r in self.results)

    @property
    def not_run(self) -> list[ExperimentResult]:
        """Experiments that raised, or returned without a claim: no verdict either way."""
        return [r for r in self.results if not r.ran or not r.claims]

    @property
    def exit_code(self) -> int:
        """0 every claim held; 1 a claim did not hold; 3 none failed but an experiment
        could not run (or there was nothing to run).

        Example:
            >>> from varprop._src.experiments.base import Claim, ExperimentResult
            >>> ok = ExperimentResult("a", "A", "", claims=[Claim("s", True, "e")])
            >>> bad = ExperimentResult("b", "B", "", claims=[Claim("s", False, "e")])
            >>> broken = ExperimentResult("c", "C", "", error="RuntimeError: boom")
            >>> [Report(rs, True, 0, 0.0).exit_code for rs in ([ok], [ok, bad, broken], [ok, broken])]
            [0, 1, 3]
        """
        if self.n_failed_claims:
            return EXIT_FINDING
        if not self.results or self.not_run:
            return EXIT_INCONCLUSIVE
        return EXIT_HELD

    def verdict_line(self) -> str:
        """One line for the terminal: what the exit code means for this run."""
        n = len(self.results)
        if self.n_failed_claims:
            bad = [r.name for r in self.results if r.n_failed_claims]
            return (
                f"{self.n_failed_claims} of {self.n_claims} claims did NOT hold "
                f"({', '.join(bad)})" + (self._not_run_text("; ") if self.not_run else "")
            )
        if self.not_run:
            return f"inconclusive: no claim failed{self._not_run_text(', but ')}"
        return f"all {self.n_claims} claims of {n} experiment{'s' * (n != 1)} held"

    def _not_run_text(self, lead: str) -> str:
        parts = [f"{r.name} ({r.error or 'made no claim'})" for r in self.not_run]
        n = len(self.results)
        return f"{lead}{len(parts)} of {n} experiments could not run: " + "; ".join(parts)


def run_report(
    names: Sequence[str] | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    data_dir: str | None = None,
    progress: bool = True,
    command: str = "",
) -> Report:
    """Run the named experiments (default all, in report order) and collect a :class:`Report`.

    With ``progress``, a bar over the experiments and one inside each long loop (tqdm on
    stderr; hidden when stderr is not a terminal).

    An experiment that raises an exception (not ``KeyboardInterrupt``/``SystemExit``) is
    recorded by :func:`~varprop._src.experiments.base.failed_result` and the others still run.
    """
    import jax

    exps = [get(n) for n in names] if names else list(registry().values())
    cfg = RunConfig(
        quick=quick,
        seed=seed,
        data_dir=data_dir,
        progress=tqdm_progress if progress else no_progress,
    )
    outer = tqdm_progress if progress else no_progress
    t0 = time.perf_counter()
    results = [_run_one(e, cfg) for e in outer(exps, total=len(exps), desc="experiments")]
    meta = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": str(jax.device_count()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    return Report(results, quick, seed, time.perf_counter() - t0, command, meta)


def _run_one(exp: Any, cfg: RunConfig) -> ExperimentResult:
    t0 = time.perf_counter()
    try:
        return exp.run(cfg)
    except Exception as exc:  # one broken experiment is reported, not fatal to the others
        return failed_result(exp.name, exp.title, exc, time.perf_counter() - t0)


# ------------------------------------------------------------------------ checks before a run


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Check, before anything runs, that the report can be written to ``out_dir``.

    It must be a directory or creatable (its nearest existing ancestor a directory), and
    writable; ``report.html`` and ``report.md`` in it must not be directories; an existing
    ``figures/`` must be one that varprop wrote (it is replaced by the next run's figures),
    so that a user's own ``figures/`` is never deleted.

    Raises:
        InputError: ``kind="io"``, naming the path and what is wrong.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> check_out_dir(d / "new" / "report") == d / "new" / "report"
        True
        >>> (d / "f.txt").write_text("x")
        1
        >>> check_out_dir(d / "f.txt" / "sub")
        Traceback (most recent call last):
        ...
        varprop._src.errors.InputError: --out ...: ... exists and is not a directory
    """
    out = Path(out_dir)
    shown = repr(str(out_dir))
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(f"--out {shown} exists and is not a directory", kind="io")
        writable_dir = out
    else:
        anc = out.absolute().parent
        while not (anc.exists() or anc.is_symlink()):
            anc = anc.parent
        if not anc.is_dir():
            raise InputError(
                f"--out {shown} cannot be created: {str(anc)!r} exists and is not a directory",
                kind="io",
            )
        writable_dir = anc
    if not os.access(writable_dir, os.W_OK | os.X_OK):
        what = "is" if writable_dir == out else f"cannot be created: {str(writable_dir)!r} is"
        raise InputError(f"--out {shown} {what} not writable", kind="io")
    for name in ("report.html", "report.md"):
        if (out / name).is_dir():
            raise InputError(
                f"--out {shown}: {name} in it is a directory; the report writes a file there",
                kind="io",
            )
    figs = out / "figures"
    if (figs.exists() or figs.is_symlink()) and not _is_report_figures(figs):
        raise InputError(
            f"--out {shown}: it has a figures/ that varprop did not write (the report replaces "
            "figures/ with its own); choose another --out or move that directory",
            kind="io",
        )
    return out


def _is_report_figures(figs: Path) -> bool:
    """Whether ``figs`` is a figures directory written by :func:`write_report`: it holds the
    marker, or (reports written before the marker) only ``<experiment>-<name>.png`` files."""
    if figs.is_symlink() or not figs.is_dir():
        return False
    if (figs / FIGURES_MARKER).is_file():
        return True
    names = "|".join(re.escape(n) for n in registry())
    pattern = re.compile(rf"(?:{names})-[A-Za-z0-9_.-]+\.png")
    return all(p.is_file() and pattern.fullmatch(p.name) for p in figs.iterdir())


def check_data(data_dir: str | os.PathLike | None = None) -> str:
    """Read the experiments' data before the first one runs, so a bad data directory is an
    error in a second rather than after minutes of experiments.

    MNIST from ``data_dir``, else ``$VARPROP_MNIST_DIR``: when either is given it must hold
    readable MNIST IDX files. When neither is, the documented fallback (scikit-learn's digits)
    is loaded. Returns the data's one-line description.

    Raises:
        InputError: ``kind="data"``, naming the directory (and where it came from) and what
            was expected.
    """
    from varprop._src.data import ENV_VAR, load_classification, load_digits_dataset

    if data_dir is not None:
        source, where = data_dir, f"--data-dir {str(data_dir)!r}"
    else:
        source = os.environ.get(ENV_VAR) or None
        where = f"${ENV_VAR}={source!r}"
    if source is not None and not Path(source).is_dir():
        raise InputError(f"{where} is not a directory", kind="data")
    try:
        if source is None:
            return load_digits_dataset().note
        return load_classification(source, allow_fallback=False).note
    except (OSError, ValueError, ImportError, EOFError) as e:  # InputError is a ValueError
        msg = " ".join(str(e).split())
        if source is None:
            raise InputError(
                f"no MNIST directory given and the fallback (scikit-learn's digits) could not "
                f"be loaded: {type(e).__name__}: {msg}",
                kind="data",
            ) from None
        raise InputError(f"{where}: {msg}", kind="data") from None


# ----------------------------------------------------------------------------- formatting


def fmt(v: Any) -> str:
    """A table cell: 4 significant digits for floats, ``—`` for None, text as is."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        if 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return fmt(v.item())
    except ImportError:  # pragma: no cover
        pass
    return str(v)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _verdict_word(r: ExperimentResult) -> str:
    if not r.ran:
        return "could not run"
    if not r.claims:
        return "made no claim"
    return "held" if r.held else "did NOT hold"


def _not_run_text(r: ExperimentResult) -> str:
    """The sentence a section shows instead of claims when the experiment has none."""
    if not r.ran:
        return f"This experiment could not run: {r.error}. It made no claims."
    return "This experiment made no claims."


# ------------------------------------------------------------------------------- markdown


def render_markdown(report: Report, figure_dir: str = "figures") -> str:
    """The report as Markdown; figures are referenced as ``figure_dir/<name>.png``."""
    out = [
        "# varprop: initialization claims, measured",
        "",
        _intro(report),
        "",
        "| # | experiment | claims | verdict | time |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(report.results, 1):
        n_ok = sum(c.held for c in r.claims)
        if r.claims and not r.held:
            verdict = "❌ failed"
        elif r.held:
            verdict = "✅ held"
        else:
            verdict = "⚠️ could not run" if not r.ran else "⚠️ no claims"
        out.append(
            f"| {i} | [{r.title}](#{_slug(r.title)}) | {n_ok}/{len(r.claims)} | "
            f"{verdict} | {r.seconds:.1f} s |"
        )
    for r in report.results:
        out += ["", f"## {r.title}", "", r.summary, ""]
        if r.laws:
            out += ["**Law** (derived by `varprop.laws`):", ""]
            for law in r.laws:
                out += [f"- {law.label}:", "", f"  $$ {law.latex} $$", ""]
        if r.rows:
            out += ["| quantity | predicted | measured | note |", "|---|---|---|---|"]
            for row in r.rows:
                cells = [row.quantity, fmt(row.predicted), fmt(row.measured), row.note]
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            out.append("")
        out += ["**Claims:**", ""]
        for c in r.claims:
            out.append(f"- {'✅' if c.held else '❌'} {c.statement} — {c.evidence}")
        if not r.claims:
            out.append(f"**⚠️ {_not_run_text(r)}**")
        out.append("")
        for f in r.figures:
            out += [f"![{f.caption}]({figure_dir}/{r.name}-{f.name}.png)", "", f"*{f.caption}*", ""]
        for note in r.notes:
            out += [f"> Note: {note}", ""]
        out.append(f"*Run time: {r.seconds:.1f} s.*")
    return "\n".join(out) + "\n"


def _intro(report: Report) -> str:
    n_claims = report.n_claims
    n_held = n_claims - report.n_failed_claims
    mode = "quick" if report.quick else "full"
    env = ", ".join(f"{k} {v}" for k, v in report.meta.items())
    cmd = f" Command: `{report.command}`." if report.command else ""
    not_run = [r.name for r in report.results if not r.ran]
    broken = (
        f" {len(not_run)} experiment{'s' * (len(not_run) != 1)} could not run "
        f"({', '.join(not_run)}): inconclusive."
        if not_run
        else ""
    )
    return (
        f"{len(report.results)} experiments ({mode} mode, seed {report.seed}): "
        f"{n_held} of {n_claims} claims held.{broken} Total run time {report.seconds:.1f} s."
        f"{cmd} Environment: {env}."
    )


# ----------------------------------------------------------------------------------- html


@functools.lru_cache(maxsize=1024)
def tex_to_svg(tex: str) -> str | None:
    """Inline SVG of ``tex`` typeset by matplotlib's mathtext, or None if it cannot parse
    (cached: a model's layers share a few laws)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import mathtext

    # mathtext knows no \limits (SymPy's integrals use it) and no \displaystyle.
    for candidate in (tex, re.sub(r"\\limits|\\displaystyle", "", tex)):
        buf = io.BytesIO()
        try:
            mathtext.math_to_image(f"${candidate}$", buf, dpi=100, format="svg")
            break
        except (ValueError, RuntimeError):
            continue
    else:
        return None
    svg = buf.getvalue().decode("utf-8")
    return svg[svg.index("<svg") :]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}
.ok{color:#116611;font-weight:600}.bad{color:#aa1111;font-weight:600}
.warn{color:#995500;font-weight:600}.error{background:#fde8e8;border-left:4px solid #aa1111;
padding:.4em .8em}
.law{margin:.3em 0 .3em 1em}.law svg{vertical-align:middle;max-width:100%}
figure{display:inline-block;margin:.5em 1em .5em 0;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#444;max-width:640px}
.note{background:#fff8e0;border-left:4px solid #e0b000;padding:.4em .8em}
code{background:#f4f4f4;padding:0 .2em}
"""


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>varprop report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>varprop: initialization claims, measured</h1>",
        f"<p>{_inline_code(e(_intro(report)))}</p>",
        "<table><tr><th>#</th><th>experiment</th><th>claims</th><th>verdict</th><th>time</th></tr>",
    ]
    for i, r in enumerate(report.results, 1):
        n_ok = sum(c.held for c in r.claims)
        if r.claims and not r.held:
            verdict = '<span class="bad">failed</span>'
        elif r.held:
            verdict = '<span class="ok">held</span>'
        else:
            verdict = f'<span class="warn">{"could not run" if not r.ran else "no claims"}</span>'
        parts.append(
            f'<tr><td>{i}</td><td><a href="#{_slug(r.title)}">{e(r.title)}</a></td>'
            f"<td>{n_ok}/{len(r.claims)}</td><td>{verdict}</td><td>{r.seconds:.1f} s</td></tr>"
        )
    parts.append("</table>")
    for r in report.results:
        parts.append(f'<h2 id="{_slug(r.title)}">{e(r.title)}</h2>')
        parts.append(f"<p>{e(r.summary)}</p>")
        if r.laws:
            parts.append("<h3>Law <small>(derived by <code>varprop.laws</code>)</small></h3>")
            for law in r.laws:
                svg = tex_to_svg(law.latex)
                body = svg if svg is not None else f"<code>{e(law.latex)}</code>"
                parts.append(
                    f'<div class="law">{e(law.label)}: {body}'
                    f"<br><small><code>{e(law.text)}</code></small></div>"
                )
        if r.rows:
            parts.append(
                "<h3>Prediction and measurement</h3><table><tr><th>quantity</th>"
                "<th>predicted</th><th>measured</th><th>note</th></tr>"
            )
            for row in r.rows:
                parts.append(
                    f"<tr><td>{e(row.quantity)}</td><td>{e(fmt(row.predicted))}</td>"
                    f"<td>{e(fmt(row.measured))}</td><td>{e(row.note)}</td></tr>"
                )
            parts.append("</table>")
        parts.append("<h3>Claims</h3><ul>")
        for c in r.claims:
            mark = (
                '<span class="ok">✔ held</span>' if c.held else '<span class="bad">✘ failed</span>'
            )
            parts.append(f"<li>{mark}: {e(c.statement)} — {e(c.evidence)}</li>")
        parts.append("</ul>")
        if not r.claims:
            parts.append(f'<p class="error">⚠ {e(_not_run_text(r))}</p>')
        for f in r.figures:
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(
                f'<figure><img alt="{e(f.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(f.caption)}</figcaption></figure>"
            )
        for note in r.notes:
            parts.append(f'<p class="note">{e(note)}</p>')
        parts.append(f"<p><small>Run time {r.seconds:.1f} s.</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _inline_code(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def write_report(report: Report, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained), ``report.md`` and ``figures/*.png``.

    Everything is rendered first, then written into a temporary directory inside
    ``out_dir`` and moved into place: ``figures/`` (replaced as a whole, so it holds exactly
    this run's figures), then ``report.md``, then ``report.html``. If a move fails, the
    previous files are put back. SIGINT/SIGTERM/SIGHUP are held off while the files are
    written and moved (they take effect when it is done), so only a SIGKILL or a power cut
    can leave the temporary directory (``.varprop-report-*``) behind. Other files in
    ``out_dir`` are never touched. Returns the paths of the HTML and Markdown files.

    Raises:
        InputError: ``kind="io"``: ``out_dir`` is unusable (see :func:`check_out_dir`) or a
            write failed (the message says which path and why).
    """
    out = check_out_dir(out_dir)
    md_text = render_markdown(report)
    html_text = render_html(report)
    with _signals_held():  # a few file writes: no Ctrl-C leaves a staging directory behind
        try:
            out.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=out))
        except OSError as e:
            msg = f"--out {str(out_dir)!r}: cannot write there: {e}"
            raise InputError(msg, kind="io") from None
        try:
            _stage_and_move(report, md_text, html_text, stage, out)
        except OSError as e:
            raise InputError(
                f"--out {str(out_dir)!r}: writing the report failed, the previous one is kept: {e}",
                kind="io",
            ) from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return out / "report.html", out / "report.md"


def _stage_and_move(report: Report, md_text: str, html_text: str, stage: Path, out: Path) -> None:
    """Write the report into ``stage``, then move it into ``out``."""
    figs = stage / "figures"
    figs.mkdir()
    (figs / FIGURES_MARKER).write_text(
        "Written by varprop report: the next report replaces this directory.\n",
        encoding="utf-8",
    )
    for r in report.results:
        for f in r.figures:
            (figs / f"{r.name}-{f.name}.png").write_bytes(f.png)
    (stage / "report.md").write_text(md_text, encoding="utf-8")
    (stage / "report.html").write_text(html_text, encoding="utf-8")
    _move_into_place(stage, out)


def _move_into_place(stage: Path, out: Path) -> None:
    """Move ``stage``'s :data:`REPORT_FILES` into ``out``; on any failure, undo."""
    old = stage / "previous"
    old.mkdir()
    saved: list[str] = []
    placed: list[str] = []
    with _signals_held():
        try:
            for name in REPORT_FILES:
                target = out / name
                if target.exists() or target.is_symlink():
                    os.replace(target, old / name)
                    saved.append(name)
                os.replace(stage / name, target)
                placed.append(name)
        except BaseException:
            for name in reversed(placed):
                os.replace(out / name, stage / name)
            for name in reversed(saved):
                os.replace(old / name, out / name)
            raise


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block is done, then act on them as before.

    Python-level handlers that record the signal, not ``pthread_sigmask``: the mask is per
    thread, and JAX's threads would take the signal. Only the main thread can set handlers;
    elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, lambda s, frame: caught.append(s))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            handler = previous[sig]
            if callable(handler):
                handler(sig, None)  # SIGINT: KeyboardInterrupt, now
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), sig)  # the default action (terminate), now


def summary_text(r: ExperimentResult) -> str:
    """A plain-text summary of one experiment for the terminal."""
    lines = [f"{r.title}: {_verdict_word(r)} ({r.seconds:.1f} s)", f"  {r.summary}"]
    if not r.ran:
        lines.append(f"  error: {r.error}")
    for law in r.laws:
        lines.append(f"  law  {law.label}: {law.text}")
    if r.rows:
        w = max(len(row.quantity) for row in r.rows)
        lines.append(f"  {'quantity'.ljust(w)}  {'predicted':>12}  {'measured':>12}")
        for row in r.rows:
            lines.append(
                f"  {row.quantity.ljust(w)}  {fmt(row.predicted):>12}  {fmt(row.measured):>12}"
                + (f"  {row.note}" if row.note else "")
            )
    for c in r.claims:
        lines.append(f"  [{'ok' if c.held else 'FAILED'}] {c.statement}: {c.evidence}")
    for note in r.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)

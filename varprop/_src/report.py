"""Reports: run experiments and write them as one self-contained HTML page and Markdown.

Each section puts the law (SymPy's LaTeX, rendered), the predicted-vs-measured table, the
claims with their verdicts, and the figures side by side. The HTML needs nothing beside it:
figures are embedded as PNG data URIs and every equation is typeset to inline SVG by
matplotlib's mathtext (an equation mathtext cannot parse is shown as its LaTeX source). The
Markdown version writes the figures next to it under ``figures/`` and keeps the equations as
``$$ ... $$``.
"""

from __future__ import annotations

import base64
import html
import io
import math
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varprop._src.experiments.base import (
    ExperimentResult,
    RunConfig,
    get,
    no_progress,
    registry,
    tqdm_progress,
)


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
        return bool(self.results) and all(r.held for r in self.results)


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
    results = [e.run(cfg) for e in outer(exps, total=len(exps), desc="experiments")]
    meta = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": str(jax.device_count()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    return Report(results, quick, seed, time.perf_counter() - t0, command, meta)


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


def _verdict_word(held: bool) -> str:
    return "held" if held else "did NOT hold"


# ------------------------------------------------------------------------------- markdown


def render_markdown(report: Report, figure_dir: str = "figures") -> str:
    """The report as Markdown; figures are referenced as ``figure_dir/<name>.png``."""
    out = [
        "# varprop: the seed notes' claims, measured",
        "",
        _intro(report),
        "",
        "| # | experiment | claims | verdict | time |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(report.results, 1):
        n_ok = sum(c.held for c in r.claims)
        out.append(
            f"| {i} | [{r.title}](#{_slug(r.title)}) | {n_ok}/{len(r.claims)} | "
            f"{'✅ held' if r.held else '❌ failed'} | {r.seconds:.1f} s |"
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
        out.append("")
        for f in r.figures:
            out += [f"![{f.caption}]({figure_dir}/{r.name}-{f.name}.png)", "", f"*{f.caption}*", ""]
        for note in r.notes:
            out += [f"> Note: {note}", ""]
        out.append(f"*Run time: {r.seconds:.1f} s.*")
    return "\n".join(out) + "\n"


def _intro(report: Report) -> str:
    n_claims = sum(len(r.claims) for r in report.results)
    n_held = sum(c.held for r in report.results for c in r.claims)
    mode = "quick" if report.quick else "full"
    env = ", ".join(f"{k} {v}" for k, v in report.meta.items())
    cmd = f" Command: `{report.command}`." if report.command else ""
    return (
        f"{len(report.results)} experiments ({mode} mode, seed {report.seed}): "
        f"{n_held} of {n_claims} claims held. Total run time {report.seconds:.1f} s.{cmd} "
        f"Environment: {env}."
    )


# ----------------------------------------------------------------------------------- html


def tex_to_svg(tex: str) -> str | None:
    """Inline SVG of ``tex`` typeset by matplotlib's mathtext, or None if it cannot parse."""
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
        "<h1>varprop: the seed notes' claims, measured</h1>",
        f"<p>{_inline_code(e(_intro(report)))}</p>",
        "<table><tr><th>#</th><th>experiment</th><th>claims</th><th>verdict</th><th>time</th></tr>",
    ]
    for i, r in enumerate(report.results, 1):
        n_ok = sum(c.held for c in r.claims)
        verdict = '<span class="ok">held</span>' if r.held else '<span class="bad">failed</span>'
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


def write_report(report: Report, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained), ``report.md`` and ``figures/*.png``.

    Returns the paths of the HTML and Markdown files.
    """
    out = Path(out_dir)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    for r in report.results:
        for f in r.figures:
            (figs / f"{r.name}-{f.name}.png").write_bytes(f.png)
    md = out / "report.md"
    md.write_text(render_markdown(report), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    return page, md


def summary_text(r: ExperimentResult) -> str:
    """A plain-text summary of one experiment for the terminal."""
    lines = [f"{r.title}: {_verdict_word(r.held)} ({r.seconds:.1f} s)", f"  {r.summary}"]
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

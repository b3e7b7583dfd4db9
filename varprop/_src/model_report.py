r"""The derivation of a user's model: each layer's law with its real fans and border factors,
the moments predicted over depth, health per block, and a figure (``varprop derive
--model``, :func:`derive_model`).

Everything comes from :func:`varprop.laws.propagate_model` (no run of the model), and,
with ``measure=True``, from :func:`varprop.check_model` for the measured points of the
figure and the table.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("markdown", "latex", "html")


@dataclass(frozen=True)
class LayerDerivation:
    """One layer: its law and the numbers the propagation put in it."""

    path: str
    kind: str
    op: str
    init: str
    variance_law: str  # Var(w) in LaTeX, in the scheme's fans
    fan_in: float
    fan_out: float
    variance: float | None
    x2: float | None  # predicted E[x^2] of the input
    border: float | None  # E[y^2] / (Var(w) fan_in E[x^2]): taps read at the borders
    y2: float | None
    g2: float | None  # predicted E[(dL/dx)^2]
    how_forward: str
    how_backward: str
    measured_y2: float | None = None
    measured_g2: float | None = None


@dataclass
class ModelDerivation:
    """What :func:`derive_model` derived; ``markdown()``, ``latex()``, ``html()``,
    ``save(out_dir)``."""

    title: str
    layers: list[LayerDerivation]
    health: dict[str, str]
    notes: list[str]
    figure: bytes = field(default=b"", repr=False)
    seconds: float = 0.0

    # -- rendering ---------------------------------------------------------------------

    def _rows(self) -> list[list[str]]:
        out = []
        for i, r in enumerate(self.layers):
            out.append(
                [
                    str(i),
                    r.path,
                    r.op,
                    _g(r.fan_in),
                    _g(r.fan_out),
                    _g(r.variance),
                    _g(r.border),
                    _g(r.x2),
                    _g(r.y2),
                    _g(r.g2),
                    r.how_forward,
                ]
                + ([_g(r.measured_y2), _g(r.measured_g2)] if self.measured else [])
            )
        return out

    @property
    def measured(self) -> bool:
        return any(r.measured_y2 is not None for r in self.layers)

    def _head(self) -> list[str]:
        h = ["#", "layer", "op", "fan_in", "fan_out", "Var(w)", "border", "E[x²]", "E[y²]"]
        h += ["E[(∂L/∂x)²]", "how"]
        return h + (["measured E[y²]", "measured E[(∂L/∂x)²]"] if self.measured else [])

    def _laws(self) -> list[tuple[str, str]]:
        """(label, LaTeX) per layer."""
        out = []
        for r in self.layers:
            if r.kind == "embed":
                tex = rf"E[y^2] = E[w^2] = {_tex(r.variance)}"
            else:
                tex = (
                    rf"\mathrm{{Var}}(w) = {r.variance_law} = {_tex(r.variance)},\quad "
                    rf"E[y^2] = \mathrm{{Var}}(w)\,n_{{in}}\,b\,E[x^2] = {_tex(r.variance)}"
                    rf"\cdot {_g(r.fan_in)} \cdot {_g(r.border)} \cdot {_tex(r.x2)}"
                    rf" = {_tex(r.y2)}"
                )
            out.append((f"{r.path} ({r.init})", tex))
        return out

    def markdown(self, figure_name: str | None = None) -> str:
        lines = [f"# {self.title}", "", _INTRO, ""]
        lines += ["## Per layer", ""]
        head = self._head()
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        lines += ["| " + " | ".join(r) + " |" for r in self._rows()]
        lines += ["", "## Laws", ""]
        lines += [f"- {label}: ${tex}$" for label, tex in self._laws()]
        lines += ["", "## Health", ""]
        lines += [f"- {d}: {s}" for d, s in self.health.items()]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if figure_name:
            lines += ["", f"![predicted moments over depth]({figure_name})"]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        lines = [r"\section*{" + _tex_escape(self.title) + "}", _tex_escape(_INTRO), ""]
        lines.append(r"\begin{itemize}")
        for label, tex in self._laws():
            lines.append(rf"\item {_tex_escape(label)}: ${tex}$")
        lines.append(r"\end{itemize}")
        for d, s in self.health.items():
            lines.append(rf"\noindent {_tex_escape(d)}: {_tex_escape(s)}\\")
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        from varprop._src.report import _CSS, tex_to_svg

        e = html.escape
        parts = [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{e(self.title)}</h1><p>{e(_INTRO)}</p><h2>Per layer</h2><table><tr>",
            "".join(f"<th>{e(h)}</th>" for h in self._head()) + "</tr>",
        ]
        for row in self._rows():
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
        parts.append("</table><h2>Laws</h2>")
        for label, tex in self._laws():
            svg = tex_to_svg(tex)
            body = svg if svg is not None else f"<code>{e(tex)}</code>"
            parts.append(f'<div class="law">{e(label)}: {body}</div>')
        parts.append("<h2>Health</h2><ul>")
        parts += [f"<li>{e(d)}: {e(s)}</li>" for d, s in self.health.items()]
        parts.append("</ul>")
        if self.notes:
            parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in self.notes))
            parts.append("</ul>")
        if self.figure:
            data = base64.b64encode(self.figure).decode("ascii")
            parts.append(f'<img alt="predicted moments" src="data:image/png;base64,{data}">')
        parts.append("</body></html>")
        return "\n".join(parts)

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``model_derivation.md``, ``.tex``, ``.html`` and the figure; returns them."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        fig = "model_derivation.png"
        if self.figure:
            (out / fig).write_bytes(self.figure)
            written.append(out / fig)
        for name, text in (
            ("model_derivation.md", self.markdown(fig if self.figure else None)),
            ("model_derivation.tex", self.latex()),
            ("model_derivation.html", self.html()),
        ):
            (out / name).write_text(text)
            written.append(out / name)
        return written

    def render(self, fmt: str) -> str:
        return {"markdown": self.markdown, "latex": self.latex, "html": self.html}[fmt]()


_INTRO = (
    "Predicted at init from the model's jaxpr by varprop.laws.propagate_model: each layer's "
    "law at its real fans, with the border factor b (the mean fraction of the kernel's taps "
    "inside the input), the second moments it gives over depth, and how each was obtained "
    "(exact law / mean-field / approximation). Backward: E[(dL/d out)^2] = 1 at the outputs."
)


def _g(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def _tex(v: float | None) -> str:
    if v is None:
        return "?"
    s = f"{v:.4g}"
    if "e" in s:
        m, e = s.split("e")
        return rf"{m}\times 10^{{{int(e)}}}"
    return s


def _tex_escape(t: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%")):
        t = t.replace(a, b)
    for a in "#$":
        t = t.replace(a, "\\" + a)
    return t


def _health(layers: list[LayerDerivation], sizes: list[tuple[int, ...]]) -> dict[str, str]:
    """Compounded change of the predicted E[y^2] (forward) and E[(dL/dx)^2] (backward)
    between consecutive layers of the same size: ``preserved`` within a factor 10, as
    check_model's health."""
    out = {}
    for d, key in (("forward", "y2"), ("backward", "g2")):
        log, steps = 0.0, 0
        for i in range(1, len(layers)):
            a, b = getattr(layers[i - 1], key), getattr(layers[i], key)
            if sizes[i - 1] != sizes[i] or not a or not b:
                continue
            log += math.log(b / a) if d == "forward" else math.log(a / b)
            steps += 1
        state = "preserved"
        if log < -math.log(10):
            state = "vanishing"
        elif log > math.log(10):
            state = "exploding"
        out[d] = f"{state} (x{math.exp(log):.3g} over {steps} layer-to-layer steps at equal sizes)"
    return out


def _figure(layers: list[LayerDerivation]) -> bytes:
    from varprop._src.experiments.base import figure_png, new_figure

    fig, ax = new_figure(2, 1, width=5.0, height=3.4)
    x = np.arange(len(layers))
    for a, key, mkey, title in (
        (ax[0, 0], "y2", "measured_y2", "forward E[y²]"),
        (ax[0, 1], "g2", "measured_g2", "backward E[(∂L/∂x)²]"),
    ):
        p = [getattr(r, key) or np.nan for r in layers]
        a.semilogy(x, p, "o-", label="predicted")
        m = [getattr(r, mkey) for r in layers]
        if any(v is not None for v in m):
            a.semilogy(x, [v if v else np.nan for v in m], "x", ms=8, label="measured")
        a.set(title=title, xlabel="layer (order of the computation)")
        a.legend()
    return figure_png(fig)


def derive_model(
    model: Any,
    inputs: Any,
    *,
    variables: Any = None,
    call_kwargs: dict[str, Any] | None = None,
    expect: dict[str, Any] | None = None,
    mode: str | None = "train",
    rngs: Any = None,
    measure: bool = False,
    seeds: int = 4,
    title: str | None = None,
) -> ModelDerivation:
    """The derivation of a Flax model's layer laws and predicted moments (module docstring).

    Arguments as :func:`varprop.laws.propagate_model`; ``measure=True`` also runs
    :func:`varprop.check_model` (``seeds`` seeds) for the measured points.

    Example:
        >>> import jax, jax.numpy as jnp, varprop
        >>> from flax import nnx
        >>> def mlp(rngs):
        ...     return nnx.Sequential(nnx.Linear(64, 32, rngs=rngs), jax.nn.relu)
        >>> d = varprop.derive_model(mlp, jax.ShapeDtypeStruct((16, 64), jnp.float32))
        >>> r = d.layers[0]
        >>> r.path, r.fan_in, round(r.variance * 64, 3), round(r.y2, 3)
        ('layers/0', 64.0, 1.0, 1.0)
        >>> d.save("derivation")  # doctest: +SKIP
    """
    import time

    from varprop._src.model.expected import law_for, layer_laws, row_paths
    from varprop._src.model.predict import run_both_ways, trace_for_propagation
    from varprop._src.model.propagate import Moments

    t0 = time.perf_counter()
    traced = trace_for_propagation(model, inputs, variables, call_kwargs, mode, rngs)
    mf, found, _ = traced
    paths = row_paths(found)
    laws = layer_laws(found, mf, paths, expect)
    interp, back = run_both_ways(traced, list(laws))
    layers, sizes = [], []
    for site, path, law in zip(found.layers, paths, laws, strict=True):
        init, _ = law_for(site, path, mf, expect)
        x = interp.layer_in.get(site.index)
        y = interp.at.get((site.eqn, ()))
        x2 = float(np.mean(x.m2)) if isinstance(x, Moments) else None
        y2 = float(np.mean(y.m2)) if isinstance(y, Moments) else None
        gx = back.layer_back.get((site.index, ()), (None, "unknown"))
        g2 = float(np.mean(np.broadcast_to(gx[0], site.x_shape))) if gx[0] is not None else None
        var = None if law is None else law.variance
        border = None
        if site.kind != "embed" and var and x2 and y2 is not None:
            border = y2 / (var * site.fan_in * x2)
        layers.append(
            LayerDerivation(
                path=path,
                kind=site.kind,
                op=_op(site),
                init="no law" if init is None else repr(init),
                variance_law="?" if init is None else _latex_law(init),
                fan_in=site.fan_in,
                fan_out=site.fan_out,
                variance=var,
                x2=x2,
                border=border,
                y2=y2,
                g2=g2,
                how_forward=getattr(y, "how", "unknown"),
                how_backward=gx[1],
            )
        )
        sizes.append(tuple(site.y_shape))
    notes = []
    if measure:
        from varprop._src.model.check_model import check_model

        r = check_model(
            model,
            inputs,
            variables=variables,
            call_kwargs=call_kwargs,
            expect=expect,
            mode=mode,
            rngs=rngs,
            seeds=seeds,
            max_seeds=seeds,
        )
        meas = {(row.path, row.direction): row.measured for row in r.layers}
        layers = [
            replace(
                lay,
                measured_y2=meas.get((lay.path, "forward")),
                measured_g2=meas.get((lay.path, "backward")),
            )
            for lay in layers
        ]
        notes.append(f"measured: check_model over {r.seeds} seeds, verdict {r.verdict}")
    name = title or f"Derivation of {type(model).__name__ if not callable(model) else 'the model'}"
    out = ModelDerivation(name, layers, _health(layers, sizes), notes)
    out.figure = _figure(layers)
    out.seconds = time.perf_counter() - t0
    return out


def _op(site) -> str:
    if site.kind == "embed":
        return f"embed {site.w_shape[0]}x{site.w_shape[1]}"
    if site.kind == "dense":
        return f"dense {'x'.join(map(str, site.w_shape))}"
    p = site.params
    k = "x".join(str(site.w_shape[d]) for d in p["dimension_numbers"].rhs_spec[2:])
    bits = [f"conv {k}"]
    s = p.get("window_strides") or ()
    if any(v != 1 for v in s):
        bits.append("stride " + "x".join(map(str, s)))
    if p.get("feature_group_count", 1) != 1:
        bits.append(f"groups {p['feature_group_count']}")
    if any(v != 1 for v in p.get("lhs_dilation") or ()):
        bits.append("transposed")
    return ", ".join(bits)


def _latex_law(init) -> str:
    import sympy as sp

    try:
        return sp.latex(init.scheme.law)
    except Exception:
        return "?"

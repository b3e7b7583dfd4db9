"""The figure of a monitored training run (:class:`~varprop._src.model.monitor.MonitorSeries`),
in the style of the report's figures: four panels over the steps, one line per layer row
(colored from the input, dark, to the output, light), log scales.

* forward E[y²] of each layer's output;
* backward E[(∂L/∂x)²] through each layer;
* the law ratios, measured / law given the measured input (solid forward, dashed
  backward), with the band 1 of the init law;
* ‖ΔW‖ / ‖W‖ per kernel, from :meth:`~varprop._src.model.monitor.Monitor.track_updates`.

Example:
    >>> import numpy as np
    >>> from varprop._src.model.monitor import LayerSeries, MonitorSeries, UpdateSeries
    >>> t = np.array([0, 10, 20])
    >>> one = np.ones(3)
    >>> s = MonitorSeries(
    ...     [LayerSeries("dense", "dense", t, one, one, one, one, one, one)],
    ...     [UpdateSeries("dense", t, 0.01 * one, one)],
    ... )
    >>> fig = plot_series(s)
    >>> [ax.get_title() for ax in fig.axes]
    ['Forward: E[y^2] per layer', 'Backward: E[(dL/dx)^2] per layer', 'Law ratio: measured / law (given the input)', 'Update size: ||dW|| / ||W||']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the records this draws; the monitor itself calls plot_series
    from varprop._src.model.monitor import MonitorSeries


def _figure(ncols: int, nrows: int, width: float = 5.0, height: float = 3.4):
    """A matplotlib figure on the Agg backend (no display needed), as the report's."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes


def _positive(a: np.ndarray) -> np.ndarray:
    """``a`` with values a log axis cannot show (0, negative, non-finite) as NaN (gaps)."""
    a = np.asarray(a, np.float64)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def plot_series(series: MonitorSeries, path: str | None = None, max_legend: int = 12) -> Any:
    """The monitor's figure (module docstring); written to ``path`` as PNG when given.
    Layers beyond ``max_legend`` are drawn but left out of the legends."""
    import matplotlib

    fig, axes = _figure(2, 2)
    (a0, a1), (a2, a3) = axes
    n = max(1, len(series.layers))
    cmap = matplotlib.colormaps["viridis"]
    colors = [cmap(0.9 * i / max(1, n - 1)) for i in range(n)]
    for i, r in enumerate(series.layers):
        label = r.path if i < max_legend else None
        c = colors[i]
        a0.plot(r.steps, _positive(r.y_m2), "o-", ms=2.5, lw=1, color=c, label=label)
        a1.plot(r.steps, _positive(r.gx_m2), "o-", ms=2.5, lw=1, color=c, label=label)
        a2.plot(r.steps, _positive(r.forward_ratio), "-", lw=1, color=c, label=label)
        a2.plot(r.steps, _positive(r.backward_ratio), "--", lw=1, color=c)
    a2.axhline(1.0, color="k", ls=":", lw=0.8, label="law holds")
    k = max(1, len(series.updates))
    for i, u in enumerate(series.updates):
        c = cmap(0.9 * i / max(1, k - 1))
        label = u.path if i < max_legend else None
        a3.plot(u.steps, _positive(u.ratio), "o-", ms=2.5, lw=1, color=c, label=label)
    if not series.updates:
        a3.text(0.5, 0.5, "no update records\n(Monitor.track_updates)", ha="center",
                va="center", transform=a3.transAxes, fontsize=8)  # fmt: skip
    for ax, yl, title in (
        (a0, "E[y^2]", "Forward: E[y^2] per layer"),
        (a1, "E[(dL/dx)^2]", "Backward: E[(dL/dx)^2] per layer"),
        (a2, "measured / law", "Law ratio: measured / law (given the input)"),
        (a3, "||dW|| / ||W||", "Update size: ||dW|| / ||W||"),
    ):
        ax.set(yscale="log", xlabel="step", ylabel=yl)
        ax.set_title(title, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2)
    if series.dropped:
        fig.suptitle(f"the buffer kept the last records ({series.dropped} older dropped)",
                     fontsize=8)  # fmt: skip
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    return fig

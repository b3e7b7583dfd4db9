"""The result of :func:`varprop.check_model`: one row per layer and direction, the
verdict, the health and the diagnosis, as a table, a summary, JSON and an exit code.

A layer inside a ``lax.scan`` has one row per iteration (``blocks/conv1[3]``). Every row is
in :attr:`ModelCheckResult.layers` and ``to_json()``; the table shows all the iterations of
a site when there are at most :data:`SHOW_ITERATIONS`, else its :data:`WORST` worst rows
(disagreeing first, then the farthest ratio from 1) and one line for the whole site: how
many iterations agree, disagree, ..., and the range of their ratios.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from varprop._src.formatting import clean, fmt
from varprop._src.model.loops import group_key

#: A site's iterations are all shown in the table up to this many.
SHOW_ITERATIONS = 8
#: Else its worst rows shown, and a line for the rest.
WORST = 3
_RANK = {"disagrees": 0, "inconclusive": 1, "float32_limit": 2, "agrees": 4}


@dataclass
class ModelRow:
    """One layer and direction of a model (or one residual add).

    ``predicted`` is the law's E[y^2] given the layer's actual input (forward: y the op's
    output; backward: y = dL/dx through this layer), ``measured`` the measured one, both
    means over seeds; ``ratio`` (with its interval) is the conditional test that decides
    ``verdict``: ``agrees``, ``disagrees``, ``inconclusive``, ``float32_limit``,
    ``no_law`` (no initializer or ``expect`` gives this layer a law) or ``measured`` (a
    residual add: reported, not tested).
    """

    path: str
    kind: str
    direction: str
    fan_in: float | None
    fan_out: float | None
    #: Mean over the outputs of the taps actually read, relative to the interior
    #: (forward: valid taps / fan_in weighted by E[x^2]; backward: reads / fan_out).
    border_factor: float | None
    predicted: float | None
    measured: float | None
    ratio: float | None
    ratio_low: float | None
    ratio_high: float | None
    verdict: str
    law: str = ""
    test: str = ""
    dof: float | None = None
    note: str = ""
    #: A factor on the law beyond i.i.d. weights (the normalization after the layer).
    assumption: str = ""
    #: Residual adds: the correlation of the two branches.
    correlation: float | None = None
    #: For an inconclusive narrow row: about how many seeds would decide it.
    seeds_needed: int | None = None
    #: Inside a scan: the iteration (one index per enclosing scan; the slice of the
    #: stacked parameters it reads). ``None`` outside loops.
    iteration: list[int] | None = None


@dataclass
class ModelCheckResult:
    """What :func:`check_model` found; ``to_json()`` is ``varprop check --model --json``."""

    verdict: str
    seeds: int
    layers: list[ModelRow]
    health: dict[str, Any]
    diagnosis: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return clean(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @property
    def degenerate(self) -> list[str]:
        return list(self.health.get("degenerate", []))

    def exit_code(self, require_healthy: bool = False) -> int:
        """1 disagrees, 3 inconclusive, 4 the law holds but the model is degenerate, else 0
        (the contract of ``varprop check``)."""
        if self.verdict == "disagrees":
            return 1
        if self.verdict == "inconclusive":
            return 3
        if self.degenerate:
            return 4
        if require_healthy and any(
            self.health.get(d, {}).get("state") in ("vanishing", "exploding")
            for d in ("forward", "backward")
        ):
            return 4
        return 0

    def rows(self, direction: str) -> list[ModelRow]:
        return [r for r in self.layers if r.direction == direction]

    def shown(self) -> list[ModelRow | SiteLine]:
        """The table's lines: rows, and for a site with more than :data:`SHOW_ITERATIONS`
        iterations its :data:`WORST` worst rows and a :class:`SiteLine` for all of them."""
        groups: dict[tuple[str, str, str], list[ModelRow]] = {}
        for r in self.layers:
            if r.iteration is not None:
                groups.setdefault((group_key(r.path), r.kind, r.direction), []).append(r)
        out: list[ModelRow | SiteLine] = []
        done: set[tuple[str, str, str]] = set()
        for r in self.layers:
            key = (group_key(r.path), r.kind, r.direction)
            rs = groups.get(key, [r]) if r.iteration is not None else [r]
            if len(rs) <= SHOW_ITERATIONS:
                out.append(r)
            elif key not in done:
                done.add(key)
                out += sorted(rs, key=_badness)[:WORST]
                out.append(_group_line(key, rs))
        return out

    def table(self) -> str:
        shown = self.shown()
        w = max([len(r.path) for r in shown] + [4])
        head = (
            f"{'path':<{w}} {'kind':>8} {'dir':>8} {'fan_in':>8} {'fan_out':>8} "
            f"{'border':>6} {'predicted':>10} {'measured':>10} {'ratio':>7} "
            f"{'interval':>17}  verdict"
        )
        lines = [head, "-" * len(head)]
        for r in shown:
            if isinstance(r, SiteLine):
                lines.append(f"{r.path:<{w}} {r.kind:>8} {r.direction:>8}  {r.text}")
                continue
            iv = (
                f"[{fmt(r.ratio_low, 4)}, {fmt(r.ratio_high, 4)}]"
                if r.ratio_low is not None and r.ratio_high is not None
                else "-"
            )
            extra = f" (rho {r.correlation:.3g})" if r.correlation is not None else ""
            if r.note:
                extra += f" ({r.note})"
            lines.append(
                f"{r.path:<{w}} {r.kind:>8} {r.direction:>8} {fmt(r.fan_in):>8} "
                f"{fmt(r.fan_out):>8} {fmt(r.border_factor):>6} {fmt(r.predicted):>10} "
                f"{fmt(r.measured):>10} {fmt(r.ratio, 4):>7} {iv:>17}  {r.verdict}{extra}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        out = [self.table(), ""]
        tested = sum(r.verdict in ("agrees", "disagrees", "inconclusive") for r in self.layers)
        out.append(
            f"Law: {self.verdict} ({tested} rows tested, {self.seeds} seed"
            f"{'s' if self.seeds != 1 else ''}, band ±{self.config.get('tolerance', 0.1):.0%})."
        )
        hidden = len(self.layers) - sum(isinstance(r, ModelRow) for r in self.shown())
        if hidden:
            out.append(
                f"Scans: {hidden} of {len(self.layers)} rows (iterations) not shown; "
                "to_json() has every row."
            )
        for d in ("forward", "backward"):
            h = self.health.get(d)
            if h:
                out.append(
                    f"Health {d}: {h['state']} (x{fmt(h['change'])} over {h['steps']} "
                    "layer-to-layer steps at equal shapes)."
                )
        out.append(
            "Model: degenerate (see the diagnosis)." if self.degenerate else "Model: healthy."
        )
        if self.diagnosis:
            out.append("Diagnosis:")
            out.extend(f"  - {d}" for d in self.diagnosis)
        return "\n".join(out)


def _badness(r: ModelRow) -> tuple[int, float]:
    """Disagreeing rows first, then the farthest ratio from 1."""
    far = abs(math.log(r.ratio)) if r.ratio is not None and r.ratio > 0 else 0.0
    return _RANK.get(r.verdict, 3), -far


@dataclass
class SiteLine:
    """A line of the table for every iteration of one site in a scan."""

    path: str
    kind: str
    direction: str
    text: str


def _group_line(key: tuple[str, str, str], rs: list[ModelRow]) -> SiteLine:
    """One line for every iteration of a site: the verdicts counted, the ratios' range."""
    path, kind, direction = key
    counts: dict[str, int] = {}
    for r in rs:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda t: -t[1]))
    ratios = [r.ratio for r in rs if r.ratio is not None]
    span = f"; ratio {fmt(min(ratios), 4)} to {fmt(max(ratios), 4)}" if ratios else ""
    text = f"{len(rs)} iterations: {verdicts}{span} (the {WORST} worst shown above)"
    return SiteLine(path, kind, direction, text)

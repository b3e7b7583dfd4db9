"""The result of :func:`varprop.check_model`: one row per layer and direction, the
verdict, the health and the diagnosis, as a table, a summary, JSON and an exit code."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from varprop._src.formatting import clean, fmt


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

    def table(self) -> str:
        w = max([len(r.path) for r in self.layers] + [4])
        head = (
            f"{'path':<{w}} {'kind':>8} {'dir':>8} {'fan_in':>8} {'fan_out':>8} "
            f"{'border':>6} {'predicted':>10} {'measured':>10} {'ratio':>7} "
            f"{'interval':>17}  verdict"
        )
        lines = [head, "-" * len(head)]
        for r in self.layers:
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

"""What every experiment returns, and the registry the report and the CLI read.

An experiment is a function ``run(cfg: RunConfig) -> ExperimentResult`` registered with
:func:`experiment`. It measures one classic initialization claim in a jitted computation, puts
the law that predicts it (derived by :mod:`varprop.laws`, rendered with SymPy's LaTeX) beside
the prediction and the measurement, draws its figures, and says whether each claim held.

Experiments never print: long loops go through ``cfg.progress`` (a tqdm-like wrapper), and
everything a reader needs is in the result.

An experiment that raises is not a finding: the report records it with
:func:`failed_result` (its ``error`` says the exception's type, message and where it was
raised; it makes no claims) and runs the others. See :mod:`varprop._src.report` for the
exit codes this leads to.
"""

from __future__ import annotations

import io
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def no_progress(
    iterable: Iterable[T], total: int | None = None, desc: str | None = None
) -> Iterable[T]:
    """The default progress wrapper: the iterable itself."""
    del total, desc
    return iterable


def tqdm_progress(
    iterable: Iterable[T], total: int | None = None, desc: str | None = None
) -> Iterator[T]:
    """A tqdm bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    yield from tqdm(iterable, total=total, desc=desc, leave=False, disable=None, dynamic_ncols=True)


ProgressFn = Callable[..., Iterable[Any]]


@dataclass(frozen=True)
class RunConfig:
    """How to run an experiment.

    Attributes:
        quick: a smaller version (fewer seeds, steps, layers) that keeps every claim
            testable; the whole quick report finishes in minutes on a 2-core CPU.
        seed: base PRNG seed; every key is derived from it, so a run is reproducible.
        data_dir: directory of the MNIST IDX files (else ``$VARPROP_MNIST_DIR``; else the
            experiments that need real data fall back to scikit-learn's digits and say so).
        progress: ``progress(iterable, total=None, desc=None)`` wraps long loops.
    """

    quick: bool = False
    seed: int = 0
    data_dir: str | None = None
    progress: ProgressFn = no_progress


@dataclass(frozen=True)
class Law:
    """One line of the law: a label, SymPy's LaTeX of it, and the same in plain text."""

    label: str
    latex: str
    text: str


@dataclass(frozen=True)
class Row:
    """One predicted-vs-measured line of an experiment's table (numbers or short text)."""

    quantity: str
    predicted: Any
    measured: Any
    note: str = ""


@dataclass(frozen=True)
class Claim:
    """A claim about initialization, whether it held, and the evidence in one sentence."""

    statement: str
    held: bool
    evidence: str


@dataclass(frozen=True)
class Figure:
    """A rendered figure: a file stem, a caption saying what it shows, PNG bytes."""

    name: str
    caption: str
    png: bytes


@dataclass
class ExperimentResult:
    """Everything an experiment found. ``data`` holds the raw arrays (NumPy) for reuse."""

    name: str
    title: str
    summary: str
    laws: list[Law] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    @property
    def held(self) -> bool:
        """True when the experiment made at least one claim and every claim held."""
        return bool(self.claims) and all(c.held for c in self.claims)

    @property
    def ran(self) -> bool:
        """False when the experiment raised instead of returning (see :func:`failed_result`)."""
        return not self.error

    @property
    def n_failed_claims(self) -> int:
        """How many of its claims did not hold (a finding, unlike an error)."""
        return sum(not c.held for c in self.claims)


def failed_result(
    name: str, title: str, exc: BaseException, seconds: float = 0.0
) -> ExperimentResult:
    """The result of an experiment that raised ``exc``: no claims, and ``error`` saying the
    exception's type, message and the innermost frame it came from (one line). The full
    traceback is kept in ``data["traceback"]``.

    Example:
        >>> try:
        ...     1 / 0
        ... except ZeroDivisionError as e:
        ...     r = failed_result("demo", "Demo", e)
        >>> r.ran, r.held, r.claims, r.error.split(" (at ")[0]
        (False, False, [], 'ZeroDivisionError: division by zero')
    """
    message = " ".join(str(exc).split()) or "(no message)"
    error = f"{type(exc).__name__}: {message}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        error += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ExperimentResult(
        name=name,
        title=title,
        summary="This experiment could not run: it raised an exception before making its claims.",
        data={"traceback": tb},
        seconds=seconds,
        error=error,
    )


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    order: int
    fn: Callable[[RunConfig], ExperimentResult]

    def run(self, cfg: RunConfig | None = None) -> ExperimentResult:
        cfg = cfg or RunConfig()
        t0 = time.perf_counter()
        res = self.fn(cfg)
        res.seconds = time.perf_counter() - t0
        return res


_REGISTRY: dict[str, Experiment] = {}


def experiment(name: str, title: str, order: int):
    """Register ``fn(cfg) -> ExperimentResult`` under ``name`` (the CLI's NAME)."""

    def deco(fn: Callable[[RunConfig], ExperimentResult]):
        if name in _REGISTRY:
            raise ValueError(f"experiment {name!r} is registered twice")
        _REGISTRY[name] = Experiment(name, title, order, fn)
        return fn

    return deco


def registry() -> dict[str, Experiment]:
    """All registered experiments, in report order."""
    from varprop._src.experiments import _load_all

    _load_all()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: kv[1].order))


def get(name: str) -> Experiment:
    reg = registry()
    if name not in reg:
        raise ValueError(f"unknown experiment {name!r}; allowed: {', '.join(reg)}")
    return reg[name]


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure, which is then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.4):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes

"""What :func:`varprop.check` accepts, checked once, before anything is compiled.

Every bad value raises :class:`~varprop._src.errors.InputError` naming the parameter (its
``param``; the CLI shows it as its option) and what is allowed. The network's description
(widths, activation, initializers, norm) is checked where the network is built,
:func:`varprop._src.core.network.make_network`; the options of a check are checked here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from varprop._src.core.network import Network, check_widths, make_network
from varprop._src.errors import InputError
from varprop._src.initializers import Initializer
from varprop._src.probe import available_memory_bytes, estimate_probe_bytes, make_probe

InitArg = str | Initializer | Sequence[str | Initializer]

#: The seeds that give distinct runs: ``jax.random.key`` takes a C long but, with JAX's
#: default 32-bit mode, ``key(2**32) == key(0)`` and ``key(-1) == key(2**32 - 1)``.
SEED_RANGE = (0, 2**32 - 1)
#: The largest count (batch, seeds, widths) accepted: XLA's dimensions are 32-bit.
MAX_COUNT = 2**31 - 1


def as_inits(x: InitArg | None, depth: int, what: str) -> tuple[Initializer | None, ...]:
    """One initializer per layer from a SPEC string, an initializer or a sequence of them
    (``None`` stays ``None``: no bias)."""
    from varprop._src.initializers import from_spec

    if x is None:
        return (None,) * depth
    if isinstance(x, (str, Initializer)):
        x = [x] * depth
    items = list(x)
    if len(items) != depth:
        raise InputError(
            f"{what}: expected {depth} initializers (one per layer), got {len(items)}", param=what
        )
    out = []
    for it in items:
        if isinstance(it, str):
            try:
                out.append(from_spec(it))
            except InputError:
                raise
            except (ValueError, TypeError) as e:
                raise InputError(f"{what} {it!r}: {e}", param=what) from None
        elif isinstance(it, Initializer):
            out.append(it)
        else:
            raise InputError(
                f"{what}: expected a SPEC string or a varprop initializer, got {it!r}", param=what
            )
    return tuple(out)


def build_network(
    widths: Sequence[int],
    activation: str,
    init: InitArg,
    bias_init: InitArg | None,
    norm: str | None,
) -> Network:
    """The network of a check (:func:`make_network` checks its description)."""
    widths = check_widths(widths)
    depth = len(widths) - 1
    kinits = as_inits(init, depth, "init")
    binits = as_inits(bias_init, depth, "bias_init")
    return make_network(widths, activation, kinits, binits, norm)  # type: ignore[arg-type]


def bias_second_moment(init: Initializer | None, n: int) -> float:
    """E[b^2] of a bias of ``n`` units drawn by ``init`` (0 without a bias initializer)."""
    if init is None:
        return 0.0
    s = init.scheme
    shape = (n,)
    if s.uses_fans and not s.distribution.is_constant:
        raise InputError(
            f"bias_init {init!r} needs fans; use zeros, constant or normal", param="bias_init"
        )
    return s.variance(shape) + s.mean(shape) ** 2


def _whole(name: str, v: object, lo: int, hi: int = MAX_COUNT) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise InputError(f"{name} must be a whole number in [{lo}, {hi}], got {v!r}", param=name)


def validate_options(
    widths: tuple[int, ...],
    batch: object,
    seeds: object,
    max_seeds: object,
    tolerance: object,
    alpha: object,
    mean: object,
    std: object,
    data: Any,
    seed: object = 0,
) -> None:
    """Check the options of :func:`varprop.check` (the network is already built)."""
    _whole("batch", batch, 2)
    _whole("seeds", seeds, 2)
    _whole("max_seeds", max_seeds, int(seeds))  # type: ignore[arg-type]
    _whole("seed", seed, *SEED_RANGE)
    for name, v in (("tolerance", tolerance), ("alpha", alpha)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise InputError(f"{name} must be a finite number > 0, got {v!r}", param=name)
    if tolerance > 1:  # type: ignore[operator]
        raise InputError(
            f"tolerance must be a number t with 0 < t <= 1 (ratios within [1/(1+t), 1+t] "
            f"agree; a band wider than [1/2, 2] accepts a wrong fan or gain and makes the "
            f"verdict meaningless), got {tolerance}",
            param="tolerance",
        )
    if alpha >= 1:  # type: ignore[operator]
        raise InputError(f"alpha must be in (0, 1), got {alpha}", param="alpha")
    for name, v in (("input_mean", mean), ("input_std", std)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{name} must be a finite number, got {v!r}", param=name)
    if std <= 0:  # type: ignore[operator]
        raise InputError(f"input_std must be > 0, got {std}", param="input_std")
    if data is not None:
        arr = np.asarray(data)
        if arr.ndim != 2 or arr.shape[1] != widths[0]:
            raise InputError(
                f"data must have shape (N, {widths[0]}) to feed input width {widths[0]}, "
                f"got {arr.shape}",
                kind="data",
                param="data",
            )
        if arr.shape[0] < 1:
            raise InputError("data has no rows", kind="data", param="data")
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise InputError(
                f"data contains {bad} non-finite value(s) (NaN or inf)", kind="data", param="data"
            )


def check_memory(net: Network, batch: int, seeds: int, data: Any) -> None:
    """Refuse, before compiling, a round that cannot fit in the device's memory."""
    need = estimate_probe_bytes(net, batch, seeds) + (
        0 if data is None else np.asarray(data).nbytes
    )
    have = available_memory_bytes()
    if have is not None and need > 0.8 * have:
        raise InputError(
            f"a round of {seeds} seeds of widths {short_widths(net.widths)} at batch {batch} "
            f"needs about {need / 2**30:.3g} GiB, more than 80% of the {have / 2**30:.3g} GiB "
            "available; use smaller widths, --batch or --seeds",
            kind="resources",
        )


def short_widths(widths: Sequence[int]) -> str:
    w = list(widths)
    return str(w) if len(w) <= 8 else f"[{w[0]}, {w[1]}, ... ({len(w)} widths), {w[-1]}]"


_PROBES: dict[tuple, Any] = {}


def cached_probe(net: Network, batch: int, mean: float, std: float):
    """One compiled probe per architecture: a second check of the same net is warm."""
    key = (
        net.widths,
        net.activation,
        tuple(map(repr, net.kernel_inits)),
        tuple(map(repr, net.bias_inits)),
        net.norm,
        batch,
        float(mean),
        float(std),
    )
    if key not in _PROBES:
        if len(_PROBES) >= 32:
            _PROBES.pop(next(iter(_PROBES)))
        _PROBES[key] = make_probe(net, batch, mean, std)
    return _PROBES[key]

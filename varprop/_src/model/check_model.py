r"""Check any Flax model as it is written: every layer's law, given its actual input.

:func:`check_model` traces the model (:mod:`varprop._src.model.trace`), finds each
parameterized ``dot_general``, ``conv_general_dilated`` and embedding ``gather`` and each
residual add, measures all of them in one jitted, vmapped call per round of seeds
(:mod:`varprop._src.model.probe`), and tests each layer's forward and backward law with
the conditional test of :func:`varprop.layer_verdict`:

.. math::

    E_W[y^2] = \mathrm{Var}(w)\,\mathrm{op}(x^2, \mathbf 1), \qquad
    E_W[(\partial L/\partial x)^2] = c\,\mathrm{Var}(w)\,
        \mathrm{op}^\top\big((\partial L/\partial y)^2, \mathbf 1\big),

where Var(w) is the expected law's variance at the op's *true* fans (a conv's
``c_in k_h k_w / G`` and ``c_out k_h k_w / (G s_h s_w)``; an embedding's row length), the
sums run over exactly the taps of the real op (borders, strides, dilation, groups), and
c is 1, or ``1 - 2/n`` (``1 - 1/n``) when the layer's output is normalized by a
training-mode BatchNorm (LayerNorm) (``docs/model_laws.md``). Residual adds are reported
with the correlation of their branches; they are measured, not tested.

Example:
    >>> import jax, varprop
    >>> from flax import nnx
    >>> class Net(nnx.Module):
    ...     def __init__(self, rngs):
    ...         he = nnx.initializers.he_normal()
    ...         self.conv = nnx.Conv(8, 64, (3, 3), kernel_init=he, rngs=rngs)
    ...         self.head = nnx.Linear(64, 10, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.head(jax.nn.relu(self.conv(x)).mean(axis=(1, 2)))
    >>> x = jax.random.normal(jax.random.key(0), (16, 12, 12, 8))
    >>> r = varprop.check_model(lambda rngs: Net(rngs), x)
    >>> r.verdict, [(row.path, row.direction, row.verdict) for row in r.layers][:2]
    ('agrees', [('conv', 'forward', 'agrees'), ('conv', 'backward', 'agrees')])
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import numpy as np

from varprop._src.errors import InputError
from varprop._src.model.adapter import ModelFunction, as_model_function
from varprop._src.model.probe import is_narrow, make_model_probe
from varprop._src.model.trace import Found, LayerSite, MergeSite, find_layers
from varprop._src.stats import NARROW_UNITS
from varprop._src.verdicts import (
    ExpectedLaw,
    LayerMeasurement,
    ProductStatistics,
    layer_verdict,
    overall_verdict,
)

MODES = ("train", "eval", None)


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
        return _clean(asdict(self))

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
                f"[{_fmt(r.ratio_low, 4)}, {_fmt(r.ratio_high, 4)}]"
                if r.ratio_low is not None and r.ratio_high is not None
                else "-"
            )
            extra = f" (rho {r.correlation:.3g})" if r.correlation is not None else ""
            if r.note:
                extra += f" ({r.note})"
            lines.append(
                f"{r.path:<{w}} {r.kind:>8} {r.direction:>8} {_fmt(r.fan_in):>8} "
                f"{_fmt(r.fan_out):>8} {_fmt(r.border_factor):>6} {_fmt(r.predicted):>10} "
                f"{_fmt(r.measured):>10} {_fmt(r.ratio, 4):>7} {iv:>17}  {r.verdict}{extra}"
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
                    f"Health {d}: {h['state']} (x{_fmt(h['change'])} over {h['steps']} "
                    "layer-to-layer steps at equal shapes)."
                )
        out.append(
            "Model: degenerate (see the diagnosis)." if self.degenerate else "Model: healthy."
        )
        if self.diagnosis:
            out.append("Diagnosis:")
            out.extend(f"  - {d}" for d in self.diagnosis)
        return "\n".join(out)


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    return f"{v:.{digits}g}"


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float | np.floating):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# ----------------------------------------------------------------------------------------
# Inputs, laws.
# ----------------------------------------------------------------------------------------


def _as_args(inputs: Any, key: jax.Array) -> tuple[Any, ...]:
    if callable(inputs):
        out = inputs(key)
        return out if isinstance(out, tuple) else (out,)
    return inputs if isinstance(inputs, tuple) else (inputs,)


def layer_path(param_path: str) -> str:
    """``"blocks/0/conv1"`` from ``"blocks/0/conv1/kernel"``."""
    return param_path.rsplit("/", 1)[0] if "/" in param_path else param_path


def _row_paths(found: Found) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for s in found.layers:
        p = layer_path(s.path)
        seen[p] = seen.get(p, 0) + 1
        out.append(p if seen[p] == 1 else f"{p}#{seen[p]}")
    return out


def _law_for(site: LayerSite, path: str, mf: ModelFunction, expect) -> tuple[Any, str]:
    """The initializer whose law this layer is tested against, and where it came from."""
    from varprop._src.initializers import Initializer, from_spec
    from varprop._src.recognize import recognize

    for pattern, spec in (expect or {}).items():
        if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(site.path, pattern):
            init = from_spec(spec) if isinstance(spec, str) else spec
            if not isinstance(init, Initializer):
                init = recognize(init)
            if init is None:
                raise InputError(
                    f"expect[{pattern!r}] = {spec!r} is not an initializer varprop knows; "
                    "allowed: a SPEC string (e.g. 'he_normal'), a varprop initializer or a "
                    "jax.nn.initializers one",
                    kind="model",
                    param="expect",
                )
            return init, "expect"
    call = mf.inits[site.param]
    if call is not None and call.fn is not None:
        init = recognize(call.fn)
        if init is not None:
            return init, "initializer"
        # A layer's own wrapper around the user's initializer (DenseGeneral draws a
        # flattened kernel and reshapes it): the law at the op's true fans is the inner
        # initializer's, whatever shape it was drawn in.
        inner = [
            recognize(c.cell_contents)
            for c in getattr(call.fn, "__closure__", None) or ()
            if callable(getattr(c, "cell_contents", None))
        ]
        inner = [i for i in inner if i is not None]
        if len(inner) == 1:
            return inner[0], "initializer (inside the layer's wrapper)"
    return None, ""


def _expected(init, site: LayerSite) -> ExpectedLaw:
    scheme = init.scheme
    if scheme.distribution.is_orthogonal:
        return ExpectedLaw.of(scheme, site.w_shape)
    if site.kind == "embed":
        fan_in = fan_out = site.fan_out  # a lookup copies one row: its length is the fan
    else:
        fan_in, fan_out = site.fan_in, site.fan_out
    k = scheme.kurtosis
    return ExpectedLaw(
        float(scheme.variance_for_fans(fan_in, fan_out)),
        float(scheme.mean_for_fans(fan_in, fan_out)),
        3.0 if k is None else float(k),
    )


def _norm_factor(site: LayerSite) -> tuple[float, str]:
    from varprop._src.laws.model_ops import normalized_backward_factor

    if site.normalized is None or site.fan_in <= 2:
        return 1.0, ""
    kind = site.normalized
    f = float(normalized_backward_factor(site.fan_in, kind))
    return (
        f,
        f"{kind} after this layer (train mode): backward law x (1 - {2 if kind == 'batchnorm' else 1}/n) = {f:.4g}",
    )


# ----------------------------------------------------------------------------------------
# Rows.
# ----------------------------------------------------------------------------------------


def _seed_mean(a) -> float | None:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(np.mean(a)) if a.size else None


def _layer_rows(
    site, path, law, law_name, st, tol, alpha, tests, alpha_last, note_law, zero_scales
):
    rows = []
    f = st["forward"][site.index]
    directions = ["forward"] if site.kind == "embed" else ["forward", "backward"]
    for d in directions:
        s = f if d == "forward" else st["backward"][site.index]
        if d == "forward":
            fan = float(site.fan_in)
            units = site.units_out
            values = math.prod(site.y_shape)
            if site.kind == "embed":
                v_lm2 = np.full_like(s["y_lm2"], -math.log(fan))
                v_lrs2 = np.zeros_like(s["y_lm2"])
                x_m2 = None
            else:
                v_lm2 = s["s_lm2"] - math.log(fan)
                v_lrs2 = s["s_lrs2"]
                x_m2 = s["x_lm2"]
            factor, assumption = 1.0, ""
        else:
            fan = float(site.fan_out)
            units = site.units_in
            values = math.prod(site.x_shape)
            v_lm2 = s["s_lm2"] - math.log(fan)
            v_lrs2 = np.full_like(s["y_lm2"], -np.inf)
            x_m2 = s["v_lm2_raw"]
            factor, assumption = _norm_factor(site)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            border = _seed_mean(np.exp(s["s_lm2"] - x_m2) / fan) if x_m2 is not None else None
        measured = _seed_mean(np.exp(s["y_lm2"]))
        identity = d == "backward" and zero_scales and measured == 0
        row = ModelRow(
            path,
            site.kind,
            d,
            site.fan_in,
            site.fan_out,
            border,
            None,
            measured,
            None,
            None,
            None,
            "no_law",
            law_name,
            assumption=assumption,
        )
        if law is None:
            row.note = note_law
            rows.append(row)
            continue
        lw = ExpectedLaw(law.variance * factor, law.mean, law.kurtosis)
        m = LayerMeasurement(
            direction=d,
            fan=max(1, round(fan)),
            units=units,
            values=values,
            plain=ProductStatistics(
                v_lm2=np.asarray(v_lm2, np.float64) + math.log(fan) - math.log(max(1, round(fan))),
                v_lrs2=np.asarray(v_lrs2, np.float64),
                y_lm2=np.asarray(s["y_lm2"], np.float64),
                y_rv=np.asarray(s["y_rv"], np.float64),
                **_gram(s, ""),
            ),
            centered=_centered(s, fan) if d == "forward" and site.kind != "embed" else None,
            input_finite=np.asarray(s["x_finite"]),
            output_finite=np.asarray(s["y_finite"]),
        )
        narrow = d == "backward" and site.fan_in < NARROW_UNITS
        t = layer_verdict(
            m,
            lw,
            tolerance=tol,
            alpha=alpha,
            tests=tests,
            alpha_last=alpha_last,
            narrow=is_narrow(site, d),
        )
        from varprop._src.verdicts import predicted_log

        pred, _ = predicted_log(lw, m.fan, m.plain)
        with np.errstate(over="ignore"):
            row.predicted = _seed_mean(np.exp(pred))
        row.verdict, row.ratio, row.ratio_low, row.ratio_high = (
            t.verdict,
            t.ratio,
            t.ratio_low,
            t.ratio_high,
        )
        row.test, row.dof, row.note, row.seeds_needed = t.test, t.dof, t.note, t.seeds_needed
        if narrow:
            # dL/dy depends on this layer's own weights through the activation's slope (and a
            # normalization's statistics); with a fan-in this small the dependence biases
            # the backward law (a depthwise 3x3 conv before relu: ratio 1.27). The forward
            # row tests the same weights exactly; this one is reported, not tested.
            row.verdict = "measured"
            row.assumption = ", ".join(x for x in (row.assumption, "gradient independence") if x)
            row.note = (
                f"fan-in {site.fan_in:g} < {NARROW_UNITS}: approximate (gradient "
                "independence); the forward row tests these weights"
            )
        if identity:  # 0 = 0 is no test of the law: reported, not counted as agreement
            row.verdict, row.ratio, row.ratio_low, row.ratio_high = "measured", None, None, None
            row.note = "no gradient at init: its branch starts as the identity (zero scale)"
        rows.append(row)
    return rows


def _centered(s: dict[str, Any], fan: float) -> ProductStatistics | None:
    """The centered statistics where the batch has more than one row to center."""
    if "c_s_lm2" not in s:
        return None
    with np.errstate(invalid="ignore"):
        return ProductStatistics(
            v_lm2=np.asarray(s["c_s_lm2"], np.float64) - math.log(max(1, round(fan))),
            v_lrs2=np.asarray(s["c_s_lrs2"], np.float64),
            y_lm2=np.asarray(s["c_y_lm2"], np.float64),
            y_rv=np.asarray(s["c_y_rv"], np.float64),
            **_gram(s, "c_"),
        )


def _gram(s: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """The small-sample statistics of a narrow dense row (none for the others)."""
    if prefix + "gram" not in s:
        return {}
    return {f"v_{k}": np.asarray(s[prefix + k], np.float64) for k in ("gram", "diag", "sumfrac")}


def _merge_row(m: MergeSite, st, paths: list[str]) -> ModelRow:
    s = st["merge"][m.index]
    a, b, ab, tot = (np.asarray(s[k], np.float64) for k in ("a_m2", "b_m2", "ab", "sum_m2"))

    def name(deps: frozenset[int]) -> str:
        layers = [d for d in deps if d >= 0]
        return paths[max(layers)] if layers else "input"

    if m.kind == "product":
        # Measured, never a verdict: attention's logits (q k^T: d E[q^2] E[k^2] for
        # independent q, k) and its softmax mixing (sum_j p_j^2 E[v^2]) are products of two
        # activations whose law needs their independence, which nothing guarantees.
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = _seed_mean(tot / ab)
        left, right = name(m.left), name(m.right)
        return ModelRow(
            f"{left} x {right}",
            "product",
            "forward",
            None,
            None,
            None,
            _seed_mean(ab),
            _seed_mean(tot),
            ratio,
            None,
            None,
            "measured",
            "E[y^2] = sum_c E[a_c^2] E[b_c^2] (uncorrelated terms)",
            note=f"E[a^2] {_fmt(_seed_mean(a))}, E[b^2] {_fmt(_seed_mean(b))}",
        )
    left, right = m.left - m.right, m.right - m.left
    label = f"{name(left) if left else 'skip'} + {name(right) if right else 'skip'}"
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = _seed_mean(ab / np.sqrt(a * b))
        ratio = _seed_mean(tot / (a + b))
    note = ""
    if np.all(b == 0) or np.all(a == 0):
        note = "one branch is exactly 0: it starts as the identity (zero scale)"
    return ModelRow(
        label,
        "residual",
        "forward",
        None,
        None,
        None,
        _seed_mean(a + b),
        _seed_mean(tot),
        ratio,
        None,
        None,
        "measured",
        "E[(a+b)^2] = E[a^2] + E[b^2] + 2E[ab]",
        note=note,
        correlation=rho,
    )


def _health(
    rows: list[ModelRow], sizes: dict[str, dict[str, tuple[int, ...]]], zero_scales: list[str]
):
    """Forward E[y^2] and backward E[(dL/dx)^2], compounded over consecutive layers of the
    same size per example: ``preserved`` while the change stays within a factor 10."""
    out: dict[str, Any] = {"degenerate": []}
    for d in ("forward", "backward"):
        rs = [
            r
            for r in rows
            if r.direction == d
            and r.kind in ("dense", "conv")
            and r.measured is not None
            and not (zero_scales and r.measured == 0)  # an identity branch, not a death
        ]
        # Compounded only between consecutive layers of the same size per example: a
        # resolution change (pooling, strides) rescales a per-value moment legitimately.
        log_change, steps = 0.0, 0
        for a, b in itertools.pairwise(rs):
            if sizes[a.path][d] != sizes[b.path][d]:
                continue
            lo, hi = (a, b) if d == "forward" else (b, a)
            if not (lo.measured and hi.measured):
                log_change = (
                    math.nan
                    if lo.measured == hi.measured
                    else (-math.inf if not hi.measured else math.inf)
                )
                break
            log_change += math.log(hi.measured / lo.measured)
            steps += 1
        if math.isnan(log_change):
            state = "undetermined"
        elif log_change < -math.log(10):
            state = "vanishing"
        elif log_change > math.log(10):
            state = "exploding"
        else:
            state = "preserved"
        out[d] = {
            "state": state,
            "change": math.exp(log_change) if math.isfinite(log_change) else log_change,
            "steps": steps,
        }
    for r in rows:
        if r.kind in ("dense", "conv", "embed") and r.direction == "forward" and r.measured == 0:
            out["degenerate"].append(f"{r.path}: every output is 0")
        if r.verdict == "disagrees" and "non-finite" in r.note:
            out["degenerate"].append(f"{r.path} ({r.direction}): non-finite values")
    zero_bwd = [r.path for r in rows if r.direction == "backward" and r.measured == 0]
    if zero_bwd and not zero_scales:
        more = " ..." if len(zero_bwd) > 5 else ""
        out["degenerate"].append(f"no gradient reaches {', '.join(zero_bwd[:5])}{more}")
    out["identity_branches"] = zero_scales
    return out


# ----------------------------------------------------------------------------------------
# The check.
# ----------------------------------------------------------------------------------------


def check_model(
    model: Any,
    inputs: Any,
    *,
    variables: Any = None,
    expect: Mapping[str, Any] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    loss: Callable[[Any], jax.Array] | None = None,
    mode: str | None = "train",
    reinit: bool = True,
    seeds: int = 4,
    max_seeds: int = 64,
    seed: int = 0,
    tolerance: float = 0.1,
    alpha: float = 0.05,
    progress: Callable[[str], None] | None = None,
) -> ModelCheckResult:
    """Check every layer of a Flax model against its law, given its actual input.

    Args:
        model: an ``nnx.Module``; a factory returning one (``lambda rngs: Model(...,
            rngs=rngs)`` or a zero-argument callable: then each seed redraws the weights
            with the model's own initializers, seen while it is built); or a
            ``flax.linen.Module`` (with ``variables``, or ``None``: ``model.init`` is run
            and its initializers are seen).
        inputs: an array, a tuple of arrays (positional arguments), or a callable
            ``key -> batch`` (a fresh batch per seed). Integer token ids are fine.
        variables: Linen variables to check as given.
        expect: ``{glob: SPEC or initializer}`` per layer path (``"*/conv*"``), overriding
            the layer's own initializer as the law to test.
        call_kwargs: keyword arguments for the model call (``{"train": True}``).
        loss: ``outputs -> scalar`` whose gradient is the backward signal (default: a
            Gaussian cotangent on every output, E[(dL/d out)^2] = 1).
        mode: ``"train"`` (default: batch statistics, dropout on), ``"eval"``, or ``None``
            (as the model is). NNX: ``.train()``/``.eval()`` on a copy; Linen: the
            ``train`` argument when ``__call__`` has one.
        reinit: redraw the weights per seed with their own initializers (when they are
            known); ``False``: one draw, the weights as given, verdicts from the spread
            across units alone.
        seeds, max_seeds, seed, tolerance, alpha: as :func:`varprop.check`.
        progress: called with a one-line message after every round.

    The model and its variables are never mutated.
    """
    from varprop._src.check import look_alpha_shares, look_schedule

    if mode not in MODES:
        raise InputError(
            f"mode={mode!r}; allowed: 'train', 'eval' or None", kind="usage", param="mode"
        )
    for name, v, lo in (("seeds", seeds, 1), ("max_seeds", max_seeds, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(
                f"{name}={v!r} must be a whole number >= {lo}", kind="usage", param=name
            )
    if not 0 < tolerance < 10 or not 0 < alpha < 1:
        raise InputError(
            f"tolerance={tolerance!r}, alpha={alpha!r}; allowed: 0 < tolerance < 10, 0 < alpha < 1",
            kind="usage",
            param="tolerance" if not 0 < tolerance < 10 else "alpha",
        )
    base = jax.random.key(seed)
    args0 = _as_args(inputs, jax.random.fold_in(base, 10**6))
    try:
        mf = as_model_function(
            model, args0, variables=variables, mode=mode, call_kwargs=dict(call_kwargs or {})
        )
        found = find_layers(
            lambda p, s, a, k: mf.apply(p, s, a, k),
            mf.params,
            mf.state,
            args0,
            jax.random.key(0),
            paths=mf.paths,
            data=(False, True, False),
        )
    except InputError:
        raise
    except Exception as e:  # the user's model cannot be built or called on these inputs
        shapes = [getattr(a, "shape", type(a).__name__) for a in args0]
        raise InputError(
            f"the model cannot be built or called on inputs of shape {shapes}: "
            f"{type(e).__name__}: {e}",
            kind="model",
            param="inputs",
        ) from e
    if not found.layers:
        raise InputError(
            "no layer found: the model multiplies no input by a parameter (dense, conv or "
            "embedding)",
            kind="model",
            param="model",
        )
    paths = _row_paths(found)
    laws = []
    notes = list(mf.notes)
    for site, path in zip(found.layers, paths, strict=True):
        init, _source = _law_for(site, path, mf, expect)
        laws.append((None, "") if init is None else (_expected(init, site), repr(init)))
        if site.kind == "embed" and init is not None:
            from varprop._src.laws.model_ops import embedding_fan_warning

            fi, _ = init.scheme.fans(site.w_shape) if init.scheme.uses_fans else (0, 0)
            w = embedding_fan_warning(fi, site.w_shape[0], int(site.fan_out))
            if w:
                notes.append(f"{path}: {w}")
    redraw = reinit and mf.redrawable
    if reinit and not mf.redrawable:
        notes.append(
            "reinit=True but no initializer of this model is known: one draw, the weights as given"
        )
    if not redraw:
        seeds, max_seeds = 1, 1
    with_mean = frozenset(
        s.index
        for s, (lw, _) in zip(found.layers, laws, strict=True)
        if lw is not None and lw.mean != 0
    )
    probe = make_model_probe(
        mf,
        found,
        inputs if callable(inputs) else args0,
        redraw=redraw,
        with_mean=with_mean,
        loss=loss,
    )
    zero_scales = [
        layer_path(p)
        for p, v in zip(mf.paths, mf.params, strict=True)
        if p.rsplit("/", 1)[-1] == "scale" and np.all(np.asarray(v) == 0)
    ]
    looks = look_schedule(seeds, max_seeds) if redraw else [1]
    shares = look_alpha_shares(len(looks))
    stats = None
    total = rnd = 0
    rows: list[ModelRow] = []
    verdict = "inconclusive"
    while total < looks[-1]:
        keys = jax.random.split(jax.random.fold_in(base, rnd), seeds)
        new = jax.tree.map(np.asarray, probe(keys))
        stats = (
            new if stats is None else jax.tree.map(lambda a, b: np.concatenate([a, b]), stats, new)
        )
        total += seeds
        rnd += 1
        if total not in looks:
            continue
        share = shares[looks.index(total)]
        rows = _rows(
            found, paths, laws, stats, tolerance, alpha * share, alpha * shares[-1], zero_scales
        )
        verdict = overall_verdict([r.verdict for r in rows])
        if progress is not None:
            open_rows = sum(r.verdict == "inconclusive" for r in rows)
            progress(f"round {rnd}: {total} seeds, {open_rows} of {len(rows)} rows inconclusive")
        if verdict != "inconclusive":
            break
        # Stop early when the rows left open need more seeds than the budget allows.
        need = [r.seeds_needed for r in rows if r.verdict == "inconclusive"]
        if need and all(n is not None and n > max_seeds for n in need):
            break
    sizes = {
        p: {"forward": site.y_shape, "backward": site.x_shape}
        for site, p in zip(found.layers, paths, strict=True)
    }
    health = _health(rows, sizes, zero_scales)
    diagnosis = notes + [
        f"{r.path} ({r.direction}): measured/predicted {r.ratio:.3g} "
        f"[{_fmt(r.ratio_low, 3)}, {_fmt(r.ratio_high, 3)}] against {r.law}"
        for r in rows
        if r.verdict == "disagrees" and r.ratio is not None
    ]
    if zero_scales:
        diagnosis.append(
            "branches that start as the identity (zero scale): " + ", ".join(zero_scales)
        )
    if found.skipped:
        diagnosis.append(
            f"layers inside {', '.join(sorted(set(found.skipped)))} are not tapped "
            "(loops are not unrolled)"
        )
    diagnosis += [f"degenerate: {d}" for d in health["degenerate"]]
    config = {
        "framework": mf.framework,
        "mode": mode,
        "reinit": redraw,
        "tolerance": tolerance,
        "alpha": alpha,
        "seed": seed,
        "layers": len(found.layers),
        "merges": len(found.merges),
    }
    return ModelCheckResult(verdict, total, rows, health, diagnosis, config)


def _rows(found, paths, laws, st, tol, alpha, alpha_last, zero_scales) -> list[ModelRow]:
    n_fwd = sum(lw is not None for lw, _ in laws)
    n_bwd = sum(
        lw is not None and s.kind != "embed" for s, (lw, _) in zip(found.layers, laws, strict=False)
    )
    rows: list[ModelRow] = []
    order: list[tuple[tuple[int, ...], int, Any]] = []
    for site, path, (lw, name) in zip(found.layers, paths, laws, strict=True):
        note = "no law: the initializer is unknown; name one with expect={glob: SPEC}"
        rs = _layer_rows(
            site,
            path,
            lw,
            name,
            st,
            tol,
            alpha,
            max(n_fwd, n_bwd, 1),
            alpha_last,
            note,
            zero_scales,
        )
        order.append((site.eqn, 0, rs))
    for m in found.merges:
        order.append((m.eqn, 1, [_merge_row(m, st, paths)]))
    for _, _, rs in sorted(order, key=lambda t: (t[0], t[1])):
        rows.extend(rs)
    return rows

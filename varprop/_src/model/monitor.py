r"""Per-layer statistics recorded during training, inside the user's jitted step.

:func:`monitor` traces a Flax model once (:func:`~varprop._src.model.expected.trace_model`:
the layers :func:`varprop.check_model` finds, with the law of each layer's initializer) and
returns a :class:`Monitor`. In the user's ``jax.jit``/``nnx.jit`` train step:

* ``Monitor.record(state, model, inputs, *loss_args)`` re-runs the model with the probe's
  taps (:func:`varprop._src.model.probe.measure`) on the parameters the step is about to
  differentiate, **only when** ``step % every == 0`` (a ``lax.cond`` on the step counter
  carried in the :class:`MonitorState`; the other branch returns the buffers unchanged),
  and writes one row per layer (and per iteration of a scanned layer) into fixed-size
  buffers with ``lax.dynamic_update_slice``. Nothing leaves the device.
* ``Monitor.track_updates(tx)`` wraps an optax transformation: its state carries the
  same kind of buffer, into which, every ``every`` updates, it writes each layer kernel's
  ‖ΔW‖ (the final update) and ‖W‖ (the parameters before it).

After training, ``Monitor.series(state, opt_state)`` (host side) returns one
:class:`LayerSeries` per row and one :class:`UpdateSeries` per kernel, and
:func:`~varprop._src.model.monitor_plot.plot_series` draws them.

What is recorded per layer y = op(x, W), on the step's batch:

* forward: E[x²], E[y²] (means over every value), and the law's E[y²] given the measured
  input, σ²·mean op(x², 1) + μ²·mean op(x, 1)² with σ², μ the layer's initializer's at the
  op's true fans (``docs/model_checker.md``, section 2);
* backward: E[(∂L/∂y)²], E[(∂L/∂x)²] through this layer, and the law's
  c·σ²·mean opᵀ((∂L/∂y)², 1) (c the train-mode normalization factor) — L the user's
  ``loss(outputs, *loss_args)``, or a standard normal cotangent on the outputs;
* the law ratios, measured / law: 1 at init when the initializer's law holds. The law is
  the initializer's, so during training the ratio shows how far each layer's weights have
  drifted from the law they were drawn with (‖W‖² growing or shrinking, or aligning with
  their inputs), not a failure.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> class MLP(nnx.Module):
    ...     def __init__(self, rngs):
    ...         he = nnx.initializers.he_normal()
    ...         self.l1 = nnx.Linear(16, 64, kernel_init=he, rngs=rngs)
    ...         self.l2 = nnx.Linear(64, 4, kernel_init=he, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.l2(jax.nn.relu(self.l1(x)))
    >>> def loss(out, y):
    ...     return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    >>> x = jax.random.normal(jax.random.key(0), (32, 16))
    >>> y = jnp.arange(32) % 4
    >>> mon = monitor(lambda rngs: MLP(rngs), x, loss=loss, every=2, capacity=4)
    >>> model = MLP(nnx.Rngs(1))
    >>> opt = nnx.Optimizer(model, mon.track_updates(optax.sgd(0.1)), wrt=nnx.Param)
    >>> @nnx.jit
    ... def step(model, opt, mstate, x, y):
    ...     mstate = mon.record(mstate, model, x, y)  # before the update: this step's W
    ...     grads = nnx.grad(lambda m: loss(m(x), y))(model)
    ...     opt.update(model, grads)
    ...     return mstate
    >>> mstate = mon.init()
    >>> for _ in range(5):
    ...     mstate = step(model, opt, mstate, x, y)
    >>> s = mon.series(mstate, opt.opt_state)
    >>> [(r.path, r.steps.tolist()) for r in s.layers]
    [('l1', [0, 2, 4]), ('l2', [0, 2, 4])]
    >>> bool(abs(s.layers[0].forward_ratio[0] - 1) < 0.3)  # at init: the He law holds
    True
    >>> [(u.path, u.steps.tolist()) for u in s.updates]
    [('l1', [0, 2, 4]), ('l2', [0, 2, 4])]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from varprop._src.errors import InputError
from varprop._src.model.adapter import ModelFunction, path_name
from varprop._src.model.expected import layer_laws, require_layers, row_paths, trace_model
from varprop._src.model.loops import suffix
from varprop._src.model.probe import gaussian_cotangents, measure, model_args
from varprop._src.model.rows import layer_path
from varprop._src.model.trace import Found, LayerSite
from varprop._src.verdicts import ExpectedLaw

__all__ = [
    "LayerSeries",
    "Moments",
    "Monitor",
    "MonitorRow",
    "MonitorSeries",
    "MonitorState",
    "UpdateRecords",
    "UpdateSeries",
    "monitor",
]

F32 = jnp.float32


# ----------------------------------------------------------------------------------------
# Records: what is carried through the step (pytrees), and what the host reads back.
# ----------------------------------------------------------------------------------------


class Moments(NamedTuple):
    """One record per buffer row, one column per layer row (:attr:`Monitor.rows`); each
    field is ``[capacity, n_rows]`` float32 in a :class:`MonitorState` (``[n_rows]`` for
    one record). NaN where a value does not exist (an embedding's input and backward; the
    law of a layer whose initializer is unknown)."""

    #: Forward: E[x²] of the layer's input, E[y²] of its output, the law's E[y²] given x.
    x_m2: Any
    y_m2: Any
    y_law: Any
    #: Backward: E[(∂L/∂y)²], E[(∂L/∂x)²] through this layer, the law's E[(∂L/∂x)²].
    gy_m2: Any
    gx_m2: Any
    gx_law: Any


class MonitorState(NamedTuple):
    """The carried state of :meth:`Monitor.record` (a pytree: pass it through the step).

    ``step``: calls of ``record`` so far; ``count``: records written so far (record ``c``
    is in buffer row ``c % capacity``: the buffer keeps the last ``capacity``);
    ``steps``: ``[capacity]`` the step of each buffer row (-1: empty); ``moments``: the
    buffers."""

    step: jax.Array
    count: jax.Array
    steps: jax.Array
    moments: Moments


class UpdateRecords(NamedTuple):
    """What :meth:`Monitor.track_updates` writes, like :class:`MonitorState`:
    ``update_norm`` ‖ΔW‖ and ``param_norm`` ‖W‖ (before the update), ``[capacity,
    n_kernels]``, one column per kernel of :attr:`Monitor.kernels`."""

    step: Any
    count: Any
    steps: Any
    update_norm: Any
    param_norm: Any


class TrackedState(NamedTuple):
    """The optax state of :meth:`Monitor.track_updates`: the wrapped transformation's
    state and the update records."""

    inner: Any
    records: UpdateRecords


@dataclass(frozen=True)
class MonitorRow:
    """One column of the buffers: a layer (``site``, its index in the traced model), at
    one ``iteration`` of the scans it is inside (``()`` outside loops), named as
    :func:`varprop.check_model` names its rows (``blocks/conv1[3]``); ``law`` its
    initializer's (None when unknown); ``norm_factor`` the backward law's c."""

    path: str
    kind: str
    site: int
    iteration: tuple[int, ...]
    law: ExpectedLaw | None
    norm_factor: float = 1.0


@dataclass(frozen=True)
class LayerSeries:
    """One layer row's recorded time series (host numpy arrays, float64, one entry per
    record, in the order of the steps). ``forward_ratio = y_m2 / y_law`` and ``backward_ratio =
    gx_m2 / gx_law``: 1 where the initializer's law holds given the measured input (the
    drift from the init law during training)."""

    path: str
    kind: str
    steps: np.ndarray
    x_m2: np.ndarray
    y_m2: np.ndarray
    y_law: np.ndarray
    gy_m2: np.ndarray
    gx_m2: np.ndarray
    gx_law: np.ndarray

    @property
    def forward_ratio(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.y_m2 / self.y_law

    @property
    def backward_ratio(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.gx_m2 / self.gx_law


@dataclass(frozen=True)
class UpdateSeries:
    """One kernel's update sizes: ‖ΔW‖, ‖W‖ before the update, and their ratio."""

    path: str
    steps: np.ndarray
    update_norm: np.ndarray
    param_norm: np.ndarray

    @property
    def ratio(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.update_norm / self.param_norm


@dataclass(frozen=True)
class MonitorSeries:
    """What :meth:`Monitor.series` returns: the layer rows' and the kernels' series, and
    how many records the ring buffers dropped (older than the last ``capacity``)."""

    layers: list[LayerSeries]
    updates: list[UpdateSeries]
    dropped: int = 0
    dropped_updates: int = 0

    def layer(self, path: str) -> LayerSeries:
        """The series of the layer row named ``path``."""
        for r in self.layers:
            if r.path == path:
                return r
        raise KeyError(f"no layer row {path!r}; rows: {[r.path for r in self.layers]}")


# ----------------------------------------------------------------------------------------
# Buffers.
# ----------------------------------------------------------------------------------------


def _empty(capacity: int, width: int, fields: int) -> tuple[jax.Array, ...]:
    return tuple(jnp.full((capacity, width), jnp.nan, F32) for _ in range(fields))


def _static_switch(value: Any, name: str) -> bool | None:
    """``value`` when it is None or a Python bool (numpy's too); else a usage error."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise InputError(
        f"{name}={value!r}: allowed: None (a lax.cond on the step counter) or a Python "
        f"bool, static in the jitted step (static_argnames), e.g. step_number % every == 0",
        kind="usage",
        param=name,
    )


def _every(write: Callable[[Any], Any], state: Any, every: int, now: bool | None) -> Any:
    """``write(state)`` when ``now``, ``state`` when not; ``now=None``: a ``lax.cond`` on
    ``state.step % every == 0`` (the other branch returns the buffers unchanged)."""
    if now is None:
        return jax.lax.cond(jnp.mod(state.step, every) == 0, write, lambda st: st, state)
    return write(state) if now else state


def _write(step, count, steps, buffers, values, capacity: int):
    """``values`` (one ``[width]`` array per buffer) into row ``count % capacity``."""
    i = jnp.mod(count, capacity).astype(jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    new = [
        jax.lax.dynamic_update_slice(b, v.astype(F32)[None], (i, zero))
        for b, v in zip(buffers, values, strict=True)
    ]
    steps = jax.lax.dynamic_update_slice(steps, step.astype(jnp.int32)[None], (i,))
    return count + 1, steps, new


def _chronological(count: int, steps: np.ndarray, capacity: int) -> tuple[np.ndarray, int]:
    """The buffer rows in the order they were written, and how many were overwritten."""
    kept = min(count, capacity)
    order = (np.arange(count - kept, count) % capacity) if kept else np.zeros(0, int)
    return order, count - kept


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(
            f"{name}={value!r}; allowed: a whole number >= 1", kind="usage", param=name
        )
    return int(value)


# ----------------------------------------------------------------------------------------
# The monitor.
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Monitor:
    """A traced model's layers and what :meth:`record` and :meth:`track_updates` write
    (module docstring). Build it with :func:`monitor`."""

    mf: ModelFunction
    found: Found
    rows: tuple[MonitorRow, ...]
    #: ``(parameter leaf index, layer path)`` of each tracked kernel (a layer's weight).
    kernels: tuple[tuple[int, str], ...]
    every: int
    capacity: int
    loss: Callable[..., jax.Array] | None
    seed: int
    args_shapes: tuple[tuple[tuple[int, ...], Any], ...]
    out_tree: Any
    float_out: tuple[bool, ...]
    with_mean: frozenset[int]

    # -- the carried state -----------------------------------------------------------

    def init(self) -> MonitorState:
        """An empty :class:`MonitorState` (step 0, no record)."""
        return MonitorState(
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
            jnp.full((self.capacity,), -1, jnp.int32),
            Moments(*_empty(self.capacity, len(self.rows), len(Moments._fields))),
        )

    # -- forward and backward statistics ---------------------------------------------

    def record(
        self,
        state: MonitorState,
        model: Any,
        inputs: Any,
        *loss_args: Any,
        now: bool | None = None,
    ) -> MonitorState:
        """``state`` after one step: when ``state.step % every == 0``, every layer row's
        :class:`Moments` measured on ``model`` (an ``nnx.Module``; Linen variables
        ``{"params": ..., ...}``; or the parameters of a model without other state)
        called on ``inputs`` (an array or a tuple of positional arguments, the shapes of
        the example), the backward ones of ``loss(outputs, *loss_args)``. Traceable; call
        it inside the jitted step with the arrays the step already has. The model is not
        changed (a normalization's running statistics and RNG counters stay as they are).

        Where: *before* the optimizer update, a record is of the weights the step's
        gradient is taken at (step 0: the initial weights, as :func:`varprop.check_model`
        measures them); *after* it, of the weights the step returns. Either way the steps
        that do not record cost little: 0.99–1.05 times a plain Adam step over four runs of
        ``scripts/bench_monitor.py`` (``docs/monitor.md``, the overhead figures).

        ``now``: ``None`` (default) records when ``state.step % every == 0``, by
        ``lax.cond``. A Python bool decides at trace time instead: jit the step with it
        static (``static_argnames``) and pass ``step_number % every == 0`` from your own
        loop. Two programs are compiled, and the one that does not record has nothing of
        the monitor but the counter (no host round-trip either: the decision is the
        host's own loop counter)."""
        now = _static_switch(now, "now")
        params, mstate = self._flat_model(model)
        args = model_args(inputs, jax.random.key(0))
        flat_inputs = jax.tree_util.tree_leaves(args)
        self._check_inputs(flat_inputs)
        if self.loss is None and loss_args:
            raise InputError(
                f"{len(loss_args)} loss argument(s) given but monitor(..., loss=None): "
                "allowed: pass loss=fn(outputs, *loss_args) to monitor()",
                kind="usage",
                param="loss",
            )
        cap = self.capacity

        def write(st: MonitorState) -> MonitorState:
            key = jax.random.fold_in(jax.random.key(self.seed), st.step)
            k_cot, k_rng = jax.random.split(key)
            values = self._moments([*params, *mstate, *flat_inputs, k_rng], k_cot, loss_args)
            count, steps, bufs = _write(st.step, st.count, st.steps, st.moments, values, cap)
            return MonitorState(st.step, count, steps, Moments(*bufs))

        new = _every(write, state, self.every, now)
        return new._replace(step=state.step + 1)

    def _moments(self, args: list[Any], k_cot: jax.Array, loss_args) -> Moments:
        loss = self.loss

        def cotangents(outs):
            if loss is not None:
                fn = loss
                tree = jax.tree_util.tree_unflatten(self.out_tree, outs)
                return jax.tree_util.tree_leaves(jax.grad(lambda t: fn(t, *loss_args))(tree))
            return gaussian_cotangents(k_cot, outs, list(self.float_out))

        st = measure(self.found, args, cotangents, self.with_mean)
        cols: dict[str, list[jax.Array]] = {k: [] for k in Moments._fields}
        for site in self.found.layers:
            rows = [r for r in self.rows if r.site == site.index]
            n = len(rows)
            f = {k: v.reshape(n) for k, v in st["forward"][site.index].items()}
            law = rows[0].law
            var, mu2 = (law.variance, law.mean**2) if law is not None else (math.nan, math.nan)
            nan = jnp.full((n,), jnp.nan, F32)
            cols["y_m2"].append(jnp.exp(f["y_lm2"]))
            cols["y_law"].append(var * jnp.exp(f["s_lm2"]) + mu2 * jnp.exp(f["s_lrs2"]))
            if site.kind == "embed":
                cols["x_m2"].append(nan)
                for k in ("gy_m2", "gx_m2", "gx_law"):
                    cols[k].append(nan)
                continue
            b = {k: v.reshape(n) for k, v in st["backward"][site.index].items()}
            cols["x_m2"].append(jnp.exp(f["x_lm2"]))
            cols["gy_m2"].append(jnp.exp(b["v_lm2_raw"]))
            cols["gx_m2"].append(jnp.exp(b["y_lm2"]))
            cols["gx_law"].append(rows[0].norm_factor * var * jnp.exp(b["s_lm2"]))
        return Moments(**{k: jnp.concatenate(v).astype(F32) for k, v in cols.items()})

    def _flat_model(self, model: Any) -> tuple[list[Any], list[Any]]:
        """The parameters and the other state of ``model`` as the traced function's flat
        lists, checked against the example's shapes."""
        mf = self.mf
        if mf.framework == "nnx" and _is_nnx_module(model):
            from flax import nnx

            _, p, rest = nnx.split(model, nnx.Param, ...)
            params, state = jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(rest)
        elif isinstance(model, Mapping) and "params" in model and mf.framework == "linen":
            params = jax.tree_util.tree_leaves(model["params"])
            state = jax.tree_util.tree_leaves({k: v for k, v in model.items() if k != "params"})
        else:
            params, state = jax.tree_util.tree_leaves(model), []
            if mf.state and len(params) == len(mf.params):
                raise InputError(
                    f"the model has {len(mf.state)} state array(s) besides its parameters; "
                    "allowed: the nnx.Module, or the Linen variables {'params': ..., ...}",
                    kind="model",
                    param="model",
                )
        for name, got, want in (("parameter", params, mf.params), ("state", state, mf.state)):
            shapes = [tuple(np.shape(a)) for a in got]
            expect = [tuple(np.shape(a)) for a in want]
            if shapes != expect:
                raise InputError(
                    f"the model's {name} arrays have shapes {shapes[:6]}"
                    f"{' ...' if len(shapes) > 6 else ''} ({len(shapes)}), not those of the "
                    f"monitored model {expect[:6]}{' ...' if len(expect) > 6 else ''} "
                    f"({len(expect)}); allowed: the {mf.framework} model that monitor() traced"
                    + (" (an nnx.Module)" if mf.framework == "nnx" else " (its variables)"),
                    kind="model",
                    param="model",
                )
        return params, state

    def _check_inputs(self, flat_inputs: Sequence[Any]) -> None:
        got = tuple((tuple(np.shape(a)), jnp.result_type(a)) for a in flat_inputs)
        if tuple(s for s, _ in got) != tuple(s for s, _ in self.args_shapes):
            raise InputError(
                f"inputs of shapes {[s for s, _ in got]}; allowed: the shapes of the example "
                f"monitor() traced, {[s for s, _ in self.args_shapes]}",
                kind="usage",
                param="inputs",
            )

    # -- update sizes ----------------------------------------------------------------

    def track_updates(self, tx: Any) -> Any:
        """``tx`` (an ``optax.GradientTransformation``) whose state also records, every
        ``every`` updates (a ``lax.cond`` on its own counter), each kernel's ‖ΔW‖ (the
        update ``tx`` returns) and ‖W‖ (the ``params`` passed to ``update``, before the
        update). Use it as the outermost transformation (``nnx.Optimizer`` passes the
        parameters; with plain optax pass ``params=`` to ``update``).

        Cost on the steps that do not record: the ``lax.cond`` reads the updates, so XLA
        writes them to memory instead of fusing them into the parameter update, one more
        pass over the parameters per step (``docs/monitor.md``). To avoid it, pass
        ``record_now=`` a Python bool to ``update`` (``nnx.Optimizer.update(model, grads,
        record_now=...)`` forwards it), static in your jitted step as for
        :meth:`record`'s ``now``: the step that does not record then compiles without the
        conditional."""
        import optax

        inner = optax.with_extra_args_support(tx)
        cap, every, kernels = self.capacity, self.every, self.kernels

        def init(params):
            return TrackedState(
                inner.init(params),
                UpdateRecords(
                    jnp.zeros((), jnp.int32),
                    jnp.zeros((), jnp.int32),
                    jnp.full((cap,), -1, jnp.int32),
                    *_empty(cap, len(kernels), 2),
                ),
            )

        def update(updates, state, params=None, *, record_now=None, **extra):
            record_now = _static_switch(record_now, "record_now")
            if params is None:
                raise InputError(
                    "track_updates needs the parameters: call update(grads, state, params) "
                    "(nnx.Optimizer does)",
                    kind="usage",
                    param="params",
                )
            new_updates, inner_state = inner.update(updates, state.inner, params, **extra)
            u_leaves, p_leaves = self._kernels_of(new_updates), self._kernels_of(params)
            rec = state.records

            def write(r: UpdateRecords) -> UpdateRecords:
                norms = [
                    jnp.stack([jnp.linalg.norm(jnp.ravel(a).astype(F32)) for a in leaves])
                    for leaves in (u_leaves, p_leaves)
                ]
                count, steps, bufs = _write(
                    r.step, r.count, r.steps, (r.update_norm, r.param_norm), norms, cap
                )
                return UpdateRecords(r.step, count, steps, *bufs)

            rec = _every(write, rec, every, record_now)
            return new_updates, TrackedState(inner_state, rec._replace(step=rec.step + 1))

        return optax.GradientTransformationExtraArgs(init, update)

    def _kernels_of(self, tree: Any) -> list[Any]:
        """The tracked kernels' leaves of a parameter-shaped tree, found by path."""
        leaves = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
        out = []
        for param, _ in self.kernels:
            want = self.mf.paths[param]
            if want not in leaves:
                raise InputError(
                    f"the optimizer's parameters have no leaf {want!r} (found "
                    f"{sorted(leaves)[:6]}...); allowed: the monitored model's parameters",
                    kind="model",
                    param="params",
                )
            out.append(getattr(leaves[want], "value", leaves[want]))
        return out

    # -- host side -------------------------------------------------------------------

    def series(self, state: MonitorState | None, opt_state: Any = None) -> MonitorSeries:
        """The recorded series (host numpy; call it outside the jitted step): one
        :class:`LayerSeries` per row of :attr:`rows` from ``state``, and one
        :class:`UpdateSeries` per kernel from the :class:`UpdateRecords` found anywhere
        in ``opt_state`` (an optax state, or ``nnx.Optimizer.opt_state``)."""
        layers: list[LayerSeries] = []
        dropped = dropped_u = 0
        if state is not None:
            count = int(np.asarray(state.count))
            steps = np.asarray(state.steps)
            order, dropped = _chronological(count, steps, self.capacity)
            m = Moments(*(np.asarray(b, np.float64)[order] for b in state.moments))
            for j, row in enumerate(self.rows):
                cols = {k: np.asarray(v)[:, j] for k, v in m._asdict().items()}
                layers.append(LayerSeries(row.path, row.kind, steps[order], **cols))
        updates: list[UpdateSeries] = []
        rec = _find_records(opt_state)
        if rec is not None:
            count = int(np.asarray(rec.count))
            steps = np.asarray(rec.steps)
            order, dropped_u = _chronological(count, steps, self.capacity)
            un = np.asarray(rec.update_norm, np.float64)[order]
            pn = np.asarray(rec.param_norm, np.float64)[order]
            updates = [
                UpdateSeries(path, steps[order], un[:, j], pn[:, j])
                for j, (_, path) in enumerate(self.kernels)
            ]
        return MonitorSeries(layers, updates, dropped, dropped_u)

    def plot(self, state: MonitorState | None, opt_state: Any = None, path: str | None = None):
        """The figure of :func:`~varprop._src.model.monitor_plot.plot_series` (saved to
        ``path`` as PNG when given)."""
        from varprop._src.model.monitor_plot import plot_series

        return plot_series(self.series(state, opt_state), path=path)


def _is_nnx_module(x: Any) -> bool:
    import sys

    mod = sys.modules.get("flax.nnx")
    return mod is not None and isinstance(x, mod.Module)


def _find_records(tree: Any) -> UpdateRecords | None:
    """The :class:`UpdateRecords` inside an optax (or ``nnx.Optimizer``) state, with its
    arrays unwrapped from NNX variables."""
    if tree is None:
        return None
    found = [
        x
        for x in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, UpdateRecords))
        if isinstance(x, UpdateRecords)
    ]
    if not found:
        return None
    return UpdateRecords(*(_unwrap(v) for v in found[0]))


def _unwrap(v: Any) -> np.ndarray:
    if hasattr(v, "get_value"):
        v = v.get_value()
    elif hasattr(v, "value"):
        v = v.value
    return np.asarray(v)


def _norm_factor(site: LayerSite) -> float:
    from varprop._src.model.rows import _norm_factor as factor

    return factor(site)[0]


def monitor(
    model: Any,
    inputs: Any,
    *,
    every: int = 1,
    capacity: int = 100,
    loss: Callable[..., jax.Array] | None = None,
    variables: Any = None,
    expect: Mapping[str, Any] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    rngs: Sequence[str] | None = None,
    mode: str | None = "train",
    seed: int = 0,
) -> Monitor:
    """A :class:`Monitor` of a Flax model's layers (module docstring).

    Args:
        model: as :func:`varprop.check_model`: an NNX factory (``lambda rngs: Model(...,
            rngs=rngs)``: its initializers are seen, so each layer has its law), an
            ``nnx.Module`` instance (statistics without laws unless ``expect`` names them),
            or a ``flax.linen.Module`` (its ``init`` is run to see its initializers).
        inputs: an example batch (an array or a tuple of positional arguments) with the
            shapes of the training batches.
        every: record every ``every`` steps (steps 0, every, 2·every, ...).
        capacity: buffer rows; the buffers keep the last ``capacity`` records.
        loss: ``loss(outputs, *loss_args) -> scalar``, the training loss whose gradient
            the backward statistics are of (default: a standard normal cotangent on the
            outputs, E[(∂L/∂out)²] = 1).
        variables, expect, call_kwargs, rngs, mode: as :func:`varprop.check_model`
            (``mode="train"``: batch statistics, dropout on, as in a train step).
        seed: the keys of the Gaussian cotangent and of a Linen model's RNG streams are
            ``fold_in(key(seed), step)``.
    """
    every = _check_positive("every", every)
    capacity = _check_positive("capacity", capacity)
    if mode not in ("train", "eval", None):
        raise InputError(
            f"mode={mode!r}; allowed: 'train', 'eval' or None", kind="usage", param="mode"
        )
    args0 = model_args(inputs, jax.random.key(seed))
    mf, found = trace_model(
        model, args0, variables=variables, mode=mode, call_kwargs=call_kwargs, rngs=rngs
    )
    require_layers(found)
    paths = row_paths(found)
    laws = layer_laws(found, mf, paths, expect)
    rows = []
    for site, path, law in zip(found.layers, paths, laws, strict=True):
        factor = _norm_factor(site)
        for ix in np.ndindex(*found.iterations(site.eqn)):
            ix = tuple(int(i) for i in ix)
            rows.append(MonitorRow(path + suffix(ix), site.kind, site.index, ix, law, factor))
    kernels: dict[int, str] = {}
    for site in found.layers:
        kernels.setdefault(site.param, layer_path(mf.paths[site.param]))
    out_tree = jax.eval_shape(lambda: mf.apply(mf.params, mf.state, args0, jax.random.key(0)))
    float_out = tuple(
        bool(jnp.issubdtype(o.dtype, jnp.floating)) for o in jax.tree_util.tree_leaves(out_tree)
    )
    with_mean = frozenset(
        s.index for s, lw in zip(found.layers, laws, strict=True) if lw is not None and lw.mean
    )
    flat = jax.tree_util.tree_leaves(args0)
    return Monitor(
        mf,
        found,
        tuple(rows),
        tuple(kernels.items()),
        every,
        capacity,
        loss,
        seed,
        tuple((tuple(np.shape(a)), jnp.result_type(a)) for a in flat),
        jax.tree_util.tree_structure(out_tree),
        float_out,
        with_mean,
    )

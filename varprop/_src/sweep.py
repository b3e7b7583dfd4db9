r"""Width sweeps in one program per width: a model family trained a few steps at several
widths under a parametrization, vmapped over seeds, the seeds sharded over the devices.

This is the measurement of the **coordinate check** (Yang et al., "Tensor Programs V: Tuning
Large Neural Networks via Zero-Shot Hyperparameter Transfer", 2022, Sec. 7.2 and Fig. 5): train
the same model at several widths for a few steps and look at how the size of each layer's
coordinates, and of their change since init, grows with the width. Under μP every layer's
change is Θ(1); under the standard parametrization (SP) some grow as a power of the width.
:func:`varprop.laws.predict_widths` predicts those powers; :mod:`varprop._src.experiments.coord_check`
compares them with what this module measures.

**What is measured.** A :class:`ModelFamily` is a model written as a function of the width n
(pure JAX: ``init(key, n)`` gives the parameters, ``apply(params, inputs)`` the output and the
named pre-activations, the *layers*). :func:`width_sweep` re-draws the parameters with a
:class:`~varprop._src.parametrization_jax.WidthScaling` (roles from
:func:`~varprop._src.parametrization_jax.roles_from_shapes`), trains t steps of optax SGD or
Adam with the parametrization's per-layer learning rates on one fixed batch per seed, and
records for every width, seed, layer and step s = 0..t the coordinate sizes

.. math:: \mathrm{act}_s = \sqrt{\mathrm{mean}\, (h^l_s)^2}, \qquad
          \mathrm{upd}_s = \sqrt{\mathrm{mean}\, (h^l_s - h^l_0)^2}

(root mean square over the batch and the features; ``upd`` at s = 0 is 0). A seed fixes the
batch (the same at every width: common random numbers) and the draw of the weights.

**One program per width.** The t steps run under ``lax.scan`` inside one jitted program that
takes the seeds' keys and returns the two ``(seeds, t + 1, layers)`` arrays: no host
round-trip between steps or seeds. The widths are looped over on the host (each width has its
own shapes, hence its own compiled program).

**Seeds over devices.** The seeds' keys are placed with
``NamedSharding(Mesh(devices, ("seed",)), PartitionSpec("seed"))`` and the program is a
``jax.shard_map`` over that axis: each device trains its own seeds (``jax.vmap`` over them,
or ``jax.lax.map`` in chunks of ``seed_chunk`` to bound memory), with no communication
between devices; the outputs stay sharded the same way. With one device the mesh has one
device and nothing else changes. When the seeds do not divide evenly, the mesh takes the
largest number of devices that divides them.

**On a GPU (or TPU)** nothing in the code changes: ``jax.devices()`` lists the accelerators
and the mesh spans them, each training ``seeds / devices`` seeds. What changes: (1) the seeds
really run in parallel (on CPU the 8 devices of the tests are forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and share the host's cores); (2) memory:
each device holds its seeds' parameters, optimizer state, gradients and activations at once
(under ``vmap``), about 5 copies of the parameters per seed with Adam, so at large widths give
``seed_chunk`` (a chunk is vmapped, the chunks run one after the other on the device);
(3) precision: XLA on recent NVIDIA GPUs computes float32 matrix products in TF32 by default,
whose 10-bit mantissa would swamp the small changes ``h_s - h_0`` being measured, so the
program is traced under ``jax.default_matmul_precision("highest")`` (``precision=None`` keeps
the backend's default; on CPU it makes no difference).

Example:
    >>> fam = mlp_family(hidden_layers=2, d_in=4, d_out=1, batch=8)
    >>> res = width_sweep(fam, (16, 32), "muP", "sgd", learning_rate=0.1, steps=2, seeds=2)
    >>> res.activation.shape, res.layers, res.roles    # (widths, seeds, steps + 1, layers)
    ((2, 2, 3, 3), ('h1', 'h2', 'f'), ('input', 'hidden', 'output'))
    >>> bool((res.update[:, :, 0] == 0).all()), bool((res.update[:, :, 1:] > 0).all())
    (True, True)
    >>> r = res.records()[0]
    >>> r.width, r.seed, r.layer, r.step, r.update
    (16, 0, 'h1', 0, 0.0)
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from varprop._src.laws.catalog import GainSpec
from varprop._src.parametrization_jax import WidthScaling, roles_from_shapes
from varprop._src.probe import COMPILER_OPTIONS

Array = jax.Array

#: The name of the mesh axis the seeds are split over.
SEED_AXIS = "seed"


# --------------------------------------------------------------------------------------
# Model families.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFamily:
    """A model as a function of its width n, in pure JAX.

    Attributes:
        name: a label.
        init: ``init(key, n) -> params``, a pytree in Flax layout (a kernel's last two axes
            are ``(in, out)``). Leaves with a width axis are re-drawn by the parametrization
            (:meth:`WidthScaling.init_params`: kernels from its initializers, 1-D leaves of
            width n set to 0); leaves without one (role ``"fixed"``) keep these values.
        apply: ``apply(params, inputs) -> (output, taps)``: the output the loss reads, and
            ``{layer: pre-activation}`` for every layer in ``layers`` (the output may be one).
        data: ``data(key) -> (inputs, target)``: one batch (no width in it).
        loss: ``loss(output, target) -> scalar``.
        layers: the recorded layers, in order.
        roles: each layer's role, ``"input"``, ``"hidden"`` or ``"output"`` (what its
            prediction is read from: :meth:`varprop.laws.WidthPrediction.exponents`).
        gain: g of the fan-in init at the base width (:class:`WidthScaling`'s ``gain``).
    """

    name: str
    init: Callable[[Array, int], Any]
    apply: Callable[[Any, Any], tuple[Array, Mapping[str, Array]]]
    data: Callable[[Array], tuple[Any, Any]]
    loss: Callable[[Array, Any], Array]
    layers: tuple[str, ...]
    roles: tuple[str, ...]
    gain: GainSpec = 1.0

    def __post_init__(self):
        if len(self.layers) != len(self.roles):
            raise ValueError(f"{len(self.layers)} layers but {len(self.roles)} roles")
        for r in self.roles:
            if r not in ("input", "hidden", "output"):
                raise ValueError(f"unknown role {r!r}; allowed: input, hidden, output")

    def labels(self, width: int) -> Any:
        """The parameters' role labels at ``width``, from their shapes at ``width`` and
        ``2 * width`` (no parameter is computed: ``jax.eval_shape``)."""
        key = jax.random.key(0)
        at = jax.eval_shape(lambda k: self.init(k, width), key)
        other = jax.eval_shape(lambda k: self.init(k, 2 * width), key)
        return roles_from_shapes(at, other)


def linear_loss(output: Array, target: Array) -> Array:
    r"""The linear loss :math:`L = \mathrm{mean}_{\text{rows}}\, f \cdot v` (``target`` = v).

    Its derivative is v whatever the output, so the loss adds no width dependence to the
    gradient (with the squared loss, μP's output at init, :math:`\Theta(n^{-1/2})`, would enter
    :math:`L' = f - y` as a finite-width correction).
    """
    rows = math.prod(output.shape[:-1])
    return jnp.sum(output * target) / rows


def _normal_pair(key: Array, x_shape: tuple[int, ...], v_shape: tuple[int, ...]):
    kx, kv = jax.random.split(key)
    return jax.random.normal(kx, x_shape, jnp.float32), jax.random.normal(kv, v_shape, jnp.float32)


def mlp_family(
    *, hidden_layers: int = 3, d_in: int = 16, d_out: int = 1, batch: int = 32
) -> ModelFamily:
    r"""A ReLU MLP without biases, the model of :func:`varprop.laws.predict_widths`.

    ``hidden_layers`` pre-activations of width n: :math:`h^1 = x W^1` (input role,
    ``d_in`` → n), :math:`h^l = \mathrm{relu}(h^{l-1}) W^l` (hidden, n → n), then the output
    :math:`f = \mathrm{relu}(h^L) W^{out}` (output role, n → ``d_out``). Layers
    ``h1 .. hL, f``. Data: x, v ~ N(0, 1) of shapes ``(batch, d_in)``, ``(batch, d_out)``;
    the :func:`linear_loss`; gain √2 (He at the base width).
    """
    if hidden_layers < 1:
        raise ValueError(f"hidden_layers must be >= 1, got {hidden_layers}")

    def init(key: Array, n: int) -> dict[str, Array]:
        del key  # every leaf has a width axis: the parametrization draws them all
        ws = {"w1": jnp.zeros((d_in, n))}
        for i in range(2, hidden_layers + 1):
            ws[f"w{i}"] = jnp.zeros((n, n))
        ws["out"] = jnp.zeros((n, d_out))
        return ws

    def apply(p: dict[str, Array], x: Array):
        taps = {"h1": x @ p["w1"]}
        h = taps["h1"]
        for i in range(2, hidden_layers + 1):
            h = jax.nn.relu(h) @ p[f"w{i}"]
            taps[f"h{i}"] = h
        f = jax.nn.relu(h) @ p["out"]
        taps["f"] = f
        return f, taps

    layers = (*(f"h{i}" for i in range(1, hidden_layers + 1)), "f")
    roles = ("input", *("hidden",) * (hidden_layers - 1), "output")
    return ModelFamily(
        name="mlp",
        init=init,
        apply=apply,
        data=lambda k: _normal_pair(k, (batch, d_in), (batch, d_out)),
        loss=linear_loss,
        layers=layers,
        roles=roles,
        gain="relu",
    )


def _layer_norm(x: Array, eps: float = 1e-6) -> Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def transformer_family(
    *,
    blocks: int = 2,
    d_in: int = 16,
    d_out: int = 8,
    tokens: int = 8,
    batch: int = 4,
    head_dim: int = 16,
    mlp_ratio: int = 4,
) -> ModelFamily:
    r"""A small decoder-only pre-LN Transformer whose width n is the model dimension.

    :math:`x_0 = u W^{in}` (input role: ``d_in``-dimensional token vectors u, no vocabulary);
    per block :math:`x \leftarrow x + A(\mathrm{LN}(x))`, :math:`x \leftarrow x +
    W_2\,\mathrm{relu}(W_1 \mathrm{LN}(x))` (``mlp_ratio`` n hidden units), with causal
    self-attention A of n / ``head_dim`` heads of fixed dimension ``head_dim`` (so the logits'
    :math:`1/\sqrt{d_{head}}` does not change with n, and μP's :math:`1/d_{head}` attention,
    Yang et al. 2022, Sec. 4, is the same up to a constant); then :math:`f = \mathrm{LN}(x)
    W^{out}` (output role, n → ``d_out``). LayerNorm without affine parameters (its init),
    no biases, no positional embedding (the token vectors are random). Every n × n, n × m n
    and m n × n kernel is hidden. Layers: ``embed`` (:math:`x_0`), ``attn1``, ``mlp1``, ...
    (each sublayer's output, after :math:`W_O` and :math:`W_2`), ``output`` (f). Data: u, v
    ~ N(0, 1) of shapes ``(batch, tokens, d_in)``, ``(batch, tokens, d_out)``; the
    :func:`linear_loss` over every token; gain 1.
    """
    causal = jnp.tril(jnp.ones((tokens, tokens), bool))

    def init(key: Array, n: int) -> dict[str, Any]:
        del key
        if n % head_dim:
            raise ValueError(f"width {n} is not a multiple of head_dim {head_dim}")
        shapes = {m: (n, n) for m in ("q", "k", "v", "o")}
        shapes.update(w1=(n, mlp_ratio * n), w2=(mlp_ratio * n, n))
        return {
            "embed": jnp.zeros((d_in, n)),
            "blocks": [{m: jnp.zeros(s) for m, s in shapes.items()} for _ in range(blocks)],
            "out": jnp.zeros((n, d_out)),
        }

    def attention(x: Array, w: dict[str, Array]) -> Array:
        b, t, n = x.shape
        h = n // head_dim
        q, k, v = ((x @ w[m]).reshape(b, t, h, head_dim) for m in ("q", "k", "v"))
        logits = jnp.einsum("bthe,bshe->bhts", q, k) / math.sqrt(head_dim)
        a = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
        return jnp.einsum("bhts,bshe->bthe", a, v).reshape(b, t, n) @ w["o"]

    def apply(p: dict[str, Any], u: Array):
        x = u @ p["embed"]
        taps = {"embed": x}
        for i, w in enumerate(p["blocks"], start=1):
            a = attention(_layer_norm(x), w)
            taps[f"attn{i}"] = a
            x = x + a
            m = jax.nn.relu(_layer_norm(x) @ w["w1"]) @ w["w2"]
            taps[f"mlp{i}"] = m
            x = x + m
        f = _layer_norm(x) @ p["out"]
        taps["output"] = f
        return f, taps

    layers = ("embed", *(f"{s}{i}" for i in range(1, blocks + 1) for s in ("attn", "mlp")))
    return ModelFamily(
        name="transformer",
        init=init,
        apply=apply,
        data=lambda k: _normal_pair(k, (batch, tokens, d_in), (batch, tokens, d_out)),
        loss=linear_loss,
        layers=(*layers, "output"),
        roles=("input", *("hidden",) * (2 * blocks), "output"),
        gain=1.0,
    )


# --------------------------------------------------------------------------------------
# The sweep.
# --------------------------------------------------------------------------------------


class Record(NamedTuple):
    """One measurement: a layer's coordinate sizes after ``step`` steps."""

    width: int
    seed: int
    layer: str
    step: int
    activation: float
    update: float


@dataclass
class SweepResult:
    """What :func:`width_sweep` measured.

    Attributes:
        activation: ``(widths, seeds, steps + 1, layers)`` RMS of each layer's pre-activation
            after s steps (NumPy float64).
        update: the same shape, RMS of its change since init (0 at s = 0).
        arrays: per width, the program's outputs ``(activation, update)`` as the JAX arrays
            it returned (still on the devices, sharded over the seeds).
        seconds: per width, the wall time of its program (compilation included).
    """

    family: str
    parametrization: str
    optimizer: str
    learning_rate: float
    base_width: int
    widths: tuple[int, ...]
    seeds: int
    steps: int
    layers: tuple[str, ...]
    roles: tuple[str, ...]
    activation: np.ndarray
    update: np.ndarray
    devices: int
    arrays: dict[int, tuple[Array, Array]] = field(default_factory=dict, repr=False)
    seconds: dict[int, float] = field(default_factory=dict)

    def records(self) -> list[Record]:
        """Every (width, seed, layer, step) as a :class:`Record`, in that nesting order."""
        out = []
        for i, n in enumerate(self.widths):
            for s in range(self.seeds):
                for j, layer in enumerate(self.layers):
                    for t in range(self.steps + 1):
                        out.append(
                            Record(
                                n,
                                s,
                                layer,
                                t,
                                float(self.activation[i, s, t, j]),
                                float(self.update[i, s, t, j]),
                            )
                        )
        return out

    def slopes(self, quantity: str = "update", step: int = -1) -> np.ndarray:
        """Per seed and layer ``(seeds, layers)``, the least-squares slope of
        ln(size) against ln(width) of ``quantity`` (``"update"`` or ``"activation"``) after
        ``step`` steps: the measured width exponent."""
        sizes = {"update": self.update, "activation": self.activation}[quantity][:, :, step]
        logw = np.log(np.asarray(self.widths, np.float64))
        u = logw - logw.mean()
        y = np.log(sizes)  # (widths, seeds, layers)
        return np.einsum("w,wsl->sl", u, y - y.mean(0)) / np.sum(u * u)


def seed_mesh(seeds: int, devices: Sequence[Any] | None = None) -> Mesh:
    """A one-axis mesh (``"seed"``) over the largest number of ``devices`` (default
    ``jax.devices()``) that divides ``seeds``."""
    devs = list(jax.devices() if devices is None else devices)
    d = max(k for k in range(1, len(devs) + 1) if seeds % k == 0)
    return Mesh(np.array(devs[:d]), (SEED_AXIS,))


def seed_keys(seed: int, seeds: int) -> Array:
    """The sweep's ``seeds`` keys from an integer ``seed`` (the same at every width)."""
    return jax.random.split(jax.random.key(seed), seeds)


def width_program(
    family: ModelFamily,
    width: int,
    parametrization: str,
    optimizer: str,
    *,
    learning_rate: float,
    steps: int,
    mesh: Mesh,
    base_width: int,
    seed_chunk: int | None = None,
    precision: str | None = "highest",
) -> Callable[[Array], tuple[Array, Array]]:
    """The jitted program of one width: ``keys (seeds,) -> (activation, update)``, each
    ``(seeds, steps + 1, layers)`` float32, sharded over the mesh's ``"seed"`` axis.

    Inside, per seed: the batch from ``fold_in(key, 0)``, the parameters from
    ``fold_in(key, 1)`` (drawn by the parametrization), then ``steps`` optax steps under
    ``lax.scan``; each step's forward pass (the one its gradient is taken through) records
    the layers' sizes, and one more forward pass measures the last step.
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: sgd, adam")
    ws = WidthScaling(parametrization, width, base_width, gain=family.gain)
    labels = family.labels(width)
    base = optax.sgd(learning_rate) if optimizer == "sgd" else optax.adam(learning_rate)
    tx = optax.chain(base, ws.learning_rates(labels, optimizer))
    layers = family.layers

    def sizes(taps, taps0):
        act = jnp.stack([jnp.sqrt(jnp.mean(jnp.square(taps[k]))) for k in layers])
        upd = jnp.stack([jnp.sqrt(jnp.mean(jnp.square(taps[k] - taps0[k]))) for k in layers])
        return act, upd

    def one(key: Array) -> tuple[Array, Array]:
        inputs, target = family.data(jax.random.fold_in(key, 0))
        k_init = jax.random.fold_in(key, 1)
        params = ws.init_params(k_init, family.init(k_init, width), labels)

        def forward(p):
            return family.apply(ws.apply_multipliers(p, labels), inputs)

        def loss(p):
            out, taps = forward(p)
            return family.loss(out, target), taps

        _, taps0 = forward(params)

        def step(carry, _):
            p, state = carry
            (_, taps), g = jax.value_and_grad(loss, has_aux=True)(p)
            with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int and float
                u, state = tx.update(g, state, p)
            return (optax.apply_updates(p, u), state), sizes(taps, taps0)

        (p_last, _), (act, upd) = jax.lax.scan(step, (params, tx.init(params)), None, steps)
        act_t, upd_t = sizes(forward(p_last)[1], taps0)
        return jnp.concatenate([act, act_t[None]]), jnp.concatenate([upd, upd_t[None]])

    def local(keys: Array) -> tuple[Array, Array]:
        if seed_chunk is None or seed_chunk >= keys.shape[0]:
            return jax.vmap(one)(keys)
        return jax.lax.map(one, keys, batch_size=seed_chunk)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=P(SEED_AXIS), out_specs=P(SEED_AXIS))
    jitted = jax.jit(sharded, compiler_options=COMPILER_OPTIONS)

    def run(keys: Array) -> tuple[Array, Array]:
        ctx = (
            jax.default_matmul_precision(precision)
            if precision is not None
            else contextlib.nullcontext()
        )
        with ctx:
            return jitted(keys)

    return run


def width_sweep(
    family: ModelFamily,
    widths: Sequence[int],
    parametrization: str,
    optimizer: str = "adam",
    *,
    learning_rate: float,
    steps: int,
    seeds: int,
    seed: int = 0,
    base_width: int | None = None,
    devices: Sequence[Any] | None = None,
    seed_chunk: int | Callable[[int], int | None] | None = None,
    precision: str | None = "highest",
    progress: Callable[..., Any] | None = None,
) -> SweepResult:
    """Train ``family`` at each width under ``parametrization`` and record every layer's
    coordinate sizes (see the module docstring).

    Args:
        family: the :class:`ModelFamily`.
        widths: the widths n, at least two, increasing.
        parametrization: ``"SP"``, ``"NTK"``, ``"muP"`` or a
            :class:`~varprop.laws.Parametrization`.
        optimizer: ``"sgd"`` or ``"adam"`` (optax, chained with the parametrization's
            learning-rate mapping for that optimizer).
        learning_rate: η_0, the learning rate at the base width.
        steps: t, the number of optimizer steps on the seed's batch.
        seeds: how many independent seeds (each its own batch and weights).
        seed: the integer the seeds' keys come from (:func:`seed_keys`).
        base_width: n_0, where every parametrization is SP (default: the first width).
        devices: the devices to shard the seeds over (default: all of ``jax.devices()``,
            as many as divide ``seeds``).
        seed_chunk: vmap at most this many seeds at once on a device (an int or a function
            of the width; None: all of a device's seeds at once).
        precision: the matmul precision the programs are traced under (None: the default).
        progress: ``progress(iterable, total=..., desc=...)`` around the loop over widths.
    """
    widths = tuple(int(n) for n in widths)
    if len(widths) < 2 or any(b <= a for a, b in itertools.pairwise(widths)):
        raise ValueError(f"widths must be at least two increasing ints, got {widths}")
    if steps < 1 or seeds < 1:
        raise ValueError(f"steps and seeds must be >= 1, got {steps}, {seeds}")
    base = widths[0] if base_width is None else int(base_width)
    mesh = seed_mesh(seeds, devices)
    keys = jax.device_put(seed_keys(seed, seeds), NamedSharding(mesh, P(SEED_AXIS)))
    name = parametrization if isinstance(parametrization, str) else parametrization.name
    wrap = progress or (lambda it, **kw: it)
    acts, upds, arrays, seconds = [], [], {}, {}
    for n in wrap(widths, total=len(widths), desc=f"{family.name} {name} {optimizer}"):
        chunk = seed_chunk(n) if callable(seed_chunk) else seed_chunk
        prog = width_program(
            family,
            n,
            parametrization,
            optimizer,
            learning_rate=learning_rate,
            steps=steps,
            mesh=mesh,
            base_width=base,
            seed_chunk=chunk,
            precision=precision,
        )
        t0 = time.perf_counter()
        act, upd = prog(keys)
        act, upd = jax.block_until_ready((act, upd))
        seconds[n] = time.perf_counter() - t0
        arrays[n] = (act, upd)
        got = jax.device_get((act, upd))
        acts.append(np.asarray(got[0], np.float64))
        upds.append(np.asarray(got[1], np.float64))
    return SweepResult(
        family=family.name,
        parametrization=name,
        optimizer=optimizer,
        learning_rate=float(learning_rate),
        base_width=base,
        widths=widths,
        seeds=seeds,
        steps=steps,
        layers=family.layers,
        roles=family.roles,
        activation=np.stack(acts),
        update=np.stack(upds),
        devices=mesh.devices.size,
        arrays=arrays,
        seconds=seconds,
    )

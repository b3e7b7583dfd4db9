"""The probe: one jitted call that runs an MLP forward and backward and returns per-layer
statistics, for S independent seeds at once.

Layer l (1-based) maps its input x (width n_{l-1}) to z = x W + b (width n_l) and, except for
the output layer, to h = phi(z). The backward pass uses the loss ``sum(y * v)`` with a fixed
Gaussian ``v``, so dL/dy has unit second moment.

Gradients of intermediates come from *taps*: an identity function with a custom VJP whose
backward rule returns the statistics of the cotangent as the cotangent of a small zero
"carrier" vector. The gradient with respect to the carriers is then the per-layer gradient
statistics, computed inside the same XLA program, without storing dL/dz anywhere.

Every second moment is returned as a natural log, computed by :mod:`varprop._src.moments`
after scaling by a power of two near ``max|v|``: it stays finite as long as the values do,
even where ``mean(v^2)`` would overflow float32 (about half-way to the layer where v does).
Nothing prints or raises inside jit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from varprop._src.core.network import (
    Network,
    dense,
    forward,
    init_params,
    init_segment,
    jax_activation,
    normalize_at_init,
    scale_kernels,
)
from varprop._src.initializers import Initializer
from varprop._src.moments import (
    _LN2,
    log_mean_square,
    pow2_scale,
    scaled_unit_moments,
    unit_log_moments,
)
from varprop._src.stats import NARROW_UNITS

Array = jax.Array


#: XLA options for the probe's programs. At the default backend level (2), LLVM spends most
#: of the compile time on the probe's many small fusions (threefry draws, summaries); level
#: 1 compiles them several times faster and runs them as fast, since the matmuls are library
#: calls at any level (``scripts/bench_check.py --sections compile`` measures the compile
#: time at this setting).
COMPILER_OPTIONS = {"xla_backend_optimization_level": "1"}


class TapSummary(NamedTuple):
    """The entries of a tap's summary vector (:func:`law_summary`), by name."""

    lm2: Array  # log E[v^2]
    rv: Array  # relative variance across units of the per-unit E[v^2] (ddof 1)
    finite: Array  # 1.0 if every entry is finite
    mean: Array
    lrs2: Array  # log mean over the batch of (sum_i v_bi)^2
    gram: Array
    diag: Array
    meanfrac: Array
    sumfrac: Array
    crossfrac: Array
    zero: Array  # fraction of entries exactly 0


#: Entries of a tap's summary vector, in order.
SUMMARY_FIELDS = TapSummary._fields
_N_SUMMARY = len(SUMMARY_FIELDS)


def _summary(v: Array, ddof: int = 0, center: bool = False) -> Array:
    """``[log m2, rel_unit_var, all_finite, mean]`` of a ``(batch, units)`` array.

    ``log m2``, ``rel_unit_var`` and ``mean`` as :func:`varprop._src.moments.unit_log_moments`
    (``log m2`` is ``-inf`` when v is all zero); ``all_finite`` is 1.0 if every entry is.
    """
    lm2, rv, mean = unit_log_moments(v, ddof=ddof, center=center)
    finite = jnp.all(jnp.isfinite(v)).astype(jnp.float32)
    return jnp.stack([lm2, rv, finite, mean])


def _summary_pair(v: Array) -> tuple[Array, Array]:
    """:func:`_summary` (ddof 1) of ``v`` and of ``v`` centered over the batch, scaled once."""
    u, e = pow2_scale(v)
    finite = jnp.all(jnp.isfinite(v)).astype(jnp.float32)
    centered = u - jnp.mean(u, axis=0, keepdims=True)

    def stats(w: Array) -> Array:
        lm2, rv, mean = scaled_unit_moments(w, e, ddof=1)
        return jnp.stack([lm2, rv, finite, mean])

    return stats(u), stats(centered)


def law_summary(v: Array, narrow: bool, center: bool = False) -> Array:
    r"""The tap summary of a ``(batch, units)`` array ``v`` that feeds a dense layer.

    The fields of :class:`TapSummary`: ``[log m2, rel_unit_var (ddof 1), all_finite, mean,
    log mean_b (sum_i v_bi)^2, gram, diag, meanfrac, sumfrac, crossfrac, zero]``. The last five are what the conditional law of the next
    product ``v W`` needs (``docs/checker_statistics.md``). With :math:`V` the batch,
    :math:`s = V\mathbf 1` its row sums and :math:`\|\cdot\|` Frobenius norms:

    .. math::

        \mathrm{gram} = \frac{\|V^\top V\|^2}{\|V\|^4},\quad
        \mathrm{diag} = \frac{\sum_i (\sum_b v_{bi}^2)^2}{\|V\|^4},\quad
        \mathrm{meanfrac} = \frac{\|V^\top \mathbf 1\|^2}{B\,\|V\|^2},\quad
        \mathrm{sumfrac} = \frac{\|V^\top s\|^2}{\|V\|^2\|s\|^2},\quad
        \mathrm{crossfrac} = \frac{(V^\top s)\cdot(V^\top \mathbf 1)}
        {\|V\|^2\,\|s\|\sqrt{B}}.

    All are scale-free and computed on ``v`` scaled by a power of two, so they stay finite
    while ``v`` does. ``narrow`` is static: when False the last five are NaN (not computed).
    With ``center`` (static) every statistic is of ``v`` minus its batch mean (after the
    scaling; ``mean`` is then 0).
    """
    u, e = pow2_scale(v)
    finite = jnp.all(jnp.isfinite(v)).astype(jnp.float32)
    if center:
        u = u - jnp.mean(u, axis=0, keepdims=True)
    return _law_stats(u, e, finite, narrow)


def law_summaries(v: Array, narrow: bool) -> tuple[Array, Array]:
    """:func:`law_summary` of ``v`` and of ``v`` centered over the batch, scaled once."""
    u, e = pow2_scale(v)
    finite = jnp.all(jnp.isfinite(v)).astype(jnp.float32)
    centered = u - jnp.mean(u, axis=0, keepdims=True)
    return _law_stats(u, e, finite, narrow), _law_stats(centered, e, finite, narrow)


def _law_stats(u: Array, e: Array, finite: Array, narrow: bool) -> Array:
    lm2, rv, mean = scaled_unit_moments(u, e, ddof=1)
    base = jnp.stack([lm2, rv, finite, mean])
    e = e.reshape(()).astype(jnp.float32)
    rows = jnp.sum(u, axis=1)
    lrs2 = jnp.log(jnp.mean(rows * rows)) + 2.0 * _LN2 * e
    zero = jnp.mean((u == 0).astype(jnp.float32))
    if not narrow:
        nan = jnp.full((5,), jnp.nan, jnp.float32)
        return jnp.concatenate([base, lrs2[None], nan, zero[None]])
    B, n = u.shape
    total = jnp.sum(u * u)
    safe = jnp.where(total > 0, total, 1.0)
    gram_m = u @ u.T if B <= n else u.T @ u
    gram = jnp.sum(gram_m * gram_m) / (safe * safe)
    diag = jnp.sum(jnp.square(jnp.sum(u * u, axis=0))) / (safe * safe)
    colsum = jnp.sum(u, axis=0)
    meanfrac = jnp.sum(colsum * colsum) / (B * safe)
    rs2 = jnp.sum(rows * rows)
    proj = rows @ u
    safe_rs2 = jnp.where(rs2 > 0, rs2, 1.0)
    sumfrac = jnp.where(rs2 > 0, jnp.sum(proj * proj) / (safe * safe_rs2), 0.0)
    crossfrac = jnp.where(
        rs2 > 0, jnp.sum(proj * colsum) / (safe * jnp.sqrt(safe_rs2) * jnp.sqrt(B * 1.0)), 0.0
    )
    stats = jnp.stack([lrs2, gram, diag, meanfrac, sumfrac, crossfrac, zero])
    return jnp.concatenate([base, stats])


def _histogram(v: Array, edges: Array | None) -> Array:
    """Counts of ``v``'s values in the bins ``edges`` (float32; empty without edges)."""
    if edges is None:
        return jnp.zeros((0,), jnp.float32)
    return jnp.histogram(v, edges)[0].astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _tap_vjp(v: Array, carrier: Array, edges: Array | None, narrow: bool) -> Array:
    del carrier, edges
    return v


def _tap_fwd(v, carrier, edges, narrow):
    del narrow
    return v, (carrier, edges)


def _tap_bwd(narrow, res, ct):
    carrier, edges = res
    summary = jnp.concatenate([law_summary(ct, narrow), _histogram(ct, edges)])
    # A tap without edges next to taps with them: zero counts fill its carrier.
    summary = jnp.concatenate([summary, jnp.zeros(carrier.shape[0] - summary.shape[0])])
    return ct, summary, None if edges is None else jnp.zeros_like(edges)


_tap_vjp.defvjp(_tap_fwd, _tap_bwd)


def _tap(v: Array, carrier: Array, narrow: bool, edges: Array | None = None) -> Array:
    """Identity on ``v``; its VJP returns the cotangent's :func:`law_summary` (and its
    histogram over ``edges``, when given) as the cotangent of ``carrier`` (``narrow``
    static)."""
    out: Array = _tap_vjp(v, carrier, edges, narrow)  # type: ignore[assignment]
    return out


class ForwardStats(NamedTuple):
    """Per-layer forward statistics (each field has shape ``(L,)`` per seed).

    Second moments are natural logs (``-inf`` for all zeros); ``*_rv`` are relative variances
    across units of the per-unit second moments (ddof 1); ``*_zero`` fractions of values
    that are exactly 0; ``x_gram``, ``x_diag``, ``x_meanfrac``, ``x_sumfrac`` are the
    small-sample law's statistics of the layer's input (:func:`law_summary`, NaN for layers
    at least :data:`NARROW_UNITS` wide).
    """

    x_lm2: Array  # log E[x^2] of the layer's input
    x_rv: Array
    x_lrs2: Array  # log mean over the batch of (sum_i x_i)^2
    x_gram: Array
    x_diag: Array
    x_meanfrac: Array
    x_sumfrac: Array
    x_crossfrac: Array
    x_mean: Array
    xc_lm2: Array  # the same of the batch-centered input x - mean_b x
    xc_lrs2: Array
    xc_gram: Array
    xc_diag: Array
    xc_sumfrac: Array
    z_lm2: Array  # log E[z^2] of the pre-activation
    z_rv: Array  # relative variance across units of per-unit E[z^2]
    z_finite: Array
    z_mean: Array
    z_zero: Array
    zc_lm2: Array  # log E[(z - mean_b z)^2], the batch-centered pre-activation
    zc_rv: Array
    u_lm2: Array  # log E[u^2] of what the activation sees: the normalized z (z without a norm)
    h_lm2: Array  # log E[h^2] after the activation (= z for a linear output layer)
    h_rv: Array
    h_finite: Array
    h_mean: Array
    h_zero: Array
    dphi2: Array  # mean phi'(z)^2 (1 for a linear output layer)
    b_lm2: Array  # log mean b^2 (-inf without bias)
    b_mean: Array  # mean b
    #: ``(L, bins)`` counts of h over the probe's ``edges.h`` (``None`` unless asked for).
    h_hist: Array | None = None


class BackwardStats(NamedTuple):
    """Per-layer backward statistics (each field ``(L,)`` per seed); ``gz_*`` of dL/dz as
    in :class:`ForwardStats`'s ``x_*`` (dL/dz is what the backward product ``W dL/dz``
    contracts), ``gx_*`` of the gradient reaching the layer's input."""

    gz_lm2: Array  # log E[(dL/dz)^2]
    gz_rv: Array
    gz_finite: Array
    gz_lrs2: Array
    gz_gram: Array
    gz_diag: Array
    gz_sumfrac: Array
    gz_zero: Array
    gx_lm2: Array  # log E[(dL/dx)^2] of the layer's input
    gx_rv: Array
    gx_finite: Array
    #: ``(L, bins)`` counts of dL/dz over the probe's ``edges.gz`` (``None`` unless asked).
    gz_hist: Array | None = None


class ProbeStats(NamedTuple):
    forward: ForwardStats
    backward: BackwardStats
    loss: Array
    #: Summary of the output layer's z pooled with ``redraws`` extra draws of its kernel on
    #: the same input (``None`` when no redraws): more units for a narrow output layer.
    #: Shape ``(2, 4)`` per seed: row 0 of z, row 1 of the batch-centered z.
    output_redraw: Array | None = None


class HistogramEdges(NamedTuple):
    """Bin edges (each ``(bins + 1,)``, traced) for the probe's histograms of every
    layer's activation h and gradient dL/dz (see :func:`make_probe`)."""

    h: Array
    gz: Array


def _fields(vec: Array) -> TapSummary:
    return TapSummary(*(vec[..., i] for i in range(_N_SUMMARY)))


def _zero_fraction(v: Array) -> Array:
    return jnp.mean((v == 0).astype(jnp.float32))


def _moments_only(v: Array) -> tuple[TapSummary, TapSummary]:
    """The lean probe's input summary: the four moments, NaN for the law's statistics."""
    base = _summary(v, ddof=1)
    nan = jnp.full((_N_SUMMARY - 4,), jnp.nan, jnp.float32)
    return _fields(jnp.concatenate([base, nan])), _fields(jnp.full((_N_SUMMARY,), jnp.nan))


def _layer(
    net: Network, h, W, b, cz, cx, act, linear: bool, edges: HistogramEdges | None, lean: bool
):
    narrow = min(W.shape) < NARROW_UNITS and not lean  # static
    x = h if lean else _tap(h, cx, False)
    z = dense(x, W, b)
    z = _tap(z, cz, narrow, None if edges is None else edges.gz)
    if linear:
        u, out, dphi2 = z, z, jnp.float32(1.0)
    else:
        u = normalize_at_init(net, z)
        out, dphi = jax.jvp(act, (u,), (jnp.ones_like(z),))
        dphi2 = jnp.mean(jnp.square(dphi.astype(jnp.float32)))
    if lean:
        sx, sxc = _moments_only(x)
        sz = _summary(z, ddof=1)
        szc = jnp.full((4,), jnp.nan, jnp.float32)
    else:
        sx, sxc = (_fields(v) for v in law_summaries(x, narrow))
        sz, szc = _summary_pair(z)
    sh = _summary(out)
    b32 = b.astype(jnp.float32)
    stats = ForwardStats(
        x_lm2=sx.lm2,
        x_rv=sx.rv,
        x_lrs2=sx.lrs2,
        x_gram=sx.gram,
        x_diag=sx.diag,
        x_meanfrac=sx.meanfrac,
        x_sumfrac=sx.sumfrac,
        x_crossfrac=sx.crossfrac,
        x_mean=sx.mean,
        xc_lm2=sxc.lm2,
        xc_lrs2=sxc.lrs2,
        xc_gram=sxc.gram,
        xc_diag=sxc.diag,
        xc_sumfrac=sxc.sumfrac,
        z_lm2=sz[0],
        z_rv=sz[1],
        z_finite=sz[2],
        z_mean=sz[3],
        z_zero=_zero_fraction(z),
        zc_lm2=szc[0],
        zc_rv=szc[1],
        u_lm2=sz[0] if u is z else log_mean_square(u.astype(jnp.float32)),
        h_lm2=sh[0],
        h_rv=sh[1],
        h_finite=sh[2],
        h_mean=sh[3],
        h_zero=_zero_fraction(out),
        dphi2=dphi2,
        b_lm2=log_mean_square(b32),
        b_mean=jnp.mean(b32),
        h_hist=None if edges is None else _histogram(out, edges.h),
    )
    return out, stats


def network_loss(
    net: Network,
    params,
    x: Array,
    v: Array,
    carriers,
    edges: HistogramEdges | None = None,
    lean: bool = False,
):
    """``sum(y * v)`` and the forward statistics; gradients w.r.t. ``carriers`` give the
    backward statistics. ``carriers`` is a list (per segment) of ``(k, 2, N)`` zeros, N the
    length of :data:`SUMMARY_FIELDS` plus the number of histogram bins."""
    act = jax_activation(net.activation)
    h = x
    fs = []
    x_last = None
    for (a, b), p, c in zip(net.segments(), params, carriers, strict=True):
        linear = net.is_linear(b - 1)
        if b == net.depth:
            x_last = h if b - a == 1 else None
        if b - a == 1:
            h, st = _layer(net, h, p["W"][0], p["b"][0], c[0, 0], c[0, 1], act, linear, edges, lean)
            fs.append(jax.tree.map(lambda s: s[None], st))
        else:

            def body(hh, xs, linear=linear):
                W, bb, cc = xs
                return _layer(net, hh, W, bb, cc[0], cc[1], act, linear, edges, lean)

            h, st = jax.lax.scan(body, h, (p["W"], p["b"], c))
            fs.append(st)
    fwd = jax.tree.map(lambda *parts: jnp.concatenate(parts), *fs)
    loss = jnp.sum(h.astype(jnp.float32) * v)
    return loss, (fwd, x_last)


def _zero_carriers(net: Network, bins: int = 0):
    return [jnp.zeros((b - a, 2, _N_SUMMARY + bins), jnp.float32) for a, b in net.segments()]


def _run(
    net: Network, params, x: Array, v: Array, edges: HistogramEdges | None = None, lean=False
) -> tuple[ProbeStats, Array | None]:
    """One forward+backward pass: the statistics, and the output layer's input."""
    bins = 0 if edges is None else edges.gz.shape[0] - 1
    (loss, (fwd, x_last)), g = jax.value_and_grad(
        lambda c: network_loss(net, params, x, v, c, edges, lean), has_aux=True
    )(_zero_carriers(net, bins))
    stats = _stats(fwd, g, loss)
    if lean:  # no tap on the layers' inputs: no statistics of dL/dx
        nan = jnp.full_like(stats.backward.gx_lm2, jnp.nan)
        back = stats.backward._replace(gx_lm2=nan, gx_rv=nan, gx_finite=nan)
        stats = stats._replace(backward=back)
    return stats, x_last


@functools.partial(jax.jit, static_argnames=("net", "lean"))
def probe_params(
    net: Network,
    params,
    x: Array,
    v: Array,
    edges: HistogramEdges | None = None,
    lean: bool = False,
) -> ProbeStats:
    """Statistics of one forward+backward pass with the given weights: one jitted program
    per network and shapes (``net`` and ``lean`` are static). Inside a caller's ``jit`` or
    ``vmap`` it is traced inline."""
    return _run(net, params, x, v, edges, lean)[0]


def _stats(fwd: ForwardStats, g, loss) -> ProbeStats:
    g = jnp.concatenate(g)  # (L, 2, N + bins): [:, 0] is dL/dz, [:, 1] is dL/dx
    gz, gx = _fields(g[:, 0, :_N_SUMMARY]), _fields(g[:, 1, :_N_SUMMARY])
    bwd = BackwardStats(
        gz_lm2=gz.lm2,
        gz_rv=gz.rv,
        gz_finite=gz.finite,
        gz_lrs2=gz.lrs2,
        gz_gram=gz.gram,
        gz_diag=gz.diag,
        gz_sumfrac=gz.sumfrac,
        gz_zero=gz.zero,
        gx_lm2=gx.lm2,
        gx_rv=gx.rv,
        gx_finite=gx.finite,
        gz_hist=g[:, 0, _N_SUMMARY:] if g.shape[-1] > _N_SUMMARY else None,
    )
    return ProbeStats(fwd, bwd, loss)


def draw_batch(
    net: Network,
    kx: Array,
    kv: Array,
    batch: int,
    input_mean: float = 0.0,
    input_std: float = 1.0,
    data: Array | None = None,
    inputs: Callable[[Array], Array] | None = None,
) -> tuple[Array, Array]:
    """The probe's input batch x (``inputs(kx)``, rows drawn from ``data``, or
    ``N(input_mean, input_std^2)``) and the Gaussian ``v`` of its loss ``sum(y * v)``."""
    if inputs is not None:
        x = inputs(kx)
    elif data is None:
        x = input_mean + input_std * jax.random.normal(kx, (batch, net.widths[0]), jnp.float32)
    else:
        idx = jax.random.randint(kx, (batch,), 0, data.shape[0])
        x = jnp.take(data, idx, axis=0).astype(jnp.float32)
    return x, jax.random.normal(kv, (batch, net.widths[-1]), jnp.float32)


def forward_stats(net: Network, params, x: Array, lean: bool = False) -> ForwardStats:
    """The forward statistics alone (no backward pass; not jitted here)."""
    v = jnp.zeros((x.shape[0], net.widths[-1]), jnp.float32)
    return network_loss(net, params, x, v, _zero_carriers(net), lean=lean)[1][0]


def output_redraws(net: Network, target_units: int = 1024) -> int:
    """Extra kernel draws for the output layer so that about ``target_units`` units carry
    its forward test (0 when the layer is already that wide or the input is the data)."""
    if net.depth < 2:
        return 0
    n_out = net.widths[-1]
    return max(0, -(-target_units // n_out) - 1)


def make_probe(
    net: Network,
    batch: int,
    input_mean: float = 0.0,
    input_std: float = 1.0,
    redraws: int | None = None,
    *,
    inputs: Callable[[Array], Array] | None = None,
    lean: bool = False,
):
    """A jitted ``probe(keys, data=None, weight_scales=None, edges=None) -> ProbeStats``
    with a leading seed axis.

    Each seed key draws the weights, the input batch and ``v`` afresh. Inputs are
    ``N(input_mean, input_std^2)``, or rows drawn from ``data`` (an ``(N, n_0)`` array) when
    it is not ``None`` (pass it as an argument so that it is not baked into the program), or
    ``inputs(key)`` (a ``(batch, n_0)`` array) when that function is given.

    ``weight_scales`` (shape ``(L,)``, traced) multiplies layer l's kernel draw by
    ``weight_scales[l]``: one compiled probe serves every scale of the same initializer,
    with the same draws (common random numbers). ``edges``, a :class:`HistogramEdges`
    (traced; its length is fixed at the first call), adds per-layer histograms of h and
    dL/dz to the statistics. A ``lean`` probe keeps only what describes the values
    themselves (the ``z_*``, ``h_*``, ``gz_*`` moments, zero fractions and finiteness,
    ``x_lm2``, dphi2, the bias and the histograms) and leaves the conditional test's
    statistics (of the inputs, the batch-centered values and dL/dx) NaN: a smaller program
    for experiments (a 46-layer tanh probe compiled in 4.0 s instead of 5.4 s, measured
    with both compiled in turn on a loaded machine).

    A narrow output layer has few units, so its forward test is weak, and in deep nets more
    seeds help little (the rows of its input become correlated). ``redraws`` extra kernels
    are drawn from the same initializer and applied to the layer's saved input, which costs
    one small matmul each (``docs/checker_statistics.md``); default :func:`output_redraws`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from varprop._src.core.network import make_network
        >>> from varprop._src.initializers import normal
        >>> net = make_network((32, 32, 32, 32), "relu", normal(1.0))
        >>> probe = make_probe(net, batch=16)
        >>> keys = jax.random.split(jax.random.key(0), 4)
        >>> he = probe(keys, None, jnp.full((3,), (2 / 32) ** 0.5))  # He's Var(w) = 2/n
        >>> lin = probe(keys, None, jnp.full((3,), (1 / 32) ** 0.5))  # same draws, half
        >>> bool(jnp.allclose(he.forward.z_lm2[:, 0] - lin.forward.z_lm2[:, 0], jnp.log(2.0)))
        True
    """
    nl = net.widths[-1]
    k_extra = output_redraws(net) if redraws is None else redraws
    last_init = net.kernel_inits[-1]
    n_segments = len(net.segments())

    def draw_extra(kr):
        return jax.vmap(lambda k: last_init(k, (net.widths[-2], nl)))(jax.random.split(kr, k_extra))

    def one(key, data, drawn, scales, edges):
        kw, kx, kv, kr = jax.random.split(key, 4)
        if drawn is None:
            params = init_params(net, kw)
            ws = draw_extra(kr) if k_extra else None
        else:
            params, ws = drawn
        if scales is not None:
            params = scale_kernels(net, params, scales)
            ws = None if ws is None else ws * scales[-1].astype(ws.dtype)
        x, v = draw_batch(net, kx, kv, batch, input_mean, input_std, data, inputs)
        stats, x_last = _run(net, params, x, v, edges, lean)
        if k_extra == 0 or x_last is None or net.output_activation:
            return stats
        b_last = params[-1]["b"][0]
        zs = jnp.einsum("bi,kio->bko", x_last, ws).reshape(batch, k_extra * nl)
        zs = zs + jnp.tile(b_last, k_extra)[None, :]
        z_real = dense(x_last, params[-1]["W"][0], b_last)
        pooled = jnp.stack(_summary_pair(jnp.concatenate([z_real, zs], axis=1)))
        return stats._replace(output_redraw=pooled)

    if not any(_needs_own_program(k) for k in net.kernel_inits):
        run = jax.jit(
            jax.vmap(one, in_axes=(0, None, None, None, None)),
            compiler_options=COMPILER_OPTIONS,
        )

        def probe(keys, data=None, weight_scales=None, edges=None):
            return run(keys, data, None, weight_scales, edges)

        return probe
    main = jax.jit(
        jax.vmap(one, in_axes=(0, None, 0, None, None)), compiler_options=COMPILER_OPTIONS
    )

    # QR-based draws (orthogonal) get programs of their own: XLA:CPU (jaxlib 0.10.2) was
    # seen to hang, idle, running a vmapped program with more than one batched QR next
    # to other work, while each QR in its own program runs (see tests/test_check.py).
    seg_draws = [
        jax.jit(
            jax.vmap(lambda k, i=i: init_segment(net, i, jax.random.fold_in(k, i))),
            compiler_options=COMPILER_OPTIONS,
        )
        for i in range(n_segments)
    ]
    extra = jax.jit(jax.vmap(draw_extra), compiler_options=COMPILER_OPTIONS) if k_extra else None
    # The four keys of `one` as four arrays: no eager op between the programs.
    split = jax.jit(jax.vmap(lambda k: tuple(jax.random.split(k, 4))))

    def probe_separate(keys, data=None, weight_scales=None, edges=None):
        k_init, _, _, k_extra = split(keys)
        params = [d(k_init) for d in seg_draws]
        ws = extra(k_extra) if extra is not None else None
        return main(keys, data, (params, ws), weight_scales, edges)

    return probe_separate


def _needs_own_program(init: Initializer) -> bool:
    return init.scheme.distribution.is_orthogonal  # a QR per draw


def make_plain_step(net: Network, batch: int):
    """The baseline the probe is benchmarked against: the same weights and inputs, a plain
    jitted forward + backward (gradient w.r.t. the input), no statistics."""
    n0, nl = net.widths[0], net.widths[-1]

    def one(key):
        kw, kx, kv = jax.random.split(key, 3)
        params = init_params(net, kw)
        x = jax.random.normal(kx, (batch, n0), jnp.float32)
        v = jax.random.normal(kv, (batch, nl), jnp.float32)
        return jax.value_and_grad(lambda xx: jnp.sum(forward(net, params, xx) * v))(x)

    return jax.jit(jax.vmap(one))


def estimate_probe_bytes(net: Network, batch: int, seeds: int) -> int:
    """About how many bytes one round of the probe holds at its peak (host-side estimate).

    Per seed: the kernels (float32) and their random bits, 8 bytes per weight; the
    activations kept for the backward pass and the tapped copies, about 24 bytes per
    value of every layer's input and output; the output layer's redraws.
    """
    weights = sum(net.widths[i] * net.widths[i + 1] for i in range(net.depth))
    values = batch * sum(net.widths)
    redraw = output_redraws(net) * net.widths[-2] * net.widths[-1]
    return int(seeds * (8 * (weights + redraw) + 24 * values))


def available_memory_bytes() -> int | None:
    """Memory the probe may use: the device's limit on accelerators, else the host's
    available memory (``/proc/meminfo``'s MemAvailable, or physical pages); ``None`` when
    unknown."""
    try:
        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    except Exception:  # a backend without memory statistics
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None

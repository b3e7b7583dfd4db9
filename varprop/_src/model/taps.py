r"""A layer's op with a kernel of ones, and its transpose, in NumPy (float64).

The propagation (:mod:`varprop._src.model.propagate`) needs, for every dense, conv and
embedding layer y = op(x, W), the sums op(a, 1) of a per-element moment ``a`` of x over the
taps each output reads (E[y²] = σ² op(E[x²], 1) + ...), and the transpose opᵀ(g, 1) for the
gradients. Running the layer's own primitive would compile one XLA program per shape; these
kernels compute the same sums directly:

* **dot_general** (dense): an ``einsum`` of ``a`` with a kernel of ones. An axis along
  which every operand is constant (size 1 in the moment array) stays size 1; a summed axis
  of that kind counts its length.
* **conv_general_dilated**: per spatial axis, ``a`` is dilated (``lhs_dilation``: zeros
  between the entries), padded (negative padding crops) and the kernel's taps, spaced by
  ``rhs_dilation``, are summed at the ``window_strides``: each output position gets
  Σ_taps a[o·s + k·d − lo]. The feature axis: an output channel of group j reads the k =
  C_in/G input channels of group j (``feature_group_count`` G): a map constant over the
  channels is multiplied by k, otherwise summed per group. The transpose scatters the same
  taps back.

Moment arrays are broadcastable to the layer's shapes (size 1 along the axes where they do
not vary); so are the results. ``batch_group_count`` ≠ 1 (a conv's weight gradient, not a
layer) raises ``NotImplementedError``.

Example: a 3x3 SAME conv of a constant map reads 9 taps inside and 4 in a corner:

    >>> import jax, numpy as np
    >>> from varprop._src.model.taps import conv_sums
    >>> dn = jax.lax.conv_dimension_numbers((1, 5, 5, 2), (3, 3, 2, 4), ("NHWC", "HWIO", "NHWC"))
    >>> p = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), lhs_dilation=(1, 1),
    ...          rhs_dilation=(1, 1), dimension_numbers=dn, feature_group_count=1,
    ...          batch_group_count=1)
    >>> y = conv_sums(np.ones((1, 1, 1, 1)), (1, 5, 5, 2), (3, 3, 2, 4), p)
    >>> y.shape, y[0, 0, 0, 0], y[0, 2, 2, 0]
    ((1, 5, 5, 1), np.float64(8.0), np.float64(18.0))
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ----------------------------------------------------------------------------------------
# dot_general
# ----------------------------------------------------------------------------------------


def _einsum_uniform(
    operands: list[tuple[np.ndarray, str]], out: str, sizes: dict[str, int]
) -> np.ndarray:
    """``einsum`` of arrays broadcastable to their full shapes: a letter along which every
    operand has size 1 stays size 1 in the output, or, summed, counts ``sizes[letter]``."""
    factor = 1.0
    for letter in sorted(sizes):
        carriers = [a.shape[s.index(letter)] for a, s in operands if letter in s]
        if letter not in out and all(n == 1 for n in carriers):
            factor *= sizes[letter]
    # Size 1 against a longer axis of another operand broadcasts (einsum's own rule).
    spec = f"{','.join(s for _, s in operands)}->{out}"
    res = np.einsum(spec, *(np.asarray(a, np.float64) for a, _ in operands))
    return res * factor if factor != 1.0 else res


def _dot_letters(x_nd: int, w_nd: int, dims) -> tuple[str, str, str]:
    (ca, cb), (ba, bb) = dims
    letters = iter(_LETTERS)
    sa, sb = [""] * x_nd, [""] * w_nd
    for i, j in zip(ba, bb, strict=True):
        sa[i] = sb[j] = next(letters)
    for i, j in zip(ca, cb, strict=True):
        sa[i] = sb[j] = next(letters)
    for i in range(x_nd):
        sa[i] = sa[i] or next(letters)
    for j in range(w_nd):
        sb[j] = sb[j] or next(letters)
    out = [sa[i] for i in ba]
    out += [sa[i] for i in range(x_nd) if i not in ca and i not in ba]
    out += [sb[j] for j in range(w_nd) if j not in cb and j not in bb]
    return "".join(sa), "".join(sb), "".join(out)


def _dot_operands(shapes, dims, activation: int):
    """The einsum letters of both operands and the output, each letter's length, and the
    kernel of ones (the operand that is not ``activation``) with its letters."""
    s0, s1, out = _dot_letters(len(shapes[0]), len(shapes[1]), dims)
    specs = (s0, s1)
    sizes = {
        c: n for s, shp in zip(specs, shapes, strict=True) for c, n in zip(s, shp, strict=True)
    }
    other = 1 - activation
    ones = (np.ones((1,) * len(shapes[other])), specs[other])
    return specs, out, sizes, ones


def dot_sums(a, shapes: tuple[tuple[int, ...], tuple[int, ...]], dims, activation: int):
    """``dot_general`` of ``a`` (operand ``activation``, broadcastable to its shape) with
    ones of the other operand's shape: the sums over the contracted axes."""
    specs, out, sizes, ones = _dot_operands(shapes, dims, activation)
    return _einsum_uniform([(np.asarray(a), specs[activation]), ones], out, sizes)


def dot_sums_transpose(g, shapes, dims, activation: int):
    """The transpose of :func:`dot_sums`: ``g`` (broadcastable to the output) summed back to
    the activation operand's axes."""
    specs, out, sizes, ones = _dot_operands(shapes, dims, activation)
    return _einsum_uniform([(np.asarray(g), out), ones], specs[activation], sizes)


# ----------------------------------------------------------------------------------------
# conv_general_dilated
# ----------------------------------------------------------------------------------------


def _geometry(x_sp, w_sp, p):
    """Per spatial axis: (input length, dilated+padded length, kernel taps, rhs dilation,
    stride, lhs dilation, pad lo, pad hi, output length)."""
    out = []
    for i, (n, k) in enumerate(zip(x_sp, w_sp, strict=True)):
        ld = p["lhs_dilation"][i]
        rd = p["rhs_dilation"][i]
        s = p["window_strides"][i]
        lo, hi = p["padding"][i]
        full = (n - 1) * ld + 1 + lo + hi
        span = (k - 1) * rd + 1
        o = max(0, (full - span) // s + 1) if full >= span else 0
        out.append((n, full, k, rd, s, ld, lo, hi, o))
    return out


def pad_crop(m: np.ndarray, pads, value: Any = 0) -> np.ndarray:
    """``m`` with ``pads[d] = (lo, hi)`` entries of ``value`` added before and after axis d,
    a negative count cropping that many instead (``lax.pad`` without interior padding).
    Its transpose is ``pad_crop`` with every count negated."""
    m = np.pad(m, [(max(lo, 0), max(hi, 0)) for lo, hi in pads], constant_values=value)
    idx = tuple(slice(max(-lo, 0), m.shape[d] - max(-hi, 0)) for d, (lo, hi) in enumerate(pads))
    return m[idx]


def _on_axis(ndim: int, axis: int, lo: int, hi: int) -> list[tuple[int, int]]:
    pads = [(0, 0)] * ndim
    pads[axis] = (lo, hi)
    return pads


def dilate(m: np.ndarray, axis: int, n: int, factor: int, fill: float = 0.0) -> np.ndarray:
    """``m`` (``n`` entries along ``axis``, or 1 broadcast to them) with ``factor - 1``
    entries of ``fill`` between consecutive ones (``lax``'s lhs/base dilation)."""
    if factor <= 1:
        return m
    shape = list(m.shape)
    shape[axis] = (n - 1) * factor + 1
    d = np.full(shape, fill)
    idx = [slice(None)] * m.ndim
    idx[axis] = slice(None, None, factor)
    d[tuple(idx)] = m
    return d


def _dilate_pad(m: np.ndarray, axis: int, n, ld, lo, hi) -> np.ndarray:
    """``m`` along ``axis``: zeros between entries (``ld``), then padded (negative: cropped)."""
    m = dilate(m, axis, n, ld)
    return pad_crop(m, _on_axis(m.ndim, axis, lo, hi))


def _undilate_unpad(m: np.ndarray, axis: int, n, ld, lo, hi) -> np.ndarray:
    """The transpose of :func:`_dilate_pad`."""
    m = pad_crop(m, _on_axis(m.ndim, axis, -lo, -hi))
    if ld > 1:
        idx = [slice(None)] * m.ndim
        idx[axis] = slice(None, None, ld)
        m = m[tuple(idx)]
    assert m.shape[axis] == n
    return m


def _group_sum(m: np.ndarray, channels: int, groups: int) -> np.ndarray:
    """``m`` (N, C, spatial...) summed within each of ``groups`` groups of the channel axis
    (a constant channel axis, size 1: times the group's size)."""
    if m.shape[1] == 1:
        return m * (channels // groups)
    m = np.broadcast_to(m, (m.shape[0], channels, *m.shape[2:]))
    return m.reshape((m.shape[0], groups, channels // groups, *m.shape[2:])).sum(axis=2)


def _tap_slices(geo):
    """Per kernel tap, the index of the inputs it reads for every output position."""
    for taps in itertools.product(*(range(g[2]) for g in geo)):
        idx = [slice(None), slice(None)]
        for t, (_, _, _, rd, s, _, _, _, o) in zip(taps, geo, strict=True):
            idx.append(slice(t * rd, t * rd + (o - 1) * s + 1, s))
        yield tuple(idx)


def _check_conv(p) -> None:
    if p.get("batch_group_count", 1) != 1:
        raise NotImplementedError("a conv with batch_group_count != 1")


def conv_sums(a, x_shape, w_shape, p) -> np.ndarray:
    """``conv_general_dilated(a, ones(w_shape))`` with the parameters ``p``, ``a``
    broadcastable to ``x_shape``; broadcastable to the output shape."""
    _check_conv(p)
    lhs, rhs, outs = p["dimension_numbers"]
    a = np.asarray(a, np.float64)
    a = np.broadcast_to(a, [x_shape[d] if a.shape[d] > 1 else 1 for d in range(a.ndim)])
    m: np.ndarray = np.transpose(a, lhs)  # (N, C, spatial...)
    groups = p["feature_group_count"]
    c_in, c_out = x_shape[lhs[1]], w_shape[rhs[0]]
    m = _group_sum(m, c_in, groups)
    geo = _geometry([x_shape[d] for d in lhs[2:]], [w_shape[d] for d in rhs[2:]], p)
    for i, (n, _, _, _, _, ld, lo, hi, _) in enumerate(geo):
        if m.shape[2 + i] == 1 and n > 1:
            m = np.broadcast_to(m, (*m.shape[: 2 + i], n, *m.shape[3 + i :]))
        m = _dilate_pad(m, 2 + i, n, ld, lo, hi)
    y: np.ndarray = np.zeros((*m.shape[:2], *(g[8] for g in geo)))
    for idx in _tap_slices(geo):
        y += m[idx]
    if y.shape[1] > 1:  # per group: each of its c_out / G output channels reads it
        y = np.repeat(y, c_out // groups, axis=1)
    return np.transpose(y, np.argsort(outs))


def conv_sums_transpose(g, x_shape, w_shape, y_shape, p) -> np.ndarray:
    """The transpose of :func:`conv_sums`: ``g`` (broadcastable to the output) scattered
    back over the taps; broadcastable to ``x_shape``."""
    _check_conv(p)
    lhs, rhs, outs = p["dimension_numbers"]
    g = np.asarray(g, np.float64)
    g = np.broadcast_to(g, [y_shape[d] if g.shape[d] > 1 else 1 for d in range(g.ndim)])
    m: np.ndarray = np.transpose(g, outs)  # (N, C_out, spatial...)
    groups = p["feature_group_count"]
    c_in, c_out = x_shape[lhs[1]], w_shape[rhs[0]]
    m = _group_sum(m, c_out, groups)
    geo = _geometry([x_shape[d] for d in lhs[2:]], [w_shape[d] for d in rhs[2:]], p)
    o_shape = [g_[8] for g_ in geo]
    m = np.broadcast_to(m, (*m.shape[:2], *o_shape))
    xp: np.ndarray = np.zeros((*m.shape[:2], *(g_[1] for g_ in geo)))
    for idx in _tap_slices(geo):
        xp[idx] += m
    for i, (n, _, _, _, _, ld, lo, hi, _) in enumerate(geo):
        xp = _undilate_unpad(xp, 2 + i, n, ld, lo, hi)
    if xp.shape[1] > 1:
        xp = np.repeat(xp, c_in // groups, axis=1)
    return np.transpose(xp, np.argsort(lhs))


def layer_sums(site: Any, a) -> np.ndarray:
    """op(a, 1) of a dense or conv :class:`~varprop._src.model.trace.LayerSite`."""
    if site.kind == "conv":
        return conv_sums(a, site.x_shape, site.w_shape, site.params)
    shapes = (site.x_shape, site.w_shape) if site.activation == 0 else (site.w_shape, site.x_shape)
    return dot_sums(a, shapes, site.params["dimension_numbers"], site.activation)


def layer_sums_transpose(site: Any, g) -> np.ndarray:
    """opᵀ(g, 1) of a dense or conv layer: broadcastable to its input's shape."""
    if site.kind == "conv":
        return conv_sums_transpose(g, site.x_shape, site.w_shape, site.y_shape, site.params)
    shapes = (site.x_shape, site.w_shape) if site.activation == 0 else (site.w_shape, site.x_shape)
    return dot_sums_transpose(g, shapes, site.params["dimension_numbers"], site.activation)

r"""The law of a convolution as real models use it: borders, strides, dilation, groups.

A convolution with i.i.d. zero-mean weights of variance Var(w) maps an input x (spatial
positions i, ``c_in`` channels) to

.. math::

    E_W[z_{o}^2] = \mathrm{Var}(w)\,\frac{c_{in}}{G} \sum_{t \in T(o)} E_c[x_{i(o, t)}^2],

where T(o) are the kernel taps of output position o that fall inside the input (the others
read the zero padding) and G the number of groups. The dense law
:math:`n\,\mathrm{Var}(w)\,E[x^2]` with :math:`n = c_{in} k_h k_w / G` holds only where every
tap is valid; a SAME convolution loses taps at the borders (3x3 on a 7x7 map: a mean
fraction (19/21)^2 = 0.819 of them). Backward, the gradient at input position i collects the
(output, tap) pairs that read it, :math:`E_W[(\partial L/\partial x_i)^2] = \mathrm{Var}(w)\,
\frac{c_{out}}{G} \sum_{(o, t) \to i} E[(\partial L/\partial z_o)^2]`: about
:math:`k_h k_w c_{out} / (s_h s_w G)` pairs, not the ``fan_out`` :math:`k_h k_w c_{out}` that
initializers assume, for strides s.

Everything here is index arithmetic on the spatial grid (NumPy, no JAX); the padding rule
is XLA's (``"SAME"``: total padding ``max((ceil(n/s) - 1) s + (k - 1) d + 1 - n, 0)``, the
smaller half before).

Example:
    >>> g = ConvGeometry.make((7, 7), (3, 3), in_channels=16, out_channels=32)
    >>> round(g.border_factor, 4), g.fan_in                  # (19/21)^2
    (0.8186, 144)
    >>> s = ConvGeometry.make((8, 8), (3, 3), 16, 32, strides=2)
    >>> s.output_shape, s.backward_fan    # (11/8)^2 * 32: not 3*3*32 = 288 (4x too many)
    ((4, 4), 60.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]


def _per_dim(value: int | Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    vals = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(vals) != ndim or any(isinstance(v, bool) or int(v) != v or v < 1 for v in vals):
        raise ValueError(f"{what} must be {ndim} whole number(s) >= 1, got {value!r}")
    return tuple(int(v) for v in vals)


def _pads(padding: Padding, n, k, s, d) -> tuple[tuple[int, int], ...]:
    ndim = len(n)
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0),) * ndim
        if padding.upper() != "SAME":
            raise ValueError(f"padding must be 'SAME', 'VALID' or explicit, got {padding!r}")
        out = []
        for ni, ki, si, di in zip(n, k, s, d, strict=True):
            total = max((math.ceil(ni / si) - 1) * si + (ki - 1) * di + 1 - ni, 0)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(padding, int):
        return ((padding, padding),) * ndim
    items = list(padding)
    if len(items) != ndim:
        raise ValueError(f"padding needs {ndim} entries, got {padding!r}")
    return tuple((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in items)


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's spatial geometry and channels (see the module docstring)."""

    input_shape: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int = 1

    @classmethod
    def make(
        cls,
        input_shape: Sequence[int],
        kernel: Sequence[int],
        in_channels: int,
        out_channels: int,
        *,
        strides: int | Sequence[int] = 1,
        padding: Padding = "SAME",
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
    ) -> ConvGeometry:
        """Validate and build; ``padding`` as in ``jax.lax.conv_general_dilated``."""
        n = _per_dim(tuple(input_shape), len(input_shape), "input_shape")
        k = _per_dim(tuple(kernel), len(n), "kernel")
        s = _per_dim(strides, len(n), "strides")
        d = _per_dim(dilation, len(n), "dilation")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        return cls(n, k, s, _pads(padding, n, k, s, d), d, in_channels, out_channels, groups)

    def _taps_1d(self, dim: int) -> np.ndarray:
        """``(outputs, taps)`` input index of each tap of each output along ``dim`` (-1 when
        the tap reads the padding)."""
        n, k, s, d = self.input_shape[dim], self.kernel[dim], self.strides[dim], self.dilation[dim]
        lo, hi = self.padding[dim]
        outputs = (n + lo + hi - (k - 1) * d - 1) // s + 1
        idx = np.arange(max(outputs, 0))[:, None] * s + np.arange(k)[None, :] * d - lo
        return np.where((idx >= 0) & (idx < n), idx, -1)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self._taps_1d(i).shape[0] for i in range(len(self.input_shape)))

    @property
    def fan_in(self) -> int:
        """What fan-in initializers divide by: ``c_in / G`` times the kernel's taps."""
        return self.in_channels // self.groups * math.prod(self.kernel)

    def valid_taps(self) -> np.ndarray:
        """Per output position, how many of the kernel's taps fall inside the input."""
        counts = [(self._taps_1d(i) >= 0).sum(axis=1) for i in range(len(self.input_shape))]
        return _outer(counts)

    def reads(self) -> np.ndarray:
        """Per input position, how many (output position, tap) pairs read it."""
        counts = []
        for i, n in enumerate(self.input_shape):
            taps = self._taps_1d(i)
            counts.append(np.bincount(taps[taps >= 0], minlength=n))
        return _outer(counts)

    @property
    def border_factor(self) -> float:
        """The mean fraction of valid taps over the output positions (1 for VALID)."""
        return float(np.mean(self.valid_taps()) / math.prod(self.kernel))

    @property
    def backward_fan(self) -> float:
        """The mean over input positions of ``c_out / G`` times the pairs that read it: the
        fan the backward law really has (``kernel taps x c_out / G`` only for stride 1 and
        no border)."""
        return float(np.mean(self.reads()) * self.out_channels / self.groups)

    def forward_second_moment(self, x_m2: np.ndarray, weight_variance: float) -> np.ndarray:
        """E_W[z^2] per output position given E_c[x^2] per input position (the law)."""
        x_m2 = np.asarray(x_m2, np.float64)
        if x_m2.shape != self.input_shape:
            raise ValueError(f"x_m2 has shape {x_m2.shape}, the input {self.input_shape}")
        total = np.zeros(self.output_shape)
        taps = [self._taps_1d(i) for i in range(len(self.input_shape))]
        padded = np.concatenate([x_m2.ravel(), [0.0]])  # index -1 reads 0
        for offsets in np.ndindex(*self.kernel):
            index = np.zeros(self.output_shape, np.int64)
            valid = np.ones(self.output_shape, bool)
            for dim, t in enumerate(taps):
                col = t[:, offsets[dim]]
                shape = [1] * len(taps)
                shape[dim] = len(col)
                index = index * self.input_shape[dim] + np.maximum(col, 0).reshape(shape)
                valid = valid & (col >= 0).reshape(shape)
            total += np.where(valid, padded[index], 0.0)
        return weight_variance * self.in_channels / self.groups * total


def _outer(counts: list[np.ndarray]) -> np.ndarray:
    out = np.asarray(counts[0], np.float64)
    for c in counts[1:]:
        out = np.multiply.outer(out, np.asarray(c, np.float64))
    return out

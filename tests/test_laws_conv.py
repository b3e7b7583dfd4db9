"""The convolution law's geometry against XLA's own convolution (an independent
implementation of the same padding, stride and dilation rules) and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varprop._src.laws.conv import ConvGeometry

CASES = [
    ((28, 28), (3, 3), 1, "SAME", 1),
    ((7, 7), (3, 3), 1, "SAME", 1),
    ((8, 8), (7, 7), 1, "SAME", 1),
    ((9, 9), (3, 3), 2, "SAME", 1),
    ((10, 10), (3, 3), 2, "SAME", 1),
    ((9, 11), (3, 5), (2, 3), "VALID", 1),
    ((12, 12), (3, 3), 1, "SAME", 2),
    ((6, 6), (3, 3), 1, ((2, 0), (1, 1)), 1),
    ((16,), (5,), 2, "SAME", 1),
]


def _conv(x, k, strides, padding, dilation):
    """XLA's convolution of a one-channel map with a one-channel kernel."""
    nd = x.ndim
    s = (strides,) * nd if isinstance(strides, int) else strides
    d = (dilation,) * nd if isinstance(dilation, int) else (dilation,)
    return jax.lax.conv_general_dilated(x[None, None], k[None, None], s, padding, rhs_dilation=d)[
        0, 0
    ]


@pytest.mark.parametrize(("n", "k", "s", "p", "d"), CASES)
def test_forward_law_matches_xla_given_a_nonuniform_input(n, k, s, p, d):
    g = ConvGeometry.make(n, k, 4, 8, strides=s, padding=p, dilation=d)
    m2 = np.asarray(jax.random.uniform(jax.random.key(0), n, minval=0.5, maxval=3.0))
    ref = _conv(jnp.asarray(m2, jnp.float32), jnp.ones(k, jnp.float32), s, p, d)
    assert g.output_shape == ref.shape
    # Sum of E[x^2] over the valid taps, times Var(w) c_in: here Var(w) = 0.5, c_in = 4.
    np.testing.assert_allclose(g.forward_second_moment(m2, 0.5), 2.0 * np.asarray(ref), 1e-5)
    np.testing.assert_array_equal(
        g.valid_taps(), np.asarray(_conv(jnp.ones(n), jnp.ones(k), s, p, d))
    )


@pytest.mark.parametrize(("n", "k", "s", "p", "d"), CASES)
def test_backward_reads_match_the_transpose_of_xla(n, k, s, p, d):
    g = ConvGeometry.make(n, k, 4, 8, strides=s, padding=p, dilation=d)
    f = lambda x: _conv(x, jnp.ones(k, jnp.float32), s, p, d)  # noqa: E731
    out, vjp = jax.vjp(f, jnp.ones(n, jnp.float32))
    (reads,) = vjp(jnp.ones_like(out))
    np.testing.assert_array_equal(g.reads(), np.asarray(reads))


@pytest.mark.parametrize(("n", "expected"), [(28, (82 / 84) ** 2), (14, (40 / 42) ** 2),
                                              (7, (19 / 21) ** 2), (4, (10 / 12) ** 2)])  # fmt: skip
def test_same_3x3_border_factor_closed_form(n, expected):
    # Per dimension the two border outputs lose one tap each: (3n - 2) / (3n).
    assert ConvGeometry.make((n, n), (3, 3), 1, 1).border_factor == pytest.approx(expected)


def test_strides_and_groups_change_the_backward_fan_not_the_fan_in():
    plain = ConvGeometry.make((8, 8), (3, 3), 32, 64, padding="VALID")
    strided = ConvGeometry.make((8, 8), (3, 3), 32, 64, strides=2, padding="SAME")
    grouped = ConvGeometry.make((8, 8), (3, 3), 32, 64, groups=4)
    assert plain.fan_in == strided.fan_in == 288 and grouped.fan_in == 72
    # Per dimension the 4 outputs read inputs 2o..2o+2: 11 reads of 8 inputs (the last tap of
    # the last output reads the padding), so (11/8)^2 per position, not 9/4 and not 9.
    assert strided.backward_fan == pytest.approx((11 / 8) ** 2 * 64)
    assert grouped.backward_fan == pytest.approx(
        64 / 4 * np.mean(ConvGeometry.make((8, 8), (3, 3), 1, 1).reads())
    )


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError, match="groups=3 must divide"):
        ConvGeometry.make((8, 8), (3, 3), 32, 64, groups=3)
    with pytest.raises(ValueError, match="padding must be"):
        ConvGeometry.make((8, 8), (3, 3), 1, 1, padding="FULL")
    with pytest.raises(ValueError, match="kernel must be 2 whole number"):
        ConvGeometry.make((8, 8), (3, 0), 1, 1)

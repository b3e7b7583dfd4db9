r"""Activation moments at extreme q (1e-300 .. 1e300, and q = 0), against independent references.

References: mpmath integrals at 30 digits of hand-written phi (not the code's lambdified
SymPy), and large-q asymptotic forms derived here. For z ~ N(0, q) and h integrable,

    E[h(z)] = (2 pi q)^(-1/2) \int h(z) exp(-z^2 / (2q)) dz
            = (2 pi q)^(-1/2) [\int h - (1/(2q)) \int z^2 h + O(q^-2)],

so with tanh'^2 = sech^4 (\int sech^4 = 4/3) and tanh^2 - 1 = -sech^2 (\int sech^2 = 2):
E[tanh'(z)^2] = (4/3) / sqrt(2 pi q) + O(q^-3/2) (that is (2/3) sqrt(2/(pi q)), half the
(4/3) sqrt(2/(pi q)) of the issue text), E[tanh(z)^2] = 1 - sqrt(2/(pi q)) + O(q^-3/2).
For the sigmoid, \int sigmoid'^2 = \int s^2 (1-s)^2 = 1/6 and \int (sigmoid^2 - 1{z>0}) = -1:
E[sigmoid'(z)^2] = (1/6) / sqrt(2 pi q), E[sigmoid(z)^2] = 1/2 - 1/sqrt(2 pi q).
"""

import itertools
import math

import mpmath
import pytest
import sympy as sp

from varprop._src.laws import activation_moments as AM
from varprop._src.laws import activations as A

mp = mpmath


def _sig(z):
    return 1 / (1 + mp.exp(-z))


# Hand-written (phi, phi') in mpmath.
REF = {
    "tanh": (mp.tanh, lambda z: 1 / mp.cosh(z) ** 2),
    "sigmoid": (_sig, lambda z: _sig(z) * (1 - _sig(z))),
    "silu": (lambda z: z * _sig(z), lambda z: _sig(z) * (1 + z * (1 - _sig(z)))),
    "softplus": (lambda z: mp.log1p(mp.exp(z)) if z < 30 else z + mp.log1p(mp.exp(-z)), _sig),
    # mpmath's ncdf overflows for |z| > 1e100; there Phi(z) is 0 or 1 to any precision.
    "gelu": (
        lambda z: z * mp.ncdf(z) if abs(z) < 100 else max(z, 0),
        lambda z: mp.ncdf(z) + z * mp.npdf(z) if abs(z) < 100 else (1 if z > 0 else 0),
    ),
    "erf": (mp.erf, lambda z: 2 / mp.sqrt(mp.pi) * mp.exp(-(z**2))),
}


def _mp_moments(phi, dphi, q):
    """E[phi], E[phi^2], E[phi'^2] for z ~ N(0, q) by mpmath.quad in t = z / sqrt(q).

    Split at the Gaussian's own scale (t = 0, +-1, +-4, +-12) and at phi's features
    z = +-1, +-4, +-16, +-60 (t = z / sqrt(q)) when those lie inside |t| < 40.
    """
    with mp.workdps(30):
        q = mp.mpf(q)
        rq = mp.sqrt(q)
        pts = {mp.mpf(0)}
        for c in (1, 4, 12):
            pts |= {mp.mpf(c), mp.mpf(-c)}
        for c in (1, 4, 16, 60):
            if c / rq < 40:
                pts |= {c / rq, -c / rq}
        edges = [-mp.inf, *sorted(pts), mp.inf]
        out = []
        for h in (phi, lambda z: phi(z) ** 2, lambda z: dphi(z) ** 2):
            total = mp.mpf(0)
            for a, b in itertools.pairwise(edges):
                total += mp.quad(lambda t, h=h: h(rq * t) * mp.exp(-(t**2) / 2), [a, b])
            out.append(total / mp.sqrt(2 * mp.pi))
        return [float(v) for v in out]


QS = [1e-300, 1e-30, 1e-8, 1e4, 1e8, 1e12, 1e30, 1e300]


@pytest.mark.parametrize("name", list(REF))
@pytest.mark.parametrize("q", QS)
def test_moments_against_mpmath(name, q):
    m = AM.activation_moments(name, q)
    ref = _mp_moments(*REF[name], q)
    got = [m.mean, m.second_moment, m.grad_second_moment]
    # The mean may be 0 by symmetry: judge it on the scale of sqrt(E[phi^2]).
    assert got[0] == pytest.approx(ref[0], rel=1e-9, abs=1e-12 * math.sqrt(ref[1]))
    assert got[1] == pytest.approx(ref[1], rel=1e-9)
    assert got[2] == pytest.approx(ref[2], rel=1e-9)


@pytest.mark.parametrize("q", [1e8, 1e12, 1e30, 1e300])
def test_tanh_large_q_asymptotics(q):
    m = AM.activation_moments("tanh", q)
    lead = (4 / 3) / math.sqrt(2 * math.pi * q)
    assert m.grad_second_moment == pytest.approx(lead, rel=1e-6)
    assert m.grad_second_moment > 0
    if q <= 1e12:  # 1 - E[tanh^2] still has digits in float64
        assert 1 - m.second_moment == pytest.approx(math.sqrt(2 / (math.pi * q)), rel=1e-4)
    assert m.second_moment <= 1.0


@pytest.mark.parametrize("q", [1e8, 1e12, 1e300])
def test_sigmoid_large_q_asymptotics(q):
    m = AM.activation_moments("sigmoid", q)
    assert m.grad_second_moment == pytest.approx((1 / 6) / math.sqrt(2 * math.pi * q), rel=1e-6)
    if q <= 1e12:
        assert 0.5 - m.second_moment == pytest.approx(1 / math.sqrt(2 * math.pi * q), rel=1e-4)
    assert m.mean == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # (phi(0), phi(0)^2, mean of the one-sided phi'(0)^2), written by hand.
        ("tanh", (0.0, 0.0, 1.0)),
        ("sigmoid", (0.5, 0.25, 0.0625)),
        ("silu", (0.0, 0.0, 0.25)),
        ("softplus", (math.log(2), math.log(2) ** 2, 0.25)),
        ("gelu", (0.0, 0.0, 0.25)),
        ("relu", (0.0, 0.0, 0.5)),
        ("leaky_relu:negative_slope=0.2", (0.0, 0.0, (1 + 0.04) / 2)),
        ("abs", (0.0, 0.0, 1.0)),
        ("elu", (0.0, 0.0, 1.0)),
        ("linear", (0.0, 0.0, 1.0)),
        ("erf", (0.0, 0.0, 4 / math.pi)),
    ],
)
def test_q_zero_is_the_limit(name, expected):
    m = AM.activation_moments(name, 0.0)
    got = (m.mean, m.second_moment, m.grad_second_moment)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-300)
    # ... and the limit is continuous: q = 1e-300 gives the same numbers.
    tiny = AM.activation_moments(name, 1e-300)
    assert (tiny.mean, tiny.second_moment, tiny.grad_second_moment) == pytest.approx(
        expected, rel=1e-9, abs=1e-140
    )


def test_silu_small_q_mean_has_its_digits():
    # silu(z) = z/2 + z^2/4 + O(z^4): E[silu(z)] = q/4 - q^2/16 ... (hand Taylor series).
    for q in (1e-30, 1e-300):
        assert AM.activation_moments("silu", q).mean == pytest.approx(q / 4, rel=1e-12)


@pytest.fixture
def registry_cleanup():
    names: list[str] = []
    yield names
    for n in names:
        A._registry.pop(n, None)
    A._make.cache_clear()


def test_user_activation_at_extremes(registry_cleanup):
    registry_cleanup.append("test_mish_x")
    A.register_activation("test_mish_x", lambda x: x * sp.tanh(sp.log(1 + sp.exp(x))))

    def mish(z):
        return z * mp.tanh(mp.log1p(mp.exp(z)) if z < 30 else z + mp.log1p(mp.exp(-z)))

    def dmish(z):
        return mp.diff(mish, z)

    for q in (1e-30, 1e8, 1e30):
        m = AM.activation_moments("test_mish_x", q)
        ref = _mp_moments(mish, dmish, q)
        assert m.second_moment == pytest.approx(ref[1], rel=1e-9)
        assert m.grad_second_moment == pytest.approx(ref[2], rel=1e-8)
        assert m.mean == pytest.approx(ref[0], rel=1e-9)

"""Activation moments for z ~ N(0, q): closed forms vs quadrature vs Monte Carlo vs the books.

Reference values here come from textbook Gaussian integrals or the papers, and reference
functions are written with NumPy/SciPy independently of the SymPy expressions under test.
"""

import ast
import math
import pathlib

import numpy as np
import pytest
import scipy.integrate
import scipy.special as ss
import sympy as sp

from varprop._src.laws import activation_gains as G
from varprop._src.laws import activation_moments as AM
from varprop._src.laws import activations as A
from varprop._src.laws import gaussian_integrals as GI
from varprop._src.laws import symbols as S

# -- independent reference implementations (NumPy/SciPy, written from the definitions) --

SELU_L = 1.0507009873554804934193349852946  # Klambauer et al. 2017
SELU_A = 1.6732632423543772848170429916717


def _elu(z, a):
    return np.where(z > 0, z, a * np.expm1(np.minimum(z, 0.0)))


def _elu_grad(z, a):
    return np.where(z > 0, 1.0, a * np.exp(np.minimum(z, 0.0)))


def _npdf(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _mish(z):
    return z * np.tanh(np.logaddexp(0.0, z))


def _mish_grad(z):
    sp_ = np.logaddexp(0.0, z)
    return np.tanh(sp_) + z * (1 - np.tanh(sp_) ** 2) * ss.expit(z)


REF = {
    "linear": (lambda z: z, lambda z: np.ones_like(z)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float)),
    "leaky_relu": (
        lambda z: np.where(z > 0, z, 0.01 * z),
        lambda z: np.where(z > 0, 1.0, 0.01),
    ),
    "leaky_relu:negative_slope=0.2": (
        lambda z: np.where(z > 0, z, 0.2 * z),
        lambda z: np.where(z > 0, 1.0, 0.2),
    ),
    "abs": (np.abs, np.sign),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "sigmoid": (ss.expit, lambda z: ss.expit(z) * ss.expit(-z)),
    "erf": (ss.erf, lambda z: 2 / math.sqrt(math.pi) * np.exp(-z * z)),
    "gelu": (lambda z: z * ss.ndtr(z), lambda z: ss.ndtr(z) + z * _npdf(z)),
    "silu": (lambda z: z * ss.expit(z), lambda z: ss.expit(z) * (1 + z * ss.expit(-z))),
    "selu": (lambda z: SELU_L * _elu(z, SELU_A), lambda z: SELU_L * _elu_grad(z, SELU_A)),
    "elu": (lambda z: _elu(z, 1.0), lambda z: _elu_grad(z, 1.0)),
    "elu:alpha=0.5": (lambda z: _elu(z, 0.5), lambda z: _elu_grad(z, 0.5)),
    "softplus": (lambda z: np.logaddexp(0.0, z), ss.expit),
}

CLOSED = [
    "linear",
    "relu",
    "leaky_relu",
    "leaky_relu:negative_slope=0.2",
    "abs",
    "erf",
    "gelu",
    "selu",
    "elu",
    "elu:alpha=0.5",
]
QUADRATURE_ONLY = ["tanh", "sigmoid", "silu", "softplus"]


def _triple(m):
    return np.array([m.mean, m.second_moment, m.grad_second_moment])


def _ref_quad(name, q):
    """E[phi], E[phi^2], E[phi'^2] by scipy quad on the reference functions (split at 0)."""
    f, g = REF[name]
    rq = math.sqrt(q)
    out = []
    for h in (f, lambda z: f(z) ** 2, lambda z: g(z) ** 2):
        tot = 0.0
        for a, b in ((-np.inf, 0.0), (0.0, np.inf)):
            tot += scipy.integrate.quad(
                lambda t, h=h: float(h(np.array(rq * t))) * _npdf(t),
                a,
                b,
                epsabs=0.0,
                epsrel=1e-12,
                limit=200,
            )[0]
        out.append(tot)
    return np.array(out)


# -- closed form vs quadrature -------------------------------------------------------------


@pytest.mark.parametrize("name", CLOSED)
@pytest.mark.parametrize("q", [0.25, 1.0, 4.0])
def test_closed_form_matches_quadrature(name, q):
    closed = AM.activation_moments(name, q, method="closed_form")
    quad = AM.activation_moments(name, q, method="quadrature")
    assert closed.method == "closed_form" and quad.method == "quadrature"
    c, n = _triple(closed), _triple(quad)
    assert np.all(np.abs(c - n) <= 1e-8 * np.maximum(1.0, np.abs(n))), (c, n)


@pytest.mark.parametrize("name", ["erf", "gelu"])
@pytest.mark.parametrize("q", [0.01, 0.1, 0.5, 1.0, 1.5, 2.0, 10.0, 100.0, 1e4])
def test_smooth_quadrature_over_scales(name, q):
    """Gauss–Hermite (small q) or quad (large q) agree with the closed form from 0.01 to 1e4."""
    c = _triple(AM.activation_moments(name, q, method="closed_form"))
    n = np.array(AM.quadrature_moments(name, q))
    assert np.all(np.abs(c - n) <= 1e-8 * np.maximum(1.0, np.abs(n))), (c, n)


@pytest.mark.parametrize("name", QUADRATURE_ONLY)
@pytest.mark.parametrize("q", [0.01, 1.0, 3.0, 100.0])
def test_quadrature_matches_independent_quad(name, q):
    m = AM.activation_moments(name, q)
    assert m.method == "quadrature" and m.mean_expr is None
    ref = _ref_quad(name, q)
    assert np.all(np.abs(_triple(m) - ref) <= 1e-8 * np.maximum(1.0, np.abs(ref))), (m, ref)


@pytest.mark.parametrize("name", ["relu", "selu", "elu", "leaky_relu"])
@pytest.mark.parametrize("q", [1e-10, 1e3])
def test_closed_form_extreme_q(name, q):
    """Cancellation at small q and exp(2q) erfc(...) at large q are evaluated accurately."""
    c = _triple(AM.activation_moments(name, q))
    ref = _ref_quad(name, q)
    scale = np.array([math.sqrt(ref[1]), ref[1], ref[2]])
    assert np.all(np.abs(c - ref) <= 1e-9 * scale), (c, ref)


# -- Monte Carlo -----------------------------------------------------------------------------

N_MC = 2_000_000


@pytest.fixture(scope="module")
def normal_draws():
    return np.random.default_rng(20240607).standard_normal(N_MC)


def _mc_check(pred, f, g, z):
    samples = (f(z), f(z) ** 2, g(z) ** 2)
    for p, s in zip(pred, samples, strict=True):
        est, se = s.mean(), s.std() / math.sqrt(z.size)
        assert abs(p - est) <= 5 * se + 1e-12, (p, est, se)


@pytest.mark.parametrize("name", CLOSED + QUADRATURE_ONLY)
@pytest.mark.parametrize("q", [0.5, 2.0])
def test_moments_match_monte_carlo(name, q, normal_draws):
    z = math.sqrt(q) * normal_draws
    f, g = REF[name]
    _mc_check(_triple(AM.activation_moments(name, q)), f, g, z)


# -- textbook values -------------------------------------------------------------------------

QS = [0.1, 0.25, 1.0, 4.0, 30.0]


@pytest.mark.parametrize("q", QS)
def test_relu_textbook(q):
    m = AM.activation_moments("relu", q)
    assert m.second_moment == pytest.approx(q / 2, rel=1e-14)
    assert m.grad_second_moment == pytest.approx(0.5, rel=1e-14)
    assert m.mean == pytest.approx(math.sqrt(q / (2 * math.pi)), rel=1e-14)
    assert m.variance == pytest.approx(q / 2 - q / (2 * math.pi), rel=1e-13)


@pytest.mark.parametrize("q", QS)
def test_abs_textbook(q):
    m = AM.activation_moments("abs", q)
    assert m.second_moment == pytest.approx(q, rel=1e-14)
    assert m.grad_second_moment == pytest.approx(1.0, rel=1e-14)
    assert m.mean == pytest.approx(math.sqrt(2 * q / math.pi), rel=1e-14)


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("a", [0.01, 0.2, 0.5])
def test_leaky_textbook(q, a):
    m = AM.activation_moments(A.get_activation("leaky_relu", negative_slope=a), q)
    assert m.second_moment == pytest.approx((1 + a * a) * q / 2, rel=1e-14)
    assert m.grad_second_moment == pytest.approx((1 + a * a) / 2, rel=1e-14)
    assert m.mean == pytest.approx((1 - a) * math.sqrt(q / (2 * math.pi)), rel=1e-14)


@pytest.mark.parametrize("q", QS)
def test_erf_textbook(q):
    """Williams 1996: E[erf(z)^2] = (2/pi) asin(2q/(1+2q)); E[erf'(z)^2] = 4/(pi sqrt(1+4q))."""
    m = AM.activation_moments("erf", q)
    assert m.mean == 0
    assert m.second_moment == pytest.approx(2 / math.pi * math.asin(2 * q / (1 + 2 * q)), rel=1e-13)
    assert m.grad_second_moment == pytest.approx(4 / (math.pi * math.sqrt(1 + 4 * q)), rel=1e-13)


@pytest.mark.parametrize("q", QS)
def test_gelu_mean_textbook(q):
    m = AM.activation_moments("gelu", q)
    assert m.mean == pytest.approx(q / math.sqrt(2 * math.pi * (1 + q)), rel=1e-13)


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_elu_mean_textbook(q, alpha):
    """E[e^{z}; z < 0] = e^{q/2} Phi(-sqrt(q)) (lognormal partial expectation)."""
    m = AM.activation_moments(A.get_activation("elu", alpha=alpha), q)
    neg = math.exp(q / 2) * ss.ndtr(-math.sqrt(q)) - 0.5
    assert m.mean == pytest.approx(math.sqrt(q / (2 * math.pi)) + alpha * neg, rel=1e-12)
    g2 = 0.5 + alpha**2 * math.exp(2 * q) * ss.ndtr(-2 * math.sqrt(q))
    assert m.grad_second_moment == pytest.approx(g2, rel=1e-12)


def test_selu_fixed_point():
    """Klambauer et al. 2017: for z ~ N(0, 1), SELU has mean 0 and second moment 1."""
    m = AM.activation_moments("selu", 1.0)
    assert abs(m.mean) < 1e-14
    assert m.second_moment == pytest.approx(1.0, abs=1e-14)
    assert G.gain("selu") == pytest.approx(1.0, abs=1e-14)


# -- symbolic forms --------------------------------------------------------------------------


def test_expressions_are_in_q_only():
    for name in CLOSED:
        for e in AM.moment_expressions(name):
            assert e.free_symbols <= {S.q}, (name, e)


def test_relu_expressions_exact():
    mean, m2, g2 = AM.moment_expressions("relu")
    q = S.q
    assert sp.simplify(m2 - q / 2) == 0
    assert sp.simplify(g2 - sp.Rational(1, 2)) == 0
    assert sp.simplify(mean - sp.sqrt(q / (2 * sp.pi))) == 0


def test_erf_expression_equals_williams():
    m2 = AM.moment_expressions("erf")[1]
    williams = 2 / sp.pi * sp.asin(2 * S.q / (1 + 2 * S.q))
    for qv in (sp.Rational(1, 7), 1, 3, 50):
        assert abs(sp.N((m2 - williams).subs(S.q, qv), 40)) < 1e-35


@pytest.mark.parametrize("name", ["linear", "relu", "leaky_relu", "abs"])
def test_homogeneous_scaling(name):
    act = A.get_activation(name)
    assert act.homogeneous
    mean, m2, g2 = AM.moment_expressions(act)
    assert not sp.simplify(m2 / S.q).has(S.q)
    assert not sp.simplify(mean / sp.sqrt(S.q)).has(S.q)
    assert not g2.has(S.q)


def test_non_homogeneous_flags():
    for name in ["tanh", "sigmoid", "erf", "gelu", "silu", "selu", "elu", "softplus"]:
        assert not A.get_activation(name).homogeneous


def test_grad_expr_piecewise():
    g = A.get_activation("relu").grad_expr
    assert g.subs(S.x, 2) == 1 and g.subs(S.x, -2) == 0
    d = A.get_activation("elu:alpha=0.5").numpy_grad()
    np.testing.assert_allclose(d(np.array([-1.0, 1.0])), [0.5 * math.exp(-1.0), 1.0], rtol=1e-15)


def test_numpy_fns_are_stable():
    sp_ = A.get_activation("softplus")
    np.testing.assert_allclose(
        sp_.numpy_fn()(np.array([1000.0, -1000.0, 0.0])), [1000, 0, math.log(2)]
    )
    np.testing.assert_allclose(sp_.numpy_grad()(np.array([1000.0, -1000.0])), [1.0, 0.0])
    assert A.get_activation("linear").numpy_grad()(np.zeros(3)).shape == (3,)
    assert float(A.get_activation("relu").numpy_fn()(-3.0)) == 0.0


def test_no_closed_form_for_quadrature_only():
    for name in QUADRATURE_ONLY:
        assert not A.get_activation(name).closed_form
        with pytest.raises(ValueError, match="no closed form"):
            AM.moment_expressions(name)
        with pytest.raises(ValueError, match="no closed form"):
            AM.activation_moments(name, 1.0, method="closed_form")


# -- gains -----------------------------------------------------------------------------------


def test_relu_gain_exact():
    assert sp.simplify(G.gain_expr("relu") - sp.sqrt(2)) == 0
    assert G.gain("relu") == pytest.approx(math.sqrt(2), rel=1e-15)
    assert G.gain_expr("linear") == 1
    assert G.gain_expr("tanh") is None


@pytest.mark.parametrize("a", ["0.01", "0.2", "0.5"])
def test_leaky_gain_exact(a):
    act = A.get_activation(f"leaky_relu:negative_slope={a}")
    ar = sp.Rational(a)
    assert sp.simplify(G.gain_expr(act) - sp.sqrt(2 / (1 + ar**2))) == 0
    assert G.gain(act) == pytest.approx(math.sqrt(2 / (1 + float(a) ** 2)), rel=1e-14)


def test_conventional_table_values():
    """The PyTorch calculate_gain table, written from its documentation."""
    expected = {
        "linear": 1.0,
        "sigmoid": 1.0,
        "tanh": 5 / 3,
        "relu": math.sqrt(2),
        "leaky_relu": math.sqrt(2 / (1 + 0.01**2)),
        "selu": 0.75,
    }
    assert set(G.CONVENTIONAL_GAINS) == set(expected)
    for name, v in expected.items():
        assert G.conventional_gain(name) == pytest.approx(v, rel=1e-15)
    assert G.conventional_gain("leaky_relu:negative_slope=0.2") == pytest.approx(
        math.sqrt(2 / 1.04), rel=1e-15
    )
    assert G.conventional_gain("gelu") is None


def _ref_gain(name):
    return 1 / math.sqrt(_ref_quad(name, 1.0)[1])


REPRODUCED = ["linear", "relu", "leaky_relu"]
DIFFERENT = ["tanh", "sigmoid", "selu"]


def test_conventional_entries_reproduced_or_explained():
    assert set(REPRODUCED) | set(DIFFERENT) == set(G.CONVENTIONAL_GAINS)
    for name in REPRODUCED:
        ref = _ref_gain(name)
        assert G.conventional_gain(name) == pytest.approx(ref, rel=1e-12)
        assert G.gain(name) == pytest.approx(ref, rel=1e-12)
        assert "the same" in G.gain_comparison(name)
    for name in DIFFERENT:
        ref, conv = _ref_gain(name), G.conventional_gain(name)
        assert abs(conv - ref) > 1e-3 * ref
        text = G.gain_comparison(name)
        assert f"{ref:.6g}" in text and f"{conv:.6g}" in text, text
        assert "differ" in text
    assert "mean" in G.gain_comparison("sigmoid")
    assert "heuristic" in G.gain_comparison("tanh")
    assert "empirically" in G.gain_comparison("selu")
    assert "1/fan_in" in G.gain_comparison("selu")


def test_gain_comparison_without_table_entry():
    text = G.gain_comparison("gelu")
    assert "no entry" in text and f"{_ref_gain('gelu'):.6g}" in text


# -- registry --------------------------------------------------------------------------------


@pytest.fixture
def registry_cleanup():
    names = []
    yield names
    for n in names:
        A._registry.pop(n, None)
    A._make.cache_clear()


def test_register_mish_matches_monte_carlo(normal_draws, registry_cleanup):
    registry_cleanup.append("test_mish")
    act = A.register_activation(
        "test_mish", lambda x: x * sp.tanh(sp.log(1 + sp.exp(x))), description="mish"
    )
    assert "test_mish" in A.activation_names()
    assert A.get_activation("test_mish") == act
    assert not act.closed_form and act.kinks == ()
    for q in (0.5, 3.0):
        m = AM.activation_moments("test_mish", q)
        assert m.method == "quadrature"
        _mc_check(_triple(m), _mish, _mish_grad, math.sqrt(q) * normal_draws)


def test_register_expression_with_kinks(registry_cleanup):
    registry_cleanup += ["test_sqrelu", "test_hardtanh"]
    x = sp.Symbol("x")  # not symbols.x: rewritten
    act = A.register_activation("test_sqrelu", sp.Max(0, x) ** 2, closed_form=True)
    assert act.kinks == (0.0,)
    mean, m2, g2 = AM.moment_expressions(act)
    # E[relu(z)^2] = q/2, E[relu(z)^4] = 3q^2/2, E[(2 relu(z))^2] = 2q.
    assert sp.simplify(mean - S.q / 2) == 0
    assert sp.simplify(m2 - 3 * S.q**2 / 2) == 0
    assert sp.simplify(g2 - 2 * S.q) == 0
    ht = A.register_activation("test_hardtanh", sp.Max(-1, sp.Min(1, S.x)))
    assert ht.kinks == (-1.0, 1.0)
    q = 2.0
    m = AM.activation_moments(ht, q)
    p = ss.ndtr(-1 / math.sqrt(q))  # P(z > 1)
    inside = 1 - 2 * p
    assert m.grad_second_moment == pytest.approx(inside, rel=1e-10)


def test_register_errors(registry_cleanup):
    with pytest.raises(ValueError, match="already a built-in"):
        A.register_activation("relu", S.x)
    with pytest.raises(ValueError, match="already a built-in"):
        A.register_activation("swish", S.x)
    for bad in ["1abc", "a:b", "", "leaky relu"]:
        with pytest.raises(ValueError, match="bad activation name"):
            A.register_activation(bad, S.x)
    with pytest.raises(ValueError, match="free symbols"):
        A.register_activation("test_two", S.x * S.q)
    with pytest.raises(ValueError, match="expected a SymPy expression"):
        A.register_activation("test_str", "x**2")
    with pytest.raises(ValueError, match=r"kink of 'test_k' must be finite, got nan"):
        A.register_activation("test_k", S.x, kinks=(float("nan"),))
    with pytest.raises(ValueError, match="homogeneous"):
        A.register_activation("test_nothom", sp.tanh(S.x), homogeneous=True)
    registry_cleanup.append("test_over")
    A.register_activation("test_over", S.x)
    with pytest.raises(ValueError, match="already a registered"):
        A.register_activation("test_over", 2 * S.x)
    act = A.register_activation("test_over", 2 * S.x, overwrite=True, homogeneous=True)
    assert A.get_activation("test_over").expr == 2 * S.x and act.homogeneous


# -- bad input -------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown activation 'relux'.*relu.*tanh.*softplus"):
        A.get_activation("relux")
    with pytest.raises(ValueError, match="unknown activation"):
        AM.activation_moments("nope")


def test_unknown_and_bad_params():
    with pytest.raises(ValueError, match=r"no parameter 'slope'.*negative_slope"):
        A.get_activation("leaky_relu", slope=0.2)
    with pytest.raises(ValueError, match=r"no parameter 'alpha'.*takes no parameters"):
        A.get_activation("relu:alpha=1")
    with pytest.raises(ValueError, match=r"alpha must be >= 0, got -1\.0"):
        A.get_activation("elu", alpha=-1)
    with pytest.raises(ValueError, match="must be finite, got nan"):
        A.get_activation("leaky_relu", negative_slope=float("nan"))
    with pytest.raises(ValueError, match="must be finite, got inf"):
        A.get_activation("elu:alpha=inf")
    with pytest.raises(ValueError, match="real number, got 'abc'"):
        A.get_activation("elu:alpha=abc")
    with pytest.raises(ValueError, match="real number, got True"):
        A.get_activation("elu", alpha=True)
    with pytest.raises(ValueError, match="both"):
        A.get_activation("elu:alpha=0.5", alpha=0.5)


@pytest.mark.parametrize("q", [-1.0, float("nan"), float("inf"), -1e-300])
def test_bad_q(q):
    with pytest.raises(ValueError, match=rf"q .*got {q!r}"):
        AM.activation_moments("relu", q)
    with pytest.raises(ValueError, match=rf"got {q!r}"):
        AM.quadrature_moments("tanh", q)


def test_bad_method():
    with pytest.raises(ValueError, match=r"method must be one of.*'exact'"):
        AM.activation_moments("relu", 1.0, method="exact")


def test_spec_and_keywords_agree():
    a = A.get_activation("leaky_relu:negative_slope=0.2")
    b = A.get_activation("leaky_relu", negative_slope=0.2)
    assert a == b and a.params == (("negative_slope", 0.2),)
    assert A.get_activation("leaky_relu").params == (("negative_slope", 0.01),)
    assert A.get_activation("elu").params == (("alpha", 1.0),)
    assert A.get_activation(a) is a
    assert A.get_activation("identity").name == "linear"
    assert A.activation_names()[: len(A.BUILTIN_NAMES)] == A.BUILTIN_NAMES
    assert set(A.BUILTIN_NAMES) == {
        "linear", "relu", "leaky_relu", "abs", "tanh", "sigmoid",
        "erf", "gelu", "silu", "selu", "elu", "softplus",
    }  # fmt: skip


# -- hygiene ---------------------------------------------------------------------------------


_MODULES = (A, GI, AM, G)  # the registry, the integrals, the moments, the gains


@pytest.mark.parametrize("module", _MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_module_never_imports_jax(module):
    src = pathlib.Path(module.__file__).read_text()
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods.add((node.module or "").split(".")[0])
    assert not mods & {"jax", "jaxlib", "flax", "optax"}, mods

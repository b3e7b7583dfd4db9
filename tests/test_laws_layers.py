"""Layer laws, depth helpers, the derivation and `varprop derive`."""

import math
import re
import subprocess
import sys

import pytest
import sympy as sp

from varprop import initializers as I
from varprop import laws
from varprop._src.cli import main
from varprop.laws import symbols as S


def test_forward_law_general_and_zero_mean():
    eq = laws.forward_law()
    assert (
        sp.simplify(
            eq.rhs - (S.fan_in * S.weight_variance * S.input_second_moment + S.bias_variance)
        )
        == 0
    )
    he = laws.forward_law(I.he_normal().scheme)
    assert sp.simplify(he.rhs - (2 * S.input_second_moment + S.bias_variance)) == 0
    zm = laws.forward_law(I.lecun_normal().scheme, zero_mean=True)
    assert zm.rhs == sp.Symbol("Var(x)", positive=True)


def test_he_relu_factor_is_exactly_one():
    f = laws.layer_factors(I.he_normal().scheme, "relu")
    assert f.forward == 1
    assert f.forward_square == 1 and f.backward_square == 1
    assert sp.simplify(f.backward - S.fan_out / S.fan_in) == 0
    # fan_out mode preserves the backward pass for any widths.
    g = laws.layer_factors(I.he_normal(mode="fan_out").scheme, "relu")
    assert g.backward == 1
    assert sp.simplify(g.forward - S.fan_in / S.fan_out) == 0


def test_xavier_relu_halves_and_glorot_tanh():
    f = laws.layer_factors(I.xavier_fan_in_normal().scheme, "relu")
    assert f.forward == sp.Rational(1, 2) and f.backward_square == sp.Rational(1, 2)
    g = laws.layer_factors(I.glorot_normal().scheme, "linear")
    assert g.forward_square == 1 and g.backward_square == 1
    assert sp.simplify(g.forward - 2 * S.fan_in / (S.fan_in + S.fan_out)) == 0


def test_backward_law_substitutes_closed_form_derivative_moment():
    eq = laws.backward_law(I.he_normal().scheme, "relu")
    # E[relu'(z)^2] = 1/2 (half the mass of a symmetric z is positive).
    assert (
        sp.simplify(eq.rhs - S.fan_out * (2 / S.fan_in) * sp.Rational(1, 2) * S.grad_second_moment)
        == 0
    )


def test_float32_limit_layer_by_hand():
    # factor 512 per layer (standard normal, width 512, linear): sqrt(512^L) > 3.4e38
    # first when L * ln(512) > 2 ln(3.4028e38), i.e. L > 28.4.
    assert laws.float32_limit_layer(512.0) == ("overflow", 29)
    # factor 512 * 1e-4 = 0.0512 (small random): 0.0512^L < 1.1755e-38^2 when L > 58.8.
    assert laws.float32_limit_layer(0.0512) == ("underflow", 59)
    assert laws.float32_limit_layer(1.0) == ("none", None)
    with pytest.raises(ValueError, match="factor must be finite and > 0"):
        laws.float32_limit_layer(0.0)


def test_classify():
    assert laws.classify_factor(1.0) == "preserved"
    assert laws.classify_factor(0.5) == "vanishing"
    assert laws.classify_factor(2.0) == "exploding"


def _gauss_mean(h, q):
    """E[h(z)], z ~ N(0, q), by scipy quad in t = z / sqrt(q) (independent of varprop)."""
    import scipy.integrate as si

    f = lambda t: h(math.sqrt(q) * t) * math.exp(-t * t / 2)  # noqa: E731
    halves = (
        si.quad(f, a, b, epsabs=0, epsrel=1e-13)[0] for a, b in ((-math.inf, 0), (0, math.inf))
    )
    return sum(halves) / math.sqrt(2 * math.pi)


def test_mean_field_fixed_point_tanh():
    # tanh with sigma_w^2 = 2 has a non-zero fixed point q* solving q = 2 E[tanh(sqrt(q) z)^2]
    # (Poole et al. 2016): solved here with scipy quad + brentq, not with varprop's moments.
    from scipy.optimize import brentq

    def gap(q):
        return 2.0 * _gauss_mean(lambda z: math.tanh(z) ** 2, q) - q

    q_ref = brentq(gap, 0.1, 2.0, xtol=1e-14, rtol=1e-14)
    chi_ref = 2.0 * _gauss_mean(lambda z: (1.0 - math.tanh(z) ** 2) ** 2, q_ref)  # sech^4
    fp = laws.mean_field_fixed_point("tanh", 2.0)
    assert fp.q_star == pytest.approx(q_ref, rel=1e-8)
    assert fp.chi == pytest.approx(chi_ref, rel=1e-8)
    assert chi_ref > 1  # chaotic phase: sigma_w^2 = 2 > 1, sigma_b = 0 (Poole et al. 2016)
    # Below sigma_w^2 = 1 the only fixed point is 0.
    assert laws.mean_field_fixed_point("tanh", 0.5).q_star < 1e-100


def test_degenerate_scheme_refused_by_iid_law():
    with pytest.raises(ValueError, match="degenerate"):
        laws.forward_law(I.zeros.scheme)


def test_derive_he_relu_steps():
    d = laws.derive(I.he_normal().scheme, "relu")
    assert d.forward_health == "preserved" and d.backward_health == "preserved"
    titles = [s.title for s in d.steps]
    assert titles[:5] == [
        "Weight variance",
        "Activation moments",
        "Forward pass",
        "Backward pass",
        "Gain",
    ]
    text = d.render("text")
    assert "2/n_in" in text and "preserved" in text
    md = d.render("markdown")
    assert "$$" in md and r"\frac{2}{n_{\mathrm{in}}}" in md
    tex = d.render("latex")
    assert r"\begin{align*}" in tex
    with pytest.raises(ValueError, match="unknown format 'html'"):
        d.render("html")


def test_derive_xavier_relu_vanishes_with_widths():
    # One 512 -> 512 layer halves E[phi(z)^2] / q once (chi_forward = 1/2): nothing compounds.
    one = laws.derive(I.glorot_normal().scheme, "relu", fan_in=512, fan_out=512)
    assert "chi_forward = 1/2" in one.render()
    assert one.forward_health == "preserved" and "underflow" not in one.render()
    # A real stack of them: q_l = 0.5^(l-1) from q_1 = 1; the products x_i w_ij of layer l have
    # second moment q_l / 512, the largest of 64 * 512^2 is ln(64 * 512^2) sqrt(q_l / 512),
    # below 1.18e-38 first at layer 253.
    deep = laws.derive(I.glorot_normal().scheme, "relu", widths=[512] * 300)
    assert deep.forward_factor == pytest.approx(0.5, rel=1e-12)
    assert deep.forward_health == "vanishing"
    m2 = math.log(64 * 512 * 512) ** 2 / 512
    first = next(l for l in range(1, 300) if m2 * 0.5 ** (l - 1) < laws.FLOAT32_TINY**2)
    assert first == 253 and "float32 underflows at layer 253" in deep.render()


def test_cli_derive_runs(capsys):
    assert main(["derive", "--init", "he_normal", "--act", "relu"]) == 0
    out = capsys.readouterr().out
    assert "Derivation: he_normal with relu" in out


def test_cli_derive_latex_nonhomogeneous(capsys):
    assert (
        main(
            [
                "derive",
                "--init",
                "glorot_normal",
                "--act",
                "tanh",
                "--fan-in",
                "256",
                "--format",
                "latex",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert r"\section*" in out and "not homogeneous" in out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["derive", "--init", "he_nromal"],
            r"unknown initializer 'he_nromal'; valid names: .*he_normal",
        ),
        (["derive", "--act", "relux"], r"relux.*relu"),
        (["derive", "--init", "he_normal:mode=fan_avg"], "fan_in' or 'fan_out"),
        (["derive", "--fan-out", "3"], "needs --fan-in"),
    ],
)
def test_cli_derive_usage_errors(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("varprop derive: error:")
    assert re.search(match, err)
    assert "Traceback" not in err


def test_console_script_exit_code_unknown_name():
    r = subprocess.run(
        [sys.executable, "-m", "varprop", "derive", "--init", "nope"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "valid names" in r.stderr and "Traceback" not in r.stderr


# -- derive over a real sequence: a single layer given by its fans is that one layer ----------


def _lines_once(out: str) -> None:
    eqs = [ln.strip() for ln in out.splitlines() if " = " in ln and ln.startswith("     ")]
    assert len(eqs) == len(set(eqs)), [e for e in eqs if eqs.count(e) > 1]


def test_cli_derive_single_he_conv_layer_is_one_layer(capsys):
    # A He conv 32 -> 64 channels with a 3x3 kernel: fan_in 288, fan_out 576. Its law keeps
    # E[z^2] (chi_forward = 1) and doubles the gradient (chi_backward = n_out/n_in = 2) once:
    # one layer compounds nothing, so nothing explodes and nothing leaves float32.
    assert main(["derive", "--fan-in", "288", "--fan-out", "576"]) == 0
    out = capsys.readouterr().out
    assert "exploding" not in out and "overflows" not in out
    assert "chi_backward = 2" in out
    _lines_once(out)
    assert "Verdict: forward preserved, backward preserved" in out


def test_cli_derive_kernel_gives_the_same_fans(capsys):
    assert main(["derive", "--widths", "32,64", "--kernel", "3x3"]) == 0
    out = capsys.readouterr().out
    assert "288 -> 576" in out and "exploding" not in out
    _lines_once(out)


def test_derive_a_real_sequence_layer_by_layer():
    d = laws.derive(I.he_normal().scheme, "relu", widths=[784, 512, 512, 512, 10])
    titles = [s.title for s in d.steps]
    assert "Layer by layer" in titles and titles[-1].startswith("End to end (4 layers")
    text = d.render()
    assert "layer 1: 784 -> 512; layers 2-3: 512 -> 512; layer 4: 512 -> 10" in text
    assert "chi_backward (layer 4) = 5/256" in text  # n_out Var(w) E[relu'^2] = 10 (2/512) / 2
    assert d.propagation is not None and d.propagation.forward.round(12).tolist() == [2.0] * 4
    assert (d.forward_health, d.backward_health) == ("preserved", "preserved")
    _lines_once(text)
    for fmt in ("markdown", "latex"):
        assert "End to end" in d.render(fmt)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--widths", "8,8", "--fan-in", "8"], "give one of them"),
        (["--kernel", "3x3"], "--kernel needs --widths"),
        (["--widths", "8,8", "--kernel", "3xq"], "bad shape '3xq'"),
        (["--widths", "8"], "at least an input and an output width"),
    ],
)
def test_cli_derive_sequence_usage_errors(argv, match, capsys):
    assert main(["derive", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("varprop derive: error:") and match in err

"""`varprop derive` at values beyond float64: exact SymPy numbers, or InputError(numerics).

Each case goes through ``derivation.derive`` and through ``cli.main(["derive", ...])``, which
must exit 0 or 2 and never report an internal error (a traceback turned into one line).
"""

import math
import re

import pytest
import sympy as sp

from varprop._src import cli
from varprop._src.errors import InputError
from varprop._src.laws import activations as A
from varprop._src.laws import layers as Ly
from varprop._src.laws.catalog import scheme_from_spec
from varprop._src.laws.derivation import derive


def test_tiny_stddev_is_exact_and_underflows_at_layer_one():
    s = scheme_from_spec("normal:stddev=1e-300")
    assert s.law == sp.Rational(1, 10**600)  # not 0 (nsimplify used to round it away)
    d = derive(s, "relu")
    assert d.forward_health == "vanishing" and d.backward_health == "vanishing"
    assert d.forward_factor_exact == sp.Rational(1, 2 * 10**600)
    text = d.render()
    assert "5.0e-601" in text and "underflows at layer 1" in text
    # The weights themselves round to 0 in float32: the scheme says so.
    assert s.degenerate_reason((4, 4)).startswith("weights underflow to zero")


def test_huge_stddev_is_exact_and_overflows_at_layer_one():
    s = scheme_from_spec("normal:stddev=1e300")
    d = derive(s, "relu", 512)
    assert d.forward_health == "exploding"
    assert d.forward_factor_exact == 512 * sp.Integer(10) ** 600 / 2
    assert "overflows at layer 1" in d.render()
    with pytest.raises(InputError, match=r"Var\(w\) = 1\.000E\+600.*allowed") as e:
        s.variance((4, 4))
    assert e.value.kind == "numerics"


def test_float32_limit_layer_takes_exact_factors():
    # ln(1e-600) = -1381.55: one layer takes E[z^2] below (1.2e-38)^2 = 1.4e-76.
    assert Ly.float32_limit_layer(sp.Rational(1, 10**600)) == ("underflow", 1)
    # f = 10^(-1/2) exactly: E = 10^(-L/2) < 1.38e-76 first at L = 152 (10^-76 > 1.38e-76).
    f = 1 / sp.sqrt(10)
    assert Ly.float32_limit_layer(f) == ("underflow", 152)
    assert Ly.float32_limit_layer(float(f)) == ("underflow", 152)


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ("leaky_relu:negative_slope=1e308", "1e+308"),
        ("leaky_relu:negative_slope=-1e200", "-1e+200"),
        ("elu:alpha=1e151", "1e+151"),
    ],
)
def test_huge_activation_parameter_is_numerics_error(spec, value):
    with pytest.raises(
        InputError, match=r"outside \[-1e\+150, 1e\+150\].*got " + re.escape(value)
    ) as e:
        A.get_activation(spec)
    assert e.value.kind == "numerics"


def test_non_homogeneous_outside_mean_field_range():
    with pytest.raises(InputError, match=r"n_in Var\(w\) = 1\.0e-600.*\[1e-300, 1e\+300\]") as e:
        derive(scheme_from_spec("normal:stddev=1e-300"), "tanh")
    assert e.value.kind == "numerics"


def test_bounds_edge_cases():
    with pytest.raises(InputError, match="narrower than 1e-06"):
        scheme_from_spec("truncated_normal:lower=-1e-300,upper=1e-300")
    s = scheme_from_spec("constant:value=1e-300")
    assert s.mean_law == sp.Rational(1, 10**300) and s.degenerate_reason() is not None


SPECS = [
    ("normal:stddev=1e-300", "relu", 0),
    ("normal:stddev=1e300", "relu", 0),
    ("normal:stddev=1e-300", "leaky_relu:negative_slope=1e308", 2),
    ("normal", "leaky_relu:negative_slope=1e308", 2),
    ("normal:stddev=1e-300", "tanh", 2),
    ("normal:stddev=1e300", "gelu", 2),
    ("uniform:scale=1e-200", "abs", 0),
    ("variance_scaling:scale=1e300,mode=fan_in,distribution=normal", "relu", 0),
    ("he_normal:gain=1e-250", "relu", 0),
    ("he_normal:gain=1e250", "selu", 2),
    ("truncated_normal:stddev=1e-300,lower=0.5,upper=1.7", "relu", 0),
    ("truncated_normal:lower=40,upper=41", "relu", 2),
    ("constant:value=1e-300", "relu", 0),
    ("constant:value=1e300", "tanh", 0),
    ("normal:stddev=1e-5", "elu:alpha=1e300", 2),
    ("normal:stddev=1e-400", "relu", 2),
    ("glorot_normal", "leaky_relu:negative_slope=1e-300", 0),
]


@pytest.mark.parametrize(("init", "act", "code"), SPECS)
@pytest.mark.parametrize("fmt", ["text", "latex"])
def test_cli_derive_exits_cleanly(init, act, code, fmt, capsys):
    rc = cli.main(["derive", "--init", init, "--act", act, "--format", fmt])
    out, err = capsys.readouterr()
    assert rc == code, err
    assert "internal error" not in err and "Traceback" not in err
    if code == 2:
        assert "error:" in err
    else:
        assert ("Derivation" in out and "Verdict" in out) or r"\section*" in out


@pytest.mark.parametrize("fan_in", ["1", "1000000000000000000000"])
def test_cli_derive_extreme_widths(fan_in, capsys):
    rc = cli.main(["derive", "--init", "he_normal", "--act", "relu", "--fan-in", fan_in])
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert not math.isnan(derive(scheme_from_spec("he_normal"), "relu", int(fan_in)).forward_factor)

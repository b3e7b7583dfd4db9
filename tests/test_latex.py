"""LaTeX of the laws: symbol names rendered properly, every derivation equation parses."""

import re

import pytest
import sympy as sp

import varprop
from varprop import initializers as I
from varprop import laws
from varprop.laws import symbols as S


@pytest.mark.parametrize(
    "name, tex",
    [
        ("E[x^2]", r"\mathbb{E}\left[x^{2}\right]"),
        ("E[(dL/dh)^2]", r"\mathbb{E}\left[(\partial L/\partial h)^{2}\right]"),
        ("Var(w)", r"\operatorname{Var}(w)"),
        ("E[relu'(z)^2]", r"\mathbb{E}\left[\mathrm{relu}'(z)^{2}\right]"),
        ("E[phi'(z)^2]", r"\mathbb{E}\left[\phi'(z)^{2}\right]"),
        ("n_in", r"n_{\mathrm{in}}"),
        ("chi_forward", r"\chi_{\mathrm{forward}}"),
        ("sigma", r"\sigma"),
    ],
)
def test_symbol_names(name, tex):
    assert laws.symbol_latex(name) == tex


def test_sympy_alone_mangles_the_names_and_latex_does_not():
    expr = 2 * S.input_second_moment + S.bias_variance
    assert "^{2]}" in sp.latex(expr)  # the bug latex() exists for
    assert laws.latex(expr) == r"2 \mathbb{E}\left[x^{2}\right] + \operatorname{Var}(b)"


def _balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


@pytest.mark.parametrize(
    "init, act",
    [
        (I.he_normal(), "relu"),
        (I.glorot_uniform(), "tanh"),
        (I.lecun_normal(), "selu"),
        (I.xavier_fan_in_normal(), "gelu"),
        (I.he_normal(mode="fan_out"), "leaky_relu"),
    ],
)
def test_every_derivation_equation_parses(init, act):
    """matplotlib's mathtext is an independent LaTeX parser: every displayed equation of the
    Markdown derivation must parse, with balanced braces."""
    mathtext = pytest.importorskip("matplotlib.mathtext")
    md = laws.derive(varprop.scheme_of(init), act).render("markdown")
    eqs = re.findall(r"\$\$ (.*?) \$\$", md)
    assert len(eqs) >= 6
    parser = mathtext.MathTextParser("path")
    for tex in eqs:
        assert _balanced(tex), tex
        parser.parse(f"${tex}$")


def test_names_that_are_already_subscripted_keep_their_subscript():
    assert laws.symbol_latex("q_{l+1}") == "q_{l+1}"
    assert laws.latex(sp.Symbol("q_{l+1}") * 2) == "2 q_{l+1}"


def test_ratio_names():
    assert laws.symbol_latex("q_{l+1}/q_l") == "q_{l+1}/q_{l}"

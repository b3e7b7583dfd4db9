r"""LaTeX for the laws' expressions.

The laws use readable symbol names (``E[x^2]``, ``Var(w)``, ``E[(dL/dh)^2]``, ``n_in``) so
that their text form reads like the literature. SymPy's own LaTeX printer mangles such names
(``E[x^2]`` becomes ``E[x^{2]}``); :func:`latex` maps each name to proper LaTeX first.

Example:
    >>> import sympy as sp
    >>> from varprop.laws import latex, symbols
    >>> latex(2 * symbols.input_second_moment + symbols.bias_variance)
    '2 \\mathbb{E}\\left[x^{2}\\right] + \\operatorname{Var}(b)'
"""

from __future__ import annotations

import re

import sympy as sp

_GREEK = {
    "phi",
    "chi",
    "sigma",
    "gamma",
    "beta",
    "alpha",
    "mu",
    "epsilon",
    "lambda",
    "theta",
    "rho",
    "delta",
    "eta",
    "tau",
    "omega",
    "psi",
    "kappa",
    "nu",
    "xi",
    "zeta",
    "pi",
}


def _word(w: str) -> str:
    """One identifier: greek letters as commands, one letter as is, words upright."""
    if w in _GREEK:
        return "\\" + w
    if len(w) == 1:
        return w
    return r"\mathrm{" + w.replace("_", r"\_") + "}"


def _ident(name: str) -> str:
    """``n_in`` -> ``n_{\\mathrm{in}}``, ``chi_forward`` -> ``\\chi_{\\mathrm{forward}}``."""
    base, _, sub = name.partition("_")
    if not sub:
        return _word(base)
    return _word(base) + "_{" + (_word(sub) if "_" not in sub else _ident(sub)) + "}"


def _inner(text: str) -> str:
    """The inside of ``E[...]`` or ``Var(...)``: powers, derivatives dL/dx, primes, calls."""
    text = re.sub(r"dL/d(\w+)", r"\\partial L/\\partial \1", text)
    text = re.sub(r"\^(\w+)", r"^{\1}", text)

    def call(m: re.Match) -> str:
        return _word(m.group(1)) + m.group(2)

    # relu'(z), phi(z), tanh(z): function names upright (or greek).
    text = re.sub(r"(?<![\\\w])([A-Za-z][A-Za-z0-9_]*)('?)(?=\()", call, text)
    return text


def symbol_latex(name: str) -> str:
    """LaTeX of one symbol name as the laws spell it."""
    m = re.fullmatch(r"E\[(.*)\]", name)
    if m:
        return r"\mathbb{E}\left[" + _inner(m.group(1)) + r"\right]"
    m = re.fullmatch(r"Var\((.*)\)", name)
    if m:
        return r"\operatorname{Var}(" + _inner(m.group(1)) + ")"
    m = re.fullmatch(r"(\S+) \((.*)\)", name)  # "chi_forward (n_out = n_in)"
    if m:
        cond = re.sub(r"[A-Za-z]\w*", lambda w: _ident(w.group(0)), m.group(2))
        return _ident(m.group(1)) + r"\,(" + cond + ")"
    if re.fullmatch(r"[A-Za-z]\w*", name):
        return _ident(name)
    if "/" in name and "(" not in name:  # a ratio of names: "q_{l+1}/q_l"
        return "/".join(symbol_latex(part) for part in name.split("/"))
    m = re.fullmatch(r"([A-Za-z]\w*?)_\{(.+)\}", name)  # "q_{l+1}": already a subscript
    if m:
        return _word(m.group(1)) + "_{" + m.group(2) + "}"
    return r"\mathrm{" + re.sub(r"([_^#&%$])", r"\\\1", name) + "}"


def latex(expr: sp.Basic | sp.Eq | str) -> str:
    """SymPy's LaTeX of ``expr`` with the laws' symbol names rendered properly.

    ``sp.Eq`` gives ``lhs = rhs``; a plain string is taken as a symbol name.
    """
    if isinstance(expr, str):
        return symbol_latex(expr)
    names = {s: symbol_latex(s.name) for s in expr.free_symbols if isinstance(s, sp.Symbol)}
    return sp.latex(expr, symbol_names=names)

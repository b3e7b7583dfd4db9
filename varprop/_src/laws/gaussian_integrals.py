r"""Closed-form Gaussian expectations of SymPy expressions, derived by SymPy.

For :math:`x \sim \mathcal N(0, v)` (v a SymPy expression, e.g. :data:`symbols.q`) and a
function given as a SymPy expression in :data:`symbols.x`, possibly a ``Piecewise``,
:func:`gaussian_expectation` returns :math:`E[f(x)\,1\{lo < x < hi\}]` in closed form and
:func:`moment_forms` the three moments the variance laws need,
:math:`(E[f], E[f^2], E[f'^2])`. Nothing here knows about activations by name: the
registry (:mod:`varprop._src.laws.activations`) and the numeric moments
(:mod:`varprop._src.laws.activation_moments`) build on it.

The method: each expectation is split into the pieces of f (:func:`split_pieces`) and the
terms of the expanded integrand, :math:`c\, x^n e^{-a x^2 + d x} \prod_i
\operatorname{erf}(b_i x)`. Terms with at most one ``erf`` are integrated by
``sympy.integrate`` against the density (once per shape, with symbolic coefficients, then
substituted). Products of two or more ``erf`` factors, where ``sympy.integrate`` stalls, go
through three exact identities: a Gaussian factor changes the variance,
:math:`E_q[e^{-a x^2} f] = E_{q/(1+2aq)}[f]/\sqrt{1+2aq}`; Stein's lemma removes powers of
x, :math:`E_q[x f] = q\, E_q[f']`; and the heat equation :math:`\partial_q E_q[f] =
\tfrac12 E_q[f'']`, :math:`E_0[f] = f(0)`, turns :math:`E[\operatorname{erf}(a
x)\operatorname{erf}(b x)]` into an integral over the variance, which a substitution
:math:`u = \sqrt{\alpha s + \beta}` makes rational. The results are checked against
quadrature in the tests, not assumed.

References:
    Williams, "Computing with infinite networks", NeurIPS 1996 (the erf kernel).

Nothing here imports JAX.

Example:
    >>> from varprop._src.laws.symbols import q, x
    >>> moment_forms(sp.Piecewise((x, x > 0), (0, True)))[1]   # ReLU: E[phi^2] = q/2
    q/2
    >>> gaussian_expectation(x**2, q, -sp.oo, sp.oo)
    q
"""

# SymPy's inline annotations are narrower than its API (subs() with a dict, Eq() returning
# Eq, Expr vs Basic results): these checks give false positives on SymPy code.
# pyright: reportArgumentType=false, reportCallIssue=false, reportReturnType=false
# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import sympy as sp

from varprop._src.laws import symbols as S

__all__ = [
    "NoClosedForm",
    "gaussian_expectation",
    "moment_forms",
    "split_pieces",
]

_x = S.x
_q = S.q


class NoClosedForm(Exception):
    """SymPy could not produce a closed form for one term."""


_t = sp.Dummy("t", real=True)
_C = sp.Dummy("C", positive=True)
_B = sp.Dummy("B", positive=True)
_D = sp.Dummy("D", real=True)
_V = sp.Dummy("V", positive=True)
_oo = sp.oo


def split_pieces(expr: sp.Expr) -> list[tuple[sp.Expr, sp.Expr, sp.Expr]]:
    """``expr`` as ``[(piece, lo, hi), ...]``: equal to ``piece`` on the interval (lo, hi)."""
    e = (
        sp.piecewise_fold(expr.rewrite(sp.Piecewise))
        if expr.has(sp.Abs, sp.Max, sp.Min, sp.Heaviside, sp.sign, sp.Piecewise)
        else expr
    )
    if not e.has(sp.Piecewise):
        return [(e, -_oo, _oo)]
    if not isinstance(e, sp.Piecewise):
        raise NoClosedForm(f"cannot split {expr} into pieces")
    out = []
    for piece, where in e.as_expr_set_pairs(sp.Reals):
        if piece.has(sp.Piecewise):
            raise NoClosedForm(f"nested Piecewise in {expr}")
        sets = where.args if isinstance(where, sp.Union) else (where,)
        for st in sets:
            if isinstance(st, sp.Interval) and st.measure > 0:
                out.append((piece, st.start, st.end))
            elif not (isinstance(st, sp.FiniteSet) or st.is_empty):
                raise NoClosedForm(f"cannot read the set {st} of a piece of {expr}")
    return sorted(out, key=lambda p: float(p[1]) if p[1].is_finite else -math.inf)


@dataclass(frozen=True)
class _Term:
    """``coeff * x**n * exp(-c x**2 + d x) * prod(erf(b x) for b in erfs)``, b > 0, c >= 0."""

    coeff: sp.Expr
    n: int
    c: sp.Expr
    d: sp.Expr
    erfs: tuple[sp.Expr, ...]


def _parse(term: sp.Expr) -> _Term | None:
    coeff, n, c, d, erfs = sp.Integer(1), 0, sp.Integer(0), sp.Integer(0), []
    for f in sp.Mul.make_args(term):
        if not f.has(_x):
            coeff *= f
            continue
        base, e = f.as_base_exp()
        if base == _x and e.is_Integer and e >= 0:
            n += int(e)
        elif isinstance(f, sp.exp):
            poly = sp.Poly(f.args[0], _x) if f.args[0].is_polynomial(_x) else None
            if poly is None or poly.degree() > 2:
                return None
            c -= poly.coeff_monomial(_x**2)
            d += poly.coeff_monomial(_x)
            coeff *= sp.exp(poly.coeff_monomial(1))
        elif isinstance(base, sp.erf) and e.is_Integer and e > 0:
            b = sp.simplify(base.args[0] / _x)
            if b.has(_x) or b == 0:
                return None
            if b.is_negative:
                coeff *= (-1) ** int(e)
                b = -b
            elif not b.is_positive:
                return None
            erfs += [b] * int(e)
        else:
            return None
    if not (c.is_nonnegative and d.is_real):
        return None
    return _Term(coeff, n, c, d, tuple(sorted(erfs, key=sp.default_sort_key)))


@functools.cache
def _gauss_primitive(n: int, m: int) -> sp.Expr:
    r""":math:`\int_{\mathbb R} t^n e^{-C t^2} \operatorname{erf}(B t)^m dt`, m in {0, 1}."""
    if (n + m) % 2:
        return sp.Integer(0)
    r = sp.integrate(_t**n * sp.exp(-_C * _t**2) * sp.erf(_B * _t) ** m, (_t, -_oo, _oo))
    if r.has(sp.Integral):
        raise NoClosedForm(f"t^{n} exp(-C t^2) erf(B t)^{m}")
    return sp.simplify(r)


@functools.cache
def _half_primitive(n: int, zero_d: bool) -> sp.Expr:
    r""":math:`\int_0^\infty t^n e^{D t - t^2/2} dt / \sqrt{2\pi}` (D = 0 if ``zero_d``)."""
    d = 0 if zero_d else _D
    r = sp.integrate(_t**n * sp.exp(d * _t - _t**2 / 2), (_t, 0, _oo)) / sp.sqrt(2 * sp.pi)
    if r.has(sp.Integral):
        raise NoClosedForm(f"t^{n} exp(D t - t^2/2) on (0, oo)")
    return sp.simplify(sp.expand(r))


def _absorb(term: _Term, v: sp.Expr) -> tuple[_Term, sp.Expr]:
    """Fold exp(-c x^2) into the variance: E_v[e^{-c x^2} f] = E_{v'}[f] / sqrt(1 + 2 c v)."""
    if term.c == 0:
        return term, v
    k = 1 + 2 * term.c * v
    return _Term(term.coeff / sp.sqrt(k), term.n, sp.Integer(0), term.d, term.erfs), v / k


def _full_line(term: _Term, v: sp.Expr) -> sp.Expr:
    """E over x ~ N(0, v) of one parsed term."""
    m = len(term.erfs)
    if term.d != 0:
        raise NoClosedForm("linear exponent on the whole line")
    if (term.n + m) % 2:
        return sp.Integer(0)  # odd integrand
    if m <= 1:
        prim = _gauss_primitive(term.n, m)
        sub = {_C: term.c * v + sp.Rational(1, 2)}
        if m:
            sub[_B] = term.erfs[0] * sp.sqrt(v)
        return term.coeff * v ** sp.Rational(term.n, 2) * prim.subs(sub) / sp.sqrt(2 * sp.pi)
    term, v = _absorb(term, v)
    if term.n == 0:
        return term.coeff * _erf_product(term.erfs).subs(_V, v)
    # Stein's lemma: E_v[x^n g] = v ((n-1) E_v[x^(n-2) g] + E_v[x^(n-1) g']).
    out = sp.Integer(0)
    if term.n >= 2:
        out += (term.n - 1) * _full_line(_Term(term.coeff, term.n - 2, 0, 0, term.erfs), v)
    for i, b in enumerate(term.erfs):
        rest = term.erfs[:i] + term.erfs[i + 1 :]
        lower = _Term(term.coeff * 2 * b / sp.sqrt(sp.pi), term.n - 1, b**2, sp.Integer(0), rest)
        out += _full_line(lower, v)
    return v * out


@functools.cache
def _erf_product(bs: tuple[sp.Expr, ...]) -> sp.Expr:
    r""":math:`E_V[\prod_i \operatorname{erf}(b_i x)]` by the heat equation, in ``_V``."""
    s = sp.Dummy("s", positive=True)
    f = sp.Mul(*(sp.erf(b * _x) for b in bs))
    rate = gaussian_expectation(sp.diff(f, _x, 2), s, -_oo, _oo) / 2
    return f.subs(_x, 0) + _integrate_from_zero(rate, s, _V)


def _integrate_from_zero(h: sp.Expr, s: sp.Symbol, upper: sp.Expr) -> sp.Expr:
    r""":math:`\int_0^{upper} h(s)\,ds`, rationalized by :math:`u = \sqrt{\alpha s + \beta}`.

    The rates the heat equation produces are rational in s and in square roots of
    proportional linear forms; the substitution makes them rational in u, which
    ``sympy.integrate`` handles at once (instead of tens of seconds).
    """
    h = sp.together(sp.powsimp(sp.expand(h), force=True))
    roots = {
        p
        for p in h.atoms(sp.Pow)
        if p.exp.is_Rational and p.exp.q == 2 and p.base.has(s) and p.base.is_polynomial(s)
    }
    linear = [sp.Poly(p.base, s) for p in roots]
    if linear and all(pl.degree() == 1 for pl in linear):
        k0, c0 = linear[0].all_coeffs()
        if all(
            sp.simplify(pl.all_coeffs()[1] * k0 - pl.all_coeffs()[0] * c0) == 0 for pl in linear
        ):
            u = sp.Dummy("u", positive=True)
            s_of_u = (u**2 - c0) / k0
            hu = h.xreplace({p: sp.expand(p.base.subs(s, s_of_u)) ** p.exp for p in roots})
            hu = sp.cancel(sp.together(hu.subs(s, s_of_u) * sp.diff(s_of_u, u)))
            if hu.is_rational_function(u):
                r = sp.integrate(hu, (u, sp.sqrt(c0), sp.sqrt(k0 * upper + c0)))
                if not r.has(sp.Integral):
                    return r
    r = sp.integrate(h, (s, 0, upper))
    if r.has(sp.Integral):
        raise NoClosedForm(f"integral over the variance of {h}")
    return r


def _half_line(term: _Term, v: sp.Expr, side: int) -> sp.Expr:
    """E over x ~ N(0, v) of one parsed term times 1{side * x > 0}."""
    if term.erfs:
        raise NoClosedForm("erf on a half line")
    term, v = _absorb(term, v)
    zero_d = term.d == 0
    prim = _half_primitive(term.n, zero_d)
    if not zero_d:
        prim = prim.subs(_D, side * term.d * sp.sqrt(v))
    return term.coeff * side**term.n * v ** sp.Rational(term.n, 2) * prim


def _direct(term: sp.Expr, v: sp.Expr, lo: sp.Expr, hi: sp.Expr) -> sp.Expr:
    """Fallback: ``sympy.integrate`` of the term against the density, in t = x / sqrt(v)."""
    rv = sp.sqrt(v)
    g = term.subs(_x, rv * _t) * sp.exp(-(_t**2) / 2) / sp.sqrt(2 * sp.pi)
    r = sp.integrate(g, (_t, lo / rv, hi / rv))
    if r.has(sp.Integral) or r.has(sp.nan):
        raise NoClosedForm(f"E[{term}] over ({lo}, {hi})")
    return r


def gaussian_expectation(f: sp.Expr, v: sp.Expr, lo: sp.Expr, hi: sp.Expr) -> sp.Expr:
    """E over x ~ N(0, v) of ``f * 1{lo < x < hi}``, term by term."""
    f = sp.expand(f.replace(sp.erfc, lambda u: 1 - sp.erf(u)))
    total = sp.Integer(0)
    for term in sp.Add.make_args(f):
        if term == 0:
            continue
        parsed = _parse(term)
        try:
            if parsed is None:
                raise NoClosedForm(str(term))
            if lo == -_oo and hi == _oo:
                total += _full_line(parsed, v)
            elif lo == 0 and hi == _oo:
                total += _half_line(parsed, v, 1)
            elif lo == -_oo and hi == 0:
                total += _half_line(parsed, v, -1)
            else:
                raise NoClosedForm("interval with a finite non-zero end")
        except NoClosedForm:
            total += _direct(term, v, lo, hi)
    return total


def _moment(pieces: list[tuple[sp.Expr, sp.Expr, sp.Expr]], power: int) -> sp.Expr:
    return sp.Add(*(gaussian_expectation(p**power, _q, lo, hi) for p, lo, hi in pieces))


def _tidy(e: sp.Expr) -> sp.Expr:
    """Light, bounded simplification (a global ``simplify`` on big forms costs minutes)."""
    e = sp.expand(e)
    if sp.count_ops(e) <= 150:
        e = sp.simplify(e)
    return e


@functools.cache
def moment_forms(expr: sp.Expr) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    r"""Closed forms of :math:`(E[f(x)], E[f(x)^2], E[f'(x)^2])` for :math:`x \sim \mathcal
    N(0, q)`, as expressions in :data:`symbols.q` (cached per expression).

    Raises:
        NoClosedForm: a term SymPy could not integrate (also ``NotImplementedError`` or
            ``sympy.PolynomialError`` from SymPy itself).
    """
    pieces = split_pieces(expr)
    grad_pieces = [(sp.diff(p, _x), lo, hi) for p, lo, hi in pieces]
    mean = _tidy(_moment(pieces, 1))
    second = _tidy(_moment(pieces, 2))
    grad2 = _tidy(_moment(grad_pieces, 2))
    return mean, second, grad2

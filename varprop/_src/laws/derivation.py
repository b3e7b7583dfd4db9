"""Step-by-step derivations of a scheme's layer law, rendered as text, Markdown or LaTeX.

:func:`derive` collects the steps as data (:class:`Derivation`); :meth:`Derivation.render`
formats them. Everything shown is computed by SymPy from the scheme and the activation.
"""

# SymPy's inline annotations are narrower than its API (subs() with a dict, Eq() returning
# Eq, Expr vs Basic results): these checks give false positives on SymPy code.
# pyright: reportArgumentType=false, reportCallIssue=false, reportReturnType=false
# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mpmath
import sympy as sp

from varprop._src.errors import InputError
from varprop._src.laws import activations as A
from varprop._src.laws import layers as Ly
from varprop._src.laws import symbols as S
from varprop._src.laws.latex import latex
from varprop._src.laws.schemes import Scheme

FORMATS = ("text", "markdown", "latex")


@dataclass(frozen=True)
class Step:
    """One step: a title, a sentence, and equations as (lhs, rhs) SymPy pairs."""

    title: str
    text: str
    equations: tuple[tuple[sp.Expr | str, sp.Expr], ...] = ()


@dataclass
class Derivation:
    """The derivation of one scheme + activation, and its conclusions as numbers."""

    scheme: Scheme
    activation: A.Activation
    fan_in: int | None
    fan_out: int | None
    steps: list[Step] = field(default_factory=list)
    forward_factor: float = math.nan
    backward_factor: float = math.nan
    forward_health: str = ""
    backward_health: str = ""
    #: The factors as exact SymPy numbers (for factors beyond float64: 5e-601).
    forward_factor_exact: sp.Expr | None = None
    backward_factor_exact: sp.Expr | None = None

    def render(self, fmt: str = "text") -> str:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
        return {"text": _render_text, "markdown": _render_markdown, "latex": _render_latex}[fmt](
            self
        )


def _num(x: float) -> str:
    return f"{x:.6g}"


def _widths(d: Derivation) -> dict:
    sub = {}
    if d.fan_in is not None:
        sub[S.fan_in] = d.fan_in
    if d.fan_out is not None:
        sub[S.fan_out] = d.fan_out
    elif d.fan_in is not None:
        sub[S.fan_out] = d.fan_in
    return sub


def derive(
    scheme: Scheme,
    activation: str | A.Activation = "relu",
    fan_in: int | None = None,
    fan_out: int | None = None,
) -> Derivation:
    """Derive, step by step, what ``scheme`` followed by ``activation`` does to a signal.

    Steps: Var(w) of the scheme; the activation's moments for z ~ N(0, q); the forward and
    backward laws and their per-layer factors (for the given widths, or symbolically and for
    a constant-width stack); the derived gain next to the conventional one; and what the
    factors mean over depth (preserved, vanishing, exploding, and where float32 gives out).

    Example:
        >>> from varprop import laws, initializers
        >>> d = laws.derive(initializers.he_normal().scheme, "relu")
        >>> d.forward_health, d.backward_health
        ('preserved', 'preserved')
    """
    act = A.get_activation(activation) if isinstance(activation, str) else activation
    for nm, v in (("fan_in", fan_in), ("fan_out", fan_out)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{nm} must be an int >= 1, got {v!r}")
    d = Derivation(scheme, act, fan_in, fan_out)
    sub = _widths(d)

    # 1. The scheme.
    vw = sp.Symbol("Var(w)", positive=True)
    eqs: list[tuple[sp.Expr | str, sp.Expr]] = [(vw, scheme.variance_expr)]
    if scheme.parameters:
        eqs.append((vw, scheme.law))
    if sub and scheme.uses_fans and scheme.distribution not in ("orthogonal", "delta_orthogonal"):
        eqs.append((vw, sp.nsimplify(scheme.law.subs(sub))))
    params = ", ".join(f"{k} = {_compact(v)}" for k, v in scheme.parameters.items())
    d.steps.append(
        Step(
            "Weight variance",
            f"{scheme.name} draws from a {scheme.distribution} distribution"
            + (f" with {params}" if params else "")
            + f". {scheme.description}",
            tuple(eqs),
        )
    )

    # 1b. The weights' mean, when it is not 0.
    mu = scheme.mean_law
    if mu != 0:
        fl, bl, ml = (
            Ly.forward_law_given_input(scheme),
            Ly.backward_law_given_gradient(scheme),
            Ly.forward_law_with_mean(scheme),
        )
        d.steps.append(
            Step(
                "Weights with a mean",
                "E[w] = mu is not 0, so the zero-mean law misses a term. Given one input x, "
                "z_j = sum_i x_i w_ij has mean mu S_1(x) and variance Var(w) S_2(x), with "
                "S_1(x) = sum_i x_i and S_2(x) = sum_i x_i^2; so E[z_j^2 | x] = Var(w) S_2(x) + "
                "mu^2 S_1(x)^2 (+ Var(b)). Backward, dL/dx_i = sum_j w_ij g_j gives the same "
                "with the sums of g = dL/dz. Over inputs with i.i.d. units, E[S_1^2] = n_in "
                "E[x^2] + n_in (n_in - 1) E[x]^2: the mean term grows like n_in^2 unless E[x] = 0.",
                (
                    (sp.Symbol("E[w]"), _tidy(mu)),
                    (fl.lhs, _tidy(fl.rhs)),
                    (bl.lhs, _tidy(bl.rhs)),
                    (ml.lhs, _tidy(ml.rhs)),
                ),
            )
        )

    reason = scheme.degenerate_reason()
    if reason is not None:
        d.steps.append(
            Step(
                "Degenerate scheme",
                f"{reason[0].upper()}{reason[1:]}: Var(w) = 0, so nothing breaks the symmetry "
                "between units. Every unit of a layer computes the same pre-activation and "
                "receives the same gradient, and gradient descent keeps them identical; with "
                "zero weights the gradient reaching hidden weights is exactly 0.",
            )
        )
        d.forward_health = d.backward_health = "degenerate"
        return d

    # 2. Activation moments.
    if act.closed_form:
        mean_e, m2_e, g2_e = A.moment_expressions(act)
        text = f"For z ~ N(0, q), the moments of {act.name} are derived in closed form by SymPy."
    else:
        mom = A.activation_moments(act, 1.0)
        mean_e, m2_e, g2_e = (
            sp.Float(v, 10) for v in (mom.mean, mom.second_moment, mom.grad_second_moment)
        )
        text = (
            f"{act.name} has no closed form here: the moments are computed by quadrature, "
            "shown at q = 1."
        )
    phi = sp.Function(act.name)
    z = sp.Symbol("z")
    d.steps.append(
        Step(
            "Activation moments",
            text,
            (
                (sp.Symbol(f"E[{act.name}(z)]"), mean_e),
                (sp.Symbol(f"E[{act.name}(z)^2]"), m2_e),
                (sp.Symbol(f"E[{act.name}'(z)^2]"), g2_e),
            ),
        )
    )
    del phi, z

    # 3. Forward law and factor.
    f = Ly.layer_factors(scheme, act, 1.0)
    fwd_eq = Ly.forward_law(scheme) if mu == 0 else Ly.forward_law_with_mean(scheme)
    chi_f = sp.Symbol("chi_forward", positive=True)
    chi_b = sp.Symbol("chi_backward", positive=True)
    f_eqs: list[tuple[sp.Expr | str, sp.Expr]] = [
        (fwd_eq.lhs, fwd_eq.rhs),
        (chi_f, f.forward),
    ]
    if sub:
        f_eqs.append((chi_f, _tidy(f.forward.subs(sub))))
    elif f.forward != f.forward_square:
        f_eqs.append((sp.Symbol("chi_forward (n_out = n_in)"), f.forward_square))
    q_note = "" if f.q is None else " (evaluated at q = 1: the map is not homogeneous)"
    d.steps.append(
        Step(
            "Forward pass",
            "The pre-activation of the next layer has E[z^2] = n_in Var(w) E[phi(z)^2] "
            "(+ Var(b)); with bias 0 and E[x] = 0 this is Var(y) = n Var(w) Var(x). The "
            f"per-layer factor is chi_forward = n_in Var(w) E[phi(z)^2] / q{q_note}.",
            tuple(f_eqs),
        )
    )

    # 4. Backward law and factor.
    bwd_eq = Ly.backward_law(scheme, act)
    b_eqs: list[tuple[sp.Expr | str, sp.Expr]] = [(bwd_eq.lhs, bwd_eq.rhs), (chi_b, f.backward)]
    if sub:
        b_eqs.append((chi_b, _tidy(f.backward.subs(sub))))
    else:
        b_eqs.append((sp.Symbol("chi_backward (n_out = n_in)"), f.backward_square))
    d.steps.append(
        Step(
            "Backward pass",
            "The gradient reaching a layer's input has E[(dL/dx)^2] = n_out Var(w) "
            "E[phi'(z)^2] E[(dL/dh)^2] (gradient independence assumed): the per-layer factor is "
            "chi_backward = n_out Var(w) E[phi'(z)^2].",
            tuple(b_eqs),
        )
    )

    # 5. Gain.
    g_der = A.gain(act)
    g_exact = A.gain_expr(act)
    g_conv = A.conventional_gain(act)
    g_eqs: list[tuple[sp.Expr | str, sp.Expr]] = [
        (sp.Symbol("g_derived"), g_exact if g_exact is not None else sp.Float(g_der, 10))
    ]
    if g_conv is not None:
        g_eqs.append((sp.Symbol("g_conventional"), sp.Float(g_conv, 10)))
    d.steps.append(Step("Gain", A.gain_comparison(act), tuple(g_eqs)))

    # 6. Depth. The factors stay exact SymPy numbers (a std of 1e-300 gives 1e-600, which
    # no float holds); floats are taken only for the record and the classification.
    widths_sub = sub or {S.fan_out: S.fan_in}
    ff_e = sp.sympify(f.forward.subs(widths_sub).subs(S.fan_in, fan_in or 1))
    fb_e = sp.sympify(f.backward.subs(widths_sub).subs(S.fan_in, fan_in or 1))
    ff, fb = _as_float(ff_e), _as_float(fb_e)
    d.forward_factor, d.backward_factor = ff, fb
    d.forward_factor_exact, d.backward_factor_exact = ff_e, fb_e
    if act.homogeneous or mu != 0:
        # With E[w] != 0 the mean-field map of centred pre-activations does not apply: the
        # q = 1 factors (the first layer's law) are classified instead.
        d.forward_health = Ly.classify_factor(ff, 1e-12)
        d.backward_health = Ly.classify_factor(fb, 1e-12)
        lines = [
            _depth_sentence("Forward", ff_e, d.forward_health),
            _depth_sentence("Backward", fb_e, d.backward_health),
        ]
    else:
        # The factor depends on q: iterate the mean-field map instead of powering it.
        n_vw_e = sp.sympify(
            (S.fan_in * Ly.weight_variance(scheme)).subs(widths_sub).subs(S.fan_in, fan_in or 1)
        )
        n_vw = _as_float(n_vw_e)
        if not (MEAN_FIELD_RANGE[0] <= n_vw <= MEAN_FIELD_RANGE[1]):
            raise InputError(
                f"n_in Var(w) = {_num_exact(n_vw_e)} for {scheme.name} is outside "
                f"[{MEAN_FIELD_RANGE[0]:g}, {MEAN_FIELD_RANGE[1]:g}], the range where the "
                f"mean-field map of {act.name} (not homogeneous) is iterated in float64; "
                "allowed: a scheme and widths with n_in Var(w) in that range",
                kind="numerics",
            )
        fp = Ly.mean_field_fixed_point(act, n_vw)
        if math.isinf(fp.q_star):
            d.forward_health = "exploding"
        elif fp.q_star < 1e-3:
            d.forward_health = "vanishing"
        else:
            d.forward_health = "preserved"
        d.backward_health = (
            Ly.classify_factor(fp.chi, 1e-3) if math.isfinite(fp.chi) else "exploding"
        )
        lines = [
            f"{act.name} is not homogeneous, so the factors above hold at q = 1 only. Iterating "
            f"the mean-field map q -> {_num(n_vw)} E[{act.name}(sqrt(q) z)^2] from q = 1 gives "
            f"q = {_num(fp.q_star)} after {fp.iterations} layers "
            + (
                "(it decays towards the fixed point q* = 0, slower than geometrically)"
                if d.forward_health == "vanishing"
                else "(its fixed point q*)"
                if d.forward_health == "preserved"
                else "(it diverges)"
            )
            + f"; there the backward factor is chi_1 = {_num(fp.chi)}, so gradients are "
            f"{d.backward_health} over depth."
        ]
    widths = f"n_in = {fan_in}, n_out = {fan_out or fan_in}" if fan_in else "n_out = n_in"
    d.steps.append(Step(f"Over depth ({widths})", " ".join(lines)))
    return d


def _tidy(e: sp.Expr) -> sp.Expr:
    """Exact numbers stay exact; an expression with floats is shown to 10 digits."""
    floats = e.atoms(sp.Float)
    if floats:
        return e.xreplace({f: sp.Float(f, 10) for f in floats})
    return sp.nsimplify(e)


#: n_in Var(w) for which the mean-field map of a non-homogeneous activation is iterated.
MEAN_FIELD_RANGE = (1e-300, 1e300)


def _as_float(e: sp.Expr) -> float:
    """float(e), with 0.0 / inf for exact numbers beyond float64 instead of an error."""
    try:
        return float(e)
    except OverflowError:
        return math.inf if e.is_positive else -math.inf


def _num_exact(e: sp.Expr) -> str:
    """6 significant digits of an exact number, also beyond float64 (5e-601)."""
    v = _as_float(e)
    if v != 0 and math.isfinite(v):
        return _num(v)
    return mpmath.nstr(mpmath.mpf(sp.Float(e, 20)._mpf_), 6)


def _depth_sentence(direction: str, factor: sp.Expr, health: str) -> str:
    if health == "preserved":
        return f"{direction}: factor 1, the second moment is preserved at any depth."
    kind, layer = Ly.float32_limit_layer(factor)
    x = _num_exact(factor)
    return (
        f"{direction}: factor {x} per layer, {health} "
        f"(x{x}^L after L layers; from E = 1, float32 {kind}s at layer {layer})."
    )


def _compact(e):
    """Rationals with more than 12 digits shown as 10-digit floats (1/10**600 -> 1.0e-600)."""
    if not isinstance(e, sp.Basic):
        return e
    big = {
        r: sp.Float(r, 10) for r in e.atoms(sp.Rational) if max(abs(int(r.p)), int(r.q)) > 10**12
    }
    return e.xreplace(big) if big else e


# -- rendering -----------------------------------------------------------------------------


def _lhs(x) -> str:
    return str(x)


def _render_text(d: Derivation) -> str:
    out = [f"Derivation: {d.scheme.name} with {d.activation.name}", ""]
    for i, st in enumerate(d.steps, 1):
        out.append(f"{i}. {st.title}")
        out.append(f"   {st.text}")
        for lhs, rhs in st.equations:
            out.append(f"     {_lhs(lhs)} = {sp.sstr(_compact(rhs))}")
        out.append("")
    show = d.activation.homogeneous

    def per_layer(health: str, value: float, exact: sp.Expr | None) -> str:
        if not show or health in ("preserved", "degenerate"):
            return health
        return f"{health} (x{_num(value) if exact is None else _num_exact(exact)} per layer)"

    fwd = per_layer(d.forward_health, d.forward_factor, d.forward_factor_exact)
    bwd = per_layer(d.backward_health, d.backward_factor, d.backward_factor_exact)
    out.append(f"Verdict: forward {fwd}, backward {bwd}.")
    return "\n".join(out)


def _tex_lhs(x) -> str:
    return latex(x)


def _render_markdown(d: Derivation) -> str:
    out = [f"# Derivation: `{d.scheme.name}` with `{d.activation.name}`", ""]
    for i, st in enumerate(d.steps, 1):
        out.append(f"## {i}. {st.title}")
        out.append("")
        out.append(st.text)
        out.append("")
        for lhs, rhs in st.equations:
            out.append(f"$$ {_tex_lhs(lhs)} = {latex(_compact(rhs))} $$")
        out.append("")
    out.append(f"**Forward:** {d.forward_health}. **Backward:** {d.backward_health}.")
    return "\n".join(out)


def _render_latex(d: Derivation) -> str:
    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("^", r"\^{}").replace("&", r"\&").replace("#", r"\#")

    out = [rf"\section*{{Derivation: {esc(d.scheme.name)} with {esc(d.activation.name)}}}"]
    for i, st in enumerate(d.steps, 1):
        out.append(rf"\subsection*{{{i}. {esc(st.title)}}}")
        out.append(esc(st.text))
        if st.equations:
            out.append(r"\begin{align*}")
            out.append(
                " \\\\\n".join(
                    f"{_tex_lhs(lhs)} &= {latex(_compact(rhs))}" for lhs, rhs in st.equations
                )
            )
            out.append(r"\end{align*}")
    out.append(rf"\paragraph{{Verdict}} forward {d.forward_health}, backward {d.backward_health}.")
    return "\n".join(out)

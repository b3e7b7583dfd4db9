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
from collections.abc import Sequence
from dataclasses import dataclass, field

import mpmath
import sympy as sp

from varprop._src.errors import InputError
from varprop._src.laws import activation_gains as AG
from varprop._src.laws import activation_moments as AM
from varprop._src.laws import activations as A
from varprop._src.laws import layers as Ly
from varprop._src.laws import symbols as S
from varprop._src.laws.latex import latex
from varprop._src.laws.propagation import Propagation, propagate
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
    """The derivation of one scheme + activation, and its conclusions as numbers.

    ``forward_factor``/``backward_factor`` are the per-layer factors the health is read
    from: without widths those of a constant-width stack (also exact, in the ``_exact``
    fields); with widths those of :attr:`propagation` over the real sequence's hidden stack
    (1.0 when nothing compounds). ``fan_in``/``fan_out`` are the layers' fans when all the
    layers share them (else None).
    """

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
    #: The real sequence (channel counts with a ``kernel``), when one was given (a single
    #: layer for ``fan_in``/``fan_out``), and its end-to-end law.
    widths: tuple[int, ...] | None = None
    kernel: tuple[int, ...] = ()
    propagation: Propagation | None = None

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
    *,
    widths: Sequence[int] | None = None,
    kernel: Sequence[int] = (),
    batch: int = 64,
) -> Derivation:
    """Derive, step by step, what ``scheme`` followed by ``activation`` does to a signal.

    Steps: Var(w) of the scheme; the activation's moments for z ~ N(0, q); the forward and
    backward laws and their per-layer factors; the derived gain next to the conventional
    one; and what they mean end to end.

    Without widths the layer is symbolic and the last step reads the factors over depth for
    a constant-width stack (n_out = n_in). With ``widths`` (channel counts when a conv
    ``kernel`` such as ``(3, 3)`` is given: fan_in = c_in kh kw, fan_out = c_out kh kw;
    borders and strides are not modelled) or with ``fan_in``/``fan_out`` (exactly one layer,
    ``fan_out`` defaulting to ``fan_in``), the real sequence is derived by
    :func:`~varprop.laws.propagate`: each layer's factors with its own fans, the end-to-end
    moments from E[x^2] = 1, the float32 limits for ``batch`` examples, and the health of the
    sequence (nothing compounds over a single layer).

    Example:
        >>> from varprop import laws, initializers
        >>> d = laws.derive(initializers.he_normal().scheme, "relu")
        >>> d.forward_health, d.backward_health
        ('preserved', 'preserved')
        >>> d = laws.derive(initializers.he_normal().scheme, "relu", 288, 576)  # one layer
        >>> d.backward_health, round(d.propagation.input_gradient, 12)  # x4 once: no depth
        ('preserved', 4.0)
    """
    act = A.get_activation(activation) if isinstance(activation, str) else activation
    for nm, v in (("fan_in", fan_in), ("fan_out", fan_out), ("batch", batch)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{nm} must be an int >= 1, got {v!r}")
    if fan_out is not None and fan_in is None:
        raise ValueError("fan_out needs fan_in")
    kernel = tuple(kernel)
    if widths is not None and fan_in is not None:
        raise ValueError("give either widths or fan_in/fan_out, not both")
    if kernel and widths is None:
        raise ValueError("a kernel needs widths (the channel counts)")
    if widths is None and fan_in is not None:
        widths = (fan_in, fan_out or fan_in)
    if widths is not None:
        widths = tuple(widths)
        if len(widths) < 2 or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in (*widths, *kernel)
        ):
            raise ValueError(
                f"widths need an input and an output width and a kernel whole numbers >= 1, "
                f"got widths {list(widths)}, kernel {list(kernel)}"
            )
    taps = math.prod(kernel)
    fans = (
        sorted({(widths[i] * taps, widths[i + 1] * taps) for i in range(len(widths) - 1)})
        if widths is not None
        else []
    )
    one_pair = fans[0] if len(fans) == 1 else None
    d = Derivation(
        scheme,
        act,
        one_pair[0] if one_pair else None,
        one_pair[1] if one_pair else None,
        widths=widths,
        kernel=kernel,
    )
    sub = _widths(d)

    # 1. The scheme.
    vw = sp.Symbol("Var(w)", positive=True)
    eqs: list[tuple[sp.Expr | str, sp.Expr]] = [(vw, scheme.variance_expr)]
    if scheme.parameters:
        eqs.append((vw, scheme.law))
    if sub and scheme.uses_fans and not scheme.distribution.is_orthogonal:
        eqs.append((vw, sp.nsimplify(scheme.law.subs(sub))))
    params = ", ".join(f"{k} = {_compact(v)}" for k, v in scheme.parameters.items())
    d.steps.append(
        Step(
            "Weight variance",
            f"{scheme.name} draws from a {scheme.distribution} distribution"
            + (f" with {params}" if params else "")
            + f". {scheme.description}",
            _unique(eqs),
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
    if reason is None and widths is not None:
        reason = _degenerate_layer(scheme, widths, kernel)
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
        mean_e, m2_e, g2_e = AM.moment_expressions(act)
        text = f"For z ~ N(0, q), the moments of {act.name} are derived in closed form by SymPy."
    else:
        mom = AM.activation_moments(act, 1.0)
        mean_e, m2_e, g2_e = (
            sp.Float(v, 10) for v in (mom.mean, mom.second_moment, mom.grad_second_moment)
        )
        text = (
            f"{act.name} has no closed form here: the moments are computed by quadrature, "
            "shown at q = 1."
        )
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
    elif widths is None and f.forward != f.forward_square:
        f_eqs.append((sp.Symbol("chi_forward (n_out = n_in)"), f.forward_square))
    q_note = "" if f.q is None else " (evaluated at q = 1: the map is not homogeneous)"
    d.steps.append(
        Step(
            "Forward pass",
            "The pre-activation of the next layer has E[z^2] = n_in Var(w) E[phi(z)^2] "
            "(+ Var(b)); with bias 0 and E[x] = 0 this is Var(y) = n Var(w) Var(x). The "
            f"per-layer factor is chi_forward = n_in Var(w) E[phi(z)^2] / q{q_note}.",
            _unique(f_eqs),
        )
    )

    # 4. Backward law and factor.
    bwd_eq = Ly.backward_law(scheme, act)
    b_eqs: list[tuple[sp.Expr | str, sp.Expr]] = [(bwd_eq.lhs, bwd_eq.rhs), (chi_b, f.backward)]
    if sub:
        b_eqs.append((chi_b, _tidy(f.backward.subs(sub))))
    elif widths is None:
        b_eqs.append((sp.Symbol("chi_backward (n_out = n_in)"), f.backward_square))
    d.steps.append(
        Step(
            "Backward pass",
            "The gradient reaching a layer's input has E[(dL/dx)^2] = n_out Var(w) "
            "E[phi'(z)^2] E[(dL/dh)^2] (gradient independence assumed): the per-layer factor is "
            "chi_backward = n_out Var(w) E[phi'(z)^2].",
            _unique(b_eqs),
        )
    )

    # 5. Gain.
    g_der = AG.gain(act)
    g_exact = AG.gain_expr(act)
    g_conv = AG.conventional_gain(act)
    g_eqs: list[tuple[sp.Expr | str, sp.Expr]] = [
        (sp.Symbol("g_derived"), g_exact if g_exact is not None else sp.Float(g_der, 10))
    ]
    if g_conv is not None:
        g_eqs.append((sp.Symbol("g_conventional"), sp.Float(g_conv, 10)))
    d.steps.append(Step("Gain", AG.gain_comparison(act), tuple(g_eqs)))

    if widths is not None:
        _derive_sequence(d, f, widths, kernel, batch)
    else:
        _derive_stack(d, f, mu)
    return d


def _derive_stack(d: Derivation, f: Ly.LayerFactors, mu: sp.Expr) -> None:
    """The last step without widths: the factors over depth of a constant-width stack."""
    scheme, act = d.scheme, d.activation
    # The factors stay exact SymPy numbers (a std of 1e-300 gives 1e-600, which no float
    # holds); floats are taken only for the record and the classification.
    widths_sub = {S.fan_out: S.fan_in}
    ff_e = sp.sympify(f.forward.subs(widths_sub).subs(S.fan_in, 1))
    fb_e = sp.sympify(f.backward.subs(widths_sub).subs(S.fan_in, 1))
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
            (S.fan_in * Ly.weight_variance(scheme)).subs(widths_sub).subs(S.fan_in, 1)
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
        d.backward_health = Ly.classify_factor(fp.chi, 1e-3)
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
    d.steps.append(Step("Over depth (n_out = n_in)", " ".join(lines)))


def _degenerate_layer(scheme: Scheme, widths: tuple[int, ...], kernel: tuple[int, ...]):
    """Why a layer of the sequence is degenerate (its weights round to zero), else None.
    Weights beyond float64 are not degenerate: the end-to-end step says where they overflow."""
    for shape in dict.fromkeys((*kernel, widths[i], widths[i + 1]) for i in range(len(widths) - 1)):
        try:
            reason = scheme.degenerate_reason(shape)
        except InputError as e:
            if e.kind != "numerics":
                raise
            continue
        if reason is not None:
            return reason
    return None


def _unique(eqs: list[tuple[sp.Expr | str, sp.Expr]]) -> tuple[tuple[sp.Expr | str, sp.Expr], ...]:
    """The equations without repeats (``chi_forward = 1`` once, not once per form)."""
    out: list[tuple[sp.Expr | str, sp.Expr]] = []
    for lhs, rhs in eqs:
        if all(str(lhs) != str(a) or sp.sstr(rhs) != sp.sstr(b) for a, b in out):
            out.append((lhs, rhs))
    return tuple(out)


def _groups(widths: tuple[int, ...], taps: int) -> list[tuple[int, int, int, int]]:
    """Runs of consecutive layers with the same fans: ``(first, last, fan_in, fan_out)``."""
    out: list[tuple[int, int, int, int]] = []
    for i in range(len(widths) - 1):
        n_in, n_out = widths[i] * taps, widths[i + 1] * taps
        if out and out[-1][2:] == (n_in, n_out):
            out[-1] = (out[-1][0], i + 1, n_in, n_out)
        else:
            out.append((i + 1, i + 1, n_in, n_out))
    return out


def _layers(first: int, last: int) -> str:
    return f"layer {first}" if first == last else f"layers {first}-{last}"


def _compress(widths: tuple[int, ...]) -> str:
    """``(784, 512, 512, 512, 10)`` -> ``784,512x3,10`` (the ``--widths`` syntax)."""
    out: list[list[int]] = []
    for w in widths:
        if out and out[-1][0] == w:
            out[-1][1] += 1
        else:
            out.append([w, 1])
    return ",".join(str(w) if n == 1 else f"{w}x{n}" for w, n in out)


def _derive_sequence(
    d: Derivation, f: Ly.LayerFactors, widths: tuple[int, ...], kernel: tuple[int, ...], batch: int
) -> None:
    """The last steps with widths: each layer's factors with its real fans, then the
    end-to-end law of the sequence (:func:`~varprop.laws.propagate`)."""
    act = d.activation
    L = len(widths) - 1
    taps = math.prod(kernel)
    groups = _groups(widths, taps)
    q_note = "" if f.q is None else " (at q = 1: the map is not homogeneous)"
    if len({g[2:] for g in groups}) > 1:
        eqs: list[tuple[sp.Expr | str, sp.Expr]] = []
        for first, last, n_in, n_out in groups:
            sub = {S.fan_in: n_in, S.fan_out: n_out}
            eqs.append((f"chi_forward ({_layers(first, last)})", _tidy(f.forward.subs(sub))))
            eqs.append((f"chi_backward ({_layers(first, last)})", _tidy(f.backward.subs(sub))))
        parts = [f"{_layers(a, b)}: {n_in} -> {n_out}" for a, b, n_in, n_out in groups]
        d.steps.append(
            Step(
                "Layer by layer",
                "Each layer's factors with its own fans (fan_in -> fan_out): "
                + "; ".join(parts)
                + f"{q_note}. A factor acts once per layer: only a run of layers compounds.",
                _unique(eqs),
            )
        )
    conv = f", {'x'.join(map(str, kernel))} kernel" if kernel else ""
    if L == 1:
        fans = f", fans {widths[0] * taps} -> {widths[1] * taps}" if kernel else ""
        unit = " channels" if kernel else ""
        title = f"End to end (1 layer: {widths[0]} -> {widths[1]}{unit}{conv}{fans})"
    else:
        title = f"End to end ({L} layers: widths {_compress(widths)}{conv})"
    try:
        p = propagate(widths, act, d.scheme, batch=batch, kernel=kernel)
    except InputError as e:
        if e.kind != "numerics":
            raise
        # Var(w) beyond float64: the first layer's values are already far beyond float32.
        n_in, n_out = groups[0][2:]
        sub = {S.fan_in: n_in, S.fan_out: n_out}
        ff_e, fb_e = sp.sympify(f.forward.subs(sub)), sp.sympify(f.backward.subs(sub))
        d.forward_factor_exact, d.backward_factor_exact = ff_e, fb_e
        d.forward_factor, d.backward_factor = _as_float(ff_e), _as_float(fb_e)
        d.forward_health = Ly.classify_factor(d.forward_factor)
        d.backward_health = Ly.classify_factor(d.backward_factor)
        kind, layer = Ly.float32_limit_layer(ff_e, count=batch * widths[1])
        d.steps.append(
            Step(
                title,
                f"Var(w) is beyond float64 ({e}); layer 1 multiplies E[x^2] by "
                f"{_num_exact(ff_e)}, so float32 {kind}s at layer {layer}.",
            )
        )
        return
    d.propagation = p
    d.forward_factor, d.backward_factor = p.forward_factor, p.backward_factor
    d.forward_health, d.backward_health = p.forward_health, p.backward_health
    q, g = p.forward, p.backward
    text = [
        f"From E[x^2] = 1 at the input, {_propagated(q, 'E[z_l^2]', L)}; with "
        f"E[(dL/dh_L)^2] = 1 at the output, {_propagated(g, 'E[(dL/dz_l)^2]', L)} and "
        f"E[(dL/dx)^2] = {_num(p.input_gradient)} at the input."
    ]
    if p.steps == 0:
        text.append(
            "With fewer than two hidden layers to compare nothing compounds: each factor acts "
            "once, and both directions count as preserved."
        )
    else:
        sl = range(L)[slice(1, L - 1) if L >= 4 else slice(0, L - 1)]
        text.append(
            f"Over the hidden stack ({_layers(sl[0] + 1, sl[-1] + 1)}, {p.steps} steps) E[z^2] "
            f"changes by x{_num(p.forward_factor)} per layer ({p.forward_health}) and "
            f"E[(dL/dz)^2], read from the output back, by x{_num(p.backward_factor)} per "
            f"layer ({p.backward_health})."
        )
    if p.fixed_point is not None:
        fp = p.fixed_point
        text.append(
            f"{act.name} is not homogeneous: the hidden-to-hidden map "
            f"q -> n_in Var(w) E[{act.name}(sqrt(q) z)^2] has its fixed point "
            f"q* = {_num(fp.q_star)}, where the backward factor is chi_1 = {_num(fp.chi)}."
        )
    if p.first_nonfinite is not None:
        text.append(
            f"For a batch of {batch}, float32 overflows at layer {p.first_nonfinite} "
            "(its largest value passes 3.4e38)."
        )
    elif p.first_underflow is not None:
        text.append(
            f"For a batch of {batch}, float32 underflows at layer {p.first_underflow} "
            "(every product x_i w_ij is below 1.2e-38 and flushes to zero)."
        )
    else:
        text.append(f"For a batch of {batch}, no layer leaves float32.")
    if kernel:
        text.append(
            "The conv layers are read as dense layers with the kernel's fans: borders, "
            "padding and strides are not modelled."
        )
    d.steps.append(Step(title, " ".join(text)))


def _propagated(v, name: str, L: int) -> str:
    if L == 1:
        return f"{name.replace('_l', '_1')} = {_num(float(v[0]))}"
    return f"{name} goes from {_num(float(v[0]))} at layer 1 to {_num(float(v[-1]))} at layer {L}"


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

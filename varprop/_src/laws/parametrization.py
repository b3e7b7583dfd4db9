r"""Parametrizations as laws: abc-exponents in the width, and the width exponents they imply.

An **abc-parametrization** (Yang & Hu, "Tensor Programs IV: Feature Learning in
Infinite-Width Neural Networks", ICML 2021, Sec. 3) of a network of width n writes each
weight matrix as a multiplier times a trainable parameter and gives the learning rate its own
power of the width:

.. math::

    W^l = n^{-a_l}\,w^l, \qquad w^l_{ij} \sim N(0, n^{-2 b_l}), \qquad
    \eta_l = \eta_0\, n^{-c_l}.

Exponents are declared per layer **role** (:class:`Role`): the *input* layer (fan-in d fixed,
fan-out n: an embedding), *hidden* layers (n to n) and the *output* layer (n to a fixed k: the
readout). The input dimension, the output dimension, the batch and the number of steps t are
fixed while n grows. Each optimizer has its own c (:class:`Optimizer`): SGD moves w by
:math:`\eta\,\partial L/\partial w`, Adam by :math:`\eta` times a sign-like vector whose entries
are Θ(1) whatever the gradient's size (its ε taken negligible).

**What is predicted.** "Size" is the size of a typical coordinate, written as its exponent e
in :math:`\Theta(n^e)`: for each layer l, the pre-activation :math:`h^l` (the output
:math:`f` for the readout) at init, the change :math:`\Delta h^l = h^l_t - h^l_0` after t
steps on a fixed batch (what the coordinate check of Yang et al. 2022, Sec. 7.2, measures
across widths), and the relative weight change :math:`\|\Delta W^l\| / \|W^l_0\|`
(Frobenius and spectral). :func:`predict_widths` derives them from the exponents by the rules
below, with SymPy ``Max`` over exponents: numbers give numbers, symbols give the formulas.

**Rules** (σ_l = n^{-(a_l+b_l)} the size of an entry of :math:`W^l`; :math:`e^{in}_l,
e^{out}_l \in \{0, 1\}` whether the fan-in, fan-out grows with n):

1. *Init, a sum of independent terms* (central limit):
   :math:`h^l = W^l x^{l-1}` has size :math:`n^{e^{in}_l/2}\,\sigma_l\,|x^{l-1}|`, so
   :math:`A_l = e^{in}_l/2 - a_l - b_l + A_{l-1}`, :math:`A_0 = 0` (the data).
2. *Backward*: :math:`g^l = \partial f/\partial h^l` has :math:`G_{L+1} = 0` and
   :math:`G_{l-1} = \max(e^{out}_l/2 - a_l - b_l,\ D_l + e^{out}_l) + G_l`: the initial
   weights act as a random sum (readout: no sum, its entry), the accumulated update
   :math:`\Delta W^l` (entries :math:`n^{D_l}`) as a *coherent* sum over the fan-out,
   because it is built from earlier gradients correlated with this one.
3. *The update's entries*: :math:`\partial L/\partial W^l = L'\,g^l x^{l-1\top}` has entries
   :math:`n^{\lambda + G_l + A_{l-1}}` (λ the exponent of the loss derivative: 0 for
   cross-entropy and a linear loss, :math:`\max(0, A_f)` for the squared loss), and since
   :math:`\partial L/\partial w = n^{-a}\,\partial L/\partial W`,

   .. math:: \delta_l = -a_l - c_l + p\,(\lambda + G_l + A_{l-1} - a_l),

   p = 1 for SGD (:math:`\delta = -2a - c + \ldots`, the multiplier acts twice) and p = 0 for
   Adam (:math:`\delta = -a - c`, scale-free). :math:`D_l` is the max of δ over the steps.
4. *Forward after an update* (Law of Large Numbers for correlated vectors):
   :math:`\Delta h^l = W^l_0\,\Delta x^{l-1} + \Delta W^l x^{l-1}`. The second term sums
   :math:`e^{in}_l` coherent terms: :math:`D_l + e^{in}_l + A_{l-1}` (for SGD at step 1:
   :math:`-2a - c + G + 1` for a hidden layer, the n from the sum over the correlated input
   coordinates; for Adam :math:`-a - c + 1`). The first term is :math:`1/2 - a - b + U_{l-1}`
   for an n-by-n matrix (it acts on any vector at its operator norm :math:`\sqrt{n}\,\sigma`)
   and :math:`1 - a - b + U_L` for the readout, whose weights are correlated with
   :math:`\Delta x^L` (a coherent sum: this is why μP initializes the readout with variance
   :math:`1/n^2`). So :math:`U_l = \max(\cdot,\cdot)`, and the activation after the step is
   :math:`\max(A_l(0), U_l)`.
5. *Relative change*: :math:`\|\Delta W\|_F/\|W_0\|_F = n^{D_l + a_l + b_l}` (both have entries
   of one size over the same shape); the spectral ratio adds 1/2 for a hidden layer (the
   update has finite rank, so its spectral and Frobenius norms agree, while
   :math:`\|W_0\|_2 \approx 2\sqrt{n}\sigma` against :math:`\|W_0\|_F = n\sigma`).

Activations are taken positively homogeneous of degree 1 (ReLU, identity): :math:`\phi(h)`
has the size of h and :math:`\phi'` is Θ(1). "Size" assumes no cancellation (the generic
case). ``update`` is the exponent as :math:`n \to \infty` at fixed :math:`\eta_0` and t;
``update_first_order`` that of the term linear in :math:`\eta_0` (the update computed with the
initial activations, which a coordinate check shows while :math:`\eta_0 n^{e} \ll 1`). They
agree for every stable parametrization; for an unstable one the blow-up compounds through the
layers and the steps, the first-order exponent is what moderate widths show and the other
what they tend to.

**Symmetry**: :math:`(a, b, c) \to (a + \theta, b - \theta, c - (1 + p)\theta)` leaves the
network and its training unchanged (:meth:`Parametrization.shifted`), so every prediction is
invariant under it.

Nothing here imports JAX.
"""

# SymPy's inline annotations are narrower than its API (Max of Exprs, Rational arithmetic):
# these checks give false positives on SymPy code.
# pyright: reportArgumentType=false, reportCallIssue=false, reportReturnType=false
# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false, reportOperatorIssue=false

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import sympy as sp

from varprop._src.laws.latex import latex

#: The width n, and the base width n_0 of a width sweep (the width the exponents are read from).
WIDTH = sp.Symbol("n", positive=True, integer=True)
BASE_WIDTH = sp.Symbol("n_0", positive=True, integer=True)

_HALF = sp.Rational(1, 2)
_NONE = sp.S.NegativeInfinity  # the exponent of a quantity that is exactly zero

TP4 = (
    "Yang & Hu, 'Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks', ICML 2021"
)
TP5 = (
    "Yang, Hu, Babuschkin, Sidor, Liu, Farhi, Ryder, Pachocki, Chen & Gao, 'Tensor Programs V: "
    "Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer', NeurIPS 2021 (2022)"
)


# --------------------------------------------------------------------------------------
# Records: roles, optimizers, losses.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """Where a weight sits: which of its fans grow with the width.

    Attributes:
        name: ``"input"``, ``"hidden"`` or ``"output"``.
        fan_in_grows: the fan-in is the width n (hidden, output) or fixed (input: d).
        fan_out_grows: the fan-out is n (input, hidden) or fixed (output: k).
    """

    name: str
    fan_in_grows: bool
    fan_out_grows: bool

    @property
    def e_in(self) -> sp.Integer:
        return sp.Integer(int(self.fan_in_grows))

    @property
    def e_out(self) -> sp.Integer:
        return sp.Integer(int(self.fan_out_grows))

    @property
    def correlated_sum(self) -> sp.Rational:
        """Exponent of :math:`|W_0 v| / (\\sigma |v|)` for a v correlated with W_0 (rule 4)."""
        if self.fan_in_grows and not self.fan_out_grows:
            return sp.Integer(1)  # the readout: a coherent sum of n terms
        return self.e_in / 2  # a square matrix at its operator norm; the input layer: d terms


INPUT = Role("input", fan_in_grows=False, fan_out_grows=True)
HIDDEN = Role("hidden", fan_in_grows=True, fan_out_grows=True)
OUTPUT = Role("output", fan_in_grows=True, fan_out_grows=False)
ROLES = (INPUT, HIDDEN, OUTPUT)


@dataclass(frozen=True)
class Optimizer:
    """How an optimizer's step scales with the gradient: Δw = η n^{-c} (∂L/∂w)^p in size.

    Attributes:
        name: ``"sgd"`` or ``"adam"``.
        gradient_power: p = 1 for SGD (the step is the gradient), 0 for Adam (the step
            :math:`\\hat m/\\sqrt{\\hat v}` has Θ(1) entries, whatever the gradient's scale,
            when ε is negligible; Kingma & Ba, ICLR 2015).
    """

    name: str
    gradient_power: int


SGD = Optimizer("sgd", gradient_power=1)
ADAM = Optimizer("adam", gradient_power=0)
OPTIMIZERS = (SGD, ADAM)


@dataclass(frozen=True)
class Loss:
    """The loss derivative's size: Θ(1), or growing with the output.

    Attributes:
        name: ``"squared"`` (L' = f - y grows with f), ``"cross_entropy"`` (softmax minus a
            one-hot: bounded, taken Θ(1)) or ``"linear"`` (L = f·v: L' = v).
    """

    name: str
    derivative_follows_output: bool


SQUARED = Loss("squared", derivative_follows_output=True)
CROSS_ENTROPY = Loss("cross_entropy", derivative_follows_output=False)
#: L = f·v with a fixed v: L' = v whatever f (the coordinate check's cleanest probe).
LINEAR = Loss("linear", derivative_follows_output=False)
LOSSES = (SQUARED, CROSS_ENTROPY, LINEAR)


def _named(kind: str, value, records: Sequence):
    if isinstance(value, (Role, Optimizer, Loss, Parametrization)):
        return value
    for r in records:
        if r.name == value:
            return r
    names = ", ".join(r.name for r in records)
    raise ValueError(f"unknown {kind} {value!r}; allowed: {names}")


def role_named(name: str | Role) -> Role:
    """The declared :class:`Role` of ``name`` (``"input"``, ``"hidden"``, ``"output"``)."""
    return _named("role", name, ROLES)


def optimizer_named(name: str | Optimizer) -> Optimizer:
    """The declared :class:`Optimizer` of ``name`` (``"sgd"``, ``"adam"``)."""
    return _named("optimizer", name, OPTIMIZERS)


# --------------------------------------------------------------------------------------
# The parametrization record.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerExponents:
    r"""The abc-exponents of one role: :math:`W = n^{-a} w`, :math:`w \sim N(0, n^{-2b})`,
    :math:`\eta = \eta_0 n^{-c}` (``c_sgd`` with SGD, ``c_adam`` with Adam)."""

    a: sp.Expr
    b: sp.Expr
    c_sgd: sp.Expr
    c_adam: sp.Expr

    def __post_init__(self):
        for f in ("a", "b", "c_sgd", "c_adam"):
            object.__setattr__(self, f, sp.nsimplify(sp.sympify(getattr(self, f))))

    def c(self, optimizer: str | Optimizer) -> sp.Expr:
        return self.c_sgd if optimizer_named(optimizer) is SGD else self.c_adam


def _exps(a, b, c_sgd, c_adam) -> LayerExponents:
    return LayerExponents(a, b, c_sgd, c_adam)


@dataclass(frozen=True)
class Parametrization:
    r"""An abc-parametrization: the exponents of each :class:`Role`, with its source.

    Declared: :data:`SP`, :data:`NTK`, :data:`MUP` (:data:`PARAMETRIZATIONS`). Build your own
    with any SymPy numbers or symbols; :func:`predict_widths` derives what it implies.

    Example:
        >>> MUP.output, MUP.lr_exponent("hidden", "adam")
        (LayerExponents(a=0, b=1, c_sgd=1, c_adam=1), 1)
        >>> print(MUP.markdown().splitlines()[2])
        | input | 0 | 0 | -1 | 0 |
    """

    name: str
    input: LayerExponents
    hidden: LayerExponents
    output: LayerExponents
    description: str = ""

    def layer(self, role: str | Role) -> LayerExponents:
        return getattr(self, role_named(role).name)

    def lr_exponent(self, role: str | Role, optimizer: str | Optimizer) -> sp.Expr:
        """c of ``role`` for ``optimizer``: the learning rate is :math:`\\eta_0 n^{-c}`."""
        return self.layer(role).c(optimizer)

    def shifted(self, theta: Mapping[str, object]) -> Parametrization:
        r"""The equivalent parametrization :math:`(a + \theta, b - \theta, c - (1 + p)\theta)`.

        ``theta`` maps role names to θ. The effective weight :math:`n^{-a}w` keeps its law, and
        its update keeps its size: SGD's :math:`-2a - c` and Adam's :math:`-a - c` do not move
        (Yang & Hu 2021, Sec. 3, the symmetry of abc-parametrizations).
        """
        out = {}
        for r in ROLES:
            e, t = self.layer(r), sp.nsimplify(theta.get(r.name, 0))
            out[r.name] = _exps(e.a + t, e.b - t, e.c_sgd - 2 * t, e.c_adam - t)
        return replace(self, name=f"{self.name} (shifted)", **out)

    def _rows(self) -> list[tuple[str, sp.Expr, sp.Expr, sp.Expr, sp.Expr]]:
        return [(r.name, *(getattr(self.layer(r), f) for f in _ABC)) for r in ROLES]

    def markdown(self) -> str:
        lines = [
            "| role | a (multiplier) | b (init std) | c (SGD) | c (Adam) |",
            "|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in self._rows()]
        return "\n".join(lines)

    def latex(self) -> str:
        lines = [
            r"\begin{tabular}{lcccc}",
            r"role & $a$ & $b$ & $c_{\mathrm{SGD}}$ & "
            r"$c_{\mathrm{Adam}}$ \\ \hline",
        ]
        for row in self._rows():
            lines.append(row[0] + " & " + " & ".join(f"${latex(v)}$" for v in row[1:]) + r" \\")
        return "\n".join([*lines, r"\end{tabular}"])


_ABC = ("a", "b", "c_sgd", "c_adam")

#: Standard parametrization: multiplier 1, Var(w) = 1/fan_in, a width-independent learning
#: rate for SGD and Adam (the gray entries of Table 3 of Yang et al. 2022).
SP = Parametrization(
    "SP",
    input=_exps(0, 0, 0, 0),
    hidden=_exps(0, _HALF, 0, 0),
    output=_exps(0, _HALF, 0, 0),
    description=(
        "Standard parametrization: W = w ~ N(0, 1/fan_in), one learning rate for every layer "
        f"(the gray entries of Table 3 of {TP5}; Sec. 3 of {TP4})."
    ),
)

#: Neural tangent parametrization: w ~ N(0, 1), multiplier 1/sqrt(fan_in), c = 0 for SGD
#: (Jacot, Gabriel & Hongler 2018; Sec. 3 of Yang & Hu 2021). Adam: the c that gives each
#: layer's first-step update the size it has under SGD (:func:`adam_exponents_from_sgd`).
NTK = Parametrization(
    "NTK",
    input=_exps(0, 0, 0, _HALF),
    hidden=_exps(_HALF, 0, 0, 1),
    output=_exps(_HALF, 0, 0, _HALF),
    description=(
        "Neural tangent parametrization: W = w / sqrt(fan_in), w ~ N(0, 1), a width-independent "
        "SGD learning rate (Jacot, Gabriel & Hongler, 'Neural Tangent Kernel', NeurIPS 2018; "
        f"Sec. 3 of {TP4}). NTK has no canonical Adam scaling: c_adam is the one whose "
        "first-step updates match SGD's (adam_exponents_from_sgd)."
    ),
)

#: Maximal update parametrization in the form of Table 3 of Yang et al. 2022 (multiplier 1;
#: Var(w) = 1/fan_in for input and hidden weights, 1/fan_in^2 for the readout; SGD learning
#: rate x fan_out on the input layer and / fan_in on the readout; Adam / fan_in on hidden and
#: output weights).
MUP = Parametrization(
    "muP",
    input=_exps(0, 0, -1, 0),
    hidden=_exps(0, _HALF, 0, 1),
    output=_exps(0, 1, 1, 1),
    description=(
        f"Maximal update parametrization, as in Table 3 of {TP5}: multiplier 1; init variance "
        "1/fan_in (input and hidden), 1/fan_in^2 (output); SGD learning rate fan_out (input), "
        "1 (hidden), 1/fan_in (output); Adam learning rate 1 (input), 1/fan_in (hidden and "
        f"output). Equivalent by the abc symmetry to the form of Sec. 3 of {TP4} "
        "(a = -1/2, 0, 1/2; b = 1/2; c = 0 for SGD)."
    ),
)

PARAMETRIZATIONS = (SP, NTK, MUP)


def parametrization_named(name: str | Parametrization) -> Parametrization:
    """The declared :class:`Parametrization` of ``name`` (``SP``, ``NTK``, ``muP``; any case).

    Example:
        >>> parametrization_named("mup").name
        'muP'
    """
    if isinstance(name, Parametrization):
        return name
    for p in PARAMETRIZATIONS:
        if p.name.lower() == str(name).lower():
            return p
    allowed = ", ".join(p.name for p in PARAMETRIZATIONS)
    raise ValueError(f"unknown parametrization {name!r}; allowed: {allowed}")


# --------------------------------------------------------------------------------------
# The derivation.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WidthExponents:
    r"""The predicted width exponents of one layer (sizes are :math:`\Theta(n^e)`).

    Attributes:
        layer: 1-based index (``hidden_layers + 1`` is the readout, whose output is f).
        role: the layer's :class:`Role` name.
        activation: its pre-activation's coordinates at init (:math:`A_l(0)`).
        update: :math:`\Delta h^l = h^l_t - h^l_0` after t steps (n → ∞ at fixed η_0).
        update_first_order: the term of :math:`\Delta h^l` linear in η_0 (any t ≥ 1).
        relative_update: :math:`\|\Delta W^l\|_F / \|W^l_0\|_F` after t steps.
        relative_update_spectral: the same in the spectral norm.
    """

    layer: int
    role: str
    activation: sp.Expr
    update: sp.Expr
    update_first_order: sp.Expr
    relative_update: sp.Expr
    relative_update_spectral: sp.Expr

    @property
    def trained_activation(self) -> sp.Expr:
        """The pre-activation after t steps: :math:`\\max(A_l(0), U_l)`."""
        return sp.Max(self.activation, self.update)


_FIELDS = (
    ("activation", "h at init"),
    ("trained_activation", "h after t steps"),
    ("update", "Δh after t steps"),
    ("update_first_order", "Δh, first order in η0"),
    ("relative_update", "‖ΔW‖_F/‖W‖_F"),
    ("relative_update_spectral", "‖ΔW‖_2/‖W‖_2"),
)


@dataclass(frozen=True)
class WidthPrediction:
    """Every layer's :class:`WidthExponents` for one parametrization, optimizer, loss and t.

    :meth:`exponents` gives them per role (what a width sweep compares with), :meth:`scales`
    the predicted sizes relative to the first width, :meth:`markdown` / :meth:`latex` a table.
    """

    parametrization: Parametrization
    optimizer: Optimizer
    loss: Loss
    steps: int
    layers: tuple[WidthExponents, ...]

    def exponents(self, quantity: str = "update") -> dict[str, tuple[sp.Expr, ...]]:
        """``{role: (exponent of each layer of that role, in order)}`` for one field of
        :class:`WidthExponents` (``"update"``, ``"activation"``, ``"trained_activation"``...)."""
        _check_quantity(quantity)
        out: dict[str, tuple[sp.Expr, ...]] = {}
        for row in self.layers:
            out[row.role] = (*out.get(row.role, ()), getattr(row, quantity))
        return out

    def scales(self, widths: Sequence[int], quantity: str = "update") -> list[list[float]]:
        """Per layer, the predicted size at each width relative to ``widths[0]``: (n/n_0)^e."""
        _check_quantity(quantity)
        return [
            [float((sp.Integer(n) / widths[0]) ** getattr(row, quantity)) for n in widths]
            for row in self.layers
        ]

    @property
    def regime(self) -> str:
        """TP4's classification (Yang & Hu 2021, Thm 3.3), read from the exponents.

        ``"unstable"`` (some activation or the output update grows with n),
        ``"feature learning"`` (stable, the last hidden layer's Δh is Θ(1)), ``"kernel"``
        (stable, features move o(1), the output Θ(1)) or ``"trivial"`` (the output does not
        move in the limit).
        """
        last, out = self.layers[-2], self.layers[-1]
        grows = [r.trained_activation for r in self.layers] + [out.update]
        if any(not e.is_number for e in [*grows, last.update]):
            raise ValueError("the regime needs numeric exponents; these are symbolic")
        if any(e > 0 for e in grows):
            return "unstable"
        if out.update < 0:
            return "trivial"
        return "feature learning" if last.update == 0 else "kernel"

    def _title(self) -> str:
        return (
            f"{self.parametrization.name} with {self.optimizer.name}, {self.loss.name} loss, "
            f"t = {self.steps}"
        )

    def markdown(self) -> str:
        head = ["layer", "role", *(label for _, label in _FIELDS)]
        lines = [f"**{self._title()}** (exponent e of Θ(n^e); regime: {self._regime_or()})", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.layers:
            cells = [str(r.layer), r.role, *(str(getattr(r, f)) for f, _ in _FIELDS)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def latex(self) -> str:
        cols = "ll" + "c" * len(_FIELDS)
        head = [r"$\Delta h$" if f == "update" else f.replace("_", r"\_") for f, _ in _FIELDS]
        lines = [
            rf"\begin{{tabular}}{{{cols}}}",
            r"\multicolumn{" + str(len(cols)) + "}{l}{" + self._title().replace("_", r"\_") + "}"
            r" \\",
            "layer & role & " + " & ".join(head) + r" \\ \hline",
        ]
        for r in self.layers:
            vals = " & ".join(f"${latex(getattr(r, f))}$" for f, _ in _FIELDS)
            lines.append(f"{r.layer} & {r.role} & {vals}" + r" \\")
        return "\n".join([*lines, r"\end{tabular}"])

    def _regime_or(self) -> str:
        try:
            return self.regime
        except ValueError:
            return "symbolic"


def _check_quantity(quantity: str) -> None:
    if quantity not in {f for f, _ in _FIELDS}:
        allowed = ", ".join(f for f, _ in _FIELDS)
        raise ValueError(f"unknown quantity {quantity!r}; allowed: {allowed}")


def predict_widths(
    parametrization: str | Parametrization,
    optimizer: str | Optimizer = "sgd",
    *,
    hidden_layers: int = 2,
    steps: int = 1,
    loss: str | Loss = "squared",
) -> WidthPrediction:
    r"""Derive the width exponents of every layer of an MLP from its abc-exponents.

    The MLP has an input layer (d → n), ``hidden_layers - 1`` hidden layers (n → n) and a
    readout (n → k): ``hidden_layers`` pre-activations of width n, then the output f. It takes
    ``steps`` = t steps of ``optimizer`` on a fixed batch with ``loss``. The rules (module
    docstring) are applied step by step with SymPy ``Max``, so a parametrization with symbolic
    exponents gives formulas.

    Under μP every hidden pre-activation and its update are Θ(1) and the output's update too
    (its value at init is :math:`n^{-1/2}`); under SP with a width-independent learning rate
    the output's update grows (first order :math:`n^{1}` with SGD); under NTK the hidden
    layers' updates vanish as :math:`n^{-1/2}`.

    Raises:
        ValueError: an unknown name, ``hidden_layers < 1`` or ``steps < 1``.

    Example:
        >>> [r.update for r in predict_widths("muP", "adam").layers]
        [0, 0, 0]
        >>> sp_sgd = predict_widths("SP", "sgd")
        >>> [r.update_first_order for r in sp_sgd.layers], sp_sgd.regime
        ([-1/2, 1/2, 1], 'unstable')
        >>> predict_widths("NTK").exponents("update")
        {'input': (-1/2,), 'hidden': (-1/2,), 'output': (0,)}
    """
    p = parametrization_named(parametrization)
    opt = optimizer_named(optimizer)
    lo = _named("loss", loss, LOSSES)
    if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, int) or hidden_layers < 1:
        raise ValueError(f"hidden_layers must be an int >= 1, got {hidden_layers!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    roles = [INPUT] + [HIDDEN] * (hidden_layers - 1) + [OUTPUT]
    return WidthPrediction(p, opt, lo, steps, _derive(p, opt, lo, roles, steps))


def _derive(
    p: Parametrization, opt: Optimizer, loss: Loss, roles: list[Role], steps: int
) -> tuple[WidthExponents, ...]:
    """Rules 1-5 of the module docstring, over ``steps`` steps. Index 0 is the data."""
    n = len(roles)
    idx = range(1, n + 1)
    ex = [None, *(p.layer(r) for r in roles)]
    role = [None, *roles]
    entry = [None, *(-(e.a + e.b) for e in ex[1:])]  # exponent of an entry of W_0
    pw = opt.gradient_power

    init = [sp.Integer(0)] * (n + 1)  # rule 1
    for l in idx:
        init[l] = role[l].e_in / 2 + entry[l] + init[l - 1]

    def forward(acc: list, linear: bool) -> list:
        """Rule 4: U_l from the accumulated update entries ``acc``; each layer's input is the
        updated one (A = max(A(0), U)), or the initial one for the term linear in eta_0."""
        u = [_NONE] * (n + 1)
        for l in idx:
            inp = init[l - 1] if linear else sp.Max(init[l - 1], u[l - 1])
            through = role[l].correlated_sum + entry[l] + u[l - 1]
            u[l] = sp.Max(through, acc[l] + role[l].e_in + inp)
        return u

    act = list(init)  # A_l(s)
    acc = [_NONE] * (n + 1)  # D_l(s)
    first = None
    for s in range(steps):
        lam = sp.Max(0, act[n]) if loss.derivative_follows_output else sp.Integer(0)
        g = [sp.Integer(0)] * (n + 1)  # rule 2 (g[n] = df/df)
        for l in range(n, 1, -1):
            e_out = role[l].e_out
            g[l - 1] = sp.Max(e_out / 2 + entry[l], acc[l] + e_out) + g[l]
        step = [_NONE] + [  # rule 3
            -ex[l].a - ex[l].c(opt) + pw * (lam + g[l] + act[l - 1] - ex[l].a) for l in idx
        ]
        acc = [_NONE] + [sp.Max(acc[l], step[l]) for l in idx]
        if s == 0:
            first = forward(acc, linear=True)
        upd = forward(acc, linear=False)
        act = [sp.Integer(0)] + [sp.Max(init[l], upd[l]) for l in idx]
    assert first is not None
    rows = []
    for l in idx:
        ratio = acc[l] + ex[l].a + ex[l].b  # rule 5
        spectral = ratio + (role[l].e_in + role[l].e_out - 1) / 2
        rows.append(WidthExponents(l, role[l].name, init[l], upd[l], first[l], ratio, spectral))
    return tuple(rows)


def adam_exponents_from_sgd(
    parametrization: str | Parametrization, *, hidden_layers: int = 2
) -> dict[str, sp.Expr]:
    r"""The Adam learning-rate exponents that give each layer its SGD first-step update size.

    The first step's update entries are :math:`-2a - c_{SGD} + G_l + A_{l-1}` with SGD and
    :math:`-a - c_{Adam}` with Adam (rule 3, λ = 0 at a stable init), so

    .. math:: c_{Adam} = c_{SGD} + a - G_l - A_{l-1}

    with G, A at init. Applied to μP's SGD column it gives the Adam column of Table 3 of
    Yang et al. 2022 (0, 1, 1); :data:`NTK`'s Adam exponents are defined by it.

    Example:
        >>> adam_exponents_from_sgd("muP")
        {'input': 0, 'hidden': 1, 'output': 1}
    """
    p = parametrization_named(parametrization)
    pred = predict_widths(p, SGD, hidden_layers=hidden_layers, steps=1, loss=CROSS_ENTROPY)
    # Recover G_l + A_{l-1} at init from SGD's first-step entries D_l = relative - a - b.
    out: dict[str, sp.Expr] = {}
    for row in pred.layers:
        e = p.layer(row.role)
        sgd_entry = row.relative_update - e.a - e.b
        out.setdefault(row.role, sp.simplify(-e.a - sgd_entry))
    return out


# --------------------------------------------------------------------------------------
# The laws an implementation follows: multiplier, init variance, learning-rate factor.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleLaws:
    r"""What implements one role of a parametrization at width n, anchored at a base width.

    The constants are fixed so that at :math:`n = n_0` every parametrization is SP with a
    fan-in init of gain g (as μTransfer's base shapes do, Yang et al. 2022, Sec. 4):

    .. math::

        \text{multiplier} = (n/n_0)^{-a}, \qquad
        \mathrm{Var}(w) = \frac{g^2}{n_{in}} (n/n_0)^{-2(b - b_{SP})}, \qquad
        \eta = \eta_0 (n/n_0)^{-c}

    with :math:`b_{SP}` = 0 for the input layer and 1/2 otherwise; n is the fan-out of an
    input layer and the fan-in of the others (``variance`` is written in those fans, so a
    varprop initializer can carry it).
    """

    role: str
    multiplier: sp.Expr
    variance: sp.Expr
    learning_rate: sp.Expr


def role_laws(
    parametrization: str | Parametrization, role: str | Role, optimizer: str | Optimizer = "sgd"
) -> RoleLaws:
    """The multiplier, Var(w) and learning-rate factor of ``role`` (see :class:`RoleLaws`).

    Example:
        >>> role_laws("muP", "output", "adam")
        RoleLaws(role='output', multiplier=1, variance=g**2*n_0/n_in**2, learning_rate=n_0/n)
        >>> role_laws("NTK", "hidden").variance, role_laws("NTK", "hidden").multiplier
        (g**2/n_0, sqrt(n_0)/sqrt(n))
    """
    return _role_laws(
        parametrization_named(parametrization), role_named(role), optimizer_named(optimizer)
    )


@functools.cache
def _role_laws(p: Parametrization, r: Role, optimizer: Optimizer) -> RoleLaws:
    from varprop._src.laws import symbols as S

    e = p.layer(r)
    ratio = WIDTH / BASE_WIDTH
    b_sp = SP.layer(r).b
    fan = S.fan_in if r.fan_in_grows else S.fan_out
    variance = S.gain**2 / S.fan_in * (fan / BASE_WIDTH) ** (-2 * (e.b - b_sp))
    return RoleLaws(
        r.name,
        multiplier=sp.simplify(ratio ** (-e.a)),
        variance=sp.simplify(variance),
        learning_rate=sp.simplify(ratio ** (-e.c(optimizer))),
    )

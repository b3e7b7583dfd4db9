r"""The JAX side of the parametrizations: initializers, multipliers, an optax LR mapping.

:class:`WidthScaling` implements one :class:`~varprop.laws.Parametrization` (SP, NTK, μP) at
a width n, anchored at a base width :math:`n_0` where it equals SP (μTransfer's base shapes,
Yang et al. 2022, Sec. 4). Every parameter has a role label: ``"input"`` (fan-in fixed,
fan-out n: input layers and embeddings), ``"hidden"`` (n to n), ``"output"`` (n to a fixed
size: the readout), ``"fixed"`` (no width axis: left as it is). Biases of width n are labelled
``"input"`` (Table 3 of Yang et al. 2022: biases scale like input weights).
:func:`roles_from_shapes` finds the labels by comparing the parameters at two widths.

Per role (:func:`varprop.laws.role_laws`, with :math:`r = n/n_0`):

.. math::

    W = r^{-a} w, \qquad \mathrm{Var}(w) = \frac{g^2}{n_{in}}\, r^{-2(b - b_{SP})}, \qquad
    \eta = \eta_0\, r^{-c}

* :meth:`WidthScaling.initializer` is a varprop :class:`~varprop.initializers.Initializer`
  whose law is that Var(w) in the fans (``init.scheme.law``), so the checker can test it;
* :meth:`WidthScaling.apply_multipliers` gives the effective parameters :math:`r^{-a} w`
  to call the model with inside the loss (the gradient w.r.t. w then carries the multiplier);
* :meth:`WidthScaling.learning_rates` is an optax transformation that multiplies each
  parameter's update by :math:`r^{-c}`, to chain after any optax optimizer: for SGD and Adam
  (and any optimizer whose update is linear in its learning rate) that is the per-layer
  learning rate :math:`\eta_0 r^{-c}`.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> ws = WidthScaling("muP", width=256, base_width=64)
    >>> params = {"w_in": jnp.ones((8, 256)), "w_h": jnp.ones((256, 256)), "w_out": jnp.ones((256, 1))}
    >>> labels = {"w_in": "input", "w_h": "hidden", "w_out": "output"}
    >>> ws.learning_rate_scale("hidden", "adam"), ws.initializer("output").scheme.law
    (0.25, 64/n_in**2)
    >>> opt = optax.chain(optax.adam(1e-3), ws.learning_rates(labels, "adam"))
    >>> state = opt.init(params)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import optax
import sympy as sp

from varprop._src.initializers import Initializer
from varprop._src.laws import parametrization as LP
from varprop._src.laws import symbols as S
from varprop._src.laws.catalog import GainSpec, resolve_gain
from varprop._src.laws.schemes import NORMAL, Scheme

#: The role labels the JAX side accepts: the three of the laws, and "fixed" (left alone).
LABELS = ("input", "hidden", "output", "fixed")


def _check_label(label: str) -> str:
    if label not in LABELS:
        raise ValueError(f"unknown role label {label!r}; allowed: {', '.join(LABELS)}")
    return label


def roles_from_shapes(params: Any, base_params: Any) -> Any:
    """Role labels for ``params`` from the shapes of the same model at another width.

    An axis whose size differs between the two is a width axis. For a leaf with at least two
    axes, read in Flax layout ``(..., in, out)``: both width axes -> ``"hidden"``, only the
    output -> ``"input"``, only the input -> ``"output"``, neither -> ``"fixed"``. A 1-D leaf
    (a bias, a norm's scale) of width n -> ``"input"``, else ``"fixed"``. Both trees may hold
    arrays or ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of an init).

    Example:
        >>> import jax.numpy as jnp
        >>> make = lambda n: {"a": jnp.zeros((3, n)), "b": jnp.zeros((n, n)), "c": jnp.zeros((n, 2)),
        ...                   "bias": jnp.zeros((n,)), "out_bias": jnp.zeros((2,))}
        >>> roles_from_shapes(make(8), make(4))
        {'a': 'input', 'b': 'hidden', 'bias': 'input', 'c': 'output', 'out_bias': 'fixed'}
    """

    def label(x: Any, y: Any) -> str:
        s, t = tuple(x.shape), tuple(y.shape)
        if len(s) != len(t):
            raise ValueError(f"a leaf has shape {s} at one width and {t} at the other")
        if len(s) >= 2:
            grows_in, grows_out = s[-2] != t[-2], s[-1] != t[-1]
            return {
                (True, True): "hidden",
                (False, True): "input",
                (True, False): "output",
                (False, False): "fixed",
            }[(grows_in, grows_out)]
        if len(s) == 1 and s != t:
            return "input"
        return "fixed"

    return jax.tree.map(label, params, base_params)


@dataclass(frozen=True)
class WidthScaling:
    """A parametrization at ``width``, equal to SP at ``base_width`` (see the module docstring).

    Attributes:
        parametrization: a :class:`~varprop.laws.Parametrization` or its name
            (``"SP"``, ``"NTK"``, ``"muP"``).
        width: n.
        base_width: :math:`n_0`, where every parametrization is SP.
        gain: g of the fan-in init at the base width (a number or an activation's name:
            ``"relu"`` gives sqrt(2)); 1 is LeCun's.
    """

    parametrization: LP.Parametrization | str
    width: int
    base_width: int
    gain: GainSpec = 1.0
    _scales: dict = field(init=False, repr=False, compare=False)
    _inits: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "parametrization", LP.parametrization_named(self.parametrization))
        for nm in ("width", "base_width"):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{nm} must be an int >= 1, got {v!r}")
        # The numbers, evaluated once (the loss calls apply_multipliers at every trace).
        scales = {
            (lab, opt): (
                self._at_width(self._laws(lab, opt).multiplier),
                self._at_width(self._laws(lab, opt).learning_rate),
            )
            for lab in LABELS[:3]
            for opt in ("sgd", "adam")
        }
        object.__setattr__(self, "_scales", scales)
        object.__setattr__(self, "_inits", {})

    @property
    def _p(self) -> LP.Parametrization:
        p = self.parametrization
        assert isinstance(p, LP.Parametrization)
        return p

    @property
    def ratio(self) -> float:
        """r = n / n_0."""
        return self.width / self.base_width

    def _laws(self, role: str, optimizer: str = "sgd") -> LP.RoleLaws:
        return LP.role_laws(self._p, role, optimizer)

    def _at_width(self, expr: sp.Expr) -> float:
        return float(expr.subs({LP.WIDTH: self.width, LP.BASE_WIDTH: self.base_width}))

    def multiplier(self, label: str) -> float:
        """r^{-a} for ``label`` (1 for ``"fixed"``)."""
        if _check_label(label) == "fixed":
            return 1.0
        return self._scales[label, "sgd"][0]

    def learning_rate_scale(self, label: str, optimizer: str = "sgd") -> float:
        """r^{-c} for ``label`` and ``optimizer`` (``"sgd"``, ``"adam"``; 1 for ``"fixed"``)."""
        if _check_label(label) == "fixed":
            return 1.0
        return self._scales[label, LP.optimizer_named(optimizer).name][1]

    def initializer(self, label: str) -> Initializer:
        r"""The varprop initializer of ``label``: w ~ N(0, g^2/n_in r^{-2(b - b_SP)}).

        Its ``scheme.law`` is written in the fans (the base width is a number in it), so
        ``varprop.check``/``check_model`` can test the drawn weights against it. For an
        input layer n is the fan-out, for the others the fan-in.
        """
        if _check_label(label) == "fixed":
            raise ValueError(
                "a 'fixed' parameter keeps its own initializer; allowed: input, hidden, output"
            )
        if label not in self._inits:
            self._inits[label] = self._initializer(label)
        return self._inits[label]

    def _initializer(self, label: str) -> Initializer:
        g, _ = resolve_gain(self.gain)
        p = self._p
        return Initializer(
            Scheme(
                name=f"{p.name}_{label}",
                variance_expr=self._laws(label).variance,
                parameters={S.gain: g, LP.BASE_WIDTH: sp.Integer(self.base_width)},
                distribution=NORMAL,
                description=(
                    f"{label} weights of {p.name} anchored at base width {self.base_width} "
                    f"(SP there). {p.description}"
                ),
                options={"gain": self.gain, "base_width": self.base_width},
            )
        )

    def init_params(self, key: jax.Array, params: Any, labels: Any) -> Any:
        """``params`` re-drawn by role: leaves with 2+ axes from :meth:`initializer`, 1-D
        leaves of a width role set to zero, ``"fixed"`` leaves kept."""
        leaves, tree = jax.tree.flatten(params)
        labs = tree.flatten_up_to(labels)
        keys = jax.random.split(key, max(len(leaves), 1))
        out = []
        for k, x, lab in zip(keys, leaves, labs, strict=True):
            if _check_label(lab) == "fixed":
                out.append(x)
            elif jnp.ndim(x) >= 2:
                out.append(self.initializer(lab)(k, tuple(x.shape), x.dtype))
            else:
                out.append(jnp.zeros_like(x))
        return jax.tree.unflatten(tree, out)

    def apply_multipliers(self, params: Any, labels: Any) -> Any:
        """The effective parameters r^{-a} w, leaf by leaf (call the model with these)."""
        return jax.tree.map(lambda x, lab: x * self.multiplier(lab), params, labels)

    def learning_rates(
        self, labels: Any | Callable[[Any], Any], optimizer: str = "sgd"
    ) -> optax.GradientTransformation:
        """An optax transformation scaling each parameter's update by r^{-c} of its label.

        ``labels`` is a pytree of labels matching the parameters, or a function of the
        parameters returning one (as ``optax.multi_transform`` takes). Chain it after the
        optimizer whose exponents ``optimizer`` names:
        ``optax.chain(optax.adam(lr), ws.learning_rates(labels, "adam"))``.
        """
        transforms: Mapping[Hashable, optax.GradientTransformation] = {
            lab: optax.scale(self.learning_rate_scale(lab, optimizer)) for lab in LABELS
        }
        return optax.multi_transform(transforms, labels)

    def __repr__(self) -> str:
        return (
            f"WidthScaling({self._p.name}, width={self.width}, base_width={self.base_width}, "
            f"gain={self.gain!r})"
        )

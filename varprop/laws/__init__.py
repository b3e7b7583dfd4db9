"""The SymPy side of varprop: variance laws of schemes, activations and layers.

Nothing under ``varprop.laws`` imports JAX, except :func:`propagate_model`, which traces a
Flax model to predict its moments (and loads JAX and Flax when first used).

Names are imported on first use (PEP 562): ``from varprop import laws`` loads nothing;
``laws.layer_factors`` loads the modules it needs (SciPy only with the activations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from varprop._src.lazy import lazy_attributes

#: Public name -> (module, attribute); attribute None: the name is that module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "Activation": ("varprop._src.laws.activations", "Activation"),
    "activation_moments": ("varprop._src.laws.activation_moments", "activation_moments"),
    "activation_names": ("varprop._src.laws.activations", "activation_names"),
    "ActivationMoments": ("varprop._src.laws.activation_moments", "ActivationMoments"),
    "backward_law": ("varprop._src.laws.layers", "backward_law"),
    "classify_factor": ("varprop._src.laws.layers", "classify_factor"),
    "compute_fans": ("varprop._src.laws.schemes", "compute_fans"),
    "conventional_gain": ("varprop._src.laws.activation_gains", "conventional_gain"),
    "CONVENTIONAL_GAINS": ("varprop._src.laws.activation_gains", "CONVENTIONAL_GAINS"),
    "Derivation": ("varprop._src.laws.derivation", "Derivation"),
    "derive": ("varprop._src.laws.derivation", "derive"),
    "Distribution": ("varprop._src.laws.schemes", "Distribution"),
    "distribution_kurtosis": ("varprop._src.laws.schemes", "distribution_kurtosis"),
    "DISTRIBUTIONS": ("varprop._src.laws.schemes", "DISTRIBUTIONS"),
    "eval_mode_gain": ("varprop._src.laws.normalization", "eval_mode_gain"),
    "eval_mode_output_moments": ("varprop._src.laws.normalization", "eval_mode_output_moments"),
    "FixedPoint": ("varprop._src.laws.layers", "FixedPoint"),
    "float32_limit_layer": ("varprop._src.laws.layers", "float32_limit_layer"),
    "FLOAT32_MAX": ("varprop._src.laws.layers", "FLOAT32_MAX"),
    "FLOAT32_TINY": ("varprop._src.laws.layers", "FLOAT32_TINY"),
    "forward_law": ("varprop._src.laws.layers", "forward_law"),
    "gain": ("varprop._src.laws.activation_gains", "gain"),
    "gain_comparison": ("varprop._src.laws.activation_gains", "gain_comparison"),
    "gain_expr": ("varprop._src.laws.activation_gains", "gain_expr"),
    "get_activation": ("varprop._src.laws.activations", "get_activation"),
    "gradient_scale_factor": ("varprop._src.laws.normalization", "gradient_scale_factor"),
    "latex": ("varprop._src.laws.latex", "latex"),
    "layer_factors": ("varprop._src.laws.layers", "layer_factors"),
    "LayerFactors": ("varprop._src.laws.layers", "LayerFactors"),
    "mean_field_fixed_point": ("varprop._src.laws.layers", "mean_field_fixed_point"),
    "MODES": ("varprop._src.laws.schemes", "MODES"),
    "moment_expressions": ("varprop._src.laws.activation_moments", "moment_expressions"),
    "OutputMoments": ("varprop._src.laws.normalization", "OutputMoments"),
    "ModelPropagation": ("varprop._src.model.predict", "ModelPropagation"),
    "PredictedRow": ("varprop._src.model.predict", "PredictedRow"),
    "propagate_model": ("varprop._src.model.predict", "propagate_model"),
    "Propagation": ("varprop._src.laws.propagation", "Propagation"),
    "propagate": ("varprop._src.laws.propagation", "propagate"),
    "finite_width_mean_field": ("varprop._src.laws.finite_width", "finite_width_mean_field"),
    "model_ops": ("varprop._src.laws.model_ops", None),
    "finite_width_recursion": ("varprop._src.laws.finite_width", "finite_width_recursion"),
    "second_moment_series": ("varprop._src.laws.finite_width", "second_moment_series"),
    "prove_scale_invariance": ("varprop._src.laws.normalization", "prove_scale_invariance"),
    "quadrature_moments": ("varprop._src.laws.activation_moments", "quadrature_moments"),
    "register_activation": ("varprop._src.laws.activations", "register_activation"),
    "running_average_after": ("varprop._src.laws.normalization", "running_average_after"),
    "scale_deviation_ratio": ("varprop._src.laws.normalization", "scale_deviation_ratio"),
    "ScaleInvarianceProof": ("varprop._src.laws.normalization", "ScaleInvarianceProof"),
    "Scheme": ("varprop._src.laws.schemes", "Scheme"),
    "scheme_from_spec": ("varprop._src.laws.catalog", "scheme_from_spec"),
    "scheme_names": ("varprop._src.laws.catalog", "scheme_names"),
    "Step": ("varprop._src.laws.derivation", "Step"),
    "symbol_latex": ("varprop._src.laws.latex", "symbol_latex"),
    "symbols": ("varprop._src.laws.symbols", None),
    "train_output_moments": ("varprop._src.laws.normalization", "train_output_moments"),
    "train_output_second_moment": ("varprop._src.laws.normalization", "train_output_second_moment"),
    "truncated_normal_moments": ("varprop._src.laws.schemes", "truncated_normal_moments"),
    "truncated_normal_std": ("varprop._src.laws.schemes", "truncated_normal_std"),
}

__all__ = [
    "CONVENTIONAL_GAINS",
    "DISTRIBUTIONS",
    "FLOAT32_MAX",
    "FLOAT32_TINY",
    "MODES",
    "Activation",
    "ActivationMoments",
    "Derivation",
    "Distribution",
    "FixedPoint",
    "LayerFactors",
    "ModelPropagation",
    "OutputMoments",
    "PredictedRow",
    "Propagation",
    "ScaleInvarianceProof",
    "Scheme",
    "Step",
    "activation_moments",
    "activation_names",
    "backward_law",
    "classify_factor",
    "compute_fans",
    "conventional_gain",
    "derive",
    "distribution_kurtosis",
    "eval_mode_gain",
    "eval_mode_output_moments",
    "finite_width_mean_field",
    "finite_width_recursion",
    "float32_limit_layer",
    "forward_law",
    "gain",
    "gain_comparison",
    "gain_expr",
    "get_activation",
    "gradient_scale_factor",
    "latex",
    "layer_factors",
    "mean_field_fixed_point",
    "model_ops",
    "moment_expressions",
    "propagate",
    "propagate_model",
    "prove_scale_invariance",
    "quadrature_moments",
    "register_activation",
    "running_average_after",
    "scale_deviation_ratio",
    "scheme_from_spec",
    "scheme_names",
    "second_moment_series",
    "symbol_latex",
    "symbols",
    "train_output_moments",
    "train_output_second_moment",
    "truncated_normal_moments",
    "truncated_normal_std",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)


if TYPE_CHECKING:  # what pyright and IDEs see; nothing is imported at run time
    from varprop._src.laws import model_ops, symbols
    from varprop._src.laws.activation_gains import (
        CONVENTIONAL_GAINS,
        conventional_gain,
        gain,
        gain_comparison,
        gain_expr,
    )
    from varprop._src.laws.activation_moments import (
        ActivationMoments,
        activation_moments,
        moment_expressions,
        quadrature_moments,
    )
    from varprop._src.laws.activations import (
        Activation,
        activation_names,
        get_activation,
        register_activation,
    )
    from varprop._src.laws.catalog import (
        scheme_from_spec,
        scheme_names,
    )
    from varprop._src.laws.derivation import (
        Derivation,
        Step,
        derive,
    )
    from varprop._src.laws.finite_width import (
        finite_width_mean_field,
        finite_width_recursion,
        second_moment_series,
    )
    from varprop._src.laws.latex import latex, symbol_latex
    from varprop._src.laws.layers import (
        FLOAT32_MAX,
        FLOAT32_TINY,
        FixedPoint,
        LayerFactors,
        backward_law,
        classify_factor,
        float32_limit_layer,
        forward_law,
        layer_factors,
        mean_field_fixed_point,
    )
    from varprop._src.laws.normalization import (
        OutputMoments,
        ScaleInvarianceProof,
        eval_mode_gain,
        eval_mode_output_moments,
        gradient_scale_factor,
        prove_scale_invariance,
        running_average_after,
        scale_deviation_ratio,
        train_output_moments,
        train_output_second_moment,
    )
    from varprop._src.laws.propagation import Propagation, propagate
    from varprop._src.laws.schemes import (
        DISTRIBUTIONS,
        MODES,
        Distribution,
        Scheme,
        compute_fans,
        distribution_kurtosis,
        truncated_normal_moments,
        truncated_normal_std,
    )
    from varprop._src.model.predict import ModelPropagation, PredictedRow, propagate_model

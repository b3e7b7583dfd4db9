"""The SymPy side of varprop: variance laws of schemes, activations and layers.

Nothing under ``varprop.laws`` imports JAX.
"""

from varprop._src.laws import symbols
from varprop._src.laws.activations import (
    CONVENTIONAL_GAINS,
    Activation,
    ActivationMoments,
    activation_moments,
    activation_names,
    conventional_gain,
    gain,
    gain_comparison,
    gain_expr,
    get_activation,
    moment_expressions,
    quadrature_moments,
    register_activation,
)
from varprop._src.laws.catalog import scheme_from_spec, scheme_names
from varprop._src.laws.derivation import Derivation, Step, derive
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
from varprop._src.laws.schemes import (
    DISTRIBUTIONS,
    MODES,
    Scheme,
    compute_fans,
    distribution_kurtosis,
    truncated_normal_moments,
    truncated_normal_std,
)

__all__ = [
    "CONVENTIONAL_GAINS",
    "DISTRIBUTIONS",
    "FLOAT32_MAX",
    "FLOAT32_TINY",
    "MODES",
    "Activation",
    "ActivationMoments",
    "Derivation",
    "FixedPoint",
    "LayerFactors",
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
    "float32_limit_layer",
    "forward_law",
    "gain",
    "gain_comparison",
    "gain_expr",
    "get_activation",
    "layer_factors",
    "mean_field_fixed_point",
    "moment_expressions",
    "quadrature_moments",
    "register_activation",
    "scheme_from_spec",
    "scheme_names",
    "symbols",
    "truncated_normal_moments",
    "truncated_normal_std",
]

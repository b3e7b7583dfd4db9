"""varprop: neural-network initialization you can prove.

Every initializer carries its variance law (:mod:`varprop.initializers`), the SymPy side
derives what each layer's forward and backward variance must be (:mod:`varprop.laws`),
and the checker measures a real network against it.

The names below are imported on first use (PEP 562), so ``import varprop`` is fast and
loads neither JAX's heavy users (Flax) nor SciPy or Matplotlib until they are needed; it
never changes JAX's configuration (see :func:`enable_compilation_cache`).

Example:
    >>> import varprop
    >>> varprop.check.__name__, "laws" in dir(varprop)
    ('check', True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from varprop._src.lazy import lazy_attributes

__version__ = "0.1.0"

#: Public name -> (the module that defines it, the attribute; None when it is the module).
_LAZY: dict[str, tuple[str, str | None]] = {
    "CheckResult": ("varprop._src.check", "CheckResult"),
    "LayerRow": ("varprop._src.check", "LayerRow"),
    "assert_agrees": ("varprop._src.check", "assert_agrees"),
    "assert_healthy": ("varprop._src.check", "assert_healthy"),
    "check": ("varprop._src.check", "check"),
    "check_model": ("varprop._src.model.check_model", "check_model"),
    "solve_init": ("varprop._src.model.solve", "solve_init"),
    "derive_model": ("varprop._src.model_report", "derive_model"),
    "ModelDerivation": ("varprop._src.model_report", "ModelDerivation"),
    "apply_init": ("varprop._src.model.solve", "apply_init"),
    "ModelCheckResult": ("varprop._src.model.check_model", "ModelCheckResult"),
    "ModelRow": ("varprop._src.model.check_model", "ModelRow"),
    "enable_compilation_cache": ("varprop._src.cli", "enable_compilation_cache"),
    "Initializer": ("varprop._src.initializers", "Initializer"),
    "scheme_of": ("varprop._src.recognize", "scheme_of"),
    "Scheme": ("varprop._src.laws.schemes", "Scheme"),
    "initializers": ("varprop.initializers", None),
    "laws": ("varprop.laws", None),
    "nn": ("varprop.nn", None),
    "ExpectedLaw": ("varprop._src.verdicts", "ExpectedLaw"),
    "LayerMeasurement": ("varprop._src.verdicts", "LayerMeasurement"),
    "LayerTest": ("varprop._src.verdicts", "LayerTest"),
    "ProductStatistics": ("varprop._src.verdicts", "ProductStatistics"),
    "layer_verdict": ("varprop._src.verdicts", "layer_verdict"),
    "WidthScaling": ("varprop._src.parametrization_jax", "WidthScaling"),
    "monitor": ("varprop._src.model.monitor", "monitor"),
    "width_sweep": ("varprop._src.sweep", "width_sweep"),
    "ModelFamily": ("varprop._src.sweep", "ModelFamily"),
    "SweepResult": ("varprop._src.sweep", "SweepResult"),
    "mlp_family": ("varprop._src.sweep", "mlp_family"),
    "transformer_family": ("varprop._src.sweep", "transformer_family"),
    "Monitor": ("varprop._src.model.monitor", "Monitor"),
    "MonitorState": ("varprop._src.model.monitor", "MonitorState"),
    "MonitorSeries": ("varprop._src.model.monitor", "MonitorSeries"),
    "LayerSeries": ("varprop._src.model.monitor", "LayerSeries"),
    "UpdateSeries": ("varprop._src.model.monitor", "UpdateSeries"),
    "roles_from_shapes": ("varprop._src.parametrization_jax", "roles_from_shapes"),
}

__all__ = [
    "CheckResult",
    "ExpectedLaw",
    "Initializer",
    "LayerMeasurement",
    "LayerRow",
    "LayerSeries",
    "LayerTest",
    "ModelCheckResult",
    "ModelDerivation",
    "ModelFamily",
    "ModelRow",
    "Monitor",
    "MonitorSeries",
    "MonitorState",
    "ProductStatistics",
    "Scheme",
    "SweepResult",
    "UpdateSeries",
    "WidthScaling",
    "apply_init",
    "assert_agrees",
    "assert_healthy",
    "check",
    "check_model",
    "derive_model",
    "enable_compilation_cache",
    "initializers",
    "laws",
    "layer_verdict",
    "mlp_family",
    "monitor",
    "nn",
    "roles_from_shapes",
    "scheme_of",
    "solve_init",
    "transformer_family",
    "width_sweep",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)


if TYPE_CHECKING:  # what pyright and IDEs see; nothing is imported at run time
    from varprop import initializers, laws, nn
    from varprop._src.check import CheckResult, LayerRow, assert_agrees, assert_healthy, check
    from varprop._src.cli import enable_compilation_cache
    from varprop._src.initializers import Initializer
    from varprop._src.laws.schemes import Scheme
    from varprop._src.model.check_model import ModelCheckResult, ModelRow, check_model
    from varprop._src.model.monitor import (
        LayerSeries,
        Monitor,
        MonitorSeries,
        MonitorState,
        UpdateSeries,
        monitor,
    )
    from varprop._src.model.solve import apply_init, solve_init
    from varprop._src.model_report import ModelDerivation, derive_model
    from varprop._src.parametrization_jax import WidthScaling, roles_from_shapes
    from varprop._src.recognize import scheme_of
    from varprop._src.sweep import (
        ModelFamily,
        SweepResult,
        mlp_family,
        transformer_family,
        width_sweep,
    )
    from varprop._src.verdicts import (
        ExpectedLaw,
        LayerMeasurement,
        LayerTest,
        ProductStatistics,
        layer_verdict,
    )

"""varprop: neural-network initialization you can prove.

Every initializer carries its variance law (:mod:`varprop.initializers`), the SymPy side
derives what each layer's forward and backward variance must be (:mod:`varprop.laws`),
and the checker measures a real network against it.
"""

from varprop import initializers, laws, nn
from varprop._src.check import CheckResult, LayerRow, assert_agrees, check
from varprop._src.initializers import Initializer, scheme_of
from varprop._src.laws.schemes import Scheme

__version__ = "0.1.0"

__all__ = [
    "CheckResult",
    "Initializer",
    "LayerRow",
    "Scheme",
    "assert_agrees",
    "check",
    "initializers",
    "laws",
    "nn",
    "scheme_of",
]

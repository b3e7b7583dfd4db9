"""The SymPy symbols every law is written in.

One module owns them so that expressions built in different places compare equal.
"""

import sympy as sp

#: Number of inputs that feed one output unit (times the receptive field for convs).
fan_in = sp.Symbol("n_in", positive=True, integer=True)
#: Number of outputs one input unit feeds (times the receptive field for convs).
fan_out = sp.Symbol("n_out", positive=True, integer=True)
#: Multiplier on the standard deviation (``scale = gain**2`` in variance scaling).
gain = sp.Symbol("g", positive=True)
#: Number of residual branches (Fixup).
depth = sp.Symbol("L", positive=True, integer=True)
#: Number of layers inside one residual branch (Fixup).
branch_layers = sp.Symbol("m", positive=True, integer=True)
#: Rows and columns of the matrix an orthogonal initializer draws.
n_rows = sp.Symbol("n_rows", positive=True, integer=True)
n_cols = sp.Symbol("n_cols", positive=True, integer=True)
#: Raw standard deviation (normal, truncated normal) or half-width (uniform).
stddev = sp.Symbol("sigma", positive=True)
#: Constant value of a constant initializer.
value = sp.Symbol("c", real=True)

#: Pre-activation variable and its variance: z ~ N(0, q).
x = sp.Symbol("x", real=True)
q = sp.Symbol("q", positive=True)
#: Second moment of a layer's input, E[x^2], and of the gradient w.r.t. its output.
input_second_moment = sp.Symbol("E[x^2]", positive=True)
grad_second_moment = sp.Symbol("E[(dL/dh)^2]", positive=True)
#: Variance of the bias.
bias_variance = sp.Symbol("Var(b)", nonnegative=True)
#: The weight variance as an unknown (used in the general layer law).
weight_variance = sp.Symbol("Var(w)", positive=True)

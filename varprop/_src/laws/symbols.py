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
#: Sums over one example's inputs, sum_i x_i^2 and sum_i x_i (the conditional laws given x).
input_sum_squares = sp.Symbol("S_2(x)", nonnegative=True)
input_sum = sp.Symbol("S_1(x)", real=True)
#: Sums over one example's output gradients g = dL/dz: sum_j g_j^2 and sum_j g_j.
grad_sum_squares = sp.Symbol("S_2(g)", nonnegative=True)
grad_sum = sp.Symbol("S_1(g)", real=True)
#: Mean of a layer's input E[x] (a unit's mean over the data; i.i.d. across units).
input_mean_value = sp.Symbol("E[x]", real=True)
#: Mean of the weights E[w] as an unknown (used in the general layer law).
weight_mean = sp.Symbol("E[w]", real=True)
#: Variance of the bias.
bias_variance = sp.Symbol("Var(b)", nonnegative=True)
#: The weight variance as an unknown (used in the general layer law).
weight_variance = sp.Symbol("Var(w)", positive=True)

# --- Normalization layers (``laws.normalization``) -------------------------------------
#: Scale γ and bias β of one feature.
gamma = sp.Symbol("gamma", real=True)
beta = sp.Symbol("beta", real=True)
#: Biased batch variance σ²_B of one feature (positive: a non-constant batch).
batch_var = sp.Symbol("sigma_B^2", positive=True)
#: The layer's epsilon.
epsilon = sp.Symbol("epsilon", nonnegative=True)
#: Positive factor on the weights.
alpha = sp.Symbol("alpha", positive=True)
#: Running statistics μ_r, σ²_r, and a layer input's mean and variance (eval mode).
running_mean = sp.Symbol("mu_r", real=True)
running_var = sp.Symbol("sigma_r^2", nonnegative=True)
input_mean = sp.Symbol("mu_x", real=True)
input_var = sp.Symbol("sigma_x^2", nonnegative=True)
#: Momentum (keep ratio), steps, number of examples per feature.
momentum = sp.Symbol("m", nonnegative=True)
steps = sp.Symbol("t", positive=True, integer=True)
count = sp.Symbol("N", positive=True, integer=True)
#: A batch statistic held constant over steps (closed form of the running average).
batch_stat = sp.Symbol("s", real=True)

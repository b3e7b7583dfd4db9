"""Neural-network pieces of varprop: normalization (pure functions, Flax NNX and Linen
modules) and activations.

The pure functions in :mod:`varprop._src.core.normalizers` hold all the mathematics;
:mod:`varprop._src.nn.norm_nnx` and :mod:`varprop._src.nn.norm_linen` are thin wrappers that
own the parameters and running statistics in each Flax API's own way.
"""

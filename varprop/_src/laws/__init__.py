"""SymPy side of varprop: schemes, activation moments, layer laws, rendering.

Nothing in this package imports JAX.
"""

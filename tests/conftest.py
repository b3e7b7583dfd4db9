"""Strict JAX settings for the whole suite (as far as Flax and optax run under them)."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

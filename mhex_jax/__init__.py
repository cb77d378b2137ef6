"""mhex_jax: Multi-Head Explainer (MHEX) and friends in JAX/Flax."""

"""Test-session setup: 8 virtual CPU devices so data-parallel code is exercised."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # After XLA_FLAGS: jax reads them at import.
import jax.numpy as jnp
import numpy as np


def random_variables(model, images):
  """Random {"params", "batch_stats"} filled with numpy from the shapes of ``model.init``
  (running init itself compiles every initialiser: far slower on CPU than these tests)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape)
    if name == "mean":
      return jnp.zeros(leaf.shape)
    if name == "kernel":  # He scaling keeps the activations O(1) through the depth.
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in), jnp.float32)
    return jnp.asarray(0.1 * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(
      fill, {k: v for k, v in shapes.items() if k in ("params", "batch_stats")})

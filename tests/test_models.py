"""MHEX module and MHEX-ResNet structure (SPEC §2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models import resnet


def test_mhex_module_formula_by_hand():
  s = jnp.array([[[1.0, -2.0], [3.0, 0.0]]])  # [B=1, T=2, C=2]
  r = jnp.array([[[0.0, 1.0], [1.0, 1.0]]])
  module = mhex_lib.MHEX(num_classes=3)
  w = jnp.array([[1.0, -1.0], [0.5, 2.0]])
  p = jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
  params = {"params": {"gate": {"kernel": w}, "head": {"kernel": p}}}
  (out, logits), state = module.apply(params, s, r, mutable=["mhex"])
  z = np.maximum(np.array([2.0, -1.0]) + np.array([0.5, 1.0]), 0)  # ReLU(mean s + mean r)
  a = z @ np.asarray(w)
  g = 1 / (1 + np.exp(-a))
  np.testing.assert_allclose(logits[0], a @ np.asarray(p), rtol=1e-6)
  np.testing.assert_allclose(out[0], g * np.asarray(s[0]) + np.asarray(r[0]), rtol=1e-6)
  np.testing.assert_allclose(state["mhex"]["features"][0], out)


def test_mhex_module_means_use_valid_tokens_only():
  module = mhex_lib.MHEX(num_classes=2)
  s = jnp.array([[[1.0], [1.0], [100.0]]])
  r = jnp.zeros_like(s)
  params = module.init(jax.random.key(0), s, r)
  mask = jnp.array([[True, True, False]])
  _, logits_masked = module.apply(params, s, r, mask)
  _, logits_short = module.apply(params, s[:, :2], r[:, :2])
  np.testing.assert_allclose(logits_masked, logits_short, rtol=1e-6)


def test_identity_gate_init_preserves_the_plain_block():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  plain = resnet.ResNet(num_classes=3, width=4, stem="small", mhex=False)
  gated = resnet.ResNet(num_classes=3, width=4, stem="small", gate_init="identity")
  plain_vars = plain.init(jax.random.key(1), x)
  gated_vars = gated.init(jax.random.key(1), x)
  # Give the gated network the plain network's convolutions and norms.
  params = dict(gated_vars["params"])
  for name, value in plain_vars["params"].items():
    if name != "classifier":
      params[name] = {**value, **({"mhex": params[name]["mhex"]} if "mhex" in params[name] else {})}
  variables = {"params": params, "batch_stats": plain_vars["batch_stats"]}
  _, gated_state = gated.apply(variables, x, mutable=["mhex"])
  # The last block's pre-activation sum equals the plain block's s + r: recompute the plain
  # network's final features through capture_intermediates.
  _, plain_state = plain.apply(plain_vars, x, capture_intermediates=True, mutable=["intermediates"])
  plain_out = plain_state["intermediates"]["block_07"]["__call__"][0][0]
  gated_out = gated_state["mhex"]["block_07"]["mhex"]["features"][0]
  np.testing.assert_allclose(jax.nn.relu(gated_out), plain_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth,heads,channels", [(18, 8, 32), (34, 16, 32), (50, 16, 128)])
def test_heads_per_depth_and_final_width(depth, heads, channels):
  model = resnet.ResNet(num_classes=5, depth=depth, width=4, stem="small")
  x = jnp.zeros((2, 32, 32, 3))
  shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
  assert shapes[0].shape == (heads, 2, 5)
  gate = shapes[1]["params"][f"block_{heads - 1:02d}"]["mhex"]["gate"]["kernel"]
  assert gate.shape == (channels, channels)


def test_stems_last_stage_stride_and_restricted_stages():
  x = jnp.zeros((1, 64, 64, 3))
  def final_map(**kw):
    model = resnet.ResNet(num_classes=3, width=4, **kw)
    (_, state) = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), x, mutable=["params", "batch_stats", "mhex"]))
    return state["mhex"]["block_07"]["mhex"]["features"][0].shape[1:3]
  assert final_map(stem="imagenet") == (2, 2)
  assert final_map(stem="imagenet", last_stage_stride=1) == (4, 4)
  assert final_map(stem="small") == (8, 8)
  model = resnet.ResNet(num_classes=3, width=4, stem="small", mhex_stages=(1, 2))
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
  assert out.shape == (5, 1, 3)  # 4 MHEX heads + the pooled classifier as the last head.
  assert "classifier" in variables["params"]
  assert "mhex" not in variables["params"]["block_00"]
  with pytest.raises(ValueError, match="mhex_stages"):
    resnet.ResNet(num_classes=3, mhex_stages=(4,)).init(jax.random.key(0), x)


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 8, 8, 2), (2, 16, 12, 4)])
def test_stem_max_pool_is_flax_max_pool_in_value_and_gradient(shape):
  """The nine-slice max pool against nn.max_pool (select-and-scatter): the same values and, on
  inputs without ties, the same gradient; odd sizes check the output size and the padding."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), shape)
  reference = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(resnet.stem_max_pool(x), reference(x))
  cotangent = jax.random.normal(jax.random.key(1), reference(x).shape)
  grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * cotangent))(x)
  np.testing.assert_array_equal(grad(resnet.stem_max_pool), grad(reference))

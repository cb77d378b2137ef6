"""explain/token_flow.py: the class flow and the exact logit split of MHEX-ViT patch maps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhex_jax.errors import ConfigError
from mhex_jax.explain import equivalent_matrix
from mhex_jax.explain import token_flow
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models import vit


def _vit(**overrides):
  options = dict(num_classes=3, image_size=8, patch_size=2, hidden_size=8, num_layers=3,
                 num_heads=2, intermediate_size=16, gate_init="random")
  options.update(overrides)
  model = vit.ViT(**options)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 3)), jnp.float32)
  params = model.init(jax.random.key(1), images[:1])["params"]
  # Larger output biases and gates away from 0.5, so that every term of the split matters.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.3 if "bias" in jax.tree_util.keystr(path) else x * 3.0, params)
  return model, {"params": params}, images


@pytest.mark.parametrize("overrides", [{}, {"class_token": False}, {"layer_scale": 0.5},
                                       {"num_register_tokens": 2}])
def test_split_sums_to_the_final_logit_and_routing_keeps_the_sum(overrides):
  model, variables, images = _vit(**overrides)
  targets = jnp.array([0, 2, 1])
  forward = token_flow.forward_pass(model, variables, images, targets)
  logits = model.apply(variables, images)[-1]
  expected = np.asarray(logits)[np.arange(3), np.asarray(targets)]
  split = token_flow.split_contributions(forward)
  total = split.embedding.sum(1) + sum(a.sum(1) for a in split.attention) + sum(
      m.sum(1) for m in split.mlp)
  np.testing.assert_allclose(total, expected, rtol=1e-4, atol=1e-4)
  assert all(float(jnp.abs(m).max()) > 1e-3 for m in split.mlp)  # Every term is present.
  for route in token_flow.SPLIT_ROUTES:
    routed = token_flow.split_map(forward, route=route)
    np.testing.assert_allclose(routed.sum(1), expected, rtol=1e-4, atol=1e-4)


def test_messages_rebuild_the_attention_output():
  # Σ_h Σ_j A[t, j] o^h[j] + b_O = s − h: the per-head rows of the output kernel are the ones
  # the model multiplies (a wrong (h, d_h) order of the kernel's rows fails here).
  model, variables, images = _vit(layer_scale=0.5)
  forward = token_flow.forward_pass(model, variables, images, None)
  for layer in forward.layers:
    heads = layer.probs.shape[1]
    kernel = np.asarray(layer.output_kernel).reshape(heads, -1, layer.output_kernel.shape[-1])
    messages = np.einsum("bhtk,hkd->bhtd", np.asarray(layer.values), kernel)
    out = np.einsum("bhtj,bhjd->btd", np.asarray(layer.probs), messages) + np.asarray(
        layer.output_bias)
    out = out * np.asarray(layer.attention_scale)
    np.testing.assert_allclose(out, layer.post_attention - layer.layer_input, atol=1e-4)
    readout = jnp.asarray(np.random.default_rng(3).normal(size=(3, out.shape[-1])), jnp.float32)
    np.testing.assert_allclose(
        token_flow.message_scores(layer, readout),
        np.einsum("bhtd,bd->bht", messages * np.asarray(layer.attention_scale), readout),
        rtol=1e-4, atol=1e-4)


def _hand_pass(probs, values, pool):
  """A FlowPass of identity output kernels and zero biases (d = d_h = 2, one head)."""
  layers = []
  for p, v in zip(probs, values):
    block = mhex_lib.MHEXBlock("x", jnp.eye(2), jnp.eye(2), jnp.zeros((1, 3, 2)))
    layers.append(token_flow.LayerPass(jnp.asarray(p)[None, None], jnp.asarray(v)[None, None],
                                       jnp.eye(2), jnp.zeros(2), None, None, None, block))
  return token_flow.FlowPass(layers, None, None, jnp.array([0]), jnp.asarray(pool)[None])


def test_flow_map_by_hand_on_two_layers():
  # E = I, class 0: token j's score is its value's first entry; Ā = A with columns scaled by
  # [v_j[0]]₊. Pooled over tokens 1 and 2.
  a0 = np.array([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0.5]])
  a1 = np.array([[1.0, 0, 0], [0, 0, 1.0], [0.5, 0, 0.5]])
  v0 = np.array([[2.0, 9], [-1.0, 9], [1.0, 9]])  # Weights 2, 0, 1.
  v1 = np.array([[1.0, 0], [3.0, 0], [0.5, 0]])  # Weights 1, 3, 0.5.
  pool = np.array([0, 0.5, 0.5])
  forward = _hand_pass([a0, a1], [v0, v1], pool)
  bar0 = a0 * np.array([2.0, 0, 1])
  bar1 = a1 * np.array([1.0, 3, 0.5])
  r = (np.eye(3) + bar1) @ (np.eye(3) + bar0)
  expected = pool @ (r - np.eye(3))
  np.testing.assert_allclose(token_flow.flow_map(forward)[0], expected, rtol=1e-6)
  # Written out: pool·(I + Ā1) = (0.25, 0.5, 0.875), times Ā0 = (1, 0, 0.4375); their sum
  # minus the pool.
  np.testing.assert_allclose(expected, [1.25, 0, 0.8125])


@pytest.mark.parametrize("options", [dict(map="flow"), dict(map="flow", flow_rows="final"),
                                     dict(map="split", route="flow"),
                                     dict(map="split", route="attention"),
                                     dict(map="split", route="none"),
                                     dict(route="flow")])
def test_patch_maps_are_finite_and_batch_invariant(options):
  model, variables, images = _vit()
  targets = jnp.array([0, 2, 1])
  explain = jax.jit(functools.partial(equivalent_matrix.mhex_patch_saliency, model, **options))
  out = explain(variables, images, targets)
  assert out.saliency.shape == (3, 8, 8) and bool(jnp.all(jnp.isfinite(out.saliency)))
  alone = explain(variables, images[1:2], targets[1:2])
  np.testing.assert_allclose(alone.saliency[0], out.saliency[1], atol=1e-5)
  np.testing.assert_array_equal(out.targets, targets)


def test_flow_options_are_checked():
  model, variables, images = _vit()
  for options, match in ((dict(map="grad"), "map='grad'"), (dict(route="gae"), "route='gae'"),
                         (dict(flow_rows="all"), "flow_rows='all'")):
    with pytest.raises(ConfigError, match=match):
      equivalent_matrix.mhex_patch_saliency(model, variables, images, **options)
  shortcut, variables, images = _vit(gate_placement="shortcut")
  with pytest.raises(ConfigError, match="gate_placement='branch'"):
    equivalent_matrix.mhex_patch_saliency(shortcut, variables, images, map="split")


def test_flow_options_are_refused_off_vit_before_any_data():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mhex_jax import config_lib  # pylint: disable=g-import-not-at-top
  from mhex_jax.explain import methods  # pylint: disable=g-import-not-at-top
  from mhex_jax.models import resnet  # pylint: disable=g-import-not-at-top
  eval_config = config_lib.base_config().eval
  eval_config.mhex.map = "split"
  model = resnet.ResNet(num_classes=3, depth=18, width=8, mhex=True)
  with pytest.raises(ConfigError, match="ViT patch maps only"):
    methods.mhex_options(eval_config, model)
  assert isinstance(eval_config, ml_collections.ConfigDict)
  config = config_lib.base_config()
  config.eval.mhex.map = "splt"
  with pytest.raises(ConfigError, match="eval.mhex.map='splt'"):
    config_lib.validate(config)


def test_flow_without_the_stream_is_the_flow_with_it():
  # map="flow" leaves the residual stream unsown (stream=False); the class flow reads only
  # attention, values and the MHEX blocks, so it is the same map. The split refuses such a pass.
  model, variables, images = _vit(num_register_tokens=2)
  full = token_flow.forward_pass(model, variables, images, None)
  lean = token_flow.forward_pass(model, variables, images, None, stream=False)
  assert lean.encoder_output is None and lean.layers[0].post_attention is None
  np.testing.assert_array_equal(lean.targets, full.targets)
  for rows in token_flow.FLOW_ROWS:
    np.testing.assert_allclose(token_flow.flow_map(lean, rows), token_flow.flow_map(full, rows),
                               rtol=1e-5, atol=1e-6)
  with pytest.raises(ConfigError, match="stream=True"):
    token_flow.split_contributions(lean)

"""Bring your own Flax model: post-hoc explainers at module paths, MHEX in a user-written CNN."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import bilinear_resize, random_variables
from mhex_jax.explain import equivalent_matrix
from mhex_jax.explain import image
from mhex_jax.explain import registry
from mhex_jax.explain.maps import normalize_maps
from mhex_jax.models import mhex as mhex_lib

NUM_CLASSES = 3
IMAGES = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
TARGETS = jnp.array([0, 1, 2])


class PlainCNN(nn.Module):
  """conv → ReLU → conv (stride 2) → global mean pool → dense: [B, K] logits, no train."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = nn.Conv(5, (3, 3), strides=2)(x)
    return nn.Dense(NUM_CLASSES)(jnp.mean(x, axis=(1, 2)))


class Stage(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Conv(5, (3, 3), strides=2, name="conv")(x)


class NestedCNN(nn.Module):
  """PlainCNN with the second conv inside a named submodule (layer "stage2/conv")."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = Stage(name="stage2")(x)
    return nn.Dense(NUM_CLASSES)(jnp.mean(x, axis=(1, 2)))


def _setup(model):
  return model, random_variables(model, IMAGES[:1])


def _module_output(model, variables, path):
  """The output of the submodule at ``path``, captured by flax (independent of the library)."""
  _, state = model.apply(variables, IMAGES, capture_intermediates=True,
                         mutable=["intermediates"])
  tree = state["intermediates"]
  for key in path.split("/"):
    tree = tree[key]
  return np.asarray(tree["__call__"][0])


def _gap_dense_gradient(variables, acts):
  """∂z_c/∂A[b, i, j, k] = W[k, c] / (h·w) for A pooled and fed to Dense_0: f32[B, C]."""
  dense = np.asarray(variables["params"]["Dense_0"]["kernel"])  # [C, K]
  return dense.T[np.asarray(TARGETS)] / (acts.shape[1] * acts.shape[2])


@pytest.mark.parametrize("model,layer", [(PlainCNN(), "Conv_1"), (NestedCNN(), "stage2/conv"),
                                         (NestedCNN(), "stage2")])
def test_grad_cam_at_a_module_path_matches_the_closed_form(model, layer):
  model, variables = _setup(model)
  acts = _module_output(model, variables, layer)  # [3, 8, 8, 5]
  cam = np.einsum("bk,bhwk->bhw", _gap_dense_gradient(variables, acts), acts)
  assert (cam > 0).any() and (cam < 0).any()  # The ReLU matters.
  expected = bilinear_resize(np.maximum(cam, 0), (16, 16))
  result = jax.jit(lambda v, x, t: image.grad_cam(model, v, x, t, layer=layer))(
      variables, IMAGES, TARGETS)
  assert result.shape == (3, 16, 16) and result.dtype == jnp.float32
  np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_module_layers_and_default_of_a_user_model():
  model, variables = _setup(PlainCNN())
  assert image.module_layers(model, variables, IMAGES) == ["Conv_0", "Conv_1"]
  assert image.layer_names(model, variables, IMAGES) == []  # No mhex_jax named points.
  assert image.default_layer(model, variables, IMAGES) == "Conv_1"  # The map the GAP reads.
  np.testing.assert_array_equal(image.grad_cam(model, variables, IMAGES, TARGETS),
                                image.grad_cam(model, variables, IMAGES, TARGETS, layer="Conv_1"))
  nested, variables = _setup(NestedCNN())
  assert image.module_layers(nested, variables, IMAGES) == ["Conv_0", "stage2/conv", "stage2"]


def test_layer_cam_and_grad_cam_plus_plus_match_closed_forms():
  model, variables = _setup(PlainCNN())
  acts = _module_output(model, variables, "Conv_1")
  grads = _gap_dense_gradient(variables, acts)  # Spatially constant.
  cam = np.einsum("bk,bhwk->bhw", np.maximum(grads, 0), acts)
  np.testing.assert_allclose(image.layer_cam(model, variables, IMAGES, TARGETS, layer="Conv_1"),
                             bilinear_resize(np.maximum(cam, 0), (16, 16)), rtol=1e-5, atol=1e-6)
  # a_ij = 1 / (2 + S_k g_k) for a constant gradient g_k; w_k = h·w·ReLU(g_k)·a.
  sums = acts.sum(axis=(1, 2))
  weights = np.where(grads != 0, 64 * np.maximum(grads, 0) / (2 + sums * grads), 0)
  expected = bilinear_resize(np.maximum(np.einsum("bk,bhwk->bhw", weights, acts), 0), (16, 16))
  np.testing.assert_allclose(
      image.grad_cam_plus_plus(model, variables, IMAGES, TARGETS, layer="Conv_1"), expected,
      rtol=1e-4, atol=1e-6)
  score = image.score_cam(model, variables, IMAGES, TARGETS, layer="Conv_1", chunk_size=5)
  assert score.shape == (3, 16, 16) and bool(jnp.all(jnp.isfinite(score)))
  assert bool(jnp.all(score >= 0))


def test_input_gradients_of_a_user_model():
  model, variables = _setup(PlainCNN())

  def total_target_logit(x):  # [B, K] logits: every example's own row, not logits[-1].
    return jnp.sum(model.apply(variables, x)[jnp.arange(3), TARGETS])

  grads = np.asarray(jax.grad(total_target_logit)(IMAGES))
  assert np.all(np.abs(grads).max(axis=(1, 2, 3)) > 0)
  vanilla = image.vanilla_gradient(model, variables, IMAGES, TARGETS)
  np.testing.assert_allclose(vanilla, np.abs(grads).max(axis=-1), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(image.gradient_x_input(model, variables, IMAGES, TARGETS),
                             np.abs((grads * np.asarray(IMAGES)).sum(axis=-1)), rtol=1e-5,
                             atol=1e-7)
  # Without noise SmoothGrad is the vanilla gradient.
  smooth = image.smoothgrad(model, variables, IMAGES, TARGETS, num_samples=2, noise_level=0.0,
                            rng=jax.random.key(0, impl="rbg"))
  np.testing.assert_allclose(smooth, vanilla, rtol=1e-5, atol=1e-7)


def test_integrated_gradients_completeness_on_a_user_model():
  model, variables = _setup(PlainCNN())

  def target_logit(x):
    return np.asarray(model.apply(variables, x))[np.arange(3), np.asarray(TARGETS)]

  difference = target_logit(IMAGES) - target_logit(jnp.zeros_like(IMAGES))
  assert np.all(np.abs(difference) > 0.05)
  attributions = image.integrated_gradients_attributions(model, variables, IMAGES, TARGETS,
                                                         steps=256, chunk_size=None)
  assert attributions.shape == IMAGES.shape and bool(jnp.all(jnp.isfinite(attributions)))
  np.testing.assert_allclose(np.asarray(attributions).sum(axis=(1, 2, 3)), difference,
                             rtol=1e-2)
  reduced = image.integrated_gradients(model, variables, IMAGES, TARGETS, steps=256,
                                       chunk_size=None)
  np.testing.assert_allclose(reduced, np.abs(np.asarray(attributions).sum(axis=-1)),
                             rtol=1e-5, atol=1e-6)


class SharedConv(nn.Module):
  """One conv applied twice: its output is no single map."""

  @nn.compact
  def __call__(self, x):
    conv = nn.Conv(3, (3, 3), name="shared")
    return nn.Dense(NUM_CLASSES)(jnp.mean(conv(nn.relu(conv(x))), axis=(1, 2)))


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(NUM_CLASSES)(jnp.reshape(x, (x.shape[0], -1)))


class ScoreOnly(nn.Module):
  """Returns one score per example, not logits."""

  @nn.compact
  def __call__(self, x):
    return jnp.mean(nn.Conv(2, (3, 3))(x), axis=(1, 2, 3))


def test_bad_layers_and_outputs_are_named():
  model, variables = _setup(PlainCNN())
  for layer in ("Conv_9", "Dense_0"):  # Dense_0 exists but returns no [B, h, w, C] map.
    with pytest.raises(ValueError, match=rf"Unknown layer='{layer}'.*\['Conv_0', 'Conv_1'\]"):
      image.grad_cam(model, variables, IMAGES, TARGETS, layer=layer)
  model, variables = _setup(SharedConv())
  with pytest.raises(ValueError, match=r"layer='shared' is called 2 times"):
    image.layer_cam(model, variables, IMAGES, TARGETS, layer="shared")
  with pytest.raises(ValueError, match=r"no submodule whose __call__ returns a feature map"):
    image.grad_cam(model, variables, IMAGES, TARGETS)
  model, variables = _setup(MLP())
  with pytest.raises(ValueError, match=r"no submodule whose __call__ returns a feature map"):
    image.default_layer(model, variables, IMAGES)
  assert image.vanilla_gradient(model, variables, IMAGES, TARGETS).shape == (3, 16, 16)
  model, variables = _setup(ScoreOnly())
  with pytest.raises(ValueError, match=r"logits \[B, K\] or per-head logits \[L, B, K\], got "
                                       r"\(3,\)"):
    image.vanilla_gradient(model, variables, IMAGES, TARGETS)


# --- MHEX in a user-written CNN (the recipe of models/mhex.py) -------------------------------

class ResidualBlock(nn.Module):
  features: int
  strides: int

  @nn.compact
  def __call__(self, x):
    r = nn.relu(nn.Conv(self.features, (3, 3), self.strides)(x))
    r = nn.Conv(self.features, (3, 3))(r)
    s = x
    if self.strides != 1 or x.shape[-1] != self.features:
      s = nn.Conv(self.features, (1, 1), self.strides)(x)
    out, logits = mhex_lib.MHEX(NUM_CLASSES)(s, r)
    return nn.relu(out), logits


class MHEXCNN(nn.Module):
  """Four MHEX blocks at 16, 8, 8 and 4 px; returns every head [L, B, K] or the last [B, K]."""
  all_heads: bool = True
  mhex = True  # Offers "mhex" in the registry, as the mhex_jax backbones do.

  @nn.compact
  def __call__(self, x):
    heads = []
    for features, strides in ((4, 1), (6, 2), (6, 1), (8, 2)):
      x, logits = ResidualBlock(features, strides)(x)
      heads.append(logits)
    return jnp.stack(heads) if self.all_heads else heads[-1]


def _expected_mhex_saliency(model, variables, targets, alpha=0.9):
  """SPEC §3 by hand: E = (W P)ᵀ per block on the captured gated sums, positive part of the
  target row, α^(L−ℓ)-weighted resized sum, min–max per example."""
  _, state = model.apply(variables, IMAGES, capture_intermediates=True,
                         mutable=["intermediates"])
  cams = []
  for i in range(4):
    block = f"ResidualBlock_{i}"
    out, _ = state["intermediates"][block]["MHEX_0"]["__call__"][0]  # A = g ⊙ s + r
    kernels = variables["params"][block]["MHEX_0"]
    equivalent = (np.asarray(kernels["gate"]["kernel"]) @ np.asarray(kernels["head"]["kernel"])).T
    weights = np.maximum(equivalent[np.asarray(targets)], 0)  # [B, C]
    cams.append(np.einsum("bhwc,bc->bhw", np.asarray(out), weights))
  total = sum(alpha ** (3 - i) * bilinear_resize(cam, (16, 16)) for i, cam in enumerate(cams))
  low = total.min(axis=(1, 2), keepdims=True)
  high = total.max(axis=(1, 2), keepdims=True)
  return (total - low) / (high - low), cams


def test_mhex_saliency_of_a_user_cnn_matches_the_equivalent_matrix_by_hand():
  model, variables = _setup(MHEXCNN())
  targets = jnp.array([2, 0, 1])
  sal = jax.jit(lambda v, x, t: equivalent_matrix.mhex_saliency(model, v, x, t))(
      variables, IMAGES, targets)
  expected, cams = _expected_mhex_saliency(model, variables, targets)
  assert [c.shape for c in sal.layer_maps] == [(3, 16, 16), (3, 8, 8), (3, 8, 8), (3, 4, 4)]
  for got, want in zip(sal.layer_maps, cams):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(sal.saliency, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(sal.logits, model.apply(variables, IMAGES)[-1], rtol=1e-5, atol=1e-6)
  # A user model returning only its last head gives the same saliency.
  last_head = equivalent_matrix.mhex_saliency(MHEXCNN(all_heads=False), variables, IMAGES,
                                              targets)
  # Eager vs jit min–max maps in [0, 1]: equal up to float32 rounding.
  np.testing.assert_allclose(last_head.saliency, sal.saliency, atol=1e-5)
  predicted = equivalent_matrix.mhex_saliency(model, variables, IMAGES)
  # Eager vs jit logits differ by float32 rounding (~1e-6·max|z|): the argmaxes must agree
  # where the top-2 margin is far above that (here every example: margins ≈ 0.2).
  logits = np.asarray(sal.logits)
  top2 = np.sort(logits, axis=-1)[:, -2:]
  decided = top2[:, 1] - top2[:, 0] > 1e-4 * np.abs(logits).max()
  assert decided.all(), top2
  np.testing.assert_array_equal(np.asarray(predicted.targets)[decided],
                                np.argmax(logits, axis=-1)[decided])


def test_mhex_blocks_sort_numbers_as_numbers():
  kernels = {"gate": {"kernel": jnp.eye(2)}, "head": {"kernel": jnp.ones((2, NUM_CLASSES))}}
  names = ["Block_10", "Block_2", "Block_0"]
  params = {name: {"MHEX_0": kernels} for name in names}
  state = {name: {"MHEX_0": {mhex_lib.FEATURES: (jnp.zeros((1, 2, 2, 2)),)}} for name in names}
  blocks = mhex_lib.collect_blocks(params, state)
  assert [b.name for b in blocks] == ["Block_0/MHEX_0", "Block_2/MHEX_0", "Block_10/MHEX_0"]


def test_registry_takes_a_user_model():
  model, variables = _setup(PlainCNN())
  assert registry.available(model) == tuple(registry.IMAGE_METHODS)
  maps = registry.explainer("grad_cam", model, layer="Conv_1")(variables, IMAGES, TARGETS)
  np.testing.assert_allclose(maps, normalize_maps(
      image.grad_cam(model, variables, IMAGES, TARGETS, layer="Conv_1")), atol=1e-6)
  with pytest.raises(ValueError, match=r"'mhex' for PlainCNN\(mhex=False\).*'grad_cam'"):
    registry.explainer("mhex", model)
  targets = registry.resolve_targets(model, variables, IMAGES, "predicted", TARGETS)
  np.testing.assert_array_equal(targets, jnp.argmax(model.apply(variables, IMAGES), axis=-1))
  mhex_model, variables = _setup(MHEXCNN())
  assert registry.available(mhex_model)[0] == "mhex"
  maps = registry.explainer("mhex", mhex_model)(variables, IMAGES, TARGETS)
  np.testing.assert_allclose(
      maps, equivalent_matrix.mhex_saliency(mhex_model, variables, IMAGES, TARGETS).saliency,
      atol=1e-6)
  cam = registry.explainer("layer_cam", mhex_model, layer="ResidualBlock_3/Conv_1")(
      variables, IMAGES, TARGETS)
  assert cam.shape == (3, 16, 16) and float(cam.max()) == 1.0

"""MHEX saliency (SPEC §3): collapse, class weights, integration, normalisation, invariances."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhex_jax.explain import equivalent_matrix
from mhex_jax.explain.maps import normalize_maps
from mhex_jax.models import bert
from mhex_jax.models import common
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models import resnet


def _tiny_model(**kwargs):
  defaults = dict(num_classes=3, depth=18, width=4, stem="small")
  defaults.update(kwargs)
  return resnet.ResNet(**defaults)


@functools.lru_cache(maxsize=None)
def _trained_like_variables(seed=0):
  """A tiny MHEX-ResNet with random (not zero) BN statistics, so maps are non-trivial."""
  model = _tiny_model()
  # Under jit: eagerly, init and the training-mode pass compile each of their ops (10 s).
  variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))
  images = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  _, state = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      {"params": variables["params"], "batch_stats": variables["batch_stats"]}, images)
  return model, {"params": variables["params"], "batch_stats": state["batch_stats"]}


def test_equivalent_matrix_equals_gate_then_head_per_pixel():
  rng = np.random.default_rng(0)
  c, k = 6, 4
  w = rng.normal(size=(c, c)).astype(np.float32)
  p = rng.normal(size=(c, k)).astype(np.float32)
  features = rng.normal(size=(2, 5, 7, c)).astype(np.float32)
  e = equivalent_matrix.equivalent_matrix(jnp.asarray(w), jnp.asarray(p))
  assert e.shape == (k, c)
  collapsed = jnp.einsum("bhwc,kc->bhwk", features, e)
  two_step = (features @ w) @ p
  np.testing.assert_allclose(collapsed, two_step, rtol=1e-5, atol=1e-5)


def test_class_weights_sign_and_sharpness_by_hand():
  e = jnp.array([[2.0, -1.0, 1.0, -3.0],
                 [2.0, -3.0, 0.0, 1.0]])  # K=2, C=4
  targets = jnp.array([0, 1])
  # Default: positive evidence only.
  np.testing.assert_allclose(equivalent_matrix.class_weights(e, targets),
                             [[2, 0, 1, 0], [2, 0, 0, 1]])
  # Signed map keeps negative weights.
  np.testing.assert_allclose(equivalent_matrix.class_weights(e, targets, beta_neg=-1.0),
                             [[2, -1, 1, -3], [2, -3, 0, 1]])
  # Sharpness: channel 0's positive mass is shared 50/50, so tau_pos=0.6 drops it for both
  # classes; channel 1's negative mass is 1/4 for class 0 and 3/4 for class 1.
  w = equivalent_matrix.class_weights(e, targets, tau_pos=0.6, tau_neg=0.5, beta_neg=-1.0)
  np.testing.assert_allclose(w, [[0, 0, 1, -3], [0, -3, 0, 1]])


def test_target_rows_equal_rows_of_the_equivalent_matrix():
  rng = np.random.default_rng(3)
  c, k = 5, 7
  block = mhex_lib.MHEXBlock("b", jnp.asarray(rng.normal(size=(c, c)), jnp.float32),
                                 jnp.asarray(rng.normal(size=(c, k)), jnp.float32), None)
  targets = jnp.array([6, 0, 6, 3])
  e = equivalent_matrix.equivalent_matrix(block.gate_kernel, block.head_kernel)
  np.testing.assert_allclose(
      equivalent_matrix.target_rows(block.gate_kernel, block.head_kernel, targets), e[targets],
      rtol=1e-5, atol=1e-6)
  for options in ({}, {"beta_neg": -1.0}, {"beta_pos": 0.5, "beta_neg": 2.0},
                  {"contrastive": True}, {"tau_pos": 0.3, "tau_neg": 0.2, "beta_neg": -1.0}):
    np.testing.assert_allclose(equivalent_matrix.block_weights(block, targets, **options),
                               equivalent_matrix.class_weights(e, targets, **options),
                               rtol=1e-5, atol=1e-6, err_msg=str(options))


def test_integration_weights_on_hand_built_case():
  b = 2
  c1 = jnp.full((b, 8, 8), 1.0)
  c2 = jnp.full((b, 8, 8), 10.0)
  c3 = jnp.full((b, 4, 4), 100.0)
  out = equivalent_matrix.integrate_cams([c1, c2, c3], (8, 8), alpha=0.5)
  # α^(L−ℓ): 0.25, 0.5, 1 for ℓ = 1, 2, 3.
  np.testing.assert_allclose(out, np.full((b, 8, 8), 0.25 * 1 + 0.5 * 10 + 100.0), rtol=1e-6)
  assert equivalent_matrix.depth_weights(3, 0.9) == pytest.approx([0.81, 0.9, 1.0])


def test_grouped_resize_equals_resizing_each_layer():
  rng = np.random.default_rng(1)
  cams = [jnp.asarray(rng.normal(size=(2,) + s), jnp.float32)
          for s in [(8, 8), (8, 8), (4, 4), (4, 4), (2, 2)]]
  grouped = equivalent_matrix.integrate_cams(cams, (16, 16), alpha=0.8)
  weights = equivalent_matrix.depth_weights(len(cams), 0.8)
  ungrouped = sum(w * jax.image.resize(c, (2, 16, 16), "bilinear", antialias=False)
                  for w, c in zip(weights, cams))
  np.testing.assert_allclose(grouped, ungrouped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shapes,out_size", [
    ([(7, 9), (3, 5), (12, 12)], (10, 20)),  # Non-integer factors, one axis shrinks.
    ([(20, 20), (5, 5)], (20, 20)),  # A map already at the output size.
    ([(14, 14)] * 3, (224, 224)),  # One group (ViT patch maps).
])
def test_fused_resize_equals_jax_image_resize(shapes, out_size):
  rng = np.random.default_rng(2)
  cams = [jnp.asarray(rng.normal(size=(3,) + s), jnp.float32) for s in shapes]
  fused = equivalent_matrix.integrate_cams(cams, out_size, alpha=0.7)
  weights = equivalent_matrix.depth_weights(len(cams), 0.7)
  expected = sum(w * jax.image.resize(c, (3, *out_size), "bilinear", antialias=False)
                 for w, c in zip(weights, cams))
  np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-5)
  # The 1-D matrices are the resize itself: rows sum to 1 (a convex combination of inputs).
  matrix = equivalent_matrix.bilinear_matrix(7, 10)
  assert matrix.shape == (10, 7)
  np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("size_in,size_out", [(7, 10), (4, 32), (7, 224), (14, 224),
                                              (56, 112), (10, 7), (224, 56), (5, 5), (1, 6)])
def test_bilinear_matrix_is_jax_resize_of_the_identity(size_in, size_out):
  # The host-side matrix is jax.image.resize's own weights, up and down. (Bit for bit on the
  # CPUs tried; the bound allows one float32 step of weights ≤ 1, in case XLA fuses the sample
  # positions' multiply-add differently elsewhere. Half-pixel or antialiasing mistakes move
  # weights by 1e-2 or more.)
  expected = jax.image.resize(jnp.eye(size_in, dtype=jnp.float32), (size_out, size_in),
                              "bilinear", antialias=False)
  np.testing.assert_allclose(equivalent_matrix.bilinear_matrix(size_in, size_out),
                             np.asarray(expected), rtol=0, atol=1.2e-7)


def test_normalize_constant_map_is_zero_not_nan():
  maps = jnp.stack([jnp.full((4, 4), 3.0), jnp.arange(16.0).reshape(4, 4)])
  out = normalize_maps(maps)
  assert not np.isnan(np.asarray(out)).any()
  np.testing.assert_array_equal(out[0], np.zeros((4, 4)))
  assert float(out[1].min()) == 0.0 and float(out[1].max()) == 1.0
  np.testing.assert_allclose(out[1], np.arange(16.0).reshape(4, 4) / 15.0, rtol=1e-6)


def test_layer_cams_match_a_per_example_loop():
  model, variables = _trained_like_variables()
  images = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
  targets = jnp.array([0, 2, 1, 2])
  _, state = model.apply(variables, images, mutable=["mhex"])
  blocks = mhex_lib.collect_blocks(variables["params"], state["mhex"])
  assert [b.name for b in blocks] == [f"block_{i:02d}/mhex" for i in range(8)]
  cams = equivalent_matrix.layer_cams(blocks, targets)
  for block, cam in zip(blocks, cams):
    w_k, p_k = np.asarray(block.gate_kernel), np.asarray(block.head_kernel)
    for i in range(4):
      row = (w_k @ p_k)[:, int(targets[i])]
      expected = np.asarray(block.features[i]) @ np.maximum(row, 0)
      np.testing.assert_allclose(cam[i], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 5, 4, 6), (3, 5, 4, 6), (1, 7, 6), (4, 7, 6)])
def test_channel_dot_both_forms_equal_the_float64_sum(shape):
  # Batch 1 takes the matrix-vector product, larger batches the product and channel sum.
  rng = np.random.default_rng(0)
  features, w = rng.normal(size=shape), rng.normal(size=(shape[0], shape[-1]))
  out = equivalent_matrix.channel_dot(jnp.asarray(features, jnp.float32),
                                      jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(out, np.einsum("b...c,bc->b...", features, w), rtol=1e-5,
                             atol=1e-5)


def test_saliency_shapes_targets_and_range():
  model, variables = _trained_like_variables()
  images = jax.random.normal(jax.random.key(3), (5, 16, 16, 3))
  sal = equivalent_matrix.mhex_saliency(model, variables, images)
  assert sal.saliency.shape == (5, 16, 16)
  assert len(sal.layer_maps) == 8
  assert [m.shape[1:] for m in sal.layer_maps] == [(16, 16)] * 2 + [(8, 8)] * 2 + [(4, 4)] * 2 + [(2, 2)] * 2
  np.testing.assert_array_equal(sal.targets, np.argmax(sal.logits, -1))
  s = np.asarray(sal.saliency)
  assert s.min() >= 0.0 and s.max() <= 1.0 and not np.isnan(s).any()
  # Given labels are used as targets.
  labels = jnp.array([1, 1, 0, 2, 0])
  np.testing.assert_array_equal(
      equivalent_matrix.mhex_saliency(model, variables, images, labels).targets, labels)


def test_jit_equals_eager_and_batch_invariance():
  model, variables = _trained_like_variables()
  images = jax.random.normal(jax.random.key(4), (6, 16, 16, 3))
  targets = jnp.array([0, 1, 2, 0, 1, 2])
  fn = functools.partial(equivalent_matrix.mhex_saliency, model, alpha=0.9)
  eager = fn(variables, images, targets).saliency
  jitted = jax.jit(fn)(variables, images, targets).saliency
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
  for i in (0, 3, 5):
    alone = fn(variables, images[i:i + 1], targets[i:i + 1]).saliency[0]
    np.testing.assert_allclose(alone, eager[i], rtol=1e-4, atol=1e-5)


def test_saliency_points_at_a_planted_feature():
  """With one channel that fires only in a patch and a head that reads only that channel,
  the map must peak in the patch."""
  c, k = 4, 2
  features = np.zeros((1, 8, 8, c), np.float32)
  features[0, 2:4, 5:7, 1] = 5.0
  features[0, :, :, 2] = 1.0  # Evidence for the other class everywhere.
  gate = np.eye(c, dtype=np.float32)
  head = np.zeros((c, k), np.float32)
  head[1, 0] = 1.0
  head[2, 1] = 1.0
  block = mhex_lib.MHEXBlock("b", jnp.asarray(gate), jnp.asarray(head), jnp.asarray(features))
  cam = equivalent_matrix.layer_cams([block], jnp.array([0]))[0]
  s = np.asarray(normalize_maps(equivalent_matrix.integrate_cams([cam], (8, 8))))
  assert s[0, 2:4, 5:7].min() == 1.0
  assert s[0].sum() == pytest.approx(4.0)


def test_bad_inputs_raise_named_errors():
  model, variables = _trained_like_variables()
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    equivalent_matrix.mhex_saliency(model, variables, jnp.zeros((16, 16, 3)))
  plain = _tiny_model(mhex=False)
  plain_vars = plain.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="mhex=True"):
    equivalent_matrix.mhex_saliency(plain, plain_vars, jnp.zeros((1, 16, 16, 3)))


def test_masked_normalisation_ignores_masked_positions():
  maps = jnp.array([[5.0, 1.0, 3.0, -100.0], [2.0, 2.0, 7.0, 9.0]])
  mask = jnp.array([[True, True, True, False], [True, True, False, False]])
  out = np.asarray(normalize_maps(maps, mask))
  np.testing.assert_allclose(out[0], [1.0, 0.0, 0.5, 0.0])
  np.testing.assert_array_equal(out[1], [0.0, 0.0, 0.0, 0.0])  # Constant over the mask.


def test_token_saliency_layer_choice_masking_and_padding_invariance():
  rng = np.random.default_rng(3)
  c, k, t = 5, 3, 6
  blocks = [mhex_lib.MHEXBlock(f"layer_{i:02d}", jnp.asarray(rng.normal(size=(c, c)), jnp.float32),
                                   jnp.asarray(rng.normal(size=(c, k)), jnp.float32),
                                   jnp.asarray(rng.normal(size=(2, t, c)), jnp.float32))
            for i in range(4)]
  targets = jnp.array([1, 2])
  mask = jnp.array([[False, True, True, True, False, False],
                    [False, True, True, True, True, False]])
  sal, cams = equivalent_matrix.token_saliency(blocks, targets, mask, layers=(0, 1, 2))
  expected = np.asarray(cams[0] + cams[1] + cams[2])
  for b in range(2):
    m = np.asarray(mask[b])
    v = expected[b, m]
    np.testing.assert_allclose(np.asarray(sal)[b, m], (v - v.min()) / (v.max() - v.min()),
                               rtol=1e-5, atol=1e-6)
    assert (np.asarray(sal)[b, ~m] == 0).all()
  decay, _ = equivalent_matrix.token_saliency(blocks, targets, mask, layers=None, alpha=0.5)
  weighted = sum(w * np.asarray(c_) for w, c_ in zip([0.125, 0.25, 0.5, 1.0], cams))
  v = weighted[0, np.asarray(mask[0])]
  np.testing.assert_allclose(np.asarray(decay)[0, np.asarray(mask[0])],
                             (v - v.min()) / (v.max() - v.min()), rtol=1e-5, atol=1e-6)
  # Huge values on masked-out tokens do not move the normalisation.
  poisoned = [b._replace(features=b.features.at[:, 0].set(1e6).at[:, -1].set(-1e6)) for b in blocks]
  sal2, _ = equivalent_matrix.token_saliency(poisoned, targets, mask)
  np.testing.assert_allclose(sal2, sal, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="out of range"):
    equivalent_matrix.token_saliency(blocks, targets, mask, layers=(7,))


def test_vit_patch_saliency_matches_manual_grid_and_is_batch_invariant():
  from mhex_jax.models import vit
  model = vit.ViT(num_classes=3, image_size=16, patch_size=4, hidden_size=8, num_layers=2,
                  num_heads=2, intermediate_size=16, gate_init="random")
  images = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  variables = model.init(jax.random.key(1), images[:1])
  variables = {"params": variables["params"]}
  targets = jnp.array([0, 2, 1])
  spec = dict(route="none", layers=(), feature_norm="none", beta_neg=0.0)  # SPEC §4.
  sal = equivalent_matrix.mhex_patch_saliency(model, variables, images, targets, alpha=0.5,
                                              **spec)
  assert sal.saliency.shape == (3, 16, 16)
  assert [m.shape for m in sal.layer_maps] == [(3, 4, 4)] * 2
  _, state = model.apply(variables, images, mutable=["mhex"])
  blocks = mhex_lib.collect_blocks(variables["params"], state["mhex"])
  cams = equivalent_matrix.layer_cams(blocks, targets)
  grid = [np.asarray(c)[:, 1:].reshape(3, 4, 4) for c in cams]  # Token 0 is the class token.
  total = 0.5 * grid[0] + grid[1]
  expected = jax.image.resize(total, (3, 16, 16), "bilinear", antialias=False)
  np.testing.assert_allclose(sal.saliency, normalize_maps(expected), atol=1e-5)
  alone = equivalent_matrix.mhex_patch_saliency(model, variables, images[1:2], targets[1:2],
                                                alpha=0.5, **spec)
  np.testing.assert_allclose(alone.saliency[0], sal.saliency[1], atol=1e-5)


@pytest.mark.parametrize("placement", ["shortcut", "branch", "sum"])
def test_signed_ungated_token_cam_decomposes_the_head_logit(placement):
  # o_c = E_c · ReLU(mean_t s + mean_t r). With positive features no channel is clipped, so
  # the head is linear and the mean over valid tokens of the signed CAM of A = s + r is o_c.
  rng = np.random.default_rng(7)
  s, r = (jnp.asarray(rng.uniform(0.1, 1.0, size=(2, 6, 5)), jnp.float32) for _ in range(2))
  mask = jnp.array([[True] * 6, [True, True, True, False, False, True]])
  module = mhex_lib.MHEX(num_classes=3, gate_placement=placement, saliency_features="ungated")
  params = module.init(jax.random.key(0), s, r, mask)["params"]
  (_, logits), state = module.apply({"params": params}, s, r, mask, mutable=["mhex"])
  block = mhex_lib.collect_blocks({"m": params}, {"m": state["mhex"]})[0]
  # The module alone as the model: its Equivalent Matrix is the collection itself.
  alone = mhex_lib.with_equivalent_matrices({"params": params})[mhex_lib.EQUIVALENT]
  np.testing.assert_allclose(
      mhex_lib.collect_blocks(params, state["mhex"], alone)[0].equivalent,
      mhex_lib.equivalent_matrix(block.gate_kernel, block.head_kernel), rtol=1e-6)
  m = mask.astype(jnp.float32)
  for c in range(3):
    cam = equivalent_matrix.layer_cams([block], jnp.full((2,), c), beta_neg=-1.0)[0]
    np.testing.assert_allclose((cam * m).sum(1) / m.sum(1), logits[:, c], rtol=1e-5, atol=1e-5)


def test_contrastive_weights_and_feature_norms_by_hand():
  e = jnp.array([[3.0, 0.0], [1.0, 2.0]])
  # Mean row (2, 1): class 0 → (1, −1), class 1 → (−1, 1).
  np.testing.assert_allclose(
      equivalent_matrix.class_weights(e, jnp.array([0, 1]), contrastive=True, beta_neg=-1.0),
      [[1, -1], [-1, 1]])
  np.testing.assert_allclose(equivalent_matrix.class_weights(e, jnp.array([0]), contrastive=True),
                             [[1, 0]])
  a = jnp.array([[[1.0, 2.0, 6.0]]])
  np.testing.assert_allclose(equivalent_matrix.normalize_features(a, "centre"), [[[-2, -1, 3]]])
  scaled = equivalent_matrix.normalize_features(a, "layer_norm")
  np.testing.assert_allclose(scaled, np.array([[[-2, -1, 3]]]) / np.sqrt(14 / 3), rtol=1e-5)
  with pytest.raises(ValueError, match="feature_norm='bad'"):
    equivalent_matrix.normalize_features(a, "bad")


def test_routing_by_hand_identity_attention_and_mass():
  cams = [jnp.array([[1.0, 2.0, 4.0]]), jnp.array([[0.0, -1.0, 3.0]])]
  source = jnp.array([[False, True, True]])
  eye = jnp.eye(3)[None, None]
  # Identity attention: M = rownorm(I + I) = I, so routing only drops non-source tokens.
  routed = equivalent_matrix.route_cams(cams, [eye, eye], source)
  np.testing.assert_allclose(routed[0], [[0, 2, 4]])
  np.testing.assert_allclose(routed[1], [[0, -1, 3]])
  # Layer 1 attends token 2 → token 0 (one head), layer 2 is the identity:
  # M_1 = rownorm(α + I) has row 2 = (½, 0, ½), so token 2's evidence is split with token 0.
  to_0 = jnp.zeros((1, 1, 3, 3)).at[0, 0, 2, 0].set(1.0).at[0, 0, 0, 0].set(1.0).at[
      0, 0, 1, 1].set(1.0)
  routed = equivalent_matrix.route_cams(cams, [to_0, eye], source)
  np.testing.assert_allclose(routed[0], [[2, 2, 2]])
  np.testing.assert_allclose(routed[1], [[1.5, -1, 1.5]])
  # Random attention: each layer's evidence is redistributed, never created.
  rng = np.random.default_rng(0)
  probs = [jax.nn.softmax(jnp.asarray(rng.normal(size=(1, 2, 3, 3))), -1) for _ in range(2)]
  for cam, out in zip(cams, equivalent_matrix.route_cams(cams, probs, source)):
    np.testing.assert_allclose(out.sum(), (cam * source).sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="one attention map per MHEX layer"):
    equivalent_matrix.route_cams(cams, probs[:1], source)


def test_routing_chain_equals_the_partial_rollout_matrices():
  # route_cams multiplies vectors through M_ℓ ⋯ M_1; the definition forms J_ℓ first.
  from mhex_jax.explain import transformer as tx
  rng = np.random.default_rng(1)
  probs = [jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 3, 5, 5)), jnp.float32), -1)
           for _ in range(4)]
  cams = [jnp.asarray(rng.normal(size=(2, 5)), jnp.float32) for _ in range(4)]
  source = jnp.asarray(rng.random((2, 5)) > 0.3)
  routed = equivalent_matrix.route_cams(cams, probs, source)
  for cam, joint, out in zip(cams, tx.rollout_matrices(probs), routed):
    expected = np.einsum("bi,bij->bj", np.where(source, cam, 0.0), joint)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [
    dict(route="attention"), dict(route="attention", beta_neg=-1.0, layers=(0,)),
    dict(contrastive=True), dict(feature_norm="layer_norm"), dict(feature_norm="centre"),
    dict(tau_pos=0.4, tau_neg=0.1, beta_neg=-1.0)])
def test_vit_patch_variants_are_batch_invariant_and_route_like_rollout(options):
  from mhex_jax.explain import transformer as tx
  from mhex_jax.models import vit
  model = vit.ViT(num_classes=3, image_size=16, patch_size=4, hidden_size=8, num_layers=2,
                  num_heads=2, intermediate_size=16, gate_init="random")
  images = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  variables = {"params": model.init(jax.random.key(1), images[:1])["params"]}
  targets = jnp.array([0, 2, 1])
  explain = jax.jit(functools.partial(equivalent_matrix.mhex_patch_saliency, model,
                                      **options))
  sal = explain(variables, images, targets)
  assert sal.saliency.shape == (3, 16, 16) and bool(jnp.all(jnp.isfinite(sal.saliency)))
  alone = explain(variables, images[1:2], targets[1:2])
  np.testing.assert_allclose(alone.saliency[0], sal.saliency[1], atol=1e-5)
  if options.get("route") == "attention":
    # The routed last-layer map is the unrouted CAM pushed through the rollout matrix.
    _, state = model.apply(variables, images, mutable=["mhex", "attention"])
    blocks = mhex_lib.collect_blocks(variables["params"], state["mhex"])
    joint = tx.rollout_matrix(common.attention_probs(state))
    cams = equivalent_matrix.layer_cams(blocks, targets, beta_neg=options.get("beta_neg", -1.0),
                                   feature_norm="layer_norm")
    expected = jnp.einsum("bi,bij->bj", cams[-1][:, 1:], joint[:, 1:, 1:])
    np.testing.assert_allclose(sal.layer_maps[-1].reshape(3, -1), expected, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("options", [
    dict(), dict(route="attention"), dict(beta_neg=0.0, layers=()),
    dict(feature_norm="layer_norm", contrastive=True)])
def test_text_token_variants_ignore_batch_composition_and_padding(options):
  from mhex_jax.models import BERT
  model = BERT(num_classes=3, vocab_size=50, hidden_size=16, num_layers=3, num_heads=2,
               intermediate_size=32, max_positions=32, gate_init="random")
  rng = np.random.default_rng(0)
  ids = np.zeros((3, 12), np.int32)
  lengths = [7, 10, 4]
  for b, n in enumerate(lengths):
    ids[b, :n] = rng.integers(3, 50, n)
  mask = (ids > 0).astype(np.int32)
  special = ids == 0
  special[:, 0] = True
  variables = {"params": model.init(jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask))[
      "params"]}

  def explain(ids, mask, special, targets):
    inputs = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
              "special_tokens_mask": jnp.asarray(special)}
    return equivalent_matrix.mhex_token_saliency(model, variables, inputs, jnp.asarray(targets),
                                                 **options)

  batched = explain(ids, mask, special, [0, 2, 1]).saliency
  # Row 1 alone, padded to 20 tokens.
  alone_ids = np.zeros((1, 20), np.int32)
  alone_ids[0, :10] = ids[1, :10]
  alone_special = alone_ids == 0
  alone_special[:, 0] = True
  alone = explain(alone_ids, (alone_ids > 0).astype(np.int32), alone_special, [2]).saliency
  np.testing.assert_allclose(alone[0, :10], batched[1, :10], atol=1e-5)
  assert float(jnp.ptp(batched[1, 1:10])) > 0
  assert not np.asarray(alone[0, 10:]).any() and not np.asarray(batched[1, 10:]).any()
  assert float(batched[1, 0]) == 0.0  # [CLS] is special: no saliency.


def test_equivalent_matrices_formed_once_give_the_same_maps():
  """``registry.prepare`` forms E = P W per block once; the maps gather its rows and equal the
  maps that form the target rows from W and P (given and predicted classes, the sharpness
  filter's full-E path, a ViT and a text model), and E is what the maps then read."""
  from mhex_jax.explain import registry  # pylint: disable=g-import-not-at-top
  from mhex_jax.models import vit  # pylint: disable=g-import-not-at-top
  model, variables = _trained_like_variables()
  prepared = registry.prepare(model, variables)
  _, state = model.apply(variables, jnp.zeros((1, 16, 16, 3)), train=False, mutable=["mhex"])
  blocks = mhex_lib.collect_blocks(variables["params"], state["mhex"],
                                   prepared[mhex_lib.EQUIVALENT])
  assert len(blocks) == 8
  for block in blocks:  # One program against eager dots: equal up to float32 rounding.
    expected = equivalent_matrix.equivalent_matrix(block.gate_kernel, block.head_kernel)
    np.testing.assert_allclose(block.equivalent, expected, rtol=1e-5,
                               atol=1e-6 * float(jnp.max(jnp.abs(expected))))
  images = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
  targets = jnp.array([0, 2, 1, 2])
  for target, options in ((targets, {}), (None, {}), (targets, dict(tau_pos=0.3))):
    plain = equivalent_matrix.mhex_saliency(model, variables, images, target, **options)
    fast = equivalent_matrix.mhex_saliency(model, prepared, images, target, **options)
    for a, b in zip(plain.layer_maps, fast.layer_maps):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(a))))
  # The maps read E when it is given: E doubled doubles every raw layer map.
  doubled = {**prepared, mhex_lib.EQUIVALENT: jax.tree.map(lambda e: 2 * e,
                                                           prepared[mhex_lib.EQUIVALENT])}
  plain = equivalent_matrix.mhex_saliency(model, variables, images, targets)
  twice = equivalent_matrix.mhex_saliency(model, doubled, images, targets)
  for a, b in zip(plain.layer_maps, twice.layer_maps):
    np.testing.assert_allclose(b, 2 * a, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(a))))
  # A ViT's patch map and a text model's token map.
  vit_model = vit.ViT(num_classes=3, image_size=16, patch_size=4, hidden_size=8, num_layers=2,
                      num_heads=2, intermediate_size=16, gate_init="random")
  vit_variables = {"params": vit_model.init(jax.random.key(1), images[:1])["params"]}
  vit_prepared = registry.prepare(vit_model, vit_variables)
  for options in ({}, dict(map="flow"), dict(map="split", route="flow", flow_rows="final")):
    explain = registry.explainer("mhex", vit_model, **options)
    np.testing.assert_allclose(explain(vit_prepared, images, None),
                               explain(vit_variables, images, None), atol=1e-5, err_msg=options)
  text_model = bert.BERT(vocab_size=20, num_classes=3, hidden_size=8, num_layers=2, num_heads=2,
                         intermediate_size=16, max_positions=8, mhex=True)
  ids = jnp.array([[2, 5, 6, 3, 0, 0], [2, 7, 8, 9, 3, 0]])
  inputs = {"input_ids": ids, "attention_mask": (ids > 0).astype(jnp.int32),
            "token_type_ids": jnp.zeros_like(ids), "special_tokens_mask": ids < 4}
  text_variables = {"params": text_model.init(jax.random.key(3), ids,
                                               inputs["attention_mask"])["params"]}
  np.testing.assert_allclose(
      registry.explainer("mhex", text_model)(registry.prepare(text_model, text_variables),
                                             inputs, jnp.array([1, 2])),
      registry.explainer("mhex", text_model)(text_variables, inputs, jnp.array([1, 2])),
      atol=1e-5)


def test_equivalent_matrices_of_another_model_or_none_are_named():
  from mhex_jax.explain import registry  # pylint: disable=g-import-not-at-top
  model, variables = _trained_like_variables()
  images = jnp.zeros((1, 16, 16, 3))
  other = registry.prepare(_tiny_model(num_classes=5), _tiny_model(num_classes=5).init(
      jax.random.key(0), images))
  mixed = {**variables, mhex_lib.EQUIVALENT: other[mhex_lib.EQUIVALENT]}
  with pytest.raises(ValueError, match=r"shape \(5, 4\).*with_equivalent_matrices"):
    equivalent_matrix.mhex_saliency(model, mixed, images, jnp.array([0]))
  with pytest.raises(ValueError, match="no Equivalent Matrix for MHEX module block_00"):
    equivalent_matrix.mhex_saliency(model, {**variables, mhex_lib.EQUIVALENT: {}}, images,
                                    jnp.array([0]))
  plain = _tiny_model(mhex=False)
  with pytest.raises(ValueError, match="no MHEX module"):
    mhex_lib.with_equivalent_matrices(plain.init(jax.random.key(0), images))
  assert registry.prepare(plain, variables) is variables

"""The explainer registry: names per model kind, normalisation, ViT token maps on the image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_variables
from mhex_jax.explain import equivalent_matrix
from mhex_jax.explain import image
from mhex_jax.explain import registry
from mhex_jax.explain import transformer
from mhex_jax.explain.maps import normalize_maps
from mhex_jax.models import bert, resnet, vit

IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
TARGETS = jnp.array([0, 2])


def _vit(mhex=True, class_token=True):
  model = vit.ViT(num_classes=3, image_size=16, patch_size=4, hidden_size=16, num_layers=2,
                  num_heads=2, intermediate_size=32, mhex=mhex, class_token=class_token)
  return model, random_variables(model, IMAGES[:1])


def test_available_names_follow_the_model():
  plain_resnet = resnet.ResNet(num_classes=3, width=4, stem="small", mhex=False)
  assert registry.available(plain_resnet) == tuple(registry.IMAGE_METHODS)
  mhex_vit, _ = _vit()
  assert registry.available(mhex_vit) == (
      ("mhex",) + tuple(registry.IMAGE_METHODS) + tuple(registry.TOKEN_METHODS))
  # Without a class token there is no [CLS] row: only the image methods.
  assert "attcat" not in registry.available(_vit(class_token=False)[0])
  text = bert.BERT(num_classes=3, vocab_size=20, hidden_size=16, num_layers=3, num_heads=2,
                   intermediate_size=24, max_positions=16)
  assert registry.available(text) == ("mhex",) + tuple(registry.TOKEN_METHODS)
  with pytest.raises(ValueError, match="grad_cam"):
    registry.explainer("grad_cam", text)
  with pytest.raises(ValueError, match="mhex"):
    registry.explainer("mhex", plain_resnet)


def test_image_methods_are_normalised_raw_maps():
  model, variables = _vit()
  maps = jax.jit(registry.explainer("grad_cam", model))(variables, IMAGES, TARGETS)
  # Both sides jitted, the same operations (two programs, so only equal up to float32
  # rounding: measured equal; eager differs by 3e-7). Maps lie in [0, 1]: a missing or wrong
  # normalisation is off by O(1).
  expected = jax.jit(lambda v, x, t: normalize_maps(image.grad_cam(model, v, x, t)))(
      variables, IMAGES, TARGETS)
  np.testing.assert_allclose(maps, expected, rtol=0, atol=1e-5)
  assert maps.shape == (2, 16, 16) and float(maps.min()) == 0.0


def test_token_methods_on_a_vit_go_to_the_patch_grid_then_the_image():
  model, variables = _vit()
  maps = registry.explainer("attcat", model)(variables, IMAGES, TARGETS)
  tokens = transformer.attcat(model, variables, {"image": IMAGES}, TARGETS)  # [B, 1 + 16]
  grid = np.asarray(tokens)[:, 1:].reshape(2, 4, 4)  # Class token dropped, row-major patches.
  expected = jax.image.resize(jnp.asarray(grid), (2, 16, 16), "bilinear")
  np.testing.assert_allclose(maps, normalize_maps(expected), atol=1e-6)


def test_mhex_entry_matches_the_patch_saliency():
  model, variables = _vit()
  maps = registry.explainer("mhex", model, alpha=0.5)(variables, IMAGES, TARGETS)
  direct = equivalent_matrix.mhex_patch_saliency(model, variables, IMAGES, TARGETS, alpha=0.5)
  np.testing.assert_allclose(maps, direct.saliency, atol=1e-6)


def test_resolve_targets():
  model, variables = _vit()
  logits = model.apply(variables, IMAGES)[-1]
  np.testing.assert_array_equal(
      registry.resolve_targets(model, variables, IMAGES, "predicted", TARGETS),
      np.argmax(logits, -1))
  np.testing.assert_array_equal(
      registry.resolve_targets(model, variables, IMAGES, "labels", TARGETS), TARGETS)
  with pytest.raises(ValueError, match="'predicted' or 'labels'"):
    registry.resolve_targets(model, variables, IMAGES, "argmax", TARGETS)


def _text_model_and_inputs():
  model = bert.BERT(num_classes=3, vocab_size=20, hidden_size=16, num_layers=3, num_heads=2,
                    intermediate_size=24, max_positions=16, gate_init="random")
  ids = jnp.array([[1, 5, 7, 9, 2, 0, 0], [1, 4, 4, 8, 6, 3, 2]])
  mask = (ids > 0).astype(jnp.int32)
  inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": jnp.zeros_like(ids),
            "special_tokens_mask": (ids <= 2)}
  variables = {"params": model.init(jax.random.key(0), ids[:1], mask[:1])["params"]}
  return model, variables, inputs


def _models_and_inputs():
  cnn = resnet.ResNet(num_classes=3, width=4, stem="small", mhex=True)
  vit_model, vit_variables = _vit()
  return [(cnn, random_variables(cnn, IMAGES[:1]), IMAGES),
          (vit_model, vit_variables, IMAGES), _text_model_and_inputs()]


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["cnn", "vit", "text"])
def test_mhex_predicted_targets_from_one_forward_equal_the_two_pass_result(kind):
  model, variables, inputs = _models_and_inputs()[kind]
  labels = jnp.array([1, 1])
  two_pass_targets = registry.resolve_targets(model, variables, inputs, "predicted", labels)
  two_pass = registry.explainer("mhex", model)(variables, inputs, two_pass_targets)
  explain = jax.jit(registry.targeted_explainer("mhex", model, "predicted"))
  maps, targets = explain(variables, inputs, labels)
  # jit and eager logits differ by float32 rounding (~1e-6·max|z|), so the two argmaxes must
  # agree only where the top-2 margin is far above that (here every example: margins ≥ 0.01).
  logits = np.asarray(equivalent_matrix.explanation(model, variables, inputs,
                                                    two_pass_targets).logits)
  top2 = np.sort(logits, axis=-1)[:, -2:]
  decided = top2[:, 1] - top2[:, 0] > 1e-4 * np.abs(logits).max()
  assert decided.all(), top2
  np.testing.assert_array_equal(np.asarray(targets)[decided],
                                np.asarray(two_pass_targets)[decided])
  # Min–max maps in [0, 1] from jit vs eager: differ by float32 rounding (measured ≤ 5e-7).
  np.testing.assert_allclose(np.asarray(maps)[decided], np.asarray(two_pass)[decided], atol=1e-5)
  # targets=None in the plain explainer is the same prediction.
  np.testing.assert_allclose(registry.explainer("mhex", model)(variables, inputs, None),
                             two_pass, rtol=1e-6, atol=1e-6)
  maps, targets = registry.targeted_explainer("mhex", model, "labels")(variables, inputs,
                                                                       labels)
  np.testing.assert_array_equal(targets, labels)
  np.testing.assert_allclose(maps, registry.explainer("mhex", model)(variables, inputs, labels),
                             rtol=1e-6, atol=1e-6)


def test_targeted_explainer_of_a_post_hoc_method_resolves_the_prediction():
  model, variables = _vit()
  maps, targets = registry.targeted_explainer("grad_cam", model, "predicted")(
      variables, IMAGES, TARGETS)
  predicted = registry.resolve_targets(model, variables, IMAGES, "predicted", TARGETS)
  np.testing.assert_array_equal(targets, predicted)
  np.testing.assert_allclose(maps, registry.explainer("grad_cam", model)(variables, IMAGES,
                                                                         predicted), atol=1e-6)
  np.testing.assert_allclose(registry.explainer("grad_cam", model)(variables, IMAGES, None),
                             maps, atol=1e-6)
  with pytest.raises(ValueError, match="'predicted' or 'labels'"):
    registry.targeted_explainer("grad_cam", model, "argmax")

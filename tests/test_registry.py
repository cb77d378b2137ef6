"""The explainer registry: names per model kind, normalisation, ViT token maps on the image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_variables
from mhex_jax.explain import image
from mhex_jax.explain import mhex as mhex_explain
from mhex_jax.explain import registry
from mhex_jax.explain import transformer
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
  raw = image.grad_cam(model, variables, IMAGES, TARGETS)
  np.testing.assert_allclose(maps, mhex_explain.normalize_maps(raw), atol=1e-6)
  assert maps.shape == (2, 16, 16) and float(maps.min()) == 0.0


def test_token_methods_on_a_vit_go_to_the_patch_grid_then_the_image():
  model, variables = _vit()
  maps = registry.explainer("attcat", model)(variables, IMAGES, TARGETS)
  tokens = transformer.attcat(model, variables, {"image": IMAGES}, TARGETS)  # [B, 1 + 16]
  grid = np.asarray(tokens)[:, 1:].reshape(2, 4, 4)  # Class token dropped, row-major patches.
  expected = jax.image.resize(jnp.asarray(grid), (2, 16, 16), "bilinear")
  np.testing.assert_allclose(maps, mhex_explain.normalize_maps(expected), atol=1e-6)


def test_mhex_entry_matches_the_patch_saliency():
  model, variables = _vit()
  maps = registry.explainer("mhex", model, alpha=0.5)(variables, IMAGES, TARGETS)
  direct = mhex_explain.mhex_patch_saliency(model.apply, variables, IMAGES, TARGETS,
                                            patch_size=(4, 4), alpha=0.5)
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

"""ViT and MHEX-ViT (SPEC §4) and the Hugging Face ViT import, checked against transformers."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from conftest import max_abs_diffs, mhex_calls, randomise_torch_model
from mhex_jax import weights
from mhex_jax.explain import equivalent_matrix
from mhex_jax.models import bert
from mhex_jax.models import common
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models import vit

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            image_size=16, patch_size=4, num_channels=3)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
  """A tiny random ViTForImageClassification (3 labels; keys prefixed with ``vit.``)."""
  path = tmp_path_factory.mktemp("vit_cls")
  config = transformers.ViTConfig(num_labels=3, **TINY)
  randomise_torch_model(transformers.ViTForImageClassification(config)).save_pretrained(path)
  return path


def _images(batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, 16, 16, 3)).astype(np.float32)


def _torch_outputs(model, images):
  with torch.no_grad():
    return model(torch.tensor(images.transpose(0, 3, 1, 2)), output_hidden_states=True,
                 output_attentions=True)


def test_plain_vit_classifier_matches_transformers(classifier_dir):
  reference = transformers.ViTForImageClassification.from_pretrained(
      classifier_dir, attn_implementation="eager").eval()
  images = _images()
  expected = _torch_outputs(reference, images)
  model, variables = weights.load_vit(classifier_dir, num_classes=3, mhex=False)
  logits, state = model.apply(variables, images, mutable=["hidden_states", "attention"])
  assert logits.shape == (1, 2, 3)
  np.testing.assert_allclose(logits[0], expected.logits.numpy(), atol=1e-5)
  hidden = common.hidden_states(state)
  assert len(hidden) == len(expected.hidden_states) == 3
  assert max(max_abs_diffs(hidden, expected.hidden_states)) < 1e-5
  assert max(max_abs_diffs(common.attention_probs(state), expected.attentions)) < 1e-5


def test_vitmodel_checkpoint_without_prefix(tmp_path):
  config = transformers.ViTConfig(**TINY)
  reference = randomise_torch_model(transformers.ViTModel(config, add_pooling_layer=True))
  reference.save_pretrained(tmp_path)
  images = _images(seed=1)
  expected = _torch_outputs(reference, images)
  # The pooler is skipped; a plain model needs a new classifier.
  model, variables = weights.load_vit(tmp_path, num_classes=2, mhex=False, new_head=True)
  _, state = model.apply(variables, images, mutable=["hidden_states"])
  assert max(max_abs_diffs(common.hidden_states(state), expected.hidden_states)) < 1e-5
  config = weights.vit_config_from_hf(tmp_path)
  assert (config["image_size"], config["patch_size"], config["qkv_bias"],
          config["class_token"]) == (16, 4, True, True)


def test_mhex_vit_heads_features_and_patch_grid(classifier_dir):
  model, variables = weights.load_vit(classifier_dir, num_classes=4)
  assert (model.gate_placement, model.gate_init) == ("branch", "random")
  logits, state = model.apply(variables, _images(), mutable=["mhex"])
  assert logits.shape == (2, 2, 4)
  blocks = mhex_lib.collect_blocks(variables["params"], state["mhex"])
  assert [b.features.shape for b in blocks] == [(2, 17, 32)] * 2
  grids = [b._replace(features=vit.tokens_to_grid(b.features, model.grid_size)) for b in blocks]
  assert grids[0].features.shape == (2, 4, 4, 32)
  cams = equivalent_matrix.layer_cams(grids, jnp.argmax(logits[-1], -1))
  saliency = equivalent_matrix.integrate_cams(cams, (16, 16))
  assert saliency.shape == (2, 16, 16)
  assert "final_norm" not in variables["params"] and "classifier" not in variables["params"]


@pytest.mark.parametrize("placement", mhex_lib.GATE_PLACEMENTS)
def test_identity_gate_reproduces_plain_hidden_states(classifier_dir, placement):
  images = _images()
  plain, plain_vars = weights.load_vit(classifier_dir, num_classes=3, mhex=False)
  gated, gated_vars = weights.load_vit(classifier_dir, num_classes=3, gate_init="identity",
                                       gate_placement=placement)
  _, plain_state = plain.apply(plain_vars, images, mutable=["hidden_states"])
  _, gated_state = gated.apply(gated_vars, images, mutable=["hidden_states"])
  for a, b in zip(common.hidden_states(gated_state), common.hidden_states(plain_state)):
    np.testing.assert_array_equal(a, b)


def test_class_token_is_excluded_from_the_token_means(classifier_dir):
  model, variables = weights.load_vit(classifier_dir, num_classes=3, gate_init="random")
  images = _images()
  calls, (logits, _) = mhex_calls(model, variables, images)
  (s, r), kwargs = calls[0]
  np.testing.assert_array_equal(kwargs["mask"], [[False] + [True] * 16] * 2)
  mhex_params = variables["params"]["layer_00"]["mhex"]
  z = jax.nn.relu(s[:, 1:].mean(1) + r[:, 1:].mean(1))
  expected = z @ mhex_params["gate"]["kernel"] @ mhex_params["head"]["kernel"]
  np.testing.assert_allclose(logits[0], expected, rtol=1e-5, atol=1e-6)


def test_without_class_token_the_plain_head_mean_pools():
  model = vit.ViT(num_classes=3, image_size=8, patch_size=4, hidden_size=8, num_layers=1,
                  num_heads=2, intermediate_size=16, class_token=False, mhex=False)
  images = jnp.zeros((2, 8, 8, 3))
  logits, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), images))
  assert "cls_token" not in variables["params"]
  assert variables["params"]["position_embeddings"].shape == (1, 4, 8)
  assert logits.shape == (1, 2, 3)


def test_layer_input_gradients_through_perturbations(classifier_dir):
  # A random gate: with the identity init (W = 0) every head is exactly 0 at init.
  model, variables = weights.load_vit(classifier_dir, num_classes=3, gate_init="random")
  images = _images()
  _, zeros = model.apply(variables, images, mutable=["perturbations"])
  target_logit = lambda p: model.apply({**variables, **p}, images)[-1, :, 0].sum()
  grads = jax.jit(jax.grad(target_logit))(zeros)
  per_layer = common.layer_input_perturbations(grads["perturbations"])
  assert [g.shape for g in per_layer] == [(2, 17, 32)] * 2
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in per_layer)


def test_bad_checkpoint_lists_every_problem(classifier_dir, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(classifier_dir, broken)
  tensors = safetensors.numpy.load_file(broken / "model.safetensors")
  del tensors["vit.encoder.layer.0.layernorm_after.weight"]
  tensors["vit.embeddings.mask_token"] = np.zeros((1, 1, 32), np.float32)
  tensors["vit.embeddings.position_embeddings"] = np.zeros((1, 5, 32), np.float32)
  safetensors.numpy.save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError) as error:
    weights.load_vit(broken, num_classes=3, mhex=False)
  message = str(error.value)
  assert "missing (1): encoder.layer.0.layernorm_after.weight" in message
  assert "unexpected (1): embeddings.mask_token" in message
  assert ("mis-shaped (1): embeddings.position_embeddings: checkpoint (1, 5, 32), model "
          "expects (1, 17, 32)") in message


def test_wrong_image_size_is_named(classifier_dir):
  model, variables = weights.load_vit(classifier_dir, num_classes=3)
  with pytest.raises(ValueError, match=r"\[B, 16, 16, 3\].*\(2, 32, 32, 3\)"):
    model.apply(variables, jnp.zeros((2, 32, 32, 3)))


@pytest.mark.parametrize("patch_size", [4, 8])
def test_conv_stem_receptive_field_is_centred_where_maps_draw_the_token(patch_size):
  # A token's receptive field (the pixels its embedding depends on) must be centred on the
  # pixel where the bilinear resize of a patch-grid map puts that token: the patch centre.
  size, (row, col) = 4 * patch_size, (2, 1)
  model = vit.ViT(num_classes=3, image_size=size, patch_size=patch_size, hidden_size=16,
                  num_layers=1, num_heads=2, intermediate_size=16, patch_stem="conv")
  images = jnp.asarray(np.random.default_rng(0).normal(size=(1, size, size, 3)), jnp.float32)
  variables = {"params": model.init(jax.random.key(0), images)["params"]}
  grid = model.grid_size
  token = 1 + row * grid[1] + col
  probe = jnp.asarray(np.random.default_rng(1).normal(size=16), jnp.float32)

  def embedding(x):
    _, state = model.apply(variables, x, mutable=["hidden_states"])
    return common.hidden_states(state)[0][0, token] @ probe

  support = np.abs(np.asarray(jax.grad(embedding)(images)[0])).sum(-1) > 0
  rows, cols = np.nonzero(support.any(1))[0], np.nonzero(support.any(0))[0]
  field_centre = ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)

  one_hot = jnp.zeros((1, *grid)).at[0, row, col].set(1.0)
  drawn = np.asarray(equivalent_matrix.integrate_cams([one_hot], (size, size), alpha=1.0))[0]
  ys, xs = np.mgrid[:size, :size]
  drawn_centre = ((drawn * ys).sum() / drawn.sum(), (drawn * xs).sum() / drawn.sum())
  patch_centre = (row * patch_size + (patch_size - 1) / 2, col * patch_size + (patch_size - 1) / 2)
  np.testing.assert_allclose(field_centre, patch_centre)
  np.testing.assert_allclose(drawn_centre, patch_centre, atol=1e-4)

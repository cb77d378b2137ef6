"""DeiT, DINOv2 and DINOv2 with registers imported into the one ``ViT``: parity with transformers
(logits and every layer's hidden states), position-embedding resizing, and prefix tokens kept
out of the MHEX token means and of every map."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import max_abs_diffs, mhex_calls, randomise_torch_model
from mhex_jax import tasks
from mhex_jax import weights
from mhex_jax.errors import ConfigError
from mhex_jax.explain import attribution
from mhex_jax.explain import equivalent_matrix
from mhex_jax.explain import registry
from mhex_jax.explain import transformer as tx
from mhex_jax.models import common
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models import vit

LABELS = {i: name for i, name in enumerate(["cat", "dog", "owl", "fox", "elk"])}
# Unusual sizes: d = 36 over 3 heads, 28 px images of 4 px patches (a 7×7 grid), 5 classes.
TINY = dict(hidden_size=36, num_hidden_layers=2, num_attention_heads=3, image_size=28,
            patch_size=4, num_channels=3, id2label=LABELS,
            label2id={name: i for i, name in LABELS.items()})
REGISTERS = 3
# family → (transformers config, task model, run-time image size (H, W)). DINOv2 runs off its
# 7×7 position grid (HF resizes the position embeddings whenever the grid differs): up to
# 9×8, and with registers (antialiased) to 5×9, one axis down, one up.
FAMILIES = {
    "deit": (transformers.DeiTConfig(intermediate_size=37, **TINY),
             transformers.DeiTForImageClassificationWithTeacher, (28, 28)),
    "dinov2": (transformers.Dinov2Config(mlp_ratio=3, **TINY),
               transformers.Dinov2ForImageClassification, (36, 32)),
    "dinov2_with_registers": (
        transformers.Dinov2WithRegistersConfig(num_register_tokens=REGISTERS, use_swiglu_ffn=True,
                                               **TINY),
        transformers.Dinov2WithRegistersForImageClassification, (20, 36)),
}


def _randomise(model):
  """Every weight off its init, the layer scales far from their init of 1 (a missing λ fails)."""
  randomise_torch_model(model)
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("lambda1"):
        p.copy_(0.2 + 1.6 * torch.rand(p.shape, generator=generator))
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """family → (checkpoint directory, the torch model in eval mode, its run-time image size)."""
  out = {}
  for family, (config, task_model, size) in FAMILIES.items():
    path = tmp_path_factory.mktemp(family)
    reference = _randomise(task_model._from_config(config, attn_implementation="eager"))
    reference.save_pretrained(path, safe_serialization=True)
    out[family] = (path, reference, size)
  return out


def _images(size, batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, *size, 3)).astype(np.float32)


def _torch_outputs(model, images):
  with torch.no_grad():
    return model(torch.tensor(images.transpose(0, 3, 1, 2)), output_hidden_states=True)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_plain_model_matches_transformers(checkpoints, family):
  path, reference, size = checkpoints[family]
  images = _images(size)
  expected = _torch_outputs(reference, images)
  model, variables = weights.load_vit(path, num_classes=5, mhex=False, image_size=size)
  logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["hidden_states"]))(
      variables, images)
  hidden = common.hidden_states(state)
  assert logits.shape == (1, 2, 5)
  assert len(hidden) == len(expected.hidden_states) == 3
  logit_diff = float(np.max(np.abs(logits[0] - expected.logits.numpy())))
  hidden_diff = max(max_abs_diffs(hidden, expected.hidden_states))
  print(f"{family}: max |Δlogit| {logit_diff:.2e}, max per-layer |Δh| {hidden_diff:.2e}")
  assert logit_diff < 1e-4 and hidden_diff < 1e-4


def test_deit_without_teacher_classifies_from_the_class_token(tmp_path):
  config = FAMILIES["deit"][0]
  reference = _randomise(transformers.DeiTForImageClassification._from_config(config))
  reference.save_pretrained(tmp_path, safe_serialization=True)
  images = _images((28, 28), seed=1)
  model, variables = weights.load_vit(tmp_path, num_classes=5, mhex=False)
  assert model.head == "class" and model.distillation_token
  np.testing.assert_allclose(model.apply(variables, images)[0],
                             _torch_outputs(reference, images).logits.numpy(), atol=1e-4)


def test_config_from_hf_reads_every_family(checkpoints):
  read = {family: weights.vit_config_from_hf(checkpoints[family][0]) for family in FAMILIES}
  fields = ("distillation_token", "num_register_tokens", "feed_forward", "head",
            "position_grid", "position_interpolation", "layer_norm_eps", "intermediate_size")
  assert {f: read["deit"][f] for f in fields} == dict(
      distillation_token=True, num_register_tokens=0, feed_forward="mlp", head="distilled",
      position_grid=(7, 7), position_interpolation="none", layer_norm_eps=1e-12,
      intermediate_size=37)
  assert read["deit"]["layer_scale"] is None
  assert {f: read["dinov2"][f] for f in fields} == dict(
      distillation_token=False, num_register_tokens=0, feed_forward="mlp",
      head="class_and_mean", position_grid=(7, 7), position_interpolation="bicubic",
      layer_norm_eps=1e-6, intermediate_size=108)
  # SwiGLU keeps 2/3 of 4·36 = 144, rounded up to a multiple of 8: 96.
  assert {f: read["dinov2_with_registers"][f] for f in fields} == dict(
      distillation_token=False, num_register_tokens=REGISTERS, feed_forward="swiglu",
      head="class_and_mean", position_grid=(7, 7), position_interpolation="bicubic_antialias",
      layer_norm_eps=1e-6, intermediate_size=96)
  assert read["dinov2"]["layer_scale"] == 1.0


@pytest.mark.parametrize("antialias", [False, True])
def test_bicubic_matrix_is_torchs_interpolate(antialias):
  rng = np.random.default_rng(0)
  table = rng.normal(size=(1, 4, 7, 6)).astype(np.float32)
  for size in [(9, 8), (5, 13), (3, 6), (14, 2)]:
    expected = torch.nn.functional.interpolate(torch.tensor(table), size=size, mode="bicubic",
                                               align_corners=False, antialias=antialias)
    ours = np.einsum("Hh,bchw,Ww->bcHW", vit.bicubic_matrix(7, size[0], antialias), table,
                     vit.bicubic_matrix(6, size[1], antialias))
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-5)


def test_deit_refuses_another_image_size_unless_asked_to_resize(checkpoints):
  path = checkpoints["deit"][0]
  with pytest.raises(ConfigError, match=r"9×9 patch grid but the position embeddings are for "
                     r"7×7; use image_size \(28, 28\) or .*position_interpolation='bicubic'"):
    weights.load_vit(path, num_classes=5, image_size=36)
  model, _ = weights.load_vit(path, num_classes=5, image_size=36,
                              position_interpolation="bicubic")
  assert model.grid_size == (9, 9) and model.position_grid == (7, 7)


def test_a_model_of_another_family_is_refused_by_name(checkpoints):
  config = {**weights.vit_config_from_hf(checkpoints["dinov2"][0]), "layer_scale": None}
  model = vit.ViT(num_classes=5, **config)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 3)))["params"]
  with pytest.raises(ValueError, match=r"'dinov2' checkpoint, which loads into "
                     r"ViT\(layer_scale=1.0\), but the model has layer_scale=None"):
    weights.load(model, params, checkpoints["dinov2"][0])


# ---------------------------------------------------------------------------------------------
# MHEX on DeiT and on the registers model: fresh W and P, patch-only token means and maps.

# family → (prefix tokens, patch grid at its run-time size).
PREFIX_AND_GRID = {"deit": (2, (7, 7)), "dinov2_with_registers": (1 + REGISTERS, (5, 9))}


@pytest.fixture(scope="module")
def mhex_models(checkpoints):
  """family → (MHEX model, its variables, images) for the families of ``PREFIX_AND_GRID``."""
  out = {}
  for family in PREFIX_AND_GRID:
    path, _, size = checkpoints[family]
    model, variables = weights.load_vit(path, num_classes=5, image_size=size)
    out[family] = (model, variables, jnp.asarray(_images(size, seed=2)))
  return out


def test_mhex_load_reports_fresh_gates_and_heads(checkpoints, caplog):
  path, _, size = checkpoints["dinov2_with_registers"]
  with caplog.at_level(logging.INFO):
    _, variables = weights.load_vit(path, num_classes=5, image_size=size)
  report = caplog.text
  fresh = report.split("kept ")[1].split(" left ")[0]
  assert fresh.startswith("4 fresh") and all(
      f"params/layer_0{i}/mhex/{m}/kernel" in fresh for i in range(2) for m in ("gate", "head"))
  unused = report.split("file tensors unused (")[1]
  for key in ("classifier.weight", "dinov2_with_registers.layernorm.weight",
              "dinov2_with_registers.embeddings.mask_token"):
    assert key in unused
  assert "register_tokens" not in unused and "lambda1" not in unused
  assert variables["params"]["register_tokens"].shape == (1, REGISTERS, 36)


@pytest.mark.parametrize("family", sorted(PREFIX_AND_GRID))
def test_mhex_token_means_and_maps_skip_every_prefix_token(mhex_models, family):
  model, variables, images = mhex_models[family]
  prefix, grid = PREFIX_AND_GRID[family]
  assert (model.num_prefix_tokens, model.grid_size) == (prefix, grid)
  calls, (logits, state) = mhex_calls(model, variables, images)
  (s, r), kwargs = calls[0]
  np.testing.assert_array_equal(kwargs["mask"], [[False] * prefix + [True] * np.prod(grid)] * 2)
  layer = variables["params"]["layer_00"]["mhex"]
  z = jax.nn.relu(s[:, prefix:].mean(1) + r[:, prefix:].mean(1))
  np.testing.assert_allclose(logits[0], z @ layer["gate"]["kernel"] @ layer["head"]["kernel"],
                             rtol=1e-5, atol=1e-5)

  # MHEX where the features sit: each layer's map is E's target row on the patch rows of A.
  targets = jnp.array([1, 3])
  saliency = equivalent_matrix.mhex_patch_saliency(model, variables, images, targets,
                                                   route="none", feature_norm="none")
  blocks = mhex_lib.collect_blocks(variables["params"], state["mhex"])
  grids = [b._replace(features=vit.tokens_to_grid(b.features, grid, prefix)) for b in blocks]
  cams = equivalent_matrix.layer_cams(grids, targets, beta_neg=-1.0)
  for ours, expected in zip(saliency.layer_maps, cams):
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_every_transformer_explainer_maps_the_registers_model_patches(mhex_models):
  model, variables, images = mhex_models["dinov2_with_registers"]
  targets = jnp.array([1, 3])
  methods = ("mhex",) + tuple(registry.TOKEN_METHODS)
  maps = jax.jit(lambda v, x: {name: registry.explainer(name, model)(v, x, targets)
                               for name in methods})(variables, images)
  assert {name: m.shape for name, m in maps.items()} == {name: (2, 20, 36) for name in methods}
  assert all(np.all(np.isfinite(m)) for m in maps.values())

  # Grad-SAM: 0 on the registers, elsewhere the column mean over the class and patch queries.
  scores = np.asarray(tx.grad_sam(model, variables, {"image": images}, targets))
  valid = np.asarray(tasks.task_of(model).token_inputs({"image": images}).valid)
  np.testing.assert_array_equal(valid, [[True] + [False] * REGISTERS + [True] * 45] * 2)
  assert np.all(scores[:, 1:1 + REGISTERS] == 0)
  _, state, grads = attribution.perturbation_gradients(
      model.apply, variables, (images,), targets, collections=(common.ATTENTION,))
  total = sum(np.mean(np.maximum(g, 0) * a, axis=1) for a, g in
              zip(common.attention_probs(state), common.attention_probs({"attention": grads})))
  queries = valid[0]
  np.testing.assert_allclose(scores[:, queries], total[:, queries][:, :, queries].mean(1),
                             rtol=1e-4, atol=1e-7)

"""Post-hoc image explainers (SPEC §7, image baselines): closed forms, invariants, defaults."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import bilinear_resize, random_variables
from mhex_jax.explain import image
from mhex_jax.models import resnet, vit
from mhex_jax.models.common import HIDDEN_STATES, perturb

NUM_CLASSES = 3
# jax.random.normal with the default threefry key takes seconds to compile on CPU; the
# invariances below do not depend on the generator.
FAST_KEY = dict(rng=jax.random.key(0, impl="rbg"))


class OneConv(nn.Module):
  """x → ReLU(1×1 conv, stride 2) = A → perturbation point → global average pool → dense.

  A[b, i, j] = ReLU(x[b, 2i, 2j] @ kernel + bias), so everything is computable by hand.
  """

  @nn.compact
  def __call__(self, x, train=False):
    a = nn.relu(nn.Conv(4, (1, 1), strides=2, name="conv")(x))
    a = perturb(self, resnet.FINAL_FEATURES, a)
    self.sow(HIDDEN_STATES, resnet.FINAL_FEATURES, a)
    return nn.Dense(NUM_CLASSES, name="dense")(jnp.mean(a, axis=(1, 2)))[None]


class ConvBN(nn.Module):
  """A 3×3 conv with eval-mode BatchNorm: a model whose output would depend on the batch in
  train mode, for the batch-invariance checks."""

  @nn.compact
  def __call__(self, x, train=False):
    a = nn.Conv(6, (3, 3), strides=2, name="conv")(x)
    a = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(a))
    a = perturb(self, resnet.FINAL_FEATURES, a)
    self.sow(HIDDEN_STATES, resnet.FINAL_FEATURES, a)
    a = nn.Conv(NUM_CLASSES, (3, 3), name="head")(a * a)
    return jnp.mean(a, axis=(1, 2))[None]


def _images(batch=3, size=16, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _one_conv_variables():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(1, 1, 3, 4)).astype(np.float32)
  bias = np.array([0.2, -0.1, 0.3, -50.0], np.float32)  # Channel 3 is dead: A_3 = 0.
  dense = rng.normal(size=(4, NUM_CLASSES)).astype(np.float32)
  return {"params": {"conv": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)},
                     "dense": {"kernel": jnp.asarray(dense),
                               "bias": jnp.zeros(NUM_CLASSES)}}}


def _one_conv_features(variables, images):
  """A f32[B, 8, 8, 4] by hand."""
  conv = variables["params"]["conv"]
  x = np.asarray(images)[:, ::2, ::2]
  return np.maximum(x @ np.asarray(conv["kernel"])[0, 0] + np.asarray(conv["bias"]), 0)


def _one_conv_case():
  images, targets = _images(), jnp.array([0, 1, 2])
  variables = _one_conv_variables()
  acts = _one_conv_features(variables, images)
  # ∂z_c/∂A[b, i, j, k] = dense[k, c] / (h·w) at every position.
  grads = np.asarray(variables["params"]["dense"]["kernel"]).T[np.asarray(targets)] / 64.0
  return OneConv(), variables, images, targets, acts, grads


def test_grad_cam_matches_closed_form():
  model, variables, images, targets, acts, grads = _one_conv_case()
  feature_map = np.einsum("bk,bhwk->bhw", grads, acts)  # α_k = mean gradient = grads.
  # Both signs occur, so the ReLU matters.
  assert (feature_map > 0).any() and (feature_map < 0).any()
  expected = bilinear_resize(np.maximum(feature_map, 0), (16, 16))
  result = image.grad_cam(model, variables, images, targets)
  assert result.shape == (3, 16, 16) and result.dtype == jnp.float32
  np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_grad_cam_plus_plus_and_layer_cam_match_closed_forms():
  model, variables, images, targets, acts, grads = _one_conv_case()
  # With a spatially constant gradient g_k: a_ij = 1 / (2 + S_k g_k), w_k = h·w·ReLU(g_k) a.
  sums = acts.sum(axis=(1, 2))
  plus_weights = np.where(grads != 0, 64 * np.maximum(grads, 0) / (2 + sums * grads), 0)
  expected = bilinear_resize(np.maximum(np.einsum("bk,bhwk->bhw", plus_weights, acts), 0), (16, 16))
  np.testing.assert_allclose(image.grad_cam_plus_plus(model, variables, images, targets),
                             expected, rtol=1e-5, atol=1e-6)
  expected = bilinear_resize(np.einsum("bk,bhwk->bhw", np.maximum(grads, 0), acts), (16, 16))
  np.testing.assert_allclose(image.layer_cam(model, variables, images, targets), expected,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weighting", ["channel_softmax", "probability"])
def test_score_cam_matches_a_plain_channel_loop(weighting):
  model, variables, images, targets, acts, _ = _one_conv_case()
  scores = np.zeros(acts.shape[::3])
  informative = np.zeros(acts.shape[::3], bool)
  for b in range(acts.shape[0]):
    for k in range(acts.shape[-1]):
      up = bilinear_resize(acts[b:b + 1, ..., k], (16, 16))[0]
      if up.max() == up.min():
        continue  # The dead channel carries no location: weight 0.
      informative[b, k] = True
      mask = (up - up.min()) / (up.max() - up.min())
      logits = np.asarray(model.apply(variables, images[b:b + 1] * mask[None, ..., None])[-1, 0])
      if weighting == "probability":
        logits = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
      scores[b, k] = logits[int(targets[b])]
  assert informative[:, :3].all() and not informative[:, 3].any()
  if weighting == "channel_softmax":
    weights = np.where(informative, np.exp(scores), 0)
    weights /= weights.sum(axis=1, keepdims=True)
  else:
    weights = np.where(informative, scores, 0)
  got_acts, got_weights = image.score_cam_weights(model, variables, images, targets,
                                                  weighting=weighting)
  np.testing.assert_allclose(got_acts, acts, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_weights, weights, rtol=1e-5, atol=1e-7)
  expected = bilinear_resize(np.maximum(np.einsum("bk,bhwk->bhw", weights, acts), 0), (16, 16))
  np.testing.assert_allclose(image.score_cam(model, variables, images, targets,
                                             weighting=weighting), expected,
                             rtol=1e-5, atol=1e-6)


def _conv_bn():
  model = ConvBN()
  variables = {"params": random_variables(model, _images(1))["params"],
               # Statistics far from a batch's own, so a train-mode forward would show.
               "batch_stats": {"bn": {"mean": jnp.full((6,), 0.5), "var": jnp.full((6,), 2.0)}}}
  return model, variables


def test_input_gradient_reductions():
  model, variables = _conv_bn()
  images, targets = _images(), jnp.array([2, 0, 1])

  @jax.jit
  def explain(variables, images, targets):
    args = (model, variables, images, targets)
    return (image.input_gradients(*args), image.vanilla_gradient(*args),
            image.gradient_x_input(*args),
            # Without noise every SmoothGrad sample is the plain gradient.
            image.smoothgrad(*args, num_samples=3, noise_level=0.0),
            image.integrated_gradients_attributions(*args, steps=8),
            image.integrated_gradients(*args, steps=8))

  grads, vanilla, times_input, smooth, ig, ig_map = explain(variables, images, targets)
  grads = np.asarray(grads)
  np.testing.assert_allclose(vanilla, np.abs(grads).max(-1), rtol=1e-6)
  np.testing.assert_allclose(times_input, np.abs((grads * np.asarray(images)).sum(-1)),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(smooth, np.abs(grads).max(-1), rtol=1e-5, atol=1e-7)
  # |Σ_c| cancels to ~0 in places, where rtol alone allows nothing: atol for the rounding of
  # the channel sum (a few ulps of max|ig|).
  np.testing.assert_allclose(ig_map, np.abs(np.asarray(ig).sum(-1)), rtol=1e-6,
                             atol=1e-6 * np.abs(np.asarray(ig)).max())


@pytest.mark.parametrize("explainer,unchunked,chunked", [
    (image.score_cam, dict(chunk_size=None), dict(chunk_size=4)),  # 6 channels: 4 + 2.
    (image.smoothgrad, dict(num_samples=5, chunk_size=None, **FAST_KEY),
     dict(num_samples=5, chunk_size=2, **FAST_KEY)),
    (image.integrated_gradients, dict(steps=7, chunk_size=None), dict(steps=7, chunk_size=3)),
])
def test_chunked_equals_unchunked(explainer, unchunked, chunked):
  model, variables = _conv_bn()
  images, targets = _images(), jnp.array([2, 0, 1])

  @jax.jit
  def both(variables, images, targets):
    return (explainer(model, variables, images, targets, **chunked),
            explainer(model, variables, images, targets, **unchunked))

  np.testing.assert_allclose(*both(variables, images, targets), rtol=1e-5, atol=1e-7)


EXPLAINERS = [image.grad_cam, image.grad_cam_plus_plus, image.layer_cam, image.score_cam,
              image.vanilla_gradient, image.gradient_x_input,
              functools.partial(image.smoothgrad, **FAST_KEY), image.integrated_gradients]


@pytest.mark.parametrize("explainer", EXPLAINERS,
                         ids=lambda f: getattr(f, "func", f).__name__)
def test_batch_invariance_and_jit_equals_eager(explainer):
  model, variables = _conv_bn()
  images, targets = _images(4), jnp.array([2, 0, 1, 1])
  jitted = jax.jit(lambda v, x, t: explainer(model, v, x, t))
  batch = jitted(variables, images, targets)
  assert batch.shape == (4, 16, 16) and bool(jnp.all(batch >= 0))
  assert float(jnp.max(batch)) > 0
  # Example 2 again, next to another image in a batch of another size.
  other = jnp.concatenate([10.0 * _images(1, seed=1), images[2:3]])
  np.testing.assert_allclose(jitted(variables, other, targets[1:3])[1], batch[2],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(explainer(model, variables, images, targets), batch,
                             rtol=1e-5, atol=1e-7)


def _tiny(name):
  """Tiny plain / MHEX ResNet-18 (width 4, small stem) and ViT (d 16, 2 layers, patch 4)."""
  if name.endswith("resnet"):
    model = resnet.ResNet(num_classes=NUM_CLASSES, width=4, stem="small",
                          mhex=name.startswith("mhex"))
  else:
    model = vit.ViT(num_classes=NUM_CLASSES, image_size=16, patch_size=4, hidden_size=16,
                    num_layers=2, num_heads=2, intermediate_size=32,
                    mhex=name.startswith("mhex"))
  return model, random_variables(model, _images(1))


@pytest.mark.parametrize("name,default,shape", [
    ("plain_resnet", "final_features", (2, 2, 2, 32)),
    ("mhex_resnet", "block_07", (2, 2, 2, 32)),
    ("plain_vit", "layer_01", (2, 4, 4, 16)),
    ("mhex_vit", "layer_01", (2, 4, 4, 16)),
])
def test_default_layer_reaches_the_prediction(name, default, shape):
  model, variables = _tiny(name)
  images, targets = _images(2), jnp.array([0, 2])
  assert image.default_layer(model, variables, images) == default

  @jax.jit
  def explain(variables, images, targets):
    return (image.layer_gradients(model, variables, images, targets),
            image.grad_cam(model, variables, images, targets))

  (acts, grads), cam = explain(variables, images, targets)
  assert acts.shape == grads.shape == shape
  # In an MHEX model the last block's output (or the encoder output) would give exactly 0.
  assert float(jnp.min(jnp.max(jnp.abs(grads), axis=(1, 2, 3)))) > 1e-6
  assert cam.shape == (2, 16, 16) and bool(jnp.all(jnp.isfinite(cam)))
  assert bool(jnp.all(cam >= 0)) and float(jnp.max(cam)) > 0


def test_layer_names_and_restricted_mhex_default():
  model, variables = _tiny("mhex_resnet")
  images = _images(1)
  assert image.layer_names(model, variables, images) == [f"block_{i:02d}" for i in range(8)]
  restricted = resnet.ResNet(num_classes=NUM_CLASSES, width=4, stem="small",
                             mhex_stages=(0, 1, 2))
  variables = random_variables(restricted, images)
  # The last stage has a pooled classifier: its input map is the natural CAM layer.
  assert image.default_layer(restricted, variables, images) == "final_features"
  model, variables = _tiny("mhex_vit")
  assert image.layer_names(model, variables, images) == ["layer_00", "layer_01"]


# ReLU networks are only piecewise smooth along the path (each kink costs O(1/steps)), so the
# ResNet needs more path points than the smooth (GELU, softmax) plain ViT.
@pytest.mark.parametrize("name,steps", [("mhex_resnet", 512), ("plain_vit", 128)])
def test_integrated_gradients_completeness(name, steps):
  model, variables = _tiny(name)
  images, targets = _images(2), jnp.array([0, 1])

  def target_logit(x):
    return np.asarray(model.apply(variables, x)[-1])[np.arange(2), np.asarray(targets)]

  difference = target_logit(images) - target_logit(jnp.zeros_like(images))
  assert np.all(np.abs(difference) > 0.1)  # Far enough from 0 for a relative tolerance.
  attributions = image.integrated_gradients_attributions(model, variables, images, targets,
                                                         steps=steps, chunk_size=None)
  assert attributions.shape == images.shape
  np.testing.assert_allclose(np.asarray(attributions).sum(axis=(1, 2, 3)), difference,
                             rtol=1e-2)


def test_bad_inputs_are_named():
  model, variables = _tiny("mhex_resnet")
  images, targets = _images(2), jnp.array([0, 1])
  with pytest.raises(ValueError, match=r"Unknown layer='block_08'.*'block_07'"):
    image.grad_cam(model, variables, images, targets, layer="block_08")
  with pytest.raises(ValueError, match=r"\[B, H, W, C\].*\[16, 16, 3\]"):
    image.grad_cam(model, variables, images[0], targets)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    image.vanilla_gradient(model, variables, images[0], targets)
  with pytest.raises(ValueError, match=r"targets must be int\[B\] with B = 2"):
    image.layer_cam(model, variables, images, jnp.array([0, 1, 2]))
  model, variables = OneConv(), _one_conv_variables()
  with pytest.raises(ValueError, match="weighting='softmax'"):
    image.score_cam(model, variables, images, targets, weighting="softmax")
  with pytest.raises(ValueError, match="chunk_size must be None or a positive"):
    image.smoothgrad(model, variables, images, targets, chunk_size=0)


@pytest.mark.parametrize("in_flight", [1, 2, 3])
@pytest.mark.parametrize("chunk_size", [None, 1, 3, 4, 100])
def test_sum_in_chunks_sums_each_examples_items(chunk_size, in_flight):
  """Items i = step · B + example, value [i, i²]: example e's sum is Σ over the steps s of
  (s·B + e) and of its square, whatever the chunks and however many run side by side."""
  from mhex_jax.explain.maps import sum_in_chunks  # pylint: disable=g-import-not-at-top
  batch, steps = 3, 5
  fn = lambda items, examples: jnp.stack([items, items**2], -1).astype(jnp.float32)
  total = sum_in_chunks(fn, steps * batch, batch, chunk_size, in_flight)
  items = np.arange(steps)[:, None] * batch + np.arange(batch)
  np.testing.assert_array_equal(total, np.stack([items.sum(0), (items**2).sum(0)], -1))


def test_fitting_chunk_size_from_the_models_intermediates(monkeypatch):
  """Twice the bytes of one input's intermediates (float32 outputs of Dense_0 [1, 6], Dense_1
  [1, 3] and the model [1, 3]: 48 bytes, so 96 an item) against a quarter of the device
  memory."""
  from mhex_jax.explain import attribution  # pylint: disable=g-import-not-at-top

  class TwoLayers(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.Dense(6)(x))

  model = TwoLayers()
  variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
  example = (jnp.ones((1, 4)),)
  for memory, expected in ((4 * 96 * 7, 7), (4 * 96 * 7 + 4 * 95, 7), (0, 1), (10**12, 50)):
    monkeypatch.setattr(attribution, "device_memory_bytes", lambda memory=memory: memory)
    assert attribution.fitting_chunk_size(model.apply, variables, example, 50) == expected
  # On a CPU (the tests' device) chunks are also held to CPU_CHUNK_BYTES, here 5 items' worth,
  # but never cut into more than CPU_MAX_CHUNKS (ceil(1000 / 32) = 32 items), and never beyond
  # the memory bound (7 items).
  assert jax.devices()[0].platform == "cpu"
  monkeypatch.setattr(attribution, "CPU_CHUNK_BYTES", 96 * 5 + 95)
  for memory, num_items, expected in ((10**12, 50, 5), (10**12, 1000, 32),
                                      (4 * 96 * 7, 1000, 7), (4 * 96 * 7, 3, 3)):
    monkeypatch.setattr(attribution, "device_memory_bytes", lambda memory=memory: memory)
    assert attribution.fitting_chunk_size(model.apply, variables, example,
                                          num_items) == expected, (memory, num_items)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_sum_in_chunks_holds_one_chunk_at_a_time(in_flight):
  """The chunks run in order: a program of 8 chunks of gradients needs about the temporaries
  of one (each chunk keeps its [512, 8192] hidden layer, 16 MiB, for the backward), not 8 of
  them, also when each chunk runs as two halves side by side (XLA's memory analysis of the
  compiled program; nothing runs)."""
  from mhex_jax.explain.maps import sum_in_chunks  # pylint: disable=g-import-not-at-top
  first = jnp.linspace(-1.0, 1.0, 64 * 8192, dtype=jnp.float32).reshape(64, 8192)
  second = jnp.linspace(1.0, -1.0, 8192, dtype=jnp.float32)

  def fn(items, examples):
    del examples
    inputs = jnp.sin(items.astype(jnp.float32)[:, None] * jnp.arange(64, dtype=jnp.float32))
    return jax.grad(lambda x: jnp.sum(jnp.tanh(x @ first) @ second))(inputs)

  def temporaries(num_chunks, in_flight):
    program = jax.jit(lambda: sum_in_chunks(fn, 512 * num_chunks, 4, 512, in_flight))
    return program.lower().compile().memory_analysis().temp_size_in_bytes

  one, many = temporaries(1, 1), temporaries(8, in_flight)
  assert one >= 16 * 2**20, one
  assert many < 2 * one, (one, many)


def test_sum_in_chunks_in_flight_must_be_positive():
  from mhex_jax.explain.maps import sum_in_chunks  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="in_flight must be a positive int, got 0"):
    sum_in_chunks(lambda items, examples: items, 4, 2, 2, 0)

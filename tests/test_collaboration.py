"""Tests for mhex_jax.metrics.collaboration (SPEC §6).

The reference values are computed plainly here: one ``jax.grad`` of one head's cross-entropy
w.r.t. all parameters per example and per head, in Python loops, then the cosine in numpy.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhex_jax.metrics import collaboration
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models import resnet

NUM_CLASSES = 3
SIZE = 16


def random_variables(model, *inputs, seed=0):
  """Variables of the model's shapes filled from numpy (``model.init`` compiles slowly on CPU).

  Kernels are He-normal; BatchNorm gets random β and running statistics. Fresh BatchNorm
  (β = 0) would make every branch and projection mean exactly 0 in train mode, so that
  z = ReLU(GAP(s) + GAP(r)) would be rounding noise in projection blocks; this way every block
  has a real gate input, and eval and train mode differ.
  """
  rng = np.random.default_rng(seed)
  fill = {
      "kernel": lambda shape: rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[:-1])),
      "scale": lambda shape: 1 + 0.1 * rng.normal(size=shape),
      "bias": lambda shape: 0.3 * rng.normal(size=shape),
      "mean": lambda shape: 0.1 * rng.normal(size=shape),
      "var": lambda shape: 1 + 0.5 * rng.uniform(size=shape),
  }
  shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  shapes = {k: v for k, v in shapes.items() if k in ("params", "batch_stats")}
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.asarray(fill[path[-1].key](x.shape), jnp.float32), shapes)


@functools.lru_cache(maxsize=None)
def tiny_resnet(mhex_stages=None):
  """A random MHEX ResNet-18 (width 4, small stem) and a jitted block_cosines for it."""
  model = resnet.ResNet(num_classes=NUM_CLASSES, depth=18, width=4, stem="small",
                        mhex_stages=mhex_stages)
  variables = random_variables(model, jnp.zeros((1, SIZE, SIZE, 3)))
  cosines = jax.jit(functools.partial(collaboration.block_cosines, model),
                    static_argnames="train_mode")
  return model, variables, cosines


def batch(n=2, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=n).astype(np.int32)
  return images, labels


@functools.lru_cache(maxsize=None)
def plain_head_grad(model, train):
  """jax.grad of one head's cross-entropy w.r.t. all parameters, for one image."""

  @jax.jit
  def head_grad(variables, image, label, head):
    def loss(params):
      v = {**variables, "params": params}
      if train:
        logits, _ = model.apply(v, image[None], train=True, mutable=["batch_stats"])
      else:
        logits = model.apply(v, image[None], train=False)
      return -jax.nn.log_softmax(logits[head, 0])[label]
    return jax.grad(loss)(variables["params"])

  return head_grad


def plain_cosines(model, variables, images, labels, *, train=False):
  """s_ℓ from one plain gradient per (example, head), looping over both."""
  params = variables["params"]
  mhex_blocks = sorted(name for name in params if "mhex" in params[name])
  head_grad = plain_head_grad(model, train)
  out = np.zeros((len(images), len(mhex_blocks) - 1), np.float32)
  for b in range(len(images)):
    grads = [head_grad(variables, images[b], labels[b], h) for h in range(len(mhex_blocks))]
    for l in range(len(mhex_blocks) - 1):
      g_self = np.asarray(grads[l][mhex_blocks[l]]["mhex"]["gate"]["kernel"], np.float64)
      g_next = np.asarray(grads[l + 1][mhex_blocks[l]]["mhex"]["gate"]["kernel"], np.float64)
      out[b, l] = np.sum(g_self * g_next) / (np.linalg.norm(g_self) *
                                             np.linalg.norm(g_next) + 1e-8)
  return out


def test_block_cosines_match_plain_gradients():
  # The plain reference treats each example alone, so this is also the batch invariance.
  model, variables, cosines = tiny_resnet()
  images, labels = batch()
  s = cosines(variables, images, labels)
  assert s.shape == (2, 7) and s.dtype == jnp.float32
  np.testing.assert_allclose(s, plain_cosines(model, variables, images, labels), atol=1e-4)
  assert np.all(np.abs(s) <= 1.0)
  assert np.abs(s).min() > 1e-3 and np.abs(s).max() < 0.999  # non-degenerate cases


def test_block_cosines_train_mode_batch_norm():
  model, variables, cosines = tiny_resnet()
  images, labels = batch()
  s = cosines(variables, images, labels, train_mode=True)
  # At batch size 1 in train mode, a projection block (blocks 2, 4, 6) normalises both of its
  # branches over the image itself, so their spatial means are the BatchNorm biases and its head
  # does not depend on anything before it: G_next of blocks 1, 3, 5 is zero up to rounding and
  # their s_ℓ are noise. Compare the blocks whose next head is an identity block.
  meaningful = [0, 2, 4, 6]
  np.testing.assert_allclose(
      s[:, meaningful],
      plain_cosines(model, variables, images, labels, train=True)[:, meaningful], atol=1e-4)
  assert not np.allclose(s, cosines(variables, images, labels), atol=1e-2)


def test_restricted_stages_skip_the_classifier_head():
  # MHEX in stages 1 and 2 only: blocks 2..5 carry heads 0..3, head 4 is the pooled classifier.
  model, variables, cosines = tiny_resnet((1, 2))
  images, labels = batch()
  paths, num_heads = collaboration.gate_kernel_paths(model, variables, images)
  assert paths[0] == ("block_02", "mhex", "gate", "kernel")
  assert [p[0] for p in paths] == ["block_02", "block_03", "block_04", "block_05"]
  assert num_heads == 5
  s = cosines(variables, images, labels)
  assert s.shape == (2, 3)
  np.testing.assert_allclose(s, plain_cosines(model, variables, images, labels), atol=1e-4)


class ScaledHeads(nn.Module):
  """Two MHEX blocks whose returned heads are (o₁, scale · o₁).

  With K = 2, ∂CE(c·o, y)/∂o = c·(p' − e_y) and p' − e_y = (1 − p'_y)(e_{1−y} − e_y), so both
  gradients w.r.t. W₁ are multiples of one matrix with the sign of c: s₁ = sign(scale).
  """
  scale: float

  @nn.compact
  def __call__(self, x, train=False):
    a, o1 = mhex_lib.MHEX(2, name="block_00")(x, x)
    mhex_lib.MHEX(2, name="block_01")(nn.relu(a), nn.relu(a))
    return jnp.stack([o1, self.scale * o1])


@pytest.mark.parametrize("scale, want", [(1.0, 1.0), (3.0, 1.0), (-2.0, -1.0)])
def test_proportional_gradients_give_plus_or_minus_one(scale, want):
  model = ScaledHeads(scale)
  images = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32)
  variables = random_variables(model, images)
  s = jax.jit(functools.partial(collaboration.block_cosines, model))(
      variables, images, np.array([0, 1], np.int32))
  np.testing.assert_allclose(s, [[want], [want]], atol=1e-5)


def test_frobenius_cosine_by_hand():
  a = jnp.array([[1., 2.], [0., 2.]])
  np.testing.assert_allclose(collaboration.frobenius_cosine(a, 2.5 * a), 1.0, atol=1e-6)
  np.testing.assert_allclose(collaboration.frobenius_cosine(a, -a), -1.0, atol=1e-6)
  # ⟨a, b⟩ = 2 · 1 = 2, ‖a‖ = 3, ‖b‖ = √2.
  b = jnp.array([[0., 1.], [1., 0.]])
  np.testing.assert_allclose(collaboration.frobenius_cosine(a, b), 2 / (3 * np.sqrt(2)),
                             atol=1e-6)
  assert collaboration.frobenius_cosine(a, jnp.zeros_like(a)) == 0.0


def test_pearson_by_hand():
  pearson = jax.jit(collaboration.pearson)  # compiled once per shape: faster than eager
  x = jnp.array([[1., 2., 3., 4.], [1., 2., 3., 4.], [1., 2., 3., 4.], [2., 2., 2., 2.]])
  y = jnp.array([[2., 4., 6., 8.], [4., 3., 2., 1.], [1., 3., 2., 4.], [1., 3., 2., 4.]])
  # Row 2: deviations (−1.5, −.5, .5, 1.5) and (−1.5, .5, −.5, 1.5): 4 / √(5 · 5) = 0.8.
  # Row 3: x is constant, r is undefined → 0.
  np.testing.assert_allclose(pearson(x, y), [1.0, -1.0, 0.8, 0.0], atol=1e-6)
  # A constant whose float32 mean is inexact is still "constant": 0, not a spurious ±1.
  np.testing.assert_array_equal(pearson(jnp.full((7,), 0.1), jnp.arange(7.)), 0.0)
  np.testing.assert_array_equal(pearson(jnp.full((7,), 0.1), jnp.full((7,), 0.1)), 0.0)
  # Masked entries are ignored.
  np.testing.assert_allclose(
      pearson(jnp.array([1., 2., 9., 3., 4.]), jnp.array([1., 3., -7., 2., 4.]),
              jnp.array([1, 1, 0, 1, 1], bool)), 0.8, atol=1e-6)


def test_collaboration_report_by_hand():
  cosines = jnp.array([[0.5, 0.1], [0.2, 0.3], [-0.1, 0.4], [9.0, 9.0]])
  sad = jnp.array([0.9, 0.6, 0.2, 0.0])
  probs = jnp.array([0.1, 0.5, 0.9, 0.0])
  valid = jnp.array([1, 1, 1, 0], bool)
  report = jax.jit(collaboration.collaboration_report)(cosines, sad, probs, valid)
  np.testing.assert_allclose(report["cosine_mean"], [0.2, 0.8 / 3], atol=1e-6)
  np.testing.assert_allclose(report["cosine_total_mean"], 1.4 / 3, atol=1e-6)
  total = np.array([0.6, 0.5, 0.3])
  np.testing.assert_allclose(report["corr_total_sad"], np.corrcoef(total, [.9, .6, .2])[0, 1],
                             atol=1e-6)
  np.testing.assert_allclose(report["corr_total_prob"], np.corrcoef(total, [.1, .5, .9])[0, 1],
                             atol=1e-6)
  np.testing.assert_allclose(report["corr_block_sad"],
                             [np.corrcoef([.5, .2, -.1], [.9, .6, .2])[0, 1],
                              np.corrcoef([.1, .3, .4], [.9, .6, .2])[0, 1]], atol=1e-6)
  np.testing.assert_allclose(report["corr_block_prob"][0], -1.0, atol=1e-6)


def test_grid_cells_split():
  cells = collaboration.grid_cells(SIZE, SIZE, 7)
  assert cells.shape == (49, SIZE, SIZE)
  np.testing.assert_array_equal(cells.sum(axis=0), 1)  # a partition of the pixels
  # Boundaries ⌊16 i / 7⌋ = 0, 2, 4, 6, 9, 11, 13, 16.
  rows = cells.reshape(7, 7, SIZE, SIZE)[:, 0].any(axis=2).sum(axis=1)
  np.testing.assert_array_equal(rows, [2, 2, 2, 3, 2, 2, 3])
  assert cells[3 * 7 + 4, 6:9, 9:11].all() and cells[3 * 7 + 4].sum() == 6
  with pytest.raises(ValueError, match="at least 7×7"):
    collaboration.grid_cells(6, 16, 7)


def test_occlusion_quality_map():
  model, variables, cosines = tiny_resnet()
  images, labels = batch()
  # Chunks of 3 mix cells and examples in one vmap and leave a padded last chunk (98 = 32·3 + 2).
  occlusion = jax.jit(functools.partial(collaboration.occlusion_quality_map, model,
                                        chunk_size=3))
  quality = occlusion(variables, images, labels)
  assert quality.shape == (2, 7, 7) and quality.dtype == jnp.float32
  # Cell (3, 4) covers rows 6..8 and columns 9..10, cell (6, 6) rows 13..15 and columns 13..15
  # (the last item, in the padded chunk); each is filled with its image's channel means.
  mean_colour = images.mean(axis=(1, 2), keepdims=True)
  for (i, j), rows, cols in (((3, 4), slice(6, 9), slice(9, 11)),
                             ((6, 6), slice(13, 16), slice(13, 16))):
    occluded = images.copy()
    occluded[:, rows, cols] = mean_colour
    direct = cosines(variables, occluded, labels).sum(axis=-1)
    np.testing.assert_allclose(quality[:, i, j], direct, atol=1e-4)
  assert np.ptp(np.asarray(quality[0])) > 1e-3  # occluding different cells changes s_ℓ

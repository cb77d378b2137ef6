"""Gradient-based collaboration analysis of MHEX blocks (SPEC §6).

The gate kernel W_ℓ of MHEX block ℓ receives gradient from its own head o_ℓ (through P_ℓ) and from
every later head (through the gate). For one example with label y:

    G_self = ∂ CE(o_ℓ, y) / ∂ W_ℓ,   G_next = ∂ CE(o_{ℓ+1}, y) / ∂ W_ℓ
    s_ℓ    = ⟨G_self, G_next⟩_F / (‖G_self‖_F ‖G_next‖_F + 1e-8)   ∈ [−1, 1],  ℓ = 1..L−1

s_ℓ > 0: the block's own head and the next head pull W_ℓ the same way. Here L counts the MHEX
blocks (located in ``params`` exactly as ``models.mhex.collect_blocks`` does) and "next" is the
next MHEX block's head. Heads are the model's output ``[num_heads, B, K]``: the first L belong
to the MHEX blocks in depth order; a trailing head without a gate (the pooled classifier of a
ResNet whose last stage has no MHEX) takes no part. With ``mhex_stages`` that skip a stage,
the next head may therefore sit a stage further on.

Everything is per example (``jax.vmap`` over single images) and in eval mode by default, so
BatchNorm uses its running statistics and s_ℓ does not depend on the rest of the batch. The
reference ran train mode at batch size 1 (each image normalised by its own statistics); pass
``train_mode=True`` to reproduce that (for BatchNorm models without dropout). Beware that in
that mode a ResNet block whose shortcut and branch both end in BatchNorm (a projection block)
has spatial means equal to the BatchNorm biases whatever its input, so its head is constant in
everything before it: G_next of the block before it is zero up to rounding and that s_ℓ is
noise.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mhex_jax.explain.maps import check_chunk_size
from mhex_jax.explain.maps import describe
from mhex_jax.explain.maps import map_flat_index
from mhex_jax.models import common
from mhex_jax.models import mhex as mhex_lib

Path = tuple[str, ...]


def _check_inputs(images: jax.Array, labels: jax.Array) -> None:
  if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be float [B, H, W, C], got {describe(images)}; add a channel "
                     "axis to grey images (images[..., None]) and cast to float32.")
  if labels.shape != images.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be int [B] = [{images.shape[0]}] class indices, got "
                     f"{describe(labels)}; pass labels, not one-hot vectors.")


def _get(tree: Any, path: Path) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _replace(tree: Any, path: Path, value: Any) -> dict:
  """A copy of the nested dict ``tree`` with ``value`` at ``path`` (only the path is copied)."""
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _replace(tree[path[0]], path[1:], value)
  return out


def gate_kernel_paths(model: Any, variables: Any, images: jax.Array) -> tuple[list[Path], int]:
  """Where the MHEX gate kernels live, and how many heads the model returns.

  Args:
    model: a Flax module returning head logits [num_heads, B, K] and sowing MHEX features.
    variables: its variables.
    images: [B, H, W, C]; only the shape of one example is used (no computation).

  Returns:
    (paths of W_ℓ in ``params`` in depth order, e.g. ("block_00", "mhex", "gate", "kernel"),
    num_heads).
  """
  variables = common.strip_state(variables)
  logits, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=[mhex_lib.COLLECTION]), variables,
      images[:1])
  blocks = mhex_lib.collect_blocks(variables["params"], state.get(mhex_lib.COLLECTION, {}))
  paths = [tuple(b.name.split("/")) + mhex_lib.GATE_KERNEL for b in blocks]
  num_heads = logits.shape[0]
  if len(paths) < 2:
    raise ValueError(f"Collaboration needs at least two MHEX blocks, the model has {len(paths)}; "
                     "put MHEX in more blocks (model.mhex_stages).")
  if num_heads < len(paths):
    raise ValueError(f"The model returns {num_heads} heads for {len(paths)} MHEX blocks; it "
                     "must return one head per MHEX block, in depth order, first.")
  return paths, num_heads


def frobenius_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """⟨a, b⟩_F / (‖a‖_F ‖b‖_F + 1e-8) of two same-shape arrays (0 if either is 0)."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-8)


def _example_cosines(model: Any, variables: Any, paths: Sequence[Path], image: jax.Array,
                     label: jax.Array, *, train_mode: bool) -> jax.Array:
  """s_ℓ of one image [H, W, C]: f32[L − 1]."""
  params = variables["params"]

  def head_losses(kernels):
    new_params = params
    for path, kernel in zip(paths, kernels):
      new_params = _replace(new_params, path, kernel)
    new_variables = {**variables, "params": new_params}
    if train_mode:
      logits, _ = model.apply(new_variables, image[None], train=True, mutable=["batch_stats"])
    else:
      logits = model.apply(new_variables, image[None], train=False)
    logits = logits[:len(paths), 0].astype(jnp.float32)  # the MHEX heads, [L, K]
    return -jax.nn.log_softmax(logits, axis=-1)[:, label]  # CE(o_ℓ, y), [L]

  # jac[j][i] = ∂ CE(o_i, y) / ∂ W_j: one backward pass per head.
  jac = jax.jacrev(head_losses)([_get(params, p) for p in paths])
  return jnp.stack([frobenius_cosine(jac[l][l], jac[l][l + 1]) for l in range(len(paths) - 1)])


def block_cosines(model: Any, variables: Any, images: jax.Array, labels: jax.Array, *,
                  train_mode: bool = False) -> jax.Array:
  """Per-example gradient cosines s_ℓ between each MHEX block's own head and the next head.

  Args:
    model: an MHEX model (e.g. ``models.ResNet(mhex=True)``) called as
      ``model.apply(variables, images, train=...)`` and returning logits [num_heads, B, K].
    variables: {"params", "batch_stats"}.
    images: f32[B, H, W, C] normalised inputs.
    labels: int[B] classes y of the cross-entropies.
    train_mode: BatchNorm with each image's own statistics (the reference's setting) instead
      of the running averages.

  Returns:
    f32[B, L − 1] in [−1, 1], L = the number of MHEX blocks.

  Cost: one forward and L backward passes per example (the L head losses are differentiated
  together with ``jax.jacrev``).
  """
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  _check_inputs(images, labels)
  variables = common.strip_state(variables)
  paths, _ = gate_kernel_paths(model, variables, images)
  return jax.vmap(lambda x, y: _example_cosines(model, variables, paths, x, y,
                                                train_mode=train_mode))(images, labels)


def pearson(x: jax.Array, y: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Pearson correlation along the last axis, batched over (broadcast) leading axes.

  When x or y is constant over the masked-in entries (or fewer than 2 are in) the correlation is
  undefined and 0 is returned: never NaN. Constancy is tested exactly (max = min), so rounding in
  the mean cannot turn a constant vector into a spurious ±1.

  Args:
    x, y: f32[..., N], broadcastable to each other.
    mask: bool[..., N] (broadcastable) of entries to use, e.g. the valid examples; None = all.

  Returns:
    f32[...] in [−1, 1].
  """
  x, y = jnp.broadcast_arrays(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  mask = jnp.ones(x.shape, bool) if mask is None else jnp.broadcast_to(mask, x.shape)
  weight = mask.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight, axis=-1, keepdims=True), 1.0)
  dx = jnp.where(mask, x - jnp.sum(weight * x, axis=-1, keepdims=True) / count, 0.0)
  dy = jnp.where(mask, y - jnp.sum(weight * y, axis=-1, keepdims=True) / count, 0.0)

  def varies(v):
    return (jnp.max(jnp.where(mask, v, -jnp.inf), axis=-1) >
            jnp.min(jnp.where(mask, v, jnp.inf), axis=-1))

  defined = varies(x) & varies(y)
  denominator = jnp.sqrt(jnp.sum(dx * dx, axis=-1) * jnp.sum(dy * dy, axis=-1))
  r = jnp.sum(dx * dy, axis=-1) / jnp.where(defined, denominator, 1.0)
  return jnp.where(defined, jnp.clip(r, -1.0, 1.0), 0.0)


def collaboration_report(cosines: jax.Array, sad: jax.Array, probs: jax.Array,
                         mask: Optional[jax.Array] = None) -> dict[str, jax.Array]:
  """Summary of s_ℓ over a set of examples and its relation to faithfulness and confidence.

  Correlations are reported for the per-example total Σ_ℓ s_ℓ and for each block separately.

  Args:
    cosines: f32[B, L − 1] from ``block_cosines``.
    sad: f32[B] per-example Soft Average Drop of the explanations, e.g.
      ``metrics.image.soft_average_drop(score_fn, images, maps, labels)``.
    probs: f32[B] p(x), the softmax probability of the label under the final head, e.g.
      ``metrics.image.target_probability(score_fn, images, labels)``.
    mask: bool[B] of valid examples (a padded last batch); None = all.

  Returns:
    {"cosine_mean": [L − 1] mean s_ℓ per block,
     "cosine_total_mean": [] mean of Σ_ℓ s_ℓ,
     "corr_total_sad", "corr_total_prob": [] Pearson r of Σ_ℓ s_ℓ with SAD and with p(x),
     "corr_block_sad", "corr_block_prob": [L − 1] the same per block}.
  """
  cosines = jnp.asarray(cosines, jnp.float32)
  sad, probs = jnp.asarray(sad, jnp.float32), jnp.asarray(probs, jnp.float32)
  if cosines.ndim != 2 or sad.shape != cosines.shape[:1] or probs.shape != cosines.shape[:1]:
    raise ValueError(f"cosines must be [B, L − 1] with sad and probs [B], got cosines "
                     f"{list(cosines.shape)}, sad {list(sad.shape)}, probs {list(probs.shape)}.")
  mask = jnp.ones(sad.shape, bool) if mask is None else jnp.asarray(mask, bool)
  weight = mask.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight), 1.0)
  total = jnp.sum(cosines, axis=-1)
  per_block = cosines.T  # [L − 1, B]: examples on the last axis for pearson
  return {
      "cosine_mean": jnp.sum(weight[:, None] * cosines, axis=0) / count,
      "cosine_total_mean": jnp.sum(weight * total) / count,
      "corr_total_sad": pearson(total, sad, mask),
      "corr_total_prob": pearson(total, probs, mask),
      "corr_block_sad": pearson(per_block, sad, mask),
      "corr_block_prob": pearson(per_block, probs, mask),
  }


def grid_cells(height: int, width: int, grid: int = 7) -> np.ndarray:
  """bool[grid · grid, H, W] cell masks, row-major over cells.

  Cell boundaries are ⌊i · H / grid⌋ (and likewise for W), so when H is not divisible by
  ``grid`` cell sizes differ by at most one pixel and every pixel is in exactly one cell.
  """
  if height < grid or width < grid:
    raise ValueError(f"A {grid}×{grid} grid needs images of at least {grid}×{grid} pixels, got "
                     f"{height}×{width}; lower grid.")
  def cell_index(size):  # cell of each pixel along one axis
    starts = np.arange(1, grid) * size // grid
    return np.searchsorted(starts, np.arange(size), side="right")

  row_cell, col_cell = cell_index(height), cell_index(width)
  cell = row_cell[:, None] * grid + col_cell[None, :]
  return cell[None] == np.arange(grid * grid)[:, None, None]


def occlusion_quality_map(model: Any, variables: Any, images: jax.Array, labels: jax.Array, *,
                          grid: int = 7, chunk_size: Optional[int] = None,
                          train_mode: bool = False) -> jax.Array:
  """Σ_ℓ s_ℓ of the image with one grid cell occluded, for every cell of a grid × grid split.

  The occluded cell is filled with the image's own per-channel spatial mean (of the whole,
  unoccluded image, as SAD's μ). Cells follow ``grid_cells``. The grid² · B occluded images are
  built on the fly and processed ``chunk_size`` at a time by a ``lax.map`` (a padded last
  chunk repeats an image whose result is discarded); results do not depend on ``chunk_size``.

  Args:
    model, variables, labels, train_mode: as in ``block_cosines``.
    images: f32[B, H, W, C] with H, W ≥ grid.
    grid: cells per side.
    chunk_size: occluded images per step (static); None = B, one cell of every image per step,
      the memory of one ``block_cosines`` call.

  Returns:
    f32[B, grid, grid]; entry [b, i, j] is Σ_ℓ s_ℓ with cell (row i, column j) occluded.
  """
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  _check_inputs(images, labels)
  chunk_size = check_chunk_size(chunk_size)
  variables = common.strip_state(variables)
  batch, height, width, _ = images.shape
  cells = jnp.asarray(grid_cells(height, width, grid))
  paths, _ = gate_kernel_paths(model, variables, images)
  mean_colour = images.mean(axis=(1, 2), keepdims=True)  # [B, 1, 1, C]

  cosines = jax.vmap(lambda x, y: _example_cosines(model, variables, paths, x, y,
                                                   train_mode=train_mode))

  def chunk_totals(item):  # Item j = cell · B + example.
    example = item % batch
    occluded = jnp.where(cells[item // batch][..., None], mean_colour[example], images[example])
    return jnp.sum(cosines(occluded, labels[example]), axis=-1)

  totals = map_flat_index(chunk_totals, grid * grid * batch,
                          batch if chunk_size is None else chunk_size)
  totals = totals.reshape(grid, grid, batch)
  return jnp.transpose(totals, (2, 0, 1))

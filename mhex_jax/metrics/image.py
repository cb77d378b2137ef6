"""Faithfulness and localisation metrics for image saliency maps (SPEC §5).

Every metric is a pure, batch-first function that returns one value per example, shape [B], so
callers can shard the batch and take the mean (or a masked mean) themselves. Shared conventions:

  score_fn   Python callable ``images f32[B, H, W, C] -> probs f32[B, K]`` (softmax probabilities
             of the scoring model, which may differ from the explained one). It is closed over or
             passed as a static argument: ``jax.jit(metric, static_argnums=0)``.
  images     f32[B, H, W, C] in the scoring model's normalised input space.
  maps       f32[B, H, W] saliency S, already min-max normalised to [0, 1] per example.
  targets    int[B] explained class; p(x) is the target's softmax probability.
  masks      bool[B, H, W] ground-truth localisation masks.
  baseline   b, a float or an array broadcastable to [B, H, W, C] (0 = the dataset mean when the
             inputs are standardised).

Shapes are checked statically, so the checks also run under ``jax.jit``. Target indices are
range-checked when they are concrete; under jit an out-of-range target yields NaN (gather in
"fill" mode) rather than silently scoring a clipped class. Relative drops divide by p(x) and are
defined as 0 when p(x) = 0 (there is no confidence to lose), so no metric produces NaN.
"""

import functools
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from mhex_jax.explain.maps import check_chunk_size
from mhex_jax.explain.maps import check_targets_in_range
from mhex_jax.explain.maps import describe
from mhex_jax.explain.maps import gather_target
from mhex_jax.explain.maps import map_flat_index

ScoreFn = Callable[[jax.Array], jax.Array]
Baseline = Union[float, jax.Array]


def _validate(*, images=None, maps=None, targets=None, masks=None) -> None:
  """Checks ranks, dtypes and the agreement of B, H, W between the given arrays (static only)."""
  batch = spatial = None
  if images is not None:
    if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f"images must be float [B, H, W, C], got {describe(images)}; add a channel "
                       "axis to grey images (images[..., None]) and cast to float32.")
    batch, spatial = images.shape[0], images.shape[1:3]
  if maps is not None:
    if maps.ndim != 3 or not jnp.issubdtype(maps.dtype, jnp.floating):
      raise ValueError(f"maps must be float [B, H, W], got {describe(maps)}; resize the "
                       "saliency to the input resolution and drop any channel axis.")
    if batch is not None and maps.shape != (batch, *spatial):
      raise ValueError(f"maps must be [B, H, W] = {[batch, *spatial]} to match images "
                       f"{list(images.shape)}, got {list(maps.shape)}; resize the saliency to the "
                       "input resolution.")
    batch, spatial = maps.shape[0], maps.shape[1:3]
  if masks is not None:
    if masks.ndim != 3 or masks.dtype != jnp.bool_:
      raise ValueError(f"masks must be bool [B, H, W], got {describe(masks)}; binarise them "
                       "first, e.g. masks > 0.5.")
    if batch is not None and masks.shape != (batch, *spatial):
      raise ValueError(f"masks must be [B, H, W] = {[batch, *spatial]} to match the maps, got "
                       f"{list(masks.shape)}.")
  if targets is not None:
    if targets.ndim != 1 or not jnp.issubdtype(targets.dtype, jnp.integer):
      raise ValueError(f"targets must be int [B] class indices, got {describe(targets)}; pass "
                       "labels, not one-hot vectors.")
    if batch is not None and targets.shape[0] != batch:
      raise ValueError(f"targets must be [B] = [{batch}] to match the images, got "
                       f"{list(targets.shape)}.")


def _check_probs(probs, batch: int) -> None:
  """probs: an array or a jax.ShapeDtypeStruct from eval_shape."""
  if len(probs.shape) != 2 or probs.shape[0] != batch:
    raise ValueError(f"score_fn must map [B, H, W, C] images to probs [B, K] = [{batch}, K], got "
                     f"{list(probs.shape)}; apply softmax to the logits inside score_fn.")


def _broadcast_baseline(baseline: Baseline, images: jax.Array) -> jax.Array:
  baseline = jnp.asarray(baseline, images.dtype)
  try:
    return jnp.broadcast_to(baseline, images.shape)
  except ValueError:
    raise ValueError(f"baseline must be a float or broadcastable to images {list(images.shape)}, "
                     f"got shape {list(baseline.shape)}; use [C] for a per-channel baseline or "
                     "[B, H, W, C] for a per-example one.") from None


def _relative_drop(p: jax.Array, p_perturbed: jax.Array) -> jax.Array:
  """max(0, (p − p') / p), and 0 where p = 0. NaN from out-of-range targets still propagates."""
  safe_p = jnp.where(p == 0, 1.0, p)
  return jnp.where(p == 0, 0.0, jnp.maximum(0.0, (p - p_perturbed) / safe_p))


def target_probability(score_fn: ScoreFn, images: jax.Array, targets: jax.Array) -> jax.Array:
  """p(x): the scoring model's softmax probability of each target class.

  Args:
    score_fn: images [B, H, W, C] -> probs [B, K].
    images: [B, H, W, C].
    targets: int [B].

  Returns:
    [B] probabilities.
  """
  images, targets = jnp.asarray(images), jnp.asarray(targets)
  _validate(images=images, targets=targets)
  probs = score_fn(images)
  _check_probs(probs, images.shape[0])
  check_targets_in_range(targets, probs.shape[1])
  return gather_target(probs, targets)


def average_drop_removal(score_fn: ScoreFn, images: jax.Array, maps: jax.Array,
                         targets: jax.Array, *, threshold: float = 0.5,
                         baseline: Baseline = 0.0) -> jax.Array:
  """AVG Drop of the MHEX paper: how much confidence is lost when the salient pixels are removed.

      M = 1[S > threshold],  x_hard = x ⊙ (1 − M) + b ⊙ M,  AD = max(0, (p(x) − p(x_hard)) / p(x))

  Higher is better. AD = 0 when p(x) = 0.

  Args:
    score_fn: images [B, H, W, C] -> probs [B, K].
    images: [B, H, W, C].
    maps: [B, H, W] in [0, 1].
    targets: int [B].
    threshold: saliency above which a pixel is removed.
    baseline: b, a float or broadcastable to [B, H, W, C].

  Returns:
    [B] drops in [0, 1].
  """
  images, maps, targets = jnp.asarray(images), jnp.asarray(maps), jnp.asarray(targets)
  _validate(images=images, maps=maps, targets=targets)
  baseline = _broadcast_baseline(baseline, images)
  removed = (maps > threshold)[..., None]
  x_hard = jnp.where(removed, baseline, images)
  return _relative_drop(target_probability(score_fn, images, targets),
                        target_probability(score_fn, x_hard, targets))


def soft_average_drop(score_fn: ScoreFn, images: jax.Array, maps: jax.Array,
                      targets: jax.Array) -> jax.Array:
  """SAD: AVG Drop with the saliency as a soft blend towards the image's own mean colour.

      x_soft = x ⊙ (1 − S) + μ ⊙ S,  μ = per-example per-channel spatial mean of x [B, 1, 1, C]
      SAD = max(0, (p(x) − p(x_soft)) / p(x))

  Higher is better. SAD = 0 when p(x) = 0. Arguments and result as ``average_drop_removal``
  (no threshold: every pixel moves towards μ by its saliency; no baseline: μ is the target).
  """
  images, maps, targets = jnp.asarray(images), jnp.asarray(maps), jnp.asarray(targets)
  _validate(images=images, maps=maps, targets=targets)
  mean_colour = images.mean(axis=(1, 2), keepdims=True)
  s = maps[..., None].astype(images.dtype)
  x_soft = images * (1 - s) + mean_colour * s
  return _relative_drop(target_probability(score_fn, images, targets),
                        target_probability(score_fn, x_soft, targets))


def area_factor(area: jax.Array) -> jax.Array:
  """EAD's area penalty f(a) = 5a / (1 + 256 a⁵): f(0) = 0, peak f(0.25) = 1, f(1) = 5/257."""
  area = jnp.asarray(area, jnp.float32)
  return 5 * area / (1 + 256 * area**5)


def effective_average_drop(score_fn: ScoreFn, images: jax.Array, maps: jax.Array,
                           targets: jax.Array, *, threshold: float = 0.5,
                           area_threshold: float = 0.2, baseline: Baseline = 0.0) -> jax.Array:
  """EAD = AD · f(a), a = mean(1[S > area_threshold]): AVG Drop that penalises oversized maps.

  Removing most of the image always destroys the prediction, so AD alone rewards maps that mark
  everything; f peaks at a quarter of the image and decays fast beyond it.

  Args:
    score_fn: images [B, H, W, C] -> probs [B, K].
    images: [B, H, W, C].
    maps: [B, H, W] in [0, 1].
    targets: int [B].
    threshold: AD's removal threshold.
    area_threshold: saliency above which a pixel counts towards the area a.
    baseline: AD's baseline b.

  Returns:
    [B] values in [0, 1].
  """
  drop = average_drop_removal(score_fn, images, maps, targets, threshold=threshold,
                              baseline=baseline)
  return drop * area_factor(map_area(maps, area_threshold))


def map_area(maps: jax.Array, area_threshold: float = 0.2) -> jax.Array:
  """EAD's a: the fraction of each map's pixels with S > ``area_threshold``, f32[B]."""
  return (jnp.asarray(maps) > area_threshold).mean(axis=(1, 2))


def classic_average_drop_increase(score_fn: ScoreFn, images: jax.Array, maps: jax.Array,
                                  targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Grad-CAM++'s Average Drop / Average Increase: keep only the explanation, x_keep = x ⊙ S.

      drop = max(0, p(x) − p(x_keep)) / p(x)   (lower is better; 0 when p(x) = 0)
      increase = p(x_keep) > p(x)               (the mean over examples is AI; higher is better)

  Args:
    score_fn: images [B, H, W, C] -> probs [B, K].
    images: [B, H, W, C].
    maps: [B, H, W] in [0, 1].
    targets: int [B].

  Returns:
    (drop [B] float in [0, 1], increase [B] bool).
  """
  images, maps, targets = jnp.asarray(images), jnp.asarray(maps), jnp.asarray(targets)
  _validate(images=images, maps=maps, targets=targets)
  x_keep = images * maps[..., None].astype(images.dtype)
  p = target_probability(score_fn, images, targets)
  p_keep = target_probability(score_fn, x_keep, targets)
  return _relative_drop(p, p_keep), p_keep > p


def deletion_insertion_auc(score_fn: ScoreFn, images: jax.Array, maps: jax.Array,
                           targets: jax.Array, *, steps: int = 100, baseline: Baseline = 0.0,
                           chunk_size: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
  """RISE deletion and insertion curves, reduced to their mean (the AUC on a unit x-axis).

  Pixels are ranked by decreasing S; ties keep the lower flat (row-major) pixel index first. At
  step k = 0, 1, ..., steps the top n_k = ⌊k·H·W / steps + ½⌋ pixels (ties round up) are
      deletion:  set to the baseline in x        (k = 0 is x itself, k = steps is all-baseline)
      insertion: copied from x into the baseline (k = 0 is all-baseline, k = steps is x itself)
  and AUC = (1 / (steps + 1)) Σ_{k=0}^{steps} p_k, the plain mean over all steps + 1 points
  including both ends (not the trapezoid rule). Deletion: lower is better; insertion: higher.

  The 2·(steps + 1)·B perturbed images are built on the fly and scored ``chunk_size`` at a time
  by a ``lax.map`` over chunks, so memory is bounded by one chunk. Both curves' images share the
  chunks; a padded last chunk repeats an image whose scores are discarded. Results do not depend
  on ``chunk_size`` (up to the scoring model's own batch-size numerics).

  Args:
    score_fn: images [N, H, W, C] -> probs [N, K] for any N ≤ chunk_size; hashable, since it
      is a static argument of the jitted scan (functions and lambdas are).
    images: [B, H, W, C].
    maps: [B, H, W] in [0, 1].
    targets: int [B].
    steps: number of perturbation steps (static under jit).
    baseline: b, a float or broadcastable to [B, H, W, C].
    chunk_size: images per score_fn call (static under jit). None scores all 2·(steps + 1)·B at
      once, which only suits toy models: set it for real ones.

  Returns:
    (deletion [B], insertion [B]) AUCs in [0, 1].
  """
  images, maps, targets = jnp.asarray(images), jnp.asarray(maps), jnp.asarray(targets)
  _validate(images=images, maps=maps, targets=targets)
  if not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be a positive Python int (static under jit), got {steps!r}.")
  chunk_size = check_chunk_size(chunk_size)
  probs_struct = jax.eval_shape(score_fn, images)
  _check_probs(probs_struct, images.shape[0])
  check_targets_in_range(targets, probs_struct.shape[1])
  curves = _deletion_insertion_curves(score_fn, images, maps, targets,
                                      _broadcast_baseline(baseline, images), steps=int(steps),
                                      chunk_size=chunk_size)
  auc = curves.mean(axis=1)
  return auc[0], auc[1]


# Jitted so that eager calls reuse the compiled scan for the same score_fn (a fresh lax.map
# closure would otherwise recompile on every call); under an outer jit it is simply inlined.
@functools.partial(jax.jit, static_argnames=("score_fn", "steps", "chunk_size"))
def _deletion_insertion_curves(score_fn: ScoreFn, images: jax.Array, maps: jax.Array,
                               targets: jax.Array, baseline: jax.Array, *, steps: int,
                               chunk_size: Optional[int]) -> jax.Array:
  """p_k for both curves, [2 (deletion, insertion), steps + 1, B]; baseline is [B, H, W, C]."""
  batch, height, width, _ = images.shape
  num_pixels = height * width
  order = jnp.argsort(maps.reshape(batch, num_pixels), axis=1, descending=True, stable=True)
  rank = jnp.argsort(order, axis=1).reshape(batch, height, width)  # the inverse permutation
  # Exact integer rounding: float k / steps · H·W can land just below a .5 tie.
  num_changed = jnp.asarray((2 * np.arange(steps + 1) * num_pixels + steps) // (2 * steps),
                            jnp.int32)

  # Item j = ((curve · (steps + 1)) + k) · B + example, curve 0 = deletion, 1 = insertion.
  per_curve = (steps + 1) * batch

  def score_chunk(item):
    insertion = item >= per_curve
    k = (item % per_curve) // batch
    example = item % batch
    changed = rank[example] < num_changed[k][:, None, None]
    # Deletion shows x where unchanged, insertion shows x where changed (revealed).
    show_image = changed == insertion[:, None, None]
    perturbed = jnp.where(show_image[..., None], images[example], baseline[example])
    probs = score_fn(perturbed)
    _check_probs(probs, item.shape[0])
    return gather_target(probs, targets[example])

  p = map_flat_index(score_chunk, 2 * per_curve, chunk_size)
  return p.reshape(2, steps + 1, batch)


def nonempty_masks(masks: jax.Array) -> jax.Array:
  """bool[B]: which masks contain at least one pixel, to exclude the rest from pointing means."""
  masks = jnp.asarray(masks)
  _validate(masks=masks)
  return masks.any(axis=(1, 2))


def pointing_game(maps: jax.Array, masks: jax.Array, *, tolerance: float = 0) -> jax.Array:
  """Pointing game: does the most salient pixel fall within ``tolerance`` pixels of the mask?

  The argmax of S is the first maximal pixel in row-major order. A hit is any mask pixel within
  Euclidean distance ≤ tolerance of it (tolerance = 0: the argmax pixel itself is in the mask).
  Two cases score a miss (0.0), never NaN:
    * an empty mask: there is nothing to point at. Use ``nonempty_masks(masks)`` to exclude these
      examples from the mean, as the original protocol does;
    * an all-zero map: it points nowhere (otherwise it would "point" at pixel (0, 0)).

  Args:
    maps: [B, H, W] in [0, 1].
    masks: bool [B, H, W].
    tolerance: radius in pixels (Zhang et al. use 15 at 224×224).

  Returns:
    f32[B] hits, 1.0 or 0.0.
  """
  maps, masks = jnp.asarray(maps), jnp.asarray(masks)
  _validate(maps=maps, masks=masks)
  if isinstance(tolerance, (int, float)) and tolerance < 0:
    raise ValueError(f"tolerance must be a non-negative radius in pixels, got {tolerance}.")
  batch, height, width = maps.shape
  peak = jnp.argmax(maps.reshape(batch, -1), axis=1)
  peak_row, peak_col = peak // width, peak % width
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  squared_distance = ((rows - peak_row[:, None, None])**2 + (cols - peak_col[:, None, None])**2)
  near_peak = squared_distance <= jnp.square(jnp.asarray(tolerance, jnp.float32))
  hit = (masks & near_peak).any(axis=(1, 2)) & (maps.max(axis=(1, 2)) > 0)
  return hit.astype(jnp.float32)


def energy_pointing_game(maps: jax.Array, masks: jax.Array) -> jax.Array:
  """Energy-based pointing game: the share of saliency inside the mask, Σ S·M / Σ S.

  Args:
    maps: [B, H, W] in [0, 1] (non-negative, so the ratio lies in [0, 1]).
    masks: bool [B, H, W].

  Returns:
    f32[B] ratios; 0 for an all-zero map (no energy to place) and for an empty mask.
  """
  maps, masks = jnp.asarray(maps), jnp.asarray(masks)
  _validate(maps=maps, masks=masks)
  maps = maps.astype(jnp.float32)
  total = maps.sum(axis=(1, 2))
  inside = jnp.where(masks, maps, 0.0).sum(axis=(1, 2))
  return jnp.where(total > 0, inside / jnp.where(total > 0, total, 1.0), 0.0)


# Report keys in table order; "area" is EAD's a.
SUITE_METRICS = ("avg_drop", "sad", "ead", "area", "classic_average_drop", "average_increase",
                 "deletion_auc", "insertion_auc", "pointing_game", "energy_pointing_game")
# Defined only where the example's mask holds a pixel: averaged over those examples.
MASKED_METRICS = ("pointing_game", "energy_pointing_game")
MASK_WEIGHT = "nonempty_mask"


def explanation_metrics(score_fn: ScoreFn, images: jax.Array, maps: jax.Array,
                        targets: jax.Array, masks: Optional[jax.Array] = None, *,
                        baseline: Baseline = 0.0, deletion_steps: int = 100,
                        deletion_chunk_size: Optional[int] = None,
                        pointing_tolerance: float = 0.0) -> dict[str, jax.Array]:
  """Every metric of the comparison table for one batch: {name: f32[B]} (``SUITE_METRICS``).

  EAD reuses the AVG Drop it reports (``effective_average_drop`` without a second removal
  pass). With ``masks``, the pointing games and ``MASK_WEIGHT`` (1 where the mask holds a
  pixel): average ``MASKED_METRICS`` over those examples only, as the protocol does.
  """
  drop = average_drop_removal(score_fn, images, maps, targets, baseline=baseline)
  area = map_area(maps)
  classic_drop, increase = classic_average_drop_increase(score_fn, images, maps, targets)
  deletion, insertion = deletion_insertion_auc(
      score_fn, images, maps, targets, steps=deletion_steps, baseline=baseline,
      chunk_size=deletion_chunk_size)
  out = {"avg_drop": drop, "sad": soft_average_drop(score_fn, images, maps, targets),
         "ead": drop * area_factor(area), "area": area, "classic_average_drop": classic_drop,
         "average_increase": increase.astype(jnp.float32), "deletion_auc": deletion,
         "insertion_auc": insertion}
  if masks is not None:
    out["pointing_game"] = pointing_game(maps, masks, tolerance=pointing_tolerance)
    out["energy_pointing_game"] = energy_pointing_game(maps, masks)
    out[MASK_WEIGHT] = nonempty_masks(masks).astype(jnp.float32)
  return out

"""What the explainers and the metrics share about saliency maps and the batches they score.

* ``normalize_maps``: per-example min–max normalisation, the [0, 1] scale every map is shown
  and scored on.
* ``gather_target``: the target class's entry of probabilities or logits, NaN (not a clipped
  class) for an out-of-range target; ``check_targets_in_range`` raises instead when the targets
  are concrete (on the host, outside ``jit``).
* ``check_chunk_size``, ``map_in_chunks`` and ``map_flat_index``: ``lax.map`` over perturbed
  copies of a batch, ``chunk_size`` at a time, so memory is bounded by one chunk.
* ``sum_in_chunks``: per-example sums of a gradient over many items (path points, noisy
  copies), chunk by chunk, the chunks unrolled (gradients inside a loop run slower on CPU).
* ``describe``: ``float32[2, 3]``, how error messages name an array.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np


def describe(x: Any) -> str:
  """dtype and shape of an array, e.g. ``uint8[32, 28, 28]``."""
  return f"{jnp.dtype(x.dtype).name}{list(x.shape)}"


def normalize_maps(maps: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Per-example min–max normalisation of [B, ...] maps; constant maps become zeros.

  With a boolean ``mask`` (same shape), the min and max are taken over masked-in positions
  only and masked-out positions are 0 (padding and special tokens).
  """
  axes = tuple(range(1, maps.ndim))
  if mask is None:
    mask = jnp.ones(maps.shape, bool)
  low = jnp.min(jnp.where(mask, maps, jnp.inf), axis=axes, keepdims=True)
  high = jnp.max(jnp.where(mask, maps, -jnp.inf), axis=axes, keepdims=True)
  span = high - low
  ok = mask & (span > 0)
  return jnp.where(ok, (maps - jnp.where(ok, low, 0.0)) / jnp.where(ok, span, 1.0), 0.0)


def gather_target(probs: jax.Array, targets: jax.Array) -> jax.Array:
  """probs [N, K], targets int[N] -> [N]; NaN for targets outside [0, K) instead of a clipped
  (or, for negative ones, a counted-from-the-end) class."""
  targets = jnp.where(targets < 0, probs.shape[1], targets)
  return jnp.take_along_axis(probs, targets[:, None], axis=1, mode="fill",
                             fill_value=jnp.nan)[:, 0]


def check_targets_in_range(targets: jax.Array, num_classes: int) -> None:
  """Raises for concrete targets outside [0, num_classes); traced ones cannot be inspected
  (``gather_target`` then gives NaN)."""
  try:
    values = np.asarray(targets)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return
  bad = values[(values < 0) | (values >= num_classes)]
  if bad.size:
    raise ValueError(f"targets must lie in [0, {num_classes}) for a scoring model with "
                     f"{num_classes} classes, got {bad.tolist()}; check the label mapping.")


def check_chunk_size(chunk_size: Optional[int]) -> Optional[int]:
  """``chunk_size`` as a Python int (or None); it shapes the computation, so it is static."""
  if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
    raise ValueError(f"chunk_size must be None or a positive Python int (static under jit), got "
                     f"{chunk_size!r}.")
  return None if chunk_size is None else int(chunk_size)


def map_in_chunks(fn: Callable[[jax.Array], Any], xs: jax.Array,
                  chunk_size: Optional[int]) -> Any:
  """``lax.map(fn, xs)`` over the leading axis of ``xs``, ``chunk_size`` entries vectorised
  together (None = all at once)."""
  length = xs.shape[0]
  return jax.lax.map(fn, xs, batch_size=min(check_chunk_size(chunk_size) or length, length))


def map_flat_index(fn: Callable[[jax.Array], jax.Array], num_items: int,
                   chunk_size: Optional[int]) -> jax.Array:
  """[fn(items) for chunks of items 0 .. num_items − 1], concatenated: [num_items, ...].

  ``fn`` takes int32[chunk] item indices and returns [chunk, ...]; it builds its items from
  the indices (e.g. item = step · B + example), so no more than one chunk of perturbed inputs
  exists at a time. Every call has the same ``chunk`` = min(chunk_size, num_items) items (None
  = all): a padded last chunk repeats the last item and its results are discarded.
  """
  chunk = num_items if chunk_size is None else min(check_chunk_size(chunk_size), num_items)
  num_chunks = -(-num_items // chunk)
  out = jax.lax.map(lambda start: fn(jnp.minimum(start + jnp.arange(chunk), num_items - 1)),
                    jnp.arange(num_chunks) * chunk)
  return out.reshape(num_chunks * chunk, *out.shape[2:])[:num_items]


def _after(total: jax.Array) -> jax.Array:
  """An int32 0 that XLA cannot compute before ``total``: a chunk's indices depend on an
  earlier chunk's sum, so the chunks run in order and only the chunks in flight keep their
  intermediates. Without it XLA:CPU ran every chunk's forward first and kept them all (an
  optimization barrier does not survive its pipeline): IG-50 of a ResNet-18 at 112², batch 8,
  needed 2.2 GiB in 11 chunks as in one. min(|Σ total|, 0) is 0, or NaN when the total
  already is (then so is the result)."""
  return jnp.minimum(jnp.abs(jnp.sum(total)), 0.0).astype(jnp.int32)


def sum_in_chunks(fn: Callable[[jax.Array, jax.Array], jax.Array], num_items: int,
                  batch: int, chunk_size: Optional[int], in_flight: int = 1) -> jax.Array:
  """Σ over items i of example e: ``fn(items, examples)`` summed per example, [batch, ...].

  Item i belongs to example ``i % batch`` (item = step · batch + example). ``fn`` takes
  int32[n] item indices and their examples and returns [n, ...]. At most ``chunk_size`` items
  (None = all) are in flight at once. All items in one chunk are one call; otherwise each
  chunk is ``in_flight`` calls of ⌈chunk_size / in_flight⌉ consecutive items that may run side
  by side, each call waiting for the one ``in_flight`` before it (``_after``), so memory is
  bounded by ``chunk_size`` items' intermediates. On
  XLA:CPU two calls side by side keep both cores busy where one batch's ops do not:
  Integrated Gradients (50 steps) of ResNet-18 at 112², batch 8, 100× the forward in chunks of
  39 one after the other, 78–80× as two of 20 side by side, in the same memory
  (benchmarks/README.md).

  The calls are unrolled in the program, not a ``lax.map`` loop: XLA:CPU compiles the
  backward convolutions of a gradient inside a loop body without YNNPACK, which made
  Integrated Gradients 2.5× slower; each call is one more copy of ``fn``'s program to
  compile. Each call's results are added per example by a one-hot product (a dot, at full
  float32 precision), not a scatter, in item order.
  """
  if not isinstance(in_flight, int) or in_flight < 1:
    raise ValueError(f"in_flight must be a positive int, got {in_flight!r}.")
  alive = num_items if chunk_size is None else min(check_chunk_size(chunk_size), num_items)
  # Items that all fit in one chunk run as one call, one copy of ``fn``'s program to compile
  # (the tests' and small explanations' case, where compiling dominates).
  chunk = alive if alive == num_items else -(-alive // min(in_flight, alive))
  sums = []
  for start in range(0, num_items, chunk):
    items = jnp.arange(start, min(start + chunk, num_items), dtype=jnp.int32)
    if len(sums) >= in_flight:
      items = items + _after(sums[-in_flight])
    examples = items % batch
    values = fn(items, examples)
    flat = values.reshape(values.shape[0], -1).astype(jnp.float32)
    owners = jax.nn.one_hot(examples, batch, dtype=jnp.float32)
    sums.append(jnp.einsum("nb,nd->bd", owners, flat, precision=jax.lax.Precision.HIGHEST))
  total = sums[0]
  for summed in sums[1:]:
    total = total + summed
  return total.reshape((batch,) + values.shape[1:])

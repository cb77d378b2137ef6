"""Text faithfulness metrics (SPEC §5): the MHEX paper's text AVG Drop.

Token arrays are batch-first: ``input_ids`` int[B, T], ``saliency`` f32[B, T],
``removable`` bool[B, T] (True on tokens that may be removed: not padding, not special tokens).
``score_fn(input_ids) -> probs f32[B, K]`` closes over the attention mask and token types, which
in-place replacement leaves unchanged.
"""

from typing import Callable

import jax
import jax.numpy as jnp

TokenScoreFn = Callable[[jax.Array], jax.Array]


def top_k_count(num_removable: jax.Array, *, fraction: float = 0.2,
                max_tokens: int = 20) -> jax.Array:
  """K = min(max_tokens, max(1, ⌊fraction · n⌋)) per example, and 0 when n = 0."""
  k = jnp.minimum(max_tokens, jnp.maximum(1, jnp.floor(fraction * num_removable)))
  return jnp.where(num_removable > 0, k, 0).astype(jnp.int32)


def top_tokens(saliency: jax.Array, removable: jax.Array, k: jax.Array) -> jax.Array:
  """bool[B, T]: the k[b] most salient removable tokens (ties: earlier token first)."""
  scores = jnp.where(removable, saliency, -jnp.inf)
  order = jnp.argsort(-scores, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  return (rank < k[:, None]) & removable


def text_average_drop(score_fn: TokenScoreFn, input_ids: jax.Array, saliency: jax.Array,
                      removable: jax.Array, targets: jax.Array, mask_id: int, *,
                      fraction: float = 0.2, max_tokens: int = 20) -> jax.Array:
  """p(x) − p(x_masked) per example, with the top-K salient tokens replaced by [MASK].

  Returns f32[B]; positive when masking the salient tokens lowers the target probability.
  """
  if input_ids.shape != saliency.shape or input_ids.shape != removable.shape:
    raise ValueError(f"input_ids {input_ids.shape}, saliency {saliency.shape} and removable "
                     f"{removable.shape} must share the shape [B, T].")
  k = top_k_count(jnp.sum(removable, axis=-1), fraction=fraction, max_tokens=max_tokens)
  masked = jnp.where(top_tokens(saliency, removable, k), mask_id, input_ids)
  rows = jnp.arange(input_ids.shape[0])
  p = score_fn(input_ids)[rows, targets]
  p_masked = score_fn(masked)[rows, targets]
  return p - p_masked

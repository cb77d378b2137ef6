"""Text faithfulness metrics (SPEC §5): text AVG Drop, AOPC / LOdds and Kendall τ.

Token arrays are batch-first: ``input_ids`` int[B, T], ``saliency`` f32[B, T],
``removable`` bool[B, T] (True on tokens that may be removed: not padding, not special tokens).

Two score-function signatures, both returning softmax probabilities f32[N, K]:

  TokenScoreFn     ``score_fn(input_ids) -> probs``, closing over the attention mask and token
                   types. Enough for in-place replacement, which leaves both unchanged
                   (``text_average_drop``).
  SequenceScoreFn  ``score_fn(input_ids, attention_mask, token_type_ids) -> probs``, all int[N, T].
                   Deletion shortens sequences, so the mask and token types change with the ids;
                   ``aopc_lodds`` uses this signature in both of its modes (replacement passes the
                   original mask and types). For a model of ``mhex_jax.models``:
                   ``lambda i, m, t: jax.nn.softmax(model.apply(v, i, m, t, train=False)[-1])``.

Score functions are static arguments under jit (functions and lambdas are hashable).

Targets, int[B], are range-checked against the score function's K classes when they are
concrete; under jit an out-of-range target scores NaN (``explain.maps.gather_target``) rather
than a silently clipped class, as in the image metrics.
"""

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mhex_jax.explain.maps import check_chunk_size
from mhex_jax.explain.maps import check_targets_in_range
from mhex_jax.explain.maps import describe
from mhex_jax.explain.maps import gather_target
from mhex_jax.explain.maps import map_flat_index

TokenScoreFn = Callable[[jax.Array], jax.Array]
SequenceScoreFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

MODES = ("deletion", "replacement")


def _check_token_arrays(**arrays) -> None:
  """All given arrays must be [B, T] of one shape (static check, runs under jit)."""
  shapes = {name: x.shape for name, x in arrays.items() if x is not None}
  if len(set(shapes.values())) > 1 or any(len(s) != 2 for s in shapes.values()):
    described = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
    raise ValueError(f"{described} must share one shape [B, T]; add a batch axis to a single "
                     "sequence (x[None]).")


def _check_targets(targets: jax.Array, probs: jax.ShapeDtypeStruct, batch: int) -> None:
  """int[B] targets within the score function's K classes (``probs`` [B, K]); the range is
  checked when the targets are concrete, and under jit an out-of-range target scores NaN."""
  if targets.shape != (batch,) or not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be int [B] = [{batch}] class indices, got "
                     f"{describe(targets)}.")
  if len(probs.shape) != 2 or probs.shape[0] != batch:
    raise ValueError(f"score_fn must map [B, T] token arrays to probs [B, K] = [{batch}, K], "
                     f"got {list(probs.shape)}; apply softmax to the logits inside score_fn.")
  check_targets_in_range(targets, probs.shape[1])


def top_k_count(num_removable: jax.Array, *, fraction: float = 0.2,
                max_tokens: int = 20) -> jax.Array:
  """K = min(max_tokens, max(1, ⌊fraction · n⌋)) per example, and 0 when n = 0."""
  k = jnp.minimum(max_tokens, jnp.maximum(1, jnp.floor(fraction * num_removable)))
  return jnp.where(num_removable > 0, k, 0).astype(jnp.int32)


def saliency_rank(saliency: jax.Array, removable: jax.Array) -> jax.Array:
  """int32[B, T]: 0 for the most salient removable token, 1 for the next, ...

  Ties keep the earlier token first. Tokens that are not removable rank after all removable
  ones, so ``rank < n`` selects at most the removable tokens.
  """
  scores = jnp.where(removable, saliency, -jnp.inf)
  order = jnp.argsort(-scores, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def top_tokens(saliency: jax.Array, removable: jax.Array, k: jax.Array) -> jax.Array:
  """bool[B, T]: the k[b] most salient removable tokens (ties: earlier token first)."""
  return (saliency_rank(saliency, removable) < k[:, None]) & removable


def text_average_drop(score_fn: TokenScoreFn, input_ids: jax.Array, saliency: jax.Array,
                      removable: jax.Array, targets: jax.Array, mask_id: int, *,
                      fraction: float = 0.2, max_tokens: int = 20) -> jax.Array:
  """p(x) − p(x_masked) per example, with the top-K salient tokens replaced by [MASK].

  Returns f32[B]; positive when masking the salient tokens lowers the target probability.
  Out-of-range targets raise when concrete and give NaN under jit (module docstring).
  """
  input_ids, saliency, removable = map(jnp.asarray, (input_ids, saliency, removable))
  targets = jnp.asarray(targets)
  _check_token_arrays(input_ids=input_ids, saliency=saliency, removable=removable)
  probs = score_fn(input_ids)
  _check_targets(targets, probs, input_ids.shape[0])
  k = top_k_count(jnp.sum(removable, axis=-1), fraction=fraction, max_tokens=max_tokens)
  masked = jnp.where(top_tokens(saliency, removable, k), mask_id, input_ids)
  return gather_target(probs, targets) - gather_target(score_fn(masked), targets)


def fraction_counts(num_removable: jax.Array, num_fractions: int = 9) -> jax.Array:
  """n_k = round(g_k · T) for g_k = k / num_fractions, k = 1..num_fractions: int32[..., k].

  Halves round up (exact integer arithmetic, no float ties), so the last count is always T.
  """
  k = jnp.arange(1, num_fractions + 1, dtype=jnp.int32)
  t = jnp.asarray(num_removable, jnp.int32)[..., None]
  return (2 * k * t + num_fractions) // (2 * num_fractions)


def delete_tokens(input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array,
                  remove: jax.Array, *, pad_id: int = 0) -> tuple[jax.Array, jax.Array,
                                                                    jax.Array]:
  """Deletes tokens: the kept ones shift left in order, the freed tail becomes padding.

  A token is kept if it is attended (mask > 0) and not in ``remove``. One stable argsort per
  row moves kept tokens to the front; the tail gets ``pad_id``, mask 0 and token type 0.

  Args:
    input_ids, attention_mask, token_type_ids: int[B, T].
    remove: bool[B, T] tokens to delete.
    pad_id: id written into the freed positions.

  Returns:
    (input_ids, attention_mask, token_type_ids), each [B, T] with the input dtypes.
  """
  keep = (attention_mask > 0) & ~remove
  order = jnp.argsort(~keep, axis=-1, stable=True)
  kept = jnp.take_along_axis(keep, order, axis=-1)
  gather = lambda x: jnp.take_along_axis(x, order, axis=-1)
  ids = jnp.where(kept, gather(input_ids), jnp.asarray(pad_id, input_ids.dtype))
  types = jnp.where(kept, gather(token_type_ids), jnp.zeros((), token_type_ids.dtype))
  return ids, kept.astype(attention_mask.dtype), types


def aopc_lodds(score_fn: SequenceScoreFn, input_ids: jax.Array, saliency: jax.Array,
               removable: jax.Array, targets: jax.Array, *, attention_mask: jax.Array,
               token_type_ids: Optional[jax.Array] = None, mode: str = "deletion",
               replace_id: Optional[int] = None, pad_id: int = 0, num_fractions: int = 9,
               absolute: bool = False, eps: float = 1e-12,
               chunk_size: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
  """AOPC and LOdds of AttCAT's protocol: remove growing shares of the most salient tokens.

  Per example, T = the number of removable tokens that are attended (``removable`` and
  ``attention_mask > 0``; padding is never counted or removed, special tokens are never
  removed). For g_k = k / num_fractions, k = 1..num_fractions (≈ 11%, 22%, …, 100% by
  default), the top n_k = round(g_k · T) tokens by descending saliency (ties: earlier token
  first; halves round up) are removed, giving x̃_k:

    deletion     the remaining tokens shift left and the sequence (attention mask) shortens;
                 the freed tail is padding (``pad_id``, mask 0, token type 0).
    replacement  the removed tokens become ``replace_id`` ([PAD] or [MASK]) in place; the
                 attention mask and token types are unchanged.

      AOPC  = mean_k (p(x) − p(x̃_k))            (absolute=True: mean_k |p(x) − p(x̃_k)|, as
                                                  the official AttCAT code; higher is better)
      LOdds = mean_k log(p(x̃_k) / p(x))         (more negative is better)

  LOdds clamps both probabilities to at least ``eps`` before the log, so a probability that
  underflows to 0 gives a large finite value (log eps ≈ −27.6) rather than −inf or NaN. An
  example without removable tokens scores 0 on both. The num_fractions · B perturbed
  sequences are scored ``chunk_size`` at a time by a ``lax.map`` (a padded last chunk repeats
  a sequence whose score is discarded); results do not depend on ``chunk_size``.

  Args:
    score_fn: SequenceScoreFn ``(input_ids, attention_mask, token_type_ids) -> probs [N, K]``
      for N = B and N = chunk_size (see the module docstring); hashable (static under jit).
    input_ids: int[B, T].
    saliency: f32[B, T]; only its order among removable tokens matters.
    removable: bool[B, T].
    targets: int[B] explained classes.
    attention_mask: int[B, T], 1 on real tokens and 0 on padding.
    token_type_ids: int[B, T] or None (zeros).
    mode: "deletion" or "replacement".
    replace_id: the replacement token id; required for (and only used by) "replacement".
    pad_id: the id written into the tail freed by "deletion".
    num_fractions: number of removal fractions (static).
    absolute: average |p(x) − p(x̃_k)| instead of the signed drop.
    eps: lower clamp of the probabilities inside LOdds' log.
    chunk_size: perturbed sequences per score_fn call (static); None scores all at once.

  Returns:
    (aopc f32[B], lodds f32[B]).
  """
  if mode not in MODES:
    raise ValueError(f"Unknown mode={mode!r}; use one of {MODES}.")
  if mode == "replacement" and replace_id is None:
    raise ValueError("mode='replacement' needs replace_id, the [PAD] or [MASK] token id.")
  if mode == "deletion" and replace_id is not None:
    raise ValueError(f"replace_id={replace_id} is only used by mode='replacement'; drop it or "
                     "switch the mode.")
  if not isinstance(num_fractions, (int, np.integer)) or num_fractions < 1:
    raise ValueError(f"num_fractions must be a positive Python int (static under jit), got "
                     f"{num_fractions!r}.")
  chunk_size = check_chunk_size(chunk_size)
  input_ids, saliency, removable = map(jnp.asarray, (input_ids, saliency, removable))
  attention_mask, targets = jnp.asarray(attention_mask), jnp.asarray(targets)
  if token_type_ids is None:
    token_type_ids = jnp.zeros_like(input_ids)
  token_type_ids = jnp.asarray(token_type_ids)
  _check_token_arrays(input_ids=input_ids, saliency=saliency, removable=removable,
                      attention_mask=attention_mask, token_type_ids=token_type_ids)
  if removable.dtype != jnp.bool_:
    raise ValueError(f"removable must be bool [B, T], got {describe(removable)}; e.g. "
                     "(attention_mask > 0) & ~special_tokens_mask.")
  _check_targets(targets, jax.eval_shape(score_fn, input_ids, attention_mask, token_type_ids),
                 input_ids.shape[0])
  return _aopc_lodds(score_fn, input_ids, saliency, removable, targets, attention_mask,
                     token_type_ids, mode=mode, replace_id=replace_id, pad_id=int(pad_id),
                     num_fractions=int(num_fractions), absolute=bool(absolute),
                     eps=float(eps), chunk_size=chunk_size)


# Jitted so that eager calls reuse the compiled scan for the same score_fn (a fresh lax.map
# closure would otherwise recompile on every call); under an outer jit it is simply inlined.
@functools.partial(jax.jit, static_argnames=("score_fn", "mode", "replace_id", "pad_id",
                                             "num_fractions", "absolute", "eps", "chunk_size"))
def _aopc_lodds(score_fn, input_ids, saliency, removable, targets, attention_mask,
                token_type_ids, *, mode, replace_id, pad_id, num_fractions, absolute, eps,
                chunk_size):
  batch = input_ids.shape[0]
  removable = removable & (attention_mask > 0)
  rank = saliency_rank(saliency, removable)
  counts = fraction_counts(jnp.sum(removable, axis=-1), num_fractions)  # [B, k]
  p = gather_target(score_fn(input_ids, attention_mask, token_type_ids), targets)

  # Item j = k · B + example, k = 0 .. num_fractions − 1 (fraction g_{k+1}).
  def score_chunk(item):
    example = item % batch
    remove = rank[example] < counts[example, item // batch][:, None]
    ids, mask, types = input_ids[example], attention_mask[example], token_type_ids[example]
    if mode == "deletion":
      ids, mask, types = delete_tokens(ids, mask, types, remove, pad_id=pad_id)
    else:
      ids = jnp.where(remove, jnp.asarray(replace_id, ids.dtype), ids)
    return gather_target(score_fn(ids, mask, types), targets[example])

  p_perturbed = map_flat_index(score_chunk, num_fractions * batch, chunk_size)
  p_perturbed = p_perturbed.reshape(num_fractions, batch)
  drop = p[None] - p_perturbed
  aopc = jnp.mean(jnp.abs(drop) if absolute else drop, axis=0)
  lodds = jnp.mean(jnp.log(jnp.maximum(p_perturbed, eps)) - jnp.log(jnp.maximum(p, eps))[None],
                   axis=0)
  return aopc.astype(jnp.float32), lodds.astype(jnp.float32)


def kendall_tau(a: jax.Array, b: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Kendall τ-b between two attributions of the same tokens, per example.

      τ_b = Σ_{i<j} sgn(a_i − a_j) sgn(b_i − b_j) / sqrt(n_a · n_b)

  over the pairs of masked-in tokens, where n_a (n_b) counts the pairs not tied in a (b). Ties
  count as neither concordant nor discordant, as in τ-b. When either attribution is constant on
  the masked-in tokens (or fewer than 2 tokens are in) τ is undefined and 0 is returned.
  Cost is O(T²) per example.

  Args:
    a, b: f32[B, T] attribution scores.
    mask: bool[B, T], True on tokens to compare (e.g. not padding, not special); None = all.

  Returns:
    f32[B] in [−1, 1].
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  _check_token_arrays(a=a, b=b, mask=mask)
  if mask is None:
    mask = jnp.ones(a.shape, bool)
  length = a.shape[1]
  upper = jnp.triu(jnp.ones((length, length), bool), k=1)
  pairs = upper & mask[:, :, None] & mask[:, None, :]  # [B, T, T], each pair once
  sign_a = jnp.where(pairs, jnp.sign(a[:, :, None] - a[:, None, :]), 0.0)
  sign_b = jnp.where(pairs, jnp.sign(b[:, :, None] - b[:, None, :]), 0.0)
  numerator = jnp.sum(sign_a * sign_b, axis=(1, 2))
  untied = jnp.sum(jnp.abs(sign_a), axis=(1, 2)) * jnp.sum(jnp.abs(sign_b), axis=(1, 2))
  defined = untied > 0
  return jnp.where(defined, numerator / jnp.sqrt(jnp.where(defined, untied, 1.0)), 0.0)


def kendall_tau_of_argsorts(a: jax.Array, b: jax.Array,
                            mask: Optional[jax.Array] = None) -> jax.Array:
  """Legacy: Kendall τ between the argsort arrays of two attributions (official AttCAT code).

  This is NOT the rank agreement of the two attributions. ``argsort(a)`` lists token positions
  in score order, so comparing the two lists element by element asks whether the positions
  that come at the same place in both orders are themselves ordered alike, a quantity that
  depends on where tokens sit in the sentence. Use ``kendall_tau`` to compare attributions;
  this exists only to reproduce the published numbers.

  The masked-in tokens are argsorted (ascending, stable: ties keep the earlier token first;
  numpy's default sort leaves tie order unspecified) and the two position lists, both of
  length n = the number of masked-in tokens, are compared with ``kendall_tau``.

  Args:
    a, b: f32[B, T] attribution scores.
    mask: bool[B, T] or None (all tokens).

  Returns:
    f32[B].
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  _check_token_arrays(a=a, b=b, mask=mask)
  if mask is None:
    mask = jnp.ones(a.shape, bool)
  # Masked-out tokens sort last; the first n entries are the masked-in tokens in score order.
  # Their positions in the full sequence order exactly like their positions after dropping
  # the masked-out tokens, and τ depends only on order.
  positions_a = jnp.argsort(jnp.where(mask, a, jnp.inf), axis=-1, stable=True)
  positions_b = jnp.argsort(jnp.where(mask, b, jnp.inf), axis=-1, stable=True)
  first_n = jnp.arange(a.shape[1])[None, :] < jnp.sum(mask, axis=-1, keepdims=True)
  return kendall_tau(positions_a.astype(jnp.float32), positions_b.astype(jnp.float32), first_n)


# Report keys in table order.
SUITE_METRICS = ("avg_drop", "aopc", "lodds", "aopc_replacement", "lodds_replacement")
AOPC_MODES = ("deletion", "replacement")


def explanation_metrics(score_fn: SequenceScoreFn, input_ids: jax.Array, saliency: jax.Array,
                        removable: jax.Array, targets: jax.Array, *,
                        attention_mask: jax.Array, token_type_ids: Optional[jax.Array],
                        mask_id: int, pad_id: int, replace_id: int,
                        modes: Sequence[str] = ("deletion",),
                        absolute: bool = False) -> dict[str, jax.Array]:
  """Every metric of the text comparison table for one batch: {name: f32[B]}.

  ``score_fn(input_ids, attention_mask, token_type_ids) -> probs`` (the last two default to the
  batch's own). AVG Drop masks the top tokens with ``mask_id``; AOPC/LOdds run once per mode
  of ``modes`` (``AOPC_MODES``): deletion (the AttCAT protocol's default, the plain keys) and
  replacement by ``replace_id`` (keys with ``_replacement``).
  """
  unknown = [m for m in modes if m not in AOPC_MODES]
  if not modes or unknown:
    raise ValueError(f"AOPC modes {list(modes)}: use one or both of {list(AOPC_MODES)}.")
  out = {"avg_drop": text_average_drop(score_fn, input_ids, saliency, removable, targets,
                                       mask_id)}
  for mode in modes:
    aopc, lodds = aopc_lodds(
        score_fn, input_ids, saliency, removable, targets, attention_mask=attention_mask,
        token_type_ids=token_type_ids, mode=mode,
        replace_id=replace_id if mode == "replacement" else None, pad_id=pad_id,
        absolute=absolute)
    suffix = "" if mode == "deletion" else "_replacement"
    out["aopc" + suffix], out["lodds" + suffix] = aopc, lodds
  return out

"""MHEX saliency from one forward pass: the Equivalent Matrix and the CAM integration (SPEC §3).

    E_ℓ = P_ℓ W_ℓ  [K, C]          (Flax kernels are [in, out]: Eᵀ = W_kernel @ P_kernel)
    CAM_ℓ = Σ_k w_ℓ[k] · A_ℓ[..., k]    with w_ℓ = the target row of E_ℓ after the
                                        class-sharpness filter and sign weighting
    S = normalise( Σ_ℓ α^(L−ℓ) · resize(CAM_ℓ) )

Everything before the normalisation is linear, so the target rows are gathered for the whole
batch at once, each block is one einsum, and CAMs that share a resolution are summed before a
single bilinear resize per resolution.

Transformers (SPEC §4): the CAM of a layer is a token map, CAM_ℓ[t] = Σ_k w[k] · A_ℓ[t, k] with
A = the ungated sum the head averages. With the signed row of E (β⁻ = −1) and no channel
clipped by the head's ReLU, mean_t CAM_ℓ[t] is exactly the head's logit o_ℓ[c]: the map
decomposes the layer's evidence over the tokens *where it sits* after attention has mixed them.
**Attention routing** (``route="attention"``, our extension, not the paper's method) carries it
back to the input tokens through the same forward pass's attention rollout (``route_cams``),
which moves the evidence from where it is stored to where it came from. Routing is the default
of ``mhex_token_saliency`` and ``mhex_patch_saliency`` (chosen on validation data);
``route="none"`` gives SPEC §4 as written, and ``token_saliency`` keeps the reference's
defaults. Options beside it: the layer set, per-position feature normalisation and
class-contrastive weights (all measured in docs/results.md).

The explainers take the convention of every method (``explain.registry``),
``f(model, variables, inputs, targets, **options)``, inputs the images [B, H, W, C] or a text
model's inputs dict: ``mhex_saliency`` (CNN), ``mhex_patch_saliency`` (ViT) and
``mhex_token_saliency`` (text) return the map with its per-layer CAMs, logits and targets;
``explanation`` picks one by model kind and ``mhex_maps`` returns its map alone. Their
``targets=None`` explains the final head's prediction from the same forward pass. The MHEX
blocks (W, P, A) come from ``models.mhex.collect_blocks``.
"""

import functools
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from mhex_jax import tasks
from mhex_jax.errors import ConfigError
from mhex_jax.explain import attribution
from mhex_jax.explain import token_flow
from mhex_jax.explain import transformer
from mhex_jax.explain.maps import normalize_maps
from mhex_jax.models import common
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models.mhex import MHEXBlock

FEATURE_NORMS = ("none", "centre", "layer_norm")
ROUTES = ("none", "attention")


equivalent_matrix = mhex_lib.equivalent_matrix


def class_weights(equivalent: jax.Array, targets: jax.Array, *, contrastive: bool = False,
                  tau_pos: float = 0.0, tau_neg: float = 0.0, beta_pos: float = 1.0,
                  beta_neg: float = 0.0) -> jax.Array:
  """Per-example channel weights w_final [B, C] for the target classes.

  Args:
    equivalent: E [K, C].
    targets: int[B] target classes.
    contrastive: (our extension) use E[c] − mean_c' E[c'], the evidence for c over the
      average class, instead of the row E[c]; applied before the filter and the sign weighting.
    tau_pos, tau_neg: class-sharpness thresholds (filter off when both are 0): a channel's
      positive (negative) weight for class c is kept only if c holds at least that share of
      the channel's positive (negative) mass over all classes.
    beta_pos, beta_neg: sign weighting, w_final = β⁺·max(w, 0) + β⁻·max(−w, 0).
      (1, 0) keeps only positive evidence (the image default); (1, −1) is the signed row.
  """
  if contrastive:
    equivalent = equivalent - jnp.mean(equivalent, axis=0, keepdims=True)
  w = equivalent[targets]  # [B, C]
  if tau_pos > 0 or tau_neg > 0:
    e_pos, e_neg = jnp.maximum(equivalent, 0), jnp.maximum(-equivalent, 0)
    share_pos = e_pos / (jnp.sum(e_pos, axis=0, keepdims=True) + 1e-8)
    share_neg = e_neg / (jnp.sum(e_neg, axis=0, keepdims=True) + 1e-8)
    w_pos = jnp.where(share_pos[targets] >= tau_pos, e_pos[targets], 0.0)
    w_neg = jnp.where(share_neg[targets] >= tau_neg, e_neg[targets], 0.0)
    w = w_pos - w_neg
  return sign_weighting(w, beta_pos, beta_neg)


def sign_weighting(w: jax.Array, beta_pos: float = 1.0, beta_neg: float = 0.0) -> jax.Array:
  """w_final = β⁺·max(w, 0) + β⁻·max(−w, 0)."""
  return beta_pos * jnp.maximum(w, 0) + beta_neg * jnp.maximum(-w, 0)


# E[targets] without forming E (defined beside the module whose kernels it reads).
target_rows = mhex_lib.target_rows


def block_weights(block: MHEXBlock, targets: jax.Array, *, contrastive: bool = False,
                  tau_pos: float = 0.0, tau_neg: float = 0.0, beta_pos: float = 1.0,
                  beta_neg: float = 0.0) -> jax.Array:
  """``class_weights`` of one block's Equivalent Matrix. The contrast and the sharpness filter
  need every class's row; without them only the target rows are formed (``target_rows``), or
  gathered from E when ``mhex.with_equivalent_matrices`` formed it beforehand."""
  equivalent = block.equivalent
  if contrastive or tau_pos > 0 or tau_neg > 0:
    if equivalent is None:
      equivalent = equivalent_matrix(block.gate_kernel, block.head_kernel)
    return class_weights(equivalent, targets, contrastive=contrastive, tau_pos=tau_pos,
                         tau_neg=tau_neg, beta_pos=beta_pos, beta_neg=beta_neg)
  return sign_weighting(mhex_lib.block_target_rows(block, targets), beta_pos, beta_neg)


def normalize_features(features: jax.Array, feature_norm: str = "none") -> jax.Array:
  """A [B, ..., C] per position over channels: "none", "centre" (minus the channel mean:
  what a following LayerNorm discards) or "layer_norm" (centred and scaled to unit variance,
  no affine)."""
  if feature_norm not in FEATURE_NORMS:
    raise ConfigError(f"Unknown feature_norm={feature_norm!r}; use one of {FEATURE_NORMS}.")
  features = features.astype(jnp.float32)
  if feature_norm == "none":
    return features
  centred = features - jnp.mean(features, axis=-1, keepdims=True)
  if feature_norm == "centre":
    return centred
  return centred * jax.lax.rsqrt(jnp.mean(centred**2, axis=-1, keepdims=True) + 1e-6)


def layer_cams(blocks: Sequence[MHEXBlock], targets: jax.Array, *, feature_norm: str = "none",
               **weight_options) -> list[jax.Array]:
  """Raw (un-normalised) CAM of every block, each [B, *spatial] at the block's resolution.

  ``feature_norm`` see ``normalize_features``; ``weight_options`` see ``class_weights``
  (computed by ``block_weights``).
  """
  cams = []
  for block in blocks:
    w = block_weights(block, targets, **weight_options)
    features = normalize_features(block.features, feature_norm)
    cams.append(channel_dot(features, w))
  return cams


def channel_dot(features: jax.Array, w: jax.Array) -> jax.Array:
  """Σ_k w[b, k] · A[b, ..., k]: features [B, ..., C] and per-example weights [B, C] → [B, ...].

  At batch 1 this is one matrix-vector product. Beyond it, an einsum is a batched
  matrix-vector dot, which XLA:CPU runs as a loop of single-threaded products; the elementwise
  product and channel sum is one fused loop over all examples instead (ResNet-50 224² batch 8,
  predicted class: 1.09-1.11x the forward with the dot, ~1.03x with the sum; the sum at batch
  1 costs 1.2x, benchmarks/README.md). Both are the same sum up to float32 rounding.
  """
  if features.shape[0] == 1:
    return jnp.einsum("b...c,bc->b...", features, w)
  return jnp.sum(features * jnp.expand_dims(w, tuple(range(1, features.ndim - 1))), axis=-1)


def route_cams(cams: Sequence[jax.Array], attentions: Sequence[jax.Array],
               source_mask: jax.Array) -> list[jax.Array]:
  """Carries every layer's token CAM back to the input tokens through the forward pass's own
  attention (our extension of SPEC §4, no gradients):

      routed_ℓ[j] = Σ_i source[i] · CAM_ℓ[i] · J_ℓ[i, j],   J_ℓ = M_ℓ ⋯ M_1 (attention rollout)

  CAM_ℓ[i] says how much evidence for c token i's features hold after layer ℓ; J_ℓ[i, j] how
  much of token i's state came from input token j. Rows of J_ℓ sum to 1, so each layer's
  evidence is redistributed, never created: Σ_j routed_ℓ[j] = Σ_{source i} CAM_ℓ[i].

  Args:
    cams: L token maps f32[B, T], input → output order.
    attentions: the L layers' attention probabilities f32[B, H, T, T] (same order).
    source_mask: bool[B, T], tokens whose CAM is routed (those the heads average).

  Returns:
    L routed maps f32[B, T].
  """
  if len(cams) != len(attentions):
    raise ValueError(f"{len(cams)} MHEX layers but {len(attentions)} attention maps: routing "
                     "needs one attention map per MHEX layer.")
  # Rows of softmax probabilities sum to 1, so M_ℓ = rownorm(Ā_ℓ + I) = (Ā_ℓ + I) / 2 and
  # v M_ℓ = (v + (v S_ℓ) / H) / 2 with S_ℓ the head sum: the scalars go on the vector [B, T],
  # not on the matrix [B, T, T], and no row sum is taken (ViT-S/16 224² batch 32: the row
  # sums and the division were 72 ms of a 1,565 ms forward, benchmarks/README.md). Equal to
  # routing through ``transformer.mixing_matrices`` up to float32 rounding (tested).
  heads = attentions[0].shape[1]
  step = lambda vector, summed: 0.5 * (vector + _vector_matrix(vector, summed) / heads)
  return _chain(cams, [transformer.head_sum(probs) for probs in attentions], source_mask, step)


def route_through(cams: Sequence[jax.Array], mixings: Sequence[jax.Array],
                  source_mask: jax.Array) -> list[jax.Array]:
  """``route_cams`` through given row-stochastic mixing matrices M_ℓ [B, T, T] (the rollout's,
  or the class flow's of ``token_flow.routing_mixings``)."""
  return _chain(cams, mixings, source_mask, _vector_matrix)


def _vector_matrix(vector: jax.Array, matrix: jax.Array) -> jax.Array:
  return jnp.einsum("bi,bij->bj", vector, matrix)


def _chain(cams: Sequence[jax.Array], matrices: Sequence[jax.Array], source_mask: jax.Array,
           step: Callable[[jax.Array, jax.Array], jax.Array]) -> list[jax.Array]:
  """routed_ℓ = (source ⊙ CAM_ℓ) M_ℓ ⋯ M_1, ``step(v, matrix_ℓ)`` being v M_ℓ."""
  # A chain of vector-matrix products, L(L+1)/2 of [T] × [T, T], instead of forming every J_ℓ
  # (L products of [T, T] × [T, T]: at ViT-S/16 224² batch 32, 6% of the forward). Layers
  # whose map is unused are dropped under jit.
  routed = []
  for layer, cam in enumerate(cams):
    vector = jnp.where(source_mask, cam, 0.0)
    for matrix in reversed(matrices[:layer + 1]):
      vector = step(vector, matrix)
    routed.append(vector)
  return routed


def depth_weights(num_layers: int, alpha: float) -> list[float]:
  """α^(L−ℓ) for ℓ = 1..L: the deepest block has weight 1."""
  return [alpha ** (num_layers - 1 - i) for i in range(num_layers)]


@functools.lru_cache(maxsize=None)
def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """f32[size_out, size_in]: 1-D bilinear resizing as a matrix, exactly what
  ``jax.image.resize(..., "bilinear", antialias=False)`` does along one axis (it is linear and
  separable, so a 2-D resize is R_h · X · R_wᵀ). Computed once per size pair, on the host, in
  NumPy with jax's float32 steps (half-pixel centres, triangle kernel, columns normalised,
  samples outside the input zero): resizing an identity eagerly compiled some 80 one-op
  programs before a ResNet-50's first map."""
  if size_in == size_out:
    return np.eye(size_in, dtype=np.float32)  # jax.image.resize leaves such an axis alone.
  inv_scale = np.float32(1.0 / (size_out / size_in))
  # The sample positions (i + ½)·s − ½ rounded once, as XLA's fused multiply-add computes them.
  centres = np.arange(size_out, dtype=np.float64) + 0.5
  samples = (centres * np.float64(inv_scale) - 0.5).astype(np.float32)
  distance = np.abs(samples[None, :] - np.arange(size_in, dtype=np.float32)[:, None])
  weights = np.maximum(np.float32(0.0), np.float32(1.0) - distance)  # [size_in, size_out]
  total = np.sum(weights, axis=0, keepdims=True)
  # XLA divides by a broadcast as a product with the reciprocal; so does this, to the bit.
  reciprocal = np.float32(1.0) / np.where(total != 0, total, np.float32(1.0))
  weights = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps, weights * reciprocal,
                     np.float32(0.0))
  inside = (samples >= -0.5) & (samples <= size_in - 0.5)
  return np.where(inside[None, :], weights, np.float32(0.0)).T.astype(np.float32)


def integrate_cams(cams: Sequence[jax.Array], out_size: Sequence[int],
                   alpha: float = 0.9) -> jax.Array:
  """Σ_ℓ α^(L−ℓ) · Up(CAM_ℓ), every resolution resized by one pair of matrix products.

  CAMs that share a resolution are summed first (resizing is linear), each group is resized
  along the rows (R_h · S_g), and the column pass of all groups is a single product: the
  row-resized groups side by side, [B, H, Σ w_g], times the stacked column matrices
  [Σ w_g, W], which also sums the groups.

  Args:
    cams: L raw maps [B, h_ℓ, w_ℓ], ordered input → output.
    out_size: (H, W) of the result.
    alpha: depth decay.

  Returns:
    f32[B, H, W], not normalised; equal to the sum of per-block ``jax.image.resize`` calls
    (bilinear, no antialiasing).
  """
  height, width = (int(n) for n in out_size)
  groups: dict[tuple[int, ...], jax.Array] = {}
  for cam, weight in zip(cams, depth_weights(len(cams), alpha)):
    key = tuple(cam.shape[1:])
    groups[key] = groups.get(key, 0.0) + weight * cam.astype(jnp.float32)
  highest = jax.lax.Precision.HIGHEST
  rows = [jnp.einsum("Hh,bhw->bHw", bilinear_matrix(h, height), summed, precision=highest)
          for (h, _), summed in groups.items()]
  columns = np.concatenate([bilinear_matrix(w, width) for _, w in groups], axis=1)
  return jnp.einsum("bHv,Wv->bHW", jnp.concatenate(rows, axis=-1), columns, precision=highest)


def layer_weights(num_layers: int, layers: Optional[Sequence[int]],
                  alpha: float) -> list[float]:
  """Weights of per-layer token maps: 1 on ``layers`` (e.g. the first 3); None or () is the
  α-decay over all layers."""
  if not layers:
    return depth_weights(num_layers, alpha)
  bad = [l for l in layers if not -num_layers <= l < num_layers]
  if bad:
    raise ConfigError(f"layers {bad} out of range for a model with {num_layers} MHEX layers.")
  chosen = {l % num_layers for l in layers}
  return [1.0 if i in chosen else 0.0 for i in range(num_layers)]


def token_cams(blocks: Sequence[MHEXBlock], targets: jax.Array, *, route: str = "none",
               attentions: Optional[Sequence[jax.Array]] = None,
               source_mask: Optional[jax.Array] = None, feature_norm: str = "none",
               **weight_options) -> list[jax.Array]:
  """Per-layer token CAMs [B, T], routed to the input tokens when ``route="attention"``.

  Args:
    blocks: MHEX layers with token features [B, T, C].
    targets: int[B].
    route: "none" (the CAM where the features sit, SPEC §4) or "attention" (``route_cams``).
    attentions: per-layer attention probabilities, needed by ``route="attention"``.
    source_mask: bool[B, T], the tokens whose CAM is routed (default: all).
    feature_norm, **weight_options: see ``normalize_features`` and ``class_weights``.
  """
  if route not in ROUTES:
    raise ConfigError(f"Unknown route={route!r}; use one of {ROUTES}.")
  cams = layer_cams(blocks, targets, feature_norm=feature_norm, **weight_options)
  if route == "none":
    return cams
  if attentions is None:
    raise ValueError("route='attention' needs the attention probabilities of the forward pass.")
  if source_mask is None:
    source_mask = jnp.ones(cams[0].shape, bool)
  return route_cams(cams, attentions, source_mask)


def token_saliency(blocks: Sequence[MHEXBlock], targets: jax.Array, token_mask: jax.Array, *,
                   layers: Optional[Sequence[int]] = (0, 1, 2), alpha: float = 0.9,
                   beta_neg: float = -1.0, **options) -> tuple[jax.Array, list[jax.Array]]:
  """MHEX token saliency (SPEC §4): Σ over chosen layers of Σ_k E[c, k] · A[t, k].

  Args:
    blocks: MHEX layers with token features [B, T, C].
    targets: int[B].
    token_mask: bool[B, T], True on tokens that may receive saliency (not padding, not
      special tokens, not a class token).
    layers: layer indices summed with weight 1 (default: the first three, "controlled
      smoothing"); None or () uses the α-decay over all layers.
    alpha: depth decay when ``layers`` is None.
    beta_neg: the token default −1 is the signed row of E (SPEC §4); 0 keeps only positive
      evidence, as the image maps do.
    **options: ``token_cams`` options (route, attentions, source_mask, feature_norm) and
      ``class_weights`` options (contrastive, tau_pos, tau_neg, beta_pos).

  Returns:
    (saliency f32[B, T] normalised over ``token_mask``, raw per-layer maps [B, T]).
  """
  cams = token_cams(blocks, targets, beta_neg=beta_neg, **options)
  # Layers of weight 0 left out of the sum: under jit their maps are then never computed.
  total = sum(w * c for w, c in zip(layer_weights(len(cams), layers, alpha), cams) if w)
  return normalize_maps(total, token_mask), cams


class Forward(NamedTuple):
  """What one eval-mode forward pass gives the MHEX explainers."""
  blocks: list[MHEXBlock]
  logits: jax.Array  # f32[B, K] of the final head
  targets: jax.Array  # int32[B]
  attentions: Optional[list[jax.Array]]  # per-layer f32[B, H, T, T] when asked for


def forward_blocks(model: Any, variables: Any, inputs: Sequence[jax.Array],
                   targets: Optional[jax.Array], *, attention: bool = False) -> Forward:
  """One eval-mode forward pass of ``model.apply(variables, *inputs)``; ``targets=None``
  explains the final head's prediction, and ``attention=True`` also returns the attention
  probabilities of a Transformer.

  The model is called with ``train=False`` unless its ``__call__`` takes no ``train``; it may
  return per-head logits [L, B, K] or logits [B, K] (``attribution.eval_mode_kwargs``,
  ``attribution.final_logits``).
  """
  collections = [mhex_lib.COLLECTION] + ([common.ATTENTION] if attention else [])
  variables, equivalents = mhex_lib.split_equivalents(common.strip_state(variables))
  head_logits, state = model.apply(variables, *inputs,
                                   **attribution.eval_mode_kwargs(model.apply),
                                   mutable=collections)
  logits = attribution.final_logits(head_logits)
  if targets is None:
    targets = jnp.argmax(logits, axis=-1)
  blocks = mhex_lib.collect_blocks(variables["params"], state.get(mhex_lib.COLLECTION, {}),
                                   equivalents)
  attentions = common.attention_probs(state) if attention else None
  return Forward(blocks, logits, jnp.asarray(targets, jnp.int32), attentions)


def _check_images(images: jax.Array):
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}.")


class Saliency(NamedTuple):
  saliency: jax.Array  # f32[B, H, W] in [0, 1]
  layer_maps: list[jax.Array]  # raw CAMs, each f32[B, h_ℓ, w_ℓ]
  logits: jax.Array  # f32[B, K] of the final head
  targets: jax.Array  # int32[B]


def mhex_saliency(model: Any, variables: Any, images: jax.Array,
                  targets: Optional[jax.Array] = None, *, alpha: float = 0.9,
                  tau_pos: float = 0.0, tau_neg: float = 0.0, beta_pos: float = 1.0,
                  beta_neg: float = 0.0) -> Saliency:
  """MHEX image saliency of a CNN from one forward pass (no gradients).

  Args:
    model: the Flax module (e.g. ``ResNet(mhex=True)``, or your own model whose blocks call
      ``models.mhex.MHEX``, see its docstring); called in eval mode.
    variables: {"params", maybe "batch_stats"} of an MHEX model.
    images: f32[B, H, W, C] normalised inputs.
    targets: int[B] classes to explain; None explains the final head's prediction.
    alpha, tau_pos, tau_neg, beta_pos, beta_neg: SPEC §3 options (see ``class_weights``);
      the image default keeps positive evidence only.

  Returns:
    ``Saliency`` with the integrated map [B, H, W], per-block maps, logits and targets.
  """
  _check_images(images)
  forward = forward_blocks(model, variables, (images,), targets)
  cams = layer_cams(forward.blocks, forward.targets, tau_pos=tau_pos, tau_neg=tau_neg,
                    beta_pos=beta_pos, beta_neg=beta_neg)
  saliency = normalize_maps(integrate_cams(cams, images.shape[1:3], alpha))
  return Saliency(saliency, cams, forward.logits, forward.targets)


class TokenSaliency(NamedTuple):
  saliency: jax.Array  # f32[B, T] in [0, 1], 0 outside the token mask
  layer_maps: list[jax.Array]  # raw per-layer maps, each f32[B, T]
  logits: jax.Array  # f32[B, K] of the final head
  targets: jax.Array  # int32[B]


def mhex_token_saliency(model: Any, variables: Any, inputs: Mapping[str, jax.Array],
                        targets: Optional[jax.Array] = None, *, route: str = "attention",
                        layers: Optional[Sequence[int]] = (0,),
                        feature_norm: str = "layer_norm", beta_neg: float = -1.0,
                        **options) -> TokenSaliency:
  """MHEX token saliency of a text Transformer from one forward pass (SPEC §4).

  The defaults were chosen on held-out validation texts (docs/results.md, "MHEX on
  Transformers"): the signed, LayerNorm-normalised CAM of the first layer, routed to the input
  tokens through the attention (our extension, not the paper's method). The reference's map,
  SPEC §4 exactly, is ``route="none", layers=(0, 1, 2), feature_norm="none"`` (signed row of E,
  ungated u + v).

  Args:
    model: an MHEX text model (``BERT(mhex=True)``), called as ``model.apply(v, input_ids,
      attention_mask, token_type_ids, train=False)``.
    variables: its variables.
    inputs: {"input_ids", "attention_mask", "special_tokens_mask", maybe "token_type_ids"},
      [B, T] each. Saliency goes to the attended tokens that are not special (the token mask).
    targets: int[B] or None for the final head's prediction.
    route: "attention": every valid token's CAM, special tokens included, is carried back to
      the input tokens through the attention (``route_cams``); "none": SPEC §4.
    layers: layers summed with weight 1; None or () is the α-decay over all layers.
    feature_norm: see ``normalize_features``.
    beta_neg: −1 is the signed row of E (SPEC §4); 0 keeps positive evidence only.
    **options: alpha and the ``class_weights`` options (contrastive, tau_pos, tau_neg,
      beta_pos).

  Returns:
    ``TokenSaliency``: the map normalised over the token mask (0 elsewhere), the raw
    per-layer maps, logits and targets.
  """
  missing = {"input_ids", "attention_mask", "special_tokens_mask"} - set(inputs)
  if missing:
    raise ValueError(f"MHEX token saliency needs inputs {sorted(missing)} as well; got keys "
                     f"{sorted(inputs)}.")
  attention_mask = inputs["attention_mask"]
  token_mask = (attention_mask > 0) & ~inputs["special_tokens_mask"].astype(bool)
  forward = forward_blocks(model, variables, (inputs["input_ids"], attention_mask,
                                              inputs.get("token_type_ids")),
                           targets, attention=route != "none")
  saliency, cams = token_saliency(forward.blocks, forward.targets, token_mask, route=route,
                                  attentions=forward.attentions,
                                  source_mask=attention_mask > 0, layers=layers,
                                  feature_norm=feature_norm, beta_neg=beta_neg, **options)
  return TokenSaliency(saliency, cams, forward.logits, forward.targets)


def mhex_patch_saliency(model: Any, variables: Any, images: jax.Array,
                        targets: Optional[jax.Array] = None, *,
                        layers: Optional[Sequence[int]] = (-1,), alpha: float = 0.9,
                        route: str = "attention", feature_norm: str = "layer_norm",
                        beta_neg: float = -1.0, map: str = "cam",  # pylint: disable=redefined-builtin
                        flow_rows: str = "layer", **options) -> Saliency:
  """MHEX image saliency of a ViT: patch-token maps on the patch grid, resized to the image.

  The defaults were chosen on held-out validation images (docs/results.md, "MHEX on
  Transformers"): the signed, LayerNorm-normalised CAM of the last layer, routed to the input
  patches through the attention (``route_cams``): our extension of SPEC §4, not the paper's
  method.
  ``route="none", layers=(), feature_norm="none", beta_neg=0.0`` is SPEC §4 as written
  (positive evidence where the features sit, α-decay over the layers); on a ViT trained from
  scratch those maps show where the evidence is stored after attention has mixed the tokens,
  often the background.

  Args:
    model: an MHEX ``ViT``; its ``grid_size`` is the patch grid, and its prefix tokens
      (``num_prefix_tokens``: class, distillation, registers) get no saliency and, the heads
      averaging patch tokens only, are not routed; evidence routed onto them is not drawn.
    variables: its variables.
    images: f32[B, H, W, C].
    targets: int[B] or None for the final head's prediction.
    layers: layers summed with weight 1; None or () is the α-decay over all layers.
    route: "attention" (``route_cams``) or "none" (SPEC §4).
    feature_norm: see ``normalize_features``.
    beta_neg: sign weighting (see ``class_weights``); −1 is the signed row of E.
    map: "cam" (the layers' CAMs, routed by ``route``), "flow" (the class flow) or "split"
      (the exact split of the final logit over source tokens, routed by ``route``): see
      ``explain.token_flow``. "flow" and "split" ignore layers, alpha, feature_norm, beta_neg
      and the ``class_weights`` options.
    flow_rows: the class flow's readout, "layer" (each layer's own E row) or "final" (the
      final head's active row), for ``map="flow"`` and ``route="flow"``.
    **options: ``class_weights`` options (contrastive, tau_pos, tau_neg, beta_pos).

  Returns:
    ``Saliency`` with the image map [B, H, W] and raw per-layer grid maps [B, gh, gw] (for
    "flow" and "split", the one token map).
  """
  _check_images(images)
  token_flow.check_options(map, route, flow_rows)
  prefix = model.num_prefix_tokens
  to_grid = lambda c: c[:, prefix:].reshape(c.shape[0], *model.grid_size)
  if map != "cam" or route == "flow":
    flow = token_flow.forward_pass(model, variables, images, targets, stream=map == "split")
    if map == "flow":
      token_map = token_flow.flow_map(flow, flow_rows)
    elif map == "split":
      token_map = token_flow.split_map(flow, route, flow_rows)
    if map != "cam":
      grid = to_grid(token_map)
      saliency = normalize_maps(integrate_cams([grid], images.shape[1:3], alpha=1.0))
      return Saliency(saliency, [grid], flow.logits, flow.targets)
    forward = Forward([layer.block for layer in flow.layers], flow.logits, flow.targets, None)
  else:
    forward = forward_blocks(model, variables, (images,), targets, attention=route != "none")
  tokens = forward.blocks[0].features.shape[:2]
  patches = jnp.broadcast_to(jnp.arange(tokens[1]) >= prefix, tokens)
  if route == "flow":
    cams = route_through(layer_cams(forward.blocks, forward.targets, feature_norm=feature_norm,
                                    beta_neg=beta_neg, **options),
                         token_flow.routing_mixings(flow, "flow", flow_rows), patches)
  else:
    cams = token_cams(forward.blocks, forward.targets, route=route,
                      attentions=forward.attentions, source_mask=patches,
                      feature_norm=feature_norm, beta_neg=beta_neg, **options)
  cams = [to_grid(c) for c in cams]
  weights = layer_weights(len(cams), layers, alpha)
  # Layers of weight 0 left out of the sum: under jit their maps are then never computed.
  total = sum(w * c for w, c in zip(weights, cams) if w)
  # One resize: every layer of a ViT shares the patch grid.
  saliency = normalize_maps(integrate_cams([total], images.shape[1:3], alpha=1.0))
  return Saliency(saliency, cams, forward.logits, forward.targets)


def explanation(model: Any, variables: Any, inputs: Union[jax.Array, Mapping[str, jax.Array]],
                targets: Optional[jax.Array] = None,
                **options) -> Union[Saliency, TokenSaliency]:
  """The MHEX explanation of any MHEX model: ``mhex_token_saliency`` of a text model (inputs
  the dict), ``mhex_patch_saliency`` of a ViT, ``mhex_saliency`` of a CNN (inputs the
  images). ``targets=None`` explains the prediction of the same forward pass, and the result's
  ``targets`` says which classes those were."""
  kind = tasks.task_of(model).mhex_map
  if kind == "tokens":
    return mhex_token_saliency(model, variables, inputs, targets, **options)
  if kind == "patches":
    return mhex_patch_saliency(model, variables, inputs, targets, **options)
  return mhex_saliency(model, variables, inputs, targets, **options)


def mhex_maps(model: Any, variables: Any, inputs: Union[jax.Array, Mapping[str, jax.Array]],
              targets: Optional[jax.Array] = None, **options) -> jax.Array:
  """The explainer convention, ``(model, variables, inputs, targets, **options) -> maps``:
  the ``saliency`` of ``explanation``, images f32[B, H, W] or tokens f32[B, T] in [0, 1]."""
  return explanation(model, variables, inputs, targets, **options).saliency

"""MHEX-ViT patch maps from what each token sends through each head (forward pass only).

The CAM of a layer (``equivalent_matrix.layer_cams``) reads the Equivalent Matrix's row e = E[c]
against each token's features *where they sit*, after attention has mixed the tokens. The maps
here read it against the messages the attention moves, so the evidence is credited to the token
that sent it. Notation, layer i = 0 … L−1 and head h:

    A_i^h [T, T]      attention probabilities (row t: where token t reads from)
    v_i^h[j] [d_h]    token j's value through head h
    W_O^h [d_h, d]    head h's rows of the output projection; λ1 the attention layer scale
    o_i^h[j] = λ1 ⊙ (v_i^h[j] W_O^h)        the message token j sends through head h
    u · o_i^h[j] = v_i^h[j] · W_O^h (λ1 ⊙ u)   its score for a readout u ∈ R^d ([B, H, T])

**Class flow** (``map="flow"``, a gradient-free analogue of gradient-weighted relevance): with a
mean-pooled linear head, the direct-path gradient ∂y_c/∂A_i^h[t, j] is (1/N)·u · o_i^h[j]. Each
head's attention columns are weighted by [e_i · o_i^h[j]]₊, heads averaged (Ā_i), and the map is
the pooled row of R − I, R = (I + Ā_{L−1}) ⋯ (I + Ā_0), computed as a vector pushed through
each factor. ``flow_rows`` picks the readout: "layer" (e_i = E_i[c], each layer's own head) or
"final" (the final head's row with its ReLU-clipped channels zeroed, the exact direct path).

**Logit split** (``map="split"``): with the final head's active row u = E[c] ⊙ 1[z > 0] (z the
head's pooled, pre-ReLU summary), the final logit is exactly u · mean_{t∈P} A_{L−1}[t] (P the
pooled tokens), and the residual stream of a pre-LN ViT whose gates act on the MLP branch
(``gate_placement="branch"``) unrolls at each token into the embedding, every attention output
and every (gated) MLP output. So

    y_c = Σ_{t∈P} emb[t] + Σ_i Σ_j att_i[j] + Σ_i Σ_{t∈P} mlp_i[t]     (exactly)

    emb[t]   = u · h_0[t] / N
    att_i[j] = Σ_h m_i^h[j] · (u · o_i^h[j] + λ1 ⊙ u · b_O / H),  m_i^h[j] = mean_{t∈P} A_i^h[t, j]
    mlp_i[t] = u · (h_{i+1}[t] − s_i[t]) / N     (h_{i+1} − s_i = g_i ⊙ r_i; the last layer's
                                                  ungated r read from its features − s)

(``split_contributions``; the output bias is spread over the sources by the column means, which
sum to 1 per head). att_i is credited to the sources' state before layer i, mlp_i to the state
after layer i's attention, emb to the patches themselves; ``route`` carries each back to the
input tokens: "attention" through the rollout's mixing matrices (``transformer.
mixing_matrices``), "flow" through the row-normalised class flow rownorm(I + Ā_i), "none" leaves
each where it was credited. Routing redistributes, so the map still sums to y_c over all
tokens (prefix tokens included; they are not drawn).
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mhex_jax.errors import ConfigError
from mhex_jax.explain import attribution
from mhex_jax.explain import transformer
from mhex_jax.models import common
from mhex_jax.models import mhex as mhex_lib

MAPS = ("cam", "flow", "split")
FLOW_ROWS = ("layer", "final")
SPLIT_ROUTES = ("none", "attention", "flow")


class LayerPass(NamedTuple):
  """What one ViT layer's forward pass holds for the flow maps."""
  probs: jax.Array  # A_i f32[B, H, T, T]
  values: jax.Array  # v_i [B, H, T, d_h]
  output_kernel: jax.Array  # W_O [H·d_h, d]
  output_bias: jax.Array  # b_O [d]
  attention_scale: Optional[jax.Array]  # λ1 [d] (layer scale) or None
  layer_input: Optional[jax.Array]  # h_i [B, T, d] (None without ``stream``)
  post_attention: Optional[jax.Array]  # s_i = h_i + λ1 ⊙ attention(LN(h_i)) [B, T, d] (idem)
  block: mhex_lib.MHEXBlock  # W_i, P_i and the features A_i = s_i + r_i (ungated)


class FlowPass(NamedTuple):
  layers: list[LayerPass]
  encoder_output: Optional[jax.Array]  # h_L [B, T, d] (None without ``stream``)
  logits: jax.Array  # f32[B, K] of the final head
  targets: jax.Array  # int32[B]
  pool: jax.Array  # f32[B, T]: the heads' mean over the pooled tokens, as weights


def check_model(model: Any) -> None:
  """The flow maps read a pre-LN MHEX ViT whose gates act on the MLP branch and whose sown
  features are the ungated s + r (the ViT defaults)."""
  placement = getattr(model, "gate_placement", None)
  features = getattr(model, "saliency_features", None)
  if placement != "branch" or features != "ungated":
    raise ConfigError(
        f"eval.mhex.map='flow'/'split' reads an MHEX ViT with gate_placement='branch' and "
        f"saliency_features='ungated' (the residual stream unrolls into the branches only "
        f"then); this model has gate_placement={placement!r}, "
        f"saliency_features={features!r}. Use eval.mhex.map='cam'.")


def forward_pass(model: Any, variables: Any, images: jax.Array,
                 targets: Optional[jax.Array], *, stream: bool = True) -> FlowPass:
  """One eval-mode forward pass of a ViT with everything the flow maps read; ``stream=False``
  leaves out the residual stream's states (layer inputs, post-attention, encoder output), which
  only the logit split reads, so that the class flow keeps no more of the forward pass alive
  than it uses (its cost did not change measurably: ViT-S/16 224² batch 8, 1.21 to 1.22 of the
  forward)."""
  check_model(model)
  collections = [mhex_lib.COLLECTION, common.ATTENTION, common.VALUES]
  if stream:
    collections.append(common.HIDDEN_STATES)
  params, equivalents = mhex_lib.split_equivalents(common.strip_state(variables))
  head_logits, state = model.apply(params, images, **attribution.eval_mode_kwargs(model.apply),
                                   mutable=collections)
  logits = attribution.final_logits(head_logits)
  if targets is None:
    targets = jnp.argmax(logits, axis=-1)
  blocks = mhex_lib.collect_blocks(params["params"], state[mhex_lib.COLLECTION], equivalents)
  probs = common.attention_probs(state)
  hidden = common.hidden_states(state) if stream else [None] * (len(blocks) + 1)
  posts = common.post_attention_states(state) if stream else [None] * len(blocks)
  layer_params = [params["params"][f"layer_{i:02d}"] for i in range(len(blocks))]
  layers = [LayerPass(a, values, p["attention"]["output"]["kernel"],
                      p["attention"]["output"]["bias"], p.get("attention_scale"), h, s, block)
            for a, values, p, h, s, block in zip(
                probs, common.attention_values(state), layer_params, hidden[:-1], posts, blocks)]
  # The heads' mean: over the patch tokens (every token of a model without prefix tokens).
  batch, tokens = probs[0].shape[0], probs[0].shape[-1]
  mask = (jnp.arange(tokens) >= model.num_prefix_tokens).astype(jnp.float32)
  pool = jnp.broadcast_to(mask / jnp.sum(mask), (batch, tokens))
  return FlowPass(layers, hidden[-1], logits, jnp.asarray(targets, jnp.int32), pool)


def message_scores(layer: LayerPass, readout: jax.Array) -> jax.Array:
  """u · o_i^h[j] for readouts u [B, d]: f32[B, H, T]."""
  heads = layer.values.shape[1]
  readout = readout.astype(jnp.float32)
  if layer.attention_scale is not None:
    readout = readout * layer.attention_scale.astype(jnp.float32)
  kernel = layer.output_kernel.astype(jnp.float32).reshape(heads, -1, readout.shape[-1])
  per_head = jnp.einsum("hkd,bd->bhk", kernel, readout)
  return jnp.einsum("bhtk,bhk->bht", layer.values.astype(jnp.float32), per_head)


def final_readout(forward: FlowPass) -> jax.Array:
  """u = E[c] ⊙ 1[z > 0] [B, d] of the final head: y_c = u · mean_P A_{L−1} exactly."""
  block = forward.layers[-1].block
  row = mhex_lib.block_target_rows(block, forward.targets)
  z = jnp.einsum("bt,btd->bd", forward.pool, block.features.astype(jnp.float32))
  return jnp.where(z > 0, row, 0.0)


def flow_readouts(forward: FlowPass, flow_rows: str) -> list[jax.Array]:
  """The readout of each layer's flow weights: its own E row ("layer") or the final head's
  active row ("final")."""
  if flow_rows not in FLOW_ROWS:
    raise ConfigError(f"Unknown flow_rows={flow_rows!r}; use one of {FLOW_ROWS}.")
  if flow_rows == "final":
    return [final_readout(forward)] * len(forward.layers)
  return [mhex_lib.block_target_rows(layer.block, forward.targets) for layer in forward.layers]


def flow_attention(layer: LayerPass, readout: jax.Array) -> jax.Array:
  """Ā_i = mean_h A_i^h ⊙ [u · o_i^h[j]]₊ (columns weighted): f32[B, T, T]."""
  weights = jnp.maximum(message_scores(layer, readout), 0.0)
  return transformer.head_mean(layer.probs.astype(jnp.float32) * weights[:, :, None, :])


def flow_map(forward: FlowPass, flow_rows: str = "layer") -> jax.Array:
  """The pooled row of R − I, R = (I + Ā_{L−1}) ⋯ (I + Ā_0): f32[B, T]."""
  row = forward.pool
  for layer, readout in reversed(list(zip(forward.layers, flow_readouts(forward, flow_rows)))):
    row = row + jnp.einsum("bi,bij->bj", row, flow_attention(layer, readout))
  return row - forward.pool


class Split(NamedTuple):
  embedding: jax.Array  # emb [B, T]
  attention: list[jax.Array]  # att_i [B, T], by source token
  mlp: list[jax.Array]  # mlp_i [B, T], by token


def split_contributions(forward: FlowPass) -> Split:
  """The exact split of the final logit (module docstring); sums to y_c."""
  if forward.layers[0].layer_input is None:
    raise ConfigError("The logit split reads the residual stream: build its forward pass with "
                      "forward_pass(..., stream=True).")
  u = final_readout(forward)
  dot = lambda x: jnp.einsum("btd,bd->bt", x.astype(jnp.float32), u)
  embedding = forward.pool * dot(forward.layers[0].layer_input)
  attention, mlp = [], []
  last = len(forward.layers) - 1
  for i, layer in enumerate(forward.layers):
    heads = layer.probs.shape[1]
    column_means = jnp.einsum("bt,bhtj->bhj", forward.pool, layer.probs.astype(jnp.float32))
    scale = 1.0 if layer.attention_scale is None else layer.attention_scale.astype(jnp.float32)
    bias = jnp.einsum("d,bd->b", layer.output_bias.astype(jnp.float32) * scale, u) / heads
    scores = message_scores(layer, u) + bias[:, None, None]
    attention.append(jnp.sum(column_means * scores, axis=1))
    after = layer.block.features if i == last else forward.layers[i + 1].layer_input
    mlp.append(forward.pool * (dot(after) - dot(layer.post_attention)))
  return Split(embedding, attention, mlp)


def split_map(forward: FlowPass, route: str = "flow", flow_rows: str = "final") -> jax.Array:
  """The split's contributions carried to the input tokens (module docstring): f32[B, T]."""
  if route not in SPLIT_ROUTES:
    raise ConfigError(f"Unknown route={route!r} for map='split'; use one of {SPLIT_ROUTES}.")
  split = split_contributions(forward)
  mixings = routing_mixings(forward, route, flow_rows)
  total = jnp.zeros_like(split.embedding)
  # Horner from the top: mlp_i goes through M_i ⋯ M_0, att_i through M_{i−1} ⋯ M_0.
  for i in reversed(range(len(forward.layers))):
    total = total + split.mlp[i]
    if mixings is not None:
      total = jnp.einsum("bi,bij->bj", total, mixings[i])
    total = total + split.attention[i]
  return total + split.embedding


def routing_mixings(forward: FlowPass, route: str,
                    flow_rows: str = "layer") -> Optional[list[jax.Array]]:
  """Row-stochastic M_i per layer for ``route``: the rollout's ("attention"), the class flow's
  rownorm(I + Ā_i) ("flow"), or None ("none")."""
  if route == "none":
    return None
  if route == "attention":
    return transformer.mixing_matrices([layer.probs for layer in forward.layers])
  eye = jnp.eye(forward.pool.shape[-1], dtype=jnp.float32)
  mixings = []
  for layer, readout in zip(forward.layers, flow_readouts(forward, flow_rows)):
    mixing = flow_attention(layer, readout) + eye
    mixings.append(mixing / jnp.sum(mixing, axis=-1, keepdims=True))
  return mixings


def check_options(map_name: str, route: str, flow_rows: str) -> None:
  if map_name not in MAPS:
    raise ConfigError(f"Unknown map={map_name!r}; use one of {MAPS}.")
  if route not in SPLIT_ROUTES:
    raise ConfigError(f"Unknown route={route!r}; use one of {SPLIT_ROUTES}.")
  if flow_rows not in FLOW_ROWS:
    raise ConfigError(f"Unknown flow_rows={flow_rows!r}; use one of {FLOW_ROWS}.")

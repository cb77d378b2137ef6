"""What every mhex_jax backbone shares: the names of the collections its forward pass fills,
the perturbation and layer-input hooks, the readers of sown values, and the stripper that turns
a mutable ``apply`` state back into plain variables.

Collections (``model.apply(..., mutable=[...])``):

* ``"mhex"`` (``MHEX``): each MHEX module's saliency features A (``models/mhex.py``).
* ``"attention"`` (``ATTENTION``): each Transformer layer's attention probabilities.
* ``"hidden_states"`` (``HIDDEN_STATES``): each layer's (or CNN block's) input, then the
  encoder output or the map a CNN pools; a ViT layer also sows its stream after attention
  (``POST_ATTENTION``).
* ``"values"`` (``VALUES``): each Transformer layer's attention values [B, H, T, d_h], which
  the class-flow maps read (``explain.token_flow``).
* ``"intermediates"`` (``INTERMEDIATES``): Flax's ``capture_intermediates``, with which the
  explainers read a layer of a user's own model by name.
* ``"perturbations"`` (``PERTURBATIONS``): zero-valued perturbation points; the gradient of an
  output with respect to them is the gradient with respect to the hooked values.
"""

from typing import Any

import flax.linen as nn
import jax

from mhex_jax.errors import ConfigError

MHEX = "mhex"
INTERMEDIATES = "intermediates"
ATTENTION = "attention"
VALUES = "values"
HIDDEN_STATES = "hidden_states"
PERTURBATIONS = "perturbations"
LAYER_INPUT = "layer_input"
ENCODER_OUTPUT = "encoder_output"
POST_ATTENTION = "post_attention"

# Every collection a forward pass may fill: none of them is a model variable.
STATE_COLLECTIONS = (MHEX, ATTENTION, VALUES, HIDDEN_STATES, PERTURBATIONS, INTERMEDIATES)


def strip_state(variables: Any) -> dict:
  """``variables`` without the sown and perturbation collections (params and batch statistics
  only), ready for another ``apply`` that fills them anew."""
  return {k: v for k, v in variables.items() if k not in STATE_COLLECTIONS}


def perturb(module: nn.Module, name: str, value: jax.Array) -> jax.Array:
  """``module.perturb`` outside ``init``, so initialised variables hold no batch-shaped zeros."""
  if module.is_initializing():
    return value
  return module.perturb(name, value, collection=PERTURBATIONS)


def record_layer_input(module: nn.Module, h: jax.Array) -> jax.Array:
  """The layer-input convention of every Transformer layer: a perturbation point (for gradients
  w.r.t. h) and a sown copy, both named ``LAYER_INPUT``."""
  h = perturb(module, LAYER_INPUT, h)
  module.sow(HIDDEN_STATES, LAYER_INPUT, h)
  return h


def _single(node: Any, where: str) -> jax.Array:
  """The one value sown at ``where`` (sow collects a tuple; perturbation trees hold arrays)."""
  if not isinstance(node, tuple):
    return node
  if len(node) != 1:
    raise ConfigError(f"{where} holds {len(node)} sown values; pass variables without sown "
                      "collections (e.g. {'params': ...}) to apply().")
  return node[0]


def _layer_values(tree: Any, name: str) -> list[jax.Array]:
  """The value ``name`` ("a/b" for nesting) of every ``layer_XX`` subtree, in depth order."""
  values = []
  for layer in sorted(k for k in tree if k.startswith("layer_")):
    node = tree[layer]
    for key in name.split("/"):
      node = node[key]
    values.append(_single(node, f"{layer}/{name}"))
  return values


def attention_probs(state: Any) -> list[jax.Array]:
  """Per-layer attention probabilities f32[B, H, T, T] from the mutable state of ``apply``."""
  if ATTENTION not in state:
    raise ConfigError(f"No {ATTENTION!r} collection: apply the model with "
                      f"mutable=[{ATTENTION!r}].")
  return _layer_values(state[ATTENTION], "attention/probs")


def attention_values(state: Any) -> list[jax.Array]:
  """Per-layer attention values [B, H, T, d_h] from the mutable state of ``apply``."""
  if VALUES not in state:
    raise ConfigError(f"No {VALUES!r} collection: apply the model with mutable=[{VALUES!r}].")
  return _layer_values(state[VALUES], "attention/values")


def post_attention_states(state: Any) -> list[jax.Array]:
  """Per-layer stream after attention s = h + attention(LN(h)) [B, T, d] (ViT layers)."""
  if HIDDEN_STATES not in state:
    raise ConfigError(f"No {HIDDEN_STATES!r} collection: apply the model with "
                      f"mutable=[{HIDDEN_STATES!r}].")
  return _layer_values(state[HIDDEN_STATES], POST_ATTENTION)


def hidden_states(state: Any) -> list[jax.Array]:
  """Every layer's input, then the encoder output: L + 1 arrays [B, T, d] (HF order)."""
  if HIDDEN_STATES not in state:
    raise ConfigError(f"No {HIDDEN_STATES!r} collection: apply the model with "
                      f"mutable=[{HIDDEN_STATES!r}].")
  tree = state[HIDDEN_STATES]
  return _layer_values(tree, LAYER_INPUT) + [_single(tree[ENCODER_OUTPUT], ENCODER_OUTPUT)]


def layer_input_perturbations(perturbations: Any) -> list[jax.Array]:
  """Per-layer layer-input entries of a perturbation tree (e.g. its gradient), in depth order.

  Takes the ``"perturbations"`` collection or a variables dict holding it.
  """
  return _layer_values(perturbations.get(PERTURBATIONS, perturbations), LAYER_INPUT)

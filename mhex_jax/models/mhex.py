"""The MHEX module: channel Attention Gate + Deep-Supervision head (SPEC §2, §4).

This is the only place the gate and head exist; ResNet blocks and Transformer layers call it.

Given a block's shortcut ``s`` and residual branch ``r`` (both ``[B, *spatial, C]``):

    z = ReLU(mean(s) + mean(r))      mean over the spatial/token axes (valid tokens only)
    a = z @ W                        gate projection, no bias        [B, C]
    g = sigmoid(a)                   (or 2·sigmoid(a) with the identity initialisation)
    o = a @ P                        deep-supervision head, no bias  [B, K]

and the gate is applied to the shortcut (default), the branch, or their sum. The module
returns the gated sum (the block's pre-activation output) and the head logits ``o``, and sows
the saliency features ``A`` into the ``"mhex"`` collection for the explainers: the gated sum
(CNN, SPEC §3), the ungated s + r (Transformers, SPEC §4: the sum the head's z averages, so
mean_t E·A_t decomposes the head logit when the ReLU is inactive) or the gated shortcut.
The product ``W @ P`` is the Equivalent Matrix (see ``mhex_jax.explain.equivalent_matrix``);
``collect_blocks`` reads every module's W, P and A back from a forward pass.

**In your own Flax model** (as ``resnet.py`` does), call the module once per block and use its
output as the block's pre-activation sum; return every head's logits stacked:

    class Block(nn.Module):
      features: int
      strides: int
      num_classes: int

      @nn.compact
      def __call__(self, x):
        r = nn.relu(nn.Conv(self.features, (3, 3), self.strides)(x))
        r = nn.Conv(self.features, (3, 3))(r)            # branch r, before the activation
        s = x                                            # shortcut s (projected if needed)
        if self.strides != 1 or x.shape[-1] != self.features:
          s = nn.Conv(self.features, (1, 1), self.strides)(x)
        out, logits = MHEX(self.num_classes)(s, r)       # y = ReLU(g ⊙ s + r); o = P W z
        return nn.relu(out), logits

    class MyCNN(nn.Module):
      num_classes: int

      @nn.compact
      def __call__(self, x):
        heads = []
        for features, strides in ((8, 1), (16, 2), (32, 2)):
          x, logits = Block(features, strides, self.num_classes)(x)
          heads.append(logits)
        return jnp.stack(heads)                          # [L, B, K]; heads[-1] predicts

    saliency = explain.equivalent_matrix.mhex_saliency(model, variables, images, targets).saliency

That is all ``mhex_saliency`` needs (one forward pass, no gradients): each MHEX module sows
its A under its module path and keeps W and P in ``params`` at the same path. Rules:

* s and r are one shape [B, h, w, C]; the gate must act on the features later blocks read,
  so pass ``out`` on (ReLU) rather than your own s + r.
* The last head is the classifier (no pooled classifier needed); train with the deep-
  supervision loss Σ_ℓ CE(o_ℓ, y) (``train_lib.deep_supervision_loss``). Returning only the
  last head's [B, K] also works for the saliency.
* Blocks are taken in depth order by sorting their module paths, numbers compared as numbers:
  flax's automatic names (Block_0 … Block_10) or zero-padded ones (block_00 …) work; names
  that do not sort in depth order give the wrong α^(L−ℓ) weights.
* If ``__call__`` takes ``train``, it is called with ``train=False``; other eval switches
  need their eval value as default.
"""

import re
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhex_jax.errors import ConfigError
from mhex_jax.models import common

GATE_INITS = ("random", "identity")
GATE_PLACEMENTS = ("shortcut", "branch", "sum")
SALIENCY_FEATURES = ("sum", "ungated", "gated_shortcut")

# Name of the collection that carries saliency features, and of the leaf inside it.
COLLECTION = common.MHEX
FEATURES = "features"
# Names of the gate W and head P inside an MHEX module's params, and the paths of their kernels.
GATE = "gate"
HEAD = "head"
GATE_KERNEL = (GATE, "kernel")
HEAD_KERNEL = (HEAD, "kernel")
# Collection of the Equivalent Matrices formed once per checkpoint (``with_equivalent_matrices``).
EQUIVALENT = "equivalent"


def check_options(gate_init: str, gate_placement: str, saliency_features: str):
  """Raises a ValueError naming any unknown MHEX option."""
  for name, value, allowed in (("gate_init", gate_init, GATE_INITS),
                               ("gate_placement", gate_placement, GATE_PLACEMENTS),
                               ("saliency_features", saliency_features,
                                SALIENCY_FEATURES)):
    if value not in allowed:
      raise ConfigError(f"Unknown MHEX option {name}={value!r}; choose one of {allowed}.")


def masked_mean(x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Mean of ``x`` [B, *spatial, C] over the spatial axes; ``mask`` [B, *spatial] or None."""
  axes = tuple(range(1, x.ndim - 1))
  if mask is None:
    return jnp.mean(x, axis=axes)
  mask = mask.astype(x.dtype)[..., None]
  count = jnp.maximum(jnp.sum(mask, axis=axes), 1.0)
  return jnp.sum(x * mask, axis=axes) / count


class MHEX(nn.Module):
  """Attention Gate W [C, C] and Deep-Supervision head P [C, K], both bias-free.

  Attributes:
    num_classes: K, the number of classes of the head.
    gate_init: "random" (W ~ LeCun normal, g = σ(a)) or "identity" (W = 0 and g = 2σ(a),
      so the gate starts at exactly 1 and a pretrained block is unchanged at init).
    gate_placement: what the gate multiplies: "shortcut" (SPEC §2), "branch" or "sum".
    saliency_features: what is sown for saliency: "sum" (A = the gated sum, the CNN
      default), "ungated" (A = s + r, the Transformer default) or "gated_shortcut" (A = g ⊙ s).
    dtype: computation dtype of the gated features.
  """
  num_classes: int
  gate_init: str = "random"
  gate_placement: str = "shortcut"
  saliency_features: str = "sum"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, shortcut: jax.Array, residual: jax.Array,
               mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Gates a block.

    Args:
      shortcut: s, [B, *spatial, C].
      residual: r, [B, *spatial, C] (same shape as s).
      mask: optional [B, *spatial] validity mask (tokens); means use valid positions only.

    Returns:
      (out, logits): out [B, *spatial, C] the gated pre-activation sum, logits f32[B, K].
    """
    check_options(self.gate_init, self.gate_placement, self.saliency_features)
    if shortcut.shape != residual.shape:
      raise ConfigError(f"MHEX needs shortcut and residual of one shape, got "
                        f"{shortcut.shape} and {residual.shape}.")
    channels = shortcut.shape[-1]
    # The summary is taken in float32: means over many positions lose precision in bf16.
    z = nn.relu(masked_mean(shortcut.astype(jnp.float32), mask) +
                masked_mean(residual.astype(jnp.float32), mask))
    kernel_init = (nn.initializers.zeros if self.gate_init == "identity"
                   else nn.initializers.lecun_normal())
    a = nn.Dense(channels, use_bias=False, kernel_init=kernel_init, name=GATE)(z)
    logits = nn.Dense(self.num_classes, use_bias=False, name=HEAD)(a)
    gate = nn.sigmoid(a)
    if self.gate_init == "identity":
      gate = 2.0 * gate
    gate = gate.astype(self.dtype)
    gate = jnp.reshape(gate, (gate.shape[0],) + (1,) * (shortcut.ndim - 2) + (channels,))

    s, r = shortcut.astype(self.dtype), residual.astype(self.dtype)
    ungated = s + r
    if self.gate_placement == "shortcut":
      s = gate * s
      out = s + r
    elif self.gate_placement == "branch":
      out = s + gate * r
    else:
      out = gate * ungated
    features = {"sum": out, "gated_shortcut": s, "ungated": ungated}[self.saliency_features]
    self.sow(COLLECTION, FEATURES, features)
    return out, logits


def equivalent_matrix(gate_kernel: jax.Array, head_kernel: jax.Array) -> jax.Array:
  """E = P W as a [K, C] matrix, from Flax kernels W [C, C] and P [C, K]."""
  return (gate_kernel.astype(jnp.float32) @ head_kernel.astype(jnp.float32)).T


def split_equivalents(variables: Any) -> tuple[dict, Optional[Any]]:
  """(``variables`` without the ``EQUIVALENT`` collection, that collection or None): the
  model is applied to the first, ``collect_blocks`` takes the second."""
  rest = {k: v for k, v in variables.items() if k != EQUIVALENT}
  return rest, variables.get(EQUIVALENT)


def target_rows(gate_kernel: jax.Array, head_kernel: jax.Array,
                targets: jax.Array) -> jax.Array:
  """E[targets] [B, C] without forming E: row c of E = P W is (W · P[:, c])ᵀ, so this costs
  C²·B multiply-adds instead of C²·K (for ImageNet's K = 1000 at batch 1, E itself would cost
  more than the forward pass)."""
  head_columns = jnp.take(head_kernel.astype(jnp.float32), targets, axis=1)  # [C, B]
  return (gate_kernel.astype(jnp.float32) @ head_columns).T


class MHEXBlock(NamedTuple):
  """One MHEX-equipped block: its gate and head kernels and its saliency features."""
  name: str
  gate_kernel: jax.Array  # W, [C, C] (in, out)
  head_kernel: jax.Array  # P, [C, K] (in, out)
  features: jax.Array  # A, [B, *spatial, C]
  equivalent: Optional[jax.Array] = None  # E = P W, f32[K, C], when formed beforehand


def block_target_rows(block: MHEXBlock, targets: jax.Array) -> jax.Array:
  """E[targets] [B, C] of one block: gathered from E when it was formed beforehand
  (``with_equivalent_matrices``), else ``target_rows`` from W and P."""
  if block.equivalent is not None:
    return jnp.take(block.equivalent, targets, axis=0)
  return target_rows(block.gate_kernel, block.head_kernel, targets)


def with_equivalent_matrices(variables: Any) -> dict:
  """``variables`` plus every MHEX module's Equivalent Matrix E = P W (f32[K, C]), in the
  collection ``EQUIVALENT`` at the module's path: formed once per checkpoint, so a map gathers
  its target rows instead of reading every gate kernel W [C, C] again (ResNet-50: 20 M gate
  weights, 82 MB, read a second time after the forward pass; at 112², batch 1, the predicted
  class's map went from 1.08 to 1.04 of the forward, benchmarks/README.md).

  The explainers use E wherever it is given; form it again after any change to the
  parameters (its rows would otherwise be those of the old ones). It costs C²·K multiply-adds
  a block once and K·C floats a block of memory (ResNet-50, 1000 classes: 15.4 M, 61 MB).
  The other collections pass through; a model without MHEX modules raises.
  """
  def formed(tree):
    """E if ``tree`` is an MHEX module, else the tree of its modules' E (None if none)."""
    if GATE in tree and HEAD in tree:
      return equivalent_matrix(_at(tree, GATE_KERNEL), _at(tree, HEAD_KERNEL))
    found = {key: formed(child) for key, child in tree.items()
             if isinstance(child, dict) or hasattr(child, "items")}
    return {key: e for key, e in found.items() if e is not None} or None

  # A model that is one MHEX module gets its E at the collection's root.
  equivalents = formed(variables["params"])
  if equivalents is None:
    raise ValueError("with_equivalent_matrices: the parameters hold no MHEX module (no "
                     f"'{GATE}' beside a '{HEAD}'); build the model with mhex=True.")
  return {**variables, EQUIVALENT: equivalents}


def depth_order(name: str) -> list:
  """Sort key of module paths with numbers compared as numbers: "Block_2/MHEX_0" comes before
  "Block_10/MHEX_0" (flax's automatic names), and zero-padded names sort as strings do."""
  return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def _at(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _equivalent_at(equivalents: Any, path: tuple[str, ...]) -> jax.Array:
  try:
    return _at(equivalents, path)
  except (KeyError, TypeError):
    raise ValueError(f"The '{EQUIVALENT}' collection has no Equivalent Matrix for MHEX module "
                     f"{'/'.join(path)}: it was formed for another model; form it again with "
                     "with_equivalent_matrices(variables).") from None


def collect_blocks(params: Any, mhex_state: Any,
                   equivalents: Optional[Any] = None) -> list[MHEXBlock]:
  """Pairs every sown MHEX feature map with its module's kernels, in depth order.

  Args:
    params: the model's ``params`` collection.
    mhex_state: the ``"mhex"`` collection returned by ``apply(..., mutable=["mhex"])``.
    equivalents: the ``EQUIVALENT`` collection of ``with_equivalent_matrices``, or None.

  Returns:
    MHEX blocks sorted by module path, numbers compared as numbers (``depth_order``): the
    mhex_jax backbones, and user models with flax's automatic names, name blocks so this is
    depth order.
  """
  blocks = []

  def visit(state, prm, path):
    for key in state:
      if key == FEATURES:
        features = state[key]
        if len(features) != 1:
          raise ValueError(f"MHEX module {'/'.join(path)} sowed {len(features)} feature maps; "
                           "pass variables without an 'mhex' collection to apply().")
        gate, head = _at(prm, GATE_KERNEL), _at(prm, HEAD_KERNEL)
        equivalent = None if equivalents is None else _equivalent_at(equivalents, path)
        if equivalent is not None and equivalent.shape != (head.shape[1], gate.shape[0]):
          raise ValueError(f"MHEX module {'/'.join(path)}: its Equivalent Matrix has shape "
                           f"{equivalent.shape}, its kernels make {(head.shape[1], gate.shape[0])}"
                           "; form it again with with_equivalent_matrices(variables).")
        blocks.append(MHEXBlock("/".join(path), gate, head, features[0], equivalent))
      else:
        visit(state[key], prm[key], path + (key,))

  visit(mhex_state, params, ())
  if not blocks:
    raise ValueError("The model sowed no MHEX features: build an mhex_jax backbone with "
                     "mhex=True, or call models.mhex.MHEX in the blocks of your own model.")
  return sorted(blocks, key=lambda b: depth_order(b.name))

"""ViT (pre-LN, as Hugging Face ``ViTModel``) with MHEX on every MLP residual (SPEC §4).

Layer ℓ: s = h + SelfAttention(LN(h)) (the stream after attention) and r = MLP(LN(s)) (the MLP
branch). The plain layer returns s + r; the MHEX layer returns

    s + g ⊙ r, o_ℓ = MHEX(gate_placement, gate_init)(s, r, mask)    z = ReLU(mean_t s + mean_t r)

for the default placement "branch" (``shortcut``: g ⊙ s + r; ``sum``: g ⊙ (s + r)). The
saliency features are the ungated A = s + r by default (SPEC §4: the sum the head's z
averages); ``saliency_features="sum"`` sows the gated layer output instead. The token means
skip the class token (``mask`` is 0 there); the gate, a per-channel vector, still multiplies
every token, class token included, so the stream stays one array. The sown saliency features
keep the class token in row 0; ``tokens_to_grid`` drops it and reshapes patch tokens to the
patch grid, where ``explain.equivalent_matrix.layer_cams`` and ``integrate_cams`` apply
unchanged.

**Default gate: placement "branch", init "random"** (measured; options stay open). A gate on
the shortcut or the sum multiplies the residual stream itself by σ(a) ≈ 0.5 in every layer;
gating only the branch keeps the stream's identity path. The "identity" init (W = 0,
g = 2σ(a) = 1) reproduces a plain/pretrained ViT exactly at step 0, but its heads start at
exactly 0 (a = W z = 0, so P gets no gradient until W has moved) and learn later. Tiny ViT
(d = 48, L = 4, patch 4) on PneumoniaMNIST 28 px, val accuracy of the last head (n = 524, so
±0.012 binomial std), Adam 1e-3, batch 32; the plain ViT reaches 0.948:

    placement init      from scratch, 600 steps    inserted into a trained plain ViT
                        seeds 0 / 1 / 2 (mean)     stream drift   +40 steps  +150 steps
    shortcut  random    .933 / .800 / .948 (.894)  0.82           .931       .950
    shortcut  identity  .901 / .906 / .929 (.912)  0              .899       .954
    branch    random    .937 / .931 / .933 (.934)  0.12           .937       .954
    branch    identity  .903 / .922 / .914 (.913)  0              .897       .956
    sum       random    .933 / .916 / .943 (.931)  0.84           .927       .947
    sum       identity  .912 / .927 / .926 (.922)  0              .893       .956

("stream drift" = ‖h_L − h_L^plain‖ / ‖h_L^plain‖ of the encoder output right after insertion.)
branch + random was the best and the most stable from scratch and the fastest to fine-tune, and
moves the stream least among random inits; use gate_init="identity" where the pretrained model
must be reproduced exactly at step 0.

MHEX: logits ``[L, B, K]``, prediction = ``logits[-1]``, no final LayerNorm or classifier.
Plain (``mhex=False``): final LayerNorm, then the class token (or the token mean without a class
token) into a dense classifier, ``[1, B, K]``.

Attention probabilities, layer inputs and their perturbations come out as ``common.py`` names them
(collections ``"attention"``, ``"hidden_states"``, ``"perturbations"``, ``"mhex"``); the
``encoder_output`` is the last layer's output before the final LayerNorm, as in HF's
``hidden_states``.
"""

from typing import Any, Sequence, Union

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mhex_jax.errors import ConfigError
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models.attention import LayerConfig, SelfAttention, activation, feed_forward
from mhex_jax.models.attention import layer_config, layer_norm
from mhex_jax.models.common import ENCODER_OUTPUT, HIDDEN_STATES, record_layer_input


def _pair(size: Union[int, Sequence[int]]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else tuple(size)


def tokens_to_grid(tokens: jax.Array, grid_size: Sequence[int], class_token: bool = True
                   ) -> jax.Array:
  """Patch tokens [B, (1 +) gh·gw, C] → [B, gh, gw, C], dropping the class token."""
  if class_token:
    tokens = tokens[:, 1:]
  gh, gw = grid_size
  if tokens.shape[1] != gh * gw:
    raise ConfigError(f"{tokens.shape[1]} patch tokens do not fill a {gh}×{gw} grid.")
  return einops.rearrange(tokens, "b (h w) c -> b h w c", h=gh, w=gw)


class ViTLayer(nn.Module):
  """Pre-LN layer; the MLP residual goes through MHEX when mhex=True."""
  config: LayerConfig

  @nn.compact
  def __call__(self, h, token_mask, *, train=False):
    c = self.config
    h = record_layer_input(self, h)
    init = nn.initializers.truncated_normal(c.initializer_range)
    dropout = lambda x: nn.Dropout(c.hidden_dropout)(x, deterministic=not train)

    x = layer_norm(c.layer_norm_eps, c.dtype, "attention_norm")(h)
    x = SelfAttention(c.num_heads, use_bias=c.qkv_bias,
                      dropout_rate=c.attention_dropout, kernel_init=init, dtype=c.dtype,
                      name="attention")(x, train=train)
    s = dropout(x) + h
    r = layer_norm(c.layer_norm_eps, c.dtype, "mlp_norm")(s)
    r = dropout(feed_forward(r, c.intermediate_size, c.hidden_act, init, c.dtype))
    if not c.mhex:
      return r + s, None
    return mhex_lib.MHEX(c.num_classes, gate_init=c.gate_init,
                         gate_placement=c.gate_placement,
                         saliency_features=c.saliency_features, dtype=c.dtype,
                         name="mhex")(s, r, mask=token_mask)


class ViT(nn.Module):
  """MHEX-ViT (or the plain ViT classifier with ``mhex=False``).

  Defaults are ViT-B/16 at 224 px; ``mhex_jax.weights.vit_config_from_hf`` reads them from a
  checkpoint's ``config.json``.

  Attributes:
    num_classes: K.
    image_size, patch_size: int or (height, width); the image must be exactly image_size.
    num_channels: input channels C.
    hidden_size (d), num_layers (L), num_heads (H), intermediate_size, layer_norm_eps,
      hidden_act, qkv_bias: the architecture.
    hidden_dropout, attention_dropout: dropout rates.
    class_token: prepend a learned class token (HF ViT always has one). Without it the plain
      head mean-pools the tokens.
    patch_stem: "linear" (one patch-sized stride-p conv, as HF ViT) or "conv": log2(p) 4×4
      stride-2 convs with padding 1, each followed by LayerNorm and GELU, then a 1×1
      projection (a convolutional stem after Xiao et al. 2021). The token grid is the same;
      the conv stem gives a small ViT the locality it otherwise has to learn from data, which
      on the synthetic shapes is the difference between 0.5 and > 0.9 accuracy
      (``configs/vit_imagenet.py``). Even kernels keep every token's receptive field centred
      on its patch centre (p·j + (p − 1)/2), where the bilinear resize of a patch-grid map draws
      it; 3×3 stride-2 convs would centre it at p·j, (p − 1)/2 pixels up and left.
    initializer_range: std of the truncated-normal initialisers of new weights.
    mhex: an MHEX module on every MLP residual, one head per layer; otherwise a classifier.
    gate_init, gate_placement, saliency_features: MHEX options (``models/mhex.py``); the
      default "branch" + "random" is explained (and measured) in the module docstring.
    dtype: computation dtype; parameters, attention probabilities and logits stay float32.
  """
  num_classes: int
  image_size: Union[int, Sequence[int]] = 224
  patch_size: Union[int, Sequence[int]] = 16
  num_channels: int = 3
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  hidden_dropout: float = 0.0
  attention_dropout: float = 0.0
  qkv_bias: bool = True
  class_token: bool = True
  patch_stem: str = "linear"
  initializer_range: float = 0.02
  mhex: bool = True
  gate_init: str = "random"
  gate_placement: str = "branch"
  saliency_features: str = "ungated"
  dtype: Any = jnp.float32

  @property
  def grid_size(self) -> tuple[int, int]:
    """(gh, gw): the patch grid of one image."""
    (h, w), (ph, pw) = _pair(self.image_size), _pair(self.patch_size)
    return h // ph, w // pw

  def _check(self, images):
    if self.num_classes < 2:
      raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}.")
    activation(self.hidden_act)
    mhex_lib.check_options(self.gate_init, self.gate_placement, self.saliency_features)
    (h, w), (ph, pw) = _pair(self.image_size), _pair(self.patch_size)
    if h % ph or w % pw:
      raise ConfigError(f"image_size {(h, w)} is not a multiple of patch_size {(ph, pw)}.")
    if self.patch_stem not in ("linear", "conv"):
      raise ConfigError(f"Unknown patch_stem={self.patch_stem!r}; use 'linear' or 'conv'.")
    if self.patch_stem == "conv" and (ph != pw or ph < 2 or ph & (ph - 1)):
      raise ConfigError(f"patch_stem='conv' needs a square power-of-two patch_size (2, 4, 8, "
                        f"16, ...), got {(ph, pw)}; use patch_stem='linear'.")
    expected = (h, w, self.num_channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
      raise ConfigError(f"ViT input must be [B, {h}, {w}, {self.num_channels}], got shape "
                        f"{tuple(images.shape)}; resize the images or rebuild the model with "
                        "the matching image_size/num_channels.")

  def _embed_patches(self, images, init):
    """[B, H, W, C] → [B, gh, gw, d]."""
    patch = _pair(self.patch_size)
    if self.patch_stem == "linear":
      return nn.Conv(self.hidden_size, patch, strides=patch, padding="VALID", kernel_init=init,
                     dtype=self.dtype, name="patch_embedding")(images)
    num_convs = patch[0].bit_length() - 1
    x = images
    for i in range(num_convs):
      # Widths double up to d: d / 2^(n-1), ..., d / 2, d.
      width = max(self.hidden_size >> (num_convs - 1 - i), 8)
      # Output i of a 4×4/2 conv with padding 1 sees inputs 2i − 1 .. 2i + 2, centred on
      # 2i + ½: composed log2(p) times, the centre is p·j + (p − 1)/2, the patch centre.
      x = nn.Conv(width, (4, 4), strides=2, padding=1, dtype=self.dtype,
                  name=f"stem_conv_{i}")(x)
      x = layer_norm(self.layer_norm_eps, self.dtype, f"stem_norm_{i}")(x)
      x = nn.gelu(x, approximate=False)
    return nn.Conv(self.hidden_size, (1, 1), kernel_init=init, dtype=self.dtype,
                   name="patch_embedding")(x)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """Args: images f32[B, H, W, C]. Returns: logits f32[num_heads, B, K]."""
    self._check(images)
    init = nn.initializers.truncated_normal(self.initializer_range)
    x = self._embed_patches(images.astype(self.dtype), init)
    x = einops.rearrange(x, "b h w d -> b (h w) d")
    batch, num_patches = x.shape[:2]
    if self.class_token:
      cls = self.param("cls_token", init, (1, 1, self.hidden_size))
      x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.hidden_size)).astype(x.dtype),
                           x], axis=1)
    positions = self.param("position_embeddings", init, (1, x.shape[1], self.hidden_size))
    x = x + positions.astype(x.dtype)
    x = nn.Dropout(self.hidden_dropout)(x, deterministic=not train)

    token_mask = None
    if self.class_token:
      token_mask = jnp.ones((batch, 1 + num_patches), bool).at[:, 0].set(False)
    layer = layer_config(self)
    head_logits = []
    for i in range(self.num_layers):
      x, logits = ViTLayer(layer, name=f"layer_{i:02d}")(x, token_mask, train=train)
      head_logits.append(logits)
    self.sow(HIDDEN_STATES, ENCODER_OUTPUT, x)
    if self.mhex:
      return jnp.stack([l.astype(jnp.float32) for l in head_logits])

    x = layer_norm(self.layer_norm_eps, self.dtype, "final_norm")(x)
    pooled = x[:, 0] if self.class_token else jnp.mean(x, axis=1)
    logits = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype,
                      name="classifier")(pooled)
    return logits.astype(jnp.float32)[None]

"""ViT (pre-LN, as Hugging Face ``ViTModel``) with MHEX on every MLP residual (SPEC §4).

Layer ℓ: s = h + SelfAttention(LN(h)) (the stream after attention) and r = MLP(LN(s)) (the MLP
branch). The plain layer returns s + r; the MHEX layer returns

    s + g ⊙ r, o_ℓ = MHEX(gate_placement, gate_init)(s, r, mask)    z = ReLU(mean_t s + mean_t r)

for the default placement "branch" (``shortcut``: g ⊙ s + r; ``sum``: g ⊙ (s + r)). The
saliency features are the ungated A = s + r by default (SPEC §4: the sum the head's z
averages); ``saliency_features="sum"`` sows the gated layer output instead. With layer scale
(DINOv2) the attention output is scaled by λ1 before it joins s, and r is the scaled branch
λ2 ⊙ MLP(LN(s)).

**Tokens.** The sequence is the prefix tokens, then the gh·gw patch tokens (row-major):

    [class] [distillation] [register_1 .. register_R] [patch_1 .. patch_gh·gw]

each prefix token present when the model has it (``class_token``, ``distillation_token``,
``num_register_tokens``); ``num_prefix_tokens`` counts them and is what every reader of the
token axis uses. Position embeddings cover the class and distillation tokens and the patches;
registers have none (as in DINOv2 with registers). The MHEX token means skip every prefix token
(``mask`` is 0 there); the gate, a per-channel vector, still multiplies every token, so the
stream stays one array. The sown saliency features keep the prefix tokens in front;
``tokens_to_grid`` drops them and reshapes patch tokens to the patch grid, where
``explain.equivalent_matrix.layer_cams`` and ``integrate_cams`` apply unchanged. Registers are
scratch memory no head reads: they are left out of every pooling and every map
(``scored_tokens``).

**Image size.** The position embeddings are learned on ``position_grid`` (default: the patch
grid of ``image_size``). At another grid they are resized per ``position_interpolation``
exactly as Hugging Face does: "bicubic" (torch bicubic, align_corners=False: DINOv2, and ViT /
DeiT with ``interpolate_pos_encoding=True``) or "bicubic_antialias" (DINOv2 with registers);
"none" refuses a different grid (ViT and DeiT by default).

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
Plain (``mhex=False``): final LayerNorm, then the ``head`` (``[1, B, K]``): "class" (the class
token, or the patch-token mean without one, into ``classifier``; HF ViT and
DeiTForImageClassification), "distilled" (``DistilledHead``: the mean of a classifier of the
class token and one of the distillation token, DeiTForImageClassificationWithTeacher) or
"class_and_mean" (``classifier`` on [class token, patch-token mean],
Dinov2ForImageClassification).

Attention probabilities, layer inputs and their perturbations come out as ``common.py`` names them
(collections ``"attention"``, ``"hidden_states"``, ``"perturbations"``, ``"mhex"``); the
``encoder_output`` is the last layer's output before the final LayerNorm, as in HF's
``hidden_states``.
"""

import functools
import math
from typing import Any, Optional, Sequence, Union

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mhex_jax.errors import ConfigError
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models.attention import LayerConfig, SelfAttention, activation, feed_forward
from mhex_jax.models.attention import layer_config, layer_norm
from mhex_jax.models.common import ENCODER_OUTPUT, HIDDEN_STATES, POST_ATTENTION, record_layer_input

FEED_FORWARDS = ("mlp", "swiglu")
HEADS = ("class", "distilled", "class_and_mean")
POSITION_INTERPOLATIONS = ("none", "bicubic", "bicubic_antialias")


def _pair(size: Union[int, Sequence[int]]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else tuple(size)


def tokens_to_grid(tokens: jax.Array, grid_size: Sequence[int], num_prefix_tokens: int = 1
                   ) -> jax.Array:
  """Tokens [B, P + gh·gw, C] → patch tokens [B, gh, gw, C], dropping the P prefix tokens
  (``ViT.num_prefix_tokens``: class, distillation and register tokens)."""
  tokens = tokens[:, int(num_prefix_tokens):]
  gh, gw = grid_size
  if tokens.shape[1] != gh * gw:
    raise ConfigError(f"{tokens.shape[1]} patch tokens (after {int(num_prefix_tokens)} prefix "
                      f"tokens) do not fill a {gh}×{gw} grid.")
  return einops.rearrange(tokens, "b (h w) c -> b h w c", h=gh, w=gw)


def _cubic(x: float, a: float) -> float:
  """Keys' cubic convolution kernel (a = −0.75 in torch's bicubic, −0.5 in its antialiased
  one, as PIL)."""
  x = abs(x)
  if x <= 1:
    return ((a + 2) * x - (a + 3)) * x * x + 1
  if x < 2:
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return 0.0


@functools.lru_cache(maxsize=None)
def bicubic_matrix(size_in: int, size_out: int, antialias: bool = False) -> np.ndarray:
  """f32[size_out, size_in]: torch's 1-D ``interpolate(mode="bicubic", align_corners=False,
  size=...)`` as a matrix (separable, so a 2-D resize is R_h · X · R_wᵀ).

  Without antialias: source x = (i + ½)·in/out − ½, taps ⌊x⌋ − 1 .. ⌊x⌋ + 2 clamped to the
  edge, a = −0.75. With antialias (torch's ``_upsample_bicubic2d_aa``, PIL's filter): a = −0.5
  stretched by max(in/out, 1), taps within its support, weights normalised to sum 1.
  """
  matrix = np.zeros((size_out, size_in))
  scale = size_in / size_out
  for i in range(size_out):
    if antialias:
      stretch = max(scale, 1.0)
      centre = scale * (i + 0.5)
      low = max(int(centre - 2 * stretch + 0.5), 0)
      high = min(int(centre + 2 * stretch + 0.5), size_in)
      taps = np.array([_cubic((j - centre + 0.5) / stretch, -0.5) for j in range(low, high)])
      matrix[i, low:high] = taps / taps.sum()
    else:
      source = scale * (i + 0.5) - 0.5
      low = math.floor(source)
      for k in range(-1, 3):
        matrix[i, min(max(low + k, 0), size_in - 1)] += _cubic(source - low - k, -0.75)
  return matrix.astype(np.float32)


def swiglu(x: jax.Array, hidden: int, kernel_init, dtype: Any) -> jax.Array:
  """DINOv2's SwiGLU FFN: Dense_{d→2·hidden} split into (gate, up), then
  Dense_{hidden→d}(silu(gate) ⊙ up), as "intermediate" and "output" of the calling layer (HF's
  ``mlp.weights_in`` / ``mlp.weights_out``)."""
  y = nn.Dense(2 * hidden, kernel_init=kernel_init, dtype=dtype, name="intermediate")(x)
  gate, up = jnp.split(y, 2, axis=-1)
  return nn.Dense(x.shape[-1], kernel_init=kernel_init, dtype=dtype, name="output")(
      nn.silu(gate) * up)


class ViTLayer(nn.Module):
  """Pre-LN layer; the MLP residual goes through MHEX when mhex=True.

  Attributes:
    config: what every Transformer layer shares (``models.attention.LayerConfig``).
    layer_scale: None, or the initial value of the per-channel scales λ1 (attention branch,
      "attention_scale") and λ2 (MLP branch, "mlp_scale").
    feed_forward: "mlp" or "swiglu" (``ViT.feed_forward``).
  """
  config: LayerConfig
  layer_scale: Optional[float] = None
  feed_forward: str = "mlp"

  def _scale(self, name: str, x: jax.Array) -> jax.Array:
    if self.layer_scale is None:
      return x
    scale = self.param(name, nn.initializers.constant(self.layer_scale), (x.shape[-1],))
    return x * scale.astype(x.dtype)

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
    s = dropout(self._scale("attention_scale", x)) + h
    self.sow(HIDDEN_STATES, POST_ATTENTION, s)
    r = layer_norm(c.layer_norm_eps, c.dtype, "mlp_norm")(s)
    if self.feed_forward == "swiglu":
      r = swiglu(r, c.intermediate_size, init, c.dtype)
    else:
      r = feed_forward(r, c.intermediate_size, c.hidden_act, init, c.dtype)
    r = dropout(self._scale("mlp_scale", r))
    if not c.mhex:
      return r + s, None
    return mhex_lib.MHEX(c.num_classes, gate_init=c.gate_init,
                         gate_placement=c.gate_placement,
                         saliency_features=c.saliency_features, dtype=c.dtype,
                         name="mhex")(s, r, mask=token_mask)


class DistilledHead(nn.Module):
  """DeiT's distilled classifier: (class(t_class) + distillation(t_distillation)) / 2, two
  Dense layers named "class" and "distillation" (HF's cls_classifier, distillation_classifier).
  """
  num_classes: int
  kernel_init: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, class_token: jax.Array, distillation_token: jax.Array) -> jax.Array:
    """Args: the two tokens [B, d]. Returns: logits [B, K]."""
    dense = lambda name: nn.Dense(self.num_classes, kernel_init=self.kernel_init,
                                  dtype=self.dtype, name=name)
    return (dense("class")(class_token) + dense("distillation")(distillation_token)) / 2


class ViT(nn.Module):
  """MHEX-ViT (or the plain ViT classifier with ``mhex=False``).

  Defaults are ViT-B/16 at 224 px; ``mhex_jax.weights.vit_config_from_hf`` reads them from a
  checkpoint's ``config.json`` (ViT, DeiT, DINOv2, DINOv2 with registers: one model, the
  differences are the attributes below).

  Attributes:
    num_classes: K.
    image_size, patch_size: int or (height, width); the image must be exactly image_size.
    num_channels: input channels C.
    hidden_size (d), num_layers (L), num_heads (H), intermediate_size, layer_norm_eps,
      hidden_act, qkv_bias: the architecture. intermediate_size is the FFN width (SwiGLU: of
      each of its two branches).
    hidden_dropout, attention_dropout: dropout rates.
    class_token: prepend a learned class token ("cls_token"; HF ViT always has one). Without it
      the plain "class" head mean-pools the patch tokens.
    distillation_token: a learned distillation token ("distillation_token") after the class
      token, with a position embedding of its own (DeiT).
    num_register_tokens: R learned register tokens ("register_tokens" [1, R, d]) after the
      class and distillation tokens, without position embeddings (DINOv2 with registers). No
      head reads them and no map shows them.
    layer_scale: None (no layer scale), or the initial value of DINOv2's per-channel scales
      λ1, λ2 on the attention and MLP branches ("attention_scale", "mlp_scale" in each layer).
    feed_forward: "mlp" (Dense → hidden_act → Dense) or "swiglu" (DINOv2's use_swiglu_ffn:
      silu-gated, hidden_act unused).
    position_grid: (gh, gw) the position embeddings are learned on; None = the patch grid of
      image_size. Fixed by a checkpoint (its config's image_size / patch_size).
    position_interpolation: how the position embeddings reach another patch grid: "none"
      (refused), "bicubic" or "bicubic_antialias" (see the module docstring).
    head: the plain model's classifier: "class", "distilled" or "class_and_mean" (see the
      module docstring); MHEX models have none.
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
  distillation_token: bool = False
  num_register_tokens: int = 0
  layer_scale: Optional[float] = None
  feed_forward: str = "mlp"
  position_grid: Optional[Sequence[int]] = None
  position_interpolation: str = "none"
  head: str = "class"
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

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches: class, distillation and register tokens."""
    return int(self.class_token) + int(self.distillation_token) + self.num_register_tokens

  def scored_tokens(self, batch_size: int) -> jax.Array:
    """bool[B, T]: the tokens explainers score and average over (class, distillation and patch
    tokens); False on the registers, which no head reads."""
    lead = int(self.class_token) + int(self.distillation_token)
    rows = jnp.arange(self.num_prefix_tokens + math.prod(self.grid_size))
    registers = (rows >= lead) & (rows < self.num_prefix_tokens)
    return jnp.broadcast_to(~registers, (batch_size, rows.size))

  def _position_grid(self) -> tuple[int, int]:
    return self.grid_size if self.position_grid is None else tuple(self.position_grid)

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
    self._check_tokens()
    expected = (h, w, self.num_channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
      raise ConfigError(f"ViT input must be [B, {h}, {w}, {self.num_channels}], got shape "
                        f"{tuple(images.shape)}; resize the images or rebuild the model with "
                        "the matching image_size/num_channels.")

  def _check_tokens(self):
    """The prefix-token, FFN, head and position options."""
    for name, value, allowed in (("feed_forward", self.feed_forward, FEED_FORWARDS),
                                 ("head", self.head, HEADS),
                                 ("position_interpolation", self.position_interpolation,
                                  POSITION_INTERPOLATIONS)):
      if value not in allowed:
        raise ConfigError(f"Unknown {name}={value!r}; use one of {allowed}.")
    if self.num_register_tokens < 0:
      raise ConfigError(f"num_register_tokens must be >= 0, got {self.num_register_tokens}.")
    if not self.class_token and (self.distillation_token or self.head != "class"):
      raise ConfigError(f"distillation_token={self.distillation_token} and head={self.head!r} "
                        "need class_token=True; set it or use head='class' without a "
                        "distillation token.")
    if self.head == "distilled" and not self.distillation_token:
      raise ConfigError("head='distilled' needs distillation_token=True; set it or use "
                        "head='class'.")
    (gh, gw), (th, tw) = self.grid_size, self._position_grid()
    if (gh, gw) != (th, tw) and self.position_interpolation == "none":
      ph, pw = _pair(self.patch_size)
      raise ConfigError(
          f"image_size {_pair(self.image_size)} gives a {gh}×{gw} patch grid but the position "
          f"embeddings are for {th}×{tw}; use image_size {(th * ph, tw * pw)} or resize them "
          "with position_interpolation='bicubic'.")

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

  def _position_embeddings(self, num_positioned: int, init) -> jax.Array:
    """f32[1, num_positioned + gh·gw, d]: the learned table, its patch part resized from
    ``position_grid`` to the patch grid when they differ."""
    (th, tw), (gh, gw) = self._position_grid(), self.grid_size
    table = self.param("position_embeddings", init,
                       (1, num_positioned + th * tw, self.hidden_size))
    if (th, tw) == (gh, gw):
      return table
    antialias = self.position_interpolation == "bicubic_antialias"
    patches = einops.rearrange(table[0, num_positioned:], "(h w) d -> h w d", h=th, w=tw)
    patches = jnp.einsum("Hh,hwd,Ww->HWd", bicubic_matrix(th, gh, antialias), patches,
                         bicubic_matrix(tw, gw, antialias), precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([table[:, :num_positioned],
                            einops.rearrange(patches, "h w d -> 1 (h w) d")], axis=1)

  def _embed(self, images, init, train):
    """Images → the token sequence [B, P + gh·gw, d] (order in the module docstring)."""
    x = self._embed_patches(images.astype(self.dtype), init)
    x = einops.rearrange(x, "b h w d -> b (h w) d")
    batch = x.shape[0]
    expand = lambda token: jnp.broadcast_to(token, (batch, *token.shape[1:])).astype(x.dtype)
    positioned = []
    if self.class_token:
      positioned.append(self.param("cls_token", init, (1, 1, self.hidden_size)))
    if self.distillation_token:
      positioned.append(self.param("distillation_token", init, (1, 1, self.hidden_size)))
    x = jnp.concatenate([expand(t) for t in positioned] + [x], axis=1)
    x = x + self._position_embeddings(len(positioned), init).astype(x.dtype)
    if self.num_register_tokens:
      registers = self.param("register_tokens", init,
                             (1, self.num_register_tokens, self.hidden_size))
      lead = len(positioned)
      x = jnp.concatenate([x[:, :lead], expand(registers), x[:, lead:]], axis=1)
    return nn.Dropout(self.hidden_dropout)(x, deterministic=not train)

  def _classify(self, x, init) -> jax.Array:
    """The plain ``head`` on the encoder output [B, T, d] → logits [B, K]."""
    x = layer_norm(self.layer_norm_eps, self.dtype, "final_norm")(x)
    dense = lambda name: nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype,
                                  name=name)
    patch_mean = jnp.mean(x[:, self.num_prefix_tokens:], axis=1)
    if self.head == "distilled":
      return DistilledHead(self.num_classes, init, self.dtype, name="classifier")(x[:, 0],
                                                                                 x[:, 1])
    if self.head == "class_and_mean":
      return dense("classifier")(jnp.concatenate([x[:, 0], patch_mean], axis=-1))
    return dense("classifier")(x[:, 0] if self.class_token else patch_mean)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """Args: images f32[B, H, W, C]. Returns: logits f32[num_heads, B, K]."""
    self._check(images)
    init = nn.initializers.truncated_normal(self.initializer_range)
    x = self._embed(images, init, train)
    token_mask = None
    if self.num_prefix_tokens:
      patches = jnp.arange(x.shape[1]) >= self.num_prefix_tokens
      token_mask = jnp.broadcast_to(patches, x.shape[:2])
    layer = layer_config(self)
    head_logits = []
    for i in range(self.num_layers):
      x, logits = ViTLayer(layer, self.layer_scale, self.feed_forward,
                           name=f"layer_{i:02d}")(x, token_mask, train=train)
      head_logits.append(logits)
    self.sow(HIDDEN_STATES, ENCODER_OUTPUT, x)
    if self.mhex:
      return jnp.stack([l.astype(jnp.float32) for l in head_logits])
    return self._classify(x, init).astype(jnp.float32)[None]

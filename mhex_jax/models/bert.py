"""BERT (post-LN, as Hugging Face ``BertModel``) with an MHEX module in every layer (SPEC §4).

In layer ℓ, with u = LayerNorm(h + SelfAttention(h)) (the attention sub-layer output) and
v = Dense_{4d→d}(GELU(Dense_{d→4d}(u))) (the FFN before its residual and LayerNorm):

    g ⊙ (u + v), o_ℓ = MHEX(gate_placement="sum")(u, v, mask)   z = ReLU(mean_t u + mean_t v)
    h' = LayerNorm(Dropout(g ⊙ (u + v)))                  replaces the plain LayerNorm(u + v)

and the saliency features sown for the token maps are the ungated A = u + v (SPEC §4; the gate
acts on the stream, not on what the map reads). ``saliency_features="sum"`` sows g ⊙ (u + v).

Means run over valid (non-padding) tokens; special tokens stay in. The pooler and classifier are
removed and every layer's head is returned: logits ``[L, B, K]``, prediction = ``logits[-1]``.
With ``mhex=False`` the model is the plain ``BertForSequenceClassification`` (tanh pooler on
[CLS] + dense classifier) and returns ``logits[None]``, i.e. ``[1, B, K]``.

The same post-LN encoder is the rest of the BERT family, set by four attributes (``head``,
``position_pad_id``, ``type_vocab_size``, ``embedding_size``; ``weights.bert_config_from_hf``
reads them from a checkpoint): RoBERTa and XLM-RoBERTa count positions from the padding id,
DistilBERT has no token-type embeddings, ELECTRA embeds in a smaller width and projects up; each
plain model ends in its family's sequence-classification head (``HEADS``).

What BERT shares with ViT lives beside it: self-attention, the feed-forward block and the
activations in ``attention.py``, the collection names and hooks in ``common.py``.

Intermediate values, all keyed by layer name (``layer_00``, ``layer_01``, ... = depth order):

* ``"attention"`` collection, ``layer_XX/attention/probs``: post-softmax attention
  probabilities f32[B, H, T, T] (masked keys get exactly 0). ``attention_probs(state)``.
* ``"hidden_states"`` collection, ``layer_XX/layer_input``: the input of every layer [B, T, d],
  and ``encoder_output``: the last layer's output. ``hidden_states(state)`` lists them in the
  order of Hugging Face's ``output_hidden_states`` (embeddings output first, L + 1 entries).
* ``"perturbations"`` collection (``nn.Module.perturb``), ``layer_XX/layer_input`` and
  ``layer_XX/attention/probs``: zero-valued variables added to the layer inputs and attention
  probabilities, so ``jax.grad`` w.r.t. them is the gradient w.r.t. those intermediates
  (AttCAT, Chefer, Grad-SAM). They are not created by ``init``; get zeros of the right shapes
  with ``_, p = model.apply({"params": params}, ..., mutable=["perturbations"])`` and pass
  ``{"params": params, **p}`` to the function you differentiate. Flax requires every
  perturbation of the model to be present once the collection is passed.
* ``"mhex"`` collection, ``layer_XX/mhex/features``: the saliency features A [B, T, d]
  (``models.mhex.collect_blocks`` pairs them with the gate and head kernels).

Read them with ``model.apply(variables, ..., mutable=["attention", "hidden_states", "mhex"])``.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhex_jax.errors import ConfigError
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models.attention import ACTIVATIONS, LayerConfig, SelfAttention, activation
from mhex_jax.models.attention import feed_forward
from mhex_jax.models.attention import layer_config, layer_norm
from mhex_jax.models.common import ENCODER_OUTPUT, HIDDEN_STATES, record_layer_input


# The plain model's sequence-classification head per family: the activation after its
# d→d dense on token 0, and whether dropout also precedes that dense. "pooler" is BERT's
# (``pooler`` + ``classifier``); the others are one ``classifier`` module (``ClassificationHead``).
HEADS: dict[str, tuple[Callable[[jax.Array], jax.Array], bool]] = {
    "pooler": (jnp.tanh, False),  # BertForSequenceClassification
    "roberta": (jnp.tanh, True),  # RobertaClassificationHead
    "distilbert": (nn.relu, False),  # pre_classifier + ReLU + classifier
    "electra": (ACTIVATIONS["gelu"], True),  # ElectraClassificationHead
}


def position_ids(input_ids: jax.Array, pad_id: Optional[int]) -> jax.Array:
  """int[B, T] positions: 0..T-1 (BERT) or, with RoBERTa's ``pad_id``, the count of non-pad
  tokens so far plus ``pad_id`` (pad tokens get ``pad_id``), as fairseq and HF compute them."""
  if pad_id is None:
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
  real = (input_ids != pad_id).astype(jnp.int32)
  return jnp.cumsum(real, axis=1) * real + pad_id


class BertEmbeddings(nn.Module):
  """Word + token-type (unless type_vocab_size is 0) + position embeddings of ``features``
  width, LayerNorm, dropout."""
  vocab_size: int
  features: int
  max_positions: int
  type_vocab_size: int
  layer_norm_eps: float
  dropout_rate: float
  initializer_range: float
  position_pad_id: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, *, train=False):
    init = nn.initializers.normal(self.initializer_range)
    embed = lambda n, name: nn.Embed(n, self.features, embedding_init=init, name=name)
    positions = position_ids(input_ids, self.position_pad_id)
    # HF's summation order (word + type, then + position), for bit-level parity.
    x = embed(self.vocab_size, "word_embeddings")(input_ids)
    if self.type_vocab_size:
      x = x + embed(self.type_vocab_size, "token_type_embeddings")(token_type_ids)
    x = x + embed(self.max_positions, "position_embeddings")(positions)
    x = layer_norm(self.layer_norm_eps, self.dtype, "layer_norm")(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class BertLayer(nn.Module):
  """Post-LN layer; the FFN's residual + LayerNorm becomes MHEX + LayerNorm when mhex=True."""
  config: LayerConfig

  @nn.compact
  def __call__(self, h, mask, *, train=False):
    c = self.config
    h = record_layer_input(self, h)
    init = nn.initializers.normal(c.initializer_range)
    dropout = lambda x: nn.Dropout(c.hidden_dropout)(x, deterministic=not train)

    attended = SelfAttention(c.num_heads, dropout_rate=c.attention_dropout,
                             kernel_init=init, dtype=c.dtype, name="attention")(
                                 h, mask, train=train)
    u = layer_norm(c.layer_norm_eps, c.dtype, "attention_norm")(dropout(attended) + h)
    v = feed_forward(u, c.intermediate_size, c.hidden_act, init, c.dtype)
    output_norm = layer_norm(c.layer_norm_eps, c.dtype, "output_norm")
    if not c.mhex:
      return output_norm(dropout(v) + u), None
    a, logits = mhex_lib.MHEX(c.num_classes, gate_init=c.gate_init,
                              gate_placement=c.gate_placement,
                              saliency_features=c.saliency_features, dtype=c.dtype,
                              name="mhex")(u, v, mask=mask)
    return output_norm(dropout(a)), logits


class ClassificationHead(nn.Module):
  """RoBERTa's, DistilBERT's and ELECTRA's sequence classifier (``HEADS[head]``): [dropout],
  ``dense`` (d→d), activation, dropout, ``out_proj`` (d→K), on the first token."""
  num_classes: int
  head: str
  dropout_rate: float
  initializer_range: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
    """Args: h [B, T, d], the encoder output. Returns: logits [B, K]."""
    act, dropout_first = HEADS[self.head]
    init = nn.initializers.normal(self.initializer_range)
    dropout = lambda x: nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = dropout(h[:, 0]) if dropout_first else h[:, 0]
    x = act(nn.Dense(h.shape[-1], kernel_init=init, dtype=self.dtype, name="dense")(x))
    return nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype,
                    name="out_proj")(dropout(x))


class BERT(nn.Module):
  """MHEX-BERT (or the plain BERT sequence classifier with ``mhex=False``).

  Defaults are BERT-base; ``mhex_jax.weights.bert_config_from_hf`` reads them from a
  checkpoint's ``config.json``.

  Attributes:
    num_classes: K.
    vocab_size, hidden_size (d), num_layers (L), num_heads (H), intermediate_size (4d),
      max_positions, type_vocab_size, layer_norm_eps, hidden_act: the architecture.
      type_vocab_size=0: no token-type embeddings; token_type_ids are then ignored (DistilBERT).
    position_pad_id: None: positions 0..T-1 (BERT). An id: RoBERTa's positions, counted over
      the tokens other than this padding id from position_pad_id + 1 (``position_ids``), so
      sequences may hold max_positions - position_pad_id - 1 tokens (RoBERTa, XLM-RoBERTa: 1).
    embedding_size: None: the embeddings are d wide. A width e != d: embeddings of width e, then
      the Dense ``embeddings_project`` e→d (ELECTRA).
    head: the plain model's sequence classifier, one of ``HEADS``: "pooler" (BERT: tanh
      ``pooler`` on token 0, ``classifier``), "roberta" (RoBERTa, XLM-RoBERTa: ``classifier``
      = dense + tanh + out_proj), "distilbert" (dense + ReLU + out_proj, HF's pre_classifier
      and classifier), "electra" (dense + GELU + out_proj). Unused when mhex=True.
    hidden_dropout, attention_dropout: dropout rates (HF hidden_dropout_prob,
      attention_probs_dropout_prob).
    classifier_dropout: dropout before the plain classifier; None uses hidden_dropout.
    initializer_range: std of the normal initialisers of new weights.
    mhex: an MHEX module in every layer, one head per layer; otherwise pooler + classifier.
    gate_init, saliency_features: MHEX options (``models/mhex.py``). The gate always
      multiplies the sum u + v (SPEC §4); "identity" starts at exactly the plain layer. The
      default features are the ungated u + v (SPEC §4); "sum" gives the gated g ⊙ (u + v).
    dtype: computation dtype; parameters, attention probabilities and logits stay float32.
  """
  num_classes: int
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_positions: int = 512
  type_vocab_size: int = 2
  position_pad_id: Optional[int] = None
  embedding_size: Optional[int] = None
  head: str = "pooler"
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  classifier_dropout: Optional[float] = None
  initializer_range: float = 0.02
  mhex: bool = True
  gate_init: str = "random"
  saliency_features: str = "ungated"
  dtype: Any = jnp.float32

  def _check(self, input_ids, attention_mask, token_type_ids):
    if self.num_classes < 2:
      raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}.")
    activation(self.hidden_act)
    mhex_lib.check_options(self.gate_init, "sum", self.saliency_features)
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ConfigError(f"input_ids must be int[B, T], got "
                        f"{input_ids.dtype}{list(input_ids.shape)}.")
    for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
      if value is not None and value.shape != input_ids.shape:
        raise ConfigError(f"{name} must have the shape of input_ids {input_ids.shape}, got "
                          f"{value.shape}.")
    if self.head not in HEADS:
      raise ConfigError(f"Unknown head={self.head!r}; use one of {sorted(HEADS)}.")
    for name, value, low in (("type_vocab_size", self.type_vocab_size, 0),
                             ("position_pad_id", self.position_pad_id, 0),
                             ("embedding_size", self.embedding_size, 1)):
      if value is not None and value < low:
        raise ConfigError(f"{name} must be at least {low}, got {value}.")
    reserved = 0 if self.position_pad_id is None else self.position_pad_id + 1
    if input_ids.shape[1] > self.max_positions - reserved:
      beyond = f" less the {reserved} positions up to position_pad_id" if reserved else ""
      raise ConfigError(f"Sequences of {input_ids.shape[1]} tokens exceed max_positions="
                        f"{self.max_positions}{beyond}; truncate them.")

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: Optional[jax.Array] = None, *, train: bool = False) -> jax.Array:
    """Args: input_ids int[B, T]; attention_mask [B, T] (1 = token, 0 = padding);
    token_type_ids int[B, T] or None (all 0; ignored with type_vocab_size=0).
    Returns: logits f32[num_heads, B, K]."""
    self._check(input_ids, attention_mask, token_type_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    width = self.embedding_size or self.hidden_size
    h = BertEmbeddings(self.vocab_size, width, self.max_positions, self.type_vocab_size,
                       self.layer_norm_eps, self.hidden_dropout, self.initializer_range,
                       self.position_pad_id, self.dtype, name="embeddings")(
                           input_ids, token_type_ids, train=train)
    init = nn.initializers.normal(self.initializer_range)
    if width != self.hidden_size:
      h = nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype,
                   name="embeddings_project")(h)
    layer = layer_config(self)  # gate_placement "sum" (SPEC §4).
    head_logits = []
    for i in range(self.num_layers):
      h, logits = BertLayer(layer, name=f"layer_{i:02d}")(h, attention_mask, train=train)
      head_logits.append(logits)
    self.sow(HIDDEN_STATES, ENCODER_OUTPUT, h)
    if self.mhex:
      return jnp.stack([l.astype(jnp.float32) for l in head_logits])

    rate = self.hidden_dropout if self.classifier_dropout is None else self.classifier_dropout
    if self.head != "pooler":
      return ClassificationHead(self.num_classes, self.head, rate, self.initializer_range,
                                self.dtype, name="classifier")(h, train=train).astype(
                                    jnp.float32)[None]
    pooled = nn.tanh(nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype,
                              name="pooler")(h[:, 0]))
    pooled = nn.Dropout(rate)(pooled, deterministic=not train)
    logits = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype,
                      name="classifier")(pooled)
    return logits.astype(jnp.float32)[None]

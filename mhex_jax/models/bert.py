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

This file also holds what every Transformer in ``mhex_jax.models`` shares (``vit.py`` imports
it): the self-attention module, the GELU choice and the intermediate-value conventions.

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
  (``mhex_jax.explain.mhex.collect_blocks`` pairs them with the gate and head kernels).

Read them with ``model.apply(variables, ..., mutable=["attention", "hidden_states", "mhex"])``.
"""

from typing import Any, Callable, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mhex_jax.errors import ConfigError
from mhex_jax.models import mhex as mhex_lib

ATTENTION = "attention"
HIDDEN_STATES = "hidden_states"
PERTURBATIONS = "perturbations"
LAYER_INPUT = "layer_input"
ENCODER_OUTPUT = "encoder_output"

# Hugging Face activation names: "gelu" is the exact (erf) GELU, the others its tanh form.
ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ConfigError(f"Unknown hidden_act={name!r}; use one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def layer_norm(eps: float, dtype: Any, name: str) -> nn.LayerNorm:
  # Two-pass variance, as PyTorch: the one-pass form loses digits on BERT's large activations.
  return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


def record_layer_input(module: nn.Module, h: jax.Array) -> jax.Array:
  """The layer-input convention of every Transformer layer: a perturbation point (for gradients
  w.r.t. h) and a sown copy, both named ``LAYER_INPUT``."""
  h = perturb(module, LAYER_INPUT, h)
  module.sow(HIDDEN_STATES, LAYER_INPUT, h)
  return h


def feed_forward(x: jax.Array, intermediate_size: int, hidden_act: str, kernel_init,
                 dtype: Any) -> jax.Array:
  """Dense_{d→intermediate} → activation → Dense_{→d}, as "intermediate" and "output" of the
  calling layer (call it from a compact method: the parameter names follow HF's layout)."""
  y = nn.Dense(intermediate_size, kernel_init=kernel_init, dtype=dtype, name="intermediate")(x)
  return nn.Dense(x.shape[-1], kernel_init=kernel_init, dtype=dtype, name="output")(
      activation(hidden_act)(y))


def perturb(module: nn.Module, name: str, value: jax.Array) -> jax.Array:
  """``module.perturb`` outside ``init``, so initialised variables hold no batch-shaped zeros."""
  if module.is_initializing():
    return value
  return module.perturb(name, value, collection=PERTURBATIONS)


class SelfAttention(nn.Module):
  """Multi-head self-attention: query/key/value projections, softmax, output projection.

  Attributes:
    num_heads: H; the feature size d must be divisible by it.
    use_bias: biases on the query/key/value projections (the output projection always has one).
    dropout_rate: dropout on the attention probabilities.
    kernel_init: initialiser of the four projection kernels.
    dtype: computation dtype; scores and the softmax are float32.
  """
  num_heads: int
  use_bias: bool = True
  dropout_rate: float = 0.0
  kernel_init: Callable[..., Any] = nn.initializers.normal(0.02)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None, *,
               train: bool = False) -> jax.Array:
    """Args: x [B, T, d]; mask [B, T] (1 = valid key) or None. Returns: [B, T, d]."""
    features = x.shape[-1]
    if features % self.num_heads:
      raise ConfigError(f"hidden size {features} is not divisible by num_heads={self.num_heads}.")
    head_dim = features // self.num_heads

    def project(name, use_bias):
      y = nn.Dense(features, use_bias=use_bias, kernel_init=self.kernel_init, dtype=self.dtype,
                   name=name)(x)
      return einops.rearrange(y, "b t (h k) -> b h t k", h=self.num_heads)

    q = project("query", self.use_bias)
    k = project("key", self.use_bias)
    v = project("value", self.use_bias)
    scores = jnp.einsum("bhqk,bhtk->bhqt", q, k).astype(jnp.float32) * head_dim**-0.5
    if mask is not None:
      # The float32 minimum instead of -inf: a fully padded row stays finite (uniform).
      scores = jnp.where(mask[:, None, None, :].astype(bool), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = perturb(self, "probs", probs)
    self.sow(ATTENTION, "probs", probs)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=not train)
    context = jnp.einsum("bhqt,bhtk->bqhk", probs.astype(self.dtype), v)
    context = einops.rearrange(context, "b q h k -> b q (h k)")
    return nn.Dense(features, kernel_init=self.kernel_init, dtype=self.dtype,
                    name="output")(context)


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


class BertEmbeddings(nn.Module):
  """Word + token-type + position embeddings, LayerNorm, dropout."""
  vocab_size: int
  hidden_size: int
  max_positions: int
  type_vocab_size: int
  layer_norm_eps: float
  dropout_rate: float
  initializer_range: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, *, train=False):
    init = nn.initializers.normal(self.initializer_range)
    embed = lambda n, name: nn.Embed(n, self.hidden_size, embedding_init=init, name=name)
    positions = jnp.arange(input_ids.shape[1])[None]
    # HF's summation order (word + type, then + position), for bit-level parity.
    x = embed(self.vocab_size, "word_embeddings")(input_ids)
    x = x + embed(self.type_vocab_size, "token_type_embeddings")(token_type_ids)
    x = x + embed(self.max_positions, "position_embeddings")(positions)
    x = layer_norm(self.layer_norm_eps, self.dtype, "layer_norm")(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class BertLayer(nn.Module):
  """Post-LN layer; the FFN's residual + LayerNorm becomes MHEX + LayerNorm when mhex=True."""
  num_heads: int
  intermediate_size: int
  layer_norm_eps: float
  hidden_act: str
  hidden_dropout: float
  attention_dropout: float
  initializer_range: float
  num_classes: int
  mhex: bool
  gate_init: str
  saliency_features: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, mask, *, train=False):
    h = record_layer_input(self, h)
    init = nn.initializers.normal(self.initializer_range)
    dropout = lambda x: nn.Dropout(self.hidden_dropout)(x, deterministic=not train)

    attended = SelfAttention(self.num_heads, dropout_rate=self.attention_dropout,
                             kernel_init=init, dtype=self.dtype, name="attention")(
                                 h, mask, train=train)
    u = layer_norm(self.layer_norm_eps, self.dtype, "attention_norm")(dropout(attended) + h)
    v = feed_forward(u, self.intermediate_size, self.hidden_act, init, self.dtype)
    output_norm = layer_norm(self.layer_norm_eps, self.dtype, "output_norm")
    if not self.mhex:
      return output_norm(dropout(v) + u), None
    a, logits = mhex_lib.MHEX(self.num_classes, gate_init=self.gate_init, gate_placement="sum",
                              saliency_features=self.saliency_features, dtype=self.dtype,
                              name="mhex")(u, v, mask=mask)
    return output_norm(dropout(a)), logits


class BERT(nn.Module):
  """MHEX-BERT (or the plain BERT sequence classifier with ``mhex=False``).

  Defaults are BERT-base; ``mhex_jax.weights.bert_config_from_hf`` reads them from a
  checkpoint's ``config.json``.

  Attributes:
    num_classes: K.
    vocab_size, hidden_size (d), num_layers (L), num_heads (H), intermediate_size (4d),
      max_positions, type_vocab_size, layer_norm_eps, hidden_act: the architecture.
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
    if input_ids.shape[1] > self.max_positions:
      raise ConfigError(f"Sequences of {input_ids.shape[1]} tokens exceed max_positions="
                        f"{self.max_positions}; truncate them.")

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: Optional[jax.Array] = None, *, train: bool = False) -> jax.Array:
    """Args: input_ids int[B, T]; attention_mask [B, T] (1 = token, 0 = padding);
    token_type_ids int[B, T] or None (all 0). Returns: logits f32[num_heads, B, K]."""
    self._check(input_ids, attention_mask, token_type_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    h = BertEmbeddings(self.vocab_size, self.hidden_size, self.max_positions,
                       self.type_vocab_size, self.layer_norm_eps, self.hidden_dropout,
                       self.initializer_range, self.dtype, name="embeddings")(
                           input_ids, token_type_ids, train=train)
    head_logits = []
    for i in range(self.num_layers):
      h, logits = BertLayer(self.num_heads, self.intermediate_size, self.layer_norm_eps,
                            self.hidden_act, self.hidden_dropout, self.attention_dropout,
                            self.initializer_range, self.num_classes, self.mhex, self.gate_init,
                            self.saliency_features, self.dtype, name=f"layer_{i:02d}")(
                                h, attention_mask, train=train)
      head_logits.append(logits)
    self.sow(HIDDEN_STATES, ENCODER_OUTPUT, h)
    if self.mhex:
      return jnp.stack([l.astype(jnp.float32) for l in head_logits])

    init = nn.initializers.normal(self.initializer_range)
    pooled = nn.tanh(nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype,
                              name="pooler")(h[:, 0]))
    rate = self.hidden_dropout if self.classifier_dropout is None else self.classifier_dropout
    pooled = nn.Dropout(rate)(pooled, deterministic=not train)
    logits = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype,
                      name="classifier")(pooled)
    return logits.astype(jnp.float32)[None]

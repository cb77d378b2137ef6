"""The Transformer pieces BERT and ViT share: self-attention, the feed-forward block, layer
norm and the activations (Hugging Face names and parameter layout)."""

import dataclasses
from typing import Any, Callable, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mhex_jax.errors import ConfigError
from mhex_jax.models.common import ATTENTION, VALUES, perturb

# Hugging Face activation names: "gelu" is the exact (erf) GELU, the others its tanh form.
ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


@dataclasses.dataclass(frozen=True)
class LayerConfig:
  """What every encoder layer of a BERT or ViT is built from (the model's fields of the same
  names; ``layer_config`` copies them)."""
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
  gate_placement: str = "sum"
  qkv_bias: bool = True
  dtype: Any = jnp.float32


def layer_config(model: nn.Module) -> LayerConfig:
  """The ``LayerConfig`` of ``model``: its fields of the same names (absent ones keep the
  defaults)."""
  return LayerConfig(**{field.name: getattr(model, field.name)
                        for field in dataclasses.fields(LayerConfig)
                        if hasattr(model, field.name)})


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ConfigError(f"Unknown hidden_act={name!r}; use one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def layer_norm(eps: float, dtype: Any, name: str) -> nn.LayerNorm:
  # Two-pass variance, as PyTorch: the one-pass form loses digits on BERT's large activations.
  return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


def feed_forward(x: jax.Array, intermediate_size: int, hidden_act: str, kernel_init,
                 dtype: Any) -> jax.Array:
  """Dense_{d→intermediate} → activation → Dense_{→d}, as "intermediate" and "output" of the
  calling layer (call it from a compact method: the parameter names follow HF's layout)."""
  y = nn.Dense(intermediate_size, kernel_init=kernel_init, dtype=dtype, name="intermediate")(x)
  return nn.Dense(x.shape[-1], kernel_init=kernel_init, dtype=dtype, name="output")(
      activation(hidden_act)(y))


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
    self.sow(VALUES, "values", v)
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

"""ResNet-18/34/50 with an MHEX module in every residual block (SPEC §2).

With ``mhex=False`` the same backbone ends in the usual global pool + dense classifier and
serves as the plain baseline. Both variants return logits stacked over heads:
``[num_heads, B, K]``; the prediction is always the last head (``logits[-1]``).

Blocks are named ``block_00``, ``block_01``, ... in depth order, so the sown MHEX features
sort by depth (``models.mhex.collect_blocks`` relies on this).

Feature maps for post-hoc explainers (``mhex_jax.explain.image``), named as in ``common.py``:
every block's input ``block_XX/block_input`` and, when a pooled classifier exists, the map it pools
(``final_features``) are sown into ``"hidden_states"`` and are perturbation points (collection
``"perturbations"``, not created by ``init``). Block inputs rather than outputs: in an MHEX
ResNet the last block's output is never read (the last head reads that block's internal
summary z), so its gradient is zero, while its input reaches the prediction.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhex_jax.errors import ConfigError
from mhex_jax.models import convolution
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models.common import HIDDEN_STATES, perturb

def _pool_windows(x: jax.Array) -> list[jax.Array]:
  """The nine strided slices [B, ⌈H/2⌉, ⌈W/2⌉, C] of x padded with −inf, tap (i, j) at 3i + j."""
  height, width = x.shape[1:3]
  out_height, out_width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return [padded[:, i:i + 2 * out_height - 1:2, j:j + 2 * out_width - 1:2]
          for i in range(3) for j in range(3)]


def _window_max(windows: Sequence[jax.Array]) -> jax.Array:
  return functools.reduce(jnp.maximum, windows)


def stem_max_pool(x: jax.Array) -> jax.Array:
  """The stem's 3×3 max pool, stride 2, padding 1 ([B, H, W, C] → [B, ⌈H/2⌉, ⌈W/2⌉, C]), as the
  maximum of the nine strided window slices.

  The values are ``nn.max_pool``'s. The gradient differs in cost, not value: it is elementwise
  selects, where ``nn.max_pool``'s select-and-scatter (with its index arrays) cost XLA:CPU
  nearly a forward pass of ResNet-18 (benchmarks/README.md). At an exact tie between window
  entries the gradient is split among them (halves down the chain of maxima) instead of going
  to the first; after the ReLU the common tie, at 0, gets no gradient either way.

  Within ``convolution.input_gradients_by_matmul`` (the explainers' input gradients) it is
  ``scattered_max_pool``: the same values and gradient, bit for bit, at less cost.
  """
  if convolution.enabled():
    return scattered_max_pool(x)
  return _window_max(_pool_windows(x))


@jax.custom_vjp
def scattered_max_pool(x: jax.Array) -> jax.Array:
  """``stem_max_pool`` whose gradient is autodiff's of the windows' maximum, taken on the nine
  output-sized slices and put back in place by the parity of the input position
  (``_scatter_taps``) instead of through a full-sized strided pad per slice: the same sums, a
  fifth of the memory traffic. Reverse mode only (a ``jax.custom_vjp``)."""
  return _window_max(_pool_windows(x))


def _scatter_taps(taps: Sequence[jax.Array], height: int, width: int) -> jax.Array:
  """Σ over the windows covering each input position of the gradient its tap receives.

  With the −inf padding of 1, input row p is tap row 1 of window p/2 when p is even, and tap
  row 0 of window (p+1)/2 plus tap row 2 of window (p−1)/2 when p is odd (columns alike); a
  window past the last one is the padding and contributes nothing. Taps are summed from the
  last to the first.
  """
  def after(a, axis):  # a[o + 1] along the axis, 0 past the end.
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, 1)
    return jax.lax.slice_in_dim(jnp.pad(a, pad), 1, a.shape[axis] + 1, axis=axis)

  t = taps
  even_even = t[4]
  even_odd = t[5] + after(t[3], 2)
  odd_even = t[7] + after(t[1], 1)
  odd_odd = ((t[8] + after(t[6], 2)) + after(t[2], 1)) + after(after(t[0], 1), 2)
  batch, out_height, out_width, channels = t[4].shape

  def columns(even, odd):
    return jnp.stack([even, odd], axis=3).reshape(batch, out_height, 2 * out_width, channels)

  rows = jnp.stack([columns(even_even, even_odd), columns(odd_even, odd_odd)], axis=2)
  rows = rows.reshape(batch, 2 * out_height, 2 * out_width, channels)
  return rows[:, :height, :width]


def _stem_max_pool_forward(x):
  return scattered_max_pool(x), x


def _stem_max_pool_backward(x, cotangent):
  _, window_vjp = jax.vjp(lambda *windows: _window_max(windows), *_pool_windows(x))
  return (_scatter_taps(window_vjp(cotangent), x.shape[1], x.shape[2]),)


scattered_max_pool.defvjp(_stem_max_pool_forward, _stem_max_pool_backward)


STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
}
STEMS = ("imagenet", "small")
BLOCK_INPUT = "block_input"
FINAL_FEATURES = "final_features"


def _conv(features, kernel, strides, dtype, name):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=[(pad, pad), (pad, pad)], use_bias=False, dtype=dtype,
                 kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                 conv_general_dilated=convolution.conv_function(), name=name)


class _Block(nn.Module):
  """Shared frame of basic and bottleneck blocks: shortcut, branch, then MHEX or a sum."""
  filters: int
  strides: int
  norm: Any
  num_classes: int
  mhex: bool
  mhex_options: Any
  dtype: Any = jnp.float32

  expansion = 1

  def branch(self, x):
    raise NotImplementedError

  @nn.compact
  def __call__(self, x):
    x = perturb(self, BLOCK_INPUT, x)
    self.sow(HIDDEN_STATES, BLOCK_INPUT, x)
    out_channels = self.filters * self.expansion
    r = self.branch(x)
    s = x
    if self.strides != 1 or x.shape[-1] != out_channels:
      s = _conv(out_channels, 1, self.strides, self.dtype, "proj_conv")(x)
      s = self.norm(name="proj_bn")(s)
    if not self.mhex:
      return nn.relu(s + r), None
    a, logits = mhex_lib.MHEX(self.num_classes, dtype=self.dtype, name="mhex",
                              **self.mhex_options)(s, r)
    return nn.relu(a), logits


class BasicBlock(_Block):
  """Two 3×3 convolutions (ResNet-18/34)."""

  def branch(self, x):
    y = _conv(self.filters, 3, self.strides, self.dtype, "conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = _conv(self.filters, 3, 1, self.dtype, "conv2")(y)
    return self.norm(name="bn2")(y)


class BottleneckBlock(_Block):
  """1×1 → 3×3 (strided) → 1×1 with 4× expansion (ResNet-50)."""
  expansion = 4

  def branch(self, x):
    y = _conv(self.filters, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = _conv(self.filters, 3, self.strides, self.dtype, "conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = _conv(self.filters * 4, 1, 1, self.dtype, "conv3")(y)
    return self.norm(name="bn3")(y)


class ResNet(nn.Module):
  """MHEX-ResNet (or the plain ResNet with ``mhex=False``).

  Attributes:
    num_classes: K.
    depth: 18, 34 or 50.
    width: channels of the first stage (64 for the standard network).
    stem: "imagenet" (7×7/2 conv + 3×3/2 max-pool) or "small" (3×3/1 conv, no pool).
    last_stage_stride: stride of the last stage (2 standard, 1 for a 2× larger final map).
    mhex: put an MHEX module in every block of ``mhex_stages``; otherwise a plain ResNet.
    mhex_stages: stages (0-based) whose blocks carry MHEX; None means all. If the last stage
      has no MHEX, a pooled classifier is appended as the final head.
    gate_init, gate_placement, saliency_features: MHEX options (``models/mhex.py``).
    input_channels: if set, inputs with another channel count are rejected.
    dtype: computation dtype (bfloat16 on TPU); parameters and logits stay float32.
  """
  num_classes: int
  depth: int = 18
  width: int = 64
  stem: str = "imagenet"
  last_stage_stride: int = 2
  mhex: bool = True
  mhex_stages: Optional[Sequence[int]] = None
  gate_init: str = "random"
  gate_placement: str = "shortcut"
  saliency_features: str = "sum"
  input_channels: Optional[int] = None
  dtype: Any = jnp.float32

  def _check(self):
    if self.depth not in STAGE_SIZES:
      raise ConfigError(f"ResNet depth={self.depth} is not supported; use one of "
                        f"{sorted(STAGE_SIZES)}.")
    if self.stem not in STEMS:
      raise ConfigError(f"Unknown stem={self.stem!r}; use one of {STEMS}.")
    if self.last_stage_stride not in (1, 2):
      raise ConfigError(f"last_stage_stride must be 1 or 2, got {self.last_stage_stride}.")
    if self.num_classes < 2:
      raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}.")
    stages = self._mhex_stages()
    if any(s not in range(4) for s in stages):
      raise ConfigError(f"mhex_stages must be a subset of (0, 1, 2, 3), got "
                        f"{tuple(self.mhex_stages)}.")
    mhex_lib.check_options(self.gate_init, self.gate_placement, self.saliency_features)

  def _mhex_stages(self):
    if not self.mhex:
      return ()
    return tuple(range(4)) if self.mhex_stages is None else tuple(self.mhex_stages)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x f32[B, H, W, C]. Returns: logits f32[num_heads, B, K]."""
    self._check()
    if x.ndim != 4:
      raise ConfigError(f"ResNet input must be [B, H, W, C], got shape {x.shape}.")
    if self.input_channels is not None and x.shape[-1] != self.input_channels:
      raise ConfigError(f"ResNet expects {self.input_channels} input channels, got images of "
                        f"shape {x.shape}; convert the images (e.g. data.as_rgb) or rebuild "
                        "the model with the matching input_channels.")
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    block_cls = BottleneckBlock if self.depth == 50 else BasicBlock
    mhex_options = dict(gate_init=self.gate_init, gate_placement=self.gate_placement,
                        saliency_features=self.saliency_features)
    mhex_stages = self._mhex_stages()

    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = _conv(self.width, 7, 2, self.dtype, "stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = stem_max_pool(x)
    else:
      x = _conv(self.width, 3, 1, self.dtype, "stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))

    head_logits = []
    index = 0
    for stage, num_blocks in enumerate(STAGE_SIZES[self.depth]):
      for i in range(num_blocks):
        strides = 1
        if i == 0 and stage > 0:
          strides = self.last_stage_stride if stage == 3 else 2
        x, logits = block_cls(self.width * 2**stage, strides, norm, self.num_classes,
                              mhex=stage in mhex_stages, mhex_options=mhex_options,
                              dtype=self.dtype, name=f"block_{index:02d}")(x)
        index += 1
        if logits is not None:
          head_logits.append(logits)

    if 3 not in mhex_stages:
      x = perturb(self, FINAL_FEATURES, x)
      self.sow(HIDDEN_STATES, FINAL_FEATURES, x)
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      head_logits.append(nn.Dense(self.num_classes, name="classifier")(pooled))
    return jnp.stack([l.astype(jnp.float32) for l in head_logits])

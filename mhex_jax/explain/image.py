"""Post-hoc image explainers (SPEC §7, "Image baselines"): the CAM family and input gradients.

Every explainer is ``f(model, variables, images, targets, **options) -> f32[B, H, W]``: a raw,
non-negative map at the input resolution, not normalised (``maps.normalize_maps`` does that).
``images`` are the normalised model inputs f32[B, H, W, C], ``targets`` int[B] the explained
classes, and the score explained is the target logit of the final head (``logits[-1]``). All of
them are pure and batched and run under ``jax.jit`` (``model`` and string/int options static).

Any ``flax.linen`` image classifier works, not only the mhex_jax backbones: ``model.apply(
variables, images)`` may return logits [B, K] (explained as they are) or per-head logits
[L, B, K] (the last head is explained). Models are run in eval mode: with ``train=False`` when
their ``__call__`` takes ``train`` (every mhex_jax model does), else with the images alone, so
a user model's other switches (``deterministic``, ...) need their eval value as default.

CAM family (on a target layer's feature map A [B, h, w, C] and G = ∂z_c/∂A):

    grad_cam            ReLU(Σ_k mean_hw(G_k) · A_k)                     (Selvaraju et al. 2017)
    grad_cam_plus_plus  ReLU(Σ_k w_k A_k), w_k = Σ_ij a_ij ReLU(G_ij),   (Chattopadhay et al.
                        a_ij = G²_ij / (2 G²_ij + Σ_ab A_ab · G³_ij)      2018)
    layer_cam           ReLU(Σ_k ReLU(G_k) ⊙ A_k)                         (Jiang et al. 2021)
    score_cam           ReLU(Σ_k α_k A_k), α = softmax_k z_c(x ⊙ M_k)     (Wang et al. 2020)

The ReLU is applied on the feature grid, then the map is resized bilinearly to (H, W).

Input gradients (g = ∂z_c/∂x [B, H, W, C]; the channel reduction is part of each method):

    vanilla_gradient      max_c |g|
    gradient_x_input      |Σ_c g ⊙ x|
    smoothgrad            max_c |mean_n g(x + ε_n)|,  ε_n ~ N(0, (level · (max x − min x))²)
    integrated_gradients  |Σ_c IG|,  IG = (x − b) ⊙ mean_m g(b + α_m (x − b))

Target layers of the mhex_jax backbones are their feature-map perturbation points, named:
``"block_XX"`` (the *input* of ResNet block XX, i.e. the output of block XX − 1 or of the stem)
and ``"final_features"`` (the map a pooled classifier reads) for ResNets; ``"layer_XX"`` (the
input of ViT layer XX, patch tokens only, on the patch grid) for ViTs. ``layer_names`` lists
them. The default (``layer=None``) is the deepest map that reaches the prediction:
``final_features`` when the model has a pooled classifier (plain ResNet, or MHEX restricted to
earlier stages), else the input of the last block (MHEX ResNet) or of the last layer (ViT).
The last MHEX block's *output* is not offered: the last head reads that block's internal
summary, so the output's gradient is zero; likewise the patch tokens of a ViT's encoder output
(only the class token, or the MHEX summary inside the last layer, reaches the prediction).

In any model (these included), ``layer`` can also be a module path as flax names submodules
(``"Conv_1"``, ``"stage2/conv"``: the keys of ``capture_intermediates``): A is the output of
that submodule's ``__call__``, which must be called once and return one map [B, h, w, C];
``module_layers`` lists them. The gradient ∂z_c/∂A comes from a zero perturbation added to that
output with ``nn.intercept_methods``; the model needs no ``perturb`` or ``sow``. A model with no
named points defaults to the last such map to be computed (in a CNN, the map its classifier
pools); one with none raises an error for the CAM methods.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhex_jax.explain import attribution
from mhex_jax.explain.maps import check_chunk_size
from mhex_jax.explain.maps import describe
from mhex_jax.explain.maps import map_in_chunks
from mhex_jax.explain.maps import normalize_maps
from mhex_jax.explain.maps import sum_in_chunks
from mhex_jax.models import vit as vit_lib
from mhex_jax.models import common
from mhex_jax.models import convolution
from mhex_jax.models.common import HIDDEN_STATES, LAYER_INPUT, PERTURBATIONS
from mhex_jax.models.resnet import BLOCK_INPUT, FINAL_FEATURES

SCORE_CAM_WEIGHTINGS = ("channel_softmax", "probability")


def _check_images(images: jax.Array):
  if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be float [B, H, W, C] (normalised model inputs), got "
                     f"{describe(images)}.")


def _check_inputs(images: jax.Array, targets: jax.Array) -> jax.Array:
  _check_images(images)
  targets = jnp.asarray(targets)
  if targets.shape != images.shape[:1] or not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be int[B] with B = {images.shape[0]}, got "
                     f"{describe(targets)}; resolve 'predicted' with an argmax "
                     "of the logits first.")
  return targets


# --- Calling any classifier -----------------------------------------------------------------

def _apply(model, variables, images, **kwargs):
  """``model.apply`` in eval mode (``attribution.eval_mode_kwargs``)."""
  return model.apply(variables, images, **attribution.eval_mode_kwargs(model.apply), **kwargs)


def _logits(model, variables, images) -> jax.Array:
  """The explained logits f32[B, K] (``attribution.final_logits``)."""
  return attribution.final_logits(_apply(model, variables, images)).astype(jnp.float32)


# --- Target layers --------------------------------------------------------------------------

class _Layer(NamedTuple):
  """A resolved target layer: a backbone's perturbation point, or a submodule's output."""
  name: str
  path: tuple[str, ...]  # in the perturbation tree, or the flax module path
  module: Optional[jax.ShapeDtypeStruct] = None  # the submodule output's shape, if a module


def _layer_paths(model, variables, images) -> dict[str, tuple[str, ...]]:
  """{user name: path in the perturbation tree} of the model's feature-map points."""
  shapes = jax.eval_shape(lambda: _apply(model, variables, images, mutable=[PERTURBATIONS])[1])
  paths = {}
  for key, node in shapes.get(PERTURBATIONS, {}).items():
    if key == FINAL_FEATURES:
      paths[key] = (key,)
    elif isinstance(node, Mapping):
      for leaf in (BLOCK_INPUT, LAYER_INPUT):
        if leaf in node:
          paths[key] = (key, leaf)
  return dict(sorted(paths.items()))


def _module_outputs(model, variables, images) -> dict[str, list[jax.ShapeDtypeStruct]]:
  """{module path: shapes of its calls} of the submodules whose ``__call__`` returns a float
  feature map [B, h, w, C], in the order the calls return (the classifier's input map last)."""
  calls: dict[str, list[jax.ShapeDtypeStruct]] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (context.method_name == "__call__" and context.module.path
        and isinstance(out, jax.Array) and out.ndim == 4 and out.shape[0] == images.shape[0]
        and jnp.issubdtype(out.dtype, jnp.floating)):
      calls.setdefault("/".join(context.module.path), []).append(
          jax.ShapeDtypeStruct(out.shape, out.dtype))
    return out

  def forward():
    with nn.intercept_methods(record):
      _apply(model, variables, images)

  jax.eval_shape(forward)
  return calls


def layer_names(model, variables: Any, images: jax.Array) -> list[str]:
  """The named target layers of an mhex_jax backbone (depth order, ``final_features`` last);
  ``module_layers`` lists the submodule paths every model offers."""
  _check_images(images)
  return list(_layer_paths(model, common.strip_state(variables), images))


def module_layers(model, variables: Any, images: jax.Array) -> list[str]:
  """Module paths usable as ``layer`` in any Flax model ("Conv_1", "stage2/conv": the names of
  ``capture_intermediates``): submodules called once whose ``__call__`` returns a feature map
  [B, h, w, C], in the order their calls return."""
  _check_images(images)
  outputs = _module_outputs(model, common.strip_state(variables), images)
  return [name for name, shapes in outputs.items() if len(shapes) == 1]


def _resolve_layer(model, variables, images, layer: Optional[str]) -> _Layer:
  points = _layer_paths(model, variables, images)
  if layer is None and points:
    layer = FINAL_FEATURES if FINAL_FEATURES in points else list(points)[-1]
  if layer in points:
    return _Layer(layer, points[layer])
  outputs = _module_outputs(model, variables, images)
  maps = [name for name, shapes in outputs.items() if len(shapes) == 1]
  if layer is None:
    if not maps:
      raise ValueError(f"{type(model).__name__} has no submodule whose __call__ returns a "
                       "feature map [B, h, w, C], so there is no target layer for the CAM "
                       "methods; use the input-gradient methods (vanilla_gradient, ...).")
    layer = maps[-1]
  if layer in maps:
    return _Layer(layer, tuple(layer.split("/")), outputs[layer][0])
  if layer in outputs:
    raise ValueError(f"layer={layer!r} is called {len(outputs[layer])} times in one forward "
                     f"pass, so its output is ambiguous; use a module called once: {maps}.")
  raise ValueError(f"Unknown layer={layer!r} for this {type(model).__name__}; use one of "
                   f"{list(points) + maps} (module paths as flax names them, of submodules "
                   "returning one [B, h, w, C] map), or None for the default.")


def default_layer(model, variables: Any, images: jax.Array) -> str:
  """The layer used when ``layer=None`` (see the module docstring)."""
  _check_images(images)
  return _resolve_layer(model, common.strip_state(variables), images, None).name


def _at(tree: Any, path: tuple[str, ...]) -> jax.Array:
  for key in path:
    tree = tree[key]
  # Sown values are 1-tuples; perturbation (and gradient) trees hold arrays.
  return tree[0] if isinstance(tree, tuple) else tree


def _to_grid(model, features: jax.Array) -> jax.Array:
  """Feature maps [B, h, w, C] pass through; ViT tokens [B, T, d] become [B, gh, gw, d]."""
  if features.ndim == 3:
    features = vit_lib.tokens_to_grid(features, model.grid_size,
                                      getattr(model, "num_prefix_tokens", 1))
  return features.astype(jnp.float32)


def _tapped_apply(model, variables, images, path: tuple[str, ...],
                  delta: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """(model outputs, A): the forward pass with the output A of the submodule at ``path``
  captured and ``delta`` added to it (a zero ``delta`` makes ∂z/∂delta = ∂z/∂A)."""
  taps = []

  def tap(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path == path:
      taps.append(out)
      if delta is not None:
        out = out + delta
    return out

  with nn.intercept_methods(tap):
    outputs = _apply(model, variables, images)
  return outputs, taps[0]


def layer_activations(model, variables: Any, images: jax.Array, *,
                      layer: Optional[str] = None) -> jax.Array:
  """The target layer's feature map A f32[B, h, w, C] (one forward pass)."""
  _check_images(images)
  variables = common.strip_state(variables)
  target = _resolve_layer(model, variables, images, layer)
  if target.module is not None:
    return _tapped_apply(model, variables, images, target.path)[1].astype(jnp.float32)
  _, state = _apply(model, variables, images, mutable=[HIDDEN_STATES])
  return _to_grid(model, _at(state[HIDDEN_STATES], target.path))


def layer_gradients(model, variables: Any, images: jax.Array, targets: jax.Array, *,
                    layer: Optional[str] = None) -> tuple[jax.Array, jax.Array]:
  """(A, ∂z_c/∂A), both f32[B, h, w, C], from one forward and one backward pass.

  A backbone's named layer: the gradient of every perturbation point is requested, but under
  ``jit`` XLA drops the backward pass below the target layer because nothing reads it. A
  module path: a zero perturbation is added to that submodule's output through
  ``nn.intercept_methods`` and differentiated.
  """
  targets = _check_inputs(images, targets)
  variables = common.strip_state(variables)
  target = _resolve_layer(model, variables, images, layer)
  if target.module is not None:
    def objective(delta):
      outputs, acts = _tapped_apply(model, variables, images, target.path, delta)
      return jnp.sum(attribution.target_logits(outputs, targets)), acts

    zeros = jnp.zeros(target.module.shape, target.module.dtype)
    with convolution.input_gradients_by_matmul():
      grads, acts = jax.grad(objective, has_aux=True)(zeros)
    return acts.astype(jnp.float32), grads.astype(jnp.float32)
  # The backward to the target layer may cross convolutions (a block's input): as in
  # ``input_gradients``, without XLA:CPU's per-call kernel copies where that pays.
  with convolution.input_gradients_by_matmul():
    _, state, grads = attribution.perturbation_gradients(
        model.apply, variables, (images,), targets, collections=(HIDDEN_STATES,))
  return (_to_grid(model, _at(state[HIDDEN_STATES], target.path)),
          _to_grid(model, _at(grads, target.path)))


def _cam_to_image(cam: jax.Array, image_size: tuple[int, int]) -> jax.Array:
  """ReLU on the feature grid, then bilinear resizing: [B, h, w] → f32[B, H, W] (≥ 0)."""
  cam = jax.nn.relu(cam)
  if tuple(cam.shape[1:]) == tuple(image_size):
    return cam
  return jax.image.resize(cam, (cam.shape[0], *image_size), method="bilinear", antialias=False)


# --- CAM family -----------------------------------------------------------------------------

def grad_cam(model, variables: Any, images: jax.Array, targets: jax.Array, *,
             layer: Optional[str] = None) -> jax.Array:
  """Grad-CAM: channel weights = spatial mean of the gradient; ReLU(Σ_k α_k A_k).

  Args:
    model, variables: an mhex_jax image model and its {"params", maybe "batch_stats"}.
    images: f32[B, H, W, C] normalised inputs.
    targets: int[B] explained classes.
    layer: target layer name (``layer_names``); None = the architecture's default.

  Returns:
    f32[B, H, W] raw non-negative map.
  """
  acts, grads = layer_gradients(model, variables, images, targets, layer=layer)
  weights = jnp.mean(grads, axis=(1, 2))
  return _cam_to_image(jnp.einsum("bk,bhwk->bhw", weights, acts), images.shape[1:3])


def grad_cam_plus_plus(model, variables: Any, images: jax.Array, targets: jax.Array, *,
                       layer: Optional[str] = None) -> jax.Array:
  """Grad-CAM++: pixel-weighted positive gradients as channel weights.

  With the exponential score exp(z_c) of the paper, the second and third derivatives are
  powers of G = ∂z_c/∂A, so a_ij = G² / (2 G² + Σ_ab A_ab · G³) per channel (0 where the
  denominator is 0). The common factor exp(z_c) of ReLU(∂exp(z_c)/∂A) is dropped, as in the
  reference implementations: it scales each example's map by a constant.

  Args/Returns: as ``grad_cam``.
  """
  acts, grads = layer_gradients(model, variables, images, targets, layer=layer)
  grads2 = grads * grads
  denominator = 2.0 * grads2 + jnp.sum(acts, axis=(1, 2), keepdims=True) * grads2 * grads
  nonzero = denominator != 0
  alphas = jnp.where(nonzero, grads2 / jnp.where(nonzero, denominator, 1.0), 0.0)
  weights = jnp.sum(alphas * jax.nn.relu(grads), axis=(1, 2))
  return _cam_to_image(jnp.einsum("bk,bhwk->bhw", weights, acts), images.shape[1:3])


def layer_cam(model, variables: Any, images: jax.Array, targets: jax.Array, *,
              layer: Optional[str] = None) -> jax.Array:
  """LayerCAM: ReLU(Σ_k ReLU(G_k) ⊙ A_k), a per-position weight instead of a channel mean.

  Args/Returns: as ``grad_cam``.
  """
  acts, grads = layer_gradients(model, variables, images, targets, layer=layer)
  return _cam_to_image(jnp.sum(jax.nn.relu(grads) * acts, axis=-1), images.shape[1:3])


def score_cam_weights(model, variables: Any, images: jax.Array, targets: jax.Array, *,
                      layer: Optional[str] = None, chunk_size: Optional[int] = 16,
                      weighting: str = "channel_softmax") -> tuple[jax.Array, jax.Array]:
  """Score-CAM's activations A f32[B, h, w, C] and channel weights α f32[B, C].

  Channel k's mask M_k is A_k resized bilinearly to (H, W) and min–max normalised per example;
  the model scores x ⊙ M_k (one forward pass per channel). Channels that are constant on the
  grid carry no location and get weight 0 (the reference code skips them).

  Args:
    model, variables, images, targets, layer: as ``grad_cam``.
    chunk_size: channels whose masked batches run together (memory ∝ chunk_size · B); None =
      all C at once.
    weighting: "channel_softmax" (default): α = softmax over channels of the target logit
      z_c(x ⊙ M_k), the normalisation the Score-CAM paper describes (and pytorch-grad-cam
      uses); "probability": α_k = softmax over classes of z(x ⊙ M_k) at c, as the authors'
      released code.
  """
  if weighting not in SCORE_CAM_WEIGHTINGS:
    raise ValueError(f"Unknown weighting={weighting!r}; use one of {SCORE_CAM_WEIGHTINGS}.")
  check_chunk_size(chunk_size)
  targets = _check_inputs(images, targets)
  variables = common.strip_state(variables)
  acts = layer_activations(model, variables, images, layer=layer)
  batch, height, width = images.shape[:3]

  def channel_score(channel):  # [B, h, w] → [B]
    masks = normalize_maps(jax.image.resize(channel, (batch, height, width), method="bilinear",
                                            antialias=False))
    logits = _logits(model, variables, images * masks[..., None].astype(images.dtype))
    if weighting == "probability":
      logits = jax.nn.softmax(logits, axis=-1)
    return attribution.target_logits(logits, targets)

  scores = map_in_chunks(channel_score, jnp.moveaxis(acts, -1, 0), chunk_size).T  # [B, C]
  informative = jnp.max(acts, axis=(1, 2)) > jnp.min(acts, axis=(1, 2))
  if weighting == "channel_softmax":
    scores = jax.nn.softmax(jnp.where(informative, scores, -jnp.inf), axis=-1)
  return acts, jnp.where(informative, scores, 0.0)


def score_cam(model, variables: Any, images: jax.Array, targets: jax.Array, *,
              layer: Optional[str] = None, chunk_size: Optional[int] = 16,
              weighting: str = "channel_softmax") -> jax.Array:
  """Score-CAM: ReLU(Σ_k α_k A_k) with α from masked forward passes (``score_cam_weights``).

  Gradient-free; costs C forward passes of the batch (C = channels of the layer).

  Returns:
    f32[B, H, W] raw non-negative map.
  """
  acts, weights = score_cam_weights(model, variables, images, targets, layer=layer,
                                    chunk_size=chunk_size, weighting=weighting)
  return _cam_to_image(jnp.einsum("bk,bhwk->bhw", weights, acts), images.shape[1:3])


# --- Input gradients ------------------------------------------------------------------------

def input_gradients(model, variables: Any, images: jax.Array,
                    targets: jax.Array) -> jax.Array:
  """∂z_c/∂x f32[B, H, W, C] of the final head's target logits (per example: eval mode)."""
  targets = _check_inputs(images, targets)
  variables = common.strip_state(variables)

  def total_target_logit(x):
    return jnp.sum(attribution.target_logits(_apply(model, variables, x), targets))

  # The same gradient; mhex_jax's ResNets skip XLA:CPU's per-call kernel copies in it.
  with convolution.input_gradients_by_matmul():
    return jax.grad(total_target_logit)(images)


def _max_abs_over_channels(x: jax.Array) -> jax.Array:
  return jnp.max(jnp.abs(x), axis=-1).astype(jnp.float32)


def _abs_sum_over_channels(x: jax.Array) -> jax.Array:
  return jnp.abs(jnp.sum(x, axis=-1)).astype(jnp.float32)


def vanilla_gradient(model, variables: Any, images: jax.Array,
                     targets: jax.Array) -> jax.Array:
  """Gradient saliency (Simonyan et al. 2014): max over channels of |∂z_c/∂x|, f32[B, H, W]."""
  return _max_abs_over_channels(input_gradients(model, variables, images, targets))


def gradient_x_input(model, variables: Any, images: jax.Array,
                     targets: jax.Array) -> jax.Array:
  """Gradient × input: |Σ_c x ⊙ ∂z_c/∂x|, f32[B, H, W].

  Summing over channels before the absolute value keeps each pixel's first-order contribution
  to the logit (channels can cancel), as for Integrated Gradients.
  """
  return _abs_sum_over_channels(images * input_gradients(model, variables, images, targets))


def smoothgrad(model, variables: Any, images: jax.Array, targets: jax.Array, *,
               num_samples: int = 50, noise_level: float = 0.15,
               chunk_size: Optional[int] = None, rng: Optional[jax.Array] = None) -> jax.Array:
  """SmoothGrad (Smilkov et al. 2017): max over channels of |mean_n ∂z_c/∂x(x + ε_n)|.

  The signed gradients are averaged, then reduced like ``vanilla_gradient``.

  Args:
    model, variables, images, targets: as ``grad_cam``.
    num_samples: n noisy copies per example.
    noise_level: noise std as a fraction of each example's input range max(x) − min(x) (the
      paper recommends 0.1–0.2).
    chunk_size: noisy images (over all examples: up to n·B) whose gradients are in flight at
      once (on a CPU as two batches side by side); memory grows with it. None = as many as fit (``attribution.fitting_chunk_size``).
    rng: PRNG key of the noise; None = ``jax.random.key(0)``. Every example of the batch gets
      the same standard-normal draws (scaled by its own range), so a map does not depend on
      the other examples of the batch.

  Returns:
    f32[B, H, W] raw non-negative map.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  targets = _check_inputs(images, targets)
  batch = images.shape[0]
  chunk_size = attribution.resolved_chunk_size(chunk_size, model.apply, variables,
                                               (images[:1],), num_samples * batch)
  rng = jax.random.key(0) if rng is None else rng
  spread = (jnp.max(images, axis=(1, 2, 3), keepdims=True)
            - jnp.min(images, axis=(1, 2, 3), keepdims=True))
  noise = jax.random.normal(rng, (num_samples, *images.shape[1:]), images.dtype)

  def gradients(items, examples):
    noisy = images[examples] + noise_level * spread[examples] * noise[items // batch]
    return input_gradients(model, variables, noisy, targets[examples])

  total = sum_in_chunks(gradients, num_samples * batch, batch, chunk_size,
                        attribution.chunks_in_flight())
  return _max_abs_over_channels(total / num_samples)


def integrated_gradients_attributions(model, variables: Any, images: jax.Array,
                                      targets: jax.Array, *, steps: int = 50,
                                      baseline: Optional[jax.Array] = None,
                                      chunk_size: Optional[int] = None) -> jax.Array:
  """Unreduced Integrated Gradients f32[B, H, W, C]; they sum to ≈ z_c(x) − z_c(baseline).

  Args:
    model, variables, images, targets: as ``grad_cam``.
    steps: midpoint-rule path points (``attribution.path_integral``).
    baseline: broadcastable to images; None = zeros in normalised input space (the mean image
      of the normalisation statistics).
    chunk_size: path-point images (over all examples: up to steps·B) whose gradients run as one
      batch; memory grows with it. None = as many as fit (``attribution.fitting_chunk_size``).
  """
  targets = _check_inputs(images, targets)
  baseline = jnp.zeros_like(images) if baseline is None else jnp.asarray(baseline, images.dtype)
  chunk_size = attribution.resolved_chunk_size(chunk_size, model.apply, variables,
                                               (images[:1],), steps * images.shape[0])
  return attribution.path_integral(
      lambda points, examples: input_gradients(model, variables, points, targets[examples]),
      images, baseline, steps=steps, chunk_size=chunk_size)


def integrated_gradients(model, variables: Any, images: jax.Array, targets: jax.Array, *,
                         steps: int = 50, baseline: Optional[jax.Array] = None,
                         chunk_size: Optional[int] = None) -> jax.Array:
  """Integrated Gradients (Sundararajan et al. 2017) reduced to |Σ_c IG|, f32[B, H, W].

  Args: as ``integrated_gradients_attributions``.
  """
  return _abs_sum_over_channels(integrated_gradients_attributions(
      model, variables, images, targets, steps=steps, baseline=baseline, chunk_size=chunk_size))

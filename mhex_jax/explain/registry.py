"""Every explainer by name, with one calling convention per input kind.

``explainer(name, model, **options)`` returns a pure, jit-able
``explain(variables, inputs, targets) -> maps``:

* image models (``ResNet``, ``ViT``): ``inputs`` f32[B, H, W, C] → maps f32[B, H, W] in [0, 1]
  (min-max normalised per example, the scale the image metrics of SPEC §5 take);
* text models (``BERT``): ``inputs`` = {"input_ids", "attention_mask", "token_type_ids",
  "special_tokens_mask"} [B, T] → token scores f32[B, T], signed as the method defines them
  and 0 on padding (text metrics only rank them).

Image models take every image method; a ViT also takes the Transformer methods, whose token
maps are put on the patch grid (class token dropped) and resized to the image as MHEX's patch
maps are. ``targets`` is int[B]: the caller decides between labels and predictions.

Any other ``flax.linen`` module is treated as an image classifier (see ``explain.image``:
logits [B, K] or [L, B, K], ``layer`` a module path such as ``"Conv_1"``), e.g.
``explainer("grad_cam", MyCNN(), layer="Conv_1")``. It is offered "mhex" when it has a true
``mhex`` attribute, as the mhex_jax backbones do (its blocks must call ``models.mhex.MHEX``).
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mhex_jax.errors import ConfigError
from mhex_jax.explain import attribution
from mhex_jax.explain import image as image_explain
from mhex_jax.explain import mhex as mhex_explain
from mhex_jax.explain import transformer as transformer_explain
from mhex_jax.models import bert as bert_lib
from mhex_jax.models import vit as vit_lib

# name → f(model, variables, images, targets, **options) -> raw maps f32[B, H, W].
IMAGE_METHODS: dict[str, Callable[..., jax.Array]] = {
    "grad_cam": image_explain.grad_cam,
    "grad_cam_plus_plus": image_explain.grad_cam_plus_plus,
    "layer_cam": image_explain.layer_cam,
    "score_cam": image_explain.score_cam,
    "vanilla_gradient": image_explain.vanilla_gradient,
    "gradient_x_input": image_explain.gradient_x_input,
    "smoothgrad": image_explain.smoothgrad,
    "integrated_gradients": image_explain.integrated_gradients,
}

# name → f(model, variables, inputs dict, targets, **options) -> token scores f32[B, T].
TOKEN_METHODS: dict[str, Callable[..., jax.Array]] = {
    "raw_attention": transformer_explain.raw_attention,
    "attention_rollout": transformer_explain.attention_rollout,
    "gradient_relevance": transformer_explain.gradient_relevance,
    "grad_sam": transformer_explain.grad_sam,
    "embedding_gradient_x_input": transformer_explain.gradient_x_input,
    "embedding_integrated_gradients": transformer_explain.integrated_gradients,
    "cat": transformer_explain.cat,
    "attcat": transformer_explain.attcat,
}

MHEX = "mhex"


def is_text_model(model) -> bool:
  return isinstance(model, bert_lib.BERT)


def is_mhex_model(model) -> bool:
  """An mhex_jax backbone built with ``mhex=True``, or a user model declaring ``mhex = True``."""
  return bool(getattr(model, "mhex", False))


def available(model) -> tuple[str, ...]:
  """Names ``explainer`` accepts for ``model`` ("mhex" only for MHEX models)."""
  names = [MHEX] if is_mhex_model(model) else []
  if is_text_model(model):
    return tuple(names + list(TOKEN_METHODS))
  names += list(IMAGE_METHODS)
  if isinstance(model, vit_lib.ViT) and model.class_token:
    names += list(TOKEN_METHODS)
  return tuple(names)


def _pair(size):
  return (size, size) if isinstance(size, int) else tuple(size)


def _text_mhex(model, variables, inputs, targets, **options):
  token_mask = (inputs["attention_mask"] > 0) & ~inputs["special_tokens_mask"].astype(bool)
  sal = mhex_explain.mhex_token_saliency(
      model.apply, variables, inputs["input_ids"], inputs["attention_mask"],
      inputs.get("token_type_ids"), token_mask, targets, **options)
  # Normalised over the token mask: 0 on padding and special tokens, as the metrics need.
  return sal.saliency


def _image_mhex(model, variables, images, targets, **options):
  if isinstance(model, vit_lib.ViT):
    return mhex_explain.mhex_patch_saliency(
        model.apply, variables, images, targets, patch_size=_pair(model.patch_size),
        class_token=model.class_token, **options).saliency
  return mhex_explain.mhex_saliency(model.apply, variables, images, targets,
                                    **options).saliency


def _tokens_to_image(model, token_maps: jax.Array, image_shape) -> jax.Array:
  """ViT token maps [B, 1 + gh·gw] → image maps [B, H, W] (class token dropped)."""
  grid = vit_lib.tokens_to_grid(token_maps[..., None], model.grid_size,
                                model.class_token)[..., 0]
  return jax.image.resize(grid, (grid.shape[0], *image_shape), "bilinear")


def explainer(name: str, model, **options) -> Callable[[Any, Any, jax.Array], jax.Array]:
  """The pure function ``(variables, inputs, targets) -> maps`` of method ``name``.

  Args:
    name: one of ``available(model)``.
    model: the Flax module being explained.
    **options: the method's keyword options (see its docstring).
  """
  names = available(model)
  if name not in names:
    raise ConfigError(f"Unknown or inapplicable explainer {name!r} for {type(model).__name__}"
                      f"(mhex={is_mhex_model(model)}); use one of {list(names)}.")
  if is_text_model(model):
    fn = _text_mhex if name == MHEX else TOKEN_METHODS[name]
    return functools.partial(fn, model, **options)

  def explain(variables, images, targets):
    if name == MHEX:
      return _image_mhex(model, variables, images, targets, **options)
    if name in IMAGE_METHODS:
      maps = IMAGE_METHODS[name](model, variables, images, targets, **options)
    else:
      tokens = TOKEN_METHODS[name](model, variables, {"image": images}, targets, **options)
      maps = _tokens_to_image(model, tokens, images.shape[1:3])
    return mhex_explain.normalize_maps(maps)

  return explain


def resolve_targets(model, variables, inputs, targets_mode: str, labels: jax.Array) -> jax.Array:
  """int32[B]: ``labels`` or the final head's prediction (``targets_mode`` "predicted")."""
  if targets_mode == "labels":
    return jnp.asarray(labels, jnp.int32)
  if targets_mode != "predicted":
    raise ConfigError(f"Unknown eval.targets={targets_mode!r}; use 'predicted' or 'labels'.")
  if is_text_model(model):
    logits = model.apply(variables, inputs["input_ids"], inputs["attention_mask"],
                         inputs.get("token_type_ids"), train=False)
  else:
    logits = model.apply(variables, inputs, **attribution.eval_mode_kwargs(model.apply))
  return jnp.argmax(attribution.final_logits(logits), axis=-1).astype(jnp.int32)

"""Every explainer by name, all with one convention.

Every method is ``f(model, variables, inputs, targets, **options) -> maps`` (``explain.image``,
``explain.transformer``, ``explain.equivalent_matrix.mhex_maps``), and
``explainer(name, model, **options)`` returns the pure, jit-able
``explain(variables, inputs, targets) -> maps`` of one of them:

* image models (``ResNet``, ``ViT``): ``inputs`` f32[B, H, W, C] → maps f32[B, H, W] in [0, 1]
  (min-max normalised per example, the scale the image metrics of SPEC §5 take);
* text models (``BERT``): ``inputs`` = {"input_ids", "attention_mask", "token_type_ids",
  "special_tokens_mask"} [B, T] → token scores f32[B, T], signed as the method defines them
  and 0 on padding (text metrics only rank them; MHEX's are in [0, 1], 0 on special tokens).

Image models take every image method; a ViT also takes the Transformer methods, whose token
maps are put on the patch grid (prefix tokens dropped) and resized to the image as MHEX's patch
maps are. ``targets`` is int[B], or None for the final head's prediction; MHEX takes it from
its own forward pass, the others from one more. ``targeted_explainer`` also returns the targets
it explained, so a caller that explains predictions (``eval.targets = "predicted"``) runs MHEX's
forward pass once.

Any other ``flax.linen`` module is treated as an image classifier (see ``explain.image``:
logits [B, K] or [L, B, K], ``layer`` a module path such as ``"Conv_1"``), e.g.
``explainer("grad_cam", MyCNN(), layer="Conv_1")``. It is offered "mhex" when it has a true
``mhex`` attribute, as the mhex_jax backbones do (its blocks must call ``models.mhex.MHEX``).
"""

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mhex_jax import tasks
from mhex_jax.errors import ConfigError
from mhex_jax.explain import attribution
from mhex_jax.explain import equivalent_matrix
from mhex_jax.explain import image as image_explain
from mhex_jax.explain import transformer as transformer_explain
from mhex_jax.explain.maps import normalize_maps
from mhex_jax.models import mhex as mhex_lib

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


def is_mhex_model(model) -> bool:
  """An mhex_jax backbone built with ``mhex=True``, or a user model declaring ``mhex = True``."""
  return bool(getattr(model, "mhex", False))


def prepare(model, variables: Any) -> Any:
  """``variables`` for explaining many batches with one checkpoint: an MHEX model's Equivalent
  Matrices formed once (``models.mhex.with_equivalent_matrices``, one jitted program), so each
  map gathers E's target rows instead of reading every gate kernel again; a plain model's
  variables unchanged. Every explainer accepts either; prepare again after the parameters
  change."""
  if not is_mhex_model(model):
    return variables
  # Only E comes out of the program: the parameters are not copied.
  form = jax.jit(lambda params: mhex_lib.with_equivalent_matrices(
      {"params": params})[mhex_lib.EQUIVALENT])
  return {**variables, mhex_lib.EQUIVALENT: form(variables["params"])}


def available(model) -> tuple[str, ...]:
  """Names ``explainer`` accepts for ``model`` ("mhex" only for MHEX models)."""
  task = tasks.task_of(model)
  names = [MHEX] if is_mhex_model(model) else []
  if task.image_methods:
    names += list(IMAGE_METHODS)
  if task.token_methods:
    names += list(TOKEN_METHODS)
  return tuple(names)


def _check_name(name: str, model):
  names = available(model)
  if name not in names:
    raise ConfigError(f"Unknown or inapplicable explainer {name!r} for {type(model).__name__}"
                      f"(mhex={is_mhex_model(model)}); use one of {list(names)}.")


def check_options(name: str, options) -> None:
  """Raises a ConfigError when ``name`` is no explainer (``eval.explainer_options.<name>``) or
  sets options its function does not take (MHEX's are checked by its map function, which takes
  them by keyword)."""
  if name == MHEX:
    return
  function = IMAGE_METHODS.get(name) or TOKEN_METHODS.get(name)
  if function is None:
    raise ConfigError(f"eval.explainer_options.{name}: {name!r} is no explainer; use one of "
                      f"{sorted({**IMAGE_METHODS, **TOKEN_METHODS})}.")
  parameters = inspect.signature(function).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return
  accepted = list(parameters)[4:]  # After (model, variables, inputs, targets).
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ConfigError(f"eval.explainer_options.{name} sets {unknown}, which {name} does not "
                      "take; " + (f"its options are {accepted}." if accepted else
                                  "it takes no options."))


def _explain(name: str, model, variables, inputs, targets, **options) -> jax.Array:
  """Method ``name``'s maps on the registry's scale (see the module docstring)."""
  if name == MHEX:
    return equivalent_matrix.mhex_maps(model, variables, inputs, targets, **options)
  if targets is None:
    targets = predictions(model, variables, inputs)
  if name in IMAGE_METHODS:
    return normalize_maps(IMAGE_METHODS[name](model, variables, inputs, targets, **options))
  task = tasks.task_of(model)
  scores = TOKEN_METHODS[name](model, variables, task.token_method_inputs(inputs), targets,
                               **options)
  return task.token_maps(scores, inputs)


def explainer(name: str, model, **options) -> Callable[[Any, Any, Any], jax.Array]:
  """The pure function ``(variables, inputs, targets) -> maps`` of method ``name``.

  Args:
    name: one of ``available(model)``.
    model: the Flax module being explained.
    **options: the method's keyword options (see its docstring).
  """
  _check_name(name, model)
  return functools.partial(_explain, name, model, **options)


def targeted_explainer(name: str, model, targets_mode: str,
                       **options) -> Callable[[Any, Any, jax.Array], tuple[jax.Array, jax.Array]]:
  """``(variables, inputs, labels) -> (maps, targets int32[B])`` of method ``name``, explaining
  the ``labels`` or the final head's predictions (``targets_mode`` "labels" / "predicted", see
  ``resolve_targets``). MHEX explains its predictions from the forward pass that gives them.
  """
  _check_name(name, model)
  check_targets_mode(targets_mode)

  def explain(variables, inputs, labels):
    if name == MHEX and targets_mode == "predicted":
      out = equivalent_matrix.explanation(model, variables, inputs, None, **options)
      return out.saliency, out.targets
    targets = resolve_targets(model, variables, inputs, targets_mode, labels)
    return _explain(name, model, variables, inputs, targets, **options), targets

  return explain


def check_targets_mode(targets_mode: str):
  if targets_mode not in ("labels", "predicted"):
    raise ConfigError(f"Unknown eval.targets={targets_mode!r}; use 'predicted' or 'labels'.")


def predictions(model, variables, inputs) -> jax.Array:
  """int32[B]: the final head's prediction, from one eval-mode forward pass."""
  logits = tasks.task_of(model).forward(variables, inputs)
  return jnp.argmax(attribution.final_logits(logits), axis=-1).astype(jnp.int32)


def resolve_targets(model, variables, inputs, targets_mode: str, labels: jax.Array) -> jax.Array:
  """int32[B]: ``labels`` or the final head's prediction (``targets_mode`` "predicted")."""
  check_targets_mode(targets_mode)
  if targets_mode == "labels":
    return jnp.asarray(labels, jnp.int32)
  return predictions(model, variables, inputs)

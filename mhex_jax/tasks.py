"""The modality of a model, named once: ``task_of(model)`` is an ``ImageTask`` or a ``TextTask``.

A task owns everything that differs between explaining images and explaining texts, so that no
other module asks what kind of model it holds:

* the batch keys the model reads (``input_keys``) and the form explainers take (``inputs``:
  images f32[B, H, W, C], or the dict of token arrays [B, T]);
* the forward call (``forward``: head logits [L, B, K]) and inputs to build a model with
  (``dummy_inputs``, shaped by the data config alone, before any data is read);
* which explainer families apply (``image_methods``, ``token_methods``), how a token method's
  scores become maps (``token_maps``) and which MHEX map a model draws (``mhex_map``);
* the per-batch metric suite of the comparison (``metrics_fn``, ``metric_names``) and the page
  that shows the maps (``render``: ``gallery.png`` or ``tokens.html``).

Text models are ``models.BERT``; every other module is an image classifier (a ResNet, a ViT, or
any ``flax.linen`` module taking images), as ``explain.registry`` documents.
"""

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mhex_jax import files
from mhex_jax import plotting
from mhex_jax.data import text as text_data
from mhex_jax.errors import ConfigError
from mhex_jax.explain import attribution
from mhex_jax.explain.maps import normalize_maps
from mhex_jax.metrics import image as image_metrics
from mhex_jax.metrics import text as text_metrics
from mhex_jax.models import bert as bert_lib
from mhex_jax.models import vit as vit_lib

# Report columns where lower is better (both modalities).
LOWER_IS_BETTER = ("classic_average_drop", "deletion_auc", "lodds", "lodds_replacement")

# metrics_fn(scorer_variables, batch, maps, targets) -> (per-example metrics, maps as shown).
MetricsFn = Callable[[Any, dict, jax.Array, jax.Array], tuple[dict[str, jax.Array], jax.Array]]


class TokenInputs(NamedTuple):
  """What a Transformer explainer needs to run the model on its inputs dict."""
  args: tuple  # Positional model inputs after the variables.
  valid: jax.Array  # bool[B, T], True on non-padding tokens.
  class_token: bool  # Whether token 0 is [CLS] / a class token.


class ImageTask:
  """Image classifiers: ResNets, ViTs and any ``flax.linen`` module that takes images."""

  name = "image"
  input_keys = ("image",)
  metric_names = image_metrics.SUITE_METRICS
  image_methods = True
  collaboration = True  # The gradient collaboration analysis (of MHEX models) applies.

  def __init__(self, model: nn.Module):
    self.model = model
    self.transformer = isinstance(model, vit_lib.ViT)

  @property
  def token_methods(self) -> bool:
    """A ViT with a class token also takes the Transformer methods (maps on its patch grid)."""
    return self.transformer and bool(self.model.class_token)

  @property
  def token_maps_allowed(self) -> bool:
    """Whether MHEX's token-map options (layers, route, ...) apply: on a ViT's patches."""
    return self.transformer

  @property
  def mhex_map(self) -> str:
    """``explain.equivalent_matrix``'s map for this model: "patches" (ViT) or "features"."""
    return "patches" if self.transformer else "features"

  @property
  def default_plain_method(self) -> str:
    """Without MHEX heads: the method that led the side-by-side tables for the model kind
    (energy pointing game on the ViT; Grad-CAM is the CNN standard)."""
    return "gradient_relevance" if self.token_methods else "grad_cam"

  @property
  def channels(self) -> int:
    """C of the images the model takes (ViT ``num_channels``, ResNet ``input_channels``; a
    model without a channel check takes RGB)."""
    if self.transformer:
      return self.model.num_channels
    return getattr(self.model, "input_channels", None) or 3

  def inputs(self, batch: Mapping[str, Any]):
    """What explainers take from a batch: the images."""
    return batch["image"]

  def model_args(self, batch: Mapping[str, Any]) -> tuple:
    return (batch["image"],)

  def inputs_of_args(self, args: Sequence[Any]):
    """The explainers' form of positional model inputs (``dummy_inputs``)."""
    return args[0]

  def forward(self, variables, inputs, **kwargs) -> jax.Array:
    """Head logits of ``inputs`` (images), eval mode unless ``kwargs`` say otherwise (a user
    model without a ``train`` argument is called without one)."""
    kwargs = {**attribution.eval_mode_kwargs(self.model.apply), **kwargs}
    return self.model.apply(variables, inputs, **kwargs)

  def dummy_inputs(self, data_config: ml_collections.ConfigDict) -> tuple[np.ndarray, ...]:
    """Model inputs of batch size 1 shaped as ``data_config`` describes. Without
    ``data.image_size`` (images kept at the data's own size) the model's own image size, else
    32 px: a CNN's parameters and heads do not depend on the image size."""
    size = data_config.get("image_size") or getattr(self.model, "image_size", None) or 32
    return (np.zeros((1, size, size, self.channels), np.float32),)

  def batch_fields(self, has_masks: bool) -> tuple[str, ...]:
    """The batch keys an evaluation reads."""
    return ("image", "label", "mask") if has_masks else ("image", "label")

  def token_inputs(self, inputs: Mapping[str, jax.Array],
                   mask_special_keys: bool = False) -> TokenInputs:
    """A ViT's ``{"image": images}`` for the Transformer explainers: every token valid but
    the registers, which no head reads (``ViT.scored_tokens``)."""
    del mask_special_keys  # A ViT has no key mask (``explain.transformer``).
    if "image" not in inputs:
      raise ValueError(f"Inputs of {type(self.model).__name__} must be {{'image': images}}; got "
                       f"keys {sorted(inputs)}.")
    images = inputs["image"]
    valid = self.model.scored_tokens(images.shape[0])
    return TokenInputs((images,), valid, bool(self.model.class_token))

  def token_method_inputs(self, inputs: jax.Array) -> dict[str, jax.Array]:
    return {"image": inputs}

  def token_maps(self, token_scores: jax.Array, inputs: jax.Array) -> jax.Array:
    """ViT token scores [B, P + gh·gw] → image maps [B, H, W] in [0, 1] (the P prefix
    tokens dropped, the patch grid resized to the image as MHEX's patch maps are)."""
    grid = vit_lib.tokens_to_grid(token_scores[..., None], self.model.grid_size,
                                  self.model.num_prefix_tokens)[..., 0]
    return normalize_maps(jax.image.resize(grid, (grid.shape[0], *inputs.shape[1:3]),
                                           "bilinear"))

  def check_eval_config(self, eval_config: ml_collections.ConfigDict) -> None:
    del eval_config  # Every image option is checked where its value is used.

  def metrics_fn(self, scorer, eval_config: ml_collections.ConfigDict,
                 data_config: ml_collections.ConfigDict, has_masks: bool) -> MetricsFn:
    """The image suite (``metrics.image.explanation_metrics``) scored by ``scorer``."""
    del data_config

    scorer_forward = ImageTask(scorer).forward

    def metrics_fn(scorer_variables, batch, maps, targets):
      score_fn = lambda x: jax.nn.softmax(scorer_forward(scorer_variables, x)[-1])
      out = image_metrics.explanation_metrics(
          score_fn, batch["image"], maps, targets, batch["mask"] if has_masks else None,
          baseline=eval_config.removal_baseline, deletion_steps=eval_config.deletion_steps,
          deletion_chunk_size=eval_config.deletion_chunk_size,
          pointing_tolerance=eval_config.pointing_tolerance)
      return out, maps

    return metrics_fn

  def render(self, out_dir, batch: Mapping[str, np.ndarray], maps: dict[str, np.ndarray],
             captions: Sequence[str], data_config: ml_collections.ConfigDict) -> None:
    """``gallery.png``: the inputs, then one overlay column per method (mask outlined)."""
    plotting.save_gallery(out_dir / "gallery.png",
                          plotting.to_display(batch["image"], data_config.mean, data_config.std),
                          maps, captions, batch.get("mask"))


class TextTask:
  """Text classifiers: ``models.BERT`` (BERT, MiniLM and the other encoders it imports)."""

  name = "text"
  input_keys = ("input_ids", "attention_mask", "token_type_ids")
  metric_names = text_metrics.SUITE_METRICS
  image_methods = False
  token_methods = True
  collaboration = False
  token_maps_allowed = True
  mhex_map = "tokens"
  default_plain_method = "grad_sam"  # It led AOPC on AG News.

  def __init__(self, model: nn.Module):
    self.model = model
    self._tokenizers = {}

  def tokenizer(self, data_config: ml_collections.ConfigDict):
    """The data's tokenizer (``data.tokenizer_dir``), loaded once per task."""
    path = data_config.tokenizer_dir
    if path not in self._tokenizers:
      self._tokenizers[path] = text_data.load_tokenizer(path)
    return self._tokenizers[path]

  def inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    """What explainers take from a batch: the token arrays, special-token mask included."""
    return {k: batch[k] for k in self.input_keys + ("special_tokens_mask",)}

  def model_args(self, batch: Mapping[str, Any]) -> tuple:
    return tuple(batch[k] for k in self.input_keys)

  def inputs_of_args(self, args: Sequence[Any]) -> dict[str, Any]:
    """The explainers' form of positional model inputs (``dummy_inputs``)."""
    return dict(zip(self.input_keys, args))

  def forward(self, variables, inputs: Mapping[str, Any], **kwargs) -> jax.Array:
    """Head logits of the token arrays ``inputs``, eval mode unless ``kwargs`` say otherwise."""
    kwargs = {"train": False, **kwargs}
    return self.model.apply(variables, inputs["input_ids"], inputs["attention_mask"],
                            inputs.get("token_type_ids"), **kwargs)

  def dummy_inputs(self, data_config: ml_collections.ConfigDict) -> tuple[np.ndarray, ...]:
    length = data_config.max_len
    if length == text_data.AUTO:  # Chosen when the texts are read; any length builds the model.
      length = text_data.MAX_LEN_MULTIPLE
    return (np.zeros((1, length), np.int32), np.ones((1, length), np.int32),
            np.zeros((1, length), np.int32))

  def batch_fields(self, has_masks: bool) -> tuple[str, ...]:
    del has_masks
    return self.input_keys + ("special_tokens_mask", "label")

  def token_inputs(self, inputs: Mapping[str, jax.Array],
                   mask_special_keys: bool = False) -> TokenInputs:
    """The BERT call of a token dict; with ``mask_special_keys`` no query attends to [CLS],
    [SEP] or padding (an example of special tokens only keeps its plain mask)."""
    missing = {"input_ids", "attention_mask"} - set(inputs)
    if missing:
      raise ValueError(f"Text inputs need {sorted(missing)}; got keys {sorted(inputs)}.")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    valid = mask > 0
    key_mask = mask
    if mask_special_keys:
      if "special_tokens_mask" not in inputs:
        raise ValueError("mask_special_keys=True needs inputs['special_tokens_mask'] (bool[B, T],"
                         " True on [CLS]/[SEP]/[PAD]); add it or pass mask_special_keys=False.")
      keys = valid & ~inputs["special_tokens_mask"].astype(bool)
      keys = jnp.where(jnp.any(keys, axis=1, keepdims=True), keys, valid)
      key_mask = keys.astype(mask.dtype)
    return TokenInputs((ids, key_mask, inputs.get("token_type_ids")), valid, True)

  def token_method_inputs(self, inputs: Mapping[str, jax.Array]) -> Mapping[str, jax.Array]:
    return inputs

  def token_maps(self, token_scores: jax.Array, inputs) -> jax.Array:
    """Token scores as the methods sign them (text metrics only rank them)."""
    del inputs
    return token_scores

  def check_eval_config(self, eval_config: ml_collections.ConfigDict) -> None:
    """``eval.aopc_modes``, which only text metrics read (``config_lib.validate`` checks the
    other choices)."""
    aopc_modes(eval_config)

  def metrics_fn(self, scorer, eval_config: ml_collections.ConfigDict,
                 data_config: ml_collections.ConfigDict, has_masks: bool) -> MetricsFn:
    """The text suite (``metrics.text.explanation_metrics``) scored by ``scorer``; the maps
    shown are min-max normalised over the removable tokens."""
    del has_masks
    modes = aopc_modes(eval_config)
    special = text_data.special_ids(self.tokenizer(data_config))

    def metrics_fn(scorer_variables, batch, scores, targets):
      ids, attention, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
      removable = removable_tokens(batch)

      def score_fn(input_ids, attention_mask=attention, token_type_ids=types):
        return jax.nn.softmax(scorer.apply(scorer_variables, input_ids, attention_mask,
                                           token_type_ids, train=False)[-1])

      out = text_metrics.explanation_metrics(
          score_fn, ids, scores, removable, targets, attention_mask=attention,
          token_type_ids=types, mask_id=special["mask"], pad_id=special["pad"],
          replace_id=special[eval_config.replacement_token], modes=modes,
          absolute=eval_config.aopc_absolute)
      return out, normalize_maps(scores, removable)

    return metrics_fn

  def render(self, out_dir, batch: Mapping[str, np.ndarray], maps: dict[str, np.ndarray],
             captions: Sequence[str], data_config: ml_collections.ConfigDict) -> None:
    """``tokens.html``: per example, one shaded line of its tokens per method."""
    tokenizer = self.tokenizer(data_config)
    lengths = batch["attention_mask"].sum(-1)
    tokens = [tokenizer.convert_ids_to_tokens(ids[:length].tolist())
              for ids, length in zip(batch["input_ids"], lengths)]
    files.write_text(out_dir / "tokens.html", plotting.token_html(tokens, maps, captions))


Task = ImageTask | TextTask


def task_of(model: nn.Module) -> Task:
  """The task of ``model``: text for ``models.BERT``, images for every other module."""
  if isinstance(model, bert_lib.BERT):
    return TextTask(model)
  return ImageTask(model)


def aopc_modes(eval_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """``eval.aopc_modes`` as a tuple, or a ConfigError naming the value and the choices."""
  modes = tuple(m.strip() for m in eval_config.aopc_modes.split(",") if m.strip())
  if not modes or set(modes) - set(text_metrics.AOPC_MODES):
    raise ConfigError(f"eval.aopc_modes={eval_config.aopc_modes!r}; use 'deletion', "
                      "'replacement' or 'deletion,replacement'.")
  return modes


def removable_tokens(batch: Mapping[str, Any]) -> Any:
  """The tokens text metrics may remove: attended, not special."""
  return (batch["attention_mask"] > 0) & ~batch["special_tokens_mask"].astype(bool)


def head_count(model: nn.Module, data_config: ml_collections.ConfigDict) -> int:
  """How many heads ``model`` has (its output's leading axis), from shapes alone: nothing is
  read, initialised or compiled."""
  task = task_of(model)
  dummy = task.dummy_inputs(data_config)
  heads = jax.eval_shape(lambda: task.forward(model.init(jax.random.key(0), *dummy),
                                              task.inputs_of_args(dummy)))
  return len(heads)

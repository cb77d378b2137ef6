"""Flax models: the MHEX module (``mhex.py``) and the backbones that carry it."""

import jax.numpy as jnp
import ml_collections

from mhex_jax.errors import ConfigError
from mhex_jax.models.mhex import MHEX
from mhex_jax.models.resnet import ResNet
from mhex_jax.models.bert import BERT
from mhex_jax.models.vit import ViT

_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(config: ml_collections.ConfigDict):
  """The model named by ``config.name`` (``resnet18``, ``resnet34``, ``resnet50``, ``bert``,
  ``vit``)."""
  if config.dtype not in _DTYPES:
    raise ConfigError(f"Unknown model.dtype={config.dtype!r}; use one of {sorted(_DTYPES)}.")
  if config.name in _RESNETS:
    return ResNet(num_classes=config.num_classes, depth=_RESNETS[config.name],
                  width=config.width, stem=config.stem,
                  last_stage_stride=config.last_stage_stride, mhex=config.mhex,
                  mhex_stages=None if config.mhex_stages is None else tuple(config.mhex_stages),
                  gate_init=config.gate_init, gate_placement=config.gate_placement,
                  saliency_features=config.get("saliency_features") or "sum",
                  input_channels=config.get("input_channels"), dtype=_DTYPES[config.dtype])
  if config.name in _TRANSFORMERS:
    return _create_transformer(config)
  raise ConfigError(f"Unknown model.name={config.name!r}; use one of "
                    f"{sorted(_RESNETS) + sorted(_TRANSFORMERS)}.")


_TRANSFORMERS = {"bert": BERT, "vit": ViT}


def _create_transformer(config: ml_collections.ConfigDict):
  """BERT or ViT. The architecture comes from ``config.hf_checkpoint``'s config.json when set
  (load its weights with ``mhex_jax.weights``), else from config fields named like the model's
  attributes (defaults: BERT-base, ViT-B/16). MHEX options and dropout always come from the
  config; the common config's gate_placement is the ResNet's "shortcut", so ViT configs
  should set "branch" (the ViT's measured default, see ``models/vit.py``)."""
  from mhex_jax import weights  # Imports the models: deferred to avoid an import cycle.
  model_cls = _TRANSFORMERS[config.name]
  if config.get("mhex_stages") is not None:
    raise ConfigError(f"model.mhex_stages is a ResNet option; {config.name} puts MHEX in every "
                      "layer (set it to None).")
  fields = set(model_cls.__dataclass_fields__) - {"parent", "name", "num_classes", "dtype"}
  # Unset (None) fields keep the model's defaults.
  kwargs = {k: config[k] for k in sorted(fields) if config.get(k) is not None}
  if config.get("hf_checkpoint"):
    read = weights.bert_config_from_hf if config.name == "bert" else weights.vit_config_from_hf
    architecture = read(config.hf_checkpoint)
    kwargs = {**architecture, **{k: v for k, v in kwargs.items()
                                 if k not in weights.hf_import.ARCHITECTURE}}
  return model_cls(num_classes=config.num_classes, dtype=_DTYPES[config.dtype], **kwargs)

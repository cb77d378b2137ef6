"""The model a config describes, built once: ``create_model(config)``, then ``load_pretrained``.

Layering: ``models`` (the Flax modules, built from constructor arguments) ← ``weights``
(Hugging Face checkpoints into a built model's parameters) ← this module ← train/eval/explain.
"""

import pathlib
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mhex_jax import models
from mhex_jax import weights
from mhex_jax import workdir as workdir_lib
from mhex_jax.errors import ConfigError


_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}
MODELS = {**{name: models.ResNet for name in _RESNETS}, "bert": models.BERT, "vit": models.ViT}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_arguments(model_name: str) -> list[str]:
  """The constructor arguments ``config.model`` may hold for ``model_name`` (ResNet's depth
  comes from the name)."""
  if model_name not in MODELS:
    raise ConfigError(f"Unknown model_name={model_name!r}; use one of {sorted(MODELS)}.")
  fields = set(MODELS[model_name].__dataclass_fields__) - {"parent", "name"}
  return sorted(fields - {"depth"} if model_name in _RESNETS else fields)


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """``config.model_name``'s model with ``config.model`` as its constructor arguments (dtype
  as a name, "float32" or "bfloat16"); any other key is a ConfigError naming it and the
  allowed ones.

  With ``config.model_init`` (a Hugging Face BERT/ViT checkpoint directory, or its Hub id:
  ``pretrained_path``) its config.json supplies the architecture, dropout rates and init range
  (a workdir train.py wrote: its model's architecture);
  ``config.model`` may override the latter, and may repeat architecture fields only with the
  checkpoint's values. A ResNet's architecture is its name (``load_pretrained`` checks the
  file's depth against it).
  """
  model_name = config.model_name
  allowed = model_arguments(model_name)  # An unknown name first.
  arguments = dict(config.model)
  if config.get("model_init") and model_name not in _RESNETS:  # A ResNet's is its name.
    from_checkpoint = _pretrained_arguments(config)
    clash = sorted(k for k in set(arguments) & weights.ARCHITECTURE & set(from_checkpoint)
                   if arguments[k] != from_checkpoint[k])
    if clash:
      raise ConfigError(
          f"{config.model_init}'s config.json fixes the architecture, but the config asks for "
          + ", ".join(f"model.{k}={arguments[k]!r} (checkpoint: {from_checkpoint[k]!r})"
                      for k in clash)
          + "; set these fields to the checkpoint's values or leave model_init=''.")
    arguments = {**from_checkpoint, **arguments}
  stray = sorted(set(arguments) - set(allowed))
  if stray:
    raise ConfigError(f"model.{stray[0]} is not an argument of {model_name} "
                      f"({MODELS[model_name].__name__}): remove "
                      f"{', '.join('model.' + k for k in stray)}; its arguments are "
                      f"{', '.join(allowed)}.")
  if "dtype" in arguments:
    if arguments["dtype"] not in _DTYPES:
      raise ConfigError(f"Unknown model.dtype={arguments['dtype']!r}; use one of "
                        f"{sorted(_DTYPES)}.")
    arguments["dtype"] = _DTYPES[arguments["dtype"]]
  if model_name in _RESNETS:
    if arguments.get("mhex_stages") is not None:
      arguments["mhex_stages"] = tuple(arguments["mhex_stages"])
    return models.ResNet(depth=_RESNETS[model_name], **arguments)
  return MODELS[model_name](**arguments)


def max_tokens(model: nn.Module) -> Optional[int]:
  """The most tokens per text a text model reads (RoBERTa's positions start after its padding
  id); None for an image model."""
  positions = getattr(model, "max_positions", None)
  if positions is None:
    return None
  pad_id = getattr(model, "position_pad_id", None)
  return positions - (0 if pad_id is None else pad_id + 1)


def _pretrained_arguments(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The constructor arguments ``config.model_init`` fixes: a checkpoint's config.json (its
  architecture, dropout rates, init range) or a workdir's model (its architecture)."""
  if weights.is_workdir(config.model_init):
    weights.check_workdir(config.model_init, config.model_name)
    saved = create_model(workdir_lib.load_config(config.model_init))
    return {k: tuple(v) if isinstance(v, list) else v
            for k, v in ((k, getattr(saved, k)) for k in weights.ARCHITECTURE
                         if hasattr(saved, k))}
  read = weights.ARCHITECTURE_READERS.get(config.model_name)
  if read is None:
    raise ConfigError(f"model_init is set but model_name={config.model_name!r} has no "
                      f"Hugging Face import; use one of {sorted(weights.ARCHITECTURE_READERS)} "
                      "or set model_init=''.")
  return read(pretrained_path(config))


def pretrained_path(config: ml_collections.ConfigDict) -> pathlib.Path:
  """The local path of ``config.model_init``: the path itself, or a Hugging Face Hub id's
  snapshot, downloaded into huggingface_hub's cache the first time (``weights.hub``); once per
  process, so the model, the check and the load all read the same snapshot."""
  return weights.checkpoint_path(config.model_init, field="model_init")


def check_pretrained(config: ml_collections.ConfigDict, model: nn.Module) -> None:
  """What ``load_pretrained`` would refuse that can be told before any data is read (a ResNet's
  shape, the weights' existence, a Hub id's download; a BERT/ViT's directory was read by
  ``create_model``)."""
  if not config.get("model_init"):
    return
  if weights.is_workdir(config.model_init):
    weights.check_workdir(config.model_init, config.model_name)
  elif config.model_name in _RESNETS:
    weights.check_resnet_init(model, pretrained_path(config))


def load_pretrained(config: ml_collections.ConfigDict, model: nn.Module,
                    variables: dict[str, Any]) -> dict[str, Any]:
  """``variables`` (the freshly initialised ``{"params", "batch_stats"}`` of ``model``) with
  those of ``config.model_init`` imported: a workdir train.py wrote (``weights.workdir_import``:
  its heads start fresh where the class count differs), a Hugging Face BERT/ViT/ResNet
  directory or Hub id, or for a ResNet a torchvision/timm state dict (``.safetensors``, or ``.pth`` read without
  unpickling code). MHEX gates and heads (and a new classifier with
  ``config.model_load.new_head``) keep their fresh values."""
  options = dict(config.get("model_load", {}))
  if weights.is_workdir(config.model_init):
    loaded, _ = weights.load_workdir_variables(config.model_name, variables, config.model_init,
                                               **options)
    return loaded
  path = pretrained_path(config)
  if config.model_name in _RESNETS:
    params, batch_stats, _ = weights.load_resnet_params(
        model, variables["params"], variables.get("batch_stats", {}), path, **options)
    return {"params": params, "batch_stats": batch_stats}
  return {**variables, "params": weights.load(model, variables["params"], path, **options)}


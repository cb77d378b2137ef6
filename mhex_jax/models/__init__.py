"""Flax models: the MHEX module (``mhex.py``) and the backbones that carry it."""

from typing import Any, Mapping

import jax.numpy as jnp

from mhex_jax.errors import ConfigError
from mhex_jax.models.mhex import MHEX
from mhex_jax.models.resnet import ResNet
from mhex_jax.models.bert import BERT
from mhex_jax.models.vit import ViT

_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}
MODELS = {**{name: ResNet for name in _RESNETS}, "bert": BERT, "vit": ViT}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_arguments(model_name: str) -> list[str]:
  """The constructor arguments ``config.model`` may hold for ``model_name`` (ResNet's depth
  comes from the name)."""
  if model_name not in MODELS:
    raise ConfigError(f"Unknown model_name={model_name!r}; use one of {sorted(MODELS)}.")
  fields = set(MODELS[model_name].__dataclass_fields__) - {"parent", "name"}
  return sorted(fields - {"depth"} if model_name in _RESNETS else fields)


def create_model(model_name: str, arguments: Mapping[str, Any]):
  """``MODELS[model_name](**arguments)``: ``arguments`` are the class's constructor arguments
  (``config.model``), dtype as a name ("float32", "bfloat16"). Any other key is a ConfigError
  naming it and the allowed ones."""
  allowed = model_arguments(model_name)
  stray = sorted(set(arguments) - set(allowed))
  if stray:
    raise ConfigError(f"model.{stray[0]} is not an argument of {model_name} "
                      f"({MODELS[model_name].__name__}): remove "
                      f"{', '.join('model.' + k for k in stray)}; its arguments are "
                      f"{', '.join(allowed)}.")
  kwargs = dict(arguments)
  if "dtype" in kwargs:
    if kwargs["dtype"] not in _DTYPES:
      raise ConfigError(f"Unknown model.dtype={kwargs['dtype']!r}; use one of "
                        f"{sorted(_DTYPES)}.")
    kwargs["dtype"] = _DTYPES[kwargs["dtype"]]
  if model_name in _RESNETS:
    if kwargs.get("mhex_stages") is not None:
      kwargs["mhex_stages"] = tuple(kwargs["mhex_stages"])
    return ResNet(depth=_RESNETS[model_name], **kwargs)
  return MODELS[model_name](**kwargs)

"""Flax models: the MHEX module (``mhex.py``) and the backbones that carry it."""

import jax.numpy as jnp
import ml_collections

from mhex_jax.models.mhex import MHEX
from mhex_jax.models.resnet import ResNet

_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(config: ml_collections.ConfigDict):
  """The model named by ``config.name`` (``resnet18``, ``resnet34``, ``resnet50``)."""
  if config.dtype not in _DTYPES:
    raise ValueError(f"Unknown model.dtype={config.dtype!r}; use one of {sorted(_DTYPES)}.")
  if config.name in _RESNETS:
    return ResNet(num_classes=config.num_classes, depth=_RESNETS[config.name],
                  width=config.width, stem=config.stem,
                  last_stage_stride=config.last_stage_stride, mhex=config.mhex,
                  mhex_stages=None if config.mhex_stages is None else tuple(config.mhex_stages),
                  gate_init=config.gate_init, gate_placement=config.gate_placement,
                  saliency_features=config.saliency_features,
                  input_channels=config.get("input_channels"), dtype=_DTYPES[config.dtype])
  raise ValueError(f"Unknown model.name={config.name!r}; use one of {sorted(_RESNETS)}.")

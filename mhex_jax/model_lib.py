"""The model a config describes, built once: ``create_model(config)``, then ``load_pretrained``.

Layering: ``models`` (the Flax modules, built from constructor arguments) ← ``weights``
(Hugging Face checkpoints into a built model's parameters) ← this module ← train/eval/explain.
"""

from typing import Any

import flax.linen as nn
import ml_collections

from mhex_jax import models
from mhex_jax import weights
from mhex_jax.errors import ConfigError


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """``config.model_name``'s model with ``config.model`` as its constructor arguments.

  With ``config.model_init`` (a Hugging Face BERT/ViT checkpoint directory) its config.json
  supplies the architecture, dropout rates and init range; ``config.model`` may override the
  latter, and may repeat architecture fields only with the checkpoint's values.
  """
  arguments = dict(config.model)
  if config.get("model_init"):
    models.model_arguments(config.model_name)  # An unknown name first.
    read = weights.ARCHITECTURE_READERS.get(config.model_name)
    if read is None:
      raise ConfigError(f"model_init is set but model_name={config.model_name!r} has no "
                        f"Hugging Face import; use one of {sorted(weights.ARCHITECTURE_READERS)} "
                        "or set model_init=''.")
    from_checkpoint = read(config.model_init)
    clash = sorted(k for k in set(arguments) & weights.ARCHITECTURE & set(from_checkpoint)
                   if arguments[k] != from_checkpoint[k])
    if clash:
      raise ConfigError(
          f"{config.model_init}'s config.json fixes the architecture, but the config asks for "
          + ", ".join(f"model.{k}={arguments[k]!r} (checkpoint: {from_checkpoint[k]!r})"
                      for k in clash)
          + "; set these fields to the checkpoint's values or leave model_init=''.")
    arguments = {**from_checkpoint, **arguments}
  return models.create_model(config.model_name, arguments)


def load_pretrained(config: ml_collections.ConfigDict, model: nn.Module, params: Any) -> Any:
  """``params`` (the freshly initialised parameters of ``model``) with those of
  ``config.model_init`` imported; MHEX gates and heads (and a new classifier with
  ``config.model_load.new_head``) keep their fresh values."""
  return weights.load(model, params, config.model_init, **config.get("model_load", {}))


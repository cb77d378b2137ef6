"""What a Hugging Face classifier checkpoint's ``config.json`` says before any weight is read:
the mhex_jax model that holds it (``model_name``), its classes (``class_names``, from
``id2label``) and whether it has a classification head (``check_classifier``).

``MODEL_NAMES`` is the one table from ``model_type`` to ``model_name`` (``model_lib.MODELS``):
a model_type the importers read gets a line here (a model_type that is itself the name of a
model with an ``ARCHITECTURE_READERS`` entry needs none).
"""

import os
import pathlib
from typing import Any, Callable

from mhex_jax.errors import WeightsError
from mhex_jax.weights import hf_import
from mhex_jax.weights import resnet_import


def _resnet_name(config: dict[str, Any], path: pathlib.Path) -> str:
  """"resnet18", "resnet34" or "resnet50", from the block type and the blocks per stage."""
  kind, depths = config.get("layer_type", "bottleneck"), config.get("depths", [3, 4, 6, 3])
  depth = resnet_import.DEPTHS.get((kind, tuple(depths) if isinstance(depths, list) else ()))
  if depth is None:
    raise WeightsError(f"{path} describes a ResNet of {kind} blocks, {depths} per stage; only "
                       "ResNet-18 (basic, [2, 2, 2, 2]), -34 (basic, [3, 4, 6, 3]) and -50 "
                       "(bottleneck, [3, 4, 6, 3]) can be imported.")
  return f"resnet{depth}"


_same = lambda name: lambda config, path: name
# config.json's model_type → (config, its path) → the model_name that builds the checkpoint.
MODEL_NAMES: dict[str, Callable[[dict[str, Any], pathlib.Path], str]] = {
    "bert": _same("bert"), "roberta": _same("bert"), "xlm-roberta": _same("bert"),
    "distilbert": _same("bert"), "electra": _same("bert"),
    "vit": _same("vit"), "deit": _same("vit"), "dinov2": _same("vit"),
    "dinov2_with_registers": _same("vit"),
    "resnet": _resnet_name,
}
# Classification heads, by the class names transformers saves in config.json's "architectures".
_CLASSIFIER_ENDINGS = ("ForImageClassification", "ForSequenceClassification",
                       "ForImageClassificationWithTeacher")


def config_file(checkpoint_dir: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(checkpoint_dir) / hf_import.CONFIG_FILE


def read(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
  """``config.json`` of a checkpoint directory, whatever its model_type."""
  directory = pathlib.Path(checkpoint_dir)
  if not directory.is_dir():
    problem = "is a file, not a directory" if directory.exists() else "does not exist"
    raise FileNotFoundError(f"Hugging Face checkpoint directory {directory} {problem}; pass a "
                            "directory written by save_pretrained (config.json, "
                            "model.safetensors, its preprocessor or tokenizer files).")
  path = config_file(directory)
  if not path.is_file():
    raise FileNotFoundError(f"No {hf_import.CONFIG_FILE} in {directory}: expected a directory "
                            "written by save_pretrained (model.save_pretrained(dir)).")
  config = hf_import.read_json(path)
  return config


def model_name(config: dict[str, Any], path: pathlib.Path) -> str:
  """The ``model_name`` of the model that imports the checkpoint whose config.json (at
  ``path``) is ``config``."""
  model_type = config.get("model_type")
  if model_type in MODEL_NAMES:
    return MODEL_NAMES[model_type](config, path)
  if model_type in hf_import.ARCHITECTURE_READERS:
    return model_type
  known = sorted(set(MODEL_NAMES) | set(hf_import.ARCHITECTURE_READERS))
  raise WeightsError(f"{path} describes model_type={model_type!r}, which mhex_jax cannot "
                     f"import; use a checkpoint of model_type one of {known}.")


def check_classifier(config: dict[str, Any], path: pathlib.Path) -> None:
  """Raises a WeightsError when config.json's ``architectures`` name no classifier (a base or
  pre-training model: nothing to explain a class of)."""
  architectures = config.get("architectures") or []
  if architectures and not any(str(a).endswith(_CLASSIFIER_ENDINGS) for a in architectures):
    raise WeightsError(f"{path} describes {', '.join(map(str, architectures))}, which has no "
                       "classification head to explain; use a classifier checkpoint (e.g. "
                       "...ForImageClassification or ...ForSequenceClassification), or fine-tune "
                       "this one first: python train.py --config=... --config.model_init=DIR.")


def class_names(config: dict[str, Any], path: pathlib.Path) -> list[str]:
  """The class names in class order, from ``id2label``."""
  id2label = config.get("id2label")
  if not isinstance(id2label, dict) or not id2label:
    raise WeightsError(f"{path} has no id2label (class number → name); add one, e.g. "
                       "\"id2label\": {\"0\": \"cat\", \"1\": \"dog\"}.")
  try:
    labels = {int(k): str(v) for k, v in id2label.items()}
  except ValueError:
    labels = {}
  if sorted(labels) != list(range(len(id2label))) or len(labels) < 2:
    raise WeightsError(f"{path}'s id2label {id2label} must number two or more classes "
                       "0, 1, ..., K-1.")
  return [labels[k] for k in range(len(labels))]

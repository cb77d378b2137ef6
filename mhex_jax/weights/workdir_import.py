"""A trained mhex_jax workdir as the starting point of another run (the method's MedMNIST step:
an MHEX-ResNet fine-tuned on ImageNet, then trained on a MedMNIST subset).

Every variable of the new model whose path and shape the workdir's latest checkpoint also has is
taken from it: the backbone, the batch statistics and the MHEX gates W. What starts fresh:

* the MHEX heads P (``.../mhex/head/kernel``) and a plain model's classifier when the class
  count differs (their shapes [C, K] then differ), or always with ``new_head=True``;
* MHEX gates and heads the workdir's model did not have (a plain workdir into an MHEX model),
  and a classifier it did not have (an MHEX workdir into a plain model).

Any other difference (another architecture, width or depth) is an error naming the arrays, as is
a workdir of another ``model_name``; what the checkpoint holds that the model does not use (a
plain classifier when the new model is MHEX) is listed in the report and the log.
"""

from typing import Any

from absl import logging
import flax
import jax.numpy as jnp

from mhex_jax import checkpoints
from mhex_jax import files
from mhex_jax import workdir as workdir_lib
from mhex_jax.errors import WeightsError
from mhex_jax.models import mhex as mhex_lib

# Top-level modules that are a plain model's classifier.
CLASSIFIERS = ("classifier", "fc")


def is_workdir(path: Any) -> bool:
  """Whether ``path`` is a directory train.py wrote (its config.json and a checkpoint step)."""
  return bool(path) and workdir_lib.has_config(str(path)) and checkpoints.has_steps(path)


def check_workdir(path: Any, model_name: str) -> None:
  """What can be checked before any data is read: the workdir trained a ``model_name``."""
  saved = workdir_lib.load_config(str(path)).get("model_name")
  if saved != model_name:
    raise WeightsError(f"model_init={path} is a workdir of a {saved!r} model, not "
                       f"{model_name!r}; start from a {model_name} workdir or set "
                       f"model_name={saved!r}.")


def _is_head(var_path: tuple[str, ...]) -> bool:
  """An MHEX head P, or any array of a plain model's classifier (a dense layer, or BERT-family
  heads with dense + out_proj inside)."""
  return var_path[-2:] == mhex_lib.HEAD_KERNEL or var_path[0] in CLASSIFIERS


def _is_mhex(var_path: tuple[str, ...]) -> bool:
  return "mhex" in var_path


def load_workdir_variables(model_name: str, init_variables: dict[str, Any], path: Any, *,
                           new_head: bool = False) -> tuple[dict[str, Any], dict[str, list[str]]]:
  """``init_variables`` (the new model's freshly initialised "params" and "batch_stats"; other
  collections pass through) with the matching arrays of workdir ``path``'s latest intact checkpoint in place.

  Returns:
    (variables, report): report {"loaded", "fresh", "unused"} lists variable paths
    ("params/block_00/mhex/gate/kernel").
  """
  check_workdir(path, model_name)
  saved = checkpoints.restore_saved_variables(path)
  source = {c: flax.traverse_util.flatten_dict(saved.get(c, {})) for c in ("params",
                                                                            "batch_stats")}
  loaded, fresh, misshaped, missing = [], [], [], []
  out = dict(init_variables)
  for collection in source:
    tree = init_variables.get(collection, {})
    flat = flax.traverse_util.flatten_dict(tree)
    for var_path, leaf in flat.items():
      name = "/".join((collection,) + var_path)
      value = source.get(collection, {}).get(var_path)
      head = _is_head(var_path)
      if value is not None and value.shape == leaf.shape and not (new_head and head):
        flat[var_path] = jnp.asarray(value, leaf.dtype)
        loaded.append(name)
      elif head or (value is None and _is_mhex(var_path)):
        fresh.append(name)
      elif value is None:
        missing.append(name)
      else:
        misshaped.append(f"{name}: workdir {tuple(value.shape)}, model {tuple(leaf.shape)}")
    out[collection] = flax.traverse_util.unflatten_dict(flat) if flat else tree
  used = set(loaded)
  unused = sorted(n for n in ("/".join((c,) + p) for c, tree in source.items() for p in tree)
                  if n not in used)
  if missing or misshaped:
    lines = [f"Cannot start {model_name} from the workdir {files.workdir_path(path)}: its model "
             "differs beyond the heads."]
    if missing:
      lines.append(f"  missing ({len(missing)}): " + "; ".join(missing[:8]))
    if misshaped:
      lines.append(f"  mis-shaped ({len(misshaped)}): " + "; ".join(misshaped[:8]))
    lines.append("Build the model as the workdir's config.json does (only num_classes and the "
                 "MHEX option may differ).")
    raise WeightsError("\n".join(lines))
  report = {"loaded": sorted(loaded), "fresh": sorted(fresh), "unused": unused}
  logging.info("Started from the workdir %s: loaded %d arrays, kept %d fresh (%s), left %d "
               "unused (%s).", path, len(loaded), len(fresh), ", ".join(report["fresh"]) or
               "none", len(unused), ", ".join(unused) or "none")
  return out, report

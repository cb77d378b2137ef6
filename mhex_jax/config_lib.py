"""Defaults shared by every config file (``configs/``); experiment configs override what differs.

The config files import only this module, so they load by path from a checkout or from an
installed package alike.
"""

import difflib
import math
from typing import Optional, Sequence

import ml_collections

from mhex_jax.errors import ConfigError

placeholder = ml_collections.config_dict.placeholder


def check_arg(arg, allowed: tuple) -> None:
  """Rejects a config argument (``--config=FILE:ARG``) the config does not know."""
  if arg not in (None, "", *allowed):
    raise ConfigError(f"Unknown config argument {arg!r}; this config takes "
                      f"{' or '.join(repr(a) for a in allowed) or 'none'} (e.g. "
                      f"--config=FILE:{allowed[0] if allowed else ''}).")


# (field, test, what it must be): checked by ``validate`` before any data is read.
_POSITIVE_INTS = ("train.batch_size", "train.num_epochs", "train.log_every_steps",
                  "train.checkpoint_every_steps", "train.keep_checkpoints", "train.min_steps",
                  "eval.batch_size",
                  "eval.num_explain", "eval.deletion_steps", "eval.deletion_chunk_size",
                  "model.num_classes", "model.input_channels", "model.num_channels")
_NON_NEGATIVE = ("train.warmup_epochs", "train.end_learning_rate", "train.weight_decay",
                 "train.momentum", "eval.first_example", "eval.num_gallery",
                 "eval.collaboration_examples", "eval.pointing_tolerance", "data.num_train", "data.num_eval")
_UNIT_INTERVAL = ("eval.mhex.alpha", "train.label_smoothing")
# Fields with a fixed set of values (the modules that read them accept the same).
_CHOICES = {"model_name": ("resnet18", "resnet34", "resnet50", "bert", "vit"),
            "train.optimizer": ("sgd", "adamw"), "train.schedule": ("cosine", "constant"),
            "train.resume": ("check", "force"), "train.keep_best": ("val_accuracy",),
            "eval.targets": ("predicted", "labels"),
            "eval.replacement_token": ("pad", "mask"),
            "data.name": ("synthetic", "medmnist", "imagenet", "text", "folder"),
            "data.intensity": ("full_range", "min_max", "window"),
            "model.gate_init": ("random", "identity"),
            "model.gate_placement": ("shortcut", "branch", "sum"),
            "model.dtype": ("float32", "bfloat16"),
            "eval.mhex.route": ("none", "attention", "flow"),
            "eval.mhex.map": ("cam", "flow", "split"), "eval.mhex.flow_rows": ("layer", "final")}


def _get(config: ml_collections.ConfigDict, field: str):
  value = config
  for part in field.split("."):
    if not isinstance(value, (ml_collections.ConfigDict, dict)) or part not in value:
      return None
    value = value[part]
  return value


def _floats(tree, prefix=""):
  """(field, value) of every number in the config, nested fields included."""
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _floats(value, name + ".")
    elif isinstance(value, (tuple, list)):
      for i, item in enumerate(value):
        if isinstance(item, float):
          yield f"{name}[{i}]", item
    elif isinstance(value, float):
      yield name, value


def validate(config: ml_collections.ConfigDict, num_devices: Optional[int] = None) -> None:
  """Checks the whole config before any data is read or anything compiles.

  Raises a ConfigError naming every bad field, its value and what it must be: non-finite
  numbers, sizes / intervals / epochs that must be positive integers, ranges, and (given the
  data-parallel ``num_devices``) batch sizes that the devices cannot split evenly.
  """
  problems = [f"{name}={value} must be finite" for name, value in _floats(config)
              if not math.isfinite(value)]
  for name in _POSITIVE_INTS:
    value = _get(config, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
      problems.append(f"{name}={value!r} must be a positive integer")
  for name in _NON_NEGATIVE:
    value = _get(config, name)
    if isinstance(value, (int, float)) and value < 0:
      problems.append(f"{name}={value!r} must be >= 0")
  for name in _UNIT_INTERVAL:
    value = _get(config, name)
    if isinstance(value, (int, float)) and math.isfinite(value) and not 0 <= value <= 1:
      problems.append(f"{name}={value!r} must be in [0, 1]")
  for name, allowed in _CHOICES.items():
    value = _get(config, name)
    if value is not None and value not in allowed:
      near = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
      problems.append(f"{name}={value!r} must be one of {', '.join(map(repr, allowed))}"
                      + (f" (did you mean {near[0]!r}?)" if near else ""))
  learning_rate = _get(config, "train.learning_rate")
  if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
    problems.append(f"train.learning_rate={learning_rate!r} must be > 0")
  end = _get(config, "train.end_learning_rate")
  if (isinstance(learning_rate, (int, float)) and isinstance(end, (int, float))
      and end > learning_rate):
    problems.append(f"train.end_learning_rate={end!r} must be at most train.learning_rate="
                    f"{learning_rate!r} (the cosine decays to it)")
  max_len = _get(config, "data.max_len")
  if max_len is not None and max_len != "auto" and (isinstance(max_len, bool) or not isinstance(
      max_len, int) or max_len < 1):
    problems.append(f"data.max_len={max_len!r} must be a positive integer or 'auto'")
  val_fraction = _get(config, "data.val_fraction")
  if isinstance(val_fraction, (int, float)) and not 0 <= val_fraction < 1:
    problems.append(f"data.val_fraction={val_fraction!r} must be in [0, 1)")
  image_size = _get(config, "data.image_size")
  if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
    problems.append(f"data.image_size={image_size!r} must be a positive integer")
  if num_devices:
    for name in ("train.batch_size", "eval.batch_size"):
      value = _get(config, name)
      if isinstance(value, int) and value > 0 and value % num_devices:
        problems.append(f"{name}={value} must be a multiple of the {num_devices} devices "
                        f"(e.g. {max(num_devices, value // num_devices * num_devices)})")
  if problems:
    raise ConfigError("Invalid config: " + "; ".join(problems) + ".")


def unknown_field(config: ml_collections.ConfigDict, field: str) -> Optional[str]:
  """None when ``field`` (dotted, e.g. "train.batch_size") is a field of ``config``; else a
  message naming it, the nearest valid name and the names allowed where it went wrong."""
  node, parts = config, field.split(".")
  for depth, part in enumerate(parts):
    if isinstance(node, (ml_collections.ConfigDict, dict)) and part in node:
      node = node[part]
      continue
    where = ".".join(parts[:depth])
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
      return (f"Config field {where} is a value ({node!r}), not a section: {field} does not "
              "exist.")
    names = sorted(node.keys())
    near = difflib.get_close_matches(part, names, n=1, cutoff=0.5)
    prefix = f"{where}." if where else ""
    hint = f"; did you mean {prefix}{near[0]}?" if near else "."
    return (f"Unknown config field {field}{hint} The fields of "
            f"{where or 'the config'} are: {', '.join(names)}.")
  return None


def _flat(tree, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def differences(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                fields: Sequence[str], ignore: Sequence[str] = ()) -> list[str]:
  """"FIELD: SAVED in the workdir, NEW here" for every field under ``fields`` (section names or
  dotted fields) where two configs differ, except under ``ignore``. A field only one side has
  is compared with None."""
  select = lambda name: (any(name == f or name.startswith(f + ".") for f in fields)
                         and not any(name == f or name.startswith(f + ".") for f in ignore))
  theirs, ours = (_flat(c.to_dict()) for c in (saved, config))
  return [f"{k}: {theirs.get(k)!r} in the workdir, {ours.get(k)!r} here"
          for k in sorted(set(theirs) | set(ours))
          if select(k) and theirs.get(k) != ours.get(k)]


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_devices = placeholder(int)  # None: all devices.

  # The model: config.model_name's class built with config.model as its constructor arguments
  # (``mhex_jax.model_lib.create_model``); each config sets both, from ``resnet_model``,
  # ``bert_model`` or ``vit_model``. model_init: a Hugging Face checkpoint directory (BERT, ViT,
  # ResNet) or, for a ResNet, a torchvision/timm state dict (.safetensors, .pth)
  # whose config.json gives the architecture and whose weights replace the fresh ones;
  # model_load: options of that import (new_head: a fresh classifier for a plain model).
  config.model_name = ""
  config.model = ml_collections.ConfigDict()
  config.model_init = ""
  config.model_load = ml_collections.ConfigDict({"new_head": False})

  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic"
  config.data.path = ""
  config.data.eval_path = ""
  config.data.train_split = "train"
  config.data.eval_split = "val"
  config.data.image_size = 32
  config.data.as_rgb = False
  config.data.num_train = 0
  config.data.num_eval = 0
  config.data.seed = 0
  config.data.mean = (0.5, 0.5, 0.5)
  config.data.std = (0.25, 0.25, 0.25)
  config.data.augment = ""  # Comma-separated: "flip", "crop".
  # How image files' pixels become [0, 1] (mhex_jax.data.image_files): "full_range" of their
  # type (8-bit /255, 16-bit /65535), "min_max" per image, or "window" (DICOM's VOI window).
  config.data.intensity = "full_range"
  # Class names in class order, for reports, galleries and explain.py (synthetic shapes are
  # named by the data; () = "class 0", "class 1", ...).
  config.data.class_names = ()
  config.data.data_dir = ""  # tfds data_dir (ImageNet).
  # Text CSVs: the share of each class of the training rows held out for validation (what
  # train.keep_best selects on; the eval rows stay the same); None or 0: none.
  config.data.val_fraction = placeholder(float)

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 128
  config.train.num_epochs = 10
  config.train.optimizer = "sgd"
  config.train.learning_rate = 0.1
  config.train.schedule = "cosine"
  config.train.end_learning_rate = placeholder(float)  # The cosine's floor; None: 0.
  config.train.warmup_epochs = 1.0
  # At least this many steps: a small training set runs more epochs, the schedule (warmup
  # included) stretched to the longer run. None: num_epochs alone.
  config.train.min_steps = placeholder(int)
  config.train.momentum = 0.9
  config.train.weight_decay = 5e-4
  config.train.label_smoothing = 0.0
  config.train.head_weights = placeholder(tuple)  # None: all 1.
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500
  config.train.keep_checkpoints = 3
  # "val_accuracy": evaluate the validation split (data.val_fraction) after every epoch and
  # keep the best step in WORKDIR/best_checkpoint, which the final accuracy, eval.py and
  # explain.py then use (ties go to the later step). None: the last step.
  config.train.keep_best = placeholder(str)
  # A rerun in a workdir with checkpoints must use the config they were trained with (model,
  # data, schedule); "force" continues with the new values.
  config.train.resume = "check"

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 256
  config.eval.num_explain = 512  # Examples that get saliency maps and metrics,
  config.eval.first_example = 0  # from this eval example on (e.g. a validation range).
  config.eval.num_gallery = 8
  # Also write every explained example's map to eval/per_example.npz (beside its metrics).
  config.eval.save_maps = False
  # MHEX map options (SPEC §3, §4; explain.equivalent_matrix). None takes the default of the
  # map's kind: CNN images keep positive evidence over all blocks (SPEC §3); Transformer token
  # and patch maps are signed, LayerNorm-normalised and routed through the attention (text:
  # first layer, ViT: last layer). layers: indices summed with weight 1, or () for the
  # α-decay over all layers; route: "none", "attention" or "flow" (Transformers; "flow" on
  # ViTs); feature_norm: "none", "centre" or "layer_norm" (Transformers); contrastive: E[c]
  # minus the mean row; map: "cam", "flow" or "split" and flow_rows: "layer" or "final" (ViT
  # patch maps, explain.token_flow).
  config.eval.mhex = ml_collections.ConfigDict({
      "alpha": placeholder(float), "tau_pos": placeholder(float),
      "tau_neg": placeholder(float), "beta_pos": placeholder(float),
      "beta_neg": placeholder(float), "layers": placeholder(tuple),
      "route": placeholder(str), "feature_norm": placeholder(str),
      "contrastive": placeholder(bool), "map": placeholder(str), "flow_rows": placeholder(str)})
  # Named MHEX variants, each scored as one more method: name → options over eval.mhex.
  # eval.methods may name them; "all" includes them.
  config.eval.variants = ml_collections.ConfigDict()
  config.eval.targets = "predicted"  # Or "labels".
  config.eval.removal_baseline = 0.0
  config.eval.pointing_tolerance = 0
  # Explainers compared (mhex_jax.explain.registry): comma-separated names, "all", or "" for
  # MHEX alone (nothing on a plain model).
  config.eval.methods = ""
  config.eval.scorer_workdir = ""  # Score the metrics with this workdir's model instead.
  config.eval.deletion_steps = 100  # Deletion/insertion curve steps.
  config.eval.deletion_chunk_size = 256  # Perturbed images per forward pass.
  config.eval.aopc_modes = "deletion,replacement"  # Text AOPC/LOdds removal modes.
  config.eval.replacement_token = "pad"  # Text AOPC/LOdds replacement: "pad" or "mask".
  config.eval.aopc_absolute = False  # |p(x) − p(x̃)| as the official AttCAT code.
  config.eval.collaboration_examples = 0  # > 0: SPEC §6 analysis on that many examples.
  # Per-method options; multi-pass methods take a chunk size that bounds memory. The path
  # methods' chunk_size counts images (path points × examples); None: as many as fit.
  config.eval.explainer_options = ml_collections.ConfigDict({
      "score_cam": {"chunk_size": 16},
      "smoothgrad": {"num_samples": 25, "noise_level": 0.15, "chunk_size": placeholder(int)},
      "integrated_gradients": {"steps": 32, "chunk_size": placeholder(int)},
      "embedding_integrated_gradients": {"steps": 32, "chunk_size": placeholder(int)},
  })
  return config


def resnet_model() -> ml_collections.ConfigDict:
  """``ResNet`` constructor arguments (``models/resnet.py``) at their defaults, for model_name
  "resnet18", "resnet34" or "resnet50" (the name gives the depth)."""
  return ml_collections.ConfigDict({
      "num_classes": 2, "input_channels": 3, "width": 64, "stem": "imagenet",
      "last_stage_stride": 2, "mhex": True,
      "mhex_stages": placeholder(tuple),  # None: all.
      "gate_init": "random", "gate_placement": "shortcut", "saliency_features": "sum",
      "dtype": "float32"})


def bert_model() -> ml_collections.ConfigDict:
  """``BERT`` constructor arguments (``models/bert.py``) other than the architecture and the
  dropout rates, which are BERT-base's unless set here or read from ``config.model_init``'s
  config.json."""
  return ml_collections.ConfigDict({
      "num_classes": 2, "mhex": True, "gate_init": "random", "saliency_features": "ungated",
      "dtype": "float32"})


def vit_model() -> ml_collections.ConfigDict:
  """``ViT`` constructor arguments (``models/vit.py``): ViT-B/16 at 224 px. With
  ``config.model_init`` set, the architecture fields must match its config.json."""
  return ml_collections.ConfigDict({
      "num_classes": 2, "image_size": 224, "patch_size": 16, "num_channels": 3,
      "hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072,
      "class_token": True, "patch_stem": "linear", "hidden_dropout": 0.0,
      "attention_dropout": 0.0, "mhex": True, "gate_init": "random",
      "gate_placement": "branch", "saliency_features": "ungated", "dtype": "float32"})


def synthetic_resnet18() -> ml_collections.ConfigDict:
  """The project's default run (``configs/default.py``, also every ResNet config's ``:quick``):
  MHEX-ResNet-18 width 16, small-image stem, on the built-in synthetic shapes at 32 px."""
  config = base_config()
  config.model_name = "resnet18"
  config.model = resnet_model()
  config.model.num_classes = 4
  config.model.width = 16
  config.model.stem = "small"
  config.data.name = "synthetic"
  config.data.image_size = 32
  config.data.num_train = 8000
  config.data.num_eval = 1000
  config.data.eval_split = "test"  # "val": another held-out stream, for choosing options.
  config.train.batch_size = 64
  config.train.num_epochs = 8
  config.train.learning_rate = 0.05
  config.train.log_every_steps = 25
  config.train.checkpoint_every_steps = 250
  config.eval.num_explain = 1000
  # Small images: 20 deletion/insertion steps of ~50 (32 px) or ~40 (28 px) pixels each.
  config.eval.deletion_steps = 20
  # The standard pointing game allows 15 px at 224 px (≈ 2 px at 32 px); we allow 1 px.
  config.eval.pointing_tolerance = 1
  return config


def use_imagenet(config: ml_collections.ConfigDict, mean, std) -> None:
  """ImageNet-1k from tfds ``imagenet2012`` at 224 px, normalised by (mean, std), with the
  schedule fields every ImageNet run shares (batch 1024, logging and checkpoints)."""
  config.model.num_classes = 1000
  config.data.name = "imagenet"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = 224
  config.data.mean = tuple(mean)
  config.data.std = tuple(std)
  # Worker processes that decode and crop the images (mhex_jax.data.imagenet); 0: this
  # process' threads, which top out near 1,500 images/s (docs/usage.md).
  config.data.decode_processes = 0
  config.train.batch_size = 1024
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  config.eval.batch_size = 1024
  config.eval.num_explain = 2048


def vit_flow_variants() -> dict:
  """MHEX-ViT patch maps of ``explain.token_flow`` scored beside the default: the class flow
  with each layer's or the final head's readout, the exact logit split routed by the class
  flow, by the rollout or not at all, and the default CAM routed by the class flow."""
  return {"mhex_flow": {"map": "flow"},
          "mhex_flow_final": {"map": "flow", "flow_rows": "final"},
          "mhex_split": {"map": "split", "route": "flow", "flow_rows": "final"},
          "mhex_split_rollout": {"map": "split", "route": "attention"},
          "mhex_split_unrouted": {"map": "split", "route": "none"},
          "mhex_cam_flow": {"route": "flow"}}


def transformer_variants(num_classes: int, spec_layers: tuple,
                         default_layers: tuple) -> ml_collections.ConfigDict:
  """MHEX token-map variants scored beside the default map by ``--config.eval.methods=all``.

  The default map (``explain.equivalent_matrix.mhex_token_saliency`` / ``mhex_patch_saliency``) is
  routed through the attention, signed and LayerNorm-normalised. ``mhex_spec*`` are SPEC §4 as
  written (no routing, raw features, layers ``spec_layers``: () = the α-decay): signed, with
  positive weights only, and with the reference's quantitative weighting (β⁻ = −1,
  τ⁺ = 1/K + 0.1, τ⁻ = 0.1). The others change one option of the default, whose layer set
  is ``default_layers``.
  """
  spec = {"route": "none", "layers": spec_layers, "feature_norm": "none"}
  sharp = {"tau_pos": 1 / num_classes + 0.1, "tau_neg": 0.1}
  other_layers = {"mhex_first_layer": (0,), "mhex_last_layer": (-1,), "mhex_all_layers": ()}
  return ml_collections.ConfigDict({
      "mhex_spec": spec,
      "mhex_spec_positive": {**spec, "beta_neg": 0.0},
      "mhex_spec_reference": {**spec, **sharp},
      "mhex_spec_routed": {**spec, "route": "attention"},
      "mhex_unrouted": {"route": "none"},
      "mhex_positive": {"beta_neg": 0.0},
      "mhex_reference": sharp,
      "mhex_raw_features": {"feature_norm": "none"},
      "mhex_contrastive": {"contrastive": True},
      **{name: {"layers": layers} for name, layers in other_layers.items()
         if layers != tuple(default_layers)},
  })

"""Pretrained ResNet-18/34/50 weights → the parameters of ``models.resnet.ResNet`` (plain or MHEX).

Two layouts are read, told apart by their tensor names:

* Hugging Face ``model_type: resnet`` (``ResNetModel`` / ``ResNetForImageClassification``): a
  directory as ``save_pretrained`` writes it (``config.json`` + ``model.safetensors``), keys
  ``resnet.embedder.embedder.*``, ``resnet.encoder.stages.{s}.layers.{i}.{layer.{j},shortcut}.*``
  and ``classifier.1.*``. Its ``config.json`` is checked against what ``models.resnet`` computes.
* torchvision / timm state dicts (``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{j}``/``bn{j}``,
  ``downsample.{0,1}``, ``fc``) in a ``.safetensors`` file, or in a ``.pth``/``.pt``/``.bin`` file
  read with ``torch.load(..., weights_only=True)``: a file that needs a full unpickle (which would
  run code from the file) is refused, and without torch the error shows how to convert the file.

Both describe the network ``models.resnet`` builds (ResNet v1.5: the bottleneck's stride on its
3×3 convolution, a 1×1 conv + BatchNorm projection where the shape changes), so the weights map
one to one: Conv2d OIHW → HWIO, BatchNorm weight/bias → params scale/bias and running_mean/var →
batch_stats mean/var, Linear [out, in] → Dense kernel [in, out]; ``num_batches_tracked`` has no
counterpart and is ignored. Only the ``stem="imagenet"``, ``width=64`` ResNet has this shape.
``last_stage_stride=1`` takes the same weights (the last stage then sees a 2× larger map).

What is not taken from the file: the MHEX gates W and heads P keep their initial values (SPEC §4);
the model's pooled classifier (a plain model, or an MHEX model whose last stage has no MHEX) is
imported when it has ``num_classes`` outputs, or kept fresh with ``new_head=True``; a file's
classifier the model does not import is reported unused. Anything missing from, left over in,
mis-shaped in or non-finite in the file is reported in one ``WeightsError`` listing every key.
"""

import os
import pathlib
import pickle
import re
from typing import Any, Callable, NamedTuple

from absl import logging
import flax
import jax.numpy as jnp
import numpy as np

from mhex_jax.errors import WeightsError
from mhex_jax.models import resnet as resnet_lib
from mhex_jax.weights import hf_import

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
# The Hugging Face task model's prefix (absent in a bare ``ResNetModel``).
HF_PREFIX = "resnet."
# A BatchNorm buffer with no counterpart in flax (it only schedules momentum=None averaging).
IGNORED_SUFFIX = ".num_batches_tracked"
STANDARD_WIDTH = 64
# (block type, blocks per stage) → depth, for the depths models.resnet builds.
DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
          ("bottleneck", (3, 4, 6, 3)): 50}


class Layout(NamedTuple):
  """How one family of files names the modules of a ResNet."""
  name: str
  stem_conv: str
  stem_bn: str
  classifier: str
  block: Callable[[int, int], str]  # (stage, index in stage) → key prefix of the block
  branch: Callable[[int], str]  # j = 1, 2, 3 → "conv{j}" / "layer.{j-1}.convolution", …
  norm: Callable[[int], str]
  proj_conv: str
  proj_bn: str
  block_pattern: str  # matches a block key, groups (stage, index); stage counted as in block()
  bottleneck_pattern: str  # matches a key only bottleneck blocks have


TORCHVISION = Layout(
    name="torchvision", stem_conv="conv1", stem_bn="bn1", classifier="fc",
    block=lambda s, i: f"layer{s + 1}.{i}", branch=lambda j: f"conv{j}",
    norm=lambda j: f"bn{j}", proj_conv="downsample.0", proj_bn="downsample.1",
    block_pattern=r"^layer([1-4])\.(\d+)\.", bottleneck_pattern=r"^layer\d\.\d+\.conv3\.")
HUGGING_FACE = Layout(
    name="Hugging Face", stem_conv="embedder.embedder.convolution",
    stem_bn="embedder.embedder.normalization", classifier="classifier.1",
    block=lambda s, i: f"encoder.stages.{s}.layers.{i}",
    branch=lambda j: f"layer.{j - 1}.convolution", norm=lambda j: f"layer.{j - 1}.normalization",
    proj_conv="shortcut.convolution", proj_bn="shortcut.normalization",
    block_pattern=r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.",
    bottleneck_pattern=r"^encoder\.stages\.\d+\.layers\.\d+\.layer\.2\.")


class _Tensor(NamedTuple):
  value: np.ndarray
  key: str  # As the file spells it (with any prefix).
  origin: str  # "FILE: key", to name it by in errors.


def load_resnet_params(model: resnet_lib.ResNet, init_params: Any, init_batch_stats: Any,
                       path: str | os.PathLike, *,
                       new_head: bool = False) -> tuple[Any, Any, dict[str, list[str]]]:
  """``init_params`` and ``init_batch_stats`` of a built ResNet with a pretrained ResNet's
  weights in place.

  Args:
    model: a ``models.resnet.ResNet`` with ``stem="imagenet"``, ``width=64`` and the file's
      depth (18, 34 or 50), plain or MHEX.
    init_params: its initialised ``params``; the MHEX gates and heads (and a new classifier with
      ``new_head``) keep these values.
    init_batch_stats: its initialised ``batch_stats``.
    path: a Hugging Face ResNet checkpoint directory, or a torchvision/timm state dict in a
      ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file.
    new_head: keep the model's fresh classifier instead of importing the file's (to train a
      classifier for another number of classes).

  Returns:
    (params, batch_stats, report): the two trees as given, with every imported leaf replaced;
    report {"loaded": [...], "fresh": [...]} holds variable paths ("params/stem_conv/kernel")
    and report["unused"] the file's keys that were not imported (its classifier, when the model
    keeps its own).
  """
  check_model(model)
  path = pathlib.Path(path)
  tensors, layout, prefix = _read(path)
  _check_architecture(model, tensors, layout, path)
  description = f"{path} into ResNet-{model.depth}(mhex={model.mhex})"

  entries, fresh = _mapping(model, layout, init_params, init_batch_stats, new_head)
  missing, misshaped, non_finite, loaded = [], [], [], {}
  for (collection, var_path), (key, transform, leaf) in entries.items():
    if key not in tensors:
      missing.append(key if key.startswith(layout.classifier + ".") else prefix + key)
      continue
    tensor = tensors[key]
    expected = hf_import.checkpoint_shape(transform, leaf.shape)
    if tensor.value.shape != expected:
      misshaped.append(f"{tensor.key}: file {tuple(tensor.value.shape)}, model expects "
                       f"{expected}")
      continue
    bad = tensor.value.size - int(np.count_nonzero(np.isfinite(tensor.value)))
    if bad:
      non_finite.append(f"{tensor.origin} holds {bad} non-finite values (NaN or inf) of "
                        f"{tensor.value.size}")
      continue
    loaded[collection, var_path] = transform(tensor.value)

  used = {key for key, _, _ in entries.values()}
  leftover = sorted(k for k in tensors if k not in used and not k.endswith(IGNORED_SUFFIX))
  # The file's classifier is the one leftover a model can do without: it keeps its own head.
  is_head = lambda k: k.startswith(layout.classifier + ".")
  unused = [tensors[k].key for k in leftover if is_head(k)]
  unexpected = [tensors[k].key for k in leftover if not is_head(k)]
  if missing or unexpected or misshaped or non_finite:
    raise WeightsError(_problems(description, layout, tensors, model, missing, unexpected,
                                 misshaped, non_finite))

  trees = {"params": init_params, "batch_stats": init_batch_stats}
  flat = {c: flax.traverse_util.flatten_dict(t) for c, t in trees.items()}
  for (collection, var_path), value in loaded.items():
    flat[collection][var_path] = jnp.asarray(value)
  params, batch_stats = (flax.traverse_util.unflatten_dict(flat[c]) for c in trees)
  report = {"loaded": sorted(_name(c, p) for c, p in loaded),
            "fresh": sorted(_name(c, p) for c, p in fresh), "unused": unused}
  logging.info("%s: loaded %d arrays, kept %d fresh, left %d file tensors unused (%s).",
               description, len(report["loaded"]), len(report["fresh"]), len(unused),
               ", ".join(unused) or "none")
  return params, batch_stats, report


def check_model(model) -> None:
  """Raises a WeightsError unless ``model`` is a ResNet of the shape published weights have."""
  if not isinstance(model, resnet_lib.ResNet):
    raise WeightsError(f"ResNet weights load into models.resnet.ResNet, not "
                       f"{type(model).__name__}; build the model with model_name 'resnet18', "
                       "'resnet34' or 'resnet50'.")
  if model.stem != "imagenet" or model.width != STANDARD_WIDTH:
    raise WeightsError(f"Pretrained ResNets have the ImageNet stem and width {STANDARD_WIDTH}; "
                       f"the model has stem={model.stem!r}, width={model.width}: build it with "
                       f"stem='imagenet', width={STANDARD_WIDTH}.")


def check_init(model, path) -> None:
  """What can be checked before any data is read: ``model`` has the shape published weights
  have and ``path`` names a checkpoint directory or a weights file that exists."""
  check_model(model)
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"ResNet weights {path} do not exist; pass a Hugging Face checkpoint "
                            f"directory or a {SAFETENSORS_SUFFIX}/.pth state dict.")
  if not path.is_dir() and path.suffix not in (SAFETENSORS_SUFFIX,) + TORCH_SUFFIXES:
    raise WeightsError(f"{path} is neither a checkpoint directory nor a {SAFETENSORS_SUFFIX} or "
                       f"{'/'.join(TORCH_SUFFIXES)} file; rename it if it is one of these.")


def _read(path: pathlib.Path) -> tuple[dict[str, _Tensor], Layout, str]:
  """The file's tensors by layout-relative key ("resnet." dropped), its layout and the prefix."""
  if path.is_dir():
    _check_hf_config(hf_import.read_config(path, "resnet"), path)  # Before reading the weights.
    raw = {k: (v, f"{file}: {k}") for k, (v, file) in hf_import.read_tensors(path).items()}
  elif not path.exists():
    raise FileNotFoundError(f"ResNet weights {path} do not exist; pass a Hugging Face checkpoint "
                            f"directory or a {SAFETENSORS_SUFFIX}/.pth state dict.")
  elif path.suffix == SAFETENSORS_SUFFIX:
    raw = {k: (_as_float32(v), f"{path}: {k}") for k, v in hf_import.load_file(path).items()}
  elif path.suffix in TORCH_SUFFIXES:
    raw = {k: (v, f"{path}: {k}") for k, v in _read_torch_file(path).items()}
  else:
    raise WeightsError(f"{path} is neither a checkpoint directory nor a {SAFETENSORS_SUFFIX} or "
                       f"{'/'.join(TORCH_SUFFIXES)} file; rename it if it is one of these.")

  prefix = HF_PREFIX if any(k.startswith(HF_PREFIX) for k in raw) else ""
  tensors = {k[len(prefix):] if k.startswith(prefix) else k: _Tensor(v, k, origin)
             for k, (v, origin) in raw.items()}
  if any(k.startswith(HUGGING_FACE.stem_conv) or re.match(HUGGING_FACE.block_pattern, k)
         for k in tensors):
    layout = HUGGING_FACE
  elif any(k.startswith(TORCHVISION.stem_conv + ".") or re.match(TORCHVISION.block_pattern, k)
           for k in tensors):
    layout = TORCHVISION
  else:
    raise WeightsError(f"{path} holds no ResNet weights in the Hugging Face or torchvision "
                       f"layout (its first keys: {sorted(raw)[:5]}); pass a ResNet checkpoint.")
  return tensors, layout, prefix


def _as_float32(value: np.ndarray) -> np.ndarray:
  return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value


def _read_torch_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  """A state dict from a PyTorch file, unpickling nothing but tensors and containers."""
  try:
    import torch  # Only .pth files need it, and it is slow to import: not at module level.
  except ImportError:
    target = path.with_suffix(SAFETENSORS_SUFFIX)
    raise WeightsError(
        f"{path} is a PyTorch file and torch is not installed here. Convert it to safetensors "
        "where torch is installed, then pass the .safetensors file:\n"
        "  import torch, safetensors.torch\n"
        f"  safetensors.torch.save_file({{k: v.contiguous() for k, v in torch.load('{path}', "
        f"map_location='cpu', weights_only=True).items()}}, '{target}')") from None
  try:
    content = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    detail = re.search(r"WeightsUnpickler error: (.*?)(?:\. |\n|$)", str(e))
    raise WeightsError(
        f"Refused to unpickle {path}: it holds Python objects besides tensors "
        f"({detail.group(1) if detail else e}), and unpickling those runs code from the file. "
        "Where the file came from, save the weights alone: torch.save(model.state_dict(), path) "
        "or safetensors.torch.save_file(model.state_dict(), path).") from e
  except Exception as e:  # torch.load's damaged-file errors: RuntimeError, KeyError, EOFError…
    raise WeightsError(f"{path} is not a readable PyTorch file (truncated or corrupt?): "
                       f"{type(e).__name__}: {e}; re-copy it.") from e
  state = _state_dict_of(content, torch.Tensor)
  if state is None:
    kind = (f"a dict with keys {sorted(map(str, content))[:5]}" if isinstance(content, dict)
            else f"a {type(content).__name__}")
    raise WeightsError(f"{path} holds {kind}, not a state dict (tensor names → tensors); save "
                       "model.state_dict() instead.")
  return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items()}


def _state_dict_of(content: Any, tensor_type: type) -> dict[str, Any] | None:
  """``content`` as names → tensors: as saved, or under a training checkpoint's "state_dict"
  or "model" entry, with DataParallel's "module." prefix dropped; None if it holds none."""
  is_state = lambda d: (isinstance(d, dict) and d and
                        all(isinstance(k, str) and isinstance(v, tensor_type)
                            for k, v in d.items()))
  if isinstance(content, dict) and not is_state(content):
    content = next((content[w] for w in ("state_dict", "model") if is_state(content.get(w))),
                   content)
  if not is_state(content):
    return None
  if all(k.startswith("module.") for k in content):
    content = {k[len("module."):]: v for k, v in content.items()}
  return content


def _check_hf_config(config: dict[str, Any], path: pathlib.Path):
  """Settings of a Hugging Face ResNet that keep the weights' shapes but change what they
  compute: models.resnet has one fixed choice for each."""
  where = path / hf_import.CONFIG_FILE
  act = config.get("hidden_act", "relu")
  if act != "relu":
    raise WeightsError(f"{where} sets hidden_act={act!r}; models.resnet uses relu: use a ReLU "
                       "ResNet checkpoint.")
  if config.get("downsample_in_first_stage", False):
    raise WeightsError(f"{where} sets downsample_in_first_stage=true (stride 2 in the first "
                       "stage); models.resnet's first stage has stride 1, as torchvision's: use a "
                       "checkpoint with downsample_in_first_stage=false.")
  if config.get("layer_type") == "bottleneck" and config.get("downsample_in_bottleneck", False):
    raise WeightsError(f"{where} sets downsample_in_bottleneck=true (ResNet v1: stride on the "
                       "first 1×1 conv); models.resnet strides the 3×3 conv (v1.5, as "
                       "torchvision): use a v1.5 checkpoint (downsample_in_bottleneck=false).")


def _check_architecture(model, tensors: dict[str, _Tensor], layout: Layout, path):
  """One clear error for a file of another depth or width, instead of a list of every key."""
  blocks = [0] * 4
  for key in tensors:
    match = re.match(layout.block_pattern, key)
    if match:
      stage = int(match.group(1)) - (1 if layout is TORCHVISION else 0)
      if 0 <= stage < 4:
        blocks[stage] = max(blocks[stage], int(match.group(2)) + 1)
  kind = ("bottleneck" if any(re.match(layout.bottleneck_pattern, k) for k in tensors)
          else "basic")
  depth = DEPTHS.get((kind, tuple(blocks)))
  if depth is None:
    raise WeightsError(f"{path} holds a ResNet of {kind} blocks, {tuple(blocks)} per stage "
                       f"({layout.name} layout); only ResNet-18 (basic, 2, 2, 2, 2), -34 (basic, "
                       "3, 4, 6, 3) and -50 (bottleneck, 3, 4, 6, 3) can be imported.")
  if depth != model.depth:
    raise WeightsError(f"{path} holds a ResNet-{depth}; the model is ResNet(depth="
                       f"{model.depth}): build it with depth={depth}.")
  stem = tensors.get(layout.stem_conv + ".weight")
  if stem is not None and stem.value.ndim == 4 and stem.value.shape[0] != STANDARD_WIDTH:
    raise WeightsError(f"{stem.origin} has {stem.value.shape[0]} output channels; models.resnet "
                       f"imports only standard-width ResNets ({STANDARD_WIDTH} stem channels).")


def _mapping(model, layout: Layout, init_params, init_batch_stats, new_head: bool):
  """(collection, variable path) → (file key, transform, initial leaf) for every imported
  variable, and the (collection, path) of the variables kept fresh."""
  block_names = {}
  index = 0
  for stage, num_blocks in enumerate(resnet_lib.STAGE_SIZES[model.depth]):
    for i in range(num_blocks):
      block_names[f"block_{index:02d}"] = layout.block(stage, i)
      index += 1
  modules = {"stem_conv": layout.stem_conv, "stem_bn": layout.stem_bn,
             "classifier": layout.classifier, "proj_conv": layout.proj_conv,
             "proj_bn": layout.proj_bn}
  for j in (1, 2, 3):
    modules[f"conv{j}"], modules[f"bn{j}"] = layout.branch(j), layout.norm(j)
  keep = hf_import.KEEP
  leaves = {("params", "kernel"): (".weight", hf_import.CONV),
            ("params", "scale"): (".weight", keep), ("params", "bias"): (".bias", keep),
            ("batch_stats", "mean"): (".running_mean", keep),
            ("batch_stats", "var"): (".running_var", keep)}

  entries, fresh = {}, []
  for collection, tree in (("params", init_params), ("batch_stats", init_batch_stats)):
    for var_path, leaf in flax.traverse_util.flatten_dict(tree).items():
      if "mhex" in var_path or (new_head and var_path[0] == "classifier"):
        fresh.append((collection, var_path))
        continue
      *module_path, name = var_path
      key = ".".join([block_names[p] if p in block_names else modules[p] for p in module_path])
      suffix, transform = leaves[collection, name]
      if module_path == ["classifier"] and name == "kernel":
        transform = hf_import.LINEAR
      entries[collection, var_path] = (key + suffix, transform, leaf)
  return entries, fresh


def _problems(description, layout, tensors, model, missing, unexpected, misshaped,
              non_finite) -> str:
  lines = [f"Cannot load {description}:"]
  for title, keys in (("missing", missing), ("unexpected", unexpected),
                      ("mis-shaped", misshaped), ("non-finite", non_finite)):
    if keys:
      lines.append(f"  {title} ({len(keys)}): " + "; ".join(keys))
  head = layout.classifier + ".weight"
  if any(k.startswith(head + ":") for k in misshaped) and tensors[head].value.ndim == 2:
    outputs = tensors[head].value.shape[0]
    lines.append(f"The file's classifier has {outputs} outputs, the model num_classes="
                 f"{model.num_classes}: pass new_head=True to train a fresh classifier (or "
                 f"build the model with num_classes={outputs}).")
  elif head in missing:
    lines.append("The file has no classifier: pass new_head=True to train a fresh one.")
  if non_finite:
    lines.append("Non-finite weights mean a damaged file or a checkpoint saved after its "
                 "training diverged: re-copy it or use another checkpoint.")
  return "\n".join(lines)


def _name(collection: str, var_path: tuple[str, ...]) -> str:
  return "/".join((collection,) + tuple(var_path))

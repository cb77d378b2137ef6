"""Does mhex_jax compute what transformers computes from a checkpoint? A parity check:

    python -m mhex_jax.weights.check DIR_OR_ID [--num_inputs 4] [--tolerance 1e-4]

The checkpoint (a save_pretrained directory, or a Hub id: ``hub.checkpoint_path``) is loaded
twice: in transformers (PyTorch, float32, eval mode), as its ``*ForSequenceClassification`` /
``*ForImageClassification`` when it holds a classifier and as the bare ``*Model`` when not; and
in mhex_jax as the plain model (``mhex=False``) through the import of its ``model_type``
(``FAMILIES``: ``hf_import.bert_config_from_hf`` / ``vit_config_from_hf`` + ``hf_import.load``,
or ``resnet_import.load_resnet_params``). Both run on the same random inputs: token ids with
padding (text) or normal noise at the checkpoint's image size (images). Printed: the largest
difference of the logits (not compared without a classifier: mhex_jax's plain model then has a
fresh one) and of each hidden state, in transformers' ``output_hidden_states`` order: the
embeddings and every layer's output (text: on the tokens, not the padding), or for a ResNet the
stem's and every stage's output.

An array passes when max |Δ| <= tolerance × max(1, max |transformers' value|): both sides compute
in float32, whose sums in another order differ by about 1e-6 relative per layer (1e-5 after 50
ResNet layers), while a mapping mistake is off by O(1). Exit status: 0 PASS, 1 FAIL, 2 when the
check cannot run (torch or transformers missing, a checkpoint that does not load).
"""

import argparse
import json
import sys
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import safetensors

from mhex_jax import errors
from mhex_jax import models
from mhex_jax.models import common
from mhex_jax.models import resnet as resnet_lib
from mhex_jax.weights import hf_import
from mhex_jax.weights import hub
from mhex_jax.weights import resnet_import

TOLERANCE = 1e-4
NUM_INPUTS = 4
MAX_TOKENS = 16
DEFAULT_IMAGE_SIZE = 224
PREPROCESSOR_FILE = "preprocessor_config.json"
# The first module name of a classification head's tensors (after the task model's prefix):
# most heads, DistilBERT's first layer, DeiT's two heads.
CLASSIFIER_MODULES = ("classifier", "pre_classifier", "cls_classifier", "distillation_classifier")
# transformers' task classes that end in a classifier, by the end of their names.
CLASSIFIER_CLASSES = ("ForSequenceClassification", "ForImageClassification",
                      "ForImageClassificationWithTeacher")


class Family(NamedTuple):
  """How one group of model_types is imported: its inputs and its mhex_jax model."""
  inputs: str  # "text" or "image"
  read_config: Callable[[Any], dict[str, Any]] | None  # config.json → constructor arguments
  model_class: type


TEXT = Family("text", hf_import.bert_config_from_hf, models.BERT)
VIT = Family("image", hf_import.vit_config_from_hf, models.ViT)
RESNET = Family("image", None, models.ResNet)
# model_type → family. The text and ViT-like types check once their config readers accept them.
FAMILIES = {**dict.fromkeys(("bert", "roberta", "xlm-roberta", "distilbert", "electra"), TEXT),
            **dict.fromkeys(("vit", "deit", "dinov2", "dinov2_with_registers"), VIT),
            "resnet": RESNET}


class Comparison(NamedTuple):
  name: str
  difference: float  # max |Δ|; NaN when the shapes differ
  bound: float

  @property
  def passed(self) -> bool:
    return bool(self.difference <= self.bound)  # NaN fails.


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the check and prints its table; returns the exit status (0 PASS, 1 FAIL, 2 error)."""
  parser = argparse.ArgumentParser(prog="python -m mhex_jax.weights.check",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("checkpoint", help="a save_pretrained directory or a Hugging Face Hub id")
  parser.add_argument("--num_inputs", type=int, default=NUM_INPUTS,
                      help="random inputs to run (default %(default)s)")
  parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                      help="bound on max |Δ| / max(1, max |reference|) (default %(default)s)")
  args = parser.parse_args(argv)
  if args.num_inputs < 1 or not args.tolerance > 0:
    parser.error(f"--num_inputs must be >= 1 and --tolerance > 0, got {args.num_inputs} and "
                 f"{args.tolerance}")
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    import transformers  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    print(f"error: the check runs the checkpoint in PyTorch too, and {e.name} is not installed: "
          "pip install torch transformers (a CPU build of torch is enough: pip install torch "
          "--index-url https://download.pytorch.org/whl/cpu).", file=sys.stderr)
    return 2
  try:
    comparisons = check(args.checkpoint, num_inputs=args.num_inputs, tolerance=args.tolerance)
  except (errors.UserError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0 if all(c.passed for c in comparisons) else 1


def check(checkpoint: str, *, num_inputs: int = NUM_INPUTS, tolerance: float = TOLERANCE,
          seed: int = 0, out=None) -> list[Comparison]:
  """Loads ``checkpoint`` in transformers and in mhex_jax, runs both, prints the table (to
  ``out``, default stdout) and returns every comparison."""
  out = out or sys.stdout
  path = hub.checkpoint_path(checkpoint, field="checkpoint")
  if not path.is_dir():
    problem = "is a file" if path.exists() else "does not exist"
    raise errors.WeightsError(f"{path} {problem}; the check reads a Hugging Face checkpoint "
                              "directory (config.json + model.safetensors) or a Hub id.")
  hf_config = _hf_config(path)
  family = FAMILIES.get(hf_config.model_type)
  if family is None:
    raise errors.WeightsError(f"{path} holds a {hf_config.model_type!r} model; mhex_jax imports "
                              f"the model_types {sorted(FAMILIES)}.")
  classifier = _has_classifier(path)
  rng = np.random.default_rng(seed)
  inputs = (_text_inputs(hf_config, num_inputs, rng) if family.inputs == "text"
            else _image_inputs(hf_config, path, num_inputs, rng))
  reference = _reference_model(path, hf_config, family, classifier)
  model, variables = _mhex_model(path, family, hf_config, inputs, classifier)
  comparisons = _comparisons(family, _run_mhex(model, variables, inputs),
                             _run_reference(reference, inputs), inputs.get("attention_mask"),
                             classifier, tolerance)
  _print(out, path, hf_config, type(reference).__name__, model, inputs, classifier, family,
         tolerance, comparisons)
  return comparisons


def _comparisons(family, ours, theirs, mask, classifier, tolerance) -> list[Comparison]:
  """The logits (with a classifier), then each hidden state; text ones on the tokens only."""
  comparisons = []
  if classifier:
    comparisons.append(_compare("logits", ours["logits"], theirs["logits"], tolerance))
  count, expected = len(ours["hidden_states"]), len(theirs["hidden_states"])
  if count != expected:
    comparisons.append(Comparison(f"hidden states: mhex_jax has {count}, transformers "
                                  f"{expected}", float("nan"), 0.0))
  names = _hidden_state_names(family, expected)
  for name, a, b in zip(names, ours["hidden_states"], theirs["hidden_states"]):
    comparisons.append(_compare(name, a, b, tolerance, mask))
  return comparisons


def _hf_config(path):
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    return transformers.AutoConfig.from_pretrained(path, local_files_only=True)
  except ValueError as e:  # No model_type, or one this transformers does not know.
    raise errors.WeightsError(f"transformers cannot read {path}/config.json: {e}") from None


def _has_classifier(path) -> bool:
  """Whether the checkpoint's tensors include a classification head (``CLASSIFIER_MODULES``);
  read from the files' headers, not their tensors."""
  files = sorted(path.glob("model*.safetensors"))
  if not files:
    raise errors.WeightsError(f"No {hf_import.WEIGHTS_FILE} in {path}: mhex_jax reads "
                              "safetensors only; re-save the checkpoint with "
                              "save_pretrained(..., safe_serialization=True).")
  names = []
  for file in files:
    with safetensors.safe_open(file, "np") as f:
      names += f.keys()
  return any(name.split(".")[0] in CLASSIFIER_MODULES for name in names)


def _text_inputs(hf_config, num_inputs: int, rng) -> dict[str, np.ndarray]:
  """Random token ids [N, T], every row but the first padded after a random length."""
  length = min(MAX_TOKENS, hf_config.max_position_embeddings)
  pad = hf_config.pad_token_id if hf_config.pad_token_id is not None else 0
  ids = rng.integers(0, hf_config.vocab_size, (num_inputs, length))
  ids[ids == pad] = (pad + 1) % hf_config.vocab_size  # Only padding holds the pad id.
  lengths = rng.integers(length // 2, length + 1, num_inputs)
  lengths[0] = length
  mask = np.arange(length)[None] < lengths[:, None]
  inputs = {"input_ids": np.where(mask, ids, pad), "attention_mask": mask.astype(np.int64)}
  types = getattr(hf_config, "type_vocab_size", None)
  if types is not None:  # DistilBERT has no token types.
    inputs["token_type_ids"] = rng.integers(0, types, (num_inputs, length)) * mask
  return inputs


def _image_size(hf_config, path) -> tuple[int, int]:
  """The config's image_size, else the preprocessor's crop or resize, else 224."""
  size = getattr(hf_config, "image_size", None)
  preprocessor = path / PREPROCESSOR_FILE
  if size is None and preprocessor.is_file():
    settings = json.loads(preprocessor.read_text())
    size = settings.get("crop_size") if settings.get("do_center_crop") else None
    size = size or settings.get("size")
    if isinstance(size, dict):
      size = size.get("shortest_edge") or (size.get("height"), size.get("width"))
  size = size or DEFAULT_IMAGE_SIZE
  return (size, size) if isinstance(size, int) else tuple(size)


def _image_inputs(hf_config, path, num_inputs: int, rng) -> dict[str, np.ndarray]:
  height, width = _image_size(hf_config, path)
  channels = getattr(hf_config, "num_channels", 3)
  images = rng.normal(size=(num_inputs, channels, height, width)).astype(np.float32)
  return {"pixel_values": images}


def _reference_model(path, hf_config, family: Family, classifier: bool):
  """transformers' model of the checkpoint: the classifier config.json names (DeiT's
  ``...WithTeacher`` is no Auto class's), else the Auto one of the task, or the bare model."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  named = [getattr(transformers, a, None) for a in hf_config.architectures or ()
           if a.endswith(CLASSIFIER_CLASSES)]
  task = (transformers.AutoModelForSequenceClassification if family.inputs == "text"
          else transformers.AutoModelForImageClassification)
  cls = (next((c for c in named if c is not None), task) if classifier
         else transformers.AutoModel)
  return cls.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()


def _mhex_model(path, family: Family, hf_config, inputs, classifier: bool):
  """The plain mhex_jax model of the checkpoint and its imported variables (without a
  classifier in the checkpoint, a zero one of 2 classes)."""
  num_classes = hf_config.num_labels if classifier else 2
  if family is RESNET:
    depth = resnet_import.DEPTHS.get((hf_config.layer_type, tuple(hf_config.depths)))
    if depth is None:
      raise errors.WeightsError(
          f"{path} holds a ResNet of {hf_config.layer_type} blocks {tuple(hf_config.depths)} "
          "per stage; mhex_jax builds ResNet-18, -34 and -50 only.")
    model = models.ResNet(num_classes=num_classes, depth=depth, mhex=False)
    init = _zero_variables(model, inputs)
    params, batch_stats, _ = resnet_import.load_resnet_params(
        model, init["params"], init["batch_stats"], path, new_head=not classifier)
    return model, {"params": params, "batch_stats": batch_stats}
  model = family.model_class(num_classes=num_classes, mhex=False, **family.read_config(path))
  params = _zero_variables(model, inputs)["params"]
  return model, {"params": hf_import.load(model, params, path, new_head=not classifier)}


def _zero_variables(model, inputs) -> dict[str, Any]:
  """Zeros shaped as ``model``'s variables: the import replaces every leaf but a new
  classifier's, whose logits are not compared (running the initialisers would take seconds)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          *(a[:1] if a is not None else None for a in _mhex_args(inputs)))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _mhex_args(inputs) -> tuple:
  """mhex_jax's positional inputs: (ids, mask, token types or None) or images [B, H, W, C]."""
  if "pixel_values" in inputs:
    return (inputs["pixel_values"].transpose(0, 2, 3, 1),)
  types = inputs.get("token_type_ids")
  return (inputs["input_ids"].astype(np.int32), inputs["attention_mask"].astype(np.int32),
          None if types is None else types.astype(np.int32))


def _run_reference(reference, inputs) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    output = reference(**{k: torch.from_numpy(v) for k, v in inputs.items()},
                       output_hidden_states=True)
  hidden = [h.numpy() for h in output.hidden_states]
  if "pixel_values" in inputs and hidden[0].ndim == 4:  # A CNN's maps: NCHW → NHWC.
    hidden = [h.transpose(0, 2, 3, 1) for h in hidden]
  logits = output.logits.numpy() if hasattr(output, "logits") else None
  return {"logits": logits, "hidden_states": hidden}


def _run_mhex(model, variables, inputs) -> dict[str, Any]:
  args = _mhex_args(inputs)
  apply = jax.jit(lambda v, *a: model.apply(v, *a, mutable=[common.HIDDEN_STATES]))
  logits, state = apply(variables, *args)
  if isinstance(model, resnet_lib.ResNet):
    hidden = _stage_outputs(model, state)
  else:
    hidden = common.hidden_states(state)
  return {"logits": np.asarray(logits[0]), "hidden_states": [np.asarray(h) for h in hidden]}


def _stage_outputs(model, state) -> list[jax.Array]:
  """The stem's and every stage's output [B, H, W, C] (transformers' ResNet hidden_states):
  the input of each stage's first block, then the map the classifier pools."""
  sown = state[common.HIDDEN_STATES]
  firsts = np.cumsum((0,) + resnet_lib.STAGE_SIZES[model.depth][:-1])
  return ([sown[f"block_{i:02d}"][resnet_lib.BLOCK_INPUT][0] for i in firsts]
          + [sown[resnet_lib.FINAL_FEATURES][0]])


def _hidden_state_names(family: Family, count: int) -> list[str]:
  if family is RESNET:
    return ["stem output"] + [f"stage {s} output" for s in range(1, count)]
  return ["embeddings"] + [f"layer {i} output" for i in range(1, count)]


def _compare(name, ours, theirs, tolerance, mask=None) -> Comparison:
  shape = "[" + ", ".join(map(str, np.shape(theirs))) + "]"
  if np.shape(ours) != np.shape(theirs):
    return Comparison(f"{name} {shape}: mhex_jax's is {list(np.shape(ours))}", float("nan"),
                      0.0)
  difference = np.abs(np.asarray(ours, np.float64) - theirs)
  reference = np.abs(np.asarray(theirs, np.float64))
  if mask is not None and difference.ndim == 3:  # Tokens only: padding rows are not outputs.
    difference, reference = difference[mask.astype(bool)], reference[mask.astype(bool)]
  bound = tolerance * max(1.0, float(np.max(reference)))
  return Comparison(f"{name} {shape}", float(np.max(difference)), bound)


def _print(out, path, hf_config, reference_name, model, inputs, classifier, family, tolerance,
           comparisons):
  print(f"Parity of mhex_jax with transformers: {path} (model_type {hf_config.model_type!r})",
        file=out)
  print(f"  transformers {reference_name}, mhex_jax {type(model).__name__}(mhex=False), "
        "both float32", file=out)
  if "input_ids" in inputs:
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    lengths = mask.sum(1)
    print(f"  inputs: {len(ids)} random token sequences of {ids.shape[1]} "
          f"({lengths.min()} to {lengths.max()} tokens, then padding); hidden states compared "
          "on the tokens", file=out)
  else:
    print(f"  inputs: {len(inputs['pixel_values'])} random images "
          f"{list(inputs['pixel_values'].shape[1:])} (C, H, W)", file=out)
  if family is RESNET:
    print("  hidden states: the stem's and each stage's output (mhex_jax's sown block inputs "
          "and final features)", file=out)
  if not classifier:
    print("  the checkpoint has no classifier: logits not compared (mhex_jax's plain model "
          "gets a fresh one), hidden states only", file=out)
  print(f"  pass: max |Δ| <= {tolerance:g} × max(1, max |transformers|)\n", file=out)
  width = max(len(c.name) for c in comparisons) + 2
  print(f"  {'array':<{width}}{'max |Δ|':>10}  {'bound':>9}", file=out)
  for c in comparisons:
    print(f"  {c.name:<{width}}{c.difference:>10.2e}  {c.bound:>9.2e}  "
          f"{'ok' if c.passed else 'FAIL'}", file=out)
  failed = [c.name for c in comparisons if not c.passed]
  worst = max(comparisons, key=lambda c: c.difference / c.bound if c.bound else np.inf)
  if failed:
    print(f"FAIL: {len(failed)} of {len(comparisons)} arrays beyond the bound, first "
          f"{failed[0]}.", file=out)
  else:
    print(f"PASS: every array within the bound; the closest to it: {worst.name} "
          f"({worst.difference:.2e}).", file=out)


if __name__ == "__main__":
  sys.exit(main())

"""Explain your own images and texts with a trained workdir or a pretrained Hugging Face
classifier, untrained here (the library behind ``explain.py``).

    from mhex_jax import explain_lib
    run = explain_lib.load("workdirs/default")     # model, variables, preprocessing, classes
    results = run.explain_files(["a.png", "b.jpg"], methods=("mhex", "grad_cam"))
    explain_lib.show(results)                      # overlays inline (matplotlib)
    results[0].predicted_name, results[0].probability

    run = explain_lib.from_pretrained("DIR")       # a ...ForImageClassification checkpoint
    results = run.explain_files(["cat.jpg"])       # every method the model takes

``load`` reads the config ``train.py`` saved in the workdir and restores the latest checkpoint.
``from_pretrained`` takes a checkpoint directory (or Hub id) as ``save_pretrained`` writes it:
the plain model of its ``model_type`` (``weights.hf_config.MODEL_NAMES``) with its own
classifier and ``id2label`` class names, its images made by its ``preprocessor_config.json``
(``data.preprocess``; an image checkpoint without one is refused) or its texts by its
tokenizer, and every post-hoc method of the registry for it by default.

Image files (PNG, JPEG, TIFF, DICOM: ``mhex_jax.data.image_files``) are read with the
config's ``data.intensity``, so a 16-bit file keeps its contrast as in training. Images of any
size and aspect are fitted to a workdir model's input the way it was trained
(``fit``: "crop" takes the centred square, the ImageNet configs' central 87.5% of it, "pad" pads
to a square with the mean colour, "stretch" resizes) or to a pretrained model's by its
processor, and every map is carried back onto the original image, at its own size (outside a
crop the map is 0). Texts are tokenized with the model's tokenizer and padded to the longest
text of the call. Methods are the registry's names (``run.methods``, or "all"); a workdir's
default is MHEX on an MHEX model, else the best measured method for the model kind (the
task's ``default_plain_method``).
"""

import dataclasses
import io
import json
import os
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from mhex_jax import checkpoints
from mhex_jax import config_lib
from mhex_jax import files
from mhex_jax import model_lib
from mhex_jax import plotting
from mhex_jax import sharding as sharding_lib
from mhex_jax import tasks
from mhex_jax import workdir as workdir_lib
from mhex_jax.data import image_files
from mhex_jax.data import imagenet
from mhex_jax.data import input_pipeline
from mhex_jax.data import preprocess
from mhex_jax.data import text
from mhex_jax.errors import UserError
from mhex_jax.explain import methods as methods_lib
from mhex_jax.explain import registry
from mhex_jax.explain.maps import normalize_maps
from mhex_jax.weights import hf_config

FITS = ("crop", "pad", "stretch")


@dataclasses.dataclass
class Explanation:
  """One explained input.

  Attributes:
    source: the file name, or "array i" / "text i".
    predicted, predicted_name, probability: the final head's top class and its probability.
    target, target_name: the class explained.
    maps: method -> map in [0, 1]: [H, W] over the original image, or [T] over ``tokens``.
    image: the original image, uint8 [H, W, C] (images only).
    tokens: the token strings, [CLS] and [SEP] included (texts only).
  """
  source: str
  predicted: int
  predicted_name: str
  probability: float
  target: int
  target_name: str
  maps: dict[str, np.ndarray]
  image: Optional[np.ndarray] = None
  tokens: Optional[list[str]] = None

  def summary(self) -> dict[str, Any]:
    return {"source": self.source, "predicted": self.predicted,
            "predicted_name": self.predicted_name, "probability": self.probability,
            "target": self.target, "target_name": self.target_name,
            "methods": list(self.maps)}


class Run:
  """A model ready to explain: ``config``, ``model``, ``variables``, ``classes``.

  Attributes:
    workdir: the trained workdir it came from ("" for a pretrained checkpoint).
    image_processor: a pretrained checkpoint's image preprocessing (``data.preprocess``), which
      replaces ``fit``; None for a workdir.
    default_methods: the methods run when none are named.
  """

  def __init__(self, config: ml_collections.ConfigDict, model, variables, workdir: str, *,
               image_processor: Optional[preprocess.ImageProcessor] = None,
               default_methods: Optional[Sequence[str]] = None):
    self.config, self.model, self.variables, self.workdir = config, model, variables, workdir
    self.task = tasks.task_of(model)
    self.classes = input_pipeline.class_names(config.data, config.model.num_classes)
    self.image_processor = image_processor
    # Workdirs saved before the field existed read their 8-bit files as before.
    self.intensity = config.data.get("intensity", "full_range")
    self.default_methods = tuple(default_methods or (
        (registry.MHEX,) if self.model.mhex else (self.task.default_plain_method,)))
    self._compiled = {}

  @property
  def methods(self) -> tuple[str, ...]:
    """Every method this model can be explained with."""
    return registry.available(self.model)

  def _check_methods(self, methods: Optional[Sequence[str]]) -> tuple[str, ...]:
    methods = tuple(methods) if methods else self.default_methods
    if methods == ("all",):
      return self.methods
    unknown = [m for m in methods if m not in self.methods]
    if unknown:
      raise UserError(f"Methods {unknown} are not available for this "
                      f"{type(self.model).__name__} (mhex={self.model.mhex}); use some of "
                      f"{list(self.methods)}, or 'all'.")
    return methods

  def class_index(self, target: Union[int, str]) -> int:
    """A class number from a number or a class name (as in ``classes``)."""
    if isinstance(target, str) and target in self.classes:
      return self.classes.index(target)
    try:
      index = int(target)
    except (TypeError, ValueError):
      index = -1
    if not 0 <= index < len(self.classes):
      raise UserError(f"target {target!r} is not a class; use 'predicted', a class number "
                      f"0..{len(self.classes) - 1} or a name in {self.classes}.")
    return index

  # Images.

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  @property
  def channels(self) -> int:
    return self.task.channels

  def _fit_box(self, height: int, width: int, fit: str) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the original image that the model input covers."""
    if fit == "stretch":
      return 0.0, 0.0, float(width), float(height)
    side = min(height, width) if fit == "crop" else max(height, width)
    if fit == "crop" and self.config.data.name == "imagenet":
      side *= imagenet.EVAL_CROP_FRACTION  # The configs' eval crop (shorter side / 0.875).
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side

  def prepare_image(self, image: np.ndarray,
                    fit: Optional[str] = None) -> tuple[np.ndarray, tuple]:
    """uint8 [H, W, C], or float [H, W, C] in [0, 1] as ``read_image`` gives (C = 1, 3, or 4
    with alpha dropped; any size) -> (normalised model input [S, S, C'], box): the box (left,
    top, right, bottom) of the image the input covers. ``fit`` (default "crop") is for workdir
    models; a pretrained model's processor fits its inputs.

    Float images whose values are all v / 255 (8-bit files, and 16-bit ones that are 8-bit ones
    ×257) are fitted as their uint8 values, so they give exactly what the 8-bit file gives;
    other floats (16-bit contrast) are fitted in float32 by the same boxes and bilinear
    resampling. A pretrained model's processor takes them at 8 bits.
    """
    if self.image_processor is not None and fit is not None:
      raise UserError(f"fit={fit!r} is for workdir models; a pretrained model's inputs are "
                      f"made by its {preprocess.PROCESSOR_FILE}: leave fit unset.")
    fit = fit or "crop"
    if fit not in FITS:
      raise UserError(f"fit={fit!r}; use one of {FITS}.")
    image = _checked_image(image)
    if self.image_processor is not None:
      if image.dtype != np.uint8:
        image = _to_uint8(image_files.float_channels(image, self.channels))
      pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image[..., :3])
      pil = pil.convert("L" if self.channels == 1 else "RGB")
      return self.image_processor(np.asarray(pil).reshape(*image.shape[:2], self.channels))
    box = self._fit_box(image.shape[0], image.shape[1], fit)
    mean = np.broadcast_to(np.asarray(self.config.data.mean, np.float32), (self.channels,))
    std = np.broadcast_to(np.asarray(self.config.data.std, np.float32), (self.channels,))
    fitted = image_files.fit_image(image, self.image_size, self.channels, box,
                                   fill=mean if fit == "pad" else None)
    return (fitted - mean) / std, box

  def _compiled_fn(self, method: str):
    if method not in self._compiled:
      explain = methods_lib.method(self.config.eval, self.model, method).explainer(self.model)
      self._compiled[method] = jax.jit(explain)
    return self._compiled[method]

  def _predict(self, inputs) -> np.ndarray:
    if "predict" not in self._compiled:
      forward = self.task.forward
      self._compiled["predict"] = jax.jit(lambda v, x: jax.nn.softmax(forward(v, x)[-1]))
    return np.asarray(self._compiled["predict"](self.variables, inputs))

  def _targets(self, probabilities: np.ndarray, target) -> np.ndarray:
    predicted = probabilities.argmax(-1)
    if target == "predicted":
      return predicted.astype(np.int32)
    return np.full_like(predicted, self.class_index(target), dtype=np.int32)

  def _explanation(self, source, probabilities, target, maps, **extra) -> Explanation:
    predicted = int(probabilities.argmax())
    return Explanation(source=source, predicted=predicted,
                       predicted_name=self.classes[predicted],
                       probability=float(probabilities[predicted]), target=int(target),
                       target_name=self.classes[int(target)], maps=maps, **extra)

  def explain_images(self, images: Sequence[np.ndarray], *,
                     methods: Optional[Sequence[str]] = None,
                     target: Union[str, int] = "predicted", fit: Optional[str] = None,
                     sources: Optional[Sequence[str]] = None) -> list[Explanation]:
    """Explains images [H, W, C] of any sizes, uint8 or float in [0, 1]; maps come back at each
    image's size. ``fit`` (workdir models only, default "crop"): see ``prepare_image``."""
    if self.task.name != "image":
      raise UserError("This is a text model; use explain_texts.")
    methods = self._check_methods(methods)
    if not len(images):
      raise UserError("No images to explain.")
    prepared = [self.prepare_image(image, fit) for image in images]
    batch = jnp.asarray(np.stack([p[0] for p in prepared]))
    probabilities = self._predict(batch)
    targets = self._targets(probabilities, target)
    maps = {m: np.asarray(self._compiled_fn(m)(self.variables, batch, jnp.asarray(targets)))
            for m in methods}
    sources = sources or [f"array {i}" for i in range(len(images))]
    return [self._explanation(
        sources[i], probabilities[i], targets[i],
        {m: _to_original(maps[m][i], prepared[i][1], np.shape(images[i])[:2]) for m in methods},
        image=_display_image(images[i])) for i in range(len(images))]

  def explain_files(self, paths: Sequence[str], **options) -> list[Explanation]:
    """Explains image files (PNG, JPEG, TIFF, DICOM; local or URIs), read with the config's
    ``data.intensity``; see ``explain_images`` for the options."""
    images = [read_image(path, intensity=self.intensity) for path in paths]
    return self.explain_images(images, sources=[os.fspath(p) for p in paths], **options)

  # Texts.

  def explain_texts(self, texts: Sequence[str], *, methods: Optional[Sequence[str]] = None,
                    target: Union[str, int] = "predicted") -> list[Explanation]:
    """Explains texts; maps are per token ([CLS] and [SEP] included, 0 on them)."""
    if self.task.name != "text":
      raise UserError("This is an image model; use explain_images/explain_files.")
    methods = self._check_methods(methods)
    texts = list(texts)
    empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if not texts or empty:
      raise UserError(f"Texts must be non-empty strings; got {len(texts)} texts, empty or not "
                      f"strings at positions {empty}.")
    tokenizer = self.task.tokenizer(self.config.data)
    arrays = text.tokenize(tokenizer, texts, _text_length(tokenizer, texts,
                                                          self.config.data.max_len))
    inputs = {k: jnp.asarray(v) for k, v in arrays.items()}
    probabilities = self._predict(inputs)
    targets = self._targets(probabilities, target)
    removable = (arrays["attention_mask"] > 0) & ~arrays["special_tokens_mask"]
    maps = {m: np.asarray(normalize_maps(
        self._compiled_fn(m)(self.variables, inputs, jnp.asarray(targets)),
        jnp.asarray(removable))) for m in methods}
    lengths = arrays["attention_mask"].sum(-1)
    out = []
    for i, source in enumerate(texts):
      tokens = tokenizer.convert_ids_to_tokens(arrays["input_ids"][i, :lengths[i]].tolist())
      out.append(self._explanation(source, probabilities[i], targets[i],
                                   {m: maps[m][i, :lengths[i]] for m in methods}, tokens=tokens))
    return out


def load(workdir: str, config: Optional[ml_collections.ConfigDict] = None) -> Run:
  """A ``Run`` of ``workdir``'s latest checkpoint, with the config saved there (or ``config``)."""
  if config is None:
    config = workdir_lib.load_config(workdir)
  config = workdir_lib.with_decisions(config, workdir)  # A given config's "auto" max_len.
  model = model_lib.create_model(config)
  mesh = sharding_lib.make_mesh(1)
  dummy = tasks.task_of(model).dummy_inputs(config.data)
  variables = checkpoints.restore_variables(workdir, model, dummy, sharding_lib.replicated(mesh))
  return Run(config, model, variables, workdir)


def from_pretrained(checkpoint: str) -> Run:
  """A ``Run`` of a Hugging Face classifier as it is: ``checkpoint`` is a directory written by
  ``save_pretrained`` (config.json, model.safetensors, and preprocessor_config.json for images
  or the tokenizer files for texts) or a Hub id.

  The model is the plain model of config.json's model_type (``weights.hf_config``) with the
  checkpoint's classifier, one class per ``id2label`` name (the class names); its methods
  default to every one ``registry.available`` offers. Everything the checkpoint lacks is refused
  before any weight is read.
  """
  config = pretrained_config(checkpoint)
  model = model_lib.create_model(config)
  task, processor = tasks.task_of(model), None
  if task.name == "image":
    processor = preprocess.ImageProcessor.from_pretrained(config.model_init)
    model = _sized_for(processor, model, config)
  else:  # The tokenizer's files are checked before the weights are read.
    config.data.max_len = _max_tokens(model, task.tokenizer(config.data))
  dummy = tasks.task_of(model).dummy_inputs(config.data)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(config.seed), *dummy))
  variables = {k: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes.get(k, {}))
               for k in ("params", "batch_stats")}
  variables = model_lib.load_pretrained(config, model, variables)
  return Run(config, model, variables, "", image_processor=processor,
             default_methods=registry.available(model))


def pretrained_config(checkpoint: str) -> ml_collections.ConfigDict:
  """The config of the plain model that explains ``checkpoint`` as it is (``from_pretrained``):
  its model_name and classes from config.json, its own classifier, its tokenizer."""
  config = config_lib.base_config()
  config.model_init = os.fspath(checkpoint)
  config.model_init = os.fspath(model_lib.pretrained_path(config))  # A Hub id's snapshot.
  path = hf_config.config_file(config.model_init)
  hf = hf_config.read(config.model_init)
  hf_config.check_classifier(hf, path)
  names = hf_config.class_names(hf, path)
  config.model_name = hf_config.model_name(hf, path)
  config.model = ml_collections.ConfigDict({"num_classes": len(names), "mhex": False})
  config.data.name = "pretrained"
  config.data.class_names = tuple(names)
  config.data.image_size = 0  # The model's own (ViT) or the processor's (CNN).
  config.data.tokenizer_dir = config.model_init
  config.data.max_len = 0  # Text models: set by from_pretrained from the model and tokenizer.
  return config


def _max_tokens(model, tokenizer) -> int:
  """The most tokens per text ``model`` reads (RoBERTa's positions start after its padding
  id) and ``tokenizer`` was made for."""
  pad_id = getattr(model, "position_pad_id", None)
  tokens = model.max_positions - (0 if pad_id is None else pad_id + 1)
  limit = getattr(tokenizer, "model_max_length", None)
  return min(tokens, limit) if isinstance(limit, int) and limit > 0 else tokens


def _sized_for(processor: preprocess.ImageProcessor, model, config: ml_collections.ConfigDict):
  """``model``, taking the processor's image size: a ViT that resizes its position embeddings
  (DINOv2) is rebuilt for it, as transformers runs it; another must take it already."""
  size = processor.output_size
  if size is None:
    raise UserError(f"{processor.source} resizes the shortest edge without a centre crop, so "
                    "inputs would follow each image's aspect; add \"do_center_crop\": true and "
                    "a \"crop_size\" {\"height\", \"width\"}.")
  expected = getattr(model, "image_size", None)
  if expected is None:  # A CNN takes any size.
    return model
  expected = (expected,) * 2 if isinstance(expected, int) else tuple(expected)
  if tuple(size) == expected:
    return model
  if getattr(model, "position_interpolation", "none") != "none":
    config.model.image_size = size[0] if size[0] == size[1] else tuple(size)
    return model_lib.create_model(config)
  raise UserError(f"{processor.source} makes {size[0]}×{size[1]} inputs but the model takes "
                  f"{expected[0]}×{expected[1]} (config.json image_size); fix the processor's "
                  "size/crop_size.")


def _text_length(tokenizer, texts: Sequence[str], max_len: int) -> int:
  """Tokens per row: the longest text's (specials included) rounded up to a multiple of 8,
  at most ``max_len`` (texts beyond it are truncated)."""
  longest = max(len(ids) for ids in tokenizer(list(texts), truncation=True,
                                              max_length=max_len)["input_ids"])
  return min(max_len, -(-longest // 8) * 8)


# An image file as float32 [H, W, C] in [0, 1] (C = 1 or 3): read_image(path, intensity=...).
read_image = image_files.read_image


def _checked_image(image) -> np.ndarray:
  """[H, W, C] uint8, or float32 in [0, 1] (as uint8 when every value is v / 255)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  floating = np.issubdtype(image.dtype, np.floating)
  if ((image.dtype != np.uint8 and not floating) or image.ndim != 3
      or image.shape[-1] not in (1, 3, 4)):
    raise UserError(f"images must be uint8 [H, W, C], or float [H, W, C] in [0, 1], with C in "
                    f"(1, 3, 4), got {image.dtype}{list(image.shape)}.")
  if not floating:
    return image
  image = image.astype(np.float32)
  if not (np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1):
    raise UserError(f"float images must be in [0, 1] (read_image gives them so), got values "
                    f"in [{np.nanmin(image):g}, {np.nanmax(image):g}] or non-finite.")
  levels = np.rint(image * 255)
  if np.array_equal(levels / np.float32(255), image):
    return levels.astype(np.uint8)
  return image


def _to_uint8(image: np.ndarray) -> np.ndarray:
  return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _display_image(image: np.ndarray) -> np.ndarray:
  image = _checked_image(image)
  return (image if image.dtype == np.uint8 else _to_uint8(image))[..., :3]


def _to_original(saliency: np.ndarray, box, shape) -> np.ndarray:
  """A model-input map [h, w] back over the original image [H, W] (0 outside ``box``)."""
  height, width = shape
  left, top, right, bottom = box
  # Pixel centres of the original image, in model-input pixel coordinates.
  size_y, size_x = saliency.shape
  xs = (np.arange(width) + 0.5 - left) / (right - left) * size_x - 0.5
  ys = (np.arange(height) + 0.5 - top) / (bottom - top) * size_y - 0.5
  inside = (((ys >= -0.5) & (ys <= size_y - 0.5))[:, None]
            & ((xs >= -0.5) & (xs <= size_x - 0.5)))
  x0 = np.clip(np.floor(xs), 0, size_x - 1).astype(int)
  y0 = np.clip(np.floor(ys), 0, size_y - 1).astype(int)
  x1, y1 = np.minimum(x0 + 1, size_x - 1), np.minimum(y0 + 1, size_y - 1)
  fx = np.clip(xs - x0, 0, 1)[None, :]
  fy = np.clip(ys - y0, 0, 1)[:, None]
  s = np.asarray(saliency, np.float32)
  top_row = s[y0][:, x0] * (1 - fx) + s[y0][:, x1] * fx
  bottom_row = s[y1][:, x0] * (1 - fx) + s[y1][:, x1] * fx
  return np.where(inside, top_row * (1 - fy) + bottom_row * fy, 0.0).astype(np.float32)


def show(explanations: Sequence[Explanation]):
  """For a notebook cell: the overlays (per image, the original then one overlay per method)
  as an inline PNG, or the shaded tokens of texts as inline HTML (IPython display objects)."""
  from IPython import display  # Notebooks only.
  if explanations and explanations[0].tokens is not None:
    return display.HTML(_token_page(explanations))
  figure = plotting.overlay_figure([e.image for e in explanations],
                                   [e.maps for e in explanations],
                                   [_caption(e) for e in explanations])
  buffer = io.BytesIO()
  plotting.save_figure(figure, buffer)
  return display.Image(data=buffer.getvalue(), format="png")


def _caption(e: Explanation) -> str:
  caption = f"{e.predicted_name} ({e.probability:.2f})"
  if e.target != e.predicted:
    caption += f", explaining {e.target_name}"
  return caption


def _token_page(explanations: Sequence[Explanation]) -> str:
  methods = list(explanations[0].maps)
  return plotting.token_html([e.tokens for e in explanations],
                             {m: _pad_rows([e.maps[m] for e in explanations]) for m in methods},
                             [_caption(e) for e in explanations])


def _pad_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
  out = np.zeros((len(rows), max(len(r) for r in rows)), np.float32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def write(explanations: Sequence[Explanation], out_dir: files.PathLike) -> files.PathLike:
  """Writes the explanations to ``out_dir``; returns the path of ``explanations.json``.

  Images: ``<name>.<method>.png`` (the map over the image, at the image's own size),
  ``<name>.png`` (a captioned figure: the image, then every method) and ``<name>.maps.npz``
  (method -> f32 [H, W]). Texts: ``texts.html`` (escaped, one shaded line
  per method) and ``texts.maps.npz`` (method -> f32 [N, T], 0-padded). ``explanations.json``
  lists, per input, the predicted class name and probability, the class explained and where
  its pictures and raw maps are.
  """
  out = files.workdir_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  entries = []
  if explanations and explanations[0].tokens is not None:
    files.write_text(out / "texts.html", _token_page(explanations))
    methods = list(explanations[0].maps)
    _save_npz(out / "texts.maps.npz",
              {m: _pad_rows([e.maps[m] for e in explanations]) for m in methods})
    for i, e in enumerate(explanations):
      entries.append({**e.summary(), "tokens": e.tokens, "page": "texts.html",
                      "maps": "texts.maps.npz", "row": i})
  else:
    names = _unique_names([e.source for e in explanations])
    for e, name in zip(explanations, names):
      figure = plotting.overlay_figure([e.image], [e.maps], [_caption(e)])
      plotting.save_figure(figure, out / f"{name}.png")
      overlays = {}
      for method, saliency in e.maps.items():
        overlays[method] = f"{name}.{method}.png"
        with files.atomic_open(out / overlays[method], "wb") as f:
          Image.fromarray(plotting.blend(e.image, saliency)).save(f, format="png")
      _save_npz(out / f"{name}.maps.npz", e.maps)
      entries.append({**e.summary(), "figure": f"{name}.png", "overlays": overlays,
                      "maps": f"{name}.maps.npz"})
  path = out / "explanations.json"
  files.write_text(path, json.dumps(entries, indent=2))
  return path


def _save_npz(path, arrays: dict[str, np.ndarray]) -> None:
  with files.atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


def _unique_names(sources: Sequence[str]) -> list[str]:
  """File stems, numbered where two inputs share one."""
  stems = [os.path.splitext(os.path.basename(s))[0].replace(" ", "_") or "image"
           for s in sources]
  return [stem if stems.count(stem) == 1 else f"{i:03d}_{stem}"
          for i, stem in enumerate(stems)]

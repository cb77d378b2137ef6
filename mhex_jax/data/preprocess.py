"""A Hugging Face checkpoint's own image preprocessing (``preprocessor_config.json``), in
numpy and PIL: what transformers' PIL image processors do, without transformers.

    processor = preprocess.ImageProcessor.from_pretrained(DIR)
    inputs, box = processor(image)    # uint8 [H, W, C] -> f32 [h, w, C], the part of it covered

The steps, each switched on by its ``do_*`` key:

1. resize (``do_resize``, ``size``, ``resample`` as PIL's filter number): ``{"height", "width"}``
   to that size; ``{"shortest_edge": s}`` keeping the aspect (the longer side
   ``int(s * long / short)``). ConvNeXT's processor (also ResNet's) with s < 384 resizes the
   shortest edge to ``int(s / crop_pct)`` and then crops the centred s × s; with s ≥ 384 it
   resizes to s × s;
2. centre crop (``do_center_crop``, ``crop_size``): top-left corner at ``((H - h) // 2,
   (W - w) // 2)``, zeros where the crop is larger than the image;
3. rescale (``do_rescale``, ``rescale_factor``);
4. normalize (``do_normalize``, ``image_mean``, ``image_std``).

Older files (``feature_extractor_type``) give ``size`` as one int: a square for ViT-like
processors, the shortest edge for those of ConvNeXT, BiT and CLIP, as transformers reads them.
An absent key takes transformers' default: resize, rescale (by 1/255) and normalize on,
``resample`` the family's (bicubic for ConvNeXT, BiT, CLIP, DeiT; bilinear otherwise), a centre
crop when ``crop_size`` is given; ``image_mean`` and ``image_std`` must be given when
normalizing. Keys that would change the geometry in other ways (``longest_edge``,
``max_height``, ``do_pad``, ``crop_pct`` outside ConvNeXT) are refused with the key named.
"""

import dataclasses
import math
import os
import pathlib
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from mhex_jax.errors import DataError
from mhex_jax.weights import hf_import

PROCESSOR_FILE = "preprocessor_config.json"
BILINEAR, BICUBIC = 2, 3  # PIL's (and transformers' PILImageResampling) numbers.
_RESAMPLES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Processor family -> (an int ``size`` is the shortest edge, ``resample`` when unset).
_FAMILIES = {"ConvNext": (True, BICUBIC), "Bit": (True, BICUBIC), "CLIP": (True, BICUBIC),
             "DeiT": (False, BICUBIC)}
_DEFAULT_FAMILY = (False, BILINEAR)
_CONVNEXT_WARP_SIZE = 384  # ConvNeXT warps to a square from this shortest edge on.
_SUFFIXES = ("ImageProcessorFast", "ImageProcessorPil", "ImageProcessor", "FeatureExtractor")
_UNSUPPORTED_SIZE_KEYS = ("longest_edge", "max_height", "max_width")


@dataclasses.dataclass(frozen=True)
class Resize:
  """To ``(height, width)``, or with the shortest edge to ``shortest_edge``."""
  height: Optional[int] = None
  width: Optional[int] = None
  shortest_edge: Optional[int] = None

  def output_size(self, height: int, width: int) -> tuple[int, int]:
    if self.shortest_edge is None:
      return self.height, self.width
    short, long = sorted((height, width))
    other = int(self.shortest_edge * long / short)
    return (self.shortest_edge, other) if height <= width else (other, self.shortest_edge)


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
  """A checkpoint's image preprocessing (see the module docstring).

  Attributes:
    resize: the resize, or None.
    resample: PIL's filter number of the resize.
    crops: (height, width) of each centred crop, in order (ConvNeXT's, then ``crop_size``).
    rescale_factor: the factor of the rescale, or None.
    mean, std: per-channel statistics of the normalisation (after the rescale), or None.
    source: the file it was read from, for messages.
  """
  resize: Optional[Resize]
  resample: int
  crops: tuple[tuple[int, int], ...]
  rescale_factor: Optional[float]
  mean: Optional[tuple[float, ...]]
  std: Optional[tuple[float, ...]]
  source: str = ""

  @classmethod
  def from_pretrained(cls, checkpoint_dir: str | os.PathLike) -> "ImageProcessor":
    """The processor described by ``checkpoint_dir/preprocessor_config.json``."""
    path = pathlib.Path(checkpoint_dir) / PROCESSOR_FILE
    if not path.is_file():
      raise DataError(
          f"No {PROCESSOR_FILE} in {checkpoint_dir}: an image model's size, crop and mean/std "
          "are not guessed. Save the checkpoint's processor beside it "
          f"(AutoImageProcessor.from_pretrained(NAME).save_pretrained('{checkpoint_dir}')) or "
          f"write one, e.g. {{\"size\": {{\"height\": 224, \"width\": 224}}, \"image_mean\": "
          "[0.5, 0.5, 0.5], \"image_std\": [0.5, 0.5, 0.5]}.")
    settings = hf_import.read_json(path)
    return cls.from_dict(settings, str(path))

  @classmethod
  def from_dict(cls, settings: dict[str, Any], source: str = "the settings") -> "ImageProcessor":
    """The processor of a ``preprocessor_config.json``'s content (named ``source`` in errors)."""
    family = _family(settings)
    int_is_shortest, default_resample = _FAMILIES.get(family, _DEFAULT_FAMILY)
    if settings.get("do_pad"):
      raise DataError(f"{source} sets do_pad=true, which explaining does not support; set it "
                      "to false (classifiers take one fixed size).")
    if settings.get("crop_pct") is not None and family != "ConvNext":
      raise DataError(f"{source}: crop_pct is read for ConvNeXT processors only, not "
                      f"{family or 'this one'}; remove it or resize and crop with size and "
                      "crop_size.")
    resample = settings.get("resample", default_resample)
    if resample not in _RESAMPLES:
      raise DataError(f"{source}: resample={resample!r} is no PIL filter; use one of "
                      f"{_RESAMPLES} (numbers).")
    resize, crops = None, []
    if settings.get("do_resize", True):
      size = _size(settings.get("size"), "size", source, int_is_shortest)
      resize, crops = _family_resize(family, size, settings, source)
    if settings.get("do_center_crop", "crop_size" in settings):
      crop = _size(settings.get("crop_size"), "crop_size", source, False)
      if crop.shortest_edge is not None:
        raise DataError(f"{source}: crop_size must be {{\"height\", \"width\"}}, got "
                        f"{settings.get('crop_size')!r}.")
      crops.append((crop.height, crop.width))
    rescale = None
    if settings.get("do_rescale", True):
      rescale = _positive(settings.get("rescale_factor", 1 / 255), "rescale_factor", source)
    mean, std = _normalization(settings, source)
    return cls(resize, int(resample), tuple(crops), rescale, mean, std, source)

  @property
  def output_size(self) -> Optional[tuple[int, int]]:
    """(height, width) of every output, or None when it follows each image's aspect."""
    if self.crops:
      return self.crops[-1]
    if self.resize is not None and self.resize.shortest_edge is None:
      return self.resize.height, self.resize.width
    return None

  def __call__(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """uint8 [H, W, C] -> (f32 [h, w, C], (left, top, right, bottom)): the model input and the
    box of the original image it covers, in its pixel coordinates (beyond the image where a
    crop padded)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
      raise DataError(f"images must be uint8 [H, W, C], got {image.dtype}{list(image.shape)}.")
    # The original coordinates of the current array: offset + index * scale, per (y, x).
    offset, scale = np.zeros(2), np.ones(2)
    if self.resize is not None:
      height, width = self.resize.output_size(*image.shape[:2])
      scale *= np.asarray(image.shape[:2]) / (height, width)
      image = _pil_resize(image, height, width, self.resample)
    for crop in self.crops:
      image, corner = _centre_crop(image, crop)
      offset += np.asarray(corner) * scale
    out = image.astype(np.float64) * self.rescale_factor if self.rescale_factor else image
    out = out.astype(np.float32)
    if self.mean is not None:
      if len(self.mean) not in (1, out.shape[-1]):
        raise DataError(f"{self.source}: image_mean has {len(self.mean)} entries but the "
                        f"images have {out.shape[-1]} channels.")
      out = (out - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
    bottom, right = offset + np.asarray(out.shape[:2]) * scale
    return out, (float(offset[1]), float(offset[0]), float(right), float(bottom))


def _family(settings: dict[str, Any]) -> str:
  """"ConvNext" of "ConvNextImageProcessor", "ConvNextFeatureExtractor", ..."""
  name = str(settings.get("image_processor_type") or settings.get("feature_extractor_type") or "")
  for suffix in _SUFFIXES:
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return name


def _size(value, key: str, source: str, int_is_shortest: bool) -> Resize:
  if isinstance(value, int) and not isinstance(value, bool) and value > 0:
    return Resize(shortest_edge=value) if int_is_shortest else Resize(value, value)
  if isinstance(value, dict):
    unsupported = sorted(set(value) & set(_UNSUPPORTED_SIZE_KEYS))
    if unsupported:
      raise DataError(f"{source}: {key} {value!r} sets {unsupported}, which explaining does "
                      "not support; use {\"height\", \"width\"} or {\"shortest_edge\"}.")
    if set(value) == {"shortest_edge"} and _is_size(value["shortest_edge"]):
      return Resize(shortest_edge=value["shortest_edge"])
    if set(value) == {"height", "width"} and all(_is_size(v) for v in value.values()):
      return Resize(value["height"], value["width"])
  raise DataError(f"{source}: {key}={value!r}; give {{\"height\": H, \"width\": W}}, "
                  "{\"shortest_edge\": S} or one positive int.")


def _is_size(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _family_resize(family: str, size: Resize, settings: dict[str, Any],
                   source: str) -> tuple[Resize, list[tuple[int, int]]]:
  """The resize, and the crop ConvNeXT's resize ends with."""
  if family != "ConvNext":
    return size, []
  edge = size.shortest_edge
  if edge is None:
    raise DataError(f"{source}: a ConvNeXT processor's size must be {{\"shortest_edge\": S}}, "
                    f"got {settings.get('size')!r}.")
  if edge >= _CONVNEXT_WARP_SIZE:
    return Resize(edge, edge), []
  crop_pct = settings.get("crop_pct")
  crop_pct = 224 / 256 if crop_pct is None else _positive(crop_pct, "crop_pct", source)
  return Resize(shortest_edge=int(edge / crop_pct)), [(edge, edge)]


def _positive(value, key: str, source: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      math.isfinite(value) and value > 0):
    raise DataError(f"{source}: {key}={value!r} must be a positive number.")
  return float(value)


def _normalization(settings: dict[str, Any], source: str) -> tuple[Any, Any]:
  """(image_mean, image_std) per channel, or (None, None) without ``do_normalize``."""
  if not settings.get("do_normalize", True):
    return None, None
  mean = _statistics(settings, "image_mean", source)
  std = _statistics(settings, "image_std", source)
  if len(mean) != len(std) or any(s <= 0 for s in std):
    raise DataError(f"{source}: image_mean {list(mean)} and image_std {list(std)} must have "
                    "one entry per channel each, the std's positive.")
  return mean, std


def _statistics(settings: dict[str, Any], key: str, source: str) -> tuple[float, ...]:
  value = settings.get(key)
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    value = [value]
  if not isinstance(value, Sequence) or not value or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
      for v in value):
    raise DataError(f"{source}: do_normalize needs {key} (one number per channel), got "
                    f"{value!r}; add it, e.g. \"{key}\": [0.5, 0.5, 0.5].")
  return tuple(float(v) for v in value)


def _pil_resize(image: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [height, width, C] by PIL, as transformers resizes."""
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  resized = pil.resize((width, height), resample=resample, reducing_gap=None)
  return np.asarray(resized).reshape(height, width, channels)


def _centre_crop(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
  """The centred ``size`` crop of [H, W, C] (zeros beyond the image) and its corner (y, x)."""
  (height, width), (crop_h, crop_w) = image.shape[:2], size
  top, left = (height - crop_h) // 2, (width - crop_w) // 2
  out = np.zeros((crop_h, crop_w, image.shape[-1]), image.dtype)
  y0, x0 = max(top, 0), max(left, 0)
  y1, x1 = min(top + crop_h, height), min(left + crop_w, width)
  out[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
  return out, (top, left)

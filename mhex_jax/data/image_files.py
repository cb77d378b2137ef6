"""Image files as they come: PNG, JPEG, TIFF and BMP through PIL, DICOM through pydicom, read as
float32 [H, W, C] in [0, 1] (C = 1 for grayscale, 3 for colour), with one rule for intensities.

    image = image_files.read_image("xray16.png", intensity="full_range")  # f32 [H, W, 1]
    mask = image_files.read_mask("xray16_mask.png")                         # bool [H, W]

The intensity rule is the config field ``data.intensity`` (one of ``INTENSITY_MODES``), the same
in training, evaluation and ``explain.py``:

- ``"full_range"`` (default): pixels divided by the full range of their type, so nothing is
  clipped and every file of a type gets the same scale. 8-bit: /255. 16-bit (PIL modes I;16*):
  /65535, so a 16-bit file that is an 8-bit one ×257 gives exactly the 8-bit one's float32
  values. 32-bit integers (PIL mode I, e.g. 16-bit PGM or 32-bit TIFF): taken as 16-bit, /65535;
  values outside 0..65535 are refused. Floats (TIFF mode F): taken as they are, so they must
  lie in [0, 1]; other floats are refused (``"min_max"`` reads them). DICOM: the range of the
  stored bits (BitsStored, signed or not) through the modality transform (RescaleSlope and
  RescaleIntercept, or the Modality LUT).
- ``"min_max"``: each image's own minimum..maximum stretched to 0..1 (all channels together, so
  colours keep their balance; a constant image gives zeros). DICOM: after the modality
  transform.
- ``"window"``: DICOM's VOI transform: the VOI LUT when the file has one, else its first
  WindowCenter/WindowWidth with its VOILUTFunction (LINEAR by default, PS3.3 C.11.2.1.2; or
  LINEAR_EXACT, SIGMOID), applied after the modality transform. A grayscale DICOM without
  either, and a colour DICOM (where no window applies), read as in ``"full_range"``, so the
  window-less files of a collection get one fixed scale. Other files are refused: they carry
  no window.

In every mode DICOM MONOCHROME1 (white is low) is inverted (1 − x), so that bright is high as
in MONOCHROME2. Alpha is dropped (not composited): the colour under a transparent pixel is
kept, as PIL's ``convert("RGB")`` and torchvision's ``ImageFolder`` do. Palette images become
RGB; 1-bit images 0 or 1. PIL reads 16-bit RGB PNG/TIFF at 8 bits per channel (the high byte):
full contrast, 8-bit precision. Files with several frames (multi-frame DICOM, multi-page TIFF,
animations) are refused rather than read in part.

Files are told by their content (DICOM by its "DICM" preamble, or a ``.dcm``/``.dicom`` name;
anything else is given to PIL), read whole (local paths or URIs, as ``files.workdir_path``
opens them), and never unpickled. Missing files raise ``FileNotFoundError``; empty, corrupt,
truncated or non-image files a ``DataError`` naming the path and what to do.
"""

import io
import os
from typing import Optional

import numpy as np
from PIL import Image
import pydicom
import pydicom.errors
from pydicom.multival import MultiValue
from pydicom.pixels import processing as dicom_processing

from mhex_jax import files
from mhex_jax.errors import DataError

INTENSITY_MODES = ("full_range", "min_max", "window")
# Lower-case suffixes of the files a collection reads (``read_image`` itself goes by content).
IMAGE_SUFFIXES = (".bmp", ".dcm", ".dicom", ".jpeg", ".jpg", ".png", ".tif", ".tiff")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_FORMATS = "PNG, JPEG, TIFF, BMP or DICOM"
# PIL modes of 8 bits per channel: read as L (grayscale) or converted to RGB.
_GRAY_8BIT = ("1", "L", "LA", "La")
_COLOUR_8BIT = ("P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")  # pydicom gives RGB.


def read_image(path: files.PathLike, *, intensity: str = "full_range") -> np.ndarray:
  """An image file as float32 [H, W, C] in [0, 1], C = 1 (grayscale) or 3 (colour).

  Args:
    path: a PNG, JPEG, TIFF, BMP (anything PIL reads) or DICOM file, local or a URI.
    intensity: how pixel values become [0, 1]: "full_range", "min_max" or "window" (the
      module's docstring says how each treats each kind of file).

  Raises:
    FileNotFoundError: nothing at ``path``.
    DataError: an unknown ``intensity``; an empty, corrupt, multi-frame or non-image file;
      pixels that ``intensity`` cannot map to [0, 1] without clipping ("full_range" on floats
      outside [0, 1]), or "window" on a file without a window. Each names the path and the fix.
  """
  check_intensity(intensity)
  data = _read_bytes(path)
  if _is_dicom(path, data):
    return _dicom_image(path, _open_dicom(path, data), intensity)
  pixels, full_range = _pil_pixels(path, _open_pil(path, data))
  if intensity == "window":
    raise DataError(f"{_name(path)} is not a DICOM file, so it has no window for "
                    "data.intensity='window'; use 'full_range' (or 'min_max') for PNG, JPEG "
                    "and TIFF files, or give DICOM files.")
  if intensity == "min_max":
    return _stretch(pixels)
  if pixels.dtype == np.float32:  # Floats are taken as they are.
    if pixels.size and (pixels.min() < 0 or pixels.max() > 1):
      raise DataError(f"{_name(path)} has float pixels in [{pixels.min():g}, {pixels.max():g}], "
                      "outside the [0, 1] that data.intensity='full_range' takes them in; use "
                      "data.intensity='min_max' (each image stretched to 0..1), or save the "
                      "file scaled to [0, 1] or as 16-bit integers.")
    return pixels
  if pixels.dtype == np.int32 and pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
    raise DataError(f"{_name(path)} has 32-bit integer pixels in [{pixels.min()}, "
                    f"{pixels.max()}], beyond the 16-bit range 0..65535 that "
                    "data.intensity='full_range' reads them in; use data.intensity='min_max', "
                    "or save the file as 16-bit.")
  # float32 division, as pipeline.normalize divides uint8 pixels: 257 v / 65535 and v / 255
  # are the same real number, so they round to the same float32.
  return pixels.astype(np.float32) / np.float32(full_range)


def read_mask(path: files.PathLike) -> np.ndarray:
  """A mask file as bool [H, W]: any nonzero pixel (in any channel) is the object.

  Any file ``read_image`` reads. Palette images count by palette index (index 0 is the
  background, as segmentation masks are stored); alpha is ignored; DICOM by its stored values.
  """
  data = _read_bytes(path)
  if _is_dicom(path, data):
    pixels = _dicom_pixels(path, _open_dicom(path, data))
  else:
    pil = _open_pil(path, data)
    if pil.mode in ("P", "PA"):
      pixels = np.asarray(pil)
      pixels = pixels[..., :1] if pixels.ndim == 3 else pixels[..., None]
    else:
      pixels = _pil_pixels(path, pil)[0]
  return np.any(pixels != 0, axis=-1)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, PIL's convert("L").

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in image pixels.


def centre_square(height: int, width: int) -> Box:
  """The centred square of side min(height, width)."""
  side = min(height, width)
  left, top = (width - side) / 2, (height - side) / 2
  return left, top, left + side, top + side


def fit_image(image: np.ndarray, size: int, channels: int, box: Optional[Box] = None, *,
              fill: Optional[np.ndarray] = None) -> np.ndarray:
  """An image's ``box`` (default the centred square) resampled to f32 [size, size, channels] in
  [0, 1] by PIL's antialiased bilinear filter: how training, evaluation and ``explain.py`` fit
  an image file to a model's input, so the three see the same pixels.

  Args:
    image: uint8 [H, W, C], or float [H, W, C] in [0, 1] as `read_image` gives; C in (1, 3, 4),
      alpha dropped. Values that are all v / 255 (8-bit files, and 16-bit ones that are 8-bit
      ones ×257) are fitted as their uint8 values, so both give exactly the 8-bit result;
      others (16-bit contrast) per channel in float32. Colour to gray by PIL's luma weights.
    size: the output side.
    channels: 1 or 3.
    box: the region read; it may reach outside the image when ``fill`` is given.
    fill: [channels] values in [0, 1] around the image (a box larger than the image: "pad");
      None reads inside the image only.
  """
  image = np.asarray(image)[..., :3]
  if image.dtype != np.uint8:
    levels = np.rint(image.astype(np.float32) * 255)
    if np.array_equal(levels / np.float32(255), image):
      image = levels.astype(np.uint8)
  box = centre_square(*image.shape[:2]) if box is None else box
  if image.dtype == np.uint8:
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    pil = pil.convert("L" if channels == 1 else "RGB")
    if fill is not None:
      colour = tuple(int(round(255 * v)) for v in fill)
      pil, box = _padded(pil, box, colour[0] if channels == 1 else colour)
    fitted = np.asarray(pil.resize((size, size), Image.BILINEAR, box=box))
    return fitted.reshape(size, size, channels).astype(np.float32) / np.float32(255)
  image = float_channels(image, channels)
  planes = []
  for c in range(channels):
    plane, crop = Image.fromarray(np.ascontiguousarray(image[..., c])), box  # Mode "F".
    if fill is not None:
      plane, crop = _padded(plane, box, float(fill[c]))
    planes.append(np.asarray(plane.resize((size, size), Image.BILINEAR, box=crop)))
  return np.stack(planes, axis=-1)


def float_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """float [H, W, C] -> float32 [H, W, channels]: alpha dropped, gray repeated, or colour to
  gray by PIL's convert("L") weights (ITU-R 601-2 luma)."""
  image = np.asarray(image, np.float32)[..., :3]
  if image.shape[-1] == channels:
    return image
  return np.repeat(image, 3, axis=-1) if channels == 3 else (image @ _LUMA)[..., None]


def fit_mask(mask: np.ndarray, size: int, box: Optional[Box] = None) -> np.ndarray:
  """bool [H, W] -> bool [size, size]: ``box`` as in `fit_image`, nearest neighbour."""
  box = centre_square(*mask.shape) if box is None else box
  pil = Image.fromarray(np.asarray(mask, np.uint8) * 255)
  return np.asarray(pil.resize((size, size), Image.NEAREST, box=box)) > 0


def _padded(pil: Image.Image, box: Box, colour) -> tuple[Image.Image, None]:
  """``pil`` pasted on a canvas of ``box``'s size filled with ``colour``; the canvas is the
  whole region then."""
  canvas = Image.new(pil.mode, (round(box[2] - box[0]), round(box[3] - box[1])), colour)
  canvas.paste(pil, (round(-box[0]), round(-box[1])))
  return canvas, None


def check_intensity(intensity: str) -> None:
  """Refuses an intensity mode that is not one of ``INTENSITY_MODES``."""
  if intensity not in INTENSITY_MODES:
    raise DataError(f"intensity (data.intensity) is {intensity!r}; use one of "
                    f"{', '.join(map(repr, INTENSITY_MODES))}.")


def _name(path: files.PathLike) -> str:
  return os.fspath(path)


def _read_bytes(path: files.PathLike) -> bytes:
  try:
    data = files.workdir_path(path).read_bytes()
  except FileNotFoundError:
    raise FileNotFoundError(f"Image file {_name(path)} does not exist.") from None
  except IsADirectoryError:
    raise DataError(f"{_name(path)} is a directory, not an image file; give the image files "
                    "in it.") from None
  except OSError as error:
    raise DataError(f"Image file {_name(path)} cannot be read ({error}); check its "
                    "permissions, or remove it.") from None
  if not data:
    raise DataError(f"Image file {_name(path)} is empty (0 bytes); export it again, or remove "
                    "it.")
  return data


def _is_dicom(path: files.PathLike, data: bytes) -> bool:
  return data[128:132] == b"DICM" or _name(path).lower().endswith(_DICOM_SUFFIXES)


def _stretch(pixels: np.ndarray) -> np.ndarray:
  """[H, W, C] -> float32 in [0, 1]: min..max to 0..1 over the whole image (0 if constant)."""
  pixels = pixels.astype(np.float64)
  low, high = pixels.min(), pixels.max()
  if not high > low:
    return np.zeros(pixels.shape, np.float32)
  return ((pixels - low) / (high - low)).astype(np.float32)


# PIL files.


def _open_pil(path: files.PathLike, data: bytes) -> Image.Image:
  try:
    pil = Image.open(io.BytesIO(data))
    pil.load()
  except Image.UnidentifiedImageError:
    raise DataError(f"{_name(path)} is not an image file that can be read (not a format PIL "
                    f"recognises, nor DICOM); give {_FORMATS} files, or remove it.") from None
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
    raise DataError(f"{_name(path)} is not an image file that can be read ({error}): it may "
                    "be truncated or corrupt; export it again, or remove it.") from None
  frames = getattr(pil, "n_frames", 1)
  if frames > 1:
    raise DataError(f"{_name(path)} holds {frames} frames (pages); one image per file is read: "
                    "export each frame as its own file.")
  return pil


def _pil_pixels(path: files.PathLike, pil: Image.Image) -> tuple[np.ndarray, float]:
  """The pixels as [H, W, C] (uint8, uint16, int32 or float32) and their type's full range."""
  mode = pil.mode
  if mode in _GRAY_8BIT:
    pixels, full_range = np.asarray(pil.convert("L")), 255.0
  elif mode in _COLOUR_8BIT:
    if mode == "P" and "transparency" in pil.info:
      pil = pil.convert("RGBA")  # PIL warns about a palette's transparency converted to RGB.
    pixels, full_range = np.asarray(pil.convert("RGB")), 255.0
  elif mode.startswith("I;16"):
    pixels, full_range = np.asarray(pil).astype(np.uint16), 65535.0  # Native byte order.
  elif mode == "I":
    pixels, full_range = np.asarray(pil, np.int32), 65535.0
  elif mode == "F":
    pixels, full_range = np.asarray(pil, np.float32), 1.0
    if not np.isfinite(pixels).all():
      raise DataError(f"{_name(path)} has {np.size(pixels) - np.isfinite(pixels).sum()} "
                      "non-finite pixels (NaN or infinity); fix or remove the file.")
  else:
    raise DataError(f"{_name(path)} has PIL mode {mode!r}, which is not read; save it as "
                    "8- or 16-bit grayscale, RGB or RGBA.")
  return (pixels[..., None] if pixels.ndim == 2 else pixels), full_range


# DICOM files.


def _open_dicom(path: files.PathLike, data: bytes) -> pydicom.Dataset:
  try:
    ds = pydicom.dcmread(io.BytesIO(data))
  except pydicom.errors.InvalidDicomError:
    raise DataError(f"{_name(path)} is named as DICOM but has no DICOM header ('DICM' at byte "
                    "128); export it again as a DICOM file, or remove it.") from None
  except Exception as error:  # A damaged file fails in many ways inside pydicom's parser.
    raise DataError(f"{_name(path)} is not a DICOM file that can be read ({error}); export it "
                    "again, or remove it.") from None
  frames = int(ds.get("NumberOfFrames") or 1)
  if frames > 1:
    raise DataError(f"{_name(path)} is a multi-frame DICOM of {frames} frames; one image per "
                    "file is read: export each frame as a single-frame DICOM (or PNG) file.")
  return ds


def _dicom_pixels(path: files.PathLike, ds: pydicom.Dataset) -> np.ndarray:
  """The stored values as [H, W, C] (colour as RGB, whatever the file's colour space)."""
  if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
    raise DataError(f"DICOM file {_name(path)} holds no pixel data: it is truncated, or not an "
                    "image (e.g. a report); export it again, or remove it.")
  kind = str(ds.get("PhotometricInterpretation", ""))
  if kind not in _MONOCHROME + _DICOM_COLOUR:
    raise DataError(f"{_name(path)} has PhotometricInterpretation {kind!r}, which is not read; "
                    f"export it as one of {', '.join(_MONOCHROME + ('RGB',))}.")
  try:
    pixels = ds.pixel_array  # Bits beyond BitsStored masked off; YBR converted to RGB.
  except Exception as error:  # pydicom raises many kinds; its message names missing decoders.
    raise DataError(f"The pixels of DICOM file {_name(path)} cannot be read ({error}): if the "
                    "file is truncated or corrupt, export it again; if it is compressed, "
                    "install the decoder named or export it uncompressed.") from None
  return pixels[..., None] if pixels.ndim == 2 else pixels


def _dicom_image(path: files.PathLike, ds: pydicom.Dataset, intensity: str) -> np.ndarray:
  pixels = _dicom_pixels(path, ds)
  if pixels.shape[-1] == 3:  # Colour: no modality or VOI transform applies.
    out = (_stretch(pixels) if intensity == "min_max"
           else pixels.astype(np.float64) / (2.0 ** int(ds.BitsStored) - 1))
    return out.astype(np.float32)
  if pixels.dtype.kind == "f":  # Float Pixel Data (parametric maps): no stored bit range.
    raise DataError(f"{_name(path)} holds float pixel data, which is not read; export it as "
                    "integer pixels with a rescale slope and intercept.")
  values = dicom_processing.apply_modality_lut(pixels, ds).astype(np.float64)
  if intensity == "min_max":
    out = _stretch(values)
  else:
    out = _dicom_window(path, ds, values) if intensity == "window" else None
    if out is None:
      low, high = _modality_range(ds)
      out = (values - low) / (high - low)
  if ds.PhotometricInterpretation == "MONOCHROME1":
    out = 1.0 - out
  return out.astype(np.float32)


def _modality_range(ds: pydicom.Dataset) -> tuple[float, float]:
  """The lowest and highest value the modality transform can give (PS3.3 C.11.1)."""
  if ds.get("ModalityLUTSequence"):
    return 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
  bits = int(ds.BitsStored)
  if int(ds.get("PixelRepresentation", 0)):
    ends = np.array([-2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1])
  else:
    ends = np.array([0.0, 2.0 ** bits - 1])
  if "RescaleSlope" in ds and "RescaleIntercept" in ds:
    ends = ends * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
  return float(ends.min()), float(ends.max())


def _dicom_window(path: files.PathLike, ds: pydicom.Dataset,
                  values: np.ndarray) -> Optional[np.ndarray]:
  """The VOI transform of the modality ``values`` into [0, 1]: the VOI LUT, else the first
  window (PS3.3 C.11.2.1.2 and C.11.2.1.3); None when the file has neither."""
  lut = ds.get("VOILUTSequence")
  if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
    depth = int(lut[0].LUTDescriptor[2])
    return dicom_processing.apply_voi(np.rint(values).astype(np.int64), ds) / (2.0 ** depth - 1)
  if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
    return None
  center, width = (_first(ds[key].value) for key in ("WindowCenter", "WindowWidth"))
  function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
  if function == "LINEAR":
    if width < 1:
      raise DataError(f"{_name(path)} has WindowWidth {width:g}, below the 1 a LINEAR window "
                      "needs; fix the file's window, or use data.intensity='full_range'.")
    center, width = center - 0.5, width - 1  # C.11.2.1.2.1
    if width == 0:  # A threshold: below or at the centre 0, above it 1.
      return (values > center).astype(np.float64)
    return np.clip((values - center) / width + 0.5, 0.0, 1.0)
  if width <= 0:
    raise DataError(f"{_name(path)} has WindowWidth {width:g}; a {function} window needs a "
                    "positive width: fix the file's window, or use data.intensity='full_range'.")
  if function == "LINEAR_EXACT":  # C.11.2.1.3.2
    return np.clip((values - center) / width + 0.5, 0.0, 1.0)
  if function == "SIGMOID":  # C.11.2.1.3.1
    return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
  raise DataError(f"{_name(path)} has VOILUTFunction {function!r}; LINEAR, LINEAR_EXACT and "
                  "SIGMOID are read: fix the file, or use data.intensity='full_range'.")


def _first(value) -> float:
  """A DICOM number, or the first of several (a multi-valued window's first view)."""
  if isinstance(value, (list, tuple, MultiValue)):
    value = value[0]
  return float(value)

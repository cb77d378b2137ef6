"""Image files as they come (mhex_jax.data.image_files): 8- and 16-bit PNG, JPEG, TIFF and DICOM
written here, their pixels against hand-computed values, the files refused with their paths, and
explain_lib on 16-bit files.

Bounds: float32 division is correctly rounded, so v / 255 and 257 v / 65535 (the same real) give
the same float32 on any IEEE machine; values computed here in float64 differ from the reader's
float32 by at most half an ulp (2^-24 relative), plus float64 rounding far below that.
"""

import struct
import zlib

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import SecondaryCaptureImageStorage
from PIL import Image
import pytest

from mhex_jax import config_lib
from mhex_jax import explain_lib
from mhex_jax import model_lib
from mhex_jax.data import image_files
from mhex_jax.errors import ConfigError, DataError
from configs import default

F32 = 2.0 ** -24  # float32's unit roundoff: the relative error of one rounding to float32.


def _gradient(height=12, width=10, low=0, high=255):
  """uint8-valued [H, W] from ``low`` to ``high``, every row different."""
  return np.linspace(low, high, height * width).round().astype(np.int64).reshape(height, width)


def _rgb(height=12, width=10):
  g = _gradient(height, width)
  return np.stack([g, 255 - g, (g * 7) % 256], axis=-1).astype(np.uint8)


def _png16_rgb(path, rgb16: np.ndarray):
  """A 16-bit RGB PNG, written by hand (PIL does not write them)."""
  height, width, _ = rgb16.shape
  rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

  path.write_bytes(b"\x89PNG\r\n\x1a\n"
                   + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _dicom(path, stored: np.ndarray, photometric="MONOCHROME2", bits=12, **elements):
  """A DICOM file (explicit VR little endian, with file meta) of ``stored`` pixels."""
  ds = Dataset()
  ds.file_meta = FileMetaDataset()
  ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  ds.SOPClassUID = SecondaryCaptureImageStorage
  ds.set_pixel_data(stored, photometric, bits)
  for key, value in elements.items():
    setattr(ds, key, value)
  ds.save_as(path, enforce_file_format=True)
  return path


# 8-bit files.


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1"])
def test_8bit_png_reads_as_value_over_255(tmp_path, mode):
  rgb = _rgb()
  if mode in ("L", "LA"):
    pixels = rgb[..., :1].astype(np.uint8)
    image = Image.fromarray(pixels[..., 0]).convert(mode)
  elif mode == "1":
    pixels = np.where(_gradient() > 100, 255, 0).astype(np.uint8)[..., None]
    image = Image.fromarray(pixels[..., 0]).convert("1")
  elif mode == "P":
    palette = np.stack([np.arange(8) * 30, 255 - np.arange(8) * 30, np.arange(8) * 5], -1)
    indices = (_gradient() % 8).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    pixels = palette[indices]
  else:
    pixels = rgb
    image = Image.fromarray(rgb)
    if mode == "RGBA":  # Alpha 0 in half the image: the colour under it is kept (dropped).
      alpha = np.where(_gradient() > 127, 255, 0).astype(np.uint8)
      image = Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1))
  image.save(tmp_path / "a.png")
  out = image_files.read_image(tmp_path / "a.png")
  assert out.dtype == np.float32 and out.shape == (12, 10, pixels.shape[-1])
  np.testing.assert_array_equal(out, pixels.astype(np.float32) / np.float32(255))
  if mode == "1":
    assert set(np.unique(out)) == {0.0, 1.0}


def test_jpeg_reads_as_its_decoded_values(tmp_path):
  for name, array in (("gray.jpg", _rgb()[..., 0]), ("colour.jpg", _rgb())):
    Image.fromarray(array).save(tmp_path / name, quality=90)
    decoded = np.asarray(Image.open(tmp_path / name))
    out = image_files.read_image(tmp_path / name)
    assert out.shape == (12, 10, 1 if array.ndim == 2 else 3)
    np.testing.assert_array_equal(out, decoded.reshape(out.shape).astype(np.float32) / 255)


# 16-bit and float files.


def test_16bit_png_above_255_keeps_its_contrast_and_equals_the_8bit_original(tmp_path):
  original = _gradient(low=1, high=255).astype(np.uint8)  # ×257: every value 257..65535.
  Image.fromarray(original).save(tmp_path / "8.png")
  Image.fromarray((original.astype(np.uint16) * 257)).save(tmp_path / "16.png")
  assert Image.open(tmp_path / "16.png").mode == "I;16"
  out = image_files.read_image(tmp_path / "16.png")
  assert out.shape == (12, 10, 1)
  np.testing.assert_array_equal(out, image_files.read_image(tmp_path / "8.png"))
  assert out.min() == np.float32(1 / 255) and out.max() == 1.0  # Not white: its full range.
  # The 16-bit values themselves, over 65535.
  np.testing.assert_allclose(out[..., 0], original * 257.0 / 65535, rtol=F32, atol=0)
  stretched = image_files.read_image(tmp_path / "16.png", intensity="min_max")
  assert stretched.min() == 0 and stretched.max() == 1
  np.testing.assert_allclose(stretched[..., 0], (original - 1.0) / 254, rtol=0, atol=4 * F32)


def test_16bit_rgb_png_keeps_its_contrast_at_8_bits(tmp_path):
  rgb = _rgb()
  _png16_rgb(tmp_path / "rgb16.png", rgb.astype(np.uint16) * 257)
  out = image_files.read_image(tmp_path / "rgb16.png")
  np.testing.assert_array_equal(out, rgb.astype(np.float32) / np.float32(255))


def test_16bit_tiff_either_byte_order(tmp_path):
  values = _gradient(low=300, high=65000)
  Image.fromarray(values.astype(np.uint16)).save(tmp_path / "little.tif")
  Image.frombytes("I;16B", (10, 12), values.astype(">u2").tobytes()).save(tmp_path / "big.tif")
  assert Image.open(tmp_path / "big.tif").mode == "I;16B"
  for name in ("little.tif", "big.tif"):
    out = image_files.read_image(tmp_path / name)
    np.testing.assert_allclose(out[..., 0], values / 65535, rtol=F32, atol=0)
    stretched = image_files.read_image(tmp_path / name, intensity="min_max")
    np.testing.assert_allclose(stretched[..., 0], (values - 300) / 64700, rtol=0, atol=4 * F32)


def test_float_tiff_full_range_only_in_unit_interval(tmp_path):
  unit = (_gradient() / 255).astype(np.float32)
  Image.fromarray(unit).save(tmp_path / "unit.tif")
  np.testing.assert_array_equal(image_files.read_image(tmp_path / "unit.tif")[..., 0], unit)
  hounsfield = (unit * 2000 - 1000).astype(np.float32)
  Image.fromarray(hounsfield).save(tmp_path / "hu.tif")
  with pytest.raises(DataError, match=r"hu\.tif has float pixels in \[-1000, 1000\].*'min_max'"):
    image_files.read_image(tmp_path / "hu.tif")
  stretched = image_files.read_image(tmp_path / "hu.tif", intensity="min_max")
  np.testing.assert_allclose(stretched[..., 0], (hounsfield + 1000.0) / 2000, rtol=0,
                             atol=4 * F32)
  unit[0, 0] = np.nan
  Image.fromarray(unit).save(tmp_path / "nan.tif")
  with pytest.raises(DataError, match=r"nan\.tif has 1 non-finite pixels"):
    image_files.read_image(tmp_path / "nan.tif", intensity="min_max")


def test_32bit_integer_tiff(tmp_path):
  values = _gradient(low=0, high=60000).astype(np.int32)
  Image.fromarray(values).save(tmp_path / "i.tif")
  np.testing.assert_allclose(image_files.read_image(tmp_path / "i.tif")[..., 0],
                             values / 65535, rtol=F32, atol=0)
  Image.fromarray(values * 10).save(tmp_path / "wide.tif")
  with pytest.raises(DataError, match=r"wide\.tif has 32-bit integer pixels in \[0, 600000\]"):
    image_files.read_image(tmp_path / "wide.tif")
  assert image_files.read_image(tmp_path / "wide.tif", intensity="min_max").max() == 1


def test_constant_image_stretches_to_zeros(tmp_path):
  Image.fromarray(np.full((5, 6), 40000, np.uint16)).save(tmp_path / "flat.png")
  out = image_files.read_image(tmp_path / "flat.png", intensity="min_max")
  assert out.shape == (5, 6, 1) and not out.any() and np.isfinite(out).all()


# DICOM.

# 12-bit stored values; with slope 2 and intercept -1000 the modality values are
# -1000, -200, -100, 0, 400, 7190 (the most a 12-bit pixel gives).
STORED = np.array([[0, 400, 450], [500, 700, 4095]], np.uint16)
MODALITY = 2.0 * STORED - 1000


def _linear_window(x, center, width):
  """PS3.3 C.11.2.1.2.1 into [0, 1], written out."""
  if x <= center - 0.5 - (width - 1) / 2:
    return 0.0
  if x > center - 0.5 + (width - 1) / 2:
    return 1.0
  return (x - (center - 0.5)) / (width - 1) + 0.5


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_dicom_rescale_then_window_then_monochrome1_inverted(tmp_path, photometric):
  path = _dicom(tmp_path / "ct.dcm", STORED, photometric, RescaleSlope=2, RescaleIntercept=-1000,
                WindowCenter=[0, 40], WindowWidth=[401, 80])  # Two windows: the first is used.
  window = np.array([[0.0, (-200 + 0.5) / 400 + 0.5, (-100 + 0.5) / 400 + 0.5],
                     [0.5 + 0.5 / 400, 1.0, 1.0]])
  np.testing.assert_allclose(window, np.vectorize(_linear_window)(MODALITY, 0, 401))
  full = STORED / 4095  # (modality - (-1000)) / (7190 - (-1000)): the stored bits' range.
  stretched = (MODALITY + 1000) / 8190  # This image's own min and max happen to be the ends.
  flip = (lambda x: 1 - x) if photometric == "MONOCHROME1" else (lambda x: x)
  for intensity, expected in (("window", window), ("full_range", full),
                              ("min_max", stretched)):
    out = image_files.read_image(path, intensity=intensity)
    assert out.dtype == np.float32 and out.shape == (2, 3, 1)
    np.testing.assert_allclose(out[..., 0], flip(expected), rtol=0, atol=4 * F32,
                               err_msg=intensity)
  # Without a window, "window" reads the stored bits' full range.
  plain = _dicom(tmp_path / "plain.dcm", STORED, photometric, RescaleSlope=2,
                 RescaleIntercept=-1000)
  np.testing.assert_array_equal(image_files.read_image(plain, intensity="window"),
                                image_files.read_image(plain))


def test_dicom_window_functions_and_voi_lut(tmp_path):
  values = np.array([[0, 10, 20, 30]], np.uint16)
  exact = _dicom(tmp_path / "exact.dcm", values, WindowCenter=15, WindowWidth=20,
                 VOILUTFunction="LINEAR_EXACT")
  np.testing.assert_allclose(image_files.read_image(exact, intensity="window")[0, :, 0],
                             [0.0, 0.25, 0.75, 1.0], rtol=0, atol=F32)
  sigmoid = _dicom(tmp_path / "sigmoid.dcm", values, WindowCenter=15, WindowWidth=20,
                   VOILUTFunction="SIGMOID")
  np.testing.assert_allclose(image_files.read_image(sigmoid, intensity="window")[0, :, 0],
                             1 / (1 + np.exp(-4 * (values[0] - 15.0) / 20)), rtol=2 * F32)
  # A VOI LUT (preferred to a window): values below the first mapped one take the first entry,
  # beyond the last the last; 8-bit entries over 255.
  ds = Dataset()
  ds.add_new("LUTDescriptor", "US", [4, 1, 8])
  ds.add_new("LUTData", "US", [10, 20, 30, 255])
  lut = _dicom(tmp_path / "lut.dcm", np.array([[0, 1, 2], [3, 4, 5]], np.uint16),
               VOILUTSequence=[ds], WindowCenter=1, WindowWidth=1)
  np.testing.assert_allclose(image_files.read_image(lut, intensity="window")[..., 0],
                             np.array([[10, 10, 20], [30, 255, 255]]) / 255, rtol=F32)


def test_signed_and_rgb_dicom(tmp_path):
  signed = _dicom(tmp_path / "signed.dcm", np.array([[-2048, 0, 2047]], np.int16), bits=12)
  np.testing.assert_allclose(image_files.read_image(signed)[0, :, 0],
                             [0.0, 2048 / 4095, 1.0], rtol=F32)
  rgb = _rgb()
  path = _dicom(tmp_path / "rgb.dcm", rgb, "RGB", bits=8)
  for intensity in ("full_range", "window"):  # No window applies to colour.
    np.testing.assert_array_equal(image_files.read_image(path, intensity=intensity),
                                  rgb.astype(np.float32) / np.float32(255))


def test_multiframe_dicom_and_tiff_are_refused(tmp_path):
  path = _dicom(tmp_path / "cine.dcm", np.zeros((3, 4, 5), np.uint16))
  assert int(pydicom.dcmread(path).NumberOfFrames) == 3
  with pytest.raises(DataError, match=r"cine\.dcm is a multi-frame DICOM of 3 frames.*export "
                     r"each frame as a single-frame DICOM"):
    image_files.read_image(path)
  frames = [Image.fromarray(np.full((4, 5), v, np.uint8)) for v in (0, 9)]
  frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
  with pytest.raises(DataError, match=r"stack\.tif holds 2 frames"):
    image_files.read_image(tmp_path / "stack.tif")


@pytest.mark.filterwarnings("ignore:End of file reached")  # pydicom, on junk.dcm.
def test_unreadable_files_are_named(tmp_path):
  Image.fromarray(_rgb()).save(tmp_path / "good.png")
  (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
  (tmp_path / "notes.txt").write_text("not an image\n")
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "junk.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 20)
  (tmp_path / "header.dcm").write_bytes(b"not DICOM at all")
  whole = _dicom(tmp_path / "whole.dcm", STORED).read_bytes()
  (tmp_path / "cut.dcm").write_bytes(whole[:-5])  # Within the pixel data.
  (tmp_path / "folder.png").mkdir()
  cases = {"cut.png": "is not an image file that can be read",
           "notes.txt": "is not an image file that can be read",
           "empty.png": "is empty",
           "junk.dcm": "holds no pixel data",
           "header.dcm": "has no DICOM header",
           "cut.dcm": "cannot be read",
           "folder.png": "is a directory"}
  for name, text in cases.items():
    with pytest.raises(DataError) as error:
      image_files.read_image(tmp_path / name)
    assert str(tmp_path / name) in str(error.value) and text in str(error.value), error.value
  with pytest.raises(FileNotFoundError, match=r"Image file .*nope\.png does not exist"):
    image_files.read_image(tmp_path / "nope.png")


def test_intensity_modes_are_checked(tmp_path):
  Image.fromarray(_rgb()).save(tmp_path / "a.png")
  with pytest.raises(DataError, match=r"'contrast'; use one of 'full_range', 'min_max', "
                     r"'window'"):
    image_files.read_image(tmp_path / "a.png", intensity="contrast")
  with pytest.raises(DataError, match=r"a\.png is not a DICOM file, so it has no window.*"
                     r"use 'full_range'"):
    image_files.read_image(tmp_path / "a.png", intensity="window")
  # The config field takes the same values, checked before any data is read.
  assert config_lib._CHOICES["data.intensity"] == image_files.INTENSITY_MODES
  config = default.get_config()
  assert config.data.intensity == "full_range"
  config.data.intensity = "windw"
  with pytest.raises(ConfigError, match=r"data\.intensity='windw' must be one of .*did you "
                     r"mean 'window'"):
    config_lib.validate(config)


def test_image_suffixes():
  assert ".dcm" in image_files.IMAGE_SUFFIXES and ".png" in image_files.IMAGE_SUFFIXES
  assert all(s.startswith(".") and s == s.lower() for s in image_files.IMAGE_SUFFIXES)


def test_masks_any_nonzero_pixel(tmp_path):
  inside = np.zeros((6, 7), bool)
  inside[1:4, 2:6] = True
  Image.fromarray(inside.astype(np.uint8) * 255).save(tmp_path / "l.png")
  Image.fromarray(inside.astype(np.uint16) * 1000).save(tmp_path / "16.png")
  rgb = np.zeros((6, 7, 3), np.uint8)
  rgb[inside, 1] = 1  # Any channel counts.
  Image.fromarray(rgb).save(tmp_path / "rgb.png")
  palette = Image.fromarray(inside.astype(np.uint8), mode="P")
  palette.putpalette([0, 0, 0] * 2)  # Both indices black: the index counts, not the colour.
  palette.save(tmp_path / "p.png")
  _dicom(tmp_path / "m.dcm", inside.astype(np.uint16), bits=8)
  for name in ("l.png", "16.png", "rgb.png", "p.png", "m.dcm"):
    mask = image_files.read_mask(tmp_path / name)
    assert mask.dtype == bool and mask.shape == (6, 7), name
    np.testing.assert_array_equal(mask, inside, err_msg=name)


# explain_lib.


def _run(channels=3):
  config = default.get_config()
  config.model.width = 4
  config.model.input_channels = channels
  config.data.image_size = 16
  config.data.mean, config.data.std = (0.4,) * channels, (0.3,) * channels
  return explain_lib.Run(config, model_lib.create_model(config), None, "")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("fit", explain_lib.FITS)
def test_explain_model_input_of_8bit_files_is_unchanged(tmp_path, channels, fit):
  """What explain.py did before it read 16-bit files: PIL's L or RGB, uint8, then fitting."""
  run = _run(channels)
  Image.fromarray(_rgb(30, 20)).save(tmp_path / "rgb.png")
  Image.fromarray(_rgb(30, 20)[..., 0]).save(tmp_path / "gray.png")
  for name in ("rgb.png", "gray.png"):
    pil = Image.open(tmp_path / name)
    before = np.asarray(pil.convert("L" if pil.mode == "L" else "RGB"))
    expected, expected_box = run.prepare_image(before, fit)
    fitted, box = run.prepare_image(explain_lib.read_image(tmp_path / name), fit)
    np.testing.assert_array_equal(fitted, expected)
    assert box == expected_box


@pytest.mark.parametrize("fit", explain_lib.FITS)
def test_explain_reads_16bit_files_with_their_contrast(tmp_path, fit):
  run = _run(1)
  original = _gradient(30, 20, low=1, high=255).astype(np.uint8)
  Image.fromarray(original).save(tmp_path / "8.png")
  Image.fromarray(original.astype(np.uint16) * 257).save(tmp_path / "x257.png")
  # A 16-bit file that is its 8-bit original ×257 gives the model exactly the same input.
  fitted, box = run.prepare_image(explain_lib.read_image(tmp_path / "x257.png"), fit)
  expected, expected_box = run.prepare_image(explain_lib.read_image(tmp_path / "8.png"), fit)
  np.testing.assert_array_equal(fitted, expected)
  assert box == expected_box
  # Any other 16-bit file, all above 255: its full contrast, fitted in float32.
  values = _gradient(16, 16, low=300, high=65000)
  Image.fromarray(values.astype(np.uint16)).save(tmp_path / "16.png")
  image = explain_lib.read_image(tmp_path / "16.png")
  fitted, _ = run.prepare_image(image, fit)
  pixels = fitted[..., 0] * 0.3 + 0.4  # Undo the normalisation.
  if fit != "pad":  # A 16 px image fitted to 16 px: resampling is the identity.
    np.testing.assert_allclose(pixels, values / 65535, rtol=0, atol=1e-6)
  assert pixels.min() < 0.01 and pixels.max() > 0.99
  display = explain_lib._display_image(image)
  assert display.dtype == np.uint8 and display.min() == 1 and display.max() == 253


def test_explain_files_use_the_configs_intensity(tmp_path):
  Image.fromarray(_rgb()).save(tmp_path / "a.png")
  run = _run()
  assert run.intensity == "full_range"
  run.config.data.intensity = "window"
  run = explain_lib.Run(run.config, run.model, None, "")
  with pytest.raises(DataError, match=r"a\.png is not a DICOM file"):
    run.explain_files([str(tmp_path / "a.png")])

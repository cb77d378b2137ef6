"""MedMNIST from the official ``.npz`` files (MedMNIST v2 / MedMNIST+ at 28, 64, 128 or 224 px).

A file holds ``{split}_images`` (uint8 [N, H, W] grayscale or [N, H, W, 3] RGB) and
``{split}_labels`` (integer [N, 1]) for split in train, val, test. Only single-label subsets
are supported: multi-label files such as ChestMNIST ([N, 14] labels) are rejected.

Nothing is downloaded here: pass the path of a file on disk.
"""

import os
import zipfile

import numpy as np

from mhex_jax.errors import DataError

SPLITS = ("train", "val", "test")

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # An .npz is a zip archive of .npy files.
_NPY_MAGIC = b"\x93NUMPY"

_HOW_TO_GET = ("get the official <subset>.npz (e.g. pneumoniamnist.npz) from "
               "https://medmnist.com (hosted on Zenodo) or with the `medmnist` package "
               "(download=True), and pass its path")
_EXPECTED = ("expected a file written by np.savez with keys train_images/train_labels "
             "(and val_*/test_*): uint8 images [N, H, W] or [N, H, W, 3], integer labels [N, 1] "
             "(see mhex_jax/data/medmnist.py)")


def available_splits(path: str | os.PathLike) -> list[str]:
  """The splits of ``SPLITS`` the file holds images and labels for, in that order."""
  with _open(path) as npz:
    return _splits(npz, path)


def num_classes_in(path: str | os.PathLike) -> int:
  """Largest label over all the file's non-empty splits, plus one."""
  with _open(path) as npz:
    splits = _splits(npz, path)
    filled = [split for split in splits if _read(npz, path, f"{split}_labels").size]
    if not filled:
      raise DataError(f"{os.fspath(path)}: every split ({', '.join(splits)}) is empty (0 "
                      f"labels); {_HOW_TO_GET}.")
    return max(int(_labels(npz, path, split, None).max()) + 1 for split in filled)


def load_medmnist(path: str | os.PathLike, split: str, *,
                  as_rgb: bool = False) -> dict[str, np.ndarray]:
  """Loads one split.

  Args:
    path: an official MedMNIST ``.npz`` file.
    split: "train", "val" or "test" (whichever the file holds).
    as_rgb: repeat grayscale images to 3 channels (for backbones built for RGB); RGB files
      stay as they are.

  Returns:
    {"image": uint8 [N, H, W, C] with C = 1 (gray) or 3, "label": int32 [N]}.
  """
  with _open(path) as npz:
    splits = _splits(npz, path)
    if split not in splits:
      raise DataError(f"split {split!r} is not in {os.fspath(path)}; it holds {splits}.")
    images = _images(npz, path, split)
    if not len(images):
      raise DataError(f"{os.fspath(path)}: the {split!r} split is empty ('{split}_images' has "
                      f"shape {list(images.shape)}); pick a split with examples "
                      f"(data.train_split / data.eval_split; the file holds {splits}), or "
                      f"re-create the file with examples in '{split}_images' and "
                      f"'{split}_labels'.")
    labels = _labels(npz, path, split, len(images))
  if images.ndim == 3:
    images = images[..., None]
  if as_rgb and images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return {"image": images, "label": labels}


def _open(path):
  name = os.fspath(path)
  if os.path.isdir(path):
    found = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
    shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
    inside = f" (it holds {shown})" if found else ""
    raise FileNotFoundError(f"MedMNIST path {name} is a directory, not an .npz file{inside}; "
                            "pass the path of the .npz file itself.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"MedMNIST file {name} does not exist; {_HOW_TO_GET}.")
  try:
    with open(path, "rb") as f:
      start = f.read(len(_NPY_MAGIC))
  except PermissionError as e:
    raise DataError(f"MedMNIST file {name} cannot be read: permission denied; make it "
                    f"readable (e.g. chmod a+r {name}).") from e
  if start.startswith(_NPY_MAGIC):
    raise DataError(f"{name} holds a single array (.npy), not an .npz archive of splits; "
                    f"{_EXPECTED}; {_HOW_TO_GET}.")
  if start[:4] not in _ZIP_MAGICS:
    # np.load would take it for a pickle and advise allow_pickle=True: pickles are never
    # loaded here (they can run code).
    found = f"it starts with {start!r}" if start else "it is empty"
    raise DataError(f"{name} is not a NumPy .npz archive ({found}; an .npz is a zip file); "
                    f"{_EXPECTED}; {_HOW_TO_GET}.")
  try:
    return np.load(path, allow_pickle=False)
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise DataError(f"{name} is a damaged .npz archive (truncated or corrupt?): {e}; "
                    "re-download or re-save it.") from e


def _splits(npz, path) -> list[str]:
  keys = set(npz.files)
  splits = []
  for split in SPLITS:
    present = {f"{split}_images", f"{split}_labels"} & keys
    if len(present) == 1:
      missing = ({f"{split}_images", f"{split}_labels"} - present).pop()
      raise DataError(f"{os.fspath(path)} has key {present.pop()!r} but no {missing!r}; "
                      "each split needs both images and labels.")
    if present:
      splits.append(split)
  if not splits:
    raise DataError(f"{os.fspath(path)} holds none of the keys train_images/train_labels, "
                    f"val_images/val_labels, test_images/test_labels; found keys "
                    f"{sorted(keys)}. Is it an official MedMNIST file?")
  return splits


def _read(npz, path, key) -> np.ndarray:
  try:
    value = npz[key]
  except ValueError as e:
    if "allow_pickle" not in str(e):
      raise DataError(f"{os.fspath(path)}[{key!r}] cannot be read as a numpy array "
                      f"(truncated or corrupt?): {e}; re-download or re-save the file.") from e
    # Object arrays are pickles, which are never loaded (they can run code).
    raise DataError(f"{os.fspath(path)}[{key!r}] is an array of Python objects, which is not "
                    f"read; {_EXPECTED}.") from None
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise DataError(f"{os.fspath(path)}[{key!r}] cannot be read as a numpy array (truncated "
                    f"or corrupt?): {e}; re-download or re-save the file.") from e
  if not isinstance(value, np.ndarray):  # A zip member that is no .npy file.
    raise DataError(f"{os.fspath(path)}[{key!r}] is not a .npy array; {_EXPECTED}.")
  return value


def _images(npz, path, split) -> np.ndarray:
  key = f"{split}_images"
  images = _read(npz, path, key)
  gray = images.ndim == 3
  rgb = images.ndim == 4 and images.shape[-1] == 3
  if images.dtype != np.uint8 or not (gray or rgb):
    raise DataError(f"{os.fspath(path)}[{key!r}] must be uint8 [N, H, W] or [N, H, W, 3], "
                    f"got {images.dtype}{list(images.shape)}.")
  return images


def _labels(npz, path, split, num_images) -> np.ndarray:
  key = f"{split}_labels"
  labels = _read(npz, path, key)
  if labels.ndim == 2 and labels.shape[1] > 1:
    raise DataError(f"{os.fspath(path)}[{key!r}] has shape {list(labels.shape)}: a "
                    "multi-label subset (e.g. ChestMNIST). Only single-label subsets "
                    "([N, 1] labels) are supported.")
  if not np.issubdtype(labels.dtype, np.integer) or labels.ndim not in (1, 2):
    raise DataError(f"{os.fspath(path)}[{key!r}] must be integer [N, 1] labels, got "
                    f"{labels.dtype}{list(labels.shape)}.")
  labels = labels.reshape(-1)
  if num_images is not None and len(labels) != num_images:
    raise DataError(f"{os.fspath(path)}: {key!r} has {len(labels)} labels but "
                    f"'{split}_images' has {num_images} images.")
  if not len(labels):
    raise DataError(f"{os.fspath(path)}: the {split!r} split is empty ({key!r} holds 0 "
                    "labels); pick a split with examples or re-create the file.")
  if labels.min() < 0:
    raise DataError(f"{os.fspath(path)}[{key!r}] must hold labels >= 0, got minimum "
                    f"{labels.min()}.")
  return labels.astype(np.int32)

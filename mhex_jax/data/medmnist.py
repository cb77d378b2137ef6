"""MedMNIST from the official ``.npz`` files (MedMNIST v2 / MedMNIST+ at 28, 64, 128 or 224 px).

A file holds ``{split}_images`` (uint8 [N, H, W] grayscale or [N, H, W, 3] RGB) and
``{split}_labels`` (integer [N, 1]) for split in train, val, test. Only single-label subsets
are supported: multi-label files such as ChestMNIST ([N, 14] labels) are rejected.

Nothing is downloaded here: pass the path of a file on disk.
"""

import os
import zipfile

import numpy as np

SPLITS = ("train", "val", "test")

_HOW_TO_GET = ("get the official <subset>.npz (e.g. pneumoniamnist.npz) from "
               "https://medmnist.com (hosted on Zenodo) or with the `medmnist` package "
               "(download=True), and pass its path")


def available_splits(path: str | os.PathLike) -> list[str]:
  """The splits of ``SPLITS`` the file holds images and labels for, in that order."""
  with _open(path) as npz:
    return _splits(npz, path)


def num_classes_in(path: str | os.PathLike) -> int:
  """Largest label over all the file's splits, plus one."""
  with _open(path) as npz:
    return max(int(_labels(npz, path, split, None).max()) + 1
               for split in _splits(npz, path))


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
      raise ValueError(f"split {split!r} is not in {os.fspath(path)}; it holds {splits}.")
    images = _images(npz, path, split)
    labels = _labels(npz, path, split, len(images))
  if images.ndim == 3:
    images = images[..., None]
  if as_rgb and images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return {"image": images, "label": labels}


def _open(path):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"MedMNIST file {os.fspath(path)} does not exist; {_HOW_TO_GET}.")
  try:
    npz = np.load(path, allow_pickle=False)
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise ValueError(f"{os.fspath(path)} is not a valid .npz file ({e}); {_HOW_TO_GET}.") from e
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise ValueError(f"{os.fspath(path)} holds a single {type(npz).__name__}, not an .npz "
                     f"archive of splits; {_HOW_TO_GET}.")
  return npz


def _splits(npz, path) -> list[str]:
  keys = set(npz.files)
  splits = []
  for split in SPLITS:
    present = {f"{split}_images", f"{split}_labels"} & keys
    if len(present) == 1:
      missing = ({f"{split}_images", f"{split}_labels"} - present).pop()
      raise ValueError(f"{os.fspath(path)} has key {present.pop()!r} but no {missing!r}; "
                       "each split needs both images and labels.")
    if present:
      splits.append(split)
  if not splits:
    raise ValueError(f"{os.fspath(path)} holds none of the keys train_images/train_labels, "
                     f"val_images/val_labels, test_images/test_labels; found keys "
                     f"{sorted(keys)}. Is it an official MedMNIST file?")
  return splits


def _read(npz, path, key) -> np.ndarray:
  try:
    return npz[key]
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise ValueError(f"{os.fspath(path)}[{key!r}] cannot be read as a numpy array: {e}") from e


def _images(npz, path, split) -> np.ndarray:
  key = f"{split}_images"
  images = _read(npz, path, key)
  gray = images.ndim == 3
  rgb = images.ndim == 4 and images.shape[-1] == 3
  if images.dtype != np.uint8 or not (gray or rgb):
    raise ValueError(f"{os.fspath(path)}[{key!r}] must be uint8 [N, H, W] or [N, H, W, 3], "
                     f"got {images.dtype}{list(images.shape)}.")
  return images


def _labels(npz, path, split, num_images) -> np.ndarray:
  key = f"{split}_labels"
  labels = _read(npz, path, key)
  if labels.ndim == 2 and labels.shape[1] > 1:
    raise ValueError(f"{os.fspath(path)}[{key!r}] has shape {list(labels.shape)}: a "
                     "multi-label subset (e.g. ChestMNIST). Only single-label subsets "
                     "([N, 1] labels) are supported.")
  if not np.issubdtype(labels.dtype, np.integer) or labels.ndim not in (1, 2):
    raise ValueError(f"{os.fspath(path)}[{key!r}] must be integer [N, 1] labels, got "
                     f"{labels.dtype}{list(labels.shape)}.")
  labels = labels.reshape(-1)
  if num_images is not None and len(labels) != num_images:
    raise ValueError(f"{os.fspath(path)}: {key!r} has {len(labels)} labels but "
                     f"'{split}_images' has {num_images} images.")
  if len(labels) == 0 or labels.min() < 0:
    raise ValueError(f"{os.fspath(path)}[{key!r}] must hold labels >= 0, got "
                     f"{len(labels)} labels with minimum "
                     f"{labels.min() if len(labels) else None}.")
  return labels.astype(np.int32)

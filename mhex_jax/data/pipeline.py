"""Numpy input-pipeline helpers shared by every dataset: batching, normalisation, resizing,
flip/shift augmentation.

Batches are cut from a *global* order of examples that every process computes identically from
(seed, epoch); process ``p`` of ``P`` keeps the ``p``-th of ``P`` contiguous blocks of each global
batch. So the processes never read the same example, and the global batch assembled by
``jax.make_array_from_process_local_data`` (process blocks one after another) is the one batch a
single process would see, row for row: every device holds the same examples whatever the
number of hosts.
"""

from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from mhex_jax.errors import DataError


def batch_indices(num_examples: int, batch_size: int, *, shuffle: bool, seed: int,
                  epoch: int = 0, drop_remainder: bool, process_index: int = 0,
                  process_count: int = 1,
                  start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This process' example indices for each batch of one epoch.

  Args:
    num_examples: size N of the split.
    batch_size: global batch size B, a multiple of ``process_count``.
    shuffle: permute the examples with a generator seeded by (seed, epoch).
    seed, epoch: select the permutation; ignored when ``shuffle`` is False.
    drop_remainder: drop the last partial global batch; otherwise pad it to B by repeating
      examples of the epoch, and mark the repeats invalid.
    process_index, process_count: which share of every global batch to return.
    start: skip the epoch's first ``start`` batches (resuming mid-epoch): only indices are
      computed for them, so nothing is read.

  Yields:
    (indices int64 [B / P], valid bool [B / P]) per global batch, from batch ``start`` on.
  """
  if num_examples <= 0:
    raise DataError(f"num_examples must be positive, got {num_examples}.")
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise DataError(f"process_index must be in [0, process_count={process_count}), got "
                    f"{process_index}.")
  if batch_size <= 0 or batch_size % process_count:
    raise DataError(f"batch_size must be a positive multiple of process_count="
                    f"{process_count}, got {batch_size}.")
  if start < 0:
    raise DataError(f"start must be >= 0, got {start}.")
  if drop_remainder and num_examples < batch_size:
    raise DataError(f"{num_examples} examples make no full batch of {batch_size}; use a "
                    "smaller batch_size or drop_remainder=False.")
  if shuffle:
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  else:
    order = np.arange(num_examples)
  num_batches = (num_examples // batch_size if drop_remainder
                 else -(-num_examples // batch_size))
  for b in range(start, num_batches):
    real = order[b * batch_size:(b + 1) * batch_size]
    # np.resize repeats `real` cyclically, so padding rows are genuine examples (no NaNs or
    # blank images reach the model) and only `valid` tells them apart.
    indices = np.resize(real, batch_size)
    valid = np.arange(batch_size) < len(real)
    rows = process_rows(batch_size, process_index, process_count)
    yield indices[rows], valid[rows]


def process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
  """The rows of a global batch of ``batch_size`` that process ``process_index`` holds."""
  size = batch_size // process_count
  return slice(process_index * size, (process_index + 1) * size)


def batch_iterator(split: dict[str, np.ndarray], batch_size: int, *, shuffle: bool,
                   seed: int, epoch: int = 0, drop_remainder: bool, process_index: int = 0,
                   process_count: int = 1, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of this process' batches of an in-memory split.

  Args:
    split: arrays with a common leading dimension N, e.g. {"image": [N, H, W, C],
      "label": [N]}.
    batch_size: the global batch size B (all processes together).
    shuffle, seed, epoch, drop_remainder, process_index, process_count, start: see
      `batch_indices`.

  Yields:
    {key: array[B / P, ...]} for every key of ``split``. When ``drop_remainder`` is False
    every batch also holds "valid": bool [B / P], False on the padding of the last batch, so
    evaluation sees one fixed shape and can mask the repeats out.
  """
  if not split:
    raise DataError("split is empty; pass a dict of arrays such as {'image': ..., "
                    "'label': ...}.")
  sizes = {key: len(value) for key, value in split.items()}
  if len(set(sizes.values())) != 1:
    raise DataError(f"split arrays must share their leading dimension, got sizes {sizes}.")
  if not drop_remainder and "valid" in split:
    raise DataError("split already has a 'valid' key, which batch_iterator adds when "
                    "drop_remainder=False; rename that key.")
  for indices, valid in batch_indices(
      next(iter(sizes.values())), batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
      drop_remainder=drop_remainder, process_index=process_index,
      process_count=process_count, start=start):
    batch = {key: value[indices] for key, value in split.items()}
    if not drop_remainder:
      batch["valid"] = valid
    yield batch


def normalize(images: np.ndarray, mean: Sequence[float],
              std: Sequence[float]) -> np.ndarray:
  """uint8 [..., H, W, C] -> float32 (images / 255 - mean) / std, per channel.

  ``mean`` and ``std`` are in [0, 1] pixel units with one entry per channel (or one entry for
  all channels), e.g. ImageNet's (0.485, 0.456, 0.406), (0.229, 0.224, 0.225).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim < 3:
    raise DataError(f"images must be uint8 [..., H, W, C], got "
                    f"{images.dtype}{list(images.shape)}.")
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  channels = images.shape[-1]
  for name, value in (("mean", mean), ("std", std)):
    if len(value) not in (1, channels):
      raise DataError(f"{name} has {len(value)} entries but images have {channels} "
                      f"channels; give one entry per channel.")
  if np.any(std <= 0):
    raise DataError(f"std must be positive, got {std.tolist()}.")
  if np.any(mean > 1.5) or np.any(std > 1.5):
    # Catches 0-255 statistics, which would silently give images of tiny magnitude.
    raise DataError(f"mean/std must be in [0, 1] pixel units, got mean={mean.tolist()} "
                    f"std={std.tolist()}; divide them by 255.")
  return (images.astype(np.float32) / 255.0 - mean) / std


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear (antialiased, PIL) resize of uint8 [N, H, W, C] to uint8 [N, size, size, C]."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError(f"images must be uint8 [N, H, W, C] with C in (1, 3), got "
                    f"{images.dtype}{list(images.shape)}.")
  if not isinstance(size, (int, np.integer)) or size <= 0:
    raise DataError(f"size must be a positive int, got {size!r}.")
  if images.shape[1:3] == (size, size):
    return images.copy()
  out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
  for i, image in enumerate(images):
    # PIL wants [H, W] for one channel ("L" mode) and [H, W, 3] for RGB.
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR)).reshape(size, size, -1)
  return out


CROP_PAD = 4


def augment_params(rng: np.random.Generator, n: int, ops) -> tuple[np.ndarray, np.ndarray]:
  """Draws the augmentation of n images (``ops``: "flip", "crop"; others are ignored): flips
  bool[n] and crop shifts int[2, n] (dy, dx)."""
  flips = rng.random(n) < 0.5 if "flip" in ops else np.zeros(n, bool)
  shifts = (rng.integers(0, 2 * CROP_PAD + 1, size=(2, n)) if "crop" in ops
            else np.full((2, n), CROP_PAD))
  return flips, shifts


def augment(images: np.ndarray, flips: np.ndarray, shifts: np.ndarray) -> np.ndarray:
  """Horizontal flips, then crops of the 4-pixel reflect-padded images [N, H, W, C] (any
  dtype) at ``shifts`` (a shift of 4 in both axes is the identity)."""
  images = images.copy()
  n, h, w, _ = images.shape
  images[flips] = images[flips, :, ::-1]
  if np.any(shifts != CROP_PAD):
    pad = CROP_PAD
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    dy, dx = shifts
    for i in range(n):
      images[i] = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
  return images

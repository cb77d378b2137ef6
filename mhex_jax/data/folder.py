"""Image collections as data: a folder of class folders, or a CSV manifest of image files.

    ROOT/<class>/**/<image>                     classes are the folder names
    ROOT/{train,val,test}/<class>/**/<image>    given splits (data.train_split, data.eval_split)
    MANIFEST.csv, rows path,label[,mask_path]   paths relative to the manifest's folder

``data.path`` names the folder or the manifest, and ``data.eval_path`` (optional) the eval data in
either form. Without a given split, ``data.eval_fraction`` of every class is held out for
evaluation, by `text.stratified_split` from ``data.split_seed`` as for text CSVs, and
``data.val_fraction`` (optional) of the training images for validation. Classes are
numbered in the sorted order of the folder names or labels (integer labels by value), or in the
order of ``data.class_names``; training saves the names with the workdir's config. A manifest's
header row is detected as a text CSV's is (``data.has_header``); with a header, columns named
``path``, ``label`` and ``mask_path`` are taken by name, otherwise by position.

Masks mark the object (any nonzero pixel) and turn on the pointing games of ``eval.py``: a
manifest's ``mask_path`` column, or ``data.mask_root``, a folder holding each mask at its image's
path relative to the data folder (the manifest's folder), under any image suffix (``a.jpg``'s
mask may be ``a.png``). A mask has its image's size (checked from the files' headers when the
data is listed) and is resized with it, nearest neighbour. An image without a mask gets an
empty one, which the pointing games leave out. Only eval batches carry masks.

Files are listed up front and read when their batch is, by worker threads (PIL releases the
GIL while it decodes and resamples): decoded by `image_files.read_image` (``data.intensity`` scales
16-bit and DICOM pixels), converted to the model's channels (3 with ``data.as_rgb``, else 1 by
ITU-R 601 luma, as PIL's ``convert("L")``), fitted to ``data.image_size`` by `image_files.fit_image` as
``explain.py`` fits a workdir model's input (the centred square, bilinear), and normalised by
``data.mean``/``data.std``. Training shuffles by (seed, epoch) and augments as ``data.augment``
says: "flip" and "crop" (4-pixel shifts) as `pipeline.augment`, drawn per global batch from
(seed, epoch); "resized_crop" an Inception-style crop per example from (seed, epoch, index).
Batches are the same whatever the number of processes or threads; ``start`` skips batches by
index without reading them, and each process reads only its rows of every global batch.

A file that cannot be decoded stops the run with its path. With ``data.skip_unreadable=True`` it
is replaced where it is read by the next readable example of the same batch share (in
evaluation that row is marked invalid, so accuracy and metrics leave it out) and logged with a
running count: batches keep their shape and order. The files are not checked up front, which
would mean decoding every one of them (a readable header does not prove the pixels decode).
"""

import collections
import concurrent.futures
import dataclasses
import os
import threading
from typing import Iterator, NamedTuple, Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
from PIL import Image
import pydicom

from mhex_jax.data import image_files, imagenet, pipeline, text
from mhex_jax.errors import DataError

SPLITS = ("train", "val", "validation", "test")
AUGMENTATIONS = ("flip", "crop", "resized_crop")
# Files an operating system leaves in folders (hidden files, starting with ".", too).
_SYSTEM_FILES = ("Thumbs.db", "desktop.ini")
_MANIFEST_COLUMNS = ("path", "label", "mask_path")


class Listing(NamedTuple):
  """Image files of a split: paths [N], their labels (class names) [N] and mask files [N] (None
  where an image has no mask; ``masks`` None when the data has no masks at all)."""
  paths: tuple[str, ...]
  labels: tuple[str, ...]
  masks: Optional[tuple[Optional[str], ...]]
  source: str  # The folder or manifest, for messages.

  def subset(self, indices: Sequence[int]) -> "Listing":
    pick = lambda values: tuple(values[i] for i in indices)
    return Listing(pick(self.paths), pick(self.labels),
                   None if self.masks is None else pick(self.masks), self.source)


# Listing the files.


def _is_system_file(name: str) -> bool:
  return name.startswith(".") or name in _SYSTEM_FILES


def _is_image(path: str) -> bool:
  """Whether ``path`` has an image suffix or, as DICOM files often have none (or a UID's
  digits), DICOM's "DICM" preamble."""
  if os.path.splitext(path)[1].lower() in image_files.IMAGE_SUFFIXES:
    return True
  try:
    with open(path, "rb") as f:
      return f.read(132)[128:] == b"DICM"
  except OSError:
    return False


def _suffixes() -> str:
  return " ".join(sorted(image_files.IMAGE_SUFFIXES))


def _walk(directory: str) -> list[str]:
  """Every file under ``directory`` (hidden files and folders left out), sorted by path."""
  found = []
  for parent, folders, names in os.walk(directory):
    folders[:] = [f for f in folders if not f.startswith(".")]
    found += [os.path.join(parent, n) for n in names if not _is_system_file(n)]
  return sorted(found)


def _subfolders(directory: str) -> list[str]:
  return sorted(e.name for e in os.scandir(directory)
                if e.is_dir() and not e.name.startswith("."))


def split_folders(root: str) -> list[str]:
  """The split folders (train, val, validation, test) of a class-folder root, or [] when its
  folders are the classes. A root with a ``train`` folder is split: it may hold only splits."""
  folders = _subfolders(root)
  if "train" not in folders:
    return []
  others = [f for f in folders if f not in SPLITS]
  if others:
    raise DataError(f"{root} holds the split folder 'train' and also {others}; a split layout "
                    f"holds only split folders ({', '.join(SPLITS)}), each with one folder per "
                    "class. Move the class folders into the splits (a class named 'train' "
                    "cannot be told from a split).")
  return [f for f in folders if f in SPLITS]


def list_classes(root: str) -> Listing:
  """The images of ``root``'s class folders (``root/<class>/**/<image>``), labelled by folder."""
  if not os.path.isdir(root):
    raise DataError(f"image folder {root} does not exist; pass a folder with one folder per "
                    "class (or a CSV manifest) as --config.data.path.")
  # Other files beside the class folders (a README, a labels file) are left alone.
  loose = sorted(e.path for e in os.scandir(root) if e.is_file() and _is_image(e.path))
  if loose:
    raise DataError(f"{root} holds images outside class folders ({', '.join(loose[:3])}"
                    f"{', ...' if len(loose) > 3 else ''}); put every image in the folder of its "
                    f"class, {root}/<class>/<image>.")
  classes = _subfolders(root)
  if not classes:
    raise DataError(f"{root} holds no class folders; lay the images out as "
                    f"{root}/<class>/<image> (e.g. {root}/normal/a.png, {root}/pneumonia/b.png).")
  paths, labels = [], []
  for name in classes:
    files = _walk(os.path.join(root, name))
    others = [f for f in files if not _is_image(f)]
    if others:
      more = f", nor are {len(others) - 1} other file(s) of {root}" if len(others) > 1 else ""
      raise DataError(f"{others[0]} is not an image file (suffix "
                      f"{os.path.splitext(others[0])[1] or 'none'!r}; images are {_suffixes()}, "
                      f"or DICOM by content){more}; move other files out of the class folders.")
    if not files:
      raise DataError(f"class folder {os.path.join(root, name)} holds no images ({_suffixes()});"
                      " add its images or remove the folder.")
    paths += files
    labels += [name] * len(files)
  return Listing(tuple(paths), tuple(labels), None, root)


def read_manifest(path: str, has_header: bool | str = "auto") -> Listing:
  """The rows ``path,label[,mask_path]`` of a CSV manifest, paths relative to its folder."""
  rows = text._read_rows(path)  # pylint: disable=protected-access
  if has_header not in (True, False, "auto"):
    raise DataError(f"data.has_header must be True, False or 'auto', got {has_header!r}.")
  if has_header == "auto":
    has_header = text._looks_like_header(rows, 1, ())  # pylint: disable=protected-access
  columns = {name: i for i, name in enumerate(_MANIFEST_COLUMNS)}
  if has_header:
    if not rows:
      raise DataError(f"manifest {path} holds no rows; it should start with a header row.")
    header = [name.strip().lower() for name in rows.pop(0)[1]]
    if {"path", "label"} <= set(header):
      columns = {name: header.index(name) for name in _MANIFEST_COLUMNS if name in header}
  if not rows:
    raise DataError(f"manifest {path} holds no rows of images; write one row per image: "
                    "path,label[,mask_path].")
  folder = os.path.dirname(os.path.abspath(path))
  paths, labels, masks = [], [], []
  for line, row in rows:
    field = lambda name: (row[columns[name]].strip()
                          if name in columns and len(row) > columns[name] else "")
    image, label = field("path"), field("label")
    if not image or not label:
      raise DataError(f"{path}, line {line}: expected path,label[,mask_path], got {row}; give "
                      "every row an image path and a label.")
    paths.append(_manifest_file(path, line, folder, image, "image"))
    labels.append(label)
    mask = field("mask_path")
    masks.append(_manifest_file(path, line, folder, mask, "mask") if mask else None)
  with_masks = any(mask is not None for mask in masks)
  return Listing(tuple(paths), tuple(labels), tuple(masks) if with_masks else None, path)


def _manifest_file(manifest: str, line: int, folder: str, name: str, what: str) -> str:
  full = os.path.normpath(os.path.join(folder, name))
  if not os.path.isfile(full):
    raise DataError(f"{manifest}, line {line}: {what} {name} does not exist (looked for {full});"
                    " paths are relative to the manifest's folder. Fix the path or delete the "
                    "row.")
  if not _is_image(full):
    raise DataError(f"{manifest}, line {line}: {what} {name} is not an image file (images are "
                    f"{_suffixes()}, or DICOM by content).")
  return full


def attach_masks(listing: Listing, mask_root: str, path: str) -> Listing:
  """``listing`` with the masks of ``mask_root`` at the images' paths relative to ``path``
  (a class-folder root, or a manifest's folder), under any image suffix; logs how many images
  have none."""
  if listing.masks is not None:
    raise DataError(f"{path} has a mask_path column and data.mask_root={mask_root} is set too; "
                    "use one of them.")
  data_root = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(mask_root):
    raise DataError(f"data.mask_root={mask_root} is not a folder; give the folder that holds "
                    "each image's mask at the image's path relative to data.path.")
  found: dict[str, str] = {}
  for mask in _walk(mask_root):
    if not _is_image(mask):
      continue
    key = os.path.splitext(os.path.relpath(mask, mask_root))[0]
    if key in found:
      raise DataError(f"{found[key]} and {mask} are both masks of the image {key}.*; keep one.")
    found[key] = mask
  masks = tuple(found.get(os.path.splitext(os.path.relpath(p, data_root))[0])
                for p in listing.paths)
  missing = sum(m is None for m in masks)
  if missing == len(masks):
    example = os.path.relpath(listing.paths[0], data_root)
    raise DataError(f"data.mask_root={mask_root} holds no mask of any image of "
                    f"{listing.source}; masks must have the images' relative paths, e.g. "
                    f"{os.path.join(mask_root, example)} for {listing.paths[0]}.")
  if missing:
    logging.warning("%d of %d images of %s have no mask in %s (e.g. %s): their masks are empty "
                    "and the pointing games leave them out.", missing, len(masks),
                    listing.source, mask_root, next(p for p, m in zip(listing.paths, masks)
                                                    if m is None))
  return listing._replace(masks=masks)


def header_size(path: str) -> Optional[tuple[int, int]]:
  """(height, width) of an image file from its header alone (PIL's, or DICOM's Rows and
  Columns), or None when the header cannot be read."""
  try:
    with open(path, "rb") as f:
      dicom = f.read(132)[128:] == b"DICM" or path.lower().endswith((".dcm", ".dicom"))
    if dicom:
      ds = pydicom.dcmread(path, stop_before_pixels=True)
      return int(ds.Rows), int(ds.Columns)
    with Image.open(path) as pil:
      return pil.height, pil.width
  except Exception:  # pylint: disable=broad-except
    return None  # Reading the file reports it, with its path and the fix.


def check_mask_sizes(listing: Listing) -> None:
  """Refuses a mask of another size than its image, from the files' headers: before anything
  is trained, not when the first evaluation reads it."""
  for image, mask in zip(listing.paths, listing.masks or ()):
    if mask is None:
      continue
    sizes = header_size(image), header_size(mask)
    if None not in sizes and sizes[0] != sizes[1]:
      _mask_size_error(mask, sizes[1], image, sizes[0])


def _mask_size_error(mask: str, mask_size, image: str, image_size) -> None:
  (mask_h, mask_w), (image_h, image_w) = mask_size, image_size
  raise DataError(f"mask {mask} is {mask_w}x{mask_h} (width x height) but its image {image} is "
                  f"{image_w}x{image_h}; a mask must have its image's size (it is resized with "
                  "the image).")


def read_listing(path: str, data_config: ml_collections.ConfigDict,
                 split: str) -> tuple[Listing, bool]:
  """The images of ``path`` (a class-folder root or a manifest; its ``split`` folder in a split
  layout) and whether the data gave its own split."""
  if not path:
    raise DataError("data.path is empty: pass --config.data.path=FOLDER (one folder per class) "
                    "or a CSV manifest (path,label[,mask_path]).")
  if os.path.isdir(path):
    splits = split_folders(path)
    if splits and split not in splits:
      raise DataError(f"{path} has no split folder {split!r} (it has {', '.join(splits)}); "
                      f"set data.train_split / data.eval_split to one of them.")
    listing = list_classes(os.path.join(path, split) if splits else path)
    given = bool(splits)
  elif os.path.isfile(path):
    listing, given = read_manifest(path, data_config.get("has_header", "auto")), False
  else:
    raise DataError(f"data path {path} does not exist; pass a folder with one folder per class "
                    "or a CSV manifest (path,label[,mask_path]).")
  return listing, given


def class_order(labels: Sequence[str]) -> tuple[str, ...]:
  """The classes of ``labels`` sorted: by value when all are integers, else as strings."""
  names = set(labels)
  if all(text._is_int(n) for n in names):  # pylint: disable=protected-access
    return tuple(sorted(names, key=int))
  return tuple(sorted(names))


def label_indices(listing: Listing, class_names: Sequence[str], fix: str) -> np.ndarray:
  """int32 [N]: each label's index in ``class_names``."""
  index = {name: i for i, name in enumerate(class_names)}
  unknown = sorted(set(listing.labels) - set(index))
  if unknown:
    raise DataError(f"{listing.source} has the class(es) {unknown}, which are not among the "
                    f"classes {list(class_names)}; {fix}.")
  return np.asarray([index[label] for label in listing.labels], np.int32)


class Splits(NamedTuple):
  """What `make_splits` returns: the listings (train None unless asked for), labels and names."""
  train: Optional[Listing]
  train_labels: Optional[np.ndarray]
  eval: Listing
  eval_labels: np.ndarray
  class_names: tuple[str, ...]


def read_class_names(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The class names `make_splits` takes, from the training folders or manifest labels alone
  (no image read): what model.num_classes=None takes its count from."""
  given = tuple(data_config.get("class_names") or ())
  if given:
    return given
  train, _ = read_listing(data_config.path, data_config, data_config.get("train_split", "train"))
  names = class_order(train.labels)
  if len(names) < 2:
    _one_class(train)
  return names


def _one_class(train: Listing) -> None:
  raise DataError(f"the training data {train.source} holds one class only "
                  f"({train.labels[0]!r}); a classifier needs images of at least two classes, "
                  "each in its own folder (or with its own label in the manifest).")


def make_splits(data_config: ml_collections.ConfigDict, num_classes: Optional[int] = None,
                *, need_train: bool = True) -> Splits:
  """The train and eval images of ``data_config`` (fields path, eval_path, train_split,
  eval_split, eval_fraction, split_seed, mask_root, has_header, class_names; see the module
  docstring), their class indices and the class names, checked against ``num_classes``.
  ``need_train`` False (evaluation) lists the training data for its classes and split only."""
  path = data_config.path
  train, given = read_listing(path, data_config, data_config.get("train_split", "train"))
  separate = bool(data_config.get("eval_path")) or given
  eval_path = data_config.get("eval_path") or path
  if separate:
    evaluation, _ = read_listing(eval_path, data_config, data_config.get("eval_split", "val"))
  given_names = tuple(data_config.get("class_names") or ())
  names = given_names or class_order(train.labels)
  if len(set(names)) != len(names):
    raise DataError(f"data.class_names={list(names)} names a class twice; list each class once, "
                    "in index order (or () to read them from the data).")
  train_labels = label_indices(train, names, "list every class in data.class_names, in index "
                               "order (or () to read them from the data)")
  if len(np.unique(train_labels)) < 2:
    _one_class(train)
  if num_classes is not None and len(names) != num_classes:
    source = "data.class_names" if given_names else f"the training data {train.source}"
    raise DataError(f"{source} has {len(names)} classes ({', '.join(names)}) but "
                    f"model.num_classes={num_classes}; set --config.model.num_classes="
                    f"{len(names)}.")
  if separate:
    eval_labels = label_indices(evaluation, names, "every eval class needs images in the "
                                f"training data {train.source}")
  else:
    fraction, seed = data_config.get("eval_fraction", 0.2), data_config.get("split_seed", 0)
    try:
      train_idx, eval_idx = text.stratified_split(train_labels, eval_fraction=fraction,
                                                  seed=seed)
    except DataError as e:
      raise DataError(f"splitting {path} for training and eval (data.eval_fraction="
                      f"{fraction}): {e} Or give the splits as folders ({path}/train, "
                      f"{path}/val) or pass data.eval_path.") from e
    evaluation, eval_labels = train.subset(eval_idx), train_labels[eval_idx]
    train, train_labels = train.subset(train_idx), train_labels[train_idx]
  if data_config.get("mask_root"):  # Only evaluation reads masks.
    evaluation = attach_masks(evaluation, data_config.mask_root, eval_path)
  check_mask_sizes(evaluation)
  if not need_train:
    train, train_labels = None, None
  return Splits(train, train_labels, evaluation, eval_labels, names)


# Reading the files.


@dataclasses.dataclass
class FolderDataset:
  """Image files read lazily in batches (see the module docstring); a `Dataset`."""
  listing: Listing
  labels: np.ndarray  # int32 [N]
  class_names: tuple[str, ...]
  image_size: int
  channels: int  # 1 or 3.
  mean: tuple[float, ...]
  std: tuple[float, ...]
  intensity: str = "full_range"
  augment: tuple[str, ...] = ()
  with_masks: bool = False  # Read the listing's masks into batches (evaluation).
  skip_unreadable: bool = False
  num_workers: Optional[int] = None  # Decoding threads; None: the number of CPUs.
  prefetch: int = 2  # Batches read ahead of the one being consumed.
  # A training set's validation split (data.val_fraction), which train.keep_best selects on.
  validation: Optional["FolderDataset"] = None
  _skipped: set = dataclasses.field(default_factory=set, init=False, repr=False)
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, init=False,
                                            repr=False)

  def __post_init__(self):
    unknown = sorted(set(self.augment) - set(AUGMENTATIONS))
    if unknown:
      raise DataError(f"Unknown augmentation(s) {unknown} for image folders; data.augment takes "
                      f"{', '.join(AUGMENTATIONS)} (comma-separated).")
    if self.channels not in (1, 3):
      raise DataError(f"channels must be 1 or 3, got {self.channels}.")
    # The mean/std checks of every other dataset (entries per channel, [0, 1] units).
    pipeline.normalize(np.zeros((1, 1, self.channels), np.uint8), self.mean, self.std)
    self._mean = np.asarray(self.mean, np.float32)
    self._std = np.asarray(self.std, np.float32)

  @property
  def num_examples(self) -> int:
    return len(self.listing.paths)

  @property
  def has_masks(self) -> bool:
    return self.with_masks and self.listing.masks is not None

  @property
  def image_shape(self) -> tuple[int, ...]:
    return (self.image_size, self.image_size, self.channels)

  def dummy_inputs(self) -> tuple[np.ndarray, ...]:
    return (np.zeros((1, *self.image_shape), np.float32),)

  def batches(self, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of this process' batches, from batch ``start`` on: the skipped batches'
    files are not read."""
    count, index = jax.process_count(), jax.process_index()
    rows = pipeline.process_rows(batch_size, index, count)
    order = pipeline.batch_indices(self.num_examples, batch_size, shuffle=train, seed=seed,
                                   epoch=epoch, drop_remainder=train, process_index=index,
                                   process_count=count, start=start)
    augment = self.augment if train else ()
    rng = np.random.default_rng([seed, epoch, 1])
    if {"flip", "crop"} & set(augment):
      for _ in range(start):  # The draws of the skipped batches: the same batches follow.
        pipeline.augment_params(rng, batch_size, augment)
    crop_rng = ((lambda i: np.random.default_rng([seed, epoch, int(i)]))
                if "resized_crop" in augment else None)
    load = lambda i: self._load(int(i), crop_rng)
    pool = concurrent.futures.ThreadPoolExecutor(self.num_workers or os.cpu_count())
    try:
      pending = collections.deque()
      for indices, valid in order:
        pending.append((indices, valid, pool.map(load, indices)))  # Submits the batch now.
        if len(pending) > self.prefetch:
          yield self._collate(*pending.popleft(), train, augment, rng, batch_size, rows)
      while pending:
        yield self._collate(*pending.popleft(), train, augment, rng, batch_size, rows)
    finally:
      pool.shutdown(wait=False, cancel_futures=True)

  def _load(self, index: int, crop_rng) -> Optional[tuple[np.ndarray, Optional[np.ndarray]]]:
    """(image f32 [S, S, C] in [0, 1], mask bool [S, S] or None) of example ``index``, or
    None when its file is unreadable and ``skip_unreadable`` is set."""
    path = self.listing.paths[index]
    try:
      image = image_files.read_image(path, intensity=self.intensity)
    except (DataError, OSError) as error:
      if not self.skip_unreadable:
        raise DataError(f"{error} (Or set --config.data.skip_unreadable=True to skip the "
                        "unreadable files of the data, with a count.)") from error
      self._skip(path, error)
      return None
    height, width = image.shape[:2]
    if crop_rng is None:
      box = image_files.centre_square(height, width)
    else:
      top, left, h, w = imagenet.random_resized_crop_box(height, width, crop_rng(index))
      box = (left, top, left + w, top + h)
    if self.channels == 1 and image.shape[-1] == 3 and np.ptp(image, axis=-1).max() > 1 / 255:
      logging.log_first_n(
          logging.WARNING, "%s is a colour image but data.as_rgb=False: colour images are "
          "converted to grayscale. To keep the colour, set --config.data.as_rgb=True and "
          "--config.model.input_channels=3.", 1, path)
    image = image_files.fit_image(image, self.image_size, self.channels, box)
    if not self.has_masks:
      return image, None
    mask_path = self.listing.masks[index]
    if mask_path is None:
      return image, np.zeros((self.image_size, self.image_size), bool)
    mask = image_files.read_mask(mask_path)
    if mask.shape != (height, width):  # Where the headers did not tell (`check_mask_sizes`).
      _mask_size_error(mask_path, mask.shape, path, (height, width))
    return image, image_files.fit_mask(mask, self.image_size, box)

  def _skip(self, path: str, error: Exception) -> None:
    with self._lock:
      if path in self._skipped:
        return
      self._skipped.add(path)
      count = len(self._skipped)
    logging.warning("Skipping unreadable image %s (%s): %d file(s) of %s skipped so far "
                    "(data.skip_unreadable=True).", path, error, count, self.listing.source)

  def _collate(self, indices, valid, loaded, train, augment, rng, batch_size,
               rows) -> dict[str, np.ndarray]:
    loaded, labels, valid = list(loaded), self.labels[indices], np.array(valid)
    readable = [i for i, x in enumerate(loaded) if x is not None]
    if not readable:
      raise DataError(f"every image of a batch share is unreadable "
                      f"({', '.join(self.listing.paths[i] for i in indices[:4])}, ...); check "
                      f"the files of {self.listing.source}.")
    for i in range(len(loaded)):
      if loaded[i] is None:  # The next readable row takes its place (skip_unreadable).
        j = next((k for k in readable if k > i), readable[0])
        loaded[i], labels[i], valid[i] = loaded[j], labels[j], False
    images = np.stack([x[0] for x in loaded])
    masks = np.stack([x[1] for x in loaded]) if self.has_masks else None
    if {"flip", "crop"} & set(augment):
      flips, shifts = pipeline.augment_params(rng, batch_size, augment)
      images = pipeline.augment(images, flips[rows], shifts[:, rows])
    batch = {"image": (images - self._mean) / self._std, "label": labels.astype(np.int32),
             "valid": valid if not train else np.ones(len(labels), bool)}
    if masks is not None:
      batch["mask"] = masks
    return batch


def make_datasets(data_config: ml_collections.ConfigDict, num_classes: int, *,
                  need_train: bool = True) -> tuple[Optional[FolderDataset], FolderDataset]:
  """(train, eval) `FolderDataset`s of ``data_config`` (``data.name="folder"``); train is None
  when ``need_train`` is False, and carries its ``validation`` split with ``data.val_fraction``
  (a stratified share of the training images, from ``data.split_seed``; the eval images are
  the same with or without it)."""
  splits = make_splits(data_config, num_classes, need_train=need_train)
  common = dict(class_names=splits.class_names, image_size=data_config.image_size,
                channels=3 if data_config.get("as_rgb") else 1, mean=tuple(data_config.mean),
                std=tuple(data_config.std),
                intensity=data_config.get("intensity", "full_range"),
                skip_unreadable=bool(data_config.get("skip_unreadable", False)),
                num_workers=data_config.get("num_workers") or None)
  train = None
  if need_train:
    listing, labels, validation = splits.train, splits.train_labels, None
    fraction = data_config.get("val_fraction") or 0
    if fraction:  # Held out of the training images, as text CSVs hold out rows.
      try:
        kept, held = text.stratified_split(labels, eval_fraction=fraction,
                                           seed=data_config.get("split_seed", 0))
      except DataError as e:
        raise DataError(f"holding out data.val_fraction={fraction} of the training images of "
                        f"{listing.source} for validation: {e}") from e
      validation = FolderDataset(listing.subset(held), labels[held], **common)
      listing, labels = listing.subset(kept), labels[kept]
    augment = tuple(a.strip() for a in data_config.get("augment", "").split(",") if a.strip())
    train = FolderDataset(listing, labels, augment=augment, validation=validation, **common)
  evaluation = FolderDataset(splits.eval, splits.eval_labels, with_masks=True, **common)
  return train, evaluation

"""Builds the train/eval datasets a config asks for, as batch iterators of normalised images.

Every dataset yields numpy batches ``{"image": f32[B, H, W, C], "label": int32[B],
"valid": bool[B], ("mask": bool[B, H, W])}`` holding this process' share of a global batch.
Eval batches are padded to full size (``valid`` marks real examples) so shapes never change.
"""

import dataclasses
from typing import Iterator, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from mhex_jax.data import folder, imagenet, medmnist, pipeline, synthetic, text
from mhex_jax.data.dataset import Dataset
from mhex_jax.errors import DataError

DATASETS = ("synthetic", "medmnist", "imagenet", "text", "folder")


def class_names(data_config: ml_collections.ConfigDict, num_classes: int) -> list[str]:
  """Names of the ``num_classes`` classes: ``data.class_names``, the synthetic shapes' names,
  or "class 0", "class 1", ... when the data name none."""
  names = tuple(data_config.get("class_names") or ())
  if not names and data_config.name == "synthetic":
    names = synthetic.CLASS_NAMES
  if not names:
    return [f"class {k}" for k in range(num_classes)]
  if len(names) != num_classes:
    raise DataError(f"data.class_names has {len(names)} names {list(names)} but "
                    f"model.num_classes={num_classes}; give one name per class, in class "
                    "order (or () for numbers).")
  return [str(n) for n in names]


def check_labels(labels: np.ndarray, num_classes: int) -> None:
  """Raises a ValueError naming the first label outside [0, num_classes)."""
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    first = int(np.flatnonzero(bad)[0])
    raise DataError(f"label {int(labels[first])} at index {first} is outside [0, "
                    f"{num_classes}); set model.num_classes to the number of classes in the "
                    "data (for CSV text, also check data.label_base).")


def warn_unused_classes(labels: np.ndarray, num_classes: int, source: str) -> bool:
  """Warns (and returns True) when the training labels use clearly fewer classes than
  ``num_classes``: their largest label + 1 is under half of it.

  Not an error, as training on a subset of a larger label set is legitimate; but the extra
  heads' outputs are never trained, which is more often a wrong model.num_classes. The largest
  label, not the number of distinct labels, is compared: labels {0, 9} need 10 classes.
  """
  used = int(labels.max()) + 1
  if 2 * used >= num_classes:
    return False
  logging.warning("The training labels of %s span %d classes (class indices 0..%d, %d "
                  "distinct) but model.num_classes=%d: %d classes are never trained. Set "
                  "model.num_classes=%d, unless the data is a subset of a larger label set.",
                  source, used, used - 1, len(np.unique(labels)), num_classes,
                  num_classes - used, used)
  return True


@dataclasses.dataclass
class InMemoryDataset:
  """A split held in memory as uint8 images (synthetic data, MedMNIST)."""
  arrays: dict[str, np.ndarray]
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: tuple[str, ...] = ()
  class_names = None  # Class names come from the config (data.class_names).
  validation = None  # No validation split is held out of the training arrays.

  def __post_init__(self):
    images, labels = self.arrays["image"], self.arrays["label"]
    if images.ndim != 4 or images.dtype != np.uint8:
      raise DataError(f"images must be uint8 [N, H, W, C], got {images.dtype}{list(images.shape)}.")
    check_labels(labels, self.num_classes)
    unknown = set(self.augment) - {"flip", "crop"}
    if unknown:
      raise DataError(f"Unknown augmentation(s) {sorted(unknown)}; use 'flip' and/or 'crop'.")

  @property
  def num_examples(self) -> int:
    return len(self.arrays["label"])

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.arrays["image"].shape[1:])

  @property
  def has_masks(self) -> bool:
    return "mask" in self.arrays

  def dummy_inputs(self) -> tuple[np.ndarray, ...]:
    """Model inputs of batch size 1, for initialisation."""
    return (np.zeros((1, *self.image_shape), np.float32),)

  def batches(self, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of this process' batches, from batch ``start`` on (skipped by index).

    ``batch_size`` is the global batch size. The augmentation of a global batch is drawn
    whole on every process, from one generator per (seed, epoch), and each process applies
    its own rows: the training data is the same whatever the number of processes, and a
    skipped batch costs only its random draws.
    """
    count, index = jax.process_count(), jax.process_index()
    it = pipeline.batch_iterator(self.arrays, batch_size, shuffle=train, seed=seed,
                                 epoch=epoch, drop_remainder=train, process_index=index,
                                 process_count=count, start=start)
    augment = train and self.augment
    if augment:
      rng = np.random.default_rng([seed, epoch, 1])
      for _ in range(start):
        pipeline.augment_params(rng, batch_size, self.augment)
    for batch in it:
      images = batch["image"]
      if augment:
        flips, shifts = pipeline.augment_params(rng, batch_size, self.augment)
        rows = pipeline.process_rows(batch_size, index, count)
        images = pipeline.augment(images, flips[rows], shifts[:, rows])
      out = dict(batch)
      out["image"] = pipeline.normalize(images, self.mean, self.std)
      out["label"] = batch["label"].astype(np.int32)
      out.setdefault("valid", np.ones(len(images), bool))
      yield out


@dataclasses.dataclass
class TfdsImageNet:
  """ImageNet from tfds ``imagenet2012`` (array_record), decoded and cropped on the host."""
  split: str
  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  data_dir: Optional[str] = None
  decode_processes: int = 0  # Decoding worker processes (data.decode_processes); 0: threads.
  has_masks = False
  class_names = None  # Class names come from the config (data.class_names).
  validation = None  # ImageNet's validation split is the eval split.

  @property
  def num_examples(self) -> int:
    return imagenet.num_examples(self.split, self.data_dir)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return (self.image_size, self.image_size, 3)

  def dummy_inputs(self) -> tuple[np.ndarray, ...]:
    return (np.zeros((1, *self.image_shape), np.float32),)

  def batches(self, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    for batch in imagenet.make_iterator(self.split, batch_size=batch_size,
                                        image_size=self.image_size, train=train, seed=seed,
                                        epoch=epoch, data_dir=self.data_dir, start=start,
                                        decode_processes=self.decode_processes):
      out = dict(batch)
      out["image"] = pipeline.normalize(batch["image"], self.mean, self.std)
      out.setdefault("valid", np.ones(len(out["label"]), bool))
      yield out


@dataclasses.dataclass
class TextDataset:
  """Tokenised text held in memory: input_ids, attention_mask, token_type_ids,
  special_tokens_mask [N, T] and label [N]; class_names[c] names class c. A training split
  may carry the validation split held out of its file (data.val_fraction), which
  ``train.keep_best`` selects checkpoints on."""
  arrays: dict[str, np.ndarray]
  num_classes: int
  class_names: Optional[tuple[str, ...]] = None
  validation: Optional["TextDataset"] = None
  has_masks = False

  @property
  def max_len(self) -> int:
    """Tokens per text (data.max_len, as chosen when it is "auto")."""
    return self.arrays["input_ids"].shape[1]

  def __post_init__(self):
    check_labels(self.arrays["label"], self.num_classes)

  @property
  def num_examples(self) -> int:
    return len(self.arrays["label"])

  def dummy_inputs(self) -> tuple[np.ndarray, ...]:
    length = self.arrays["input_ids"].shape[1]
    return (np.zeros((1, length), np.int32), np.ones((1, length), np.int32),
            np.zeros((1, length), np.int32))

  def batches(self, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    for batch in pipeline.batch_iterator(self.arrays, batch_size, shuffle=train, seed=seed,
                                         epoch=epoch, drop_remainder=train,
                                         process_index=jax.process_index(),
                                         process_count=jax.process_count(), start=start):
      batch.setdefault("valid", np.ones(len(batch["label"]), bool))
      yield batch


def _medmnist_split(data_config: ml_collections.ConfigDict, path: str, split: str) -> dict:
  arrays = medmnist.load_medmnist(path, split, as_rgb=data_config.as_rgb)
  if data_config.image_size and arrays["image"].shape[1] != data_config.image_size:
    arrays["image"] = pipeline.resize_images(arrays["image"], data_config.image_size)
  return arrays


def with_data_classes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with model.num_classes=None set to the number of classes the data defines (a
  text CSV's, ``text.read_class_names``; an image folder's or manifest's,
  ``folder.read_class_names``; other data needs model.num_classes); ``config`` itself when
  model.num_classes is set."""
  if config.model.get("num_classes") is not None:
    return config
  readers = {"text": text.read_class_names, "folder": folder.read_class_names}
  if config.data.name not in readers:
    raise DataError(f"model.num_classes is unset, but only text CSVs and image folders define "
                    f"their classes (data.name={config.data.name!r}); set "
                    "--config.model.num_classes.")
  names = readers[config.data.name](config.data)
  values = config.to_dict()
  values["model"]["num_classes"] = len(names)
  config = ml_collections.ConfigDict(values)
  logging.info("model.num_classes=%d: the classes of %s (%s).", len(names), config.data.path,
               ", ".join(names))
  return config


def get_datasets(data_config: ml_collections.ConfigDict, num_classes: int,
                 *, need_train: bool = True, max_tokens: Optional[int] = None
                 ) -> tuple[Optional[Dataset], Dataset]:
  """(train, eval) datasets of ``data_config`` (``config.data``); train is None when
  ``need_train`` is False. Each is a ``Dataset``; a text training split carries its
  ``validation`` split (data.val_fraction). ``max_tokens``: the most tokens per text the model
  reads (``model_lib.max_tokens``), the cap of data.max_len="auto"."""
  name = data_config.name
  if name not in DATASETS:
    raise DataError(f"Unknown data.name={name!r}; use one of {DATASETS}.")
  mean, std = tuple(data_config.mean), tuple(data_config.std)
  train = None
  if name == "synthetic":
    streams = {"test": 1, "val": 2, "validation": 2}
    if data_config.eval_split not in streams:
      raise DataError(f"data.eval_split={data_config.eval_split!r} for synthetic data; use 'test' "
                      "or 'val' (held-out streams for reporting and for choosing options).")
    counts = (("num_train", data_config.num_train),) if need_train else ()
    for field, count in counts + (("num_eval", data_config.num_eval),):
      if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise DataError(f"data.{field}={count!r}: synthetic data needs a positive number of "
                        f"examples, e.g. --config.data.{field}=1000.")
    try:
      if need_train:
        train = synthetic.make_split(data_config.num_train, image_size=data_config.image_size,
                                     seed=data_config.seed)
      eval_arrays = synthetic.make_split(data_config.num_eval, image_size=data_config.image_size,
                                         seed=data_config.seed + streams[data_config.eval_split])
    except ValueError as e:  # Names the argument, not the config field.
      raise DataError(f"synthetic data with data.image_size={data_config.image_size!r}, "
                      f"data.seed={data_config.seed!r}: {e}") from e
  elif name == "text":
    data = text.load_text_data(data_config, num_classes, need_train=need_train,
                               max_tokens=max_tokens)
    names = data.class_names
    validation = (TextDataset(data.validation, num_classes, names)
                  if data.validation is not None else None)
    train_ds = TextDataset(data.train, num_classes, names, validation) if need_train else None
    eval_ds = TextDataset(data.eval, num_classes, names)
    if train_ds is not None:
      warn_unused_classes(data.train["label"], num_classes, f"the CSV {data_config.path}")
    return train_ds, eval_ds
  elif name == "folder":
    return folder.make_datasets(data_config, num_classes, need_train=need_train)
  elif name == "medmnist":
    if not data_config.path:
      raise DataError("data.path is empty: pass --config.data.path=/path/to/<subset>.npz "
                      "(an official MedMNIST file).")
    if need_train:
      train = _medmnist_split(data_config, data_config.path, data_config.train_split)
    eval_arrays = _medmnist_split(data_config, data_config.eval_path or data_config.path,
                                  data_config.eval_split)
  else:
    data_dir = data_config.data_dir or None
    processes = data_config.get("decode_processes", 0)
    imagenet.check_decode_processes(processes, "data.decode_processes")
    train = (TfdsImageNet(data_config.train_split, data_config.image_size, mean, std, data_dir,
                          processes) if need_train else None)
    return train, TfdsImageNet(data_config.eval_split, data_config.image_size, mean,
                               std, data_dir, processes)

  augment = tuple(a for a in data_config.augment.split(",") if a)
  train_ds = (InMemoryDataset(train, num_classes, mean, std, augment)
              if train is not None else None)
  eval_ds = InMemoryDataset(eval_arrays, num_classes, mean, std)
  if train_ds is not None and train_ds.image_shape != eval_ds.image_shape:
    raise DataError(f"train images are {train_ds.image_shape} but eval images are "
                    f"{eval_ds.image_shape}; eval data must match the training format.")
  if train_ds is not None:
    source = (f"{data_config.path} (split {data_config.train_split!r})" if name == "medmnist"
              else "the synthetic shapes")
    warn_unused_classes(train["label"], num_classes, source)
  return train_ds, eval_ds

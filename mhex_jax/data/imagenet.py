"""ImageNet (ILSVRC 2012) from tensorflow-datasets' array_record files, without TensorFlow.

``tfds.data_source("imagenet2012")`` gives random access to the prepared array_record shards.
Each record is a serialized ``tf.train.Example``; tfds parses it with its own protobuf classes and
decodes the JPEG to a uint8 [H, W, 3] numpy array with OpenCV if installed, else PIL. So reading
needs neither TensorFlow nor tf.data. (Preparing the files once, ``tfds build imagenet2012
--file_format=array_record --manual_dir=<dir with ILSVRC2012_img_{train,val}.tar>``, does need
TensorFlow: tfds uses it to repair a few CMYK/PNG images.)

Batches are cut by `pipeline.batch_indices` from a global order fixed by (seed, epoch), and each
process decodes only its own rows of every global batch. Train augmentation of example ``i`` is
drawn from ``np.random.default_rng([seed, epoch, i])``, so a batch is the same whatever the
number of hosts, processes or threads. By default this process' threads decode: they overlap
JPEG decoding and resizing (PIL releases the GIL for both), but the rest of the work holds the
GIL, so one process tops out near 1,500 images/s however many cores it has
(benchmarks/results/input_pipeline.md). ``decode_processes=N`` runs the same work in N worker
processes of grain (``mp_prefetch``), which scale with the cores.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import math
import os
from typing import Any, Iterator, Optional

from absl import flags as absl_flags
import jax
import numpy as np
from PIL import Image

from mhex_jax.data import pipeline
from mhex_jax.errors import DataError

TFDS_NAME = "imagenet2012"
NUM_CLASSES = 1000
# Eval images are resized so that the centre crop keeps 87.5% of the shorter side (224 of 256).
EVAL_CROP_FRACTION = 0.875


def num_examples(split: str, data_dir: Optional[str] = None) -> int:
  """Number of examples in ``split`` (any tfds split string, e.g. "validation", "train[:1%]")."""
  return len(_data_source(split, data_dir))


def make_iterator(split: str, *, batch_size: int, image_size: int, train: bool, seed: int = 0,
                  epoch: int = 0, data_dir: Optional[str] = None,
                  num_workers: Optional[int] = None, prefetch: int = 2,
                  process_index: Optional[int] = None, process_count: Optional[int] = None,
                  start: int = 0, decode_processes: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of this process' batches.

  Args:
    split: tfds split string, e.g. "train", "validation", "train[:10000]".
    batch_size: global batch size B (all processes together), a multiple of process_count.
    image_size: output side S.
    train: random-resized-crop + flip, shuffled, last partial batch dropped; otherwise resize
      + centre crop in file order, last batch padded (see `pipeline.batch_indices`).
    seed, epoch: fix the order and the augmentation.
    data_dir: tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    num_workers: decoding threads of this process (default: the number of CPUs); only
      without ``decode_processes``.
    prefetch: global batches decoded ahead of the one being consumed (with
      ``decode_processes``, shared among the processes, at least one each).
    process_index, process_count: default to jax.process_index() and jax.process_count().
    start: skip the epoch's first ``start`` batches by index (resuming mid-epoch): none of
      their images is read or decoded.
    decode_processes: 0 decodes in this process' threads; N > 0 in N worker processes (grain,
      one thread each; pip install 'mhex_jax[imagenet]'), which give the same batches. Each
      start costs seconds (the workers import the pipeline), once an epoch.

  Yields:
    {"image": uint8 [B / P, S, S, 3], "label": int32 [B / P]}, plus "valid": bool [B / P]
    when not ``train``.
  """
  if image_size <= 0:
    raise DataError(f"image_size must be positive, got {image_size}.")
  check_decode_processes(decode_processes)
  if decode_processes and num_workers is not None:
    raise DataError(f"num_workers={num_workers} sets the threads of this process' reader, but "
                    f"decode_processes={decode_processes} decodes in worker processes of one "
                    "thread each; leave num_workers unset.")
  source = _data_source(split, data_dir)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batches = pipeline.batch_indices(
      len(source), batch_size, shuffle=train, seed=seed, epoch=epoch,
      drop_remainder=train, process_index=process_index, process_count=process_count,
      start=start)
  examples = ExampleLoader(source, image_size, train, seed, epoch)
  if decode_processes:
    rows = list(batches)
    if rows:  # Resumed at the epoch's end: no batch, and no worker to start.
      yield from _process_batches(BatchLoader(examples), rows, decode_processes,
                                  buffer_size=max(1, -(-prefetch // decode_processes)))
    return

  pool = concurrent.futures.ThreadPoolExecutor(num_workers or os.cpu_count())
  try:
    pending = collections.deque()
    for indices, valid in batches:
      pending.append((pool.map(examples, indices), valid))  # Submits the whole batch now.
      if len(pending) > prefetch:
        yield _collate(*pending.popleft(), train)
    while pending:
      yield _collate(*pending.popleft(), train)
  finally:
    pool.shutdown(wait=False, cancel_futures=True)


def check_decode_processes(value: Any, name: str = "decode_processes") -> None:
  """A DataError naming ``name`` unless ``value`` is an integer >= 0."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise DataError(f"{name}={value!r} must be an integer >= 0: 0 decodes ImageNet in this "
                    "process' threads, N > 0 in N worker processes (e.g. "
                    "--config.data.decode_processes=8; docs/usage.md).")


@dataclasses.dataclass(frozen=True)
class ExampleLoader:
  """index -> (image uint8 [S, S, 3], label) of example ``index`` of one epoch, train
  augmentation drawn from ``np.random.default_rng([seed, epoch, index])``. A picklable
  function of the index alone: threads and worker processes run the same one."""
  source: Any  # tfds' data source: source[i] = {"image": uint8 [H, W, C], "label": int}.
  image_size: int
  train: bool
  seed: int
  epoch: int

  def __call__(self, index) -> tuple[np.ndarray, int]:
    example = self.source[int(index)]
    image = _rgb(example["image"])
    if self.train:
      rng = np.random.default_rng([self.seed, self.epoch, int(index)])
      image = train_preprocess(image, rng, self.image_size)
    else:
      image = eval_preprocess(image, self.image_size)
    return image, int(example["label"])


@dataclasses.dataclass(frozen=True)
class BatchLoader:
  """(indices [B / P], valid [B / P]) -> the batch of those examples (`make_iterator`'s)."""
  examples: ExampleLoader

  def __call__(self, row: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    indices, valid = row
    return _collate(map(self.examples, indices), valid, self.examples.train)


def _process_batches(batch: BatchLoader, rows: list, decode_processes: int,
                     buffer_size: int) -> Iterator[dict[str, np.ndarray]]:
  """``batch(row)`` for each of ``rows`` in order, made in ``decode_processes`` processes."""
  try:
    import grain  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"decode_processes={decode_processes} decodes ImageNet in grain's worker "
                      "processes: pip install grain==0.2.18 (Python >= 3.11; the "
                      "mhex_jax[imagenet] extra has it), or set decode_processes=0 "
                      "(data.decode_processes) to decode in this process' threads.") from e
  # Worker w makes whole batches w, w + W, ... (mp_prefetch slices the rows, then interleaves
  # the workers' outputs in turn): the order is the rows'. One thread a worker: the processes
  # are the parallelism, as the work holds the GIL between PIL calls.
  dataset = grain.MapDataset.source(rows).map(batch).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)).mp_prefetch(
          grain.MultiprocessingOptions(num_workers=decode_processes,
                                       per_worker_buffer_size=buffer_size))
  iterator = None
  try:
    # Each worker reads the flag as it starts, and has started once it delivered a batch.
    with absl_flags_readable():
      iterator = iter(dataset)
      first = list(itertools.islice(iterator, decode_processes))
    for out in itertools.chain(first, iterator):
      yield {key: np.asarray(value) for key, value in out.items()}
  finally:
    if iterator is not None:
      iterator.close()


@contextlib.contextmanager
def absl_flags_readable():
  """grain 0.2.18's mp_prefetch reads an absl flag as a worker starts, which raises
  UnparsedFlagAccessError outside an absl app (google/grain#1355, fixed after 0.2.18): marks
  the flags parsed, at their defaults, for the while, unless something else parsed them.
  Unparsing resets ``--verbosity``, which sets the "absl" logger's level to WARNING; its level
  before is put back, so absl INFO logs still reach the caller's handlers."""
  marked = not absl_flags.FLAGS.is_parsed()
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  if marked:
    absl_flags.FLAGS.mark_as_parsed()
  try:
    yield
  finally:
    if marked:
      absl_flags.FLAGS.unparse_flags()
      absl_logger.setLevel(level)


def train_preprocess(image: np.ndarray, rng: np.random.Generator,
                     image_size: int) -> np.ndarray:
  """Random-resized crop (scale 0.08-1, ratio 3/4-4/3) + horizontal flip: [H, W, 3] -> [S, S, 3]."""
  top, left, height, width = random_resized_crop_box(*image.shape[:2], rng)
  out = _resize(image, (left, top, left + width, top + height), image_size)
  return out[:, ::-1] if rng.random() < 0.5 else out


def eval_preprocess(image: np.ndarray, image_size: int) -> np.ndarray:
  """Resize the shorter side to image_size / 0.875, centre crop: [H, W, 3] -> [S, S, 3]."""
  height, width = image.shape[:2]
  scale = round(image_size / EVAL_CROP_FRACTION) / min(height, width)
  # The S x S centre of the resized image, mapped back to source pixels; resampling only that
  # box gives the same pixels as resizing everything and cropping, for less work.
  crop = image_size / scale
  top, left = (height - crop) / 2, (width - crop) / 2
  return _resize(image, (left, top, left + crop, top + crop), image_size)


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator, *,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                            attempts: int = 10) -> tuple[int, int, int, int]:
  """(top, left, crop_height, crop_width) of an Inception-style crop, as in torchvision.

  Samples an area fraction in ``scale`` and a log-uniform aspect ratio (width / height) in
  ``ratio`` until the crop fits, else falls back to the largest centred crop within ``ratio``.
  """
  area = height * width
  for _ in range(attempts):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = round(math.sqrt(target * aspect))
    h = round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, round(width / ratio[0])
  elif aspect > ratio[1]:
    w, h = round(height * ratio[1]), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _resize(image: np.ndarray, box, size: int) -> np.ndarray:
  """Bilinear (antialiased) resample of ``box`` = (left, top, right, bottom) to [S, S, 3]."""
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box))


def _rgb(image: np.ndarray) -> np.ndarray:
  # tfds repairs ImageNet's CMYK/PNG files at preparation, but some JPEGs are grayscale.
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image, dtype=np.uint8)


def _collate(loaded, valid, train) -> dict[str, np.ndarray]:
  images, labels = zip(*loaded)
  batch = {"image": np.stack(images), "label": np.asarray(labels, np.int32)}
  if not train:
    batch["valid"] = valid
  return batch


def _data_source(split: str, data_dir: Optional[str]):
  # Imported here so the rest of mhex_jax neither pays tfds' import time nor needs it installed.
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("ImageNet input needs tensorflow-datasets: pip install "
                      "'mhex_jax[imagenet]' (or tensorflow-datasets>=4.9.10).") from e
  try:
    return tfds.data_source(TFDS_NAME, split=split, data_dir=data_dir, download=False)
  except (NotImplementedError, KeyError) as e:
    # tfds reports a missing dataset as an unsupported (tfrecord) file format, or, when an
    # empty version folder exists (e.g. under the default data_dir), as a KeyError on its splits.
    raise FileNotFoundError(
        f"No array_record {TFDS_NAME} under data_dir={data_dir!r} (default "
        "$TFDS_DATA_DIR or ~/tensorflow_datasets). Prepare it once with `tfds build "
        f"{TFDS_NAME} --file_format=array_record --data_dir=<dir> --manual_dir=<dir with "
        f"ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar>`. tfds said: {e}") from e

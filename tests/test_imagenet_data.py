"""Tests for mhex_jax.data.imagenet, without TensorFlow.

Two kinds of data stand in for ImageNet:
* `tfds.testing.mock_data`: random decoded images of random sizes behind the real
  `tfds.data_source("imagenet2012")` API (it skips the JPEG decoding).
* A real array_record copy of "imagenet2012" with a handful of JPEGs, written by a subclass of
  tfds' own ImageNet builder, so the read path (array_record -> tf.Example proto -> JPEG decode
  with PIL) is the one used on the real dataset.
"""
import dataclasses
import io
import logging
import os
import sys

import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder

from mhex_jax.data import imagenet
from mhex_jax.data import pipeline
from mhex_jax.errors import DataError

NUM_MOCK = 13


@pytest.fixture
def mock_imagenet(tmp_path):
  with tfds.testing.mock_data(num_examples=NUM_MOCK, policy=tfds.testing.MockPolicy.USE_CODE):
    yield str(tmp_path)


def _epoch(data_dir, **kwargs):
  kwargs = {"batch_size": 4, "image_size": 16, "train": True, "seed": 0,
            "num_workers": 2, "process_index": 0, "process_count": 1, **kwargs}
  return list(imagenet.make_iterator("train", data_dir=data_dir, **kwargs))


def test_mock_batches_shapes_and_dtypes(mock_imagenet):
  assert imagenet.num_examples("train", mock_imagenet) == NUM_MOCK
  train = _epoch(mock_imagenet, train=True)
  assert len(train) == NUM_MOCK // 4
  for batch in train:
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert np.all((batch["label"] >= 0) & (batch["label"] < imagenet.NUM_CLASSES))
  evals = _epoch(mock_imagenet, train=False, image_size=24)
  assert len(evals) == 4
  assert all(b["image"].shape == (4, 24, 24, 3) for b in evals)
  np.testing.assert_array_equal(np.concatenate([b["valid"] for b in evals]),
                                np.arange(16) < NUM_MOCK)


def test_mock_deterministic_from_seed_and_epoch(mock_imagenet):
  first = _epoch(mock_imagenet, seed=1, epoch=0)
  again = _epoch(mock_imagenet, seed=1, epoch=0, num_workers=1)
  next_epoch = _epoch(mock_imagenet, seed=1, epoch=1)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(first, next_epoch))


def _spy_on_reads(data_dir, monkeypatch) -> list[int]:
  """Makes the iterator read the mock train split through a spy; returns the list of indices
  it reads (appended as they are read)."""
  source = imagenet._data_source("train", data_dir)
  reads = []

  class Spy:
    def __len__(self):
      return len(source)

    def __getitem__(self, index):
      reads.append(int(index))
      return source[index]

  monkeypatch.setattr(imagenet, "_data_source", lambda split, data_dir: Spy())
  return reads


@pytest.mark.parametrize("train", [True, False])
def test_mock_processes_read_only_their_share(mock_imagenet, monkeypatch, train):
  reads = _spy_on_reads(mock_imagenet, monkeypatch)
  whole = _epoch(mock_imagenet, train=train, seed=5)
  shares, read_by = [], []
  for p in range(2):
    reads.clear()
    shares.append(_epoch(mock_imagenet, train=train, seed=5, process_index=p,
                         process_count=2))
    read_by.append(set(reads))
  # Only the padding of the last eval batch (copies of example 12) is read by both.
  assert read_by[0] & read_by[1] == (set() if train else {NUM_MOCK - 1})
  assert len(read_by[0] | read_by[1]) == (NUM_MOCK // 4 * 4 if train else NUM_MOCK)
  # The shares, one after the other, give back the single-process batch, augmentation included.
  for b, batch in enumerate(whole):
    for key in batch:
      merged = np.concatenate([shares[0][b][key], shares[1][b][key]])
      np.testing.assert_array_equal(merged, batch[key])


def test_random_resized_crop_box_within_bounds():
  rng = np.random.default_rng(0)
  for height, width in [(100, 200), (300, 120), (64, 64)]:
    for _ in range(200):
      top, left, h, w = imagenet.random_resized_crop_box(height, width, rng)
      assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
      assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
      assert 0.08 * 0.9 <= h * w / (height * width) <= 1.0
  # A very elongated image falls back to the largest centred crop of allowed aspect ratio.
  assert imagenet.random_resized_crop_box(10, 1000, rng, attempts=0) == (0, 493, 10, 13)


def test_train_preprocess_flips_and_is_deterministic():
  image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  out = imagenet.train_preprocess(image, np.random.default_rng([0, 0, 3]), 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(
      out, imagenet.train_preprocess(image, np.random.default_rng([0, 0, 3]), 16))
  # With the crop covering the whole image, the only randomness left is the flip.
  whole = np.full((8, 8, 3), 0, np.uint8)
  whole[:, :4] = 255
  flips = {imagenet.train_preprocess(whole, _WholeImageRng(seed), 8)[0, 0, 0]
           for seed in range(20)}
  assert flips == {0, 255}


class _WholeImageRng:
  """A generator whose crop is the whole image (scale 1, ratio 1) and whose flip is random."""

  def __init__(self, seed):
    self._rng = np.random.default_rng(seed)

  def uniform(self, low, high):
    return high if high == 1.0 else 0.0  # Area fraction 1; log(aspect) 0.

  def integers(self, low, high):
    return low

  def random(self):
    return self._rng.random()


def test_eval_crop_geometry():
  # A horizontal ramp, 64 x 128: R at column x is 2 * x.
  ramp = np.tile((2 * np.arange(128)).astype(np.uint8)[None, :, None], (64, 1, 3))
  out = imagenet.eval_preprocess(ramp, 28).astype(float)
  assert out.shape == (28, 28, 3)
  # Shorter side 64 -> 32 (= 28 / 0.875), so width 128 -> 64 and the crop keeps resized
  # columns 18..45, i.e. source columns 36..91: R from about 72 to about 182.
  np.testing.assert_allclose(out[:, 0, 0], 2 * 36.5, atol=3)
  np.testing.assert_allclose(out[:, -1, 0], 2 * 90.5, atol=3)
  np.testing.assert_allclose(out[:, :, 0].mean(), 2 * 63.5, atol=2)
  # Rows: 32 -> 28 crops 2 resized rows off the top and bottom; the ramp has no vertical change.
  assert np.ptp(out[:, 10, 0]) <= 1
  tall = imagenet.eval_preprocess(np.ascontiguousarray(np.swapaxes(ramp, 0, 1)), 28)
  np.testing.assert_array_equal(tall, np.swapaxes(out, 0, 1).astype(np.uint8))


def test_missing_dataset_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="No array_record imagenet2012.*tfds build "
                     "imagenet2012 --file_format=array_record"):
    imagenet.num_examples("validation", str(tmp_path))


def test_missing_dataset_under_the_default_data_dir_names_the_fix(tmp_path):
  # tfds reads $TFDS_DATA_DIR at import, so this runs in a fresh interpreter; an empty version
  # folder (what an unfinished `tfds build` leaves) made tfds raise a bare KeyError here.
  import os
  import subprocess
  import sys
  (tmp_path / "imagenet2012" / "5.1.0").mkdir(parents=True)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ("from mhex_jax.data import imagenet\n"
          "try:\n  imagenet.num_examples('train')\n"
          "except FileNotFoundError as e:\n  print('FileNotFoundError:', e)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       env={**os.environ, "TFDS_DATA_DIR": str(tmp_path), "PYTHONPATH": root},
                       timeout=120)
  assert "FileNotFoundError: No array_record imagenet2012" in out.stdout, out.stderr[-2000:]
  assert "tfds build imagenet2012 --file_format=array_record" in out.stdout


# A real array_record "imagenet2012" with JPEG bytes: exercises the decode path without TF.

_COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (128, 128, 128)]


def _jpeg(label, height, width, gray=False):
  colour = _COLOURS[label]
  if gray:
    image = Image.new("L", (width, height), colour[0])
  else:
    image = Image.new("RGB", (width, height), colour)
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", quality=95)
  return buffer.getvalue()


with tfds.core.registered.skip_registration():

  class _FixtureImagenet(imagenet2012_dataset_builder.Builder):
    """The real imagenet2012 features and file layout, with 5 tiny JPEGs per split."""
    name = "imagenet2012"

    @classmethod
    def _get_pkg_dir_path(cls):
      return imagenet2012_dataset_builder.Builder._get_pkg_dir_path()

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(), "validation": self._generate_examples()}

    def _generate_examples(self):
      for label in range(len(_COLOURS)):
        yield label, {"image": _jpeg(label, 30 + 7 * label, 50 - 5 * label, gray=label == 4),
                      "label": label, "file_name": f"img_{label}.JPEG"}


@pytest.fixture(scope="module")
def array_record_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  _FixtureImagenet(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir)


def test_array_record_jpegs_decode_without_tensorflow(array_record_dir):
  assert imagenet.num_examples("validation", array_record_dir) == len(_COLOURS)
  batches = list(imagenet.make_iterator(
      "validation", batch_size=4, image_size=12, train=False, data_dir=array_record_dir,
      process_index=0, process_count=1))
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  valid = np.concatenate([b["valid"] for b in batches])
  assert images.shape == (8, 12, 12, 3) and valid.sum() == len(_COLOURS)
  assert sorted(labels[valid]) == list(range(len(_COLOURS)))
  for image, label in zip(images, labels):
    expected = _COLOURS[label] if label != 4 else (128,) * 3  # Gray JPEG -> 3 equal channels.
    np.testing.assert_allclose(image.reshape(-1, 3).mean(0), expected, atol=4)
  train = list(imagenet.make_iterator(
      "train[:4]", batch_size=2, image_size=12, train=True, data_dir=array_record_dir,
      process_index=0, process_count=1))
  assert len(train) == 2 and train[0]["image"].shape == (2, 12, 12, 3)


def test_resume_skips_batches_by_index_without_reading_them(mock_imagenet, monkeypatch):
  reads = _spy_on_reads(mock_imagenet, monkeypatch)
  whole = _epoch(mock_imagenet, seed=2)
  reads.clear()
  tail = _epoch(mock_imagenet, seed=2, start=2)
  assert len(tail) == len(whole) - 2
  for a, b in zip(whole[2:], tail):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # Only the examples of the batches after ``start`` were read (and decoded).
  skipped, _ = zip(*list(pipeline.batch_indices(NUM_MOCK, 4, shuffle=True, seed=2,
                                                drop_remainder=True))[:2])
  assert not set(reads) & set(np.concatenate(skipped).tolist())
  assert len(reads) == 4 * len(tail)


# decode_processes > 0: the same batches from grain's worker processes (each start costs seconds).

def _grain_or_skip():
  pytest.importorskip("grain", reason="grain is not installed (pip install grain==0.2.18)")


def _assert_same_batches(ours, theirs):
  assert len(ours) == len(theirs) > 0
  for a, b in zip(ours, theirs):
    assert a.keys() == b.keys()
    for key in a:
      assert a[key].dtype == b[key].dtype, key
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_worker_processes_give_the_threads_train_batches(mock_imagenet):
  # Mock images are random pixels, so a crop or flip drawn otherwise would show.
  _grain_or_skip()
  options = {"batch_size": 2, "image_size": 16, "train": True, "seed": 3, "epoch": 1,
             "data_dir": mock_imagenet, "process_index": 0, "process_count": 1}
  threads = list(imagenet.make_iterator("train", num_workers=2, **options))
  processes = list(imagenet.make_iterator("train", decode_processes=2, **options))
  _assert_same_batches(threads, processes)  # 6 batches: 3 from one worker, 3 from the other.
  assert min(b["image"].std(axis=(1, 2, 3)).min() for b in threads) > 10


def test_worker_processes_give_the_threads_eval_rows_and_padding(array_record_dir):
  # The JPEG decode path; the second of two hosts' rows, the last batch padded.
  _grain_or_skip()
  options = {"batch_size": 4, "image_size": 12, "train": False, "data_dir": array_record_dir,
             "process_index": 1, "process_count": 2}
  threads = list(imagenet.make_iterator("validation", **options))
  processes = list(imagenet.make_iterator("validation", decode_processes=2, **options))
  _assert_same_batches(threads, processes)
  np.testing.assert_array_equal(np.concatenate([b["valid"] for b in processes]),
                                [True, True, False, False])


@dataclasses.dataclass(frozen=True)
class _LoggedReads:
  """A data source that appends "pid index" to a file for each example it reads: it sees the
  reads of the worker processes too, which each unpickle a copy."""
  source: object
  log: str

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    with open(self.log, "a") as f:
      f.write(f"{os.getpid()} {int(index)}\n")
    return self.source[index]


def test_worker_processes_resume_without_reading_skipped_batches(mock_imagenet, monkeypatch,
                                                                 tmp_path):
  _grain_or_skip()
  options = {"batch_size": 2, "image_size": 16, "train": True, "seed": 2,
             "data_dir": mock_imagenet, "process_index": 0, "process_count": 1}
  whole = list(imagenet.make_iterator("train", **options))
  log = tmp_path / "reads.txt"
  source = imagenet._data_source("train", mock_imagenet)
  monkeypatch.setattr(imagenet, "_data_source",
                      lambda split, data_dir: _LoggedReads(source, str(log)))
  tail = list(imagenet.make_iterator("train", decode_processes=2, start=2, **options))
  _assert_same_batches(whole[2:], tail)
  reads = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
  assert {pid for pid, _ in reads}.isdisjoint({os.getpid()})  # All read in the workers.
  skipped, _ = zip(*list(pipeline.batch_indices(NUM_MOCK, 2, shuffle=True, seed=2,
                                                drop_remainder=True))[:2])
  assert not {i for _, i in reads} & set(np.concatenate(skipped).tolist())
  assert len(reads) == 2 * len(tail)


def test_bad_decode_processes_names_the_fix(mock_imagenet, monkeypatch):
  # Imported here: worker processes import this module (for _LoggedReads), and these are slow.
  from configs import resnet18_imagenet  # pylint: disable=g-import-not-at-top
  from mhex_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  with pytest.raises(DataError, match=r"decode_processes=-1 must be an integer >= 0"):
    _epoch(mock_imagenet, decode_processes=-1)
  with pytest.raises(DataError, match=r"num_workers=2 .* leave num_workers unset"):
    _epoch(mock_imagenet, decode_processes=2)  # _epoch asks for 2 threads.
  config = resnet18_imagenet.get_config()
  config.data.data_dir = mock_imagenet
  config.data.decode_processes = -1
  with pytest.raises(DataError, match=r"data\.decode_processes=-1 must be an integer >= 0.*"
                     r"--config\.data\.decode_processes=8"):
    input_pipeline.get_datasets(config.data, config.model.num_classes)
  monkeypatch.setitem(sys.modules, "grain", None)  # As if not installed.
  with pytest.raises(ImportError, match=r"pip install grain==0\.2\.18"):
    _epoch(mock_imagenet, decode_processes=2, num_workers=None)


def test_the_absl_flag_workaround_leaves_flags_and_log_levels_as_they_were():
  # Outside an absl app (notebooks, pytest) the flags are parsed only inside the block; the
  # "absl" logger keeps its level (unparsing alone sets it to WARNING and hid absl INFO logs
  # from the tests that ran after a grain test in the same process).
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  absl_logger = logging.getLogger("absl")
  assert not absl_flags.FLAGS.is_parsed()
  before = absl_logger.level
  with imagenet.absl_flags_readable():
    assert absl_flags.FLAGS.is_parsed()
  assert not absl_flags.FLAGS.is_parsed() and absl_logger.level == before

"""Tests for mhex_jax.data.medmnist on small files in the official format and on a real one."""
import pathlib
import re

import numpy as np
import pytest

from mhex_jax.data import medmnist

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def _write(path, **arrays):
  np.savez(path, **arrays)
  return path


def _gray(rng, n, size=28):
  return rng.integers(0, 256, (n, size, size), dtype=np.uint8)


@pytest.fixture
def gray_file(tmp_path):
  rng = np.random.default_rng(0)
  return _write(tmp_path / "gray.npz",
                train_images=_gray(rng, 10),
                train_labels=np.array([[0], [1], [2]] * 3 + [[1]], np.uint8),
                val_images=_gray(rng, 4), val_labels=np.array([[2], [0], [1], [0]], np.uint8),
                # The largest label appears only in the test split.
                test_images=_gray(rng, 6),
                test_labels=np.array([[4], [0], [1], [2], [3], [0]], np.int64))


def test_gray_file(gray_file):
  assert medmnist.available_splits(gray_file) == ["train", "val", "test"]
  assert medmnist.num_classes_in(gray_file) == 5
  raw = np.load(gray_file)
  val = medmnist.load_medmnist(gray_file, "val")
  assert val["image"].shape == (4, 28, 28, 1) and val["image"].dtype == np.uint8
  assert val["label"].dtype == np.int32
  np.testing.assert_array_equal(val["label"], [2, 0, 1, 0])
  np.testing.assert_array_equal(val["image"][..., 0], raw["val_images"])
  rgb = medmnist.load_medmnist(gray_file, "test", as_rgb=True)
  assert rgb["image"].shape == (6, 28, 28, 3)
  for c in range(3):
    np.testing.assert_array_equal(rgb["image"][..., c], raw["test_images"])


def test_rgb_file_64(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
  path = _write(tmp_path / "rgb.npz", train_images=images,
                train_labels=np.arange(5, dtype=np.uint8)[:, None])
  for as_rgb in (False, True):
    data = medmnist.load_medmnist(path, "train", as_rgb=as_rgb)
    np.testing.assert_array_equal(data["image"], images)
    np.testing.assert_array_equal(data["label"], np.arange(5))
  assert medmnist.available_splits(path) == ["train"]


def test_missing_split(tmp_path):
  rng = np.random.default_rng(2)
  path = _write(tmp_path / "no_test.npz", train_images=_gray(rng, 3),
                train_labels=np.zeros((3, 1), np.uint8), val_images=_gray(rng, 2),
                val_labels=np.zeros((2, 1), np.uint8))
  with pytest.raises(ValueError, match=r"split 'test' is not in .*no_test.npz; it holds "
                     r"\['train', 'val'\]"):
    medmnist.load_medmnist(path, "test")


def test_missing_file(tmp_path):
  path = tmp_path / "nowhere" / "bloodmnist.npz"
  with pytest.raises(FileNotFoundError, match=r"nowhere/bloodmnist.npz does not exist.*"
                     r"medmnist.com"):
    medmnist.load_medmnist(path, "train")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    medmnist.available_splits(path)


def test_not_an_npz(tmp_path):
  # A text file named .npz: numpy would take it for a pickle and advise allow_pickle=True.
  text = tmp_path / "text.npz"
  text.write_text("image,label\n1,2\n")
  with pytest.raises(ValueError) as error:
    medmnist.load_medmnist(text, "train")
  message = str(error.value)
  assert f"{text} is not a NumPy .npz archive (it starts with b'image,'" in message
  assert "train_images/train_labels" in message and "pickle" not in message
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match=r"empty.npz is not a NumPy .npz archive \(it is empty"):
    medmnist.available_splits(empty)
  single = tmp_path / "single.npy"
  np.save(single, np.zeros(3))
  with pytest.raises(ValueError, match=r"single.npy holds a single array \(.npy\), not an .npz "
                     r"archive.*train_images/train_labels"):
    medmnist.available_splits(single)


def test_damaged_npz(tmp_path):
  rng = np.random.default_rng(3)
  good = _write(tmp_path / "good.npz", train_images=_gray(rng, 4),
                train_labels=np.zeros((4, 1), np.uint8))
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(good.read_bytes()[:1000])
  with pytest.raises(ValueError, match=r"truncated.npz is a damaged .npz archive \(truncated or "
                     r"corrupt\?\).*re-download"):
    medmnist.load_medmnist(truncated, "train")
  objects = tmp_path / "objects.npz"
  np.savez(objects, train_images=np.array([None, 1], object), train_labels=np.zeros((2, 1)))
  with pytest.raises(ValueError) as error:
    medmnist.load_medmnist(objects, "train")
  assert "objects.npz['train_images'] is an array of Python objects" in str(error.value)
  assert "allow_pickle" not in str(error.value)


def test_directory_and_unreadable_file(tmp_path, monkeypatch):
  rng = np.random.default_rng(4)
  _write(tmp_path / "bloodmnist.npz", train_images=_gray(rng, 2),
         train_labels=np.zeros((2, 1), np.uint8))
  with pytest.raises(FileNotFoundError, match=r"is a directory, not an .npz file \(it holds "
                     r"bloodmnist.npz\)"):
    medmnist.load_medmnist(tmp_path, "train")

  def denied(path, *args, **kwargs):
    raise PermissionError(13, "Permission denied", str(path))
  monkeypatch.setattr(medmnist, "open", denied, raising=False)  # chmod means nothing to root.
  with pytest.raises(ValueError, match=r"bloodmnist.npz cannot be read: permission denied.*"
                     r"chmod a\+r"):
    medmnist.load_medmnist(tmp_path / "bloodmnist.npz", "train")


def test_empty_split(tmp_path):
  rng = np.random.default_rng(5)
  path = _write(tmp_path / "empty_val.npz", train_images=_gray(rng, 3),
                train_labels=np.array([[0], [1], [1]], np.uint8),
                val_images=_gray(rng, 0), val_labels=np.zeros((0, 1), np.uint8))
  with pytest.raises(ValueError, match=re.escape(f"{path}: the 'val' split is empty "
                                                 "('val_images' has shape [0, 28, 28]); pick a "
                                                 "split with examples")):
    medmnist.load_medmnist(path, "val")
  assert medmnist.num_classes_in(path) == 2  # Empty splits hold no classes.
  labels_only = _write(tmp_path / "no_labels.npz", train_images=_gray(rng, 0),
                       train_labels=np.zeros((0, 1), np.uint8))
  with pytest.raises(ValueError, match=r"no_labels.npz: every split \(train\) is empty"):
    medmnist.num_classes_in(labels_only)


@pytest.mark.parametrize("arrays, match", [
    (dict(images=np.zeros((2, 28, 28), np.uint8)), r"none of the keys .*found keys "
     r"\['images'\]"),
    (dict(train_images=np.zeros((2, 28, 28), np.uint8)), "has key 'train_images' but no "
     "'train_labels'"),
    (dict(train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.zeros((5, 1), np.uint8)),
     "'train_labels' has 5 labels but 'train_images' has 4 images"),
    (dict(train_images=np.zeros((2, 28, 28), np.float32), train_labels=np.zeros((2, 1), np.uint8)),
     r"\['train_images'\] must be uint8 \[N, H, W\] or \[N, H, W, 3\], got float32\[2, 28, 28\]"),
    (dict(train_images=np.zeros((2, 28), np.uint8), train_labels=np.zeros((2, 1), np.uint8)),
     r"\['train_images'\] must be .*got uint8\[2, 28\]"),
    (dict(train_images=np.zeros((2, 28, 28, 4), np.uint8), train_labels=np.zeros((2, 1), np.uint8)),
     r"got uint8\[2, 28, 28, 4\]"),
    (dict(train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 14), np.uint8)),
     r"\['train_labels'\] has shape \[2, 14\]: a multi-label subset.*Only single-label"),
    (dict(train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 1), np.float32)),
     r"\['train_labels'\] must be integer \[N, 1\] labels, got float32\[2, 1\]"),
    (dict(train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.array([[0], [-1]])),
     r"must hold labels >= 0.*minimum -1"),
])
def test_malformed_contents(tmp_path, arrays, match):
  path = _write(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ValueError, match=match):
    medmnist.load_medmnist(path, "train")


def test_multi_label_rejected_by_num_classes_in(tmp_path):
  path = _write(tmp_path / "chestmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8),
                train_labels=np.zeros((2, 14), np.uint8))
  with pytest.raises(ValueError, match="chestmnist.npz.*multi-label"):
    medmnist.num_classes_in(path)


def test_real_pneumoniamnist():
  path = SHARED_DATA / "pneumoniamnist" / "pneumoniamnist.npz"
  if not path.exists():
    pytest.skip(f"real PneumoniaMNIST file not present at {path}")
  assert medmnist.available_splits(path) == ["train", "val"]
  assert medmnist.num_classes_in(path) == 2
  train = medmnist.load_medmnist(path, "train")
  assert train["image"].shape == (4690, 28, 28, 1) and train["image"].dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(train["label"]), [1213, 3477])
  val = medmnist.load_medmnist(path, "val", as_rgb=True)
  assert val["image"].shape == (524, 28, 28, 3)
  np.testing.assert_array_equal(np.bincount(val["label"]), [135, 389])
  with pytest.raises(ValueError, match=r"split 'test' is not in .*\['train', 'val'\]"):
    medmnist.load_medmnist(path, "test")

"""Image collections as data (mhex_jax.data.folder): class folders, split folders and manifests
written by the tests in every format image_files reads (8-bit PNG, JPEG, 16-bit PNG, TIFF,
DICOM) with masks; class names, splits, the pixels explain.py sees, determinism, resume and
process shares without reading other files (a read spy), skipped files, every refused layout,
and one tiny run: train, then eval with pointing games from the masks."""

import logging as std_logging
import os
import re

import jax
import ml_collections
import numpy as np
from PIL import Image
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
import pytest

from configs import image_folder
from mhex_jax import eval_lib
from mhex_jax import explain_lib
from mhex_jax import train_lib
from mhex_jax import workdir as workdir_lib
from mhex_jax.data import folder
from mhex_jax.data import image_files
from mhex_jax.data import input_pipeline
from mhex_jax.errors import DataError

HEIGHT, WIDTH = 40, 48  # Not square: the centred square is what the model sees.
FORMATS = ("png", "jpg", "png16", "tif", "dcm")


def _scene(k: int) -> tuple[np.ndarray, np.ndarray]:
  """Image k: a gradient with a bright 12 px square at a position of its own, and its mask."""
  y, x = 4 + (k * 7) % (HEIGHT - 16), 8 + (k * 5) % (WIDTH - 28)
  image = np.tile(np.linspace(20, 120, WIDTH), (HEIGHT, 1))
  image[y:y + 12, x:x + 12] = 230
  mask = np.zeros((HEIGHT, WIDTH), bool)
  mask[y:y + 12, x:x + 12] = True
  return image.astype(np.uint8), mask


def _write_dicom(path, pixels: np.ndarray) -> None:
  """A 16-bit MONOCHROME2 DICOM of ``pixels`` (no window: read by the stored bits' range)."""
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography.
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
  ds.PixelData = pixels.astype("<u2").tobytes()
  ds.save_as(path, enforce_file_format=True)


def _write(path_stem: str, image: np.ndarray, fmt: str) -> str:
  """``image`` (uint8 [H, W]) saved as ``fmt``; 16-bit formats hold v * 257 (full range: the
  same [0, 1] values as the 8-bit image) or, for png16, 200 + v * 200 (all above 255)."""
  if fmt == "png":
    Image.fromarray(image).save(path := path_stem + ".png")
  elif fmt == "jpg":
    Image.fromarray(np.repeat(image[..., None], 3, -1)).save(path := path_stem + ".jpg",
                                                            quality=95)
  elif fmt == "png16":
    Image.fromarray((200 + image.astype(np.uint16) * 200)).save(path := path_stem + ".png")
  elif fmt == "tif":
    Image.fromarray(image).save(path := path_stem + ".tif")
  else:
    _write_dicom(path := path_stem + ".dcm", image.astype(np.uint16) * 257)
  return path


def make_tree(root, per_class=5, classes=("lesion", "normal"), mask_root=None, split=None):
  """``root/[split/]<class>/img_k.<fmt>`` in turn of FORMATS, masks (PNG) under ``mask_root``
  at the same relative paths. Returns {path: mask}."""
  written = {}
  for c, name in enumerate(classes):
    relative = os.path.join(*(p for p in (split, name) if p))
    os.makedirs(os.path.join(root, relative), exist_ok=True)
    for i in range(per_class):
      k = c * per_class + i + (1000 if split == "val" else 0)
      image, mask = _scene(k)
      path = _write(os.path.join(root, relative, f"img_{i}"), image, FORMATS[k % len(FORMATS)])
      written[path] = mask
      if mask_root:
        os.makedirs(os.path.join(mask_root, relative), exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            os.path.join(mask_root, relative, f"img_{i}.png"))
  return written


def data_config(path, **fields) -> ml_collections.ConfigDict:
  config = image_folder.get_config().data
  config.path = str(path)
  config.image_size = 16
  for key, value in fields.items():
    config[key] = value
  return config


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("tree")
  written = make_tree(str(root / "images"), mask_root=str(root / "masks"))
  return root, written


def _spy(monkeypatch) -> list[str]:
  reads = []
  read = image_files.read_image

  def spy(path, **kwargs):
    reads.append(os.fspath(path))
    return read(path, **kwargs)

  monkeypatch.setattr(image_files, "read_image", spy)
  return reads


# Layouts, classes, splits.


def test_class_folders_stratified_split_and_class_names(tree):
  root, written = tree
  splits = folder.make_splits(data_config(root / "images"), 2)
  assert splits.class_names == ("lesion", "normal")
  # 20% of each class held out: 1 of 5 each.
  assert len(splits.eval.paths) == 2 and len(splits.train.paths) == 8
  assert sorted(splits.eval.paths + splits.train.paths) == sorted(written)
  assert list(splits.eval_labels) == [0, 1]
  for paths, labels in ((splits.train.paths, splits.train_labels),
                        (splits.eval.paths, splits.eval_labels)):
    assert [("lesion", "normal")[k] for k in labels] == [p.split(os.sep)[-2] for p in paths]
  again = folder.make_splits(data_config(root / "images"), 2)
  other = folder.make_splits(data_config(root / "images", split_seed=3), 2)
  assert again.eval.paths == splits.eval.paths and other.eval.paths != splits.eval.paths
  # Evaluation lists the same split without the training examples.
  assert folder.make_splits(data_config(root / "images"), 2, need_train=False).train is None


def test_unset_class_count_is_the_folders(tmp_path):
  """model.num_classes=None (configs/image_folder.py) becomes the number of class folders of the
  training split, read without opening an image."""
  make_tree(str(tmp_path / "train_val"), per_class=1, classes=("a", "b", "c"), split="train")
  config = image_folder.get_config()
  config.data.path = str(tmp_path / "train_val")
  assert config.model.num_classes is None
  assert input_pipeline.with_data_classes(config).model.num_classes == 3


def test_split_folders_and_unknown_class(tmp_path):
  make_tree(str(tmp_path / "d"), per_class=2, split="train")
  make_tree(str(tmp_path / "d"), per_class=1, split="val", classes=("normal",))
  splits = folder.make_splits(data_config(tmp_path / "d"), 2)
  assert len(splits.train.paths) == 4 and list(splits.eval_labels) == [1]
  assert all(os.sep + "val" + os.sep in p for p in splits.eval.paths)
  make_tree(str(tmp_path / "d"), per_class=1, split="test", classes=("tumour",))
  with pytest.raises(DataError, match=r"d/test has the class\(es\) \['tumour'\], which are not "
                                      r"among the classes \['lesion', 'normal'\]"):
    folder.make_splits(data_config(tmp_path / "d", eval_split="test"), 2)
  with pytest.raises(DataError, match=r"has no split folder 'validation' \(it has test, train, "
                                      r"val\)"):
    folder.make_splits(data_config(tmp_path / "d", eval_split="validation"), 2)
  # Another folder to evaluate on, whole.
  make_tree(str(tmp_path / "other"), per_class=1)
  splits = folder.make_splits(data_config(tmp_path / "d", eval_path=str(tmp_path / "other")), 2)
  assert len(splits.eval.paths) == 2 and list(splits.eval_labels) == [0, 1]


@pytest.mark.parametrize("header", [True, False])
def test_manifest_with_masks(tree, tmp_path, header):
  root, _ = tree
  rows = [f"{root}/images/normal/img_0.png,normal,{root}/masks/normal/img_0.png",
          f"{root}/images/lesion/img_1.jpg,lesion,",  # No mask: an empty one.
          f"{root}/images/normal/img_3.tif,normal,{root}/masks/normal/img_3.png",
          f"{root}/images/lesion/img_2.png,lesion,{root}/masks/lesion/img_2.png"]
  # Paths relative to the manifest's folder.
  rows = [",".join(os.path.relpath(f, tmp_path) if f.startswith(str(root)) else f
                   for f in row.split(",")) for row in rows]
  manifest = tmp_path / "manifest.csv"
  manifest.write_text("\n".join((["path,label,mask_path"] if header else []) + rows) + "\n")
  listing = folder.read_manifest(str(manifest))
  assert listing.labels == ("normal", "lesion", "normal", "lesion")
  assert listing.paths[1] == f"{root}/images/lesion/img_1.jpg"
  assert listing.masks[1] is None and listing.masks[0].endswith("normal/img_0.png")
  _, evaluation = folder.make_datasets(data_config(manifest, eval_fraction=0.5), 2)
  assert evaluation.has_masks and evaluation.class_names == ("lesion", "normal")


def test_integer_labels_are_numbered_by_value():
  assert folder.class_order(["10", "2", "1", "2"]) == ("1", "2", "10")
  assert folder.class_order(["b", "a", "10"]) == ("10", "a", "b")


def test_class_names_reach_the_saved_config_through_the_dataset(tree):
  root, _ = tree
  train, evaluation = input_pipeline.get_datasets(data_config(root / "images"), 2)
  assert train.class_names == evaluation.class_names == ("lesion", "normal")
  assert not train.has_masks and train.validation is None  # Training does not read masks.
  # data.val_fraction: a validation split held out of the training images only.
  with_validation, same_eval = input_pipeline.get_datasets(
      data_config(root / "images", val_fraction=0.25), 2)
  assert same_eval.listing == evaluation.listing
  validation = with_validation.validation
  assert validation.num_examples == 2 and list(validation.labels) == [0, 1]
  assert sorted(validation.listing.paths + with_validation.listing.paths) == sorted(
      train.listing.paths)
  with pytest.raises(DataError, match=r"the training data .*images has 2 classes \(lesion, "
                                      r"normal\) but model.num_classes=3; set "
                                      r"--config.model.num_classes=2"):
    input_pipeline.get_datasets(data_config(root / "images"), 3)


# Pixels.


def test_eval_pixels_masks_and_16_bit_contrast(tree):
  root, written = tree
  images = str(root / "images")
  listing = folder.attach_masks(folder.list_classes(images), str(root / "masks"), images)
  evaluation = folder.FolderDataset(listing, np.zeros(len(listing.paths), np.int32), ("a", "b"),
                                    image_size=16, channels=1, mean=(0.5,), std=(0.25,),
                                    with_masks=True)
  (batch,) = list(evaluation.batches(16, train=False))
  n = evaluation.num_examples
  assert batch["image"].shape == (16, 16, 16, 1) and batch["image"].dtype == np.float32
  assert batch["mask"].shape == (16, 16, 16) and batch["mask"].dtype == bool
  assert list(batch["valid"]) == [True] * n + [False] * (16 - n)
  for row, path in enumerate(evaluation.listing.paths):
    image = image_files.read_image(path)
    expected = (image_files.fit_image(image, 16, 1) - 0.5) / 0.25
    np.testing.assert_array_equal(batch["image"][row], expected)
    # The mask: the written one's centred square (40 of 48 columns), nearest neighbour.
    mask = written[path][:, 4:44]
    rows_cols = (np.arange(16) * 40 / 16 + 40 / 32).astype(int)
    np.testing.assert_array_equal(batch["mask"][row], mask[rows_cols][:, rows_cols])
  # A 16-bit PNG whose values all lie above 255 keeps its contrast: the square (230) is
  # bright, the gradient (20..120) dark, none of it clipped to white.
  sixteen = [i for i, p in enumerate(evaluation.listing.paths)
             if p.endswith(".png") and Image.open(p).mode.startswith("I")]
  assert sixteen
  for row in sixteen:
    pixels = batch["image"][row] * 0.25 + 0.5
    assert 0.6 < pixels.max() < 0.8 and np.median(pixels[~batch["mask"][row]]) < 0.4


def test_fit_image_matches_8_bit_and_converts_channels():
  rng = np.random.default_rng(0)
  eight = rng.integers(0, 256, (30, 50, 3)).astype(np.uint8)
  as_read = eight.astype(np.float32) / np.float32(255)
  gray = image_files.fit_image(as_read, 12, 1)
  pil = Image.fromarray(eight).convert("L").resize((12, 12), Image.BILINEAR, box=(10, 0, 40, 30))
  np.testing.assert_array_equal(gray[..., 0], np.asarray(pil) / np.float32(255))
  assert image_files.fit_image(as_read[..., :1], 12, 3).shape == (12, 12, 3)
  # 16-bit values (not v / 255) are resampled in float32: a constant stays that constant.
  flat = np.full((30, 50, 1), 1000 / 65535, np.float32)
  np.testing.assert_allclose(image_files.fit_image(flat, 12, 3), 1000 / 65535, rtol=1e-6)


# Determinism, resume, process shares.


def _train_set(root, **fields):
  train, _ = folder.make_datasets(data_config(
      root, augment="flip,crop,resized_crop", eval_fraction=0.2, num_workers=2, **fields), 2)
  return train


def test_train_batches_deterministic_and_resume_reads_none_of_the_skipped(tree, monkeypatch):
  root, _ = tree
  train = _train_set(root / "images")
  first = list(train.batches(2, train=True, seed=1, epoch=0))
  train.num_workers = 1
  again = list(train.batches(2, train=True, seed=1, epoch=0))
  other_epoch = list(train.batches(2, train=True, seed=1, epoch=1))
  assert len(first) == 4
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(first, other_epoch))
  reads = _spy(monkeypatch)
  resumed = list(train.batches(2, train=True, seed=1, epoch=0, start=2))
  for a, b in zip(first[2:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  order = np.random.default_rng([1, 0]).permutation(train.num_examples)
  assert sorted(reads) == sorted(train.listing.paths[i] for i in order[4:8])


@pytest.mark.parametrize("train", [True, False])
def test_processes_read_only_their_share(tree, monkeypatch, train):
  root, _ = tree
  dataset = _train_set(root / "images")
  whole = list(dataset.batches(4, train=train, seed=2))
  reads = _spy(monkeypatch)
  shares, read_by = [], []
  for p in range(2):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    reads.clear()
    shares.append(list(dataset.batches(4, train=train, seed=2)))
    read_by.append(set(reads))
  assert not read_by[0] & read_by[1]
  for b, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([shares[0][b][key], shares[1][b][key]]),
                                    batch[key])


# Unreadable files.


def test_unreadable_file_stops_or_is_skipped_with_a_count(tmp_path, caplog):
  make_tree(str(tmp_path / "d"), per_class=4)
  config = data_config(tmp_path / "d", eval_fraction=0.5)
  _, evaluation = folder.make_datasets(config, 2)
  bad = next(p for p in evaluation.listing.paths if not p.endswith(".dcm"))
  with open(bad, "wb") as f:
    f.write(b"\xff\xd8 truncated")
  with pytest.raises(DataError, match=re.escape(bad) + " is not an image file that can be read"):
    list(evaluation.batches(4, train=False))
  config.skip_unreadable = True
  _, evaluation = folder.make_datasets(config, 2)
  with caplog.at_level(std_logging.WARNING):
    batches = list(evaluation.batches(4, train=False))
  valid = np.concatenate([b["valid"] for b in batches])
  row = evaluation.listing.paths.index(bad)
  assert not valid[row] and valid.sum() == evaluation.num_examples - 1
  assert f"Skipping unreadable image {bad}" in caplog.text
  assert "1 file(s) of" in caplog.text


# Refused layouts: each names the file or folder and the fix.


def _empty_class(d):
  make_tree(d, per_class=2)
  os.makedirs(os.path.join(d, "tumour"))


def _not_an_image(d):
  make_tree(d, per_class=2)
  with open(os.path.join(d, "normal", "notes.txt"), "w") as f:
    f.write("scanned 2024\n")


def _mask_other_size(d):
  make_tree(d, per_class=2, mask_root=d + "_masks")
  for name in ("img_0.png", "img_1.png"):
    Image.new("L", (20, 10)).save(os.path.join(d + "_masks", "lesion", name))


def _manifest_missing_file(d):
  make_tree(d, per_class=2)
  with open(d + ".csv", "w") as f:
    f.write("path,label\nd/lesion/img_0.png,lesion\nd/lesion/gone.png,lesion\n")


def _no_masks(d):
  make_tree(d)
  os.makedirs(d + "_masks")
  Image.new("L", (8, 8)).save(os.path.join(d + "_masks", "other.png"))


def _loose_image(d):
  make_tree(d, per_class=2)
  Image.new("L", (8, 8)).save(os.path.join(d, "stray.png"))


@pytest.mark.parametrize("make, fields, message", [
    (_empty_class, {}, r"class folder .*d/tumour holds no images \(.*\); add its images or "
                       r"remove the folder"),
    (lambda d: make_tree(d, classes=("normal",)), {},
     r"the training data .*d holds one class only \('normal'\); a classifier needs images of "
     r"at least two classes"),
    (_not_an_image, {}, r"d/normal/notes.txt is not an image file \(suffix '.txt'; images are "
                        r".bmp .dcm .*; move other files out of the class folders"),
    (_manifest_missing_file, {"path": "{d}.csv"},
     r"d.csv, line 3: image d/lesion/gone.png does not exist \(looked for .*\); paths are "
     r"relative to the manifest's folder"),
    (_loose_image, {}, r"d holds images outside class folders \(.*stray.png\); put every image "
                       r"in the folder of its class"),
    (lambda d: None, {}, r"data path .*/d does not exist"),
    (make_tree, {"augment": "flip,jitter"},
     r"Unknown augmentation\(s\) \['jitter'\] for image folders"),
    (_no_masks, {"mask_root": "{d}_masks"},
     r"data.mask_root=.*d_masks holds no mask of any image of .*d; masks must have the images' "
     r"relative paths, e.g. .*d_masks/lesion/img_\d.png for .*d/lesion/img_\d.png"),
])
def test_refused_layouts(tmp_path, make, fields, message):
  d = str(tmp_path / "d")
  make(d)
  fields = {k: v.format(d=d) if isinstance(v, str) else v for k, v in fields.items()}
  path = fields.pop("path", d)
  with pytest.raises(DataError, match=message):
    folder.make_datasets(data_config(path, **fields), 2)


def test_mask_of_another_size_names_both_files(tmp_path, monkeypatch):
  d = str(tmp_path / "d")
  _mask_other_size(d)
  config = data_config(d, mask_root=d + "_masks", eval_fraction=0.5)
  message = (r"mask .*d_masks/lesion/img_(\d).png is 20x10 \(width x height\) but its image "
             r".*d/lesion/img_\1.\w+ is 48x40; a mask must have its image's size")
  with pytest.raises(DataError, match=message):  # From the headers, before any training.
    folder.make_datasets(config, 2)
  # Where a header does not tell, reading the files does.
  monkeypatch.setattr(folder, "header_size", lambda path: None)
  _, evaluation = folder.make_datasets(config, 2)
  with pytest.raises(DataError, match=message):
    list(evaluation.batches(4, train=False))


# One tiny run: train a few steps, evaluate with pointing games from the masks.


def test_train_then_eval_pointing_games_and_explain_pixels(tree, tmp_path):
  root, _ = tree
  config = image_folder.get_config()
  config.num_devices = 1
  config.data.path = str(root / "images")
  config.data.mask_root = str(root / "masks")
  config.data.eval_fraction = 0.5
  config.data.image_size = 32
  config.data.num_workers = 2
  config.model.width = 4
  config.model.mhex_stages = (3,)  # Half the compile time of all four.
  config.train.batch_size = 4
  config.train.num_epochs = 2
  config.train.log_every_steps = 2
  config.eval.batch_size = 8
  config.eval.num_explain = 5
  config.eval.deletion_steps = 4
  config.eval.num_gallery = 1
  config.eval.pointing_tolerance = 2
  workdir = str(tmp_path / "run")
  result = train_lib.train_and_evaluate(config, workdir)
  assert result["step"] == 2
  saved = workdir_lib.load_config(workdir)
  assert tuple(saved.data.class_names) == ("lesion", "normal")
  report = eval_lib.evaluate(saved, workdir)
  assert report["class_names"] == ["lesion", "normal"] and report["num_examples"] == 6
  mhex = report["methods"]["mhex"]
  assert 0 <= mhex["pointing_game"] <= 1 and 0 <= mhex["energy_pointing_game"] <= 1
  with np.load(os.path.join(workdir, "eval", "per_example.npz")) as arrays:
    assert arrays["mask_nonempty"].tolist() == [True] * 5  # Scored on every explained image.
  # explain.py fits a file to the same pixels the evaluation saw.
  _, evaluation = input_pipeline.get_datasets(saved.data, 2, need_train=False)
  (batch,) = list(evaluation.batches(8, train=False))
  run = explain_lib.load(workdir)
  for row, path in enumerate(evaluation.listing.paths):
    prepared, _ = run.prepare_image(explain_lib.read_image(path))
    np.testing.assert_allclose(prepared, batch["image"][row], rtol=0, atol=1e-6)

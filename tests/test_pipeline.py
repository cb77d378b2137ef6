"""Tests for mhex_jax.data.pipeline: batching/sharding, normalisation, resizing."""
import numpy as np
import pytest

from mhex_jax.data import pipeline


def _split(n=10):
  return {"image": np.arange(n * 2 * 2 * 1, dtype=np.uint8).reshape(n, 2, 2, 1),
          "label": np.arange(n, dtype=np.int32)}


def test_eval_batches_cover_each_example_once_and_pad():
  batches = list(pipeline.batch_iterator(_split(10), 4, shuffle=False, seed=0,
                                         drop_remainder=False))
  assert [len(b["label"]) for b in batches] == [4, 4, 4]
  assert all(b["image"].shape == (4, 2, 2, 1) for b in batches)
  np.testing.assert_array_equal(batches[0]["valid"], [True] * 4)
  np.testing.assert_array_equal(batches[2]["valid"], [True, True, False, False])
  labels = np.concatenate([b["label"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(10))
  # Padding repeats real examples, consistently across keys.
  last = batches[2]
  np.testing.assert_array_equal(last["label"], [8, 9, 8, 9])
  np.testing.assert_array_equal(last["image"][2:], _split(10)["image"][[8, 9]])


def test_train_batches_drop_remainder_and_shuffle_by_seed_and_epoch():
  def epoch_labels(seed, epoch):
    batches = list(pipeline.batch_iterator(_split(10), 4, shuffle=True, seed=seed,
                                           epoch=epoch, drop_remainder=True))
    assert all("valid" not in b for b in batches)
    return np.concatenate([b["label"] for b in batches])

  labels = epoch_labels(0, 0)
  assert len(labels) == 8 and len(set(labels.tolist())) == 8
  assert not np.array_equal(labels, np.arange(8))
  np.testing.assert_array_equal(labels, epoch_labels(0, 0))
  assert not np.array_equal(labels, epoch_labels(0, 1))
  assert not np.array_equal(labels, epoch_labels(1, 0))


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_processes_get_disjoint_contiguous_blocks(drop_remainder):
  kwargs = dict(shuffle=True, seed=3, epoch=2, drop_remainder=drop_remainder)
  whole = list(pipeline.batch_iterator(_split(21), 8, **kwargs))
  shards = [list(pipeline.batch_iterator(_split(21), 8, process_index=p, process_count=4,
                                         **kwargs)) for p in range(4)]
  assert all(len(s) == len(whole) for s in shards)
  for b, batch in enumerate(whole):
    for p in range(4):
      local = shards[p][b]
      assert local["label"].shape == (2,)
      for key in batch:
        np.testing.assert_array_equal(local[key], batch[key][2 * p:2 * p + 2])
  # Across processes, the real examples of an epoch are each read once.
  seen = np.concatenate([b["label"][b["valid"]] if "valid" in b else b["label"]
                         for shard in shards for b in shard])
  assert len(seen) == len(set(seen.tolist())) == (16 if drop_remainder else 21)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=6, process_count=4), "batch_size must be a positive multiple of "
     "process_count=4, got 6"),
    (dict(batch_size=4, process_index=2, process_count=2), r"process_index must be in \[0, "
     "process_count=2\\), got 2"),
    (dict(batch_size=16, drop_remainder=True), "10 examples make no full batch of 16"),
])
def test_batch_iterator_bad_arguments(kwargs, match):
  kwargs = {"shuffle": False, "seed": 0, "drop_remainder": False, **kwargs}
  with pytest.raises(ValueError, match=match):
    next(pipeline.batch_iterator(_split(10), **kwargs))


def test_batch_iterator_bad_split():
  with pytest.raises(ValueError, match="share their leading dimension.*'label': 9"):
    next(pipeline.batch_iterator({"image": np.zeros((10, 2)), "label": np.zeros(9)}, 2,
                                 shuffle=False, seed=0, drop_remainder=False))
  with pytest.raises(ValueError, match="already has a 'valid' key"):
    next(pipeline.batch_iterator({"valid": np.zeros(4)}, 2, shuffle=False, seed=0,
                                 drop_remainder=False))
  with pytest.raises(ValueError, match="split is empty"):
    next(pipeline.batch_iterator({}, 2, shuffle=False, seed=0, drop_remainder=False))


def test_normalize_per_channel():
  images = np.array([0, 51, 255], np.uint8).reshape(1, 1, 1, 3)
  out = pipeline.normalize(images, mean=(0.0, 0.1, 0.5), std=(1.0, 0.5, 0.25))
  assert out.dtype == np.float32 and out.shape == (1, 1, 1, 3)
  np.testing.assert_allclose(out.reshape(-1), [0.0, (0.2 - 0.1) / 0.5, (1.0 - 0.5) / 0.25],
                             rtol=1e-6)
  gray = pipeline.normalize(np.full((2, 3, 3, 1), 255, np.uint8), mean=(0.5,), std=(0.5,))
  np.testing.assert_allclose(gray, 1.0)


@pytest.mark.parametrize("images, mean, std, match", [
    (np.zeros((1, 2, 2, 3), np.float32), (0.5,), (0.5,), r"uint8 \[\.\.\., H, W, C\], got "
     r"float32\[1, 2, 2, 3\]"),
    (np.zeros((2, 2), np.uint8), (0.5,), (0.5,), r"got uint8\[2, 2\]"),
    (np.zeros((1, 2, 2, 3), np.uint8), (0.5, 0.5), (0.5,), "mean has 2 entries but images "
     "have 3 channels"),
    (np.zeros((1, 2, 2, 3), np.uint8), (0.5,), (0.0,), "std must be positive"),
    (np.zeros((1, 2, 2, 3), np.uint8), (123.7, 116.3, 103.5), (58.4, 57.1, 57.4),
     "divide them by 255"),
])
def test_normalize_errors(images, mean, std, match):
  with pytest.raises(ValueError, match=match):
    pipeline.normalize(images, mean, std)


def test_resize_images():
  ramp = np.tile(np.linspace(0, 255, 28).astype(np.uint8)[None, :, None], (28, 1, 1))
  gray = np.stack([ramp, 255 - ramp])  # [2, 28, 28, 1]
  out = pipeline.resize_images(gray, 64)
  assert out.shape == (2, 64, 64, 1) and out.dtype == np.uint8
  # A horizontal ramp stays a horizontal ramp, in the same direction, with the same mean.
  assert np.all(np.diff(out[0, 10, :, 0].astype(int)) >= 0)
  assert abs(out[0].mean() - gray[0].mean()) < 2
  rgb = np.zeros((3, 64, 64, 3), np.uint8)
  rgb[..., 1] = 200
  small = pipeline.resize_images(rgb, 28)
  assert small.shape == (3, 28, 28, 3)
  np.testing.assert_array_equal(small[..., 1], 200)
  np.testing.assert_array_equal(small[..., 0], 0)
  np.testing.assert_array_equal(pipeline.resize_images(gray, 28), gray)


@pytest.mark.parametrize("images, size, match", [
    (np.zeros((2, 28, 28), np.uint8), 32, r"uint8 \[N, H, W, C\].*got uint8\[2, 28, 28\]"),
    (np.zeros((2, 28, 28, 1), np.float32), 32, r"got float32\[2, 28, 28, 1\]"),
    (np.zeros((2, 28, 28, 1), np.uint8), 0, "size must be a positive int, got 0"),
])
def test_resize_images_errors(images, size, match):
  with pytest.raises(ValueError, match=match):
    pipeline.resize_images(images, size)


@pytest.mark.parametrize("augment", [("flip", "crop"), ()])
def test_augmented_batches_do_not_depend_on_the_process_count(monkeypatch, augment):
  """Two processes' rows, one block after the other, give the one-process batch, augmentation
  included,
  and starting at batch k gives the epoch's batches from k on."""
  from mhex_jax.data import input_pipeline
  from mhex_jax.data import synthetic
  arrays = synthetic.make_split(24, image_size=16, seed=0)
  dataset = input_pipeline.InMemoryDataset(arrays, 4, (0.5,), (0.25,), augment)
  batches = lambda **kw: list(dataset.batches(8, train=True, seed=1, epoch=3, **kw))
  whole = batches()
  assert len(whole) == 3
  if augment:  # The augmentation really changes the images.
    plain = input_pipeline.InMemoryDataset(arrays, 4, (0.5,), (0.25,))
    assert not np.array_equal(whole[0]["image"],
                              next(plain.batches(8, train=True, seed=1, epoch=3))["image"])
  shares = []
  monkeypatch.setattr(input_pipeline.jax, "process_count", lambda: 2)
  for p in range(2):
    monkeypatch.setattr(input_pipeline.jax, "process_index", lambda p=p: p)
    shares.append(batches())
  for b, batch in enumerate(whole):
    for key in batch:
      merged = np.concatenate([shares[0][b][key], shares[1][b][key]])
      np.testing.assert_array_equal(merged, batch[key])
  monkeypatch.setattr(input_pipeline.jax, "process_count", lambda: 1)
  monkeypatch.setattr(input_pipeline.jax, "process_index", lambda: 0)
  for a, b in zip(whole[1:], batches(start=1), strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def _medmnist_config(path, **overrides):
  from mhex_jax import config_lib
  config = config_lib.base_config().data
  config.update(dict(name="medmnist", path=str(path), train_split="train", eval_split="val",
                     image_size=28, mean=(0.5,), std=(0.5,)), **overrides)
  return config


@pytest.mark.parametrize("num_classes, warned", [(10, True), (9, True), (8, False), (4, False)])
def test_get_datasets_warns_when_labels_use_few_of_num_classes(tmp_path, monkeypatch,
                                                               num_classes, warned):
  from mhex_jax.data import input_pipeline
  path = tmp_path / "four_classes.npz"
  images = np.zeros((8, 28, 28), np.uint8)
  np.savez(path, train_images=images, train_labels=np.arange(8)[:, None] % 4,
           val_images=images[:2], val_labels=np.zeros((2, 1), np.uint8))
  messages = []
  monkeypatch.setattr(input_pipeline.logging, "warning",
                      lambda fmt, *args: messages.append(fmt % args))
  input_pipeline.get_datasets(_medmnist_config(path), num_classes)
  if not warned:  # 4 used classes of 8 is half: a subset, not a mistake.
    assert not messages
    return
  (message,) = messages
  assert (f"The training labels of {path} (split 'train') span 4 classes (class indices 0..3"
          in message)
  assert f"but model.num_classes={num_classes}" in message and "Set model.num_classes=4" in message
  # Evaluating alone reads no training labels and warns of nothing.
  messages.clear()
  input_pipeline.get_datasets(_medmnist_config(path), num_classes, need_train=False)
  assert not messages


@pytest.mark.parametrize("overrides, match", [
    (dict(num_train=0), r"data.num_train=0: synthetic data needs a positive number"),
    (dict(num_eval=0), r"data.num_eval=0: synthetic data needs a positive number"),
    (dict(image_size=4), r"synthetic data with data.image_size=4, data.seed=0: image_size must"),
])
def test_synthetic_data_errors_name_the_field(overrides, match):
  from mhex_jax import config_lib
  from mhex_jax.data import input_pipeline
  config = config_lib.base_config().data
  config.update(dict(num_train=8, num_eval=4, image_size=16), **overrides)
  with pytest.raises(ValueError, match=match):
    input_pipeline.get_datasets(config, 4)

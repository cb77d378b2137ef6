"""Tests for mhex_jax.data.synthetic: format, determinism, and that the mask is the evidence."""
import numpy as np
import pytest

from mhex_jax.data import synthetic


@pytest.fixture(scope="module")
def split():
  return synthetic.make_split(400, image_size=32, seed=7)


def _classify_mask(mask):
  """Names the shape of a bool [S, S] mask from its geometry alone."""
  size = mask.shape[0]
  yy, xx = np.mgrid[0:size, 0:size] + 0.5
  cy, cx = yy[mask].mean(), xx[mask].mean()
  dist = np.hypot(yy - cy, xx - cx)[mask] + 0.5
  angle = np.arctan2(yy - cy, xx - cx)[mask]
  bins = ((angle + np.pi) / (2 * np.pi) * 24).astype(int) % 24
  reach = np.zeros(24)
  np.maximum.at(reach, bins, dist)
  roundness = reach.min() / reach.max()  # Circle ~0.95, square ~0.7, triangle/cross ~0.45.
  if roundness > 0.85:
    return "circle"
  if roundness > 0.6:
    return "square"
  # The cross is point-symmetric about its centroid, the triangle is not.
  ry = np.clip(np.floor(2 * cy - yy[mask]).astype(int), 0, size - 1)
  rx = np.clip(np.floor(2 * cx - xx[mask]).astype(int), 0, size - 1)
  return "cross" if mask[ry, rx].mean() > 0.8 else "triangle"


def test_format(split):
  assert split["image"].shape == (400, 32, 32, 3) and split["image"].dtype == np.uint8
  assert split["label"].shape == (400,) and split["label"].dtype == np.int32
  assert split["mask"].shape == (400, 32, 32) and split["mask"].dtype == bool
  assert set(np.unique(split["label"])) == set(range(synthetic.NUM_CLASSES))
  assert synthetic.NUM_CLASSES == len(synthetic.CLASS_NAMES) == 4


def test_other_image_size():
  data = synthetic.make_split(3, image_size=48, seed=0)
  assert data["image"].shape == (3, 48, 48, 3) and data["mask"].shape == (3, 48, 48)


def test_example_depends_only_on_seed_and_index():
  full = synthetic.make_split(10, seed=3)
  tail = synthetic.make_split(4, seed=3, start_index=6)
  for key in full:
    np.testing.assert_array_equal(full[key][6:], tail[key])
  other_seed = synthetic.make_split(10, seed=4)
  assert not np.array_equal(full["image"], other_seed["image"])


def test_labels_roughly_balanced(split):
  counts = np.bincount(split["label"], minlength=synthetic.NUM_CLASSES)
  assert counts.min() >= 70 and counts.max() <= 130, counts  # Expected 100 each.


def test_object_size_and_fully_inside(split):
  masks = split["mask"]
  area = masks.mean(axis=(1, 2))
  # Extent 0.25-0.4 of the side: from a small cross (~3%) to a large circle (~13%).
  assert area.min() > 0.02 and area.max() < 0.16, (area.min(), area.max())
  border = masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
  assert not border.any(), np.flatnonzero(border)


def test_mask_is_one_uniform_colour_that_stands_out(split):
  images = split["image"].astype(np.float32)
  for image, mask in zip(images, split["mask"]):
    inside = image[mask]
    colour = inside.mean(0)
    # Only the pixel noise (sigma 0.03 * 255 ~ 8) varies inside the object.
    assert inside.std(0).max() < 12, inside.std(0)
    # The pixels just outside the mask (distractors are kept away) are clearly different.
    ring = np.zeros_like(mask)
    ring[1:] |= mask[:-1]
    ring[:-1] |= mask[1:]
    ring[:, 1:] |= mask[:, :-1]
    ring[:, :-1] |= mask[:, 1:]
    ring &= ~mask
    contrast = np.linalg.norm(image[ring] - colour, axis=-1).mean()
    assert contrast > 40, contrast


def test_label_matches_drawn_shape():
  data = synthetic.make_split(200, image_size=64, seed=11)
  predicted = [_classify_mask(mask) for mask in data["mask"]]
  expected = [synthetic.CLASS_NAMES[label] for label in data["label"]]
  agreement = np.mean(np.array(predicted) == np.array(expected))
  assert agreement > 0.95, agreement


def test_distractors_are_drawn(split):
  # Background is smooth, so clutter shows up as strong edges away from the object.
  images = split["image"].astype(np.float32)
  edges = np.abs(np.diff(images, axis=2)).max(-1)  # [N, S, S - 1]
  near_object = split["mask"][:, :, 1:] | split["mask"][:, :, :-1]
  strong_elsewhere = ((edges > 60) & ~near_object).sum(axis=(1, 2))
  assert np.mean(strong_elsewhere > 0) > 0.8


def test_distractors_keep_away_from_object(monkeypatch):
  # Render the same examples with clutter everywhere and with none: the object and the pixels
  # touching it must come out identical, i.e. clutter never touches or covers the object.
  renders = []
  for fill in (True, False):
    monkeypatch.setattr(synthetic, "_distractor_mask",
                        lambda rng, grid, size, fill=fill: np.full((size, size), fill))
    renders.append(synthetic.make_split(50, seed=2))
  cluttered, clean = renders
  np.testing.assert_array_equal(cluttered["mask"], clean["mask"])
  masks = clean["mask"]
  near = masks.copy()
  near[:, 1:] |= masks[:, :-1]
  near[:, :-1] |= masks[:, 1:]
  near[:, :, 1:] |= masks[:, :, :-1]
  near[:, :, :-1] |= masks[:, :, 1:]
  np.testing.assert_array_equal(cluttered["image"][near], clean["image"][near])
  assert np.mean(cluttered["image"][~near] != clean["image"][~near]) > 0.5


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_examples=0), "num_examples must be a positive int, got 0"),
    (dict(num_examples=2.5), "num_examples must be a positive int, got 2.5"),
    (dict(num_examples=2, image_size=8), "image_size must be an int >= 16.*got 8"),
    (dict(num_examples=2, seed=-1), "seed=-1"),
    (dict(num_examples=2, start_index=-3), "start_index=-3"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    synthetic.make_split(**kwargs)

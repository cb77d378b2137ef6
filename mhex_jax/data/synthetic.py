"""Synthetic shapes: image classification with a ground-truth mask of the evidence.

Each image holds exactly one class-defining object, so a faithful explanation must point at the
mask. Example ``i`` is drawn by ``np.random.default_rng([seed, start_index + i])`` alone, so it
is identical whatever the split size; make train and test splits with different seeds.

Generative process for one image of side S (all sizes scale with S; pixel centres at k + 0.5):

1. Label: uniform over ``CLASS_NAMES``.
2. Background: a linear gradient between two muted colours (saturation <= 0.45, value in
   [0.15, 0.6]) in a random direction, plus two random low-frequency sinusoidal gratings
   (1-4 cycles per image, per-channel amplitude <= 0.08): smooth, coloured texture with no
   edges as strong as the object's.
3. Distractors: 2-4 items of random colour (any saturation, value 0.35-1): thin line segments
   (0.25-0.5 S long), small hollow rings and open arcs (radius 0.07-0.1 S). None is a filled
   shape, so they carry no label information, but they are as colourful as the object. Their
   pixels within 0.05 S of the object are erased, so they never touch or change its outline.
4. Object: the class shape, filled, in a saturated bright colour (saturation 0.65-1, value
   0.75-1, random hue), extent (diameter / arm span) 0.25-0.4 S, rotated by a random angle,
   centred so that it lies fully inside the image with a one-pixel margin. Drawn last, so
   nothing occludes it; ``mask`` is exactly its pixels.
5. Gaussian pixel noise (sigma 0.03) on everything, then quantisation to uint8.
"""

import colorsys

import numpy as np

from mhex_jax.errors import DataError

CLASS_NAMES = ("circle", "square", "triangle", "cross")
NUM_CLASSES = len(CLASS_NAMES)

_MIN_IMAGE_SIZE = 16
_NOISE_STD = 0.03


def make_split(num_examples: int, *, image_size: int = 32, seed: int = 0,
               start_index: int = 0) -> dict[str, np.ndarray]:
  """Generates examples ``start_index .. start_index + num_examples - 1`` of stream ``seed``.

  Returns:
    {"image": uint8 [N, S, S, 3], "label": int32 [N], "mask": bool [N, S, S]}.
  """
  if not isinstance(num_examples, (int, np.integer)) or num_examples <= 0:
    raise DataError(f"num_examples must be a positive int, got {num_examples!r}.")
  if not isinstance(image_size, (int, np.integer)) or image_size < _MIN_IMAGE_SIZE:
    raise DataError(f"image_size must be an int >= {_MIN_IMAGE_SIZE} (smaller images cannot "
                    f"draw the shapes recognisably), got {image_size!r}.")
  if seed < 0 or start_index < 0:
    raise DataError(f"seed and start_index must be >= 0 (they seed numpy's generator), got "
                    f"seed={seed}, start_index={start_index}.")
  images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
  labels = np.empty((num_examples,), np.int32)
  masks = np.empty((num_examples, image_size, image_size), bool)
  grid = _pixel_grid(image_size)
  for i in range(num_examples):
    rng = np.random.default_rng([seed, start_index + i])
    images[i], labels[i], masks[i] = _make_example(rng, grid, image_size)
  return {"image": images, "label": labels, "mask": masks}


def _pixel_grid(size: int) -> np.ndarray:
  """Pixel-centre coordinates, float32 [2, S, S] as (y, x)."""
  return np.mgrid[0:size, 0:size].astype(np.float32) + 0.5


def _make_example(rng: np.random.Generator, grid: np.ndarray, size: int):
  """(image uint8 [S, S, 3], label int, mask bool [S, S]) by the steps in the module doc."""
  label = int(rng.integers(NUM_CLASSES))
  image = _background(rng, grid, size)

  extent = rng.uniform(0.25, 0.4) * size
  angle = rng.uniform(0, 2 * np.pi)
  reach = _circumradius(label, extent / 2)
  # One pixel of margin keeps the object off the border even after rasterisation.
  centre = [float(c) for c in rng.uniform(reach + 1, size - reach - 1, size=2)]
  mask = _shape_mask(label, grid, centre, extent / 2, angle)
  halo = _dilate(mask, max(1, round(0.05 * size)))

  for _ in range(rng.integers(2, 5)):
    clutter = _distractor_mask(rng, grid, size) & ~halo
    image[clutter] = _random_colour(rng, saturation=(0.0, 1.0), value=(0.35, 1.0))

  image[mask] = _random_colour(rng, saturation=(0.65, 1.0), value=(0.75, 1.0))
  image += rng.standard_normal(image.shape, np.float32) * _NOISE_STD
  image = (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
  return image, label, mask


def _random_colour(rng, *, saturation, value) -> np.ndarray:
  """An RGB float32 [3] colour of uniform hue and the given saturation/value ranges."""
  hsv = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value)
  return np.asarray(colorsys.hsv_to_rgb(*hsv), np.float32)


def _background(rng, grid, size) -> np.ndarray:
  """Gradient plus two gratings, float32 [S, S, 3] in about [0, 1]."""
  y, x = grid / size
  start, end = (_random_colour(rng, saturation=(0.0, 0.45), value=(0.15, 0.6))
                for _ in range(2))
  direction = rng.uniform(0, 2 * np.pi)
  cos, sin = float(np.cos(direction)), float(np.sin(direction))
  # Projection onto the direction, rescaled to run 0 -> 1 across the image.
  ramp = (cos * x + sin * y - min(cos, 0) - min(sin, 0)) / (abs(cos) + abs(sin))
  patterns, colours = [ramp], [end - start]
  for _ in range(2):
    cycles = rng.uniform(1, 4)
    theta, phase = rng.uniform(0, 2 * np.pi, size=2)
    fx = 2 * np.pi * cycles * float(np.cos(theta))
    fy = 2 * np.pi * cycles * float(np.sin(theta))
    patterns.append(np.sin(fx * x + fy * y + float(phase)))
    colours.append(rng.uniform(-0.08, 0.08, size=3).astype(np.float32))
  # Each pattern tints the image with its own colour: [S, S, 3] @ [3, 3].
  return np.stack(patterns, -1) @ np.stack(colours) + start


def _circumradius(label: int, radius: float) -> float:
  """Distance from the centre to the farthest point of the shape `_shape_mask` draws."""
  name = CLASS_NAMES[label]
  if name == "square":
    return radius * 0.85 * np.sqrt(2)
  if name == "triangle":
    return radius * 1.15
  if name == "cross":
    return radius * np.hypot(1, 1 / 3)
  return radius


def _shape_mask(label, grid, centre, radius, angle) -> np.ndarray:
  """bool [S, S]: the filled class shape of half-extent `radius`, rotated by `angle`."""
  dy, dx = grid[0] - centre[0], grid[1] - centre[1]
  # Coordinates in the shape's own frame.
  cos, sin = float(np.cos(angle)), float(np.sin(angle))
  u, v = cos * dx + sin * dy, cos * dy - sin * dx
  name = CLASS_NAMES[label]
  if name == "circle":
    return u * u + v * v <= radius * radius
  if name == "square":
    half_side = radius * 0.85  # Same area as the circle's to within 10%.
    return (np.abs(u) <= half_side) & (np.abs(v) <= half_side)
  if name == "triangle":
    # Equilateral: inside all three edges, each at the inradius (half the circumradius).
    circum = radius * 1.15
    normals = np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3 + np.pi
    return np.all([np.cos(a) * u + np.sin(a) * v <= circum / 2 for a in normals], axis=0)
  if name == "cross":
    arm = radius / 3
    return (((np.abs(u) <= radius) & (np.abs(v) <= arm)) |
            ((np.abs(v) <= radius) & (np.abs(u) <= arm)))
  raise DataError(f"Unknown shape label {label}; expected 0..{NUM_CLASSES - 1}.")


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  """bool [S, S]: pixels within `radius` (Euclidean, in pixels) of a True pixel of `mask`."""
  size = mask.shape[0]
  padded = np.zeros((size + 2 * radius, size + 2 * radius), bool)
  padded[radius:radius + size, radius:radius + size] = mask
  out = np.zeros_like(mask)
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      if dy * dy + dx * dx <= radius * radius:
        out |= padded[radius + dy:radius + dy + size, radius + dx:radius + dx + size]
  return out


def _distractor_mask(rng, grid, size) -> np.ndarray:
  """bool [S, S]: a line segment, hollow ring or open arc, anywhere in the image."""
  y, x = grid
  half_width = max(0.5, 0.02 * size)
  cy, cx = (float(c) for c in rng.uniform(0, size, size=2))
  kind = rng.integers(3)
  if kind == 0:
    length = rng.uniform(0.25, 0.5) * size
    direction = rng.uniform(0, np.pi)
    ey, ex = float(np.sin(direction) * length), float(np.cos(direction) * length)
    # Distance from each pixel to the segment (cy, cx) -> (cy + ey, cx + ex).
    t = np.clip(((y - cy) * ey + (x - cx) * ex) / (length * length), 0, 1)
    return np.hypot(y - cy - t * ey, x - cx - t * ex) <= half_width
  ring = np.abs(np.hypot(y - cy, x - cx) - rng.uniform(0.07, 0.1) * size) <= half_width
  if kind == 1:
    return ring
  # Open arc: the ring minus a random half-plane through its centre.
  gap = rng.uniform(0, 2 * np.pi)
  return ring & (float(np.cos(gap)) * (x - cx) + float(np.sin(gap)) * (y - cy) <= 0)

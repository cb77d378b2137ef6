"""Tests for mhex_jax.metrics.image (SPEC §5, images).

Most cases use a toy two-class scorer whose target probability is the mean of channel 0 over a
fixed pixel region R: p₁(x) = mean_R x[..., 0], p₀ = 1 − p₁. Every metric then has a closed form
that is worked out by hand next to each case.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhex_jax.metrics import image as metrics

H = W = 4
LEFT_HALF = np.zeros((H, W), bool)
LEFT_HALF[:, :2] = True  # R for most cases: columns 0 and 1, 8 pixels.


def region_scorer(region):
  """Toy score_fn: p(class 1) = mean of channel 0 over the region, p(class 0) = 1 − that."""
  region = np.asarray(region, np.float32)

  def score_fn(images):
    p = jnp.einsum("bhw,hw->b", images[..., 0], region) / region.sum()
    return jnp.stack([1 - p, p], axis=-1)

  return score_fn


def linear_softmax_scorer(shape, num_classes=3, seed=0):
  """A generic differentiable scorer for invariance tests (no closed form needed)."""
  weights = np.random.default_rng(seed).normal(size=(int(np.prod(shape)), num_classes))
  weights = weights.astype(np.float32)

  def score_fn(images):
    return jax.nn.softmax(images.reshape(images.shape[0], -1) @ weights, axis=-1)

  return score_fn


def column_map(*columns, value=1.0):
  """[H, W] map equal to ``value`` on the given columns and 0 elsewhere."""
  s = np.zeros((H, W), np.float32)
  s[:, list(columns)] = value
  return s


def jit_call(metric, *args, **kwargs):
  """Calls a metric under jit with score_fn and steps/chunk_size static.

  One compile per call is several times faster than eager dispatch of every op on a new shape;
  eager = jit is tested once in test_jit_equals_eager.
  """
  static_args = [a for a in args if callable(a)]
  arrays = [a for a in args if not callable(a)]
  static = {k: kwargs.pop(k) for k in ("steps", "chunk_size") if k in kwargs}
  return jax.jit(functools.partial(metric, *static_args, **static))(*arrays, **kwargs)


def stack(*arrays, dtype=np.float32):
  return np.stack(arrays).astype(dtype)


def ones_image(channels=1):
  return np.ones((H, W, channels), np.float32)


# ---------------------------------------------------------------------------------------------
# Probability, AVG Drop, SAD, EAD, classic AD/AI.


def test_target_probability_picks_the_target_column():
  score_fn = region_scorer(LEFT_HALF)
  x = np.zeros((H, W, 1), np.float32)
  x[:, 0] = 1.0  # mean over R = 4 / 8
  x2 = ones_image()
  p = jit_call(metrics.target_probability, score_fn, stack(x, x, x2), np.array([1, 0, 0]))
  np.testing.assert_allclose(p, [0.5, 0.5, 0.0], atol=1e-6)


def test_average_drop_removal_hand_computed():
  score_fn = region_scorer(LEFT_HALF)
  images = stack(*[ones_image()] * 4)  # p(x) = 1
  maps = stack(
      column_map(0),  # removes 4 of R's 8 pixels: p = 0.5, AD = 0.5
      column_map(0, value=0.5),  # S = threshold is not removed (strict >): AD = 0
      column_map(0, 1, value=0.9),  # removes all of R: AD = 1
      column_map(2, 3),  # removes pixels outside R only: AD = 0
  )
  targets = np.ones(4, np.int32)
  ad = jit_call(metrics.average_drop_removal, score_fn, images, maps, targets)
  np.testing.assert_allclose(ad, [0.5, 0.0, 1.0, 0.0], atol=1e-6)


def test_average_drop_removal_baseline_and_threshold():
  score_fn = region_scorer(LEFT_HALF)
  images = stack(ones_image(), ones_image())
  maps = stack(column_map(0), column_map(0, value=0.3))
  targets = np.ones(2, np.int32)
  # Column 0 becomes 0.25: p = (4·0.25 + 4·1) / 8 = 0.625, AD = 0.375.
  ad = jit_call(metrics.average_drop_removal, score_fn, images, maps, targets, baseline=0.25)
  np.testing.assert_allclose(ad, [0.375, 0.0], atol=1e-6)
  # threshold = 0.2 also removes example 1's S = 0.3 column, so it matches example 0.
  ad = jit_call(metrics.average_drop_removal, score_fn, images, maps, targets, baseline=0.25,
                threshold=0.2)
  np.testing.assert_allclose(ad, [0.375, 0.375], atol=1e-6)
  # A per-example baseline [B, H, W, C]: example 1 uses b = 1, which changes nothing.
  baseline = np.concatenate([np.zeros((1, H, W, 1)), np.ones((1, H, W, 1))])
  ad = jit_call(metrics.average_drop_removal, score_fn, images,
                stack(column_map(0), column_map(0)), targets, baseline=baseline)
  np.testing.assert_allclose(ad, [0.5, 0.0], atol=1e-6)


def test_average_drop_is_zero_when_the_score_rises():
  score_fn = region_scorer(LEFT_HALF)
  # Target 0 has p = 1 − mean_R = 0.5 on a grey image; removing column 0 raises it to 0.75, so
  # (p − p') / p = −0.5 is clipped to 0.
  grey = np.full((H, W, 1), 0.5, np.float32)
  ad = jit_call(metrics.average_drop_removal, score_fn, stack(grey), stack(column_map(0)),
                np.array([0]))
  np.testing.assert_allclose(ad, [0.0], atol=1e-6)


def test_soft_average_drop_hand_computed():
  score_fn = region_scorer(LEFT_HALF)
  # Channel 0: columns 0-1 are 1, columns 2-3 are 0, so μ₀ = 0.5 and p(x) = 1. Channel 1 is 10
  # everywhere: if μ mixed channels (μ = 5.25) the expected values below would be far off.
  x = np.zeros((H, W, 2), np.float32)
  x[:, :2, 0] = 1.0
  x[..., 1] = 10.0
  flat = np.ones((H, W, 2), np.float32)  # μ = x: blending changes nothing
  images = stack(x, x, x, flat)
  maps = stack(
      column_map(0),  # column 0 → μ = 0.5: p = (4·0.5 + 4) / 8 = 0.75, SAD = 0.25
      column_map(0, value=0.5),  # column 0 → 0.5·1 + 0.5·0.5 = 0.75: p = 0.875, SAD = 0.125
      np.zeros((H, W), np.float32),  # nothing blended: SAD = 0
      column_map(0, 1),  # μ of this example is 1: SAD = 0
  )
  sad = jit_call(metrics.soft_average_drop, score_fn, images, maps, np.ones(4, np.int32))
  np.testing.assert_allclose(sad, [0.25, 0.125, 0.0, 0.0], atol=1e-6)


def test_area_factor_shape():
  np.testing.assert_allclose(metrics.area_factor(np.array([0.0, 0.25, 0.5, 1.0])),
                             [0.0, 1.0, 2.5 / 9, 5 / 257], rtol=1e-6)
  grid = np.linspace(0.0, 1.0, 401)
  f = metrics.area_factor(grid)
  assert float(grid[np.argmax(f)]) == pytest.approx(0.25)
  assert float(f.max()) == pytest.approx(1.0)


def test_effective_average_drop_hand_computed():
  score_fn = region_scorer(LEFT_HALF)
  images = stack(*[ones_image()] * 3)
  s_mixed = column_map(0)
  s_mixed[:, 1] = 0.3  # counts towards the area (> 0.2) but is not removed (≤ 0.5)
  maps = stack(
      column_map(0),  # AD = 0.5, a = 4/16 = 0.25, f = 1: EAD = 0.5
      column_map(0, 1),  # AD = 1, a = 0.5, f = 2.5/9
      s_mixed,  # AD = 0.5, a = 0.5: EAD = 0.5 · 2.5/9
  )
  ead = jit_call(metrics.effective_average_drop, score_fn, images, maps, np.ones(3, np.int32))
  np.testing.assert_allclose(ead, [0.5, 2.5 / 9, 0.5 * 2.5 / 9], rtol=1e-6)


def test_classic_average_drop_increase_hand_computed():
  score_fn = region_scorer(LEFT_HALF)
  grey = np.full((H, W, 1), 0.5, np.float32)  # p₁ = p₀ = 0.5
  s_graded = column_map(0)
  s_graded[:, 1] = 0.5
  images = stack(grey, grey, ones_image(), ones_image())
  maps = stack(
      np.zeros((H, W), np.float32),  # target 1: x_keep = 0, p = 0: drop 1, no increase
      np.zeros((H, W), np.float32),  # target 0: p_keep = 1 > 0.5: drop 0, increase
      s_graded,  # target 1: p_keep = (4 + 4·0.5) / 8 = 0.75: drop 0.25
      np.ones((H, W), np.float32),  # x_keep = x: drop 0 and no (strict) increase
  )
  targets = np.array([1, 0, 1, 1])
  drop, increase = jit_call(metrics.classic_average_drop_increase, score_fn, images, maps,
                            targets)
  np.testing.assert_allclose(drop, [1.0, 0.0, 0.25, 0.0], atol=1e-6)
  np.testing.assert_array_equal(increase, [False, True, False, False])
  assert increase.dtype == jnp.bool_


def test_zero_probability_gives_zero_drop_not_nan():
  score_fn = region_scorer(LEFT_HALF)
  images = np.zeros((2, H, W, 1))  # p₁(x) = 0
  maps = stack(column_map(0), np.zeros((H, W), np.float32))
  targets = np.ones(2, np.int32)
  for fn in (metrics.average_drop_removal, metrics.soft_average_drop,
             metrics.effective_average_drop):
    np.testing.assert_array_equal(jit_call(fn, score_fn, images, maps, targets), [0.0, 0.0])
  drop, increase = jit_call(metrics.classic_average_drop_increase, score_fn, images, maps,
                            targets)
  np.testing.assert_array_equal(drop, [0.0, 0.0])
  np.testing.assert_array_equal(increase, [False, False])
  deletion, insertion = jit_call(metrics.deletion_insertion_auc, score_fn, images, maps, targets,
                                 steps=4)
  np.testing.assert_array_equal(deletion, [0.0, 0.0])
  np.testing.assert_array_equal(insertion, [0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Deletion / insertion.

TOP_LEFT = np.zeros((2, 2), bool)
TOP_LEFT[0, 0] = True  # p₁ = x[0, 0]: each curve is a step function of pixel (0, 0)'s rank r.


def test_deletion_insertion_ranks_by_decreasing_saliency():
  score_fn = region_scorer(TOP_LEFT)
  images = np.ones((3, 2, 2, 1))
  maps = stack(
      [[0.1, 0.9], [0.5, 0.3]],  # order 1, 2, 3, 0: r = 3
      [[0.0, 0.0], [0.0, 0.0]],  # all tied: pixel order, r = 0
      [[0.5, 0.5], [0.5, 0.9]],  # order 3, then ties 0, 1, 2: r = 1
  )
  # steps = H·W = 4, n_k = k. Deletion p_k = 1 while k ≤ r: AUC = (r + 1) / 5.
  # Insertion p_k = 1 once k > r: AUC = (4 − r) / 5.
  deletion, insertion = jit_call(metrics.deletion_insertion_auc, score_fn, images, maps,
                                 np.ones(3, np.int32), steps=4)
  np.testing.assert_allclose(deletion, [4 / 5, 1 / 5, 2 / 5], atol=1e-6)
  np.testing.assert_allclose(insertion, [1 / 5, 4 / 5, 3 / 5], atol=1e-6)


def test_deletion_insertion_linear_curve_and_baseline():
  score_fn = region_scorer(np.ones((2, 2), bool))  # p₁ = mean of the whole image
  maps = stack([[0.1, 0.9], [0.5, 0.3]], [[0.1, 0.9], [0.5, 0.3]])
  images = stack(np.ones((2, 2, 1)), np.zeros((2, 2, 1)))
  # Example 0, baseline 0: deletion 1, .75, .5, .25, 0 → 0.5; insertion 0, .25, ..., 1 → 0.5.
  # Example 1, x = 0 and a per-example baseline of 1: the same curves reversed, 0.5 each. A
  # deletion that ignored the baseline would give 0 for example 1.
  deletion, insertion = jit_call(
      metrics.deletion_insertion_auc,
      score_fn, images, maps, np.ones(2, np.int32), steps=4,
      baseline=np.array([0.0, 1.0])[:, None, None, None])
  np.testing.assert_allclose(deletion, [0.5, 0.5], atol=1e-6)
  np.testing.assert_allclose(insertion, [0.5, 0.5], atol=1e-6)
  # Top-left scorer, all-tied map (r = 0), x = 0, baseline 1: deletion 0, 1, 1, 1, 1 → 4/5;
  # insertion starts all-baseline (p = 1) then reveals pixel 0 → 1, 0, 0, 0, 0 → 1/5.
  deletion, insertion = jit_call(
      metrics.deletion_insertion_auc,
      region_scorer(TOP_LEFT), np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2)),
      np.ones(1, np.int32), steps=4, baseline=1.0)
  np.testing.assert_allclose(deletion, [4 / 5], atol=1e-6)
  np.testing.assert_allclose(insertion, [1 / 5], atol=1e-6)


def test_deletion_insertion_step_rounding():
  score_fn = region_scorer(TOP_LEFT)
  images = np.ones((2, 2, 2, 1))
  maps = stack(
      [[0.9, 0.1], [0.1, 0.1]],  # r = 0
      [[0.2, 0.9], [0.5, 0.1]],  # order 1, 2, 0, 3: r = 2
  )
  # steps = 8 > H·W = 4: n_k = ⌊k/2 + ½⌋ = 0, 1, 1, 2, 2, 3, 3, 4, 4 (ties up; half-to-even
  # would start 0, 0, ...). Example 0 is deleted from k = 1: deletion 1/9, insertion 8/9.
  # Example 1 (r = 2) survives while n_k ≤ 2, i.e. k ≤ 4: deletion 5/9, insertion 4/9.
  deletion, insertion = jit_call(metrics.deletion_insertion_auc, score_fn, images, maps,
                                 np.ones(2, np.int32), steps=8)
  np.testing.assert_allclose(deletion, [1 / 9, 5 / 9], atol=1e-6)
  np.testing.assert_allclose(insertion, [8 / 9, 4 / 9], atol=1e-6)
  # steps = 3: n_k = round(4k/3) = 0, 1, 3, 4. Example 1 is deleted from k = 2: deletion 2/4.
  deletion, insertion = jit_call(metrics.deletion_insertion_auc, score_fn, images, maps,
                                 np.ones(2, np.int32), steps=3)
  np.testing.assert_allclose(deletion, [1 / 4, 2 / 4], atol=1e-6)
  np.testing.assert_allclose(insertion, [3 / 4, 2 / 4], atol=1e-6)


@pytest.fixture(scope="module")
def random_batch():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, H, W, 2)).astype(np.float32)
  maps = rng.uniform(size=(3, H, W)).astype(np.float32)
  masks = rng.uniform(size=(3, H, W)) > 0.6
  targets = np.array([0, 2, 1])
  return images, maps, masks, targets


def test_chunk_size_does_not_change_deletion_insertion(random_batch):
  images, maps, _, targets = random_batch
  score_fn = linear_softmax_scorer(images.shape[1:])
  reference = jit_call(metrics.deletion_insertion_auc, score_fn, images, maps, targets, steps=5)
  # 2 · 6 · 3 = 36 perturbed images: 4 divides them evenly, 7 leaves a padded last chunk.
  for chunk_size in (1, 4, 7):
    result = jit_call(metrics.deletion_insertion_auc, score_fn, images, maps, targets, steps=5,
                      chunk_size=chunk_size)
    np.testing.assert_allclose(result, reference, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Invariances shared by all score-based metrics.


def _all_score_metrics(score_fn, images, maps, targets):
  deletion, insertion = metrics.deletion_insertion_auc(score_fn, images, maps, targets, steps=5,
                                                       chunk_size=8)
  drop, increase = metrics.classic_average_drop_increase(score_fn, images, maps, targets)
  return dict(
      p=metrics.target_probability(score_fn, images, targets),
      ad=metrics.average_drop_removal(score_fn, images, maps, targets, baseline=0.3),
      sad=metrics.soft_average_drop(score_fn, images, maps, targets),
      ead=metrics.effective_average_drop(score_fn, images, maps, targets),
      classic_drop=drop, increase=increase, deletion=deletion, insertion=insertion)


def test_jit_equals_eager(random_batch):
  images, maps, masks, targets = random_batch
  score_fn = linear_softmax_scorer(images.shape[1:])
  eager = _all_score_metrics(score_fn, images, maps, targets)
  jitted = jax.jit(_all_score_metrics, static_argnums=0)(score_fn, images, maps, targets)
  for name in eager:
    np.testing.assert_allclose(jitted[name], eager[name], rtol=1e-5, atol=1e-6, err_msg=name)
  # Metric functions themselves under jit, with their static options.
  jit_auc = jax.jit(metrics.deletion_insertion_auc, static_argnums=0,
                    static_argnames=("steps", "chunk_size"))
  np.testing.assert_allclose(jit_auc(score_fn, images, maps, targets, steps=5, chunk_size=8),
                             (eager["deletion"], eager["insertion"]), rtol=1e-5, atol=1e-6)
  for fn in (metrics.pointing_game, metrics.energy_pointing_game):
    np.testing.assert_array_equal(jax.jit(fn)(maps, masks), fn(maps, masks))
  np.testing.assert_array_equal(
      jax.jit(functools.partial(metrics.pointing_game, tolerance=1.5))(maps, masks),
      metrics.pointing_game(maps, masks, tolerance=1.5))


def test_per_example_results_independent_of_batch(random_batch):
  images, maps, _, targets = random_batch
  score_fn = linear_softmax_scorer(images.shape[1:])
  # Jitted (eager = jit is tested above) so each batch size compiles once.
  all_metrics = jax.jit(functools.partial(_all_score_metrics, score_fn))
  full = all_metrics(images, maps, targets)
  perm = np.array([2, 0, 1])
  permuted = all_metrics(images[perm], maps[perm], targets[perm])
  for i in range(images.shape[0]):
    single = all_metrics(images[i:i + 1], maps[i:i + 1], targets[i:i + 1])
    for name in full:
      np.testing.assert_allclose(single[name][0], full[name][i], rtol=1e-5, atol=1e-6,
                                 err_msg=name)
  for name in full:
    np.testing.assert_allclose(permuted[name], full[name][perm], rtol=1e-5, atol=1e-6,
                               err_msg=name)


def test_sharded_batch_equals_single_device():
  devices = jax.devices()
  mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  rng = np.random.default_rng(1)
  images = rng.normal(size=(len(devices), H, W, 1)).astype(np.float32)
  maps = rng.uniform(size=(len(devices), H, W)).astype(np.float32)
  targets = rng.integers(0, 3, size=len(devices)).astype(np.int32)
  score_fn = linear_softmax_scorer(images.shape[1:])
  fn = jax.jit(lambda x, s, t: (metrics.average_drop_removal(score_fn, x, s, t),
                                *metrics.deletion_insertion_auc(score_fn, x, s, t, steps=4)))
  expected = fn(images, maps, targets)
  sharded = fn(*(jax.device_put(a, batch) for a in (images, maps, targets)))
  np.testing.assert_allclose(sharded, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Pointing games.


def _mask(*pixels, size=5):
  m = np.zeros((size, size), bool)
  for r, c in pixels:
    m[r, c] = True
  return m


def test_pointing_game_with_tolerance():
  peak = np.zeros((5, 5), np.float32)
  peak[2, 2] = 1.0
  peak[0, 0] = 0.5
  maps = stack(peak, peak, peak, peak)
  masks = stack(_mask((2, 2)), _mask((2, 4)), _mask((3, 3)), _mask((0, 0)), dtype=bool)
  # Distances from the peak (2, 2): 0, 2, √2, 2√2 (the second-highest pixel does not count).
  expected = {0: [1, 0, 0, 0], 1: [1, 0, 0, 0], 1.5: [1, 0, 1, 0], 2: [1, 1, 1, 0],
              3: [1, 1, 1, 1]}
  for tolerance, hits in expected.items():
    result = jit_call(metrics.pointing_game, maps, masks, tolerance=tolerance)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, hits, err_msg=f"tolerance={tolerance}")


def test_pointing_game_ties_empty_masks_and_zero_maps():
  tied = np.zeros((5, 5), np.float32)
  tied[0, 1] = tied[4, 4] = 1.0  # argmax = first in row-major order, (0, 1)
  maps = stack(tied, tied, tied, np.zeros((5, 5)))
  masks = stack(_mask((0, 1)), _mask((4, 4)), _mask(), np.ones((5, 5)), dtype=bool)
  hits = jit_call(metrics.pointing_game, maps, masks, tolerance=0)
  np.testing.assert_array_equal(hits, [1, 0, 0, 0])  # empty mask and zero map are misses
  assert not np.isnan(np.asarray(hits)).any()
  np.testing.assert_array_equal(metrics.nonempty_masks(masks), [True, True, False, True])


def test_energy_pointing_game_hand_computed():
  s = np.zeros((5, 5), np.float32)
  s[0, 0], s[0, 1], s[4, 4] = 1.0, 0.5, 0.5  # Σ S = 2
  maps = stack(s, s, s, np.zeros((5, 5)))
  masks = stack(_mask((0, 0)), _mask((0, 0), (0, 1), (2, 2)), _mask(), np.ones((5, 5)),
                dtype=bool)
  energy = jit_call(metrics.energy_pointing_game, maps, masks)
  np.testing.assert_allclose(energy, [0.5, 0.75, 0.0, 0.0], atol=1e-6)
  assert not np.isnan(np.asarray(energy)).any()
  # An all-ones mask holds all of any non-zero map's energy.
  full_mask = np.ones((1, 5, 5), bool)
  np.testing.assert_allclose(jit_call(metrics.energy_pointing_game, stack(s), full_mask), [1.0])


# ---------------------------------------------------------------------------------------------
# Validation.


def test_validation_names_the_bad_shape():
  score_fn = region_scorer(LEFT_HALF)
  images = np.ones((2, H, W, 1))
  maps = np.ones((2, H, W))
  targets = np.ones(2, np.int32)
  with pytest.raises(ValueError, match=r"maps must be \[B, H, W\] = \[2, 4, 4\].*\[2, 8, 8\]"):
    metrics.average_drop_removal(score_fn, images, np.ones((2, 8, 8)), targets)
  with pytest.raises(ValueError, match=r"images must be float .*, got float32\[2, 4, 4\];"):
    metrics.soft_average_drop(score_fn, np.ones((2, H, W)), maps, targets)
  with pytest.raises(ValueError, match=r"targets must be \[B\] = \[2\].*\[3\]"):
    metrics.target_probability(score_fn, images, np.ones(3, np.int32))
  with pytest.raises(ValueError, match=r"targets must be int \[B\].*float32\[2\]"):
    metrics.target_probability(score_fn, images, np.ones(2))
  with pytest.raises(ValueError, match=r"masks must be bool \[B, H, W\], got float32"):
    metrics.energy_pointing_game(maps, np.ones((2, H, W)))
  with pytest.raises(ValueError, match=r"masks must be \[B, H, W\] = \[2, 4, 4\]"):
    metrics.pointing_game(maps, np.ones((2, H, 3), bool))
  with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\).*\[5\]"):
    metrics.classic_average_drop_increase(score_fn, images, maps, np.array([1, 5]))
  with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\).*\[-1\]"):
    metrics.deletion_insertion_auc(score_fn, images, maps, np.array([-1, 0]), steps=2)
  with pytest.raises(ValueError, match=r"baseline must be .* got shape \[3\]"):
    metrics.average_drop_removal(score_fn, images, maps, targets, baseline=np.zeros(3))
  with pytest.raises(ValueError, match=r"score_fn must map .* \[B, K\] = \[2, K\], got \[2\]"):
    metrics.target_probability(lambda x: x.mean(axis=(1, 2, 3)), images, targets)
  with pytest.raises(ValueError, match=r"steps must be a positive"):
    metrics.deletion_insertion_auc(score_fn, images, maps, targets, steps=0)
  with pytest.raises(ValueError, match=r"chunk_size must be None or a positive"):
    metrics.deletion_insertion_auc(score_fn, images, maps, targets, steps=2, chunk_size=0)
  with pytest.raises(ValueError, match=r"tolerance must be a non-negative"):
    metrics.pointing_game(maps, np.ones((2, H, W), bool), tolerance=-1)


def test_validation_under_jit():
  score_fn = region_scorer(LEFT_HALF)
  images = np.ones((2, H, W, 1))
  jitted = jax.jit(metrics.average_drop_removal, static_argnums=0)
  with pytest.raises(ValueError, match=r"maps must be \[B, H, W\]"):
    jitted(score_fn, images, np.ones((2, 8, 8)), np.ones(2, np.int32))
  # Traced targets cannot be range-checked; an out-of-range one shows up as NaN, not as a
  # silently clipped class.
  p = jax.jit(metrics.target_probability, static_argnums=0)(score_fn, images, np.array([1, 7]))
  assert np.isfinite(p[0]) and np.isnan(p[1])


def test_explanation_metrics_suite_is_the_metric_functions():
  """The eval step's suite equals each metric called on its own (EAD: the same AD, no second
  removal pass), and marks the examples whose mask is empty."""
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.uniform(size=(3, H, W, 2)), jnp.float32)
  maps = jnp.asarray(rng.uniform(size=(3, H, W)), jnp.float32)
  targets = jnp.array([0, 2, 1])
  masks = np.zeros((3, H, W), bool)
  masks[0, :2, :2] = True
  masks[2, 3, 3] = True  # Example 1's mask is empty.
  score_fn = linear_softmax_scorer((H, W, 2))
  out = jax.jit(functools.partial(metrics.explanation_metrics, score_fn, deletion_steps=4,
                                  pointing_tolerance=1.0, baseline=0.5))(
                                      images, maps, targets, masks)
  assert set(out) == set(metrics.SUITE_METRICS) | {metrics.MASK_WEIGHT}
  deletion, insertion = metrics.deletion_insertion_auc(score_fn, images, maps, targets, steps=4,
                                                       baseline=0.5)
  classic, increase = metrics.classic_average_drop_increase(score_fn, images, maps, targets)
  expected = {
      "avg_drop": metrics.average_drop_removal(score_fn, images, maps, targets, baseline=0.5),
      "sad": metrics.soft_average_drop(score_fn, images, maps, targets),
      "ead": metrics.effective_average_drop(score_fn, images, maps, targets, baseline=0.5),
      "area": (maps > 0.2).mean(axis=(1, 2)), "classic_average_drop": classic,
      "average_increase": increase, "deletion_auc": deletion, "insertion_auc": insertion,
      "pointing_game": metrics.pointing_game(maps, masks, tolerance=1.0),
      "energy_pointing_game": metrics.energy_pointing_game(maps, masks),
      metrics.MASK_WEIGHT: [1.0, 0.0, 1.0]}
  for name, value in expected.items():
    np.testing.assert_allclose(out[name], value, atol=1e-6, err_msg=name)
  without_masks = metrics.explanation_metrics(score_fn, images, maps, targets, deletion_steps=4)
  assert set(without_masks) == set(metrics.SUITE_METRICS) - set(metrics.MASKED_METRICS)

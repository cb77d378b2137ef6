"""explain.maps: what explainers and metrics share (chunked maps, target gathers, checks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhex_jax.explain import maps


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7, 10, 100])
def test_map_flat_index_covers_every_item_once_in_order(chunk_size):
  calls = []

  def fn(items):
    calls.append(items.shape)
    return jnp.stack([items * 10, items + 1], axis=-1)

  out = maps.map_flat_index(fn, 10, chunk_size)
  items = np.arange(10)
  np.testing.assert_array_equal(out, np.stack([items * 10, items + 1], axis=-1))
  # One traced call, on a chunk of min(chunk_size, 10) items: a padded last chunk is repeated.
  assert calls == [(min(chunk_size or 10, 10),)]


def test_map_in_chunks_equals_a_plain_map():
  xs = jnp.arange(12.0).reshape(6, 2)
  for chunk_size in (None, 1, 4, 6, 50):
    np.testing.assert_array_equal(maps.map_in_chunks(lambda x: x * x, xs, chunk_size), xs * xs)


def test_check_chunk_size():
  assert maps.check_chunk_size(None) is None
  assert maps.check_chunk_size(np.int64(3)) == 3
  for bad in (0, -2, 2.5, "4"):
    with pytest.raises(ValueError, match="chunk_size must be None or a positive Python int"):
      maps.check_chunk_size(bad)


def test_gather_target_fills_nan_and_the_host_check_raises():
  probs = jnp.array([[0.1, 0.9], [0.7, 0.3]])
  np.testing.assert_allclose(maps.gather_target(probs, jnp.array([1, 0])), [0.9, 0.7])
  out = jax.jit(maps.gather_target)(probs, jnp.array([2, -1]))
  assert np.isnan(out).all()
  maps.check_targets_in_range(jnp.array([0, 1]), 2)
  with pytest.raises(ValueError, match=r"\[0, 2\).*\[2\]"):
    maps.check_targets_in_range(jnp.array([0, 2]), 2)
  jax.jit(lambda t: maps.check_targets_in_range(t, 2))(jnp.array([5]))  # Traced: no check.


def test_describe():
  assert maps.describe(np.zeros((2, 3), np.uint8)) == "uint8[2, 3]"

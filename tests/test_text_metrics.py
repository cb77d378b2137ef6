"""Text AVG Drop on a toy scorer whose probability is a known function of the tokens."""

import jax
import jax.numpy as jnp
import numpy as np

from mhex_jax.metrics import text as text_metrics

MASK = 103


def _score(input_ids):
  """p(class 1) = 0.2 + 0.1 × (number of token-7s), p(class 0) = 1 − p."""
  p1 = 0.2 + 0.1 * jnp.sum(input_ids == 7, axis=-1)
  return jnp.stack([1 - p1, p1], axis=-1)


def test_top_k_count_rule():
  n = jnp.array([0, 1, 4, 5, 10, 99, 100, 500])
  np.testing.assert_array_equal(text_metrics.top_k_count(n), [0, 1, 1, 1, 2, 19, 20, 20])


def test_text_average_drop_by_hand():
  # Example 0: 10 removable tokens → K = 2; the two most salient are 7s → p drops 0.5 → 0.3.
  # Example 1: the most salient removable token is not a 7 → no drop; [CLS]-like special
  # token at position 0 has the highest saliency but is never removed.
  ids = jnp.array([[101, 7, 7, 7, 5, 5, 5, 5, 5, 5, 5, 102],
                   [101, 7, 5, 5, 5, 102, 0, 0, 0, 0, 0, 0]])
  removable = (ids != 101) & (ids != 102) & (ids != 0)
  sal = jnp.array([[9, .9, .8, .1, .7, 0, 0, 0, 0, 0, 0, 9],
                   [9, .1, .9, .2, .3, 9, 9, 9, 9, 9, 9, 9]], jnp.float32)
  drop = text_metrics.text_average_drop(_score, ids, sal, removable, jnp.array([1, 1]), MASK)
  np.testing.assert_allclose(drop, [0.2, 0.0], atol=1e-6)
  jitted = jax.jit(text_metrics.text_average_drop, static_argnums=(0, 5))(
      _score, ids, sal, removable, jnp.array([1, 1]), MASK)
  np.testing.assert_allclose(jitted, drop, atol=1e-6)
  # Example alone gives the same value.
  alone = text_metrics.text_average_drop(_score, ids[:1], sal[:1], removable[:1],
                                         jnp.array([1]), MASK)
  np.testing.assert_allclose(alone, drop[:1], atol=1e-6)

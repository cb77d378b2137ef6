"""Text AVG Drop on a toy scorer whose probability is a known function of the tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


# ---------------------------------------------------------------------------------------------
# AOPC and LOdds. The scorer's p(class 1) is the sum of per-token weights over attended tokens,
# so every perturbed probability is a sum written out by hand.

CLS, SEP, PAD = 101, 102, 0
WEIGHTS = np.zeros(128, np.float32)
WEIGHTS[[CLS, SEP, 5, 6, 7, 8, MASK, PAD]] = [0.1, 0.1, 0.05, 0.2, 0.1, -0.1, 0.02, 0.01]


def _additive_score(input_ids, attention_mask, token_type_ids):
  """p(class 1) = Σ over attended tokens of WEIGHTS[id]; token types are ignored."""
  del token_type_ids
  p1 = jnp.sum(jnp.where(attention_mask > 0, jnp.asarray(WEIGHTS)[input_ids], 0.0), axis=-1)
  return jnp.stack([1 - p1, p1], axis=-1)


def _example(length):
  """Two sentences padded to ``length``: ids, saliency, removable, attention mask."""
  ids = np.full((2, length), PAD, np.int32)
  ids[0, :5] = [CLS, 5, 6, 7, SEP]
  ids[1, :4] = [CLS, 8, 5, SEP]
  mask = (ids != PAD).astype(np.int32)
  # Special tokens and padding get the highest saliency: they must still never be removed.
  sal = np.full((2, length), 9.0, np.float32)
  sal[0, :5] = [5.0, 0.2, 0.9, 0.5, 4.0]  # removal order: 6, 7, 5
  sal[1, :4] = [5.0, 0.9, 0.1, 4.0]  # removal order: 8, 5
  removable = (mask > 0) & (ids != CLS) & (ids != SEP)
  return ids, sal, removable, mask


# Example 0 has T = 3 removable tokens: n_k = round(3k / 9) = 0, 1, 1, 1, 2, 2, 2, 3, 3.
# Example 1 has T = 2: n_k = round(2k / 9) = 0, 0, 1, 1, 1, 1, 2, 2, 2.
P0 = 0.1 + 0.05 + 0.2 + 0.1 + 0.1  # 0.55
P1 = 0.1 - 0.1 + 0.05 + 0.1  # 0.15
DELETED = [[P0, P0 - .2, P0 - .2, P0 - .2, P0 - .3, P0 - .3, P0 - .3, P0 - .35, P0 - .35],
           [P1, P1, P1 + .1, P1 + .1, P1 + .1, P1 + .1, P1 + .05, P1 + .05, P1 + .05]]
# [MASK] keeps the position and adds its own weight 0.02 per replaced token.
MASKED = [[P0, P0 - .18, P0 - .18, P0 - .18, P0 - .26, P0 - .26, P0 - .26, P0 - .29, P0 - .29],
          [P1, P1, P1 + .12, P1 + .12, P1 + .12, P1 + .12, P1 + .09, P1 + .09, P1 + .09]]


def _expected(perturbed, *, absolute=False):
  perturbed = np.asarray(perturbed)
  p = perturbed[:, :1]
  drop = p - perturbed
  aopc = np.mean(np.abs(drop) if absolute else drop, axis=1)
  return aopc, np.mean(np.log(perturbed / p), axis=1)


def _aopc_lodds(length=7, **options):
  ids, sal, removable, mask = _example(length)
  return text_metrics.aopc_lodds(_additive_score, ids, sal, removable, np.array([1, 1]),
                                 attention_mask=mask, **options)


def test_fraction_counts_round_half_up():
  np.testing.assert_array_equal(text_metrics.fraction_counts(jnp.array([3, 2, 0])),
                                [[0, 1, 1, 1, 2, 2, 2, 3, 3], [0, 0, 1, 1, 1, 1, 2, 2, 2],
                                 [0] * 9])
  # Quarters of T = 2: 0.5, 1, 1.5, 2 → halves round up.
  np.testing.assert_array_equal(text_metrics.fraction_counts(jnp.array([2]), 4), [[1, 1, 2, 2]])


def test_delete_tokens_shifts_left_and_pads_the_tail():
  ids = jnp.array([[CLS, 5, 6, 7, SEP, PAD, PAD]])
  mask = jnp.array([[1, 1, 1, 1, 1, 0, 0]])
  types = jnp.array([[0, 0, 0, 1, 1, 0, 0]])
  remove = jnp.array([[False, False, True, False, False, False, False]])
  new_ids, new_mask, new_types = text_metrics.delete_tokens(ids, mask, types, remove,
                                                            pad_id=PAD)
  np.testing.assert_array_equal(new_ids, [[CLS, 5, 7, SEP, PAD, PAD, PAD]])
  np.testing.assert_array_equal(new_mask, [[1, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(new_types, [[0, 0, 1, 1, 0, 0, 0]])


def test_aopc_lodds_deletion_by_hand():
  aopc, lodds = _aopc_lodds(mode="deletion")
  want_aopc, want_lodds = _expected(DELETED)
  np.testing.assert_allclose(aopc, want_aopc, atol=1e-6)  # [2.2 / 9, −0.55 / 9]
  np.testing.assert_allclose(aopc, [2.2 / 9, -0.55 / 9], atol=1e-6)
  np.testing.assert_allclose(lodds, want_lodds, atol=1e-5)


def test_aopc_lodds_replacement_by_hand():
  aopc, lodds = _aopc_lodds(mode="replacement", replace_id=MASK)
  want_aopc, want_lodds = _expected(MASKED)
  np.testing.assert_allclose(aopc, [1.9 / 9, -0.75 / 9], atol=1e-6)
  np.testing.assert_allclose(aopc, want_aopc, atol=1e-6)
  np.testing.assert_allclose(lodds, want_lodds, atol=1e-5)


def test_aopc_absolute_option():
  aopc, lodds = _aopc_lodds(mode="deletion", absolute=True)
  np.testing.assert_allclose(aopc, [2.2 / 9, 0.55 / 9], atol=1e-6)
  np.testing.assert_allclose(lodds, _expected(DELETED)[1], atol=1e-5)  # LOdds is unaffected
  aopc, _ = _aopc_lodds(mode="replacement", replace_id=MASK, absolute=True)
  np.testing.assert_allclose(aopc, [1.9 / 9, 0.75 / 9], atol=1e-6)


def test_padding_does_not_matter():
  for options in (dict(mode="deletion"), dict(mode="replacement", replace_id=MASK),
                  dict(mode="replacement", replace_id=PAD)):
    short, long = _aopc_lodds(5, **options), _aopc_lodds(12, **options)
    np.testing.assert_allclose(short, long, atol=1e-6)


def test_padding_is_never_removed_even_if_marked_removable():
  # (The hand cases above already give [CLS] and [SEP] the highest saliency: they stay, and at
  # 100% removal p is w[CLS] + w[SEP] = 0.2.) Padding marked removable is still not counted.
  ids, sal, removable, mask = _example(7)
  removable = removable | (mask == 0)
  aopc, _ = text_metrics.aopc_lodds(_additive_score, ids, sal, removable, np.array([1, 1]),
                                    attention_mask=mask, mode="replacement", replace_id=MASK)
  np.testing.assert_allclose(aopc, [1.9 / 9, -0.75 / 9], atol=1e-6)


def test_lodds_clamps_zero_probability():
  # Only token 7 carries weight: removing it leaves p = 0 exactly.
  weights = np.zeros(128, np.float32)
  weights[7] = 0.5

  def score(input_ids, attention_mask, token_type_ids):
    p1 = jnp.sum(jnp.where(attention_mask > 0, jnp.asarray(weights)[input_ids], 0.0), axis=-1)
    return jnp.stack([1 - p1, p1], axis=-1)

  ids = np.array([[CLS, 7, SEP]])
  mask = np.ones_like(ids)
  aopc, lodds = text_metrics.aopc_lodds(score, ids, np.ones((1, 3), np.float32),
                                        ids == 7, np.array([1]), attention_mask=mask,
                                        eps=1e-12)
  # T = 1: n_k = round(k / 9) = 0 for k ≤ 4 and 1 for k ≥ 5.
  np.testing.assert_allclose(aopc, [5 * 0.5 / 9], atol=1e-6)
  np.testing.assert_allclose(lodds, [5 * (np.log(1e-12) - np.log(0.5)) / 9], rtol=1e-5)
  assert np.isfinite(lodds).all()


def test_aopc_lodds_batch_jit_and_chunks_agree():
  ids, sal, removable, mask = _example(7)
  targets = np.array([1, 0])
  kwargs = dict(mode="replacement", replace_id=MASK)
  full = text_metrics.aopc_lodds(_additive_score, ids, sal, removable, targets,
                                 attention_mask=mask, **kwargs)
  for b in range(2):
    alone = text_metrics.aopc_lodds(_additive_score, ids[b:b + 1], sal[b:b + 1],
                                    removable[b:b + 1], targets[b:b + 1],
                                    attention_mask=mask[b:b + 1], **kwargs)
    np.testing.assert_allclose(np.array(alone)[:, 0], np.array(full)[:, b], atol=1e-6)
  for chunk_size in (1, 4, 7, 100):
    chunked = text_metrics.aopc_lodds(_additive_score, ids, sal, removable, targets,
                                      attention_mask=mask, chunk_size=chunk_size, **kwargs)
    np.testing.assert_allclose(chunked, full, atol=1e-6)
  jitted = jax.jit(lambda *a: text_metrics.aopc_lodds(_additive_score, *a[:4],
                                                      attention_mask=a[4], **kwargs))
  np.testing.assert_allclose(jitted(ids, sal, removable, targets, mask), full, atol=1e-6)


def test_aopc_lodds_rejects_inconsistent_options():
  with pytest.raises(ValueError, match="replace_id"):
    _aopc_lodds(mode="replacement")
  with pytest.raises(ValueError, match="only used by"):
    _aopc_lodds(mode="deletion", replace_id=MASK)
  with pytest.raises(ValueError, match="mode"):
    _aopc_lodds(mode="insertion")


def test_out_of_range_targets_raise_on_the_host_and_are_nan_under_jit():
  # Both text metrics follow the image metrics: a concrete target outside [0, K) is an error,
  # a traced one scores NaN (never a silently clipped class).
  ids, sal, removable, mask = _example(7)
  bad = np.array([1, 2])  # K = 2
  score = lambda i: _additive_score(i, mask, None)
  with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\).*\[2\]"):
    text_metrics.text_average_drop(score, ids, sal, removable, bad, MASK)
  with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\).*\[2\]"):
    text_metrics.aopc_lodds(_additive_score, ids, sal, removable, bad, attention_mask=mask)
  with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\).*\[-1\]"):
    text_metrics.aopc_lodds(_additive_score, ids, sal, removable, np.array([-1, 0]),
                            attention_mask=mask)
  drop = jax.jit(lambda t: text_metrics.text_average_drop(score, ids, sal, removable, t,
                                                          MASK))(bad)
  assert np.isfinite(drop[0]) and np.isnan(drop[1])
  aopc, lodds = jax.jit(lambda t: text_metrics.aopc_lodds(
      _additive_score, ids, sal, removable, t, attention_mask=mask))(bad)
  assert np.isfinite(aopc[0]) and np.isfinite(lodds[0])
  assert np.isnan(aopc[1]) and np.isnan(lodds[1])
  with pytest.raises(ValueError, match=r"targets must be int \[B\] = \[2\]"):
    text_metrics.text_average_drop(score, ids, sal, removable, np.array([1]), MASK)


# ---------------------------------------------------------------------------------------------
# Kendall τ.


def test_kendall_tau_by_hand():
  a = jnp.array([[1., 2., 3., 4.], [1., 2., 3., 4.], [1., 2., 2., 3.], [1., 1., 2., 0.]])
  b = jnp.array([[10., 20., 30., 40.], [4., 3., 2., 1.], [1., 3., 2., 4.], [1., 2., 2., 0.]])
  mask = jnp.array([[1, 1, 1, 1]] * 3 + [[1, 1, 1, 0]], bool)
  # Row 2: one pair tied in a, the other five concordant: 5 / sqrt(5 · 6).
  # Row 3 (3 tokens): (0,1) tied in a, (1,2) tied in b, (0,2) concordant: 1 / sqrt(2 · 2).
  want = [1.0, -1.0, 5 / np.sqrt(30), 0.5]
  np.testing.assert_allclose(text_metrics.kendall_tau(a, b, mask), want, atol=1e-6)
  np.testing.assert_allclose(jax.jit(text_metrics.kendall_tau)(a, b, mask), want, atol=1e-6)
  for i in range(4):
    np.testing.assert_allclose(text_metrics.kendall_tau(a[i:i + 1], b[i:i + 1], mask[i:i + 1]),
                               want[i:i + 1], atol=1e-6)


def test_kendall_tau_ignores_masked_entries_and_handles_constants():
  a = jnp.array([[1., 2., 2., 3.]])
  b = jnp.array([[1., 3., 2., 4.]])
  # The same tokens with junk (and infinities) inserted at masked positions.
  a_junk = jnp.array([[1., 50., 2., 2., -jnp.inf, 3., 7.]])
  b_junk = jnp.array([[1., -9., 3., 2., jnp.inf, 4., 0.]])
  keep = jnp.array([[1, 0, 1, 1, 0, 1, 0]], bool)
  np.testing.assert_allclose(text_metrics.kendall_tau(a_junk, b_junk, keep),
                             text_metrics.kendall_tau(a, b), atol=1e-6)
  # Undefined τ (a constant attribution, or a single token) is 0, not NaN.
  np.testing.assert_array_equal(text_metrics.kendall_tau(jnp.ones((1, 4)), b), [0.0])
  np.testing.assert_array_equal(
      text_metrics.kendall_tau(a, b, jnp.array([[1, 0, 0, 0]], bool)), [0.0])


def test_legacy_argsort_kendall_is_a_different_quantity():
  a = jnp.array([[0.1, 0.3, 0.2]])
  b = jnp.array([[0.3, 0.1, 0.2]])
  # Scores fully disagree. argsort(a) = [0, 2, 1], argsort(b) = [1, 2, 0]: pairs of positions
  # (0,1) concordant, (0,2) discordant, (1,2) concordant → 1/3.
  np.testing.assert_allclose(text_metrics.kendall_tau(a, b), [-1.0], atol=1e-6)
  np.testing.assert_allclose(text_metrics.kendall_tau_of_argsorts(a, b), [1 / 3], atol=1e-6)
  # A masked-out token in the middle does not change it; identical orders give 1.
  a_junk = jnp.array([[0.1, 9.0, 0.3, 0.2]])
  b_junk = jnp.array([[0.3, -5.0, 0.1, 0.2]])
  keep = jnp.array([[1, 0, 1, 1]], bool)
  np.testing.assert_allclose(text_metrics.kendall_tau_of_argsorts(a_junk, b_junk, keep),
                             [1 / 3], atol=1e-6)
  np.testing.assert_allclose(text_metrics.kendall_tau_of_argsorts(a, 2 * a), [1.0], atol=1e-6)


def test_explanation_metrics_suite_is_the_metric_functions():
  """The eval step's suite: AVG Drop masks with mask_id, AOPC/LOdds per mode, by hand."""
  ids, sal, removable, mask = _example(7)
  types = np.zeros_like(ids)

  def score(input_ids, attention_mask=mask, token_type_ids=types):
    return _additive_score(input_ids, attention_mask, token_type_ids)

  out = text_metrics.explanation_metrics(
      score, ids, sal, removable, np.array([1, 1]), attention_mask=mask, token_type_ids=types,
      mask_id=MASK, pad_id=PAD, replace_id=MASK, modes=("deletion", "replacement"))
  assert set(out) == set(text_metrics.SUITE_METRICS)
  # K = max(1, round(0.2 T)) = 1 top token: 6 (weight 0.2) and 8 (weight −0.1) become [MASK].
  np.testing.assert_allclose(out["avg_drop"], [0.2 - 0.02, -0.1 - 0.02], atol=1e-6)
  for key, perturbed in (("", DELETED), ("_replacement", MASKED)):
    aopc, lodds = _expected(perturbed)
    np.testing.assert_allclose(out["aopc" + key], aopc, atol=1e-6)
    np.testing.assert_allclose(out["lodds" + key], lodds, atol=1e-5)
  only_deletion = text_metrics.explanation_metrics(
      score, ids, sal, removable, np.array([1, 1]), attention_mask=mask, token_type_ids=types,
      mask_id=MASK, pad_id=PAD, replace_id=MASK)
  assert set(only_deletion) == {"avg_drop", "aopc", "lodds"}
  with pytest.raises(ValueError, match=r"AOPC modes \['masking'\]"):
    text_metrics.explanation_metrics(
        score, ids, sal, removable, np.array([1, 1]), attention_mask=mask,
        token_type_ids=types, mask_id=MASK, pad_id=PAD, replace_id=MASK, modes=("masking",))

"""Transformer token explainers (SPEC §7) against hand-built cases and per-example loops.

Compilation dominates on CPU, so every explainer of a model runs inside one jitted function
(``_maps_fn``) whose results on the shared batch are cached and reused by the tests.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhex_jax.explain import transformer as tx
from mhex_jax.models import BERT, ViT
from mhex_jax.models import bert
from mhex_jax.models import common

PAD, CLS, SEP = 0, 2, 3
# Text token ids without special ids. The third sentence has a second segment (token type 1);
# the last is empty ([CLS] [SEP] only), the case where masking special keys would mask all.
SENTENCES = [[7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19], [20, 21, 22], []]
TARGETS = [0, 2, 1, 1]
LENGTH = 12
MODELS = ["bert_plain", "bert_mhex", "vit_plain", "vit_mhex"]
# Compile time dominates these tests; XLA's optimisations do not pay off on tiny models.
FAST_COMPILE = dict(compiler_options={"xla_backend_optimization_level": 0})
# Completeness within 1% on these models. One chunk: each chunk is a copy of the program to
# compile (sum_in_chunks), 32 of them at 64 points; chunks are checked on their own below.
IG = dict(steps=256, chunk_size=None)


def _text(sentences=SENTENCES, length=LENGTH):
  """[CLS] text [SEP] [PAD]... rows as the text pipeline builds them (special mask on PAD too)."""
  ids, types = np.full((len(sentences), length), PAD), np.zeros((len(sentences), length))
  for b, words in enumerate(sentences):
    ids[b, :len(words) + 2] = [CLS, *words, SEP]
    if b == 2:
      types[b, 2:len(words) + 2] = 1
  return {"input_ids": jnp.asarray(ids, jnp.int32),
          "attention_mask": jnp.asarray(ids != PAD, jnp.int32),
          "token_type_ids": jnp.asarray(types, jnp.int32),
          "special_tokens_mask": jnp.asarray((ids == PAD) | (ids == CLS) | (ids == SEP))}


def _lengths(inputs):
  return [int(n) for n in np.asarray(inputs["attention_mask"]).sum(1)]


def _model(name, num_heads=2):
  kind, variant = name.split("_")
  common = dict(num_classes=3, hidden_size=16, num_layers=2, num_heads=num_heads,
                intermediate_size=32, mhex=variant == "mhex")
  if kind == "bert":
    return BERT(vocab_size=50, max_positions=32, hidden_dropout=0.0, attention_dropout=0.0,
                **common)
  return ViT(image_size=8, patch_size=4, **common)


def _random_params(model, *args, layer_norm_noise=0.1, seed=1):
  """Random parameters of the model's shapes, drawn in numpy (no init to compile).

  Weights ~ N(0, 0.3²), so attention is far from uniform; biases ~ N(0, 0.1²) and LayerNorm
  scales 1 + N(0, layer_norm_noise²), because zero biases make h = 0 a singular point of the
  first LayerNorm, where IG's path integral cannot reach z(0).
  """
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    leaf = path[-1].key
    if leaf == "scale":
      return 1.0 + layer_norm_noise * rng.normal(size=shape.shape)
    if leaf == "bias":
      return layer_norm_noise * rng.normal(size=shape.shape)
    return 0.3 * rng.normal(size=shape.shape)

  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
  return jax.tree_util.tree_map_with_path(
      lambda path, shape: jnp.asarray(draw(path, shape), jnp.float32), shapes)


@functools.lru_cache(maxsize=None)
def _setup(name):
  """(model, variables, inputs) of one of the four tiny models."""
  model = _model(name)
  if name.startswith("bert"):
    inputs = _text()
    args = (inputs["input_ids"], inputs["attention_mask"])
  else:
    images = np.random.default_rng(0).normal(size=(len(TARGETS), 8, 8, 3))
    inputs = {"image": jnp.asarray(images, jnp.float32)}
    args = (inputs["image"],)
  variables = {"params": _random_params(model, *args)}
  return model, variables, inputs


EXPLAINERS = dict(
    raw_attention=(tx.raw_attention, {}), attention_rollout=(tx.attention_rollout, {}),
    gradient_relevance=(tx.gradient_relevance, {}), grad_sam=(tx.grad_sam, {}),
    gradient_x_input=(tx.gradient_x_input, {}), integrated_gradients=(tx.integrated_gradients, IG),
    cat=(tx.cat, {}), attcat=(tx.attcat, {}))
VARIANTS = dict(
    ig_zeros=(tx.integrated_gradients, dict(baseline="zeros", **IG)),
    rollout_from_1=(tx.attention_rollout, dict(start_layer=1)),
    relevance_from_1=(tx.gradient_relevance, dict(start_layer=1)),
    cat_all_keys=(tx.cat, dict(mask_special_keys=False)),
    attcat_all_keys=(tx.attcat, dict(mask_special_keys=False)),
    attcat_abs=(tx.attcat, dict(output="abs")), cat_relu=(tx.cat, dict(output="relu")))
# Each explainer costs a trace and a compile, so option variants are spread over the models.
MODEL_VARIANTS = dict(
    bert_plain=["ig_zeros", "rollout_from_1", "relevance_from_1", "cat_all_keys",
                "attcat_all_keys", "attcat_abs", "cat_relu"],
    bert_mhex=["attcat_all_keys"],
    vit_plain=["rollout_from_1", "relevance_from_1"],
    vit_mhex=[])


@functools.lru_cache(maxsize=None)
def _maps_fn(name):
  """One jitted function returning every explainer (and the model's option variants)."""
  model = _setup(name)[0]
  chosen = {**EXPLAINERS, **{k: VARIANTS[k] for k in MODEL_VARIANTS[name]}}

  def maps(variables, inputs, targets):
    out = {key: method(model, variables, inputs, targets, **options)
           for key, (method, options) in chosen.items()}
    if "rollout_from_1" in chosen:
      args = ((inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
              if "input_ids" in inputs else (inputs["image"],))
      out["probs"] = common.attention_probs(model.apply(variables, *args, mutable=["attention"])[1])
    return out

  return jax.jit(maps, **FAST_COMPILE)


@functools.lru_cache(maxsize=None)
def _maps(name):
  _, variables, inputs = _setup(name)
  return jax.tree.map(np.asarray, _maps_fn(name)(variables, inputs, jnp.array(TARGETS)))


@functools.lru_cache(maxsize=None)
def _example_grad_fn(name):
  """Per-example α, ∂z/∂α, h, ∂z/∂h by jax.grad on the bare model (batch of one)."""
  model = _setup(name)[0]

  def example(variables, args, target):
    _, perturbations = model.apply(variables, *args, mutable=["perturbations"])

    def logit(p):
      head_logits, state = model.apply({**variables, **p}, *args,
                                       mutable=["attention", "hidden_states"])
      return head_logits[-1][0, target], state

    grads, state = jax.grad(logit, has_aux=True)(perturbations)
    return state, grads["perturbations"]

  return jax.jit(example, **FAST_COMPILE)


def _example_pass(name, b, mask_special_keys=False):
  """Example b of the shared batch, alone, as numpy per-layer lists cut to its n real tokens."""
  _, variables, inputs = _setup(name)
  if name.startswith("vit"):
    args, n = (inputs["image"][b:b + 1],), 5
  else:
    n = _lengths(inputs)[b]
    keys = inputs["attention_mask"][b:b + 1]
    if mask_special_keys:
      keys = jnp.asarray(~inputs["special_tokens_mask"][b:b + 1], jnp.int32)
    args = (inputs["input_ids"][b:b + 1], keys, inputs["token_type_ids"][b:b + 1])
  state, grads = _example_grad_fn(name)(variables, args, TARGETS[b])
  layers = sorted(k for k in grads if k.startswith("layer_"))
  return dict(
      probs=[np.asarray(state["attention"][l]["attention"]["probs"][0][0, :, :n, :n])
             for l in layers],
      prob_grads=[np.asarray(grads[l]["attention"]["probs"][0, :, :n, :n]) for l in layers],
      h=[np.asarray(state["hidden_states"][l]["layer_input"][0][0, :n]) for l in layers],
      h_grads=[np.asarray(grads[l]["layer_input"][0, :n]) for l in layers])


def _loop_attcat(ref, attention_weighted=True):
  heads, n = ref["probs"][0].shape[:2]
  out = np.zeros(n)
  for probs, h, g in zip(ref["probs"], ref["h"], ref["h_grads"]):
    for j in range(n):
      weight = probs[:, :, j].sum() / (heads * n) if attention_weighted else 1.0
      out[j] += float(np.dot(g[j], h[j])) * weight
  return out


def _loop_relevance(ref, start_layer=0):
  n = ref["probs"][0].shape[-1]
  relevance = np.eye(n)
  for probs, grad in list(zip(ref["probs"], ref["prob_grads"]))[start_layer:]:
    relevance = relevance + np.maximum(grad * probs, 0).mean(0) @ relevance
  return relevance[0]


def _loop_grad_sam(ref):
  return sum(np.mean(np.maximum(g, 0) * a, axis=0)
             for a, g in zip(ref["probs"], ref["prob_grads"])).mean(0)


def _assert_example(maps, b, expected, n, atol=1e-5):
  """maps[b] equals ``expected`` on the first n tokens and is exactly 0 after them."""
  maps = np.asarray(maps)
  np.testing.assert_allclose(maps[b, :n], expected, rtol=1e-4, atol=atol)
  assert np.all(maps[b, n:] == 0)


# ---------------------------------------------------------------------------------------------
# The matrix formulas on hand-built attention.


def test_rollout_of_identity_attention_is_one_hot_on_cls():
  attention = [jnp.broadcast_to(jnp.eye(4), (2, 3, 4, 4))] * 3
  np.testing.assert_allclose(tx.rollout_matrix(attention), np.broadcast_to(np.eye(4), (2, 4, 4)))


def test_rollout_by_hand_and_its_layer_order():
  # Two heads whose mean is the intended matrix. Layer 1: everyone attends token 0, so
  # M1 = [[1, 0], [.5, .5]]; layer 2: everyone attends token 1, so M2 = [[.5, .5], [0, 1]].
  to_0, to_1 = np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 1.0]])
  layer = lambda a: jnp.asarray(np.stack([a, a])[None])  # [1, 2 heads, 2, 2]
  joint = tx.rollout_matrix([layer(to_0), layer(to_1)])
  np.testing.assert_allclose(joint[0], [[0.75, 0.25], [0.5, 0.5]])  # M2 @ M1, not M1 @ M2
  np.testing.assert_allclose(tx.rollout_matrix([layer(to_0), layer(to_1)], start_layer=1)[0],
                             [[0.5, 0.5], [0.0, 1.0]])


def test_relevance_matrix_by_hand():
  # With α = 1/2 and ∇α = 2A − 3(1 − A) on one head and ∇α = 2A on the other, the head mean
  # of (∇α ⊙ α)⁺ is A/2 + A/2 = A. R1 = I + A1, R2 = R1 + A2 R1.
  a1, a2 = np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [1.0, 0.0]])
  probs = jnp.full((1, 2, 2, 2), 0.5)
  grad = lambda a: jnp.asarray(np.stack([2 * a - 3 * (1 - a), 2 * a])[None])
  np.testing.assert_allclose(tx.relevance_matrix([probs, probs], [grad(a1), grad(a2)])[0],
                             [[1, 1], [1, 2]])
  np.testing.assert_allclose(tx.relevance_matrix([probs, probs], [grad(a2), grad(a1)])[0],
                             [[2, 1], [1, 1]])
  np.testing.assert_allclose(
      tx.relevance_matrix([probs, probs], [grad(a1), grad(a2)], start_layer=1)[0],
      [[1, 0], [1, 1]])


# ---------------------------------------------------------------------------------------------
# Hand-built attention through the model.


def _with_attention_kernels(params, query_key):
  """Every layer's query and key kernels := ``query_key`` [d, d], biases 0."""
  params = dict(params)
  for layer in [k for k in params if k.startswith("layer_")]:
    zero_bias = jnp.zeros(query_key.shape[1])
    params[layer] = {**params[layer], "attention": {
        **params[layer]["attention"], "query": {"kernel": query_key, "bias": zero_bias},
        "key": {"kernel": query_key, "bias": zero_bias}}}
  return params


def test_model_with_self_attention_only_rolls_out_to_cls():
  # One head, q = k = 10 x on LayerNorm outputs (LayerNorm scale 1, bias 0: norm √d), so
  # each token's own score beats every other by a wide margin: the attention is the identity.
  model = _model("bert_plain", num_heads=1)
  inputs = _text()
  params = _random_params(model, inputs["input_ids"], inputs["attention_mask"],
                          layer_norm_noise=0.0)
  variables = {"params": _with_attention_kernels(params, 10.0 * jnp.eye(16))}
  raw, rollout = jax.jit(lambda v, x: (tx.raw_attention(model, v, x),
                                       tx.attention_rollout(model, v, x)),
                         **FAST_COMPILE)(variables, inputs)
  expected = np.zeros(rollout.shape)
  expected[:, 0] = 1.0
  np.testing.assert_allclose(rollout, expected, atol=1e-4)
  np.testing.assert_allclose(raw, 0.0, atol=1e-4)


def test_uniform_attention_raw_map_and_rollout_by_hand():
  # Zero query/key kernels: every query attends uniformly (1/N) to its N valid keys.
  # Raw attention: 1/N off the diagonal. Rollout of U = 1/N over two layers:
  # ((U + I) / 2)² = (3U + I) / 4 since U² = U.
  _, variables, inputs = _setup("bert_mhex")
  variables = {"params": _with_attention_kernels(variables["params"], jnp.zeros((16, 16)))}
  maps = _maps_fn("bert_mhex")(variables, inputs, jnp.array(TARGETS))
  for b, n in enumerate(_lengths(inputs)):
    _assert_example(maps["raw_attention"], b, np.r_[0.0, np.full(n - 1, 1.0 / n)], n, 1e-6)
    _assert_example(maps["attention_rollout"], b, np.r_[0.25, np.zeros(n - 1)] + 0.75 / n, n,
                    1e-6)


# ---------------------------------------------------------------------------------------------
# Parity with per-example loops.


@pytest.mark.parametrize("name", MODELS)
def test_gradient_methods_match_a_per_example_loop(name):
  maps = _maps(name)
  for b in range(len(TARGETS)):
    ref = _example_pass(name, b)
    n = ref["probs"][0].shape[-1]
    expected = dict(
        gradient_relevance=_loop_relevance(ref), relevance_from_1=_loop_relevance(ref, 1),
        grad_sam=_loop_grad_sam(ref),
        gradient_x_input=np.einsum("td,td->t", ref["h"][0], ref["h_grads"][0]),
        attcat_all_keys=_loop_attcat(ref), cat_all_keys=_loop_attcat(ref, False))
    # AttCAT/CAT hide [CLS]/[SEP] as keys in BERT (an example of special tokens only keeps
    # its plain mask); ViT's explanation pass is the plain one.
    if name.startswith("bert") and SENTENCES[b]:
      ref = _example_pass(name, b, mask_special_keys=True)
    expected.update(attcat=_loop_attcat(ref), cat=_loop_attcat(ref, False))
    for key, value in expected.items():
      if key in maps:
        _assert_example(maps[key], b, value, n)
  # The maps are not degenerate, so the checks above could have failed.
  assert np.ptp(maps["attcat"][0]) > 1e-3
  if "relevance_from_1" in maps:
    assert not np.allclose(maps["gradient_relevance"], maps["relevance_from_1"])


@pytest.mark.parametrize("name", ["bert_plain", "bert_mhex"])
def test_masked_special_keys_get_no_attcat_and_change_the_maps(name):
  maps, inputs = _maps(name), _setup(name)[2]
  special = np.asarray(inputs["special_tokens_mask"])
  has_text = np.array([bool(s) for s in SENTENCES])
  # Nothing attends to a masked key, so special tokens get no AttCAT score.
  assert np.all(maps["attcat"][has_text][special[has_text]] == 0)
  assert np.all(np.abs(maps["attcat"] - maps["attcat_all_keys"]).max(1)[has_text] > 1e-4)
  # [CLS] [SEP] alone would mask every key: that example keeps its plain mask.
  empty = SENTENCES.index([])
  np.testing.assert_allclose(maps["attcat"][empty], maps["attcat_all_keys"][empty], rtol=1e-5,
                             atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Invariances.


def test_maps_ignore_batch_composition_and_padding_length():
  # Sentence 1 alone, padded to T = 20, against the same sentence as row 1 of the shared
  # batch of four padded to T = 12: both the companions and the padding length change.
  _, variables, _ = _setup("bert_mhex")
  b, n = 1, len(SENTENCES[1]) + 2
  alone = jax.tree.map(np.asarray, _maps_fn("bert_mhex")(
      variables, _text([SENTENCES[b]], length=20), jnp.array(TARGETS[b:b + 1])))
  batched = _maps("bert_mhex")
  for key in alone:
    assert alone[key].shape == (1, 20), key
    assert np.ptp(alone[key][0, :n]) > 1e-4, key
    _assert_example(alone[key], 0, batched[key][b, :n], n)
    assert np.all(batched[key][b, n:] == 0), key


# ---------------------------------------------------------------------------------------------
# Integrated Gradients.


def test_integrated_gradients_completeness_on_bert():
  model, variables, inputs = _setup("bert_plain")
  maps = _maps("bert_plain")

  @functools.partial(jax.jit, **FAST_COMPILE)
  def logits(variables, ids, mask, types):
    z = lambda ids, extra={}: model.apply({**variables, **extra}, ids, mask, types)[-1]
    # "zeros": shift the embedding output by −x through layer 0's perturbation point.
    _, state = model.apply(variables, ids, mask, types,
                           mutable=["hidden_states", "perturbations"])
    shift = jax.tree.map(jnp.zeros_like, state["perturbations"])
    shift["layer_00"]["layer_input"] = -state["hidden_states"]["layer_00"]["layer_input"][0]
    # "pad": the baseline embedding output is exactly that of the all-[PAD] input.
    return z(ids), z(jnp.full_like(ids, PAD)), z(ids, {"perturbations": shift})

  z_x, z_pad, z_zeros = (np.asarray(z)[np.arange(len(TARGETS)), TARGETS] for z in logits(
      variables, inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]))
  for key, z_b in (("integrated_gradients", z_pad), ("ig_zeros", z_zeros)):
    gap = z_x - z_b
    assert np.all(np.abs(gap) > 0.05), (key, gap)
    np.testing.assert_allclose(maps[key].sum(1), gap, rtol=0.01, err_msg=key)


def test_first_layer_input_gradient_matches_forward_mode():
  """The shared gradient to layer 0's input (IG's path points, the benchmark's floor): its dot
  with a direction equals forward-mode's directional derivative of Σ_b z_b[t_b] at a shifted
  input, which reaches the logits through the same perturbation point."""
  model, variables, inputs = _setup("bert_plain")
  args = (inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
  targets = jnp.asarray(TARGETS, jnp.int32)
  _, state = model.apply(variables, *args, mutable=["hidden_states", "perturbations"])
  rng = np.random.default_rng(3)
  shape = state["hidden_states"]["layer_00"]["layer_input"][0].shape
  shift = jnp.asarray(0.3 * rng.normal(size=shape), jnp.float32)
  direction = jnp.asarray(rng.normal(size=shape), jnp.float32)
  grad = tx.first_layer_input_gradient(model, variables, args, targets, shift)

  def objective(s):
    perturbations = jax.tree.map(jnp.zeros_like, state["perturbations"])
    perturbations["layer_00"]["layer_input"] = s
    logits = model.apply({**variables, "perturbations": perturbations}, *args)[-1]
    return jnp.sum(logits[jnp.arange(len(TARGETS)), targets])

  _, derivative = jax.jvp(objective, (shift,), (direction,))
  np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(derivative), rtol=1e-4)
  assert float(jnp.max(jnp.abs(grad))) > 1e-3


def test_integrated_gradients_in_chunks_equal_one_chunk():
  # 3 steps × 4 examples in chunks of 5 (two calls of 3 side by side, then the rest) against
  # all 12 points at once: the same path points, summed per example in another grouping.
  model, variables, inputs = _setup("bert_plain")
  ig = functools.partial(tx.integrated_gradients, model, steps=3)
  targets = jnp.array(TARGETS)
  chunked, whole = (jax.jit(lambda v, x, t, c=chunk: ig(v, x, t, chunk_size=c), **FAST_COMPILE)(
      variables, inputs, targets) for chunk in (5, 12))
  assert float(jnp.max(jnp.abs(whole))) > 1e-3
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_integrated_gradients_completeness_on_vit():
  # "pad" for ViT = the embeddings of a blank image; the class token and positions are the
  # same there, so the class token gets exactly 0.
  model, variables, inputs = _setup("vit_plain")
  images = jnp.concatenate([inputs["image"], 0 * inputs["image"]])
  z = np.asarray(jax.jit(model.apply, **FAST_COMPILE)(variables, images)[-1])
  z = z[np.arange(8), TARGETS * 2]
  ig = _maps("vit_plain")["integrated_gradients"]
  np.testing.assert_allclose(ig.sum(1), z[:4] - z[4:], rtol=0.01)
  for name in ("vit_plain", "vit_mhex"):
    assert np.all(_maps(name)["integrated_gradients"][:, 0] == 0)


# ---------------------------------------------------------------------------------------------
# Options, errors, jit and every model.


def test_output_options():
  maps = _maps("bert_plain")
  for signed, key, expected in ((maps["attcat"], "attcat_abs", np.abs),
                                (maps["cat"], "cat_relu", lambda x: np.maximum(x, 0))):
    assert signed.min() < 0 < signed.max(), key
    # Two subgraphs of one program: equal unless XLA rounds them differently (eager vs jit
    # differ by ≤ 4.4e-7·max|x|); a wrong transform is off by ~max|x|.
    np.testing.assert_allclose(maps[key], expected(signed), atol=1e-5 * np.abs(signed).max(),
                               err_msg=key)


@pytest.mark.parametrize("name", ["bert_plain", "vit_plain"])
def test_rollout_start_layer(name):
  maps = _maps(name)
  valid = np.ones(maps["attcat"].shape)
  if name.startswith("bert"):
    valid = np.asarray(_setup(name)[2]["attention_mask"])
  np.testing.assert_allclose(maps["rollout_from_1"],
                             tx.rollout_matrix(maps["probs"][1:])[:, 0] * valid, atol=1e-6)
  assert not np.allclose(maps["rollout_from_1"], maps["attention_rollout"])


def test_bad_options_and_inputs_are_named():
  model, variables, inputs = _setup("bert_plain")
  targets = jnp.array(TARGETS)
  with pytest.raises(ValueError, match="output='l2'"):
    tx.attcat(model, variables, inputs, targets, output="l2")
  with pytest.raises(ValueError, match="baseline='mean'"):
    tx.integrated_gradients(model, variables, inputs, targets, baseline="mean")
  with pytest.raises(ValueError, match="start_layer=2"):
    tx.rollout_matrix([jnp.ones((1, 1, 2, 2))] * 2, start_layer=2)
  no_special = {k: v for k, v in inputs.items() if k != "special_tokens_mask"}
  with pytest.raises(ValueError, match="mask_special_keys=False"):
    tx.attcat(model, variables, no_special, targets)
  with pytest.raises(ValueError, match=r"Text inputs need \['attention_mask', 'input_ids'\]; "
                     r"got keys \['ids'\]"):
    tx.cat(model, variables, {"ids": inputs["input_ids"]}, targets)


@pytest.mark.parametrize("name", MODELS)
def test_every_method_on_every_model(name):
  maps = _maps(name)
  tokens = LENGTH if name.startswith("bert") else 5
  valid = np.ones((len(TARGETS), tokens), bool)
  if name.startswith("bert"):
    valid = np.asarray(_setup(name)[2]["attention_mask"] > 0)
  assert set(EXPLAINERS) <= set(maps)
  for key, value in maps.items():
    if key == "probs":
      continue
    assert value.shape == valid.shape and value.dtype == np.float32, key
    assert np.all(np.isfinite(value)) and np.any(value != 0), key
    assert np.all(value[~valid] == 0), key


def test_eager_matches_jit():
  model, variables, inputs = _setup("bert_mhex")
  maps, targets = _maps("bert_mhex"), jnp.array(TARGETS)
  # Eager ops compile one by one on first use, so only methods whose ops AttCAT's pass has
  # already compiled follow it. (IG's path loop is a lax.map, compiled in both modes.)
  for key in ("attcat", "raw_attention", "gradient_relevance", "grad_sam", "gradient_x_input"):
    method, options = EXPLAINERS[key]
    np.testing.assert_allclose(method(model, variables, inputs, targets, **options), maps[key],
                               rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("class_token", [True, False])
def test_rollout_vector_chain_equals_the_rollout_matrix_row(class_token):
  # attention_rollout pushes the query row through each mixing matrix; the definition takes the
  # query row (class token, or the mean of the rows) of the product of the matrices.
  from mhex_jax.models import vit  # pylint: disable=g-import-not-at-top
  model = vit.ViT(num_classes=3, image_size=8, patch_size=4, hidden_size=8, num_layers=3,
                  num_heads=2, intermediate_size=16, class_token=class_token, mhex=False)
  images = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)), jnp.float32)
  variables = {"params": model.init(jax.random.key(0), images[:1])["params"]}
  probs = common.attention_probs(model.apply(variables, images, mutable=["attention"])[1])
  joint = np.asarray(tx.rollout_matrix(probs))
  expected = joint[:, 0] if class_token else joint.mean(axis=1)
  np.testing.assert_allclose(tx.attention_rollout(model, variables, {"image": images}),
                             expected, rtol=1e-5, atol=1e-6)

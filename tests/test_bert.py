"""BERT and MHEX-BERT (SPEC §4) and the Hugging Face BERT import, checked against transformers."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from conftest import max_abs_diffs, randomise_torch_model
from mhex_jax import config_lib
from mhex_jax import model_lib
from mhex_jax import models
from mhex_jax import weights
from mhex_jax.explain import equivalent_matrix
from mhex_jax.models import bert
from mhex_jax.models import common
from mhex_jax.models import mhex as mhex_lib

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=40, type_vocab_size=2)
SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "Multi-head explainers gate every layer of a transformer.",
             "Stocks rallied on Tuesday."]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
  """A tiny random BertForSequenceClassification (3 labels; keys prefixed with ``bert.``)."""
  path = tmp_path_factory.mktemp("bert_cls")
  config = transformers.BertConfig(num_labels=3, **TINY)
  randomise_torch_model(transformers.BertForSequenceClassification(config)).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def torch_classifier(classifier_dir):
  return transformers.BertForSequenceClassification.from_pretrained(
      classifier_dir, attn_implementation="eager").eval()


def _batch(seed=0, batch=3, length=11):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, TINY["vocab_size"], (batch, length))
  mask = np.ones((batch, length), np.int64)
  mask[1, 7:] = 0
  mask[2, 4:] = 0
  types = (np.arange(length)[None] >= length // 2).astype(np.int64).repeat(batch, 0)
  return ids, mask, types


def _assert_hidden_states_close(ours, theirs, rtol):
  """Each hidden state of ours within ``rtol``·max|theirs| of PyTorch's (both float32)."""
  for layer, (a, b) in enumerate(zip(ours, theirs)):
    diff, scale = max_abs_diffs([a], [b])[0], float(np.max(np.abs(b.numpy())))
    assert diff <= rtol * scale, (layer, diff, scale)


def test_plain_bert_matches_transformers(classifier_dir, torch_classifier):
  ids, mask, types = _batch()
  with torch.no_grad():
    expected = torch_classifier(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                token_type_ids=torch.tensor(types), output_hidden_states=True,
                                output_attentions=True)
  model, variables = weights.load_bert(classifier_dir, num_classes=3, mhex=False)
  logits, state = model.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                              jnp.asarray(types, jnp.int32),
                              mutable=["hidden_states", "attention"])
  assert logits.shape == (1, 3, 3)
  np.testing.assert_allclose(logits[0], expected.logits.numpy(), atol=1e-5)
  hidden = common.hidden_states(state)
  assert len(hidden) == len(expected.hidden_states) == 3
  # float32 sums in other orders than PyTorch's: measured ≤ 3.3e-7·max|h| over random weights.
  _assert_hidden_states_close(hidden, expected.hidden_states, 4e-6)
  probs = common.attention_probs(state)
  assert max(max_abs_diffs(probs, expected.attentions)) < 1e-5
  # Padded keys get exactly zero attention.
  assert float(jnp.max(probs[0][1, :, :, 7:])) == 0.0
  # Variables that still hold sown values would make every entry a pair: refused by name.
  _, stale = model.apply({**variables, **state}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                         mutable=["hidden_states"])
  with pytest.raises(ValueError, match="layer_00/layer_input holds 2 sown values"):
    common.hidden_states(stale)


def test_minilm_matches_transformers():
  checkpoint = weights.minilm_checkpoint_dir()
  tokenizer = transformers.BertTokenizer.from_pretrained(str(checkpoint))
  batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
  assert batch["attention_mask"].min() == 0  # The batch exercises padding.
  reference = transformers.BertModel.from_pretrained(str(checkpoint)).eval()
  with torch.no_grad():
    expected = reference(**{k: torch.tensor(v) for k, v in batch.items()},
                         output_hidden_states=True)
  # A BertModel checkpoint (no "bert." prefix, a position_ids buffer, no classifier).
  model, variables = weights.load_bert(checkpoint, num_classes=2, mhex=False, new_head=True)
  _, state = jax.jit(lambda v, *x: model.apply(v, *x, mutable=["hidden_states"]))(
      variables, *(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask",
                                                   "token_type_ids")))
  hidden = common.hidden_states(state)
  assert len(hidden) == 7
  # Six layers of 384/1536-wide float32 products, summed in other orders than PyTorch's: the
  # rounding grows with depth (measured ≤ 3.2e-6·max|h|, largest in padded rows).
  _assert_hidden_states_close(hidden, expected.hidden_states, 4e-5)


def test_config_from_hf_and_minilm_dir():
  config = weights.bert_config_from_hf(weights.minilm_checkpoint_dir())
  assert {k: config[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                                 "max_positions", "vocab_size", "layer_norm_eps")} == dict(
      hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536, max_positions=512,
      vocab_size=30522, layer_norm_eps=1e-12)


def test_mhex_bert_heads_and_features(classifier_dir):
  model, variables = weights.load_bert(classifier_dir, num_classes=4)
  ids, mask, _ = _batch()
  logits, state = model.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                              mutable=["mhex"])
  assert logits.shape == (2, 3, 4)
  blocks = mhex_lib.collect_blocks(variables["params"], state["mhex"])
  assert [b.name for b in blocks] == ["layer_00/mhex", "layer_01/mhex"]
  assert all(b.features.shape == (3, 11, 32) for b in blocks)
  cams = equivalent_matrix.layer_cams(blocks, jnp.argmax(logits[-1], -1))
  assert all(c.shape == (3, 11) for c in cams)
  assert "pooler" not in variables["params"] and "classifier" not in variables["params"]


def test_mhex_import_keeps_ffn_output_and_initialises_gate(classifier_dir):
  tensors = safetensors.numpy.load_file(classifier_dir / "model.safetensors")
  _, identity = weights.load_bert(classifier_dir, num_classes=3, gate_init="identity")
  _, random = weights.load_bert(classifier_dir, num_classes=3, gate_init="random")
  layer = identity["params"]["layer_01"]
  np.testing.assert_array_equal(layer["output"]["kernel"],
                                tensors["bert.encoder.layer.1.output.dense.weight"].T)
  assert float(jnp.max(jnp.abs(layer["mhex"]["gate"]["kernel"]))) == 0.0
  assert float(jnp.std(random["params"]["layer_01"]["mhex"]["gate"]["kernel"])) > 0.01
  assert float(jnp.std(layer["mhex"]["head"]["kernel"])) > 0.01


def test_identity_gate_reproduces_plain_hidden_states(classifier_dir):
  ids, mask, types = _batch()
  inputs = (jnp.asarray(ids, jnp.int32), jnp.asarray(mask), jnp.asarray(types, jnp.int32))
  plain, plain_vars = weights.load_bert(classifier_dir, num_classes=3, mhex=False)
  gated, gated_vars = weights.load_bert(classifier_dir, num_classes=3, gate_init="identity")
  _, plain_state = plain.apply(plain_vars, *inputs, mutable=["hidden_states"])
  _, gated_state = gated.apply(gated_vars, *inputs, mutable=["hidden_states"])
  # g = 2σ(0) = 1, so h' = LN(1 · (u + v)) is the plain LN(u + v).
  for a, b in zip(common.hidden_states(gated_state), common.hidden_states(plain_state)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("mhex", [True, False])
def test_extra_padding_leaves_logits_unchanged(classifier_dir, mhex):
  model, variables = weights.load_bert(classifier_dir, num_classes=3, mhex=mhex)
  ids = jnp.array([[2, 17, 5, 33, 8, 3]], jnp.int32)
  padded = jnp.concatenate([ids, jnp.zeros((1, 9), jnp.int32)], axis=1)
  mask = jnp.concatenate([jnp.ones((1, 6)), jnp.zeros((1, 9))], axis=1)
  short = model.apply(variables, ids, jnp.ones((1, 6)))
  long = model.apply(variables, padded, mask)
  np.testing.assert_allclose(long, short, atol=1e-5)


def test_layer_input_gradients_through_perturbations(classifier_dir):
  model, variables = weights.load_bert(classifier_dir, num_classes=3, mhex=False)
  ids, mask, _ = _batch()
  ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
  _, zeros = model.apply(variables, ids, mask, mutable=["perturbations"])

  def target_logit(perturbations):
    return model.apply({**variables, **perturbations}, ids, mask)[-1, :, 1].sum()

  grads = jax.jit(jax.grad(target_logit))(zeros)
  per_layer = common.layer_input_perturbations(grads["perturbations"])
  assert [g.shape for g in per_layer] == [(3, 11, 32)] * 2
  assert grads["perturbations"]["layer_01"]["attention"]["probs"].shape == (3, 4, 11, 11)
  # The perturbation enters the layer input, so its gradient is the directional derivative.
  direction = jax.random.normal(jax.random.key(0), per_layer[1].shape)
  def shifted(eps):
    p = jax.tree.map(jnp.copy, zeros)
    p["perturbations"]["layer_01"]["layer_input"] = eps * direction
    return jax.jit(target_logit)(p)
  eps = 1e-2
  finite = (shifted(eps) - shifted(-eps)) / (2 * eps)
  np.testing.assert_allclose(finite, jnp.sum(per_layer[1] * direction), rtol=2e-2)


def test_bfloat16_compute_keeps_float32_logits(classifier_dir):
  model, variables = weights.load_bert(classifier_dir, num_classes=3, dtype=jnp.bfloat16)
  ids, mask, _ = _batch()
  logits = model.apply(variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def _edited_copy(source, target, edit):
  shutil.copytree(source, target)
  tensors = safetensors.numpy.load_file(target / "model.safetensors")
  edit(tensors)
  safetensors.numpy.save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
  return target


def test_bad_checkpoint_lists_every_problem(classifier_dir, tmp_path):
  def edit(t):
    del t["bert.encoder.layer.1.intermediate.dense.bias"]
    t["bert.encoder.layer.1.adapter.weight"] = np.zeros((2, 2), np.float32)
    t["bert.encoder.layer.0.attention.self.key.weight"] = np.zeros((32, 16), np.float32)
  broken = _edited_copy(classifier_dir, tmp_path / "broken", edit)
  with pytest.raises(ValueError) as error:
    weights.load_bert(broken, num_classes=3)
  message = str(error.value)
  assert "missing (1): encoder.layer.1.intermediate.dense.bias" in message
  assert "unexpected (1): encoder.layer.1.adapter.weight" in message
  assert ("mis-shaped (1): encoder.layer.0.attention.self.key.weight: checkpoint (32, 16), "
          "model expects (32, 32)") in message


def test_new_classifier_only_when_asked(classifier_dir):
  with pytest.raises(ValueError, match=r"(?s)classifier\.weight.*new_head=True"):
    weights.load_bert(classifier_dir, num_classes=5, mhex=False)
  model, variables = weights.load_bert(classifier_dir, num_classes=5, mhex=False, new_head=True)
  assert variables["params"]["classifier"]["kernel"].shape == (32, 5)
  with pytest.raises(ValueError, match="hidden_size"):
    weights.load_bert(classifier_dir, num_classes=3, hidden_size=64)


def test_bad_inputs_are_named():
  model = bert.BERT(num_classes=2, vocab_size=10, hidden_size=8, num_layers=1, num_heads=2,
                    intermediate_size=16, max_positions=4)
  with pytest.raises(ValueError, match="max_positions=4"):
    model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32), jnp.ones((1, 5)))
  with pytest.raises(ValueError, match="input_ids must be int"):
    model.init(jax.random.key(0), jnp.zeros((1, 3)), jnp.ones((1, 3)))


def test_create_model_and_training_mode(classifier_dir):
  config = config_lib.base_config()
  config.model_name, config.model_init = "bert", str(classifier_dir)
  config.model = config_lib.bert_model()
  config.model.num_classes = 3
  model = model_lib.create_model(config)
  loaded, variables = weights.load_bert(classifier_dir, num_classes=3, gate_init="random")
  assert model == loaded
  ids, mask, types = (jnp.asarray(x, jnp.int32) for x in _batch())
  # As the training step calls it: dropout rng, only "batch_stats" mutable (BERT has none).
  run = lambda seed: model.apply(variables, ids, mask, types, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.key(seed)})[0]
  assert not np.allclose(run(0), run(1))
  np.testing.assert_array_equal(run(0), run(0))


def _intercept_mhex_inputs(model, variables, *args):
  """(u, v) that each layer's MHEX module receives, and the sown features, in depth order."""
  import flax.linen as nn
  calls = []

  def record(next_fun, args_, kwargs, context):
    if isinstance(context.module, models.MHEX):
      calls.append(args_[:2])
    return next_fun(*args_, **kwargs)

  with nn.intercept_methods(record):
    logits, state = model.apply(variables, *args, mutable=["mhex"])
  blocks = mhex_lib.collect_blocks(variables["params"], state["mhex"])
  return calls, blocks, logits


@pytest.mark.parametrize("saliency_features", ["ungated", "sum"])
def test_sown_features_are_ungated_u_plus_v_by_default(classifier_dir, saliency_features):
  model, variables = weights.load_bert(classifier_dir, num_classes=3, gate_init="random",
                                       saliency_features=saliency_features)
  assert bert.BERT(num_classes=2).saliency_features == "ungated"
  ids, mask, _ = _batch()
  calls, blocks, _ = _intercept_mhex_inputs(model, variables, jnp.asarray(ids, jnp.int32),
                                            jnp.asarray(mask))
  for (u, v), block, name in zip(calls, blocks, ("layer_00", "layer_01")):
    expected = u + v
    if saliency_features == "sum":
      m = jnp.asarray(mask, jnp.float32)[..., None]
      z = jax.nn.relu((u * m).sum(1) / m.sum(1) + (v * m).sum(1) / m.sum(1))
      expected = jax.nn.sigmoid(z @ variables["params"][name]["mhex"]["gate"]["kernel"])[:, None] * (u + v)
    np.testing.assert_allclose(block.features, expected, rtol=1e-5, atol=1e-5)


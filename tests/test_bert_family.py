"""RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA checkpoints in ``models.BERT`` (key tables of
``weights.hf_import``), checked against transformers' PyTorch models on padded batches."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import max_abs_diffs, randomise_torch_model
from mhex_jax import weights
from mhex_jax.data import text
from mhex_jax.models import bert
from mhex_jax.models import common

FAMILIES = ("roberta", "xlm-roberta", "distilbert", "electra")
LABELS = ("world", "sports", "business", "science", "arts")
VOCAB, HIDDEN, HEADS, LAYERS, INTERMEDIATE, POSITIONS, EMBEDDING = 97, 36, 3, 2, 52, 40, 20
# Each family's classifier and a pre-training or base model (whose extra heads are skipped).
MODELS = {
    "roberta": (transformers.RobertaForSequenceClassification, transformers.RobertaModel),
    "xlm-roberta": (transformers.XLMRobertaForSequenceClassification,
                    transformers.XLMRobertaForMaskedLM),
    "distilbert": (transformers.DistilBertForSequenceClassification,
                   transformers.DistilBertForMaskedLM),
    "electra": (transformers.ElectraForSequenceClassification,
                transformers.ElectraForPreTraining),
}
# The tensors of those second models that no BERT imports.
UNUSED = {"roberta": "pooler.dense.weight", "xlm-roberta": "lm_head.dense.weight",
          "distilbert": "vocab_projector.bias",
          "electra": "discriminator_predictions.dense_prediction.weight"}
# Hidden states after LayerNorm are O(1) (scales 1 ± 0.1·N(0,1)); 36/52-wide float32 sums in
# other orders than PyTorch's differ by ~1e-6 after two layers: 1e-4 leaves ~100× room.
ATOL = 1e-4


def _config(family):
  labels = dict(num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                label2id={name: i for i, name in enumerate(LABELS)})
  if family == "distilbert":
    return transformers.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS,
                                         n_heads=HEADS, hidden_dim=INTERMEDIATE,
                                         max_position_embeddings=POSITIONS, **labels)
  sizes = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
               num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
               max_position_embeddings=POSITIONS, **labels)
  if family == "electra":
    return transformers.ElectraConfig(embedding_size=EMBEDDING, type_vocab_size=2, **sizes)
  config_class = {"roberta": transformers.RobertaConfig,
                  "xlm-roberta": transformers.XLMRobertaConfig}[family]
  return config_class(type_vocab_size=1, pad_token_id=1, **sizes)


def _batch(family, config):
  """ids, attention mask, token types [3, 11]: rows 1 and 2 end in real padding tokens."""
  rng = np.random.default_rng(1)
  ids = rng.integers(5, VOCAB, (3, 11))
  mask = np.ones_like(ids)
  mask[1, 7:] = mask[2, 4:] = 0
  ids[:, 0] = 0  # <s> / [CLS]-like first token.
  ids[mask == 0] = config.pad_token_id
  types = np.zeros_like(ids)
  if family == "electra":
    types[:, 5:] = 1
  elif family == "distilbert":  # DistilBERT has none: ours must ignore whatever it is given.
    types = rng.integers(0, 2, ids.shape)
  return ids, mask, types


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """family → (classifier directory, pre-training/base model directory, batch, HF output)."""
  out = {}
  for family in FAMILIES:
    config = _config(family)
    classifier_class, base_class = MODELS[family]
    root = tmp_path_factory.mktemp(family)
    torch_model = randomise_torch_model(
        classifier_class._from_config(config, attn_implementation="eager"))
    torch_model.save_pretrained(root / "classifier", safe_serialization=True)
    randomise_torch_model(base_class(config)).save_pretrained(root / "base",
                                                              safe_serialization=True)
    ids, mask, types = _batch(family, config)
    inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if family != "distilbert":
      inputs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
      expected = torch_model(**inputs, output_hidden_states=True)
    out[family] = (root / "classifier", root / "base", (ids, mask, types), expected)
  return out


def _apply(model, variables, batch):
  ids, mask, types = (jnp.asarray(x, jnp.int32) for x in batch)
  return jax.jit(lambda v, *x: model.apply(v, *x, mutable=["hidden_states"]))(
      variables, ids, mask, types)


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_model_matches_transformers(checkpoints, family):
  directory, _, batch, expected = checkpoints[family]
  model, variables = weights.load_bert(directory, num_classes=len(LABELS), mhex=False)
  logits, state = _apply(model, variables, batch)
  hidden = common.hidden_states(state)
  assert logits.shape == (1, 3, len(LABELS))
  assert len(hidden) == len(expected.hidden_states) == LAYERS + 1
  logit_diff = max_abs_diffs([logits[0]], [expected.logits])[0]
  hidden_diffs = max_abs_diffs(hidden, expected.hidden_states)
  print(f"{family}: max |Δlogit| {logit_diff:.2e}, max |Δh| per layer "
        + " ".join(f"{d:.2e}" for d in hidden_diffs))
  assert logit_diff < ATOL and max(hidden_diffs) < ATOL, (logit_diff, hidden_diffs)


def test_family_architecture_is_read(checkpoints):
  configs = {f: weights.bert_config_from_hf(checkpoints[f][0]) for f in FAMILIES}
  family_fields = lambda c: (c["head"], c["position_pad_id"], c["embedding_size"],
                             c["type_vocab_size"])
  assert family_fields(configs["roberta"]) == ("roberta", 1, None, 1)
  assert family_fields(configs["xlm-roberta"]) == ("roberta", 1, None, 1)
  assert family_fields(configs["distilbert"]) == ("distilbert", None, None, 0)
  assert family_fields(configs["electra"]) == ("electra", None, EMBEDDING, 2)
  distilbert = configs["distilbert"]
  assert (distilbert["hidden_size"], distilbert["num_layers"], distilbert["num_heads"],
          distilbert["intermediate_size"], distilbert["layer_norm_eps"],
          distilbert["classifier_dropout"]) == (HIDDEN, LAYERS, HEADS, INTERMEDIATE, 1e-12, 0.2)


def test_roberta_positions_are_hugging_faces():
  ids = np.array([[0, 7, 8, 2, 1, 1], [0, 1, 9, 2, 1, 1], [5, 6, 7, 8, 9, 2]])
  expected = transformers.models.roberta.modeling_roberta.RobertaEmbeddings \
      .create_position_ids_from_input_ids(torch.tensor(ids), padding_idx=1)
  np.testing.assert_array_equal(bert.position_ids(jnp.asarray(ids), 1), expected.numpy())
  np.testing.assert_array_equal(bert.position_ids(jnp.asarray(ids), None),
                                np.broadcast_to(np.arange(6), ids.shape))


@pytest.mark.parametrize("family", FAMILIES)
def test_mhex_load_reports_fresh_gates_and_heads(checkpoints, family, caplog):
  directory, _, batch, expected = checkpoints[family]
  with caplog.at_level(logging.INFO):
    model, variables = weights.load_bert(directory, num_classes=len(LABELS),
                                         gate_init="identity")
  report = next(r.getMessage() for r in caplog.records if "kept" in r.getMessage())
  fresh = [f"params/layer_{i:02d}/mhex/{name}/kernel" for i in range(LAYERS)
           for name in ("gate", "head")]
  assert f"({family}) into BERT(mhex=True)" in report
  assert f"kept {len(fresh)} fresh ({', '.join(fresh)})" in report
  head_keys = ("pre_classifier", "classifier") if family == "distilbert" else (
      "classifier.dense", "classifier.out_proj")
  assert "left 4 file tensors unused (" + ", ".join(
      f"{k}.{p}" for k in sorted(head_keys) for p in ("bias", "weight")) + ")" in report
  assert "classifier" not in variables["params"] and "pooler" not in variables["params"]
  # An identity gate (g = 1) leaves every imported layer as it was: HF's hidden states again.
  _, state = _apply(model, variables, batch)
  assert max(max_abs_diffs(common.hidden_states(state), expected.hidden_states)) < ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_pretraining_checkpoint_heads_are_skipped(checkpoints, family, caplog):
  _, directory, _, _ = checkpoints[family]
  with caplog.at_level(logging.INFO):
    _, variables = weights.load_bert(directory, num_classes=len(LABELS), mhex=False,
                                     new_head=True)
  report = next(r.getMessage() for r in caplog.records if "kept" in r.getMessage())
  assert UNUSED[family] in report
  # The family's whole classification head starts fresh (the checkpoint has none).
  assert ("kept 4 fresh (params/classifier/dense/bias, params/classifier/dense/kernel, "
          "params/classifier/out_proj/bias, params/classifier/out_proj/kernel)") in report
  tensors = weights.read_safetensors(directory)
  prefix = "" if family == "roberta" else {"xlm-roberta": "roberta.", "distilbert": "distilbert.",
                                             "electra": "electra."}[family]
  np.testing.assert_array_equal(variables["params"]["embeddings"]["word_embeddings"]["embedding"],
                                tensors[f"{prefix}embeddings.word_embeddings.weight"])
  with pytest.raises(ValueError, match=r"(?s)missing.*new_head=True"):
    weights.load_bert(directory, num_classes=len(LABELS), mhex=False)


def test_wrong_family_is_named(checkpoints, tmp_path):
  roberta_dir, distilbert_dir = checkpoints["roberta"][0], checkpoints["distilbert"][0]
  vit = tmp_path / "vit"
  vit.mkdir()
  (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
  with pytest.raises(ValueError, match=r"model_type='vit'; BERT loads the BERT family, "
                     r"model_type one of \['bert', 'distilbert', 'electra', 'roberta', "
                     r"'xlm-roberta'\] \(a ViT checkpoint loads with load_vit"):
    weights.load_bert(vit, num_classes=3)
  roberta, variables = weights.load_bert(roberta_dir, num_classes=len(LABELS), mhex=False)
  with pytest.raises(ValueError, match=r"is a 'distilbert' checkpoint, which loads into "
                     r"BERT\(head='distilbert', position_pad_id=None\), but the model has "
                     r"head='roberta', position_pad_id=1: build the model from the checkpoint"):
    weights.load(roberta, variables["params"], distilbert_dir)
  with pytest.raises(ValueError, match=r"\['head'\] are fixed by the checkpoint's config.json"):
    weights.load_bert(roberta_dir, num_classes=len(LABELS), head="pooler")
  sinusoidal = tmp_path / "sinusoidal"
  sinusoidal.mkdir()
  config = json.loads((distilbert_dir / "config.json").read_text())
  (sinusoidal / "config.json").write_text(json.dumps({**config, "sinusoidal_pos_embds": True}))
  with pytest.raises(ValueError, match="sinusoidal_pos_embds=true: fixed sinusoidal position "
                     "embeddings are not supported.*sinusoidal_pos_embds=false"):
    weights.bert_config_from_hf(sinusoidal)


def test_roberta_sequences_leave_room_for_the_padding_offset():
  model = bert.BERT(num_classes=2, vocab_size=10, hidden_size=8, num_layers=1, num_heads=2,
                    intermediate_size=16, max_positions=8, type_vocab_size=1,
                    position_pad_id=1, head="roberta")
  with pytest.raises(ValueError, match="7 tokens exceed max_positions=8 less the 2 positions"):
    model.init(jax.random.key(0), jnp.zeros((1, 7), jnp.int32), jnp.ones((1, 7)))
  with pytest.raises(ValueError, match=r"Unknown head='bart'; use one of \['distilbert'"):
    model.clone(head="bart").init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3)))


def _roberta_tokenizer_dir(directory):
  """A byte-level BPE tokenizer of 15 tokens (RoBERTa's special tokens and ids)."""
  tokens = ["<s>", "<pad>", "</s>", "<unk>", "l", "o", "w", "e", "r", "Ġ", "lo", "low", "Ġlow",
            "er", "<mask>"]
  directory.mkdir()
  (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (directory / "merges.txt").write_text("#version: 0.2\nl o\nlo w\nĠ low\ne r\n")
  (directory / "tokenizer_config.json").write_text('{"tokenizer_class": "RobertaTokenizer"}')
  return directory


def _xlm_roberta_tokenizer_dir(directory):
  """A unigram tokenizer of 13 pieces with XLM-R's special tokens, as save_pretrained writes it."""
  pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁low", -1.0),
            ("er", -2.0), ("▁", -3.0)] + [(c, -4.0) for c in "lower"] + [("<mask>", 0.0)]
  transformers.XLMRobertaTokenizer(vocab=pieces).save_pretrained(directory)
  return directory


@pytest.mark.parametrize("family, make, mask_id", [
    ("roberta", _roberta_tokenizer_dir, 14), ("xlm-roberta", _xlm_roberta_tokenizer_dir, 12)])
def test_roberta_tokenizers_feed_the_model(checkpoints, tmp_path, family, make, mask_id):
  tokenizer = text.load_tokenizer(make(tmp_path / "tokenizer"))
  assert text.special_ids(tokenizer) == {"mask": mask_id, "pad": 1, "cls": 0, "sep": 2}
  arrays = text.tokenize(tokenizer, ["low lower", "low"], max_len=8)
  np.testing.assert_array_equal(arrays["attention_mask"].sum(1), [5, 3])
  np.testing.assert_array_equal(arrays["input_ids"][:, 0], 0)
  assert (arrays["input_ids"][arrays["attention_mask"] == 0] == 1).all()
  assert not arrays["token_type_ids"].any()
  np.testing.assert_array_equal(arrays["special_tokens_mask"][0], [1, 0, 0, 0, 1, 1, 1, 1])
  # The tokenizer's padded rows through our model and PyTorch's: same logits.
  directory = checkpoints[family][0]
  model, variables = weights.load_bert(directory, num_classes=len(LABELS), mhex=False)
  batch = (arrays["input_ids"], arrays["attention_mask"], arrays["token_type_ids"])
  logits, _ = _apply(model, variables, batch)
  reference = MODELS[family][0].from_pretrained(directory, attn_implementation="eager").eval()
  with torch.no_grad():
    expected = reference(**{k: torch.tensor(v, dtype=torch.long) for k, v in arrays.items()
                            if k != "special_tokens_mask"}).logits
  assert max_abs_diffs([logits[0]], [expected])[0] < ATOL

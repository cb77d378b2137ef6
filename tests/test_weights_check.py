"""``python -m mhex_jax.weights.check``, run in-process on tiny saved transformers checkpoints
(BERT, ViT, a standard-width ResNet-18 at 32 px): PASS with its table of differences, and FAIL
with exit status 1 when mhex_jax reads one weight other than transformers does."""

import json
import re
import sys

import pytest
import torch
import transformers

from conftest import randomise_torch_model
from mhex_jax.weights import check
from mhex_jax.weights import hf_import

NUM_LABELS = 3


def _bert(directory, classifier=True):
  config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=32,
                                   max_position_embeddings=32, num_labels=NUM_LABELS)
  model = (transformers.BertForSequenceClassification if classifier
           else transformers.BertModel)(config)
  randomise_torch_model(model).save_pretrained(directory)


def _vit(directory):
  config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16,
                                  num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, num_labels=NUM_LABELS)
  randomise_torch_model(transformers.ViTForImageClassification(config)).save_pretrained(
      directory)


def _resnet(directory):
  """ResNet-18 (standard width: the only one mhex_jax imports), checked at 32 px, the size its
  preprocessor_config.json names."""
  config = transformers.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                     depths=[2, 2, 2, 2], layer_type="basic",
                                     num_labels=NUM_LABELS)
  model = transformers.ResNetForImageClassification(config)
  torch.manual_seed(0)
  with torch.no_grad():  # Running statistics off their 0/1 init, still O(1) activations.
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  model.eval().save_pretrained(directory)
  (directory / check.PREPROCESSOR_FILE).write_text(json.dumps({"size": {"shortest_edge": 32}}))


CHECKPOINTS = {"bert": _bert, "vit": _vit, "resnet": _resnet,
               "bert_without_classifier": lambda d: _bert(d, classifier=False)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  torch.manual_seed(0)
  paths = {}
  for name, write in CHECKPOINTS.items():
    paths[name] = tmp_path_factory.mktemp(name)
    write(paths[name])
  return paths


def _rows(printed):
  """{array name: (max |Δ|, bound, verdict)} from the printed table."""
  rows = re.findall(r"^  (\S.*?\]) +(\S+) +(\S+)  (ok|FAIL)$", printed, re.MULTILINE)
  return {name: (float(diff), float(bound), verdict) for name, diff, bound, verdict in rows}


@pytest.mark.parametrize("name,reference,arrays", [
    ("bert", "BertForSequenceClassification",
     ["logits [2, 3]", "embeddings [2, 16, 16]", "layer 1 output [2, 16, 16]",
      "layer 2 output [2, 16, 16]"]),
    ("vit", "ViTForImageClassification",
     ["logits [2, 3]", "embeddings [2, 17, 16]", "layer 1 output [2, 17, 16]",
      "layer 2 output [2, 17, 16]"]),
    ("resnet", "ResNetForImageClassification",
     ["logits [2, 3]", "stem output [2, 8, 8, 64]", "stage 1 output [2, 8, 8, 64]",
      "stage 2 output [2, 4, 4, 128]", "stage 3 output [2, 2, 2, 256]",
      "stage 4 output [2, 1, 1, 512]"]),
    ("bert_without_classifier", "BertModel",
     ["embeddings [2, 16, 16]", "layer 1 output [2, 16, 16]", "layer 2 output [2, 16, 16]"]),
])
def test_a_faithful_import_passes(checkpoints, capsys, name, reference, arrays):
  assert check.main([str(checkpoints[name]), "--num_inputs=2"]) == 0
  printed = capsys.readouterr().out
  assert f"transformers {reference}, mhex_jax " in printed
  rows = _rows(printed)
  assert list(rows) == arrays, printed
  for diff, bound, verdict in rows.values():
    # float32 sums in another order: ~1e-6 relative, far inside the bound of 1e-4 relative.
    assert verdict == "ok" and diff <= bound / 10 and bound >= 1e-4, printed
  assert printed.rstrip().splitlines()[-1].startswith("PASS: every array within the bound")
  if name == "bert_without_classifier":
    assert "the checkpoint has no classifier: logits not compared" in printed


def test_a_wrong_weight_fails_from_its_layer_on(checkpoints, capsys, monkeypatch):
  """One weight of layer 2 read wrong by mhex_jax (what a mapping mistake does): the embeddings
  and layer 1 still agree, layer 2 and the logits do not, and the exit status is 1."""
  read_tensors = hf_import.read_tensors
  key = "bert.encoder.layer.1.attention.output.dense.weight"

  def damaged(directory):
    tensors = read_tensors(directory)
    value, origin = tensors[key]
    value = value.copy()
    value[0, 1] += 0.5  # One entry: a change of the whole matrix by a constant LayerNorm undoes.
    tensors[key] = (value, origin)
    return tensors
  monkeypatch.setattr(hf_import, "read_tensors", damaged)
  assert check.main([str(checkpoints["bert"]), "--num_inputs=2"]) == 1
  printed = capsys.readouterr().out
  verdicts = {name: verdict for name, (_, _, verdict) in _rows(printed).items()}
  assert verdicts == {"logits [2, 3]": "FAIL", "embeddings [2, 16, 16]": "ok",
                      "layer 1 output [2, 16, 16]": "ok", "layer 2 output [2, 16, 16]": "FAIL"}
  assert printed.rstrip().splitlines()[-1] == (
      "FAIL: 2 of 4 arrays beyond the bound, first logits [2, 3].")


def test_what_cannot_be_checked_is_exit_status_2(tmp_path, capsys):
  assert check.main([str(tmp_path / "nope")]) == 2
  assert "does not exist; the check reads a Hugging Face checkpoint directory" in (
      capsys.readouterr().err)
  (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
  (tmp_path / "model.safetensors").write_bytes(b"")
  assert check.main([str(tmp_path)]) == 2
  assert "holds a 'gpt2' model; mhex_jax imports the model_types" in capsys.readouterr().err


def test_without_torch_the_message_says_what_to_install(checkpoints, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # As if not installed: import fails.
  assert check.main([str(checkpoints["bert"])]) == 2
  assert "and torch is not installed: pip install torch transformers" in capsys.readouterr().err

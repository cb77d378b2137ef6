"""Damaged Hugging Face checkpoints: every problem names the file (and tensor) and the fix.

The checkpoints are written here, key by key, with safetensors.numpy: no torch, no transformers.
"""

import json
import re

import numpy as np
import pytest
import safetensors.numpy

from mhex_jax import weights

HIDDEN, INTERMEDIATE, VOCAB, POSITIONS, IMAGE, PATCH = 8, 16, 20, 16, 8, 4
ARCHITECTURE = dict(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=INTERMEDIATE)


def _linear(tensors, key, n_out, n_in, rng):
  tensors[f"{key}.weight"] = rng.normal(size=(n_out, n_in)).astype(np.float32)
  tensors[f"{key}.bias"] = np.zeros(n_out, np.float32)


def _norm(tensors, key):
  tensors[f"{key}.weight"] = np.ones(HIDDEN, np.float32)
  tensors[f"{key}.bias"] = np.zeros(HIDDEN, np.float32)


def _write(directory, config, tensors):
  directory.mkdir()
  (directory / "config.json").write_text(json.dumps(config))
  safetensors.numpy.save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
  return directory


def _bert_dir(directory, edit=lambda tensors: None):
  """A 1-layer BertModel checkpoint (keys without the ``bert.`` prefix)."""
  rng = np.random.default_rng(0)
  t = {"embeddings.word_embeddings.weight": rng.normal(size=(VOCAB, HIDDEN)),
       "embeddings.position_embeddings.weight": rng.normal(size=(POSITIONS, HIDDEN)),
       "embeddings.token_type_embeddings.weight": rng.normal(size=(2, HIDDEN))}
  t = {k: v.astype(np.float32) for k, v in t.items()}
  _norm(t, "embeddings.LayerNorm")
  layer = "encoder.layer.0"
  for name in ("query", "key", "value"):
    _linear(t, f"{layer}.attention.self.{name}", HIDDEN, HIDDEN, rng)
  _linear(t, f"{layer}.attention.output.dense", HIDDEN, HIDDEN, rng)
  _norm(t, f"{layer}.attention.output.LayerNorm")
  _linear(t, f"{layer}.intermediate.dense", INTERMEDIATE, HIDDEN, rng)
  _linear(t, f"{layer}.output.dense", HIDDEN, INTERMEDIATE, rng)
  _norm(t, f"{layer}.output.LayerNorm")
  edit(t)
  config = dict(model_type="bert", vocab_size=VOCAB, max_position_embeddings=POSITIONS,
                type_vocab_size=2, **ARCHITECTURE)
  return _write(directory, config, t)


def _vit_dir(directory, edit=lambda tensors: None):
  """A 1-layer ViTModel checkpoint (8 px images, 4 px patches)."""
  rng = np.random.default_rng(1)
  tokens = 1 + (IMAGE // PATCH) ** 2
  t = {"embeddings.cls_token": rng.normal(size=(1, 1, HIDDEN)),
       "embeddings.position_embeddings": rng.normal(size=(1, tokens, HIDDEN)),
       "embeddings.patch_embeddings.projection.weight": rng.normal(size=(HIDDEN, 3, PATCH,
                                                                         PATCH)),
       "embeddings.patch_embeddings.projection.bias": np.zeros(HIDDEN)}
  t = {k: v.astype(np.float32) for k, v in t.items()}
  layer = "encoder.layer.0"
  _norm(t, f"{layer}.layernorm_before")
  for name in ("query", "key", "value"):
    _linear(t, f"{layer}.attention.attention.{name}", HIDDEN, HIDDEN, rng)
  _linear(t, f"{layer}.attention.output.dense", HIDDEN, HIDDEN, rng)
  _norm(t, f"{layer}.layernorm_after")
  _linear(t, f"{layer}.intermediate.dense", INTERMEDIATE, HIDDEN, rng)
  _linear(t, f"{layer}.output.dense", HIDDEN, INTERMEDIATE, rng)
  _norm(t, "layernorm")
  edit(t)
  config = dict(model_type="vit", image_size=IMAGE, patch_size=PATCH, num_channels=3,
                **ARCHITECTURE)
  return _write(directory, config, t)


LOADERS = {"bert": (_bert_dir, weights.load_bert), "vit": (_vit_dir, weights.load_vit)}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_the_handmade_checkpoints_load(tmp_path, kind):
  make, load = LOADERS[kind]
  _, variables = load(make(tmp_path / kind), num_classes=3)
  assert "layer_00" in variables["params"]


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_truncated_weights_name_the_file(tmp_path, kind):
  make, load = LOADERS[kind]
  directory = make(tmp_path / kind)
  weights_file = directory / "model.safetensors"
  weights_file.write_bytes(weights_file.read_bytes()[:-100])
  with pytest.raises(ValueError, match=re.escape(f"{weights_file} is not a readable safetensors "
                                                 "file (truncated or corrupt?): ") +
                     r".*re-copy the checkpoint"):
    load(directory, num_classes=3)


def test_git_lfs_pointer_is_named(tmp_path):
  directory = _bert_dir(tmp_path / "bert")
  (directory / "model.safetensors").write_text(
      "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4567\n")
  with pytest.raises(ValueError, match=r"model.safetensors is a Git LFS pointer.*git lfs pull"):
    weights.load_bert(directory, num_classes=3)


@pytest.mark.parametrize("kind", sorted(LOADERS))
@pytest.mark.parametrize("content, match", [
    ('{"model_type": "bert", "hidden_size": 8,', r"is not valid JSON \(Expecting"),
    ("[1, 2]", "holds a JSON list, not an object"),
    (b"\xff\xfe\x00binary", r"is not valid JSON \('utf-8' codec"),
])
def test_broken_config_json_names_the_file(tmp_path, kind, content, match):
  make, load = LOADERS[kind]
  directory = make(tmp_path / kind)
  config_file = directory / "config.json"
  if isinstance(content, bytes):
    config_file.write_bytes(content)
  else:
    config_file.write_text(content)
  with pytest.raises(ValueError, match=re.escape(str(config_file)) + " " + match +
                     ".*re-copy the checkpoint"):
    load(directory, num_classes=3)


def test_missing_files_and_directory_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"checkpoint directory .*nowhere does not exist"):
    weights.load_bert(tmp_path / "nowhere", num_classes=3)
  directory = _bert_dir(tmp_path / "bert")
  with pytest.raises(FileNotFoundError, match=r"is a file, not a directory"):
    weights.load_bert(directory / "config.json", num_classes=3)
  (directory / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match=re.escape(f"No model.safetensors in {directory}")):
    weights.load_bert(directory, num_classes=3)
  (directory / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match=re.escape(f"No config.json in {directory}")):
    weights.load_bert(directory, num_classes=3)


def test_sharded_index_problems_are_named(tmp_path):
  directory = _bert_dir(tmp_path / "bert")
  shard = directory / "model-00001-of-00002.safetensors"
  (directory / "model.safetensors").rename(shard)
  index = directory / "model.safetensors.index.json"
  tensors = safetensors.numpy.load_file(shard)
  weight_map = {k: shard.name for k in tensors}
  weight_map["encoder.layer.0.output.dense.bias"] = "model-00002-of-00002.safetensors"
  index.write_text(json.dumps({"weight_map": weight_map}))
  with pytest.raises(FileNotFoundError, match=r"lists the shard\(s\) "
                     r"\['model-00002-of-00002.safetensors'\], missing from"):
    weights.load_bert(directory, num_classes=3)
  index.write_text(json.dumps({"metadata": {}}))
  with pytest.raises(ValueError, match=re.escape(f'{index} has no "weight_map"')):
    weights.load_bert(directory, num_classes=3)
  index.write_text(json.dumps({"weight_map": {k: shard.name for k in tensors}}))
  weights.load_bert(directory, num_classes=3)  # Index and shard are whole again.


@pytest.mark.parametrize("kind, key", [
    ("bert", "encoder.layer.0.attention.self.query.weight"),
    ("vit", "embeddings.patch_embeddings.projection.weight"),
])
def test_non_finite_weights_are_refused_by_name(tmp_path, kind, key):
  def poison(tensors):
    tensors[key].flat[[0, 5, 7]] = [np.nan, np.inf, -np.inf]
  make, load = LOADERS[kind]
  directory = make(tmp_path / kind, poison)
  with pytest.raises(ValueError) as error:
    load(directory, num_classes=3)
  message = str(error.value)
  size = safetensors.numpy.load_file(directory / "model.safetensors")[key].size
  assert (f"non-finite (1): {directory / 'model.safetensors'}: {key} holds 3 non-finite values "
          f"(NaN or inf) of {size}") in message
  assert "re-copy it or use another checkpoint" in message


def test_non_finite_values_in_skipped_tensors_do_not_matter(tmp_path):
  # An MHEX model does not import the final LayerNorm: its values cannot reach the model.
  def poison(tensors):
    tensors["layernorm.weight"][:] = np.nan
  directory = _vit_dir(tmp_path / "vit", poison)
  weights.load_vit(directory, num_classes=3, mhex=True)
  with pytest.raises(ValueError, match=r"non-finite \(1\): .*: layernorm.weight holds 8"):
    weights.load_vit(directory, num_classes=3, mhex=False, new_head=True)

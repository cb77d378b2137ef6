"""Checkpoints named by a Hugging Face Hub id (``weights.hub``), from a huggingface_hub cache laid
out by hand in a temporary HF_HOME with HF_HUB_OFFLINE=1: nothing here touches the network (where
a test would have called the Hub, ``snapshot_download`` is replaced)."""

import fnmatch
import hashlib
import os
import pathlib
import re

import httpx2
import huggingface_hub
from huggingface_hub import errors as hub_errors
import jax
import numpy as np
import pytest
import torch
import transformers

from configs import default
from conftest import randomise_torch_model
from mhex_jax import config_lib
from mhex_jax import model_lib
from mhex_jax import weights
from mhex_jax.data import text
from mhex_jax.errors import WeightsError
from mhex_jax.weights import hf_import
from mhex_jax.weights import hub

REPO = "owner/tiny-bert"
VOCAB = "[PAD] [UNK] [CLS] [SEP] [MASK] the cat sat on mat dog ran .".split()


def _tiny_bert(directory):
  """A random 1-layer BertForSequenceClassification (3 classes) with its tokenizer files."""
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=8, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=16,
                                   max_position_embeddings=32, num_labels=3)
  randomise_torch_model(transformers.BertForSequenceClassification(config)).save_pretrained(
      directory)
  (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
  (directory / "tokenizer_config.json").write_text(
      '{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')


def _cache(hf_home, repo_id, source, refs=("main",)):
  """``source``'s files as huggingface_hub caches a download: blobs named by their hash, a
  snapshot directory of links to them named by the commit, and ``refs`` naming the commit."""
  repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
  commit = hashlib.sha1(repo_id.encode()).hexdigest()
  snapshot = repo / "snapshots" / commit
  (repo / "blobs").mkdir(parents=True)
  snapshot.mkdir(parents=True)
  for file in sorted(source.iterdir()):
    blob = hashlib.sha256(file.read_bytes()).hexdigest()
    (repo / "blobs" / blob).write_bytes(file.read_bytes())
    (snapshot / file.name).symlink_to(os.path.join("..", "..", "blobs", blob))
  (repo / "refs").mkdir()
  for ref in refs:
    (repo / "refs" / ref).write_text(commit)
  return snapshot


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tiny_bert")
  _tiny_bert(directory)
  return directory


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
  """An empty HF_HOME, offline, both set after huggingface_hub read its own copies at import
  (hub.py reads the environment at each call); no id resolved before."""
  for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(hub, "_SNAPSHOTS", {})
  return tmp_path / "hf_home"


def _no_hub(*args, **kwargs):
  raise AssertionError(f"snapshot_download was called: {args} {kwargs}")


def _bert_config(model_init):
  config = config_lib.base_config()
  config.model_name, config.model_init = "bert", model_init
  config.model = config_lib.bert_model()
  config.model.num_classes = 3
  return config


def _resnet_config(model_init):
  config = default.get_config()
  config.model.stem, config.model.width, config.model_init = "imagenet", 64, model_init
  return config


def test_an_id_resolves_to_its_cached_snapshot_once(hf_home, checkpoint, monkeypatch):
  snapshot = _cache(hf_home, REPO, checkpoint, refs=("main", "v1"))
  calls = []
  download = huggingface_hub.snapshot_download
  monkeypatch.setattr(huggingface_hub, "snapshot_download",
                      lambda *a, **k: calls.append(k) or download(*a, **k))
  assert hub.cache_dir() == hf_home / "hub"
  for name in (REPO, f"{REPO}@main", f"{REPO}@v1", f"{REPO}@{snapshot.name}"):
    assert weights.checkpoint_path(name) == snapshot.resolve()
  assert weights.checkpoint_path(REPO) == snapshot.resolve()  # Once per id: no second call.
  assert len(calls) == 4 and all(k["local_files_only"] for k in calls)
  # Only the files mhex_jax reads are asked for.
  assert set(calls[0]["allow_patterns"]) == set(hub.ALLOW_PATTERNS)


def test_the_download_asks_for_every_file_the_readers_open():
  def fetched(name):
    return any(fnmatch.fnmatch(name, p) for p in hub.ALLOW_PATTERNS)
  needed = (hf_import.CONFIG_FILE, hf_import.WEIGHTS_FILE, hf_import.WEIGHTS_INDEX_FILE,
            "model-00001-of-00002.safetensors", "preprocessor_config.json",
            "tokenizer_config.json", "special_tokens_map.json", *text.VOCAB_FILES)
  assert all(fetched(name) for name in needed), [n for n in needed if not fetched(n)]
  assert not any(fetched(name) for name in ("pytorch_model.bin", "onnx/model.onnx",
                                            "onnx/model.safetensors", "flax_model.msgpack"))


def test_a_model_builds_and_loads_from_the_id(hf_home, checkpoint):
  snapshot = _cache(hf_home, REPO, checkpoint)
  config = _bert_config(REPO)
  config.model.mhex = False
  model = model_lib.create_model(config)
  assert model.hidden_size == 8 and model.vocab_size == len(VOCAB)
  model_lib.check_pretrained(config, model)
  tokens = jax.ShapeDtypeStruct((1, 4), np.int32)
  variables = model.lazy_init(jax.random.key(0), tokens, tokens, mutable=["params"])
  loaded = model_lib.load_pretrained(config, model, variables)
  expected = hf_import.read_safetensors(checkpoint)
  np.testing.assert_array_equal(
      loaded["params"]["layer_00"]["attention"]["query"]["kernel"],
      expected["bert.encoder.layer.0.attention.self.query.weight"].T)
  np.testing.assert_array_equal(loaded["params"]["classifier"]["kernel"],
                                expected["classifier.weight"].T)
  tokenizer = text.load_tokenizer(REPO)  # data.tokenizer_dir may be the id too.
  assert tokenizer.convert_tokens_to_ids(["the", "cat"]) == [5, 6]
  assert str(snapshot.resolve()) in tokenizer.name_or_path


@pytest.mark.parametrize("reader", ["create_model", "check_pretrained", "load_tokenizer"])
def test_offline_without_the_files_is_one_clear_error(hf_home, reader):
  repo = "owner/not-cached"
  with pytest.raises(WeightsError) as error:
    if reader == "create_model":
      model_lib.create_model(_bert_config(repo))
    elif reader == "check_pretrained":
      config = _resnet_config(f"{repo}@v2")
      model_lib.check_pretrained(config, model_lib.create_model(config))
    else:
      text.load_tokenizer(repo)
  message = str(error.value)
  field = "data.tokenizer_dir" if reader == "load_tokenizer" else "model_init"
  assert message.startswith(f"{field}='{repo}")
  for part in (f"is not a local path, and the Hugging Face Hub model {repo}",
               f"is not in the cache {hf_home / 'hub'}", "HF_HUB_OFFLINE=1",
               f"`hf download {repo}", "copy the folder models--owner--not-cached",
               "or pass a local checkpoint directory."):
    assert part in message, message
  if reader == "check_pretrained":
    assert "at revision v2" in message and "--revision v2`" in message
  assert error.value.__cause__ is None and error.value.__suppress_context__


@pytest.mark.parametrize("path", ["{tmp}/nope", "./nope", "nope.safetensors", "a/b/c"])
def test_a_missing_local_path_is_a_local_error_without_a_hub_call(hf_home, tmp_path, monkeypatch,
                                                                   path):
  monkeypatch.setattr(huggingface_hub, "snapshot_download", _no_hub)
  path = path.format(tmp=tmp_path)
  assert hub.parse_hub_id(path) is None
  shown = re.escape(str(pathlib.Path(path)))
  with pytest.raises(FileNotFoundError, match=f"{shown} does not exist"):
    model_lib.create_model(_bert_config(path))
  config = _resnet_config(path)
  with pytest.raises(FileNotFoundError, match=f"{shown} do not exist"):
    model_lib.check_pretrained(config, model_lib.create_model(config))
  with pytest.raises(FileNotFoundError, match=f"tokenizer directory {shown} does not exist"):
    text.load_tokenizer(path)


def test_an_existing_path_wins_over_an_id(tmp_path, monkeypatch, checkpoint):
  monkeypatch.setattr(huggingface_hub, "snapshot_download", _no_hub)
  monkeypatch.chdir(checkpoint.parent)
  assert weights.checkpoint_path(checkpoint.name) == checkpoint.relative_to(checkpoint.parent)
  assert weights.checkpoint_path(checkpoint) == checkpoint


@pytest.mark.parametrize("value,expected", [
    ("microsoft/resnet-50", ("microsoft/resnet-50", None)),
    ("bert-base-uncased", ("bert-base-uncased", None)),
    ("Qwen/Qwen2.5-0.5B@refs/pr/1", ("Qwen/Qwen2.5-0.5B", "refs/pr/1")),
    ("timm/resnet50.a1_in1k@v1.0", ("timm/resnet50.a1_in1k", "v1.0")),
    ("/abs/dir", None), ("~/dir", None), ("../dir", None), ("a/b/c", None),
    ("weights.pth", None), ("dir/model.safetensors", None), ("foo--bar", None),
    ("owner/-name", None), ("", None)])
def test_what_counts_as_an_id(value, expected):
  assert hub.parse_hub_id(value) == expected


def _online(monkeypatch):
  """As if online (also where the session was started with HF_HUB_OFFLINE=1); the Hub's
  answer is stubbed."""
  monkeypatch.setenv("HF_HUB_OFFLINE", "0")
  monkeypatch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", False)


def _response(status):
  return httpx2.Response(status, request=httpx2.Request("GET", "https://hub.invalid/api"))


@pytest.mark.parametrize("raised,expected", [
    (hub_errors.RepositoryNotFoundError("404", response=_response(404)),
     "is neither a local path nor a model on the Hugging Face Hub (owner/name was not found"),
    (hub_errors.GatedRepoError("403", response=_response(403)),
     "owner/name is a gated model on the Hugging Face Hub. Accept its terms"),
    (hub_errors.RevisionNotFoundError("404", response=_response(404)),
     "owner/name has no revision None on the Hugging Face Hub"),
    (hub_errors.HfHubHTTPError("500 Server Error", response=_response(500)),
     "downloading owner/name from the Hugging Face Hub failed (HfHubHTTPError: 500 Server Error)"),
    (httpx2.ProxyError("proxy refused"),
     "downloading owner/name from the Hugging Face Hub failed (ProxyError: proxy refused)"),
    (PermissionError(13, "Permission denied"), "cannot write the Hugging Face cache"),
])
def test_hub_errors_name_the_id_and_the_fix(hf_home, monkeypatch, raised, expected):
  _online(monkeypatch)

  def download(*args, **kwargs):
    assert not kwargs["local_files_only"]
    raise raised
  monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
  with pytest.raises(WeightsError, match="^model_init='owner/name'") as error:
    weights.checkpoint_path("owner/name")
  assert expected in str(error.value), str(error.value)


def test_an_unreachable_hub_says_so_and_how_to_fetch_elsewhere(hf_home, monkeypatch):
  _online(monkeypatch)

  def download(*args, **kwargs):
    try:
      raise httpx2.ConnectError("[Errno -2] Name or service not known")
    except httpx2.ConnectError as e:
      raise hub_errors.LocalEntryNotFoundError("Got: ConnectError ...") from e
  monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
  with pytest.raises(WeightsError) as error:
    weights.checkpoint_path("owner/name")
  message = str(error.value)
  assert "the Hugging Face Hub could not be reached to download owner/name (ConnectError: " \
         "[Errno -2] Name or service not known)" in message
  assert "`hf download owner/name`" in message

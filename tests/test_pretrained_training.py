"""A few train.py steps from a pretrained checkpoint of every family the project imports, through
the shipped configs (configs/bert_agnews.py, configs/vit_medmnist.py,
configs/resnet18_medmnist.py:pretrained) with overrides: tiny random checkpoints that
transformers saves here, tiny CSV and MedMNIST files, two steps and the eval after them.

At a learning rate of 1e-9 two AdamW (or SGD) steps move no weight by more than ~1e-8, so a
backbone array of the saved checkpoint still equals the file's tensor (it was loaded) while the
MHEX gates and heads the file lacks exist beside it."""

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Nothing here reads a Hub id; never fetch one.

import numpy as np
import pytest
import torch
import transformers

from configs import bert_agnews
from configs import resnet18_medmnist
from configs import vit_medmnist
from mhex_jax import checkpoints
from mhex_jax import train_lib
from mhex_jax import weights

# Two AdamW steps of at most lr each (SGD's: lr · |g| · (1 + momentum)): ~1e-8 at most. A weight
# that was not loaded differs from the file's random one by O(0.1).
LEARNING_RATE = 1e-9
LOADED_TOLERANCE = 1e-6
STEPS = 2
BATCH = 8
LAYERS = 2
AGNEWS_CLASSES = 4
# Letters every tokenizer below spells: words the BPE and unigram vocabularies split into
# pieces, the WordPiece vocabulary holds whole.
WORDS = ("low", "lower", "owl", "row", "lore", "role", "we", "wore")
# Text checkpoints (BERT-family sizes: d = 36 over 3 heads, ELECTRA's embeddings 20 wide).
VOCAB, HIDDEN, HEADS, INTERMEDIATE, POSITIONS, EMBEDDING = 40, 36, 3, 52, 40, 20


def _train(config, workdir):
  """Two steps (one epoch of 16 examples) at LEARNING_RATE, every step logged, one eval batch."""
  # One device: sharding is test_train.py's subject, and conftest's 8 virtual devices on a
  # 2-core CPU cost ~40% more compile and save time here.
  config.num_devices = 1
  config.train.batch_size = config.eval.batch_size = BATCH
  config.train.num_epochs = 1
  config.train.learning_rate = LEARNING_RATE
  config.train.end_learning_rate = None  # vit_medmnist's floor (1e-5) would exceed the peak.
  config.train.log_every_steps = 1
  result = train_lib.train_and_evaluate(config, str(workdir), max_steps=STEPS)
  assert result["step"] == STEPS and result["num_examples"] == BATCH, result
  losses = _logged_losses(workdir)
  assert len(losses) == STEPS and all(map(math.isfinite, losses)), losses
  return checkpoints.restore_saved_variables(workdir)["params"]


def _logged_losses(workdir):
  records = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
  return [r["train/loss"] for r in records if "train/loss" in r]


def _mhex_kernels(params, prefix=()):
  """'/'-joined paths of every MHEX gate and head kernel in ``params``."""
  out = []
  for key, value in params.items():
    path = prefix + (key,)
    if isinstance(value, dict):
      out += _mhex_kernels(value, path)
    elif key == "kernel" and len(path) > 2 and path[-3] == "mhex":
      out.append("/".join(path))
  return sorted(out)


def _layer_kernels(num_layers):
  return sorted(f"layer_{i:02d}/mhex/{name}/kernel" for i in range(num_layers)
                for name in ("gate", "head"))


def _file_tensor(directory, suffix):
  """The one tensor of a save_pretrained directory whose key ends in ``suffix`` (the families
  prefix theirs: "roberta.", "electra.", "dinov2."...)."""
  tensors = weights.read_safetensors(directory)
  found = [k for k in tensors if k == suffix or k.endswith("." + suffix)]
  assert len(found) == 1, (suffix, sorted(tensors))
  return tensors[found[0]]


def _assert_loaded(ours, theirs):
  assert ours.shape == theirs.shape
  difference = float(np.max(np.abs(ours - theirs)))
  assert difference < LOADED_TOLERANCE, difference


# -------------------------------------------------------------------------------------------
# Text: configs/bert_agnews.py over BERT, RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA.
# -------------------------------------------------------------------------------------------


def _wordpiece_tokenizer(directory):
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  (directory / "vocab.txt").write_text("\n".join(specials + list(WORDS)) + "\n")
  (directory / "tokenizer_config.json").write_text(
      '{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')


def _roberta_tokenizer(directory):
  """Byte-level BPE (test_bert_family's) with RoBERTa's special tokens and ids."""
  tokens = ["<s>", "<pad>", "</s>", "<unk>", "l", "o", "w", "e", "r", "Ġ", "lo", "low", "Ġlow",
            "er", "<mask>"]
  (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (directory / "merges.txt").write_text("#version: 0.2\nl o\nlo w\nĠ low\ne r\n")
  (directory / "tokenizer_config.json").write_text('{"tokenizer_class": "RobertaTokenizer"}')


def _xlm_roberta_tokenizer(directory):
  """A unigram tokenizer with XLM-R's special tokens, saved as XLM-R's tokenizer.json."""
  pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁low", -1.0),
            ("er", -2.0), ("▁", -3.0)] + [(c, -4.0) for c in "lower"] + [("<mask>", 0.0)]
  transformers.XLMRobertaTokenizer(vocab=pieces).save_pretrained(directory)


def _text_sizes():
  return dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
              num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
              max_position_embeddings=POSITIONS)


# family → (the transformers model saved, its config, the tokenizer written beside it). Base and
# pre-training models as they are published (no classifier: the config's new_head), RoBERTa's
# and XLM-R's as fine-tuned classifiers of other classes.
TEXT_FAMILIES = {
    "bert": (transformers.BertModel, lambda: transformers.BertConfig(**_text_sizes()),
             _wordpiece_tokenizer),
    "roberta": (transformers.RobertaForSequenceClassification,
                lambda: transformers.RobertaConfig(type_vocab_size=1, pad_token_id=1,
                                                   num_labels=3, **_text_sizes()),
                _roberta_tokenizer),
    "xlm-roberta": (transformers.XLMRobertaForSequenceClassification,
                    lambda: transformers.XLMRobertaConfig(type_vocab_size=1, pad_token_id=1,
                                                          num_labels=3, **_text_sizes()),
                    _xlm_roberta_tokenizer),
    "distilbert": (transformers.DistilBertForMaskedLM,
                   lambda: transformers.DistilBertConfig(
                       vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                       hidden_dim=INTERMEDIATE, max_position_embeddings=POSITIONS),
                   _wordpiece_tokenizer),
    "electra": (transformers.ElectraForPreTraining,
                lambda: transformers.ElectraConfig(embedding_size=EMBEDDING, **_text_sizes()),
                _wordpiece_tokenizer),
}


def _agnews_csv(path, per_class=6):
  """AG News' layout ("class index","title","description"), 6 rows per class: the config's
  stratified split (eval_fraction 0.25) holds out 2 of each, 16 rows are left to train on."""
  rng = np.random.default_rng(0)
  rows = []
  for label in range(1, AGNEWS_CLASSES + 1):
    for _ in range(per_class):
      title, description = (" ".join(rng.choice(WORDS, size=n)) for n in (2, 4))
      rows.append(f'"{label}","{title}","{description}"\n')
  path.write_text("".join(rows))
  return path


@pytest.fixture(scope="module")
def text_checkpoints(tmp_path_factory):
  """family → save_pretrained directory with its tokenizer files; "csv" → the training CSV."""
  root = tmp_path_factory.mktemp("text")
  out = {"csv": _agnews_csv(root / "agnews.csv")}
  for family, (model_class, make_config, write_tokenizer) in TEXT_FAMILIES.items():
    torch.manual_seed(0)
    directory = root / family
    model_class(make_config()).save_pretrained(directory, safe_serialization=True)
    write_tokenizer(directory)
    out[family] = directory
  return out


def _text_config(arg, checkpoint_dir, csv):
  config = bert_agnews.get_config(arg)
  config.model_init = str(checkpoint_dir)  # data.tokenizer_dir follows it.
  config.data.path = str(csv)
  config.data.max_len = 16
  config.data.eval_fraction = 0.25
  return config


@pytest.mark.parametrize("family", sorted(TEXT_FAMILIES))
def test_mhex_bert_trains_from_each_text_family(text_checkpoints, family, tmp_path):
  directory = text_checkpoints[family]
  config = _text_config(None, directory, text_checkpoints["csv"])
  assert config.data.tokenizer_dir == str(directory)
  params = _train(config, tmp_path)
  assert _mhex_kernels(params) == _layer_kernels(LAYERS)
  _assert_loaded(params["embeddings"]["word_embeddings"]["embedding"],
                 _file_tensor(directory, "embeddings.word_embeddings.weight"))


def test_plain_bert_trains_with_a_new_classifier(text_checkpoints, tmp_path):
  directory = text_checkpoints["bert"]
  params = _train(_text_config("plain", directory, text_checkpoints["csv"]), tmp_path)
  assert not _mhex_kernels(params)
  assert params["classifier"]["kernel"].shape == (HIDDEN, AGNEWS_CLASSES)
  # The pooler comes from the file, the classifier (which BertModel lacks) starts fresh.
  _assert_loaded(params["pooler"]["kernel"], _file_tensor(directory, "pooler.dense.weight").T)


# -------------------------------------------------------------------------------------------
# Images: configs/vit_medmnist.py over ViT, DeiT, DINOv2 (± registers), and
# configs/resnet18_medmnist.py:pretrained from a Hugging Face ResNet-18.
# -------------------------------------------------------------------------------------------

# d = 24 over 3 heads, 32 px images of 8 px patches (a 4×4 grid).
VIT_SIZES = dict(hidden_size=24, num_hidden_layers=LAYERS, num_attention_heads=3,
                 image_size=32, patch_size=8)
# family → (the transformers model saved, its config, the size it trains at). DINOv2 runs off
# its 4×4 position grid (interpolated, as transformers does): 5×5 and, with registers, 3×3.
VIT_FAMILIES = {
    "vit": (transformers.ViTForImageClassification,
            lambda: transformers.ViTConfig(intermediate_size=48, num_labels=5, **VIT_SIZES), 32),
    "deit": (transformers.DeiTForImageClassificationWithTeacher,
             lambda: transformers.DeiTConfig(intermediate_size=48, num_labels=5, **VIT_SIZES),
             32),
    "dinov2": (transformers.Dinov2Model,
               lambda: transformers.Dinov2Config(mlp_ratio=2, **VIT_SIZES), 40),
    "dinov2_with_registers": (
        transformers.Dinov2WithRegistersModel,
        lambda: transformers.Dinov2WithRegistersConfig(num_register_tokens=2, mlp_ratio=2,
                                                       **VIT_SIZES), 24),
}


def _medmnist_npz(path):
  """PneumoniaMNIST's format: 28 px grayscale uint8, labels [N, 1]; 16 to train on, 8 to eval."""
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  labels = lambda n: (np.arange(n) % 2).astype(np.uint8)[:, None]
  np.savez(path, train_images=images(16), train_labels=labels(16), val_images=images(BATCH),
           val_labels=labels(BATCH))
  return path


def _resnet18(directory):
  config = transformers.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                     depths=[2, 2, 2, 2], layer_type="basic", num_labels=3)
  transformers.ResNetForImageClassification(config).save_pretrained(directory,
                                                                    safe_serialization=True)


@pytest.fixture(scope="module")
def image_checkpoints(tmp_path_factory):
  """family → save_pretrained directory (weights and config.json only); "npz" → the data."""
  root = tmp_path_factory.mktemp("images")
  out = {"npz": _medmnist_npz(root / "pneumoniamnist.npz")}
  torch.manual_seed(0)
  for family, (model_class, make_config, _) in VIT_FAMILIES.items():
    model_class(make_config()).save_pretrained(root / family, safe_serialization=True)
    out[family] = root / family
  _resnet18(root / "resnet")
  out["resnet"] = root / "resnet"
  return out


def _conv_kernel(directory, key):
  """A file's OIHW convolution as our HWIO kernel."""
  return np.transpose(_file_tensor(directory, key), (2, 3, 1, 0))


@pytest.mark.parametrize("family", sorted(VIT_FAMILIES))
def test_mhex_vit_trains_from_each_image_family(image_checkpoints, family, tmp_path):
  directory, image_size = image_checkpoints[family], VIT_FAMILIES[family][2]
  config = vit_medmnist.get_config()
  config.model_init = str(directory)
  config.data.path = str(image_checkpoints["npz"])
  config.data.image_size = image_size
  assert config.model.image_size == image_size  # The model runs at the data's size.
  params = _train(config, tmp_path)
  assert _mhex_kernels(params) == _layer_kernels(LAYERS)
  _assert_loaded(params["patch_embedding"]["kernel"],
                 _conv_kernel(directory, "embeddings.patch_embeddings.projection.weight"))


def test_mhex_resnet18_trains_from_a_hugging_face_resnet(image_checkpoints, tmp_path):
  directory = image_checkpoints["resnet"]
  config = resnet18_medmnist.get_config("pretrained")
  config.model_init = str(directory)
  config.data.path = str(image_checkpoints["npz"])
  config.data.image_size = 32  # The recipe's 64 px costs 4× the compute for nothing tested.
  params = _train(config, tmp_path)
  assert len(_mhex_kernels(params)) == 2 * 8  # A gate and a head in each of the 8 blocks.
  # Batch statistics move in training mode; a convolution does not (at this learning rate).
  _assert_loaded(params["stem_conv"]["kernel"],
                 _conv_kernel(directory, "embedder.embedder.convolution.weight"))

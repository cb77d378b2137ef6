"""Explaining a pretrained Hugging Face classifier as it is (``explain.py --model_init=DIR``,
``explain_lib.from_pretrained``): its preprocessing against transformers' image processors, and
tiny random ViT, ResNet-18 and BERT classifiers saved by transformers, explained by the command
(in this process) with every method the registry offers them, their predictions checked against
transformers' own."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from absl import flags
import numpy as np
from PIL import Image
import pytest
import torch
import transformers

from mhex_jax import config_lib
from mhex_jax import explain_lib
from mhex_jax import plotting
from mhex_jax.cli import explain as explain_cli
from mhex_jax.data import preprocess
from mhex_jax.errors import UserError
from mhex_jax.explain import registry

FLAGS = flags.FLAGS
IMAGE_CLASSES = {0: "tabby", 1: "tiger", 2: "lynx"}
TEXT_CLASSES = {0: "negative", 1: "positive"}
VOCAB = "[PAD] [UNK] [CLS] [SEP] [MASK] the cat sat on mat stocks fell rose .".split()
TEXTS = ["the cat sat on the mat .", "stocks fell"]
# Image sizes of the explained files: wide and tall, neither the model's 32 px.
SIZES = [(37, 53), (61, 29)]
# The same PIL resize and crop; the rescale and normalisation are float32 roundings of values up
# to |(1 − 0.45) / 0.2| ≈ 3, ~1e-6 each: any step done differently is off by > 1e-2.
PREPROCESSING_TOLERANCE = 1e-5
# Probabilities of the same float32 network in PyTorch and JAX: summation orders differ through
# a few layers (~1e-6 relative); a wrong weight or input moves them by > 1e-2.
PROBABILITY_TOLERANCE = 1e-4


def _images(seed=0):
  """Smooth random uint8 images of SIZES (a saliency method has structure to find)."""
  rng = np.random.default_rng(seed)
  out = []
  for height, width in SIZES:
    y, x = np.mgrid[:height, :width] / 8.0
    phases = rng.uniform(0, 2 * np.pi, size=3)
    out.append(np.stack([127 + 100 * np.sin(y + p) * np.cos(x - p) for p in phases],
                        -1).astype(np.uint8))
  return out


def _decisive(model):
  """Random classifiers are near-uniform; a 30× larger head makes their argmax decisive."""
  with torch.no_grad():
    for parameter in model.classifier.parameters():
      parameter.mul_(30.0)
  return model.eval()


def _save_vit(directory):
  torch.manual_seed(0)
  config = transformers.ViTConfig(
      image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=32, id2label=IMAGE_CLASSES, label2id={v: k for k, v in
                                                              IMAGE_CLASSES.items()})
  _decisive(transformers.ViTForImageClassification(config)).save_pretrained(directory)
  transformers.ViTImageProcessorPil(
      size={"height": 32, "width": 32}, image_mean=[0.45, 0.5, 0.55],
      image_std=[0.2, 0.25, 0.3]).save_pretrained(directory)


def _save_resnet(directory):
  torch.manual_seed(0)
  config = transformers.ResNetConfig(
      embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
      layer_type="basic", id2label=IMAGE_CLASSES,
      label2id={v: k for k, v in IMAGE_CLASSES.items()})
  _decisive(transformers.ResNetForImageClassification(config)).save_pretrained(directory)
  # 16 px inputs (resized to 18, centre-cropped): ResNet-18 at the least compute that keeps a
  # feature map larger than 1×1 up to its third stage.
  transformers.ConvNextImageProcessorPil(size={"shortest_edge": 16},
                                         crop_pct=0.875).save_pretrained(directory)


def _save_bert(directory):
  torch.manual_seed(0)
  config = transformers.BertConfig(
      vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=32, max_position_embeddings=40, id2label=TEXT_CLASSES,
      label2id={v: k for k, v in TEXT_CLASSES.items()})
  _decisive(transformers.BertForSequenceClassification(config)).save_pretrained(directory)
  (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
  (directory / "tokenizer_config.json").write_text(
      '{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')


SAVERS = {"vit": _save_vit, "resnet": _save_resnet, "bert": _save_bert}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("pretrained")
  for name, save in SAVERS.items():
    save(root / name)
  return root


# -------------------------------------------------------------------------------------------
# Preprocessing: our numpy/PIL steps against transformers' (PIL-backend) image processors.
# -------------------------------------------------------------------------------------------

# name → (processor class, its arguments, or the file's content as written).
PROCESSORS = {
    "vit": ("ViTImageProcessor", {"size": {"height": 32, "width": 32},
                                  "image_mean": [0.45, 0.5, 0.55], "image_std": [0.2, 0.25, 0.3]}),
    "convnext_crop_pct": ("ConvNextImageProcessor", {"size": {"shortest_edge": 32},
                                                     "crop_pct": 0.875}),
    "convnext_warp": ("ConvNextImageProcessor", {"size": {"shortest_edge": 400}}),
    "bit": ("BitImageProcessor", {"size": {"shortest_edge": 40},
                                  "crop_size": {"height": 32, "width": 28}}),
    # microsoft/resnet-50's file as published: a feature extractor's, size as one int, no
    # rescale keys (transformers' default applies).
    "resnet50_file": ("ConvNextImageProcessor", {"file": {
        "feature_extractor_type": "ConvNextFeatureExtractor", "size": 36, "crop_pct": 0.875,
        "resample": 3, "do_resize": True, "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}}),
}


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_preprocessing_matches_transformers(name, tmp_path):
  processor_type, settings = PROCESSORS[name]
  # The PIL backend by name: the default class picks torchvision when installed.
  processor_class = getattr(transformers, processor_type + "Pil")
  if "file" in settings:
    (tmp_path / preprocess.PROCESSOR_FILE).write_text(json.dumps(settings["file"]))
  else:
    processor_class(**settings).save_pretrained(tmp_path)
  theirs = processor_class.from_pretrained(tmp_path)
  ours = preprocess.ImageProcessor.from_pretrained(tmp_path)
  for image in _images(seed=1):
    expected = theirs(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    inputs, (left, top, right, bottom) = ours(image)
    assert inputs.dtype == np.float32 and inputs.shape == expected.shape
    np.testing.assert_allclose(inputs, expected, rtol=0, atol=PREPROCESSING_TOLERANCE)
    # The box of the original the input covers: all of it, or a centred crop of the input's
    # aspect (the resize before it kept the image's, up to rounding to whole pixels).
    height, width = image.shape[:2]
    if not ours.crops:
      assert (left, top, right, bottom) == pytest.approx((0, 0, width, height))
      continue
    assert (right - left) / (bottom - top) == pytest.approx(
        expected.shape[1] / expected.shape[0], rel=0.05)
    assert (left + right) / 2 == pytest.approx(width / 2, abs=1)
    assert (top + bottom) / 2 == pytest.approx(height / 2, abs=1)


def test_preprocessing_refuses_what_it_cannot_do(tmp_path):
  with pytest.raises(UserError, match="No preprocessor_config.json in .*not guessed"):
    preprocess.ImageProcessor.from_pretrained(tmp_path)
  bad = {"size": {"shortest_edge": 32, "longest_edge": 64}, "image_mean": [0.5],
         "image_std": [0.5]}
  with pytest.raises(UserError, match=r"sets \['longest_edge'\]"):
    preprocess.ImageProcessor.from_dict(bad)
  with pytest.raises(UserError, match="do_normalize needs image_mean"):
    preprocess.ImageProcessor.from_dict({"size": 32})


# -------------------------------------------------------------------------------------------
# The command on the tiny checkpoints.
# -------------------------------------------------------------------------------------------


@pytest.fixture
def few_passes(monkeypatch):
  """The multi-pass methods with a few passes each: at their defaults (32-step IG, 25-sample
  SmoothGrad, Score-CAM over the 512 channels of ResNet-18's last stage) one ResNet-18 run is
  minutes of CPU under the tests' unoptimised XLA (conftest's fast-compile flags). The
  Score-CAM layer is set per model (``few_passes(score_cam_layer)``)."""
  base_config = config_lib.base_config

  def set_layer(score_cam_layer=None):
    def config():
      config = base_config()
      options = config.eval.explainer_options
      options.integrated_gradients.steps = options.embedding_integrated_gradients.steps = 2
      options.smoothgrad.num_samples = options.smoothgrad.chunk_size = 2
      if score_cam_layer:
        options.score_cam.layer = score_cam_layer
      return config
    monkeypatch.setattr(config_lib, "base_config", config)

  return set_layer


def _explain(capsys, *args) -> dict:
  """``explain.py ARGS`` in this process; its printed summary."""
  argv = FLAGS(["explain.py", *args])
  try:
    explain_cli.main(argv)
  finally:
    FLAGS.unparse_flags()
  return json.loads(capsys.readouterr().out)


def _torch_probabilities(directory, inputs: dict) -> np.ndarray:
  model = transformers.AutoModelForImageClassification if "pixel_values" in inputs else (
      transformers.AutoModelForSequenceClassification)
  with torch.no_grad():
    logits = model.from_pretrained(directory).eval()(**inputs).logits
  return torch.softmax(logits, -1).numpy()


def _check_prediction(entry: dict, probabilities: np.ndarray):
  """The plain model's top class and probability are transformers' (the class where the top
  two are apart by more than the float32 bound)."""
  top = np.sort(probabilities)[-2:]
  if top[1] - top[0] > 2 * PROBABILITY_TOLERANCE:
    assert entry["predicted"] == int(probabilities.argmax())
  assert entry["probability"] == pytest.approx(probabilities.max(), abs=PROBABILITY_TOLERANCE)


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_command_explains_an_image_classifier_as_it_is(name, checkpoints, tmp_path, capsys,
                                                       monkeypatch, few_passes):
  # ResNet-18's Score-CAM on the 64 channels entering its second stage.
  few_passes("block_02" if name == "resnet" else None)
  directory = checkpoints / name
  paths = []
  for i, image in enumerate(_images()):
    paths.append(str(tmp_path / f"image{i}.png"))
    Image.fromarray(image).save(paths[-1])
  captions = []
  overlay_figure = plotting.overlay_figure
  monkeypatch.setattr(plotting, "overlay_figure",
                      lambda *a, **k: captions.extend(a[2]) or overlay_figure(*a, **k))
  out = tmp_path / "out"
  summary = _explain(capsys, f"--model_init={directory}", *paths, f"--out={out}")

  model = explain_lib.from_pretrained(str(directory)).model
  assert not model.mhex and model.num_classes == len(IMAGE_CLASSES)
  methods = registry.available(model)
  assert len(methods) == (16 if name == "vit" else 8)  # ViT: image and token methods.
  entries = json.loads((out / "explanations.json").read_text())
  assert [e["source"] for e in entries] == paths and summary["results"] == [
      {k: e[k] for k in summary["results"][0]} for e in entries]
  processor = transformers.AutoImageProcessor.from_pretrained(directory)
  for entry, (height, width), image in zip(entries, SIZES, _images()):
    assert entry["predicted_name"] == IMAGE_CLASSES[entry["predicted"]]
    assert entry["methods"] == list(methods)
    assert (out / entry["figure"]).is_file()
    assert sorted(entry["overlays"]) == sorted(methods)
    for overlay in entry["overlays"].values():
      assert Image.open(out / overlay).size == (width, height)
    maps = np.load(out / entry["maps"])
    assert sorted(maps) == sorted(methods)
    for method in methods:
      assert maps[method].shape == (height, width), method
      assert np.all(np.isfinite(maps[method])), method
      assert maps[method].min() >= 0 and maps[method].max() <= 1, method
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    _check_prediction(entry, _torch_probabilities(directory, {"pixel_values": pixels})[0])
  # Each figure is captioned with its id2label name.
  assert [c.split(" (")[0] for c in captions] == [e["predicted_name"] for e in entries]


def test_command_explains_a_text_classifier_as_it_is(checkpoints, tmp_path, capsys, few_passes):
  few_passes()
  directory = checkpoints / "bert"
  lines = tmp_path / "texts.txt"
  lines.write_text(TEXTS[1] + "\n")
  out = tmp_path / "out"
  _explain(capsys, f"--model_init={directory}", f"--text={TEXTS[0]}", str(lines),
           f"--out={out}")

  entries = json.loads((out / "explanations.json").read_text())
  page = (out / "texts.html").read_text()
  maps = np.load(out / "texts.maps.npz")
  methods = registry.available(explain_lib.from_pretrained(str(directory)).model)
  assert sorted(maps) == sorted(methods) and len(methods) == 8
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  for entry, text in zip(entries, TEXTS):
    assert entry["source"] == text and entry["tokens"][0] == "[CLS]"
    assert entry["predicted_name"] == TEXT_CLASSES[entry["predicted"]]
    assert entry["predicted_name"] in page  # The caption.
    for method in methods:  # Rows as long as the longest text's 9 tokens.
      scores = maps[method][entry["row"]]
      assert scores.shape == (9,) and np.all(np.isfinite(scores)), method
      assert np.all(scores[len(entry["tokens"]):] == 0), method
    _check_prediction(entry, _torch_probabilities(
        directory, dict(tokenizer(text, return_tensors="pt")))[0])
  for method in methods:
    assert f"<i>{method}</i>" in page


def test_pretrained_run_refuses_what_it_cannot_explain(checkpoints, tmp_path):
  run = explain_lib.from_pretrained(str(checkpoints / "vit"))
  image = _images()[0]
  with pytest.raises(UserError, match="fit='pad' is for workdir models"):
    run.explain_images([image], fit="pad")
  with pytest.raises(UserError, match=r"Methods \['mhex'\] are not available"):
    run.explain_images([image], methods=("mhex",))
  # An image checkpoint without its preprocessing, a model without a classifier.
  bare = tmp_path / "bare"
  bare.mkdir()
  config = json.loads((checkpoints / "vit" / "config.json").read_text())
  (bare / "config.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match="No preprocessor_config.json in"):
    explain_lib.from_pretrained(str(bare))
  (bare / "config.json").write_text(json.dumps({**config, "architectures": ["ViTModel"]}))
  with pytest.raises(UserError, match="ViTModel, which has no classification head"):
    explain_lib.from_pretrained(str(bare))
  (bare / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
  with pytest.raises(UserError, match="model_type='gpt2', which mhex_jax cannot import"):
    explain_lib.from_pretrained(str(bare))


def test_dinov2_is_run_at_its_processors_size(tmp_path):
  """DINOv2 checkpoints say image_size 518 but their processor crops 224: the ViT is built for
  the processor's size, its position embeddings resized as transformers resizes them."""
  torch.manual_seed(0)
  config = transformers.Dinov2Config(
      image_size=56, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
      id2label=IMAGE_CLASSES, label2id={v: k for k, v in IMAGE_CLASSES.items()})
  _decisive(transformers.Dinov2ForImageClassification(config)).save_pretrained(tmp_path)
  processor = transformers.BitImageProcessorPil(size={"shortest_edge": 40},
                                                crop_size={"height": 32, "width": 32})
  processor.save_pretrained(tmp_path)
  run = explain_lib.from_pretrained(str(tmp_path))
  assert run.model.image_size == 32
  images = _images()
  results = run.explain_images(images, methods=("grad_cam",))
  for result, image in zip(results, images):
    assert result.maps["grad_cam"].shape == image.shape[:2]
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    entry = {"predicted": result.predicted, "probability": result.probability}
    _check_prediction(entry, _torch_probabilities(tmp_path, {"pixel_values": pixels})[0])

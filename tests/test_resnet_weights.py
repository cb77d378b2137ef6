"""Pretrained ResNet import (``weights.resnet_import``), checked against PyTorch: Hugging Face
``ResNetForImageClassification`` and a torchvision-layout ResNet written out below (torchvision
itself is not a dependency). Standard width (the only one with pretrained weights), 32 px images.
"""

import json
import re
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import transformers

from configs import default
from conftest import random_variables
from mhex_jax import checkpoints
from mhex_jax import model_lib
from mhex_jax import sharding
from mhex_jax import train_lib
from mhex_jax import weights
from mhex_jax.errors import WeightsError
from mhex_jax.models import resnet

NUM_LABELS = 5
IMAGE = 32
# Bound on |Δ| between PyTorch and flax for O(1) values (feature maps: relative to their largest
# value), float32: the two frameworks sum the convolutions in different orders through up to 50
# layers, about 1e-5 relative; a mapping mistake is off by O(1).
TOLERANCE = 1e-4
BLOCKS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}


def _images(batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, IMAGE, IMAGE, 3)).astype(np.float32)


def _randomise(model):
  """Random BatchNorm affine parameters and running statistics (the init's 1/0, 0/1 would hide a
  scale/mean mix-up). The statistics are first measured on random images, then perturbed, so
  activations stay O(1) through the depth in eval mode; the last BatchNorm of every residual
  branch scales by about 0.3 (small, as in trained ResNets), so the sum of 16 blocks stays O(1)
  too and the logits' absolute tolerance means ~1e-5 relative. Returns the model in eval mode."""
  norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  branch_ends = {id(_branch_end(m)) for m in model.modules() if _branch_end(m) is not None}
  with torch.no_grad():
    for bn in norms:
      scale = 0.3 if id(bn) in branch_ends else 1.0
      bn.weight.copy_(scale * (1 + 0.2 * torch.randn_like(bn.weight)))
      bn.bias.copy_(0.2 * torch.randn_like(bn.bias))
      bn.reset_running_stats()
      bn.momentum = None  # A cumulative average: one batch sets the statistics.
    model.train()
    model(torch.randn(8, 3, IMAGE, IMAGE))
    for bn in norms:
      bn.running_mean.add_(0.2 * bn.running_var.sqrt() * torch.randn_like(bn.running_mean))
      bn.running_var.mul_(0.7 + 0.6 * torch.rand_like(bn.running_var))
  return model.eval()


def _branch_end(block):
  """The last BatchNorm of a residual block's branch (torchvision layout or transformers')."""
  if isinstance(block, (_BasicBlock, _Bottleneck)):
    return block.bn3 if isinstance(block, _Bottleneck) else block.bn2
  if isinstance(block, (transformers.models.resnet.modeling_resnet.ResNetBasicLayer,
                        transformers.models.resnet.modeling_resnet.ResNetBottleNeckLayer)):
    return block.layer[-1].normalization
  return None


# A torchvision-layout ResNet (torchvision.models.resnet, v1.5): the same module names, hence
# the same state_dict keys and shapes.
class _BasicBlock(torch.nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(planes)
    self.conv2 = torch.nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = torch.nn.BatchNorm2d(planes)
    self.downsample = _downsample(inplanes, planes * self.expansion, stride)

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(torch.nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(planes)
    self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here.
    self.bn2 = torch.nn.BatchNorm2d(planes)
    self.conv3 = torch.nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = torch.nn.BatchNorm2d(planes * 4)
    self.downsample = _downsample(inplanes, planes * self.expansion, stride)

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


def _downsample(inplanes, outplanes, stride):
  if stride == 1 and inplanes == outplanes:
    return None
  return torch.nn.Sequential(torch.nn.Conv2d(inplanes, outplanes, 1, stride, bias=False),
                             torch.nn.BatchNorm2d(outplanes))


class _TorchvisionResNet(torch.nn.Module):

  def __init__(self, depth, num_classes):
    super().__init__()
    kind, stage_sizes = BLOCKS[depth]
    block = _BasicBlock if kind == "basic" else _Bottleneck
    self.conv1 = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(64)
    self.relu = torch.nn.ReLU()
    self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
    inplanes = 64
    for stage, blocks in enumerate(stage_sizes):
      planes = 64 * 2**stage
      layers = []
      for i in range(blocks):
        layers.append(block(inplanes, planes, 2 if stage > 0 and i == 0 else 1))
        inplanes = planes * block.expansion
      setattr(self, f"layer{stage + 1}", torch.nn.Sequential(*layers))
    self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
    self.fc = torch.nn.Linear(inplanes, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


# torchvision's resnet18 / resnet50 parameter counts without fc (11,689,512 and 25,557,032 with
# the 1000-class fc): the module above has torchvision's architecture.
TORCHVISION_BACKBONE_PARAMETERS = {18: 11_176_512, 50: 23_508_032}


def _torch_logits(model, images):
  with torch.no_grad():
    return model(torch.tensor(images.transpose(0, 3, 1, 2)))


def _plain(depth, num_classes=NUM_LABELS, **options):
  model = resnet.ResNet(num_classes=num_classes, depth=depth, mhex=False, **options)
  return model, random_variables(model, _images(batch=1))


def _identity_gated(model, images):
  """Random variables of an MHEX ResNet with gate_init="identity", its gates as that init makes
  them (W = 0; running ``model.init`` would compile every initialiser)."""
  assert model.gate_init == "identity"
  variables = random_variables(model, images)
  for block in variables["params"].values():
    if "mhex" in block:
      block["mhex"]["gate"]["kernel"] = jnp.zeros_like(block["mhex"]["gate"]["kernel"])
  return variables


def _load(model, variables, path, **kwargs):
  params, batch_stats, report = weights.load_resnet_params(
      model, variables["params"], variables["batch_stats"], path, **kwargs)
  return {"params": params, "batch_stats": batch_stats}, report


def _forward(model, variables, images):
  """Logits [L, B, K] and the hidden-state collection."""
  return jax.jit(lambda v, x: model.apply(v, x, mutable=["hidden_states"]))(variables, images)


def _stage_outputs(model, state):
  """The stem's output and every stage's output, [B, H, W, C] (HF's hidden_states order)."""
  hidden = state["hidden_states"]
  firsts = np.cumsum((0,) + resnet.STAGE_SIZES[model.depth][:-1])
  return ([hidden[f"block_{i:02d}"][resnet.BLOCK_INPUT][0] for i in firsts] +
          [hidden[resnet.FINAL_FEATURES][0]])


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory):
  """depth → (torch model, .safetensors path, .pth path) of a random torchvision-layout ResNet."""
  files = {}
  for depth in BLOCKS:
    directory = tmp_path_factory.mktemp(f"torchvision{depth}")
    torch.manual_seed(depth)
    model = _randomise(_TorchvisionResNet(depth, NUM_LABELS))
    state = model.state_dict()
    safetensors.torch.save_file(state, directory / "resnet.safetensors")
    torch.save(state, directory / "resnet.pth")
    files[depth] = (model, directory / "resnet.safetensors", directory / "resnet.pth")
  return files


@pytest.mark.parametrize("depth", sorted(BLOCKS))
def test_hugging_face_resnet_matches_transformers(tmp_path, depth):
  kind, stage_sizes = BLOCKS[depth]
  expansion = 4 if kind == "bottleneck" else 1
  torch.manual_seed(depth)
  config = transformers.ResNetConfig(
      embedding_size=64, hidden_sizes=[64 * 2**s * expansion for s in range(4)],
      depths=list(stage_sizes), layer_type=kind, num_labels=NUM_LABELS)
  reference = _randomise(transformers.ResNetForImageClassification(config))
  reference.save_pretrained(tmp_path)
  images = _images()
  with torch.no_grad():
    expected = reference(torch.tensor(images.transpose(0, 3, 1, 2)), output_hidden_states=True)

  model, variables = _plain(depth)
  variables, report = _load(model, variables, tmp_path)
  logits, state = _forward(model, variables, images)
  assert logits.shape == (1, 2, NUM_LABELS)
  assert report["fresh"] == report["unused"] == []
  np.testing.assert_allclose(logits[0], expected.logits.numpy(), rtol=0, atol=TOLERANCE)
  assert np.max(np.abs(expected.logits.numpy())) > 0.1  # Not a trivially small comparison.
  ours = _stage_outputs(model, state)
  assert len(ours) == len(expected.hidden_states) == 5
  for a, b in zip(ours, expected.hidden_states):
    b = b.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE * max(1.0, np.max(np.abs(b))))


@pytest.mark.parametrize("depth", sorted(BLOCKS))
def test_torchvision_state_dicts_match_pytorch(torchvision_files, depth):
  reference, safetensors_file, pth_file = torchvision_files[depth]
  backbone = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
  assert backbone == TORCHVISION_BACKBONE_PARAMETERS[depth]
  images = _images(seed=1)
  expected = _torch_logits(reference, images).numpy()
  model, initial = _plain(depth)
  from_safetensors, report = _load(model, initial, safetensors_file)
  from_pth, _ = _load(model, initial, pth_file)
  jax.tree.map(np.testing.assert_array_equal, from_safetensors, from_pth)
  logits, _ = _forward(model, from_safetensors, images)
  np.testing.assert_allclose(logits[0], expected, rtol=0, atol=TOLERANCE)
  assert report["loaded"].count("params/classifier/kernel") == 1


def test_mhex_resnet_keeps_fresh_gates_and_heads(torchvision_files):
  _, safetensors_file, _ = torchvision_files[18]
  images = _images(seed=2)
  plain, plain_vars = _plain(18)
  plain_vars, plain_report = _load(plain, plain_vars, safetensors_file)
  _, plain_state = _forward(plain, plain_vars, images)

  # gate_init="identity": W = 0 and g = 2σ(0) = 1, so every block computes the plain block.
  model = resnet.ResNet(num_classes=NUM_LABELS, depth=18, gate_init="identity")
  initial = _identity_gated(model, images)
  variables, report = _load(model, initial, safetensors_file)
  assert report["unused"] == ["fc.bias", "fc.weight"]
  assert report["fresh"] == sorted(f"params/block_{i:02d}/mhex/{part}/kernel"
                                   for i in range(8) for part in ("gate", "head"))
  assert sorted(report["loaded"] + ["params/classifier/bias", "params/classifier/kernel"]) == (
      plain_report["loaded"])
  block = variables["params"]["block_05"]["mhex"]
  np.testing.assert_array_equal(block["head"]["kernel"],
                                initial["params"]["block_05"]["mhex"]["head"]["kernel"])
  tensors = safetensors.numpy.load_file(safetensors_file)
  np.testing.assert_array_equal(variables["params"]["block_05"]["conv2"]["kernel"],
                                tensors["layer3.1.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["block_05"]["bn2"]["var"],
                                tensors["layer3.1.bn2.running_var"])

  logits, state = _forward(model, variables, images)
  assert logits.shape == (8, 2, NUM_LABELS)
  # The same operations on the same weights; XLA may fuse them differently (float32 rounding).
  block_input = lambda s, i: s["hidden_states"][f"block_{i:02d}"][resnet.BLOCK_INPUT][0]
  for i in range(8):
    np.testing.assert_allclose(block_input(state, i), block_input(plain_state, i), rtol=1e-5,
                               atol=1e-5)


def test_mhex_resnet_with_a_pooled_classifier_imports_it(torchvision_files):
  reference, safetensors_file, _ = torchvision_files[18]
  images = _images(seed=3)
  model = resnet.ResNet(num_classes=NUM_LABELS, depth=18, gate_init="identity",
                        mhex_stages=(0, 1, 2))
  variables, report = _load(model, _identity_gated(model, images), safetensors_file)
  assert report["unused"] == [] and len(report["fresh"]) == 12
  logits, _ = _forward(model, variables, images)
  np.testing.assert_allclose(logits[-1], _torch_logits(reference, images).numpy(), rtol=0,
                             atol=TOLERANCE)


def test_wrong_class_count_needs_new_head(torchvision_files):
  _, safetensors_file, _ = torchvision_files[18]
  model, initial = _plain(18, num_classes=3)
  with pytest.raises(WeightsError) as error:
    _load(model, initial, safetensors_file)
  message = str(error.value)
  assert ("mis-shaped (2): fc.bias: file (5,), model expects (3,); fc.weight: file (5, 512), "
          "model expects (3, 512)") in message
  assert "classifier has 5 outputs, the model num_classes=3: pass new_head=True" in message
  variables, report = _load(model, initial, safetensors_file, new_head=True)
  assert report["fresh"] == ["params/classifier/bias", "params/classifier/kernel"]
  assert report["unused"] == ["fc.bias", "fc.weight"]
  np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"],
                                initial["params"]["classifier"]["kernel"])


def test_every_bad_tensor_is_listed_in_one_error(torchvision_files, tmp_path):
  _, safetensors_file, _ = torchvision_files[18]
  tensors = safetensors.numpy.load_file(safetensors_file)
  del tensors["layer3.1.bn2.running_var"]
  tensors["layer1.0.conv1.weight"] = tensors["layer1.0.conv1.weight"][:, :, :1]
  tensors["bn1.weight"][[0, 3]] = [np.nan, np.inf]
  tensors["layer2.1.downsample.0.weight"] = np.zeros((128, 128, 1, 1), np.float32)
  broken = tmp_path / "broken.safetensors"
  safetensors.numpy.save_file(tensors, broken)
  model, initial = _plain(18)
  with pytest.raises(WeightsError) as error:
    _load(model, initial, broken)
  message = str(error.value)
  assert "missing (1): layer3.1.bn2.running_var" in message
  assert "unexpected (1): layer2.1.downsample.0.weight" in message
  assert "mis-shaped (1): layer1.0.conv1.weight: file (64, 64, 1, 3), model expects" in message
  assert f"non-finite (1): {broken}: bn1.weight holds 2 non-finite values" in message


def test_truncated_safetensors_is_named(torchvision_files, tmp_path):
  _, safetensors_file, _ = torchvision_files[18]
  truncated = tmp_path / "truncated.safetensors"
  truncated.write_bytes(safetensors_file.read_bytes()[:-1000])
  model, initial = _plain(18)
  with pytest.raises(WeightsError, match=f"{truncated} is not a readable safetensors file "
                     r"\(truncated or corrupt\?\)"):
    _load(model, initial, truncated)


class _NotAStateDict:
  weights = [1.0, 2.0]


def test_pth_of_other_objects_is_not_unpickled(tmp_path):
  path = tmp_path / "model.pth"
  torch.save(_NotAStateDict(), path)
  with pytest.raises(WeightsError, match=f"Refused to unpickle {path}: .*_NotAStateDict"):
    weights.load_resnet_params(resnet.ResNet(num_classes=5, mhex=False), {}, {}, path)
  torch.save({"epoch": 3, "lr": 0.1}, path)  # Unpickles safely, but holds no tensors.
  with pytest.raises(WeightsError, match=r"holds a dict with keys \['epoch', 'lr'\], not a state "
                     r"dict .*save model.state_dict\(\)"):
    weights.load_resnet_params(resnet.ResNet(num_classes=5, mhex=False), {}, {}, path)


def test_pth_without_torch_explains_the_conversion(torchvision_files, monkeypatch):
  _, _, pth_file = torchvision_files[18]
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError.
  with pytest.raises(WeightsError) as error:
    weights.load_resnet_params(resnet.ResNet(num_classes=5, mhex=False), {}, {}, pth_file)
  message = str(error.value)
  assert "torch is not installed here" in message
  assert (f"torch.load('{pth_file}', map_location='cpu', weights_only=True)" in message and
          f"'{pth_file.with_suffix('.safetensors')}')" in message)


@pytest.mark.parametrize("options, match", [
    (dict(width=32), r"width 64; the model has stem='imagenet', width=32"),
    (dict(stem="small"), r"stem='small', width=64: build it with stem='imagenet'"),
    (dict(depth=34), r"holds a ResNet-18; the model is ResNet\(depth=34\): build it with depth=18"),
])
def test_other_resnet_configurations_are_refused(torchvision_files, options, match):
  _, safetensors_file, _ = torchvision_files[18]
  model = resnet.ResNet(num_classes=NUM_LABELS, mhex=False, **options)
  with pytest.raises(WeightsError, match=match):
    weights.load_resnet_params(model, {}, {}, safetensors_file)


@pytest.mark.parametrize("setting, match", [
    ("downsample_in_bottleneck", r"downsample_in_bottleneck=true \(ResNet v1.*use a v1.5"),
    ("downsample_in_first_stage", r"downsample_in_first_stage=true .*first stage has stride 1"),
])
def test_hugging_face_settings_models_resnet_lacks_are_refused(tmp_path, setting, match):
  # Checked before the weights are read: the config alone is enough here.
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "resnet", "layer_type": "bottleneck", setting: True}))
  with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "config.json")) + " sets " +
                     match):
    weights.load_resnet_params(resnet.ResNet(num_classes=5, depth=50), {}, {}, tmp_path)


def test_training_starts_from_a_torchvision_file(torchvision_files, tmp_path):
  """``--config.model_init=FILE`` on a ResNet config: the run's first checkpoint holds the file's
  backbone (a learning rate of 1e-9 leaves it where the import put it), the MHEX gates and
  heads start fresh."""
  config = default.get_config()
  config.num_devices = 1
  config.model.stem, config.model.width = "imagenet", 64
  config.model_init = str(torchvision_files[18][1])
  config.data.image_size, config.data.num_train, config.data.num_eval = IMAGE, 16, 8
  config.train.batch_size, config.train.num_epochs = 8, 1
  config.train.learning_rate, config.train.checkpoint_every_steps = 1e-9, 2
  config.eval.batch_size = 8
  workdir = str(tmp_path / "run")
  assert train_lib.train_and_evaluate(config, workdir)["step"] == 2
  model = model_lib.create_model(config)
  dummy = jnp.zeros((1, IMAGE, IMAGE, 3))
  fresh = jax.jit(model.init)(jax.random.key(0), dummy)
  expected, _, report = weights.load_resnet_params(model, fresh["params"], fresh["batch_stats"],
                                                   config.model_init)
  assert report["fresh"] and all("/mhex/" in path for path in report["fresh"])
  trained = checkpoints.restore_variables(workdir, model, (dummy,),
                                          sharding.replicated(sharding.make_mesh(1)))
  got = flax.traverse_util.flatten_dict(trained["params"], sep="/")
  want = flax.traverse_util.flatten_dict(expected, sep="/")
  loaded = [path.removeprefix("params/") for path in report["loaded"]
            if path.startswith("params/")]
  assert len(loaded) > 40
  for path in loaded:
    np.testing.assert_allclose(got[path], want[path], atol=1e-6, err_msg=path)

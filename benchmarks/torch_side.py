r"""The PyTorch side of the JAX-vs-PyTorch speed comparison (ResNet forward, Grad-CAM, IG).

    python benchmarks/torch_side.py     # the light correctness checks

Plain, importable functions:
  * `resnet(depth, num_classes)`: ResNet-18/34 (BasicBlock) or -50/101/152 (Bottleneck) in
    torchvision's layout (7×7/2 stem + 3×3/2 max-pool, width 64, BatchNorm, stride on the 3×3 conv
    of a bottleneck), random init, eval mode, NCHW input, without importing torchvision. Our JAX
    ResNet with stem="imagenet" has the same layout, so shapes and FLOPs match.
  * `forward`, `captum_layer_grad_cam`, `captum_integrated_gradients`: each builds the model and a
    fixed random batch and returns a zero-argument closure that runs one full call and returns
    when it is done (PyTorch on CPU is synchronous). Grad-CAM is captum's LayerGradCam on
    model.layer4 with ReLU, then LayerAttribution.interpolate (bilinear) to the image size, as our
    maps are at image resolution; IG is captum's IntegratedGradients with a zero baseline.
  * `set_threads(n)`: torch.set_num_threads(n). The thread count is global to the process, so it
    must be applied before each timing: the builders apply their `threads` and record it as
    `fn.threads`. `benchmarks/run.py` (``versus_pytorch``) times every callable at 1 thread and at
    torch's default (`DEFAULT_THREADS`) in the same rounds as the JAX side and keeps the faster.

Never time it while JAX work runs: both sides want the same cores (run.py pauses between them).
"""

from typing import Callable, Optional

import torch
from torch import nn

# torch's thread count before anything here changes it (its default on this machine).
DEFAULT_THREADS = torch.get_num_threads()

_LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
           50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
           152: ("bottleneck", (3, 8, 36, 3))}


def _conv(cin, cout, kernel, stride=1):
  return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, filters, stride):
    super().__init__()
    self.conv1, self.bn1 = _conv(cin, filters, 3, stride), nn.BatchNorm2d(filters)
    self.conv2, self.bn2 = _conv(filters, filters, 3), nn.BatchNorm2d(filters)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = _downsample(cin, filters * self.expansion, stride)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, filters, stride):
    super().__init__()
    out = filters * self.expansion
    self.conv1, self.bn1 = _conv(cin, filters, 1), nn.BatchNorm2d(filters)
    self.conv2, self.bn2 = _conv(filters, filters, 3, stride), nn.BatchNorm2d(filters)
    self.conv3, self.bn3 = _conv(filters, out, 1), nn.BatchNorm2d(out)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = _downsample(cin, out, stride)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def _downsample(cin, cout, stride):
  if stride == 1 and cin == cout:
    return None
  return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


class ResNet(nn.Module):

  def __init__(self, block, layers, num_classes=1000, width=64):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    cin = width
    for stage, blocks in enumerate(layers):
      filters = width * 2**stage
      stage_blocks = []
      for i in range(blocks):
        stage_blocks.append(block(cin, filters, 2 if (i == 0 and stage > 0) else 1))
        cin = filters * block.expansion
      setattr(self, f"layer{stage + 1}", nn.Sequential(*stage_blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(cin, num_classes)
    for m in self.modules():  # torchvision's init.
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(depth: int, num_classes: int = 1000) -> torch.nn.Module:
  """torchvision-layout ResNet of `depth` (18, 34, 50, 101, 152), random init, eval mode."""
  if depth not in _LAYERS:
    raise ValueError(f"depth must be one of {sorted(_LAYERS)}, got {depth}")
  kind, layers = _LAYERS[depth]
  model = ResNet(BasicBlock if kind == "basic" else Bottleneck, layers, num_classes)
  return model.eval()


def set_threads(n: int) -> int:
  """torch.set_num_threads(n); returns the previous count. Apply before each timing."""
  previous = torch.get_num_threads()
  torch.set_num_threads(n)
  return previous


def _setup(depth, batch, image_size, threads, num_classes=1000, seed=0):
  set_threads(threads)
  torch.manual_seed(seed)
  model = resnet(depth, num_classes)
  # Attributions need gradients with respect to inputs or activations only, as on the JAX side.
  model.requires_grad_(False)
  x = torch.randn(batch, 3, image_size, image_size)
  target = torch.arange(batch) % num_classes  # Fixed target classes.
  return model, x, target


def _tag(fn, threads, **info):
  fn.threads = threads
  for k, v in info.items():
    setattr(fn, k, v)
  return fn


def forward(depth: int, batch: int, image_size: int, threads: int = DEFAULT_THREADS) -> Callable:
  """Zero-arg closure: one model(x) under torch.inference_mode(); returns the logits."""
  model, x, _ = _setup(depth, batch, image_size, threads)

  def run():
    with torch.inference_mode():
      return model(x)

  return _tag(run, threads, name="forward")


def captum_layer_grad_cam(depth: int, batch: int, image_size: int,
                          threads: int = DEFAULT_THREADS) -> Callable:
  """Zero-arg closure: LayerGradCam on model.layer4 (ReLU) + bilinear interpolate to H×W.

  Returns maps f32[B, 1, H, W].
  """
  from captum.attr import LayerAttribution, LayerGradCam

  model, x, target = _setup(depth, batch, image_size, threads)
  cam = LayerGradCam(model, model.layer4)

  def run():
    maps = cam.attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(maps, (image_size, image_size), interpolate_mode="bilinear")

  return _tag(run, threads, name="grad_cam")


def captum_integrated_gradients(depth: int, batch: int, image_size: int,
                                threads: int = DEFAULT_THREADS, steps: int = 50,
                                internal_batch_size: Optional[int] = None) -> Callable:
  """Zero-arg closure: IntegratedGradients(n_steps=steps), zero baseline; returns [B, 3, H, W].

  internal_batch_size=None runs all batch*steps interpolated images in one forward/backward.
  """
  from captum.attr import IntegratedGradients

  model, x, target = _setup(depth, batch, image_size, threads)
  ig = IntegratedGradients(model)
  baseline = torch.zeros_like(x)

  def run():
    return ig.attribute(x, baselines=baseline, target=target, n_steps=steps,
                        internal_batch_size=internal_batch_size)

  return _tag(run, threads, name="integrated_gradients", steps=steps)


def check(depth: int = 18, batch: int = 2, image_size: int = 64) -> None:
  """Light correctness checks: parameter counts and attribution shapes."""
  params = {18: 11_689_512, 50: 25_557_032}  # torchvision's resnet18 / resnet50.
  for d, n in params.items():
    got = sum(p.numel() for p in resnet(d).parameters())
    assert got == n, (d, got, n)
  logits = forward(depth, batch, image_size)()
  assert logits.shape == (batch, 1000), logits.shape
  maps = captum_layer_grad_cam(depth, batch, image_size)()
  assert maps.shape == (batch, 1, image_size, image_size), maps.shape
  assert bool((maps >= 0).all()) and bool(torch.isfinite(maps).all())
  attr = captum_integrated_gradients(depth, batch, image_size, steps=4)()
  assert attr.shape == (batch, 3, image_size, image_size), attr.shape
  assert bool(torch.isfinite(attr).all())


if __name__ == "__main__":
  check()
  print("checks passed (param counts; Grad-CAM [B,1,H,W]; IG shape == input)")

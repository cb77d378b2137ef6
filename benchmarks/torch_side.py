r"""The PyTorch side of the JAX-vs-PyTorch speed comparison (ResNet forward, Grad-CAM, IG).

    python benchmarks/torch_side.py     # demo: checks, then measure(18, 8, 112, ig_steps=20)

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
    `fn.threads`, and a caller that times several closures calls `set_threads(fn.threads)` before
    timing each. Time every callable at 1 thread and at torch's default (`DEFAULT_THREADS`, read
    at import: 2 on this 2-core machine) and report the faster setting; `measure` does that.
  * `measure(depth, batch, image_size, ...)`: interleaved rounds (each round times each
    (method, threads) callable once, after 2 untimed warm-up calls each), medians in ms.

Run it in a process of its own, with no JAX work running beside it: both sides want the same cores.
"""

import statistics
import time
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


def _time_once(fn):
  set_threads(fn.threads)
  start = time.perf_counter()
  fn()
  return (time.perf_counter() - start) * 1e3


def measure(depth: int, batch: int, image_size: int, rounds: int = 5, ig_steps: int = 50,
            ig_rounds: Optional[int] = None, warmup: int = 2,
            ig_warmup: Optional[int] = None) -> dict:
  """Medians in ms of forward, Grad-CAM and IG at 1 thread and at DEFAULT_THREADS.

  Rounds are interleaved: each round times every (method, threads) callable once, so load from
  others on the shared machine falls on all of them alike; each callable first gets `warmup`
  untimed calls. IG runs in the first `ig_rounds` rounds only (default: min(rounds, 3)); use a
  small `ig_steps` for a quick run. On this 2-core machine, ResNet-18, batch 8, 112 px, 2 threads,
  one IG call takes ~1.6 s at 20 steps but ~6 s at 50 (worse than linear: with
  internal_batch_size=None all 400 images go through at once), so measure(18, 8, 112) takes
  ~95 s at ig_steps=50 and ~30 s in the demo's quick mode, ig_steps=20. `ig_warmup` defaults to
  `warmup`.

  Returns {"config": {...}, "ms": {method: {threads: median_ms}},
           "faster_threads": {method: threads}, "speedup": {method: slow/fast}}.
  """
  ig_rounds = min(rounds, 3) if ig_rounds is None else min(ig_rounds, rounds)
  ig_warmup = warmup if ig_warmup is None else ig_warmup
  settings = sorted({1, DEFAULT_THREADS})
  builders = {
      "forward": lambda t: forward(depth, batch, image_size, t),
      "grad_cam": lambda t: captum_layer_grad_cam(depth, batch, image_size, t),
      "integrated_gradients": lambda t: captum_integrated_gradients(depth, batch, image_size, t,
                                                                    steps=ig_steps),
  }
  fns = {(m, t): build(t) for m, build in builders.items() for t in settings}
  times = {key: [] for key in fns}
  for (m, _), fn in fns.items():
    for _ in range(ig_warmup if m == "integrated_gradients" else warmup):
      _time_once(fn)
  for r in range(rounds):
    for (m, t), fn in fns.items():
      if m == "integrated_gradients" and r >= ig_rounds:
        continue
      times[(m, t)].append(_time_once(fn))
  set_threads(DEFAULT_THREADS)
  ms = {m: {t: statistics.median(times[(m, t)]) for t in settings} for m in builders}
  faster = {m: min(ms[m], key=ms[m].get) for m in builders}
  speedup = {m: max(ms[m].values()) / min(ms[m].values()) for m in builders}
  return {"config": {"depth": depth, "batch": batch, "image_size": image_size, "rounds": rounds,
                     "ig_rounds": ig_rounds, "ig_steps": ig_steps, "warmup": warmup,
                     "ig_warmup": ig_warmup,
                     "threads": settings, "torch": torch.__version__},
          "ms": ms, "faster_threads": faster, "speedup": speedup}


if __name__ == "__main__":
  check()
  print("checks passed (param counts; Grad-CAM [B,1,H,W]; IG shape == input)")
  result = measure(18, 8, 112, rounds=5, ig_steps=20)  # Quick mode: IG with 20 steps.
  print(result["config"])
  for method, by_threads in result["ms"].items():
    cells = ", ".join(f"{t} thr {v:.1f} ms" for t, v in by_threads.items())
    print(f"{method}: {cells}; faster: {result['faster_threads'][method]} thr "
          f"({result['speedup'][method]:.2f}x)")

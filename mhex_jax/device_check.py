r"""Does mhex_jax compute on this machine's accelerator what it computes on the CPU, and how fast?

    python -m mhex_jax.device_check [--quick] [--json=PATH] [--checks=forward,mhex,...]

On the first device of JAX's default backend (a GPU, a TPU, or the CPU itself), in float32 and
bfloat16: the forward pass, the MHEX maps and one explainer of each other family (Grad-CAM for
the CAM methods, integrated gradients for the input gradients, AttCAT for the Transformer
methods) of a ResNet-18 and a ViT-B/16-sized MHEX model with random weights, and a few SGD
training steps of both (``train_lib.make_train_step``). Every result is compared with the same
computation on the CPU (``jax.devices("cpu")[0]``; on a machine without an accelerator both
sides are the CPU). Then the data-parallel train step (``train_lib.jit_train_step``) on every
local device is compared with the same step on one device. Printed: a markdown table
(docs/install.md, "Checking a device") of the time per call, the map / forward time ratio,
training images/s, peak device memory and compile time of every check, with its error and
bound; the exit status is 1 when a comparison is out of its bound.

The error is relative, in the L2 norm over every output: ||device − CPU|| / ||CPU|| of the
logits or maps; of a training run, the losses, their changes over the steps, the batch
statistics and (float32) the parameters' error over the distance the steps moved them
(``train_errors``). Each is held to the bound of its dtype and kind (``BOUNDS``): values, or
gradients, which jump where a ReLU or max-pool tie is decided the other way by a last-bit
difference. The L2 norm lets such an element count by its share of the output.

``--quick`` shrinks the models (ResNet-18 of width 8 at 32², a 2-layer ViT) for CI: about 40 s
on a 2-core CPU. ``--perturb=EPS`` scales the device side's images by 1 + EPS, a
known difference that the comparisons must catch (its test).
"""

import argparse
import dataclasses
import json
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mhex_jax import devices as devices_lib
from mhex_jax import host_allocator
from mhex_jax import sharding as sharding_lib
from mhex_jax import train_lib
from mhex_jax.explain import registry
from mhex_jax.models import resnet
from mhex_jax.models import vit

# Bounds on the relative error (module docstring), by dtype and by the kind of result: a value
# (logits, MHEX maps, losses, batch statistics) is a continuous function of the roundings, while
# a gradient jumps where a ReLU's input crosses 0 or a max-pool's two largest inputs swap, so a
# last-bit difference at a unit within rounding of such a tie moves the gradient of everything
# it reaches (maps of ~10^6 units have some). A wrong result (a missing term, a transposed
# layout, a sum over the wrong axis) is off by O(1), far above every bound. "Measured" below:
# every check's program compiled at XLA's optimisation levels 3 and 0 on one CPU (which fuse,
# and so round, differently), and bfloat16 against float32, at the --quick sizes and at
# ResNet-18 w32 64² / ViT d192 L6 (batch 8, 4 steps).
#
# float32 values: both sides round every product and sum to 2^-24, but the device sums in
# another order and with other convolution algorithms (cuDNN's Winograd and FFT ones, TPU's
# multi-pass matmuls): ~sqrt(K)·2^-24 ≈ 4e-6 per layer for sums of K ≈ 4,608 terms (3×3×512),
# ~2e-5 after ~20 layers; the bound is 5 times that (measured ≤ 7e-7). The float32 checks run
# at matmul precision "highest" on both sides: at the default, GPUs compute float32 matmuls and
# convolutions in TF32 and TPUs in one bfloat16 pass, whose accuracy is bfloat16's.
# float32 gradients: the values' rounding, and ties: one moved 3% of the pixels of an
# integrated-gradients path point (1.5e-3 on the map), one the data-parallel step's parameters
# by 1.3e-3 of their move (at --quick's width 8 a channel is an eighth of a layer); otherwise
# ≤ 1e-5. Bound 1e-2.
# bfloat16 values: 8 significant bits (2^-9 relative rounding): where the device rounds an
# intermediate that the CPU keeps in float32 (or the reverse) that output moves by up to one
# bfloat16 unit, ~sqrt(20)·2^-9 ≈ 1e-2 after ~20 layers; the bound is 5 times that (measured
# ≤ 5e-3 between compilations, ≤ 7e-3 against float32).
# bfloat16 gradients: ties within 2^-9 are 2^15 times as common as within 2^-24 (measured ≤
# 3.5e-2 between compilations and ≤ 0.10 against float32, both integrated gradients); bound 0.25.
VALUE, GRADIENT = "value", "gradient"
BOUNDS = {("float32", VALUE): 1e-4, ("float32", GRADIENT): 1e-2,
          ("bfloat16", VALUE): 5e-2, ("bfloat16", GRADIENT): 0.25}
PRECISION = {"float32": "highest", "bfloat16": "default"}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# One explainer per family, on the model of each; MHEX and the forward pass on both.
MAP_CHECKS = {"resnet18": ("forward", "mhex", "grad_cam", "integrated_gradients"),
              "vit": ("forward", "mhex", "attcat")}
KINDS = {"forward": VALUE, "mhex": VALUE, "grad_cam": GRADIENT, "integrated_gradients": GRADIENT,
         "attcat": GRADIENT}
CHECKS = ("forward", "mhex", "grad_cam", "integrated_gradients", "attcat", "train",
          "data_parallel")
# SGD with momentum: its updates are linear in the gradients, so the parameters' error
# relative to their move is the gradients' relative error (Adam's g/sqrt(v) would turn a
# rounding difference of a near-zero gradient into a whole step). A small rate keeps the steps
# from amplifying differences (at 0.01 the float32 ResNet's moves differed by 2.5e-2 after 4
# steps; at 0.001 by 5e-6).
LEARNING_RATE = 0.001


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The models and inputs of a run."""
  image_size: int
  batch: int
  num_classes: int
  resnet: dict
  vit: dict
  train_steps: int
  timed_calls: int
  ig_steps: int
  # XLA options of the programs compiled for a CPU (none for a GPU or TPU).
  cpu_compiler_options: Optional[dict] = None

  def label(self, model_name: str) -> str:
    if model_name == "resnet18":
      return "ResNet-18" + ("" if self.resnet["width"] == 64 else f" w{self.resnet['width']}")
    v = self.vit
    if (v["hidden_size"], v["num_layers"], v["patch_size"]) == (768, 12, 16):
      return "ViT-B/16"
    return f"ViT d{v['hidden_size']} L{v['num_layers']} /{v['patch_size']}"


FULL = Sizes(image_size=224, batch=8, num_classes=1000,
             resnet=dict(depth=18, width=64, stem="imagenet"),
             vit=dict(patch_size=16, hidden_size=768, num_layers=12, num_heads=12,
                      intermediate_size=3072),
             train_steps=4, timed_calls=5, ig_steps=8)
QUICK = Sizes(image_size=32, batch=4, num_classes=10,
              resnet=dict(depth=18, width=8, stem="small"),
              vit=dict(patch_size=8, hidden_size=64, num_layers=2, num_heads=4,
                       intermediate_size=128),
              train_steps=3, timed_calls=2, ig_steps=4,
              # As the tests compile (tests/conftest.py): at these sizes compiling is most of
              # the run, and level 0 compiles ~30% faster (same results up to rounding, slower
              # code: --quick's CPU times are not the full run's).
              cpu_compiler_options={"xla_backend_optimization_level": 0,
                                    "xla_llvm_disable_expensive_passes": True})


@dataclasses.dataclass
class Row:
  """One line of the table: the check's speed and its comparison with the CPU, whose largest
  error relative to its bound is ``error`` of ``compared`` (e.g. "maps", "parameters").
  ``passed`` is None for a check that did not run (``note`` says why)."""
  check: str
  model: str
  dtype: str
  ms: Optional[float] = None
  per_forward: Optional[float] = None
  images_per_s: Optional[float] = None
  peak_memory: Optional[int] = None
  compile_s: Optional[float] = None
  compared: str = ""
  error: Optional[float] = None
  bound: Optional[float] = None
  passed: Optional[bool] = None
  note: str = ""

  def judge(self, errors: Sequence[tuple[str, float, float]]) -> "Row":
    """Sets the comparison from (what, error, bound) triples: the one nearest its bound."""
    self.compared, self.error, self.bound = max(errors, key=lambda e: e[1] / e[2])
    self.passed = all(error <= bound for _, error, bound in errors)
    return self


# --- Models, inputs, errors ----------------------------------------------------------------

def build(model_name: str, sizes: Sizes, dtype: str):
  """An MHEX model computing in ``dtype`` (parameters stay float32)."""
  if model_name == "resnet18":
    return resnet.ResNet(num_classes=sizes.num_classes, dtype=DTYPES[dtype], **sizes.resnet)
  return vit.ViT(num_classes=sizes.num_classes, image_size=sizes.image_size,
                 dtype=DTYPES[dtype], **sizes.vit)


def random_variables(model, images: np.ndarray, seed: int = 0) -> dict[str, Any]:
  """{"params", "batch_stats"} of ``model`` as numpy arrays: kernels N(0, 1/fan_in) (variance
  kept through the layers), other parameters 0.02·N(0, 1), normalisation scales 1, running
  means 0 and variances 1. Filled on the host from ``eval_shape``: ``model.init`` would compile
  every initialiser (longer than the checks on a CPU), and both sides get the same values."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(leaf.shape, np.float32)
    if name == "mean":
      return np.zeros(leaf.shape, np.float32)
    if name == "kernel":
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    return (0.02 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(
      fill, {k: v for k, v in shapes.items() if k in ("params", "batch_stats")})


def inputs(sizes: Sizes, batch: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """(images f32[B, H, W, 3] ~ N(0, 1), targets int32[B]), the same on every run."""
  batch = batch or sizes.batch
  rng = np.random.default_rng(1)
  images = rng.normal(size=(batch, sizes.image_size, sizes.image_size, 3)).astype(np.float32)
  return images, (np.arange(batch) % sizes.num_classes).astype(np.int32)


def _norm(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                           for x in jax.tree.leaves(tree))))


def relative_error(got, want, scale=None) -> float:
  """||got − want|| / ||scale|| (default ``want``), L2 over every leaf of the trees."""
  difference = _norm(jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b),
                                  got, want))
  denominator = _norm(want if scale is None else scale)
  return difference / denominator if denominator else difference


def train_errors(got: dict, want: dict, initial_params, dtype: str
                 ) -> list[tuple[str, float, float]]:
  """(what, error, bound) of training runs ``got`` and ``want`` ({"losses", "params",
  "batch_stats"}) from ``initial_params``: the losses and batch statistics (values), the
  losses' changes since the first step (made by the gradients) and, in float32, the parameters'
  error relative to the distance ``want``'s steps moved them.

  Not in bfloat16: there a kernel followed by a batch norm in training mode, whose gradient is
  the difference of nearly equal terms (the norm takes out the mean and the scale), moves by a
  gradient that bfloat16 rounds to ~40% of its size (measured: the ResNet's moves differ by
  0.31 between two CPU compilations and 0.43 against float32); the losses' changes, which the
  moves make, are compared instead.
  """
  losses, want_losses = (np.asarray(r["losses"], np.float64) for r in (got, want))
  errors = [("losses", relative_error(losses, want_losses), BOUNDS[dtype, VALUE]),
            ("loss changes", relative_error(losses[1:] - losses[0],
                                            want_losses[1:] - want_losses[0]),
             BOUNDS[dtype, GRADIENT])]
  if jax.tree.leaves(want["batch_stats"]):
    errors.append(("batch stats", relative_error(got["batch_stats"], want["batch_stats"]),
                   BOUNDS[dtype, VALUE]))
  if dtype == "float32":
    move = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, want["params"],
                        initial_params)
    errors.append(("parameters", relative_error(got["params"], want["params"], move),
                   BOUNDS[dtype, GRADIENT]))
  return errors


def _peak_memory(devices: Sequence[jax.Device]) -> Optional[int]:
  """The largest ``peak_bytes_in_use`` of ``devices`` so far, or None (the CPU)."""
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except  # Backends without the query raise.
      stats = {}
    if "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return max(peaks) if peaks else None


def _lower(fn: Callable, args: tuple, dtype: str, **jit_options):
  with jax.default_matmul_precision(PRECISION[dtype]):
    return jax.jit(fn, **jit_options).lower(*args)


def _compile(lowered, device: jax.Device, sizes: Sizes) -> tuple[Any, float]:
  """(the program compiled for ``device``, the seconds XLA took)."""
  options = sizes.cpu_compiler_options if device.platform == "cpu" else None
  start = time.perf_counter()
  compiled = lowered.compile(options)
  return compiled, time.perf_counter() - start


def _call(compiled, args) -> tuple[Any, float]:
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return out, time.perf_counter() - start


def _perturbed(images: np.ndarray, perturb: float) -> np.ndarray:
  return images * np.float32(1 + perturb)


# --- The checks ----------------------------------------------------------------------------

def _map_function(check: str, model, sizes: Sizes) -> Callable:
  """``(variables, images, targets) -> outputs``: all heads' logits, or the check's maps."""
  if check == "forward":
    return lambda variables, images, targets: model.apply(variables, images, train=False)
  options = {"steps": sizes.ig_steps} if check == "integrated_gradients" else {}
  return registry.explainer(check, model, **options)


def map_rows(model_name: str, dtype: str, sizes: Sizes, checks: Sequence[str],
             device: jax.Device, reference: jax.Device, perturb: float) -> list[Row]:
  """The forward pass and maps of one model in one dtype: compiled for ``device`` and run
  there (timed in interleaved rounds, so a noisy machine slows them alike), then compared with
  the same computation on ``reference``."""
  model = build(model_name, sizes, dtype)
  images, targets = inputs(sizes)
  variables = random_variables(model, images[:1])
  device_args = jax.device_put((variables, _perturbed(images, perturb), targets), device)
  reference_args = jax.device_put((variables, images, targets), reference)
  names = [c for c in MAP_CHECKS[model_name] if c in checks or c == "forward"]
  rows, compiled, outputs = {}, {}, {}
  for check in names:
    fn = _map_function(check, model, sizes)
    compiled[check], compile_s = _compile(_lower(fn, device_args, dtype), device, sizes)
    outputs[check], _ = _call(compiled[check], device_args)  # The compared call, untimed.
    rows[check] = Row(check, sizes.label(model_name), dtype, compile_s=compile_s)
  times = {check: [] for check in names}
  for _ in range(sizes.timed_calls):
    for check in names:
      times[check].append(_call(compiled[check], device_args)[1])
  peak = _peak_memory([device])
  for check in names:
    row = rows[check]
    row.ms, row.peak_memory = 1e3 * statistics.median(times[check]), peak
    if check != "forward":
      row.per_forward = statistics.median(t / f for t, f in zip(times[check], times["forward"]))
    program = compiled[check] if reference == device else _compile(
        _lower(_map_function(check, model, sizes), reference_args, dtype), reference, sizes)[0]
    want, _ = _call(program, reference_args)
    error = relative_error(jax.device_get(outputs[check]), jax.device_get(want))
    row.judge([("logits" if check == "forward" else "maps", error, BOUNDS[dtype, KINDS[check]])])
  return [rows[c] for c in names if c in checks]


def _train_setup(model_name: str, dtype: str, sizes: Sizes, batch: int):
  """(train step, initial TrainState and batch as numpy) for a model in ``dtype``."""
  model = build(model_name, sizes, dtype)
  images, labels = inputs(sizes, batch)
  variables = random_variables(model, images[:1])
  optimizer = optax.sgd(LEARNING_RATE, momentum=0.9)
  num_heads = jax.eval_shape(lambda v: model.apply(v, images[:1]), variables).shape[0]
  step = train_lib.make_train_step(model, optimizer, np.ones((num_heads,), np.float32))
  state = train_lib.TrainState(
      step=np.zeros((), np.int32), params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      opt_state=jax.device_get(jax.jit(optimizer.init)(variables["params"])))
  return step, state, {"image": images, "label": labels}


def _train(compiled, state, batch, steps: int) -> tuple[dict, list[float]]:
  """``steps`` steps from ``state``: ({"losses", "params", "batch_stats"} on the host, the
  seconds of each step)."""
  losses, seconds = [], []
  for _ in range(steps):
    (state, metrics), elapsed = _call(compiled, (state, batch))
    losses.append(metrics["loss"])
    seconds.append(elapsed)
  result = jax.device_get({"losses": losses, "params": state.params,
                           "batch_stats": state.batch_stats})
  return result, seconds


def _train_row(check: str, model: str, dtype: str, batch_size: int, compile_s: float,
               seconds: list[float], errors, devices: Sequence[jax.Device]) -> Row:
  step = statistics.median(seconds[1:] or seconds)  # The first step may still warm up.
  return Row(check, model, dtype, ms=1e3 * step, images_per_s=batch_size / step,
             peak_memory=_peak_memory(devices), compile_s=compile_s).judge(errors)


def train_row(model_name: str, dtype: str, sizes: Sizes, device: jax.Device,
              reference: jax.Device, perturb: float) -> Row:
  """``sizes.train_steps`` SGD steps on ``device`` against the same steps on ``reference``."""
  step, state, batch = _train_setup(model_name, dtype, sizes, sizes.batch)
  args = jax.device_put((state, {**batch, "image": _perturbed(batch["image"], perturb)}),
                        device)
  compiled, compile_s = _compile(_lower(step, args, dtype, donate_argnums=0), device, sizes)
  got, seconds = _train(compiled, *args, sizes.train_steps)
  reference_args = jax.device_put((state, batch), reference)
  if reference != device:
    compiled = _compile(_lower(step, reference_args, dtype, donate_argnums=0), reference,
                        sizes)[0]
  want, _ = _train(compiled, *reference_args, sizes.train_steps)
  return _train_row("train", sizes.label(model_name), dtype, sizes.batch, compile_s, seconds,
                    train_errors(got, want, state.params, dtype), [device])


def data_parallel_row(sizes: Sizes, perturb: float) -> Row:
  """The data-parallel train step (``train_lib.jit_train_step``: state replicated, batch split)
  on every local device against the same step on one device (ResNet-18, float32: its batch
  norms' statistics and the gradient mean are sums across devices)."""
  count, dtype, label = jax.local_device_count(), "float32", sizes.label("resnet18")
  check = f"data_parallel ({count} vs 1 device)"
  if count == 1 or jax.process_count() > 1:
    return Row(check, label, dtype, note=f"skipped: {count} local device(s) in "
               f"{jax.process_count()} process(es); it needs one process with several")
  batch_size = -(-sizes.batch // count) * count  # The batch splits evenly.
  step, state, batch = _train_setup("resnet18", dtype, sizes, batch_size)
  results = {}
  for n in (count, 1):
    mesh = sharding_lib.make_mesh(n)
    images = _perturbed(batch["image"], perturb if n > 1 else 0.0)
    args = (sharding_lib.replicate(state, mesh),
            sharding_lib.shard_batch({**batch, "image": images}, mesh))
    with jax.default_matmul_precision(PRECISION[dtype]):
      lowered = train_lib.jit_train_step(step, mesh).lower(*args)
    compiled, compile_s = _compile(lowered, mesh.devices.flat[0], sizes)
    results[n] = (compile_s, *_train(compiled, *args, sizes.train_steps))
  compile_s, got, seconds = results[count]
  return _train_row(check, label, dtype, batch_size, compile_s, seconds,
                    train_errors(got, results[1][1], state.params, dtype), jax.local_devices())


def reference_device() -> jax.Device:
  """The CPU the results are compared with."""
  try:
    return jax.devices("cpu")[0]
  except RuntimeError as error:
    raise RuntimeError(f"The CPU reference needs JAX's cpu platform ({error}): add it, e.g. "
                       "JAX_PLATFORMS=cuda,cpu, or unset JAX_PLATFORMS.") from None


def run(sizes: Sizes, checks: Sequence[str] = CHECKS, perturb: float = 0.0,
        progress: Callable[[Row], None] = lambda row: None) -> list[Row]:
  """Every check in ``checks`` on this process' first device of JAX's default backend against
  the CPU, as table rows."""
  device, reference = jax.local_devices()[0], reference_device()
  rows = []

  def add(row):
    rows.append(row)
    progress(row)

  for model_name, map_checks in MAP_CHECKS.items():
    if set(map_checks) & set(checks):
      for dtype in DTYPES:
        for row in map_rows(model_name, dtype, sizes, checks, device, reference, perturb):
          add(row)
  if "train" in checks:
    for model_name in MAP_CHECKS:
      for dtype in DTYPES:
        add(train_row(model_name, dtype, sizes, device, reference, perturb))
  if "data_parallel" in checks:
    add(data_parallel_row(sizes, perturb))
  return rows


# --- Output ---------------------------------------------------------------------------------

HEADER = ("| check | model | dtype | ms/call | ÷ forward | train img/s | peak memory | compile s "
          "| error | of | bound | result |\n"
          "|---|---|---|--:|--:|--:|--:|--:|--:|---|--:|---|")


def _memory(num_bytes: Optional[int]) -> str:
  if num_bytes is None:
    return "n/a"
  return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.0f} MiB"


def _number(value: Optional[float], spec: str) -> str:
  return "" if value is None else format(value, spec)


def table_row(row: Row) -> str:
  if row.passed is None:
    return (f"| {row.check} | {row.model} | {row.dtype} |  |  |  |  |  |  |  |  | "
            f"{row.note} |")
  error = "0" if row.error == 0 else f"{row.error:.1e}"
  return (f"| {row.check} | {row.model} | {row.dtype} | {row.ms:.2f} | "
          f"{_number(row.per_forward, '.2f')} | {_number(row.images_per_s, '.1f')} | "
          f"{_memory(row.peak_memory)} | {row.compile_s:.2f} | {error} | {row.compared} | "
          f"{row.bound:g} | {'ok' if row.passed else 'FAIL'} |")


def summary(rows: Sequence[Row], seconds: float) -> str:
  ran = [r for r in rows if r.passed is not None]
  failed = [f"{r.check} {r.model} {r.dtype}" for r in ran if not r.passed]
  skipped = len(rows) - len(ran)
  tail = f" ({skipped} skipped)" if skipped else ""
  if failed:
    return (f"FAILED: {len(failed)} of {len(ran)} checks out of their bounds{tail}: "
            f"{'; '.join(failed)}. Total {seconds:.0f} s.")
  return f"All {len(ran)} checks within their bounds{tail}. Total {seconds:.0f} s."


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the checks and prints the table; 0 when every comparison holds, else 1."""
  parser = argparse.ArgumentParser(prog="python -m mhex_jax.device_check",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="Small models and images (CI: about 40 s on a 2-core CPU).")
  parser.add_argument("--json", metavar="PATH", help="Also write the results as JSON here.")
  parser.add_argument("--checks", default=",".join(CHECKS),
                      help=f"Comma-separated subset of {','.join(CHECKS)}.")
  parser.add_argument("--perturb", type=float, default=0.0, metavar="EPS",
                      help="Scale the device side's images by 1 + EPS: a known difference, to "
                      "see a comparison fail.")
  args = parser.parse_args(argv)
  checks = tuple(c for c in args.checks.split(",") if c)
  unknown = sorted(set(checks) - set(CHECKS))
  if unknown:
    parser.error(f"--checks={args.checks}: unknown {unknown}; use names of {','.join(CHECKS)}.")
  # Compile times are XLA's own: no programs read back from a persistent cache.
  jax.config.update("jax_enable_compilation_cache", False)
  host_allocator.keep_large_buffers()
  sizes = QUICK if args.quick else FULL
  started = time.perf_counter()
  print(f"mhex_jax device check{' --quick' if args.quick else ''}: {devices_lib.describe()}")
  warning = devices_lib.accelerator_warning()
  if warning:
    print(f"Warning: {warning}")
  bounds = ", ".join(f"{dtype} {kind}s {bound:g}" for (dtype, kind), bound in BOUNDS.items())
  print(f"Against {reference_device()}: batch {sizes.batch}, {sizes.image_size}² images, "
        f"{sizes.train_steps} SGD steps, integrated gradients in {sizes.ig_steps} steps; "
        f"float32 at matmul precision \"highest\". Bounds on ||device − CPU|| / ||CPU||: "
        f"{bounds}." + (f" The device's images are scaled by 1 + {args.perturb:g} (--perturb)."
                        if args.perturb else "") + "\n")
  print(HEADER, flush=True)
  rows = run(sizes, checks, args.perturb, progress=lambda row: print(table_row(row), flush=True))
  seconds = time.perf_counter() - started
  print("\n" + summary(rows, seconds))
  passed = all(r.passed is not False for r in rows)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"device": devices_lib.describe(), "warning": warning, "quick": args.quick,
                 "sizes": dataclasses.asdict(sizes),
                 "bounds": {f"{dtype} {kind}": b for (dtype, kind), b in BOUNDS.items()},
                 "precision": PRECISION, "perturb": args.perturb, "seconds": seconds,
                 "passed": passed, "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)
  return 0 if passed else 1


if __name__ == "__main__":
  sys.exit(main())

"""Test-session setup: 8 virtual CPU devices so data-parallel code is exercised, and a
persistent compilation cache for the session."""
import atexit
import os
import shutil
import tempfile

# The tests' programs are tiny and each compiles once, so compile time dominates: XLA's CPU
# backend at optimisation level 0 without the expensive LLVM passes compiles about 30% faster
# (the same results to float rounding; one test of many explainers: 71 s -> 50 s). Commands
# the tests start in subprocesses get the same flags (``xla_flags``).
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"

# XLA flags the caller set are kept, for the session and every command it starts: e.g.
# ``XLA_FLAGS=--xla_cpu_max_isa=AVX2 make test`` runs the whole suite with AVX2 kernels only,
# as on a CPU without AVX-512. (The tests' own flags are dropped from what is read here, so
# pytest-xdist's workers, which inherit the controller's XLA_FLAGS, read the caller's alone.)
USER_XLA_FLAGS = " ".join(
    flag for flag in os.environ.get("XLA_FLAGS", "").split()
    if flag not in FAST_COMPILE_FLAGS.split() and not flag.startswith(_DEVICE_COUNT_FLAG))


def xla_flags(num_devices=None, fast_compile=True):
  """XLA_FLAGS for a subprocess: the caller's flags (``USER_XLA_FLAGS``), the fast-compile
  flags unless ``fast_compile`` is False and, given, NUM_DEVICES CPU devices."""
  flags = [USER_XLA_FLAGS, FAST_COMPILE_FLAGS if fast_compile else "",
           f"{_DEVICE_COUNT_FLAG}={num_devices}" if num_devices else ""]
  return " ".join(f for f in flags if f)


os.environ["XLA_FLAGS"] = xla_flags(8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session (and the commands its tests start): the
# tests compile the same tiny programs many times. New for every session, so nothing carries
# over between runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mhex_jax_tests_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Every program, however quick to compile: the two workers and the commands the tests start
# build the same tiny models, whose eager ops (tens of ms each to compile) recur from file to
# file (six model files: 92 s -> 84 s, means of four runs each, on a 2-core Xeon).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # After XLA_FLAGS: jax reads them at import.
import jax.numpy as jnp
import numpy as np


def random_variables(model, images):
  """Random {"params", "batch_stats"} filled with numpy from the shapes of ``model.init``
  (running init itself compiles every initialiser: far slower on CPU than these tests)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape)
    if name == "mean":
      return jnp.zeros(leaf.shape)
    if name == "kernel":  # He scaling keeps the activations O(1) through the depth.
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in), jnp.float32)
    return jnp.asarray(0.1 * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(
      fill, {k: v for k, v in shapes.items() if k in ("params", "batch_stats")})


def bilinear_resize(maps, size):
  """[B, h, w] → [B, H, W]: half-pixel centres, edge samples clamped (align_corners=False)."""
  def matrix(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), low] += 1 - (src - low)
    m[np.arange(n_out), high] += src - low
    return m
  return np.einsum("Hh,bhw,Ww->bHW", matrix(maps.shape[1], size[0]), maps,
                   matrix(maps.shape[2], size[1]))


def randomise_torch_model(model):
  """Moves every weight of a PyTorch model off its default init (LayerNorm 1/0 would hide
  scale/bias mix-ups in weight import); returns it in eval mode."""
  import torch  # Only the parity tests need torch.
  torch.manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def max_abs_diffs(ours, theirs):
  """Max |ours − theirs| per pair of (JAX array, torch tensor)."""
  return [float(np.max(np.abs(np.asarray(a) - b.numpy()))) for a, b in zip(ours, theirs)]


def mhex_calls(model, variables, *inputs):
  """((args, kwargs) of every MHEX module call of one forward pass, in call order,
  (logits, {"mhex": the sown features})) of ``model.apply(variables, *inputs)``."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from mhex_jax.models import mhex as mhex_lib  # pylint: disable=g-import-not-at-top
  calls = []

  def record(next_fn, args, kwargs, context):
    if isinstance(context.module, mhex_lib.MHEX):
      calls.append((args, kwargs))
    return next_fn(*args, **kwargs)

  with nn.intercept_methods(record):
    out = model.apply(variables, *inputs, mutable=["mhex"])
  return calls, out

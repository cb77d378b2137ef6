r"""Time to the first training step and to the first MHEX map, compiled anew and read back from
the persistent compilation cache; and the memory of the MHEX map program against the forward's.

    python -m benchmarks.startup [--quick] [--out=benchmarks/results] [--repeats=1]

Writes OUT/startup.json (the rows, the machine, its load) and OUT/startup.md (the tables).

  * Startup (``startup_rows``): ResNet-50 (224², width 64, float32, as ``benchmarks/run.py``
    builds it) and ViT-B/16 (the model of ``configs/vit_imagenet.py``: 224², bfloat16), 1000
    classes. Each figure is a fresh process, timed from its launch: to the end of the first
    training step (what ``train.py`` does before its loop: the config's optimiser, the jitted
    ``train_lib.create_train_state``, the data-parallel step on a batch of ``--batch``), and to
    the first MHEX map (build, jitted ``model.init``, the map of the predicted class). Cold: an
    empty cache directory (``mhex_jax.compile_cache``, as the entry points turn it on); warm: a
    second process on the directory the first filled. Row ratio: warm / cold. The programs read
    back and compiled are counted through ``jax.monitoring``.
  * Memory (``memory_rows``): XLA's memory analysis of the compiled MHEX map (given classes and
    the predicted class) against the forward pass (the final head's logits), at batch 8 and 64;
    nothing runs. Row ratio: the map's temporaries / the forward's. The target is ≤ 1.1.

Seconds depend on the machine and on whatever else it runs (the load average is recorded);
the byte counts do not. ``--quick`` (about 30 s on a 2-core CPU, most of it compiling the
initialiser) times the first map of a width-16 ResNet-18 at 32 px, and measures its memory and
that of the tiny ViT of ``configs/vit_imagenet.py:quick`` at batch 2.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# The child processes time their own imports: nothing heavy is imported at the top.

MEMORY_TARGET = 1.1
PHASES = ("train", "map")
_PHASE_LABELS = {"train": "first train step", "map": "first MHEX map"}
_MARKER = "STARTUP_RESULT "


def model_config(name: str):
  """The config of benchmark model ``name``: resnet50, vit_b16 (its bfloat16 config) or
  vit_b16_f32; resnet18_tiny and vit_tiny for ``--quick`` and the tests."""
  from configs import resnet18_imagenet  # pylint: disable=g-import-not-at-top
  from configs import vit_imagenet  # pylint: disable=g-import-not-at-top
  if name == "resnet50":
    config = resnet18_imagenet.get_config()
    config.model_name = "resnet50"
    config.model.last_stage_stride = 2  # As run.build and the published ResNet-50.
    config.model.dtype = "float32"
  elif name in ("vit_b16", "vit_b16_f32"):
    config = vit_imagenet.get_config()
    if name == "vit_b16_f32":
      config.model.dtype = "float32"
  elif name == "resnet18_tiny":
    config = resnet18_imagenet.get_config("quick")
  elif name == "vit_tiny":
    config = vit_imagenet.get_config("quick")
  else:
    raise ValueError(f"Unknown startup benchmark model {name!r}; use resnet50, vit_b16, "
                     "vit_b16_f32, resnet18_tiny or vit_tiny.")
  if name in ("resnet50", "vit_b16", "vit_b16_f32"):
    config.model.num_classes = 1000
  return config


def _image_size(config) -> int:
  return config.data.image_size


def describe(name: str) -> str:
  config = model_config(name)
  size = _image_size(config)
  return f"{name}, {size}², {config.model.dtype}"


# --- The child process: one phase, timed from the parent's launch. ---------------------------

class _CompileClock:
  """Programs handed to XLA (compiled or read back) and the seconds spent tracing, lowering and
  in XLA, from ``jax.monitoring``'s duration events."""
  EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
            "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
            "/jax/core/compile/backend_compile_duration": "xla_s"}

  def __init__(self):
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    self.seconds = {key: 0.0 for key in self.EVENTS.values()}
    self.programs = 0
    monitoring.register_event_duration_secs_listener(self._record)

  def _record(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    key = self.EVENTS.get(event)
    if key is not None:
      self.seconds[key] += duration
      self.programs += key == "xla_s"


def _first_train_step(name: str, batch: int, since) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mhex_jax import model_lib  # pylint: disable=g-import-not-at-top
  from mhex_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from mhex_jax import tasks  # pylint: disable=g-import-not-at-top
  from mhex_jax import train_lib  # pylint: disable=g-import-not-at-top
  marks = {"imports_s": since()}
  config = model_config(name)
  mesh = sharding_lib.make_mesh(config.get("num_devices"))
  model = model_lib.create_model(config)
  task = tasks.task_of(model)
  weights = train_lib.head_weights(config.train, tasks.head_count(model, config.data))
  optimizer = train_lib.create_optimizer(config.train, steps_per_epoch=1000)
  state = train_lib.create_train_state(model, optimizer, task.dummy_inputs(config.data),
                                       config.seed)
  step = train_lib.jit_train_step(train_lib.make_train_step(
      model, optimizer, weights, config.train.label_smoothing, config.seed), mesh)
  state = sharding_lib.replicate(state, mesh)
  jax.block_until_ready(state)
  marks["state_s"] = since()
  size = _image_size(config)
  rng = np.random.default_rng(0)
  arrays = {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
            "label": (np.arange(batch) % config.model.num_classes).astype(np.int32)}
  state, metrics = step(state, sharding_lib.shard_batch(arrays, mesh))
  jax.block_until_ready((state, metrics))
  marks["done_s"] = since()
  return marks


def _first_map(name: str, batch: int, since) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mhex_jax import model_lib  # pylint: disable=g-import-not-at-top
  from mhex_jax import tasks  # pylint: disable=g-import-not-at-top
  from mhex_jax.explain import registry  # pylint: disable=g-import-not-at-top
  marks = {"imports_s": since()}
  config = model_config(name)
  model = model_lib.create_model(config)
  dummy = tasks.task_of(model).dummy_inputs(config.data)
  variables = jax.jit(model.init)(jax.random.key(config.seed), *dummy)
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  jax.block_until_ready(variables)
  marks["state_s"] = since()
  size = _image_size(config)
  images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
  maps = jax.jit(registry.explainer("mhex", model))(variables, images, None)
  jax.block_until_ready(maps)
  marks["done_s"] = since()
  return marks


def _child(phase: str, name: str, batch: int, cache_dir: str, launched: float) -> None:
  """Runs one phase in this (fresh) process and prints its figures as one JSON line."""
  since = lambda: time.time() - launched
  from mhex_jax import compile_cache  # pylint: disable=g-import-not-at-top
  from mhex_jax import host_allocator  # pylint: disable=g-import-not-at-top
  stats = compile_cache.enable(cache_dir)  # As the entry points do, before anything compiles.
  host_allocator.keep_large_buffers()
  clock = _CompileClock()
  marks = (_first_train_step if phase == "train" else _first_map)(name, batch, since)
  print(_MARKER + json.dumps({**marks, "programs": clock.programs,
                              "read_back": stats.hits, "compiled": stats.compiled,
                              **{k: round(v, 3) for k, v in clock.seconds.items()}}),
        flush=True)


def run_phase(phase: str, name: str, batch: int, cache_dir: str, timeout: float = 3600) -> dict:
  """One fresh process running ``phase`` ("train" or "map") of model ``name`` with its
  persistent cache in ``cache_dir``: {imports_s, state_s, done_s (seconds from launch),
  programs (handed to XLA), read_back, compiled, trace_s, lower_s, xla_s}."""
  if phase not in PHASES:
    raise ValueError(f"Unknown phase {phase!r}; use one of {PHASES}.")
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "MHEX_JAX_CACHE_DIR")}
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  argv = [sys.executable, "-m", "benchmarks.startup", f"--phase={phase}", f"--model={name}",
          f"--batch={batch}", f"--cache_dir={cache_dir}"]
  launched = time.time()
  process = subprocess.run(argv + [f"--launched={launched!r}"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
  lines = [l for l in process.stdout.splitlines() if l.startswith(_MARKER)]
  if process.returncode or not lines:
    raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}):\n"
                       f"{process.stderr[-4000:]}")
  return json.loads(lines[-1][len(_MARKER):])


# --- The parent: rows in the format of benchmarks/run.py. ------------------------------------

def _startup_row(name: str, batch: int, phase: str, colds: list[dict], warms: list[dict]):
  from benchmarks import run as run_lib  # pylint: disable=g-import-not-at-top
  label = _PHASE_LABELS[phase]
  warm, cold = f"{label}, warm cache", f"{label}, cold"
  times = {warm: [w["done_s"] for w in warms], cold: [c["done_s"] for c in colds]}
  row = run_lib._row  # pylint: disable=protected-access
  return row("startup: warm / cold cache", f"{describe(name)}, batch {batch}", times, warm, cold,
             phase=phase, cold=colds, warm=warms)


def startup_rows(models=("resnet50", "vit_b16"), batch: int = 8, repeats: int = 1,
                 phases=PHASES) -> list[dict]:
  """Per model and phase, a row: warm-cache / cold seconds from launch to the first train step
  or map (median, min and max over ``repeats``, each with its own fresh cache directory),
  ``median_ms``/``baseline_ms`` the warm and cold medians, and every run's figures under
  "cold" and "warm" (``run_phase``)."""
  rows = []
  for name in models:
    for phase in phases:
      colds, warms = [], []
      for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="mhex_startup_cache_") as cache_dir:
          colds.append(run_phase(phase, name, batch, cache_dir))
          warms.append(run_phase(phase, name, batch, cache_dir))
      rows.append(_startup_row(name, batch, phase, colds, warms))
  return rows


def _memory(fn, *args) -> dict:
  """XLA's memory analysis of ``jit(fn)`` compiled for ``args`` (shapes), and the seconds to
  lower and compile it."""
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  stats = jax.jit(fn).lower(*args).compile().memory_analysis()
  return {"temp_bytes": stats.temp_size_in_bytes,
          "argument_bytes": stats.argument_size_in_bytes,
          "output_bytes": stats.output_size_in_bytes,
          "alias_bytes": stats.alias_size_in_bytes,
          "compile_s": time.perf_counter() - start}


def memory_rows(models=("resnet50", "vit_b16"), batches=(8, 64)) -> list[dict]:
  """Per model and batch, a row for the MHEX map of given classes and one for the predicted
  class: ratio (median = min = max) = the map's XLA temporaries / the forward's, with both
  programs' bytes (temp, argument, output) under "map" and "forward". ``median_ms`` and
  ``baseline_ms`` are the milliseconds to lower and compile each program (no program runs;
  the variables are shapes only)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mhex_jax import model_lib  # pylint: disable=g-import-not-at-top
  from mhex_jax import tasks  # pylint: disable=g-import-not-at-top
  from mhex_jax.explain import attribution  # pylint: disable=g-import-not-at-top
  from mhex_jax.explain import registry  # pylint: disable=g-import-not-at-top
  rows = []
  for name in models:
    config = model_config(name)
    model = model_lib.create_model(config)
    dummy = tasks.task_of(model).dummy_inputs(config.data)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *dummy)
    variables = {k: v for k, v in shapes.items() if k in ("params", "batch_stats")}
    mhex = registry.explainer("mhex", model)
    forward = lambda v, x, m=model: attribution.final_logits(m.apply(v, x, train=False))
    size = _image_size(config)
    for batch in batches:
      images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
      targets = jax.ShapeDtypeStruct((batch,), jnp.int32)
      base = _memory(forward, variables, images)
      maps = {"mhex": _memory(mhex, variables, images, targets),
              "mhex, predicted class": _memory(lambda v, x, f=mhex: f(v, x, None), variables,
                                               images)}
      for method, stats in maps.items():
        ratio = stats["temp_bytes"] / base["temp_bytes"]
        rows.append({"group": "MHEX map / forward: XLA temporaries",
                     "case": f"{describe(name)}, batch {batch}", "method": method,
                     "baseline": "forward", "median": ratio, "min": ratio, "max": ratio,
                     "rounds": 1, "median_ms": 1e3 * stats["compile_s"],
                     "baseline_ms": 1e3 * base["compile_s"], "ms": "lower + compile",
                     "target": MEMORY_TARGET, "within_target": ratio <= MEMORY_TARGET,
                     "map": stats, "forward": base})
  return rows


def _mib(n: int) -> str:
  return f"{n / 2**20:.1f}"


def markdown(results) -> str:
  machine = results["machine"]
  lines = [f"Measured on {machine['processor']} ({machine['cpus']} CPUs), jax {machine['jax']}; "
           f"load average {results['load_before']} before, {results['load_after']} after "
           "(the machine ran other jobs: seconds are indicative, byte counts are exact).", "",
           "Seconds from launching a fresh process to the end of its first train step or map "
           f"(median of {results['repeats']}), with an empty persistent compilation cache "
           "(cold) and with the cache the cold process filled (warm). In brackets: when the "
           "model state was ready (train state or initialised variables). Programs: handed to "
           "XLA (compiled, read back); XLA s: compiling or reading them back. The other "
           "columns are the first repeat's.", "",
           "| case | until | cold s (state) | warm s (state) | warm / cold | cold programs | "
           "warm programs | cold XLA s | warm XLA s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    if r["group"].startswith("startup"):
      cold, warm = r["cold"][0], r["warm"][0]
      lines.append(
          f"| {r['case']} | {_PHASE_LABELS[r['phase']]} | {r['baseline_ms'] / 1e3:.1f} "
          f"({cold['state_s']:.1f}) | {r['median_ms'] / 1e3:.1f} ({warm['state_s']:.1f}) | "
          f"{r['median']:.2f} | {cold['programs']} ({cold['compiled']}, {cold['read_back']}) | "
          f"{warm['programs']} ({warm['compiled']}, {warm['read_back']}) | "
          f"{cold['xla_s']:.1f} | {warm['xla_s']:.1f} |")
  lines += ["", "XLA's memory analysis of the compiled programs (nothing runs): temporaries of "
            "the MHEX map / the forward's (target ≤ 1.1); MiB.", "",
            "| case | map | map temp | forward temp | ratio | ≤ 1.1 | map args | forward args | "
            "map out | compile s (map, forward) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    if r["group"].startswith("MHEX map"):
      m, f = r["map"], r["forward"]
      lines.append(f"| {r['case']} | {r['method']} | {_mib(m['temp_bytes'])} | "
                   f"{_mib(f['temp_bytes'])} | {r['median']:.3f} | "
                   f"{'yes' if r['within_target'] else 'no'} | {_mib(m['argument_bytes'])} | "
                   f"{_mib(f['argument_bytes'])} | {_mib(m['output_bytes'])} | "
                   f"{m['compile_s']:.1f}, {f['compile_s']:.1f} |")
  for note in results.get("notes", []):
    lines += ["", note]
  return "\n".join(lines) + "\n"


def _load() -> str:
  return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="Tiny models, under a minute.")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--repeats", type=int, default=1,
                      help="Cold + warm process pairs per model and phase.")
  parser.add_argument("--batch", type=int, default=8, help="Batch of the first step and map.")
  # One phase in a fresh process (run_phase starts these).
  parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
  parser.add_argument("--model", help=argparse.SUPPRESS)
  parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
  parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.phase:
    _child(args.phase, args.model, args.batch, args.cache_dir, args.launched)
    return
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  load_before = _load()
  if args.quick:
    rows = startup_rows(("resnet18_tiny",), args.batch, args.repeats, phases=("map",))
    rows += memory_rows(("resnet18_tiny", "vit_tiny"), (2,))
  else:
    rows = startup_rows(("resnet50", "vit_b16"), args.batch, args.repeats)
    rows += memory_rows(("resnet50", "vit_b16", "vit_b16_f32"), (8, 64))
  results = {"machine": harness.machine(), "quick": args.quick, "repeats": args.repeats,
             "batch": args.batch, "load_before": load_before, "load_after": _load(),
             "rows": rows, "notes": []}
  over = [f"{r['case']} ({r['method']}): {r['median']:.3f}" for r in rows
          if r["group"].startswith("MHEX map") and not r["within_target"]]
  if over:
    results["notes"].append(f"Above the {MEMORY_TARGET}× target: " + "; ".join(over) + ".")
  harness.write_results(args.out, "startup", results, markdown(results))
  print(markdown(results))


if __name__ == "__main__":
  main()

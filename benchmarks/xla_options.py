r"""XLA:CPU options against PyTorch's forward: what each one does to speed and to the results.

    python -m benchmarks.xla_options [--rounds=7] [--size=112] [--batch=8] [--options=a,b]
        [--out=benchmarks/results]

Each option set runs in a process of its own (XLA reads ``XLA_FLAGS`` once, when JAX starts its
backend). The process times, in interleaved rounds, the MHEX-ResNet-18 forward pass of the speed
table, its vanilla gradient (a backward to the input) and PyTorch's forward of the same ResNet-18
shape (at its faster thread setting), and saves the logits and the gradient. The table gives, per
option, JAX forward / PyTorch forward, vanilla gradient / JAX forward, and how far the logits and
the gradient move from the defaults' (max |Δ| over max |value|): float32 rounding is about 1e-6,
so an option that moves them by more changes results, and is not adopted whatever its speed.

Options tried (every XLA:CPU switch of the pinned jaxlib that bears on convolutions, fusion,
threads or math; ``OPTIONS``): YNNPACK fusions off, off for convolutions or for dots only, and
extended to element-wise ops and reductions; XNNPACK off; oneDNN; the concurrency-optimised scheduler off; 512-bit vectors;
fast math; single-threaded Eigen. An option this jaxlib does not know stops its process; the
table says so.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

YNN = "--xla_cpu_experimental_ynn_fusion_type"
OPTIONS = {
    "defaults": "",
    "YNNPACK fusions off": f"{YNN}=",
    "YNNPACK without convolutions": f"{YNN}=-individual_convolution",
    "YNNPACK without dots": f"{YNN}=-individual_dot",
    "YNNPACK + element-wise": f"{YNN}=+eltwise",
    "YNNPACK + reductions": f"{YNN}=+reduce",
    "XNNPACK off": "--xla_cpu_use_xnnpack=false",
    "oneDNN": "--xla_cpu_use_onednn=true",
    "concurrency scheduler off": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    "512-bit vectors": "--xla_cpu_prefer_vector_width=512",
    "fast math": "--xla_cpu_enable_fast_math=true",
    "single-threaded Eigen": "--xla_cpu_multi_thread_eigen=false",
}


def child(size: int, batch: int, rounds: int, out: str) -> None:
  """One option set (already in XLA_FLAGS): times and outputs to ``out`` (.json and .npz)."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  from benchmarks import run  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_side  # pylint: disable=g-import-not-at-top
  from mhex_jax import host_allocator  # pylint: disable=g-import-not-at-top
  from mhex_jax.explain import registry  # pylint: disable=g-import-not-at-top

  host_allocator.keep_large_buffers()
  model, variables = run.build("resnet18", size)
  x, y = run._images(batch, size), run._targets(batch)  # pylint: disable=protected-access
  forward = run._forward(model)  # pylint: disable=protected-access
  gradient = jax.jit(registry.explainer("vanilla_gradient", model))
  jax_fns = {"forward": lambda: forward(variables, x),
             "vanilla gradient": lambda: gradient(variables, x, y)}
  torch_fns = {t: torch_side.forward(18, batch, size, t)
               for t in sorted({1, torch_side.DEFAULT_THREADS})}
  for fn in list(jax_fns.values()) + list(torch_fns.values()):
    torch_side.set_threads(getattr(fn, "threads", torch_side.DEFAULT_THREADS))
    harness.time_once(fn)
    harness.time_once(fn)
  times = {name: [] for name in list(jax_fns) + [f"torch {t}" for t in torch_fns]}
  for _ in range(rounds):
    for name, fn in jax_fns.items():
      times[name].append(harness.time_once(fn))
    harness.settle()
    for threads, fn in torch_fns.items():
      torch_side.set_threads(threads)
      times[f"torch {threads}"].append(harness.time_once(fn))
    torch_side.set_threads(torch_side.DEFAULT_THREADS)
    harness.settle()
  np.savez(out + ".npz", logits=np.asarray(forward(variables, x)),
           gradient=np.asarray(gradient(variables, x, y)))
  pathlib.Path(out + ".json").write_text(json.dumps(times))


def relative_change(a: np.ndarray, b: np.ndarray) -> float:
  """max |a − b| / max |b|: 0 for the same values, ~1e-6 for float32 rounding."""
  return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def summarise(times: dict[str, list[float]]) -> dict[str, float]:
  """Per round: JAX forward / PyTorch's faster forward, gradient / JAX forward; medians."""
  torch_rounds = [min(ts) for ts in zip(*(v for k, v in times.items() if k.startswith("torch")))]
  versus_torch = [a / b for a, b in zip(times["forward"], torch_rounds)]
  gradient = [a / b for a, b in zip(times["vanilla gradient"], times["forward"])]
  return {"forward_ms": 1e3 * statistics.median(times["forward"]),
          "torch_ms": 1e3 * statistics.median(torch_rounds),
          "versus_torch": statistics.median(versus_torch),
          "versus_torch_min": min(versus_torch), "versus_torch_max": max(versus_torch),
          "gradient_over_forward": statistics.median(gradient)}


def run_option(name: str, flags: str, size: int, batch: int, rounds: int,
               scratch: str) -> dict:
  out = os.path.join(scratch, str(abs(hash(name))))
  env = {**os.environ, "XLA_FLAGS": " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                                           flags]))}
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks.xla_options", "--child", out, f"--size={size}",
       f"--batch={batch}", f"--rounds={rounds}"],
      cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"option": name, "flags": flags, "error": last[:300]}
  with open(out + ".json") as f:
    result = {"option": name, "flags": flags, **summarise(json.load(f))}
  result["outputs"] = out + ".npz"
  return result


def markdown(results: dict) -> str:
  lines = [f"XLA:CPU options, MHEX-ResNet-18 {results['size']}², batch {results['batch']}, "
           f"{results['rounds']} interleaved rounds ({results['machine']['processor']}, jax "
           f"{results['machine'].get('jax', '?')}). Δ: max |change| / max |value| against the "
           "defaults (float32 rounding ≈ 1e-6).", "",
           "| option | XLA_FLAGS | JAX fwd ms | torch fwd ms | JAX / torch (min–max) | "
           "gradient / fwd | Δ logits | Δ gradient |", "|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    if "error" in r:
      lines.append(f"| {r['option']} | `{r['flags']}` | not run: {r['error']} | | | | | |")
      continue
    lines.append(
        f"| {r['option']} | `{r['flags'] or '(none)'}` | {r['forward_ms']:.1f} | "
        f"{r['torch_ms']:.1f} | {r['versus_torch']:.2f} ({r['versus_torch_min']:.2f}–"
        f"{r['versus_torch_max']:.2f}) | {r['gradient_over_forward']:.2f} | "
        f"{r['logits_change']:.1e} | {r['gradient_change']:.1e} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--size", type=int, default=112)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--options", default=",".join(OPTIONS),
                      help=f"Comma-separated names of {list(OPTIONS)}.")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args()
  if args.child:
    child(args.size, args.batch, args.rounds, args.child)
    return
  names = [n.strip() for n in args.options.split(",") if n.strip()]
  unknown = [n for n in names if n not in OPTIONS]
  if unknown:
    raise SystemExit(f"Unknown --options {unknown}; choose from {list(OPTIONS)}.")
  if "defaults" not in names:
    names.insert(0, "defaults")
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as scratch:
    rows = [run_option(n, OPTIONS[n], args.size, args.batch, args.rounds, scratch)
            for n in names]
    if "error" in rows[0]:
      raise SystemExit(f"The defaults did not run: {rows[0]['error']}")
    reference = np.load(rows[0]["outputs"])
    for r in rows:
      if "outputs" in r:
        with np.load(r.pop("outputs")) as outputs:
          r["logits_change"] = relative_change(outputs["logits"], reference["logits"])
          r["gradient_change"] = relative_change(outputs["gradient"], reference["gradient"])
  results = {"machine": harness.machine(), "size": args.size, "batch": args.batch,
             "rounds": args.rounds, "rows": rows}
  harness.write_results(args.out, "xla_options", results, markdown(results))
  print(markdown(results))


if __name__ == "__main__":
  main()

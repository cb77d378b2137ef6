r"""Time to the first map of ``explain.py``: a first invocation against a second one on the same
model, which reads its compiled programs from the persistent compilation cache.

    python benchmarks/bench_first_map.py [--workdir=DIR] [--repeats=3]

Without ``--workdir`` a small MHEX-ResNet-18 is trained first (the default config narrowed to
width 8 at 32 px, 1 epoch of 512 images). Each round uses a fresh cache directory: the first
invocation compiles and writes it, the second reads it back. Reported per round: seconds from
launching the command to its "Maps of N inputs ready" line, and the programs it read back and
compiled (the command's last log line); the ratio first / second is the median over rounds.
"""

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ("--config=configs/default.py", "--config.model.width=8", "--config.data.num_train=512",
         "--config.data.num_eval=64", "--config.train.batch_size=64",
         "--config.train.num_epochs=1", "--config.eval.batch_size=64")


def _run_until(argv, marker: str) -> tuple[float, str]:
  """Seconds from launch until a line with ``marker`` appears, and the whole output."""
  started = time.monotonic()
  process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
  seen, lines = None, []
  for line in process.stdout:
    lines.append(line)
    if seen is None and marker in line:
      seen = time.monotonic() - started
  if process.wait() != 0 or seen is None:
    raise RuntimeError(f"{argv} failed:\n{''.join(lines[-40:])}")
  return seen, "".join(lines)


def _maps_after_load(output: str) -> float:
  """The command's own figure: seconds from loading the workdir to the maps (no imports)."""
  return float(re.search(r"Maps of \d+ inputs ready ([\d.]+) s after", output).group(1))


def _cache_counts(output: str) -> tuple[int, int]:
  match = re.search(r"(\d+) programs read back, (\d+) compiled", output)
  return int(match.group(1)), int(match.group(2))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", help="A trained image workdir (default: train one).")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", help="Also write the figures to this JSON file.")
  args = parser.parse_args()
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="bench_first_map_"))
  workdir = args.workdir
  if workdir is None:
    workdir = str(scratch / "run")
    subprocess.run([sys.executable, "train.py", *SMALL, f"--workdir={workdir}",
                    "--nocompilation_cache"], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
  rng = np.random.default_rng(0)
  files = []
  for i, size in enumerate([(64, 64), (120, 72)]):
    path = scratch / f"image_{i}.png"
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)
    files.append(str(path))

  rounds = []
  for r in range(args.repeats):
    cache = scratch / f"cache_{r}"
    argv = ["explain.py", f"--workdir={workdir}", f"--compilation_cache_dir={cache}",
            f"--out={scratch / 'out'}", *files]
    first, out_first = _run_until(argv, "Maps of")
    second, out_second = _run_until(argv, "Maps of")
    rounds.append({"first_s": round(first, 2), "second_s": round(second, 2),
                   "first_after_load_s": _maps_after_load(out_first),
                   "second_after_load_s": _maps_after_load(out_second),
                   "first_cache": _cache_counts(out_first),
                   "second_cache": _cache_counts(out_second)})
    print(f"round {r}: first {first:.2f} s ({rounds[-1]['first_cache'][1]} programs compiled), "
          f"second {second:.2f} s ({rounds[-1]['second_cache'][0]} read back, "
          f"{rounds[-1]['second_cache'][1]} compiled); from loading the workdir: "
          f"{rounds[-1]['first_after_load_s']:.2f} s and {rounds[-1]['second_after_load_s']:.2f} s")
  ratio = statistics.median(r["first_s"] / r["second_s"] for r in rounds)
  after_load = statistics.median(r["first_after_load_s"] / r["second_after_load_s"]
                                 for r in rounds)
  print(f"time to first map, first / second invocation: {ratio:.2f}x from launch, "
        f"{after_load:.2f}x from loading the workdir (median of {len(rounds)} rounds)")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
        {"rounds": rounds, "ratio_from_launch": ratio, "ratio_from_load": after_load}, indent=2))


if __name__ == "__main__":
  main()

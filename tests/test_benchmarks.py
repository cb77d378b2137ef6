"""The speed table's command in its quick mode, so it cannot rot: every row a finite, positive
ratio with its min–max, the machine recorded, the Markdown table written. (The figures
themselves are measured by the command, never asserted in tests.)"""

import json
import math
import os
import pathlib
import subprocess
import sys

from conftest import xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_the_table(tmp_path):
  # With the tests' fast-compile flags: nothing here reads the figures, and the quick run is
  # bound by compiling (one round): 80 s instead of 100 s on a 2-core Xeon.
  env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": xla_flags(8)}
  subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--rounds=1",
                  f"--out={tmp_path}"], cwd=ROOT, env=env,
                 check=True, capture_output=True, timeout=900)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["machine"]["jax"] and results["rounds"] == 1
  groups = {row["group"] for row in results["rows"]}
  assert {"MHEX saliency / forward", "image explainer / forward", "token maps / forward",
          "train step / plain train step", "metric / its model calls", "JAX / PyTorch",
          "ImageNet input pipeline, images/s", "MHEX map / forward: XLA temporaries",
          "Transformer gradient method / its floor", "ViT routing / forward",
          "MHEX, predicted class / forward"} <= groups
  # The PyTorch rows compare against the faster of the two thread settings, recorded.
  for row in results["rows"]:
    if row["group"] == "JAX / PyTorch":
      by_threads = row["torch_ms_by_threads"]
      assert by_threads[str(row["torch_threads"])] == min(by_threads.values()), row
  for row in results["rows"]:
    assert math.isfinite(row["median"]) and row["median"] > 0, row
    assert row["min"] <= row["median"] <= row["max"], row
  table = (tmp_path / "results.md").read_text()
  assert table.count("\n| ") == len(results["rows"]) + 1  # Header and one line per row.


def test_ratios_are_taken_per_round_then_summarised():
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  times = {"a": [2.0, 3.0, 10.0], "base": [1.0, 2.0, 4.0]}
  r = harness.ratio(times, "a", "base")
  # Per round 2.0, 1.5, 2.5: a slow round (the third) slows both and does not skew the ratio.
  assert (r["median"], r["min"], r["max"], r["rounds"]) == (2.0, 1.5, 2.5, 3)
  assert r["median_ms"] == 3000.0 and r["baseline_ms"] == 2000.0


def test_interleaved_rounds_alternate_the_order():
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  calls = []
  fns = {name: (lambda name=name: calls.append(name)) for name in ("x", "y", "z")}
  times = harness.interleaved(fns, rounds=2)
  assert calls[:6] == ["x", "x", "y", "y", "z", "z"]  # Two warm-up calls each.
  assert calls[6:] == ["x", "y", "z", "z", "y", "x"]
  assert {name: len(t) for name, t in times.items()} == {"x": 2, "y": 2, "z": 2}


def test_a_warm_function_gets_an_untimed_call_before_each_timed_one():
  from benchmarks import harness  # pylint: disable=g-import-not-at-top
  calls = []
  fns = {name: (lambda name=name: calls.append(name)) for name in ("x", "y")}
  times = harness.interleaved(fns, rounds=2, warm=("x",))
  assert calls[4:] == ["x", "x", "y", "y", "x", "x"]
  assert {name: len(t) for name, t in times.items()} == {"x": 2, "y": 2}

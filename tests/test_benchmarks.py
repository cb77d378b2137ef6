"""The speed table's command in its quick mode, so it cannot rot: every row a finite, positive
ratio with its min–max, the machine recorded, the Markdown table written. (The figures
themselves are measured by the command, never asserted in tests.)"""

import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_the_table(tmp_path):
  subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--rounds=2",
                  f"--out={tmp_path}"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                 check=True, capture_output=True, timeout=900)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["machine"]["jax"] and results["rounds"] == 2
  groups = {row["group"] for row in results["rows"]}
  assert {"MHEX saliency / forward", "image explainer / forward", "token maps / forward",
          "train step / plain train step", "metric / its model calls"} <= groups
  for row in results["rows"]:
    assert math.isfinite(row["median"]) and row["median"] > 0, row
    assert row["min"] <= row["median"] <= row["max"], row
  table = (tmp_path / "results.md").read_text()
  assert table.count("\n| ") == len(results["rows"]) + 1  # Header and one line per row.

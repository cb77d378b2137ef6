"""benchmarks/startup.py on tiny models: rows in the speed table's format whose ratios are their
own numbers', and a second process that reads the first one's programs back from the cache.
(The figures themselves are measured by the command, never asserted.)"""

import pytest

from benchmarks import harness
from benchmarks import startup


def test_memory_rows_compare_the_map_with_the_forward():
  rows = startup.memory_rows(models=("resnet18_tiny",), batches=(2,))
  assert [r["method"] for r in rows] == ["mhex", "mhex, predicted class"]
  images, maps = 2 * 32 * 32 * 3 * 4, 2 * 32 * 32 * 4  # f32[2, 32, 32, 3] in, f32[2, 32, 32] out
  for r in rows:
    assert (r["group"], r["baseline"]) == ("MHEX map / forward: XLA temporaries", "forward")
    assert r["case"] == "resnet18_tiny, 32², float32, batch 2"
    ours, forward = r["map"], r["forward"]
    assert ours["temp_bytes"] > 0 and forward["temp_bytes"] > 0
    assert ours["argument_bytes"] > images and forward["argument_bytes"] > images
    assert ours["output_bytes"] >= maps
    assert forward["output_bytes"] == 2 * 4 * 4  # The final head's logits, f32[2, 4].
    assert r["median"] == r["min"] == r["max"] == ours["temp_bytes"] / forward["temp_bytes"]
    assert r["within_target"] == (r["median"] <= startup.MEMORY_TARGET)
    assert r["median_ms"] == pytest.approx(1e3 * ours["compile_s"])
    assert r["baseline_ms"] == pytest.approx(1e3 * forward["compile_s"])


def test_a_warm_process_reads_the_programs_back():
  [row] = startup.startup_rows(models=("resnet18_tiny",), batch=8, phases=("train",))
  [cold], [warm] = row["cold"], row["warm"]
  assert cold["read_back"] == 0 and cold["compiled"] > 0
  # The same programs, read back instead of compiled.
  assert warm["programs"] == cold["programs"]
  assert warm["read_back"] > 0 and warm["compiled"] < cold["compiled"]
  for run in (cold, warm):
    assert 0 < run["imports_s"] < run["state_s"] < run["done_s"]
  assert row["median"] == pytest.approx(warm["done_s"] / cold["done_s"])
  assert row["median_ms"] == pytest.approx(1e3 * warm["done_s"])
  assert row["baseline_ms"] == pytest.approx(1e3 * cold["done_s"])
  assert row["case"] == "resnet18_tiny, 32², float32, batch 8" and row["phase"] == "train"
  results = {"machine": harness.machine(), "repeats": 1, "load_before": "1.0 1.0 1.0",
             "load_after": "1.0 1.0 1.0", "rows": [row], "notes": []}
  table = startup.markdown(results)
  assert f"| {row['case']} | first train step | " in table

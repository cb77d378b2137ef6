"""benchmarks/xla_options.py: the arithmetic of its table, and an unknown option reported, not
crashed on. The timings themselves are measured by the command, never asserted here."""

import numpy as np
import pytest

from benchmarks import xla_options


def test_relative_change_is_max_abs_over_max_abs():
  reference = np.array([[1.0, -4.0], [2.0, 0.5]], np.float32)
  moved = reference + np.array([[0.0, 0.002], [-0.001, 0.0]], np.float32)
  assert xla_options.relative_change(reference, reference) == 0.0
  assert xla_options.relative_change(moved, reference) == pytest.approx(0.002 / 4.0, rel=1e-4)


def test_summarise_takes_pytorchs_faster_thread_setting_per_round():
  times = {"forward": [0.10, 0.12, 0.11], "vanilla gradient": [0.30, 0.30, 0.22],
           "torch 1": [0.08, 0.05, 0.10], "torch 2": [0.05, 0.06, 0.05]}
  summary = xla_options.summarise(times)
  # Per round, JAX over the faster PyTorch: 0.10/0.05, 0.12/0.05, 0.11/0.05.
  assert summary["versus_torch"] == pytest.approx(2.2)
  assert summary["versus_torch_min"] == pytest.approx(2.0)
  assert summary["versus_torch_max"] == pytest.approx(2.4)
  assert summary["gradient_over_forward"] == pytest.approx(2.5)  # 3.0, 2.5, 2.0.
  assert summary["forward_ms"] == pytest.approx(110.0)
  assert summary["torch_ms"] == pytest.approx(50.0)


def test_an_option_xla_does_not_know_is_a_row_with_its_error(tmp_path):
  row = xla_options.run_option("typo", "--xla_cpu_no_such_option=true", 32, 1, 1, str(tmp_path))
  assert row["option"] == "typo" and "error" in row
  assert "xla_cpu_no_such_option" in row["error"]
  table = xla_options.markdown({"machine": {"processor": "cpu", "jax": "x"}, "size": 32,
                                "batch": 1, "rounds": 1, "rows": [row]})
  assert "| typo | `--xla_cpu_no_such_option=true` | not run:" in table

"""Where JAX runs (``mhex_jax.devices``) and ``python -m mhex_jax.device_check``.

The warning is shown on a faked machine: a fake ``nvidia-smi`` on PATH, or device files and
environment variables, while JAX runs on the CPU. The device check runs as a command on this
CPU, where the device and the CPU reference are the same processor: every comparison still
runs (and, the same program on the same inputs, agrees exactly); a known perturbation of the
device side's inputs shows that the comparisons catch a difference and the exit status says so.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import xla_flags
from mhex_jax import device_check
from mhex_jax import devices

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --- The backend line and the warning ---------------------------------------------------------

@pytest.fixture
def machine(tmp_path, monkeypatch):
  """A machine on which nothing is visible: an empty PATH directory (``machine / "bin"``) and
  every device probe pointing into ``tmp_path``."""
  (tmp_path / "bin").mkdir()
  monkeypatch.setenv("PATH", str(tmp_path / "bin"))
  monkeypatch.setattr(devices, "NVIDIA_DEVICES", (str(tmp_path / "nvidia0"),))
  monkeypatch.setattr(devices, "TPU_DEVICES", (str(tmp_path / "accel0"),))
  monkeypatch.setattr(devices, "VFIO_GLOB", str(tmp_path / "vfio" / "[0-9]*"))
  monkeypatch.setattr(devices, "PCI_VENDOR_GLOB", str(tmp_path / "pci" / "*" / "vendor"))
  return tmp_path


def fake_nvidia_smi(machine, cuda_version="12.4", gpu="NVIDIA A100-SXM4-40GB"):
  """An ``nvidia-smi`` that lists one GPU (``-L``) and prints a driver header otherwise."""
  script = machine / "bin" / "nvidia-smi"
  script.write_text(f"""#!/bin/sh
if [ "$1" = "-L" ]; then
  echo "GPU 0: {gpu} (UUID: GPU-00000000-0000-0000-0000-000000000000)"
else
  echo "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: {cuda_version} |"
fi
""")
  script.chmod(0o755)


def test_no_warning_when_no_accelerator_is_visible(machine):
  assert devices.visible_gpu() is None and devices.visible_tpu(environ={}) is None
  assert devices.accelerator_warning(backend="cpu", environ={}) is None


def test_a_visible_gpu_names_the_cuda_install(machine):
  fake_nvidia_smi(machine)
  warning = devices.accelerator_warning(backend="cpu", environ={})
  assert warning.startswith("JAX runs on the CPU although an NVIDIA GPU (NVIDIA A100-SXM4-40GB) "
                            "is visible"), warning
  assert 'pip install ".[cuda12]"' in warning and 'pip install "jax[cuda12]"' in warning
  assert "docs/install.md" in warning
  # Not when JAX uses the GPU, nor when JAX_PLATFORMS chose the CPU on purpose.
  assert devices.accelerator_warning(backend="gpu", environ={}) is None
  assert devices.accelerator_warning(backend="cpu", environ={"JAX_PLATFORMS": "cpu"}) is None
  assert devices.accelerator_warning(backend="cpu", environ={"JAX_PLATFORMS": "cuda,cpu"})


def test_the_driver_picks_the_cuda_extra(machine):
  fake_nvidia_smi(machine, cuda_version="13.0")
  assert 'pip install ".[cuda13]"' in devices.accelerator_warning(backend="cpu", environ={})
  fake_nvidia_smi(machine, cuda_version="11.8")
  assert "driver for CUDA 12 or later" in devices.accelerator_warning(backend="cpu", environ={})


def test_a_gpu_device_file_without_nvidia_smi(machine):
  (machine / "nvidia0").touch()
  warning = devices.accelerator_warning(backend="cpu", environ={})
  assert "an NVIDIA GPU is visible" in warning and '".[cuda12]"' in warning


def test_an_installed_plugin_that_did_not_start_is_named(machine, monkeypatch):
  fake_nvidia_smi(machine)
  monkeypatch.setattr(devices, "GPU_PLUGINS", ("jax",))  # Any installed distribution.
  warning = devices.accelerator_warning(backend="cpu", environ={})
  assert "is installed: its CUDA backend did not start" in warning, warning


@pytest.mark.parametrize("how", ["accel", "vfio", "environment"])
def test_a_visible_tpu_names_the_tpu_install(machine, how):
  environ = {}
  if how == "accel":
    (machine / "accel0").touch()
  elif how == "vfio":
    (machine / "vfio").mkdir()
    (machine / "vfio" / "0").touch()
    (machine / "pci" / "0000:00:04.0").mkdir(parents=True)
    (machine / "pci" / "0000:00:04.0" / "vendor").write_text("0x1ae0\n")
  else:
    environ = {"TPU_ACCELERATOR_TYPE": "v5litepod-8"}
  warning = devices.accelerator_warning(backend="cpu", environ=environ)
  assert warning.startswith("JAX runs on the CPU although a TPU is visible"), warning
  assert 'pip install ".[tpu]"' in warning


def test_vfio_devices_of_another_vendor_are_no_tpu(machine):
  (machine / "vfio").mkdir()
  (machine / "vfio" / "0").touch()
  (machine / "pci" / "0000:00:04.0").mkdir(parents=True)
  (machine / "pci" / "0000:00:04.0" / "vendor").write_text("0x10de\n")
  assert devices.accelerator_warning(backend="cpu", environ={}) is None


def test_describe_and_log_backend(machine, monkeypatch):
  line = devices.describe()
  assert line.startswith("JAX ") and " on cpu: 8 × cpu (8 local of 8 devices, process 1 of 1)" \
      in line, line  # tests/conftest.py: 8 CPU devices; the CPU reports no memory.
  fake_nvidia_smi(machine)
  monkeypatch.delenv("JAX_PLATFORMS")
  logged = []
  monkeypatch.setattr(devices.logging, "info", lambda *a: logged.append(("INFO", a[0] % a[1:])))
  monkeypatch.setattr(devices.logging, "warning",
                      lambda *a: logged.append(("WARNING", a[0] % a[1:])))
  devices.log_backend()
  assert [level for level, _ in logged] == ["INFO", "WARNING"], logged
  assert logged[0][1] == line and ".[cuda12]" in logged[1][1]


# --- The comparisons -----------------------------------------------------------------------

def test_relative_error_and_the_nearest_bound():
  want = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}  # ||want|| = 5.
  got = {"a": np.array([3.0, 0.3]), "b": np.array([4.4])}  # ||got − want|| = 0.5.
  assert device_check.relative_error(got, want) == pytest.approx(0.1)
  assert device_check.relative_error(got, want, scale=np.array([0.5])) == pytest.approx(1.0)
  row = device_check.Row("train", "m", "float32").judge(
      [("losses", 5e-5, 1e-4), ("parameters", 2e-2, 1e-2), ("batch stats", 0.0, 1e-4)])
  assert (row.compared, row.error, row.bound, row.passed) == ("parameters", 2e-2, 1e-2, False)


def test_train_errors_compare_the_moves_in_float32_only():
  initial = {"w": np.zeros(4)}
  want = {"losses": [2.0, 1.0, 0.5], "params": {"w": np.full(4, 1.0)}, "batch_stats": {}}
  got = {"losses": [2.0, 1.0, 0.5], "params": {"w": np.full(4, 1.1)}, "batch_stats": {}}
  f32 = dict((what, error) for what, error, _ in device_check.train_errors(
      got, want, initial, "float32"))
  assert f32 == {"losses": 0.0, "loss changes": 0.0, "parameters": pytest.approx(0.1)}
  bf16 = [what for what, _, _ in device_check.train_errors(got, want, initial, "bfloat16")]
  assert bf16 == ["losses", "loss changes"]


# --- The command ---------------------------------------------------------------------------

def _device_check(*args, num_devices):
  env = {**os.environ, "XLA_FLAGS": xla_flags(num_devices), "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  return subprocess.run([sys.executable, "-m", "mhex_jax.device_check", *args], env=env,
                        capture_output=True, text=True, timeout=600, cwd=ROOT)


def _table(stdout: str) -> list[list[str]]:
  """The cells of the table's rows (after the header and its rule)."""
  lines = [l for l in stdout.splitlines() if l.startswith("| ")]
  assert lines[0].startswith("| check | model | dtype | ms/call | ÷ forward | train img/s | "
                             "peak memory | compile s | error | of | bound | result |"), lines
  return [[cell.strip() for cell in l.strip("|").split("|")] for l in lines[1:]]


def test_quick_check_runs_every_comparison_on_two_devices(tmp_path):
  result = _device_check("--quick", f"--json={tmp_path / 'out.json'}", num_devices=2)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "on cpu: 2 × cpu" in result.stdout
  sizes = device_check.QUICK
  expected = [(check, sizes.label(model), dtype) for model, checks in
              device_check.MAP_CHECKS.items() for dtype in device_check.DTYPES
              for check in checks]
  expected += [("train", sizes.label(model), dtype) for model in device_check.MAP_CHECKS
               for dtype in device_check.DTYPES]
  expected.append(("data_parallel (2 vs 1 device)", sizes.label("resnet18"), "float32"))
  rows = _table(result.stdout)
  assert [tuple(r[:3]) for r in rows] == expected
  assert all(r[-1] == "ok" for r in rows), result.stdout
  report = json.loads((tmp_path / "out.json").read_text())
  assert report["passed"] and len(report["rows"]) == len(expected)
  for row in report["rows"]:
    assert row["passed"] and row["error"] <= row["bound"] and row["ms"] > 0, row
    assert row["peak_memory"] is None  # The CPU keeps no memory statistics: "n/a".
    if row["check"] == "train" or row["check"].startswith("data_parallel"):
      assert row["images_per_s"] > 0
    elif row["check"] != "forward":
      assert row["per_forward"] > 0
  # One device and one program: the device side and the CPU reference agree exactly, while
  # the 2-device step sums across devices in another order.
  assert all(r["error"] == 0 for r in report["rows"] if r["check"] != rows[-1][0])
  assert "All 19 checks within their bounds." in result.stdout


def test_a_difference_fails_the_check():
  """Images scaled by 1.01 on the device side: the float32 logits move by ~1e-2, 100 times
  their bound (bfloat16's bound, 5e-2, may hold it)."""
  result = _device_check("--quick", "--checks=forward", "--perturb=0.01", num_devices=1)
  assert result.returncode == 1, result.stdout + result.stderr
  rows = {(r[1], r[2]): r for r in _table(result.stdout)}
  for model in ("ResNet-18 w8", "ViT d64 L2 /8"):
    error, compared, result_cell = (rows[model, "float32"][i] for i in (8, 9, 11))
    assert result_cell == "FAIL" and compared == "logits" and float(error) > 1e-3
  assert "FAILED: " in result.stdout


def test_data_parallel_is_skipped_on_one_device():
  result = _device_check("--quick", "--checks=data_parallel", num_devices=1)
  assert result.returncode == 0, result.stdout + result.stderr
  (row,) = _table(result.stdout)
  assert row[0] == "data_parallel (1 vs 1 device)" and row[-1].startswith("skipped: 1 local")
  assert "All 0 checks within their bounds (1 skipped)." in result.stdout


def test_unknown_check_names_the_choices():
  result = _device_check("--checks=forward,gradcam", num_devices=1)
  assert result.returncode == 2 and "unknown ['gradcam']" in result.stderr, result.stderr

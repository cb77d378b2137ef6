"""The installed package runs without a checkout: console scripts, shipped configs by name."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import xla_flags
from mhex_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHRUNK = ["--config.model.width=4", "--config.data.image_size=16", "--config.data.num_train=64",
          "--config.data.num_eval=32", "--config.train.batch_size=16",
          "--config.train.num_epochs=1", "--config.eval.batch_size=16"]


def test_config_path_takes_files_and_shipped_names(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.config_dir() == ROOT / "configs"  # Not installed: the checkout's configs.
  shipped = str(ROOT / "configs" / "vit_imagenet.py")
  assert cli.config_path("vit_imagenet:quick") == f"{shipped}:quick"
  assert cli.config_path("vit_imagenet.py:quick") == f"{shipped}:quick"
  assert cli.config_path("vit_imagenet") == shipped
  (tmp_path / "default.py").write_text("")
  assert cli.config_path("default.py:x") == "default.py:x"  # A file comes first.
  with pytest.raises(ValueError, match=r"'configs/nonexistent.py' is neither a config file nor "
                     r"a shipped config; shipped configs: bert_agnews, default, "):
    cli.config_path("configs/nonexistent.py")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """``pip install --target`` of a copy of the checkout (offline: no build isolation, no
  dependencies; those come from this venv). A copy, so stale build/ files cannot leak in."""
  tmp = tmp_path_factory.mktemp("packaging")
  ignored = [line.strip("/") for line in (ROOT / ".gitignore").read_text().split()]
  shutil.copytree(ROOT, tmp / "src", ignore=shutil.ignore_patterns(".git", *ignored))
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-build-isolation", "--target", str(tmp / "site"), str(tmp / "src")],
                 env={**os.environ, "PIP_NO_INDEX": "1"}, check=True, capture_output=True,
                 text=True)
  return tmp / "site"


def _run(installed, script, *args, cwd):
  env = {**os.environ, "PYTHONPATH": str(installed), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": xla_flags(1)}
  return subprocess.run([str(installed / "bin" / script), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_install_holds_the_library_and_configs_only(installed):
  assert sorted(p.name for p in installed.iterdir()) == [
      "bin", "mhex_jax", "mhex_jax-0.1.0.dist-info"]  # No top-level configs or tests.
  assert sorted(p.name for p in (installed / "bin").iterdir()) == ["mhex-eval", "mhex-explain",
                                                                    "mhex-train"]
  packages = sorted(str(p.parent.relative_to(ROOT)) for p in ROOT.glob("mhex_jax/**/__init__.py"))
  missing = [p for p in packages if not (installed / p / "__init__.py").is_file()]
  assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
  assert (sorted(p.name for p in (installed / "mhex_jax" / "configs").glob("*.py"))
          == sorted(p.name for p in (ROOT / "configs").glob("*.py")))


def test_console_script_trains_a_shipped_config_outside_the_checkout(installed, tmp_path):
  check = subprocess.run(
      [sys.executable, "-c", "import mhex_jax.cli; print(mhex_jax.cli.config_dir())"],
      cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True,
      text=True, check=True)
  assert check.stdout.strip() == str(installed / "mhex_jax" / "configs")

  result = _run(installed, "mhex-train", "--config=default", "--workdir=w", *SHRUNK, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 4/4" in result.stderr
  assert [p.name for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()] == ["4"]


def test_unknown_config_name_lists_the_shipped_configs(installed, tmp_path):
  result = _run(installed, "mhex-eval", "--config=nonexistent", "--workdir=w", cwd=tmp_path)
  assert result.returncode != 0
  assert ("'nonexistent' is neither a config file nor a shipped config; shipped configs: "
          "bert_agnews, default, image_folder, resnet18_imagenet, resnet18_medmnist, text_csv, "
          "vit_imagenet, vit_medmnist" in result.stderr)

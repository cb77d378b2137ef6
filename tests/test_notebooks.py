"""The notebooks run from top to bottom, and are committed without outputs.

Each notebook runs in a fresh kernel (ipykernel's ``python3`` spec, i.e. this interpreter) in a
temporary directory, so its workdirs go there; the checkout's root is on its PYTHONPATH, as
for the tests. Nothing is downloaded: the install cells only run on Colab.
"""

import os
import pathlib
import re

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
AGNEWS = ROOT.parent / "shared" / "data" / "agnews" / "agnews.csv"


def test_notebooks_found():
  assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "text.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
           and (cell.outputs or cell.execution_count is not None)]
  assert not dirty, (f"{path.name}: code cells {dirty} hold outputs; clear them (Jupyter: "
                     "Edit > Clear All Outputs) before committing.")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  # The kernel inherits this environment: one CPU device (not the tests' 8) and XLA's default
  # optimisation (the notebooks train, so execution dominates: 148 s for both against 188 s
  # with the tests' fast-compile flags), the checkout importable, Hugging Face offline, and
  # the project's AG News copy.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("AGNEWS_CSV", str(AGNEWS))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  notebook = nbformat.read(path, as_version=4)
  client = NotebookClient(notebook, kernel_name="python3", timeout=600,
                          resources={"metadata": {"path": str(tmp_path)}})
  try:
    client.execute()
    failure = None
  except CellExecutionError as error:  # Names the cell and carries its traceback.
    failure = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # Without the terminal colours.
  if failure:
    pytest.fail(f"{path.name} failed:\n{failure}", pytrace=False)

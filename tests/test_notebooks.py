"""The notebooks run from top to bottom, and are committed without outputs.

Each notebook runs in a fresh kernel (ipykernel's ``python3`` spec, i.e. this interpreter) in a
temporary directory, so its workdirs go there; the checkout's root is on its PYTHONPATH, as
for the tests. Nothing is downloaded: the install cells only run on Colab. The runs are shrunk
through each notebook's "parameters" cell (``TEST_PARAMETERS``).
"""

import os
import pathlib
import re

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
import pytest

from conftest import xla_flags

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


# Smaller runs for the test, set in a cell after each notebook's "parameters" cell (as papermill
# does): the same code top to bottom, a few steps of training instead of a minute's.
TEST_PARAMETERS = {
    "quickstart": {"NUM_TRAIN": 512, "NUM_EVAL": 64, "NUM_EPOCHS": 1, "NUM_EXPLAIN": 16},
    "text": {"NUM_ROWS": 320},
}


def _with_test_parameters(notebook, name):
  tagged = [i for i, cell in enumerate(notebook.cells)
            if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged 'parameters'; tag one"
  source = "\n" + notebook.cells[tagged[0]].source
  missing = [n for n in TEST_PARAMETERS[name] if f"\n{n} = " not in source]
  assert not missing, f"{name}'s parameters cell does not set {missing}"
  notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(
      "\n".join(f"{n} = {v!r}" for n, v in TEST_PARAMETERS[name].items())))
  return notebook


def test_every_notebook_has_test_parameters():
  assert {p.stem for p in NOTEBOOKS} == set(TEST_PARAMETERS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  # The kernel inherits this environment: one CPU device (not the tests' 8) with the tests'
  # fast-compile flags (at the test's sizes compiling dominates: quickstart 30 s -> 22 s), the
  # checkout importable, Hugging Face offline, and the project's AG News copy.
  monkeypatch.setenv("XLA_FLAGS", xla_flags())
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("AGNEWS_CSV", str(AGNEWS))
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  notebook = _with_test_parameters(nbformat.read(path, as_version=4), path.stem)
  client = NotebookClient(notebook, kernel_name="python3", timeout=600,
                          resources={"metadata": {"path": str(tmp_path)}})
  try:
    client.execute()
    failure = None
  except CellExecutionError as error:  # Names the cell and carries its traceback.
    failure = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # Without the terminal colours.
  if failure:
    pytest.fail(f"{path.name} failed:\n{failure}", pytrace=False)

"""Every case of the error catalogue (tests/catalogue.py) through the real entry points: the
documented exit status, no traceback on stderr, a message naming the field or file (the case's
expected texts), nothing compiled before a config error, and each within 30 s on this CPU. The
"Errors you may see" table of docs/errors.md is the catalogue's."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import catalogue

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  work = tmp_path_factory.mktemp("catalogue")
  subprocess.run([sys.executable, "tests/catalogue.py", "--run", str(work / "results.json"),
                  "--work", str(work / "cases")], cwd=ROOT,
                 env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, timeout=1500)
  return json.loads((work / "results.json").read_text())


@pytest.mark.parametrize("case", catalogue.CASES, ids=lambda case: case.name)
def test_case(results, case):
  result = results[case.name]
  stderr = result["stderr"]
  assert result["returncode"] == case.returncode, stderr[-4000:]
  assert "Traceback" not in stderr, stderr[-4000:]
  for text in case.expect:
    assert text in stderr, f"{text!r} not in:\n{stderr[-4000:]}"
  if case.before_compile:
    assert "Compiling" not in stderr, stderr[-4000:]  # JAX_LOG_COMPILES is on.
  if case.before_data:
    assert result["seconds"] < catalogue.EARLY_SECONDS, result["seconds"]
  if case.returncode:  # A refused input fails fast; a warned run takes as long as its training.
    assert result["seconds"] < 30, result["seconds"]


def test_catalogue_covers_the_issue():
  assert len(catalogue.CASES) >= 40
  assert len({case.name for case in catalogue.CASES}) == len(catalogue.CASES)
  assert all(case.expect for case in catalogue.CASES)


def test_docs_table_is_the_catalogue():
  page = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
  assert catalogue.markdown() in page, (
      "docs/errors.md's 'Errors you may see' table differs from the catalogue; regenerate it "
      "with python tests/catalogue.py --markdown")

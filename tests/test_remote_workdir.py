"""A workdir on a cloud bucket (``gs://``) through train → resume → eval, offline.

The bucket is a fake of the same abstraction the code uses: an fsspec filesystem registered
for ``gs://`` (what ``etils.epath`` calls for it) that keeps objects under a local folder, and
the same folder as the TensorStore storage of orbax's ``gs://`` checkpoints (TensorStore's
GCS driver would need the network). Everything else (the ``gs://`` strings orbax, tensorboardX
and the eval writers receive, orbax's GCS commit protocol) is the code path of a real bucket.
"""

import json
import os
import shutil
import sys
import types

from etils.epath import backend as epath_backend
import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
import numpy as np
from orbax.checkpoint._src.path import gcs_utils
import pytest

from mhex_jax import eval_lib
from mhex_jax import files
from mhex_jax import train_lib
from test_train import tiny_config


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """Returns the local folder that holds the fake ``gs://`` buckets."""
  root = tmp_path / "buckets"
  root.mkdir()

  class FakeGCS(DirFileSystem):
    protocol = ("gs", "gcs")

    def __init__(self, *args, **kwargs):
      del args, kwargs  # gcsfs options such as finalize_on_close.
      super().__init__(path=str(root), fs=LocalFileSystem(auto_mkdir=True))

    def _join(self, path):
      strip = lambda p: p.split("://", 1)[-1]
      return super()._join([strip(p) for p in path] if isinstance(path, (list, tuple))
                           else strip(path))

  for protocol in FakeGCS.protocol:
    # fsspec's registry of implementations by protocol (the module, not the read-only view).
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, protocol, FakeGCS)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  real_kvstore = gcs_utils.get_kvstore_for_gcs

  def local_kvstore(path):
    spec = real_kvstore(path)
    return {"driver": "file", "path": f"{root}/{spec['bucket']}/{spec['path']}"}

  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", local_kvstore)
  monkeypatch.setattr(gcs_utils, "get_bucket",
                      lambda name: types.SimpleNamespace(hierarchical_namespace_enabled=False))
  yield root
  epath_backend.fsspec_backend._get_filesystem.cache_clear()


def _config():
  config = tiny_config()  # 8 steps.
  config.train.log_every_steps = 1
  config.train.keep_checkpoints = 2
  config.eval.num_explain = 8
  config.eval.num_gallery = 2
  config.eval.deletion_steps = 4
  config.eval.methods = "mhex,grad_cam"
  return config


def test_gs_workdir_trains_resumes_and_evaluates(fake_gcs, tmp_path, monkeypatch):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  config = _config()
  workdir = "gs://bucket/runs/tiny"
  assert str(files.workdir_path(workdir)) == workdir
  bucket = fake_gcs / "bucket" / "runs" / "tiny"

  partial = train_lib.train_and_evaluate(config, workdir, max_steps=5)
  assert partial["step"] == 5
  # A crash after step 5's log line but before its checkpoint: resume from step 3.
  shutil.rmtree(bucket / "checkpoints" / "5")
  resumed = train_lib.train_and_evaluate(config, workdir)
  assert resumed["step"] == 8 and 0 <= resumed["accuracy"] <= 1
  report = eval_lib.evaluate(config, workdir)

  assert not os.listdir(cwd), "a local copy of the gs:// path was written"
  assert sorted(os.listdir(bucket / "checkpoints")) == ["6", "8"]  # keep_checkpoints=2.
  # Orbax took the bucket code path: GCS has no atomic rename, so it writes commit markers.
  assert (bucket / "checkpoints" / "8" / "commit_success.txt").exists()
  assert json.loads((bucket / "config.json").read_text())["train"]["num_epochs"] == 2
  steps = [json.loads(line)["step"] for line in
           (bucket / "metrics.jsonl").read_text().splitlines()]
  # Steps 4 and 5 of the interrupted run were dropped and logged again: each step once.
  assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 8]  # The second 8 holds the eval accuracy.
  events = list((bucket / "tensorboard").iterdir())
  assert events and all(e.stat().st_size > 0 for e in events)
  saved = json.loads((bucket / "eval" / "report.json").read_text())
  assert saved["methods"].keys() == report["methods"].keys() == {"mhex", "grad_cam"}
  np.testing.assert_allclose(saved["accuracy"], resumed["accuracy"])
  assert (bucket / "eval" / "report.md").read_text().startswith("Accuracy")
  assert (bucket / "eval" / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Workdirs on any filesystem (local, ``gs://``, ``s3://``, ...) through one path API.

Everything a run writes (checkpoints, ``config.json``, ``metrics.jsonl``, TensorBoard events,
the eval reports and pictures) goes through ``workdir_path`` and ``etils.epath``, so a cloud
bucket works like a local folder. Cloud paths need the filesystem's client library: ``gcsfs``
for ``gs://`` (or TensorFlow's gfile when TensorFlow is installed) and ``google-cloud-storage``
for orbax's checkpoints there; ``s3fs`` for ``s3://``.
"""

import contextlib
import os
import sys
import time
from typing import Iterator, Union

from etils import epath

from mhex_jax.errors import UserError

PathLike = Union[str, os.PathLike]


def is_remote(path: PathLike) -> bool:
  """True for a URI with a scheme (``gs://bucket/run``), False for a local path."""
  return "://" in os.fspath(path)


def workdir_path(path: PathLike) -> epath.Path:
  """``path`` as an ``epath.Path``; a local path is made absolute (orbax requires it), a URI
  is kept as it is (``os.path.abspath`` would turn ``gs://b/run`` into ``/cwd/gs:/b/run``)."""
  if is_remote(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.fspath(path)))


def check_workdir(path: PathLike, must_exist: bool = False) -> None:
  """Refuses a workdir that is a file (or, with ``must_exist``, one that does not exist)."""
  directory = workdir_path(path)
  if directory.exists() and not directory.is_dir():
    raise UserError(f"--workdir={path} is a file; a workdir is a directory (created if "
                    "missing): give another path.")
  if must_exist and not directory.exists():
    raise UserError(f"--workdir={path} does not exist; give a workdir written by train.py.")


# Tests only: "NAME:SECONDS" makes ``atomic_open`` wait that long between writing a file
# called NAME and renaming it into place, so that a test can kill the writer there.
PAUSE_BEFORE_RENAME_VARIABLE = "MHEX_JAX_TEST_PAUSE_BEFORE_RENAME"


def _pause_before_rename(target) -> None:
  name, _, seconds = os.environ.get(PAUSE_BEFORE_RENAME_VARIABLE, "").rpartition(":")
  if name == target.name:
    print(f"{PAUSE_BEFORE_RENAME_VARIABLE}: {target} written, renaming in {seconds} s",
          file=sys.stderr, flush=True)
    time.sleep(float(seconds))


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator:
  """Opens ``path`` for writing so that it appears whole or not at all: a reader sees the
  previous file until the new one is complete, and a kill or a full disk during the write leaves
  the previous file (or none) in place.

  Locally the contents go to a hidden temporary file beside ``path`` (``.NAME.PID.partial``),
  flushed to the disk and renamed over ``path`` (``os.replace``, atomic on POSIX). On object
  stores (``gs://``, ``s3://``) one object is written by one upload, which the store makes
  visible only when it is complete, so the file is written in place.
  """
  target = workdir_path(path)
  if is_remote(target):
    with target.open(mode) as f:
      yield f
    return
  partial = target.parent / f".{target.name}.{os.getpid()}.partial"
  try:
    with open(partial, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    _pause_before_rename(target)
    os.replace(partial, target)
  except BaseException:
    partial.unlink(missing_ok=True)
    raise


def write_text(path: PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` whole or not at all (``atomic_open``)."""
  with atomic_open(path, "w") as f:
    f.write(text)


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` whole or not at all (``atomic_open``)."""
  with atomic_open(path, "wb") as f:
    f.write(data)


class _EpathRecordFile:
  """A TensorBoard event file on a filesystem without appends (object stores): the records
  are kept and the whole file is rewritten on every flush, as tensorboardX does for S3."""

  def __init__(self, path: str):
    self._path = epath.Path(path)
    self._data = bytearray()

  def write(self, data: bytes) -> None:
    self._data += data

  def flush(self) -> None:
    self._path.write_bytes(bytes(self._data))

  def close(self) -> None:
    self.flush()


class _EpathRecordFactory:
  """tensorboardX writer factory for a URI scheme, writing through epath."""

  def open(self, path: str) -> _EpathRecordFile:
    return _EpathRecordFile(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def tensorboard_dir(path: epath.Path) -> str:
  """The path tensorboardX's ``SummaryWriter`` should get for the event directory ``path``;
  for a URI, its scheme is routed through epath first."""
  if is_remote(path):
    from tensorboardX import record_writer  # Imported lazily, with the writer.
    record_writer.register_writer_factory(os.fspath(path).split("://")[0],
                                          _EpathRecordFactory())
  return os.fspath(path)

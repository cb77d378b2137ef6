"""Ways a checkpoint step gets damaged on disk, shared by the checkpoint tests and the error
catalogue."""

import os
import pathlib
import shutil

DAMAGES = ("truncated", "metadata_deleted", "emptied", "overwritten")


def largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  """The biggest array-data file of a step's ``variables`` item (orbax's OCDBT data files)."""
  data = [p for p in (step_dir / "variables").rglob("*")
          if p.is_file() and p.parent.name == "d"]
  return max(data, key=lambda p: p.stat().st_size)


def damage(step_dir: pathlib.Path, how: str) -> None:
  """Damages one step directory in its ``variables`` item (what eval reads too): the largest
  data file cut to half its size, ``_METADATA`` deleted, every file of the step removed (an
  empty step directory) or 64 bytes in the middle of the largest data file overwritten."""
  step_dir = pathlib.Path(step_dir)
  if how == "truncated":
    path = largest_data_file(step_dir)
    os.truncate(path, path.stat().st_size // 2)
  elif how == "metadata_deleted":
    (step_dir / "variables" / "_METADATA").unlink()
  elif how == "emptied":
    shutil.rmtree(step_dir)
    step_dir.mkdir()
  elif how == "overwritten":
    path = largest_data_file(step_dir)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes((b ^ 0x5A) for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
  else:
    raise ValueError(f"Unknown damage {how!r}; one of {DAMAGES}")

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
  empty step directory) or one value of its largest array changed, the files still valid
  (``_change_values``)."""
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
    _change_values(step_dir / "variables")
  else:
    raise ValueError(f"Unknown damage {how!r}; one of {DAMAGES}")


def _change_values(item: pathlib.Path) -> None:
  """Silently changed data: the item rewritten by orbax with one value of its largest array
  moved by 1, so every file reads back and only the checksums saved beside it (the step's
  ``meta`` item) can tell. (Flipping bytes in a data file cannot do this reliably: orbax
  compresses the arrays, and whether flipped bytes land where decoding fails or where it yields
  other numbers depends on the order in which its writes were laid out.)"""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(item)
  metadata = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  tree = checkpointer.restore(item, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  largest = max(range(len(leaves)), key=lambda i: leaves[i].size)
  leaves[largest] = np.array(leaves[largest])
  leaves[largest].flat[leaves[largest].size // 2] += 1.0
  changed = item.parent / f"{item.name}.changed"
  checkpointer.save(changed, jax.tree_util.tree_unflatten(treedef, leaves))
  shutil.rmtree(item)
  changed.rename(item)


if __name__ == "__main__":  # python tests/damage.py STEP_DIR HOW: the catalogue's forked
  import sys  # runner must not use orbax (its threads) before it forks, so it damages here.
  damage(pathlib.Path(sys.argv[1]), sys.argv[2])

"""Checkpoints for train and eval: one orbax layout, integrity checks, and recovery from a
damaged latest step.

A step directory ``WORKDIR/checkpoints/STEP`` holds three items: ``variables`` (params and batch
statistics: all that eval and explain read), ``optimizer`` (the step and the optimizer state) and
``meta``, JSON with a checksum of every saved array and the training metrics of the steps since
the last log line (so a resumed run logs what an uninterrupted run logs). A restore first
compares the saved arrays with those the config builds (a mismatch names the differing arrays:
it is the config, not the checkpoint, that is wrong), then reads them and verifies their
checksums. A step that cannot be read or fails its checksums is damaged: it is reported with its
directory and the restore falls back to the previous intact step.

With ``train.keep_best`` training also keeps its best step, variables alone, in
``WORKDIR/best_checkpoint`` (``save_best``); evaluation and explanation read that step
(``restore_variables``), resuming reads ``WORKDIR/checkpoints`` as always.
"""

import dataclasses
import errno
import os
import shutil
from typing import Any, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mhex_jax import files
from mhex_jax.errors import CheckpointError

VARIABLES, OPTIMIZER, META = "variables", "optimizer", "meta"
DAMAGED_DIR = "damaged_checkpoints"  # Beside checkpoints/: where train moves damaged steps.
# Beside checkpoints/: the step train.keep_best selected (its variables alone), which eval and
# explain read instead of the latest step.
BEST_DIR = "best_checkpoint"
_MULTIPLIER = np.uint32(0x9E3779B1)  # Odd: every position weight below is odd.


def checkpoint_dir(workdir: files.PathLike):
  return files.workdir_path(workdir) / "checkpoints"


def has_steps(workdir: files.PathLike) -> bool:
  """Whether ``WORKDIR/checkpoints`` holds a step directory (read without orbax)."""
  directory = checkpoint_dir(workdir)
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def manager(workdir: files.PathLike, keep: int = 1, create: bool = True
            ) -> ocp.CheckpointManager:
  """The orbax manager of ``WORKDIR/checkpoints`` keeping the last ``keep`` steps."""
  return _manager(checkpoint_dir(workdir), keep, create)


def best_manager(workdir: files.PathLike, create: bool = True) -> ocp.CheckpointManager:
  """The orbax manager of ``WORKDIR/best_checkpoint`` (``train.keep_best``): one step."""
  return _manager(files.workdir_path(workdir) / BEST_DIR, 1, create)


def _manager(directory, keep: int, create: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
  # The handlers named up front, so a fresh manager can read a step's metadata.
  handlers = {VARIABLES: ocp.PyTreeCheckpointHandler(),
              OPTIMIZER: ocp.PyTreeCheckpointHandler(), META: ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _path(key_path) -> str:
  return jax.tree_util.keystr(key_path, simple=True, separator="/")


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """Σ_i word_i · (i · m | 1) mod 2³² over the array's bits: any change of one word changes it
  (an odd weight is invertible mod 2³²), and so does moving a value to another position."""
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()
  weights = jnp.arange(words.size, dtype=jnp.uint32) * _MULTIPLIER | jnp.uint32(1)
  return jnp.sum(words * weights, dtype=jnp.uint32)


_checksum_tree = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def checksums(tree: Any) -> dict[str, int]:
  """{array path: 32-bit checksum} of every array in ``tree`` (computed where the arrays are,
  so a sharded or multi-host state is never gathered)."""
  sums = jax.device_get(_checksum_tree(tree))
  return {_path(p): int(v) for p, v in jax.tree_util.tree_flatten_with_path(sums)[0]}


def split_state(state: Any) -> dict[str, Any]:
  """A ``TrainState`` as the checkpoint's array items."""
  return {VARIABLES: {"params": state.params, "batch_stats": state.batch_stats},
          OPTIMIZER: {"step": state.step, "opt_state": state.opt_state}}


def save(checkpoints: ocp.CheckpointManager, step: int, state: Any,
         pending_metrics: Sequence[dict[str, float]] = ()) -> None:
  """Starts saving the ``TrainState`` at ``step`` (asynchronously) with its checksums and the
  training metrics not logged yet."""
  items = split_state(state)
  meta = {"checksums": {name: checksums(tree) for name, tree in items.items()},
          "pending_metrics": list(pending_metrics)}
  checkpoints.save(step, args=ocp.args.Composite(
      **{name: ocp.args.PyTreeSave(tree) for name, tree in items.items()},
      **{META: ocp.args.JsonSave(meta)}), force=True)


def save_best(checkpoints: ocp.CheckpointManager, step: int, variables: dict[str, Any],
              selection: dict[str, float]) -> None:
  """Saves ``variables`` ({"params", "batch_stats"}) as the best step in ``best_manager``'s
  directory, with ``selection`` (what chose it, e.g. {"val_accuracy": 0.9}) in its meta, and
  waits until it is written (the previous best step is then deleted)."""
  meta = {"checksums": {VARIABLES: checksums(variables)}, "pending_metrics": [],
          "selection": dict(selection)}
  checkpoints.save(step, args=ocp.args.Composite(
      **{VARIABLES: ocp.args.PyTreeSave(variables), META: ocp.args.JsonSave(meta)}), force=True)
  checkpoints.wait_until_finished()


def best_selection(checkpoints: ocp.CheckpointManager) -> Optional[tuple[int, dict]]:
  """(step, selection) of the best step ``save_best`` wrote, or None when there is none."""
  step = checkpoints.latest_step()
  if step is None:
    return None
  meta = checkpoints.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
  return step, dict((meta[META] or {}).get("selection", {}))


def _variables_manager(workdir: files.PathLike) -> tuple[Optional[ocp.CheckpointManager], bool]:
  """The manager whose latest step holds ``workdir``'s model, and whether that step is the
  best step training kept (``train.keep_best``) rather than the latest."""
  best = files.workdir_path(workdir) / BEST_DIR
  if best.is_dir() and any(p.name.isdigit() for p in best.iterdir()):
    return best_manager(workdir, create=False), True
  directory = checkpoint_dir(workdir)
  return (manager(workdir, create=False) if directory.exists() else None), False


@dataclasses.dataclass
class Restored:
  step: int
  items: dict[str, Any]  # Item name → restored tree.
  pending_metrics: list[dict[str, float]]


def _shape_dtype(leaf) -> tuple[tuple[int, ...], str]:
  return tuple(leaf.shape), str(np.dtype(leaf.dtype))


def _arrays(tree: Any) -> dict[str, tuple]:
  return {_path(p): _shape_dtype(leaf)
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _saved_arrays(checkpoints: ocp.CheckpointManager, step: int, item: str
                  ) -> dict[str, tuple]:
  metadata = checkpoints.item_metadata(step)
  tree = metadata[item] if metadata is not None and item in metadata else None
  tree = getattr(tree, "tree", tree)
  if not tree:
    raise ValueError(f"it holds no saved {item}")
  return _arrays(tree)


def _describe(shape_dtype) -> str:
  shape, dtype = shape_dtype
  return f"{dtype}[{', '.join(map(str, shape))}]"


def _group(paths: Sequence[str], depth: int = 3) -> str:
  """Paths grouped by their first ``depth`` parts: "params/block_00/mhex (2 arrays), ..."."""
  groups: dict[str, int] = {}
  for path in paths:
    head = "/".join(path.split("/")[:depth])
    groups[head] = groups.get(head, 0) + 1
  shown = [f"{g} ({n} array{'s' * (n > 1)})" if n > 1 or g not in paths else g
           for g, n in list(groups.items())[:4]]
  more = len(groups) - len(shown)
  return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def mismatch(saved: dict[str, tuple], wanted: dict[str, tuple]) -> list[str]:
  """Plain-words differences between the arrays a checkpoint item holds and those wanted."""
  problems = []
  changed = [p for p in wanted if p in saved and saved[p] != wanted[p]]
  if changed:
    shown = "; ".join(f"{p}: {_describe(saved[p])} in the checkpoint, {_describe(wanted[p])} "
                      "for this config" for p in changed[:3])
    more = f" ({len(changed) - 3} more arrays differ)" if len(changed) > 3 else ""
    problems.append(shown + more)
  missing = [p for p in wanted if p not in saved]
  if missing:
    problems.append(f"the config has arrays the checkpoint lacks: {_group(missing)}")
  extra = [p for p in saved if p not in wanted]
  if extra:
    problems.append(f"the checkpoint has arrays the config lacks: {_group(extra)}")
  return problems


def _short(error: Exception, limit: int = 300) -> str:
  text = " ".join(str(error).split()) or type(error).__name__
  text = text.split(" See full TensorStore details")[0]  # Then a page of its spec.
  return text if len(text) <= limit else text[:limit] + "…"


def _move_damaged(checkpoints: ocp.CheckpointManager, steps: Sequence[int]) -> list[str]:
  """Moves damaged step directories to ``WORKDIR/damaged_checkpoints`` (never deleted: they
  may be worth a look); returns where each went."""
  target = checkpoints.directory.parent / DAMAGED_DIR
  moved = []
  for step in steps:
    source = checkpoints.directory / str(step)
    destination = target / str(step)
    suffix = 1
    while destination.exists():
      destination, suffix = target / f"{step}.{suffix}", suffix + 1
    moved.append(os.fspath(destination))
    if jax.process_index() == 0:
      target.mkdir(parents=True, exist_ok=True)
      source.rename(destination)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("mhex_jax.checkpoints.move_damaged")
  checkpoints.reload()
  return moved


def restore(checkpoints: ocp.CheckpointManager, targets: dict[str, Any], *,
            move_damaged: bool = False) -> Optional[Restored]:
  """The latest intact step, restored into the shapes (and shardings) of ``targets``.

  Args:
    checkpoints: the workdir's manager.
    targets: item name → a tree of ``jax.ShapeDtypeStruct`` (or arrays) of that item: both
      items of ``split_state`` to resume training, ``VARIABLES`` alone to evaluate (nothing else
      is read).
    move_damaged: move damaged steps aside (training: the run then saves those steps anew).

  Returns:
    None when there is no checkpoint at all.

  Raises:
    CheckpointError: the checkpoint holds other arrays than ``targets`` (naming them), or every
      step is damaged (naming each directory and what is wrong).
  """
  damaged = []
  for step in sorted(checkpoints.all_steps(), reverse=True):
    directory = checkpoints.directory / str(step)
    try:
      saved = {item: _saved_arrays(checkpoints, step, item) for item in targets}
    except Exception as error:  # Anything unreadable is damage, whatever the library raised.
      damaged.append((step, directory, f"its metadata cannot be read ({_short(error)})"))
      continue
    problems = [p for item in targets for p in mismatch(saved[item], _arrays(targets[item]))]
    if problems:
      raise CheckpointError(
          f"The checkpoint {directory} does not match the model this config builds: "
          f"{'; '.join(problems)}. Use the config the workdir was trained with (its "
          "config.json; eval.py without --config does), or a new --workdir to train this one.")
    try:
      restored = checkpoints.restore(step, args=ocp.args.Composite(
          **{item: ocp.args.PyTreeRestore(
              tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree))
             for item, tree in targets.items()},
          **{META: ocp.args.JsonRestore()}))
      meta = restored[META] or {}
      bad = []
      for item in targets:
        expected = meta.get("checksums", {}).get(item)
        if expected is None:
          raise ValueError(f"its meta item holds no checksums of {item}")
        found = checksums(restored[item])
        bad += [f"{item}: {p}" for p, value in found.items() if expected.get(p) != value]
    except Exception as error:
      damaged.append((step, directory, f"it cannot be read ({_short(error)})"))
      continue
    if bad:
      damaged.append((step, directory, f"{len(bad)} arrays fail their checksums "
                                       f"({_group(bad)}): the files were changed after saving"))
      continue
    if damaged:
      where = ""
      if move_damaged:
        where = f"; moved to {', '.join(_move_damaged(checkpoints, [s for s, *_ in damaged]))}"
      logging.warning("Damaged checkpoint%s %s%s. Resuming from step %d instead (%s).",
                      "s" * (len(damaged) > 1),
                      "; ".join(f"{d} ({why})" for _, d, why in damaged), where, step,
                      directory)
    return Restored(step, {item: restored[item] for item in targets},
                    list(meta.get("pending_metrics", [])))
  if damaged:
    raise CheckpointError(
        f"No intact checkpoint in {checkpoints.directory}: "
        + "; ".join(f"{d}: {why}" for _, d, why in damaged)
        + f". Move these step directories out of {checkpoints.directory} to start the run "
        "anew in this workdir, or use a new --workdir.")
  return None


def is_disk_full(error: BaseException) -> bool:
  """True when ``error`` (or what caused it) is the filesystem running out of space."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(error)
    if "No space left" in text or "ENOSPC" in text or "Disk quota exceeded" in text:
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_full_error(directory, step: int, last_complete: Optional[int]) -> CheckpointError:
  """The message for a save that ran out of space: where, how much is free, what is left."""
  free = ""
  if not files.is_remote(directory):
    try:
      free = f" ({shutil.disk_usage(os.fspath(directory)).free / 2**20:.1f} MiB free now)"
    except OSError:
      pass
  kept = (f"the last complete checkpoint is step {last_complete}" if last_complete is not None
          else "no checkpoint was completed")
  return CheckpointError(
      f"No space left on the device holding {directory}{free} while saving the checkpoint of "
      f"step {step}; {kept}. Free some space (or lower train.keep_checkpoints, or use a "
      "--workdir on a larger disk) and rerun the same command to resume.")


def restore_variables(workdir: files.PathLike, model, dummy_inputs, sharding) -> dict[str, Any]:
  """{"params", "batch_stats"} of the latest intact checkpoint in ``workdir`` (its best step
  when training kept one: ``train.keep_best``), placed with ``sharding`` (evaluation:
  replicated); nothing else is read (not the optimizer state)."""
  directory = checkpoint_dir(workdir)
  checkpoints, is_best = _variables_manager(workdir)
  if checkpoints is None or checkpoints.latest_step() is None:
    raise CheckpointError(f"No checkpoint in {directory}; train first: python train.py "
                          f"--config=... --workdir={workdir}")
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs))
  target = {k: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            variables.get(k, {}))
            for k in ("params", "batch_stats")}
  restored = restore(checkpoints, {VARIABLES: target})
  checkpoints.close()
  logging.info("Restored %s at step %d%s.", workdir, restored.step,
               f", its best step ({checkpoints.directory}; train.keep_best)" if is_best else "")
  return {"params": {}, "batch_stats": {}, **restored.items[VARIABLES]}


def restore_saved_variables(workdir: files.PathLike) -> dict[str, Any]:
  """{"params", "batch_stats"} of ``workdir``'s latest intact checkpoint (its best step when
  training kept one) as saved, whatever
  model the current config builds (starting a new run from it: ``weights.workdir_import``);
  host arrays, checksums verified."""
  directory = checkpoint_dir(workdir)
  checkpoints, _ = _variables_manager(workdir)
  step = checkpoints.latest_step() if checkpoints is not None else None
  if step is None:
    raise CheckpointError(f"No checkpoint in {directory}; train that workdir first, or point "
                          "model_init at another one.")
  metadata = checkpoints.item_metadata(step)[VARIABLES]
  tree = getattr(metadata, "tree", metadata)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)
  restored = restore(checkpoints, {VARIABLES: target})
  checkpoints.close()
  logging.info("Read %s at step %d.", workdir, restored.step)
  return jax.tree.map(np.asarray, dict(restored.items[VARIABLES]))

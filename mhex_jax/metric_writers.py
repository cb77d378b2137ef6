"""Metrics to JSON lines (``metrics.jsonl``) and TensorBoard event files, from process 0 only."""

import json
import math
from typing import Mapping, Optional

import jax

from mhex_jax import files


def _step(line: str) -> Optional[int]:
  """The step of a ``metrics.jsonl`` line; None for an empty or cut-short line."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


class MetricWriter:
  """Writes scalar metrics per step; a no-op on processes other than 0.

  Args:
    workdir: the run's directory, local or a URI (``mhex_jax.files``).
    resume_step: the step training resumes from. Lines of ``metrics.jsonl`` past it (written
      after the checkpoint by the interrupted run) are dropped, and so is a line cut short by a
      crash, so every step appears once.
    enabled: write (default: on process 0 only).
  """

  def __init__(self, workdir: files.PathLike, resume_step: Optional[int] = None,
               enabled: Optional[bool] = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    directory = files.workdir_path(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    self._path = directory / "metrics.jsonl"
    self._lines = []
    if self._path.exists():
      self._lines = [line for line in self._path.read_text().splitlines()
                     if _step(line) is not None
                     and (resume_step is None or _step(line) <= resume_step)]
    # Object stores cannot append: there the whole (small) file is rewritten per write.
    self._append = not files.is_remote(directory)
    if self._append:
      # The kept lines are rewritten whole (a kill here leaves the old file), then appended
      # to: a kill during an append cuts one line, which the next run drops.
      files.write_text(self._path, "".join(line + "\n" for line in self._lines))
      self._jsonl = self._path.open("a")
    from tensorboardX import SummaryWriter  # Imported lazily: only process 0 writes.
    self._tb = SummaryWriter(files.tensorboard_dir(directory / "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, float],
                    timing: Optional[Mapping[str, float]] = None) -> None:
    """``scalars`` to both files; ``timing`` (wall-clock rates, which no rerun repeats) to
    TensorBoard only, so ``metrics.jsonl`` is a pure function of the run."""
    if not self.enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    record = {"step": int(step), **{k: (v if math.isfinite(v) else None)
                                    for k, v in values.items()}}
    line = json.dumps(record)
    if self._append:
      self._jsonl.write(line + "\n")
      self._jsonl.flush()
    else:
      self._lines.append(line)
      files.write_text(self._path, "".join(l + "\n" for l in self._lines))
    for key, value in {**values, **(timing or {})}.items():
      self._tb.add_scalar(key, float(value), global_step=int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      if self._jsonl is not None:
        self._jsonl.close()
      self._tb.close()

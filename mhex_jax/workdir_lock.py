"""One training run per workdir: ``WORKDIR/train.lock``, held while ``train.py`` runs.

The lock file is JSON naming its holder (host, process id, start time, command) and a heartbeat
that a daemon thread refreshes every ``HEARTBEAT_SECONDS`` (locally by touching the file: its
modification time is the heartbeat, so a refresh never overwrites another run's lock; on object
stores by rewriting the time in the file). A second run on the workdir stops before any work
with a ``WorkdirLocked`` error naming the holder. A lock whose holder is
gone is taken over with a warning naming the old holder: on the same host when its process no
longer exists, on any host when its heartbeat is older than ``STALE_SECONDS``.

Guarantees. On a local or network filesystem with atomic exclusive create and rename (POSIX,
NFSv3+), two runs started at once cannot both hold the lock: the lock is written under a
private name and hard-linked to ``train.lock`` (the link fails if the name exists), and a stale
lock is renamed aside (one rename wins) before a new one is linked. On object stores
(``gs://``, ``s3://``) epath offers no create-if-absent, so the lock is written after checking
that none is held and read back after ``REMOTE_SETTLE_SECONDS``: a
second run started later than that is refused; two runs started within those seconds of each
other on different machines may both proceed. Only training takes the lock; evaluation and
``explain.py`` read finished checkpoints and write only under ``WORKDIR/eval`` (or their own
output directory), each file whole.
"""

import dataclasses
import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

from absl import logging

from mhex_jax import errors
from mhex_jax import files

LOCK_NAME = "train.lock"
HEARTBEAT_SECONDS = 30.0
# A heartbeat older than this means the holder is gone (a lost machine, a hung process).
STALE_SECONDS = 300.0
REMOTE_SETTLE_SECONDS = 2.0


class WorkdirLocked(errors.UserError):
  """Another training run holds the workdir."""


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a lock: written into the lock file as JSON."""
  host: str
  pid: int
  started: float  # Unix time.
  command: str
  heartbeat: float  # Unix time of the last refresh.
  token: str  # Unique per acquisition: tells our lock from a successor's.

  def describe(self, now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    started = datetime.datetime.fromtimestamp(self.started).isoformat(timespec="seconds")
    return (f"host {self.host}, process {self.pid}, started {started}, last heartbeat "
            f"{max(now - self.heartbeat, 0):.0f} s ago, command: {self.command}")

  def gone(self, now: Optional[float] = None) -> Optional[str]:
    """Why this holder no longer runs, or None while it may."""
    now = time.time() if now is None else now
    if self.host == socket.gethostname() and not _process_exists(self.pid):
      return f"process {self.pid} no longer exists on this host"
    if now - self.heartbeat > STALE_SECONDS:
      return (f"its heartbeat is {now - self.heartbeat:.0f} s old (more than "
              f"{STALE_SECONDS:.0f} s)")
    return None


def _process_exists(pid: int) -> bool:
  if pid <= 0:  # 0 and negative ids name process groups, not a process.
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by another user.
    return True
  return True


def read_holder(path) -> Optional[Holder]:
  """The holder written in the lock file at ``path``; None when there is no lock file. A
  file that cannot be parsed (cut short by a crash while being created) counts as a holder
  that is gone."""
  try:
    text = files.workdir_path(path).read_text()
  except FileNotFoundError:
    return None
  try:
    holder = Holder(**json.loads(text))
  except (ValueError, TypeError):
    return Holder(host="?", pid=-1, started=0.0, command=f"(unreadable lock file: {text[:80]!r})",
                  heartbeat=0.0, token="")
  if not files.is_remote(path):  # Locally the heartbeat touches the file (``_beat``).
    try:
      mtime = os.stat(files.workdir_path(path)).st_mtime
    except FileNotFoundError:
      return None
    holder = dataclasses.replace(holder, heartbeat=max(holder.heartbeat, mtime))
  return holder


class WorkdirLock:
  """The training lock of ``workdir``: ``with WorkdirLock(workdir, command):``."""

  def __init__(self, workdir: files.PathLike, command: str,
               heartbeat_seconds: float = HEARTBEAT_SECONDS):
    self.workdir = workdir
    self.path = files.workdir_path(workdir) / LOCK_NAME
    self._command = command
    self._heartbeat_seconds = heartbeat_seconds
    self._holder: Optional[Holder] = None
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def _new_holder(self) -> Holder:
    now = time.time()
    started = self._holder.started if self._holder else now
    return Holder(host=socket.gethostname(), pid=os.getpid(), started=started,
                  command=self._command, heartbeat=now,
                  token=self._holder.token if self._holder else uuid.uuid4().hex)

  def _refused(self, holder: Holder) -> WorkdirLocked:
    return WorkdirLocked(
        f"{self.workdir} is in use by another training run ({holder.describe()}). Wait for it "
        f"to finish, stop it (e.g. kill {holder.pid} on {holder.host}), or train in another "
        "--workdir; eval.py may read this workdir meanwhile. A lock whose run is gone is "
        f"taken over by the next run: at once on the same host, after {STALE_SECONDS:.0f} s "
        f"without a heartbeat from another one (delete {self.path} to take it over now).")

  def acquire(self) -> None:
    """Takes the lock or raises ``WorkdirLocked``; starts the heartbeat."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # A takeover race lost: read the winner's lock and decide again.
      holder = read_holder(self.path)
      if holder is not None:
        why = holder.gone()
        if why is None:
          raise self._refused(holder)
        if not self._remove_stale(holder):
          continue
        logging.warning("Took over the training lock of %s: its holder is gone (%s): %s.",
                        self.workdir, why, holder.describe())
      if self._create():
        break
    else:
      raise self._refused(read_holder(self.path) or self._new_holder())
    self._thread = threading.Thread(target=self._beat, name="mhex_jax-workdir-lock",
                                    daemon=True)
    self._thread.start()

  def _remove_stale(self, holder: Holder) -> bool:
    """Removes the stale lock of ``holder``; False when another run removed or replaced it
    first (on a local filesystem only one rename of the file wins)."""
    if files.is_remote(self.path):
      self.path.unlink(missing_ok=True)
      return True
    aside = self.path.parent / f".{LOCK_NAME}.stale.{os.getpid()}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False
    taken = read_holder(aside)
    aside.unlink(missing_ok=True)
    if taken is not None and taken.token != holder.token:
      return False  # A successor's fresh lock was moved: it holds the workdir; say so.
    return True

  def _create(self) -> bool:
    """Writes our lock if none exists; False when another run's lock is there."""
    holder = self._new_holder()
    text = json.dumps(dataclasses.asdict(holder), indent=2)
    if files.is_remote(self.path):
      if self.path.exists():
        return False
      self.path.write_text(text)
      time.sleep(REMOTE_SETTLE_SECONDS)
      found = read_holder(self.path)
      if found is None or found.token != holder.token:
        return False
    else:
      # Written whole under a private name, then hard-linked to the lock's name: the link
      # fails if a lock exists, and a reader never sees a half-written lock.
      private = self.path.parent / f".{LOCK_NAME}.{holder.token}"
      private.write_text(text)
      try:
        os.link(private, self.path)
      except FileExistsError:
        return False
      finally:
        private.unlink(missing_ok=True)
    self._holder = holder
    return True

  def _beat(self) -> None:
    while not self._stop.wait(self._heartbeat_seconds):
      try:
        found = read_holder(self.path)
        if found is None or found.token != self._holder.token:
          logging.error("The training lock %s is no longer this run's (%s): another run may "
                        "write this workdir.", self.path,
                        found.describe() if found else "deleted")
          return
        self._holder = self._new_holder()
        if files.is_remote(self.path):  # Rewritten: a successor's lock written since the
          files.write_text(self.path,     # check above would be lost (best effort there).
                           json.dumps(dataclasses.asdict(self._holder), indent=2))
        else:  # Touched, never rewritten: a successor's lock is never overwritten.
          os.utime(self.path)
      except OSError as error:  # A full disk or a lost mount: retried at the next beat.
        logging.warning("Could not refresh the training lock %s: %s", self.path, error)

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._holder is not None:
      found = read_holder(self.path)
      if found is not None and found.token == self._holder.token:
        self.path.unlink(missing_ok=True)
      self._holder = None

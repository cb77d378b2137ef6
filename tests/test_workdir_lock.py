"""One writer per workdir and outputs that are never half-written, through the real entry
points: two train.py at once (one runs, the other names the holder), a stale lock taken over,
eval.py beside a running train.py, and kill -9 of eval.py while it writes its report. The lock
itself (mhex_jax.workdir_lock) is also tested directly: refusal, takeover by heartbeat age,
release of our own lock only, the heartbeat."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from mhex_jax import files
from mhex_jax import workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from catalogue import SMALL_EVAL, TINY, dead_pid, write_lock  # pylint: disable=g-import-not-at-top

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _start(command, workdir, *flags, log=None):
  """``command``.py on the tiny config; its stderr goes to ``log`` (a path) if given, else to
  a pipe (read it with ``communicate``, which never lets a full pipe stall the process)."""
  stderr = open(log, "w") if log else subprocess.PIPE
  return subprocess.Popen([sys.executable, f"{command}.py", *TINY, *flags,
                           f"--workdir={workdir}"], cwd=ROOT, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def _finish(process) -> tuple[int, str]:
  _, stderr = process.communicate(timeout=600)
  return process.returncode, stderr


def _steps(workdir) -> list[int]:
  """The steps of metrics.jsonl's training lines (the final eval line repeats the last)."""
  records = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
  return [r["step"] for r in records if "train/loss" in r]


def test_two_train_commands_at_once_one_runs(tmp_path):
  """Both started together: exactly one trains, the other exits 1 before any work, naming the
  holder; metrics.jsonl holds each step once."""
  workdir = tmp_path / "run"
  processes = [_start("train", workdir) for _ in range(2)]
  results = [_finish(p) for p in processes]
  codes = sorted(code for code, _ in results)
  assert codes == [0, 1], [r[1][-2000:] for r in results]
  winner = next(p for p, r in zip(processes, results) if r[0] == 0)
  refused = next(r[1] for r in results if r[0] == 1)
  assert "is in use by another training run" in refused, refused[-2000:]
  assert f"process {winner.pid}" in refused and socket.gethostname() in refused, refused
  assert "Traceback" not in refused and "| loss" not in refused
  assert _steps(workdir) == [2, 4, 6, 8]  # log_every_steps=2, 8 steps: each once.
  assert not (workdir / workdir_lock.LOCK_NAME).exists()  # Released at the end.


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  workdir = tmp_path / "run"
  dead = dead_pid()
  write_lock(workdir / workdir_lock.LOCK_NAME, pid=dead)
  code, stderr = _finish(_start("train", workdir, "--config.train.num_epochs=1"))
  assert code == 0, stderr[-3000:]
  assert "Took over the training lock" in stderr and f"process {dead} no longer exists" in stderr
  assert _steps(workdir) == [2, 4]


def test_eval_beside_a_running_training(tmp_path):
  """eval.py reads the newest finished checkpoint while train.py goes on, without the lock;
  both exit 0. (That eval writes nothing under checkpoints/ is checked on a finished run
  below, where nothing else writes there.)"""
  workdir = tmp_path / "run"
  # 150 steps of 16 images with a checkpoint every 5 (and the oldest deleted): training
  # outlasts the evaluation, which starts after the first checkpoint (at 90 steps training
  # ended 5 s after the evaluation here; 60 more steps add about 10 s).
  log = tmp_path / "train.log"
  train = _start("train", workdir, "--config.data.num_train=480",
                 "--config.train.num_epochs=5", "--config.train.checkpoint_every_steps=5",
                 log=log)
  deadline = time.time() + 300
  checkpoints = workdir / "checkpoints"
  while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    assert time.time() < deadline and train.poll() is None, log.read_text()[-3000:]
    time.sleep(0.1)
  assert (workdir / workdir_lock.LOCK_NAME).exists()
  evaluation = subprocess.run([sys.executable, "eval.py", *SMALL_EVAL, f"--workdir={workdir}"],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  still_training = train.poll() is None
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  report = json.loads((workdir / "eval" / "report.json").read_text())
  assert report["num_examples"] == 16
  assert train.wait(timeout=600) == 0, log.read_text()[-3000:]
  assert still_training  # The evaluation really ran beside the training.
  assert _steps(workdir)[-1] == 150


def test_eval_killed_while_writing_its_report_leaves_the_previous_one(tmp_path):
  """kill -9 of eval.py between writing report.json's new contents and renaming them into
  place (a test hook pauses there): the previous report.json stays whole and readable. The
  first evaluation also shows that eval writes nothing under checkpoints/."""
  workdir = tmp_path / "run"
  code, stderr = _finish(_start("train", workdir, "--config.train.num_epochs=1"))
  assert code == 0, stderr[-3000:]
  checkpoints = workdir / "checkpoints"
  before = {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")}
  subprocess.run([sys.executable, "eval.py", *SMALL_EVAL, f"--workdir={workdir}"], cwd=ROOT,
                 env=ENV, capture_output=True, check=True, timeout=600)
  # Evaluation writes nothing under checkpoints/ (every file and its time are unchanged).
  assert {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")} == before
  report = workdir / "eval" / "report.json"
  previous = report.read_text()

  env = {**ENV, files.PAUSE_BEFORE_RENAME_VARIABLE: "report.json:600"}
  evaluation = subprocess.Popen(
      [sys.executable, "eval.py", *SMALL_EVAL, "--config.eval.num_explain=4",
       f"--workdir={workdir}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  for line in evaluation.stderr:
    if files.PAUSE_BEFORE_RENAME_VARIABLE in line and "report.json written" in line:
      break
  else:
    pytest.fail(f"eval.py ended without reaching the report (exit {evaluation.wait()})")
  partial = [p for p in report.parent.iterdir() if p.name.startswith(".report.json.")]
  assert partial and json.loads(partial[0].read_text())["methods"]["mhex"]["num_examples"] == 4
  evaluation.send_signal(signal.SIGKILL)
  evaluation.wait(timeout=60)
  assert report.read_text() == previous
  assert json.loads(previous)["methods"]["mhex"]["num_examples"] == 8


# The lock itself -------------------------------------------------------------------------------

def test_a_live_holder_is_refused_and_named(tmp_path):
  path = tmp_path / workdir_lock.LOCK_NAME
  write_lock(path, command="train.py --workdir=elsewhere", token="theirs")  # This process.
  with pytest.raises(workdir_lock.WorkdirLocked,
                     match=rf"in use by another training run \(host {socket.gethostname()}, "
                           rf"process {os.getpid()}, started .*train.py --workdir=elsewhere"):
    workdir_lock.WorkdirLock(tmp_path, "train.py").acquire()
  assert json.loads(path.read_text())["token"] == "theirs"  # Untouched.


def test_a_stale_heartbeat_from_another_host_is_taken_over(tmp_path, caplog):
  path = tmp_path / workdir_lock.LOCK_NAME
  old = time.time() - workdir_lock.STALE_SECONDS - 5
  write_lock(path, host="lost-machine", pid=1, heartbeat=old)
  with workdir_lock.WorkdirLock(tmp_path, "train.py --workdir=here"):
    holder = workdir_lock.read_holder(path)
    assert holder.pid == os.getpid() and holder.command == "train.py --workdir=here"
  assert "heartbeat is 305 s old" in caplog.text and "host lost-machine" in caplog.text
  assert not path.exists()
  # A fresh heartbeat from another host is a live holder, whatever its process id.
  write_lock(path, host="other-machine", pid=1)
  with pytest.raises(workdir_lock.WorkdirLocked, match="host other-machine, process 1"):
    workdir_lock.WorkdirLock(tmp_path, "train.py").acquire()


def test_heartbeat_refreshes_and_release_keeps_a_successors_lock(tmp_path):
  path = tmp_path / workdir_lock.LOCK_NAME
  lock = workdir_lock.WorkdirLock(tmp_path, "train.py", heartbeat_seconds=0.05)
  lock.acquire()
  first = workdir_lock.read_holder(path).heartbeat
  time.sleep(0.5)
  assert workdir_lock.read_holder(path).heartbeat > first
  write_lock(path, token="successor")  # Taken over meanwhile (as after a long stall).
  lock.release()
  assert workdir_lock.read_holder(path).token == "successor"

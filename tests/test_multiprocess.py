"""Training (stopped and resumed) and evaluation in two real JAX processes (2 CPU devices each,
gloo collectives) give the parameters and the report of one process with 4 devices. Select
with ``pytest -m multiprocess``."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from conftest import xla_flags
from configs import default
from mhex_jax import checkpoints
from mhex_jax import eval_lib
from mhex_jax import model_lib
from mhex_jax import sharding as sharding_lib
from mhex_jax import train_lib

pytestmark = pytest.mark.multiprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A config file for the command line that returns the test's config (written as JSON).
CONFIG_FILE = textwrap.dedent("""
    import json
    import ml_collections

    def get_config():
      with open({path!r}) as f:
        return ml_collections.ConfigDict(json.load(f))
""")


def _config():
  config = default.get_config()
  config.model.width = 4
  config.data.image_size = 16
  config.data.num_train = 192
  config.data.num_eval = 36  # The last batch of 16 is padded: keep masks must line up.
  config.train.batch_size = 16
  config.train.num_epochs = 2  # 24 steps, across an epoch boundary.
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 5
  # Float sums over 4 devices round differently when 2 of them are in another process. At the
  # default lr 0.05 this tiny net's training amplifies that to O(1) within 24 steps (so it does
  # 2 against 4 devices in one process), and AdamW's g / sqrt(v) to 1e-4; SGD at lr 0.002 keeps
  # it at ~1e-6, so the parameters can be compared at 1e-5.
  config.train.learning_rate = 0.002
  config.eval.batch_size = 16
  config.eval.num_explain = 30
  config.eval.first_example = 3
  config.eval.num_gallery = 4
  config.eval.deletion_steps = 4
  config.eval.methods = "mhex,grad_cam"
  return config


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(script, config_file, workdir, log_dir, name):
  """The README's plain-CPU recipe: each of two processes runs the script with the
  coordinator's address. Returns the processes (output in LOG_DIR/NAME.{0,1}.log)."""
  env = {**os.environ, "XLA_FLAGS": xla_flags(2),
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  address = f"localhost:{_free_port()}"
  return [subprocess.Popen(
      [sys.executable, script, f"--config={config_file}", f"--workdir={workdir}",
       "--distributed", f"--coordinator_address={address}", "--num_processes=2",
       f"--process_id={i}"], env=env, cwd=ROOT,
      stdout=open(log_dir / f"{name}.{i}.log", "w"), stderr=subprocess.STDOUT)
      for i in range(2)]


def _wait(workers, log_dir, name):
  for i, worker in enumerate(workers):
    code = worker.wait(timeout=600)
    assert code == 0, (log_dir / f"{name}.{i}.log").read_text()[-3000:]
  return [(log_dir / f"{name}.{i}.log").read_text() for i in range(2)]


def _logged_step(log: str) -> int:
  steps = [int(line.split("step ")[1].split("/")[0]) for line in log.splitlines()
           if "| loss" in line]
  return max(steps, default=0)


def test_two_process_training_and_evaluation_match_one_process(tmp_path):
  """Two processes × 2 CPU devices train (stopped by SIGTERM to one of them, then resumed)
  and evaluate: the same steps and parameters within 1e-5 as one process with 4 devices
  training, and the report of one process with 4 devices evaluating the same checkpoint
  (accuracy and per-method metrics within 1e-5)."""
  config = _config()
  config.num_devices = 4
  single_dir = str(tmp_path / "single")
  single_train = train_lib.train_and_evaluate(config, single_dir)

  config.num_devices = None
  (tmp_path / "config.json").write_text(config.to_json())
  config_file = tmp_path / "two_process_config.py"
  config_file.write_text(CONFIG_FILE.format(path=str(tmp_path / "config.json")))
  workdir = str(tmp_path / "multi")
  logs = tmp_path / "logs"
  logs.mkdir()

  # Preemption of one process: both stop at the same step with a checkpoint and exit 0.
  workers = _start("train.py", config_file, workdir, logs, "train")
  log_0 = logs / "train.0.log"
  deadline = time.time() + 600
  while _logged_step(log_0.read_text()) < 8:
    assert time.time() < deadline and workers[0].poll() is None, log_0.read_text()[-3000:]
    time.sleep(0.05)
  workers[1].send_signal(signal.SIGTERM)
  first = _wait(workers, logs, "train")
  stops = [[l for l in log.splitlines() if "Stopped by" in l] for log in first]
  assert "SIGTERM" in stops[1][0] and "another process" in stops[0][0], stops
  stopped_at = {int(s[0].split(" at step ")[1].split("/")[0]) for s in stops}
  assert len(stopped_at) == 1 and 8 <= min(stopped_at) < 24, stops

  resumed = _wait(_start("train.py", config_file, workdir, logs, "resume"), logs, "resume")
  assert f"starting at step {min(stopped_at)}" in resumed[0]
  _wait(_start("eval.py", config_file, workdir, logs, "eval"), logs, "eval")
  multi = json.loads((tmp_path / "multi" / "eval" / "report.json").read_text())
  multi_train = json.loads((tmp_path / "multi" / "train_result.json").read_text())

  assert multi_train["step"] == single_train["step"] == 24
  model = model_lib.create_model(config)
  dummy = (np.zeros((1, 16, 16, 3), np.float32),)
  mesh = sharding_lib.make_mesh(4)
  a, b = (checkpoints.restore_variables(w, model, dummy, sharding_lib.replicated(mesh))
          for w in (single_dir, workdir))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       atol=1e-5), a, b)
  # The same checkpoint evaluated by one process: the same report within 1e-5. (Evaluating
  # the one-process checkpoint as well would test nothing more: its parameters are equal
  # within 1e-5, just checked.)
  config.num_devices = 4
  reference = eval_lib.evaluate(config, workdir)
  assert multi["num_examples"] == reference["num_examples"] == 36
  np.testing.assert_allclose(multi["head_accuracy"], reference["head_accuracy"], atol=1e-6)
  assert set(multi["methods"]) == set(reference["methods"]) == {"mhex", "grad_cam"}
  for name, results in reference["methods"].items():
    assert multi["methods"][name]["num_examples"] == results["num_examples"] == 30
    for metric, value in results.items():
      np.testing.assert_allclose(multi["methods"][name][metric], value, atol=1e-5,
                                 err_msg=f"{name}/{metric}")


@pytest.mark.parametrize("argv,message", [
    (["--coordinator_address=localhost:1234"], "need --distributed"),
    (["--distributed", "--num_processes=2"], r"missing \['--coordinator_address', "
                                              r"'--process_id'\]"),
])
def test_distributed_flags_are_checked_before_starting(argv, message):
  from absl import flags
  from mhex_jax import distributed
  flag_values = flags.FlagValues()
  distributed.define_flags(flag_values)
  flag_values(["prog", *argv])
  with pytest.raises(flags.ValidationError, match=message):
    distributed.initialize(flag_values)

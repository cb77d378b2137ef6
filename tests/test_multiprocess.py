"""Evaluation in two real JAX processes (2 CPU devices each, gloo collectives) gives the report
of one process with 4 devices. Select with ``pytest -m multiprocess``."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import default
from mhex_jax import eval_lib
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
  config.data.num_train = 64
  config.data.num_eval = 36  # The last batch of 16 is padded: keep masks must line up.
  config.train.batch_size = 16
  config.train.num_epochs = 1
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


def test_two_process_evaluation_matches_one_process(tmp_path):
  config = _config()
  workdir = str(tmp_path / "run")
  train_lib.train_and_evaluate(config, workdir)
  config.num_devices = 4
  single = eval_lib.evaluate(config, workdir)
  os.remove(os.path.join(workdir, "eval", "report.json"))

  config.num_devices = None
  (tmp_path / "config.json").write_text(config.to_json())
  config_file = tmp_path / "two_process_config.py"
  config_file.write_text(CONFIG_FILE.format(path=str(tmp_path / "config.json")))
  # The README's plain-CPU recipe: every process runs eval.py with the coordinator's address.
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  address = f"localhost:{_free_port()}"
  workers = [subprocess.Popen(
      [sys.executable, "eval.py", f"--config={config_file}", f"--workdir={workdir}",
       "--distributed", f"--coordinator_address={address}", "--num_processes=2",
       f"--process_id={i}"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  for worker in workers:
    output, _ = worker.communicate(timeout=600)
    assert worker.returncode == 0, output[-3000:]
  with open(os.path.join(workdir, "eval", "report.json")) as f:
    multi = json.load(f)

  assert multi["num_examples"] == single["num_examples"] == 36
  np.testing.assert_allclose(multi["head_accuracy"], single["head_accuracy"], atol=1e-6)
  assert set(multi["methods"]) == {"mhex", "grad_cam"}
  for name, results in single["methods"].items():
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

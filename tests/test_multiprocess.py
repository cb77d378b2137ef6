"""Training (stopped and resumed) and evaluation in two real JAX processes (2 CPU devices each,
gloo collectives), against an uninterrupted two-process run and one process with 4 devices.
Select with ``pytest -m multiprocess``."""

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
from mhex_jax import evaluators
from mhex_jax import model_lib
from mhex_jax import sharding as sharding_lib
from mhex_jax import tasks
from mhex_jax import train_lib
from mhex_jax.data import input_pipeline
from mhex_jax.metrics import image as image_metrics

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
  config.eval.batch_size = 16
  config.eval.num_explain = 30
  config.eval.first_example = 3
  config.eval.num_gallery = 4
  config.eval.deletion_steps = 4
  config.eval.methods = "mhex,grad_cam"
  config.eval.save_maps = True
  return config


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(script, config_file, workdir, log_dir, name):
  """The plain-CPU recipe of docs/usage.md: each of two processes runs the script with the
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


def _losses(workdir) -> dict[int, float]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r}


# Maps lie in [0, 1]. Two device layouts run each example through the same operations, but
# the kernels may sum in another order (another CPU's vector width, blocking or threading):
# float32 reordering moves a sum of n terms by at most about n·2^-24 of the sum of their
# magnitudes; the maps' longest sums here (a 3×3×C convolution, C ≤ 32) stay far below
# 1e-5 of the maps' range. Probabilities (the metrics are probabilities and their ratios,
# ≤ 1) get the same bound. Measured on one Xeon: equal bit for bit; one process with 2
# instead of 4 devices (8 examples per device instead of 4, other kernels): maps within
# 6e-6, continuous metrics within 4e-6.
ROUNDING = 1e-5


def _metrics_of_maps(config, workdir, maps, targets):
  """Per-example metrics that one process (4 devices) computes from the given maps and targets
  of the explained examples, with eval's own metric program."""
  mesh = sharding_lib.make_mesh(4)
  model = model_lib.create_model(config)
  _, eval_ds = input_pipeline.get_datasets(config.data, config.model.num_classes,
                                           need_train=False)
  variables = checkpoints.restore_variables(workdir, model, eval_ds.dummy_inputs(),
                                            sharding_lib.replicated(mesh))
  metrics_fn = tasks.task_of(model).metrics_fn(model, config.eval, config.data,
                                               eval_ds.has_masks)

  def metrics_and_margins(variables, batch, maps, targets):
    """The metrics, p(x_keep) − p(x) (average_increase's test) and the top-2 probability
    margin of the explained model (the prediction's)."""
    out, _ = metrics_fn(variables, batch, maps, targets)
    probs = lambda x: jax.nn.softmax(model.apply(variables, x, train=False)[-1])
    p_keep = image_metrics.target_probability(probs, batch["image"] * maps[..., None], targets)
    out["increase_margin"] = p_keep - image_metrics.target_probability(probs, batch["image"],
                                                                       targets)
    top2 = jax.lax.top_k(probs(batch["image"]), 2)[0]
    out["target_margin"] = top2[:, 0] - top2[:, 1]
    return out

  metric_step = evaluators.metric_step(metrics_and_margins, mesh)
  parts, done = {}, 0
  for batch, keep in evaluators.explained_batches(
      eval_ds, ("image", "label", "mask"), batch_size=config.eval.batch_size,
      first=config.eval.get("first_example", 0), count=config.eval.num_explain):
    rows = np.flatnonzero(keep)
    batch_maps = np.zeros(batch["image"].shape[:3], np.float32)
    batch_targets = np.zeros(len(keep), np.int32)
    batch_maps[rows] = maps[done:done + len(rows)]
    batch_targets[rows] = targets[done:done + len(rows)]
    done += len(rows)
    out = metric_step(variables, sharding_lib.shard_batch(batch, mesh),
                         *sharding_lib.shard_batch({"m": batch_maps, "t": batch_targets},
                                                   mesh).values())
    for key, values in sharding_lib.gather_batch(out).items():
      parts.setdefault(key, []).append(values[keep])
  return {key: np.concatenate(values) for key, values in parts.items()}


def _check_same_evaluation(multi, reference, metrics_of_multi_maps):
  """Per-example arrays of the two-process evaluation (``multi``) against one process'
  (``reference``) of the same checkpoint, and against the metrics one process computes from
  the two-process maps (``metrics_of_multi_maps``, with the margins of the two comparisons
  that decide: average_increase's p(x_keep) − p(x) and the prediction's top-2 margin)."""
  assert list(multi["example"]) == list(reference["example"]) == list(range(3, 33))
  for name in ("mhex", "grad_cam"):
    recomputed = dict(metrics_of_multi_maps[name])
    # The targets are predictions from logits that agree within rounding: they may differ
    # only where the top two probabilities do within it (then so do the maps).
    decided = recomputed.pop("target_margin") > 2 * ROUNDING
    np.testing.assert_array_equal(multi[f"{name}/targets"][decided],
                                  reference[f"{name}/targets"][decided])
    np.testing.assert_allclose(multi[f"{name}/maps"][decided],
                               reference[f"{name}/maps"][decided], rtol=0, atol=ROUNDING,
                               err_msg=f"{name} maps")
    # The metrics are not compared with the reference's: deletion/insertion rank the pixels
    # by the map, pointing games take its argmax and the area thresholds it, so a near-tie
    # that rounding flips moves them by a whole step (a pixel between steps moved deletion
    # AUC by 0.02 between batch layouts). Given the maps, they are continuous: the two
    # processes' metrics are the ones one process computes from the same maps.
    increase_decided = np.abs(recomputed.pop("increase_margin")) > 2 * ROUNDING
    np.testing.assert_array_equal(recomputed.pop(image_metrics.MASK_WEIGHT) > 0,
                                  multi["mask_nonempty"])
    for metric, values in recomputed.items():
      expected, got = values, multi[f"{name}/{metric}"]
      if metric == "average_increase":  # p(x_keep) > p(x): a comparison of probabilities.
        expected, got = expected[increase_decided], got[increase_decided]
      np.testing.assert_allclose(got, expected, rtol=0, atol=ROUNDING,
                                 err_msg=f"{name}/{metric}")
    # Ties are rare, not the rule (here the smallest margins are 3.6e-3 and 7.7e-5: none).
    assert decided.sum() >= 28 and increase_decided.sum() >= 28


def test_two_process_training_and_evaluation_match_one_process(tmp_path):
  """Two processes × 2 CPU devices against one process with 4.

  Training: a two-process run stopped by SIGTERM to one process and resumed ends bit for bit
  where an uninterrupted two-process run ends (parameters, batch statistics, every logged
  loss); its first step's loss is one process' within float32 rounding. (Later steps are not
  compared with one process: cross-device sums, such as the batch-norm statistics and the
  gradient mean, are added in another order by gloo than within one process, and a few ulps
  at step 1 grow to 1e-2 in the parameters by step 24 of this tiny network's training.)

  Evaluation of one checkpoint: the two-process report is the mean of its per-example arrays,
  with the same targets as one process, maps within rounding, and the metrics one process
  computes from those maps.
  """
  config = _config()
  (tmp_path / "config.json").write_text(config.to_json())
  config_file = tmp_path / "two_process_config.py"
  config_file.write_text(CONFIG_FILE.format(path=str(tmp_path / "config.json")))
  workdir, straight = tmp_path / "multi", tmp_path / "straight"
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
  _wait(_start("train.py", config_file, straight, logs, "straight"), logs, "straight")
  multi_train = json.loads((workdir / "train_result.json").read_text())
  assert multi_train == json.loads((straight / "train_result.json").read_text())
  assert multi_train["step"] == 24
  assert _losses(workdir) == _losses(straight) and len(_losses(workdir)) == 24
  model = model_lib.create_model(config)
  dummy = (np.zeros((1, 16, 16, 3), np.float32),)
  mesh = sharding_lib.make_mesh(4)
  a, b = (checkpoints.restore_variables(str(w), model, dummy, sharding_lib.replicated(mesh))
          for w in (workdir, straight))
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)

  # One process' first step: the same initial parameters and batch; the loss sums over the
  # devices (and the batch norms' statistics over 9 layers) differ by a few ulps (2^-24 ≈
  # 6e-8 of the value; measured 9e-8). A batch split wrongly between the processes moves it
  # by about 1e-2.
  config.num_devices = 4
  single = tmp_path / "single"
  train_lib.train_and_evaluate(config, str(single), max_steps=1)
  np.testing.assert_allclose(_losses(single)[1], _losses(workdir)[1], rtol=1e-5)

  _wait(_start("eval.py", config_file, workdir, logs, "eval"), logs, "eval")
  report = json.loads((workdir / "eval" / "report.json").read_text())
  with np.load(workdir / "eval" / "per_example.npz") as arrays:
    multi = dict(arrays)
  for name in ("mhex", "grad_cam"):
    per_method = {k.split("/")[1]: v for k, v in multi.items() if k.startswith(name + "/")}
    if "mask_nonempty" in multi:
      per_method["mask_nonempty"] = multi["mask_nonempty"]
    assert report["methods"][name] == evaluators.metric_means(name, per_method)
    assert report["methods"][name]["num_examples"] == 30
  recomputed = {name: _metrics_of_maps(config, str(workdir), multi[f"{name}/maps"],
                                       multi[f"{name}/targets"]) for name in ("mhex", "grad_cam")}
  reference_report = eval_lib.evaluate(config, str(workdir))  # Overwrites the eval directory.
  with np.load(workdir / "eval" / "per_example.npz") as arrays:
    reference = dict(arrays)
  _check_same_evaluation(multi, reference, recomputed)
  # Accuracies count argmaxes: equal unless two logits are within rounding of each other.
  assert report["num_examples"] == reference_report["num_examples"] == 36
  assert report["head_accuracy"] == reference_report["head_accuracy"]


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

"""Checkpoints: the checksum by hand; a damaged latest step (four ways) recovered by train and
eval from the previous step; a checkpoint of another model named array by array; eval reads
only params and batch statistics; metrics.jsonl after a resume equals an uninterrupted run's."""

import json
import logging
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from damage import DAMAGES, damage
from mhex_jax import checkpoints
from mhex_jax import errors
from mhex_jax import model_lib
from mhex_jax import sharding as sharding_lib
from mhex_jax import train_lib
from test_train import DUMMY, tiny_config


def _reference_checksum(x: np.ndarray) -> int:
  """Σ_i word_i · (i · 0x9E3779B1 mod 2³² | 1) mod 2³², in Python integers."""
  words = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
  flat = [int(w) for w in np.ascontiguousarray(x).view(words).ravel()]
  return sum(w * ((i * 0x9E3779B1 % 2**32) | 1) for i, w in enumerate(flat)) % 2**32


def test_checksum_by_hand_and_it_sees_every_change():
  rng = np.random.default_rng(0)
  tree = {"f32": rng.normal(size=(3, 5)).astype(np.float32),
          "i32": np.arange(-4, 7, dtype=np.int32),
          "bf16": rng.normal(size=(7,)).astype(jnp.bfloat16),
          "flag": np.array([True, False, True])}
  sums = checkpoints.checksums(jax.tree.map(jnp.asarray, tree))
  for name, x in tree.items():
    expected = _reference_checksum(x.astype(np.uint8) if x.dtype == bool else x)
    assert sums[name] == expected, name
  # One flipped bit anywhere, or two values swapped, changes the checksum.
  x = tree["f32"]
  for index in [(0, 0), (1, 3), (2, 4)]:
    for bit in (0, 17, 31):
      changed = x.copy()
      changed.view(np.uint32)[index] ^= np.uint32(1 << bit)
      assert checkpoints.checksums({"f32": jnp.asarray(changed)})["f32"] != sums["f32"]
  swapped = x.copy()
  swapped[0, 0], swapped[2, 4] = x[2, 4], x[0, 0]
  assert checkpoints.checksums({"f32": jnp.asarray(swapped)})["f32"] != sums["f32"]


def _variables_at(workdir, step, config):
  """{"params", "batch_stats"} of one step, read with orbax directly."""
  manager = checkpoints.manager(workdir)
  restored = manager.restore(step, args=train_lib.ocp.args.Composite(
      variables=train_lib.ocp.args.PyTreeRestore()))["variables"]
  manager.close()
  return restored


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished tiny run (8 steps, checkpoints at 3, 6 and 8) and its variables at 6 and 8."""
  config = tiny_config()
  workdir = tmp_path_factory.mktemp("trained") / "run"
  assert train_lib.train_and_evaluate(config, str(workdir))["step"] == 8
  return config, workdir, _variables_at(workdir, 6, config), _variables_at(workdir, 8, config)


def _assert_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _restore(config, workdir):
  model = model_lib.create_model(config)
  return checkpoints.restore_variables(str(workdir), model, DUMMY,
                                       sharding_lib.replicated(sharding_lib.make_mesh()))


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_latest_step_falls_back_in_eval_and_train(trained, tmp_path, how, caplog):
  config, source, at_6, at_8 = trained
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  damage(workdir / "checkpoints" / "8", how)

  with caplog.at_level(logging.WARNING):
    _assert_equal(_restore(config, workdir), at_6)  # Eval reads step 6; nothing is moved.
  warning = " ".join(r.getMessage() for r in caplog.records)
  assert f"{workdir / 'checkpoints' / '8'}" in warning and "step 6" in warning, warning
  assert (workdir / "checkpoints" / "8").exists()

  # Training resumes from step 6, moves step 8 aside and ends where the intact run ended.
  assert train_lib.train_and_evaluate(config, str(workdir))["step"] == 8
  assert (workdir / checkpoints.DAMAGED_DIR / "8").is_dir()
  _assert_equal(_variables_at(workdir, 8, config), at_8)


def test_every_step_damaged_names_each_directory(trained, tmp_path):
  config, source, _, _ = trained
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  for step, how in zip((3, 6, 8), ("emptied", "truncated", "overwritten")):
    damage(workdir / "checkpoints" / str(step), how)
  with pytest.raises(errors.CheckpointError) as error:
    _restore(config, workdir)
  message = str(error.value)
  assert message.startswith(f"No intact checkpoint in {workdir / 'checkpoints'}")
  for step in (3, 6, 8):
    assert f"{workdir / 'checkpoints' / str(step)}:" in message
  assert "fail their checksums" in message and "Move these step directories" in message
  with pytest.raises(errors.CheckpointError, match="No intact checkpoint"):
    train_lib.train_and_evaluate(config, str(workdir))


def test_checkpoint_of_another_model_is_named_array_by_array(trained):
  config, workdir, _, _ = trained
  wider = tiny_config()
  wider.model.width = 8
  with pytest.raises(errors.CheckpointError) as error:
    _restore(wider, workdir)
  message = str(error.value)
  assert (f"The checkpoint {workdir / 'checkpoints' / '8'} does not match the model this "
          "config builds: batch_stats/block_00/bn1/mean: float32[4] in the checkpoint, "
          "float32[8] for this config") in message, message
  assert "strict" not in message
  plain = tiny_config()
  plain.model.mhex = False
  with pytest.raises(errors.CheckpointError,
                     match="the config has arrays the checkpoint lacks: params/classifier/bias, "
                           "params/classifier/kernel; the checkpoint has arrays the config "
                           r"lacks: params/block_00/mhex \(2 arrays\)"):
    _restore(plain, workdir)


def test_eval_reads_no_optimizer_state(trained):
  config, workdir, _, at_8 = trained
  other = tiny_config()
  other.train.optimizer = "adamw"  # Another optimizer state: eval does not read it.
  _assert_equal(_restore(other, workdir), at_8)


def test_metrics_after_a_resume_equal_an_uninterrupted_run(tmp_path):
  config = tiny_config()
  config.data.num_train = 160  # 10 steps per epoch, 20 steps.
  config.train.log_every_steps = 4
  config.train.checkpoint_every_steps = 7
  straight = tmp_path / "straight"
  train_lib.train_and_evaluate(config, str(straight))
  resumed = tmp_path / "resumed"
  # Stops after steps 7 and 9 (checkpoints there, between log lines) and at 15, whose
  # checkpoint is then lost (a crash after the line of step 12 was written).
  for stop in (7, 9, 15):
    train_lib.train_and_evaluate(config, str(resumed), max_steps=stop)
  shutil.rmtree(resumed / "checkpoints" / "15")
  train_lib.train_and_evaluate(config, str(resumed))
  lines = (resumed / "metrics.jsonl").read_text().splitlines()
  assert lines == (straight / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [4, 8, 12, 16, 20, 20]

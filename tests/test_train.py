"""Training: loss, sharded step == single-device step, checkpoint resume, config errors."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from mhex_jax import checkpoints
from mhex_jax import model_lib
from mhex_jax import sharding as sharding_lib
from mhex_jax import train_lib
from mhex_jax.cli import logs

DUMMY = (np.zeros((1, 16, 16, 3), np.float32),)


def tiny_config():
  config = default.get_config()
  config.model.width = 4
  config.data.image_size = 16
  config.data.num_train = 64
  config.data.num_eval = 16
  config.train.batch_size = 16
  config.train.num_epochs = 2
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 3
  config.eval.batch_size = 16
  return config


def test_deep_supervision_loss_by_hand():
  logits = jnp.array([[[2.0, 0.0], [0.0, 0.0]],
                      [[0.0, 1.0], [3.0, 1.0]]])  # [L=2, B=2, K=2]
  labels = jnp.array([0, 1])
  weights = jnp.array([1.0, 0.5])
  loss, per_head = train_lib.deep_supervision_loss(logits, labels, weights)
  ce = lambda z, y: -jax.nn.log_softmax(jnp.asarray(z))[y]
  head0 = (ce([2.0, 0.0], 0) + ce([0.0, 0.0], 1)) / 2
  head1 = (ce([0.0, 1.0], 0) + ce([3.0, 1.0], 1)) / 2
  np.testing.assert_allclose(per_head, [head0, head1], rtol=1e-6)
  np.testing.assert_allclose(loss, head0 + 0.5 * head1, rtol=1e-6)


def _one_step(config, mesh, state, batch):
  model = model_lib.create_model(config)
  optimizer = train_lib.create_optimizer(config.train, steps_per_epoch=4)
  step = train_lib.jit_train_step(
      train_lib.make_train_step(model, optimizer, jnp.ones((8,))), mesh)
  state = sharding_lib.replicate(state, mesh)
  return step(state, sharding_lib.shard_batch(batch, mesh))


def test_sharded_step_equals_single_device_step():
  """One device against 8 (2 examples each) for two steps: the same function up to the order of
  the cross-device sums (the batch norms' statistics, the loss and gradient means), which
  float32 rounds to a few ulps (2^-24 ≈ 6e-8 of the value)."""
  assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
  config = tiny_config()
  model = model_lib.create_model(config)
  optimizer = train_lib.create_optimizer(config.train, steps_per_epoch=4)
  state = train_lib.create_train_state(model, optimizer, DUMMY, seed=0)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
           "label": rng.integers(0, 4, size=16).astype(np.int32)}
  # Two steps, so momentum and BN statistics from step one feed step two.
  results = []
  for n in (1, 8):
    mesh = sharding_lib.make_mesh(n)
    first, m1 = _one_step(config, mesh, jax.tree.map(jnp.copy, state), batch)
    first = jax.device_get(first)
    s, m2 = _one_step(config, mesh, first, batch)
    results.append((first, jax.device_get(s), float(m1["loss"]), float(m2["loss"])))
  (first_1, s1, a1, b1), (first_8, s8, a8, b8) = results
  np.testing.assert_allclose([a8, b8], [a1, b1], rtol=1e-5)  # Measured: equal.
  # Step 1's learning rate is 0 (warmup from 0): the parameters are still the initial ones,
  # exactly (p − 0·u = p).
  jax.tree.map(np.testing.assert_array_equal, first_1.params, first_8.params)
  jax.tree.map(np.testing.assert_array_equal, first_1.params, jax.device_get(state.params))
  # Step 2 moves them by lr·(momentum-corrected gradient), up to 0.14 here: the two layouts'
  # moves agree to 1e-4 of the largest (measured 1.2e-7 absolute, 1e-6 of it); a gradient
  # summed wrongly across devices would be off by O(1) of it.
  largest_move = max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))),
                                                  s1.params, first_1.params)))
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), s1.params,
                                       s8.params))
  assert max(diffs) <= 1e-4 * largest_move, (max(diffs), largest_move)
  # Batch statistics (EMA of cross-device means and variances, |values| ≤ 1.3): within 1e-5
  # (measured 4.8e-7).
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
               s8.batch_stats, s1.batch_stats)


def _load_params(workdir, config):
  from mhex_jax import eval_lib
  model = model_lib.create_model(config)
  return checkpoints.restore_variables(workdir, model, DUMMY,
                                       sharding_lib.replicated(sharding_lib.make_mesh()))


def test_interrupted_run_resumes_at_checkpoint_with_identical_parameters(tmp_path):
  config = tiny_config()  # 4 steps per epoch, 8 steps, checkpoints every 3.
  straight = str(tmp_path / "straight")
  result = train_lib.train_and_evaluate(config, straight)
  assert result["step"] == 8

  interrupted = str(tmp_path / "interrupted")
  partial = train_lib.train_and_evaluate(config, interrupted, max_steps=5)
  assert partial["step"] == 5 and "accuracy" not in partial
  # Simulate a crash after the step-3 checkpoint: drop the checkpoint written at the stop.
  import shutil
  shutil.rmtree(os.path.join(interrupted, "checkpoints", "5"))
  manager = checkpoints.manager(interrupted)
  assert manager.latest_step() == 3
  manager.close()
  resumed = train_lib.train_and_evaluate(config, interrupted)
  assert resumed["step"] == 8
  a, b = _load_params(straight, config), _load_params(interrupted, config)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  assert resumed["accuracy"] == result["accuracy"]
  # Metrics are written as JSON lines.
  lines = [json.loads(l) for l in open(os.path.join(straight, "metrics.jsonl"))]
  assert lines[0]["step"] == 2 and "train/loss" in lines[0]
  assert os.listdir(os.path.join(straight, "tensorboard"))


def test_batch_size_must_divide_devices():
  mesh = sharding_lib.make_mesh(8)
  with pytest.raises(ValueError, match="batch_size=12 must be divisible by the 8 devices"):
    sharding_lib.check_batch_size(12, mesh)


def test_labels_out_of_range_are_rejected(tmp_path):
  config = tiny_config()
  config.model.num_classes = 3  # The synthetic data has 4 classes.
  with pytest.raises(ValueError, match=r"label 3 .* outside \[0, 3\)"):
    train_lib.train_and_evaluate(config, str(tmp_path / "w"))


def test_wrong_channel_count_is_rejected():
  config = tiny_config()
  model = model_lib.create_model(config)
  with pytest.raises(ValueError, match="expects 3 input channels"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    model.init(jax.random.key(0), jnp.zeros((16, 16, 3)))


def test_unknown_model_options_are_rejected():
  config = tiny_config()
  config.model.gate_init = "ones"
  with pytest.raises(ValueError, match="gate_init='ones'"):
    model_lib.create_model(config).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  config = tiny_config()
  config.model_name = "resnet19"
  with pytest.raises(ValueError, match="resnet19"):
    model_lib.create_model(config)


def _signal_config():
  config = tiny_config()
  config.data.num_train = 320  # 20 steps per epoch, 60 steps: the signal lands mid-run.
  config.train.num_epochs = 3
  # Checkpoints fall between log lines, so a resumed run must carry the unlogged metrics.
  config.train.log_every_steps = 3
  config.train.checkpoint_every_steps = 10
  return config


@pytest.fixture(scope="module")
def straight_signal_run(tmp_path_factory):
  """Parameters and metrics.jsonl lines of an uninterrupted run of ``_signal_config``."""
  config = _signal_config()
  workdir = str(tmp_path_factory.mktemp("straight"))
  assert train_lib.train_and_evaluate(config, workdir)["step"] == 60
  return _load_params(workdir, config), open(os.path.join(workdir, "metrics.jsonl")).read()


def _train_until(config_file, workdir, at: int, signum):
  """Runs train.py and sends ``signum`` once it logs a step >= ``at``; (return code, lines)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # The runs compile the programs of the uninterrupted run in this process: the session's
  # persistent cache (tests/conftest.py) reads them back.
  env = {**os.environ, "PYTHONPATH": root}
  process = subprocess.Popen(
      [sys.executable, "train.py", f"--config={config_file}", f"--workdir={workdir}"],
      cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines, sent = [], False
  for line in process.stdout:
    lines.append(line)
    if "| loss" in line and not sent and int(line.split("step ")[1].split("/")[0]) >= at:
      process.send_signal(signum)
      sent = True
  return process.wait(timeout=300), lines


def _logged_steps(lines):
  return [int(l.split("step ")[1].split("/")[0]) for l in lines if "| loss" in l]


def test_sigint_is_handled_as_sigterm():
  """Ctrl-C takes the path SIGTERM takes end to end below: a stop request, no exception, and
  the previous handler back afterwards."""
  before = signal.getsignal(signal.SIGINT)
  with train_lib.StopSignals() as stop:
    assert not stop.requested()
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested() and stop.received == "SIGINT"
  assert signal.getsignal(signal.SIGINT) is before


def test_stopped_run_resumes_bit_identical(tmp_path, straight_signal_run):
  """kill -9, twice at random points: nothing can be saved; each rerun resumes from the last
  finished checkpoint (at most one interval, plus a save that was in flight, is lost). Then
  SIGTERM (SIGINT takes the same handler) on the third run: exit 0 with the current step
  saved. The run then ends bit-identical to an uninterrupted one, with the same metrics.jsonl
  line for line."""
  config = _signal_config()
  (tmp_path / "config.json").write_text(config.to_json())
  config_file = tmp_path / "signal_config.py"
  config_file.write_text(
      "import json, ml_collections\n\ndef get_config():\n"
      f"  return ml_collections.ConfigDict(json.load(open({str(tmp_path / 'config.json')!r})))\n")
  workdir = str(tmp_path / "run")
  every = config.train.checkpoint_every_steps
  latest = 0
  for at in sorted(np.random.default_rng().choice(np.arange(12, 45), 2, replace=False)):
    returncode, lines = _train_until(config_file, workdir, at,
                                     signal.SIGKILL)
    assert returncode == -signal.SIGKILL, "".join(lines[-30:])
    manager = checkpoints.manager(workdir)
    # None: no save had finished (killed at step 12 with step 10's save in flight), as 0.
    latest = manager.latest_step() or 0
    manager.close()
    logged = max(_logged_steps(lines))
    assert latest in (logged // every * every, logged // every * every - every), (latest,
                                                                                  logged)

  returncode, lines = _train_until(config_file, workdir, latest + 6,
                                   signal.SIGTERM)
  assert returncode == 0, "".join(lines[-30:])
  assert f"starting at step {latest}" in "".join(lines), "".join(lines[-30:])
  stops = [l for l in lines if "Stopped by" in l]
  assert stops and "SIGTERM" in stops[0], "".join(lines[-30:])
  stopped_at = int(stops[0].split(" at step ")[1].split("/")[0])
  manager = checkpoints.manager(workdir)
  assert latest + 6 <= stopped_at < 60 and manager.latest_step() == stopped_at
  manager.close()

  resumed = train_lib.train_and_evaluate(config, workdir)
  assert resumed["step"] == 60
  params, metrics = straight_signal_run
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               params, _load_params(workdir, config))
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics


def test_non_finite_loss_stops_with_a_true_message_and_saves_nothing_non_finite(tmp_path):
  config = tiny_config()
  config.train.learning_rate = 1e3
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1
  workdir = str(tmp_path / "run")
  with pytest.raises(FloatingPointError) as error:
    train_lib.train_and_evaluate(config, workdir)
  message = str(error.value)
  manager = checkpoints.manager(workdir)
  steps = manager.all_steps()
  if steps:
    assert f"The last checkpoint, at step {max(steps)}, holds finite values" in message
  else:
    assert "No checkpoint was saved" in message
  template = train_lib.create_train_state(
      model_lib.create_model(config),
      train_lib.create_optimizer(config.train, steps_per_epoch=4), DUMMY, config.seed)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
  for step in steps:
    items = checkpoints.split_state(abstract)
    restored = manager.restore(step, args=train_lib.ocp.args.Composite(**{
        item: train_lib.ocp.args.PyTreeRestore(tree) for item, tree in items.items()}))
    state = [restored[item] for item in items]
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state)), step
  manager.close()


def test_library_info_lines_are_quieted_but_warnings_kept():
  import logging
  logs.quiet_library_logs()
  logs.quiet_library_logs()  # Idempotent.
  handler = train_lib.logging.get_absl_handler()
  assert sum(isinstance(f, logs.LibraryInfoFilter) for f in handler.filters) == 1

  def record(level, path):
    return logging.LogRecord("absl", level, path, 1, "message", None, None)

  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not handler.filter(record(logging.INFO, orbax))
  assert handler.filter(record(logging.WARNING, orbax))
  assert handler.filter(record(logging.INFO, "/repo/mhex_jax/train_lib.py"))


def test_asyncio_lines_about_orbax_failures_lose_their_traceback():
  """A full disk fails orbax's background writes; asyncio logs each ("Task exception was never
  retrieved") with its traceback. The line stays, the traceback goes; others keep theirs."""
  import logging
  import sys

  def exc_info_from(filename):
    code = compile("raise ValueError('RESOURCE_EXHAUSTED: No space left on device')",
                   filename, "exec")
    try:
      exec(code)  # pylint: disable=exec-used
    except ValueError:
      return sys.exc_info()

  def record(filename):
    return logging.LogRecord("asyncio", logging.ERROR, "/usr/lib/python3/asyncio/base_events.py",
                             1771, "Task exception was never retrieved", None,
                             exc_info_from(filename))

  log_filter = logs.LibraryInfoFilter()
  from_orbax = record("/site-packages/orbax/checkpoint/_src/serialization/serialization.py")
  assert log_filter.filter(from_orbax) and from_orbax.exc_info is None
  from_elsewhere = record("/repo/user_code.py")
  assert log_filter.filter(from_elsewhere) and from_elsewhere.exc_info is not None


def test_cosine_decays_to_the_end_learning_rate():
  train = tiny_config().train
  train.learning_rate, train.end_learning_rate, train.warmup_epochs = 1e-4, 2e-5, 1.0
  train.num_epochs = 5
  schedule = train_lib.create_learning_rate(train, steps_per_epoch=10)  # 10 warmup, 40 decay.
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), 1e-4, rtol=1e-6)
  for step in (20, 30, 45):
    t = (step - 10) / 40
    expected = 2e-5 + (1e-4 - 2e-5) * (1 + np.cos(np.pi * t)) / 2
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(50)), 2e-5, rtol=1e-6)
  train.end_learning_rate = None  # The default: down to 0.
  assert float(train_lib.create_learning_rate(train, 10)(50)) == 0.0

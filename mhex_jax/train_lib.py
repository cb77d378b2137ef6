"""Training: deep-supervision loss, a data-parallel jit step, checkpoints with resume.

``train_and_evaluate(config, workdir)`` is the whole job behind ``train.py``; everything it uses
is importable on its own (``create_train_state``, ``make_train_step``; the accuracy at the end is
``evaluators.Accuracy``).
"""

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

from absl import logging
import flax
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from mhex_jax import checkpoints as checkpoints_lib
from mhex_jax import config_lib
from mhex_jax import errors
from mhex_jax import evaluators
from mhex_jax import files
from mhex_jax.data import input_pipeline
from mhex_jax.data import text
from mhex_jax import metric_writers
from mhex_jax import model_lib
from mhex_jax import sharding as sharding_lib
from mhex_jax import tasks
from mhex_jax import workdir as workdir_lib
from mhex_jax import workdir_lock


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def run_steps(train_config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """The steps of the run: ``num_epochs`` epochs, or ``train.min_steps`` when that is more."""
  return max(train_config.num_epochs * steps_per_epoch, train_config.get("min_steps") or 0)


def create_learning_rate(train_config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Linear warmup then cosine decay to ``end_learning_rate`` (None: 0), or a constant rate,
  from ``config.train``; a run that ``train.min_steps`` lengthens has its warmup stretched
  in proportion."""
  total = run_steps(train_config, steps_per_epoch)
  warmup = train_config.warmup_epochs * steps_per_epoch
  if total > train_config.num_epochs * steps_per_epoch:
    warmup = train_config.warmup_epochs * total / train_config.num_epochs
  # At least one warmup step and one decay step, however short the run.
  warmup = max(int(warmup), 1)
  if train_config.schedule == "constant":
    return optax.constant_schedule(train_config.learning_rate)
  if train_config.schedule != "cosine":
    raise errors.ConfigError(
        f"Unknown train.schedule={train_config.schedule!r}; use 'cosine' or 'constant'.")
  return optax.warmup_cosine_decay_schedule(0.0, train_config.learning_rate, warmup,
                                            max(total, warmup + 1),
                                            train_config.get("end_learning_rate") or 0.0)


def create_optimizer(train_config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The optax optimiser named by ``train.optimizer`` with the section's schedule."""
  lr = create_learning_rate(train_config, steps_per_epoch)
  # Weight decay skips biases and normalisation scales (rank < 2), as usual for ResNets.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if train_config.optimizer == "sgd":
    return optax.chain(optax.add_decayed_weights(train_config.weight_decay, mask=decay_mask),
                       optax.sgd(lr, momentum=train_config.momentum, nesterov=True))
  if train_config.optimizer == "adamw":
    return optax.adamw(lr, weight_decay=train_config.weight_decay, mask=decay_mask)
  raise errors.ConfigError(f"Unknown train.optimizer={train_config.optimizer!r}; use 'sgd' or "
                           "'adamw'.")


def create_train_state(model: nn.Module, optimizer, dummy_inputs: tuple,
                       seed: int) -> TrainState:
  """Fresh parameters for inputs shaped like ``dummy_inputs`` (e.g. ``dataset.dummy_inputs()``).

  One compiled program: run eagerly, ``model.init`` and ``optimizer.init`` compile one small
  program per initialiser and operation (about 150 for ResNet-18).
  """

  def init(key, *inputs):
    variables = model.init(key, *inputs)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=optimizer.init(params))

  return jax.jit(init)(jax.random.key(seed), *dummy_inputs)


def head_weights(train_config: ml_collections.ConfigDict, num_heads: int) -> jax.Array:
  """λ_ℓ of the deep-supervision loss; all ones unless ``train.head_weights`` is set."""
  if not train_config.head_weights:
    return jnp.ones((num_heads,), jnp.float32)
  weights = tuple(train_config.head_weights)
  if len(weights) != num_heads:
    raise errors.ConfigError(f"train.head_weights has {len(weights)} entries but the model has "
                             f"{num_heads} heads.")
  return jnp.asarray(weights, jnp.float32)


def deep_supervision_loss(head_logits: jax.Array, labels: jax.Array, weights: jax.Array,
                          label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Σ_ℓ λ_ℓ · CE(o_ℓ, y), averaged over the batch.

  Args:
    head_logits: f32[L, B, K]; labels: int[B]; weights: f32[L].

  Returns:
    (loss scalar, per-head mean cross-entropy f32[L]).
  """
  num_classes = head_logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  per_head = jnp.mean(optax.softmax_cross_entropy(head_logits, targets[None]), axis=1)
  return jnp.sum(weights * per_head), per_head


def make_train_step(model: nn.Module, optimizer, weights: jax.Array,
                    label_smoothing: float = 0.0, seed: int = 0) -> Callable:
  """(state, batch) -> (state, metrics), pure; jit it with ``jit_train_step``."""
  task = tasks.task_of(model)

  def train_step(state: TrainState, batch):
    # Dropout noise is a function of (seed, step), so a resumed run repeats it exactly.
    dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
      head_logits, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, *task.model_args(batch),
          train=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      loss, per_head = deep_supervision_loss(head_logits, batch["label"], weights,
                                             label_smoothing)
      return loss, (head_logits, updates, per_head)

    (loss, (head_logits, updates, per_head)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, param_updates),
                              batch_stats=updates["batch_stats"], opt_state=opt_state)
    accuracy = jnp.mean(jnp.argmax(head_logits[-1], -1) == batch["label"])
    metrics = {"loss": loss, "accuracy": accuracy, "final_head_ce": per_head[-1]}
    return new_state, metrics

  return train_step


def jit_train_step(train_step: Callable, mesh) -> Callable:
  """Data-parallel jit: state replicated (and donated), batch split over the data axis."""
  return jax.jit(train_step,
                 in_shardings=(sharding_lib.replicated(mesh), sharding_lib.batch_sharded(mesh)),
                 out_shardings=sharding_lib.replicated(mesh), donate_argnums=(0,))


def restore_or_init(checkpoints, state: TrainState) -> tuple[TrainState, list[dict]]:
  """The latest intact checkpoint in the workdir (damaged later steps are moved aside), or
  ``state`` when there is none; with the metrics logged at the next log step."""
  targets = jax.tree.map(ocp.utils.to_shape_dtype_struct, checkpoints_lib.split_state(state))
  restored = checkpoints_lib.restore(checkpoints, targets, move_damaged=True)
  if restored is None:
    return state, []
  logging.info("Resuming from checkpoint at step %d.", restored.step)
  variables = restored.items[checkpoints_lib.VARIABLES]
  optimizer = restored.items[checkpoints_lib.OPTIMIZER]
  return TrainState(step=optimizer["step"], params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=optimizer["opt_state"]), restored.pending_metrics


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _host_metrics(accumulated: list[dict[str, Any]]) -> list[dict[str, float]]:
  """Per-step metrics as Python floats (one device sync for the lot): what a checkpoint keeps
  of the steps since the last log line, so the resumed run's next line is unchanged."""
  return [{k: float(v) for k, v in m.items()} for m in jax.device_get(accumulated)]


def _mean_metrics(accumulated: list[dict[str, float]]) -> dict[str, float]:
  return {k: float(np.mean(np.asarray([m[k] for m in accumulated], np.float64)))
          for k in accumulated[0]}


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_finite(step: int, metrics: dict[str, float], state: Optional[TrainState],
                  manager: ocp.CheckpointManager, learning_rate) -> None:
  """Raises a FloatingPointError when the metrics (or ``state``'s parameters) are not finite,
  after the saves in flight have finished, saying which checkpoint is left to resume from."""
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if state is not None and not bad and not bool(_all_finite((state.params, state.opt_state))):
    bad = {"parameters": "not all finite"}
  if not bad:
    return
  manager.wait_until_finished()
  last = manager.latest_step()
  kept = (f"The last checkpoint, at step {last}, holds finite values (rerunning resumes from "
          "it)" if last is not None else "No checkpoint was saved")
  raise FloatingPointError(f"Non-finite training metrics at step {step}: {bad}. {kept}; lower "
                           f"train.learning_rate (now {learning_rate}) or check the input data.")


@contextlib.contextmanager
def _saving(manager: ocp.CheckpointManager, started: list[int]):
  """Turns a save that ran out of disk space into a CheckpointError saying so first. Saves run
  in the background, so the failure may surface at a later save: ``started`` are the steps
  whose saves began, and the first of them that is not complete is named."""
  try:
    yield
  except Exception as error:
    if not started or not checkpoints_lib.is_disk_full(error):
      raise
    complete = set(manager.all_steps())
    failed = min((s for s in started if s not in complete), default=started[-1])
    last = max((s for s in complete if s < failed), default=None)
    raise checkpoints_lib.disk_full_error(manager.directory, failed, last) from None


class StopSignals:
  """Turns SIGTERM and SIGINT (preemption, Ctrl-C) into a request to checkpoint and stop at the
  next step boundary, instead of dying mid-step or mid-save. ``requested()`` is agreed by all
  processes (a small all-gather when there are several), so they stop at the same step."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: Optional[str] = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc_info):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def requested(self) -> bool:
    flag = self.received is not None
    if jax.process_count() > 1:
      flag = bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
    return flag


@contextlib.contextmanager
def training_lock(workdir: str):
  """Holds ``workdir``'s training lock (``mhex_jax.workdir_lock``) for the block: process 0
  takes it, and every process stops with ``WorkdirLocked`` when another run holds it."""
  lock, error = None, None
  if jax.process_index() == 0:
    lock = workdir_lock.WorkdirLock(workdir, " ".join([os.path.basename(sys.argv[0]),
                                                       *sys.argv[1:]]))
    try:
      lock.acquire()
    except workdir_lock.WorkdirLocked as refused:
      lock, error = None, refused
  if jax.process_count() > 1:
    held = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not held and error is None:
      error = workdir_lock.WorkdirLocked(
          f"{workdir} is in use by another training run (process 0's log names it).")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       max_steps: Optional[int] = None) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints), then evaluates.

  The run holds the workdir's training lock (``training_lock``): a second run on the same
  workdir stops before any work, naming this one.

  Args:
    config: the experiment config (see ``configs/``).
    workdir: output directory: checkpoints, metrics.jsonl, tensorboard/, config.json.
    max_steps: stop after this global step (for tests that simulate an interruption).

  Returns:
    The final eval metrics (accuracy, head_accuracy, num_examples) and the step reached; with
    ``train.keep_best`` the metrics are the best step's, with "best_step" and its validation
    figure (e.g. "val_accuracy").
  """
  mesh = sharding_lib.make_mesh(config.get("num_devices"))
  config_lib.validate(config, mesh.shape[sharding_lib.DATA_AXIS])
  files.check_workdir(workdir)
  with training_lock(workdir):
    return _train_and_evaluate(config, workdir, mesh, max_steps)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mesh,
                        max_steps: Optional[int]) -> dict[str, Any]:
  if checkpoints_lib.has_steps(workdir):
    # What the data decided for the checkpoints (workdir_lib.DECIDED_BY_DATA) stays decided.
    config = workdir_lib.with_decisions(config, workdir)
    workdir_lib.check_resume(config, workdir)  # Before any data is read.
  config = input_pipeline.with_data_classes(config)
  model = model_lib.create_model(config)  # Before the data is tokenized: a bad model fails
  model_lib.check_pretrained(config, model)  # fast, its weights file,
  weights = head_weights(config.train, tasks.head_count(model, config.data))  # its heads too.
  train_ds, eval_ds = input_pipeline.get_datasets(config.data, config.model.num_classes,
                                                  max_tokens=model_lib.max_tokens(model))
  # What the data decided is saved with the config, for eval and explain.py: the names a CSV's
  # string labels define, data.max_len="auto".
  decided = {}
  if train_ds.class_names and not config.data.get("class_names"):
    decided["class_names"] = tuple(train_ds.class_names)
  if config.data.get("max_len") == text.AUTO:
    decided["max_len"] = train_ds.max_len
  if decided:  # Through a dict: "auto" (a str) becomes an int.
    values = config.to_dict()
    values["data"].update(decided)
    config = ml_collections.ConfigDict(values)
  input_pipeline.class_names(config.data, config.model.num_classes)  # One name per class.
  keep_best = config.train.get("keep_best")
  validation = train_ds.validation
  if keep_best and validation is None:
    raise errors.ConfigError(f"train.keep_best={keep_best!r} needs a validation split of the "
                             "training data: set data.val_fraction (e.g. 0.1; text CSVs), or "
                             "unset train.keep_best to keep the last step.")
  steps_per_epoch = train_ds.num_examples // config.train.batch_size
  if steps_per_epoch == 0:
    raise errors.ConfigError(f"train.batch_size={config.train.batch_size} is larger than the "
                             f"{train_ds.num_examples} training examples.")
  total_steps = run_steps(config.train, steps_per_epoch)
  optimizer = create_optimizer(config.train, steps_per_epoch)
  state = create_train_state(model, optimizer, train_ds.dummy_inputs(), config.seed)
  if config.get("model_init"):
    variables = model_lib.load_pretrained(config, model, state.variables)
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"],
                          opt_state=optimizer.init(variables["params"]))
  task = tasks.task_of(model)
  train_step = jit_train_step(make_train_step(model, optimizer, weights,
                                              config.train.label_smoothing, config.seed), mesh)

  manager = checkpoints_lib.manager(workdir, config.train.keep_checkpoints)
  workdir_lib.save_config(config, workdir)
  state, accumulated = restore_or_init(manager, state)
  state = sharding_lib.replicate(state, mesh)
  step = int(state.step)
  writer = metric_writers.MetricWriter(workdir, resume_step=step)
  lr_fn = create_learning_rate(config.train, steps_per_epoch)
  stop = total_steps if max_steps is None else min(total_steps, max_steps)
  logging.info("Training %s for %d steps (%d per epoch) on %d devices; starting at step %d.",
               config.model_name, total_steps, steps_per_epoch, mesh.size, step)

  # ``accumulated``: the metrics since the last log line, ``unchecked``: since the last
  # finiteness check (device arrays, fetched only when logged or saved).
  unchecked, saved = [], [step]
  last_log_time, last_log_step, stopped = time.time(), step, None

  best = best_manager = None
  if keep_best:
    validation_accuracy = evaluators.Accuracy(model, validation, config.eval.batch_size, mesh,
                                              check_collapse=False)
    best_manager = checkpoints_lib.best_manager(workdir)
    best = checkpoints_lib.best_selection(best_manager)  # A resumed run's best so far.

  def select(step, state):
    """Evaluates the validation split; keeps ``state`` as the best step if it is (ties go to
    the later step)."""
    nonlocal best
    accuracy = validation_accuracy.run(state.variables)["accuracy"]
    writer.write_scalars(step, {"val/accuracy": accuracy})
    if best is None or (accuracy, step) > (best[1][keep_best], best[0]):
      checkpoints_lib.save_best(best_manager, step, state.variables, {keep_best: accuracy})
      best = (step, {keep_best: accuracy})
    logging.info("step %d: validation accuracy %.4f on %d examples; best %.4f at step %d.",
                 step, accuracy, validation.num_examples, best[1][keep_best], best[0])

  def save(step, state):
    # Never write non-finite values: check what was not checked yet, parameters included.
    _check_finite(step, _mean_metrics(_host_metrics(unchecked)) if unchecked else {}, state,
                  manager, config.train.learning_rate)
    unchecked.clear()
    accumulated[:] = _host_metrics(accumulated)
    with _saving(manager, saved[1:] + [step]):  # saved[0]: the step the run started at.
      checkpoints_lib.save(manager, step, state, accumulated)
    saved.append(step)

  try:
    with StopSignals() as signals:
      while step < stop and stopped is None:
        epoch, offset = divmod(step, steps_per_epoch)
        # The data order is a pure function of (seed, epoch): resuming skips to the same batch
        # by index, without reading the skipped ones.
        for batch in train_ds.batches(config.train.batch_size, train=True, seed=config.seed,
                                      epoch=epoch, start=offset):
          if step >= stop:
            break
          state, metrics = train_step(state, sharding_lib.shard_batch(
              {k: batch[k] for k in task.input_keys + ("label",)}, mesh))
          step += 1
          accumulated.append(metrics)
          unchecked.append(metrics)
          # Log steps depend on the step alone, so an interrupted run logs the same lines.
          if step % config.train.log_every_steps == 0 or step == total_steps:
            summary = _mean_metrics(_host_metrics(accumulated))
            _check_finite(step, summary, None, manager, config.train.learning_rate)
            now = time.time()
            rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
            summary.update(learning_rate=float(lr_fn(step)), epoch=epoch)
            # The rate is the one value a rerun cannot repeat: TensorBoard only.
            writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()},
                                 timing={"train/steps_per_second": rate})
            logging.info("step %d/%d | loss %.4f | acc %.3f | %.2f steps/s | ETA %s", step,
                         total_steps, summary["loss"], summary["accuracy"], rate,
                         _format_duration((stop - step) / max(rate, 1e-9)))
            accumulated, last_log_time, last_log_step = [], now, step
          if keep_best and (step % steps_per_epoch == 0 or step == total_steps):
            select(step, state)
          if step % config.train.checkpoint_every_steps == 0 or step == stop:
            save(step, state)
          if signals.requested():
            stopped = signals.received or "another process"
            if saved[-1] != step:
              save(step, state)
            break
  finally:
    # An exception or a signal never abandons a save in flight.
    with _saving(manager, saved[1:]):
      manager.wait_until_finished()
  if stopped is not None:
    logging.warning("Stopped by %s at step %d/%d; the checkpoint of step %d is saved in %s. "
                    "Rerun the same command to resume.", stopped, step, total_steps, step,
                    workdir)
    writer.close()
    manager.close()
    if best_manager is not None:
      best_manager.close()
    return {"step": step, "stopped_by": stopped}

  result = {"step": step}
  if step >= total_steps:
    variables = state.variables
    if keep_best:  # The eval data never chose: the validation split did.
      variables = _restore_best(best_manager, variables)
      result.update(best_step=best[0], **best[1])
      logging.info("Evaluating the best step, %d (%s %.4f; train.keep_best).", best[0],
                   keep_best, best[1][keep_best])
    result.update(evaluators.Accuracy(model, eval_ds, config.eval.batch_size,
                                      mesh).run(variables))
    writer.write_scalars(step, {"eval/accuracy": result["accuracy"],
                                **{f"eval/head_{i:02d}_accuracy": a
                                   for i, a in enumerate(result["head_accuracy"])}})
    logging.info("eval accuracy %.4f on %d examples; per head %s", result["accuracy"],
                 result["num_examples"], np.round(result["head_accuracy"], 4).tolist())
    if jax.process_index() == 0:
      files.write_text(files.workdir_path(workdir) / "train_result.json",
                       json.dumps(result, indent=2))
  writer.close()
  manager.close()
  if best_manager is not None:
    best_manager.close()
  return result


def _restore_best(best_manager: ocp.CheckpointManager, variables: dict[str, Any]
                  ) -> dict[str, Any]:
  """The variables of the best step, placed as ``variables`` are."""
  targets = jax.tree.map(ocp.utils.to_shape_dtype_struct, variables)
  restored = checkpoints_lib.restore(best_manager, {checkpoints_lib.VARIABLES: targets})
  return {"params": {}, "batch_stats": {}, **restored.items[checkpoints_lib.VARIABLES]}

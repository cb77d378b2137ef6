"""Evaluators: each a small unit whose ``run(variables)`` returns its entries of the report.

* ``Accuracy``: the final head's and every head's accuracy over the whole eval split (training
  runs it at the end, ``eval_lib.evaluate`` first);
* ``Explainers``: every method of ``explain.methods.resolve`` on the same explained examples and
  targets, each map scored by the task's metric suite; writes ``per_example.npz`` and the
  task's page of maps (``gallery.png`` or ``tokens.html``);
* ``Collaboration``: the gradient collaboration analysis of MHEX image models (per-block
  gradient cosines against MHEX's SAD and p(label), and the mean occlusion quality map).

They are built with everything they read (model, dataset, mesh, the config section they need)
and hold no state between runs, so a training loop or a notebook can run one on its own.
Programs are jitted once per evaluator and method: the explained examples are sharded over the
mesh's data axis, the variables replicated, and every process gathers the same results.
"""

import time
from typing import Any, Iterator, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mhex_jax import files
from mhex_jax import plotting
from mhex_jax import sharding as sharding_lib
from mhex_jax import tasks
from mhex_jax.data import dataset as dataset_lib
from mhex_jax.data import input_pipeline
from mhex_jax.explain import methods as methods_lib
from mhex_jax.metrics import collaboration
from mhex_jax.metrics import image as image_metrics


class Accuracy:
  """Accuracy of the final head and of every head over a whole eval dataset."""

  def __init__(self, model, dataset: dataset_lib.Dataset, batch_size: int, mesh):
    self.dataset, self.batch_size, self.mesh = dataset, batch_size, mesh
    task = tasks.task_of(model)

    def step(variables, batch):
      head_logits = model.apply(variables, *task.model_args(batch), train=False)
      valid = batch["valid"]
      correct = (jnp.argmax(head_logits, -1) == batch["label"][None]) & valid[None]
      return {"correct": jnp.sum(correct, axis=1), "count": jnp.sum(valid)}

    self._step = jax.jit(step, in_shardings=(sharding_lib.replicated(mesh),
                                             sharding_lib.batch_sharded(mesh)),
                         out_shardings=sharding_lib.replicated(mesh))

  def run(self, variables) -> dict[str, Any]:
    """{"accuracy", "head_accuracy" (one per head, final last), "num_examples"}."""
    correct, count = 0, 0
    for batch in self.dataset.batches(self.batch_size, train=False):
      out = self._step(variables, sharding_lib.shard_batch(batch, self.mesh))
      correct = correct + np.asarray(out["correct"])
      count += int(out["count"])
    head_accuracy = [float(c) / max(count, 1) for c in correct]
    return {"accuracy": head_accuracy[-1], "head_accuracy": head_accuracy,
            "num_examples": count}


def explained_batches(dataset: dataset_lib.Dataset, eval_config: ml_collections.ConfigDict,
                      fields: Sequence[str],
                      num_explain: Optional[int] = None) -> Iterator[tuple[dict, np.ndarray]]:
  """(this process' batch, keep) for eval examples ``eval.first_example`` ..
  ``eval.first_example + num_explain − 1`` (``eval.num_explain`` by default); ``keep`` marks
  them in the *global* batch, in batch order (``sharding_lib.gather_batch``), so every
  process agrees on it."""
  first = eval_config.get("first_example", 0)
  end = first + (eval_config.num_explain if num_explain is None else num_explain)
  # Every eval batch but the last is full: the batches before ``first`` are skipped by index.
  start = first // eval_config.batch_size
  seen = start * eval_config.batch_size
  for batch in dataset.batches(eval_config.batch_size, train=False, start=start):
    if seen >= end:
      return
    valid = sharding_lib.gather_batch(batch["valid"])
    index = seen + np.cumsum(valid) - 1  # Example index of every valid row.
    seen += int(valid.sum())
    keep = valid & (index >= first) & (index < end)
    if keep.any():
      yield {k: batch[k] for k in fields}, keep


def metric_step(metrics_fn: tasks.MetricsFn, mesh):
  """Jitted (scorer_variables, batch, maps, targets) -> (per-example metrics, maps as shown):
  the same program for every method (the maps have one shape), so it compiles once."""
  batch_sharded = sharding_lib.batch_sharded(mesh)
  return jax.jit(metrics_fn, in_shardings=(sharding_lib.replicated(mesh), batch_sharded,
                                           batch_sharded, batch_sharded))


def metric_means(name: str, per_example: dict[str, np.ndarray]) -> dict[str, Any]:
  """The report's entry of method ``name`` from its per-example arrays: each metric's mean (in
  float64) over the examples, the pointing games' over those with a nonempty mask (None when
  none has), and "num_examples"."""
  nonempty = per_example.get("mask_nonempty")
  means: dict[str, Any] = {}
  for metric, values in per_example.items():
    if metric in ("targets", "maps", "mask_nonempty"):
      continue
    if nonempty is not None and metric in image_metrics.MASKED_METRICS:
      values = values[nonempty]
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
      raise FloatingPointError(f"{metric} of {name} is not finite for some examples: the "
                               "maps or the scoring model produced NaN/inf.")
    means[metric] = float(values.mean()) if len(values) else None
  means["num_examples"] = len(per_example["targets"])
  return means


def save_per_example(path, per_example: dict[str, dict[str, np.ndarray]],
                     first_example: int) -> None:
  """Writes every method's per-example arrays to ``path`` (``per_example.npz``: see
  ``eval_lib``), whole (``files.atomic_open``)."""
  arrays = {f"{method}/{key}": values for method, results in per_example.items()
            for key, values in results.items() if key != "mask_nonempty"}
  for results in per_example.values():
    if "mask_nonempty" in results:
      arrays["mask_nonempty"] = results["mask_nonempty"]
    arrays["example"] = first_example + np.arange(len(results["targets"]))
  with files.atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


class Explainers:
  """Every method on the same examples and targets, scored by one metric suite.

  Args:
    model: the explained model.
    methods: ``explain.methods.resolve``'s methods, in report order.
    dataset: the eval dataset.
    config: the experiment config (its ``eval`` and ``data`` sections are read).
    mesh: the device mesh.
    out_dir: where process 0 writes ``per_example.npz`` and the page of maps; None writes
      nothing.
    scorer: (model, variables) scoring the maps; None scores with the explained model.
  """

  def __init__(self, model, methods: Sequence[methods_lib.Method],
               dataset: dataset_lib.Dataset, config: ml_collections.ConfigDict, mesh,
               out_dir=None, scorer=None):
    self.model, self.methods, self.dataset, self.mesh = model, tuple(methods), dataset, mesh
    self.eval_config, self.data_config = config.eval, config.data
    self.class_names = input_pipeline.class_names(config.data, config.model.num_classes)
    self.out_dir, self.scorer = out_dir, scorer
    self.task = tasks.task_of(model)
    self.fields = self.task.batch_fields(dataset.has_masks)

  def run(self, variables) -> dict[str, Any]:
    """{"methods": {name: metric means + "num_examples"}}."""
    if not self.methods:
      return {"methods": {}}
    scorer, scorer_variables = self.scorer or (self.model, variables)
    step = metric_step(self.task.metrics_fn(scorer, self.eval_config, self.data_config,
                                            self.dataset.has_masks), self.mesh)
    results, maps, per_example, targets = {}, {}, {}, None
    for method in self.methods:
      logging.info("Explaining with %s.", method.name)
      results[method.name], maps[method.name], targets, per_example[method.name] = (
          self._explain(method, step, variables, scorer_variables))
    first = self._gallery_batch(len(targets))  # On every process: it may gather.
    if self.out_dir is not None and jax.process_index() == 0:
      save_per_example(self.out_dir / "per_example.npz", per_example,
                       self.eval_config.get("first_example", 0))
      captions = [f"label {self.class_names[l]} / explained {self.class_names[t]}"
                  for l, t in zip(first["label"], targets)]
      self.task.render(self.out_dir, first, maps, captions, self.data_config)
    return {"methods": results}

  def _explain(self, method, step, variables, scorer_variables):
    """Runs ``method``'s program over the explained examples.

    Returns:
      (metric means + "num_examples", maps of the first ``eval.num_gallery`` examples, their
      targets, the per-example arrays: every metric, "targets", "mask_nonempty" with masks and
      "maps" with ``eval.save_maps``), the same on every process. Pointing games average over
      the examples whose mask holds a pixel (None when none does).
    """
    explain_fn = method.targeted_explainer(self.model, self.eval_config.targets)
    inputs = self.task.inputs
    explain = jax.jit(lambda v, batch: explain_fn(v, inputs(batch), batch["label"]),
                      in_shardings=(sharding_lib.replicated(self.mesh),
                                    sharding_lib.batch_sharded(self.mesh)))
    eval_config = self.eval_config
    parts: dict[str, list[np.ndarray]] = {}
    count = 0
    start = time.time()
    for batch, keep in explained_batches(self.dataset, eval_config, self.fields):
      batch = sharding_lib.shard_batch(batch, self.mesh)
      batch_maps, batch_targets = explain(variables, batch)
      out, batch_maps = step(scorer_variables, batch, batch_maps, batch_targets)
      out["targets"] = batch_targets
      if eval_config.get("save_maps") or not parts:  # The first batch holds the gallery's.
        out["maps"] = batch_maps
      for key, values in sharding_lib.gather_batch(out).items():
        parts.setdefault(key, []).append(values[keep])
      count += int(keep.sum())
      elapsed = time.time() - start
      logging.info("%s: %d/%d examples, %.0f s, about %.0f s left.", method.name, count,
                   eval_config.num_explain, elapsed,
                   elapsed / count * max(eval_config.num_explain - count, 0))
    per_example = {key: np.concatenate(values) for key, values in parts.items()}
    nonempty = per_example.pop(image_metrics.MASK_WEIGHT, None)
    if nonempty is not None:
      per_example["mask_nonempty"] = nonempty > 0
    n = min(eval_config.num_gallery, count)
    gallery_maps, gallery_targets = per_example["maps"][:n], per_example["targets"][:n]
    if not eval_config.get("save_maps"):
      del per_example["maps"]
    return (metric_means(method.name, per_example), gallery_maps, gallery_targets,
            per_example)

  def _gallery_batch(self, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` explained examples of the first explained batch (the gallery's rows)."""
    batch, keep = next(explained_batches(self.dataset, self.eval_config, self.fields))
    return {k: v[keep][:n] for k, v in sharding_lib.gather_batch(batch).items()}


class Collaboration:
  """The gradient collaboration analysis over the first ``num_examples`` explained examples:
  per-block gradient cosines s_ℓ, their correlation with MHEX's SAD and with p(label), and the
  mean occlusion quality map (7×7 grid, ``quality_map.png`` in ``out_dir``)."""

  def __init__(self, model, mhex: methods_lib.Method, dataset: dataset_lib.Dataset,
               eval_config: ml_collections.ConfigDict, mesh, num_examples: int, out_dir=None):
    self.dataset, self.eval_config, self.mesh = dataset, eval_config, mesh
    self.num_examples, self.out_dir = num_examples, out_dir
    explain_fn = mhex.explainer(model)

    def step(variables, batch):
      images, labels = batch["image"], batch["label"]
      score_fn = lambda x: jax.nn.softmax(model.apply(variables, x, train=False)[-1])
      maps = explain_fn(variables, images, labels)
      return (collaboration.block_cosines(model, variables, images, labels),
              image_metrics.soft_average_drop(score_fn, images, maps, labels),
              image_metrics.target_probability(score_fn, images, labels),
              collaboration.occlusion_quality_map(model, variables, images, labels))

    self._step = jax.jit(step, in_shardings=(sharding_lib.replicated(mesh),
                                             sharding_lib.batch_sharded(mesh)))

  def run(self, variables) -> dict[str, Any]:
    """{"collaboration": the correlations, "quality_map" and "num_examples"}."""
    parts = []
    for batch, keep in explained_batches(self.dataset, self.eval_config, ("image", "label"),
                                         self.num_examples):
      out = sharding_lib.gather_batch(
          self._step(variables, sharding_lib.shard_batch(batch, self.mesh)))
      parts.append([x[keep] for x in out])
    cosines, sad, probs, quality = (np.concatenate(x) for x in zip(*parts))
    summary = collaboration.collaboration_report(cosines, sad, probs)
    result = {k: np.asarray(v).tolist() for k, v in summary.items()}
    result["quality_map"] = quality.mean(axis=0).tolist()
    result["num_examples"] = len(cosines)
    if self.out_dir is not None and jax.process_index() == 0:
      plotting.save_quality_map(self.out_dir / "quality_map.png", quality.mean(axis=0))
    return {"collaboration": result}

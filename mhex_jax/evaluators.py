"""Evaluators: each a small unit whose ``run(variables)`` returns its entries of the report.

* ``Accuracy``: the final head's and every head's accuracy over the whole eval split (training
  runs it at the end, ``eval_lib.evaluate`` first);
* ``Explainers``: every method of ``explain.methods.resolve`` on the same explained examples and
  targets, each map scored by the task's metric suite; writes ``per_example.npz`` and the
  task's page of maps (``gallery.png`` or ``tokens.html``);
* ``Collaboration``: the gradient collaboration analysis of MHEX image models (per-block
  gradient cosines against MHEX's SAD and p(label), and the mean occlusion quality map).

They are built with everything they read, as values (model, dataset, mesh, batch size, the
examples to explain, the task's metric suite; ``eval_lib.evaluators_of`` reads them from the
config), and hold no state between runs but their compiled programs, so a training loop or a
notebook can run one on its own.
Programs are jitted once per evaluator and method: the explained examples are sharded over the
mesh's data axis, the variables replicated, and every process gathers the same results.
"""

import time
from typing import Any, Callable, Iterator, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mhex_jax import files
from mhex_jax import plotting
from mhex_jax import sharding as sharding_lib
from mhex_jax import tasks
from mhex_jax.data import dataset as dataset_lib
from mhex_jax.explain import methods as methods_lib
from mhex_jax.explain import registry
from mhex_jax.metrics import collaboration
from mhex_jax.metrics import image as image_metrics


# A model whose final head gives one class to at least this share of the examples has
# collapsed to it (``collapse_warning``).
COLLAPSE_SHARE = 0.95


class Accuracy:
  """Accuracy of the final head and of every head over a whole eval dataset.

  With ``check_collapse`` (the default) ``run`` also logs ``collapse_warning``'s warning when
  the final head's predictions collapse to one class or do no better than the eval labels'
  majority class; a training loop's validation passes False (an early epoch may do either).
  """

  def __init__(self, model, dataset: dataset_lib.Dataset, batch_size: int, mesh,
               check_collapse: bool = True):
    self.dataset, self.batch_size, self.mesh = dataset, batch_size, mesh
    self.check_collapse = check_collapse
    task = tasks.task_of(model)

    def step(variables, batch):
      head_logits = task.forward(variables, task.inputs(batch))
      valid = batch["valid"]
      predicted = jnp.argmax(head_logits, -1)
      correct = (predicted == batch["label"][None]) & valid[None]
      num_classes = head_logits.shape[-1]
      count_classes = lambda c: jnp.sum(jax.nn.one_hot(c, num_classes, dtype=jnp.int32)
                                        * valid[:, None], axis=0)
      return {"correct": jnp.sum(correct, axis=1), "count": jnp.sum(valid),
              "predicted": count_classes(predicted[-1]), "labels": count_classes(batch["label"])}

    self._step = jax.jit(step, in_shardings=(sharding_lib.replicated(mesh),
                                             sharding_lib.batch_sharded(mesh)),
                         out_shardings=sharding_lib.replicated(mesh))

  def run(self, variables) -> dict[str, Any]:
    """{"accuracy", "head_accuracy" (one per head, final last), "num_examples"}."""
    correct, count, predicted, labels = 0, 0, 0, 0
    for batch in self.dataset.batches(self.batch_size, train=False):
      out = self._step(variables, sharding_lib.shard_batch(batch, self.mesh))
      correct = correct + np.asarray(out["correct"])
      predicted = predicted + np.asarray(out["predicted"])
      labels = labels + np.asarray(out["labels"])
      count += int(out["count"])
    head_accuracy = [float(c) / max(count, 1) for c in correct]
    if self.check_collapse and count:
      warning = collapse_warning(predicted, labels, head_accuracy[-1], self.dataset.class_names)
      if warning:
        logging.warning("%s", warning)
    return {"accuracy": head_accuracy[-1], "head_accuracy": head_accuracy,
            "num_examples": count}


def collapse_warning(predicted_counts: np.ndarray, label_counts: np.ndarray, accuracy: float,
                     class_names: Optional[Sequence[str]] = None) -> Optional[str]:
  """What is wrong when a classifier learnt little beyond the class frequencies, or None.

  Args:
    predicted_counts: int [K], how many eval examples the final head gives each class.
    label_counts: int [K], how many eval examples each class holds.
    accuracy: the final head's accuracy on them.
    class_names: the K class names (None: "class k").

  Returns:
    None when the labels hold fewer than two classes, or when under COLLAPSE_SHARE of the
    predictions are one class and the accuracy is above the majority-class rate; otherwise a
    message naming both figures and the likely causes with their flags.
  """
  predicted_counts, label_counts = np.asarray(predicted_counts), np.asarray(label_counts)
  total = int(label_counts.sum())
  if total == 0 or np.count_nonzero(label_counts) < 2:
    return None
  name = lambda k: repr(class_names[k]) if class_names else f"class {k}"
  top, majority = int(np.argmax(predicted_counts)), int(np.argmax(label_counts))
  share, majority_rate = predicted_counts[top] / total, label_counts[majority] / total
  problems = []
  if share >= COLLAPSE_SHARE:
    problems.append(f"{share:.0%} of the {total} eval predictions are {name(top)}")
  if accuracy <= majority_rate:
    problems.append(f"the accuracy {accuracy:.4f} is at or below the majority-class rate "
                    f"{majority_rate:.4f} (always predicting {name(majority)})")
  if not problems:
    return None
  return ("The model has learnt little beyond the class frequencies: " + " and ".join(problems)
          + ". Likely causes: for text, texts cut short by data.max_len (see the token-length "
          "report above; --config.data.max_len=auto); too few training steps for the data "
          "(--config.train.num_epochs, --config.train.min_steps); a learning rate too high or "
          "too low (--config.train.learning_rate); imbalanced classes (the largest eval class "
          f"holds {majority_rate:.0%}, which always predicting it scores). "
          "--config.train.keep_best=val_accuracy (with --config.data.val_fraction) evaluates "
          "the best epoch instead of the last.")


def explained_batches(dataset: dataset_lib.Dataset, fields: Sequence[str], *, batch_size: int,
                      first: int, count: int) -> Iterator[tuple[dict, np.ndarray]]:
  """(this process' batch of ``fields``, keep) for eval examples ``first`` .. ``first + count
  − 1`` in batches of ``batch_size``; ``keep`` marks them in the *global* batch, in batch order
  (``sharding_lib.gather_batch``), so every process agrees on it."""
  end = first + count
  # Every eval batch but the last is full: the batches before ``first`` are skipped by index.
  start = first // batch_size
  seen = start * batch_size
  for batch in dataset.batches(batch_size, train=False, start=start):
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
    mesh: the device mesh.
    metrics_fn: the task's per-batch metric suite (``tasks.ImageTask.metrics_fn``), scored by
      the explained model or another classifier.
    class_names: the name of every class (the captions of the page of maps).
    batch_size, first_example, num_explain: the examples explained: ``num_explain`` from
      ``first_example`` on, in eval batches of ``batch_size``.
    targets: "predicted" (the model's predictions) or "labels".
    num_gallery: how many examples the page of maps shows.
    save_maps: whether ``per_example.npz`` holds the maps too.
    render: ``render(out_dir, batch, maps, captions)`` writes the page of maps (``task.render``).
    out_dir: where process 0 writes ``per_example.npz`` and the page; None writes nothing.
    scorer_variables: the variables ``metrics_fn`` scores with; None: the explained model's.
  """

  def __init__(self, model, methods: Sequence[methods_lib.Method],
               dataset: dataset_lib.Dataset, mesh, *, metrics_fn: tasks.MetricsFn,
               class_names: Sequence[str], batch_size: int, num_explain: int,
               first_example: int = 0, targets: str = "predicted", num_gallery: int = 8,
               save_maps: bool = False, render: Optional[Callable] = None, out_dir=None,
               scorer_variables=None):
    self.model, self.methods, self.dataset, self.mesh = model, tuple(methods), dataset, mesh
    self.class_names, self.targets = list(class_names), targets
    self.window = dict(batch_size=batch_size, first=first_example, count=num_explain)
    self.num_gallery, self.save_maps = num_gallery, save_maps
    self.render, self.out_dir, self.scorer_variables = render, out_dir, scorer_variables
    self.task = tasks.task_of(model)
    self.fields = self.task.batch_fields(dataset.has_masks)
    self.metric_step = metric_step(metrics_fn, mesh)
    # One program per method, jitted once: later runs (a training loop's) reuse them.
    self.explain_steps = {method.name: self._explain_step(method) for method in self.methods}

  def run(self, variables) -> dict[str, Any]:
    """{"methods": {name: metric means + "num_examples"}}."""
    if not self.methods:
      return {"methods": {}}
    scorer_variables = variables if self.scorer_variables is None else self.scorer_variables
    if any(method.base == registry.MHEX for method in self.methods):
      variables = registry.prepare(self.model, variables)  # E formed once, not per batch.
    results, maps, per_example, targets = {}, {}, {}, None
    for method in self.methods:
      logging.info("Explaining with %s.", method.name)
      results[method.name], maps[method.name], targets, per_example[method.name] = (
          self._explain(method, variables, scorer_variables))
    first = self._gallery_batch(len(targets))  # On every process: it may gather.
    if self.out_dir is not None and jax.process_index() == 0:
      save_per_example(self.out_dir / "per_example.npz", per_example, self.window["first"])
      captions = [f"label {self.class_names[l]} / explained {self.class_names[t]}"
                  for l, t in zip(first["label"], targets)]
      if self.render is not None and captions:  # eval.num_gallery=0: no gallery.
        self.render(self.out_dir, first, maps, captions)
    return {"methods": results}

  def _explain(self, method, variables, scorer_variables):
    """Runs ``method``'s program over the explained examples.

    Returns:
      (metric means + "num_examples", maps of the first ``num_gallery`` examples, their
      targets, the per-example arrays: every metric, "targets", "mask_nonempty" with masks and
      "maps" with ``save_maps``), the same on every process. Pointing games average over the
      examples whose mask holds a pixel (None when none does).
    """
    explain = self.explain_steps[method.name]
    parts: dict[str, list[np.ndarray]] = {}
    count, total = 0, self.window["count"]
    start = time.time()
    for batch, keep in explained_batches(self.dataset, self.fields, **self.window):
      batch = sharding_lib.shard_batch(batch, self.mesh)
      batch_maps, batch_targets = explain(variables, batch)
      out, batch_maps = self.metric_step(scorer_variables, batch, batch_maps, batch_targets)
      out["targets"] = batch_targets
      if self.save_maps or not parts:  # The first batch holds the gallery's maps.
        out["maps"] = batch_maps
      for key, values in sharding_lib.gather_batch(out).items():
        parts.setdefault(key, []).append(values[keep])
      count += int(keep.sum())
      elapsed = time.time() - start
      logging.info("%s: %d/%d examples, %.0f s, about %.0f s left.", method.name, count, total,
                   elapsed, elapsed / count * max(total - count, 0))
    per_example = {key: np.concatenate(values) for key, values in parts.items()}
    nonempty = per_example.pop(image_metrics.MASK_WEIGHT, None)
    if nonempty is not None:
      per_example["mask_nonempty"] = nonempty > 0
    n = min(self.num_gallery, count)
    gallery_maps, gallery_targets = per_example["maps"][:n], per_example["targets"][:n]
    if not self.save_maps:
      del per_example["maps"]
    return (metric_means(method.name, per_example), gallery_maps, gallery_targets,
            per_example)

  def _explain_step(self, method):
    """Jitted (variables, batch) -> (maps, targets) of ``method``."""
    explain_fn = method.targeted_explainer(self.model, self.targets)
    inputs = self.task.inputs
    return jax.jit(lambda v, batch: explain_fn(v, inputs(batch), batch["label"]),
                   in_shardings=(sharding_lib.replicated(self.mesh),
                                 sharding_lib.batch_sharded(self.mesh)))

  def _gallery_batch(self, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` explained examples of the first explained batch (the gallery's rows)."""
    batch, keep = next(explained_batches(self.dataset, self.fields, **self.window))
    return {k: v[keep][:n] for k, v in sharding_lib.gather_batch(batch).items()}


class Collaboration:
  """The gradient collaboration analysis over ``num_examples`` eval examples from
  ``first_example`` on: per-block gradient cosines s_ℓ, their correlation with MHEX's SAD and
  with p(label), and the mean occlusion quality map (7×7 grid, ``quality_map.png`` in
  ``out_dir``)."""

  def __init__(self, model, mhex: methods_lib.Method, dataset: dataset_lib.Dataset, mesh, *,
               batch_size: int, num_examples: int, first_example: int = 0, out_dir=None):
    self.dataset, self.mesh, self.out_dir = dataset, mesh, out_dir
    self.window = dict(batch_size=batch_size, first=first_example, count=num_examples)
    explain_fn = mhex.explainer(model)
    forward = tasks.task_of(model).forward

    def step(variables, batch):
      images, labels = batch["image"], batch["label"]
      score_fn = lambda x: jax.nn.softmax(forward(variables, x)[-1])
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
    for batch, keep in explained_batches(self.dataset, ("image", "label"), **self.window):
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

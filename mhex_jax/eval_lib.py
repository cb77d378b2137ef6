"""Evaluation of a trained workdir: accuracy, then every configured explainer side by side.

``evaluate(config, workdir)`` writes to ``WORKDIR/eval/``:

* ``report.json``: accuracy, per-head accuracy and, under ``"methods"``, one entry per explainer
  of ``config.eval.methods`` (registry names and the named MHEX variants of
  ``config.eval.variants``) with the mean of every applicable metric (SPEC §5) over
  ``config.eval.num_explain`` eval examples from ``config.eval.first_example`` on;
* ``report.md``: the same methods × metrics as a markdown table;
* ``per_example.npz``: what the means are taken of, for paired comparisons of methods: under
  ``"<method>/<metric>"`` every explained example's value (examples in order, ``"example"``
  holding their indices), ``"<method>/targets"`` and, with masks, ``"mask_nonempty"`` (the
  examples the pointing games average over); with ``eval.save_maps``, ``"<method>/maps"`` too
  (images [N, H, W], text [N, T], as the metrics received them). Plain arrays (no pickles);
  ``numpy.load`` reads them;
* ``gallery.png`` (images: input, then one overlay column per method) or ``tokens.html`` (text:
  one shaded line per method for each example);
* with ``eval.collaboration_examples`` > 0 (MHEX image models), the gradient collaboration
  analysis of SPEC §6 under ``report["collaboration"]`` and its mean 7×7 occlusion quality
  map as ``quality_map.png``.

MHEX maps take their options from ``config.eval.mhex`` (unset fields keep the defaults of the
map's kind, ``mhex_jax.explain.equivalent_matrix``); a variant overrides some of them. Every
method explains the same examples and the same targets (``eval.targets``: the explained
model's predictions, which MHEX takes from the forward pass that makes its maps, or the
labels). Metrics are scored by the explained model, or by the model
of ``config.eval.scorer_workdir`` (a separately trained classifier, as the reference protocol
does); its architecture comes from that workdir's ``config.json``.
"""

import json
import time
from typing import Any, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from mhex_jax import checkpoints
from mhex_jax import config_lib
from mhex_jax import errors
from mhex_jax import files
from mhex_jax.data import input_pipeline
from mhex_jax.data import text as text_data
from mhex_jax import model_lib
from mhex_jax import models
from mhex_jax import plotting
from mhex_jax import sharding as sharding_lib
from mhex_jax import train_lib
from mhex_jax.explain import registry
from mhex_jax.explain.maps import normalize_maps
from mhex_jax.metrics import collaboration
from mhex_jax.metrics import image as image_metrics
from mhex_jax.metrics import text as text_metrics

# Report keys in table order; lower is better for those marked in LOWER_IS_BETTER.
IMAGE_METRICS = image_metrics.SUITE_METRICS
TEXT_METRICS = text_metrics.SUITE_METRICS
LOWER_IS_BETTER = ("classic_average_drop", "deletion_auc", "lodds", "lodds_replacement")


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (``train.py`` writes ``WORKDIR/config.json``)."""
  path = files.workdir_path(workdir) / "config.json"
  if not path.exists():
    raise errors.UserError(
        f"{path} does not exist: {workdir} is not a workdir written by train.py (it saves "
        "its config there). Check the workdir's path, or pass --config=... for a workdir "
        "without a saved config.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises a ConfigError naming every field in which ``config`` would build another model than
  the one ``workdir``'s checkpoints were trained with (eval reads no optimizer state, so the
  optimizer may differ)."""
  if not (files.workdir_path(workdir) / "config.json").exists():
    return  # Not written by train.py (or before it saved configs): nothing to compare.
  diffs = config_lib.differences(load_workdir_config(workdir), config, ("model_name", "model", "model_init"))
  if diffs:
    raise config_lib.ConfigError(
        f"The config builds another model than the one {workdir} was trained with: "
        f"{'; '.join(diffs)}. Leave out --config to use the workdir's saved config (overrides "
        "such as --config.eval.methods=all still apply), or fix these fields.")


def load_scorer(config: ml_collections.ConfigDict, dummy_inputs, mesh):
  """(model, variables) of ``config.eval.scorer_workdir``."""
  scorer_config = load_workdir_config(config.eval.scorer_workdir)
  if scorer_config.model.num_classes != config.model.num_classes:
    raise errors.ConfigError(f"The scorer in {config.eval.scorer_workdir} has "
                             f"{scorer_config.model.num_classes} classes, the explained model "
                             f"{config.model.num_classes}; score with a classifier of the same task.")
  scorer = model_lib.create_model(scorer_config)
  return scorer, checkpoints.restore_variables(config.eval.scorer_workdir, scorer,
                                               dummy_inputs, sharding_lib.replicated(mesh))


def method_names(eval_config: ml_collections.ConfigDict, model) -> list[str]:
  """The explainers of ``eval.methods``: comma-separated names of explainers or of
  ``eval.variants``, "all" for every applicable explainer and every variant, or "" for MHEX
  alone on an MHEX model and nothing on a plain one."""
  names = [n.strip() for n in eval_config.methods.split(",") if n.strip()]
  variants = list(eval_config.get("variants", {}))
  if variants and not model.mhex:
    raise errors.ConfigError(f"eval.variants {variants} are MHEX variants, but the model is plain "
                             "(model.mhex=False); remove them.")
  clash = set(variants) & set(registry.available(model))
  if clash:
    raise errors.ConfigError(f"eval.variants {sorted(clash)} reuse explainer names; rename them.")
  if not names:
    return [registry.MHEX] if model.mhex else []
  if names == ["all"]:
    return list(registry.available(model)) + variants
  unknown = [n for n in names if n not in registry.available(model) and n not in variants]
  if unknown:
    raise errors.ConfigError(f"eval.methods names {unknown}, which {type(model).__name__}"
                             f"(mhex={model.mhex}) cannot run; use 'all' or a comma-separated subset "
                             f"of {list(registry.available(model)) + variants}.")
  return names


# MHEX options that only maps of Transformer tokens take.
_TOKEN_ONLY_OPTIONS = ("layers", "route", "feature_norm", "contrastive")


def mhex_options(config: ml_collections.ConfigDict, model,
                 variant: Optional[str] = None) -> dict[str, Any]:
  """The MHEX map options set in ``eval.mhex`` (and ``eval.variants.<variant>``); unset ones
  are left to the map's own defaults (``mhex_jax.explain.equivalent_matrix``)."""
  options = {k: v for k, v in config.eval.mhex.to_dict().items() if v is not None}
  if variant is not None:
    chosen = config.eval.variants[variant].to_dict()
    unknown = set(chosen) - set(config.eval.mhex)
    if unknown:
      raise errors.ConfigError(f"eval.variants.{variant} sets {sorted(unknown)}; MHEX options are "
                               f"{sorted(config.eval.mhex)}.")
    options.update({k: v for k, v in chosen.items() if v is not None})
  if "layers" in options:
    options["layers"] = tuple(options["layers"])
  if isinstance(model, models.ResNet):
    misplaced = sorted(set(options) & set(_TOKEN_ONLY_OPTIONS))
    if misplaced:
      raise errors.ConfigError(
          f"MHEX options {misplaced} apply to Transformer token maps only; unset "
          f"them for {type(model).__name__}.")
  return options


def method_options(config: ml_collections.ConfigDict, model, name: str) -> dict[str, Any]:
  """Keyword options of explainer ``name``: MHEX's and its variants' from ``eval.mhex`` /
  ``eval.variants``, the others from ``eval.explainer_options.<name>``."""
  if name == registry.MHEX:
    return mhex_options(config, model)
  if name in config.eval.get("variants", {}):
    return mhex_options(config, model, name)
  return dict(config.eval.explainer_options.get(name, {}))


def _base_method(config: ml_collections.ConfigDict, name: str) -> str:
  return registry.MHEX if name in config.eval.get("variants", {}) else name


def method_explainer(config: ml_collections.ConfigDict, model, name: str):
  """``registry.explainer`` of method ``name`` (an MHEX variant runs MHEX with its options)."""
  return registry.explainer(_base_method(config, name), model,
                            **method_options(config, model, name))


def targeted_method_explainer(config: ml_collections.ConfigDict, model, name: str):
  """``(variables, inputs, labels) -> (maps, targets)`` of method ``name`` for the targets of
  ``eval.targets`` (``registry.targeted_explainer``: MHEX explains its predictions from the
  forward pass that makes them)."""
  return registry.targeted_explainer(_base_method(config, name), model, config.eval.targets,
                                     **method_options(config, model, name))


def _explain_step(explain_fn, mesh, inputs_of):
  """Jitted (variables, batch) -> (maps, targets): one method's program; ``explain_fn`` is a
  ``targeted_method_explainer``."""

  def step(variables, batch):
    return explain_fn(variables, inputs_of(batch), batch["label"])

  return jax.jit(step, in_shardings=(sharding_lib.replicated(mesh),
                                     sharding_lib.batch_sharded(mesh)))


def _metric_step(metrics_fn, mesh):
  """Jitted (scorer_variables, batch, maps, targets) -> (per-example metrics, gallery maps):
  the same program for every method (the maps have one shape), so it compiles once."""
  batch_sharded = sharding_lib.batch_sharded(mesh)
  return jax.jit(metrics_fn, in_shardings=(sharding_lib.replicated(mesh), batch_sharded,
                                           batch_sharded, batch_sharded))


def _image_metrics_fn(scorer, eval_config: ml_collections.ConfigDict, has_masks: bool):
  def metrics_fn(scorer_variables, batch, maps, targets):
    score_fn = lambda x: jax.nn.softmax(scorer.apply(scorer_variables, x, train=False)[-1])
    out = image_metrics.explanation_metrics(
        score_fn, batch["image"], maps, targets, batch["mask"] if has_masks else None,
        baseline=eval_config.removal_baseline, deletion_steps=eval_config.deletion_steps,
        deletion_chunk_size=eval_config.deletion_chunk_size,
        pointing_tolerance=eval_config.pointing_tolerance)
    return out, maps

  return metrics_fn


def _text_metrics_fn(scorer, eval_config: ml_collections.ConfigDict, special: dict[str, int]):
  modes = tuple(m.strip() for m in eval_config.aopc_modes.split(",") if m.strip())
  if not modes or set(modes) - set(text_metrics.AOPC_MODES):
    raise errors.ConfigError(f"eval.aopc_modes={eval_config.aopc_modes!r}; use 'deletion', "
                             "'replacement' or 'deletion,replacement'.")

  def metrics_fn(scorer_variables, batch, scores, targets):
    ids, attention, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    removable = _removable(batch)

    def score_fn(input_ids, attention_mask=attention, token_type_ids=types):
      return jax.nn.softmax(scorer.apply(scorer_variables, input_ids, attention_mask,
                                         token_type_ids, train=False)[-1])

    out = text_metrics.explanation_metrics(
        score_fn, ids, scores, removable, targets, attention_mask=attention,
        token_type_ids=types, mask_id=special["mask"], pad_id=special["pad"],
        replace_id=special[eval_config.replacement_token], modes=modes,
        absolute=eval_config.aopc_absolute)
    return out, normalize_maps(scores, removable)

  return metrics_fn


def _removable(batch):
  """The tokens text metrics may remove: attended, not special."""
  return (batch["attention_mask"] > 0) & ~batch["special_tokens_mask"].astype(bool)


def _explained_batches(dataset, eval_config: ml_collections.ConfigDict, fields):
  """(this process' batch, keep) for eval examples ``eval.first_example`` ..
  ``eval.first_example + eval.num_explain − 1``; ``keep`` marks them in the *global* batch,
  in batch order (``sharding_lib.gather_batch``), so every process agrees on it."""
  first = eval_config.get("first_example", 0)
  end = first + eval_config.num_explain
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


def _gallery_batch(dataset, eval_config: ml_collections.ConfigDict, fields, n: int):
  """The first ``n`` explained examples of the first explained batch (the gallery's rows)."""
  batch, keep = next(_explained_batches(dataset, eval_config, fields))
  return {k: v[keep][:n] for k, v in sharding_lib.gather_batch(batch).items()}


def explain_method(name, explain_step, metric_step, variables, scorer_variables, dataset,
                   eval_config, mesh, fields):
  """Runs method ``name``'s programs over the explained examples.

  Returns:
    (metric means + "num_examples", maps of the first ``eval.num_gallery`` examples, their
    targets, the per-example arrays: every metric, "targets", "mask_nonempty" with masks and
    "maps" with ``eval.save_maps``), the same on every process. Pointing games average over
    the examples whose mask holds a pixel (None when none does).
  """
  parts: dict[str, list[np.ndarray]] = {}
  count = 0
  start = time.time()
  for batch, keep in _explained_batches(dataset, eval_config, fields):
    batch = sharding_lib.shard_batch(batch, mesh)
    batch_maps, batch_targets = explain_step(variables, batch)
    out, batch_maps = metric_step(scorer_variables, batch, batch_maps, batch_targets)
    out["targets"] = batch_targets
    if eval_config.get("save_maps") or not parts:  # The first batch holds the gallery's maps.
      out["maps"] = batch_maps
    for key, values in sharding_lib.gather_batch(out).items():
      parts.setdefault(key, []).append(values[keep])
    count += int(keep.sum())
    elapsed = time.time() - start
    logging.info("%s: %d/%d examples, %.0f s, about %.0f s left.", name, count,
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
  return (metric_means(name, per_example), gallery_maps, gallery_targets, per_example)


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
  """Writes every method's per-example arrays to ``path`` (``per_example.npz``, see the module
  docstring), whole (``files.atomic_open``)."""
  arrays = {f"{method}/{key}": values for method, results in per_example.items()
            for key, values in results.items() if key != "mask_nonempty"}
  for results in per_example.values():
    if "mask_nonempty" in results:
      arrays["mask_nonempty"] = results["mask_nonempty"]
    arrays["example"] = first_example + np.arange(len(results["targets"]))
  with files.atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


def markdown_table(methods: dict[str, dict[str, float]], metrics) -> str:
  """Methods × metrics as a markdown table (↓ marks metrics where lower is better)."""
  columns = [m for m in metrics if any(m in r for r in methods.values())]
  header = ["method"] + [f"{m} ↓" if m in LOWER_IS_BETTER else m for m in columns]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, results in methods.items():
    cells = [f"{results[m]:.4f}" if results.get(m) is not None else "" for m in columns]
    lines.append("| " + " | ".join([name] + cells) + " |")
  return "\n".join(lines) + "\n"


def _captions(config: ml_collections.ConfigDict, labels, targets) -> list[str]:
  names = input_pipeline.class_names(config.data, config.model.num_classes)
  return [f"label {names[l]} / explained {names[t]}" for l, t in zip(labels, targets)]


def compare_methods(model, variables, scorer, scorer_variables, dataset, config, mesh, methods,
                    out_dir) -> dict[str, dict[str, float]]:
  """Every method's metrics on the same examples; writes the gallery (images: one column per
  method, ``gallery.png``; text: one shaded line per method and example, ``tokens.html``)."""
  if registry.is_text_model(model):
    tokenizer = text_data.load_tokenizer(config.data.tokenizer_dir)
    fields = train_lib.TEXT_INPUTS + ("special_tokens_mask", "label")
    inputs_of = lambda batch: {k: batch[k] for k in fields if k != "label"}
    metrics_fn = _text_metrics_fn(scorer, config.eval, text_data.special_ids(tokenizer))
  else:
    fields = ("image", "label", "mask") if dataset.has_masks else ("image", "label")
    inputs_of = lambda batch: batch["image"]
    metrics_fn = _image_metrics_fn(scorer, config.eval, dataset.has_masks)
  metric_step = _metric_step(metrics_fn, mesh)
  results, maps, targets, per_example = {}, {}, None, {}
  for name in methods:
    logging.info("Explaining with %s.", name)
    explain_step = _explain_step(targeted_method_explainer(config, model, name), mesh,
                                 inputs_of)
    results[name], maps[name], targets, per_example[name] = explain_method(
        name, explain_step, metric_step, variables, scorer_variables, dataset, config.eval,
        mesh, fields)
  if methods and jax.process_index() == 0:
    save_per_example(out_dir / "per_example.npz", per_example,
                     config.eval.get("first_example", 0))
  if methods:
    first = _gallery_batch(dataset, config.eval, fields, len(targets))  # On every process.
  if methods and jax.process_index() == 0:
    captions = _captions(config, first["label"], targets)
    if registry.is_text_model(model):
      lengths = first["attention_mask"].sum(-1)
      tokens = [tokenizer.convert_ids_to_tokens(ids[:length].tolist())
                for ids, length in zip(first["input_ids"], lengths)]
      files.write_text(out_dir / "tokens.html", plotting.token_html(tokens, maps, captions))
    else:
      plotting.save_gallery(
          out_dir / "gallery.png",
          plotting.to_display(first["image"], config.data.mean, config.data.std), maps,
          captions, first["mask"] if dataset.has_masks else None)
  return results


def collaboration_analysis(model, variables, dataset, config: ml_collections.ConfigDict, mesh,
                           out_dir) -> dict[str, Any]:
  """SPEC §6 over the first ``eval.collaboration_examples`` eval examples: per-block gradient
  cosines s_ℓ, their correlation with MHEX's SAD and with p(label), and the mean occlusion
  quality map (7×7 grid)."""
  eval_config = ml_collections.ConfigDict(config.eval.to_dict())
  eval_config.num_explain = config.eval.collaboration_examples
  explain_fn = method_explainer(config, model, registry.MHEX)

  def step(variables, batch):
    images, labels = batch["image"], batch["label"]
    score_fn = lambda x: jax.nn.softmax(model.apply(variables, x, train=False)[-1])
    maps = explain_fn(variables, images, labels)
    return (collaboration.block_cosines(model, variables, images, labels),
            image_metrics.soft_average_drop(score_fn, images, maps, labels),
            image_metrics.target_probability(score_fn, images, labels),
            collaboration.occlusion_quality_map(model, variables, images, labels))

  step = jax.jit(step, in_shardings=(sharding_lib.replicated(mesh),
                                     sharding_lib.batch_sharded(mesh)))
  parts = []
  for batch, keep in _explained_batches(dataset, eval_config, ("image", "label")):
    out = sharding_lib.gather_batch(step(variables, sharding_lib.shard_batch(batch, mesh)))
    parts.append([x[keep] for x in out])
  cosines, sad, probs, quality = (np.concatenate(x) for x in zip(*parts))
  summary = collaboration.collaboration_report(cosines, sad, probs)
  result = {k: np.asarray(v).tolist() for k, v in summary.items()}
  result["quality_map"] = quality.mean(axis=0).tolist()
  result["num_examples"] = len(cosines)
  if jax.process_index() == 0:
    plotting.save_quality_map(out_dir / "quality_map.png", quality.mean(axis=0))
  return result


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the latest checkpoint of ``workdir``; writes the report and the gallery."""
  mesh = sharding_lib.make_mesh(config.get("num_devices"))
  config_lib.validate(config, mesh.shape[sharding_lib.DATA_AXIS])
  files.check_workdir(workdir, must_exist=True)
  model = model_lib.create_model(config)
  methods = method_names(config.eval, model)
  check_workdir_config(config, workdir)
  _, eval_ds = input_pipeline.get_datasets(config.data, config.model.num_classes,
                                           need_train=False)
  variables = checkpoints.restore_variables(workdir, model, eval_ds.dummy_inputs(),
                                            sharding_lib.replicated(mesh))
  report: dict[str, Any] = train_lib.evaluate_accuracy(model, variables, eval_ds,
                                                       config.eval.batch_size, mesh)
  scorer, scorer_variables = model, variables
  if config.eval.scorer_workdir:
    scorer, scorer_variables = load_scorer(config, eval_ds.dummy_inputs(), mesh)
  report["scorer_workdir"] = config.eval.scorer_workdir or workdir
  report["class_names"] = input_pipeline.class_names(config.data, config.model.num_classes)
  out_dir = files.workdir_path(workdir) / "eval"
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
  text_model = registry.is_text_model(model)
  report["methods"] = compare_methods(model, variables, scorer, scorer_variables, eval_ds,
                                      config, mesh, methods, out_dir)
  if config.eval.collaboration_examples:
    if text_model or not model.mhex:
      raise errors.ConfigError("eval.collaboration_examples > 0 needs an MHEX image model (the "
                               "analysis follows the gradients of its gate kernels); set it to 0.")
    report["collaboration"] = collaboration_analysis(model, variables, eval_ds, config, mesh,
                                                     out_dir)
  if jax.process_index() == 0:
    files.write_text(out_dir / "report.json", json.dumps(report, indent=2))
    first = config.eval.get("first_example", 0)
    explained = (f"the first {config.eval.num_explain} examples" if not first else
                 f"examples {first}..{first + config.eval.num_explain - 1}")
    files.write_text(
        out_dir / "report.md",
        f"Accuracy {report['accuracy']:.4f} on {report['num_examples']} examples; "
        f"metrics over {explained}, scored by {report['scorer_workdir']}. Classes: "
        f"{', '.join(report['class_names'])}.\n\n"
        + markdown_table(report["methods"], TEXT_METRICS if text_model else IMAGE_METRICS))
  logging.info("Report: %s", json.dumps(report))
  return report

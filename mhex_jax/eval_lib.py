"""Evaluation of a trained workdir: accuracy, MHEX saliency metrics, report and gallery.

``evaluate(config, workdir)`` writes ``WORKDIR/eval/report.json`` and ``WORKDIR/eval/gallery.png``.
"""

import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mhex_jax import input_pipeline
from mhex_jax import models
from mhex_jax import plotting
from mhex_jax import sharding as sharding_lib
from mhex_jax import train_lib
from mhex_jax.explain import mhex as mhex_explain
from mhex_jax.metrics import image as image_metrics
from mhex_jax.metrics import text as text_metrics


def restore_variables(config: ml_collections.ConfigDict, workdir: str, model, dummy_inputs,
                      mesh) -> dict[str, Any]:
  """{"params", "batch_stats"} of the latest checkpoint in ``workdir``, replicated on ``mesh``."""
  manager = train_lib.checkpoint_manager(workdir, config.train)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {os.path.join(workdir, 'checkpoints')}; train "
                            f"first: python train.py --config=... --workdir={workdir}")
  # Only the shapes matter: the optimizer state is restored but not used.
  optimizer = train_lib.create_optimizer(config.train, steps_per_epoch=1)
  abstract = jax.eval_shape(
      lambda: train_lib.create_train_state(model, optimizer, dummy_inputs, config.seed))
  replicated = sharding_lib.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          abstract)
  state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  manager.close()
  logging.info("Restored %s at step %d.", workdir, step)
  return state.variables


def _pair(size):
  return (size, size) if isinstance(size, int) else tuple(size)


def make_explain_step(model, config: ml_collections.ConfigDict, mesh, has_masks: bool):
  """Jitted (variables, batch) -> per-example MHEX metrics, maps and per-block maps."""
  config_is_vit = hasattr(model, "patch_size")
  options = dict(alpha=config.alpha, tau_pos=config.tau_pos, tau_neg=config.tau_neg,
                 beta_pos=config.beta_pos, beta_neg=config.beta_neg)
  if config.targets not in ("predicted", "labels"):
    raise ValueError(f"Unknown eval.targets={config.targets!r}; use 'predicted' or 'labels'.")

  def explain_step(variables, batch):
    images = batch["image"]
    targets = batch["label"] if config.targets == "labels" else None
    if config_is_vit:
      sal = mhex_explain.mhex_patch_saliency(
          model.apply, variables, images, targets, patch_size=_pair(model.patch_size),
          class_token=model.class_token, **options)
    else:
      sal = mhex_explain.mhex_saliency(model.apply, variables, images, targets, **options)
    score_fn = lambda x: jax.nn.softmax(model.apply(variables, x, train=False)[-1])
    maps, targets = sal.saliency, sal.targets
    out = {
        "avg_drop": image_metrics.average_drop_removal(
            score_fn, images, maps, targets, baseline=config.removal_baseline),
        "sad": image_metrics.soft_average_drop(score_fn, images, maps, targets),
        "ead": image_metrics.effective_average_drop(
            score_fn, images, maps, targets, baseline=config.removal_baseline),
    }
    if has_masks:
      out["pointing_game"] = image_metrics.pointing_game(
          maps, batch["mask"], tolerance=config.pointing_tolerance)
      out["energy_pointing_game"] = image_metrics.energy_pointing_game(maps, batch["mask"])
    return out, maps, sal.layer_maps, targets

  return jax.jit(explain_step, in_shardings=(sharding_lib.replicated(mesh),
                                             sharding_lib.batch_sharded(mesh)))


def _weight_options(config: ml_collections.ConfigDict) -> dict[str, float]:
  return dict(tau_pos=config.tau_pos, tau_neg=config.tau_neg, beta_pos=config.beta_pos,
              beta_neg=config.beta_neg)


def make_text_explain_step(model, config: ml_collections.ConfigDict, mesh, mask_id: int):
  """Jitted (variables, batch) -> (per-example text AVG Drop, token saliency, targets)."""
  layers = tuple(config.token_layers) or None  # () means the α-decay over all layers.

  def explain_step(variables, batch):
    ids, attention, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    removable = (attention > 0) & ~batch["special_tokens_mask"]
    targets = batch["label"] if config.targets == "labels" else None
    sal = mhex_explain.mhex_token_saliency(model.apply, variables, ids, attention, types,
                                           removable, targets, layers=layers,
                                           alpha=config.alpha, **_weight_options(config))
    score_fn = lambda x: jax.nn.softmax(model.apply(variables, x, attention, types,
                                                    train=False)[-1])
    drop = text_metrics.text_average_drop(score_fn, ids, sal.saliency, removable, sal.targets,
                                          mask_id)
    return {"avg_drop": drop}, sal.saliency, sal.targets

  return jax.jit(explain_step, in_shardings=(sharding_lib.replicated(mesh),
                                             sharding_lib.batch_sharded(mesh)))


def explain_text_dataset(model, variables, dataset, config: ml_collections.ConfigDict, mesh,
                         tokenizer):
  """Text AVG Drop over the first ``eval.num_explain`` examples, and an HTML page of the first
  ``eval.num_gallery``."""
  from mhex_jax.data import text  # transformers is only needed for text.
  step = make_text_explain_step(model, config.eval, mesh, text.special_ids(tokenizer)["mask"])
  total, count, page = 0.0, 0, None
  for batch in dataset.batches(config.eval.batch_size, train=False):
    if count >= config.eval.num_explain:
      break
    keep = batch["valid"].copy()
    keep[np.cumsum(keep) > config.eval.num_explain - count] = False
    out, saliency, targets = step(variables, sharding_lib.shard_batch(
        {k: batch[k] for k in train_lib.TEXT_INPUTS + ("special_tokens_mask", "label")}, mesh))
    total += float(np.sum(np.asarray(out["avg_drop"])[keep]))
    if page is None:
      n = min(config.eval.num_gallery, int(keep.sum()))
      lengths = batch["attention_mask"][:n].sum(-1)
      tokens = [tokenizer.convert_ids_to_tokens(ids[:length].tolist())
                for ids, length in zip(batch["input_ids"][:n], lengths)]
      page = plotting.token_html(
          tokens, np.asarray(saliency)[:n],
          [f"label {l} / pred {t}" for l, t in zip(batch["label"][:n], np.asarray(targets)[:n])])
    count += int(keep.sum())
  return {"avg_drop": total / max(count, 1), "num_examples": count}, page


def explain_dataset(model, variables, dataset, config: ml_collections.ConfigDict, mesh):
  """MHEX metrics over the first ``config.eval.num_explain`` eval examples.

  Returns:
    (means of every metric, gallery arrays for the first ``num_gallery`` examples).
  """
  step = make_explain_step(model, config.eval, mesh, dataset.has_masks)
  sums: dict[str, float] = {}
  count, gallery = 0, None
  for batch in dataset.batches(config.eval.batch_size, train=False):
    if count >= config.eval.num_explain:
      break
    keep = batch["valid"].copy()
    keep[np.cumsum(keep) > config.eval.num_explain - count] = False
    fields = ("image", "label", "mask") if dataset.has_masks else ("image", "label")
    out, maps, layer_maps, targets = step(variables, sharding_lib.shard_batch(
        {k: batch[k] for k in fields}, mesh))
    for name, values in out.items():
      sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(values)[keep]))
    if gallery is None:
      n = min(config.eval.num_gallery, int(keep.sum()))
      gallery = {"image": batch["image"][:n], "label": batch["label"][:n],
                 "target": np.asarray(targets)[:n], "saliency": np.asarray(maps)[:n],
                 "layer_maps": [np.asarray(m)[:n] for m in layer_maps],
                 "mask": batch["mask"][:n] if dataset.has_masks else None}
    count += int(keep.sum())
  means = {name: total / max(count, 1) for name, total in sums.items()}
  means["num_explained"] = count
  return means, gallery


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the latest checkpoint of ``workdir``; writes report.json and gallery.png."""
  mesh = sharding_lib.make_mesh(config.get("num_devices"))
  sharding_lib.check_batch_size(config.eval.batch_size, mesh)
  model = models.create_model(config.model)
  _, eval_ds = input_pipeline.get_datasets(config.data, config.model.num_classes,
                                           need_train=False)
  variables = restore_variables(config, workdir, model, eval_ds.dummy_inputs(), mesh)
  report: dict[str, Any] = train_lib.evaluate_accuracy(model, variables, eval_ds,
                                                       config.eval.batch_size, mesh)
  report["methods"] = {}
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  if config.model.mhex and config.data.name == "text":
    from mhex_jax.data import text
    tokenizer = text.load_tokenizer(config.data.tokenizer_dir)
    report["methods"]["mhex"], page = explain_text_dataset(model, variables, eval_ds, config,
                                                           mesh, tokenizer)
    if jax.process_index() == 0:
      with open(os.path.join(out_dir, "tokens.html"), "w") as f:
        f.write(page)
  elif config.model.mhex:
    means, gallery = explain_dataset(model, variables, eval_ds, config, mesh)
    report["methods"]["mhex"] = {
        "avg_drop": means["avg_drop"], "sad": means["sad"], "ead": means["ead"],
        "pointing_game": means.get("pointing_game"),
        "energy_pointing_game": means.get("energy_pointing_game"),
        "num_examples": means["num_explained"]}
    if jax.process_index() == 0:
      plotting.save_gallery(
          os.path.join(out_dir, "gallery.png"),
          plotting.to_display(gallery["image"], config.data.mean, config.data.std),
          gallery["saliency"], gallery["layer_maps"],
          [f"label {l} / pred {t}" for l, t in zip(gallery["label"], gallery["target"])],
          gallery["mask"])
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, "report.json"), "w") as f:
      json.dump(report, f, indent=2)
  logging.info("Report: %s", json.dumps(report))
  return report

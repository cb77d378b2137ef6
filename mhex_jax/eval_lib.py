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
  analysis under ``report["collaboration"]`` and its mean 7×7 occlusion quality
  map as ``quality_map.png``.

The report is the union of what the evaluators of ``mhex_jax.evaluators`` return (accuracy,
explainers, collaboration), run in turn on the restored variables. Every option of
``config.eval`` is checked before any data is read (``explain.methods.resolve``). MHEX maps take
their options from ``config.eval.mhex`` (unset fields keep the defaults of the map's kind,
``mhex_jax.explain.equivalent_matrix``); a variant overrides some of them. Every method explains
the same examples and the same targets (``eval.targets``: the explained model's predictions,
which MHEX takes from the forward pass that makes its maps, or the labels). Metrics are scored
by the explained model, or by the model of ``config.eval.scorer_workdir`` (a separately trained
classifier, as the reference protocol does); its architecture comes from that workdir's
``config.json``.
"""

import functools
import json
from typing import Any

from absl import logging
import jax
import ml_collections

from mhex_jax import checkpoints
from mhex_jax import config_lib
from mhex_jax import errors
from mhex_jax import evaluators
from mhex_jax import files
from mhex_jax import model_lib
from mhex_jax import sharding as sharding_lib
from mhex_jax import tasks
from mhex_jax import workdir as workdir_lib
from mhex_jax.data import input_pipeline
from mhex_jax.explain import methods as methods_lib
from mhex_jax.explain import registry


# report.json's first keys, in order (the evaluators' entries follow).
REPORT_HEAD = ("accuracy", "head_accuracy", "num_examples", "scorer_workdir", "class_names")


def scorer_model(config: ml_collections.ConfigDict):
  """The model of ``config.eval.scorer_workdir`` (built from its saved config), checked to
  classify the explained model's classes; None without a scorer workdir."""
  if not config.eval.scorer_workdir:
    return None
  scorer_config = workdir_lib.load_config(config.eval.scorer_workdir)
  if scorer_config.model.num_classes != config.model.num_classes:
    raise errors.ConfigError(f"The scorer in {config.eval.scorer_workdir} has "
                             f"{scorer_config.model.num_classes} classes, the explained model "
                             f"{config.model.num_classes}; score with a classifier of the same "
                             "task.")
  return model_lib.create_model(scorer_config)


def markdown_table(methods: dict[str, dict[str, float]], metrics=None) -> str:
  """Methods × metrics as a markdown table (↓ marks metrics where lower is better); the
  columns are ``metrics`` (a task's ``metric_names``), by default every metric reported, in
  the suites' order."""
  if metrics is None:  # Every suite's metrics in table order, then any other reported.
    known = tasks.ImageTask.metric_names + tasks.TextTask.metric_names
    reported = [m for r in methods.values() for m in r if m != "num_examples"]
    metrics = list(dict.fromkeys(known + tuple(reported)))
  columns = [m for m in metrics if any(m in r for r in methods.values())]
  header = ["method"] + [f"{m} ↓" if m in tasks.LOWER_IS_BETTER else m for m in columns]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, results in methods.items():
    cells = [f"{results[m]:.4f}" if results.get(m) is not None else "" for m in columns]
    lines.append("| " + " | ".join([name] + cells) + " |")
  return "\n".join(lines) + "\n"


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the latest checkpoint of ``workdir`` (its best step when training kept one:
  ``train.keep_best``); writes the report and the gallery."""
  mesh = sharding_lib.make_mesh(config.get("num_devices"))
  config_lib.validate(config, mesh.shape[sharding_lib.DATA_AXIS])
  files.check_workdir(workdir, must_exist=True)
  # What training decided from the data (model.num_classes, data.max_len="auto") stays so.
  config = input_pipeline.with_data_classes(workdir_lib.with_decisions(config, workdir))
  model = model_lib.create_model(config)
  methods = methods_lib.resolve(config, model)  # Every eval option, before any data is read.
  workdir_lib.check_model(config, workdir)
  scorer = scorer_model(config)
  _, eval_ds = input_pipeline.get_datasets(config.data, config.model.num_classes,
                                           need_train=False,
                                           max_tokens=model_lib.max_tokens(model))
  replicated = sharding_lib.replicated(mesh)
  variables = checkpoints.restore_variables(workdir, model, eval_ds.dummy_inputs(), replicated)
  scorer_variables = None
  if scorer is not None:
    scorer_variables = checkpoints.restore_variables(config.eval.scorer_workdir, scorer,
                                                     eval_ds.dummy_inputs(), replicated)
  out_dir = files.workdir_path(workdir) / "eval"
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
  report: dict[str, Any] = {
      "scorer_workdir": config.eval.scorer_workdir or workdir,
      "class_names": input_pipeline.class_names(config.data, config.model.num_classes)}
  for unit in evaluators_of(config, model, methods, eval_ds, mesh, out_dir, scorer,
                            scorer_variables):
    report.update(unit.run(variables))
  # The accuracy first, as report.json has always listed it.
  report = {**{k: report[k] for k in REPORT_HEAD}, **report}
  if jax.process_index() == 0:
    write_report(report, config.eval, tasks.task_of(model).metric_names, out_dir)
  logging.info("Report: %s", json.dumps(report))
  return report


def evaluators_of(config: ml_collections.ConfigDict, model, methods, dataset, mesh, out_dir,
                  scorer=None, scorer_variables=None) -> list:
  """The configured evaluators, in report order: accuracy, the explainers of ``methods``
  (scored by ``scorer`` with ``scorer_variables``, by default the explained model) and, with
  ``eval.collaboration_examples``, the collaboration analysis."""
  if (scorer is None) != (scorer_variables is None):
    raise ValueError("Pass the scorer model and its variables together, or neither.")
  eval_config = config.eval
  first = eval_config.get("first_example", 0)
  task = tasks.task_of(model)
  units = [
      evaluators.Accuracy(model, dataset, eval_config.batch_size, mesh),
      evaluators.Explainers(
          model, methods, dataset, mesh,
          metrics_fn=task.metrics_fn(model if scorer is None else scorer, eval_config,
                                     config.data, dataset.has_masks),
          render=functools.partial(task.render, data_config=config.data),
          class_names=input_pipeline.class_names(config.data, config.model.num_classes),
          batch_size=eval_config.batch_size, first_example=first,
          num_explain=eval_config.num_explain, targets=eval_config.targets,
          num_gallery=eval_config.num_gallery, save_maps=eval_config.get("save_maps", False),
          out_dir=out_dir, scorer_variables=scorer_variables)]
  if eval_config.collaboration_examples:
    units.append(evaluators.Collaboration(
        model, methods_lib.method(eval_config, model, registry.MHEX), dataset, mesh,
        batch_size=eval_config.batch_size, first_example=first,
        num_examples=eval_config.collaboration_examples, out_dir=out_dir))
  return units


def write_report(report: dict[str, Any], eval_config: ml_collections.ConfigDict, metrics,
                 out_dir) -> None:
  """``report.json`` and ``report.md`` (accuracy, what was explained, the methods table)."""
  first = eval_config.get("first_example", 0)
  explained = (f"the first {eval_config.num_explain} examples" if not first else
               f"examples {first}..{first + eval_config.num_explain - 1}")
  summary = (f"Accuracy {report['accuracy']:.4f} on {report['num_examples']} examples; "
             f"metrics over {explained}, scored by {report['scorer_workdir']}. Classes: "
             f"{', '.join(report['class_names'])}.\n\n")
  table = markdown_table(report["methods"], metrics)
  files.write_text(out_dir / "report.json", json.dumps(report, indent=2))
  files.write_text(out_dir / "report.md", summary + table)

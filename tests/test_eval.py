"""Comparison mode of eval: every explainer on the same examples, report.json/.md, galleries,
a separate scoring workdir, and the errors for bad method lists."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # The tokenizer must come from disk alone.

import numpy as np
import pytest

from configs import bert_agnews
from configs import default
from mhex_jax import errors
from mhex_jax import eval_lib
from mhex_jax import evaluators
from mhex_jax import model_lib
from mhex_jax import train_lib
from mhex_jax.data import input_pipeline
from mhex_jax.explain import methods as methods_lib
from mhex_jax.explain import registry
from mhex_jax.metrics import image as image_metrics
from mhex_jax.metrics import text as text_metrics

FAST_OPTIONS = {
    "score_cam": {"chunk_size": 4},
    "smoothgrad": {"num_samples": 3},
    "integrated_gradients": {"steps": 4},
    "embedding_integrated_gradients": {"steps": 4},
}


def _fast_eval(config, methods, num_devices=1):
  # Each method compiles its own eval step, and 8-way SPMD programs compile slower: one device
  # except where a test checks the sharded evaluation.
  config.num_devices = num_devices
  config.eval.methods = methods
  config.eval.num_explain = 16
  config.eval.num_gallery = 2
  config.eval.deletion_steps = 4
  config.eval.deletion_chunk_size = 32
  for name, options in FAST_OPTIONS.items():
    config.eval.explainer_options[name] = options
  return config


def _image_config(mhex=True):
  config = default.get_config()
  config.model.width = 4
  config.model.mhex = mhex
  config.data.image_size = 16
  config.data.num_train = 64
  config.data.num_eval = 24
  config.train.batch_size = 16
  config.train.num_epochs = 1
  config.train.checkpoint_every_steps = 100
  config.eval.batch_size = 16
  return config


@pytest.fixture(scope="module")
def image_workdirs(tmp_path_factory):
  """An MHEX and a plain tiny ResNet, each trained for 4 steps."""
  root = tmp_path_factory.mktemp("image")
  out = {}
  for name, mhex in (("mhex", True), ("plain", False)):
    out[name] = str(root / name)
    train_lib.train_and_evaluate(_image_config(mhex), out[name])
  return out


def _in_unit_interval(results, metrics):
  for name in metrics:
    if results.get(name) is not None:
      assert 0.0 <= results[name] <= 1.0 + 1e-6, (name, results[name])


def test_image_comparison_runs_every_method(image_workdirs):
  workdir = image_workdirs["mhex"]
  config = _fast_eval(_image_config(), "all")
  report = eval_lib.evaluate(config, workdir)
  model = model_lib.create_model(config)
  assert list(report["methods"]) == list(registry.available(model))
  assert "mhex" in report["methods"] and "grad_cam" in report["methods"]
  for name, results in report["methods"].items():
    assert set(image_metrics.SUITE_METRICS) <= set(results), name
    assert results["num_examples"] == 16
    _in_unit_interval(results, image_metrics.SUITE_METRICS)
  # Different maps give different deletion curves: the methods really differ.
  assert len({round(r["deletion_auc"], 6) for r in report["methods"].values()}) > 1

  out = os.path.join(workdir, "eval")
  with open(os.path.join(out, "report.json")) as f:
    assert json.load(f)["methods"] == report["methods"]
  table = open(os.path.join(out, "report.md")).read()
  for name in report["methods"]:
    assert f"| {name} |" in table
  assert "deletion_auc ↓" in table and "insertion_auc |" in table
  assert os.path.getsize(os.path.join(out, "gallery.png")) > 0
  # The report's means are the means of per_example.npz (no maps unless asked for).
  with np.load(os.path.join(out, "per_example.npz")) as arrays:
    assert list(arrays["example"]) == list(range(16))
    assert not any(key.endswith("/maps") for key in arrays)
    nonempty = arrays["mask_nonempty"]
    for name, results in report["methods"].items():
      assert arrays[f"{name}/targets"].shape == (16,)
      for metric in image_metrics.SUITE_METRICS:
        values = arrays[f"{name}/{metric}"].astype(np.float64)
        if metric in ("pointing_game", "energy_pointing_game"):
          values = values[nonempty]
        np.testing.assert_allclose(results[metric], values.mean(), rtol=1e-12,
                                   err_msg=f"{name}/{metric}")


def test_mhex_only_by_default_and_nothing_for_plain(image_workdirs):
  config = _fast_eval(_image_config(), "")
  config.eval.num_gallery = 0  # No gallery, and no failure for the lack of one.
  gallery = os.path.join(image_workdirs["mhex"], "eval", "gallery.png")
  if os.path.exists(gallery):
    os.remove(gallery)
  report = eval_lib.evaluate(config, image_workdirs["mhex"])
  assert list(report["methods"]) == ["mhex"] and not os.path.exists(gallery)
  report = eval_lib.evaluate(_fast_eval(_image_config(mhex=False), ""), image_workdirs["plain"])
  assert report["methods"] == {}


def test_plain_model_comparison_has_no_mhex(image_workdirs):
  config = _fast_eval(_image_config(mhex=False), "grad_cam,integrated_gradients")
  report = eval_lib.evaluate(config, image_workdirs["plain"])
  assert list(report["methods"]) == ["grad_cam", "integrated_gradients"]
  with pytest.raises(ValueError, match="mhex.*cannot run"):
    eval_lib.evaluate(_fast_eval(_image_config(mhex=False), "mhex"), image_workdirs["plain"])


def _options(config, model) -> dict:
  return {m.name: dict(m.options) for m in methods_lib.resolve(config, model)}


def test_mhex_options_and_variants_are_checked():
  config = _fast_eval(_image_config(), "")
  model = model_lib.create_model(config)
  config.eval.mhex.beta_neg = -1.0
  assert _options(config, model) == {"mhex": {"beta_neg": -1.0}}
  config.eval.variants = {"mhex_wide": {"alpha": 0.5}}
  config.eval.methods = "all"
  resolved = methods_lib.resolve(config, model)
  assert resolved[-1] == methods_lib.Method("mhex_wide", "mhex", {"beta_neg": -1.0, "alpha": 0.5})
  assert [m.base for m in resolved[1:-1]] == list(registry.IMAGE_METHODS)
  assert resolved[1].options == {}  # grad_cam: no explainer_options set.
  config.eval.methods = "mhex"
  config.eval.variants = {"mhex_bad": {"sharpness": 1.0}}  # Checked though not run.
  with pytest.raises(ValueError, match=r"mhex_bad sets \['sharpness'\]"):
    methods_lib.resolve(config, model)
  config.eval.variants = {"grad_cam": {"alpha": 0.5}}
  with pytest.raises(ValueError, match="reuse explainer names"):
    methods_lib.resolve(config, model)
  config.eval.variants = {}
  config.eval.mhex.route = "attention"
  with pytest.raises(ValueError, match=r"\['route'\] apply to Transformer token maps only"):
    methods_lib.resolve(config, model)
  plain = model_lib.create_model(_image_config(mhex=False))
  config.eval.mhex.route = None
  config.eval.variants = {"mhex_wide": {"alpha": 0.5}}
  with pytest.raises(ValueError, match="model is plain"):
    methods_lib.resolve(config, plain)
  config.eval.variants = {}
  config.eval.methods = "score_cam"
  config.eval.explainer_options.score_cam = {"chunk": 4}
  with pytest.raises(ValueError, match=r"score_cam sets \['chunk'\].*'chunk_size'"):
    methods_lib.resolve(config, model)


def test_unknown_method_is_named(image_workdirs):
  with pytest.raises(ValueError, match="gradcam"):
    eval_lib.evaluate(_fast_eval(_image_config(), "mhex,gradcam"), image_workdirs["mhex"])


def test_scorer_workdir_scores_with_the_other_model(image_workdirs):
  config = _fast_eval(_image_config(), "mhex", num_devices=None)  # All 8 devices.
  own = eval_lib.evaluate(config, image_workdirs["mhex"])["methods"]["mhex"]
  config.eval.scorer_workdir = image_workdirs["plain"]
  report = eval_lib.evaluate(config, image_workdirs["mhex"])
  scored = report["methods"]["mhex"]
  assert report["scorer_workdir"] == image_workdirs["plain"]
  # Same maps (pointing game), another model's probabilities (drops).
  assert scored["pointing_game"] == own["pointing_game"]
  assert scored["sad"] != own["sad"] and scored["deletion_auc"] != own["deletion_auc"]


def test_scorer_must_solve_the_same_task(image_workdirs, tmp_path):
  config = json.load(open(os.path.join(image_workdirs["plain"], "config.json")))
  config["model"]["num_classes"] = 7
  other = tmp_path / "other"
  other.mkdir()
  (other / "config.json").write_text(json.dumps(config))
  eval_config = _fast_eval(_image_config(), "mhex")
  eval_config.eval.scorer_workdir = str(other)
  with pytest.raises(ValueError, match="7 classes"):
    eval_lib.evaluate(eval_config, image_workdirs["mhex"])
  eval_config.eval.scorer_workdir = str(tmp_path / "missing")
  with pytest.raises(errors.UserError, match="missing/config.json does not exist: .* is not a "
                                             "workdir written by train.py"):
    eval_lib.evaluate(eval_config, image_workdirs["mhex"])


def test_markdown_table_marks_lower_is_better():
  table = eval_lib.markdown_table({"a": {"avg_drop": 0.5, "deletion_auc": 0.25},
                                   "b": {"avg_drop": 0.125, "deletion_auc": None}},
                                  image_metrics.SUITE_METRICS)
  assert table.splitlines() == ["| method | avg_drop | deletion_auc ↓ |", "|---|---|---|",
                                "| a | 0.5000 | 0.2500 |", "| b | 0.1250 |  |"]


# Text ---------------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", "ran", "on",
         "mat", "rug", "stocks", "fell", "rose", "team", "won", "lost", "."]


def _text_config(tmp_path, mhex=True):
  vocab_dir = tmp_path / "vocab"
  vocab_dir.mkdir(exist_ok=True)
  (vocab_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
  (vocab_dir / "tokenizer_config.json").write_text(
      '{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
  rng = np.random.default_rng(0)
  rows = []
  for i in range(40):
    label = i % 2
    words = rng.choice(["stocks fell", "stocks rose"] if label else ["the cat sat", "team won"],
                       size=rng.integers(1, 4))
    rows.append(f'"{label + 1}","{" ".join(words)}","on the mat ."')
  (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")

  config = bert_agnews.get_config("plain" if not mhex else None)
  config.model_init = ""
  config.model.num_classes = 2
  for field, value in dict(vocab_size=len(VOCAB), hidden_size=16, num_layers=3, num_heads=2,
                           intermediate_size=24, max_positions=32).items():
    config.model[field] = value
  config.data.path = str(tmp_path / "data.csv")
  config.data.class_names = ()  # Two classes, not AG News' four: named "1" and "2".
  config.data.tokenizer_dir = str(vocab_dir)
  config.data.max_len = 16
  config.train.batch_size = 8
  config.train.num_epochs = 1
  config.eval.batch_size = 8
  # One variant row is enough to exercise them (each method compiles its own eval step).
  config.eval.variants = {"mhex_reference": {"route": "none"}} if mhex else {}
  return config


# Every method on MHEX-BERT; two on the plain one (each method compiles its own eval step).
@pytest.mark.parametrize("mhex,methods", [(True, "all"), (False, "attcat,attention_rollout")])
def test_text_comparison_report_and_html(tmp_path, mhex, methods):
  config = _text_config(tmp_path, mhex)
  workdir = str(tmp_path / "run")
  train_lib.train_and_evaluate(config, workdir)
  report = eval_lib.evaluate(_fast_eval(config, methods), workdir)
  model = model_lib.create_model(config)
  expected = (list(registry.available(model)) + list(config.eval.variants)
              if methods == "all" else methods.split(","))
  assert list(report["methods"]) == expected
  assert ("mhex" in report["methods"]) == mhex and "attcat" in report["methods"]
  for name, results in report["methods"].items():
    assert set(text_metrics.SUITE_METRICS) <= set(results), name
    assert results["num_examples"] == 8  # The 20% eval split of 40 rows.
    for metric in text_metrics.SUITE_METRICS:
      assert np.isfinite(results[metric]), (name, metric)
  with np.load(os.path.join(workdir, "eval", "per_example.npz")) as arrays:
    for name, results in report["methods"].items():
      for metric in text_metrics.SUITE_METRICS:
        np.testing.assert_allclose(results[metric], arrays[f"{name}/{metric}"].mean(),
                                   rtol=1e-6, err_msg=f"{name}/{metric}")
  page = open(os.path.join(workdir, "eval", "tokens.html")).read()
  for name in report["methods"]:
    assert f"<i>{name}</i>" in page
  assert "aopc" in open(os.path.join(workdir, "eval", "report.md")).read()


def test_collaboration_analysis_in_report(image_workdirs):
  config = _fast_eval(_image_config(), "")
  config.eval.collaboration_examples = 4
  config.eval.batch_size = 4
  report = eval_lib.evaluate(config, image_workdirs["mhex"])
  result = report["collaboration"]
  assert result["num_examples"] == 4
  assert len(result["cosine_mean"]) == 7  # ResNet-18: 8 MHEX blocks, 7 adjacent pairs.
  assert all(-1 <= c <= 1 for c in result["cosine_mean"])
  assert np.asarray(result["quality_map"]).shape == (7, 7)
  assert os.path.exists(os.path.join(image_workdirs["mhex"], "eval", "quality_map.png"))
  config = _fast_eval(_image_config(mhex=False), "")
  config.eval.collaboration_examples = 4
  with pytest.raises(ValueError, match="collaboration_examples"):
    eval_lib.evaluate(config, image_workdirs["plain"])


def test_first_example_selects_a_later_range(image_workdirs):
  config = _fast_eval(_image_config(), "mhex")
  config.eval.num_explain = 8
  fields = ("image", "label")
  dataset = input_pipeline.get_datasets(config.data, 4, need_train=False)[1]
  window = dict(batch_size=config.eval.batch_size, first=0, count=20)
  whole = np.concatenate([b["image"][k] for b, k in evaluators.explained_batches(
      dataset, fields, **window)])
  config.eval.first_example = 11  # Straddles the batches of 16.
  window = dict(window, first=11, count=8)
  later = np.concatenate([b["image"][k] for b, k in evaluators.explained_batches(
      dataset, fields, **window)])
  np.testing.assert_array_equal(later, whole[11:19])
  config.eval.save_maps = True
  report = eval_lib.evaluate(config, image_workdirs["mhex"])
  assert report["methods"]["mhex"]["num_examples"] == 8
  assert "examples 11..18" in open(os.path.join(image_workdirs["mhex"], "eval",
                                                "report.md")).read()
  # The saved maps are the ones the metrics scored: the energy pointing game recomputed from
  # them and the examples' masks (Σ S·M / Σ S) is the saved one.
  with np.load(os.path.join(image_workdirs["mhex"], "eval", "per_example.npz")) as arrays:
    assert list(arrays["example"]) == list(range(11, 19))
    maps = arrays["mhex/maps"]
    energy = arrays["mhex/energy_pointing_game"]
  masks = np.concatenate([b["mask"][k] for b, k in evaluators.explained_batches(
      dataset, ("image", "label", "mask"), **window)])
  assert maps.shape == (8, 16, 16) and maps.min() >= 0 and maps.max() <= 1
  np.testing.assert_allclose(energy, (maps * masks).sum((1, 2)) / maps.sum((1, 2)), rtol=1e-5)


def _with(config, **eval_fields):
  config = config.copy_and_resolve_references()
  for key, value in eval_fields.items():
    config.eval[key] = value
  return config

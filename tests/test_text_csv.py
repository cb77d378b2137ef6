"""Small CSVs that learn, or say why not: the token-length report, data.max_len="auto", the
validation split, train.min_steps, train.keep_best and the collapse warning of
``evaluators.Accuracy``; configs/text_csv.py with the path alone."""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # The tokenizers come from disk alone.

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import catalogue
from configs import text_csv
from mhex_jax import checkpoints
from mhex_jax import config_lib
from mhex_jax import errors
from mhex_jax import eval_lib
from mhex_jax import evaluators
from mhex_jax import model_lib
from mhex_jax import models
from mhex_jax import sharding as sharding_lib
from mhex_jax import train_lib
from mhex_jax import workdir as workdir_lib
from mhex_jax.data import input_pipeline
from mhex_jax.data import text

# One word, one token: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, then the words.
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "."]


@pytest.fixture
def tiny_dir(tmp_path):
  directory = tmp_path / "tokenizer"
  directory.mkdir()
  (directory / "vocab.txt").write_text(
      "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
  (directory / "tokenizer_config.json").write_text(
      '{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
  return directory


def _csv(path, word_counts, labels=None):
  """Rows "label","text" whose texts hold the given numbers of words (tokens)."""
  labels = labels or [1 + i % 2 for i in range(len(word_counts))]
  path.write_text("".join(f'"{label}","{" ".join(WORDS[j % len(WORDS)] for j in range(n))}"\n'
                          for label, n in zip(labels, word_counts)))
  return path


def _data_config(path, tokenizer_dir, **overrides):
  return ml_collections.ConfigDict({
      "path": str(path), "eval_path": "", "eval_fraction": 0.2, "split_seed": 0, "max_len": 8,
      "label_column": 0, "text_columns": (1,), "label_base": 1, "has_header": False,
      "tokenizer_dir": str(tokenizer_dir), **overrides})


def _messages(caplog):
  return " ".join(r.getMessage() for r in caplog.records)


# The token-length report and max_len="auto" ---------------------------------------------------

def test_the_length_report_names_the_share_cut_and_the_flag(tmp_path, tiny_dir, caplog):
  # Ten training texts of 1..10 words: 3..12 tokens with [CLS] and [SEP].
  train = _csv(tmp_path / "train.csv", range(1, 11))
  held_out = _csv(tmp_path / "eval.csv", [2, 3])
  report = text.length_report(np.arange(3, 13), 8)
  assert report._fields == ("num_texts", "median", "percentile_95", "longest", "max_len",
                            "cut_fraction")
  assert tuple(report) == pytest.approx((10, 7.5, 11.55, 12, 8, 0.4))
  with caplog.at_level(logging.INFO):
    data = text.load_text_data(_data_config(train, tiny_dir, eval_path=str(held_out)))
  assert data.max_len == 8 and data.train["input_ids"].shape == (10, 8)
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert f"data.max_len=8 cuts 40.0% of the training texts of {train} (10 texts" in warnings
  assert "median 7.5, 95th percentile 11.55, max 12" in warnings
  assert "--config.data.max_len=auto" in warnings and "16 here" in warnings

  caplog.clear()
  with caplog.at_level(logging.INFO):  # 4 of 10 cut at 8, none at 12: a line of information.
    text.load_text_data(_data_config(train, tiny_dir, eval_path=str(held_out), max_len=12))
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert "data.max_len=12 cuts 0.0% of them" in _messages(caplog)


def test_max_len_auto_is_the_95th_percentile_rounded_up_and_capped(tmp_path, tiny_dir, caplog):
  train = _csv(tmp_path / "train.csv", range(1, 11))
  held_out = _csv(tmp_path / "eval.csv", [2, 14])
  config = _data_config(train, tiny_dir, eval_path=str(held_out), max_len="auto")
  with caplog.at_level(logging.INFO):
    data = text.load_text_data(config)
  # 95th percentile 11.55 tokens, rounded up to a multiple of 8.
  assert data.max_len == 16
  assert data.train["input_ids"].shape == (10, 16) and data.eval["input_ids"].shape == (2, 16)
  assert "data.max_len=auto: 16 tokens" in _messages(caplog)
  # At most what the model reads.
  assert text.load_text_data(config, max_tokens=12).max_len == 12
  assert text.auto_max_len(np.array([3, 4, 5])) == 8
  # Evaluation chooses the same from the training texts, tokenizing only the eval texts.
  assert text.load_text_data(config, need_train=False).eval["input_ids"].shape == (2, 16)


@pytest.mark.parametrize("value", ["atuo", 0, -8, True, 8.5])
def test_bad_max_len_is_refused(tmp_path, tiny_dir, value):
  config = text_csv.get_config()
  config.data.max_len = value
  with pytest.raises(errors.ConfigError, match="must be a positive integer or 'auto'"):
    config_lib.validate(config)
  with pytest.raises(errors.DataError, match=r"data.max_len=.* must be a positive integer"):
    text.check_max_len(value)


def test_the_validation_split_leaves_the_eval_rows_as_they_were(tmp_path, tiny_dir):
  path = _csv(tmp_path / "data.csv", [1 + i % 7 for i in range(40)])
  without = text.load_text_data(_data_config(path, tiny_dir))
  data = text.load_text_data(_data_config(path, tiny_dir, val_fraction=0.25))
  for key, value in without.eval.items():
    np.testing.assert_array_equal(data.eval[key], value, err_msg=key)
  assert without.validation is None
  # 32 training rows, 16 of each class: a quarter of each held out.
  assert len(data.validation["label"]) == 8 and len(data.train["label"]) == 24
  assert np.bincount(data.validation["label"]).tolist() == [4, 4]
  rows = lambda d: sorted(map(tuple, d["input_ids"].tolist()))
  assert sorted(rows(data.train) + rows(data.validation)) == rows(without.train)


# The schedule ---------------------------------------------------------------------------------

def test_min_steps_lengthens_the_run_and_stretches_the_warmup():
  train = text_csv.get_config().train  # 3 epochs, at least 300 steps, 10% warmup.
  lr = train_lib.create_learning_rate(train, steps_per_epoch=13)
  assert train_lib.run_steps(train, 13) == 300
  assert float(lr(0)) == 0 and float(lr(30)) == pytest.approx(1e-4)
  assert float(lr(15)) == pytest.approx(0.5e-4)
  assert float(lr(300)) == pytest.approx(1e-5)
  assert train_lib.run_steps(train, 1000) == 3000  # A large file: 3 epochs.
  # Without min_steps the schedule is the one of before.
  train.min_steps = None
  lr = train_lib.create_learning_rate(train, steps_per_epoch=13)
  before = optax.warmup_cosine_decay_schedule(0.0, 1e-4, 3, 39, 1e-5)
  assert train_lib.run_steps(train, 13) == 39
  for step in (0, 2, 3, 20, 39):
    assert float(lr(step)) == float(before(step))


# The collapse warning ------------------------------------------------------------------------

def test_collapse_warning_names_both_figures_and_the_flags():
  message = evaluators.collapse_warning(np.array([0, 40, 0]), np.array([10, 20, 10]), 0.5,
                                        ("neg", "neu", "pos"))
  assert "100% of the 40 eval predictions are 'neu'" in message
  assert "the accuracy 0.5000 is at or below the majority-class rate 0.5000" in message
  for flag in ("--config.data.max_len=auto", "--config.train.num_epochs",
               "--config.train.min_steps", "--config.train.learning_rate",
               "--config.train.keep_best=val_accuracy"):
    assert flag in message
  # Spread predictions above the majority rate: nothing to say. One class of labels: neither.
  assert evaluators.collapse_warning(np.array([12, 18, 10]), np.array([10, 20, 10]), 0.9) is None
  assert evaluators.collapse_warning(np.array([0, 40]), np.array([0, 40]), 1.0) is None
  assert "class 1" in evaluators.collapse_warning(np.array([1, 39]), np.array([20, 20]), 0.525)


def test_accuracy_warns_when_a_model_predicts_one_class(caplog):
  model = models.BERT(num_classes=3, vocab_size=13, hidden_size=8, num_layers=1, num_heads=2,
                      intermediate_size=16, max_positions=16, mhex=False)
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 13, size=(12, 8)).astype(np.int32)
  arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids), "special_tokens_mask": np.zeros(ids.shape, bool),
            "label": np.arange(12, dtype=np.int32) % 3}
  dataset = input_pipeline.TextDataset(arrays, 3, ("a", "b", "c"))
  shapes = jax.eval_shape(model.init, jax.random.key(0), *dataset.dummy_inputs())
  variables = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), s.dtype), shapes)
  # A classifier that ignores its input: every text is class "b".
  variables["params"]["classifier"] = {"kernel": jnp.zeros((8, 3)),
                                       "bias": jnp.array([0.0, 5.0, 0.0])}
  accuracy = evaluators.Accuracy(model, dataset, 4, sharding_lib.make_mesh(1))
  with caplog.at_level(logging.WARNING):
    result = accuracy.run(variables)
  assert result["accuracy"] == pytest.approx(1 / 3)
  warning = _messages(caplog)
  assert "The model has learnt little beyond the class frequencies" in warning
  assert "100% of the 12 eval predictions are 'b'" in warning
  assert "--config.data.max_len=auto" in warning and "--config.train.min_steps" in warning
  caplog.clear()
  with caplog.at_level(logging.WARNING):  # A training loop's validation stays quiet.
    evaluators.Accuracy(model, dataset, 4, sharding_lib.make_mesh(1),
                        check_collapse=False).run(variables)
  assert "learnt little" not in _messages(caplog)


# configs/text_csv.py and train.keep_best ------------------------------------------------------

def test_text_csv_needs_only_the_path():
  config = text_csv.get_config()
  config.data.path = "reviews.csv"
  config_lib.validate(config)
  assert config.model.num_classes is None and config.data.max_len == "auto"
  assert config.train.keep_best == "val_accuracy" and config.data.val_fraction > 0
  assert config.train.min_steps and config.train.end_learning_rate
  assert config.model.mhex and not text_csv.get_config("plain").model.mhex
  with pytest.raises(errors.ConfigError, match="Unknown config argument 'plian'"):
    text_csv.get_config("plian")


def _tiny_bert(directory):
  """tests/catalogue.py's 1-layer BERT (width 8, the words above) with a pooler, which the
  plain model's head reads."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  catalogue._tiny_bert(directory)
  tensors = safetensors.numpy.load_file(directory / "model.safetensors")
  rng = np.random.default_rng(1)
  tensors["pooler.dense.weight"] = (0.02 * rng.normal(size=(8, 8))).astype(np.float32)
  tensors["pooler.dense.bias"] = np.zeros(8, np.float32)
  safetensors.numpy.save_file(tensors, directory / "model.safetensors",
                              metadata={"format": "pt"})


def _scripted_validation(monkeypatch, accuracies):
  """Validation accuracies in turn (the final eval runs for real); returns the steps seen."""
  run, values = evaluators.Accuracy.run, iter(accuracies)

  def scripted(self, variables):
    if self.check_collapse:
      return run(self, variables)
    return {"accuracy": next(values), "head_accuracy": [], "num_examples": 8}

  monkeypatch.setattr(evaluators.Accuracy, "run", scripted)


def test_keep_best_evaluates_and_serves_the_best_validation_step(tmp_path, monkeypatch, caplog):
  _tiny_bert(tmp_path / "bert")
  path = _csv(tmp_path / "data.csv", [2 + i % 5 for i in range(40)])
  config = text_csv.get_config("plain")
  config.model_init = str(tmp_path / "bert")
  config.data.path = str(path)
  config.data.text_columns = (1,)
  config.num_devices = 1
  config.train.batch_size = config.eval.batch_size = 8
  config.data.val_fraction = 0.25  # 32 training rows: 24 to train (3 steps an epoch), 8 to
  config.train.num_epochs = 2  # validate; 2 epochs, at least 12 steps: 4 epochs.
  config.train.min_steps = 12
  config.train.checkpoint_every_steps = 3
  config.train.keep_checkpoints = 4
  workdir = str(tmp_path / "run")
  # Epochs end at steps 3, 6, 9, 12: the tie at 0.75 goes to the later step, 9.
  _scripted_validation(monkeypatch, [0.5, 0.75, 0.75, 0.625])
  with caplog.at_level(logging.INFO):
    result = train_lib.train_and_evaluate(config, workdir)
  assert result["step"] == 12 and result["best_step"] == 9 and result["val_accuracy"] == 0.75
  assert "Evaluating the best step, 9 (val_accuracy 0.7500" in _messages(caplog)
  best = checkpoints.best_manager(workdir, create=False)
  assert best.all_steps() == [9] and checkpoints.best_selection(best) == (9, {
      "val_accuracy": 0.75})
  best.close()
  # What the data decided is saved: the classes of the file, max_len from its texts.
  saved = workdir_lib.load_config(workdir)
  assert saved.model.num_classes == 2 and saved.data.class_names == ["1", "2"]
  assert isinstance(saved.data.max_len, int) and saved.data.max_len % 8 == 0

  # Eval and explain read the best step, not the last (12).
  model = model_lib.create_model(saved)
  dummy = (np.zeros((1, saved.data.max_len), np.int32),) * 3
  replicated = sharding_lib.replicated(sharding_lib.make_mesh(1))
  caplog.clear()
  with caplog.at_level(logging.INFO):
    served = checkpoints.restore_variables(workdir, model, dummy, replicated)
  assert f"Restored {workdir} at step 9, its best step" in _messages(caplog)
  regular = checkpoints.manager(workdir, create=False)
  assert regular.all_steps() == [3, 6, 9, 12]
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, served)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  for step, same in ((9, True), (12, False)):
    saved_step = regular.restore(step, args=ocp.args.Composite(**{
        checkpoints.VARIABLES: ocp.args.PyTreeRestore(target, restore_args=restore_args)}))[
            checkpoints.VARIABLES]
    pairs = zip(jax.tree.leaves(served["params"]), jax.tree.leaves(saved_step["params"]))
    assert all(np.array_equal(a, b) for a, b in pairs) == same, step
  regular.close()
  # eval.py with the config file itself (num_classes and max_len left to the data).
  config.eval.num_explain = 8
  report = eval_lib.evaluate(config, workdir)
  assert report["accuracy"] == result["accuracy"]
  assert report["class_names"] == ["1", "2"]


def test_keep_best_without_a_validation_split_is_refused(tmp_path):
  _tiny_bert(tmp_path / "bert")
  config = text_csv.get_config("plain")
  config.model_init = str(tmp_path / "bert")
  config.data.path = str(_csv(tmp_path / "data.csv", [3] * 20))
  config.data.text_columns = (1,)
  config.data.val_fraction = None
  config.num_devices = 1
  with pytest.raises(errors.ConfigError, match="train.keep_best='val_accuracy' needs a "
                                               "validation split"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))


# benchmarks/text_baseline.py ------------------------------------------------------------------

def test_the_baseline_is_tfidf_and_l2_logistic_regression_at_their_defaults():
  from benchmarks import text_baseline  # pylint: disable=g-import-not-at-top
  train, test = text_baseline.tfidf(["The cat sat", "the dog, a dog"], ["cat cat unseen"])
  # Vocabulary cat, dog, sat, the ("a" is one character); smooth idf ln(3 / (1 + df)) + 1.
  idf = np.log(3 / 2) + 1
  first = np.array([idf, 0, idf, 1]) / np.sqrt(2 * idf**2 + 1)
  second = np.array([0, 2 * idf, 0, 1]) / np.sqrt(4 * idf**2 + 1)
  np.testing.assert_allclose(train, [first, second])
  np.testing.assert_allclose(test, [[1, 0, 0, 0]])
  # The minimum of C · Σ CE + ½‖W‖²: a zero gradient in W and in the (unpenalised) intercept.
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(30, 5)), rng.integers(0, 3, size=30)
  w, b = text_baseline.logistic_regression(x, y, 3, c=2.0)
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  residual = 2.0 * (p / p.sum(1, keepdims=True) - np.eye(3)[y])
  np.testing.assert_allclose(x.T @ residual + w, 0, atol=1e-5)
  np.testing.assert_allclose(residual.sum(0), 0, atol=1e-5)
  subset = text_baseline.stratified_subset(np.repeat([0, 1, 2], [10, 20, 30]), 12, seed=0)
  assert np.bincount(np.repeat([0, 1, 2], [10, 20, 30])[subset]).tolist() == [4, 4, 4]

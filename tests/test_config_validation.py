"""Bad config values are refused before any data is read or anything compiles, naming the
field, its value and what it must be; the entry points print the message without a traceback."""

import importlib
import os
import pathlib
import subprocess
import sys
import time

import pytest

from configs import default
from mhex_jax import config_lib
from mhex_jax import eval_lib
from mhex_jax import model_lib
from mhex_jax import train_lib



@pytest.mark.parametrize("field,value,message", [
    ("train.batch_size", -16, "train.batch_size=-16 must be a positive integer"),
    ("train.batch_size", 0, "train.batch_size=0 must be a positive integer"),
    ("train.num_epochs", 0, "train.num_epochs=0 must be a positive integer"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints=0 must be a positive integer"),
    ("train.checkpoint_every_steps", 0, "train.checkpoint_every_steps=0 must be a positive"),
    ("train.log_every_steps", 0, "train.log_every_steps=0 must be a positive integer"),
    ("train.learning_rate", -0.5, "train.learning_rate=-0.5 must be > 0"),
    ("train.learning_rate", float("inf"), "train.learning_rate=inf must be finite"),
    ("train.warmup_epochs", -1.0, "train.warmup_epochs=-1.0 must be >= 0"),
    ("train.end_learning_rate", 0.5, "train.end_learning_rate=0.5 must be at most "
     "train.learning_rate=0.05"),
    ("eval.num_explain", 0, "eval.num_explain=0 must be a positive integer"),
    ("eval.deletion_steps", 0, "eval.deletion_steps=0 must be a positive integer"),
    ("eval.first_example", -3, "eval.first_example=-3 must be >= 0"),
    ("eval.mhex.alpha", float("nan"), "eval.mhex.alpha=nan must be finite"),
    ("eval.mhex.alpha", 1.5, r"eval.mhex.alpha=1.5 must be in \[0, 1\]"),
    ("train.label_smoothing", 2.0, r"train.label_smoothing=2.0 must be in \[0, 1\]"),
    ("data.image_size", 0, "data.image_size=0 must be a positive integer"),
])
def test_bad_values_are_named_before_any_data_is_read(tmp_path, field, value, message):
  config = default.get_config()
  section, *rest = field.split(".")
  target = config[section]
  for part in rest[:-1]:
    target = target[part]
  target[rest[-1]] = value
  start = time.time()
  with pytest.raises(config_lib.ConfigError, match=message):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert time.time() - start < 5  # Nothing was generated or compiled.
  assert not os.path.exists(tmp_path / "run")


def test_batch_sizes_must_split_over_the_devices(tmp_path):
  config = default.get_config()
  config.eval.batch_size = 12  # 8 devices in the tests.
  with pytest.raises(config_lib.ConfigError, match=r"eval.batch_size=12 must be a multiple of "
                                                   r"the 8 devices \(e.g. 8\)"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  with pytest.raises(config_lib.ConfigError, match="eval.batch_size=12 must be a multiple"):
    eval_lib.evaluate(config, str(tmp_path / "run"))
  config_lib.validate(default.get_config(), 8)  # The defaults pass.


def test_unknown_fields_are_named_with_the_nearest_valid_one():
  config = default.get_config()
  assert config_lib.unknown_field(config, "train.batch_size") is None
  assert config_lib.unknown_field(config, "eval.mhex.alpha") is None
  assert config_lib.unknown_field(config, "train.bach_size").startswith(
      "Unknown config field train.bach_size; did you mean train.batch_size? The fields of train "
      "are: batch_size, checkpoint_every_steps,")
  assert config_lib.unknown_field(config, "trian.batch_size").startswith(
      "Unknown config field trian.batch_size; did you mean train?")
  assert config_lib.unknown_field(config, "eval.mhex.alpah").startswith(
      "Unknown config field eval.mhex.alpah; did you mean eval.mhex.alpha?")
  assert config_lib.unknown_field(config, "train.zzz").startswith(
      "Unknown config field train.zzz. The fields of train are:")
  assert config_lib.unknown_field(config, "seed.value") == (
      "Config field seed is a value (0), not a section: seed.value does not exist.")


def test_fields_with_fixed_values_are_checked():
  config = default.get_config()
  config.train.optimizer = "adam"
  config.eval.targets = "label"
  with pytest.raises(config_lib.ConfigError,
                     match=r"train.optimizer='adam' must be one of 'sgd', 'adamw' \(did you "
                           r"mean 'adamw'\?\); eval.targets='label' must be one of "
                           r"'predicted', 'labels' \(did you mean 'labels'\?\)"):
    config_lib.validate(config)


def test_rerun_with_a_changed_config_is_refused_unless_forced(tmp_path):
  from test_train import tiny_config
  config = tiny_config()
  config.train.num_epochs = 1
  workdir = str(tmp_path / "run")
  assert train_lib.train_and_evaluate(config, workdir, max_steps=2)["step"] == 2
  changed = tiny_config()
  changed.train.num_epochs = 1
  changed.train.batch_size = 8
  changed.train.learning_rate = 0.2
  changed.train.log_every_steps = 1  # Logging and checkpoint intervals may change.
  with pytest.raises(config_lib.ConfigError,
                     match=r"holds checkpoints of another config: train.batch_size: 16 in the "
                           r"workdir, 8 here; train.learning_rate: 0.05 in the workdir, 0.2 here"
                           r"\. .*--config.train.resume=force"):
    train_lib.train_and_evaluate(changed, workdir)
  same = tiny_config()
  same.train.num_epochs = 1
  same.train.log_every_steps = 1
  assert train_lib.train_and_evaluate(same, workdir)["step"] == 4
  changed.train.resume = "force"
  assert train_lib.train_and_evaluate(changed, workdir)["step"] == 8  # 8 steps of 8 per epoch.


# Each model built from a config with a key its class does not take, through train_and_evaluate
# (where configs become models): the error names the key, the model and the allowed keys.
@pytest.mark.parametrize("model_name,config_name,key", [
    ("resnet18", "default", "bogus"), ("resnet34", "default", "patch_size"),
    ("resnet50", "resnet18_imagenet", "bogus"), ("bert", "bert_agnews", "stem"),
    ("vit", "vit_imagenet", "width"), ("vit", "vit_imagenet", "input_channels"),
])
def test_a_stray_model_key_is_named_with_the_allowed_ones(tmp_path, model_name, config_name,
                                                         key):
  config = importlib.import_module(f"configs.{config_name}").get_config()
  config.model_name = model_name
  config.model[key] = 999
  allowed = ", ".join(model_lib.model_arguments(model_name))
  with pytest.raises(config_lib.ConfigError,
                     match=rf"model\.{key} is not an argument of {model_name} \(\w+\): remove "
                           rf"model\.{key}; its arguments are {allowed}\.$"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_train_py_names_a_stray_model_flag(tmp_path):
  """train.py's own flag parser refuses --config.model.bogus=1, naming the model's fields."""
  root = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run(
      [sys.executable, str(root / "train.py"), "--config=configs/vit_imagenet.py:quick",
       "--config.model.bogus=1", f"--workdir={tmp_path / 'run'}"],
      cwd=root, capture_output=True, text=True, timeout=120,
      env={**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"})
  assert result.returncode != 0
  assert ("Unknown config field model.bogus. The fields of model are: attention_dropout, "
          "class_token, dtype,") in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "run").exists()

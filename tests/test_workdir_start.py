"""Starting a run from another run's workdir (``weights.workdir_import``): the backbone, the batch
statistics and the MHEX gates W come from its checkpoint; the heads P start fresh when the class
count differs (or with new_head); other differences are refused before any data is read."""

import flax
import jax
import numpy as np
import pytest

from configs import default
from mhex_jax import checkpoints
from mhex_jax import model_lib
from mhex_jax import train_lib
from mhex_jax.errors import WeightsError
from mhex_jax.weights import workdir_import

IMAGE = 16


def _tiny_config():
  config = default.get_config()
  config.model.width = 4
  config.data.image_size = IMAGE
  config.data.num_train = 32
  config.data.num_eval = 16
  config.train.batch_size = 16
  config.train.num_epochs = 1
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.eval.batch_size = 16
  return config


@pytest.fixture(scope="module")
def source_workdir(tmp_path_factory):
  """A trained MHEX-ResNet-18 workdir (4 classes, 2 steps)."""
  workdir = str(tmp_path_factory.mktemp("source"))
  train_lib.train_and_evaluate(_tiny_config(), workdir)
  return workdir


def _fresh_variables(config, seed=1):
  model = model_lib.create_model(config)
  images = np.zeros((1, IMAGE, IMAGE, 3), np.float32)
  return model, model.init(jax.random.key(seed), images)


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def test_another_class_count_keeps_backbone_and_gates_and_starts_the_heads_fresh(
    source_workdir):
  config = _tiny_config()
  config.model.num_classes = 6
  _, init = _fresh_variables(config)
  variables, report = workdir_import.load_workdir_variables("resnet18", init, source_workdir)
  saved = {c: _flat(t) for c, t in checkpoints.restore_saved_variables(source_workdir).items()}
  new = {c: _flat(variables[c]) for c in ("params", "batch_stats")}
  fresh = {c: _flat(init[c]) for c in ("params", "batch_stats")}

  heads = sorted(f"params/{p}" for p in new["params"] if p.endswith("mhex/head/kernel"))
  assert heads and report["fresh"] == heads
  assert sorted(report["unused"]) == heads  # The workdir's 4-class heads.
  for collection in new:
    for path, value in new[collection].items():
      name = f"{collection}/{path}"
      if name in heads:
        assert value.shape[-1] == 6
        np.testing.assert_array_equal(value, fresh[collection][path])
      else:
        assert name in report["loaded"]
        np.testing.assert_array_equal(value, saved[collection][path])
  gates = [p for p in new["params"] if p.endswith("mhex/gate/kernel")]
  assert gates and all(f"params/{p}" in report["loaded"] for p in gates)
  # The workdir's values differ from a fresh init, so equality above means they were loaded.
  assert not np.array_equal(saved["params"][gates[0]], fresh["params"][gates[0]])


def test_plain_workdir_into_mhex_model_starts_gates_and_heads_fresh(tmp_path, source_workdir):
  config = _tiny_config()
  _, init = _fresh_variables(config)
  # Same class count, new_head: every head fresh, the gates loaded.
  _, report = workdir_import.load_workdir_variables("resnet18", init, source_workdir,
                                                    new_head=True)
  assert report["fresh"] and all(p.endswith("mhex/head/kernel") for p in report["fresh"])
  config.model.mhex = False
  _, plain_init = _fresh_variables(config)
  _, report = workdir_import.load_workdir_variables("resnet18", plain_init, source_workdir)
  # The MHEX workdir's gates and heads have no place in the plain model; its classifier is new.
  assert any(p.endswith("mhex/gate/kernel") for p in report["unused"])
  assert report["fresh"] == sorted(f"params/{p}" for p in _flat(plain_init["params"])
                                   if p.startswith("classifier/") or p.startswith("fc/"))


def test_another_architecture_or_model_name_is_refused(source_workdir):
  config = _tiny_config()
  config.model.width = 8
  _, init = _fresh_variables(config)
  with pytest.raises(WeightsError, match="(?s)differs beyond the heads.*mis-shaped"):
    workdir_import.load_workdir_variables("resnet18", init, source_workdir)
  with pytest.raises(WeightsError, match="workdir of a 'resnet18' model, not 'resnet34'"):
    workdir_import.check_workdir(source_workdir, "resnet34")


def test_training_starts_from_the_workdir(tmp_path, source_workdir):
  config = _tiny_config()
  config.model_init = source_workdir
  config.model_load.new_head = True
  config.train.num_epochs = 1
  workdir = str(tmp_path / "target")
  result = train_lib.train_and_evaluate(config, workdir, max_steps=1)
  assert result["step"] == 1

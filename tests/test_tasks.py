"""The modality named once (mhex_jax.tasks): which task each model gets, and that what a task
says about its model (forward call, dummy inputs, head count, batch keys) is what the model and
the datasets do."""

import inspect
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import random_variables
from configs import default
from mhex_jax import model_lib
from mhex_jax import tasks
from mhex_jax.data import dataset as dataset_lib
from mhex_jax.data import folder
from mhex_jax.data import input_pipeline
from mhex_jax.explain import methods as methods_lib
from mhex_jax.models import bert, resnet, vit

IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
IDS = jnp.array([[2, 5, 6, 7, 3, 0], [2, 8, 3, 0, 0, 0]], jnp.int32)
TEXT = {"input_ids": IDS, "attention_mask": (IDS > 0).astype(jnp.int32),
        "token_type_ids": jnp.zeros_like(IDS), "special_tokens_mask": IDS < 4}


class UserCNN(nn.Module):
  """A classifier of images that knows nothing of this project."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.Conv(4, (3, 3))(x).mean((1, 2)))


def _bert(mhex=True):
  return bert.BERT(num_classes=3, vocab_size=10, hidden_size=8, num_layers=2, num_heads=2,
                   intermediate_size=16, max_positions=8, mhex=mhex)


def _vit(class_token=True):
  return vit.ViT(num_classes=3, image_size=16, patch_size=4, hidden_size=8, num_layers=3,
                 num_heads=2, intermediate_size=16, class_token=class_token)


def test_each_model_gets_its_task():
  assert isinstance(tasks.task_of(_bert()), tasks.TextTask)
  for model in (resnet.ResNet(num_classes=3, width=4, stem="small"), _vit(), UserCNN()):
    assert isinstance(tasks.task_of(model), tasks.ImageTask), type(model).__name__
  assert tasks.task_of(_vit()).token_methods and not tasks.task_of(_vit(False)).token_methods
  assert not tasks.task_of(resnet.ResNet(num_classes=3, width=4)).token_methods
  assert tasks.task_of(_vit()).mhex_map == "patches"
  assert tasks.task_of(resnet.ResNet(num_classes=3, width=4)).mhex_map == "features"
  assert tasks.task_of(_bert()).mhex_map == "tokens"


def test_forward_is_the_models_own_call():
  model = _bert()
  variables = model.init(jax.random.key(0), IDS, TEXT["attention_mask"], TEXT["token_type_ids"])
  task = tasks.task_of(model)
  np.testing.assert_array_equal(
      task.forward(variables, TEXT),
      model.apply(variables, IDS, TEXT["attention_mask"], TEXT["token_type_ids"], train=False))
  np.testing.assert_array_equal(
      model.apply(variables, *task.model_args(TEXT), train=False),
      task.forward(variables, TEXT))
  # A user model without a train argument is called without one.
  cnn = UserCNN()
  cnn_variables = random_variables(cnn, IMAGES)
  np.testing.assert_array_equal(tasks.task_of(cnn).forward(cnn_variables, IMAGES),
                                cnn.apply(cnn_variables, IMAGES))


def test_dummy_inputs_and_heads_come_from_the_config_alone():
  config = default.get_config()
  config.data.image_size = 16
  config.model.width = 4
  model = model_lib.create_model(config)
  dummy = tasks.task_of(model).dummy_inputs(config.data)
  _, eval_ds = input_pipeline.get_datasets(
      ml_collections.ConfigDict({**config.data.to_dict(), "num_eval": 4}), 4, need_train=False)
  assert [x.shape for x in dummy] == [x.shape for x in eval_ds.dummy_inputs()]
  heads = model.apply(random_variables(model, *dummy), *dummy)
  assert tasks.head_count(model, config.data) == len(heads) == 8  # One per block.
  plain = resnet.ResNet(num_classes=4, width=4, stem="small", mhex=False)
  assert tasks.head_count(plain, config.data) == 1
  text_data = ml_collections.ConfigDict({"max_len": 6})
  text_dummy = tasks.task_of(_bert()).dummy_inputs(text_data)
  assert [x.shape for x in text_dummy] == [(1, 6)] * 3
  assert tasks.head_count(_bert(), text_data) == 2
  assert tasks.head_count(_vit(), ml_collections.ConfigDict({"image_size": 16})) == 3


def test_batch_fields_and_inputs():
  image, text = tasks.task_of(_vit()), tasks.task_of(_bert())
  assert image.batch_fields(True) == ("image", "label", "mask")
  assert image.batch_fields(False) == ("image", "label")
  assert image.inputs({"image": IMAGES, "label": 0}) is IMAGES
  assert set(text.inputs({**TEXT, "label": 0})) == set(TEXT)
  assert text.batch_fields(False) == text.input_keys + ("special_tokens_mask", "label")


def test_token_inputs_of_either_task():
  text = tasks.task_of(_bert()).token_inputs(TEXT, mask_special_keys=True)
  np.testing.assert_array_equal(text.valid, TEXT["attention_mask"] > 0)
  # Queries attend to no special token: [CLS] (2), [SEP] (3) and padding are masked keys.
  np.testing.assert_array_equal(text.args[1], (IDS > 3).astype(jnp.int32))
  image = tasks.task_of(_vit()).token_inputs({"image": IMAGES})
  assert image.valid.shape == (2, 17) and image.class_token
  with pytest.raises(ValueError, match=r"must be \{'image': images\}"):
    tasks.task_of(_vit()).token_inputs(TEXT)


def test_every_dataset_declares_the_interface():
  members = [n for n in vars(dataset_lib.Dataset) if not n.startswith("_")]
  assert set(members) == {"num_examples", "has_masks", "class_names", "validation",
                          "dummy_inputs", "batches"}
  protocol = inspect.signature(dataset_lib.Dataset.batches)
  for cls in (input_pipeline.InMemoryDataset, input_pipeline.TextDataset,
              input_pipeline.TfdsImageNet, folder.FolderDataset):
    # On the class: an instance's properties would read the data (tfds needs ImageNet); a
    # dataclass field without a default is on the class as a field only.
    assert all(hasattr(cls, m) or m in cls.__dataclass_fields__ for m in members), cls.__name__
    assert inspect.signature(cls.batches) == protocol, cls.__name__
  config = default.get_config()
  config.data.num_train, config.data.num_eval = 8, 4
  train, evaluation = input_pipeline.get_datasets(config.data, 4)
  text = input_pipeline.TextDataset({k: np.asarray(v) for k, v in TEXT.items()}
                                    | {"label": np.array([0, 1])}, 3, ("a", "b", "c"))
  for dataset in (train, evaluation, text):
    assert isinstance(dataset, dataset_lib.Dataset), type(dataset).__name__
  assert train.class_names is None and text.class_names == ("a", "b", "c")
  assert train.validation is None and text.validation is None
  assert evaluation.has_masks and not text.has_masks


def test_methods_resolve_for_a_model_that_knows_nothing_of_mhex():
  config = default.get_config()
  config.eval.methods = "grad_cam"
  assert methods_lib.resolve(config, UserCNN()) == (
      methods_lib.Method("grad_cam", "grad_cam", {}),)
  config.eval.methods = ""  # MHEX alone on an MHEX model: nothing on this one.
  assert methods_lib.resolve(config, UserCNN()) == ()
  config.eval.explainer_options.gradcam = {"layer": "Conv_0"}
  with pytest.raises(ValueError, match=r"explainer_options.gradcam: 'gradcam' is no explainer"):
    methods_lib.resolve(config, UserCNN())

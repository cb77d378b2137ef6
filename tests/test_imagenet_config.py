"""The ImageNet configs build their model, pipeline and a train step on tfds mock data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import resnet18_imagenet
from configs import vit_imagenet
from mhex_jax import input_pipeline
from mhex_jax import models
from mhex_jax import sharding as sharding_lib
from mhex_jax import train_lib


@pytest.mark.parametrize("config_module,num_heads", [(resnet18_imagenet, 8), (vit_imagenet, 12)])
def test_full_imagenet_config_one_train_step(tmp_path, config_module, num_heads):
  config = config_module.get_config()
  config.data.data_dir = str(tmp_path)
  # The full model at full resolution, with a batch small enough for a CPU.
  config.train.batch_size = 8
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    train_ds, eval_ds = input_pipeline.get_datasets(config.data, config.model.num_classes)
    assert train_ds.num_examples == 8
    batch = next(train_ds.batches(8, train=True, seed=0, epoch=0))
    eval_batch = next(eval_ds.batches(8, train=False))
  assert batch["image"].shape == (8, 224, 224, 3) and batch["image"].dtype == np.float32
  assert eval_batch["image"].shape == (8, 224, 224, 3) and eval_batch["valid"].all()

  model = models.create_model(config.model)
  mesh = sharding_lib.make_mesh()
  optimizer = train_lib.create_optimizer(config.train, steps_per_epoch=1)
  dummy = (np.zeros((1, 224, 224, 3), np.float32),)
  state = train_lib.create_train_state(model, optimizer, dummy, config.seed)
  head_logits = jax.eval_shape(model.apply, state.variables, jnp.zeros((1, 224, 224, 3)))
  assert head_logits.shape == (num_heads, 1, 1000)  # One MHEX head per block / layer.
  step = train_lib.jit_train_step(
      train_lib.make_train_step(model, optimizer, jnp.ones((num_heads,)), 0.1), mesh)
  state, metrics = step(sharding_lib.replicate(state, mesh), sharding_lib.shard_batch(
      {"image": batch["image"], "label": batch["label"]}, mesh))
  assert int(state.step) == 1
  assert np.isfinite(float(metrics["loss"]))

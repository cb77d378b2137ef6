"""The ImageNet configs build their model, pipeline and a train step on tfds mock data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import resnet18_imagenet
from configs import vit_imagenet
from mhex_jax.data import input_pipeline
from mhex_jax import model_lib
from mhex_jax import sharding as sharding_lib
from mhex_jax import train_lib


# The same architecture, narrowed so a real step runs in seconds on a CPU.
NARROW = {"resnet18": {"width": 8},
          "vit": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64}}


@pytest.mark.parametrize("config_module,num_heads", [(resnet18_imagenet, 8), (vit_imagenet, 12)])
def test_full_imagenet_config_train_step(tmp_path, config_module, num_heads):
  """The full config's pipeline gives 224 px batches; its full-size train step is built and
  lowered from shapes alone (the ViT-B step would need ~14 GB and minutes on a CPU); the same
  config, narrowed, takes a real step on those batches."""
  config = config_module.get_config()
  config.data.data_dir = str(tmp_path)
  config.train.batch_size = 8
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    train_ds, eval_ds = input_pipeline.get_datasets(config.data, config.model.num_classes)
    assert train_ds.num_examples == 8
    batch = next(train_ds.batches(8, train=True, seed=0, epoch=0))
    eval_batch = next(eval_ds.batches(8, train=False))
  assert batch["image"].shape == (8, 224, 224, 3) and batch["image"].dtype == np.float32
  assert eval_batch["image"].shape == (8, 224, 224, 3) and eval_batch["valid"].all()
  batch = {"image": batch["image"], "label": batch["label"]}
  mesh = sharding_lib.make_mesh()
  dummy = (np.zeros((1, 224, 224, 3), np.float32),)

  def train_step(config):
    model = model_lib.create_model(config)
    optimizer = train_lib.create_optimizer(config.train, steps_per_epoch=1)
    step = train_lib.jit_train_step(
        train_lib.make_train_step(model, optimizer, jnp.ones((num_heads,)), 0.1), mesh)
    return model, optimizer, step

  model, optimizer, step = train_step(config)
  abstract = jax.eval_shape(
      lambda: train_lib.create_train_state(model, optimizer, dummy, config.seed))
  head_logits = jax.eval_shape(model.apply, abstract.variables, jnp.zeros((1, 224, 224, 3)))
  assert head_logits.shape == (num_heads, 1, 1000)  # One MHEX head per block / layer.
  num_params = sum(np.prod(x.shape) for x in jax.tree.leaves(abstract.params))
  assert num_params > (11e6 if config.model_name == "resnet18" else 86e6)
  lowered = step.lower(abstract, jax.eval_shape(lambda: batch))
  assert "stablehlo" in lowered.as_text()[:10000]

  for field, value in NARROW[config.model_name].items():
    config.model[field] = value
  model, optimizer, step = train_step(config)
  state = train_lib.create_train_state(model, optimizer, dummy, config.seed)
  state, metrics = step(sharding_lib.replicate(state, mesh),
                        sharding_lib.shard_batch(batch, mesh))
  assert int(state.step) == 1
  assert np.isfinite(float(metrics["loss"]))

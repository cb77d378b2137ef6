r"""MHEX-ResNet-18 on a MedMNIST subset (default PneumoniaMNIST, 28 px), small-image stem.

    python train.py --config=configs/resnet18_medmnist.py \
        --config.data.path=PATH/pneumoniamnist.npz \
        --workdir=workdirs/pneumonia_mhex
    python eval.py --config=configs/resnet18_medmnist.py \
        --config.data.path=PATH/pneumoniamnist.npz \
        --workdir=workdirs/pneumonia_mhex

The plain ResNet-18 baseline with the same recipe: add ``--config.model.mhex=False`` (or use
the ``:plain`` argument). Other subsets: set data.path, model.num_classes,
model.input_channels/data.as_rgb and data.image_size (28, 64, 128 or 224).

``:pretrained`` is the method's MedMNIST protocol: a standard ResNet-18 (ImageNet stem, width
64, 3 channels) at 64 px, started from pretrained weights with every head re-initialised, SGD
1e-4, momentum 0.9, 5 epochs. ``model_init`` is the MHEX-ResNet-18 workdir of
``configs/resnet18_imagenet.py:pretrained`` (its backbone and gates W load, the heads P start
fresh for the new class count), or any ImageNet ResNet-18 file, directory or hub id (default:
``microsoft/resnet-18``; see that config's docstring for where to get the weights):

    python train.py --config=configs/resnet18_medmnist.py:pretrained \
        --config.data.path=PATH/pneumoniamnist.npz \
        --config.model_init=gs://BUCKET/mhex_r18_ft --workdir=workdirs/pneumonia_pretrained

Hardware: 2-core x86 CPU, no accelerator. Time: 432 steps (12 epochs) in 8–11 min. Result
(measured, PneumoniaMNIST val): MHEX-ResNet-18 0.975, plain ResNet-18 (``:plain``) 0.970.
"""

from mhex_jax import config_lib


def get_config(arg=None):
  config_lib.check_arg(arg, ("plain", "pretrained"))
  config = config_lib.base_config()
  config.model_name = "resnet18"
  config.model = config_lib.resnet_model()
  config.model.num_classes = 2
  config.model.input_channels = 1
  # Half the standard width (32 → 256 channels): 4× fewer FLOPs, so a run fits a 2-core CPU.
  # --config.model.width=64 gives the standard ResNet-18 (about 4× slower).
  config.model.width = 32
  config.model.stem = "small"
  config.model.mhex = arg != "plain"
  config.data.name = "medmnist"
  config.data.path = ""
  config.data.train_split = "train"
  config.data.eval_split = "val"
  config.data.image_size = 28
  # PneumoniaMNIST's classes; give another subset's names (or ()) with its data.path.
  config.data.class_names = ("normal", "pneumonia")
  config.data.mean = (0.5,)
  config.data.std = (0.5,)
  config.data.augment = "crop"
  config.train.batch_size = 128
  config.train.num_epochs = 12
  config.train.optimizer = "sgd"
  config.train.learning_rate = 0.05
  config.train.weight_decay = 5e-4
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 100
  config.eval.batch_size = 256
  config.eval.num_explain = 524
  # Small images: 20 deletion/insertion steps of ~50 (32 px) or ~40 (28 px) pixels each.
  config.eval.deletion_steps = 20
  config.eval.num_gallery = 8
  if arg == "pretrained":
    pretrained_recipe(config)
  return config


def pretrained_recipe(config):
  """The ImageNet ResNet-18's shape at 64 px, fresh heads, SGD 1e-4 with momentum for 5 epochs."""
  config.model_init = "microsoft/resnet-18"
  config.model_load.new_head = True  # The plain model's classifier too: other classes.
  config.model.stem = "imagenet"
  config.model.width = 64
  config.model.input_channels = 3
  config.data.as_rgb = True
  config.data.image_size = 64
  config.data.mean = (0.485, 0.456, 0.406)  # The weights' ImageNet normalisation.
  config.data.std = (0.229, 0.224, 0.225)
  config.train.num_epochs = 5
  config.train.optimizer = "sgd"
  config.train.learning_rate = 1e-4
  config.train.momentum = 0.9
  config.train.warmup_epochs = 0.0
  config.train.weight_decay = 0.0

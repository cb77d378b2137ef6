r"""MHEX-ResNet-18 on ImageNet (tfds ``imagenet2012`` as array_record), 224 px.

    python train.py --config=configs/resnet18_imagenet.py --workdir=gs://BUCKET/mhex_r18 \
        --config.data.data_dir=/path/to/tensorflow_datasets [--distributed]

Build the dataset once with ``tfds build imagenet2012 --file_format=array_record`` (needs the
ImageNet tarballs and TensorFlow for that one step). ``last_stage_stride=1`` gives the reference's
14×14 final map at 224 px.

Hardware: a TPU v3-8 or 8 GPUs (batch 1024, 90 epochs). Expected result: MHEX-ResNet-18 ≈ 70.6%
top-1 as reported by the authors' pre-release code; not measured by this project, which
has no accelerator.

``:pretrained`` is the method's own protocol: MHEX-ResNet-18 fine-tuned from ImageNet weights
(AdamW 1e-4, cosine to 2e-5, 10 epochs, batch 256). The backbone loads from
``model_init``; the MHEX gates W and heads P start fresh and the file's classifier goes unused.
Weights: torchvision's ``resnet18-f37072fd.pth`` (ImageNet1K_V1) or timm's ``resnet18.a1_in1k``
``model.safetensors`` as a file, or a Hugging Face directory or id (default: the hub id
``microsoft/resnet-18``, downloaded into the Hugging Face cache on first use; offline, fetch it
elsewhere with ``hf download microsoft/resnet-18`` and copy the cache, or pass a local path):

    python train.py --config=configs/resnet18_imagenet.py:pretrained \
        --config.model_init=/path/to/resnet18-f37072fd.pth --workdir=gs://BUCKET/mhex_r18_ft

``:quick``, as in every config, is a small model on the built-in synthetic shapes that trains on
a CPU to a measured result: here the run of ``configs/default.py`` (MHEX-ResNet-18 width 16,
small-image stem, 32 px, 1,000 steps of batch 64; 2-core CPU, 4–9 min, test accuracy 0.998):

    python train.py --config=configs/resnet18_imagenet.py:quick --workdir=runs/resnet18_quick
"""

from mhex_jax import config_lib


def get_config(arg=None):
  config_lib.check_arg(arg, ("quick", "pretrained"))
  if arg == "quick":
    return config_lib.synthetic_resnet18()
  config = config_lib.base_config()
  config.model_name = "resnet18"
  config.model = config_lib.resnet_model()
  config.model.stem = "imagenet"
  config.model.last_stage_stride = 1
  config.model.dtype = "bfloat16"
  config_lib.use_imagenet(config, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  config.train.num_epochs = 90
  config.train.learning_rate = 0.4  # 0.1 × batch / 256.
  config.train.warmup_epochs = 5.0
  config.train.weight_decay = 1e-4
  config.train.label_smoothing = 0.1
  if arg == "pretrained":
    pretrained_recipe(config)
  return config


def pretrained_recipe(config):
  """Fine-tuning from ImageNet weights: the published ResNet's stride and width, AdamW 1e-4 with a
  cosine to 2e-5 over 10 epochs."""
  config.model_init = "microsoft/resnet-18"
  config.model.last_stage_stride = 2  # As the weights were trained.
  config.train.batch_size = 256
  config.train.num_epochs = 10
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-4
  config.train.end_learning_rate = 2e-5
  config.train.warmup_epochs = 0.0
  config.train.weight_decay = 0.05
  config.train.label_smoothing = 0.0
  config.eval.batch_size = 256

r"""MHEX-ViT-B/16 on ImageNet (tfds ``imagenet2012`` as array_record), optionally from a local
Hugging Face ViT checkpoint (``--config.model_init=DIR``, e.g. google/vit-base-patch16-224
saved with ``save_pretrained``).

    python train.py --config=configs/vit_imagenet.py --config.data.data_dir=DIR \
        --workdir=gs://BUCKET/mhex_vit [--distributed]

Hardware: TPU v3-8 or 8 GPUs; not run by this project (no accelerator here).

``:quick``, as in every config, is a small model on the built-in synthetic shapes that trains
on a CPU to a measured result: here a tiny MHEX-ViT (convolutional patch stem to a 4-pixel patch grid, 4 layers,
width 64) on 16,000 built-in synthetic shapes (flips and crops), 3,000 steps of batch 64:

    python train.py --config=configs/vit_imagenet.py:quick --workdir=runs/vit_quick
    python eval.py --config=configs/vit_imagenet.py:quick --workdir=runs/vit_quick

Measured for ``:quick`` (2-core CPU, 6 min): test accuracy 0.933 (heads 0.932-0.933); MHEX
pointing game 0.997 (1 px tolerance), energy pointing game 0.584 on the 1,000
test images with the default attention-routed map (docs/results.md, "MHEX on Transformers"). The
``eval.variants`` below are scored beside it by ``--config.eval.methods=all``.
"""

from mhex_jax import config_lib


def get_config(arg=None):
  config_lib.check_arg(arg, ("quick",))
  config = config_lib.base_config()
  config.model_name = "vit"
  config.model = config_lib.vit_model()  # ViT-B/16 at 224 px, linear patch stem, no dropout.
  config.model_init = ""
  config.model_load.new_head = True
  # A gate on the MLP branch, starting at exactly 1: the residual stream is never shrunk.
  config.model.gate_placement = "branch"
  config.model.gate_init = "identity"
  config.model.dtype = "bfloat16"

  config_lib.use_imagenet(config, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
  config.train.num_epochs = 300
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-3
  config.train.warmup_epochs = 10.0
  config.train.weight_decay = 0.05
  config.train.label_smoothing = 0.1

  if arg == "quick":
    config.model.num_classes = 4
    config.model.image_size = 32
    config.model.patch_size = 4
    config.model.hidden_size = 64
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.intermediate_size = 128
    config.model.dtype = "float32"
    config.model.patch_stem = "conv"
    # Register tokens (arXiv 2309.16588), kept out of the pooling and the maps: 0 here;
    # --config.model.num_register_tokens=4 is the variant measured in docs/results.md.
    config.model.num_register_tokens = 0
    # From scratch a random gate trains faster than the identity start (measured on ViT,
    # see models/vit.py); identity is for starting from a pretrained checkpoint.
    config.model.gate_init = "random"
    config.data.name = "synthetic"
    config.data.image_size = 32
    # A ViT has no built-in translation invariance: on 8,000 images it memorised the training
    # set (train 0.97, test 0.78); twice the data plus flips and crops closes the gap.
    config.data.num_train = 16000
    config.data.num_eval = 1000
    config.data.eval_split = "test"  # "val": another held-out stream, for choosing options.
    config.data.augment = "flip,crop"
    config.data.mean = (0.5, 0.5, 0.5)
    config.data.std = (0.25, 0.25, 0.25)
    config.train.batch_size = 64
    config.train.num_epochs = 12
    config.train.learning_rate = 1e-3
    config.train.warmup_epochs = 1.0
    config.train.weight_decay = 0.05
    config.train.label_smoothing = 0.0
    config.train.log_every_steps = 25
    config.train.checkpoint_every_steps = 250
    config.eval.batch_size = 200
    config.eval.num_explain = 1000
    config.eval.pointing_tolerance = 1
  config.eval.variants = config_lib.transformer_variants(
      config.model.num_classes, spec_layers=(), default_layers=(-1,))
  config.eval.variants.update(config_lib.vit_flow_variants())
  return config

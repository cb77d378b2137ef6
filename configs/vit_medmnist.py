r"""MHEX-ViT fine-tuned from a pretrained checkpoint of the ViT family (ViT, DeiT, DINOv2 with or
without registers) on a MedMNIST subset (default PneumoniaMNIST), plain with ``:plain``.

    python train.py --config=configs/vit_medmnist.py --config.model_init=DIR_OR_ID \
        --config.data.path=PATH/pneumoniamnist.npz --workdir=workdirs/pneumonia_vit
    python eval.py --workdir=workdirs/pneumonia_vit

``model_init`` is a ``save_pretrained`` directory or a Hugging Face Hub id (default
``facebook/dinov2-small``, downloaded into the Hugging Face cache on first use; offline, fetch
it elsewhere with ``hf download facebook/dinov2-small`` and copy the cache, or pass a local
directory). Its config.json gives the architecture; every backbone weight loads and the MHEX
gates W and heads P start fresh (the gate at exactly 1, so step 0 is the pretrained network).
Images are resized to ``data.image_size`` (default 224): a DINOv2 runs at any multiple of its
patch size (position embeddings interpolated, as transformers does); a ViT or DeiT at its own
size, or at another with ``--config.model.position_interpolation=bicubic``. Normalisation is
ImageNet's (DINOv2's, DeiT's); google/vit-* checkpoints use mean = std = 0.5: set ``data.mean``
and ``data.std`` to the checkpoint's ``preprocessor_config.json``.

Hardware: an accelerator for ViT-S/B at 224 px (not run by this project at that size: a 2-core
CPU has none). The commands run here on tiny random checkpoints (docs/usage.md, "From a
pretrained checkpoint").
"""

import ml_collections

from mhex_jax import config_lib


def get_config(arg=None):
  config_lib.check_arg(arg, ("plain",))
  config = config_lib.base_config()
  config.model_name = "vit"
  # Architecture: model_init's config.json.
  config.model = ml_collections.ConfigDict({
      "num_classes": 2, "mhex": arg != "plain", "gate_init": "identity",
      "gate_placement": "branch", "saliency_features": "ungated", "dtype": "float32"})
  config.model_init = "facebook/dinov2-small"
  config.model_load.new_head = True  # The plain model's classifier: other classes.
  config.data.name = "medmnist"
  config.data.path = ""
  config.data.train_split = "train"
  config.data.eval_split = "val"
  config.data.image_size = 224
  config.model.image_size = config.data.get_ref("image_size")  # The model runs at that size.
  config.data.as_rgb = True
  config.data.class_names = ("normal", "pneumonia")
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)
  config.data.augment = "crop"
  config.train.batch_size = 64
  config.train.num_epochs = 5
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-4
  config.train.end_learning_rate = 1e-5
  config.train.warmup_epochs = 0.5
  config.train.weight_decay = 0.05
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 100
  config.eval.batch_size = 64
  config.eval.num_explain = 256
  config.eval.num_gallery = 8
  if config.model.mhex:
    config.eval.variants = config_lib.transformer_variants(
        config.model.num_classes, spec_layers=(), default_layers=(-1,))
  return config

r"""MHEX-ResNet-18 on your own images: a folder of class folders or a CSV manifest, 128 px gray.

    python train.py --config=configs/image_folder.py --config.data.path=PATH/xrays \
        --workdir=runs/xrays_mhex
    python eval.py --workdir=runs/xrays_mhex
    python explain.py --workdir=runs/xrays_mhex PATH/xrays/pneumonia/img_0001.png

The data (``data.path``; `mhex_jax.data.folder` has the details):

- ``PATH/<class>/**/<image>``: one folder per class, named as the class; 20% of each class is
  held out for evaluation (``data.eval_fraction``, shuffled by ``data.split_seed``); or
  ``PATH/{train,val,test}/<class>/...`` with the splits given (``data.eval_split``: val);
- or a CSV manifest, rows ``path,label[,mask_path]`` (header detected), paths relative to it.

PNG, JPEG, TIFF, BMP and DICOM files, 8- or 16-bit, gray or colour. ``data.intensity``
(``full_range``, ``min_max`` or DICOM's ``window``) maps pixels to [0, 1] in training, eval and
explain.py alike. Images are gray (colour ones converted, with a warning); for colour images
add ``--config.data.as_rgb=True --config.model.input_channels=3``. Every image's centred square
is resized to 128 px, as explain.py fits it. The only augmentation is a horizontal flip, since
a medical image's intensities carry the finding: no colour jitter; turn the flip off with
``--config.data.augment=`` where left and right differ (chest X-rays: the heart's side).

Masks of the object (any nonzero pixel): ``--config.data.mask_root=PATH/masks``, each at its
image's relative path, or the manifest's third column; eval.py then scores the pointing game and
energy pointing game (8 px tolerance at 128 px, the 15 px of 224 px). ``:plain`` trains the
plain ResNet-18 baseline with the same recipe. ``:pretrained`` starts from ImageNet weights
(``microsoft/resnet-18`` by default, or ``--config.model_init=DIR``): the standard ResNet-18 (3
channels, width 64), ImageNet normalisation, fresh heads, SGD 1e-3 with momentum for 20 epochs.
On a small collection, ``--config.data.val_fraction=0.1 --config.train.keep_best=val_accuracy``
keeps the epoch best on a validation split of the training images, and
``--config.train.min_steps=N`` sets a floor on the number of steps.

Hardware: 2-core x86 CPU, no accelerator. Time (measured on a shared machine): 0.85 s per step
of 32 images (plain: 0.76 s), so 30 epochs of 1,000 training images (940 steps) take about
14 min; the folder reader fits about 600 PNGs of 256 px per second, far ahead of training.
Result: none is claimed; it depends on your data.
"""

import ml_collections

from mhex_jax import config_lib


def get_config(arg=None):
  config_lib.check_arg(arg, ("plain", "pretrained"))
  config = config_lib.base_config()
  config.model_name = "resnet18"
  config.model = config_lib.resnet_model()
  config.model.num_classes = config_lib.placeholder(int)  # None: the class folders (labels).
  config.model.input_channels = 1
  # Half the standard width (32 → 256 channels) and the ImageNet stem (stride 4): 128 px images
  # train on a CPU; --config.model.width=64 gives the standard ResNet-18.
  config.model.width = 32
  config.model.stem = "imagenet"
  config.model.mhex = arg != "plain"

  config.data.name = "folder"
  config.data.path = ""
  config.data.eval_path = ""  # Another folder or manifest to evaluate on.
  config.data.train_split = "train"  # Split folders, when data.path has them.
  config.data.eval_split = "val"
  config.data.eval_fraction = 0.2  # Without split folders: held out of every class,
  config.data.split_seed = 0  # shuffled by this seed.
  config.data.mask_root = ""  # Masks at the images' relative paths (or a manifest column).
  # A manifest's header row: True, False or "auto" (detected). Typed `object` so that
  # --config.data.has_header=True parses.
  config.data.has_header = ml_collections.FieldReference("auto", field_type=object)
  config.data.skip_unreadable = False  # True: skip undecodable files, logged with a count.
  config.data.num_workers = 0  # Decoding threads; 0: one per CPU.
  config.data.image_size = 128
  config.data.as_rgb = False
  config.data.class_names = ()  # () reads them from the data (sorted folder names / labels).
  config.data.mean = (0.5,)
  config.data.std = (0.25,)
  config.data.augment = "flip"
  config.data.intensity = "full_range"

  config.train.batch_size = 32
  config.train.num_epochs = 30
  config.train.optimizer = "sgd"
  config.train.learning_rate = 0.05
  config.train.weight_decay = 5e-4
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 200
  config.eval.batch_size = 64
  config.eval.num_explain = 256
  config.eval.deletion_steps = 50
  config.eval.pointing_tolerance = 8
  if arg == "pretrained":
    config.model_init = "microsoft/resnet-18"
    config.model_load.new_head = True  # The plain model's classifier too: other classes.
    config.model.width = 64
    config.model.input_channels = 3
    config.data.as_rgb = True
    config.data.mean = (0.485, 0.456, 0.406)  # The weights' ImageNet normalisation.
    config.data.std = (0.229, 0.224, 0.225)
    config.train.num_epochs = 20
    config.train.learning_rate = 1e-3
    config.train.momentum = 0.9
    config.train.warmup_epochs = 0.0
  return config

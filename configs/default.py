r"""MHEX-ResNet-18 (width 16, small-image stem) on the built-in synthetic shapes.

The project's default run: no files needed, sized for a CPU.

    python train.py --config=configs/default.py --workdir=workdirs/default
    python eval.py --config=configs/default.py --workdir=workdirs/default

Hardware: 2-core x86 CPU, no accelerator. Time: 1,000 steps in 4–9 min (9 min 44 s for `make
demo` from a clean clone, install included, on a shared machine). Result (measured): test accuracy
0.996; MHEX pointing game 0.989 (1 px tolerance; 0.837 strict), energy pointing game 0.309, AVG Drop
0.738, SAD 0.717, EAD 0.546.
"""

from mhex_jax import config_lib


def get_config(arg=None):
  config_lib.check_arg(arg, ())
  config = config_lib.base_config()
  config.model_name = "resnet18"
  config.model = config_lib.resnet_model()
  config.model.num_classes = 4
  config.model.width = 16
  config.model.stem = "small"
  config.data.name = "synthetic"
  config.data.image_size = 32
  config.data.num_train = 8000
  config.data.num_eval = 1000
  config.data.eval_split = "test"  # "val": another held-out stream, for choosing options.
  config.train.batch_size = 64
  config.train.num_epochs = 8
  config.train.learning_rate = 0.05
  config.train.log_every_steps = 25
  config.train.checkpoint_every_steps = 250
  config.eval.num_explain = 1000
  # Small images: 20 deletion/insertion steps of ~50 (32 px) or ~40 (28 px) pixels each.
  config.eval.deletion_steps = 20
  # The standard pointing game allows 15 px at 224 px (≈ 2 px at 32 px); we allow 1 px.
  config.eval.pointing_tolerance = 1
  return config

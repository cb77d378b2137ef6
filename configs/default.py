r"""MHEX-ResNet-18 (width 16, small-image stem) on the built-in synthetic shapes.

The project's default run: no files needed, sized for a CPU.

    python train.py --config=configs/default.py --workdir=workdirs/default
    python eval.py --config=configs/default.py --workdir=workdirs/default

Hardware: 2-core x86 CPU, no accelerator. Time: 1,000 steps in 4–9 min (9 min 44 s for `make
demo` from a clean clone, install included, on a shared machine). Result (measured 2026-12-03): test
accuracy 0.998; MHEX pointing game 0.972 (1 px tolerance; 0.915 strict), energy pointing game 0.295,
AVG Drop 0.686, SAD 0.688, EAD 0.635.
"""

from mhex_jax import config_lib


def get_config(arg=None):
  config_lib.check_arg(arg, ())
  return config_lib.synthetic_resnet18()

r"""Trains a model from a config: python train.py --config=configs/default.py --workdir=DIR.

The checkout's name for the installed ``mhex-train`` (mhex_jax/cli/train.py).
"""

from mhex_jax.cli import train

if __name__ == "__main__":
  train.run()

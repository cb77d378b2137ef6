r"""Trains a model from a config: mhex-train --config=default --workdir=DIR.

From a checkout, ``python train.py --config=configs/default.py --workdir=DIR`` runs the same.
"""

from absl import flags

from mhex_jax import cli
from mhex_jax import devices
from mhex_jax import train_lib

FLAGS = flags.FLAGS
cli.define_flags("Where checkpoints and metrics go; rerun to resume.")


def main(argv):
  cli.start(argv)
  devices.log_backend()
  train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run():
  """The ``mhex-train`` console script."""
  cli.run(main)

r"""Trains a model from a config: mhex-train --config=default --workdir=DIR.

From a checkout, ``python train.py --config=configs/default.py --workdir=DIR`` runs the same.
"""

from absl import flags
from absl import logging
import jax

from mhex_jax import cli
from mhex_jax import train_lib

FLAGS = flags.FLAGS
cli.define_flags("Where checkpoints and metrics go; rerun to resume.")


def main(argv):
  cli.start(argv)
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run():
  """The ``mhex-train`` console script."""
  cli.run(main)

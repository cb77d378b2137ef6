r"""Trains a model from a config: python train.py --config=configs/default.py --workdir=DIR."""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mhex_jax import distributed
from mhex_jax import train_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go; rerun to resume.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize(FLAGS)
  train_lib.quiet_library_logs()
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except FloatingPointError as error:
    # The message says which checkpoint is left; a traceback would bury it.
    logging.error("%s", error)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)

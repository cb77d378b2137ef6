r"""Evaluates a trained workdir: python eval.py --config=configs/default.py --workdir=DIR.

Writes DIR/eval/report.json and DIR/eval/gallery.png. Evaluate on another file of the same
format with --config.data.eval_path=FILE (and --config.data.eval_split=NAME for npz files).
"""

import json

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from mhex_jax import distributed
from mhex_jax import eval_lib
from mhex_jax import train_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "A workdir written by train.py.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize(FLAGS)
  train_lib.quiet_library_logs()
  report = eval_lib.evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)

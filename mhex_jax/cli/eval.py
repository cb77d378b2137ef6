r"""Evaluates a trained workdir: mhex-eval --workdir=DIR [--config.eval.methods=all ...].

Without ``--config`` the config saved in the workdir by training is used (``--config.field=value``
overrides apply to it); a given ``--config`` must build the workdir's model. From a checkout,
``python eval.py --workdir=DIR`` runs the same.
Writes DIR/eval/report.json and DIR/eval/gallery.png. Evaluate on another file of the same
format with --config.data.eval_path=FILE (and --config.data.eval_split=NAME for npz files).
"""

import json
import sys

from absl import flags
import jax

from mhex_jax import cli
from mhex_jax import devices
from mhex_jax import eval_lib

FLAGS = flags.FLAGS
cli.define_flags("A workdir written by mhex-train (train.py).")


def main(argv):
  cli.start(argv)
  devices.log_backend()
  report = eval_lib.evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(json.dumps(report, indent=2))


def run():
  """The ``mhex-eval`` console script."""
  cli.run(main, argv=cli.with_saved_config(sys.argv))

r"""Evaluates a trained workdir: python eval.py --config=configs/default.py --workdir=DIR.

The checkout's name for the installed ``mhex-eval`` (mhex_jax/cli/eval.py): writes
DIR/eval/report.json and DIR/eval/gallery.png.
"""

from mhex_jax.cli import eval as eval_cli

if __name__ == "__main__":
  eval_cli.run()

r"""Explains images or texts with a trained workdir or a pretrained Hugging Face classifier:

    python explain.py --workdir=DIR a.png ...
    python explain.py --model_init=HF_DIR a.png ...

The checkout's name for the installed ``mhex-explain`` (mhex_jax/cli/explain.py).
"""

from mhex_jax.cli import explain

if __name__ == "__main__":
  explain.run()

r"""Explains images or texts with a trained workdir: python explain.py --workdir=DIR a.png ...

The checkout's name for the installed ``mhex-explain`` (mhex_jax/cli/explain.py).
"""

from mhex_jax.cli import explain

if __name__ == "__main__":
  explain.run()

"""The config a workdir was trained with (``WORKDIR/config.json``) as a config file:
``--config=.../saved_config.py:WORKDIR``. ``eval.py`` uses it when no ``--config`` is given,
so ``--config.field=value`` overrides still apply."""

from mhex_jax import workdir as workdir_lib


def get_config(workdir):
  return workdir_lib.load_config(workdir)

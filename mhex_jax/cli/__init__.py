"""Command-line entry points: the installed ``mhex-train`` / ``mhex-eval`` and a checkout's
``train.py`` / ``eval.py`` run the same ``main`` (``mhex_jax.cli.train``, ``mhex_jax.cli.eval``).

``--config`` takes a config file as ml_collections does (``configs/default.py``,
``my_config.py:arg``) or the name of a config shipped with the package (``default``,
``vit_imagenet:quick``), so an installed package runs without a checkout.
"""

import functools
import os
import pathlib
import sys
from typing import Callable, Optional

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mhex_jax import compile_cache
from mhex_jax import config_lib
from mhex_jax import distributed
from mhex_jax import errors
from mhex_jax import host_allocator
from mhex_jax.cli import logs

FLAGS = flags.FLAGS


def config_dir() -> pathlib.Path:
  """The shipped config files: ``mhex_jax/configs`` in an installed package, else the checkout's
  ``configs/`` (run from the source tree, or installed in editable mode)."""
  package = pathlib.Path(__file__).resolve().parents[1]
  installed = package / "configs"
  return installed if installed.is_dir() else package.parent / "configs"


def config_names() -> list[str]:
  return sorted(p.stem for p in config_dir().glob("*.py") if p.stem != "__init__")


def config_path(argument: str) -> str:
  """``--config``'s value as ml_collections loads it: an existing file is kept as given, a shipped
  config's name (with or without ``.py``) becomes its path; a ``:arg`` suffix is kept."""
  path, colon, arg = argument.partition(":")
  if os.path.isfile(path):
    return argument
  name = path.removesuffix(".py")
  if name in config_names():
    return f"{config_dir() / name}.py{colon}{arg}"
  raise ValueError(f"{path!r} is neither a config file nor a shipped config; shipped configs: "
                   f"{', '.join(config_names())} (e.g. --config=default, "
                   f"--config=vit_imagenet:quick).")


class _ShippedConfigParser(flags.ArgumentParser):
  """ml_collections' config file parser, given a shipped config's path for its name."""

  def __init__(self, file_parser: flags.ArgumentParser):
    self._file_parser = file_parser

  def parse(self, argument):
    try:
      return self._file_parser.parse(config_path(argument))
    except ValueError as error:
      # ml_collections puts a config's own traceback in the message: keep only what it says.
      if isinstance(error.__context__, errors.UserError):
        raise ValueError(str(error.__context__)) from None
      raise

  def flag_type(self):
    return self._file_parser.flag_type()


def with_saved_config(argv: list[str]) -> list[str]:
  """``argv`` with ``--config`` set to the workdir's saved config when it has none (the
  ``--config.field=value`` overrides then apply to the saved config)."""
  if any(a == "--config" or a.startswith("--config=") for a in argv):
    return argv
  workdir = None
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      workdir = arg.split("=", 1)[1]
    elif arg == "--workdir" and i + 1 < len(argv):
      workdir = argv[i + 1]
  if workdir is None:
    return argv  # The required-flag error names --workdir.
  saved = pathlib.Path(__file__).with_name("saved_config.py")
  return [argv[0], f"--config={saved}:{workdir}", *argv[1:]]


def define_flags(workdir_help: str) -> None:
  """--config (with --config.field=value overrides), --workdir and the multi-process flags."""
  config_flags.DEFINE_config_file(
      "config", None, "Config file (configs/x.py[:arg]) or a shipped config's name "
      f"({', '.join(config_names())}; e.g. vit_imagenet:quick).", lock_config=True)
  # DEFINE_config_file takes no parser: wrap its own to resolve the shipped configs' names.
  FLAGS["config"].parser = _ShippedConfigParser(FLAGS["config"].parser)
  flags.DEFINE_string("workdir", None, workdir_help)
  distributed.define_flags()
  compile_cache.define_flags()
  flags.mark_flags_as_required(["config", "workdir"])


def start(argv: list[str]) -> None:
  """What each entry point does first: refuses stray arguments, starts the JAX processes as the
  flags say, turns on the compilation cache, keeps large host buffers in the heap
  (``host_allocator``) and quiets the libraries' INFO lines."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize(FLAGS)
  compile_cache.enable_from_flags(FLAGS)
  host_allocator.keep_large_buffers()
  logs.quiet_library_logs()


# What a user can fix: printed as one message, without a traceback. Any other exception is a
# bug and keeps its traceback. OSErrors are the environment (a missing file, a full disk).
USER_ERRORS = (errors.UserError, FloatingPointError, OSError)


def _fatal(message: str) -> None:
  """Exits as absl does on a bad flag: the message on stderr, status 1."""
  sys.stderr.write(f"FATAL Flags parsing error: {message}\n"
                   "Pass --helpshort or --helpfull to see help on flags.\n")
  sys.exit(1)


def _unknown_override(argv: list[str]) -> Optional[str]:
  """The message for the first ``--config.FIELD=...`` naming no field of the loaded config."""
  given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
  if "config" not in FLAGS or not given:
    return None
  # ml_collections fails while loading --config (checking the overrides' types), before it
  # sets the flag's value: load the file again to name the fields.
  config = FLAGS["config"].parser.parse(given[-1])
  for arg in argv[1:]:
    if arg.startswith("--config."):
      field = arg[len("--config."):].split("=", 1)[0]
      message = config_lib.unknown_field(config, field)
      if message:
        return f"{arg}: {message}"
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with an override of an unknown config field (which ml_collections
  reports as a bare AttributeError or KeyError) named in plain words, nearest field included."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    _fatal(str(error))
  except (AttributeError, KeyError) as error:
    message = _unknown_override(argv)
    if message is None:
      raise
    _fatal(message)
  raise AssertionError("unreachable")


def _main_with_clean_errors(main: Callable[[list[str]], None], argv: list[str]) -> None:
  try:
    main(argv)
  except USER_ERRORS as error:
    # The message names the field, file or checkpoint and the fix: a traceback would bury it.
    logging.error("%s", error)
    sys.exit(1)
  finally:
    compile_cache.log_summary()


def _log_unraisable(unraisable) -> None:
  """Exceptions Python cannot raise (in a finaliser, or a coroutine the checkpointing library
  dropped after a failed read) go to the debug log (--verbosity=1), not as tracebacks on
  stderr: the error that matters is raised and reported where it happened."""
  logging.debug("Ignored %s in %r: %s", type(unraisable.exc_value).__name__,
                unraisable.object, unraisable.exc_value)


def run(main: Callable[[list[str]], None], argv: Optional[list[str]] = None) -> None:
  """``app.run(main)`` for the console scripts: the flag parser above, and user errors
  (``USER_ERRORS``) printed without a traceback, exit status 1."""
  sys.unraisablehook = _log_unraisable
  app.run(functools.partial(_main_with_clean_errors, main), argv=argv,
          flags_parser=parse_flags)

"""JAX's persistent compilation cache for the entry points: a second run on the same model reads
its compiled programs back from disk instead of compiling them again.

On by default in ``train.py``, ``eval.py`` and ``explain.py``, in a per-user directory:
``$MHEX_JAX_CACHE_DIR``, else JAX's own ``$JAX_COMPILATION_CACHE_DIR``, else
``$XDG_CACHE_HOME/mhex_jax/jax``, else ``~/.cache/mhex_jax/jax``.
``--compilation_cache_dir=DIR`` picks another (a shared or cloud path works too), and
``--nocompilation_cache`` turns it off. Every program is cached, however small or quick to
compile, so a repeated command compiles nothing; the run's last log line counts the programs
read back and compiled.
"""

import dataclasses
import os
from typing import Optional

from absl import flags
from absl import logging
import jax
from jax import monitoring

_HITS = "/jax/compilation_cache/cache_hits"
_WRITES = "/jax/compilation_cache/cache_misses"  # Recorded when a compiled program is written.


def default_dir() -> str:
  for variable in ("MHEX_JAX_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR"):
    if os.environ.get(variable):
      return os.environ[variable]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mhex_jax", "jax")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_bool("compilation_cache", True, "Keep compiled programs in a persistent cache "
                    "(--nocompilation_cache: compile everything anew).",
                    flag_values=flag_values)
  flags.DEFINE_string("compilation_cache_dir", None, "Where compiled programs are kept "
                      f"(default: $MHEX_JAX_CACHE_DIR or {default_dir()}).",
                      flag_values=flag_values)


@dataclasses.dataclass
class CacheStats:
  """Programs read back from the cache and compiled (then written) since ``enable``."""
  directory: str
  hits: int = 0
  compiled: int = 0

  def _count(self, event: str, **kwargs) -> None:
    del kwargs
    if event == _HITS:
      self.hits += 1
    elif event == _WRITES:
      self.compiled += 1

  def summary(self) -> str:
    return (f"Compilation cache {self.directory}: {self.hits} programs read back, "
            f"{self.compiled} compiled.")


_stats: Optional[CacheStats] = None


def enable(directory: Optional[str] = None) -> CacheStats:
  """Turns the persistent cache on for this process (before anything compiles)."""
  global _stats
  directory = directory or default_dir()
  jax.config.update("jax_compilation_cache_dir", directory)
  # Cache every program: by default JAX skips those compiled in under a second, and a command
  # compiles dozens of those.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if _stats is None:
    _stats = CacheStats(directory)
    monitoring.register_event_listener(_stats._count)  # pylint: disable=protected-access
  _stats.directory = directory
  return _stats


def enable_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Optional[CacheStats]:
  if not flag_values.compilation_cache:
    return None
  return enable(flag_values.compilation_cache_dir)


def log_summary() -> None:
  """Logs the programs read back and compiled, when the cache is on."""
  if _stats is not None:
    logging.info("%s", _stats.summary())

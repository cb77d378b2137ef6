"""Multi-process start-up shared by ``train.py`` and ``eval.py``.

``--distributed`` alone lets ``jax.distributed.initialize()`` detect the cluster (TPU pods,
SLURM, ...); on clusters it cannot detect, pass the coordinator's address, the number of
processes and this process' id. CPU processes exchange data through gloo collectives (the
setting is ignored on TPU and GPU).
"""

from absl import flags
import jax

_EXPLICIT = ("coordinator_address", "num_processes", "process_id")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_bool("distributed", False, "Start as one of several JAX processes "
                    "(jax.distributed.initialize; multi-host pods, SLURM, several CPUs).",
                    flag_values=flag_values)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for clusters "
                      "jax.distributed cannot detect (with --num_processes and --process_id).",
                      flag_values=flag_values)
  flags.DEFINE_integer("num_processes", None, "Number of processes (with "
                       "--coordinator_address).", flag_values=flag_values)
  flags.DEFINE_integer("process_id", None, "This process' id, 0..num_processes − 1.",
                       flag_values=flag_values)


def initialize(flag_values: flags.FlagValues) -> None:
  """Calls ``jax.distributed.initialize`` as the flags say (nothing without --distributed)."""
  given = {name: flag_values[name].value for name in _EXPLICIT
           if flag_values[name].value is not None}
  if not flag_values.distributed:
    if given:
      raise flags.ValidationError(f"--{', --'.join(given)} need --distributed.")
    return
  if given and len(given) != len(_EXPLICIT):
    missing = [f"--{name}" for name in _EXPLICIT if name not in given]
    raise flags.ValidationError(f"Pass all of --coordinator_address, --num_processes and "
                                f"--process_id, or none (auto-detection); missing {missing}.")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**given)

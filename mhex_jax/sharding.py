"""Device mesh and data-parallel placement.

One ``Mesh`` over all devices with a ``data`` axis (a ``model`` axis of size 1 is kept so model
sharding can be added without changing call sites). Axis types are Auto: with Explicit axes a
matmul over a sharded axis is rejected.
"""

from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mhex_jax.errors import ConfigError

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A [data, model=1] mesh over the first ``num_devices`` devices (default: all)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ConfigError(f"num_devices={num_devices} but {len(devices)} devices are available.")
    devices = devices[:num_devices]
  grid = np.asarray(devices).reshape(len(devices), 1)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS),
              axis_types=(jax.sharding.AxisType.Auto,) * 2)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  data_size = mesh.shape[DATA_AXIS]
  if batch_size % data_size:
    raise ConfigError(f"batch_size={batch_size} must be divisible by the {data_size} devices of "
                      f"the data axis; use a multiple of {data_size}.")


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Builds global arrays from this process' slice of a batch (multi-host safe)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` (the same values on every process) replicated on every device of ``mesh``.

  With several processes the mesh spans devices of other hosts, which ``device_put`` of a
  device array cannot reach; each process then fills its own devices from host memory.
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                             lambda index, x=np.asarray(x): x[index]), tree)


def gather_batch(tree: Any) -> Any:
  """Every process' rows of a batch, as numpy arrays in the data pipeline's batch order.

  ``tree`` holds this process' rows (numpy) or batch-sharded global arrays (``shard_batch``,
  or a jitted step's per-example outputs). Process p holds the p-th contiguous block of each
  global batch (``mhex_jax.data.pipeline``), so the gathered blocks are the batch in order,
  the same on every process and the same as one process would see.
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))

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

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A [data, model=1] mesh over the first ``num_devices`` devices (default: all)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are available.")
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
    raise ValueError(f"batch_size={batch_size} must be divisible by the {data_size} devices of "
                     f"the data axis; use a multiple of {data_size}.")


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Builds global arrays from this process' slice of a batch (multi-host safe)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def gather_batch(tree: Any) -> Any:
  """Every process' rows of a batch, as numpy arrays in the data pipeline's batch order.

  ``tree`` holds this process' rows (numpy) or batch-sharded global arrays (``shard_batch``,
  or a jitted step's per-example outputs). Process p holds rows p, p + P, ... of each global
  batch (``mhex_jax.data.pipeline``), and a global array stores the processes' rows one block
  after another; both come back interleaved into batch order, the same on every process and
  the same as one process would see.
  """
  count = jax.process_count()
  if count == 1:
    return jax.tree.map(np.asarray, tree)
  gathered = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(
      lambda x: np.asarray(x).reshape(count, -1, *x.shape[1:]).swapaxes(0, 1).reshape(x.shape),
      gathered)

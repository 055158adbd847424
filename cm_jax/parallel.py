"""Mesh, shardings and global arrays: data parallel over every device of every process."""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
  """Starts jax.distributed only when a launcher asks for it (CM_JAX_DISTRIBUTED=1)."""
  if os.environ.get("CM_JAX_DISTRIBUTED", "0") == "1":
    jax.distributed.initialize()


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices; Auto axes so jit places collectives itself."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  devices, processes = mesh.devices.size, jax.process_count()
  if global_batch_size % devices or global_batch_size % processes:
    raise ValueError(
        f"train.batch_size={global_batch_size} is not divisible by the {devices} devices "
        f"({processes} processes); set --config.train.batch_size to a multiple of {devices}.")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's rows -> global arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}

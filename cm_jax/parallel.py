"""Mesh, shardings, global arrays from per-process data, and distributed initialisation.

Default: pure data parallel, a 1-D `data` mesh over every device of every process, the state
replicated. `parallel.fsdp=K` adds an `fsdp` axis of K devices: each parameter, optimizer moment
and EMA array is split along its largest K-divisible dimension over that axis (the batch is split
over both axes), and jit's partitioner all-gathers weights where the step needs them.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cm_jax import progress as progress_lib
from cm_jax.errors import UserError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"

log = logging.getLogger("cm_jax")

# Set by launch/train.sh; the last three only for processes it starts itself (--num_processes).
ENV_DISTRIBUTED = "CM_JAX_DISTRIBUTED"
ENV_COORDINATOR = "CM_JAX_COORDINATOR"      # host:port of process 0
ENV_NUM_PROCESSES = "CM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "CM_JAX_PROCESS_ID"


def distributed_args(environ=None) -> Optional[dict]:
  """The jax.distributed.initialize keyword arguments the environment asks for.

  None: single process (CM_JAX_DISTRIBUTED unset or 0). {}: let JAX discover the cluster (TPU pod,
  SLURM, Open MPI). Explicit coordinator / process count / id: local multi-process runs.
  """
  env = os.environ if environ is None else environ
  if env.get(ENV_DISTRIBUTED, "0") != "1":
    return None
  names = {ENV_COORDINATOR: "coordinator_address", ENV_NUM_PROCESSES: "num_processes",
           ENV_PROCESS_ID: "process_id"}
  given = {k: env[k] for k in names if env.get(k)}
  if not given:
    return {}
  if len(given) != len(names):
    missing = ", ".join(k for k in names if k not in given)
    raise UserError(f"{', '.join(given)} set but {missing} not: set all three (launch/train.sh "
                    "--num_processes=K does) or none (to let JAX discover the cluster).")
  try:
    count, pid = int(given[ENV_NUM_PROCESSES]), int(given[ENV_PROCESS_ID])
  except ValueError:
    raise UserError(f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers, got "
                    f"{given[ENV_NUM_PROCESSES]!r} and {given[ENV_PROCESS_ID]!r}.") from None
  if count < 1 or not 0 <= pid < count:
    raise UserError(f"{ENV_PROCESS_ID}={pid} must lie in [0, {ENV_NUM_PROCESSES}={count}).")
  if ":" not in given[ENV_COORDINATOR]:
    raise UserError(f"{ENV_COORDINATOR} must be host:port, got {given[ENV_COORDINATOR]!r}.")
  return {"coordinator_address": given[ENV_COORDINATOR], "num_processes": count,
          "process_id": pid}


def maybe_initialize_distributed() -> None:
  """Starts jax.distributed only when a launcher asks for it (CM_JAX_DISTRIBUTED=1).

  Must run before anything touches a JAX backend. CPU processes exchange collectives through gloo
  (JAX's CPU client otherwise has no cross-process collectives). jax.distributed also starts the
  preemption sync service: SIGTERM on any process makes every process stop at the same step (see
  `reached_preemption_sync_point`).
  """
  kwargs = distributed_args()
  if kwargs is None or jax.distributed.is_initialized():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  _orbax_barriers_through_coordinator()
  log.info("jax.distributed: process %d of %d, %d local / %d global devices.",
           jax.process_index(), jax.process_count(), jax.local_device_count(),
           jax.device_count())


def _orbax_barriers_through_coordinator() -> None:
  """Orbax's barriers through jax.distributed's coordination service (with a timeout) rather than
  a collective: CPU (gloo) collectives give up after 30 s when processes arrive far apart, as
  they do while one still compiles."""
  import orbax.checkpoint  # noqa: F401  (defines the flag)
  from absl import flags
  if "experimental_orbax_use_distributed_barrier" in flags.FLAGS:
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True


def _coordination_client():
  """jax.distributed's coordination-service client (None when JAX found the cluster without
  it); its barriers and key-value store wait for minutes, unlike collectives."""
  from jax._src import distributed  # the public API has only collective-based barriers
  return distributed.global_state.client


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process gets here (a no-op for one process): through the coordination
  service, so processes may arrive minutes apart (compiling), unlike a collective."""
  if jax.process_count() == 1:
    return
  client = _coordination_client()
  if client is None:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
  else:
    client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def from_process_0(name: str, value: str = "", timeout_s: int = 1800) -> str:
  """Process 0's `value` on every process (the argument elsewhere is ignored), through the
  coordination service's key-value store, so process 0 may take minutes to decide."""
  if jax.process_count() == 1:
    return value
  client = _coordination_client()
  if client is None:
    from jax.experimental import multihost_utils
    data = np.frombuffer(value.encode().ljust(4096, b"\0")[:4096], np.uint8)
    return bytes(multihost_utils.broadcast_one_to_all(data)).rstrip(b"\0").decode()
  if jax.process_index() == 0:
    client.key_value_set(name, value)
    return value
  return client.blocking_key_value_get(name, timeout_s * 1000)


def reached_preemption_sync_point(step: int) -> bool:
  """True on every process at the same step once any process got SIGTERM (multi-process runs
  only; a single process handles its signals itself and gets False here)."""
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils
  return multihost_utils.reached_preemption_sync_point(step)


def create_mesh(devices=None, fsdp: int = 1) -> Mesh:
  """A 1-D `data` mesh over all devices, or (data, fsdp) when fsdp > 1; Auto axes, so jit places
  collectives itself. The fsdp groups are consecutive devices (the same host where they fit)."""
  devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
  fsdp = int(fsdp)
  if fsdp < 1 or devices.size % fsdp:
    raise UserError(f"parallel.fsdp={fsdp} must be a positive divisor of the {devices.size} "
                    "devices: set --config.parallel.fsdp to one (1 = pure data parallel).")
  if fsdp == 1:
    return Mesh(devices, (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  return Mesh(devices.reshape(-1, fsdp), (DATA_AXIS, FSDP_AXIS),
              axis_types=(jax.sharding.AxisType.Auto,) * 2)


def fsdp_size(mesh: Mesh) -> int:
  return int(mesh.shape[FSDP_AXIS]) if FSDP_AXIS in mesh.axis_names else 1


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device: over `data`, and `fsdp` when there is one."""
  axes = tuple(mesh.axis_names)
  return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))


def fsdp_spec(shape: tuple[int, ...], k: int) -> P:
  """Splits the largest dimension divisible by k (the last of equals) over `fsdp`; scalars and
  arrays with no such dimension stay replicated."""
  if k <= 1:
    return P()
  best = None
  for i, d in enumerate(shape):
    if d % k == 0 and d >= k and (best is None or d >= shape[best]):
      best = i
  if best is None:
    return P()
  return P(*([None] * best + [FSDP_AXIS]))


def state_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree of arrays / ShapeDtypeStructs: replicated, or FSDP-split."""
  k = fsdp_size(mesh)
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), k)), abstract_tree)


def reshard(tree: Any, shardings: Any) -> Any:
  """Moves global arrays to other shardings (all processes call it; jit inserts collectives)."""
  return jax.jit(lambda t: t, out_shardings=shardings)(tree)


def to_global(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array every process holds in full (indices, labels)."""
  host = np.asarray(host)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def over_rows(fn, mesh: Mesh, num_fixed: int = 1, num_rows: int = 1):
  """fn(*fixed, *rows) jitted with the `num_fixed` leading arguments replicated and the
  `num_rows` others (row batches; None passes through) split over every device of the mesh.

  Host row batches become global arrays (jit takes no host arrays for a mesh that spans
  processes: every process passes the same rows and computes only its devices' share), and the
  outputs come back replicated, so every process reads the whole batch.
  """
  repl, data = replicated(mesh), batch_sharding(mesh)
  jitted = jax.jit(fn, in_shardings=(repl,) * num_fixed + (data,) * num_rows, out_shardings=repl)

  def call(*args):
    rows = [r if r is None or isinstance(r, jax.Array) else to_global(r, data)
            for r in args[num_fixed:]]
    return jitted(*args[:num_fixed], *rows)
  return call


def to_global_tree(tree: Any, sharding: NamedSharding) -> Any:
  """`to_global` for every leaf of a tree every process holds in full (weights)."""
  return jax.tree.map(lambda a: to_global(np.asarray(a), sharding), tree)


def check_batch_size(global_batch_size: int, mesh: Mesh, grad_accum: int = 1) -> None:
  devices, processes = mesh.devices.size, jax.process_count()
  if grad_accum < 1:
    raise UserError(f"train.grad_accum={grad_accum}: give the number of micro-batches a batch "
                    "is split into, 1 (no split) or more.")
  if global_batch_size < 1:
    raise UserError(f"train.batch_size={global_batch_size} must be a positive multiple of the "
                    f"{devices} devices.")
  if global_batch_size % devices or global_batch_size % processes:
    raise UserError(
        f"train.batch_size={global_batch_size} is not divisible by the {devices} devices "
        f"({processes} processes); set --config.train.batch_size to a multiple of {devices}.")
  if global_batch_size % (devices * grad_accum):
    raise UserError(
        f"train.batch_size={global_batch_size} does not split into train.grad_accum={grad_accum} "
        f"micro-batches over {devices} devices; make the batch a multiple of "
        f"{devices * grad_accum} (devices x grad_accum) or change grad_accum.")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's rows -> global arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def device_batch_size(batch_size: int, num_rows: int, mesh: Mesh) -> int:
  """The one batch size of a batched loop over `num_rows`: at most `batch_size` (never more than
  the rows), rounded up to split evenly over every device of the mesh."""
  return round_up(max(1, min(batch_size, num_rows)), mesh.devices.size)


def map_in_batches(fn, rows, batch_size: int, to_host=jax.device_get,
                   progress: Optional[str] = None):
  """fn(*batch) over independent rows in batches of exactly `batch_size`, outputs concatenated.

  rows: arrays with the same number N of rows (a None passes through as None). The last batch is
  padded with copies of the last row and its outputs trimmed, so fn runs at one shape (one
  compile; a batch size divisible by the device count splits over every device). fn returns an
  array or a tuple of arrays; each comes back through `to_host` batch by batch, so a caller can
  shrink it on the host at once (uint8 samples). The one batching loop of sampling, editing and
  the feature networks. `progress`: a bar of that name when there is more than one batch.
  """
  n = len(next(r for r in rows if r is not None))
  if n == 0 or batch_size < 1:
    raise ValueError(f"map_in_batches needs rows and a positive batch size, got {n} rows and "
                     f"batch size {batch_size}.")
  outs = []
  with progress_lib.bar(n, progress or "", show=bool(progress) and n > batch_size) as bar:
    for start in range(0, n, batch_size):
      count = min(batch_size, n - start)
      batch = []
      for r in rows:
        if r is None:
          batch.append(None)
          continue
        part = np.asarray(r[start:start + batch_size])
        if count < batch_size:
          part = np.concatenate([part, np.repeat(part[-1:], batch_size - count, axis=0)])
        batch.append(part)
      out = fn(*batch)
      outs.append(tuple(np.asarray(to_host(o))[:count] for o in out) if isinstance(out, tuple)
                  else np.asarray(to_host(out))[:count])
      bar.update(count)
  if isinstance(outs[0], tuple):
    return tuple(np.concatenate(parts) for parts in zip(*outs))
  return np.concatenate(outs)

"""Data parallelism with JAX's own sharding and multi-process runtime: a 1-D 'data' mesh over
the devices of every process, the global batch split along it, the train state replicated.

Under jax.jit the arrays are global, so a BatchNorm mean over the batch axis is a mean over
the global batch: N devices compute what one device computes on the same global batch (up
to the order of floating-point sums), and XLA inserts the all-reduces of the gradients.
With several processes (hosts), each process puts only the rows of a batch that its own
devices hold (`global_array`), and only process 0 writes files (`is_primary`).
"""

import os
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dcgan_jax.errors import UsageError

DATA_AXIS = "data"


def cluster_in_environment() -> str | None:
  """Returns the multi-process launcher whose environment JAX reads by itself (None outside one)."""
  env = os.environ
  if all(k in env for k in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NODELIST")) and int(
      env.get("SLURM_NTASKS", env.get("SLURM_STEP_NUM_TASKS", "1"))) > 1:
    return "SLURM"
  if "OMPI_MCA_orte_hnp_uri" in env:
    return "Open MPI"
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "a multi-host TPU slice"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> bool:
  """Calls jax.distributed.initialize with the given values, or with JAX's own cluster detection
  where `auto` is set or a launcher's environment is present; returns whether it ran.

  Must run before anything else touches the JAX backend.
  """
  given = coordinator_address is not None or num_processes is not None or process_id is not None
  cluster = cluster_in_environment()
  if not (given or auto or cluster):
    return False
  if num_processes is not None and num_processes < 1:
    raise UsageError(f"--num_processes={num_processes} must be >= 1")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise UsageError(f"--process_id={process_id} is not in [0, --num_processes={num_processes})")
  if given and (coordinator_address is None or num_processes is None or process_id is None) \
      and not cluster:
    raise UsageError("--coordinator_address, --num_processes and --process_id go together "
                     "(outside SLURM, Open MPI and TPU slices, where JAX finds them itself)")
  where = coordinator_address or cluster or "the cluster JAX detects"
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (RuntimeError, ValueError) as e:
    raise UsageError(f"jax.distributed.initialize failed for {where}: "
                     f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                     ) from e
  return True


def is_primary() -> bool:
  """Tells whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def make_mesh(num_devices: int = 0) -> Mesh:
  """Returns a 1-D mesh named 'data' over the first num_devices devices (0: all of them, of every
  process)."""
  devices = jax.devices()
  if num_devices > len(devices):
    raise UsageError(f"config.num_devices={num_devices} but only {len(devices)} "
                     f"{devices[0].platform} devices are visible")
  if jax.process_count() > 1 and num_devices not in (0, len(devices)):
    raise UsageError(f"config.num_devices={num_devices}: a run of {jax.process_count()} "
                     f"processes uses all {len(devices)} devices (set it to 0)")
  return Mesh(np.array(devices[:num_devices or len(devices)]), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.size:
    raise UsageError(f"config.batch_size={batch_size} does not divide by the {mesh.size} "
                     "devices of the data mesh (set config.num_devices or the batch size)")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Arrays split along `batch_axis` over the data mesh, whole along every other axis."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def global_array(shape: tuple[int, ...], sharding: jax.sharding.Sharding,
                 read: Callable[[tuple[slice, ...]], np.ndarray]) -> jax.Array:
  """Returns a global array of `shape` whose parts on this process's devices are read(index) (a
  tuple of slices into the global shape): each process reads only the rows its devices hold."""
  return jax.make_array_from_callback(shape, sharding, lambda index: np.asarray(read(index)))


def local_copy(tree):
  """Returns a replicated pytree's value on this process's first device holding it (no transfer):
  what the host reads and what single-device programs (sample grids, evaluation) take."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def broadcast_float(value: float) -> float:
  """Process 0's float64 value, exactly, on every process (the identity in one process)."""
  if jax.process_count() == 1:
    return value
  words = np.frombuffer(np.float64(value).tobytes(), np.uint32)
  words = np.asarray(multihost_utils.broadcast_one_to_all(words), np.uint32)
  return float(np.frombuffer(words.tobytes(), np.float64)[0])


def sync(name: str) -> None:
  """Waits until every process reaches the point called `name` (nothing in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """Tells whether `flag` is set in any process (the flag itself in one process)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))

"""Data parallelism with JAX's own sharding: a 1-D 'data' mesh over the devices, the global
batch split along it, the train state replicated.

Under jax.jit the arrays are global, so a BatchNorm mean over the batch axis is a mean over
the global batch: N devices compute what one device computes on the same global batch (up
to the order of floating-point sums), and XLA inserts the all-reduces of the gradients.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dcgan_jax.errors import UsageError

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh named 'data' over the first num_devices devices (0: all of them)."""
  devices = jax.devices()
  if num_devices > len(devices):
    raise UsageError(f"config.num_devices={num_devices} but only {len(devices)} "
                     f"{devices[0].platform} devices are visible")
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

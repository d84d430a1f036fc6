"""Data parallelism: a 1-D `data` mesh over every device, replicated state, sharded batches."""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from medjax.errors import ConfigError


def data_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(name: str, global_batch_size: int) -> None:
    """Raises ConfigError unless the global batch splits evenly over devices and processes."""
    devices = jax.device_count()
    if global_batch_size <= 0 or global_batch_size % devices:
        raise ConfigError(
            f"{name}={global_batch_size} does not divide evenly over {devices} devices; "
            f"use a positive multiple of {devices}"
        )


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's part of the batch -> global arrays sharded on their leading axis."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def gather(tree):
    """Global arrays -> numpy arrays holding every process's rows, on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)

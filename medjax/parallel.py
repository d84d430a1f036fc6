"""Data parallelism over every device of every process: a 1-D `data` mesh, replicated state,
batches sharded on their leading axis; and the same state laid out for `jax.pmap`."""

import importlib.util
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from medjax.errors import ConfigError

AXIS = "data"  # the mesh axis, and pmap's axis name


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None):
    """Joins the processes of a multi-host run, before any JAX computation.

    With the three arguments, as given; without them, as JAX detects them where SLURM (srun)
    or Open MPI launched several tasks, or on a Cloud TPU VM; otherwise a single process,
    nothing to join. CPU devices of different processes talk over gloo.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(x is not None for x in explicit) and any(x is None for x in explicit):
        raise ConfigError(
            "--coordinator_address, --num_processes and --process_id go together; give all "
            "three (or none, under SLURM or Open MPI)"
        )
    tasks = max(
        int(os.environ.get(name, 1)) for name in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")
    )
    on_cloud_tpu = importlib.util.find_spec("libtpu") is not None
    if coordinator_address is None and tasks == 1 and not on_cloud_tpu:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def data_mesh(devices=None) -> Mesh:
    """The mesh over `devices`, by default every device of every process."""
    return Mesh(np.array(jax.devices() if devices is None else devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(name: str, global_batch_size: int, *, multiple_of: int = 1) -> None:
    """Raises ConfigError unless the global batch splits evenly over the devices (and, on each
    device, into `multiple_of` micro-batches)."""
    devices = jax.device_count()
    if global_batch_size <= 0 or global_batch_size % (devices * multiple_of):
        over = f"{devices} devices" + (f" x {multiple_of} micro-batches" if multiple_of > 1 else "")
        raise ConfigError(
            f"{name}={global_batch_size} does not divide evenly over {over}; use a positive "
            f"multiple of {devices * multiple_of}"
        )


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's part of the batch -> global arrays sharded on their leading axis."""
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def gather(tree):
    """Global arrays -> numpy arrays holding every process's rows, on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def any_process(flag: bool) -> bool:
    """Whether `flag` is set in any process (every process must call this together)."""
    return bool(multihost_utils.process_allgather(np.array(flag)).any())


# pmap's layout: a leading axis over this process's devices, one replica or batch part each.


def split_local(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's batch [B, ...] -> [local devices, B / local devices, ...] for pmap."""
    n = jax.local_device_count()
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def to_pmap(tree):
    """Replicated global arrays -> one replica per local device, stacked, as pmap takes them."""
    sharding = NamedSharding(data_mesh(jax.local_devices()), PartitionSpec(AXIS))

    def stack(x):
        replicas = {shard.device: shard.data for shard in x.addressable_shards}
        arrays = [replicas[device][None] for device in jax.local_devices()]
        return jax.make_array_from_single_device_arrays((len(arrays), *x.shape), sharding, arrays)

    return jax.tree.map(stack, tree)


def from_pmap(tree, mesh: Mesh):
    """pmap's stacked replicas -> replicated global arrays on `mesh`, as the rest expects."""
    sharding = replicated(mesh)

    def unstack(x):
        replicas = {shard.device: shard.data[0] for shard in x.addressable_shards}
        arrays = [replicas[device] for device in mesh.local_devices]
        return jax.make_array_from_single_device_arrays(x.shape[1:], sharding, arrays)

    return jax.tree.map(unstack, tree)


def first_replica(tree):
    """pmap outputs that agree on every device (after pmean) -> one copy, on the host."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)

"""A 1-D data-parallel mesh, and host-local batches turned into global arrays.

`jax.jit` over a mesh `('data',)`: batches are split along the batch axis, the state is
replicated, and XLA inserts the gradient all-reduce itself (as flax examples and big_vision do).
Each process
feeds only its slice of the global batch, so the same code runs on one CPU, one GPU or
a multi-host TPU pod.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ltkd_jax.errors import UserError


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A mesh over the first `num_devices` devices (0 = all of them)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(
                f"config.num_devices={num_devices} but JAX sees only {len(devices)} devices; "
                "lower it or set it to 0 for all"
            )
        if jax.process_count() > 1 and num_devices != len(devices):
            raise ValueError("config.num_devices must be 0 (all devices) on several processes")
        devices = devices[:num_devices]
    return jax.sharding.Mesh(np.asarray(devices), ("data",))


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
    """The global batch is split evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise UserError(
            f"config.batch_size={batch_size} is not divisible by the {n} devices of the mesh; "
            f"pick a multiple of {n} or set --config.num_devices"
        )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: jax.sharding.Mesh, leading: tuple = ()) -> NamedSharding:
    """Split along the batch axis, after `leading` unsharded axes."""
    return NamedSharding(mesh, P(*leading, "data"))


def global_batch(mesh: jax.sharding.Mesh, local_batch: dict) -> dict:
    """Assembles each process's slice of the batch into one global array per field."""
    sharding = data_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def local_device_count(mesh: jax.sharding.Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

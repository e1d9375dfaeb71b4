"""Devices: a 1-D mesh, replica-parallel and data-parallel placement, multi-host helpers.

JAX's own sharding is the engine. Nothing here writes a collective by hand:

* replica-parallel: the leading replica axis of the training state is sharded over the mesh
  (`shard_replicas`), and `jax.vmap` of the training program runs each replica where it lives;
* data-parallel: every mini-batch is constrained to be sharded over the mesh along its batch
  axis while parameters stay replicated (`fit(..., mesh=mesh)`), so XLA's partitioner computes
  per-device gradients and inserts the all-reduce that averages them;
* multi-host: `jax.distributed.initialize()` (JAX's runtime) joins processes into one set of
  global devices; `make_mesh()` spans all of them, `put` builds global arrays from each
  process's host copy, and `to_host` brings results back on every process.

On CPU, several processes on one machine form a mesh with
`jax.config.update("jax_cpu_collectives_implementation", "gloo")` before initialize. One
process splits its CPU into several devices (one per core, say) with `use_cpu_devices(n)`
before JAX starts its backend.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "devices"


def use_cpu_devices(n: int) -> None:
    """Split the CPU into `n` JAX devices (`jax_num_cpu_devices`), read when JAX's CPU backend
    starts. ValueError for n < 1; RuntimeError if the backend already runs with another count
    (calling it again with the count it has is fine)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"use_cpu_devices expects a positive integer; got {n!r}.")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as err:  # the backend is up already
        have = len(jax.devices("cpu"))
        if have != n:
            raise RuntimeError(f"use_cpu_devices({n}): JAX's CPU backend already started with "
                               f"{have} device(s); call it before any JAX computation "
                               f"({err}).") from err


def make_mesh(devices=None, axis_name: str = AXIS) -> Mesh:
    """A 1-D mesh over `devices` (default: every global device, across all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh expects at least one device; got none.")
    return Mesh(np.asarray(devices), (axis_name,))


def check_mesh(mesh: Mesh, where: str) -> str:
    """The axis name of a 1-D `mesh`; a ValueError naming `where` (and what `mesh` is) for
    anything else."""
    if not isinstance(mesh, Mesh) or len(mesh.axis_names) != 1:
        raise ValueError(
            f"{where} expects a 1-D jax.sharding.Mesh (e.g. jaxseq.parallel.make_mesh()); got "
            f"{mesh!r}."
        )
    return mesh.axis_names[0]


def put(x, sharding: NamedSharding) -> jax.Array:
    """A global array with `sharding`, built from this process's full host copy of `x` (every
    process passes the same values; each supplies the shards its devices hold)."""
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf copied to every device of the mesh (None leaves stay None)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda a: put(a, sharding), tree)


def shard_replicas(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf split along its leading (replica) axis over the mesh."""
    axis = check_mesh(mesh, "shard_replicas")
    size = mesh.devices.size
    sharding = NamedSharding(mesh, PartitionSpec(axis))

    def one(a):
        r = np.shape(a)[0]
        if r % size:
            raise ValueError(
                f"shard_replicas expects a replica count divisible by the mesh size {size}; got "
                f"{r} replicas. Use a multiple of {size} seeds."
            )
        return put(a, sharding)

    return jax.tree.map(one, tree)


def training_sharding(mesh: Mesh | None, batch_size: int, replicas: int | None,
                      where: str) -> NamedSharding | None:
    """Check `mesh` for a training run -> the sharding of each mini-batch (data-parallel, when
    `replicas` is None) or None (no mesh, or the replica axis is what gets sharded)."""
    if mesh is None:
        return None
    check_mesh(mesh, where)
    if replicas is not None:
        if replicas % mesh.size:
            raise ValueError(f"{where} with a mesh expects a number of seeds divisible by the "
                             f"mesh size {mesh.size}; got {replicas}.")
        return None
    if batch_size % mesh.size:
        raise ValueError(
            f"{where} with a mesh expects batch_size divisible by the mesh size {mesh.size}; "
            f"got {batch_size}. Pick a multiple of {mesh.size} (every device gets an equal "
            "share of each mini-batch).")
    return batch_sharding(mesh)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Mini-batches split along their batch axis over the mesh (data-parallel)."""
    return NamedSharding(mesh, PartitionSpec(check_mesh(mesh, "batch_sharding")))


def to_host(tree: Any) -> Any:
    """NumPy copies of every leaf, on every process: a replicated global array from one of its
    local shards, a sharded one gathered across processes."""
    from jax.experimental import multihost_utils

    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        if a.sharding.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(one, tree)

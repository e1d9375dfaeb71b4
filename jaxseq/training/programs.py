"""The compiled programs the drivers run: initialization, the epoch loop (for one model, for
replicas, or for splits x seeds), seed splitting. Each is built once per (model, optimizer,
static settings) and kept in `compile`'s bounded cache."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxseq import products
from jaxseq.training import loop
from jaxseq.training.compile import cached, jit
from jaxseq.training.state import TrainState, create_train_state, split_seed

__all__ = ["by_split", "flat", "init_program", "init_state", "loop_program", "over_splits",
           "per_split_loop", "stack_seeds"]


# The vmap axes of the replica programs, named so that `train_loop` can run one epoch counter
# for all of them (`train_loop(axis_name=...)`), and that the fused recurrences' derivative
# products count every replica (`products.replicas`).
REPLICA_AXIS = products.REPLICA_AXIS
SPLIT_AXES = products.SPLIT_AXES


def init_program(model, tx, replicated: bool, batch_size: int, data_axis=None):
    def build():
        fn = partial(create_train_state, model, tx, batch_size=batch_size)
        if replicated:
            fn = jax.vmap(fn, in_axes=(data_axis, 0))
        return jit(fn, once=True)

    return cached("init", model, tx, replicated, batch_size, data_axis, build=build)


def init_state(model, tx, x, key, *, batch_size: int = 1) -> TrainState:
    """`create_train_state(model, tx, x, key, batch_size=...)`, compiled once per (model,
    optimizer): a sweep that builds many states (learning rates with
    `optax.inject_hyperparams`, seeds) compiles initialization once."""
    return init_program(model, tx, False, batch_size)(jnp.asarray(x[:batch_size]), key)


def by_split(tree, inner: int):
    """Leaves (R, ...) -> (R // inner, inner, ...): the flat replica axis as (outer, inner)."""
    return jax.tree.map(lambda a: a.reshape(-1, inner, *a.shape[1:]), tree)


def flat(tree):
    """Leaves (outer, inner, ...) -> (outer * inner, ...)."""
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), tree)


def over_splits(fn, own, shared, seeds_outer: bool):
    """`fn` vmapped over splits (`own` in_axes: each split its own data) and seeds (`shared`:
    the split's data shared), seeds the outer axis or the inner one; the axes are named
    `SPLIT_AXES`."""
    split, seed = SPLIT_AXES
    if seeds_outer:
        return jax.vmap(jax.vmap(fn, in_axes=own, axis_name=split), in_axes=shared,
                        axis_name=seed)
    return jax.vmap(jax.vmap(fn, in_axes=shared, axis_name=seed), in_axes=own, axis_name=split)


def per_split_loop(fn, inner: int, carry, key, first, last, data, val):
    """`fn` (vmapped by `over_splits`) on a flat replica axis of `inner`-sized groups."""
    carry, logs = fn(by_split(carry, inner), by_split(key, inner), first, last, data, val)
    return flat(carry), flat(logs)


def loop_program(model, tx, static: dict, replicated: bool, per_split=None, mesh=None):
    """The jitted loop; replicated: vmapped over replicas (data shared); with `per_split` =
    (inner, val in_axis, seeds_outer) over splits (each its own data) and seeds: replica r =
    (split r // k, seed r % k) when seeds are inner, (seed r // S, split r % S) when outer.

    mesh (replicated runs): the replica axis is split over the mesh with `jax.shard_map`, so
    every device runs its own replicas' epoch loop with no cross-device step: a vmapped
    `while_loop` runs while ANY replica is alive, which under plain sharding is an all-reduce
    of every epoch's condition (with per_split only when seeds are outermost, so that each
    shard holds whole seeds of every split)."""
    def build():
        fn = partial(loop.train_loop, **static)
        shared = (0, 0, None, None, None, None)
        if per_split is not None:
            inner, val_axis, seeds_outer = per_split
            fn = partial(per_split_loop, over_splits(
                partial(fn, axis_name=SPLIT_AXES), (0, 0, None, None, 0, val_axis), shared,
                seeds_outer), inner)
        elif replicated:
            fn = jax.vmap(partial(fn, axis_name=REPLICA_AXIS), in_axes=shared,
                          axis_name=REPLICA_AXIS)
        if mesh is not None:
            rep, everywhere = PartitionSpec(mesh.axis_names[0]), PartitionSpec()
            fn = jax.shard_map(fn, mesh=mesh, in_specs=(rep, rep, *(everywhere,) * 4),
                               out_specs=(rep, rep), check_vma=False)
        return jit(fn, donate_argnums=(0,))

    return cached("loop", model, tx, replicated, per_split, mesh,
                  *sorted(static.items(), key=lambda kv: kv[0]), build=build)


def stack_seeds(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """`split_seed` of every seed, stacked (one compiled call)."""
    split = cached("split_seeds", build=lambda: jit(jax.vmap(split_seed), once=True))
    return split(jnp.asarray(np.asarray(seeds)))

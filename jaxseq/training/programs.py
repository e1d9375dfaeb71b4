"""The compiled programs a run is made of: a fresh train state (`create_train_state`), a run's
start (initial states and keys for its layout), the epoch loop for a `Program` and a `Layout`,
and placing a run on its devices. Each program is built once per (model, optimizer, static
settings, layout structure) and kept in `compile`'s bounded cache."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from jaxseq import contracts, parallel
from jaxseq.training import data as data_mod
from jaxseq.training import loop
from jaxseq.training.compile import Jitted, cached, jit
from jaxseq.training.spec import Layout, Program, Source
from jaxseq.training.state import ModelFn, TrainState, split_seed

__all__ = ["create_train_state", "init_program", "loop_program", "place", "stack_seeds",
           "start"]


def _fresh_state(model, tx, x1, key) -> TrainState:
    variables = dict(contracts.call_inputs(model.init, x1, key))
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), apply_fn=ModelFn(model), params=params,
                      tx=tx, opt_state=tx.init(params), model_state=variables)


def init_program(model: nn.Module, tx: optax.GradientTransformation, replicated: bool = False,
                 data_axis: int | None = None) -> Jitted:
    """The compiled `(x1, key) -> TrainState` of `model` and `tx` (x1: the first rows of x);
    replicated: vmapped over a leading axis of keys (and of x1 with `data_axis` 0)."""
    def build():
        fn = partial(_fresh_state, model, tx)
        if replicated:
            fn = jax.vmap(fn, in_axes=(data_axis, 0))
        return jit(fn, once=True)

    return cached("init", model, tx, replicated, data_axis, build=build)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, x, key, *,
                       batch_size: int = 1) -> TrainState:
    """A fresh `TrainState` for `model` on inputs shaped like x (batch, ...) (or several: a
    tuple or dict of them, as `fit` takes): `model.init(key, x[:batch_size])`, every variable
    collection kept (`params` in `state.params`, the others in `state.model_state`),
    `opt_state = tx.init(params)`, step 0. Only the first `batch_size` rows of x are used, for
    their shapes and dtype: the parameters do not depend on them; the states of stateful
    layers get `batch_size` rows.

    Compiled once per (model, optimizer) and kept in the program cache, so a sweep that builds
    many states (learning rates with `optax.inject_hyperparams`, seeds) compiles it once.
    Traceable: under `jit`, `vmap` (over keys) or `eval_shape` it runs as a nested jit.
    key: a PRNG key (e.g. `split_seed(seed)[0]`, what `fit` initializes from)."""
    x = contracts.as_inputs(x, "x", "create_train_state")
    return init_program(model, tx)(jax.tree.map(lambda a: jnp.asarray(a[:batch_size]), x), key)


def _split_program(stacked: bool) -> Jitted:
    """`split_seed` compiled once: of one seed, or vmapped over stacked seeds."""
    return cached("split_seeds" if stacked else "split_seed",
                  build=lambda: jit(jax.vmap(split_seed) if stacked else split_seed, once=True))


def stack_seeds(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """`split_seed` of every seed, stacked (one compiled call)."""
    return _split_program(True)(np.asarray(seeds))


def start(program: Program, layout: Layout, data: Source, state: TrainState | None = None):
    """-> (state, key): the run's initial state (`state`, or initialized from the layout's
    seeds on the first `batch_size` rows of `data`) and its training key(s); with a replica
    axis R in the layout's row order when the layout is replicated."""
    if layout.replicated:
        init_key, key = stack_seeds(layout.row_seeds)
    else:  # one compiled program, not the eager ops of PRNGKey and split (each compiles)
        init_key, key = _split_program(False)(np.int64(layout.seeds[0]))
    if state is None:
        x1, axis = data.first_rows(program.batch_size, layout)
        init = init_program(program.model, program.tx, layout.replicated, axis)
        state = init(jax.device_put(x1), init_key)
    return state, key


def loop_program(program: Program, layout: Layout, val_per_split: bool = False) -> Jitted:
    """The jitted `loop.train_loop` of `program`, `layout.vmap`-ed over the layout's replicas:
    `(carry, key, first, last, train, val) -> (carry, logs)`, the carry donated. The training
    data (and `val` with `val_per_split`) has a leading split axis when the layout has splits.

    With a mesh, a replicated layout's replica axis is split over the mesh with
    `jax.shard_map`, so every device runs its own replicas' epoch loop with no cross-device
    step: a vmapped `while_loop` runs while ANY replica is alive, which under plain sharding is
    an all-reduce of every epoch's condition (with splits only when seeds are outermost, so
    that each shard holds whole seeds of every split)."""
    mesh = program.mesh if layout.replicated else None

    def build():
        fn = partial(loop.train_loop, **program.loop_options(), axis_name=layout.axis_name)
        fn = layout.vmap(fn, ("replica", "replica", None, None, "split",
                              "split" if val_per_split else None))
        if mesh is not None:
            rep, everywhere = PartitionSpec(mesh.axis_names[0]), PartitionSpec()
            fn = jax.shard_map(fn, mesh=mesh, in_specs=(rep, rep, *(everywhere,) * 4),
                               out_specs=(rep, rep), check_vma=False)
        return jit(fn, donate_argnums=(0,))

    return cached("loop", *program.key(), *layout.structure(), val_per_split, build=build)


def place(carry: loop.LoopState, key, data: Source, mesh, layout: Layout):
    """-> (carry, key, train, val) on the devices: without a mesh as they are (the data copied
    to the default device); with one, a replicated layout's replica axis sharded over it and
    everything else replicated."""
    train, val = data_mod.as_device(data.train), data_mod.as_device(data.val)
    if mesh is None:
        return carry, key, train, val
    if layout.replicated:
        carry, key = parallel.shard_replicas((carry, key), mesh)
    else:
        carry, key = parallel.replicate((carry, key), mesh)
    train, val = parallel.replicate((train, val), mesh)
    return carry, key, train, val

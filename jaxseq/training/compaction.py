"""Compaction of a vmapped run: between chunks of epochs, only the replicas still training go on.

A vmapped epoch loop runs while any replica is alive, and a replica that stopped
(`EarlyStopping`, or an epoch that went non-finite) still costs a full step every epoch. Between
chunks the host knows which replicas are alive; `Compactor` gathers them into a smaller replica
batch and scatters every replica's results back into the public row order:

- batch sizes: R (the layout's replicas) to begin with; then, as soon as the live replicas fit
  in a power of two P at most half the current batch, P rows. A run therefore uses at most
  floor(log2 R) + 1 replica batch sizes, one compiled loop program each (a jitted program
  compiles once per argument shape; the sizes are the same in every run, so a second run
  compiles nothing).
- padding rows (P above the live count) are copies of a live row marked not alive: the loop
  keeps their carry unchanged, so they change nothing, and they are never scattered back.
- every replica's carry (state, early-stopping state with its best weights, alive flag) is
  kept on the host from the chunk where it left the batch, and the logs of the rows outside
  the batch read as epochs that did not run (NaN), as the uncompacted loop logs them; the
  non-finite flags follow from the logs, in the public order.
- layouts with splits (cross-validation: data (S, n, ...)): the compacted program is one flat
  vmap over rows whose training data (and per-split validation data) is gathered from each
  row's split (`Layout.row_splits`) inside the program; without splits the data stays shared
  and the program is the layout's own loop program at another batch size.

Each live replica runs the same computation as before, so the results are those of the
uncompacted program to float32 rounding (a batched product may sum in another order at
another batch size). Compaction applies to replicated runs of two or more replicas without a
mesh (sharded replica batches keep their size) or checkpoints (a checkpoint holds every row).

With `EarlyStopping` and no `epochs_per_chunk`, `Host.compact_every` bounds the chunk length
(`CHECK_EVERY` epochs), so the host looks for stopped replicas that often even when nothing
else wakes it -- for models whose per-step work (parameters x batch size) is at least
`strategies.VMAP_BELOW`, where a vmapped step costs about as much as the steps it batches, so a
stopped replica costs a full step. Below it a vmapped step costs little more than one, and a
look (one call of the compiled loop and its logs) would cost more than it saves: such runs
keep one chunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.training import loop, strategies
from jaxseq.training.compile import Jitted, cached, jit
from jaxseq.training.spec import REPLICA_AXIS, Host, Layout, Program, Source

__all__ = ["CHECK_EVERY", "Compactor", "applies", "batch_size", "looks", "split_loop_program"]

# Epochs between looks for stopped replicas when EarlyStopping is given and nobody watches. A
# look is one call of the compiled loop and its logs (about 1 ms on a 2-core EPYC); a replica
# that stopped runs on until the next look. On experiments/bench_forecaster.py's early-stopping
# row (10 seeds, nine of them stopping at epoch 51) looks every 16 / 8 / 4 / 2 epochs took
# 17.7 / 16.6 / 13.7 / 14.4 s; on a model just above VMAP_BELOW (LSTM(12), batch 32) that never
# stops, looks every 4 epochs cost nothing measurable against one chunk.
CHECK_EVERY = 4

# What an epoch that did not run logs (train_loop's initial log buffers).
_BLANK = {"ran": False, "finite": True, "bad_batch": -1}


def batch_size(live: int, current: int) -> int:
    """The replica batch for `live` live replicas now running in `current` rows: the power of
    two at or above `live` when it is at most half of `current`, else `current`."""
    if live < 1:
        return current
    p = 1 << (live - 1).bit_length()
    return p if 2 * p <= current else current


def applies(program: Program, layout: Layout, host: Host) -> bool:
    """Whether the driver compacts the replicas of `layout` (replicated, R >= 2, no mesh, no
    checkpoints)."""
    return (layout.replicated and layout.size > 1 and program.mesh is None
            and host.checkpoints is None)


def looks(host: Host, state, layout: Layout, program: Program, n: int) -> bool:
    """Whether a compacting run shortens its chunks to `host.compact_every` epochs: given
    (EarlyStopping, no `epochs_per_chunk`) and worth it (per-step work of one replica at least
    `strategies.VMAP_BELOW`; `state`: the run's initial state, leaves (R, ...))."""
    if host.compact_every is None:
        return False
    params = sum(np.size(a) for a in jax.tree.leaves(state.params)) // layout.size
    return params * min(program.batch_size, n) >= strategies.VMAP_BELOW


def split_loop_program(program: Program, val_per_split: bool) -> Jitted:
    """The jitted `loop.train_loop` of `program` vmapped over rows that each name their split:
    `(carry, key, split (P,) int32, first, last, train (S, n, ...), val) -> (carry, logs)`,
    the carry donated; row r trains on `train[split[r]]` (and validates on `val[split[r]]`
    with `val_per_split`, else on the shared `val`)."""
    def build():
        options = program.loop_options()

        def split_train_loop(carry, key, split, first, last, train, val):
            pick = lambda tree: jax.tree.map(lambda a: a[split], tree)
            return loop.train_loop(carry, key, first, last, pick(train),
                                   pick(val) if val_per_split else val, **options,
                                   axis_name=REPLICA_AXIS)

        fn = jax.vmap(split_train_loop, in_axes=(0, 0, 0, None, None, None, None),
                      axis_name=REPLICA_AXIS)
        return jit(fn, donate_argnums=(0,))

    return cached("split_loop", *program.key(), val_per_split, build=build)


def _blank(name: str, like: np.ndarray, rows: int) -> np.ndarray:
    return np.full((rows, *like.shape[1:]), _BLANK.get(name, np.nan), like.dtype)


class Compactor:
    """Runs the chunks of one run's compiled loop and keeps its replicas compact.

    `compactor(carry, first, last)` runs one chunk -> (carry, logs, alive), logs and alive in
    the layout's public row order (R rows when replicated); `compact(carry, alive)` shrinks the
    replica batch when it halves it; `gather(carry)` -> the carry of every replica (R rows).
    Until the first compaction everything passes through unchanged (and always when
    `enabled` is False)."""

    def __init__(self, program: Program, layout: Layout, data: Source, run: Jitted, key,
                 train, val, enabled: bool):
        self.program, self.run, self.key, self.train, self.val = program, run, key, train, val
        self.enabled, self.total = enabled, layout.size
        self.val_per_split = data.val_per_split
        self.splits = layout.row_splits if layout.splits else None
        self.rows = np.arange(self.total)  # the public row of each batch row; -1: padding
        self.full = None  # every replica's carry on the host (R rows), once compacted
        self.batch_key, self.split = key, None

    @property
    def compacted(self) -> bool:
        return self.full is not None

    def __call__(self, carry, first, last):
        if self.split is None:
            carry, out = self.run(carry, self.batch_key, first, last, self.train, self.val)
        else:
            carry, out = self.run(carry, self.batch_key, self.split, first, last, self.train,
                                  self.val)
        if not self.compacted:
            return carry, out, carry.alive
        out, alive = jax.device_get((out, carry.alive))
        real = self.rows >= 0
        logs = {k: _blank(k, v, self.total) for k, v in out.items()}
        for k, v in out.items():
            logs[k][self.rows[real]] = v[real]
        every = np.zeros(self.total, bool)
        every[self.rows[real]] = alive[real]
        return carry, logs, every

    def _keep(self, host) -> None:
        """Copy the batch rows `host` (a carry on the host) into every replica's carry."""
        real = self.rows >= 0
        if self.full is None:  # the first compaction: the batch is the whole layout
            self.full = jax.tree.map(np.array, host)
            return

        def put(full, rows):
            full[self.rows[real]] = rows[real]
            return full

        self.full = jax.tree.map(put, self.full, host)

    def compact(self, carry, alive):
        """The carry of the next chunk: the live replicas (`alive` (R,) in the public order)
        gathered into `batch_size(live, current)` rows, or `carry` itself when that is not
        smaller."""
        live = np.flatnonzero(np.asarray(alive))
        size = batch_size(len(live), len(self.rows))
        if not self.enabled or size == len(self.rows):
            return carry
        host = jax.device_get(carry)
        self._keep(host)
        where = np.full(self.total, -1)  # the batch row of each public row
        where[self.rows[self.rows >= 0]] = np.flatnonzero(self.rows >= 0)
        pad = size - len(live)
        take = np.concatenate([where[live], np.full(pad, where[live[0]])])
        self.rows = np.concatenate([live, np.full(pad, -1)])
        source = np.concatenate([live, np.full(pad, live[0])])
        batch = jax.tree.map(lambda a: a[take], host)._replace(alive=np.arange(size) < len(live))
        self.batch_key = jnp.asarray(np.asarray(self.key)[source])
        if self.splits is not None:
            self.split = jnp.asarray(self.splits[source], jnp.int32)
            self.run = split_loop_program(self.program, self.val_per_split)
        return jax.device_put(batch)

    def gather(self, carry):
        """Every replica's carry (R rows in the public order) after the last chunk."""
        if not self.compacted:
            return carry
        self._keep(jax.device_get(carry))
        return jax.device_put(self.full)

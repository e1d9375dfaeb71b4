"""A training run, described once: what is compiled, how its replicas are laid out, what the
host does, and its data.

`fit`, `fit_replicas` and `evaluation.cross_validate` take Keras-style keyword arguments. The
parsers in `jaxseq.training.parse` check them (each message names the argument and the entry
point) and build these four frozen values, which are all that the driver
(`jaxseq.training.drivers.drive`) reads:

- `Program`: what is compiled (model, optimizer, loss, metrics, batch size, shuffle,
  validation batch size, per-epoch state resets, mesh). `Program.key()` is the program-cache
  key: runs whose programs and layout structures are equal share one compiled loop.
- `Layout`: the replicas: their seeds, the data splits they train on, the row order of the
  replica axis, and how one replica's computation is mapped over all of them (`Layout.vmap`).
  A driver runs one layout; a caller may cut its work into several (cross-validation runs one
  layout per group of equally sized splits).
- `Host`: what the host does between calls of the compiled loop (epochs, progress output,
  callbacks, chunk length, checkpoints, what a non-finite epoch does).
- `Source`: the checked data on the host: one data set shared by every replica, or one per
  split (a leading split axis S).

Named axes: R replicas, K seeds, S splits, n samples per split.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from jaxseq import contracts
from jaxseq.training import losses
from jaxseq.training.callbacks import Callback, EarlyStopping
from jaxseq.training.data import Batch

__all__ = ["REPLICA_AXIS", "SPLIT_AXES", "Checkpoints", "Host", "Layout", "Program", "Source",
           "stack"]

# The vmap axes of replicated programs, named so that `train_loop` can run one epoch counter
# for all replicas (`train_loop(axis_name=...)`). `jaxseq.products.REPLICA_AXES` holds the
# same names (each side keeps its own copy: training imports no layer module, the layers import
# nothing of training); the fused recurrences' derivative products count replicas by them.
REPLICA_AXIS = "replica"
SPLIT_AXES = ("split", "seed")


@dataclasses.dataclass(frozen=True)
class Program:
    """What is compiled. Every field is part of the program-cache key (`key()`) except
    `loss_name`, the loss as it was named (recorded in checkpoints).

    model: the linen Module; tx: the optax transformation; loss: `(y_true, y_pred) -> values`;
    metrics: the checked `losses.Metric`s; batch_size: mini-batch size, capped at the samples
    per split; shuffle: reshuffle every epoch; val_batch_size: validation mini-batch size,
    capped at the validation samples (None without validation); reset_states: zero stateful
    layers' states before every epoch; mesh: the 1-D device mesh or None; sharding: the
    mini-batches' data-parallel sharding (a single run on a mesh), else None.
    """

    model: nn.Module
    tx: optax.GradientTransformation
    loss: Callable
    metrics: tuple[losses.Metric, ...]
    batch_size: int
    shuffle: bool
    val_batch_size: int | None
    reset_states: bool
    mesh: Mesh | None = None
    sharding: NamedSharding | None = None
    loss_name: str | None = dataclasses.field(default=None, compare=False)

    def key(self) -> tuple:
        """The parts of the program-cache key (`compile.cached` keys each with its type)."""
        return (self.model, self.tx, self.loss, self.metrics, self.batch_size, self.shuffle,
                self.val_batch_size, self.reset_states, self.mesh, self.sharding)

    def loop_options(self) -> dict[str, Any]:
        """The static keyword arguments of `loop.train_loop`."""
        return dict(batch_size=self.batch_size, shuffle=self.shuffle, loss=self.loss,
                    metrics=self.metrics, val_batch_size=self.val_batch_size,
                    sharding=self.sharding, reset_states=self.reset_states)


def _rows(tree, inner: int):
    """Leaves (R, ...) -> (R // inner, inner, ...)."""
    return jax.tree.map(lambda a: a.reshape(-1, inner, *a.shape[1:]), tree)


def _flat(tree):
    """Leaves (outer, inner, ...) -> (outer * inner, ...)."""
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), tree)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The replicas of a run and their row order.

    seeds: the K seeds (ints). replicated: False for a single run (`fit`: one seed, no replica
    axis). splits: S > 0 when the data has a leading split axis and every seed trains on every
    split (R = S * K replicas); 0 when every replica trains on the one data set (R = K).
    seeds_outer: the row order of S * K replicas: replica r is (split r // K, seed r % K), or
    with seeds_outer (seed r // S, split r % S), which keeps whole seeds together when the
    replica axis is cut into equal contiguous shards over a mesh.
    """

    seeds: tuple[int, ...]
    replicated: bool = True
    splits: int = 0
    seeds_outer: bool = False

    def __post_init__(self):
        seeds = self.seeds
        if not isinstance(seeds, tuple) or not seeds or not all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
            raise TypeError(f"Layout expects seeds as a non-empty tuple of ints; got {seeds!r}.")
        if isinstance(self.splits, bool) or not isinstance(self.splits, int) or self.splits < 0:
            raise ValueError(f"Layout expects splits to be an int >= 0; got {self.splits!r}.")
        if not self.replicated and (len(seeds) != 1 or self.splits):
            raise ValueError(f"Layout: a single run (replicated=False) has one seed and no "
                             f"splits; got seeds={seeds!r}, splits={self.splits}.")

    @classmethod
    def single(cls, seed: int) -> Layout:
        """One run (no replica axis) from `seed`."""
        return cls((int(seed),), replicated=False)

    @property
    def size(self) -> int:
        """R, the number of replicas (1 for a single run)."""
        return len(self.seeds) * max(self.splits, 1)

    def chunks(self, size: int) -> tuple[Layout, ...]:
        """The layout cut into layouts of at most `size` seeds each, in seed order, with the
        same splits and row order (a single run is its own only chunk). Without splits, or with
        seeds outermost, the chunks' replica rows, concatenated, are this layout's rows."""
        contracts.check_positive_int(size, "size", "Layout.chunks")
        return tuple(dataclasses.replace(self, seeds=self.seeds[i:i + size])
                     for i in range(0, len(self.seeds), size))

    def table(self) -> np.ndarray:
        """(max(S, 1), K) int: the replica row of (split i, seed j)."""
        s, k = max(self.splits, 1), len(self.seeds)
        if self.seeds_outer:
            return np.arange(s * k).reshape(k, s).T
        return np.arange(s * k).reshape(s, k)

    @property
    def row_seeds(self) -> tuple[int, ...]:
        """(R,) the seed of every replica row."""
        rows = np.empty(self.size, np.int64)
        rows[self.table()] = np.asarray(self.seeds)[None, :]
        return tuple(int(s) for s in rows)

    @property
    def row_splits(self) -> np.ndarray:
        """(R,) the split index of every replica row (zeros without splits)."""
        rows = np.empty(self.size, np.int64)
        rows[self.table()] = np.arange(max(self.splits, 1))[:, None]
        return rows

    @property
    def axis_name(self) -> str | tuple[str, ...] | None:
        """The names of the vmap axes `vmap` maps over (None for a single run)."""
        if not self.replicated:
            return None
        return SPLIT_AXES if self.splits else REPLICA_AXIS

    def structure(self) -> tuple:
        """What of the layout a mapped program depends on (not the seed values: a seed is a
        runtime value)."""
        inner = (self.splits if self.seeds_outer else len(self.seeds)) if self.splits else None
        return self.replicated, self.splits > 0, self.seeds_outer, inner

    def vmap(self, fn: Callable, in_axes: Sequence[str | None]) -> Callable:
        """`fn`, one replica's computation, mapped over the replicas (unchanged for a single run).

        in_axes: one entry per positional argument: "replica" (a leading replica axis R in row
        order), "split" (a leading split axis S: each replica takes its split's entry; shared
        when the layout has no splits) or None (shared by every replica). Every output gets a
        leading replica axis in row order. The vmap axes are named `axis_name`: "replica", or
        with splits one axis "split" and one "seed" (`SPLIT_AXES`), seeds outermost or not."""
        if not self.replicated:
            return fn
        own = tuple(0 if a in ("replica", "split") else None for a in in_axes)
        shared = tuple(0 if a == "replica" else None for a in in_axes)
        if not self.splits:
            return jax.vmap(fn, in_axes=shared, axis_name=REPLICA_AXIS)
        split, seed = SPLIT_AXES
        if self.seeds_outer:
            nested = jax.vmap(jax.vmap(fn, in_axes=own, axis_name=split), in_axes=shared,
                              axis_name=seed)
        else:
            nested = jax.vmap(jax.vmap(fn, in_axes=shared, axis_name=seed), in_axes=own,
                              axis_name=split)
        inner = self.structure()[3]

        def mapped(*args):
            args = [_rows(a, inner) if ax == "replica" else a
                    for a, ax in zip(args, in_axes, strict=True)]
            return _flat(nested(*args))

        return mapped


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Checkpoint saving: the run's `directory`, a save every `every` epochs (and at the end),
    the newest `keep` kept (None: all), `resume` from the latest complete checkpoint."""

    directory: str | os.PathLike
    every: int
    keep: int | None
    resume: bool


@dataclasses.dataclass(frozen=True, eq=False)
class Host:
    """What the host does. where: the entry point, named in messages; epochs: epochs to run;
    verbose: 0, 1 or 2; chunk: epochs per call of the compiled loop; stopper: the one
    `EarlyStopping` (compiled into the loop) or None; callbacks: the host callbacks; on_nan:
    "raise" or "stop"; checkpoints: a `Checkpoints` or None; compact_every: the most epochs per
    chunk when the vmapped driver compacts its replicas (`jaxseq.training.compaction`), None:
    `chunk` as it is."""

    where: str
    epochs: int
    verbose: int
    chunk: int
    stopper: EarlyStopping | None = None
    callbacks: tuple[Callback, ...] = ()
    on_nan: str = "raise"
    checkpoints: Checkpoints | None = None
    compact_every: int | None = None

    @property
    def everyone(self) -> list[Callback]:
        """The EarlyStopping (if any) and the host callbacks."""
        return [*([self.stopper] if self.stopper else []), *self.callbacks]


def _shape(tree) -> tuple[int, ...]:
    """The shape of x, or of the first of several inputs."""
    return contracts.shape_of(jax.tree.leaves(tree)[0])


def _leading(tree, axis: int) -> int:
    return _shape(tree)[axis]


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """The checked data of a run, on the host.

    train: a `Batch` (n, ...) shared by every replica, or (S, n, ...) with `splits` = S, one
    training set per split; val: None, a `Batch` (n_val, ...) shared by every replica, or
    (S, n_val, ...) per split (`val_per_split`)."""

    train: Batch
    val: Batch | None = None
    splits: int = 0
    val_per_split: bool = False

    def __post_init__(self):
        if self.splits and _leading(self.train.x, 0) != self.splits:
            raise ValueError(f"Source expects train with a leading split axis of {self.splits}; "
                             f"got x of shape {_shape(self.train.x)}.")
        if self.val_per_split and self.val is not None and (
                _leading(self.val.x, 0) != self.splits):
            raise ValueError(f"Source expects val with a leading split axis of {self.splits}; "
                             f"got x of shape {_shape(self.val.x)}.")

    @classmethod
    def per_split(cls, trains: Sequence[Batch], vals: Sequence[Batch | None] | Batch | None
                  ) -> Source:
        """Equally sized training sets (one per split) stacked on a leading split axis; `vals`:
        one validation set per split (stacked; all None: no validation) or one shared by all."""
        if isinstance(vals, Batch) or vals is None or all(v is None for v in vals):
            return cls(stack(trains), vals if isinstance(vals, Batch) else None, len(trains))
        return cls(stack(trains), stack(vals), len(trains), val_per_split=True)

    @property
    def n(self) -> int:
        """Training samples (per split)."""
        return _leading(self.train.x, 1 if self.splits else 0)

    @property
    def n_val(self) -> int | None:
        """Validation samples (per split), or None without validation."""
        if self.val is None:
            return None
        return _leading(self.val.x, 1 if self.val_per_split else 0)

    def first_rows(self, batch_size: int, layout: Layout):
        """(inputs to initialize from, their vmap axis): `batch_size` rows of x, with a
        leading replica axis (each replica's split) when the data is per split."""
        if self.splits:
            rows = layout.row_splits
            return jax.tree.map(lambda a: a[rows, :batch_size], self.train.x), 0
        return jax.tree.map(lambda a: a[:batch_size], self.train.x), None


def stack(batches: Sequence[Batch]) -> Batch:
    """Equally sized `Batch`es stacked on a new leading axis (None parts stay None)."""
    return Batch(*(None if parts[0] is None else jax.tree.map(lambda *a: np.stack(a), *parts)
                   for parts in zip(*batches, strict=True)))

"""`fit_replicas`' strategies: one vmapped program, or one `fit` program per seed run
concurrently.

"vmap" trains every replica in one compiled program with a leading replica axis (the default
driver). On XLA:CPU a vmapped step costs about as much as the steps it batches once the
model's products are more than a few hundred multiply-adds, the program runs until its slowest
replica stops, and one CPU device runs one program at a time on one core.

"concurrent" runs replica i as exactly `fit(seed=seeds[i])` -- the same compiled program, so
its result is bitwise that of `fit` -- with one host thread per available core (XLA releases
the GIL while a program runs, so two programs run on two cores of the one CPU device, with no
device configuration). Each replica stops at its own epoch; none waits for another.

"auto" picks "vmap" on accelerators (a batched product is nearly free there), with a mesh, host
callbacks or checkpoints (which the one-program driver owns), and for models whose per-step
work is small (parameters x batch size below `VMAP_BELOW`, measured in
`experiments/bench.py`'s replicas rows); otherwise "concurrent".
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import contracts
from jaxseq.history import History, NonFiniteLossError
from jaxseq.training.spec import Host, Layout, Program, Source

__all__ = ["STRATEGIES", "VMAP_BELOW", "available_cores", "drive_each", "resolve"]

STRATEGIES = ("auto", "vmap", "concurrent")
# parameters x batch size below which "auto" vmaps on CPU (the replicas rows of
# docs/benchmarks.md: 32 seeds of the tutorial's LSTM(5), batch 1, train in one vmapped
# program several times faster than 32 fits would).
VMAP_BELOW = 16_384


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _blocker(program: Program, host: Host) -> str | None:
    if program.mesh is not None:
        return "shard replicas over a mesh"
    if host.callbacks:
        return "give host callbacks (replicas,) arrays"
    if host.checkpoints is not None:
        return "checkpoint the replicas"
    return None


def _work(program: Program, data: Source) -> int:
    rows = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *np.shape(a)[1:]), a.dtype),
                        data.train.x)
    shapes = jax.eval_shape(lambda r: contracts.call_inputs(
        program.model.init, r, jax.random.PRNGKey(0)), rows)
    params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes.get("params", {})))
    return params * min(program.batch_size, data.n)


def resolve(strategy: str, program: Program, layout: Layout, host: Host, data: Source) -> str:
    """"vmap" or "concurrent" for `fit_replicas(strategy=...)` (see the module docstring).
    Raises ValueError for an unknown strategy, or "concurrent" with a mesh, host callbacks or
    checkpoints."""
    where = host.where
    contracts.check_choice(strategy, STRATEGIES, "strategy", where)
    blocker = _blocker(program, host)
    if strategy == "concurrent" and blocker is not None:
        raise ValueError(f"{where}: strategy='concurrent' runs one fit per seed and cannot "
                         f"{blocker}; pass strategy='vmap' (or 'auto').")
    if strategy != "auto":
        return strategy
    if (blocker is not None or layout.size == 1 or jax.default_backend() != "cpu"
            or _work(program, data) < VMAP_BELOW):
        return "vmap"
    return "concurrent"


def _pad(values: list[np.ndarray], length: int) -> np.ndarray:
    out = np.full((len(values), length), np.nan, np.float32)
    for i, v in enumerate(values):
        out[i, :len(v)] = v
    return out


def _gather_stopper(stopper, copies) -> None:
    """The user's EarlyStopping gets every replica's result as fit_replicas' vmapped driver
    gives it: arrays (replicas,), the best weights stacked when every replica kept them."""
    for name in ("stopped_epoch", "wait", "best_epoch"):
        setattr(stopper, name, np.asarray([getattr(c, name) for c in copies], int))
    stopper.best = np.asarray([np.nan if c.best is None else c.best for c in copies],
                              np.float32)
    weights = [c.best_weights for c in copies]
    stopper.best_weights = (None if any(w is None for w in weights)
                            else jax.tree.map(lambda *a: jnp.stack(a), *weights))


def drive_each(program: Program, layout: Layout, host: Host, data: Source, drive,
               workers: int | None = None):
    """`drive(program, Layout.single(seed), ...)` for every seed of `layout`, `workers` at a
    time (default: the available cores), results stacked in the layout's seed order as the
    vmapped driver returns them: leaves (R, ...), history entries (R, epochs) NaN after a
    replica stopped, `history.nonfinite` (R,). A replica that goes non-finite keeps its last
    finite state; `host.on_nan` "raise" raises `NonFiniteLossError` after every replica ran."""
    stoppers = [copy.copy(host.stopper) if host.stopper is not None else None
                for _ in layout.seeds]

    def one(i: int):
        own = dataclasses.replace(host, verbose=0, stopper=stoppers[i], on_nan="raise")
        try:
            return drive(program, Layout.single(layout.seeds[i]), own, data), None
        except NonFiniteLossError as err:
            return (err.state, err.history), err

    workers = min(workers or available_cores(), layout.size)
    if host.verbose:
        print(f"{host.where}: {layout.size} replicas, one fit each, {workers} at a time")
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        runs = list(pool.map(one, range(layout.size)))
    states = jax.tree.map(lambda *a: jnp.stack(a), *(state for (state, _), _ in runs))
    histories = [h for (_, h), _ in runs]
    length = max(len(h.loss) for h in histories)
    history = History({k: _pad([h.history[k] for h in histories], length)
                       for k in histories[0].history})
    failed = tuple(i for i, (_, err) in enumerate(runs) if err is not None)
    history.nonfinite = np.isin(np.arange(layout.size), failed)
    if host.stopper is not None:
        _gather_stopper(host.stopper, stoppers)
    if host.verbose:
        print(f"{host.where}: done, {length} epochs at most, {len(failed)} non-finite")
    if failed:
        first = runs[failed[0]][1]
        message = (f"{host.where}: replica(s) {list(failed)} went non-finite; the first, "
                   f"replica {failed[0]}: {first}")
        if host.on_nan == "raise":
            raise NonFiniteLossError(message, epoch=first.epoch, batch=first.batch,
                                     state=states, history=history, replicas=failed)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return states, history

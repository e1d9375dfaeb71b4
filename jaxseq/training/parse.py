"""The parsers of a training run: Keras-style keyword arguments -> the frozen values of
`jaxseq.training.spec`, every argument checked before anything is traced.

One parser per concern, shared by `fit`, `fit_replicas` and `evaluation.cross_validate`:
`parse_host` (epochs, output, callbacks, checkpoints -> `Host`), `parse_data` (x, y, weights,
mask, validation -> `Source`), `parse_optimizer` (optimizer, `state=` -> the optax
transformation) and `parse_program` (loss, metrics, batching, mesh, for a data source and a
replica layout -> `Program`). Errors are ValueError / TypeError naming `where` (the entry point)
and the argument.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
import optax

from jaxseq import contracts, parallel
from jaxseq.training import compaction, loop, losses
from jaxseq.training import data as data_mod
from jaxseq.training.callbacks import Callback, EarlyStopping
from jaxseq.training.spec import Checkpoints, Host, Layout, Program, Source
from jaxseq.training.state import TrainState, check_state, get_optimizer

__all__ = ["check_validation_choice", "parse_data", "parse_host", "parse_optimizer",
           "parse_program"]

VERBOSE = (0, 1, 2)


def split_callbacks(callbacks, where: str) -> tuple[EarlyStopping | None, tuple[Callback, ...]]:
    """-> (the one EarlyStopping or None, the host callbacks), checked."""
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]  # one callback, not in a list
    callbacks = list(callbacks or ())
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(
                f"{where} expects callbacks that subclass jaxseq.Callback (or "
                f"jaxseq.EarlyStopping); got {type(cb).__module__}.{type(cb).__name__}. Keras "
                "callbacks do not run in jaxseq: use js.EarlyStopping, or subclass js.Callback.")
    stoppers = [cb for cb in callbacks if isinstance(cb, EarlyStopping)]
    if len(stoppers) > 1:
        raise ValueError(f"{where} takes at most one EarlyStopping; got {len(stoppers)}.")
    host = tuple(cb for cb in callbacks if not isinstance(cb, EarlyStopping))
    return (stoppers[0] if stoppers else None), host


def chunk_length(epochs: int, verbose: int, callbacks: Sequence, epochs_per_chunk: int | None
                 ) -> int:
    """Epochs per call of the compiled loop, a runtime value (nothing recompiles): as given; one
    with host callbacks (each sees its epoch, and `stop_training` takes effect, before the next
    epoch runs, as in Keras); all of them (up to the loop's buffer) when nobody watches; else
    about 20 calls per run, so progress shows as training goes."""
    if epochs_per_chunk is None:
        if callbacks:  # Keras: a callback sees each epoch before the next runs, and can stop it
            epochs_per_chunk = 1
        else:
            epochs_per_chunk = epochs if verbose == 0 else math.ceil(epochs / 20)
    return max(1, min(epochs_per_chunk, loop.EPOCH_BUFFER))


def _checkpoints(where: str, epochs: int, directory, every, keep, resume) -> Checkpoints | None:
    if directory is None:
        if every is not None or resume:
            name = "resume=True" if resume else "checkpoint_every"
            raise ValueError(f"{where}: {name} needs checkpoint_dir (the directory of the run).")
        return None
    if every is not None:
        contracts.check_positive_int(every, "checkpoint_every", where)
    if keep is not None:
        contracts.check_positive_int(keep, "keep", where)
    return Checkpoints(directory, every or math.ceil(epochs / 20), keep, bool(resume))


def parse_host(where: str, *, epochs: int, verbose: int, callbacks: Sequence,
               epochs_per_chunk: int | None, on_nan: str,
               checkpoint_dir: str | os.PathLike | None = None,
               checkpoint_every: int | None = None, keep: int | None = None,
               resume: bool = False) -> Host:
    """`fit`'s host options (same names, same meaning) -> a `Host`. With an EarlyStopping and
    no `epochs_per_chunk`, a vmapped run looks for stopped replicas at least every
    `compaction.CHECK_EVERY` epochs (`Host.compact_every`)."""
    contracts.check_positive_int(epochs, "epochs", where)
    if checkpoint_dir is not None:
        contracts.check_path(checkpoint_dir, "checkpoint_dir", where)
    if epochs_per_chunk is not None:
        contracts.check_positive_int(epochs_per_chunk, "epochs_per_chunk", where)
    if verbose not in VERBOSE:
        raise ValueError(f"{where} expects verbose in {VERBOSE}; got {verbose!r}.")
    contracts.check_choice(on_nan, ("raise", "stop"), "on_nan", where)
    saves = _checkpoints(where, epochs, checkpoint_dir, checkpoint_every, keep, resume)
    stopper, host = split_callbacks(callbacks, where)
    every = compaction.CHECK_EVERY if stopper is not None and epochs_per_chunk is None else None
    return Host(where, epochs, verbose, chunk_length(epochs, verbose, host, epochs_per_chunk),
                stopper, host, on_nan, saves, every)


def check_validation_choice(validation_data, validation_split, where: str) -> None:
    """validation_data and validation_split are exclusive (Keras)."""
    if validation_data is not None and validation_split is not None:
        raise ValueError(f"{where} got both validation_data and validation_split; pass one.")


def parse_data(where: str, model: nn.Module, x, y, *, sample_weight=None, mask=None,
               validation_data=None, validation_split: float | None = None,
               stream_starts=None) -> Source:
    """`fit`'s data arguments (same names, same meaning) -> a `Source` shared by every
    replica: (x, y, sample_weight, mask, stream_starts) checked against the model,
    validation_data checked, or the last `validation_split` of the samples held out for
    validation."""
    train = data_mod.check_batch(model, x, y, sample_weight, mask, where=where)
    train = data_mod.check_stream_starts(model, train, stream_starts, where)
    val = data_mod.check_validation(model, validation_data, where)
    if validation_split is not None:
        check_validation_choice(validation_data, validation_split, where)
        train, val = data_mod.split_validation(train, validation_split, where)
    return Source(train, val)


def parse_optimizer(where: str, model: nn.Module, optimizer, state: TrainState | None
                    ) -> optax.GradientTransformation:
    """`optimizer=` (None, a Keras name, an optax transformation) -> the transformation; with
    `state=` (a single run's finite TrainState of this model) its own `state.tx`."""
    if state is None:
        return get_optimizer(optimizer, where)
    check_state(state, model, where)
    if not bool(loop.all_finite(state.params)):
        raise ValueError(f"{where}: state= holds non-finite parameters (NaN or Inf); "
                         "training cannot start from them. Pass the last finite state (a "
                         "NonFiniteLossError's .state is one), or initialize anew.")
    if optimizer is not None and optimizer is not state.tx:
        raise ValueError(f"{where}: state= carries its own optimizer (state.tx); do not pass "
                         "another optimizer with it.")
    return state.tx


def _check_mesh(mesh: jax.sharding.Mesh, layout: Layout, where: str) -> None:
    parallel.check_mesh(mesh, where)
    if layout.splits and len(layout.seeds) % mesh.size:
        raise ValueError(
            f"{where} with a mesh expects a number of seeds divisible by the mesh size "
            f"{mesh.size} (each device trains whole seeds of every split); got "
            f"{len(layout.seeds)} seeds.")


def parse_program(where: str, model: nn.Module, tx: optax.GradientTransformation, data: Source,
                  layout: Layout, *, loss, metrics: Sequence, batch_size: int, shuffle: bool,
                  validation_batch_size: int | None, reset_states: str | None,
                  mesh: jax.sharding.Mesh | None) -> Program:
    """`fit`'s compiled options (same names, same meaning) for `data` and `layout` -> a
    `Program`, its batch sizes capped at the samples (per split) as the loop caps them, so that
    runs that differ only in a batch size larger than the data share one program."""
    contracts.check_positive_int(batch_size, "batch_size", where)
    if validation_batch_size is not None:
        contracts.check_positive_int(validation_batch_size, "validation_batch_size", where)
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"{where} expects shuffle to be True or False; got {shuffle!r} (Keras' "
                        "'batch' shuffling is not supported).")
    if shuffle and data.train.starts is not None:
        raise ValueError(f"{where}: stream_starts marks windows in their order (row j of each "
                         "batch continuing row j of the previous one); pass shuffle=False.")
    loss_fn = losses.get_loss(loss, where)
    metric_list = losses.get_metrics(metrics, where)
    contracts.check_choice(reset_states, (None, "epoch"), "reset_states", where)
    bs = min(batch_size, data.n)
    if mesh is not None:
        _check_mesh(mesh, layout, where)
    sharding = parallel.training_sharding(mesh, bs, layout.size if layout.replicated else None,
                                          where)
    val_bs = None if data.val is None else min(validation_batch_size or batch_size, data.n_val)
    return Program(model, tx, loss_fn, metric_list, bs, bool(shuffle), val_bs,
                   reset_states == "epoch", mesh, sharding,
                   loss_name=loss if isinstance(loss, str) else None)

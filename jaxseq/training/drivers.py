"""`fit` and `fit_replicas`: Keras-style front doors over one driver, `drive`.

Each front door parses its keyword arguments once (`jaxseq.training.parse`) into the frozen
values of `jaxseq.training.spec` -- a `Program` (what is compiled), a `Layout` (the replicas), a
`Host` (what the host does) and a `Source` (the data) -- and makes one call of `drive`, which
works on those values only: initialize -> run the compiled loop chunk by chunk -> host hooks
(progress, callbacks, checkpoints) -> result. `fit_replicas` runs the same jitted
`train_loop`, `jax.vmap`-ed over a leading replica axis of the state, the key and the
early-stopping carry; data and settings are shared. Replica i therefore follows exactly the
computation of `fit(..., seed=seeds[i])`, to float32 rounding (XLA may order batched sums
differently; the tests check 1e-6 relative, 1e-5 for a GRU(3) trained with mae).

What is compiled depends only on the `Program` (the model, the optimizer object, loss and
metrics, the (capped) batch size, shuffle, the validation batch size, state resets, the mesh),
the layout's structure, and array shapes. The number of epochs, the seeds, `verbose`,
callbacks, `EarlyStopping`'s settings, `epochs_per_chunk` and the checkpoint cadence are runtime
values or host logic: a second `fit` that changes only those compiles nothing. The compiled loop
is a `lax.while_loop` over epochs; the host wakes once per chunk of epochs (all of them, up to
1024, when nobody watches; about 20 chunks per run with `verbose` or host callbacks; at most
`compaction.CHECK_EVERY` epochs for replicas with EarlyStopping). Between chunks a replicated
run compacts: the live replicas continue in a smaller replica batch (`compaction.Compactor`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax

from jaxseq.history import History
from jaxseq.training import callbacks as cbs
from jaxseq.training import compaction, hooks, loop, programs, strategies
from jaxseq.training.checkpoints import Saver
from jaxseq.training.parse import parse_data, parse_host, parse_optimizer, parse_program
from jaxseq.training.spec import Host, Layout, Program, Source
from jaxseq.training.state import TrainState, check_seeds
from jaxseq.typing import ArrayLike, Inputs, Mask, SampleWeight, Seed, Seeds, Targets

__all__ = ["drive", "fit", "fit_replicas"]


def drive(program: Program, layout: Layout, host: Host, data: Source,
          state: TrainState | None = None) -> tuple[TrainState, History]:
    """Train `program` on `data`, one run per replica of `layout`, with `host`'s hooks: the
    driver behind `fit`, `fit_replicas` and `evaluation.cross_validate`, each of which parses
    its keyword arguments (`jaxseq.training.parse`) and calls it once.

    Args:
      program: what is compiled (`spec.Program`, from `parse.parse_program`).
      layout: the replicas (`spec.Layout`): a single run, K seeds sharing the data, or S
        splits x K seeds (the data then has a leading split axis S).
      host: epochs, output, callbacks, checkpoints and `on_nan` (`spec.Host`).
      data: the checked data (`spec.Source`, from `parse.parse_data` or
        `Source.per_split`).
      state: a single run continues from this `TrainState` instead of initializing from the
        layout's seed (its optimizer must be `program.tx`).

    Returns:
      (state, history) as `fit` returns them for a single layout, or as `fit_replicas` does:
      every leaf with a leading replica axis R in the layout's row order, history entries
      (R, epochs), `history.nonfinite` (R,) bool.

    Raises:
      NonFiniteLossError: training went non-finite and `host.on_nan` is "raise".
      CheckpointSaveError: a checkpoint could not be written (carrying the run so far).
      ValueError: a stateful model in a shuffled or ragged layout, an EarlyStopping monitor
        the run does not log, a checkpoint directory of another run or other settings.
      RuntimeError: the checkpoint directory is in use by another run.
    """
    state, key = programs.start(program, layout, data, state)
    hooks.check_stateful(state, program, data.n, host.where)
    names = loop.log_names(program.metrics, data.val is not None)
    stop = cbs.stop_state(host.stopper, (state.params, state.model_state), names)
    if layout.replicated:
        stop = cbs.with_replica_axis(stop, layout.size)
    run = programs.loop_program(program, layout, data.val_per_split)
    compact = compaction.applies(program, layout, host)
    if compact and compaction.looks(host, state, layout, program, data.n):
        host = dataclasses.replace(host, chunk=min(host.chunk, host.compact_every))
    record = hooks.Record(host, layout.replicated, names)
    saver = Saver.open(program, layout, host, data, names)
    try:
        if saver is not None:
            state, key, stop = saver.resume(state, key, stop, record)
        # Donation consumes the buffers passed in; keep the caller's state usable.
        alive = np.logical_not(stop.stopped) if isinstance(stop.stopped, np.ndarray) else (
            ~stop.stopped)
        carry = loop.LoopState(cbs.copy_tree(state), alive, stop)
        carry, key, train, val = programs.place(carry, key, data, program.mesh, layout)
        chunks = compaction.Compactor(program, layout, data, run, key, train, val, compact)
        record.begin(state, carry.alive)
        while not record.done:
            carry, out, alive = chunks(carry, *record.window())
            record.add(out, alive)
            if saver is not None:
                saver.after_chunk(record, carry, key)
            elif not record.done:  # only the live replicas go on (compaction)
                carry = chunks.compact(carry, alive)
        record.progress.close()
        carry = chunks.gather(carry)
    finally:
        if saver is not None:
            saver.close()
    return record.finish(carry, batches=-(-data.n // program.batch_size), mesh=program.mesh,
                         saved=saver.directory if saver is not None else None)


def fit(
    model: nn.Module,
    x: Inputs,
    y: Targets,
    *,
    epochs: int,
    batch_size: int = 32,
    optimizer: optax.GradientTransformation | str | None = None,
    loss: str | Callable = "mse",
    metrics: Sequence = (),
    seed: Seed = 0,
    shuffle: bool = True,
    validation_data: tuple | None = None,
    validation_split: float | None = None,
    validation_batch_size: int | None = None,
    sample_weight: SampleWeight | None = None,
    mask: Mask | None = None,
    callbacks: Sequence[cbs.Callback] = (),
    verbose: int = 1,
    epochs_per_chunk: int | None = None,
    state: TrainState | None = None,
    on_nan: str = "raise",
    reset_states: str | None = None,
    stream_starts: ArrayLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[TrainState, History]:
    """Train `model` on (x, y) for `epochs` epochs with Keras `fit` semantics.

    Args:
      model: a linen Module (e.g. `js.Sequential`); it may take `mask` and `deterministic`.
      x: (batch, ...) inputs, floating (float32, bfloat16, ...); several inputs as a tuple or
        list of such arrays (`model.__call__(x_a, x_b, ...)`, positionally) or a dict
        (`model.__call__(enc=..., dec=...)`, keyword arguments), every one with the same
        batch: batched, shuffled and split together (Keras' lists and dicts of inputs).
      y: (batch, ...) targets shaped exactly like the model's output (nothing is broadcast).
      epochs: epochs to run (a runtime value: changing it compiles nothing).
      batch_size: mini-batch size; larger than the data uses all of it (as Keras). The last
        batch may be smaller (Keras): nothing is padded.
      optimizer: an optax GradientTransformation, a Keras name ("adam", "adamw", "sgd",
        "rmsprop": Keras' update and defaults) or `js.training.keras_optimizer(name, ...,
        clipnorm=...)` for Keras' hyperparameters and clipping arguments; None = one shared
        `optax.adam(1e-3)`. Pass the
        same object to reuse compilation; sweep a learning rate with `optax.inject_hyperparams`
        (the rate is then state, not code: one compilation for every value).
      loss: "mse", "mae" or `(y_true, y_pred) -> values` (see `jaxseq.training.losses` for
        Keras' reduction with weights and masks).
      metrics: names ("mse", "mae", "rmse", "mape") or callables, computed in the compiled loop,
        masked, not weighted; logged as "mae", "val_mae", ...
      seed: int; one key for initialization, one for shuffling and dropout (runtime value).
      shuffle: reshuffle the samples every epoch (bool).
      validation_data: (x_val, y_val), (x_val, y_val, sample_weight_val) or
        (x_val, y_val, sample_weight_val, mask_val); evaluated after each epoch in batches of
        `validation_batch_size` (default `batch_size`), as Keras.
      validation_split: float in (0, 1): validate on the last fraction of the samples (taken
        before shuffling), as Keras; not together with validation_data.
      sample_weight: (batch,) per-sample or (batch, time) per-step loss weights (>= 0).
      mask: (batch, time) bool, True at real steps: passed to the model, and when y has that
        time axis the masked steps are left out of loss and metrics (their x and y may hold
        anything, NaN included). With several inputs it is one mask, passed once as `mask=`,
        shared by every input with a time axis (rank >= 3, which must then have one length);
        inputs without one (batch, features) are not masked.
      callbacks: `jaxseq.Callback`s (host side) and at most one `EarlyStopping` (compiled).
      verbose: 0 silent; 1 a progress bar (plain lines when stdout is not a terminal); 2 one
        line per epoch. Output appears when a chunk of epochs finishes.
      epochs_per_chunk: epochs per call of the compiled loop (a runtime value, at most 1024):
        how often the host wakes for progress and callbacks. Default: one epoch per call with
        host callbacks (Keras: each sees its epoch and can stop the next), every epoch at once
        with verbose=0 and none, else about 20 calls per run.
      state: continue from this TrainState (from `fit` or `create_train_state`) instead of
        initializing from `seed`; its optimizer (`state.tx`) is used.
      on_nan: "raise" (default) raises `NonFiniteLossError` at the first epoch whose loss or
        parameters go non-finite, naming epoch and batch, carrying the last finite state and
        history; "stop" warns and returns them.
      reset_states: for models with stateful layers (truncated BPTT, Keras' layout: shuffle=False,
        the samples a multiple of batch_size, row j of each batch continuing row j of the
        previous one, no gradient across batches): None (Keras: the states carry on across
        epochs until you reset them) or "epoch" (zeroed before every epoch).
      stream_starts: (samples,) bool, for models with stateful layers trained with
        shuffle=False on windows of many streams side by side: True where a sample's window
        starts a new stream. Before the step that trains on it, that batch row of every
        stateful layer's kept state is zeroed (`js.reset_states(state, rows=...)` inside the
        compiled step); the other rows carry on. With validation_split the training part's
        flags are used; validation does not carry states, so it needs none.
      checkpoint_dir, checkpoint_every, keep, resume: save the whole training state with orbax
        every `checkpoint_every` epochs (default about 20 saves per run) and at the end, keeping
        the newest `keep`; `resume=True` continues from the latest complete checkpoint, bitwise
        as if never interrupted.
      mesh: data-parallel training over a 1-D `jax.sharding.Mesh`: each mini-batch is sharded
        along its batch axis (batch_size divisible by the mesh size).

    Returns:
      (state, history): a `TrainState` (`state.params`, `state.model_state`, `state.step`) and
      a `History` (`history.loss`, `history.val_loss`, `history.history["mae"]`, each (epochs,)).

    Raises:
      ValueError: a bad value, naming the argument, before anything is compiled.
      TypeError: a bad type, naming the argument, before anything is compiled.
      RuntimeError: another run is writing to `checkpoint_dir` (one writer per directory).
      NonFiniteLossError: the loss went non-finite (on_nan="raise").
      CheckpointSaveError: a checkpoint could not be written; its `.state` and `.history`
        hold the run up to that epoch.
    """
    where = "fit"
    layout = Layout.single(check_seeds([seed], where)[0])
    host = parse_host(where, epochs=epochs, verbose=verbose, callbacks=callbacks,
                      epochs_per_chunk=epochs_per_chunk, on_nan=on_nan,
                      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                      keep=keep, resume=resume)
    tx = parse_optimizer(where, model, optimizer, state)
    data = parse_data(where, model, x, y, sample_weight=sample_weight, mask=mask,
                      validation_data=validation_data, validation_split=validation_split,
                      stream_starts=stream_starts)
    program = parse_program(where, model, tx, data, layout, loss=loss, metrics=metrics,
                            batch_size=batch_size, shuffle=shuffle,
                            validation_batch_size=validation_batch_size,
                            reset_states=reset_states, mesh=mesh)
    return drive(program, layout, host, data, state)


def fit_replicas(
    model: nn.Module,
    x: Inputs,
    y: Targets,
    *,
    seeds: Seeds,
    epochs: int,
    batch_size: int = 32,
    optimizer: optax.GradientTransformation | str | None = None,
    loss: str | Callable = "mse",
    metrics: Sequence = (),
    shuffle: bool = True,
    validation_data: tuple | None = None,
    validation_split: float | None = None,
    validation_batch_size: int | None = None,
    sample_weight: SampleWeight | None = None,
    mask: Mask | None = None,
    callbacks: Sequence[cbs.Callback] = (),
    verbose: int | str = "auto",
    epochs_per_chunk: int | None = None,
    on_nan: str = "stop",
    reset_states: str | None = None,
    stream_starts: ArrayLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    strategy: str = "auto",
) -> tuple[TrainState, History]:
    """Train one replica of `model` per seed: in one compiled program (`fit`, vmapped over a
    replica axis), or as one `fit` per seed run concurrently on the CPU's cores (`strategy`).

    Args: those of `fit` (same meaning, same checks), except:
      seeds: a list of distinct int seeds, or an int n meaning `range(n)`.
      verbose: "auto" (default): one line when training starts (replicas, strategy, epochs)
        and one when it ends (wall time, replicas that went non-finite) where stdout is a
        terminal, nothing otherwise; 0 silent; 1 and 2 as `fit` (progress over all replicas).
      callbacks: host callbacks get `logs` values as arrays (replicas,); `EarlyStopping` stops
        each replica at its own epoch and restores its own best weights.
      on_nan: a replica whose training goes non-finite keeps its last finite state and logs NaN
        from then on while the others go on; "stop" (default) warns naming the failed replicas,
        "raise" raises `NonFiniteLossError` after the run (its `.replicas` names them, `.state`
        holds every replica).
      mesh: the replica axis is sharded over the mesh (seeds divisible by its size); data and
        settings are replicated.
      strategy: "vmap" (one program, a leading replica axis; between chunks of epochs the
        replicas still training continue in a smaller replica batch, the next power of two at
        or above their number once that halves the batch, so stopped replicas stop costing
        steps; results in the seeds' order, equal to the uncompacted program's to float32
        rounding; not with a mesh or checkpoints. With `EarlyStopping`, no `epochs_per_chunk`
        and parameters x batch size >= 16384 the host looks every 4 epochs:
        `jaxseq.training.compaction`), "concurrent" (replica i is
        exactly `fit(seed=seeds[i])`'s program; one host thread per available CPU core runs
        them, each replica stops at its own epoch; not with a mesh, host callbacks or
        checkpoints), or "auto" (default): "vmap" on GPU/TPU, with a mesh, host callbacks or
        checkpoints, and for small models (parameters x batch size < 16384, where a vmapped
        step costs little more than one); "concurrent" otherwise
        (`jaxseq.training.strategies`; measured in docs/benchmarks.md).

    Returns:
      (states, history): a `TrainState` whose leaves have a leading replica axis
      (`states.params["lstm"]["kernel"][i]` is replica i's; `states.step` (replicas,)), and a
      `History` whose entries have shape (replicas, epochs), NaN after a replica stopped.
    """
    where = "fit_replicas"
    layout = Layout(tuple(check_seeds(seeds, where)))
    report = verbose == "auto" and sys.stdout.isatty()
    host = parse_host(where, epochs=epochs, verbose=0 if verbose == "auto" else verbose,
                      callbacks=callbacks,
                      epochs_per_chunk=epochs_per_chunk, on_nan=on_nan,
                      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                      keep=keep, resume=resume)
    tx = parse_optimizer(where, model, optimizer, None)
    data = parse_data(where, model, x, y, sample_weight=sample_weight, mask=mask,
                      validation_data=validation_data, validation_split=validation_split,
                      stream_starts=stream_starts)
    program = parse_program(where, model, tx, data, layout, loss=loss, metrics=metrics,
                            batch_size=batch_size, shuffle=shuffle,
                            validation_batch_size=validation_batch_size,
                            reset_states=reset_states, mesh=mesh)
    chosen = strategies.resolve(strategy, program, layout, host, data)
    start = time.perf_counter()
    if report:
        print(f"{where}: {layout.size} replicas ({chosen}), up to {epochs} epochs", flush=True)
    if chosen == "concurrent":
        states, history = strategies.drive_each(program, layout, host, data, drive)
    else:
        states, history = drive(program, layout, host, data)
    if report:
        print(f"{where}: done in {time.perf_counter() - start:.1f} s; "
              f"{int(np.sum(history.nonfinite))} non-finite", flush=True)
    return states, history

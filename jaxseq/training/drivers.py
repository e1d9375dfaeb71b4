"""`fit` and `fit_replicas`: host drivers over the functional core (`loop.train_loop`).

One driver serves both: validate -> initialize -> run the compiled loop chunk by chunk ->
host hooks (progress, callbacks, checkpoints) -> result. `fit_replicas` runs the same jitted
`train_loop`, `jax.vmap`-ed over a leading replica axis of the state, the key and the
early-stopping carry; data and settings are shared. Replica i therefore follows exactly the
computation of `fit(..., seed=seeds[i])`, to float32 rounding (XLA may order batched sums
differently; the tests check 1e-6 relative, 1e-5 for a GRU(3) trained with mae).

What is compiled depends only on: the model, the optimizer object, loss and metrics, the
(capped) batch size, shuffle, the validation batch size, the mesh, and array shapes. The number
of epochs, the seed, `verbose`, callbacks, `EarlyStopping`'s settings, `epochs_per_chunk` and
the checkpoint cadence are runtime values or host logic: a second `fit` that changes only those
compiles nothing. The compiled loop is a `lax.while_loop` over epochs; the host wakes once per
chunk of epochs (all of them, up to 1024, when nobody watches; about 20 chunks per run with
`verbose` or host callbacks).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseq import contracts, parallel
from jaxseq.training import _hooks as hooks
from jaxseq.training import callbacks as cbs
from jaxseq.training import data as data_mod
from jaxseq.training import loop, losses, programs
from jaxseq.training.programs import init_state
from jaxseq.training.state import (
    DEFAULT_OPTIMIZER,
    CheckpointSaveError,
    History,
    NonFiniteLossError,
    TrainState,
    check_seeds,
    check_state,
    get_optimizer,
    split_seed,
)
from jaxseq.typing import Inputs, Mask, SampleWeight, Seed, Seeds, Targets

__all__ = ["DEFAULT_OPTIMIZER", "fit", "fit_replicas", "init_state"]


def drive(model, x, y, *, where, seed=0, seeds, state, epochs, batch_size, optimizer, loss,
          metrics, shuffle, validation_data, validation_split, validation_batch_size,
          sample_weight, mask, callbacks, verbose, epochs_per_chunk, on_nan, reset_states,
          checkpoint_dir, checkpoint_every, keep, resume, mesh, per_split=None):
    """The one driver behind `fit` (seeds None), `fit_replicas` and cross-validation.
    `per_split`: (train, val, seeds_outer): checked `Batch`es with a leading split axis S (val:
    None, or shared when validation_data is given); every seed trains on every split, replica
    r = (split r // K, seed r % K), or (seed r // S, split r % S) with seeds_outer; x, y,
    sample_weight, mask and validation_split are then unused."""
    replicated = seeds is not None
    hooks.check_run_options(where, epochs=epochs, batch_size=batch_size,
                            validation_batch_size=validation_batch_size,
                            epochs_per_chunk=epochs_per_chunk, shuffle=shuffle, verbose=verbose,
                            on_nan=on_nan, checkpoint_dir=checkpoint_dir)
    hooks.check_checkpoint_args(checkpoint_dir, checkpoint_every, keep, resume, where)
    loss_fn = losses.get_loss(loss, where)
    metric_list = losses.get_metrics(metrics, where)
    stopper, host = hooks.split_callbacks(callbacks, where)
    if state is not None:
        check_state(state, model, where)
        if not bool(loop.all_finite(state.params)):
            raise ValueError(f"{where}: state= holds non-finite parameters (NaN or Inf); "
                             "training cannot start from them. Pass the last finite state (a "
                             "NonFiniteLossError's .state is one), or initialize anew.")
    tx = state.tx if state is not None else get_optimizer(optimizer, where)
    if state is not None and optimizer is not None and optimizer is not state.tx:
        raise ValueError(f"{where}: state= carries its own optimizer (state.tx); do not pass "
                         "another optimizer with it.")

    if per_split is None:
        train = data_mod.check_batch(model, x, y, sample_weight, mask, where=where)
        val = data_mod.check_validation(model, validation_data, where)
        if validation_split is not None:
            if val is not None:
                raise ValueError(f"{where} got both validation_data and validation_split; "
                                 "pass one.")
            train, val = data_mod.split_validation(train, validation_split, where)
    else:
        train, val, outer = per_split
        s, k = contracts.shape_of(train.x)[0], len(seeds)
        per_split = (s if outer else k, 0 if validation_data is None else None, outer)
        seeds = [a for a in seeds for _ in range(s)] if outer else [a for _ in range(s)
                                                                     for a in seeds]
    n = contracts.shape_of(train.x)[1 if per_split else 0]
    bs = min(batch_size, n)
    names = loop.log_names(metric_list, val is not None)
    sharding = parallel.training_sharding(mesh, bs, len(seeds) if replicated else None, where)

    # Initialize (or continue from `state`).
    if replicated:
        init_keys, key = programs.stack_seeds(seeds)
        if state is None:
            x0 = train.x[:bs]
            if per_split:
                x0 = np.concatenate([train.x[:, :bs]] * k) if outer else np.repeat(
                    train.x[:, :bs], k, axis=0)
            state = programs.init_program(model, tx, True, bs, 0 if per_split else None)(
                jax.device_put(x0), init_keys)
    else:
        init_key, key = split_seed(seed)
        if state is None:
            state = init_state(model, tx, train.x, init_key, batch_size=bs)
    hooks.check_stateful(state, shuffle, n, bs, reset_states, where)
    stop = cbs.stop_state(stopper, (state.params, state.model_state), names)
    if replicated:
        stop = cbs.with_replica_axis(stop, len(seeds))

    chunk = hooks.chunk_length(epochs, verbose, host, epochs_per_chunk, loop.EPOCH_BUFFER)
    every = None
    if checkpoint_dir is not None:
        every = hooks.checkpoint_every(epochs, checkpoint_every)
    static = dict(batch_size=bs, shuffle=bool(shuffle), loss=loss_fn,
                  reset_states=reset_states == "epoch",
                  metrics=metric_list, val_batch_size=validation_batch_size or batch_size,
                  sharding=sharding)
    run = programs.loop_program(model, tx, static, replicated, per_split,
                                mesh if replicated else None)
    batches = -(-n // bs)

    history = History()
    first = saved = 0
    saver = settings = None
    if checkpoint_dir is not None:
        from jaxseq import checkpointing  # imports orbax only when checkpoints are used

        settings = dict(
            seed=seeds if replicated else seed, batch_size=bs, n_samples=n,
            shuffle=bool(shuffle), validation=val is not None, logs=list(names),
            loss=loss if isinstance(loss, str) else None,
            early_stopping=stopper.config() if stopper else None)
        saver = checkpointing.Checkpointer(checkpoint_dir, keep=keep, where=where)
    try:
        if saver is not None and (latest := saver.latest()) is not None:
            if not resume:
                raise ValueError(
                    f"{where}: {saver.directory!r} already holds checkpoints (the latest after "
                    f"{latest} epochs). Pass resume=True to continue that run, or use an empty "
                    "checkpoint_dir for a new one.")
            state, key, saved_stop, history = checkpointing.resume(
                saver, latest, state, key, stop if stopper else (), settings)
            stop = saved_stop if stopper else stop
            first = saved = latest
        # Donation consumes the buffers passed in; keep the caller's state usable.
        carry = loop.LoopState(jax.tree.map(jnp.copy, state),
                               ~jnp.asarray(stop.stopped), stop)
        train_d, val_d = data_mod.as_device(train), data_mod.as_device(val)
        if mesh is not None:
            if replicated:
                carry, key = parallel.shard_replicas((carry, key), mesh)
            else:
                carry, key = parallel.replicate((carry, key), mesh)
            train_d, val_d = parallel.replicate((train_d, val_d), mesh)
        for cb in [*([stopper] if stopper else []), *host]:
            cb.stop_training = False  # as Keras' fit: a stop asked for in an earlier run ends
            cb.on_train_begin(state)  # that run only
        progress = hooks.Progress(epochs, verbose, first)
        failure = None
        finished = not np.asarray(parallel.to_host(carry.alive)).any()
        while first < epochs and not finished:
            last = min(epochs, first + chunk)
            if every is not None:  # chunks end at checkpoint epochs
                last = min(last, (first // every + 1) * every)
            carry, out = run(carry, key, jnp.asarray(first, jnp.int32),
                             jnp.asarray(last, jnp.int32), train_d, val_d)
            out = parallel.to_host(out)
            out = out if replicated else {k: v[None] for k, v in out.items()}
            good = out["ran"] & out["finite"]  # (R, E): contiguous from each row's start
            cols = int(good.sum(axis=1).max())
            logs = {k: np.where(good, out[k], np.nan)[:, :cols].astype(np.float32)
                    for k in names}
            logs = logs if replicated else {k: v[0] for k, v in logs.items()}
            history.extend(logs)
            progress.report(first, logs)
            stop_requested = hooks.epoch_callbacks(host, first, logs)
            failure = hooks.record_failures(failure, out, first)
            first += cols
            alive = np.asarray(parallel.to_host(carry.alive))
            finished = stop_requested or not alive.any() or (
                not replicated and failure is not None)
            # A stop found in the chunk after a save rewrites that save with its reason.
            restate = finished and failure is not None and first == saved > 0
            if saver is not None and (restate or first != saved and (
                    first % every == 0 or finished or first >= epochs)):
                early = np.asarray(parallel.to_host(carry.stop.stopped)).any()
                why = "non_finite" if failure else "early_stopping" if early else None
                try:
                    saver.save(first, checkpointing.training_tree(
                        carry.state, key, carry.stop if stopper else ()),
                               dict(step=np.asarray(parallel.to_host(carry.state.step)).tolist(),
                                    history=checkpointing.history_record(history),
                                    stopped=why, settings=settings), replace=restate)
                except CheckpointSaveError as err:
                    progress.close()
                    raise CheckpointSaveError(
                        f"{where}: {err} Training stopped after {first} epoch(s); nothing "
                        "trained is lost: this error's .state and .history hold the run as "
                        f"fit(epochs={first}) returns it (save them, or pass state= to go on).",
                        path=err.path, epoch=first, state=cbs.restore_best(carry.stop,
                                                                          carry.state),
                        history=history) from err.__cause__
                saved = first
        progress.close()
    finally:
        if saver is not None:
            saver.close()
    s = carry.stop
    state = cbs.restore_best(s, carry.state)
    if replicated:
        history.nonfinite = np.isin(np.arange(len(seeds)), list(failure or ()))
    if stopper is not None:
        stopper.finish(parallel.to_host(s) if mesh is not None else s)
    for cb in host:
        cb.on_train_end(state, history)
    if failure:
        replicas = tuple(sorted(failure))
        f = failure[replicas[0]]
        message = hooks.non_finite_message(
            where=where, **f, epochs=epochs, batches=batches,
            saved=saver.directory if saver is not None else None,
            replicas=replicas if replicated else ())
        if on_nan == "raise":
            raise NonFiniteLossError(message, epoch=f["epoch"], batch=(
                f["batch"] if f["batch"] >= 0 else None), state=state, history=history,
                replicas=replicas if replicated else ())
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return state, history


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
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[TrainState, History]:
    """Train `model` on (x, y) for `epochs` epochs with Keras `fit` semantics.

    Args:
      model: a linen Module (e.g. `js.Sequential`); it may take `mask` and `deterministic`.
      x: (batch, ...) inputs, floating (float32, bfloat16, ...).
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
        anything, NaN included).
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
    options = {k: v for k, v in locals().items() if k not in ("model", "x", "y", "seed")}
    return drive(model, x, y, where="fit", seed=check_seeds([seed], "fit")[0], seeds=None,
                  **options)


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
    verbose: int = 0,
    epochs_per_chunk: int | None = None,
    on_nan: str = "stop",
    reset_states: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[TrainState, History]:
    """Train one replica of `model` per seed, all in one compiled program (`fit`, vmapped).

    Args: those of `fit` (same meaning, same checks), except:
      seeds: a list of distinct int seeds, or an int n meaning `range(n)`.
      callbacks: host callbacks get `logs` values as arrays (replicas,); `EarlyStopping` stops
        each replica at its own epoch and restores its own best weights.
      on_nan: a replica whose training goes non-finite keeps its last finite state and logs NaN
        from then on while the others go on; "stop" (default) warns naming the failed replicas,
        "raise" raises `NonFiniteLossError` after the run (its `.replicas` names them, `.state`
        holds every replica).
      mesh: the replica axis is sharded over the mesh (seeds divisible by its size); data and
        settings are replicated.

    Returns:
      (states, history): a `TrainState` whose leaves have a leading replica axis
      (`states.params["lstm"]["kernel"][i]` is replica i's; `states.step` (replicas,)), and a
      `History` whose entries have shape (replicas, epochs), NaN after a replica stopped.
    """
    options = {k: v for k, v in locals().items() if k not in ("model", "x", "y", "seeds")}
    return drive(model, x, y, where="fit_replicas", seeds=check_seeds(seeds), state=None,
                  **options)

"""Host-side hooks of the drivers: progress output, callbacks, checkpoint saving, failure text.

Nothing here is compiled; none of it changes what `fit` compiles (verbose, callbacks and the
checkpoint cadence are host logic).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np

from jaxseq import contracts
from jaxseq.training.callbacks import Callback, EarlyStopping
from jaxseq.typing import STATE_COLLECTION

VERBOSE = (0, 1, 2)


def split_callbacks(callbacks, where: str) -> tuple[EarlyStopping | None, list[Callback]]:
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
    host = [cb for cb in callbacks if not isinstance(cb, EarlyStopping)]
    return (stoppers[0] if stoppers else None), host


def _fmt(v) -> str:
    v = np.asarray(v)
    if v.ndim == 0:
        return f"{float(v):.4g}"
    finite = v[np.isfinite(v)]
    return f"{finite.mean():.4g} (mean of {finite.size})" if finite.size else "nan"


class Progress:
    """Keras-like output. verbose=0: silent; 1: a progress bar (tqdm, kept on screen with the
    final values) on a terminal, else one line per chunk; 2: one line per epoch."""

    def __init__(self, epochs: int, verbose: int, first: int = 0):
        self.epochs, self.verbose, self.bar = epochs, verbose, None
        if verbose == 1 and sys.stdout.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:  # the [experiments] extra brings tqdm; fall back to lines
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=epochs, initial=min(first, epochs), unit="epoch")

    def report(self, first: int, logs: dict[str, np.ndarray]) -> None:
        """`logs`: this chunk's values, epochs on the last axis, starting at epoch `first`."""
        done = np.shape(logs["loss"])[-1]
        if self.verbose == 0 or done == 0:
            return
        if self.verbose == 2:
            for i in range(done):
                items = " - ".join(f"{k}: {_fmt(v[..., i])}" for k, v in logs.items())
                print(f"Epoch {first + i + 1}/{self.epochs} - {items}")
        elif self.bar is not None:
            self.bar.update(done)
            self.bar.set_postfix({k: _fmt(v[..., -1]) for k, v in logs.items()})
        else:
            items = " - ".join(f"{k}: {_fmt(v[..., -1])}" for k, v in logs.items())
            print(f"Epoch {first + done}/{self.epochs} - {items}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def chunk_length(epochs: int, verbose: int, host: Sequence, epochs_per_chunk: int | None,
                 buffer: int) -> int:
    """Epochs per call of the compiled loop, a runtime value (nothing recompiles): as given; one
    with host callbacks (each sees its epoch, and `stop_training` takes effect, before the next
    epoch runs, as in Keras); all of them (up to the loop's buffer) when nobody watches; else
    about 20 calls per run, so progress shows as training goes."""
    if epochs_per_chunk is None:
        if host:  # Keras: a callback sees each epoch before the next runs, and can stop it
            epochs_per_chunk = 1
        else:
            epochs_per_chunk = epochs if verbose == 0 else math.ceil(epochs / 20)
    return max(1, min(epochs_per_chunk, buffer))


def epoch_callbacks(host: Sequence[Callback], first: int, logs: dict[str, np.ndarray]) -> bool:
    """Run `on_epoch_end` for each epoch of a chunk; -> whether a callback asked to stop."""
    stop = False
    for i in range(np.shape(logs["loss"])[-1]):
        values = {k: (float(v[..., i]) if np.ndim(v) == 1 else np.asarray(v[..., i]))
                  for k, v in logs.items()}
        for cb in host:
            cb.on_epoch_end(first + i, values)
            stop = stop or bool(getattr(cb, "stop_training", False))
    return stop


def record_failures(failure: dict | None, out: dict, first: int) -> dict | None:
    """Add each replica's first non-finite epoch of this chunk (`out` rows: replicas) to
    `failure` ({replica: {epoch, batch, batch_loss, epoch_loss}}); None while none failed."""
    bad = out["ran"] & ~out["finite"]
    for r in np.flatnonzero(bad.any(axis=1)):
        e = int(np.argmax(bad[r]))
        failure = failure or {}
        failure.setdefault(int(r), dict(
            epoch=first + e, batch=int(out["bad_batch"][r, e]),
            batch_loss=float(out["bad_loss"][r, e]), epoch_loss=float(out["loss"][r, e])))
    return failure


def check_run_options(where: str, *, epochs, batch_size, validation_batch_size,
                      epochs_per_chunk, shuffle, verbose, on_nan, checkpoint_dir=None) -> None:
    """The scalar options of `fit` / `fit_replicas`, checked before anything else."""
    contracts.check_positive_int(epochs, "epochs", where)
    if checkpoint_dir is not None:
        contracts.check_path(checkpoint_dir, "checkpoint_dir", where)
    contracts.check_positive_int(batch_size, "batch_size", where)
    for name, value in (("validation_batch_size", validation_batch_size),
                        ("epochs_per_chunk", epochs_per_chunk)):
        if value is not None:
            contracts.check_positive_int(value, name, where)
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"{where} expects shuffle to be True or False; got {shuffle!r} (Keras' "
                        "'batch' shuffling is not supported).")
    if verbose not in VERBOSE:
        raise ValueError(f"{where} expects verbose in {VERBOSE}; got {verbose!r}.")
    contracts.check_choice(on_nan, ("raise", "stop"), "on_nan", where)


def check_stateful(state, shuffle, n: int, bs: int, reset_states, where: str) -> None:
    """Truncated BPTT in Keras' layout: row j of batch k + 1 continues row j of batch k."""
    contracts.check_choice(reset_states, (None, "epoch"), "reset_states", where)
    if STATE_COLLECTION not in state.model_state:
        if reset_states is not None:
            raise ValueError(f"{where}: reset_states={reset_states!r} needs a stateful layer "
                             "(stateful=True); this model keeps no states.")
        return
    if shuffle:
        raise ValueError(f"{where}: the model has stateful layers, whose states carry from row "
                         "j of one batch to row j of the next; pass shuffle=False.")
    if n % bs:
        raise ValueError(f"{where}: the model has stateful layers, so the {n} samples must be a "
                         f"multiple of batch_size={bs} (every batch has the same rows). Trim "
                         f"or pad the data to {n - n % bs} or {n + bs - n % bs} samples.")


def check_checkpoint_args(checkpoint_dir, checkpoint_every, keep, resume, where: str) -> None:
    if checkpoint_dir is None:
        if checkpoint_every is not None or resume:
            name = "resume=True" if resume else "checkpoint_every"
            raise ValueError(f"{where}: {name} needs checkpoint_dir (the directory of the run).")
        return
    if checkpoint_every is not None:
        contracts.check_positive_int(checkpoint_every, "checkpoint_every", where)
    if keep is not None:
        contracts.check_positive_int(keep, "keep", where)


def checkpoint_every(epochs: int, every: int | None) -> int:
    return every or math.ceil(epochs / 20)


def non_finite_message(*, where, epoch, batch, batch_loss, epoch_loss, epochs, batches, saved,
                       replicas: Sequence[int] = ()) -> str:
    if batch < 0:
        what = f"the epoch's mean loss overflowed to {epoch_loss} (every batch loss was finite)"
    elif math.isfinite(batch_loss):
        what = (f"the parameters became non-finite in the update of batch index {batch} of "
                f"{batches} (its loss, {batch_loss:.6g}, was finite)")
    else:
        what = f"the loss of batch index {batch} of {batches} is {batch_loss}"
    where_saved = f" (checkpointed in {saved!r})" if saved else ""
    who = ""
    if replicas:
        who = (f"replica(s) {list(replicas)} went non-finite; the first, replica "
               f"{replicas[0]}, ")
    return (
        f"{where}: {who}non-finite training at epoch index {epoch} (Epoch {epoch + 1}/{epochs}):"
        f" {what}. Training stopped; the state kept is the last finite one, after {epoch} "
        f"epoch(s){where_saved}. Lower the learning rate, clip gradients "
        "(optax.clip_by_global_norm), or check the loss."
    )

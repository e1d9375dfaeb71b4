"""Host-side hooks of the driver: a run's `Record` (history, progress output, callbacks,
failures), the check of stateful layers, and the text of a non-finite failure.

Nothing here is compiled; none of it changes what `fit` compiles (verbose, callbacks and the
checkpoint cadence are host logic).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from jaxseq import parallel
from jaxseq.history import History, NonFiniteLossError
from jaxseq.training import callbacks as cbs
from jaxseq.training.callbacks import Callback
from jaxseq.training.spec import Host, Program
from jaxseq.typing import STATE_COLLECTION


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


def check_stateful(state, program: Program, n: int, where: str) -> None:
    """Truncated BPTT in Keras' layout: row j of batch k + 1 continues row j of batch k."""
    if STATE_COLLECTION not in state.model_state:
        if program.reset_states:
            raise ValueError(f"{where}: reset_states={'epoch'!r} needs a stateful layer "
                             "(stateful=True); this model keeps no states.")
        return
    bs = program.batch_size
    if program.shuffle:
        raise ValueError(f"{where}: the model has stateful layers, whose states carry from row "
                         "j of one batch to row j of the next; pass shuffle=False.")
    if n % bs:
        raise ValueError(f"{where}: the model has stateful layers, so the {n} samples must be a "
                         f"multiple of batch_size={bs} (every batch has the same rows). Trim "
                         f"or pad the data to {n - n % bs} or {n + bs - n % bs} samples.")


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


class Record:
    """The host side of one run while its compiled loop runs: the `history` so far, progress
    output, host callbacks, each replica's first non-finite epoch (`failure`), and `first`, the
    epochs done. `stopped`: a callback asked to stop, every replica stopped, or a single run
    went non-finite."""

    def __init__(self, host: Host, replicated: bool, names: Sequence[str]):
        self.host, self.replicated, self.names = host, replicated, tuple(names)
        self.every = host.checkpoints.every if host.checkpoints is not None else None
        self.history, self.first, self.failure = History(), 0, None
        self.stopped, self.progress = False, Progress(0, 0)

    @property
    def done(self) -> bool:
        return self.stopped or self.first >= self.host.epochs

    def begin(self, state, alive) -> None:
        """Callbacks' `on_train_begin` and progress output, from epoch `first`."""
        for cb in self.host.everyone:
            cb.stop_training = False  # as Keras' fit: a stop asked for in an earlier run ends
            cb.on_train_begin(state)  # that run only
        self.progress = Progress(self.host.epochs, self.host.verbose, self.first)
        self.stopped = not np.asarray(parallel.to_host(alive)).any()

    def window(self) -> tuple[np.int32, np.int32]:
        """The next chunk's (first, last) epochs as int32: up to `host.chunk` epochs, ending at
        a checkpoint epoch."""
        last = min(self.host.epochs, self.first + self.host.chunk)
        if self.every is not None:  # chunks end at checkpoint epochs
            last = min(last, (self.first // self.every + 1) * self.every)
        return np.int32(self.first), np.int32(last)  # host scalars: nothing to compile

    def add(self, out: dict, alive) -> None:
        """One chunk: `train_loop`'s logs (with the replica axis when replicated) and the
        alive flags after it -> history, output, callbacks, failures, `first`, `stopped`."""
        out = parallel.to_host(out)
        out = out if self.replicated else {k: v[None] for k, v in out.items()}
        good = out["ran"] & out["finite"]  # (R, E): contiguous from each row's start
        cols = int(good.sum(axis=1).max())
        logs = {k: np.where(good, out[k], np.nan)[:, :cols].astype(np.float32)
                for k in self.names}
        logs = logs if self.replicated else {k: v[0] for k, v in logs.items()}
        self.history.extend(logs)
        self.progress.report(self.first, logs)
        asked = epoch_callbacks(self.host.callbacks, self.first, logs)
        self.failure = record_failures(self.failure, out, self.first)
        self.first += cols
        alive = np.asarray(parallel.to_host(alive))
        self.stopped = asked or not alive.any() or (
            not self.replicated and self.failure is not None)

    def finish(self, carry, *, batches: int, mesh, saved: str | None):
        """-> (state, history) as the driver returns them: the best weights restored where
        EarlyStopping asks, callbacks' `on_train_end`; a failure raised (on_nan="raise") or
        warned about ("stop")."""
        host, stop = self.host, carry.stop
        state = cbs.restore_best(stop, carry.state)
        replicas = tuple(sorted(self.failure or ()))
        if self.replicated:
            self.history.nonfinite = np.isin(np.arange(np.shape(carry.alive)[0]), replicas)
        if host.stopper is not None:
            host.stopper.finish(parallel.to_host(stop) if mesh is not None else stop)
        for cb in host.callbacks:
            cb.on_train_end(state, self.history)
        if not replicas:
            return state, self.history
        f = self.failure[replicas[0]]
        named = replicas if self.replicated else ()
        message = non_finite_message(where=host.where, **f, epochs=host.epochs,
                                     batches=batches, saved=saved, replicas=named)
        if host.on_nan == "raise":
            raise NonFiniteLossError(message, epoch=f["epoch"], batch=(
                f["batch"] if f["batch"] >= 0 else None), state=state, history=self.history,
                replicas=named)
        warnings.warn(message, RuntimeWarning, stacklevel=4)  # the caller of fit
        return state, self.history

"""Callbacks for `fit`: the host-side `Callback` hook, and `EarlyStopping` compiled into the loop.

`Callback.on_epoch_end` runs on the host between compiled chunks of epochs (see `training`).
`EarlyStopping` is different: its decision runs INSIDE the compiled epoch scan, so it never
forces `fit` to wake the host, and it stops at the exact epoch whatever the chunk length. Its
state (best value, wait counter, best epoch, best parameters) travels in the scan carry and in
checkpoints, so a resumed run stops where the uninterrupted one would.

Keras 3 semantics (`keras.callbacks.EarlyStopping`), line by line:

- the best value starts unset at the beginning of training; the first monitored epoch always
  improves on it (even a NaN: then nothing improves afterwards);
- an epoch improves when `current + |min_delta| < best` (mode "min"; "max" mirrors it);
- every monitored epoch adds one to `wait`; an improvement resets `wait` to 0 only if it also
  beats `baseline` (when one is given); without improvement, training stops once
  `wait >= patience` at an epoch index > 0;
- epochs before `start_from_epoch` are ignored;
- with `restore_best_weights=True` the parameters of the best epoch are returned at the end of
  training, whether training stopped early or ran all its epochs (Keras 3 does the same).

One documented difference: the comparison runs in float32 inside the compiled loop (Keras
compares a float64 difference cast to float32). With `min_delta` exactly representable in
float32 (0, 0.5, 2**-k, ...) the decisions are identical; otherwise they can differ only when a
value lies within one float32 rounding of the threshold. Unknown `mode` or `monitor` values
raise instead of warning.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

MONITORS = ("loss", "val_loss")
MODES = ("auto", "min", "max")


class Callback:
    """Keras-style callback. `on_epoch_end` runs on the host after each compiled chunk, once per
    epoch of that chunk, in order; setting `self.stop_training = True` stops `fit` at the end of
    the chunk."""

    stop_training: bool = False

    def on_train_begin(self, state) -> None:  # noqa: B027 - optional hook
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:  # noqa: B027
        pass

    def on_train_end(self, state, history) -> None:  # noqa: B027
        pass


class StopState(NamedTuple):
    """The early-stopping carry: its numeric settings (dynamic, so a new `EarlyStopping` with
    another patience compiles nothing), the Keras counters, and the best parameters."""

    min_delta: Any  # f32 >= 0
    patience: Any  # int32
    baseline: Any  # f32, used when has_baseline
    has_baseline: Any  # bool
    start_from_epoch: Any  # int32
    best: Any  # f32, the best monitored value (meaningful once has_best)
    has_best: Any  # bool
    wait: Any  # int32
    best_epoch: Any  # int32
    stopped_epoch: Any  # int32, 0 until training is stopped (Keras' convention)
    stopped: Any  # bool
    has_weights: Any  # bool, Keras' `best_weights is not None`
    best_params: Any  # the params tree when restore_best_weights, else ()


@dataclasses.dataclass(frozen=True)
class StopRule:
    """The static part of an `EarlyStopping` (what changes the compiled program): hashable."""

    monitor: str
    mode: str  # "min" or "max"
    restore_best_weights: bool

    def improves(self, current, reference, min_delta):
        """Keras' `_is_improvement` against a set reference, in float32."""
        if self.mode == "min":
            return current + min_delta < reference
        return current - min_delta > reference

    def update(self, s: StopState, current, epoch, params) -> StopState:
        """Keras' `on_epoch_end(epoch, logs)` for the monitored value `current` (traceable)."""
        current = jnp.asarray(current, jnp.float32)
        epoch = jnp.asarray(epoch, jnp.int32)

        def pick(flag, new, old):
            return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)

        # "If best weights were never set, then the current weights are the best."
        best_params, best_epoch = s.best_params, s.best_epoch
        if self.restore_best_weights:
            best_params = pick(~s.has_weights, params, best_params)
            best_epoch = jnp.where(s.has_weights, best_epoch, epoch)
        wait = s.wait + 1
        improved = ~s.has_best | self.improves(current, s.best, s.min_delta)
        beats_baseline = ~s.has_baseline | self.improves(current, s.baseline, s.min_delta)
        stop = ~improved & (wait >= s.patience) & (epoch > 0)
        new = s._replace(
            best=jnp.where(improved, current, s.best),
            has_best=jnp.ones((), bool),
            wait=jnp.where(improved & beats_baseline, 0, wait).astype(jnp.int32),
            best_epoch=jnp.where(improved, epoch, best_epoch),
            stopped_epoch=jnp.where(stop, epoch, s.stopped_epoch),
            stopped=s.stopped | stop,
            has_weights=jnp.asarray(self.restore_best_weights, bool) | s.has_weights,
            best_params=pick(improved, params, best_params) if self.restore_best_weights else (),
        )
        return pick(epoch >= s.start_from_epoch, new, s)


class EarlyStopping(Callback):
    """Stop training when the monitored loss stops improving (Keras 3 semantics, compiled).

    monitor: "val_loss" (needs `validation_data`) or "loss". min_delta: the smallest decrease
    that counts as an improvement. patience: epochs without improvement before stopping.
    mode: "auto" (= "min" for losses), "min" or "max". baseline: an improvement resets the
    patience counter only if it also beats this value. restore_best_weights: return the
    parameters of the best epoch at the end of training (`restore_best` is an alias).
    start_from_epoch: epochs to run before monitoring starts.

    Pass it in `fit(..., callbacks=[EarlyStopping(...)])`; at most one per `fit`. The decision
    is compiled into the epoch loop (it does not force host round trips). After `fit`, the
    instance holds Keras' attributes: `stopped_epoch` (0 if it never stopped), `best`,
    `best_epoch`, `wait`, and `best_weights` (the restored params or None).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
        *,
        restore_best: bool | None = None,
    ):
        if monitor not in MONITORS:
            raise ValueError(f"EarlyStopping expects monitor in {MONITORS}; got {monitor!r}.")
        if mode not in MODES:
            raise ValueError(f"EarlyStopping expects mode in {MODES}; got {mode!r}.")
        for name, value in (("patience", patience), ("start_from_epoch", start_from_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"EarlyStopping expects {name} to be an int >= 0; got {value!r}.")
        if restore_best is not None:
            restore_best_weights = bool(restore_best)
        self.rule = StopRule(monitor=monitor, mode="max" if mode == "max" else "min",
                             restore_best_weights=bool(restore_best_weights))
        self.monitor, self.mode, self.verbose = monitor, mode, verbose
        self.min_delta, self.patience = abs(float(min_delta)), patience
        self.baseline = None if baseline is None else float(baseline)
        self.start_from_epoch = start_from_epoch
        self.restore_best_weights = self.rule.restore_best_weights
        self.reset()

    def config(self) -> dict:
        """Every setting, as JSON-able values (checkpoints compare it on resume)."""
        return dict(monitor=self.monitor, mode=self.rule.mode, min_delta=self.min_delta,
                    patience=self.patience, baseline=self.baseline,
                    restore_best_weights=self.restore_best_weights,
                    start_from_epoch=self.start_from_epoch)

    def init_state(self, params) -> StopState:
        """The compiled state at the beginning of training (Keras' `on_train_begin`)."""
        f32, i32 = jnp.float32, jnp.int32
        zero = lambda dtype: jnp.zeros((), dtype)
        return StopState(
            min_delta=jnp.asarray(self.min_delta, f32), patience=jnp.asarray(self.patience, i32),
            baseline=jnp.asarray(self.baseline or 0.0, f32),
            has_baseline=jnp.asarray(self.baseline is not None),
            start_from_epoch=jnp.asarray(self.start_from_epoch, i32),
            best=zero(f32), has_best=zero(bool), wait=zero(i32), best_epoch=zero(i32),
            stopped_epoch=zero(i32), stopped=zero(bool), has_weights=zero(bool),
            best_params=jax.tree.map(jnp.copy, params) if self.restore_best_weights else (),
        )

    def reset(self) -> None:
        self.stopped_epoch, self.wait, self.best_epoch = 0, 0, 0
        self.best: float | None = None
        self.best_weights = None

    def on_train_begin(self, state) -> None:
        self.reset()

    def finish(self, s: StopState) -> None:
        """Copy the compiled state into Keras' attributes (called by `fit` at train end)."""
        self.stopped_epoch, self.wait = int(s.stopped_epoch), int(s.wait)
        self.best_epoch = int(s.best_epoch)
        self.best = float(s.best) if bool(s.has_best) else None
        self.best_weights = s.best_params if bool(s.has_weights) else None
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.best_weights is not None and self.verbose > 0:
            print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")

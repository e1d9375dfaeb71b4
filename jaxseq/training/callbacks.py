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

Every setting of `EarlyStopping` (monitor, mode, patience, min_delta, baseline,
restore_best_weights, start_from_epoch) is an array in the loop's carry, so changing any of them
compiles nothing. `monitor` may be "loss", "val_loss" or any metric given to `fit`
(`metrics=["mae"]` -> "mae", "val_mae"); `mode="auto"` means "min" (every jaxseq metric is an
error) and "max" must be asked for. Under `fit_replicas` each replica stops at its own epoch and
restores its own best weights; the attributes set after training are then arrays (replicas,).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("auto", "min", "max")


class Callback:
    """Keras-style callback, run on the host between compiled chunks of epochs.

    `on_train_begin(state)` before the first chunk; `on_epoch_end(epoch, logs)` once per epoch
    of each chunk, in order, with `logs` {"loss": ..., "val_loss": ..., metrics}: floats for
    `fit`, NumPy arrays (replicas,) for `fit_replicas` (NaN for a replica that stopped);
    `on_train_end(state, history)` after the last. Setting `self.stop_training = True` stops
    training (every replica) at the end of the chunk.
    """

    stop_training: bool = False

    def on_train_begin(self, state) -> None:  # noqa: B027 - optional hook
        pass

    def on_epoch_end(self, epoch: int, logs: dict) -> None:  # noqa: B027
        pass

    def on_train_end(self, state, history) -> None:  # noqa: B027
        pass


class StopState(NamedTuple):
    """The early-stopping carry. Every setting is an array, so another monitor, mode, patience
    or `restore_best_weights` compiles nothing; `enabled` is False without EarlyStopping."""

    enabled: Any  # bool
    monitor: Any  # int32: index of the monitored value in the loop's log names
    sign: Any  # f32: +1 for mode "min", -1 for "max"
    restore: Any  # bool: restore_best_weights
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
    best_params: Any  # the weights at the best epoch: (params, model_state) in fit's loop


def copy_tree(tree):
    """A copy of every array leaf in new buffers, with its sharding (what a donated carry needs
    so that the caller's arrays survive): a device copy, no compiled program."""
    return jax.tree.map(lambda a: jax.device_put(a, may_alias=False), tree)


def tree_where(flag, new, old):
    """`new` where the scalar `flag` holds, else `old`, leaf by leaf (exact: no arithmetic)."""
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def improves(s: StopState, current, reference):
    """Keras' `_is_improvement` against a set reference, in float32: `current + min_delta <
    reference` (mode min) or `current - min_delta > reference` (mode max: the same test on
    negated values, exact in IEEE arithmetic)."""
    return s.sign * current + s.min_delta < s.sign * reference


def update(s: StopState, current, epoch, params) -> StopState:
    """Keras' `EarlyStopping.on_epoch_end(epoch, logs)` for the monitored value `current`
    (traceable; a disabled state comes back unchanged)."""
    current = jnp.asarray(current, jnp.float32)
    epoch = jnp.asarray(epoch, jnp.int32)
    # "If best weights were never set, then the current weights are the best."
    first = s.restore & ~s.has_weights
    best_params = tree_where(first, params, s.best_params)
    best_epoch = jnp.where(first, epoch, s.best_epoch)
    wait = s.wait + 1
    improved = ~s.has_best | improves(s, current, s.best)
    beats_baseline = ~s.has_baseline | improves(s, current, s.baseline)
    stop = ~improved & (wait >= s.patience) & (epoch > 0)
    new = s._replace(
        best=jnp.where(improved, current, s.best),
        has_best=jnp.ones((), bool),
        wait=jnp.where(improved & beats_baseline, 0, wait).astype(jnp.int32),
        best_epoch=jnp.where(improved, epoch, best_epoch),
        stopped_epoch=jnp.where(stop, epoch, s.stopped_epoch),
        stopped=s.stopped | stop,
        has_weights=s.restore | s.has_weights,
        best_params=tree_where(improved & s.restore, params, best_params),
    )
    return tree_where(s.enabled & (epoch >= s.start_from_epoch), new, s)


def stop_state(stopper: EarlyStopping | None, params, names) -> StopState:
    """The loop's initial carry for `stopper` (None: disabled); `names` are the loop's log names,
    which must contain the monitored one."""
    if stopper is None:
        return EarlyStopping(monitor="loss").init_state(params, names, enabled=False)
    return stopper.init_state(params, names)


def with_replica_axis(stop: StopState, r: int) -> StopState:
    """A StopState built from stacked params: its scalar settings get the replica axis too."""
    fields = {k: (np.broadcast_to if isinstance(v, np.ndarray) else jnp.broadcast_to)(
        v, (r,) + np.shape(v)) for k, v in stop._asdict().items() if k != "best_params"}
    return stop._replace(**fields)


class EarlyStopping(Callback):
    """Stop training when the monitored value stops improving (Keras 3 semantics, compiled).

    monitor: "val_loss" (needs validation data), "loss", or a metric name given to `fit`
    ("mae", "val_mae", ...). min_delta: the smallest change that counts as an improvement.
    patience: epochs without improvement before stopping. mode: "auto" (= "min"), "min" or
    "max". baseline: an improvement resets the patience counter only if it also beats this
    value. restore_best_weights: return the parameters of the best epoch at the end of training
    (`restore_best` is an alias). start_from_epoch: epochs to run before monitoring starts.

    Pass it in `fit(..., callbacks=[EarlyStopping(...)])`; at most one per `fit`. The decision
    is compiled into the epoch loop. After training the instance holds Keras' attributes:
    `stopped_epoch` (0 if it never stopped), `best`, `best_epoch`, `wait`, and `best_weights`
    (the restored params or None); arrays (replicas,) after `fit_replicas`. Restoring restores
    every variable collection (params and e.g. BatchNorm statistics), as Keras restores all
    weights.
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
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"EarlyStopping expects monitor to be a log name such as 'loss', "
                             f"'val_loss' or 'val_mae'; got {monitor!r}.")
        if mode not in MODES:
            raise ValueError(f"EarlyStopping expects mode in {MODES}; got {mode!r}.")
        for name, value in (("patience", patience), ("start_from_epoch", start_from_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"EarlyStopping expects {name} to be an int >= 0; got {value!r}.")
        for name, value in (("min_delta", min_delta), ("baseline", baseline)):
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, float, np.integer, np.floating))):
                raise TypeError(f"EarlyStopping expects {name} to be a number; got {value!r}.")
        if restore_best is not None:
            restore_best_weights = bool(restore_best)
        self.monitor, self.mode, self.verbose = monitor, mode, verbose
        self.min_delta, self.patience = abs(float(min_delta)), patience
        self.baseline = None if baseline is None else float(baseline)
        self.start_from_epoch = start_from_epoch
        self.restore_best_weights = bool(restore_best_weights)
        self.reset()

    def config(self) -> dict:
        """Every setting, as JSON-able values (checkpoints compare it on resume)."""
        return dict(monitor=self.monitor, mode="max" if self.mode == "max" else "min",
                    min_delta=self.min_delta, patience=self.patience, baseline=self.baseline,
                    restore_best_weights=self.restore_best_weights,
                    start_from_epoch=self.start_from_epoch)

    def init_state(self, params, names=("loss", "val_loss"), *, enabled: bool = True
                   ) -> StopState:
        """The compiled state at the beginning of training (Keras' `on_train_begin`); `names`
        are the loop's log names, in order."""
        names = tuple(names)
        if self.monitor not in names:
            raise ValueError(
                f"EarlyStopping(monitor={self.monitor!r}): training logs {names}. Monitor one of "
                "them (a 'val_' name needs validation data; a metric needs metrics=[...]).")
        # NumPy scalars: built on the host, they become device arrays when the loop program
        # takes them, so starting a run dispatches no eager operations (each would compile).
        f32, i32 = np.float32, np.int32
        zero = lambda dtype: np.zeros((), dtype)
        return StopState(
            enabled=np.asarray(enabled, bool), monitor=np.asarray(names.index(self.monitor), i32),
            sign=np.asarray(-1.0 if self.mode == "max" else 1.0, f32),
            restore=np.asarray(self.restore_best_weights, bool),
            min_delta=np.asarray(self.min_delta, f32), patience=np.asarray(self.patience, i32),
            baseline=np.asarray(self.baseline or 0.0, f32),
            has_baseline=np.asarray(self.baseline is not None),
            start_from_epoch=np.asarray(self.start_from_epoch, i32),
            best=zero(f32), has_best=zero(bool), wait=zero(i32), best_epoch=zero(i32),
            stopped_epoch=zero(i32), stopped=zero(bool), has_weights=zero(bool),
            best_params=copy_tree(params),
        )

    def reset(self) -> None:
        self.stopped_epoch, self.wait, self.best_epoch = 0, 0, 0
        self.best = None
        self.best_weights = None

    def on_train_begin(self, state) -> None:
        self.reset()

    def finish(self, s: StopState) -> None:
        """Copy the compiled state into Keras' attributes (called by the driver at train end):
        Python numbers for one run, arrays (replicas,) for stacked states."""

        def value(a, kind):
            a = np.asarray(a)
            return kind(a) if a.ndim == 0 else a.astype(kind)

        self.stopped_epoch, self.wait = value(s.stopped_epoch, int), value(s.wait, int)
        self.best_epoch = value(s.best_epoch, int)
        has_best, has_weights = np.asarray(s.has_best), np.asarray(s.has_weights)
        best = s.best_params[0] if isinstance(s.best_params, tuple) else s.best_params  # params
        if has_best.ndim == 0:
            self.best = float(s.best) if bool(has_best) else None
            self.best_weights = best if bool(has_weights) else None
        else:
            self.best = np.where(has_best, np.asarray(s.best, np.float32), np.nan)
            self.best_weights = best if has_weights.all() else None
        if self.verbose > 0 and np.ndim(self.stopped_epoch) == 0:
            if self.stopped_epoch > 0:
                print(f"Epoch {self.stopped_epoch + 1}: early stopping")
            if self.best_weights is not None:
                print("Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")


def restore_best(stop: StopState, state):
    """`state` with params and model_state replaced by the best ones where `restore_best_weights`
    asked for it and a best epoch was recorded (Keras 3: also when training ran all its
    epochs); per replica when `stop` has a replica axis."""
    if not isinstance(stop.restore, jax.core.Tracer) and np.ndim(stop.restore) == 0:
        # one run (its flags replicated wherever it ran), decided on the host: nothing to
        # compile; the best weights copied, so that the state returned and EarlyStopping's
        # `best_weights` never share buffers
        if not (np.asarray(stop.restore) and np.asarray(stop.has_weights)):
            return state
        params, model_state = copy_tree(stop.best_params)
        return state.replace(params=params, model_state=model_state)
    params, model_state = _select_best(stop.restore, stop.has_weights, stop.best_params,
                                       (state.params, state.model_state))
    return state.replace(params=params, model_state=model_state)


@jax.jit
def _select_best(restore, has_weights, best, current):
    """Per replica (the leading axis of every leaf), `best` where `restore & has_weights`, else
    `current`: one program for the whole tree (under a trace, inlined)."""
    flag = restore & has_weights
    return jax.tree.map(
        lambda b, c: jnp.where(flag.reshape(flag.shape + (1,) * (c.ndim - flag.ndim)), b, c),
        best, current)

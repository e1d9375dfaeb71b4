"""Training with Keras' `fit` semantics, compiled end to end.

`fit(model, x, y, epochs=..., batch_size=...)` runs many epochs inside ONE compiled program
(`jax.lax.scan` over epochs, and inside it over mini-batches). The host wakes only between
chunks of epochs, to update a progress bar and run callbacks. Keras semantics: the data are
shuffled each epoch, the last partial batch counts (its loss is the mean over its own samples),
and the epoch loss is the sample-weighted mean of the batch losses, each measured before its
update. `val_loss` is measured after each epoch.

The compiled program is cached per (model, optimizer, loss, batch size, chunk length, flags), so
a second `fit` with the same model object, optimizer object and shapes compiles nothing. Pass
the same optimizer object to reuse compilation; `optimizer=None` uses one shared `adam(1e-3)`.

Randomness: `seed` gives one key, split into init, shuffle and dropout keys; epoch `e` shuffles
with `fold_in(shuffle_key, e)` and step `s` drops out with `fold_in(dropout_key, s)`. Same seed,
same bits on the same machine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from jaxseq import contracts
from jaxseq.models import accepts
from jaxseq.typing import Array

# ---------------------------------------------------------------------------------------------
# Losses: elementwise errors, reduced to one number per sample by the mean over non-batch axes.

LOSSES: dict[str, Callable[[Array, Array], Array]] = {
    "mse": lambda pred, y: jnp.square(pred - y),
    "mae": lambda pred, y: jnp.abs(pred - y),
}

DEFAULT_OPTIMIZER = optax.adam(1e-3)  # Keras' Adam default; shared so compilation is reused.


def get_loss(loss: str | Callable) -> Callable[[Array, Array], Array]:
    """A loss name ("mse", "mae") or an elementwise callable `(pred, y) -> errors`."""
    if callable(loss):
        return loss
    contracts.check_choice(loss, tuple(LOSSES), "loss", "fit")
    return LOSSES[loss]


def per_sample(errors: Array) -> Array:
    """(b, ...) elementwise errors -> (b,) per-sample losses (mean over the other axes)."""
    return errors.reshape(errors.shape[0], -1).mean(axis=1)


def weighted_mean(values: Array, weights: Array) -> Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


# ---------------------------------------------------------------------------------------------
# History


@dataclasses.dataclass
class History:
    """Per-epoch metrics, as Keras' `History`: `history.history["loss"]`, or `history.loss`."""

    history: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def epoch(self) -> np.ndarray:
        return np.arange(len(self.loss))

    @property
    def loss(self) -> np.ndarray:
        return self.history.get("loss", np.zeros((0,), np.float32))

    @property
    def val_loss(self) -> np.ndarray | None:
        return self.history.get("val_loss")

    def extend(self, logs: dict[str, np.ndarray]) -> None:
        for key, values in logs.items():
            old = self.history.get(key, np.zeros((0,), values.dtype))
            self.history[key] = np.concatenate([old, values])


class Callback:
    """Keras-style callback. `on_epoch_end` runs on the host after each compiled chunk, once per
    epoch of that chunk, in order; setting `self.stop_training = True` stops `fit` at the end of
    the chunk."""

    stop_training: bool = False

    def on_train_begin(self, state: TrainState) -> None:  # noqa: B027 - optional hook
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:  # noqa: B027
        pass

    def on_train_end(self, state: TrainState, history: History) -> None:  # noqa: B027
        pass


# ---------------------------------------------------------------------------------------------
# The compiled program. Everything static lives in `Program`; arrays travel as arguments.


class Keys(NamedTuple):
    shuffle: Array
    dropout: Array


def split_seed(seed: int) -> tuple[Array, Keys]:
    """seed -> (init key, Keys(shuffle, dropout))."""
    init, shuffle, dropout = jax.random.split(jax.random.PRNGKey(seed), 3)
    return init, Keys(shuffle, dropout)


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    """The static description of one training program (hashable by identity)."""

    model: nn.Module
    tx: optax.GradientTransformation
    loss: Callable
    batch_size: int
    n_samples: int
    shuffle: bool
    epochs_per_chunk: int

    @property
    def batches(self) -> int:
        return math.ceil(self.n_samples / self.batch_size)

    def apply(self, params, x, *, train: bool, key=None):
        kwargs = {}
        if accepts(self.model, "deterministic"):
            kwargs["deterministic"] = not train
            if train:
                kwargs["rngs"] = {"dropout": key}
        return self.model.apply({"params": params}, x, **kwargs)

    def batch_loss(self, params, xb, yb, wb, key):
        pred = self.apply(params, xb, train=True, key=key)
        return weighted_mean(per_sample(self.loss(pred, yb)), wb)

    def eval_loss(self, params, x, y, w):
        return weighted_mean(per_sample(self.loss(self.apply(params, x, train=False), y)), w)

    def epoch(self, params, opt_state, keys: Keys, epoch, data):
        """One epoch over all mini-batches: -> (params, opt_state, epoch loss)."""
        x, y, w = data
        n, bs, nb = self.n_samples, self.batch_size, self.batches
        if self.shuffle and nb > 1:  # a single full batch is the same batch in any order
            order = jax.random.permutation(jax.random.fold_in(keys.shuffle, epoch), n)
        else:
            order = jnp.arange(n)
        pad = nb * bs - n
        valid = jnp.concatenate([jnp.ones((n,), w.dtype), jnp.zeros((pad,), w.dtype)])
        order = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)])

        def step(carry, inputs):
            params, opt_state = carry
            idx, ok, s = inputs
            wb = w[idx] * ok
            key = jax.random.fold_in(keys.dropout, epoch * nb + s)
            loss, grads = jax.value_and_grad(self.batch_loss)(params, x[idx], y[idx], wb, key)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (params, opt_state), (loss, jnp.sum(wb))

        (params, opt_state), (losses, weights) = jax.lax.scan(
            step,
            (params, opt_state),
            (order.reshape(nb, bs), valid.reshape(nb, bs), jnp.arange(nb)),
        )
        return params, opt_state, weighted_mean(losses, weights)

    def chunk(self, params, opt_state, keys: Keys, first_epoch, last_epoch, data, val):
        """Epochs [first_epoch, first_epoch + epochs_per_chunk), skipping those >= last_epoch.

        Returns (params, opt_state, logs) with logs[k] of shape (epochs_per_chunk,); skipped
        epochs log NaN and leave the state unchanged.
        """

        def body(carry, epoch):
            params, opt_state = carry

            def run(carry):
                params, opt_state = carry
                params, opt_state, loss = self.epoch(params, opt_state, keys, epoch, data)
                logs = {"loss": loss}
                if val is not None:
                    logs["val_loss"] = self.eval_loss(params, *val)
                return (params, opt_state), logs

            def skip(carry):
                nan = jnp.full((), jnp.nan, jnp.float32)
                return carry, {k: nan for k in (("loss", "val_loss") if val else ("loss",))}

            carry, logs = jax.lax.cond(epoch < last_epoch, run, skip, (params, opt_state))
            logs = {k: jnp.asarray(v, jnp.float32) for k, v in logs.items()}
            return carry, logs

        epochs = first_epoch + jnp.arange(self.epochs_per_chunk)
        (params, opt_state), logs = jax.lax.scan(body, (params, opt_state), epochs)
        return params, opt_state, logs


def _key(obj) -> Any:
    try:
        hash(obj)
        return ("h", obj)
    except TypeError:
        return ("id", id(obj))


def compiled_chunk(program_args: dict) -> tuple[Program, Callable]:
    """The jitted `Program.chunk` for these static settings, built once and cached."""

    def build():
        program = Program(**program_args)
        return program, jax.jit(program.chunk, donate_argnums=(0, 1))

    return cached("chunk", *(v for _, v in sorted(program_args.items())), build=build)


# ---------------------------------------------------------------------------------------------
# Public API


def _as_array(a, name: str) -> np.ndarray:
    try:
        return np.asarray(a)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise TypeError(f"fit expects {name} to be an array; got {type(a).__name__}.") from err


_CACHE: dict[tuple, Any] = {}


def cached(kind: str, *parts, build: Callable):
    """A per-(kind, parts) memo for compiled functions; unhashable parts are keyed by identity
    and kept alive by the cache, so an id is never reused while its entry exists."""
    key = (kind, *(_key(p) for p in parts))
    if key not in _CACHE:
        _CACHE[key] = (parts, build())
    return _CACHE[key][1]


def output_shape(model, x) -> Any:
    """The model's output shape/dtype for inputs shaped like x[:1] (traced once, then cached)."""
    spec = (tuple(contracts.shape_of(x)[1:]), str(np.asarray(x[:1]).dtype))
    return cached(
        "out", model, spec,
        build=lambda: jax.eval_shape(
            lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.asarray(x[:1]))[0]
        ),
    )


def check_data(model, x, y, *, where: str = "fit", name_x="x", name_y="y"):
    """Contracts for (x, y): same batch size, finite floats, y shaped like the model output."""
    xs, ys = contracts.shape_of(x), contracts.shape_of(y)
    if len(xs) < 1 or len(ys) < 1:
        raise ValueError(f"{where} expects {name_x} and {name_y} with a batch axis; got "
                         f"{name_x} {xs} and {name_y} {ys}.")
    if xs[0] != ys[0]:
        raise ValueError(
            f"{where} expects {name_x} and {name_y} with the same number of samples (axis 0); "
            f"got {name_x} {xs} and {name_y} {ys}."
        )
    if xs[0] < 1:
        raise ValueError(f"{where} expects at least one sample; got {name_x} of shape {xs}.")
    for arr, name in ((x, name_x), (y, name_y)):
        a = _as_array(arr, name)
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{where} expects {name} with a floating dtype; got {a.dtype}. "
                            f"Cast it, e.g. {name}.astype(np.float32).")
        if not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise ValueError(f"{where} expects finite {name}; {name} has {bad} NaN/Inf "
                             "value(s). Clean or impute the data first.")
    out = output_shape(model, x)
    if not hasattr(out, "shape"):
        raise TypeError(f"{where} expects a model with one array output; got {out}.")
    if tuple(out.shape[1:]) != tuple(ys[1:]):
        expected = ("n",) + tuple(out.shape[1:])
        raise ValueError(
            f"{where}: the model outputs shape (batch, {', '.join(map(str, out.shape[1:]))}) per "
            f"batch, so {name_y} must have shape {expected}; got {name_y} {ys}. Reshape {name_y} "
            "(nothing is broadcast), or change the model's output layer."
        )


def _weights(sample_weight, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones((n,), np.float32)
    w = np.asarray(sample_weight, np.float32)
    if w.shape != (n,):
        raise ValueError(f"fit expects sample_weight of shape (batch,) = ({n},); got {w.shape}.")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("fit expects finite, non-negative sample_weight.")
    return w


def init_state(model, x, tx, key) -> TrainState:
    """A fresh `TrainState` for `model` on inputs shaped like `x` (only x[:1] is used)."""

    def build():
        def init(key, x1):
            params = model.init(key, x1)["params"]
            return params, tx.init(params)

        return jax.jit(init)

    params, opt_state = cached("init", model, tx, build=build)(key, jnp.asarray(x[:1]))
    return TrainState(step=0, apply_fn=model.apply, params=params, tx=tx, opt_state=opt_state)


def auto_chunk(epochs: int, verbose: int, callbacks: Sequence) -> int:
    """Epochs per compiled chunk: all of them when nobody watches, else about 20 chunks."""
    if verbose == 0 and not callbacks:
        return epochs
    return max(1, math.ceil(epochs / 20))


def fit(
    model: nn.Module,
    x,
    y,
    *,
    epochs: int,
    batch_size: int = 32,
    optimizer: optax.GradientTransformation | None = None,
    loss: str | Callable = "mse",
    seed: int = 0,
    shuffle: bool = True,
    validation_data: tuple | None = None,
    sample_weight=None,
    callbacks: Sequence[Callback] = (),
    verbose: int = 1,
    epochs_per_chunk: int | None = None,
    state: TrainState | None = None,
) -> tuple[TrainState, History]:
    """Train `model` on (x, y) for `epochs` epochs with Keras `fit` semantics.

    x: (batch, ...) model inputs; y: (batch, ...) shaped exactly like the model's output.
    `batch_size` larger than the data uses the whole data (as Keras). `state`: continue from
    this TrainState instead of initializing from `seed` (its `step` counts optimizer steps).
    Returns `(state, history)`: a flax `TrainState` (`state.params`) and a `History`.
    """
    contracts.check_positive_int(epochs, "epochs", "fit")
    contracts.check_positive_int(batch_size, "batch_size", "fit")
    if epochs_per_chunk is not None:
        contracts.check_positive_int(epochs_per_chunk, "epochs_per_chunk", "fit")
    loss_fn = get_loss(loss)
    tx = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    check_data(model, x, y)
    n = contracts.shape_of(x)[0]
    w = _weights(sample_weight, n)
    val = None
    if validation_data is not None:
        if len(validation_data) != 2:
            raise ValueError("fit expects validation_data=(x_val, y_val); got "
                             f"{len(validation_data)} item(s).")
        xv, yv = validation_data
        check_data(model, xv, yv, name_x="x_val", name_y="y_val")
        val = (jnp.asarray(xv), jnp.asarray(yv), jnp.ones((len(xv),), jnp.float32))

    init_key, keys = split_seed(seed)
    if state is None:
        state = init_state(model, x, tx, init_key)
    chunk_len = epochs_per_chunk or auto_chunk(epochs, verbose, callbacks)
    program, run_chunk = compiled_chunk(dict(
        model=model, tx=tx, loss=loss_fn, batch_size=min(batch_size, n), n_samples=n,
        shuffle=bool(shuffle), epochs_per_chunk=min(chunk_len, epochs),
    ))
    data = (jnp.asarray(x), jnp.asarray(y), jnp.asarray(w))
    params, opt_state = state.params, state.opt_state
    # Donation consumes the buffers passed in; keep the caller's state usable.
    params, opt_state = jax.tree.map(jnp.copy, (params, opt_state))
    history = History()
    for cb in callbacks:
        cb.on_train_begin(state)
    bar = _progress(epochs, verbose)
    first = 0
    while first < epochs:
        params, opt_state, logs = run_chunk(
            params, opt_state, keys, jnp.asarray(first), jnp.asarray(epochs), data, val
        )
        done = min(program.epochs_per_chunk, epochs - first)
        logs = {k: np.asarray(v)[:done] for k, v in jax.device_get(logs).items()}
        history.extend(logs)
        _report(bar, verbose, first, epochs, logs)
        stop = False
        for i in range(done):
            for cb in callbacks:
                cb.on_epoch_end(first + i, {k: float(v[i]) for k, v in logs.items()})
                stop = stop or cb.stop_training
        first += done
        if stop:
            break
    if bar is not None:
        bar.close()
    state = state.replace(
        params=params, opt_state=opt_state, step=state.step + first * program.batches
    )
    for cb in callbacks:
        cb.on_train_end(state, history)
    return state, history


def _progress(epochs: int, verbose: int):
    if verbose != 1:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the [experiments] extra brings tqdm; fall back to lines
        return None
    return tqdm(total=epochs, unit="epoch", leave=False)


def _report(bar, verbose: int, first: int, epochs: int, logs: dict[str, np.ndarray]) -> None:
    if verbose == 0:
        return
    done = len(logs["loss"])
    if verbose == 2:
        for i in range(done):
            items = " - ".join(f"{k}: {v[i]:.4g}" for k, v in logs.items())
            print(f"Epoch {first + i + 1}/{epochs} - {items}")
    elif bar is not None:
        bar.update(done)
        bar.set_postfix({k: f"{v[-1]:.4g}" for k, v in logs.items()})
    else:
        items = " - ".join(f"{k}: {v[-1]:.4g}" for k, v in logs.items())
        print(f"Epoch {first + done}/{epochs} - {items}")


def predict(model: nn.Module, params, x, *, batch_size: int | None = None) -> Array:
    """Model outputs for x (batch, ...), in inference mode (no dropout), jit-compiled.

    With `batch_size`, x is run in batches of that size (the last one padded, then trimmed),
    so one compiled program serves any number of samples.
    """
    xs = contracts.shape_of(x)
    if len(xs) < 1 or xs[0] < 1:
        raise ValueError(f"predict expects x with a non-empty batch axis; got {xs}.")
    fn = cached("predict", model, build=lambda: jax.jit(
        lambda params, x: Program(model, DEFAULT_OPTIMIZER, LOSSES["mse"], 1, 1, False, 1).apply(
            params, x, train=False)))
    if batch_size is None:
        return fn(params, jnp.asarray(x))
    contracts.check_positive_int(batch_size, "batch_size", "predict")
    x = np.asarray(x)
    n = xs[0]
    pad = (-n) % batch_size
    xp = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
    outs = [fn(params, jnp.asarray(xp[i : i + batch_size])) for i in range(0, n + pad, batch_size)]
    return jnp.concatenate(outs)[:n]


def evaluate(model: nn.Module, params, x, y, *, loss: str | Callable = "mse") -> float:
    """The mean per-sample loss of the model on (x, y), in inference mode."""
    check_data(model, x, y, where="evaluate")
    loss_fn = get_loss(loss)
    pred = predict(model, params, x)
    return float(jnp.mean(per_sample(loss_fn(pred, jnp.asarray(y)))))

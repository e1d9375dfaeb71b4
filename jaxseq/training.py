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
same bits on the same machine. Every epoch is the same compiled step of the same function, so
where the chunks are cut does not change a bit (tested); this is what makes resuming exact.

Failures are loud, and checked inside the compiled loop: an epoch in which a batch loss, or the
parameters after an update, become non-finite is not committed (the carry keeps the previous
epoch's state) and the remaining epochs are skipped; the host then raises `NonFiniteLossError`
naming the epoch and batch (`on_nan="raise"`) or returns the last finite state
(`on_nan="stop"`). The data must be finite (checked up front), so overflow comes from training
itself: too large a learning rate, or a loss that overflows.

`EarlyStopping` (see `callbacks`) is compiled into the epoch scan too. Checkpoints
(`checkpoint_dir=`, `resume=True`; see `checkpointing`) are written between chunks, and the
chunks are cut at checkpoint epochs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from jaxseq import contracts, parallel
from jaxseq.callbacks import Callback, EarlyStopping, StopRule, StopState
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


def reduce_loss(errors: Array, weights: Array) -> Array:
    """Elementwise errors (b, ...) -> one weighted mean. `weights` (b,) weighs samples (each
    sample's loss is the mean over its other axes); (b, t) weighs time steps of errors shaped
    (b, t, ...) (each step's loss is the mean over its features): a zero-weight (masked,
    padded) step contributes nothing, and the mean is over the weighted steps."""
    if weights.ndim == 1:
        return weighted_mean(per_sample(errors), weights)
    per_step = errors.reshape(errors.shape[0], errors.shape[1], -1).mean(axis=2)
    return weighted_mean(per_step, weights)


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


# `Callback` now lives in `jaxseq.callbacks`; it stays importable from here.


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss (or parameters). `epoch` and `batch` are 0-based
    indices (`batch` is None when only the epoch mean overflowed); `state` and `history` are the
    last finite ones, as `fit(..., on_nan="stop")` returns them."""

    def __init__(self, message: str, *, epoch: int, batch: int | None, state, history):
        super().__init__(message)
        self.epoch, self.batch, self.state, self.history = epoch, batch, state, history


# ---------------------------------------------------------------------------------------------
# The compiled program. Everything static lives in `Program`; arrays travel as arguments.


class Keys(NamedTuple):
    shuffle: Array
    dropout: Array


def split_seed(seed: int) -> tuple[Array, Keys]:
    """seed -> (init key, Keys(shuffle, dropout))."""
    init, shuffle, dropout = jax.random.split(jax.random.PRNGKey(seed), 3)
    return init, Keys(shuffle, dropout)


class Carry(NamedTuple):
    """What the compiled epoch loop carries from epoch to epoch."""

    params: Any
    opt_state: Any
    alive: Array  # bool: no non-finite epoch yet, and early stopping has not fired
    stop: StopState | tuple  # the early-stopping state, () without EarlyStopping


def all_finite(tree) -> Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def select(flag, new, old):
    """`new` where the scalar `flag` holds, else `old`, leaf by leaf (exact: no arithmetic)."""
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


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
    stop_rule: StopRule | None = None  # EarlyStopping, compiled into the epoch loop
    mesh: Any = None  # data-parallel: each mini-batch is sharded over this 1-D mesh

    @property
    def batches(self) -> int:
        return math.ceil(self.n_samples / self.batch_size)

    def apply(self, params, x, *, train: bool, key=None, mask=None):
        kwargs = {} if mask is None else {"mask": mask}
        if accepts(self.model, "deterministic"):
            kwargs["deterministic"] = not train
            if train:
                kwargs["rngs"] = {"dropout": key}
        return self.model.apply({"params": params}, x, **kwargs)

    def batch_loss(self, params, xb, yb, wb, mb, key):
        pred = self.apply(params, xb, train=True, key=key, mask=mb)
        return reduce_loss(self.loss(pred, yb), wb)

    def eval_loss(self, params, x, y, w, m=None):
        return reduce_loss(self.loss(self.apply(params, x, train=False, mask=m), y), w)


    def checked_epoch(self, params, opt_state, keys: Keys, epoch, data):
        """One epoch: -> (params, opt_state, epoch loss, bad batch, its loss).

        `bad batch` is the index of the first batch whose loss, or whose updated parameters,
        are not finite (-1 if none); `its loss` is that batch's loss.
        """
        x, y, w, m = data  # m: the input mask (n, t) or None; w: loss weights (n,) or (n, t)
        n, bs, nb = self.n_samples, self.batch_size, self.batches
        if self.shuffle and nb > 1:  # a single full batch is the same batch in any order
            order = jax.random.permutation(jax.random.fold_in(keys.shuffle, epoch), n)
        else:
            order = jnp.arange(n)
        pad = nb * bs - n
        valid = jnp.concatenate([jnp.ones((n,), w.dtype), jnp.zeros((pad,), w.dtype)])
        order = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)])

        def step(carry, inputs):
            params, opt_state, bad = carry
            idx, ok, s = inputs
            wb = w[idx] * ok.reshape(ok.shape + (1,) * (w.ndim - 1))
            key = jax.random.fold_in(keys.dropout, epoch * nb + s)
            xb, yb, mb = x[idx], y[idx], None if m is None else m[idx]
            if self.mesh is not None:  # the partitioner splits the batch and all-reduces grads
                xb, yb, wb, mb = jax.lax.with_sharding_constraint(
                    (xb, yb, wb, mb), parallel.batch_sharding(self.mesh))
            loss, grads = jax.value_and_grad(self.batch_loss)(params, xb, yb, wb, mb, key)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            finite = jnp.isfinite(loss) & all_finite(params)
            bad = jnp.where((bad < 0) & ~finite, s, bad)
            return (params, opt_state, bad), (loss, jnp.sum(wb))

        (params, opt_state, bad), (losses, weights) = jax.lax.scan(
            step,
            (params, opt_state, jnp.full((), -1, jnp.int32)),
            (order.reshape(nb, bs), valid.reshape(nb, bs), jnp.arange(nb, dtype=jnp.int32)),
        )
        loss = weighted_mean(losses, weights)
        return params, opt_state, loss, bad, losses[jnp.maximum(bad, 0)]

    def log_names(self, val) -> tuple[str, ...]:
        return ("loss", "val_loss") if val is not None else ("loss",)

    def run(self, carry: Carry, keys: Keys, first_epoch, last_epoch, data, val):
        """Epochs [first_epoch, first_epoch + epochs_per_chunk) below `last_epoch`, while alive.

        Returns (carry, out), out[k] of shape (epochs_per_chunk,): the logs ("loss", and
        "val_loss" with validation data), "ran" (the epoch ran), "finite", "bad_batch" and
        "bad_loss" (see `checked_epoch`). An epoch that does not run logs NaN and leaves the
        carry unchanged; a non-finite epoch is not committed (the carry keeps the previous
        state) and turns `alive` off, as does early stopping.
        """
        names = self.log_names(val)

        def body(carry: Carry, epoch):
            def run(carry: Carry):
                params, opt_state, loss, bad, bad_loss = self.checked_epoch(
                    carry.params, carry.opt_state, keys, epoch, data)
                finite = (bad < 0) & jnp.isfinite(loss)
                params, opt_state = select(finite, (params, opt_state),
                                           (carry.params, carry.opt_state))
                logs = {"loss": loss}
                if val is not None:
                    logs["val_loss"] = self.eval_loss(params, *val)
                logs = {k: jnp.asarray(v, jnp.float32) for k, v in logs.items()}
                stop, alive = carry.stop, finite
                if self.stop_rule is not None:
                    monitored = logs[self.stop_rule.monitor]
                    stop = select(finite, self.stop_rule.update(stop, monitored, epoch, params),
                                  stop)
                    alive = finite & ~stop.stopped
                out = {**logs, "ran": jnp.ones((), bool), "finite": finite, "bad_batch": bad,
                       "bad_loss": jnp.asarray(bad_loss, jnp.float32)}
                return Carry(params, opt_state, alive, stop), out

            def skip(carry: Carry):
                nan = jnp.full((), jnp.nan, jnp.float32)
                out = {**{k: nan for k in names}, "ran": jnp.zeros((), bool),
                       "finite": jnp.ones((), bool), "bad_batch": jnp.full((), -1, jnp.int32),
                       "bad_loss": nan}
                return carry, out

            return jax.lax.cond((epoch < last_epoch) & carry.alive, run, skip, carry)

        epochs = first_epoch + jnp.arange(self.epochs_per_chunk)
        return jax.lax.scan(body, carry, epochs)


def _key(obj) -> Any:
    try:
        hash(obj)
        return ("h", obj)
    except TypeError:
        return ("id", id(obj))


def compiled_chunk(program_args: dict) -> tuple[Program, Callable]:
    """The jitted `Program.run` for these static settings, built once and cached."""

    def build():
        program = Program(**program_args)
        return program, jit(program.run, donate_argnums=(0,))

    return cached("chunk", *(v for _, v in sorted(program_args.items())), build=build)


# ---------------------------------------------------------------------------------------------
# Public API


def _as_array(a, name: str) -> np.ndarray:
    try:
        return np.asarray(a)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise TypeError(f"fit expects {name} to be an array; got {type(a).__name__}.") from err


_CACHE: dict[tuple, Any] = {}

# XLA:CPU options for jaxseq's own compiled programs. Measured on the tutorial's many-to-many
# fit (2-core CPU; see README, "Compile time"): XLA:CPU's loop emitters compile the training
# program in about half the time of its MLIR fusion emitters (0.64 s vs 1.30 s) and run it as
# fast; a program that runs once (init) compiles faster at LLVM level 1 (0.5 s vs 0.8 s), with
# bitwise the same parameters (tested). Other backends get no options.
CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
CPU_ONCE_OPTIONS = {**CPU_OPTIONS, "xla_backend_optimization_level": 1}


def compiler_options(*, once: bool = False) -> dict | None:
    """The XLA options jaxseq compiles its programs with on this backend (None off CPU).
    `once`: for a program that runs once per fit (initialization)."""
    if jax.default_backend() != "cpu":
        return None
    return dict(CPU_ONCE_OPTIONS if once else CPU_OPTIONS)


try:  # XLA options can be set only on an outermost program; no public API tells if one is
    from jax._src.core import trace_state_clean as _at_top_level  # being traced right now.
except ImportError:  # pragma: no cover - a JAX without it: compile without options
    def _at_top_level() -> bool:
        return False


class _Jitted:
    """`jax.jit(fn)` that compiles with `compiler_options(once=...)` when called at top level,
    and runs as a plain nested jit inside someone else's trace (a user's `jit`, `vmap`,
    `eval_shape`), where XLA takes no per-program options. An XLA that does not know an option
    (another jaxlib) gets none, with a warning. Other attributes (`lower`, ...) are those of
    the jit that a top-level call runs."""

    def __init__(self, fn: Callable, options: dict | None, **kwargs):
        self.top = jax.jit(fn, compiler_options=options, **kwargs) if options else None
        self.nested = jax.jit(fn, **kwargs)
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, *args, **kwargs):
        if self.top is not None and _at_top_level():
            try:
                return self.top(*args, **kwargs)
            except RuntimeError as err:
                if "No such compile option" not in str(err):
                    raise
                warnings.warn(f"jaxseq: this XLA rejects jaxseq's compiler options ({err}); "
                              "compiling without them.", RuntimeWarning, stacklevel=2)
                self.top = None
        return self.nested(*args, **kwargs)

    def __getattr__(self, name: str):
        if name in ("top", "nested"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.top or self.nested, name)


def jit(fn: Callable, *, once: bool = False, **kwargs) -> Callable:
    """`jax.jit` with `compiler_options(once=once)` (see `_Jitted`)."""
    return _Jitted(fn, compiler_options(once=once), **kwargs)


def cached(kind: str, *parts, build: Callable):
    """A per-(kind, parts) memo for compiled functions; unhashable parts are keyed by identity
    and kept alive by the cache, so an id is never reused while its entry exists."""
    key = (kind, *(_key(p) for p in parts))
    if key not in _CACHE:
        _CACHE[key] = (parts, build())
    return _CACHE[key][1]


def output_shape(model, x) -> Any:
    """The model's output shape/dtype for inputs shaped like x (traced once, then cached)."""
    spec = jax.ShapeDtypeStruct(contracts.shape_of(x), np.asarray(x).dtype)
    return cached(
        "out", model, (spec.shape, str(spec.dtype)),
        build=lambda: jax.eval_shape(
            lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0], spec
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


def loss_weights(model, x, y, sample_weight, mask, where: str = "fit"):
    """(loss weights (n,) or (n, t), input mask (n, t) bool or None), checked.

    `sample_weight`: (batch,) per sample, or (batch, time) per step when y is
    (batch, time, features). `mask` (batch, time) goes to the model (its recurrent layers skip
    masked steps) and, when y has that time axis, zero-weights the masked steps in the loss.
    """
    xs, ys = contracts.shape_of(x), contracts.shape_of(y)
    n = xs[0]
    stepwise = len(ys) == 3 and len(xs) >= 2 and ys[1] == xs[1]
    if mask is not None:
        if len(xs) < 2:
            raise ValueError(f"{where} got a mask, but x {xs} has no time axis.")
        contracts.check_mask(mask, n, xs[1], where)
        if not accepts(model, "mask"):
            raise TypeError(
                f"{where} got a mask, but {type(model).__name__}.__call__ takes no mask "
                "argument. Use jaxseq.Sequential (it passes the mask to its recurrent layers)."
            )
        mask = np.asarray(mask).astype(bool)
    if sample_weight is None:
        w = np.ones((n,), np.float32)
    else:
        w = np.asarray(sample_weight, np.float32)
        allowed = [(n,)] + ([(n, ys[1])] if stepwise else [])
        if w.shape not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(
                f"{where} expects sample_weight of shape (batch,) = ({n},)"
                + (f" or (batch, time) = {allowed[1]}" if stepwise else "")
                + f"; got {w.shape}. Expected {want}."
            )
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"{where} expects finite, non-negative sample_weight.")
    if mask is not None and stepwise:
        w = (w if w.ndim == 2 else w[:, None]) * mask.astype(np.float32)
    return w, mask


def init_fn(model, tx) -> Callable:
    """The pure `(key, x1) -> (params, opt_state)` that `fit` and `fit_replicas` compile."""

    def init(key, x1):
        params = model.init(key, x1)["params"]
        return params, tx.init(params)

    return init


def init_state(model, x, tx, key) -> TrainState:
    """A fresh `TrainState` for `model` on inputs shaped like `x` (only x[:1] is used)."""
    params, opt_state = cached("init", model, tx, build=lambda: jit(init_fn(model, tx), once=True))(
        key, jnp.asarray(x[:1]))
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
    mask=None,
    callbacks: Sequence[Callback] = (),
    verbose: int = 1,
    epochs_per_chunk: int | None = None,
    state: TrainState | None = None,
    on_nan: str = "raise",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[TrainState, History]:
    """Train `model` on (x, y) for `epochs` epochs with Keras `fit` semantics.

    x: (batch, ...) model inputs; y: (batch, ...) shaped exactly like the model's output.
    `batch_size` larger than the data uses the whole data (as Keras).
    `sample_weight`: (batch,) per-sample loss weights, or (batch, time) per-step weights when y
    is (batch, time, features). `mask`: (batch, time) bool, True at real steps (see
    `jaxseq.problems.pad_sequences`); it goes to the model's recurrent layers, and when y is
    (batch, time, features) the masked steps contribute nothing to the loss, which is then the
    mean over the real steps. `state`: continue from
    this TrainState instead of initializing from `seed` (its `step` counts optimizer steps).
    `callbacks` may hold one `EarlyStopping`, which runs compiled inside the epoch loop.

    on_nan: when a batch loss, or the parameters after an update, turn non-finite, that epoch
    is dropped and training stops; "raise" (default) raises `NonFiniteLossError` naming the
    epoch and batch and carrying the last finite `state` and `history`; "stop" warns and returns
    them. checkpoint_dir: save the whole training state (see `jaxseq.checkpointing`) after every
    `checkpoint_every` epochs (default: about 20 saves per run) and when training ends, keeping
    the newest `keep` (None: all). A directory that already holds checkpoints needs
    `resume=True`, which continues from its latest complete checkpoint (or starts fresh if it
    has none), bitwise as if never interrupted; the checkpoint takes precedence over `state`,
    and one already at or past `epochs` (or stopped early) is returned as it is.
    mesh: data-parallel training over a 1-D `jax.sharding.Mesh` (`jaxseq.parallel.make_mesh()`,
    which spans every process under `jax.distributed`): parameters are replicated, each
    mini-batch is sharded along its batch axis, and XLA averages the gradients; `batch_size`
    (capped at the sample count) must be divisible by the mesh size.
    Returns `(state, history)`: a flax `TrainState` (`state.params`) and a `History`.
    """
    contracts.check_positive_int(epochs, "epochs", "fit")
    contracts.check_positive_int(batch_size, "batch_size", "fit")
    if epochs_per_chunk is not None:
        contracts.check_positive_int(epochs_per_chunk, "epochs_per_chunk", "fit")
    contracts.check_choice(on_nan, ("raise", "stop"), "on_nan", "fit")
    _check_checkpoint_args(checkpoint_dir, checkpoint_every, keep, resume)
    loss_fn = get_loss(loss)
    tx = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    check_data(model, x, y)
    n = contracts.shape_of(x)[0]
    w, m = loss_weights(model, x, y, sample_weight, mask)
    if mesh is not None:
        parallel.check_mesh(mesh, "fit")
        if min(batch_size, n) % mesh.size:
            raise ValueError(
                f"fit with a mesh expects batch_size divisible by the mesh size {mesh.size}; got "
                f"{min(batch_size, n)}. Pick a multiple of {mesh.size} (every device gets an "
                "equal share of each mini-batch)."
            )
    val = None
    if validation_data is not None:
        if len(validation_data) != 2:
            raise ValueError("fit expects validation_data=(x_val, y_val); got "
                             f"{len(validation_data)} item(s).")
        xv, yv = validation_data
        check_data(model, xv, yv, name_x="x_val", name_y="y_val")
        val = (jnp.asarray(xv), jnp.asarray(yv), jnp.ones((len(xv),), jnp.float32))
    callbacks = list(callbacks)
    stoppers = [cb for cb in callbacks if isinstance(cb, EarlyStopping)]
    host = [cb for cb in callbacks if not isinstance(cb, EarlyStopping)]
    if len(stoppers) > 1:
        raise ValueError(f"fit takes at most one EarlyStopping; got {len(stoppers)}.")
    rule = stoppers[0].rule if stoppers else None
    if rule is not None and rule.monitor == "val_loss" and val is None:
        raise ValueError("fit: EarlyStopping(monitor='val_loss') needs validation_data; pass it, "
                         "or use monitor='loss'.")

    init_key, keys = split_seed(seed)
    if state is None:
        state = init_state(model, x, tx, init_key)
    chunk_len = epochs_per_chunk or auto_chunk(epochs, verbose, host)
    every = None
    if checkpoint_dir is not None:
        every = checkpoint_every or math.ceil(epochs / 20)
        chunk_len = min(chunk_len, every)  # chunks end at checkpoint epochs
    program, run_chunk = compiled_chunk(dict(
        model=model, tx=tx, loss=loss_fn, batch_size=min(batch_size, n), n_samples=n,
        shuffle=bool(shuffle), epochs_per_chunk=min(chunk_len, epochs), stop_rule=rule,
        mesh=mesh,
    ))
    data = (jnp.asarray(x), jnp.asarray(y), jnp.asarray(w), None if m is None else jnp.asarray(m))
    stop_state = stoppers[0].init_state(state.params) if stoppers else ()
    history = History()
    first = saved = 0
    saver = settings = None
    if checkpoint_dir is not None:
        from jaxseq import checkpointing  # imports orbax only when checkpoints are used

        settings = dict(
            seed=int(seed), batch_size=program.batch_size, n_samples=n, shuffle=bool(shuffle),
            validation=val is not None, loss=loss if isinstance(loss, str) else None,
            early_stopping=stoppers[0].config() if stoppers else None,
        )
        saver = checkpointing.Checkpointer(checkpoint_dir, keep=keep)
    try:
        if saver is not None and (latest := saver.latest()) is not None:
            if not resume:
                raise ValueError(
                    f"fit: {saver.directory!r} already holds checkpoints (the latest after "
                    f"{latest} epochs). Pass resume=True to continue that run, or use an empty "
                    "checkpoint_dir for a new one."
                )
            state, keys, stop_state, history = checkpointing.resume(
                saver, latest, state, keys, stop_state, settings)
            first = saved = latest
        start = first
        # Donation consumes the buffers passed in; keep the caller's state usable.
        params, opt_state = jax.tree.map(jnp.copy, (state.params, state.opt_state))
        finished = rule is not None and bool(stop_state.stopped)
        carry = Carry(params, opt_state, jnp.asarray(not finished), stop_state)
        if mesh is not None:  # parameters, keys and data on every device of the mesh
            carry, keys, data, val = parallel.replicate((carry, keys, data, val), mesh)
        for cb in callbacks:
            cb.on_train_begin(state)
        bar = _progress(epochs, verbose)
        if bar is not None and first:
            bar.update(min(first, epochs))
        failure = None
        while first < epochs and not finished:
            last = epochs if every is None else min(epochs, (first // every + 1) * every)
            carry, out = run_chunk(
                carry, keys, jnp.asarray(first), jnp.asarray(last), data, val
            )
            out = parallel.to_host(out)
            ran = int(np.sum(out["ran"]))
            finite = np.asarray(out["finite"][:ran])
            good = ran if finite.all() else int(np.argmin(finite))
            logs = {k: np.asarray(out[k])[:good] for k in program.log_names(val)}
            history.extend(logs)
            if good:
                _report(bar, verbose, first, epochs, logs)
            stop = False
            for i in range(good):
                for cb in host:
                    cb.on_epoch_end(first + i, {k: float(v[i]) for k, v in logs.items()})
                    stop = stop or cb.stop_training
            if good < ran:
                failure = dict(epoch=first + good, batch=int(out["bad_batch"][good]),
                               batch_loss=float(out["bad_loss"][good]),
                               epoch_loss=float(out["loss"][good]))
            first += good
            early = rule is not None and bool(carry.stop.stopped)
            finished = stop or early or failure is not None
            if saver is not None and first != saved and (
                first % every == 0 or finished or first >= epochs
            ):
                stopped = "non_finite" if failure else "early_stopping" if early else None
                saver.save(first, checkpointing.training_tree(
                    carry.params, carry.opt_state, keys, carry.stop), dict(
                        step=int(state.step) + (first - start) * program.batches,
                        history=checkpointing.history_record(history), stopped=stopped,
                        settings=settings))
                saved = first
        if bar is not None:
            bar.close()
    finally:
        if saver is not None:
            saver.close()
    params = carry.params
    if rule is not None and rule.restore_best_weights and bool(carry.stop.has_weights):
        params = carry.stop.best_params  # Keras 3: also when training ran all its epochs
    state = state.replace(
        params=params, opt_state=carry.opt_state,
        step=state.step + (first - start) * program.batches,
    )
    for es in stoppers:
        es.finish(carry.stop)
    for cb in callbacks:
        cb.on_train_end(state, history)
    if failure is not None:
        message = _non_finite_message(**failure, epochs=epochs, batches=program.batches,
                                      saved=saver.directory if saver is not None else None)
        if on_nan == "raise":
            raise NonFiniteLossError(message, epoch=failure["epoch"], batch=(
                failure["batch"] if failure["batch"] >= 0 else None), state=state,
                history=history)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return state, history


def _check_checkpoint_args(checkpoint_dir, checkpoint_every, keep, resume) -> None:
    if checkpoint_dir is None:
        if checkpoint_every is not None or resume:
            name = "resume=True" if resume else "checkpoint_every"
            raise ValueError(f"fit: {name} needs checkpoint_dir (the directory of the run).")
        return
    if checkpoint_every is not None:
        contracts.check_positive_int(checkpoint_every, "checkpoint_every", "fit")
    if keep is not None:
        contracts.check_positive_int(keep, "keep", "fit")


def _non_finite_message(*, epoch, batch, batch_loss, epoch_loss, epochs, batches, saved) -> str:
    if batch < 0:
        what = f"the epoch's mean loss overflowed to {epoch_loss} (every batch loss was finite)"
    elif math.isfinite(batch_loss):
        what = (f"the parameters became non-finite in the update of batch index {batch} of "
                f"{batches} (its loss, {batch_loss:.6g}, was finite)")
    else:
        what = f"the loss of batch index {batch} of {batches} is {batch_loss}"
    where = f" (checkpointed in {saved!r})" if saved else ""
    return (
        f"fit: non-finite training at epoch index {epoch} (Epoch {epoch + 1}/{epochs}): {what}. "
        f"Training stopped; the state kept is the last finite one, after {epoch} epoch(s)"
        f"{where}. Lower the learning rate, clip gradients (optax.clip_by_global_norm), or "
        "check the loss."
    )


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


def predict(model: nn.Module, params, x, *, batch_size: int | None = None, mask=None) -> Array:
    """Model outputs for x (batch, ...), in inference mode (no dropout), jit-compiled.

    With `batch_size`, x is run in batches of that size (the last one padded, then trimmed),
    so one compiled program serves any number of samples. `mask` (batch, time) goes to the
    model, as in `fit`.
    """
    xs = contracts.shape_of(x)
    if len(xs) < 1 or xs[0] < 1:
        raise ValueError(f"predict expects x with a non-empty batch axis; got {xs}.")
    if mask is not None:
        _, mask = loss_weights(model, x, x, None, mask, where="predict")
    fn = cached("predict", model, build=lambda: jit(
        lambda params, x, m: Program(model, DEFAULT_OPTIMIZER, LOSSES["mse"], 1, 1, False, 1)
        .apply(params, x, train=False, mask=m)))
    if batch_size is None:
        return fn(params, jnp.asarray(x), mask)
    contracts.check_positive_int(batch_size, "batch_size", "predict")
    x = np.asarray(x)
    n = xs[0]
    pad = (-n) % batch_size

    def padded(a):
        return np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a

    xp, mp = padded(x), None if mask is None else padded(mask)
    outs = [fn(params, jnp.asarray(xp[i : i + batch_size]),
               None if mp is None else mp[i : i + batch_size])
            for i in range(0, n + pad, batch_size)]
    return jnp.concatenate(outs)[:n]


def evaluate(model: nn.Module, params, x, y, *, loss: str | Callable = "mse",
             sample_weight=None, mask=None) -> float:
    """The loss of the model on (x, y) in inference mode, weighted as in `fit`: the mean
    per-sample loss, or with `mask` / per-step `sample_weight` the mean over weighted steps."""
    check_data(model, x, y, where="evaluate")
    w, m = loss_weights(model, x, y, sample_weight, mask, where="evaluate")
    loss_fn = get_loss(loss)
    pred = predict(model, params, x, mask=m)
    return float(reduce_loss(loss_fn(pred, jnp.asarray(y)), jnp.asarray(w)))

"""The functional training core: pure train step, eval step, epoch and chunked epoch loop.

Every function here is pure and traceable: jit it, `vmap` it over a replica axis (stacked
states and keys), `scan` it, shard its batch. `fit` and `fit_replicas` do nothing but call
`train_loop` (jitted, and for replicas `vmap`-ed) between host-side hooks.

Shapes (named axes): b = batch, t = time, f = features, n = samples of a data set,
nb = batches per epoch.

- `train_step(state, batch, key, valid=None, *, loss, metrics)` -> (state, terms): one
  optimizer step on one `Batch`; dropout uses `fold_in(key, state.step)`. `terms` (see
  `losses.batch_terms`) holds the batch loss (Keras reduction), the real sample count, metric
  sums, and `finite` (loss and updated parameters finite).
- `eval_step(state, batch, valid=None, *, loss, metrics)` -> terms, in inference mode.
- `train_epoch(state, data, key, *, batch_size, shuffle, loss, metrics)` -> (state, logs): a
  `lax.scan` of `train_step` over the epoch's mini-batches (shuffled with
  `fold_in(shuffle_key, state.step)`; the last one smaller, as Keras: a scan over the full
  batches, then one step on the rest). logs: {"loss", metrics, "bad_batch", "bad_loss"}.
- `evaluate_batches(state, data, *, batch_size, loss, metrics)` -> {"loss", metrics}: Keras'
  `evaluate` over in-order mini-batches.
- `train_loop(carry, key, first, last, data, val, *, ...)` -> (carry, logs (buffer,)): the
  epochs from `first` below `last` (runtime values; a `lax.while_loop`), with early stopping
  and the non-finite check compiled in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxseq import contracts
from jaxseq.training import callbacks, losses
from jaxseq.training.callbacks import tree_where
from jaxseq.training.data import Batch
from jaxseq.training.state import TrainState
from jaxseq.training.state import reset_states as zero_states
from jaxseq.typing import Array


def takes_extra_args(tx) -> bool:
    """Whether `tx.update` takes optax's extra arguments (`value=` the loss, for e.g.
    `optax.contrib.reduce_on_plateau`): a `GradientTransformationExtraArgs`, or any
    transformation whose update accepts `**extra_args` or `value` (optax's wrappers that
    forward them, such as `optax.MultiSteps(...).gradient_transformation()`)."""
    if isinstance(tx, optax.GradientTransformationExtraArgs):
        return True
    try:
        parameters = inspect.signature(tx.update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or p.name == "value" for p in parameters)


def all_finite(tree) -> Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves])) if leaves else (
        jnp.ones((), bool))


def samples(x) -> int:
    """The samples (axis 0) of the inputs x: one array, or a tuple/dict of them."""
    return jax.tree.leaves(x)[0].shape[0]


def _valid(batch: Batch, valid) -> Array:
    n = samples(batch.x)
    return jnp.ones((n,), jnp.float32) if valid is None else valid


def _resolve(loss, metrics) -> tuple[Callable, tuple[losses.Metric, ...]]:
    metrics = metrics if all(isinstance(m, losses.Metric) for m in metrics) else (
        losses.get_metrics(metrics))
    return losses.get_loss(loss), tuple(metrics)


def train_step(state: TrainState, batch: Batch, key, valid=None, *, loss="mse",
               metrics: Sequence = ()) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step on one mini-batch.

    state: a `TrainState` (from `create_train_state`). batch: `Batch(x (b, ...), y (b, ...),
    sample_weight (b,) or (b, t), mask (b, t) or None, starts (b,) or None)`; with `starts`, the
    rows it flags of the stateful layers' kept states are zeroed before the step. key: PRNG key;
    dropout uses `fold_in(key, state.step)`. valid: (b,) 1.0 for real samples, 0.0 for padding
    rows (default: all real). loss: "mse", "mae" or `(y_true, y_pred) -> values`; metrics: names
    or callables (see `losses`). Returns (new state, terms): terms["loss"] is the batch loss,
    "size" the real samples, "<metric>/total" and "/count" the metric sums, "finite" whether the
    loss and the updated parameters are finite.
    """
    loss_fn, metrics = _resolve(loss, metrics)
    batch = _as_batch(batch)
    valid = _valid(batch, valid)
    dropout_key = jax.random.fold_in(key, state.step)
    if batch.starts is not None:  # rows whose window starts a new stream begin from zeros
        state = zero_states(state, rows=batch.starts)

    def objective(params):
        pred, model_state, mask = state.apply_fn.forward_masked(
            {"params": params, **state.model_state}, batch.x, mask=batch.mask, train=True,
            key=dropout_key)
        terms = losses.batch_terms(loss_fn, metrics, batch.y, pred, batch.sample_weight, mask,
                                   valid)
        return terms["loss"], (terms, model_state)

    grads, (terms, model_state) = jax.grad(objective, has_aux=True)(state.params)
    extra = {"value": terms["loss"]} if takes_extra_args(state.tx) else {}
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **extra)
    state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, model_state=model_state)
    terms["finite"] = jnp.isfinite(terms["loss"]) & all_finite(state.params)
    return state, terms


def eval_step(state: TrainState, batch: Batch, valid=None, *, loss="mse",
              metrics: Sequence = ()) -> dict[str, Array]:
    """The terms of one mini-batch in inference mode (no dropout, nothing mutated); arguments
    and terms as in `train_step` (without "finite")."""
    loss_fn, metrics = _resolve(loss, metrics)
    batch = _as_batch(batch)
    valid = _valid(batch, valid)
    pred, _, mask = state.apply_fn.forward_masked(state.variables, batch.x, mask=batch.mask)
    return losses.batch_terms(loss_fn, metrics, batch.y, pred, batch.sample_weight, mask, valid)


def batch_indices(n: int, batch_size: int, order=None) -> tuple[Array | None, Array | None]:
    """(full (nb, b) or None, rest (n % b,) or None): `order` (n,) (default 0..n-1) cut into
    full mini-batches of `batch_size` and the last, smaller one (Keras: the last batch simply
    has fewer samples; nothing is padded, so no stand-in rows reach batch statistics)."""
    order = jnp.arange(n) if order is None else order
    nf = n // batch_size
    full = order[: nf * batch_size].reshape(nf, batch_size) if nf else None
    rest = order[nf * batch_size:] if n % batch_size else None
    return full, rest


def _as_batch(data) -> Batch:
    """A Batch of jax arrays (a tuple (x, y[, sample_weight[, mask]]) is accepted; no weights
    means ones), so NumPy data can be indexed with traced indices."""
    if not isinstance(data, Batch):
        data = Batch(*data) if len(data) > 2 else Batch(*data, None)
    x, y, w, m, starts = data
    if contracts.is_several(x):  # several inputs (a list is a tuple); else one array-like
        x = jax.tree.map(jnp.asarray, tuple(x) if isinstance(x, list) else x)
    else:
        x = jnp.asarray(x)
    y = jnp.asarray(y)
    w = jnp.ones((samples(x),), jnp.float32) if w is None else jnp.asarray(w)
    return Batch(x, y, w, None if m is None else jnp.asarray(m),
                 None if starts is None else jnp.asarray(starts))


def _over_batches(step, carry, data: Batch, full, rest):
    """`step(carry, batch) -> (carry, terms)` over the full batches (a scan) and then the last,
    smaller one -> (carry, terms stacked over all batches in order)."""
    parts = []
    if full is not None:
        carry, terms = jax.lax.scan(lambda c, i: step(c, take(data, i)), carry, full)
        parts.append(terms)
    if rest is not None:
        carry, terms = step(carry, take(data, rest))
        parts.append(jax.tree.map(lambda a: a[None], terms))
    return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def take(data: Batch, idx) -> Batch:
    """The rows `idx` of every array of `data` (inputs x: one array or several)."""
    return Batch(*(None if a is None else jax.tree.map(lambda v: v[idx], a) for a in data))


def train_epoch(state: TrainState, data: Batch, key, *, batch_size: int, shuffle: bool = True,
                loss="mse", metrics: Sequence = (), sharding=None, reset_states: bool = False
                ) -> tuple[TrainState, dict]:
    """One epoch: `train_step` scanned over the mini-batches of `data` (n samples).

    key: the run's training key; `shuffle_key, dropout_key = split(key)`, the epoch's order is
    `permutation(fold_in(shuffle_key, state.step), n)` (unshuffled when `shuffle` is False or
    there is one batch), and each step gets `dropout_key`. batch_size: static, capped at n
    by the caller. sharding: optional `NamedSharding` each mini-batch is constrained to
    (data-parallel). reset_states: zero the states stateful layers keep, before the first batch
    (truncated BPTT with a reset per epoch; without it they carry on, as Keras' fit).
    Returns (state, logs): "loss" (the batch-size-weighted mean of the batch losses, Keras' loss
    tracker), each metric, "bad_batch" (index of the first batch whose loss
    or updated parameters are not finite; -1 if none) and "bad_loss" (that batch's loss).
    """
    shuffle_key, dropout_key = jax.random.split(key)
    return _epoch(state, data, shuffle_key, dropout_key, batch_size=batch_size, shuffle=shuffle,
                  loss=loss, metrics=metrics, sharding=sharding, reset_states=reset_states)


def _epoch(state, data, shuffle_key, dropout_key, *, batch_size, shuffle, loss, metrics,
           sharding, reset_states=False):
    loss_fn, metrics = _resolve(loss, metrics)
    if reset_states:
        state = zero_states(state)
    data = _as_batch(data)
    n = samples(data.x)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"train_epoch expects batch_size to be an int >= 1; got {batch_size!r}.")
    batch_size = min(batch_size, n)
    order = None
    if shuffle and n > batch_size:  # a single full batch is the same batch in any order
        order = jax.random.permutation(jax.random.fold_in(shuffle_key, state.step), n)
    full, rest = batch_indices(n, batch_size, order)

    def step(state, batch):
        if sharding is not None and samples(batch.x) == batch_size:
            batch = jax.lax.with_sharding_constraint(batch, sharding)
        return train_step(state, batch, dropout_key, loss=loss_fn, metrics=metrics)

    state, terms = _over_batches(step, state, data, full, rest)
    logs = losses.epoch_values(terms, metrics)
    bad_any = ~jnp.all(terms["finite"])
    bad = jnp.where(bad_any, jnp.argmin(terms["finite"]), -1).astype(jnp.int32)
    logs["bad_batch"] = bad
    logs["bad_loss"] = terms["loss"][jnp.maximum(bad, 0)].astype(jnp.float32)
    return state, logs


def evaluate_batches(state: TrainState, data: Batch, *, batch_size: int, loss="mse",
                     metrics: Sequence = ()) -> dict[str, Array]:
    """Keras' `evaluate`: `eval_step` over the mini-batches of `data` in order -> {"loss": the
    batch-size-weighted mean of the batch losses, metric: its value over all real entries}."""
    loss_fn, metrics = _resolve(loss, metrics)
    data = _as_batch(data)
    n = samples(data.x)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"evaluate_batches expects batch_size to be an int >= 1; got "
                         f"{batch_size!r}.")
    full, rest = batch_indices(n, min(batch_size, n))

    def step(_, batch):
        return None, eval_step(state, batch, loss=loss_fn, metrics=metrics)

    _, terms = _over_batches(step, None, data, full, rest)
    return losses.epoch_values(terms, metrics)


class LoopState(NamedTuple):
    """What the compiled epoch loop carries from epoch to epoch."""

    state: TrainState
    alive: Array  # bool: no non-finite epoch yet, early stopping has not fired
    stop: callbacks.StopState  # early stopping (disabled without EarlyStopping)


def log_names(metrics: Sequence, validation: bool) -> tuple[str, ...]:
    """The loop's per-epoch log names, in order: loss, metrics, then val_ versions."""
    names = ("loss", *(m.name if isinstance(m, losses.Metric) else m for m in metrics))
    return names + tuple(f"val_{k}" for k in names) if validation else names


EPOCH_BUFFER = 1024  # the most epochs one call of `train_loop` runs (its log buffers' length)


def train_loop(carry: LoopState, key, first, last, data: Batch, val: Batch | None, *,
               batch_size: int, shuffle: bool = True, loss="mse", metrics: Sequence = (),
               val_batch_size: int | None = None, sharding=None, reset_states: bool = False,
               buffer: int = EPOCH_BUFFER, axis_name: str | tuple[str, ...] | None = None,
               ) -> tuple[LoopState, dict[str, Array]]:
    """Epochs first, first + 1, ... while below `last`, below `first + buffer`, and alive.

    first, last: int32 scalars, runtime values: the epoch count and the chunking never
    recompile (a `lax.while_loop`). An epoch calls `train_epoch`, then (with `val`)
    `evaluate_batches`; if its loss or parameters went non-finite it is not committed (the carry
    keeps the previous state) and `alive` turns off, as it does when early stopping fires.
    Returns (carry, logs), each log of shape (buffer,), entry i for epoch first + i: the names
    of `log_names` (NaN where no epoch ran), "ran", "finite", "bad_batch", "bad_loss".

    axis_name: the name (or names) of the `jax.vmap` axes this loop is mapped over (replicas),
    as `jax.lax.psum` takes it. The loop then runs while ANY replica is alive, with one epoch
    counter for all (a `psum` of the alive flags), and a replica that stopped keeps its carry
    and logs as a plain vmap would. Same results; what changes is the program: without it,
    vmap batches the loop's condition, so every epoch selects each replica's whole carry
    (the (buffer,) logs included) and writes the logs with a per-replica scatter; with it the
    select covers the training state only and the logs are written in place (the difference
    shows in `experiments/bench.py --cases replicas`, where an epoch is one step).
    """
    loss_fn, metrics = _resolve(loss, metrics)
    names = log_names(metrics, val is not None)
    val_bs = min(val_batch_size or batch_size, samples(val.x)) if val is not None else None

    shuffle_key, dropout_key = jax.random.split(key)  # as train_epoch splits it, once

    def run(carry: LoopState, epoch):
        state, logs = _epoch(carry.state, data, shuffle_key, dropout_key, batch_size=batch_size,
                             shuffle=shuffle, loss=loss_fn, metrics=metrics, sharding=sharding,
                             reset_states=reset_states)
        finite = (logs["bad_batch"] < 0) & jnp.isfinite(logs["loss"])
        state = tree_where(finite, state, carry.state)
        values = {k: logs[k] for k in names if not k.startswith("val_")}
        if val is not None:
            scores = evaluate_batches(state, val, batch_size=val_bs, loss=loss_fn,
                                      metrics=metrics)
            values.update({f"val_{k}": v for k, v in scores.items()})
        values = {k: jnp.asarray(values[k], jnp.float32) for k in names}
        monitored = jnp.stack([values[k] for k in names])[carry.stop.monitor]
        stop = jax.lax.cond(  # skipped without EarlyStopping
            finite & carry.stop.enabled,
            lambda s: callbacks.update(s, monitored, epoch, (state.params, state.model_state)),
            lambda s: s,
            carry.stop)
        out = {**values, "ran": jnp.ones((), bool), "finite": finite,
               "bad_batch": logs["bad_batch"], "bad_loss": logs["bad_loss"]}
        return LoopState(state, finite & ~stop.stopped, stop), out

    nan = jnp.full((buffer,), jnp.nan, jnp.float32)
    logs = {**{k: nan for k in names}, "ran": jnp.zeros((buffer,), bool),
            "finite": jnp.ones((buffer,), bool), "bad_batch": jnp.full((buffer,), -1, jnp.int32),
            "bad_loss": nan}
    if axis_name is not None:  # mapped: logs per replica from the start (the same values),
        logs = tree_where(carry.alive, logs, logs)  # so vmap batches the loop's body once

    def cond(c):
        carry, epoch, _ = c
        alive = carry.alive if axis_name is None else (  # any replica: one unbatched flag
            jax.lax.psum(carry.alive.astype(jnp.int32), axis_name) > 0)
        return (epoch < last) & (epoch < first + buffer) & alive

    def body(c):
        carry, epoch, logs = c
        new, out = run(carry, epoch)
        i = epoch - first
        if axis_name is not None:  # a replica that stopped runs along: keep what it had
            new = tree_where(carry.alive, new, carry)
            out = tree_where(carry.alive, out, {k: v[i] for k, v in logs.items()})
        logs = {k: v.at[i].set(out[k].astype(v.dtype)) for k, v in logs.items()}
        return new, epoch + 1, logs

    first = jnp.asarray(first, jnp.int32)
    carry, _, logs = jax.lax.while_loop(cond, body, (carry, first, logs))
    return carry, logs


"""Losses and metrics, reduced exactly as Keras 3 reduces them.

Source: keras-team/keras `keras/src/losses/loss.py` (`reduce_weighted_values`, `apply_mask`,
reduction "sum_over_batch_size"), `keras/src/metrics/reduction_metrics.py` (`Mean`) and the
trainer's loss tracker (`keras/src/trainers/trainer.py`: batch losses averaged with the batch
size as weight).

Entries: a loss or metric function gives one value per *entry*: the elementwise error averaged
over the last axis of y (Keras' `mean_squared_error(y_true, y_pred)` = mean over axis -1), so y
(batch, time, features) has (batch, time) entries and y (batch, features) has (batch,) entries.
A callable `(y_true, y_pred) -> values` may return elementwise values (y's shape; averaged over
the last axis) or per-entry values (y's shape without its last axis).

Batch loss, with w the sample weights (per sample (batch,), broadcast over time, or per step
(batch, time)) and m the mask of real entries (the input mask where y has that time axis, and
the real samples of a padded last batch):

    loss = sum(w * m * values) / count,   count = sum(m)   (the real, unmasked entries)

so without a mask and weights it is the mean over entries; with weights it divides by the number
of entries, not by sum(w) (Keras' "sum_over_batch_size"); with a mask by the unmasked entries
(0 when nothing is real, as Keras' `divide_no_nan`). Masked entries are selected away, never
multiplied by zero, so NaN or Inf in y at masked steps cannot reach the loss or its gradient.
Checked against Keras 3 itself in tests/test_keras_reduction.py.

Metrics ("mse", "mae", "rmse", "mape" or a callable) are masked but NOT weighted (Keras'
`metrics=`); their epoch value is the sum over every real entry seen divided by the entries'
count; "rmse" is the square root of the epoch's mean squared error (Keras'
`RootMeanSquaredError`). Two deliberate differences from Keras 3 (JAX backend), both only with a
mask: jaxseq masks "rmse" (Keras' RootMeanSquaredError ignores the mask and averages padded
steps in), and masks training-time metrics (Keras' JAX trainer drops the mask from metrics
during `fit` but applies it in `evaluate`); jaxseq's metrics mean the same in fit and evaluate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp

from jaxseq import contracts
from jaxseq.typing import Array

EPSILON = 1e-7  # keras.config.epsilon(), in "mape"


def _mse(y, p):
    return jnp.square(p - y)


def _mae(y, p):
    return jnp.abs(p - y)


def _mape(y, p):  # keras.losses.mean_absolute_percentage_error, elementwise
    return 100.0 * jnp.abs((y - p) / jnp.maximum(jnp.abs(y), EPSILON))


LOSSES: dict[str, Callable] = {"mse": _mse, "mae": _mae}
METRICS: dict[str, Callable] = {"mse": _mse, "mae": _mae, "rmse": _mse, "mape": _mape}
ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae",  # Keras' long names
           "root_mean_squared_error": "rmse", "mean_absolute_percentage_error": "mape"}


@dataclasses.dataclass(frozen=True)
class Metric:
    """A named per-entry function; `sqrt`: report the square root of the epoch mean (rmse)."""

    name: str
    fn: Callable
    sqrt: bool = False


def get_loss(loss: str | Callable, where: str = "fit") -> Callable:
    """A loss name ("mse", "mae") or a callable `(y_true, y_pred) -> values`."""
    if callable(loss):
        return loss
    loss = ALIASES.get(loss, loss) if isinstance(loss, str) else loss
    contracts.check_choice(loss, tuple(LOSSES), "loss", where)
    return LOSSES[loss]


def get_metrics(metrics: Sequence, where: str = "fit") -> tuple[Metric, ...]:
    """`metrics=` (names of `METRICS` or callables) -> Metrics with unique names."""
    if metrics is None:
        return ()
    if isinstance(metrics, str) or callable(metrics):
        raise TypeError(f"{where} expects metrics as a list, e.g. metrics=[{metrics!r}]; got a "
                        f"single {type(metrics).__name__}.")
    out = []
    for m in metrics:
        if isinstance(m, str):
            m = ALIASES.get(m, m)
            contracts.check_choice(m, tuple(METRICS), "metrics entry", where)
            out.append(Metric(m, METRICS[m], sqrt=m == "rmse"))
        elif callable(m):
            out.append(Metric(getattr(m, "__name__", "metric"), m))
        else:
            raise TypeError(f"{where} expects each metric to be a name {tuple(METRICS)} or a "
                            f"callable (y_true, y_pred) -> values; got {m!r}.")
    names = [m.name for m in out]
    if len(set(names)) != len(names) or {"loss"} & set(names):
        raise ValueError(f"{where} expects metrics with distinct names other than 'loss'; got "
                         f"{names}. Name callables distinctly (their __name__ is used).")
    return tuple(out)


def entry_values(fn: Callable, y: Array, pred: Array) -> Array:
    """fn(y, pred) per entry: (batch, ...) = y's shape without its last axis (y of rank 1:
    one entry per sample)."""
    values = fn(y, pred)
    if y.ndim == 1:
        want = y.shape
    else:
        want = y.shape[:-1]
        if values.shape == y.shape:
            values = values.mean(axis=-1)
    if values.shape != want:
        raise ValueError(f"A loss or metric must return values shaped like y {y.shape} "
                         f"(elementwise) or {want} (per entry); got {values.shape}.")
    return values


def entry_mask(mask, valid: Array, shape: tuple[int, ...]) -> Array:
    """Which entries (shape (batch, ...)) are real: the sample is real (`valid` (batch,)) and,
    if the entries have the mask's (batch, time) axes, the step is unmasked."""
    real = valid.astype(bool).reshape(valid.shape + (1,) * (len(shape) - 1))
    if mask is not None and len(shape) >= 2 and tuple(shape[:2]) == tuple(mask.shape):
        real = real & mask.reshape(mask.shape + (1,) * (len(shape) - 2))
    return jnp.broadcast_to(real, shape)


def broadcast_weights(w: Array, shape: tuple[int, ...]) -> Array:
    """Weights (batch,) or (batch, time) broadcast to entries of `shape`."""
    return jnp.broadcast_to(w.reshape(w.shape + (1,) * (len(shape) - w.ndim)), shape)


def safe_targets(y: Array, mask, valid: Array) -> Array:
    """y with zeros where its entries are not real, so NaN padding never enters the arithmetic
    (a select: the gradient at those entries is exactly zero)."""
    real = entry_mask(mask, valid, y.shape[:-1] if y.ndim > 1 else y.shape)
    if y.ndim > 1:
        real = real[..., None]
    return jnp.where(real, y, jnp.zeros_like(y))


def batch_terms(loss_fn: Callable, metrics: Sequence[Metric], y, pred, sample_weight, mask,
                valid) -> dict[str, Array]:
    """One batch's loss and metric sums.

    y, pred: (batch, ...); sample_weight: (batch,) or (batch, time); mask: (batch, time) bool or
    None; valid: (batch,) 1 for real samples, 0 for the padding of a last batch.
    Returns {"loss": batch loss, "size": real samples, "<metric>/total", "<metric>/count"}.
    """
    y = safe_targets(y, mask, valid)
    values = entry_values(loss_fn, y, pred)
    real = entry_mask(mask, valid, values.shape)
    count = jnp.sum(real.astype(values.dtype))
    w = broadcast_weights(sample_weight.astype(values.dtype), values.shape)
    total = jnp.sum(jnp.where(real, w * values, jnp.zeros_like(values)))
    out = {"loss": jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0),
           "size": jnp.sum(valid.astype(jnp.float32))}
    for m in metrics:
        v = entry_values(m.fn, y, pred).astype(jnp.float32)
        r = entry_mask(mask, valid, v.shape)
        out[f"{m.name}/total"] = jnp.sum(jnp.where(r, v, jnp.zeros_like(v)))
        out[f"{m.name}/count"] = jnp.sum(r.astype(jnp.float32))
    return out


def epoch_values(terms: dict[str, Array], metrics: Sequence[Metric], axis: int = 0) -> dict:
    """Batch terms stacked on `axis` -> the epoch's {"loss", metric names}: the loss is the
    batch-size-weighted mean of the batch losses (Keras' loss tracker), a metric the sum of its
    entries over their count (its square root for rmse)."""
    size = terms["size"]
    out = {"loss": jnp.sum(terms["loss"].astype(jnp.float32) * size, axis)
           / jnp.maximum(jnp.sum(size, axis), 1.0)}
    for m in metrics:
        value = (jnp.sum(terms[f"{m.name}/total"], axis)
                 / jnp.maximum(jnp.sum(terms[f"{m.name}/count"], axis), 1.0))
        out[m.name] = jnp.sqrt(value) if m.sqrt else value
    return out

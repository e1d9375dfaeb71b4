"""Optimizers by Keras name with Keras 3's exact update rules and defaults, as optax
transformations: `fit(optimizer="adam")` trains as `keras.optimizers.Adam()` does.

Why not `optax.adam`: Keras adds epsilon to sqrt(v) AFTER folding the bias corrections into the
step size (`keras/src/optimizers/adam.py`: alpha = lr * sqrt(1 - b2^t) / (1 - b1^t),
p -= m * alpha / (sqrt(v) + eps)), optax adds it to the bias-corrected sqrt(v_hat); the two
differ by eps * sqrt(1 - b2^t), which matters early in training and for small gradients. Keras'
epsilon is also 1e-7 (optax: 1e-8). Sources: `keras/src/optimizers/{adam,adamw,sgd,rmsprop}.py`
and `base_optimizer.py` (`_apply_weight_decay`: p -= p * wd * lr before the step).

Gradient clipping takes Keras' base-optimizer arguments on every name: `clipnorm` (each
variable's gradient scaled to L2 norm <= clipnorm), `global_clipnorm` (all gradients scaled
together to global L2 norm <= global_clipnorm), `clipvalue` (each element clipped to
[-clipvalue, clipvalue]). As in `BaseOptimizer._backend_apply_gradients`, the gradients are
clipped first; weight decay (which reads the parameters, not the gradients) and the update step
follow. The formulas are `_clip_by_norm` and `clip_by_global_norm` of `base_optimizer.py`.

`keras_optimizer(name, **hyperparameters)` is cached by (name, hyperparameters): the same
object for the same settings, so a second `fit(optimizer="adam")` compiles nothing.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxseq import contracts


class KerasState(NamedTuple):
    """count: int32 steps taken; slots: per-parameter trees (Keras' momentums, velocities, ...)."""

    count: Any
    slots: tuple


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None):
    """`keras.optimizers.Adam` (and AdamW with `weight_decay`), update for update."""

    def init(params):
        return KerasState(jnp.zeros((), jnp.int32), (_zeros(params), _zeros(params)))

    def update(grads, state, params=None):
        t = (state.count + 1).astype(jnp.float32)
        alpha = learning_rate * jnp.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        m = jax.tree.map(lambda m, g: m + (g - m) * (1 - beta_1), state.slots[0], grads)
        v = jax.tree.map(lambda v, g: v + (jnp.square(g) - v) * (1 - beta_2), state.slots[1],
                         grads)
        step = jax.tree.map(lambda m, v: -(m * alpha.astype(m.dtype)) / (jnp.sqrt(v) + epsilon),
                            m, v)
        if weight_decay:  # Keras: p = p - p * wd * lr, then the Adam step; as a delta from p
            # (exact: new and old values are close, so new - p has no rounding, Sterbenz)
            step = jax.tree.map(lambda s, p: ((p - p * weight_decay * learning_rate) + s) - p,
                                step, params)
        return step, KerasState(state.count + 1, (m, v))

    return optax.GradientTransformation(init, update)


def sgd(learning_rate=0.01, momentum=0.0, nesterov=False):
    """`keras.optimizers.SGD`: p -= lr g, or with momentum m = momentum m - lr g, p += m
    (nesterov: p += momentum m - lr g)."""

    def init(params):
        return KerasState(jnp.zeros((), jnp.int32), (_zeros(params),) if momentum else ())

    def update(grads, state, params=None):
        if not momentum:
            return jax.tree.map(lambda g: -(g * learning_rate), grads), KerasState(
                state.count + 1, ())
        m = jax.tree.map(lambda m, g: m * momentum - g * learning_rate, state.slots[0], grads)
        step = m if not nesterov else jax.tree.map(
            lambda m, g: m * momentum - g * learning_rate, m, grads)
        return step, KerasState(state.count + 1, (m,))

    return optax.GradientTransformation(init, update)


def rmsprop(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
    """`keras.optimizers.RMSprop`: v = rho v + (1 - rho) g^2, p -= lr g / sqrt(v + eps)
    (centered: v - mean_g^2 + eps; momentum: m = momentum m + increment, p -= m)."""

    def init(params):
        slots = (_zeros(params),) + ((_zeros(params),) if centered else ()) + (
            (_zeros(params),) if momentum else ())
        return KerasState(jnp.zeros((), jnp.int32), slots)

    def update(grads, state, params=None):
        v = jax.tree.map(lambda v, g: rho * v + (1 - rho) * jnp.square(g), state.slots[0], grads)
        slots = [v]
        if centered:
            a = jax.tree.map(lambda a, g: rho * a + (1 - rho) * g, state.slots[1], grads)
            slots.append(a)
            denom = jax.tree.map(lambda v, a: v - jnp.square(a) + epsilon, v, a)
        else:
            denom = jax.tree.map(lambda v: v + epsilon, v)
        inc = jax.tree.map(lambda g, d: (learning_rate * g) / jnp.sqrt(d), grads, denom)
        if momentum:
            m = jax.tree.map(lambda m, i: momentum * m + i, state.slots[-1], inc)
            slots.append(m)
            inc = m
        return jax.tree.map(jnp.negative, inc), KerasState(state.count + 1, tuple(slots))

    return optax.GradientTransformation(init, update)


def clip_by_norm(clipnorm: float) -> optax.GradientTransformation:
    """Keras' `clipnorm`: every gradient array g becomes g * clipnorm / max(||g||_2, clipnorm)
    (`BaseOptimizer._clip_by_norm`; the norm is over all of g's elements; a zero g stays 0)."""

    def clip(g):
        l2sum = jnp.sum(jnp.square(g), keepdims=True)
        pred = l2sum > 0
        l2norm = jnp.where(pred, jnp.sqrt(jnp.where(pred, l2sum, jnp.ones_like(l2sum))), l2sum)
        return (g * clipnorm) / jnp.maximum(l2norm, clipnorm)

    def update(grads, state, params=None):
        return jax.tree.map(clip, grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def clip_by_global_norm(global_clipnorm: float) -> optax.GradientTransformation:
    """Keras' `global_clipnorm`: all gradients scaled by clipnorm * min(1 / n, 1 / clipnorm),
    n = sqrt(sum of every squared element) (`base_optimizer.clip_by_global_norm`; a non-finite
    n makes every gradient NaN, as in Keras)."""

    def update(grads, state, params=None):
        leaves = jax.tree.leaves(grads)
        norm = jnp.sqrt(jnp.sum(jnp.stack([jnp.sum(jnp.square(g)) for g in leaves])))
        scale = global_clipnorm * jnp.minimum(1.0 / norm, 1.0 / global_clipnorm) + (norm - norm)
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def clip_by_value(clipvalue: float) -> optax.GradientTransformation:
    """Keras' `clipvalue`: every gradient element clipped to [-clipvalue, clipvalue]."""

    def update(grads, state, params=None):
        return jax.tree.map(lambda g: jnp.clip(g, -clipvalue, clipvalue), grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


CLIPPING = {"clipnorm": clip_by_norm, "global_clipnorm": clip_by_global_norm,
            "clipvalue": clip_by_value}


KERAS_OPTIMIZERS = {
    "adam": adam,
    "adamw": functools.partial(adam, weight_decay=0.004),  # Keras' AdamW default decay
    "sgd": sgd,
    "rmsprop": rmsprop,
}


def _check_clipping(clip: dict) -> None:
    for key, value in clip.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"keras_optimizer expects {key} to be a positive number or None; "
                            f"got {type(value).__name__}.")
        if not (math.isfinite(float(value)) and float(value) > 0):
            raise ValueError(f"keras_optimizer expects {key} to be a finite number > 0 or None "
                             f"(Keras ignores values <= 0 without a word); got {value!r}.")
    if len(clip) > 1:
        raise ValueError("keras_optimizer takes only one of `clipnorm`, `clipvalue` and "
                         "`global_clipnorm` (Keras' rule); got "
                         + ", ".join(f"{k}={v!r}" for k, v in sorted(clip.items())) + ".")


@functools.cache
def _cached(name: str, hyper: tuple) -> optax.GradientTransformation:
    hyper = dict(hyper)
    clip = {k: hyper.pop(k) for k in CLIPPING if k in hyper}
    tx = KERAS_OPTIMIZERS[name](**hyper)
    for key, value in clip.items():  # at most one (checked)
        tx = optax.chain(CLIPPING[key](float(value)), tx)
    return tx


def keras_optimizer(name: str, **hyperparameters) -> optax.GradientTransformation:
    """The Keras 3 optimizer `name` as an optax transformation, update for update.

    Args:
      name: "adam", "adamw", "sgd" or "rmsprop" (`keras.optimizers.Adam`, `AdamW`, `SGD`,
        `RMSprop`); case-insensitive.
      **hyperparameters: Keras' argument names, Keras' defaults where left out:
        adam: learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None;
        adamw: the same with weight_decay=0.004; sgd: learning_rate=0.01, momentum=0.0,
        nesterov=False; rmsprop: learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
        centered=False. Every name also takes Keras' clipping arguments (at most one):
        clipnorm (per gradient array), global_clipnorm (over all of them), clipvalue
        (per element), each a number > 0 or None; clipping acts on the gradients before
        weight decay and the update, as in `keras/src/optimizers/base_optimizer.py`.

    Returns:
      An `optax.GradientTransformation` whose `update(grads, state, params)` needs `params`
      (weight decay reads them); `fit(optimizer=...)` takes it. The same object for the same
      (name, hyperparameters), so programs compiled for it are reused.

    Raises:
      ValueError: an unknown name; a clipping value <= 0 or not finite; more than one of
        clipnorm, global_clipnorm and clipvalue.
      TypeError: a hyperparameter the optimizer does not take; a clipping value that is not a
        number.

    Example: `js.fit(model, x, y, epochs=5, batch_size=8,
    optimizer=js.training.keras_optimizer("adam", learning_rate=1e-2, clipnorm=1.0))`.
    """
    if isinstance(name, str):
        name = name.lower()
    contracts.check_choice(name, tuple(KERAS_OPTIMIZERS), "optimizer", "keras_optimizer")
    factory = KERAS_OPTIMIZERS[name]
    known = set(inspect.signature(factory).parameters) | set(CLIPPING)
    unknown = sorted(set(hyperparameters) - known)
    if unknown:
        raise TypeError(f"keras_optimizer({name!r}) takes the hyperparameters {sorted(known)}; "
                        f"got {unknown}.")
    clip = {k: v for k, v in hyperparameters.items() if k in CLIPPING and v is not None}
    _check_clipping(clip)
    hyperparameters = {k: v for k, v in hyperparameters.items()
                       if k not in CLIPPING or v is not None}
    return _cached(name, tuple(sorted(hyperparameters.items())))

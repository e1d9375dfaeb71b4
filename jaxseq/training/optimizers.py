"""Optimizers by Keras name with Keras 3's exact update rules and defaults, as optax
transformations: `fit(optimizer="adam")` trains as `keras.optimizers.Adam()` does.

Why not `optax.adam`: Keras adds epsilon to sqrt(v) AFTER folding the bias corrections into the
step size (`keras/src/optimizers/adam.py`: alpha = lr * sqrt(1 - b2^t) / (1 - b1^t),
p -= m * alpha / (sqrt(v) + eps)), optax adds it to the bias-corrected sqrt(v_hat); the two
differ by eps * sqrt(1 - b2^t), which matters early in training and for small gradients. Keras'
epsilon is also 1e-7 (optax: 1e-8). Sources: `keras/src/optimizers/{adam,adamw,sgd,rmsprop}.py`
and `base_optimizer.py` (`_apply_weight_decay`: p -= p * wd * lr before the step).

`keras_optimizer(name, **hyperparameters)` is cached by (name, hyperparameters): the same
object for the same settings, so a second `fit(optimizer="adam")` compiles nothing.
"""

from __future__ import annotations

import functools
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


KERAS_OPTIMIZERS = {
    "adam": adam,
    "adamw": functools.partial(adam, weight_decay=0.004),  # Keras' AdamW default decay
    "sgd": sgd,
    "rmsprop": rmsprop,
}


@functools.cache
def _cached(name: str, hyper: tuple) -> optax.GradientTransformation:
    return KERAS_OPTIMIZERS[name](**dict(hyper))


def keras_optimizer(name: str, **hyperparameters) -> optax.GradientTransformation:
    """The Keras optimizer `name` ("adam", "adamw", "sgd", "rmsprop") with Keras' defaults,
    overridden by `hyperparameters` (Keras' argument names: learning_rate, beta_1, ...). The same
    object for the same (name, hyperparameters), so programs compiled for it are reused."""
    contracts.check_choice(name, tuple(KERAS_OPTIMIZERS), "optimizer", "keras_optimizer")
    return _cached(name, tuple(sorted(hyperparameters.items())))

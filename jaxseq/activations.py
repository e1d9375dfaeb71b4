"""Keras' activations by name, as functions (`keras/src/activations/activations.py`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxseq.typing import Array

__all__ = ["ACTIVATIONS", "get_activation"]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": jax.nn.hard_sigmoid,  # Keras 3: relu6(x + 3) / 6
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "softsign": jax.nn.soft_sign,
    "swish": jax.nn.swish,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
    "softmax": jax.nn.softmax,  # over the last axis, as Keras' default
}


def get_activation(activation: str | Callable[[Array], Array] | None) -> Callable[[Array], Array]:
    """A Keras activation name (or a callable, or None for linear) as a function."""
    if activation is None:
        return ACTIVATIONS["linear"]
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected a callable or one of "
            f"{', '.join(sorted(ACTIVATIONS))}."
        )
    return ACTIVATIONS[activation]

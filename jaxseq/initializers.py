"""Initializer helpers shared by the recurrent cells and ConvLSTM (Keras 3's choices)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxseq.typing import Array, PRNGKey

Initializer = Callable[..., Array]

__all__ = ["Initializer", "forget_bias_init", "in_float32"]


def forget_bias_init(bias_init: Initializer, units: int) -> Initializer:
    """Keras' `unit_forget_bias=True`: ones for the forget gate, `bias_init` elsewhere."""

    def init(key: PRNGKey, shape, dtype=jnp.float32) -> Array:
        k1, k2 = jax.random.split(key)
        return jnp.concatenate(
            [
                bias_init(k1, (units,), dtype),
                jnp.ones((units,), dtype),
                bias_init(k2, (2 * units,), dtype),
            ]
        )

    return init


def in_float32(init: Initializer) -> Initializer:
    """`init` drawn in float32 and cast, for half-precision parameters: LAPACK's QR (the
    orthogonal initializer) has no bfloat16/float16 kernel on CPU."""

    def draw(key, shape, dtype=jnp.float32):
        if jnp.dtype(dtype).itemsize >= 4:
            return init(key, shape, dtype)
        return init(key, shape, jnp.float32).astype(dtype)

    return draw

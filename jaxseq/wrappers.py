"""Keras' `TimeDistributed` and `RepeatVector` for linen.

`TimeDistributed(layer)` applies ONE layer, with ONE set of weights, to every time slice of its
input: `nn.vmap` over axis 1 with the parameters broadcast (`variable_axes={"params": None}`),
parameter init not split (`split_rngs={"params": False}`), and dropout split so each time step
draws its own dropout mask (as Keras, which folds time into the batch). Any linen Module works:
Dense, an MLP, a conv net taking (batch, h, w, c) slices of (batch, time, h, w, c).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax.numpy as jnp

from jaxseq import contracts
from jaxseq.typing import Array


class TimeDistributed(nn.Module):
    """Apply `layer` to every time slice: (batch, time, *rest) -> (batch, time, *out).

    The wrapped layer sees (batch, *rest) slices and keeps one set of parameters (its own
    subtree, `layer`): `TimeDistributed(nn.Dense(1))` after an LSTM(5) has 5 + 1 parameters.
    Keyword arguments of the call (e.g. `deterministic`) are passed to the layer unchanged.
    """

    layer: nn.Module

    @nn.compact
    def __call__(self, x: Array, **kwargs):
        if not isinstance(self.layer, nn.Module):
            raise TypeError(
                f"TimeDistributed expects a flax.linen Module; got {type(self.layer).__name__}."
            )
        shape = contracts.check_rank_at_least(
            x, 3, "TimeDistributed", "(batch, time, ...) with at least 3 axes"
        )
        if shape[1] < 1:
            raise ValueError(
                f"TimeDistributed expects x of shape (batch, time, ...) with time >= 1; got "
                f"{shape}."
            )
        mapped = nn.vmap(
            lambda module, xt: module(xt, **kwargs),
            variable_axes={"params": None},
            split_rngs={"params": False, "dropout": True},
            in_axes=1,
            out_axes=1,
        )
        y = mapped(self.layer, x)
        chex.assert_axis_dimension(y, 0, shape[0])
        chex.assert_axis_dimension(y, 1, shape[1])
        return y


class RepeatVector(nn.Module):
    """Keras' `RepeatVector(n)`: (batch, features) -> (batch, n, features)."""

    n: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        contracts.check_positive_int(self.n, "n", "RepeatVector")
        shape = contracts.shape_of(x)
        if len(shape) != 2:
            raise ValueError(
                f"RepeatVector expects x of shape (batch, features); got {shape}. "
                "Put it after a layer that returns one vector per sample (e.g. an LSTM with "
                "return_sequences=False)."
            )
        y = jnp.broadcast_to(x[:, None, :], (shape[0], self.n, shape[1]))
        chex.assert_shape(y, (shape[0], self.n, shape[1]))
        return y

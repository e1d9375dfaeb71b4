"""Keras-initialised building blocks: `Dense`, `Dropout`, `Masking` (thin linen modules).

`Dense` is flax's Dense with Keras 3's defaults (`keras/src/layers/core/dense.py`):
glorot_uniform kernel, zeros bias, an optional activation by name, the same
`{"kernel", "bias"}` params. So "the same architecture" starts from the same distribution as
Keras, and Keras weights load into it unchanged (`jaxseq.interop` builds this class).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseq import contracts
from jaxseq.cells import Initializer, get_activation
from jaxseq.typing import Array


class Dense(nn.Dense):
    """Keras' `Dense(units, activation=None, use_bias=True)`: x (..., f) -> (..., units).

    `features` is Keras' `units` (also readable as `.units`); kernel (f, units) glorot_uniform,
    bias (units,) zeros; `activation`: None (linear) or a name ("relu", "tanh", "softmax", ...)
    or a callable, applied after the affine map."""

    activation: Any = None
    kernel_init: Initializer = nn.initializers.glorot_uniform()
    bias_init: Initializer = nn.initializers.zeros_init()

    @property
    def units(self) -> int:
        return self.features

    def __call__(self, x: Array) -> Array:
        x = jnp.asarray(x)
        if x.ndim > 2:  # one 2-D product: its gradient is faster on XLA:CPU (`matmul_last`)
            y = nn.Dense.__call__(self, x.reshape(-1, x.shape[-1]))
            y = y.reshape(*x.shape[:-1], y.shape[-1])
        else:
            y = nn.Dense.__call__(self, x)
        return get_activation(self.activation)(y)


class Dropout(nn.Dropout):
    """Keras' `Dropout(rate)`: inverted dropout in training (`deterministic=False`, an rng named
    "dropout"), the identity in inference. A `Sequential` passes `deterministic` to it."""


class Masking(nn.Module):
    """Keras' `Masking(mask_value=0.0)` (source: `keras/src/layers/core/masking.py`).

    x: (batch, time, ..., features), floating, rank >= 3: (b, t, f) sequences, (b, t, t2, f)
    for a `TimeDistributed` recurrent layer, (b, t, rows, cols, channels) video in front of
    `ConvLSTM2D`. As Keras, the mask reduces over the LAST axis only: a position (b, t, ...) is
    masked when ALL its features equal `mask_value` (`mask_value=float("nan")`: all NaN,
    compared with isnan; Keras' `not_equal` never matches NaN); masked positions come out as
    zeros (a select, never a product: NaN times 0 is NaN), the rest unchanged.

    `compute_mask(x, mask=None)` gives that mask, x.shape[:-1] bool, True at real positions,
    which a `Sequential` passes on: (b, t) for sequences, (b, t, t2) per-slice masks for
    `TimeDistributed`, (b, t, rows, cols) for video, which `ConvLSTM1D/2D` reduce to the
    (b, t) step mask: a frame is masked when all its values equal `mask_value`. An incoming
    `mask` (b, t) or x.shape[:-1] is ANDed in (Keras ignores it).

    Raises: ValueError for x of rank < 3; TypeError for a non-floating x.
    """

    mask_value: float = 0.0

    def compute_mask(self, x: Array, mask=None) -> Array:
        """x.shape[:-1] bool, True at real positions; ANDed with an incoming `mask`."""
        x = jnp.asarray(x)
        if self.mask_value != self.mask_value:  # NaN (a Python float: decided while tracing)
            same = jnp.isnan(x)
        else:
            same = x == jnp.asarray(self.mask_value, x.dtype)
        real = ~jnp.all(same, axis=-1)
        if mask is None:
            return real
        mask = jnp.asarray(mask).astype(bool)
        return real & mask.reshape(mask.shape + (1,) * (real.ndim - mask.ndim))

    @nn.compact
    def __call__(self, x: Array, *, mask=None) -> Array:
        if len(contracts.shape_of(x)) <= 3:
            contracts.check_sequence_input(x, "Masking")
        else:  # (batch, time, ..., features)
            contracts.check_floating(x, "Masking")
        real = self.compute_mask(x, mask)
        return jnp.where(real[..., None], x, jnp.zeros_like(x))

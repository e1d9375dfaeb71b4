"""Keras-initialised building blocks: `Dense`, `Dropout`, `Masking` (thin linen modules).

`Dense` is flax's Dense with Keras 3's defaults (`keras/src/layers/core/dense.py`):
glorot_uniform kernel, zeros bias, an optional activation by name, the same
`{"kernel", "bias"}` params. So "the same architecture" starts from the same distribution as
Keras, and Keras weights load into it unchanged (`jaxseq.interop` builds this class).
"""

from __future__ import annotations

from typing import Any, no_type_check

import flax.linen as nn
import jax.numpy as jnp

from jaxseq import contracts
from jaxseq.cells import Initializer, get_activation
from jaxseq.typing import Array, ArrayLike, Mask


@no_type_check  # flax's Protocol-typed `promote_dtype` field cannot be checked at run time
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

    def __call__(self, x: ArrayLike) -> Array:
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
    """Keras' `Masking(mask_value=0.0)`: x (batch, time, features) -> the same, with the steps
    whose features ALL equal `mask_value` masked (`mask_value=float("nan")`: steps whose
    features are all NaN, compared with isnan). Masked steps come out as zeros (a select, never
    a product: NaN times 0 is NaN). `compute_mask` gives the (batch, time) mask a `Sequential`
    passes on to the following layers and to the loss (source: `keras/src/layers/core/masking.py`).
    """

    mask_value: float = 0.0

    def compute_mask(self, x: ArrayLike, mask: Mask | None = None) -> Array:
        """(batch, time) bool, True at real steps; ANDed with an incoming `mask`."""
        x = jnp.asarray(x)
        if self.mask_value != self.mask_value:  # NaN (a Python float: decided while tracing)
            same = jnp.isnan(x)
        else:
            same = x == jnp.asarray(self.mask_value, x.dtype)
        real = ~jnp.all(same, axis=-1)
        return real if mask is None else real & jnp.asarray(mask).astype(bool)

    @nn.compact
    def __call__(self, x: ArrayLike, *, mask: Mask | None = None) -> Array:
        contracts.check_sequence_input(x, "Masking")
        real = self.compute_mask(x, mask)
        return jnp.where(real[..., None], x, jnp.zeros_like(x))

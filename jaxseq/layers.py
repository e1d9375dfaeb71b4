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
import numpy as np

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

    def __post_init__(self):
        if isinstance(self.features, bool) or not isinstance(self.features, (int, np.integer)):
            raise TypeError(f"Dense expects units (features) to be a positive int; got "
                            f"{self.features!r}.")
        if self.features < 1:
            raise ValueError(f"Dense expects units (features) >= 1; got {self.features} (Keras "
                             "raises the same: a layer needs at least one unit).")
        super().__post_init__()

    @property
    def units(self) -> int:
        return self.features

    def __call__(self, x: Array) -> Array:
        x = jnp.asarray(contracts.as_array(x, "x", "Dense"))
        if x.ndim < 1:
            raise ValueError("Dense expects x of shape (..., features); got a scalar.")
        if self.has_variable("params", "kernel"):
            fan_in = self.get_variable("params", "kernel").shape[0]
            if x.shape[-1] != fan_in:
                raise ValueError(f"Dense expects x with {fan_in} features (its kernel is "
                                 f"({fan_in}, {self.features})); got x of shape {x.shape}. "
                                 "Pass inputs like those the layer was built for, or build "
                                 "the params anew for these.")
        if x.ndim > 2:  # one 2-D product: its gradient is faster on XLA:CPU (`matmul_last`)
            y = nn.Dense.__call__(self, x.reshape(-1, x.shape[-1]))
            y = y.reshape(*x.shape[:-1], y.shape[-1])
        else:
            y = nn.Dense.__call__(self, x)
        return get_activation(self.activation)(y)


class Dropout(nn.Dropout):
    """Keras' `Dropout(rate)`: inverted dropout in training (`deterministic=False`, an rng named
    "dropout"), the identity in inference. A `Sequential` passes `deterministic` to it.

    rate: the fraction of inputs dropped, a float in [0, 1] (Keras' range,
    `keras/src/layers/regularization/dropout.py`); else ValueError / TypeError at construction.
    """

    def __post_init__(self):
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float, np.floating)):
            raise TypeError(f"Dropout expects rate to be a float in [0, 1]; got {self.rate!r}.")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"Dropout expects rate in [0, 1] (the fraction of inputs "
                             f"dropped); got {self.rate}.")
        super().__post_init__()


class Masking(nn.Module):
    """Keras' `Masking(mask_value=0.0)`: x (batch, time, features) -> the same, with the steps
    whose features ALL equal `mask_value` masked (`mask_value=float("nan")`: steps whose
    features are all NaN, compared with isnan). Masked steps come out as zeros (a select, never
    a product: NaN times 0 is NaN). `compute_mask` gives the (batch, time) mask a `Sequential`
    passes on to the following layers and to the loss (source: `keras/src/layers/core/masking.py`).
    """

    mask_value: float = 0.0

    def compute_mask(self, x: Array, mask=None) -> Array:
        """(batch, time) bool, True at real steps; ANDed with an incoming `mask`."""
        x = jnp.asarray(x)
        if self.mask_value != self.mask_value:  # NaN (a Python float: decided while tracing)
            same = jnp.isnan(x)
        else:
            same = x == jnp.asarray(self.mask_value, x.dtype)
        real = ~jnp.all(same, axis=-1)
        return real if mask is None else real & jnp.asarray(mask).astype(bool)

    @nn.compact
    def __call__(self, x: Array, *, mask=None) -> Array:
        contracts.check_sequence_input(x, "Masking")
        real = self.compute_mask(x, mask)
        return jnp.where(real[..., None], x, jnp.zeros_like(x))

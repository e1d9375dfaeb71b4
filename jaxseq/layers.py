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
import numpy as np

from jaxseq import contracts
from jaxseq.cells import Initializer, get_activation
from jaxseq.registry import register
from jaxseq.typing import Array, ArrayLike, Mask


@register(keras="Dense", torch="Linear")
@no_type_check  # flax's Protocol-typed `promote_dtype` field cannot be checked at run time
class Dense(nn.Dense):
    """Keras 3 `Dense(units, activation=None, use_bias=True)` (`keras/src/layers/core/dense.py`):
    `activation(x @ kernel + bias)` on the last axis, x (..., features) -> (..., units).

    flax's `nn.Dense` with Keras' initializers and an activation; parameters `kernel`
    (features, units) and `bias` (units,), so Keras weights load unchanged.

    Attributes:
      features: int >= 1, Keras' `units`: the output width (also readable as `.units`).
      activation: None (default: linear), a Keras name ("relu", "tanh", "sigmoid", "softmax"
        (over the last axis), "linear", "elu", "gelu", "hard_sigmoid", "softsign", "swish",
        "silu") or a callable, applied after the affine map.
      use_bias: bool, whether to add `bias`. Default True.
      kernel_init: initializer of `kernel`. Default `glorot_uniform` (Keras').
      bias_init: initializer of `bias`. Default zeros.
      dtype: computation dtype; None (default) promotes x's and the parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.
      precision: `jax.lax.Precision` of the product (flax's field). Default None.
      dot_general, dot_general_cls, promote_dtype: flax's hooks for the product; leave them.

    Call arguments:
      `layer.apply(variables, x)`: x (..., features), any number of leading axes (a
      (batch, time, features) input is one 2-D product over batch * time rows).

    Returns:
      output (jax.Array): (..., units), in `dtype` or the promotion of x's and the
        parameters' dtypes.

    Raises:
      ValueError: units < 1 (at construction, as Keras); an unknown activation name; x with
        another feature count than the kernel was built for (naming both).
      TypeError: units not an int (at construction).
    """

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

    def __call__(self, x: ArrayLike) -> Array:
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


@register
class Dropout(nn.Dropout):
    """Keras 3 `Dropout(rate)` (`keras/src/layers/regularization/dropout.py`): inverted
    dropout. In training each entry is zeroed with probability `rate` and the kept ones are
    scaled by 1 / (1 - rate); in inference it is the identity. flax's `nn.Dropout`; a
    `Sequential` (and so `fit`) passes `deterministic` to it.

    Attributes:
      rate: float in [0, 1], the fraction of entries dropped (1 gives zeros).
      broadcast_dims: axes along which one mask is shared (Keras' `noise_shape` with 1s
        there); e.g. `(1,)` drops whole features for every time step. Default () (none).
      deterministic: None (default: given at call time), True (identity) or False (drop).
      rng_collection: the rng stream the masks come from. Default "dropout".

    Call arguments:
      `layer.apply(variables, x, deterministic=None, rngs={"dropout": key})`: x of any
      shape; `deterministic` as the field (one of the two must be set); an rng named
      "dropout" when dropping.

    Returns:
      output (jax.Array): x's shape and dtype.

    Raises:
      ValueError: rate outside [0, 1] (at construction, as Keras); `deterministic` given
        neither here nor on the layer (flax).
      TypeError: rate not a number (at construction).
      flax.errors.InvalidRngError: dropping without a "dropout" rng.
    """

    def __post_init__(self):
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float, np.floating)):
            raise TypeError(f"Dropout expects rate to be a float in [0, 1]; got {self.rate!r}.")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"Dropout expects rate in [0, 1] (the fraction of inputs "
                             f"dropped); got {self.rate}.")
        super().__post_init__()


@register
class Masking(nn.Module):
    """Keras 3 `Masking(mask_value=0.0)` (`keras/src/layers/core/masking.py`): mask the
    positions whose features (the LAST axis) ALL equal `mask_value`.

    Masked positions come out as zeros (a select, never a product: NaN times 0 is NaN).
    `compute_mask` gives the mask, x.shape[:-1] bool, that a `Sequential` passes on to the
    following layers and, through `fit` / `evaluate`, to the loss: (batch, time) for sequences,
    (batch, time, time2) per-slice masks for a `TimeDistributed` recurrent layer, (batch, time,
    rows, cols) for video, which `ConvLSTM1D/2D` reduce to the (batch, time) step mask (a frame is
    masked when all its values equal `mask_value`). No parameters.

    Attributes:
      mask_value: float, the padding value. Default 0.0. `float("nan")` masks the positions
        whose features are all NaN (compared with isnan; Keras' `not_equal` never matches NaN).

    Call arguments:
      `layer.apply({}, x, mask=None)`: x (batch, time, ..., features) floating, rank >= 3; an
      optional incoming mask, (batch, time) or x.shape[:-1] bool, is ANDed into this layer's
      (Keras ignores it).

    Returns:
      output (jax.Array): x's shape and dtype, masked positions set to zero.

    Raises:
      ValueError: x of rank < 3 or with an empty axis.
      TypeError: x not floating.
    """

    mask_value: float = 0.0

    def compute_mask(self, x: ArrayLike, mask: Mask | None = None) -> Array:
        """x.shape[:-1] bool, True at real positions (some feature differs from `mask_value`),
        ANDed with an incoming (batch, time) or x.shape[:-1] `mask`."""
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
    def __call__(self, x: ArrayLike, *, mask: Mask | None = None) -> Array:
        if len(contracts.shape_of(x)) <= 3:
            contracts.check_sequence_input(x, "Masking")
        else:  # (batch, time, ..., features)
            contracts.check_floating(x, "Masking")
        real = self.compute_mask(x, mask)
        return jnp.where(real[..., None], x, jnp.zeros_like(x))

"""Layer normalization inside recurrent cells (Ba, Kiros and Hinton, 2016, "Layer
Normalization", arXiv:1607.06450), as TensorFlow Addons' `LayerNormLSTMCell` applies it.

Each normalised quantity v (..., n) has its own gain gamma (n,) and shift beta (n,), stored as
`{name}_gamma` and `{name}_beta` (TF-Addons' sublayer names: `kernel_norm`, `recurrent_norm`,
`state_norm`), and is normalised over its last axis, per sample and per step:

    LN(v) = (v - mean(v)) / sqrt(var(v) + epsilon) * gamma + beta

with the population variance (Keras' `LayerNormalization`). gamma starts at 1, beta at 0, and
epsilon defaults to 1e-3 (TF-Addons' `norm_epsilon`).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxseq.typing import Array

Initializer = Callable[..., Array]

NORM_EPSILON = 1e-3  # TF-Addons LayerNormLSTMCell(norm_epsilon=1e-3)


def layer_norm(v: Array, gamma: Array, beta: Array, epsilon: float) -> Array:
    """v (..., n) normalised over its last axis, then scaled by gamma (n,), shifted by beta (n,).
    Returns an array of v's shape and dtype; half-precision v is normalised in float32 (as
    Keras' LayerNormalization does), so the mean and variance keep their accuracy."""
    dtype = v.dtype
    w = v.astype(jnp.promote_types(dtype, jnp.float32))
    mean = jnp.mean(w, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(w - mean), axis=-1, keepdims=True)
    scale = gamma.reshape((1,) * (v.ndim - 1) + gamma.shape).astype(w.dtype)
    shift = beta.reshape((1,) * (v.ndim - 1) + beta.shape).astype(w.dtype)
    out = (w - mean) * jnp.reciprocal(jnp.sqrt(var + epsilon)) * scale + shift
    return out.astype(dtype)


def norm_specs(sizes: dict[str, int]) -> dict[str, tuple[Initializer, tuple[int, ...]]]:
    """Parameter specs `{name}_gamma` (ones) and `{name}_beta` (zeros), each (n,), for every
    `name: n` of `sizes`, in its order."""
    specs: dict[str, tuple[Initializer, tuple[int, ...]]] = {}
    for name, n in sizes.items():
        specs[f"{name}_gamma"] = (nn.initializers.ones_init(), (n,))
        specs[f"{name}_beta"] = (nn.initializers.zeros_init(), (n,))
    return specs


def check_norm_config(layer_norm_flag, epsilon, where: str) -> None:
    """`layer_norm` a bool and `norm_epsilon` a positive number: TypeError for a wrong type,
    ValueError for epsilon <= 0 (or NaN), each naming `where` and the argument."""
    if not isinstance(layer_norm_flag, (bool, np.bool_)):
        raise TypeError(f"{where} expects layer_norm to be a bool; got "
                        f"{type(layer_norm_flag).__name__} {layer_norm_flag!r}.")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)):
        raise TypeError(f"{where} expects norm_epsilon to be a positive number; got "
                        f"{type(epsilon).__name__} {epsilon!r}.")
    if not epsilon > 0:
        raise ValueError(f"{where} expects norm_epsilon to be a positive number; got "
                         f"{epsilon!r}.")

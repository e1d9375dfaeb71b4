"""The convolutions of `ConvLSTM1D` / `ConvLSTM2D` (channels last): the input convolution,
the recurrent convolution as patches @ kernel, and the per-gate dropout masks."""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.rnn import dropout_mask
from jaxseq.typing import Array

PADDINGS = ("valid", "same")
DIMENSIONS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}
GATES = 4


def standardize_tuple(value, rank: int, name: str, where: str) -> tuple[int, ...]:
    """Keras' `standardize_tuple`: an int, or `rank` ints, each >= 1."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,) * rank
    ok = isinstance(value, (tuple, list)) and len(value) == rank and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        raise ValueError(f"{where} expects {name} to be a positive int or a tuple of {rank} "
                         f"positive ints; got {value!r}.")
    return tuple(int(v) for v in value)


def conv(x: Array, w: Array, strides, padding: str, dilation, groups: int = 1) -> Array:
    """Channels-last convolution: x (n, *S, groups * w.shape[-2]) -> (n, *S', w.shape[-1])."""
    return jax.lax.conv_general_dilated(
        x, w, window_strides=strides, padding=padding.upper(), rhs_dilation=dilation,
        dimension_numbers=DIMENSIONS[x.ndim - 2], feature_group_count=groups)


def per_gate(a: Array, masks: Array | None) -> tuple[Array, int]:
    """(a, 1) without masks; else the GATES masked copies of a stacked on the channel axis,
    and GATES groups for the convolution. masks: (GATES, *a.shape)."""
    if masks is None:
        return a, 1
    return jnp.concatenate([a * masks[g] for g in range(GATES)], axis=-1), GATES


def patches(h: Array, kernel_size: tuple[int, ...]) -> Array:
    """h (..., *S, f) -> (..., *S, prod(kernel_size) * f): the "same"-padded (stride 1) window
    of every position, in the kernel's (*kernel_size, f) order, so that
    `patches(h, k) @ w.reshape(-1, w.shape[-1])` is `conv(h, w, 1, "same", 1)`."""
    rank = len(kernel_size)
    lead = h.ndim - rank - 1
    pads = [(0, 0)] * lead + [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size]
    hp = jnp.pad(h, pads + [(0, 0)])
    space = h.shape[lead:-1]
    windows = [hp[(Ellipsis, *(slice(o, o + n) for o, n in zip(offset, space, strict=True)),
                   slice(None))]
               for offset in itertools.product(*(range(k) for k in kernel_size))]
    return jnp.concatenate(windows, axis=-1)


def recurrent_conv(h: Array, rk: Array, masks: Array | None) -> Array:
    """Keras' `recurrent_conv` of h (b, *S', f) with rk (*k, f, 4f): padding "same", strides 1,
    no dilation, as patches @ kernel (on CPU, XLA's convolution weight gradient inside a scan
    is several times slower than this matrix product's). masks (GATES, b, *S', f): gate g sees h *
    masks[g] (recurrent dropout)."""
    f4 = rk.shape[-1]
    k = rk.shape[:-2]
    if masks is None:
        return patches(h, k) @ rk.reshape(-1, f4)
    per_gate = patches(h[None] * masks, k)  # (GATES, b, *S', K f)
    w = rk.reshape(-1, GATES, f4 // GATES)  # (K f, GATES, f): gate g's columns
    z = jnp.einsum("g...k,kgf->...gf", per_gate, w)
    return z.reshape(z.shape[:-2] + (f4,))


def gate_dropout_masks(module: nn.Module, rate: float, shape, dtype) -> Array:
    """GATES inverted-dropout masks (GATES, *shape) from the "dropout" rng, values 0 or
    1 / (1 - rate): one per gate, drawn once per call (Keras' `_create_dropout_mask`)."""
    return dropout_mask(module, rate, (GATES, *shape), dtype)

"""Keras 3 `ConvLSTM1D` and `ConvLSTM2D`: LSTMs whose input and recurrent transforms are
convolutions (Shi et al., 2015), with Keras' semantics and parameter layout.

Sources: keras/src/layers/rnn/conv_lstm.py (`ConvLSTMCell`, `ConvLSTM`), conv_lstm1d.py,
conv_lstm2d.py, and the RNN loop they run in (keras/src/layers/rnn/rnn.py,
keras/src/backend/jax/rnn.py).

Shapes (b = batch, t = time, S = the spatial axes: (rows,) for 1D, (rows, cols) for 2D,
c = input channels, f = filters, S' = S after the input convolution), channels last:
  x                 (b, t, *S, c), floating
  kernel            (*kernel_size, c, 4f)   glorot_uniform
  recurrent_kernel  (*kernel_size, f, 4f)   orthogonal (of the kernel seen as (-1, 4f))
  bias              (4f,)                   zeros; ones for the forget gate (unit_forget_bias)
  states h, c       (b, *S', f)
Gates i, f, c, o in that order along every 4f axis, as the Keras LSTM.

How a layer runs:
1. contracts: x, mask (b, t), initial_state (h, c) each (b, *S', f), before any tracing;
2. the input convolution (`strides`, `padding`, `dilation_rate`) plus bias for every time
   step in ONE `lax.conv_general_dilated` call, time folded into the batch;
3. `lax.scan` over time of the recurrent convolution only. As Keras' `recurrent_conv`, it
   always uses padding "same", strides 1 and no dilation, so the states keep the shape S'.
   It runs as patches @ kernel (the same sums): on CPU, XLA's convolution weight gradient
   inside the scan made a training step ~10x slower (measured: 32 x 9 frames of 16x16x8,
   1.98 s vs 0.17 s per gradient on 2 cores);
4. masking as Keras 3's RNN: a masked step keeps h and c and outputs the previous h (zeros
   with `zero_output_for_mask`, which `Bidirectional` sets when returning sequences).

Dropout (Keras' `DropoutRNNCell` with `dropout_mask_count = 4`): `dropout` draws four inverted-
dropout masks of the step input's shape (b, *S, c), one per gate, once per call, used at every
step; `recurrent_dropout` four of h's shape (b, *S', f), multiplying h where it enters the
recurrent convolution. The four masked input copies run as one grouped convolution (the
(…, c, 4f) kernel is already the layout of four groups of c -> f), the four masked h as one
einsum over gates.

Differences from Keras, by design: channels_last only (no `data_format`), no `stateful`, no
regularizers or constraints. Keras 3.15's JAX scan path cannot apply a (batch, time) mask to
ConvLSTM states (it broadcasts a (b, 1) flag against (b, *S', f)); jaxseq applies the mask per
sample, as Keras' unrolled path (`unroll=True`) and its LSTM do. `unroll` here is only
`lax.scan`'s unroll: it never changes results (Keras' unrolled path outputs zeros, not the
initial h, at leading masked steps).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import contracts
from jaxseq.cells import Initializer, _forget_bias_init, _in_float32, expand_to, get_activation
from jaxseq.typing import Array, Mask

_PADDINGS = ("valid", "same")
_DIMENSIONS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}
GATES = 4


def _tuple(value, rank: int, name: str, where: str) -> tuple[int, ...]:
    """Keras' `standardize_tuple`: an int, or `rank` ints, each >= 1."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,) * rank
    ok = isinstance(value, (tuple, list)) and len(value) == rank and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        raise ValueError(f"{where} expects {name} to be a positive int or a tuple of {rank} "
                         f"positive ints; got {value!r}.")
    return tuple(int(v) for v in value)


def _conv(x: Array, w: Array, strides, padding: str, dilation, groups: int = 1) -> Array:
    """Channels-last convolution: x (n, *S, groups * w.shape[-2]) -> (n, *S', w.shape[-1])."""
    return jax.lax.conv_general_dilated(
        x, w, window_strides=strides, padding=padding.upper(), rhs_dilation=dilation,
        dimension_numbers=_DIMENSIONS[x.ndim - 2], feature_group_count=groups)


def _per_gate(a: Array, masks: Array | None) -> tuple[Array, int]:
    """(a, 1) without masks; else the GATES masked copies of a stacked on the channel axis,
    and GATES groups for the convolution. masks: (GATES, *a.shape)."""
    if masks is None:
        return a, 1
    return jnp.concatenate([a * masks[g] for g in range(GATES)], axis=-1), GATES


def _patches(h: Array, kernel_size: tuple[int, ...]) -> Array:
    """h (..., *S, f) -> (..., *S, prod(kernel_size) * f): the "same"-padded (stride 1) window
    of every position, in the kernel's (*kernel_size, f) order, so that
    `_patches(h, k) @ w.reshape(-1, w.shape[-1])` is `_conv(h, w, 1, "same", 1)`."""
    rank = len(kernel_size)
    lead = h.ndim - rank - 1
    pads = [(0, 0)] * lead + [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size]
    hp = jnp.pad(h, pads + [(0, 0)])
    space = h.shape[lead:-1]
    windows = [hp[(Ellipsis, *(slice(o, o + n) for o, n in zip(offset, space, strict=True)),
                   slice(None))]
               for offset in itertools.product(*(range(k) for k in kernel_size))]
    return jnp.concatenate(windows, axis=-1)


def _recurrent(h: Array, rk: Array, masks: Array | None) -> Array:
    """Keras' `recurrent_conv` of h (b, *S', f) with rk (*k, f, 4f): padding "same", strides 1,
    no dilation, as patches @ kernel (on CPU, XLA's convolution weight gradient inside the
    scan is 8-12x slower than this matrix product's). masks (GATES, b, *S', f): gate g sees h *
    masks[g] (recurrent dropout)."""
    f4 = rk.shape[-1]
    k = rk.shape[:-2]
    if masks is None:
        return _patches(h, k) @ rk.reshape(-1, f4)
    per_gate = _patches(h[None] * masks, k)  # (GATES, b, *S', K f)
    w = rk.reshape(-1, GATES, f4 // GATES)  # (K f, GATES, f): gate g's columns
    z = jnp.einsum("g...k,kgf->...gf", per_gate, w)
    return z.reshape(z.shape[:-2] + (f4,))


def gate_dropout_masks(module: nn.Module, rate: float, shape, dtype) -> Array:
    """GATES inverted-dropout masks (GATES, *shape) from the "dropout" rng, values 0 or
    1 / (1 - rate): one per gate, drawn once per call (Keras' `_create_dropout_mask`)."""
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, (GATES, *shape))
    return jnp.where(keep, 1.0 / (1.0 - rate), 0.0).astype(dtype)


class ConvLSTM(nn.Module):
    """Base of `ConvLSTM1D` and `ConvLSTM2D` (subclasses set `rank` and `spatial_axes`).

    Call: `layer(x, *, mask=None, initial_state=None, deterministic=True)`
      x: (batch, time, *S, channels), floating; S = (rows,) or (rows, cols).
      mask: (batch, time), bool (True = real step), optional; or (batch, time, *S), a mask
        per position (what `js.Masking` computes for video): a step is real when any of its
        positions is, i.e. masked when all its values equal the mask value (`compute_mask`).
      initial_state: `(h, c)`, each (batch, *S', filters).
      deterministic: False enables dropout; then an rng named "dropout" must be given.
    Returns: (batch, time, *S', filters) with `return_sequences` (in processing order, i.e.
      reversed with `go_backwards`, as Keras), else (batch, *S', filters); with
      `return_state`, `(output, h, c)`. S' = S for padding "same" and strides 1.
    Raises: ValueError / TypeError (before tracing) for a bad configuration, x of the wrong
      rank or dtype, a channel count other than the one the params were built for, a
      spatial axis the convolution empties, and mask or initial states of the wrong shape.
    """

    filters: int
    kernel_size: int | tuple[int, ...]
    strides: int | tuple[int, ...] = 1
    padding: str = "valid"
    dilation_rate: int | tuple[int, ...] = 1
    activation: str | Callable = "tanh"
    recurrent_activation: str | Callable = "sigmoid"
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.glorot_uniform()
    recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
    bias_init: Initializer = nn.initializers.zeros_init()
    unit_forget_bias: bool = True
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    zero_output_for_mask: bool = False
    unroll: bool | int = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    rank: ClassVar[int] = 0
    spatial_axes: ClassVar[tuple[str, ...]] = ()
    state_names: ClassVar[tuple[str, ...]] = ("h", "c")

    @nn.nowrap
    def config(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str]:
        """(kernel_size, strides, dilation_rate, padding), checked and standardized."""
        where = type(self).__name__
        contracts.check_positive_int(self.filters, "filters", where)
        kernel = _tuple(self.kernel_size, self.rank, "kernel_size", where)
        strides = _tuple(self.strides, self.rank, "strides", where)
        dilation = _tuple(self.dilation_rate, self.rank, "dilation_rate", where)
        if max(strides) > 1 and max(dilation) > 1:
            raise ValueError(f"{where} expects strides=1 or dilation_rate=1 (as Keras); got "
                             f"strides={strides} and dilation_rate={dilation}.")
        padding = self.padding.lower() if isinstance(self.padding, str) else self.padding
        contracts.check_choice(padding, _PADDINGS, "padding", where)
        for name in ("dropout", "recurrent_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{where} expects {name} in [0, 1); got {rate}.")
        return kernel, strides, dilation, padding

    @nn.nowrap
    def compute_mask(self, x, mask=None):
        """The (batch, time) step mask: `mask` itself, or a (batch, time, *S) position mask
        reduced with any() over S (a step is masked when all its positions are). A `Sequential`
        passes this on, so the loss sees one flag per step."""
        if mask is None or len(contracts.shape_of(mask)) == 2:
            return mask
        where, shape = type(self).__name__, contracts.shape_of(x)
        if contracts.shape_of(mask) != tuple(shape[:-1]):
            raise ValueError(
                f"{where} expects mask of shape (batch, time) = {tuple(shape[:2])} or (batch, "
                f"time, {', '.join(self.spatial_axes)}) = {tuple(shape[:-1])}; got "
                f"{contracts.shape_of(mask)}.")
        contracts.check_mask_dtype(mask, where)
        mask = jnp.asarray(mask).astype(bool)
        return jnp.any(mask, axis=tuple(range(2, mask.ndim)))

    @nn.nowrap
    def state_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(batch, *S', filters) for x of shape (batch, time, *S, channels)."""
        kernel, strides, dilation, padding = self.config()
        out = []
        for n, k, s, d in zip(input_shape[2:-1], kernel, strides, dilation, strict=True):
            span = n if padding == "same" else n - d * (k - 1)
            out.append(max(-(-span // s), 0))
        return (input_shape[0], *out, self.filters)

    @nn.nowrap
    def _check(self, x, mask, initial_state) -> tuple[int, ...]:
        """Every input check, on static shapes; returns the state shape (b, *S', f)."""
        where = type(self).__name__
        shape = contracts.check_spatial_sequence_input(x, self.spatial_axes, where)
        batch, time, channels = shape[0], shape[1], shape[-1]
        if self.has_variable("params", "kernel"):
            built = self.get_variable("params", "kernel").shape[-2]
            if channels != built:
                raise ValueError(
                    f"{where} was built for {built} input channels, but x has {channels} (its "
                    f"last axis). Expected x of shape (batch, time, "
                    f"{', '.join(self.spatial_axes)}, {built}).")
        state = self.state_shape(shape)
        if min(state[1:-1]) < 1:
            kernel, strides, dilation, _ = self.config()
            raise ValueError(
                f"{where} with padding 'valid', kernel_size={kernel}, dilation_rate={dilation}, "
                f"strides={strides} leaves no output on x of shape {shape} (spatial axes "
                f"{', '.join(self.spatial_axes)} = {shape[2:-1]}); use larger inputs or "
                "padding='same'.")
        if mask is not None:
            contracts.check_mask(mask, batch, time, where)
        if initial_state is not None:
            primed = ", ".join(f"{a}'" for a in self.spatial_axes)
            spelled = f"(batch, {primed}, filters)"
            states = list(initial_state) if isinstance(initial_state, (tuple, list)) else [
                initial_state]
            if len(states) != 2:
                raise ValueError(f"{where} expects initial_state (h, c), each of shape "
                                 f"{spelled} = {state}; got {len(states)} array(s).")
            for s, n in zip(states, self.state_names, strict=True):
                if contracts.shape_of(s) != state:
                    raise ValueError(f"{where} expects initial_state {n} of shape {spelled} = "
                                     f"{state}; got {contracts.shape_of(s)}.")
        return state

    @nn.compact
    def __call__(self, x, *, mask: Mask | None = None, initial_state=None,
                 deterministic: bool = True):
        if mask is not None and len(contracts.shape_of(mask)) > 2:
            contracts.check_spatial_sequence_input(x, self.spatial_axes, type(self).__name__)
            mask = self.compute_mask(x, mask)
        state_shape = self._check(x, mask, initial_state)
        kernel_size, strides, dilation, padding = self.config()
        batch, time, *space, channels = contracts.shape_of(x)
        f4 = GATES * self.filters
        bias_init = self.bias_init
        if self.unit_forget_bias:
            bias_init = _forget_bias_init(self.bias_init, self.filters)
        specs = {"kernel": (self.kernel_init, (*kernel_size, channels, f4)),
                 "recurrent_kernel": (self.recurrent_kernel_init, (*kernel_size, self.filters,
                                                                   f4))}
        if self.use_bias:
            specs["bias"] = (bias_init, (f4,))
        params = {n: self.param(n, _in_float32(init), shape, self.param_dtype)
                  for n, (init, shape) in specs.items()}
        dtype = self.dtype or jnp.result_type(x, *params.values())
        params = {n: jnp.asarray(p, dtype) for n, p in params.items()}
        x = jnp.asarray(x, dtype)

        if initial_state is None:
            h0 = c0 = jnp.zeros(state_shape, dtype)
        else:
            h0, c0 = (jnp.asarray(s, dtype) for s in initial_state)
        m = None if mask is None else jnp.asarray(mask).astype(bool)
        if m is not None:  # padding may hold anything (NaN, Inf): select it away first
            x = jnp.where(m.reshape(m.shape + (1,) * (x.ndim - 2)), x, jnp.zeros_like(x))
        xmasks = rmasks = None
        if not deterministic and self.dropout > 0:
            xmasks = gate_dropout_masks(self, self.dropout, (batch, *space, channels), dtype)
        if not deterministic and self.recurrent_dropout > 0:
            rmasks = gate_dropout_masks(self, self.recurrent_dropout, state_shape, dtype)

        # 1. the input convolution of every step at once: time-major, time folded into batch
        xt = jnp.swapaxes(x, 0, 1)  # (t, b, *S, c)
        if xmasks is not None:
            xmasks = xmasks[:, None]  # (4, 1, b, *S, c): the same masks at every step
        xs, groups = _per_gate(xt, xmasks)
        xp = _conv(xs.reshape((time * batch, *space, xs.shape[-1])), params["kernel"], strides,
                   padding, dilation, groups)
        if self.use_bias:
            xp = xp + expand_to(params["bias"], xp.ndim)
        xp = xp.reshape((time, *state_shape[:-1], f4))  # (t, b, *S', 4f)
        chex.assert_shape(xp, (time, *state_shape[:-1], f4))

        # 2. the recurrence: only the recurrent convolution inside the loop
        act = get_activation(self.activation)
        ract = get_activation(self.recurrent_activation)
        rk = params["recurrent_kernel"]
        zero_out, emit = self.zero_output_for_mask, self.return_sequences

        def step(carry, inputs):
            h, c = carry
            xp_t, m_t = inputs
            z = xp_t + _recurrent(h, rk, rmasks)
            zi, zf, zc, zo = jnp.split(z, GATES, axis=-1)
            c_new = ract(zf) * c + ract(zi) * act(zc)
            h_new = ract(zo) * act(c_new)
            y = h_new
            if m_t is not None:
                keep = m_t.reshape((batch,) + (1,) * (h.ndim - 1))
                h_new, c_new = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
                y = jnp.where(keep, h_new, jnp.zeros_like(h_new)) if zero_out else h_new
            return (h_new, c_new), (y if emit else None)

        unroll = time if self.unroll is True else max(int(self.unroll), 1)
        xs_scan = (xp, None if m is None else m.T)
        (h, c), ys = jax.lax.scan(step, (h0, c0), xs_scan, reverse=self.go_backwards,
                                  unroll=unroll)
        if emit:
            ys = jnp.swapaxes(ys, 0, 1)  # (b, t, *S', f)
            output = jnp.flip(ys, axis=1) if self.go_backwards else ys  # processing order
            chex.assert_shape(output, (batch, time, *state_shape[1:]))
        else:
            output = h
            if zero_out and m is not None:
                last = m[:, 0] if self.go_backwards else m[:, -1]
                output = jnp.where(last.reshape((batch,) + (1,) * (h.ndim - 1)), output,
                                   jnp.zeros_like(output))
        return (output, h, c) if self.return_state else output


class ConvLSTM1D(ConvLSTM):
    """Keras 3 `ConvLSTM1D` (keras/src/layers/rnn/conv_lstm1d.py): x (batch, time, rows,
    channels) -> (batch, [time,] rows', filters). kernel (k, channels, 4 filters),
    recurrent_kernel (k, filters, 4 filters), bias (4 filters,). See `ConvLSTM` for the call."""

    rank: ClassVar[int] = 1
    spatial_axes: ClassVar[tuple[str, ...]] = ("rows",)


class ConvLSTM2D(ConvLSTM):
    """Keras 3 `ConvLSTM2D` (keras/src/layers/rnn/conv_lstm2d.py): x (batch, time, rows, cols,
    channels) -> (batch, [time,] rows', cols', filters). kernel (kr, kc, channels, 4 filters),
    recurrent_kernel (kr, kc, filters, 4 filters), bias (4 filters,). See `ConvLSTM`."""

    rank: ClassVar[int] = 2
    spatial_axes: ClassVar[tuple[str, ...]] = ("rows", "cols")

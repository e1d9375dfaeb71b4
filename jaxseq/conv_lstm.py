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

How a layer runs: `jaxseq.RNN` owns the checks, masks (Keras 3's: a masked step keeps h and c
and outputs the previous h, or zeros with `zero_output_for_mask`), states, direction and return
flags; the recurrence here is
1. the input convolution (`strides`, `padding`, `dilation_rate`) plus bias for every time
   step in ONE `lax.conv_general_dilated` call, time folded into the batch;
2. `lax.scan` over time of the recurrent convolution only. As Keras' `recurrent_conv`, it
   always uses padding "same", strides 1 and no dilation, so the states keep the shape S'.
   It runs as patches @ kernel (the same sums; `jaxseq.conv_ops`): on CPU, XLA's convolution
   weight gradient inside the scan makes a training step about 10x slower.

Dropout (Keras' `DropoutRNNCell` with `dropout_mask_count = 4`): `dropout` draws four inverted-
dropout masks of the step input's shape (b, *S, c), one per gate, once per call, used at every
step; `recurrent_dropout` four of h's shape (b, *S', f), multiplying h where it enters the
recurrent convolution. The four masked inputs run as one grouped convolution (the (…, c, 4f)
kernel is four groups of c -> f), the four masked h as one einsum over gates.

Differences from Keras, by design: channels_last only (no `data_format`), no regularizers or
constraints. Keras 3.15's JAX scan path cannot apply a (batch, time) mask to
ConvLSTM states (it broadcasts a (b, 1) flag against (b, *S', f)); jaxseq applies the mask per
sample, as Keras' unrolled path and its LSTM do. `unroll` is only `lax.scan`'s unroll: it never
changes results (Keras' unrolled path outputs zeros, not h0, at leading masked steps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import contracts
from jaxseq.activations import get_activation
from jaxseq.cells import with_leading_axes
from jaxseq.conv_ops import (
    GATES,
    PADDINGS,
    conv,
    gate_dropout_masks,
    per_gate,
    recurrent_conv,
    standardize_tuple,
)
from jaxseq.initializers import Initializer, forget_bias_init, in_float32
from jaxseq.registry import register
from jaxseq.rnn import RNN, unroll_steps


class ConvLSTM(RNN):
    """The base of `ConvLSTM1D` and `ConvLSTM2D` (subclasses set `rank` and `spatial_axes`): an
    `RNN` whose recurrence is the convolutional LSTM step. The fields, call, outputs and errors
    are documented on those two classes."""

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
    _: dataclasses.KW_ONLY
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    unroll: bool | int = False

    rank: ClassVar[int] = 0
    spatial_axes: ClassVar[tuple[str, ...]] = ()
    state_names: ClassVar[tuple[str, ...]] = ("h", "c")

    @nn.nowrap
    def config(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str]:
        """(kernel_size, strides, dilation_rate, padding), checked and standardized."""
        where = type(self).__name__
        contracts.check_positive_int(self.filters, "filters", where)
        kernel = standardize_tuple(self.kernel_size, self.rank, "kernel_size", where)
        strides = standardize_tuple(self.strides, self.rank, "strides", where)
        dilation = standardize_tuple(self.dilation_rate, self.rank, "dilation_rate", where)
        if max(strides) > 1 and max(dilation) > 1:
            raise ValueError(f"{where} expects strides=1 or dilation_rate=1 (as Keras); got "
                             f"strides={strides} and dilation_rate={dilation}.")
        padding = self.padding.lower() if isinstance(self.padding, str) else self.padding
        contracts.check_choice(padding, PADDINGS, "padding", where)
        contracts.check_rates(self, ("dropout", "recurrent_dropout"), where)
        return kernel, strides, dilation, padding

    @nn.nowrap
    def compute_mask(self, x, mask=None):
        """The (batch, time) step mask: `mask`, or a (batch, time, *S) position mask reduced
        with any() over S (a step is masked when all its positions are), as the loss needs."""
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

    # -- the RNN hooks ----------------------------------------------------------------------
    @nn.nowrap
    def check_config(self) -> None:
        self.config()

    @nn.nowrap
    def step_mask(self, x, mask):
        if mask is not None and len(contracts.shape_of(mask)) > 2:
            contracts.check_spatial_sequence_input(x, self.spatial_axes, type(self).__name__)
            mask = self.compute_mask(x, mask)
        return mask

    @nn.nowrap
    def check_input(self, x) -> tuple[int, int]:
        where = type(self).__name__
        shape = contracts.check_spatial_sequence_input(x, self.spatial_axes, where)
        channels = shape[-1]
        if self.has_variable("params", "kernel"):
            built = self.get_variable("params", "kernel").shape[-2]
            if channels != built:
                raise ValueError(
                    f"{where} was built for {built} input channels, but x has {channels} (its "
                    f"last axis). Expected x of shape (batch, time, "
                    f"{', '.join(self.spatial_axes)}, {built}).")
        if min(self.state_shape(shape)[1:-1]) < 1:
            kernel, strides, dilation, _ = self.config()
            raise ValueError(
                f"{where} with padding 'valid', kernel_size={kernel}, dilation_rate={dilation}, "
                f"strides={strides} leaves no output on x of shape {shape} (spatial axes "
                f"{', '.join(self.spatial_axes)} = {shape[2:-1]}); use larger inputs or "
                "padding='same'.")
        return shape[0], shape[1]

    @nn.nowrap
    def state_shapes(self, input_shape):
        return (self.state_shape(input_shape),) * 2

    @nn.nowrap
    def state_spelling(self) -> str:
        primed = ", ".join(a + "'" for a in self.spatial_axes)
        return f"(batch, {primed}, filters)"

    @nn.nowrap
    def create_params(self, input_shape):
        kernel_size = self.config()[0]
        f4 = GATES * self.filters
        bias_init = self.bias_init
        if self.unit_forget_bias:
            bias_init = forget_bias_init(self.bias_init, self.filters)
        specs = {"kernel": (self.kernel_init, (*kernel_size, input_shape[-1], f4)),
                 "recurrent_kernel": (self.recurrent_kernel_init, (*kernel_size, self.filters,
                                                                   f4))}
        if self.use_bias:
            specs["bias"] = (bias_init, (f4,))
        return {n: self.param(n, in_float32(init), shape, self.param_dtype)
                for n, (init, shape) in specs.items()}

    @nn.nowrap
    def dropout_masks(self, input_shape, shapes, dtype):
        """(GATES input masks (4, b, *S, c) or None, GATES recurrent masks (4, b, *S', f) or
        None), one per gate (Keras' `dropout_mask_count = 4`)."""
        xmasks = rmasks = None
        if self.dropout > 0:
            step = (input_shape[0], *input_shape[2:])
            xmasks = gate_dropout_masks(self, self.dropout, step, dtype)
        if self.recurrent_dropout > 0:
            rmasks = gate_dropout_masks(self, self.recurrent_dropout, shapes[0], dtype)
        return xmasks, rmasks

    @nn.nowrap
    def recurrence(self, implementation, params, states, x, mask, noise):
        del implementation  # one: "scan"
        _, strides, dilation, padding = self.config()
        batch, time, *space, _ = x.shape
        state_shape = states[0].shape
        f4 = GATES * self.filters
        xmasks, rmasks = (None, None) if noise is None else noise

        # 1. the input convolution of every step at once: time-major, time folded into batch
        xt = jnp.swapaxes(x, 0, 1)  # (t, b, *S, c)
        if xmasks is not None:
            xmasks = xmasks[:, None]  # (4, 1, b, *S, c): the same masks at every step
        xs, groups = per_gate(xt, xmasks)
        xp = conv(xs.reshape((time * batch, *space, xs.shape[-1])), params["kernel"], strides,
                  padding, dilation, groups)
        if self.use_bias:
            xp = xp + with_leading_axes(params["bias"], xp.ndim)
        xp = xp.reshape((time, *state_shape[:-1], f4))  # (t, b, *S', 4f)

        # 2. the recurrence: only the recurrent convolution inside the loop
        act = get_activation(self.activation)
        ract = get_activation(self.recurrent_activation)
        rk = params["recurrent_kernel"]
        zero_out, emit = self.zero_output_for_mask, self.return_sequences

        def step(carry, inputs):
            h, c = carry
            xp_t, m_t = inputs
            z = xp_t + recurrent_conv(h, rk, rmasks)
            zi, zf, zc, zo = jnp.split(z, GATES, axis=-1)
            c_new = ract(zf) * c + ract(zi) * act(zc)
            h_new = ract(zo) * act(c_new)
            y = h_new
            if m_t is not None:
                keep = m_t.reshape((batch,) + (1,) * (h.ndim - 1))
                h_new, c_new = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
                y = jnp.where(keep, h_new, jnp.zeros_like(h_new)) if zero_out else h_new
            return (h_new, c_new), (y if emit else None)

        final, ys = jax.lax.scan(step, tuple(states), (xp, None if mask is None else mask.T),
                                 reverse=self.go_backwards,
                                 unroll=unroll_steps(self.unroll, time))
        if emit:
            ys = jnp.swapaxes(ys, 0, 1)  # (b, t, *S', f)
            ys = jnp.flip(ys, axis=1) if self.go_backwards else ys  # processing order
            chex.assert_shape(ys, (batch, time, *state_shape[1:]))
        return final, ys


@register(keras="ConvLSTM1D")
class ConvLSTM1D(ConvLSTM):
    """Keras 3 `ConvLSTM1D` (`keras/src/layers/rnn/conv_lstm1d.py`; Shi et al., 2015): an LSTM
    whose input and recurrent transforms are 1-D convolutions, over (batch, time, rows,
    channels) inputs, channels last.

    Each step: `z = conv(x_t, kernel) + bias + conv_same(h, recurrent_kernel)`, split into
    gates i, f, c, o along the last axis; `c' = ract(z_f) * c + ract(z_i) * act(z_c)`;
    `h' = ract(z_o) * act(c')`. The recurrent convolution always uses padding "same",
    strides 1 and no dilation (Keras), so h and c keep the shape (batch, rows', filters)
    of the input convolution's output. Parameters: `kernel` (k, channels, 4 filters),
    `recurrent_kernel` (k, filters, 4 filters), `bias` (4 filters,).

    Attributes:
      filters: int >= 1, the channels of h, c and the output.
      kernel_size: int or a tuple of 1 ints >= 1, the convolution window along rows.
      strides: int or 1 ints >= 1, the input convolution's strides. Default 1.
      padding: "valid" (default: no padding, the output shrinks) or "same" (case-insensitive).
      dilation_rate: int or 1 ints >= 1; not together with strides > 1 (Keras). Default 1.
      activation: candidate and output activation, a Keras name or a callable. Default "tanh".
      recurrent_activation: the gates' activation. Default "sigmoid".
      use_bias: bool. Default True.
      kernel_init: initializer of `kernel`. Default `glorot_uniform`.
      recurrent_kernel_init: initializer of `recurrent_kernel`. Default `orthogonal` (of the
        kernel seen as a (-1, 4 filters) matrix).
      bias_init: initializer of `bias`. Default zeros.
      unit_forget_bias: bool. True (default): the forget gate's bias starts at one.
      dropout: float in [0, 1): input dropout, four masks of the input step's shape (one per
        gate), drawn once per call (Keras). Default 0.
      recurrent_dropout: float in [0, 1): four masks of h's shape, applied where h enters the
        recurrent convolution. Default 0.
      return_sequences: bool: every step's output (True) or the last (False, default).
      return_state: bool: also return the final h and c. Default False.
      go_backwards: bool: process the sequence in reverse and return the outputs in that
        (reversed) order, as Keras. Default False.
      zero_output_for_mask: bool: masked steps output zeros instead of the previous h
        (`Bidirectional` sets it). Default False.
      unroll: False (default), True or an int k >= 1: `lax.scan`'s unroll (results unchanged).
      stateful: bool: keep the final h and c for the next call (`jaxseq.RNN`). Default False.
      implementation: "auto" (default) or "scan", the one implementation.
      remat: False (default), True or an int k >= 1: checkpointing over time (`jaxseq.RNN`).
      dtype: computation dtype; None (default) promotes x's and the parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.

    Call arguments:
      `layer.apply(variables, x, *, mask=None, initial_state=None, deterministic=True)`:

      - `x`: (batch, time, rows, channels) floating.
      - `mask`: optional (batch, time) bool or int, True at real steps: a masked step keeps h
        and c and outputs the previous h (Keras 3's RNN, applied per sample).
      - `initial_state`: optional `(h, c)`, each (batch, rows', filters); default zeros.
      - `deterministic`: False applies the dropouts and needs a "dropout" rng.

    Returns:
      output (jax.Array | tuple[jax.Array, ...]): (batch, time, rows', filters) with
        `return_sequences`, else (batch, rows', filters); with `return_state`, `(output, h,
        c)`. rows' = rows for padding "same" with strides 1.

    Raises:
      ValueError: bad filters, kernel_size, strides, dilation_rate, padding or dropout
        rates; x not (batch, time, rows, channels) or with another channel count than at
        init; a "valid" convolution that leaves no output; a mask or initial states of the
        wrong shape.
      TypeError: filters not an int; x not floating; a float mask.

    Differences from Keras: channels last only, no regularizers or constraints.
    """

    rank: ClassVar[int] = 1
    spatial_axes: ClassVar[tuple[str, ...]] = ("rows",)


@register(keras="ConvLSTM2D")
class ConvLSTM2D(ConvLSTM):
    """Keras 3 `ConvLSTM2D` (`keras/src/layers/rnn/conv_lstm2d.py`; Shi et al., 2015): an LSTM
    whose input and recurrent transforms are 2-D convolutions, over (batch, time, rows, cols,
    channels) inputs, channels last.

    Each step: `z = conv(x_t, kernel) + bias + conv_same(h, recurrent_kernel)`, split into
    gates i, f, c, o along the last axis; `c' = ract(z_f) * c + ract(z_i) * act(z_c)`;
    `h' = ract(z_o) * act(c')`. The recurrent convolution always uses padding "same",
    strides 1 and no dilation (Keras), so h and c keep the shape (batch, rows', cols', filters)
    of the input convolution's output. Parameters: `kernel` (kr, kc, channels, 4 filters),
    `recurrent_kernel` (kr, kc, filters, 4 filters), `bias` (4 filters,).

    Attributes:
      filters: int >= 1, the channels of h, c and the output.
      kernel_size: int or a tuple of 2 ints >= 1, the convolution window (rows, cols).
      strides: int or 2 ints >= 1, the input convolution's strides. Default 1.
      padding: "valid" (default: no padding, the output shrinks) or "same" (case-insensitive).
      dilation_rate: int or 2 ints >= 1; not together with strides > 1 (Keras). Default 1.
      activation: candidate and output activation, a Keras name or a callable. Default "tanh".
      recurrent_activation: the gates' activation. Default "sigmoid".
      use_bias: bool. Default True.
      kernel_init: initializer of `kernel`. Default `glorot_uniform`.
      recurrent_kernel_init: initializer of `recurrent_kernel`. Default `orthogonal` (of the
        kernel seen as a (-1, 4 filters) matrix).
      bias_init: initializer of `bias`. Default zeros.
      unit_forget_bias: bool. True (default): the forget gate's bias starts at one.
      dropout: float in [0, 1): input dropout, four masks of the input step's shape (one per
        gate), drawn once per call (Keras). Default 0.
      recurrent_dropout: float in [0, 1): four masks of h's shape, applied where h enters the
        recurrent convolution. Default 0.
      return_sequences: bool: every step's output (True) or the last (False, default).
      return_state: bool: also return the final h and c. Default False.
      go_backwards: bool: process the sequence in reverse and return the outputs in that
        (reversed) order, as Keras. Default False.
      zero_output_for_mask: bool: masked steps output zeros instead of the previous h
        (`Bidirectional` sets it). Default False.
      unroll: False (default), True or an int k >= 1: `lax.scan`'s unroll (results unchanged).
      stateful: bool: keep the final h and c for the next call (`jaxseq.RNN`). Default False.
      implementation: "auto" (default) or "scan", the one implementation.
      remat: False (default), True or an int k >= 1: checkpointing over time (`jaxseq.RNN`).
      dtype: computation dtype; None (default) promotes x's and the parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.

    Call arguments:
      `layer.apply(variables, x, *, mask=None, initial_state=None, deterministic=True)`:

      - `x`: (batch, time, rows, cols, channels) floating.
      - `mask`: optional (batch, time) bool or int, True at real steps: a masked step keeps h
        and c and outputs the previous h (Keras 3's RNN, applied per sample).
      - `initial_state`: optional `(h, c)`, each (batch, rows', cols', filters); default zeros.
      - `deterministic`: False applies the dropouts and needs a "dropout" rng.

    Returns:
      output (jax.Array | tuple[jax.Array, ...]): (batch, time, rows', cols', filters) with
        `return_sequences`, else (batch, rows', cols', filters); with `return_state`, `(output, h,
        c)`. rows', cols' = rows, cols for padding "same" with strides 1.

    Raises:
      ValueError: bad filters, kernel_size, strides, dilation_rate, padding or dropout
        rates; x not (batch, time, rows, cols, channels) or with another channel count than at
        init; a "valid" convolution that leaves no output; a mask or initial states of the
        wrong shape.
      TypeError: filters not an int; x not floating; a float mask.

    Differences from Keras: channels last only, no regularizers or constraints.
    """

    rank: ClassVar[int] = 2
    spatial_axes: ClassVar[tuple[str, ...]] = ("rows", "cols")

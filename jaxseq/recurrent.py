"""Recurrent layers with Keras 3 semantics: LSTM, GRU, SimpleRNN, and Bidirectional.

A layer owns its cell's parameters directly, in Keras order and layout (`kernel`,
`recurrent_kernel`, `bias`), so parameter counts and weights match Keras exactly.

How a layer runs (shapes with b=batch, t=time, f=features, u=units, g=gates*u):

1. contracts: x (b, t, f), mask (b, t), initial_state (b, u) each — before any tracing;
2. input dropout (one mask per sequence), then `x @ kernel + bias` for all t in ONE product;
3. `nn.scan` over time of the recurrent step (only `h @ recurrent_kernel` inside the loop);
4. masking inside the step, as Keras 3: a masked step keeps every state and repeats the
   previous output (the previous h; for the first step, the initial h), or outputs zeros when
   `zero_output_for_mask=True` (what Keras' Bidirectional sets when returning sequences).

`go_backwards=True` processes the sequence from its end and, as Keras, returns the outputs in
processing order (reversed time). A fully masked row returns its initial state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import contracts, fused, remat
from jaxseq.cells import CellBase, GRUCell, LSTMCell, SimpleRNNCell
from jaxseq.conv_lstm import ConvLSTM
from jaxseq.typing import STATE_COLLECTION, Array, Mask, Sequences

Initializer = Callable[..., Array]


def _masked_step(cell: CellBase, zero_output_for_mask: bool, emit_outputs: bool, states,
                 inputs, rparams, rmask):
    """One step of the scan path: the cell's step, then Keras 3 masking (a masked step keeps
    every state; its output repeats h, or is zeros with `zero_output_for_mask`)."""
    xp, m = inputs
    new = cell.step(rparams, states, xp, rmask)
    if m is not None:
        keep = m[:, None]
        new = tuple(jnp.where(keep, n, s) for n, s in zip(new, states, strict=True))
        y = jnp.where(keep, new[0], jnp.zeros_like(new[0])) if zero_output_for_mask else new[0]
    else:
        y = new[0]
    return new, (y if emit_outputs else None)


class _Recurrence(nn.Module):
    """The body that `nn.scan` runs once per time step. It owns no parameters: the recurrent
    weights come in as a broadcast argument, the projected inputs as the scanned one."""

    cell: Any  # an unbound CellBase: configuration and pure math only
    zero_output_for_mask: bool
    emit_outputs: bool

    @nn.compact
    def __call__(self, states, inputs, rparams, rmask):
        return _masked_step(self.cell, self.zero_output_for_mask, self.emit_outputs, states,
                            inputs, rparams, rmask)


def _dropout_mask(module: nn.Module, rate: float, shape, dtype) -> Array:
    """An inverted-dropout mask, drawn once per sequence (Keras: one mask for every step)."""
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, shape)
    return jnp.where(keep, 1.0 / (1.0 - rate), 0.0).astype(dtype)


class RNN(nn.Module):
    """Base of the Keras-style recurrent layers. Subclasses set `cell_class` and cell fields.

    Call: `layer(x, *, mask=None, initial_state=None, deterministic=True)`
      x: (batch, time, features), floating.
      mask: (batch, time), bool (True = real step), optional.
      initial_state: LSTM `(h, c)`; GRU / SimpleRNN `h` or `(h,)`; each (batch, units).
      deterministic: False enables dropout; then an rng named "dropout" must be given.
    stateful: Keras' `stateful=True`: the final states of each call are kept in the flax
      collection `"rnn_state"` (one row per sample: the batch size is fixed by `init`) and are
      the next call's initial states; apply with `mutable=["rnn_state"]` to carry them
      (`fit` does), and `jaxseq.reset_states(variables)` to zero them. An explicit
      `initial_state` takes precedence. Row j of the next batch continues row j of this one.
    remat: gradient checkpointing over time (`jaxseq.remat`): False (default) keeps every
      step's residuals for the backward pass (memory linear in time); True cuts the sequence
      into segments of ceil(sqrt(time)) steps, a positive int k into segments of k steps, and
      keeps only the states between segments, recomputing one segment at a time in the
      backward pass (about one more forward pass of time). Same outputs; gradients equal to
      float rounding. k >= time runs unsegmented. Anything else is a ValueError.
    Returns: (batch, time, units) with `return_sequences`, else (batch, units); with
      `return_state`, the tuple `(output, *states)` (LSTM states in Keras order h, c).
    """

    units: int
    activation: str | Callable = "tanh"
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.glorot_uniform()
    recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
    bias_init: Initializer = nn.initializers.zeros_init()
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    unroll: bool | int = False
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    stateful: bool = False
    zero_output_for_mask: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    # "auto" | "scan" | "fused". "fused" (jaxseq.fused): time-major scan with a custom
    # backward pass; "auto" takes it wherever it supports the layer, else the nn.scan reference.
    implementation: str = "auto"
    remat: bool | int = False  # checkpointed segments of time (see the class docstring)

    cell_class: ClassVar[type[CellBase]] = CellBase
    extra_cell_fields: ClassVar[tuple[str, ...]] = ()

    @nn.nowrap
    def make_cell(self) -> CellBase:
        """The unbound cell with this layer's configuration (pure math and parameter spec)."""
        names = (
            "units", "activation", "use_bias", "kernel_init", "recurrent_kernel_init",
            "bias_init", "dtype", "param_dtype", *self.extra_cell_fields,
        )
        return self.cell_class(**{n: getattr(self, n) for n in names}, parent=None)

    @nn.nowrap
    def _check_config(self) -> None:
        where = type(self).__name__
        contracts.check_positive_int(self.units, "units", where)
        for name in ("dropout", "recurrent_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{where} expects {name} in [0, 1); got {rate}.")
        remat.check_remat(self.remat, where)

    @nn.nowrap
    def _initial_states(self, cell: CellBase, initial_state, batch: int, dtype):
        where = type(self).__name__
        if initial_state is None:
            return cell.zero_states(batch, dtype)
        if not isinstance(initial_state, (tuple, list)):
            initial_state = (initial_state,)
        contracts.check_state_shapes(
            initial_state, [(batch, k) for k in cell.state_sizes()], cell.state_names, where
        )
        return tuple(jnp.asarray(s).astype(dtype) for s in initial_state)

    @nn.compact
    def __call__(self, x: Sequences, *, mask: Mask | None = None, initial_state=None,
                 deterministic: bool = True):
        where = type(self).__name__
        self._check_config()
        batch, time, features = contracts.check_sequence_input(x, where)
        if mask is not None:
            contracts.check_mask(mask, batch, time, where)
        cell = self.make_cell()
        if self.has_variable("params", "kernel"):  # built before: same feature count?
            built = self.get_variable("params", "kernel").shape[0]
            contracts.check_features(features, built, where)
        params = cell.create_params(self, features)
        x = jnp.asarray(x)

        dtype = self.dtype or jnp.result_type(x, *jax.tree.leaves(params))
        params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
        x = jnp.asarray(x, dtype)
        carried = None
        if self.stateful and initial_state is None:
            carried = self.variable(STATE_COLLECTION, "states",
                                    lambda: cell.zero_states(batch, dtype))
            kept = contracts.shape_of(carried.value[0])[0]
            if kept != batch:
                raise ValueError(
                    f"{where}(stateful=True) keeps one state per sample for batches of {kept} "
                    f"(the batch size at init); got a batch of {batch}. Feed batches of {kept} "
                    "(fit: batch_size, with the sample count a multiple of it), or init with a "
                    f"batch of {batch}.")
            states = tuple(jnp.asarray(v, dtype) for v in carried.value)
        else:
            states = self._initial_states(cell, initial_state, batch, dtype)

        if not deterministic and self.dropout > 0:
            x = x * _dropout_mask(self, self.dropout, (batch, 1, features), dtype)
        rmask = None
        if not deterministic and self.recurrent_dropout > 0:
            rmask = _dropout_mask(self, self.recurrent_dropout, (batch, cell.output_size), dtype)

        m = None if mask is None else jnp.asarray(mask).astype(bool)
        if m is not None:  # padding may hold anything (NaN, Inf): select it away before any
            x = jnp.where(m[:, :, None], x, jnp.zeros_like(x))  # arithmetic, values and grads
        seg = remat.segment_length(self.remat, time)
        if fused.select(self.implementation, cell, where) == "fused":
            if seg is None:
                final, ys = fused.layer_recurrence(self, cell, params, x, states, m, rmask)
            else:  # the fused recurrence (and its own backward) per checkpointed segment
                final, ys = remat.segmented(
                    lambda s, xm: fused.layer_recurrence(self, cell, params, xm[0], s, xm[1],
                                                         rmask),
                    states, (x, m), seg, reverse=self.go_backwards, emit=self.return_sequences)
            self._keep(carried, final)
            return self._finish(final, ys, m, batch, time)
        unroll = time if self.unroll is True else max(int(self.unroll), 1)
        rparams = {k: v for k, v in params.items() if k != "kernel"}
        if seg is not None:  # the scan below, per checkpointed segment
            step = functools.partial(_masked_step, cell, self.zero_output_for_mask,
                                     self.return_sequences, rparams=rparams, rmask=rmask)
            body = remat.scan_body(step, functools.partial(cell.project, params),
                                   reverse=self.go_backwards, unroll=unroll)
            final, ys = remat.segmented(body, states, (x, m), seg, reverse=self.go_backwards,
                                        emit=self.return_sequences)
            self._keep(carried, final)
            return self._finish(final, ys, m, batch, time)

        xp = cell.project(params, x)  # (b, t, g): the input part of every step at once
        chex.assert_shape(xp, (batch, time, cell.gates * self.units))

        scan = nn.scan(
            _Recurrence,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=(1, nn.broadcast, nn.broadcast),
            out_axes=1,
            reverse=self.go_backwards,
            unroll=unroll,
        )
        body = scan(
            cell=cell,
            zero_output_for_mask=self.zero_output_for_mask,
            emit_outputs=self.return_sequences,
            name="recurrence",
        )
        final, ys = body(states, (xp, m), rparams, rmask)
        self._keep(carried, final)
        if self.return_sequences and self.go_backwards:
            ys = jnp.flip(ys, axis=1)  # processing order, as Keras returns it
        return self._finish(final, ys, m, batch, time)

    def _keep(self, carried, final) -> None:
        """Stateful: the final states become the next call's (when the collection is mutable;
        init keeps zeros, as Keras builds them)."""
        if carried is not None and self.is_mutable_collection(STATE_COLLECTION) and (
                not self.is_initializing()):
            carried.value = tuple(jax.lax.stop_gradient(f) for f in final)

    @nn.nowrap
    def _finish(self, final, ys, m, batch: int, time: int):
        """The layer's return value from the final states and the outputs ys (b, t, u) in
        processing order (None without return_sequences)."""
        if self.return_sequences:
            output = ys
            chex.assert_shape(output, (batch, time, self.make_cell().output_size))
        else:
            output = final[0]
            if self.zero_output_for_mask and m is not None:
                last = m[:, 0] if self.go_backwards else m[:, -1]
                output = jnp.where(last[:, None], output, jnp.zeros_like(output))
            chex.assert_shape(output, (batch, self.make_cell().output_size))
        if self.return_state:
            return (output, *final)
        return output


class LSTM(RNN):
    """Keras 3 `LSTM`: kernel (f, 4u), recurrent_kernel (u, 4u), bias (4u,); gates i, f, c, o.

    `unit_forget_bias=True` initializes the forget-gate bias to one. States are `(h, c)`.
    `proj_size=p` > 0: PyTorch's LSTM with projections (`nn.LSTM(proj_size=p)`), h = (o ⊙
    tanh(c)) @ projection_kernel (u, p); recurrent_kernel (p, 4u); the output and h are
    (..., p), c stays (batch, u). Runs on the scan path (the fused path has no projection).
    """

    recurrent_activation: str | Callable = "sigmoid"
    unit_forget_bias: bool = True
    proj_size: int = 0

    cell_class: ClassVar[type[CellBase]] = LSTMCell
    extra_cell_fields: ClassVar[tuple[str, ...]] = ("recurrent_activation", "unit_forget_bias",
                                                    "proj_size")


class GRU(RNN):
    """Keras 3 `GRU`, `reset_after=True` by default: kernel (f, 3u), recurrent_kernel (u, 3u),
    bias (2, 3u) (input bias row 0, recurrent bias row 1); gates z, r, h. State `h`."""

    recurrent_activation: str | Callable = "sigmoid"
    reset_after: bool = True

    cell_class: ClassVar[type[CellBase]] = GRUCell
    extra_cell_fields: ClassVar[tuple[str, ...]] = ("recurrent_activation", "reset_after")


class SimpleRNN(RNN):
    """Keras 3 `SimpleRNN`: kernel (f, u), recurrent_kernel (u, u), bias (u,). State `h`."""

    cell_class: ClassVar[type[CellBase]] = SimpleRNNCell


_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _merge(fw: Array, bw: Array, mode: str | None):
    if mode == "concat":
        return jnp.concatenate([fw, bw], axis=-1)
    if mode == "sum":
        return fw + bw
    if mode == "mul":
        return fw * bw
    if mode == "ave":
        return (fw + bw) / 2
    return [fw, bw]


_WRAPPABLE = ("go_backwards", "return_sequences", "return_state", "zero_output_for_mask")


def _state_names(layer) -> tuple[str, ...] | None:
    """The states of a layer Bidirectional can wrap: a jaxseq RNN's (its cell's), or those
    declared in `state_names` by a layer with the fields of `_WRAPPABLE` (MinGRU, MinLSTM);
    None for any other layer."""
    if isinstance(layer, RNN):
        return layer.make_cell().state_names
    if all(hasattr(layer, f) for f in _WRAPPABLE):
        return getattr(type(layer), "state_names", None)
    return None


class Bidirectional(nn.Module):
    """Keras 3 `Bidirectional(layer, merge_mode="concat")`.

    `layer`: a jaxseq recurrent layer (LSTM, GRU, SimpleRNN, MinGRU, MinLSTM). Two copies of
    `layer` with their own weights, `forward_layer` and `backward_layer` (the
    latter with `go_backwards` flipped). With `return_sequences`, the backward output is
    re-aligned to forward time, and masked steps output zeros (Keras sets
    `zero_output_for_mask` in this case). `merge_mode`: "concat" | "sum" | "mul" | "ave" |
    None (returns `[forward, backward]`). `initial_state`: forward states then backward states.
    `return_state`: `(output, *forward_states, *backward_states)`. `layer` may also be a
    `ConvLSTM1D` / `ConvLSTM2D` (states (batch, *S', filters); "concat" joins the filters).
    """

    layer: nn.Module  # RNN, MinGRU, MinLSTM, ConvLSTM1D/2D (checked at call)
    merge_mode: str | None = "concat"

    @nn.compact
    def __call__(self, x, *, mask=None, initial_state=None, deterministic: bool = True):
        names = _state_names(self.layer)
        if names is None:
            raise TypeError(
                "Bidirectional expects a jaxseq recurrent layer (LSTM, GRU, SimpleRNN, MinGRU, "
                f"MinLSTM, ConvLSTM1D, ConvLSTM2D); got {type(self.layer).__name__}."
            )
        contracts.check_choice(self.merge_mode, _MERGE_MODES, "merge_mode", "Bidirectional")
        base = self.layer
        fw_layer = base.clone(
            parent=self, zero_output_for_mask=base.return_sequences, name="forward_layer"
        )
        bw_layer = base.clone(
            parent=self,
            go_backwards=not base.go_backwards,
            zero_output_for_mask=base.return_sequences,
            name="backward_layer",
        )
        fw_init = bw_init = None
        if initial_state is not None:
            n = len(names)
            each = ("(batch, *spatial', filters)" if isinstance(base, ConvLSTM)
                    else "(batch, units)")
            states = list(initial_state) if isinstance(initial_state, (tuple, list)) else [
                initial_state
            ]
            if len(states) != 2 * n:
                raise ValueError(
                    f"Bidirectional({type(base).__name__}) expects initial_state with {2 * n} "
                    f"arrays (forward states then backward states), each {each}; got "
                    f"{len(states)}."
                )
            fw_init, bw_init = tuple(states[:n]), tuple(states[n:])
        kw = dict(mask=mask, deterministic=deterministic)
        fw = fw_layer(x, initial_state=fw_init, **kw)
        bw = bw_layer(x, initial_state=bw_init, **kw)
        fw_states = bw_states = ()
        if base.return_state:
            fw, *fw_states = fw
            bw, *bw_states = bw
        if base.return_sequences:
            bw = jnp.flip(bw, axis=1)
        out = _merge(fw, bw, self.merge_mode)
        if base.return_state and self.merge_mode is None:  # Keras: flat (fw, bw, *states)
            return (*out, *fw_states, *bw_states)
        if base.return_state:
            return (out, *fw_states, *bw_states)
        return out

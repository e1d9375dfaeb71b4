"""The base of the recurrent layers: `RNN` owns masks, states, direction, dropout, the choice
of implementation and the return flags; a cell (`jaxseq.cells`) supplies the step.

How a layer runs (shapes with b=batch, t=time, f=features, u=units, g=gates*u):

1. contracts: x (b, t, f), mask (b, t), initial_state (b, u) each — before any tracing;
2. input dropout (one mask per sequence), then `x @ kernel + bias` for all t in ONE product;
3. `nn.scan` over time of the recurrent step (only `h @ recurrent_kernel` inside the loop), or
   the fused recurrence with its own backward pass (`jaxseq.fused`);
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
from jaxseq.cells import CellBase
from jaxseq.typing import STATE_COLLECTION, Array, Mask, Sequences, States

__all__ = ["RNN"]

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
    """The base of jaxseq's Keras-style recurrent layers (`LSTM`, `GRU`, `SimpleRNN`).

    A subclass names its cell (`cell_class`, from `jaxseq.cells`) and the cell's extra fields;
    this base owns everything around the step: input checks, the parameters (declared on the
    layer itself, in Keras' names and layout, so counts and weights match Keras exactly),
    masks, initial and stateful states, direction, dropout, the choice of implementation and
    the return flags. Semantics: Keras 3's `keras.layers.RNN` with a cell
    (`keras/src/layers/rnn/rnn.py`) and the layers in `keras/src/layers/rnn/`.

    Use the subclasses; `RNN` itself has no cell (calling it raises `NotImplementedError`).

    Attributes:
      units: int >= 1, the width of the state h and of the output (Keras' `units`).
      activation: the activation of the candidate state (and of h, for the LSTM): a Keras
        name ("tanh", "sigmoid", "relu", "linear", "elu", "gelu", "hard_sigmoid", "softsign",
        "swish", "silu", "softmax") or a callable `Array -> Array`. Default "tanh".
      use_bias: bool, whether the layer has a `bias`. Default True.
      kernel_init: initializer `(key, shape, dtype) -> Array` of `kernel` (features, gates *
        units). Default `glorot_uniform` (Keras' `kernel_initializer`).
      recurrent_kernel_init: initializer of `recurrent_kernel` (units, gates * units).
        Default `orthogonal` (Keras' `recurrent_initializer`).
      bias_init: initializer of `bias`. Default zeros (Keras' `bias_initializer`).
      return_sequences: bool. False (default): return the last output, (batch, units);
        True: the output of every step, (batch, time, units).
      return_state: bool. True: return `(output, *final_states)` (LSTM `(output, h, c)`).
        Default False.
      go_backwards: bool. True: process the sequence from its last step to its first and,
        as Keras, return the sequence of outputs in that processing (reversed) order.
        Default False.
      unroll: False (default: a loop), True (every step unrolled into the program: faster
        for short sequences, a larger program) or an int k >= 1 (k steps per loop iteration).
      dropout: float in [0, 1), the fraction of input features dropped (one mask per
        sequence, the same at every step, as Keras); only when called with
        `deterministic=False`. Default 0.
      recurrent_dropout: float in [0, 1), the fraction of h dropped where it enters the
        recurrent product (one mask per sequence; the carried h itself is not dropped, as
        Keras). Default 0.
      stateful: bool, Keras' `stateful=True`. The final states of each call are kept in the
        flax collection "rnn_state" (`{"states": (h, ...)}`, one row per sample, so the batch
        size is fixed by `init`) and are the next call's initial states; apply with
        `mutable=["rnn_state"]` to carry them (`fit` does) and `jaxseq.reset_states` to zero
        them. An explicit `initial_state` takes precedence. Default False.
      zero_output_for_mask: bool. False (default): a masked step repeats the previous output;
        True: it outputs zeros (what Keras' `Bidirectional` sets when it returns sequences).
      dtype: the computation dtype; None (default) promotes the input's and the parameters'
        dtypes (`jnp.result_type`), so bfloat16 inputs with float32 parameters compute in
        float32.
      param_dtype: the parameters' dtype. Default float32.
      implementation: "auto" (default), "scan" or "fused". "scan": `nn.scan` of the cell's
        step with the input projection taken for every step in one product before the loop.
        "fused": the same recurrence under one `jax.custom_jvp` whose reverse mode takes the
        weight gradients out of the loop (`jaxseq.fused`); it supports LSTM, GRU with
        `reset_after=True` and SimpleRNN with the activations tanh, sigmoid, linear and relu,
        without `proj_size`. "auto" takes "fused" wherever it supports the layer, else
        "scan". Both give the same values to float rounding, and both differentiate in
        forward mode (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) and reverse mode.
      remat: gradient checkpointing over time (`jaxseq.remat`): False (default) keeps every
        step's residuals for the backward pass (memory linear in time); True cuts the
        sequence into segments of ceil(sqrt(time)) steps, a positive int k into segments of k
        steps, and keeps only the states between segments, recomputing one segment at a time
        in the backward pass (about one more forward pass of time; the fused path runs its
        own backward per segment). Same outputs; gradients equal to float rounding. k >= time
        runs unsegmented. Anything else is a ValueError.

    Raises:
      ValueError: from the call: `units` < 1, a dropout rate outside [0, 1), an unknown
        `implementation`, `implementation="fused"` for a layer it does not support, a bad
        input shape (see `__call__`).
      TypeError: from the call: `units` not an int; a non-floating x; a float mask.
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
        self.make_cell().check_config(where)

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
    def __call__(self, x: Sequences, *, mask: Mask | None = None,
                 initial_state: States = None, deterministic: bool = True):
        """Run the layer over a batch of sequences.

        Args:
          x: (batch, time, features) floating array (float32, bfloat16, ...; NumPy, JAX or a
            nested list), time >= 1. The feature count must stay the one the layer was
            initialized with.
          mask: optional (batch, time) bool or integer array, True (nonzero) at real steps.
            As Keras 3: a masked step keeps every state and repeats the previous output
            (zeros with `zero_output_for_mask`); values at masked steps (NaN included) never
            reach the arithmetic; a fully masked row returns its initial state.
          initial_state: optional initial states, each (batch, state width): LSTM `(h, c)`,
            GRU and SimpleRNN `h` or `(h,)`. None: zeros (or the kept states when
            `stateful`).
          deterministic: True (default) turns dropout off; False applies `dropout` and
            `recurrent_dropout` and needs an rng named "dropout" (`rngs={"dropout": key}`).

        Returns:
          output (jax.Array | tuple[jax.Array, ...]): the output, (batch, time, units) with
            `return_sequences` (in processing order: reversed time with `go_backwards`), else
            the last output (batch, units); with `return_state`, the tuple `(output,
            *final_states)`, LSTM states in Keras order h, c, each (batch, units). The dtype is
            `dtype`, or the promotion of x's and the parameters' dtypes.

        Raises:
          ValueError: x not (batch, time, features), an empty time or feature axis, x's
            feature count differing from the initialized one, a mask not (batch, time), an
            initial state of the wrong count or shape, a stateful layer fed another batch
            size than at init; the configuration errors listed on the class.
          TypeError: x not floating, a float mask, `units` not an int.
        """
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
        rparams = {k: v for k, v in params.items()  # the scan's weights: all but the input's
                   if k != "kernel" and not k.startswith("kernel_norm")}
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

"""`CellRNN`: the `RNN` whose step is a cell of `jaxseq.cells`, the base of `LSTM`, `GRU` and
`SimpleRNN` (`jaxseq.recurrent`).

A subclass names its cell (`cell_class`) and the cell's extra fields; the layer declares the
cell's parameters on itself, in Keras' names and layout, so counts and weights match Keras
exactly. Its recurrence runs one of two ways (`implementation`), with the same values to float
rounding (shapes b = batch, t = time, f = features, u = units, g = gates * u):

* "scan": the input projection `x @ kernel + bias` for every step in ONE product (b, t, g)
  before the loop, then `jax.lax.scan` of the cell's step, where only `h @ recurrent_kernel`
  runs (cuDNN's layout), with Keras 3's masking inside the step;
* "fused": the same recurrence under one `jax.custom_jvp` (a linear tangent recurrence) whose
  transpose, reverse mode, takes the weight gradients out of the loop (`jaxseq.fused`); it
  supports fewer configurations (`fused.unsupported`).

Both differentiate in forward mode (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) and reverse mode.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxseq import contracts, fused, remat
from jaxseq.cells import CellBase
from jaxseq.rnn import RNN, dropout_mask, unroll_steps
from jaxseq.typing import Array

__all__ = ["CellRNN"]

Initializer = Callable[..., Array]


def masked_step(cell: CellBase, zero_output_for_mask: bool, emit_outputs: bool, states, inputs,
                rparams, rmask):
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


class CellRNN(RNN):
    """An `RNN` over a cell's step: the base of `LSTM`, `GRU` and `SimpleRNN`.

    A subclass sets `cell_class` (a `jaxseq.cells.CellBase`) and `extra_cell_fields` (its
    fields that configure the cell); `make_cell` builds the unbound cell. `RNN` documents the
    fields it owns (return flags, `stateful`, dtypes, `implementation`, `remat`).

    Attributes:
      units: int >= 1, the width of the state h and of the output (Keras' `units`).
      activation: the candidate's activation: a Keras name or a callable. Default "tanh".
      use_bias: bool, whether the layer has a `bias`. Default True.
      kernel_init: initializer `(key, shape, dtype) -> Array` of `kernel` (features, gates *
        units). Default `glorot_uniform` (Keras' `kernel_initializer`).
      recurrent_kernel_init: initializer of `recurrent_kernel` (units, gates * units).
        Default `orthogonal` (Keras' `recurrent_initializer`).
      bias_init: initializer of `bias`. Default zeros (Keras' `bias_initializer`).
      unroll: False (default: a loop), True (every step unrolled) or an int k >= 1 (k steps
        per loop iteration): `jaxseq.rnn.unroll_steps`; results unchanged.
      dropout: float in [0, 1), the fraction of input features dropped (one mask per
        sequence, the same at every step, as Keras). Default 0.
      recurrent_dropout: float in [0, 1), the fraction of h dropped where it enters the
        recurrent product (one mask per sequence; the carried h itself is not dropped, as
        Keras). Default 0.
      return_sequences, return_state, go_backwards, stateful, zero_output_for_mask, dtype,
        param_dtype, implementation, remat: see `RNN`. `implementation`: "scan" or "fused"
        (the module docstring); "auto" takes "fused" wherever it supports the layer.
    """

    units: int
    activation: str | Callable = "tanh"
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.glorot_uniform()
    recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
    bias_init: Initializer = nn.initializers.zeros_init()
    _: dataclasses.KW_ONLY
    unroll: bool | int = False
    dropout: float = 0.0
    recurrent_dropout: float = 0.0

    cell_class: ClassVar[type[CellBase]] = CellBase
    extra_cell_fields: ClassVar[tuple[str, ...]] = ()
    implementations: ClassVar[tuple[str, ...]] = ("scan", "fused")
    auto_family: ClassVar[str] = "cell"

    @property
    def state_names(self) -> tuple[str, ...]:
        """The cell's states, in `return_state` order (LSTM h, c; the others h)."""
        return self.cell_class.state_names

    @nn.nowrap
    def make_cell(self) -> CellBase:
        """The unbound cell with this layer's configuration (pure math and parameter spec)."""
        names = (
            "units", "activation", "use_bias", "kernel_init", "recurrent_kernel_init",
            "bias_init", "dtype", "param_dtype", *self.extra_cell_fields,
        )
        return self.cell_class(**{n: getattr(self, n) for n in names}, parent=None)

    @nn.nowrap
    def check_config(self) -> None:
        where = type(self).__name__
        contracts.check_positive_int(self.units, "units", where)
        contracts.check_rates(self, ("dropout", "recurrent_dropout"), where)
        self.make_cell().check_config(where)

    @nn.nowrap
    def create_params(self, input_shape):
        return self.make_cell().create_params(self, input_shape[-1])

    @nn.nowrap
    def state_shapes(self, input_shape):
        return tuple((input_shape[0], n) for n in self.make_cell().state_sizes())

    @nn.nowrap
    def dropout_masks(self, input_shape, shapes, dtype):
        """(input mask (b, 1, f) or None, recurrent mask (b, width of h) or None)."""
        batch, _, features = input_shape
        xmask = rmask = None
        if self.dropout > 0:
            xmask = dropout_mask(self, self.dropout, (batch, 1, features), dtype)
        if self.recurrent_dropout > 0:
            rmask = dropout_mask(self, self.recurrent_dropout, shapes[0], dtype)
        return xmask, rmask

    @nn.nowrap
    def implementation_unsupported(self, name: str) -> str | None:
        return fused.unsupported(self.make_cell()) if name == "fused" else None

    @nn.nowrap
    def recurrence(self, implementation, params, states, x, mask, noise):
        cell = self.make_cell()
        xmask, rmask = (None, None) if noise is None else noise
        if xmask is not None:
            x = x * xmask
        unroll = unroll_steps(self.unroll, x.shape[1])
        if implementation == "fused":
            return fused.layer_recurrence(
                cell, params, x, states, mask, rmask, zero_output_for_mask=(
                    self.zero_output_for_mask), emit=self.return_sequences,
                reverse=self.go_backwards, unroll=unroll)
        rparams = {k: v for k, v in params.items()  # the loop's weights: all but the input's
                   if k != "kernel" and not k.startswith("kernel_norm")}
        step = functools.partial(masked_step, cell, self.zero_output_for_mask,
                                 self.return_sequences, rparams=rparams, rmask=rmask)
        body = remat.scan_body(step, functools.partial(cell.project, params),
                               reverse=self.go_backwards, unroll=unroll)
        return body(states, (x, mask))

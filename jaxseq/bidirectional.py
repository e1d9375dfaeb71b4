"""Keras 3's `Bidirectional` wrapper for jaxseq's recurrent layers."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxseq import contracts, registry
from jaxseq.rnn import RNN
from jaxseq.typing import Array

__all__ = ["Bidirectional"]


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


def _state_names(layer) -> tuple[str, ...] | None:
    """The states of a layer Bidirectional can wrap (any `jaxseq.RNN`); None for any other."""
    return tuple(layer.state_names) if isinstance(layer, RNN) else None


def _wrappable() -> str:
    """The registered recurrent layer kinds, for messages."""
    return ", ".join(k.name for k in registry.kinds() if issubclass(k.cls, RNN))


@registry.register(keras="Bidirectional")
class Bidirectional(nn.Module):
    """Keras 3 `Bidirectional(layer, merge_mode="concat")`: run a recurrent layer forwards and
    backwards over the sequence and merge the two (`keras/src/layers/rnn/bidirectional.py`).

    Two copies of `layer`, each with its own weights in the wrapped layer's Keras layout:
    `forward_layer` (as given) and `backward_layer` (`go_backwards` flipped). With
    `return_sequences`, the backward outputs are re-aligned to forward time before merging, and
    masked steps output zeros in both directions (Keras sets `zero_output_for_mask` then).

    Attributes:
      layer: the layer to wrap: any `jaxseq.RNN` (`LSTM`, `GRU`, `SimpleRNN`, `MinGRU`,
        `MinLSTM`, `ConvLSTM1D`, `ConvLSTM2D`, or a subclass of one's own). Its flags
        (`return_sequences`, `return_state`, `go_backwards`, dropout, ...) apply to both
        directions.
      merge_mode: how the two outputs combine: "concat" (default: along the last axis,
        2 units wide; for ConvLSTM the filters), "sum", "mul", "ave" (the mean; these three
        need outputs of one shape) or None (no merge: a list `[forward, backward]`).
      backward_layer: None (default: a copy of `layer` with `go_backwards` flipped) or a
        jaxseq recurrent layer of any kind used as the backward layer (e.g. `LSTM(3)` forward,
        `SimpleRNN(4, go_backwards=True)` backward). As in Keras, it must differ from `layer`
        in `go_backwards` and agree with it in `stateful`, `return_sequences` and
        `return_state`, else a ValueError with Keras' message; its output is flipped in time
        (with `return_sequences`) whichever direction it runs.

    Call arguments:
      `layer.apply(variables, x, *, mask=None, initial_state=None, deterministic=True)`:

      - `x`: what the wrapped layer takes: (batch, time, features) floating, or (batch, time,
        *spatial, channels) for ConvLSTM.
      - `mask`: optional (batch, time) bool or int, True at real steps, given to both layers.
      - `initial_state`: optional, the forward layer's states followed by the backward
        layer's (LSTM: `(h_fw, c_fw, h_bw, c_bw)`), each (batch, units) (ConvLSTM: (batch,
        *spatial', filters)), as Keras; split by each layer's own number of states.
      - `deterministic`: False applies the wrapped layer's dropout (a "dropout" rng needed).

    Returns:
      output (jax.Array | list | tuple): the merged output: (batch, [time,] 2 units) for "concat",
        (batch, [time,] units) for the others (time with `return_sequences`); `[forward,
        backward]` for None. With `return_state`: `(output, *forward_states,
        *backward_states)`; with `merge_mode=None` flat, `(forward, backward, *forward_states,
        *backward_states)`, as Keras.

    Raises:
      TypeError: `layer` or `backward_layer` is not one of the layers above.
      ValueError: an unknown `merge_mode`; "sum"/"mul"/"ave" with outputs of two shapes; a
        `backward_layer` that breaks Keras' rules; `initial_state` without exactly the two
        layers' state counts; the wrapped layers' own errors.
    """

    layer: nn.Module  # a jaxseq.RNN (checked at call)
    merge_mode: str | None = "concat"
    backward_layer: nn.Module | None = None

    def __post_init__(self):
        # Keras forces zero_output_for_mask = return_sequences on both layers. A module field is
        # adopted as the child named after the field ("backward_layer"), so the flag is set on
        # the field's value here rather than on a clone at call time.
        bw = self.backward_layer
        if isinstance(bw, RNN) and bw.zero_output_for_mask != bw.return_sequences:
            object.__setattr__(self, "backward_layer",
                               bw.clone(zero_output_for_mask=bw.return_sequences))
        super().__post_init__()

    @nn.compact
    def __call__(self, x, *, mask=None, initial_state=None, deterministic: bool = True):
        names = _state_names(self.layer)
        if names is None:
            raise TypeError(f"Bidirectional expects a jaxseq recurrent layer, a jaxseq.RNN "
                            f"({_wrappable()}); got {type(self.layer).__name__}.")
        contracts.check_choice(self.merge_mode, _MERGE_MODES, "merge_mode", "Bidirectional")
        base = self.layer
        fw_layer = base.clone(
            parent=self, zero_output_for_mask=base.return_sequences, name="forward_layer"
        )
        if self.backward_layer is None:
            bw_layer = base.clone(
                parent=self,
                go_backwards=not base.go_backwards,
                zero_output_for_mask=base.return_sequences,
                name="backward_layer",
            )
            bw_names = names
        else:
            bw_names = _state_names(self.backward_layer)
            if bw_names is None:
                raise TypeError(
                    "Bidirectional expects backward_layer to be None or a jaxseq recurrent layer "
                    f"like layer; got {type(self.backward_layer).__name__}."
                )
            contracts.check_backward_layer(base, self.backward_layer, "Bidirectional")
            bw_layer = self.backward_layer
        fw_init = bw_init = None
        if initial_state is not None:
            n, m = len(names), len(bw_names)
            each = base.state_spelling()
            states = list(initial_state) if isinstance(initial_state, (tuple, list)) else [
                initial_state
            ]
            if len(states) != n + m:
                kinds = type(base).__name__ if self.backward_layer is None else (
                    f"{type(base).__name__}, backward_layer={type(self.backward_layer).__name__}")
                raise ValueError(
                    f"Bidirectional({kinds}) expects initial_state with {n + m} "
                    f"arrays (forward states then backward states, {n} + {m}), each {each}; got "
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
        if self.merge_mode in ("sum", "mul", "ave") and fw.shape != bw.shape:
            raise ValueError(
                f"Bidirectional(merge_mode={self.merge_mode!r}) needs forward and backward "
                f"outputs of one shape; got {fw.shape} (layer) and {bw.shape} (backward_layer). "
                "Use merge_mode='concat' or None, or layers with the same units."
            )
        out = _merge(fw, bw, self.merge_mode)
        if base.return_state and self.merge_mode is None:  # Keras: flat (fw, bw, *states)
            return (*out, *fw_states, *bw_states)
        if base.return_state:
            return (out, *fw_states, *bw_states)
        return out

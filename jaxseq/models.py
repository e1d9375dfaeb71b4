"""Ready-made models: a Keras-like `Sequential`, the tutorial's three architectures, seq2seq.

`Sequential` names its layers as Keras does (`lstm`, `dense`, `time_distributed`, `lstm_1`,
...), so parameter paths read like Keras weight names (`params["lstm"]["kernel"]`), and it
passes `deterministic` (Keras' `training`, inverted) and `mask` on to the layers that take
them. A mask follows the time axis: it is dropped once a layer returns no time axis.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxseq import contracts
from jaxseq.contracts import accepts
from jaxseq.layers import Dense
from jaxseq.recurrent import LSTM
from jaxseq.registry import register
from jaxseq.wrappers import RepeatVector, TimeDistributed


def keras_name(cls: type) -> str:
    """Keras' default layer name for a class: `TimeDistributed` -> `time_distributed`,
    `ConvLSTM2D` -> `conv_lstm2d` (Keras' `to_snake_case`, keras/src/utils/naming.py)."""
    name = re.sub(r"\W+", "", cls.__name__)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


@register(keras="Sequential")
class Sequential(nn.Module):
    """Layers applied in order, with Keras names, `deterministic` and `mask` propagation.

    Call: `model(x, *, mask=None, deterministic=True, return_mask=False)`. Plain callables
    (e.g. `nn.relu`) are allowed between layers. A layer with `compute_mask` (`js.Masking`)
    makes the mask the following layers get; `return_mask=True` returns `(y, mask)`, the mask
    that reaches the output (None once the time axis is gone), which `fit` and `evaluate` use
    for the loss as Keras does.
    """

    layers: Sequence

    def __post_init__(self):
        # A list (the Keras habit) is stored as a tuple: the model is then hashable, so an equal
        # model reuses the compiled programs of the first.
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        super().__post_init__()

    @nn.nowrap
    def compute_mask(self, x, mask=None):
        """The mask the leading mask-making layers (`js.Masking`) compute from the inputs x,
        ANDed with `mask` (None when there are none and no mask is given)."""
        for layer in self.layers:
            if not hasattr(layer, "compute_mask"):
                break
            mask = layer.compute_mask(x, mask)
        return mask

    @nn.compact
    def __call__(self, x, *, mask=None, deterministic: bool = True, return_mask: bool = False):
        if not self.layers:
            raise ValueError("Sequential expects at least one layer; got none.")
        for layer, name in zip(self.layers, sequential_names(self.layers), strict=True):
            if isinstance(layer, nn.Module):
                layer = layer.clone(parent=self, name=name, _deep_clone=True)
                kwargs = {}
                if accepts(layer, "deterministic"):
                    kwargs["deterministic"] = deterministic
                if mask is not None and accepts(layer, "mask"):
                    kwargs["mask"] = mask
                new_mask = mask
                if hasattr(layer, "compute_mask"):  # a layer that makes a mask (Masking)
                    new_mask = layer.compute_mask(x, mask)
                x = layer(x, **kwargs)
                mask = new_mask
            else:
                x = layer(x)
            mask = _propagate(mask, x)
        return (x, mask) if return_mask else x


def _propagate(mask, out):
    """The mask that follows a layer's output: kept while the output has the mask's leading
    axes and a time axis; a per-slice mask (batch, time, inner) after a TimeDistributed layer
    whose output lost the inner axis becomes (batch, time): an outer step is real if any of its
    inner steps is (likewise (batch, time, t2, t3) -> (batch, time, t2)); otherwise dropped."""
    if mask is None or getattr(out, "ndim", 0) < 3:
        return None
    if tuple(out.shape[:mask.ndim]) == tuple(mask.shape) and out.ndim > mask.ndim:
        return mask
    if mask.ndim >= 3 and tuple(out.shape[:mask.ndim - 1]) == tuple(mask.shape[:-1]):
        return jnp.any(jnp.asarray(mask).astype(bool), axis=-1)
    return None


def one_to_one(units: int = 5, out_features: int = 1, **lstm) -> Sequential:
    """LSTM(units) + Dense(1): x (n, 1, 1) -> y (n, 1). 140 + 6 parameters for units=5.
    `**lstm`: further LSTM options (e.g. `implementation="scan", unroll=True`)."""
    return Sequential((LSTM(units, **lstm), Dense(out_features)))


def many_to_one(length: int, units: int = 5, **lstm) -> Sequential:
    """LSTM(units) + Dense(length): x (1, length, 1) -> y (1, length), the whole sequence as one
    vector. 140 + 30 parameters for units=5, length=5. `**lstm`: further LSTM options."""
    return Sequential((LSTM(units, **lstm), Dense(length)))


def many_to_many(units: int = 5, out_features: int = 1, **lstm) -> Sequential:
    """LSTM(units, return_sequences=True) + TimeDistributed(Dense(1)): x (1, t, 1) ->
    y (1, t, 1). 140 + 6 parameters for units=5: one Dense shared by every time step.
    `**lstm`: further LSTM options (e.g. `implementation="scan", unroll=True`, which trains
    many replicas of this tiny model faster; README, Performance)."""
    return Sequential(
        (LSTM(units, return_sequences=True, **lstm), TimeDistributed(Dense(out_features)))
    )


def sequential_names(layers: Sequence) -> list[str | None]:
    """The parameter names `Sequential(layers)` gives its layers (None for plain callables):
    `lstm`, `lstm_1`, `dense`, ... by class, or the name a layer was given by hand."""
    counts: dict[str, int] = {}
    names: list[str | None] = []
    for layer in layers:
        if not isinstance(layer, nn.Module):
            names.append(None)
            continue
        base = keras_name(type(layer))
        k = counts.get(base, 0)
        counts[base] = k + 1
        auto = layer.name is None or re.fullmatch(r"layers_\d+", layer.name)
        names.append((base if k == 0 else f"{base}_{k}") if auto else layer.name)
    return names


def seq2seq(units: int, out_length: int, out_features: int, *, in_units: int | None = None
            ) -> Sequential:
    """Keras' encoder-decoder recipe for outputs whose length differs from the input's:
    LSTM(in_units or units) -> RepeatVector(out_length) -> LSTM(units, return_sequences=True)
    -> TimeDistributed(Dense(out_features)). x (b, t_in, f) -> y (b, out_length, out_features).
    Parameter names `lstm`, `repeat_vector` (none), `lstm_1`, `time_distributed`; counts equal
    the Keras model's."""
    for value, name in ((units, "units"), (out_length, "out_length"),
                        (out_features, "out_features")):
        contracts.check_positive_int(value, name, "seq2seq")
    return Sequential((
        LSTM(in_units or units),
        RepeatVector(out_length),
        LSTM(units, return_sequences=True),
        TimeDistributed(Dense(out_features)),
    ))

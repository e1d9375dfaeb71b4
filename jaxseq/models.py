"""Ready-made models: a Keras-like `Sequential`, the tutorial's three architectures.

`Sequential` names its layers as Keras does (`lstm`, `dense`, `time_distributed`, `lstm_1`,
...), so parameter paths read like Keras weight names (`params["lstm"]["kernel"]`), and it
passes `deterministic` (Keras' `training`, inverted) and `mask` on to the layers that take
them. A mask follows the time axis: it is dropped once a layer returns no time axis.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Sequence

import flax.linen as nn

from jaxseq.recurrent import LSTM
from jaxseq.wrappers import TimeDistributed


@functools.cache
def _call_params(cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.__call__).parameters)
    except (TypeError, ValueError):
        return frozenset()


def accepts(module, argument: str) -> bool:
    """Whether `module(x, ...)` takes the keyword `argument` (e.g. "deterministic")."""
    return argument in _call_params(type(module))


def keras_name(cls: type) -> str:
    """Keras' default layer name for a class: `TimeDistributed` -> `time_distributed`."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", cls.__name__).lower()


class Sequential(nn.Module):
    """Layers applied in order, with Keras names, `deterministic` and `mask` propagation.

    Call: `model(x, *, mask=None, deterministic=True)`. Plain callables (e.g. `nn.relu`) are
    allowed between layers.
    """

    layers: Sequence

    @nn.compact
    def __call__(self, x, *, mask=None, deterministic: bool = True):
        if not self.layers:
            raise ValueError("Sequential expects at least one layer; got none.")
        counts: dict[str, int] = {}
        for layer in self.layers:
            if isinstance(layer, nn.Module):
                base = keras_name(type(layer))
                k = counts.get(base, 0)
                counts[base] = k + 1
                # Flax auto-names list members `layers_<i>`; anything else was chosen by the user.
                auto = layer.name is None or re.fullmatch(r"layers_\d+", layer.name)
                name = (base if k == 0 else f"{base}_{k}") if auto else layer.name
                layer = layer.clone(parent=self, name=name, _deep_clone=True)
                kwargs = {}
                if accepts(layer, "deterministic"):
                    kwargs["deterministic"] = deterministic
                if mask is not None and accepts(layer, "mask"):
                    kwargs["mask"] = mask
                x = layer(x, **kwargs)
            else:
                x = layer(x)
            if getattr(x, "ndim", 0) < 3:
                mask = None
        return x


def one_to_one(units: int = 5, out_features: int = 1) -> Sequential:
    """LSTM(units) + Dense(1): x (n, 1, 1) -> y (n, 1). 140 + 6 parameters for units=5."""
    return Sequential((LSTM(units), nn.Dense(out_features)))


def many_to_one(length: int, units: int = 5) -> Sequential:
    """LSTM(units) + Dense(length): x (1, length, 1) -> y (1, length), the whole sequence as one
    vector. 140 + 30 parameters for units=5, length=5."""
    return Sequential((LSTM(units), nn.Dense(length)))


def many_to_many(units: int = 5, out_features: int = 1) -> Sequential:
    """LSTM(units, return_sequences=True) + TimeDistributed(Dense(1)): x (1, t, 1) ->
    y (1, t, 1). 140 + 6 parameters for units=5: one Dense shared by every time step."""
    return Sequential(
        (LSTM(units, return_sequences=True), TimeDistributed(nn.Dense(out_features)))
    )

"""Keras' `TimeDistributed` and `RepeatVector` for linen.

`TimeDistributed(layer)` applies ONE layer, with ONE set of weights, to every time slice of its
input: `nn.vmap` over axis 1 with the parameters broadcast (`variable_axes={"params": None}`),
parameter init not split (`split_rngs={"params": False}`), and dropout split so each time step
draws its own dropout mask (as Keras, which folds time into the batch). Any linen Module works:
Dense, an MLP, a conv net taking (batch, h, w, c) slices of (batch, time, h, w, c).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import contracts
from jaxseq.registry import register
from jaxseq.typing import Array, ArrayLike, Mask


def _collections(layer: nn.Module, x_slice, kwargs: dict) -> tuple[str, ...]:
    """The variable collections `layer` creates on a slice like `x_slice` (traced abstractly;
    nothing runs)."""
    detached = layer.clone(parent=None)
    key = jax.random.PRNGKey(0)
    shapes = jax.eval_shape(
        lambda s: detached.init({"params": key, "dropout": key}, s, **kwargs), x_slice)
    return tuple(shapes)


@register(keras="TimeDistributed")
class TimeDistributed(nn.Module):
    """Keras 3 `TimeDistributed(layer)`: apply `layer` to every time slice, (batch, time,
    *rest) -> (batch, time, *out) (`keras/src/layers/rnn/time_distributed.py`).

    The wrapped layer sees (batch, *rest) slices and keeps one set of parameters (its own
    subtree, `layer`): `TimeDistributed(nn.Dense(1))` after an LSTM(5) has 5 + 1 parameters.
    Keyword arguments (e.g. `deterministic`) go to the layer; `accepts` tells a `Sequential`
    which ones the wrapped layer takes (TimeDistributed itself always takes `mask`).

    Masks (Keras 3, `keras/src/layers/rnn/time_distributed.py`, which passes `mask[:, i]` to the
    layer for slice i):
      - (batch, time, inner_time) for x (batch, time, inner_time, ...): a per-slice mask; slice
        i's layer gets `mask[:, i]` (the layer must take a `mask`); likewise any x.shape[:k]
        with 3 <= k < x.ndim, e.g. (batch, time, t2, t3) for a nested
        `TimeDistributed(TimeDistributed(LSTM))` on (batch, time, t2, t3, features);
      - (batch, time): one flag per outer step (as a Sequential propagates it from an earlier
        layer). It is not the inner layer's mask and is not passed in; it stays the mask of the
        output, so a following recurrent layer skips those steps;
      - any other shape: ValueError.

    Layers without mutable state run under `nn.vmap` over time (dropout split per step, as
    Keras draws per step). Layers with other collections (BatchNorm's `batch_stats`) run under
    `nn.scan` over time with those collections carried: slice after slice, each normalized with
    its own batch moments and the running statistics updated once per step, in order, as Keras
    3 applies the layer to one slice after another.

    Attributes:
      layer: any flax.linen Module taking (batch, *rest) inputs (e.g. `Dense(1)`, an MLP, a
        conv net on (batch, h, w, c) frames); its parameters live under the name "layer".

    Call arguments:
      `wrapper.apply(variables, x, *, mask=None, **kwargs)`:

      - `x`: (batch, time, *rest) array, time >= 1 (at least 3 axes).
      - `mask`: None, an outer (batch, time) mask or a per-slice (batch, time, inner_time)
        mask (above).
      - `**kwargs`: keyword arguments for the wrapped layer (e.g. `deterministic`); dropout
        needs a "dropout" rng and draws its own mask per time step.

    Returns:
      output (jax.Array): (batch, time, *out), slice i the layer's output on `x[:, i]`.

    Raises:
      TypeError: `layer` not a linen Module; a keyword (or a per-slice mask) the layer does
        not take; a float mask.
      ValueError: x with fewer than 3 axes or an empty time axis; a mask of another shape.
    """

    layer: nn.Module

    @nn.nowrap
    def call_arguments(self) -> frozenset[str]:
        """The keyword arguments this wrapper takes: `mask`, and the wrapped layer's."""
        return frozenset({"mask"}) | contracts.call_arguments(self.layer)

    @nn.compact
    def __call__(self, x: ArrayLike, *, mask: Mask | None = None, **kwargs):
        if not isinstance(self.layer, nn.Module):
            raise TypeError(
                f"TimeDistributed expects a flax.linen Module; got {type(self.layer).__name__}."
            )
        x = contracts.as_array(x, "x", "TimeDistributed")  # lists, as every jaxseq layer
        shape = contracts.check_rank_at_least(
            x, 3, "TimeDistributed", "(batch, time, ...) with at least 3 axes"
        )
        if shape[1] < 1:
            raise ValueError(
                f"TimeDistributed expects x of shape (batch, time, ...) with time >= 1; got "
                f"{shape}."
            )
        name = type(self.layer).__name__
        for key in kwargs:
            if not contracts.accepts(self.layer, key):
                raise TypeError(f"TimeDistributed({name}) got {key}=, which {name} does not "
                                "take.")
        inner_mask = self._inner_mask(mask, shape, name)
        args = (x,) if inner_mask is None else (x, inner_mask)

        def call(module, xt, mt=None):
            return module(xt, **kwargs) if mt is None else module(xt, mask=mt, **kwargs)

        others = [c for c in self._layer_collections(x, kwargs) if c != "params"]
        carried = [c for c in others if self.is_mutable_collection(c)]
        if carried:  # slice after slice, the mutated collections carried (Keras' Python loop)
            if self.is_initializing():  # create the variables (init updates no statistics)
                call(self.layer, *(a[:, 0] for a in args))
            scanned = nn.scan(
                lambda module, carry, *a: (carry, call(module, *a)),
                variable_broadcast=["params", *(c for c in others if c not in carried)],
                variable_carry=carried, split_rngs={"params": False, "dropout": True},
                in_axes=1, out_axes=1)
            _, y = scanned(self.layer, None, *args)
        else:  # read-only state (inference) or none: every slice at once
            mapped = nn.vmap(
                call, variable_axes={"params": None, **{c: None for c in others}},
                split_rngs={"params": False, "dropout": True}, in_axes=1, out_axes=1)
            y = mapped(self.layer, *args)
        return y  # (batch, time, ...): vmap/scan's out_axes=1 guarantee both axes

    @nn.nowrap
    def _inner_mask(self, mask, shape, name):
        if mask is None:
            return None
        got = contracts.shape_of(mask)
        if got == tuple(shape[:2]):
            return None  # an outer mask: the output's, not the layer's
        if 3 <= len(got) < len(shape) and got == tuple(shape[:len(got)]):
            if not contracts.accepts(self.layer, "mask"):
                raise TypeError(f"TimeDistributed({name}) got a per-slice mask {got}, but "
                                f"{name} takes no mask.")
            contracts.check_mask_dtype(mask, "TimeDistributed")
            return jnp.asarray(mask).astype(bool)
        inner = f" or (batch, time, inner_time) = {tuple(shape[:3])}" if len(shape) >= 4 else ""
        raise ValueError(f"TimeDistributed expects mask of shape (batch, time) = "
                         f"{tuple(shape[:2])}{inner}; got {got}.")

    @nn.nowrap
    def _layer_collections(self, x, kwargs) -> tuple[str, ...]:
        if not self.is_initializing():
            return tuple(c for c in self.variables if "layer" in self.variables[c])
        xs = jax.ShapeDtypeStruct((x.shape[0], *x.shape[2:]), x.dtype)
        return _collections(self.layer, xs, kwargs)


@register(keras="RepeatVector")
class RepeatVector(nn.Module):
    """Keras 3 `RepeatVector(n)`: repeat each sample's vector n times along a new time axis
    (`keras/src/layers/reshaping/repeat_vector.py`); no parameters. Used to feed a
    many-to-one encoder's output to a decoder that returns sequences.

    Attributes:
      n: int >= 1, the number of repetitions (the output's time length).

    Call arguments:
      `layer.apply(variables, x)`: x (batch, features), any dtype.

    Returns:
      output (jax.Array): (batch, n, features), `output[:, t] == x` for every t; x's dtype.

    Raises:
      TypeError: n not an int.
      ValueError: n < 1; x not of shape (batch, features).
    """

    n: int

    @nn.compact
    def __call__(self, x: ArrayLike) -> Array:
        contracts.check_positive_int(self.n, "n", "RepeatVector")
        shape = contracts.shape_of(x)
        if len(shape) != 2:
            raise ValueError(
                f"RepeatVector expects x of shape (batch, features); got {shape}. "
                "Put it after a layer that returns one vector per sample (e.g. an LSTM with "
                "return_sequences=False)."
            )
        return jnp.broadcast_to(x[:, None, :], (shape[0], self.n, shape[1]))

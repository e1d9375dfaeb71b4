"""Inference that feeds a model its own predictions: `rollout`, stateful step-by-step prediction
of a `Sequential` compiled as one `lax.scan`.

It sits above the layers and the training core: it reads the layers of a `Sequential` (which
are recurrent, which are not causal) and uses the core's compile cache and shape checks.
`predict` and `evaluate`, which need no layer, are in `jaxseq.training.predict`.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import contracts
from jaxseq.contracts import accepts
from jaxseq.models import Sequential, sequential_names
from jaxseq.recurrent import Bidirectional
from jaxseq.rnn import RNN
from jaxseq.training.compile import cached, jit
from jaxseq.training.data import output_shape
from jaxseq.typing import Array
from jaxseq.wrappers import RepeatVector

__all__ = ["rollout", "rollout_program"]


def rollout_program(model: Sequential, steps: int):
    """The pure rollout program for `model` and `steps` (jitted by `rollout`)."""
    names = sequential_names(model.layers)
    layers = []
    for layer, name in zip(model.layers, names, strict=True):
        if isinstance(layer, (Bidirectional, RepeatVector)) or getattr(layer, "go_backwards", 0):
            raise ValueError(
                f"rollout expects causal, step-wise layers (forward recurrent layers, Dense, "
                f"TimeDistributed, callables); got {type(layer).__name__} ({name})."
            )
        if isinstance(layer, RNN):
            layer = layer.clone(parent=None, name=None, return_sequences=True, return_state=True)
        elif isinstance(layer, nn.Module):
            layer = layer.clone(parent=None, name=None)
        layers.append((layer, name))

    def run(params, x, states):
        new_states = []
        for (layer, name), state in zip(layers, states, strict=True):
            if name is None:
                x = layer(x)
                continue
            kwargs = {"deterministic": True} if accepts(layer, "deterministic") else {}
            variables = {"params": params[name]} if name in params else {}
            if isinstance(layer, RNN):
                x, *state = layer.apply(variables, x, initial_state=state, **kwargs)
                state = tuple(state)
            else:
                x = layer.apply(variables, x, **kwargs)
            new_states.append(state)
        return x[:, -1], new_states

    def program(params, prefix):
        none = [None] * len(layers)
        y, states = run(params, prefix, none)

        def step(carry, _):
            y, states = carry
            y_next, states = run(params, y[:, None, :], states)
            return (y_next, states), y

        (last, _), ys = jax.lax.scan(step, (y, states), None, length=steps - 1)
        return jnp.concatenate([jnp.moveaxis(ys, 0, 1), last[:, None]], axis=1)

    return program


def rollout(model: Sequential, params, prefix, steps: int) -> Array:
    """Stateful step-by-step prediction, compiled as one `lax.scan`.

    Runs the model's recurrent layers over `prefix` (b, t, f), keeping their states
    (`return_state=True`); the model's output at the last step is the first prediction. Then,
    `steps - 1` times, the latest prediction is fed back as a one-step input (b, 1, f), each
    recurrent layer continuing from its carried states (`initial_state=`). Works for
    `many_to_many`-style models (recurrent layers + TimeDistributed/Dense head, trained to
    predict the next step) and window models (last recurrent layer without return_sequences
    + Dense). The output must have f features. Returns (b, steps, f).
    """
    where = "rollout"
    if not isinstance(model, Sequential):
        raise TypeError(f"{where} expects a jaxseq Sequential; got {type(model).__name__}.")
    contracts.check_positive_int(steps, "steps", where)
    batch, _, features = contracts.check_sequence_input(prefix, where)
    out = output_shape(model, prefix)
    if out.shape[-1] != features:
        raise ValueError(
            f"{where} feeds predictions back as inputs, so the model must output f={features} "
            f"features per step; it outputs shape (batch, {', '.join(map(str, out.shape[1:]))})."
        )
    fn = cached("rollout", model, steps, build=lambda: jit(rollout_program(model, steps)))
    y = fn(params, jnp.asarray(prefix))
    chex.assert_shape(y, (batch, steps, features))
    return y

"""Input checks shared by every public entry point.

Each check runs on static shapes and dtypes in plain Python, so it fails before JAX traces
anything, and it raises `ValueError` / `TypeError` naming the argument, the expected shape in
named axes (b=batch, t=time, f=features, u=units) and what was given.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax.training import train_state


def shape_of(x) -> tuple[int, ...]:
    """The shape of an array-like, without converting tracers."""
    shape = getattr(x, "shape", None)
    if shape is None:
        shape = np.shape(x)
    return tuple(shape)


def as_array(x, name: str, where: str):
    """x as an array (a jax array stays one; lists become NumPy arrays); None, strings,
    objects and ragged lists are a TypeError naming the argument."""
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"{where} expects {name} to be an array; got {type(x).__name__}.")
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        a = x
    else:
        try:
            a = np.asarray(x)
        except (ValueError, TypeError) as err:
            raise TypeError(f"{where} expects {name} to be an array; got {type(x).__name__} "
                            f"that NumPy cannot make one of ({err}).") from err
    dtype = np.dtype(a.dtype) if str(a.dtype) != "bfloat16" else None
    if dtype is not None and (dtype.hasobject or dtype.kind in "USV"):
        raise TypeError(f"{where} expects {name} with a numeric dtype; got {dtype}.")
    return a


def _is_floating(x) -> bool:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    return np.issubdtype(dtype, np.floating) or str(dtype) == "bfloat16"


def check_sequence_input(x, where: str, *, name: str = "x") -> tuple[int, int, int]:
    """`x` must be a floating array of shape (batch, time, features) with time >= 1."""
    shape = shape_of(x)
    if len(shape) != 3:
        hint = ""
        if len(shape) == 2:
            hint = (" For samples of scalar steps (samples, time), add a trailing feature axis: "
                    "x[..., None]; for a single (time, features) sequence, x[None].")
        if len(shape) == 1:
            hint = " For one sequence of scalars use x[None, :, None]."
        raise ValueError(
            f"{where} expects {name} of shape (batch, time, features); got {shape}.{hint}"
        )
    if shape[1] < 1:
        raise ValueError(
            f"{where} expects {name} of shape (batch, time, features) with time >= 1; got "
            f"{shape} (an empty time axis). Drop empty sequences or pad them to length 1 and "
            "mask the padding."
        )
    if shape[2] < 1:
        raise ValueError(
            f"{where} expects {name} of shape (batch, time, features) with features >= 1; got "
            f"{shape} (an empty feature axis)."
        )
    if not _is_floating(x):
        dtype = getattr(x, "dtype", None)
        raise TypeError(
            f"{where} expects {name} with a floating dtype (float32, bfloat16, ...); got "
            f"dtype {dtype}. Cast it first, e.g. {name}.astype(jnp.float32)."
        )
    return shape


def check_features(features: int, expected: int, where: str, *, name: str = "x") -> None:
    """The feature axis must match the one the parameters were built for."""
    if features != expected:
        raise ValueError(
            f"{where} was built for {expected} input features, but {name} has {features} "
            f"(its last axis). Expected {name} of shape (batch, time, {expected}); pass inputs "
            "with the same feature count as at init, or re-initialize the parameters."
        )


def check_mask(mask, batch: int, time: int, where: str) -> None:
    """`mask` must be bool or integer, of shape (batch, time)."""
    shape = shape_of(mask)
    if shape != (batch, time):
        raise ValueError(
            f"{where} expects mask of shape (batch, time) = ({batch}, {time}); got {shape}."
        )
    check_mask_dtype(mask, where)


def check_mask_dtype(mask, where: str) -> None:
    """A mask is bool or integer (True / nonzero = real step), never float."""
    dtype = getattr(mask, "dtype", None)
    if dtype is None:
        dtype = np.asarray(mask).dtype
    if not (dtype == np.bool_ or np.issubdtype(dtype, np.integer)):
        raise TypeError(
            f"{where} expects mask of dtype bool (True = real step) of shape (batch, time); got "
            f"dtype {dtype}. Use mask.astype(bool)."
        )


def check_state_shapes(
    states: Sequence, expected: Sequence[tuple[int, ...]], names: Sequence[str], where: str, *,
    spelled: str = "(batch, units)",
) -> None:
    """Each initial state must have its expected shape; the count must match. `spelled`: a
    state's shape in named axes, for the messages."""
    if len(states) != len(expected):
        raise ValueError(
            f"{where} expects initial_state with {len(expected)} array(s) "
            f"({', '.join(names)}), each of shape {spelled}; got {len(states)}."
        )
    for state, shape, state_name in zip(states, expected, names, strict=True):
        got = shape_of(state)
        if got != tuple(shape):
            raise ValueError(
                f"{where} expects initial_state {state_name} of shape {spelled} = "
                f"{tuple(shape)}; got {got}."
            )


def check_rank_at_least(x, rank: int, where: str, expected: str, *, name: str = "x") -> tuple:
    shape = shape_of(x)
    if len(shape) < rank:
        raise ValueError(f"{where} expects {name} of shape {expected}; got {shape}.")
    return shape


def check_floating(x, where: str, *, name: str = "x") -> None:
    if not _is_floating(x):
        raise TypeError(
            f"{where} expects {name} with a floating dtype (float32, bfloat16, ...); got dtype "
            f"{getattr(x, 'dtype', None)}. Cast it first, e.g. {name}.astype(jnp.float32).")


def check_positive_int(value, name: str, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where} expects {name} to be a positive int; got {value!r}.")
    if value < 1:
        raise ValueError(f"{where} expects {name} >= 1; got {value}.")


def check_rates(module, names: Sequence[str], where: str) -> None:
    """Each of `module`'s fields `names` (dropout rates) must be in [0, 1)."""
    for name in names:
        rate = getattr(module, name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{where} expects {name} in [0, 1); got {rate}.")


def check_path(path, name: str, where: str) -> str:
    """A file or directory path: a non-empty `str` or `os.PathLike` of str -> the str path.
    bytes paths are refused (their text would become part of the file name)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(text, str):
        hint = " (decode it to str first)" if isinstance(text, bytes) else ""
        raise TypeError(f"{where} expects {name} to be a path (str or os.PathLike); got "
                        f"{type(path).__name__}{hint}.")
    if not text:
        raise ValueError(f"{where} expects {name} to be a path; got an empty string.")
    return text


def check_choice(value, choices: Sequence, name: str, where: str) -> None:
    if value not in choices:
        raise ValueError(
            f"{where} expects {name} to be one of {', '.join(map(repr, choices))}; got {value!r}."
        )


@functools.cache
def _call_params(cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.__call__).parameters)
    except (TypeError, ValueError):
        return frozenset()


def call_arguments(module) -> frozenset[str]:
    """The keyword arguments `module(x, ...)` takes: a wrapper's `call_arguments()` when it
    defines one (it forwards to the wrapped layer), else its `__call__` signature."""
    hook = getattr(module, "call_arguments", None)
    if callable(hook):
        return hook()
    return _call_params(type(module))


def accepts(module, argument: str) -> bool:
    """Whether `module(x, ...)` takes the keyword `argument` (e.g. "deterministic", "mask")."""
    return argument in call_arguments(module)


def check_spatial_sequence_input(x, axes: Sequence[str], where: str, *, name: str = "x"
                                 ) -> tuple[int, ...]:
    """`x` must be a floating array of shape (batch, time, *axes, channels), every axis >= 1;
    `axes` names the spatial axes (e.g. ("rows", "cols")). Returns the shape."""
    spelled = f"(batch, time, {', '.join(axes)}, channels)"
    shape = shape_of(x)
    if len(shape) != len(axes) + 3:
        hint = ""
        if len(shape) == len(axes) + 2:
            hint = (" A single channel needs its own trailing axis: x[..., None]; one sequence "
                    "needs a batch axis: x[None].")
        raise ValueError(f"{where} expects {name} of shape {spelled} ({len(axes) + 3} axes); "
                         f"got {shape} ({len(shape)} axes).{hint}")
    empty = [n for n, d in zip(("batch", "time", *axes, "channels"), shape, strict=True) if d < 1]
    if empty:
        raise ValueError(f"{where} expects {name} of shape {spelled} with every axis >= 1; got "
                         f"{shape} (empty {', '.join(empty)}).")
    if not _is_floating(x):
        raise TypeError(
            f"{where} expects {name} with a floating dtype (float32, bfloat16, ...); got dtype "
            f"{getattr(x, 'dtype', None)}. Cast it first, e.g. {name}.astype(jnp.float32).")
    return shape


def check_backward_layer(layer, backward, where: str) -> None:
    """Keras' `Bidirectional._verify_layer_config` (`keras/src/layers/rnn/bidirectional.py`),
    with Keras' messages: `backward` runs the other way (`go_backwards` differs) and agrees with
    `layer` in `stateful`, `return_sequences` and `return_state`."""
    if layer.go_backwards == backward.go_backwards:
        raise ValueError(
            f"{where}: Forward layer and backward layer should have different `go_backwards` "
            f"value. Received: forward_layer.go_backwards {layer.go_backwards}, "
            f"backward_layer.go_backwards={backward.go_backwards}"
        )
    for a in ("stateful", "return_sequences", "return_state"):
        forward_value, backward_value = getattr(layer, a, False), getattr(backward, a, False)
        if forward_value != backward_value:
            raise ValueError(
                f"{where}: Forward layer and backward layer are expected to have the same value "
                f'for attribute "{a}", got "{forward_value}" for forward layer and '
                f'"{backward_value}" for backward layer'
            )


def as_variables(state_or_variables, where: str) -> dict:
    """A TrainState, a variables dict (`{"params": ..., "batch_stats": ...}`) or a bare params
    dict -> the variables dict a model applies."""
    if isinstance(state_or_variables, train_state.TrainState):
        return {"params": state_or_variables.params,
                **getattr(state_or_variables, "model_state", {})}
    if not hasattr(state_or_variables, "keys"):
        raise TypeError(f"{where} expects params (a dict of arrays), a variables dict or a "
                        f"TrainState; got {type(state_or_variables).__name__}.")
    if "params" in state_or_variables:
        return dict(state_or_variables)
    return {"params": state_or_variables}


# Several inputs. A model's inputs `x` are one array, or a tuple (a list is taken as one) of
# arrays passed to `model.__call__` positionally, or a dict of arrays passed as keyword
# arguments (Keras' lists and dicts of inputs). Everything that batches, shuffles, splits or
# caches the inputs maps over this pytree; `call_inputs` is the one place that unpacks it.

RESERVED_INPUT_NAMES = ("mask", "deterministic", "return_mask", "rngs", "mutable")


def is_several(x) -> bool:
    """Whether x holds several inputs: a dict, or a tuple/list with at least one array (an
    object with `shape` and `dtype`) among its items. A nested list of numbers is one input."""
    if isinstance(x, dict):
        return True
    return isinstance(x, (tuple, list)) and any(
        hasattr(a, "shape") and hasattr(a, "dtype") for a in x)


def input_items(x, name: str = "x") -> list[tuple[str, Any]]:
    """[(label, array)]: ("x", x) for one input; ("x[0]", ...), ... or ("x['enc']", ...)."""
    if isinstance(x, dict):
        return [(f"{name}[{k!r}]", v) for k, v in x.items()]
    if isinstance(x, (tuple, list)) and is_several(x):
        return [(f"{name}[{i}]", v) for i, v in enumerate(x)]
    return [(name, x)]


def as_inputs(x, name: str, where: str):
    """x -> one array (`as_array`), a tuple of arrays (from a tuple or list) or a dict of
    arrays (str keys); each item checked as an array and named in errors (x[1], x['dec'])."""
    if not is_several(x):
        return as_array(x, name, where)
    if isinstance(x, dict):
        bad = [k for k in x if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise TypeError(f"{where} expects {name} as a dict keyed by the model's argument "
                            f"names (str); got the key {bad[0]!r}.")
        clash = [k for k in x if k in RESERVED_INPUT_NAMES]
        if clash:
            raise ValueError(f"{where}: {name} has the key {clash[0]!r}, a keyword the training "
                             f"core passes itself; rename that argument of the model.")
        return {k: as_array(v, f"{name}[{k!r}]", where) for k, v in x.items()}
    return tuple(as_array(v, f"{name}[{i}]", where) for i, v in enumerate(x))


def input_samples(x, where: str, name: str = "x") -> int:
    """The samples (axis 0) of every input, equal -> that count; else a ValueError naming
    the input that differs, its shape and the expected count."""
    items = input_items(x, name)
    n = None
    for label, a in items:
        shape = shape_of(a)
        if not shape:
            raise ValueError(f"{where} expects {label} with a batch axis (samples, ...); got "
                             f"shape {shape}.")
        if n is None:
            n, first = shape[0], label
        elif shape[0] != n:
            raise ValueError(f"{where} expects every input with the same number of samples "
                             f"(axis 0): {n}, as {first}; got {label} of shape {shape}.")
    return n


def call_inputs(fn, x, *before, **kwargs):
    """fn(*before, x, **kwargs) for one input; fn(*before, *x, **kwargs) for a tuple or list;
    fn(*before, **x, **kwargs) for a dict (e.g. `call_inputs(model.apply, x, variables)`)."""
    if isinstance(x, dict):
        return fn(*before, **x, **kwargs)
    if isinstance(x, (tuple, list)) and is_several(x):
        return fn(*before, *x, **kwargs)
    return fn(*before, x, **kwargs)


def check_input_count(module, x, where: str, name: str = "x") -> None:
    """When `type(module).__call__`'s signature says so (no *args / **kwargs hiding it), the
    inputs must match it: a tuple's length within its positional parameters (none of them a
    keyword the training core passes, such as `mask`), a dict's keys among its parameters and
    covering the required ones. A signature that cannot be read is not checked."""
    try:
        params = list(inspect.signature(type(module).__call__).parameters.values())[1:]
    except (TypeError, ValueError):
        return
    kinds = inspect.Parameter
    positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY,
                                                  kinds.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in positional if p.default is p.empty]
    model = type(module).__name__
    takes = f"{model}.__call__ takes {len(required)} input(s) ({', '.join(required)})"
    if isinstance(x, dict):
        if any(p.kind is kinds.VAR_KEYWORD for p in params):
            return
        names = {p.name for p in params if p.kind is not kinds.POSITIONAL_ONLY}
        unknown = sorted(set(x) - names)
        missing = [r for r in required if r not in x]
        if unknown or missing:
            what = (f"{name}[{unknown[0]!r}] is not an argument of it" if unknown
                    else f"{name} has no {missing[0]!r}")
            raise ValueError(f"{where}: {takes}; {what}. Key the dict by those names.")
        return
    count = len(x) if isinstance(x, (tuple, list)) and is_several(x) else 1
    if any(p.kind is kinds.VAR_POSITIONAL for p in params):
        if count < len(required):
            raise ValueError(f"{where}: {takes} or more; got {count} input(s).")
        return
    if not len(required) <= count <= len(positional):
        raise ValueError(f"{where}: {takes}; got {count} input(s). Pass them as a tuple "
                         f"{name}=({', '.join(required)}) in that order, or a dict keyed by "
                         "those names.")
    clash = [p.name for p in positional[:count] if p.name in RESERVED_INPUT_NAMES]
    if clash:
        raise ValueError(f"{where}: {takes}; {count} inputs would fill its {clash[0]!r} "
                         "argument. Pass fewer inputs.")


def input_spec(x):
    """x's structure with a `jax.ShapeDtypeStruct` per input (one array: one struct)."""
    import jax

    def spec(a):
        dtype = getattr(a, "dtype", None)
        return jax.ShapeDtypeStruct(shape_of(a), dtype if dtype is not None else
                                    np.asarray(a).dtype)

    if isinstance(x, dict):
        return {k: spec(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)) and is_several(x):
        return tuple(spec(v) for v in x)
    return spec(x)


def input_key(x) -> tuple:
    """A hashable key of the inputs' structure, shapes and dtypes (for caches)."""
    return tuple((label, s.shape, str(s.dtype)) for label, s in input_items(input_spec(x)))

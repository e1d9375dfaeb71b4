"""Data checks: (x, y, sample_weight, mask) -> one checked `Batch`, before anything is traced.

Every public entry point (`fit`, `fit_replicas`, `evaluate`, `predict`) checks its arrays here,
in plain NumPy on static shapes, and raises ValueError/TypeError naming the argument, the
expected shape in named axes and what was given. Nothing is broadcast or truncated silently.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxseq import contracts
from jaxseq.training.compile import cached_shape
from jaxseq.typing import STATE_COLLECTION, ArrayLike


class Batch(NamedTuple):
    """The arrays of one data set or mini-batch (leading axis: samples).

    x: (batch, ...) inputs; y: (batch, ...) targets shaped like the model's output;
    sample_weight: (batch,) per-sample or (batch, time) per-step loss weights, float32;
    mask: (batch, time) bool input mask (True = real step), or None; starts: (batch,) bool,
    True for the samples whose window starts a new stream (a stateful model's kept state of
    that row is zeroed before the step that trains on it), or None.
    """

    x: Any
    y: Any
    sample_weight: Any
    mask: Any = None
    starts: Any = None


def _dtype(a):
    dtype = getattr(a, "dtype", None)
    return np.asarray(a).dtype if dtype is None else dtype


def _is_floating(dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or str(dtype) == "bfloat16"


def output_shape(model, x) -> Any:
    """The model's output shape/dtype for inputs shaped like x (one array, a tuple or a dict
    of them; traced once per shapes, cached)."""
    return cached_shape(
        "out", model, contracts.input_key(x),
        build=lambda: jax.eval_shape(lambda s: contracts.call_inputs(
            model.init_with_output, s, jax.random.PRNGKey(0))[0], contracts.input_spec(x)),
    )


def _check_finite(a, name: str, where: str, mask) -> None:
    """Finite values required where they count: everywhere, or at unmasked steps when a mask
    (batch, time) covers the array's first two axes (padding may hold anything)."""
    a = np.asarray(a, np.float32) if str(_dtype(a)) == "bfloat16" else np.asarray(a)
    finite = np.isfinite(a)
    if mask is not None and a.ndim >= 2 and a.shape[:2] == mask.shape:
        finite = finite | ~mask.reshape(mask.shape + (1,) * (a.ndim - 2))
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        at = " at unmasked steps" if mask is not None else ""
        raise ValueError(f"{where} expects finite {name}; {name} has {bad} NaN/Inf value(s)"
                         f"{at}. Clean or impute the data first, or mask those steps.")


def check_xy(model, x, y, *, where: str = "fit", name_x="x", name_y="y", mask=None) -> None:
    """x (one array, or several inputs: a tuple or dict) and y: same number of samples (>= 1),
    floating, finite (outside the mask), and y shaped exactly like the model's output for x."""
    several = contracts.is_several(x)
    xs, ys = (contracts.shape_of(x) if not several else (contracts.input_samples(
        x, where, name_x),)), contracts.shape_of(y)
    if len(xs) < 1 or len(ys) < 1:
        raise ValueError(f"{where} expects {name_x} and {name_y} with a batch axis; got "
                         f"{name_x} {xs} and {name_y} {ys}.")
    if several and xs[0] != ys[0]:
        raise ValueError(f"{where} expects {name_y} with the samples of the inputs (axis 0): "
                         f"{xs[0]}; got {name_y} {ys}.")
    if xs[0] != ys[0]:
        raise ValueError(
            f"{where} expects {name_x} and {name_y} with the same number of samples (axis 0); "
            f"got {name_x} {xs} and {name_y} {ys}.")
    if xs[0] < 1:
        raise ValueError(f"{where} expects at least one sample; got {name_x} of shape {xs}.")
    for name, arr in (*contracts.input_items(x, name_x), (name_y, y)):
        if not _is_floating(_dtype(arr)):
            raise TypeError(f"{where} expects {name} with a floating dtype; got {_dtype(arr)}. "
                            f"Cast it, e.g. {name}.astype(np.float32).")
        _check_finite(arr, name, where, mask)
    out = output_shape(model, x)
    if not hasattr(out, "shape"):
        raise TypeError(f"{where} expects a model with one array output; got {out}.")
    if tuple(out.shape[1:]) != tuple(ys[1:]):
        expected = "(" + ", ".join(["n", *map(str, out.shape[1:])]) + ")"
        raise ValueError(
            f"{where}: the model outputs shape (batch, {', '.join(map(str, out.shape[1:]))}) per "
            f"batch, so {name_y} must have shape {expected}; got {name_y} {ys}. Reshape {name_y} "
            "(nothing is broadcast), or change the model's output layer.")


def check_mask(model, x, mask, where: str):
    """mask (batch, time) bool/int for x (batch, time, ...), for a model that takes `mask`
    -> a bool NumPy array, or None. With several inputs, the one mask is shared by those with
    a time axis (rank >= 3: (batch, time, features)), which must have the same length."""
    if mask is None:
        return None
    if contracts.is_several(x):
        timed = [(label, contracts.shape_of(a)) for label, a in contracts.input_items(x)
                 if len(contracts.shape_of(a)) >= 3]
        if not timed:
            raise ValueError(f"{where} got a mask, but no input has a time axis (batch, time, "
                             "features).")
        other = [(label, s) for label, s in timed if s[1] != timed[0][1][1]]
        if other:
            raise ValueError(
                f"{where}: the mask (batch, time) is shared by every input with a time axis, "
                f"so they need one length; {timed[0][0]} has {timed[0][1][1]} steps, "
                f"{other[0][0]} {other[0][1][1]}. Pass per-input masks as inputs instead.")
        xs = timed[0][1]
    else:
        xs = contracts.shape_of(x)
    if len(xs) < 2:
        raise ValueError(f"{where} got a mask, but x {xs} has no time axis.")
    contracts.check_mask(mask, xs[0], xs[1], where)
    if not contracts.accepts(model, "mask"):
        raise TypeError(
            f"{where} got a mask, but {type(model).__name__}.__call__ takes no mask argument. "
            "Use jaxseq.Sequential (it passes the mask to its recurrent layers).")
    return np.asarray(mask).astype(bool)


def real_steps(model, x, mask):
    """The steps whose values count, (batch, time) bool or None (all): the given (checked)
    mask, ANDed with the one the model computes from x itself (`js.Masking`)."""
    if (hasattr(model, "compute_mask") and not contracts.is_several(x)
            and len(contracts.shape_of(x)) == 3):
        computed = model.compute_mask(x, mask)
        return None if computed is None else np.asarray(computed, bool)
    return mask


def check_sample_weight(sample_weight, y, where: str, name: str = "sample_weight"):
    """(batch,) per sample, or (batch, time) per step when y is (batch, time, features) ->
    float32 NumPy weights ((batch,) ones when None)."""
    ys = contracts.shape_of(y)
    n = ys[0]
    if sample_weight is None:
        return np.ones((n,), np.float32)
    try:
        w = np.asarray(sample_weight, np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where} expects {name} to be an array of non-negative numbers; got "
                        f"{sample_weight!r}.") from err
    allowed = [(n,)] + ([(n, ys[1])] if len(ys) == 3 else [])
    if w.shape not in allowed:
        per_step = f" or (batch, time) = {allowed[1]}" if len(allowed) > 1 else ""
        raise ValueError(f"{where} expects {name} of shape (batch,) = ({n},){per_step}; got "
                         f"{w.shape}. Nothing is broadcast: reshape it.")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{where} expects finite, non-negative {name}.")
    return w


def check_batch(model, x, y, sample_weight=None, mask=None, *, where: str = "fit",
                names=("x", "y", "sample_weight")) -> Batch:
    """Every check of (x, y, sample_weight, mask) -> a `Batch` of NumPy arrays."""
    x = contracts.as_inputs(x, names[0], where)
    y = contracts.as_array(y, names[1], where)
    x = jax.tree.map(lambda a: a if str(_dtype(a)) == "bfloat16" else np.asarray(a), x)
    contracts.check_input_count(model, x, where, names[0])
    m = check_mask(model, x, mask, where)
    check_xy(model, x, y, where=where, name_x=names[0], name_y=names[1],
             mask=real_steps(model, x, m))
    w = check_sample_weight(sample_weight, y, where, names[2])
    return Batch(x, y, w, m)


def keeps_states(model, x) -> bool:
    """Whether the model, on inputs like x, has stateful layers (a "rnn_state" collection)."""
    return cached_shape("keeps_states", model, contracts.input_key(x),
                        build=lambda: STATE_COLLECTION in jax.eval_shape(
                            lambda s: contracts.call_inputs(model.init, s,
                                                            jax.random.PRNGKey(0)),
                            contracts.input_spec(x)))


def check_stream_starts(model, data: Batch, starts, where: str) -> Batch:
    """`stream_starts` (samples,) bool for a model with stateful layers -> `data` with it."""
    if starts is None:
        return data
    n = num_samples(data.x)
    a = contracts.as_array(starts, "stream_starts", where)
    if np.dtype(a.dtype) != np.bool_:
        raise TypeError(f"{where} expects stream_starts as a bool array (True where a sample's "
                        f"window starts a new stream); got dtype {a.dtype}. Use "
                        "starts.astype(bool).")
    if contracts.shape_of(a) != (n,):
        raise ValueError(f"{where} expects stream_starts of shape (samples,) = ({n},), one "
                         f"flag per sample; got {contracts.shape_of(a)}.")
    if not keeps_states(model, data.x):
        raise ValueError(f"{where}: stream_starts resets the states that stateful layers keep "
                         "(stateful=True); this model keeps none.")
    return data._replace(starts=np.asarray(a))


def check_validation(model, validation_data, where: str) -> Batch | None:
    """`validation_data` = (x, y), (x, y, sample_weight) or (x, y, sample_weight, mask)."""
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or not 2 <= len(validation_data) <= 4:
        got = (f"{len(validation_data)} item(s)" if isinstance(validation_data, (tuple, list))
               else type(validation_data).__name__)
        raise ValueError(f"{where} expects validation_data=(x_val, y_val[, sample_weight"
                         f"[, mask]]); got {got}.")
    xv, yv, *rest = validation_data
    sw = rest[0] if rest else None
    mv = rest[1] if len(rest) > 1 else None
    return check_batch(model, xv, yv, sw, mv, where=where,
                       names=("x_val", "y_val", "validation sample_weight"))


def split_validation(data: Batch, fraction, where: str) -> tuple[Batch, Batch]:
    """Keras' `validation_split`: the last `fraction` of the samples (before any shuffling)
    validate, the first `floor(n * (1 - fraction))` train."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
            0.0 < fraction < 1.0):
        raise ValueError(f"{where} expects validation_split in (0, 1); got {fraction!r}.")
    n = num_samples(data.x)
    split = int(math.floor(n * (1.0 - fraction)))
    if split < 1 or split >= n:
        raise ValueError(f"{where}: validation_split={fraction} leaves {split} training and "
                         f"{n - split} validation sample(s) of {n}; both need at least one.")
    head = Batch(*(None if a is None else jax.tree.map(lambda v: v[:split], a) for a in data))
    tail = Batch(*(None if a is None else jax.tree.map(lambda v: v[split:], a) for a in data))
    return head, tail


def as_device(batch: Batch | None) -> Batch | None:
    """NumPy arrays -> jax arrays (None stays None); `device_put` compiles nothing."""
    if batch is None:
        return None
    return jax.device_put(batch)


def num_samples(a: ArrayLike) -> int:
    """The samples (axis 0) of an array, or of the first of several inputs."""
    return contracts.shape_of(jax.tree.leaves(a)[0])[0]


def _expected_params(model, x):
    return cached_shape("params_spec", model, contracts.input_key(x),
                        build=lambda: jax.eval_shape(lambda s: contracts.call_inputs(
                            model.init, s, jax.random.PRNGKey(0)), contracts.input_spec(x)
                        ).get("params", {}))


def check_params(model, params, x, where: str, *, replicas: bool = False) -> None:
    """`params` must be the parameter tree this model builds for inputs like x (with a leading
    replica axis when `replicas`): else a ValueError naming the first mismatching path and both
    shapes (not flax's scope error)."""
    want = dict(jax.tree_util.tree_flatten_with_path(_expected_params(model, x))[0])
    if replicas:
        got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
        same = [p for p, spec in want.items()
                if p in got and tuple(np.shape(got[p])) == tuple(spec.shape)]
        if same and len(same) == len(want):
            raise ValueError(f"{where} expects the stacked params or states of fit_replicas "
                             "(a leading replica axis on every leaf); got one model's params. "
                             "Train replicas with js.fit_replicas, or score one model with "
                             "js.evaluate.")
        want = {p: jax.ShapeDtypeStruct((np.shape(got[p])[0] if p in got and np.ndim(got[p])
                                         else 0, *spec.shape), spec.dtype)
                for p, spec in want.items()}
    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    name = lambda path: "/".join(str(getattr(k, "key", k)) for k in path)
    for path, spec in want.items():
        if path not in got:
            problem = f"params have no {name(path)!r} (the model needs shape {spec.shape})"
        elif tuple(np.shape(got[path])) != tuple(spec.shape):
            problem = (f"{name(path)!r}: params have shape {tuple(np.shape(got[path]))}, the "
                       f"model needs {tuple(spec.shape)}")
            if tuple(np.shape(got[path]))[1:] == tuple(spec.shape):
                problem += (" (a leading replica axis: these are fit_replicas' stacked params; "
                            "take one with jax.tree.map(lambda a: a[i], params), or use "
                            "js.skill)")
        else:
            continue
        _check_features_fit(model, params, x, where, replicas)
        raise ValueError(f"{where}: the params do not fit this model: {problem}. Pass the "
                         "params (or the state) trained for this model, built with the same "
                         "units and layers.")
    extra = [name(p) for p in got if p not in want]
    if extra:
        raise ValueError(f"{where}: the params do not fit this model: {extra[0]!r} is not a "
                         "parameter of it. Pass the params trained for this model.")


def _check_features_fit(model, params, x, where: str, replicas: bool) -> None:
    """When params that do not fit the model for x WOULD fit it for x with another number of
    features (the last axis), the fault is x: say so (called on the error path only)."""
    shape = contracts.shape_of(x)
    if not shape or contracts.is_several(x):
        return
    got = jax.tree_util.tree_flatten_with_path(params)[0]
    sizes = sorted({int(d) for _, leaf in got for d in np.shape(leaf)[int(replicas):]} - {
        shape[-1]})
    for features in sizes:
        other = jax.ShapeDtypeStruct((*shape[:-1], features), _dtype(x))
        try:
            want = _expected_params(model, other)
        except Exception:  # noqa: BLE001 - a candidate the model cannot take
            continue
        fits = jax.tree.structure(want) == jax.tree.structure(params) and all(
            tuple(np.shape(a))[int(replicas):] == tuple(b.shape)
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True))
        if fits:
            raise ValueError(f"{where}: x has {shape[-1]} features (its last axis; x has shape "
                             f"{shape}), but the params were trained for inputs with {features}. "
                             f"Pass x with {features} features, as in training.")


def warn_non_finite(x, mask, where: str) -> None:
    """Warn (not raise: padding may hold anything) when x (or one of several inputs) has
    NaN/Inf at unmasked steps."""
    if contracts.is_several(x):
        for _, a in contracts.input_items(x):
            warn_non_finite(a, mask, where)
        return
    if isinstance(x, jax.core.Tracer):
        return
    a = np.asarray(x, np.float32) if str(_dtype(x)) == "bfloat16" else np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        return
    bad = ~np.isfinite(a)
    if mask is not None and a.ndim >= 2 and a.shape[:2] == np.shape(mask):
        bad &= np.asarray(mask, bool).reshape(np.shape(mask) + (1,) * (a.ndim - 2))
    samples = int(np.any(bad.reshape(a.shape[0], -1), axis=1).sum()) if a.size else 0
    if samples:
        import warnings

        warnings.warn(f"{where}: {samples} sample(s) of x hold NaN/Inf at unmasked steps; their "
                      "outputs will not be finite. Clean the data, or mask those steps.",
                      RuntimeWarning, stacklevel=3)

"""Whole-model files: `save_model(path, model, variables)` / `load_model(path)`.

One msgpack file (flax's array encoding; no pickle, no code executed on load) holds a header
{"format": "jaxseq.model", "version": `VERSION`, "sha256": the payload's digest, "payload"},
and in the payload:
  - "architecture": the model as JSON: for each module its jaxseq class name and its
    dataclass fields (numbers, strings, dtypes by name, activations by Keras name, nested
    modules); initializers are not stored (the weights replace what they would draw);
  - "variables": every variable collection (params, batch_stats, rnn_state), flat by path;
  - "input": the shape of one sample and the dtype, when `save_model` was given `x`.
`load_model` verifies the digest, validates the architecture record node by node, rebuilds the
model from the registry of layer kinds (`jaxseq.registry`: jaxseq's layers and `Sequential`,
flax's Dense / Dropout / BatchNorm, and any kind registered there), so a fresh process needs no
model code, and with a recorded input checks the
weights against the model. A file written by a newer format version, or one that is corrupt,
changed or foreign, is refused with a ValueError; version 1 files (no digest) are read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseq import contracts, registry
from jaxseq._trees import (
    check_tree,
    flatten,
    host_arrays,
    nest,
    read_msgpack,
    unflatten,
    write_msgpack,
)
from jaxseq.activations import ACTIVATIONS
from jaxseq.typing import STATE_COLLECTION

PARAMS_FORMAT = "jaxseq.params"
PARAMS_VERSION = 2  # 2: the payload travels with its SHA-256 digest
FORMAT = "jaxseq.model"
VERSION = 2  # 2: payload with its SHA-256 digest; the input spec


def _encode(value, where: str):
    if isinstance(value, nn.Module):
        return _module(value, where)
    if isinstance(value, (list, tuple)):
        return {"__seq__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        return {"__dtype__": jnp.dtype(value).name}
    except TypeError:
        pass
    for name, fn in ACTIVATIONS.items():
        if fn is value:
            return {"__activation__": name}
    raise TypeError(f"save_model: {where} is {value!r}, which a model file cannot hold. Use "
                    "Keras activation names (e.g. activation='relu') and jaxseq/flax layers.")


def _known() -> list[str]:
    return sorted(k.name for k in registry.kinds())


def _module(module: nn.Module, where: str) -> dict:
    kind = registry.kind_of(module)
    if kind is None:
        raise TypeError(f"save_model: {where} is a {type(module).__name__}; model files hold "
                        f"jaxseq's layers ({_known()}, the kinds of jaxseq.registry). Register "
                        "the class there, or save the weights with js.save_params and rebuild "
                        "the model in code instead.")
    recorded = set(kind.record_fields())
    fields = {}
    for f in dataclasses.fields(module):
        if f.name not in recorded:
            continue
        value = getattr(module, f.name)
        if f.default is not dataclasses.MISSING and value is f.default:
            continue
        fields[f.name] = _encode(value, f"{where}.{f.name}")
    return {"__module__": kind.name, "fields": fields}


_SIMPLE = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
           "None": (type(None),), "NoneType": (type(None),), "nn.Module": (nn.Module,)}
_POSITIVE = frozenset({"units", "filters", "n", "features"})  # counts: >= 1
_RATES = frozenset({"dropout", "recurrent_dropout", "rate"})  # fractions: [0, 1]


def _annotations(cls) -> dict[str, str]:
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        for name, ann in getattr(klass, "__annotations__", {}).items():
            out[name] = ann.__name__ if isinstance(ann, type) else str(ann)
    return out


def _check_field(cls, name: str, value, annotation: str | None, where: str) -> None:
    """A decoded field value must have its annotated type (when the annotation is a union of
    simple types) and, for counts and rates, a value in range."""
    tokens = [t.strip() for t in (annotation or "").split("|")]
    kinds = [_SIMPLE.get(t) for t in tokens]
    if annotation and all(kinds):
        allowed = tuple(k for ks in kinds for k in ks)
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            raise ValueError(f"{where}.{name} is {value!r}; a {cls.__name__} takes {annotation}.")
    if name in _POSITIVE and isinstance(value, int) and value < 1:
        raise ValueError(f"{where}.{name} is {value}; a {cls.__name__} needs {name} >= 1.")
    if name in _RATES and isinstance(value, (int, float)) and not 0 <= value <= 1:
        raise ValueError(f"{where}.{name} is {value}; a {cls.__name__} needs {name} in [0, 1].")


def _decode(value, where: str):
    """The JSON architecture record -> modules and values, every node checked: known layer
    names, known fields of the right types and ranges, well-formed tags."""
    if isinstance(value, list):
        raise ValueError(f"{where} is a bare list; the record stores sequences as __seq__.")
    if not isinstance(value, dict):
        return value
    if "__module__" in value:
        name, fields = value.get("__module__"), value.get("fields")
        kind = registry.by_name(name) if isinstance(name, str) else None
        if kind is None:
            raise ValueError(f"{where}: unknown layer {name!r} (this jaxseq knows "
                             f"{_known()}).")
        cls = kind.cls
        if set(value) != {"__module__", "fields"} or not isinstance(fields, dict):
            raise ValueError(f"{where}: a {name} record has keys {sorted(value)}; expected "
                             "__module__ and fields.")
        known = set(kind.record_fields())
        annotations = _annotations(cls)
        kwargs = {}
        for field, raw in fields.items():
            if field not in known:
                raise ValueError(f"{where}: {name} has no field {field!r}.")
            kwargs[field] = _decode(raw, f"{where}.{field}")
            _check_field(cls, field, kwargs[field], annotations.get(field), where)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {name}({kwargs}) cannot be built: {err}") from err
    tags = [k for k in ("__seq__", "__dtype__", "__activation__") if k in value]
    if len(tags) != 1 or len(value) != 1:
        raise ValueError(f"{where}: an unknown record {str(value)[:60]!r}.")
    tag, inner = tags[0], value[tags[0]]
    if tag == "__seq__":
        if not isinstance(inner, list):
            raise ValueError(f"{where}: __seq__ holds {type(inner).__name__}, not a list.")
        return tuple(_decode(v, f"{where}[{i}]") for i, v in enumerate(inner))
    if tag == "__dtype__":
        try:
            return jnp.dtype(inner)
        except TypeError as err:
            raise ValueError(f"{where}: unknown dtype {inner!r}.") from err
    if not isinstance(inner, str) or inner not in ACTIVATIONS:
        raise ValueError(f"{where}: unknown activation {inner!r}.")
    return inner


def _input_spec(x) -> dict | None:
    """{"shape", "dtype"} of one sample; several inputs: {"inputs": [...]} (a tuple or list)
    or {"named": {name: ...}} (a dict)."""
    if x is None:
        return None
    if isinstance(x, dict) and contracts.is_several(x):
        return {"named": {str(k): _input_spec(v) for k, v in x.items()}}
    if contracts.is_several(x):
        return {"inputs": [_input_spec(v) for v in x]}
    shape = contracts.shape_of(x)
    if not shape:
        raise ValueError(f"save_model expects x with a batch axis; got shape {shape}.")
    dtype = getattr(x, "dtype", None)
    dtype = jnp.dtype(dtype if dtype is not None else contracts.as_array(x, "x",
                                                                          "save_model").dtype)
    return {"shape": list(shape[1:]), "dtype": dtype.name}


def save_model(path: str | os.PathLike, model: nn.Module, variables, *, x=None) -> None:
    """Write `model` (jaxseq layers/builders) and its variables to one file at `path`.

    Args:
      path: a file path (str or os.PathLike).
      model: the linen Module, built from registered layer kinds (`jaxseq.registry`).
      variables: a variables dict, a params dict or a `TrainState`.
      x: optional example inputs (batch, ...) or a `jax.ShapeDtypeStruct` (or several, as a
        tuple, list or dict of them, as `fit` takes): the shape of one sample and the dtype
        (of each input) are recorded, and `load_model` then checks that the weights are
        exactly those the model builds for such inputs (names, shapes, dtypes).

    The write is atomic (a temporary file, then a rename; removed on failure) and the payload
    carries its SHA-256 digest, verified on load.

    Raises:
      TypeError: a path that is not str / os.PathLike, or a layer or a field value a model
        file cannot hold.
      ValueError: an empty path, or a directory.
      OSError: the file cannot be written (naming the path and the cause; nothing is left).
    """
    path = contracts.check_path(path, "path", "save_model")
    architecture = json.dumps(_module(model, type(model).__name__))
    variables = contracts.as_variables(variables, "save_model")
    write_msgpack(path, FORMAT, VERSION, {"architecture": architecture,
                                          "variables": host_arrays(dict(variables)),
                                          "input": _input_spec(x)}, "save_model")


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Read a file of `save_model` -> (model, variables) (every collection, as nested dicts).

    The architecture record is validated node by node (known layer names and fields, types,
    counts >= 1, rates in [0, 1]); when the file records its input (`save_model(..., x=...)`),
    the weights must be exactly those the rebuilt model creates for it.

    Raises:
      TypeError: a path that is not str / os.PathLike.
      ValueError: naming the file: a foreign or corrupt file (its payload's digest does not
        match), a newer format version, an invalid architecture record, or weights that do not
        fit the model.
      FileNotFoundError: no file at `path`.
    """
    path = contracts.check_path(path, "path", "load_model")
    version, content = read_msgpack(path, FORMAT, "model")
    if version > VERSION:
        raise ValueError(f"{path!r} has model format version {version!r}; this jaxseq reads "
                         f"versions 1 to {VERSION}. Upgrade jaxseq to read it.")
    try:
        record = json.loads(content["architecture"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path!r}: the architecture record is corrupt ({err}).") from err
    try:
        model = _decode(record, "model")
    except ValueError as err:
        raise ValueError(f"{path!r}: the architecture record is invalid: {err}") from err
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path!r}: the architecture record holds no model.")
    if not isinstance(content.get("variables", {}), dict):
        raise ValueError(f"{path!r}: the variables record is corrupt.")
    variables = _tuples(nest(content.get("variables", {}), path))
    spec = content.get("input")
    if spec is not None:
        _check_weights(path, model, variables, spec)
    return model, variables


def _check_weights(path: str, model: nn.Module, variables: dict, spec) -> None:
    """The variables must be exactly those `model.init` creates for inputs like `spec`."""
    import jax

    def struct(one):
        return jax.ShapeDtypeStruct((1, *map(int, one["shape"])), jnp.dtype(one["dtype"]))

    try:
        x = ({k: struct(v) for k, v in spec["named"].items()} if "named" in spec else
             tuple(map(struct, spec["inputs"])) if "inputs" in spec else struct(spec))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path!r}: the input record is corrupt ({err}).") from err
    try:
        want = jax.eval_shape(lambda s: contracts.call_inputs(
            model.init, s, jax.random.PRNGKey(0)), x)
    except (TypeError, ValueError) as err:
        shapes = [(label, a.shape, str(a.dtype)) for label, a in contracts.input_items(x)]
        raise ValueError(f"{path!r}: the model in the file cannot be built for its recorded "
                         f"input {shapes}: {err}") from err
    want = flatten(dict(want))
    got = flatten(variables)
    if STATE_COLLECTION in variables:  # kept states have the batch of their last call
        want = {k: v for k, v in want.items() if not k.startswith(STATE_COLLECTION + "/")}
        got = {k: v for k, v in got.items() if not k.startswith(STATE_COLLECTION + "/")}
    check_tree(want, got, where=f"load_model({path!r})")


def _tuples(node):
    """Dicts keyed "0", "1", ... (how tuples flatten, e.g. a stateful layer's states) back to
    tuples."""
    if not isinstance(node, dict):
        return node
    node = {k: _tuples(v) for k, v in node.items()}
    if node and all(k.isdigit() for k in node) and sorted(map(int, node)) == list(
            range(len(node))):
        return tuple(node[str(i)] for i in range(len(node)))
    return node


def save_params(path: str | os.PathLike, params) -> None:
    """Write `params` (any tree of arrays) to one msgpack file at `path` (str or os.PathLike),
    atomically, with a SHA-256 digest of its payload that `load_params` verifies. A failed write
    leaves nothing behind and raises OSError naming the path."""
    path = contracts.check_path(path, "path", "save_params")
    write_msgpack(path, PARAMS_FORMAT, PARAMS_VERSION, {"params": host_arrays(params)},
                  "save_params")


def load_params(path: str | os.PathLike, *, like=None):
    """Read parameters written by `save_params`.

    like: a tree of the expected structure (e.g. `model.init(key, x)["params"]`); the file must
    hold exactly its paths, shapes and dtypes (else ValueError naming the first mismatching path
    and both shapes), and the result has its structure. Without `like`, nested dicts keyed by
    the path components. Anything that is not a jaxseq params file, and a file whose payload
    does not match its digest (changed or damaged after it was written), raises ValueError.
    Version 1 files (written without a digest) are read as they are.
    """
    path = contracts.check_path(path, "path", "load_params")
    version, content = read_msgpack(path, PARAMS_FORMAT, "params")
    if version > PARAMS_VERSION:
        raise ValueError(f"{path!r} has params format version {version}; this jaxseq reads "
                         f"versions 1 to {PARAMS_VERSION}. Upgrade jaxseq to read it.")
    if not isinstance(content.get("params"), dict):
        raise ValueError(f"{path!r} is not a jaxseq params file (no params record).")
    flat = content["params"]
    nested = nest(flat, path)  # checks every entry is a numeric array
    if like is not None:
        check_tree(flatten(like), flat, where=f"load_params({path!r})")
        return unflatten(like, flat)
    return nested

"""Whole-model files: `save_model(path, model, variables)` / `load_model(path)`.

One msgpack file (flax's array encoding; no pickle, no code executed on load) holds:
  - "format": "jaxseq.model", "version": the format version (`VERSION`);
  - "architecture": the model as JSON: for each module its jaxseq class name and its
    dataclass fields (numbers, strings, dtypes by name, activations by Keras name, nested
    modules); initializers are not stored (the weights replace what they would draw);
  - "variables": every variable collection (params, batch_stats, rnn_state), flat by path.
`load_model` rebuilds the model from the registry below (jaxseq's layers and builders, and
flax's Dense / Dropout / BatchNorm), so a fresh process needs no model code. A file written by
a newer format version, or one that is corrupt or foreign, is refused with a ValueError;
older versions are read (version 1 is the first).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxseq._trees import host_arrays, nest, read_msgpack, write_msgpack
from jaxseq.cells import _ACTIVATIONS
from jaxseq.conv_lstm import ConvLSTM1D, ConvLSTM2D
from jaxseq.layers import Dense, Dropout, Masking
from jaxseq.minimal import MinGRU, MinLSTM
from jaxseq.models import Sequential
from jaxseq.recurrent import GRU, LSTM, Bidirectional, SimpleRNN
from jaxseq.wrappers import RepeatVector, TimeDistributed

FORMAT = "jaxseq.model"
VERSION = 1
REGISTRY: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (Sequential, LSTM, GRU, SimpleRNN, MinGRU, MinLSTM,
                                  Bidirectional, ConvLSTM1D, ConvLSTM2D, TimeDistributed,
                                  RepeatVector, Dense, Dropout,
                                  Masking)
}
REGISTRY.update({"flax.Dense": nn.Dense, "flax.Dropout": nn.Dropout,
                 "flax.BatchNorm": nn.BatchNorm})
_NAMES = {cls: name for name, cls in REGISTRY.items()}
_SKIP = {"parent", "name"}


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
    for name, fn in _ACTIVATIONS.items():
        if fn is value:
            return {"__activation__": name}
    raise TypeError(f"save_model: {where} is {value!r}, which a model file cannot hold. Use "
                    "Keras activation names (e.g. activation='relu') and jaxseq/flax layers.")


def _module(module: nn.Module, where: str) -> dict:
    cls = type(module)
    if cls not in _NAMES:
        raise TypeError(f"save_model: {where} is a {cls.__name__}; model files hold jaxseq's "
                        f"layers ({sorted(REGISTRY)}). Save the weights with js.save_params "
                        "and rebuild the model in code instead.")
    fields = {}
    for f in dataclasses.fields(module):
        if f.name in _SKIP or f.name.endswith("_init") or not f.init:
            continue
        value = getattr(module, f.name)
        if f.default is not dataclasses.MISSING and value is f.default:
            continue
        fields[f.name] = _encode(value, f"{where}.{f.name}")
    return {"__module__": _NAMES[cls], "fields": fields}


def _decode(value):
    if isinstance(value, dict):
        if "__module__" in value:
            cls = REGISTRY.get(value["__module__"])
            if cls is None:
                raise ValueError(f"load_model: unknown layer {value['__module__']!r} in the "
                                 "file (written by another jaxseq?).")
            return cls(**{k: _decode(v) for k, v in value["fields"].items()})
        if "__seq__" in value:
            return tuple(_decode(v) for v in value["__seq__"])
        if "__dtype__" in value:
            return jnp.dtype(value["__dtype__"])
        if "__activation__" in value:
            return value["__activation__"]
    return value


def save_model(path: str | os.PathLike, model: nn.Module, variables) -> None:
    """Write `model` (jaxseq layers/builders) and `variables` (a variables dict, a params dict
    or a TrainState) to one file at `path`, atomically. Raises TypeError for a layer or a
    field value a model file cannot hold."""
    from jaxseq.training.state import as_variables

    architecture = json.dumps(_module(model, type(model).__name__))
    variables = as_variables(variables, "save_model")
    write_msgpack(path, {"format": FORMAT, "version": VERSION, "architecture": architecture,
                         "variables": host_arrays(dict(variables))})


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Read a file of `save_model` -> (model, variables) (every collection, as nested dicts).
    Raises ValueError for a foreign, corrupt or newer-version file."""
    path = os.fspath(path)
    content = read_msgpack(path, FORMAT, "model")
    version = content.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise ValueError(f"{path!r} has model format version {version!r}; this jaxseq reads "
                         f"versions 1 to {VERSION}. Upgrade jaxseq to read it.")
    try:
        model = _decode(json.loads(content["architecture"]))
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path!r}: the architecture record is corrupt ({err}).") from err
    return model, _tuples(nest(content.get("variables", {}), path))


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

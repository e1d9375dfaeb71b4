"""Exact weight interop with Keras 3: `from_keras`, `to_keras`, `load_keras_weights`,
`jaxseq_model_from_keras`.

jaxseq keeps Keras' parameter layout, so weights move unchanged (bitwise) in both directions:

  Keras layer                  jaxseq params
  LSTM / GRU / SimpleRNN       {"kernel", "recurrent_kernel", "bias"}   (the cell's weights)
  ConvLSTM1D / ConvLSTM2D      {"kernel", "recurrent_kernel", "bias"}   (channels_last only)
  Dense                        {"kernel", "bias"}                      (jaxseq `Dense`)
  TimeDistributed(Dense)       {"layer": {"kernel", "bias"}}
  Bidirectional(RNN[, backward_layer=RNN])  {"forward_layer": {...}, "backward_layer": {...}}
  Sequential                   {"lstm": ..., "dense": ..., "lstm_1": ...}  (jaxseq's names)
  RepeatVector, Dropout        no parameters

Which Keras class a jaxseq layer corresponds to is its registration (`jaxseq.registry`, the
`keras=` of each kind); a layer kind registered without one is refused by name.

A Sequential's params are keyed by the names `jaxseq.models.Sequential` gives its layers (by
class, in order: `lstm`, `lstm_1`, ...), never by the Keras layer names, which carry global
counters (`dense_7`). Keras' `.weights.h5` files use the same class-counted names, so
`load_keras_weights` reads them with h5py alone (no Keras needed).

Errors: an unsupported layer raises `TypeError` naming it and listing the supported ones; a
missing weight or a size mismatch raises `ValueError` naming the layer and both shapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import registry
from jaxseq.layers import Dense
from jaxseq.models import Sequential, keras_name, sequential_names
from jaxseq.recurrent import RNN, Bidirectional
from jaxseq.wrappers import RepeatVector, TimeDistributed

# Keras config keys that mean the same on a jaxseq recurrent layer (copied where it has them).
_RNN_CONFIG = ("units", "filters", "kernel_size", "strides", "padding", "dilation_rate",
               "activation", "recurrent_activation", "use_bias", "unit_forget_bias",
               "reset_after", "dropout", "recurrent_dropout", "return_sequences",
               "return_state", "go_backwards", "unroll", "zero_output_for_mask")


def _jaxseq() -> dict[str, Any]:
    """Keras class name -> the jaxseq module class that plays its part (None: skipped
    entirely), from the registry."""
    return {**{k.keras: k.cls for k in registry.kinds() if k.keras}, "InputLayer": None}


def supported() -> tuple[str, ...]:
    """The Keras classes these functions convert (the registry's counterparts)."""
    return tuple(_jaxseq())


def _kind(layer, where: str) -> str:
    import keras

    for name in _jaxseq():
        if isinstance(layer, getattr(keras.layers, name, None) or getattr(keras, name)):
            return name
    raise TypeError(
        f"{where}: unsupported Keras layer {type(layer).__name__} "
        f"({getattr(layer, 'name', '?')!r}); supported: {', '.join(supported())}."
    )


def _names(classes: list) -> list[str]:
    """Keras/jaxseq container names for a list of classes: dense, lstm, dense_1, ..."""
    counts: dict[str, int] = {}
    out = []
    for cls in classes:
        base = keras_name(cls)
        k = counts[base] = counts.get(base, -1) + 1
        out.append(base if k == 0 else f"{base}_{k}")
    return out


def _weights(layer, names: tuple[str, ...], where: str) -> dict:
    if not layer.built:
        raise ValueError(
            f"{where}: Keras layer {layer.name!r} is not built, so it has no weights yet; call "
            "it on an input (or give the model a keras.Input) first."
        )
    found = {w.name: w for w in layer.weights}
    if set(found) != set(names):
        raise ValueError(f"{where}: Keras layer {layer.name!r} has weights {sorted(found)}; "
                         f"expected {sorted(names)}.")
    return {n: found[n] for n in names}


def _variables(layer, where: str) -> dict:
    """The Keras Variables of `layer`, nested as jaxseq's params."""
    kind = _kind(layer, where)
    cls = _jaxseq()[kind]
    if kind == "Dense" or isinstance(cls, type) and issubclass(cls, RNN):
        base = ("kernel",) if kind == "Dense" else ("kernel", "recurrent_kernel")
        return _weights(layer, (*base, "bias") if layer.use_bias else base, where)
    if kind == "TimeDistributed":
        return {"layer": _variables(layer.layer, f"{where}/layer")}
    if kind == "Bidirectional":
        return {side: _variables(getattr(layer, side), f"{where}/{side}")
                for side in ("forward_layer", "backward_layer")}
    if kind == "Sequential":
        layers = [(lay, _jaxseq()[_kind(lay, where)]) for lay in layer.layers]
        layers = [(lay, cls) for lay, cls in layers if cls is not None]
        names = _names([cls for _, cls in layers])
        tree = {name: _variables(lay, name) for (lay, _), name in zip(layers, names, strict=True)}
        return {name: sub for name, sub in tree.items() if sub}
    return {}


def _pairs(want, got, path: str, where: str, labels=("there", "params give"), order=None
           ) -> Iterator[tuple[str, Any, Any]]:
    """(path, want leaf, got leaf) over two nested dicts that must match in keys and shapes.
    `order` (`want` by default) sets the key order, so errors name the first layer in model
    order."""
    order = want if order is None else order
    if isinstance(want, Mapping):
        if not isinstance(got, Mapping) or set(want) != set(got):
            have = sorted(got) if isinstance(got, Mapping) else type(got).__name__
            raise ValueError(f"{where}: layer {path or '(model)'!r} expects parameters "
                             f"{sorted(want)}; got {have}.")
        for key in order:
            yield from _pairs(want[key], got[key], f"{path}/{key}" if path else key, where,
                              labels, order[key])
        return
    if tuple(want.shape) != tuple(np.shape(got)):
        layer, _, weight = path.rpartition("/")
        keras_path = getattr(want, "path", None)  # a Keras Variable's path names its layer
        weight = repr(weight) + (f" (Keras {keras_path!r})" if keras_path else "")
        raise ValueError(f"{where}: layer {layer or '(layer)'!r} weight {weight} has shape "
                         f"{tuple(want.shape)} {labels[0]}; {labels[1]} {tuple(np.shape(got))}.")
    yield path, want, got


def _nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def from_keras(layer_or_model) -> dict:
    """jaxseq params (nested dict of float arrays) holding a built Keras layer's or
    Sequential's weights, bitwise. See the module docstring for the layout."""
    tree = _variables(layer_or_model, "from_keras")
    return jax.tree.map(lambda v: jnp.asarray(np.array(v.numpy())), tree,
                        is_leaf=lambda v: not isinstance(v, Mapping))


def to_keras(params, layer_or_model):
    """Write jaxseq `params` into a built Keras layer or Sequential (in place, bitwise) and
    return it. Every shape is checked before anything is written."""
    if not isinstance(params, Mapping):
        raise TypeError(f"to_keras expects params to be jaxseq params (a dict of arrays); got "
                        f"{type(params).__name__}.")
    tree = _variables(layer_or_model, "to_keras")
    pairs = list(_pairs(tree, params, "", "to_keras", ("in Keras", "params give")))
    for _, var, value in pairs:
        var.assign(np.asarray(value, dtype=var.dtype))
    return layer_or_model


def _module(layer, where: str):
    """The jaxseq module equivalent to a Keras layer, from its config."""
    kind = _kind(layer, where)
    cfg = layer.get_config()
    cls = _jaxseq()[kind]
    if isinstance(cls, type) and issubclass(cls, RNN):
        if cfg.get("stateful"):
            raise ValueError(f"{where}: stateful Keras layer {layer.name!r} is not supported; "
                             "carry states with initial_state / return_state instead.")
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ValueError(f"{where}: Keras layer {layer.name!r} is channels_first; jaxseq's "
                             "ConvLSTM layers are channels_last.")
        fields = set(registry.kind_of(cls).record_fields())
        return cls(**{f: cfg[f] for f in _RNN_CONFIG if f in cfg and f in fields})
    if kind == "Dense":
        act = cfg["activation"]
        act = None if act in (None, "linear") else jax.nn.softmax if act == "softmax" else act
        return Dense(cfg["units"], use_bias=cfg["use_bias"], activation=act)
    if kind == "TimeDistributed":
        return TimeDistributed(_module(layer.layer, f"{where}/layer"))
    if kind == "Bidirectional":  # backward_layer given only where it is not the default copy
        fw, bw = _module(layer.forward_layer, where), _module(layer.backward_layer, where)
        default = bw == fw.clone(go_backwards=not fw.go_backwards)
        return Bidirectional(fw, merge_mode=layer.merge_mode,
                             backward_layer=None if default else bw)
    if kind == "RepeatVector":
        return RepeatVector(cfg["n"])
    if kind == "Dropout":
        return nn.Dropout(cfg["rate"])
    if kind == "Sequential":
        mods = [_module(lay, f"{where}/{lay.name}") for lay in layer.layers
                if _kind(lay, where) != "InputLayer"]
        return Sequential(tuple(mods))
    raise TypeError(f"{where}: Keras {kind} has no jaxseq module of its own.")


def jaxseq_model_from_keras(layer_or_model) -> tuple[nn.Module, dict]:
    """(jaxseq module, params) equivalent to a built Keras layer or Sequential: same
    configuration (units, activations, return_sequences, ...) and the same weights."""
    return _module(layer_or_model, "jaxseq_model_from_keras"), from_keras(layer_or_model)


def _h5_tree(module, group, where: str) -> dict:
    """The h5 datasets of a Keras `.weights.h5` group, nested as `module`'s params."""

    def sub(g, key):
        if key not in g:
            raise ValueError(f"{where}: the weights file has no {key!r} under {g.name!r} "
                             f"(found {sorted(g)}); is it from the matching Keras model?")
        return g[key]

    kind = registry.kind_of(module)
    if isinstance(module, nn.Dense) or isinstance(module, RNN) and kind and kind.keras:
        dense = isinstance(module, nn.Dense)
        vars_ = sub(group, "vars") if dense else sub(sub(group, "cell"), "vars")
        names = ("kernel",) if dense else ("kernel", "recurrent_kernel")
        names = (*names, "bias") if module.use_bias else names
        if len(vars_) != len(names):
            raise ValueError(f"{where}: the weights file has {len(vars_)} arrays under "
                             f"{vars_.name!r}; {type(module).__name__} expects {names}.")
        return {n: vars_[str(i)][()] for i, n in enumerate(names)}
    if isinstance(module, TimeDistributed):
        return {"layer": _h5_tree(module.layer, sub(group, "layer"), f"{where}/layer")}
    if isinstance(module, Bidirectional):
        bw = module.layer if module.backward_layer is None else module.backward_layer
        return {s: _h5_tree(m, sub(group, s), f"{where}/{s}")
                for s, m in (("forward_layer", module.layer), ("backward_layer", bw))}
    if isinstance(module, Sequential):
        mods = [m for m in module.layers if isinstance(m, nn.Module)]
        ours = [n for n in sequential_names(module.layers) if n is not None]
        layers = sub(group, "layers")
        tree = {name: _h5_tree(m, sub(layers, h5), name)
                for m, name, h5 in zip(mods, ours, _names([type(m) for m in mods]), strict=True)}
        return {k: v for k, v in tree.items() if v}
    if isinstance(module, (RepeatVector, nn.Dropout)):
        return {}
    raise TypeError(_no_counterpart(module, where))


def _no_counterpart(module, where: str) -> str:
    kind = registry.kind_of(module)
    name = type(module).__name__
    what = (f"the registered layer kind {kind.name}, which names no Keras counterpart"
            if kind else f"{name}, which is not a registered layer kind (jaxseq.registry)")
    known = [k.name for k in registry.kinds() if k.keras]
    return (f"{where}: {name} has no Keras layout: it is {what}; Keras weight files hold "
            f"{', '.join(known)}, flax Dense and Dropout.")


def _check_counterparts(module, where: str) -> None:
    """Refuse, before any file is read, a model with a layer that has no Keras layout."""
    if isinstance(module, Sequential):
        for m in module.layers:
            if isinstance(m, nn.Module):
                _check_counterparts(m, where)
        return
    if isinstance(module, TimeDistributed):
        return _check_counterparts(module.layer, where)
    if isinstance(module, Bidirectional):
        for m in (module.layer, module.backward_layer):
            if m is not None:
                _check_counterparts(m, where)
        return
    kind = registry.kind_of(module)
    if not (isinstance(module, (nn.Dense, nn.Dropout)) or kind and kind.keras):
        raise TypeError(_no_counterpart(module, where))


def load_keras_weights(path, model: Sequential, x) -> dict:
    """Params for the jaxseq `model` read from a Keras `model.save_weights(path)` file
    (`.weights.h5`) of the matching Keras Sequential. `x`: a sample input (or a
    `jax.ShapeDtypeStruct`), used to check every shape against the model's own.

    Raises:
      TypeError: `model` is not a Sequential, or holds a layer without a Keras layout (a
        layer kind registered without a Keras counterpart, or an unregistered module), named
        with the kinds that have one, before the file is opened.
      ValueError: the file lacks a weight the model has, or a shape differs (naming both).
    """
    if not isinstance(model, Sequential):
        raise TypeError("load_keras_weights expects a jaxseq Sequential (Keras saves models, "
                        f"not layers); got {type(model).__name__}.")
    _check_counterparts(model, "load_keras_weights")
    import h5py

    want = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)["params"]
    with h5py.File(path, "r") as f:
        got = _h5_tree(model, f, "load_keras_weights")
    pairs = _pairs(want, got, "", "load_keras_weights", ("in the model", "the file has"), got)
    return _nest({p: jnp.asarray(np.asarray(v, w.dtype)) for p, w, v in pairs})

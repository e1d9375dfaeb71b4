"""Weight interop with PyTorch: `from_torch`, `to_torch`, `jaxseq_model_from_torch`.

  torch module                          jaxseq model (params keyed the same way)
  nn.LSTM / nn.GRU / nn.RNN, 1 layer    LSTM / GRU / SimpleRNN(units, return_sequences=True)
    bidirectional=True                  Bidirectional(that layer, merge_mode="concat")
    num_layers=n > 1                    Sequential of n such layers (`lstm`, `lstm_1`, ... or
                                        `bidirectional`, `bidirectional_1`, ...), with
                                        nn.Dropout(dropout) between them if dropout > 0
  nn.Linear                             jaxseq Dense(out_features)

Conversions, per layer and direction (torch `W_ih` (G*H, in), `W_hh` (G*H, H)):
  kernel = W_ih.T, recurrent_kernel = W_hh.T;
  LSTM and RNN: bias = b_ih + b_hh (summed on import); on export b_ih = bias, b_hh = 0;
  GRU: torch's gate order (r, z, n) becomes Keras' (z, r, h), and the two biases are kept as
  Keras' reset_after layout, bias = [b_ih; b_hh] (2, 3H): exact both ways.
Importing LSTM/RNN rounds once (the bias sum); everything else is bitwise.

`batch_first` only changes the layout of torch's inputs and outputs, not the weights: jaxseq is
always batch-major, so feed it `x` (batch, time, features) — for `batch_first=False` modules,
`x_torch.transpose(0, 1)`. jaxseq's output equals torch's `output` (its first return value).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxseq import registry
from jaxseq.models import Sequential, sequential_names
from jaxseq.recurrent import Bidirectional

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _jaxseq() -> dict[str, type]:
    """torch.nn class name -> the jaxseq class that computes the same, from the registry
    (`torch=` of each kind)."""
    return {k.torch: k.cls for k in registry.kinds() if k.torch}


def _kind(module, where: str) -> str:
    from torch import nn as tnn

    known = _jaxseq()
    for name in known:
        if isinstance(module, getattr(tnn, name)):
            return name
    raise TypeError(f"{where}: unsupported torch module {type(module).__name__}; supported: "
                    f"{', '.join('nn.' + s for s in known)}.")


def _spec(module, where: str) -> tuple[nn.Module, dict[tuple[str, ...], tuple[int, str]]]:
    """(jaxseq module, {params path: (torch layer index, direction suffix)})."""
    kind = _kind(module, where)
    cls = _jaxseq()[kind]
    if kind == "Linear":
        return cls(module.out_features, use_bias=module.bias is not None), {(): (0, "")}
    kwargs: dict[str, Any] = dict(units=module.hidden_size, use_bias=module.bias,
                                  return_sequences=True)
    if kind == "RNN":
        kwargs["activation"] = module.nonlinearity
    if kind == "LSTM" and module.proj_size:
        kwargs["proj_size"] = module.proj_size
    layer = cls(**kwargs)
    unit = Bidirectional(layer, merge_mode="concat") if module.bidirectional else layer
    dirs = {("forward_layer",): "", ("backward_layer",): "_reverse"} if module.bidirectional \
        else {(): ""}
    if module.num_layers == 1:
        return unit, {path: (0, sfx) for path, sfx in dirs.items()}
    mods: list[nn.Module] = []
    for k in range(module.num_layers):
        if k and module.dropout:
            mods.append(nn.Dropout(module.dropout))
        mods.append(unit)
    names = [n for n, m in zip(sequential_names(mods), mods, strict=True)
             if not isinstance(m, nn.Dropout)]
    return Sequential(tuple(mods)), {
        (names[k], *path): (k, sfx) for k in range(module.num_layers) for path, sfx in dirs.items()
    }


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _perm(kind: str, h: int) -> np.ndarray:
    """Row order taking torch's gate blocks to Keras' (and back: it is its own inverse)."""
    if kind != "GRU":
        return np.arange(_GATES[kind] * h)
    return np.concatenate([np.arange(h, 2 * h), np.arange(h), np.arange(2 * h, 3 * h)])


def _import_cell(module, kind: str, k: int, sfx: str) -> dict[str, np.ndarray]:
    if kind == "Linear":
        out = {"kernel": _np(module.weight).T}
        if module.bias is not None:
            out["bias"] = _np(module.bias)
        return out
    get = lambda name: _np(getattr(module, f"{name}_l{k}{sfx}"))
    p = _perm(kind, module.hidden_size)
    out = {"kernel": get("weight_ih")[p].T, "recurrent_kernel": get("weight_hh")[p].T}
    if kind == "LSTM" and module.proj_size:  # torch: h = W_hr (o * tanh(c))
        out["projection_kernel"] = get("weight_hr").T
    if module.bias:
        b_ih, b_hh = get("bias_ih")[p], get("bias_hh")[p]
        out["bias"] = np.stack([b_ih, b_hh]) if kind == "GRU" else b_ih + b_hh
    return out


def _export_cell(module, kind: str, k: int, sfx: str, params) -> dict[str, np.ndarray]:
    """torch parameter name -> new value, from one jaxseq layer's params (jaxseq layout)."""
    if kind == "Linear":
        out = {"weight": params["kernel"].T}
        if module.bias is not None:
            out["bias"] = params["bias"]
        return out
    p = _perm(kind, module.hidden_size)
    tag = f"_l{k}{sfx}"
    out = {f"weight_ih{tag}": params["kernel"].T[p],
           f"weight_hh{tag}": params["recurrent_kernel"].T[p]}
    if kind == "LSTM" and module.proj_size:
        out[f"weight_hr{tag}"] = params["projection_kernel"].T
    if module.bias:
        bias = params["bias"]
        if kind == "GRU":
            b_ih, b_hh = bias[0][p], bias[1][p]
        else:
            b_ih, b_hh = bias, np.zeros_like(bias)
        out[f"bias_ih{tag}"], out[f"bias_hh{tag}"] = b_ih, b_hh
    return out


def _expected(module, kind: str, k: int, sfx: str) -> dict[str, tuple[int, ...]]:
    """jaxseq param name -> shape it must have, for one torch layer and direction."""
    return {n: a.shape for n, a in _import_cell(module, kind, k, sfx).items()}


def _at(params, path: tuple[str, ...], where: str):
    node = params
    for i, key in enumerate(path):
        if not hasattr(node, "keys") or key not in node:
            have = sorted(node) if hasattr(node, "keys") else type(node).__name__
            raise ValueError(f"{where}: params have no layer {'/'.join(path[: i + 1])!r} "
                             f"(found {have}).")
        node = node[key]
    return node


def from_torch(module) -> dict:
    """jaxseq params for a torch nn.LSTM / nn.GRU / nn.RNN / nn.Linear (see module docstring).
    Use `jaxseq_model_from_torch` to get the matching jaxseq model too."""
    kind = _kind(module, "from_torch")
    _, plan = _spec(module, "from_torch")
    out: dict = {}
    for path, (k, sfx) in plan.items():
        leaf = {n: jnp.asarray(a) for n, a in _import_cell(module, kind, k, sfx).items()}
        if not path:
            return leaf
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return out


def jaxseq_model_from_torch(module) -> tuple[nn.Module, dict]:
    """(jaxseq model, params) computing what `module` computes (batch-major inputs)."""
    model, _ = _spec(module, "jaxseq_model_from_torch")
    return model, from_torch(module)


def to_torch(params, module):
    """Write jaxseq `params` into `module` (in place) and return it. Every name and shape is
    checked before anything is written; a mismatch names the layer and both shapes."""
    import torch

    where = "to_torch"
    if not hasattr(params, "keys"):
        raise TypeError(f"{where} expects params to be jaxseq params (a dict of arrays); got "
                        f"{type(params).__name__}.")
    kind = _kind(module, where)
    _, plan = _spec(module, where)
    updates: dict[str, np.ndarray] = {}
    for path, (k, sfx) in plan.items():
        layer = _at(params, path, where)
        name = "/".join(path) or type(module).__name__
        want = _expected(module, kind, k, sfx)
        if set(layer) != set(want):
            raise ValueError(f"{where}: layer {name!r} expects parameters {sorted(want)} for "
                             f"torch {type(module).__name__}; got {sorted(layer)}.")
        arrays = {n: np.asarray(v, np.float32) for n, v in layer.items()}
        for n, shape in want.items():
            if arrays[n].shape != shape:
                raise ValueError(f"{where}: layer {name!r} weight {n!r} must have shape {shape} "
                                 f"for torch {type(module).__name__}; got {arrays[n].shape}.")
        updates.update(_export_cell(module, kind, k, sfx, arrays))
    with torch.no_grad():
        for tname, value in updates.items():
            target = getattr(module, tname)
            target.copy_(torch.from_numpy(np.array(value, copy=True)).to(target.dtype))
    return module

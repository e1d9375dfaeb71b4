"""A Keras-style model summary: one row per top-level layer (name and type, output shape,
parameter count) and the totals.

Shapes come from `jax.eval_shape` over `init_with_output` with `capture_intermediates` for the
model's direct children: nothing is computed, no shape is derived by hand.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from jaxseq import contracts


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def _shape(out) -> str:
    leaves = jax.tree.leaves(out)
    shapes = [("None",) + tuple(str(d) for d in leaf.shape[1:]) for leaf in leaves]
    text = [f"({', '.join(s)}{',' if len(s) == 1 else ''})" for s in shapes]
    return text[0] if len(text) == 1 else "[" + ", ".join(text) + "]"


def summary_rows(model: nn.Module, x) -> tuple[list[tuple[str, str, int]], int]:
    """[(\"name (Type)\", \"(None, ...)\", params)] per top-level layer, and the total count."""
    shape = contracts.shape_of(x)
    if len(shape) < 1:
        raise ValueError(f"summary expects x with a batch axis; got shape {shape}.")

    def is_child(module, method_name: str) -> bool:
        return method_name == "__call__" and len(module.path) == 1

    out, variables = jax.eval_shape(
        lambda: model.init_with_output(jax.random.PRNGKey(0), x, capture_intermediates=is_child)
    )
    params = variables.get("params", {})
    inter = variables.get("intermediates", {})
    rows = []
    order = [n for n in _child_types(model) if n in inter]
    for name in order + sorted(set(inter) - set(order)):  # call order, as Keras lists layers
        child_out = inter[name]["__call__"][-1]
        rows.append((name, _shape(child_out), _count(params.get(name, {}))))
    if not rows:  # a single layer: the model itself is the row
        rows.append(("", _shape(out), _count(params)))
    return rows, _count(params)


def summary(model: nn.Module, x) -> str:
    """Keras' `model.summary()` as a string, for `model` applied to inputs shaped like `x`."""
    rows, total = summary_rows(model, x)
    types = _child_types(model)
    lines = []
    title = f'Model: "{type(model).__name__.lower()}"'
    header = ("Layer (type)", "Output Shape", "Param #")
    table = [
        (f"{name} ({types.get(name, type(model).__name__)})" if name else type(model).__name__,
         shape, f"{count:,}")
        for name, shape, count in rows
    ]
    widths = [max(len(header[i]), *(len(r[i]) for r in table)) + 2 for i in range(3)]
    rule = "─" * sum(widths)

    def fmt(r):
        return f"{r[0]:<{widths[0]}}{r[1]:<{widths[1]}}{r[2]:>{widths[2]}}"

    lines += [title, rule, fmt(header), "═" * sum(widths)]
    for r in table:
        lines.append(fmt(r))
    lines += [rule, f"Total params: {total:,}", f"Trainable params: {total:,}",
              "Non-trainable params: 0", rule]
    return "\n".join(lines)


def _child_types(model: nn.Module) -> dict[str, str]:
    """Names the model gives its direct children -> their class names (Keras' "(type)")."""
    layers = getattr(model, "layers", None)
    if layers is None:
        return {}
    from jaxseq.models import Sequential, sequential_names

    if not isinstance(model, Sequential):
        return {f"layers_{i}": type(m).__name__ for i, m in enumerate(layers)}
    return {name: type(layer).__name__
            for layer, name in zip(layers, sequential_names(layers), strict=True) if name}

"""A Keras-style model summary: one row per top-level layer (name and type, output shape,
parameter count) and the totals. The type is the layer kind's summary name
(`jaxseq.registry`), or the class name of an unregistered module.

Shapes come from `jax.eval_shape` over `init_with_output` with `capture_intermediates` for the
model's direct children: nothing is computed, no shape is derived by hand.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from jaxseq import contracts, registry


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def _shape(out) -> str:
    leaves = jax.tree.leaves(out)
    shapes = [("None",) + tuple(str(d) for d in leaf.shape[1:]) for leaf in leaves]
    text = [f"({', '.join(s)}{',' if len(s) == 1 else ''})" for s in shapes]
    return text[0] if len(text) == 1 else "[" + ", ".join(text) + "]"


def _type_name(module: nn.Module) -> str:
    kind = registry.kind_of(module)
    return type(module).__name__ if kind is None else kind.summary


def _rows(model: nn.Module, x) -> tuple[list[tuple[str, str, str, int]], int]:
    """[(name, type name, output shape, params)] per direct child in call order (or the model
    itself as one row named "" when it has none), and the total count."""
    if not isinstance(x, jax.ShapeDtypeStruct):
        a = contracts.as_array(x, "x", "summary")
        x = jax.ShapeDtypeStruct(contracts.shape_of(a), a.dtype)
    shape = contracts.shape_of(x)
    if len(shape) < 1:
        raise ValueError(f"summary expects x with a batch axis; got shape {shape}.")
    called: dict[str, str] = {}  # direct child name -> class name, in call order

    def is_child(module, method_name: str) -> bool:
        if method_name == "__call__" and len(module.path) == 1:
            called.setdefault(module.path[0], _type_name(module))
            return True
        return False

    out, variables = jax.eval_shape(  # x as an argument: an array or a jax.ShapeDtypeStruct
        lambda x: model.init_with_output(jax.random.PRNGKey(0), x,
                                         capture_intermediates=is_child), x
    )
    params = variables.get("params", {})
    inter = variables.get("intermediates", {})
    rows = [(name, cls, _shape(inter[name]["__call__"][-1]), _count(params.get(name, {})))
            for name, cls in called.items() if name in inter]
    if not rows:  # a single layer: the model itself is the row
        rows.append(("", _type_name(model), _shape(out), _count(params)))
    return rows, _count(params)


def summary_rows(model: nn.Module, x) -> tuple[list[tuple[str, str, int]], int]:
    """[(name, "(None, ...)", params)] per top-level layer, in call order (as Keras lists
    layers), and the total count. `x`: a sample input or a `jax.ShapeDtypeStruct`. A model
    without submodules is one row named ""."""
    rows, total = _rows(model, x)
    return [(name, shape, count) for name, _, shape, count in rows], total


def summary(model: nn.Module, x) -> str:
    """Keras' `model.summary()` as a string, for `model` applied to inputs shaped like `x`.

    Args:
      model: a linen Module (a `js.Sequential`, a single layer or any module).
      x: an array or `jax.ShapeDtypeStruct` (batch, ...): only its shape and dtype are used.

    Returns:
      The table: one row per layer (name (type), output shape with the batch as None, params),
      then the total parameter count.

    Raises:
      ValueError: from the layers' own input checks when x does not fit the model.
      TypeError: likewise, for an input of the wrong kind.
    """
    rows, total = _rows(model, x)
    lines = []
    title = f'Model: "{type(model).__name__.lower()}"'
    header = ("Layer (type)", "Output Shape", "Param #")
    table = [(f"{name} ({cls})" if name else cls, shape, f"{count:,}")
             for name, cls, shape, count in rows]
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

"""The registry of layer kinds: the one list of layer classes that model files (`save_model` /
`load_model`), `summary`, `Bidirectional` and the interop modules read.

A layer class is registered once, where it is defined:

    @registry.register(keras="LSTM", torch="LSTM")
    class LSTM(CellRNN): ...

and from then on a model file records it by name and rebuilds it, `summary` names it,
`Bidirectional` lists it among the layers it wraps (any `jaxseq.RNN` subclass), and the interop
modules map it to its Keras 3 / PyTorch counterpart or refuse it by name. flax's `Dense`,
`Dropout` and `BatchNorm` are registered here, as "flax.Dense" and so on.

Each kind (`LayerKind`):
  name     str, its name in model files: the class name for jaxseq's layers.
  cls      the linen Module class.
  summary  str, its name in `summary`'s type column (default: the class name).
  keras    str or None: the Keras 3 class, `keras.layers.<keras>`, with the same semantics and
           weight layout (weights move unchanged), or None when there is none.
  torch    str or None: the `torch.nn` module class that computes the same, or None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn

__all__ = ["LayerKind", "by_name", "kind_of", "kinds", "register"]


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """One registered layer class (the fields are described in the module docstring)."""

    name: str
    cls: type
    summary: str
    keras: str | None = None
    torch: str | None = None

    def record_fields(self) -> tuple[str, ...]:
        """The constructor fields a model file records: every dataclass field set at
        construction except `parent`, `name` and the initializers (`*_init`), which the saved
        weights replace."""
        return tuple(f.name for f in dataclasses.fields(self.cls)
                     if f.init and f.name not in ("parent", "name")
                     and not f.name.endswith("_init"))


_BY_NAME: dict[str, LayerKind] = {}
_BY_CLASS: dict[type, LayerKind] = {}


def register(cls: type | None = None, *, name: str | None = None, summary: str | None = None,
             keras: str | None = None, torch: str | None = None) -> Callable | type:
    """Register a layer class as a kind; usable as `@register` or `@register(keras=...)`.

    Args:
      cls: a `flax.linen.Module` subclass (omitted when used as a decorator with arguments).
      name: its name in model files; default the class name.
      summary: its name in `summary`'s type column; default the class name.
      keras: the Keras 3 layer class name with the same semantics and weight layout, or None.
      torch: the `torch.nn` module class name that computes the same, or None.

    Returns:
      `cls` itself (or, without `cls`, the decorator that registers and returns it).

    Raises:
      TypeError: `cls` is not a linen Module class.
      ValueError: `name` is registered for another class, or `keras` / `torch` already names
        the counterpart of another kind. Registering a class again with the same settings
        does nothing.
    """
    if cls is None:
        return lambda c: register(c, name=name, summary=summary, keras=keras, torch=torch)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register expects a flax.linen Module class; got {cls!r}.")
    kind = LayerKind(name or cls.__name__, cls, summary or cls.__name__, keras, torch)
    if _BY_CLASS.get(cls) == kind:
        return cls
    taken = _BY_NAME.get(kind.name)
    if taken is not None:
        raise ValueError(f"register: the layer kind name {kind.name!r} is taken by "
                         f"{taken.cls.__module__}.{taken.cls.__qualname__}; pass another "
                         "name=.")
    if cls in _BY_CLASS:
        raise ValueError(f"register: {cls.__qualname__} is registered already, as "
                         f"{_BY_CLASS[cls]}.")
    for side in ("keras", "torch"):
        wanted = getattr(kind, side)
        other = next((k for k in _BY_NAME.values() if wanted and getattr(k, side) == wanted),
                     None)
        if other is not None:
            raise ValueError(f"register: {side}={wanted!r} is the counterpart of {other.name} "
                             f"already; one {side} class maps to one jaxseq kind.")
    _BY_NAME[kind.name] = kind
    _BY_CLASS[cls] = kind
    return cls


def kind_of(module_or_class) -> LayerKind | None:
    """The kind of a layer instance or class (its exact class; subclasses register on their
    own), or None for an unregistered one."""
    cls = module_or_class if isinstance(module_or_class, type) else type(module_or_class)
    return _BY_CLASS.get(cls)


def by_name(name: str) -> LayerKind | None:
    """The kind registered under `name`, or None."""
    return _BY_NAME.get(name)


def kinds() -> tuple[LayerKind, ...]:
    """Every registered kind, in registration order."""
    return tuple(_BY_NAME.values())


register(nn.Dense, name="flax.Dense", summary="Dense")
register(nn.Dropout, name="flax.Dropout", summary="Dropout", keras="Dropout")
register(nn.BatchNorm, name="flax.BatchNorm", summary="BatchNorm")

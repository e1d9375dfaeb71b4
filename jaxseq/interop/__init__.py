"""Exact weight import and export: Keras 3 (`jaxseq.interop.keras`) and PyTorch
(`jaxseq.interop.torch`). Needs the `[interop]` extra; Keras and torch are imported only when
one of these functions is first used.

    from jaxseq.interop import from_keras, to_keras, load_keras_weights, jaxseq_model_from_keras
    from jaxseq.interop import from_torch, to_torch, jaxseq_model_from_torch
"""

import importlib as _importlib

_WHERE = {
    "from_keras": "keras",
    "to_keras": "keras",
    "load_keras_weights": "keras",
    "jaxseq_model_from_keras": "keras",
    "from_torch": "torch",
    "to_torch": "torch",
    "jaxseq_model_from_torch": "torch",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(_importlib.import_module(f"jaxseq.interop.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'jaxseq.interop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *(name for name in globals() if name.startswith("__"))])

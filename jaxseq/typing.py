"""Named shapes used across jaxseq.

Legend (used in docstrings and error messages):
  b = batch, t = time, f = input features, u = units (hidden size), o = output features,
  r = replicas (seeds trained together).

Inputs are batch-major, `(batch, time, features)`, as in Keras.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np
from jax.typing import ArrayLike

try:  # jaxtyping (the test extra) makes the annotations checkable; without it they mean Any
    from jaxtyping import Bool, Float, Int, Shaped
except ImportError:  # pragma: no cover - exercised where jaxtyping is not installed

    class _Untyped:
        def __class_getitem__(cls, item):
            return Any

    Bool = Float = Int = Shaped = _Untyped

Array = jax.Array
# a JAX or NumPy array, or a scalar (`jax.typing.ArrayLike`), re-exported for annotations
ArrayLike = ArrayLike
PRNGKey = jax.Array
Params = Any  # a pytree of arrays (flax `FrozenDict` or dict)
Shape = tuple[int, ...]

# jaxtyping aliases of the public signatures. Arrays (NumPy or JAX) carry named axes, checked
# for consistency within a call under jaxtyping's checker (see README); nested Python sequences
# of numbers (lists of lists, tuples) are accepted too: every entry point converts them with
# `np.asarray`, as Keras does, and its own checks then name a wrong shape or dtype.
NestedSequence = Sequence[Any]
Inputs = Float[ArrayLike, "batch *rest"] | NestedSequence  # (batch, ...) model inputs
Targets = Float[ArrayLike, "batch *out"] | NestedSequence  # (batch, ...) like the model's output
Sequences = Float[ArrayLike, "batch time features"] | NestedSequence
Mask = Bool[ArrayLike, "batch time"] | Int[ArrayLike, "batch time"] | NestedSequence
SampleWeight = Float[ArrayLike, "batch"] | Float[ArrayLike, "batch time"] | NestedSequence
States = ArrayLike | Sequence[ArrayLike] | None  # initial states: one array, or a tuple of them
Seed = int | np.integer  # a seed: a Python or NumPy integer that fits in int32
Seeds = Seed | Iterable[Seed]  # an int n (= range(n)) or distinct int seeds
PathLike = str | os.PathLike  # a file or directory path (str or pathlib.Path)
Outputs = Float[Array, "batch *out"]

# Shape spellings used in docstrings and error messages.
BTF = "(batch, time, features)"
BT = "(batch, time)"
BU = "(batch, units)"
BF = "(batch, features)"

STATE_COLLECTION = "rnn_state"  # the flax collection where stateful recurrent layers keep states

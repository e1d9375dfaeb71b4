"""Named shapes used across jaxseq.

Legend (used in docstrings and error messages):
  b = batch, t = time, f = input features, u = units (hidden size), o = output features,
  r = replicas (seeds trained together).

Inputs are batch-major, `(batch, time, features)`, as in Keras.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.typing import ArrayLike

try:  # jaxtyping (the test extra) makes the annotations checkable; without it they mean Any
    from jaxtyping import Bool, Float, Int, Shaped
except ImportError:  # pragma: no cover - exercised where jaxtyping is not installed

    class _Untyped:
        def __class_getitem__(cls, item):
            return Any

    Bool = Float = Int = Shaped = _Untyped

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays (flax `FrozenDict` or dict)
Shape = tuple[int, ...]

# jaxtyping aliases of the public signatures (array-likes, so NumPy inputs stay legal). Named
# axes are checked for consistency within a call under jaxtyping's checker (see README).
Inputs = Float[ArrayLike, "batch *rest"]  # (batch, ...) model inputs
Targets = Float[ArrayLike, "batch *out"]  # (batch, ...) shaped like the model's output
Sequences = Float[ArrayLike, "batch time features"]
Mask = Bool[ArrayLike, "batch time"] | Int[ArrayLike, "batch time"]
SampleWeight = Float[ArrayLike, "batch"] | Float[ArrayLike, "batch time"]
Outputs = Float[Array, "batch *out"]

# Shape spellings used in docstrings and error messages.
BTF = "(batch, time, features)"
BT = "(batch, time)"
BU = "(batch, units)"
BF = "(batch, features)"

STATE_COLLECTION = "rnn_state"  # the flax collection where stateful recurrent layers keep states

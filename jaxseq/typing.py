"""Named shapes used across jaxseq.

Legend (used in docstrings and error messages):
  b = batch, t = time, f = input features, u = units (hidden size), o = output features,
  r = replicas (seeds trained together).

Inputs are batch-major, `(batch, time, features)`, as in Keras.
"""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays (flax `FrozenDict` or dict)
Shape = tuple[int, ...]

# Shape spellings used in docstrings and error messages.
BTF = "(batch, time, features)"
BT = "(batch, time)"
BU = "(batch, units)"
BF = "(batch, features)"

STATE_COLLECTION = "rnn_state"  # the flax collection where stateful recurrent layers keep states

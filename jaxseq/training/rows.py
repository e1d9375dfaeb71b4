"""Per-row resets of stateful layers' kept states: the rows of a batch that start a new stream.

A stateful layer keeps one state row per batch row (the flax collection "rnn_state", every
leaf (batch, ...)). Keras resets all rows at once (`layer.reset_states()`); when the streams in
a batch end at different times, only their rows should start again from zeros.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def row_flags(rows, batch: int, where: str):
    """`rows` -> (batch,) bool, True for the rows to reset.

    rows: a (batch,) bool array (True = reset), or a 1-D integer array/sequence of row indices
    in [-batch, batch) (NumPy's negative indexing; repeats allowed). A traced integer array
    cannot be range-checked; its out-of-range indices are dropped.
    Raises: TypeError for another dtype; ValueError for a bool array of another length, a
    non-1-D array, or an index out of range."""
    if isinstance(rows, (bool, np.bool_, int, np.integer)):
        raise TypeError(f"{where} expects rows as a (batch,) bool array or a 1-D array of row "
                        f"indices; got the scalar {rows!r} (use [{rows!r}] for one row).")
    traced = isinstance(rows, jax.core.Tracer)
    a = rows if traced else np.asarray(rows)
    dtype = np.dtype(a.dtype)
    if a.ndim != 1:
        raise ValueError(f"{where} expects rows of shape (batch,) = ({batch},) (bool) or (k,) "
                         f"(row indices); got shape {tuple(a.shape)}.")
    if dtype == np.bool_:
        if a.shape[0] != batch:
            raise ValueError(f"{where} expects a bool rows array of shape (batch,) = ({batch},) "
                             f"(one flag per row of the kept states); got {tuple(a.shape)}.")
        return jnp.asarray(a)
    if a.shape[0] == 0 and dtype.kind == "f":  # [] parses as float64: no row to reset
        return jnp.zeros((batch,), bool)
    if dtype.kind not in "iu":
        raise TypeError(f"{where} expects rows as bool flags or integer row indices; got "
                        f"dtype {dtype}.")
    if not traced:
        bad = a[(a < -batch) | (a >= batch)]
        if bad.size:
            raise ValueError(f"{where} expects row indices in [{-batch}, {batch}) for kept "
                             f"states of {batch} rows; got {bad.tolist()}.")
    return jnp.zeros((batch,), bool).at[jnp.asarray(a)].set(True, mode="drop")


def reset_rows(states, rows, where: str):
    """Zero the rows `rows` (see `row_flags`) of every leaf (batch, ...) of `states`."""
    leaves = jax.tree.leaves(states)
    if not leaves:
        return states
    batches = {leaf.shape[0] for leaf in leaves}
    if len(batches) != 1:
        raise ValueError(f"{where}: the kept states have different batch sizes {sorted(batches)}"
                         "; reset rows per layer instead.")
    flags = row_flags(rows, batches.pop(), where)

    def zero(leaf):
        keep = ~flags.reshape(flags.shape + (1,) * (leaf.ndim - 1))
        return jnp.where(keep, leaf, jnp.zeros_like(leaf))

    return jax.tree.map(zero, states)

"""Gradient checkpointing over segments of the sequence: the recurrent layers' `remat=`.

Reverse-mode autodiff of a recurrence keeps every step's residuals for the backward pass, so its
memory grows linearly with the sequence length t. With `remat`, the sequence is cut into
segments of k steps; an outer `lax.scan` over the segments carries the states, and each
segment's recurrence (input projection included) runs under `jax.checkpoint`. The forward keeps
only the states at segment boundaries; the backward recomputes one segment at a time, with its
residuals, and runs that segment's backward (the transpose of the fused path's custom JVP, or
autodiff of the scan). Memory: about (t / k) boundary states plus one segment's residuals,
smallest near k = sqrt(t) (Chen et al. 2016, "Training deep nets with sublinear memory cost";
`jax.checkpoint` over scan chunks as in jax-ml/jax#2139); time: one more forward pass.

A length t = n k + r that k does not divide gets n segments of k steps and one of r steps
(the last in time: the first processed under `go_backwards`). Every segment computes exactly
what the same steps compute without segments, so the outputs and states are those of the
unsegmented recurrence, and the gradients equal its gradients up to float rounding (the weight
gradients are summed segment by segment instead of over all steps at once).

Shapes: b = batch, t = time, f = features, u = units.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxseq.typing import Array


def check_remat(remat, where: str) -> None:
    """`remat` must be a bool or a positive int; a ValueError naming it otherwise."""
    if isinstance(remat, (bool, jnp.bool_)):
        return
    if isinstance(remat, numbers.Integral) and remat >= 1:
        return
    raise ValueError(
        f"{where} expects remat to be False (no checkpointing), True (segments of about "
        f"ceil(sqrt(time)) steps) or a positive int k (segments of k steps); got {remat!r}."
    )


def segment_length(remat, time: int) -> int | None:
    """The segment length that `remat` (checked by `check_remat`) gives a sequence of `time`
    steps, or None for no checkpointing: False; or a length that leaves a single segment
    (k >= time), which would recompute the whole forward and keep as much as without it."""
    if isinstance(remat, (bool, jnp.bool_)):
        k = math.ceil(math.sqrt(time)) if remat else time
    else:
        k = int(remat)
    return k if k < time else None


def _split(a: Array | None, n: int, k: int):
    """a (b, t, ...) -> (head (n, b, k, ...), tail (b, t - n k, ...)); None stays None."""
    if a is None:
        return None, None
    head = a[:, :n * k].reshape(a.shape[0], n, k, *a.shape[2:])
    return jnp.moveaxis(head, 1, 0), a[:, n * k:]


def segmented(body: Callable, states: tuple[Array, ...], seqs: tuple[Array | None, ...],
              k: int, *, reverse: bool, emit: bool):
    """Run `body` over segments of k steps, each under `jax.checkpoint`, carrying the states.

    body(states, segment) -> (states, ys): `segment` is `seqs` cut to one segment, each
    (b, s, ...) in time order (s = k, or the remainder); ys (b, s, u) in processing order, or
    None when not `emit`. seqs: arrays (b, t, ...) in time order, or None. reverse: process the
    segments from the last (go_backwards). Returns (final_states, ys (b, t, u) in processing
    order, or None).
    """
    time = next(a for a in seqs if a is not None).shape[1]
    n, r = divmod(time, k)
    heads, tails = zip(*(_split(a, n, k) for a in seqs), strict=True)
    in_scan = jax.checkpoint(body, prevent_cse=False)  # scan bodies are not CSE'd across steps
    alone = jax.checkpoint(body)

    def run_head(states):
        final, ys = jax.lax.scan(in_scan, states, heads, reverse=reverse)
        if ys is None:
            return final, None
        if reverse:  # segment j's outputs sit at j (time order); processing order is reversed
            ys = jnp.flip(ys, axis=0)
        ys = jnp.moveaxis(ys, 0, 1)
        return final, ys.reshape(ys.shape[0], n * k, *ys.shape[3:])

    if r == 0:
        return run_head(states)
    if reverse:
        states, ys_tail = alone(states, tails)
        final, ys_head = run_head(states)
        parts = (ys_tail, ys_head)
    else:
        states, ys_head = run_head(states)
        final, ys_tail = alone(states, tails)
        parts = (ys_head, ys_tail)
    return final, (jnp.concatenate(parts, axis=1) if emit else None)


def scan_body(step: Callable, project: Callable, *, reverse: bool, unroll: int) -> Callable:
    """The scan path's `body` for `segmented`: project the segment's inputs in one product,
    then `lax.scan` `step(states, (xp_t (b, g), m_t (b,) or None)) -> (states, y_t or None)`
    over its steps (from the last under `reverse`); ys come back in processing order."""

    def body(states, xm):
        x, m = xm
        xs = (jnp.swapaxes(project(x), 0, 1), None if m is None else m.T)
        final, ys = jax.lax.scan(step, states, xs, reverse=reverse,
                                 unroll=max(1, min(unroll, x.shape[1])))
        if ys is None:
            return final, None
        ys = jnp.swapaxes(ys, 0, 1)
        return final, (jnp.flip(ys, axis=1) if reverse else ys)

    return body

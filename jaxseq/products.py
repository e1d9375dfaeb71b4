"""The recurrences' matrix products, with tiny ones as an elementwise multiply and a sum.

XLA:CPU's dot has a fixed cost that dominates a tiny product, where the multiply and sum is one
loop fusion that XLA fuses with its neighbours; above `SMALL_PRODUCT` multiply-adds the dot
wins (the threshold is named in `jaxseq.tuning`, the measurements are on the benchmarks page).

* `matmul` / `matmul_t`: decide by the product's own size (what the scan path's cells use; they
  are differentiated by JAX's autodiff, forward and reverse).
* `fused_matmul` / `fused_matmul_t`: the same, but under `jax.vmap` (replicas, splits x seeds)
  they decide by the size of ALL the products together (`jax.custom_batching.custom_vmap`,
  against `SMALL_STACKED`): many replicas of a small product make a multiply and sum larger
  than the batched dot, where a few tiny ones are still faster as one. They serve the fused
  path's forward (differentiable through a `custom_jvp` on plain products).
  Weights shared by all replicas (only `a` mapped) make ONE (r*m, k) @ (k, n) product, under
  the one-product limit.
* `replicas`: the replica count read from the named vmap axes of jaxseq's drivers, for the
  products that cannot be `fused_matmul`s: the fused path's derivative products, which reverse
  mode transposes (`matmul(..., replicas=...)`).

Every form computes the same sums in another order: equal to float rounding. Only float32 and
float64 take the multiply and sum; other dtypes (bfloat16, float16) always take the dot, which
accumulates in higher precision.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxseq.tuning import SMALL_PRODUCT, SMALL_STACKED
from jaxseq.typing import Array

__all__ = [
    "REPLICA_AXES", "REPLICA_AXIS", "SMALL_PRODUCT", "SMALL_STACKED", "SPLIT_AXES",
    "fused_matmul", "fused_matmul_t", "matmul", "matmul_t", "replicas",
]


def _small(count: int, *operands, replicas: int = 1) -> bool:
    limit = SMALL_PRODUCT if operands[0].ndim == 2 and replicas == 1 else SMALL_STACKED
    return (count * replicas <= limit
            and jnp.result_type(*operands) in (jnp.float32, jnp.float64))


def matmul(a: Array, w: Array, *, replicas: int = 1) -> Array:
    """a (..., m, k) @ w (..., k, n) -> (..., m, n), the same leading axes on both; a tiny
    product (`_small`) as multiply and sum over k. replicas: how many `jax.vmap`-ed copies of
    this product run together (`replicas`); the size rule counts them all."""
    count = math.prod(a.shape) * w.shape[-1]
    if _small(count, a, w, replicas=replicas):
        return jnp.sum(a[..., :, :, None] * w[..., None, :, :], axis=-2)
    return jnp.matmul(a, w)


def matmul_t(a: Array, b: Array, *, replicas: int = 1) -> Array:
    """a.T @ b: a (..., m, k), b (..., m, n) -> (..., k, n), contracting the rows (a weight
    gradient); a tiny product as multiply and sum over m. replicas: as for `matmul`."""
    count = math.prod(a.shape) * b.shape[-1]
    if _small(count, a, b, replicas=replicas):
        return jnp.sum(a[..., :, :, None] * b[..., :, None, :], axis=-3)
    return jnp.matmul(jnp.swapaxes(a, -1, -2), b)


def _stacked(product):
    """`product` on operands with the same leading axes, as a `custom_vmap` function whose
    batching rule moves the mapped axis into those leading axes (nested vmaps: recursively),
    so that the size rule sees every replica's product at once."""

    @jax.custom_batching.custom_vmap
    def f(a, b):
        return product(a, b)

    @f.def_vmap
    def rule(axis_size, in_batched, a, b):
        a_batched, b_batched = in_batched
        if a_batched and not b_batched and product is matmul and b.ndim == 2 and a.ndim == 3:
            r, m, k = a.shape  # shared weights: one (r*m, k) @ (k, n) product
            return f(a.reshape(r * m, k), b).reshape(r, m, b.shape[-1]), True
        if not a_batched:
            a = jnp.broadcast_to(a, (axis_size, *a.shape))
        if not b_batched:
            b = jnp.broadcast_to(b, (axis_size, *b.shape))
        return f(a, b), True

    return f


def _fused(product, doc: str):
    """`_stacked(product)` made differentiable: a custom_jvp whose tangents are the plain
    products (linear, so JAX transposes them for reverse mode; differentiable to any order, the
    primal recomputed through this same function), while the primal keeps the batching rule.
    custom_vmap alone has no reverse mode, and a custom_vjp here would stop forward-over-reverse
    through the fused path's backward (`jax.hessian` of a model)."""
    stacked = _stacked(product)

    @jax.custom_jvp
    def f(a, b):
        return stacked(a, b)

    @f.defjvp
    def jvp(primals, tangents):
        (a, b), (da, db) = primals, tangents
        return f(a, b), product(da, b) + product(a, db)

    f.__doc__ = doc
    return f


fused_matmul = _fused(matmul, """`matmul` whose size rule counts the products of every `jax.vmap`-ed
replica together. a (m, k), w (k, n); under vmap the mapped axes lead both.""")
fused_matmul_t = _fused(matmul_t, """`matmul_t` whose size rule counts the products of every
`jax.vmap`-ed replica together. a (m, k), b (m, n); under vmap the mapped axes lead both.""")


# The names of the `jax.vmap` axes over which jaxseq's drivers run replicas of a training
# program (`fit_replicas`: one axis; `cross_validate`: splits x seeds); `replicas` counts them.
# The same names as `jaxseq.training.spec.REPLICA_AXIS` / `SPLIT_AXES` (the layers sit below
# training and do not import it; tests/test_forward_mode.py checks that they agree).
REPLICA_AXIS = "replica"
SPLIT_AXES = ("split", "seed")
REPLICA_AXES = (REPLICA_AXIS, *SPLIT_AXES)


def replicas() -> int:
    """How many replicas the program being traced runs as one vmapped program: the product of
    the sizes of the bound `REPLICA_AXES` (1 outside them). For products whose size rule must
    see every replica but that cannot be `fused_matmul`s: the linear products of a custom JVP,
    which reverse mode transposes (`custom_vmap` has no transpose rule). A replica axis that
    is not named so counts as one replica (the size rule then sees one product at a time)."""
    count = 1
    for name in REPLICA_AXES:
        try:
            count *= jax.lax.axis_size(name)
        except NameError:  # not bound here
            pass
    return count

"""A fused recurrence whose derivatives follow cuDNN's backward algorithm, in plain JAX.

Autodiff of `lax.scan` accumulates the weight gradients with one small product per time step
inside the backward loop. `recurrence` is a `jax.custom_jvp` over the whole layer computation
(input projection included) whose tangent is a linear recurrence written so that reverse mode,
which JAX derives by transposing it, has a backward loop that carries only (dh, dc) and does
only what depends on them, one product with `recurrent_kernel.T` per step; every weight
gradient is then ONE large product over all steps at once (time and batch contracted together):

    dZ (b*t, g) = the gate gradients       d kernel = X.T @ dZ       d x = dZ @ kernel.T
    d recurrent_kernel = H_prev.T @ dZ     d bias = sum(dZ)

Forward mode (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) evaluates the same tangent recurrence:
one loop over the steps next to the forward's. Both modes differentiate again (`jax.hessian`,
gradients of gradients), through the same rule.

Layout: batch-major, as the layer gets its input: the projection `x @ kernel` is one product on
(b*t, f), the loop reads step t as the slice [:, t] and writes its outputs in place; no flips
(`go_backwards` only changes which slice a step reads and writes). The factors the tangent loop
reads are saved time-major, as the scanned inputs of that loop.

Choices by size (the thresholds are named in `jaxseq.tuning`, the measurements that chose them
are on the benchmarks page): every gate nonlinearity in one elementwise pass (one tanh for
sigmoid gates); for small steps (XLA runs their products on one thread) the recurrent product is
taken per gate (`split_products`) and the training forward folds the input projection into the
step (`project_in_loop`), which keeps the (b, t, g) projection out of memory; the loop unroll
of a layer that leaves `unroll=False` is `tuning.AUTO_UNROLL`.

What the forward saves when differentiated, per step (b = batch, u = units): the factors that
the tangent (and backward) step multiplies its carried tangents by, computed in the forward's
own elementwise pass, where every operand is at hand (so neither recomputes an activation or a
product), and h_prev:
  LSTM       4u gate factors, o act'(c), f, h_prev             7u
  GRU        3u gate factors, z, (1 - z) act'(h~), h_prev        6u
  SimpleRNN  act'(h), h_prev                                     2u
(`residual_bytes`; reverse mode keeps exactly these). Autodiff of the scan keeps a similar
amount (its step residuals); measured temp memory of the compiled fwd+bwd is in README.md
(Performance).

Supported: LSTMCell, GRUCell (reset_after=True) and SimpleRNNCell with activations
`tanh | sigmoid | linear | relu` (by name, or the same functions), every mask, go_backwards,
zero_output_for_mask, initial states, a recurrent-dropout mask, outputs or final states only;
forward- and reverse-mode derivatives w.r.t. every floating input, to any order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxseq import products
from jaxseq.activations import ACTIVATIONS
from jaxseq.cells import CellBase, GRUCell, LSTMCell, SimpleRNNCell, matmul_last
from jaxseq.products import fused_matmul, matmul
from jaxseq.tuning import SMALL_STEP_MULTIPLY_ADDS
from jaxseq.typing import Array

# name -> (activation, its derivative written in terms of the activation's OUTPUT y)
_ACT: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "tanh": (jnp.tanh, lambda y: 1 - y * y),
    "sigmoid": (jax.nn.sigmoid, lambda y: y * (1 - y)),
    "linear": (lambda v: v, jnp.ones_like),
    "relu": (jax.nn.relu, lambda y: (y > 0).astype(y.dtype)),
}
_KINDS = {LSTMCell: "lstm", GRUCell: "gru", SimpleRNNCell: "simple_rnn"}


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static configuration of one fused recurrence (hashable; a `nondiff_argnums` argument).

    kind: "lstm" | "gru" | "simple_rnn"; activation / recurrent_activation: names in `_ACT`;
    zero_output_for_mask: masked steps output zeros instead of the previous h;
    emit: return the per-step outputs (else only the final states); reverse: process time from
    the end (Keras' go_backwards); unroll: loop unroll.
    """

    kind: str
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    zero_output_for_mask: bool = False
    emit: bool = True
    reverse: bool = False
    unroll: int = 1


def _activation_name(act) -> str | None:
    if act is None:
        return "linear"
    if isinstance(act, str):
        return act if act in _ACT else None
    for name in _ACT:
        if ACTIVATIONS.get(name) is act:
            return name
    return None


def unsupported(cell: CellBase) -> str | None:
    """Why the fused path cannot run this cell, or None when it can."""
    kind = _KINDS.get(type(cell))
    if kind is None:
        return f"cell class {type(cell).__name__} (only LSTMCell, GRUCell, SimpleRNNCell)"
    if kind == "gru" and not cell.reset_after:
        return "GRU reset_after=False"
    if getattr(cell, "layer_norm", False):
        return "layer_norm=True"
    if kind == "lstm" and cell.proj_size:
        return f"LSTM proj_size={cell.proj_size} (a projection)"
    names = [("activation", cell.activation)]
    if kind != "simple_rnn":
        names.append(("recurrent_activation", cell.recurrent_activation))
    for field, act in names:
        if _activation_name(act) is None:
            return f"{field}={act!r} (fused supports {', '.join(_ACT)})"
    return None


def spec_for(cell: CellBase, **kw) -> Spec:
    """The Spec of `cell`'s math; `kw`: the layer's flags (Spec fields)."""
    ract = getattr(cell, "recurrent_activation", "sigmoid")
    return Spec(
        kind=_KINDS[type(cell)],
        activation=_activation_name(cell.activation),
        recurrent_activation=_activation_name(ract),
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# Helpers. Gates live in a (b, n, u) view of the (b, n*u) pre-activations, so that every gate
# nonlinearity is ONE elementwise pass over one array (XLA:CPU emits one vectorized loop for it;
# slicing the gates apart first costs several loops per step and measured 4x the time).


def _keep(m_t, new, old):
    return new if m_t is None else jnp.where(m_t[:, None], new, old)


def _lane(n: int):
    """(1, n, 1) gate index, to select per gate inside one elementwise expression."""
    return jax.lax.broadcasted_iota(jnp.int32, (1, n, 1), 1)


def _gate_act(spec: Spec, z: Array, act_lane: int | None) -> Array:
    """recurrent_activation on every gate of z (b, n, u), activation on gate `act_lane`.

    For the default pair (tanh, sigmoid) this is one tanh: sigmoid(v) = 0.5 * tanh(v / 2) + 0.5.
    """
    lane = _lane(z.shape[1])
    if spec.recurrent_activation == "sigmoid" and (act_lane is None or spec.activation == "tanh"):
        scale = jnp.where(lane == act_lane, 1.0, 0.5).astype(z.dtype)
        shift = jnp.where(lane == act_lane, 0.0, 0.5).astype(z.dtype)
        return jnp.tanh(z * scale) * scale + shift
    act, _ = _ACT[spec.activation]
    ract, _ = _ACT[spec.recurrent_activation]
    if act_lane is None:
        return ract(z)
    return jnp.where(lane == act_lane, act(z), ract(z))


def _at(a: Array, t) -> Array:
    """a[:, t]: step t of a batch-major (b, t, ...) array."""
    return jax.lax.dynamic_index_in_dim(a, t, axis=1, keepdims=False)


def _put(buf: Array, value: Array, t) -> Array:
    return jax.lax.dynamic_update_index_in_dim(buf, value, t, axis=1)


def _time_index(spec: Spec, steps: int, t):
    """The time index that processing step t reads (reversed under go_backwards)."""
    return steps - 1 - t if spec.reverse else t


# ---------------------------------------------------------------------------------------------
# Forward


def _forward(spec: Spec, x, kernel, xb, rk, rb, states, mask, rmask, *, save: bool):
    """`_forward_variant`, with the input projection inside the step where that pays: only when
    training, on CPU (chosen by the platform the program is lowered for, not the default
    backend) and at small sizes (`project_in_loop`)."""
    b, _, _ = x.shape
    u = rk.shape[0]
    n = rk.shape[1] // u
    args = (spec, x, kernel, xb, rk, rb, states, mask, rmask)
    if not (save and spec.kind != "gru" and project_in_loop(b, u, n)):
        return _forward_variant(*args, save=save, in_loop=False)
    return jax.lax.platform_dependent(
        cpu=lambda: _forward_variant(*args, save=save, in_loop=True),
        default=lambda: _forward_variant(*args, save=save, in_loop=False))


def _forward_variant(spec: Spec, x, kernel, xb, rk, rb, states, mask, rmask, *, save: bool,
                     in_loop: bool):
    """x (b, t, f) -> ((ys, final_states), residuals); residuals is None unless `save`.

    ys (b, t, u) is in processing order; the residuals are in time order, the loop's factors
    time-major (the tangent loop's scanned inputs) and h_prev batch-major, as x (it meets the
    weights' tangents only, in products over all steps):
      LSTM       (k (t, b, 4, u) = [g ract'(i), c_prev ract'(f), i act'(g), act(c) ract'(o)],
                  e = o act'(c) (t, b, u), f (t, b, u), h_prev (b, t, u))
      GRU        (k (t, b, 3, u) = [kz, kr, kh r], z, kh, h_prev (b, t, u)) with kz =
                  (h_prev - h~) ract'(z), kh = (1 - z) act'(h~), kr = kh (h_prev @ rk_h + b_h)
                  ract'(r)
      SimpleRNN  (act'(h_new) (t, b, u), h_prev (b, t, u))
    """
    act, dact = _ACT[spec.activation]
    _, dract = _ACT[spec.recurrent_activation]
    b, steps, f = x.shape
    u = rk.shape[0]
    n = rk.shape[1] // u
    dtype = rk.dtype
    # The products: without `save` (the custom_jvp's primal, which JAX never differentiates)
    # `fused_matmul`, whose size rule counts every vmapped replica from its batching rule;
    # with `save` (the JVP rule's forward, which higher-order derivatives differentiate) plain
    # products told the replica count (`products.replicas`): a `custom_vmap` cannot be
    # linearized where the JVP rule is traced.
    mm = fused_matmul if not save else functools.partial(matmul, replicas=products.replicas())
    # The input projection: hoisted out of the loop as ONE product (b*t, f) @ (f, g), or, when
    # `in_loop`, inside the step as [x_t, h] @ [kernel; recurrent_kernel] (`project_in_loop`).
    if in_loop:
        xp, w_cat = x, jnp.concatenate([kernel, rk], axis=0)
    else:
        xp = matmul_last(x, kernel, mm)

    def pre(xp_t, h):
        """(x-part, h-part) of the pre-activations, each (b, n, u); the h-part is a scalar 0
        when the x-part holds the sum."""
        hr = h if rmask is None else h * rmask
        if in_loop:
            z = mm(jnp.concatenate([xp_t, hr], axis=1), w_cat)
            z = z if xb is None else z + xb[None, :]
            return z.reshape(b, n, u), jnp.zeros((), z.dtype)
        xin = xp_t if xb is None else xp_t + xb[None, :]
        inner = mm(hr, rk)
        if rb is not None:
            inner = inner + rb[None, :]
        return xin.reshape(b, n, u), inner.reshape(b, n, u)

    def zeros(*gates):
        return jnp.zeros((steps, b, *gates, u), dtype)

    def zeros_bm():
        return jnp.zeros((b, steps, u), dtype)

    if spec.kind == "lstm":
        res0 = (zeros(4), zeros(), zeros(), zeros_bm()) if save else ()

        def cell(h, c, xp_t):
            xin, inner = pre(xp_t, h)
            a = _gate_act(spec, xin + inner, 2)
            i, fg, g, o = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
            c_new = fg * c + i * g
            tc = act(c_new)
            h_new = o * tc
            if not save:
                return h_new, c_new, ()
            k = jnp.stack([g * dract(i), c * dract(fg), i * dact(g), tc * dract(o)], axis=1)
            return h_new, c_new, (k, o * dact(tc), fg, h)

    elif spec.kind == "gru":
        res0 = (zeros(3), zeros(), zeros(), zeros_bm()) if save else ()

        def cell(h, c, xp_t):
            xin, inner = pre(xp_t, h)
            zr = _gate_act(spec, xin[:, :2] + inner[:, :2], None)
            z, r, rh = zr[:, 0], zr[:, 1], inner[:, 2]
            hh = act(xin[:, 2] + r * rh)
            h_new = z * h + (1 - z) * hh
            if not save:
                return h_new, c, ()
            kz = (h - hh) * dract(z)
            kh = (1 - z) * dact(hh)
            return h_new, c, (jnp.stack([kz, kh * rh * dract(r), kh * r], axis=1), z, kh, h)

    else:
        res0 = (zeros(), zeros_bm()) if save else ()

        def cell(h, c, xp_t):
            xin, inner = pre(xp_t, h)
            h_new = act((xin + inner)[:, 0])
            return h_new, c, ((dact(h_new), h) if save else ())

    def body(t, carry):
        h, c, ys, res = carry
        tau = _time_index(spec, steps, t)
        m_t = None if mask is None else _at(mask, tau)
        h_new, c_new, res_t = cell(h, c, _at(xp, tau))
        h_t = _keep(m_t, h_new, h)
        c_t = None if c is None else _keep(m_t, c_new, c)
        if spec.emit:
            y = h_t
            if spec.zero_output_for_mask and m_t is not None:
                y = jnp.where(m_t[:, None], h_new, jnp.zeros_like(h_new))
            ys = _put(ys, y, t)
        # the loop's factors time-major (the tangent scan's xs), h_prev batch-major (it only
        # meets the weights' tangents, in products over all steps with x)
        res = tuple(jax.lax.dynamic_update_index_in_dim(buf, v, tau, axis=1 if i == last else 0)
                    for i, (buf, v) in enumerate(zip(res, res_t, strict=True)))
        return h_t, c_t, ys, res

    last = len(res0) - 1
    c0 = states[1] if spec.kind == "lstm" else None
    ys0 = jnp.zeros((b, steps, u), dtype) if spec.emit else None
    h, c, ys, res = jax.lax.fori_loop(0, steps, body, (states[0], c0, ys0, res0),
                                      unroll=spec.unroll)
    final = (h, c) if spec.kind == "lstm" else (h,)
    return (ys, final), (res if save else None)


# ---------------------------------------------------------------------------------------------
# Derivatives: a custom JVP. The tangent of the recurrence is a LINEAR recurrence in the inputs'
# tangents, driven by the factors the forward saved: JAX's forward mode (jvp, jacfwd,
# linearize) evaluates it, and JAX's reverse mode transposes it. It is written so that its
# transpose is the cuDNN-style backward:
#   * everything that does not depend on the carried tangent (dh, dc) is hoisted out of the
#     loop, for all steps at once: ONE product per weight or input tangent (transposed: every
#     weight gradient is one product, time and batch contracted together), then one
#     elementwise pass with the saved factors (transposed: the gate gradients of all steps);
#   * the loop carries (dh, dc) and does a few multiplies by the step's factors and the product
#     with recurrent_kernel (transposed: the backward loop, with recurrent_kernel.T);
#   * the factors are the scan's inputs, time-major, and every known value that meets a tangent
#     is a saved array or an input as it lies: reverse mode keeps exactly those (a slice,
#     transpose or product of one would be kept as a new array);
#   * the hoisted terms are read, and their cotangents written, at their step of batch-major
#     (b, t, u) arrays: each step updates its slice in place.
# Reverse mode therefore has the fused backward's products, loop and memory (measured against
# it in tests and the docs: same temp memory within a few %, same time).


def _small_step(batch: int, units: int, gates: int) -> bool:
    """Whether a step's product h @ recurrent_kernel is small enough that XLA:CPU runs it on
    one thread (`tuning.SMALL_STEP_MULTIPLY_ADDS`). The CPU variants this enables are chosen
    with `jax.lax.platform_dependent`: by the platform the program is lowered for (a CPU mesh
    on a GPU host, an export for another platform)."""
    return 2 * batch * gates * units * units < SMALL_STEP_MULTIPLY_ADDS


def split_products(batch: int, units: int, gates: int) -> bool:
    """Whether the tangent loop multiplies by recurrent_kernel gate by gate (n products
    (b, u) @ (u, u)) rather than once ((b, u) @ (u, n*u)); transposed, the backward step then
    takes n products with the gates' cotangents and assembles no gate array: for a small step,
    where the per-gate products need no gate array assembled; a large product runs on every
    core, better as one."""
    return _small_step(batch, units, gates)


def project_in_loop(batch: int, units: int, gates: int) -> bool:
    """Whether the training forward computes x_t @ kernel inside the step, fused with the
    recurrent product ([x_t, h] @ [kernel; recurrent_kernel]), instead of one hoisted product:
    for a small step, where dropping the (b, t, g) projection from memory keeps the program's
    temporary buffers under glibc's largest mmap threshold (32 MiB), so they stop being mapped
    fresh (and page-faulted) on every call. Large steps keep the hoisted product; so does
    inference (no residuals to make room for) and the GRU, whose x- and h-parts must stay
    apart."""
    return _small_step(batch, units, gates)


def _nonzero(t):
    """A tangent, or None for a symbolic zero or an absent input."""
    return None if t is None or isinstance(t, SymbolicZero) else t


def _add(a, b):
    return b if a is None else (a if b is None else a + b)


def _time_major(a: Array) -> Array:
    return jnp.swapaxes(a, 0, 1)


def _rows(a: Array) -> Array:
    """(b, t, k) -> (b*t, k): every product over all steps is ONE 2-D product."""
    return a.reshape(-1, a.shape[-1])


def _gate_sum(a: Array, which=None) -> Array:
    """Sum over the gate axis (-2) of a, of the gates where `which` holds (all by default): a
    select and a reduction, whose transpose is a broadcast and a select, one elementwise pass
    (slices would transpose into one padded array per gate)."""
    return jnp.sum(a if which is None else jnp.where(which, a, 0), axis=-2)


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _masked_h_drk(h_prev, rmask, drk, replicas: int):
    """(h_prev * rmask) @ drk, (b*t, g), for h_prev (b, t, u) and rmask (b, u). Under
    `jax.checkpoint`: reverse mode keeps h_prev and rmask, not their product."""
    return matmul(_rows(h_prev * rmask[:, None]), drk, replicas=replicas)


@functools.partial(jax.checkpoint, static_argnums=(0,), prevent_cse=False)
def _combine(kind: str, k, kh, dxp, dhp):
    """The hoisted terms (`_hoisted`) from the saved gate factors k (t, b, n, u) (GRU: and
    kh (t, b, u)) and the pre-activations' tangents dxp, dhp (b, t, n, u) or None. Under
    `jax.checkpoint`: reverse mode reads k transposed in its elementwise pass instead of
    keeping a transposed copy."""
    k = _time_major(k)
    lane = _lane(k.shape[2])[None]  # (1, 1, n, 1)
    if kind == "gru":  # the candidate's x-part meets kh, its h-part k[..., 2, :] = kh r
        v = None
        if dxp is not None:
            v = _gate_sum(jnp.where(lane == 2, _time_major(kh)[:, :, None] * dxp, k * dxp))
        if dhp is not None:
            v = _add(v, _gate_sum(k * dhp))
        return (v,)
    dp = dhp if dxp is None else dxp
    if kind == "lstm":
        kdp = k * dp
        return _gate_sum(kdp, lane < 3), _gate_sum(kdp, lane == 3)
    return (k * dp[:, :, 0],)


def _hoisted(spec: Spec, x, kernel, rk, rmask, res, tangents, replicas: int):
    """The tangent terms of every step that do not depend on the carried tangent, for all steps
    at once, each (b, t, u) or None where zero:
      LSTM       (uc, uh): dc_new = f dc + uc + (dh terms), dh_new = e dc_new + uh + (dh terms)
      GRU        (v,): dh_new = z dh + v + (dh terms)
      SimpleRNN  (v,): dh_new = v + (dh terms)
    """
    dx, dkernel, dxb, drk, drb, _, _, drmask = map(_nonzero, tangents)
    h_prev = res[-1]
    b, steps, u = h_prev.shape
    n = rk.shape[1] // u
    mm = functools.partial(matmul, replicas=replicas)
    # d(x @ kernel + input_bias) and d((h_prev * rmask) @ recurrent_kernel + recurrent_bias)
    # but for the carried dh: one product each, batch-major as x and h_prev lie, (b*t, g), and
    # summed in that shape (one cotangent array for all of them); the GRU keeps the x-part
    # and the h-part apart (its candidate gate needs them apart)
    dxp = None if dx is None else mm(_rows(dx), kernel)
    if dkernel is not None:
        dxp = _add(dxp, mm(_rows(x), dkernel))
    if dxb is not None:
        dxp = _add(dxp, dxb[None])
    dhp = None
    if drk is not None:
        dhp = (mm(_rows(h_prev), drk) if rmask is None
               else _masked_h_drk(h_prev, rmask, drk, replicas))
    if drmask is not None:
        dhp = _add(dhp, mm(_rows(h_prev * drmask[:, None]), rk))
    if drb is not None:
        dhp = _add(dhp, drb[None])
    if spec.kind != "gru" and dxp is not None and dhp is not None:
        dxp, dhp = dxp + dhp, None
    if dxp is None and dhp is None:
        return (None, None) if spec.kind == "lstm" else (None,)
    dxp, dhp = (None if a is None else jnp.broadcast_to(a, (b * steps, n * u)).reshape(
        b, steps, n, u) for a in (dxp, dhp))
    return _combine(spec.kind, res[0], res[2] if spec.kind == "gru" else None, dxp, dhp)


def _tangent(spec: Spec, x, kernel, rk, mask, rmask, res, tangents, *, split: bool):
    """The tangent (dys, dfinal) of `_forward`'s output, linear in `tangents` (the tangents of
    `_recurrence`'s differentiable inputs, symbolic zeros allowed); res: the forward's saved
    factors. Shapes and order as `_forward`'s output."""
    b, steps, u = res[-1].shape
    n = rk.shape[1] // u
    dtype = rk.dtype
    # Products whose size rule counts every vmapped replica, as `products.fused_matmul` does
    # (which reverse mode cannot transpose).
    replicas = products.replicas()
    hoisted = _hoisted(spec, x, kernel, rk, rmask, res, tangents, replicas)
    # recurrent_kernel transposed (split: each gate's block), materialized once before the
    # loop: reverse mode multiplies by these as they lie in memory. Without the barrier XLA
    # sinks the transposes into the loop body.
    rk_t = jax.lax.optimization_barrier(
        tuple(rk[:, j * u:(j + 1) * u].T for j in range(n)) if split else rk.T)
    lane = _lane(n)  # (1, n, 1)

    def recurrent(dh):
        """The carried dh's part of the step's pre-activations, (b, n, u)."""
        dhr = dh if rmask is None else dh * rmask
        if split:
            return jnp.stack([matmul(dhr, w.T, replicas=replicas) for w in rk_t], axis=1)
        return matmul(dhr, rk_t.T, replicas=replicas).reshape(b, n, u)

    def at(a, tau):  # a[:, tau]: tau in range, so no index arithmetic (that reverse mode keeps)
        return None if a is None else jax.lax.dynamic_index_in_dim(
            a, tau, axis=1, keepdims=False, allow_negative_indices=False)

    if spec.kind == "lstm":
        uc, uh = hoisted

        def cell(dh, dc, tau, factors):
            k, e, fg = factors
            s = k * recurrent(dh)
            dc_new = _add(fg * dc + _gate_sum(s, lane < 3), at(uc, tau))
            return _add(e * dc_new + _gate_sum(s, lane == 3), at(uh, tau)), dc_new

        factors = res[:3]
    elif spec.kind == "gru":
        (v,) = hoisted

        def cell(dh, dc, tau, factors):
            k, z = factors
            return _add(z * dh + _gate_sum(k * recurrent(dh)), at(v, tau)), dc

        factors = res[:2]
    else:
        (v,) = hoisted

        def cell(dh, dc, tau, factors):
            return _add(factors[0] * recurrent(dh)[:, 0], at(v, tau)), dc

        factors = res[:1]

    def body(carry, xs):
        dh, dc = carry
        tau, m_t, factors = xs
        dh_new, dc_new = cell(dh, dc, tau, factors)
        if m_t is None:
            dh_t, dc_t = dh_new, dc_new
        else:
            dh_t = jnp.where(m_t, dh_new, dh)
            dc_t = None if dc is None else jnp.where(m_t, dc_new, dc)
        y = None
        if spec.emit:
            y = dh_t
            if spec.zero_output_for_mask and m_t is not None:
                y = jnp.where(m_t, dh_new, 0)
        return (dh_t, dc_t), y

    dstates = [jnp.zeros((b, u), dtype) if _nonzero(t) is None else t for t in tangents[5]]
    dc0 = dstates[1] if spec.kind == "lstm" else None
    m = None if mask is None else mask.T[:, :, None]  # (t, b, 1)
    (dh, dc), dys = jax.lax.scan(body, (dstates[0], dc0), (jnp.arange(steps), m, factors),
                                 reverse=spec.reverse, unroll=spec.unroll)
    if dys is not None:  # (t, b, u) in time order -> (b, t, u) in processing order
        dys = _time_major(dys)
        dys = jnp.flip(dys, axis=1) if spec.reverse else dys
    return dys, ((dh, dc) if spec.kind == "lstm" else (dh,))


def _fused_recurrence(spec, x, kernel, xb, rk, rb, states, mask, rmask):
    return _forward(spec, x, kernel, xb, rk, rb, states, mask, rmask, save=False)[0]


def _recurrence_jvp(spec, primals, tangents):
    """The forward with its factors saved, and the tangent recurrence (`_tangent`); per-gate
    products on CPU at small sizes (`split_products`, chosen by the lowering platform)."""
    x, kernel, xb, rk, rb, states, mask, rmask = primals
    out, res = _forward(spec, x, kernel, xb, rk, rb, states, mask, rmask, save=True)
    b, _, _ = x.shape
    u = rk.shape[0]
    n = rk.shape[1] // u
    # Under `jax.checkpoint`: reverse mode keeps the tangent's known inputs as they are (the
    # saved factors and the inputs), and recomputes any view of them (reshapes, slices,
    # broadcast masks: free under jit) rather than keeping it as one more array.
    tangent = lambda split: jax.checkpoint(functools.partial(_tangent, spec, split=split),
                                           prevent_cse=False)(
        x, kernel, rk, mask, rmask, res,
        jax.tree.map(_nonzero, tangents, is_leaf=lambda t: isinstance(t, SymbolicZero)))
    if not split_products(b, u, n):
        return out, tangent(False)
    return out, jax.lax.platform_dependent(cpu=lambda: tangent(True),
                                           default=lambda: tangent(False))


_recurrence = jax.custom_jvp(_fused_recurrence, nondiff_argnums=(0,))
_recurrence.defjvp(_recurrence_jvp, symbolic_zeros=True)


def recurrence(
    spec: Spec,
    x: Array,
    kernel: Array,
    input_bias: Array | None,
    recurrent_kernel: Array,
    recurrent_bias: Array | None,
    states: tuple[Array, ...],
    mask: Array | None = None,
    rmask: Array | None = None,
) -> tuple[Array | None, tuple[Array, ...]]:
    """A recurrent layer's computation, input projection included, with the fused derivatives
    (a custom JVP whose transpose is the fused backward; see the module docstring).

    x: (b, t, f) batch-major; kernel (f, g) with g = gates * u; input_bias (g,) or None;
    recurrent_kernel (u, g); recurrent_bias (g,) (GRU's second bias row: added to
    `h @ recurrent_kernel`) or None; states: LSTM (h, c), else (h,), each (b, u); mask: (b, t)
    bool or None; rmask: (b, u) recurrent-dropout mask or None. Returns (ys, final_states):
    ys (b, t, u) in processing order (None unless `spec.emit`), final_states like `states`.
    """
    return _recurrence(spec, x, kernel, input_bias, recurrent_kernel, recurrent_bias,
                       tuple(states), mask, rmask)


def residual_bytes(spec: Spec, t: int, b: int, u: int, itemsize: int = 4) -> int:
    """Bytes the forward saves for the backward besides its inputs (see the module doc)."""
    per_step = {"lstm": 7 * u, "gru": 6 * u, "simple_rnn": 2 * u}[spec.kind]
    return t * b * per_step * itemsize


def layer_recurrence(cell: CellBase, params, x, states, mask, rmask, *,
                     zero_output_for_mask: bool, emit: bool, reverse: bool, unroll: int):
    """The fused path of the cell layers (`LSTM`, `GRU`, `SimpleRNN`): x (b, t, f), mask (b, t)
    bool or None, rmask (b, u) or None; the flags as on `Spec`, `unroll` >= 1.

    Returns (final_states, ys) with ys (b, t, u) in processing order (reversed time under
    `reverse`, as Keras returns it), or None without `emit`.
    """
    spec = spec_for(cell, zero_output_for_mask=zero_output_for_mask, emit=emit,
                    reverse=reverse, unroll=unroll)
    rb = params["bias"][1] if isinstance(cell, GRUCell) and cell.use_bias else None
    ys, final = recurrence(spec, x, params["kernel"], cell.input_bias(params),
                           params["recurrent_kernel"], rb, states, mask, rmask)
    return final, ys

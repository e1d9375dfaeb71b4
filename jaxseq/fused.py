"""A fused recurrence with a hand-written backward pass (cuDNN's algorithm, in plain JAX).

Autodiff of `lax.scan` accumulates the weight gradients with one small product per time step
inside the backward loop. `recurrence` is a `jax.custom_vjp` over the whole layer computation
(input projection included) whose backward loop carries only (dh, dc) and does only what
depends on them, one product with `recurrent_kernel.T` per step; every weight gradient is then
ONE large product over all steps at once (time and batch contracted together):

    dZ (b*t, g) = the gate gradients       d kernel = X.T @ dZ       d x = dZ @ kernel.T
    d recurrent_kernel = H_prev.T @ dZ     d bias = sum(dZ)

Layout: batch-major, as the layer gets its input: the projection `x @ kernel` is one product on
(b*t, f), the loop reads step t as the slice [:, t] and writes its outputs in place; no
transposes, no flips (`go_backwards` only changes which slice a step reads and writes).

Choices by size (the thresholds are named in `jaxseq.tuning`, the measurements that chose them
are on the benchmarks page): every gate nonlinearity in one elementwise pass (one tanh for
sigmoid gates); for small steps (XLA runs their products on one thread) the backward product is
taken per gate (`split_products`) and the training forward folds the input projection into the
step (`project_in_loop`), which keeps the (b, t, g) projection out of memory; the loop unroll
of a layer that leaves `unroll=False` is `tuning.AUTO_UNROLL`.

What the forward saves, per step (b = batch, u = units): the factors that the backward step
multiplies its carried gradients by, computed in the forward's own elementwise pass, where every
operand is at hand (so the backward recomputes no activation and no product), and h_prev:
  LSTM       4u gate factors, o act'(c), f, h_prev             7u
  GRU        3u gate factors, z, (1 - z) act'(h~), h_prev        6u
  SimpleRNN  act'(h), h_prev                                     2u
(`residual_bytes`). Autodiff of the scan keeps a similar amount (its step residuals); measured
temp memory of the compiled fwd+bwd is in README.md (Performance).

Supported: LSTMCell, GRUCell (reset_after=True) and SimpleRNNCell with activations
`tanh | sigmoid | linear | relu` (by name, or the same functions), every mask, go_backwards,
zero_output_for_mask, initial states, a recurrent-dropout mask, outputs or final states only.
Reverse mode only: `jax.jvp` / `jax.jacfwd` through it raise (as for any custom_vjp); use the
layer's `implementation="scan"` for forward-mode derivatives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxseq.activations import ACTIVATIONS
from jaxseq.cells import CellBase, GRUCell, LSTMCell, SimpleRNNCell, matmul_last
from jaxseq.products import fused_matmul as matmul
from jaxseq.products import fused_matmul_t as matmul_t
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

    ys (b, t, u) is in processing order; the residuals are in time order (aligned with x):
      LSTM       (k (b, t, 4, u) = [g ract'(i), c_prev ract'(f), i act'(g), act(c) ract'(o)],
                  e = o act'(c), f, h_prev)
      GRU        (k (b, t, 3, u) = [kz, kr, kh r], z, kh, h_prev) with kz = (h_prev - h~)
                  ract'(z), kh = (1 - z) act'(h~), kr = kh (h_prev @ rk_h + b_h) ract'(r)
      SimpleRNN  (act'(h_new), h_prev)
    """
    act, dact = _ACT[spec.activation]
    _, dract = _ACT[spec.recurrent_activation]
    b, steps, f = x.shape
    u = rk.shape[0]
    n = rk.shape[1] // u
    dtype = rk.dtype
    # The input projection: hoisted out of the loop as ONE product (b*t, f) @ (f, g), or, when
    # `in_loop`, inside the step as [x_t, h] @ [kernel; recurrent_kernel] (`project_in_loop`).
    if in_loop:
        xp, w_cat = x, jnp.concatenate([kernel, rk], axis=0)
    else:
        xp = matmul_last(x, kernel, matmul)

    def pre(xp_t, h):
        """(x-part, h-part) of the pre-activations, each (b, n, u); the h-part is a scalar 0
        when the x-part holds the sum."""
        hr = h if rmask is None else h * rmask
        if in_loop:
            z = matmul(jnp.concatenate([xp_t, hr], axis=1), w_cat)
            z = z if xb is None else z + xb[None, :]
            return z.reshape(b, n, u), jnp.zeros((), z.dtype)
        xin = xp_t if xb is None else xp_t + xb[None, :]
        inner = matmul(hr, rk)
        if rb is not None:
            inner = inner + rb[None, :]
        return xin.reshape(b, n, u), inner.reshape(b, n, u)

    def zeros(*shape):
        return jnp.zeros((b, steps, *shape), dtype)

    if spec.kind == "lstm":
        res0 = (zeros(4, u), zeros(u), zeros(u), zeros(u)) if save else ()

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
        res0 = (zeros(3, u), zeros(u), zeros(u), zeros(u)) if save else ()

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
        res0 = (zeros(u), zeros(u)) if save else ()

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
        res = tuple(_put(buf, v, tau) for buf, v in zip(res, res_t, strict=True))
        return h_t, c_t, ys, res

    c0 = states[1] if spec.kind == "lstm" else None
    ys0 = zeros(u) if spec.emit else None
    h, c, ys, res = jax.lax.fori_loop(0, steps, body, (states[0], c0, ys0, res0),
                                      unroll=spec.unroll)
    final = (h, c) if spec.kind == "lstm" else (h,)
    return (ys, final), (res if save else None)


# ---------------------------------------------------------------------------------------------
# Backward: the loop carries (dh, dc) and does only what depends on them: a few multiplies by
# the saved factors and the product with recurrent_kernel.T. It writes dh (and dc) per step;
# the gate gradients of all steps are rebuilt after the loop in one elementwise pass, and every
# weight gradient is one product.


def _small_step(batch: int, units: int, gates: int) -> bool:
    """Whether a step's product h @ recurrent_kernel is small enough that XLA:CPU runs it on
    one thread (`tuning.SMALL_STEP_MULTIPLY_ADDS`). The CPU variants this enables are chosen
    with `jax.lax.platform_dependent`: by the platform the program is lowered for (a CPU mesh
    on a GPU host, an export for another platform)."""
    return 2 * batch * gates * units * units < SMALL_STEP_MULTIPLY_ADDS


def split_products(batch: int, units: int, gates: int) -> bool:
    """Whether the backward step multiplies by recurrent_kernel.T gate by gate (n products
    (b, u) @ (u, u)) rather than once ((b, n*u) @ (n*u, u)): for a small step, where the
    per-gate products need no gate array assembled; a large product runs on every core,
    better as one."""
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


def _backward(spec: Spec, x, kernel, rk, rb, states, mask, rmask, res, dys, dfinal):
    """-> (dx, dkernel, dxb, drk, drb, dstates, drmask); per-gate products on CPU at small sizes
    (`split_products`, chosen by the lowering platform)."""
    b, _, _ = x.shape
    u = rk.shape[0]
    n = rk.shape[1] // u
    args = (spec, x, kernel, rk, rb, states, mask, rmask, res, dys, dfinal)
    if not split_products(b, u, n):
        return _backward_variant(*args, split=False)
    return jax.lax.platform_dependent(cpu=lambda: _backward_variant(*args, split=True),
                                      default=lambda: _backward_variant(*args, split=False))


def _backward_variant(spec: Spec, x, kernel, rk, rb, states, mask, rmask, res, dys, dfinal, *,
                      split: bool):
    b, steps, f = x.shape
    u = rk.shape[0]
    n = rk.shape[1] // u
    dtype = rk.dtype
    if split:  # [j] = rk[:, j*u:(j+1)*u].T, each its own array: the loop slices nothing
        rk_t = tuple(rk[:, j * u:(j + 1) * u].T for j in range(n))
    else:
        rk_t = rk.T
    # Materialized once, before the loop: without the barrier XLA sinks the transposes (or
    # the slices) into the loop body and recomputes them every step.
    rk_t = jax.lax.optimization_barrier(rk_t)
    emit, zero_out = spec.emit, spec.zero_output_for_mask
    h_prev = res[-1]

    def entry(dh, m_t, dy_t):
        """The incoming dh split into (gradient of h_new, gradient passed to h_prev)."""
        dh_in = dh + dy_t if emit else dh
        if m_t is None:
            return dh_in, None
        keep = m_t[:, None]
        return jnp.where(keep, dh_in, 0), jnp.where(keep, 0, dh if zero_out else dh_in)

    def through_rk(dgate, dgates, hp_t, extra, drm):
        """d h_prev from `inner = (h_prev * rmask) @ rk`, plus `extra`; accumulates d rmask.
        d inner comes as `dgate(j)` -> (b, u) for gate j, or `dgates()` -> (b, n, u) (one
        elementwise expression: no concatenation)."""
        if split:
            dhr = matmul(dgate(0), rk_t[0])
            for j in range(1, n):
                dhr = dhr + matmul(dgate(j), rk_t[j])
        else:
            dhr = matmul(dgates().reshape(b, n * u), rk_t)
        if rmask is None:
            return dhr if extra is None else dhr + extra, drm
        dh_prev = dhr * rmask
        return (dh_prev if extra is None else dh_prev + extra), drm + hp_t * dhr

    if spec.kind == "lstm":
        k, e, fg, _ = res

        def step(dh, dc, drm, tau, m_t, dy_t):
            dhn, ph = entry(dh, m_t, dy_t)
            dcn = dc if m_t is None else jnp.where(m_t[:, None], dc, 0)
            dcn = dcn + dhn * _at(e, tau)
            dc_prev = dcn * _at(fg, tau)
            if m_t is not None:
                dc_prev = dc_prev + jnp.where(m_t[:, None], 0, dc)
            k_t = _at(k, tau)
            dh_prev, drm = through_rk(
                lambda j: (dhn if j == 3 else dcn) * k_t[:, j],
                lambda: jnp.where(_lane(4) == 3, dhn[:, None], dcn[:, None]) * k_t,
                _at(h_prev, tau) if rmask is not None else None, ph, drm,
            )
            return dh_prev, dc_prev, drm, (dhn, dcn)

    elif spec.kind == "gru":
        k, z, kh, _ = res

        def step(dh, dc, drm, tau, m_t, dy_t):
            dhn, ph = entry(dh, m_t, dy_t)
            direct = dhn * _at(z, tau)
            if ph is not None:
                direct = direct + ph
            k_t = _at(k, tau)
            dh_prev, drm = through_rk(
                lambda j: dhn * k_t[:, j], lambda: dhn[:, None] * k_t,
                _at(h_prev, tau) if rmask is not None else None, direct, drm,
            )
            return dh_prev, dc, drm, (dhn,)

    else:
        k, _ = res

        def step(dh, dc, drm, tau, m_t, dy_t):
            dhn, ph = entry(dh, m_t, dy_t)
            dh_prev, drm = through_rk(
                lambda j: dhn * _at(k, tau), lambda: (dhn * _at(k, tau))[:, None],
                _at(h_prev, tau) if rmask is not None else None, ph, drm,
            )
            return dh_prev, dc, drm, (dhn,)

    def body(s, carry):
        dh, dc, drm, seqs = carry
        t = steps - 1 - s  # processing steps, last first
        tau = _time_index(spec, steps, t)
        m_t = None if mask is None else _at(mask, tau)
        dy_t = _at(dys, t) if emit else None
        dh, dc, drm, outs = step(dh, dc, drm, tau, m_t, dy_t)
        return dh, dc, drm, tuple(_put(buf, v, tau) for buf, v in zip(seqs, outs, strict=True))

    n_seqs = 2 if spec.kind == "lstm" else 1
    seqs0 = tuple(jnp.zeros((b, steps, u), dtype) for _ in range(n_seqs))
    dc0 = dfinal[1] if spec.kind == "lstm" else None
    drm0 = None if rmask is None else jnp.zeros_like(rmask)
    dh, dc, drmask, seqs = jax.lax.fori_loop(0, steps, body, (dfinal[0], dc0, drm0, seqs0),
                                             unroll=spec.unroll)
    dstates = (dh, dc) if spec.kind == "lstm" else (dh,)

    # The gate gradients of every step at once, time order (aligned with x).
    if spec.kind == "lstm":
        dhn, dcn = seqs
        dinner = dxp = jnp.where(_lane(4)[None] == 3, dhn[:, :, None], dcn[:, :, None]) * k
    elif spec.kind == "gru":
        (dhn,) = seqs
        dinner = dhn[:, :, None] * k
        dxp = jnp.concatenate([dinner[:, :, :2], (dhn * kh)[:, :, None]], axis=2)
    else:
        (dhn,) = seqs
        dinner = dxp = dhn * k
    dinner = dinner.reshape(b * steps, n * u)
    dxp = dxp.reshape(b * steps, n * u)
    hr_prev = h_prev if rmask is None else h_prev * rmask[:, None]
    # ONE product each, contracting batch and time together.
    x2 = x.reshape(b * steps, f)
    dx = matmul(dxp, kernel.T).reshape(b, steps, f)
    dkernel = matmul_t(x2, dxp)
    drk = matmul_t(hr_prev.reshape(b * steps, u), dinner)
    dxb = dxp.sum(axis=0)
    drb = None if rb is None else dinner.sum(axis=0)
    return dx, dkernel, dxb, drk, drb, dstates, drmask


# ---------------------------------------------------------------------------------------------
# The custom_vjp


def _recurrence_impl(spec, x, kernel, xb, rk, rb, states, mask, rmask):
    return _forward(spec, x, kernel, xb, rk, rb, states, mask, rmask, save=False)[0]


def _recurrence_fwd(spec, x, kernel, xb, rk, rb, states, mask, rmask):
    out, res = _forward(spec, x, kernel, xb, rk, rb, states, mask, rmask, save=True)
    return out, (x, kernel, xb is not None, rk, rb, states, mask, rmask, res)


def _recurrence_bwd(spec, saved, cotangents):
    x, kernel, has_xb, rk, rb, states, mask, rmask, res = saved
    dys, dfinal = cotangents
    dx, dkernel, dxb, drk, drb, dstates, drmask = _backward(
        spec, x, kernel, rk, rb, states, mask, rmask, res, dys, dfinal
    )
    return dx, dkernel, (dxb if has_xb else None), drk, drb, dstates, None, drmask


_recurrence = jax.custom_vjp(_recurrence_impl, nondiff_argnums=(0,))
_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


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
    """A recurrent layer's computation, input projection included, with the fused backward.

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

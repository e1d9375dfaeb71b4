"""A fused recurrence with a hand-written backward pass (cuDNN's algorithm, in plain JAX).

Autodiff of `lax.scan` accumulates the recurrent-kernel gradient with one small product per time
step inside the backward loop. `recurrence` is a `jax.custom_vjp` whose backward loop computes
only the gate gradients `dz` step by step (one product with `recurrent_kernel.T` per step), then
takes every weight gradient in ONE large product after the loop:

    d recurrent_kernel = H_prev.T @ dZ        (contracting time and batch together)
    d xp               = dZ                   (so d kernel = X.T @ dZ and d x = dZ @ kernel.T
                                               are single products too, done by autodiff of the
                                               input projection outside this function)

Layout is time-major inside (t, b, ...): every step reads and writes one contiguous slab.

What the forward saves (per step, b = batch, u = units), and why:
  LSTM       gates i, f, c~, o after their activations (4u), act(c_t) (u), c_{t-1} (u),
             h_{t-1} (u): no transcendental function and no matrix product is recomputed.
  GRU        z, r, h~ (3u), the recurrent h-part `h @ rk_h + b_h` (u), h_{t-1} (u).
  SimpleRNN  h_new (u), h_{t-1} (u).
Autodiff of the scan saves about the same (it stores the step's residuals), so memory is on a
par; `residual_bytes` reports the exact figure.

Supported: LSTMCell, GRUCell (reset_after=True) and SimpleRNNCell with activations
`tanh | sigmoid | linear | relu` (by name, or the same functions), every mask, go_backwards (the
caller flips time), zero_output_for_mask, initial states, a recurrent-dropout mask, outputs or
final states only. Reverse mode only: `jax.jvp` / `jax.jacfwd` through it raise (as for any
custom_vjp); use the layer's `implementation="scan"` for forward-mode derivatives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxseq import contracts
from jaxseq.cells import _ACTIVATIONS, CellBase, GRUCell, LSTMCell, SimpleRNNCell
from jaxseq.typing import Array

IMPLEMENTATIONS = ("auto", "scan", "fused", "cudnn")

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
    emit: return the per-step outputs (else only the final states); unroll: scan unroll.
    """

    kind: str
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    zero_output_for_mask: bool = False
    emit: bool = True
    unroll: int = 1


def _activation_name(act) -> str | None:
    if act is None:
        return "linear"
    if isinstance(act, str):
        return act if act in _ACT else None
    for name in _ACT:
        if _ACTIVATIONS.get(name) is act:
            return name
    return None


def unsupported(cell: CellBase) -> str | None:
    """Why the fused path cannot run this cell, or None when it can."""
    kind = _KINDS.get(type(cell))
    if kind is None:
        return f"cell class {type(cell).__name__} (only LSTMCell, GRUCell, SimpleRNNCell)"
    if kind == "gru" and not cell.reset_after:
        return "GRU reset_after=False"
    names = [("activation", cell.activation)]
    if kind != "simple_rnn":
        names.append(("recurrent_activation", cell.recurrent_activation))
    for field, act in names:
        if _activation_name(act) is None:
            return f"{field}={act!r} (fused supports {', '.join(_ACT)})"
    return None


def select(implementation: str, cell: CellBase, where: str) -> str:
    """The implementation a layer runs: "scan" or "fused" (or raises for a forced one that
    cannot run here). "auto" takes "fused" whenever it supports the cell, else "scan"."""
    contracts.check_choice(implementation, IMPLEMENTATIONS, "implementation", where)
    if implementation == "scan":
        return "scan"
    if implementation == "cudnn":
        backend = jax.default_backend()
        raise ValueError(
            f"{where}(implementation='cudnn') needs the cuDNN kernel of a CUDA GPU, which this "
            f"jaxseq build does not call (default backend here: {backend!r}). Use "
            "implementation='auto' (the fused path), 'fused' or 'scan'."
        )
    reason = unsupported(cell)
    if reason is None:
        return "fused"
    if implementation == "fused":
        raise ValueError(
            f"{where}(implementation='fused') does not support {reason}; use "
            "implementation='auto' (falls back to the scan) or 'scan'."
        )
    return "scan"


def auto_unroll(batch: int, units: int) -> int:
    """Scan unroll by size: small steps are dominated by loop overhead, large ones by the
    product. Measured on a 2-core CPU (experiments/bench.py)."""
    return 1


def spec_for(cell: CellBase, *, zero_output_for_mask: bool, emit: bool, unroll: int) -> Spec:
    kind = _KINDS[type(cell)]
    ract = getattr(cell, "recurrent_activation", "sigmoid")
    return Spec(
        kind=kind,
        activation=_activation_name(cell.activation),
        recurrent_activation=_activation_name(ract),
        zero_output_for_mask=zero_output_for_mask,
        emit=emit,
        unroll=unroll,
    )


# ---------------------------------------------------------------------------------------------
# Forward steps: (carry, (xp_t, m_t)) -> (carry, (y_t, residuals_t))


def _keep(m_t, new, old):
    return new if m_t is None else jnp.where(m_t[:, None], new, old)


def _emit(spec: Spec, m_t, h_new, h_t):
    if not spec.emit:
        return None
    if spec.zero_output_for_mask and m_t is not None:
        return jnp.where(m_t[:, None], h_new, jnp.zeros_like(h_new))
    return h_t


def _forward(spec: Spec, xp, rk, rb, states, mask, rmask):
    """The recurrence. Returns ((ys, final_states), residuals)."""
    act, _ = _ACT[spec.activation]
    ract, _ = _ACT[spec.recurrent_activation]
    u = rk.shape[0]

    def rec(h):
        hr = h if rmask is None else h * rmask
        inner = hr @ rk
        return inner if rb is None else inner + rb[None, :]

    if spec.kind == "lstm":

        def step(carry, inp):
            h, c = carry
            xp_t, m_t = inp
            z = xp_t + rec(h)
            i, f, o = ract(z[:, :u]), ract(z[:, u : 2 * u]), ract(z[:, 3 * u :])
            g = act(z[:, 2 * u : 3 * u])
            c_new = f * c + i * g
            tc = act(c_new)
            h_new = o * tc
            h_t, c_t = _keep(m_t, h_new, h), _keep(m_t, c_new, c)
            res = (jnp.concatenate([i, f, g, o], axis=-1), tc, c, h)
            return (h_t, c_t), (_emit(spec, m_t, h_new, h_t), res)

    elif spec.kind == "gru":

        def step(carry, inp):
            (h,) = carry
            xp_t, m_t = inp
            inner = rec(h)
            z = ract(xp_t[:, :u] + inner[:, :u])
            r = ract(xp_t[:, u : 2 * u] + inner[:, u : 2 * u])
            rh = inner[:, 2 * u :]
            hh = act(xp_t[:, 2 * u :] + r * rh)
            h_new = z * h + (1 - z) * hh
            h_t = _keep(m_t, h_new, h)
            res = (jnp.concatenate([z, r, hh, rh], axis=-1), h)
            return (h_t,), (_emit(spec, m_t, h_new, h_t), res)

    else:

        def step(carry, inp):
            (h,) = carry
            xp_t, m_t = inp
            h_new = act(xp_t + rec(h))
            h_t = _keep(m_t, h_new, h)
            return (h_t,), (_emit(spec, m_t, h_new, h_t), (h_new, h))

    final, (ys, res) = jax.lax.scan(step, tuple(states), (xp, mask), unroll=spec.unroll)
    return (ys, final), res


# ---------------------------------------------------------------------------------------------
# Backward: gate gradients in the loop, weight gradients after it.


def _backward(spec: Spec, rk, rb, rmask, mask, res, dys, dfinal):
    """-> (dxp, drk, drb, dstates, drmask)."""
    _, dact = _ACT[spec.activation]
    _, dract = _ACT[spec.recurrent_activation]
    u = rk.shape[0]
    rk_t = rk.T
    emit_dy = spec.emit and not spec.zero_output_for_mask  # y_t is the carried h_t

    def entry(dh, m_t, dy_t):
        """Split the incoming dh into (d h_new, d passed-through h) under the mask."""
        if emit_dy:
            dh = dh + dy_t
        if m_t is None:
            dhn, ph = dh, None
        else:
            keep = m_t[:, None]
            dhn, ph = jnp.where(keep, dh, 0), jnp.where(keep, 0, dh)
        if spec.emit and spec.zero_output_for_mask:
            dhn = dhn + (dy_t if m_t is None else jnp.where(m_t[:, None], dy_t, 0))
        return dhn, ph

    def recurrent(dinner, h_prev, dh_prev, ph, drm):
        """Through `inner = (h * rmask) @ rk`: adds to dh_prev; accumulates d rmask."""
        dhr = dinner @ rk_t
        if rmask is None:
            dh_prev = dh_prev + dhr
        else:
            dh_prev = dh_prev + dhr * rmask
            drm = drm + h_prev * dhr
        if ph is not None:
            dh_prev = dh_prev + ph
        return dh_prev, drm

    if spec.kind == "lstm":

        def step(carry, inp):
            dh, dc, drm = carry
            (gates, tc, c_prev, h_prev), m_t, dy_t = inp
            dhn, ph = entry(dh, m_t, dy_t)
            dcn = dc if m_t is None else jnp.where(m_t[:, None], dc, 0)
            i, f, g, o = (gates[:, k * u : (k + 1) * u] for k in range(4))
            dcn = dcn + dhn * o * dact(tc)
            dz = jnp.concatenate(
                [dcn * g * dract(i), dcn * c_prev * dract(f), dcn * i * dact(g),
                 dhn * tc * dract(o)],
                axis=-1,
            )
            dc_prev = dcn * f
            if m_t is not None:
                dc_prev = dc_prev + jnp.where(m_t[:, None], 0, dc)
            dh_prev, drm = recurrent(dz, h_prev, 0, ph, drm)
            return (dh_prev, dc_prev, drm), dz

        (h_seq,) = res[3:]
        init = (dfinal[0], dfinal[1])

    elif spec.kind == "gru":

        def step(carry, inp):
            dh, drm = carry
            (zrh, h_prev), m_t, dy_t = inp
            dhn, ph = entry(dh, m_t, dy_t)
            z, r, hh, rh = (zrh[:, k * u : (k + 1) * u] for k in range(4))
            dpre_z = dhn * (h_prev - hh) * dract(z)
            dah = dhn * (1 - z) * dact(hh)
            dpre_r = dah * rh * dract(r)
            dinner = jnp.concatenate([dpre_z, dpre_r, dah * r], axis=-1)
            dh_prev, drm = recurrent(dinner, h_prev, dhn * z, ph, drm)
            return (dh_prev, drm), (dinner, dah)

        (h_seq,) = res[1:]
        init = (dfinal[0],)

    else:

        def step(carry, inp):
            dh, drm = carry
            (h_new, h_prev), m_t, dy_t = inp
            dhn, ph = entry(dh, m_t, dy_t)
            da = dhn * dact(h_new)
            dh_prev, drm = recurrent(da, h_prev, 0, ph, drm)
            return (dh_prev, drm), da

        (h_seq,) = res[1:]
        init = (dfinal[0],)

    drm0 = None if rmask is None else jnp.zeros_like(rmask)
    carry, dseq = jax.lax.scan(
        step, (*init, drm0), (res, mask, dys if spec.emit else None),
        reverse=True, unroll=spec.unroll,
    )
    *dstates, drmask = carry
    if spec.kind == "gru":
        dinner, dah = dseq
        dxp = jnp.concatenate([dinner[..., : 2 * u], dah], axis=-1)
    else:
        dinner = dxp = dseq
    hr_seq = h_seq if rmask is None else h_seq * rmask[None]
    t, b = h_seq.shape[:2]
    drk = hr_seq.reshape(t * b, u).T @ dinner.reshape(t * b, -1)  # ONE product for all steps
    drb = None if rb is None else dinner.sum(axis=(0, 1))
    return dxp, drk, drb, tuple(dstates), drmask


def _recurrence_impl(spec, xp, rk, rb, states, mask, rmask):
    return _forward(spec, xp, rk, rb, states, mask, rmask)[0]


def _recurrence_fwd(spec, xp, rk, rb, states, mask, rmask):
    out, res = _forward(spec, xp, rk, rb, states, mask, rmask)
    return out, (rk, rb, mask, rmask, res)


def _recurrence_bwd(spec, saved, cotangents):
    rk, rb, mask, rmask, res = saved
    dys, dfinal = cotangents
    dxp, drk, drb, dstates, drmask = _backward(spec, rk, rb, rmask, mask, res, dys, dfinal)
    return dxp, drk, drb, dstates, None, drmask


_recurrence = jax.custom_vjp(_recurrence_impl, nondiff_argnums=(0,))
_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def recurrence(
    spec: Spec,
    xp: Array,
    recurrent_kernel: Array,
    recurrent_bias: Array | None,
    states: tuple[Array, ...],
    mask: Array | None = None,
    rmask: Array | None = None,
) -> tuple[Array | None, tuple[Array, ...]]:
    """Run the recurrence over time-major projected inputs, with the fused backward pass.

    xp: (t, b, g) = x @ kernel + input bias for every step (g = gates * u); recurrent_kernel
    (u, g); recurrent_bias (g,) (GRU's second bias row) or None; states: LSTM (h, c), else (h,),
    each (b, u); mask: (t, b) bool or None; rmask: (b, u) recurrent-dropout mask or None.
    Returns (ys, final_states): ys (t, b, u) in processing order (None unless `spec.emit`).
    """
    return _recurrence(spec, xp, recurrent_kernel, recurrent_bias, tuple(states), mask, rmask)


def residual_bytes(spec: Spec, t: int, b: int, u: int, itemsize: int = 4) -> int:
    """Bytes the forward saves for the backward (besides its inputs)."""
    per_step = {"lstm": 7 * u, "gru": 5 * u, "simple_rnn": 2 * u}[spec.kind]
    return t * b * per_step * itemsize


def layer_recurrence(layer, cell: CellBase, params, x, states, mask, rmask):
    """The fused path of `recurrent.RNN`: x (b, t, f) batch-major as the layer gets it.

    Returns (final_states, ys) with ys (b, t, u) in processing order (reversed time under
    `go_backwards`, as Keras returns it), or None without `return_sequences`.
    """
    time = x.shape[1]
    xt = jnp.swapaxes(x, 0, 1)  # (t, b, f): cheaper to move than the (t, b, g) projection
    mt = None if mask is None else jnp.swapaxes(mask, 0, 1)
    if layer.go_backwards:
        xt = jnp.flip(xt, axis=0)
        mt = None if mt is None else jnp.flip(mt, axis=0)
    xp = cell.project(params, xt)
    rb = None
    if isinstance(cell, GRUCell) and cell.use_bias:
        rb = params["bias"][1]
    if layer.unroll is True:
        unroll = time
    elif isinstance(layer.unroll, bool) or int(layer.unroll) <= 0:
        unroll = auto_unroll(x.shape[0], layer.units)
    else:
        unroll = int(layer.unroll)
    spec = spec_for(
        cell, zero_output_for_mask=layer.zero_output_for_mask,
        emit=layer.return_sequences, unroll=min(unroll, time),
    )
    ys, final = recurrence(spec, xp, params["recurrent_kernel"], rb, states, mt, rmask)
    return final, (None if ys is None else jnp.swapaxes(ys, 0, 1))

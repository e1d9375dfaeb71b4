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
# Forward. Gates live in a (b, n, u) view of the (b, n*u) projection, so that every gate
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
    n = z.shape[1]
    lane = _lane(n)
    pair = (spec.activation, spec.recurrent_activation)
    if pair == ("tanh", "sigmoid") or (act_lane is None and spec.recurrent_activation == "sigmoid"):
        scale = jnp.where(lane == act_lane, 1.0, 0.5).astype(z.dtype)
        shift = jnp.where(lane == act_lane, 0.0, 0.5).astype(z.dtype)
        return jnp.tanh(z * scale) * scale + shift
    act, _ = _ACT[spec.activation]
    ract, _ = _ACT[spec.recurrent_activation]
    if act_lane is None:
        return ract(z)
    return jnp.where(lane == act_lane, act(z), ract(z))


def _forward(spec: Spec, xp, xb, rk, rb, states, mask, rmask, *, save: bool):
    """The recurrence over time-major xp (t, b, n*u).

    Returns ((ys, final_states), residuals); residuals is None unless `save`. The residuals are
    the factors the backward step multiplies by (see `_backward`), computed here where every
    operand is at hand, in the same elementwise pass as the step: (coef, hs).
    """
    act, dact = _ACT[spec.activation]
    _, dract = _ACT[spec.recurrent_activation]
    b = xp.shape[1]
    u = rk.shape[0]
    n = rk.shape[1] // u

    def xin(xp_t):
        return xp_t if xb is None else xp_t + xb[None, :]

    def rec(h):
        hr = h if rmask is None else h * rmask
        inner = hr @ rk
        return inner if rb is None else inner + rb[None, :]

    keep_hs = save or spec.emit

    if spec.kind == "lstm":

        def step(carry, inp):
            h, c = carry
            xp_t, m_t = inp
            a = _gate_act(spec, (xin(xp_t) + rec(h)).reshape(b, n, u), 2)
            i, f, g, o = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
            c_new = f * c + i * g
            tc = act(c_new)
            h_new = o * tc
            h_t, c_t = _keep(m_t, h_new, h), _keep(m_t, c_new, c)
            if not save:
                return (h_t, c_t), (h_t if keep_hs else None)
            coef = jnp.stack(
                [g * dract(i), c * dract(f), i * dact(g), tc * dract(o), o * dact(tc), f], axis=1
            )
            return (h_t, c_t), (coef, h_t)

    elif spec.kind == "gru":

        def step(carry, inp):
            (h,) = carry
            xp_t, m_t = inp
            x = xin(xp_t).reshape(b, n, u)
            inner = rec(h).reshape(b, n, u)
            zr = _gate_act(spec, x[:, :2] + inner[:, :2], None)
            z, r, rh = zr[:, 0], zr[:, 1], inner[:, 2]
            hh = act(x[:, 2] + r * rh)
            h_new = z * h + (1 - z) * hh
            h_t = _keep(m_t, h_new, h)
            if not save:
                return (h_t,), (h_t if keep_hs else None)
            kz = (h - hh) * dract(z)
            kh = (1 - z) * dact(hh)
            coef = jnp.stack([kz, kh * rh * dract(r), kh * r, z, kh], axis=1)
            return (h_t,), (coef, h_t)

    else:

        def step(carry, inp):
            (h,) = carry
            xp_t, m_t = inp
            h_new = act(xin(xp_t) + rec(h))
            h_t = _keep(m_t, h_new, h)
            return (h_t,), ((dact(h_new), h_t) if save else (h_t if keep_hs else None))

    final, out = jax.lax.scan(step, tuple(states), (xp, mask), unroll=spec.unroll)
    hs = out[-1] if save else out
    ys = None
    if spec.emit:
        ys = hs
        if spec.zero_output_for_mask and mask is not None:
            ys = jnp.where(mask[:, :, None], hs, jnp.zeros_like(hs))
    return (ys, final), (out if save else None)


# ---------------------------------------------------------------------------------------------
# Backward: the loop carries (dh, dc) and emits the gate gradients; every factor that does not
# depend on the carried gradients is computed BEFORE the loop in one large elementwise pass, so
# a step is: a few multiplies, one product with recurrent_kernel.T. Weight gradients after it.


def _backward(spec: Spec, rk, rb, states, mask, rmask, res, dys, dfinal):
    """-> (dxp, drk, drb, dstates, drmask). res = (coef, hs) from `_forward`."""
    coef, hs = res
    u = rk.shape[0]
    n = rk.shape[1] // u
    t, b = hs.shape[:2]
    rk_t = rk.T
    h_prev = _shift(states[0], hs)  # h entering each step
    emit, zero_out = spec.emit, spec.zero_output_for_mask

    def entry(dh, m_t, dy_t):
        """The incoming dh split into (gradient of h_new, gradient passed to h_prev)."""
        dh_in = dh + dy_t if emit else dh
        if m_t is None:
            return dh_in, None
        keep = m_t[:, None]
        return jnp.where(keep, dh_in, 0), jnp.where(keep, 0, dh if zero_out else dh_in)

    def through_rk(dinner, hp_t, extra, drm):
        """d h_prev from `inner = (h_prev * rmask) @ rk`, plus `extra`; accumulates d rmask."""
        dhr = dinner.reshape(b, -1) @ rk_t
        if rmask is None:
            return dhr if extra is None else dhr + extra, drm
        dh_prev = dhr * rmask
        return (dh_prev if extra is None else dh_prev + extra), drm + hp_t * dhr

    if spec.kind == "lstm":
        # coef = [g ract'(i), c_prev ract'(f), i act'(g), act(c) ract'(o), o act'(c), f]
        lane = _lane(4)

        def step(carry, inp):
            dh, dc, drm = carry
            k_t, m_t, dy_t, hp_t = inp
            dhn, ph = entry(dh, m_t, dy_t)
            dcn = dc if m_t is None else jnp.where(m_t[:, None], dc, 0)
            dcn = dcn + dhn * k_t[:, 4]
            dz = jnp.where(lane == 3, dhn[:, None], dcn[:, None]) * k_t[:, :4]
            dc_prev = dcn * k_t[:, 5]
            if m_t is not None:
                dc_prev = dc_prev + jnp.where(m_t[:, None], 0, dc)
            dh_prev, drm = through_rk(dz, hp_t, ph, drm)
            return (dh_prev, dc_prev, drm), dz

        init = (dfinal[0], dfinal[1])

    elif spec.kind == "gru":
        # coef = [kz, kr, kh r, z, kh]: d inner = dh * coef[:3], d xp = dh * coef[[0, 1, 4]]

        def step(carry, inp):
            dh, drm = carry
            k_t, m_t, dy_t, hp_t = inp
            dhn, ph = entry(dh, m_t, dy_t)
            direct = dhn * k_t[:, 3] if ph is None else dhn * k_t[:, 3] + ph
            dh_prev, drm = through_rk(dhn[:, None] * k_t[:, :3], hp_t, direct, drm)
            return (dh_prev, drm), dhn

        init = (dfinal[0],)

    else:
        # coef = act'(h_new)

        def step(carry, inp):
            dh, drm = carry
            k_t, m_t, dy_t, hp_t = inp
            dhn, ph = entry(dh, m_t, dy_t)
            da = dhn * k_t
            dh_prev, drm = through_rk(da, hp_t, ph, drm)
            return (dh_prev, drm), da

        init = (dfinal[0],)

    drm0 = None if rmask is None else jnp.zeros_like(rmask)
    xs = (coef, mask, dys if emit else None, None if rmask is None else h_prev)
    carry, dseq = jax.lax.scan(step, (*init, drm0), xs, reverse=True, unroll=spec.unroll)
    *dstates, drmask = carry

    if spec.kind == "gru":
        dhn = dseq[:, :, None]
        dinner = (dhn * coef[:, :, :3]).reshape(t, b, n * u)
        dxp = (dhn * jnp.concatenate([coef[:, :, :2], coef[:, :, 4:]], axis=2)).reshape(t, b, -1)
    else:
        dinner = dxp = dseq.reshape(t, b, n * u)
    hr_prev = h_prev if rmask is None else h_prev * rmask[None]
    # ONE product for all steps: contract time and batch together.
    drk = hr_prev.reshape(t * b, u).T @ dinner.reshape(t * b, n * u)
    drb = None if rb is None else dinner.reshape(t * b, n * u).sum(axis=0)
    return dxp, drk, drb, tuple(dstates), drmask


def _shift(first: Array, seq: Array) -> Array:
    """(t, b, u) sequence of previous values: [first, seq[0], ..., seq[t-2]]."""
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


def _recurrence_impl(spec, xp, xb, rk, rb, states, mask, rmask):
    return _forward(spec, xp, xb, rk, rb, states, mask, rmask, save=False)[0]


def _recurrence_fwd(spec, xp, xb, rk, rb, states, mask, rmask):
    out, res = _forward(spec, xp, xb, rk, rb, states, mask, rmask, save=True)
    return out, (xb is not None, rk, rb, states, mask, rmask, res)


def _recurrence_bwd(spec, saved, cotangents):
    has_xb, rk, rb, states, mask, rmask, res = saved
    dys, dfinal = cotangents
    dxp, drk, drb, dstates, drmask = _backward(
        spec, rk, rb, states, mask, rmask, res, dys, dfinal
    )
    dxb = dxp.reshape(-1, dxp.shape[-1]).sum(axis=0) if has_xb else None
    return dxp, dxb, drk, drb, dstates, None, drmask


_recurrence = jax.custom_vjp(_recurrence_impl, nondiff_argnums=(0,))
_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def recurrence(
    spec: Spec,
    xp: Array,
    input_bias: Array | None,
    recurrent_kernel: Array,
    recurrent_bias: Array | None,
    states: tuple[Array, ...],
    mask: Array | None = None,
    rmask: Array | None = None,
) -> tuple[Array | None, tuple[Array, ...]]:
    """Run the recurrence over time-major projected inputs, with the fused backward pass.

    xp: (t, b, g) = x @ kernel for every step (g = gates * u); input_bias (g,) or None, added
    to xp inside the step (saves a full pass over xp); recurrent_kernel (u, g); recurrent_bias
    (g,) (GRU's second bias row: added to `h @ recurrent_kernel`) or None; states: LSTM (h, c),
    else (h,), each (b, u); mask: (t, b) bool or None; rmask: (b, u) recurrent-dropout mask or
    None. Returns (ys, final_states): ys (t, b, u) in processing order (None unless
    `spec.emit`), final_states like `states`.
    """
    return _recurrence(
        spec, xp, input_bias, recurrent_kernel, recurrent_bias, tuple(states), mask, rmask
    )


def residual_bytes(spec: Spec, t: int, b: int, u: int, itemsize: int = 4) -> int:
    """Bytes the forward saves for the backward besides its inputs: per step and sequence, the
    backward factors (LSTM 6u, GRU 5u, SimpleRNN u) and the carried h (u)."""
    per_step = {"lstm": 7 * u, "gru": 6 * u, "simple_rnn": 2 * u}[spec.kind]
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
    xp = xt @ params["kernel"]  # (t, b, g); the input bias is added inside the step
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
    ys, final = recurrence(
        spec, xp, cell.input_bias(params), params["recurrent_kernel"], rb, states, mt, rmask
    )
    return final, (None if ys is None else jnp.swapaxes(ys, 0, 1))

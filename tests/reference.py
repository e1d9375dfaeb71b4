"""An independent float64 NumPy reference for the Keras 3 recurrent layers, and for minGRU /
minLSTM (`minimal`, Feng et al. 2024).

Written from the Keras 3 formulas (jax backend, non-unrolled `rnn` loop), not from jaxseq: it
imports neither jaxseq nor jax. Every function loops over time in plain Python, one step at a
time, in `np.float64`; the batch axis is handled with NumPy broadcasting.

Shapes: b = batch, t = time, f = features, u = units.

Parameters are dicts in the Keras layout:
  LSTM       kernel (f, 4u), recurrent_kernel (u, 4u), bias (4u,);  gates i, f, c, o
  GRU        kernel (f, 3u), recurrent_kernel (u, 3u), bias (2, 3u) with reset_after=True
             (row 0 input bias, row 1 recurrent bias), (3u,) with reset_after=False; gates z, r, h
  SimpleRNN  kernel (f, u),  recurrent_kernel (u, u),  bias (u,)

Semantics (Keras 3):
  * a masked step keeps every state; its output is the previous h (the initial h before any
    real step), or zeros with `zero_output_for_mask=True`;
  * `go_backwards=True` processes time from the end and returns the outputs in processing
    order; the "last" output is the one of the last processed step;
  * `return_state=True` returns `(output, *states)`, LSTM states `(h, c)`.
"""

from __future__ import annotations

import numpy as np

KINDS = ("lstm", "gru", "simple_rnn")
STATE_COUNT = {"lstm": 2, "gru": 1, "simple_rnn": 1}
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


# Keras activation names -> NumPy functions (the layers' `activation` / `recurrent_activation`).
ACTIVATIONS = {
    "tanh": np.tanh,
    "sigmoid": sigmoid,
    "relu": lambda v: np.maximum(v, 0.0),
    "linear": lambda v: v,
}


def _f64(params: dict) -> dict:
    return {k: np.asarray(v, np.float64) for k, v in params.items()}


def param_shapes(kind: str, features: int, units: int, *, reset_after: bool = True) -> dict:
    """The Keras parameter shapes of a layer of `kind`."""
    g = GATES[kind] * units
    bias = (2, g) if (kind == "gru" and reset_after) else (g,)
    return {"kernel": (features, g), "recurrent_kernel": (units, g), "bias": bias}


def random_params(
    rng: np.random.Generator, kind: str, features: int, units: int, *, reset_after: bool = True
) -> dict:
    """Random float64 parameters of moderate scale (gates neither saturated nor linear)."""
    return {
        name: rng.uniform(-0.8, 0.8, shape)
        for name, shape in param_shapes(kind, features, units, reset_after=reset_after).items()
    }


# ---------------------------------------------------------------------------- single steps


def lstm_step(p: dict, x_t: np.ndarray, h: np.ndarray, c: np.ndarray, *,
              activation: str = "tanh", recurrent_activation: str = "sigmoid"):
    """One LSTM step. x_t (b, f), h and c (b, u) -> (h, c)."""
    act, ract = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]
    u = h.shape[-1]
    k, rk, b = p["kernel"], p["recurrent_kernel"], p["bias"]
    i = ract(x_t @ k[:, :u] + h @ rk[:, :u] + b[:u])
    f = ract(x_t @ k[:, u : 2 * u] + h @ rk[:, u : 2 * u] + b[u : 2 * u])
    g = act(x_t @ k[:, 2 * u : 3 * u] + h @ rk[:, 2 * u : 3 * u] + b[2 * u : 3 * u])
    o = ract(x_t @ k[:, 3 * u :] + h @ rk[:, 3 * u :] + b[3 * u :])
    c_new = f * c + i * g
    h_new = o * act(c_new)
    return h_new, c_new


def gru_step(p: dict, x_t: np.ndarray, h: np.ndarray, *, reset_after: bool = True,
             activation: str = "tanh", recurrent_activation: str = "sigmoid"):
    """One GRU step (Keras 3). x_t (b, f), h (b, u) -> h."""
    act, ract = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]
    u = h.shape[-1]
    k, rk, b = p["kernel"], p["recurrent_kernel"], p["bias"]
    if reset_after:
        b_in, b_rec = b[0], b[1]
    else:
        b_in, b_rec = b, np.zeros_like(b)
    x_z = x_t @ k[:, :u] + b_in[:u]
    x_r = x_t @ k[:, u : 2 * u] + b_in[u : 2 * u]
    x_h = x_t @ k[:, 2 * u :] + b_in[2 * u :]
    z = ract(x_z + h @ rk[:, :u] + b_rec[:u])
    r = ract(x_r + h @ rk[:, u : 2 * u] + b_rec[u : 2 * u])
    if reset_after:
        hh = act(x_h + r * (h @ rk[:, 2 * u :] + b_rec[2 * u :]))
    else:
        hh = act(x_h + (r * h) @ rk[:, 2 * u :])
    return z * h + (1.0 - z) * hh


def simple_rnn_step(p: dict, x_t: np.ndarray, h: np.ndarray, *, activation: str = "tanh"):
    """One SimpleRNN step. x_t (b, f), h (b, u) -> h."""
    act = ACTIVATIONS[activation]
    return act(x_t @ p["kernel"] + p["bias"] + h @ p["recurrent_kernel"])


def step(kind: str, p: dict, x_t: np.ndarray, states: tuple, *, reset_after: bool = True,
         activation: str = "tanh", recurrent_activation: str = "sigmoid"):
    """One step of `kind`; returns the new states tuple (h first). `recurrent_activation` is
    ignored by SimpleRNN (it has none)."""
    acts = dict(activation=activation, recurrent_activation=recurrent_activation)
    if kind == "lstm":
        return lstm_step(p, x_t, *states, **acts)
    if kind == "gru":
        return (gru_step(p, x_t, states[0], reset_after=reset_after, **acts),)
    if kind == "simple_rnn":
        return (simple_rnn_step(p, x_t, states[0], activation=activation),)
    raise ValueError(kind)


# ---------------------------------------------------------------------------- whole layers


def rnn(
    kind: str,
    params: dict,
    x,
    *,
    mask=None,
    initial_state=None,
    go_backwards: bool = False,
    return_sequences: bool = False,
    return_state: bool = False,
    zero_output_for_mask: bool = False,
    reset_after: bool = True,
    activation: str = "tanh",
    recurrent_activation: str = "sigmoid",
):
    """A Keras 3 recurrent layer of `kind` on x (b, t, f); float64 results. `activation` /
    `recurrent_activation`: names in `ACTIVATIONS`.

    Returns (b, t, u) with `return_sequences`, else (b, u); with `return_state`, the tuple
    `(output, *states)`.
    """
    p = _f64(params)
    x = np.asarray(x, np.float64)
    batch, time, _ = x.shape
    units = p["recurrent_kernel"].shape[0]
    n_states = STATE_COUNT[kind]
    if initial_state is None:
        states = tuple(np.zeros((batch, units)) for _ in range(n_states))
    else:
        if not isinstance(initial_state, (tuple, list)):
            initial_state = (initial_state,)
        assert len(initial_state) == n_states
        states = tuple(np.asarray(s, np.float64) for s in initial_state)
    m = np.ones((batch, time), bool) if mask is None else np.asarray(mask).astype(bool)

    order = range(time - 1, -1, -1) if go_backwards else range(time)
    outputs = []
    for t in order:
        keep = m[:, t][:, None]  # (b, 1)
        new = step(kind, p, x[:, t, :], states, reset_after=reset_after,
                   activation=activation, recurrent_activation=recurrent_activation)
        prev_h = states[0]
        states = tuple(np.where(keep, n, s) for n, s in zip(new, states, strict=True))
        if zero_output_for_mask:
            out = np.where(keep, new[0], 0.0)
        else:
            out = np.where(keep, new[0], prev_h)
        outputs.append(out)
    seq = np.stack(outputs, axis=1)  # processing order
    output = seq if return_sequences else seq[:, -1, :]
    if return_state:
        return (output, *states)
    return output


def bidirectional(
    kind: str,
    params_fw: dict,
    params_bw: dict,
    x,
    *,
    merge_mode: str | None = "concat",
    mask=None,
    initial_state=None,
    return_sequences: bool = False,
    return_state: bool = False,
    reset_after: bool = True,
):
    """Keras 3 `Bidirectional(layer, merge_mode)`: the backward output is re-aligned to forward
    time; with `return_sequences`, masked steps output zeros. `initial_state` is the forward
    states then the backward states; `return_state` gives `(output, *fw_states, *bw_states)`.
    merge_mode None returns `[fw, bw]` as the output."""
    n = STATE_COUNT[kind]
    fw_init = bw_init = None
    if initial_state is not None:
        fw_init, bw_init = tuple(initial_state[:n]), tuple(initial_state[n:])
    common = dict(
        mask=mask,
        return_sequences=return_sequences,
        return_state=True,
        zero_output_for_mask=return_sequences,
        reset_after=reset_after,
    )
    fw, *fw_states = rnn(kind, params_fw, x, initial_state=fw_init, **common)
    bw, *bw_states = rnn(kind, params_bw, x, initial_state=bw_init, go_backwards=True, **common)
    if return_sequences:
        bw = bw[:, ::-1, :]
    if merge_mode == "concat":
        out = np.concatenate([fw, bw], axis=-1)
    elif merge_mode == "sum":
        out = fw + bw
    elif merge_mode == "mul":
        out = fw * bw
    elif merge_mode == "ave":
        out = (fw + bw) / 2.0
    elif merge_mode is None:
        out = [fw, bw]
    else:
        raise ValueError(merge_mode)
    if return_state:
        return (out, *fw_states, *bw_states)
    return out


MINIMAL_GATES = {"min_gru": 2, "min_lstm": 3}


def minimal(name: str, params: dict, x: np.ndarray, *, mask=None, h0=None, log_space=True,
            go_backwards=False):
    """minGRU ("min_gru") / minLSTM ("min_lstm"), Feng et al. (2024) section 3 (appendix A's g
    in log space), a step at a time: (outputs (b, t, u) in processing order, final h (b, u)).
    params: kernel (f, gates u), bias (gates u,); h0 None starts from 0.5 in log space, else 0;
    a masked step (mask (b, t) False) keeps h."""
    kernel, bias = (np.asarray(params[k], np.float64) for k in ("kernel", "bias"))
    x = np.asarray(x, np.float64)
    u = kernel.shape[1] // MINIMAL_GATES[name]
    h = (np.asarray(h0, np.float64) if h0 is not None
         else np.full((x.shape[0], u), 0.5 if log_space else 0.0))
    cand = (lambda v: np.where(v >= 0, v + 0.5, sigmoid(v))) if log_space else (lambda v: v)
    outs = []
    for t in (range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])):
        k = x[:, t] @ kernel + bias
        if name == "min_gru":
            z = sigmoid(k[:, :u])
            new = (1 - z) * h + z * cand(k[:, u:])
        else:
            f, i = sigmoid(k[:, :u]), sigmoid(k[:, u:2 * u])
            new = f / (f + i) * h + i / (f + i) * cand(k[:, 2 * u:])
        h = new if mask is None else np.where(mask[:, t, None], new, h)
        outs.append(h)
    return np.stack(outs, axis=1), h

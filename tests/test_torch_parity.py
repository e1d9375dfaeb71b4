"""Numerical parity with PyTorch's `nn.LSTM` and `nn.GRU` (batch_first, one layer), weights
mapped by hand, float32, rtol=1e-5 / atol=1e-6.

Mapping to the Keras layout that jaxseq uses:
  LSTM  torch gates (i, f, g, o) = Keras (i, f, c, o): kernel = weight_ih.T,
        recurrent_kernel = weight_hh.T, bias = bias_ih + bias_hh.
  GRU   torch gates (r, z, n), Keras (z, r, h); torch's GRU is Keras' reset_after=True form:
        kernel = reorder(weight_ih).T, recurrent_kernel = reorder(weight_hh).T,
        bias = [reorder(bias_ih), reorder(bias_hh)] (rows: input bias, recurrent bias).

Right-padded batches: torch's packed sequences stop each row at its length; jaxseq gets the
equivalent mask. Final states and the outputs at real steps agree; at padded steps torch
outputs zeros, as does jaxseq's Bidirectional with return_sequences (Keras'
zero_output_for_mask), while a plain jaxseq layer repeats the last output (Keras semantics).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jaxseq  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
B, T, F, H = 4, 5, 3, 4
LENGTHS = np.array([5, 3, 1, 4])  # right padding; torch's packing needs lengths >= 1
IMPLEMENTATIONS = ["auto", "scan"]


def _np(t) -> np.ndarray:
    return t.detach().numpy()


def _assert_close(got, want, err_msg=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == np.float32, got.dtype
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=err_msg)


def _torch_module(cls, *, bidirectional=False, seed=0):
    torch.manual_seed(seed)
    module = cls(F, H, num_layers=1, batch_first=True, bidirectional=bidirectional)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)  # larger than torch's default init, biases included
    return module.float().eval()


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, F)).astype(np.float32)
    h0 = rng.normal(scale=0.5, size=(2, B, H)).astype(np.float32)
    c0 = rng.normal(scale=0.5, size=(2, B, H)).astype(np.float32)
    return x, h0, c0


def lstm_params(module, suffix="") -> dict:
    w = {n: _np(getattr(module, f"{n}_l0{suffix}")) for n in
         ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    return {
        "kernel": w["weight_ih"].T,
        "recurrent_kernel": w["weight_hh"].T,
        "bias": w["bias_ih"] + w["bias_hh"],
    }


def _rzn_to_zrh(a: np.ndarray) -> np.ndarray:
    """torch GRU gate blocks (r, z, n) along axis 0 -> Keras (z, r, h)."""
    r, z, n = np.split(a, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def gru_params(module, suffix="") -> dict:
    w = {n: _np(getattr(module, f"{n}_l0{suffix}")) for n in
         ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    return {
        "kernel": _rzn_to_zrh(w["weight_ih"]).T,
        "recurrent_kernel": _rzn_to_zrh(w["weight_hh"]).T,
        "bias": np.stack([_rzn_to_zrh(w["bias_ih"]), _rzn_to_zrh(w["bias_hh"])]),
    }


def _check_layout(layer, params, x):
    shapes = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(np.shape, params)


def _torch_run(module, x, h0=None, c0=None, lengths=None):
    """(outputs (b, t, dirs*H) zero-padded, h_n, c_n or None), each as numpy."""
    xt = torch.from_numpy(x)
    if lengths is not None:
        xt = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
        )
    state = None
    if h0 is not None:
        state = torch.from_numpy(h0) if c0 is None else (torch.from_numpy(h0),
                                                         torch.from_numpy(c0))
    with torch.no_grad():
        out, hn = module(xt, state)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    h_n, c_n = hn if isinstance(hn, tuple) else (hn, None)
    return _np(out), _np(h_n), None if c_n is None else _np(c_n)


def _mask(lengths):
    return np.arange(T)[None, :] < lengths[:, None]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("with_init", [False, True], ids=["zero_init", "h0_c0"])
def test_lstm_matches_torch(with_init, implementation):
    x, h0, c0 = _inputs()
    module = _torch_module(torch.nn.LSTM)
    want_y, want_h, want_c = _torch_run(module, x, *((h0[:1], c0[:1]) if with_init else ()))
    params = lstm_params(module)
    layer = jaxseq.LSTM(H, return_sequences=True, return_state=True,
                        implementation=implementation)
    _check_layout(layer, params, x)
    init = (h0[0], c0[0]) if with_init else None
    y, h, c = layer.apply({"params": params}, x, initial_state=init)
    _assert_close(y, want_y, "outputs")
    _assert_close(h, want_h[0], "h_n")
    _assert_close(c, want_c[0], "c_n")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("with_init", [False, True], ids=["zero_init", "h0"])
def test_gru_matches_torch(with_init, implementation):
    x, h0, _ = _inputs(1)
    module = _torch_module(torch.nn.GRU, seed=1)
    want_y, want_h, _ = _torch_run(module, x, *((h0[:1],) if with_init else ()))
    params = gru_params(module)
    layer = jaxseq.GRU(H, return_sequences=True, return_state=True, reset_after=True,
                       implementation=implementation)
    _check_layout(layer, params, x)
    y, h = layer.apply({"params": params}, x, initial_state=h0[0] if with_init else None)
    _assert_close(y, want_y, "outputs")
    _assert_close(h, want_h[0], "h_n")


def _bidirectional_lstm(module, implementation):
    """torch's bidirectional nn.LSTM weights as (params, jaxseq Bidirectional(LSTM))."""
    params = {
        "forward_layer": lstm_params(module),
        "backward_layer": lstm_params(module, "_reverse"),
    }
    layer = jaxseq.Bidirectional(
        jaxseq.LSTM(H, return_sequences=True, return_state=True, implementation=implementation),
        merge_mode="concat",
    )
    return params, layer


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("with_init", [False, True], ids=["zero_init", "h0_c0"])
def test_bidirectional_lstm_matches_torch(with_init, implementation):
    x, h0, c0 = _inputs(2)
    module = _torch_module(torch.nn.LSTM, bidirectional=True, seed=2)
    want_y, want_h, want_c = _torch_run(module, x, *((h0, c0) if with_init else ()))
    params, layer = _bidirectional_lstm(module, implementation)
    _check_layout(layer, params, x)
    init = (h0[0], c0[0], h0[1], c0[1]) if with_init else None
    y, h_f, c_f, h_b, c_b = layer.apply({"params": params}, x, initial_state=init)
    _assert_close(y, want_y, "outputs")
    _assert_close(h_f, want_h[0], "forward h_n")
    _assert_close(c_f, want_c[0], "forward c_n")
    _assert_close(h_b, want_h[1], "backward h_n")
    _assert_close(c_b, want_c[1], "backward c_n")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_masked_layer_matches_torch_packed_sequence(kind, implementation):
    x, h0, c0 = _inputs(3)
    mask = _mask(LENGTHS)
    if kind == "lstm":
        module = _torch_module(torch.nn.LSTM, seed=3)
        want_y, want_h, want_c = _torch_run(module, x, h0[:1], c0[:1], lengths=LENGTHS)
        layer = jaxseq.LSTM(H, return_sequences=True, return_state=True,
                            implementation=implementation)
        y, h, c = layer.apply({"params": lstm_params(module)}, x, mask=mask,
                              initial_state=(h0[0], c0[0]))
        _assert_close(c, want_c[0], "c_n")
    else:
        module = _torch_module(torch.nn.GRU, seed=3)
        want_y, want_h, _ = _torch_run(module, x, h0[:1], lengths=LENGTHS)
        layer = jaxseq.GRU(H, return_sequences=True, return_state=True,
                           implementation=implementation)
        y, h = layer.apply({"params": gru_params(module)}, x, mask=mask, initial_state=h0[0])
    _assert_close(h, want_h[0], "h_n")
    # Real steps agree; at padded steps jaxseq repeats the last output where torch pads zeros.
    _assert_close(np.where(mask[:, :, None], y, 0.0), want_y, "outputs at real steps")
    last = np.asarray(y)[np.arange(B), LENGTHS - 1]
    np.testing.assert_array_equal(np.asarray(y)[:, -1], last)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_masked_bidirectional_lstm_matches_torch_packed_sequence(implementation):
    # torch's reverse direction starts each row at its own last real step; Keras/jaxseq's
    # backward layer reaches the same state because it skips the trailing masked steps.
    x, h0, c0 = _inputs(4)
    module = _torch_module(torch.nn.LSTM, bidirectional=True, seed=4)
    want_y, want_h, want_c = _torch_run(module, x, h0, c0, lengths=LENGTHS)
    params, layer = _bidirectional_lstm(module, implementation)
    y, h_f, c_f, h_b, c_b = layer.apply(
        {"params": params}, x, mask=_mask(LENGTHS), initial_state=(h0[0], c0[0], h0[1], c0[1])
    )
    _assert_close(y, want_y, "outputs (zeros at padded steps on both sides)")
    _assert_close(np.stack([h_f, h_b]), want_h, "h_n")
    _assert_close(np.stack([c_f, c_b]), want_c, "c_n")

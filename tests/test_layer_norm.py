"""Layer-normalised LSTM and GRU (`layer_norm=True`) against a float64 NumPy reference written
here from TF-Addons' `LayerNormLSTMCell` (Ba et al., 2016): outputs, states and gradients (the
reference's central differences), masks, go_backwards, Bidirectional, summary counts, fit,
and save/load."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tests_common import jit_apply, jit_init

import jaxseq as js
from jaxseq.rnn import resolve_implementation

EPS = 1e-3  # TF-Addons' norm_epsilon default


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _ln(v, gamma, beta, eps):
    """Layer normalisation over the last axis, population variance (Keras LayerNormalization)."""
    mean = v.mean(axis=-1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    return (v - mean) / np.sqrt(var + eps) * gamma + beta


def _order(t, go_backwards):
    return range(t - 1, -1, -1) if go_backwards else range(t)


def ref_lstm(p, x, mask=None, go_backwards=False, eps=EPS):
    """TF-Addons LayerNormLSTMCell.call over time (Keras 3 masking and go_backwards):
    z = LN_k(x K) + LN_r(h R) + b; c = LN_s(σ(f) c + σ(i) tanh(g)); h = σ(o) tanh(c) [@ P].
    Returns (ys (b, t, h) in processing order, h, c)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    b, t, _ = x.shape
    u = p["state_norm_gamma"].shape[0]
    h = np.zeros((b, p["recurrent_kernel"].shape[0]))
    c = np.zeros((b, u))
    ys = []
    for s in _order(t, go_backwards):
        z = (_ln(x[:, s] @ p["kernel"], p["kernel_norm_gamma"], p["kernel_norm_beta"], eps)
             + _ln(h @ p["recurrent_kernel"], p["recurrent_norm_gamma"],
                   p["recurrent_norm_beta"], eps)
             + p["bias"])
        zi, zf, zg, zo = z[:, :u], z[:, u:2 * u], z[:, 2 * u:3 * u], z[:, 3 * u:]
        c_new = _sigmoid(zf) * c + _sigmoid(zi) * np.tanh(zg)
        c_new = _ln(c_new, p["state_norm_gamma"], p["state_norm_beta"], eps)
        h_new = _sigmoid(zo) * np.tanh(c_new)
        if "projection_kernel" in p:
            h_new = h_new @ p["projection_kernel"]
        if mask is not None:
            keep = np.asarray(mask)[:, s, None]
            h_new, c_new = np.where(keep, h_new, h), np.where(keep, c_new, c)
        h, c = h_new, c_new
        ys.append(h)
    return np.stack(ys, axis=1), h, c


def ref_gru(p, x, mask=None, go_backwards=False, eps=EPS):
    """The GRU (reset_after=True) with the same rule: [x_z, x_r, x_h] = LN_k(x K) + b[0],
    [r_z, r_r, r_h] = LN_r(h R) + b[1], z = σ(x_z + r_z), r = σ(x_r + r_r),
    h' = tanh(x_h + r r_h), h = z h + (1 - z) h'. Returns (ys, h)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    b, t, _ = x.shape
    u = p["recurrent_kernel"].shape[0]
    h = np.zeros((b, u))
    ys = []
    for s in _order(t, go_backwards):
        xp = _ln(x[:, s] @ p["kernel"], p["kernel_norm_gamma"], p["kernel_norm_beta"], eps)
        xp = xp + p["bias"][0]
        rp = _ln(h @ p["recurrent_kernel"], p["recurrent_norm_gamma"], p["recurrent_norm_beta"],
                 eps) + p["bias"][1]
        z = _sigmoid(xp[:, :u] + rp[:, :u])
        r = _sigmoid(xp[:, u:2 * u] + rp[:, u:2 * u])
        hh = np.tanh(xp[:, 2 * u:] + r * rp[:, 2 * u:])
        h_new = z * h + (1 - z) * hh
        if mask is not None:
            h_new = np.where(np.asarray(mask)[:, s, None], h_new, h)
        h = h_new
        ys.append(h)
    return np.stack(ys, axis=1), h


REFS = {"lstm": ref_lstm, "gru": ref_gru}


def ref_param_count(kind, features, units, proj=0):
    """Keras layout plus TF-Addons' norm sublayers (gamma and beta each)."""
    g = {"lstm": 4, "gru": 3}[kind] * units
    hsize = proj or units
    base = features * g + hsize * g + (g if kind == "lstm" else 2 * g)
    norms = 2 * g + 2 * g + (2 * units if kind == "lstm" else 0)
    return base + norms + units * proj


def _layer(kind, units, **kw):
    return (js.LSTM if kind == "lstm" else js.GRU)(units, layer_norm=True, **kw)


def _random_params(kind, params, seed):
    """`params` with every leaf redrawn (gamma around 1, the rest around 0), so that no gamma
    or beta keeps its initial value and a mix-up of any two would show."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, v in params.items():
        draw = rng.normal(scale=0.5, size=np.shape(v))
        out[name] = jnp.asarray(1.0 + 0.3 * draw if name.endswith("gamma") else draw,
                                jnp.asarray(v).dtype)
    return out


def _mask(b, t, seed):
    rng = np.random.default_rng(seed)
    m = rng.random((b, t)) > 0.35
    m[0] = True
    m[-1] = False  # a fully masked row returns its initial (zero) state
    return m


CASES = [  # (kind, masked, go_backwards, proj_size)
    ("lstm", False, False, 0), ("lstm", True, True, 0), ("lstm", True, False, 2),
    ("gru", False, False, 0), ("gru", True, True, 0), ("gru", False, True, 0),
]


@pytest.mark.parametrize("kind,masked,go_backwards,proj", CASES)
def test_outputs_and_states_equal_the_float64_reference(kind, masked, go_backwards, proj):
    b, t, f, u = 3, 6, 4, 5
    with jax.enable_x64(True):
        x = np.random.default_rng(1).normal(size=(b, t, f))
        mask = _mask(b, t, 2) if masked else None
        kw = dict(proj_size=proj) if proj else {}
        layer = _layer(kind, u, return_sequences=True, return_state=True,
                       go_backwards=go_backwards, param_dtype=jnp.float64, **kw)
        params = jit_init(layer, jax.random.PRNGKey(0), x)["params"]
        params = _random_params(kind, params, 3)
        out, *states = jit_apply(layer, {"params": params}, x, mask=mask)
        assert out.dtype == jnp.float64
        ys, *want_states = REFS[kind](params, x, mask, go_backwards)
        np.testing.assert_allclose(out, ys, rtol=1e-12, atol=1e-12)
        assert len(states) == len(want_states)
        for got, want in zip(states, want_states, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        if masked:  # the fully masked row kept its zero initial state
            np.testing.assert_array_equal(states[0][-1], 0.0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float32_default_layer_equals_the_reference(kind):
    x = np.random.default_rng(4).normal(size=(2, 7, 3)).astype(np.float32)
    layer = _layer(kind, 4)  # implementation="auto": must resolve to the scan path
    params = jit_init(layer, jax.random.PRNGKey(5), x)["params"]
    params = _random_params(kind, params, 6)
    out = jit_apply(layer, {"params": params}, x)
    assert out.dtype == jnp.float32 and out.shape == (2, 4)
    # float32 rounding through 7 steps of normalisation: a few ulps of the float64 values
    np.testing.assert_allclose(out, REFS[kind](params, x)[1], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bfloat16_compute_stays_close_to_the_reference(kind):
    x = np.random.default_rng(20).normal(size=(2, 5, 3)).astype(np.float32)
    layer = _layer(kind, 4, dtype=jnp.bfloat16)
    params = _random_params(kind, jit_init(layer, jax.random.PRNGKey(5), x)["params"], 21)
    out = jit_apply(layer, {"params": params}, x)
    assert out.dtype == jnp.bfloat16
    # bfloat16 keeps 8 significant bits (relative step 2^-8 ≈ 4e-3); five steps of rounding
    # in the products and gates, the normalisations themselves computed in float32
    np.testing.assert_allclose(np.asarray(out, np.float32), REFS[kind](params, x)[1],
                               atol=5e-2)


def _fd_grad(fun, arrays, h=1e-6):
    """Central differences of the scalar NumPy `fun(arrays)` w.r.t. each entry of each array."""
    grads = {}
    for name, a in arrays.items():
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            up = {k: v.copy() for k, v in arrays.items()}
            down = {k: v.copy() for k, v in arrays.items()}
            up[name][idx] += h
            down[name][idx] -= h
            g[idx] = (fun(up) - fun(down)) / (2 * h)
        grads[name] = g
    return grads


@pytest.mark.parametrize("kind,masked,go_backwards", [("lstm", True, True),
                                                      ("gru", True, False),
                                                      ("gru", False, True)])
def test_gradients_wrt_params_and_inputs_equal_the_reference(kind, masked, go_backwards):
    b, t, f, u = 2, 4, 3, 3
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        x = rng.normal(size=(b, t, f))
        mask = _mask(b, t, 8) if masked else None
        layer = _layer(kind, u, return_sequences=True, return_state=True,
                       go_backwards=go_backwards, param_dtype=jnp.float64)
        params = _random_params(kind, jit_init(layer, jax.random.PRNGKey(0), x)["params"], 9)
        w_ys = rng.normal(size=(b, t, u))
        w_states = [rng.normal(size=(b, u)) for _ in range(2 if kind == "lstm" else 1)]

        def loss_jax(params, x):
            out, *states = layer.apply({"params": params}, x, mask=mask)
            return jnp.sum(out * w_ys) + sum(jnp.sum(s * w) for s, w in
                                             zip(states, w_states, strict=True))

        def loss_np(arrays):
            arrays = dict(arrays)
            xx = arrays.pop("__x__")
            ys, *states = REFS[kind](arrays, xx, mask, go_backwards)
            return np.sum(ys * w_ys) + sum(np.sum(s * w) for s, w in
                                           zip(states, w_states, strict=True))

        g_params, g_x = jax.jit(jax.grad(loss_jax, argnums=(0, 1)))(params, jnp.asarray(x))
        arrays = {k: np.asarray(v, np.float64) for k, v in params.items()}
        arrays["__x__"] = x.copy()
        np.testing.assert_allclose(jax.jit(loss_jax)(params, x), loss_np(arrays), rtol=1e-12)
        want = _fd_grad(loss_np, arrays)
        assert set(g_params) == set(want) - {"__x__"}
        # central differences at h=1e-6 in float64: truncation ~h², rounding ~1e-16/h
        for name, g in g_params.items():
            np.testing.assert_allclose(g, want[name], rtol=1e-6, atol=1e-8, err_msg=name)
            assert np.abs(g).max() > 0  # every parameter, gamma and beta included, is used
        np.testing.assert_allclose(g_x, want["__x__"], rtol=1e-6, atol=1e-8)
        if masked:  # padding does not reach the loss
            np.testing.assert_array_equal(np.asarray(g_x)[~mask], 0.0)


@pytest.mark.parametrize("kind,proj", [("lstm", 0), ("gru", 0), ("lstm", 2)])
def test_parameters_names_initial_values_and_summary_count(kind, proj):
    f, u = 3, 5
    x = np.zeros((2, 4, f), np.float32)
    kw = dict(proj_size=proj) if proj else {}
    layer = _layer(kind, u, **kw)
    params = jit_init(layer, jax.random.PRNGKey(0), x)["params"]
    g = {"lstm": 4, "gru": 3}[kind] * u
    norms = {"kernel_norm": g, "recurrent_norm": g}
    if kind == "lstm":
        norms["state_norm"] = u
    for name, n in norms.items():
        np.testing.assert_array_equal(params[f"{name}_gamma"], np.ones(n))
        np.testing.assert_array_equal(params[f"{name}_beta"], np.zeros(n))
    plain = (js.LSTM if kind == "lstm" else js.GRU)(u, **kw).init(jax.random.PRNGKey(0), x)
    assert set(params) == set(plain["params"]) | {f"{k}_{w}" for k in norms
                                                  for w in ("gamma", "beta")}
    want = ref_param_count(kind, f, u, proj)
    text = js.summary(js.Sequential((layer, js.Dense(1))), x)
    assert f"Total params: {want + (proj or u) + 1:,}" in text
    rows, total = js.summary_rows(layer, x)
    assert total == want and rows[0][-1] == want


def test_fused_is_refused_and_auto_takes_the_scan():
    x = np.zeros((2, 3, 2), np.float32)
    for cls in (js.LSTM, js.GRU):
        with pytest.raises(ValueError, match=r"implementation='fused'\) does not support "
                                             r"layer_norm=True; use implementation='scan'"):
            cls(3, layer_norm=True, implementation="fused").init(jax.random.PRNGKey(0), x)
        normed = cls(3, layer_norm=True)
        assert resolve_implementation(normed, "cpu") == "scan"
        assert resolve_implementation(cls(3), "cpu") == "fused"


def test_bad_configurations_are_refused():
    x = np.zeros((2, 3, 2), np.float32)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"GRU\(layer_norm=True\) expects reset_after=True"):
        js.GRU(3, layer_norm=True, reset_after=False).init(key, x)
    with pytest.raises(TypeError, match=r"LSTM expects layer_norm to be a bool; got str"):
        js.LSTM(3, layer_norm="yes").init(key, x)
    with pytest.raises(ValueError, match=r"GRU expects norm_epsilon to be a positive number; "
                                         r"got -1\.0"):
        js.GRU(3, layer_norm=True, norm_epsilon=-1.0).init(key, x)
    with pytest.raises(TypeError, match=r"LSTM expects norm_epsilon to be a positive number"):
        js.LSTM(3, layer_norm=True, norm_epsilon=None).init(key, x)


def test_norm_epsilon_is_used():
    with jax.enable_x64(True):
        x = np.random.default_rng(10).normal(size=(2, 3, 2)) * 0.05  # small: eps matters
        layer = js.LSTM(3, layer_norm=True, norm_epsilon=0.5, param_dtype=jnp.float64)
        params = _random_params("lstm", jit_init(layer, jax.random.PRNGKey(0), x)["params"], 11)
        out = jit_apply(layer, {"params": params}, x)
        np.testing.assert_allclose(out, ref_lstm(params, x, eps=0.5)[1], rtol=1e-12)
        assert not np.allclose(out, ref_lstm(params, x, eps=EPS)[1], rtol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidirectional_equals_forward_and_backward_references(kind):
    b, t, f, u = 3, 5, 2, 4
    with jax.enable_x64(True):
        x = np.random.default_rng(12).normal(size=(b, t, f))
        mask = _mask(b, t, 13)
        model = js.Bidirectional(_layer(kind, u, return_sequences=True,
                                        param_dtype=jnp.float64))
        params = jit_init(model, jax.random.PRNGKey(0), x)["params"]
        params = {side: _random_params(kind, params[side], seed)
                  for side, seed in (("forward_layer", 14), ("backward_layer", 15))}
        out = jit_apply(model, {"params": params}, x, mask=mask)
        fw = REFS[kind](params["forward_layer"], x, mask)[0]
        bw = np.flip(REFS[kind](params["backward_layer"], x, mask, go_backwards=True)[0], 1)
        want = np.concatenate([fw, bw], axis=-1) * mask[:, :, None]  # Keras: zeros when masked
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_fit_decreases_the_loss(kind):
    rng = np.random.default_rng(16)
    x = rng.normal(size=(32, 6, 2)).astype(np.float32)
    y = np.cumsum(x[:, :, :1], axis=1)[:, -1] * 0.5  # a running sum: needs the recurrence
    model = js.Sequential((_layer(kind, 8), js.Dense(1)))
    state, history = js.fit(model, x, y, epochs=15, batch_size=8, seed=0, verbose=0,
                            optimizer=optax.adam(1e-2))
    assert history.loss[-1] < 0.5 * history.loss[0]
    norms = state.params[kind]
    assert not np.allclose(norms["kernel_norm_gamma"], 1.0)  # the gains are trained


def test_save_and_load_round_trip_keeps_layer_norm(tmp_path):
    x = np.random.default_rng(17).normal(size=(2, 5, 3)).astype(np.float32)
    model = js.Sequential((
        js.Bidirectional(js.GRU(3, layer_norm=True, return_sequences=True)),
        js.LSTM(4, layer_norm=True, norm_epsilon=1e-2), js.Dense(1)))
    variables = jit_init(model, jax.random.PRNGKey(1), x)
    variables = {"params": jax.tree.map(lambda v: v + 0.1, variables["params"])}
    want = np.asarray(js.predict(model, variables, x))
    path = tmp_path / "model.jaxseq"
    js.save_model(path, model, variables)
    again, loaded = js.load_model(path)
    assert again == model
    assert again.layers[1].layer_norm and again.layers[1].norm_epsilon == 1e-2
    assert again.layers[0].layer.layer_norm
    np.testing.assert_array_equal(js.predict(again, loaded, x), want)


def test_cell_driven_by_flax_rnn_equals_the_layer():
    x = np.random.default_rng(18).normal(size=(2, 4, 3)).astype(np.float32)
    for cell, layer in ((js.LSTMCell(3, layer_norm=True), js.LSTM(3, layer_norm=True)),
                        (js.GRUCell(3, layer_norm=True), js.GRU(3, layer_norm=True))):
        params = _random_params("", jit_init(layer, jax.random.PRNGKey(0), x)["params"], 19)
        rnn = nn.RNN(cell)
        got = jit_apply(rnn, {"params": {"cell": params}}, x)
        want = jit_apply(layer.clone(return_sequences=True), {"params": params}, x)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

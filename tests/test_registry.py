"""`jaxseq.registry`: a layer kind registered once is known to everything that lists layers
(`summary`, model files, `Bidirectional`, the interop refusals) with no edit anywhere else.

The kind here is test-only: `Decay`, the diagonal linear recurrence h_t = sigmoid(decay) * h_{t-1}
+ x_t @ kernel, plugged into the sequence-layer base `js.RNN` by three hooks (`create_params`,
`state_shapes`, `recurrence`). Its outputs are checked against a float64 NumPy loop, so the
base's plumbing (masks with NaN padding, direction, states, return flags) is checked with it.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq as js
from jaxseq import registry

B, T, F, U = 3, 6, 2, 3
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, T, F)).astype(np.float32)
MASK = np.ones((B, T), bool)
MASK[1, [0, 3, 4]] = False  # a leading hole and an inner one
MASK[2, 4:] = False  # right padding
X_PADDED = np.where(MASK[:, :, None], X, np.nan).astype(np.float32)


@registry.register(summary="DecayRNN")
class Decay(js.RNN):
    """Test-only: h_t = sigmoid(decay) * h_{t-1} + x_t @ kernel, one decay per unit.

    Attributes:
      units: the width of h.
    """

    units: int

    @nn.nowrap
    def create_params(self, input_shape):
        init = nn.initializers.normal(1.0)
        return {"kernel": self.param("kernel", init, (input_shape[-1], self.units),
                                     self.param_dtype),
                "decay": self.param("decay", init, (self.units,), self.param_dtype)}

    @nn.nowrap
    def state_shapes(self, input_shape):
        return ((input_shape[0], self.units),)

    @nn.nowrap
    def recurrence(self, implementation, params, states, x, mask, noise):
        a = jax.nn.sigmoid(params["decay"])[None]
        xp = jnp.einsum("btf,fu->tbu", x, params["kernel"])

        def step(h, inputs):
            xp_t, m_t = inputs
            new = a * h + xp_t
            if m_t is None:
                return new, new
            new = jnp.where(m_t[:, None], new, h)
            zeros = jnp.zeros_like(new)
            return new, (jnp.where(m_t[:, None], new, zeros) if self.zero_output_for_mask
                         else new)

        h, ys = jax.lax.scan(step, states[0], (xp, None if mask is None else mask.T),
                             reverse=self.go_backwards)
        ys = jnp.swapaxes(ys, 0, 1)
        ys = jnp.flip(ys, axis=1) if self.go_backwards else ys  # processing order
        return (h,), (ys if self.return_sequences else None)


def _reference(params, x, mask, h0, *, go_backwards=False, zero_output=False):
    """float64 loop: (outputs (b, t, u) in processing order, final h)."""
    kernel, decay = (np.asarray(params[k], np.float64) for k in ("kernel", "decay"))
    a = 1 / (1 + np.exp(-decay))
    h, ys = np.asarray(h0, np.float64), []
    for t in (reversed(range(T)) if go_backwards else range(T)):
        keep = mask[:, t, None]
        new = a * h + np.nan_to_num(x[:, t].astype(np.float64)) @ kernel
        h = np.where(keep, new, h)
        ys.append(np.where(keep, h, 0.0) if zero_output else h)
    return np.stack(ys, axis=1), h


@pytest.fixture(scope="module")
def params():
    return Decay(U).init(jax.random.key(0), X)["params"]


def test_the_kind_runs_inside_the_base(params):
    h0 = RNG.normal(size=(B, U)).astype(np.float32)

    @jax.jit
    def run(p, x, mask, h0):
        out = {}
        for gb in (False, True):
            layer = Decay(U, return_sequences=True, return_state=True, go_backwards=gb)
            out[f"backwards={gb}"] = layer.apply({"params": p}, x, mask=mask, initial_state=h0)
        out["last"] = Decay(U).apply({"params": p}, x, mask=mask)
        return out

    out = run(params, X_PADDED, MASK, h0)
    for gb in (False, True):
        ys, h = out[f"backwards={gb}"]
        want_ys, want_h = _reference(params, X_PADDED, MASK, h0, go_backwards=gb)
        chex.assert_shape(ys, (B, T, U))
        np.testing.assert_allclose(ys, want_ys, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["last"], _reference(params, X_PADDED, MASK,
                                                       np.zeros((B, U)))[1], rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"Decay expects initial_state h of shape "
                                         r"\(batch, units\) = \(3, 3\); got \(3, 4\)"):
        Decay(U).apply({"params": params}, X, initial_state=np.zeros((B, U + 1), np.float32))


def test_summary_names_the_kind(params):
    model = js.Sequential((Decay(U, return_sequences=True), js.Dense(1)))
    text = js.summary(model, X)
    row = next(line for line in text.splitlines() if line.startswith("decay "))
    assert row.startswith("decay (DecayRNN) ") and f"(None, {T}, {U})" in row
    assert row.split()[-1] == str(F * U + U)
    assert js.summary_rows(model, X)[1] == F * U + U + U + 1


def test_model_file_round_trip(tmp_path, params):
    model = js.Sequential((Decay(U, return_sequences=True, go_backwards=True),
                           js.TimeDistributed(js.Dense(1))))
    variables = model.init(jax.random.key(1), X)
    js.save_model(tmp_path / "decay.jaxseq", model, variables, x=X)
    loaded, loaded_vars = js.load_model(tmp_path / "decay.jaxseq")
    assert loaded == model  # the same kind and fields, hence the same function
    assert registry.kind_of(loaded.layers[0]).name == "Decay"
    np.testing.assert_array_equal(loaded.apply(loaded_vars, X, mask=MASK),
                                  model.apply(variables, X, mask=MASK))


def test_bidirectional_wraps_the_kind(params):
    layer = js.Bidirectional(Decay(U, return_sequences=True, return_state=True))
    variables = {"params": {"forward_layer": params, "backward_layer": params}}
    y, h_fw, h_bw = layer.apply(variables, X_PADDED, mask=MASK)
    zero = np.zeros((B, U))
    fw, fw_h = _reference(params, X_PADDED, MASK, zero, zero_output=True)
    bw, bw_h = _reference(params, X_PADDED, MASK, zero, go_backwards=True, zero_output=True)
    np.testing.assert_allclose(y, np.concatenate([fw, np.flip(bw, axis=1)], axis=-1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_fw, fw_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_bw, bw_h, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"Bidirectional expects a jaxseq recurrent layer.*"
                                        r"LSTM.*Decay.*; got Dense"):
        js.Bidirectional(js.Dense(2)).init(jax.random.key(0), X)


def test_interop_refuses_the_kind_by_name(tmp_path):
    from jaxseq.interop import keras as keras_interop

    assert "LSTM" in keras_interop.supported() and "Decay" not in keras_interop.supported()
    absent = tmp_path / "absent.weights.h5"  # refused before the file is opened
    with pytest.raises(TypeError, match=r"load_keras_weights: Decay has no Keras layout: it is "
                                        r"the registered layer kind Decay, which names no Keras "
                                        r"counterpart; Keras weight files hold .*LSTM"):
        keras_interop.load_keras_weights(absent, js.Sequential((Decay(U),)), X)

    class Unregistered(Decay):
        pass

    with pytest.raises(TypeError, match=r"Unregistered, which is not a registered layer kind"):
        keras_interop.load_keras_weights(absent, js.Sequential((Unregistered(U),)), X)
    with pytest.raises(TypeError, match=r"Unregistered; model files hold jaxseq's layers "
                                        r"\(.*'Decay'.*jaxseq.registry"):
        js.save_model(tmp_path / "m.jaxseq", Unregistered(U), {"params": {}})


def test_register_refuses_clashes_and_repeats_nothing():
    assert registry.register(Decay, summary="DecayRNN") is Decay  # the same again: no-op
    assert registry.by_name("Decay").cls is Decay and registry.kind_of(Decay(U)).summary == (
        "DecayRNN")
    assert registry.kind_of(js.LSTM).keras == "LSTM" and registry.kind_of(js.SimpleRNN).torch \
        == "RNN"
    assert "kernel_init" not in registry.kind_of(js.LSTM).record_fields()

    class Other(js.RNN):
        units: int

    with pytest.raises(ValueError, match=r"name 'Decay' is taken by .*Decay; pass another"):
        registry.register(Other, name="Decay")
    with pytest.raises(ValueError, match=r"keras='LSTM' is the counterpart of LSTM already"):
        registry.register(Other, keras="LSTM")
    with pytest.raises(TypeError, match="expects a flax.linen Module class; got <class 'int'>"):
        registry.register(int)
    assert registry.kind_of(Other) is None  # nothing half-registered

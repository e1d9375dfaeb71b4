"""Input contracts of the public layers: the right exception type, and a message that names the
layer, the argument, the expected shape in named axes and what was given.

Parameters are built by hand (zeros in the Keras layout), so no test here needs `init` and none
compiles a recurrence: every error must come from the static checks, before any tracing.
"""

from __future__ import annotations

import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq as js

B, T, F, U = 2, 4, 2, 3

LAYERS = {
    "LSTM": (js.LSTM, {}, 4, ("h", "c")),
    "GRU": (js.GRU, {}, 3, ("h",)),
    "SimpleRNN": (js.SimpleRNN, {}, 1, ("h",)),
}


def _params(name: str, features: int = F) -> dict:
    cls, kw, gates, _ = LAYERS[name]
    bias = (2, gates * U) if cls is js.GRU else (gates * U,)
    return {"params": {"kernel": jnp.zeros((features, gates * U)),
                       "recurrent_kernel": jnp.zeros((U, gates * U)), "bias": jnp.zeros(bias)}}


def _apply(name: str, x, **kw):
    cls, layer_kw, _, _ = LAYERS[name]
    return cls(U, **layer_kw).apply(_params(name), x, **kw)


def _raises(exc, *fragments):
    """pytest.raises(exc) whose message contains every fragment, literally."""
    return pytest.raises(exc, match="".join(f"(?=[\\s\\S]*{re.escape(f)})" for f in fragments))


# --------------------------------------------------------------------------------------------
# x
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAYERS))
def test_x_rank_2_names_the_layout_and_suggests_x_none(name):
    with _raises(ValueError, name, "x", "(batch, time, features)", "(5, 1)", "x[None]"):
        _apply(name, jnp.zeros((5, 1)))


def test_x_rank_1_and_4():
    with _raises(ValueError, "(batch, time, features)", "(5,)", "x[None, :, None]"):
        _apply("LSTM", jnp.zeros((5,)))
    with _raises(ValueError, "(batch, time, features)", "(5, 1, 1, 1)"):
        _apply("LSTM", jnp.zeros((5, 1, 1, 1)))


@pytest.mark.parametrize("name", list(LAYERS))
def test_empty_time_axis(name):
    with _raises(ValueError, name, "(batch, time, features)", "time >= 1", "(3, 0, 2)"):
        _apply(name, jnp.zeros((3, 0, F)))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, np.int64])
def test_integer_or_bool_x_is_a_type_error(dtype):
    with _raises(TypeError, "LSTM", "x", "floating", np.dtype(dtype).name):
        _apply("LSTM", np.zeros((B, T, F), dtype))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_feature_count_differs_from_init(jit):
    apply = js.LSTM(U).apply
    apply = jax.jit(apply) if jit else apply
    with _raises(ValueError, "LSTM", "built for 2 input features", "x has 3", "(batch, time, 2)"):
        apply(_params("LSTM", features=2), jnp.zeros((B, T, 3)))


def test_contracts_fire_the_same_under_jit():
    layer = js.GRU(U)
    with _raises(ValueError, "GRU", "(batch, time, features)", "(5, 1)"):
        jax.jit(layer.apply)(_params("GRU"), jnp.zeros((5, 1)))
    with _raises(TypeError, "GRU", "mask", "float32"):
        jax.jit(lambda x, m: layer.apply(_params("GRU"), x, mask=m))(
            jnp.zeros((B, T, F)), jnp.ones((B, T))
        )


# --------------------------------------------------------------------------------------------
# mask
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask_shape", [(B, T + 1), (B + 1, T), (B,), (B, T, 1)], ids=["time", "batch", "1d", "3d"]
)
def test_mask_wrong_shape(mask_shape):
    want = f"({B}, {T})"
    with _raises(ValueError, "LSTM", "mask", "(batch, time)", want, str(mask_shape)):
        _apply("LSTM", jnp.zeros((B, T, F)), mask=np.ones(mask_shape, bool))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.bfloat16])
def test_mask_float_dtype_is_a_type_error(dtype):
    with _raises(TypeError, "LSTM", "mask", "bool", np.dtype(dtype).name, "astype(bool)"):
        _apply("LSTM", jnp.zeros((B, T, F)), mask=np.ones((B, T), dtype))


# --------------------------------------------------------------------------------------------
# initial_state
# --------------------------------------------------------------------------------------------


def test_initial_state_wrong_count():
    h = jnp.zeros((B, U))
    with _raises(ValueError, "LSTM", "initial_state", "2 array(s)", "(h, c)", "got 1"):
        _apply("LSTM", jnp.zeros((B, T, F)), initial_state=h)
    with _raises(ValueError, "LSTM", "initial_state", "2 array(s)", "got 3"):
        _apply("LSTM", jnp.zeros((B, T, F)), initial_state=(h, h, h))
    with _raises(ValueError, "GRU", "initial_state", "1 array(s)", "(h)", "got 2"):
        _apply("GRU", jnp.zeros((B, T, F)), initial_state=(h, h))


@pytest.mark.parametrize(
    "name, states, bad, got",
    [
        ("LSTM", [(B, U + 1), (B, U)], "h", (B, U + 1)),
        ("LSTM", [(B, U), (B + 1, U)], "c", (B + 1, U)),
        ("GRU", [(B, U, 1)], "h", (B, U, 1)),
        ("SimpleRNN", [(U,)], "h", (U,)),
    ],
)
def test_initial_state_wrong_shape(name, states, bad, got):
    init = tuple(jnp.zeros(s) for s in states)
    with _raises(ValueError, name, f"initial_state {bad}", "(batch, units)", str((B, U)),
                 str(got)):
        _apply(name, jnp.zeros((B, T, F)), initial_state=init)


# --------------------------------------------------------------------------------------------
# layer configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("units, exc", [(0, ValueError), (-2, ValueError), (2.5, TypeError),
                                        (True, TypeError), ("3", TypeError)])
def test_bad_units(units, exc):
    with _raises(exc, "LSTM", "units", repr(units) if exc is TypeError else str(units)):
        js.LSTM(units).apply(_params("LSTM"), jnp.zeros((B, T, F)))


@pytest.mark.parametrize("field", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_bad_dropout_rates(field, rate):
    with _raises(ValueError, "GRU", field, "[0, 1)", str(rate)):
        js.GRU(U, **{field: rate}).apply(_params("GRU"), jnp.zeros((B, T, F)))


def test_unknown_activation():
    with _raises(ValueError, "activation", "'nope'", "tanh"):
        js.SimpleRNN(U, activation="nope").apply(_params("SimpleRNN"), jnp.zeros((B, T, F)))


def test_dropout_without_rng_raises():
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        js.LSTM(U, dropout=0.5).apply(_params("LSTM"), jnp.zeros((B, T, F)), deterministic=False)


def test_bad_implementation():
    with _raises(ValueError, "LSTM", "implementation", "'auto'", "'nope'"):
        js.LSTM(U, implementation="nope").apply(_params("LSTM"), jnp.zeros((B, T, F)))


# --------------------------------------------------------------------------------------------
# Bidirectional
# --------------------------------------------------------------------------------------------


def _bi_params(name: str = "LSTM") -> dict:
    p = _params(name)["params"]
    return {"params": {"forward_layer": p, "backward_layer": p}}


@pytest.mark.parametrize("layer", [nn.Dense(3), nn.RNN(nn.LSTMCell(3)), js.LSTMCell(3)],
                         ids=["Dense", "flax-RNN", "LSTMCell"])
def test_bidirectional_with_a_non_rnn_layer(layer):
    with _raises(TypeError, "Bidirectional", "LSTM, GRU, SimpleRNN", type(layer).__name__):
        js.Bidirectional(layer).init(jax.random.key(0), jnp.zeros((B, T, F)))


@pytest.mark.parametrize("mode", ["max", "Concat", ""])
def test_bidirectional_bad_merge_mode(mode):
    with _raises(ValueError, "Bidirectional", "merge_mode", "'concat'", "None", repr(mode)):
        js.Bidirectional(js.LSTM(U), merge_mode=mode).apply(_bi_params(), jnp.zeros((B, T, F)))


def test_bidirectional_initial_state_wrong_count():
    h = jnp.zeros((B, U))
    with _raises(ValueError, "Bidirectional(LSTM)", "initial_state", "4 arrays",
                 "forward states then backward states", "got 2"):
        js.Bidirectional(js.LSTM(U)).apply(_bi_params(), jnp.zeros((B, T, F)),
                                           initial_state=(h, h))


def test_bidirectional_passes_the_x_contract_through():
    with _raises(ValueError, "(batch, time, features)", "(5, 1)", "x[None]"):
        js.Bidirectional(js.LSTM(U)).apply(_bi_params(), jnp.zeros((5, 1)))


# --------------------------------------------------------------------------------------------
# TimeDistributed, RepeatVector, cells
# --------------------------------------------------------------------------------------------


def test_time_distributed_on_rank_2_input():
    with _raises(ValueError, "TimeDistributed", "x", "(batch, time, ...)", "(3, 5)"):
        js.TimeDistributed(nn.Dense(1)).init(jax.random.key(0), jnp.zeros((3, 5)))


def test_time_distributed_empty_time_axis():
    with _raises(ValueError, "TimeDistributed", "time >= 1", "(3, 0, 5)"):
        js.TimeDistributed(nn.Dense(1)).init(jax.random.key(0), jnp.zeros((3, 0, 5)))


def test_time_distributed_of_a_non_module():
    with _raises(TypeError, "TimeDistributed", "Module", "function"):
        js.TimeDistributed(lambda x: x).init(jax.random.key(0), jnp.zeros((3, 4, 5)))


def test_repeat_vector_on_rank_3_input():
    with _raises(ValueError, "RepeatVector", "x", "(batch, features)", "(3, 4, 5)",
                 "return_sequences=False"):
        js.RepeatVector(2).apply({}, jnp.zeros((3, 4, 5)))


@pytest.mark.parametrize("n, exc", [(0, ValueError), (2.0, TypeError)])
def test_repeat_vector_bad_n(n, exc):
    with _raises(exc, "RepeatVector", "n", str(n)):
        js.RepeatVector(n).apply({}, jnp.zeros((3, 5)))


def test_cell_on_rank_1_input():
    cell = js.LSTMCell(U)
    carry = cell.initialize_carry(jax.random.key(0), (B, F))
    with _raises(ValueError, "LSTMCell", "x", "(batch, features)", "(2,)"):
        cell.init(jax.random.key(0), carry, jnp.zeros((F,)))


# --- errors that say what to do (the API issue) -----------------------------------------------


def test_errors_that_say_what_to_do():
    import warnings

    import jaxseq as js

    x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")
    model = js.models.many_to_many()
    with pytest.raises(ValueError, match=r"add a trailing feature axis: x\[\.\.\., None\]"):
        js.LSTM(2).init(jax.random.PRNGKey(0), x[..., 0])
    with pytest.raises(ValueError, match=r"features >= 1; got \(2, 3, 0\)"):
        js.LSTM(2).init(jax.random.PRNGKey(0), np.zeros((2, 3, 0), np.float32))
    other = js.models.many_to_many(units=7).init(jax.random.PRNGKey(0), x)["params"]
    with pytest.raises(ValueError, match=r"predict: the params do not fit this model: "
                                         r"'lstm/bias': params have shape \(28,\), the model "
                                         r"needs \(20,\)"):
        js.predict(model, other, x)
    with pytest.raises(ValueError, match=r"evaluate: the params do not fit"):
        js.evaluate(model, other, x, y)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    with pytest.raises(ValueError, match=r"skill expects the stacked params .* got one model's"):
        js.skill(model, params, x, y)
    bad = x.copy()
    bad[0, 1, 0] = np.nan
    with pytest.warns(RuntimeWarning, match=r"1 sample\(s\) of x hold NaN/Inf at unmasked"):
        js.predict(model, params, bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # masked NaN is legitimate padding: no warning
        js.predict(model, params, bad, mask=np.array([[True, False, True, True, True]]))
    with pytest.raises(TypeError, match=r"callbacks that subclass jaxseq.Callback"):
        keras = pytest.importorskip("keras")
        js.fit(model, x, y, epochs=1, callbacks=[keras.callbacks.EarlyStopping()], verbose=0)

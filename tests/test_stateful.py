"""Stateful recurrent layers (Keras' `stateful=True`) and truncated BPTT in `fit`.

References: a long series cut into windows at any boundaries equals one pass; Keras 3's own
stateful LSTM called window after window (eager calls: Keras 3.15 with the JAX backend carries
states there, but not in `fit` or `predict`, where a stateful model trains exactly like a
stateless one; its torch backend fails in the backward pass), and, for training, a Python loop
that passes each batch's final states as the next batch's `initial_state` (stop_gradient).
"""

import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tests_common import jit_apply, jit_init

import jaxseq as js

os.environ.setdefault("KERAS_BACKEND", "jax")
RNG = np.random.default_rng(0)
SERIES = RNG.normal(size=(2, 12, 1)).astype(np.float32)


@pytest.mark.parametrize("implementation", ["scan", "fused"])
@pytest.mark.parametrize("layer", ["lstm", "gru", "simple_rnn"])
def test_windows_at_any_boundaries_equal_one_pass(layer, implementation):
    cls = {"lstm": js.LSTM, "gru": js.GRU, "simple_rnn": js.SimpleRNN}[layer]
    stateful = cls(3, return_sequences=True, stateful=True, implementation=implementation)
    variables = stateful.init(jax.random.PRNGKey(0), SERIES[:, :4])
    assert set(variables) == {"params", "rnn_state"}
    assert all(not np.any(s) for s in jax.tree.leaves(variables["rnn_state"]))  # zeros
    whole = jit_apply(cls(3, return_sequences=True, implementation=implementation),
        {"params": variables["params"]}, SERIES)
    step = jax.jit(lambda v, x: stateful.apply(v, x, mutable=["rnn_state"]))
    for cuts in ([0, 5, 7, 12], [0, 1, 2, 3, 12], [0, 12]):
        v, outs = variables, []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            y, upd = step(v, SERIES[:, a:b])
            v = {**v, **upd}
            outs.append(y)
        np.testing.assert_allclose(np.concatenate(outs, axis=1), whole, rtol=1e-5, atol=1e-6)
        reset = js.reset_states(v)
        assert all(not np.any(s) for s in jax.tree.leaves(reset["rnn_state"]))
        chex.assert_trees_all_equal(reset["params"], v["params"])


def test_forward_equals_keras_stateful_layer_called_window_by_window():
    keras = pytest.importorskip("keras")
    from jaxseq.interop import to_keras

    model = js.Sequential((js.LSTM(4, stateful=True, return_sequences=True),
                           js.TimeDistributed(nn.Dense(1))))
    variables = jit_init(model, jax.random.PRNGKey(1), SERIES[:, :3])
    with jax.numpy_rank_promotion("allow"):  # Keras' own broadcasting
        k = keras.Sequential([keras.Input(batch_shape=(2, 3, 1)),
                              keras.layers.LSTM(4, stateful=True, return_sequences=True),
                              keras.layers.TimeDistributed(keras.layers.Dense(1))])
        to_keras(variables["params"], k)
        for w in range(4):
            window = SERIES[:, 3 * w:3 * w + 3]
            ours, variables = js.predict(model, variables, window, return_variables=True)
            np.testing.assert_allclose(ours, np.asarray(k(window)), rtol=1e-5, atol=1e-6)


def _explicit_state_reference(params, x, y, batch_size, epochs, reset_each_epoch):
    """SGD over batches in order; batch k + 1 starts from batch k's final (h, c), no gradient
    across the boundary; the layer is the stateless LSTM given `initial_state`."""
    lstm, dense = js.LSTM(4, return_state=True), nn.Dense(1)

    def loss_fn(p, xb, yb, states):
        out, h, c = jit_apply(lstm, {"params": p["lstm"]}, xb, initial_state=states)
        pred = dense.apply({"params": p["dense"]}, out)
        return jnp.mean((pred - yb) ** 2), (h, c)

    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    states = (jnp.zeros((batch_size, 4)), jnp.zeros((batch_size, 4)))
    losses = []
    for _ in range(epochs):
        if reset_each_epoch:
            states = jax.tree.map(jnp.zeros_like, states)
        total = 0.0
        for i in range(0, len(x), batch_size):
            (loss, states), g = grad(params, x[i:i + batch_size], y[i:i + batch_size], states)
            states = jax.lax.stop_gradient(states)
            params = jax.tree.map(lambda p, d: p - 0.1 * d, params, g)
            total += float(loss) * batch_size
        losses.append(total / len(x))
    return params, np.asarray(losses), states


@pytest.mark.parametrize("reset", [None, "epoch"])
def test_truncated_bptt_in_fit_equals_an_explicit_state_loop(reset):
    # 6 windows of 3 steps of 2 series: window w of series j is row j of batch w
    x = SERIES.reshape(2, 4, 3, 1).transpose(1, 0, 2, 3).reshape(8, 3, 1)
    y = np.roll(SERIES, -1, axis=1)[:, :, 0].reshape(2, 4, 3).transpose(1, 0, 2)[..., -1:]
    y = y.reshape(8, 1).astype(np.float32)
    model = js.Sequential((js.LSTM(4, stateful=True), nn.Dense(1)))
    state, history = js.fit(model, x, y, epochs=3, batch_size=2, shuffle=False,
                            optimizer=optax.sgd(0.1), reset_states=reset, verbose=0)
    init = js.training.create_train_state(model, optax.sgd(0.1), x,
                                          js.training.split_seed(0)[0], batch_size=2)
    params, losses, states = _explicit_state_reference(
        init.params, x, y, 2, 3, reset_each_epoch=reset == "epoch")
    np.testing.assert_allclose(history.loss, losses, rtol=1e-5)
    chex.assert_trees_all_close(state.params, params, rtol=1e-5, atol=1e-6)
    kept = state.model_state["rnn_state"]["lstm"]["states"]
    np.testing.assert_allclose(kept[0], states[0], rtol=1e-5, atol=1e-6)  # h after the run
    stateless = js.fit(js.Sequential((js.LSTM(4), nn.Dense(1))), x, y, epochs=3, batch_size=2,
                       shuffle=False, optimizer=optax.sgd(0.1), verbose=0)[1]
    assert not np.allclose(stateless.loss, history.loss)  # carrying the states mattered


def test_stateful_contracts():
    x = np.zeros((6, 3, 1), np.float32)
    y = np.zeros((6, 1), np.float32)
    model = js.Sequential((js.LSTM(2, stateful=True), nn.Dense(1)))
    with pytest.raises(ValueError, match="stateful layers, whose states carry .* shuffle=False"):
        js.fit(model, x, y, epochs=1, batch_size=2, verbose=0)
    with pytest.raises(ValueError, match="multiple of batch_size=4 .* to 4 or 8 samples"):
        js.fit(model, x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match="reset_states='epoch' needs a stateful layer"):
        js.fit(js.models.one_to_one(), x, y, epochs=1, reset_states="epoch", verbose=0)
    variables = jit_init(model, jax.random.PRNGKey(0), x[:2])
    with pytest.raises(ValueError, match=r"stateful=True\) keeps one state per sample for "
                                         r"batches of 2 .* got a batch of 3"):
        model.apply(variables, x[:3])

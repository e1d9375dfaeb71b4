"""Variable-length batches: masked loss, per-step weights, padded == unpadded training."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxseq as js
from jaxseq import problems, training

LENGTHS = (3, 5, 2, 4)


def _sequences(seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(size=(n, 2)).astype(np.float32) for n in LENGTHS]
    ys = [np.cumsum(x[:, :1], axis=0) / len(x) for x in xs]  # needs memory of the past
    return xs, ys


def _model():
    return js.Sequential((js.LSTM(4, return_sequences=True), js.TimeDistributed(nn.Dense(1))))


def _reference(model, params, xs, ys, epochs, tx):
    """Each sequence run unpadded; the loss is the mean over all real steps of all sequences,
    its gradient the sum of the per-sequence gradients of (sum of step losses) / total steps."""
    total = sum(len(x) for x in xs)

    def seq_loss(p, x, y):
        return jnp.sum(jnp.square(model.apply({"params": p}, x[None])[0] - y)) / total

    grad = jax.jit(jax.value_and_grad(seq_loss))
    opt_state = tx.init(params)
    losses = []
    for _ in range(epochs):
        loss, g = 0.0, jax.tree.map(jnp.zeros_like, params)
        for x, y in zip(xs, ys, strict=True):
            li, gi = grad(params, x, y)
            loss += float(li)
            g = jax.tree.map(jnp.add, g, gi)
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(loss)
    return params, np.array(losses)


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_padded_batch_trains_like_the_unpadded_sequences(padding):
    xs, ys = _sequences()
    x, mask = problems.pad_sequences(xs, padding=padding)
    y, mask_y = problems.pad_sequences(ys, padding=padding)
    np.testing.assert_array_equal(mask, mask_y)
    model, tx = _model(), optax.adam(1e-2)
    state, history = js.fit(model, x, y, mask=mask, epochs=4, batch_size=len(xs),
                            optimizer=tx, shuffle=False, verbose=0)
    init_key, _ = training.split_seed(0)
    params0 = model.init(init_key, x[:1])["params"]
    ref_params, ref_losses = _reference(model, params0, xs, ys, 4, tx)
    np.testing.assert_allclose(history.loss, ref_losses, rtol=1e-5)
    chex.assert_trees_all_close(state.params, ref_params, rtol=1e-5, atol=1e-6)


def test_padding_values_do_not_matter_when_masked():
    xs, ys = _sequences(1)
    x, mask = problems.pad_sequences(xs)
    y, _ = problems.pad_sequences(ys)
    x2, y2 = x.copy(), y.copy()
    x2[~mask], y2[~mask] = 123.0, -7.0  # garbage in the padding
    model = _model()
    a, ha = js.fit(model, x, y, mask=mask, epochs=3, batch_size=2, verbose=0)
    b, hb = js.fit(model, x2, y2, mask=mask, epochs=3, batch_size=2, verbose=0)
    # The layers select masked steps away (jnp.where: the padding never enters a state or an
    # output), and the loss weights them by exactly 0 (a finite error times 0 is 0, and so is
    # its gradient): the padding reaches no result, not even by rounding. Bitwise equal.
    chex.assert_trees_all_equal(a.params, b.params)
    np.testing.assert_array_equal(ha.loss, hb.loss)
    assert js.evaluate(model, a.params, x2, y2, mask=mask) == js.evaluate(
        model, a.params, x, y, mask=mask)
    np.testing.assert_array_equal(js.predict(model, a.params, x2, mask=mask),
                                  js.predict(model, a.params, x, mask=mask))


def test_evaluate_masked_and_per_step_weights_against_numpy():
    xs, ys = _sequences(2)
    x, mask = problems.pad_sequences(xs)
    y, _ = problems.pad_sequences(ys)
    model = _model()
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    pred = np.asarray(js.predict(model, params, x, mask=mask), np.float64)[..., 0]
    err = (pred - y[..., 0]) ** 2
    assert js.evaluate(model, params, x, y, mask=mask) == pytest.approx(err[mask].mean(),
                                                                         rel=1e-5)
    # Keras' "sum_over_batch_size": weights scale entries; the divisor counts entries
    # (unmasked ones with a mask), never sum(w)
    w = np.random.default_rng(0).uniform(size=mask.shape).astype(np.float32)
    want = np.sum(err * w * mask) / np.sum(mask)
    got = js.evaluate(model, params, x, y, mask=mask, sample_weight=w)
    assert got == pytest.approx(want, rel=1e-5)
    unmasked = js.evaluate(model, params, x, y, sample_weight=w)  # per-step weights alone
    pred_all = np.asarray(js.predict(model, params, x), np.float64)[..., 0]
    want = np.sum((pred_all - y[..., 0]) ** 2 * w) / w.size
    assert unmasked == pytest.approx(want, rel=1e-5)


def test_mask_contracts():
    xs, ys = _sequences()
    x, mask = problems.pad_sequences(xs)
    y, _ = problems.pad_sequences(ys)
    model = _model()
    with pytest.raises(ValueError, match=r"mask of shape \(batch, time\) = \(4, 5\); got \(4, 4\)"):
        js.fit(model, x, y, mask=mask[:, :4], epochs=1, verbose=0)
    with pytest.raises(TypeError, match="mask of dtype bool"):
        js.fit(model, x, y, mask=mask.astype(np.float32), epochs=1, verbose=0)
    with pytest.raises(TypeError, match="takes no mask argument"):
        js.fit(nn.Sequential([js.LSTM(2, return_sequences=True), nn.Dense(1)]), x, y,
               mask=mask, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"sample_weight of shape \(batch,\) = \(4,\) or "
                                         r"\(batch, time\) = \(4, 5\); got \(5, 4\)"):
        js.fit(model, x, y, sample_weight=np.ones((5, 4)), epochs=1, verbose=0)


def _padded(value):
    """(x, y, mask) for LENGTHS, the padding filled with `value` in x and y."""
    xs, ys = _sequences(1)
    x, mask = problems.pad_sequences(xs)
    y, _ = problems.pad_sequences(ys)
    x, y = x.copy(), y.copy()
    x[~mask] = value
    y[~mask] = value
    return x, y, mask


LAYERS = {
    "lstm": lambda **kw: js.LSTM(3, return_sequences=True, **kw),
    "gru": lambda **kw: js.GRU(3, return_sequences=True, **kw),
    "simple_rnn": lambda **kw: js.SimpleRNN(3, return_sequences=True, **kw),
    "lstm_backwards": lambda **kw: js.LSTM(3, return_sequences=True, go_backwards=True, **kw),
    "bidirectional_gru": lambda **kw: js.Bidirectional(js.GRU(3, return_sequences=True, **kw)),
}


@pytest.mark.parametrize("implementation", ["scan", "fused"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_nan_padding_gives_the_gradients_of_zero_padding(kind, implementation):
    # Keras 3 gives NaN gradients here (0 * NaN in the backward pass of a discarded step);
    # jaxseq selects the padding away before any arithmetic.
    layer = LAYERS[kind](implementation=implementation)
    x0, _, mask = _padded(0.0)
    params = layer.init(jax.random.PRNGKey(0), x0)["params"]

    @jax.jit
    def loss_and_grads(params, x):
        def loss(p, x):
            out = layer.apply({"params": p}, x, mask=mask)
            return jnp.sum(jnp.where(mask[..., None], out, 0.0) ** 2)

        return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

    want_loss, (want_p, want_x) = loss_and_grads(params, x0)
    for value in (np.nan, np.inf, -1e30):
        x, _, _ = _padded(value)
        got_loss, (got_p, got_x) = loss_and_grads(params, x)
        assert np.isfinite(float(got_loss))
        chex.assert_trees_all_equal(got_p, want_p)  # bitwise: the padding never enters
        np.testing.assert_array_equal(got_x, want_x)
        assert not np.any(np.asarray(got_x)[~mask])  # no gradient flows into the padding


def test_fit_accepts_nan_padding_and_trains_as_with_zero_padding():
    model = _model()
    kw = dict(epochs=3, batch_size=2, verbose=0, metrics=["mae"])
    x0, y0, mask = _padded(0.0)
    a, ha = js.fit(model, x0, y0, mask=mask, **kw)
    xn, yn, _ = _padded(np.nan)
    b, hb = js.fit(model, xn, yn, mask=mask, **kw)
    chex.assert_trees_all_equal(a.params, b.params)
    np.testing.assert_array_equal(ha.loss, hb.loss)
    np.testing.assert_array_equal(ha.mae, hb.mae)
    assert js.evaluate(model, b, xn, yn, mask=mask) == js.evaluate(model, a, x0, y0, mask=mask)
    xn[0, 0, 0] = np.nan  # a real step: refused up front
    with pytest.raises(ValueError, match="finite x; x has 1 NaN/Inf value\\(s\\) at unmasked"):
        js.fit(model, xn, yn, mask=mask, **kw)
    with pytest.raises(ValueError, match="finite x"):  # no mask: every NaN counts
        js.fit(model, _padded(np.nan)[0], y0, **kw)


def test_bfloat16_layers_initialise_and_fit_takes_bfloat16_data():
    x, y = problems.frame(problems.echo_sequence(5), "many_to_many")
    for layer in (js.LSTM(4, param_dtype=jnp.bfloat16), js.GRU(4, param_dtype=jnp.bfloat16),
                  js.SimpleRNN(4, param_dtype=jnp.bfloat16)):
        params = layer.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.bfloat16))["params"]
        assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
        rk = np.asarray(params["recurrent_kernel"], np.float32)  # (units, gates * units)
        # orthonormal rows, to bfloat16 rounding (drawn in float32, then cast)
        np.testing.assert_allclose(rk @ rk.T, np.eye(4), atol=2e-2)
    model = js.models.many_to_many()
    state, history = js.fit(model, jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16),
                            epochs=5, batch_size=1, verbose=0)
    assert np.all(np.isfinite(history.loss)) and history.loss[-1] < history.loss[0]

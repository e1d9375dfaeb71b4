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

"""`js.Dense`, `js.Dropout`, `js.Masking`: Keras' initialisers, names and masking semantics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq as js

RNG = np.random.default_rng(0)


def test_dense_has_keras_initialisers_layout_and_activation():
    layer = js.Dense(300, activation="relu")
    assert layer.units == 300
    params = layer.init(jax.random.PRNGKey(0), jnp.ones((2, 200)))["params"]
    assert set(params) == {"kernel", "bias"} and params["kernel"].shape == (200, 300)
    np.testing.assert_array_equal(params["bias"], 0.0)  # Keras: zeros
    limit = np.sqrt(6.0 / (200 + 300))  # glorot_uniform: U(-limit, limit)
    k = np.asarray(params["kernel"])
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.99 * limit
    assert np.std(k) == pytest.approx(limit / np.sqrt(3.0), rel=0.02)
    x = RNG.normal(size=(4, 200)).astype(np.float32)
    want = np.maximum(x @ k + np.asarray(params["bias"]), 0.0)
    np.testing.assert_allclose(layer.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)
    # the tutorial builders use it (Keras' init, so the same architecture starts alike)
    assert isinstance(js.models.many_to_many().layers[1].layer, js.Dense)


def test_masking_masks_steps_whose_features_all_equal_the_value():
    x = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    x[0, 2:] = 0.0  # two padded steps
    x[1, 1, 0] = 0.0  # one zero feature: not a padded step
    masking = js.Masking()
    np.testing.assert_array_equal(masking.compute_mask(x),
                                  [[True, True, False, False], [True, True, True, True]])
    nan = x.copy()
    nan[0, 2:] = np.nan
    m = js.Masking(mask_value=float("nan"))
    np.testing.assert_array_equal(m.compute_mask(nan), masking.compute_mask(x))
    out = m.apply({}, nan)
    assert np.all(np.isfinite(out)) and not np.any(out[0, 2:])  # selected, never NaN * 0
    with pytest.raises(ValueError, match=r"Masking expects x of shape \(batch, time, features\)"):
        masking.apply({}, x[:, 0])


def test_a_masking_layer_masks_the_recurrent_layers_and_the_loss():
    x = RNG.normal(size=(4, 5, 2)).astype(np.float32)
    y = np.cumsum(x[..., :1], axis=1).astype(np.float32)
    mask = np.ones((4, 5), bool)
    mask[0, 3:] = mask[2, 1:] = False
    padded_x, padded_y = x.copy(), y.copy()
    padded_x[~mask] = np.nan  # missing values marked NaN: masked by the layer, not the user
    padded_y[~mask] = np.nan
    inner = (js.LSTM(3, return_sequences=True), js.TimeDistributed(js.Dense(1)))
    with_layer = js.Sequential((js.Masking(mask_value=float("nan")), *inner))
    explicit = js.Sequential(inner)
    kw = dict(epochs=3, batch_size=2, verbose=0, shuffle=False)
    zero_x = np.where(mask[..., None], x, 0.0).astype(np.float32)
    zero_y = np.where(mask[..., None], y, 0.0).astype(np.float32)
    b, hb = js.fit(explicit, zero_x, zero_y, mask=mask, **kw)
    a, ha = js.fit(with_layer, padded_x, padded_y, **kw)  # NaN in x and y, no mask given
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ha.loss, hb.loss, rtol=1e-6)
    got = js.evaluate(with_layer, a, padded_x, padded_y)
    assert got == pytest.approx(js.evaluate(explicit, b, zero_x, zero_y, mask=mask), rel=1e-6)


def test_dropout_follows_deterministic_in_a_sequential():
    x = jnp.ones((8, 3, 4))
    model = js.Sequential((js.Dropout(0.5),))
    assert np.array_equal(model.apply({}, x), x)  # inference: identity
    out = model.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    assert set(np.unique(np.asarray(out))) == {0.0, 2.0}  # inverted dropout, rate 0.5

"""ConvLSTM1D / ConvLSTM2D against Keras 3's own layers (JAX backend), weights copied.

Keras broadcasts by rank promotion, so every Keras call runs under `_keras()` =
`jax.numpy_rank_promotion("allow")`; jaxseq runs under the suite's strict "raise".

Keras 3's scan path cannot mask ConvLSTM states (keras/src/backend/jax/rnn.py broadcasts a
(batch, 1) flag against (batch, *S', filters)), so masked cases compare with Keras'
`unroll=True` path, which expands the mask per sample. That path outputs zeros (not the initial
h) at leading masked steps; with zero initial states the two agree, and the initial-h case is
checked on its own below.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxseq as js  # noqa: E402
from jaxseq import conv_lstm  # noqa: E402

keras = pytest.importorskip("keras")
L = keras.layers

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "jax", reason="needs KERAS_BACKEND=jax"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy"),
]

ATOL = 1e-5
NAMES = ("kernel", "recurrent_kernel", "bias")
# Rows: all real, right padding, holes, left padding (the first steps masked).
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]], bool)


def _keras():
    return jax.numpy_rank_promotion("allow")


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _params(layer: nn.Module, x, seed: int = 1) -> dict:
    """Random params of the layer's shapes (nothing is run: shapes from eval_shape)."""
    shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(seed)
    return {n: jnp.asarray(rng.normal(scale=0.5, size=s.shape).astype(np.float32))
            for n, s in shapes.items()}


def _keras_layer(cls, x, params, **kw):
    """A built Keras layer holding `params` (zeros initializers: nothing drawn in vain)."""
    with _keras():
        layer = cls(kernel_initializer="zeros", recurrent_initializer="zeros", **kw)
        layer.build(np.shape(x))
        layer.set_weights([np.asarray(params[n]) for n in NAMES if n in params])
    return layer


def _run(layer, params, x, **kw):
    """layer.apply under jit (one compilation; eager scans compile per call)."""
    return jax.jit(lambda p, x: layer.apply({"params": p}, x, **kw))(params, x)


def _randomize(obj, seed: int) -> None:
    rng = np.random.default_rng(seed)
    obj.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                     for w in obj.get_weights()])


def _close(got, want, atol=ATOL):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == tuple(w.shape) and g.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=atol, rtol=1e-5)


CASES = {  # name: (jaxseq class, keras class, x shape (b, t, *S, c), kwargs)
    "2d_same_last": (js.ConvLSTM2D, L.ConvLSTM2D, (2, 3, 5, 4, 2),
                     dict(filters=3, kernel_size=3, padding="same")),
    "2d_valid_seq": (js.ConvLSTM2D, L.ConvLSTM2D, (3, 4, 6, 5, 1),
                     dict(filters=2, kernel_size=(3, 2), return_sequences=True)),
    "2d_same_back": (js.ConvLSTM2D, L.ConvLSTM2D, (2, 4, 4, 4, 3),
                     dict(filters=2, kernel_size=(1, 3), padding="same", go_backwards=True,
                          return_sequences=True)),
    "2d_strides": (js.ConvLSTM2D, L.ConvLSTM2D, (2, 3, 7, 6, 2),
                   dict(filters=2, kernel_size=3, strides=(2, 1), padding="same")),
    "1d_valid_last": (js.ConvLSTM1D, L.ConvLSTM1D, (3, 5, 7, 2),
                      dict(filters=4, kernel_size=3)),
    "1d_same_seq": (js.ConvLSTM1D, L.ConvLSTM1D, (2, 4, 6, 3),
                    dict(filters=3, kernel_size=2, padding="same", return_sequences=True)),
    "1d_back_dilated": (js.ConvLSTM1D, L.ConvLSTM1D, (2, 4, 8, 1),
                        dict(filters=2, kernel_size=3, dilation_rate=2, padding="valid",
                             go_backwards=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_keras(case):
    cls, kcls, shape, kw = CASES[case]
    x = _x(shape)
    layer = cls(return_state=True, **kw)
    params = _params(layer, x)
    want = _keras_layer(kcls, x, params, return_state=True, **kw)
    with _keras():
        want_out = want(x)
    plain = cls(**kw)  # return_state=False: the output alone

    @jax.jit
    def run(p, x):
        return layer.apply({"params": p}, x), plain.apply({"params": p}, x)

    got, got_plain = run(params, x)
    _close(got, want_out)
    _close([got_plain], [want_out[0]])
    assert want.count_params() == sum(p.size for p in params.values())
    assert {n: p.shape for n, p in params.items()} == {
        w.name: tuple(w.shape) for w in want.weights}


def test_initial_state_equals_keras():
    x = _x((2, 3, 5, 2))
    kw = dict(filters=3, kernel_size=3, padding="same", return_sequences=True)
    layer = js.ConvLSTM1D(return_state=True, **kw)
    params = _params(layer, x)
    h0, c0 = _x((2, 5, 3), 1), _x((2, 5, 3), 2)
    want = _keras_layer(L.ConvLSTM1D, x, params, return_state=True, **kw)
    with _keras():
        want_out = want(x, initial_state=[h0, c0])
    _close(_run(layer, params, x, initial_state=(h0, c0)), want_out)


@pytest.mark.parametrize("cls,kcls,shape,go_backwards", [
    (js.ConvLSTM2D, L.ConvLSTM2D, (4, 4, 3, 5, 2), False),
    (js.ConvLSTM1D, L.ConvLSTM1D, (4, 4, 6, 2), True),
])
def test_mask_equals_keras_unrolled(cls, kcls, shape, go_backwards):
    x = _x(shape)
    kw = dict(filters=2, kernel_size=3, padding="same", return_sequences=True,
              go_backwards=go_backwards)
    layer = cls(return_state=True, **kw)
    params = _params(layer, x)
    want = _keras_layer(kcls, x, params, return_state=True, unroll=True, **kw)
    with _keras():
        want_out = want(x, mask=MASK)
    x_padded = np.where(MASK.reshape(MASK.shape + (1,) * (x.ndim - 2)), x, np.nan)
    last = cls(return_state=True, **{**kw, "return_sequences": False})

    @jax.jit
    def run(p, x, mask):
        return layer.apply({"params": p}, x, mask=mask), last.apply({"params": p}, x, mask=mask)

    got, got_last = run(params, x_padded, MASK)  # the NaN padding never reaches the math
    _close(got, want_out)
    _close(got_last, [want_out[1], *want_out[1:]])


def test_masked_steps_keep_states_and_repeat_initial_h():
    # Keras' scan semantics (output_tm1 = states[0]): a leading masked step outputs the
    # initial h; a fully masked row returns the initial states.
    x = _x((2, 3, 4, 2))
    mask = np.array([[0, 1, 1], [0, 0, 0]], bool)
    layer = js.ConvLSTM1D(2, 3, padding="same", return_sequences=True, return_state=True)
    params = _params(layer, x)
    h0, c0 = _x((2, 4, 2), 3), _x((2, 4, 2), 4)
    ys, h, c = _run(layer, params, x, mask=mask, initial_state=(h0, c0))
    np.testing.assert_array_equal(ys[:, 0], h0)
    np.testing.assert_array_equal(ys[1], np.broadcast_to(h0[1], ys[1].shape))
    np.testing.assert_array_equal(h[1], h0[1])
    np.testing.assert_array_equal(c[1], c0[1])
    real = _run(layer, params, x[:1, 1:], initial_state=(h0[:1], c0[:1]))
    _close(list(real), [ys[:1, 1:], h[:1], c[:1]])
    # zero_output_for_mask (what Bidirectional sets with return_sequences): zeros there instead
    zeros = layer.clone(zero_output_for_mask=True)
    zys, zh, zc = _run(zeros, params, x, mask=mask, initial_state=(h0, c0))
    np.testing.assert_array_equal(zys, np.where(mask[:, :, None, None], ys, 0.0))
    np.testing.assert_array_equal(zh, h)


def test_dropout_equals_keras_given_the_same_masks(monkeypatch):
    # Keras: four masks of the step input's shape and four of h's, one per gate (i, f, c, o),
    # drawn once per call. Hand both layers the same masks.
    x = _x((2, 3, 5, 4, 2))
    kw = dict(filters=2, kernel_size=3, padding="same", return_sequences=True,
              dropout=0.4, recurrent_dropout=0.3)
    layer = js.ConvLSTM2D(**kw)
    params = _params(layer, x)
    rng = np.random.default_rng(5)
    xmasks = (rng.random((4, 2, 5, 4, 2)) > 0.4).astype(np.float32) / 0.6
    rmasks = (rng.random((4, 2, 5, 4, 2)) > 0.3).astype(np.float32) / 0.7
    given = {0.4: xmasks, 0.3: rmasks}
    monkeypatch.setattr(conv_lstm, "gate_dropout_masks",
                        lambda module, rate, shape, dtype: jnp.asarray(given[rate]))
    got = jax.jit(lambda p, x: layer.apply({"params": p}, x, deterministic=False, rngs={
        "dropout": jax.random.PRNGKey(0)}))(params, x)
    want = _keras_layer(L.ConvLSTM2D, x, params, **kw)
    with _keras():
        want.cell._dropout_mask = [jnp.asarray(m) for m in xmasks]
        want.cell._recurrent_dropout_mask = [jnp.asarray(m) for m in rmasks]
        want_out = want(x, training=True)
    _close([got], [want_out])
    inference = _run(layer, params, x)
    with _keras():
        _close([inference], [want(x, training=False)])


def test_dropout_draws_one_inverted_mask_per_gate():
    layer = js.ConvLSTM1D(3, 2, dropout=0.25, recurrent_dropout=0.5)
    x = _x((8, 3, 16, 4))
    params = _params(layer, x)
    draw = nn.apply(lambda m: conv_lstm.gate_dropout_masks(m, 0.25, (8, 16, 4), jnp.float32),
                    layer)

    @jax.jit  # one compilation for both (threefry compiles slowly on CPU)
    def train(p, x, key):
        rngs = {"dropout": key}
        return (layer.apply({"params": p}, x, deterministic=False, rngs=rngs),
                draw({"params": p}, rngs=rngs))

    (a, masks), (b, _), (other, _) = (
        train(params, x, jax.random.PRNGKey(k)) for k in (2, 2, 3))
    assert masks.shape == (4, 8, 16, 4) and masks.dtype == jnp.float32
    np.testing.assert_allclose(np.unique(np.asarray(masks)), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(float(np.mean(np.asarray(masks) == 0)) - 0.25) < 0.05
    assert not np.array_equal(masks[0], masks[1])  # one mask per gate
    np.testing.assert_array_equal(a, b)  # the same rng, the same masks
    assert not np.allclose(a, other)
    assert not np.allclose(a, _run(layer, params, x))


def test_initializers_are_keras():
    l2, l1 = js.ConvLSTM2D(4, 3), js.ConvLSTM1D(4, 3)
    p, p1 = jax.jit(lambda k: (l2.init(k, jnp.zeros((1, 1, 6, 6, 2)))["params"],
                               l1.init(k, jnp.zeros((1, 1, 6, 2)))["params"]))(
        jax.random.PRNGKey(0))
    assert p["kernel"].shape == (3, 3, 2, 16) and p["recurrent_kernel"].shape == (3, 3, 4, 16)
    np.testing.assert_array_equal(p["bias"], np.repeat([0.0, 1.0, 0.0, 0.0], 4))
    w = np.asarray(p["recurrent_kernel"]).reshape(-1, 16)  # (36, 16): orthonormal columns
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-5)
    limit = np.sqrt(6 / (9 * 2 + 9 * 16))  # glorot_uniform with the receptive field
    assert np.abs(p["kernel"]).max() <= limit and np.abs(p["kernel"]).max() > 0.8 * limit
    r = np.asarray(p1["recurrent_kernel"]).reshape(-1, 16)  # (12, 16): orthonormal rows
    np.testing.assert_allclose(r @ r.T, np.eye(12), atol=1e-5)


def test_interop_round_trip():
    x = _x((2, 3, 6, 5, 2))
    with _keras():
        klayer = L.ConvLSTM2D(3, (3, 2), padding="same", return_sequences=True,
                              kernel_initializer="zeros", recurrent_initializer="zeros")
        klayer.build(x.shape)
        _randomize(klayer, 3)
        want = klayer(x)
    params = js.interop.from_keras(klayer)
    module, same = js.interop.jaxseq_model_from_keras(klayer)
    assert isinstance(module, js.ConvLSTM2D) and module.kernel_size == (3, 2)
    _close([_run(module, same, x)], [want])
    moved = jax.tree.map(lambda a: a + 1.0, params)
    with _keras():
        js.interop.to_keras(moved, klayer)
    back = js.interop.from_keras(klayer)
    for n in NAMES:
        np.testing.assert_array_equal(back[n], moved[n])
    with pytest.raises(ValueError, match="recurrent_kernel"):
        js.interop.to_keras({**moved, "recurrent_kernel": moved["kernel"]}, klayer)


def test_keras_sequential_weights_file(tmp_path):
    x = _x((2, 3, 6, 2))
    with _keras():
        kmodel = keras.Sequential([keras.Input((3, 6, 2)),
                                   L.ConvLSTM1D(2, 3, return_sequences=True,
                                                kernel_initializer="zeros",
                                                recurrent_initializer="zeros"),
                                   L.TimeDistributed(L.Dense(1))])
        _randomize(kmodel, 4)
        want = kmodel(x)
        kmodel.save_weights(tmp_path / "m.weights.h5")
    model, params = js.interop.jaxseq_model_from_keras(kmodel)
    assert set(params) == {"conv_lstm1d", "time_distributed"}
    _close([_run(model, params, x)], [want])
    loaded = js.interop.load_keras_weights(tmp_path / "m.weights.h5", model, x)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bidirectional_equals_keras():
    x = _x((2, 3, 5, 2))
    kw = dict(filters=2, kernel_size=3, padding="same", return_sequences=True)
    layer = js.Bidirectional(js.ConvLSTM1D(**kw))
    params = {side: _params(js.ConvLSTM1D(**kw), x, seed)
              for seed, side in enumerate(("forward_layer", "backward_layer"))}
    with _keras():
        klayer = L.Bidirectional(L.ConvLSTM1D(**kw))
        klayer(x)
        js.interop.to_keras(params, klayer)
        want = klayer(x)
    got = _run(layer, params, x)
    assert got.shape == (2, 3, 5, 4)
    _close([got], [want])


def test_sequential_fit_and_saving(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 4, 4, 1)).astype(np.float32)
    y = np.roll(x, 1, axis=3)
    model = js.Sequential((js.ConvLSTM2D(2, 3, padding="same", return_sequences=True),
                           js.Dense(1)))
    state, history = js.fit(model, x, y, epochs=3, batch_size=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # kernel 3*3*1*8 + recurrent_kernel 3*3*2*8 + bias 8, then Dense 2 + 1 (Keras: 224 + 3)
    assert js.summary_rows(model, x)[1] == 72 + 144 + 8 + 3
    path = tmp_path / "model.msgpack"
    js.save_model(path, model, state)
    loaded, variables = js.load_model(path)
    np.testing.assert_array_equal(_run(loaded, variables["params"], x),
                                  _run(model, state.params, x))


def test_errors_before_tracing():
    layer = js.ConvLSTM2D(2, 3)
    x = jnp.zeros((2, 3, 5, 5, 1))
    params = {"params": _params(layer, x)}
    with pytest.raises(ValueError, match=r"\(batch, time, rows, cols, channels\).*\(2, 3, 5, 5\)"):
        layer.apply(params, x[..., 0])
    with pytest.raises(ValueError, match=r"built for 1 input channels, but x has 3"):
        layer.apply(params, jnp.zeros((2, 3, 5, 5, 3)))
    with pytest.raises(TypeError, match="floating dtype"):
        layer.apply(params, jnp.zeros((2, 3, 5, 5, 1), jnp.int32))
    with pytest.raises(ValueError, match=r"mask of shape \(batch, time\) = \(2, 3\)"):
        layer.apply(params, x, mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"initial_state h of shape .* = \(2, 3, 3, 2\)"):
        layer.apply(params, x, initial_state=(jnp.zeros((2, 5, 5, 2)),) * 2)
    with pytest.raises(ValueError, match="leaves no output"):
        js.ConvLSTM2D(2, 7).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="padding"):
        js.ConvLSTM1D(2, 3, padding="causal").init(jax.random.PRNGKey(0), x[:, :, 0])
    with pytest.raises(ValueError, match="strides=1 or dilation_rate=1"):
        js.ConvLSTM1D(2, 3, strides=2, dilation_rate=2).init(jax.random.PRNGKey(0), x[:, :, 0])
    with pytest.raises(ValueError, match="kernel_size"):
        js.ConvLSTM2D(2, (3, 3, 3)).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=r"\(batch, time, rows, channels\)"):
        js.ConvLSTM1D(2, 3).init(jax.random.PRNGKey(0), x)


def test_public_names():
    assert {"ConvLSTM1D", "ConvLSTM2D"} <= set(js.__all__)
    assert js.ConvLSTM2D is conv_lstm.ConvLSTM2D

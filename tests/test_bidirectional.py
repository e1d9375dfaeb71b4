"""`Bidirectional(layer, backward_layer=...)` against Keras 3 (JAX backend) given the same
weights: different layer kinds and sizes on the two sides, masks, initial states, every
merge mode; Keras' configuration checks; saving, summary and Keras import."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tests_common import jit_apply, jit_init

import jaxseq as js  # noqa: E402
from jaxseq.interop import from_keras, jaxseq_model_from_keras  # noqa: E402

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "jax", reason="needs KERAS_BACKEND=jax"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy"),
]

B, T, F = 4, 6, 3
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, T, F)).astype(np.float32)
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 1, 0, 1, 1, 0],
                 [0, 0, 1, 1, 1, 1]], dtype=bool)
L = keras.layers


def _keras_pair(fw, bw, merge_mode):
    """A built Keras Bidirectional with random weights (biases included)."""
    with jax.numpy_rank_promotion("allow"):
        layer = L.Bidirectional(fw, backward_layer=bw, merge_mode=merge_mode)
        layer.build(X.shape)
        rng = np.random.default_rng(1)
        layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                           for w in layer.get_weights()])
    return layer


def _flat(out):
    return [np.asarray(a) for a in jax.tree.leaves(out)]


@pytest.mark.parametrize("merge_mode", ["concat", None])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("use_mask", [False, True])
def test_lstm_forward_simple_rnn_backward_equals_keras(merge_mode, return_sequences, use_mask):
    kw = dict(return_sequences=return_sequences, return_state=True)
    klayer = _keras_pair(L.LSTM(3, **kw), L.SimpleRNN(4, go_backwards=True, **kw), merge_mode)
    mask = MASK if use_mask else None
    with jax.numpy_rank_promotion("allow"):
        want = klayer(X, mask=mask)
    layer = js.Bidirectional(js.LSTM(3, **kw), merge_mode=merge_mode,
                             backward_layer=js.SimpleRNN(4, go_backwards=True, **kw))
    params = from_keras(klayer)
    got = jit_apply(layer, {"params": params}, X, mask=mask)
    want, got = _flat(want), _flat(got)
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want, strict=True):  # float32, same operations: rounding only
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul", None])
def test_initial_state_and_backwards_forward_layer_equal_keras(merge_mode):
    # GRU(4) forward running backwards, SimpleRNN(4) backward running forwards: Keras still
    # flips the backward layer's sequence; one state per side, so Keras' half split applies.
    kw = dict(return_sequences=True, return_state=True)
    klayer = _keras_pair(L.GRU(4, go_backwards=True, **kw), L.SimpleRNN(4, **kw), merge_mode)
    h0 = [RNG.normal(scale=0.5, size=(B, 4)).astype(np.float32) for _ in range(2)]
    with jax.numpy_rank_promotion("allow"):
        want = klayer(X, mask=MASK, initial_state=h0)
    layer = js.Bidirectional(js.GRU(4, go_backwards=True, **kw), merge_mode=merge_mode,
                             backward_layer=js.SimpleRNN(4, **kw))
    got = jit_apply(layer, {"params": from_keras(klayer)}, X, mask=MASK,
                      initial_state=tuple(h0))
    for g, w in zip(_flat(got), _flat(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_initial_state_is_split_by_each_layers_state_count():
    # LSTM forward (h, c), SimpleRNN backward (h): three arrays, the first two forward.
    layer = js.Bidirectional(js.LSTM(3, return_state=True),
                             backward_layer=js.SimpleRNN(4, go_backwards=True,
                                                         return_state=True))
    params = jit_init(layer, jax.random.key(0), X)["params"]
    h, c, g = (RNG.normal(size=(B, u)).astype(np.float32) for u in (3, 3, 4))
    out, *states = jit_apply(layer, {"params": params}, X, initial_state=(h, c, g))
    fw = jit_apply(js.LSTM(3, return_state=True), {"params": params["forward_layer"]}, X,
                                             initial_state=(h, c))
    bw = jit_apply(js.SimpleRNN(4, go_backwards=True, return_state=True),
        {"params": params["backward_layer"]}, X, initial_state=g)
    np.testing.assert_array_equal(out, np.concatenate([fw[0], bw[0]], axis=-1))
    for s, w in zip(states, [*fw[1:], *bw[1:]], strict=True):
        np.testing.assert_array_equal(s, w)
    wrong = "3 arrays \\(forward states then backward states, 2 \\+ 1\\)"
    with pytest.raises(ValueError, match=wrong):
        layer.apply({"params": params}, X, initial_state=(h, c))


@pytest.mark.parametrize("backward, error, words", [
    (js.SimpleRNN(4), ValueError, "different `go_backwards`"),
    (js.SimpleRNN(4, go_backwards=True, return_sequences=True), ValueError,
     'attribute "return_sequences"'),
    (js.SimpleRNN(4, go_backwards=True, return_state=True), ValueError,
     'attribute "return_state"'),
    (js.SimpleRNN(4, go_backwards=True, stateful=True), ValueError, 'attribute "stateful"'),
    (js.Dense(4), TypeError, "backward_layer"),
])
def test_keras_checks_on_the_backward_layer(backward, error, words):
    layer = js.Bidirectional(js.LSTM(3), backward_layer=backward)
    with pytest.raises(error, match=words):
        layer.init(jax.random.key(0), X)


def test_keras_refuses_what_jaxseq_refuses():
    # the same pairs, refused by Keras itself with the messages jaxseq repeats
    with pytest.raises(ValueError, match="different `go_backwards`"):
        L.Bidirectional(L.LSTM(3), backward_layer=L.SimpleRNN(4))
    with pytest.raises(ValueError, match='attribute "return_sequences"'):
        L.Bidirectional(L.LSTM(3), backward_layer=L.SimpleRNN(4, go_backwards=True,
                                                              return_sequences=True))


def test_merge_of_different_sizes_needs_concat():
    layer = js.Bidirectional(js.LSTM(3), merge_mode="sum",
                             backward_layer=js.SimpleRNN(4, go_backwards=True))
    with pytest.raises(ValueError, match="merge_mode='sum'.*\\(4, 3\\).*\\(4, 4\\)"):
        layer.init(jax.random.key(0), X)


def _model():
    return js.Sequential((
        js.Masking(),
        js.Bidirectional(js.LSTM(3, return_sequences=True),
                         backward_layer=js.SimpleRNN(4, go_backwards=True,
                                                     return_sequences=True)),
        js.TimeDistributed(js.Dense(1))))


def test_save_load_round_trip_and_summary(tmp_path):
    model = _model()
    variables = jit_init(model, jax.random.key(2), X)
    x = X.copy()
    x[1, 4:] = 0.0  # masked by Masking: the backward layer's zero_output_for_mask matters
    want = np.asarray(js.predict(model, variables, x))
    js.save_model(tmp_path / "m.jaxseq", model, variables)
    again, loaded = js.load_model(tmp_path / "m.jaxseq")
    assert again == model
    np.testing.assert_array_equal(js.predict(again, loaded, x), want)
    text = js.summary(model, X)
    # LSTM(3): 4*3*(3+3+1) = 84; SimpleRNN(4): 4*(3+4+1) = 32; Dense(1) on 7: 8
    assert "(None, 6, 7)" in text and "116" in text and "Total params: 124" in text


def test_masked_steps_output_zeros_with_return_sequences_as_keras():
    kw = dict(return_sequences=True)
    klayer = _keras_pair(L.LSTM(3, **kw), L.SimpleRNN(4, go_backwards=True, **kw), "concat")
    with jax.numpy_rank_promotion("allow"):
        want = np.asarray(klayer(X, mask=MASK))
    model, params = jaxseq_model_from_keras(klayer)
    assert model.backward_layer is not None and model.backward_layer.zero_output_for_mask
    got = np.asarray(jit_apply(model, {"params": params}, X, mask=MASK))
    assert np.all(got[~MASK] == 0) and np.all(want[~MASK] == 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a Keras Bidirectional without backward_layer imports as the default copy
    plain = _keras_pair(L.LSTM(3), None, "concat")
    assert jaxseq_model_from_keras(plain)[0].backward_layer is None

"""Numerical parity with real Keras 3 layers (JAX backend), weights copied from Keras.

Every case builds the Keras layer once (cached), gives it random weights (biases included, so
the bias layout is exercised), copies `get_weights()` into jaxseq's params and compares outputs
and states in float32 with rtol=1e-5, atol=1e-6.

Keras itself broadcasts biases by rank promotion, so every Keras call runs under
`jax.numpy_rank_promotion("allow")`; jaxseq runs under the suite's strict "raise" setting.

A Keras layer's `return_state` only changes what it returns (`RNN.call`, `Bidirectional.call`),
so the Keras reference is computed once with `return_state=True` and the `return_state=False`
expectation is its output part; the jaxseq layer is built with each setting.
"""

from __future__ import annotations

import functools
import os
import zlib

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxseq  # noqa: E402

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "jax", reason="Keras parity tests need KERAS_BACKEND=jax"
    ),
    # Keras' own Variable.__array__ (get_weights) under NumPy 2; not ours.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy"),
]

RTOL, ATOL = 1e-5, 1e-6
B, T, F, U = 5, 6, 3, 4

# Rows: no padding, right padding, holes in the middle, fully masked, left padding (the first
# steps masked, so the output there is the initial h).
MASK = np.array(
    [
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0],
        [1, 0, 1, 0, 0, 1],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1],
    ],
    dtype=bool,
)
_DATA_RNG = np.random.default_rng(0)
X = _DATA_RNG.normal(size=(B, T, F)).astype(np.float32)
H0 = [_DATA_RNG.normal(scale=0.5, size=(B, U)).astype(np.float32) for _ in range(4)]

# scenario -> (mask?, initial_state?). Keras' scan has one branch without a mask and one with;
# the masked branch is run with random initial states, so that the leading masked steps of the
# left-padded row must repeat the initial h and the fully masked row must return its initial
# states.
SCENARIOS = {
    "plain": (False, False),
    "mask_init": (True, True),
}

KINDS = {
    # name: (keras class, jaxseq class, extra kwargs, number of states)
    "lstm": (keras.layers.LSTM, jaxseq.LSTM, {}, 2),
    "gru": (keras.layers.GRU, jaxseq.GRU, {}, 1),
    "gru_reset_before": (keras.layers.GRU, jaxseq.GRU, {"reset_after": False}, 1),
    "simple_rnn": (keras.layers.SimpleRNN, jaxseq.SimpleRNN, {}, 1),
}


def _keras_ctx():
    return jax.numpy_rank_promotion("allow")


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode())


def _randomize(layer, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in layer.get_weights()]
    )


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _assert_close(got, want):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves), (len(got_leaves), len(want_leaves))
    for i, (g, w) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, (i, g.shape, w.shape)
        assert g.dtype == np.float32, (i, g.dtype)
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"leaf {i}")


def keras_params(layer) -> dict:
    """jaxseq params from a built Keras layer (Keras weight order and layout)."""
    if isinstance(layer, keras.layers.Bidirectional):
        return {
            "forward_layer": keras_params(layer.forward_layer),
            "backward_layer": keras_params(layer.backward_layer),
        }
    if isinstance(layer, keras.layers.TimeDistributed):
        return {"layer": keras_params(layer.layer)}
    w = [np.asarray(a) for a in layer.get_weights()]
    if isinstance(layer, keras.layers.Dense):
        return dict(zip(("kernel", "bias"), w, strict=True))
    return dict(zip(("kernel", "recurrent_kernel", "bias")[: len(w)], w, strict=True))


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(np.shape(a)), tree)


def _init_shapes(module, x):
    """Parameter shapes of `module.init` on `x`, without compiling anything."""
    params = jax.eval_shape(module.init, jax.random.key(0), jnp.asarray(x))["params"]
    return _shapes(params)


def _count(params) -> int:
    return sum(int(np.size(a)) for a in jax.tree.leaves(params))


def _inputs(scenario: str, n_states: int):
    use_mask, use_init = SCENARIOS[scenario]
    mask = MASK if use_mask else None
    init = list(H0[:n_states]) if use_init else None
    return mask, init


def _jax_state(init, n_states):
    if init is None:
        return None
    return tuple(init) if n_states > 1 else init[0]


# --------------------------------------------------------------------------------------------
# LSTM / GRU / SimpleRNN
# --------------------------------------------------------------------------------------------


@functools.cache
def _keras_recurrent(kind: str, return_sequences: bool, go_backwards: bool):
    kcls, _, kw, _ = KINDS[kind]
    with _keras_ctx():
        layer = kcls(
            U, return_sequences=return_sequences, return_state=True, go_backwards=go_backwards,
            **kw,
        )
        layer.build(X.shape)  # builds the weights without a forward pass
        _randomize(layer, _seed(kind, return_sequences, go_backwards))
    return layer


@functools.cache
def _keras_recurrent_out(kind: str, return_sequences: bool, go_backwards: bool, scenario: str):
    layer = _keras_recurrent(kind, return_sequences, go_backwards)
    mask, init = _inputs(scenario, KINDS[kind][3])
    with _keras_ctx():  # one compiled program (Keras' layer call, eagerly, compiles per op)
        out = jax.jit(lambda x, m, s: layer(x, mask=m, initial_state=s))(X, mask, init)
    return _np(tuple(out))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_param_layout_matches_keras(kind):
    _, jcls, kw, _ = KINDS[kind]
    klayer = _keras_recurrent(kind, True, False)
    assert _init_shapes(jcls(U, **kw), X) == _shapes(keras_params(klayer))


def _recurrent_case(kind, return_sequences, return_state, go_backwards, scenario):
    _, jcls, kw, n_states = KINDS[kind]
    want = _keras_recurrent_out(kind, return_sequences, go_backwards, scenario)
    params = keras_params(_keras_recurrent(kind, return_sequences, go_backwards))
    mask, init = _inputs(scenario, n_states)
    layer = jcls(
        U, return_sequences=return_sequences, return_state=return_state,
        go_backwards=go_backwards, **kw,
    )
    got = layer.apply(
        {"params": params}, X, mask=mask, initial_state=_jax_state(init, n_states)
    )
    if return_state:
        assert isinstance(got, tuple) and len(got) == 1 + n_states
        _assert_close(got, want)
    else:
        _assert_close(got, want[0])


@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("return_state", [False, True], ids=["out", "state"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_recurrent_matches_keras(kind, return_sequences, return_state, go_backwards):
    """Masked (MASK's five rows) with random initial states."""
    _recurrent_case(kind, return_sequences, return_state, go_backwards, "mask_init")


@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_recurrent_without_mask_matches_keras(kind, return_sequences, go_backwards):
    """Keras' mask-free scan branch, zero initial states (initial_state=None)."""
    _recurrent_case(kind, return_sequences, True, go_backwards, "plain")


@pytest.mark.parametrize("go_backwards", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("kind", ["gru", "lstm", "simple_rnn"])
def test_scan_implementation_matches_keras(kind, return_sequences, go_backwards):
    # The default ("auto") takes jaxseq's fused path where it supports the cell (all kinds but
    # GRU reset_after=False); this runs the nn.scan reference path on the same cases.
    _, jcls, kw, n_states = KINDS[kind]
    want = _keras_recurrent_out(kind, return_sequences, go_backwards, "mask_init")
    params = keras_params(_keras_recurrent(kind, return_sequences, go_backwards))
    layer = jcls(
        U, return_sequences=return_sequences, return_state=True, go_backwards=go_backwards,
        implementation="scan", **kw,
    )
    got = layer.apply(
        {"params": params}, X, mask=MASK, initial_state=_jax_state(H0[:n_states], n_states)
    )
    _assert_close(got, want)


@pytest.mark.parametrize("implementation", ["auto", "scan"])
@pytest.mark.parametrize("unroll", [True, 2])
def test_unrolled_lstm_matches_keras_scan(unroll, implementation):
    # jaxseq's `unroll` only unrolls the loop; the semantics stay those of Keras' default
    # (rolled, lax.scan) path. Keras' own unroll=True path is not compared: on masked steps
    # before the first real one it outputs zeros instead of the initial h (its Python loop
    # starts from `prev_output = zeros`), and it ignores zero_output_for_mask.
    want = _keras_recurrent_out("lstm", True, True, "mask_init")
    params = keras_params(_keras_recurrent("lstm", True, True))
    layer = jaxseq.LSTM(U, return_sequences=True, return_state=True, go_backwards=True,
                        unroll=unroll, implementation=implementation)
    got = layer.apply({"params": params}, X, mask=MASK, initial_state=tuple(H0[:2]))
    _assert_close(got, want)


# --------------------------------------------------------------------------------------------
# Bidirectional
# --------------------------------------------------------------------------------------------

MERGE_MODES = ["concat", "sum", "mul", "ave", None]


@functools.cache
def _keras_bidir(kind: str, merge_mode, return_sequences: bool, go_backwards: bool):
    kcls, _, kw, _ = KINDS[kind]
    with _keras_ctx():
        make = functools.partial(kcls, U, return_sequences=return_sequences, return_state=True,
                                 **kw)
        if go_backwards:
            # Keras 3 refuses Bidirectional(layer with go_backwards=True) unless the backward
            # layer is given (see test_keras_rejects_bidirectional_of_backwards_layer); this
            # explicit pair is what jaxseq builds from `layer`.
            layer = keras.layers.Bidirectional(
                make(go_backwards=True), backward_layer=make(go_backwards=False),
                merge_mode=merge_mode,
            )
        else:
            layer = keras.layers.Bidirectional(make(), merge_mode=merge_mode)
        layer.build(X.shape)
        _randomize(layer, _seed("bidir", kind, merge_mode, return_sequences, go_backwards))
    return layer


@functools.cache
def _keras_bidir_out(kind, merge_mode, return_sequences, go_backwards, scenario):
    layer = _keras_bidir(kind, merge_mode, return_sequences, go_backwards)
    mask, init = _inputs(scenario, 2 * KINDS[kind][3])
    with _keras_ctx():  # one compiled program (Keras' layer call, eagerly, compiles per op)
        out = jax.jit(lambda x, m, s: layer(x, mask=m, initial_state=s))(X, mask, init)
    return _np(tuple(out))


def _bidir_case(kind, merge_mode, return_sequences, return_state, go_backwards, scenario):
    """(jaxseq output, Keras output for the same `return_state`, number of states per side)."""
    _, jcls, kw, n_states = KINDS[kind]
    want = _keras_bidir_out(kind, merge_mode, return_sequences, go_backwards, scenario)
    klayer = _keras_bidir(kind, merge_mode, return_sequences, go_backwards)
    params = keras_params(klayer)
    mask, init = _inputs(scenario, 2 * n_states)
    layer = jaxseq.Bidirectional(
        jcls(U, return_sequences=return_sequences, return_state=return_state,
             go_backwards=go_backwards, **kw),
        merge_mode=merge_mode,
    )
    assert _init_shapes(layer, X) == _shapes(params)
    got = layer.apply(
        {"params": params}, X, mask=mask, initial_state=None if init is None else tuple(init)
    )
    if not return_state:  # Keras (return_state=True): (y, y_rev, *states) or (merged, *states)
        want = want[:2] if merge_mode is None else want[0]
    return got, want, n_states


_BIDIR_CASES = [  # (merge_mode, return_sequences, return_state)
    *[(m, rs, True) for m in MERGE_MODES for rs in (False, True)],
    *[(m, True, False) for m in MERGE_MODES],
]


@pytest.mark.parametrize(
    "merge_mode, return_sequences, return_state",
    _BIDIR_CASES,
    ids=[f"{m}-{'seq' if rs else 'last'}-{'state' if st else 'out'}" for m, rs, st in _BIDIR_CASES],
)
def test_bidirectional_lstm_matches_keras(merge_mode, return_sequences, return_state):
    got, want, _ = _bidir_case("lstm", merge_mode, return_sequences, return_state, False,
                               "mask_init")
    if merge_mode is None and not return_state:
        assert len(got) == len(want) == 2  # [forward, backward]
    # Leaves in order: outputs (merged, or forward then backward), forward states, backward
    # states. The nesting of the unmerged pair with return_state is checked separately below.
    _assert_close(got, want)


@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
def test_bidirectional_lstm_without_mask_matches_keras(return_sequences):
    got, want, _ = _bidir_case("lstm", "concat", return_sequences, True, False, "plain")
    _assert_close(got, want)


@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("kind", ["gru", "gru_reset_before", "simple_rnn"])
def test_bidirectional_other_cells_match_keras(kind, return_sequences):
    got, want, _ = _bidir_case(kind, "concat", return_sequences, True, False, "mask_init")
    _assert_close(got, want)


@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
def test_bidirectional_of_backwards_layer_matches_keras(return_sequences):
    # jaxseq: forward_layer keeps go_backwards=True, backward_layer gets False; Keras needs the
    # backward layer spelled out for this (see _keras_bidir), then computes the same thing.
    got, want, _ = _bidir_case("lstm", "concat", return_sequences, True, True, "mask_init")
    _assert_close(got, want)


def test_keras_rejects_bidirectional_of_backwards_layer():
    # Documents a deliberate difference: Keras 3 copies `layer` with go_backwards=True for the
    # backward direction and then rejects two backwards layers; jaxseq flips go_backwards.
    with _keras_ctx(), pytest.raises(ValueError, match="go_backwards"):
        keras.layers.Bidirectional(keras.layers.LSTM(U, go_backwards=True))


def test_bidirectional_merge_none_return_state_structure_matches_keras():
    got, want, n_states = _bidir_case("lstm", None, True, True, False, "mask_init")
    assert len(want) == 2 + 2 * n_states
    assert len(got) == len(want)


# --------------------------------------------------------------------------------------------
# TimeDistributed, RepeatVector
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "out_features, shape", [(3, (B, T, F)), (1, (B, T, 2, F))], ids=["rank3", "rank4"]
)
def test_time_distributed_dense_matches_keras(out_features, shape):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    with _keras_ctx():
        klayer = keras.layers.TimeDistributed(keras.layers.Dense(out_features))
        klayer.build(x.shape)
        _randomize(klayer, _seed("td", out_features, shape))
        want = np.asarray(klayer(x))
    params = keras_params(klayer)
    layer = jaxseq.TimeDistributed(nn.Dense(out_features))
    assert _init_shapes(layer, x) == _shapes(params)
    got = layer.apply({"params": params}, x)
    _assert_close(got, want)


@pytest.mark.parametrize("n", [1, 4])
def test_repeat_vector_matches_keras(n):
    x = np.random.default_rng(2).normal(size=(B, F)).astype(np.float32)
    with _keras_ctx():
        want = np.asarray(keras.layers.RepeatVector(n)(x))
    got = jaxseq.RepeatVector(n).apply({}, x)
    np.testing.assert_array_equal(np.asarray(got), want)


# --------------------------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------------------------

MODELS = {
    "lstm_dense": lambda k: [k.LSTM(5), k.Dense(1)],
    "gru_repeat_simple_rnn_td": lambda k: [
        k.GRU(5), k.RepeatVector(T), k.SimpleRNN(5, return_sequences=True), k.TD(k.Dense(2))
    ],
    "bidir_lstm_dense": lambda k: [k.Bidirectional(k.LSTM(5)), k.Dense(1)],
}


class _KerasNS:
    LSTM, GRU, SimpleRNN = keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN
    Dense, RepeatVector = keras.layers.Dense, keras.layers.RepeatVector
    Bidirectional, TD = keras.layers.Bidirectional, keras.layers.TimeDistributed


class _JaxNS:
    LSTM, GRU, SimpleRNN = jaxseq.LSTM, jaxseq.GRU, jaxseq.SimpleRNN
    Dense, RepeatVector = nn.Dense, jaxseq.RepeatVector
    Bidirectional, TD = jaxseq.Bidirectional, jaxseq.TimeDistributed


@pytest.mark.parametrize("name", list(MODELS))
def test_sequential_model_matches_keras(name):
    x = np.random.default_rng(3).normal(size=(B, T, 1)).astype(np.float32)
    with _keras_ctx():
        kmodel = keras.Sequential([keras.Input((T, 1)), *MODELS[name](_KerasNS)])
        _randomize(kmodel, _seed("model", name))
        want = np.asarray(kmodel(x))
    params = {
        f"layers_{i}": keras_params(layer)
        for i, layer in enumerate(kmodel.layers)
        if layer.get_weights()
    }
    model = nn.Sequential(MODELS[name](_JaxNS))
    assert _init_shapes(model, x) == _shapes(params)
    assert _count(params) == kmodel.count_params()
    got = model.apply({"params": params}, x)
    _assert_close(got, want)


COUNT_CASES = {
    "LSTM(5)": (lambda: keras.layers.LSTM(5), lambda: jaxseq.LSTM(5), 140),
    "GRU(5)": (lambda: keras.layers.GRU(5), lambda: jaxseq.GRU(5), 120),
    "GRU(5, reset_after=False)": (
        lambda: keras.layers.GRU(5, reset_after=False),
        lambda: jaxseq.GRU(5, reset_after=False),
        105,
    ),
    "SimpleRNN(5)": (lambda: keras.layers.SimpleRNN(5), lambda: jaxseq.SimpleRNN(5), 35),
    "Bidirectional(LSTM(5))": (
        lambda: keras.layers.Bidirectional(keras.layers.LSTM(5)),
        lambda: jaxseq.Bidirectional(jaxseq.LSTM(5)),
        280,
    ),
    "TimeDistributed(Dense(1))": (
        lambda: keras.layers.TimeDistributed(keras.layers.Dense(1)),
        lambda: jaxseq.TimeDistributed(nn.Dense(1)),
        2,
    ),
}


@pytest.mark.parametrize("name", list(COUNT_CASES))
def test_param_count_matches_keras(name):
    make_keras, make_jax, expected = COUNT_CASES[name]
    with _keras_ctx():
        klayer = make_keras()
        klayer.build((None, T, 1))
        keras_count = klayer.count_params()
    assert keras_count == expected
    shapes = _init_shapes(make_jax(), np.zeros((1, T, 1), np.float32))
    assert sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=_is_shape)) == expected


def _is_shape(a) -> bool:
    return isinstance(a, tuple) and all(isinstance(d, int) for d in a)

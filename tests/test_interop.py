"""Exact weight interop with real Keras 3 layers/models and real PyTorch modules.

Keras: random weights (biases included) -> `from_keras` -> jaxseq outputs agree (rtol 2e-5);
jaxseq params -> `to_keras` -> `from_keras` is bitwise, and Keras then computes what jaxseq
computes. Torch: the same both ways, for nn.LSTM / nn.GRU / nn.RNN over layers, directions
and batch_first, and nn.Linear.

Keras itself broadcasts by rank promotion, so the Keras calls (building, initializing and
running Keras layers) run under `_keras()` = `jax.numpy_rank_promotion("allow")`; jaxseq's own
calls run under the suite's strict "raise" (as in tests/test_keras_parity.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from jaxseq import interop  # noqa: E402
from jaxseq.interop import (  # noqa: E402
    from_keras,
    from_torch,
    jaxseq_model_from_keras,
    jaxseq_model_from_torch,
    load_keras_weights,
    to_keras,
    to_torch,
)

pytestmark = pytest.mark.filterwarnings(  # raised inside Keras' Variable.numpy() on NumPy 2
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

L = keras.layers
RTOL, ATOL = 2e-5, 1e-6
B, T, F = 3, 5, 2
X = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)



def _keras():
    """Context for Keras' own computations (they broadcast by rank promotion)."""
    return jax.numpy_rank_promotion("allow")


def _randomize(obj, seed: int) -> None:
    rng = np.random.default_rng(seed)
    obj.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                     for w in obj.get_weights()])


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
        for x, y in zip(la, lb, strict=True)
    )


def _random_like(params, seed: int):
    """Fresh random params with the structure of `params` (cheaper than an eager init)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: jax.numpy.asarray(rng.normal(scale=0.5, size=a.shape).astype(np.float32)),
        params,
    )


def _apply(model, params, x):
    return jax.jit(model.apply)({"params": params}, x)


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=RTOL, atol=ATOL)


# -- Keras ------------------------------------------------------------------------------------

KERAS_LAYERS = {
    "lstm": lambda: L.LSTM(4, return_sequences=True),
    "gru": lambda: L.GRU(4),
    "gru_reset_before": lambda: L.GRU(3, reset_after=False, return_sequences=True),
    "simple_rnn": lambda: L.SimpleRNN(4, activation="relu"),
    "lstm_no_bias": lambda: L.LSTM(3, use_bias=False),
    "bidirectional_lstm": lambda: L.Bidirectional(L.LSTM(3, return_sequences=True)),
    "bidirectional_gru_sum": lambda: L.Bidirectional(L.GRU(3), merge_mode="sum"),
    "time_distributed_dense": lambda: L.TimeDistributed(L.Dense(3)),
    "dense": lambda: L.Dense(3, activation="tanh"),
}


def _built_keras(kind: str, seed: int = 1):
    with _keras():
        layer = KERAS_LAYERS[kind]()
        layer.build((None, T, F))
        _randomize(layer, seed)
    return layer


@pytest.mark.parametrize("kind", sorted(KERAS_LAYERS))
def test_keras_layer_round_trip_and_outputs(kind):
    layer = _built_keras(kind)
    model, params = jaxseq_model_from_keras(layer)
    with _keras():
        want = layer(X)
    _close(_apply(model, params, X), want)
    # jaxseq -> Keras -> jaxseq is bitwise, so Keras now holds exactly `fresh` (and computes
    # what jaxseq computes, by the agreement above).
    fresh = _random_like(params, 7)
    assert _leaves_equal(from_keras(to_keras(fresh, layer)), fresh)
    assert not _leaves_equal(fresh, params)


@pytest.fixture(scope="module")
def keras_stack(tmp_path_factory):
    """A built Keras Sequential of every supported kind, its weights file and its output."""
    with _keras():
        for _ in range(2):  # take Keras' global name counters off zero: names get suffixes
            L.Dense(1)
            L.LSTM(1)
        km = keras.Sequential([
            keras.Input((T, F)),
            L.LSTM(4, return_sequences=True),
            L.Bidirectional(L.GRU(2)),
            L.RepeatVector(3),
            L.SimpleRNN(2, return_sequences=True),
            L.TimeDistributed(L.Dense(2, activation="relu")),
            L.LSTM(2),
            L.Dropout(0.1),
            L.Dense(1),
        ])
        _randomize(km, 2)
        path = tmp_path_factory.mktemp("keras") / "model.weights.h5"
        km.save_weights(path)
        return km, path, np.asarray(km(X))


def test_keras_sequential_names_follow_jaxseq_not_keras(keras_stack):
    km, _, _ = keras_stack
    assert "dense" not in [layer.name for layer in km.layers]  # Keras: dense_3, lstm_4, ...
    model, params = jaxseq_model_from_keras(km)
    assert sorted(params) == ["bidirectional", "dense", "lstm", "lstm_1", "simple_rnn",
                              "time_distributed"]
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), X))["params"]
    assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, params)


def test_keras_sequential_round_trip_outputs_and_weights_file(keras_stack):
    km, path, want = keras_stack
    model, params = jaxseq_model_from_keras(km)
    _close(_apply(model, params, X), want)
    assert _leaves_equal(load_keras_weights(path, model, X), params)
    fresh = _random_like(params, 3)
    assert _leaves_equal(from_keras(to_keras(fresh, km)), fresh)
    to_keras(params, km)  # leave the shared model as it was


def test_keras_unsupported_layer_is_a_type_error_naming_it():
    conv = L.Conv1D(2, 3)
    with pytest.raises(TypeError, match=r"Conv1D.*supported: .*LSTM"):
        from_keras(conv)
    with _keras():
        km = keras.Sequential([keras.Input((T, F)), L.LSTM(2, return_sequences=True),
                               L.Conv1D(2, 3)])
    with pytest.raises(TypeError, match="Conv1D"):
        jaxseq_model_from_keras(km)


def test_keras_size_mismatch_names_layer_and_shapes():
    layer = _built_keras("lstm")
    bad = {**from_keras(layer), "kernel": np.zeros((F + 1, 16), np.float32)}
    before = from_keras(layer)
    msg = r"weight 'kernel' \(Keras 'lstm.*/kernel'\) has shape \(2, 16\) in Keras.*\(3, 16\)"
    with pytest.raises(ValueError, match=msg):
        to_keras(bad, layer)
    assert _leaves_equal(from_keras(layer), before)  # nothing was written
    with pytest.raises(ValueError, match="bias"):
        to_keras({"kernel": bad["kernel"]}, layer)


def test_keras_weights_file_into_mismatched_model_names_layer(keras_stack):
    km, path, _ = keras_stack
    model, _ = jaxseq_model_from_keras(km)
    wider = model.clone(layers=(model.layers[0].clone(units=5), *model.layers[1:]))
    msg = r"layer 'lstm' weight 'kernel' has shape \(2, 20\) in the model.*\(2, 16\)"
    with pytest.raises(ValueError, match=msg):
        load_keras_weights(path, wider, X)


@pytest.mark.parametrize("timedistributed", [False, True], ids=["dense", "time_distributed"])
def test_keras_dense_softmax_outputs_equal_keras(timedistributed):
    with _keras():
        dense = L.Dense(4, activation="softmax")
        layer = L.TimeDistributed(dense) if timedistributed else dense
        x = X if timedistributed else X[:, 0]
        layer.build((None, *x.shape[1:]))
        _randomize(layer, 4)
        want = np.asarray(layer(x))
    model, params = jaxseq_model_from_keras(layer)
    got = np.asarray(_apply(model, params, x))
    _close(got, want)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)  # a softmax, not the logits


def test_keras_stateful_layers_are_rejected_by_name():
    with _keras():
        lstm = L.LSTM(3, stateful=True)
        lstm.build((B, T, F))
        bidir = L.Bidirectional(L.GRU(3, stateful=True))
        bidir.build((B, T, F))
        km = keras.Sequential([keras.Input((T, F), batch_size=B), L.Dense(2),
                               L.SimpleRNN(3, stateful=True, name="the_rnn")])
    msg = "stateful Keras layer {!r} is not supported"
    with pytest.raises(ValueError, match=msg.format(lstm.name)):
        jaxseq_model_from_keras(lstm)
    with pytest.raises(ValueError, match=msg.format(bidir.forward_layer.name)):
        jaxseq_model_from_keras(bidir)
    with pytest.raises(ValueError, match="jaxseq_model_from_keras/the_rnn: "
                                         + msg.format("the_rnn")):
        jaxseq_model_from_keras(km)
    # The same layers without `stateful` import.
    model, _ = jaxseq_model_from_keras(_built_keras("lstm"))
    assert type(model).__name__ == "LSTM"


def test_unbuilt_keras_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="not built"):
        from_keras(L.LSTM(3))


# -- PyTorch ----------------------------------------------------------------------------------

TORCH = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}
# (kind, num_layers, bidirectional, batch_first): every layout for LSTM; for GRU, bidirectional
# single- and multi-layer with both batch_first settings; nn.RNN (an extra) once.
TORCH_CASES = [
    ("LSTM", 1, False, True), ("LSTM", 1, True, False), ("LSTM", 2, False, False),
    ("LSTM", 2, True, True), ("GRU", 1, True, False), ("GRU", 2, True, True),
    ("GRU", 2, False, True), ("RNN", 2, True, False),
]


def _torch_out(module, x: np.ndarray) -> np.ndarray:
    xt = torch.from_numpy(x)
    if not module.batch_first:
        xt = xt.transpose(0, 1)
    with torch.no_grad():
        out = module(xt)[0]
    out = out if module.batch_first else out.transpose(0, 1)
    return out.numpy()


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda v: "{}-l{}-bi{:d}-bf{:d}".format(*v))
def test_torch_recurrent_round_trip_and_outputs(case):
    kind, num_layers, bidirectional, batch_first = case
    torch.manual_seed(0)
    make = lambda: TORCH[kind](F, 4, num_layers=num_layers, bidirectional=bidirectional,
                               batch_first=batch_first)
    module = make()
    model, params = jaxseq_model_from_torch(module)
    want = _torch_out(module, X)
    assert want.shape == (B, T, 4 * (1 + bidirectional))
    run = jax.jit(model.apply)  # one compilation for both directions
    _close(run({"params": params}, X), want)
    # torch -> jaxseq -> torch: same outputs (LSTM/RNN biases summed, then split bias + 0).
    other = to_torch(params, make())
    _close(_torch_out(other, X), want)
    for name, p in module.named_parameters():
        if name.startswith("weight") or kind == "GRU":
            assert torch.equal(p, getattr(other, name)), name
    # jaxseq -> torch -> jaxseq is bitwise (bias + 0 == bias).
    fresh = _random_like(params, 5)
    assert _leaves_equal(from_torch(to_torch(fresh, module)), fresh)
    _close(_torch_out(module, X), run({"params": fresh}, X))


def test_torch_multilayer_maps_to_named_sequential():
    module = torch.nn.LSTM(F, 3, num_layers=3, bidirectional=True, dropout=0.2)
    model, params = jaxseq_model_from_torch(module)
    assert sorted(params) == ["bidirectional", "bidirectional_1", "bidirectional_2"]
    assert sorted(params["bidirectional_1"]) == ["backward_layer", "forward_layer"]
    assert params["bidirectional_1"]["forward_layer"]["kernel"].shape == (6, 12)
    assert sum(isinstance(m, nn.Dropout) for m in model.layers) == 2


def test_torch_linear_round_trip():
    torch.manual_seed(0)
    lin = torch.nn.Linear(F, 3)
    model, params = jaxseq_model_from_torch(lin)
    x = X[:, 0]
    with torch.no_grad():
        want = lin(torch.from_numpy(x)).numpy()
    _close(_apply(model, params, x), want)
    fresh = _random_like(params, 1)
    assert _leaves_equal(from_torch(to_torch(fresh, lin)), fresh)


def test_torch_errors_name_the_module_and_shapes():
    with pytest.raises(TypeError, match=r"Conv1d.*nn\.LSTM"):
        from_torch(torch.nn.Conv1d(2, 2, 3))
    with pytest.raises(ValueError, match=r"'recurrent_kernel' must have shape \(3, 16\).*"
                                         r"got \(2, 16\)"):
        to_torch(from_torch(torch.nn.LSTM(F, 4, proj_size=2)), torch.nn.LSTM(F, 4, proj_size=3))
    params = from_torch(torch.nn.LSTM(F, 4))
    with pytest.raises(ValueError, match=r"'kernel'.*\(2, 20\).*\(2, 16\)"):
        to_torch(params, torch.nn.LSTM(F, 5))
    with pytest.raises(ValueError, match="forward_layer"):
        to_torch(params, torch.nn.LSTM(F, 4, bidirectional=True))
    gru = from_torch(torch.nn.GRU(F, 4))
    gru["bias"] = gru["bias"][0]  # reset_after=False layout: torch cannot hold it
    with pytest.raises(ValueError, match="bias"):
        to_torch(gru, torch.nn.GRU(F, 4))


def test_interop_namespace_is_lazy_and_complete():
    assert set(interop.__all__) == {
        "from_keras", "to_keras", "load_keras_weights", "jaxseq_model_from_keras",
        "from_torch", "to_torch", "jaxseq_model_from_torch",
    }
    with pytest.raises(AttributeError):
        _ = interop.nothing_here


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_with_projection_equals_torch_outputs_gradients_and_round_trip(bidirectional):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(F, 5, proj_size=2, num_layers=2, bidirectional=bidirectional,
                         batch_first=True)
    model, params = jaxseq_model_from_torch(lstm)
    x = X.astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = lstm(xt)[0]
    (out ** 2).sum().backward()
    _close(_apply(model, params, x), out.detach().numpy())
    dx = jax.jit(jax.grad(lambda a: (model.apply({"params": params}, a) ** 2).sum()))(x)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    first = params["bidirectional" if bidirectional else "lstm"]
    first = first["forward_layer"] if bidirectional else first
    assert first["projection_kernel"].shape == (5, 2)
    assert first["recurrent_kernel"].shape == (2, 20)
    fresh = _random_like(params, 2)
    assert _leaves_equal(from_torch(to_torch(fresh, lstm)), fresh)

"""Encoder-decoder models (`jaxseq.models.seq2seq`) and stateful step-by-step prediction
(`jaxseq.inference.rollout`)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from tests_common import backend_compiles  # noqa: E402

from jaxseq import training  # noqa: E402
from jaxseq.inference import rollout  # noqa: E402
from jaxseq.models import Sequential, seq2seq  # noqa: E402
from jaxseq.recurrent import GRU, LSTM, Bidirectional  # noqa: E402
from jaxseq.training import evaluate, fit, predict  # noqa: E402
from jaxseq.wrappers import TimeDistributed  # noqa: E402


def _n_params(model, x) -> int:
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)["params"]
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


@pytest.mark.parametrize(("t_in", "f", "units", "out_length", "out_features"),
                         [(6, 1, 5, 3, 1), (4, 3, 8, 7, 2)])
def test_seq2seq_parameter_counts_equal_keras(t_in, f, units, out_length, out_features):
    keras = pytest.importorskip("keras")
    layers = keras.layers
    cheap = dict(kernel_initializer="zeros", recurrent_initializer="zeros")  # fast to build
    km = keras.Sequential([
        keras.Input((t_in, f)),
        layers.LSTM(units, **cheap),
        layers.RepeatVector(out_length),
        layers.LSTM(units, return_sequences=True, **cheap),
        layers.TimeDistributed(layers.Dense(out_features)),
    ])
    model = seq2seq(units, out_length, out_features)
    x = jax.ShapeDtypeStruct((2, t_in, f), jnp.float32)
    assert _n_params(model, x) == km.count_params()
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0], x)
    assert out.shape == (2, out_length, out_features)


def test_seq2seq_validates_arguments():
    with pytest.raises(ValueError, match="out_length"):
        seq2seq(4, 0, 1)


def test_seq2seq_learns_to_reverse_sequences():
    rng = np.random.default_rng(0)
    values = np.linspace(0.1, 0.9, 5, dtype=np.float32)  # five "symbols"
    x = values[rng.integers(0, 5, (256, 4))][..., None]  # (b, t=4, f=1)
    x_test = values[rng.integers(0, 5, (128, 4))][..., None]
    model = seq2seq(32, out_length=4, out_features=1)
    state, history = fit(model, x, x[:, ::-1], epochs=75, batch_size=32,
                         optimizer=optax.adam(1e-2), verbose=0)
    mse = evaluate(model, state.params, x_test, x_test[:, ::-1])
    assert history.loss[-1] < history.loss[0] / 20
    assert mse < 0.05 * float(np.var(x_test))
    pred = np.asarray(predict(model, state.params, x_test))
    symbols = np.abs(pred - values).argmin(-1)  # nearest symbol per step
    truth = np.abs(x_test[:, ::-1] - values).argmin(-1)
    assert (symbols == truth).mean() > 0.95


# -- rollout ----------------------------------------------------------------------------------

X = np.random.default_rng(1).normal(size=(3, 5, 2)).astype(np.float32)


def _init(model, seed: int = 0):
    """Random params of the model's shapes (an eager or jitted init, with its orthogonal
    initializer, costs seconds to compile; the rollout math does not care)."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), X)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(scale=0.5, size=s.shape).astype(np.float32)), shapes
    )


def _stack():
    return Sequential((LSTM(4, return_sequences=True), GRU(3, return_sequences=True),
                       TimeDistributed(nn.Dense(2))))


def test_rollout_equals_the_model_run_on_its_own_predictions():
    model = _stack()
    params = _init(model)
    steps = 4
    y = rollout(model, params, X, steps)
    assert y.shape == (3, steps, 2) and y.dtype == jnp.float32
    # Feeding the predictions back as inputs and re-running the whole sequence from scratch
    # must give the same predictions: the carried states are exactly the full run's.
    full = jnp.concatenate([X, y[:, :-1]], axis=1)
    np.testing.assert_allclose(predict(model, params, full)[:, -steps:], y,
                               rtol=2e-5, atol=1e-6)


def test_rollout_window_model_and_one_step():
    model = Sequential((LSTM(4), nn.Dense(2)))  # many-to-one, no return_sequences
    params = _init(model)
    one = rollout(model, params, X, 1)
    np.testing.assert_allclose(one[:, 0], predict(model, params, X), rtol=2e-5, atol=1e-6)
    y = rollout(model, params, X, 3)
    full = jnp.concatenate([X, y[:, :-1]], axis=1)
    np.testing.assert_allclose(predict(model, params, full), y[:, -1], rtol=2e-5, atol=1e-6)


def test_rollout_compiles_once_per_model_and_steps():
    model = _stack()
    params = _init(model)
    rollout(model, params, X, 3)
    training.compile.cached("rollout", model, 3, build=lambda: pytest.fail("not cached"))
    shifted = X + 1.0
    assert backend_compiles(lambda: rollout(model, params, shifted, 3)) == 0


def test_rollout_rejects_non_causal_or_mismatched_models():
    params = None
    bidir = Sequential((Bidirectional(LSTM(2, return_sequences=True)),
                        TimeDistributed(nn.Dense(2))))
    with pytest.raises(ValueError, match="Bidirectional"):
        rollout(bidir, params, X, 2)
    narrow = Sequential((LSTM(2, return_sequences=True), TimeDistributed(nn.Dense(1))))
    with pytest.raises(ValueError, match="f=2"):
        rollout(narrow, params, X, 2)
    with pytest.raises(TypeError, match="Sequential"):
        rollout(LSTM(2), params, X, 2)

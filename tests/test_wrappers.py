"""jaxseq.TimeDistributed and jaxseq.RepeatVector.

TimeDistributed(layer) must apply ONE layer, with ONE set of weights, to every time slice: the
result equals applying the layer by hand to x[:, t] for each t with the same params, for a Dense,
an MLP and a conv net on (batch, time, h, w, c).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests_common import jit_apply, jit_init

import jaxseq as js

RTOL, ATOL = 1e-5, 1e-6


def _key(seed: int = 0):
    """A PRNG key of the "rbg" kind: it works like the default threefry one and compiles much
    faster on CPU (these tests are about wiring, not about the generator)."""
    return jax.random.key(seed, impl="rbg")


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(4)(x))
        return nn.Dense(2)(x)


class ConvNet(nn.Module):
    """(batch, h, w, c) -> (batch, 3)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(3)(x)


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _by_hand(layer: nn.Module, params, x) -> np.ndarray:
    """`layer` applied to each time slice x[:, t] separately, with the same params (a Python
    loop, jitted as a whole to compile once)."""

    @jax.jit
    def run(params, x):
        return [layer.apply({"params": params}, x[:, t]) for t in range(x.shape[1])]

    return np.stack([np.asarray(y) for y in run(params, x)], axis=1)


def _count(tree) -> int:
    return sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "make_layer, x_shape, out_tail",
    [
        (lambda: nn.Dense(1), (3, 4, 5), (1,)),
        (MLP, (3, 4, 5), (2,)),
        (ConvNet, (2, 3, 6, 6, 2), (3,)),  # (batch, time, h, w, c)
    ],
    ids=["dense", "mlp", "conv"],
)
def test_time_distributed_equals_layer_applied_per_slice(make_layer, x_shape, out_tail):
    x = _x(x_shape)
    td = js.TimeDistributed(make_layer())
    params = jax.jit(td.init)(_key(0), x)["params"]
    # ONE set of weights: the wrapped layer's own params, no time axis anywhere
    slice_params = jax.eval_shape(make_layer().init, _key(0), x[:, 0])["params"]
    chex.assert_trees_all_equal_shapes(params["layer"], slice_params)
    assert list(params) == ["layer"]
    y = jax.jit(td.apply)({"params": params}, x)
    chex.assert_shape(y, x_shape[:2] + out_tail)
    chex.assert_type(y, jnp.float32)
    want = _by_hand(make_layer(), params["layer"], x)
    np.testing.assert_allclose(np.asarray(y), want, rtol=RTOL, atol=ATOL)


def test_time_distributed_dense_param_count_after_lstm_features():
    """Dense(1) after 5 features: 5 weights + 1 bias, shared by every time step."""
    td = js.TimeDistributed(nn.Dense(1))
    for time in (1, 7):
        variables = jax.eval_shape(td.init, _key(0), jnp.zeros((2, time, 5)))
        shapes = jax.tree.map(lambda s: s.shape, variables["params"])
        assert shapes == {"layer": {"kernel": (5, 1), "bias": (1,)}}
        assert _count(variables["params"]) == 6


def test_time_distributed_same_params_for_every_step_exactly():
    """Identical slices give identical outputs (a per-step weight copy would not)."""
    x = np.broadcast_to(_x((3, 1, 5)), (3, 6, 5))
    td = js.TimeDistributed(MLP())
    y = np.asarray(jax.jit(lambda x: td.apply(td.init(_key(1), x), x))(x))
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))


def test_time_distributed_passes_call_kwargs_and_splits_dropout_per_step():
    x = jnp.ones((4, 5, 8))
    td = js.TimeDistributed(nn.Dropout(0.5))

    @jax.jit
    def run(key):
        return (
            td.apply({}, x, deterministic=True),
            td.apply({}, x, deterministic=False, rngs={"dropout": key}),
            td.apply({}, x, deterministic=False, rngs={"dropout": key}),
        )

    same, y, y2 = map(np.asarray, run(_key(0)))
    np.testing.assert_array_equal(same, np.asarray(x))
    np.testing.assert_array_equal(y, y2)
    assert set(np.unique(y).tolist()) == {0.0, 2.0}
    # as Keras (time folded into the batch): each step draws its own mask
    assert any(not np.array_equal(y[:, 0], y[:, t]) for t in range(1, 5))


def test_time_distributed_gradients_and_vmap():
    x = _x((3, 4, 5))
    td = js.TimeDistributed(MLP())
    params = jax.jit(td.init)(_key(0), x)["params"]
    grads = jax.jit(jax.grad(lambda p: jnp.sum(td.apply({"params": p}, x) ** 2)))(params)
    chex.assert_tree_all_finite(grads)
    for g in jax.tree.leaves(grads):
        assert np.any(np.asarray(g) != 0)
    xs = np.stack([x, 2 * x])
    one = jax.jit(lambda xi: td.apply({"params": params}, xi))
    batched = jax.jit(jax.vmap(one))(xs)
    for i in range(2):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(one(xs[i])),
                                   rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# RepeatVector
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_repeat_vector_shapes_and_values(n, dtype):
    x = jnp.asarray(_x((3, 5)), dtype)
    y = jit_apply(js.RepeatVector(n), {}, x)
    chex.assert_shape(y, (3, n, 5))
    chex.assert_type(y, dtype)
    for t in range(n):
        np.testing.assert_array_equal(np.asarray(y[:, t], np.float32), np.asarray(x, np.float32))


def test_repeat_vector_then_lstm_then_time_distributed():
    """The encoder-decoder pattern: vector -> RepeatVector -> LSTM(return_sequences) -> TD."""

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, v):
            h = js.RepeatVector(6)(v)
            h = js.LSTM(4, return_sequences=True)(h)
            return js.TimeDistributed(nn.Dense(1))(h)

    variables = jax.eval_shape(Decoder().init, _key(0), jnp.zeros((2, 3)))
    out = jax.eval_shape(Decoder().apply, variables, jnp.zeros((2, 3)))
    assert out.shape == (2, 6, 1) and out.dtype == jnp.float32
    assert _count(variables["params"]) == 4 * 4 * (3 + 4 + 1) + 4 + 1


# --- masks, flags and state through TimeDistributed -------------------------------------------


def test_per_slice_masks_reach_each_slice():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 1)).astype(np.float32)
    mask = np.ones((2, 3, 4), bool)
    mask[0, 1, 2:] = False
    td = js.TimeDistributed(js.GRU(4))
    params = jit_init(td, jax.random.PRNGKey(0), x)["params"]
    out = jax.jit(lambda p, x, m: td.apply({"params": p}, x, mask=m))(params, x, mask)
    gru = js.GRU(4)
    alone = gru.apply({"params": params["layer"]}, x[0, 1, :2][None])  # the real steps only
    np.testing.assert_allclose(out[0, 1], alone[0], rtol=1e-6, atol=1e-7)
    other = gru.apply({"params": params["layer"]}, x[1, 1][None])  # an unmasked slice
    np.testing.assert_allclose(out[1, 1], other[0], rtol=1e-6, atol=1e-7)
    wrong = r"\(batch, time\) = \(2, 3\) or \(batch, time, inner_time\) = \(2, 3, 4\); got \(2, 4\)"
    with pytest.raises(ValueError, match=wrong):
        td.apply({"params": params}, x, mask=mask[:, 0])
    with pytest.raises(TypeError, match=r"TimeDistributed\(Dense\) got a per-slice mask"):
        dense = js.TimeDistributed(nn.Dense(2))
        dense.init(jax.random.PRNGKey(0), x, mask=mask)


def test_an_outer_mask_is_the_outputs_mask_for_the_next_recurrent_layer():
    x = np.random.default_rng(1).normal(size=(2, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    model = js.Sequential((js.TimeDistributed(nn.Dense(4)), js.GRU(2)))
    params = jit_init(model, jax.random.PRNGKey(0), x)["params"]
    got = jit_apply(model, {"params": params}, x, mask=mask)
    h = jit_apply(js.TimeDistributed(nn.Dense(4)), {"params": params["time_distributed"]}, x)
    want = jit_apply(js.GRU(2), {"params": params["gru"]}, h, mask=mask)
    np.testing.assert_array_equal(got, want)
    assert not np.allclose(got, jit_apply(model, {"params": params}, x))  # the mask mattered


def test_flags_pass_through_to_the_wrapped_layer():
    x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")
    model = js.Sequential((js.LSTM(4, return_sequences=True), js.TimeDistributed(nn.Dropout(0.5)),
                           js.TimeDistributed(nn.Dense(1))))
    assert js.contracts.accepts(model.layers[1], "deterministic")
    assert not js.contracts.accepts(model.layers[2], "deterministic")
    params = jit_init(model, jax.random.PRNGKey(0), x)["params"]  # init, fit and predict work
    state, history = js.fit(model, x, y, epochs=3, batch_size=1, verbose=0)
    pred = js.predict(model, state, x)  # inference: no dropout, deterministic
    np.testing.assert_allclose(pred, jit_apply(model, {"params": state.params}, x), rtol=1e-6)
    train = jit_apply(model, {"params": params}, x, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(train, jit_apply(model, {"params": params}, x))  # dropout is live
    assert np.all(np.isfinite(history.loss))


class NormedSlices(nn.Module):
    """BatchNorm that follows `deterministic` (Keras' `training`), Keras' epsilon."""

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        return nn.BatchNorm(use_running_average=deterministic, epsilon=1e-3, momentum=0.99)(x)


def test_time_distributed_batchnorm_equals_keras():
    keras = pytest.importorskip("keras")
    x = np.random.default_rng(2).normal(2.0, 3.0, size=(6, 4, 3)).astype(np.float32)
    td = js.TimeDistributed(NormedSlices())
    variables = jit_init(td, jax.random.PRNGKey(0), x)
    assert set(variables) == {"params", "batch_stats"}
    out, updates = jit_apply(td, variables, x, deterministic=False, mutable=["batch_stats"])
    k_td = keras.layers.TimeDistributed(keras.layers.BatchNormalization())
    with jax.numpy_rank_promotion("allow"):
        k_out = np.asarray(k_td(x, training=True))
        stats = updates["batch_stats"]["layer"]["BatchNorm_0"]
        bn = k_td.layer
        np.testing.assert_allclose(out, k_out, rtol=1e-4, atol=1e-5)
        # the running statistics moved once per time step, in order (4 updates)
        np.testing.assert_allclose(stats["mean"], np.asarray(bn.moving_mean), rtol=1e-5)
        np.testing.assert_allclose(stats["var"], np.asarray(bn.moving_variance), rtol=1e-5)
        moved = {**variables, **updates}
        np.testing.assert_allclose(jit_apply(td, moved, x), np.asarray(k_td(x, training=False)),
                                   rtol=1e-4, atol=1e-5)
    # an independent reference of "once per step, in order": 4 momentum updates in NumPy
    mean = np.zeros(3)
    for t in range(4):
        mean = 0.99 * mean + 0.01 * x[:, t].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5)


def test_time_distributed_batchnorm_trains_in_fit_with_its_statistics_in_the_state():
    x = np.random.default_rng(3).normal(1.0, 2.0, size=(8, 5, 2)).astype(np.float32)
    y = x[..., :1].cumsum(axis=1).astype(np.float32)
    model = js.Sequential((js.TimeDistributed(NormedSlices()), js.LSTM(3, return_sequences=True),
                           js.TimeDistributed(nn.Dense(1))))
    state, history = js.fit(model, x, y, epochs=2, batch_size=4, verbose=0)
    stats = state.model_state["batch_stats"]["time_distributed"]["layer"]["BatchNorm_0"]
    assert not np.allclose(stats["mean"], 0.0)  # 2 epochs x 2 batches x 5 steps of updates
    assert np.all(np.isfinite(history.loss))
    np.testing.assert_allclose(js.predict(model, state, x),
                               jit_apply(model, state.variables, x), rtol=1e-5, atol=1e-6)

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
    y = js.RepeatVector(n).apply({}, x)
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

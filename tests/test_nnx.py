"""Flax NNX users: a jaxseq model wrapped with `flax.nnx.bridge.ToNNX` initialises, trains one
optax step and predicts exactly as the linen model with the same parameters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxseq.models import Sequential
from jaxseq.recurrent import LSTM
from jaxseq.training import predict
from jaxseq.wrappers import TimeDistributed

X = np.random.default_rng(0).normal(size=(4, 5, 2)).astype(np.float32)
Y = np.random.default_rng(1).normal(size=(4, 5, 1)).astype(np.float32)


def _model():
    # lecun_normal instead of the default orthogonal recurrent init: lazy_init runs eagerly,
    # and an eager QR costs seconds of compilation; the bridge does not care.
    cheap = dict(return_sequences=True, recurrent_kernel_init=nn.initializers.lecun_normal())
    return Sequential((LSTM(3, **cheap), TimeDistributed(nn.Dense(1))))


@nnx.jit
def _forward(m, x):
    return m(x)


@nnx.jit
def _train_step(m, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: _mse(m(x), y))(m)
    optimizer.update(m, grads)
    return loss


def _mse(pred, y):
    return jnp.mean((pred - y) ** 2)


def test_nnx_bridge_initialises_trains_and_predicts_like_linen():
    model = _model()
    nnx_model = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(nnx_model, X)
    params = nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))  # a plain linen params dict
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), X)["params"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, shapes)
    np.testing.assert_allclose(_forward(nnx_model, X), predict(model, params, X), rtol=1e-6,
                               atol=1e-7)

    # One optax step each way, from the same parameters.
    tx = optax.adam(1e-2)
    optimizer = nnx.Optimizer(nnx_model, tx, wrt=nnx.Param)
    loss = _train_step(nnx_model, optimizer, X, Y)

    linen_loss, linen_grads = jax.jit(jax.value_and_grad(
        lambda p: _mse(model.apply({"params": p}, X), Y)))(params)
    np.testing.assert_allclose(loss, linen_loss, rtol=1e-6)
    updates, _ = tx.update(linen_grads, tx.init(params), params)
    stepped = optax.apply_updates(params, updates)

    after = nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))
    assert not np.allclose(after["lstm"]["kernel"], params["lstm"]["kernel"])  # it moved
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 after, stepped)
    np.testing.assert_allclose(_forward(nnx_model, X), predict(model, stepped, X), rtol=1e-5,
                               atol=1e-6)


def test_linen_params_load_into_the_nnx_model():
    model = _model()
    nnx_model = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(1))
    nnx.bridge.lazy_init(nnx_model, X)
    state = nnx.state(nnx_model, nnx.Param)
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32),
                          nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    nnx.update(nnx_model, state)
    np.testing.assert_allclose(_forward(nnx_model, X), predict(model, params, X), rtol=1e-6,
                               atol=1e-7)

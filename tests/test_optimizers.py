"""Optimizers by Keras name: Keras 3's exact updates (checked against keras.optimizers over 100
steps), cached by (name, hyperparameters); optax transformations that want the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxseq as js
from jaxseq.training import optimizers

RNG = np.random.default_rng(0)
SHAPES = {"w": (3, 4), "b": (4,)}
GRADS = [{k: RNG.normal(scale=s, size=v).astype(np.float32) for k, v in SHAPES.items()}
         for s in np.geomspace(1e-4, 1.0, 100)]  # small gradients early: where eps matters
START = {k: RNG.normal(size=v).astype(np.float32) for k, v in SHAPES.items()}


def _keras_run(keras, opt):
    variables = {k: keras.Variable(v) for k, v in START.items()}
    for g in GRADS:
        opt.apply_gradients([(jnp.asarray(g[k]), variables[k]) for k in SHAPES])
    return {k: np.asarray(v.value) for k, v in variables.items()}


def _ours(tx):
    params = {k: jnp.asarray(v) for k, v in START.items()}
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    for g in GRADS:
        params, state = step(params, state, g)
    return params


@pytest.mark.parametrize("name, keras_name, kw", [
    ("adam", "Adam", {}),
    ("adam", "Adam", {"learning_rate": 0.01, "beta_1": 0.8}),
    ("adamw", "AdamW", {}),
    ("sgd", "SGD", {}),
    ("sgd", "SGD", {"momentum": 0.9}),
    ("sgd", "SGD", {"momentum": 0.9, "nesterov": True}),
    ("rmsprop", "RMSprop", {}),
    ("rmsprop", "RMSprop", {"momentum": 0.5, "centered": True}),
])
def test_keras_named_optimizers_equal_keras_over_100_steps(name, keras_name, kw):
    keras = pytest.importorskip("keras")
    with jax.numpy_rank_promotion("allow"):  # Keras' own broadcasting
        want = _keras_run(keras, getattr(keras.optimizers, keras_name)(**kw))
    got = _ours(optimizers.keras_optimizer(name, **kw))
    for k in SHAPES:  # float32 rounding: the same operations, in a possibly other order
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=2e-7)
    if name == "adam" and not kw:  # ... and not optax's Adam (epsilon placement and value)
        other = _ours(optax.adam(1e-3))
        assert not np.allclose(other["w"], want["w"], rtol=1e-5, atol=1e-6)


def test_names_are_cached_so_a_second_fit_compiles_nothing():
    assert optimizers.keras_optimizer("adam") is optimizers.keras_optimizer("adam")
    assert optimizers.keras_optimizer("adam", learning_rate=0.01) is not (
        optimizers.keras_optimizer("adam"))
    x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_one")
    model = js.models.many_to_one(5)
    js.fit(model, x, y, epochs=3, batch_size=1, optimizer="adam", verbose=0)
    events = []
    listener = lambda name, secs, **kw: events.append(name) if "backend_compile" in name else 0
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        js.fit(model, x, y, epochs=5, batch_size=1, optimizer="Adam", verbose=0)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert events == []


def test_reduce_on_plateau_gets_the_batch_loss():
    # Keras' ReduceLROnPlateau, the optax way: the transformation sees each step's loss
    # (`value=`); with accumulation_size = steps per epoch its patience counts epochs.
    x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")
    plateau = optax.contrib.reduce_on_plateau(factor=0.5, patience=2, accumulation_size=1)
    tx = optax.chain(optax.sgd(1.0), plateau)
    state, history = js.fit(js.models.many_to_many(), x, y, epochs=40, batch_size=1,
                            optimizer=tx, verbose=0)
    scale = float(state.opt_state[1].scale)
    assert scale < 1.0  # the loss stalled at lr 1.0 and the plateau rule cut the rate
    assert np.all(np.isfinite(history.loss))

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
    return _ours_grads(tx, GRADS)


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


# Gradients of norm ~1..30 per array: every clipping argument below acts on most steps.
BIG = [{k: RNG.normal(scale=s, size=v).astype(np.float32) for k, v in SHAPES.items()}
       for s in np.geomspace(0.3, 10.0, 100)]


def _keras_run_grads(keras, opt, grads):
    variables = {k: keras.Variable(v) for k, v in START.items()}
    for g in grads:
        opt.apply_gradients([(jnp.asarray(g[k]), variables[k]) for k in SHAPES])
    return {k: np.asarray(v.value) for k, v in variables.items()}


def _ours_grads(tx, grads):
    params = {k: jnp.asarray(v) for k, v in START.items()}
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    for g in grads:
        params, state = step(params, state, g)
    return params


@pytest.mark.parametrize("clip", [{"clipnorm": 1.0}, {"global_clipnorm": 1.5},
                                  {"clipvalue": 0.5}])
@pytest.mark.parametrize("name, keras_name, kw", [
    ("adam", "Adam", {"learning_rate": 0.01}),
    ("adamw", "AdamW", {"learning_rate": 0.01, "weight_decay": 0.1}),
    ("sgd", "SGD", {"momentum": 0.9}),
    ("rmsprop", "RMSprop", {"centered": True}),
])
def test_clipping_arguments_equal_keras_over_100_steps(name, keras_name, kw, clip):
    keras = pytest.importorskip("keras")
    with jax.numpy_rank_promotion("allow"):  # Keras' own broadcasting
        want = _keras_run_grads(keras, getattr(keras.optimizers, keras_name)(**kw, **clip), BIG)
        unclipped = _keras_run_grads(keras, getattr(keras.optimizers, keras_name)(**kw), BIG)
    got = _ours_grads(optimizers.keras_optimizer(name, **kw, **clip), BIG)
    for k in SHAPES:  # float32 rounding: the same operations, in a possibly other order
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=2e-6)
    # the clipping acted: Keras' clipped and unclipped runs part
    assert not np.allclose(want["w"], unclipped["w"], rtol=1e-3, atol=1e-4)


def test_clipnorm_is_per_array_and_global_clipnorm_over_all():
    grads = {"w": jnp.full((3, 4), 1.0), "b": jnp.zeros((4,)).at[0].set(0.5)}
    params = {k: jnp.zeros(v.shape) for k, v in grads.items()}

    def step(**clip):  # SGD lr 1: the update is minus the clipped gradient
        tx = optimizers.keras_optimizer("sgd", learning_rate=1.0, **clip)
        return tx.update(grads, tx.init(params), params)[0]

    per = step(clipnorm=1.0)  # ||w|| = sqrt(12) -> scaled to 1; ||b|| = 0.5 stays
    np.testing.assert_allclose(per["w"], -np.full((3, 4), 1 / np.sqrt(12)), rtol=1e-6)
    np.testing.assert_allclose(per["b"], -np.asarray(grads["b"]), rtol=1e-6)
    total = np.sqrt(12 + 0.25)  # the global norm: both scaled by 1 / total
    glob = step(global_clipnorm=1.0)
    for k in grads:
        np.testing.assert_allclose(glob[k], -np.asarray(grads[k]) / total, rtol=1e-6)
    np.testing.assert_allclose(step(clipvalue=0.3)["b"], [-0.3, 0, 0, 0], rtol=1e-6)
    zero = optimizers.keras_optimizer("sgd", clipnorm=1.0)  # a zero gradient stays zero
    out = zero.update({"w": jnp.zeros(3)}, zero.init({"w": jnp.zeros(3)}))[0]
    np.testing.assert_array_equal(out["w"], np.zeros(3))


@pytest.mark.parametrize("kw, error, words", [
    ({"clipnorm": -1.0}, ValueError, "clipnorm"),
    ({"global_clipnorm": 0.0}, ValueError, "global_clipnorm"),
    ({"clipvalue": float("inf")}, ValueError, "clipvalue"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, ValueError, "Only one of|only one of"),
    ({"clipnorm": 1.0, "clipvalue": 1.0}, ValueError, "only one of"),
    ({"clipnorm": "1"}, TypeError, "clipnorm"),
    ({"clipnorm": True}, TypeError, "clipnorm"),
    ({"beta1": 0.9}, TypeError, "beta1"),
])
def test_bad_clipping_and_unknown_arguments_are_named(kw, error, words):
    with pytest.raises(error, match=words):
        optimizers.keras_optimizer("adam", **kw)


def test_clipping_none_is_no_clipping_and_cached():
    assert optimizers.keras_optimizer("sgd", clipnorm=None) is optimizers.keras_optimizer("sgd")
    assert optimizers.keras_optimizer("SGD", clipnorm=1.0) is (
        optimizers.keras_optimizer("sgd", clipnorm=1.0))


def test_fit_takes_a_clipped_keras_optimizer():
    # One full-batch SGD step: the parameters move by -lr * g * c / max(||g||, c) per array,
    # g the gradient of the mean squared error at the initial parameters.
    x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_one")
    model = js.models.many_to_one(5)
    tx = js.training.keras_optimizer("sgd", learning_rate=0.5, clipnorm=0.01)
    start = js.training.create_train_state(model, tx, x, jax.random.key(0))
    state, _ = js.fit(model, x, y, epochs=1, batch_size=len(x), shuffle=False, state=start,
                      verbose=0)
    grads = jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x) - y))))(
        start.params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert max(norms) > 0.01  # clipping acts on at least one array
    want = jax.tree.map(lambda p, g: p - 0.5 * g * 0.01 / max(float(jnp.linalg.norm(g)), 0.01),
                        start.params, grads)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_optimizers_module_is_reachable_in_a_fresh_process():
    import subprocess
    import sys

    code = ("import jaxseq as js; f = js.training.optimizers.keras_optimizer; "
            "assert f is js.training.keras_optimizer; f('adam', clipnorm=1.0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr

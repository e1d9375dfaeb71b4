"""The functional training core: public pure steps that compose, equal to `fit`, and carry
every variable collection of the model."""

from functools import partial

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tests_common import backend_compiles, compiled_programs

import jaxseq as js
from jaxseq import training
from jaxseq.training import Batch


class Normed(nn.Module):
    """BatchNorm (a `batch_stats` collection), dropout and a Dense head: x (b, t, f) -> (b, 1)."""

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        h = nn.BatchNorm(use_running_average=deterministic)(x)
        h = nn.Dropout(0.3, deterministic=deterministic)(h)
        return nn.Dense(1)(h.reshape(h.shape[0], -1))


def _data(n=7, t=3, f=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, t, f)).astype(np.float32),
            rng.normal(size=(n, 1)).astype(np.float32))


TX = optax.adam(1e-2)


def test_a_loop_of_the_public_epoch_equals_fit_bitwise():
    x, y = _data()
    model = Normed()
    init_key, key = training.split_seed(3)
    state = training.create_train_state(model, TX, x, init_key)
    assert set(state.model_state) == {"batch_stats"}
    epoch = jax.jit(partial(training.train_epoch, batch_size=3, metrics=("mae",)),
                    compiler_options=training.compiler_options())  # fit's XLA options
    data = Batch(x, y, np.ones((7,), np.float32))
    losses, maes = [], []
    for _ in range(4):
        state, logs = epoch(state, data, key)
        losses.append(float(logs["loss"]))
        maes.append(float(logs["mae"]))
    fitted, history = js.fit(model, x, y, epochs=4, batch_size=3, optimizer=TX, seed=3,
                             metrics=["mae"], verbose=0)
    chex.assert_trees_all_equal(fitted.params, state.params)
    chex.assert_trees_all_equal(fitted.model_state, state.model_state)  # batch_stats carried
    np.testing.assert_array_equal(history.loss, np.asarray(losses, np.float32))
    np.testing.assert_array_equal(history.history["mae"], np.asarray(maes, np.float32))
    assert int(fitted.step) == int(state.step) == 4 * 3
    # the running statistics really moved, and predict uses them (inference mode)
    assert not np.allclose(state.model_state["batch_stats"]["BatchNorm_0"]["mean"], 0.0)
    want = model.apply(state.variables, x)  # eager, op by op: XLA fuses differently
    np.testing.assert_allclose(js.predict(model, fitted, x), want, rtol=1e-6, atol=1e-7)


def test_jitted_train_steps_equal_fit_to_float32_rounding():
    x, y = _data()
    model = js.Sequential((js.GRU(4), nn.Dense(1)))
    init_key, key = training.split_seed(0)
    state = training.create_train_state(model, TX, x, init_key)
    step = jax.jit(training.train_step)
    w = np.ones((7,), np.float32)
    for _ in range(3):  # no shuffling: batches [0:3], [3:6], [6:7] (a partial last batch)
        for i in range(0, 7, 3):
            state, terms = step(state, Batch(x[i:i + 3], y[i:i + 3], w[i:i + 3]),
                                jax.random.split(key)[1])
            assert bool(terms["finite"])
    fitted, _ = js.fit(model, x, y, epochs=3, batch_size=3, optimizer=TX, shuffle=False,
                       verbose=0)
    chex.assert_trees_all_close(fitted.params, state.params, rtol=1e-6, atol=1e-7)
    assert int(state.step) == 9


def test_the_core_composes_with_vmap_scan_and_eval_shape():
    x, y = _data()
    model = js.Sequential((js.LSTM(3), nn.Dense(1)))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    states = jax.jit(jax.vmap(lambda k: training.create_train_state(model, TX, x, k)))(keys)
    batch = Batch(x[:4], y[:4], np.ones((4,), np.float32))
    step = jax.jit(partial(training.train_step, key=keys[0]))
    vmapped, terms = jax.jit(jax.vmap(lambda s: step(s, batch)))(states)
    assert terms["loss"].shape == (3,)
    for i in range(3):
        one = jax.tree.map(lambda a, i=i: a[i], states)
        single, t = step(one, batch)
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], vmapped.params),
                                    single.params, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(terms["loss"][i], t["loss"], rtol=1e-6)
    # a scan of steps is a scan; eval_shape of the state builder traces without running
    one = jax.tree.map(lambda a: a[0], states)
    scanned, losses = jax.jit(lambda s: jax.lax.scan(
        lambda s, _: (lambda r: (r[0], r[1]["loss"]))(step(s, batch)), s, None, length=3))(one)
    assert losses.shape == (3,) and int(scanned.step) == 3
    shapes = jax.eval_shape(lambda: training.create_train_state(model, TX, x, keys[0]))
    assert shapes.params["lstm"]["kernel"].shape == (2, 12)
    ev = jax.jit(training.eval_step)(scanned, batch)
    assert float(ev["loss"]) < float(losses[0])  # three steps on one batch lowered its loss


def test_train_loop_with_an_axis_name_equals_the_plain_vmap():
    # Replicas under vmap: with axis_name the loop runs one epoch counter for all (a psum of
    # the alive flags) and a stopped replica keeps what it had; the plain vmap batches the
    # loop's condition instead (and selects every replica's whole carry). Same states and logs.
    x, y = _data()
    model = js.Sequential((js.LSTM(3), nn.Dense(1)))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    states = jax.vmap(lambda k: training.create_train_state(model, TX, x, k))(keys)
    stop = jax.vmap(lambda s: training.callbacks.stop_state(
        None, (s.params, s.model_state), ("loss",)))(states)
    alive = jnp.asarray([True, False, True])  # replica 1 stopped before this call
    carry = training.LoopState(states, alive, stop)
    data = Batch(x, y, np.ones((7,), np.float32))
    args = (carry, keys, jnp.int32(2), jnp.int32(6), data, None)
    axes = (0, 0, None, None, None, None)
    loop = partial(training.train_loop, batch_size=3, metrics=("mae",), buffer=8)
    plain = jax.jit(jax.vmap(loop, in_axes=axes))
    named = jax.jit(jax.vmap(partial(loop, axis_name="r"), in_axes=axes, axis_name="r"))
    (c1, l1), (c2, l2) = plain(*args), named(*args)
    # two programs, fused differently by XLA: equal to float32 rounding, not bitwise
    chex.assert_trees_all_close(c1, c2, rtol=1e-6, atol=1e-8)
    chex.assert_trees_all_close(l1, l2, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(l2["ran"], [[1, 1, 1, 1, 0, 0, 0, 0], [0] * 8,
                                              [1, 1, 1, 1, 0, 0, 0, 0]])
    assert np.all(np.isnan(l2["loss"][1])) and np.all(np.isfinite(l2["loss"][0, :4]))
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[1], c2.state), jax.tree.map(
        lambda a: a[1], states))  # the stopped replica is untouched


def test_epochs_verbose_seed_callbacks_and_restore_compile_nothing(capsys, no_persistent_cache):
    x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")
    model = js.models.many_to_many()
    stop = lambda r: js.EarlyStopping(monitor="loss", patience=2, restore_best_weights=r)
    training.clear_caches()  # equal models share programs: another test may have compiled it
    jax.clear_caches()
    first = backend_compiles(lambda: js.fit(model, x, y, epochs=30, batch_size=1, verbose=0))
    assert first > 0  # the counter works

    class Noop(js.Callback):
        pass

    again = backend_compiles(lambda: (
        js.fit(model, x, y, epochs=37, batch_size=1, verbose=0),
        js.fit(model, x, y, epochs=5, batch_size=1, verbose=2),
        js.fit(model, x, y, epochs=64, batch_size=1, verbose=1, seed=3),
        js.fit(model, x, y, epochs=9, batch_size=1, verbose=0, callbacks=[Noop(), stop(True)]),
        js.fit(model, x, y, epochs=9, batch_size=1, verbose=0, callbacks=[stop(False)]),
    ))
    assert again == 0
    assert "Epoch 5/5 - loss:" in capsys.readouterr().out  # verbose=2 printed its lines

    params = model.init(jax.random.PRNGKey(0), x)["params"]
    training.clear_caches()
    jax.clear_caches()
    xs = [np.random.default_rng(n).normal(size=(n, 5, 1)).astype(np.float32) for n in (5, 9, 13)]
    assert backend_compiles(lambda: js.predict(model, params, xs[0], batch_size=4)) == 1
    assert backend_compiles(lambda: [js.predict(model, params, a, batch_size=4) for a in xs]) == 0


def test_runs_compile_their_programs_and_no_eager_operation(no_persistent_cache):
    """Starting and ending a run (seeds, EarlyStopping's state, the donated copy, restoring the
    best weights, cross-validation's states in split order) dispatches no eager operation, each
    of which would compile a program of its own on first use."""
    x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")
    model = js.models.many_to_many(units=4)
    stop = lambda: [js.EarlyStopping(patience=2, restore_best_weights=True)]
    kw = dict(epochs=6, batch_size=1, verbose=0, callbacks=stop())
    training.clear_caches()
    jax.clear_caches()
    fit = compiled_programs(lambda: js.fit(model, x, y, validation_data=(x, y), **kw))
    assert sorted(fit) == ["jit(_fresh_state)", "jit(split_seed)", "jit(train_loop)"]
    replicas = compiled_programs(lambda: js.fit_replicas(
        model, x, y, seeds=3, validation_data=(x, y), **kw))
    assert sorted(replicas) == ["jit(_fresh_state)", "jit(_select_best)", "jit(split_seed)",
                                "jit(train_loop)"]
    rng = np.random.default_rng(0)
    xc, yc = rng.random((8, 5, 1), np.float32), rng.random((8, 5, 1), np.float32)
    cv = compiled_programs(lambda: js.evaluation.cross_validate(
        model, xc, yc, folds=2, seeds=(0, 1), validation_split=0.25, **kw))
    assert set(cv) == {"jit(split_seed)", "jit(_fresh_state)", "jit(mapped)", "jit(_select_best)",
                       "jit(_gather)"}, cv


def test_inject_hyperparams_sweeps_a_learning_rate_with_one_compilation():
    x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_one")
    model = js.models.many_to_one(5)
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    key = training.split_seed(0)[0]

    def run(lr):
        state = training.create_train_state(model, tx, x, key)  # compiled once, cached
        state.opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        return js.fit(model, x, y, epochs=20, batch_size=1, state=state, verbose=0)

    a, _ = run(1e-3)
    finals = []
    assert backend_compiles(lambda: finals.extend(run(lr)[1].loss[-1] for lr in (1e-2, 1e-1))) == 0
    b, _ = run(1e-1)
    assert not np.allclose(a.params["dense"]["kernel"], b.params["dense"]["kernel"])
    assert finals[0] != finals[1]


def test_the_compile_cache_is_bounded_and_clearable():
    x, y = _data(n=4)
    model = js.Sequential((js.SimpleRNN(2), nn.Dense(1)))
    old = training.cache_size()
    training.clear_caches()
    try:
        training.set_cache_size(3)
        for lr in (0.1, 0.2, 0.3, 0.4, 0.5):
            js.fit(model, x, y, epochs=1, batch_size=4, optimizer=optax.sgd(lr), verbose=0)
            assert training.compile.cache_len() <= 3
        assert training.compile.cache_len() == 3
        training.clear_caches()
        assert training.compile.cache_len() == 0
        with pytest.raises(ValueError, match="set_cache_size expects an int >= 1; got 0"):
            training.set_cache_size(0)
    finally:
        training.set_cache_size(old)


def test_driver_programs_run_nested_in_a_users_trace():
    # XLA takes compiler options only on an outermost program: called with tracers, jaxseq's
    # jitted programs are plain nested jits.
    f = training.compile.jit(lambda a: jnp.tanh(a) * 2.0)
    a = jnp.arange(3.0)
    assert (f.top is not None) == (jax.default_backend() == "cpu")
    np.testing.assert_array_equal(jax.jit(f)(a), f(a))
    np.testing.assert_array_equal(jax.vmap(f)(a[:, None])[:, 0], f(a))
    assert jax.eval_shape(f, a).shape == (3,)
    x, _ = _data(n=2)
    model = js.Sequential((js.LSTM(2), nn.Dense(1)))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    inside = jax.jit(lambda p: js.predict(model, p, x))(params)
    np.testing.assert_array_equal(inside, js.predict(model, params, x))


def test_state_and_optimizer_arguments():
    x, y = _data(n=4)
    model = js.Sequential((js.SimpleRNN(2), nn.Dense(1)))
    state, _ = js.fit(model, x, y, epochs=2, batch_size=2, verbose=0)
    more, h = js.fit(model, x, y, epochs=3, batch_size=2, state=state, verbose=0)
    assert int(more.step) == 2 * 2 + 3 * 2 and len(h.loss) == 3
    both, _ = js.fit(model, x, y, epochs=5, batch_size=2, verbose=0)
    # continuing = one longer run, except for the shuffles, which follow the step count:
    # equal here because both runs draw each epoch's order from fold_in(key, step)
    chex.assert_trees_all_close(more.params, both.params, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="state= carries its own optimizer"):
        js.fit(model, x, y, epochs=1, state=state, optimizer=optax.sgd(0.1), verbose=0)
    with pytest.raises(ValueError, match=r"optimizer to be one of \('adam', 'adamw', 'sgd', "
                                         r"'rmsprop'\) .*got 'nadam'"):
        js.fit(model, x, y, epochs=1, optimizer="nadam", verbose=0)
    with pytest.raises(TypeError, match="optax GradientTransformation .* got int"):
        js.fit(model, x, y, epochs=1, optimizer=3, verbose=0)


def test_restore_best_weights_restores_every_collection():
    x, y = _data(n=8)
    model = Normed()
    kw = dict(batch_size=4, optimizer=optax.adam(0.2), seed=1, verbose=0)
    es = js.EarlyStopping(monitor="loss", patience=100, restore_best_weights=True)
    restored, history = js.fit(model, x, y, epochs=12, callbacks=[es], **kw)
    best = int(np.argmin(history.loss))
    assert es.best_epoch == best and best < 11  # the best epoch is not the last one
    at_best, _ = js.fit(model, x, y, epochs=best + 1, **kw)  # the same program, fewer epochs
    chex.assert_trees_all_equal(restored.params, at_best.params)
    chex.assert_trees_all_equal(restored.model_state, at_best.model_state)  # BatchNorm stats too


# --- found by a review: Keras' last batch, validation batching, state and model ---------------


class _BN(nn.Module):
    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        h = nn.BatchNorm(use_running_average=deterministic, momentum=0.5)(x)
        return nn.Dense(1)(h)


def test_the_last_smaller_batch_is_its_real_samples_only():
    # Keras' last batch simply has fewer samples: no stand-in rows may reach BatchNorm's
    # batch statistics (they would, with padding)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(5, 3)) * np.arange(1, 6)[:, None]).astype(np.float32)
    y = rng.normal(size=(5, 1)).astype(np.float32)
    state, _ = js.fit(_BN(), x, y, epochs=1, batch_size=4, shuffle=False,
                      optimizer=optax.sgd(0.0), verbose=0)
    mean = np.zeros(3)
    for batch in (x[:4], x[4:]):  # momentum 0.5, batches [x0..x3], [x4]
        mean = 0.5 * mean + 0.5 * batch.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(state.model_state["batch_stats"]["BatchNorm_0"]["mean"], mean,
                               rtol=1e-5)


def test_validation_batches_default_to_batch_size_even_beyond_the_training_samples():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 5, 2)).astype(np.float32), rng.normal(size=(4, 5, 1))
    xv, yv = rng.normal(size=(7, 5, 2)).astype(np.float32), rng.normal(size=(7, 5, 1))
    mv = np.ones((7, 5), bool)
    mv[:4, 1:] = False
    model = js.Sequential((js.GRU(3, return_sequences=True), js.TimeDistributed(js.Dense(1))))
    state, h = js.fit(model, x, y.astype(np.float32), epochs=1, batch_size=8, verbose=0,
                      optimizer=optax.sgd(0.0), validation_data=(xv, yv.astype(np.float32),
                                                                  None, mv))
    one_batch = js.evaluate(model, state, xv, yv.astype(np.float32), mask=mv, batch_size=8)
    four = js.evaluate(model, state, xv, yv.astype(np.float32), mask=mv, batch_size=4)
    assert one_batch != pytest.approx(four)  # the batching matters with a mask
    assert h.val_loss[0] == pytest.approx(one_batch, rel=1e-6)  # Keras: batches of 8, not 4


def test_state_must_belong_to_the_model_and_the_core_takes_plain_data():
    x, y = _data(n=4)
    a = js.Sequential((js.GRU(2), js.Dense(1)))
    b = js.Sequential((js.GRU(3), js.Dense(1)))
    sa, _ = js.fit(a, x, y, epochs=1, batch_size=2, verbose=0)
    with pytest.raises(ValueError, match="state= was built for another model"):
        js.fit(b, x, y, epochs=1, state=sa, verbose=0)
    with pytest.raises(TypeError, match="state= to be a jaxseq TrainState .* got dict"):
        js.fit(a, x, y, epochs=1, state=sa.params, verbose=0)
    states, _ = js.fit_replicas(a, x, y, seeds=2, epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="state= holds stacked replicas"):
        js.fit(a, x, y, epochs=1, state=states, verbose=0)
    with pytest.raises(ValueError, match="a leading replica axis: these are fit_replicas'"):
        js.predict(a, states, x)
    key = training.split_seed(0)[1]
    # NumPy data, no weights, a tuple: the core functions take them as they are, even eagerly
    # (a Dense model keeps the eager run cheap)
    flat = x.reshape(4, -1)
    dense = training.create_train_state(js.Dense(1), TX, flat, key)
    s1, logs = training.train_epoch(dense, Batch(flat, y, None), key, batch_size=3)
    s2, _ = training.train_step(dense, (flat[:2], y[:2]), key)
    assert np.isfinite(float(logs["loss"])) and int(s1.step) == 2 and int(s2.step) == 1
    with pytest.raises(ValueError, match="batch_size to be an int >= 1; got 0"):
        training.train_epoch(dense, Batch(flat, y, None), key, batch_size=0)


def test_a_callback_stops_training_at_the_epoch_it_asks():
    x, y = _data(n=4)
    seen = []

    class StopAt(js.Callback):
        def on_epoch_end(self, epoch, logs):
            seen.append(epoch)
            self.stop_training = epoch == 2

    state, history = js.fit(js.Sequential((js.GRU(2), js.Dense(1))), x, y, epochs=100,
                            batch_size=2, verbose=0, callbacks=[StopAt()])
    assert seen == [0, 1, 2] and len(history.loss) == 3 and int(state.step) == 3 * 2


def test_a_model_that_reports_no_mask_masks_no_loss():
    class Encoder(nn.Module):  # takes a mask, returns 5 output steps: not the input's steps
        @nn.compact
        def __call__(self, x, *, mask=None):
            h = js.LSTM(3)(x, mask=mask)
            return js.TimeDistributed(js.Dense(1))(js.RepeatVector(5)(h))

    x, y = _data(n=3, t=5)
    y = np.repeat(y[:, None], 5, axis=1)
    mask = np.ones((3, 5), bool)
    mask[:, :3] = False
    model = Encoder()
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    pred = np.asarray(js.predict(model, params, x, mask=mask), np.float64)
    every_step = float(np.mean((pred - y) ** 2))
    assert js.evaluate(model, params, x, y, mask=mask) == pytest.approx(every_step, rel=1e-5)


def test_more_clear_errors_and_keras_names():
    x, y = _data(n=4)
    model = js.Sequential((js.GRU(2), js.Dense(1)))
    _, h = js.fit(model, x, y, epochs=1, verbose=0, metrics=None, loss="mean_squared_error",
                  callbacks=js.EarlyStopping(monitor="loss"))
    assert h.loss.shape == (1,)
    with pytest.raises(TypeError, match="sample_weight to be an array of non-negative numbers"):
        js.fit(model, x, y, epochs=1, sample_weight="balanced", verbose=0)
    with pytest.raises(TypeError, match="checkpoint_dir to be a path"):
        js.fit(model, x, y, epochs=1, checkpoint_dir=3, verbose=0)
    with pytest.raises(TypeError, match="min_delta to be a number; got 'a'"):
        js.EarlyStopping(min_delta="a")

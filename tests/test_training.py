"""fit / predict / evaluate: Keras semantics, learning the tutorial, determinism, compilation."""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tests_common import at_optimization_level, backend_compiles, user_jit

import jaxseq as js
from jaxseq import models, problems, training

SEQ = problems.echo_sequence(5)

# framing -> (model builder, epochs, batch size, max final MSE, max |prediction - target|)
TUTORIAL = {
    "one_to_one": (models.one_to_one, 1000, 5, 1e-3, 0.05),
    "many_to_one": (lambda: models.many_to_one(5), 500, 1, 1e-4, 0.05),
    # Keras 3 itself leaves the first step near 0.07 after 1000 epochs.
    "many_to_many": (models.many_to_many, 1000, 1, 5e-3, 0.1),
}


@pytest.mark.parametrize("framing", list(TUTORIAL))
def test_tutorial_framings_learn_the_echo(framing):
    build, epochs, batch_size, max_mse, max_err = TUTORIAL[framing]
    x, y = problems.frame(SEQ, framing)
    model = build()
    learned = []
    for seed in range(3):
        state, history = js.fit(model, x, y, epochs=epochs, batch_size=batch_size, seed=seed,
                                verbose=0)
        chex.assert_shape(history.loss, (epochs,))
        pred = np.asarray(js.predict(model, state.params, x))
        chex.assert_shape(pred, y.shape)
        err = np.max(np.abs(pred - y))
        learned.append(bool(history.loss[-1] <= max_mse and err <= max_err))
        # the reported loss is the loss of the data before the last update: close to evaluate's
        assert js.evaluate(model, state.params, x, y) <= 2 * max(history.loss[-1], 1e-9) + 1e-6
    assert sum(learned) >= 2, f"{framing}: learned for seeds {learned}"


def _reference_fit(model, params, x, y, epochs, batch_size, tx):
    """A plain Python loop with Keras semantics (no shuffling): per-batch mean loss, the last
    partial batch counts, the epoch loss is the sample-weighted mean of the batch losses."""

    def loss_fn(p, xb, yb):
        return jnp.mean(jnp.square(model.apply({"params": p}, xb) - yb))

    grad = jax.jit(jax.value_and_grad(loss_fn))
    opt_state = tx.init(params)
    losses = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            loss, g = grad(params, xb, yb)
            updates, opt_state = tx.update(g, opt_state, params)
            params = optax.apply_updates(params, updates)
            total += float(loss) * len(xb)
            count += len(xb)
        losses.append(total / count)
    return params, np.array(losses)


def test_fit_matches_a_python_loop_with_a_partial_last_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 4, 2)).astype(np.float32)
    y = rng.normal(size=(7, 3)).astype(np.float32)
    model = js.Sequential((js.GRU(4), nn.Dense(3)))
    tx = optax.adam(1e-2)
    state, history = js.fit(model, x, y, epochs=4, batch_size=3, optimizer=tx, shuffle=False,
                            verbose=0)
    init_key, _ = training.split_seed(0)
    params0 = model.init(init_key, x[:1])["params"]
    ref_params, ref_losses = _reference_fit(model, params0, x, y, 4, 3, tx)
    np.testing.assert_allclose(history.loss, ref_losses, rtol=1e-5)
    chex.assert_trees_all_close(state.params, ref_params, rtol=1e-5, atol=1e-6)
    assert int(state.step) == 4 * 3  # ceil(7 / 3) = 3 steps per epoch


@pytest.mark.parametrize("build", [models.many_to_many, models.one_to_one])
def test_compiled_init_equals_a_default_jit_of_init_bitwise(build):
    # fit compiles init with its own XLA options (training.compiler_options(once=True)); at
    # jaxseq's default level they must not change a bit of the initial parameters a user's
    # `jax.jit(model.init)` gives with XLA's default options (user_jit: the suite's level-0
    # flags would change the bits; measured, 18 of 100 entries 1 ulp apart).
    model = build()
    x, _ = problems.frame(SEQ, "many_to_many")
    key, _ = training.split_seed(4)
    with at_optimization_level(None):
        state = training.create_train_state(model, training.DEFAULT_OPTIMIZER, x, key)
    chex.assert_trees_all_equal(state.params, user_jit(model.init)(key, x[:1])["params"])


def test_the_drivers_set_their_optimization_levels(no_persistent_cache):
    # By default XLA's level 3 for training and prediction, 1 for initialization (the test
    # above: bitwise the parameters of a default `jax.jit`); set_optimization_level(0) lowers
    # both, and each level keeps its own cached programs.
    model = models.many_to_many(units=2)
    x, _ = problems.frame(SEQ, "many_to_many")
    key, _ = training.split_seed(0)

    def init():
        return training.create_train_state(model, training.DEFAULT_OPTIMIZER, x, key)

    training.clear_caches()  # the counts below start from nothing compiled

    with at_optimization_level(None):
        assert training.optimization_level() == 3
        run, once = training.compiler_options(), training.compiler_options(once=True)
        assert backend_compiles(init) == 1 and backend_compiles(init) == 0
    assert run["xla_backend_optimization_level"] == 3
    assert run["xla_llvm_disable_expensive_passes"] is False
    assert once["xla_backend_optimization_level"] == 1
    assert once["xla_llvm_disable_expensive_passes"] is False
    assert not run["xla_cpu_use_fusion_emitters"] and not once["xla_cpu_use_fusion_emitters"]
    with at_optimization_level(0):
        assert training.optimization_level() == 0
        run, once = training.compiler_options(), training.compiler_options(once=True)
        assert backend_compiles(init) == 1 and backend_compiles(init) == 0
    assert run["xla_backend_optimization_level"] == once["xla_backend_optimization_level"] == 0
    assert run["xla_llvm_disable_expensive_passes"] is True
    with at_optimization_level(None):
        assert backend_compiles(init) == 0  # the level-3 program is still cached
    for bad in (4, -1, True, "0", 1.0):
        with pytest.raises(ValueError, match=r"int in 0\.\.3 or None"):
            training.set_optimization_level(bad)


def test_tutorial_builders_pass_lstm_options():
    model = models.many_to_many(implementation="scan", unroll=True)
    assert model.layers[0].implementation == "scan" and model.layers[0].unroll is True
    assert models.one_to_one(go_backwards=True).layers[0].go_backwards
    layer = models.many_to_one(5, units=3, recurrent_dropout=0.25).layers[0]
    assert layer.units == 3 and layer.recurrent_dropout == 0.25
    x, _ = problems.frame(SEQ, "many_to_many")
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert sum(a.size for a in jax.tree.leaves(params)) == 146  # same model, same weights


def test_one_step_changes_every_parameter():
    x, y = problems.frame(SEQ, "many_to_many")
    model = models.many_to_many()
    init_key, _ = training.split_seed(0)
    before = model.init(init_key, x[:1])["params"]
    state, _ = js.fit(model, x, y, epochs=1, batch_size=1, verbose=0)
    assert int(state.step) == 1
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(state.params), strict=True
    ):
        assert np.all(np.asarray(a) != np.asarray(b)), f"{path} did not change everywhere"


def test_same_seed_same_bits_different_seed_different_init():
    x, y = problems.frame(SEQ, "many_to_one")
    model = models.many_to_one(5)
    s1, h1 = js.fit(model, x, y, epochs=30, batch_size=1, seed=7, verbose=0)
    s2, h2 = js.fit(model, x, y, epochs=30, batch_size=1, seed=7, verbose=0)
    chex.assert_trees_all_equal(s1.params, s2.params)
    np.testing.assert_array_equal(h1.loss, h2.loss)
    k1, _ = training.split_seed(1)
    k2, _ = training.split_seed(2)
    p1 = model.init(k1, x)["params"]
    p2 = model.init(k2, x)["params"]
    kernels = [("lstm", "kernel"), ("lstm", "recurrent_kernel"), ("dense", "kernel")]
    for layer, name in kernels:  # biases start at fixed zeros/ones by design
        assert not np.array_equal(p1[layer][name], p2[layer][name])


def test_shuffling_and_chunking_do_not_change_semantics():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 3, 1)).astype(np.float32)
    y = rng.normal(size=(10, 1)).astype(np.float32)
    model = models.one_to_one()
    kw = dict(epochs=6, batch_size=4, verbose=0, seed=2)
    a, ha = js.fit(model, x, y, **kw)
    b, hb = js.fit(model, x, y, epochs_per_chunk=4, **kw)  # 4 + 2 (a ragged last chunk)
    chex.assert_trees_all_equal(a.params, b.params)  # every epoch is the same program
    np.testing.assert_array_equal(ha.loss, hb.loss)
    c, _ = js.fit(model, x, y, shuffle=False, **kw)
    assert not np.allclose(np.asarray(a.params["dense"]["kernel"]),
                           np.asarray(c.params["dense"]["kernel"]))


def test_validation_data_and_callbacks():
    x, y = problems.frame(SEQ, "one_to_one")
    seen = []

    class Recorder(js.Callback):
        def on_epoch_end(self, epoch, logs):
            seen.append((epoch, logs["val_loss"]))
            if epoch == 6:
                self.stop_training = True

    _, history = js.fit(models.one_to_one(), x, y, epochs=40, batch_size=5,
                        validation_data=(x, y), callbacks=[Recorder()], epochs_per_chunk=4,
                        verbose=0)
    assert [e for e, _ in seen] == list(range(8))  # stops at the end of the chunk (4..7)
    chex.assert_shape(history.val_loss, (8,))
    assert np.all(np.isfinite(history.val_loss))


def test_predict_in_batches_equals_one_call():
    x = np.random.default_rng(0).normal(size=(7, 5, 1)).astype(np.float32)
    model = models.many_to_many()
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    whole = js.predict(model, params, x)
    batched = js.predict(model, params, x, batch_size=3)
    np.testing.assert_allclose(batched, whole, rtol=1e-6)  # other batch shapes, other fusions
    chex.assert_shape(batched, (7, 5, 1))


# --- contracts ------------------------------------------------------------------------------


def _fit(**kw):
    x, y = problems.frame(SEQ, "one_to_one")
    args = dict(x=x, y=y, epochs=1, batch_size=5, verbose=0)
    args.update(kw)
    return js.fit(models.one_to_one(), args.pop("x"), args.pop("y"), **args)


@pytest.mark.parametrize(
    "kw, error, pattern",
    [
        (dict(y=np.zeros((4, 1), np.float32)), ValueError,
         r"same number of samples .*x \(5, 1, 1\) and y \(4, 1\)"),
        (dict(y=np.zeros((5, 1, 1), np.float32)), ValueError,
         r"y must have shape \(n, 1\); got y \(5, 1, 1\)"),
        (dict(x=np.full((5, 1, 1), np.nan, np.float32)), ValueError, r"finite x; x has 5 NaN"),
        (dict(y=np.array([[0], [1], [np.inf], [0], [0]], np.float32)), ValueError,
         r"finite y; y has 1 NaN/Inf"),
        (dict(epochs=0), ValueError, r"epochs >= 1; got 0"),
        (dict(batch_size=0), ValueError, r"batch_size >= 1; got 0"),
        (dict(batch_size=2.5), TypeError, r"batch_size to be a positive int; got 2.5"),
        (dict(x=np.zeros((5, 1), np.float32)), ValueError,
         re.escape("expects x of shape (batch, time, features); got (5, 1)")),
        (dict(x=np.zeros((5, 1, 1), np.int32)), TypeError, r"x with a floating dtype; got int32"),
        (dict(loss="hinge"), ValueError, r"loss to be one of 'mse', 'mae'; got 'hinge'"),
        (dict(sample_weight=np.ones(3)), ValueError, r"sample_weight of shape \(batch,\)"),
    ],
)
def test_fit_contracts(kw, error, pattern):
    with pytest.raises(error, match=pattern):
        _fit(**kw)


def test_predict_and_evaluate_contracts():
    model = models.one_to_one()
    x, y = problems.frame(SEQ, "one_to_one")
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    with pytest.raises(ValueError, match=re.escape("got (5, 1). For samples of scalar steps")):
        js.predict(model, params, x[:, 0])
    with pytest.raises(ValueError, match=r"batch_size >= 1; got 0"):
        js.predict(model, params, x, batch_size=0)
    with pytest.raises(ValueError, match=r"evaluate: .*y must have shape \(n, 1\)"):
        js.evaluate(model, params, x, y[:, :, None])


# --- options with their values checked -----------------------------------------------------


def test_verbose_levels_print_what_they_say(capsys):
    x, y = problems.frame(SEQ, "one_to_one")
    model = models.one_to_one()
    kw = dict(epochs=3, batch_size=5, metrics=["mae"])
    js.fit(model, x, y, verbose=0, **kw)
    assert capsys.readouterr().out == ""
    _, h = js.fit(model, x, y, verbose=2, **kw)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" - ")[0] for ln in lines] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert lines[-1] == f"Epoch 3/3 - loss: {h.loss[-1]:.4g} - mae: {h.mae[-1]:.4g}"
    js.fit(model, x, y, verbose=1, **kw)  # not a terminal: plain lines, one per chunk
    assert capsys.readouterr().out.splitlines() == lines  # 3 epochs: 3 chunks of 1
    js.fit(model, x, y, verbose=1, epochs_per_chunk=3, **kw)
    assert capsys.readouterr().out.splitlines() == [lines[-1]]
    with pytest.raises(ValueError, match=r"verbose in \(0, 1, 2\); got 3"):
        js.fit(model, x, y, verbose=3, **kw)


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_fit_with_per_sample_weights_equals_a_weighted_python_loop(loss):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 3, 2)).astype(np.float32)
    y = rng.normal(size=(6, 2)).astype(np.float32)
    w = rng.uniform(0.0, 2.0, size=(6,)).astype(np.float32)
    model = js.Sequential((js.SimpleRNN(3), nn.Dense(2)))
    tx = optax.sgd(0.1)
    state, history = js.fit(model, x, y, epochs=2, batch_size=4, optimizer=tx, shuffle=False,
                            sample_weight=w, loss=loss, verbose=0)
    error = jnp.square if loss == "mse" else jnp.abs
    params = jax.jit(model.init)(training.split_seed(0)[0], x[:1])["params"]

    def loss_fn(p, xb, yb, wb):  # Keras: sum(w * per-sample loss) / samples in the batch
        per_sample = jnp.mean(error(model.apply({"params": p}, xb) - yb), axis=1)
        return jnp.sum(wb * per_sample) / xb.shape[0]

    step = jax.jit(jax.value_and_grad(loss_fn))  # one program per batch size (4, then 2)
    losses = []
    for _ in range(2):
        total = 0.0
        for i in (0, 4):
            xb, yb, wb = x[i:i + 4], y[i:i + 4], w[i:i + 4]
            loss, g = step(params, xb, yb, wb)
            params = jax.tree.map(lambda p, d: p - 0.1 * d, params, g)
            total += float(loss) * len(xb)
        losses.append(total / 6)
    chex.assert_trees_all_close(state.params, params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.loss, losses, rtol=1e-5)


def test_evaluate_mae_with_per_sample_weights_and_predict_with_mask_in_batches():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 4, 1)).astype(np.float32)
    y = rng.normal(size=(7, 4, 1)).astype(np.float32)
    w = rng.uniform(size=(7,)).astype(np.float32)
    model = models.many_to_many()
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    pred = np.asarray(js.predict(model, params, x), np.float64)
    per_step = np.abs(pred - y)[..., 0]  # (7, 4) entries; weights broadcast over time
    want = np.sum(w[:, None] * per_step) / per_step.size
    got = js.evaluate(model, params, x, y, loss="mae", sample_weight=w)
    assert got == pytest.approx(want, rel=1e-5)
    mask = np.ones((7, 4), bool)
    mask[2, 1:] = mask[6, 3:] = False
    whole = js.predict(model, params, x, mask=mask)
    np.testing.assert_allclose(js.predict(model, params, x, mask=mask, batch_size=3), whole,
                               rtol=1e-6)
    assert not np.allclose(whole, js.predict(model, params, x))  # the mask mattered


def test_validation_options_contracts():
    x, y = problems.frame(SEQ, "one_to_one")
    model = models.one_to_one()
    with pytest.raises(ValueError, match="both validation_data and validation_split"):
        js.fit(model, x, y, epochs=1, validation_data=(x, y), validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match=r"validation_split in \(0, 1\); got 1.5"):
        js.fit(model, x, y, epochs=1, validation_split=1.5, verbose=0)
    with pytest.raises(ValueError, match=r"validation_data=\(x_val, y_val\[, sample_weight"):
        js.fit(model, x, y, epochs=1, validation_data=(x,), verbose=0)
    with pytest.raises(TypeError, match="shuffle to be True or False"):
        js.fit(model, x, y, epochs=1, shuffle="batch", verbose=0)
    with pytest.raises(TypeError, match=r"callbacks that subclass jaxseq.Callback"):
        js.fit(model, x, y, epochs=1, callbacks=[object()], verbose=0)
    _, h = js.fit(model, x, y, epochs=2, batch_size=5, validation_split=0.4, verbose=0)
    assert h.val_loss.shape == (2,)  # trained on 3 samples, validated on the last 2

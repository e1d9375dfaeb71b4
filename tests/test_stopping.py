"""Stopping: non-finite training caught inside the compiled loop, and EarlyStopping (Keras 3).

Most tests train `Scripted`, a model whose loss is a script: its one parameter counts the
optimizer steps (the `count_up` optimizer adds 1 per step) and its output is the input's value
at that step, so `x` holds the loss of every step. The script is data, so every scripted run of
one shape shares one compiled program. A negative value becomes an Inf loss (the data must be
finite: fit checks it up front, so overflow is injected through the loss).
"""

import functools
import math
import re
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxseq as js
from jaxseq import checkpointing, training
from jaxseq.training import callbacks
from jaxseq.training.callbacks import EarlyStopping


class Scripted(nn.Module):
    """x (b, steps, 1) -> (b, 1): x[:, count], where the parameter `count` counts the steps."""

    @nn.compact
    def __call__(self, x):
        count = self.param("count", nn.initializers.zeros, ())
        idx = jnp.clip(count.astype(jnp.int32), 0, x.shape[1] - 1)
        return jax.lax.dynamic_index_in_dim(x, idx, axis=1, keepdims=False)[:, :1]


MODEL = Scripted()
COUNT_UP = optax.GradientTransformation(
    lambda params: optax.EmptyState(),
    lambda grads, state, params=None: (jax.tree.map(jnp.ones_like, grads), state),
)


def script_loss(y, pred):
    return jnp.where(pred < 0, jnp.inf, pred)  # the elementwise "error" is the script's value


def scripted(values, n=4):
    """(x, y) for n samples whose loss at step s is values[s]."""
    values = np.asarray(values, np.float32)
    return np.tile(values[None, :, None], (n, 1, 1)), np.zeros((n, 1), np.float32)


def fit_scripted(values, *, n=4, batch_size=4, **kw):
    x, y = scripted(values, n)
    kw = {"epochs": len(values) - 1, "epochs_per_chunk": 2, "verbose": 0, **kw}
    return js.fit(MODEL, x, y, batch_size=batch_size, optimizer=COUNT_UP, loss=script_loss, **kw)


def count(state) -> float:
    return float(state.params["count"])


# --- Keras 3's own EarlyStopping, driven with a sequence ------------------------------------


class FakeModel:
    """What keras.callbacks.EarlyStopping touches: get/set_weights and stop_training."""

    stop_training = False
    marker = 0.0
    restored = None

    def get_weights(self):
        return [self.marker]

    def set_weights(self, weights):
        self.restored = weights[0]


def keras_run(values, monitor="loss", **kw) -> dict:
    keras = pytest.importorskip("keras")
    cb = keras.callbacks.EarlyStopping(monitor=monitor, **kw)
    model = FakeModel()
    cb.set_model(model)
    cb.on_train_begin()
    epochs = 0
    for epoch, value in enumerate(values):
        model.marker = epoch + 1.0  # "the weights after epoch e" = e + 1, like Scripted's count
        cb.on_epoch_end(epoch, {monitor: float(value)})
        epochs += 1
        if model.stop_training:
            break
    cb.on_train_end()
    best = None if cb.best is None else float(cb.best)
    return dict(epochs=epochs, stopped_epoch=cb.stopped_epoch, best_epoch=cb.best_epoch,
                wait=cb.wait, best=best, restored=model.restored)


@functools.cache
def compiled_rule():
    """The compiled decision alone: scan `callbacks.update` over a sequence, as fit's loop
    does. Every setting is in the state, so one program serves every configuration."""

    def drive(state, values):
        def body(carry, inputs):
            s, alive = carry
            epoch, value = inputs
            new = callbacks.update(s, value, epoch, (epoch + 1).astype(jnp.float32))
            s = callbacks.tree_where(alive, new, s)
            return (s, alive & ~s.stopped), alive

        (s, _), ran = jax.lax.scan(body, (state, jnp.ones((), bool)),
                                   (jnp.arange(len(values), dtype=jnp.int32), values))
        return s, ran

    return jax.jit(drive)


def jaxseq_run(values, **kw) -> dict:
    es = EarlyStopping(monitor="loss", **kw)
    s, ran = compiled_rule()(es.init_state(jnp.zeros((), jnp.float32), ("loss",)),
                                    jnp.asarray(values, jnp.float32))
    es.finish(s)
    restored = None if es.best_weights is None else float(es.best_weights)
    return dict(epochs=int(np.sum(ran)), stopped_epoch=es.stopped_epoch,
                best_epoch=es.best_epoch, wait=es.wait, best=es.best, restored=restored)


def _same(a: dict, b: dict) -> bool:
    def eq(u, v):
        if isinstance(u, float) and isinstance(v, float):
            return u == v or (math.isnan(u) and math.isnan(v))
        return u == v

    return a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)


def _cases():
    rng = np.random.default_rng(0)
    hand = [
        [5, 4, 3, 3.5, 2.75, 3, 3, 3, 3, 1, 1, 1],  # improvements smaller than min_delta
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0.5, 0.25, 0],  # never stops: Keras 3 still restores
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],  # ties are not improvements
        [np.nan, 1, 0.5, 0.25, 0, 0, 0, 0, 0, 0, 0, 0],  # a NaN first epoch is "best"
        [3, np.nan, 2.5, np.nan, np.nan, 2, 1.5, 1, 0.75, 3, 3, 3],  # NaN never improves
    ]
    seqs = hand + [list(rng.choice(np.arange(0, 4.25, 0.25), 12)) for _ in range(6)]
    configs = [
        dict(patience=0), dict(patience=1), dict(patience=3, min_delta=0.25),
        dict(patience=2, baseline=2.0), dict(patience=1, start_from_epoch=3),
        dict(patience=2, min_delta=-0.5, mode="max"), dict(patience=2, mode="min"),
    ]
    for i, seq in enumerate(seqs):
        for j, config in enumerate(configs):
            yield seq, {**config, "restore_best_weights": (i + j) % 2 == 0}


def test_early_stopping_decisions_equal_keras_on_scripted_sequences():
    cases = list(_cases())
    for values, kw in cases:
        want, got = keras_run(values, **kw), jaxseq_run(values, **kw)
        assert _same(got, want), f"{values} {kw}: jaxseq {got} != keras {want}"
    assert len(cases) == 77


def test_early_stopping_in_fit_stops_where_keras_does_and_restores_best():
    values = [5, 4, 3, 3.5, 2.75, 3, 3, 3, 3, 1, 1, 1, 1]
    kw = dict(patience=2, min_delta=0.5, restore_best_weights=True)
    keras = keras_run(values, **kw)
    assert keras["epochs"] == 5 and keras["best_epoch"] == 2  # the script does what it says
    es = EarlyStopping(monitor="loss", **kw)
    state, history = fit_scripted(values, callbacks=[es])
    np.testing.assert_array_equal(history.loss, np.asarray(values[:5], np.float32))
    assert count(state) == keras["restored"] == 3.0  # the weights after the best epoch, 2
    assert (es.stopped_epoch, es.best_epoch, es.wait, es.best) == (
        keras["stopped_epoch"], keras["best_epoch"], keras["wait"], keras["best"])
    assert int(state.step) == 5  # the optimizer state keeps counting the steps that ran

    # the spelling; a new EarlyStopping with other numbers compiles nothing new
    compiles = []
    listener = lambda name, secs, **kw: compiles.append(name) if "backend_compile" in name else 0
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        again, h2 = fit_scripted(values, callbacks=[EarlyStopping(
            monitor="loss", patience=3, min_delta=0.25, baseline=4.0, restore_best=True)])
        # nor does restore_best_weights=False, another mode, or no EarlyStopping at all
        fit_scripted(values, callbacks=[EarlyStopping(monitor="loss", mode="max")])
        fit_scripted(values)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    keras = keras_run(values[:12], patience=3, min_delta=0.25, baseline=4.0,
                      restore_best_weights=True)
    assert len(h2.loss) == keras["epochs"] and count(again) == keras["restored"]


def test_early_stopping_restores_best_when_training_ends_without_stopping():
    values = [3, 1, 2, 2, 0.5, 1, 4]  # epochs 0..5; patience 3 never runs out
    keras = keras_run(values[:6], patience=3, restore_best_weights=True)
    assert keras["stopped_epoch"] == 0 and keras["restored"] == 5.0
    es = EarlyStopping(monitor="loss", patience=3, restore_best_weights=True)
    state, history = fit_scripted(values, callbacks=[es])
    assert len(history.loss) == 6 and es.stopped_epoch == 0
    assert count(state) == 5.0  # best epoch 4; Keras 3 restores at the end of training anyway


def test_early_stopping_on_val_loss():
    # val_loss after epoch e is the value at step e + 1 (measured after the update)
    values = [9, 8, 7, 7.5, 8, 8, 8, 1, 1]
    keras = keras_run(values[1:], monitor="val_loss", patience=2)
    x, y = scripted(values)
    es = EarlyStopping(monitor="val_loss", patience=2)
    state, history = fit_scripted(values, callbacks=[es], validation_data=(x, y))
    assert len(history.loss) == keras["epochs"] == 4
    np.testing.assert_array_equal(history.val_loss, np.asarray(values[1:5], np.float32))
    assert count(state) == 4.0  # restore_best_weights=False: the last weights
    assert (es.stopped_epoch, es.best_epoch) == (keras["stopped_epoch"], keras["best_epoch"])


def test_early_stopping_resumes_exactly_from_a_checkpoint(tmp_path):
    values = [5, 4, 3, 3.5, 2.75, 3, 3, 3, 3, 1, 1, 1, 1]
    kw = dict(monitor="loss", patience=2, min_delta=0.5, restore_best_weights=True)
    ref, href = fit_scripted(values, callbacks=[EarlyStopping(**kw)])
    d = tmp_path / "run"
    done, _ = fit_scripted(values, callbacks=[EarlyStopping(**kw)], checkpoint_dir=d,
                           checkpoint_every=2, keep=None)
    assert sorted(int(p.name) for p in d.iterdir()
                  if p.name != checkpointing.LOCK_NAME) == [2, 4, 5]  # 5: where it stopped
    assert checkpointing.restore(d, done).record["stopped"] == "early_stopping"
    for epoch in (4, 5):  # die after epoch 2: the wait counter and the best weights come
        shutil.rmtree(d / str(epoch))  # from the checkpoint
    es = EarlyStopping(**kw)
    state, history = fit_scripted(values, callbacks=[es], checkpoint_dir=d, checkpoint_every=2,
                                  resume=True, keep=None)
    np.testing.assert_array_equal(history.loss, href.loss)
    assert count(state) == count(ref) == 3.0 and es.stopped_epoch == 4
    # resuming a run that already stopped returns it as it was
    again, h2 = fit_scripted(values, callbacks=[EarlyStopping(**kw)], checkpoint_dir=d,
                             checkpoint_every=2, resume=True, keep=None)
    np.testing.assert_array_equal(h2.loss, href.loss)
    assert count(again) == 3.0 and int(again.step) == 5
    with pytest.raises(ValueError, match=r"written with early_stopping=.*patience': 2"):
        fit_scripted(values, callbacks=[EarlyStopping(**{**kw, "patience": 5})],
                     checkpoint_dir=d, checkpoint_every=2, resume=True)


def test_early_stopping_does_not_depend_on_chunking():
    values = [5, 4, 3, 3.5, 2.75, 3, 3, 3, 3, 1, 1, 1, 1]
    kw = dict(monitor="loss", patience=2, min_delta=0.5, restore_best_weights=True)
    a, ha = fit_scripted(values, callbacks=[EarlyStopping(**kw)], epochs_per_chunk=12)
    b, hb = fit_scripted(values, callbacks=[EarlyStopping(**kw)])
    np.testing.assert_array_equal(ha.loss, hb.loss)
    assert count(a) == count(b) == 3.0


def test_early_stopping_contracts():
    with pytest.raises(ValueError, match=r"monitor='acc'\): training logs \('loss',\)"):
        fit_scripted([1, 2, 3], callbacks=[EarlyStopping(monitor="acc")])
    with pytest.raises(ValueError, match=r"monitor to be a log name"):
        EarlyStopping(monitor="")
    with pytest.raises(ValueError, match=r"mode in \('auto', 'min', 'max'\)"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match=r"patience to be an int >= 0; got -1"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match=r"monitor='val_loss'\): training logs \('loss',\)"):
        fit_scripted([1, 2, 3], callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match=r"at most one EarlyStopping; got 2"):
        fit_scripted([1, 2, 3], callbacks=[EarlyStopping("loss"), EarlyStopping("loss")])
    with pytest.raises(ValueError, match=r"on_nan to be one of 'raise', 'stop'; got 'ignore'"):
        fit_scripted([1, 2, 3], on_nan="ignore")


# --- non-finite training --------------------------------------------------------------------


def test_inf_loss_stops_at_the_right_epoch_and_batch_and_keeps_the_last_finite_state(tmp_path):
    values = np.arange(1, 14, dtype=np.float32)  # 2 batches per epoch: steps 2e and 2e + 1
    values[2 * 3 + 1] = -1  # the loss of epoch 3, batch 1 is Inf
    kw = dict(n=4, batch_size=2, epochs=6)
    message = (r"non-finite training at epoch index 3 \(Epoch 4/6\): the loss of batch index 1 "
               r"of 2 is inf\. .*the last finite one, after 3 epoch\(s\)")
    with pytest.raises(training.NonFiniteLossError, match=message) as info:
        fit_scripted(values, **kw)
    err = info.value
    assert isinstance(err, FloatingPointError) and (err.epoch, err.batch) == (3, 1)
    assert count(err.state) == 6.0 and int(err.state.step) == 6  # after epoch 2: 3 x 2 steps
    np.testing.assert_array_equal(err.history.loss, [1.5, 3.5, 5.5])

    d = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match=message):
        state, history = fit_scripted(values, on_nan="stop", checkpoint_dir=d,
                                      checkpoint_every=2, **kw)
    assert count(state) == 6.0 and len(history.loss) == 3
    assert checkpointing.latest_epoch(d) == 3  # the last finite state is the last checkpoint
    saved = checkpointing.restore(d, state)
    assert count(saved.state) == 6.0 and saved.record["stopped"] == "non_finite"


def test_huge_learning_rate_overflows_at_the_epoch_a_python_loop_finds():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 1)).astype(np.float32)
    y = rng.normal(size=(8, 1)).astype(np.float32)
    model = js.Sequential((lambda v: v.reshape(v.shape[0], -1), nn.Dense(1)))
    tx = optax.sgd(1e10)
    kw = dict(batch_size=8, optimizer=tx, shuffle=False, verbose=0, epochs_per_chunk=1)

    # Independent reference: plain SGD steps until the loss or the parameters are non-finite.
    params = model.init(training.split_seed(0)[0], x[:1])["params"]
    grad = jax.jit(jax.value_and_grad(
        lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x) - y))))
    bad = None
    for epoch in range(20):
        loss, g = grad(params)
        params = jax.tree.map(lambda p, d: p - 1e10 * d, params, g)
        finite = all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(params))
        if not (np.isfinite(loss) and finite):
            bad = epoch
            break
    assert bad is not None and bad >= 1

    with pytest.raises(training.NonFiniteLossError,
                       match=rf"epoch index {bad} \(Epoch {bad + 1}/20\).* batch index 0 of 1"
                       ) as info:
        js.fit(model, x, y, epochs=20, **kw)
    last = info.value.state
    assert len(info.value.history.loss) == bad and np.all(np.isfinite(info.value.history.loss))
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves((last.params, last.opt_state)))
    finite_run, _ = js.fit(model, x, y, epochs=bad, **kw)  # exactly the finite epochs
    for a, b in zip(jax.tree.leaves(last.params), jax.tree.leaves(finite_run.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_data_must_be_finite_so_inf_targets_fail_up_front():
    values = [1, 2, 3]
    x, y = scripted(values)
    y[0, 0] = np.inf
    with pytest.raises(ValueError, match=re.escape("finite y; y has 1 NaN/Inf")):
        js.fit(MODEL, x, y, epochs=2, optimizer=COUNT_UP, loss=script_loss, verbose=0)

"""`fit_replicas(strategy=...)`: "concurrent" runs replica i as exactly `fit(seed=seeds[i])`
(bitwise), several at a time; "auto" chooses by backend, options and model size."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

import jaxseq as js
from jaxseq.training import compile as jcompile
from jaxseq.training import strategies

SEEDS = [5, 0, 2]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 6, 2)).astype(np.float32)
    y = np.cumsum(x, axis=1)[..., :1]
    mask = np.ones((20, 6), bool)
    mask[::3, 4:] = False  # padded tails
    w = rng.uniform(0.5, 2.0, 20).astype(np.float32)
    model = js.Sequential([js.LSTM(4, return_sequences=True), js.TimeDistributed(js.Dense(1))])
    kw = dict(epochs=40, batch_size=4, validation_split=0.25, mask=mask, sample_weight=w,
              metrics=["mae"], verbose=0)
    return model, x, y, kw


def _stopper():
    return js.EarlyStopping(patience=2, restore_best_weights=True)


def test_concurrent_replica_i_is_fit_with_seed_i_bitwise(data):
    model, x, y, kw = data
    es = _stopper()
    states, history = js.fit_replicas(model, x, y, seeds=SEEDS, callbacks=[es],
                                      strategy="concurrent", **kw)
    assert history.loss.shape[0] == 3 and not history.nonfinite.any()
    stopped = []
    for i, seed in enumerate(SEEDS):
        own = _stopper()
        state, h = js.fit(model, x, y, seed=seed, callbacks=[own], **kw)
        n = len(h.loss)
        for name in h.history:  # loss, mae, val_loss, val_mae: equal, then NaN once stopped
            np.testing.assert_array_equal(history.history[name][i, :n], h.history[name])
            assert np.isnan(history.history[name][i, n:]).all()
        jax.tree.map(lambda a, b, i=i: np.testing.assert_array_equal(b[i], a), state.params,
                     states.params)
        assert int(states.step[i]) == int(state.step)
        assert es.stopped_epoch[i] == own.stopped_epoch and es.best_epoch[i] == own.best_epoch
        stopped.append(own.stopped_epoch)
    assert len(set(stopped)) > 1 or max(stopped) < 40  # early stopping acted per replica
    # the vmapped strategy trains the same replicas, to float32 rounding
    vm, vh = js.fit_replicas(model, x, y, seeds=SEEDS, callbacks=[_stopper()], strategy="vmap",
                             **kw)
    np.testing.assert_allclose(vh.loss, history.loss, rtol=1e-5)


def test_concurrent_compiles_the_programs_of_one_fit(data):
    model, x, y, kw = data
    kw = {**kw, "epochs": 2}
    jcompile.clear_caches()
    js.fit(model, x, y, seed=0, **kw)
    one_fit = jcompile.cache_len()
    jcompile.clear_caches()
    js.fit_replicas(model, x, y, seeds=4, strategy="concurrent", **kw)
    assert jcompile.cache_len() == one_fit


def test_non_finite_replicas_are_named_as_by_the_vmapped_driver():
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(8, 3, 1)
    model = js.Sequential([js.LSTM(3), js.Dense(1)])
    big = js.training.keras_optimizer("sgd", learning_rate=1e19)
    kw = dict(epochs=3, batch_size=4, optimizer=big, verbose=0)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        cs, ch = js.fit_replicas(model, x, x[:, -1] * 1e3, seeds=2, strategy="concurrent", **kw)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        vs, vh = js.fit_replicas(model, x, x[:, -1] * 1e3, seeds=2, strategy="vmap", **kw)
    np.testing.assert_array_equal(ch.nonfinite, vh.nonfinite)
    assert ch.nonfinite.all()
    with pytest.raises(js.NonFiniteLossError) as err:
        js.fit_replicas(model, x, x[:, -1] * 1e3, seeds=2, strategy="concurrent",
                        on_nan="raise", **kw)
    assert err.value.replicas == (0, 1) and jax.tree.leaves(err.value.state.params)[0].shape[0] == 2


def test_auto_chooses_by_options_and_size(data, tmp_path):
    model, x, y, kw = data
    resolve = strategies.resolve  # on the values fit_replicas parses
    from jaxseq.training.parse import parse_data, parse_host, parse_optimizer, parse_program
    from jaxseq.training.spec import Layout

    def chosen(model, x, y, strategy="auto", batch_size=4, **host_kw):
        layout = Layout((0, 1))
        host = parse_host("fit_replicas", epochs=1, verbose=0, callbacks=host_kw.get("cb", ()),
                          epochs_per_chunk=None, on_nan="stop",
                          checkpoint_dir=host_kw.get("ckpt"), checkpoint_every=None, keep=3,
                          resume=False)
        tx = parse_optimizer("fit_replicas", model, None, None)
        src = parse_data("fit_replicas", model, x, y)
        program = parse_program("fit_replicas", model, tx, src, layout, loss="mse", metrics=(),
                                batch_size=batch_size, shuffle=True,
                                validation_batch_size=None, reset_states=None, mesh=None)
        return resolve(strategy, program, layout, host, src)

    xt, yt = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")
    assert chosen(js.models.many_to_many(), xt, yt, batch_size=1) == "vmap"  # 146 x 1
    wide = js.Sequential([js.LSTM(64), js.Dense(1)])  # 17k parameters x 4 rows
    assert chosen(wide, x, y[:, -1]) == "concurrent"
    assert chosen(wide, x, y[:, -1], cb=[js.training.callbacks.Callback()]) == "vmap"
    assert chosen(wide, x, y[:, -1], ckpt=tmp_path / "c") == "vmap"
    with pytest.raises(ValueError, match="strategy='concurrent'.*host callbacks"):
        chosen(wide, x, y[:, -1], "concurrent", cb=[js.training.callbacks.Callback()])
    with pytest.raises(ValueError, match="strategy to be one of"):
        chosen(wide, x, y[:, -1], "threads")


def test_default_verbose_reports_start_and_end_on_a_terminal_only(data, capsys, monkeypatch):
    model, x, y, kw = data
    kw = {k: v for k, v in kw.items() if k != "verbose"} | {"epochs": 2}
    js.fit_replicas(model, x, y, seeds=2, **kw)
    assert capsys.readouterr().out == ""  # not a terminal: silent
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    js.fit_replicas(model, x, y, seeds=2, strategy="concurrent", **kw)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "fit_replicas: 2 replicas (concurrent), up to 2 epochs", lines
    assert lines[-1].startswith("fit_replicas: done in ") and lines[-1].endswith(
        "s; 0 non-finite"), lines
    assert len(lines) == 2
